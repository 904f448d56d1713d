"""run_workflow: a step starts a run of another workflow of the same owner and waits for it."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from tests.factories import WorkflowFactory
from tests.workflows.test_engine_runner import EXECUTION, drive, output, path, sequence, start
from workflows.engine import runner
from workflows.models import RunStatus, WorkflowRun

pytestmark = pytest.mark.django_db

CHILD = sequence({"id": "pick", "action": "set", "params": {"values": {"region": "${inputs.region}", "n": 7}}})


def parent_of(child, user, **params):
    return sequence(
        {"id": "sub", "action": "run_workflow", "params": {"workflow": child.pk, "inputs": {"region": "eu"}, **params}},
        {"id": "use", "action": "log", "params": {"message": "${steps.sub.output.steps.pick.output.region}"}},
    )


def test_run_workflow__waits_for_the_sub_run_and_reads_its_outputs(user):
    """The parent waits (no worker held) while the child runs; when the child ends, the parent goes on
    with its outputs."""
    child_workflow = WorkflowFactory(owner=user, endpoint_url="", definition=CHILD, default_inputs={"region": "us"})
    run = drive(start(parent_of(child_workflow, user), user=user))
    assert run.status == RunStatus.WAITING
    assert path(run) == [("sub", 1, "waiting")]
    child = WorkflowRun.objects.get(workflow=child_workflow)
    assert child.idempotency_key == f"{run.pk}:1:sub"
    assert child.inputs == {"region": "eu"}
    assert child.payload["parent_run_id"] == str(run.pk) and child.payload["depth"] == 1
    assert runner.run_advance(run_id=run.pk) == "nothing to do"  # the child is still running

    drive(child)
    assert runner.runs_recover() == 1  # (here no commit runs the child's end hook: recovery sends the parent)
    run = drive(run)
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert path(run) == [("sub", 1, "succeeded"), ("use", 1, "succeeded")]
    assert output(run, "sub") == {
        "run_id": str(child.pk),
        "status": "succeeded",
        "steps": {"pick": {"output": {"region": "eu", "n": 7}}},
    }
    assert output(run, "use") == {"message": "eu"}


def test_run_workflow__the_sub_run_reads_its_parents_execution_variables(user):
    """A sub-workflow works for its parent's slot: ${execution.*} in the child are the parent's
    (execution, trigger, slot), not empty."""
    child_definition = sequence(
        {
            "id": "slot",
            "action": "set",
            "params": {
                "values": {
                    "at": "${execution.scheduled_for}",
                    "execution": "${execution.execution_id}",
                    "trigger": "${execution.trigger_id}",
                }
            },
        }
    )
    child_workflow = WorkflowFactory(owner=user, endpoint_url="", definition=child_definition)
    run = drive(start(parent_of(child_workflow, user), user=user))
    child = drive(WorkflowRun.objects.get(workflow=child_workflow))
    assert child.status == RunStatus.SUCCEEDED, child.error
    assert output(child, "slot") == {
        "at": EXECUTION["scheduled_for"],
        "execution": EXECUTION["execution_id"],
        "trigger": EXECUTION["trigger_id"],
    }
    assert run.context["execution"] == child.context["execution"]


def test_run_workflow__a_failed_sub_run_fails_the_step(user):
    """The step fails with the sub-run's error (the error transition, or the sequence's policy)."""
    failing = sequence({"id": "bad", "action": "log", "params": {"message": "${inputs.nope}"}})
    child_workflow = WorkflowFactory(owner=user, endpoint_url="", definition=failing)
    run = drive(start(parent_of(child_workflow, user), user=user))
    child = drive(WorkflowRun.objects.get(workflow=child_workflow))
    assert child.status == RunStatus.FAILED
    runner.runs_recover()
    run = drive(run)
    assert run.status == RunStatus.FAILED
    assert run.error == f"step sub: sub-workflow run {child.pk} failed: step bad: variable ${{inputs.nope}} is missing"


@pytest.mark.parametrize("problem", ["other owner", "no definition", "inactive"])
def test_run_workflow__only_an_active_engine_workflow_of_the_same_owner(user, problem):
    """Another user's workflow, one without a definition, or an inactive one: the step fails saying which."""
    fields = {
        "other owner": {"definition": CHILD},
        "no definition": {"owner": user},
        "inactive": {"owner": user, "definition": CHILD, "is_active": False},
    }[problem]
    child_workflow = WorkflowFactory(endpoint_url="", **fields)
    run = drive(start(parent_of(child_workflow, user), user=user))
    assert run.status == RunStatus.FAILED
    expected = {
        "other owner": "no such workflow of this workflow's owner",
        "no definition": "has no definition for the built-in engine to run",
        "inactive": "is not active",
    }[problem]
    assert expected in run.error
    assert not WorkflowRun.objects.filter(workflow=child_workflow).exists()


def test_run_workflow__a_workflow_that_runs_itself_stops_at_the_depth_limit(user):
    """Nesting stops at 5 levels with a clear error instead of running forever."""
    workflow = WorkflowFactory(
        owner=user, endpoint_url="", definition=sequence({"id": "a", "action": "log", "params": {"message": "x"}})
    )
    workflow.definition = sequence({"id": "again", "action": "run_workflow", "params": {"workflow": workflow.pk}})
    workflow.save()
    run = drive(start(workflow.definition, user=user))  # (start makes a second workflow with this definition)
    for _ in range(10):
        for waiting in WorkflowRun.objects.exclude(status__in=[RunStatus.SUCCEEDED, RunStatus.FAILED]):
            drive(waiting)
        runner.runs_recover()
    depths = sorted(run.payload.get("depth", 0) for run in WorkflowRun.objects.filter(workflow=workflow))
    assert depths == [1, 2, 3, 4, 5]
    deepest = WorkflowRun.objects.get(workflow=workflow, payload__depth=5)
    assert deepest.error == "step again: sub-workflows nest deeper than 5 (does a workflow run itself?)"
    run.refresh_from_db()
    assert run.status == RunStatus.FAILED


def test_run_workflow__in_a_dag_the_node_waits_and_its_dependents_follow(user):
    """A dag node waits for its sub-run while its sibling runs; the join reads the sub-run's output.
    The sub-run's end is found by recovery when its message is lost (here: no commit, no hook)."""
    child_workflow = WorkflowFactory(owner=user, endpoint_url="", definition=CHILD)
    definition = {
        "type": "dag",
        "nodes": [
            {
                "id": "sub",
                "action": "run_workflow",
                "params": {"workflow": child_workflow.pk, "inputs": {"region": "eu"}},
            },
            {"id": "side", "action": "log", "params": {"message": "meanwhile"}},
            {
                "id": "join",
                "action": "log",
                "params": {"message": "${steps.sub.output.steps.pick.output.region}"},
                "depends_on": ["sub", "side"],
            },
        ],
    }
    now = timezone.now()
    run = drive(start(definition, user=user), now=now)
    assert {name: node["status"] for name, node in run.context["nodes"].items()} == {
        "sub": "waiting",
        "side": "succeeded",
        "join": "pending",
    }
    drive(WorkflowRun.objects.get(workflow=child_workflow), now=now)
    assert runner.runs_recover(now=now + timedelta(seconds=30)) == 0  # not yet time to look
    later = now + timedelta(seconds=61)
    assert runner.runs_recover(now=later) == 1
    run = drive(run, now=later)
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert output(run, "join") == {"message": "eu"}
