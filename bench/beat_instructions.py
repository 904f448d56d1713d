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

import json
import os
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.callgrind import arguments, finish, per_unit, table  # noqa: E402

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


def main() -> None:
    args, small, large, modes = arguments(
        __doc__,
        MODES,
        "1000,3000",
        "N1,N2: due triggers in the two runs of each mode",
        DEFAULT_DATABASE_URL,
        DEFAULT_BROKER_URL,
    )
    started = time.monotonic()
    me = str(Path(__file__).resolve())
    with tempfile.TemporaryDirectory(prefix="bench-beat-instructions-") as work:
        common = [args.database_url, args.broker_url, work]
        per_trigger = per_unit(me, common, modes, small, large, work)

    finish(
        "Beat instructions",
        ["bench/beat_instructions.py", *sys.argv[1:]],
        time.monotonic() - started,
        [
            f"Per due trigger: (instructions with {large} - with {small}) / {large - small}, beat's process only "
            "(callgrind, both its threads; PostgreSQL and Redis are other processes)"
        ],
        table(
            per_trigger,
            MODES,
            "instructions per due trigger",
            "send_task",
            "vs stock send",
            lambda v: f"{v / 1e3:,.0f} k",
        ),
        record=not args.no_record,
    )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child-prepare":
        child_prepare(*sys.argv[2:5], int(sys.argv[5]), sys.argv[6])
    elif len(sys.argv) > 1 and sys.argv[1] == "--child-run":
        child_run(*sys.argv[2:])
    else:
        main()
