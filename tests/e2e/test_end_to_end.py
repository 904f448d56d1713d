"""End to end: real celery beat and worker processes, the test database and broker, and an HTTP
endpoint on 127.0.0.1. Beat fires the triggers; nothing here calls a task directly."""

from __future__ import annotations

import socket
import subprocess
import threading
from datetime import timedelta

import pytest
from django.utils import timezone
from django_celery_results.models import TaskResult

from schedules import services
from schedules.models import Execution, ExecutionStatus, Trigger
from tests.factories import TriggerFactory, WorkflowFactory

from .harness import BIN, ROOT, Endpoint, Reply, wait_for

pytestmark = pytest.mark.e2e


def finished_execution(trigger: Trigger, *, timeout: float) -> Execution:
    def finished():
        return (
            Execution.objects.filter(trigger=trigger, status__in=[ExecutionStatus.SUCCEEDED, ExecutionStatus.FAILED])
            .order_by("scheduled_for")
            .first()
        )

    return wait_for(finished, timeout=timeout, what=f"an execution of {trigger.name} to finish")


def once_trigger(workflow, *, in_seconds: float = 3, **extra) -> Trigger:
    return TriggerFactory(
        workflow=workflow, kind="once", run_at=timezone.now() + timedelta(seconds=in_seconds), **extra
    )


def test_retries__503_twice_then_200_succeeds_on_third_attempt_with_growing_gaps(stack, endpoint, user):
    """503, 503, 200: one execution, succeeded, 3 attempts, each wait longer than the last."""
    endpoint.script = [Reply(status=503), Reply(status=503), Reply(status=200)]
    workflow = WorkflowFactory(owner=user, endpoint_url=endpoint.url)
    stack.start_worker()
    stack.start_beat()
    trigger = once_trigger(workflow, max_attempts=3, min_backoff_seconds=1, max_backoff_seconds=10)

    execution = finished_execution(trigger, timeout=60)

    assert execution.status == ExecutionStatus.SUCCEEDED
    assert execution.attempts == 3
    assert execution.http_status == 200
    assert Execution.objects.filter(trigger=trigger).count() == 1
    calls = endpoint.wait_for_calls(3, timeout=5)
    assert len(calls) == 3
    assert execution.run_id == endpoint.runs[str(execution.pk)]
    assert {call.headers["idempotency-key"] for call in calls} == {str(execution.pk)}
    assert [call.body["attempt"] for call in calls] == [1, 2, 3]
    assert all(call.body["scheduled_for"] == trigger.run_at.isoformat() for call in calls)
    waits = [entry["retry_in_seconds"] for entry in execution.metadata["attempts"][:2]]
    assert 1 <= waits[0] <= 2 <= waits[1] <= 4
    assert waits[1] > waits[0]
    gaps = [calls[1].at - calls[0].at, calls[2].at - calls[1].at]
    # Each real gap is at least the wait the worker chose for it.
    assert gaps[0] >= waits[0] - 0.05
    assert gaps[1] >= waits[1] - 0.05
    assert gaps[1] > gaps[0]


def test_retries__404_fails_after_one_attempt(stack, endpoint, user):
    """A 404 is final: failed after 1 attempt, the endpoint called once."""
    endpoint.default = Reply(status=404, body={"error": "no such workflow"})
    workflow = WorkflowFactory(owner=user, endpoint_url=endpoint.url)
    stack.start_worker()
    stack.start_beat()
    trigger = once_trigger(workflow, max_attempts=3, min_backoff_seconds=1, max_backoff_seconds=10)

    execution = finished_execution(trigger, timeout=60)

    assert execution.status == ExecutionStatus.FAILED
    assert execution.attempts == 1
    assert execution.http_status == 404
    assert "404" in execution.error
    assert len(endpoint.calls) == 1


def test_interval_trigger__fires_repeatedly_and_stops_when_paused(stack, endpoint, user):
    """An every-2-seconds trigger fires on consecutive slots; after pause, no slot after it runs."""
    workflow = WorkflowFactory(owner=user, endpoint_url=endpoint.url)
    stack.start_worker()
    stack.start_beat()
    trigger = TriggerFactory(workflow=workflow, kind="interval", interval_seconds=2)

    def three_succeeded():
        done = Execution.objects.filter(trigger=trigger, status=ExecutionStatus.SUCCEEDED)
        return list(Execution.objects.filter(trigger=trigger).order_by("scheduled_for")) if done.count() >= 3 else None

    # Every slot gets its execution (one the machine was too slow for is recorded skipped, overlap).
    executions = wait_for(three_succeeded, timeout=40, what="three succeeded interval executions")
    slots = [execution.scheduled_for for execution in executions]
    report = [(e.scheduled_for.isoformat(), e.status, e.skip_reason) for e in executions]
    assert all(b - a == timedelta(seconds=2) for a, b in zip(slots, slots[1:], strict=False)), report
    assert all(slot.timestamp() % 2 == 0 for slot in slots), report

    paused = services.trigger_pause(trigger=trigger, reason="e2e")
    assert paused.periodic_task.enabled is False
    # Proof that beat kept running after the pause: a second trigger fires twice after it.
    control_endpoint = Endpoint()
    try:
        control = TriggerFactory(
            workflow=WorkflowFactory(owner=user, endpoint_url=control_endpoint.url), kind="interval", interval_seconds=2
        )
        wait_for(
            lambda: Execution.objects.filter(trigger=control, scheduled_for__gt=paused.paused_at).count() >= 2,
            timeout=30,
            what="the control trigger to fire twice after the pause",
        )
    finally:
        control_endpoint.close()
    assert not Execution.objects.filter(trigger=trigger, scheduled_for__gt=paused.paused_at).exists()
    calls_for_trigger = [c for c in endpoint.calls if c.body["trigger_id"] == trigger.pk]
    assert len(calls_for_trigger) == Execution.objects.filter(trigger=trigger).count()


def test_once_trigger__fires_exactly_once_even_across_a_beat_restart(stack, endpoint, user):
    """A once trigger runs one time; a SIGKILLed and restarted beat does not run it again."""
    workflow = WorkflowFactory(owner=user, endpoint_url=endpoint.url)
    stack.start_worker()
    beat = stack.start_beat()
    trigger = once_trigger(workflow)

    execution = finished_execution(trigger, timeout=60)
    assert execution.status == ExecutionStatus.SUCCEEDED

    # beat only writes its bookkeeping back every few minutes; a killed beat re-reads old state.
    beat.kill()
    stack.start_beat()
    control_endpoint = Endpoint()
    try:
        started = timezone.now()
        control = TriggerFactory(
            workflow=WorkflowFactory(owner=user, endpoint_url=control_endpoint.url), kind="interval", interval_seconds=2
        )
        wait_for(
            lambda: Execution.objects.filter(trigger=control, scheduled_for__gt=started).count() >= 2,
            timeout=30,
            what="the control trigger to fire twice after the restart",
        )
    finally:
        control_endpoint.close()

    assert Execution.objects.filter(trigger=trigger).count() == 1
    assert len([c for c in endpoint.calls if c.body["trigger_id"] == trigger.pk]) == 1
    trigger.refresh_from_db()
    assert trigger.next_run_at is None
    assert trigger.periodic_task.enabled is False


def test_worker_killed_mid_call__slot_completes_once_with_the_same_idempotency_key(stack, endpoint, user):
    """SIGKILL the worker while the endpoint holds the call; after a restart the slot succeeds once."""
    held = threading.Event()
    endpoint.script = [Reply(status=200, hold=held)]
    workflow = WorkflowFactory(owner=user, endpoint_url=endpoint.url, timeout_seconds=5)
    worker = stack.start_worker()
    stack.start_beat()
    trigger = once_trigger(workflow)

    endpoint.wait_for_calls(1, timeout=60)
    worker.kill()
    held.set()
    stack.start_worker()

    execution = finished_execution(trigger, timeout=90)

    assert execution.status == ExecutionStatus.SUCCEEDED
    assert execution.attempts == 2
    assert Execution.objects.filter(trigger=trigger).count() == 1
    calls = endpoint.wait_for_calls(2, timeout=5)
    assert {call.headers["idempotency-key"] for call in calls} == {str(execution.pk)}
    assert len(endpoint.runs) == 1
    assert execution.run_id == endpoint.runs[str(execution.pk)]


def test_builtin_endpoint__gunicorn_records_one_run_per_slot(stack, user):
    """A workflow without endpoint_url is run by this service's own endpoint, served by gunicorn."""
    web, base_url = stack.start_web()
    stack.env_extra["SCHEDULER_PUBLIC_BASE_URL"] = base_url
    workflow = WorkflowFactory(owner=user, endpoint_url="", default_inputs={"region": "eu"})
    stack.start_worker()
    beat = stack.start_beat()
    trigger = once_trigger(workflow, inputs={"report": "daily"})

    execution = finished_execution(trigger, timeout=60)

    assert execution.status == ExecutionStatus.SUCCEEDED
    assert execution.http_status == 202
    run = workflow.runs.get()
    assert str(run.id) == execution.run_id
    assert run.idempotency_key == str(execution.pk)
    assert run.inputs == {"region": "eu", "report": "daily"}

    healthcheck = [str(BIN / "python"), "manage.py", "healthcheck"]
    web_check = subprocess.run(
        [*healthcheck, "web", "--url", f"{base_url}/admin/login/"], cwd=ROOT, env=stack.env(), capture_output=True
    )
    assert web_check.returncode == 0, web_check.stderr.decode()
    beat_check = subprocess.run(
        [*healthcheck, "beat", "--max-age", "30"], cwd=ROOT, env=stack.env(), capture_output=True
    )
    assert beat_check.returncode == 0, beat_check.stderr.decode()
    assert beat.popen.poll() is None
    # The worker health check of docker-compose.yml.
    ping = subprocess.run(
        [
            str(BIN / "celery"),
            "-A",
            "scheduler_project",
            "inspect",
            "ping",
            "-d",
            f"celery@{socket.gethostname()}",
            "--timeout",
            "5",
        ],
        cwd=ROOT,
        env=stack.env(),
        capture_output=True,
    )
    assert ping.returncode == 0, ping.stdout.decode() + ping.stderr.decode()
    assert b"pong" in ping.stdout
    # Task results are written by django-celery-results in batches (scheduler_project/results.py).
    result = wait_for(
        lambda: TaskResult.objects.filter(task_name="schedules.run_execution", status="SUCCESS").first(),
        timeout=10,
        what="the run_execution task result",
    )
    assert str(execution.pk) in result.result
