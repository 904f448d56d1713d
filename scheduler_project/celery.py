"""The Celery app: configured from Django settings under the CELERY_ namespace."""

import os
from typing import Any

from celery import Celery, signals
from django.db import close_old_connections

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
