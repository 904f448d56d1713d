"""End to end, the scheduling rules: overlap, catch-up after beat downtime, max_runs, execution
windows, auto-pause with signed notifications, and DST changes on a faked clock. Real celery beat
and worker processes fire the triggers; nothing here calls a task directly."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from unittest import mock

import pytest
from django.utils import timezone
from standardwebhooks import Webhook

from schedules import services
from schedules.models import Execution, ExecutionOrigin, ExecutionStatus, SkipReason, Trigger, TriggerStatus
from tests.factories import TriggerFactory, WorkflowFactory

from .harness import Endpoint, FakeClock, Reply, in_ci, libfaketime_path, wait_for

pytestmark = pytest.mark.e2e

FINISHED = (ExecutionStatus.SUCCEEDED, ExecutionStatus.FAILED, ExecutionStatus.SKIPPED)


# --- helpers ------------------------------------------------------------------------------------


def executions_of(trigger: Trigger) -> list[Execution]:
    return list(Execution.objects.filter(trigger=trigger).order_by("scheduled_for"))


def describe(executions: list[Execution]) -> list[str]:
    """What a failed assertion shows: slot, status, skip reason, origin, when it was created."""
    return [
        f"{e.scheduled_for:%H:%M:%S} {e.status} {e.skip_reason or '-'} {e.origin} @{e.created_at:%H:%M:%S.%f}"
        for e in executions
    ]


def assert_consecutive(executions: list[Execution], seconds: int) -> None:
    """Every slot from the first to the last has its execution: none lost, none twice."""
    slots = [e.scheduled_for for e in executions]
    assert all(b - a == timedelta(seconds=seconds) for a, b in zip(slots, slots[1:], strict=False)), describe(
        executions
    )


@contextmanager
def control_trigger(user, *, now: datetime | None = None) -> Iterator[Trigger]:
    """An every-2-seconds trigger on its own endpoint: proof that beat keeps firing."""
    endpoint = Endpoint()
    try:
        extra = {"now": now} if now is not None else {}
        yield TriggerFactory(
            workflow=WorkflowFactory(owner=user, endpoint_url=endpoint.url),
            kind="interval",
            interval_seconds=2,
            **extra,
        )
    finally:
        endpoint.close()


def wait_for_two_fires(control: Trigger, *, after: datetime, timeout: float = 30) -> None:
    wait_for(
        lambda: Execution.objects.filter(trigger=control, scheduled_for__gt=after).count() >= 2,
        timeout=timeout,
        what=f"the control trigger to fire twice after {after.isoformat()}",
    )


# --- overlap ------------------------------------------------------------------------------------


def test_overlap_skip__slots_during_a_running_call_are_skipped_and_calls_never_overlap(stack, endpoint, user):
    """Every 2 s, the first call held 5 s: the slots meanwhile are skipped (overlap), calls never overlap, then
    resume."""
    endpoint.script = [Reply(delay=5)]
    workflow = WorkflowFactory(owner=user, endpoint_url=endpoint.url, timeout_seconds=15)
    stack.start_worker_and_beat()
    trigger = TriggerFactory(workflow=workflow, kind="interval", interval_seconds=2, overlap="skip")

    def two_succeeded():
        rows = executions_of(trigger)
        return rows if sum(e.status == ExecutionStatus.SUCCEEDED for e in rows) >= 2 else None

    rows = wait_for(two_succeeded, timeout=60, what="two succeeded executions")
    report = describe(rows)
    first, second = [e for e in rows if e.status != ExecutionStatus.SKIPPED][:2]
    assert first.status == second.status == ExecutionStatus.SUCCEEDED, report
    assert first.duration_ms >= 5000
    between = [e for e in rows if first.scheduled_for < e.scheduled_for < second.scheduled_for]
    assert_consecutive(rows, 2)
    # 5 s of call from an every-2-s trigger: at least the next two slots fell while it ran.
    assert len(between) >= 2, report
    assert all(e.status == ExecutionStatus.SKIPPED and e.skip_reason == SkipReason.OVERLAP for e in between), report
    # Decided while the first call ran (its finished_at is stamped just before its commit).
    assert all(first.started_at <= e.created_at <= first.finished_at + timedelta(seconds=0.5) for e in between), report
    assert second.started_at >= first.finished_at
    calls = endpoint.calls[:2]
    assert [call.body["execution_id"] for call in calls] == [str(first.pk), str(second.pk)]
    assert calls[1].at >= calls[0].finished_at
    assert endpoint.max_in_flight == 1


# --- catch-up after beat downtime ---------------------------------------------------------------

# Three triggers every 3 s plus beat's recovery task stay within what one worker takes from the
# filesystem broker (it polls once a second when its prefetch is full: about 2 messages a second).
CATCHUP_INTERVAL = 3


def test_catchup_after_beat_downtime__all_runs_missed_slots_in_order_latest_and_skip_record_them_missed(stack, user):
    """Beat SIGKILLed for 3+ slots: catch-up 'all' runs each missed slot (oldest first, one at a time);
    'latest' and 'skip' record them skipped (missed). All three run the slot due when beat is back:
    it fires on time, within SCHEDULER_MISFIRE_GRACE_SECONDS, so 'skip' does not count it missed."""
    policies = ("all", "latest", "skip")
    endpoints = {policy: Endpoint(default=Reply(delay=0.1)) for policy in policies}
    try:
        _, beat = stack.start_worker_and_beat()
        triggers = {
            policy: TriggerFactory(
                workflow=WorkflowFactory(owner=user, endpoint_url=endpoints[policy].url),
                kind="interval",
                interval_seconds=CATCHUP_INTERVAL,
                catchup=policy,
                catchup_window_seconds=3600,
            )
            for policy in policies
        }
        interval = timedelta(seconds=CATCHUP_INTERVAL)

        def caught_up() -> bool:
            """Each trigger has succeeded, its next_run_at is right after its last handled slot, and
            beat sends nothing for a moment. (trigger_fire sets next_run_at to the slot after *now*:
            a fire handled after the next slot's time skips that slot, which is then lost if beat
            dies before firing it. Killing beat only now keeps this test about catch-up.)"""
            current = list(Trigger.objects.filter(pk__in=[t.pk for t in triggers.values()]))
            for trigger in current:
                handled = Execution.objects.filter(trigger=trigger, scheduled_for=trigger.next_run_at - interval)
                if not handled.exists():
                    return False
                if not Execution.objects.filter(trigger=trigger, status=ExecutionStatus.SUCCEEDED).exists():
                    return False
            return min(t.next_run_at for t in current) - timezone.now() > timedelta(seconds=0.2)

        wait_for(caught_up, timeout=60, what="each trigger to succeed and be caught up", interval=0.05)
        beat.kill()
        killed_at = timezone.now()
        # Every slot beat fired is at or before killed_at. Down for 4 intervals, the slot beat fires
        # when it is back is 4+ intervals after the last one it fired: 3+ slots in between missed.
        down = timedelta(seconds=4 * CATCHUP_INTERVAL)
        wait_for(lambda: timezone.now() >= killed_at + down, timeout=60, what="4 intervals of beat downtime")
        restarted_at = timezone.now()
        stack.start_beat()

        def back_on_schedule(trigger):
            """The slot due when beat came back (the first one it fired), once finished."""
            back = (
                Execution.objects.filter(trigger=trigger, origin=ExecutionOrigin.SCHEDULE, created_at__gt=restarted_at)
                .order_by("scheduled_for")
                .first()
            )
            return back if back is not None and back.status in FINISHED else None

        restart_slots = {
            policy: wait_for(
                lambda t=trigger: back_on_schedule(t), timeout=60, what=f"the restart slot of catch-up {policy}"
            )
            for policy, trigger in triggers.items()
        }
    finally:
        for server in endpoints.values():
            server.close()

    for policy, trigger in triggers.items():
        back = restart_slots[policy]
        rows = [e for e in executions_of(trigger) if e.scheduled_for <= back.scheduled_for]
        report = (policy, describe(rows))
        missed = [e for e in rows if e.origin == ExecutionOrigin.CATCHUP and e.created_at > killed_at]
        assert len(missed) >= 3, report
        assert_consecutive(rows, CATCHUP_INTERVAL)  # the missed slots end right before the restart slot
        assert missed[-1].scheduled_for == back.scheduled_for - timedelta(seconds=CATCHUP_INTERVAL), report
        assert back.status == ExecutionStatus.SUCCEEDED, report
        calls = {call.body["execution_id"]: call for call in endpoints[policy].calls}
        if policy == "all":
            assert all(e.status == ExecutionStatus.SUCCEEDED for e in missed), report
            chain = [*missed, back]
            # Oldest first, each call after the previous one answered.
            chain_calls = [calls[str(e.pk)] for e in chain]
            assert [call.at for call in chain_calls] == sorted(call.at for call in chain_calls), report
            assert all(b.at >= a.finished_at for a, b in zip(chain_calls, chain_calls[1:], strict=False)), report
            assert all(b.started_at >= a.finished_at for a, b in zip(chain, chain[1:], strict=False)), report
        else:
            assert all(e.status == ExecutionStatus.SKIPPED and e.skip_reason == SkipReason.MISSED for e in missed), (
                report
            )
            assert not any(str(e.pk) in calls for e in missed), report
            assert str(back.pk) in calls
        assert endpoints[policy].max_in_flight == 1, policy


# --- max_runs -----------------------------------------------------------------------------------


def test_max_runs__three_runs_then_completed_and_beat_fires_it_no_more(stack, endpoint, user):
    """max_runs=3 every second: exactly 3 succeed, then the trigger is completed, its task disabled, no more calls."""
    workflow = WorkflowFactory(owner=user, endpoint_url=endpoint.url)
    stack.start_worker_and_beat()
    trigger = TriggerFactory(workflow=workflow, kind="interval", interval_seconds=1, max_runs=3)

    def completed():
        current = Trigger.objects.select_related("periodic_task").get(pk=trigger.pk)
        done = Execution.objects.filter(trigger=trigger, status=ExecutionStatus.SUCCEEDED).count()
        return current if current.completed_at is not None and done >= 3 else None

    trigger = wait_for(completed, timeout=60, what="the trigger to complete after 3 succeeded runs")
    assert trigger.status == TriggerStatus.COMPLETED
    assert trigger.run_count == 3
    assert trigger.runs_remaining == 0
    assert trigger.next_run_at is None
    assert trigger.periodic_task.enabled is False

    with control_trigger(user) as control:
        wait_for_two_fires(control, after=trigger.completed_at)

    rows = executions_of(trigger)
    ran = [e for e in rows if e.status != ExecutionStatus.SKIPPED]  # an overlap skip does not count as a run
    assert [e.status for e in ran] == [ExecutionStatus.SUCCEEDED] * 3, describe(rows)
    assert all(e.scheduled_for <= trigger.completed_at for e in rows), describe(rows)
    assert sorted(call.body["execution_id"] for call in endpoint.calls) == sorted(str(e.pk) for e in ran)
    assert Trigger.objects.get(pk=trigger.pk).run_count == 3


# --- execution window ---------------------------------------------------------------------------


def test_execution_window__slots_outside_it_are_recorded_skipped_and_never_called(stack, endpoint, user):
    """Windows that exclude now (by day, by time of day, UTC): every slot is skipped (outside_window), no call."""
    now = timezone.now()
    today = now.isoweekday() % 7  # 0 = Sunday, as the window counts
    # Neither today nor tomorrow, nor the half of the day we are in: safe across midnight and noon.
    other_days = [day for day in range(7) if day not in (today, (today + 1) % 7)]
    other_half = [["13:00", "23:00"]] if now.hour < 12 else [["01:00", "11:00"]]
    workflow = WorkflowFactory(owner=user, endpoint_url=endpoint.url)
    stack.start_worker_and_beat()
    by_day = TriggerFactory(
        workflow=workflow, kind="interval", interval_seconds=2, execution_window={"days": other_days}
    )
    by_time = TriggerFactory(
        workflow=workflow, kind="interval", interval_seconds=2, execution_window={"ranges": other_half}
    )

    wait_for(
        lambda: all(
            Execution.objects.filter(trigger=t, origin=ExecutionOrigin.SCHEDULE).count() >= 3 for t in (by_day, by_time)
        ),
        timeout=60,
        what="three slots of each trigger",
    )

    for trigger in (by_day, by_time):
        rows = executions_of(trigger)
        # A slot whose fire a busy worker handles after the next slot's is recorded missed (catch-up
        # 'latest'), before any window applies; every other slot is skipped for the window.
        expected = {ExecutionOrigin.SCHEDULE: SkipReason.OUTSIDE_WINDOW, ExecutionOrigin.CATCHUP: SkipReason.MISSED}
        assert all(
            e.status == ExecutionStatus.SKIPPED and e.skip_reason == expected[e.origin] and e.attempts == 0
            for e in rows
        ), describe(rows)
        assert_consecutive(rows, 2)
        trigger.refresh_from_db()
        assert trigger.enabled and trigger.run_count == 0
    assert endpoint.calls == []


# --- auto-pause ---------------------------------------------------------------------------------


def test_auto_pause__two_final_failures_pause_the_trigger_and_send_signed_notifications(stack, user):
    """404 twice with pause_after_failures=2: paused, task disabled, no more calls; the webhook
    gets 'failed' twice and 'auto_paused' once, each signed with the workflow's secret."""
    target = Endpoint(default=Reply(status=404, body={"error": "no such workflow"}))
    notified = Endpoint()
    try:
        workflow = WorkflowFactory(owner=user, endpoint_url=target.url)
        stack.start_worker_and_beat()
        trigger = TriggerFactory(
            workflow=workflow,
            kind="interval",
            interval_seconds=2,
            pause_after_failures=2,
            notify_webhook_url=notified.url,
        )

        paused = wait_for(
            lambda: Trigger.objects.select_related("periodic_task").filter(pk=trigger.pk, enabled=False).first(),
            timeout=60,
            what="the trigger to pause itself",
        )
        notes = notified.wait_for_calls(3, timeout=30)
        with control_trigger(user) as control:
            wait_for_two_fires(control, after=paused.paused_at)
    finally:
        target.close()
        notified.close()

    assert paused.status == TriggerStatus.PAUSED
    assert paused.paused_by is None
    assert "2 failed executions" in paused.pause_reason
    assert paused.consecutive_failures == 2
    assert paused.periodic_task.enabled is False
    rows = executions_of(trigger)
    ran = [e for e in rows if e.status != ExecutionStatus.SKIPPED]  # a slow machine may skip one (overlap)
    assert [(e.status, e.attempts, e.http_status) for e in ran] == [(ExecutionStatus.FAILED, 1, 404)] * 2, describe(
        rows
    )
    assert len(target.calls) == 2
    assert not Execution.objects.filter(trigger=trigger, scheduled_for__gt=paused.paused_at).exists()

    assert len(notified.calls) == 3
    for note in notes:
        assert Webhook(workflow.secret).verify(note.raw, note.headers) == note.body
    events = sorted((note.body["event"], note.body["execution"]["id"]) for note in notes)
    first, second = ran
    assert events == sorted([("failed", str(first.pk)), ("failed", str(second.pk)), ("auto_paused", str(second.pk))])
    auto_paused = next(note.body for note in notes if note.body["event"] == "auto_paused")
    assert auto_paused["trigger"] == {"id": trigger.pk, "name": trigger.name, "status": "paused"}
    assert auto_paused["pause_reason"] == paused.pause_reason
    assert auto_paused["consecutive_failures"] == 2
    assert auto_paused["execution"]["http_status"] == 404


# --- DST on a faked clock -----------------------------------------------------------------------

LOS_ANGELES = "America/Los_Angeles"
# 2027-03-14 02:00 PST becomes 03:00 PDT: local 02:30 does not exist that day.
SPRING_GAP_END = datetime(2027, 3, 14, 10, 0, tzinfo=UTC)
# 2027-11-07 02:00 PDT becomes 01:00 PST: local 01:30 happens at 08:30Z and again at 09:30Z.
AUTUMN_FIRST_0130 = datetime(2027, 11, 7, 8, 30, tzinfo=UTC)
AUTUMN_REPEATED_0130 = datetime(2027, 11, 7, 9, 30, tzinfo=UTC)
# The clock is set this long before the moment under test, once beat runs on it.
LEAD = timedelta(seconds=8)
# How late beat and worker may act on a slot on a busy machine.
SOON = timedelta(seconds=10)


@pytest.fixture
def faketime_library() -> Path:
    """libfaketime.so.1 (the libfaketime package in requirements.txt); skipped without it, except in CI."""
    library = libfaketime_path()
    if library is None:
        message = (
            "libfaketime is not installed: `pip install -r requirements.txt` (the libfaketime package bundles it) "
            "or `apt-get install libfaketime`"
        )
        if in_ci():
            pytest.fail(f"{message} (CI is set, so this is a failure, not a skip)")
        pytest.skip(message)
    return library


class OnFakeClock:
    """Worker and beat sharing a fake wall clock, and the test creating triggers on it too."""

    def __init__(self, stack, library: Path, directory: Path, *, at: datetime) -> None:
        # Started well before the moment under test, then moved close to it once both run.
        self.clock = FakeClock(library, directory, at=at - timedelta(minutes=10))
        problem = self.clock.problem()
        if problem:
            message = f"libfaketime does not work here: {problem}"
            if in_ci():
                pytest.fail(message)
            pytest.skip(message)
        self.heartbeat = directory / "beat-heartbeat"
        # TZ=UTC: celery's log lines carry local time, and the assertions read them.
        env = {**self.clock.env(), "SCHEDULER_BEAT_HEARTBEAT_FILE": str(self.heartbeat), "TZ": "UTC"}
        self.worker, self.beat = stack.start_worker_and_beat(env_extra=env)
        self.move_to(at)

    def move_to(self, at: datetime) -> None:
        """Set the clock and wait until beat (which stamps its heartbeat file with it) runs on it."""
        self.clock.set(at)
        wait_for(
            lambda: self.heartbeat.exists() and self.heartbeat.stat().st_mtime >= at.timestamp(),
            timeout=30,
            what=f"beat to run at {at.isoformat()}",
        )

    @contextmanager
    def here(self) -> Iterator[datetime]:
        """Run the body as if this process were on the fake clock too (as the web process would be):
        PeriodicTasks' change stamp must not go back in time, or beat misses the change."""
        with mock.patch("django.utils.timezone.now", self.clock.now):
            yield self.clock.now()


def test_dst_spring_forward__beat_fires_the_skipped_local_time_once_at_the_end_of_the_gap(
    stack, endpoint, user, faketime_library, tmp_path
):
    """'30 2 * * *' in Los Angeles on 2027-03-14 (02:30 skipped): fired once, at 10:00:00Z, for slot 10:00:00Z."""
    workflow = WorkflowFactory(owner=user, endpoint_url=endpoint.url)
    fake = OnFakeClock(stack, faketime_library, tmp_path, at=SPRING_GAP_END - LEAD)
    with fake.here() as now:
        trigger = services.trigger_create(
            owner=user,
            workflow=workflow,
            name="02:30 in Los Angeles",
            kind="cron",
            cron="30 2 * * *",
            timezone_name=LOS_ANGELES,
            now=now,
        )
    assert trigger.next_run_at == SPRING_GAP_END

    execution = wait_for(
        lambda: Execution.objects.filter(trigger=trigger, status__in=FINISHED).first(),
        timeout=60,
        what="the 02:30 execution",
    )
    with fake.here() as now, control_trigger(user, now=now) as control:
        wait_for_two_fires(control, after=now)

    assert execution.status == ExecutionStatus.SUCCEEDED
    assert execution.scheduled_for == SPRING_GAP_END
    assert execution.origin == ExecutionOrigin.SCHEDULE
    # Dispatched at the end of the gap (the row is written by beat, on the fake clock), not an hour off.
    assert SPRING_GAP_END <= execution.created_at < SPRING_GAP_END + SOON
    assert Execution.objects.filter(trigger=trigger).count() == 1
    assert [call.body["scheduled_for"] for call in endpoint.calls] == ["2027-03-14T10:00:00+00:00"]
    trigger.refresh_from_db()
    assert trigger.next_run_at == datetime(2027, 3, 15, 9, 30, tzinfo=UTC)  # 02:30 PDT the next day


def test_dst_fall_back__a_fixed_local_time_in_the_repeated_hour_fires_only_the_first_time(
    stack, endpoint, user, faketime_library, tmp_path
):
    """'30 1 * * *' in Los Angeles on 2027-11-07: fired at 08:30Z (01:30 PDT), not again at 09:30Z (01:30 PST)."""
    workflow = WorkflowFactory(owner=user, endpoint_url=endpoint.url)
    fake = OnFakeClock(stack, faketime_library, tmp_path, at=AUTUMN_FIRST_0130 - LEAD)
    with fake.here() as now:
        trigger = services.trigger_create(
            owner=user,
            workflow=workflow,
            name="01:30 in Los Angeles",
            kind="cron",
            cron="30 1 * * *",
            timezone_name=LOS_ANGELES,
            now=now,
        )
    assert trigger.next_run_at == AUTUMN_FIRST_0130

    first = wait_for(
        lambda: Execution.objects.filter(trigger=trigger, status__in=FINISHED).first(),
        timeout=60,
        what="the first 01:30 execution",
    )
    assert first.status == ExecutionStatus.SUCCEEDED
    assert first.scheduled_for == AUTUMN_FIRST_0130
    trigger.refresh_from_db()
    assert trigger.next_run_at == datetime(2027, 11, 8, 9, 30, tzinfo=UTC)  # 01:30 PST the next day

    # Just before the repeated 01:30; a control trigger proves beat ran on past it.
    fake.move_to(AUTUMN_REPEATED_0130 - LEAD)
    with fake.here() as now, control_trigger(user, now=now) as control:
        wait_for_two_fires(control, after=AUTUMN_REPEATED_0130 + timedelta(seconds=1), timeout=60)

    # Dispatched once, at the first 01:30 (beat writes the row on the fake clock), never at the second.
    assert AUTUMN_FIRST_0130 <= first.created_at < AUTUMN_FIRST_0130 + SOON
    assert [e.scheduled_for for e in executions_of(trigger)] == [AUTUMN_FIRST_0130]
    assert [call.body["trigger_id"] for call in endpoint.calls] == [trigger.pk]
