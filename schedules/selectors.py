"""Reads that need thought: trigger overviews, history, health."""

from __future__ import annotations

import time
from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta
from datetime import time as clock
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

from django.conf import settings
from django.db import connection
from django.db.models import Count, OuterRef, QuerySet, Subquery, Sum
from django.db.models.functions import Coalesce
from django.utils import timezone

from workflows.models import Workflow

from . import timing
from .exceptions import ScheduleError
from .models import (
    FINISHED_STATUSES,
    BeatLease,
    CatchupPolicy,
    DstPolicy,
    Execution,
    ExecutionOrigin,
    ExecutionStats,
    ExecutionStatus,
    Handoff,
    OverlapPolicy,
    Priority,
    SkipReason,
    StatsDelta,
    Trigger,
    TriggerKind,
    TriggerStatus,
    histogram_quantile,
    stats_deltas,
)

BEAT_STALE_SECONDS = 60
# Related workflow fields a list defers: encrypted, decrypted on load (tens of µs each), never shown.
WORKFLOW_SECRETS = ("workflow__secret", "workflow__previous_secret")


# What a trigger's last run came to: a skip (overlap, window, missed) is not a run, and counting
# it would let a skip hide the failure before it.
OUTCOME_STATUSES = (ExecutionStatus.SUCCEEDED, ExecutionStatus.FAILED)


def triggers_with_last_status(
    queryset: QuerySet[Trigger] | None = None, *, last_outcome: bool = False
) -> QuerySet[Trigger]:
    """Triggers with ``last_status`` and ``finished_executions`` annotated (no query per row).

    With ``last_outcome``, ``last_outcome_id`` instead of ``last_status``: the newest execution that
    succeeded or failed (load a page's with ``executions_by_id``).

    last_status is the status of the execution with the newest slot; finished_executions is the
    trigger's ExecutionStats total plus its finished executions not folded into it yet (fallbacks
    left out; pruning does not lower it). Each is a subquery that reads a few index entries per
    trigger shown (on (trigger, -scheduled_for), on the stats' (trigger, workflow) and on the
    partial execution_uncounted), so a page costs the same whether a trigger has ten executions or
    a million; a COUNT over the executions would read every one.
    """
    queryset = queryset if queryset is not None else Trigger.objects.all()
    last = Execution.objects.filter(trigger=OuterRef("pk")).order_by("-scheduled_for")
    # One stats row per (trigger, workflow): a trigger moved to another workflow has several.
    finished = (
        ExecutionStats.objects.filter(trigger=OuterRef("pk"))
        .order_by()
        .values("trigger")
        .annotate(total=Sum("total"))
        .values("total")
    )
    # Finished executions stats_fold has not counted yet (a few per trigger at most, on the partial
    # index execution_uncounted), so the figure matches the stats pages at any moment.
    uncounted = (
        Execution.objects.filter(trigger=OuterRef("pk"), counted=False, status__in=FINISHED_STATUSES)
        .exclude(origin=ExecutionOrigin.FALLBACK)
        .order_by()
        .values("trigger")
        .annotate(total=Count("pk"))
        .values("total")
    )
    # The workflows' secrets are decrypted when loaded, and a trigger list never shows them.
    newest = (
        {"last_outcome_id": Subquery(last.filter(status__in=OUTCOME_STATUSES).values("pk")[:1])}
        if last_outcome
        else {"last_status": Subquery(last.values("status")[:1])}
    )
    return (
        queryset.select_related("workflow", "owner")
        .defer(*WORKFLOW_SECRETS)
        .annotate(
            **newest,
            finished_executions=Coalesce(Subquery(finished), 0) + Coalesce(Subquery(uncounted), 0),
        )
    )


def execution_sent_at(execution: Execution) -> datetime | None:
    """When the broker took the message of the execution's pending attempt: its own ``sent_at``,
    or for a first attempt beat published in a batch, the batch's (``Handoff``). None: not sent
    (waiting in the database, or the publish failed)."""
    if execution.sent_at is not None or execution.handoff_id is None:
        return execution.sent_at
    return Handoff.objects.filter(pk=execution.handoff_id).values_list("sent_at", flat=True).first()


def executions_by_id(ids: Iterable[Any]) -> dict[Any, Execution]:
    """The executions with these ids (None ignored), in one query, without their inputs and metadata."""
    wanted = {pk for pk in ids if pk is not None}
    if not wanted:
        return {}
    rows = Execution.objects.filter(pk__in=wanted).defer("inputs", "metadata")
    return {execution.pk: execution for execution in rows}


def triggers_with_last_execution(queryset: QuerySet[Trigger] | None = None) -> QuerySet[Trigger]:
    """triggers_with_last_status, where ``last_status``, ``last_slot_at`` and ``last_error`` are of the
    newest execution that succeeded or failed: a skip is not a run, and would hide the failure before
    it (subqueries on the (trigger, -scheduled_for) index: a page costs the same at any size)."""
    last = Execution.objects.filter(trigger=OuterRef("pk"), status__in=OUTCOME_STATUSES).order_by("-scheduled_for")
    return triggers_with_last_status(queryset).annotate(
        last_status=Subquery(last.values("status")[:1]),
        last_slot_at=Subquery(last.values("scheduled_for")[:1]),
        last_error=Subquery(last.values("error")[:1]),
    )


# Owners with up to this many triggers have their executions filtered by trigger id, the ids written
# into the query; owners with more, by a join on the triggers (see executions_owned_by).
OWNED_TRIGGER_IDS_MAX = 2000


def executions_owned_by(user: Any, queryset: QuerySet[Execution] | None = None) -> QuerySet[Execution]:
    """The executions of ``user``'s triggers: the rows ``filter(trigger__owner=user)`` gives, found fast.

    A list reads executions newest first off the index (-scheduled_for, -id) and keeps the user's
    until it has a page. Joined to the triggers, each row read costs an index probe into the
    triggers (~15 µs; a hash join would lose the order): fine for a user who owns most executions,
    but one with 0.3% of them reads ~15,000 rows for a page of 50, a quarter of a second. With the
    user's trigger ids written into the query (one small query first) the check is a hash lookup
    in a constant list (~1 µs a row), and with the exact ids the planner also sees when reading
    their triggers' executions off the (trigger, ...) indexes is cheaper. Past
    OWNED_TRIGGER_IDS_MAX ids the list costs more to send and plan (a few µs an id, for the count
    and for the page) than it saves, and such a user owns enough of the executions (2% of 100,000
    triggers) that the join finds a page within a few thousand rows.
    """
    queryset = queryset if queryset is not None else Execution.objects.all()
    ids = list(Trigger.objects.filter(owner=user).order_by().values_list("pk", flat=True)[: OWNED_TRIGGER_IDS_MAX + 1])
    if len(ids) > OWNED_TRIGGER_IDS_MAX:
        return queryset.filter(trigger__owner=user)
    return queryset.filter(trigger_id__in=ids)


def trigger_timezones(*, owner: Any | None = None) -> list[str]:
    """The time zones triggers use (``owner``'s triggers only, if given), sorted.

    A loose index scan on trigger_timezone_owner: each zone is one index probe for the next larger
    one (and one for whether the owner has a trigger in it), where SELECT DISTINCT reads every
    trigger (~30 ms at 100,000 on PostgreSQL, on every admin page view).
    """
    table = connection.ops.quote_name(Trigger._meta.db_table)
    owned = ""
    params: list[Any] = []
    if owner is not None:
        owned = f"AND EXISTS (SELECT 1 FROM {table} t WHERE t.timezone = zones.timezone AND t.owner_id = %s)"  # noqa: S608
        params.append(owner.pk)
    sql = (
        "WITH RECURSIVE zones(timezone) AS ("  # noqa: S608 - the table name is ours, the owner a parameter
        f"  SELECT MIN(timezone) FROM {table}"
        "  UNION ALL"
        f"  SELECT (SELECT MIN(t.timezone) FROM {table} t WHERE t.timezone > zones.timezone)"
        "  FROM zones WHERE zones.timezone IS NOT NULL"
        f") SELECT timezone FROM zones WHERE timezone IS NOT NULL {owned} ORDER BY timezone"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return [row[0] for row in cursor.fetchall()]


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


def beat_check(*, now: datetime | None = None) -> str:
    """'ok' while some beat is alive, from the lease the live beats renew every second in the
    database (so it answers the same in every container, wherever beat runs)."""
    from .beat import PERIODIC_LEASE

    try:
        expires_at = BeatLease.objects.filter(name=PERIODIC_LEASE).values_list("expires_at", flat=True).first()
    except Exception as exc:  # noqa: BLE001 - any failure is a health answer, not a crash
        return f"error: {type(exc).__name__}"
    if expires_at is None:
        return "no beat has run yet"
    silent = ((now or timezone.now()) - expires_at).total_seconds()
    return "ok" if silent <= BEAT_STALE_SECONDS else f"no beat for {silent:.0f}s"


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
    checks["beat"] = beat_check()
    # Without a broker a ping could only wait for its connection retries.
    checks["workers"] = workers_check() if checks["broker"] == "ok" else "unknown: the broker is unreachable"
    return checks


WORKER_PING_TIMEOUT_SECONDS = 1.0


def workers_check(*, timeout: float = WORKER_PING_TIMEOUT_SECONDS) -> str:
    """'ok' when a worker answers a ping within ``timeout`` seconds (the first answer ends the wait), else why not."""
    try:
        from scheduler_project.celery import app

        replies = app.control.ping(timeout=timeout, limit=1)
    except Exception as exc:  # noqa: BLE001 - any failure is a health answer, not a crash
        return f"error: {type(exc).__name__}"
    return "ok" if replies else f"no worker answered a ping within {timeout:g}s"


# --- Statistics ---------------------------------------------------------------------------------

_COUNTERS = ("total", "succeeded", "failed", "skipped", "duration_count", "duration_sum_ms")


def _summarize(rows: Iterable[ExecutionStats | StatsDelta]) -> dict[str, Any]:
    """Add up ExecutionStats rows (and executions not counted yet) into the figures a page shows
    (counts survive pruning)."""
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


def _uncounted(executions: QuerySet[Execution]) -> list[StatsDelta]:
    """The finished executions stats_fold has not counted yet, as deltas to add to the saved rows."""
    rows = executions.filter(counted=False, status__in=FINISHED_STATUSES).order_by()
    return list(stats_deltas(rows.values_list("trigger_id", "workflow_id", "status", "origin", "duration_ms")).values())


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
    figures = _summarize(
        [*ExecutionStats.objects.filter(trigger=trigger), *_uncounted(Execution.objects.filter(trigger=trigger))]
    )
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
    figures = _summarize(
        [*ExecutionStats.objects.filter(workflow=workflow), *_uncounted(Execution.objects.filter(workflow=workflow))]
    )
    figures["last_statuses"] = _last_statuses(Execution.objects.filter(workflow=workflow), last)
    upcoming = [
        {"at": at, "trigger_id": trigger.pk, "trigger": trigger.name}
        for trigger in workflow.triggers.filter(enabled=True, completed_at__isnull=True)
        for at in _upcoming(trigger, now, next_count)
    ]
    figures["next_runs"] = sorted(upcoming, key=lambda run: (run["at"], run["trigger_id"]))[:next_count]
    return figures


def owner_stats(user: Any, *, last: int = 10, next_count: int = 5, now: datetime | None = None) -> dict[str, Any]:
    """workflow_stats' figures over every trigger ``user`` owns (staff: everyone's).

    The counts come from the running stats (one row per trigger and workflow) plus what is not
    folded yet; next_runs are the soonest ``next_count`` slots of all the triggers, read off the
    due index: the triggers due first hold them (each one's first slot is its next_run_at).
    """
    now = now or timezone.now()
    everyone = bool(user.is_staff)
    stats = ExecutionStats.objects.all() if everyone else ExecutionStats.objects.filter(trigger__owner=user)
    finished = Execution.objects.all() if everyone else Execution.objects.filter(trigger__owner=user)
    figures = _summarize([*stats.only(*_COUNTERS, "duration_histogram", "duration_max_ms"), *_uncounted(finished)])
    figures["last_statuses"] = _last_statuses(Execution.objects.all() if everyone else executions_owned_by(user), last)
    triggers = Trigger.objects.filter(enabled=True, completed_at__isnull=True, next_run_at__isnull=False)
    if not everyone:
        triggers = triggers.filter(owner=user)
    upcoming = [
        {"at": at, "trigger_id": trigger.pk, "trigger": trigger.name}
        for trigger in triggers.order_by("next_run_at")[:next_count]
        for at in _upcoming(trigger, now, next_count)
    ]
    figures["next_runs"] = sorted(upcoming, key=lambda run: (run["at"], run["trigger_id"]))[:next_count]
    return figures


# --- Preview and describe -----------------------------------------------------------------------

# Why a previewed slot would not run ("" when it runs).
PREVIEW_OUTSIDE_WINDOW = SkipReason.OUTSIDE_WINDOW.value
PREVIEW_PAUSED = "paused"
PREVIEW_WORKFLOW_INACTIVE = SkipReason.WORKFLOW_INACTIVE.value
# Slots a preview looks at before it gives up (a few ms each thousand); windows are jumped over,
# so only a schedule whose slots almost never fall in its window gets near it.
_PREVIEW_SCAN_LIMIT = 10_000
_WEEKDAYS = ("Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat")


def trigger_preview(trigger: Trigger, *, count: int = 5, now: datetime | None = None) -> list[dict[str, Any]]:
    """The trigger's next ``count`` runs after ``now``, as {"at", "local", "runs", "reason"}.

    ``at`` is the slot in UTC, ``local`` the same instant in the trigger's zone. Slots follow the
    cadence (kind, DST policy, start_at/end_at) and stop after the runs max_runs leaves; a
    completed trigger has none. ``runs`` is False with a ``reason`` when the slot would not call
    the workflow:

    - ``outside_window``: outside the execution window. Such a slot is listed once per closed
      stretch (the first slot the window refuses, standing for every slot until the next one
      listed) and does not count toward ``count`` or max_runs, as at fire time;
    - ``paused``: the trigger is paused (listed so the schedule still shows; counted);
    - ``workflow_inactive``: the workflow is inactive (counted).

    Overlap and concurrency depend on how earlier runs go and are not predicted. Works on an
    unsaved Trigger too; validate it first (services.trigger_validate): an invalid schedule or
    window raises ScheduleError.
    """
    now = now or timezone.now()
    remaining = trigger.runs_remaining
    wanted = count if remaining is None else min(count, remaining)
    if wanted < 1 or trigger.completed_at is not None:
        return []
    cadence = trigger.cadence
    zone = cadence.zone
    window = timing.parse_window(trigger.execution_window)
    if not trigger.enabled:
        reason = PREVIEW_PAUSED
    elif trigger.workflow_id and not trigger.workflow.is_active:
        reason = PREVIEW_WORKFLOW_INACTIVE
    else:
        reason = ""
    items: list[dict[str, Any]] = []
    counted = 0
    cursor = now
    for _ in range(_PREVIEW_SCAN_LIMIT):
        slot = timing.next_slot_after(cadence, cursor)
        if slot is None:
            break
        slot = slot.astimezone(UTC)
        if window is not None and not window.contains(slot, zone):
            if not items or items[-1]["reason"] != PREVIEW_OUTSIDE_WINDOW:
                items.append(_preview_item(slot, zone, PREVIEW_OUTSIDE_WINDOW))
            opens = _window_opens_after(window, zone, slot)
            # Just before the opening, so a slot right at it is found (next_slot_after is strict).
            cursor = max(slot, opens - timedelta(microseconds=1)) if opens else slot
            continue
        items.append(_preview_item(slot, zone, reason))
        counted += 1
        if counted >= wanted:
            break
        cursor = slot
    return items


def _preview_item(slot: datetime, zone: ZoneInfo, reason: str) -> dict[str, Any]:
    return {"at": slot, "local": slot.astimezone(zone), "runs": not reason, "reason": reason}


def _window_opens_after(window: timing.Window, zone: ZoneInfo, after: datetime) -> datetime | None:
    """The first instant after ``after`` at which one of the window's ranges starts on one of its days.

    Only valid as a jump when the zone's offset does not change on the way (the wall clock is then
    continuous, so the window can only open at a range start): across an offset change (a
    fall-back can re-enter a range without passing its start) this returns None and the caller
    steps slot by slot.
    """
    starts = [start for start, _ in window.ranges] or [0]
    first_day: date = after.astimezone(zone).date()
    best: datetime | None = None
    for offset in range(8):
        day = first_day + timedelta(days=offset)
        if day.isoweekday() % 7 not in window.days:
            continue
        for minute in starts:
            for fold in (0, 1):
                local = datetime.combine(day, clock(minute // 60, minute % 60), tzinfo=zone).replace(fold=fold)
                at = local.astimezone(UTC)
                if at > after and (best is None or at < best):
                    best = at
        if best is not None:
            break
    if best is None or after.astimezone(zone).utcoffset() != best.astimezone(zone).utcoffset():
        return None
    return best


def trigger_describe(trigger: Trigger, *, count: int = 5, now: datetime | None = None) -> dict[str, Any]:
    """Everything the trigger will do, in words, and its next runs (for the admin and `trigger describe`).

    Returns {"schedule": str, "status": "active"|"paused"|"completed", "state": str, "rules":
    {name: sentence} (bounds, max_runs, window, jitter, dst_policy, catchup, overlap, priority,
    retries, failures, notifications, retention), "next_runs": trigger_preview(...)}. Works on an
    unsaved Trigger; an invalid schedule gives empty next_runs and says so in "state".
    """
    now = now or timezone.now()
    try:
        zone = timing.zone(trigger.timezone)
    except ScheduleError:
        zone = ZoneInfo("UTC")
    state = _state_text(trigger, zone)
    try:
        next_runs = trigger_preview(trigger, count=count, now=now)
    except ScheduleError as exc:
        next_runs = []
        state = f"{state}. Cannot compute the next runs: {exc}"
    return {
        "schedule": trigger.description,
        "status": str(trigger.status),
        "state": state,
        "rules": {
            "bounds": _bounds_text(trigger, zone),
            "max_runs": _max_runs_text(trigger),
            "window": _window_text(trigger),
            "jitter": _jitter_text(trigger),
            "dst_policy": _dst_text(trigger),
            "catchup": _catchup_text(trigger),
            "overlap": OverlapPolicy(trigger.overlap).label + ".",
            "priority": f"{Priority(trigger.priority).label}: its executions run on the '{trigger.priority}' queue.",
            "retries": _retries_text(trigger),
            "failures": _failures_text(trigger),
            "notifications": _notifications_text(trigger),
            "retention": _retention_text(trigger),
        },
        "next_runs": next_runs,
    }


def _moment(at: datetime, zone: ZoneInfo) -> str:
    """'2026-05-04 16:00 UTC' plus the local time when the zone is not UTC."""
    utc = f"{at.astimezone(UTC):%Y-%m-%d %H:%M} UTC"
    if zone.key == "UTC":
        return utc
    return f"{utc} ({at.astimezone(zone):%Y-%m-%d %H:%M %Z})"


def _state_text(trigger: Trigger, zone: ZoneInfo) -> str:
    status = trigger.status
    if status == TriggerStatus.COMPLETED:
        return f"Completed at {_moment(trigger.completed_at, zone)}" if trigger.completed_at else "Completed"
    if status == TriggerStatus.ACTIVE:
        return "Active"
    text = "Paused"
    if trigger.paused_at is not None:
        text += f" since {_moment(trigger.paused_at, zone)}"
    if trigger.paused_by_id is not None:
        text += f" by {trigger.paused_by.get_username()}"
    if trigger.pause_reason:
        text += f": {trigger.pause_reason}"
    return text


def _bounds_text(trigger: Trigger, zone: ZoneInfo) -> str:
    start, end = trigger.start_at, trigger.end_at
    if start is None and end is None:
        return "No start or end."
    parts = []
    if start is not None:
        parts.append(f"from {_moment(start, zone)}")
    if end is not None:
        parts.append(f"until {_moment(end, zone)}, then it completes")
    text = " ".join(parts)
    return text[0].upper() + text[1:] + "."


def _max_runs_text(trigger: Trigger) -> str:
    if trigger.max_runs is None:
        return f"No limit ({trigger.run_count} scheduled runs so far)."
    return (
        f"{trigger.run_count} of {trigger.max_runs} scheduled runs done, {trigger.runs_remaining} remaining "
        "(manual runs, backfills and skipped slots do not count); then it completes."
    )


def _window_text(trigger: Trigger) -> str:
    try:
        window = timing.parse_window(trigger.execution_window)
    except ScheduleError as exc:
        return f"Invalid: {exc}"
    if window is None:
        return "Always (no execution window)."
    if len(window.days) == 7:
        days = "every day"
    else:
        days = ", ".join(name for number, name in enumerate(_WEEKDAYS) if number in window.days)
    hours = ", ".join(f"{_hhmm(start)}-{_hhmm(end)}" for start, end in window.ranges) or "all day"
    return f"Only {days}, {hours} ({trigger.timezone}); slots outside it are skipped (outside_window)."


def _hhmm(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def _jitter_text(trigger: Trigger) -> str:
    if not trigger.jitter_seconds:
        return "None: each slot is called at its time."
    return f"Each slot's call waits a random 0-{trigger.jitter_seconds} s (the execution keeps the slot's time)."


def _dst_text(trigger: Trigger) -> str:
    if trigger.kind == TriggerKind.ONCE:
        return "Does not apply: a once trigger runs at one instant."
    if trigger.kind == TriggerKind.INTERVAL:
        return "Does not apply: interval slots are in real elapsed time."
    try:
        wildcard = timing.has_wildcard_hour(trigger.cron)
    except ScheduleError:
        wildcard = False
    if wildcard:
        return "Does not apply: a wildcard hour follows real elapsed time through DST changes."
    return f"{DstPolicy(trigger.dst_policy).label} ({trigger.dst_policy})."


def _catchup_text(trigger: Trigger) -> str:
    label = CatchupPolicy(trigger.catchup).label
    if trigger.catchup == CatchupPolicy.ALL:
        return (
            f"{label} ({trigger.catchup_window_seconds} s), oldest first, at most "
            f"{settings.SCHEDULER_CATCHUP_MAX_SLOTS}; older ones are recorded missed."
        )
    if trigger.catchup == CatchupPolicy.SKIP:
        return f"{label}; a slot fired over {settings.SCHEDULER_MISFIRE_GRACE_SECONDS} s late counts as missed."
    return f"{label}; the others are recorded missed."


def _retries_text(trigger: Trigger) -> str:
    if trigger.max_attempts <= 1:
        return "No retries: one call per slot."
    limit = trigger.max_retry_duration_seconds
    return (
        f"Up to {trigger.max_attempts} calls per slot. Waits start at {trigger.min_backoff_seconds} s, double "
        f"{trigger.max_doublings} times, then grow linearly, at most {trigger.max_backoff_seconds} s (full jitter); "
        + (f"no retry once the first attempt is over {limit} s ago." if limit else "no time limit.")
    )


def _failures_text(trigger: Trigger) -> str:
    limit = trigger.pause_after_failures
    text = f"Pauses after {limit} failed executions in a row" if limit else "Never pauses by itself"
    text += f" ({trigger.consecutive_failures} in a row now)."
    if trigger.fallback_workflow_id:
        text += f" A final failure runs workflow {trigger.fallback_workflow.name!r} with the same inputs."
    return text


def _notifications_text(trigger: Trigger) -> str:
    targets = []
    if trigger.notify_emails:
        targets.append(f"e-mail to {trigger.notify_emails}")
    if trigger.notify_webhook_url:
        # Only scheme, host and path: a query string or user info may carry a token.
        parts = urlsplit(trigger.notify_webhook_url)
        targets.append(f"signed POST to {parts.scheme}://{parts.hostname or ''}{parts.path}")
    if not targets:
        return "None."
    return f"On final failure, auto-pause and recovery: {' and '.join(targets)}."


def _retention_text(trigger: Trigger) -> str:
    def amount(value: int | None, default: int, noun: str) -> str:
        chosen = default if value is None else value
        text = f"all {noun}" if not chosen else f"the last {chosen} {noun}"
        return text + (" (default)" if value is None else "")

    days = trigger.retention_days
    chosen_days = settings.SCHEDULER_RETENTION_DAYS if days is None else days
    age = f"none older than {chosen_days} days" if chosen_days else "no age limit"
    return (
        f"Keeps {amount(trigger.keep_succeeded, settings.SCHEDULER_KEEP_SUCCEEDED, 'succeeded (and skipped)')}, "
        f"{amount(trigger.keep_failed, settings.SCHEDULER_KEEP_FAILED, 'failed')}, "
        f"{age}{' (default)' if days is None else ''}."
    )
