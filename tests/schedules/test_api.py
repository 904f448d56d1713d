"""The schedules API: /api/triggers/ (CRUD, actions, preview, audit), /api/executions/, stats and /api/health/."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.core.cache import cache
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from django_celery_beat.models import PeriodicTask
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from schedules import dispatch, selectors, services
from schedules.models import Execution, ExecutionOrigin, ExecutionStatus, Trigger
from tests.factories import TriggerFactory, UserFactory, WorkflowFactory
from workflows.models import AuditEvent


@pytest.fixture(autouse=True)
def _fresh_throttles():
    """Throttle counters live in the cache, keyed by user id, and ids repeat across tests."""
    cache.clear()
    yield
    cache.clear()


def api_for(user) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    return client


@pytest.fixture
def api(user):
    return api_for(user)


def errors(response) -> dict[str, list[str]]:
    body = response.json()
    assert set(body) == {"errors"}, body
    assert all(isinstance(messages, list) and messages for messages in body["errors"].values()), body
    return body["errors"]


def new_trigger(api, workflow, **fields):
    body = {"name": "Morning report", "workflow": workflow.pk, "cron": "0 9 * * 1-5", **fields}
    response = api.post("/api/triggers/", body)
    assert response.status_code == 201, response.content
    return response.json()


def execution(trigger, *, status=ExecutionStatus.SUCCEEDED, hours_ago=1, **fields) -> Execution:
    return Execution.objects.create(
        trigger=trigger,
        workflow=trigger.workflow,
        scheduled_for=timezone.now() - timedelta(hours=hours_ago),
        status=status,
        **fields,
    )


# --- Create -------------------------------------------------------------------------------------


def test_trigger_create__cron_answers_schedule_next_runs_and_status(api, user, workflow):
    """A created trigger answers with its fields, the schedule in words, next runs, counts and status."""
    body = new_trigger(api, workflow, timezone="America/Los_Angeles", inputs={"report": "daily"})
    trigger = Trigger.objects.get(pk=body["id"])
    assert (trigger.owner, trigger.workflow, trigger.timezone) == (user, workflow, "America/Los_Angeles")
    assert PeriodicTask.objects.filter(pk=trigger.periodic_task_id).exists()
    assert body["owner"] == user.username and body["workflow"] == workflow.pk
    assert body["status"] == "active" and body["enabled"] is True
    assert "09:00" in body["description"] and "America/Los_Angeles" in body["description"]
    assert len(body["next_runs"]) == 5
    first = body["next_runs"][0]
    assert first["runs"] is True and first["reason"] == ""
    assert datetime.fromisoformat(first["at"]) == trigger.next_run_at
    assert datetime.fromisoformat(first["local"]).hour == 9  # shown in the trigger's zone
    assert body["next_run_at"] and body["last_status"] is None and body["finished_executions"] == 0
    assert (body["run_count"], body["runs_remaining"]) == (0, None)
    assert body["inputs"] == {"report": "daily"}
    for name in ("pause_reason", "paused_by", "paused_at", "catchup", "overlap", "priority", "max_attempts"):
        assert name in body
    for write_only in ("preset", "time", "day", "minute", "delay_seconds"):
        assert write_only not in body


def test_trigger_create__every_editable_field(api, user, workflow):
    """Every option is accepted under its model name."""
    fallback = WorkflowFactory(owner=user)
    body = new_trigger(
        api,
        workflow,
        enabled=False,
        dst_policy="skip_missing",
        start_at="2030-01-01T00:00:00Z",
        end_at="2031-01-01T00:00:00Z",
        max_runs=10,
        jitter_seconds=30,
        execution_window={"days": [1, 2, 3, 4, 5], "ranges": [["08:00", "18:00"]]},
        catchup="all",
        catchup_window_seconds=600,
        overlap="buffer_one",
        priority="high",
        pause_after_failures=3,
        notify_emails="ops@example.com",
        notify_webhook_url="https://hooks.example.com/x",
        fallback_workflow=fallback.pk,
        keep_succeeded=10,
        keep_failed=20,
        retention_days=7,
        max_attempts=4,
        min_backoff_seconds=2,
        max_backoff_seconds=100,
        max_doublings=2,
        max_retry_duration_seconds=900,
    )
    trigger = Trigger.objects.get(pk=body["id"])
    assert body["status"] == "paused" and trigger.paused_at is not None
    assert (trigger.max_runs, trigger.priority, trigger.fallback_workflow) == (10, "high", fallback)
    assert (trigger.max_attempts, trigger.max_backoff_seconds, trigger.retention_days) == (4, 100, 7)
    assert body["runs_remaining"] == 10
    assert body["next_runs"][0]["reason"] == "paused"


def test_trigger_create__retry_policy_defaults_to_the_workflows(api, user):
    """Retry fields left out come from the workflow, not the model defaults."""
    workflow = WorkflowFactory(owner=user, max_attempts=7, min_backoff_seconds=11)
    body = new_trigger(api, workflow)
    assert (body["max_attempts"], body["min_backoff_seconds"]) == (7, 11)


def test_trigger_create__preset_becomes_cron(api, workflow):
    """A preset with its time is turned into the cron expression."""
    body = new_trigger(api, workflow, cron="", preset="weekdays", time="09:30", timezone="Europe/Paris")
    assert body["cron"] == "30 9 * * 1-5" and body["kind"] == "cron"
    weekly = new_trigger(api, workflow, name="weekly", cron="", preset="weekly", day="MON", time="07:00")
    assert weekly["cron"] == "0 7 * * 1"
    hourly = new_trigger(api, workflow, name="hourly", cron="", preset="hourly", minute=15)
    assert hourly["cron"] == "15 * * * *"


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"cron": "", "preset": "weekly", "time": "09:00"}, "day"),
        ({"cron": "", "preset": "daily", "time": "25:00"}, "time"),
        ({"cron": "", "preset": "daily"}, "time"),
        ({"cron": "", "preset": "fortnightly", "time": "09:00"}, "preset"),
        ({"cron": "0 9 * * *", "preset": "daily", "time": "09:00"}, "preset"),
        ({"cron": "", "kind": "interval", "interval_seconds": 60, "preset": "daily", "time": "09:00"}, "preset"),
        ({"cron": "", "preset": "daily", "time": "09:00", "minute": 5}, "minute"),
        ({"time": "09:00"}, "time"),
    ],
)
def test_trigger_create__bad_preset_is_400_naming_the_field(api, workflow, fields, field):
    """Preset mistakes name the parameter that is wrong."""
    response = api.post("/api/triggers/", {"name": "t", "workflow": workflow.pk, **fields})
    assert response.status_code == 400
    assert field in errors(response)
    assert not Trigger.objects.exists()


def test_trigger_create__once_with_delay_seconds(api, workflow):
    """delay_seconds makes a once trigger run that many seconds from now."""
    before = timezone.now()
    body = new_trigger(api, workflow, kind="once", cron="", delay_seconds=600)
    run_at = datetime.fromisoformat(body["run_at"])
    assert before + timedelta(seconds=600) <= run_at <= timezone.now() + timedelta(seconds=600)
    assert body["runs_remaining"] is None and len(body["next_runs"]) == 1
    assert body["description"].startswith("Once at")


def test_trigger_create__interval(api, workflow):
    """An interval trigger runs every interval_seconds."""
    body = new_trigger(api, workflow, kind="interval", cron="", interval_seconds=900)
    assert body["description"] == "Every 15 minutes"
    first, second = (datetime.fromisoformat(run["at"]) for run in body["next_runs"][:2])
    assert second - first == timedelta(minutes=15)


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"cron": "61 * * * *"}, "cron"),
        ({"cron": "every day"}, "cron"),
        ({"cron": "0 0 31 2 *"}, "cron"),  # never fires
        ({"cron": ""}, "cron"),
        ({"timezone": "Mars/Olympus"}, "timezone"),
        ({"kind": "weekly"}, "kind"),
        ({"priority": "urgent"}, "priority"),
        ({"catchup": "maybe"}, "catchup"),
        ({"kind": "once", "cron": "", "run_at": "2001-01-01T00:00:00Z"}, "run_at"),
        ({"kind": "once", "cron": "", "run_at": "yesterday"}, "run_at"),
        ({"kind": "once", "cron": ""}, "run_at"),
        ({"kind": "once", "cron": "", "delay_seconds": 0}, "delay_seconds"),
        ({"delay_seconds": 60}, "delay_seconds"),
        ({"kind": "interval", "cron": "", "interval_seconds": 0}, "interval_seconds"),
        ({"min_backoff_seconds": 100, "max_backoff_seconds": 10}, "min_backoff_seconds"),
        ({"execution_window": {"days": [9]}}, "execution_window"),
        ({"execution_window": False}, "execution_window"),
        ({"execution_window": []}, "execution_window"),
        ({"inputs": [1]}, "inputs"),
        ({"notify_emails": "not an address"}, "notify_emails"),
        ({"start_at": "2030-01-02T00:00:00Z", "end_at": "2030-01-01T00:00:00Z"}, "end_at"),
        ({"enabeld": False}, "enabeld"),
        ({"workflow": 999999}, "workflow"),
        ({"workflow": "one"}, "workflow"),
        ({"name": ""}, "name"),
    ],
)
def test_trigger_create__bad_input_is_400_naming_the_field(api, workflow, fields, field):
    """Bad input answers 400 with that field's messages; nothing is created, beat is untouched."""
    body = {"name": "t", "workflow": workflow.pk, "cron": "0 9 * * *", **fields}
    response = api.post("/api/triggers/", body)
    assert response.status_code == 400, response.content
    assert field in errors(response)
    assert not Trigger.objects.exists()
    assert not PeriodicTask.objects.filter(name__startswith="trigger").exists()


def test_trigger_create__another_users_workflow_is_400_on_workflow(api, other_user, workflow):
    """A trigger cannot point at another user's workflow: 400 naming workflow, worded as for a missing one."""
    theirs = WorkflowFactory(owner=other_user)
    response = api.post("/api/triggers/", {"name": "t", "workflow": theirs.pk, "cron": "0 9 * * *"})
    assert response.status_code == 400
    message = errors(response)["workflow"]
    missing = api.post("/api/triggers/", {"name": "t", "workflow": 999999, "cron": "0 9 * * *"})
    assert message == [m.replace("999999", str(theirs.pk)) for m in errors(missing)["workflow"]]
    fallback = api.post(
        "/api/triggers/", {"name": "t", "workflow": workflow.pk, "cron": "0 9 * * *", "fallback_workflow": theirs.pk}
    )
    assert fallback.status_code == 400 and "fallback_workflow" in errors(fallback)
    assert not Trigger.objects.exists()


def test_trigger_create__duplicate_name_is_400_on_name(api, workflow):
    """A name the owner already uses is a 400 naming "name"."""
    new_trigger(api, workflow)
    response = api.post("/api/triggers/", {"name": "Morning report", "workflow": workflow.pk, "cron": "0 9 * * *"})
    assert response.status_code == 400 and "name" in errors(response)


# --- Read, update, delete -----------------------------------------------------------------------


def test_trigger_update__patch_schedule_moves_next_run(api, trigger):
    """PATCH cron changes the schedule and next_run_at."""
    response = api.patch(f"/api/triggers/{trigger.pk}/", {"cron": "30 6 * * *", "timezone": "Asia/Tokyo"})
    assert response.status_code == 200, response.content
    trigger.refresh_from_db()
    assert (trigger.cron, trigger.timezone) == ("30 6 * * *", "Asia/Tokyo")
    assert datetime.fromisoformat(response.json()["next_run_at"]) == trigger.next_run_at
    assert datetime.fromisoformat(response.json()["next_runs"][0]["local"]).strftime("%H:%M") == "06:30"


def test_trigger_update__put_preset_and_delay(api, trigger, workflow):
    """PUT replaces the editable fields; a preset or delay_seconds works on update too."""
    response = api.put(
        f"/api/triggers/{trigger.pk}/",
        {"name": "Renamed", "workflow": workflow.pk, "preset": "daily", "time": "18:00", "cron": ""},
    )
    assert response.status_code == 200, response.content
    assert (response.json()["name"], response.json()["cron"]) == ("Renamed", "0 18 * * *")
    before = timezone.now()
    response = api.patch(f"/api/triggers/{trigger.pk}/", {"kind": "once", "cron": "", "delay_seconds": 120})
    assert response.status_code == 200, response.content
    assert datetime.fromisoformat(response.json()["run_at"]) >= before + timedelta(seconds=120)


def test_trigger_update__enabled_false_pauses(api, trigger):
    """PATCH enabled=false pauses, true resumes."""
    assert api.patch(f"/api/triggers/{trigger.pk}/", {"enabled": False}).json()["status"] == "paused"
    assert api.patch(f"/api/triggers/{trigger.pk}/", {"enabled": True}).json()["status"] == "active"


def test_trigger_update__bad_input_is_400_and_unchanged(api, trigger, other_user):
    """Invalid updates answer 400 by field and change nothing."""
    theirs = WorkflowFactory(owner=other_user)
    for body, field in (
        ({"cron": "0 25 * * *"}, "cron"),
        ({"timezone": "Nowhere/City"}, "timezone"),
        ({"workflow": theirs.pk}, "workflow"),
        ({"kind": "once"}, "run_at"),
        ({"delay_seconds": 10}, "delay_seconds"),
        ({"owner": other_user.pk, "bogus": 1}, "bogus"),
    ):
        response = api.patch(f"/api/triggers/{trigger.pk}/", body)
        assert response.status_code == 400, (body, response.content)
        assert field in errors(response), body
    trigger.refresh_from_db()
    assert (trigger.cron, trigger.kind, trigger.timezone, trigger.owner_id) == (
        "0 9 * * 1-5",
        "cron",
        "UTC",
        trigger.owner_id,
    )


def test_trigger_update__read_only_fields_are_ignored(api, trigger):
    """A GET body sent back with PUT works: read-only fields (status, run_count, ...) are ignored."""
    body = api.get(f"/api/triggers/{trigger.pk}/").json()
    response = api.put(f"/api/triggers/{trigger.pk}/", {**body, "run_count": 99, "name": "Again"})
    assert response.status_code == 200, response.content
    trigger.refresh_from_db()
    assert (trigger.name, trigger.run_count) == ("Again", 0)


def test_trigger_delete__removes_trigger_and_beat_entry(api, trigger):
    """DELETE removes the trigger, its executions and its PeriodicTask."""
    task_id = trigger.periodic_task_id
    execution(trigger)
    assert api.delete(f"/api/triggers/{trigger.pk}/").status_code == 204
    assert not Trigger.objects.exists() and not Execution.objects.exists()
    assert not PeriodicTask.objects.filter(pk=task_id).exists()


def test_trigger_list__filters(api, user, workflow):
    """The list filters by workflow, kind, enabled, status and priority."""
    other_workflow = WorkflowFactory(owner=user)
    active = TriggerFactory(workflow=workflow, name="active")
    paused = TriggerFactory(workflow=workflow, name="paused", enabled=False)
    done = TriggerFactory(workflow=other_workflow, name="done", kind="interval", priority="high")
    Trigger.objects.filter(pk=done.pk).update(completed_at=timezone.now())

    def names(query: str) -> list[str]:
        response = api.get(f"/api/triggers/?{query}")
        assert response.status_code == 200, response.content
        return [row["name"] for row in response.json()["results"]]

    assert names(f"workflow={workflow.pk}") == [active.name, paused.name]
    assert names("kind=interval") == ["done"]
    assert names("enabled=false") == ["paused"]
    assert names("status=active") == ["active"]
    assert names("status=paused") == ["paused"]
    assert names("status=completed") == ["done"]
    assert names("priority=high") == ["done"]
    assert names("ordering=-name") == ["paused", "done", "active"]
    for bad in ("status=stopped", "kind=weekly", "priority=urgent", "workflow=abc"):
        response = api.get(f"/api/triggers/?{bad}")
        assert response.status_code == 400 and bad.split("=")[0] in errors(response)


def test_trigger_list__last_status_without_a_query_per_trigger(api, workflow):
    """last_status and finished_executions come annotated: the number of queries does not grow with the triggers."""
    first = TriggerFactory(workflow=workflow, name="a")
    services.stats_record(execution=execution(first, status=ExecutionStatus.FAILED, hours_ago=1))
    services.stats_record(execution=execution(first, status=ExecutionStatus.SUCCEEDED, hours_ago=2))
    with CaptureQueriesContext(connection) as few:
        body = api.get("/api/triggers/").json()
    assert body["results"][0]["last_status"] == "failed" and body["results"][0]["finished_executions"] == 2
    for index in range(6):
        execution(TriggerFactory(workflow=workflow, name=f"b{index}"))
    with CaptureQueriesContext(connection) as many:
        assert api.get("/api/triggers/").json()["count"] == 7
    assert len(many) == len(few)


# --- Actions ------------------------------------------------------------------------------------


def test_trigger_pause_and_resume(api, user, trigger):
    """pause records who, when and why; pausing twice is 409; resume clears it; resuming twice is 409."""
    response = api.post(f"/api/triggers/{trigger.pk}/pause/", {"reason": "vendor outage"})
    assert response.status_code == 200, response.content
    body = response.json()
    assert (body["status"], body["enabled"], body["pause_reason"]) == ("paused", False, "vendor outage")
    assert body["paused_by"] == user.username and body["paused_at"]
    again = api.post(f"/api/triggers/{trigger.pk}/pause/", {"reason": "again"})
    assert again.status_code == 409
    assert "already paused" in errors(again)["non_field_errors"][0]
    trigger.refresh_from_db()
    assert trigger.pause_reason == "vendor outage"
    resumed = api.post(f"/api/triggers/{trigger.pk}/resume/")
    assert resumed.status_code == 200 and resumed.json()["status"] == "active"
    assert resumed.json()["pause_reason"] == "" and resumed.json()["paused_by"] is None
    assert api.post(f"/api/triggers/{trigger.pk}/resume/").status_code == 409


def test_trigger_pause__reason_too_long_is_400(api, trigger):
    """A reason over 500 characters is refused."""
    response = api.post(f"/api/triggers/{trigger.pk}/pause/", {"reason": "x" * 501})
    assert response.status_code == 400 and "reason" in errors(response)


def test_trigger_run__202_with_the_execution(api, trigger):
    """run queues a manual execution with the input overrides and answers 202 with it."""
    response = api.post(f"/api/triggers/{trigger.pk}/run/", {"inputs": {"region": "eu"}})
    assert response.status_code == 202, response.content
    body = response.json()
    created = Execution.objects.get()
    assert body["id"] == str(created.pk) and body["trigger"] == trigger.pk
    assert (body["origin"], body["status"], body["manual"]) == ("manual", "queued", True)
    assert body["inputs"]["region"] == "eu"
    assert api.post(f"/api/triggers/{trigger.pk}/run/").status_code == 202


def test_trigger_run__bad_inputs_is_400_and_inactive_workflow_409(api, trigger):
    """inputs must be an object without NULs (400); an inactive workflow cannot run (409 naming workflow)."""
    for inputs in ([1, 2], {"region": ["e\u0000u"]}):
        response = api.post(f"/api/triggers/{trigger.pk}/run/", {"inputs": inputs})
        assert response.status_code == 400 and "inputs" in errors(response)
    trigger.workflow.is_active = False
    trigger.workflow.save()
    response = api.post(f"/api/triggers/{trigger.pk}/run/")
    assert response.status_code == 409 and "workflow" in errors(response)
    assert not Execution.objects.exists()


def test_trigger_backfill__202_with_counts_and_ids(api, workflow):
    """backfill queues the past slots in the range and answers the counts and the new execution ids."""
    trigger = TriggerFactory(workflow=workflow, cron="0 * * * *")
    end = timezone.now().replace(minute=30, second=0, microsecond=0) - timedelta(hours=1)
    start = end - timedelta(hours=3)
    response = api.post(f"/api/triggers/{trigger.pk}/backfill/", {"start": start.isoformat(), "end": end.isoformat()})
    assert response.status_code == 202, response.content
    body = response.json()
    assert (body["created"], body["existing"], body["skipped"]) == (3, 0, 0)
    assert sorted(body["execution_ids"]) == sorted(str(pk) for pk in Execution.objects.values_list("pk", flat=True))
    again = api.post(f"/api/triggers/{trigger.pk}/backfill/", {"start": start.isoformat(), "end": end.isoformat()})
    assert again.json()["existing"] == 3 and again.json()["created"] == 0


def test_trigger_backfill__bad_ranges_are_400(api, settings, trigger):
    """A range that is too big, in the future, reversed or with an unknown overlap is a 400 by field."""
    settings.SCHEDULER_BACKFILL_MAX_SLOTS = 3
    now = timezone.now()
    cases = [
        ({"start": now - timedelta(days=30), "end": now - timedelta(days=1)}, "end"),  # > 3 slots
        ({"start": now - timedelta(days=1), "end": now + timedelta(days=1)}, "end"),
        ({"start": now - timedelta(days=1), "end": now - timedelta(days=2)}, "end"),
        ({"start": now - timedelta(days=2), "end": now - timedelta(days=1), "overlap": "sometimes"}, "overlap"),
        ({"end": now - timedelta(days=1)}, "start"),
        ({"start": "last week", "end": now - timedelta(days=1)}, "start"),
    ]
    for body, field in cases:
        data = {key: value.isoformat() if isinstance(value, datetime) else value for key, value in body.items()}
        response = api.post(f"/api/triggers/{trigger.pk}/backfill/", data)
        assert response.status_code == 400, (body, response.content)
        assert field in errors(response), body
    assert not Execution.objects.exists()


def test_trigger_preview__saved_trigger(api, trigger):
    """GET preview answers the schedule and rules in words and the next count runs."""
    response = api.get(f"/api/triggers/{trigger.pk}/preview/?count=3")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["description"] == trigger.description and body["status"] == "active"
    assert len(body["next_runs"]) == 3 and body["state"] and "retries" in body["rules"]
    for count in ("0", "101", "many"):
        bad = api.get(f"/api/triggers/{trigger.pk}/preview/?count={count}")
        assert bad.status_code == 400 and "count" in errors(bad)


def test_trigger_preview__unsaved_checks_and_saves_nothing(api, workflow):
    """POST /api/triggers/preview/ validates like create and describes the trigger; nothing is saved."""
    tasks = PeriodicTask.objects.count()
    response = api.post(
        "/api/triggers/preview/?count=2",
        {"workflow": workflow.pk, "preset": "weekdays", "time": "09:00", "timezone": "Europe/Berlin"},
    )
    assert response.status_code == 200, response.content
    body = response.json()
    assert "09:00" in body["description"] and len(body["next_runs"]) == 2
    assert datetime.fromisoformat(body["next_runs"][0]["local"]).strftime("%H:%M %a") in {
        f"09:00 {day}" for day in ("Mon", "Tue", "Wed", "Thu", "Fri")
    }
    assert not Trigger.objects.exists() and PeriodicTask.objects.count() == tasks


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"cron": "0 9 * * *", "timezone": "Europe/Atlantis"}, "timezone"),
        ({"cron": "0 9 * *"}, "cron"),
        ({"kind": "once", "run_at": "2001-01-01T00:00:00Z"}, "run_at"),
        ({"cron": "0 9 * * *", "workflow": 999999}, "workflow"),
        ({"cron": "0 9 * * *", "jitter_seconds": 99999}, "jitter_seconds"),
    ],
)
def test_trigger_preview__unsaved_invalid_is_400(api, workflow, fields, field):
    """An invalid unsaved trigger answers 400 naming the field (e.g. a bad time zone)."""
    response = api.post("/api/triggers/preview/", {"workflow": workflow.pk, **fields})
    assert response.status_code == 400, response.content
    assert field in errors(response)
    assert not Trigger.objects.exists()


def test_trigger_preview__unsaved_with_another_users_workflow_is_400(api, other_user):
    """Previewing with another user's workflow is the same 400 as with a missing one."""
    theirs = WorkflowFactory(owner=other_user)
    response = api.post("/api/triggers/preview/", {"workflow": theirs.pk, "cron": "0 9 * * *"})
    assert response.status_code == 400 and "workflow" in errors(response)


# --- Executions and stats -----------------------------------------------------------------------


def test_trigger_executions__nested_list_with_filters(api, trigger, workflow):
    """/api/triggers/<id>/executions/ lists that trigger's executions, newest first, filtered and paginated."""
    other = TriggerFactory(workflow=workflow)
    failed = execution(trigger, status=ExecutionStatus.FAILED, hours_ago=1)
    execution(trigger, status=ExecutionStatus.SUCCEEDED, hours_ago=2)
    execution(other)
    body = api.get(f"/api/triggers/{trigger.pk}/executions/").json()
    assert body["count"] == 2 and body["results"][0]["id"] == str(failed.pk)
    only_failed = api.get(f"/api/triggers/{trigger.pk}/executions/?status=failed").json()
    assert [row["id"] for row in only_failed["results"]] == [str(failed.pk)]
    assert api.get(f"/api/triggers/{trigger.pk}/executions/?page_size=1").json()["next"]
    assert api.get("/api/triggers/999999/executions/").status_code == 404


def test_executions__list_filters_and_detail(api, trigger, workflow):
    """/api/executions/ filters by trigger, workflow, status, origin and a scheduled_for range."""
    other = TriggerFactory(workflow=WorkflowFactory(owner=trigger.owner))
    recent = execution(trigger, status=ExecutionStatus.FAILED, hours_ago=1)
    old = execution(trigger, hours_ago=48, origin=ExecutionOrigin.BACKFILL)
    elsewhere = execution(other, hours_ago=3)

    def ids(query: str) -> set[str]:
        response = api.get(f"/api/executions/?{query}")
        assert response.status_code == 200, response.content
        return {row["id"] for row in response.json()["results"]}

    assert ids("") == {str(recent.pk), str(old.pk), str(elsewhere.pk)}
    assert ids(f"trigger={trigger.pk}") == {str(recent.pk), str(old.pk)}
    assert ids(f"workflow={other.workflow_id}") == {str(elsewhere.pk)}
    assert ids("status=failed") == {str(recent.pk)}
    assert ids("origin=backfill") == {str(old.pk)}
    after = (timezone.now() - timedelta(hours=24)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert ids(f"scheduled_for_after={after}") == {str(recent.pk), str(elsewhere.pk)}
    assert ids(f"scheduled_for_before={after}") == {str(old.pk)}
    for bad in ("status=lost", "origin=cosmic", "scheduled_for_after=soon"):
        response = api.get(f"/api/executions/?{bad}")
        assert response.status_code == 400, bad
    detail = api.get(f"/api/executions/{recent.pk}/")
    assert detail.status_code == 200 and detail.json()["status"] == "failed"
    assert api.get("/api/executions/00000000-0000-0000-0000-000000000000/").status_code == 404
    assert api.get("/api/executions/not-a-uuid/").status_code == 404


def test_execution_retry__failed_only(api, trigger):
    """retry of a failed execution answers 202 with a new one; anything else is 409."""
    failed = execution(trigger, status=ExecutionStatus.FAILED, inputs={"a": 1})
    response = api.post(f"/api/executions/{failed.pk}/retry/")
    assert response.status_code == 202, response.content
    assert (response.json()["origin"], response.json()["inputs"]) == ("retry", {"a": 1})
    succeeded = execution(trigger, hours_ago=5)
    conflict = api.post(f"/api/executions/{succeeded.pk}/retry/")
    assert conflict.status_code == 409 and "status" in errors(conflict)


def test_stats__trigger_workflow_and_query_forms(api, trigger):
    """Stats by trigger and by workflow, nested or as /api/executions/stats/?trigger=|workflow=."""
    from schedules import services

    for hours, status in ((3, ExecutionStatus.SUCCEEDED), (2, ExecutionStatus.FAILED)):
        done = execution(trigger, status=status, hours_ago=hours, duration_ms=120)
        services.stats_record(execution=done)
    nested = api.get(f"/api/triggers/{trigger.pk}/stats/")
    assert nested.status_code == 200, nested.content
    body = nested.json()
    assert (body["total"], body["succeeded"], body["failed"], body["success_rate"]) == (2, 1, 1, 0.5)
    assert body["last_statuses"] == ["failed", "succeeded"] and len(body["next_runs"]) == 5
    assert api.get(f"/api/executions/stats/?trigger={trigger.pk}").json() == body
    by_workflow = api.get(f"/api/workflows/{trigger.workflow_id}/stats/?last=1").json()
    assert by_workflow["total"] == 2 and by_workflow["last_statuses"] == ["failed"]
    assert by_workflow["next_runs"][0]["trigger_id"] == trigger.pk
    assert api.get(f"/api/executions/stats/?workflow={trigger.workflow_id}&last=1").json() == by_workflow
    both = f"trigger={trigger.pk}&workflow={trigger.workflow_id}"
    for query in (both, "trigger=x", "workflow=1&last=-1", "last=101"):
        response = api.get(f"/api/executions/stats/?{query}")
        assert response.status_code == 400, query
    assert api.get("/api/executions/stats/?trigger=999999").status_code == 404


# --- Audit trail --------------------------------------------------------------------------------


def trail(trigger_id) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(object_type="trigger", object_id=str(trigger_id)).order_by("at", "id"))


def test_trigger_api_actions__audited_with_the_user_and_source_api(api, user, workflow):
    """Create, update, pause, resume, run, backfill, retry and delete through the API record the user and "api"."""
    pk = new_trigger(api, workflow, cron="0 * * * *")["id"]
    assert api.patch(f"/api/triggers/{pk}/", {"cron": "30 * * * *"}).status_code == 200
    assert api.post(f"/api/triggers/{pk}/pause/", {"reason": "vendor outage"}).status_code == 200
    assert api.post(f"/api/triggers/{pk}/resume/").status_code == 200
    assert api.post(f"/api/triggers/{pk}/run/").status_code == 202
    end = timezone.now() - timedelta(hours=1)
    backfill = {"start": (end - timedelta(hours=2)).isoformat(), "end": end.isoformat()}
    assert api.post(f"/api/triggers/{pk}/backfill/", backfill).status_code == 202
    failed = execution(Trigger.objects.get(pk=pk), status=ExecutionStatus.FAILED, hours_ago=10)
    assert api.post(f"/api/executions/{failed.pk}/retry/").status_code == 202
    assert api.delete(f"/api/triggers/{pk}/").status_code == 204
    events = trail(pk)
    actions = ["created", "updated", "paused", "resumed", "ran", "backfilled", "retried", "deleted"]
    assert [event.action for event in events] == actions
    assert all((event.actor, event.source, event.owner) == (user, "api", user) for event in events)
    assert events[1].changes == {"cron": ["0 * * * *", "30 * * * *"]}
    assert events[2].changes == {"reason": "vendor outage"}


def test_trigger_audit__the_triggers_events_newest_first(api, user, workflow):
    """GET /api/triggers/<id>/audit/ lists that trigger's events, newest first, with who did them."""
    pk = new_trigger(api, workflow)["id"]
    other = new_trigger(api, workflow, name="Other")["id"]
    api.post(f"/api/triggers/{pk}/pause/", {"reason": "holiday"})
    response = api.get(f"/api/triggers/{pk}/audit/")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["count"] == 2
    paused, created = body["results"]
    assert (paused["action"], paused["actor"], paused["source"]) == ("paused", user.username, "api")
    assert paused["changes"] == {"reason": "holiday"}
    assert (created["action"], created["object_type"], created["object_id"]) == ("created", "trigger", str(pk))
    assert api.get(f"/api/triggers/{pk}/audit/?action=paused").json()["count"] == 1
    assert api.get(f"/api/triggers/{other}/audit/").json()["count"] == 1
    listed = api.get(f"/api/audit/?object_type=trigger&object_id={pk}").json()
    assert [row["id"] for row in listed["results"]] == [paused["id"], created["id"]]


def test_trigger_audit__deleted_trigger_stays_in_the_trail(api, workflow):
    """After a delete the trigger's page is 404, but /api/audit/ still has its events, the delete last."""
    pk = new_trigger(api, workflow)["id"]
    assert api.delete(f"/api/triggers/{pk}/").status_code == 204
    assert api.get(f"/api/triggers/{pk}/audit/").status_code == 404
    rows = api.get(f"/api/audit/?object_type=trigger&object_id={pk}").json()["results"]
    assert [row["action"] for row in rows] == ["deleted", "created"]


# --- Ownership ----------------------------------------------------------------------------------


@pytest.fixture
def their_trigger(other_user):
    trigger = TriggerFactory(workflow=WorkflowFactory(owner=other_user), name="theirs")
    execution(trigger, status=ExecutionStatus.FAILED)
    return trigger


def _past(days: int) -> str:
    return (datetime.now(UTC) - timedelta(days=days)).isoformat()


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("get", "/api/triggers/{pk}/", None),
        ("put", "/api/triggers/{pk}/", {"name": "mine", "workflow": 1, "cron": "* * * * *"}),
        ("patch", "/api/triggers/{pk}/", {"cron": "* * * * *"}),
        ("delete", "/api/triggers/{pk}/", None),
        ("post", "/api/triggers/{pk}/pause/", {"reason": "mine"}),
        ("post", "/api/triggers/{pk}/resume/", None),
        ("post", "/api/triggers/{pk}/run/", None),
        ("post", "/api/triggers/{pk}/backfill/", {"start": _past(2), "end": _past(1)}),
        ("get", "/api/triggers/{pk}/preview/", None),
        ("get", "/api/triggers/{pk}/stats/", None),
        ("get", "/api/triggers/{pk}/executions/", None),
        ("get", "/api/executions/stats/?trigger={pk}", None),
        ("get", "/api/triggers/{pk}/audit/", None),
        ("get", "/api/executions/{execution}/", None),
        ("post", "/api/executions/{execution}/retry/", None),
    ],
)
def test_trigger_of_another_user__404_and_unchanged(api, their_trigger, method, path, body):
    """Another user's trigger and executions do not exist for you: 404 everywhere, and nothing changes."""
    before = Trigger.objects.values().get(pk=their_trigger.pk)
    failed = Execution.objects.get()
    url = path.format(pk=their_trigger.pk, execution=failed.pk)
    response = getattr(api, method)(url, body)
    assert response.status_code == 404, response.content
    assert errors(response) == {"detail": ["not found."]}
    assert Trigger.objects.values().get(pk=their_trigger.pk) == before
    assert list(Execution.objects.all()) == [failed]


def test_trigger_of_another_user__absent_from_lists(api, trigger, their_trigger):
    """Lists hold only your triggers and executions, whatever the filters."""
    execution(trigger)
    assert [row["id"] for row in api.get("/api/triggers/").json()["results"]] == [trigger.pk]
    assert api.get(f"/api/triggers/?workflow={their_trigger.workflow_id}").json()["count"] == 0
    executions = api.get("/api/executions/").json()
    assert executions["count"] == 1 and executions["results"][0]["trigger"] == trigger.pk
    assert api.get(f"/api/executions/?trigger={their_trigger.pk}").json()["count"] == 0
    assert api.get(f"/api/executions/?workflow={their_trigger.workflow_id}").json()["count"] == 0


def test_trigger_audit__another_users_events_are_invisible(api, trigger, their_trigger, other_user):
    """Another user's trigger events are neither on its page (404) nor in your /api/audit/, whatever the filters."""
    assert api.get(f"/api/triggers/{their_trigger.pk}/audit/").status_code == 404
    query = f"object_type=trigger&object_id={their_trigger.pk}"
    assert api.get(f"/api/audit/?{query}").json()["count"] == 0
    mine = [(row["object_type"], row["object_id"]) for row in api.get("/api/audit/").json()["results"]]
    assert mine == [("trigger", str(trigger.pk))]
    theirs = api_for(other_user).get(f"/api/audit/?{query}").json()
    assert theirs["count"] == 1 and theirs["results"][0]["action"] == "created"


def test_staff__see_every_trigger_and_execution(their_trigger):
    """Staff see everyone's triggers and executions."""
    staff = api_for(UserFactory(is_staff=True))
    assert staff.get("/api/triggers/").json()["count"] == 1
    assert staff.get(f"/api/triggers/{their_trigger.pk}/").status_code == 200
    assert staff.get("/api/executions/").json()["count"] == 1


# --- Throttling ---------------------------------------------------------------------------------


def test_throttle__runs_have_their_own_rate(api, settings, trigger):
    """Run now over the "runs" rate is 429 with Retry-After, while other writes still pass."""
    settings.REST_FRAMEWORK = {
        **settings.REST_FRAMEWORK,
        "DEFAULT_THROTTLE_RATES": {"writes": "100/min", "runs": "1/min"},
    }
    cache.clear()
    assert api.post(f"/api/triggers/{trigger.pk}/run/").status_code == 202
    response = api.post(f"/api/triggers/{trigger.pk}/run/")
    assert response.status_code == 429
    assert 1 <= int(response["Retry-After"]) <= 60
    assert "detail" in errors(response)
    backfill = api.post(f"/api/triggers/{trigger.pk}/backfill/", {"start": _past(2), "end": _past(1)})
    assert backfill.status_code == 429
    assert api.post(f"/api/triggers/{trigger.pk}/pause/").status_code == 200
    assert Execution.objects.count() == 1


# --- Health -------------------------------------------------------------------------------------


def beat_lease(expires_at):
    from schedules.beat import PERIODIC_LEASE
    from schedules.models import BeatLease

    BeatLease.objects.update_or_create(name=PERIODIC_LEASE, defaults={"holder": "beat:1", "expires_at": expires_at})


def test_health__200_when_every_part_is_ok(client, db, monkeypatch):
    """With the database, broker, a live beat (its lease renewed) and an answering worker: 200, no authentication."""
    beat_lease(timezone.now() + timedelta(seconds=3))
    monkeypatch.setattr(selectors, "workers_check", lambda **kwargs: "ok")
    response = client.get("/api/health/")
    assert response.status_code == 200
    assert response.json() == {
        "status": "ok",
        "checks": {"database": "ok", "broker": "ok", "beat": "ok", "workers": "ok"},
    }


def test_health__503_naming_what_is_down(client, db, monkeypatch):
    """Without a beat or a worker it is 503 and says which and why."""
    monkeypatch.setattr(selectors, "workers_check", lambda **kwargs: "no worker answered a ping within 1s")
    response = client.get("/api/health/")
    assert response.status_code == 503
    checks = response.json()["checks"]
    assert checks["beat"] == "no beat has run yet" and checks["workers"].startswith("no worker")
    assert checks["database"] == "ok" and response.json()["status"] == "unavailable"


def test_health__beat_silent_for_a_minute_is_down(db):
    """The beat check reads the lease live beats renew every second: silent past a minute, it is down."""
    beat_lease(timezone.now() - timedelta(seconds=30))
    assert selectors.beat_check() == "ok"
    beat_lease(timezone.now() - timedelta(seconds=90))
    assert selectors.beat_check().startswith("no beat for 9")


def test_health__worker_ping_without_workers(db):
    """A real ping with nobody listening says so after its short timeout."""
    assert selectors.workers_check(timeout=0.2) == "no worker answered a ping within 0.2s"


def test_health__worker_ping_answered(monkeypatch):
    """A worker's pong makes the workers check ok."""
    from scheduler_project.celery import app

    monkeypatch.setattr(app.control, "ping", lambda **kwargs: [{"celery@host": {"ok": "pong"}}])
    assert selectors.workers_check() == "ok"


@pytest.mark.django_db(transaction=True)
def test_trigger_run__broker_down_is_503_and_the_execution_is_kept(trigger, monkeypatch):
    """If the broker cannot be reached, run answers 503 saying so; the execution is recorded for recovery."""
    from kombu.exceptions import OperationalError

    monkeypatch.setattr(dispatch, "publish", lambda attempts, **kwargs: (0, OperationalError("connection refused")))
    response = api_for(trigger.owner).post(f"/api/triggers/{trigger.pk}/run/")
    assert response.status_code == 503
    assert "broker could not be reached" in errors(response)["broker"][0]
    assert Execution.objects.filter(manual=True).count() == 1


# --- Out-of-range input -------------------------------------------------------------------------

HUGE = "9" * 25


@pytest.mark.parametrize(
    ("method", "path", "body", "code", "field"),
    [
        ("get", f"/api/triggers/{HUGE}/", None, 404, "detail"),
        ("get", f"/api/triggers/{HUGE}/executions/", None, 404, "detail"),
        ("get", f"/api/workflows/{HUGE}/stats/", None, 404, "detail"),
        ("get", "/api/executions/not-a-uuid/", None, 404, "detail"),
        ("get", f"/api/triggers/?workflow={HUGE}", None, 400, "workflow"),
        ("get", "/api/executions/?trigger=1e400", None, 400, "trigger"),
        ("get", f"/api/executions/stats/?trigger={HUGE}", None, 400, "trigger"),
        ("get", "/api/triggers/?page=abc", None, 404, "detail"),
        ("post", "/api/triggers/", {"name": "t", "workflow": int(HUGE), "cron": "0 9 * * *"}, 400, "workflow"),
        ("post", "/api/triggers/", {"name": "t", "kind": "once", "delay_seconds": 10**12}, 400, "delay_seconds"),
        (
            "post",
            "/api/triggers/",
            {"name": "t", "kind": "interval", "interval_seconds": 2**40},
            400,
            "interval_seconds",
        ),
    ],
)
def test_out_of_range_input__400_or_404_never_500(api, workflow, method, path, body, code, field):
    """Ids past the 64-bit range, huge durations and odd numbers answer 400/404 naming what is wrong."""
    if body is not None:
        body = {"workflow": workflow.pk, **body}
    response = getattr(api, method)(path, body)
    assert response.status_code == code, response.content
    assert field in errors(response)


def test_out_of_range_dates__400(api, trigger):
    """A backfill from year 1 (date arithmetic overflow) is a 400, not a 500."""
    response = api.post(
        f"/api/triggers/{trigger.pk}/backfill/", {"start": "0001-01-01T00:00:00Z", "end": "0001-01-02T00:00:00Z"}
    )
    assert response.status_code == 400
    assert "out of range" in errors(response)["non_field_errors"][0]
