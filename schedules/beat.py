"""Everything that touches django-celery-beat: one PeriodicTask per trigger, and the scheduler.

- ``trigger_sync`` / ``trigger_unsync`` keep exactly one PeriodicTask per trigger, named
  ``trigger:<id>``, inside the caller's transaction. Saving through the model bumps
  ``PeriodicTasks``, so a running beat reloads within its max loop interval.
- ``TriggerScheduler`` is django-celery-beat's DatabaseScheduler with trigger entries that fire
  on the exact slots of ``schedules.timing`` (the same function that computes ``next_run_at``)
  and send the slot they fire for, so a re-sent message names the same slot and is deduplicated.
"""

from __future__ import annotations

import json
import logging
import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from celery import schedules as celery_schedules
from django.conf import settings
from django.db import transaction
from django.utils import timezone
from django_celery_beat.models import (
    ClockedSchedule,
    CrontabSchedule,
    IntervalSchedule,
    PeriodicTask,
    PeriodicTasks,
)
from django_celery_beat.schedulers import DatabaseScheduler, ModelEntry

from . import timing
from .models import Trigger, TriggerKind

logger = logging.getLogger(__name__)

FIRE_TASK = "schedules.fire_trigger"
NAME_PREFIX = "trigger:"
# Seconds beat may sleep when an entry has no future slot.
_NEVER = 3600.0


def periodic_task_name(trigger: Trigger) -> str:
    return f"{NAME_PREFIX}{trigger.pk}"


def check_schedulable(cadence: timing.Cadence) -> None:
    """Refuse a cron that beat could not load: django-celery-beat builds a celery crontab for
    every entry and silently drops one that celery rejects (e.g. '0 12 31 4 1', April 31st)."""
    if cadence.kind != timing.CRON:
        return
    minute, hour, day_of_month, month_of_year, day_of_week = cadence.cron.split(" ")
    try:
        celery_schedules.crontab(
            minute=minute,
            hour=hour,
            day_of_week=day_of_week,
            day_of_month=day_of_month,
            month_of_year=month_of_year,
        )
    except ValueError as exc:
        raise timing.InvalidCron(f"{exc} Remove the day that never occurs.") from exc


def _crontab_for(trigger: Trigger) -> CrontabSchedule:
    minute, hour, day_of_month, month_of_year, day_of_week = trigger.cadence.cron.split(" ")
    fields = {
        "minute": minute,
        "hour": hour,
        "day_of_month": day_of_month,
        "month_of_year": month_of_year,
        "day_of_week": day_of_week,
        "timezone": trigger.timezone,
    }
    existing = CrontabSchedule.objects.filter(**fields).order_by("id").first()
    return existing or CrontabSchedule.objects.create(**fields)


def _interval_for(trigger: Trigger) -> IntervalSchedule:
    fields = {"every": trigger.interval_seconds, "period": IntervalSchedule.SECONDS}
    existing = IntervalSchedule.objects.filter(**fields).order_by("id").first()
    return existing or IntervalSchedule.objects.create(**fields)


def _clocked_for(trigger: Trigger, current: PeriodicTask | None) -> ClockedSchedule:
    # A once trigger owns its ClockedSchedule: moving run_at moves that row.
    clocked = current.clocked if current is not None and current.clocked_id else ClockedSchedule()
    clocked.clocked_time = trigger.run_at
    clocked.save()
    return clocked


def trigger_sync(trigger: Trigger, *, restart_at: datetime | None = None) -> PeriodicTask:
    """Create or update the trigger's PeriodicTask to match it (call inside a transaction).

    ``restart_at``: beat fires only slots after this time (used on create, schedule change and
    resume, so slots from before the change or during a pause never fire).
    """
    # A row named after the trigger may outlive its link (link cleared by a bulk update or a
    # restore): adopt it rather than fail on the unique name.
    task = (
        trigger.periodic_task
        or PeriodicTask.objects.filter(name=periodic_task_name(trigger)).first()
        or PeriodicTask(name=periodic_task_name(trigger))
    )
    old_clocked = task.clocked if task.pk and task.clocked_id else None
    task.name = periodic_task_name(trigger)
    task.task = FIRE_TASK
    task.args = "[]"
    task.kwargs = json.dumps({"trigger_id": trigger.pk})
    task.description = f"{trigger.name}: {trigger.description}"[:2000]
    task.crontab = _crontab_for(trigger) if trigger.kind == TriggerKind.CRON else None
    task.interval = _interval_for(trigger) if trigger.kind == TriggerKind.INTERVAL else None
    task.clocked = _clocked_for(trigger, task if task.pk else None) if trigger.kind == TriggerKind.ONCE else None
    task.solar = None
    task.one_off = trigger.kind == TriggerKind.ONCE
    task.enabled = trigger.enabled and trigger.next_run_at is not None and trigger.completed_at is None
    # Beat publishes the slot's message to the trigger's priority queue.
    task.queue = str(trigger.priority)
    task.start_time = None
    task.expires = None
    if restart_at is not None or task.pk is None:
        task.last_run_at = restart_at
        task.total_run_count = 0
        task.save()
    else:
        # beat writes last_run_at/total_run_count back on its own schedule: leave them alone.
        task.save(update_fields=list(_SYNCED_FIELDS))
    if old_clocked is not None and task.clocked_id != old_clocked.pk:
        old_clocked.delete()
    if trigger.periodic_task_id != task.pk:
        trigger.periodic_task = task
        Trigger.objects.filter(pk=trigger.pk).update(periodic_task=task)
    return task


_SYNCED_FIELDS = (
    "name",
    "task",
    "args",
    "kwargs",
    "description",
    "crontab",
    "interval",
    "clocked",
    "solar",
    "one_off",
    "enabled",
    "start_time",
    "expires",
    "date_changed",
    "queue",
)


def trigger_unsync(trigger: Trigger) -> None:
    """Remove the trigger's PeriodicTask (and its own ClockedSchedule)."""
    task = trigger.periodic_task
    if task is None:
        PeriodicTask.objects.filter(name=periodic_task_name(trigger)).delete()
        return
    clocked = task.clocked if task.clocked_id else None
    task.delete()
    if clocked is not None:
        clocked.delete()
    trigger.periodic_task = None


@transaction.atomic
def rebuild(*, now: datetime | None = None) -> dict[str, int]:
    """Re-create every trigger's PeriodicTask from the trigger and delete orphans.

    Repairs tasks that drifted (edited by hand, bulk updates beat never saw, lost rows).
    """
    now = now or timezone.now()
    drifted = 0
    triggers = Trigger.objects.select_related(
        "periodic_task__crontab", "periodic_task__interval", "periodic_task__clocked"
    )
    kept: set[int] = set()
    count = 0
    for trigger in triggers:
        before = _snapshot(trigger.periodic_task)
        restart = now if trigger.periodic_task is None else None
        task = trigger_sync(trigger, restart_at=restart)
        kept.add(task.pk)
        count += 1
        if before != _snapshot(task):
            drifted += 1
    orphans = PeriodicTask.objects.filter(task=FIRE_TASK).exclude(pk__in=kept)
    orphan_clocked = list(orphans.exclude(clocked=None).values_list("clocked_id", flat=True))
    orphan_count = orphans.count()
    orphans.delete()
    ClockedSchedule.objects.filter(pk__in=orphan_clocked, periodictask=None).delete()
    # Bulk deletes skip the change signal: tell beat explicitly (django-celery-beat README).
    PeriodicTasks.update_changed()
    return {"triggers": count, "repaired": drifted, "orphans_deleted": orphan_count}


def _snapshot(task: PeriodicTask | None) -> tuple[Any, ...] | None:
    if task is None:
        return None
    crontab = task.crontab
    return (
        task.name,
        task.task,
        task.kwargs,
        task.enabled,
        task.one_off,
        (
            crontab.minute,
            crontab.hour,
            crontab.day_of_month,
            crontab.month_of_year,
            crontab.day_of_week,
            str(crontab.timezone),
        )
        if crontab
        else None,
        (task.interval.every, task.interval.period) if task.interval else None,
        task.clocked.clocked_time if task.clocked else None,
    )


# --- The scheduler run by `celery beat` ---------------------------------------------------------


def cadence_of(task: PeriodicTask) -> timing.Cadence | None:
    """The cadence a trigger's PeriodicTask describes (without loading the trigger)."""
    if task.crontab_id:
        c = task.crontab
        cron = " ".join([c.minute, c.hour, c.day_of_month, c.month_of_year, c.day_of_week])
        return timing.Cadence(kind=timing.CRON, cron=cron, timezone=str(c.timezone))
    if task.interval_id:
        seconds = int(task.interval.schedule.run_every.total_seconds())
        return timing.Cadence(kind=timing.INTERVAL, interval_seconds=seconds)
    if task.clocked_id:
        run_at = task.clocked.clocked_time
        if timezone.is_naive(run_at):
            run_at = run_at.replace(tzinfo=UTC)
        return timing.Cadence(kind=timing.ONCE, run_at=run_at)
    return None


class TriggerSchedule(celery_schedules.BaseSchedule):
    """A celery schedule that is due exactly on a trigger's slots."""

    def __init__(self, cadence: timing.Cadence, nowfun: Any = None, app: Any = None) -> None:
        super().__init__(nowfun=nowfun, app=app)
        self.cadence = cadence

    def _now(self) -> datetime:
        return self.now().astimezone(UTC)

    def remaining_estimate(self, last_run_at: datetime) -> timedelta:
        slot = timing.next_slot_after(self.cadence, self.maybe_make_aware(last_run_at))
        return (slot - self._now()) if slot else timedelta(seconds=_NEVER)

    def is_due(self, last_run_at: datetime) -> celery_schedules.schedstate:
        now = self._now()
        slot = timing.next_slot_after(self.cadence, self.maybe_make_aware(last_run_at))
        if slot is None:
            return celery_schedules.schedstate(False, _NEVER)
        if slot <= now:
            following = timing.next_slot_after(self.cadence, now)
            wait = (following - now).total_seconds() if following else _NEVER
            return celery_schedules.schedstate(True, max(wait, 0.0))
        return celery_schedules.schedstate(False, (slot - now).total_seconds())

    def latest_slot(self) -> datetime | None:
        return timing.latest_slot_at_or_before(self.cadence, self._now())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TriggerSchedule) and other.cadence == self.cadence

    def __hash__(self) -> int:
        return hash(self.cadence)

    def __repr__(self) -> str:
        return f"<TriggerSchedule: {self.cadence}>"

    def __reduce__(self) -> tuple[Any, ...]:
        return self.__class__, (self.cadence, self.nowfun)


class TriggerEntry(ModelEntry):
    """A PeriodicTask row; for trigger tasks, scheduled by TriggerSchedule."""

    fired_slot: datetime | None = None

    def __init__(self, model: PeriodicTask, app: Any = None) -> None:
        super().__init__(model, app=app)
        if self.task == FIRE_TASK:
            # The trigger's own cadence (DST policy, anchor, bounds) when the scheduler loaded it;
            # else what the PeriodicTask row itself says.
            cadence = getattr(model, "trigger_cadence", None) or cadence_of(model)
            if cadence is not None:
                self.schedule = TriggerSchedule(cadence, app=self.app)

    def __next__(self) -> TriggerEntry:
        if not isinstance(self.schedule, TriggerSchedule):
            return super().__next__()
        # Remember the slot fired, not the wall clock, so the next slot is computed from the
        # slot itself: no drift, and after downtime only the latest missed slot fires once.
        self.fired_slot = self.schedule.latest_slot()
        self.model.last_run_at = self.fired_slot or self._default_now()
        self.model.total_run_count += 1
        self.model.no_changes = True
        return self.__class__(self.model)


def _with_kwargs(entry: ModelEntry, kwargs: dict[str, Any]) -> ModelEntry:
    # ScheduleEntry.__reduce__ does not fit ModelEntry's constructor, so copy by hand.
    clone = object.__new__(type(entry))
    clone.__dict__.update(entry.__dict__)
    clone.kwargs = kwargs
    return clone


class TriggerScheduler(DatabaseScheduler):
    """DatabaseScheduler that fires triggers on their slots and names the slot in the message."""

    Entry = TriggerEntry
    _heartbeat_at = 0.0

    def enabled_models(self) -> list[PeriodicTask]:
        """django-celery-beat's enabled rows, each trigger's carrying its cadence (one extra query)."""
        models = super().enabled_models()
        if any(model.task == FIRE_TASK for model in models):
            active = Trigger.objects.filter(enabled=True, completed_at=None, periodic_task__isnull=False)
            fields = ("kind", "cron", "timezone", "run_at", "interval_seconds", "dst_policy", "anchor_at")
            cadences = {}
            for trigger in active.only(*fields, "start_at", "end_at", "periodic_task_id"):
                try:
                    cadences[trigger.periodic_task_id] = trigger.cadence
                except timing.ScheduleError:
                    logger.exception("trigger %s has a schedule beat cannot read", trigger.pk)
            for model in models:
                model.trigger_cadence = cadences.get(model.pk)
        return models

    def apply_async(self, entry: ModelEntry, producer: Any = None, advance: bool = True, **kwargs: Any) -> Any:
        if isinstance(entry.schedule, TriggerSchedule):
            if advance:
                self.reserve(entry)
                advance = False
            slot = entry.fired_slot or entry.schedule.latest_slot()
            if slot is not None:
                entry = _with_kwargs(entry, {**entry.kwargs, "scheduled_for": slot.isoformat()})
        return super().apply_async(entry, producer=producer, advance=advance, **kwargs)

    def tick(self, *args: Any, **kwargs: Any) -> float:
        self._touch_heartbeat()
        return super().tick(*args, **kwargs)

    def _touch_heartbeat(self) -> None:
        now = time.time()
        if now - self._heartbeat_at < 1:
            return
        self._heartbeat_at = now
        path = Path(settings.SCHEDULER_BEAT_HEARTBEAT_FILE)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
            os.utime(path, (now, now))
        except OSError as exc:
            logger.warning("cannot write beat heartbeat %s: %s", path, exc)
