"""The `workflow` management command: create (secret shown once) and list."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from tests.factories import TriggerFactory, WorkflowFactory
from workflows.models import Workflow


def run(*args: str) -> str:
    out = StringIO()
    call_command(*args, stdout=out, stderr=StringIO())
    return out.getvalue()


def create(user, *extra: str, name: str = "Daily sales") -> str:
    return run("workflow", "create", "--owner", user.username, "--name", name, *extra)


def test_workflow_command__create_prints_id_and_secret_once(user):
    """create makes the workflow and prints its id and generated secret with a shown-once note."""
    out = create(
        user,
        "--url", "https://n8n.example.com/webhook/abc", "--method", "put", "--timeout", "20",
        "--inputs", '{"region": "us"}', "--headers", '{"X-Team": "growth"}',
    )  # fmt: skip
    workflow = Workflow.objects.get()
    assert (workflow.endpoint_url, workflow.http_method, workflow.timeout_seconds) == (
        "https://n8n.example.com/webhook/abc",
        "PUT",
        20,
    )
    assert workflow.default_inputs == {"region": "us"} and workflow.headers == {"X-Team": "growth"}
    assert f"Created workflow {workflow.pk} " in out
    assert out.count(workflow.secret) == 1
    assert "will not be shown again" in out


def test_workflow_command__create_without_url_uses_built_in_endpoint(user, settings):
    """Without --url the workflow calls this service's own run endpoint."""
    settings.SCHEDULER_PUBLIC_BASE_URL = "http://localhost:8123"
    out = create(user)
    workflow = Workflow.objects.get()
    assert workflow.endpoint_url == ""
    assert f"http://localhost:8123/api/workflows/{workflow.pk}/runs/" in out


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--inputs", "{nope"], r"--inputs: not valid JSON"),
        (["--inputs", "[1]"], r"--inputs: must be a JSON object"),
        (["--headers", "not json"], r"--headers: not valid JSON"),
        (["--headers", '{"Host": "evil"}'], r"--headers: 'Host' is set by the scheduler"),
        (["--url", "ftp://example.com/x"], r"--url: Enter a valid URL"),
        (["--method", "GET"], r"argument --method: invalid choice: 'GET'"),
        (["--timeout", "900"], r"--timeout: .*300"),
        (["--timeout", "0"], r"argument --timeout: must be 1 or more"),
    ],
)
def test_workflow_command__create_bad_input_fails_and_creates_nothing(user, extra, message):
    """Bad options are a CommandError naming the option; no workflow is created."""
    with pytest.raises(CommandError, match=message):
        create(user, *extra)
    assert not Workflow.objects.exists()


def test_workflow_command__create_unknown_owner_or_duplicate_name_fails(workflow):
    """An unknown --owner or a name the owner already uses is refused."""
    with pytest.raises(CommandError, match=r"--owner: there is no user 'ghost'"):
        run("workflow", "create", "--owner", "ghost", "--name", "x")
    with pytest.raises(CommandError, match=r"already exists"):
        create(workflow.owner, name=workflow.name)
    assert Workflow.objects.count() == 1


def test_workflow_command__list_shows_workflows_without_secrets(user, other_user):
    """list shows id, name, owner, method and endpoint, never a secret or URL credentials."""
    mine = WorkflowFactory(owner=user, name="mine", endpoint_url="https://bob:hunter2@example.com/hook?token=t0k3n")
    theirs = WorkflowFactory(owner=other_user, name="theirs", endpoint_url="")
    out = run("workflow", "list")
    assert "mine" in out and "theirs" in out and "built-in" in out
    assert "https://example.com/hook?..." in out
    for secret in (mine.secret, theirs.secret, "hunter2", "t0k3n"):
        assert secret not in out
    only_theirs = run("workflow", "list", "--owner", other_user.username)
    assert "theirs" in only_theirs and "mine" not in only_theirs


def test_workflow_command__list_empty_and_unknown_owner(db):
    """An empty list says so; an unknown --owner is refused."""
    assert run("workflow", "list").strip() == "No workflows."
    with pytest.raises(CommandError, match=r"--owner: there is no user 'ghost'"):
        run("workflow", "list", "--owner", "ghost")


def test_workflow_command__secret_is_printed_only_at_creation(user):
    """After create, neither `workflow list` nor `trigger show` prints the secret."""
    create(user)
    workflow = Workflow.objects.get()
    trigger = TriggerFactory(workflow=workflow)
    assert workflow.secret not in run("workflow", "list")
    assert workflow.secret not in run("trigger", "show", str(trigger.pk))


def test_workflow_command__without_subcommand_fails(db):
    """`workflow` alone names the subcommands."""
    with pytest.raises(CommandError, match=r"create,list"):
        run("workflow")
