"""dag runs: independent nodes are claimed side by side, a join runs once when its last dependency
succeeds, a failed node skips only its dependents, waits and lost workers are recovered per node."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from tests.e2e.harness import Reply
from tests.workflows.test_engine_runner import drive, output, path, start
from workflows.engine import runner
from workflows.models import RunStatus

pytestmark = pytest.mark.django_db


def log(node_id, message="x", *, depends_on=()):
    node = {"id": node_id, "action": "log", "params": {"message": message}}
    if depends_on:
        node["depends_on"] = list(depends_on)
    return node


def dag(*nodes):
    return {"type": "dag", "nodes": list(nodes)}


FAN = dag(
    {"id": "start", "action": "set", "params": {"values": {"n": 2}}},
    log("left", "left ${steps.start.output.n}", depends_on=["start"]),
    log("right", "right", depends_on=["start"]),
    log("join", "${steps.left.output.message} + ${steps.right.output.message}", depends_on=["left", "right"]),
)


def test_dag__fan_out_and_join_runs_each_node_once():
    """The join runs once, after both branches, and reads both outputs; every node has its own step number."""
    run = drive(start(FAN))
    assert run.status == RunStatus.SUCCEEDED
    assert sorted(path(run)) == sorted(
        [("start", 1, "succeeded"), ("left", 1, "succeeded"), ("right", 1, "succeeded"), ("join", 1, "succeeded")]
    )
    assert output(run, "join") == {"message": "left 2 + right"}
    assert {state["status"] for state in run.context["nodes"].values()} == {"succeeded"}
    assert sorted(state["seq"] for state in run.context["nodes"].values()) == [1, 2, 3, 4]
    assert run.lease_expires_at is None


def test_dag__ready_nodes_are_claimed_by_different_workers_and_the_join_once():
    """Two claims take the two branches (not the same one twice); the join is ready only after both."""
    run = start(FAN)
    now = timezone.now()
    assert runner.run_advance(run_id=run.pk, now=now) == "running"  # start
    first = runner._claim(run.pk, now)
    second = runner._claim(run.pk, now)
    assert {first.step["id"], second.step["id"]} == {"left", "right"}
    assert runner._claim(run.pk, now) is None  # nothing else is ready: the join waits for both
    runner._record(first, *runner._perform(first))
    assert runner._claim(run.pk, now) is None
    runner._record(second, *runner._perform(second))
    join = runner._claim(run.pk, now)
    assert join.step["id"] == "join"
    assert runner._claim(run.pk, now) is None
    runner._record(join, *runner._perform(join))
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED
    assert run.steps.filter(step_id="join").count() == 1


def test_dag__a_failed_node_stops_its_dependents_only():
    """a fails: c (after a) and e (after c) are skipped; b and d (after b) still run; the run fails
    naming a and what was skipped."""
    run = drive(
        start(
            dag(
                log("a", "${inputs.nope}"),
                log("b"),
                log("c", depends_on=["a"]),
                log("d", depends_on=["b"]),
                log("e", depends_on=["c", "d"]),
            )
        )
    )
    assert run.status == RunStatus.FAILED
    nodes = {name: state["status"] for name, state in run.context["nodes"].items()}
    assert nodes == {"a": "failed", "b": "succeeded", "c": "skipped", "d": "succeeded", "e": "skipped"}
    assert run.error == "node a: variable ${inputs.nope} is missing (skipped: c, e)"


def test_dag__a_wait_node_is_held_in_the_database_while_other_nodes_run():
    """A waiting node does not hold a worker: its sibling runs; when the wait is due recovery sends it."""
    run = start(
        dag(
            {"id": "pause", "action": "wait", "params": {"seconds": 60}},
            log("busy"),
            log("after", depends_on=["pause", "busy"]),
        )
    )
    now = timezone.now()
    run = drive(run, now=now)
    assert run.status == RunStatus.RUNNING
    assert {name: state["status"] for name, state in run.context["nodes"].items()} == {
        "pause": "waiting",
        "busy": "succeeded",
        "after": "pending",
    }
    assert abs((run.lease_expires_at - now).total_seconds() - 60) < 5  # the recovery task's index
    assert runner.runs_recover(now=now + timedelta(seconds=30)) == 0
    later = now + timedelta(seconds=61)
    assert runner.runs_recover(now=later) == 1
    assert runner.runs_recover(now=later) == 0
    run = drive(run, now=later)
    assert run.status == RunStatus.SUCCEEDED
    assert ("after", 1, "succeeded") in path(run)


def test_dag__a_node_whose_worker_died_runs_again_and_the_others_are_untouched():
    """A claimed node never recorded is taken again after its lease; the finished ones do not run again."""
    run = start(dag(log("a"), log("b"), log("c", depends_on=["a", "b"])))
    now = timezone.now()
    assert runner.run_advance(run_id=run.pk, now=now) == "running"  # a
    lost = runner._claim(run.pk, now)  # b, and its worker dies
    assert lost.step["id"] == "b"
    after = now + timedelta(seconds=10 + 3 + 1)  # a log step's lease plus the grace
    assert runner.runs_recover(now=after) == 1
    run = drive(run, now=after)
    assert run.status == RunStatus.SUCCEEDED
    assert sorted(path(run)) == sorted(
        [("a", 1, "succeeded"), ("b", 1, "failed"), ("b", 2, "succeeded"), ("c", 1, "succeeded")]
    )
    assert run.steps.get(step_id="b", attempt=1).error == "worker lost during attempt 1"


def test_dag__an_http_node_is_retried_with_its_own_stable_key(server):
    """A 503 on a node is retried after its backoff with the same Idempotency-Key; its sibling is unaffected."""
    server.script = [Reply(status=503)]
    run = start(dag({"id": "call", "action": "http", "params": {"url": server.url, "retries": 1}}, log("other")))
    now = timezone.now()
    run = drive(run, now=now)
    assert run.context["nodes"]["call"]["status"] == "ready"
    assert run.context["nodes"]["other"]["status"] == "succeeded"
    wake = runner._when(run.context["nodes"]["call"]["wake_at"])
    assert wake > now
    run = drive(run, now=wake + timedelta(seconds=1))
    assert run.status == RunStatus.SUCCEEDED
    seq = run.context["nodes"]["call"]["seq"]
    assert [call.headers["idempotency-key"] for call in server.calls] == [f"{run.pk}:{seq}:call"] * 2
