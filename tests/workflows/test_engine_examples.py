"""The definitions in examples/ are valid and run to the end against a real HTTP endpoint on 127.0.0.1."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from tests.e2e.harness import Reply
from tests.workflows.test_engine_runner import drive, start
from workflows.engine import runner
from workflows.engine.definitions import definition_problems
from workflows.models import RunStatus

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def example(name: str, target: str) -> dict:
    definition = json.loads((EXAMPLES / name).read_text())
    definition["config"]["target"] = target.rsplit("/", 1)[0]
    return definition


@pytest.mark.parametrize("name", ["stream-start.json", "stream-end.json", "raid.json"])
def test_examples__are_valid_definitions(name):
    """Each example passes the checks as shipped."""
    assert definition_problems(json.loads((EXAMPLES / name).read_text())) == []


def test_example_stream_start__announces_waits_and_goes_live(db, server):
    """The sequence calls announce, waits in the database, then calls live with the announcement."""
    server.default = Reply(status=200, body={"message_id": 9})
    run = start(example("stream-start.json", server.url), inputs={"stream": "tuesday", "warmup_seconds": 30})
    now = timezone.now()
    run = drive(run, now=now)
    assert run.status == RunStatus.WAITING
    later = now + timedelta(seconds=31)
    runner.runs_recover(now=later)
    run = drive(run, now=later)
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert [call.path for call in server.calls] == ["/announce", "/live"]
    assert server.calls[1].body == {"stream": "tuesday", "announcement": {"message_id": 9}}


def test_example_stream_end__fans_out_and_joins_once(db, server):
    """clips, stats and thanks run independently; recap runs once with both outputs."""
    server.default = Reply(status=200, body={"ok": True})
    run = drive(start(example("stream-end.json", server.url), inputs={"stream": "tuesday"}))
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert sorted(call.path for call in server.calls) == ["/clips", "/recap", "/stats"]
    recap = next(call for call in server.calls if call.path == "/recap")
    assert recap.body == {"stream": "tuesday", "clips": {"ok": True}, "stats": {"ok": True}}


@pytest.mark.parametrize(
    ("joined", "status", "end"), [(5, RunStatus.SUCCEEDED, "done"), (1, RunStatus.FAILED, "cancelled")]
)
def test_example_raid__goes_or_is_called_off(db, server, joined, status, end):
    """Enough joined: go; too few: called off into a failed terminal state."""
    server.default = Reply(status=200, body={"joined": joined})
    run = start(example("raid.json", server.url), inputs={"target": "friend", "gather_seconds": 60})
    now = timezone.now()
    drive(run, now=now)
    later = now + timedelta(seconds=61)
    runner.runs_recover(now=later)
    run = drive(run, now=later)
    assert (run.status, run.current_step) == (status, end)


def test_example_raid__an_error_takes_the_error_transition(db, server):
    """The raid call refused: the error transition ends in raid_failed, naming the cause."""
    server.default = Reply(status=403)
    run = drive(start(example("raid.json", server.url), inputs={"target": "friend", "gather_seconds": 60}))
    assert (run.status, run.current_step) == (RunStatus.FAILED, "raid_failed")
    assert run.error == "ended in state raid_failed after call_raid: HTTP 403 Forbidden"
