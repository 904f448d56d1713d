"""The dispatch path, top to bottom: a slot falls due (fire), a worker claims it, calls the
workflow (perform), records the outcome (record), and whatever got lost on the way is sent again
(recover).

At least once in, exactly once recorded:
- **fire**: beat (``dispatch_due``) claims due triggers from the due index in batches
  (``SELECT ... FOR UPDATE SKIP LOCKED``, so several beats never take the same one), inserts
  each slot's Execution and advances ``next_run_at`` in one transaction, then publishes the
  batch's first attempts on one connection, several per message in a burst (``message_groups``).
  The Execution row, committed before the publish, is the ledger: it counts as unsent until the
  broker has the message (its ``sent_at``, or for beat's batches the batch's ``Handoff.sent_at``,
  one row per batch). ``trigger_fire``
  does the same for one trigger, for the ``fire_trigger`` message stock DatabaseScheduler sends.
- **claim**: a worker starts an attempt with one conditional UPDATE (status and attempt number
  as it read them), so a second delivery of the same message calls nothing; it then holds the
  execution's lease (the call's deadline plus a grace) while it calls. A message of several
  attempts (``executions_run``) claims each just before its call, the same way.
- **perform / record**: the outcome of a successful call is one UPDATE of the execution's own
  row, committed before anything else happens, so no lock or deadlock elsewhere can lose it.
  Failures take the trigger's lock (failure count, auto-pause, fallback) in one order:
  execution, then trigger. A deadlock victim is retried.
- **recover**: executions whose lease ran out are sent again: never sent (a publish that
  failed, a beat killed after its commit, a wait held in the database), held by a worker that
  died, or lost by the broker; a message that is probably only waiting in a backlog is not
  re-sent while the backlog lasts, so recovery never multiplies load when the system is behind.

Every repeat of a call carries the same Idempotency-Key (the execution id).
"""

from __future__ import annotations

import functools
import logging
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import DatabaseError, connection, transaction
from django.db.models import DateTimeField, Exists, F, OuterRef, Q, QuerySet, Subquery, Value
from django.db.models.base import ModelState
from django.db.models.lookups import GreaterThan
from django.utils import timezone

from scheduler_project import collector, metrics
from scheduler_project.lookups import Row, array_literal
from workflows.client import WorkflowCall, call_workflow
from workflows.exceptions import WorkflowCallError
from workflows.models import RUN_FINISHED_STATUSES, RunStatus, Workflow, WorkflowRun
from workflows.services import audit_record

from . import beat, timing
from .models import (
    FINISHED_STATUSES,
    UNFINISHED_STATUSES,
    CatchupPolicy,
    Execution,
    ExecutionOrigin,
    ExecutionStatus,
    Handoff,
    OverlapPolicy,
    SkipReason,
    Trigger,
)

logger = logging.getLogger(__name__)


def _ids(obj: Trigger | Execution) -> dict[str, Any]:
    """The ids a log line about ``obj`` carries (extra=...), for SCHEDULER_LOG_FORMAT=json."""
    if isinstance(obj, Execution):
        return {"execution_id": str(obj.pk), "trigger_id": obj.trigger_id, "workflow_id": obj.workflow_id}
    return {"trigger_id": obj.pk, "workflow_id": obj.workflow_id}


# Executions a person started: they skip the trigger's overlap ordering and do not count as runs.
PERSONAL_ORIGINS = (
    ExecutionOrigin.MANUAL,
    ExecutionOrigin.RETRY,
    ExecutionOrigin.BACKFILL,
    ExecutionOrigin.FALLBACK,
)
_ATTEMPT_LOG_LIMIT = 50
# Triggers one dispatch transaction claims: large enough that a burst costs few round trips,
# small enough that the locks are held for a fraction of a second (~0.2 s). A 10,000-trigger burst
# took 2.4 s in batches of 500, 2.1 s of 1,000 and 2.0 s of 2,000 (in process, median of 3).
DISPATCH_BATCH_SIZE = 1000
# Redis commands kombu pipelines in one round trip (a message is one, two with its task-sent event).
_PUBLISH_BATCH = 1000

_F = TypeVar("_F", bound=Callable[..., Any])


# --- Deadlocks ----------------------------------------------------------------------------------

# PostgreSQL's deadlock_detected and serialization_failure: the transaction was rolled back and
# may simply be run again. https://www.postgresql.org/docs/15/errcodes-appendix.html
_RETRYABLE_SQLSTATES = frozenset({"40P01", "40001"})
_DEADLOCK_ATTEMPTS = 5


def _is_retryable(exc: BaseException) -> bool:
    return getattr(exc.__cause__, "sqlstate", None) in _RETRYABLE_SQLSTATES


def retry_on_deadlock(func: _F) -> _F:
    """Run ``func`` (a transaction of its own) again if the database chose it as a deadlock victim.

    Only outside an enclosing transaction: inside one, the whole outer transaction was rolled
    back, so the error goes up to whoever owns it.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        for attempt in range(1, _DEADLOCK_ATTEMPTS + 1):
            try:
                return func(*args, **kwargs)
            except DatabaseError as exc:
                if not _is_retryable(exc) or connection.in_atomic_block or attempt == _DEADLOCK_ATTEMPTS:
                    raise
                logger.warning(
                    "%s: deadlock victim (attempt %s of %s); retrying", func.__name__, attempt, _DEADLOCK_ATTEMPTS
                )
                time.sleep(random.uniform(0.005, 0.05) * attempt)
        raise AssertionError("unreachable")

    return wrapper  # type: ignore[return-value]


# --- Sending attempts to the broker -------------------------------------------------------------


def lease_grace() -> timedelta:
    return timedelta(seconds=settings.SCHEDULER_LEASE_GRACE_SECONDS)


def _handoff() -> timedelta:
    return timedelta(seconds=settings.SCHEDULER_HANDOFF_SECONDS)


def _lease(workflow: Workflow, now: datetime) -> datetime:
    return now + timedelta(seconds=workflow.timeout_seconds) + lease_grace()


def _queue(execution: Execution) -> str:
    """The broker queue for a trigger's priority ('high', 'normal', 'low')."""
    return str(execution.trigger.priority)


@dataclass(frozen=True)
class Attempt:
    """One message for the workers: run attempt ``attempt`` of an execution."""

    execution_id: str
    attempt: int
    queue: str = "normal"
    countdown: float | None = None


def publish(attempts: list[Attempt], *, producer: Any = None, grouped: bool = True) -> tuple[int, BaseException | None]:
    """Hand ``attempts`` to the broker in order, on one connection, in pipelined batches, without
    retrying.

    Returns how many surely arrived (all or none) and the error if not (None if all went). The
    caller decides what a failure means: the executions are still in the database.

    Many attempts for one queue (a burst) go several per ``run_executions`` message (see
    ``message_groups``; ``grouped=False``: one per message, always).

    Messages are built with the app's own ``amqp.create_task_message`` and sent with
    ``amqp.send_task_message`` (what ``Task.apply_async`` does underneath, without its per-call
    routing and option merging, and with the argument reprs given rather than computed): about a
    quarter of apply_async's cost per message, which is most of a burst's.
    """
    from .tasks import run_execution, run_executions

    if not attempts:
        return 0, None
    amqp = run_execution.app.amqp
    declared: set[str] = set()
    try:
        # kombu pipelines a batch into few round trips on Redis (one per _PUBLISH_BATCH commands);
        # other transports publish one by one. A failed batch's delivery is uncertain: all of it
        # counts as unsent, and a message that did arrive is only sent again once its hand-off
        # lease runs out (the claim then calls nothing).
        with (
            run_execution.app.producer_or_acquire(producer) as channel_producer,
            channel_producer.batch(max_size=_PUBLISH_BATCH),
        ):
            for group in message_groups(attempts) if grouped else [[attempt] for attempt in attempts]:
                first = group[0]
                if len(group) == 1:
                    name = run_execution.name
                    kwargs: dict[str, Any] = {"execution_id": first.execution_id, "attempt": first.attempt}
                else:
                    name = run_executions.name
                    kwargs = {"attempts": [[attempt.execution_id, attempt.attempt] for attempt in group]}
                message = amqp.create_task_message(
                    str(uuid.uuid4()),
                    name,
                    (),
                    kwargs,
                    countdown=first.countdown,
                    argsrepr="()",
                    kwargsrepr=repr(kwargs),
                )
                # Each queue is declared with its first message; declaring it again per message
                # only copies kombu entities (the broker has it by then).
                declare = None if first.queue not in declared else []
                declared.add(first.queue)
                amqp.send_task_message(channel_producer, name, message, queue=first.queue, retry=False, declare=declare)
    except Exception as exc:  # noqa: BLE001 - any broker failure leaves them to recovery
        return 0, exc
    return len(attempts), None


def message_groups(attempts: list[Attempt]) -> list[list[Attempt]]:
    """The messages ``attempts`` go in, in order: attempts for the same queue and countdown
    together, in at least SCHEDULER_MESSAGE_FANOUT messages (so every worker slot can get one) of
    at most SCHEDULER_EXECUTIONS_PER_MESSAGE. A few attempts go one per message."""
    by_kind: dict[tuple[str, float | None], list[Attempt]] = {}
    for attempt in attempts:
        by_kind.setdefault((attempt.queue, attempt.countdown), []).append(attempt)
    groups: list[list[Attempt]] = []
    for same in by_kind.values():
        size = max(
            1, min(settings.SCHEDULER_EXECUTIONS_PER_MESSAGE, -(-len(same) // settings.SCHEDULER_MESSAGE_FANOUT))
        )
        groups.extend(same[start : start + size] for start in range(0, len(same), size))
    return groups


def _mark_sent(attempts: list[Attempt], now: datetime) -> None:
    """Record that the broker has these messages: their lease grows from the hand-off to the grace."""
    # Only the attempt that was sent: a fast worker may have claimed it, failed and parked a later
    # attempt (sent_at empty again) before this runs, and that one must keep its own lease.
    by_attempt: dict[int, list[str]] = {}
    for attempt in attempts:
        by_attempt.setdefault(attempt.attempt, []).append(attempt.execution_id)
    for number, ids in by_attempt.items():
        Execution.objects.filter(
            pk__any=ids,
            attempts=number - 1,
            status__in=[ExecutionStatus.QUEUED, ExecutionStatus.RETRYING],
            sent_at__isnull=True,
        ).update(sent_at=now, lease_expires_at=F("lease_expires_at") + (lease_grace() - _handoff()))


def send_ledgered(
    attempts: list[Attempt], *, now: datetime, producer: Any = None, handoff: int | None = None
) -> tuple[int, BaseException | None]:
    """Publish attempts whose executions are committed with ``sent_at`` empty and a hand-off
    lease, then mark the ones the broker took: each execution, or (``handoff``: beat's batch,
    whose executions all name it) the batch's one Handoff row. If this process dies in between,
    the hand-off lease runs out within SCHEDULER_HANDOFF_SECONDS and recovery sends them."""
    sent, error = publish(attempts, producer=producer)
    if error is not None:
        logger.error(
            "broker refused %s of %s attempts (%s: %s); they stay in the database for recovery",
            len(attempts) - sent,
            len(attempts),
            type(error).__name__,
            error,
        )
    if handoff is not None and sent and sent == len(attempts):
        Handoff.objects.filter(pk=handoff).update(sent_at=now)
    else:
        _mark_sent(attempts[:sent], now)  # (the part of a batch the broker took, if any: one by one)
    return sent, error


def handoffs_settle(now: datetime) -> int:
    """Mark sent the first attempts whose hand-off lease ran out unclaimed but whose batch the
    broker took (``Handoff.sent_at``): their lease grows to the grace, as ``_mark_sent`` would
    have done at the publish, so recovery treats them as sent (held back while their queue has
    a backlog) and not as never sent. Recovery calls it before it looks for stale leases; it
    touches only executions still waiting after SCHEDULER_HANDOFF_SECONDS, not every one of a
    burst. Returns how many."""
    published = Handoff.objects.filter(pk=OuterRef("handoff_id"), sent_at__isnull=False)
    return (
        Execution.objects.filter(
            status__in=[ExecutionStatus.QUEUED, ExecutionStatus.RETRYING],
            lease_expires_at__lte=now,
            attempts=0,
            sent_at__isnull=True,
            handoff__isnull=False,
        )
        .filter(Exists(published))
        .update(
            sent_at=Subquery(published.values("sent_at")[:1]),
            lease_expires_at=F("lease_expires_at") + (lease_grace() - _handoff()),
        )
    )


def handoffs_prune(now: datetime) -> int:
    """Delete the Handoff rows no lease can still need: older than the longest hand-off lease
    (a countdown of SCHEDULER_COUNTDOWN_MAX_SECONDS plus the hand-off), with a minute to spare.
    Call after ``handoffs_settle`` (the executions whose lease ran out have read theirs)."""
    horizon = timedelta(seconds=settings.SCHEDULER_COUNTDOWN_MAX_SECONDS + 60) + _handoff()
    deleted, _ = Handoff.objects.filter(created_at__lt=now - horizon).delete()
    return deleted


def _enqueue_attempt(
    execution_id: Any, attempt: int, *, queue: str = "normal", countdown: float | None = None, robust: bool = True
) -> None:
    """Send the attempt once the transaction commits (the caller has set ``sent_at``).

    A broker outage never undoes what was committed: ``sent_at`` is cleared again, so recovery
    sends it once the lease runs out. ``robust=False`` lets the caller see the outage (after the
    commit), so a person who asked for a run can be told it is delayed.
    """
    message = Attempt(str(execution_id), attempt, queue, countdown)

    def send() -> None:
        _, error = publish([message])
        if error is not None:
            Execution.objects.filter(pk=execution_id, attempts=attempt - 1).update(sent_at=None, handoff=None)
            if not robust:
                raise error
            logger.error(
                "could not send attempt %s of execution %s: %s",
                attempt,
                execution_id,
                error,
                extra={"execution_id": execution_id},
            )

    transaction.on_commit(send, robust=robust)


def dispatch_attempt(execution: Execution, *, now: datetime, robust: bool = True, unlocked: bool = False) -> None:
    """Send the execution's next attempt when it falls due (saves its lease and ``sent_at``).

    A short wait rides in the broker as a countdown; a long one (past
    SCHEDULER_COUNTDOWN_MAX_SECONDS) stays in the database only: its lease expires when it is
    due and recovery sends it then. Redis would re-deliver long ETAs after its visibility
    timeout, a known source of double runs.

    ``unlocked``: the caller read ``execution`` without a lock, so a worker may have claimed it
    since; then nothing is written or sent (a running attempt's lease is never overwritten).
    """
    due = execution.due_at or now
    wait = max(0.0, (due - now).total_seconds())
    rows = Execution.objects.filter(pk=execution.pk)
    if unlocked:
        rows = rows.filter(status__in=[ExecutionStatus.QUEUED, ExecutionStatus.RETRYING], attempts=execution.attempts)
    if wait > settings.SCHEDULER_COUNTDOWN_MAX_SECONDS:
        if rows.update(lease_expires_at=due, sent_at=None, handoff=None):
            execution.lease_expires_at, execution.sent_at = due, None
        return
    if not rows.update(lease_expires_at=due + lease_grace(), sent_at=now, handoff=None):
        return
    execution.lease_expires_at, execution.sent_at = due + lease_grace(), now
    _enqueue_attempt(
        execution.pk, execution.attempts + 1, queue=_queue(execution), countdown=wait or None, robust=robust
    )


# --- Fire: a due slot becomes executions --------------------------------------------------------


def unfinished(trigger: Trigger) -> Any:
    return Execution.objects.filter(trigger=trigger, status__in=UNFINISHED_STATUSES, fallback_of=None)


def new_execution(trigger: Trigger, slot: datetime, origin: str, now: datetime) -> Execution:
    """An unsaved execution of ``trigger`` for ``slot`` with the inputs it will send."""
    workflow = trigger.workflow
    values = {
        **_execution_defaults(),
        "id": uuid.uuid4(),
        "trigger_id": trigger.pk,
        "workflow_id": workflow.pk,
        "scheduled_for": slot,
        "origin": origin,
        "inputs": {**workflow.default_inputs, **trigger.inputs},
        "status": ExecutionStatus.QUEUED,
        "created_at": now,
        "due_at": max(slot, now) if origin == ExecutionOrigin.BACKFILL else slot,
        "lease_expires_at": now + lease_grace(),
        "metadata": {},
    }
    # Built as Django unpickles a model (model_unpickle: __new__, then the instance's __dict__),
    # not through Model.__init__, which sets each field through its descriptor: in a burst that
    # was a third of the Python time spent on each new execution. Execution has no pre_init or
    # post_init receivers, and a test compares every column with Execution(**fields).
    execution = Execution.__new__(Execution)
    execution.__dict__.update(values)
    execution._state = ModelState()
    execution._state.fields_cache = {"trigger": trigger, "workflow": workflow}
    return execution


@functools.cache
def _execution_defaults() -> dict[str, Any]:
    """Every Execution column's default in field order (callable defaults: None, set per row)."""
    return {
        field.attname: None if field.has_default() and callable(field.default) else field.get_default()
        for field in Execution._meta.concrete_fields
    }


def mark_skipped(execution: Execution, reason: str, now: datetime) -> None:
    execution.status = ExecutionStatus.SKIPPED
    execution.skip_reason = reason
    execution.finished_at = now
    execution.lease_expires_at = None
    execution.due_at = None


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


@dataclass(frozen=True)
class _TriggerFacts:
    """What the database says about a trigger's executions when one of its slots fires."""

    taken: frozenset[datetime]  # slots that have an execution already (e.g. backfilled)
    busy: bool  # an execution of the trigger is unfinished
    queued_behind: bool  # one of those is still queued


_TRIGGER_FIRE_FIELDS = ["run_count", "last_run_at", "next_run_at", "completed_at"]


def _plan_fire(trigger: Trigger, slot: datetime, now: datetime, facts: _TriggerFacts) -> list[Execution]:
    """Apply catch-up, max_runs, window, overlap and jitter to a due slot of ``trigger``.

    Returns the executions to insert for it and the missed slots before it, oldest first
    (skipped ones already finished, the others queued; ``wait_reason`` says which wait behind
    another), and moves the trigger's run_count, last_run_at, next_run_at and completed_at on
    (unsaved: fields ``_TRIGGER_FIRE_FIELDS``). Nothing is read from the database: the caller
    passes ``facts``.
    """
    late = (now - slot).total_seconds() > settings.SCHEDULER_MISFIRE_GRACE_SECONDS
    cadence = trigger.cadence
    missed, more_missed = _missed_slots(trigger, slot)
    missed = [
        missed_slot
        for missed_slot in missed
        if not (trigger.active_since and missed_slot < trigger.active_since) and missed_slot not in facts.taken
    ]
    to_skip: list[datetime] = []
    to_run: list[datetime] = []
    if trigger.catchup == CatchupPolicy.SKIP:
        to_skip = [*missed, slot] if late else missed
        to_run = [] if late else [slot]
    elif trigger.catchup == CatchupPolicy.LATEST:
        to_skip, to_run = missed, [slot]
    else:
        horizon = now - timedelta(seconds=trigger.catchup_window_seconds)
        to_skip = [missed_slot for missed_slot in missed if missed_slot < horizon]
        to_run = [missed_slot for missed_slot in missed if missed_slot >= horizon] + [slot]
        cap = settings.SCHEDULER_CATCHUP_MAX_SLOTS
        if len(to_run) > cap:
            to_skip, to_run = sorted(to_skip + to_run[:-cap]), to_run[-cap:]
    if trigger.max_runs is not None:
        room = max(0, trigger.max_runs - trigger.run_count)
        # The newest slots that fit (a slice from a negative start would keep too few).
        kept = to_run[max(0, len(to_run) - room) :] if room else []
        # Catch-up slots left out for max_runs are recorded missed, like those past the catch-up cap.
        dropped = [missed_slot for missed_slot in to_run if missed_slot not in kept and missed_slot != slot]
        to_skip, to_run = sorted(to_skip + dropped), kept

    window = timing.parse_window(trigger.execution_window)
    workflow = trigger.workflow
    rows: list[Execution] = []
    runnable: list[Execution] = []
    for missed_slot in to_skip:
        execution = new_execution(trigger, missed_slot, ExecutionOrigin.CATCHUP, now)
        mark_skipped(execution, SkipReason.MISSED, now)
        rows.append(execution)
    if more_missed and rows:
        rows[0].metadata = {"older_missed_slots_not_recorded": True}
    for index, run_slot in enumerate(to_run):
        origin = ExecutionOrigin.SCHEDULE if run_slot == slot else ExecutionOrigin.CATCHUP
        execution = new_execution(trigger, run_slot, origin, now)
        if window is not None and not window.contains(run_slot, cadence.zone):
            mark_skipped(execution, SkipReason.OUTSIDE_WINDOW, now)
        elif not workflow.is_active:
            mark_skipped(execution, SkipReason.WORKFLOW_INACTIVE, now)
            execution.error = "workflow is not active"
        elif facts.busy and trigger.overlap == OverlapPolicy.SKIP:
            mark_skipped(execution, SkipReason.OVERLAP, now)
        elif (
            facts.busy
            and trigger.overlap == OverlapPolicy.BUFFER_ONE
            and (facts.queued_behind or index < len(to_run) - 1 or runnable)
        ):
            # At most one waiting: keep the newest slot, skip the rest.
            mark_skipped(execution, SkipReason.OVERLAP, now)
        else:
            if (facts.busy or runnable) and trigger.overlap != OverlapPolicy.ALLOW:
                execution.wait_reason = "previous"
            if trigger.jitter_seconds:
                execution.jitter_seconds = round(random.uniform(0, trigger.jitter_seconds), 3)
                execution.due_at = run_slot + timedelta(seconds=execution.jitter_seconds)
            runnable.append(execution)
        rows.append(execution)

    trigger.run_count += len(runnable)
    trigger.last_run_at = max(filter(None, [trigger.last_run_at, slot]))
    # The next slot not yet handled: after this one, even if it is already due (a backlog). Jumping
    # to "after now" would leave a due slot with no execution and no record if its message is lost;
    # as next_run_at it is either fired by its own message or, once overdue, by recovery.
    following = timing.next_slot_after(cadence, slot)
    if trigger.next_run_at is not None and following is not None and trigger.next_run_at > following:
        following = trigger.next_run_at
    trigger.next_run_at = following
    if trigger.next_run_at is None or (trigger.max_runs is not None and trigger.run_count >= trigger.max_runs):
        # A once trigger that fired, one past its end, or one out of runs: completed.
        trigger.next_run_at = None
        trigger.completed_at = now
    return rows


def _skip_handled_slot(trigger: Trigger, slot: datetime) -> bool:
    """A slot that has its execution already: move next_run_at past it. True if it moved."""
    if trigger.next_run_at is not None and trigger.next_run_at <= slot:
        trigger.next_run_at = timing.next_slot_after(trigger.cadence, slot)
        return True
    return False


@retry_on_deadlock
@transaction.atomic
def trigger_fire(*, trigger_id: int, scheduled_for: datetime | None, now: datetime | None = None) -> Execution | None:
    """Handle one fire of a trigger (stock DatabaseScheduler's ``fire_trigger`` message).

    ``scheduled_for`` is the slot the message names (None: the latest due slot). Applies the
    rules of ``_plan_fire`` and returns the execution to call right away (its first attempt
    started), or None: the trigger is gone, paused or completed, the slot is not one of its
    slots or is from before it was resumed or changed, the slot already has its execution, or
    the rules made it skip or wait.
    """
    now = now or timezone.now()
    trigger = Trigger.objects.select_for_update(of=("self",)).select_related("workflow").filter(pk=trigger_id).first()
    if trigger is None:
        logger.info("fire for trigger %s ignored: it no longer exists", trigger_id, extra={"trigger_id": trigger_id})
        return None
    if not trigger.enabled or trigger.completed_at is not None:
        logger.info("fire for trigger %s ignored: it is %s", trigger_id, trigger.status, extra=_ids(trigger))
        return None
    cadence = trigger.cadence
    if scheduled_for is None:
        scheduled_for = timing.latest_slot_at_or_before(cadence, now)
        if scheduled_for is None:
            return None
    elif timing.latest_slot_at_or_before(cadence, scheduled_for) != scheduled_for:
        logger.info(
            "fire for trigger %s ignored: %s is not one of its slots",
            trigger_id,
            scheduled_for.isoformat(),
            extra=_ids(trigger),
        )
        return None
    if trigger.active_since is not None and scheduled_for < trigger.active_since:
        logger.info(
            "fire for trigger %s ignored: slot %s is from before it was resumed or changed",
            trigger_id,
            scheduled_for.isoformat(),
            extra=_ids(trigger),
        )
        return None

    def has_execution(slot: datetime) -> bool:
        return Execution.objects.filter(trigger=trigger, scheduled_for=slot, fallback_of=None).exists()

    late = (now - scheduled_for).total_seconds() > settings.SCHEDULER_MISFIRE_GRACE_SECONDS
    newest = timing.latest_slot_at_or_before(cadence, now) if late else None
    if newest is not None and newest > scheduled_for and not has_execution(scheduled_for):
        # A late message while newer slots are already due (workers were down, beat kept sending):
        # handle it as the newest slot's fire, so the catch-up policy sees every missed slot at once.
        logger.info(
            "fire for trigger %s at slot %s is late; handling the newest due slot %s",
            trigger_id,
            scheduled_for.isoformat(),
            newest.isoformat(),
            extra=_ids(trigger),
        )
        scheduled_for = newest
    if has_execution(scheduled_for):
        logger.info(
            "slot %s of trigger %s already has its execution",
            scheduled_for.isoformat(),
            trigger_id,
            extra=_ids(trigger),
        )
        if _skip_handled_slot(trigger, scheduled_for):
            trigger.save(update_fields=["next_run_at"])
        return None

    missed, _ = _missed_slots(trigger, scheduled_for)
    statuses = set(unfinished(trigger).values_list("status", flat=True).distinct())
    facts = _TriggerFacts(
        taken=frozenset(
            Execution.objects.filter(trigger=trigger, scheduled_for__in=missed, fallback_of=None).values_list(
                "scheduled_for", flat=True
            )
        )
        if missed
        else frozenset(),
        busy=bool(statuses),
        queued_behind=ExecutionStatus.QUEUED in statuses,
    )
    rows = _plan_fire(trigger, scheduled_for, now, facts)
    for execution in rows:
        execution.save(force_insert=True)
    trigger.save(update_fields=_TRIGGER_FIRE_FIELDS)
    if trigger.completed_at is not None:
        beat.trigger_sync(trigger)

    started: Execution | None = None
    for execution in rows:
        if execution.status != ExecutionStatus.QUEUED:
            continue
        if started is None and _try_start(execution, now):
            execution.save()
            started = execution
        else:
            execution.save()
            dispatch_attempt(execution, now=now)
    return started


@dataclass
class DispatchReport:
    """What one ``dispatch_due`` call did."""

    triggers: int = 0  # triggers whose due slot was handled
    executions: int = 0  # executions written (skipped ones included)
    sent: int = 0  # first attempts the broker took
    unsent: int = 0  # left in the database for recovery (the broker refused them)
    error: BaseException | None = None  # why the broker refused
    batches: int = 0
    refused: list[Attempt] = field(default_factory=list)  # the attempts the broker refused


@dataclass
class _Batch:
    triggers: int = 0
    executions: int = 0
    attempts: list[Attempt] = field(default_factory=list)
    last: tuple[datetime, int] | None = None  # (next_run_at, id) of its last trigger, as claimed
    fired: dict[datetime, list[int]] = field(default_factory=dict)  # slot -> periodic task ids
    handoff: int | None = None  # the Handoff its attempts' executions name


def dispatch_due(
    *,
    now: datetime | None = None,
    overdue_seconds: float = 0,
    batch_size: int = DISPATCH_BATCH_SIZE,
    producer: Any = None,
    max_batches: int | None = None,
) -> DispatchReport:
    """Dispatch every trigger whose next slot is due (``next_run_at <= now - overdue_seconds``).

    Batch by batch: claim up to ``batch_size`` due triggers that nobody else holds, write their
    executions and advance them in one transaction, then publish the batch's first attempts on
    one connection and mark them sent. Stops when nothing is left that this process can claim,
    or at the first broker failure (the rest waits in the due index, so the catch-up policy
    applies when the broker is back). Beat calls it on every tick; recovery calls it with a
    grace, for triggers nobody dispatched (stock DatabaseScheduler, or no beat at all).

    In a burst (a first batch that was full) on PostgreSQL, batches are published on a thread
    of their own while the next one is written: see ``_Sender``.
    """
    # Cyclic garbage collection is off meanwhile (see scheduler_project.collector): a burst's
    # objects live until their batch is done, and the collector kept walking through them.
    with collector.paused():
        return _dispatch_due(
            now=now, overdue_seconds=overdue_seconds, batch_size=batch_size, producer=producer, max_batches=max_batches
        )


def _dispatch_due(
    *, now: datetime | None, overdue_seconds: float, batch_size: int, producer: Any, max_batches: int | None
) -> DispatchReport:
    fixed_now = now
    report = DispatchReport()
    sender: _Sender | None = None
    after: tuple[datetime, int] | None = None
    try:
        while max_batches is None or report.batches < max_batches:
            # Each batch on the clock as it is then (a burst takes a while), unless the caller fixed it.
            now = fixed_now or timezone.now()
            cutoff = now - timedelta(seconds=overdue_seconds)
            batch = _dispatch_batch(now=now, cutoff=cutoff, limit=batch_size, after=after)
            after = batch.last
            report.batches += 1
            report.triggers += batch.triggers
            report.executions += batch.executions
            more = batch.triggers >= batch_size and (max_batches is None or report.batches < max_batches)
            if sender is None and more and _Sender.possible():
                sender = _Sender()
            if sender is not None:
                if not sender.submit(batch, now) or not more:
                    break
                continue
            sent, error = send_ledgered(batch.attempts, now=now, producer=producer, handoff=batch.handoff)
            _tasks_mark_run(batch.fired)
            _add_sent(report, batch.attempts, sent, error)
            if error is not None or not more:
                break
    finally:
        if sender is not None:
            for attempts, sent, error in sender.close():
                _add_sent(report, attempts, sent, error)
    return report


def _add_sent(report: DispatchReport, attempts: list[Attempt], sent: int, error: BaseException | None) -> None:
    report.sent += sent
    report.unsent += len(attempts) - sent
    if error is not None or report.error is not None:
        # After a refusal, every later attempt counts as refused (they wait for recovery alike).
        report.error = report.error or error
        report.refused.extend(attempts[sent:])


class _Sender:
    """Publishes a burst's batches, and marks them sent, on a thread with its own broker and
    database connections while the caller writes the next batch.

    A burst's time is about half database waits and half Python; the publish, the mark that the
    batch was sent (its Handoff row) and the batch's PeriodicTask rows overlap the writing of the
    next batch instead of following it. One batch is sent while
    the next is written, no more; after a refusal nothing more is sent, and the batch written
    meanwhile waits in the database like the refused one (for beat's next tick or recovery).
    Only on PostgreSQL, outside a transaction: another connection sees a batch only once it is
    committed, and SQLite would have two writers.
    """

    def __init__(self) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dispatch-send")
        self._batches: list[tuple[list[Attempt], Any]] = []
        self._refused = False

    @staticmethod
    def possible() -> bool:
        return connection.vendor == "postgresql" and not connection.in_atomic_block

    def submit(self, batch: _Batch, now: datetime) -> bool:
        """Queue a batch after waiting for the ones before it: False if one of those was refused
        (this one is then not sent either)."""
        for _, earlier in self._batches:
            earlier.result()
        refused = self._refused
        self._batches.append((batch.attempts, self._pool.submit(self._send, batch, now)))
        return not refused

    def _send(self, batch: _Batch, now: datetime) -> tuple[int, BaseException | None]:
        try:
            if self._refused:
                return 0, None  # counted as refused after the batch before it
            sent, error = send_ledgered(batch.attempts, now=now, handoff=batch.handoff)
            self._refused = error is not None
            return sent, error
        finally:
            _tasks_mark_run(batch.fired)

    def close(self) -> list[tuple[list[Attempt], int, BaseException | None]]:
        """Wait for every batch and close the thread's connections; (attempts, sent, error) per batch."""
        from django.db import connections

        try:
            return [(attempts, *future.result()) for attempts, future in self._batches]
        finally:
            self._pool.submit(connections.close_all).result()
            self._pool.shutdown()


@retry_on_deadlock
@transaction.atomic
def _dispatch_batch(
    *, now: datetime, cutoff: datetime, limit: int, after: tuple[datetime, int] | None = None
) -> _Batch:
    """One batch of due triggers, in the due index's order from ``after`` (exclusive) on.

    Starting after the previous batch's last trigger, not at the index's start: the triggers a
    burst has just moved on leave their old entries there until no transaction can see them
    (workers' transactions hold them), and each batch would walk past all of them again.
    """
    due = Trigger.objects.select_for_update(skip_locked=True, of=("self",)).filter(
        enabled=True, completed_at__isnull=True, next_run_at__isnull=False, next_run_at__lte=cutoff
    )
    if after is not None:
        next_run_at, trigger_id = after
        due = due.filter(
            GreaterThan(
                Row(F("next_run_at"), F("id")),
                Row(Value(next_run_at, output_field=DateTimeField()), Value(trigger_id)),
            )
        )
    triggers = list(due.order_by("next_run_at", "id")[:limit])
    batch = _Batch(triggers=len(triggers))
    if not triggers:
        return batch
    batch.last = (triggers[-1].next_run_at, triggers[-1].pk)
    workflows = Workflow.objects.in_bulk({trigger.workflow_id for trigger in triggers})
    due: list[tuple[Trigger, datetime | None]] = []
    run_counts = {trigger.pk: trigger.run_count for trigger in triggers}
    for trigger in triggers:
        trigger.workflow = workflows[trigger.workflow_id]
        try:
            slot = timing.latest_slot_at_or_before(trigger.cadence, now)
            # _plan_fire reads the window too: one that cannot be read must not fail the batch.
            timing.parse_window(trigger.execution_window)
        except timing.ScheduleError:
            logger.exception(
                "trigger %s has a schedule that cannot be read; pausing it", trigger.pk, extra=_ids(trigger)
            )
            trigger.enabled, trigger.paused_at, trigger.pause_reason = False, now, "schedule cannot be read"
            trigger.save(update_fields=["enabled", "paused_at", "pause_reason"])
            beat.trigger_sync(trigger)
            continue
        if slot is None or slot < trigger.next_run_at or (trigger.active_since and slot < trigger.active_since):
            # next_run_at is not one of its slots (set behind the services' back): start again from now.
            logger.warning(
                "trigger %s: next_run_at %s is not a due slot; recomputed",
                trigger.pk,
                trigger.next_run_at,
                extra=_ids(trigger),
            )
            trigger.next_run_at = timing.next_slot_after(trigger.cadence, now)
            if trigger.next_run_at is None:
                trigger.completed_at = now
            due.append((trigger, None))
            continue
        due.append((trigger, slot))

    taken, statuses = _slot_facts([(trigger, slot) for trigger, slot in due if slot is not None])

    rows: list[Execution] = []
    sending: list[Execution] = []  # the rows whose first attempt this batch publishes
    fired: dict[datetime, list[int]] = {}
    for trigger, slot in due:
        if slot is None:
            continue
        trigger_taken = taken.get(trigger.pk, set())
        if slot in trigger_taken:
            # Fired already (a fire_trigger message, a backfill): just move past it.
            _skip_handled_slot(trigger, slot)
            continue
        trigger_statuses = statuses.get(trigger.pk, set())
        facts = _TriggerFacts(
            taken=frozenset(trigger_taken),
            busy=bool(trigger_statuses),
            queued_behind=ExecutionStatus.QUEUED in trigger_statuses,
        )
        for execution in _plan_fire(trigger, slot, now, facts):
            if execution.status == ExecutionStatus.QUEUED and _hand_off(execution, now, batch.attempts):
                sending.append(execution)
            rows.append(execution)
        if trigger.periodic_task_id:
            fired.setdefault(slot, []).append(trigger.periodic_task_id)

    if sending:
        # Marked sent all at once after the publish (send_ledgered): one row, not one per execution.
        batch.handoff = Handoff.objects.create(created_at=now).pk
        for execution in sending:
            execution.handoff_id = batch.handoff
    _insert_executions(rows)
    _save_fired([trigger for trigger, _ in due], run_counts)
    for trigger, _ in due:
        if trigger.completed_at is not None:
            beat.trigger_sync(trigger)
    batch.fired = fired  # recorded on the periodic tasks after the commit (_tasks_mark_run)
    batch.executions = len(rows)
    return batch


def _tasks_mark_run(fired: dict[datetime, list[int]]) -> None:
    """Record a committed batch's slots on its triggers' PeriodicTasks (``beat.tasks_mark_run``).

    After the batch's transaction, not in it: the periodic tasks' last run is what
    django-celery-beat's admin shows (and where stock DatabaseScheduler would go on from), not
    part of the ledger; its UPDATE of a batch's 1,000 rows was a tenth of the batch's time, and a
    burst makes it on the send thread while the next batch is written. A failure is logged, and
    changes nothing else (a stock scheduler that goes on from an older last run sends a fire for a
    slot that has its execution, and firing skips it)."""
    if not fired:
        return
    try:
        beat.tasks_mark_run(fired)
    except DatabaseError:
        logger.exception("could not record the slots dispatched on %d periodic tasks", sum(map(len, fired.values())))


def _slot_facts(firing: list[tuple[Trigger, datetime]]) -> tuple[dict[int, set[datetime]], dict[int, set[str]]]:
    """What ``_plan_fire`` needs to know of the executions of triggers about to fire (trigger,
    due slot): the slots from each one's ``next_run_at`` to its due slot that have an execution
    already, and the statuses of its unfinished executions, by trigger id.

    On PostgreSQL each trigger looks up its own entries in the (trigger, ...) indexes, in a
    LATERAL join over the ids (``OFFSET 0`` keeps the planner from flattening it into the plan
    below). Asked as one filter over all the ids, the planner scans the whole
    slot's (or every unfinished) executions instead: those a burst has just written are not in its
    statistics yet, so it takes them for a handful, and each batch read all the earlier ones
    (20-35 ms a batch of 1,000, a sixth of a burst's writing time).
    """
    taken: dict[int, set[datetime]] = {}
    statuses: dict[int, set[str]] = {}
    if not firing:
        return taken, statuses
    ids = [trigger.pk for trigger, _ in firing]
    if connection.vendor == "postgresql":
        table = connection.ops.quote_name(Execution._meta.db_table)
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT t.id, e.scheduled_for"  # noqa: S608 - the model's own table name
                " FROM unnest(%s::bigint[], %s::timestamptz[], %s::timestamptz[]) AS t(id, since, until)"
                f" CROSS JOIN LATERAL (SELECT scheduled_for FROM {table} e WHERE e.trigger_id = t.id"
                " AND e.scheduled_for >= t.since AND e.scheduled_for <= t.until AND e.fallback_of_id IS NULL"
                " OFFSET 0) e",
                [_array(ids), _array(trigger.next_run_at for trigger, _ in firing), _array(slot for _, slot in firing)],
            )
            existing = cursor.fetchall()
            cursor.execute(
                "SELECT DISTINCT t.id, e.status"  # noqa: S608 - the model's own table name
                " FROM unnest(%s::bigint[]) AS t(id)"
                f" CROSS JOIN LATERAL (SELECT status FROM {table} e WHERE e.trigger_id = t.id"
                " AND e.status = ANY(%s) AND e.fallback_of_id IS NULL OFFSET 0) e",
                [_array(ids), [str(status) for status in UNFINISHED_STATUSES]],
            )
            unfinished = cursor.fetchall()
    else:
        since = min(trigger.next_run_at for trigger, _ in firing)
        until = max(slot for _, slot in firing)
        existing = Execution.objects.filter(
            trigger_id__any=ids, scheduled_for__gte=since, scheduled_for__lte=until, fallback_of=None
        ).values_list("trigger_id", "scheduled_for")
        unfinished = (
            Execution.objects.filter(trigger_id__any=ids, status__in=UNFINISHED_STATUSES, fallback_of=None)
            .values_list("trigger_id", "status")
            .distinct()
        )
    for trigger_id, slot in existing:
        taken.setdefault(trigger_id, set()).add(slot)
    for trigger_id, status in unfinished:
        statuses.setdefault(trigger_id, set()).add(status)
    return taken, statuses


def _array(values: Any) -> Any:
    """A list parameter for ``%s::<type>[]``: as one literal where it can be (see ``array_literal``)."""
    values = list(values)
    literal = array_literal(values)
    return values if literal is None else literal


def _insert_executions(rows: list[Execution]) -> None:
    """Insert new executions: on PostgreSQL with COPY, elsewhere with bulk_create.

    In a burst, bulk_create spent more time preparing each field of each row in Python than the
    rest of the dispatch; COPY takes the values as they are (psycopg adapts them in C) and is the
    bulk load PostgreSQL recommends. The columns come from the model, and a test compares what
    COPY wrote with what save() writes.
    """
    if connection.vendor != "postgresql":
        Execution.objects.bulk_create(rows)
        return
    columns = _copy_columns()
    names = ", ".join(connection.ops.quote_name(column) for _, column, _ in columns)
    table = connection.ops.quote_name(Execution._meta.db_table)
    # The raw psycopg cursor's errors become Django's (DatabaseError, so beat and
    # retry_on_deadlock see them as they see every other query's).
    with (
        connection.cursor() as cursor,
        connection.wrap_database_errors,
        cursor.cursor.copy(f"COPY {table} ({names}) FROM STDIN") as copy,
    ):
        for row in rows:
            copy.write_row(
                [adapt(getattr(row, attname)) if adapt else getattr(row, attname) for attname, _, adapt in columns]
            )
    for row in rows:
        row._state.adding = False
        row._state.db = connection.alias


@functools.cache
def _copy_columns() -> list[tuple[str, str, Callable[[Any], Any] | None]]:
    """(attribute, column, adapter) for each of Execution's columns: JSON goes as jsonb, the rest as is."""
    from django.db.models import JSONField
    from psycopg.types.json import Jsonb

    return [
        (field.attname, field.column, Jsonb if isinstance(field, JSONField) else None)
        for field in Execution._meta.concrete_fields
    ]


def _save_fired(triggers: list[Trigger], run_counts: dict[int, int]) -> None:
    """Write the fired triggers' counters and next slots: one UPDATE per distinct change (a burst
    of triggers due at the same slot with the same schedule is one statement; Django's
    bulk_update builds a CASE per row and field, which costs seconds at a few thousand rows)."""
    groups: dict[tuple[Any, ...], list[int]] = {}
    for trigger in triggers:
        change = (trigger.run_count - run_counts[trigger.pk], trigger.last_run_at, trigger.next_run_at)
        groups.setdefault((*change, trigger.completed_at), []).append(trigger.pk)
    for (runs, last_run_at, next_run_at, completed_at), ids in groups.items():
        Trigger.objects.filter(pk__any=ids).update(
            run_count=F("run_count") + runs,
            last_run_at=last_run_at,
            next_run_at=next_run_at,
            completed_at=completed_at,
        )


def _hand_off(execution: Execution, now: datetime, attempts: list[Attempt]) -> bool:
    """Set a new queued execution's lease for beat's publish, and add its first attempt if it can
    start (one waiting behind another is woken when that finishes; a far wait is held here).
    Returns whether it added one."""
    due = max(execution.due_at or now, now)
    wait = (due - now).total_seconds()
    if execution.wait_reason and _serial(execution):
        # Woken by the execution it waits for; the lease is only the backstop.
        execution.lease_expires_at = now + lease_grace()
        return False
    if wait > settings.SCHEDULER_COUNTDOWN_MAX_SECONDS:
        execution.lease_expires_at = due  # recovery sends it when due
        return False
    execution.lease_expires_at = due + _handoff()
    queue = str(execution.trigger.priority)
    attempts.append(Attempt(str(execution.pk), 1, queue, round(wait, 3) if wait > 0 else None))
    return True


def next_due_query() -> QuerySet[Trigger]:
    """The soonest trigger's next_run_at: one row from the due index (the partial index trigger_due_next)."""
    return (
        Trigger.objects.filter(enabled=True, completed_at__isnull=True, next_run_at__isnull=False)
        .order_by("next_run_at")
        .values_list("next_run_at", flat=True)[:1]
    )


def next_due_at() -> datetime | None:
    """When the soonest trigger falls due, or None."""
    return next(iter(next_due_query()), None)


# --- Claim: a worker starts an attempt ----------------------------------------------------------


def _expected(execution: Execution, attempt: int) -> bool:
    """The attempt its message is for: the first of a queued execution, the next of a retrying one."""
    return (execution.status == ExecutionStatus.QUEUED and attempt == 1 and execution.attempts == 0) or (
        execution.status == ExecutionStatus.RETRYING and attempt == execution.attempts + 1
    )


def _serial(execution: Execution) -> bool:
    """Whether the execution waits for the trigger's older unfinished ones (its overlap order)."""
    if execution.origin == ExecutionOrigin.BACKFILL:
        # A backfill runs by the overlap chosen for it (trigger_backfill), whatever the trigger's own.
        return execution.metadata.get("overlap", "serial") != "allow"
    return execution.origin not in PERSONAL_ORIGINS and execution.trigger.overlap != OverlapPolicy.ALLOW


def _ahead(execution: Execution) -> Any:
    """The trigger's older unfinished executions this one waits for (a queued manual run does not
    hold the line: it waits only for capacity)."""
    return (
        Execution.objects.filter(
            trigger_id=execution.trigger_id,
            status__in=UNFINISHED_STATUSES,
            fallback_of=None,
            scheduled_for__lt=execution.scheduled_for,
        )
        .exclude(pk=execution.pk)
        .exclude(status=ExecutionStatus.QUEUED, origin__in=[ExecutionOrigin.MANUAL, ExecutionOrigin.RETRY])
    )


# --- One execution's conditional UPDATE, compiled once ------------------------------------------


def _update_execution(
    pk: Any, *, where: dict[str, Any], values: dict[str, Any], nothing_ahead_of: Execution | None = None
) -> int:
    """``UPDATE`` the execution ``pk`` with ``values`` if its columns in ``where`` still hold those
    values (none of them NULL) and, with ``nothing_ahead_of``, nothing is ahead of it
    (``_ahead``); the rows changed, 0 or 1.

    What ``Execution.objects.filter(pk=pk, **where).update(**values)`` does (plus
    ``.filter(~Exists(_ahead(...)))``), for the worker's two statements per attempt (the claim
    and the outcome): the ORM compiles the statement on every call, 0.4 ms of CPU against
    0.13 ms for running it. Here its text is built once per shape from the model's columns and
    the values are prepared by their fields, as the ORM prepares them. Tests hold it to the ORM's
    rows.
    """
    fields = Execution._meta
    sql = _update_sql(connection.vendor, tuple(values), tuple(where), nothing_ahead_of is not None)
    params = [fields.get_field(name).get_db_prep_save(value, connection) for name, value in values.items()]
    params.append(fields.pk.get_db_prep_value(pk, connection))
    params.extend(fields.get_field(name).get_db_prep_value(value, connection) for name, value in where.items())
    if nothing_ahead_of is not None:
        execution = nothing_ahead_of
        params.extend(
            [
                fields.get_field("trigger").get_db_prep_value(execution.trigger_id, connection),
                *map(str, UNFINISHED_STATUSES),
                fields.get_field("scheduled_for").get_db_prep_value(execution.scheduled_for, connection),
                fields.pk.get_db_prep_value(execution.pk, connection),
                str(ExecutionStatus.QUEUED),
                str(ExecutionOrigin.MANUAL),
                str(ExecutionOrigin.RETRY),
            ]
        )
    with transaction.mark_for_rollback_on_error(), connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.rowcount


@functools.cache
def _update_sql(vendor: str, values: tuple[str, ...], where: tuple[str, ...], ahead: bool) -> str:
    """The statement of ``_update_execution`` for one shape (``vendor`` only keys the cache)."""
    quote = connection.ops.quote_name
    fields = Execution._meta

    def column(name: str, alias: str = "") -> str:
        return f"{alias}{quote(fields.get_field(name).column)}"

    conditions = [f"{quote(fields.pk.column)} = %s", *(f"{column(name)} = %s" for name in where)]
    if ahead:
        # _ahead, as SQL: the trigger's older unfinished executions, but a queued manual run or retry.
        conditions.append(
            f"NOT EXISTS (SELECT 1 FROM {quote(fields.db_table)} ahead"  # noqa: S608 - the model's own names
            f" WHERE {column('trigger', 'ahead.')} = %s"
            f" AND {column('status', 'ahead.')} IN ({', '.join(['%s'] * len(UNFINISHED_STATUSES))})"
            f" AND {column('fallback_of', 'ahead.')} IS NULL AND {column('scheduled_for', 'ahead.')} < %s"
            f" AND {column('id', 'ahead.')} <> %s"
            f" AND NOT ({column('status', 'ahead.')} = %s AND {column('origin', 'ahead.')} IN (%s, %s)))"
        )
    assignments = ", ".join(f"{column(name)} = %s" for name in values)
    return f"UPDATE {quote(fields.db_table)} SET {assignments} WHERE {' AND '.join(conditions)}"  # noqa: S608


def _try_start(execution: Execution, now: datetime) -> bool:
    """Start the next attempt if it is due, first in line and within concurrency limits.

    Otherwise record why it waits; it is sent again when the thing it waits for finishes (or,
    as a backstop, when its lease runs out). Call with the execution locked.
    """
    if execution.due_at is not None and execution.due_at > now:
        execution.wait_reason = execution.wait_reason or ("jitter" if execution.jitter_seconds else "retry")
        return False
    trigger = execution.trigger
    if _serial(execution) and _ahead(execution).exists():
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
        owner_model = type(trigger.owner)
        owner_model.objects.select_for_update().filter(pk=trigger.owner_id).first()
        running = Execution.objects.filter(trigger__owner_id=trigger.owner_id, status=ExecutionStatus.RUNNING).count()
        if running >= owner_limit:
            execution.wait_reason = "owner_concurrency"
            return False
    _start(execution, now)
    return True


def _start(execution: Execution, now: datetime) -> None:
    execution.status = ExecutionStatus.RUNNING
    execution.attempts += 1
    execution.started_at = execution.started_at or now
    execution.next_attempt_at = None
    execution.wait_reason = ""
    execution.lease_expires_at = _lease(execution.workflow, now)


_START_FIELDS = ["status", "attempts", "started_at", "next_attempt_at", "wait_reason", "lease_expires_at"]


def execution_claim(*, execution_id: Any, attempt: int, now: datetime | None = None) -> Execution | None:
    """Start attempt ``attempt`` of an execution, or None if it must not run now.

    Allowed: the first attempt of a queued execution, the next attempt of a retrying one, or
    any unfinished execution whose lease has expired (its holder died; the crash counts as an
    attempt), and then only if it is due, first in line and within concurrency limits. A
    message delivered twice finds the attempt started and calls nothing.

    The common case (the attempt its message is for, due, nothing ahead, no concurrency limit)
    is one read and one conditional UPDATE, no transaction held; the rest takes the row lock.
    """
    now = now or timezone.now()
    try:
        execution = _read_with_related(execution_id)
    except ValidationError:
        return None
    if execution is None:
        return None
    return _claim_read(execution, attempt, now)


def _read_with_related(execution_id: Any) -> Execution | None:
    """``Execution.objects.select_related("workflow", "trigger").get(pk=...)`` (None if there is
    none; ValidationError for an id that is not one), its statement built once.

    The ORM compiles that query, every column of three models, on every call: more CPU than the
    rest of a lone attempt's database work. The rows are converted by their fields' converters and
    the instances made by ``Model.from_db``, as the ORM makes them; a test compares every field.
    """
    fields = Execution._meta
    key = fields.pk.get_db_prep_value(execution_id, connection)
    sql, converters = _read_with_related_statement(connection.vendor)
    with connection.cursor() as cursor:
        cursor.execute(sql, [key])
        row = cursor.fetchone()
    if row is None:
        return None
    values = list(row)
    for index, (field_converters, expression) in converters.items():
        for convert in field_converters:
            values[index] = convert(values[index], expression, connection)
    db = connection.alias
    workflow_start = len(fields.concrete_fields)
    trigger_start = workflow_start + len(Workflow._meta.concrete_fields)
    execution = Execution.from_db(db, [f.attname for f in fields.concrete_fields], values[:workflow_start])
    workflow = Workflow.from_db(
        db, [f.attname for f in Workflow._meta.concrete_fields], values[workflow_start:trigger_start]
    )
    trigger = Trigger.from_db(db, [f.attname for f in Trigger._meta.concrete_fields], values[trigger_start:])
    fields.get_field("workflow").set_cached_value(execution, workflow)
    fields.get_field("trigger").set_cached_value(execution, trigger)
    return execution


@functools.cache
def _read_with_related_statement(vendor: str) -> tuple[str, dict[int, tuple[list[Callable[..., Any]], Any]]]:
    """The statement of ``_read_with_related`` and each column's converters by position, as the
    ORM's compiler finds them (``vendor`` only keys the cache)."""
    quote = connection.ops.quote_name
    tables = [(Execution, "e"), (Workflow, "w"), (Trigger, "t")]
    columns, converters = [], {}
    for model, alias in tables:
        for model_field in model._meta.concrete_fields:
            expression = model_field.get_col(alias)
            found = connection.ops.get_db_converters(expression) + expression.get_db_converters(connection)
            if found:
                converters[len(columns)] = (found, expression)
            columns.append(f"{alias}.{quote(model_field.column)}")

    def table(model: type[Any]) -> str:
        return quote(model._meta.db_table)

    def column(model: type[Any], name: str) -> str:
        return quote(model._meta.get_field(name).column)

    sql = (
        f"SELECT {', '.join(columns)} FROM {table(Execution)} e"  # noqa: S608 - the models' own names
        f" INNER JOIN {table(Workflow)} w ON e.{column(Execution, 'workflow')} = w.{column(Workflow, 'id')}"
        f" INNER JOIN {table(Trigger)} t ON e.{column(Execution, 'trigger')} = t.{column(Trigger, 'id')}"
        f" WHERE e.{quote(Execution._meta.pk.column)} = %s"
    )
    return sql, converters


def _claim_read(execution: Execution, attempt: int, now: datetime) -> Execution | None:
    """execution_claim for an execution read with its workflow and trigger (without a lock: the
    conditional UPDATE, or the locked path, decides on the row as it is now)."""
    if execution.status in FINISHED_STATUSES:
        return None
    if _startable_without_lock(execution, attempt, now):
        read = {"status": execution.status, "attempts": execution.attempts}
        ahead_of = execution if _serial(execution) else None
        _start(execution, now)
        values = {name: getattr(execution, name) for name in _START_FIELDS}
        if _update_execution(execution.pk, where=read, values=values, nothing_ahead_of=ahead_of):
            return execution
        # Someone else moved it since the read: decide under the lock.
    return _claim_locked(execution_id=execution.pk, attempt=attempt, now=now)


def _startable_without_lock(execution: Execution, attempt: int, now: datetime) -> bool:
    workflow = execution.workflow
    return (
        _expected(execution, attempt)
        and execution.attempts < execution.trigger.max_attempts
        and workflow.is_active
        and not workflow.max_concurrency
        and not settings.SCHEDULER_OWNER_MAX_CONCURRENCY
        and (execution.due_at is None or execution.due_at <= now)
    )


@retry_on_deadlock
@transaction.atomic
def _claim_locked(*, execution_id: Any, attempt: int, now: datetime) -> Execution | None:
    execution = (
        Execution.objects.select_for_update(of=("self",))
        .select_related("workflow", "trigger", "trigger__owner")
        .filter(pk=execution_id)
        .first()
    )
    if execution is None or execution.status in FINISHED_STATUSES:
        return None
    if execution.wait_reason == RUN_WAIT:
        # Its call succeeded; it waits for the engine's run, and is never called again for it.
        return None
    expired = execution.lease_expires_at is None or execution.lease_expires_at <= now
    if not (_expected(execution, attempt) or expired) or execution.status == ExecutionStatus.RUNNING and not expired:
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
        execution.lease_expires_at = max(execution.due_at or now, now) + lease_grace()
        execution.sent_at = execution.handoff_id = None
        execution.save(update_fields=["wait_reason", "lease_expires_at", "sent_at", "handoff"])
        return None
    execution.save(update_fields=_START_FIELDS)
    return execution


# --- Perform and record -------------------------------------------------------------------------


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


def execution_perform(*, execution: Execution, woken: list[Execution] | None = None) -> AttemptOutcome:
    """Call the workflow for a claimed execution and record the outcome.

    ``woken``: a succeeded execution is added to it, for the caller to wake what waits for it
    (``waiting_wake``), instead of looking for waiters now."""
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
            # The trigger's queue: the built-in engine runs the run's steps on it too.
            "priority": str(trigger.priority),
            "inputs": execution.inputs,
        },
    )
    started = timezone.now()
    outcome = _perform(execution, call, attempt, started, woken)
    metrics.observe_attempt(origin=execution.origin, status=outcome.status)
    return outcome


def _perform(
    execution: Execution, call: WorkflowCall, attempt: int, started: datetime, woken: list[Execution] | None
) -> AttemptOutcome:
    workflow = execution.workflow
    try:
        result = call_workflow(call)
    except WorkflowCallError as exc:
        return _record_failure(execution.pk, attempt, started, exc)
    except Exception as exc:  # noqa: BLE001 - an unexpected failure is recorded and retried, never lost
        logger.exception(
            "unexpected error calling workflow %s for execution %s", workflow.pk, execution.pk, extra=_ids(execution)
        )
        error = WorkflowCallError(f"internal error: {type(exc).__name__}")
        error.retryable = True
        return _record_failure(execution.pk, attempt, started, error)
    return _record_success(execution, attempt, started, result, woken)


def _log_attempt(metadata: dict[str, Any], entry: dict[str, Any]) -> None:
    log = metadata.setdefault("attempts", [])
    log.append(entry)
    del log[:-_ATTEMPT_LOG_LIMIT]


def _record_success(
    execution: Execution, attempt: int, started: datetime, result: Any, woken: list[Execution] | None = None
) -> AttemptOutcome:
    """The outcome first, in one UPDATE of the execution's own row (no other lock, so nothing can
    make it a deadlock victim after the far side has done the work); then what follows from it."""
    now = timezone.now()
    metadata = dict(execution.metadata)
    metadata["response_excerpt"] = result.body_excerpt
    _log_attempt(
        metadata,
        {
            "attempt": attempt,
            "started_at": started.isoformat(),
            "finished_at": now.isoformat(),
            "http_status": result.http_status,
            "duration_ms": result.duration_ms,
        },
    )
    outcome = {
        "status": ExecutionStatus.SUCCEEDED,
        "finished_at": now,
        "http_status": result.http_status,
        "run_id": result.run_id,
        "duration_ms": result.duration_ms,
        "error": "",
        "metadata": metadata,
        "lease_expires_at": None,
        "next_attempt_at": None,
        "due_at": None,
        "wait_reason": "",
    }
    engine_run = _engine_run(execution, result.run_id)
    if engine_run:
        # The built-in engine took the run: the execution ends with the run's outcome, not the 202.
        # Until then it stays running (overlap and concurrency count it) with no lease, so recovery
        # never calls it again; executions_follow_runs ends it (workflows' finish hook, and the
        # recovery task as the backstop).
        outcome.update(status=ExecutionStatus.RUNNING, finished_at=None, wait_reason=RUN_WAIT)
    if not _update_execution(
        execution.pk, where={"status": ExecutionStatus.RUNNING, "attempts": attempt}, values=outcome
    ):
        # Someone took over after our lease ran out; their outcome stands.
        logger.warning(
            "attempt %s of execution %s finished after it was taken over", attempt, execution.pk, extra=_ids(execution)
        )
        current = Execution.objects.filter(pk=execution.pk).values_list("status", flat=True).first()
        return AttemptOutcome(status=current or ExecutionStatus.SUCCEEDED)
    for name, value in outcome.items():
        setattr(execution, name, value)
    if engine_run:
        # The run may have finished before this was written (a short one): then end it now.
        executions_follow_runs(run_ids=[result.run_id])
        current = Execution.objects.filter(pk=execution.pk).values_list("status", flat=True).first()
        return AttemptOutcome(status=current or ExecutionStatus.RUNNING, details={"run_id": result.run_id})
    if execution.trigger.consecutive_failures and execution.origin != ExecutionOrigin.FALLBACK:
        _count_success(execution, now)
    if woken is None:
        _wake_waiting(execution, now)
    else:
        woken.append(execution)
    return AttemptOutcome(status=ExecutionStatus.SUCCEEDED)


# --- Follow: an execution of a built-in engine workflow ends with its run ------------------------

# wait_reason of an execution whose call succeeded and whose engine run is not finished.
RUN_WAIT = "run"


def _engine_run(execution: Execution, run_id: str) -> bool:
    """Whether the call started a run on the built-in engine (this service's endpoint, a workflow
    with a definition), as the run itself says: a definition removed since the claim read the
    workflow leaves a run that is only recorded, and the 202 is the outcome."""
    workflow = execution.workflow
    # (The workflow as the claim read it: a plain built-in workflow costs no query here.)
    if workflow.endpoint_url or not workflow.definition or not run_id:
        return False
    try:
        uuid.UUID(run_id)
    except ValueError:
        return False
    return WorkflowRun.objects.filter(pk=run_id, workflow_id=workflow.pk).exclude(status=RunStatus.RECORDED).exists()


def executions_follow_runs(*, run_ids: list[str] | None = None, limit: int = 500) -> int:
    """End the executions waiting for engine runs that have finished: succeeded with the run, or
    failed with its error (then the trigger's failure count, notifications, fallback, auto-pause,
    as for a failed call). ``run_ids``: only those runs' executions. Returns how many ended."""
    waiting = Execution.objects.filter(status=ExecutionStatus.RUNNING, wait_reason=RUN_WAIT)
    if run_ids is not None:
        waiting = waiting.filter(run_id__in=run_ids)
    pairs = list(waiting.order_by("started_at").values_list("pk", "run_id")[:limit])
    if not pairs:
        return 0
    finished = {
        str(pk): (status, error)
        for pk, status, error in WorkflowRun.objects.filter(
            pk__in=[run_id for _, run_id in pairs], status__in=RUN_FINISHED_STATUSES
        ).values_list("pk", "status", "error")
    }
    ended = 0
    for execution_id, run_id in pairs:
        if run_id in finished:
            status, error = finished[run_id]
            ended += _end_with_run(execution_id, run_id, status, error)
    return ended


@retry_on_deadlock
@transaction.atomic
def _end_with_run(execution_id: Any, run_id: str, run_status: str, run_error: str) -> int:
    now = timezone.now()
    execution = (
        Execution.objects.select_for_update(of=("self",)).select_related("trigger", "workflow").get(pk=execution_id)
    )
    if execution.status != ExecutionStatus.RUNNING or execution.wait_reason != RUN_WAIT:
        return 0  # ended already (the hook and the recovery task both look)
    execution.metadata["run_status"] = run_status
    if run_status == RunStatus.SUCCEEDED:
        _finish(execution, now, ExecutionStatus.SUCCEEDED)
        if execution.trigger.consecutive_failures and execution.origin != ExecutionOrigin.FALLBACK:
            _count_success(execution, now)
    else:
        _finish(execution, now, ExecutionStatus.FAILED, error=f"run {run_status}: {run_error}"[:2000])
    return 1


@retry_on_deadlock
@transaction.atomic
def _count_success(execution: Execution, now: datetime) -> None:
    trigger = Trigger.objects.select_for_update(of=("self",)).get(pk=execution.trigger_id)
    if trigger.consecutive_failures and not _later_slot_ended(execution, ExecutionStatus.FAILED):
        failures = trigger.consecutive_failures
        trigger.consecutive_failures = 0
        trigger.save(update_fields=["consecutive_failures"])
        _notify(trigger, "recovered", execution, detail={"after_failures": failures})


@retry_on_deadlock
@transaction.atomic
def _record_failure(execution_id: Any, attempt: int, started: datetime, error: WorkflowCallError) -> AttemptOutcome:
    """A failed attempt: schedule the retry, or fail the execution (then the trigger's failure
    count, notifications, fallback and auto-pause). Locks the execution, then its trigger."""
    now = timezone.now()
    execution = (
        Execution.objects.select_for_update(of=("self",)).select_related("trigger", "workflow").get(pk=execution_id)
    )
    if execution.status in FINISHED_STATUSES or execution.attempts != attempt:
        # Someone took over after our lease ran out; their outcome stands.
        logger.warning(
            "attempt %s of execution %s finished after it was taken over", attempt, execution_id, extra=_ids(execution)
        )
        return AttemptOutcome(status=execution.status)
    entry: dict[str, Any] = {"attempt": attempt, "started_at": started.isoformat(), "finished_at": now.isoformat()}
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
        _log_attempt(execution.metadata, entry)
        execution.status = ExecutionStatus.RETRYING
        execution.next_attempt_at = execution.due_at = now + timedelta(seconds=delay)
        execution.save()
        dispatch_attempt(execution, now=now)
        return AttemptOutcome(status=ExecutionStatus.RETRYING, retry_in_seconds=delay, next_attempt=attempt + 1)
    if error.retryable and out_of_time:
        entry["error"] = execution.error = f"{execution.error} (retries stopped: max_retry_duration_seconds={limit})"
    _log_attempt(execution.metadata, entry)
    _finish(execution, now, ExecutionStatus.FAILED)
    return AttemptOutcome(status=ExecutionStatus.FAILED)


def _finish(execution: Execution, now: datetime, status: str, *, error: str = "") -> None:
    """End an execution that was unfinished (call inside a transaction, execution locked)."""
    execution.status = status
    execution.finished_at = now
    execution.lease_expires_at = None
    execution.next_attempt_at = None
    execution.due_at = None
    execution.wait_reason = ""
    if error:
        execution.error = error
    execution.save()
    # Locks in one order, executions before their trigger: the waiter, then the failure count.
    _wake_waiting(execution, now)
    # A reopened execution (its run was retried) counted its failure when it first failed: failing
    # again is the same slot's failure, not another one in a row (no second notice or fallback).
    reopened = bool(execution.metadata.get("reopened"))
    if execution.origin != ExecutionOrigin.FALLBACK and status == ExecutionStatus.FAILED and not reopened:
        _count_failure(execution, now)


def _later_slot_ended(execution: Execution, status: str) -> bool:
    """Whether a later slot of the execution's trigger has already ended with ``status``.

    Failures "in a row" go by slot, not by when the calls ended: a slot whose retries succeed an
    hour late does not clear the failures of the slots after it (no "recovered" notice while the
    newest slot is failing), and a late failure after a later slot's success starts no count
    toward pause_after_failures. Fallback runs share their failed slot and count for nothing.
    """
    return (
        Execution.objects.filter(
            trigger_id=execution.trigger_id, status=status, scheduled_for__gt=execution.scheduled_for
        )
        .exclude(origin=ExecutionOrigin.FALLBACK)
        .exists()
    )


def _count_failure(execution: Execution, now: datetime) -> None:
    trigger = Trigger.objects.select_for_update(of=("self",)).get(pk=execution.trigger_id)
    in_a_row = not _later_slot_ended(execution, ExecutionStatus.SUCCEEDED)
    if in_a_row:
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
            lease_expires_at=now + lease_grace(),
        )
        dispatch_attempt(fallback, now=now)
    limit = trigger.pause_after_failures
    if in_a_row and limit and trigger.enabled and trigger.consecutive_failures >= limit:
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
    """Send the executions that may have been waiting for this one (same trigger, workflow, owner).

    After every outcome, and nearly always nobody waits: the look is for ids only (the rows are
    read when there is one). Without concurrency limits only the trigger's own executions can
    wait, and that look is one statement built once (``_waits_on_trigger``).
    """
    if (
        not execution.workflow.max_concurrency
        and not settings.SCHEDULER_OWNER_MAX_CONCURRENCY
        and not _waits_on_trigger(execution.trigger_id)
    ):
        return
    candidates = Execution.objects.filter(status__in=[ExecutionStatus.QUEUED, ExecutionStatus.RETRYING]).exclude(
        wait_reason=""
    )
    picks = [candidates.filter(trigger_id=execution.trigger_id).order_by("scheduled_for")]
    if execution.workflow.max_concurrency:
        picks.append(
            candidates.filter(workflow_id=execution.workflow_id, wait_reason="concurrency").order_by("created_at")
        )
    if settings.SCHEDULER_OWNER_MAX_CONCURRENCY:
        picks.append(
            candidates.filter(trigger__owner_id=execution.trigger.owner_id, wait_reason="owner_concurrency").order_by(
                "created_at"
            )
        )
    ids = {pk for pick in picks for pk in pick.values_list("pk", flat=True)[:1]}
    if not ids:
        return
    horizon = now + timedelta(seconds=settings.SCHEDULER_COUNTDOWN_MAX_SECONDS)
    for waiting in Execution.objects.select_related("trigger").filter(pk__in=ids):
        if waiting.due_at is None or waiting.due_at <= horizon:
            dispatch_attempt(waiting, now=now, unlocked=True)


def _waits_on_trigger(trigger_id: int) -> bool:
    """Whether an execution of the trigger waits for something (queued or retrying, with a
    wait_reason): ``_wake_waiting``'s first look, as a statement built once rather than compiled by
    the ORM after every outcome (a test holds it to the ORM's answer)."""
    with connection.cursor() as cursor:
        cursor.execute(
            _waits_sql(connection.vendor),
            [trigger_id, str(ExecutionStatus.QUEUED), str(ExecutionStatus.RETRYING), ""],
        )
        return cursor.fetchone() is not None


@functools.cache
def _waits_sql(vendor: str) -> str:
    """The statement of ``_waits_on_trigger`` (``vendor`` only keys the cache)."""
    quote = connection.ops.quote_name
    fields = Execution._meta

    def column(name: str) -> str:
        return quote(fields.get_field(name).column)

    return (
        f"SELECT 1 FROM {quote(fields.db_table)} WHERE {column('trigger')} = %s"  # noqa: S608 - the model's own names
        f" AND {column('status')} IN (%s, %s) AND {column('wait_reason')} <> %s LIMIT 1"
    )


def waiting_wake(executions: list[Execution], now: datetime) -> None:
    """``_wake_waiting`` for several finished executions: one look for anyone waiting on their
    triggers, workflows or owners (nearly always nobody), then each one's own look if somebody does."""
    if not executions:
        return
    waits = Q(trigger_id__any=sorted({execution.trigger_id for execution in executions}))
    limited = sorted({execution.workflow_id for execution in executions if execution.workflow.max_concurrency})
    if limited:
        waits |= Q(workflow_id__any=limited, wait_reason="concurrency")
    if settings.SCHEDULER_OWNER_MAX_CONCURRENCY:
        owners = sorted({execution.trigger.owner_id for execution in executions})
        waits |= Q(trigger__owner_id__any=owners, wait_reason="owner_concurrency")
    anyone = (
        Execution.objects.filter(waits, status__in=[ExecutionStatus.QUEUED, ExecutionStatus.RETRYING])
        .exclude(wait_reason="")
        .values_list("pk", flat=True)[:1]
    )
    if not list(anyone):
        return
    for execution in executions:
        _wake_waiting(execution, now)


# --- A message of several attempts --------------------------------------------------------------


@dataclass
class MessageReport:
    statuses: dict[str, int] = field(default_factory=dict)  # outcome -> attempts run
    skipped: int = 0  # nothing to do (run already, not due, waiting, gone)
    handed_back: int = 0  # sent back one per message (past its time, its queue empty)


def executions_run(
    attempts: list[tuple[str, int]], *, seconds: float | None = None, queue_depth: QueueDepth | None = None
) -> MessageReport:
    """Run the attempts of a ``run_executions`` message one after another, each claimed just
    before its call as ``run_execution`` claims one (a second delivery calls nothing).

    The executions are read once (with their workflows and triggers) and the waiters of those
    that succeeded are looked for once, at the end. Every ``seconds`` (SCHEDULER_MESSAGE_SECONDS)
    the message looks at its queue: if nothing waits there, other workers may be idle, and the
    attempts not started are sent back one per message so that slow calls spread over them; if
    messages wait, every worker is busy and sending them back would only add messages, so it goes
    on, on a fresh read of the rest. If the hand-back is refused they stay in the database, sent,
    and recovery sends them when their lease runs out.
    """
    seconds = settings.SCHEDULER_MESSAGE_SECONDS if seconds is None else seconds
    queue_depth = queue_depth or broker_queue_depth
    report = MessageReport()
    rows = _read_for_claims([execution_id for execution_id, _ in attempts])
    look_at = time.monotonic() + seconds
    succeeded: list[Execution] = []
    try:
        for index, (execution_id, number) in enumerate(attempts):
            if index and time.monotonic() >= look_at:
                rest = attempts[index:]
                queue = next((_queue(rows[pk]) for pk, _ in rest if pk in rows), None)
                if queue is not None and queue_depth(queue) != 0:
                    rows.update(_read_for_claims([pk for pk, _ in rest]))
                    look_at = time.monotonic() + seconds
                else:
                    _hand_back(rest, rows, report)
                    break
            execution = rows.get(execution_id)
            claimed = _claim_read(execution, number, timezone.now()) if execution is not None else None
            if claimed is None:
                report.skipped += 1
                continue
            outcome = execution_perform(execution=claimed, woken=succeeded)
            report.statuses[outcome.status] = report.statuses.get(outcome.status, 0) + 1
    finally:
        waiting_wake(succeeded, timezone.now())
    return report


def _read_for_claims(ids: list[str]) -> dict[str, Execution]:
    """The executions (with workflow and trigger) by the id as given; ids that are not UUIDs are none."""
    valid: dict[uuid.UUID, str] = {}
    for given in ids:
        try:
            valid[uuid.UUID(given)] = given
        except (TypeError, ValueError):
            continue
    return {
        valid[execution.pk]: execution
        for execution in Execution.objects.select_related("workflow", "trigger").filter(pk__any=list(valid))
    }


def _hand_back(attempts: list[tuple[str, int]], rows: dict[str, Execution], report: MessageReport) -> None:
    back = [
        Attempt(execution_id, number, _queue(rows[execution_id]))
        for execution_id, number in attempts
        if execution_id in rows
    ]
    sent, error = publish(back, grouped=False)
    report.handed_back = sent
    if error is not None:
        logger.error(
            "could not send back %s attempts (%s: %s); recovery sends them when their lease runs out",
            len(back),
            type(error).__name__,
            error,
        )


# --- Recover ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RecoveryReport:
    executions: int  # sent again
    slots: int  # due slots nobody had dispatched, dispatched now
    deferred: int = 0  # sent, probably waiting in the broker's backlog: not re-sent yet


QueueDepth = Callable[[str], int | None]


def broker_queue_depth(queue: str) -> int | None:
    """Messages waiting in ``queue`` (None if the broker cannot say)."""
    from scheduler_project.celery import app

    try:
        with app.connection_for_read() as conn:
            return conn.default_channel.queue_declare(queue=queue, passive=True).message_count
    except Exception as exc:  # noqa: BLE001 - an unknown depth means "assume lost", never a crash
        if str(getattr(exc, "reply_code", "")) == "404":
            # NOT_FOUND: no such queue. On Redis that is an empty one (an empty list is no key).
            return 0
        logger.warning("cannot read the depth of queue %s: %s", queue, exc)
        return None


def leases_recover(
    *,
    now: datetime | None = None,
    limit: int = 500,
    queue_depth: QueueDepth | None = None,
    producer: Any = None,
) -> RecoveryReport:
    """Send again the unfinished executions whose lease ran out.

    - running: its worker died mid-attempt; the crash counts as an attempt, the next is due now;
    - never sent (``sent_at`` empty): a wait held in the database that fell due, a publish the
      broker refused, a beat killed between its commit and its publish; sent now;
    - sent: lost by the broker, or still waiting in a backlog. While the execution's queue
      holds messages (and for at most the broker's visibility timeout) it is left alone with a
      fresh lease, so a slow system is not handed a second copy of its backlog.
    """
    now = now or timezone.now()
    handoffs_settle(now)
    attempts, deferred = _recover_batch(now=now, limit=limit, queue_depth=queue_depth or broker_queue_depth)
    send_ledgered(attempts, now=now, producer=producer)
    return RecoveryReport(executions=len(attempts), slots=0, deferred=deferred)


def _recover_batch(*, now: datetime, limit: int, queue_depth: QueueDepth) -> tuple[list[Attempt], int]:
    # The queues' depths are read before any row is locked: asking the broker can take seconds
    # when it is unwell, and workers recording those executions would wait for the locks.
    patience = timedelta(seconds=settings.CELERY_VISIBILITY_TIMEOUT_SECONDS)
    stale = (
        Execution.objects.filter(status__in=UNFINISHED_STATUSES, lease_expires_at__lte=now)
        .order_by("lease_expires_at")
        .values_list("sent_at", "trigger__priority")[:limit]
    )
    seen = list(stale)
    if not seen:
        return [], 0
    queues = {str(queue) for sent_at, queue in seen if sent_at is not None and now - sent_at < patience}
    return _recover_locked(now=now, limit=limit, depths={queue: queue_depth(queue) for queue in sorted(queues)})


@retry_on_deadlock
@transaction.atomic
def _recover_locked(*, now: datetime, limit: int, depths: dict[str, int | None]) -> tuple[list[Attempt], int]:
    stale = list(
        Execution.objects.select_for_update(skip_locked=True, of=("self",))
        .select_related("trigger")
        .filter(status__in=UNFINISHED_STATUSES, lease_expires_at__lte=now)
        .order_by("lease_expires_at")[:limit]
    )
    patience = timedelta(seconds=settings.CELERY_VISIBILITY_TIMEOUT_SECONDS)
    attempts: list[Attempt] = []
    deferred: list[Any] = []
    for execution in stale:
        queue = _queue(execution)
        if execution.status == ExecutionStatus.RUNNING:
            logger.warning(
                "execution %s lost its worker during attempt %s",
                execution.pk,
                execution.attempts,
                extra=_ids(execution),
            )
            # The attempt in progress died with its worker: it counts, and the next one is due now.
            execution.status = ExecutionStatus.RETRYING
            execution.error = f"worker lost during attempt {execution.attempts}"
            _log_attempt(
                execution.metadata,
                {"attempt": execution.attempts, "error": execution.error, "recovered_at": now.isoformat()},
            )
            execution.next_attempt_at = execution.due_at = now
        elif execution.sent_at is not None and now - execution.sent_at < patience and depths.get(queue):
            # (A queue not read, for a row that became stale after the look above: assume lost.)
            deferred.append(execution.pk)
            continue
        execution.lease_expires_at = now + _handoff()
        execution.sent_at = execution.handoff_id = None
        execution.save(
            update_fields=[
                "status",
                "error",
                "metadata",
                "next_attempt_at",
                "due_at",
                "lease_expires_at",
                "sent_at",
                "handoff",
            ]
        )
        attempts.append(Attempt(str(execution.pk), execution.attempts + 1, queue))
    if deferred:
        logger.info("%s sent executions not re-sent: their queue still has a backlog", len(deferred))
        Execution.objects.filter(pk__in=deferred).update(lease_expires_at=now + lease_grace())
    return attempts, len(deferred)


def executions_recover(
    *, now: datetime | None = None, limit: int = 500, queue_depth: QueueDepth | None = None
) -> RecoveryReport:
    """The periodic recovery task: expired leases (``leases_recover``), and due slots nobody
    dispatched within SCHEDULER_MISSED_SLOT_GRACE_SECONDS (no TriggerScheduler running, e.g. stock
    DatabaseScheduler whose message was lost), dispatched here the way beat would. Neither sends
    fire messages, so a system that is behind gets no extra work from it."""
    now = now or timezone.now()
    leases = leases_recover(now=now, limit=limit, queue_depth=queue_depth)
    handoffs_prune(now)
    # Executions whose engine run finished and whose hook was lost (a worker killed after the commit).
    executions_follow_runs(limit=limit)
    slots = dispatch_due(now=now, overdue_seconds=settings.SCHEDULER_MISSED_SLOT_GRACE_SECONDS, max_batches=1)
    if slots.triggers:
        logger.warning("dispatched %s triggers whose slot nobody had dispatched", slots.triggers)
    return RecoveryReport(executions=leases.executions, slots=slots.triggers, deferred=leases.deferred)
