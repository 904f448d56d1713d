"""The runner: moves a WorkflowRun through its definition one step per task, saving after every step.

Like the scheduler's dispatch path (schedules/dispatch.py), each step is claim, perform, record:
- **claim**: under the run's row lock, and with a conditional UPDATE on the step number and
  attempt (so two workers, or a message delivered twice, never run the same step), the worker
  takes the current step and a lease: the step's own deadline plus SCHEDULER_LEASE_GRACE_SECONDS.
- **perform**: the action runs outside any transaction (an http call holds no lock).
- **record**: under the lock again, only if the run is still on that step and attempt: the
  step's history row, its output in the context, and the next step; then the next task is sent
  once that commits.
- **recover** (``runs_recover``, periodic): a run whose lease ran out (its worker died, or its
  message was lost) is sent again, and the step is taken again: completed steps never run twice,
  the interrupted one runs again (an http step with the same Idempotency-Key). Waits (and retry
  backoffs) are a time in ``wake_at``; recovery sends the run when it falls due, no worker sleeps.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from ..exceptions import RunStateError, WorkflowError
from ..models import (
    RUN_ACTIVE_STATUSES,
    RUN_FINISHED_STATUSES,
    RunPriority,
    RunStatus,
    StepStatus,
    Workflow,
    WorkflowRun,
    WorkflowStep,
)
from . import definitions, variables
from .actions import DEFAULT_RETRIES, REGISTRY, Outcome, StepCall, failed, sub_run_outcome

logger = logging.getLogger("workflows.engine")

# A step whose worker died this many times more than its own attempts allow fails the run.
CRASH_ALLOWANCE = 2
OUTPUT_EXCERPT_CHARS = 2000
INPUT_MAX_CHARS = 10_000
HIDDEN = "(hidden)"
RECOVER_LIMIT = 500
# How often recovery looks at a dag node waiting for a sub-workflow run (its end normally sends it).
CHILD_POLL = timedelta(seconds=60)


# Called with a run's id after a transaction that finished it commits. The schedules app listens
# (schedules.apps) to end the Execution that started the run; workflows never imports schedules.
_finish_listeners: list[Callable[[str], Any]] = []


def listen_run_finished(listener: Callable[[str], Any]) -> None:
    """Call ``listener(run_id)`` whenever a run finishes (after the commit; an error is logged, not raised)."""
    if listener not in _finish_listeners:
        _finish_listeners.append(listener)


def _announce_finished(run_id: Any) -> None:
    def announce() -> None:
        for listener in list(_finish_listeners):
            try:
                listener(str(run_id))
            except Exception:  # noqa: BLE001 - a listener's failure must not fail the run's worker
                logger.exception("run %s: a run-finished listener failed", run_id, extra={"run_id": str(run_id)})

    transaction.on_commit(announce)


# Called with a run's id inside the transaction that retries a failed run (run_retry): the schedules
# app listens to reopen the Execution that ended with the run, in the same transaction, so history
# never shows the run going again under a failed Execution. An error here fails the retry.
_reopen_listeners: list[Callable[[str], Any]] = []


def listen_run_reopened(listener: Callable[[str], Any]) -> None:
    """Call ``listener(run_id)`` whenever a finished run is retried (inside the retry's transaction)."""
    if listener not in _reopen_listeners:
        _reopen_listeners.append(listener)


def _grace() -> timedelta:
    return timedelta(seconds=settings.SCHEDULER_LEASE_GRACE_SECONDS)


def _handoff() -> timedelta:
    return timedelta(seconds=settings.SCHEDULER_HANDOFF_SECONDS)


# What the engine changes as a run moves: saved alone, so a step does not rewrite the definition,
# inputs and payload (large, fixed once the run has begun) every time (bench/engine_steps.py).
_STATE_FIELDS = [
    "status",
    "context",
    "current_step",
    "step_seq",
    "attempt",
    "transitions",
    "step_started_at",
    "lease_expires_at",
    "wake_at",
    "started_at",
    "finished_at",
    "error",
    "updated_at",
]


def _save(run: WorkflowRun) -> None:
    run.save(update_fields=_STATE_FIELDS)


def _ids(run: WorkflowRun) -> dict[str, Any]:
    return {"run_id": str(run.pk), "workflow_id": run.workflow_id}


# --- Sending ---------------------------------------------------------------------------------------


def _send(run_id: Any, *, countdown: float | None = None, queue: str = "normal") -> None:
    """Send the run's next task once the transaction commits. A broker outage loses nothing: the
    run's lease runs out and the recovery task sends it."""
    from ..tasks import advance_run

    def send() -> None:
        try:
            advance_run.apply_async(kwargs={"run_id": str(run_id)}, countdown=countdown, queue=queue)
        except Exception as exc:  # noqa: BLE001 - any broker failure is left to recovery
            logger.error("could not send run %s: %s; recovery will", run_id, exc, extra={"run_id": str(run_id)})

    transaction.on_commit(send)


def _ready(run: WorkflowRun, now: datetime) -> None:
    """The current step is ready for a worker; its message must be taken within the hand-off."""
    run.step_started_at = None
    run.lease_expires_at = max(run.wake_at or now, now) + _handoff()


# --- Start -----------------------------------------------------------------------------------------


def run_start(*, run: WorkflowRun, now: datetime | None = None) -> WorkflowRun:
    """Start the engine on a new run of a workflow with a definition (call inside the transaction
    that created the run: the first task is sent when it commits)."""
    now = now or timezone.now()
    if _begin(run, now):
        _send(run.pk, queue=run.priority)
    run.save()
    return run


def _begin(run: WorkflowRun, now: datetime) -> bool:
    """Put the run on its first step (a dag: its roots, whose tasks it sends) with the workflow's
    definition as it is now (unsaved). True if the first step's task is still to be sent."""
    definition = run.workflow.definition
    payload = run.payload if isinstance(run.payload, dict) else {}
    run.definition = definition
    run.status = RunStatus.RUNNING
    execution = {
        name: payload[name] for name in ("execution_id", "scheduled_for", "trigger_id", "manual") if name in payload
    }
    if "scheduled_for" not in execution and isinstance(payload.get("start_at"), str):
        # Started without a trigger (workflow_start): its slot is the time it was asked to start at, so
        # a definition written for a trigger (examples/stream-start.json) can be started by hand too.
        execution["scheduled_for"] = payload["start_at"]
    run.context = {"steps": {}, "execution": execution}
    run.started_at = now
    run.wake_at = None
    problems = definitions.definition_problems(definition)
    if problems:
        # Checked when saved, but rules can tighten across releases (an action renamed), and a start
        # for later meets the definition as it is then: the run fails with the reason, never a 500
        # at the endpoint or a task that crashes.
        _finish(run, RunStatus.FAILED, now, error="the definition cannot run: " + "; ".join(problems))
        return False
    run.current_step = definitions.first_step(definition)
    run.step_seq, run.attempt, run.transitions = 1, 0, 0
    if definition["type"] == "dag":
        run.step_seq = 0
        _dag_start(run, now)
        return False
    _ready(run, now)
    return True


def run_schedule(
    *,
    workflow: Workflow,
    start_at: datetime,
    inputs: dict[str, Any],
    priority: str = RunPriority.NORMAL,
    idempotency_key: str = "",
    now: datetime | None = None,
) -> tuple[WorkflowRun, bool]:
    """A run of ``workflow`` that starts at ``start_at`` (now or later), without a trigger: queued,
    held in the database until then (recover_runs starts it; a near start also rides a countdown).
    The same ``idempotency_key`` again returns the first run (False: not created)."""
    now = now or timezone.now()
    key = idempotency_key or f"start:{uuid.uuid4()}"
    existing = WorkflowRun.objects.filter(workflow=workflow, idempotency_key=key).first()
    if existing is not None:
        return existing, False
    merged = {**workflow.default_inputs, **inputs}
    try:
        with transaction.atomic():
            run = WorkflowRun.objects.create(
                workflow=workflow,
                idempotency_key=key,
                inputs=merged,
                payload={"inputs": merged, "start_at": start_at.isoformat(), "priority": priority},
                status=RunStatus.QUEUED,
                priority=priority,
                wake_at=start_at,
                lease_expires_at=None,
            )
            _send_when_near(run, now)
    except IntegrityError:
        return WorkflowRun.objects.get(workflow=workflow, idempotency_key=key), False
    return run, True


def _send_when_near(run: WorkflowRun, now: datetime) -> None:
    """Send a countdown for a wake-up soon enough for the broker; later ones are recover_runs'."""
    wait = ((run.wake_at or now) - now).total_seconds()
    if wait <= settings.SCHEDULER_COUNTDOWN_MAX_SECONDS:
        _send(run.pk, queue=run.priority, countdown=max(wait, 0) or None)


@transaction.atomic
def run_move(*, run_id: Any, start_at: datetime, now: datetime | None = None) -> WorkflowRun:
    """Move a queued run's start (RunStateError once it has begun)."""
    now = now or timezone.now()
    run = _locked(run_id)
    if run.status != RunStatus.QUEUED:
        raise RunStateError(f"only a queued run can be moved; this one is {run.get_status_display()}.")
    run.wake_at = start_at
    run.lease_expires_at = None
    run.payload = {**run.payload, "start_at": start_at.isoformat()}
    run.save(update_fields=["wake_at", "lease_expires_at", "payload", "updated_at"])
    _send_when_near(run, now)
    return run


# --- Claim -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Claim:
    run: WorkflowRun
    step: dict[str, Any]
    step_row_id: int
    seq: int
    attempt: int
    now: datetime


def _attempts_allowed(step: dict[str, Any]) -> int:
    action = REGISTRY.get(step.get("action", ""))
    if action is not None and "retries" in action.schema.get("properties", {}):
        return int(step.get("params", {}).get("retries", DEFAULT_RETRIES)) + 1
    return 1


def _lost(run: WorkflowRun, now: datetime) -> bool:
    """The worker holding the step died (its lease ran out): that attempt is over and the step is
    ready again, or, past the allowance, the run fails. False if it failed. (Unsaved; run locked.)"""
    lost = f"worker lost during attempt {run.attempt}"
    logger.warning("run %s step %s: %s", run.pk, run.current_step, lost, extra=_ids(run))
    WorkflowStep.objects.filter(run=run, seq=run.step_seq, attempt=run.attempt, status=StepStatus.RUNNING).update(
        status=StepStatus.FAILED, finished_at=now, error=lost
    )
    step = definitions.find_step(run.definition, run.current_step)
    if run.attempt >= _attempts_allowed(step) + CRASH_ALLOWANCE:
        _finish(run, RunStatus.FAILED, now, error=f"step {run.current_step}: {lost}, giving up")
        return False
    _ready(run, now)
    return True


@transaction.atomic
def _claim(run_id: Any, now: datetime) -> Claim | None:
    run = WorkflowRun.objects.select_for_update(of=("self",)).select_related("workflow").filter(pk=run_id).first()
    if run is None or run.status not in (RunStatus.QUEUED, RunStatus.RUNNING, RunStatus.WAITING):
        return None
    if run.status == RunStatus.QUEUED:
        if run.wake_at is not None and run.wake_at > now:
            return None  # moved later, or an early message: recover_runs sends it when due
        _begin(run, now)
        run.save()
        if run.status != RunStatus.RUNNING:
            return None
    if run.definition.get("type") == "dag":
        return _dag_claim(run, now)
    if run.wake_at is not None and run.wake_at > now:
        return None  # a wait or a retry backoff: sent again when due
    if run.status == RunStatus.WAITING:
        # The wait is over (or the sub-workflow it waits for has finished): the step ends and the
        # run moves on, in this transaction.
        step = definitions.find_step(run.definition, run.current_step)
        child_id = (run.context or {}).get("waiting_on")
        if child_id:
            child = WorkflowRun.objects.filter(pk=child_id).first()
            if child is not None and child.status not in RUN_FINISHED_STATUSES:
                return None  # still running: its end sends this run again
            ended = sub_run_outcome(child) if child is not None else failed(f"sub-workflow run {child_id} is gone")
            run.context.pop("waiting_on")
        else:
            waited = {"waited_until": run.wake_at.isoformat() if run.wake_at else now.isoformat()}
            ended = Outcome("succeeded", output=waited)
        WorkflowStep.objects.filter(run=run, seq=run.step_seq, status=StepStatus.WAITING).update(
            status=StepStatus.SUCCEEDED if ended.status == "succeeded" else StepStatus.FAILED,
            finished_at=now,
            output_excerpt=_excerpt(ended.output),
            error=ended.error,
        )
        run.status = RunStatus.RUNNING
        run.wake_at = None
        _move_on(run, step, ended, now)
        _save(run)
        if run.status != RunStatus.RUNNING:
            return None
    elif run.step_started_at is not None:
        if run.lease_expires_at is not None and run.lease_expires_at > now:
            return None  # a live worker holds the step
        if not _lost(run, now):
            _save(run)
            return None
    step = definitions.find_step(run.definition, run.current_step)
    action = REGISTRY[step["action"]]
    seconds = action.seconds(step.get("params", {}), run.workflow)
    claimed = WorkflowRun.objects.filter(
        pk=run.pk, status=RunStatus.RUNNING, step_seq=run.step_seq, attempt=run.attempt
    ).update(
        attempt=run.attempt + 1,
        step_started_at=now,
        lease_expires_at=now + timedelta(seconds=seconds) + _grace(),
        updated_at=now,
    )
    if not claimed:
        return None  # someone else took it since the read (a database without row locks)
    run.attempt += 1
    row = WorkflowStep.objects.create(
        run=run, seq=run.step_seq, step_id=step["id"], action=step["action"], attempt=run.attempt, started_at=now
    )
    return Claim(run=run, step=step, step_row_id=row.pk, seq=run.step_seq, attempt=run.attempt, now=now)


# --- Perform ---------------------------------------------------------------------------------------


def _values(run: WorkflowRun, now: datetime) -> dict[str, Any]:
    context = run.context or {}
    return variables.scope(
        inputs=run.inputs if isinstance(run.inputs, dict) else {},
        config=run.definition.get("config", {}),
        steps=context.get("steps", {}),
        execution=context.get("execution", {}),
        now=now,
    )


def _perform(claim: Claim) -> tuple[Any, Outcome]:
    """Run the claimed step's action; return the params it got and what it did (never raises)."""
    run, step = claim.run, claim.step
    action = REGISTRY[step["action"]]
    raw = step.get("params", {})
    values = _values(run, timezone.now())
    params: Any = raw
    try:
        if action.resolve_params:
            params = variables.resolve(raw, values)
        call = StepCall(
            run_id=str(run.pk),
            step_id=step["id"],
            seq=claim.seq,
            attempt=claim.attempt,
            workflow=run.workflow,
            params=params,
            values=values,
            now=timezone.now(),
            depth=int(run.payload.get("depth", 0)) if isinstance(run.payload, dict) else 0,
            progress=dict((run.context or {}).get(PROGRESS, {}).get(str(claim.seq), {})),
            record_progress=lambda name, value: _record_progress(claim, name, value),
        )
        return params, action.run(call)
    except WorkflowError as exc:
        return params, failed(str(exc)[:2000])
    except ValidationError as exc:
        return params, failed(" ".join(exc.messages)[:2000])
    except Exception as exc:  # noqa: BLE001 - a broken step fails its run, never the worker
        logger.exception("run %s step %s: unexpected error", run.pk, step["id"], extra=_ids(run))
        return params, failed(f"internal error: {type(exc).__name__}")


# --- Record ----------------------------------------------------------------------------------------

# context[PROGRESS][<step number>]: what attempts of a step in progress have done so far (a notify
# step's channels), kept until the step ends so an attempt after a worker died does not redo it.
PROGRESS = "progress"


def _holds(run: WorkflowRun, claim: Claim) -> bool:
    """Whether the claim's attempt still holds its step (run locked): not cancelled, not taken over."""
    if run.status not in (RunStatus.RUNNING, RunStatus.PAUSED):
        return False
    if run.definition.get("type") == "dag":
        return _dag_holds(run, claim)
    return run.step_seq == claim.seq and run.attempt == claim.attempt and run.step_started_at is not None


@transaction.atomic
def _record_progress(claim: Claim, name: str, value: Any) -> bool:
    """Save that the claimed step has done ``name`` (committed at once, under the run's lock); False
    if the attempt no longer holds the step."""
    run = WorkflowRun.objects.select_for_update(of=("self",)).filter(pk=claim.run.pk).first()
    if run is None or not _holds(run, claim):
        return False
    context = dict(run.context or {})
    progress = dict(context.get(PROGRESS, {}))
    progress[str(claim.seq)] = {**progress.get(str(claim.seq), {}), name: value}
    context[PROGRESS] = progress
    run.context = context
    run.save(update_fields=["context", "updated_at"])
    return True


def _forget_progress(context: dict[str, Any], seq: int | None) -> None:
    """The step has ended: its progress is no longer needed (changes ``context``)."""
    progress = context.get(PROGRESS)
    if progress is None:
        return
    progress = {key: value for key, value in progress.items() if key != str(seq)}
    if progress:
        context[PROGRESS] = progress
    else:
        context.pop(PROGRESS)


def _excerpt(value: Any) -> str:
    if value is None:
        return ""
    return json.dumps(value, default=str)[:OUTPUT_EXCERPT_CHARS]


def _storable(value: Any) -> Any:
    """The params as the history keeps them: JSON, cut down if large, header values hidden (an
    Authorization header written in a definition is not copied into every run's history). The
    workflow's secret is never in them: steps see only what the definition wrote, and secrets are
    not variables."""
    if isinstance(value, dict) and isinstance(value.get("headers"), dict):
        value = {**value, "headers": dict.fromkeys(value["headers"], HIDDEN)}
    text = json.dumps(value, default=str)
    if len(text) > INPUT_MAX_CHARS:
        return {"excerpt": text[:INPUT_MAX_CHARS]}
    return json.loads(text)


@transaction.atomic
def _record(claim: Claim, params: Any, outcome: Outcome) -> str:
    now = timezone.now()
    run = WorkflowRun.objects.select_for_update(of=("self",)).filter(pk=claim.run.pk).first()
    step_status = {"succeeded": StepStatus.SUCCEEDED, "waiting": StepStatus.WAITING}.get(
        outcome.status, StepStatus.FAILED
    )
    row = {
        "finished_at": None if step_status == StepStatus.WAITING else now,
        "status": step_status,
        "input": _storable(params),
        "output_excerpt": _excerpt(outcome.output),
        "error": outcome.error,
    }
    dag = claim.run.definition.get("type") == "dag"
    # A pause takes effect between steps: the step in flight is recorded, the next is not sent.
    current = run is not None and _holds(run, claim)
    if not current:
        # Cancelled, or taken over after our lease ran out: what the run holds now stands.
        why = (
            "the run was cancelled" if run is not None and run.status == RunStatus.CANCELLED else "the run had moved on"
        )
        row["error"] = (outcome.error + " " if outcome.error else "") + f"(not used: {why})"
        row["finished_at"] = now
        if step_status == StepStatus.WAITING:
            row["status"] = StepStatus.FAILED
        WorkflowStep.objects.filter(pk=claim.step_row_id).update(**row)
        return "discarded"
    assert run is not None
    WorkflowStep.objects.filter(pk=claim.step_row_id).update(**row)
    step = claim.step
    if dag:
        return _dag_record(run, step, outcome, now)
    paused = run.status == RunStatus.PAUSED
    if outcome.status == "failed" and outcome.retry_in_seconds is not None:
        run.wake_at = now + timedelta(seconds=outcome.retry_in_seconds)
        _ready(run, now)
        _save(run)
        if not paused:
            _send(run.pk, queue=run.priority, countdown=outcome.retry_in_seconds)
        return "retrying"
    if outcome.status == "waiting" and outcome.child_run_id:
        run.status = RunStatus.PAUSED if paused else RunStatus.WAITING
        run.context = {**(run.context or {}), "waiting_on": outcome.child_run_id}
        run.wake_at = run.step_started_at = run.lease_expires_at = None
        _save(run)
        if not paused:
            # The sub-run may have finished already (its end found this run not waiting yet): look now.
            _send(run.pk, queue=run.priority)
        return "waiting"
    if outcome.status == "waiting":
        run.status = RunStatus.PAUSED if paused else RunStatus.WAITING
        run.wake_at = outcome.wait_until or now
        run.step_started_at = None
        run.lease_expires_at = None
        _save(run)
        wait = (run.wake_at - now).total_seconds()
        if not paused and wait <= settings.SCHEDULER_COUNTDOWN_MAX_SECONDS:
            # Sooner than the recovery task would; a long wait is left to it (Redis re-delivers long ETAs).
            _send(run.pk, queue=run.priority, countdown=max(wait, 0) or None)
        return "waiting"
    _move_on(run, step, outcome, now)
    _save(run)
    if run.status == RunStatus.RUNNING:
        _send(run.pk, queue=run.priority)
    return str(run.status)


def _move_on(run: WorkflowRun, step: dict[str, Any], outcome: Outcome, now: datetime) -> None:
    """Put the step's result in the context and go to the next step, or end the run (unsaved)."""
    context = dict(run.context or {})
    steps = dict(context.get("steps", {}))
    steps[step["id"]] = {"output": outcome.output, "status": outcome.status, "error": outcome.error}
    context["steps"] = steps
    _forget_progress(context, run.step_seq)
    run.context = context
    definition = run.definition
    if definition["type"] == "sequence":
        if outcome.status == "failed" and definition.get("error_policy", "stop") == "stop":
            _finish(run, RunStatus.FAILED, now, error=f"step {step['id']}: {outcome.error}")
            return
        ids = [item["id"] for item in definition["steps"]]
        position = ids.index(step["id"])
        if position + 1 == len(ids):
            _finish(run, RunStatus.SUCCEEDED, now)
            return
        _enter(run, ids[position + 1], now)
        return
    transitions = step.get("transitions") or {}
    if outcome.status == "succeeded":
        event = outcome.event if outcome.event in transitions else "success"
    else:
        event = "timeout" if outcome.timed_out and "timeout" in transitions else "error"
    target = transitions.get(event)
    if target is None:
        why = f": {outcome.error}" if outcome.error else ""
        _finish(run, RunStatus.FAILED, now, error=f"state {step['id']}: no transition on {event!r}{why}")
        return
    run.transitions += 1
    limit = definition.get("max_transitions", definitions.DEFAULT_MAX_TRANSITIONS)
    if run.transitions > limit:
        _finish(run, RunStatus.FAILED, now, error=f"more than {limit} transitions (max_transitions): a loop?")
        return
    _enter(run, target, now)
    state = definitions.find_step(definition, target)
    if "terminal" in state:
        # The terminal state is part of the run's path: one row, with the run's outcome (a
        # failed terminal state reads failed in the history too), then the run ends there.
        status = RunStatus.SUCCEEDED if state["terminal"] == "succeeded" else RunStatus.FAILED
        error = "" if status == RunStatus.SUCCEEDED else f"ended in state {target}"
        if status == RunStatus.FAILED and outcome.error:
            error += f" after {step['id']}: {outcome.error}"
        WorkflowStep.objects.create(
            run=run,
            seq=run.step_seq,
            step_id=target,
            action="",
            attempt=1,
            status=StepStatus.SUCCEEDED if status == RunStatus.SUCCEEDED else StepStatus.FAILED,
            started_at=now,
            finished_at=now,
            error=error,
        )
        _finish(run, status, now, error=error)


def _enter(run: WorkflowRun, step_id: str, now: datetime) -> None:
    run.current_step = step_id
    run.step_seq += 1
    run.attempt = 0
    run.wake_at = None
    _ready(run, now)


def _finish(run: WorkflowRun, status: str, now: datetime, *, error: str = "") -> None:
    run.status = status
    run.finished_at = now
    run.error = error[:2000]
    run.wake_at = None
    run.step_started_at = None
    run.lease_expires_at = None
    logger.info("run %s %s%s", run.pk, status, f": {error}" if error else "", extra=_ids(run))
    _announce_finished(run.pk)


# --- DAG: nodes side by side -----------------------------------------------------------------------
#
# A dag run has no single current step: each node's state is in context["nodes"] (pending, ready,
# running, waiting, succeeded, failed, skipped; its step number, attempt, lease and wake time), and
# every change to it is made under the run's row lock. One task claims one ready node, so nodes
# that are ready together run at once on as many workers. A node becomes ready exactly once, when
# the last node it depends on succeeds (the join); a failed node skips the nodes that depend on it,
# directly or not, and nothing else. The run's lease_expires_at is the soonest time a node needs a
# look (a running node's lease, a ready node's hand-off, a wait's end): the recovery task's index.


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _when(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


def _dag_start(run: WorkflowRun, now: datetime) -> None:
    nodes = run.definition["nodes"]
    run.context["nodes"] = {
        node["id"]: {"status": "pending", "seq": None, "attempt": 0, "lease": None, "wake_at": None} for node in nodes
    }
    for node in nodes:
        if not node.get("depends_on"):
            _dag_ready(run, node["id"], now)
    _dag_lease(run)


def _dag_ready(run: WorkflowRun, node_id: str, now: datetime, *, wake_at: datetime | None = None) -> None:
    """The node may run (at ``wake_at``, for a retry): a task is sent for it."""
    node = run.context["nodes"][node_id]
    if node["seq"] is None:
        # Its own step number, for its history and its Idempotency-Key: the same on every attempt.
        run.step_seq += 1
        node["seq"] = run.step_seq
    due = max(wake_at or now, now)
    node.update(status="ready", wake_at=_iso(wake_at), lease=_iso(due + _handoff()))
    if run.status == RunStatus.RUNNING:  # (a paused run sends its ready nodes when resumed)
        _send(run.pk, queue=run.priority, countdown=(due - now).total_seconds() or None)


def _dag_lease(run: WorkflowRun) -> None:
    times = []
    for node in run.context["nodes"].values():
        if node["status"] in ("ready", "running"):
            times.append(_when(node["lease"]))
        elif node["status"] == "waiting":
            times.append(_when(node["lease"] or node["wake_at"]))
    run.lease_expires_at = min((time for time in times if time is not None), default=None)


def _dag_holds(run: WorkflowRun, claim: Claim) -> bool:
    node = (run.context or {}).get("nodes", {}).get(claim.step["id"])
    return bool(node) and node["status"] == "running" and (node["seq"], node["attempt"]) == (claim.seq, claim.attempt)


def _dag_claim(run: WorkflowRun, now: datetime) -> Claim | None:
    """Finish the waits fallen due, then take one ready node (in the order written). Run locked."""
    nodes = run.context["nodes"]
    for step in run.definition["nodes"]:
        node = nodes[step["id"]]
        if node["status"] != "waiting" or run.status != RunStatus.RUNNING:
            continue
        if node.get("child"):
            child = WorkflowRun.objects.filter(pk=node["child"]).first()
            if child is not None and child.status not in RUN_FINISHED_STATUSES:
                continue  # the sub-run goes on; its end sends this run again
            ended = sub_run_outcome(child) if child is not None else failed(f"sub-workflow run {node['child']} is gone")
            node.pop("child")
        elif _when(node["wake_at"]) <= now:
            ended = Outcome("succeeded", output={"waited_until": node["wake_at"]})
        else:
            continue
        WorkflowStep.objects.filter(run=run, seq=node["seq"], status=StepStatus.WAITING).update(
            status=StepStatus.SUCCEEDED if ended.status == "succeeded" else StepStatus.FAILED,
            finished_at=now,
            output_excerpt=_excerpt(ended.output),
            error=ended.error,
        )
        _dag_outcome(run, step, ended, now)
    pick = next(
        (
            step
            for step in run.definition["nodes"]
            if nodes[step["id"]]["status"] == "ready"
            and (nodes[step["id"]]["wake_at"] is None or _when(nodes[step["id"]]["wake_at"]) <= now)
        ),
        None,
    )
    if pick is None or run.status != RunStatus.RUNNING:
        if run.status == RunStatus.RUNNING:
            _dag_lease(run)
        _save(run)
        return None
    node = nodes[pick["id"]]
    seconds = REGISTRY[pick["action"]].seconds(pick.get("params", {}), run.workflow)
    node["attempt"] += 1
    node.update(status="running", wake_at=None, lease=_iso(now + timedelta(seconds=seconds) + _grace()))
    _dag_lease(run)
    _save(run)
    row = WorkflowStep.objects.create(
        run=run, seq=node["seq"], step_id=pick["id"], action=pick["action"], attempt=node["attempt"], started_at=now
    )
    return Claim(run=run, step=pick, step_row_id=row.pk, seq=node["seq"], attempt=node["attempt"], now=now)


def _dag_record(run: WorkflowRun, step: dict[str, Any], outcome: Outcome, now: datetime) -> str:
    node = run.context["nodes"][step["id"]]
    if outcome.status == "failed" and outcome.retry_in_seconds is not None:
        _dag_ready(run, step["id"], now, wake_at=now + timedelta(seconds=outcome.retry_in_seconds))
        result = "retrying"
    elif outcome.status == "waiting" and outcome.child_run_id:
        # Its end sends this run (the runner's finish hook); the lease makes recovery look now and then
        # in case that message is lost. Look once now too: the sub-run may have ended already.
        node.update(status="waiting", wake_at=None, child=outcome.child_run_id, lease=_iso(now + CHILD_POLL))
        if run.status == RunStatus.RUNNING:
            _send(run.pk, queue=run.priority)
        result = "waiting"
    elif outcome.status == "waiting":
        wake_at = outcome.wait_until or now
        node.update(status="waiting", wake_at=_iso(wake_at), lease=None)
        wait = (wake_at - now).total_seconds()
        if run.status == RunStatus.RUNNING and wait <= settings.SCHEDULER_COUNTDOWN_MAX_SECONDS:
            _send(run.pk, queue=run.priority, countdown=max(wait, 0) or None)
        result = "waiting"
    else:
        _dag_outcome(run, step, outcome, now)
        result = str(run.status)
    if run.status in (RunStatus.RUNNING, RunStatus.PAUSED):
        _dag_lease(run)
    _save(run)
    return result


def _dag_outcome(run: WorkflowRun, step: dict[str, Any], outcome: Outcome, now: datetime) -> None:
    """A node succeeded or failed: ready the nodes now free to run, or skip those that needed it."""
    nodes = run.context["nodes"]
    run.context.setdefault("steps", {})[step["id"]] = {
        "output": outcome.output,
        "status": outcome.status,
        "error": outcome.error,
    }
    node = nodes[step["id"]]
    node.update(lease=None, wake_at=None)
    _forget_progress(run.context, node["seq"])
    if outcome.status == "succeeded":
        node["status"] = "succeeded"
        for child in run.definition["nodes"]:
            parents = child.get("depends_on", [])
            if (
                step["id"] in parents
                and nodes[child["id"]]["status"] == "pending"
                and all(nodes[parent]["status"] == "succeeded" for parent in parents)
            ):
                _dag_ready(run, child["id"], now)
    else:
        node["status"] = "failed"
        below = definitions.ancestors(run.definition["nodes"])
        for other in run.definition["nodes"]:
            if step["id"] in below[other["id"]] and nodes[other["id"]]["status"] == "pending":
                nodes[other["id"]]["status"] = "skipped"
    if all(state["status"] in ("succeeded", "failed", "skipped") for state in nodes.values()):
        failed_nodes = [item["id"] for item in run.definition["nodes"] if nodes[item["id"]]["status"] == "failed"]
        if not failed_nodes:
            _finish(run, RunStatus.SUCCEEDED, now)
            return
        errors = "; ".join(f"{name}: {run.context['steps'][name]['error']}" for name in failed_nodes)
        skipped = [item["id"] for item in run.definition["nodes"] if nodes[item["id"]]["status"] == "skipped"]
        _finish(
            run,
            RunStatus.FAILED,
            now,
            error=f"node {errors}" + (f" (skipped: {', '.join(skipped)})" if skipped else ""),
        )


def _dag_recover(run: WorkflowRun, now: datetime) -> int:
    """Look at the nodes whose time is up (run locked): a running node's worker died, a ready node's
    message was lost, a wait fell due. Sends a task for each; returns how many."""
    nodes = run.context["nodes"]
    sent = 0
    for step in run.definition["nodes"]:
        node = nodes[step["id"]]
        status = node["status"]
        if run.status != RunStatus.RUNNING:
            break
        if status == "running" and _when(node["lease"]) <= now:
            lost = f"worker lost during attempt {node['attempt']}"
            logger.warning("run %s node %s: %s", run.pk, step["id"], lost, extra=_ids(run))
            WorkflowStep.objects.filter(
                run=run, seq=node["seq"], attempt=node["attempt"], status=StepStatus.RUNNING
            ).update(status=StepStatus.FAILED, finished_at=now, error=lost)
            if node["attempt"] >= _attempts_allowed(step) + CRASH_ALLOWANCE:
                _dag_outcome(run, step, failed(f"{lost}, giving up"), now)
            else:
                _dag_ready(run, step["id"], now)
                sent += 1
        elif (status == "ready" and _when(node["lease"]) <= now) or (
            status == "waiting" and _when(node["lease"] or node["wake_at"]) <= now
        ):
            node["lease"] = _iso(now + (CHILD_POLL if node.get("child") else _handoff()))
            _send(run.pk, queue=run.priority)
            sent += 1
    if run.status == RunStatus.RUNNING:
        _dag_lease(run)
    _save(run)
    return sent


# --- Pause, resume, cancel, retry -----------------------------------------------------------------


def _locked(run_id: Any) -> WorkflowRun:
    return WorkflowRun.objects.select_for_update(of=("self",)).select_related("workflow").get(pk=run_id)


@transaction.atomic
def run_pause(*, run_id: Any, now: datetime | None = None) -> WorkflowRun:
    """Stop sending the run's steps; a step in flight finishes and is recorded (a wait keeps its time)."""
    run = _locked(run_id)
    if run.status not in (RunStatus.RUNNING, RunStatus.WAITING):
        raise RunStateError(f"only a running or waiting run can be paused; this one is {run.get_status_display()}.")
    run.status = RunStatus.PAUSED
    run.save(update_fields=["status", "updated_at"])
    return run


@transaction.atomic
def run_resume(*, run_id: Any, now: datetime | None = None) -> WorkflowRun:
    """Carry on from where the run was paused: a wait resumes with its time, the next step is sent."""
    now = now or timezone.now()
    run = _locked(run_id)
    if run.status != RunStatus.PAUSED:
        raise RunStateError(f"only a paused run can be resumed; this one is {run.get_status_display()}.")
    run.status = RunStatus.RUNNING
    if run.definition["type"] == "dag":
        for step in run.definition["nodes"]:
            if run.context["nodes"][step["id"]]["status"] == "ready":
                _dag_ready(run, step["id"], now, wake_at=_when(run.context["nodes"][step["id"]]["wake_at"]))
        _dag_lease(run)
    elif WorkflowStep.objects.filter(run=run, seq=run.step_seq, status=StepStatus.WAITING).exists():
        run.status = RunStatus.WAITING  # recover_runs sends it when wake_at is due
        run.lease_expires_at = None
        if run.wake_at and (run.wake_at - now).total_seconds() <= settings.SCHEDULER_COUNTDOWN_MAX_SECONDS:
            _send(run.pk, queue=run.priority, countdown=max((run.wake_at - now).total_seconds(), 0) or None)
    elif run.step_started_at is None:
        _ready(run, now)
        _send(
            run.pk, queue=run.priority, countdown=max((run.wake_at - now).total_seconds(), 0) if run.wake_at else None
        )
    # (A step still held when the pause came: its worker records it, or recovery retakes it.)
    _save(run)
    return run


@transaction.atomic
def run_cancel(*, run_id: Any, reason: str = "", now: datetime | None = None) -> WorkflowRun:
    """End the run now as cancelled; a step in flight is not used. The Execution that started it fails."""
    now = now or timezone.now()
    run = _locked(run_id)
    if run.status not in RUN_ACTIVE_STATUSES:
        raise RunStateError(f"only an unfinished run can be cancelled; this one is {run.get_status_display()}.")
    WorkflowStep.objects.filter(run=run, status__in=[StepStatus.RUNNING, StepStatus.WAITING]).update(
        status=StepStatus.FAILED, finished_at=now, error="run cancelled"
    )
    _finish(run, RunStatus.CANCELLED, now, error=f"cancelled{': ' + reason if reason else ''}")
    _save(run)
    return run


@transaction.atomic
def run_retry(*, run_id: Any, now: datetime | None = None) -> WorkflowRun:
    """Run a failed run again from the step that failed: the steps that succeeded are not run again,
    the failed one runs under a new step number (a new Idempotency-Key: it is a new try, asked for)."""
    now = now or timezone.now()
    run = _locked(run_id)
    if run.status != RunStatus.FAILED:
        raise RunStateError(f"only a failed run can be retried; this one is {run.get_status_display()}.")
    run.status, run.finished_at, run.error = RunStatus.RUNNING, None, ""
    for listener in list(_reopen_listeners):
        listener(str(run.pk))
    if run.definition["type"] == "dag":
        nodes = run.context["nodes"]
        for state in nodes.values():
            if state["status"] in ("failed", "skipped"):
                state.update(status="pending", seq=None, attempt=0, lease=None, wake_at=None)
        for step in run.definition["nodes"]:
            parents = step.get("depends_on", [])
            if nodes[step["id"]]["status"] == "pending" and all(nodes[p]["status"] == "succeeded" for p in parents):
                _dag_ready(run, step["id"], now)
        _dag_lease(run)
        _save(run)
        return run
    failed_step = (
        WorkflowStep.objects.filter(run=run)
        .exclude(action="")
        .order_by("-seq", "-attempt")
        .values_list("step_id", flat=True)
        .first()
    )
    if failed_step is None:
        raise RunStateError("this run has no step to retry.")
    run.transitions = 0
    run.wake_at = None
    _enter(run, failed_step, now)
    _save(run)
    _send(run.pk, queue=run.priority)
    return run


# --- The entry points of the tasks -----------------------------------------------------------------


def run_advance(*, run_id: Any, now: datetime | None = None) -> str:
    """Take the run's current step if it is due and nobody holds it, perform it and record it.
    Returns what became of it ("nothing to do", "waiting", "retrying", "running", "succeeded"...)."""
    claim = _claim(run_id, now or timezone.now())
    if claim is None:
        return "nothing to do"
    params, outcome = _perform(claim)
    return _record(claim, params, outcome)


def runs_recover(*, now: datetime | None = None, limit: int = RECOVER_LIMIT) -> int:
    """Send again the runs that should be moving and are not: a lease run out (worker died, message
    lost, a retry backoff over) or a wait fallen due. Returns how many were sent."""
    now = now or timezone.now()
    sent = 0
    with transaction.atomic():
        stale = list(
            WorkflowRun.objects.select_for_update(skip_locked=True, of=("self",))
            .filter(status=RunStatus.RUNNING, lease_expires_at__lte=now)
            .order_by("lease_expires_at")[:limit]
        )
        for run in stale:
            if run.definition.get("type") == "dag":
                sent += _dag_recover(run, now)
                continue
            if run.step_started_at is not None and not _lost(run, now):
                _save(run)
                continue
            # A fresh hand-off lease, so the next look does not send it again while the message travels.
            run.lease_expires_at = now + _handoff()
            run.save(update_fields=["status", "step_started_at", "lease_expires_at", "updated_at"])
            _send(run.pk, queue=run.priority)
            sent += 1
        # A wait fallen due; its lease marks it sent, so a stopped worker is not sent one per look.
        # (And a start for later that fell due.)
        due = list(
            WorkflowRun.objects.select_for_update(skip_locked=True, of=("self",))
            .filter(status__in=[RunStatus.WAITING, RunStatus.QUEUED], wake_at__lte=now)
            .filter(Q(lease_expires_at__isnull=True) | Q(lease_expires_at__lte=now))
            .order_by("wake_at")
            .values_list("pk", "priority")[:limit]
        )
        # Waiting for a sub-workflow run that has finished (its end's message was lost).
        parents = list(
            WorkflowRun.objects.select_for_update(skip_locked=True, of=("self",))
            .filter(status=RunStatus.WAITING, wake_at__isnull=True)
            .filter(Q(lease_expires_at__isnull=True) | Q(lease_expires_at__lte=now))
            .values_list("pk", "context", "priority")[:limit]
        )
        children = {
            str(pk)
            for pk in WorkflowRun.objects.filter(
                pk__in=[context.get("waiting_on") for _, context, _ in parents if context.get("waiting_on")],
                status__in=RUN_FINISHED_STATUSES,
            ).values_list("pk", flat=True)
        }
        due += [(pk, priority) for pk, context, priority in parents if context.get("waiting_on") in children]
        WorkflowRun.objects.filter(pk__in=[pk for pk, _ in due]).update(lease_expires_at=now + _handoff())
        for pk, priority in due:
            _send(pk, queue=priority)
    return sent + len(due)


def _wake_parent(run_id: str) -> None:
    """A finished run started by a run_workflow step: send the run that waits for it."""
    payload = WorkflowRun.objects.filter(pk=run_id).values_list("payload", flat=True).first()
    if isinstance(payload, dict) and payload.get("parent_run_id"):
        queue = WorkflowRun.objects.filter(pk=payload["parent_run_id"]).values_list("priority", flat=True).first()
        _send(payload["parent_run_id"], queue=queue or RunPriority.NORMAL)


listen_run_finished(_wake_parent)
