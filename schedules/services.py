"""The rules for triggers and executions. Admin, commands, API and tasks all call these.

Delivery model (at least once in, exactly once recorded):
- beat sends ``fire_trigger(trigger_id, scheduled_for)``; ``trigger_fire`` creates the slot's
  Execution under a unique (trigger, slot) constraint, so a second delivery calls nothing;
- whoever works on an execution holds a lease (its deadline plus a grace); ``execution_claim``
  lets exactly one holder at a time start an attempt;
- ``executions_recover`` (run by beat) hands executions whose holder died, and slots whose
  message never arrived, back to the workers. Every repeat of a call carries the same
  Idempotency-Key (the execution id).
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.utils import timezone

from workflows.client import WorkflowCall, call_workflow
from workflows.exceptions import WorkflowCallError
from workflows.models import Workflow
from workflows.services import audit_changes, audit_record

from . import beat, timing
from .exceptions import TriggerStateError
from .models import (
    FINISHED_STATUSES,
    UNFINISHED_STATUSES,
    CatchupPolicy,
    Execution,
    ExecutionOrigin,
    ExecutionStatus,
    OverlapPolicy,
    SkipReason,
    Trigger,
    TriggerKind,
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
_PERSONAL = (ExecutionOrigin.MANUAL, ExecutionOrigin.RETRY, ExecutionOrigin.BACKFILL, ExecutionOrigin.FALLBACK)
_ATTEMPT_LOG_LIMIT = 50
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
        lease_expires_at=now + _grace(),
    )
    audit_record(actor=actor, action="ran", obj=trigger, changes={"execution_id": str(execution.pk)})
    _dispatch(execution, now=now, robust=False)
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
        lease_expires_at=now + _grace(),
    )
    audit_record(
        actor=actor,
        action="retried",
        obj=execution.trigger,
        changes={"execution_id": str(retry.pk), "retry_of": str(execution.pk)},
    )
    _dispatch(retry, now=now, robust=False)
    return retry


@dataclass(frozen=True)
class BackfillReport:
    created: int
    existing: int
    skipped: int
    execution_ids: list[str]


BACKFILL_OVERLAP = ("skip", "buffer_one", "buffer_all", "allow")


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
    trigger = Trigger.objects.select_for_update().select_related("workflow").get(pk=trigger.pk)
    cadence = trigger.cadence
    slots = timing.slots_between(cadence, start - timedelta(microseconds=1), end, limit=limit + 1)
    if len(slots) > limit:
        raise ValidationError({"end": [f"the range holds more than {limit} slots; backfill a shorter range."]})
    taken = set(
        trigger.executions.filter(scheduled_for__in=slots, fallback_of=None).values_list("scheduled_for", flat=True)
    )
    busy = _unfinished(trigger).exists()
    window = timing.parse_window(trigger.execution_window)
    created: list[Execution] = []
    skipped = 0
    for slot in slots:
        if slot in taken:
            continue
        execution = _new_execution(trigger, slot, ExecutionOrigin.BACKFILL, now)
        execution.manual = True
        execution.metadata = {"overlap": "allow" if overlap == "allow" else "serial"}
        waiting = len(created) + (1 if busy else 0)
        if window is not None and not window.contains(slot, cadence.zone):
            _mark_skipped(execution, SkipReason.OUTSIDE_WINDOW, now)
        elif (overlap == "skip" and waiting >= 1) or (overlap == "buffer_one" and waiting >= 2):
            _mark_skipped(execution, SkipReason.OVERLAP, now)
        execution.save(force_insert=True)
        if execution.status == ExecutionStatus.SKIPPED:
            skipped += 1
            _on_finished(execution, now)
        else:
            created.append(execution)
    for execution in created:
        _dispatch(execution, now=now)
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


# --- Executions ---------------------------------------------------------------------------------


def _grace() -> timedelta:
    return timedelta(seconds=settings.SCHEDULER_LEASE_GRACE_SECONDS)


def _lease(workflow: Workflow, now: datetime) -> datetime:
    return now + timedelta(seconds=workflow.timeout_seconds) + _grace()


def _queue(execution: Execution) -> str:
    """The broker queue for a trigger's priority ('high', 'normal', 'low')."""
    return str(execution.trigger.priority)


def _enqueue_attempt(
    execution_id: Any, attempt: int, *, queue: str = "normal", countdown: float | None = None, robust: bool = True
) -> None:
    """Send the attempt once the transaction commits.

    A broker outage never undoes what was committed: the execution keeps its lease and
    executions_recover sends it again later. ``robust=False`` lets the caller see the outage
    (after the commit), so a person who asked for a run can be told it is delayed.
    """
    from .tasks import run_execution

    def send() -> None:
        run_execution.apply_async(
            kwargs={"execution_id": str(execution_id), "attempt": attempt}, countdown=countdown, queue=queue
        )

    transaction.on_commit(send, robust=robust)


def _dispatch(execution: Execution, *, now: datetime, robust: bool = True) -> None:
    """Send the execution's next attempt when it falls due.

    A short wait rides in the broker as a countdown; a long one (past
    SCHEDULER_COUNTDOWN_MAX_SECONDS) stays in the database only: its lease expires when it is
    due and executions_recover sends it then. Redis would re-deliver long ETAs after its
    visibility timeout, a known source of double runs.
    """
    due = execution.due_at or now
    wait = max(0.0, (due - now).total_seconds())
    if wait > settings.SCHEDULER_COUNTDOWN_MAX_SECONDS:
        execution.lease_expires_at = due
        Execution.objects.filter(pk=execution.pk).update(lease_expires_at=due)
        return
    execution.lease_expires_at = due + _grace()
    Execution.objects.filter(pk=execution.pk).update(lease_expires_at=execution.lease_expires_at)
    _enqueue_attempt(
        execution.pk, execution.attempts + 1, queue=_queue(execution), countdown=wait or None, robust=robust
    )


def _enqueue_fire(trigger: Trigger, slot: datetime) -> None:
    from .tasks import fire_trigger

    transaction.on_commit(
        lambda: fire_trigger.apply_async(
            kwargs={"trigger_id": trigger.pk, "scheduled_for": slot.isoformat()}, queue=trigger.priority
        ),
        robust=True,
    )


def _unfinished(trigger: Trigger) -> Any:
    return trigger.executions.filter(status__in=UNFINISHED_STATUSES, fallback_of=None)


def _new_execution(trigger: Trigger, slot: datetime, origin: str, now: datetime) -> Execution:
    workflow = trigger.workflow
    return Execution(
        trigger=trigger,
        workflow=workflow,
        scheduled_for=slot,
        origin=origin,
        inputs={**workflow.default_inputs, **trigger.inputs},
        status=ExecutionStatus.QUEUED,
        created_at=now,
        due_at=max(slot, now) if origin == ExecutionOrigin.BACKFILL else slot,
        lease_expires_at=now + _grace(),
    )


def _mark_skipped(execution: Execution, reason: str, now: datetime) -> None:
    execution.status = ExecutionStatus.SKIPPED
    execution.skip_reason = reason
    execution.finished_at = now
    execution.lease_expires_at = None
    execution.due_at = None


def _has_execution(trigger: Trigger, slot: datetime) -> bool:
    return trigger.executions.filter(scheduled_for=slot, fallback_of=None).exists()


def _missed_slots(trigger: Trigger, slot: datetime) -> tuple[list[datetime], bool]:
    """Slots after the last one handled and before ``slot`` that never fired (newest cap only).

    Returns them oldest first, and whether older ones were left out by the cap.
    """
    expected = trigger.next_run_at
    if expected is None or expected >= slot:
        return [], False
    cap = settings.SCHEDULER_CATCHUP_MAX_SLOTS
    cadence = trigger.cadence
    found: list[datetime] = []
    cursor = slot - timedelta(microseconds=1)
    while len(found) <= cap:
        previous = timing.latest_slot_at_or_before(cadence, cursor)
        if previous is None or previous < expected:
            break
        found.append(previous)
        cursor = previous - timedelta(microseconds=1)
    more = len(found) > cap
    return list(reversed(found[:cap])), more


@transaction.atomic
def trigger_fire(*, trigger_id: int, scheduled_for: datetime | None, now: datetime | None = None) -> Execution | None:
    """Handle a slot beat fired: apply catch-up, window, overlap, max_runs and jitter rules.

    Returns the execution to call right away (its first attempt started), or None: the trigger
    is gone, paused or completed, the slot is not one of its slots or is from before it was
    resumed or changed, the slot already has its execution, or the rules made it skip or wait.
    """
    now = now or timezone.now()
    trigger = Trigger.objects.select_for_update().select_related("workflow").filter(pk=trigger_id).first()
    if trigger is None:
        logger.info("fire for trigger %s ignored: it no longer exists", trigger_id)
        return None
    if not trigger.enabled or trigger.completed_at is not None:
        logger.info("fire for trigger %s ignored: it is %s", trigger_id, trigger.status)
        return None
    cadence = trigger.cadence
    if scheduled_for is None:
        scheduled_for = timing.latest_slot_at_or_before(cadence, now)
        if scheduled_for is None:
            return None
    elif timing.latest_slot_at_or_before(cadence, scheduled_for) != scheduled_for:
        logger.info("fire for trigger %s ignored: %s is not one of its slots", trigger_id, scheduled_for.isoformat())
        return None
    if trigger.active_since is not None and scheduled_for < trigger.active_since:
        logger.info(
            "fire for trigger %s ignored: slot %s is from before it was resumed or changed",
            trigger_id,
            scheduled_for.isoformat(),
        )
        return None
    late = (now - scheduled_for).total_seconds() > settings.SCHEDULER_MISFIRE_GRACE_SECONDS
    newest = timing.latest_slot_at_or_before(cadence, now) if late else None
    if newest is not None and newest > scheduled_for and not _has_execution(trigger, scheduled_for):
        # A late message while newer slots are already due (workers were down, beat kept sending):
        # handle it as the newest slot's fire, so the catch-up policy sees every missed slot at once.
        logger.info(
            "fire for trigger %s at slot %s is late; handling the newest due slot %s",
            trigger_id,
            scheduled_for.isoformat(),
            newest.isoformat(),
        )
        scheduled_for = newest
        late = (now - scheduled_for).total_seconds() > settings.SCHEDULER_MISFIRE_GRACE_SECONDS
    if _has_execution(trigger, scheduled_for):
        logger.info("slot %s of trigger %s already has its execution", scheduled_for.isoformat(), trigger_id)
        if trigger.next_run_at is not None and trigger.next_run_at <= scheduled_for:
            trigger.next_run_at = timing.next_slot_after(cadence, scheduled_for)
            trigger.save(update_fields=["next_run_at"])
        return None

    missed, more_missed = _missed_slots(trigger, scheduled_for)
    missed = [slot for slot in missed if not (trigger.active_since and slot < trigger.active_since)]
    to_skip: list[datetime] = []
    to_run: list[datetime] = []
    if trigger.catchup == CatchupPolicy.SKIP:
        to_skip = [*missed, scheduled_for] if late else missed
        to_run = [] if late else [scheduled_for]
    elif trigger.catchup == CatchupPolicy.LATEST:
        to_skip, to_run = missed, [scheduled_for]
    else:
        horizon = now - timedelta(seconds=trigger.catchup_window_seconds)
        to_skip = [slot for slot in missed if slot < horizon]
        to_run = [slot for slot in missed if slot >= horizon] + [scheduled_for]
        cap = settings.SCHEDULER_CATCHUP_MAX_SLOTS
        if len(to_run) > cap:
            to_skip, to_run = sorted(to_skip + to_run[:-cap]), to_run[-cap:]
    if trigger.max_runs is not None:
        room = max(0, trigger.max_runs - trigger.run_count)
        kept = to_run[len(to_run) - room :] if room else []
        # Catch-up slots left out for max_runs are recorded missed, like those past the catch-up cap.
        dropped = [slot for slot in to_run if slot not in kept and slot != scheduled_for]
        to_skip, to_run = sorted(to_skip + dropped), kept

    window = timing.parse_window(trigger.execution_window)
    workflow = trigger.workflow
    busy = _unfinished(trigger).exists()
    queued_behind = _unfinished(trigger).filter(status=ExecutionStatus.QUEUED).exists()
    rows: list[Execution] = []
    runnable: list[Execution] = []
    for slot in to_skip:
        execution = _new_execution(trigger, slot, ExecutionOrigin.CATCHUP, now)
        _mark_skipped(execution, SkipReason.MISSED, now)
        rows.append(execution)
    if more_missed and rows:
        rows[0].metadata = {"older_missed_slots_not_recorded": True}
    for index, slot in enumerate(to_run):
        origin = ExecutionOrigin.SCHEDULE if slot == scheduled_for else ExecutionOrigin.CATCHUP
        execution = _new_execution(trigger, slot, origin, now)
        if window is not None and not window.contains(slot, cadence.zone):
            _mark_skipped(execution, SkipReason.OUTSIDE_WINDOW, now)
        elif not workflow.is_active:
            _mark_skipped(execution, SkipReason.WORKFLOW_INACTIVE, now)
            execution.error = "workflow is not active"
        elif busy and trigger.overlap == OverlapPolicy.SKIP:
            _mark_skipped(execution, SkipReason.OVERLAP, now)
        elif (
            busy
            and trigger.overlap == OverlapPolicy.BUFFER_ONE
            and (queued_behind or index < len(to_run) - 1 or runnable)
        ):
            # At most one waiting: keep the newest slot, skip the rest.
            _mark_skipped(execution, SkipReason.OVERLAP, now)
        else:
            if busy or runnable:
                execution.wait_reason = "previous"
            if trigger.jitter_seconds:
                execution.jitter_seconds = round(random.uniform(0, trigger.jitter_seconds), 3)
                execution.due_at = slot + timedelta(seconds=execution.jitter_seconds)
            runnable.append(execution)
        rows.append(execution)
    for execution in rows:
        execution.save(force_insert=True)
        if execution.status == ExecutionStatus.SKIPPED:
            _on_finished(execution, now)

    trigger.run_count += len(runnable)
    trigger.last_run_at = max(filter(None, [trigger.last_run_at, scheduled_for]))
    # The next slot not yet handled: after this one, even if it is already due (a backlog). Jumping
    # to "after now" would leave a due slot with no execution and no record if its message is lost;
    # as next_run_at it is either fired by its own message or, once overdue, by recovery.
    following = timing.next_slot_after(cadence, scheduled_for)
    if trigger.next_run_at is not None and following is not None and trigger.next_run_at > following:
        following = trigger.next_run_at
    trigger.next_run_at = following
    update = ["run_count", "last_run_at", "next_run_at"]
    if trigger.next_run_at is None or (trigger.max_runs is not None and trigger.run_count >= trigger.max_runs):
        # A once trigger that fired, one past its end, or one out of runs: completed.
        trigger.next_run_at = None
        trigger.completed_at = now
        update.append("completed_at")
    trigger.save(update_fields=update)
    if trigger.completed_at is not None:
        beat.trigger_sync(trigger)

    started: Execution | None = None
    for execution in runnable:
        if started is None and _try_start(execution, now):
            execution.save()
            started = execution
        else:
            execution.save()
            _dispatch(execution, now=now)
    return started


def _try_start(execution: Execution, now: datetime) -> bool:
    """Start the next attempt if it is due, first in line and within concurrency limits.

    Otherwise record why it waits; it is sent again when the thing it waits for finishes (or,
    as a backstop, when its lease runs out). Call with the execution locked.
    """
    if execution.due_at is not None and execution.due_at > now:
        execution.wait_reason = execution.wait_reason or ("jitter" if execution.jitter_seconds else "retry")
        return False
    trigger = execution.trigger
    if execution.origin == ExecutionOrigin.BACKFILL:
        # A backfill runs by the overlap chosen for it (trigger_backfill), whatever the trigger's own.
        serial = execution.metadata.get("overlap", "serial") != "allow"
    else:
        serial = trigger.overlap != OverlapPolicy.ALLOW
    in_line = execution.origin not in _PERSONAL or execution.origin == ExecutionOrigin.BACKFILL
    if in_line and serial:
        # Anything older of this trigger still unfinished goes first (a queued manual run does not
        # hold the line: it waits only for capacity).
        ahead = (
            _unfinished(trigger)
            .exclude(pk=execution.pk)
            .filter(scheduled_for__lt=execution.scheduled_for)
            .exclude(status=ExecutionStatus.QUEUED, origin__in=[ExecutionOrigin.MANUAL, ExecutionOrigin.RETRY])
        )
        if ahead.exists():
            execution.wait_reason = "previous"
            return False
    workflow = execution.workflow
    if workflow.max_concurrency:
        Workflow.objects.select_for_update().filter(pk=workflow.pk).first()
        running = Execution.objects.filter(workflow=workflow, status=ExecutionStatus.RUNNING).count()
        # First come, first served: an older execution already waiting for this workflow goes first.
        waiting_ahead = (
            Execution.objects.filter(
                workflow=workflow,
                status__in=[ExecutionStatus.QUEUED, ExecutionStatus.RETRYING],
                wait_reason="concurrency",
                created_at__lt=execution.created_at,
            )
            .exclude(pk=execution.pk)
            .exists()
        )
        if running >= workflow.max_concurrency or waiting_ahead:
            execution.wait_reason = "concurrency"
            return False
    owner_limit = settings.SCHEDULER_OWNER_MAX_CONCURRENCY
    if owner_limit:
        owner_model = type(trigger.owner) if trigger.owner_id else None
        if owner_model is not None:
            owner_model.objects.select_for_update().filter(pk=trigger.owner_id).first()
        running = Execution.objects.filter(trigger__owner_id=trigger.owner_id, status=ExecutionStatus.RUNNING).count()
        if running >= owner_limit:
            execution.wait_reason = "owner_concurrency"
            return False
    execution.status = ExecutionStatus.RUNNING
    execution.attempts += 1
    execution.started_at = execution.started_at or now
    execution.next_attempt_at = None
    execution.wait_reason = ""
    execution.lease_expires_at = _lease(workflow, now)
    return True


@transaction.atomic
def execution_claim(*, execution_id: Any, attempt: int, now: datetime | None = None) -> Execution | None:
    """Start attempt ``attempt`` of an execution, or None if it must not run now.

    Allowed: the first attempt of a queued execution, the next attempt of a retrying one, or
    any unfinished execution whose lease has expired (its holder died; the crash counts as an
    attempt) — and then only if it is due, first in line and within concurrency limits. A
    message delivered twice finds the lease held and calls nothing.
    """
    now = now or timezone.now()
    execution = (
        Execution.objects.select_for_update()
        .select_related("workflow", "trigger", "trigger__owner")
        .filter(pk=execution_id)
        .first()
    )
    if execution is None or execution.status in FINISHED_STATUSES:
        return None
    expired = execution.lease_expires_at is None or execution.lease_expires_at <= now
    expected = (execution.status == ExecutionStatus.QUEUED and attempt == 1) or (
        execution.status == ExecutionStatus.RETRYING and attempt == execution.attempts + 1
    )
    if not (expected or expired) or execution.status == ExecutionStatus.RUNNING and not expired:
        return None
    if execution.attempts >= execution.trigger.max_attempts:
        # The previous holder died during the last allowed attempt.
        _finish(execution, now, ExecutionStatus.FAILED, error=execution.error or "worker lost during the last attempt")
        return None
    if not execution.workflow.is_active:
        _finish(execution, now, ExecutionStatus.FAILED, error="workflow is not active")
        return None
    if not _try_start(execution, now):
        # Waits for what wait_reason names; re-sent when that finishes, or by recovery.
        execution.lease_expires_at = max(execution.due_at or now, now) + _grace()
        execution.save(update_fields=["wait_reason", "lease_expires_at"])
        return None
    execution.save(
        update_fields=["status", "attempts", "started_at", "next_attempt_at", "wait_reason", "lease_expires_at"]
    )
    return execution


def _finish(execution: Execution, now: datetime, status: str, *, error: str = "") -> None:
    execution.status = status
    execution.finished_at = now
    execution.lease_expires_at = None
    execution.next_attempt_at = None
    execution.due_at = None
    execution.wait_reason = ""
    if error:
        execution.error = error
    execution.save()
    _on_finished(execution, now)


def _on_finished(execution: Execution, now: datetime) -> None:
    """After an execution ends: failure counting, notifications, fallback, and waking waiters."""
    stats_record(execution=execution)
    trigger = execution.trigger
    if execution.origin != ExecutionOrigin.FALLBACK and execution.status != ExecutionStatus.SKIPPED:
        _count_outcome(trigger, execution, now)
    if execution.status != ExecutionStatus.SKIPPED or execution.skip_reason != SkipReason.MISSED:
        _wake_waiting(execution, now)


def _count_outcome(trigger: Trigger, execution: Execution, now: datetime) -> None:
    trigger = Trigger.objects.select_for_update().select_related("workflow").get(pk=trigger.pk)
    if execution.status == ExecutionStatus.SUCCEEDED:
        if trigger.consecutive_failures:
            failures = trigger.consecutive_failures
            trigger.consecutive_failures = 0
            trigger.save(update_fields=["consecutive_failures"])
            _notify(trigger, "recovered", execution, detail={"after_failures": failures})
        return
    trigger.consecutive_failures += 1
    trigger.save(update_fields=["consecutive_failures"])
    _notify(trigger, "failed", execution)
    if trigger.fallback_workflow_id and trigger.fallback_workflow.is_active:
        fallback = Execution.objects.create(
            trigger=trigger,
            workflow=trigger.fallback_workflow,
            scheduled_for=execution.scheduled_for,
            origin=ExecutionOrigin.FALLBACK,
            fallback_of=execution,
            inputs=execution.inputs,
            status=ExecutionStatus.QUEUED,
            created_at=now,
            due_at=now,
            lease_expires_at=now + _grace(),
        )
        _dispatch(fallback, now=now)
    limit = trigger.pause_after_failures
    if limit and trigger.enabled and trigger.consecutive_failures >= limit:
        trigger.enabled = False
        trigger.paused_at = now
        trigger.paused_by = None
        trigger.pause_reason = f"paused automatically after {trigger.consecutive_failures} failed executions in a row"
        trigger.save(update_fields=["enabled", "paused_at", "paused_by", "pause_reason", "updated_at"])
        beat.trigger_sync(trigger)
        audit_record(actor=None, action="paused", obj=trigger, changes={"reason": trigger.pause_reason})
        _notify(trigger, "auto_paused", execution)


def _notify(trigger: Trigger, event: str, execution: Execution, *, detail: dict[str, Any] | None = None) -> None:
    """Queue the notification (e-mail and webhook) for ``event`` if the trigger has targets."""
    if not trigger.notify_emails and not trigger.notify_webhook_url:
        return
    from .tasks import notify_trigger_event

    payload = {"trigger_id": trigger.pk, "event": event, "execution_id": str(execution.pk), "detail": detail or {}}
    transaction.on_commit(lambda: notify_trigger_event.apply_async(kwargs=payload, queue="high"), robust=True)


def _wake_waiting(execution: Execution, now: datetime) -> None:
    """Send the executions that may have been waiting for this one (same trigger, workflow, owner)."""
    trigger = execution.trigger
    candidates = Execution.objects.filter(status__in=[ExecutionStatus.QUEUED, ExecutionStatus.RETRYING]).exclude(
        wait_reason=""
    )
    picks = [
        candidates.filter(trigger=trigger).order_by("scheduled_for").first(),
        candidates.filter(workflow=execution.workflow, wait_reason="concurrency").order_by("created_at").first(),
    ]
    if settings.SCHEDULER_OWNER_MAX_CONCURRENCY:
        picks.append(
            candidates.filter(trigger__owner_id=trigger.owner_id, wait_reason="owner_concurrency")
            .order_by("created_at")
            .first()
        )
    for waiting in {pick.pk: pick for pick in picks if pick is not None}.values():
        if waiting.due_at is None or waiting.due_at <= now + timedelta(
            seconds=settings.SCHEDULER_COUNTDOWN_MAX_SECONDS
        ):
            _dispatch(waiting, now=now)


@dataclass(frozen=True)
class AttemptOutcome:
    status: str
    retry_in_seconds: float | None = None
    next_attempt: int | None = None
    details: dict[str, Any] = field(default_factory=dict)


def backoff_interval(*, retry: int, min_backoff: float, max_backoff: float, max_doublings: int = 30) -> float:
    """Cloud Scheduler's n-th retry interval: min, doubling ``max_doublings`` times, then growing
    linearly by min*2^max_doublings, capped at max (10 s, 300 s, 3 doublings: 10, 20, 40, 80,
    160, 240, 300, 300...)."""
    if retry - 1 <= max_doublings:
        interval = min_backoff * 2 ** (retry - 1)
    else:
        interval = min_backoff * 2**max_doublings * (retry - max_doublings)
    return min(max_backoff, interval)


def backoff_seconds(
    *,
    attempt: int,
    min_backoff: float,
    max_backoff: float,
    max_doublings: int = 30,
    retry_after: float | None = None,
    rng: random.Random | None = None,
) -> float:
    """Wait after failed attempt ``attempt`` (1-based): growing intervals with full jitter, capped.

    Attempt n waits a random time between the n-th and the (n+1)-th interval of
    backoff_interval, so waits spread out yet never shrink; a Retry-After longer than that is
    honoured up to max.
    """
    rng = rng or random
    low = backoff_interval(retry=attempt, min_backoff=min_backoff, max_backoff=max_backoff, max_doublings=max_doublings)
    high = backoff_interval(
        retry=attempt + 1, min_backoff=min_backoff, max_backoff=max_backoff, max_doublings=max_doublings
    )
    delay = rng.uniform(low, high)
    if retry_after is not None:
        delay = max(delay, min(retry_after, max_backoff))
    return round(delay, 3)


def execution_perform(*, execution: Execution) -> AttemptOutcome:
    """Call the workflow for a claimed execution and record the outcome."""
    workflow, trigger = execution.workflow, execution.trigger
    attempt = execution.attempts
    call = WorkflowCall(
        url=workflow.execution_url,
        method=workflow.http_method,
        secret=workflow.secret,
        previous_secret=workflow.valid_previous_secret(),
        timeout_seconds=workflow.timeout_seconds,
        idempotency_key=str(execution.pk),
        headers=dict(workflow.headers),
        payload={
            "workflow_id": workflow.pk,
            "trigger_id": trigger.pk,
            "execution_id": str(execution.pk),
            "scheduled_for": execution.scheduled_for.isoformat(),
            "attempt": attempt,
            "manual": execution.manual,
            "inputs": execution.inputs,
        },
    )
    started = timezone.now()
    result = error = None
    try:
        result = call_workflow(call)
    except WorkflowCallError as exc:
        error = exc
    except Exception as exc:  # noqa: BLE001 - an unexpected failure is recorded and retried, never lost
        logger.exception("unexpected error calling workflow %s for execution %s", workflow.pk, execution.pk)
        error = WorkflowCallError(f"internal error: {type(exc).__name__}")
        error.retryable = True
    return _record_attempt(execution.pk, attempt, started, result, error)


@transaction.atomic
def _record_attempt(execution_id: Any, attempt: int, started: datetime, result: Any, error: Any) -> AttemptOutcome:
    now = timezone.now()
    execution = Execution.objects.select_for_update().select_related("trigger").get(pk=execution_id)
    entry: dict[str, Any] = {"attempt": attempt, "started_at": started.isoformat(), "finished_at": now.isoformat()}
    if execution.status in FINISHED_STATUSES or execution.attempts != attempt:
        # Someone took over after our lease ran out; their outcome stands.
        logger.warning("attempt %s of execution %s finished after it was taken over", attempt, execution_id)
        return AttemptOutcome(status=execution.status)
    log = execution.metadata.setdefault("attempts", [])
    if result is not None:
        entry.update(http_status=result.http_status, duration_ms=result.duration_ms)
        execution.http_status = result.http_status
        execution.run_id = result.run_id
        execution.duration_ms = result.duration_ms
        execution.error = ""
        execution.metadata["response_excerpt"] = result.body_excerpt
        log.append(entry)
        del log[:-_ATTEMPT_LOG_LIMIT]
        _finish(execution, now, ExecutionStatus.SUCCEEDED)
        return AttemptOutcome(status=ExecutionStatus.SUCCEEDED)
    execution.http_status = error.http_status if isinstance(error, WorkflowCallError) else None
    execution.error = str(error)[:2000]
    execution.duration_ms = int((now - started).total_seconds() * 1000)
    if getattr(error, "body_excerpt", ""):
        execution.metadata["response_excerpt"] = error.body_excerpt
    entry.update(http_status=execution.http_status, error=execution.error)
    trigger = execution.trigger
    delay = backoff_seconds(
        attempt=attempt,
        min_backoff=trigger.min_backoff_seconds,
        max_backoff=trigger.max_backoff_seconds,
        max_doublings=trigger.max_doublings,
        retry_after=getattr(error, "retry_after_seconds", None),
    )
    limit = trigger.max_retry_duration_seconds
    out_of_time = bool(limit) and (now + timedelta(seconds=delay) - execution.started_at).total_seconds() > limit
    if error.retryable and attempt < trigger.max_attempts and not out_of_time:
        entry["retry_in_seconds"] = delay
        log.append(entry)
        del log[:-_ATTEMPT_LOG_LIMIT]
        execution.status = ExecutionStatus.RETRYING
        execution.next_attempt_at = execution.due_at = now + timedelta(seconds=delay)
        execution.save()
        _dispatch(execution, now=now)
        return AttemptOutcome(status=ExecutionStatus.RETRYING, retry_in_seconds=delay, next_attempt=attempt + 1)
    if error.retryable and out_of_time:
        entry["error"] = execution.error = f"{execution.error} (retries stopped: max_retry_duration_seconds={limit})"
    log.append(entry)
    del log[:-_ATTEMPT_LOG_LIMIT]
    _finish(execution, now, ExecutionStatus.FAILED)
    return AttemptOutcome(status=ExecutionStatus.FAILED)


@dataclass(frozen=True)
class RecoveryReport:
    executions: int
    slots: int


@transaction.atomic
def executions_recover(*, now: datetime | None = None, limit: int = 500) -> RecoveryReport:
    """Send every unfinished execution whose lease ran out, and fire slots whose message was lost.

    A lease runs out when a worker died mid-attempt (the execution turns retrying, the crash
    counting as an attempt), when a long wait held in the database falls due, or as the
    backstop for a waiting execution whose wake-up message was lost. Each one sent gets a
    fresh grace period, so a backlog is not sent twice.
    """
    now = now or timezone.now()
    stale = list(
        Execution.objects.select_for_update(skip_locked=True)
        .select_related("trigger")
        .filter(status__in=UNFINISHED_STATUSES, lease_expires_at__lte=now)
        .order_by("lease_expires_at")[:limit]
    )
    for execution in stale:
        if execution.status == ExecutionStatus.RUNNING:
            logger.warning("execution %s lost its worker during attempt %s", execution.pk, execution.attempts)
            # The attempt in progress died with its worker: it counts, and the next one is due now.
            execution.status = ExecutionStatus.RETRYING
            execution.error = f"worker lost during attempt {execution.attempts}"
            execution.metadata.setdefault("attempts", []).append(
                {"attempt": execution.attempts, "error": execution.error, "recovered_at": now.isoformat()}
            )
            execution.next_attempt_at = execution.due_at = now
        execution.lease_expires_at = now + _grace()
        execution.save(update_fields=["status", "error", "metadata", "next_attempt_at", "due_at", "lease_expires_at"])
        _enqueue_attempt(execution.pk, execution.attempts + 1, queue=_queue(execution))
    missed_before = now - timedelta(seconds=settings.SCHEDULER_MISSED_SLOT_GRACE_SECONDS)
    missed = list(
        Trigger.objects.filter(enabled=True, completed_at=None, next_run_at__lte=missed_before).order_by("next_run_at")[
            :limit
        ]
    )
    slots = 0
    for trigger in missed:
        slot = timing.latest_slot_at_or_before(trigger.cadence, now)
        if slot is None:
            continue
        logger.warning(
            "trigger %s missed its slot %s; firing its latest slot %s", trigger.pk, trigger.next_run_at, slot
        )
        _enqueue_fire(trigger, slot)
        slots += 1
    return RecoveryReport(executions=len(stale), slots=slots)


# --- Statistics and retention -------------------------------------------------------------------
# Imports are local so this section can be merged without touching the module's import block.

# Deleted per transaction, so a large first prune never holds the (on SQLite: whole-database)
# write lock for long, and an interrupted prune simply resumes at the next run.
_PRUNE_BATCH = 500


@transaction.atomic
def stats_record(*, execution: Execution) -> None:
    """Count a finished execution in its trigger's running stats; call once per execution.

    Fallback executions are not counted: their slot already counted as failed, and counting the
    fallback too would make a trigger's total exceed its slots. Durations are those of succeeded
    and failed executions (skipped ones never called anything).
    """
    from django.db.models import F
    from django.db.models.functions import Greatest

    from .models import ExecutionOrigin, ExecutionStats, duration_bucket

    if execution.status not in FINISHED_STATUSES:
        raise ValueError(f"execution {execution.pk} is {execution.status}; only finished executions are counted.")
    if execution.origin == ExecutionOrigin.FALLBACK:
        return
    stats, _ = ExecutionStats.objects.get_or_create(trigger_id=execution.trigger_id, workflow_id=execution.workflow_id)
    # The row lock serialises the histogram's read-modify-write (JSON has no portable atomic
    # increment); the counters are F() expressions, so they stay exact even without it.
    stats = ExecutionStats.objects.select_for_update().only("pk", "duration_histogram").get(pk=stats.pk)
    counter = {
        ExecutionStatus.SUCCEEDED: "succeeded",
        ExecutionStatus.FAILED: "failed",
        ExecutionStatus.SKIPPED: "skipped",
    }[execution.status]
    changes: dict[str, Any] = {"total": F("total") + 1, counter: F(counter) + 1, "updated_at": timezone.now()}
    duration = execution.duration_ms
    if duration is not None and execution.status != ExecutionStatus.SKIPPED:
        histogram = dict(stats.duration_histogram or {})
        key = duration_bucket(duration)
        histogram[key] = histogram.get(key, 0) + 1
        changes.update(
            duration_count=F("duration_count") + 1,
            duration_sum_ms=F("duration_sum_ms") + duration,
            duration_max_ms=Greatest(F("duration_max_ms"), duration),
            duration_histogram=histogram,
        )
    ExecutionStats.objects.filter(pk=stats.pk).update(**changes)


def _delete_in_batches(queryset: Any) -> int:
    """Delete the finished executions ``queryset`` selects, _PRUNE_BATCH per transaction."""
    deleted = 0
    queryset = queryset.filter(status__in=FINISHED_STATUSES).order_by()
    while True:
        ids = list(queryset.values_list("pk", flat=True)[:_PRUNE_BATCH])
        if not ids:
            return deleted
        with transaction.atomic():
            _, per_model = Execution.objects.filter(pk__in=ids, status__in=FINISHED_STATUSES).delete()
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
    from django.db.models import Count, Q

    now = now or timezone.now()
    deleted = 0

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
