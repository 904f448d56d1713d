"""The self-service web UI (/app/): pages, forms, ownership, actions and query counts."""

from __future__ import annotations

import re
from datetime import timedelta
from zoneinfo import ZoneInfo

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from schedules.models import Execution, ExecutionStatus, Trigger
from tests.factories import TriggerFactory, UserFactory, WorkflowFactory
from workflows.models import AuditEvent, UserPreferences, WorkflowRun


@pytest.fixture
def signed_in(client, user):
    client.force_login(user)
    return client


def _create_data(workflow, **changes):
    data = {
        "name": "Weekday report",
        "workflow": str(workflow.pk),
        "mode": "regular",
        "when": "at",
        "preset": "weekdays",
        "time": "09:00",
        "minute": "0",
        "weekday": "1",
        "month_day": "1",
        "interval_minutes": "15",
        "timezone": "Europe/Paris",
        "inputs": '{"report": "weekly"}',
        "overlap": "skip",
        "catchup": "latest",
    }
    data.update(changes)
    return data


def test_pages__need_a_login(client, db):
    """Every page sends an anonymous visitor to the sign-in page."""
    for path in ("/app/schedules/", "/app/schedules/new/", "/app/workflows/", "/app/settings/"):
        response = client.get(path)
        assert response.status_code == 302 and response["Location"].startswith("/app/login/"), path


def test_login_page__signs_in_and_lands_on_my_schedules(client, user):
    """The sign-in form of ours, then the list."""
    assert client.get("/app/login/").status_code == 200
    response = client.post("/app/login/", {"username": user.username, "password": "password"})
    assert response.status_code == 302 and response["Location"] == "/app/schedules/"


def test_landing_page__links_the_web_ui(client, db):
    """/ links to the user's schedules."""
    assert 'href="/app/schedules/"' in client.get("/").content.decode()


def test_trigger_create__weekdays_preset_creates_it_through_the_service(signed_in, workflow):
    """A preset becomes its cron, in the chosen zone, with the JSON inputs; the audit says "web"."""
    response = signed_in.post("/app/schedules/new/", _create_data(workflow))
    trigger = Trigger.objects.get(name="Weekday report")
    assert response.status_code == 302 and response["Location"] == f"/app/schedules/{trigger.pk}/"
    assert (trigger.cron, trigger.timezone, trigger.inputs) == ("0 9 * * 1-5", "Europe/Paris", {"report": "weekly"})
    assert trigger.periodic_task is not None
    assert AuditEvent.objects.get(object_type="trigger", action="created").source == "web"


def test_trigger_create__in_n_minutes_runs_once_then(signed_in, workflow):
    """ "Run once in 2 minutes" is a once trigger two minutes from now."""
    before = timezone.now()
    signed_in.post("/app/schedules/new/", _create_data(workflow, mode="once", when="in", delay_minutes="2"))
    trigger = Trigger.objects.get()
    assert trigger.kind == "once"
    assert before + timedelta(minutes=2) <= trigger.run_at <= timezone.now() + timedelta(minutes=2)


@pytest.mark.parametrize(
    ("changes", "field", "message"),
    [
        ({"preset": "cron", "cron": "0 25 * * *"}, "cron", "hour"),
        ({"mode": "once", "run_date": "2020-01-01", "run_time": "09:00"}, "run_date", "must be in the future"),
        ({"inputs": '{"report": '}, "inputs", "not valid JSON"),
        ({"inputs": "[1, 2]"}, "inputs", "must be a JSON object"),
        ({"timezone": "Mars/Olympus"}, "timezone", "is not an IANA time zone name"),
        ({"time": "25:00"}, "time", "time must be a time of day"),
    ],
)
def test_trigger_create__bad_input_shows_the_services_message_on_its_field(
    signed_in, workflow, changes, field, message
):
    """Each error is on its field, in the service's words, and nothing is created."""
    response = signed_in.post("/app/schedules/new/", _create_data(workflow, **changes))
    assert response.status_code == 200
    errors = response.context["form"].errors
    assert field in errors, errors
    assert message in " ".join(errors[field]), errors
    assert not Trigger.objects.exists()


def test_trigger_create__duplicate_name_is_a_field_error(signed_in, workflow):
    """The owner's unique names: an error on the name, not a 500."""
    TriggerFactory(workflow=workflow, name="Weekday report")
    response = signed_in.post("/app/schedules/new/", _create_data(workflow))
    assert response.status_code == 200 and "name" in response.context["form"].errors


def test_trigger_create__another_users_workflow_is_not_a_choice(signed_in, workflow, other_user):
    """A workflow id of another user is refused by the form."""
    theirs = WorkflowFactory(owner=other_user)
    response = signed_in.post("/app/schedules/new/", _create_data(theirs))
    assert "workflow" in response.context["form"].errors
    assert not Trigger.objects.exists()


def test_trigger_preview__describes_the_schedule_and_next_runs(signed_in, workflow):
    """The live preview: the schedule in words and five next runs, nothing saved."""
    response = signed_in.post("/app/schedules/preview/", _create_data(workflow))
    page = response.content.decode()
    assert response.status_code == 200
    assert "At 09:00, Monday through Friday (Europe/Paris)" in page
    assert page.count("<li>") == 5
    assert not Trigger.objects.exists()


def test_trigger_preview__shows_the_services_error(signed_in, workflow):
    """A bad cron is explained in the preview, with the field's label."""
    response = signed_in.post("/app/schedules/preview/", _create_data(workflow, preset="cron", cron="61 * * * *"))
    page = response.content.decode()
    assert "Not valid yet" in page and "Cron expression" in page


def test_trigger_edit__changes_the_schedule(signed_in, workflow):
    """The edit form starts from the trigger (its preset recognised) and saves through trigger_update."""
    trigger = TriggerFactory(workflow=workflow, cron="30 8 * * 1-5")
    page = signed_in.get(f"/app/schedules/{trigger.pk}/edit/")
    form = page.context["form"]
    assert (form.initial["preset"], form.initial["time"]) == ("weekdays", "08:30")
    data = _create_data(workflow, name=trigger.name, preset="daily", time="07:15", timezone="UTC")
    response = signed_in.post(f"/app/schedules/{trigger.pk}/edit/", data)
    assert response.status_code == 302
    trigger.refresh_from_db()
    assert trigger.cron == "15 7 * * *"


def test_trigger_list__shows_schedule_zone_next_run_and_paused_reason(signed_in, workflow):
    """A row per schedule: words, zone, next run, and the paused badge with its reason."""
    from schedules import services

    active = TriggerFactory(workflow=workflow, name="Morning", timezone="Europe/Paris")
    paused = TriggerFactory(workflow=workflow, name="Evening")
    services.trigger_pause(trigger=paused, reason="vendor outage")
    page = signed_in.get("/app/schedules/").content.decode()
    assert "At 09:00, Monday through Friday (Europe/Paris)" in page
    assert f'datetime="{active.next_run_at.isoformat()}"' in page
    assert "Paused" in page and "vendor outage" in page


def test_trigger_list__search_and_filters(signed_in, workflow, user):
    """Search by name, filter by status and workflow."""
    from schedules import services

    other_workflow = WorkflowFactory(owner=user, name="Billing")
    TriggerFactory(workflow=workflow, name="Alpha")
    services.trigger_pause(trigger=TriggerFactory(workflow=workflow, name="Beta"))
    TriggerFactory(workflow=other_workflow, name="Gamma")

    def names(query):
        return [t.name for t in signed_in.get(f"/app/schedules/?{query}").context["triggers"]]

    assert names("q=alp") == ["Alpha"]
    assert names("status=paused") == ["Beta"]
    assert names(f"workflow={other_workflow.pk}") == ["Gamma"]
    assert names("workflow=nonsense&status=nonsense") == ["Alpha", "Beta", "Gamma"]


def _list_queries(client):
    with CaptureQueriesContext(connection) as queries:
        assert client.get("/app/schedules/").status_code == 200
    return len(queries)


def test_trigger_list__same_number_of_queries_for_3_and_30_schedules(signed_in, workflow):
    """No query per row: the list costs the same with 3 schedules as with 30 (two pages)."""
    from schedules import services

    def add(count):
        for _ in range(count):
            trigger = TriggerFactory(workflow=workflow)
            Execution.objects.create(
                trigger=trigger,
                workflow=workflow,
                scheduled_for=timezone.now(),
                status=ExecutionStatus.FAILED,
                error="boom",
            )
            services.trigger_pause(trigger=trigger, reason="why", by=workflow.owner)

    add(3)
    few = _list_queries(signed_in)
    add(27)
    many = _list_queries(signed_in)
    assert few == many, (few, many)


def test_trigger_detail__same_number_of_queries_for_3_and_30_executions(signed_in, trigger):
    """The history costs the same however many executions it shows."""

    def add(count):
        for _ in range(count):
            Execution.objects.create(
                trigger=trigger,
                workflow=trigger.workflow,
                scheduled_for=timezone.now(),
                manual=True,
                status=ExecutionStatus.SUCCEEDED,
                duration_ms=120,
            )

    add(3)
    with CaptureQueriesContext(connection) as few:
        signed_in.get(f"/app/schedules/{trigger.pk}/")
    add(27)
    with CaptureQueriesContext(connection) as many:
        signed_in.get(f"/app/schedules/{trigger.pk}/")
    assert len(few) == len(many)


def test_workflow_pages__same_number_of_queries_as_they_grow(signed_in, user):
    """The workflow list and detail cost the same with 3 or 30 workflows / schedules."""
    workflow = WorkflowFactory(owner=user)

    def measure(path):
        with CaptureQueriesContext(connection) as queries:
            assert signed_in.get(path).status_code == 200
        return len(queries)

    for _ in range(3):
        WorkflowFactory(owner=user)
        TriggerFactory(workflow=workflow)
    few = (measure("/app/workflows/"), measure(f"/app/workflows/{workflow.pk}/"))
    for _ in range(27):
        WorkflowFactory(owner=user)
        TriggerFactory(workflow=workflow)
    assert (measure("/app/workflows/"), measure(f"/app/workflows/{workflow.pk}/")) == few


def test_trigger_detail__shows_history_stats_chart_and_no_secret(signed_in, trigger):
    """History rows with status, HTTP status and error; the SVG chart; never the workflow's secret."""
    Execution.objects.create(
        trigger=trigger,
        workflow=trigger.workflow,
        scheduled_for=timezone.now(),
        status=ExecutionStatus.FAILED,
        http_status=500,
        error="endpoint said no",
        attempts=3,
        duration_ms=250,
    )
    page = signed_in.get(f"/app/schedules/{trigger.pk}/").content.decode()
    assert "endpoint said no" in page and ">500<" in page and "<svg" in page
    assert trigger.workflow.secret not in page


def test_other_users_objects__are_404(client, trigger, other_user):
    """Another user's schedule, its actions and its workflow do not exist for them."""
    client.force_login(other_user)
    base = f"/app/schedules/{trigger.pk}/"
    for path in (base, base + "edit/", base + "history/", base + "delete/", f"/app/workflows/{trigger.workflow_id}/"):
        assert client.get(path).status_code == 404, path
    for action in ("pause/", "resume/", "run/", "backfill/", "delete/"):
        assert client.post(base + action).status_code == 404, action
    assert client.get("/app/schedules/").context["triggers"] == []
    assert Trigger.objects.filter(pk=trigger.pk, enabled=True).exists()


def test_malformed_ids__are_404(signed_in):
    """An id that is not one, or past the id range, matches no route."""
    for path in ("/app/schedules/abc/", "/app/schedules/99999999999999999999/", "/app/schedules/-1/"):
        assert signed_in.get(path).status_code == 404, path


def test_actions__are_post_only(signed_in, trigger):
    """GET never changes anything."""
    for action in ("pause/", "resume/", "run/", "backfill/"):
        assert signed_in.get(f"/app/schedules/{trigger.pk}/{action}").status_code == 405, action


def test_actions__need_the_csrf_token(client, user, trigger):
    """A POST without the CSRF token is refused."""
    from django.test import Client

    strict = Client(enforce_csrf_checks=True)
    strict.force_login(user)
    assert strict.post(f"/app/schedules/{trigger.pk}/pause/", {"reason": "x"}).status_code == 403
    trigger.refresh_from_db()
    assert trigger.enabled


def test_pause_and_resume(signed_in, trigger):
    """Pause with a reason shows the badge; resume clears it; a second pause is a message, not an error page."""
    response = signed_in.post(f"/app/schedules/{trigger.pk}/pause/", {"reason": "vendor outage"}, follow=True)
    page = response.content.decode()
    assert 'id="paused-badge"' in page and "vendor outage" in page
    again = signed_in.post(f"/app/schedules/{trigger.pk}/pause/", {"reason": "x"}, follow=True)
    assert "is already paused" in again.content.decode()
    signed_in.post(f"/app/schedules/{trigger.pk}/resume/")
    trigger.refresh_from_db()
    assert trigger.enabled and not trigger.pause_reason


def test_run_now__queues_an_execution_with_the_overrides(signed_in, trigger):
    """Run now merges the overrides; bad JSON is a message and queues nothing."""
    bad = signed_in.post(f"/app/schedules/{trigger.pk}/run/", {"inputs": "{nope"}, follow=True)
    assert "not valid JSON" in bad.content.decode()
    assert not Execution.objects.exists()
    signed_in.post(f"/app/schedules/{trigger.pk}/run/", {"inputs": '{"report": "daily"}'})
    execution = Execution.objects.get()
    assert execution.manual and execution.inputs["report"] == "daily"


def test_backfill__runs_past_slots_and_refuses_the_future(signed_in, workflow):
    """Backfill a past range; an end in the future is the service's message."""
    trigger = TriggerFactory(workflow=workflow, cron="0 * * * *")
    now = timezone.now()  # the user has not chosen a zone: the form reads UTC
    start = (now - timedelta(hours=3)).strftime("%Y-%m-%dT%H:%M")
    end = (now - timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M")
    data = {"start": start, "end": end, "overlap": "allow"}
    response = signed_in.post(f"/app/schedules/{trigger.pk}/backfill/", data, follow=True)
    assert "Backfill: 3 runs queued" in response.content.decode()
    future = (now + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M")
    response = signed_in.post(
        f"/app/schedules/{trigger.pk}/backfill/", {"start": start, "end": future, "overlap": "allow"}, follow=True
    )
    assert "must not be in the future" in response.content.decode()


def test_delete__asks_then_deletes(signed_in, trigger):
    """GET asks for confirmation; POST deletes."""
    assert "cannot be undone" in signed_in.get(f"/app/schedules/{trigger.pk}/delete/").content.decode()
    assert Trigger.objects.filter(pk=trigger.pk).exists()
    response = signed_in.post(f"/app/schedules/{trigger.pk}/delete/")
    assert response.status_code == 302 and not Trigger.objects.filter(pk=trigger.pk).exists()


def test_preferences__times_in_the_users_zone(signed_in, user, trigger):
    """A user's zone: saved, validated, and used for the times shown (UTC on hover)."""
    bad = signed_in.post("/app/settings/", {"timezone": "Nowhere/Land"})
    assert "is not an IANA time zone name" in " ".join(bad.context["form"].errors["timezone"])
    signed_in.post("/app/settings/", {"timezone": "Asia/Tokyo"})
    assert UserPreferences.objects.get(user=user).timezone == "Asia/Tokyo"
    page = signed_in.get("/app/schedules/").content.decode()
    assert re.search(r"\d{2}:\d{2} JST</time>", page), page


def test_workflow_pages__list_detail_without_secrets(signed_in, trigger):
    """The workflow list and detail: name, endpoint without its query string, schedules, runs; no secret."""
    workflow = trigger.workflow
    workflow.endpoint_url = "https://hooks.example.com/run?token=s3cret"
    workflow.save()
    listing = signed_in.get("/app/workflows/").content.decode()
    detail = signed_in.get(f"/app/workflows/{workflow.pk}/").content.decode()
    for page in (listing, detail):
        assert "https://hooks.example.com/run" in page and "s3cret" not in page and workflow.secret not in page
    assert trigger.name in detail


def test_second_user_sees_nothing_of_the_first(client, trigger):
    """A second user's list is empty."""
    client.force_login(UserFactory())
    page = client.get("/app/schedules/").content.decode()
    assert trigger.name not in page and "No schedules yet" in page


def test_bad_input__never_a_server_error(signed_in, trigger):
    """NUL characters in a search or in JSON inputs, and odd page numbers, are answered, not a 500."""
    assert signed_in.get("/app/schedules/?q=a%00b&page=abc&workflow=99999999999999999999999").status_code == 200
    response = signed_in.post(f"/app/schedules/{trigger.pk}/run/", {"inputs": '{"a": "\\u0000"}'}, follow=True)
    assert "NUL" in response.content.decode()
    assert not Execution.objects.exists()
    data = _create_data(trigger.workflow, name="nul", inputs='{"a": "\\u0000"}')
    assert "NUL" in " ".join(signed_in.post("/app/schedules/new/", data).context["form"].errors["inputs"])


def test_pages__label_every_field_and_load_assets_from_this_server(signed_in, trigger):
    """Every input, select and textarea has a <label for>, and CSS, JS and icon come from this server."""
    for path in ("/app/schedules/new/", f"/app/schedules/{trigger.pk}/", "/app/schedules/", "/app/settings/"):
        page = signed_in.get(path).content.decode()
        fields = re.findall(r'<(?:input|select|textarea)\b(?![^>]*type="(?:hidden|submit)")[^>]*\bid="([^"]+)"', page)
        assert fields, path
        for field_id in fields:
            assert f'for="{field_id}"' in page, (path, field_id)
        for asset in re.findall(r'(?:src|href)="([^"]+\.(?:js|css|svg))"', page):
            assert asset.startswith("/static/"), asset
            assert signed_in.get(asset).status_code == 200, asset


def test_trigger_edit__a_once_schedule_keeps_its_seconds_when_its_time_is_unchanged(signed_in, workflow):
    """The form shows minutes; renaming an "in N minutes" schedule does not move it."""
    run_at = (timezone.now() + timedelta(hours=2)).replace(second=37, microsecond=0)
    trigger = TriggerFactory(workflow=workflow, kind="once", run_at=run_at)
    initial = signed_in.get(f"/app/schedules/{trigger.pk}/edit/").context["form"].initial
    data = _create_data(
        workflow,
        name="renamed",
        mode="once",
        when="at",
        run_date=initial["run_date"].isoformat(),
        run_time=initial["run_time"].strftime("%H:%M"),
        timezone=trigger.timezone,
    )
    assert signed_in.post(f"/app/schedules/{trigger.pk}/edit/", data).status_code == 302
    trigger.refresh_from_db()
    assert (trigger.name, trigger.run_at) == ("renamed", run_at)


def test_trigger_create__offers_tomorrow_at_nine_in_the_users_zone(signed_in, user):
    """The "run once at" fields start at tomorrow 09:00 in the user's zone."""
    UserPreferences.objects.create(user=user, timezone="Asia/Tokyo")
    form = signed_in.get("/app/schedules/new/").context["form"]
    tomorrow = timezone.localtime(timezone.now(), ZoneInfo("Asia/Tokyo")).date() + timedelta(days=1)
    assert (form.initial["timezone"], form.initial["run_date"], form.initial["run_time"].hour) == (
        "Asia/Tokyo",
        tomorrow,
        9,
    )


def test_trigger_preview__staff_editing_someone_elses_schedule_previews_with_their_workflows(client, trigger):
    """The edit page's preview reads the schedule's owner's workflows (a user only reaches their own)."""
    staff = UserFactory(is_staff=True)
    client.force_login(staff)
    data = _create_data(trigger.workflow)
    page = client.post(f"/app/schedules/preview/?trigger={trigger.pk}", data).content.decode()
    assert "Monday through Friday" in page
    client.force_login(UserFactory())
    assert client.post(f"/app/schedules/preview/?trigger={trigger.pk}", data).status_code == 404


def test_execution_retry__reruns_a_failed_one_for_its_owner_only(client, user, other_user, trigger):
    """Retry makes a new execution with the same inputs; another user's is a 404; a success is a message."""
    failed = Execution.objects.create(
        trigger=trigger, workflow=trigger.workflow, scheduled_for=timezone.now(), status=ExecutionStatus.FAILED
    )
    client.force_login(other_user)
    assert client.post(f"/app/executions/{failed.pk}/retry/").status_code == 404
    client.force_login(user)
    assert client.get(f"/app/executions/{failed.pk}/retry/").status_code == 405
    response = client.post(f"/app/executions/{failed.pk}/retry/", follow=True)
    assert "Retry queued" in response.content.decode()
    assert Execution.objects.filter(retry_of=failed).count() == 1
    again = client.post(f"/app/executions/{Execution.objects.get(retry_of=failed).pk}/retry/", follow=True)
    assert "only a failed execution can be retried" in again.content.decode()


def test_pages__a_stored_zone_no_longer_known_falls_back_to_utc(signed_in, user, trigger):
    """A zone a later tzdata dropped shows UTC instead of failing."""
    UserPreferences.objects.create(user=user, timezone="Nowhere/Gone")
    page = signed_in.get("/app/schedules/").content.decode()
    assert " UTC</time>" in page


def test_trigger_list__last_run_is_the_last_outcome_not_a_skip(signed_in, workflow):
    """An overlap skip after a failure does not hide it: the list shows the failure and its error."""
    trigger = TriggerFactory(workflow=workflow, name="flaky")
    now = timezone.now()
    Execution.objects.create(
        trigger=trigger,
        workflow=workflow,
        scheduled_for=now - timedelta(minutes=10),
        status=ExecutionStatus.FAILED,
        error="HTTP 503 from the endpoint",
    )
    Execution.objects.create(
        trigger=trigger,
        workflow=workflow,
        scheduled_for=now - timedelta(minutes=1),
        status=ExecutionStatus.SKIPPED,
        skip_reason="overlap",
    )
    content = signed_in.get("/app/schedules/").content.decode()
    assert "HTTP 503 from the endpoint" in content
    assert "Skipped" not in content


def _engine_run(workflow, key, steps):
    """A run of the built-in engine with its step history (as the runner writes it)."""
    from workflows.models import WorkflowStep

    now = timezone.now()
    run = WorkflowRun.objects.create(
        workflow=workflow,
        idempotency_key=key,
        status="failed",
        started_at=now,
        finished_at=now,
        error="step notify: HTTP 500",
    )
    for seq, (step_id, action, status, error) in enumerate(steps, start=1):
        WorkflowStep.objects.create(
            run=run,
            seq=seq,
            step_id=step_id,
            action=action,
            status=status,
            started_at=now,
            finished_at=now + timedelta(milliseconds=250),
            output_excerpt='{"ok": true}' if not error else "",
            error=error,
        )
    return run


def test_workflow_detail__shows_each_engine_runs_steps(signed_in, user):
    """A workflow's page lists its engine runs with their status and each step (id, action, status,
    duration, output or error), in the same number of queries for 1 run or 6 runs of many steps."""
    workflow = WorkflowFactory(owner=user)
    steps = [("fetch", "http", "succeeded", ""), ("notify", "http", "failed", "HTTP 500 from hooks.example")]
    run = _engine_run(workflow, "one", steps)
    path = f"/app/workflows/{workflow.pk}/"
    with CaptureQueriesContext(connection) as few:
        content = signed_in.get(path).content.decode()
    for text in (str(run.pk), "step notify: HTTP 500", "fetch", "(http)", "HTTP 500 from hooks.example", "250 ms"):
        assert text in content, text
    assert "status-failed" in content and "status-succeeded" in content
    for index in range(5):
        _engine_run(workflow, f"more-{index}", steps * 3)
    with CaptureQueriesContext(connection) as many:
        assert signed_in.get(path).status_code == 200
    assert len(many) == len(few)


def test_error_pages__404_and_500_are_the_ui_s_own_pages(client, user):
    """A page that does not exist answers the UI's own 404 page (no Django debug page, no traceback);
    a server error answers its 500 page, which needs no request context."""
    from django.test import RequestFactory
    from django.views.defaults import server_error

    anonymous = client.get("/app/no-such-page/")
    assert anonymous.status_code == 404
    client.force_login(user)
    response = client.get("/app/no-such-page/")
    content = response.content.decode()
    assert response.status_code == 404
    assert "Page not found" in content and "schedules/ui.css" in content and "/app/no-such-page/" in content
    assert "Back to my schedules" in content and "Traceback" not in content
    error = server_error(RequestFactory().get("/app/"))
    assert error.status_code == 500
    assert "Something went wrong" in error.content.decode() and "schedules/ui.css" in error.content.decode()
