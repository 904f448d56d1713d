"""End to end: the built-in engine with real gunicorn, worker and beat. Beat fires the trigger, the
worker calls this service's own endpoint, the engine runs the definition on the worker, and the
Execution ends with the run's outcome. Nothing here calls a task or the runner directly."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from django.utils import timezone

from schedules.models import Execution, ExecutionStatus
from tests.factories import TriggerFactory, WorkflowFactory
from workflows.models import RunStatus, StepStatus, WorkflowRun

from .harness import Reply, wait_for

pytestmark = pytest.mark.e2e

WAIT_SECONDS = 4


def raid(url: str) -> dict:
    """A state machine: call out, wait, call out again with what the first call answered."""
    return {
        "type": "state_machine",
        "initial_state": "call",
        "states": [
            {
                "id": "call",
                "action": "http",
                "params": {"url": url, "body": {"stream": "${inputs.stream}"}, "timeout_seconds": 5, "retries": 1},
                "transitions": {"success": "pause", "error": "broken"},
            },
            {
                "id": "pause",
                "action": "wait",
                "params": {"seconds": WAIT_SECONDS},
                "transitions": {"success": "announce"},
            },
            {
                "id": "announce",
                "action": "http",
                "params": {
                    "url": url,
                    "body": {"first": "${steps.call.output.body.run_id}", "at": "${execution.scheduled_for}"},
                },
                "transitions": {"success": "done", "error": "broken"},
            },
            {"id": "done", "terminal": "succeeded"},
            {"id": "broken", "terminal": "failed"},
        ],
    }


def run_of(execution_id) -> WorkflowRun | None:
    return WorkflowRun.objects.filter(idempotency_key=str(execution_id)).first()


def test_scheduled_state_machine__survives_worker_kills_in_an_http_step_and_in_a_wait(stack, endpoint, user):
    """SIGKILL the worker while an http step waits for its answer, and again during a wait: the step
    runs again with the same Idempotency-Key, the wait ends on time from the database, completed steps
    run once, and the trigger's Execution ends succeeded with the run."""
    web, base_url = stack.start_web()
    stack.env_extra["SCHEDULER_PUBLIC_BASE_URL"] = base_url
    held = threading.Event()
    endpoint.script = [Reply(status=200, hold=held)]
    workflow = WorkflowFactory(owner=user, endpoint_url="", definition=raid(endpoint.url))
    worker, _beat = stack.start_worker_and_beat()
    trigger = TriggerFactory(
        workflow=workflow, kind="once", run_at=timezone.now() + timedelta(seconds=2), inputs={"stream": "tuesday"}
    )

    # The first http step is in flight, and the Execution already waits for the run.
    endpoint.wait_for_calls(1, timeout=60)
    execution = wait_for(
        lambda: Execution.objects.filter(trigger=trigger, wait_reason="run").first(),
        timeout=30,
        what="the execution to wait for its run",
    )
    assert execution.status == ExecutionStatus.RUNNING
    worker.kill()
    held.set()
    worker = stack.start_worker()

    run = wait_for(
        lambda: WorkflowRun.objects.filter(idempotency_key=str(execution.pk), status=RunStatus.WAITING).first(),
        timeout=60,
        what="the run to reach its wait",
    )
    worker.kill()
    assert Execution.objects.get(pk=execution.pk).status == ExecutionStatus.RUNNING
    stack.start_worker()

    execution = wait_for(
        lambda: Execution.objects.filter(
            pk=execution.pk, status__in=[ExecutionStatus.SUCCEEDED, ExecutionStatus.FAILED]
        ).first(),
        timeout=90,
        what="the execution to end with its run",
    )
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert execution.status == ExecutionStatus.SUCCEEDED
    assert execution.metadata["run_status"] == RunStatus.SUCCEEDED
    assert execution.run_id == str(run.pk)
    assert Execution.objects.filter(trigger=trigger).count() == 1

    steps = list(run.steps.order_by("seq", "attempt"))
    assert [(step.step_id, step.attempt, step.status) for step in steps] == [
        ("call", 1, StepStatus.FAILED),
        ("call", 2, StepStatus.SUCCEEDED),
        ("pause", 1, StepStatus.SUCCEEDED),
        ("announce", 1, StepStatus.SUCCEEDED),
        ("done", 1, StepStatus.SUCCEEDED),
    ]
    assert steps[0].error == "worker lost during attempt 1"
    pause = steps[2]
    assert (pause.finished_at - pause.started_at).total_seconds() >= WAIT_SECONDS

    calls = endpoint.calls
    assert [call.headers["idempotency-key"] for call in calls] == [
        f"{run.pk}:1:call",
        f"{run.pk}:1:call",
        f"{run.pk}:3:announce",
    ]
    assert calls[0].body == {"stream": "tuesday"}
    assert calls[2].body == {"first": endpoint.runs[f"{run.pk}:1:call"], "at": execution.scheduled_for.isoformat()}


def test_scheduled_state_machine__failed_run_fails_the_execution(stack, endpoint, user):
    """An http step answered 404 takes the error transition to a failed terminal state: the run fails
    and so does the Execution, with the run's error, so history and stats say the workflow failed."""
    web, base_url = stack.start_web()
    stack.env_extra["SCHEDULER_PUBLIC_BASE_URL"] = base_url
    endpoint.default = Reply(status=404)
    workflow = WorkflowFactory(owner=user, endpoint_url="", definition=raid(endpoint.url))
    stack.start_worker_and_beat()
    trigger = TriggerFactory(
        workflow=workflow, kind="once", run_at=timezone.now() + timedelta(seconds=2), inputs={"stream": "friday"}
    )

    execution = wait_for(
        lambda: Execution.objects.filter(
            trigger=trigger, status__in=[ExecutionStatus.SUCCEEDED, ExecutionStatus.FAILED]
        ).first(),
        timeout=60,
        what="the execution to end",
    )
    assert execution.status == ExecutionStatus.FAILED
    assert execution.error == "run failed: ended in state broken after call: HTTP 404 Not Found"
    run = run_of(execution.pk)
    # The failed terminal state reads failed in the history too, with the run's error.
    assert [(step.step_id, step.status, step.error) for step in run.steps.order_by("seq")] == [
        ("call", StepStatus.FAILED, "HTTP 404 Not Found"),
        ("broken", StepStatus.FAILED, "ended in state broken after call: HTTP 404 Not Found"),
    ]


def test_scheduled_dag__branches_overlap_on_the_workers_and_the_join_runs_once(stack, endpoint, user):
    """Two independent http nodes are called at the same time by two worker processes; the join is
    called once, after both answered, with both outputs; the Execution ends succeeded with the run."""
    web, base_url = stack.start_web()
    stack.env_extra["SCHEDULER_PUBLIC_BASE_URL"] = base_url
    endpoint.default = Reply(status=200, delay=2)
    definition = {
        "type": "dag",
        "nodes": [
            {"id": "left", "action": "http", "params": {"url": endpoint.url, "body": {"side": "left"}}},
            {"id": "right", "action": "http", "params": {"url": endpoint.url, "body": {"side": "right"}}},
            {
                "id": "join",
                "action": "http",
                "params": {
                    "url": endpoint.url,
                    "body": {"left": "${steps.left.output.body.run_id}", "right": "${steps.right.output.body.run_id}"},
                },
                "depends_on": ["left", "right"],
            },
        ],
    }
    workflow = WorkflowFactory(owner=user, endpoint_url="", definition=definition)
    stack.start_worker_and_beat()
    trigger = TriggerFactory(workflow=workflow, kind="once", run_at=timezone.now() + timedelta(seconds=2))

    execution = wait_for(
        lambda: Execution.objects.filter(
            trigger=trigger, status__in=[ExecutionStatus.SUCCEEDED, ExecutionStatus.FAILED]
        ).first(),
        timeout=90,
        what="the execution to end with its run",
    )
    run = run_of(execution.pk)
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert execution.status == ExecutionStatus.SUCCEEDED

    calls = {call.body.get("side", "join"): call for call in endpoint.calls}
    assert len(endpoint.calls) == 3 and set(calls) == {"left", "right", "join"}
    left, right, join = calls["left"], calls["right"], calls["join"]
    assert endpoint.max_in_flight == 2
    assert left.at < right.finished_at and right.at < left.finished_at  # the branches overlapped in time
    assert join.at >= max(left.finished_at, right.finished_at)
    keys = {call.headers["idempotency-key"] for call in endpoint.calls}
    assert join.body == {
        "left": endpoint.runs[left.headers["idempotency-key"]],
        "right": endpoint.runs[right.headers["idempotency-key"]],
    }
    assert len(keys) == 3
    assert run.steps.filter(step_id="join").count() == 1


def test_scheduled_run_workflow__the_parent_goes_on_when_its_sub_run_ends(stack, endpoint, user):
    """A state machine's run_workflow step starts a sub-run on the workers and waits for it without
    holding one; the sub-run's end wakes the parent (the runner's finish hook), which uses its output;
    the Execution ends succeeded."""
    web, base_url = stack.start_web()
    stack.env_extra["SCHEDULER_PUBLIC_BASE_URL"] = base_url
    endpoint.default = Reply(status=200, body={"viewers": 42})
    child = WorkflowFactory(
        owner=user,
        endpoint_url="",
        definition={
            "type": "sequence",
            "steps": [{"id": "count", "action": "http", "params": {"url": endpoint.url, "body": {"q": "${inputs.q}"}}}],
        },
    )
    parent = WorkflowFactory(
        owner=user,
        endpoint_url="",
        definition={
            "type": "state_machine",
            "initial_state": "sub",
            "states": [
                {
                    "id": "sub",
                    "action": "run_workflow",
                    "params": {"workflow": child.pk, "inputs": {"q": "viewers"}},
                    "transitions": {"success": "check", "error": "broken"},
                },
                {
                    "id": "check",
                    "action": "condition",
                    "params": {"if": {"gt": ["${steps.sub.output.steps.count.output.body.viewers}", 10]}},
                    "transitions": {"true": "done", "false": "broken"},
                },
                {"id": "done", "terminal": "succeeded"},
                {"id": "broken", "terminal": "failed"},
            ],
        },
    )
    stack.start_worker_and_beat()
    trigger = TriggerFactory(workflow=parent, kind="once", run_at=timezone.now() + timedelta(seconds=2))

    execution = wait_for(
        lambda: Execution.objects.filter(
            trigger=trigger, status__in=[ExecutionStatus.SUCCEEDED, ExecutionStatus.FAILED]
        ).first(),
        timeout=60,
        what="the execution to end with its run",
    )
    run = run_of(execution.pk)
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert execution.status == ExecutionStatus.SUCCEEDED
    sub = WorkflowRun.objects.get(workflow=child)
    assert sub.status == RunStatus.SUCCEEDED and sub.payload["parent_run_id"] == str(run.pk)
    assert [call.body for call in endpoint.calls] == [{"q": "viewers"}]
    assert [step.step_id for step in run.steps.order_by("seq")] == ["sub", "check", "done"]
