"""bench/engine_steps.py keeps working: a tiny run prints its figures (on its own temporary SQLite)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_engine_steps_bench__prints_the_overhead_per_step():
    """Three steps, one run: the script migrates a scratch database, runs both kinds and prints the overhead line."""
    env = {name: value for name, value in os.environ.items() if name not in ("DATABASE_URL", "DJANGO_SETTINGS_MODULE")}
    env.pop("SCHEDULER_DATA_DIR", None)
    done = subprocess.run(
        [sys.executable, "bench/engine_steps.py", "--steps", "3", "--runs", "1"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "1 runs of 3 steps per kind on sqlite" in done.stdout
    assert "http step overhead beyond the call" in done.stdout
