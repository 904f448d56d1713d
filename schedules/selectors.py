"""Reads that need thought: trigger overviews, history, health."""

from __future__ import annotations

import time
from pathlib import Path

from django.conf import settings
from django.db import connection
from django.db.models import Count, OuterRef, QuerySet, Subquery

from .models import Execution, Trigger

BEAT_STALE_SECONDS = 60


def triggers_with_last_status(queryset: QuerySet[Trigger] | None = None) -> QuerySet[Trigger]:
    """Triggers with ``last_status`` and ``execution_count`` annotated (no query per row)."""
    queryset = queryset if queryset is not None else Trigger.objects.all()
    last = Execution.objects.filter(trigger=OuterRef("pk")).order_by("-scheduled_for")
    return queryset.select_related("workflow", "owner").annotate(
        last_status=Subquery(last.values("status")[:1]),
        execution_count=Count("executions", distinct=True),
    )


def trigger_history(trigger: Trigger, *, limit: int = 20) -> list[Execution]:
    """The trigger's latest executions, newest slot first."""
    return list(trigger.executions.order_by("-scheduled_for")[:limit])


def beat_heartbeat_age() -> float | None:
    """Seconds since beat last ticked, or None if it never has."""
    path = Path(settings.SCHEDULER_BEAT_HEARTBEAT_FILE)
    try:
        return max(0.0, time.time() - path.stat().st_mtime)
    except OSError:
        return None


def health_checks() -> dict[str, str]:
    """Each part: 'ok' or why not."""
    checks: dict[str, str] = {}
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        checks["database"] = "ok"
    except Exception as exc:  # noqa: BLE001 - any failure is a health answer, not a crash
        checks["database"] = f"error: {type(exc).__name__}"
    try:
        from scheduler_project.celery import app

        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
        checks["broker"] = "ok"
    except Exception as exc:  # noqa: BLE001
        checks["broker"] = f"error: {type(exc).__name__}"
    age = beat_heartbeat_age()
    if age is None:
        checks["beat"] = "no heartbeat yet"
    elif age > BEAT_STALE_SECONDS:
        checks["beat"] = f"last tick {age:.0f}s ago"
    else:
        checks["beat"] = "ok"
    return checks
