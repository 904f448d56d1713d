"""Beat's CPU per due trigger in a burst, in instructions (valgrind's callgrind), beside stock sends.

    .venv/bin/python bench/beat_instructions.py [--sizes 1000,3000] [--no-record]

bench/beat_scale.py times a real beat's burst in seconds, which on a shared 2-core machine move by
a factor of two between days (bench/RESULTS.md). A burst is mostly beat's own Python (the
database does the rest on the other core), so its instruction count is the figure that says
whether a change made it cheaper, whatever else the machine is doing.

For each mode a child process runs under ``valgrind --tool=callgrind`` twice, with N1 and N2 due
triggers (``--sizes``); (instructions at N2 - at N1) / (N2 - N1) is the cost of one, the start-up
(Python, Django, the first connections) cancelling out:

- ``ours``: ``dispatch.dispatch_due`` as beat calls it when N triggers fall due on one minute (the
  layout of beat_scale's burst: five zones, three priorities): claim them in batches, write their
  executions, advance them, publish (on the send thread, as beat does) and mark them sent;
- ``send_task``: ``app.send_task`` of one ``schedules.fire_trigger`` message per trigger on one
  producer, what stock celery beat (``DatabaseScheduler``, RedBeat) does per due entry once it
  has found it: the floor of a beat that sends one message per trigger and records nothing.

The triggers are seeded (bench/seed.py) before each child starts and the broker queues emptied.
PostgreSQL and Redis run in other processes and are not counted. Needs valgrind (Debian:
``apt-get install valgrind``). Uses (creates, migrates, empties) the database in
``--database-url`` and empties the Redis database in ``--broker-url``: give it scratch ones.
Loopback only. The table is appended to bench/RESULTS.md (``--no-record``: not).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/bench_beat_instructions"
DEFAULT_BROKER_URL = "redis://127.0.0.1:6379/12"
MODES = {
    "ours": "ours: dispatch_due (claim, write executions, advance, publish, mark sent)",
    "send_task": "stock: app.send_task per trigger (what celery beat does per due entry)",
}


def _setup(database_url: str, broker_url: str, data_dir: str) -> None:
    os.environ.update(
        DJANGO_SETTINGS_MODULE="scheduler_project.settings",
        DATABASE_URL=database_url,
        CELERY_BROKER_URL=broker_url,
        SCHEDULER_DATA_DIR=data_dir,
        SCHEDULER_OUTBOUND_ALLOW_NETWORKS="127.0.0.0/8",
    )
    sys.path.insert(0, str(ROOT))
    import logging

    import django

    django.setup()
    logging.disable(logging.WARNING)


# --- the children -------------------------------------------------------------------------------


def child_prepare(database_url: str, broker_url: str, data_dir: str, count: int, slot_file: str) -> None:
    """Not measured: ``count`` triggers due at one slot (a minute from now); the slot to ``slot_file``."""
    _setup(database_url, broker_url, data_dir)
    import redis
    from django.core.management import call_command

    from bench import seed

    call_command("migrate", verbosity=0)
    redis.Redis.from_url(broker_url).flushdb()
    now = datetime.now(UTC)
    slot = (now + timedelta(minutes=2)).replace(second=0, microsecond=0)
    seed.seed_triggers(seed.burst_layout(count, now, slot, count), now=now, check=False)
    Path(slot_file).write_text(slot.isoformat())


def child_run(database_url: str, broker_url: str, data_dir: str, mode: str, slot_file: str) -> None:
    """Measured (under callgrind): ``mode`` over the due triggers."""
    _setup(database_url, broker_url, data_dir)
    from django.db import connection

    from scheduler_project.celery import app
    from schedules import dispatch
    from schedules.models import Trigger

    slot = datetime.fromisoformat(Path(slot_file).read_text())
    connection.ensure_connection()
    if mode == "ours":
        report = dispatch.dispatch_due(now=slot + timedelta(milliseconds=100))
        done = report.sent
    else:
        ids = list(Trigger.objects.order_by("pk").values_list("pk", flat=True))
        with app.producer_or_acquire() as producer:
            for trigger_id in ids:
                app.send_task(
                    "schedules.fire_trigger",
                    kwargs={"trigger_id": trigger_id, "scheduled_for": slot.isoformat()},
                    queue="normal",
                    producer=producer,
                )
        done = len(ids)
    print(json.dumps({"done": done}))


# --- the parent ---------------------------------------------------------------------------------


def ensure_database(database_url: str) -> None:
    import psycopg

    parts = urlsplit(database_url)
    name = parts.path.lstrip("/")
    with psycopg.connect(urlunsplit(parts._replace(path="/postgres")), autocommit=True) as admin:
        if admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone() is None:
            admin.execute(f'CREATE DATABASE "{name}"')


def instructions(command: list[str], out_dir: str, label: str) -> tuple[int, dict]:
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


def code_under_test() -> str:
    def git(*command: str) -> str:
        return subprocess.run(["git", *command], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    dirty = git("status", "--porcelain", "--", "schedules", "workflows", "scheduler_project")
    return git("rev-parse", "--short", "HEAD") + (" (uncommitted changes in the app)" if dirty else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,3000", help="N1,N2: due triggers in the two runs of each mode")
    parser.add_argument("--modes", default=",".join(MODES), help=f"subset of {','.join(MODES)}")
    parser.add_argument("--database-url", default=DEFAULT_DATABASE_URL, help="a scratch database (emptied)")
    parser.add_argument("--broker-url", default=DEFAULT_BROKER_URL, help="a scratch Redis database (emptied)")
    parser.add_argument("--no-record", action="store_true", help="do not append the table to bench/RESULTS.md")
    args = parser.parse_args()
    try:
        small, large = (int(size) for size in args.sizes.split(","))
    except ValueError:
        parser.error("--sizes: two whole numbers, N1,N2, e.g. 1000,3000")
    if not 0 < small < large:
        parser.error("--sizes: N1 must be at least 1 and smaller than N2")
    modes = [mode.strip() for mode in args.modes.split(",")]
    if unknown := set(modes) - set(MODES):
        parser.error(f"--modes: unknown {sorted(unknown)}; choose from {', '.join(MODES)}")
    for option, url in (("--database-url", args.database_url), ("--broker-url", args.broker_url)):
        if urlsplit(url).hostname not in {"127.0.0.1", "localhost", "::1"}:
            parser.error(f"{option}: loopback only")
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (Debian: apt-get install valgrind)")

    ensure_database(args.database_url)
    started = time.monotonic()
    me = str(Path(__file__).resolve())
    per_trigger: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-beat-instructions-") as work:
        for mode in modes:
            counts = {}
            for size in (small, large):
                slot_file = str(Path(work) / f"{mode}-{size}.slot")
                common = [args.database_url, args.broker_url, work]
                subprocess.run([sys.executable, me, "--child-prepare", *common, str(size), slot_file], check=True)
                total, report = instructions(
                    [sys.executable, me, "--child-run", *common, mode, slot_file], work, f"{mode}-{size}"
                )
                if report["done"] != size:
                    raise SystemExit(f"{mode} at {size}: only {report['done']} of {size} sent")
                counts[size] = total
                print(f"  {mode:9s} N={size:<6d} {total / 1e6:10,.1f} M instructions", flush=True)
            per_trigger[mode] = (counts[large] - counts[small]) / (large - small)

    stock = per_trigger.get("send_task")
    lines = [
        "| mode | instructions per due trigger | vs stock send |",
        "| --- | --- | --- |",
        *(
            f"| {MODES[mode]} | {value / 1e3:,.0f} k | {f'{value / stock:.2f}x' if stock else '—'} |"
            for mode, value in per_trigger.items()
        ),
    ]
    print("\n".join(lines))
    if args.no_record:
        return
    versions = subprocess.run(["valgrind", "--version"], capture_output=True, text=True).stdout.strip()
    section = [
        "",
        f"## Beat instructions, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "",
        f"- Command: `{' '.join(['.venv/bin/python', 'bench/beat_instructions.py', *sys.argv[1:]])}`",
        f"- Machine: {os.cpu_count()} cores, Python {platform.python_version()}, {versions}; commit "
        f"{code_under_test()}; took {time.monotonic() - started:.0f} s",
        f"- Per due trigger: (instructions with {large} - with {small}) / {large - small}, beat's process only "
        "(callgrind, both its threads; PostgreSQL and Redis are other processes)",
        "",
        *lines,
        "",
    ]
    with (ROOT / "bench" / "RESULTS.md").open("a") as results:
        results.write("\n".join(section))
    print("appended to bench/RESULTS.md")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child-prepare":
        child_prepare(*sys.argv[2:5], int(sys.argv[5]), sys.argv[6])
    elif len(sys.argv) > 1 and sys.argv[1] == "--child-run":
        child_run(*sys.argv[2:])
    else:
        main()
