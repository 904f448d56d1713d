"""Worker throughput: schedules.run_execution against plain Celery tasks, per pool, on real workers.

    .venv/bin/python bench/worker_throughput.py --executions 2000

For each pool (``--pools``, default prefork 2 and 8, threads 8 and 32, gevent 64) and mode:

- ``raw``: ``bench.http_post``, a plain task that only POSTs (requests Session, ignore_result):
  the ceiling;
- ``results``: ``bench.http_post_result``, the same task with its result stored by
  django-celery-results (the stock comparison);
- ``ours``: real due ``Execution`` rows, published as beat publishes a burst
  (``dispatch.publish``: ``schedules.run_executions`` messages of several attempts each, see
  SCHEDULER_EXECUTIONS_PER_MESSAGE and SCHEDULER_MESSAGE_FANOUT) (claim, signed call through
  workflows/client.py, history, stats, result);
- ``ours1``: the same executions one per message, ``schedules.run_execution(execution_id,
  attempt=1)``, as retries, manual runs and small batches are sent;

it runs ``--executions`` tasks ``--repeat`` times (modes and pools interleaved, so a change in the
machine's load hits them alike) and prints, per mode and pool: executions/s (best and median),
the ratio to raw HTTP on the same pool, each task's run time in the worker (p50, p99), and per
execution the SQL statements (counted in the worker at psycopg's cursor), the transactions,
new PostgreSQL connections and rows written (server side, pg_stat_database deltas) and the TCP
connections the endpoint accepted. The table is appended to bench/RESULTS.md (``--no-record``: not).

One run: the database is reset (executions and task results deleted, tables vacuumed) and, for
``ours``, N due executions are bulk-created as the scheduler leaves them (status queued, attempts
0, due_at = the slot, lease = now + SCHEDULER_LEASE_GRACE_SECONDS), one trigger each by default
(``--triggers K`` spreads them over K triggers, overlap ``allow``, to show row-lock contention on
the trigger and stats rows). A real worker starts in its own process group::

    celery -A scheduler_project worker -P <pool> -c <n> -Q high,normal,low -l warning -I bench.worker_probe

with DATABASE_URL, CELERY_BROKER_URL, DJANGO_SETTINGS_MODULE, SCHEDULER_DATA_DIR (a temporary
folder), SCHEDULER_OUTBOUND_ALLOW_NETWORKS=127.0.0.0/8 (the endpoint is on loopback) and DEBUG=0
with bench-only keys, as docker-compose.yml runs it (``--debug``: DEBUG=1); a gevent worker
also gets DATABASE_POOL_SIZE=<n>, as the README advises for that pool (``--no-gevent-db-pool``:
not, and its tasks open a PostgreSQL connection each). Once it answers a
ping its consumers are cancelled, the N messages are published to the ``normal`` queue in one go,
and the consumers are added back. The rate is N / (the first task's start in the worker -> the last
execution recorded: the latest finished_at or result date_done; for ``raw`` the endpoint's last
call), so neither start-up nor the worker's lag in acting on add_consumer counts. A run without
progress for ``--stall-seconds`` fails (and is reported as such). Then the worker gets SIGTERM
(warm shutdown) and its group is killed if it lingers. Also reported: the worker's CPU time per
execution (its process group, /proc) and how busy the whole machine was (/proc/stat: other load
shows there).

``--broker-max-connections N`` is an experiment, not the project's configuration: it gives the
workers' broker a Redis pool of N connections instead of kombu's 10, which gevent's concurrent
acknowledgements exhaust.

The endpoint (bench/loopback_endpoint.py) is a separate asyncio process on 127.0.0.1; its
capacity is probed first and printed, so it is known not to be the bottleneck. On the first run
of each pool, 16 ``SELECT pg_sleep(0.25)`` tasks show whether the pool overlaps database waits
(with psycopg 3 under gevent this depends on psycopg seeing the monkey-patching), and the worker
reports which psycopg wait function it uses.

Uses (and creates, migrates and resets) the database in ``--database-url`` and flushes the Redis
database of ``--broker-url`` (default: db 11) before each run: give it scratch ones. Loopback only.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import json
import os
import platform
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
sys.path.insert(0, str(ROOT))

DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/bench_worker"
DEFAULT_BROKER_URL = "redis://127.0.0.1:6379/11"
DEFAULT_POOLS = "prefork:2,prefork:8,threads:8,threads:32,gevent:64"
MODES = {
    "raw": "bench.http_post",
    "results": "bench.http_post_result",
    "ours": "schedules.run_executions",
    "ours1": "schedules.run_execution",
}
OURS = ("ours", "ours1")
MODE_LABELS = {
    "raw": "raw HTTP",
    "results": "plain task + django-db results",
    "ours": "ours (as beat sends a burst)",
    "ours1": "ours (one per message)",
}
# Bench-only: DEBUG=0 needs a SECRET_KEY and Fernet keys; fixed ones keep the seeded workflow's
# encrypted secret readable from one invocation to the next.
BENCH_SECRET_KEY = "bench-worker-throughput-not-a-real-key"  # noqa: S105 - a scratch database's key
BENCH_FERNET_KEY = base64.urlsafe_b64encode(hashlib.sha256(BENCH_SECRET_KEY.encode()).digest()).decode()
PROBE_TASKS = 16
PROBE_SLEEP = 0.25


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--executions", type=int, default=2000, help="tasks per run (default 2000)")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each mode and pool (default 2)")
    parser.add_argument("--pools", default=DEFAULT_POOLS, help=f"pool:concurrency,... (default {DEFAULT_POOLS})")
    parser.add_argument("--modes", default=",".join(MODES), help="raw,results,ours,ours1 (default all)")
    parser.add_argument("--triggers", type=int, default=0, help="triggers for ours (default: one per execution)")
    parser.add_argument("--database-url", default=DEFAULT_DATABASE_URL)
    parser.add_argument("--broker-url", default=DEFAULT_BROKER_URL, help="a Redis database of its own (flushed)")
    parser.add_argument("--debug", action="store_true", help="run the workers with DEBUG=1 (default DEBUG=0)")
    parser.add_argument("--run-timeout", type=float, default=0, help="seconds per run (default max(120, N/4))")
    parser.add_argument("--stall-seconds", type=float, default=30, help="fail a run without progress this long")
    parser.add_argument(
        "--broker-max-connections",
        type=int,
        default=0,
        help="experiment, not the project's setting: the broker's Redis pool size in the workers (kombu: 10)",
    )
    parser.add_argument(
        "--no-gevent-db-pool",
        action="store_true",
        help="run gevent workers without DATABASE_POOL_SIZE (each task then opens a PostgreSQL connection)",
    )
    parser.add_argument("--no-record", action="store_true", help="do not append the table to bench/RESULTS.md")
    args = parser.parse_args()
    args.pools = [(pool, int(n)) for pool, _, n in (item.partition(":") for item in args.pools.split(","))]
    args.modes = [mode.strip() for mode in args.modes.split(",")]
    unknown = set(args.modes) - set(MODES)
    if unknown:
        parser.error(f"--modes: unknown {sorted(unknown)}; choose from {', '.join(MODES)}")
    for pool, _ in args.pools:
        if pool not in {"prefork", "threads", "gevent", "eventlet", "solo"}:
            parser.error(f"--pools: unknown pool {pool!r}")
    if not args.broker_url.startswith("redis://"):
        parser.error("--broker-url: a redis:// URL (its database is flushed before each run)")
    args.run_timeout = args.run_timeout or max(120.0, args.executions / 4)
    return args


ARGS = parse_args()
DATA_DIR = Path(tempfile.mkdtemp(prefix="bench-worker-"))
WORKER_ENV = {
    "DATABASE_URL": ARGS.database_url,
    "CELERY_BROKER_URL": ARGS.broker_url,
    "DJANGO_SETTINGS_MODULE": "scheduler_project.settings",
    "SCHEDULER_DATA_DIR": str(DATA_DIR),
    "SCHEDULER_OUTBOUND_ALLOW_NETWORKS": "127.0.0.0/8",
    "DEBUG": "1" if ARGS.debug else "0",
    "SECRET_KEY": BENCH_SECRET_KEY,
    "SCHEDULER_SECRET_KEYS": BENCH_FERNET_KEY,
    "PYTHONUNBUFFERED": "1",
}
os.environ.update(WORKER_ENV)

import psycopg  # noqa: E402
import redis  # noqa: E402


def _admin_url(database: str) -> str:
    parts = urlsplit(ARGS.database_url)
    return urlunsplit(parts._replace(path=f"/{database}"))


DB_NAME = urlsplit(ARGS.database_url).path.lstrip("/")


def ensure_database() -> None:
    with psycopg.connect(_admin_url("postgres"), autocommit=True) as admin:
        if admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", [DB_NAME]).fetchone() is None:
            admin.execute(f'CREATE DATABASE "{DB_NAME}"')
            print(f"created database {DB_NAME}")


ensure_database()

import django  # noqa: E402

django.setup()

from celery import signature  # noqa: E402
from django.conf import settings  # noqa: E402
from django.contrib.auth import get_user_model  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402
from django.db.models import Count  # noqa: E402
from django.utils import timezone  # noqa: E402
from django_celery_results.models import TaskResult  # noqa: E402

from scheduler_project.celery import app  # noqa: E402
from schedules import dispatch, services  # noqa: E402
from schedules.models import Execution, ExecutionOrigin, ExecutionStats, ExecutionStatus, Trigger  # noqa: E402
from workflows.models import Workflow  # noqa: E402
from workflows.services import workflow_create  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
import loopback_endpoint  # noqa: E402

QUEUES = ("high", "normal", "low")
FINISHED = [ExecutionStatus.SUCCEEDED, ExecutionStatus.FAILED, ExecutionStatus.SKIPPED]


# --- the endpoint -----------------------------------------------------------------------------------


class Endpoint:
    """bench/loopback_endpoint.py in its own process; it exits when our end of its stdin closes."""

    def __init__(self) -> None:
        self.popen = subprocess.Popen(
            [sys.executable, str(ROOT / "bench" / "loopback_endpoint.py")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        line = self.popen.stdout.readline()
        if not line.startswith("PORT "):
            raise RuntimeError(f"endpoint did not start: {line!r}")
        self.port = int(line.split()[1])
        self.url = f"http://127.0.0.1:{self.port}/hooks/run"

    def _get(self, path: str, method: str = "GET") -> dict[str, Any]:
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", method=method)  # noqa: S310
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 - loopback
            return json.loads(response.read())

    def stats(self) -> dict[str, Any]:
        return self._get("/_stats")

    def reset(self) -> None:
        self._get("/_reset", method="POST")

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.popen.stdin.close()
            self.popen.wait(timeout=5)
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(timeout=5)


# --- the worker ---------------------------------------------------------------------------------------


class Worker:
    """A real ``celery worker`` in its own process group, logging to a file."""

    def __init__(self, pool: str, concurrency: int, log_path: Path) -> None:
        self.command = [
            str(BIN / "celery"),
            "-A",
            "scheduler_project",
            "worker",
            "-P",
            pool,
            "-c",
            str(concurrency),
            "-Q",
            ",".join(QUEUES),
            "-l",
            "warning",
            "-I",
            "bench.worker_probe",
        ]
        self.log_path = log_path
        self._log = log_path.open("wb")
        env = {**os.environ, **WORKER_ENV, "BENCH_POOL_SIZE": str(concurrency)}
        env.pop("DATABASE_POOL_SIZE", None)
        if pool == "gevent" and not ARGS.no_gevent_db_pool:
            env["DATABASE_POOL_SIZE"] = str(concurrency)
        if ARGS.broker_max_connections:
            env["BENCH_BROKER_MAX_CONNECTIONS"] = str(ARGS.broker_max_connections)
        self.popen = subprocess.Popen(
            self.command, cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.hostname: str | None = None

    def log_tail(self, size: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-size:]

    def check_alive(self) -> None:
        if self.popen.poll() is not None:
            raise RuntimeError(f"worker exited with {self.popen.returncode}:\n{self.log_tail()}")

    def wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            replies = app.control.ping(timeout=0.5)
            if replies:
                self.hostname = next(iter(replies[0]))
                return
        raise RuntimeError(f"worker did not answer a ping within {timeout}s:\n{self.log_tail()}")

    def _control(self, command: str) -> None:
        for queue in QUEUES:
            method = getattr(app.control, command)
            replies = method(queue, reply=True, timeout=5, destination=[self.hostname])
            if not replies:
                raise RuntimeError(f"worker did not answer {command} {queue}")

    def pause(self) -> None:
        """Stop consuming. The worker cancels at its next loop turn (control commands are queued with
        call_soon), and a BRPOP already sent keeps waiting on the queues for up to kombu's brpop_timeout
        (1 s) within a drain of up to 2 s: wait until it reports no queue, then past those."""
        self._control("cancel_consumer")
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            replies = app.control.inspect(destination=[self.hostname], timeout=1).active_queues() or {}
            if replies.get(self.hostname) == []:
                break
        else:
            raise RuntimeError("worker still consumes after cancel_consumer")
        time.sleep(3)

    def resume(self) -> None:
        self._control("add_consumer")

    def stop(self) -> None:
        """SIGTERM (warm shutdown: the pool finishes and flushes its counters), then SIGKILL the group."""
        if self.popen.poll() is None:
            try:
                os.kill(self.popen.pid, signal.SIGTERM)
                self.popen.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
            except ProcessLookupError:
                pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=10)
        self._log.close()

    def cpu_seconds(self) -> float:
        """User + system CPU time of the worker's processes (its process group) so far."""
        total = 0
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, IndexError, ValueError):
                fields = stat.read_text().rsplit(")", 1)[1].split()
                if int(fields[2]) == self.popen.pid:  # field 5, the process group
                    total += int(fields[11]) + int(fields[12])  # fields 14 and 15, utime and stime
        return total / os.sysconf("SC_CLK_TCK")

    def log_problems(self) -> dict[str, int]:
        text = self.log_path.read_text(errors="replace")
        return {
            "errors": text.count("ERROR/") + text.count("CRITICAL/"),
            "tracebacks": text.count("Traceback (most recent call last)"),
            "pool full": text.count("Connection pool is full"),
        }


# --- database and broker ------------------------------------------------------------------------------


def machine_cpu() -> tuple[int, int]:
    """(busy, total) clock ticks of all cores since boot, from /proc/stat."""
    values = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


def pg_counters(admin: psycopg.Connection) -> dict[str, int]:
    admin.execute("SELECT pg_stat_clear_snapshot()")
    row = admin.execute(
        "SELECT xact_commit + xact_rollback, sessions, tup_inserted + tup_updated + tup_deleted "
        "FROM pg_stat_database WHERE datname = %s",
        [DB_NAME],
    ).fetchone()
    return {"xacts": row[0], "sessions": row[1], "rows": row[2]}


@dataclass
class Fixture:
    workflow: Workflow
    triggers: list[Trigger]


def seed(endpoint_url: str, executions: int, triggers: int) -> Fixture:
    """A user, a workflow calling the endpoint, and the triggers (kept from one invocation to the next)."""
    owner, _ = get_user_model().objects.get_or_create(username="bench-worker")
    workflow = Workflow.objects.filter(owner=owner, name="bench-worker").first()
    if workflow is None:
        workflow = workflow_create(owner=owner, name="bench-worker", endpoint_url=endpoint_url, timeout_seconds=30)
    Workflow.objects.filter(pk=workflow.pk).update(endpoint_url=endpoint_url, is_active=True, max_concurrency=0)
    workflow.refresh_from_db()
    wanted = triggers or executions
    existing = list(Trigger.objects.filter(owner=owner, workflow=workflow).order_by("pk")[:wanted])
    if len(existing) < wanted:
        print(f"creating {wanted - len(existing)} triggers (once; kept in the database for later runs)...", flush=True)
    for index in range(len(existing), wanted):
        existing.append(
            services.trigger_create(
                owner=owner,
                workflow=workflow,
                name=f"bench-{index}",
                kind="cron",
                cron="0 0 1 1 *",  # never due during a run; no beat runs anyway
                overlap="allow",
            )
        )
    pks = [trigger.pk for trigger in existing]
    Trigger.objects.filter(pk__in=pks).update(overlap="allow", enabled=True, consecutive_failures=0)
    # Stats rows exist in steady state; without them each run's first execution per trigger inserts one.
    have = set(ExecutionStats.objects.filter(trigger_id__in=pks).values_list("trigger_id", flat=True))
    ExecutionStats.objects.bulk_create(
        [ExecutionStats(trigger_id=pk, workflow_id=workflow.pk) for pk in pks if pk not in have], batch_size=1000
    )
    return Fixture(workflow=workflow, triggers=list(Trigger.objects.filter(pk__in=pks).order_by("pk")))


def reset_database() -> None:
    """Delete the previous run's executions and task results, and vacuum, so every run starts alike."""
    quote = connection.ops.quote_name
    with connection.cursor() as cursor:
        for model in (Execution, TaskResult):
            cursor.execute(f"DELETE FROM {quote(model._meta.db_table)}")  # noqa: S608 - our own table names
        for model in (Execution, TaskResult, ExecutionStats):
            cursor.execute(f"VACUUM ANALYZE {quote(model._meta.db_table)}")


def create_due_executions(fixture: Fixture, count: int) -> list[str]:
    """``count`` executions as trigger_fire leaves them for the worker: queued, due now, leased."""
    now = timezone.now()
    slot = now.replace(microsecond=0) - timedelta(seconds=1)
    lease = now + timedelta(seconds=settings.SCHEDULER_LEASE_GRACE_SECONDS)
    workflow, triggers = fixture.workflow, fixture.triggers
    rows = []
    for index in range(count):
        trigger = triggers[index % len(triggers)]
        scheduled = slot - timedelta(seconds=index // len(triggers))
        rows.append(
            Execution(
                trigger=trigger,
                workflow=workflow,
                scheduled_for=scheduled,
                origin=ExecutionOrigin.SCHEDULE,
                inputs={**workflow.default_inputs, **trigger.inputs},
                status=ExecutionStatus.QUEUED,
                attempts=0,
                created_at=now,
                due_at=scheduled,
                lease_expires_at=lease,
            )
        )
    Execution.objects.bulk_create(rows, batch_size=500)
    return [str(row.pk) for row in rows]


def publish(mode: str, count: int, endpoint_url: str, execution_ids: list[str]) -> tuple[float, int]:
    """Send the run's messages to the ``normal`` queue in one go; return how long it took and how
    many messages went."""
    started = time.perf_counter()
    messages = count
    with app.producer_or_acquire() as producer:
        if mode in OURS:
            attempts = [dispatch.Attempt(execution_id, 1, "normal") for execution_id in execution_ids]
            sent, error = dispatch.publish(attempts, producer=producer, grouped=mode == "ours")
            if error is not None:
                raise error
            if mode == "ours":
                messages = len(dispatch.message_groups(attempts))
        else:
            for index in range(count):
                payload = {
                    "workflow_id": 1,
                    "trigger_id": index,
                    "execution_id": str(uuid.uuid4()),
                    "scheduled_for": timezone.now().isoformat(),
                    "attempt": 1,
                    "manual": False,
                    "inputs": {},
                }
                signature(MODES[mode], kwargs={"url": endpoint_url, "payload": payload}, app=app).apply_async(
                    queue="normal", producer=producer
                )
    return time.perf_counter() - started, messages


class Poller:
    """Completion checks on a connection of its own, one statement (one transaction) per poll, so the
    harness's own share of the server-side counts is known exactly."""

    def __init__(self) -> None:
        self.connection: psycopg.Connection | None = None
        self.polls = 0

    def finished(self, mode: str) -> tuple[int, int, float | None]:
        """(finished executions, stored results of the mode's task, latest finish time as a timestamp)."""
        if self.connection is None:
            self.connection = psycopg.connect(ARGS.database_url, autocommit=True)
        self.polls += 1
        executions, results = Execution._meta.db_table, TaskResult._meta.db_table
        row = self.connection.execute(
            f"SELECT (SELECT count(*) FROM {executions} WHERE status = ANY(%s)), "  # noqa: S608 - our table names
            f"(SELECT max(finished_at) FROM {executions}), "
            f"(SELECT count(*) FROM {results} WHERE task_name = %s), "
            f"(SELECT max(date_done) FROM {results} WHERE task_name = %s)",
            [[str(status) for status in FINISHED], MODES[mode], MODES[mode]],
        ).fetchone()
        latest = [moment.timestamp() for moment in row[1::2] if moment is not None]
        return row[0], row[2], max(latest) if latest else None

    def close(self) -> int:
        """Close; return how many sessions it opened."""
        if self.connection is None:
            return 0
        self.connection.close()
        self.connection = None
        return 1


# --- one run --------------------------------------------------------------------------------------------


@dataclass
class Run:
    mode: str
    pool: str
    concurrency: int
    rate: float = 0.0
    seconds: float = 0.0
    publish_seconds: float = 0.0
    durations: list[float] = field(default_factory=list)
    sql: float | None = None
    messages: int = 0
    kinds: dict[str, float] = field(default_factory=dict)
    xacts: float = 0.0
    sessions: float = 0.0
    rows: float = 0.0
    http_calls: int = 0
    repeated_calls: int = 0
    early_calls: int = 0
    start_lag: float = 0.0
    repeat: int = 0
    load: str = ""
    worker_cpu: float = 0.0
    machine_busy: float = 0.0
    http_connections: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    problems: dict[str, int] = field(default_factory=dict)
    error: str = ""


@dataclass
class Probe:
    pool: str
    concurrency: int
    seconds: float | None
    psycopg_wait: str
    gevent_patched: bool
    error: str = ""


def run_probe(worker: Worker, broker: redis.Redis, pool: str, concurrency: int) -> Probe:
    """16 x pg_sleep(0.25) on the worker: ~0.25 s if the pool overlaps database waits, 4 s if serial."""
    broker.delete("bench:probe")
    started = time.time()
    for _ in range(PROBE_TASKS):
        signature("bench.pg_sleep", args=[PROBE_SLEEP], app=app).apply_async(queue="normal")
    deadline = time.monotonic() + 60
    seconds, error = None, ""
    while time.monotonic() < deadline:
        worker.check_alive()
        if broker.llen("bench:probe") >= PROBE_TASKS:
            seconds = max(float(value) for value in broker.lrange("bench:probe", 0, -1)) - started
            break
        time.sleep(0.05)
    else:
        error = f"only {broker.llen('bench:probe')} of {PROBE_TASKS} probes finished in 60 s"
    environment = {key.decode(): value.decode() for key, value in broker.hgetall("bench:environment").items()}
    return Probe(
        pool=pool,
        concurrency=concurrency,
        seconds=seconds,
        psycopg_wait=environment.get("psycopg_wait", "?"),
        gevent_patched=environment.get("gevent_patched") == "1",
        error=error,
    )


def run_once(
    mode: str,
    pool: str,
    concurrency: int,
    *,
    endpoint: Endpoint,
    fixture: Fixture,
    broker: redis.Redis,
    admin: psycopg.Connection,
    log_dir: Path,
    probe: bool,
) -> tuple[Run, Probe | None]:
    count = ARGS.executions
    result = Run(mode=mode, pool=pool, concurrency=concurrency)
    reset_database()
    execution_ids = create_due_executions(fixture, count) if mode in OURS else []
    connection.close()  # our backend exits and flushes its statistics before the "before" snapshot
    broker.flushdb()
    endpoint.reset()
    log_path = log_dir / f"worker-{mode}-{pool}-{concurrency}-{uuid.uuid4().hex[:6]}.log"
    worker = Worker(pool, concurrency, log_path)
    poller = Poller()
    probe_result = None
    try:
        worker.wait_ready()
        if probe:
            probe_result = run_probe(worker, broker, pool, concurrency)
        worker.pause()
        broker.delete("bench:sql", "bench:tasks", *broker.keys("bench:durations:*"), *broker.keys("bench:kinds:*"))
        broker.delete(*broker.keys("bench:first:*"), "bench:none")
        result.publish_seconds, messages = publish(mode, count, endpoint.url, execution_ids)
        time.sleep(0.5)  # let the probe's backends (if any) exit and report their statistics
        before = pg_counters(admin)
        result.early_calls = endpoint.stats()["calls"]
        cpu_before, machine_before = worker.cpu_seconds(), machine_cpu()
        started = time.time()
        worker.resume()
        deadline = time.monotonic() + ARGS.run_timeout
        finished_at = None
        no_results_polls = 0
        progress, progressed = None, time.monotonic()
        while time.monotonic() < deadline:
            worker.check_alive()
            calls = endpoint.stats()
            if mode == "raw":
                if calls["calls"] >= count:
                    finished_at = calls["last"]
                    break
                executions = results = 0
            else:
                executions, results, latest = poller.finished(mode)
            if (calls["calls"], executions, results) != progress:
                progress, progressed = (calls["calls"], executions, results), time.monotonic()
            elif time.monotonic() - progressed > ARGS.stall_seconds:
                queued = sum(broker.llen(queue) for queue in QUEUES)
                raise RuntimeError(
                    f"stalled: no progress for {ARGS.stall_seconds:.0f}s at {calls['calls']} endpoint calls, "
                    f"{executions} executions finished, {results} results stored; broker: {queued} queued, "
                    f"{broker.hlen('unacked')} delivered and unacknowledged"
                )
            if mode == "raw":
                time.sleep(0.1)
                continue
            if mode == "results" and results >= count:
                finished_at = latest
                break
            if mode in OURS and executions >= count:
                # The rewrite may stop storing results: then the last finished_at ends the run.
                no_results_polls = no_results_polls + 1 if results == 0 else 0
                if results >= messages or no_results_polls >= 3:
                    finished_at = latest
                    break
            time.sleep(0.25)
        if finished_at is None:
            stats = endpoint.stats()
            raise RuntimeError(f"not finished within {ARGS.run_timeout:.0f}s ({stats['calls']} endpoint calls)")
        result.worker_cpu = (worker.cpu_seconds() - cpu_before) / count
        machine_after = machine_cpu()
        result.machine_busy = (machine_after[0] - machine_before[0]) / max(1, machine_after[1] - machine_before[1])
        # The clock starts when the first task starts, not at the resume: the worker takes up to ~2 s
        # to act on add_consumer, which would weigh on short runs.
        first = broker.zrange(f"bench:first:{MODES[mode]}", 0, 0, withscores=True)
        result.start_lag = (first[0][1] - started) if first else 0.0
        result.seconds = finished_at - (first[0][1] if first else started)
        result.rate = count / result.seconds
    except Exception as exc:  # noqa: BLE001 - a broken configuration is reported, the others still run
        result.error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:200]
        print(f"    failed: {result.error} (worker log: {log_path})", flush=True)
    finally:
        worker.stop()
    poll_sessions = poller.close()
    result.problems = worker.log_problems()
    if result.error:
        return result, probe_result
    time.sleep(0.5)  # the worker's backends exit and report their statistics
    after = pg_counters(admin)
    task = MODES[mode]
    result.messages = int(broker.hget("bench:tasks", task) or 0)
    if result.messages:
        # Per execution (a message of ours may carry several).
        result.sql = int(broker.hget("bench:sql", task) or 0) / count
        kinds = broker.hgetall(f"bench:kinds:{task}")
        result.kinds = {kind.decode(): int(total) / count for kind, total in kinds.items()}
    result.durations = [float(value) for value in broker.lrange(f"bench:durations:{task}", 0, -1)]
    result.xacts = (after["xacts"] - before["xacts"] - poller.polls) / count
    result.sessions = (after["sessions"] - before["sessions"] - poll_sessions) / count
    result.rows = (after["rows"] - before["rows"]) / count
    stats = endpoint.stats()
    result.http_calls, result.http_connections = stats["calls"], stats["connections"]
    result.repeated_calls = stats.get("repeated", 0)
    if mode in OURS:
        result.statuses = {
            row["status"]: row["total"]
            for row in Execution.objects.values("status").annotate(total=Count("pk")).order_by()
        }
        connection.close()
    return result, probe_result


# --- report ---------------------------------------------------------------------------------------------


def percentile_ms(values: list[float], fraction: float) -> float | None:
    if len(values) < 2:
        return values[0] * 1000 if values else None
    return statistics.quantiles(values, n=100, method="inclusive")[round(fraction * 100) - 1] * 1000


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table(runs: list[Run]) -> list[str]:
    header = (
        "| mode | pool | c | runs | messages | exec/s best | exec/s median | best vs raw | task p50 ms | task p99 ms "
        "| SQL/exec | xact/exec | PG conn/exec | rows written/exec | worker CPU ms/exec | box CPU busy "
        "| HTTP conns | notes |"
    )
    lines = [header, "|" + "---|" * header.count(" | ") + "---|"]
    best_raw: dict[tuple[str, int], float] = {}
    groups: dict[tuple[str, str, int], list[Run]] = {}
    for run in runs:
        groups.setdefault((run.mode, run.pool, run.concurrency), []).append(run)
    for (mode, pool, concurrency), group in groups.items():
        good = [run for run in group if not run.error]
        if mode == "raw" and good:
            best_raw[(pool, concurrency)] = max(run.rate for run in good)
    order = {mode: index for index, mode in enumerate(MODES)}
    for (mode, pool, concurrency), group in sorted(groups.items(), key=lambda item: order[item[0][0]]):
        good = [run for run in group if not run.error]
        notes = sorted({run.error for run in group if run.error})
        problems: dict[str, int] = {}
        for run in group:
            for name, value in run.problems.items():
                problems[name] = problems.get(name, 0) + value
        notes += [f"{value} {name} in worker logs" for name, value in problems.items() if value]
        for run in good:
            odd = {status: total for status, total in run.statuses.items() if status != ExecutionStatus.SUCCEEDED}
            if odd:
                notes.append("not succeeded: " + ", ".join(f"{total} {status}" for status, total in odd.items()))
            if run.early_calls:
                notes.append(f"{run.early_calls} calls before the clock started")
            if run.http_calls > ARGS.executions:
                notes.append(f"{run.http_calls - ARGS.executions} extra endpoint calls")
            if run.repeated_calls:
                notes.append(f"{run.repeated_calls} calls repeated an Idempotency-Key")
        if not good:
            lines.append(
                f"| {MODE_LABELS[mode]} | {pool} | {concurrency} | 0/{len(group)} | | failed | | | | | | | | | | | | "
                f"{'; '.join(notes)} |"
            )
            continue
        rates = [run.rate for run in good]
        durations = [value for run in good for value in run.durations]
        raw = best_raw.get((pool, concurrency))
        versus = f"{max(rates) / raw:.0%}" if raw and mode != "raw" else ("100%" if mode == "raw" else "-")
        sql = [run.sql for run in good if run.sql is not None]
        lines.append(
            "| "
            + " | ".join(
                [
                    MODE_LABELS[mode],
                    pool,
                    str(concurrency),
                    f"{len(good)}/{len(group)}",
                    str(round(statistics.median(run.messages for run in good))),
                    f"{max(rates):.0f}",
                    f"{statistics.median(rates):.0f}",
                    versus,
                    _fmt(percentile_ms(durations, 0.5), ".1f"),
                    _fmt(percentile_ms(durations, 0.99), ".1f"),
                    _fmt(statistics.median(sql) if sql else None, ".1f"),
                    f"{statistics.median(run.xacts for run in good):.1f}",
                    f"{statistics.median(run.sessions for run in good):.2f}",
                    f"{statistics.median(run.rows for run in good):.1f}",
                    f"{statistics.median(run.worker_cpu for run in good) * 1000:.1f}",
                    f"{statistics.median(run.machine_busy for run in good):.0%}",
                    str(round(statistics.median(run.http_connections for run in good))),
                    "; ".join(notes),
                ]
            )
            + " |"
        )
    return lines


def kind_lines(runs: list[Run]) -> list[str]:
    lines, seen = [], set()
    for run in runs:
        if run.mode not in OURS or run.error or not run.kinds or (run.mode, run.pool, run.concurrency) in seen:
            continue
        seen.add((run.mode, run.pool, run.concurrency))
        kinds = sorted(run.kinds.items(), key=lambda item: (-item[1], item[0]))
        lines.append(
            f"- {MODE_LABELS[run.mode]}, {run.pool} -c {run.concurrency} ({run.sql:.1f}): "
            + ", ".join(f"{count:.2f} {kind}" if count % 1 else f"{count:.0f} {kind}" for kind, count in kinds)
        )
    return lines


def machine_summary() -> str:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = "?"
    with contextlib.suppress(OSError, IndexError, ValueError):
        kib = int(Path("/proc/meminfo").read_text().split("MemTotal:")[1].split()[0])
        memory = f"{kib / 2**20:.0f} GiB"
    with connection.cursor() as cursor:
        cursor.execute("SHOW server_version")
        postgres = cursor.fetchone()[0].split()[0]
    connection.close()
    redis_version = redis.Redis.from_url(ARGS.broker_url).info("server").get("redis_version", "?")
    versions = []
    for package in ("celery", "kombu", "django", "django_celery_results", "psycopg", "requests", "gevent"):
        with contextlib.suppress(Exception):
            from importlib.metadata import version

            versions.append(f"{package} {version(package)}")
    return (
        f"{os.cpu_count()} cores ({cpu}), {memory} RAM, {platform.system()} {platform.release()}; "
        f"Python {platform.python_version()}, PostgreSQL {postgres}, Redis {redis_version}; " + ", ".join(versions)
    )


def code_under_test() -> str:
    def git(*command: str) -> str:
        return subprocess.run(["git", *command], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    dirty = git("status", "--porcelain", "--", "schedules", "workflows", "scheduler_project")
    return f"{git('rev-parse', '--abbrev-ref', 'HEAD')} @ {git('rev-parse', '--short', 'HEAD')}" + (
        " (uncommitted changes in the app)" if dirty else ""
    )


def main() -> None:
    load_start = Path("/proc/loadavg").read_text().split()[:3]
    command = shlex.join([".venv/bin/python", "bench/worker_throughput.py", *sys.argv[1:]])
    started_at = datetime.now().astimezone()
    print(f"load at start: {' '.join(load_start)}; database {DB_NAME}; broker {ARGS.broker_url}")
    call_command("migrate", verbosity=0)
    summary = machine_summary()
    print(summary)
    print(f"code under test: {code_under_test()}")
    endpoint = Endpoint()
    broker = redis.Redis.from_url(ARGS.broker_url)
    admin = psycopg.connect(_admin_url("postgres"), autocommit=True)
    log_dir = DATA_DIR / "logs"
    log_dir.mkdir()
    runs: list[Run] = []
    probes: list[Probe] = []
    try:
        capacity = loopback_endpoint.probe(endpoint.port, connections=32, seconds=2.0)
        print(f"endpoint {endpoint.url}: load probe {capacity:,.0f} requests/s (32 kept-alive connections, 2 s)")
        fixture = seed(endpoint.url, ARGS.executions, ARGS.triggers)
        print(
            f"{ARGS.executions} executions per run over {len(fixture.triggers)} triggers; "
            f"{ARGS.repeat} runs of each of {len(ARGS.modes)} modes x {len(ARGS.pools)} pools"
        )
        probed: set[tuple[str, int]] = set()
        for repeat in range(ARGS.repeat):
            for pool, concurrency in ARGS.pools:
                for mode in ARGS.modes:
                    wants_probe = (pool, concurrency) not in probed
                    probed.add((pool, concurrency))
                    run, probe = run_once(
                        mode,
                        pool,
                        concurrency,
                        endpoint=endpoint,
                        fixture=fixture,
                        broker=broker,
                        admin=admin,
                        log_dir=log_dir,
                        probe=wants_probe,
                    )
                    run.repeat = repeat + 1
                    run.load = Path("/proc/loadavg").read_text().split()[0]
                    runs.append(run)
                    if probe:
                        probes.append(probe)
                    if not run.error:
                        print(
                            f"  [{repeat + 1}/{ARGS.repeat}] {mode:7} {pool:7} -c {concurrency:<3} "
                            f"{run.rate:7.1f}/s  ({run.seconds:.1f} s; published in {run.publish_seconds:.1f} s; "
                            f"first task {run.start_lag:.1f} s after the resume; "
                            f"worker CPU {run.worker_cpu * 1000:.1f} ms/exec; box {run.machine_busy:.0%} busy; "
                            f"load {run.load})",
                            flush=True,
                        )
    finally:
        endpoint.close()
        admin.close()
    load_end = Path("/proc/loadavg").read_text().split()[:3]
    lines = table(runs)
    probe_lines = [
        f"- {probe.pool} -c {probe.concurrency}: {PROBE_TASKS} x pg_sleep({PROBE_SLEEP}) took "
        + (f"{probe.seconds:.2f} s" if probe.seconds is not None else probe.error)
        + f"; psycopg wait function {probe.psycopg_wait}"
        + ("; gevent monkey-patched" if probe.gevent_patched else "")
        for probe in probes
    ]
    report = [
        "",
        f"## Worker throughput, {started_at:%Y-%m-%d %H:%M %Z}",
        "",
        f"{summary}; code under test: {code_under_test()}. "
        f"Load average at start {' '.join(load_start)}, at end {' '.join(load_end)}. "
        f"Workers with DEBUG={'1' if ARGS.debug else '0'}"
        + (
            f" and broker max_connections={ARGS.broker_max_connections} (an experiment, not the project's setting)."
            if ARGS.broker_max_connections
            else "."
        )
        + (
            ""
            if ARGS.no_gevent_db_pool or not any(pool == "gevent" for pool, _ in ARGS.pools)
            else " gevent workers with DATABASE_POOL_SIZE=-c (Django's connection pool)."
        ),
        "",
        f"    {command}",
        "",
        f"Endpoint: asyncio on 127.0.0.1, load probe {capacity:,.0f} requests/s. {ARGS.executions} tasks per run, "
        f"{len(fixture.triggers)} triggers for ours; exec/s from the first task's start (all messages already "
        "queued) to the last execution recorded. Task p50/p99: prerun to postrun in the worker, per message (ours: "
        "several executions each). SQL: statements sent by psycopg cursors in the worker, per execution; "
        "xact, PG conn and rows: pg_stat_database deltas per execution.",
        "",
        *lines,
        "",
        "Database waits overlapped by the pool:",
        "",
        *probe_lines,
        "",
        "SQL statements per execution of ours, by kind (first successful run of each mode on each pool):",
        "",
        *kind_lines(runs),
        "",
        "Runs in order (1-minute load average at the end of each):",
        "",
        *(
            f"- [{run.repeat}/{ARGS.repeat}] {run.mode} {run.pool} -c {run.concurrency}: "
            + (f"{run.rate:.1f}/s, box {run.machine_busy:.0%} busy" if not run.error else "failed")
            + f", load {run.load}"
            for run in runs
        ),
    ]
    print("\n".join(report))
    if not ARGS.no_record:
        results = ROOT / "bench" / "RESULTS.md"
        if not results.exists():
            results.write_text("# Benchmark results\n\nAppended by the scripts in bench/; newest last.\n")
        with results.open("a") as handle:
            handle.write("\n".join(report) + "\n")
        print(f"\nappended to {results.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
