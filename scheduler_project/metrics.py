"""Prometheus metrics: the scheduler's state, read at scrape time by the web's /metrics, and the
worker's and beat's own counters and histograms, served on ports of their own.

Why two places: web, worker and beat are separate processes (separate containers under docker
compose), and a worker's calls happen in its prefork children. The state (executions by status,
queue depth, dispatch lag, beat's last tick) is in the database and the broker, so any web process
can read it when Prometheus asks, with a few indexed queries. What only a process knows (how long
each call took, retries, how long a beat tick took) is counted where it happens, on the hot path
with nothing more than an in-memory increment, and served by that process:
``SCHEDULER_WORKER_METRICS_PORT`` (the worker's main process adds up its children's counts through
prometheus-client's multiprocess mode) and ``SCHEDULER_BEAT_METRICS_PORT``. Both are off by default.
https://prometheus.github.io/client_python/multiprocess/
"""

from __future__ import annotations

import glob
import hmac
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST

logger = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# --- Counted where it happens (worker and beat) --------------------------------------------------

# Outbound calls run from well under a second to the workflow's deadline (at most 300 s).
CALL_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
WORKFLOW_CALL_SECONDS = Histogram(
    "scheduler_workflow_call_duration_seconds",
    "Duration of one HTTP call to a workflow endpoint, by outcome (ok, retryable, rejected).",
    ["outcome"],
    buckets=CALL_BUCKETS,
)
EXECUTION_ATTEMPTS = Counter(
    "scheduler_execution_attempts",
    "Attempts a worker finished, by the execution's origin and the status it left (retrying = a retry follows).",
    ["origin", "status"],
)
EXECUTION_RETRIES = Counter(
    "scheduler_execution_retries",
    "Failed attempts that scheduled another attempt, by the execution's origin.",
    ["origin"],
)
BEAT_TICK_SECONDS = Histogram(
    "scheduler_beat_tick_duration_seconds",
    "Duration of one beat tick (the due-index look, dispatch, and the periodic tasks when leader).",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
BEAT_DISPATCHED = Counter("scheduler_beat_dispatched_triggers", "Trigger slots this beat dispatched.")


def observe_call(outcome: str, seconds: float) -> None:
    """One workflow call finished (workflows/client.py)."""
    WORKFLOW_CALL_SECONDS.labels(outcome).observe(seconds)


def observe_attempt(*, origin: str, status: str) -> None:
    """A worker finished an attempt of an execution and left it in ``status`` (schedules/dispatch.py)."""
    EXECUTION_ATTEMPTS.labels(origin, status).inc()
    if status == "retrying":
        EXECUTION_RETRIES.labels(origin).inc()


# --- Served by the worker and beat ---------------------------------------------------------------


def prepare_worker_multiprocess() -> str:
    """At the worker's start (celeryd_init, before the pool forks): give its processes a shared,
    empty directory for their counts. Returns the directory."""
    directory = os.environ.get(MULTIPROC_ENV)
    if directory:
        # Counts left by an earlier run would be added to this one's: start without them (only
        # prometheus-client's own *.db files: the directory may hold other things).
        os.makedirs(directory, exist_ok=True)
        for leftover in glob.glob(os.path.join(directory, "*.db")):
            os.remove(leftover)
    else:
        directory = tempfile.mkdtemp(prefix="scheduler-worker-metrics-")
        os.environ[MULTIPROC_ENV] = directory
        _made_directories.append(directory)
    # prometheus-client picks file-backed values when it is imported, which Django's app loading may
    # have done already; it reads the choice each time a labelled metric makes a child (the worker's
    # metrics all have labels, and their children are made in the pool processes), so choose again.
    from prometheus_client import values

    values.ValueClass = values.get_value_class()
    return directory


_made_directories: list[str] = []


def remove_worker_multiprocess() -> None:
    """At the worker's shutdown: remove the counts directory it made itself (not one it was given)."""
    while _made_directories:
        shutil.rmtree(_made_directories.pop(), ignore_errors=True)


def serve_worker_metrics(*, port: int, address: str) -> Any:
    """In the worker's main process: serve every process's counts, added up, on ``address:port``."""
    from prometheus_client import multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    server, _thread = start_http_server(port, addr=address, registry=registry)
    logger.info("worker metrics on http://%s:%s/metrics", address, server.server_port)
    return server


def serve_beat_metrics(*, port: int, address: str) -> Any:
    """In beat (one process): serve its own metrics on ``address:port``."""
    server, _thread = start_http_server(port, addr=address)
    logger.info("beat metrics on http://%s:%s/metrics", address, server.server_port)
    return server


# --- Read at scrape time (web /metrics) ----------------------------------------------------------


class StateCollector:
    """The scheduler's state from the database and the broker, a few cheap queries per scrape:
    no query reads the executions table beyond its unfinished or not-yet-counted rows."""

    def collect(self) -> Iterator[Metric]:
        from django.utils import timezone

        now = timezone.now()
        yield from self._executions()
        yield from self._lags(now)
        yield from self._queues()
        yield from self._beat(now)

    def _executions(self) -> Iterator[Metric]:
        from django.db.models import Count, Sum

        from schedules.models import FINISHED_STATUSES, UNFINISHED_STATUSES, Execution, ExecutionOrigin, ExecutionStats

        unfinished = GaugeMetricFamily(
            "scheduler_executions",
            "Executions not finished yet (queued, running, retrying), by status and origin.",
            labels=["status", "origin"],
        )
        counts = {(status.value, origin.value): 0 for status in UNFINISHED_STATUSES for origin in ExecutionOrigin}
        # The unfinished rows only (index execution_unfinished_lease): a small set however long the history.
        rows = (
            Execution.objects.filter(status__in=UNFINISHED_STATUSES)
            .order_by()
            .values_list("status", "origin")
            .annotate(n=Count("pk"))
        )
        for status, origin, n in rows:
            counts[(status, origin)] = n
        for (status, origin), n in sorted(counts.items()):
            unfinished.add_metric([status, origin], n)
        yield unfinished

        # The running stats (pruning never lowers them) plus the finished executions not folded into
        # them yet (partial index execution_uncounted), as the stats pages count them: fallbacks aside.
        finished = CounterMetricFamily(
            "scheduler_executions_finished",
            "Executions finished since the start (pruned ones included), by status; fallback runs not counted.",
            labels=["status"],
        )
        sums = ExecutionStats.objects.aggregate(
            succeeded=Sum("succeeded"), failed=Sum("failed"), skipped=Sum("skipped")
        )
        uncounted = dict(
            Execution.objects.filter(counted=False, status__in=FINISHED_STATUSES)
            .exclude(origin=ExecutionOrigin.FALLBACK)
            .order_by()
            .values_list("status")
            .annotate(n=Count("pk"))
        )
        for status in FINISHED_STATUSES:
            finished.add_metric([status.value], (sums[status.value] or 0) + uncounted.get(status.value, 0))
        yield finished

    def _lags(self, now: Any) -> Iterator[Metric]:
        from django.db.models import Min
        from django.db.models.functions import Coalesce

        from schedules.dispatch import next_due_at
        from schedules.models import Execution, ExecutionStatus

        # The soonest next_run_at of the due index: past now, beat is that far behind.
        due = next_due_at()
        lag = max(0.0, (now - due).total_seconds()) if due is not None else 0.0
        yield GaugeMetricFamily(
            "scheduler_dispatch_lag_seconds",
            "How long the most overdue trigger has been due without being dispatched (0: none is).",
            value=lag,
        )
        # Executions due to start whose message is not with the broker (held waits falling due,
        # publishes that failed): the unfinished rows only.
        oldest = (
            Execution.objects.filter(
                status__in=(ExecutionStatus.QUEUED, ExecutionStatus.RETRYING),
                sent_at__isnull=True,
            )
            # Waiting on another execution (overlap, concurrency limits) is by design, not lag.
            .exclude(wait_reason__in=("previous", "concurrency", "owner_concurrency"))
            .annotate(start_at=Coalesce("next_attempt_at", "due_at", "scheduled_for"))
            .filter(start_at__lte=now)
            .aggregate(oldest=Min("start_at"))["oldest"]
        )
        yield GaugeMetricFamily(
            "scheduler_unsent_execution_lag_seconds",
            "How long the oldest due, unfinished execution has waited without its message being sent (0: none has).",
            value=max(0.0, (now - oldest).total_seconds()) if oldest is not None else 0.0,
        )

    def _queues(self) -> Iterator[Metric]:
        from django.conf import settings

        from schedules.dispatch import broker_queue_depth

        depth = GaugeMetricFamily("scheduler_queue_depth", "Messages waiting in each broker queue.", labels=["queue"])
        up = 1
        for queue in settings.CELERY_TASK_QUEUES:
            count = broker_queue_depth(queue.name)
            if count is None:
                up = 0
                continue
            depth.add_metric([queue.name], count)
        yield depth
        yield GaugeMetricFamily("scheduler_broker_up", "1 when the broker answered the queue-depth reads.", value=up)

    def _beat(self, now: Any) -> Iterator[Metric]:
        from django.conf import settings

        from schedules.beat import PERIODIC_LEASE
        from schedules.models import BeatLease

        expires_at = BeatLease.objects.filter(name=PERIODIC_LEASE).values_list("expires_at", flat=True).first()
        if expires_at is None:
            return  # no beat has run yet: no sample, rather than a made-up age
        renewed_at = expires_at - timedelta(seconds=settings.SCHEDULER_BEAT_LEASE_SECONDS)
        yield GaugeMetricFamily(
            "scheduler_beat_last_tick_age_seconds",
            "Seconds since a beat last ticked (the lead beat renews its lease in every tick, at most a second apart).",
            value=max(0.0, (now - renewed_at).total_seconds()),
        )


def state_registry() -> CollectorRegistry:
    """A registry with the state only: the web process's own counters would differ per gunicorn worker."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StateCollector())
    return registry


def render(registry: CollectorRegistry) -> tuple[bytes, str]:
    return generate_latest(registry), CONTENT_TYPE_LATEST


def token_matches(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())
