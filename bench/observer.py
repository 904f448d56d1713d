"""A broker observer for the benchmarks: drains the Redis queues and timestamps each message.

Celery's Redis transport LPUSHes each message (JSON) onto a list named after the queue (with a
suffix per priority step for prioritised messages). ``BrokerObserver`` waits on those lists with
BRPOP, then empties them all in one MULTI (LRANGE + DEL), stamping every message with the time it
was taken: a message's stamp is at most one drain loop after its LPUSH. It keeps the raw bytes;
``decode`` reads them afterwards, so the observer does almost nothing while a beat is measured.
It never looks at the task name to decide what it takes: whatever lands on a queue is recorded.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import redis

QUEUES = ("high", "normal", "low")
# kombu's Redis transport: priority steps 0, 3, 6, 9; step 0 is the bare queue name.
_PRIORITY_SEP = "\x06\x16"
_STEPS = (3, 6, 9)


def queue_keys(queues: tuple[str, ...] = QUEUES) -> list[str]:
    return [key for q in queues for key in (q, *(f"{q}{_PRIORITY_SEP}{step}" for step in _STEPS))]


@dataclass
class Message:
    at: float  # time.time() when the observer took it off the queue
    queue: str
    task: str | None
    args: list
    kwargs: dict
    headers: dict

    @property
    def trigger_id(self) -> int | None:
        value = self.kwargs.get("trigger_id")
        if value is None:
            name = str(self.headers.get("periodic_task_name") or "")
            if name.startswith("trigger:"):
                value = name.removeprefix("trigger:")
        try:
            return int(value) if value is not None else None
        except (TypeError, ValueError):
            return None

    @property
    def scheduled_for(self) -> str | None:
        value = self.kwargs.get("scheduled_for")
        return str(value) if value else None

    @property
    def execution_id(self) -> str | None:
        """The Execution a message names (``execution_id``, or a UUID as first argument)."""
        value = self.kwargs.get("execution_id")
        if value is None and self.args and isinstance(self.args[0], str):
            value = self.args[0]
        try:
            return str(uuid.UUID(str(value))) if value else None
        except ValueError:
            return None


def decode(at: float, key: str, raw: bytes) -> list[Message]:
    """The message, or one per attempt of a message that carries several (``run_executions``:
    kwargs ``attempts`` = [[execution_id, attempt], ...]), each with the kwargs of a single one."""
    message = _decode(at, key, raw)
    attempts = message.kwargs.get("attempts")
    if not isinstance(attempts, list):
        return [message]
    return [
        Message(at, message.queue, message.task, [], {"execution_id": pair[0], "attempt": pair[1]}, message.headers)
        for pair in attempts
        if isinstance(pair, list) and len(pair) == 2
    ]


def _decode(at: float, key: str, raw: bytes) -> Message:
    queue = key.split(_PRIORITY_SEP)[0]
    try:
        envelope = json.loads(raw)
        headers = envelope.get("headers") or {}
        body: Any = envelope.get("body")
        if (envelope.get("properties") or {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        payload = json.loads(body) if isinstance(body, (bytes, str)) else body
        if isinstance(payload, list) and len(payload) >= 2:  # task protocol 2: [args, kwargs, embed]
            args, kwargs = payload[0] or [], payload[1] or {}
        elif isinstance(payload, dict):  # protocol 1
            args, kwargs = payload.get("args") or [], payload.get("kwargs") or {}
            headers = {**headers, "task": payload.get("task")}
        else:
            args, kwargs = [], {}
        return Message(at, queue, headers.get("task"), list(args), dict(kwargs), headers)
    except (ValueError, TypeError, AttributeError):
        return Message(at, queue, None, [], {}, {})


@dataclass
class BrokerObserver:
    url: str
    queues: tuple[str, ...] = QUEUES
    raw: list[tuple[float, str, bytes]] = field(default_factory=list)
    drains: int = 0

    def __post_init__(self) -> None:
        self._client = redis.Redis.from_url(self.url)
        self._keys = queue_keys(self.queues)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def flush(self) -> None:
        """Empty the observer's Redis database (the benchmark's own broker database), keeping the
        run lock (see ``RunLock``)."""
        holder = self._client.get(RunLock.KEY)
        ttl = self._client.ttl(RunLock.KEY)
        self._client.flushdb()
        if holder is not None:
            self._client.set(RunLock.KEY, holder, ex=max(ttl, 1))

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="broker-observer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._drain()

    def count(self) -> int:
        with self._lock:
            return len(self.raw)

    def first_at(self) -> float | None:
        with self._lock:
            return self.raw[0][0] if self.raw else None

    def messages(self, since: int = 0, until: int | None = None) -> list[Message]:
        """The messages taken off the queues from the ``since``-th to before the ``until``-th (as
        ``count`` counts them: a message of several attempts is one there, one per attempt here)."""
        with self._lock:
            raw = self.raw[since:until]
        return [message for at, key, data in raw for message in decode(at, key, data)]

    def _run(self) -> None:
        client = redis.Redis.from_url(self.url)
        while not self._stop.is_set():
            popped = client.brpop(self._keys, timeout=0.2)
            if popped is None:
                continue
            at = time.time()
            key, data = popped
            # BRPOP took the oldest of one list (LPUSH adds on the left); the drain takes the rest.
            with self._lock:
                self.raw.append((at, key.decode(), data))
            while self._drain(client):
                pass

    def _drain(self, client: redis.Redis | None = None) -> int:
        client = client or self._client
        pipe = client.pipeline(transaction=True)
        for key in self._keys:
            pipe.lrange(key, 0, -1)
        for key in self._keys:
            pipe.delete(key)
        results = pipe.execute()
        at = time.time()
        taken = 0
        with self._lock:
            for key, values in zip(self._keys, results[: len(self._keys)], strict=True):
                # LPUSH puts the newest first.
                for data in reversed(values):
                    self.raw.append((at, key, data))
                taken += len(values)
            self.drains += 1
        return taken


class RunLock:
    """One benchmark run per broker database: two would flush and drain each other's messages.

    A key in that database (SET NX with a TTL), renewed by a thread while the run lasts."""

    KEY = "bench:beat-scale:run"
    TTL = 60

    def __init__(self, url: str, holder: str) -> None:
        self._client = redis.Redis.from_url(url)
        self.holder = holder
        self._stop = threading.Event()

    def acquire(self) -> None:
        if not self._client.set(self.KEY, self.holder, nx=True, ex=self.TTL):
            other = self._client.get(self.KEY)
            raise SystemExit(
                f"another benchmark run holds the broker database ({other!r}); wait for it, or give this "
                "run other Redis databases (--broker-url, --redbeat-url) and another --database-url"
            )
        threading.Thread(target=self._renew, name="run-lock", daemon=True).start()

    def _renew(self) -> None:
        while not self._stop.wait(self.TTL / 3):
            self._client.set(self.KEY, self.holder, ex=self.TTL)

    def release(self) -> None:
        self._stop.set()
        if self._client.get(self.KEY) == self.holder.encode():
            self._client.delete(self.KEY)
