"""`manage.py workflow` for the built-in engine: create --definition, set-definition and run."""

from __future__ import annotations

import json
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from tests.factories import WorkflowFactory
from workflows import services
from workflows.engine import runner
from workflows.models import Workflow

SEQUENCE = {"type": "sequence", "steps": [{"id": "hello", "action": "log", "params": {"message": "hi"}}]}


def run(*args: str) -> str:
    out = StringIO()
    call_command(*args, stdout=out, stderr=StringIO())
    return out.getvalue()


def test_create__definition_from_a_file(user, tmp_path):
    """create --definition FILE stores the definition."""
    path = tmp_path / "hello.json"
    path.write_text(json.dumps(SEQUENCE))
    run("workflow", "create", "--owner", user.username, "--name", "hello", "--definition", str(path))
    assert Workflow.objects.get().definition == SEQUENCE


def test_create__bad_definition_is_a_command_error_naming_the_path(user, tmp_path):
    """A definition that cannot run is refused with the option and the path; nothing is created."""
    path = tmp_path / "bad.json"
    path.write_text(
        json.dumps({"type": "sequence", "steps": [{"id": "a", "action": "wait", "params": {"seconds": -1}}]})
    )
    with pytest.raises(CommandError) as caught:
        run("workflow", "create", "--owner", user.username, "--name", "bad", "--definition", str(path))
    assert str(caught.value).startswith(
        "--definition: definition.steps[0].params.seconds: -1 is less than the minimum of 0"
    )
    assert not Workflow.objects.exists()


def test_create__unreadable_or_non_json_file_is_a_command_error(user, tmp_path):
    """A missing file or text that is not a JSON object is a clear error, not a traceback."""
    with pytest.raises(CommandError, match="--definition: cannot read"):
        run("workflow", "create", "--owner", user.username, "--name", "x", "--definition", str(tmp_path / "nope.json"))
    path = tmp_path / "list.json"
    path.write_text("[1, 2]")
    with pytest.raises(CommandError, match="--definition: must be a JSON object"):
        run("workflow", "create", "--owner", user.username, "--name", "x", "--definition", str(path))


def test_set_definition__replaces_and_removes(user, tmp_path):
    """set-definition replaces the definition; {} removes it (runs are only recorded again)."""
    workflow = WorkflowFactory(owner=user, endpoint_url="")
    path = tmp_path / "d.json"
    path.write_text(json.dumps(SEQUENCE))
    assert "now has a sequence definition" in run("workflow", "set-definition", str(workflow.pk), str(path))
    workflow.refresh_from_db()
    assert workflow.definition == SEQUENCE
    path.write_text("{}")
    assert "now has no definition" in run("workflow", "set-definition", workflow.name, str(path))
    workflow.refresh_from_db()
    assert workflow.definition == {}


def test_set_definition__refused_for_a_workflow_with_an_endpoint(user, tmp_path):
    """The same rules as the API: a definition needs the built-in endpoint."""
    workflow = WorkflowFactory(owner=user, endpoint_url="https://example.com/hook")
    path = tmp_path / "d.json"
    path.write_text(json.dumps(SEQUENCE))
    with pytest.raises(CommandError, match="FILE: a workflow with an endpoint_url is run there"):
        run("workflow", "set-definition", str(workflow.pk), str(path))


def test_run__shows_status_and_each_step(user):
    """run RUN_ID prints the run's status and its path."""
    workflow = WorkflowFactory(owner=user, endpoint_url="", definition=SEQUENCE)
    recorded, _ = services.run_record(workflow=workflow, idempotency_key="k", payload={"inputs": {}})
    runner.run_advance(run_id=recorded.pk)
    out = run("workflow", "run", str(recorded.pk))
    assert "Status: succeeded at step hello" in out
    assert "hello" in out and "log" in out and "succeeded" in out
    with pytest.raises(CommandError, match="there is no run 'nope'"):
        run("workflow", "run", "nope")
