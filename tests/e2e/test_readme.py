"""The README as a newcomer reads it: `bin/dev` comes up and says "ready", and the API walk-through
runs as written against it, every call answering 2xx. Every ```bash block of the README is either
run here or named below with what runs it instead, so a new block can't go untested unnoticed."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import uuid
from pathlib import Path

import pytest

from .harness import ROOT, Process, child_env

README = ROOT / "README.md"

# The first line of each ```bash block that this test does not run, and what runs it instead.
RUN_ELSEWHERE = {
    "bin/test": "CI: .ci/run runs bin/test in both of its test phases",
    "DATABASE_URL=postgres://postgres@127.0.0.1:5432/scheduler \\": "CI: .ci/run's postgres phase",
    "export DATABASE_URL=postgres://user:password@127.0.0.1:5432/scheduler": (
        "bin/dev here (with the test database); migrate, gunicorn, worker and beat with these "
        "command lines: tests/e2e/harness.py"
    ),
    "cp .env.example .env        # set SECRET_KEY and SCHEDULER_SECRET_KEYS": (
        "docker compose: no Docker engine here; tests/test_deployment.py checks the compose file"
    ),
    "bench/run_all": ("the benchmarks, run by hand (minutes to hours): bench/RESULTS.md keeps their figures"),
}
RUN_HERE = ("bin/dev", "# With bin/dev running, in a second terminal")


def bash_blocks() -> list[str]:
    return re.findall(r"^```bash\n(.*?)^```$", README.read_text(), flags=re.DOTALL | re.MULTILINE)


def test_readme__every_bash_block_is_run_by_a_test_or_ci():
    first_lines = [block.splitlines()[0] for block in bash_blocks()]
    unaccounted = [line for line in first_lines if line not in RUN_ELSEWHERE and not line.startswith(RUN_HERE)]
    assert not unaccounted, (
        f"README bash blocks no test runs (run them, or say in RUN_ELSEWHERE what does): {unaccounted}"
    )
    stale = set(RUN_ELSEWHERE) - set(first_lines)
    assert not stale, f"RUN_ELSEWHERE names blocks the README no longer has: {stale}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def marked_pids(marker: str) -> list[int]:
    """Processes started by this test (they all inherit README_TEST_RUN=marker)."""
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if f"README_TEST_RUN={marker}".encode() in environ.read_bytes().split(b"\0"):
                found.append(int(environ.parent.name))
        except OSError:
            continue
    return found


def test_readme__bin_dev_gets_ready_and_the_api_walkthrough_runs_as_written(stack, tmp_path):
    port = free_port()
    marker = uuid.uuid4().hex
    env = child_env(DEV_PORT=str(port), README_TEST_RUN=marker)
    env.pop("DJANGO_SETTINGS_MODULE")  # manage.py's default, as a newcomer runs it
    dev = Process("bin-dev", [str(ROOT / "bin" / "dev")], tmp_path, env)
    try:
        dev.wait_for_log("bin/dev: ready", timeout=120)
        assert f"Admin:    http://127.0.0.1:{port}/admin/" in dev.log()

        # The API block exactly as the README has it, but for the port; every curl must get a 2xx.
        block = next(block for block in bash_blocks() if block.startswith(RUN_HERE[1]))
        script = 'curl() { command curl --fail-with-body --show-error "$@"; echo; }\n' + block.replace(
            "127.0.0.1:8000", f"127.0.0.1:{port}"
        )
        walk = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert walk.returncode == 0, f"README API block failed:\n{walk.stdout}\n{walk.stderr}"
        answers = [json.loads(line) for line in walk.stdout.splitlines() if line.startswith("{")]
        trigger = next(answer for answer in answers if answer.get("name") == "Weekday mornings")
        assert trigger["description"] == "At 09:00, Monday through Friday (Europe/Paris)"
        backfill = next(answer for answer in answers if "execution_ids" in answer)
        assert len(backfill["execution_ids"]) == 5  # the five weekdays of 2026-03-02..06
        assert any("secret" in answer for answer in answers)  # rotate-secret shows the new one once
    finally:
        if dev.popen.poll() is None:
            dev.popen.send_signal(signal.SIGINT)  # Ctrl-C: bin/dev stops web, worker and beat itself
            with contextlib.suppress(subprocess.TimeoutExpired):
                dev.popen.wait(timeout=30)
        stopped_cleanly = dev.popen.poll() is not None and not marked_pids(marker)
        for pid in marked_pids(marker):
            os.kill(pid, signal.SIGKILL)
        dev.stop()
    assert stopped_cleanly, f"bin/dev left processes behind after Ctrl-C:\n{dev.log()[-3000:]}"
    assert dev.popen.returncode == 130


@pytest.mark.parametrize("port", ["0", "http", "70000"])
def test_bin_dev__refuses_a_bad_port(port):
    result = subprocess.run(
        [str(ROOT / "bin" / "dev")], env={**os.environ, "DEV_PORT": port}, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2
    assert f"DEV_PORT must be a port number (1-65535), not '{port}'" in result.stderr
