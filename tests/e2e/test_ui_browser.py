"""The self-service web UI in a real browser (headless Chromium) against gunicorn, a worker and beat."""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from django.utils import timezone

from schedules.models import Execution, ExecutionStatus, Trigger
from tests.factories import UserFactory, WorkflowFactory
from workflows.models import UserPreferences

pytestmark = pytest.mark.e2e

PARIS = ZoneInfo("Europe/Paris")
NEW_YORK = ZoneInfo("America/New_York")


def _shown(at: datetime, zone: ZoneInfo) -> str:
    """How the pages write an instant in the user's zone (schedules/templatetags/ui.py moment)."""
    local = at.astimezone(zone)
    return f"{local:%a %Y-%m-%d %H:%M} {local.tzname()}"


def _next_weekday_nine(after: datetime, zone: ZoneInfo) -> datetime:
    """The first Monday-Friday 09:00 in ``zone`` after ``after``, worked out here, not by the scheduler."""
    day = after.astimezone(zone).date()
    while True:
        candidate = datetime(day.year, day.month, day.day, 9, 0, tzinfo=zone)
        if candidate.weekday() < 5 and candidate > after:
            return candidate
        day += timedelta(days=1)


def _sign_in(browser, username: str) -> None:
    browser.open("/app/login/")
    browser.fill("#id_username", username)
    browser.fill("#id_password", "password")
    browser.submit("#sign-in")
    browser.wait_for_text("h1", "My schedules")


def test_web_ui__create_list_run_now_pause_and_a_second_user_sees_nothing(stack, endpoint, browser_factory):
    """Log in; set a zone; create "once in 1 minute" and "weekdays at 09:00"; both listed with the right
    next run; run one now and watch its execution succeed; pause with a reason and see the badge; a
    second user sees none of it (list empty, the schedule's URL a 404). Screenshots for the README."""
    alice = UserFactory(username="alice")
    UserFactory(username="bob")
    workflow = WorkflowFactory(owner=alice, name="Sales report", endpoint_url=endpoint.url)
    stack.start_worker_and_beat()
    _, base_url = stack.start_web()
    browser = browser_factory(base_url)

    browser.open("/app/schedules/")  # login required: sent to the sign-in page
    browser.wait_for_text("h1", "Sign in")
    browser.screenshot("ui-login")
    _sign_in(browser, "alice")
    assert "No schedules yet" in browser.text("main")

    # Times in my own zone.
    browser.open("/app/settings/")
    browser.choose("#id_timezone", value="Europe/Paris")
    browser.submit("#save-settings")
    browser.wait_for_text(".messages", "Times are now shown in Europe/Paris")
    assert UserPreferences.objects.get(user=alice).timezone == "Europe/Paris"

    # Run once, in 1 minute: the preview says when as you type.
    browser.open("/app/schedules/new/")
    browser.fill("#id_name", "Follow-up in a minute")
    browser.choose("#id_workflow", value=str(workflow.pk))
    browser.check("#id_mode_0")  # Run once
    browser.check("#id_when_1")  # In N minutes
    browser.fill("#id_delay_minutes", "1")
    browser.wait_for_text("#preview", "Once at")
    browser.wait_for_text("#preview", "in 1 min")
    browser.screenshot("ui-new-once")
    browser.submit("#save")
    browser.wait_for_text("h1", "Follow-up in a minute")
    once = Trigger.objects.get(name="Follow-up in a minute")
    assert once.kind == "once" and timedelta(seconds=50) < once.run_at - timezone.now() < timedelta(seconds=70)

    # Run regularly, weekdays at 09:00 New York time.
    browser.open("/app/schedules/new/")
    browser.fill("#id_name", "Weekday report")
    browser.choose("#id_preset", value="cron")  # a mistake first: the preview explains it as you type
    browser.fill("#id_cron", "0 25 * * *")
    browser.wait_for_text("#preview", "Not valid yet")
    assert "Cron expression" in browser.text("#preview")
    browser.choose("#id_preset", value="weekdays")
    browser.choose("#id_timezone", value="America/New_York")
    browser.fill("#id_inputs", '{"report": "daily", "region": "us"}')
    browser.wait_for_text("#preview", "At 09:00, Monday through Friday (America/New_York)")
    browser.wait_for_text("#id_inputs_json", "Valid JSON object")
    browser.screenshot("ui-new-weekdays", full_page=True)
    browser.submit("#save")
    browser.wait_for_text("h1", "Weekday report")
    weekdays = Trigger.objects.get(name="Weekday report")
    expected = _next_weekday_nine(timezone.now(), NEW_YORK)
    assert weekdays.next_run_at == expected

    # Both listed, each with its next run in my zone (UTC on hover).
    browser.open("/app/schedules/")
    once_row = browser.text(f"#trigger-{once.pk}")
    weekdays_row = browser.text(f"#trigger-{weekdays.pk}")
    assert _shown(once.run_at, PARIS) in once_row and "in 1 min" in once_row, once_row
    assert _shown(expected, PARIS) in weekdays_row, weekdays_row
    assert "At 09:00, Monday through Friday (America/New_York)" in weekdays_row
    hover = browser.find(f"#trigger-{weekdays.pk} .next-run time").get_attribute("title")
    assert hover == f"{expected.astimezone(ZoneInfo('UTC')):%Y-%m-%d %H:%M:%S} UTC"

    # Run now: the execution appears in the history and succeeds (the page refreshes it itself).
    browser.open(f"/app/schedules/{weekdays.pk}/")
    browser.fill("#run-inputs", '{"report": "adhoc"}')
    browser.submit("#run-now")
    browser.wait_for_text(".messages", "Run queued")
    browser.wait_for_text("#history", "succeeded", timeout=60)
    execution = Execution.objects.get(trigger=weekdays, manual=True)
    assert execution.status == ExecutionStatus.SUCCEEDED and execution.inputs["report"] == "adhoc"
    assert any(b"adhoc" in call.raw for call in endpoint.calls)

    # Pause with a reason: the badge and the reason, on the page and in the list.
    browser.fill("#pause-reason", "vendor outage")
    browser.submit("#pause")
    browser.find("#paused-badge")  # only a paused schedule has it (shown in capitals: text-transform)
    browser.wait_for_text("#pause-notice", "vendor outage")
    browser.screenshot("ui-detail", full_page=True)
    browser.open("/app/schedules/")
    row = browser.text(f"#trigger-{weekdays.pk}")
    assert "PAUSED" in row.upper() and "vendor outage" in row
    browser.screenshot("ui-list")

    browser.open(f"/app/workflows/{workflow.pk}/")
    browser.wait_for_text("h1", "Sales report")
    assert "Weekday report" in browser.text("main")
    assert workflow.secret not in browser.driver.page_source
    browser.screenshot("ui-workflow")
    browser.open("/app/workflows/")
    browser.wait_for_text("#workflows", "Sales report")
    browser.screenshot("ui-workflows")

    # A phone: nothing wider than the screen.
    browser.resize(375, 812)
    browser.open("/app/schedules/")
    browser.find(f"#trigger-{weekdays.pk}")
    assert browser.page_width() <= 375, browser.page_width()
    browser.screenshot("ui-list-phone")
    browser.open(f"/app/schedules/{weekdays.pk}/")
    assert browser.page_width() <= 375, browser.page_width()
    browser.screenshot("ui-detail-phone", full_page=True)
    browser.open("/app/schedules/new/")
    assert browser.page_width() <= 375, browser.page_width()
    browser.resize(1400, 1000)

    assert browser.console_errors() == []

    # Another user: none of it.
    browser.submit("form.logout button")
    _sign_in(browser, "bob")
    assert "No schedules yet" in browser.text("main")
    assert "Weekday report" not in browser.driver.page_source
    browser.open(f"/app/schedules/{weekdays.pk}/")
    assert "not found" in browser.text("body").lower()
    browser.open(f"/app/workflows/{workflow.pk}/")
    assert "not found" in browser.text("body").lower()
    Trigger.objects.filter(pk=weekdays.pk, enabled=False, pause_reason="vendor outage").get()
