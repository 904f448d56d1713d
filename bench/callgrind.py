"""What bench/worker_instructions.py and bench/beat_instructions.py share: running a child under
valgrind's callgrind and reading its instruction count, their scratch database, their sizes and
the section they append to bench/RESULTS.md."""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parents[1]


def ensure_database(database_url: str) -> None:
    import psycopg

    parts = urlsplit(database_url)
    name = parts.path.lstrip("/")
    with psycopg.connect(urlunsplit(parts._replace(path="/postgres")), autocommit=True) as admin:
        if admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone() is None:
            admin.execute(f'CREATE DATABASE "{name}"')


def instructions(command: list[str], out_dir: str, label: str) -> tuple[int, dict]:
    """Run ``command`` under callgrind: (instructions it executed, the JSON its last line printed)."""
    out = Path(out_dir) / f"callgrind.{label}"
    result = subprocess.run(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *command],
        capture_output=True,
        text=True,
        check=False,
    )
    found = re.search(r"(?:Collected|I\s+refs)\s*:\s*([\d,]+)", result.stderr)
    if result.returncode != 0 or found is None:
        raise SystemExit(f"{label}: valgrind run failed (exit {result.returncode}):\n{result.stderr[-2000:]}")
    report = json.loads(result.stdout.strip().splitlines()[-1])
    return int(found.group(1).replace(",", "")), report


def sizes(parser: argparse.ArgumentParser, text: str, example: str) -> tuple[int, int]:
    """``--sizes N1,N2`` read, or the parser's error naming what is allowed."""
    try:
        small, large = (int(size) for size in text.split(","))
    except ValueError:
        parser.error(f"--sizes: two whole numbers, N1,N2, e.g. {example}")
    if not 0 < small < large:
        parser.error("--sizes: N1 must be at least 1 and smaller than N2")
    return small, large


def code_under_test() -> str:
    def git(*command: str) -> str:
        return subprocess.run(["git", *command], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    dirty = git("status", "--porcelain", "--", "schedules", "workflows", "scheduler_project")
    return git("rev-parse", "--short", "HEAD") + (" (uncommitted changes in the app)" if dirty else "")


def append_results(title: str, command: list[str], took: float, notes: list[str], table: list[str]) -> None:
    """Append a section to bench/RESULTS.md: title and time, command, machine, notes, table."""
    versions = subprocess.run(["valgrind", "--version"], capture_output=True, text=True).stdout.strip()
    section = [
        "",
        f"## {title}, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "",
        f"- Command: `{' '.join(['.venv/bin/python', *command])}`",
        f"- Machine: {os.cpu_count()} cores, Python {platform.python_version()}, {versions}; commit "
        f"{code_under_test()}; took {took:.0f} s",
        *(f"- {note}" for note in notes),
        "",
        *table,
        "",
    ]
    with (ROOT / "bench" / "RESULTS.md").open("a") as results:
        results.write("\n".join(section))
    print("appended to bench/RESULTS.md")


def per_unit(script: str, common: list[str], modes: list[str], small: int, large: int, work: str) -> dict[str, float]:
    """Instructions per unit of work for each mode: ``script --child-prepare *common N data`` (not
    counted), then ``script --child-run *common mode data`` under callgrind, at N = small and large;
    (count at large - count at small) / (large - small). The run must report ``done`` = N."""
    import sys

    result: dict[str, float] = {}
    for mode in modes:
        counts = {}
        for size in (small, large):
            data = str(Path(work) / f"{mode}-{size}.data")
            subprocess.run([sys.executable, script, "--child-prepare", *common, str(size), data], check=True)
            total, report = instructions(
                [sys.executable, script, "--child-run", *common, mode, data], work, f"{mode}-{size}"
            )
            if report["done"] != size:
                raise SystemExit(f"{mode} at {size}: only {report['done']} of {size} done")
            counts[size] = total
            print(f"  {mode:9s} N={size:<6d} {total / 1e6:10,.1f} M instructions", flush=True)
        result[mode] = (counts[large] - counts[small]) / (large - small)
    return result
