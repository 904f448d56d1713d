"""Start now or later without a trigger: POST /api/workflows/<id>/start/, the service and the command;
a queued start is held in the database, can be moved or cancelled, and begins when due."""

from __future__ import annotations

from datetime import timedelta
from io import StringIO

import pytest
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.core.management.base import CommandError
from django.urls import reverse
from django.utils import timezone

from tests.factories import WorkflowFactory
from tests.workflows.test_engine_runner import drive, path, sequence
from workflows import services
from workflows.engine import runner
from workflows.exceptions import RunStateError
from workflows.models import RunStatus, WorkflowRun

pytestmark = pytest.mark.django_db

HELLO = sequence({"id": "hello", "action": "log", "params": {"message": "hello ${inputs.who}"}})


@pytest.fixture
def engine_workflow(user):
    return WorkflowFactory(owner=user, endpoint_url="", definition=HELLO, default_inputs={"who": "all"})


def test_workflow_start__now_runs_with_inputs_over_the_defaults(engine_workflow):
    """delay 0: queued for now; the first task takes it from queued to its first step."""
    now = timezone.now()
    run, created = services.workflow_start(workflow=engine_workflow, inputs={"who": "ana"}, now=now)
    assert created and (run.status, run.wake_at, run.inputs) == (RunStatus.QUEUED, now, {"who": "ana"})
    run = drive(run)
    assert run.status == RunStatus.SUCCEEDED
    assert run.steps.get().input == {"message": "hello ana"}


def test_workflow_start__scheduled_for_is_the_time_it_was_asked_to_start_at(user):
    """A run started without a trigger reads ${execution.scheduled_for} as its start time (moved with
    the start), so definitions written for triggers run when started by hand too."""
    step = {"id": "slot", "action": "set", "params": {"values": {"at": "${execution.scheduled_for}"}}}
    workflow = WorkflowFactory(owner=user, endpoint_url="", definition=sequence(step))
    now = timezone.now()
    run, _ = services.workflow_start(workflow=workflow, delay_seconds=60, now=now)
    moved = now + timedelta(seconds=120)
    services.run_move(run=run, run_at=moved, now=now)
    run = drive(run, now=moved)
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert run.context["steps"]["slot"]["output"] == {"at": moved.isoformat()}
    assert "execution_id" not in run.context["execution"]


def test_workflow_start__later_is_held_and_begins_when_due_with_the_definition_then(engine_workflow):
    """A later start does nothing before its time; recover_runs sends it when due; it runs the
    definition as it is when it begins."""
    now = timezone.now()
    run, _ = services.workflow_start(workflow=engine_workflow, delay_seconds=3600, now=now)
    assert runner.run_advance(run_id=run.pk, now=now + timedelta(minutes=30)) == "nothing to do"
    assert runner.runs_recover(now=now + timedelta(minutes=30)) == 0
    services.workflow_update(
        workflow=engine_workflow, definition=sequence({"id": "bye", "action": "log", "params": {"message": "bye"}})
    )
    due = now + timedelta(seconds=3601)
    assert runner.runs_recover(now=due) == 1
    run = drive(run, now=due)
    assert run.status == RunStatus.SUCCEEDED
    assert path(run) == [("bye", 1, "succeeded")]


def test_run_move__and_cancel_a_pending_start(engine_workflow):
    """A queued start can be moved (not once begun) or cancelled."""
    now = timezone.now()
    run, _ = services.workflow_start(workflow=engine_workflow, delay_seconds=600, now=now)
    run = services.run_move(run=run, delay_seconds=60, now=now)
    assert run.wake_at == now + timedelta(seconds=60)
    assert runner.runs_recover(now=now + timedelta(seconds=61)) == 1
    cancelled = services.run_cancel(run=services.workflow_start(workflow=engine_workflow, delay_seconds=600)[0])
    assert cancelled.status == RunStatus.CANCELLED
    run = drive(run, now=now + timedelta(seconds=61))
    with pytest.raises(RunStateError, match="only a queued run can be moved; this one is succeeded"):
        services.run_move(run=run, delay_seconds=5)


def test_workflow_start__same_key_returns_the_first_run(engine_workflow):
    """An idempotency_key makes a repeated start return the first run."""
    first, created = services.workflow_start(workflow=engine_workflow, idempotency_key="stream-42")
    again, created_again = services.workflow_start(
        workflow=engine_workflow, idempotency_key="stream-42", delay_seconds=99
    )
    assert (created, created_again, again.pk) == (True, False, first.pk)


@pytest.mark.parametrize(
    ("fields", "key", "message"),
    [
        ({"delay_seconds": 5, "run_at": "now"}, "run_at", "give delay_seconds or run_at, not both."),
        ({"delay_seconds": -1}, "delay_seconds", "must be 0-31622400 (a year), not -1."),
        ({"priority": "urgent"}, "priority", "must be one of high, normal, low, not 'urgent'."),
        ({"inputs": [1]}, "inputs", "must be a JSON object."),
    ],
)
def test_workflow_start__bad_input_is_a_validation_error(engine_workflow, fields, key, message):
    """Each problem is named on its field; nothing is created."""
    if fields.get("run_at") == "now":
        fields["run_at"] = timezone.now()
    with pytest.raises(ValidationError) as caught:
        services.workflow_start(workflow=engine_workflow, **fields)
    assert caught.value.message_dict == {key: [message]}
    assert not WorkflowRun.objects.exists()


def test_workflow_start__only_engine_workflows(user):
    """A workflow without a definition (or with an endpoint) has nothing for the engine to start."""
    with pytest.raises(ValidationError, match="has no definition"):
        services.workflow_start(workflow=WorkflowFactory(owner=user))


def test_api__start_later_then_move_and_cancel(client, user, engine_workflow):
    """POST …/start/ is 201 with the queued run (200 for a repeated key); …/move/ and …/cancel/ steer it;
    bad input is a 400 naming the field."""
    client.force_login(user)
    url = reverse("workflow-start", args=[engine_workflow.pk])
    response = client.post(
        url,
        {"delay_seconds": 600, "inputs": {"who": "ana"}, "priority": "high", "idempotency_key": "k1"},
        content_type="application/json",
    )
    assert response.status_code == 201, response.json()
    assert response.json()["trigger"] is None
    body = response.json()["run"]
    assert (body["status"], body["priority"], body["inputs"]) == ("queued", "high", {"who": "ana"})
    assert client.post(url, {"idempotency_key": "k1"}, content_type="application/json").status_code == 200
    later = (timezone.now() + timedelta(days=30)).replace(microsecond=0)
    moved = client.post(
        reverse("run-move", args=[body["id"]]), {"run_at": later.isoformat()}, content_type="application/json"
    )
    assert moved.status_code == 200 and moved.json()["wake_at"] == later.isoformat().replace("+00:00", "Z")
    cancelled = client.post(reverse("run-cancel", args=[body["id"]]), {}, content_type="application/json")
    assert cancelled.json()["status"] == "cancelled"
    bad = client.post(url, {"delay_seconds": 1, "run_at": later.isoformat()}, content_type="application/json")
    assert bad.status_code == 400
    assert bad.json() == {"errors": {"run_at": ["give delay_seconds or run_at, not both."]}}
    plain = WorkflowFactory(owner=user)
    refused = client.post(reverse("workflow-start", args=[plain.pk]), {}, content_type="application/json")
    assert refused.status_code == 400 and "has no definition" in refused.json()["errors"]["workflow"][0]


def test_command__start_and_move(engine_workflow):
    """workflow start WORKFLOW --in SECONDS prints the run and when; run RUN_ID --move-to moves it."""
    out = StringIO()
    call_command("workflow", "start", str(engine_workflow.pk), "--in", "600", "--inputs", '{"who": "bo"}', stdout=out)
    run = WorkflowRun.objects.get()
    assert f"Run {run.pk} of workflow {engine_workflow.pk}" in out.getvalue()
    assert run.inputs == {"who": "bo"}
    later = (timezone.now() + timedelta(days=30)).replace(microsecond=0)
    call_command("workflow", "run", str(run.pk), "--move-to", later.isoformat(), stdout=StringIO())
    run.refresh_from_db()
    assert run.wake_at == later
    with pytest.raises(CommandError, match="--at: 'tomorrow' is not a time with an offset"):
        call_command("workflow", "start", str(engine_workflow.pk), "--at", "tomorrow", stdout=StringIO())


def test_api__start_with_cron_or_a_preset_makes_a_trigger(client, user, engine_workflow):
    """cron (or a preset) starts it again and again: the answer is the trigger that does it, with its
    next runs; it takes no delay or run_at, and a preset's parameters need the preset."""
    client.force_login(user)
    url = reverse("workflow-start", args=[engine_workflow.pk])
    response = client.post(
        url,
        {"cron": "0 9 * * 1-5", "timezone": "Europe/Berlin", "inputs": {"who": "team"}, "priority": "low"},
        content_type="application/json",
    )
    assert response.status_code == 201, response.json()
    trigger = response.json()["trigger"]
    assert response.json()["run"] is None
    assert (trigger["kind"], trigger["cron"], trigger["timezone"], trigger["workflow"]) == (
        "cron",
        "0 9 * * 1-5",
        "Europe/Berlin",
        engine_workflow.pk,
    )
    assert (trigger["inputs"], trigger["priority"], trigger["name"]) == (
        {"who": "team"},
        "low",
        f"Start {engine_workflow.name} (0 9 * * 1-5)",
    )
    preset = client.post(
        url, {"preset": "weekdays", "time": "18:30", "name": "evening"}, content_type="application/json"
    )
    assert preset.status_code == 201 and preset.json()["trigger"]["cron"] == "30 18 * * 1-5"
    mixed = client.post(url, {"cron": "0 9 * * *", "delay_seconds": 5}, content_type="application/json")
    assert mixed.status_code == 400
    assert mixed.json() == {
        "errors": {"delay_seconds": ["not with cron or a preset (those start it again and again)."]}
    }
    stray = client.post(url, {"time": "09:00"}, content_type="application/json")
    assert stray.status_code == 400 and stray.json() == {"errors": {"time": ["only goes with cron or a preset."]}}
    bad = client.post(url, {"cron": "61 * * * *"}, content_type="application/json")
    assert bad.status_code == 400 and "cron" in bad.json()["errors"]
