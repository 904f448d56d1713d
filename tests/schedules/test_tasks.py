"""schedules.tasks, called directly: thin wrappers over the services that return short summaries."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from schedules import dispatch, services, tasks, timing
from schedules.models import Execution, ExecutionStatus, Trigger
from workflows.client import CallResult
from workflows.exceptions import WorkflowRejected, WorkflowUnavailable


@pytest.fixture
def enqueued(monkeypatch):
    sent = []
    monkeypatch.setattr(
        dispatch, "_enqueue_attempt", lambda *args, countdown=None, **options: sent.append((args, countdown))
    )

    def publish(attempts, *, producer=None):
        sent.extend(((message.execution_id, message.attempt), message.countdown) for message in attempts)
        return len(attempts), None

    monkeypatch.setattr(dispatch, "publish", publish)
    monkeypatch.setattr(dispatch, "broker_queue_depth", lambda queue: 0)
    return sent


def ok(run_id: str = "run-1") -> CallResult:
    return CallResult(http_status=200, run_id=run_id, body_excerpt="{}", duration_ms=3)


@pytest.fixture
def minutely(workflow):
    """A trigger that fires every minute, created five minutes ago, and its latest slot."""
    trigger = services.trigger_create(
        owner=workflow.owner,
        workflow=workflow,
        name="Every minute",
        kind="cron",
        cron="* * * * *",
        now=timezone.now() - timedelta(minutes=5),
    )
    slot = timing.latest_slot_at_or_before(trigger.cadence, timezone.now())
    # As if beat had fired every slot since: this one is the next expected, nothing was missed.
    Trigger.objects.filter(pk=trigger.pk).update(next_run_at=slot)
    trigger.refresh_from_db()
    return trigger, slot


def test_fire_trigger__claims_slot_and_calls_once(minutely, calls, enqueued):
    """fire_trigger creates the slot's execution, makes the first call and reports its outcome."""
    trigger, slot = minutely
    calls["answers"] = [ok("run-7")]
    summary = tasks.fire_trigger(trigger_id=trigger.pk, scheduled_for=slot.isoformat())
    execution = Execution.objects.get()
    assert summary == {"execution_id": str(execution.pk), "attempt": 1, "status": "succeeded"}
    assert execution.scheduled_for == slot
    assert execution.run_id == "run-7"
    assert len(calls["calls"]) == 1


def test_fire_trigger__second_delivery_calls_nothing(minutely, calls, enqueued):
    """The same slot delivered twice calls the workflow once; the repeat reports nothing to do."""
    trigger, slot = minutely
    calls["answers"] = [ok()]
    tasks.fire_trigger(trigger_id=trigger.pk, scheduled_for=slot.isoformat())
    again = tasks.fire_trigger(trigger_id=trigger.pk, scheduled_for=slot.isoformat())
    assert again == {"trigger_id": trigger.pk, "scheduled_for": slot.isoformat(), "status": "nothing to do"}
    assert len(calls["calls"]) == 1
    assert Execution.objects.count() == 1


def test_fire_trigger__without_slot_fires_latest(minutely, calls, enqueued):
    """A message without scheduled_for fires the latest slot (the one due when it is handled: if a
    minute began since the fixture, the fixture's slot is recorded missed and the new one runs)."""
    trigger, slot = minutely
    calls["answers"] = [ok()]
    before = timezone.now()
    assert tasks.fire_trigger(trigger_id=trigger.pk)["status"] == "succeeded"
    latest = {timing.latest_slot_at_or_before(trigger.cadence, at) for at in (before, timezone.now())}
    ran = Execution.objects.exclude(status=ExecutionStatus.SKIPPED).get()
    assert ran.scheduled_for in latest and ran.scheduled_for >= slot
    assert len(calls["calls"]) == 1
    missed = Execution.objects.filter(status=ExecutionStatus.SKIPPED)
    assert all(execution.scheduled_for < ran.scheduled_for for execution in missed)


def test_fire_trigger__retryable_failure_reports_retrying(minutely, calls, enqueued):
    """A retryable failure on the first call is reported as retrying, with the retry enqueued."""
    trigger, slot = minutely
    calls["answers"] = [WorkflowUnavailable("HTTP 503", http_status=503)]
    summary = tasks.fire_trigger(trigger_id=trigger.pk, scheduled_for=slot.isoformat())
    assert summary["status"] == "retrying"
    execution = Execution.objects.get()
    assert enqueued == [((execution.pk, 2), execution.metadata["attempts"][0]["retry_in_seconds"])]


def test_fire_trigger__unknown_trigger_does_nothing(db, calls):
    """A message for a deleted trigger reports nothing to do and calls nothing."""
    assert tasks.fire_trigger(trigger_id=999999)["status"] == "nothing to do"
    assert calls["calls"] == []


def test_run_execution__runs_claimed_attempt(trigger, calls, enqueued):
    """run_execution claims the attempt, calls the workflow and reports the outcome."""
    execution = services.trigger_run_now(trigger=trigger)
    calls["answers"] = [WorkflowRejected("HTTP 404", http_status=404)]
    summary = tasks.run_execution(execution_id=str(execution.pk), attempt=1)
    assert summary == {"execution_id": str(execution.pk), "attempt": 1, "status": "failed"}
    assert Execution.objects.get().status == ExecutionStatus.FAILED


def test_run_execution__duplicate_delivery_does_nothing(trigger, calls, enqueued):
    """A second delivery of the same attempt finds it claimed and calls nothing."""
    execution = services.trigger_run_now(trigger=trigger)
    calls["answers"] = [ok()]
    tasks.run_execution(execution_id=str(execution.pk), attempt=1)
    again = tasks.run_execution(execution_id=str(execution.pk), attempt=1)
    assert again == {"execution_id": str(execution.pk), "attempt": 1, "status": "nothing to do"}
    assert len(calls["calls"]) == 1


def test_run_execution__database_unreachable_at_claim_is_retried_soon(trigger, calls, enqueued, monkeypatch):
    """A claim that cannot reach the database changed nothing and called nothing: the message is
    retried after a short wait (celery's retry), and after a few tries left to recovery."""
    from celery.exceptions import Retry
    from django.db import OperationalError

    execution = services.trigger_run_now(trigger=trigger)

    def full(**kwargs):
        raise OperationalError("FATAL:  sorry, too many clients already")

    monkeypatch.setattr(dispatch, "execution_claim", full)
    retried = []
    monkeypatch.setattr(
        tasks.run_execution, "retry", lambda exc, countdown: retried.append(countdown) or Retry(exc=exc)
    )
    with pytest.raises(Retry):
        tasks.run_execution(execution_id=str(execution.pk), attempt=1)
    assert len(retried) == 1 and 0.5 <= retried[0] <= 1.0
    assert calls["calls"] == []
    assert Execution.objects.get(pk=execution.pk).attempts == 0
    tasks.run_execution.push_request(retries=tasks._CLAIM_RETRIES)
    try:
        with pytest.raises(OperationalError):
            tasks.run_execution.run(execution_id=str(execution.pk), attempt=1)
    finally:
        tasks.run_execution.pop_request()
    assert len(retried) == 1


def test_run_execution__retry_attempt_reports_its_number(trigger, calls, enqueued):
    """The retry message (attempt 2) runs the second attempt."""
    execution = services.trigger_run_now(trigger=trigger)
    calls["answers"] = [WorkflowUnavailable("HTTP 502", http_status=502), ok()]
    assert tasks.run_execution(execution_id=str(execution.pk), attempt=1)["status"] == "retrying"
    early = tasks.run_execution(execution_id=str(execution.pk), attempt=2)
    assert early["status"] == "nothing to do"  # the retry is not due yet
    Execution.objects.filter(pk=execution.pk).update(due_at=timezone.now())  # its countdown has elapsed
    summary = tasks.run_execution(execution_id=str(execution.pk), attempt=2)
    assert summary == {"execution_id": str(execution.pk), "attempt": 2, "status": "succeeded"}


def test_recover_executions__reports_counts(trigger, enqueued):
    """recover_executions returns how many executions and slots it handed back."""
    execution = services.trigger_run_now(trigger=trigger)
    Execution.objects.filter(pk=execution.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    enqueued.clear()
    assert tasks.recover_executions() == {"executions": 1, "slots": 0, "deferred": 0}
    assert len(enqueued) == 1


def test_tasks__names_are_stable():
    """PeriodicTask rows store task names: they must not change with module paths."""
    assert tasks.fire_trigger.name == "schedules.fire_trigger"
    assert tasks.run_execution.name == "schedules.run_execution"
    assert tasks.recover_executions.name == "schedules.recover_executions"
