"""Everything that touches django-celery-beat: one PeriodicTask per trigger, and the scheduler.

- ``trigger_sync`` / ``trigger_unsync`` keep exactly one PeriodicTask per trigger, named
  ``trigger:<id>``, inside the caller's transaction: the record of every trigger in
  django-celery-beat's admin, which stock DatabaseScheduler can also run (``fire_trigger``).
- ``TriggerScheduler`` dispatches triggers from the due index in the database
  (``schedules.dispatch``) and leaves the other periodic tasks to django-celery-beat, sent by
  one beat at a time (a lease).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from celery import schedules as celery_schedules
from django.conf import settings
from django.db import DatabaseError, InterfaceError, close_old_connections, connection, transaction
from django.db.models import F, Q
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from django_celery_beat.models import (
    ClockedSchedule,
    CrontabSchedule,
    IntervalSchedule,
    PeriodicTask,
    PeriodicTasks,
)
from django_celery_beat.schedulers import DatabaseScheduler

from scheduler_project import metrics

from . import timing
from .models import BeatLease, Trigger, TriggerKind

logger = logging.getLogger(__name__)

FIRE_TASK = "schedules.fire_trigger"
NAME_PREFIX = "trigger:"


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


def tasks_mark_run(fired: dict[datetime, list[int]]) -> None:
    """Record on trigger PeriodicTasks the slot beat dispatched for them (last_run_at, run count).

    Our scheduler does not read these, but django-celery-beat's admin shows them, and stock
    DatabaseScheduler, if run instead, continues from them. A queryset update: it does not make
    beats reload (the change signal is not sent), one query per distinct slot.
    """
    for slot, task_ids in fired.items():
        PeriodicTask.objects.filter(pk__any=task_ids).update(last_run_at=slot, total_run_count=F("total_run_count") + 1)


def lease_acquire(*, name: str, holder: str, ttl_seconds: float, now: datetime | None = None) -> bool:
    """Take or renew the lease ``name`` for ``holder``: True if it is held now.

    Free, expired or already ours: it is ours for ``ttl_seconds`` more (one UPDATE). Holders
    compare times written by each other's clocks, which NTP keeps within far less than the TTL.
    """
    now = now or timezone.now()
    expires_at = now + timedelta(seconds=ttl_seconds)
    free = Q(holder=holder) | Q(expires_at__lt=now)
    if BeatLease.objects.filter(free, name=name).update(holder=holder, expires_at=expires_at):
        return True
    _, created = BeatLease.objects.get_or_create(name=name, defaults={"holder": holder, "expires_at": expires_at})
    return created


def lease_release(*, name: str, holder: str) -> None:
    """Give the lease up at once (a clean shutdown), so another beat takes over without waiting."""
    BeatLease.objects.filter(name=name, holder=holder).delete()


# --- The scheduler run by `celery beat` ---------------------------------------------------------


def _as_datetime(value: Any) -> datetime | None:
    """A datetime read by a raw cursor: aware from PostgreSQL; naive UTC (or text) from SQLite."""
    if value is None:
        return None
    parsed = value if isinstance(value, datetime) else parse_datetime(str(value))
    return parsed if parsed is None or timezone.is_aware(parsed) else parsed.replace(tzinfo=UTC)


PERIODIC_LEASE = "periodic-tasks"
_COMPARED = object()  # the look's change stamp was compared this tick
_RECOVER_EVERY_SECONDS = 1.0
_LEASE_RENEW_SECONDS = 1.0
# How often a tick may ask for the periodic-task lease (the holder renews it, a standby tries to
# take it). Ticks come up to a poll (1 s) apart, so asking once a full second had passed made the
# asks 1-2 s apart: a standby took a dead holder's lease up to 5 s after the kill, not ~4 s.
_LEASE_CHECK_SECONDS = 0.5


class TriggerScheduler(DatabaseScheduler):
    """Dispatches triggers from the due index, and runs the other periodic tasks as django-celery-beat.

    - Triggers: every tick asks the due index (``Trigger.next_run_at``) when the soonest falls
      due and, when something is due, ``dispatch.dispatch_due`` claims, records and publishes
      it in batches. Trigger PeriodicTasks are never loaded, so load time and memory do not
      grow with the number of triggers, an idle tick is one indexed query, and an edit (its new
      ``next_run_at``, committed with it) is seen at the next tick without a reload. Each beat
      also sends again, once a second, what was committed but never published (``leases_recover``).
    - Everything else (recovery, retention, stats, users' own PeriodicTasks) is django-celery-beat's
      DatabaseScheduler, run only by the beat that holds the ``periodic-tasks`` lease, so two beats
      never send them twice; when its holder dies another beat takes over within the lease TTL.
    - While the broker refuses messages, no new slot is dispatched: the due slots wait in the
      index and the catch-up policy decides about them when it is back.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.leader = False
        self._lease_checked_at = float("-inf")
        self._recovered_at = float("-inf")
        self._heartbeat_at = 0.0
        # What the broker refused last (empty while it takes messages): sent again before anything new.
        self._refused: list[Any] = []
        self._reload = False
        # When the ordinary periodic tasks last changed, as the tick's look read it (None: not read).
        self._looked_change: Any = None  # (stamp,) fresh from the look, _COMPARED, or None: no look
        self._stamp_seen = False
        self._look_sql: tuple[str, tuple[Any, ...]] | None = None
        self._connections_checked_at = float("-inf")
        super().__init__(*args, **kwargs)

    def enabled_models_qs(self) -> Any:
        # Trigger tasks are dispatched from the due index: only the others become beat entries.
        # (Also what makes 1,000+ distinct crons load on SQLite, where the stock query fails.)
        return self.Model.objects.enabled().exclude(task=FIRE_TASK)

    def schedule_changed(self) -> bool:
        if self._looked_change is None:
            return self._reloaded(super().schedule_changed())  # outside a tick: django-celery-beat's check
        if self._looked_change is _COMPARED:
            # celery's tick reads self.schedule two or three times; each read would ask again.
            return self._reloaded(False)
        # The tick's look read PeriodicTasks.last_update already (django-celery-beat's own check
        # costs a connection check and a query per read of self.schedule).
        (changed_at,) = self._looked_change
        self._looked_change = _COMPARED
        last, self._last_timestamp = self._last_timestamp, changed_at
        seen, self._stamp_seen = self._stamp_seen, True
        # The first stamp only sets the baseline (the schedule was just read); after it, a stamp
        # that appears (there was no row: no change had ever been recorded) or moves on is a change.
        return self._reloaded(seen and changed_at is not None and (last is None or changed_at > last))

    def _reloaded(self, changed: bool) -> bool:
        if self._reload:
            # Just became the lease holder: read what the previous holder ran (last_run_at).
            self._reload = False
            return True
        return changed

    def tick(self, *args: Any, **kwargs: Any) -> float:
        started = time.perf_counter()
        self._touch_heartbeat()
        try:
            wait = self._dispatch_triggers()
            if self._holds_lease():
                wait = min(wait, super().tick(*args, **kwargs))
        finally:
            self._looked_change = None  # between ticks, schedule_changed asks the database itself
            metrics.BEAT_TICK_SECONDS.observe(time.perf_counter() - started)
        return max(0.0, wait)

    def close(self) -> None:
        try:
            if self.leader:
                lease_release(name=PERIODIC_LEASE, holder=self.holder)
        except (DatabaseError, InterfaceError) as exc:
            logger.warning("could not release the periodic-task lease: %s", exc)
        super().close()

    def _dispatch_triggers(self) -> float:
        """Dispatch what is due; return how long beat may sleep before it looks again."""
        from . import dispatch

        poll = float(settings.SCHEDULER_BEAT_POLL_SECONDS)
        try:
            now = timezone.now()
            if self._refused:
                # The broker refused the last batch: until it takes it, nothing new is dispatched.
                _, error = dispatch.send_ledgered(self._refused, now=now)
                if error is not None:
                    return poll
                logger.warning(
                    "broker takes messages again: %s held attempts sent, dispatch resumes", len(self._refused)
                )
                self._refused = []
                now = timezone.now()  # the send may have waited for the connection
            next_due = self._look()
            dispatched = 0
            if next_due is not None and next_due <= now:
                report = dispatch.dispatch_due()  # each batch on the clock as it is then
                dispatched = report.triggers
                metrics.BEAT_DISPATCHED.inc(report.triggers)
                if report.error is not None:
                    self._refused = report.refused
                    logger.error("broker unreachable: dispatch holds until it is back (%s)", report.error)
                    return poll
                if report.triggers:
                    logger.info("dispatched %s triggers, sent %s attempts", report.triggers, report.sent)
                next_due = dispatch.next_due_at()
            if time.monotonic() - self._recovered_at >= _RECOVER_EVERY_SECONDS:
                self._recovered_at = time.monotonic()
                dispatch.leases_recover()
        except (DatabaseError, InterfaceError) as exc:
            logger.error("database unavailable, trigger dispatch waits (%s: %s)", type(exc).__name__, exc)
            close_old_connections()
            return poll
        except Exception:
            # A bug must not stop every trigger's dispatch (nor crash-loop a restarted beat): the
            # transaction rolled back, so the same triggers are still due at the next tick.
            logger.exception("trigger dispatch failed; trying again at the next tick")
            return poll
        if next_due is None:
            return poll
        wait = (next_due - timezone.now()).total_seconds()
        if wait <= 0 and not dispatched:
            # Due, but held by another beat's transaction (SKIP LOCKED): look again very soon.
            wait = 0.05
        return min(poll, max(0.0, wait))

    def _look(self) -> datetime | None:
        """One round trip per tick: when the soonest trigger is due (the due index), and when the
        ordinary periodic tasks last changed (django-celery-beat's PeriodicTasks row, kept for
        schedule_changed). The SQL is the ORM's, compiled once."""
        if time.monotonic() - self._connections_checked_at >= _LEASE_RENEW_SECONDS:
            # Django drops an old or broken connection here (and pings it with CONN_HEALTH_CHECKS):
            # once a second, not on every tick as django-celery-beat's schedule_changed does.
            self._connections_checked_at = time.monotonic()
            close_old_connections()
        if self._look_sql is None:
            from . import dispatch

            due_sql, due_params = dispatch.next_due_query().query.sql_with_params()
            changed = PeriodicTasks.objects.filter(ident=1).values_list("last_update", flat=True)[:1]
            changed_sql, changed_params = changed.query.sql_with_params()
            self._look_sql = (f"SELECT ({due_sql}), ({changed_sql})", (*due_params, *changed_params))
        sql, params = self._look_sql
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            next_due, changed_at = cursor.fetchone()
        self._looked_change = (_as_datetime(changed_at),)
        return _as_datetime(next_due)

    def _holds_lease(self) -> bool:
        if time.monotonic() - self._lease_checked_at < _LEASE_CHECK_SECONDS:
            return self.leader
        self._lease_checked_at = time.monotonic()
        try:
            leader = lease_acquire(
                name=PERIODIC_LEASE, holder=self.holder, ttl_seconds=settings.SCHEDULER_BEAT_LEASE_SECONDS
            )
        except (DatabaseError, InterfaceError) as exc:
            logger.error("cannot renew the periodic-task lease (%s); not sending periodic tasks", exc)
            close_old_connections()
            leader = False
        if leader and not self.leader:
            logger.warning("beat %s holds the periodic-task lease: it sends the periodic tasks", self.holder)
            self._reload = True
        elif self.leader and not leader:
            logger.warning("beat %s lost the periodic-task lease to another beat", self.holder)
        self.leader = leader
        return leader

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
