"""The Celery app: configured from Django settings under the CELERY_ namespace."""

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
