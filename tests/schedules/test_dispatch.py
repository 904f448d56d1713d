"""schedules.dispatch: beat's batched dispatch from the due index, the ledger, the worker's claim and
record, recovery that does not multiply load, deadlocks, and folded stats."""

from __future__ import annotations

import contextlib
import threading
from datetime import UTC, datetime, timedelta

import pytest
from django.core.exceptions import ValidationError
from django.db import DatabaseError, connection, transaction
from django.db.models import Exists, signals
from django.db.utils import OperationalError
from django.test.utils import CaptureQueriesContext
from django_celery_beat.models import PeriodicTask

from schedules import beat, dispatch, selectors, services
from schedules.models import (
    Execution,
    ExecutionOrigin,
    ExecutionStats,
    ExecutionStatus,
    Handoff,
    SkipReason,
    Trigger,
)
from tests.factories import UserFactory, WorkflowFactory
from workflows.client import CallResult
from workflows.exceptions import WorkflowRejected

NOW = datetime(2027, 3, 10, 12, 0, tzinfo=UTC)
HOURLY = "0 * * * *"

postgres_only = pytest.mark.skipif(
    "connection.vendor != 'postgresql'", reason="row locks and SKIP LOCKED are PostgreSQL's; SQLite locks it all"
)


def at(hour: int, minute: int = 0, second: int = 0) -> datetime:
    return datetime(2027, 3, 10, hour, minute, second, tzinfo=UTC)


def create(workflow, **overrides) -> Trigger:
    fields = {"owner": workflow.owner, "workflow": workflow, "name": "Hourly", "kind": "cron", "cron": HOURLY}
    fields.update(overrides)
    fields.setdefault("now", NOW)
    return services.trigger_create(**fields)


@contextlib.contextmanager
def row_held(sql: str, params: list):
    """While the block runs, another connection's transaction holds the row lock ``sql`` takes."""
    holding, release = threading.Event(), threading.Event()

    def hold():
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(sql, params)
            holding.set()
            release.wait(10)
        connection.close()

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert holding.wait(10)
        yield
    finally:
        release.set()
        holder.join()


def trigger_held(trigger_id: int):
    """While the block runs, another connection's transaction holds the trigger's row (FOR UPDATE)."""
    return row_held('SELECT 1 FROM "schedules_trigger" WHERE "id" = %s FOR UPDATE', [trigger_id])


class Broker:
    """Stands in for the broker: records what the dispatch path publishes; can refuse, or hold a backlog."""

    def __init__(self) -> None:
        self.attempts: list[dispatch.Attempt] = []
        self.accept: int | None = None  # how many more it takes before refusing (None: all)
        self.depth = 0

    def publish(self, attempts, *, producer=None):
        taken = attempts if self.accept is None else attempts[: self.accept]
        if self.accept is not None:
            self.accept -= len(taken)
        self.attempts.extend(taken)
        if len(taken) < len(attempts):
            return len(taken), ConnectionRefusedError("broker down")
        return len(taken), None

    def ids(self) -> list[str]:
        return [attempt.execution_id for attempt in self.attempts]


@pytest.fixture
def broker(monkeypatch):
    fake = Broker()
    monkeypatch.setattr(dispatch, "publish", fake.publish)
    monkeypatch.setattr(dispatch, "broker_queue_depth", lambda queue: fake.depth)
    monkeypatch.setattr(dispatch, "_enqueue_attempt", lambda execution_id, attempt, **options: None)
    return fake


def rows(trigger: Trigger) -> list[tuple]:
    """A trigger's executions as comparable tuples; a first attempt trigger_fire started counts as queued."""
    result = []
    for execution in trigger.executions.order_by("scheduled_for", "origin"):
        status = execution.status
        if status == ExecutionStatus.RUNNING and execution.attempts == 1:
            status = ExecutionStatus.QUEUED
        # Why it waits, where that is a rule (not "jitter", which only trigger_fire's claim writes down).
        wait = execution.wait_reason if execution.wait_reason in ("previous", "concurrency") else ""
        slot, origin = execution.scheduled_for, execution.origin
        result.append((slot, origin, status, execution.skip_reason, wait, execution.due_at))
    return result


def state(trigger: Trigger) -> tuple:
    trigger.refresh_from_db()
    return (trigger.run_count, trigger.last_run_at, trigger.next_run_at, trigger.completed_at is not None)


# --- One set of rules: dispatch_due (beat) and trigger_fire (stock beat's message) agree ------------------

SCENARIOS = {
    "on time": ({}, at(13, 0, 1), None),
    "beat down, catch-up latest": ({}, at(16, 0, 5), None),
    "beat down, catch-up skip": ({"catchup": "skip"}, at(16, 5), None),
    "beat down, catch-up all": ({"catchup": "all", "catchup_window_seconds": 7200}, at(16, 0, 5), None),
    "outside window": ({"execution_window": {"days": [0], "ranges": [["00:00", "01:00"]]}}, at(13, 0, 1), None),
    "max_runs reached": ({"max_runs": 1, "catchup": "all", "catchup_window_seconds": 86400}, at(15, 0, 1), None),
    "overlap skip while busy": ({}, at(14, 0, 1), "busy"),
    "overlap buffer_one while busy": ({"overlap": "buffer_one"}, at(15, 0, 1), "busy"),
    "overlap allow while busy": ({"overlap": "allow"}, at(14, 0, 1), "busy"),
    "jitter": ({"jitter_seconds": 30}, at(13, 0, 1), None),
    "once": ({"kind": "once", "cron": "", "run_at": at(13)}, at(13, 0, 1), None),
    "a missed slot was backfilled": ({"catchup": "all", "catchup_window_seconds": 86400}, at(16, 0, 1), "backfill"),
    "workflow inactive": ({}, at(13, 0, 1), "inactive"),
}


@pytest.mark.parametrize("name", SCENARIOS)
def test_dispatch_due__same_outcome_as_trigger_fire(name, workflow, broker, monkeypatch):
    """Beat's batched dispatch writes exactly the executions and trigger state that trigger_fire writes."""
    overrides, now, setup = SCENARIOS[name]
    monkeypatch.setattr(dispatch.random, "uniform", lambda low, high: high / 2)
    trigger = create(workflow, **overrides)
    if setup == "busy":
        services.trigger_run_now(trigger=trigger, now=at(12, 30))
        dispatch.trigger_fire(trigger_id=trigger.pk, scheduled_for=at(13), now=at(13))
    elif setup == "backfill":
        services.trigger_backfill(trigger=trigger, start=at(13, 59), end=at(14), now=at(14, 30))
    elif setup == "inactive":
        workflow.is_active = False
        workflow.save()
    before = transaction.savepoint()
    dispatch.trigger_fire(trigger_id=trigger.pk, scheduled_for=None, now=now)
    by_fire = (rows(trigger), state(trigger))
    transaction.savepoint_rollback(before)
    report = dispatch.dispatch_due(now=now)
    by_beat = (rows(trigger), state(trigger))
    assert report.triggers == 1
    assert by_beat == by_fire
    assert by_fire[0], "the scenario writes executions"


def test_dispatch_due__first_attempts_published_once_waiters_not(workflow, broker):
    """Beat publishes the first attempt of each execution that can start; one that waits behind another
    (catch-up 'all' runs one after another) is woken later, not sent now."""
    trigger = create(workflow, catchup="all", catchup_window_seconds=7200)
    dispatch.dispatch_due(now=at(14, 0, 5))
    first, second = Execution.objects.filter(trigger=trigger).order_by("scheduled_for")
    assert (first.scheduled_for, second.scheduled_for) == (at(13), at(14))
    assert second.wait_reason == "previous"
    assert broker.ids() == [str(first.pk)]
    sent_at = selectors.execution_sent_at
    assert sent_at(first) == at(14, 0, 5) and sent_at(second) is None
    # Marked sent by its batch's Handoff row; its own lease stays the hand-off's until recovery
    # finds it unclaimed (handoffs_settle), and is then a sent message's: the grace.
    assert (first.sent_at, first.lease_expires_at) == (None, at(14, 0, 5) + dispatch._handoff())
    assert dispatch.handoffs_settle(first.lease_expires_at - timedelta(seconds=1)) == 0
    assert dispatch.handoffs_settle(first.lease_expires_at) == 1
    first.refresh_from_db()
    assert (first.sent_at, first.lease_expires_at) == (at(14, 0, 5), at(14, 0, 5) + dispatch.lease_grace())


def test_dispatch_due__batches_until_nothing_due(user, broker):
    """More due triggers than a batch: every one is dispatched in the same call, once; the next call finds none."""
    workflow = WorkflowFactory(owner=user)
    triggers = [create(workflow, name=f"t{index}") for index in range(23)]
    report = dispatch.dispatch_due(now=at(13, 0, 1), batch_size=5)
    assert (report.triggers, report.sent, report.batches) == (23, 23, 5)
    assert Execution.objects.filter(scheduled_for=at(13)).count() == 23
    assert sorted(broker.ids()) == sorted(str(e.pk) for e in Execution.objects.all())
    assert dispatch.dispatch_due(now=at(13, 0, 2), batch_size=5).triggers == 0
    assert {state(trigger)[2] for trigger in triggers} == {at(14)}


def test_dispatch_due__paused_and_completed_triggers_not_in_due_index(workflow, broker):
    """Paused, completed and not-yet-due triggers are never claimed."""
    paused = create(workflow, name="paused")
    services.trigger_pause(trigger=paused, now=NOW)
    later = create(workflow, name="later", cron="0 18 * * *")
    done = create(workflow, name="done", kind="once", cron="", run_at=at(12, 30))
    dispatch.dispatch_due(now=at(12, 30, 1))
    assert state(done)[3] is True
    assert dispatch.dispatch_due(now=at(13, 0, 1)).triggers == 0
    assert not Execution.objects.filter(trigger__in=[paused, later]).exists()


def test_dispatch_due__publish_refused_leaves_ledger_and_stops(user, broker):
    """The broker takes 2 of 5: those are marked sent; the rest stay unsent with a hand-off lease, and
    no further batch is claimed (the due slots wait, so the catch-up policy applies later)."""
    workflow = WorkflowFactory(owner=user)
    for index in range(8):
        create(workflow, name=f"t{index}")
    broker.accept = 2
    report = dispatch.dispatch_due(now=at(13, 0, 1), batch_size=5)
    assert (report.triggers, report.sent, report.unsent, report.batches) == (5, 2, 3, 1)
    assert isinstance(report.error, ConnectionRefusedError)
    unsent = [e for e in Execution.objects.all() if selectors.execution_sent_at(e) is None]
    assert len(unsent) == 3
    assert {e.lease_expires_at for e in unsent} == {at(13, 0, 1) + dispatch._handoff()}
    assert Trigger.objects.filter(next_run_at=at(13)).count() == 3  # never claimed


@postgres_only
@pytest.mark.django_db(transaction=True)
def test_dispatch_due__burst_is_sent_from_a_thread_each_once_and_marked(broker, monkeypatch):
    """Outside a transaction on PostgreSQL, a burst (a full first batch) is published and marked sent on
    a thread of its own while the next batch is written: every due trigger still fires once, every
    first attempt is published once, and each execution is marked sent (its lease the grace)."""
    threads = set()
    real_send_ledgered = dispatch.send_ledgered

    def send_ledgered(attempts, **options):
        threads.add(threading.current_thread().name)
        return real_send_ledgered(attempts, **options)

    monkeypatch.setattr(dispatch, "send_ledgered", send_ledgered)
    workflow = WorkflowFactory(owner=UserFactory())
    for index in range(23):
        create(workflow, name=f"t{index}", overlap="allow")
    report = dispatch.dispatch_due(now=at(13, 0, 1), batch_size=5)
    assert (report.triggers, report.sent, report.unsent, report.batches) == (23, 23, 0, 5)
    assert report.error is None and report.refused == []
    assert [
        name for name in threads if name.startswith("dispatch-send")
    ] and threading.current_thread().name not in threads
    executions = list(Execution.objects.all())
    assert len(executions) == 23 and len({e.trigger_id for e in executions}) == 23
    assert sorted(broker.ids()) == sorted(str(e.pk) for e in executions)
    # Each batch marked sent by its one Handoff row (5 batches, 5 rows), not row by row.
    assert {(selectors.execution_sent_at(e), e.sent_at) for e in executions} == {(at(13, 0, 1), None)}
    assert len({e.handoff_id for e in executions}) == 5
    # Each batch wrote its PeriodicTasks' last run (stock DatabaseScheduler continues from it).
    tasks = PeriodicTask.objects.filter(pk__in=Trigger.objects.values_list("periodic_task_id", flat=True))
    assert sorted(tasks.values_list("last_run_at", "total_run_count")) == [(at(13), 1)] * 23
    assert dispatch.dispatch_due(now=at(13, 0, 2), batch_size=5).triggers == 0


@pytest.mark.django_db(transaction=True)
def test_dispatch_due__periodic_tasks_marked_after_the_batch_and_a_failure_there_changes_nothing(
    broker, monkeypatch, caplog
):
    """The periodic tasks' last run is written after each batch commits (on the send thread in a
    burst): a database error there is logged, and the batch's executions, sends and next slots stand."""
    marked = []
    real_mark = beat.tasks_mark_run

    def tasks_mark_run(fired):
        # The batch is committed by then: another connection sees its executions.
        marked.append((threading.current_thread().name, sum(map(len, fired.values()))))
        if len(marked) == 2:
            raise DatabaseError("periodic task table locked")
        real_mark(fired)

    monkeypatch.setattr(beat, "tasks_mark_run", tasks_mark_run)
    workflow = WorkflowFactory(owner=UserFactory())
    for index in range(12):
        create(workflow, name=f"t{index}", overlap="allow")
    with caplog.at_level("ERROR", logger="schedules.dispatch"):
        report = dispatch.dispatch_due(now=at(13, 0, 1), batch_size=5)
    assert (report.triggers, report.sent, report.error) == (12, 12, None)
    assert [count for _, count in marked] == [5, 5, 2]
    if connection.vendor == "postgresql":
        assert all(name.startswith("dispatch-send") for name, _ in marked[1:])
    assert "could not record the slots dispatched on 5 periodic tasks" in caplog.text
    assert Execution.objects.count() == 12 and not Trigger.objects.filter(next_run_at__lte=at(13)).exists()
    tasks = PeriodicTask.objects.filter(pk__in=Trigger.objects.values_list("periodic_task_id", flat=True))
    assert sorted(count for (count,) in tasks.values_list("total_run_count")) == [0] * 5 + [1] * 7


@pytest.mark.django_db(transaction=True)
def test_dispatch_due__runs_with_the_cyclic_collector_off_and_restores_it(broker, monkeypatch):
    """A burst's batches are written with Python's cyclic garbage collector paused (its objects all
    live until the batch is done); it is on again after, also when a batch fails."""
    import gc

    seen = []
    real_batch = dispatch._dispatch_batch

    def batch(**kwargs):
        seen.append(gc.isenabled())
        if len(seen) == 3:
            raise DatabaseError("connection lost")
        return real_batch(**kwargs)

    monkeypatch.setattr(dispatch, "_dispatch_batch", batch)
    workflow = WorkflowFactory(owner=UserFactory())
    for index in range(12):
        create(workflow, name=f"t{index}", overlap="allow")
    assert gc.isenabled()
    with pytest.raises(DatabaseError):
        dispatch.dispatch_due(now=at(13, 0, 1), batch_size=5)
    assert seen == [False, False, False]
    assert gc.isenabled()
    assert dispatch.dispatch_due(now=at(13, 0, 1), batch_size=5).triggers == 2
    assert seen == [False, False, False, False] and gc.isenabled()


@postgres_only
@pytest.mark.django_db(transaction=True)
def test_dispatch_due__burst_refused_on_the_thread_stops_after_one_more_batch(broker):
    """The broker takes 7 of a burst sent from the thread: the second batch is refused, the batch written
    meanwhile is not sent either, and no batch after it is claimed. Everything unsent is in the report
    (beat sends it first at its next tick) and in the database with its hand-off lease."""
    workflow = WorkflowFactory(owner=UserFactory())
    for index in range(23):
        create(workflow, name=f"t{index}", overlap="allow")
    broker.accept = 7
    report = dispatch.dispatch_due(now=at(13, 0, 1), batch_size=5)
    assert (report.triggers, report.sent, report.unsent, report.batches) == (15, 7, 8, 3)
    assert isinstance(report.error, ConnectionRefusedError)
    unsent = [e for e in Execution.objects.all() if selectors.execution_sent_at(e) is None]
    assert sorted(a.execution_id for a in report.refused) == sorted(str(e.pk) for e in unsent)
    assert len(unsent) == 8
    assert {e.lease_expires_at for e in unsent} == {at(13, 0, 1) + dispatch._handoff()}
    assert Trigger.objects.filter(next_run_at=at(13)).count() == 8  # never claimed


@postgres_only
@pytest.mark.django_db(transaction=True)
def test_dispatch_due__batches_go_on_from_the_last_claimed_trigger(broker):
    """Each batch reads the due index from the previous batch's last (next_run_at, id): a trigger another
    transaction holds is skipped, not waited for, and left for the next call; the others all fire once."""
    workflow = WorkflowFactory(owner=UserFactory())
    triggers = [create(workflow, name=f"t{index}", overlap="allow") for index in range(12)]
    held = triggers[6]
    with trigger_held(held.pk), CaptureQueriesContext(connection) as captured:
        report = dispatch.dispatch_due(now=at(13, 0, 1), batch_size=4)
    assert report.triggers == 11
    claims = [q["sql"] for q in captured.captured_queries if "SKIP LOCKED" in q["sql"]]
    row = '("schedules_trigger"."next_run_at", "schedules_trigger"."id") >'
    assert len(claims) == 3 and row not in claims[0] and all(row in sql for sql in claims[1:])
    assert set(Execution.objects.values_list("trigger_id", flat=True)) == {t.pk for t in triggers} - {held.pk}
    assert dispatch.dispatch_due(now=at(13, 0, 2), batch_size=4).triggers == 1
    assert Execution.objects.count() == 12


def test_new_execution__same_row_as_the_model_builds_from_keywords(trigger):
    """new_execution builds its row without Model.__init__ (a burst's speed): every column equals what
    Execution(**fields) gives, defaults included, and it saves like any other."""
    built = dispatch.new_execution(trigger, at(13), ExecutionOrigin.SCHEDULE, at(13, 0, 1))
    reference = Execution(
        id=built.pk,
        trigger=trigger,
        workflow=trigger.workflow,
        scheduled_for=at(13),
        origin=ExecutionOrigin.SCHEDULE,
        inputs={**trigger.workflow.default_inputs, **trigger.inputs},
        status=ExecutionStatus.QUEUED,
        created_at=at(13, 0, 1),
        due_at=at(13),
        lease_expires_at=at(13, 0, 1) + dispatch.lease_grace(),
    )
    for field in Execution._meta.concrete_fields:
        assert getattr(built, field.attname) == getattr(reference, field.attname), field.name
    assert built.trigger is trigger and built.workflow is trigger.workflow
    other = dispatch.new_execution(trigger, at(14), ExecutionOrigin.SCHEDULE, at(13, 0, 1))
    assert other.pk != built.pk and other.metadata is not built.metadata and other.inputs is not built.inputs
    built.save(force_insert=True)
    assert Execution.objects.get(pk=built.pk).scheduled_for == at(13)
    # It skips Model.__init__, so nothing may listen for an Execution's construction.
    assert not signals.pre_init.has_listeners(Execution) and not signals.post_init.has_listeners(Execution)


def test_mark_sent__leaves_a_later_attempt_parked_before_it_ran(queued):
    """In a burst a worker can claim attempt 1, fail and park attempt 2 (not sent, its own lease)
    before beat marks attempt 1 sent: that mark must not touch attempt 2."""
    parked_until = at(14)
    Execution.objects.filter(pk=queued.pk).update(
        attempts=1, status=ExecutionStatus.RETRYING, sent_at=None, lease_expires_at=parked_until
    )
    dispatch._mark_sent([dispatch.Attempt(str(queued.pk), 1)], at(13, 0, 2))
    execution = Execution.objects.get(pk=queued.pk)
    assert (execution.sent_at, execution.lease_expires_at) == (None, parked_until)
    dispatch._mark_sent([dispatch.Attempt(str(queued.pk), 2)], at(13, 0, 3))
    assert Execution.objects.get(pk=queued.pk).sent_at == at(13, 0, 3)


def test_leases_recover__sends_unsent_after_handoff_and_never_twice(user, broker):
    """A beat killed between its commit and its publish: the executions it wrote are sent by any beat
    once the hand-off lease runs out (not before), each once."""
    workflow = WorkflowFactory(owner=user)
    for index in range(3):
        create(workflow, name=f"t{index}")
    broker.accept = 0
    dispatch.dispatch_due(now=at(13, 0, 1))
    broker.accept = None
    handoff_end = at(13, 0, 1) + dispatch._handoff()
    assert dispatch.leases_recover(now=handoff_end - timedelta(seconds=1)).executions == 0
    report = dispatch.leases_recover(now=handoff_end)
    assert report.executions == 3 and len(broker.attempts) == 3
    assert not Execution.objects.filter(sent_at__isnull=True).exists()
    assert dispatch.leases_recover(now=handoff_end + timedelta(seconds=1)).executions == 0


def test_leases_recover__backlog_is_not_sent_twice(user, broker, monkeypatch):
    """Sent executions still waiting in a backlog past their lease are not re-sent while the queue has
    messages (their lease grows instead); once it drains, the ones still unclaimed are sent once more."""
    workflow = WorkflowFactory(owner=user)
    for index in range(20):
        create(workflow, name=f"t{index}")
    dispatch.dispatch_due(now=at(13, 0, 1))
    assert len(broker.attempts) == 20
    broker.depth = 15
    for seconds in range(10, 600, 10):
        report = dispatch.leases_recover(now=at(13, 0, 1) + timedelta(seconds=seconds))
        assert report.executions == 0
    assert len(broker.attempts) == 20
    # Workers ran 5 of them; then the queue drains: the other 15 were lost.
    monkeypatch.setattr(dispatch, "call_workflow", lambda call: ok())
    for execution in Execution.objects.order_by("pk")[:5]:
        claimed = dispatch.execution_claim(execution_id=execution.pk, attempt=1, now=at(13, 10))
        assert dispatch.execution_perform(execution=claimed).status == ExecutionStatus.SUCCEEDED
    broker.depth = 0
    report = dispatch.leases_recover(now=at(13, 20))
    assert report.executions == 15
    assert dispatch.leases_recover(now=at(13, 20, 1)).executions == 0


def test_dispatch_due__marks_a_batch_sent_with_one_handoff_row(user, broker, django_assert_num_queries):
    """A published batch is marked sent by one UPDATE of its Handoff row, not of each execution
    (every one of the execution table's indexes written again per row, in every burst)."""
    workflow = WorkflowFactory(owner=user)
    for index in range(6):
        create(workflow, name=f"t{index}")
    updates = []

    def watch(execute, sql, params, many, context):
        if sql.startswith("UPDATE"):
            updates.append(sql.split(" SET ")[0])
        return execute(sql, params, many, context)

    with connection.execute_wrapper(watch):
        report = dispatch.dispatch_due(now=at(13, 0, 1), batch_size=3)
    assert (report.sent, report.batches) == (6, 3)
    assert updates.count('UPDATE "schedules_handoff"') == 2
    assert 'UPDATE "schedules_execution"' not in updates
    handoffs = Handoff.objects.order_by("pk")
    assert [(h.created_at, h.sent_at) for h in handoffs] == [(at(13, 0, 1), at(13, 0, 1))] * 2
    assert sorted(Execution.objects.values_list("handoff_id", flat=True)) == sorted([h.pk for h in handoffs] * 3)


def test_leases_recover__parked_first_attempt_is_not_taken_for_sent(user, broker):
    """A first attempt parked by its claim (a concurrency limit) is back in the database, unsent: its
    batch's Handoff no longer speaks for it, so recovery sends it when its lease runs out."""
    workflow = WorkflowFactory(owner=user, max_concurrency=1)
    first, second = create(workflow, name="first", overlap="allow"), create(workflow, name="second", overlap="allow")
    dispatch.dispatch_due(now=at(13, 0, 1))
    running = dispatch.execution_claim(
        execution_id=Execution.objects.get(trigger=first).pk, attempt=1, now=at(13, 0, 2)
    )
    assert running is not None
    waiting = Execution.objects.get(trigger=second)
    assert dispatch.execution_claim(execution_id=waiting.pk, attempt=1, now=at(13, 0, 2)) is None
    waiting.refresh_from_db()
    assert (waiting.wait_reason, waiting.sent_at, waiting.handoff_id) == ("concurrency", None, None)
    assert selectors.execution_sent_at(waiting) is None
    broker.attempts.clear()
    Execution.objects.filter(pk=running.pk).update(lease_expires_at=at(14))  # still running
    report = dispatch.leases_recover(now=waiting.lease_expires_at)
    assert report.executions == 1 and broker.ids() == [str(waiting.pk)]


def test_handoffs_prune__deletes_only_rows_no_lease_can_need(user, broker, settings):
    """Handoff rows go once older than the longest hand-off lease (countdown max + hand-off) and a
    minute; an execution whose row is gone counts as unsent (sent again: a claim calls once)."""
    settings.SCHEDULER_COUNTDOWN_MAX_SECONDS = 300
    workflow = WorkflowFactory(owner=user)
    create(workflow)
    dispatch.dispatch_due(now=at(13, 0, 1))
    horizon = at(13, 0, 1) + timedelta(seconds=360) + dispatch._handoff()
    assert dispatch.handoffs_prune(horizon) == 0
    assert dispatch.handoffs_prune(horizon + timedelta(microseconds=1)) == 1
    assert not Handoff.objects.exists()
    execution = Execution.objects.get()
    assert execution.handoff_id is not None and selectors.execution_sent_at(execution) is None
    assert dispatch.leases_recover(now=horizon).executions == 1


@postgres_only
def test_leases_recover__reads_the_unfinished_lease_index(user, broker):
    """Recovery's looks (hand-offs to settle, stale leases) are served by the partial index over
    unfinished executions, which finished ones (nearly all of a long history) are not in: a
    filter that stopped implying its predicate would scan the whole table every second."""
    workflow = WorkflowFactory(owner=user)
    create(workflow)
    dispatch.dispatch_due(now=at(13, 0, 1))
    with CaptureQueriesContext(connection) as captured:
        dispatch.leases_recover(now=at(13, 5))
    looks = [q["sql"] for q in captured.captured_queries if '"lease_expires_at" <=' in q["sql"]]
    assert len(looks) >= 3  # the settle, the stale look, the locked read
    with connection.cursor() as cursor:
        for kind in ("seqscan", "bitmapscan"):
            cursor.execute(f"SET LOCAL enable_{kind} = off")
        for sql in looks:
            cursor.execute(f"EXPLAIN {sql}")
            plan = "\n".join(row[0] for row in cursor.fetchall())
            assert "execution_unfinished_lease" in plan, (sql, plan)


def test_leases_recover__message_older_than_visibility_timeout_is_resent(workflow, broker, settings):
    """A sent message waiting longer than the broker's visibility timeout is taken as lost even with a backlog."""
    settings.CELERY_VISIBILITY_TIMEOUT_SECONDS = 600
    create(workflow)
    dispatch.dispatch_due(now=at(13, 0, 1))
    broker.depth = 1000
    assert dispatch.leases_recover(now=at(13, 5)).executions == 0
    assert dispatch.leases_recover(now=at(13, 11)).executions == 1


def test_executions_recover__behind_system_gets_no_extra_work(user, broker, settings):
    """2 minutes behind with 200 triggers due at once: recovery runs every 10 s and adds nothing
    (no second copy of a queued message, no second dispatch of a slot)."""
    settings.SCHEDULER_MISSED_SLOT_GRACE_SECONDS = 90
    workflow = WorkflowFactory(owner=user)
    for index in range(200):
        create(workflow, name=f"t{index}")
    dispatch.dispatch_due(now=at(13, 0, 1))
    broker.depth = 200
    sent = len(broker.attempts)
    for seconds in range(10, 130, 10):
        report = dispatch.executions_recover(now=at(13, 0, 1) + timedelta(seconds=seconds))
        assert (report.executions, report.slots) == (0, 0)
    assert len(broker.attempts) == sent == 200
    assert Execution.objects.count() == 200


# --- Claim and record: the worker's path --------------------------------------------------------


def ok() -> CallResult:
    return CallResult(http_status=200, run_id="run-1", body_excerpt="{}", duration_ms=7)


@pytest.fixture
def queued(workflow, broker):
    trigger = create(workflow, overlap="allow")
    dispatch.dispatch_due(now=at(13, 0, 1))
    return Execution.objects.get(trigger=trigger)


def test_execution_claim__fast_path_is_one_read_and_one_update(queued, django_assert_num_queries):
    """The common claim is a read and a conditional UPDATE: no transaction, no lock held."""
    with django_assert_num_queries(2) as captured:
        claimed = dispatch.execution_claim(execution_id=queued.pk, attempt=1, now=at(13, 0, 2))
    assert claimed.status == ExecutionStatus.RUNNING and claimed.attempts == 1
    assert not any("FOR UPDATE" in query["sql"] or "SAVEPOINT" in query["sql"] for query in captured.captured_queries)


# The claim's and the outcome's UPDATE are built once (dispatch._update_execution), not by the ORM
# on each call: they must change exactly the rows the ORM's update would.

AHEAD_CASES = {
    # what else the trigger has -> whether it holds the 13:00 execution back (dispatch._ahead)
    "nothing": ([], False),
    "older running": ([{"slot": at(12), "status": "running"}], True),
    "older retrying": ([{"slot": at(12), "status": "retrying"}], True),
    "older queued slot": ([{"slot": at(12), "status": "queued"}], True),
    "older queued manual run": ([{"slot": at(12), "status": "queued", "origin": "manual"}], False),
    "older queued retry run": ([{"slot": at(12), "status": "queued", "origin": "retry"}], False),
    "older running manual run": ([{"slot": at(12), "status": "running", "origin": "manual"}], True),
    "older finished": ([{"slot": at(11), "status": "succeeded"}, {"slot": at(12), "status": "failed"}], False),
    "newer running": ([{"slot": at(14), "status": "running"}], False),
    "older running fallback": ([{"slot": at(12), "status": "running", "fallback": True}], False),
    "older running, other trigger": ([{"slot": at(12), "status": "running", "other": True}], False),
}


@pytest.mark.parametrize("case", list(AHEAD_CASES))
def test_update_execution__nothing_ahead_agrees_with_the_orm(workflow, case):
    others, held_back = AHEAD_CASES[case]
    trigger, other = create(workflow), create(workflow, name="Other")
    target = Execution.objects.create(trigger=trigger, workflow=workflow, scheduled_for=at(13))
    for spec in others:
        Execution.objects.create(
            trigger=other if spec.get("other") else trigger,
            workflow=workflow,
            scheduled_for=spec["slot"],
            status=spec["status"],
            origin=spec.get("origin", ExecutionOrigin.SCHEDULE),
            fallback_of=target if spec.get("fallback") else None,
        )
    orm = Execution.objects.filter(pk=target.pk, status="queued", attempts=0).filter(~Exists(dispatch._ahead(target)))
    assert orm.exists() is not held_back  # the case says what the ORM does

    changed = dispatch._update_execution(
        target.pk, where={"status": "queued", "attempts": 0}, values={"wait_reason": "x"}, nothing_ahead_of=target
    )

    assert changed == (0 if held_back else 1)
    assert Execution.objects.get(pk=target.pk).wait_reason == ("" if held_back else "x")


@pytest.mark.parametrize("where", [{"status": "queued", "attempts": 0}, {"status": "running", "attempts": 0}])
def test_update_execution__writes_what_the_orm_writes(workflow, where):
    """Every kind of value (text, number, datetime, JSON, NULL) lands as the ORM's update leaves
    it, and only where the row still holds ``where``."""
    trigger = create(workflow, overlap="allow")
    ours, theirs = (
        Execution.objects.create(
            trigger=trigger, workflow=workflow, scheduled_for=at(hour), due_at=at(12), lease_expires_at=at(12, 30)
        )
        for hour in (13, 14)
    )
    values = {
        "status": ExecutionStatus.SUCCEEDED,
        "attempts": 1,
        "finished_at": at(13, 0, 2) + timedelta(microseconds=123456),
        "http_status": 200,
        "run_id": "run-ü",
        "error": "",
        "metadata": {"attempts": [{"attempt": 1, "at": "2027-03-10T13:00:02"}], "note": "é \" ' %s"},
        "due_at": None,
        "duration_ms": 7,
    }
    changed = dispatch._update_execution(ours.pk, where=where, values=values)
    orm_changed = Execution.objects.filter(pk=theirs.pk, **where).update(**values)

    assert changed == orm_changed == (1 if where["status"] == "queued" else 0)
    ours.refresh_from_db()
    theirs.refresh_from_db()
    for name in [*values, "lease_expires_at"]:
        assert getattr(ours, name) == getattr(theirs, name), name
    if changed:
        assert (ours.metadata, ours.finished_at, ours.due_at) == (values["metadata"], values["finished_at"], None)


def test_read_with_related__is_the_orms_select_related_read(queued, django_assert_num_queries):
    """The claim's read (built once) gives what select_related("workflow", "trigger").get() gives:
    every column of the three models, converted alike, relations loaded, saved-state flags."""
    Execution.objects.filter(pk=queued.pk).update(
        metadata={"attempts": [{"attempt": 1}]}, inputs={"a": [1, "é"]}, jitter_seconds=1.5, due_at=at(13, 0, 1)
    )
    expected = Execution.objects.select_related("workflow", "trigger").get(pk=queued.pk)
    assert expected.workflow.secret  # an encrypted column, decrypted by its field on the way in

    with django_assert_num_queries(1):
        execution = dispatch._read_with_related(str(queued.pk))
        related = (execution.workflow, execution.trigger)

    for ours, theirs in ((execution, expected), (related[0], expected.workflow), (related[1], expected.trigger)):
        assert type(ours) is type(theirs)
        for model_field in type(ours)._meta.concrete_fields:
            name = model_field.attname
            assert getattr(ours, name) == getattr(theirs, name), f"{type(ours).__name__}.{name}"
            assert type(getattr(ours, name)) is type(getattr(theirs, name)), f"{type(ours).__name__}.{name}"
        assert (ours._state.adding, ours._state.db) == (False, theirs._state.db)


def test_read_with_related__missing_and_malformed_ids(db):
    assert dispatch._read_with_related("00000000-0000-0000-0000-000000000000") is None
    with pytest.raises(ValidationError):
        dispatch._read_with_related("not-an-id")


WAITING_CASES = {
    # the trigger's other execution (status, wait_reason) -> whether it counts as waiting
    "nobody": (None, False),
    "queued behind the previous one": (("queued", "overlap"), True),
    "retrying, held": (("retrying", "concurrency"), True),
    "queued, not waiting": (("queued", ""), False),
    "running": (("running", ""), False),
    "finished with a stale reason": (("succeeded", "overlap"), False),
}


@pytest.mark.parametrize("case", list(WAITING_CASES))
def test_waits_on_trigger__agrees_with_the_orm(workflow, case):
    other, waits = WAITING_CASES[case]
    trigger, elsewhere = create(workflow), create(workflow, name="Elsewhere")
    # Another trigger's waiting execution never counts.
    Execution.objects.create(trigger=elsewhere, workflow=workflow, scheduled_for=at(13), wait_reason="overlap")
    if other is not None:
        Execution.objects.create(
            trigger=trigger, workflow=workflow, scheduled_for=at(13), status=other[0], wait_reason=other[1]
        )
    orm = (
        Execution.objects.filter(trigger=trigger, status__in=[ExecutionStatus.QUEUED, ExecutionStatus.RETRYING])
        .exclude(wait_reason="")
        .exists()
    )
    assert orm is waits  # the case says what the ORM answers
    assert dispatch._waits_on_trigger(trigger.pk) is waits


def test_execution_claim__lost_race_falls_back_and_calls_nothing(queued, monkeypatch):
    """Two deliveries read the same queued row; the second one's UPDATE finds it started and calls nothing."""
    real = dispatch._startable_without_lock
    raced = []

    def other_worker_first(execution, attempt, now):
        if not raced:
            raced.append(dispatch._claim_locked(execution_id=execution.pk, attempt=1, now=now))
        return real(execution, attempt, now)

    monkeypatch.setattr(dispatch, "_startable_without_lock", other_worker_first)
    assert dispatch.execution_claim(execution_id=queued.pk, attempt=1, now=at(13, 0, 2)) is None
    assert raced[0] is not None
    assert Execution.objects.get(pk=queued.pk).attempts == 1


def test_record_success__one_update_then_nothing_when_nobody_waits(queued, monkeypatch, django_assert_num_queries):
    """A successful call is recorded with one UPDATE of the execution (plus a look for waiters);
    stats are folded later, the trigger row is not touched."""
    claimed = dispatch.execution_claim(execution_id=queued.pk, attempt=1, now=at(13, 0, 2))
    monkeypatch.setattr(dispatch, "call_workflow", lambda call: ok())
    with django_assert_num_queries(2) as captured:
        outcome = dispatch.execution_perform(execution=claimed)
    assert outcome.status == ExecutionStatus.SUCCEEDED
    assert not any("schedules_trigger" in query["sql"].split("FROM")[0] for query in captured.captured_queries)
    execution = Execution.objects.get(pk=queued.pk)
    assert (execution.status, execution.run_id, execution.counted) == (ExecutionStatus.SUCCEEDED, "run-1", False)


def test_wake_waiting__leaves_an_execution_claimed_since_it_was_read(queued, monkeypatch):
    """A finisher reads a waiting execution without a lock; if a worker claims it before the
    finisher's UPDATE, the running attempt keeps its lease and no second message goes out (an
    overwritten lease would have let recovery start a second, concurrent call)."""
    sent = []
    monkeypatch.setattr(dispatch, "_enqueue_attempt", lambda execution_id, attempt, **options: sent.append(attempt))
    stale = Execution.objects.get(pk=queued.pk)
    dispatch.dispatch_attempt(Execution.objects.get(pk=queued.pk), now=at(13, 0, 2), unlocked=True)
    assert sent == [1]  # not claimed yet: sent
    claimed = dispatch.execution_claim(execution_id=queued.pk, attempt=1, now=at(13, 0, 3))

    dispatch.dispatch_attempt(stale, now=at(13, 0, 4), unlocked=True)
    execution = Execution.objects.get(pk=queued.pk)
    assert (execution.status, execution.lease_expires_at) == (ExecutionStatus.RUNNING, claimed.lease_expires_at)
    assert sent == [1]


def test_record_success__after_takeover_keeps_the_other_outcome(queued, monkeypatch):
    """A worker whose lease ran out and whose execution was taken over does not overwrite the new attempt."""
    claimed = dispatch.execution_claim(execution_id=queued.pk, attempt=1, now=at(13, 0, 2))
    dispatch.leases_recover(now=claimed.lease_expires_at)  # its worker is presumed dead
    monkeypatch.setattr(dispatch, "call_workflow", lambda call: ok())
    assert dispatch.execution_perform(execution=claimed).status == ExecutionStatus.RETRYING
    assert Execution.objects.get(pk=queued.pk).status == ExecutionStatus.RETRYING


def test_record_success__resets_failures_and_notifies_recovery(workflow, broker, monkeypatch):
    """After failed executions, a success resets the count (one locked update of the trigger)."""
    trigger = create(workflow, overlap="allow", max_attempts=1)
    dispatch.dispatch_due(now=at(13, 0, 1))
    first = dispatch.execution_claim(execution_id=Execution.objects.get().pk, attempt=1, now=at(13, 0, 2))
    monkeypatch.setattr(dispatch, "call_workflow", lambda call: (_ for _ in ()).throw(WorkflowRejected("HTTP 404")))
    dispatch.execution_perform(execution=first)
    assert Trigger.objects.get(pk=trigger.pk).consecutive_failures == 1
    dispatch.dispatch_due(now=at(14, 0, 1))
    second = Execution.objects.get(scheduled_for=at(14))
    claimed = dispatch.execution_claim(execution_id=second.pk, attempt=1, now=at(14, 0, 2))
    monkeypatch.setattr(dispatch, "call_workflow", lambda call: ok())
    dispatch.execution_perform(execution=claimed)
    assert Trigger.objects.get(pk=trigger.pk).consecutive_failures == 0


def _ends(execution_id, attempt: int, now: datetime, outcome, monkeypatch) -> None:
    claimed = dispatch.execution_claim(execution_id=execution_id, attempt=attempt, now=now)
    monkeypatch.setattr(dispatch, "call_workflow", outcome)
    dispatch.execution_perform(execution=claimed)


def _fails(call):
    raise WorkflowRejected("HTTP 404")


def test_record_success__of_an_older_slot_keeps_the_later_slots_failures(workflow, broker, monkeypatch):
    """Failures in a row go by slot: 13:00's call succeeding after 14:00's failed (a late retry, a
    slow worker) does not reset the count nor send "recovered"; 15:00's success does."""
    events = []
    monkeypatch.setattr(dispatch, "_notify", lambda trigger, event, execution, **kw: events.append(event))
    trigger = create(workflow, overlap="allow", max_attempts=1)
    dispatch.dispatch_due(now=at(13, 0, 1))
    older = Execution.objects.get(scheduled_for=at(13))
    dispatch.dispatch_due(now=at(14, 0, 1))
    _ends(Execution.objects.get(scheduled_for=at(14)).pk, 1, at(14, 0, 2), _fails, monkeypatch)
    assert Trigger.objects.get(pk=trigger.pk).consecutive_failures == 1

    _ends(older.pk, 1, at(14, 0, 3), lambda call: ok(), monkeypatch)
    assert Execution.objects.get(pk=older.pk).status == ExecutionStatus.SUCCEEDED
    assert Trigger.objects.get(pk=trigger.pk).consecutive_failures == 1
    assert events == ["failed"]

    dispatch.dispatch_due(now=at(15, 0, 1))
    _ends(Execution.objects.get(scheduled_for=at(15)).pk, 1, at(15, 0, 2), lambda call: ok(), monkeypatch)
    assert Trigger.objects.get(pk=trigger.pk).consecutive_failures == 0
    assert events == ["failed", "recovered"]


def test_record_failure__of_an_older_slot_after_a_later_success_is_not_in_a_row(workflow, broker, monkeypatch):
    """13:00 failing after 14:00 succeeded is told (notice, fallback) but starts no count: with
    pause_after_failures=1 the trigger stays enabled; a failure of the newest slot then pauses it."""
    events = []
    monkeypatch.setattr(dispatch, "_notify", lambda trigger, event, execution, **kw: events.append(event))
    trigger = create(workflow, overlap="allow", max_attempts=1, pause_after_failures=1)
    dispatch.dispatch_due(now=at(13, 0, 1))
    older = Execution.objects.get(scheduled_for=at(13))
    dispatch.dispatch_due(now=at(14, 0, 1))
    _ends(Execution.objects.get(scheduled_for=at(14)).pk, 1, at(14, 0, 2), lambda call: ok(), monkeypatch)

    _ends(older.pk, 1, at(14, 0, 3), _fails, monkeypatch)
    assert Execution.objects.get(pk=older.pk).status == ExecutionStatus.FAILED
    trigger.refresh_from_db()
    assert (trigger.consecutive_failures, trigger.enabled) == (0, True)
    assert events == ["failed"]

    dispatch.dispatch_due(now=at(15, 0, 1))
    _ends(Execution.objects.get(scheduled_for=at(15)).pk, 1, at(15, 0, 2), _fails, monkeypatch)
    trigger.refresh_from_db()
    assert (trigger.consecutive_failures, trigger.enabled) == (1, False)
    assert events == ["failed", "failed", "auto_paused"]


# --- Deadlocks ----------------------------------------------------------------------------------


@postgres_only
@pytest.mark.django_db(transaction=True)
def test_execution_claim__does_not_lock_the_trigger_row(broker):
    """Claiming locks only the execution: a claim completes while another transaction holds the trigger
    (before, select_related + FOR UPDATE locked the trigger too, and deadlocked with the recording side)."""
    workflow = WorkflowFactory(owner=UserFactory())
    trigger = create(workflow, overlap="allow", max_attempts=2)
    dispatch.dispatch_due(now=at(13, 0, 1))
    execution = Execution.objects.get()
    Execution.objects.filter(pk=execution.pk).update(due_at=at(13, 0, 30))  # not due: the locked path
    with trigger_held(trigger.pk):
        with connection.cursor() as cursor:
            cursor.execute("SET lock_timeout = '2s'")
        try:
            assert dispatch.execution_claim(execution_id=execution.pk, attempt=1, now=at(13, 0, 2)) is None
            assert dispatch.execution_claim(execution_id=execution.pk, attempt=1, now=at(13, 0, 31)) is not None
        finally:
            with connection.cursor() as cursor:
                cursor.execute("SET lock_timeout = 0")


@postgres_only
@pytest.mark.django_db(transaction=True)
def test_trigger_backfill__does_not_lock_the_workflow_row(broker):
    """Backfill locks only its trigger: it completes while another transaction holds the workflow's
    row FOR KEY SHARE, as inserting any row that references the workflow does (a stats fold's new
    row). Before, select_related + FOR UPDATE locked the workflow too, and a fold deadlocked with
    a backfill (seen in CI: the backfill API answered 500)."""
    workflow = WorkflowFactory(owner=UserFactory())
    trigger = create(workflow)
    with row_held('SELECT 1 FROM "workflows_workflow" WHERE "id" = %s FOR KEY SHARE', [workflow.pk]):
        with connection.cursor() as cursor:
            cursor.execute("SET lock_timeout = '2s'")
        try:
            report = services.trigger_backfill(trigger=trigger, start=at(12, 30), end=at(14), now=at(14, 30))
        finally:
            with connection.cursor() as cursor:
                cursor.execute("SET lock_timeout = 0")
    assert (report.created, report.existing) == (2, 0)
    assert sorted(Execution.objects.values_list("scheduled_for", flat=True)) == [at(13), at(14)]


@postgres_only
@pytest.mark.django_db(transaction=True)
def test_record_failure__deadlock_victim_is_retried_and_recorded_once(broker, monkeypatch, caplog):
    """A real deadlock: the recording side holds the execution and waits for the trigger, which another
    transaction holds while it then asks for the execution. PostgreSQL aborts the recording side (it
    waited first); it is run again, so the failure is recorded exactly once and the endpoint is not
    called again."""
    workflow = WorkflowFactory(owner=UserFactory())
    trigger = create(workflow, overlap="allow", max_attempts=1)
    dispatch.dispatch_due(now=at(13, 0, 1))
    execution = dispatch.execution_claim(execution_id=Execution.objects.get().pk, attempt=1, now=at(13, 0, 2))
    calls = []

    def rejected(call):
        calls.append(call)
        raise WorkflowRejected("HTTP 404", http_status=404)

    monkeypatch.setattr(dispatch, "call_workflow", rejected)
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        recorder_pid = cursor.fetchone()[0]
    other_has_trigger, recorder_asks_trigger = threading.Event(), threading.Event()
    real = dispatch._count_failure

    def count_failure_once_the_other_holds_the_trigger(execution_arg, now):
        if not recorder_asks_trigger.is_set():
            other_has_trigger.wait(10)
            recorder_asks_trigger.set()
        return real(execution_arg, now)

    monkeypatch.setattr(dispatch, "_count_failure", count_failure_once_the_other_holds_the_trigger)
    errors = []

    def other():
        try:
            with transaction.atomic():
                Trigger.objects.select_for_update().get(pk=trigger.pk)
                other_has_trigger.set()
                recorder_asks_trigger.wait(10)
                with connection.cursor() as cursor:
                    for _ in range(200):  # until the recorder is queued for the trigger's lock
                        cursor.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", [recorder_pid])
                        if cursor.fetchone()[0] == "Lock":
                            break
                        threading.Event().wait(0.02)
                Execution.objects.filter(pk=execution.pk).update(error="touched by the other transaction")
        except OperationalError as exc:
            errors.append(exc)
        finally:
            connection.close()

    thread = threading.Thread(target=other)
    thread.start()
    with caplog.at_level("WARNING", logger="schedules.dispatch"):
        outcome = dispatch.execution_perform(execution=execution)
    thread.join()
    assert "_record_failure: deadlock victim" in caplog.text
    assert errors == []
    assert outcome.status == ExecutionStatus.FAILED
    assert len(calls) == 1
    assert Trigger.objects.get(pk=trigger.pk).consecutive_failures == 1
    assert Execution.objects.get(pk=execution.pk).status == ExecutionStatus.FAILED


def test_retry_on_deadlock__retries_only_retryable_errors_outside_a_transaction(monkeypatch):
    """A deadlock victim is run again; other errors, and victims inside an outer transaction, are raised."""
    monkeypatch.setattr(dispatch.time, "sleep", lambda seconds: None)

    class Deadlock(Exception):
        sqlstate = "40P01"

    def deadlock() -> OperationalError:
        error = OperationalError("deadlock detected")
        error.__cause__ = Deadlock()
        return error

    attempts = []

    @dispatch.retry_on_deadlock
    def flaky():
        attempts.append(1)
        if len(attempts) < 3:
            raise deadlock()
        return "done"

    assert flaky() == "done" and len(attempts) == 3

    @dispatch.retry_on_deadlock
    def other_error():
        raise OperationalError("disk full")

    with pytest.raises(OperationalError, match="disk full"):
        other_error()


# --- Folded stats -------------------------------------------------------------------------------


def test_stats_fold__counts_each_finished_execution_once(workflow, broker, monkeypatch):
    """Finished executions are counted in batches, each once; readers see them before the fold too."""
    trigger = create(workflow, overlap="allow", catchup="latest")
    dispatch.dispatch_due(now=at(15, 0, 1))  # 13:00 and 14:00 missed (skipped), 15:00 queued
    execution = dispatch.execution_claim(
        execution_id=Execution.objects.get(status=ExecutionStatus.QUEUED).pk, attempt=1, now=at(15, 0, 2)
    )
    monkeypatch.setattr(dispatch, "call_workflow", lambda call: ok())
    dispatch.execution_perform(execution=execution)
    before = selectors.trigger_stats(trigger, now=at(15, 1))
    assert not ExecutionStats.objects.exists()
    assert (before["total"], before["succeeded"], before["skipped"]) == (3, 1, 2)
    assert services.stats_fold(limit=2) == 3
    assert services.stats_fold() == 0
    after = selectors.trigger_stats(trigger, now=at(15, 1))
    assert {key: after[key] for key in ("total", "succeeded", "skipped", "avg_duration_ms")} == {
        key: before[key] for key in ("total", "succeeded", "skipped", "avg_duration_ms")
    }
    assert ExecutionStats.objects.get(trigger=trigger).total == 3


def test_executions_prune__folds_before_deleting(workflow, broker, settings):
    """Pruning counts what was not counted yet first, so the stats keep every execution it deletes."""
    settings.SCHEDULER_KEEP_SUCCEEDED = 1
    settings.SCHEDULER_RETENTION_DAYS = 0
    trigger = create(workflow, catchup="all", catchup_window_seconds=1)
    dispatch.dispatch_due(now=at(18, 0, 1))  # 13:00 to 17:00 missed, 18:00 queued
    assert Execution.objects.filter(skip_reason=SkipReason.MISSED).count() == 5
    deleted = services.executions_prune(now=at(18, 1))
    assert deleted == 4
    assert ExecutionStats.objects.get(trigger=trigger).skipped == 5
    assert selectors.trigger_stats(trigger, now=at(18, 1))["skipped"] == 5
    assert Execution.objects.filter(origin=ExecutionOrigin.CATCHUP).count() == 1


def test_triggers_with_last_status__finished_executions_include_the_unfolded(workflow, broker):
    """The lists' finished_executions equals the stats' total before and after the fold."""
    trigger = create(workflow, catchup="latest")
    dispatch.dispatch_due(now=at(15, 0, 1))  # 13:00 and 14:00 recorded missed, 15:00 queued
    listed = selectors.triggers_with_last_status(Trigger.objects.filter(pk=trigger.pk)).get()
    assert listed.finished_executions == selectors.trigger_stats(trigger, now=at(15, 1))["total"] == 2
    services.stats_fold()
    listed = selectors.triggers_with_last_status(Trigger.objects.filter(pk=trigger.pk)).get()
    assert listed.finished_executions == 2 and ExecutionStats.objects.get(trigger=trigger).total == 2


def test_insert_executions__writes_what_save_writes(workflow, broker):
    """The batch insert (COPY on PostgreSQL, bulk_create elsewhere) stores every column as save() does."""
    trigger = create(workflow, jitter_seconds=30, inputs={"nested": {"a": [1, 2]}, "flag": True})
    fast = dispatch.new_execution(trigger, at(13), ExecutionOrigin.SCHEDULE, at(13, 0, 1))
    slow = dispatch.new_execution(trigger, at(14), ExecutionOrigin.SCHEDULE, at(13, 0, 1))
    for execution in (fast, slow):
        execution.metadata = {"older_missed_slots_not_recorded": True, "text": "é ✓ \\\\ \\t"}
        execution.jitter_seconds, execution.wait_reason, execution.error = 12.5, "previous", "line 1\nline 2"
    dispatch._insert_executions([fast])
    slow.save(force_insert=True)
    assert not fast._state.adding
    stored = {row["id"]: row for row in Execution.objects.values()}
    differs = {"id", "scheduled_for", "due_at"}
    assert {k: v for k, v in stored[fast.pk].items() if k not in differs} == {
        k: v for k, v in stored[slow.pk].items() if k not in differs
    }
    assert stored[fast.pk]["scheduled_for"] == at(13) and stored[fast.pk]["due_at"] == fast.due_at
