"""Scheduling semantics of schedules.services, with time travel: once, interval, bounds, jitter, windows,
catch-up, overlap, concurrency, retries, failure handling, priority, operations and recovery."""

from __future__ import annotations

import contextlib
import json
import random
import threading
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import NamedTuple

import pytest
from django.core import mail
from django.core.exceptions import ValidationError
from django_celery_beat.models import PeriodicTask
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from schedules import dispatch, notifications, services, tasks
from schedules.exceptions import TriggerStateError
from schedules.models import Execution, ExecutionOrigin, ExecutionStatus, SkipReason, Trigger, TriggerStatus
from tests.factories import UserFactory, WorkflowFactory
from workflows.client import CallResult
from workflows.exceptions import WorkflowRejected, WorkflowUnavailable

LA = "America/Los_Angeles"
HOURLY = "0 * * * *"
# A Wednesday. The test settings give a 3 s lease grace; factory workflows have a 5 s timeout.
NOW = datetime(2027, 3, 10, 12, 0, tzinfo=UTC)
GRACE = timedelta(seconds=3)
TIMEOUT = timedelta(seconds=5)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def at(hour: int, minute: int = 0, second: int = 0) -> datetime:
    """A time on NOW's day (2027-03-10, UTC)."""
    return utc(2027, 3, 10, hour, minute, second)


def create(workflow, **overrides) -> Trigger:
    fields = {
        "owner": workflow.owner,
        "workflow": workflow,
        "name": "Hourly report",
        "kind": "cron",
        "cron": HOURLY,
        "now": NOW,
    }
    fields.update(overrides)
    return services.trigger_create(**fields)


def fire(trigger: Trigger, slot: datetime, now: datetime | None = None) -> Execution | None:
    return dispatch.trigger_fire(trigger_id=trigger.pk, scheduled_for=slot, now=now or slot)


def claim(execution: Execution, now: datetime, attempt: int = 1) -> Execution | None:
    return dispatch.execution_claim(execution_id=execution.pk, attempt=attempt, now=now)


def slot_of(trigger: Trigger, slot: datetime) -> Execution:
    """The slot's own execution (not a fallback)."""
    return Execution.objects.get(trigger=trigger, scheduled_for=slot, fallback_of=None)


def by_status(trigger: Trigger) -> dict[str, list[datetime]]:
    """The trigger's slots grouped by status (skipped ones as 'skipped:<reason>'), oldest first."""
    groups: dict[str, list[datetime]] = {}
    for execution in trigger.executions.filter(fallback_of=None).order_by("scheduled_for"):
        key = execution.status
        if execution.status == ExecutionStatus.SKIPPED:
            key = f"skipped:{execution.skip_reason}"
        groups.setdefault(key, []).append(execution.scheduled_for)
    return groups


def fire_task(trigger: Trigger) -> PeriodicTask:
    return PeriodicTask.objects.get(pk=Trigger.objects.get(pk=trigger.pk).periodic_task_id)


class Message(NamedTuple):
    execution_id: str
    attempt: int
    countdown: float | None
    queue: str


@pytest.fixture
def enqueued(monkeypatch):
    """Records what the services would send to the broker after commit (attempts)."""
    sent: dict[str, list] = {"attempts": []}

    def attempt(execution_id, attempt, *, queue="normal", countdown=None, robust=True):
        sent["attempts"].append(Message(str(execution_id), attempt, countdown, queue))

    def publish(attempts, *, producer=None):
        sent["attempts"].extend(
            Message(message.execution_id, message.attempt, message.countdown, message.queue) for message in attempts
        )
        return len(attempts), None

    monkeypatch.setattr(dispatch, "_enqueue_attempt", attempt)
    monkeypatch.setattr(dispatch, "publish", publish)
    monkeypatch.setattr(dispatch, "broker_queue_depth", lambda queue: 0)
    return sent


def messages_for(enqueued, execution: Execution) -> list[Message]:
    return [message for message in enqueued["attempts"] if message.execution_id == str(execution.pk)]


class Clock:
    """What timezone.now() returns inside schedules.dispatch."""

    def __init__(self, now: datetime) -> None:
        self.at = now

    def now(self) -> datetime:
        return self.at


@pytest.fixture
def clock(monkeypatch):
    """Time travel for the services that take no now= (execution_perform and the attempt it records)."""
    fake = Clock(NOW)
    monkeypatch.setattr(dispatch, "timezone", fake)
    return fake


def ok(run_id: str = "run-1") -> CallResult:
    return CallResult(http_status=200, run_id=run_id, body_excerpt=json.dumps({"run_id": run_id}), duration_ms=12)


def unavailable(retry_after: float | None = None) -> WorkflowUnavailable:
    return WorkflowUnavailable("HTTP 503 Service Unavailable", http_status=503, retry_after_seconds=retry_after)


def rejected() -> WorkflowRejected:
    return WorkflowRejected("HTTP 404 Not Found", http_status=404)


@pytest.fixture
def perform(clock, monkeypatch):
    """Runs one claimed attempt at a given time; the endpoint answers ``answer`` (a result or an error)."""
    calls = []

    def run(execution: Execution, answer, *, now: datetime) -> dispatch.AttemptOutcome:
        def endpoint(call):
            calls.append(call)
            if isinstance(answer, Exception):
                raise answer
            return answer

        clock.at = now
        monkeypatch.setattr(dispatch, "call_workflow", endpoint)
        return dispatch.execution_perform(execution=Execution.objects.get(pk=execution.pk))

    run.calls = calls
    return run


# --- once ---------------------------------------------------------------------------------------


def test_trigger_create__once_delay_seconds_becomes_run_at(workflow):
    """delay_seconds at creation sets run_at (and next_run_at and the clocked time) to now + delay."""
    trigger = create(workflow, kind="once", cron="", delay_seconds=90)
    assert trigger.run_at == NOW + timedelta(seconds=90)
    assert trigger.next_run_at == NOW + timedelta(seconds=90)
    assert fire_task(trigger).clocked.clocked_time == NOW + timedelta(seconds=90)


def test_trigger_fire__once_that_ran_is_completed_and_task_disabled(workflow):
    """After its slot fires a once trigger is completed (completed_at set) and its PeriodicTask is disabled."""
    run_at = NOW + timedelta(hours=1)
    trigger = create(workflow, kind="once", cron="", run_at=run_at)
    assert trigger.status == TriggerStatus.ACTIVE
    ran_at = run_at + timedelta(seconds=2)
    assert fire(trigger, run_at, now=ran_at) is not None
    trigger.refresh_from_db()
    assert trigger.status == TriggerStatus.COMPLETED == "completed"
    assert trigger.completed_at == ran_at
    assert trigger.next_run_at is None
    assert not fire_task(trigger).enabled
    assert fire(trigger, run_at, now=ran_at + timedelta(seconds=1)) is None
    assert trigger.executions.count() == 1


def test_trigger_update__once_run_at_moved_before_it_runs_moves_the_slot(workflow):
    """Moving run_at before it runs: the old time runs nothing, the new time runs once."""
    old, new = NOW + timedelta(hours=1), NOW + timedelta(hours=3)
    trigger = create(workflow, kind="once", cron="", run_at=old)
    moved = services.trigger_update(trigger=trigger, run_at=new, now=NOW + timedelta(minutes=10))
    assert moved.next_run_at == new
    assert fire_task(trigger).clocked.clocked_time == new
    assert fire(trigger, old) is None
    assert not Execution.objects.exists()
    assert Trigger.objects.get(pk=trigger.pk).status == TriggerStatus.ACTIVE
    assert fire(trigger, new) is not None
    assert Trigger.objects.get(pk=trigger.pk).status == TriggerStatus.COMPLETED


def test_trigger_delete__once_before_run_at_never_runs(workflow):
    """A once trigger deleted before run_at leaves no task, and its slot's message runs nothing."""
    run_at = NOW + timedelta(hours=1)
    trigger = create(workflow, kind="once", cron="", run_at=run_at)
    services.trigger_delete(trigger=trigger)
    assert not PeriodicTask.objects.filter(name=f"trigger:{trigger.pk}").exists()
    assert fire(trigger, run_at) is None
    assert not Execution.objects.exists()


def test_trigger_pause__once_before_run_at_never_runs(workflow, enqueued):
    """A once trigger paused before run_at never runs: not at run_at, not by recovery, not after resuming."""
    run_at = NOW + timedelta(hours=1)
    trigger = create(workflow, kind="once", cron="", run_at=run_at)
    services.trigger_pause(trigger=trigger, now=NOW + timedelta(minutes=5))
    assert not fire_task(trigger).enabled
    assert fire(trigger, run_at) is None
    assert dispatch.executions_recover(now=run_at + timedelta(minutes=5)).slots == 0
    resumed = services.trigger_resume(trigger=trigger, now=run_at + timedelta(minutes=10))
    assert resumed.next_run_at is None
    assert not fire_task(trigger).enabled
    assert fire(trigger, run_at, now=run_at + timedelta(minutes=11)) is None
    assert not Execution.objects.exists()
    assert enqueued["attempts"] == []


# --- interval -----------------------------------------------------------------------------------


def test_trigger_fire__interval_slots_aligned_to_unix_epoch_by_default(workflow):
    """Without anchor_at interval slots are whole intervals since the epoch; other instants are no slot."""
    trigger = create(workflow, kind="interval", cron="", interval_seconds=900, now=at(12, 7))
    assert trigger.next_run_at == at(12, 15)
    assert fire(trigger, at(12, 22)) is None
    assert fire(trigger, at(12, 15)) is not None
    assert Trigger.objects.get(pk=trigger.pk).next_run_at == at(12, 30)


def test_trigger_fire__interval_slots_aligned_to_anchor_at(workflow):
    """With anchor_at slots are anchor + k * interval; the epoch-aligned instant is not a slot."""
    anchor = utc(2027, 3, 1, 0, 0, 7)
    trigger = create(workflow, kind="interval", cron="", interval_seconds=600, anchor_at=anchor, now=at(12, 3))
    assert trigger.next_run_at == at(12, 10, 7)
    assert fire(trigger, at(12, 10)) is None
    assert fire(trigger, at(12, 10, 7)) is not None
    assert Trigger.objects.get(pk=trigger.pk).next_run_at == at(12, 20, 7)
    assert fire_task(trigger).interval.every == 600


def test_trigger_create__interval_minimum_setting_enforced(workflow, settings):
    """An interval under SCHEDULER_MIN_INTERVAL_SECONDS is refused on create and on update."""
    settings.SCHEDULER_MIN_INTERVAL_SECONDS = 60
    with pytest.raises(ValidationError) as excinfo:
        create(workflow, kind="interval", cron="", interval_seconds=59)
    assert "interval_seconds" in excinfo.value.message_dict
    trigger = create(workflow, kind="interval", cron="", interval_seconds=60)
    with pytest.raises(ValidationError) as excinfo:
        services.trigger_update(trigger=trigger, interval_seconds=30, now=NOW)
    assert "interval_seconds" in excinfo.value.message_dict
    assert Trigger.objects.get(pk=trigger.pk).interval_seconds == 60


# --- bounds: start_at, end_at, max_runs ---------------------------------------------------------


def test_trigger_fire__no_slot_before_start_at(workflow):
    """Slots before start_at never run; the first slot is the first at or after start_at."""
    trigger = create(workflow, cron="0 9 * * *", start_at=utc(2027, 3, 12, 8))
    assert trigger.next_run_at == utc(2027, 3, 12, 9)
    assert fire(trigger, utc(2027, 3, 11, 9)) is None
    assert not Execution.objects.exists()
    assert fire(trigger, utc(2027, 3, 12, 9)) is not None


def test_trigger_create__interval_start_at_keeps_anchor_alignment(workflow):
    """An interval trigger with start_at starts at the first anchored slot at or after it."""
    trigger = create(workflow, kind="interval", cron="", interval_seconds=900, start_at=at(14, 5))
    assert trigger.next_run_at == at(14, 15)


def test_trigger_fire__reaching_end_at_completes_trigger_and_disables_task(workflow):
    """The last slot before end_at completes the trigger and disables its task; later slots never run."""
    trigger = create(workflow, cron="0 9 * * *", overlap="allow", end_at=utc(2027, 3, 12, 10))
    assert fire(trigger, utc(2027, 3, 11, 9)) is not None
    trigger.refresh_from_db()
    assert (trigger.status, trigger.next_run_at) == (TriggerStatus.ACTIVE, utc(2027, 3, 12, 9))
    assert fire_task(trigger).enabled
    assert fire(trigger, utc(2027, 3, 12, 9)) is not None
    trigger.refresh_from_db()
    assert trigger.status == TriggerStatus.COMPLETED
    assert trigger.completed_at == utc(2027, 3, 12, 9)
    assert trigger.next_run_at is None
    assert not fire_task(trigger).enabled
    assert fire(trigger, utc(2027, 3, 13, 9)) is None
    assert trigger.executions.count() == 2


def test_trigger_fire__max_runs_counts_only_scheduled_runs(workflow, enqueued):
    """run_count/runs_remaining count scheduled runs only (not run now, backfill or skipped slots); reaching
    max_runs completes the trigger."""
    window = {"ranges": [["00:00", "14:00"], ["15:00", "24:00"]]}
    trigger = create(workflow, max_runs=2, overlap="allow", execution_window=window)
    assert (trigger.run_count, trigger.runs_remaining) == (0, 2)
    fire(trigger, at(13))
    trigger.refresh_from_db()
    assert (trigger.run_count, trigger.runs_remaining) == (1, 1)
    fire(trigger, at(14))  # outside the window: skipped
    services.trigger_run_now(trigger=trigger, inputs={"x": 1}, now=at(14, 1))
    services.trigger_backfill(trigger=trigger, start=at(9), end=at(11), overlap="allow", now=at(14, 2))
    trigger.refresh_from_db()
    assert slot_of(trigger, at(14)).skip_reason == SkipReason.OUTSIDE_WINDOW
    assert (trigger.run_count, trigger.runs_remaining, trigger.status) == (1, 1, TriggerStatus.ACTIVE)
    assert trigger.next_run_at == at(15)
    fire(trigger, at(15))
    trigger.refresh_from_db()
    assert (trigger.run_count, trigger.runs_remaining) == (2, 0)
    assert trigger.status == TriggerStatus.COMPLETED and trigger.next_run_at is None
    assert not fire_task(trigger).enabled
    assert fire(trigger, at(16)) is None


# --- jitter -------------------------------------------------------------------------------------


def test_trigger_fire__jitter_delays_due_at_and_keeps_slot(workflow, enqueued, monkeypatch):
    """A jittered slot keeps scheduled_for, waits until slot + jitter (sent with that countdown), then starts."""
    drawn = []

    def uniform(low, high):
        drawn.append((low, high))
        return 42.5

    monkeypatch.setattr(dispatch.random, "uniform", uniform)
    trigger = create(workflow, jitter_seconds=60)
    assert fire(trigger, at(13)) is None
    execution = slot_of(trigger, at(13))
    assert drawn == [(0, 60)]
    assert execution.status == ExecutionStatus.QUEUED
    assert execution.scheduled_for == at(13)
    assert execution.jitter_seconds == 42.5
    assert execution.due_at == at(13, 0, 42) + timedelta(milliseconds=500)
    assert execution.wait_reason == "jitter"
    assert enqueued["attempts"] == [Message(str(execution.pk), 1, 42.5, "normal")]
    assert claim(execution, at(13, 0, 42)) is None
    claimed = claim(execution, execution.due_at)
    assert claimed is not None and claimed.status == ExecutionStatus.RUNNING
    assert Trigger.objects.get(pk=trigger.pk).run_count == 1


def test_trigger_fire__jitter_drawn_within_zero_to_n_seconds(workflow, enqueued):
    """With the module's random seeded, every slot's jitter lies in 0..N and they differ."""
    random.seed(20270310)
    trigger = create(workflow, kind="interval", cron="", interval_seconds=60, jitter_seconds=30, overlap="allow")
    for minute in range(1, 21):
        fire(trigger, at(12, minute))
    jitters = list(trigger.executions.values_list("scheduled_for", "jitter_seconds", "due_at"))
    assert len(jitters) == 20
    for slot, jitter, due in jitters:
        assert 0 <= jitter <= 30
        assert due == slot + timedelta(seconds=jitter)
    assert len({jitter for _, jitter, _ in jitters}) > 10


# --- execution windows --------------------------------------------------------------------------

WEEKDAY_OFFICE_HOURS = {"days": [1, 2, 3, 4, 5], "ranges": [["09:00", "17:00"]]}


@pytest.mark.parametrize(
    ("slot", "runs"),
    [
        pytest.param(utc(2027, 3, 10, 17), True, id="wed-09:00-PST"),
        pytest.param(utc(2027, 3, 11, 0), True, id="wed-16:00-PST-is-thu-UTC"),
        pytest.param(utc(2027, 3, 11, 1), False, id="wed-17:00-PST-end-excluded"),
        pytest.param(utc(2027, 3, 10, 16), False, id="wed-08:00-PST"),
        pytest.param(utc(2027, 3, 13, 18), False, id="sat-10:00-PST"),
        pytest.param(utc(2027, 3, 14, 17), False, id="sun-10:00-PDT-day-0"),
        pytest.param(utc(2027, 3, 15, 16), True, id="mon-09:00-PDT-after-dst"),
        pytest.param(utc(2027, 3, 15, 9), False, id="mon-09:00-UTC-is-02:00-PDT"),
    ],
)
def test_trigger_fire__slot_outside_window_skipped_in_trigger_zone(workflow, enqueued, slot, runs):
    """Windows are days (0=Sunday) and local time ranges in the trigger's zone; a slot outside is skipped."""
    trigger = create(
        workflow, timezone_name=LA, execution_window=WEEKDAY_OFFICE_HOURS, now=slot - timedelta(minutes=30)
    )
    started = fire(trigger, slot)
    execution = slot_of(trigger, slot)
    trigger.refresh_from_db()
    if runs:
        assert started is not None and execution.status == ExecutionStatus.RUNNING
        assert trigger.run_count == 1
    else:
        assert started is None
        assert (execution.status, execution.skip_reason) == (ExecutionStatus.SKIPPED, "outside_window")
        assert execution.attempts == 0
        assert trigger.run_count == 0


# --- catch-up -----------------------------------------------------------------------------------


def test_trigger_fire__catchup_skip_records_missed_and_runs_slot_on_time(workflow):
    """catchup=skip: the slots beat missed are recorded skipped (missed); the slot fired on time runs."""
    trigger = create(workflow, catchup="skip")
    started = fire(trigger, at(17), now=at(17, 0, 10))
    assert started is not None and started.origin == ExecutionOrigin.SCHEDULE
    assert by_status(trigger) == {"skipped:missed": [at(13), at(14), at(15), at(16)], "running": [at(17)]}
    assert set(trigger.executions.filter(skip_reason="missed").values_list("origin", flat=True)) == {"catchup"}


@pytest.mark.parametrize(("grace", "runs"), [(60, False), (300, True)])
def test_trigger_fire__catchup_skip_slot_later_than_misfire_grace_is_missed(workflow, settings, grace, runs):
    """catchup=skip: a slot fired more than SCHEDULER_MISFIRE_GRACE_SECONDS late is itself missed."""
    settings.SCHEDULER_MISFIRE_GRACE_SECONDS = grace
    trigger = create(workflow, catchup="skip")
    started = fire(trigger, at(17), now=at(17, 2))
    missed = [at(13), at(14), at(15), at(16)]
    if runs:
        assert started is not None
        assert by_status(trigger) == {"skipped:missed": missed, "running": [at(17)]}
    else:
        assert started is None
        assert by_status(trigger) == {"skipped:missed": [*missed, at(17)]}
    assert Trigger.objects.get(pk=trigger.pk).run_count == (1 if runs else 0)


def test_trigger_fire__catchup_latest_is_default_and_runs_latest_slot_once(workflow):
    """catchup=latest (the default): the latest slot runs once, even late; earlier missed slots are skipped."""
    trigger = create(workflow)
    assert trigger.catchup == "latest"
    started = fire(trigger, at(17), now=at(17, 30))
    assert started is not None and started.scheduled_for == at(17)
    assert by_status(trigger) == {"skipped:missed": [at(13), at(14), at(15), at(16)], "running": [at(17)]}
    assert Trigger.objects.get(pk=trigger.pk).run_count == 1


def test_trigger_fire__catchup_all_runs_missed_slots_in_window_oldest_first(workflow, enqueued):
    """catchup=all: missed slots within catchup_window_seconds run oldest first (only the oldest starts);
    older ones are recorded missed."""
    trigger = create(workflow, catchup="all", catchup_window_seconds=9000)
    now = at(17, 0, 5)  # the window reaches back to 14:30:05
    started = fire(trigger, at(17), now=now)
    assert started is not None and started.scheduled_for == at(15)
    assert started.origin == ExecutionOrigin.CATCHUP
    assert by_status(trigger) == {
        "skipped:missed": [at(13), at(14)],
        "running": [at(15)],
        "queued": [at(16), at(17)],
    }
    waiting = [slot_of(trigger, at(16)), slot_of(trigger, at(17))]
    assert [execution.wait_reason for execution in waiting] == ["previous", "previous"]
    assert Trigger.objects.get(pk=trigger.pk).run_count == 3


def test_trigger_fire__catchup_all_capped_by_catchup_max_slots(workflow, enqueued, settings):
    """catchup=all runs at most SCHEDULER_CATCHUP_MAX_SLOTS slots (the newest); the rest are recorded missed."""
    settings.SCHEDULER_CATCHUP_MAX_SLOTS = 2
    trigger = create(workflow, catchup="all", catchup_window_seconds=86400)
    fire(trigger, at(17))
    groups = by_status(trigger)
    assert groups["running"] + groups["queued"] == [at(16), at(17)]
    assert groups["skipped:missed"] == [at(15)]
    # Missed slots beyond the cap are not each recorded: the oldest recorded one says so.
    assert slot_of(trigger, at(15)).metadata == {"older_missed_slots_not_recorded": True}


def test_trigger_fire__catchup_all_runs_one_after_another(workflow, enqueued, perform):
    """catchup=all: when the running catch-up slot finishes, the next is woken (a message) and can be claimed."""
    trigger = create(workflow, catchup="all", catchup_window_seconds=86400)
    first = fire(trigger, at(15), now=at(15, 0, 5))
    second, third = slot_of(trigger, at(14)), slot_of(trigger, at(15))
    assert first.scheduled_for == at(13)
    for waiting in (second, third):
        assert claim(waiting, at(15, 0, 6)) is None
    enqueued["attempts"].clear()

    assert perform(first, ok(), now=at(15, 0, 10)).status == ExecutionStatus.SUCCEEDED
    assert enqueued["attempts"] == [Message(str(second.pk), 1, None, "normal")]
    assert claim(third, at(15, 0, 11)) is None  # still behind the second
    assert claim(second, at(15, 0, 11)) is not None
    enqueued["attempts"].clear()

    perform(second, ok(), now=at(15, 0, 20))
    assert enqueued["attempts"] == [Message(str(third.pk), 1, None, "normal")]
    assert claim(third, at(15, 0, 21)) is not None
    assert by_status(trigger) == {"succeeded": [at(13), at(14)], "running": [at(15)]}


def test_trigger_fire__catchup_all_slots_beyond_max_runs_recorded_missed(workflow, enqueued):
    """catchup=all with fewer runs left than missed slots: the newest run, the others are recorded missed."""
    trigger = create(workflow, catchup="all", catchup_window_seconds=86400, max_runs=2)
    fire(trigger, at(16))
    assert by_status(trigger) == {"skipped:missed": [at(13), at(14)], "running": [at(15)], "queued": [at(16)]}
    trigger.refresh_from_db()
    assert (trigger.run_count, trigger.status) == (2, TriggerStatus.COMPLETED)


def test_trigger_fire__catchup_all_runs_every_missed_slot_while_max_runs_has_room(workflow, enqueued):
    """catchup=all with more runs left than slots due: every slot runs, none is recorded missed."""
    trigger = create(workflow, catchup="all", catchup_window_seconds=86400, max_runs=10)
    fire(trigger, at(16))
    assert by_status(trigger) == {"running": [at(13)], "queued": [at(14), at(15), at(16)]}
    trigger.refresh_from_db()
    assert (trigger.run_count, trigger.status) == (4, TriggerStatus.ACTIVE)


@pytest.mark.parametrize("catchup", ["skip", "latest", "all"])
def test_trigger_resume__slots_of_the_pause_never_run(workflow, enqueued, catchup):
    """After a pause, resuming never creates executions for the paused slots, under every catch-up policy."""
    trigger = create(workflow, catchup=catchup, catchup_window_seconds=86400)
    services.trigger_pause(trigger=trigger, now=at(12, 30))
    services.trigger_resume(trigger=trigger, now=at(16, 30))
    assert dispatch.executions_recover(now=at(16, 31)).slots == 0
    assert fire(trigger, at(15), now=at(16, 32)) is None  # a paused slot's message, delivered late
    fire(trigger, at(19), now=at(19, 0, 5))  # beat was down after the resume too
    slots = sorted(trigger.executions.values_list("scheduled_for", flat=True))
    assert slots == [at(17), at(18), at(19)]


def test_trigger_update__reenabling_never_runs_slots_of_the_pause(workflow, enqueued):
    """Disabling then re-enabling through trigger_update also leaves the slots in between unrun."""
    trigger = create(workflow, catchup="all", catchup_window_seconds=86400)
    services.trigger_update(trigger=trigger, enabled=False, now=at(12, 30))
    services.trigger_update(trigger=trigger, enabled=True, now=at(16, 30))
    fire(trigger, at(18), now=at(18, 0, 5))
    assert sorted(trigger.executions.values_list("scheduled_for", flat=True)) == [at(17), at(18)]


def test_trigger_fire__catchup_latest_stale_messages_run_only_latest_slot(workflow, enqueued):
    """Workers down while beat kept sending: of the slots' late messages, only the latest slot runs."""
    trigger = create(workflow, overlap="allow")
    for slot in (at(13), at(14), at(15)):
        fire(trigger, slot, now=at(15, 30))
    groups = by_status(trigger)
    assert groups.get("skipped:missed") == [at(13), at(14)]
    assert groups.get("running") == [at(15)]


def test_trigger_fire__catchup_all_stale_messages_respect_window_and_run_in_turn(workflow, enqueued):
    """Workers down while beat kept sending: slots older than the catch-up window are missed, the rest queue."""
    trigger = create(workflow, catchup="all", catchup_window_seconds=5400)  # back to 14:00 at 15:30
    for slot in (at(13), at(14), at(15)):
        fire(trigger, slot, now=at(15, 30))
    groups = by_status(trigger)
    assert groups.get("skipped:missed") == [at(13)]
    assert groups.get("running", []) + groups.get("queued", []) == [at(14), at(15)]


# --- overlap ------------------------------------------------------------------------------------


def test_trigger_fire__overlap_skip_records_skipped_while_previous_runs(workflow, enqueued):
    """overlap=skip (the default): a slot due while the previous execution runs is recorded skipped (overlap)."""
    trigger = create(workflow)
    assert trigger.overlap == "skip"
    fire(trigger, at(13))
    assert fire(trigger, at(14)) is None
    assert by_status(trigger) == {"running": [at(13)], "skipped:overlap": [at(14)]}
    assert Trigger.objects.get(pk=trigger.pk).run_count == 1
    assert enqueued["attempts"] == []


def test_trigger_fire__overlap_buffer_one_runs_next_after_current_and_skips_third(workflow, enqueued, perform):
    """overlap=buffer_one: one slot waits and runs right after the current one; a third is skipped."""
    trigger = create(workflow, overlap="buffer_one")
    current = fire(trigger, at(13))
    assert fire(trigger, at(14)) is None
    waiting = slot_of(trigger, at(14))
    assert (waiting.status, waiting.wait_reason) == (ExecutionStatus.QUEUED, "previous")
    assert claim(waiting, at(14, 0, 1)) is None
    assert fire(trigger, at(15)) is None
    assert slot_of(trigger, at(15)).skip_reason == SkipReason.OVERLAP
    enqueued["attempts"].clear()

    perform(current, ok(), now=at(15, 0, 30))
    assert enqueued["attempts"] == [Message(str(waiting.pk), 1, None, "normal")]
    assert claim(waiting, at(15, 0, 31)).status == ExecutionStatus.RUNNING


def test_trigger_fire__overlap_allow_runs_alongside(workflow, enqueued):
    """overlap=allow: a slot starts while the previous execution still runs."""
    trigger = create(workflow, overlap="allow")
    assert fire(trigger, at(13)) is not None
    assert fire(trigger, at(14)) is not None
    assert by_status(trigger) == {"running": [at(13), at(14)]}


# --- concurrency --------------------------------------------------------------------------------


def test_execution_claim__workflow_max_concurrency_across_triggers_waits_and_starts_in_order(user, enqueued, perform):
    """Over Workflow.max_concurrency (all its triggers) executions stay queued (concurrency) and start in order."""
    workflow = WorkflowFactory(owner=user, max_concurrency=1)
    first, second, third = (create(workflow, name=f"Report {n}") for n in range(3))
    running = fire(first, at(13))
    assert fire(second, at(13), now=at(13, 0, 1)) is None
    assert fire(third, at(13), now=at(13, 0, 2)) is None
    b, c = slot_of(second, at(13)), slot_of(third, at(13))
    for execution in (b, c):
        execution.refresh_from_db()
        assert (execution.status, execution.wait_reason) == (ExecutionStatus.QUEUED, "concurrency")
        assert claim(execution, at(13, 0, 3)) is None
    enqueued["attempts"].clear()

    perform(running, ok(), now=at(13, 0, 10))
    assert enqueued["attempts"] == [Message(str(b.pk), 1, None, "normal")]
    assert claim(b, at(13, 0, 11)).status == ExecutionStatus.RUNNING
    assert claim(c, at(13, 0, 12)) is None
    enqueued["attempts"].clear()

    perform(b, ok(), now=at(13, 0, 20))
    assert enqueued["attempts"] == [Message(str(c.pk), 1, None, "normal")]
    assert claim(c, at(13, 0, 21)).status == ExecutionStatus.RUNNING


def test_execution_claim__owner_max_concurrency_waits_then_starts(user, enqueued, perform, settings):
    """Over SCHEDULER_OWNER_MAX_CONCURRENCY an owner's executions wait (owner_concurrency); others are unaffected."""
    settings.SCHEDULER_OWNER_MAX_CONCURRENCY = 1
    mine = create(WorkflowFactory(owner=user), name="Mine A")
    also_mine = create(WorkflowFactory(owner=user), name="Mine B")
    theirs = create(WorkflowFactory(owner=UserFactory()), name="Theirs")
    running = fire(mine, at(13))
    assert fire(also_mine, at(13)) is None
    waiting = slot_of(also_mine, at(13))
    assert (waiting.status, waiting.wait_reason) == (ExecutionStatus.QUEUED, "owner_concurrency")
    assert fire(theirs, at(13)) is not None
    assert claim(waiting, at(13, 0, 1)) is None
    enqueued["attempts"].clear()

    perform(running, ok(), now=at(13, 0, 10))
    assert enqueued["attempts"] == [Message(str(waiting.pk), 1, None, "normal")]
    assert claim(waiting, at(13, 0, 11)).status == ExecutionStatus.RUNNING


# --- retry policy -------------------------------------------------------------------------------


def test_trigger_create__retry_policy_defaults_copied_from_workflow(user):
    """Retry settings left out are copied from the workflow at creation; given ones are kept."""
    workflow = WorkflowFactory(
        owner=user,
        max_attempts=7,
        min_backoff_seconds=3,
        max_backoff_seconds=100,
        max_doublings=2,
        max_retry_duration_seconds=600,
    )
    inherited = create(workflow, name="Inherited")
    own = create(workflow, name="Own", max_attempts=2, min_backoff_seconds=None)
    fields = (
        "max_attempts",
        "min_backoff_seconds",
        "max_backoff_seconds",
        "max_doublings",
        "max_retry_duration_seconds",
    )
    assert [getattr(inherited, name) for name in fields] == [7, 3, 100, 2, 600]
    assert [getattr(own, name) for name in fields] == [2, 3, 100, 2, 600]
    workflow.max_attempts = 9
    workflow.save()
    assert Trigger.objects.get(pk=inherited.pk).max_attempts == 7


def test_backoff_interval__matches_cloud_scheduler_example():
    """min 10 s, max 300 s, 3 doublings: 10, 20, 40, 80, 160, 240, 300, 300 (Cloud Scheduler's RetryConfig)."""
    intervals = [
        dispatch.backoff_interval(retry=n, min_backoff=10, max_backoff=300, max_doublings=3) for n in range(1, 9)
    ]
    assert intervals == [10, 20, 40, 80, 160, 240, 300, 300]


class _Edge:
    """An rng whose uniform() answers the low or the high end of the band."""

    def __init__(self, high: bool) -> None:
        self.high = high

    def uniform(self, low: float, high: float) -> float:
        return high if self.high else low


def test_backoff_seconds__full_jitter_bands_never_shrink():
    """Attempt n waits within [interval n, interval n+1]: each band starts where the previous one ends."""
    policy = {"min_backoff": 10, "max_backoff": 300, "max_doublings": 3}
    lows = [dispatch.backoff_seconds(attempt=n, rng=_Edge(False), **policy) for n in range(1, 10)]
    highs = [dispatch.backoff_seconds(attempt=n, rng=_Edge(True), **policy) for n in range(1, 10)]
    assert lows == [10, 20, 40, 80, 160, 240, 300, 300, 300]
    assert highs == [20, 40, 80, 160, 240, 300, 300, 300, 300]
    assert all(lows[n + 1] >= highs[n] for n in range(8))
    rng = random.Random(3)
    for _ in range(20):
        waits = [dispatch.backoff_seconds(attempt=n, rng=rng, **policy) for n in range(1, 10)]
        assert waits == sorted(waits)
        assert all(low <= wait <= high for low, wait, high in zip(lows, waits, highs, strict=True))


def test_execution_perform__max_retry_duration_stops_retrying(workflow, enqueued, perform):
    """Once the next retry would fall past max_retry_duration_seconds since the first attempt, it fails."""
    trigger = create(
        workflow, max_attempts=10, min_backoff_seconds=10, max_backoff_seconds=10, max_retry_duration_seconds=30
    )
    execution = fire(trigger, at(13))
    outcome = perform(execution, unavailable(), now=at(13, 0, 1))  # next try at 13:00:11, 11 s in
    assert (outcome.status, outcome.retry_in_seconds) == (ExecutionStatus.RETRYING, 10)
    perform(claim(execution, at(13, 0, 11), attempt=2), unavailable(), now=at(13, 0, 12))
    outcome = perform(claim(execution, at(13, 0, 22), attempt=3), unavailable(), now=at(13, 0, 23))
    assert outcome.status == ExecutionStatus.FAILED  # a retry at 13:00:33 would be 33 s in
    execution.refresh_from_db()
    assert (execution.status, execution.attempts) == (ExecutionStatus.FAILED, 3)
    assert "max_retry_duration_seconds=30" in execution.error
    assert execution.finished_at == at(13, 0, 23)


@pytest.mark.parametrize(("retry_after", "wait"), [(120, 120), (5000, 300)])
def test_execution_perform__retry_after_honoured_within_max_backoff(workflow, enqueued, perform, retry_after, wait):
    """A Retry-After longer than the backoff sets the wait, capped at max_backoff_seconds."""
    trigger = create(workflow, min_backoff_seconds=5, max_backoff_seconds=300)
    execution = fire(trigger, at(13))
    outcome = perform(execution, unavailable(retry_after=retry_after), now=at(13, 0, 1))
    assert outcome.retry_in_seconds == wait
    execution.refresh_from_db()
    assert execution.next_attempt_at == at(13, 0, 1) + timedelta(seconds=wait)


def test_execution_perform__long_wait_held_in_database_until_recovery(workflow, enqueued, perform, settings):
    """A wait over SCHEDULER_COUNTDOWN_MAX_SECONDS is not sent to the broker; recovery sends it once due."""
    settings.SCHEDULER_COUNTDOWN_MAX_SECONDS = 60
    trigger = create(workflow, min_backoff_seconds=120, max_backoff_seconds=300)
    execution = fire(trigger, at(13))
    outcome = perform(execution, unavailable(), now=at(13, 0, 1))
    assert outcome.status == ExecutionStatus.RETRYING and outcome.retry_in_seconds >= 120
    execution.refresh_from_db()
    due = execution.next_attempt_at
    assert due == at(13, 0, 1) + timedelta(seconds=outcome.retry_in_seconds)
    assert execution.lease_expires_at == due
    assert enqueued["attempts"] == []
    assert dispatch.executions_recover(now=due - timedelta(seconds=1)).executions == 0
    assert enqueued["attempts"] == []
    assert dispatch.executions_recover(now=due).executions == 1
    assert enqueued["attempts"] == [Message(str(execution.pk), 2, None, "normal")]
    assert claim(execution, due, attempt=2).attempts == 2


def test_execution_perform__short_wait_sent_with_countdown(workflow, enqueued, perform):
    """A wait under SCHEDULER_COUNTDOWN_MAX_SECONDS rides in the broker as a countdown; the lease covers it."""
    trigger = create(workflow, min_backoff_seconds=5, max_backoff_seconds=10)
    execution = fire(trigger, at(13))
    outcome = perform(execution, unavailable(), now=at(13, 0, 1))
    assert 5 <= outcome.retry_in_seconds <= 10
    assert enqueued["attempts"] == [Message(str(execution.pk), 2, pytest.approx(outcome.retry_in_seconds), "normal")]
    execution.refresh_from_db()
    assert execution.lease_expires_at == execution.next_attempt_at + GRACE


# --- failure handling ---------------------------------------------------------------------------


def test_execution_perform__consecutive_failures_count_final_failures_only(workflow, enqueued, perform):
    """A retried attempt and skipped slots do not count; each final failure does."""
    trigger = create(workflow, max_attempts=2)
    execution = fire(trigger, at(13))
    perform(execution, unavailable(), now=at(13, 0, 1))
    assert Trigger.objects.get(pk=trigger.pk).consecutive_failures == 0
    perform(claim(execution, at(13, 0, 30), attempt=2), unavailable(), now=at(13, 0, 31))
    assert Trigger.objects.get(pk=trigger.pk).consecutive_failures == 1
    later = fire(trigger, at(15), now=at(15, 0, 5))  # 14:00 recorded missed
    assert slot_of(trigger, at(14)).skip_reason == SkipReason.MISSED
    assert Trigger.objects.get(pk=trigger.pk).consecutive_failures == 1
    perform(later, rejected(), now=at(15, 0, 6))
    assert Trigger.objects.get(pk=trigger.pk).consecutive_failures == 2


def test_execution_perform__pause_after_failures_pauses_trigger_and_disables_task(
    workflow, enqueued, perform, monkeypatch, django_capture_on_commit_callbacks
):
    """pause_after_failures=N: the N-th final failure in a row pauses the trigger with a reason and notifies."""
    notified = []
    monkeypatch.setattr(tasks.notify_trigger_event, "apply_async", lambda **kw: notified.append(kw))
    trigger = create(workflow, overlap="allow", pause_after_failures=2, notify_emails="ops@example.com")
    with django_capture_on_commit_callbacks(execute=True):
        perform(fire(trigger, at(13)), rejected(), now=at(13, 0, 1))
    trigger.refresh_from_db()
    assert (trigger.status, trigger.consecutive_failures) == (TriggerStatus.ACTIVE, 1)
    with django_capture_on_commit_callbacks(execute=True):
        second = fire(trigger, at(14))
        perform(second, rejected(), now=at(14, 0, 1))
    trigger.refresh_from_db()
    assert trigger.status == TriggerStatus.PAUSED and not trigger.enabled
    assert trigger.paused_at == at(14, 0, 1) and trigger.paused_by is None
    assert "2 failed executions in a row" in trigger.pause_reason
    assert not fire_task(trigger).enabled
    assert [call["kwargs"]["event"] for call in notified] == ["failed", "failed", "auto_paused"]
    assert notified[-1] == {
        "kwargs": {"trigger_id": trigger.pk, "event": "auto_paused", "execution_id": str(second.pk), "detail": {}},
        "queue": "high",
    }
    assert fire(trigger, at(15)) is None


def test_execution_perform__notifications_enqueued_only_on_commit(
    workflow, enqueued, perform, monkeypatch, django_capture_on_commit_callbacks
):
    """failed and recovered notifications are sent to the broker only once the transaction commits."""
    notified = []
    monkeypatch.setattr(tasks.notify_trigger_event, "apply_async", lambda **kw: notified.append(kw))
    trigger = create(workflow, overlap="allow", notify_webhook_url="http://127.0.0.1:9/hook")
    with django_capture_on_commit_callbacks() as callbacks:
        failed = fire(trigger, at(13))
        perform(failed, rejected(), now=at(13, 0, 1))
    assert notified == []
    for callback in callbacks:
        callback()
    assert [call["kwargs"]["event"] for call in notified] == ["failed"]
    with django_capture_on_commit_callbacks(execute=True):
        recovered = fire(trigger, at(14))
        perform(recovered, ok(), now=at(14, 0, 1))
    assert notified[-1]["kwargs"] == {
        "trigger_id": trigger.pk,
        "event": "recovered",
        "execution_id": str(recovered.pk),
        "detail": {"after_failures": 1},
    }
    assert Trigger.objects.get(pk=trigger.pk).consecutive_failures == 0


def test_execution_perform__no_notification_without_targets(
    workflow, enqueued, perform, monkeypatch, django_capture_on_commit_callbacks
):
    """A trigger without notify_emails or notify_webhook_url sends no notification task."""
    notified = []
    monkeypatch.setattr(tasks.notify_trigger_event, "apply_async", lambda **kw: notified.append(kw))
    trigger = create(workflow)
    with django_capture_on_commit_callbacks(execute=True):
        perform(fire(trigger, at(13)), rejected(), now=at(13, 0, 1))
    assert notified == []
    assert Trigger.objects.get(pk=trigger.pk).consecutive_failures == 1


def test_execution_perform__success_after_failures_resets_counter(workflow, enqueued, perform):
    """A success after final failures sets consecutive_failures back to 0."""
    trigger = create(workflow, overlap="allow")
    perform(fire(trigger, at(13)), rejected(), now=at(13, 0, 1))
    perform(fire(trigger, at(14)), rejected(), now=at(14, 0, 1))
    assert Trigger.objects.get(pk=trigger.pk).consecutive_failures == 2
    perform(fire(trigger, at(15)), ok(), now=at(15, 0, 1))
    assert Trigger.objects.get(pk=trigger.pk).consecutive_failures == 0


def test_notifications_send__emails_every_recipient(workflow, enqueued, perform):
    """send() e-mails each notify_emails address (Django's mail backend) with the event's subject."""
    trigger = create(workflow, notify_emails="ops@example.com, oncall@example.com", pause_after_failures=1)
    execution = fire(trigger, at(13))
    perform(execution, rejected(), now=at(13, 0, 1))
    trigger.refresh_from_db()
    outcome = notifications.send(trigger, "auto_paused", Execution.objects.get(pk=execution.pk), {})
    assert outcome == {"email": "sent"}
    (message,) = mail.outbox
    assert message.subject == "Trigger 'Hourly report' paused after repeated failures"
    assert message.to == ["ops@example.com", "oncall@example.com"]
    assert "event: auto_paused" in message.body
    assert "paused automatically after 1 failed" in message.body


class _HookHandler(BaseHTTPRequestHandler):
    received: list[dict]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.received.append({"headers": dict(self.headers.items()), "body": body})
        self.send_response(204)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def hook_server():
    """A tiny HTTP server on 127.0.0.1 that records what it is sent."""
    received: list[dict] = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), type("Handler", (_HookHandler,), {"received": received}))
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_port}/hook", received
    httpd.shutdown()
    httpd.server_close()
    with contextlib.suppress(RuntimeError):
        thread.join(timeout=2)


def test_notifications_send__webhook_signed_with_standard_webhooks(workflow, enqueued, perform, hook_server):
    """send() POSTs the event as JSON signed with the workflow's secret (Standard Webhooks)."""
    url, received = hook_server
    trigger = create(workflow, notify_webhook_url=url)
    execution = fire(trigger, at(13))
    perform(execution, rejected(), now=at(13, 0, 1))
    trigger.refresh_from_db()
    outcome = notifications.send(trigger, "failed", Execution.objects.get(pk=execution.pk), {})
    assert outcome == {"webhook": "sent"}
    (request,) = received
    payload = Webhook(workflow.secret).verify(request["body"], request["headers"])
    assert payload["event"] == "failed"
    assert payload["trigger"] == {"id": trigger.pk, "name": "Hourly report", "status": "active"}
    assert payload["execution"]["id"] == str(execution.pk)
    assert payload["execution"]["http_status"] == 404
    assert payload["consecutive_failures"] == 1
    with pytest.raises(WebhookVerificationError):
        Webhook(WorkflowFactory(owner=workflow.owner).secret).verify(request["body"], request["headers"])


def test_execution_perform__final_failure_spawns_fallback_execution(user, enqueued, perform):
    """A final failure queues the fallback workflow for the same slot and inputs (origin fallback, fallback_of)."""
    workflow = WorkflowFactory(owner=user, default_inputs={"region": "us"})
    backup = WorkflowFactory(owner=user)
    trigger = create(workflow, inputs={"report": "weekly"}, fallback_workflow=backup)
    execution = fire(trigger, at(13))
    perform(execution, rejected(), now=at(13, 0, 1))
    fallback = Execution.objects.get(fallback_of=execution)
    assert fallback.origin == ExecutionOrigin.FALLBACK
    assert fallback.workflow == backup and fallback.trigger == trigger
    assert fallback.scheduled_for == execution.scheduled_for == at(13)
    assert fallback.inputs == {"region": "us", "report": "weekly"}
    assert fallback.status == ExecutionStatus.QUEUED
    assert messages_for(enqueued, fallback) == [Message(str(fallback.pk), 1, None, "normal")]
    assert trigger.executions.filter(scheduled_for=at(13)).count() == 2
    assert Trigger.objects.get(pk=trigger.pk).consecutive_failures == 1


def test_execution_perform__failed_fallback_spawns_nothing_and_is_not_counted(user, enqueued, perform):
    """A failed fallback execution spawns no further fallback and leaves consecutive_failures alone."""
    workflow = WorkflowFactory(owner=user)
    trigger = create(workflow, fallback_workflow=WorkflowFactory(owner=user))
    perform(fire(trigger, at(13)), rejected(), now=at(13, 0, 1))
    fallback = Execution.objects.get(origin=ExecutionOrigin.FALLBACK)
    claimed = claim(fallback, at(13, 0, 2))
    assert claimed is not None
    assert perform(claimed, rejected(), now=at(13, 0, 3)).status == ExecutionStatus.FAILED
    assert Execution.objects.count() == 2
    assert Trigger.objects.get(pk=trigger.pk).consecutive_failures == 1


# --- priority -----------------------------------------------------------------------------------


@pytest.mark.parametrize("priority", ["high", "normal", "low"])
def test_trigger_priority__messages_and_periodic_task_use_its_queue(
    workflow, priority, monkeypatch, django_capture_on_commit_callbacks
):
    """Beat's PeriodicTask and every run_execution message (run now, a fire, recovery's re-sends and the
    slots it dispatches) go to the trigger's priority queue."""
    sent = []
    real = dispatch.publish

    def spy(attempts, **kwargs):
        sent.extend(attempt.queue for attempt in attempts)
        return real(attempts, **kwargs)

    monkeypatch.setattr(dispatch, "publish", spy)
    monkeypatch.setattr(dispatch, "broker_queue_depth", lambda queue: 0)
    trigger = create(workflow, priority=priority, jitter_seconds=30, overlap="allow")
    assert fire_task(trigger).queue == priority
    with django_capture_on_commit_callbacks(execute=True):
        services.trigger_run_now(trigger=trigger, now=at(12, 5))
        fire(trigger, at(13))  # jittered: sent with a countdown
        report = dispatch.executions_recover(now=at(16))  # re-sends both, and dispatches 16:00 (14:00 overdue)
    assert (report.executions, report.slots) == (2, 1)
    assert len(sent) == 5 and set(sent) == {priority}


def test_trigger_update__priority_change_moves_periodic_task_queue(workflow):
    """Changing a trigger's priority changes its PeriodicTask's queue."""
    trigger = create(workflow)
    assert fire_task(trigger).queue == "normal"
    services.trigger_update(trigger=trigger, priority="high", now=NOW)
    assert fire_task(trigger).queue == "high"


# --- operations ---------------------------------------------------------------------------------


def test_trigger_pause__records_who_when_why_and_resume_clears_them(workflow, user):
    """Pausing records paused_by, paused_at and the reason; resuming clears all three."""
    trigger = create(workflow)
    paused = services.trigger_pause(trigger=trigger, reason="endpoint migration", by=user, now=at(12, 30))
    stored = Trigger.objects.get(pk=trigger.pk)
    assert (stored.paused_by, stored.paused_at, stored.pause_reason) == (user, at(12, 30), "endpoint migration")
    assert paused.status == TriggerStatus.PAUSED
    services.trigger_resume(trigger=trigger, now=at(13, 30))
    stored.refresh_from_db()
    assert (stored.paused_by, stored.paused_at, stored.pause_reason) == (None, None, "")
    assert stored.status == TriggerStatus.ACTIVE


def test_trigger_update__reenabling_clears_pause_and_failure_count_like_resume(workflow, user, enqueued, perform):
    """Re-enabling through trigger_update clears paused_by and the failure count, as trigger_resume does."""
    trigger = create(workflow, overlap="allow", pause_after_failures=2)
    perform(fire(trigger, at(13)), rejected(), now=at(13, 0, 1))
    perform(fire(trigger, at(14)), rejected(), now=at(14, 0, 1))
    trigger.refresh_from_db()
    assert not trigger.enabled and trigger.consecutive_failures == 2
    services.trigger_update(trigger=trigger, enabled=True, now=at(14, 30))
    trigger.refresh_from_db()
    assert (trigger.enabled, trigger.pause_reason, trigger.paused_at) == (True, "", None)
    assert trigger.consecutive_failures == 0
    perform(fire(trigger, at(15)), rejected(), now=at(15, 0, 1))  # one failure does not pause it again
    assert Trigger.objects.get(pk=trigger.pk).enabled

    services.trigger_pause(trigger=trigger, reason="maintenance", by=user, now=at(15, 30))
    services.trigger_update(trigger=trigger, enabled=True, now=at(15, 40))
    assert Trigger.objects.get(pk=trigger.pk).paused_by is None


def test_trigger_run_now__manual_with_overrides_does_not_move_schedule_or_count(user, enqueued, perform):
    """Run now records a manual execution with input overrides; next_run_at and max_runs are untouched."""
    workflow = WorkflowFactory(owner=user, default_inputs={"region": "us", "report": "daily"})
    trigger = create(workflow, inputs={"report": "weekly"}, max_runs=1)
    execution = services.trigger_run_now(trigger=trigger, inputs={"report": "adhoc"}, now=at(12, 10))
    assert (execution.origin, execution.manual) == (ExecutionOrigin.MANUAL, True)
    assert execution.inputs == {"region": "us", "report": "adhoc"}
    assert execution.metadata == {"input_overrides": {"report": "adhoc"}}
    assert enqueued["attempts"] == [Message(str(execution.pk), 1, None, "normal")]
    stored = Trigger.objects.get(pk=trigger.pk)
    assert (stored.next_run_at, stored.run_count, stored.runs_remaining) == (at(13), 0, 1)
    assert stored.status == TriggerStatus.ACTIVE
    perform(claim(execution, at(12, 10, 1)), ok(), now=at(12, 10, 2))
    assert fire(trigger, at(13)) is not None
    assert Trigger.objects.get(pk=trigger.pk).status == TriggerStatus.COMPLETED


def test_trigger_backfill__more_than_max_slots_rejected_on_end(workflow, enqueued, settings):
    """A range holding more than SCHEDULER_BACKFILL_MAX_SLOTS slots is refused (on end) and creates nothing."""
    settings.SCHEDULER_BACKFILL_MAX_SLOTS = 3
    trigger = create(workflow)
    with pytest.raises(ValidationError) as excinfo:
        services.trigger_backfill(trigger=trigger, start=at(6), end=at(9), now=NOW)
    assert list(excinfo.value.message_dict) == ["end"]
    assert not Execution.objects.exists()
    report = services.trigger_backfill(trigger=trigger, start=at(7), end=at(9), now=NOW)
    assert report.created == 3


def test_trigger_backfill__future_end_rejected(workflow, enqueued):
    """A backfill whose end is in the future is refused: future slots run on schedule."""
    trigger = create(workflow)
    with pytest.raises(ValidationError) as excinfo:
        services.trigger_backfill(trigger=trigger, start=at(9), end=at(13), now=NOW)
    assert "end" in excinfo.value.message_dict
    assert not Execution.objects.exists()


def test_trigger_backfill__existing_slots_deduplicated(workflow, enqueued):
    """Slots that already have an execution are left alone; a repeated backfill creates nothing."""
    trigger = create(workflow, overlap="allow")
    fire(trigger, at(13))
    report = services.trigger_backfill(trigger=trigger, start=at(11), end=at(14), overlap="allow", now=at(14, 30))
    assert (report.created, report.existing, report.skipped) == (3, 1, 0)
    again = services.trigger_backfill(trigger=trigger, start=at(11), end=at(14), overlap="allow", now=at(14, 31))
    assert (again.created, again.existing) == (0, 4)
    assert sorted(trigger.executions.values_list("scheduled_for", flat=True)) == [at(11), at(12), at(13), at(14)]
    backfilled = trigger.executions.exclude(scheduled_for=at(13))
    assert set(backfilled.values_list("origin", flat=True)) == {"backfill"}
    assert Trigger.objects.get(pk=trigger.pk).run_count == 1


def backfill(trigger: Trigger, overlap: str) -> list[Execution]:
    """Backfill 08:00-10:00 at noon; return the three slots' executions, oldest first."""
    services.trigger_backfill(trigger=trigger, start=at(8), end=at(10), overlap=overlap, now=NOW)
    return [slot_of(trigger, at(hour)) for hour in (8, 9, 10)]


@pytest.mark.parametrize("trigger_overlap", ["skip", "allow"])
def test_trigger_backfill__buffer_all_runs_one_after_another(workflow, enqueued, perform, trigger_overlap):
    """buffer_all: only the oldest slot starts; each finishing wakes the next (whatever the trigger's overlap)."""
    trigger = create(workflow, overlap=trigger_overlap)
    first, second, third = backfill(trigger, "buffer_all")
    assert claim(first, at(12, 0, 1)) is not None
    assert claim(second, at(12, 0, 1)) is None
    assert claim(third, at(12, 0, 1)) is None
    assert Execution.objects.get(pk=second.pk).wait_reason == "previous"
    enqueued["attempts"].clear()
    perform(first, ok(), now=at(12, 0, 5))
    assert enqueued["attempts"] == [Message(str(second.pk), 1, None, "normal")]
    assert claim(third, at(12, 0, 6)) is None
    assert claim(second, at(12, 0, 6)) is not None
    perform(second, ok(), now=at(12, 0, 9))
    assert claim(third, at(12, 0, 10)) is not None


def test_trigger_backfill__allow_runs_side_by_side(workflow, enqueued):
    """allow: every backfilled slot starts at once."""
    trigger = create(workflow)
    executions = backfill(trigger, "allow")
    assert [message.execution_id for message in enqueued["attempts"]] == [str(e.pk) for e in executions]
    assert all(claim(execution, at(12, 0, 1)) is not None for execution in executions)


def test_trigger_backfill__buffer_one_runs_first_and_queues_one_more(workflow, enqueued):
    """buffer_one: the first slot runs, one more waits behind it, the rest are skipped (overlap)."""
    trigger = create(workflow)
    first, second, third = backfill(trigger, "buffer_one")
    assert third.status == ExecutionStatus.SKIPPED and third.skip_reason == SkipReason.OVERLAP
    assert claim(first, at(12, 0, 1)) is not None
    assert claim(second, at(12, 0, 1)) is None
    assert Execution.objects.get(pk=second.pk).status == ExecutionStatus.QUEUED


def test_trigger_backfill__skip_runs_only_first(workflow, enqueued):
    """skip: only the first slot runs; the others are recorded skipped (overlap)."""
    trigger = create(workflow)
    first, second, third = backfill(trigger, "skip")
    assert [second.skip_reason, third.skip_reason] == [SkipReason.OVERLAP, SkipReason.OVERLAP]
    assert claim(first, at(12, 0, 1)) is not None
    report = services.trigger_backfill(trigger=trigger, start=at(6), end=at(7), overlap="skip", now=NOW)
    assert (report.created, report.skipped) == (0, 2)  # the first backfill still runs


def test_execution_retry__failed_execution_gets_retry_execution(workflow, enqueued, perform):
    """Retrying a failed execution creates a new one (origin retry, retry_of, same inputs) and sends it."""
    trigger = create(workflow, inputs={"report": "weekly"})
    failed = fire(trigger, at(13))
    perform(failed, rejected(), now=at(13, 0, 1))
    retry = services.execution_retry(execution=Execution.objects.get(pk=failed.pk), now=at(13, 5))
    assert (retry.origin, retry.retry_of_id, retry.manual) == (ExecutionOrigin.RETRY, failed.pk, True)
    assert retry.inputs == {"report": "weekly"}
    assert retry.status == ExecutionStatus.QUEUED
    assert messages_for(enqueued, retry) == [Message(str(retry.pk), 1, None, "normal")]
    assert claim(retry, at(13, 5, 1)) is not None


@pytest.mark.parametrize("status", [ExecutionStatus.SUCCEEDED, ExecutionStatus.SKIPPED, ExecutionStatus.RUNNING])
def test_execution_retry__refuses_execution_that_did_not_fail(workflow, enqueued, status):
    """Only a failed execution can be retried."""
    trigger = create(workflow)
    execution = fire(trigger, at(13))
    Execution.objects.filter(pk=execution.pk).update(status=status)
    with pytest.raises(TriggerStateError):
        services.execution_retry(execution=Execution.objects.get(pk=execution.pk), now=at(13, 5))
    assert Execution.objects.count() == 1


# --- recovery -----------------------------------------------------------------------------------


def test_executions_recover__expired_running_becomes_retrying_and_resent(workflow, enqueued):
    """A running execution past its lease turns retrying (the lost attempt counts) and is sent again."""
    trigger = create(workflow, priority="high")
    execution = fire(trigger, at(13))
    assert execution.lease_expires_at == at(13) + TIMEOUT + GRACE
    assert dispatch.executions_recover(now=at(13, 0, 7)).executions == 0
    assert dispatch.executions_recover(now=at(13, 0, 8)).executions == 1
    execution.refresh_from_db()
    assert execution.status == ExecutionStatus.RETRYING
    assert execution.error == "worker lost during attempt 1"
    assert enqueued["attempts"] == [Message(str(execution.pk), 2, None, "high")]
    assert claim(execution, at(13, 0, 9), attempt=2).attempts == 2


def test_executions_recover__waiting_execution_with_lost_wakeup_resent(workflow, enqueued, perform):
    """A queued execution whose wake-up message was lost is sent again by recovery once its lease runs out."""
    trigger = create(workflow, overlap="buffer_one")
    current = fire(trigger, at(13))
    fire(trigger, at(14))
    waiting = slot_of(trigger, at(14))
    Execution.objects.filter(pk=current.pk).update(lease_expires_at=at(15))  # its worker is alive
    assert claim(waiting, at(14, 0, 1)) is None  # held until 14:00:04
    enqueued["attempts"].clear()
    assert dispatch.executions_recover(now=at(14, 0, 2)).executions == 0
    perform(current, ok(), now=at(14, 0, 10))
    enqueued["attempts"].clear()  # the wake-up message is lost
    assert dispatch.executions_recover(now=at(14, 0, 11)).executions == 1
    assert enqueued["attempts"] == [Message(str(waiting.pk), 1, None, "normal")]
    assert claim(waiting, at(14, 0, 12)).status == ExecutionStatus.RUNNING


def test_executions_recover__overdue_trigger_gets_latest_slot_fired(workflow, enqueued, settings):
    """A trigger whose next_run_at is overdue past SCHEDULER_MISSED_SLOT_GRACE_SECONDS gets its latest slot fired."""
    settings.SCHEDULER_MISSED_SLOT_GRACE_SECONDS = 90
    trigger = create(workflow)
    assert dispatch.executions_recover(now=at(13, 1, 29)).slots == 0
    assert enqueued["attempts"] == []
    assert dispatch.executions_recover(now=at(15, 10)).slots == 1
    assert by_status(trigger) == {"skipped:missed": [at(13), at(14)], "queued": [at(15)]}
    assert enqueued["attempts"] == [Message(str(slot_of(trigger, at(15)).pk), 1, None, "normal")]
    # The slot is dispatched: a later fire message for it (stock beat's, say) changes nothing.
    assert fire(trigger, at(15), now=at(15, 10)) is None
    assert dispatch.executions_recover(now=at(15, 11)).slots == 0


def test_execution_claim__concurrency_is_first_come_first_served(user, enqueued, perform):
    """When capacity frees, a newer waiting execution cannot overtake an older one by claiming first."""
    workflow = WorkflowFactory(owner=user, max_concurrency=1)
    first, second, third = (create(workflow, name=f"Report {n}") for n in range(3))
    running = fire(first, at(13))
    fire(second, at(13), now=at(13, 0, 1))
    fire(third, at(13), now=at(13, 0, 2))
    older, newer = slot_of(second, at(13)), slot_of(third, at(13))
    perform(running, ok(), now=at(13, 0, 10))
    # The newer one's message (e.g. re-sent by recovery) arrives before the older one's wake-up.
    assert claim(newer, at(13, 0, 11)) is None
    newer.refresh_from_db()
    assert newer.wait_reason == "concurrency"
    assert claim(older, at(13, 0, 12)).status == ExecutionStatus.RUNNING


def test_trigger_resume__once_trigger_past_its_time_is_completed(workflow, enqueued):
    """A once trigger paused before run_at and resumed after it will not run: it is completed, task disabled."""
    trigger = create(workflow, kind="once", cron="", run_at=at(14))
    services.trigger_pause(trigger=trigger, now=at(13))
    resumed = services.trigger_resume(trigger=trigger, now=at(15))
    assert resumed.status == "completed"
    assert resumed.next_run_at is None
    assert fire_task(trigger).enabled is False


def test_trigger_update__max_runs_lowered_to_runs_made_completes(workflow, enqueued):
    """Lowering max_runs to the runs already made completes the trigger at once and disables its task."""
    trigger = create(workflow, max_runs=5)
    fire(trigger, at(13))
    updated = services.trigger_update(trigger=trigger, max_runs=1, now=at(13, 30))
    assert updated.status == "completed"
    assert updated.next_run_at is None
    assert fire_task(trigger).enabled is False
    raised = services.trigger_update(trigger=updated, max_runs=3, now=at(13, 40))
    assert raised.status == "active"
    assert raised.next_run_at == at(14)


def test_trigger_update__end_at_in_the_past_says_so(workflow, enqueued):
    """Moving end_at into the past is refused on end_at with a plain message, not a cron error."""
    trigger = create(workflow)
    with pytest.raises(ValidationError) as error:
        services.trigger_update(trigger=trigger, end_at=at(11), now=at(13))
    assert "end_at" in error.value.message_dict
    assert "future" in error.value.message_dict["end_at"][0]


def test_trigger_fire__late_handling_never_jumps_over_a_due_slot(user, enqueued):
    """A fire handled after the next slot is due (within the misfire grace) leaves that slot as next_run_at,
    so if its own message is lost, recovery still accounts for it instead of it vanishing."""
    workflow = WorkflowFactory(owner=user)
    trigger = create(workflow, kind="interval", cron="", interval_seconds=30, overlap="allow")
    first = at(13)
    fire(trigger, first, now=first + timedelta(seconds=45))  # handled after 13:00:30 fell due
    trigger.refresh_from_db()
    assert trigger.next_run_at == first + timedelta(seconds=30)
    # 13:00:30's own message is lost; once it is overdue, recovery dispatches the latest slot, which
    # records 13:00:30 as missed (catch-up latest) rather than leaving no trace of it.
    later = first + timedelta(seconds=30 + 45)
    assert dispatch.executions_recover(now=later).slots == 1
    assert slot_of(trigger, first + timedelta(seconds=60)).status == ExecutionStatus.QUEUED
    lost = slot_of(trigger, first + timedelta(seconds=30))
    assert (lost.status, lost.skip_reason) == (ExecutionStatus.SKIPPED, SkipReason.MISSED)
