"""Beat at scale: every beat figure of issue 7, ours beside stock components in the same run.

Schedulers (black boxes, by class path): stock django-celery-beat ``DatabaseScheduler``, RedBeat
(``redbeat.RedBeatScheduler``, entries in a Redis database of its own) and ours
(``schedules.beat:TriggerScheduler``, whatever that class is at the time). Figures:

1. load: in-process construction + first tick (time, RSS, tracemalloc), and a real beat's start to
   its first message and its RSS (/proc);
2. idle tick with nothing due, in-process: median and p99;
3. one edit: in-process, the tick after an edit; real beat, a new and an edited trigger due ~3 s
   after the edit (how late their messages reach the broker) and the lag of neighbours due on the
   same minutes against a minute without an edit (stall);
4. burst: 10,000 triggers due on one minute, real beat: when all are in the broker, sends/s;
5. lag: a real beat with 1/60 of the triggers due each minute, each message's lag behind its slot;
6. SQLite: the load with thousands of distinct crontabs (stock fails from 1,000).

A consumer (bench/observer.py) drains the queues high/normal/low of the broker's Redis database
and stamps each message; no worker runs. Every address is loopback, and the sockets of each beat
process are checked. Seeding: bench/seed.py (bulk rows identical to the services', self-checked).

    .venv/bin/python bench/beat_scale.py --sizes 10000,100000 --lag-minutes 10
    .venv/bin/python bench/beat_scale.py --sizes 2000 --only burst --schedulers ours,stock

It EMPTIES the triggers of the PostgreSQL database given (default bench_beat) and FLUSHES Redis
databases 13 (broker) and 14 (RedBeat): give it scratch ones. One run at a time per broker
database (a lock key there refuses a second). Results are printed and appended to bench/RESULTS.md.

No worker runs, so every execution stays queued: a beat that applies the overlap policy itself sees
the previous slot unfinished (figure 3's every-minute triggers allow overlap), and one that sends a
slot again when its hand-off lease runs out shows duplicates (counted; lags use first arrivals).
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import math
import os
import platform
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULT_DATABASE = "postgres://postgres@127.0.0.1:5432/bench_beat"
DEFAULT_BROKER = "redis://127.0.0.1:6379/13"
DEFAULT_REDBEAT = "redis://127.0.0.1:6379/14"
RESULT_TAG = "BENCH-RESULT "
FIGURES = ("load", "idle", "edit", "burst", "lag", "sqlite")


@dataclass(frozen=True)
class SchedulerKind:
    key: str
    label: str
    path: str
    store: str  # "db" (reads PeriodicTask/Trigger rows) or "redis" (RedBeat entries)

    @property
    def settings(self) -> str:
        return "bench.redbeat_settings" if self.store == "redis" else "scheduler_project.settings"


SCHEDULERS = {
    "stock": SchedulerKind("stock", "stock DatabaseScheduler", "django_celery_beat.schedulers:DatabaseScheduler", "db"),
    "redbeat": SchedulerKind("redbeat", "RedBeat 2.4.2", "redbeat.RedBeatScheduler", "redis"),
    "ours": SchedulerKind("ours", "ours TriggerScheduler", "schedules.beat:TriggerScheduler", "db"),
}


def log(message: str) -> None:
    print(f"[{datetime.now(UTC):%H:%M:%S}] {message}", file=sys.stderr, flush=True)


def require_loopback(url: str) -> None:
    """Refuse any service address that is not on this machine's loopback."""
    parsed = urlparse(url)
    if parsed.scheme.startswith("sqlite") or parsed.scheme == "memory":
        return
    host = parsed.hostname or ""
    try:
        ok = ipaddress.ip_address(host).is_loopback
    except ValueError:
        ok = False
    if not ok:
        raise SystemExit(f"{url}: the benchmark talks to 127.0.0.1 only")


def ensure_database(database_url: str) -> None:
    """Create the PostgreSQL database if it is missing (a fresh machine), so one command runs it all."""
    import psycopg

    parts = urlparse(database_url)
    name = parts.path.lstrip("/")
    admin = parts._replace(path="/postgres").geturl()
    with psycopg.connect(admin, autocommit=True) as connection:
        if connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone() is None:
            connection.execute(f'CREATE DATABASE "{name}"')
            log(f"created database {name}")


def setup_django(database_url: str, settings: str = "scheduler_project.settings", data_dir: str | None = None) -> None:
    os.environ["DJANGO_SETTINGS_MODULE"] = settings
    os.environ["DATABASE_URL"] = database_url
    # Whatever the harness process itself would publish goes nowhere: the broker database holds
    # only what the beat under test sends.
    os.environ["CELERY_BROKER_URL"] = "memory://"
    os.environ.setdefault("SCHEDULER_OUTBOUND_ALLOW_NETWORKS", "127.0.0.0/8")
    os.environ["SCHEDULER_DATA_DIR"] = data_dir or tempfile.mkdtemp(prefix="beat-scale-")
    import logging

    import django

    django.setup()
    logging.disable(logging.WARNING)


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1))
    return ordered[rank]


def censored_percentile(values: list[tuple[float, bool]], q: float) -> tuple[float, bool] | None:
    """The q-quantile of (value, censored) pairs; censored means "at least this" (never arrived)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1))]


def proc_status(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM (peak) of a process, in MB."""
    out: dict[str, float] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                out[name] = int(value.split()[0]) / 1024
    except OSError:
        pass
    return out


def proc_cpu_seconds(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def _hex_address(text: str) -> str:
    host = text.split(":")[0]
    raw = bytes.fromhex(host)
    if len(raw) == 4:
        return str(ipaddress.IPv4Address(raw[::-1]))
    words = [raw[i : i + 4][::-1] for i in range(0, 16, 4)]
    return str(ipaddress.IPv6Address(b"".join(words)))


def foreign_peers(pid: int) -> set[str]:
    """Remote addresses of the process's TCP/UDP sockets that are not loopback (or unset)."""
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    peers: set[str] = set()
    for table in ("tcp", "tcp6", "udp", "udp6"):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
                parts = line.split()
                if len(parts) < 10 or parts[9] not in inodes:
                    continue
                address = ipaddress.ip_address(_hex_address(parts[2]))
                mapped = getattr(address, "ipv4_mapped", None)
                if not (address.is_loopback or address.is_unspecified or (mapped and mapped.is_loopback)):
                    peers.add(f"{table}:{address}")
    return peers


# --- Child processes: seeding on another database, in-process measurements ------------------------


def run_child(mode: str, config: dict, env: dict[str, str], log_path: Path, timeout: float = 3600) -> dict:
    """Run this script in a fresh interpreter (clean memory, its own settings) and read its result."""
    command = [sys.executable, str(Path(__file__).resolve()), mode, json.dumps(config)]
    with open(log_path, "a") as out:
        out.write(f"\n$ {mode} {json.dumps(config)}\n")
        out.flush()
        proc = subprocess.run(
            command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=out, text=True, timeout=timeout
        )
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_TAG)]
    if not lines:
        tail = log_path.read_text()[-3000:]
        raise RuntimeError(f"{mode} failed (exit {proc.returncode}); log {log_path}:\n{tail}")
    return json.loads(lines[-1][len(RESULT_TAG) :])


def child_env(database_url: str, settings: str, data_dir: str, redbeat_url: str = DEFAULT_REDBEAT) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        BENCH_REDBEAT_URL=redbeat_url,
        DATABASE_URL=database_url,
        DJANGO_SETTINGS_MODULE=settings,
        CELERY_BROKER_URL="memory://",
        SCHEDULER_DATA_DIR=data_dir,
        SCHEDULER_OUTBOUND_ALLOW_NETWORKS="127.0.0.0/8",
    )
    return env


def child_seed(config: dict) -> dict:
    """Seed a layout (used for SQLite, whose database the orchestrator does not hold)."""
    setup_django(os.environ["DATABASE_URL"], data_dir=os.environ.get("SCHEDULER_DATA_DIR"))
    from django.utils import timezone

    from bench import seed

    now = timezone.now()
    specs = seed.quiet_layout(config["count"], now, config["distinct"])
    result = seed.seed_triggers(specs, now=now)
    prime_housekeeping_db(now)
    return {"seconds": result.seconds, "crontabs": result.crontabs, "checked": result.checked}


def child_micro(config: dict) -> dict:
    """Figures 1, 2 and the in-process part of 3: load, idle ticks, the tick after one edit."""
    import gc
    import tracemalloc

    setup_django(os.environ["DATABASE_URL"], os.environ["DJANGO_SETTINGS_MODULE"], os.environ["SCHEDULER_DATA_DIR"])
    from celery.signals import before_task_publish
    from kombu.utils.imports import symbol_by_name

    from scheduler_project.celery import app

    kind = SCHEDULERS[config["key"]]
    scheduler_class = symbol_by_name(config["path"])
    published = [0]

    def count_publish(**_: Any) -> None:
        published[0] += 1

    before_task_publish.connect(count_publish, weak=False)
    gc.collect()
    baseline = proc_status(os.getpid()).get("VmRSS", 0.0)
    out: dict[str, Any] = {"rss_baseline_mb": baseline}
    if config.get("tracemalloc"):
        tracemalloc.start()
    started = time.perf_counter()
    try:
        scheduler = scheduler_class(app=app, lazy=False)
        if kind.store == "redis":
            # What celery beat's beat_init signal does for RedBeat: take its lock.
            from types import SimpleNamespace

            from redbeat.schedulers import acquire_distributed_beat_lock

            acquire_distributed_beat_lock(sender=SimpleNamespace(scheduler=scheduler))
        scheduler.tick()
    except Exception as exc:  # noqa: BLE001 - a failed load is a result (SQLite)
        out.update(ok=False, error=f"{type(exc).__name__}: {exc}"[:400], load_s=time.perf_counter() - started)
        return out
    out.update(ok=True, load_s=time.perf_counter() - started, load_publishes=published[0])
    if config.get("tracemalloc"):
        current, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        out.update(traced_mb=current / 2**20, traced_peak_mb=peak / 2**20)
        return out
    status = proc_status(os.getpid())
    out.update(rss_mb=status.get("VmRSS"), rss_peak_mb=status.get("VmHWM"))

    # Idle ticks: nothing due (quiet triggers); a tick that published (housekeeping every 10 s)
    # is not idle and is left out.
    idle: list[float] = []
    busy = 0
    deadline = time.monotonic() + config["idle_seconds"]
    while len(idle) < config["idle_ticks"] and time.monotonic() < deadline:
        before = published[0]
        t0 = time.perf_counter()
        scheduler.tick()
        elapsed = time.perf_counter() - t0
        if published[0] != before:
            busy += 1
        else:
            idle.append(elapsed)
    out.update(
        idle_ticks=len(idle),
        idle_busy_ticks=busy,
        idle_median_ms=statistics.median(idle) * 1000 if idle else None,
        idle_p99_ms=percentile(idle, 0.99) * 1000 if idle else None,
    )
    if config.get("edit"):
        out["edit_tick_s"] = micro_edit(kind, scheduler, app)
    with contextlib.suppress(Exception):
        scheduler.close()
    return out


def micro_edit(kind: SchedulerKind, scheduler: Any, app: Any) -> float:
    """One edit (a trigger's cron moved by a minute, still far from now) and the tick after it."""
    if kind.store == "db":
        from schedules import services
        from schedules.models import Trigger

        first, second = Trigger.objects.order_by("pk")[:2]
        services.trigger_update(trigger=first, cron=second.cron)
    else:
        from celery.schedules import crontab
        from redbeat.schedulers import RedBeatSchedulerEntry

        entry = RedBeatSchedulerEntry.from_key(app.redbeat_conf.key_prefix + "trigger:1", app=app)
        entry.schedule = crontab(
            minute=(min(entry.schedule.minute) + 1) % 60,
            hour=",".join(map(str, sorted(entry.schedule.hour))),
            day_of_month=",".join(map(str, sorted(entry.schedule.day_of_month))),
            app=app,
        )
        entry.save()
    t0 = time.perf_counter()
    scheduler.tick()
    return time.perf_counter() - t0


# --- Housekeeping entries -----------------------------------------------------------------------


def housekeeping_tasks(app) -> set[str]:
    """Tasks beat sends on its own (beat_schedule, celery's backend cleanup): not trigger dispatch."""
    return {entry["task"] for entry in app.conf.beat_schedule.values()} | {"celery.backend_cleanup"}


def prime_housekeeping_db(now: datetime) -> None:
    """The PeriodicTask rows DatabaseScheduler makes for beat_schedule, last run a day ago (as after
    downtime), so a starting beat sends one at its first tick: its first message says it is up."""
    from django_celery_beat.models import PeriodicTask, PeriodicTasks
    from django_celery_beat.schedulers import ModelEntry

    from scheduler_project.celery import app

    names = []
    for name, entry in app.conf.beat_schedule.items():
        ModelEntry.from_entry(name, app=app, **entry)
        names.append(name)
    PeriodicTask.objects.filter(name__in=names).update(last_run_at=now - timedelta(days=1))
    PeriodicTasks.update_changed()


def prime_housekeeping_redbeat(app, now: datetime) -> None:
    from celery.schedules import maybe_schedule
    from redbeat.schedulers import RedBeatSchedulerEntry

    for name, entry in app.conf.beat_schedule.items():
        RedBeatSchedulerEntry(
            name=name,
            task=entry["task"],
            schedule=maybe_schedule(entry["schedule"], app=app),
            options=entry.get("options") or {},
            last_run_at=now - timedelta(days=1),
            app=app,
        ).save()


# --- A real celery beat ---------------------------------------------------------------------------


class BeatProcess:
    """``celery -A scheduler_project beat -S <class> -l warning`` in its own process group."""

    def __init__(
        self, kind: SchedulerKind, database_url: str, broker_url: str, redbeat_url: str, workdir: Path, label: str
    ):
        self.kind = kind
        self.env = dict(os.environ)
        data_dir = workdir / f"data-{label}"
        data_dir.mkdir(parents=True, exist_ok=True)
        self.env.update(
            DATABASE_URL=database_url,
            CELERY_BROKER_URL=broker_url,
            DJANGO_SETTINGS_MODULE=kind.settings,
            SCHEDULER_DATA_DIR=str(data_dir),
            BENCH_REDBEAT_URL=redbeat_url,
        )
        self.log_path = workdir / f"beat-{label}.log"
        self.proc: subprocess.Popen | None = None
        self.started_at = 0.0
        self.samples: list[tuple[float, float]] = []  # (time, RSS MB)
        self.peak_mb: float | None = None
        self.cpu_s: float | None = None
        self.peers: set[str] = set()
        self._stop = threading.Event()

    def start(self) -> None:
        celery = Path(sys.executable).parent / "celery"
        command = [str(celery), "-A", "scheduler_project", "beat", "-S", self.kind.path, "-l", "warning"]
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.started_at = time.time()
        self.proc = subprocess.Popen(
            command, cwd=ROOT, env=self.env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self._sampler = threading.Thread(target=self._sample, name="beat-sampler", daemon=True)
        self._sampler.start()

    def _sample(self) -> None:
        n = 0
        while not self._stop.is_set() and self.proc and self.proc.poll() is None:
            status = proc_status(self.proc.pid)
            if "VmRSS" in status:
                self.samples.append((time.time(), status["VmRSS"]))
                self.peak_mb = status.get("VmHWM", self.peak_mb)
            if n % 4 == 0:
                self.peers |= foreign_peers(self.proc.pid)
            n += 1
            self._stop.wait(0.5)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def rss_at(self, at: float) -> float | None:
        later = [rss for t, rss in self.samples if t >= at]
        return later[0] if later else (self.samples[-1][1] if self.samples else None)

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.peers |= foreign_peers(self.proc.pid)
            self.cpu_s = proc_cpu_seconds(self.proc.pid)
            self.peak_mb = proc_status(self.proc.pid).get("VmHWM", self.peak_mb)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self._stop.set()
        self._log.close()

    def exit_reason(self) -> str:
        """The beat's own last word: its CRITICAL (else ERROR) line, e.g. the exception it died of."""
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            lines = []
        picked = [line for line in lines if "CRITICAL" in line] or [line for line in lines if " ERROR " in line]
        text = picked[-1].split("] ", 1)[-1] if picked else " ".join(lines[-3:])
        code = self.proc.returncode if self.proc else None
        return f"exit {code}: {text[:200]}"

    def log_tail(self, chars: int = 1500) -> str:
        try:
            return self.log_path.read_text()[-chars:]
        except OSError:
            return ""


# --- Attributing messages to triggers and slots ------------------------------------------------------


@dataclass
class Seen:
    at: float
    trigger_id: int | None
    slot: datetime | None
    how: str  # message (slot in kwargs) | execution (its Execution row) | inferred | unknown
    queue: str


def parse_time(value: str) -> datetime | None:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def attribute(messages: list, cadences: dict[int, Any], housekeeping: set[str]) -> tuple[list[Seen], int]:
    """Each trigger message's trigger and slot: the slot it names (``scheduled_for``), else the
    slot of the Execution it names (``execution_id``), else the latest slot of the trigger's cron
    at or before its arrival (a lower bound of its lag: stock messages name no slot). Housekeeping
    messages (beat_schedule's own tasks) are left out; returns (seen, housekeeping count)."""
    from schedules import timing

    executions: dict[str, tuple[int, datetime]] = {}
    wanted = [m.execution_id for m in messages if m.execution_id and not m.scheduled_for]
    if wanted:
        from schedules.models import Execution

        for pk, trigger_id, slot in Execution.objects.filter(pk__in=wanted).values_list(
            "pk", "trigger_id", "scheduled_for"
        ):
            executions[str(pk)] = (trigger_id, slot)
    seen, skipped = [], 0
    for m in messages:
        if m.task in housekeeping:
            skipped += 1
            continue
        trigger_id, slot, how = m.trigger_id, None, "unknown"
        if m.scheduled_for:
            slot, how = parse_time(m.scheduled_for), "message"
        elif m.execution_id in executions:
            trigger_id, slot = executions[m.execution_id]
            how = "execution"
        if slot is None and trigger_id in cadences:
            slot = timing.latest_slot_at_or_before(cadences[trigger_id], datetime.fromtimestamp(m.at, UTC))
            how = "inferred"
        seen.append(Seen(m.at, trigger_id, slot, how, m.queue))
    return seen, skipped


def hows(seen: list[Seen]) -> dict[str, int]:
    return dict(Counter(s.how for s in seen))


# --- The orchestrator ------------------------------------------------------------------------------


def next_boundary(after: float) -> datetime:
    return datetime.fromtimestamp(math.ceil(after / 60) * 60, UTC)


class BeatExited(RuntimeError):
    """The beat under test died: a result (recorded with what it sent), not a harness failure."""


def sleep_until(at: float, beat: BeatProcess | None = None) -> None:
    while True:
        left = at - time.time()
        if left <= 0:
            return
        if beat is not None and not beat.alive():
            raise BeatExited(beat.exit_reason())
        time.sleep(min(left, 1.0))


@dataclass
class Context:
    args: argparse.Namespace
    workdir: Path
    app: Any
    housekeeping: set[str]
    observer: Any
    results: dict = field(default_factory=lambda: defaultdict(lambda: defaultdict(dict)))
    notes: list[str] = field(default_factory=list)
    peers: set[str] = field(default_factory=set)
    beats_checked: int = 0
    seed_rate: float = 8000.0  # triggers/s, refined by each seed

    def store(self, backend: str, size: int, key: str, figure: str, value: dict) -> None:
        self.results[(backend, size)][key][figure] = value


def seed_db(ctx: Context, specs: list, now: datetime) -> Any:
    from bench import seed

    result = seed.seed_triggers(specs, now=now)
    prime_housekeeping_db(result.now)
    ctx.seed_rate = len(specs) / max(result.seconds, 0.1)
    log(f"  seeded {len(specs):,} triggers in {result.seconds:.1f} s ({result.crontabs:,} crontabs, self-check ok)")
    return result


def seed_redis(ctx: Context, specs: list, ids: list[int], now: datetime) -> float:
    from bench import seed

    seconds = seed.seed_redbeat(ctx.app, specs, ids, now=now, redis_url=ctx.args.redbeat_url)
    prime_housekeeping_redbeat(ctx.app, now)
    log(f"  saved {len(specs):,} RedBeat entries in {seconds:.1f} s")
    return seconds


def layout(name: str, size: int, **params: Any) -> tuple[list, datetime]:
    from bench import seed

    now = datetime.now(UTC)
    distinct = params.get("distinct", 1000)
    if name == "quiet":
        specs = seed.quiet_layout(size, now, distinct)
    elif name == "lag":
        specs = seed.lag_layout(size, now)
    elif name == "burst":
        specs = seed.burst_layout(size, now, params["at"], params["due"], distinct)
    elif name == "neighbours":
        specs = seed.neighbours_layout(size, now, params["neighbours"], distinct)
    else:
        raise ValueError(name)
    checked = seed.check_utc_equivalents(specs, now, horizon=timedelta(hours=2))
    log(f"  layout {name}: {size:,} triggers, {checked:,} distinct cadences checked against their UTC crons")
    return specs, now


def prepare(ctx: Context, kind: SchedulerKind, specs: list, now: datetime) -> tuple[list[int], dict[int, Any]]:
    """Seed the layout where the scheduler reads it; returns trigger ids and their cadences."""
    if kind.store == "db":
        ids = seed_db(ctx, specs, now).ids
    else:
        ids = list(range(1, len(specs) + 1))
        seed_redis(ctx, specs, ids, now)
    cadence_of = {}
    cache: dict[tuple[str, str], Any] = {}
    for tid, spec in zip(ids, specs, strict=True):
        key = (spec.cron, spec.zone)
        if key not in cache:
            cache[key] = spec.cadence
        cadence_of[tid] = cache[key]
    return ids, cadence_of


def start_beat(ctx: Context, kind: SchedulerKind, label: str, size: int) -> tuple[BeatProcess, float | None]:
    """Start a real beat with the observer running; wait for its first message (it is up)."""
    ctx.observer.flush()
    ctx.observer.raw.clear()
    ctx.observer.start()
    beat = BeatProcess(kind, ctx.args.database_url, ctx.args.broker_url, ctx.args.redbeat_url, ctx.workdir, label)
    beat.start()
    deadline = time.time() + ctx.args.ready_timeout + size / 500
    while time.time() < deadline and ctx.observer.count() == 0:
        if not beat.alive():
            raise BeatExited(beat.exit_reason())
        time.sleep(0.05)
    first = ctx.observer.first_at()
    up = (first - beat.started_at) if first else None
    log(f"  {kind.key} beat up: first message {up:.1f} s after start" if up else f"  {kind.key} beat: no message yet")
    return beat, first


def stop_beat(ctx: Context, beat: BeatProcess) -> list:
    beat.stop()
    ctx.observer.stop()
    ctx.peers |= beat.peers
    ctx.beats_checked += 1
    return ctx.observer.messages()


def beat_facts(beat: BeatProcess, ready: float | None, wall_from: float) -> dict:
    wall = time.time() - wall_from
    return {
        "loadavg": os.getloadavg()[0],
        "up_s": (ready - beat.started_at) if ready else None,
        "rss_ready_mb": beat.rss_at(ready) if ready else None,
        "rss_peak_mb": beat.peak_mb,
        "cpu_s": beat.cpu_s,
        "wall_s": wall,
    }


def ready_estimate(ctx: Context, backend: str, size: int, key: str) -> float:
    micro = ctx.results[(backend, size)][key].get("load") or {}
    if micro.get("load_s"):
        return 1.5 * micro["load_s"] + 8
    return 8 + size * 0.0005


# Figure 1-2 (+3 in-process): in a fresh process per scheduler.
def run_micro(ctx: Context, kind: SchedulerKind, size: int, backend: str, database_url: str) -> dict:
    env = child_env(database_url, kind.settings, str(ctx.workdir / "data-micro"), ctx.args.redbeat_url)
    config = {
        "key": kind.key,
        "path": kind.path,
        "idle_seconds": ctx.args.idle_seconds,
        "idle_ticks": ctx.args.idle_ticks,
        "edit": backend == "pg",
    }
    out = run_child("_micro", config, env, ctx.workdir / "children.log")
    if out.get("ok") and size <= ctx.args.tracemalloc_max:
        traced = run_child("_micro", {**config, "tracemalloc": True, "edit": False}, env, ctx.workdir / "children.log")
        out.update({k: traced.get(k) for k in ("traced_mb", "traced_peak_mb")})
    return out


def figure_micro(ctx: Context, size: int, kinds: list[SchedulerKind]) -> None:
    log(f"figures 1-2 (in-process load, memory, idle tick, edit tick), PostgreSQL, {size:,} triggers")
    specs, now = layout("quiet", size, distinct=ctx.args.distinct_crons)
    ids = None
    for kind in kinds:
        if kind.store == "db" and ids is None:
            ids = seed_db(ctx, specs, now).ids
        if kind.store == "redis":
            seed_redis(ctx, specs, list(range(1, size + 1)), now)
        out = run_micro(ctx, kind, size, "pg", ctx.args.database_url)
        out["loadavg"] = os.getloadavg()[0]
        ctx.store("pg", size, kind.key, "load", out)
        log(
            f"  {kind.key}: load {fmt(out.get('load_s'), 's')}, RSS {fmt(out.get('rss_mb'), 'MB', 0)}, "
            f"idle tick median {fmt(out.get('idle_median_ms'), 'ms')} p99 {fmt(out.get('idle_p99_ms'), 'ms')}, "
            f"tick after an edit {fmt(out.get('edit_tick_s'), 's')}"
        )


def figure_burst(ctx: Context, size: int, kind: SchedulerKind, beats: int = 1) -> None:
    """Figure 4; with ``beats`` 2 (ours only: its beats share the dispatch), a second beat runs too."""
    due = min(ctx.args.burst, size)
    log(f"figure 4 (burst: {due:,} due on one minute), {kind.key}, {size:,} triggers, {beats} beat(s)")
    seed_s = size / ctx.seed_rate + 10
    at = next_boundary(time.time() + seed_s + ready_estimate(ctx, "pg", size, kind.key) + 5)
    specs, now = layout("burst", size, at=at, due=due, distinct=ctx.args.distinct_crons)
    ids, cadences = prepare(ctx, kind, specs, now)
    burst_ids = set(ids[:due])
    beat, ready = start_beat(ctx, kind, f"burst-{kind.key}-{size}", size)
    others = []
    for number in range(2, beats + 1):
        other = BeatProcess(
            kind, ctx.args.database_url, ctx.args.broker_url, ctx.args.redbeat_url, ctx.workdir, f"burst-{number}"
        )
        other.start()
        others.append(other)
    started = time.time()
    died = None
    try:
        deadline = at.timestamp() + ctx.args.burst_timeout
        taken, dispatched = 0, 0
        while time.time() < deadline:
            sleep_until(min(deadline, time.time() + 1), beat)
            upto = ctx.observer.count()
            fresh = ctx.observer.messages(since=taken, until=upto)
            taken = upto
            dispatched += sum(1 for m in fresh if m.task not in ctx.housekeeping)
            if dispatched >= due:
                # A little longer than beat's longest sleep: late duplicates, and a beat that dies at
                # its next tick (RedBeat, when the burst's tick outlasted its lock) is seen to.
                sleep_until(time.time() + 6, beat)
                break
    except BeatExited as exc:
        died = str(exc)
    finally:
        for other in others:
            other.stop()
            ctx.peers |= other.peers
            ctx.beats_checked += 1
        messages = stop_beat(ctx, beat)
    seen, _ = attribute(messages, cadences, ctx.housekeeping)
    mine = [s for s in seen if s.trigger_id in burst_ids or s.slot == at]
    times = sorted(s.at for s in mine)
    slot = at.timestamp()
    out: dict[str, Any] = {
        "due": due,
        "arrived": len({(s.trigger_id, s.slot) for s in mine}),
        "messages": len(mine),
        "hows": hows(mine),
        "ready_before_slot": bool(ready and ready < slot),
        "timeout_s": ctx.args.burst_timeout,
        "died": died,
        **beat_facts(beat, ready, started),
    }
    if times:
        out.update(first_s=times[0] - slot, last_s=times[-1] - slot)
        if len(times) > 1 and times[-1] > times[0]:
            out["rate"] = (len(times) - 1) / (times[-1] - times[0])
        out["all_s"] = out["last_s"] if out["arrived"] >= due else None
        if out["all_s"] is None and out.get("rate"):
            out["projected_all_s"] = out["first_s"] + due / out["rate"]
    if not out["ready_before_slot"]:
        ctx.notes.append(f"burst {kind.key} {size:,}: beat was not up before the slot (its load is in the figure)")
    ctx.store("pg", size, kind.key, "burst" if beats == 1 else "burst2", out)
    if died:
        log(f"  {kind.key} beat died: {died}")
    log(
        f"  {kind.key}: {out['arrived']:,}/{due:,} in the broker, first {fmt(out.get('first_s'), 's')}, "
        f"last {fmt(out.get('last_s'), 's')} after the slot, {fmt(out.get('rate'), '/s', 0)}"
    )


def figure_edit(ctx: Context, size: int, kind: SchedulerKind) -> None:

    neighbours = min(ctx.args.edit_neighbours, size - 1)
    log(f"figure 3 (one edit at N), {kind.key}, {size:,} triggers, {neighbours} neighbours due every minute")
    specs, now = layout("neighbours", size, neighbours=neighbours, distinct=ctx.args.distinct_crons)
    ids, cadences = prepare(ctx, kind, specs, now)
    neighbour_ids = set(ids[:neighbours])
    edited_id = ids[neighbours]
    lead = ctx.args.edit_lead
    beat, ready = start_beat(ctx, kind, f"edit-{kind.key}-{size}", size)
    started = time.time()
    # b0: a minute without an edit (control); b1: a new trigger created `lead` s before it and an
    # existing one moved onto it half a second later, both due on b1.
    b0 = next_boundary((ready or time.time()) + lead + 3)
    b1 = b0 + timedelta(minutes=1)
    edits: dict[str, dict] = {}
    died = None
    try:
        sleep_until(b1.timestamp() - lead, beat)
        edits["new"] = edit_create(ctx, kind, b1, new_id=max(ids) + 1)
        cadences[edits["new"]["trigger_id"]] = utc_cadence(b1)
        sleep_until(b1.timestamp() - lead + 0.5, beat)
        edits["edited"] = edit_update(ctx, kind, b1, edited_id, specs[neighbours])
        cadences[edited_id] = utc_cadence(b1)
        deadline = b1.timestamp() + ctx.args.edit_timeout
        wanted = {(edits["new"]["trigger_id"], b1), (edited_id, b1)} | {(tid, b1) for tid in neighbour_ids}
        while time.time() < deadline:
            sleep_until(min(deadline, time.time() + 1), beat)
            seen, _ = attribute(ctx.observer.messages(), cadences, ctx.housekeeping)
            if wanted <= {(s.trigger_id, s.slot) for s in seen}:
                time.sleep(1)
                break
    except BeatExited as exc:
        died = str(exc)
    finally:
        messages = stop_beat(ctx, beat)
    seen, _ = attribute(messages, cadences, ctx.housekeeping)
    out: dict[str, Any] = {
        "died": died,
        "lead_s": lead,
        "neighbours": neighbours,
        "hows": hows(seen),
        **beat_facts(beat, ready, started),
    }
    for name in ("new", "edited"):
        tid = edits.get(name, {}).get("trigger_id")
        hits = sorted(s.at for s in seen if s.trigger_id == tid and s.slot == b1)
        out[f"{name}_late_s"] = (hits[0] - b1.timestamp()) if hits else None
        out[f"{name}_edit_to_due_s"] = b1.timestamp() - edits.get(name, {}).get("at", b1.timestamp())
    # First arrival per (trigger, slot): a beat may send a slot again (a lease run out, no worker).
    first: dict[tuple[int | None, datetime | None], Seen] = {}
    for s in sorted(seen, key=lambda s: s.at):
        first.setdefault((s.trigger_id, s.slot), s)
    for name, boundary in (("control", b0), ("edit", b1)):
        lags = [
            s.at - boundary.timestamp() for s in first.values() if s.trigger_id in neighbour_ids and s.slot == boundary
        ]
        out[f"neighbours_{name}_max_s"] = max(lags) if lags else None
        out[f"neighbours_{name}_count"] = len(lags)
    if out["neighbours_edit_max_s"] is not None and out["neighbours_control_max_s"] is not None:
        out["stall_s"] = out["neighbours_edit_max_s"] - out["neighbours_control_max_s"]
    ctx.store("pg", size, kind.key, "edit", out)
    if died:
        log(f"  {kind.key} beat died: {died}")
    log(
        f"  {kind.key}: new trigger {fmt(out['new_late_s'], 's')} late, edited {fmt(out['edited_late_s'], 's')} late; "
        f"neighbours max lag {fmt(out['neighbours_control_max_s'], 's')} on the control minute, "
        f"{fmt(out['neighbours_edit_max_s'], 's')} on the edits' minute"
    )


def utc_cadence(due: datetime) -> Any:
    """The cadence of the edit triggers: daily at ``due``'s minute, UTC."""
    from schedules import timing

    return timing.Cadence(kind=timing.CRON, cron=f"{due.minute} {due.hour} * * *", timezone="UTC")


def edit_create(ctx: Context, kind: SchedulerKind, due: datetime, new_id: int) -> dict:
    cron = f"{due.minute} {due.hour} * * *"
    if kind.store == "db":
        from bench import seed
        from schedules import services

        owner, workflow = seed.bench_owner_and_workflow()
        trigger = services.trigger_create(
            owner=owner, workflow=workflow, name="bench-edit-new", kind="cron", cron=cron, timezone_name="UTC"
        )
        return {"trigger_id": trigger.pk, "at": time.time()}
    from redbeat.schedulers import RedBeatSchedulerEntry

    from bench import seed

    spec = seed.TriggerSpec(cron, "UTC", "normal", cron)
    RedBeatSchedulerEntry(
        name=f"trigger:{new_id}",
        task=seed.FIRE_TASK,
        schedule=seed.utc_crontab(spec, ctx.app),
        kwargs={"trigger_id": new_id},
        options={"queue": "normal"},
        last_run_at=datetime.now(UTC),
        app=ctx.app,
    ).save()
    return {"trigger_id": new_id, "at": time.time()}


def edit_update(ctx: Context, kind: SchedulerKind, due: datetime, trigger_id: int, spec: Any) -> dict:
    cron = f"{due.minute} {due.hour} * * *"
    if kind.store == "db":
        from schedules import services
        from schedules.models import Trigger

        services.trigger_update(trigger=Trigger.objects.get(pk=trigger_id), cron=cron, timezone_name="UTC")
        return {"trigger_id": trigger_id, "at": time.time()}
    from redbeat.schedulers import RedBeatSchedulerEntry

    from bench import seed

    entry = RedBeatSchedulerEntry.from_key(ctx.app.redbeat_conf.key_prefix + f"trigger:{trigger_id}", app=ctx.app)
    entry.schedule = seed.utc_crontab(seed.TriggerSpec(cron, "UTC", spec.priority, cron), ctx.app)
    entry.save()
    return {"trigger_id": trigger_id, "at": time.time()}


def figure_lag(ctx: Context, size: int, kind: SchedulerKind) -> None:
    from schedules import timing

    minutes = {"stock": ctx.args.lag_minutes_stock, "redbeat": ctx.args.lag_minutes_redbeat}.get(kind.key)
    minutes = minutes or ctx.args.lag_minutes
    log(f"figure 5 (real beat lag, 1/60 due each minute), {kind.key}, {size:,} triggers, {minutes} min")
    specs, now = layout("lag", size)
    ids, cadences = prepare(ctx, kind, specs, now)
    beat, ready = start_beat(ctx, kind, f"lag-{kind.key}-{size}", size)
    started = time.time()
    window = next_boundary((ready or time.time()) + 2)
    end = window + timedelta(minutes=minutes)
    died = None
    try:
        for k in range(1, minutes + 1):
            sleep_until((window + timedelta(minutes=k)).timestamp(), beat)
            log(f"  minute {k}/{minutes}: {ctx.observer.count():,} broker messages so far")
        sleep_until(end.timestamp() + ctx.args.lag_grace, beat)
    except BeatExited as exc:
        died = str(exc)
    finally:
        messages = stop_beat(ctx, beat)
        stopped = time.time()
    seen, _ = attribute(messages, cadences, ctx.housekeeping)
    expected: Counter = Counter()
    by_cadence = Counter(cadences[tid] for tid in ids)
    for cadence, count in by_cadence.items():
        for slot in timing.slots_between(
            cadence, window - timedelta(microseconds=1), end - timedelta(microseconds=1), limit=10_000
        ):
            expected[slot] += count
    inside = [s for s in seen if s.slot is not None and window <= s.slot < end]
    pairs = Counter((s.trigger_id, s.slot) for s in inside)
    first = {}
    for s in sorted(inside, key=lambda s: s.at):
        first.setdefault((s.trigger_id, s.slot), s)
    per_minute = defaultdict(list)
    for s in first.values():
        per_minute[s.slot].append(s.at - s.slot.timestamp())
    # A message that never arrived is at least (stop - slot) late: percentiles count it so (censored),
    # else a beat that falls behind would look better the less it sends.
    lags: list[tuple[float, bool]] = []
    minute_p99: list[tuple[float, bool] | None] = []
    for slot in sorted(expected):
        missing = max(0, expected[slot] - len(per_minute[slot]))
        values = [(lag, False) for lag in per_minute[slot]] + [(stopped - slot.timestamp(), True)] * missing
        lags.extend(values)
        minute_p99.append(censored_percentile(values, 0.99))
    p50, p99 = censored_percentile(lags, 0.5), censored_percentile(lags, 0.99)
    arrived_lags = [lag for lag, censored in lags if not censored]
    out: dict[str, Any] = {
        "died": died,
        "minutes": minutes,
        "window": window.isoformat(),
        "expected": sum(expected.values()),
        "arrived": len(first),
        "duplicates": sum(n - 1 for n in pairs.values() if n > 1),
        "before_window": sum(1 for s in seen if s.slot is not None and s.slot < window),
        "unattributed": sum(1 for s in seen if s.slot is None),
        "hows": hows(seen),
        "p50_s": p50[0] if p50 else None,
        "p50_censored": bool(p50 and p50[1]),
        "p99_s": p99[0] if p99 else None,
        "p99_censored": bool(p99 and p99[1]),
        "max_s": max(arrived_lags) if arrived_lags else None,
        "p99_per_minute_s": [v[0] if v else None for v in minute_p99],
        "p99_per_minute_censored": [bool(v and v[1]) for v in minute_p99],
        "arrived_per_minute": [len(per_minute[slot]) for slot in sorted(expected)],
        "expected_per_minute": [expected[slot] for slot in sorted(expected)],
        **beat_facts(beat, ready, started),
    }
    ctx.store("pg", size, kind.key, "lag", out)
    if died:
        log(f"  {kind.key} beat died: {died}")
    log(f"  {kind.key}: {out['arrived']:,}/{out['expected']:,} arrived, lag p50 / p99 / max {cell('lag', 'lag', out)}")


def figure_sqlite(ctx: Context, size: int, kinds: list[SchedulerKind]) -> None:
    log(f"figure 6 (SQLite load, distinct crontabs), {size:,} triggers")
    folder = ctx.workdir / f"sqlite-{size}"
    folder.mkdir(exist_ok=True)
    url = f"sqlite:///{folder / 'db.sqlite3'}"
    env = child_env(url, "scheduler_project.settings", str(folder))
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True, capture_output=True)
    seeded = run_child(
        "_seed", {"count": size, "distinct": ctx.args.sqlite_distinct_crons}, env, ctx.workdir / "children.log"
    )
    log(f"  migrated and seeded in {time.perf_counter() - t0:.1f} s ({seeded['crontabs']:,} distinct crontabs)")
    for kind in kinds:
        if kind.store != "db":
            ctx.store("sqlite", size, kind.key, "sqlite", {"na": "no database: entries live in Redis"})
            continue
        out = run_micro(ctx, kind, size, "sqlite", url)
        out["crontabs"] = seeded["crontabs"]
        ctx.store("sqlite", size, kind.key, "sqlite", out)
        state = "ok" if out.get("ok") else f"FAILED ({out.get('error')})"
        log(f"  {kind.key}: load {state} in {fmt(out.get('load_s'), 's')}")


# --- Report ---------------------------------------------------------------------------------------


def fmt(value: Any, unit: str = "", digits: int | None = None) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        if digits is None:
            magnitude = abs(value)
            digits = 3 if magnitude < 0.01 else 2 if magnitude < 10 else 1 if magnitude < 100 else 0
        text = f"{value:,.{digits}f}"
    else:
        text = f"{value:,}" if isinstance(value, int) else str(value)
    return f"{text} {unit}".strip() if unit not in ("/s",) else f"{text}/s"


def cell(figure: str, row: str, d: dict) -> str:
    if not d:
        return "—"
    if d.get("na"):
        return f"n/a ({d['na']})"
    if figure == "load":
        if row == "load":
            return fmt(d.get("load_s"), "s") if d.get("ok") else f"FAILED: {d.get('error')}"
        if row == "rss":
            base = d.get("rss_baseline_mb")
            rss = d.get("rss_mb")
            return f"{fmt(rss, 'MB', 0)} (+{fmt(rss - base, 'MB', 0)})" if rss and base else "—"
        if row == "traced":
            return fmt(d.get("traced_mb"), "MB", 1)
        if row == "idle":
            median, p99 = fmt(d.get("idle_median_ms"), "ms"), fmt(d.get("idle_p99_ms"), "ms")
            return f"{median} / {p99} ({d.get('idle_ticks')} ticks)"
        if row == "edit_tick":
            return fmt(d.get("edit_tick_s"), "s")
    if figure == "loadavg":
        values = [f"{name} {d[name]['loadavg']:.1f}" for name in FIGURES if (d.get(name) or {}).get("loadavg")]
        return ", ".join(values) or "—"
    if figure == "died":
        figures = ("burst", "burst2", "edit", "lag")
        deaths = [f"{name}: {d[name]['died']}" for name in figures if (d.get(name) or {}).get("died")]
        return "; ".join(deaths) or "—"
    if figure == "real":
        return (
            f"{fmt(d.get('up_s'), 's')}; {fmt(d.get('rss_ready_mb'), 'MB', 0)} / {fmt(d.get('rss_peak_mb'), 'MB', 0)}"
        )
    if figure == "edit":
        if row == "reach":
            return f"{fmt(d.get('new_late_s'), 's')} / {fmt(d.get('edited_late_s'), 's')}"
        if row == "stall":
            return f"{fmt(d.get('neighbours_control_max_s'), 's')} → {fmt(d.get('neighbours_edit_max_s'), 's')}"
    if figure in ("burst", "burst2"):
        if row == "all":
            if d.get("all_s") is not None:
                text = fmt(d["all_s"], "s")
            else:
                text = f"not all: {d.get('arrived', 0):,}/{d.get('due', 0):,} in {d.get('timeout_s')} s"
                if d.get("projected_all_s"):
                    text += f" (all in ~{fmt(d['projected_all_s'] / 60, 'min', 0)} at this rate)"
            return text + ("" if d.get("ready_before_slot") else " (beat still loading at the slot)")
        if row == "rate":
            return f"{fmt(d.get('rate'), '/s', 0)}; first {fmt(d.get('first_s'), 's')} after the slot"
    if figure == "lag":
        if row == "lag":

            def bound(name: str) -> str:
                return (">" if d.get(f"{name}_censored") else "") + fmt(d.get(f"{name}_s"), "s")

            if not d.get("arrived") and d.get("expected"):
                return "none of the window's slots was sent by the end"
            text = f"{bound('p50')} / {bound('p99')} / {fmt(d.get('max_s'), 's')}"
            if d.get("arrived", 0) < d.get("expected", 0) and "p99_censored" not in d:
                text += f" (of the {d.get('arrived', 0):,} that arrived; the rest are later)"
            return text
        if row == "arrived":
            text = f"{d.get('arrived', 0):,} / {d.get('expected', 0):,} in {d.get('minutes')} min"
            if d.get("before_window"):
                text += f"; {d['before_window']:,} more for slots before the window"
            if d.get("duplicates"):
                text += f"; {d['duplicates']:,} duplicates"
            return text
        if row == "steady":
            values = d.get("p99_per_minute_s") or []
            flags = d.get("p99_per_minute_censored") or [False] * len(values)
            per = [(">" if c else "") + fmt(v, "s") for v, c in zip(values, flags, strict=False) if v is not None]
            if "p99_per_minute_censored" not in d and d.get("arrived", 0) < d.get("expected", 0):
                return "— (not all arrived)"
            return " → ".join(per) if len(per) <= 5 else f"{per[0]} → {per[-1]} (per minute: {', '.join(per)})"
        if row == "hows":
            counts = d.get("hows") or {}
            total = sum(counts.values()) or 1
            names = {"message": "named in the message", "execution": "its Execution row", "inferred": "inferred"}
            return ", ".join(f"{names.get(k, k)} {v / total:.0%}" for k, v in sorted(counts.items())) or "—"
        if row == "proc":
            cpu = d.get("cpu_s")
            wall = d.get("wall_s")
            share = f", CPU {cpu / wall:.0%} of a core" if cpu and wall else ""
            return f"{fmt(d.get('rss_peak_mb'), 'MB', 0)} peak{share}"
    if figure == "sqlite":
        if d.get("ok"):
            idle = fmt(d.get("idle_median_ms"), "ms")
            return f"ok, {fmt(d.get('load_s'), 's')} ({d.get('crontabs', 0):,} crontabs); idle tick {idle}"
        return f"FAILED after {fmt(d.get('load_s'), 's')}: {d.get('error')}"
    return "—"


ROWS = [
    ("load", "load", "1 load, in-process (construct + first tick)", "≤ 3 s"),
    ("load", "rss", "1 RSS after load (+ over the bare process)", "≤ 250 MB"),
    ("load", "traced", "1 tracemalloc after load", ""),
    ("real", "", "1 real beat: start → first message; RSS then / peak", ""),
    ("load", "idle", "2 idle tick, median / p99", "≤ 1 ms, flat in N"),
    ("load", "edit_tick", "3 in-process: the tick after one edit", ""),
    ("edit", "reach", "3 real beat: new / edited trigger's message late by", "≤ 2 s"),
    ("edit", "stall", "3 neighbours' max lag: minute without → with the edits", "no stall"),
    ("burst", "all", "4 burst: all in the broker, after the slot", "≤ 2 s"),
    ("burst", "rate", "4 burst: sends/s", "≥ 5,000/s"),
    ("burst2", "all", "4 burst, two beats (ours): all in the broker, after the slot", ""),
    ("burst2", "rate", "4 burst, two beats (ours): sends/s", ""),
    ("lag", "lag", "5 lag p50 / p99 / max (> : not arrived by the end)", "p99 ≤ 1 s"),
    ("lag", "arrived", "5 arrived / expected", "all"),
    ("lag", "steady", "5 p99 of each minute's slot", "steady"),
    ("lag", "proc", "5 beat RSS, CPU", ""),
    ("lag", "hows", "5 each message's slot: (see notes)", ""),
    ("died", "", "real beat died during", ""),
    ("loadavg", "", "machine load average (1 min) at the end of", ""),
]


def real_facts(figures: dict) -> dict:
    for name in ("lag", "burst", "edit"):
        if figures.get(name, {}).get("up_s") is not None:
            return figures[name]
    return {}


def render(ctx: Context, kinds: list[SchedulerKind]) -> str:
    lines = []
    for (backend, size), by_key in sorted(ctx.results.items(), key=lambda item: (item[0][0] != "pg", item[0][1])):
        if backend == "pg":
            lines.append(f"\n**PostgreSQL, {size:,} triggers**\n")
            lines.append("| figure | goal (ours) | " + " | ".join(k.label for k in kinds) + " |")
            lines.append("| --- | --- | " + " | ".join("---" for _ in kinds) + " |")
            for figure, row, title, goal in ROWS:
                if figure == "real":
                    cells = [cell("real", row, real_facts(by_key.get(k.key, {}))) for k in kinds]
                elif figure in ("died", "loadavg"):
                    cells = [cell(figure, row, by_key.get(k.key, {})) for k in kinds]
                else:
                    cells = [cell(figure, row, by_key.get(k.key, {}).get(figure, {})) for k in kinds]
                if all(c == "—" for c in cells):
                    continue
                lines.append(f"| {title} | {goal} | " + " | ".join(cells) + " |")
        else:
            lines.append(f"\n**SQLite, {size:,} triggers** (figure 6: ≥ 1,000 distinct crons must load)\n")
            lines.append("| scheduler | load |")
            lines.append("| --- | --- |")
            for k in kinds:
                lines.append(f"| {k.label} | {cell('sqlite', '', by_key.get(k.key, {}).get('sqlite', {}))} |")
    return "\n".join(lines)


def machine_summary(args: argparse.Namespace) -> str:
    import redis

    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = "?"
    with contextlib.suppress(OSError, ValueError):
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{kb / 2**20:.0f} GiB"
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SHOW server_version")
        pg = cursor.fetchone()[0]
    redis_version = redis.Redis.from_url(args.broker_url).info("server")["redis_version"]
    from importlib.metadata import version

    packages = ", ".join(
        f"{name} {version(name)}" for name in ("Django", "celery", "django-celery-beat", "celery-redbeat")
    )
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False
    ).stdout.strip()
    return (
        f"{os.cpu_count()} cores ({cpu}), {mem}, PostgreSQL {pg}, Redis {redis_version}, "
        f"Python {platform.python_version()}, {packages}; commit {commit}; load average before the run "
        f"{os.getloadavg()[0]:.2f}"
    )


def write_results(ctx: Context, kinds: list[SchedulerKind], table: str, machine: str, command: str) -> None:
    path = Path(ctx.args.results)
    header = (
        "## How the beat figures are measured\n\n"
        "Written by `bench/beat_scale.py` (a section per run, newest last; how to run it: its docstring).\n\n"
        "1. load: a fresh process constructs the scheduler and runs its first tick (time; RSS from /proc, "
        "and over the bare Django process; tracemalloc in a second process, up to 20k). Real beat: from "
        "`celery beat` starting to its first message in the broker (housekeeping entries are due at once), "
        "its RSS then and its peak (VmHWM).\n"
        "2. idle tick: the same process ticks with nothing due (quiet triggers ~12 h away); ticks that "
        "published anything are left out. Median and p99.\n"
        "3. edit: in-process, the tick after `trigger_update` moves one trigger. Real beat: a trigger created "
        "(`trigger_create`) and one moved (`trigger_update`) 3 s before a minute they become due on; how late "
        "their messages reach the broker, and the worst lag of 10 triggers due every minute on that minute "
        "against the minute before (stall). RedBeat's edits are `RedBeatSchedulerEntry.save()`.\n"
        "4. burst: 10,000 triggers due on one minute (five zones), real beat; time from the slot to the last "
        "message, and sends/s between the first and the last (cut after a timeout; the projection assumes the "
        "rate holds).\n"
        "5. lag: real beat, cron `m * * * *` with m = i % 60 (five zones); for each slot of the window the "
        "first message's arrival minus the slot; arrived of expected; p99 per minute.\n"
        "6. SQLite: the in-process load (as 1) with 1,000 distinct crontabs.\n\n"
        "Not-due triggers use 1,000 distinct (cron, zone) pairs: stock django-celery-beat builds one CASE "
        "branch per CrontabSchedule row when it loads (django-celery-beat#947), which is what fails on SQLite "
        "and costs it seconds on PostgreSQL. A consumer drains the queues `high`, `normal`, `low` of Redis "
        "db 13 and stamps each message; no worker runs.\n"
    )
    text = path.read_text() if path.exists() else "# Benchmark results\n\nAppended by the scripts in bench/.\n"
    if "How the beat figures are measured" not in text:
        text += "\n" + header
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    section = [f"\n## Beat at scale, {stamp}\n", f"- Command: `{command}`", f"- Machine: {machine}"]
    section.append("- Schedulers: " + "; ".join(f"{k.label} = `{k.path}`" for k in kinds))
    for note in ctx.notes:
        section.append(f"- Note: {note}")
    text = text.rstrip("\n") + "\n" + "\n".join(section) + "\n" + table + "\n"
    path.write_text(text)
    log(f"results appended to {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000", help="trigger counts, comma-separated")
    parser.add_argument("--schedulers", default="stock,redbeat,ours", help="subset of " + ",".join(SCHEDULERS))
    parser.add_argument("--only", default=",".join(FIGURES), help="subset of " + ",".join(FIGURES))
    parser.add_argument("--ours", default=SCHEDULERS["ours"].path, help="class path of our scheduler")
    parser.add_argument("--lag-minutes", type=int, default=10, help="lag run length for ours (and RedBeat)")
    parser.add_argument("--lag-minutes-stock", type=int, default=3, help="stock falls behind: a shorter run")
    parser.add_argument("--lag-minutes-redbeat", type=int, default=None, help="default: --lag-minutes")
    parser.add_argument("--lag-grace", type=float, default=10.0, help="seconds after the window still counted")
    parser.add_argument("--burst", type=int, default=10_000, help="triggers due on the burst minute")
    parser.add_argument("--burst-timeout", type=float, default=120.0, help="seconds after the slot before giving up")
    parser.add_argument("--edit-lead", type=float, default=3.0, help="seconds between an edit and its slot")
    parser.add_argument("--edit-neighbours", type=int, default=10, help="triggers due every minute during edits")
    parser.add_argument("--edit-timeout", type=float, default=120.0, help="seconds after the last edit's slot")
    parser.add_argument("--idle-seconds", type=float, default=15.0)
    parser.add_argument("--idle-ticks", type=int, default=300)
    parser.add_argument(
        "--tracemalloc-max",
        type=int,
        default=20_000,
        help="largest size given a tracemalloc pass (a second, slow load)",
    )
    parser.add_argument("--sqlite-sizes", default=None, help="default: --sizes")
    parser.add_argument(
        "--distinct-crons", type=int, default=1000, help="distinct (cron, zone) pairs of the not-due triggers"
    )
    parser.add_argument("--sqlite-distinct-crons", type=int, default=1000, help="the same, for figure 6")
    parser.add_argument("--ready-timeout", type=float, default=60.0, help="plus 1 s per 500 triggers")
    parser.add_argument("--database-url", default=DEFAULT_DATABASE)
    parser.add_argument("--broker-url", default=DEFAULT_BROKER)
    parser.add_argument("--redbeat-url", default=DEFAULT_REDBEAT)
    parser.add_argument("--results", default=str(ROOT / "bench" / "RESULTS.md"))
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    for url in (args.database_url, args.broker_url, args.redbeat_url):
        require_loopback(url)
    if urlparse(args.broker_url).path == urlparse(args.redbeat_url).path:
        raise SystemExit("the broker and RedBeat need Redis databases of their own")
    sizes = [int(s) for s in args.sizes.split(",") if s]
    sqlite_sizes = [int(s) for s in (args.sqlite_sizes or args.sizes).split(",") if s]
    figures = [f.strip() for f in args.only.split(",") if f.strip()]
    unknown = set(figures) - set(FIGURES)
    if unknown:
        raise SystemExit(f"--only: unknown {sorted(unknown)}; choose from {FIGURES}")
    SCHEDULERS["ours"] = SchedulerKind("ours", SCHEDULERS["ours"].label, args.ours, "db")
    kinds = [SCHEDULERS[k.strip()] for k in args.schedulers.split(",") if k.strip()]

    def terminate(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt  # unwinds through the figures' finally: every beat started is stopped

    signal.signal(signal.SIGTERM, terminate)
    workdir = Path(tempfile.mkdtemp(prefix="beat-scale-"))
    ensure_database(args.database_url)
    setup_django(args.database_url, data_dir=str(workdir / "data-harness"))
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    from bench.observer import BrokerObserver, RunLock
    from scheduler_project.celery import app

    app.conf.redbeat_redis_url = args.redbeat_url
    from redbeat.schedulers import ensure_conf

    ensure_conf(app)
    lock = RunLock(args.broker_url, f"{platform.node()}:{os.getpid()} {ROOT}")
    lock.acquire()
    ctx = Context(args, workdir, app, housekeeping_tasks(app), BrokerObserver(args.broker_url))
    machine = machine_summary(args)
    command = " ".join(shlex.quote(a) for a in [".venv/bin/python", "bench/beat_scale.py", *sys.argv[1:]])
    log(f"work dir {workdir}; {machine}")
    started = time.time()
    try:
        for size in sizes:
            if "load" in figures or "idle" in figures:
                attempt(ctx, f"figures 1-2 at {size:,}", figure_micro, ctx, size, kinds)
            for name, run in (("burst", figure_burst), ("edit", figure_edit), ("lag", figure_lag)):
                if name in figures:
                    for kind in kinds:
                        attempt(ctx, f"{name} {kind.key} at {size:,}", run, ctx, size, kind)
                        if name == "burst" and kind.key == "ours":
                            attempt(ctx, f"burst ours, two beats, at {size:,}", run, ctx, size, kind, 2)
        if "sqlite" in figures:
            for size in sqlite_sizes:
                attempt(ctx, f"sqlite at {size:,}", figure_sqlite, ctx, size, kinds)
    finally:
        from redbeat.schedulers import get_redis

        from bench import seed

        # Leave the scratch databases empty (the beats under test have been stopped).
        for cleanup in (seed.reset_triggers, ctx.observer.flush, lambda: get_redis(app).flushdb(), lock.release):
            with contextlib.suppress(Exception):
                cleanup()
    if ctx.beats_checked:
        if ctx.peers:
            ctx.notes.append(f"NON-LOOPBACK sockets seen in beat processes: {sorted(ctx.peers)}")
        else:
            ctx.notes.append(f"network: the {ctx.beats_checked} beat processes had sockets to loopback only")
    ctx.notes.append(
        "a message's slot is the one it names (scheduled_for), else its Execution row's, else inferred: "
        "the trigger's latest slot at or before the message's arrival, so an inferred lag is a lower bound "
        "(stock and RedBeat messages name no slot)"
    )
    ctx.notes.append(
        f"run took {(time.time() - started) / 60:.0f} min; load average {os.getloadavg()[0]:.2f} at the end "
        "(a shared 2-core machine: other benchmarks may have run too)"
    )
    log(f"logs and results.json in {workdir}")
    table = render(ctx, kinds)
    print(table)
    for note in ctx.notes:
        print(f"- {note}")
    (workdir / "results.json").write_text(json.dumps(jsonable(ctx.results), indent=1, default=str))
    if not args.no_write:
        write_results(ctx, kinds, table, machine, command)


def attempt(ctx: Context, label: str, run: Any, *args: Any) -> None:
    """Run one figure; a failure is noted and the run goes on with the next."""
    import traceback

    try:
        run(*args)
    except KeyboardInterrupt:
        raise
    except BeatExited as exc:
        ctx.notes.append(f"{label}: the beat died before it was up ({exc})")
        log(f"  {label}: the beat died before it was up ({exc})")
    except Exception as exc:  # noqa: BLE001 - one figure's failure must not lose the others
        ctx.notes.append(f"{label}: harness error {type(exc).__name__}: {str(exc)[:300]}")
        log(f"  {label} failed:\n{traceback.format_exc()}")


def jsonable(results: dict) -> dict:
    return {f"{backend}-{size}": by_key for (backend, size), by_key in results.items()}


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] in ("_micro", "_seed"):
        handler = child_micro if sys.argv[1] == "_micro" else child_seed
        print(RESULT_TAG + json.dumps(handler(json.loads(sys.argv[2])), default=str), flush=True)
    else:
        main()
