"""What bench/worker_instructions.py and bench/beat_instructions.py share: running a child under
valgrind's callgrind and reading its instruction count, their scratch database, their sizes and
the section they append to bench/RESULTS.md."""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
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


def finish(title: str, command: list[str], took: float, notes: list[str], lines: list[str], *, record: bool) -> None:
    """Print the table and, with ``record``, append a section to bench/RESULTS.md: title and time,
    command, machine, notes, table."""
    print("\n".join(lines))
    if record:
        append_results(title, command, took, notes, lines)


def append_results(title: str, command: list[str], took: float, notes: list[str], table: list[str]) -> None:
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


def table(
    per: dict[str, float], labels: dict[str, str], column: str, base: str, base_column: str, show: Any
) -> list[str]:
    """A markdown table of ``per`` (mode -> instructions), each shown by ``show`` and against ``base``'s."""
    reference = per.get(base)
    return [
        f"| mode | {column} | {base_column} |",
        "| --- | --- | --- |",
        *(
            f"| {labels[mode]} | {show(value)} | {f'{value / reference:.2f}x' if reference else '—'} |"
            for mode, value in per.items()
        ),
    ]


def arguments(
    doc: str, modes: dict[str, str], sizes_default: str, sizes_help: str, database_url: str, broker_url: str = ""
) -> tuple[argparse.Namespace, int, int, list[str]]:
    """The benchmarks' command line, checked: (args, N1, N2, modes chosen). Makes the scratch database."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--sizes", default=sizes_default, help=sizes_help)
    parser.add_argument("--modes", default=",".join(modes), help=f"subset of {','.join(modes)}")
    parser.add_argument("--database-url", default=database_url, help="a scratch database (emptied)")
    if broker_url:
        parser.add_argument("--broker-url", default=broker_url, help="a scratch Redis database (emptied)")
    parser.add_argument("--no-record", action="store_true", help="do not append the table to bench/RESULTS.md")
    args = parser.parse_args()
    small, large = sizes(parser, args.sizes, sizes_default)
    chosen = [mode.strip() for mode in args.modes.split(",")]
    if unknown := set(chosen) - set(modes):
        parser.error(f"--modes: unknown {sorted(unknown)}; choose from {', '.join(modes)}")
    for option in ("database_url", "broker_url"):
        url = getattr(args, option, None)
        if url is not None and urlsplit(url).hostname not in {"127.0.0.1", "localhost", "::1"}:
            parser.error(f"--{option.replace('_', '-')}: loopback only")
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (Debian: apt-get install valgrind)")
    ensure_database(args.database_url)
    return args, small, large, chosen
