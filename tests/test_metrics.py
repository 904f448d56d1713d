"""Prometheus metrics: /metrics (state read at scrape time, closed by default in production) and
the worker's and beat's own counters, observed by calling the instrumented functions."""

from __future__ import annotations

import json
import threading
import time
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.utils import timezone
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from scheduler_project import metrics
from scheduler_project.celery import app as celery_app
from schedules import dispatch, services
from schedules.beat import PERIODIC_LEASE, TriggerScheduler
from schedules.models import BeatLease, Execution, ExecutionStatus, Trigger
from tests.factories import WorkflowFactory
from workflows.client import WorkflowCall, call_workflow
from workflows.exceptions import WorkflowRejected, WorkflowUnavailable


class _Endpoint(BaseHTTPRequestHandler):
    """Answers each call with the status its path names: /200, /503, /404."""

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        status = int(self.path.strip("/"))
        body = json.dumps({"run_id": "run-1"}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def endpoint():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Endpoint)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def scrape(client, **headers) -> dict[tuple[str, tuple], float]:
    """GET /metrics and return {(sample name, sorted labels): value}."""
    response = client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def sample(name: str, **labels: str) -> float | None:
    """A sample of this process's default registry (the worker's and beat's metrics)."""
    return REGISTRY.get_sample_value(name, labels)


def started_run(trigger: Trigger, django_capture_on_commit_callbacks) -> Execution:
    """A run now, published to the test broker, then claimed by 'the worker' (this process)."""
    with django_capture_on_commit_callbacks(execute=True):
        execution = services.trigger_run_now(trigger=trigger)
    claimed = dispatch.execution_claim(execution_id=execution.pk, attempt=1)
    assert claimed is not None
    return claimed


# --- /metrics ----------------------------------------------------------------------------------


def test_metrics__state_moves_as_executions_are_created_and_finish(
    client, user, endpoint, settings, django_capture_on_commit_callbacks
):
    """Unfinished executions by status and origin, finished ones by status (stable across the stats
    fold), queue depth: each sample follows what happens."""
    settings.DEBUG = True  # open without a token
    workflow = WorkflowFactory(owner=user, endpoint_url=f"{endpoint}/200")
    trigger = services.trigger_create(owner=user, workflow=workflow, name="Hourly", kind="cron", cron="0 * * * *")
    before = scrape(client)
    assert before[("scheduler_executions", (("origin", "manual"), ("status", "queued")))] == 0
    succeeded = ("scheduler_executions_finished_total", (("status", "succeeded"),))
    assert before[succeeded] == 0
    depth_before = before.get(("scheduler_queue_depth", (("queue", "normal"),)), 0)

    with django_capture_on_commit_callbacks(execute=True):
        execution = services.trigger_run_now(trigger=trigger)
    queued = scrape(client)
    assert queued[("scheduler_executions", (("origin", "manual"), ("status", "queued")))] == 1
    assert queued[("scheduler_queue_depth", (("queue", "normal"),))] == depth_before + 1
    assert queued[("scheduler_broker_up", ())] == 1

    claimed = dispatch.execution_claim(execution_id=execution.pk, attempt=1)
    running = scrape(client)
    assert running[("scheduler_executions", (("origin", "manual"), ("status", "queued")))] == 0
    assert running[("scheduler_executions", (("origin", "manual"), ("status", "running")))] == 1

    assert dispatch.execution_perform(execution=claimed).status == ExecutionStatus.SUCCEEDED
    done = scrape(client)
    assert done[("scheduler_executions", (("origin", "manual"), ("status", "running")))] == 0
    assert done[succeeded] == 1
    assert services.stats_fold() == 1
    assert scrape(client)[succeeded] == 1  # counted once, before and after the fold


def test_metrics__dispatch_lag_and_beat_tick_age(client, trigger, settings):
    """The lag is how long the most overdue trigger has waited; beat's age comes from its lease."""
    settings.DEBUG = True
    assert scrape(client)[("scheduler_dispatch_lag_seconds", ())] == 0
    assert not any(name == "scheduler_beat_last_tick_age_seconds" for name, _ in scrape(client))
    Trigger.objects.filter(pk=trigger.pk).update(next_run_at=timezone.now() - timedelta(seconds=120))
    BeatLease.objects.create(
        name=PERIODIC_LEASE,
        holder="test:1",
        expires_at=timezone.now() + timedelta(seconds=settings.SCHEDULER_BEAT_LEASE_SECONDS) - timedelta(seconds=30),
    )
    samples = scrape(client)
    assert 119 <= samples[("scheduler_dispatch_lag_seconds", ())] < 180
    assert 29 <= samples[("scheduler_beat_last_tick_age_seconds", ())] < 60


def test_metrics__unsent_lag_counts_due_executions_without_a_message(client, trigger, settings):
    """A queued execution due a minute ago whose message never went out shows as send lag."""
    settings.DEBUG = True
    assert scrape(client)[("scheduler_unsent_execution_lag_seconds", ())] == 0
    Execution.objects.create(
        trigger=trigger, workflow=trigger.workflow, scheduled_for=timezone.now() - timedelta(seconds=60)
    )
    assert 59 <= scrape(client)[("scheduler_unsent_execution_lag_seconds", ())] < 120


def test_metrics__closed_without_token_when_debug_is_off(client, db, settings):
    """DEBUG off and no SCHEDULER_METRICS_TOKEN: 403 with what to set, never the figures."""
    settings.DEBUG = False
    settings.SCHEDULER_METRICS_TOKEN = ""
    response = client.get("/metrics")
    assert response.status_code == 403
    assert "SCHEDULER_METRICS_TOKEN" in response.json()["errors"]["metrics"][0]


def test_metrics__token_required_when_set(client, db, settings):
    """With a token, only 'Authorization: Bearer <token>' gets the figures; others get 401."""
    settings.DEBUG = True
    settings.SCHEDULER_METRICS_TOKEN = "s3cret-token"
    assert client.get("/metrics").status_code == 401
    wrong = client.get("/metrics", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong["WWW-Authenticate"].startswith("Bearer")
    assert "s3cret-token" not in wrong.content.decode()
    assert ("scheduler_dispatch_lag_seconds", ()) in scrape(client, Authorization="Bearer s3cret-token")


def test_metrics__only_get(client, db, settings):
    """Other methods answer 405 in the API's error shape."""
    settings.DEBUG = True
    response = client.generic("HEAD", "/metrics")
    assert response.status_code == 405


# --- The worker's and beat's own metrics ------------------------------------------------------


def test_call_workflow__observes_duration_by_outcome(endpoint):
    """Every call lands in the duration histogram under ok, retryable or rejected."""

    def call(path: str) -> WorkflowCall:
        return WorkflowCall(
            url=f"{endpoint}{path}",
            method="POST",
            secret="whsec_" + "A" * 32,
            previous_secret=None,
            timeout_seconds=5,
            idempotency_key="metrics-test",
            headers={},
            payload={},
        )

    name = "scheduler_workflow_call_duration_seconds_count"
    before = {outcome: sample(name, outcome=outcome) or 0 for outcome in ("ok", "retryable", "rejected")}
    call_workflow(call("/200"))
    with pytest.raises(WorkflowUnavailable):
        call_workflow(call("/503"))
    with pytest.raises(WorkflowRejected):
        call_workflow(call("/404"))
    for outcome in ("ok", "retryable", "rejected"):
        assert sample(name, outcome=outcome) == before[outcome] + 1
    assert sample("scheduler_workflow_call_duration_seconds_sum", outcome="ok") > 0


def test_execution_perform__counts_attempts_and_retries(user, endpoint, django_capture_on_commit_callbacks):
    """An attempt that will be retried counts as a retry; each attempt counts by origin and status."""
    workflow = WorkflowFactory(owner=user, endpoint_url=f"{endpoint}/503")
    trigger = services.trigger_create(
        owner=user, workflow=workflow, name="Flaky", kind="cron", cron="0 * * * *", max_attempts=3
    )
    retries_before = sample("scheduler_execution_retries_total", origin="manual") or 0
    retrying_before = sample("scheduler_execution_attempts_total", origin="manual", status="retrying") or 0
    outcome = dispatch.execution_perform(execution=started_run(trigger, django_capture_on_commit_callbacks))
    assert outcome.status == ExecutionStatus.RETRYING
    assert sample("scheduler_execution_retries_total", origin="manual") == retries_before + 1
    assert sample("scheduler_execution_attempts_total", origin="manual", status="retrying") == retrying_before + 1


# django-celery-beat closes the connection between ticks: real commits, not a test transaction.
@pytest.mark.django_db(transaction=True)
def test_beat_tick__observed_in_the_tick_histogram(monkeypatch):
    """Each tick of TriggerScheduler adds one observation of its duration."""
    scheduler = TriggerScheduler(app=celery_app, lazy=True)
    scheduler._last_sync = time.monotonic()
    monkeypatch.setattr(scheduler, "apply_async", lambda entry, *args, **kwargs: None)
    try:
        before = sample("scheduler_beat_tick_duration_seconds_count") or 0
        scheduler.tick()
        scheduler.tick()
        assert sample("scheduler_beat_tick_duration_seconds_count") == before + 2
    finally:
        scheduler._finalize.cancel()


def test_serve_beat_metrics__serves_this_process_on_its_port():
    """The beat's port serves the default registry's metrics (here, an ephemeral port on loopback)."""
    import urllib.request

    metrics.BEAT_DISPATCHED.inc(0)
    server = metrics.serve_beat_metrics(port=0, address="127.0.0.1")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.server_port}/metrics", timeout=5) as response:
            text = response.read().decode()
        assert "scheduler_beat_tick_duration_seconds_bucket" in text
        assert "scheduler_workflow_call_duration_seconds" in text
    finally:
        server.shutdown()
        server.server_close()


def test_prepare_worker_multiprocess__given_directory_loses_only_old_counts(tmp_path, monkeypatch):
    """A PROMETHEUS_MULTIPROC_DIR set by the operator is emptied of earlier counts (*.db) only."""
    from prometheus_client import values

    monkeypatch.setenv(metrics.MULTIPROC_ENV, str(tmp_path))
    monkeypatch.setattr(values, "ValueClass", values.ValueClass)  # put back after the test
    (tmp_path / "counter_123.db").write_bytes(b"old")
    (tmp_path / "keep.txt").write_text("not ours")
    assert metrics.prepare_worker_multiprocess() == str(tmp_path)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["keep.txt"]
    assert values.ValueClass is not values.MutexValue  # file-backed from now on in this process
