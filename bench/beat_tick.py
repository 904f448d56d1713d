"""Beat cost per trigger: TriggerScheduler against stock django-celery-beat DatabaseScheduler.

Creates N triggers through the services (timing trigger_create), then, for each scheduler,
measures the initial schedule load, an idle tick (nothing due) and a tick after one edit
(which reloads everything), and the memory the schedule takes. Prints a table.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/scheduler_bench \
        .venv/bin/python bench/beat_tick.py --triggers 2000

It uses (and empties) the database in DATABASE_URL: point it at a scratch database.
The broker is kombu's in-memory transport; nothing is sent (no slot is due during the run).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "scheduler_project.settings")
os.environ["CELERY_BROKER_URL"] = "memory://"
# The triggers point at a closed port on loopback (never called): allow it past the SSRF guard.
os.environ.setdefault("SCHEDULER_OUTBOUND_ALLOW_NETWORKS", "127.0.0.0/8")

import logging  # noqa: E402

import django  # noqa: E402

django.setup()
logging.disable(logging.INFO)

from django.contrib.auth import get_user_model  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402
from django.utils import timezone  # noqa: E402
from django_celery_beat.models import PeriodicTask  # noqa: E402
from django_celery_beat.schedulers import DatabaseScheduler  # noqa: E402

from scheduler_project.celery import app  # noqa: E402
from schedules import services  # noqa: E402
from schedules.beat import TriggerScheduler  # noqa: E402
from schedules.models import Trigger  # noqa: E402
from workflows.services import workflow_create  # noqa: E402

ZONES = ["UTC", "America/Los_Angeles", "Europe/London", "Asia/Kolkata", "Australia/Lord_Howe"]


def setup(count: int) -> float:
    call_command("flush", "--noinput", verbosity=0)
    owner = get_user_model().objects.create(username="bench")
    workflow = workflow_create(owner=owner, name="bench", endpoint_url="http://127.0.0.1:9/")
    # Slots far from now, so no tick sends anything. Two hours (a list), because
    # django-celery-beat skips loading single-hour crontabs outside a +-2 h window; a list is
    # always loaded, which is the expensive case to measure.
    hour = (timezone.now().hour + 12) % 24
    hours = f"{hour},{(hour + 1) % 24}"
    started = time.perf_counter()
    for i in range(count):
        services.trigger_create(
            owner=owner,
            workflow=workflow,
            name=f"t{i}",
            kind="cron",
            cron=f"{i % 60} {hours} * * *",
            timezone_name=ZONES[i % len(ZONES)],
        )
    return count / (time.perf_counter() - started)


def measure(scheduler_class: type[DatabaseScheduler], ticks: int) -> dict[str, float]:
    # Memory on its own pass: tracemalloc slows allocation and would distort the timings.
    tracemalloc.start()
    probe = scheduler_class(app=app, lazy=False)
    probe.tick()
    memory_mb = tracemalloc.get_traced_memory()[0] / 2**20
    tracemalloc.stop()
    del probe
    started = time.perf_counter()
    scheduler = scheduler_class(app=app, lazy=False)
    scheduler.tick()
    load = time.perf_counter() - started
    idle = []
    for _ in range(ticks):
        t0 = time.perf_counter()
        scheduler.tick()
        idle.append(time.perf_counter() - t0)
    # One edit through the services: beat notices it and reloads the whole schedule.
    first = Trigger.objects.order_by("pk").first()
    services.trigger_pause(trigger=first, reason="bench")
    t0 = time.perf_counter()
    scheduler.tick()
    reload = time.perf_counter() - t0
    services.trigger_resume(trigger=first)
    return {
        "entries": len(scheduler.schedule),
        "load_s": load,
        "idle_tick_ms": statistics.median(idle) * 1000,
        "reload_tick_s": reload,
        "memory_mb": memory_mb,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--triggers", type=int, default=2000)
    parser.add_argument("--ticks", type=int, default=20)
    args = parser.parse_args()
    print(f"database: {connection.vendor}; triggers: {args.triggers}")
    rate = setup(args.triggers)
    print(f"trigger_create (trigger + PeriodicTask in one transaction): {rate:.0f}/s")
    print(f"periodic tasks in database: {PeriodicTask.objects.count()}")
    rows = [("stock DatabaseScheduler", DatabaseScheduler), ("TriggerScheduler", TriggerScheduler)]
    print(f"{'scheduler':26} {'entries':>8} {'load s':>8} {'idle tick ms':>13} {'reload tick s':>14} {'memory MB':>10}")
    for label, scheduler_class in rows:
        result = measure(scheduler_class, args.ticks)
        print(
            f"{label:26} {result['entries']:>8} {result['load_s']:>8.2f} {result['idle_tick_ms']:>13.1f} "
            f"{result['reload_tick_s']:>14.2f} {result['memory_mb']:>10.1f}"
        )


if __name__ == "__main__":
    main()
