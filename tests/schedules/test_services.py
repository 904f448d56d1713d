"""schedules.services: trigger rules, firing slots, claiming, performing and recovering executions."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone
from django_celery_beat.models import ClockedSchedule, IntervalSchedule, PeriodicTask

from schedules import dispatch, services
from schedules.beat import FIRE_TASK
from schedules.exceptions import InvalidCron, TriggerStateError
from schedules.models import Execution, ExecutionStatus, Trigger
from tests.factories import WorkflowFactory
from workflows.client import CallResult
from workflows.exceptions import WorkflowRejected, WorkflowUnavailable

LA = "America/Los_Angeles"
# A Wednesday; the test settings give a 3 s lease grace and workflows from the factory a 5 s timeout.
NOW = datetime(2027, 3, 10, 12, 0, tzinfo=UTC)
GRACE = timedelta(seconds=3)
TIMEOUT = timedelta(seconds=5)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def create(workflow, **overrides):
    fields = {
        "owner": workflow.owner,
        "workflow": workflow,
        "name": "Morning report",
        "kind": "cron",
        "cron": "0 9 * * *",
        "now": NOW,
    }
    fields.update(overrides)
    return services.trigger_create(**fields)


def fire_tasks() -> PeriodicTask:
    return PeriodicTask.objects.filter(task=FIRE_TASK)


@pytest.fixture
def enqueued(monkeypatch):
    """Records what the services would send to the broker after commit."""
    sent: dict[str, list] = {"attempts": []}

    def attempt(execution_id, attempt, *, countdown=None, **options):
        sent["attempts"].append((str(execution_id), attempt, countdown))

    def publish(attempts, *, producer=None):
        sent["attempts"].extend((message.execution_id, message.attempt, message.countdown) for message in attempts)
        return len(attempts), None

    monkeypatch.setattr(dispatch, "_enqueue_attempt", attempt)
    monkeypatch.setattr(dispatch, "publish", publish)
    monkeypatch.setattr(dispatch, "broker_queue_depth", lambda queue: 0)
    return sent


class FakeEndpoint:
    """Stands in for workflows.client.call_workflow: records calls, answers from a script."""

    def __init__(self, *answers):
        self.answers = list(answers)
        self.calls = []

    def __call__(self, call):
        self.calls.append(call)
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def ok(run_id="run-1") -> CallResult:
    return CallResult(http_status=200, run_id=run_id, body_excerpt=json.dumps({"run_id": run_id}), duration_ms=12)


@pytest.fixture
def endpoint(monkeypatch):
    def install(*answers):
        fake = FakeEndpoint(*answers)
        monkeypatch.setattr(dispatch, "call_workflow", fake)
        return fake

    return install


# --- trigger_create -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        pytest.param({"cron": "61 * * * *"}, "cron", id="bad-cron"),
        pytest.param({"cron": "0 0 30 2 *"}, "cron", id="never-fires"),
        pytest.param({"timezone_name": "Mars/Olympus_Mons"}, "timezone", id="bad-timezone"),
        pytest.param({"cron": ""}, "cron", id="cron-missing"),
        pytest.param({"kind": "once", "cron": ""}, "run_at", id="run-at-missing"),
        pytest.param({"kind": "interval", "cron": ""}, "interval_seconds", id="interval-missing"),
        pytest.param({"kind": "interval", "interval_seconds": 60}, "cron", id="cron-on-interval"),
        pytest.param({"run_at": NOW + timedelta(hours=1)}, "run_at", id="run-at-on-cron"),
        pytest.param({"interval_seconds": 60}, "interval_seconds", id="interval-on-cron"),
        pytest.param({"kind": "once", "cron": "", "run_at": NOW - timedelta(minutes=1)}, "run_at", id="run-at-past"),
        pytest.param({"kind": "once", "cron": "", "run_at": NOW}, "run_at", id="run-at-now"),
        pytest.param({"min_backoff_seconds": 60, "max_backoff_seconds": 30}, "min_backoff_seconds", id="backoff"),
        pytest.param({"max_backoff_seconds": 10**6}, "max_backoff_seconds", id="backoff-over-cap"),
        pytest.param({"max_attempts": 0}, "max_attempts", id="zero-attempts"),
        pytest.param({"max_attempts": 21}, "max_attempts", id="too-many-attempts"),
        pytest.param({"kind": "weekly"}, "kind", id="bad-kind"),
        pytest.param({"inputs": ["a", "b"]}, "inputs", id="inputs-not-object"),
    ],
)
def test_trigger_create__invalid_input_names_field_and_creates_nothing(workflow, overrides, field):
    """Each invalid input raises a ValidationError for its field and leaves no Trigger or PeriodicTask."""
    with pytest.raises(ValidationError) as excinfo:
        create(workflow, **overrides)
    assert field in excinfo.value.message_dict
    assert not Trigger.objects.exists()
    assert not fire_tasks().exists()


def test_trigger_create__interval_below_minimum_rejected(workflow, settings):
    """An interval shorter than SCHEDULER_MIN_INTERVAL_SECONDS is rejected."""
    settings.SCHEDULER_MIN_INTERVAL_SECONDS = 60
    with pytest.raises(ValidationError) as excinfo:
        create(workflow, kind="interval", cron="", interval_seconds=30)
    assert "interval_seconds" in excinfo.value.message_dict
    assert not Trigger.objects.exists()


def test_trigger_create__workflow_of_another_owner_rejected(workflow, other_user):
    """A trigger may only run one of its owner's workflows."""
    with pytest.raises(ValidationError) as excinfo:
        create(workflow, owner=other_user)
    assert "workflow" in excinfo.value.message_dict
    assert not Trigger.objects.exists()
    assert not fire_tasks().exists()


def test_trigger_create__duplicate_name_rejected(workflow):
    """Two triggers of one owner cannot share a name; the second creates nothing."""
    create(workflow)
    with pytest.raises(ValidationError):
        create(workflow, cron="0 10 * * *")
    assert Trigger.objects.count() == 1
    assert fire_tasks().count() == 1


def test_trigger_create__cron_gets_next_run_and_crontab_in_its_zone(workflow):
    """A cron trigger gets next_run_at (the gap end on DST day) and a crontab in its time zone."""
    trigger = create(workflow, cron="30 2 * * *", timezone_name=LA, now=utc(2027, 3, 13, 12))
    assert trigger.next_run_at == utc(2027, 3, 14, 10)  # 02:30 does not exist that day: 03:00 PDT
    task = PeriodicTask.objects.get(pk=trigger.periodic_task_id)
    assert task.name == f"trigger:{trigger.pk}"
    assert task.task == "schedules.fire_trigger"
    assert json.loads(task.kwargs) == {"trigger_id": trigger.pk}
    crontab = task.crontab
    assert (crontab.minute, crontab.hour, crontab.day_of_month, crontab.month_of_year, crontab.day_of_week) == (
        "30",
        "2",
        "*",
        "*",
        "*",
    )
    assert str(crontab.timezone) == LA
    assert task.interval is None and task.clocked is None and not task.one_off
    assert task.enabled
    assert task.last_run_at == utc(2027, 3, 13, 12)


def test_trigger_create__cron_names_stored_numerically_in_crontab(workflow):
    """The crontab gets the numeric form of a cron with names."""
    trigger = create(workflow, cron="0 9 * * MON-FRI")
    assert trigger.periodic_task.crontab.day_of_week == "1-5"
    assert trigger.next_run_at == utc(2027, 3, 11, 9)


def test_trigger_create__interval_gets_interval_schedule(workflow):
    """An interval trigger gets an IntervalSchedule in seconds and an epoch-aligned next_run_at."""
    trigger = create(workflow, kind="interval", cron="", interval_seconds=900, now=utc(2027, 3, 10, 12, 7))
    task = trigger.periodic_task
    assert (task.interval.every, task.interval.period) == (900, IntervalSchedule.SECONDS)
    assert task.crontab is None and task.clocked is None and not task.one_off
    assert trigger.next_run_at == utc(2027, 3, 10, 12, 15)


def test_trigger_create__once_gets_clocked_one_off_task(workflow):
    """A once trigger gets a ClockedSchedule at run_at and a one-off task."""
    run_at = NOW + timedelta(hours=2)
    trigger = create(workflow, kind="once", cron="", run_at=run_at)
    task = trigger.periodic_task
    assert task.clocked.clocked_time == run_at
    assert task.one_off and task.enabled
    assert trigger.next_run_at == run_at


def test_trigger_create__disabled_trigger_has_disabled_task(workflow):
    """A trigger created paused has a disabled PeriodicTask."""
    trigger = create(workflow, enabled=False)
    assert not trigger.periodic_task.enabled


# --- trigger_update -----------------------------------------------------------------------------


def test_trigger_update__cron_change_updates_task_and_resets_last_run(workflow):
    """Changing the cron rewrites the crontab, recomputes next_run_at and restarts beat at now."""
    trigger = create(workflow, cron="0 9 * * *")
    later = NOW + timedelta(hours=3)
    PeriodicTask.objects.filter(pk=trigger.periodic_task_id).update(last_run_at=NOW + timedelta(hours=1))
    updated = services.trigger_update(trigger=trigger, cron="30 17 * * *", now=later)
    task = PeriodicTask.objects.get(pk=trigger.periodic_task_id)
    assert (task.crontab.minute, task.crontab.hour) == ("30", "17")
    assert task.last_run_at == later
    assert updated.next_run_at == utc(2027, 3, 10, 17, 30)
    assert Trigger.objects.get(pk=trigger.pk).next_run_at == utc(2027, 3, 10, 17, 30)


def test_trigger_update__rename_keeps_beat_position(workflow):
    """A change that is not about the schedule leaves last_run_at and next_run_at alone."""
    trigger = create(workflow)
    fired_at = NOW + timedelta(hours=1)
    PeriodicTask.objects.filter(pk=trigger.periodic_task_id).update(last_run_at=fired_at)
    updated = services.trigger_update(trigger=trigger, name="Renamed", now=NOW + timedelta(hours=2))
    assert PeriodicTask.objects.get(pk=trigger.periodic_task_id).last_run_at == fired_at
    assert updated.next_run_at == trigger.next_run_at


def test_trigger_update__invalid_change_saves_nothing(workflow):
    """A rejected update leaves the trigger and its crontab as they were."""
    trigger = create(workflow, cron="0 9 * * *")
    with pytest.raises(ValidationError):
        services.trigger_update(trigger=trigger, cron="0 25 * * *", now=NOW)
    assert Trigger.objects.get(pk=trigger.pk).cron == "0 9 * * *"
    assert PeriodicTask.objects.get(pk=trigger.periodic_task_id).crontab.hour == "9"


def test_trigger_update__unknown_field_raises_type_error(trigger):
    """Only editable fields may be passed."""
    with pytest.raises(TypeError):
        services.trigger_update(trigger=trigger, next_run_at=NOW)


def test_trigger_update__moving_run_at_moves_the_same_clocked_row(workflow):
    """A once trigger keeps one ClockedSchedule; moving run_at moves it."""
    trigger = create(workflow, kind="once", cron="", run_at=NOW + timedelta(hours=1))
    clocked_id = trigger.periodic_task.clocked_id
    services.trigger_update(trigger=trigger, run_at=NOW + timedelta(hours=5), now=NOW)
    assert ClockedSchedule.objects.get().pk == clocked_id
    assert ClockedSchedule.objects.get().clocked_time == NOW + timedelta(hours=5)


# --- pause, resume, delete ----------------------------------------------------------------------


def test_trigger_pause__disables_periodic_task(workflow):
    """Pausing records when and why and disables the PeriodicTask."""
    trigger = create(workflow)
    paused = services.trigger_pause(trigger=trigger, reason="endpoint migration", now=NOW + timedelta(minutes=1))
    assert not paused.enabled
    assert paused.paused_at == NOW + timedelta(minutes=1)
    assert paused.pause_reason == "endpoint migration"
    assert not PeriodicTask.objects.get(pk=trigger.periodic_task_id).enabled


def test_trigger_pause__twice_raises_state_error(workflow):
    """Pausing a paused trigger is an error."""
    trigger = create(workflow)
    services.trigger_pause(trigger=trigger, now=NOW)
    with pytest.raises(TriggerStateError):
        services.trigger_pause(trigger=trigger, now=NOW)


def test_trigger_resume__running_trigger_raises_state_error(workflow):
    """Resuming a trigger that is not paused is an error."""
    trigger = create(workflow)
    with pytest.raises(TriggerStateError):
        services.trigger_resume(trigger=trigger, now=NOW)


def test_trigger_resume__does_not_run_paused_slots(workflow):
    """After a pause over several slots, the next run is the first slot after the resume."""
    trigger = create(workflow, cron="0 9 * * *")
    services.trigger_pause(trigger=trigger, now=NOW)
    resume_at = utc(2027, 3, 14, 10)  # three daily slots were skipped
    resumed = services.trigger_resume(trigger=trigger, now=resume_at)
    assert resumed.enabled and resumed.paused_at is None and resumed.pause_reason == ""
    assert resumed.next_run_at == utc(2027, 3, 15, 9)
    task = PeriodicTask.objects.get(pk=trigger.periodic_task_id)
    assert task.enabled
    assert task.last_run_at == resume_at


def test_trigger_resume__paused_slots_not_recovered(workflow, enqueued):
    """Right after a resume, recovery finds no missed slot."""
    trigger = create(workflow, cron="0 9 * * *")
    services.trigger_pause(trigger=trigger, now=NOW)
    resume_at = utc(2027, 3, 14, 10)
    services.trigger_resume(trigger=trigger, now=resume_at)
    report = dispatch.executions_recover(now=resume_at + timedelta(minutes=5))
    assert report.slots == 0 and enqueued["attempts"] == []
    assert not Execution.objects.filter(trigger=trigger).exists()


def test_trigger_delete__removes_periodic_task(workflow):
    """Deleting a trigger removes it and its PeriodicTask."""
    trigger = create(workflow)
    task_id = trigger.periodic_task_id
    services.trigger_delete(trigger=trigger)
    assert not Trigger.objects.exists()
    assert not PeriodicTask.objects.filter(pk=task_id).exists()


def test_trigger_delete__once_removes_its_clocked_schedule(workflow):
    """Deleting a once trigger also removes its own ClockedSchedule."""
    trigger = create(workflow, kind="once", cron="", run_at=NOW + timedelta(hours=1))
    services.trigger_delete(trigger=trigger)
    assert not fire_tasks().exists()
    assert not ClockedSchedule.objects.exists()


# --- trigger_fire -------------------------------------------------------------------------------


def test_trigger_fire__creates_running_execution_with_merged_inputs(user):
    """Firing a slot creates a running execution (attempt 1) with trigger inputs over workflow defaults."""
    workflow = WorkflowFactory(owner=user, default_inputs={"region": "us", "report": "daily"})
    trigger = create(workflow, inputs={"report": "weekly"})
    slot, now = utc(2027, 3, 11, 9), utc(2027, 3, 11, 9, 0, 2)
    execution = dispatch.trigger_fire(trigger_id=trigger.pk, scheduled_for=slot, now=now)
    assert execution is not None
    execution.refresh_from_db()
    assert execution.status == ExecutionStatus.RUNNING
    assert execution.attempts == 1
    assert execution.scheduled_for == slot
    assert execution.inputs == {"region": "us", "report": "weekly"}
    assert execution.started_at == now
    assert execution.lease_expires_at == now + TIMEOUT + GRACE
    assert not execution.manual
    trigger.refresh_from_db()
    assert trigger.last_run_at == slot
    assert trigger.next_run_at == utc(2027, 3, 12, 9)


def test_trigger_fire__second_delivery_calls_nothing(workflow):
    """A second fire of the same slot returns None and creates nothing."""
    trigger = create(workflow)
    slot = utc(2027, 3, 11, 9)
    first = dispatch.trigger_fire(trigger_id=trigger.pk, scheduled_for=slot, now=slot + timedelta(seconds=1))
    second = dispatch.trigger_fire(trigger_id=trigger.pk, scheduled_for=slot, now=slot + timedelta(seconds=2))
    assert first is not None
    assert second is None
    assert Execution.objects.count() == 1
    assert Execution.objects.get().attempts == 1


def test_trigger_fire__slot_not_of_this_trigger_ignored(workflow):
    """A slot that is not one of the trigger's slots (e.g. from before an edit) is ignored."""
    trigger = create(workflow, cron="0 9 * * *")
    assert dispatch.trigger_fire(trigger_id=trigger.pk, scheduled_for=utc(2027, 3, 11, 9, 30), now=NOW) is None
    assert not Execution.objects.exists()


def test_trigger_fire__paused_trigger_fires_nothing(workflow):
    """A paused trigger's slot creates no execution."""
    trigger = create(workflow)
    services.trigger_pause(trigger=trigger, now=NOW)
    slot = utc(2027, 3, 11, 9)
    assert dispatch.trigger_fire(trigger_id=trigger.pk, scheduled_for=slot, now=slot) is None
    assert not Execution.objects.exists()


def test_trigger_fire__deleted_trigger_fires_nothing(workflow):
    """A message for a trigger that no longer exists does nothing."""
    trigger = create(workflow)
    services.trigger_delete(trigger=trigger)
    assert dispatch.trigger_fire(trigger_id=trigger.pk, scheduled_for=utc(2027, 3, 11, 9), now=NOW) is None
    assert not Execution.objects.exists()


def test_trigger_fire__once_trigger_goes_quiet_after_firing(workflow):
    """After its slot fires, a once trigger has no next run and its PeriodicTask is disabled."""
    run_at = NOW + timedelta(hours=1)
    trigger = create(workflow, kind="once", cron="", run_at=run_at)
    execution = dispatch.trigger_fire(trigger_id=trigger.pk, scheduled_for=run_at, now=run_at + timedelta(seconds=1))
    assert execution is not None
    trigger.refresh_from_db()
    assert trigger.next_run_at is None
    assert not PeriodicTask.objects.get(pk=trigger.periodic_task_id).enabled


def test_trigger_fire__without_slot_picks_latest_slot(workflow):
    """scheduled_for=None fires the latest slot at or before now."""
    trigger = create(workflow, cron="*/15 * * * *")
    execution = dispatch.trigger_fire(trigger_id=trigger.pk, scheduled_for=None, now=utc(2027, 3, 10, 13, 7, 30))
    assert execution.scheduled_for == utc(2027, 3, 10, 13, 0)


def test_trigger_fire__inactive_workflow_records_skipped(workflow):
    """A slot of an inactive workflow is recorded as skipped and nothing is called."""
    trigger = create(workflow)
    workflow.is_active = False
    workflow.save()
    slot = utc(2027, 3, 11, 9)
    assert dispatch.trigger_fire(trigger_id=trigger.pk, scheduled_for=slot, now=slot) is None
    execution = Execution.objects.get()
    assert execution.status == ExecutionStatus.SKIPPED
    assert execution.attempts == 0
    assert execution.finished_at == slot


# --- execution_claim ----------------------------------------------------------------------------


def queued_execution(trigger) -> Execution:
    """A manual run: queued, no attempt yet, lease until NOW + grace."""
    return services.trigger_run_now(trigger=trigger, now=NOW)


def set_state(execution: Execution, **fields) -> None:
    Execution.objects.filter(pk=execution.pk).update(**fields)


def test_execution_claim__queued_first_attempt_starts(trigger, enqueued):
    """The first attempt of a queued execution is claimed: running, attempt 1, lease armed."""
    execution = queued_execution(trigger)
    at = NOW + timedelta(seconds=1)
    claimed = dispatch.execution_claim(execution_id=execution.pk, attempt=1, now=at)
    assert claimed is not None
    assert claimed.status == ExecutionStatus.RUNNING
    assert claimed.attempts == 1
    assert claimed.started_at == at
    assert claimed.lease_expires_at == at + TIMEOUT + GRACE


def test_execution_claim__duplicate_while_lease_held_returns_none(trigger, enqueued):
    """A second delivery of the same attempt finds the lease held and gets nothing."""
    execution = queued_execution(trigger)
    dispatch.execution_claim(execution_id=execution.pk, attempt=1, now=NOW + timedelta(seconds=1))
    assert dispatch.execution_claim(execution_id=execution.pk, attempt=1, now=NOW + timedelta(seconds=2)) is None
    assert Execution.objects.get(pk=execution.pk).attempts == 1


def test_execution_claim__queued_wrong_attempt_returns_none(trigger, enqueued):
    """A queued execution only accepts attempt 1 while its lease runs."""
    execution = queued_execution(trigger)
    assert dispatch.execution_claim(execution_id=execution.pk, attempt=2, now=NOW + timedelta(seconds=1)) is None


def test_execution_claim__retrying_next_attempt_starts(trigger, enqueued):
    """A retrying execution accepts attempt attempts+1 even before its lease ends."""
    execution = queued_execution(trigger)
    set_state(execution, status=ExecutionStatus.RETRYING, attempts=1, lease_expires_at=NOW + timedelta(minutes=5))
    claimed = dispatch.execution_claim(execution_id=execution.pk, attempt=2, now=NOW + timedelta(seconds=10))
    assert claimed is not None
    assert (claimed.status, claimed.attempts) == (ExecutionStatus.RUNNING, 2)


@pytest.mark.parametrize("attempt", [1, 3])
def test_execution_claim__retrying_wrong_attempt_returns_none(trigger, enqueued, attempt):
    """A retrying execution refuses any attempt but attempts+1 while its lease runs."""
    execution = queued_execution(trigger)
    set_state(execution, status=ExecutionStatus.RETRYING, attempts=1, lease_expires_at=NOW + timedelta(minutes=5))
    assert dispatch.execution_claim(execution_id=execution.pk, attempt=attempt, now=NOW + timedelta(seconds=10)) is None
    assert Execution.objects.get(pk=execution.pk).status == ExecutionStatus.RETRYING


def test_execution_claim__expired_lease_is_taken_over(trigger, enqueued):
    """A running execution whose holder's lease ran out is taken over; the lost attempt counts."""
    execution = queued_execution(trigger)
    set_state(execution, status=ExecutionStatus.RUNNING, attempts=1, lease_expires_at=NOW + timedelta(seconds=8))
    at = NOW + timedelta(minutes=1)
    claimed = dispatch.execution_claim(execution_id=execution.pk, attempt=2, now=at)
    assert claimed is not None
    assert (claimed.status, claimed.attempts) == (ExecutionStatus.RUNNING, 2)
    assert claimed.lease_expires_at == at + TIMEOUT + GRACE


@pytest.mark.parametrize("status", [ExecutionStatus.SUCCEEDED, ExecutionStatus.FAILED, ExecutionStatus.SKIPPED])
def test_execution_claim__finished_returns_none(trigger, enqueued, status):
    """A finished execution is never claimed again, whatever its lease."""
    execution = queued_execution(trigger)
    set_state(execution, status=status, attempts=1, lease_expires_at=NOW - timedelta(hours=1))
    assert dispatch.execution_claim(execution_id=execution.pk, attempt=2, now=NOW) is None
    assert Execution.objects.get(pk=execution.pk).status == status


def test_execution_claim__lease_expired_on_last_attempt_fails(trigger, enqueued):
    """If the holder of the last allowed attempt died, the execution is failed instead of run again."""
    execution = queued_execution(trigger)
    set_state(
        execution,
        status=ExecutionStatus.RUNNING,
        attempts=trigger.max_attempts,
        lease_expires_at=NOW + timedelta(seconds=8),
    )
    at = NOW + timedelta(minutes=1)
    assert dispatch.execution_claim(execution_id=execution.pk, attempt=trigger.max_attempts + 1, now=at) is None
    execution.refresh_from_db()
    assert execution.status == ExecutionStatus.FAILED
    assert execution.finished_at == at
    assert execution.error
    assert execution.lease_expires_at is None


def test_execution_claim__inactive_workflow_fails(trigger, enqueued):
    """An execution whose workflow was deactivated meanwhile is failed, not called."""
    execution = queued_execution(trigger)
    trigger.workflow.is_active = False
    trigger.workflow.save()
    assert dispatch.execution_claim(execution_id=execution.pk, attempt=1, now=NOW + timedelta(seconds=1)) is None
    assert Execution.objects.get(pk=execution.pk).status == ExecutionStatus.FAILED


# --- execution_perform --------------------------------------------------------------------------


def claimed_execution(trigger) -> Execution:
    """A manual run claimed for its first attempt, on the real clock (perform uses it)."""
    execution = services.trigger_run_now(trigger=trigger)
    return dispatch.execution_claim(execution_id=execution.pk, attempt=1)


def test_execution_perform__success_records_run_id(user, enqueued, endpoint):
    """A 2xx answer finishes the execution as succeeded with the run id, status and duration."""
    workflow = WorkflowFactory(owner=user, headers={"X-Team": "growth"}, default_inputs={"region": "us"})
    trigger = create(workflow, inputs={"report": "weekly"}, now=None)
    execution = claimed_execution(trigger)
    fake = endpoint(ok("run-42"))
    outcome = dispatch.execution_perform(execution=execution)
    assert outcome.status == ExecutionStatus.SUCCEEDED
    execution.refresh_from_db()
    assert execution.status == ExecutionStatus.SUCCEEDED
    assert (execution.run_id, execution.http_status, execution.duration_ms) == ("run-42", 200, 12)
    assert execution.finished_at is not None and execution.lease_expires_at is None
    assert execution.error == ""
    assert [entry["attempt"] for entry in execution.metadata["attempts"]] == [1]
    (call,) = fake.calls
    assert call.url == workflow.endpoint_url
    assert call.secret == workflow.secret
    assert call.idempotency_key == str(execution.pk)
    assert call.headers == {"X-Team": "growth"}
    assert call.payload["execution_id"] == str(execution.pk)
    assert call.payload["attempt"] == 1
    assert call.payload["inputs"] == {"region": "us", "report": "weekly"}
    assert datetime.fromisoformat(call.payload["scheduled_for"]) == execution.scheduled_for
    assert enqueued["attempts"] == [(str(execution.pk), 1, None)]  # only the run-now message


def test_execution_perform__unavailable_schedules_retry(trigger, enqueued, endpoint):
    """A retryable failure sets retrying with next_attempt_at, logs the wait and enqueues attempt 2."""
    execution = claimed_execution(trigger)
    enqueued["attempts"].clear()
    endpoint(WorkflowUnavailable("HTTP 503 Service Unavailable", http_status=503))
    before = timezone.now()
    outcome = dispatch.execution_perform(execution=execution)
    after = timezone.now()
    assert outcome.status == ExecutionStatus.RETRYING
    assert outcome.next_attempt == 2
    assert trigger.min_backoff_seconds <= outcome.retry_in_seconds <= 2 * trigger.min_backoff_seconds
    execution.refresh_from_db()
    assert execution.status == ExecutionStatus.RETRYING
    assert execution.attempts == 1
    assert execution.http_status == 503
    assert "503" in execution.error
    wait = timedelta(seconds=outcome.retry_in_seconds)
    assert before + wait <= execution.next_attempt_at <= after + wait
    assert execution.lease_expires_at == execution.next_attempt_at + GRACE
    (entry,) = execution.metadata["attempts"]
    assert entry["retry_in_seconds"] == outcome.retry_in_seconds
    assert entry["http_status"] == 503
    assert enqueued["attempts"] == [(str(execution.pk), 2, outcome.retry_in_seconds)]


def test_execution_perform__retry_after_is_honoured(trigger, enqueued, endpoint):
    """A Retry-After longer than the backoff (and under the cap) sets the wait."""
    execution = claimed_execution(trigger)
    endpoint(WorkflowUnavailable("HTTP 429", http_status=429, retry_after_seconds=120))
    outcome = dispatch.execution_perform(execution=execution)
    assert outcome.retry_in_seconds == 120


def test_execution_perform__retry_message_sent_after_commit(
    trigger, monkeypatch, endpoint, django_capture_on_commit_callbacks
):
    """The retry is sent to the broker only on commit, as run_execution(execution_id, attempt=2) with a countdown."""

    sent = []

    def publish(attempts, **kwargs):
        sent.extend(
            {
                "kwargs": {"execution_id": a.execution_id, "attempt": a.attempt},
                "countdown": a.countdown,
                "queue": a.queue,
            }
            for a in attempts
        )
        return len(attempts), None

    monkeypatch.setattr(dispatch, "publish", publish)
    with django_capture_on_commit_callbacks() as callbacks:
        execution = claimed_execution(trigger)
        endpoint(WorkflowUnavailable("HTTP 502", http_status=502))
        outcome = dispatch.execution_perform(execution=execution)
    assert sent == []
    for callback in callbacks:
        callback()
    assert [(message["kwargs"], message["countdown"], message["queue"]) for message in sent] == [
        ({"execution_id": str(execution.pk), "attempt": 1}, None, "normal"),
        (
            {"execution_id": str(execution.pk), "attempt": 2},
            pytest.approx(outcome.retry_in_seconds, abs=0.5),
            "normal",
        ),
    ]


def test_execution_perform__rejected_fails_at_once(trigger, enqueued, endpoint):
    """A final rejection fails the execution on the first attempt and schedules nothing."""
    execution = claimed_execution(trigger)
    enqueued["attempts"].clear()
    endpoint(WorkflowRejected("HTTP 404 Not Found", http_status=404, body_excerpt="no such hook"))
    outcome = dispatch.execution_perform(execution=execution)
    assert outcome.status == ExecutionStatus.FAILED
    execution.refresh_from_db()
    assert execution.status == ExecutionStatus.FAILED
    assert (execution.attempts, execution.http_status) == (1, 404)
    assert "404" in execution.error
    assert execution.metadata["response_excerpt"] == "no such hook"
    assert execution.finished_at is not None and execution.next_attempt_at is None
    assert enqueued["attempts"] == []


def test_execution_perform__retries_exhausted_fails_with_last_error(user, enqueued, endpoint):
    """When the last allowed attempt fails too, the execution fails with that attempt's error and status."""
    workflow = WorkflowFactory(owner=user)
    trigger = create(workflow, max_attempts=2, now=None)
    execution = claimed_execution(trigger)
    enqueued["attempts"].clear()
    endpoint(
        WorkflowUnavailable("HTTP 503 Service Unavailable", http_status=503),
        WorkflowUnavailable("HTTP 502 Bad Gateway", http_status=502),
    )
    assert dispatch.execution_perform(execution=execution).status == ExecutionStatus.RETRYING
    execution.refresh_from_db()
    second = dispatch.execution_claim(execution_id=execution.pk, attempt=2, now=execution.next_attempt_at)
    assert second is not None
    outcome = dispatch.execution_perform(execution=second)
    assert outcome.status == ExecutionStatus.FAILED
    execution.refresh_from_db()
    assert execution.status == ExecutionStatus.FAILED
    assert execution.attempts == 2
    assert execution.http_status == 502
    assert "502" in execution.error
    assert [entry["attempt"] for entry in execution.metadata["attempts"]] == [1, 2]
    assert [attempt for _, attempt, _ in enqueued["attempts"]] == [2]


def test_execution_perform__unexpected_error_is_retried(trigger, enqueued, endpoint):
    """An unexpected exception in the call is recorded and retried, never lost."""
    execution = claimed_execution(trigger)
    endpoint(RuntimeError("boom"))
    outcome = dispatch.execution_perform(execution=execution)
    assert outcome.status == ExecutionStatus.RETRYING
    execution.refresh_from_db()
    assert execution.error == "internal error: RuntimeError"


def test_execution_perform__result_after_takeover_is_ignored(trigger, enqueued, monkeypatch):
    """A slow attempt that finishes after another worker took over does not overwrite the new attempt."""
    execution = claimed_execution(trigger)

    def slow_call(call):
        # While this call hangs, the lease runs out and another worker takes over.
        later = timezone.now() + timedelta(hours=1)
        assert dispatch.execution_claim(execution_id=execution.pk, attempt=2, now=later) is not None
        return ok("late")

    monkeypatch.setattr(dispatch, "call_workflow", slow_call)
    dispatch.execution_perform(execution=execution)
    execution.refresh_from_db()
    assert (execution.status, execution.attempts) == (ExecutionStatus.RUNNING, 2)
    assert execution.run_id == ""


# --- backoff_seconds ----------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(20))
def test_backoff_seconds__each_wait_within_its_band(seed):
    """Attempt n waits between min*2^(n-1) and min*2^n, capped at max."""
    rng = random.Random(seed)
    for attempt in range(1, 12):
        wait = dispatch.backoff_seconds(attempt=attempt, min_backoff=5, max_backoff=300, rng=rng)
        low, high = min(300, 5 * 2 ** (attempt - 1)), min(300, 5 * 2**attempt)
        assert low <= wait <= high, (attempt, wait)


@pytest.mark.parametrize("seed", range(20))
def test_backoff_seconds__waits_never_shrink(seed):
    """Successive waits of one execution never get shorter and end at the cap."""
    rng = random.Random(seed)
    waits = [dispatch.backoff_seconds(attempt=n, min_backoff=2, max_backoff=100, rng=rng) for n in range(1, 15)]
    assert waits == sorted(waits)
    assert waits[-1] == 100


def test_backoff_seconds__retry_after_honoured_up_to_max():
    """A longer Retry-After sets the wait, but never beyond max; a shorter one changes nothing."""
    assert (
        dispatch.backoff_seconds(attempt=1, min_backoff=5, max_backoff=300, retry_after=120, rng=random.Random(1))
        == 120
    )
    assert (
        dispatch.backoff_seconds(attempt=1, min_backoff=5, max_backoff=300, retry_after=5000, rng=random.Random(1))
        == 300
    )
    short = dispatch.backoff_seconds(attempt=1, min_backoff=5, max_backoff=300, retry_after=1, rng=random.Random(1))
    assert 5 <= short <= 10


def test_backoff_seconds__spreads_out():
    """Jitter: waits for the same attempt differ between executions."""
    rng = random.Random(7)
    waits = {dispatch.backoff_seconds(attempt=3, min_backoff=5, max_backoff=300, rng=rng) for _ in range(20)}
    assert len(waits) > 10


# --- executions_recover -------------------------------------------------------------------------


def test_executions_recover__requeues_stale_running_once(workflow, enqueued):
    """A running execution whose lease ran out is re-queued once; its lease is re-armed."""
    trigger = create(workflow)
    slot = utc(2027, 3, 11, 9)
    execution = dispatch.trigger_fire(trigger_id=trigger.pk, scheduled_for=slot, now=slot)
    at = slot + timedelta(minutes=1)
    report = dispatch.executions_recover(now=at)
    assert (report.executions, report.slots) == (1, 0)
    assert enqueued["attempts"] == [(str(execution.pk), 2, None)]
    assert Execution.objects.get(pk=execution.pk).lease_expires_at == at + GRACE
    again = dispatch.executions_recover(now=at + timedelta(seconds=1))
    assert again.executions == 0
    assert len(enqueued["attempts"]) == 1


def test_executions_recover__requeued_attempt_can_be_claimed(workflow, enqueued):
    """The attempt recovery re-queues for a dead worker's execution is claimed and run (attempt 2)."""
    trigger = create(workflow)
    slot = utc(2027, 3, 11, 9)
    execution = dispatch.trigger_fire(trigger_id=trigger.pk, scheduled_for=slot, now=slot)
    at = slot + timedelta(minutes=1)
    dispatch.executions_recover(now=at)
    ((execution_id, attempt, _),) = enqueued["attempts"]
    claimed = dispatch.execution_claim(execution_id=execution_id, attempt=attempt, now=at + timedelta(seconds=1))
    assert claimed is not None
    assert (claimed.status, claimed.attempts) == (ExecutionStatus.RUNNING, 2)
    assert claimed.pk == execution.pk


def test_executions_recover__requeued_last_attempt_fails_on_claim(user, enqueued):
    """A dead worker on the last allowed attempt: the re-queued message fails the execution."""
    workflow = WorkflowFactory(owner=user)
    trigger = create(workflow, max_attempts=1)
    slot = utc(2027, 3, 11, 9)
    execution = dispatch.trigger_fire(trigger_id=trigger.pk, scheduled_for=slot, now=slot)
    at = slot + timedelta(minutes=1)
    dispatch.executions_recover(now=at)
    ((execution_id, attempt, _),) = enqueued["attempts"]
    assert dispatch.execution_claim(execution_id=execution_id, attempt=attempt, now=at + timedelta(seconds=1)) is None
    assert Execution.objects.get(pk=execution.pk).status == ExecutionStatus.FAILED


def test_executions_recover__lost_manual_run_requeued(trigger, enqueued):
    """A queued manual run whose message never arrived is re-queued as attempt 1 and can be claimed."""
    execution = services.trigger_run_now(trigger=trigger, now=NOW)
    enqueued["attempts"].clear()
    report = dispatch.executions_recover(now=NOW + timedelta(seconds=10))
    assert report.executions == 1
    assert enqueued["attempts"] == [(str(execution.pk), 1, None)]
    assert dispatch.execution_claim(execution_id=execution.pk, attempt=1, now=NOW + timedelta(seconds=11)) is not None


def test_executions_recover__held_and_finished_executions_left_alone(workflow, enqueued, endpoint):
    """Executions whose lease still runs, and finished ones, are not re-queued."""
    trigger = create(workflow, overlap="allow")
    slot = utc(2027, 3, 11, 9)
    dispatch.trigger_fire(trigger_id=trigger.pk, scheduled_for=slot, now=slot)
    next_day = slot + timedelta(days=1)
    finished = dispatch.trigger_fire(trigger_id=trigger.pk, scheduled_for=next_day, now=next_day)
    set_state(finished, status=ExecutionStatus.SUCCEEDED, lease_expires_at=None)
    assert dispatch.executions_recover(now=slot + timedelta(seconds=5)).executions == 0
    assert enqueued["attempts"] == []


def test_executions_recover__missed_slot_is_dispatched(workflow, enqueued):
    """A due slot nobody dispatched within the grace is dispatched by recovery itself: its execution is
    written and its first attempt sent, and a later fire for the slot changes nothing."""
    trigger = create(workflow, cron="0 9 * * *")
    at = utc(2027, 3, 11, 9, 5)
    report = dispatch.executions_recover(now=at)
    assert report.slots == 1
    execution = Execution.objects.get(trigger=trigger)
    assert (execution.scheduled_for, execution.status) == (utc(2027, 3, 11, 9), ExecutionStatus.QUEUED)
    assert enqueued["attempts"] == [(str(execution.pk), 1, None)]
    assert dispatch.trigger_fire(trigger_id=trigger.pk, scheduled_for=utc(2027, 3, 11, 9), now=at) is None
    assert dispatch.executions_recover(now=at + timedelta(seconds=10)).slots == 0


def test_executions_recover__long_outage_dispatches_only_latest_slot(workflow, enqueued):
    """After days without beat, recovery runs only the latest missed slot (catch-up latest), once."""
    trigger = create(workflow, cron="0 9 * * *")
    dispatch.executions_recover(now=utc(2027, 3, 14, 10))
    runs = Execution.objects.filter(trigger=trigger, status=ExecutionStatus.QUEUED)
    assert [execution.scheduled_for for execution in runs] == [utc(2027, 3, 14, 9)]
    assert Execution.objects.filter(trigger=trigger, skip_reason="missed").count() == 3
    assert len(enqueued["attempts"]) == 1


def test_executions_recover__slot_within_grace_left_to_beat(workflow, enqueued):
    """A slot only seconds overdue is still beat's to dispatch."""
    create(workflow, cron="0 9 * * *")
    assert dispatch.executions_recover(now=utc(2027, 3, 11, 9, 0, 10)).slots == 0
    assert not Execution.objects.exists() and enqueued["attempts"] == []


def test_executions_recover__paused_trigger_ignored(workflow, enqueued):
    """A paused trigger's missed slots are not dispatched."""
    trigger = create(workflow, cron="0 9 * * *")
    services.trigger_pause(trigger=trigger, now=NOW)
    assert dispatch.executions_recover(now=utc(2027, 3, 11, 9, 5)).slots == 0
    assert not Execution.objects.exists() and enqueued["attempts"] == []


def test_trigger_create__cron_beat_cannot_load_is_refused(workflow):
    """A cron celery's crontab rejects (April 31st) is refused up front: beat would silently drop it."""
    with pytest.raises(InvalidCron, match="never occurs"):
        services.trigger_create(owner=workflow.owner, workflow=workflow, name="April", kind="cron", cron="0 12 31 4 1")
    assert not Trigger.objects.exists()
    assert not PeriodicTask.objects.filter(task=FIRE_TASK).exists()


def test_trigger_fire__slot_from_before_resume_calls_nothing(workflow):
    """A fire message for a slot that fell due while paused, delivered after resume, runs nothing."""
    created = datetime(2026, 5, 4, 9, 0, tzinfo=UTC)
    trigger = services.trigger_create(
        owner=workflow.owner, workflow=workflow, name="Minutely", kind="cron", cron="* * * * *", now=created
    )
    services.trigger_pause(trigger=trigger, now=created + timedelta(minutes=1, seconds=30))
    services.trigger_resume(trigger=trigger, now=created + timedelta(minutes=5, seconds=30))
    paused_slot = created + timedelta(minutes=3)
    assert (
        dispatch.trigger_fire(trigger_id=trigger.pk, scheduled_for=paused_slot, now=created + timedelta(minutes=6))
        is None
    )
    assert not Execution.objects.exists()
    later_slot = created + timedelta(minutes=6)
    assert dispatch.trigger_fire(trigger_id=trigger.pk, scheduled_for=later_slot, now=later_slot) is not None


def test_trigger_pause__keeps_beats_run_bookkeeping(workflow):
    """Syncing without a restart leaves last_run_at and total_run_count to beat."""
    trigger = services.trigger_create(
        owner=workflow.owner, workflow=workflow, name="Keep", kind="cron", cron="* * * * *"
    )
    beat_time = datetime(2026, 5, 4, 9, 0, tzinfo=UTC)
    PeriodicTask.objects.filter(pk=trigger.periodic_task_id).update(last_run_at=beat_time, total_run_count=7)
    trigger.refresh_from_db()
    updated = services.trigger_update(trigger=trigger, name="Kept")
    task = PeriodicTask.objects.get(pk=trigger.periodic_task_id)
    assert (task.last_run_at, task.total_run_count) == (beat_time, 7)
    assert task.description.startswith("Kept:")
    assert updated.name == "Kept"
