"""Per-step overhead of the built-in workflow engine beyond the HTTP call.

Runs sequences of N steps in this process through the runner's own path, one step per
``run_advance`` as a worker's ``advance_run`` task does it (claim: row lock and conditional UPDATE,
history row; perform: variables filled in, the action; record: the step's outcome, the context and
the next step saved in one transaction), and makes the same number of calls directly with the client:

- ``http`` steps against a threaded endpoint on 127.0.0.1, beside direct ``call_workflow`` calls to
  it: the difference per step is the engine's overhead beyond the call;
- ``set`` steps (no I/O): the engine alone, the floor of a step.

Not included: the broker round trip between two steps (publishing the next ``advance_run`` and a
worker taking it). By default the publish is counted but not sent, so a real broker is not filled
with messages no worker takes; ``--publish`` sends them to the configured broker (use a scratch
one: they stay queued). The database is a temporary SQLite file, or the scratch database that
DATABASE_URL names (migrated here; a user and workflows named bench-… are left in it).

    .venv/bin/python bench/engine_steps.py --steps 100 --runs 5

Loopback only; nothing else is contacted.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from http.server import ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
if "DATABASE_URL" not in os.environ:
    os.environ["SCHEDULER_DATA_DIR"] = tempfile.mkdtemp(prefix="engine-bench-")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "scheduler_project.settings")
os.environ.setdefault("SCHEDULER_OUTBOUND_ALLOW_NETWORKS", "127.0.0.0/8")

from django.contrib.auth import get_user_model  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402

from bench.http_call import Endpoint  # noqa: E402  (sets Django up)
from workflows import client, network, services, tasks  # noqa: E402
from workflows.engine import definitions, runner  # noqa: E402
from workflows.models import RunStatus  # noqa: E402


def sequence(kind: str, steps: int, url: str) -> dict:
    if kind == "http":
        step = {"action": "http", "params": {"url": url, "body": {"i": "${inputs.i}"}, "retries": 0}}
    else:
        step = {"action": "set", "params": {"values": {"i": "${inputs.i}", "at": "${now}"}}}
    return {"type": "sequence", "steps": [{"id": f"s{index}", **step} for index in range(steps)]}


def engine_seconds_per_step(workflow, steps: int) -> float:
    run, _ = services.run_record(workflow=workflow, idempotency_key=str(uuid.uuid4()), payload={"inputs": {"i": 1}})
    started = time.perf_counter()
    while runner.run_advance(run_id=run.pk) != "nothing to do":
        pass
    elapsed = time.perf_counter() - started
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert run.steps.count() == steps
    return elapsed / steps


def direct_seconds_per_call(url: str, secret: str, calls: int) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        client.call_workflow(
            client.WorkflowCall(
                url=url,
                method="POST",
                secret=secret,
                timeout_seconds=30,
                idempotency_key=str(uuid.uuid4()),
                payload={"i": 1},
            )
        )
    return (time.perf_counter() - started) / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100, help=f"steps per run, at most {definitions.MAX_STEPS}")
    parser.add_argument("--runs", type=int, default=5, help="runs per kind, alternating with the direct calls")
    parser.add_argument("--publish", action="store_true", help="send each next-step message to the broker")
    args = parser.parse_args()
    if not 1 <= args.steps <= definitions.MAX_STEPS:
        parser.error(f"--steps must be 1-{definitions.MAX_STEPS}")

    call_command("migrate", verbosity=0)
    published = 0
    if not args.publish:

        def count(*_args: object, **_kwargs: object) -> None:
            nonlocal published
            published += 1

        tasks.advance_run.apply_async = count  # type: ignore[method-assign]

    server = ThreadingHTTPServer(("127.0.0.1", 0), Endpoint)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/hooks/step"
    owner = get_user_model().objects.create(username=f"bench-{uuid.uuid4().hex[:8]}")
    flows = {
        kind: services.workflow_create(
            owner=owner,
            name=f"bench-{kind}-{uuid.uuid4().hex[:6]}",
            endpoint_url="",
            definition=sequence(kind, args.steps, url),
        )
        for kind in ("http", "set")
    }
    secret = flows["http"].secret

    # Warm up: connections, caches, the first queries' plans.
    engine_seconds_per_step(flows["set"], args.steps)
    direct_seconds_per_call(url, secret, 20)
    figures: dict[str, list[float]] = {"http step": [], "direct call": [], "set step": []}
    try:
        for _ in range(args.runs):
            figures["http step"].append(engine_seconds_per_step(flows["http"], args.steps))
            figures["direct call"].append(direct_seconds_per_call(url, secret, args.steps))
            figures["set step"].append(engine_seconds_per_step(flows["set"], args.steps))
    finally:
        network.close_shared_session()
        server.shutdown()
        server.server_close()

    median = {label: statistics.median(values) * 1000 for label, values in figures.items()}
    vendor = connection.vendor
    print(
        f"{args.runs} runs of {args.steps} steps per kind on {vendor}, next-step messages "
        + ("sent to the broker" if args.publish else f"counted, not sent ({published})")
    )
    print(f"{'per step (median of runs)':32} {'ms':>8}")
    for label in ("http step", "direct call", "set step"):
        print(f"{label:32} {median[label]:8.2f}")
    print(f"{'http step overhead beyond the call':32} {median['http step'] - median['direct call']:8.2f}")


if __name__ == "__main__":
    main()
