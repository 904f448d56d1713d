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

from . import beat, timing
from .exceptions import TriggerStateError
from .models import FINISHED_STATUSES, UNFINISHED_STATUSES, Execution, ExecutionStatus, Trigger, TriggerKind

logger = logging.getLogger(__name__)

_SCHEDULE_FIELDS = frozenset({"kind", "cron", "timezone", "run_at", "interval_seconds"})
_EDITABLE = _SCHEDULE_FIELDS | frozenset(
    {"name", "workflow", "inputs", "enabled", "max_attempts", "min_backoff_seconds", "max_backoff_seconds"}
)
_ATTEMPT_LOG_LIMIT = 50


# --- Triggers -----------------------------------------------------------------------------------


def _next_run_at(trigger: Trigger, now: datetime) -> datetime | None:
    if trigger.kind == TriggerKind.ONCE and trigger.executions.filter(scheduled_for=trigger.run_at).exists():
        return None
    return timing.next_slot_after(trigger.cadence, now)


def _check_schedule(trigger: Trigger, now: datetime, *, schedule_changed: bool) -> None:
    from django.core.exceptions import ValidationError

    trigger.full_clean()
    if trigger.kind == TriggerKind.ONCE and schedule_changed and trigger.run_at <= now:
        raise ValidationError({"run_at": ["must be in the future."]})
    timing.validate_cadence(trigger.cadence, now=now)
    beat.check_schedulable(trigger.cadence)


def trigger_validate(*, trigger: Trigger, schedule_changed: bool = True, now: datetime | None = None) -> None:
    """Run the checks trigger_create / trigger_update make, without saving (for forms).

    Raises django's ValidationError (keyed by field) or ScheduleError (with ``field``), as they do.
    """
    _check_schedule(trigger, now or timezone.now(), schedule_changed=schedule_changed)


@transaction.atomic
def trigger_create(
    *,
    owner: AbstractBaseUser,
    workflow: Workflow,
    name: str,
    kind: str,
    cron: str = "",
    timezone_name: str = "UTC",
    run_at: datetime | None = None,
    interval_seconds: int | None = None,
    inputs: dict[str, Any] | None = None,
    enabled: bool = True,
    max_attempts: int = 3,
    min_backoff_seconds: int = 5,
    max_backoff_seconds: int = 300,
    now: datetime | None = None,
) -> Trigger:
    """Create a trigger and its PeriodicTask in one transaction."""
    now = now or timezone.now()
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
        max_attempts=max_attempts,
        min_backoff_seconds=min_backoff_seconds,
        max_backoff_seconds=max_backoff_seconds,
    )
    _check_schedule(trigger, now, schedule_changed=True)
    trigger.active_since = now
    trigger.next_run_at = timing.next_slot_after(trigger.cadence, now)
    if not enabled:
        trigger.paused_at = now
    trigger.save()
    beat.trigger_sync(trigger, restart_at=now)
    return trigger


@transaction.atomic
def trigger_update(*, trigger: Trigger, now: datetime | None = None, **fields: Any) -> Trigger:
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
    was_enabled = trigger.enabled
    for name, value in fields.items():
        setattr(trigger, name, value)
    if "enabled" in fields and fields["enabled"] and not was_enabled:
        trigger.pause_reason, trigger.paused_at = "", None
    if "enabled" in fields and not fields["enabled"] and was_enabled:
        trigger.paused_at = now
    schedule_changed = any(getattr(trigger, name) != value for name, value in before.items())
    _check_schedule(trigger, now, schedule_changed=schedule_changed)
    restart = schedule_changed or (trigger.enabled and not was_enabled)
    if restart:
        trigger.active_since = now
        trigger.next_run_at = _next_run_at(trigger, now)
    trigger.save()
    beat.trigger_sync(trigger, restart_at=now if restart else None)
    return trigger


@transaction.atomic
def trigger_pause(*, trigger: Trigger, reason: str = "", now: datetime | None = None) -> Trigger:
    """Stop firing; slots that fall due while paused never run."""
    now = now or timezone.now()
    trigger = Trigger.objects.select_for_update().get(pk=trigger.pk)
    if not trigger.enabled:
        raise TriggerStateError(f"trigger {trigger.name!r} is already paused.")
    trigger.enabled = False
    trigger.paused_at = now
    trigger.pause_reason = reason[:500]
    trigger.save(update_fields=["enabled", "paused_at", "pause_reason", "updated_at"])
    beat.trigger_sync(trigger)
    return trigger


@transaction.atomic
def trigger_resume(*, trigger: Trigger, now: datetime | None = None) -> Trigger:
    """Fire again from the next slot after now (the paused slots are not caught up)."""
    now = now or timezone.now()
    trigger = Trigger.objects.select_for_update().get(pk=trigger.pk)
    if trigger.enabled:
        raise TriggerStateError(f"trigger {trigger.name!r} is not paused.")
    trigger.enabled = True
    trigger.paused_at = None
    trigger.pause_reason = ""
    trigger.active_since = now
    trigger.next_run_at = _next_run_at(trigger, now)
    trigger.save(update_fields=["enabled", "paused_at", "pause_reason", "active_since", "next_run_at", "updated_at"])
    beat.trigger_sync(trigger, restart_at=now)
    return trigger


@transaction.atomic
def trigger_delete(*, trigger: Trigger) -> None:
    """Delete the trigger, its PeriodicTask and its history."""
    beat.trigger_unsync(trigger)
    trigger.delete()


@transaction.atomic
def trigger_run_now(
    *, trigger: Trigger, inputs: dict[str, Any] | None = None, now: datetime | None = None
) -> Execution:
    """Queue a manual execution now (paused triggers too); it does not move the schedule."""
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
        inputs={**workflow.default_inputs, **trigger.inputs, **(inputs or {})},
        status=ExecutionStatus.QUEUED,
        created_at=now,
        lease_expires_at=now + timedelta(seconds=settings.SCHEDULER_LEASE_GRACE_SECONDS),
    )
    _enqueue_attempt(execution.pk, 1, robust=False)
    return execution


# --- Executions ---------------------------------------------------------------------------------


def _lease(workflow: Workflow, now: datetime) -> datetime:
    return now + timedelta(seconds=workflow.timeout_seconds + settings.SCHEDULER_LEASE_GRACE_SECONDS)


def _enqueue_attempt(execution_id: Any, attempt: int, *, countdown: float | None = None, robust: bool = True) -> None:
    """Send the attempt once the transaction commits.

    A broker outage never undoes what was committed: the execution keeps its lease and
    executions_recover sends it again later. ``robust=False`` lets the caller see the outage
    (after the commit), so a person who asked for a run can be told it is delayed.
    """
    from .tasks import run_execution

    def send() -> None:
        run_execution.apply_async(kwargs={"execution_id": str(execution_id), "attempt": attempt}, countdown=countdown)

    transaction.on_commit(send, robust=robust)


def _enqueue_fire(trigger_id: int, slot: datetime) -> None:
    from .tasks import fire_trigger

    transaction.on_commit(
        lambda: fire_trigger.delay(trigger_id=trigger_id, scheduled_for=slot.isoformat()), robust=True
    )


@transaction.atomic
def trigger_fire(*, trigger_id: int, scheduled_for: datetime | None, now: datetime | None = None) -> Execution | None:
    """Claim a slot: create its execution (first attempt started) or return None.

    None means there is nothing to call: the trigger is gone or paused, the slot is not one of
    its slots (a message from before an edit), or the slot already has its execution.
    """
    now = now or timezone.now()
    trigger = Trigger.objects.select_for_update().select_related("workflow").filter(pk=trigger_id).first()
    if trigger is None:
        logger.info("fire for trigger %s ignored: it no longer exists", trigger_id)
        return None
    if not trigger.enabled:
        logger.info("fire for trigger %s ignored: it is paused", trigger_id)
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
    if Execution.objects.filter(trigger=trigger, scheduled_for=scheduled_for).exists():
        logger.info("slot %s of trigger %s already has its execution", scheduled_for.isoformat(), trigger_id)
        if trigger.next_run_at is not None and trigger.next_run_at <= now:
            trigger.next_run_at = timing.next_slot_after(cadence, now)
            trigger.save(update_fields=["next_run_at"])
        return None
    workflow = trigger.workflow
    execution = Execution(
        trigger=trigger,
        workflow=workflow,
        scheduled_for=scheduled_for,
        inputs={**workflow.default_inputs, **trigger.inputs},
        created_at=now,
    )
    if workflow.is_active:
        execution.status = ExecutionStatus.RUNNING
        execution.attempts = 1
        execution.started_at = now
        execution.lease_expires_at = _lease(workflow, now)
    else:
        execution.status = ExecutionStatus.SKIPPED
        execution.finished_at = now
        execution.error = "workflow is not active"
        execution.metadata = {"reason": "workflow_inactive"}
    execution.save(force_insert=True)
    trigger.last_run_at = max(filter(None, [trigger.last_run_at, scheduled_for]))
    trigger.next_run_at = timing.next_slot_after(cadence, max(now, scheduled_for))
    trigger.save(update_fields=["last_run_at", "next_run_at"])
    if trigger.next_run_at is None:
        beat.trigger_sync(trigger)  # a once trigger that has fired: its task goes quiet
    return execution if execution.status == ExecutionStatus.RUNNING else None


@transaction.atomic
def execution_claim(*, execution_id: Any, attempt: int, now: datetime | None = None) -> Execution | None:
    """Start attempt ``attempt`` of an execution, or None if someone else holds it or it is done.

    Allowed: the first attempt of a queued execution, the next attempt of a retrying one, or
    any unfinished execution whose lease has expired (its holder died; the crash counts as an
    attempt). A message delivered twice finds the lease held and calls nothing.
    """
    now = now or timezone.now()
    execution = (
        Execution.objects.select_for_update().select_related("workflow", "trigger").filter(pk=execution_id).first()
    )
    if execution is None or execution.status in FINISHED_STATUSES:
        return None
    expired = execution.lease_expires_at is None or execution.lease_expires_at <= now
    expected = (execution.status == ExecutionStatus.QUEUED and attempt == 1) or (
        execution.status == ExecutionStatus.RETRYING and attempt == execution.attempts + 1
    )
    if not (expected or expired):
        return None
    if execution.attempts >= execution.trigger.max_attempts:
        # The previous holder died during the last allowed attempt.
        _finish(execution, now, ExecutionStatus.FAILED, error=execution.error or "worker lost during the last attempt")
        return None
    if not execution.workflow.is_active:
        _finish(execution, now, ExecutionStatus.FAILED, error="workflow is not active")
        return None
    execution.status = ExecutionStatus.RUNNING
    execution.attempts += 1
    execution.started_at = execution.started_at or now
    execution.next_attempt_at = None
    execution.lease_expires_at = _lease(execution.workflow, now)
    execution.save(update_fields=["status", "attempts", "started_at", "next_attempt_at", "lease_expires_at"])
    return execution


def _finish(execution: Execution, now: datetime, status: str, *, error: str = "") -> None:
    execution.status = status
    execution.finished_at = now
    execution.lease_expires_at = None
    execution.next_attempt_at = None
    if error:
        execution.error = error
    execution.save()


@dataclass(frozen=True)
class AttemptOutcome:
    status: str
    retry_in_seconds: float | None = None
    next_attempt: int | None = None
    details: dict[str, Any] = field(default_factory=dict)


def backoff_seconds(
    *,
    attempt: int,
    min_backoff: float,
    max_backoff: float,
    retry_after: float | None = None,
    rng: random.Random | None = None,
) -> float:
    """Wait after failed attempt ``attempt`` (1-based): exponential with jitter, capped.

    Attempt n waits a random time between min*2^(n-1) and min*2^n (capped at max), so waits
    spread out and never shrink; a Retry-After longer than that is honoured up to max.
    """
    rng = rng or random
    low = min(max_backoff, min_backoff * 2 ** (attempt - 1))
    high = min(max_backoff, min_backoff * 2**attempt)
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
    if error.retryable and attempt < trigger.max_attempts:
        delay = backoff_seconds(
            attempt=attempt,
            min_backoff=trigger.min_backoff_seconds,
            max_backoff=trigger.max_backoff_seconds,
            retry_after=getattr(error, "retry_after_seconds", None),
        )
        entry["retry_in_seconds"] = delay
        log.append(entry)
        del log[:-_ATTEMPT_LOG_LIMIT]
        execution.status = ExecutionStatus.RETRYING
        execution.next_attempt_at = now + timedelta(seconds=delay)
        execution.lease_expires_at = execution.next_attempt_at + timedelta(
            seconds=settings.SCHEDULER_LEASE_GRACE_SECONDS
        )
        execution.save()
        _enqueue_attempt(execution.pk, attempt + 1, countdown=delay)
        return AttemptOutcome(status=ExecutionStatus.RETRYING, retry_in_seconds=delay, next_attempt=attempt + 1)
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
    """Hand back executions whose holder died and slots whose message never came.

    Each re-queued execution gets a fresh grace period, so a backlog is not queued twice.
    """
    now = now or timezone.now()
    grace = timedelta(seconds=settings.SCHEDULER_LEASE_GRACE_SECONDS)
    stale = list(
        Execution.objects.select_for_update(skip_locked=True)
        .filter(status__in=UNFINISHED_STATUSES, lease_expires_at__lte=now)
        .order_by("lease_expires_at")[:limit]
    )
    for execution in stale:
        logger.warning("execution %s (%s) lost its worker; queueing it again", execution.pk, execution.status)
        if execution.status == ExecutionStatus.RUNNING:
            # The attempt in progress died with its worker: it counts, and the next one is due now.
            execution.status = ExecutionStatus.RETRYING
            execution.error = f"worker lost during attempt {execution.attempts}"
            execution.metadata.setdefault("attempts", []).append(
                {"attempt": execution.attempts, "error": execution.error, "recovered_at": now.isoformat()}
            )
        execution.next_attempt_at = now
        execution.lease_expires_at = now + grace
        execution.save(update_fields=["status", "error", "metadata", "next_attempt_at", "lease_expires_at"])
        _enqueue_attempt(execution.pk, execution.attempts + 1)
    missed_before = now - timedelta(seconds=settings.SCHEDULER_MISSED_SLOT_GRACE_SECONDS)
    missed = list(Trigger.objects.filter(enabled=True, next_run_at__lte=missed_before).order_by("next_run_at")[:limit])
    slots = 0
    for trigger in missed:
        slot = timing.latest_slot_at_or_before(trigger.cadence, now)
        if slot is None:
            continue
        logger.warning(
            "trigger %s missed its slot %s; firing its latest slot %s", trigger.pk, trigger.next_run_at, slot
        )
        _enqueue_fire(trigger.pk, slot)
        slots += 1
    return RecoveryReport(executions=len(stale), slots=slots)
