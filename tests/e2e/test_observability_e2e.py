"""End to end: the worker's and beat's metrics ports, JSON log lines from a real worker, and
Flower started as docker-compose starts it."""

from __future__ import annotations

import json
import socket
import urllib.request
from datetime import timedelta

import pytest
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from schedules.models import Execution, ExecutionStatus
from schedules.tasks import fire_trigger
from tests.factories import TriggerFactory, WorkflowFactory

from .harness import FLOWER_COMMAND, Process, wait_for

pytestmark = pytest.mark.e2e


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - 127.0.0.1 only
        return response.status, response.read().decode()


def samples(port: int) -> dict[tuple[str, tuple], float]:
    _, text = get(f"http://127.0.0.1:{port}/metrics")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_worker_and_beat_metrics_ports__count_what_their_processes_did(stack, endpoint, user):
    """A slot fired by beat and run in a worker's pool child shows on the worker's port (the main
    process adds up its children), beat's dispatch and ticks on beat's; the worker writes JSON lines
    carrying the trigger and task ids."""
    worker_port, beat_port = free_port(), free_port()
    worker = stack.start_worker(
        env_extra={"SCHEDULER_WORKER_METRICS_PORT": str(worker_port), "SCHEDULER_LOG_FORMAT": "json"}
    )
    stack.start_beat(env_extra={"SCHEDULER_BEAT_METRICS_PORT": str(beat_port)})
    workflow = WorkflowFactory(owner=user, endpoint_url=endpoint.url)
    trigger = TriggerFactory(workflow=workflow, kind="once", run_at=timezone.now() + timedelta(seconds=2))
    wait_for(
        lambda: Execution.objects.filter(trigger=trigger, status=ExecutionStatus.SUCCEEDED).exists(),
        timeout=60,
        what="the once trigger's execution to succeed",
    )

    attempts = ("scheduler_execution_attempts_total", (("origin", "schedule"), ("status", "succeeded")))
    wait_for(lambda: samples(worker_port).get(attempts) == 1, timeout=10, what="the worker's port to count the attempt")
    assert samples(worker_port)[("scheduler_workflow_call_duration_seconds_count", (("outcome", "ok"),))] == 1
    beat = samples(beat_port)
    assert beat[("scheduler_beat_dispatched_triggers_total", ())] >= 1
    assert beat[("scheduler_beat_tick_duration_seconds_count", ())] >= 1

    missing = trigger.pk + 1000
    sent = fire_trigger.delay(missing)

    def ignored_line() -> dict | None:
        for line in worker.log().splitlines():
            if line.startswith("{") and f"fire for trigger {missing} ignored" in line:
                return json.loads(line)
        return None

    entry = wait_for(ignored_line, timeout=30, what="the worker's JSON line about the missing trigger")
    assert entry["level"] == "INFO" and entry["logger"] == "schedules.dispatch"
    assert entry["trigger_id"] == missing and entry["task_id"] == sent.id
    assert entry["time"].endswith("+00:00")
    for line in worker.log().splitlines():
        if line.startswith("{"):
            assert {"time", "level", "logger", "message"} <= set(json.loads(line))


def test_flower__compose_command_serves_its_pages(stack):
    """`celery -A scheduler_project flower` (docker-compose's flower service) answers 200 on loopback."""
    port = free_port()
    flower = Process("flower", [*FLOWER_COMMAND, "--address=127.0.0.1", f"--port={port}"], stack.tmp_path, stack.env())
    stack.processes.append(flower)
    flower.wait_for_log("Visit me at", timeout=60)

    def answers() -> tuple[int, str] | None:
        try:
            return get(f"http://127.0.0.1:{port}/healthcheck")
        except OSError:
            return None

    assert wait_for(answers, timeout=30, what="flower to answer") == (200, "OK")
    assert get(f"http://127.0.0.1:{port}/")[0] == 200
