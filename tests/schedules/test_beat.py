"""schedules.beat: TriggerSchedule, TriggerEntry, TriggerScheduler.apply_async and rebuild()."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

import pytest
from celery import schedules as celery_schedules
from django_celery_beat.models import CrontabSchedule, IntervalSchedule, PeriodicTask, PeriodicTasks

from scheduler_project.celery import app as celery_app
from schedules import beat, services, timing
from schedules import tasks as _tasks  # noqa: F401 - registers the tasks with the app
from schedules.beat import FIRE_TASK, TriggerEntry, TriggerSchedule, TriggerScheduler
from schedules.models import Trigger

LA = "America/Los_Angeles"
NOW = datetime(2027, 3, 10, 12, 0, tzinfo=UTC)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def clock(at: datetime):
    return lambda: at


def cron_schedule(expression: str, tz: str = "UTC", *, now: datetime) -> TriggerSchedule:
    cadence = timing.Cadence(kind=timing.CRON, cron=timing.normalize_cron(expression), timezone=tz)
    return TriggerSchedule(cadence, nowfun=clock(now), app=celery_app)


def create(workflow, **overrides) -> Trigger:
    fields = {"owner": workflow.owner, "workflow": workflow, "name": "Morning", "kind": "cron", "cron": "0 9 * * *"}
    fields.update(overrides)
    fields.setdefault("now", NOW)
    return services.trigger_create(**fields)


def entry_for(trigger: Trigger, *, now: datetime) -> TriggerEntry:
    entry = TriggerEntry(PeriodicTask.objects.get(pk=trigger.periodic_task_id), app=celery_app)
    entry.schedule.nowfun = clock(now)
    return entry


# --- TriggerSchedule.is_due ---------------------------------------------------------------------


def test_trigger_schedule__cron_not_due_before_slot():
    """Before the next slot the entry is not due and beat sleeps exactly until it."""
    schedule = cron_schedule("0 9 * * *", now=utc(2027, 3, 11, 8, 59, 50))
    assert schedule.is_due(utc(2027, 3, 10, 9)) == (False, 10.0)


def test_trigger_schedule__cron_due_at_slot_then_waits_for_following():
    """At the slot the entry is due, and the next check is at the following slot."""
    now = utc(2027, 3, 11, 9, 0, 5)
    due, wait = cron_schedule("0 9 * * *", now=now).is_due(utc(2027, 3, 10, 9))
    assert due
    assert wait == (utc(2027, 3, 12, 9) - now).total_seconds()


def test_trigger_schedule__cron_in_zone_due_at_gap_end():
    """A 02:30 Los Angeles job is due at 10:00Z on the spring-forward day, not before."""
    last = utc(2027, 3, 13, 10, 30)
    assert cron_schedule("30 2 * * *", LA, now=utc(2027, 3, 14, 9, 59, 59)).is_due(last) == (False, 1.0)
    assert cron_schedule("30 2 * * *", LA, now=utc(2027, 3, 14, 10)).is_due(last).is_due


def test_trigger_schedule__cron_not_due_again_in_repeated_hour():
    """After the first 01:30 of the autumn fold, the second 01:30 (09:30Z) is not due."""
    now = utc(2027, 11, 7, 9, 30, 5)
    due, wait = cron_schedule("30 1 * * *", LA, now=now).is_due(utc(2027, 11, 7, 8, 30))
    assert not due
    assert wait == (utc(2027, 11, 8, 9, 30) - now).total_seconds()


def test_trigger_schedule__interval_due_on_aligned_slots():
    """An interval entry is due on each epoch-aligned slot after last_run_at."""
    cadence = timing.Cadence(kind=timing.INTERVAL, interval_seconds=900)
    last = utc(2027, 3, 10, 12)
    assert TriggerSchedule(cadence, nowfun=clock(utc(2027, 3, 10, 12, 14)), app=celery_app).is_due(last) == (
        False,
        60.0,
    )
    assert TriggerSchedule(cadence, nowfun=clock(utc(2027, 3, 10, 12, 15)), app=celery_app).is_due(last) == (
        True,
        900.0,
    )


def test_trigger_schedule__interval_after_downtime_due_once_then_aligned():
    """After missed slots the entry is due, and the next check is at the next aligned slot."""
    cadence = timing.Cadence(kind=timing.INTERVAL, interval_seconds=900)
    schedule = TriggerSchedule(cadence, nowfun=clock(utc(2027, 3, 10, 12, 47)), app=celery_app)
    assert schedule.is_due(utc(2027, 3, 10, 12)) == (True, 780.0)
    assert schedule.latest_slot() == utc(2027, 3, 10, 12, 45)


def test_trigger_schedule__once_due_only_at_run_at():
    """A once entry is due from run_at until it has run, then never again."""
    cadence = timing.Cadence(kind=timing.ONCE, run_at=utc(2027, 3, 10, 12, 30))
    before = TriggerSchedule(cadence, nowfun=clock(utc(2027, 3, 10, 12, 29)), app=celery_app)
    after = TriggerSchedule(cadence, nowfun=clock(utc(2027, 3, 10, 12, 31)), app=celery_app)
    assert before.is_due(utc(2027, 3, 10, 12)) == (False, 60.0)
    assert after.is_due(utc(2027, 3, 10, 12)).is_due
    assert not after.is_due(utc(2027, 3, 10, 12, 30)).is_due


def test_trigger_schedule__remaining_estimate_to_next_slot():
    """remaining_estimate is the time from now to the next slot after last_run_at."""
    schedule = cron_schedule("0 9 * * *", now=utc(2027, 3, 11, 8))
    assert schedule.remaining_estimate(utc(2027, 3, 10, 9)) == timedelta(hours=1)


# --- TriggerEntry -------------------------------------------------------------------------------


def test_trigger_entry__trigger_task_scheduled_by_trigger_schedule(workflow):
    """A trigger's PeriodicTask is scheduled by a TriggerSchedule with the trigger's cadence."""
    trigger = create(workflow, cron="0 9 * * MON-FRI", timezone_name=LA)
    entry = entry_for(trigger, now=NOW)
    assert isinstance(entry.schedule, TriggerSchedule)
    assert entry.schedule.cadence == trigger.cadence


def test_trigger_entry__other_task_keeps_celery_schedule(db):
    """A PeriodicTask that is not a trigger's keeps django-celery-beat's own schedule."""
    interval = IntervalSchedule.objects.create(every=2, period=IntervalSchedule.SECONDS)
    model = PeriodicTask.objects.create(name="recover", task="schedules.recover_executions", interval=interval)
    entry = TriggerEntry(model, app=celery_app)
    assert isinstance(entry.schedule, celery_schedules.schedule)
    assert not isinstance(entry.schedule, TriggerSchedule)


def test_trigger_entry__due_at_first_slot_after_create(workflow):
    """The entry of a new trigger is due at its first slot, not before."""
    trigger = create(workflow)
    assert not entry_for(trigger, now=utc(2027, 3, 11, 8, 59)).is_due().is_due
    assert entry_for(trigger, now=utc(2027, 3, 11, 9, 0, 1)).is_due().is_due


def test_trigger_entry__next_stores_fired_slot_not_wall_clock(workflow):
    """Advancing the entry records the slot fired (09:00:00), not the time beat got to it."""
    trigger = create(workflow)
    entry = entry_for(trigger, now=utc(2027, 3, 11, 9, 0, 7))
    following = next(entry)
    assert entry.fired_slot == utc(2027, 3, 11, 9)
    assert entry.model.last_run_at == utc(2027, 3, 11, 9)
    assert following.last_run_at == utc(2027, 3, 11, 9)
    assert following.model.total_run_count == 1
    assert isinstance(following, TriggerEntry) and isinstance(following.schedule, TriggerSchedule)
    following.schedule.nowfun = clock(utc(2027, 3, 11, 9, 0, 30))
    assert not following.is_due().is_due


def test_trigger_entry__after_downtime_records_latest_missed_slot(workflow):
    """After beat was down for days, the entry fires once and records the latest slot."""
    trigger = create(workflow)
    entry = entry_for(trigger, now=utc(2027, 3, 14, 11))
    assert entry.is_due().is_due
    following = next(entry)
    assert following.last_run_at == utc(2027, 3, 14, 9)
    following.schedule.nowfun = clock(utc(2027, 3, 14, 11, 0, 1))
    assert not following.is_due().is_due


# --- TriggerScheduler.apply_async ---------------------------------------------------------------


@pytest.fixture
def scheduler():
    instance = TriggerScheduler(app=celery_app, lazy=True, Producer=lambda *args, **kwargs: None)
    instance._last_sync = time.monotonic()  # no write-back to the database during the test
    yield instance
    instance._finalize.cancel()


@pytest.fixture
def sent(monkeypatch):
    """Messages the scheduler publishes, by task name: (args, kwargs, options)."""
    messages: dict[str, list] = {}
    for name in (FIRE_TASK, "schedules.recover_executions"):
        task = celery_app.tasks[name]

        def record(args=None, kwargs=None, *, _name=name, **options):
            messages.setdefault(_name, []).append((args, kwargs, options))

        monkeypatch.setattr(task, "apply_async", record)
    return messages


def test_trigger_scheduler_apply_async__adds_scheduled_for(workflow, scheduler, sent):
    """The message for a trigger names the slot it fires for; the stored kwargs stay as they were."""
    trigger = create(workflow)
    entry = entry_for(trigger, now=utc(2027, 3, 11, 9, 0, 7))
    scheduler.apply_async(entry, producer=object())
    ((args, kwargs, _),) = sent[FIRE_TASK]
    assert kwargs == {"trigger_id": trigger.pk, "scheduled_for": "2027-03-11T09:00:00+00:00"}
    assert entry.kwargs == {"trigger_id": trigger.pk}
    assert json.loads(entry.model.kwargs) == {"trigger_id": trigger.pk}
    assert entry.model.last_run_at == utc(2027, 3, 11, 9)


def test_trigger_scheduler_apply_async__names_reserved_slot_even_if_clock_moved(workflow, scheduler, sent):
    """As in beat's tick (reserve, then send): the message names the slot reserved, not a later one."""
    trigger = create(workflow)
    entry = entry_for(trigger, now=utc(2027, 3, 11, 9, 0, 7))
    scheduler.reserve(entry)
    entry.schedule.nowfun = clock(utc(2027, 3, 12, 9, 0, 3))  # a slow publish, past the next slot
    scheduler.apply_async(entry, producer=object(), advance=False)
    ((_, kwargs, _),) = sent[FIRE_TASK]
    assert kwargs["scheduled_for"] == "2027-03-11T09:00:00+00:00"


def test_trigger_scheduler_apply_async__other_tasks_unchanged(db, scheduler, sent):
    """Entries that are not triggers are sent with their own kwargs only."""
    interval = IntervalSchedule.objects.create(every=2, period=IntervalSchedule.SECONDS)
    model = PeriodicTask.objects.create(
        name="recover", task="schedules.recover_executions", interval=interval, kwargs="{}"
    )
    scheduler.apply_async(TriggerEntry(model, app=celery_app), producer=object())
    ((_, kwargs, _),) = sent["schedules.recover_executions"]
    assert kwargs == {}


# --- rebuild ------------------------------------------------------------------------------------


def test_rebuild__repairs_crontab_changed_behind_its_back(workflow):
    """A crontab swapped with queryset.update (no signal) is put back to the trigger's schedule."""
    trigger = create(workflow, cron="0 9 * * *", timezone_name=LA)
    other = CrontabSchedule.objects.create(minute="5", hour="*", timezone="UTC")
    PeriodicTask.objects.filter(pk=trigger.periodic_task_id).update(crontab=other)
    report = beat.rebuild(now=NOW)
    assert report == {"triggers": 1, "repaired": 1, "orphans_deleted": 0}
    crontab = PeriodicTask.objects.get(pk=trigger.periodic_task_id).crontab
    assert (crontab.minute, crontab.hour, str(crontab.timezone)) == ("0", "9", LA)


@pytest.mark.parametrize(
    "drift",
    [
        {"enabled": False},
        {"kwargs": '{"trigger_id": 999999}'},
        {"task": "schedules.run_execution"},
        {"one_off": True},
    ],
)
def test_rebuild__repairs_other_drift(workflow, drift):
    """Disabled, re-pointed or re-typed trigger tasks are repaired."""
    trigger = create(workflow)
    PeriodicTask.objects.filter(pk=trigger.periodic_task_id).update(**drift)
    assert beat.rebuild(now=NOW)["repaired"] == 1
    task = PeriodicTask.objects.get(pk=trigger.periodic_task_id)
    assert task.enabled and not task.one_off
    assert task.task == FIRE_TASK
    assert json.loads(task.kwargs) == {"trigger_id": trigger.pk}


def test_rebuild__keeps_beat_position_of_sound_tasks(workflow):
    """A task that did not drift is not counted and keeps its last_run_at."""
    trigger = create(workflow)
    PeriodicTask.objects.filter(pk=trigger.periodic_task_id).update(last_run_at=utc(2027, 3, 11, 9))
    assert beat.rebuild(now=NOW + timedelta(days=5)) == {"triggers": 1, "repaired": 0, "orphans_deleted": 0}
    assert PeriodicTask.objects.get(pk=trigger.periodic_task_id).last_run_at == utc(2027, 3, 11, 9)


def test_rebuild__deletes_orphaned_trigger_tasks_only(workflow):
    """Trigger tasks without a trigger are deleted; other periodic tasks are kept."""
    trigger = create(workflow)
    interval = IntervalSchedule.objects.create(every=60, period=IntervalSchedule.SECONDS)
    PeriodicTask.objects.create(name="trigger:999999", task=FIRE_TASK, interval=interval)
    PeriodicTask.objects.create(name="recover", task="schedules.recover_executions", interval=interval)
    report = beat.rebuild(now=NOW)
    assert report["orphans_deleted"] == 1
    assert set(PeriodicTask.objects.values_list("name", flat=True)) == {f"trigger:{trigger.pk}", "recover"}


def test_rebuild__recreates_lost_task_from_now(workflow):
    """A trigger whose PeriodicTask row was deleted gets a new one that fires only slots after now."""
    trigger = create(workflow)
    PeriodicTask.objects.filter(pk=trigger.periodic_task_id).delete()
    rebuilt_at = NOW + timedelta(days=2)
    report = beat.rebuild(now=rebuilt_at)
    assert report["repaired"] == 1
    trigger.refresh_from_db()
    assert trigger.periodic_task is not None
    assert trigger.periodic_task.name == f"trigger:{trigger.pk}"
    assert trigger.periodic_task.last_run_at == rebuilt_at


def test_rebuild__relinks_task_whose_link_was_cleared(workflow):
    """A trigger that lost its link to its (still present) PeriodicTask is linked again, not duplicated."""
    trigger = create(workflow)
    Trigger.objects.filter(pk=trigger.pk).update(periodic_task=None)
    beat.rebuild(now=NOW)
    trigger.refresh_from_db()
    assert trigger.periodic_task is not None
    assert PeriodicTask.objects.filter(task=FIRE_TASK).count() == 1


def test_rebuild__tells_beat_the_schedule_changed(workflow):
    """rebuild bumps PeriodicTasks.last_update so a running beat reloads."""
    create(workflow)
    old = datetime(2000, 1, 1, tzinfo=UTC)
    PeriodicTasks.objects.update_or_create(ident=1, defaults={"last_update": old})
    beat.rebuild(now=NOW)
    assert PeriodicTasks.last_change() > old


@pytest.mark.parametrize("cron", ["0 12 * * 5-7", "0 12 * * 1/2", "0 12 * * 0-7"])
def test_trigger_entry__sunday_as_7_in_range_loads(workflow, cron):
    """A day-of-week range ending in 7 (Sunday) loads into beat (celery's crontab rejects 7 > 6)."""
    trigger = create(workflow, cron=cron)
    entry = entry_for(trigger, now=NOW)
    assert isinstance(entry.schedule, TriggerSchedule)
    assert trigger.periodic_task.crontab.schedule is not None
