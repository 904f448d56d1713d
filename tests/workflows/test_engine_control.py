"""Pause, resume, cancel and retry-from-failed-step of built-in engine runs: the runner's rules and the
API, admin and command that call them."""

from __future__ import annotations

from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.urls import reverse
from django.utils import timezone

from tests.e2e.harness import Reply
from tests.factories import UserFactory
from tests.workflows.test_engine_runner import drive, path, sequence, start
from workflows import services
from workflows.engine import runner
from workflows.exceptions import RunStateError
from workflows.models import AuditEvent, RunStatus

pytestmark = pytest.mark.django_db


def log(step_id, message="x"):
    return {"id": step_id, "action": "log", "params": {"message": message}}


def test_pause__between_steps_nothing_runs_until_resumed():
    """A paused run is not advanced (a message for it does nothing); resumed, it carries on."""
    run = start(sequence(log("a"), log("b")))
    assert runner.run_advance(run_id=run.pk) == "running"
    services.run_pause(run=run)
    assert runner.run_advance(run_id=run.pk) == "nothing to do"
    run = services.run_resume(run=run)
    assert run.status == RunStatus.RUNNING
    run = drive(run)
    assert run.status == RunStatus.SUCCEEDED
    assert path(run) == [("a", 1, "succeeded"), ("b", 1, "succeeded")]


def test_pause__a_step_in_flight_is_recorded_and_the_next_is_not_sent():
    """Pausing while a worker performs a step: its outcome is kept, the run stops before the next."""
    run = start(sequence(log("a"), log("b")))
    claim = runner._claim(run.pk, timezone.now())
    services.run_pause(run=run)
    assert runner._record(claim, *runner._perform(claim)) == "paused"
    run.refresh_from_db()
    assert (run.status, run.current_step) == (RunStatus.PAUSED, "b")
    assert runner.run_advance(run_id=run.pk) == "nothing to do"
    run = drive(services.run_resume(run=run))
    assert run.status == RunStatus.SUCCEEDED
    assert path(run) == [("a", 1, "succeeded"), ("b", 1, "succeeded")]


def test_pause__a_wait_keeps_its_time_and_is_not_woken_while_paused():
    """A paused wait is not sent by recovery when due; resumed, it waits on (or ends) at its time."""
    run = start(sequence({"id": "w", "action": "wait", "params": {"seconds": 60}}, log("after")))
    now = timezone.now()
    run = drive(run, now=now)
    wake_at = run.wake_at
    services.run_pause(run=run)
    later = now + timedelta(seconds=61)
    assert runner.runs_recover(now=later) == 0
    run = services.run_resume(run=run)
    assert (run.status, run.wake_at) == (RunStatus.WAITING, wake_at)
    assert runner.runs_recover(now=later) == 1
    run = drive(run, now=later)
    assert run.status == RunStatus.SUCCEEDED


def test_cancel__ends_the_run_and_a_step_in_flight_is_not_used():
    """Cancelled: finished with the reason; the step that was running is recorded as not used."""
    run = start(sequence(log("a"), log("b")))
    claim = runner._claim(run.pk, timezone.now())
    run = services.run_cancel(run=run, reason="wrong inputs")
    assert (run.status, run.error) == (RunStatus.CANCELLED, "cancelled: wrong inputs")
    assert runner._record(claim, *runner._perform(claim)) == "discarded"
    run.refresh_from_db()
    assert run.status == RunStatus.CANCELLED
    assert run.steps.get().error == "(not used: the run was cancelled)"
    with pytest.raises(RunStateError, match="only a paused run can be resumed; this one is cancelled"):
        services.run_resume(run=run)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (services.run_pause, "only a running or waiting run can be paused; this one is succeeded."),
        (services.run_resume, "only a paused run can be resumed; this one is succeeded."),
        (services.run_cancel, "only an unfinished run can be cancelled; this one is succeeded."),
        (services.run_retry, "only a failed run can be retried; this one is succeeded."),
    ],
)
def test_controls__refused_in_the_wrong_state(change, message):
    """Each control says which states it needs."""
    run = drive(start(sequence(log("a"))))
    with pytest.raises(RunStateError) as caught:
        change(run=run)
    assert str(caught.value) == message


def test_retry__sequence_runs_the_failed_step_again_and_not_the_ones_before(server):
    """A failed http step is run again under a new step number (a new key); earlier steps are kept."""
    server.script = [Reply(status=404)]
    run = drive(start(sequence(log("a"), {"id": "call", "action": "http", "params": {"url": server.url}})))
    assert run.status == RunStatus.FAILED
    run = drive(services.run_retry(run=run))
    assert run.status == RunStatus.SUCCEEDED
    assert path(run) == [("a", 1, "succeeded"), ("call", 1, "failed"), ("call", 1, "succeeded")]
    assert [call.headers["idempotency-key"] for call in server.calls] == [f"{run.pk}:2:call", f"{run.pk}:3:call"]
    assert AuditEvent.objects.filter(action="retried", object_type="workflowrun", object_id=str(run.pk)).exists()


def test_retry__state_machine_starts_again_at_the_state_that_failed(server):
    """A run that took an error transition into a failed terminal state is retried from the failed state."""
    server.script = [Reply(status=404)]
    machine = {
        "type": "state_machine",
        "initial_state": "call",
        "states": [
            {
                "id": "call",
                "action": "http",
                "params": {"url": server.url},
                "transitions": {"success": "ok", "error": "bad"},
            },
            {"id": "ok", "terminal": "succeeded"},
            {"id": "bad", "terminal": "failed"},
        ],
    }
    run = drive(start(machine))
    assert (run.status, run.current_step) == (RunStatus.FAILED, "bad")
    run = drive(services.run_retry(run=run))
    assert (run.status, run.current_step) == (RunStatus.SUCCEEDED, "ok")
    assert [step[0] for step in path(run)] == ["call", "bad", "call", "ok"]


def test_retry__dag_runs_failed_and_skipped_nodes_only(server):
    """A dag's failed node and the nodes it skipped run again; nodes that succeeded do not."""
    server.script = [Reply(status=404)]
    definition = {
        "type": "dag",
        "nodes": [
            {"id": "a", "action": "http", "params": {"url": server.url}},
            log("b"),
            {**log("c"), "depends_on": ["a", "b"]},
        ],
    }
    run = drive(start(definition))
    assert run.status == RunStatus.FAILED
    run = drive(services.run_retry(run=run))
    assert run.status == RunStatus.SUCCEEDED
    assert sorted(path(run)) == sorted(
        [("a", 1, "failed"), ("a", 1, "succeeded"), ("b", 1, "succeeded"), ("c", 1, "succeeded")]
    )


def test_pause__a_dag_sends_its_ready_nodes_when_resumed():
    """A paused dag claims nothing; resumed, its ready nodes run."""
    run = start({"type": "dag", "nodes": [log("a"), log("b")]})
    services.run_pause(run=run)
    assert runner.run_advance(run_id=run.pk) == "nothing to do"
    run = drive(services.run_resume(run=run))
    assert run.status == RunStatus.SUCCEEDED


# --- The edges ----------------------------------------------------------------------------------


def test_api__controls_answer_the_run_or_409_and_hide_other_users_runs(client, user):
    """POST /api/runs/<id>/pause/ etc.; a wrong state is a 409 in the API's error shape; another user's run is a 404."""
    run = start(sequence({"id": "w", "action": "wait", "params": {"seconds": 60}}), user=user)
    drive(run)
    client.force_login(user)
    listed = client.get(reverse("run-list")).json()
    assert [item["id"] for item in listed["results"]] == [str(run.pk)]
    response = client.post(reverse("run-pause", args=[run.pk]))
    assert response.status_code == 200 and response.json()["status"] == "paused"
    again = client.post(reverse("run-pause", args=[run.pk]))
    assert again.status_code == 409
    assert again.json() == {"errors": {"status": ["only a running or waiting run can be paused; this one is paused."]}}
    cancelled = client.post(
        reverse("run-cancel", args=[run.pk]), {"reason": "not today"}, content_type="application/json"
    )
    assert cancelled.status_code == 200
    assert (cancelled.json()["status"], cancelled.json()["error"]) == ("cancelled", "cancelled: not today")
    assert cancelled.json()["steps"][0]["error"] == "run cancelled"
    client.force_login(UserFactory())
    assert client.post(reverse("run-resume", args=[run.pk])).status_code == 404
    assert client.get(reverse("run-detail", args=[run.pk])).status_code == 404


def test_admin__actions_pause_and_report_refusals(admin_client):
    """The run list's actions call the services and show a refusal as a message, not an error page."""
    run = start(sequence({"id": "w", "action": "wait", "params": {"seconds": 60}}))
    drive(run)
    url = reverse("admin:workflows_workflowrun_changelist")
    response = admin_client.post(url, {"action": "pause_runs", "_selected_action": [str(run.pk)]}, follow=True)
    assert f"Paused run {run.pk} (paused)." in response.content.decode()
    response = admin_client.post(url, {"action": "pause_runs", "_selected_action": [str(run.pk)]}, follow=True)
    assert "only a running or waiting run can be paused; this one is paused." in response.content.decode()
    page = admin_client.get(reverse("admin:workflows_workflowrun_change", args=[run.pk]))
    assert page.status_code == 200 and "waiting" in page.content.decode()


def test_command__run_steers_and_refuses_clearly():
    """workflow run RUN_ID --pause/--resume/--cancel/--retry; a refusal is a CommandError naming the flag."""
    run = start(sequence({"id": "w", "action": "wait", "params": {"seconds": 60}}))
    drive(run)
    out = StringIO()
    call_command("workflow", "run", str(run.pk), "--cancel", stdout=out)
    assert "Status: cancelled" in out.getvalue()
    with pytest.raises(CommandError, match="--retry: only a failed run can be retried; this one is cancelled."):
        call_command("workflow", "run", str(run.pk), "--retry", stdout=StringIO())
