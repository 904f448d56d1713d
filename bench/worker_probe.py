"""Bench-only code for the worker, loaded with ``celery ... worker -I bench.worker_probe``.

Used by bench/worker_throughput.py; nothing here runs in production.

Tasks (the comparison modes):

- ``bench.http_post``: one POST through a plain requests Session, no result stored (the ceiling);
- ``bench.http_post_result``: the same, its result stored by django-celery-results;
- ``bench.pg_sleep``: ``SELECT pg_sleep(s)`` through Django's connection, to see whether a pool
  runs database waits concurrently (gevent + psycopg).

Counters, for every task the worker runs (ours included, without touching its code): SQL
statements, counted where every one of them passes, psycopg's ``Cursor.execute`` and
``executemany`` (the ORM's, raw SQL, Django's savepoints, connection set-up and health checks; not
the BEGIN/COMMIT psycopg sends by itself), by task and by kind ("UPDATE schedules_execution");
tasks run; and each task's run time (``task_prerun`` to ``task_postrun``, which comes after
django-celery-results has stored the result). They are kept in memory and added to Redis
(``bench:sql``, ``bench:tasks``: field = task name; ``bench:kinds:<task name>``: field = kind;
``bench:durations:<task name>``: a list of seconds) at most every 0.5 s and when the process
shuts down, so they cost no round trip per task; and when each process started its first task of
each name (``bench:first:<task name>``, a sorted set), where the harness starts its clock. The
harness counts transactions and connections on the server side.
"""

from __future__ import annotations

import functools
import json
import os
import re
import threading
import time
from typing import Any

import psycopg
import redis
import requests
from celery import shared_task, signals
from django.db import connection

_FLUSH_EVERY = 0.5
_lock = threading.Lock()
_current = threading.local()  # greenlet-local under gevent's monkey-patching
_pending: dict[str, Any] = {}
_started: dict[str, float] = {}
_seen: set[str] = set()
_clients: dict[str, Any] = {}


def _reset() -> None:
    """Start empty: at import, and in a forked prefork child (which must not report its parent's counts)."""
    global _lock
    _lock = threading.Lock()
    _pending.update(sql={}, kinds={}, tasks={}, durations={}, flushed=time.monotonic())
    _started.clear()
    _seen.clear()
    _clients.clear()  # a child makes its own Redis and HTTP connections
    _sessions.clear()


def _redis() -> Any:
    if "redis" not in _clients:
        _clients["redis"] = redis.Redis.from_url(os.environ["CELERY_BROKER_URL"])
    return _clients["redis"]


_TABLE = re.compile(r"\b(?:FROM|INTO|UPDATE)\s+\"?(\w+)", re.IGNORECASE)


def _kind(query: Any) -> str:
    """'SELECT schedules_execution', 'UPDATE schedules_trigger', 'SAVEPOINT', 'SET'...: what a statement is."""
    if isinstance(query, bytes):
        query = query.decode(errors="replace")
    elif not isinstance(query, str):
        query = getattr(query, "_obj", None) or str(query)  # psycopg.sql.Composed
        if not isinstance(query, str):
            query = str(query)
    words = query.split()
    verb = words[0].upper() if words else "?"
    table = _TABLE.search(query) if verb in {"SELECT", "INSERT", "UPDATE", "DELETE", "WITH"} else None
    if table:
        return f"{verb} {table.group(1)}"
    if verb == "SELECT" and len(words) > 1:  # SELECT 1 (health check), SELECT set_config(...) (time zone)
        return f"SELECT {words[1].split('(')[0]}"
    return verb


def _count(query: Any) -> None:
    name = getattr(_current, "task", None) or "-"
    kind = _kind(query)
    with _lock:
        _pending["sql"][name] = _pending["sql"].get(name, 0) + 1
        kinds = _pending["kinds"].setdefault(name, {})
        kinds[kind] = kinds.get(kind, 0) + 1


def _counting(method: Any) -> Any:
    @functools.wraps(method)
    def wrapper(self: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
        _count(query)
        return method(self, query, *args, **kwargs)

    wrapper.bench_counting = True
    return wrapper


# Every statement a psycopg cursor sends: the ORM's, raw SQL, Django's connection set-up (SET TIME
# ZONE) and health checks alike. BEGIN/COMMIT, which psycopg sends by itself, are not statements here
# (the harness counts transactions on the server).
for _name in ("execute", "executemany"):
    if not getattr(getattr(psycopg.Cursor, _name), "bench_counting", False):
        setattr(psycopg.Cursor, _name, _counting(getattr(psycopg.Cursor, _name)))


@signals.task_prerun.connect
def _task_started(task_id: str, task: Any, **kwargs: Any) -> None:
    _current.task = task.name
    _started[task_id] = time.perf_counter()
    if task.name not in _seen:
        # When the first task of this name started in this process: one Redis call per process, not per task.
        _seen.add(task.name)
        _redis().zadd(f"bench:first:{task.name}", {f"{os.getpid()}": time.time()})


@signals.task_postrun.connect
def _task_finished(task_id: str, task: Any, **kwargs: Any) -> None:
    finished = time.perf_counter()
    started = _started.pop(task_id, None)
    _current.task = None
    with _lock:
        _pending["tasks"][task.name] = _pending["tasks"].get(task.name, 0) + 1
        if started is not None:
            _pending["durations"].setdefault(task.name, []).append(finished - started)
        due = time.monotonic() - _pending["flushed"] >= _FLUSH_EVERY
    if due:
        flush()


def flush(**kwargs: Any) -> None:
    """Add what this process counted since the last flush to Redis."""
    with _lock:
        sql, kinds, tasks, durations = _pending["sql"], _pending["kinds"], _pending["tasks"], _pending["durations"]
        _pending.update(sql={}, kinds={}, tasks={}, durations={}, flushed=time.monotonic())
    if not (sql or tasks or durations):
        return
    pipe = _redis().pipeline(transaction=False)
    for name, count in sql.items():
        pipe.hincrby("bench:sql", name, count)
    for name, counts in kinds.items():
        for kind, count in counts.items():
            pipe.hincrby(f"bench:kinds:{name}", kind, count)
    for name, count in tasks.items():
        pipe.hincrby("bench:tasks", name, count)
    for name, values in durations.items():
        pipe.rpush(f"bench:durations:{name}", *(f"{value:.6f}" for value in values))
    pipe.execute()


# Opt-in experiment (worker_throughput.py --broker-max-connections): a larger Redis connection pool
# for the broker than kombu's default of 10, which gevent's concurrent acks run out of.
if os.environ.get("BENCH_BROKER_MAX_CONNECTIONS"):
    from celery import current_app

    current_app.conf.broker_transport_options = {
        **(current_app.conf.broker_transport_options or {}),
        "max_connections": int(os.environ["BENCH_BROKER_MAX_CONNECTIONS"]),
    }

_sessions: dict[str, requests.Session] = {}
_reset()
os.register_at_fork(after_in_child=_reset)
signals.worker_process_shutdown.connect(flush)  # prefork children
signals.worker_shutdown.connect(flush)  # the main process (threads, gevent, solo)


@signals.worker_ready.connect
def _report_environment(**kwargs: Any) -> None:
    """What the harness reports next to the gevent rows: how psycopg waits for the server."""
    import psycopg.waiting

    patched = False
    try:
        from gevent import monkey

        patched = monkey.is_module_patched("socket")
    except ImportError:
        pass
    _redis().hset(
        "bench:environment",
        mapping={"psycopg_wait": psycopg.waiting.wait.__name__, "gevent_patched": int(patched)},
    )


# --- the comparison tasks -------------------------------------------------------------------------


def _session() -> requests.Session:
    """One Session per process, shared by its threads or greenlets, with a pool as large as the pool."""
    with _lock:
        if "session" not in _sessions:
            session = requests.Session()
            size = int(os.environ.get("BENCH_POOL_SIZE", "10"))
            session.mount("http://", requests.adapters.HTTPAdapter(pool_connections=1, pool_maxsize=max(size, 10)))
            _sessions["session"] = session
        return _sessions["session"]


def _post(url: str, payload: dict[str, Any]) -> dict[str, Any]:
    response = _session().post(
        url, data=json.dumps(payload), headers={"Content-Type": "application/json"}, timeout=(5, 30)
    )
    response.raise_for_status()
    return {"http_status": response.status_code, "run_id": response.json()["run_id"]}


@shared_task(name="bench.http_post", ignore_result=True)
def http_post(url: str, payload: dict[str, Any]) -> dict[str, Any]:
    return _post(url, payload)


@shared_task(name="bench.http_post_result", ignore_result=False)
def http_post_result(url: str, payload: dict[str, Any]) -> dict[str, Any]:
    return _post(url, payload)


@shared_task(name="bench.pg_sleep", ignore_result=True)
def pg_sleep(seconds: float) -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_sleep(%s)", [seconds])
    _redis().rpush("bench:probe", f"{time.time():.6f}")
