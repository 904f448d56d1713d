"""Reads that need thought: trigger overviews, history, health."""

from __future__ import annotations

import time
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import connection
from django.db.models import Count, OuterRef, QuerySet, Subquery
from django.utils import timezone

from workflows.models import Workflow

from . import timing
from .models import Execution, ExecutionOrigin, ExecutionStats, Trigger, histogram_quantile

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


# --- Statistics ---------------------------------------------------------------------------------

_COUNTERS = ("total", "succeeded", "failed", "skipped", "duration_count", "duration_sum_ms")


def _summarize(rows: Iterable[ExecutionStats]) -> dict[str, Any]:
    """Add up ExecutionStats rows into the figures a page shows (counts survive pruning)."""
    sums = dict.fromkeys(_COUNTERS, 0)
    histogram: dict[str, int] = {}
    longest = 0
    for row in rows:
        for name in _COUNTERS:
            sums[name] += getattr(row, name)
        for key, count in (row.duration_histogram or {}).items():
            histogram[key] = histogram.get(key, 0) + count
        longest = max(longest, row.duration_max_ms)
    decided = sums["succeeded"] + sums["failed"]
    timed = sums["duration_count"]
    return {
        "total": sums["total"],
        "succeeded": sums["succeeded"],
        "failed": sums["failed"],
        "skipped": sums["skipped"],
        "success_rate": sums["succeeded"] / decided if decided else None,
        "avg_duration_ms": sums["duration_sum_ms"] / timed if timed else None,
        "p95_duration_ms": histogram_quantile(histogram, 0.95, max_ms=longest) if timed else None,
    }


def _last_statuses(executions: QuerySet[Execution], last: int) -> list[str]:
    """Statuses of the newest ``last`` executions (slot order, unfinished ones included), newest first."""
    if last <= 0:
        return []
    rows = executions.exclude(origin=ExecutionOrigin.FALLBACK).order_by("-scheduled_for", "-created_at")
    return list(rows.values_list("status", flat=True)[:last])


def _upcoming(trigger: Trigger, now: datetime, count: int) -> list[datetime]:
    """The trigger's next ``count`` slots: none while paused or completed, at most its runs remaining."""
    if not trigger.enabled or trigger.completed_at is not None:
        return []
    remaining = trigger.runs_remaining
    return timing.upcoming(trigger.cadence, now, count if remaining is None else min(count, remaining))


def trigger_stats(
    trigger: Trigger, *, last: int = 10, next_count: int = 5, now: datetime | None = None
) -> dict[str, Any]:
    """History figures for one trigger.

    total/succeeded/failed/skipped, success_rate (succeeded / (succeeded + failed), None before
    any), avg_duration_ms and p95_duration_ms (from the duration histogram) come from the running
    counters, so pruning does not change them; last_statuses (newest first) comes from the
    executions still kept; next_runs lists the next slots. Fallback executions are left out.
    """
    now = now or timezone.now()
    figures = _summarize(ExecutionStats.objects.filter(trigger=trigger))
    figures["last_statuses"] = _last_statuses(Execution.objects.filter(trigger=trigger), last)
    figures["next_runs"] = _upcoming(trigger, now, next_count)
    return figures


def workflow_stats(
    workflow: Workflow, *, last: int = 10, next_count: int = 5, now: datetime | None = None
) -> dict[str, Any]:
    """History figures for a workflow: trigger_stats' figures over every trigger that called it.

    next_runs is the soonest ``next_count`` slots across its enabled triggers, each as
    {"at": datetime, "trigger_id": int, "trigger": name}.
    """
    now = now or timezone.now()
    figures = _summarize(ExecutionStats.objects.filter(workflow=workflow))
    figures["last_statuses"] = _last_statuses(Execution.objects.filter(workflow=workflow), last)
    upcoming = [
        {"at": at, "trigger_id": trigger.pk, "trigger": trigger.name}
        for trigger in workflow.triggers.filter(enabled=True, completed_at__isnull=True)
        for at in _upcoming(trigger, now, next_count)
    ]
    figures["next_runs"] = sorted(upcoming, key=lambda run: (run["at"], run["trigger_id"]))[:next_count]
    return figures
