"""Fast seeding of many triggers for the benchmarks, row for row what the services would write.

``seed_triggers(specs)`` bulk-inserts one ``Trigger`` per spec (``next_run_at`` from
``schedules.timing.next_slot_after(cadence, now)``, ``active_since=now``), the
``CrontabSchedule`` rows they need (shared where identical, as ``schedules/beat.py`` shares them)
and one ``PeriodicTask`` per trigger exactly as ``schedules.beat.trigger_sync`` creates it (name
``trigger:<id>``, task, kwargs, queue = priority, enabled, ``last_run_at=now``), then bumps
``PeriodicTasks`` so a running beat notices. Each distinct (cron, zone, priority) is validated once
by ``services.trigger_build``, and a self-check creates two triggers through the real
``services.trigger_create`` (rolled back) and fails loudly if any field beat reads differs.

``seed_redbeat(app, specs, ids)`` writes the same schedule as RedBeat entries (UTC crontabs with the
same slots, checked against ``schedules.timing``).

The layouts (``quiet_layout``, ``lag_layout``, ``burst_layout``, ``neighbours_layout``) build the
spec lists the benchmarks use. Needs Django set up (``django.setup()``) and EMPTIES the triggers,
executions and trigger periodic tasks of the database it runs on: point it at a scratch database.

    from bench.seed import quiet_layout, seed_triggers
    result = seed_triggers(quiet_layout(100_000, now))
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from schedules import timing

ZONES = ("UTC", "America/Los_Angeles", "Europe/London", "Asia/Kolkata", "Australia/Lord_Howe")
PRIORITIES = ("normal", "high", "low")
FIRE_TASK = "schedules.fire_trigger"
BENCH_USER = "bench"
BENCH_WORKFLOW = "bench"


@dataclass(frozen=True)
class TriggerSpec:
    """One trigger: its cron read in ``zone`` and a UTC cron with the same slots (for RedBeat)."""

    cron: str
    zone: str
    priority: str
    utc_cron: str
    # Whether the UTC cron gives exactly the same slots (checked); quiet filler only needs to
    # stay far from now in both forms.
    exact: bool = True
    # The trigger's overlap policy ("" = the default, skip). No worker runs in the benchmarks, so
    # every execution stays queued: a trigger due every minute needs "allow" to fire again.
    overlap: str = ""

    @property
    def cadence(self) -> timing.Cadence:
        return timing.Cadence(kind=timing.CRON, cron=timing.normalize_cron(self.cron), timezone=self.zone)


@dataclass
class SeedResult:
    ids: list[int]
    specs: list[TriggerSpec]
    now: datetime
    seconds: float
    crontabs: int
    checked: int = 0
    timings: dict[str, float] = field(default_factory=dict)

    def spec_of(self) -> dict[int, TriggerSpec]:
        return dict(zip(self.ids, self.specs, strict=True))


# --- Layouts ------------------------------------------------------------------------------------


def _priority(i: int) -> str:
    # Not i % 3: triggers due in the same minute (same i % 60) would all share one queue.
    return PRIORITIES[(i // 300) % len(PRIORITIES)]


def _offset_minutes(zone: str, at: datetime) -> int:
    offset = at.astimezone(ZoneInfo(zone)).utcoffset()
    return int(offset.total_seconds() // 60)


# Distinct (minute, zone, day) combinations quiet_spec can make: 60 x 5 x 26.
MAX_DISTINCT = 60 * len(ZONES) * 26


def quiet_spec(i: int, now: datetime, distinct: int = 1000) -> TriggerSpec:
    """Far from due: one minute of two hours ~12 h from now, on one day of the month (2-27).

    ``distinct`` (at most MAX_DISTINCT) is how many different (cron, zone) pairs, hence
    CrontabSchedule rows, the quiet triggers use: it matters to stock django-celery-beat, whose
    load builds one CASE branch per crontab row (and fails on SQLite from 1,000). A list of hours,
    because django-celery-beat skips single-hour crontabs more than 2 h away when it loads: a list
    is always loaded, the expensive case.
    """
    c = i % max(1, min(distinct, MAX_DISTINCT))
    zone = ZONES[(c // 60) % len(ZONES)]
    far = now + timedelta(hours=12)
    hour = far.astimezone(ZoneInfo(zone)).hour
    hours = (hour, hour + 1) if hour < 23 else (22, 23)
    minute = c % 60
    day = 2 + (c // 300) % 26
    cron = f"{minute} {hours[0]},{hours[1]} {day} * *"
    offset = _offset_minutes(zone, far)
    utc_minute = (minute - offset) % 60
    utc_hours = sorted({((h * 60 + minute - offset) // 60) % 24 for h in hours})
    utc_cron = f"{utc_minute} {','.join(map(str, utc_hours))} {day} * *"
    return TriggerSpec(cron, zone, _priority(i), utc_cron, exact=False)


def quiet_layout(count: int, now: datetime, distinct: int = 1000) -> list[TriggerSpec]:
    return [quiet_spec(i, now, distinct) for i in range(count)]


def lag_layout(count: int, now: datetime) -> list[TriggerSpec]:
    """1/60 of the triggers fall due each minute: cron ``m * * * *`` with m = i % 60, five zones."""
    specs = []
    for i in range(count):
        zone = ZONES[(i // 60) % len(ZONES)]
        minute = i % 60
        utc_minute = (minute - _offset_minutes(zone, now)) % 60
        specs.append(TriggerSpec(f"{minute} * * * *", zone, _priority(i), f"{utc_minute} * * * *"))
    return specs


def burst_layout(count: int, now: datetime, at: datetime, due: int, distinct: int = 1000) -> list[TriggerSpec]:
    """The first ``due`` triggers fire once at ``at`` (a minute boundary, five zones); the rest are quiet."""
    specs = []
    for i in range(count):
        if i < due:
            zone = ZONES[i % len(ZONES)]
            local = at.astimezone(ZoneInfo(zone))
            utc = at.astimezone(UTC)
            specs.append(
                TriggerSpec(
                    f"{local.minute} {local.hour} * * *",
                    zone,
                    _priority(i),
                    f"{utc.minute} {utc.hour} * * *",
                )
            )
        else:
            specs.append(quiet_spec(i, now, distinct))
    return specs


def neighbours_layout(count: int, now: datetime, neighbours: int, distinct: int = 1000) -> list[TriggerSpec]:
    """The first ``neighbours`` triggers fire every minute (UTC, overlap allowed); the rest are quiet."""
    return [
        TriggerSpec("* * * * *", "UTC", _priority(i), "* * * * *", overlap="allow")
        if i < neighbours
        else quiet_spec(i, now, distinct)
        for i in range(count)
    ]


# --- Database seeding ---------------------------------------------------------------------------


def reset_triggers() -> None:
    """Delete every trigger, its executions and periodic task, and orphaned crontabs (raw deletes)."""
    from django_celery_beat.models import ClockedSchedule, CrontabSchedule, PeriodicTask, PeriodicTasks

    from schedules.models import Execution, ExecutionStats, Trigger

    def raw_delete(queryset) -> None:
        queryset._raw_delete(queryset.db)

    raw_delete(Execution.objects.all())
    raw_delete(ExecutionStats.objects.all())
    raw_delete(Trigger.objects.all())
    raw_delete(PeriodicTask.objects.filter(task=FIRE_TASK))
    raw_delete(CrontabSchedule.objects.filter(periodictask=None))
    raw_delete(ClockedSchedule.objects.filter(periodictask=None))
    PeriodicTasks.update_changed()


def bench_owner_and_workflow():
    from django.contrib.auth import get_user_model

    from workflows.models import Workflow
    from workflows.services import workflow_create

    owner, _ = get_user_model().objects.get_or_create(username=BENCH_USER)
    workflow = Workflow.objects.filter(owner=owner, name=BENCH_WORKFLOW).first()
    if workflow is None:
        # A closed port on loopback, never called (no workers run in the benchmarks).
        workflow = workflow_create(owner=owner, name=BENCH_WORKFLOW, endpoint_url="http://127.0.0.1:9/")
    return owner, workflow


def _crontab_fields(spec: TriggerSpec) -> tuple[str, str, str, str, str, str]:
    # As schedules.beat._crontab_for: the normalized cron, split, plus the trigger's zone.
    minute, hour, day_of_month, month_of_year, day_of_week = timing.normalize_cron(spec.cron).split(" ")
    return (minute, hour, day_of_month, month_of_year, day_of_week, spec.zone)


def _options(spec: TriggerSpec) -> dict[str, str]:
    return {"overlap": spec.overlap} if spec.overlap else {}


def _row_key(row) -> tuple[str, str, str, str, str, str]:
    return (row.minute, row.hour, row.day_of_month, row.month_of_year, row.day_of_week, str(row.timezone))


def _next_ids(model, count: int) -> list[int]:
    from django.db.models import Max

    start = (model.objects.aggregate(top=Max("id"))["top"] or 0) + 1
    return list(range(start, start + count))


def _reset_sequences(*models) -> None:
    from django.core.management.color import no_style
    from django.db import connection

    statements = connection.ops.sequence_reset_sql(no_style(), list(models))
    with connection.cursor() as cursor:
        for sql in statements:
            cursor.execute(sql)


def _insert(model, template, rows: list[dict]) -> None:
    """Insert rows fast: each row is ``template``'s field values (or its own ``_template``'s)
    overridden by the row's, every value prepared by the model field's own get_db_prep_save (as
    Model.save would), written with COPY on PostgreSQL and executemany elsewhere."""
    from django.db import connection

    fields = model._meta.concrete_fields
    columns = [f.column for f in fields]
    prepared: dict[int, list] = {}

    def base(obj) -> list:
        key = id(obj)
        if key not in prepared:
            prepared[key] = [f.get_db_prep_save(getattr(obj, f.attname), connection) for f in fields]
        return prepared[key]

    varying = {f.attname: (i, f) for i, f in enumerate(fields)}
    values = []
    for row in rows:
        template_obj = row.get("_template", template)
        out = list(base(template_obj))
        for name, value in row.items():
            if name == "_template":
                continue
            i, f = varying[name]
            out[i] = f.get_db_prep_save(value, connection)
        values.append(out)
    table = connection.ops.quote_name(model._meta.db_table)
    quoted = ", ".join(connection.ops.quote_name(c) for c in columns)
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            with cursor.cursor.copy(f"COPY {table} ({quoted}) FROM STDIN") as copy:
                for out in values:
                    copy.write_row(out)
        else:
            marks = ", ".join(["%s"] * len(columns))
            for start in range(0, len(values), 5000):
                # Table and column names from the model's meta; the values are parameters.
                sql = f"INSERT INTO {table} ({quoted}) VALUES ({marks})"  # noqa: S608
                cursor.executemany(sql, values[start : start + 5000])


def seed_triggers(
    specs: Sequence[TriggerSpec], *, now: datetime | None = None, batch_size: int = 2000, check: bool = True
) -> SeedResult:
    """Replace every trigger with one per spec (see the module docstring). Returns ids in spec order."""
    from django.db import transaction
    from django.utils import timezone
    from django_celery_beat.models import CrontabSchedule, PeriodicTask, PeriodicTasks

    from schedules import beat, services
    from schedules.models import Trigger
    from schedules.validators import validate_cron

    started = time.perf_counter()
    now = now or timezone.now()
    timings: dict[str, float] = {}
    reset_triggers()
    owner, workflow = bench_owner_and_workflow()
    timings["reset_s"] = time.perf_counter() - started

    # One template per (zone, priority) from services.trigger_build, which runs every check
    # trigger_create runs (full_clean included) and fills the defaults (retry settings from the
    # workflow). Each further distinct cron gets the schedule checks of _check_schedule (the
    # model's cron validator, validate_cadence, beat.check_schedulable): full_clean costs ~3 ms a
    # call (foreign-key queries), too slow for thousands of distinct crons.
    t0 = time.perf_counter()
    templates: dict[tuple[str, str, str], dict] = {}
    derived: dict[tuple[str, str], tuple[datetime | None, str]] = {}
    skip = {"id", "name", "cron", "created_at", "updated_at", "periodic_task_id", "active_since", "next_run_at"}
    for spec in specs:
        if (spec.zone, spec.priority, spec.overlap) not in templates:
            template = services.trigger_build(
                owner=owner,
                workflow=workflow,
                name="template",
                kind="cron",
                cron=spec.cron,
                timezone_name=spec.zone,
                priority=spec.priority,
                now=now,
                **_options(spec),
            )
            fields = {f.attname: getattr(template, f.attname) for f in Trigger._meta.concrete_fields}
            templates[(spec.zone, spec.priority, spec.overlap)] = {k: v for k, v in fields.items() if k not in skip}
        if (spec.cron, spec.zone) not in derived:
            validate_cron(spec.cron)
            cadence = spec.cadence
            timing.validate_cadence(cadence, now=now)
            beat.check_schedulable(cadence)
            derived[(spec.cron, spec.zone)] = (timing.next_slot_after(cadence, now), timing.describe(cadence))
    timings["validate_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    with transaction.atomic():
        # Crontabs: reuse an identical row (lowest id first, as beat._crontab_for), create the rest.
        wanted = {_crontab_fields(spec) for spec in specs}
        crontab_ids: dict[tuple[str, ...], int] = {}
        for row in CrontabSchedule.objects.order_by("-id"):
            crontab_ids[_row_key(row)] = row.id
        missing = [
            CrontabSchedule(
                minute=k[0], hour=k[1], day_of_month=k[2], month_of_year=k[3], day_of_week=k[4], timezone=ZoneInfo(k[5])
            )
            for k in sorted(wanted - set(crontab_ids))
        ]
        for row in CrontabSchedule.objects.bulk_create(missing, batch_size=batch_size):
            crontab_ids[_row_key(row)] = row.id
        timings["crontabs_s"] = time.perf_counter() - t0

        # Ids chosen up front, so each PeriodicTask can name its trigger and each trigger link its task.
        trigger_ids = _next_ids(Trigger, len(specs))
        task_ids = _next_ids(PeriodicTask, len(specs))
        t0 = time.perf_counter()
        # A PeriodicTask as trigger_sync(trigger, restart_at=now) fills it; per row only these vary.
        task_template = PeriodicTask(
            name="",
            task=FIRE_TASK,
            args="[]",
            kwargs="{}",
            interval=None,
            clocked=None,
            solar=None,
            one_off=False,
            enabled=True,
            exchange=None,
            routing_key=None,
            headers="{}",
            priority=None,
            start_time=None,
            expires=None,
            expire_seconds=None,
            total_run_count=0,
            date_changed=now,
        )
        task_rows = []
        for index, spec in enumerate(specs):
            next_run_at, description = derived[(spec.cron, spec.zone)]
            task_rows.append(
                {
                    "id": task_ids[index],
                    "name": f"trigger:{trigger_ids[index]}",
                    "kwargs": json.dumps({"trigger_id": trigger_ids[index]}),
                    "description": f"bench-{index}: {description}"[:2000],
                    "crontab_id": crontab_ids[_crontab_fields(spec)],
                    "enabled": next_run_at is not None,
                    "queue": spec.priority or None,
                    # PeriodicTask.save() clears last_run_at of a disabled task.
                    "last_run_at": now if next_run_at is not None else None,
                }
            )
        _insert(PeriodicTask, task_template, task_rows)
        del task_rows
        timings["periodic_tasks_s"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        trigger_templates = {key: Trigger(**fields) for key, fields in templates.items()}
        trigger_rows = []
        for index, spec in enumerate(specs):
            next_run_at, _ = derived[(spec.cron, spec.zone)]
            trigger_rows.append(
                {
                    "id": trigger_ids[index],
                    "name": f"bench-{index}",
                    "cron": spec.cron,
                    "active_since": now,
                    "next_run_at": next_run_at,
                    "periodic_task_id": task_ids[index],
                    "created_at": now,
                    "updated_at": now,
                    "_template": trigger_templates[(spec.zone, spec.priority, spec.overlap)],
                }
            )
        _insert(Trigger, None, trigger_rows)
        del trigger_rows
        timings["triggers_s"] = time.perf_counter() - t0
        _reset_sequences(Trigger, PeriodicTask, CrontabSchedule)
    # Bulk writes skip the change signal: tell beat (TRAPS.md, "Losses").
    PeriodicTasks.update_changed()
    result = SeedResult(
        ids=trigger_ids,
        specs=list(specs),
        now=now,
        seconds=time.perf_counter() - started,
        crontabs=len(wanted),
        timings=timings,
    )
    if check:
        t0 = time.perf_counter()
        result.checked = self_check(result, owner=owner, workflow=workflow)
        timings["self_check_s"] = time.perf_counter() - t0
    return result


class SeedMismatch(AssertionError):
    pass


# Fields that legitimately differ between a seeded trigger and one made by trigger_create.
_TRIGGER_IGNORED = {"id", "name", "created_at", "updated_at", "periodic_task_id"}
_TASK_IGNORED = {"id", "name", "kwargs", "description", "date_changed"}


def self_check(result: SeedResult, *, owner, workflow, samples: int = 2) -> int:
    """Create ``samples`` triggers through services.trigger_create (same cron, zone, priority and
    ``now``) inside a transaction that is rolled back, and compare every field of the Trigger and
    its PeriodicTask (crontab row included) with the seeded ones. Raises SeedMismatch on any difference.
    """
    from django.db import transaction
    from django_celery_beat.models import PeriodicTask

    from schedules import services
    from schedules.models import Trigger

    # Samples in different zones and priorities.
    picks: list[int] = []
    seen: set[tuple[str, str, str]] = set()
    for index, spec in enumerate(result.specs):
        if (spec.zone, spec.priority, spec.overlap) not in seen:
            seen.add((spec.zone, spec.priority, spec.overlap))
            picks.append(index)
        if len(picks) >= samples:
            break
    problems: list[str] = []
    with transaction.atomic():
        for index in picks:
            spec = result.specs[index]
            seeded = Trigger.objects.select_related("periodic_task").get(pk=result.ids[index])
            made = services.trigger_create(
                owner=owner,
                workflow=workflow,
                name=f"self-check-{index}",
                kind="cron",
                cron=spec.cron,
                timezone_name=spec.zone,
                priority=spec.priority,
                now=result.now,
                **_options(spec),
            )
            made = Trigger.objects.select_related("periodic_task").get(pk=made.pk)
            for f in Trigger._meta.concrete_fields:
                if f.attname in _TRIGGER_IGNORED:
                    continue
                a, b = getattr(seeded, f.attname), getattr(made, f.attname)
                if a != b:
                    problems.append(f"trigger {seeded.pk}.{f.attname}: seeded {a!r} != trigger_create {b!r}")
            st, mt = seeded.periodic_task, made.periodic_task
            if st is None or mt is None:
                problems.append(f"trigger {seeded.pk}: periodic task seeded={st!r} created={mt!r}")
                continue
            for f in PeriodicTask._meta.concrete_fields:
                if f.attname in _TASK_IGNORED:
                    continue
                a, b = getattr(st, f.attname), getattr(mt, f.attname)
                if a != b:
                    problems.append(f"periodic task {st.name}.{f.attname}: seeded {a!r} != trigger_sync {b!r}")
            if st.name != f"trigger:{seeded.pk}" or mt.name != f"trigger:{made.pk}":
                problems.append(f"names: {st.name!r} / {mt.name!r}")
            if json.loads(st.kwargs) != {"trigger_id": seeded.pk} or json.loads(mt.kwargs) != {"trigger_id": made.pk}:
                problems.append(f"kwargs: {st.kwargs!r} / {mt.kwargs!r}")
            strip = len(seeded.name) + 2, len(made.name) + 2
            if st.description[strip[0] :] != mt.description[strip[1] :]:
                problems.append(f"description: {st.description!r} / {mt.description!r}")
        transaction.set_rollback(True)
    if problems:
        raise SeedMismatch("seeded rows differ from services.trigger_create:\n  " + "\n  ".join(problems))
    return len(picks)


# --- RedBeat --------------------------------------------------------------------------------------


def utc_crontab(spec: TriggerSpec, app):
    from celery.schedules import crontab

    minute, hour, day_of_month, month_of_year, day_of_week = spec.utc_cron.split(" ")
    return crontab(
        minute=minute,
        hour=hour,
        day_of_month=day_of_month,
        month_of_year=month_of_year,
        day_of_week=day_of_week,
        app=app,
    )


def check_utc_equivalents(specs: Sequence[TriggerSpec], now: datetime, *, horizon: timedelta) -> int:
    """RedBeat's UTC crons fire on the trigger's slots: for exact specs the next 3 slots agree
    (schedules.timing on the zone's cron vs the UTC cron read in UTC); quiet filler is not due
    within ``horizon`` in either form. Returns the cadences checked; raises SeedMismatch."""
    checked = 0
    for spec in {(s.cron, s.zone, s.utc_cron, s.exact): s for s in specs}.values():
        utc = timing.Cadence(kind=timing.CRON, cron=timing.normalize_cron(spec.utc_cron), timezone="UTC")
        ours, theirs = timing.upcoming(spec.cadence, now, 3), timing.upcoming(utc, now, 3)
        if spec.exact and ours != theirs:
            raise SeedMismatch(f"{spec}: trigger slots {ours} != UTC cron slots {theirs}")
        if not spec.exact and min(ours[0], theirs[0]) - now < horizon:
            raise SeedMismatch(f"{spec}: quiet trigger due within {horizon} ({ours[0]}, {theirs[0]})")
        checked += 1
    return checked


def seed_redbeat(
    app, specs: Sequence[TriggerSpec], ids: Sequence[int], *, now: datetime, redis_url: str, batch: int = 1000
) -> float:
    """Flush RedBeat's Redis database and store one RedBeatSchedulerEntry per trigger (name
    ``trigger:<id>``, the trigger's task and kwargs, its queue, a UTC crontab, ``last_run_at=now``).

    Written as ``RedBeatSchedulerEntry.save()`` writes (HSET definition, HSETNX meta, ZADD score),
    but pipelined by ``batch`` entries: save() costs a round trip per entry. Checked afterwards:
    two entries are saved again with the real save() and must leave identical keys. Returns seconds.
    """
    from redbeat.decoder import RedBeatJSONEncoder
    from redbeat.schedulers import RedBeatSchedulerEntry, ensure_conf, get_redis

    started = time.perf_counter()
    app.conf.redbeat_redis_url = redis_url
    conf = ensure_conf(app)
    client = get_redis(app)
    client.flushdb()
    schedules: dict[str, tuple[object, float]] = {}
    entries = []

    def write(chunk) -> None:
        with client.pipeline(transaction=False) as pipe:
            for entry, score in chunk:
                definition = {
                    "name": entry.name,
                    "task": entry.task,
                    "args": entry.args,
                    "kwargs": entry.kwargs,
                    "options": entry.options,
                    "schedule": entry.schedule,
                    "enabled": entry.enabled,
                }
                pipe.hset(entry.key, "definition", json.dumps(definition, cls=RedBeatJSONEncoder))
                pipe.hsetnx(entry.key, "meta", json.dumps({"last_run_at": entry.last_run_at}, cls=RedBeatJSONEncoder))
                pipe.zadd(conf.schedule_key, {entry.key: score})
            pipe.execute()

    crontabs: dict[str, object] = {}

    def make(tid: int, spec: TriggerSpec) -> tuple[RedBeatSchedulerEntry, float]:
        # The score save() writes is last_run_at + remaining_estimate(last_run_at), which depends on
        # the clock too: one per crontab and batch (a fraction of a second), not one per entry.
        if spec.utc_cron not in schedules:
            schedule = crontabs.get(spec.utc_cron) or crontabs.setdefault(spec.utc_cron, utc_crontab(spec, app))
            probe = RedBeatSchedulerEntry(name="probe", task=FIRE_TASK, schedule=schedule, last_run_at=now, app=app)
            schedules[spec.utc_cron] = (schedule, probe.score)
        schedule, score = schedules[spec.utc_cron]
        entry = RedBeatSchedulerEntry(
            name=f"trigger:{tid}",
            task=FIRE_TASK,
            schedule=schedule,
            kwargs={"trigger_id": tid},
            options={"queue": spec.priority},
            last_run_at=now,
            app=app,
        )
        return entry, score

    def check(tid: int, spec: TriggerSpec) -> None:
        # The real save() of an entry just written in a batch must leave the same keys.
        entry, _ = make(tid, spec)
        before = (client.hgetall(entry.key), client.zscore(conf.schedule_key, entry.key))
        client.delete(entry.key)
        client.zrem(conf.schedule_key, entry.key)
        entry.save()
        after = (client.hgetall(entry.key), client.zscore(conf.schedule_key, entry.key))
        # The score depends on the clock when computed (see make): equal within a second.
        if before[0] != after[0] or abs((before[1] or 0) - (after[1] or 0)) > 1:
            raise SeedMismatch(f"RedBeat entry {entry.key}: batch wrote {before}, save() writes {after}")

    pending: list[tuple[int, TriggerSpec]] = []
    for index, (tid, spec) in enumerate(zip(ids, specs, strict=True)):
        entries.append(make(tid, spec))
        pending.append((tid, spec))
        if len(entries) >= batch or index == len(ids) - 1:
            write(entries)
            if index < batch or index == len(ids) - 1:
                check(*pending[0])
            entries, pending = [], []
            schedules.clear()
    return time.perf_counter() - started
