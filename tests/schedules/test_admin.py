"""The schedules admin: trigger writes and actions go through schedules.services; history is read-only."""

from __future__ import annotations

from datetime import timedelta
from unittest import mock

import pytest
from django.contrib.messages import get_messages
from django.urls import reverse
from django.utils import timezone
from django_celery_beat.models import PeriodicTask
from kombu.exceptions import OperationalError

from schedules import services
from schedules.beat import FIRE_TASK
from schedules.models import Execution, ExecutionStatus, Trigger
from schedules.tasks import run_execution
from tests.factories import TriggerFactory, WorkflowFactory

pytestmark = pytest.mark.django_db

CHANGELIST = "admin:schedules_trigger_changelist"
EXECUTIONS = "admin:schedules_execution_changelist"


def _form(workflow, **overrides: object) -> dict[str, object]:
    """POST data for the trigger add/change form (a weekday cron trigger unless overridden)."""
    data: dict[str, object] = {
        "name": "Weekday report",
        "workflow": workflow.pk,
        "enabled": "on",
        "inputs": '{"report": "daily"}',
        "kind": "cron",
        "cron": "0 9 * * MON-FRI",
        "timezone": "America/Los_Angeles",
        "run_at_0": "",
        "run_at_1": "",
        "interval_seconds": "",
        "max_attempts": "3",
        "min_backoff_seconds": "5",
        "max_backoff_seconds": "300",
    }
    data.update(overrides)
    return {key: value for key, value in data.items() if value is not None}


def _change_form(trigger: Trigger, **overrides: object) -> dict[str, object]:
    """POST data for a trigger's change form, from its current values."""
    run_at = trigger.run_at.astimezone(timezone.get_current_timezone()) if trigger.run_at else None
    values = {
        "name": trigger.name,
        "inputs": "{}",
        "kind": trigger.kind,
        "cron": trigger.cron,
        "timezone": trigger.timezone,
        "run_at_0": f"{run_at:%Y-%m-%d}" if run_at else "",
        "run_at_1": f"{run_at:%H:%M:%S}" if run_at else "",
        "interval_seconds": trigger.interval_seconds or "",
    }
    return _form(trigger.workflow, **{**values, **overrides})


def _execution(
    trigger: Trigger, *, status: str = ExecutionStatus.SUCCEEDED, minutes_ago: int = 0, **fields
) -> Execution:
    return Execution.objects.create(
        trigger=trigger,
        workflow=trigger.workflow,
        scheduled_for=timezone.now() - timedelta(minutes=minutes_ago),
        status=status,
        **fields,
    )


def _action(client, action: str, *triggers: Trigger):
    return client.post(reverse(CHANGELIST), {"action": action, "_selected_action": [t.pk for t in triggers]})


def _messages(response) -> list[tuple[str, str]]:
    return [(message.tags, str(message)) for message in get_messages(response.wsgi_request)]


def _fire_tasks() -> int:
    return PeriodicTask.objects.filter(task=FIRE_TASK).count()


# --- Trigger list -------------------------------------------------------------------------------


def test_trigger_admin__changelist_shows_schedule_state_and_last_status(admin_client, workflow):
    """The trigger list shows the schedule in words, next run in UTC and local time, and the last status."""
    trigger = TriggerFactory(workflow=workflow, name="LA report", cron="0 9 * * 1-5", timezone="America/Los_Angeles")
    _execution(trigger, status=ExecutionStatus.SUCCEEDED, minutes_ago=60)
    _execution(trigger, status=ExecutionStatus.FAILED, minutes_ago=5)
    response = admin_client.get(reverse(CHANGELIST))
    assert response.status_code == 200
    content = response.content.decode()
    for header in ("Schedule", "Timezone", "State", "Next run", "Last status", "Executions"):
        assert header in content
    assert trigger.description in content
    local = trigger.next_run_at.astimezone(trigger.cadence.zone)
    assert f"{trigger.next_run_at:%Y-%m-%d %H:%M} UTC" in content
    assert f"{local:%Y-%m-%d} 09:00 America/Los_Angeles" in content
    assert "Failed" in content
    assert f"{reverse(EXECUTIONS)}?trigger__id__exact={trigger.pk}" in content


def test_trigger_admin__changelist_shows_pause_reason(admin_client, trigger):
    """A paused trigger's state column says it is paused and why, and it shows no next run."""
    services.trigger_pause(trigger=trigger, reason="maintenance window")
    content = admin_client.get(reverse(CHANGELIST)).content.decode()
    assert "Paused (maintenance window)" in content
    assert "(paused)" in content  # no next run while paused


def test_trigger_admin__changelist_filters_and_search_work(admin_client, workflow):
    """Filtering by kind and timezone and searching by cron narrow the list."""
    TriggerFactory(workflow=workflow, name="cron one", cron="15 3 * * *", timezone="Europe/Berlin")
    TriggerFactory(workflow=workflow, name="interval one", kind="interval", interval_seconds=900)
    url = reverse(CHANGELIST)
    assert admin_client.get(url, {"kind__exact": "interval"}).context["cl"].result_count == 1
    assert admin_client.get(url, {"timezone": "Europe/Berlin"}).context["cl"].result_count == 1
    assert admin_client.get(url, {"q": "15 3"}).context["cl"].result_count == 1
    assert admin_client.get(url, {"q": workflow.name}).context["cl"].result_count == 2


def test_trigger_admin__changelist_queries_do_not_grow_per_row(admin_client, django_assert_max_num_queries):
    """Listing many triggers with executions takes a fixed number of queries (no query per row)."""
    for index in range(8):
        trigger = TriggerFactory(timezone="Asia/Tokyo" if index % 2 else "UTC")
        _execution(trigger, minutes_ago=10)
        _execution(trigger, status=ExecutionStatus.FAILED, minutes_ago=1)
    with django_assert_max_num_queries(10):
        response = admin_client.get(reverse(CHANGELIST))
    assert response.status_code == 200
    assert response.context["cl"].result_count == 8


def test_trigger_admin__change_page_shows_state_and_next_slots(admin_client, trigger):
    """The change page renders with the read-only state fields and the next slots."""
    response = admin_client.get(reverse("admin:schedules_trigger_change", args=[trigger.pk]))
    assert response.status_code == 200
    content = response.content.decode()
    assert "Next slots" in content
    assert f"trigger:{trigger.pk}" in content  # the periodic task, read-only
    assert 'name="next_run_at"' not in content


# --- Add, change, delete through the services ---------------------------------------------------


def test_trigger_admin__add_page_renders_with_time_zone_choices(admin_client, workflow):
    """The add page renders, offering IANA time zones to pick from."""
    response = admin_client.get(reverse("admin:schedules_trigger_add"))
    assert response.status_code == 200
    assert '<option value="America/Los_Angeles">' in response.content.decode()


def test_trigger_admin__add_creates_periodic_task(admin_client, workflow):
    """Adding a trigger in the admin goes through trigger_create: it gets its PeriodicTask and next run."""
    response = admin_client.post(reverse("admin:schedules_trigger_add"), _form(workflow))
    assert response.status_code == 302, response.content.decode()
    trigger = Trigger.objects.get(name="Weekday report")
    assert trigger.periodic_task is not None
    assert trigger.periodic_task.name == f"trigger:{trigger.pk}"
    assert trigger.periodic_task.crontab.timezone.key == "America/Los_Angeles"
    assert trigger.owner == workflow.owner
    assert trigger.next_run_at is not None
    assert trigger.inputs == {"report": "daily"}


def test_trigger_admin__add_for_another_users_workflow_belongs_to_that_user(admin_client, other_user):
    """A trigger added for someone's workflow is owned by the workflow's owner."""
    workflow = WorkflowFactory(owner=other_user)
    response = admin_client.post(reverse("admin:schedules_trigger_add"), _form(workflow))
    assert response.status_code == 302
    assert Trigger.objects.get(name="Weekday report").owner == other_user


def test_trigger_admin__bad_cron_shows_field_error_and_creates_nothing(admin_client, workflow):
    """A malformed cron is an error on the cron field; no trigger and no PeriodicTask are created."""
    response = admin_client.post(reverse("admin:schedules_trigger_add"), _form(workflow, cron="61 * * * *"))
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert "cron" in errors
    assert "minute must be 0-59" in errors["cron"][0]
    assert not Trigger.objects.exists()
    assert _fire_tasks() == 0


def test_trigger_admin__once_in_the_past_shows_run_at_error(admin_client, workflow):
    """A once trigger whose run_at has passed is an error on run_at (the services' check), not a 500."""
    past = timezone.now() - timedelta(days=1)
    data = _form(workflow, kind="once", cron="", run_at_0=f"{past:%Y-%m-%d}", run_at_1=f"{past:%H:%M:%S}")
    response = admin_client.post(reverse("admin:schedules_trigger_add"), data)
    assert response.status_code == 200
    assert response.context["adminform"].form.errors["run_at"] == ["must be in the future."]
    assert not Trigger.objects.exists()


def test_trigger_admin__fields_of_the_wrong_kind_show_field_errors(admin_client, workflow):
    """An interval trigger with a cron left in it is told to clear the cron field."""
    response = admin_client.post(
        reverse("admin:schedules_trigger_add"), _form(workflow, kind="interval", interval_seconds="60")
    )
    assert response.status_code == 200
    assert "only applies to cron triggers" in response.context["adminform"].form.errors["cron"][0]
    assert not Trigger.objects.exists()


def test_trigger_admin__duplicate_name_is_form_error(admin_client, trigger):
    """A second trigger with the same owner and name is a form error, not a 500."""
    response = admin_client.post(reverse("admin:schedules_trigger_add"), _form(trigger.workflow, name=trigger.name))
    assert response.status_code == 200
    assert response.context["adminform"].form.errors
    assert Trigger.objects.count() == 1


def test_trigger_admin__change_updates_schedule_and_periodic_task(admin_client, trigger):
    """Changing the cron in the admin goes through trigger_update: crontab and next run follow."""
    url = reverse("admin:schedules_trigger_change", args=[trigger.pk])
    response = admin_client.post(url, _change_form(trigger, cron="30 6 * * *", timezone="Europe/Berlin"))
    assert response.status_code == 302, response.content.decode()
    trigger.refresh_from_db()
    crontab = trigger.periodic_task.crontab
    assert (crontab.minute, crontab.hour, str(crontab.timezone)) == ("30", "6", "Europe/Berlin")
    local = trigger.next_run_at.astimezone(trigger.cadence.zone)
    assert (local.hour, local.minute) == (6, 30)


def test_trigger_admin__renaming_a_fired_once_trigger_is_allowed(admin_client, workflow):
    """Editing a once trigger whose run_at has passed, without touching the schedule, saves."""
    trigger = TriggerFactory(workflow=workflow, kind="once")
    Trigger.objects.filter(pk=trigger.pk).update(run_at=timezone.now() - timedelta(hours=1))
    trigger.refresh_from_db()
    url = reverse("admin:schedules_trigger_change", args=[trigger.pk])
    response = admin_client.post(url, _change_form(trigger, name="Renamed once"))
    assert response.status_code == 302, response.content.decode()
    trigger.refresh_from_db()
    assert trigger.name == "Renamed once"


def test_trigger_admin__delete_removes_periodic_task(admin_client, trigger):
    """Deleting a trigger in the admin goes through trigger_delete and removes its PeriodicTask."""
    _execution(trigger)
    task_pk = trigger.periodic_task.pk
    url = reverse("admin:schedules_trigger_delete", args=[trigger.pk])
    assert admin_client.get(url).status_code == 200
    response = admin_client.post(url, {"post": "yes"})
    assert response.status_code == 302
    assert not Trigger.objects.filter(pk=trigger.pk).exists()
    assert not PeriodicTask.objects.filter(pk=task_pk).exists()
    assert not Execution.objects.exists()


def test_trigger_admin__bulk_delete_removes_periodic_tasks(admin_client, workflow):
    """The delete-selected action removes each trigger's PeriodicTask too."""
    triggers = [TriggerFactory(workflow=workflow) for _ in range(3)]
    response = admin_client.post(
        reverse(CHANGELIST), {"action": "delete_selected", "_selected_action": [t.pk for t in triggers], "post": "yes"}
    )
    assert response.status_code == 302
    assert not Trigger.objects.exists()
    assert _fire_tasks() == 0


# --- Actions ------------------------------------------------------------------------------------


def test_trigger_admin__pause_action_disables_periodic_task(admin_client, admin_user, trigger):
    """The pause action pauses through trigger_pause with a reason naming the admin user."""
    response = _action(admin_client, "pause_triggers", trigger)
    assert response.status_code == 302
    trigger.refresh_from_db()
    assert not trigger.enabled
    assert trigger.pause_reason == f"paused from admin by {admin_user.username}"
    assert not trigger.periodic_task.enabled
    assert _messages(response) == [("success", f"Paused {trigger.name}.")]


def test_trigger_admin__pause_action_reports_each_trigger(admin_client, workflow):
    """Pausing an already paused trigger is an error message for it; the others are still paused."""
    paused = TriggerFactory(workflow=workflow, name="already paused")
    services.trigger_pause(trigger=paused)
    running = TriggerFactory(workflow=workflow, name="running")
    response = _action(admin_client, "pause_triggers", paused, running)
    assert response.status_code == 302
    assert sorted(_messages(response)) == [
        ("error", "already paused: trigger 'already paused' is already paused."),
        ("success", "Paused running."),
    ]
    running.refresh_from_db()
    assert not running.enabled


def test_trigger_admin__resume_action_enables_periodic_task(admin_client, trigger):
    """The resume action resumes through trigger_resume: enabled again with a next run."""
    services.trigger_pause(trigger=trigger, reason="holiday")
    response = _action(admin_client, "resume_triggers", trigger)
    assert response.status_code == 302
    trigger.refresh_from_db()
    assert trigger.enabled
    assert trigger.pause_reason == ""
    assert trigger.periodic_task.enabled
    [(level, text)] = _messages(response)
    assert level == "success"
    assert text.startswith(f"Resumed {trigger.name}; next run ")


def test_trigger_admin__resume_action_on_enabled_trigger_is_error_message(admin_client, trigger):
    """Resuming a trigger that is not paused reports the error instead of failing."""
    response = _action(admin_client, "resume_triggers", trigger)
    assert response.status_code == 302
    assert _messages(response) == [("error", f"{trigger.name}: trigger '{trigger.name}' is not paused.")]


def test_trigger_admin__run_now_action_queues_manual_execution(
    admin_client, trigger, django_capture_on_commit_callbacks
):
    """Run now goes through trigger_run_now: a queued manual execution, sent to the broker on commit."""
    with django_capture_on_commit_callbacks() as callbacks:
        response = _action(admin_client, "run_triggers_now", trigger)
    assert response.status_code == 302
    execution = Execution.objects.get(trigger=trigger)
    assert execution.manual is True
    assert execution.status == ExecutionStatus.QUEUED
    assert len(callbacks) == 1
    [(level, text)] = _messages(response)
    assert level == "success"
    assert str(execution.pk) in text


def test_trigger_admin__run_now_on_inactive_workflow_is_error_message(admin_client, trigger):
    """Run now for a trigger whose workflow is inactive reports the error and queues nothing."""
    trigger.workflow.is_active = False
    trigger.workflow.save()
    response = _action(admin_client, "run_triggers_now", trigger)
    assert response.status_code == 302
    assert _messages(response) == [
        ("error", f"{trigger.name}: workflow: workflow '{trigger.workflow.name}' is not active.")
    ]
    assert not Execution.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_trigger_admin__run_now_with_broker_down_is_warning(admin_client, trigger):
    """If the broker refuses the message after commit, the admin warns instead of failing; the run is kept."""
    with mock.patch.object(run_execution, "apply_async", side_effect=OperationalError("connection refused")):
        response = _action(admin_client, "run_triggers_now", trigger)
    assert response.status_code == 302
    [(level, text)] = _messages(response)
    assert level == "warning"
    assert "broker is unreachable" in text
    assert Execution.objects.filter(trigger=trigger, manual=True, status=ExecutionStatus.QUEUED).exists()


# --- Executions ---------------------------------------------------------------------------------


def test_execution_admin__changelist_shows_columns(admin_client, trigger):
    """The execution list shows slot, trigger, workflow, status, attempts, HTTP status, duration and run id."""
    _execution(trigger, attempts=2, http_status=202, duration_ms=87, run_id="run-abc")
    response = admin_client.get(reverse(EXECUTIONS))
    assert response.status_code == 200
    content = response.content.decode()
    for text in (
        "Scheduled for",
        "Attempts",
        "Http status",
        "Duration ms",
        "Run id",
        "Manual",
        "Started at",
        "Finished at",
    ):
        assert text in content
    for text in (trigger.name, trigger.workflow.name, "Succeeded", "202", "87", "run-abc"):
        assert text in content


def test_execution_admin__trigger_link_filters_by_trigger(admin_client, workflow):
    """The trigger list's executions link opens the execution list filtered to that trigger."""
    mine, other = TriggerFactory(workflow=workflow), TriggerFactory(workflow=workflow)
    _execution(mine, minutes_ago=1)
    _execution(mine, minutes_ago=2)
    _execution(other)
    response = admin_client.get(reverse(EXECUTIONS), {"trigger__id__exact": mine.pk})
    assert response.status_code == 200
    assert {e.trigger_id for e in response.context["cl"].result_list} == {mine.pk}
    assert len(response.context["cl"].result_list) == 2


def test_execution_admin__search_by_id_run_id_and_error(admin_client, trigger):
    """Search finds executions by id, run id or error text; any text is a valid search."""
    target = _execution(trigger, minutes_ago=1, run_id="run-xyz", error="HTTP 503 from endpoint")
    _execution(trigger, minutes_ago=2)
    url = reverse(EXECUTIONS)
    for term in (str(target.pk), "run-xyz", "503 from", "not-a-uuid"):
        response = admin_client.get(url, {"q": term})
        assert response.status_code == 200, term
        expected = [] if term == "not-a-uuid" else [target.pk]
        assert [e.pk for e in response.context["cl"].result_list] == expected, term


def test_execution_admin__detail_shows_attempt_log_read_only(admin_client, trigger):
    """The execution page shows the attempt log read-only and cannot be added or saved."""
    execution = _execution(
        trigger,
        status=ExecutionStatus.FAILED,
        attempts=1,
        metadata={"attempts": [{"attempt": 1, "started_at": "2026-01-01T00:00:00+00:00", "error": "boom 502"}]},
    )
    response = admin_client.get(reverse("admin:schedules_execution_change", args=[execution.pk]))
    assert response.status_code == 200
    content = response.content.decode()
    assert "Attempt log" in content
    assert "boom 502" in content
    assert 'name="_save"' not in content
    assert admin_client.get(reverse("admin:schedules_execution_add")).status_code == 403


def test_execution_admin__changelist_queries_do_not_grow_per_row(admin_client, django_assert_max_num_queries):
    """Listing many executions takes a fixed number of queries (trigger and workflow joined)."""
    for _ in range(4):
        trigger = TriggerFactory()
        for minutes in range(3):
            _execution(trigger, minutes_ago=minutes)
    with django_assert_max_num_queries(10):
        response = admin_client.get(reverse(EXECUTIONS))
    assert response.status_code == 200
    assert len(response.context["cl"].result_list) == 12
