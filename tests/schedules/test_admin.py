"""The schedules admin: trigger writes and actions go through schedules.services; history is read-only."""

from __future__ import annotations

from datetime import timedelta
from unittest import mock

import pytest
from django.contrib.auth.models import Permission
from django.contrib.messages import get_messages
from django.urls import reverse
from django.utils import timezone
from django_celery_beat.models import PeriodicTask
from kombu.exceptions import OperationalError

from schedules import dispatch, services
from schedules.beat import FIRE_TASK
from schedules.models import Execution, ExecutionStatus, Trigger
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
        "dst_policy": "vixie",
        "anchor_at_0": "",
        "anchor_at_1": "",
        "start_at_0": "",
        "start_at_1": "",
        "end_at_0": "",
        "end_at_1": "",
        "max_runs": "",
        "execution_window": "{}",
        "jitter_seconds": "0",
        "catchup": "latest",
        "catchup_window_seconds": "3600",
        "overlap": "skip",
        "priority": "normal",
        "max_attempts": "3",
        "min_backoff_seconds": "5",
        "max_backoff_seconds": "300",
        "max_doublings": "5",
        "max_retry_duration_seconds": "0",
        "pause_after_failures": "",
        "notify_emails": "",
        "notify_webhook_url": "",
        "fallback_workflow": "",
        "keep_succeeded": "",
        "keep_failed": "",
        "retention_days": "",
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


def test_trigger_admin__changelist_shows_schedule_state_and_last_run(admin_client, workflow):
    """The trigger list shows the schedule in words, next run in UTC and local time with seconds, and
    the last run's outcome with its time and error."""
    trigger = TriggerFactory(workflow=workflow, name="LA report", cron="0 9 * * 1-5", timezone="America/Los_Angeles")
    _execution(trigger, status=ExecutionStatus.SUCCEEDED, minutes_ago=60)
    failed = _execution(
        trigger,
        status=ExecutionStatus.FAILED,
        minutes_ago=5,
        finished_at=timezone.now() - timedelta(minutes=4),
        error="HTTP 503 from the endpoint",
    )
    response = admin_client.get(reverse(CHANGELIST))
    assert response.status_code == 200
    content = response.content.decode()
    for header in ("Schedule", "Status", "Runs", "Next run", "Last run", "Executions"):
        assert header in content
    assert trigger.description in content
    local = trigger.next_run_at.astimezone(trigger.cadence.zone)
    assert f"{trigger.next_run_at:%Y-%m-%d %H:%M:%S} UTC" in content
    assert f"{local:%Y-%m-%d} 09:00:00 {local:%Z}" in content
    assert 'class="ws-badge ws-bad" title="HTTP 503 from the endpoint">Failed<' in content
    assert f"{failed.finished_at:%Y-%m-%d %H:%M:%S} UTC" in content
    assert f"{reverse(EXECUTIONS)}?trigger__id__exact={trigger.pk}" in content


def test_trigger_admin__last_run_is_the_last_outcome_not_a_skip(admin_client, workflow):
    """An overlap skip after a failure does not hide it: the last run shown is the failure, and a
    trigger whose executions were all skipped has no last run."""
    trigger = TriggerFactory(workflow=workflow, name="flaky")
    _execution(trigger, status=ExecutionStatus.FAILED, minutes_ago=10, error="boom")
    _execution(trigger, status=ExecutionStatus.SKIPPED, minutes_ago=1, skip_reason="overlap")
    skipped_only = TriggerFactory(workflow=workflow, name="skipped only")
    _execution(skipped_only, status=ExecutionStatus.SKIPPED, minutes_ago=1, skip_reason="overlap")
    response = admin_client.get(reverse(CHANGELIST))
    rows = {row.name: row for row in response.context["cl"].result_list}
    assert rows["flaky"].last_outcome.status == ExecutionStatus.FAILED
    assert rows["skipped only"].last_outcome is None
    assert ">Failed<" in response.content.decode()


def test_trigger_admin__changelist_shows_pause_reason(admin_client, trigger):
    """A paused trigger's state column says it is paused and why, and it shows no next run."""
    services.trigger_pause(trigger=trigger, reason="maintenance window")
    content = admin_client.get(reverse(CHANGELIST)).content.decode()
    assert ">Paused</span><br><small>maintenance window</small>" in content
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
    assert "Next runs" in content and "Rules" in content
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
    with mock.patch.object(dispatch, "publish", return_value=(0, OperationalError("connection refused"))):
        response = _action(admin_client, "run_triggers_now", trigger)
    assert response.status_code == 302
    [(level, text)] = _messages(response)
    assert level == "warning"
    assert "broker is unreachable" in text
    assert Execution.objects.filter(trigger=trigger, manual=True, status=ExecutionStatus.QUEUED).exists()


# --- Executions ---------------------------------------------------------------------------------


def test_execution_admin__changelist_shows_columns(admin_client, trigger):
    """The execution list shows slot (with seconds and zone), trigger and origin, a coloured status
    with the error, attempts, HTTP status, duration and start."""
    execution = _execution(
        trigger,
        status=ExecutionStatus.FAILED,
        attempts=2,
        http_status=503,
        duration_ms=1870,
        error="HTTP 503 from endpoint",
        started_at=timezone.now(),
    )
    skipped = _execution(trigger, status=ExecutionStatus.SKIPPED, minutes_ago=1, skip_reason="overlap")
    response = admin_client.get(reverse(EXECUTIONS))
    assert response.status_code == 200
    content = response.content.decode()
    for text in ("Scheduled for", "Trigger", "Status", "Attempts", "Http status", "Duration", "Started at"):
        assert text in content
    for text in (trigger.name, "Schedule", "503", "1.9 s", "HTTP 503 from endpoint", "ws-badge ws-bad"):
        assert text in content
    assert f"{execution.scheduled_for:%Y-%m-%d %H:%M:%S} UTC" in content
    assert f"{execution.started_at:%Y-%m-%d %H:%M:%S} UTC" in content
    assert f"{skipped.scheduled_for:%Y-%m-%d %H:%M:%S} UTC" in content
    assert "Previous execution still unfinished" in content


def test_execution_admin__rows_render_as_djangos_own_columns_would(admin_client, trigger):
    """The list writes each row's checkbox, change link and times itself (cheaper than Django's
    form widget, reverse() per row and date formatting): the HTML must be what Django's own would
    be, names with markup escaped, times in the active zone."""
    from django.contrib import admin as django_admin
    from django.contrib.admin.utils import display_for_field
    from django.contrib.admin.views.main import ChangeList

    trigger.name = 'Nightly <b>"report"</b> & co'
    trigger.save(update_fields=["name"])
    started = timezone.now().replace(microsecond=0) - timedelta(seconds=7)
    executions = [_execution(trigger, minutes_ago=3, started_at=started), _execution(trigger, minutes_ago=1)]
    response = admin_client.get(reverse(EXECUTIONS), {"o": "1"})  # sorted by slot, oldest first
    assert response.status_code == 200
    changelist = response.context["cl"]
    assert [e.pk for e in changelist.result_list] == [e.pk for e in executions]
    content = response.content.decode()
    model_admin = changelist.model_admin
    for execution in executions:
        assert django_admin.ModelAdmin.action_checkbox(model_admin, execution) in content
        assert model_admin.action_checkbox(execution) == django_admin.ModelAdmin.action_checkbox(model_admin, execution)
        assert changelist.url_for_result(execution) == ChangeList.url_for_result(changelist, execution)
        assert f'href="{ChangeList.url_for_result(changelist, execution)}' in content
    # Trigger rows (integer ids) likewise, and a key the admin must quote falls back to reverse().
    trigger_list = admin_client.get(reverse(CHANGELIST)).context["cl"]
    assert trigger_list.url_for_result(trigger) == ChangeList.url_for_result(trigger_list, trigger)
    odd = Execution(id="a b/c_d", trigger=trigger, workflow=trigger.workflow, scheduled_for=started)
    assert changelist.url_for_result(odd) == ChangeList.url_for_result(changelist, odd)
    assert model_admin.action_checkbox(odd) == django_admin.ModelAdmin.action_checkbox(model_admin, odd)

    field = Execution._meta.get_field("started_at")
    for zone in ("UTC", "America/Los_Angeles", "Asia/Kolkata"):
        with timezone.override(zone):
            assert model_admin.started_column(executions[0]) == display_for_field(started, field, "-"), zone
            assert model_admin.scheduled_column(executions[1]) == display_for_field(
                executions[1].scheduled_for, field, "-"
            ), zone
    assert model_admin.started_column(executions[1]) == "-"


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


# --- Scheduling rules in the trigger list and form ----------------------------------------------


def test_trigger_admin__changelist_shows_status_runs_and_priority(admin_client, workflow):
    """The list shows status (active/paused/completed), runs done of max_runs with what is left, and priority."""
    counted = TriggerFactory(workflow=workflow, name="counted", max_runs=10, priority="high")
    Trigger.objects.filter(pk=counted.pk).update(run_count=3)
    done = TriggerFactory(workflow=workflow, name="done")
    Trigger.objects.filter(pk=done.pk).update(completed_at=timezone.now())
    content = admin_client.get(reverse(CHANGELIST)).content.decode()
    assert "3 / 10 (7 left)" in content
    assert "High" in content
    assert "Completed" in content and "(completed)" in content
    assert "Active" in content


def test_trigger_admin__status_filter(admin_client, workflow):
    """The status filter keeps active, paused or completed triggers."""
    TriggerFactory(workflow=workflow, name="active")
    services.trigger_pause(trigger=TriggerFactory(workflow=workflow, name="paused"))
    done = TriggerFactory(workflow=workflow, name="done")
    Trigger.objects.filter(pk=done.pk).update(completed_at=timezone.now(), enabled=False)
    url = reverse(CHANGELIST)
    for status, name in (("active", "active"), ("paused", "paused"), ("completed", "done")):
        result = admin_client.get(url, {"status": status}).context["cl"].result_list
        assert [trigger.name for trigger in result] == [name], status


def test_trigger_admin__changelist_with_new_columns_queries_do_not_grow(admin_client, django_assert_max_num_queries):
    """Status, runs and priority columns add no query per row, whatever state the triggers are in."""
    for index in range(9):
        trigger = TriggerFactory(max_runs=5 if index % 2 else None, priority=["high", "normal", "low"][index % 3])
        _execution(trigger, minutes_ago=1)
        if index % 3 == 1:
            services.trigger_pause(trigger=trigger, reason="why not")
        elif index % 3 == 2:
            Trigger.objects.filter(pk=trigger.pk).update(completed_at=timezone.now())
    with django_assert_max_num_queries(10):
        response = admin_client.get(reverse(CHANGELIST), {"status": "paused"})
    assert response.context["cl"].result_count == 3
    with django_assert_max_num_queries(10):
        response = admin_client.get(reverse(CHANGELIST))
    assert response.context["cl"].result_count == 9


def test_trigger_admin__add_with_every_rule_goes_through_trigger_create(admin_client, workflow):
    """The new fieldsets' values reach trigger_create: bounds, window, jitter, policies, failures, retention."""
    fallback = WorkflowFactory(owner=workflow.owner)
    data = _form(
        workflow,
        dst_policy="skip_missing",
        start_at_0="2030-01-01",
        start_at_1="00:00:00",
        end_at_0="2030-02-01",
        end_at_1="00:00:00",
        max_runs="12",
        execution_window='{"days": [1, 2, 3, 4, 5], "ranges": [["08:00", "12:00"]]}',
        jitter_seconds="20",
        catchup="all",
        catchup_window_seconds="600",
        overlap="allow",
        priority="low",
        max_doublings="2",
        max_retry_duration_seconds="900",
        pause_after_failures="4",
        notify_emails="ops@example.com",
        notify_webhook_url="https://hooks.example.com/x",
        fallback_workflow=str(fallback.pk),
        keep_succeeded="10",
        keep_failed="20",
        retention_days="7",
    )
    response = admin_client.post(reverse("admin:schedules_trigger_add"), data)
    assert response.status_code == 302, response.content.decode()
    trigger = Trigger.objects.get()
    assert trigger.dst_policy == "skip_missing"
    assert (trigger.start_at.year, trigger.end_at.month, trigger.max_runs) == (2030, 2, 12)
    assert trigger.execution_window == {"days": [1, 2, 3, 4, 5], "ranges": [["08:00", "12:00"]]}
    assert (trigger.jitter_seconds, trigger.catchup, trigger.catchup_window_seconds) == (20, "all", 600)
    assert (trigger.overlap, trigger.priority, trigger.max_doublings, trigger.max_retry_duration_seconds) == (
        "allow",
        "low",
        2,
        900,
    )
    assert (trigger.pause_after_failures, trigger.notify_emails, trigger.fallback_workflow) == (
        4,
        "ops@example.com",
        fallback,
    )
    assert (trigger.keep_succeeded, trigger.keep_failed, trigger.retention_days) == (10, 20, 7)
    assert trigger.next_run_at >= trigger.start_at
    assert trigger.periodic_task is not None


@pytest.mark.parametrize(
    ("overrides", "field", "message"),
    [
        ({"execution_window": '{"days": "weekdays"}'}, "execution_window", "days must be a non-empty list"),
        ({"execution_window": '{"ranges": [["18:00", "09:00"]]}'}, "execution_window", "must end after it starts"),
        (
            {"start_at_0": "2030-02-01", "start_at_1": "00:00", "end_at_0": "2030-01-01", "end_at_1": "00:00"},
            "end_at",
            "must be after start_at",
        ),
        ({"anchor_at_0": "2030-01-01", "anchor_at_1": "00:00"}, "anchor_at", "only applies to interval"),
        ({"jitter_seconds": "5000"}, "jitter_seconds", "less than or equal to 3600"),
        ({"catchup": "all", "catchup_window_seconds": "0"}, "catchup_window_seconds", "must be at least 1"),
        ({"max_runs": "0"}, "max_runs", "greater than or equal to 1"),
        ({"notify_emails": "not-an-address"}, "notify_emails", "is not an e-mail address"),
        ({"notify_webhook_url": "ftp://x.example"}, "notify_webhook_url", "Enter a valid URL"),
        ({"priority": "urgent"}, "priority", "Select a valid choice"),
        ({"max_doublings": "31"}, "max_doublings", "less than or equal to 30"),
    ],
)
def test_trigger_admin__bad_rule_is_a_field_error_and_creates_nothing(
    admin_client, workflow, overrides, field, message
):
    """A bad value in the new fieldsets is an error on that field; nothing is created."""
    response = admin_client.post(reverse("admin:schedules_trigger_add"), _form(workflow, **overrides))
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert field in errors, errors
    assert message in " ".join(errors[field])
    assert not Trigger.objects.exists()
    assert _fire_tasks() == 0


def test_trigger_admin__fallback_must_be_another_of_the_owners_workflows(admin_client, workflow, other_user):
    """The trigger's own workflow, or someone else's, is refused as its fallback."""
    for fallback in (workflow, WorkflowFactory(owner=other_user)):
        data = _form(workflow, fallback_workflow=str(fallback.pk))
        response = admin_client.post(reverse("admin:schedules_trigger_add"), data)
        assert response.status_code == 200
        assert "fallback_workflow" in response.context["adminform"].form.errors
    assert not Trigger.objects.exists()


def test_trigger_admin__change_passes_only_changed_fields_to_trigger_update(
    admin_client, admin_user, trigger, monkeypatch
):
    """Changing max_runs and priority calls trigger_update with just those fields (and the acting user)."""
    calls = []
    original = services.trigger_update

    def spy(**kwargs):
        assert kwargs["actor"] == admin_user
        calls.append(set(kwargs) - {"trigger", "actor"})
        return original(**kwargs)

    monkeypatch.setattr(services, "trigger_update", spy)
    url = reverse("admin:schedules_trigger_change", args=[trigger.pk])
    data = _change_form(trigger, inputs="{}", timezone="UTC", cron="0 9 * * 1-5", max_runs="4", priority="high")
    # JSON fields (callable default) carry their initial value in a hidden input, as the browser sends it.
    data.update({"initial-inputs": "{}", "initial-execution_window": "{}"})
    response = admin_client.post(url, data)
    assert response.status_code == 302, response.content.decode()
    assert calls == [{"max_runs", "priority"}]
    trigger.refresh_from_db()
    assert (trigger.max_runs, trigger.priority) == (4, "high")


def test_trigger_admin__untouched_times_do_not_count_as_a_schedule_change(admin_client, workflow):
    """Saving a trigger whose start/end have microseconds, without touching them, keeps them as stored."""
    start = timezone.now() + timedelta(days=1, microseconds=123)
    trigger = TriggerFactory(workflow=workflow, start_at=start, end_at=start + timedelta(days=30))
    trigger.refresh_from_db()
    active_since = trigger.active_since
    local = timezone.get_current_timezone()
    data = _change_form(
        trigger,
        cron="0 9 * * 1-5",
        timezone="UTC",
        start_at_0=f"{trigger.start_at.astimezone(local):%Y-%m-%d}",
        start_at_1=f"{trigger.start_at.astimezone(local):%H:%M:%S}",
        end_at_0=f"{trigger.end_at.astimezone(local):%Y-%m-%d}",
        end_at_1=f"{trigger.end_at.astimezone(local):%H:%M:%S}",
        name="renamed",
    )
    response = admin_client.post(reverse("admin:schedules_trigger_change", args=[trigger.pk]), data)
    assert response.status_code == 302, response.content.decode()
    trigger.refresh_from_db()
    assert trigger.name == "renamed"
    assert trigger.start_at == start
    assert trigger.active_since == active_since


def test_trigger_admin__change_page_shows_rules_state_and_preview(admin_client, admin_user, workflow):
    """The change page shows the rules in words, read-only state (runs, failures, who paused) and the preview."""
    trigger = TriggerFactory(
        workflow=workflow,
        cron="0 * * * *",
        timezone="Asia/Tokyo",
        max_runs=10,
        execution_window={"ranges": [["09:00", "10:00"]]},
    )
    Trigger.objects.filter(pk=trigger.pk).update(run_count=4, consecutive_failures=2)
    services.trigger_pause(trigger=trigger, reason="audit", by=admin_user)
    response = admin_client.get(reverse("admin:schedules_trigger_change", args=[trigger.pk]))
    assert response.status_code == 200
    content = response.content.decode()
    for text in (
        "Every hour (Asia/Tokyo)",
        f"by {admin_user.username}: audit",
        "4 of 10 scheduled runs done, 6 remaining",
        "Only every day, 09:00-10:00 (Asia/Tokyo)",
        "Runs remaining",
        "Consecutive failures",
        "Paused by",
        "JST",
        "does not run while paused",
        "outside the execution window",
    ):
        assert text in content, text
    for name in ("run_count", "consecutive_failures", "completed_at", "paused_by"):
        assert f'name="{name}"' not in content


def test_trigger_admin__pause_action_records_who(admin_client, admin_user, trigger):
    """The pause action records the admin user as paused_by."""
    _action(admin_client, "pause_triggers", trigger)
    trigger.refresh_from_db()
    assert trigger.paused_by == admin_user


# --- Backfill action ----------------------------------------------------------------------------


def _backfill(client, *triggers: Trigger, **data: str):
    payload = {"action": "backfill_triggers", "_selected_action": [t.pk for t in triggers], **data}
    return client.post(reverse(CHANGELIST), payload)


def test_trigger_admin__backfill_action_asks_for_the_range(admin_client, trigger):
    """Choosing Backfill… shows a page asking for start, end and overlap (nothing is run yet)."""
    response = _backfill(admin_client, trigger)
    assert response.status_code == 200
    content = response.content.decode()
    assert 'name="start"' in content and 'name="end"' in content and 'name="overlap"' in content
    for value in services.BACKFILL_OVERLAP:
        assert f'value="{value}"' in content
    assert f'name="_selected_action" value="{trigger.pk}"' in content
    assert not Execution.objects.exists()


def test_trigger_admin__backfill_action_runs_past_slots(admin_client, workflow, django_capture_on_commit_callbacks):
    """Applying the backfill creates one execution per past slot (origin backfill), sends them, and reports counts."""
    trigger = TriggerFactory(workflow=workflow, cron="0 * * * *")
    hour = timezone.now().replace(minute=0, second=0, microsecond=0)
    _execution(trigger, minutes_ago=0)  # an unrelated slot
    Execution.objects.create(
        trigger=trigger, workflow=workflow, scheduled_for=hour - timedelta(hours=2), status=ExecutionStatus.SUCCEEDED
    )
    start, end = hour - timedelta(hours=3), hour - timedelta(hours=1)
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        response = _backfill(
            admin_client,
            trigger,
            apply="1",
            start=f"{start:%Y-%m-%dT%H:%M}",
            end=f"{end:%Y-%m-%dT%H:%M}",
            overlap="allow",
        )
    assert response.status_code == 302
    backfilled = Execution.objects.filter(trigger=trigger, origin="backfill").order_by("scheduled_for")
    assert [e.scheduled_for for e in backfilled] == [start, end]
    assert len(callbacks) == 2
    [(level, text)] = _messages(response)
    assert level == "success"
    assert "backfill queued 2 execution(s); 1 slot(s) already had one, 0 skipped" in text


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"start": "2026-01-02T00:00", "end": "2026-01-01T00:00"}, "end: must be after start."),
        ({"start": "2026-01-01T00:00", "end": "2999-01-01T00:00"}, "end: must not be in the future"),
    ],
)
def test_trigger_admin__backfill_errors_are_messages(admin_client, trigger, data, message):
    """A range the service refuses is an error message per trigger, never a 500; nothing is created."""
    response = _backfill(admin_client, trigger, apply="1", overlap="buffer_all", **data)
    assert response.status_code == 302
    [(level, text)] = _messages(response)
    assert level == "error" and message in text and trigger.name in text
    assert not Execution.objects.exists()


def test_trigger_admin__backfill_form_errors_show_the_page_again(admin_client, trigger):
    """A missing or malformed time, or an unknown overlap, shows the form again with field errors."""
    response = _backfill(admin_client, trigger, apply="1", start="yesterday", end="", overlap="cancel")
    assert response.status_code == 200
    errors = response.context["form"].errors
    assert set(errors) == {"start", "end", "overlap"}
    assert not Execution.objects.exists()


def test_trigger_admin__backfill_inactive_workflow_is_error_message(admin_client, trigger):
    """Backfilling a trigger whose workflow is inactive is an error message."""
    trigger.workflow.is_active = False
    trigger.workflow.save()
    response = _backfill(
        admin_client, trigger, apply="1", start="2026-01-01T00:00", end="2026-01-01T05:00", overlap="buffer_all"
    )
    [(level, text)] = _messages(response)
    assert level == "error" and "is not active" in text


# --- Executions: origin, reasons, retry ----------------------------------------------------------


def test_execution_admin__filters_by_origin_and_skip_reason(admin_client, trigger):
    """The execution list filters by origin and skip reason, and shows the wait reason."""
    _execution(trigger, minutes_ago=1, origin="backfill")
    _execution(trigger, minutes_ago=2, status=ExecutionStatus.SKIPPED, skip_reason="outside_window")
    _execution(trigger, minutes_ago=3, status=ExecutionStatus.QUEUED, wait_reason="concurrency")
    url = reverse(EXECUTIONS)
    assert len(admin_client.get(url, {"origin__exact": "backfill"}).context["cl"].result_list) == 1
    assert len(admin_client.get(url, {"skip_reason__exact": "outside_window"}).context["cl"].result_list) == 1
    content = admin_client.get(url).content.decode()
    assert "Outside the execution window" in content and "concurrency" in content and "Backfill" in content


def test_execution_admin__detail_shows_origin_reasons_and_links(admin_client, trigger):
    """The execution page shows origin, skip/wait reason, due time, jitter and what it retried."""
    failed = _execution(trigger, minutes_ago=5, status=ExecutionStatus.FAILED)
    retry = _execution(
        trigger, minutes_ago=1, status=ExecutionStatus.QUEUED, origin="retry", retry_of=failed, wait_reason="jitter"
    )
    content = admin_client.get(reverse("admin:schedules_execution_change", args=[retry.pk])).content.decode()
    for text in ("Origin", "Retry of a failed execution", "Wait reason", "jitter", "Retry of", "Due at", str(failed)):
        assert text in content, text


def _retry(client, *executions: Execution):
    return client.post(
        reverse(EXECUTIONS), {"action": "retry_executions", "_selected_action": [e.pk for e in executions]}
    )


def test_execution_admin__retry_action_retries_failed_ones(admin_client, trigger, django_capture_on_commit_callbacks):
    """Retry queues a new execution for each failed one (origin retry) and warns about the others."""
    failed = _execution(trigger, minutes_ago=5, status=ExecutionStatus.FAILED)
    succeeded = _execution(trigger, minutes_ago=4, status=ExecutionStatus.SUCCEEDED)
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        response = _retry(admin_client, failed, succeeded)
    assert response.status_code == 302
    retry = Execution.objects.get(retry_of=failed)
    assert (retry.origin, retry.status, retry.inputs) == ("retry", ExecutionStatus.QUEUED, failed.inputs)
    assert not Execution.objects.filter(retry_of=succeeded).exists()
    assert len(callbacks) == 1
    messages = dict(_messages(response))
    assert str(retry.pk) in messages["success"]
    assert "1 selected execution(s) not retried" in messages["warning"]


def test_execution_admin__retry_on_inactive_workflow_is_error_message(admin_client, trigger):
    """Retrying when the workflow is inactive is an error message, and nothing is queued."""
    failed = _execution(trigger, minutes_ago=5, status=ExecutionStatus.FAILED)
    trigger.workflow.is_active = False
    trigger.workflow.save()
    response = _retry(admin_client, failed)
    [(level, text)] = _messages(response)
    assert level == "error" and "is not active" in text
    assert Execution.objects.count() == 1


def test_execution_admin__retry_needs_permission_to_change_triggers(client, trigger):
    """Staff who may only view executions are not offered the retry action."""
    from django.contrib.auth.models import Permission

    from tests.factories import UserFactory

    viewer = UserFactory(is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_execution"))
    client.force_login(viewer)
    failed = _execution(trigger, minutes_ago=5, status=ExecutionStatus.FAILED)
    response = client.get(reverse(EXECUTIONS))
    assert response.status_code == 200
    assert "retry_executions" not in response.content.decode()
    _retry(client, failed)
    assert Execution.objects.count() == 1


# --- Preview in the form ------------------------------------------------------------------------


def test_trigger_admin__preview_button_shows_next_runs_without_saving(admin_client, workflow):
    """The add form's preview button shows the rules and next runs of the values typed, and saves nothing."""
    data = _form(workflow, max_runs="2", execution_window='{"days": [1, 2, 3]}', _preview="1")
    response = admin_client.post(reverse("admin:schedules_trigger_add"), data)
    assert response.status_code == 200
    content = response.content.decode()
    assert "Preview of the values above (not saved)" in content
    assert "At 09:00, Monday through Friday (America/Los_Angeles)" in content
    assert "0 of 2 scheduled runs done, 2 remaining" in content
    assert content.count(">runs<") == 2
    assert "errornote" not in content and "Preview only" not in content
    assert 'value="Weekday report"' in content  # the form keeps what was typed
    assert not Trigger.objects.exists()
    assert _fire_tasks() == 0


def test_trigger_admin__preview_of_invalid_values_shows_the_errors(admin_client, workflow):
    """Previewing invalid values shows the field errors and no preview."""
    response = admin_client.post(reverse("admin:schedules_trigger_add"), _form(workflow, cron="bad", _preview="1"))
    assert response.status_code == 200
    assert "cron" in response.context["adminform"].form.errors
    assert "trigger_preview" not in response.context
    assert not Trigger.objects.exists()


def test_trigger_admin__preview_of_a_change_leaves_the_trigger_as_it_is(admin_client, trigger):
    """Previewing an edit of a saved trigger shows the new schedule without changing the trigger."""
    before = Trigger.objects.get(pk=trigger.pk)
    url = reverse("admin:schedules_trigger_change", args=[trigger.pk])
    response = admin_client.post(url, _change_form(trigger, cron="15 6 * * *", timezone="UTC", _preview="1"))
    assert response.status_code == 200
    assert "At 06:15 (UTC)" in response.content.decode()
    trigger.refresh_from_db()
    assert (trigger.cron, trigger.updated_at) == (before.cron, before.updated_at)


def test_trigger_admin__writes_record_the_acting_user(admin_client, admin_user, workflow):
    """Add, change and delete in the admin each leave an audit event naming the admin user, source admin."""
    from workflows.models import AuditEvent

    assert admin_client.post(reverse("admin:schedules_trigger_add"), _form(workflow)).status_code == 302
    trigger = Trigger.objects.get(name="Weekday report")
    url = reverse("admin:schedules_trigger_change", args=[trigger.pk])
    assert admin_client.post(url, _change_form(trigger, name="Renamed")).status_code == 302
    assert (
        admin_client.post(reverse("admin:schedules_trigger_delete", args=[trigger.pk]), {"post": "yes"}).status_code
        == 302
    )
    events = AuditEvent.objects.filter(object_type="trigger", object_id=str(trigger.pk)).order_by("at", "id")
    assert [(e.action, e.actor, e.owner, e.source) for e in events] == [
        (action, admin_user, workflow.owner, "admin") for action in ("created", "updated", "deleted")
    ]
    assert events[1].changes["name"] == ["Weekday report", "Renamed"]


# --- Presets, "in N minutes" and the live preview ---------------------------------------------


def test_trigger_admin__preset_makes_the_cron(admin_client, workflow):
    """A preset with its time becomes the stored cron (as the API's preset does); nothing else to type."""
    data = _form(workflow, cron="", preset="weekdays", preset_time="09:30", timezone="Europe/Paris")
    assert admin_client.post(reverse("admin:schedules_trigger_add"), data).status_code == 302
    trigger = Trigger.objects.get(name="Weekday report")
    assert (trigger.kind, trigger.cron, trigger.timezone) == ("cron", "30 9 * * 1-5", "Europe/Paris")
    assert PeriodicTask.objects.filter(name=f"trigger:{trigger.pk}").exists()


@pytest.mark.parametrize(
    ("overrides", "field", "message"),
    [
        ({"preset": "weekly", "preset_time": "09:00"}, "preset_day", "the weekly preset needs day and time"),
        ({"preset": "daily", "preset_time": "25:00"}, "preset_time", "time must be"),
        ({"preset": "hourly", "preset_minute": "60"}, "preset_minute", "minute must be"),
        ({"preset": "daily", "preset_time": "09:00", "cron": "0 8 * * *"}, "preset", "not both"),
        ({"preset": "daily", "preset_time": "09:00", "kind": "interval", "interval_seconds": "60"}, "preset", "cron"),
        ({"preset_time": "09:00"}, "preset_time", "only goes with a preset"),
        ({"delay_minutes": "10"}, "delay_minutes", "only for kind once"),
        ({"delay_minutes": "0", "kind": "once", "cron": ""}, "delay_minutes", "greater than or equal to 1"),
    ],
)
def test_trigger_admin__shortcut_errors_name_the_field_and_create_nothing(
    admin_client, workflow, overrides, field, message
):
    """A wrong preset, preset parameter or 'in N minutes' is an error on that field; nothing is saved."""
    data = _form(workflow, **{"cron": "", **overrides})
    response = admin_client.post(reverse("admin:schedules_trigger_add"), data)
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert field in errors, errors
    assert message in " ".join(errors[field])
    assert not Trigger.objects.exists()


def test_trigger_admin__in_n_minutes_makes_a_once_trigger(admin_client, workflow):
    """'Run once in N minutes' sets run_at to now + N minutes."""
    before = timezone.now()
    data = _form(workflow, kind="once", cron="", delay_minutes="10")
    assert admin_client.post(reverse("admin:schedules_trigger_add"), data).status_code == 302
    trigger = Trigger.objects.get(name="Weekday report")
    assert trigger.kind == "once"
    assert before + timedelta(minutes=10) <= trigger.run_at <= timezone.now() + timedelta(minutes=10)
    assert trigger.next_run_at == trigger.run_at


def test_trigger_admin__preset_on_a_change_replaces_the_cron(admin_client, trigger):
    """Choosing a preset on a saved trigger's form changes its cron (and beat's entry) on save."""
    url = reverse("admin:schedules_trigger_change", args=[trigger.pk])
    data = _change_form(trigger, preset="monthly", preset_day="1", preset_time="06:00", timezone=trigger.timezone)
    assert admin_client.post(url, data).status_code == 302
    trigger.refresh_from_db()
    assert trigger.cron == "0 6 1 * *"


def test_trigger_admin__live_preview_describes_the_values_typed(admin_client, workflow):
    """The form's live preview endpoint answers the next runs and rules of the posted values, and saves nothing."""
    data = _form(workflow, cron="", preset="weekdays", preset_time="09:00", timezone="UTC")
    response = admin_client.post(reverse("admin:schedules_trigger_preview"), data)
    assert response.status_code == 200
    content = response.content.decode()
    assert "At 09:00, Monday through Friday (UTC)" in content
    assert "Next runs" in content and content.count(">runs<") == 5
    assert "When (UTC)" in content  # one time column for a UTC trigger
    assert not Trigger.objects.exists()
    assert _fire_tasks() == 0


def test_trigger_admin__live_preview_of_invalid_values_lists_the_errors(admin_client, workflow):
    """Invalid values answer the field errors in words (label: message), not a preview."""
    response = admin_client.post(reverse("admin:schedules_trigger_preview"), _form(workflow, cron="61 * * * *"))
    assert response.status_code == 200
    content = response.content.decode()
    assert "Not valid yet" in content and "Cron:" in content
    assert "Next runs" not in content


def test_trigger_admin__live_preview_of_a_change_leaves_the_trigger_as_it_is(admin_client, trigger):
    """The change form's live preview shows the edit's schedule without changing the trigger."""
    before = Trigger.objects.get(pk=trigger.pk)
    url = reverse("admin:schedules_trigger_preview_change", args=[trigger.pk])
    response = admin_client.post(url, _change_form(trigger, cron="15 6 * * *", timezone="Asia/Tokyo"))
    assert response.status_code == 200
    content = response.content.decode()
    assert "At 06:15 (Asia/Tokyo)" in content
    assert "JST" in content  # a second column in the trigger's zone
    trigger.refresh_from_db()
    assert (trigger.cron, trigger.updated_at) == (before.cron, before.updated_at)


def test_trigger_admin__live_preview_is_post_only_and_owned(client, admin_client, trigger, other_user):
    """GET is refused, another user's trigger is not found, and a logged-out user is sent to log in."""
    url = reverse("admin:schedules_trigger_preview_change", args=[trigger.pk])
    assert admin_client.get(url).status_code == 405
    assert admin_client.post(reverse("admin:schedules_trigger_preview_change", args=["nope"])).status_code == 404
    assert client.post(url, _change_form(trigger)).status_code == 302  # to the login page
    other_user.is_staff = True
    other_user.save()
    for codename in ("view_trigger", "change_trigger", "add_trigger"):
        other_user.user_permissions.add(Permission.objects.get(codename=codename))
    client.force_login(other_user)
    assert client.post(url, _change_form(trigger)).status_code == 404


def test_trigger_admin__form_puts_the_preview_under_the_schedule(admin_client, trigger):
    """The add and change forms show the preview box right after the Schedule fieldset, with its live URL."""
    for url, preview_url in (
        (reverse("admin:schedules_trigger_add"), reverse("admin:schedules_trigger_preview")),
        (
            reverse("admin:schedules_trigger_change", args=[trigger.pk]),
            reverse("admin:schedules_trigger_preview_change", args=[trigger.pk]),
        ),
    ):
        content = admin_client.get(url).content.decode()
        schedule, preview, bounds = (
            content.index(text) for text in (">Schedule</h2>", 'id="trigger-preview"', ">Bounds</h2>")
        )
        assert schedule < preview < bounds
        assert f'data-preview-url="{preview_url}"' in content
        assert "schedules/trigger_form.js" in content


def test_trigger_admin__change_page_shows_times_with_zone_and_seconds(admin_client, workflow):
    """Next and last run on the change page are in UTC and the trigger's zone, with seconds."""
    trigger = TriggerFactory(workflow=workflow, cron="0 9 * * *", timezone="America/Los_Angeles")
    last = timezone.now().replace(microsecond=0) - timedelta(hours=1)
    Trigger.objects.filter(pk=trigger.pk).update(last_run_at=last)
    content = admin_client.get(reverse("admin:schedules_trigger_change", args=[trigger.pk])).content.decode()
    local = trigger.next_run_at.astimezone(trigger.cadence.zone)
    assert f"{trigger.next_run_at:%Y-%m-%d %H:%M:%S} UTC" in content
    assert f"{local:%Y-%m-%d %H:%M:%S %Z}" in content
    assert f"{last:%Y-%m-%d %H:%M:%S} UTC" in content


def test_execution_admin__detail_times_have_seconds_and_zone(admin_client, trigger):
    """The execution page shows every time in the one format: 2026-12-07 09:00:00 UTC."""
    at = timezone.now().replace(microsecond=0)
    execution = _execution(trigger, started_at=at, finished_at=at + timedelta(seconds=3))
    content = admin_client.get(reverse("admin:schedules_execution_change", args=[execution.pk])).content.decode()
    assert f"{at:%Y-%m-%d %H:%M:%S} UTC" in content
    assert f"{at + timedelta(seconds=3):%Y-%m-%d %H:%M:%S} UTC" in content
    assert " a.m." not in content and " p.m." not in content


def test_trigger_admin__live_preview_names_shortcut_fields_by_their_label(admin_client, workflow):
    """An error on a preset field is named by the label the form shows, e.g. 'At (HH:MM)'."""
    data = _form(workflow, cron="", preset="daily", preset_time="9h")
    content = admin_client.post(reverse("admin:schedules_trigger_preview"), data).content.decode()
    assert "At (HH:MM): time must be" in content
