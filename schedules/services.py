"""The rules for triggers: create, change, pause, resume, delete, run now, backfill, retry;
execution statistics and retention. Admin, commands, API and tasks all call these.

What happens once a slot is due (fire, claim, perform, record, recover) is the dispatch path,
in ``schedules.dispatch``.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import connection, transaction
from django.db.models import Count, Q
from django.utils import timezone

from workflows.models import Workflow, WorkflowRun
from workflows.services import audit_changes, audit_record

from . import beat, dispatch, timing
from .exceptions import TriggerStateError
from .models import (
    FINISHED_STATUSES,
    Execution,
    ExecutionOrigin,
    ExecutionStats,
    ExecutionStatus,
    SkipReason,
    StatsDelta,
    Trigger,
    TriggerKind,
    stats_deltas,
)

logger = logging.getLogger(__name__)

# The fields that make up a trigger's schedule (a change restarts it from now).
SCHEDULE_FIELDS = (
    "kind",
    "cron",
    "timezone",
    "run_at",
    "interval_seconds",
    "dst_policy",
    "anchor_at",
    "start_at",
    "end_at",
)
_SCHEDULE_FIELDS = frozenset(SCHEDULE_FIELDS)
_RETRY_FIELDS = (
    "max_attempts",
    "min_backoff_seconds",
    "max_backoff_seconds",
    "max_doublings",
    "max_retry_duration_seconds",
)
# Everything a caller may set on a trigger besides its owner (create) and the schedule fields.
_OPTIONS = frozenset(
    {
        *_RETRY_FIELDS,
        "max_runs",
        "jitter_seconds",
        "execution_window",
        "catchup",
        "catchup_window_seconds",
        "overlap",
        "priority",
        "pause_after_failures",
        "notify_emails",
        "notify_webhook_url",
        "fallback_workflow",
        "keep_succeeded",
        "keep_failed",
        "retention_days",
    }
)
_EDITABLE = _SCHEDULE_FIELDS | _OPTIONS | frozenset({"name", "workflow", "inputs", "enabled"})
# Executions a person started: they skip the trigger's overlap ordering and do not count as runs.
# "In N seconds" up to ten years: past that, date arithmetic overflows long before it matters.
MAX_DELAY_SECONDS = 10 * 365 * 86400


# --- Triggers -----------------------------------------------------------------------------------


def _next_run_at(trigger: Trigger, now: datetime) -> datetime | None:
    if trigger.max_runs is not None and trigger.run_count >= trigger.max_runs:
        return None
    if trigger.kind == TriggerKind.ONCE and trigger.executions.filter(scheduled_for=trigger.run_at).exists():
        return None
    return timing.next_slot_after(trigger.cadence, now)


def _check_schedule(trigger: Trigger, now: datetime, *, schedule_changed: bool) -> None:
    from django.core.exceptions import ValidationError

    trigger.full_clean()
    if trigger.kind == TriggerKind.ONCE and schedule_changed and trigger.run_at <= now:
        raise ValidationError({"run_at": ["must be in the future."]})
    if schedule_changed and trigger.end_at is not None and trigger.end_at <= now:
        raise ValidationError({"end_at": ["must be in the future (pause or delete the trigger to stop it now)."]})
    timing.validate_cadence(trigger.cadence, now=now)
    beat.check_schedulable(trigger.cadence)


def trigger_validate(*, trigger: Trigger, schedule_changed: bool = True, now: datetime | None = None) -> None:
    """Run the checks trigger_create / trigger_update make, without saving (for forms).

    Raises django's ValidationError (keyed by field) or ScheduleError (with ``field``), as they do.
    """
    _check_schedule(trigger, now or timezone.now(), schedule_changed=schedule_changed)


def trigger_build(
    *,
    owner: AbstractBaseUser,
    workflow: Workflow,
    name: str,
    kind: str,
    cron: str = "",
    timezone_name: str = "UTC",
    run_at: datetime | None = None,
    delay_seconds: int | None = None,
    interval_seconds: int | None = None,
    inputs: dict[str, Any] | None = None,
    enabled: bool = True,
    dst_policy: str = timing.DST_VIXIE,
    anchor_at: datetime | None = None,
    start_at: datetime | None = None,
    end_at: datetime | None = None,
    now: datetime | None = None,
    **options: Any,
) -> Trigger:
    """An unsaved, validated trigger as trigger_create would save it (also for previews).

    ``delay_seconds`` (once triggers) means run_at = now + delay. Retry settings left out (or
    None) come from the workflow's defaults. ``options`` are the other Trigger fields
    (max_runs, jitter_seconds, execution_window, catchup, overlap, priority, ...).
    Raises ValidationError or ScheduleError naming the field.
    """
    from django.core.exceptions import ValidationError

    now = now or timezone.now()
    unknown = set(options) - _OPTIONS
    if unknown:
        raise TypeError(f"unknown trigger fields: {sorted(unknown)}")
    if delay_seconds is not None:
        if kind != TriggerKind.ONCE or run_at is not None:
            raise ValidationError({"delay_seconds": ["only for a once trigger, instead of run_at."]})
        if not isinstance(delay_seconds, int) or not 1 <= delay_seconds <= MAX_DELAY_SECONDS:
            raise ValidationError({"delay_seconds": [f"must be a whole number of seconds, 1-{MAX_DELAY_SECONDS}."]})
        run_at = now + timedelta(seconds=delay_seconds)
    for name_ in _RETRY_FIELDS:
        if options.get(name_) is None:
            options[name_] = getattr(workflow, name_)
    trigger = Trigger(
        owner=owner,
        workflow=workflow,
        name=name,
        kind=kind,
        cron=cron,
        timezone=timezone_name,
        run_at=run_at,
        interval_seconds=interval_seconds,
        inputs=inputs if inputs is not None else {},
        enabled=enabled,
        dst_policy=dst_policy,
        anchor_at=anchor_at,
        start_at=start_at,
        end_at=end_at,
        **{key: value for key, value in options.items() if value is not None or key in _NULLABLE_OPTIONS},
    )
    _check_schedule(trigger, now, schedule_changed=True)
    return trigger


@transaction.atomic
def trigger_create(*, now: datetime | None = None, actor: AbstractBaseUser | None = None, **fields: Any) -> Trigger:
    """Create a trigger (see trigger_build for the fields) and its PeriodicTask in one transaction."""
    now = now or timezone.now()
    trigger = trigger_build(now=now, **fields)
    trigger.active_since = now
    trigger.next_run_at = timing.next_slot_after(trigger.cadence, now)
    if not trigger.enabled:
        trigger.paused_at = now
    trigger.save()
    beat.trigger_sync(trigger, restart_at=now)
    audit_record(actor=actor, action="created", obj=trigger)
    return trigger


_NULLABLE_OPTIONS = frozenset(
    {"max_runs", "pause_after_failures", "fallback_workflow", "keep_succeeded", "keep_failed", "retention_days"}
)


@transaction.atomic
def trigger_update(
    *, trigger: Trigger, now: datetime | None = None, actor: AbstractBaseUser | None = None, **fields: Any
) -> Trigger:
    """Change a trigger; a schedule change only affects slots after now."""
    now = now or timezone.now()
    if "timezone_name" in fields:
        fields["timezone"] = fields.pop("timezone_name")
    unknown = set(fields) - _EDITABLE
    if unknown:
        raise TypeError(f"unknown trigger fields: {sorted(unknown)}")
    if "inputs" in fields and fields["inputs"] is None:
        fields["inputs"] = {}
    trigger = Trigger.objects.select_for_update().get(pk=trigger.pk)
    before = {name: getattr(trigger, name) for name in _SCHEDULE_FIELDS}
    previous = {name: getattr(trigger, name) for name in fields}
    was_enabled = trigger.enabled
    for name, value in fields.items():
        setattr(trigger, name, value)
    if "enabled" in fields and fields["enabled"] and not was_enabled:
        # As trigger_resume: clear who/when/why, and give pause_after_failures a fresh count
        # (else an auto-paused trigger re-enabled here pauses again at its next failure).
        trigger.pause_reason, trigger.paused_at, trigger.paused_by = "", None, None
        trigger.consecutive_failures = 0
    if "enabled" in fields and not fields["enabled"] and was_enabled:
        trigger.paused_at = now
    schedule_changed = any(getattr(trigger, name) != value for name, value in before.items())
    _check_schedule(trigger, now, schedule_changed=schedule_changed)
    restart = schedule_changed or (trigger.enabled and not was_enabled)
    if restart:
        trigger.active_since = now
        trigger.next_run_at = _next_run_at(trigger, now)
    if restart or "max_runs" in fields:
        trigger.next_run_at = _next_run_at(trigger, now)
        if trigger.next_run_at is None:
            # Nothing left to run (max_runs lowered to the runs made, a once trigger's time passed).
            trigger.completed_at = trigger.completed_at or now
        elif trigger.completed_at is not None:
            # A completed trigger given a new future (a later run_at or end_at, more max_runs).
            trigger.completed_at = None
            trigger.active_since = now
            restart = True
    trigger.save()
    beat.trigger_sync(trigger, restart_at=now if restart else None)
    changes = audit_changes(trigger, previous)
    if changes:
        audit_record(actor=actor, action="updated", obj=trigger, changes=changes)
    return trigger


@transaction.atomic
def trigger_pause(
    *, trigger: Trigger, reason: str = "", by: AbstractBaseUser | None = None, now: datetime | None = None
) -> Trigger:
    """Stop firing; slots that fall due while paused never run. Records who, when and why."""
    now = now or timezone.now()
    trigger = Trigger.objects.select_for_update().get(pk=trigger.pk)
    if not trigger.enabled:
        raise TriggerStateError(f"trigger {trigger.name!r} is already paused.")
    trigger.enabled = False
    trigger.paused_at = now
    trigger.pause_reason = reason[:500]
    trigger.paused_by = by
    trigger.save(update_fields=["enabled", "paused_at", "pause_reason", "paused_by", "updated_at"])
    beat.trigger_sync(trigger)
    audit_record(actor=by, action="paused", obj=trigger, changes={"reason": trigger.pause_reason})
    return trigger


@transaction.atomic
def trigger_resume(*, trigger: Trigger, now: datetime | None = None, actor: AbstractBaseUser | None = None) -> Trigger:
    """Fire again from the next slot after now (the paused slots are not caught up)."""
    now = now or timezone.now()
    trigger = Trigger.objects.select_for_update().get(pk=trigger.pk)
    if trigger.enabled:
        raise TriggerStateError(f"trigger {trigger.name!r} is not paused.")
    trigger.enabled = True
    trigger.paused_at = None
    trigger.pause_reason = ""
    trigger.paused_by = None
    trigger.consecutive_failures = 0
    trigger.active_since = now
    trigger.next_run_at = _next_run_at(trigger, now)
    if trigger.next_run_at is None:
        # e.g. a once trigger resumed after its time: it will not run, so it is completed.
        trigger.completed_at = trigger.completed_at or now
    trigger.save(
        update_fields=[
            "completed_at",
            "enabled",
            "paused_at",
            "pause_reason",
            "paused_by",
            "consecutive_failures",
            "active_since",
            "next_run_at",
            "updated_at",
        ]
    )
    beat.trigger_sync(trigger, restart_at=now)
    audit_record(actor=actor, action="resumed", obj=trigger)
    return trigger


@transaction.atomic
def trigger_delete(*, trigger: Trigger, actor: AbstractBaseUser | None = None) -> None:
    """Delete the trigger, its PeriodicTask and its history."""
    audit_record(actor=actor, action="deleted", obj=trigger)
    beat.trigger_unsync(trigger)
    trigger.delete()


@transaction.atomic
def trigger_run_now(
    *,
    trigger: Trigger,
    inputs: dict[str, Any] | None = None,
    now: datetime | None = None,
    actor: AbstractBaseUser | None = None,
) -> Execution:
    """Queue a manual execution now (paused triggers too), with optional input overrides.

    It does not move the schedule, count toward max_runs, or wait behind the trigger's own
    executions; workflow and owner concurrency limits still apply.
    """
    from django.core.exceptions import ValidationError

    now = now or timezone.now()
    if inputs is not None and not isinstance(inputs, dict):
        raise ValidationError({"inputs": ["must be a JSON object."]})
    workflow = trigger.workflow
    if not workflow.is_active:
        raise TriggerStateError(f"workflow {workflow.name!r} is not active.", field="workflow")
    execution = Execution.objects.create(
        trigger=trigger,
        workflow=workflow,
        scheduled_for=now,
        manual=True,
        origin=ExecutionOrigin.MANUAL,
        inputs={**workflow.default_inputs, **trigger.inputs, **(inputs or {})},
        metadata={"input_overrides": inputs} if inputs else {},
        status=ExecutionStatus.QUEUED,
        created_at=now,
        due_at=now,
        lease_expires_at=now + dispatch.lease_grace(),
    )
    audit_record(actor=actor, action="ran", obj=trigger, changes={"execution_id": str(execution.pk)})
    dispatch.dispatch_attempt(execution, now=now, robust=False)
    return execution


@transaction.atomic
def execution_retry(
    *, execution: Execution, now: datetime | None = None, actor: AbstractBaseUser | None = None
) -> Execution:
    """Run a failed execution again as a new manual execution with the same inputs."""
    now = now or timezone.now()
    if execution.status != ExecutionStatus.FAILED:
        raise TriggerStateError(
            f"only a failed execution can be retried; this one is {execution.status}.", field="status"
        )
    if not execution.workflow.is_active:
        raise TriggerStateError(f"workflow {execution.workflow.name!r} is not active.", field="workflow")
    retry = Execution.objects.create(
        trigger=execution.trigger,
        workflow=execution.workflow,
        scheduled_for=now,
        manual=True,
        origin=ExecutionOrigin.RETRY,
        retry_of=execution,
        inputs=execution.inputs,
        status=ExecutionStatus.QUEUED,
        created_at=now,
        due_at=now,
        lease_expires_at=now + dispatch.lease_grace(),
    )
    audit_record(
        actor=actor,
        action="retried",
        obj=execution.trigger,
        changes={"execution_id": str(retry.pk), "retry_of": str(execution.pk)},
    )
    dispatch.dispatch_attempt(retry, now=now, robust=False)
    return retry


@dataclass(frozen=True)
class BackfillReport:
    created: int
    existing: int
    skipped: int
    execution_ids: list[str]


BACKFILL_OVERLAP = ("skip", "buffer_one", "buffer_all", "allow")


@dispatch.retry_on_deadlock
@transaction.atomic
def trigger_backfill(
    *,
    trigger: Trigger,
    start: datetime,
    end: datetime,
    overlap: str = "buffer_all",
    now: datetime | None = None,
    actor: AbstractBaseUser | None = None,
) -> BackfillReport:
    """Run the trigger's slots in [start, end] (in the past) that have no execution yet.

    ``overlap``: buffer_all (default) runs them one after another, oldest first; allow runs them
    side by side (concurrency limits apply); buffer_one runs the first and queues one more; skip
    runs only what does not overlap. Backfilled runs are manual: they don't count toward max_runs.
    """
    from django.core.exceptions import ValidationError

    now = now or timezone.now()
    limit = settings.SCHEDULER_BACKFILL_MAX_SLOTS
    errors: dict[str, list[str]] = {}
    if overlap not in BACKFILL_OVERLAP:
        errors["overlap"] = [f"must be one of {', '.join(BACKFILL_OVERLAP)}."]
    if start >= end:
        errors["end"] = ["must be after start."]
    if end > now:
        errors["end"] = ["must not be in the future; future slots run on schedule."]
    if errors:
        raise ValidationError(errors)
    if not trigger.workflow.is_active:
        raise TriggerStateError(f"workflow {trigger.workflow.name!r} is not active.", field="workflow")
    # Only the trigger's row (OF self): with select_related, FOR UPDATE locked its workflow too,
    # and a stats fold inserting a row that references that workflow deadlocked with it.
    trigger = Trigger.objects.select_for_update(of=("self",)).select_related("workflow").get(pk=trigger.pk)
    cadence = trigger.cadence
    slots = timing.slots_between(cadence, start - timedelta(microseconds=1), end, limit=limit + 1)
    if len(slots) > limit:
        raise ValidationError({"end": [f"the range holds more than {limit} slots; backfill a shorter range."]})
    taken = set(
        trigger.executions.filter(scheduled_for__in=slots, fallback_of=None).values_list("scheduled_for", flat=True)
    )
    busy = dispatch.unfinished(trigger).exists()
    window = timing.parse_window(trigger.execution_window)
    created: list[Execution] = []
    skipped = 0
    for slot in slots:
        if slot in taken:
            continue
        execution = dispatch.new_execution(trigger, slot, ExecutionOrigin.BACKFILL, now)
        execution.manual = True
        execution.metadata = {"overlap": "allow" if overlap == "allow" else "serial"}
        waiting = len(created) + (1 if busy else 0)
        if window is not None and not window.contains(slot, cadence.zone):
            dispatch.mark_skipped(execution, SkipReason.OUTSIDE_WINDOW, now)
        elif (overlap == "skip" and waiting >= 1) or (overlap == "buffer_one" and waiting >= 2):
            dispatch.mark_skipped(execution, SkipReason.OVERLAP, now)
        execution.save(force_insert=True)
        if execution.status == ExecutionStatus.SKIPPED:
            skipped += 1
        else:
            created.append(execution)
    for execution in created:
        dispatch.dispatch_attempt(execution, now=now)
    audit_record(
        actor=actor,
        action="backfilled",
        obj=trigger,
        changes={"start": start, "end": end, "overlap": overlap, "created": len(created), "skipped": skipped},
    )
    return BackfillReport(
        created=len(created),
        existing=len(taken),
        skipped=skipped,
        execution_ids=[str(execution.pk) for execution in created],
    )


# --- Statistics and retention -------------------------------------------------------------------

# Deleted per transaction, so a large first prune never holds the (on SQLite: whole-database)
# write lock for long, and an interrupted prune simply resumes at the next run.
_PRUNE_BATCH = 500


_STATS_COUNTERS = ("total", "succeeded", "failed", "skipped", "duration_count", "duration_sum_ms")


def _stats_add_many(deltas: dict[tuple[int, int], StatsDelta]) -> None:
    """Add each delta to its (trigger, workflow) stats row (call inside a transaction).

    A fixed number of statements however many rows: the missing rows made in one INSERT (ON
    CONFLICT DO NOTHING), all of them locked in one order and read in one SELECT ... FOR UPDATE
    (the lock serialises the histogram's read-modify-write, and with it the counters'), and
    written back in one UPDATE on PostgreSQL (``bulk_update`` elsewhere). One by one it was three
    or four round trips per row: a fold after a burst of 10,000 triggers, each with its own row,
    took about 25 s.
    """
    if not deltas:
        return
    keys = sorted(deltas)
    ExecutionStats.objects.bulk_create(
        [ExecutionStats(trigger_id=trigger_id, workflow_id=workflow_id) for trigger_id, workflow_id in keys],
        ignore_conflicts=True,
        batch_size=500,
    )
    locked = (
        ExecutionStats.objects.select_for_update()
        .filter(trigger_id__any=sorted({trigger_id for trigger_id, _ in keys}))
        .order_by("trigger_id", "workflow_id")
    )
    now = timezone.now()
    changed: list[ExecutionStats] = []
    for stats in locked:
        delta = deltas.get((stats.trigger_id, stats.workflow_id))
        if delta is None:
            continue  # (another workflow's row of the same trigger: locked, left as it is)
        for name in _STATS_COUNTERS:
            setattr(stats, name, getattr(stats, name) + getattr(delta, name))
        if delta.duration_count:
            histogram = dict(stats.duration_histogram or {})
            for key, count in delta.duration_histogram.items():
                histogram[key] = histogram.get(key, 0) + count
                if histogram[key] <= 0:  # (a negative delta: an execution taken back out, see stats_uncount)
                    del histogram[key]
            stats.duration_histogram = histogram
            stats.duration_max_ms = max(stats.duration_max_ms, delta.duration_max_ms)
        stats.updated_at = now
        changed.append(stats)
    fields = [*_STATS_COUNTERS, "duration_max_ms", "duration_histogram", "updated_at"]
    if connection.vendor != "postgresql":
        ExecutionStats.objects.bulk_update(changed, fields, batch_size=200)
        return
    from psycopg.types.json import Jsonb

    table = connection.ops.quote_name(ExecutionStats._meta.db_table)
    columns = [ExecutionStats._meta.get_field(name).column for name in fields[:-1]]
    types = ["bigint"] * len(_STATS_COUNTERS) + ["integer", "jsonb"]
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {table} AS s SET "  # noqa: S608 - the model's own table and column names
            + ", ".join(f"{column} = v.{column}" for column in columns)
            + ", updated_at = %s FROM unnest(%s::bigint[], "
            + ", ".join(f"%s::{kind}[]" for kind in types)
            + f") AS v(id, {', '.join(columns)}) WHERE s.id = v.id",
            [
                now,
                [stats.pk for stats in changed],
                *([getattr(stats, name) for stats in changed] for name in fields[: len(_STATS_COUNTERS) + 1]),
                [Jsonb(stats.duration_histogram) for stats in changed],
            ],
        )


@transaction.atomic
def stats_record(*, execution: Execution) -> None:
    """Count one finished execution in its trigger's running stats now (once: a counted one is
    left alone). The dispatch path leaves this to ``stats_fold``, in batches."""
    if execution.status not in FINISHED_STATUSES:
        raise ValueError(f"execution {execution.pk} is {execution.status}; only finished executions are counted.")
    if not Execution.objects.filter(pk=execution.pk, counted=False).update(counted=True):
        return
    rows = [(execution.trigger_id, execution.workflow_id, execution.status, execution.origin, execution.duration_ms)]
    _stats_add_many(stats_deltas(rows))


def _stats_uncount(execution: Execution) -> None:
    """Take a counted execution back out of its stats (it is unfinished again; call inside a
    transaction, execution locked). The longest duration stays: a maximum cannot be taken back,
    and the same call's duration is counted again when the execution ends."""
    if not Execution.objects.filter(pk=execution.pk, counted=True).update(counted=False):
        return
    execution.counted = False
    rows = [(execution.trigger_id, execution.workflow_id, execution.status, execution.origin, execution.duration_ms)]
    _stats_add_many(
        {
            key: StatsDelta(
                **{name: -getattr(delta, name) for name in _STATS_COUNTERS},
                duration_histogram={bucket: -count for bucket, count in delta.duration_histogram.items()},
            )
            for key, delta in stats_deltas(rows).items()
        }
    )


def execution_reopen_for_run(*, run_id: str, now: datetime | None = None) -> Execution | None:
    """A failed engine run is being retried (call inside the retry's transaction): the Execution that
    ended failed with it is running again, waiting for the run, and ends with its new outcome. Its
    failure leaves the stats until then (no double count); the trigger's failure count, the failure
    notification and fallback already happened once and are not repeated if it fails again, and a
    success counts as any success does. Returns the execution, or None if no Execution follows the run."""
    now = now or timezone.now()
    payload = WorkflowRun.objects.filter(pk=run_id).values_list("payload", flat=True).first()
    execution_id = payload.get("execution_id") if isinstance(payload, dict) else None
    if not isinstance(execution_id, str):
        return None  # started without a trigger (workflow start, a sub-workflow)
    try:
        uuid.UUID(execution_id)
    except ValueError:
        return None
    execution = (
        Execution.objects.select_for_update(of=("self",))
        .filter(pk=execution_id, run_id=run_id, status=ExecutionStatus.FAILED)
        .first()
    )
    if execution is None or "run_status" not in execution.metadata:
        return None  # pruned, retried already, or it failed before its run (then it has no run to follow)
    _stats_uncount(execution)
    reopened = execution.metadata.setdefault("reopened", [])
    reopened.append(
        {
            "at": now.isoformat(),
            "finished_at": execution.finished_at.isoformat() if execution.finished_at else None,
            "run_status": execution.metadata.pop("run_status"),
            "error": execution.error,
        }
    )
    del reopened[:-_REOPEN_LOG_LIMIT]
    execution.status = ExecutionStatus.RUNNING
    execution.wait_reason = dispatch.RUN_WAIT
    execution.finished_at = execution.lease_expires_at = execution.next_attempt_at = execution.due_at = None
    execution.error = ""
    execution.save(
        update_fields=[
            "status",
            "wait_reason",
            "finished_at",
            "lease_expires_at",
            "next_attempt_at",
            "due_at",
            "error",
            "metadata",
        ]
    )
    logger.info("execution %s follows its run %s again (retried)", execution.pk, run_id)
    return execution


# Earlier outcomes a reopened execution keeps in metadata["reopened"].
_REOPEN_LOG_LIMIT = 20

# Executions one stats_fold transaction counts.
_FOLD_BATCH = 5000


@dispatch.retry_on_deadlock
@transaction.atomic
def _stats_fold_batch(limit: int) -> int:
    rows = list(
        Execution.objects.select_for_update(skip_locked=True, of=("self",))
        .filter(counted=False, status__in=FINISHED_STATUSES)
        .order_by()
        .values_list("pk", "trigger_id", "workflow_id", "status", "origin", "duration_ms")[:limit]
    )
    if not rows:
        return 0
    # Stats rows are locked in one order, so two folds never wait on each other in a circle.
    _stats_add_many(stats_deltas(row[1:] for row in rows))
    Execution.objects.filter(pk__in=[row[0] for row in rows]).update(counted=True)
    return len(rows)


def stats_fold(*, limit: int = _FOLD_BATCH, max_batches: int = 20) -> int:
    """Add finished executions not yet counted to ExecutionStats, ``limit`` per transaction.

    Workers record an outcome with one write and leave the counting to this periodic task, so
    the counters cost one transaction per few thousand executions instead of one each. Until
    an execution is folded, the stats readers (``selectors``) add it in themselves, so figures
    are exact at any moment. Returns how many executions were counted.
    """
    folded = 0
    for _ in range(max_batches):
        count = _stats_fold_batch(limit)
        folded += count
        if count < limit:
            break
    return folded


def _delete_in_batches(queryset: Any) -> int:
    """Delete the finished executions ``queryset`` selects, _PRUNE_BATCH per transaction."""
    deleted = 0
    # Only counted ones: executions_prune folds the rest first, so the stats keep counting them.
    queryset = queryset.filter(status__in=FINISHED_STATUSES, counted=True).order_by()
    while True:
        ids = list(queryset.values_list("pk", flat=True)[:_PRUNE_BATCH])
        if not ids:
            return deleted
        with transaction.atomic():
            _, per_model = Execution.objects.filter(pk__in=ids, status__in=FINISHED_STATUSES, counted=True).delete()
        count = per_model.get(Execution._meta.label, 0)
        if not count:
            return deleted
        deleted += count


def executions_prune(*, now: datetime | None = None) -> int:
    """Delete finished executions past their trigger's retention; return how many were deleted.

    A trigger keeps its last ``keep_succeeded`` succeeded, ``keep_failed`` failed and
    ``keep_succeeded`` skipped executions (newest slots first), and none that finished more than
    ``retention_days`` ago. Blank fields use SCHEDULER_KEEP_SUCCEEDED / SCHEDULER_KEEP_FAILED /
    SCHEDULER_RETENTION_DAYS; 0 means no limit. Queued, running and retrying executions are never
    deleted. The ExecutionStats counters are not touched, so the stats still count what was pruned.

    Not one transaction on purpose: batches commit one by one (see _PRUNE_BATCH).
    """
    now = now or timezone.now()
    deleted = 0
    # Count what finished since the last fold first: only counted executions are deleted.
    stats_fold()

    # By age: one pass per distinct retention (all triggers without an override share one).
    passes: list[tuple[int, Q]] = []
    if settings.SCHEDULER_RETENTION_DAYS:
        passes.append((settings.SCHEDULER_RETENTION_DAYS, Q(trigger__retention_days__isnull=True)))
    overrides = Trigger.objects.filter(retention_days__gt=0).values_list("retention_days", flat=True).distinct()
    passes.extend((days, Q(trigger__retention_days=days)) for days in sorted(set(overrides)))
    for days, triggers in passes:
        cutoff = now - timedelta(days=days)
        old = Q(finished_at__lt=cutoff) | Q(finished_at__isnull=True, created_at__lt=cutoff)
        deleted += _delete_in_batches(Execution.objects.filter(triggers, old))

    # By count: one grouped count finds the (trigger, status) pairs over their limit; each of
    # those finds its cut-off row on the (trigger, -scheduled_for) index and deletes what is older.
    keep_fields = {
        ExecutionStatus.SUCCEEDED: ("keep_succeeded", settings.SCHEDULER_KEEP_SUCCEEDED),
        ExecutionStatus.FAILED: ("keep_failed", settings.SCHEDULER_KEEP_FAILED),
        ExecutionStatus.SKIPPED: ("keep_succeeded", settings.SCHEDULER_KEEP_SUCCEEDED),
    }
    limits: dict[int, dict[str, int]] = {}
    for row in Trigger.objects.values("pk", "keep_succeeded", "keep_failed"):
        limits[row["pk"]] = {
            status: default if row[name] is None else row[name] for status, (name, default) in keep_fields.items()
        }
    counts = (
        Execution.objects.filter(status__in=FINISHED_STATUSES)
        .order_by()
        .values_list("trigger_id", "status")
        .annotate(n=Count("pk"))
    )
    for trigger_id, status, n in counts:
        keep = limits.get(trigger_id, {}).get(status, 0)
        if not keep or n <= keep:
            continue
        rows = Execution.objects.filter(trigger_id=trigger_id, status=status).order_by("-scheduled_for", "-pk")
        cut = list(rows.values_list("scheduled_for", "pk")[keep : keep + 1])
        if not cut:
            continue
        slot, pk = cut[0]
        older = Q(scheduled_for__lt=slot) | Q(scheduled_for=slot, pk__lte=pk)
        deleted += _delete_in_batches(Execution.objects.filter(older, trigger_id=trigger_id, status=status))
    return deleted
