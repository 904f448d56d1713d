"""Celery tasks of the built-in engine: thin, they take ids and call the runner.

Task names are explicit because PeriodicTask rows and CELERY_BEAT_SCHEDULE store them as strings.
"""

from __future__ import annotations

from celery import shared_task

from .engine import runner

# A killed worker's message goes back to the queue (acks_late + reject_on_worker_lost); the claim
# in the runner keeps a redelivery from running the step twice while its lease lasts.
_RELIABLE = {"acks_late": True, "reject_on_worker_lost": True}


@shared_task(name="workflows.advance_run", ignore_result=True, **_RELIABLE)
def advance_run(run_id: str) -> dict[str, str]:
    """Perform the run's current step if it is due and nobody holds it, and send the next one."""
    return {"run_id": run_id, "status": runner.run_advance(run_id=run_id)}


@shared_task(name="workflows.recover_runs", ignore_result=True)
def recover_runs() -> dict[str, int]:
    """Periodic (beat): send runs whose worker died, whose message was lost or whose wait is over."""
    return {"sent": runner.runs_recover()}
