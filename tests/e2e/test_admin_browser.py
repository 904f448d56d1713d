"""The admin in a real browser (headless Chromium) against real gunicorn, celery worker and beat:
a newcomer's first hour, from logging in to seeing a run succeed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from django.contrib.auth import get_user_model
from django.utils import timezone

from schedules.models import Execution, ExecutionStatus, Trigger
from tests.factories import TriggerFactory, WorkflowFactory

from .harness import wait_for

PASSWORD = "a browser test password"  # noqa: S105


def _next_weekday_at(now: datetime, hour: int, minute: int) -> datetime:
    """The first Monday-to-Friday hour:minute UTC after now (the weekdays preset, worked out here by hand)."""
    day = now.replace(hour=hour, minute=minute, second=0, microsecond=0)
    if day <= now:
        day += timedelta(days=1)
    while day.weekday() >= 5:
        day += timedelta(days=1)
    return day


def _fits(browser) -> None:
    """The list fits the 1,400 px window: neither the page nor the results table scrolls sideways."""
    assert browser.page_width() <= 1400
    overflow = browser.driver.execute_script(
        "const r = document.querySelector('.results'); return r.scrollWidth - r.clientWidth;"
    )
    assert overflow <= 0, f"the results table is {overflow} px wider than its box"


def test_admin_in_a_browser__trigger_from_a_preset_runs_now_and_succeeds(stack, endpoint, browser_factory):
    """Log in; add a trigger from the weekdays preset (the live preview shows its next runs as it is
    typed); see it listed with its next run; run it now and see its execution succeed (the endpoint
    called once, with the execution id as Idempotency-Key). Screenshots: docs/screenshots/admin-*.png."""
    staff = get_user_model().objects.create_superuser("ada", "ada@example.com", PASSWORD)
    workflow = WorkflowFactory(owner=staff, name="Sales report", endpoint_url=endpoint.url)
    # Neighbours in the list that never fire during the test: one paused with a reason, one whose
    # last run failed after an overlap skip (the list shows the failure, not the skip).
    other = WorkflowFactory(owner=staff, name="CRM sync", endpoint_url=endpoint.url)
    paused = TriggerFactory(workflow=other, name="Hourly CRM sync", cron="0 3 1 1 *", timezone="Europe/Paris")
    paused.enabled = False
    paused.pause_reason = "CRM maintenance until Friday"
    Trigger.objects.filter(pk=paused.pk).update(enabled=False, pause_reason=paused.pause_reason)
    flaky = TriggerFactory(workflow=other, name="Nightly CRM export", cron="0 3 1 1 *", timezone="America/New_York")
    now = timezone.now().replace(microsecond=0)
    Execution.objects.create(
        trigger=flaky,
        workflow=other,
        scheduled_for=now - timedelta(minutes=30),
        status=ExecutionStatus.FAILED,
        attempts=3,
        http_status=503,
        started_at=now - timedelta(minutes=30),
        finished_at=now - timedelta(minutes=29),
        error="HTTP 503 from crm.example.com: Service Unavailable",
    )
    Execution.objects.create(
        trigger=flaky, workflow=other, scheduled_for=now - timedelta(minutes=5), status="skipped", skip_reason="overlap"
    )

    _web, base = stack.start_web()
    stack.start_worker_and_beat()
    browser = browser_factory(base)

    browser.open("/admin/login/?next=/admin/schedules/trigger/add/")
    browser.fill("#id_username", "ada")
    browser.fill("#id_password", PASSWORD)
    browser.submit("input[type=submit]")

    # Three hours from now, so beat does not fire it during the test.
    at = (datetime.now(UTC) + timedelta(hours=3)).replace(second=0, microsecond=0)
    browser.fill("#id_name", "Weekday sales report")
    browser.choose("#id_workflow", value=str(workflow.pk))
    assert not browser.find_all(".field-run_at:not([hidden])"), "a once field is shown for kind cron"
    browser.choose("#id_preset", value="weekdays")
    browser.fill("#id_preset_time", f"{at:%H:%M}")
    browser.wait_for_text("#trigger-preview", "Monday through Friday (UTC)")
    expected = _next_weekday_at(datetime.now(UTC), at.hour, at.minute)
    browser.wait_for_text("#trigger-preview", f"{expected:%Y-%m-%d %H:%M:%S} UTC")
    # The shot shows the schedule fields and, under them, the preview.
    browser.driver.execute_script("document.querySelector('#trigger-preview').previousElementSibling.scrollIntoView()")
    browser.screenshot("admin-trigger-add")
    browser.submit("input[name=_save]")

    browser.wait_for_text(".messagelist", "was added successfully")
    trigger = Trigger.objects.get(name="Weekday sales report")
    assert (trigger.cron, trigger.next_run_at) == (f"{at.minute} {at.hour} * * 1-5", expected)
    row = f"#result_list tr:has(input[value='{trigger.pk}'])"
    browser.wait_for_text(row, f"{expected:%Y-%m-%d %H:%M:%S} UTC")
    assert "Active" in browser.text(row)
    flaky_row = browser.text(f"#result_list tr:has(input[value='{flaky.pk}'])")
    assert "Failed" in flaky_row and "HTTP 503" in flaky_row
    assert "CRM maintenance until Friday" in browser.text(f"#result_list tr:has(input[value='{paused.pk}'])")
    _fits(browser)
    browser.screenshot("admin-trigger-list")

    browser.click(f"input[name=_selected_action][value='{trigger.pk}']")
    browser.choose("select[name=action]", value="run_triggers_now")
    browser.submit("button[name=index]")
    browser.wait_for_text(".messagelist", "Queued a run of Weekday sales report")
    browser.submit(".messagelist a")

    def succeeded() -> bool:
        browser.driver.refresh()
        return "Succeeded" in browser.text("#content")

    wait_for(succeeded, timeout=60, what="the execution page to say Succeeded", interval=1)
    execution = Execution.objects.get(trigger=trigger)
    assert execution.status == ExecutionStatus.SUCCEEDED
    calls = endpoint.wait_for_calls(1, timeout=5)
    assert [call.headers["idempotency-key"] for call in calls] == [str(execution.pk)]
    assert f"{execution.started_at:%Y-%m-%d %H:%M:%S} UTC" in browser.text("#content")
    browser.screenshot("admin-execution")

    browser.open(f"/admin/schedules/execution/?trigger__id__exact={trigger.pk}")
    browser.wait_for_text("#result_list", "Succeeded")
    assert "Run now" in browser.text("#result_list")
    _fits(browser)
    browser.open("/admin/schedules/execution/")
    browser.wait_for_text("#result_list", "Service Unavailable")
    _fits(browser)
    browser.screenshot("admin-executions")
    assert not browser.console_errors()
    assert len(endpoint.calls) == 1
