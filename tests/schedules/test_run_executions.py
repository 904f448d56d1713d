"""Several attempts per message: how beat groups a burst (dispatch.message_groups, publish) and how a
worker runs such a message (tasks.run_executions -> dispatch.executions_run)."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from django.db import OperationalError, connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from kombu import Connection

from schedules import dispatch, services, tasks, timing
from schedules.models import Execution, ExecutionStatus, Trigger
from workflows.client import CallResult
from workflows.exceptions import WorkflowRejected
from workflows.models import Workflow

HOURLY = "0 * * * *"


def attempts(n: int, queue: str = "normal", countdown: float | None = None) -> list[dispatch.Attempt]:
    return [dispatch.Attempt(f"{queue}-{countdown}-{index}", 1, queue, countdown) for index in range(n)]


# --- Grouping --------------------------------------------------------------------------------------


def test_message_groups__a_burst_fans_out_then_fills_messages(settings):
    """At least SCHEDULER_MESSAGE_FANOUT messages per queue, at most SCHEDULER_EXECUTIONS_PER_MESSAGE
    attempts each, in order; a few attempts go one per message."""
    settings.SCHEDULER_MESSAGE_FANOUT = 4
    settings.SCHEDULER_EXECUTIONS_PER_MESSAGE = 3
    few = attempts(4)
    assert dispatch.message_groups(few) == [[attempt] for attempt in few]
    some = attempts(7)
    assert dispatch.message_groups(some) == [some[0:2], some[2:4], some[4:6], some[6:7]]
    many = attempts(20)
    groups = dispatch.message_groups(many)
    assert [len(group) for group in groups] == [3, 3, 3, 3, 3, 3, 2]
    assert [attempt for group in groups for attempt in group] == many


def test_message_groups__queues_and_countdowns_never_share_a_message(settings):
    """A message goes to one queue with one countdown: attempts differing in either are in different messages."""
    settings.SCHEDULER_MESSAGE_FANOUT = 1
    settings.SCHEDULER_EXECUTIONS_PER_MESSAGE = 100
    high, normal, later = attempts(3, "high"), attempts(3), attempts(3, countdown=5.0)
    mixed = [item for triple in zip(high, normal, later, strict=True) for item in triple]
    assert dispatch.message_groups(mixed) == [high, normal, later]


def test_publish__a_burst_reaches_the_queue_as_run_executions(settings):
    """On a real kombu transport: grouped attempts arrive as run_executions(attempts=[[id, n], ...]),
    a lone one as run_execution; grouped=False sends every attempt in a message of its own."""
    settings.SCHEDULER_MESSAGE_FANOUT = 2
    settings.SCHEDULER_EXECUTIONS_PER_MESSAGE = 10
    burst = attempts(5) + [dispatch.Attempt("h-1", 1, "high")]
    with Connection("memory://") as broker:
        queues = {name: broker.SimpleQueue(name) for name in ("high", "normal")}
        assert dispatch.publish(burst, producer=broker.Producer()) == (6, None)
        assert dispatch.publish(burst[:2], producer=broker.Producer(), grouped=False) == (2, None)
        received = {name: [] for name in queues}
        for name, queue in queues.items():
            while queue.qsize():
                message = queue.get(timeout=1)
                received[name].append((message.headers["task"], message.payload[1]))
                message.ack()
    ids = [[attempt.execution_id, 1] for attempt in burst[:5]]
    assert received["normal"] == [
        (tasks.run_executions.name, {"attempts": ids[0:3]}),
        (tasks.run_executions.name, {"attempts": ids[3:5]}),
        (tasks.run_execution.name, {"execution_id": ids[0][0], "attempt": 1}),
        (tasks.run_execution.name, {"execution_id": ids[1][0], "attempt": 1}),
    ]
    assert received["high"] == [(tasks.run_execution.name, {"execution_id": "h-1", "attempt": 1})]


# --- Running a message -----------------------------------------------------------------------------


@pytest.fixture
def published(monkeypatch):
    """What the dispatch path hands the broker: (attempt, grouped) per attempt; a single send as
    (execution id, attempt)."""
    sent: list[tuple] = []

    def publish(batch, *, producer=None, grouped=True):
        sent.extend((attempt, grouped) for attempt in batch)
        return len(batch), None

    monkeypatch.setattr(dispatch, "publish", publish)
    monkeypatch.setattr(
        dispatch, "_enqueue_attempt", lambda execution_id, attempt, **options: sent.append((str(execution_id), attempt))
    )
    return sent


def called(calls) -> list[str]:
    """The executions called, in order."""
    return [call.payload["execution_id"] for call in calls["calls"]]


def ok() -> CallResult:
    return CallResult(http_status=200, run_id="", body_excerpt="{}", duration_ms=3)


def due_burst(workflow, n: int, published, **overrides) -> list[str]:
    """``n`` triggers whose latest slot is due, dispatched as beat does: their execution ids, in order."""
    created = timezone.now() - timedelta(hours=2)
    for index in range(n):
        fields = {"owner": workflow.owner, "workflow": workflow, "name": f"t{index}", "kind": "cron", "cron": HOURLY}
        trigger = services.trigger_create(**{**fields, **overrides}, now=created)
        # As if beat had fired every slot before: the latest one is due.
        slot = timing.latest_slot_at_or_before(trigger.cadence, timezone.now())
        Trigger.objects.filter(pk=trigger.pk).update(next_run_at=slot)
    report = dispatch.dispatch_due()
    assert report.executions == n
    ids = [attempt.execution_id for attempt, _ in published]
    published.clear()
    return ids


def test_run_executions__runs_each_attempt_once_in_order(workflow, calls, published):
    """Each execution is claimed and called in the message's order and its outcome recorded; a
    failure does not stop the rest; a second delivery of the message calls nothing."""
    ids = due_burst(workflow, 3, published)
    calls["answers"] = [ok(), WorkflowRejected("HTTP 404", http_status=404), ok()]
    summary = tasks.run_executions(attempts=[[execution_id, 1] for execution_id in ids])
    assert called(calls) == ids
    assert summary == {"attempts": 3, "statuses": {"succeeded": 2, "failed": 1}, "skipped": 0, "handed_back": 0}
    statuses = dict(Execution.objects.values_list("pk", "status"))
    assert [statuses[uuid] for uuid in map(type(next(iter(statuses))), ids)] == ["succeeded", "failed", "succeeded"]
    again = tasks.run_executions(attempts=[[execution_id, 1] for execution_id in ids])
    assert again == {"attempts": 3, "statuses": {}, "skipped": 3, "handed_back": 0}
    assert len(called(calls)) == 3


def test_run_executions__unknown_and_finished_executions_are_skipped(workflow, calls, published):
    """An id that is gone or is no UUID, and an execution another message already ran, are skipped;
    the rest run (an id is read however its UUID is spelled)."""
    ids = due_burst(workflow, 2, published)
    tasks.run_execution(execution_id=ids[0], attempt=1)
    summary = tasks.run_executions(
        attempts=[["00000000-0000-0000-0000-000000000000", 1], ["not-a-uuid", 1], [ids[0], 1], [ids[1].upper(), 1]]
    )
    assert summary["statuses"] == {"succeeded": 1} and summary["skipped"] == 3
    assert called(calls) == ids


def test_run_executions__costs_two_statements_per_execution(workflow, calls, published):
    """Nobody waiting: one read for the message, a claim and an outcome per execution, one look for waiters."""
    ids = due_burst(workflow, 5, published)
    with CaptureQueriesContext(connection) as queries:
        summary = tasks.run_executions(attempts=[[execution_id, 1] for execution_id in ids])
    assert summary["statuses"] == {"succeeded": 5}
    updates = [query["sql"] for query in queries if query["sql"].startswith("UPDATE")]
    assert len(updates) == 10, updates
    assert len(queries) == 12, [query["sql"][:80] for query in queries]


def test_run_executions__sends_the_rest_back_when_its_time_is_up_and_the_queue_is_empty(
    workflow, calls, published, settings, monkeypatch
):
    """Past SCHEDULER_MESSAGE_SECONDS, with nothing waiting in the queue (other workers may be
    idle), the attempts not started go back one per message to their trigger's queue, unclaimed;
    the one started first is finished."""
    settings.SCHEDULER_MESSAGE_SECONDS = 0
    looked = []
    monkeypatch.setattr(dispatch, "broker_queue_depth", lambda queue: looked.append(queue) or 0)
    ids = due_burst(workflow, 3, published, priority="high")
    summary = tasks.run_executions(attempts=[[execution_id, 1] for execution_id in ids])
    assert summary == {"attempts": 3, "statuses": {"succeeded": 1}, "skipped": 0, "handed_back": 2}
    assert looked == ["high"]
    assert called(calls) == ids[:1]
    assert [(attempt.execution_id, attempt.attempt, attempt.queue, grouped) for attempt, grouped in published] == [
        (ids[1], 1, "high", False),
        (ids[2], 1, "high", False),
    ]
    assert set(Execution.objects.filter(pk__in=ids[1:]).values_list("status", "attempts")) == {("queued", 0)}


def test_run_executions__goes_on_while_the_queue_has_a_backlog(workflow, calls, published, settings, monkeypatch):
    """Past its time with messages waiting in the queue (every worker busy), the message goes on,
    reading the rest afresh: a workflow deactivated meanwhile is not called again."""
    settings.SCHEDULER_MESSAGE_SECONDS = 0
    looked = []
    monkeypatch.setattr(dispatch, "broker_queue_depth", lambda queue: looked.append(queue) or 40)
    ids = due_burst(workflow, 3, published)
    original = dispatch.execution_perform

    def perform_then_deactivate(*, execution, woken=None):
        outcome = original(execution=execution, woken=woken)
        Workflow.objects.filter(pk=workflow.pk).update(is_active=False)
        return outcome

    monkeypatch.setattr(dispatch, "execution_perform", perform_then_deactivate)
    summary = tasks.run_executions(attempts=[[execution_id, 1] for execution_id in ids])
    assert summary == {"attempts": 3, "statuses": {"succeeded": 1}, "skipped": 2, "handed_back": 0}
    assert called(calls) == ids[:1]
    assert looked == ["normal", "normal"]
    assert published == []
    assert set(Execution.objects.filter(pk__in=ids[1:]).values_list("status", "error")) == {
        ("failed", "workflow is not active")
    }


def test_run_executions__wakes_the_waiting_at_the_end(workflow, published, monkeypatch):
    """A slot that fell due while the one before it was running waits for it (overlap buffer_one);
    it is sent once that one succeeds, by the message's single look for waiters."""
    ids = due_burst(workflow, 1, published, overlap="buffer_one", cron="* * * * *")
    next_slot = Trigger.objects.get().next_run_at
    waiting = []

    def call_while_next_slot_falls_due(call):
        report = dispatch.dispatch_due(now=next_slot + timedelta(seconds=1))
        waiting.extend(Execution.objects.exclude(pk=ids[0]).values_list("pk", "wait_reason"))
        assert report.executions == 1 and published == []  # it waits, unsent
        return ok()

    monkeypatch.setattr(dispatch, "call_workflow", call_while_next_slot_falls_due)
    tasks.run_executions(attempts=[[ids[0], 1]])
    assert [reason for _, reason in waiting] == ["previous"]
    assert published == [(str(waiting[0][0]), 1)]


def test_run_executions__database_unreachable_sends_the_message_again(workflow, calls, published, monkeypatch):
    """A database outage mid-message: the whole message is retried soon (what ran is claimed and
    is not run again), and after a few tries left to recovery."""
    from celery.exceptions import Retry

    def down(pairs):
        raise OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(dispatch, "executions_run", down)
    retried = []
    monkeypatch.setattr(
        tasks.run_executions, "retry", lambda exc, countdown: retried.append(countdown) or Retry(exc=exc)
    )
    with pytest.raises(Retry):
        tasks.run_executions(attempts=[["00000000-0000-0000-0000-000000000000", 1]])
    assert len(retried) == 1 and 0.5 <= retried[0] <= 1.0
    tasks.run_executions.push_request(retries=tasks._CLAIM_RETRIES)
    try:
        with pytest.raises(OperationalError):
            tasks.run_executions.run(attempts=[["00000000-0000-0000-0000-000000000000", 1]])
    finally:
        tasks.run_executions.pop_request()
    assert len(retried) == 1


def test_run_executions__task_name_is_stable():
    assert tasks.run_executions.name == "schedules.run_executions"
    assert ExecutionStatus.SUCCEEDED == "succeeded"


def test_broker_queue_depth__an_empty_queue_is_zero_not_unknown():
    """On the configured broker (Redis in CI's PostgreSQL phase, the filesystem one otherwise) an
    empty queue reads 0. Redis has no key for an empty list and answered NOT_FOUND, which read as
    "cannot say": a message past its time then never sent its rest back, and /metrics showed the
    broker down whenever every queue was empty."""
    queue = f"empty-{uuid.uuid4().hex[:8]}"
    assert dispatch.broker_queue_depth(queue) == 0


@pytest.mark.parametrize(
    ("reason", "limits", "woken"),
    [
        ("owner_concurrency", {"owner": 1}, True),
        ("owner_concurrency", {}, False),
        ("concurrency", {"workflow": 1}, True),
        ("concurrency", {}, False),
    ],
)
def test_waiting_wake__wakes_who_waits_on_the_owner_or_workflow_limit(
    workflow, published, settings, reason, limits, woken
):
    """The message's one look covers the finished executions' owners and workflows when they have a
    concurrency limit: an execution of another trigger waiting on that limit is sent; without the
    limit nobody is looked for there."""
    settings.SCHEDULER_OWNER_MAX_CONCURRENCY = limits.get("owner", 0)
    Workflow.objects.filter(pk=workflow.pk).update(max_concurrency=limits.get("workflow", 0))
    finished_id, waiting_id = due_burst(workflow, 2, published)
    Execution.objects.filter(pk=finished_id).update(status=ExecutionStatus.SUCCEEDED)
    Execution.objects.filter(pk=waiting_id).update(wait_reason=reason, sent_at=None)
    finished = Execution.objects.select_related("workflow", "trigger").get(pk=finished_id)
    dispatch.waiting_wake([finished], timezone.now())
    assert published == ([(waiting_id, 1)] if woken else [])
