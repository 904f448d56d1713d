"""Fixtures for end-to-end tests: real worker, beat and web processes against the test database."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable

import pytest

from .harness import (
    BEAT_COMMAND,
    GUNICORN_COMMAND,
    WORKER_COMMAND,
    Endpoint,
    Process,
    child_env,
    in_ci,
    purge_broker,
)


def pytest_collection_modifyitems(items):
    for item in items:
        if "/e2e/" in str(item.fspath):
            item.add_marker(pytest.mark.e2e)


class Supervisor:
    """Keeps one process running: starts it again (once a second at most) whenever it has exited."""

    def __init__(self, start: Callable[[], Process]) -> None:
        self._start = start
        self.process = start()
        self.restarts = 0
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stopped.wait(1):
            if self.process.popen.poll() is not None:
                self.restarts += 1
                self.process = self._start()

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=5)


class Stack:
    """Starts and stops the project's processes for one test."""

    def __init__(self, tmp_path, env_extra):
        self.tmp_path = tmp_path
        self.env_extra = env_extra
        self.processes: list[Process] = []
        self.supervisors: list[Supervisor] = []

    def env(self, **extra):
        return child_env(**{**self.env_extra, **extra})

    def start_worker(self, *, env_extra: dict[str, str] | None = None) -> Process:
        worker = self._launch("worker", WORKER_COMMAND, env_extra)
        worker.wait_for_log("ready.", timeout=60)
        return worker

    def start_supervised_worker(self) -> Supervisor:
        """A worker restarted whenever it exits, as docker-compose's ``restart: unless-stopped`` does
        (celery workers can exit with an "Unrecoverable error" when the broker connection drops,
        e.g. celery/celery#4652, celery/kombu#582)."""
        supervisor = Supervisor(lambda: self._launch("worker", WORKER_COMMAND, None))
        self.supervisors.append(supervisor)
        supervisor.process.wait_for_log("ready.", timeout=60)
        return supervisor

    def start_beat(self, *, env_extra: dict[str, str] | None = None) -> Process:
        beat = self._launch("beat", BEAT_COMMAND, env_extra)
        beat.wait_for_log("beat: Starting", timeout=60)
        return beat

    def start_worker_and_beat(self, *, env_extra: dict[str, str] | None = None) -> tuple[Process, Process]:
        """Both at once (start-up is the slow part); returns when both are ready."""
        worker = self._launch("worker", WORKER_COMMAND, env_extra)
        beat = self._launch("beat", BEAT_COMMAND, env_extra)
        worker.wait_for_log("ready.", timeout=60)
        beat.wait_for_log("beat: Starting", timeout=60)
        return worker, beat

    def _launch(self, name: str, command: list[str], env_extra: dict[str, str] | None) -> Process:
        process = Process(name, command, self.tmp_path, self.env(**(env_extra or {})))
        self.processes.append(process)
        return process

    def start_web(self) -> tuple[Process, str]:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        base = f"http://127.0.0.1:{port}"
        web = Process("web", [*GUNICORN_COMMAND, "--bind", f"127.0.0.1:{port}"], self.tmp_path, self.env())
        self.processes.append(web)
        web.wait_for_log("Booting worker", timeout=60)
        return web, base

    def logs(self) -> str:
        return "\n".join(f"===== {p.name} ({p.log_path})\n{p.log()[-4000:]}" for p in self.processes)

    def stop(self):
        for supervisor in self.supervisors:
            supervisor.stop()
        for process in reversed(self.processes):
            process.stop()


@pytest.fixture
def stack(transactional_db, tmp_path, request):
    """Real processes against this test's database and broker; their logs are shown on failure."""
    purge_broker()
    started = Stack(tmp_path, {})
    yield started
    started.stop()
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        print(started.logs())


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


@pytest.fixture
def endpoint():
    server = Endpoint()
    yield server
    server.close()


@pytest.fixture
def browser_factory(tmp_path):
    """browser_factory(base_url) -> tests.e2e.browser.Browser (headless Chromium from Debian's packages);
    each one is closed after the test. Skips without chromium and chromedriver, fails in CI."""
    from .browser import Browser, chromium_paths

    if chromium_paths() is None:
        message = "chromium and chromedriver are not installed (Debian packages chromium, chromium-driver)"
        pytest.fail(message) if in_ci() else pytest.skip(message)
    browsers: list[Browser] = []

    def make(base_url: str) -> Browser:
        browser = Browser(base_url, tmp_path)
        browsers.append(browser)
        return browser

    yield make
    for browser in browsers:
        browser.quit()
