"""The worker's CPU per execution in instructions (valgrind's callgrind), beside a bare requests POST.

    .venv/bin/python bench/worker_instructions.py [--sizes 100,300] [--no-record]

bench/worker_throughput.py measures real workers in executions per second, which on a shared
2-core machine move by 10-50 % between runs of the same code (bench/RESULTS.md). Instructions do
not: callgrind counts what the process executed, the same for the same code and inputs whatever
else the machine is doing. So this benchmark answers "what does the worker's own path cost per
execution, and did a change make it cheaper" without the noise.

For each mode a child process runs under ``valgrind --tool=callgrind`` twice, with N1 and N2
executions (``--sizes``); (instructions at N2 - instructions at N1) / (N2 - N1) is the cost of
one execution, the start-up (Python, Django, the first connection) cancelling out:

- ``raw``: ``requests.Session().post`` of a JSON body to the endpoint and reading the answer
  (the body of bench/worker_probe.py's ``bench.http_post`` task, without Celery): the ceiling;
- ``ours``: due executions run as a worker runs a burst's message of 20
  (``dispatch.executions_run``: the read of the message's executions, each one's claim, signed call
  through workflows/client.py and outcome, the look for waiters);
- ``ours1``: one at a time, as ``schedules.run_execution`` runs them (``execution_claim`` then
  ``execution_perform``).

Celery's own work per message (receive, acknowledge, events, the result) is in none of them: raw
and ours1 pay it once per execution, ours once per 20. The executions are created before each
child starts, as beat leaves them (queued, due, leased), one trigger each with the default
overlap (``skip``, so each claim checks that nothing is ahead of it). The endpoint
(bench/loopback_endpoint.py) and PostgreSQL run in other processes and are not counted.

Needs valgrind (Debian: ``apt-get install valgrind``). Uses (creates, migrates, empties) the
database in ``--database-url``: give it a scratch one. Loopback only. The table is appended to
bench/RESULTS.md (``--no-record``: not).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.callgrind import arguments, finish, per_unit, table  # noqa: E402

DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/bench_instructions"
MODES = {
    "raw": "requests.Session().post, body read (no Celery)",
    "ours": "ours, a burst's message of 20 (executions_run)",
    "ours1": "ours, one at a time (execution_claim + execution_perform)",
}
GROUP = 20
BENCH_SECRET_KEY = "bench-worker-instructions-not-a-real-key"  # noqa: S105 - a scratch database's key
BENCH_FERNET_KEY = base64.urlsafe_b64encode(hashlib.sha256(BENCH_SECRET_KEY.encode()).digest()).decode()
ENV = {
    "DJANGO_SETTINGS_MODULE": "scheduler_project.settings",
    "SCHEDULER_OUTBOUND_ALLOW_NETWORKS": "127.0.0.0/8",
    "DEBUG": "0",
    "SECRET_KEY": BENCH_SECRET_KEY,
    "SCHEDULER_SECRET_KEYS": BENCH_FERNET_KEY,
    # Nothing in these runs publishes; a broker URL that is never contacted keeps it so.
    "CELERY_BROKER_URL": "memory://",
}


def _setup(database_url: str, data_dir: str) -> None:
    os.environ.update(ENV, DATABASE_URL=database_url, SCHEDULER_DATA_DIR=data_dir)
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()


# --- the children -------------------------------------------------------------------------------


def child_prepare(database_url: str, data_dir: str, endpoint_url: str, count: int, ids_file: str) -> None:
    """Not measured: the workflow, ``count`` triggers and one due execution each; their ids to ``ids_file``."""
    _setup(database_url, data_dir)
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.db import connection
    from django.utils import timezone

    from schedules import services
    from schedules.models import Execution, ExecutionOrigin, ExecutionStats, ExecutionStatus, Trigger
    from workflows.models import Workflow
    from workflows.services import workflow_create

    call_command("migrate", verbosity=0)
    owner, _ = get_user_model().objects.get_or_create(username="bench-instructions")
    workflow = Workflow.objects.filter(owner=owner).first() or workflow_create(
        owner=owner, name="bench-instructions", endpoint_url=endpoint_url, timeout_seconds=30
    )
    Workflow.objects.filter(pk=workflow.pk).update(endpoint_url=endpoint_url, is_active=True, max_concurrency=0)
    workflow.refresh_from_db()
    triggers = list(Trigger.objects.filter(owner=owner).order_by("pk")[:count])
    for index in range(len(triggers), count):
        triggers.append(
            services.trigger_create(
                owner=owner, workflow=workflow, name=f"bench-{index}", kind="cron", cron="0 0 1 1 *"
            )
        )
    have = set(ExecutionStats.objects.values_list("trigger_id", flat=True))
    ExecutionStats.objects.bulk_create(
        [ExecutionStats(trigger_id=t.pk, workflow_id=workflow.pk) for t in triggers if t.pk not in have]
    )
    with connection.cursor() as cursor:
        cursor.execute(f"DELETE FROM {connection.ops.quote_name(Execution._meta.db_table)}")  # noqa: S608
    Trigger.objects.filter(owner=owner).update(consecutive_failures=0, enabled=True)
    now = timezone.now()
    slot = now.replace(microsecond=0) - timedelta(seconds=1)
    rows = [
        Execution(
            trigger=trigger,
            workflow=workflow,
            scheduled_for=slot,
            origin=ExecutionOrigin.SCHEDULE,
            inputs={**workflow.default_inputs, **trigger.inputs},
            status=ExecutionStatus.QUEUED,
            created_at=now,
            due_at=slot,
            lease_expires_at=now + timedelta(minutes=30),
        )
        for trigger in triggers
    ]
    Execution.objects.bulk_create(rows)
    Path(ids_file).write_text(json.dumps([str(row.pk) for row in rows]))


def child_run(database_url: str, data_dir: str, endpoint_url: str, mode: str, ids_file: str) -> None:
    """Measured (under callgrind): run ``mode`` over the executions in ``ids_file``."""
    _setup(database_url, data_dir)
    from django.db import connection

    from schedules import dispatch
    from schedules.models import Execution

    ids = json.loads(Path(ids_file).read_text())
    connection.ensure_connection()
    if mode == "raw":
        import requests

        session = requests.Session()
        for execution_id in ids:
            response = session.post(
                endpoint_url,
                data=json.dumps({"execution_id": execution_id}),
                headers={"Content-Type": "application/json"},
                timeout=(5, 30),
            )
            response.raise_for_status()
            response.json()
        done = len(ids)
    elif mode == "ours":
        for start in range(0, len(ids), GROUP):
            # A busy queue: the message goes on with its attempts instead of handing them back.
            dispatch.executions_run([(pk, 1) for pk in ids[start : start + GROUP]], queue_depth=lambda queue: 1)
        done = Execution.objects.filter(pk__in=ids, status="succeeded").count()
    else:
        for pk in ids:
            execution = dispatch.execution_claim(execution_id=pk, attempt=1)
            if execution is not None:
                dispatch.execution_perform(execution=execution)
        done = Execution.objects.filter(pk__in=ids, status="succeeded").count()
    print(json.dumps({"done": done}))


# --- the parent ---------------------------------------------------------------------------------


def main() -> None:
    args, small, large, modes = arguments(
        __doc__, MODES, "100,300", "N1,N2: executions in the two runs of each mode", DEFAULT_DATABASE_URL
    )
    started = time.monotonic()
    endpoint = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "loopback_endpoint.py")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    line = endpoint.stdout.readline()
    if not line.startswith("PORT "):
        raise SystemExit(f"endpoint did not start: {line!r}")
    endpoint_url = f"http://127.0.0.1:{int(line.split()[1])}/hooks/run"
    me = str(Path(__file__).resolve())
    try:
        with tempfile.TemporaryDirectory(prefix="bench-instructions-") as work:
            per_execution = per_unit(me, [args.database_url, work, endpoint_url], modes, small, large, work)
    finally:
        endpoint.stdin.close()
        endpoint.wait(timeout=10)

    finish(
        "Worker instructions",
        ["bench/worker_instructions.py", *sys.argv[1:]],
        time.monotonic() - started,
        [
            f"Per execution: (instructions with {large} - with {small}) / {large - small}, the worker's process only "
            "(callgrind; the endpoint and PostgreSQL are other processes); Celery's per-message work is in none"
        ],
        table(per_execution, MODES, "instructions per execution", "raw", "vs raw", lambda v: f"{v / 1e6:.2f} M"),
        record=not args.no_record,
    )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child-prepare":
        child_prepare(*sys.argv[2:5], int(sys.argv[5]), sys.argv[6])
    elif len(sys.argv) > 1 and sys.argv[1] == "--child-run":
        child_run(*sys.argv[2:])
    else:
        main()
