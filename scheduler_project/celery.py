"""The Celery app: configured from Django settings under the CELERY_ namespace; the worker's and
beat's metrics ports and JSON logs are set up here, from Celery's signals."""

import logging
import os
import sys
from typing import Any

from celery import Celery, signals
from django.db import close_old_connections, connections

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "scheduler_project.settings")

app = Celery("scheduler_project")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@signals.task_prerun.connect(weak=False)
def _reuse_a_sound_connection(**_: Any) -> None:
    """Before each task, as Django does before each request: drop the connection if it is too old
    (CONN_MAX_AGE) or broken, else keep it and let CONN_HEALTH_CHECKS test it on first use.

    Celery's Django fixup otherwise closes it around every task (celery/celery#9824), and a new
    PostgreSQL connection per task costs more than the task's own queries. CELERY_DB_REUSE_MAX
    (settings) makes the fixup close it only every that many tasks.
    """
    close_old_connections()


def _greenlet_per_task() -> bool:
    gevent = sys.modules.get("gevent.monkey")
    return gevent is not None and gevent.is_module_patched("threading")


@signals.task_postrun.connect(weak=False)
def _close_a_greenlets_connection(**_: Any) -> None:
    """Under the gevent pool each task runs in a greenlet of its own, and Django's connections
    belong to it: no later task can reuse them, so they are closed with the task (left open, they
    pile up until PostgreSQL refuses clients: "sorry, too many clients already")."""
    if _greenlet_per_task():
        connections.close_all()


@signals.celeryd_init.connect(weak=False)
def _worker_metrics_directory(**_: Any) -> None:
    """With SCHEDULER_WORKER_METRICS_PORT, the worker's processes (the prefork children make the
    calls) keep their counts in one directory that the main process adds up; celeryd_init is the
    worker's first signal, before the pool forks."""
    from django.conf import settings

    if not settings.SCHEDULER_WORKER_METRICS_PORT:
        return
    from . import metrics

    metrics.prepare_worker_multiprocess()


@signals.worker_init.connect(weak=False)
def _serve_worker_metrics(**_: Any) -> None:
    from django.conf import settings

    if settings.SCHEDULER_WORKER_METRICS_PORT:
        from . import metrics

        metrics.serve_worker_metrics(
            port=settings.SCHEDULER_WORKER_METRICS_PORT, address=settings.SCHEDULER_METRICS_BIND_ADDRESS
        )


@signals.worker_init.connect(weak=False)
def _outbound_pool_per_concurrency(sender: Any = None, **_: Any) -> None:
    """A threads or gevent worker makes up to -c calls at once, and they share one connection pool
    per endpoint: keep as many connections as that, not urllib3's 10 (beyond it, each call's
    connection was closed after use, with a "Connection pool is full" warning, and the next call
    connected again). A prefork child makes one call at a time and never reaches the bound."""
    concurrency = getattr(sender, "concurrency", None)
    if isinstance(concurrency, int) and concurrency > 0:
        from workflows import network

        network.POOL_MAXSIZE = max(network.POOL_MAXSIZE, concurrency)


@signals.worker_shutdown.connect(weak=False)
def _remove_worker_metrics_directory(**_: Any) -> None:
    metrics = sys.modules.get("scheduler_project.metrics")
    if metrics is not None:
        metrics.remove_worker_multiprocess()


@signals.beat_init.connect(weak=False)
def _serve_beat_metrics(**_: Any) -> None:
    from django.conf import settings

    if settings.SCHEDULER_BEAT_METRICS_PORT:
        from . import metrics

        metrics.serve_beat_metrics(
            port=settings.SCHEDULER_BEAT_METRICS_PORT, address=settings.SCHEDULER_METRICS_BIND_ADDRESS
        )


@signals.after_setup_logger.connect(weak=False)
@signals.after_setup_task_logger.connect(weak=False)
def _json_log_lines(logger: logging.Logger, **_: Any) -> None:
    """Celery configures the worker's and beat's logging itself (not from Django's LOGGING): with
    SCHEDULER_LOG_FORMAT=json its handlers write our JSON lines too."""
    from django.conf import settings

    if settings.SCHEDULER_LOG_FORMAT != "json":
        return
    from .logs import JsonFormatter

    for handler in logger.handlers:
        handler.setFormatter(JsonFormatter())
