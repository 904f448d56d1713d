"""Executions of built-in engine workflows end with their run's outcome, not the 202, and are never
called again while the run is in progress (schedules/dispatch.py, "Follow")."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from schedules import dispatch
from schedules import services as schedule_services
from schedules.models import Execution, ExecutionStats, ExecutionStatus, Trigger
from tests.e2e.harness import Endpoint, Reply
from tests.factories import TriggerFactory, WorkflowFactory
from workflows import services as workflow_services
from workflows.client import CallResult
from workflows.engine import runner
from workflows.models import RunStatus, Workflow, WorkflowRun

WAIT_THEN_LOG = {
    "type": "sequence",
    "steps": [
        {"id": "pause", "action": "wait", "params": {"seconds": 60}},
        {"id": "after", "action": "log", "params": {"message": "${inputs.word}"}},
    ],
}


@pytest.fixture
def no_broker(monkeypatch):
    monkeypatch.setattr(dispatch, "_enqueue_attempt", lambda execution_id, attempt, **options: None)
    monkeypatch.setattr(dispatch, "publish", lambda attempts, producer=None: (len(attempts), None))


def running_execution(user, definition, **trigger_fields):
    workflow = WorkflowFactory(owner=user, endpoint_url="", definition=definition)
    trigger = TriggerFactory(
        workflow=workflow, kind="once", run_at=timezone.now() + timedelta(seconds=1), **trigger_fields
    )
    execution = dispatch.trigger_fire(trigger_id=trigger.pk, scheduled_for=trigger.next_run_at, now=trigger.next_run_at)
    assert execution is not None and execution.status == ExecutionStatus.RUNNING
    return execution


def built_in_endpoint(monkeypatch, *, finish_first: bool = False):
    """The call as the built-in endpoint answers it: the run recorded (and started) under the
    execution's key, 202 with its id. (The HTTP hop itself is in tests/e2e/test_engine_e2e.py.)"""

    def call(request):
        workflow = Workflow.objects.get(pk=request.payload["workflow_id"])
        run, _ = workflow_services.run_record(
            workflow=workflow, idempotency_key=request.idempotency_key, payload=request.payload
        )
        if finish_first:
            while runner.run_advance(run_id=run.pk) != "nothing to do":
                pass
        return CallResult(http_status=202, run_id=str(run.pk), body_excerpt="{}", duration_ms=3)

    monkeypatch.setattr(dispatch, "call_workflow", call)


def finish_run(run: WorkflowRun) -> WorkflowRun:
    later = timezone.now() + timedelta(seconds=61)
    runner.runs_recover(now=later)
    while runner.run_advance(run_id=run.pk, now=later) != "nothing to do":
        pass
    run.refresh_from_db()
    return run


def test_execution__waits_for_its_run_and_is_never_called_again_meanwhile(user, no_broker, monkeypatch):
    """After the 202 the execution stays running with no lease; recovery and a redelivered message
    leave it alone; when the run succeeds, the execution succeeds."""
    execution = running_execution(user, WAIT_THEN_LOG, inputs={"word": "hi"}, priority="high")
    built_in_endpoint(monkeypatch)
    outcome = dispatch.execution_perform(execution=execution)
    assert outcome.status == ExecutionStatus.RUNNING
    execution.refresh_from_db()
    assert (execution.status, execution.wait_reason, execution.lease_expires_at) == ("running", "run", None)
    assert execution.http_status == 202
    run = WorkflowRun.objects.get(pk=execution.run_id)
    assert run.idempotency_key == str(execution.pk)
    assert run.status == RunStatus.RUNNING
    assert run.priority == "high"  # the trigger's queue, from the call's priority

    far = timezone.now() + timedelta(hours=2)
    assert dispatch.leases_recover(now=far, queue_depth=lambda queue: 0).executions == 0
    assert dispatch.execution_claim(execution_id=execution.pk, attempt=2, now=far) is None
    assert dispatch.executions_follow_runs() == 0  # the run is still going

    run = finish_run(run)
    assert run.status == RunStatus.SUCCEEDED
    assert dispatch.executions_follow_runs() == 1
    execution.refresh_from_db()
    assert (execution.status, execution.wait_reason, execution.metadata["run_status"]) == ("succeeded", "", "succeeded")
    assert execution.finished_at is not None
    assert execution.attempts == 1


def test_execution__failed_run_fails_it_with_the_runs_error(user, no_broker, monkeypatch):
    """A failed run fails the execution with the run's error and counts as the trigger's failure."""
    definition = {"type": "sequence", "steps": [{"id": "a", "action": "log", "params": {"message": "${inputs.nope}"}}]}
    execution = running_execution(user, definition)
    built_in_endpoint(monkeypatch)
    dispatch.execution_perform(execution=execution)
    run = WorkflowRun.objects.get(pk=execution.run_id)
    while runner.run_advance(run_id=run.pk) != "nothing to do":
        pass
    assert dispatch.executions_recover(queue_depth=lambda queue: 0) is not None  # the recovery task's backstop
    execution.refresh_from_db()
    assert execution.status == ExecutionStatus.FAILED
    assert execution.error == "run failed: step a: variable ${inputs.nope} is missing"
    assert execution.trigger.consecutive_failures == 1


def test_execution__run_finished_before_the_answer_was_recorded_ends_at_once(user, no_broker, monkeypatch):
    """A short run can end before the worker records the 202: the execution ends right there."""
    definition = {"type": "sequence", "steps": [{"id": "a", "action": "set", "params": {"values": {"x": 1}}}]}
    execution = running_execution(user, definition)
    built_in_endpoint(monkeypatch, finish_first=True)
    outcome = dispatch.execution_perform(execution=execution)
    assert outcome.status == ExecutionStatus.SUCCEEDED
    assert Execution.objects.get(pk=execution.pk).status == ExecutionStatus.SUCCEEDED


def test_execution__built_in_workflow_without_definition_keeps_the_202(user, no_broker, monkeypatch):
    """No definition: the run is only recorded and the execution succeeds with the call, as before."""
    execution = running_execution(user, {})
    built_in_endpoint(monkeypatch)
    assert dispatch.execution_perform(execution=execution).status == ExecutionStatus.SUCCEEDED


def test_execution__cancelled_run_fails_it(user, no_broker, monkeypatch):
    """Cancelling the run ends the waiting execution as failed, saying so."""
    execution = running_execution(user, WAIT_THEN_LOG, inputs={"word": "hi"})
    built_in_endpoint(monkeypatch)
    dispatch.execution_perform(execution=execution)
    run = WorkflowRun.objects.get(pk=execution.run_id)
    workflow_services.run_cancel(run=run, reason="not today")
    assert dispatch.executions_follow_runs() == 1
    execution.refresh_from_db()
    assert (execution.status, execution.error) == (ExecutionStatus.FAILED, "run cancelled: cancelled: not today")


@pytest.fixture
def server():
    endpoint = Endpoint()
    yield endpoint
    endpoint.close()


def refused_then_answered(url: str) -> dict:
    return {"type": "sequence", "steps": [{"id": "call", "action": "http", "params": {"url": url, "retries": 0}}]}


def failed_execution(user, monkeypatch, server, **trigger_fields):
    """An execution that ended failed with its run (the endpoint refused the run's one call)."""
    server.script = [Reply(status=404)]
    execution = running_execution(user, refused_then_answered(server.url), **trigger_fields)
    built_in_endpoint(monkeypatch)
    dispatch.execution_perform(execution=execution)
    run = WorkflowRun.objects.get(pk=execution.run_id)
    while runner.run_advance(run_id=run.pk) != "nothing to do":
        pass
    assert dispatch.executions_follow_runs() == 1
    execution.refresh_from_db()
    assert (execution.status, execution.error) == (ExecutionStatus.FAILED, "run failed: step call: HTTP 404 Not Found")
    return execution, run


def stats_of(execution):
    schedule_services.stats_fold()
    row = ExecutionStats.objects.get(trigger=execution.trigger_id)
    return {"total": row.total, "succeeded": row.succeeded, "failed": row.failed}


def test_run_retry__reopens_the_failed_execution_which_then_ends_with_the_new_outcome(
    user, no_broker, monkeypatch, server
):
    """Retrying the run puts its failed Execution back to waiting for it, out of the stats; when the
    run succeeds the Execution succeeds, the trigger's failure count is reset, and the stats count it
    once, as a success."""
    execution, run = failed_execution(user, monkeypatch, server)
    assert Trigger.objects.get(pk=execution.trigger_id).consecutive_failures == 1
    assert stats_of(execution) == {"total": 1, "succeeded": 0, "failed": 1}

    workflow_services.run_retry(run=run)
    execution.refresh_from_db()
    assert (execution.status, execution.wait_reason, execution.finished_at, execution.error) == (
        ExecutionStatus.RUNNING,
        "run",
        None,
        "",
    )
    assert execution.counted is False
    (earlier,) = execution.metadata["reopened"]
    assert (earlier["run_status"], earlier["error"]) == ("failed", "run failed: step call: HTTP 404 Not Found")
    assert stats_of(execution) == {"total": 0, "succeeded": 0, "failed": 0}  # running: not a finished one

    while runner.run_advance(run_id=run.pk) != "nothing to do":
        pass
    assert dispatch.executions_follow_runs() == 1
    execution.refresh_from_db()
    assert (execution.status, execution.error, execution.metadata["run_status"]) == ("succeeded", "", "succeeded")
    assert Trigger.objects.get(pk=execution.trigger_id).consecutive_failures == 0
    assert stats_of(execution) == {"total": 1, "succeeded": 1, "failed": 0}


def test_run_retry__failing_again_is_not_a_second_failure_of_the_trigger(user, no_broker, monkeypatch, server):
    """Retried and failed again: the Execution fails with the new error, but the trigger's failure count,
    its fallback and the stats count the slot's failure once (here it was not folded before the retry)."""
    fallback = WorkflowFactory(owner=user)
    execution, run = failed_execution(user, monkeypatch, server, fallback_workflow=fallback)
    assert Execution.objects.filter(fallback_of=execution).count() == 1
    server.script = [Reply(status=410)]

    workflow_services.run_retry(run=run)
    while runner.run_advance(run_id=run.pk) != "nothing to do":
        pass
    assert dispatch.executions_follow_runs() == 1
    execution.refresh_from_db()
    assert (execution.status, execution.error) == (ExecutionStatus.FAILED, "run failed: step call: HTTP 410 Gone")
    assert Trigger.objects.get(pk=execution.trigger_id).consecutive_failures == 1
    assert Execution.objects.filter(fallback_of=execution).count() == 1
    assert stats_of(execution) == {"total": 1, "succeeded": 0, "failed": 1}


def test_run_retry__of_a_run_without_an_execution_reopens_nothing(user, no_broker, server):
    """A run started without a trigger has no Execution: retrying it changes no execution."""
    server.script = [Reply(status=404)]
    workflow = WorkflowFactory(owner=user, endpoint_url="", definition=refused_then_answered(server.url))
    run, _ = workflow_services.workflow_start(workflow=workflow)
    while runner.run_advance(run_id=run.pk) != "nothing to do":
        pass
    run.refresh_from_db()
    assert run.status == RunStatus.FAILED
    assert schedule_services.execution_reopen_for_run(run_id=str(run.pk)) is None
    assert workflow_services.run_retry(run=run).status == RunStatus.RUNNING
