"""schedules.beat: TriggerScheduler (dispatch from the due index, the periodic-task lease), rebuild()."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

import pytest
from celery import schedules as celery_schedules
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from django_celery_beat.models import CrontabSchedule, IntervalSchedule, PeriodicTask, PeriodicTasks
from django_celery_beat.schedulers import ModelEntry

from scheduler_project.celery import app as celery_app
from schedules import beat, dispatch, selectors, services
from schedules import tasks as _tasks  # noqa: F401 - registers the tasks with the app
from schedules.beat import FIRE_TASK, TriggerScheduler
from schedules.models import BeatLease, Execution, ExecutionOrigin, ExecutionStatus, Trigger, TriggerKind

LA = "America/Los_Angeles"
NOW = datetime(2027, 3, 10, 12, 0, tzinfo=UTC)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def clock(at: datetime):
    return lambda: at


def create(workflow, **overrides) -> Trigger:
    fields = {"owner": workflow.owner, "workflow": workflow, "name": "Morning", "kind": "cron", "cron": "0 9 * * *"}
    fields.update(overrides)
    fields.setdefault("now", NOW)
    return services.trigger_create(**fields)


# --- TriggerScheduler ---------------------------------------------------------------------------


@pytest.fixture
def published(monkeypatch):
    """What the dispatch path hands to the broker (attempts), with a switch to refuse them."""
    state = {"attempts": [], "refuse": False}

    def publish(attempts, *, producer=None):
        if state["refuse"]:
            return 0, ConnectionRefusedError("broker down")
        state["attempts"].extend(attempts)
        return len(attempts), None

    monkeypatch.setattr(dispatch, "publish", publish)
    monkeypatch.setattr(dispatch, "broker_queue_depth", lambda queue: 0)
    return state


@pytest.fixture
def make_scheduler(monkeypatch):
    made = []

    def make():
        instance = TriggerScheduler(app=celery_app, lazy=True)
        instance._last_sync = time.monotonic()  # no write-back to the database during the test
        # The ordinary periodic tasks are django-celery-beat's business: not sent in these tests.
        monkeypatch.setattr(instance, "apply_async", lambda entry, *args, **kwargs: None)
        made.append(instance)
        return instance

    yield make
    for instance in made:
        instance._finalize.cancel()


def every_second(workflow, name="Every second", **overrides) -> Trigger:
    """An interval trigger created a few seconds ago: its next slot is already due."""
    return services.trigger_create(
        owner=workflow.owner,
        workflow=workflow,
        name=name,
        kind="interval",
        interval_seconds=1,
        now=timezone.now() - timedelta(seconds=5),
        **overrides,
    )


# django-celery-beat closes the connection between ticks: real commits, not a test transaction.
@pytest.mark.django_db(transaction=True)
def test_trigger_scheduler__loads_only_the_ordinary_periodic_tasks(workflow, make_scheduler):
    """Trigger PeriodicTasks stay in the database (the record) but never become beat entries."""
    for index in range(3):
        create(workflow, name=f"t{index}")
    interval = IntervalSchedule.objects.create(every=30, period=IntervalSchedule.SECONDS)
    PeriodicTask.objects.create(name="users-own", task="celery.backend_cleanup", interval=interval)
    scheduler = make_scheduler()
    names = set(scheduler.schedule)
    assert "users-own" in names
    assert not any(name.startswith(beat.NAME_PREFIX) for name in names)
    assert PeriodicTask.objects.filter(task=FIRE_TASK).count() == 3


# django-celery-beat closes the connection between ticks: real commits, not a test transaction.
@pytest.mark.django_db(transaction=True)
def test_trigger_scheduler__loads_with_thousands_of_distinct_crons(make_scheduler):
    """1,200 trigger tasks with distinct crontabs do not reach beat's queries at all (stock
    DatabaseScheduler's prefetch of them fails on SQLite with 'Expression tree is too large')."""
    crontabs = CrontabSchedule.objects.bulk_create(
        # Hour lists: stock DatabaseScheduler loads those whatever the time of day.
        CrontabSchedule(minute=str(n % 60), hour=f"{n // 60 % 12},{n // 60 % 12 + 12}", day_of_month=str(n // 720 + 1))
        for n in range(1200)
    )
    PeriodicTask.objects.bulk_create(
        PeriodicTask(
            name=f"{beat.NAME_PREFIX}{n}", task=FIRE_TASK, crontab=crontab, kwargs=json.dumps({"trigger_id": n})
        )
        for n, crontab in enumerate(crontabs)
    )
    PeriodicTasks.update_changed()
    scheduler = make_scheduler()
    assert not any(name.startswith(beat.NAME_PREFIX) for name in scheduler.schedule)
    assert scheduler.tick() >= 0


# django-celery-beat closes the connection between ticks: real commits, not a test transaction.
@pytest.mark.django_db(transaction=True)
def test_trigger_scheduler_tick__dispatches_due_trigger_once(workflow, make_scheduler, published):
    """A due trigger gets its slot's execution and one published attempt; the next tick sends nothing more."""
    trigger = every_second(workflow)
    due_slot = Trigger.objects.get(pk=trigger.pk).next_run_at
    scheduler = make_scheduler()
    scheduler.tick()
    execution = Execution.objects.get(trigger=trigger, origin=ExecutionOrigin.SCHEDULE)
    assert execution.scheduled_for >= due_slot
    assert execution.status == ExecutionStatus.QUEUED and selectors.execution_sent_at(execution) is not None
    assert [(a.execution_id, a.attempt) for a in published["attempts"]] == [(str(execution.pk), 1)]
    trigger.refresh_from_db()
    assert trigger.next_run_at > execution.scheduled_for
    count = len(published["attempts"])
    Trigger.objects.filter(pk=trigger.pk).update(next_run_at=timezone.now() + timedelta(hours=1))
    scheduler.tick()
    assert len(published["attempts"]) == count


# django-celery-beat closes the connection between ticks: real commits, not a test transaction.
@pytest.mark.django_db(transaction=True)
def test_trigger_scheduler_tick__sleeps_until_next_due_within_poll(workflow, make_scheduler, published, settings):
    """Nothing due: beat sleeps until the soonest trigger falls due, at most the poll interval."""
    settings.SCHEDULER_BEAT_POLL_SECONDS = 1
    trigger = create(workflow)
    soon = timezone.now() + timedelta(milliseconds=400)
    Trigger.objects.filter(pk=trigger.pk).update(next_run_at=soon)
    scheduler = make_scheduler()
    wait = scheduler.tick()
    assert 0 < wait <= 0.45
    Trigger.objects.filter(pk=trigger.pk).update(next_run_at=timezone.now() + timedelta(hours=1))
    assert scheduler.tick() == pytest.approx(1.0, abs=0.01)
    assert published["attempts"] == []


# django-celery-beat closes the connection between ticks: real commits, not a test transaction.
@pytest.mark.django_db(transaction=True)
def test_trigger_scheduler_tick__sees_an_edit_without_reload(workflow, make_scheduler, published):
    """A trigger made due by an edit is dispatched at the next tick; beat never reloads trigger tasks."""
    trigger = create(workflow)
    scheduler = make_scheduler()
    scheduler.tick()
    assert published["attempts"] == []
    # As if edited a moment ago: its first slot under the new schedule is due now.
    services.trigger_update(
        trigger=trigger, kind="interval", cron="", interval_seconds=1, now=timezone.now() - timedelta(seconds=2)
    )
    scheduler.tick()
    assert Execution.objects.filter(trigger=trigger, origin=ExecutionOrigin.SCHEDULE).count() == 1
    assert len(published["attempts"]) == 1


# django-celery-beat closes the connection between ticks: real commits, not a test transaction.
@pytest.mark.django_db(transaction=True)
def test_trigger_scheduler_tick__unreadable_window_pauses_that_trigger_only(workflow, make_scheduler, published):
    """An execution window written behind the services' back that cannot be read pauses its trigger
    (saying why); the other due triggers of the batch are dispatched."""
    broken, sound = every_second(workflow, name="broken"), every_second(workflow, name="sound")
    Trigger.objects.filter(pk=broken.pk).update(execution_window={"days": "weekdays"})
    make_scheduler().tick()
    broken.refresh_from_db()
    assert (broken.enabled, broken.pause_reason) == (False, "schedule cannot be read")
    assert not Execution.objects.filter(trigger=broken).exists()
    assert Execution.objects.filter(trigger=sound, origin=ExecutionOrigin.SCHEDULE).count() == 1


# django-celery-beat closes the connection between ticks: real commits, not a test transaction.
@pytest.mark.django_db(transaction=True)
def test_trigger_scheduler_tick__unexpected_error_is_logged_and_retried(
    workflow, make_scheduler, published, monkeypatch, caplog
):
    """A bug in the dispatch does not stop beat: the tick logs it, rolls back, and the next tick
    dispatches the same slot."""
    trigger = every_second(workflow)
    real = dispatch._save_fired
    failures = []

    def fail_once(*args, **kwargs):
        if not failures:
            failures.append(1)
            raise RuntimeError("a bug")
        return real(*args, **kwargs)

    monkeypatch.setattr(dispatch, "_save_fired", fail_once)
    scheduler = make_scheduler()
    assert scheduler.tick() > 0
    assert "trigger dispatch failed" in caplog.text
    assert not Execution.objects.filter(trigger=trigger).exists()
    scheduler.tick()
    assert Execution.objects.filter(trigger=trigger, origin=ExecutionOrigin.SCHEDULE).count() == 1
    assert len(published["attempts"]) == 1


# django-celery-beat closes the connection between ticks: real commits, not a test transaction.
@pytest.mark.django_db(transaction=True)
def test_trigger_scheduler_tick__broker_down_holds_dispatch(workflow, make_scheduler, published):
    """A refused publish leaves its execution in the ledger, and no further slot is dispatched until
    the broker answers again; then the waiting slots are handled by their catch-up policy."""
    first = every_second(workflow, name="first")
    scheduler = make_scheduler()
    published["refuse"] = True
    scheduler.tick()
    ledgered = Execution.objects.get(trigger=first, origin=ExecutionOrigin.SCHEDULE)
    assert selectors.execution_sent_at(ledgered) is None and ledgered.status == ExecutionStatus.QUEUED
    second = every_second(workflow, name="second")
    scheduler.tick()
    assert not Execution.objects.filter(trigger=second).exists()
    published["refuse"] = False
    scheduler.tick()
    # First what was refused, then the slots that waited (catch-up 'latest': one runs).
    assert [a.execution_id for a in published["attempts"]][0] == str(ledgered.pk)
    assert selectors.execution_sent_at(Execution.objects.get(pk=ledgered.pk)) is not None
    assert Execution.objects.filter(trigger=second, status=ExecutionStatus.QUEUED).count() == 1


# django-celery-beat closes the connection between ticks: real commits, not a test transaction.
@pytest.mark.django_db(transaction=True)
def test_trigger_scheduler__one_lease_holder_sends_periodic_tasks(db, make_scheduler):
    """Of two beats only one holds the periodic-task lease; when it closes, the other takes over."""
    first, second = make_scheduler(), make_scheduler()
    assert first._holds_lease() is True
    assert second._holds_lease() is False
    first.close()
    second._lease_checked_at = float("-inf")
    assert second._holds_lease() is True


def test_trigger_scheduler__asks_for_the_lease_on_any_tick_half_a_second_after_the_last_ask(
    db, make_scheduler, monkeypatch
):
    """Ticks come up to a second apart: a beat that only asked once a full second had passed asked
    every 1-2 s, so a standby took a dead holder's lease up to 5 s after it died. It asks on the
    first tick at least half a second after its last ask, so asks are at most ~1 s apart."""
    asks = []
    monkeypatch.setattr(beat, "lease_acquire", lambda **kwargs: asks.append(kwargs["holder"]) or False)
    clock = [1000.0]
    monkeypatch.setattr(beat.time, "monotonic", lambda: clock[0])
    scheduler = make_scheduler()
    assert scheduler._holds_lease() is False and len(asks) == 1
    clock[0] += 0.3
    assert scheduler._holds_lease() is False and len(asks) == 1
    clock[0] += 0.6  # a tick 0.9 s after the ask
    assert scheduler._holds_lease() is False and len(asks) == 2


def test_lease_acquire__expired_lease_is_taken_over(db):
    """A holder that stopped renewing loses the lease once it expires, not before."""
    now = timezone.now()
    assert beat.lease_acquire(name="x", holder="a", ttl_seconds=4, now=now)
    assert not beat.lease_acquire(name="x", holder="b", ttl_seconds=4, now=now + timedelta(seconds=3))
    assert beat.lease_acquire(name="x", holder="a", ttl_seconds=4, now=now + timedelta(seconds=3))
    assert beat.lease_acquire(name="x", holder="b", ttl_seconds=4, now=now + timedelta(seconds=8))
    assert BeatLease.objects.get(name="x").holder == "b"


def test_tasks_mark_run__records_slot_on_periodic_tasks(workflow):
    """Dispatch writes each trigger task's last slot and run count (what stock beat would continue from)."""
    trigger = create(workflow)
    slot = utc(2027, 3, 11, 9)
    beat.tasks_mark_run({slot: [trigger.periodic_task_id]})
    task = PeriodicTask.objects.get(pk=trigger.periodic_task_id)
    assert (task.last_run_at, task.total_run_count) == (slot, 1)


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
def test_trigger_task__sunday_as_7_in_range_loads_in_stock_scheduler(workflow, cron):
    """A day-of-week range ending in 7 (Sunday) is stored so stock DatabaseScheduler can load it
    (celery's crontab rejects 7 > 6)."""
    trigger = create(workflow, cron=cron)
    entry = ModelEntry(PeriodicTask.objects.get(pk=trigger.periodic_task_id), app=celery_app)
    assert isinstance(entry.schedule, celery_schedules.crontab)


@pytest.mark.django_db(transaction=True)
def test_trigger_scheduler__idle_tick_is_one_query(workflow, make_scheduler):
    """Nothing due, housekeeping done this second: a tick is one round trip (the due index and
    django-celery-beat's change stamp together), not the three it took (ping, due index, stamp)."""
    services.trigger_create(
        owner=workflow.owner,
        workflow=workflow,
        name="Yearly",
        kind=TriggerKind.CRON,
        cron="0 0 1 1 *",
        timezone_name="UTC",
    )
    scheduler = make_scheduler()
    scheduler.tick()  # loads, takes the lease, recovers: the once-a-second work
    with CaptureQueriesContext(connection) as captured:
        scheduler.tick()
    sql = [query["sql"] for query in captured]
    assert len(sql) == 1, "\n".join(sql)
    assert "schedules_trigger" in sql[0] and "django_celery_beat_periodictasks" in sql[0]


@pytest.mark.django_db(transaction=True)
def test_trigger_scheduler__an_ordinary_periodic_task_added_later_reaches_the_lease_holder(make_scheduler):
    """schedule_changed reads the stamp the tick's look fetched: a task added after beat loaded is
    in its schedule after the next tick, and a tick without a change does not reload."""
    scheduler = make_scheduler()
    scheduler.tick()
    assert scheduler.leader and "nightly-report" not in scheduler.schedule
    every_minute, _ = IntervalSchedule.objects.get_or_create(every=60, period=IntervalSchedule.SECONDS)
    PeriodicTask.objects.create(name="nightly-report", task="reports.nightly", interval=every_minute)
    scheduler.tick()
    assert "nightly-report" in scheduler.schedule
    reloads = []
    original = scheduler.all_as_schedule
    scheduler.all_as_schedule = lambda: reloads.append(1) or original()
    scheduler.tick()
    assert not reloads
