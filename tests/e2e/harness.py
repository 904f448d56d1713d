"""Real processes for end-to-end tests: celery worker, celery beat, gunicorn and flower, started with the
same command lines as docker-compose.yml, plus a scripted HTTP endpoint on 127.0.0.1."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import connection

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
WORKER_COMMAND = [str(BIN / "celery"), "-A", "scheduler_project", "worker", "-l", "info"]
BEAT_COMMAND = [str(BIN / "celery"), "-A", "scheduler_project", "beat", "-l", "info"]
GUNICORN_COMMAND = [str(BIN / "gunicorn"), "scheduler_project.wsgi:application", "--workers", "2", "--timeout", "60"]
# docker-compose's flower service adds --address and --port as the tests do.
FLOWER_COMMAND = [str(BIN / "celery"), "-A", "scheduler_project", "flower"]


def wait_for(predicate: Callable[[], Any], *, timeout: float, what: str, interval: float = 0.1) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail naming ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def in_ci() -> bool:
    """CI=true turns skips of tests that need a real service, libfaketime or a browser into failures."""
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def database_url() -> str:
    """A DATABASE_URL for the test database that this test process is using."""
    data = connection.settings_dict
    if data["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{Path(data['NAME']).resolve()}"
    user = data.get("USER") or "postgres"
    password = f":{data['PASSWORD']}" if data.get("PASSWORD") else ""
    host = data.get("HOST") or "127.0.0.1"
    port = data.get("PORT") or 5432
    return f"postgres://{user}{password}@{host}:{port}/{data['NAME']}"


def child_env(**extra: str) -> dict[str, str]:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "scheduler_project.settings_test",
        "DATABASE_URL": database_url(),
        "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
        "SCHEDULER_DATA_DIR": str(settings.DATA_DIR),
        "PYTHONUNBUFFERED": "1",
    }
    env.update(extra)
    return env


def libfaketime_path() -> Path | None:
    """libfaketime.so.1: the copy the ``libfaketime`` package (requirements.txt) bundles, else the one
    of Debian's ``libfaketime`` package; None if neither is installed."""
    candidates: list[Path] = []
    spec = importlib.util.find_spec("libfaketime")  # found, not imported: only its .so is used
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidates.append(Path(location) / "vendor" / "libfaketime" / "src" / "libfaketime.so.1")
    candidates.extend(sorted(Path("/usr/lib").glob("*/faketime/libfaketime.so.1")))
    return next((path for path in candidates if path.is_file()), None)


class FakeClock:
    """A wall clock for child processes, shared by all children started with ``env()``.

    It runs at normal speed ``offset`` seconds ahead of the real clock (time.time, datetime.now);
    time.monotonic stays real, so sleeps and timeouts are unchanged. ``set`` moves it while the
    children run: libfaketime re-reads the offset from a file on every call (FAKETIME_NO_CACHE),
    so a test can start processes at leisure and then put the clock just before the moment it
    tests. https://github.com/wolfcw/libfaketime#readme (FAKETIME_TIMESTAMP_FILE, relative offsets)
    """

    def __init__(self, library: Path, directory: Path, *, at: datetime) -> None:
        self.library = library
        self.path = directory / "faketime"
        self.offset = 0.0
        self.set(at)

    def set(self, at: datetime) -> None:
        self.offset = at.timestamp() - time.time()
        partial = self.path.with_suffix(".partial")
        partial.write_text(f"{self.offset:+.6f}\n")
        partial.replace(self.path)  # atomic: a child never reads a half-written file

    def now(self) -> datetime:
        return datetime.fromtimestamp(time.time() + self.offset, tz=UTC)

    def env(self) -> dict[str, str]:
        preload = os.environ.get("LD_PRELOAD")
        return {
            "LD_PRELOAD": f"{self.library}:{preload}" if preload else str(self.library),
            "FAKETIME_TIMESTAMP_FILE": str(self.path),
            "FAKETIME_NO_CACHE": "1",
            "FAKETIME_DONT_FAKE_MONOTONIC": "1",
            "DONT_FAKE_MONOTONIC": "1",  # the name libfaketime before 0.9.10 reads
            "NO_FAKE_STAT": "1",  # file times stay as written
        }

    def problem(self) -> str | None:
        """None if a Python child sees this clock and a real monotonic clock, else what is wrong
        (e.g. the library could not be preloaded on this machine)."""
        script = "import time; a = time.monotonic(); time.sleep(0.2); print(time.time(), time.monotonic() - a)"
        probe = subprocess.run(
            [sys.executable, "-c", script], env={**os.environ, **self.env()}, capture_output=True, text=True, timeout=30
        )
        try:
            seen, slept = (float(value) for value in probe.stdout.split())
        except ValueError:
            return f"probe failed (exit {probe.returncode}): {probe.stdout.strip()} {probe.stderr.strip()}"
        expected = self.now().timestamp()
        if abs(seen - expected) > 60:
            return f"a child's clock read {seen:.0f}, not about {expected:.0f} ({probe.stderr.strip()})"
        if not 0.15 < slept < 5:
            return f"time.monotonic is faked too: a 0.2 s sleep measured {slept:.3f} s"
        return None


def purge_broker() -> None:
    """Start each test with an empty broker."""
    url = settings.CELERY_BROKER_URL
    if url.startswith("redis://"):
        import redis

        redis.Redis.from_url(url).flushdb()
    elif url.startswith("filesystem://"):
        for folder in ("queue", "processed"):
            for path in (settings.DATA_DIR / "broker" / folder).glob("*"):
                path.unlink(missing_ok=True)


class Process:
    """A child process in its own process group, logging to a file."""

    def __init__(self, name: str, command: list[str], log_dir: Path, env: dict[str, str]) -> None:
        self.name = name
        self.command = command
        self.log_path = log_dir / f"{name}-{uuid.uuid4().hex[:6]}.log"
        self._log = self.log_path.open("wb")
        self.popen = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, text: str, *, timeout: float = 30) -> None:
        def seen() -> bool:
            if self.popen.poll() is not None:
                raise AssertionError(f"{self.name} exited with {self.popen.returncode}:\n{self.log()[-3000:]}")
            return text in self.log()

        wait_for(seen, timeout=timeout, what=f"{self.name} to log {text!r}")

    def kill(self) -> None:
        """SIGKILL the whole process group (main process and pool children) at once."""
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(timeout=10)

    def stop(self) -> None:
        """SIGTERM the main process, which stops its own children (a celery worker's warm shutdown
        takes ~5 s; SIGTERM to the whole group kills the pool under it and the worker then hangs
        until the 15 s limit); SIGKILL whatever of the group is left."""
        if self.popen.poll() is None:
            try:
                os.kill(self.popen.pid, signal.SIGTERM)
                self.popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()
            except ProcessLookupError:
                pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)  # children that outlived their parent
        self._log.close()


@dataclass
class Call:
    at: float
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    raw: bytes = b""  # the body as sent, for signature checks
    finished_at: float | None = None  # time.monotonic() when the answer was sent


@dataclass
class Reply:
    """What the endpoint answers to one call; ``hold`` blocks the answer until it is set, ``delay``
    holds it that many seconds (each call its own delay)."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: dict[str, Any] | None = None
    hold: threading.Event | None = None
    delay: float = 0.0


class Endpoint:
    """A workflow execution endpoint on 127.0.0.1 that answers from a script and records calls.

    Like a real idempotent endpoint, it answers the same run id for a repeated Idempotency-Key.
    ``in_flight`` counts calls not answered yet; ``max_in_flight`` is the most there ever were.
    """

    def __init__(self, script: list[Reply] | None = None, default: Reply | None = None) -> None:
        self.script = list(script or [])
        self.default = default or Reply()
        self.calls: list[Call] = []
        self.runs: dict[str, str] = {}
        self.in_flight = 0
        self.max_in_flight = 0
        self._changed = threading.Condition()
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                call = Call(
                    time.monotonic(),
                    self.path,
                    {k.lower(): v for k, v in self.headers.items()},
                    json.loads(raw),
                    raw=raw,
                )
                with endpoint._changed:
                    reply = endpoint.script.pop(0) if endpoint.script else endpoint.default
                    endpoint.calls.append(call)
                    endpoint.in_flight += 1
                    endpoint.max_in_flight = max(endpoint.max_in_flight, endpoint.in_flight)
                    key = call.headers.get("idempotency-key", "")
                    run_id = endpoint.runs.setdefault(key, str(uuid.uuid4())) if reply.status < 300 else None
                    endpoint._changed.notify_all()
                try:
                    if reply.hold is not None:
                        reply.hold.wait(timeout=60)
                    if reply.delay:
                        time.sleep(reply.delay)
                    body = json.dumps(reply.body if reply.body is not None else {"run_id": run_id}).encode()
                    try:
                        self.send_response(reply.status)
                        for name, value in reply.headers.items():
                            self.send_header(name, value)
                        self.send_header("Content-Type", "application/json")
                        self.send_header("Content-Length", str(len(body)))
                        self.end_headers()
                        self.wfile.write(body)
                    except OSError:
                        pass  # the caller is gone (a killed worker)
                finally:
                    with endpoint._changed:
                        call.finished_at = time.monotonic()
                        endpoint.in_flight -= 1
                        endpoint._changed.notify_all()

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/run"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def wait_for_calls(self, count: int, *, timeout: float) -> list[Call]:
        deadline = time.monotonic() + timeout
        with self._changed:
            while len(self.calls) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"endpoint got {len(self.calls)} calls, expected {count} within {timeout}s")
                self._changed.wait(remaining)
            return list(self.calls)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
