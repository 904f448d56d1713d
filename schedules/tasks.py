"""Celery tasks: thin wrappers that take ids, call the services or the dispatch path, and return a
short summary.

Task names are explicit because PeriodicTask rows store them as strings.
"""

from __future__ import annotations

import random
from dataclasses import asdict
from datetime import datetime

from celery import Task, shared_task
from django.db import InterfaceError, OperationalError

from . import dispatch, services

# A killed worker's message goes back to the queue (acks_late + reject_on_worker_lost); the
# claim in the services keeps the redelivery from calling a second time.
_RELIABLE = {"acks_late": True, "reject_on_worker_lost": True, "ignore_result": False}


@shared_task(name="schedules.fire_trigger", **_RELIABLE)
def fire_trigger(trigger_id: int, scheduled_for: str | None = None) -> dict[str, object]:
    """Sent by beat when a trigger's slot falls due: claim the slot and make the first call."""
    slot = datetime.fromisoformat(scheduled_for) if scheduled_for else None
    execution = dispatch.trigger_fire(trigger_id=trigger_id, scheduled_for=slot)
    if execution is None:
        return {"trigger_id": trigger_id, "scheduled_for": scheduled_for, "status": "nothing to do"}
    outcome = dispatch.execution_perform(execution=execution)
    return {"execution_id": str(execution.pk), "attempt": 1, "status": outcome.status}


# A claim that cannot reach the database (down, or out of connection slots) has changed nothing:
# the message is sent again after a short, growing wait rather than left to recovery's lease.
_CLAIM_RETRIES = 5


def _retry_soon(task: Task, exc: Exception) -> None:
    """For a database error at a claim: raise celery's Retry (the message again after 1-30 s,
    growing), unless _CLAIM_RETRIES were made; then return, and the caller raises the error
    (recovery sends the message once its lease runs out). The next task's prerun drops the
    broken connection (scheduler_project/celery.py)."""
    if task.request.retries < _CLAIM_RETRIES:
        raise task.retry(exc=exc, countdown=min(30.0, 2.0**task.request.retries) * random.uniform(0.5, 1.0)) from exc


@shared_task(name="schedules.run_execution", bind=True, **_RELIABLE)
def run_execution(self, execution_id: str, attempt: int) -> dict[str, object]:
    """Run one attempt of an execution (manual runs, retries and recovered executions)."""
    try:
        execution = dispatch.execution_claim(execution_id=execution_id, attempt=attempt)
    except (OperationalError, InterfaceError) as exc:
        _retry_soon(self, exc)
        raise
    if execution is None:
        return {"execution_id": execution_id, "attempt": attempt, "status": "nothing to do"}
    outcome = dispatch.execution_perform(execution=execution)
    return {"execution_id": execution_id, "attempt": execution.attempts, "status": outcome.status}


@shared_task(name="schedules.run_executions", bind=True, **_RELIABLE)
def run_executions(self, attempts: list[list]) -> dict[str, object]:
    """Several attempts in one message (a burst: dispatch.message_groups), run one after another.

    A database outage mid-way sends the whole message again: what ran is not run twice (each
    attempt is claimed), the rest runs then.
    """
    try:
        report = dispatch.executions_run([(str(execution_id), int(attempt)) for execution_id, attempt in attempts])
    except (OperationalError, InterfaceError) as exc:
        _retry_soon(self, exc)
        raise
    return {"attempts": len(attempts), **asdict(report)}


@shared_task(name="schedules.recover_executions", ignore_result=True)
def recover_executions() -> dict[str, int]:
    """Periodic (beat): send again what was lost (see dispatch.executions_recover)."""
    report = dispatch.executions_recover()
    return {"executions": report.executions, "slots": report.slots, "deferred": report.deferred}


@shared_task(name="schedules.notify_trigger_event", ignore_result=True)
def notify_trigger_event(
    trigger_id: int, event: str, execution_id: str | None = None, detail: dict | None = None
) -> dict:
    """E-mail and webhook for a final failure, an automatic pause or a recovery."""
    from . import notifications
    from .models import Execution, Trigger

    trigger = Trigger.objects.select_related("workflow").filter(pk=trigger_id).first()
    if trigger is None:
        return {"trigger_id": trigger_id, "status": "trigger gone"}
    execution = Execution.objects.filter(pk=execution_id).first() if execution_id else None
    return notifications.send(trigger, event, execution, detail or {})


@shared_task(name="schedules.fold_stats", ignore_result=True)
def fold_stats() -> dict[str, int]:
    """Periodic (beat): count finished executions in ExecutionStats, a few thousand per transaction."""
    return {"counted": services.stats_fold()}


@shared_task(name="schedules.prune_executions", ignore_result=True)
def prune_executions() -> dict[str, int]:
    """Periodic (beat): delete executions past their trigger's retention (the stats keep counting them)."""
    return {"deleted": services.executions_prune()}
