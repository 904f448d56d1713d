"""End to end, the dispatch path under failure: two beats with the lease holder SIGKILLed, the broker
lost at a fire time and back empty, and 2,000 slots due at once with a worker SIGKILLed. Real celery
beat and worker processes; nothing here calls a task directly."""

from __future__ import annotations

import shutil
import socket
import subprocess
from collections import Counter
from datetime import timedelta

import pytest
from django.conf import settings
from django.utils import timezone
from django_celery_results.models import TaskResult

from schedules import beat as schedule_beat
from schedules import services, timing
from schedules.models import (
    UNFINISHED_STATUSES,
    BeatLease,
    Execution,
    ExecutionOrigin,
    ExecutionStatus,
    SkipReason,
    Trigger,
)
from tests.factories import TriggerFactory, WorkflowFactory

from .harness import Endpoint, Reply, in_ci, wait_for

pytestmark = pytest.mark.e2e

FINISHED = (ExecutionStatus.SUCCEEDED, ExecutionStatus.FAILED, ExecutionStatus.SKIPPED)


def describe(executions) -> list[str]:
    return [
        f"{e.scheduled_for:%H:%M:%S} {e.status} {e.skip_reason or '-'} {e.origin} @{e.created_at:%H:%M:%S.%f}"
        for e in executions
    ]


def slots_of(trigger: Trigger) -> list[Execution]:
    return list(Execution.objects.filter(trigger=trigger, fallback_of=None).order_by("scheduled_for"))


def assert_every_slot_once(executions: list[Execution], seconds: float) -> None:
    """From the first to the last, every slot has exactly one execution: none lost, none twice."""
    slots = [e.scheduled_for for e in executions]
    assert len(slots) == len(set(slots)), describe(executions)
    gaps = [b - a for a, b in zip(slots, slots[1:], strict=False)]
    assert all(gap == timedelta(seconds=seconds) for gap in gaps), describe(executions)


def lease_holder_pid() -> int | None:
    lease = BeatLease.objects.filter(name=schedule_beat.PERIODIC_LEASE, expires_at__gt=timezone.now()).first()
    return int(lease.holder.split(":")[1]) if lease else None


# --- two beats ----------------------------------------------------------------------------------


def test_two_beats__lease_holder_killed__no_slot_missed_or_dispatched_twice(stack, endpoint, user):
    """Two beats dispatch every-second triggers side by side. SIGKILL the one holding the periodic-task
    lease: every slot still gets exactly one execution and one call, none late, and the other beat holds
    the lease (and sends the periodic tasks) within 5 s."""
    workflow = WorkflowFactory(owner=user, endpoint_url=endpoint.url)
    stack.start_worker()
    beats = [stack.start_beat(), stack.start_beat()]
    triggers = [
        TriggerFactory(
            workflow=workflow, name=f"every second {n}", kind="interval", interval_seconds=1, overlap="allow"
        )
        for n in range(4)
    ]
    pid = wait_for(lease_holder_pid, timeout=30, what="a beat to hold the periodic-task lease")
    holder = next(b for b in beats if b.popen.pid == pid)
    other = next(b for b in beats if b is not holder)
    wait_for(
        lambda: Execution.objects.filter(trigger__in=triggers, status=ExecutionStatus.SUCCEEDED).count() >= 12,
        timeout=60,
        what="three seconds of slots run by both beats",
    )

    holder.kill()
    killed_at = timezone.now()
    wait_for(lambda: lease_holder_pid() == other.popen.pid, timeout=10, what="the other beat to take the lease")
    took_over_after = (timezone.now() - killed_at).total_seconds()
    other.wait_for_log("holds the periodic-task lease", timeout=5)
    until = timezone.now() + timedelta(seconds=4)
    wait_for(
        lambda: all(
            Execution.objects.filter(trigger=t, scheduled_for__gte=until, status=ExecutionStatus.SUCCEEDED).exists()
            for t in triggers
        ),
        timeout=60,
        what="four more seconds of slots after the kill",
    )
    for trigger in triggers:
        services.trigger_pause(trigger=trigger, reason="end of test")
    wait_for(
        lambda: not Execution.objects.filter(trigger__in=triggers, status__in=UNFINISHED_STATUSES).exists(),
        timeout=30,
        what="the last calls to finish",
    )

    assert took_over_after <= 5
    calls = Counter(call.headers["idempotency-key"] for call in endpoint.calls)
    for trigger in triggers:
        rows = [e for e in slots_of(trigger) if e.scheduled_for <= until]
        assert_every_slot_once(rows, 1)
        assert (
            rows[0].scheduled_for
            < killed_at - timedelta(seconds=2)
            < until
            < rows[-1].scheduled_for + timedelta(seconds=1)
        )
        assert all(e.status == ExecutionStatus.SUCCEEDED for e in rows), describe(rows)
        assert all(calls[str(e.pk)] == 1 for e in rows), describe(rows)
        # The surviving beat went on dispatching on time: no slot waited for the takeover.
        assert all(e.created_at - e.scheduled_for < timedelta(seconds=2) for e in rows), describe(rows)
    assert max(calls.values()) == 1


# --- the broker lost at a fire time -------------------------------------------------------------


class PrivateRedis:
    """A redis-server of the test's own on a free loopback port, with nothing on disk: killed, it
    comes back empty."""

    def __init__(self, tmp_path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed (Debian package redis-server)") if in_ci() else pytest.skip(
                "redis-server is not installed"
            )
        self.binary = binary
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.tmp_path = tmp_path
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        command = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.process = subprocess.Popen(
            command, cwd=self.tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

        def answers() -> bool:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as conn:
                    conn.sendall(b"PING\r\n")
                    return conn.recv(16).startswith(b"+PONG")
            except OSError:
                return False

        wait_for(answers, timeout=20, what=f"redis-server on port {self.port}")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


def test_broker_lost_at_fire_time_and_back_empty__every_slot_recorded_by_its_catchup_policy(stack, user, tmp_path):
    """Redis is SIGKILLed (it keeps nothing) while every-2-seconds triggers fire, and restarted empty
    ~10 s later. No slot is lost: each slot from the first to the last has one execution; the slot
    beat had written when the broker refused it runs once the broker is back; the slots that fell due
    while it was down are handled by each trigger's catch-up policy ('all' runs them, 'latest' and
    'skip' record them missed); every execution that ran was called once."""
    redis = PrivateRedis(tmp_path)
    redis.start()
    stack.env_extra["CELERY_BROKER_URL"] = redis.url
    policies = ("all", "latest", "skip")
    endpoints = {policy: Endpoint(default=Reply(delay=0.05)) for policy in policies}
    interval = 2
    try:
        # Restarted if it exits, as under docker-compose: a worker may die when its broker vanishes.
        stack.start_supervised_worker()
        stack.start_beat()
        triggers = {
            policy: TriggerFactory(
                workflow=WorkflowFactory(owner=user, endpoint_url=endpoints[policy].url),
                name=f"catch-up {policy}",
                kind="interval",
                interval_seconds=interval,
                catchup=policy,
                catchup_window_seconds=3600,
                overlap="allow",
            )
            for policy in policies
        }
        wait_for(
            lambda: all(
                Execution.objects.filter(trigger=t, status=ExecutionStatus.SUCCEEDED).count() >= 2
                for t in triggers.values()
            ),
            timeout=60,
            what="two succeeded executions of each trigger",
        )
        redis.kill()
        down_at = timezone.now()
        wait_for(lambda: timezone.now() >= down_at + timedelta(seconds=10), timeout=30, what="10 s of outage")
        # Measured before the restart: beat may see the broker back before this test does.
        back_at = timezone.now()
        redis.start()
        wait_for(
            lambda: all(
                Execution.objects.filter(
                    trigger=t, scheduled_for__gt=back_at + timedelta(seconds=interval), status=ExecutionStatus.SUCCEEDED
                ).exists()
                for t in triggers.values()
            ),
            timeout=90,
            what="each trigger to run again after the broker came back",
        )
        for trigger in triggers.values():
            services.trigger_pause(trigger=trigger, reason="end of test")
        wait_for(
            lambda: not Execution.objects.filter(status__in=UNFINISHED_STATUSES).exists(),
            timeout=60,
            what="everything written to be finished",
        )
    finally:
        for server in endpoints.values():
            server.close()
        redis.kill()

    for policy, trigger in triggers.items():
        rows = slots_of(trigger)
        report = (policy, f"down {down_at:%H:%M:%S.%f} back {back_at:%H:%M:%S.%f}", describe(rows))
        assert_every_slot_once(rows, interval)
        during = [
            e for e in rows if down_at < e.scheduled_for + timedelta(seconds=interval) and e.scheduled_for < back_at
        ]
        assert len(during) >= 3, report
        calls = Counter(call.headers["idempotency-key"] for call in endpoints[policy].calls)
        ran = [e for e in rows if e.status == ExecutionStatus.SUCCEEDED]
        assert all(calls[str(e.pk)] == 1 for e in ran), report
        assert sum(calls.values()) == len(ran), report
        assert all(e.status == ExecutionStatus.SUCCEEDED or e.skip_reason == SkipReason.MISSED for e in rows), report
        # The first slot after the kill was written by beat, refused by the broker, and run once it was
        # back (from the ledger); beat then held dispatch, so the later ones were written only then.
        ledgered, *held = [e for e in during if e.scheduled_for > down_at]
        assert ledgered.created_at < back_at and ledgered.status == ExecutionStatus.SUCCEEDED, report
        assert held and all(e.created_at >= back_at for e in held), report
        missed = [e for e in held if e.status == ExecutionStatus.SKIPPED]
        if policy == "all":
            assert not missed, report
        else:
            # Handled by the catch-up policy when the broker came back: all but the newest missed.
            assert len(missed) >= 2 and missed == held[: len(missed)], report
            assert all(e.origin == ExecutionOrigin.CATCHUP for e in missed), report


# --- 2,000 slots due at once --------------------------------------------------------------------


def bulk_triggers(workflow, count: int, *, first_slot, interval_seconds: int = 60) -> list[Trigger]:
    """``count`` interval triggers whose first slot is ``first_slot``, built and validated by the
    services (trigger_build) and inserted in bulk, with next_run_at and active_since as trigger_create
    sets them. Their PeriodicTasks are left out: TriggerScheduler dispatches from the due index and
    never reads them (creating them one by one would take the test a minute)."""
    now = timezone.now()
    template = services.trigger_build(
        owner=workflow.owner,
        workflow=workflow,
        name="template",
        kind="interval",
        interval_seconds=interval_seconds,
        anchor_at=first_slot,
        overlap="allow",
        now=now,
    )
    assert timing.next_slot_after(template.cadence, now) == first_slot
    fields = {f.attname: getattr(template, f.attname) for f in Trigger._meta.concrete_fields if f.attname != "id"}
    rows = []
    for number in range(count):
        trigger = Trigger(**fields)
        trigger.name = f"burst {number}"
        trigger.active_since = now
        trigger.next_run_at = first_slot
        rows.append(trigger)
    return Trigger.objects.bulk_create(rows, batch_size=500)


def test_slots_due_at_once__worker_killed__every_one_executed_once(stack, endpoint, user):
    """2,000 triggers fall due in the same second; the worker is SIGKILLed while it works through them
    and a new one is started. Every slot ends with exactly one execution, succeeded; every execution's
    run was recorded once by the (idempotent) endpoint, and only calls that were in flight at the kill
    were repeated (with the same Idempotency-Key)."""
    # kombu's filesystem transport (the embedded default) polls its folder: a tenth of the load
    # keeps the test within minutes there.
    count = 2000 if settings.CELERY_BROKER_URL.startswith("redis://") else 200
    workflow = WorkflowFactory(owner=user, endpoint_url=endpoint.url, timeout_seconds=10)
    worker, _ = stack.start_worker_and_beat()
    first_slot = (timezone.now() + timedelta(seconds=8)).replace(microsecond=0)
    triggers = bulk_triggers(workflow, count, first_slot=first_slot)
    ids = [t.pk for t in triggers]

    def done() -> int:
        return Execution.objects.filter(
            trigger_id__in=ids, scheduled_for=first_slot, status=ExecutionStatus.SUCCEEDED
        ).count()

    wait_for(lambda: done() >= count // 4, timeout=120, what=f"a quarter of the {count} executions")
    worker.kill()
    killed_at_done = done()
    stack.start_worker()
    wait_for(lambda: done() >= count, timeout=300, what=f"all {count} executions to succeed", interval=0.5)
    Trigger.objects.filter(pk__in=ids).update(enabled=False)

    rows = list(Execution.objects.filter(trigger_id__in=ids, fallback_of=None, scheduled_for__lte=first_slot))
    assert len(rows) == count
    assert {e.trigger_id for e in rows} == set(ids)
    assert all(e.status == ExecutionStatus.SUCCEEDED for e in rows)
    calls = Counter(
        call.headers["idempotency-key"]
        for call in endpoint.calls
        if call.body["scheduled_for"] == first_slot.isoformat()
    )
    assert set(calls) == {str(e.pk) for e in rows}
    assert len(endpoint.runs) >= count
    repeated = [key for key, n in calls.items() if n > 1]
    # Only what the killed worker's processes were calling (prefork: one call per process).
    assert len(repeated) <= 8, repeated
    assert all(run == endpoint.runs[str(e.pk)] for e in rows for run in [e.run_id])
    assert killed_at_done < count
    # Beat sent the burst several attempts per message (dispatch.message_groups): the path above.
    wait_for(
        lambda: TaskResult.objects.filter(task_name="schedules.run_executions", status="SUCCESS").exists(),
        timeout=30,
        what="a run_executions result",
    )
