"""Cost of one outbound call: our client (pooled, and a new connection per call) against a stock requests.Session.

Starts a threaded HTTP/1.1 server on 127.0.0.1 that answers 200 {"run_id": ...}, then makes N
sequential calls in each mode and prints calls/s, p50 and p95 latency, and how many TCP
connections the server accepted:

- call_workflow, pooled: signing, resolving and vetting the host, a pinned kept-alive connection
  from the shared session, the total-deadline watchdog (what the worker does);
- stock requests.Session: a plain POST of the same body over one shared session;
- call_workflow, no reuse: the same client with a new connection per call (as before pooling).

    .venv/bin/python bench/http_call.py --calls 2000

Loopback only; nothing else is contacted, and it stops by itself after the calls.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "scheduler_project.settings")
# The endpoint listens on loopback, which the SSRF guard refuses by default.
os.environ.setdefault("SCHEDULER_OUTBOUND_ALLOW_NETWORKS", "127.0.0.0/8")

import django  # noqa: E402

django.setup()

import requests  # noqa: E402

from workflows import client, network  # noqa: E402
from workflows.models import generate_secret  # noqa: E402


class Endpoint(BaseHTTPRequestHandler):
    """Answers every POST with 200 and a run id, keeping the connection open (HTTP/1.1)."""

    protocol_version = "HTTP/1.1"
    # Headers and body in one segment, without Nagle, as production servers send them: otherwise a
    # kept-alive connection waits ~40 ms per answer on the client's delayed ACK.
    disable_nagle_algorithm = True
    wbufsize = 64 * 1024
    connections = 0
    answered = 0
    lock = threading.Lock()

    def setup(self) -> None:
        super().setup()
        with Endpoint.lock:
            Endpoint.connections += 1

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with Endpoint.lock:
            Endpoint.answered += 1
            body = json.dumps({"run_id": f"run-{Endpoint.answered}"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def measure(modes: dict[str, Callable[[], object]], calls: int, warmup: int, rounds: int) -> dict[str, dict]:
    """Run the modes in turns, ``rounds`` times ``calls / rounds`` each, so a change in machine load hits all alike."""
    for call in modes.values():
        for _ in range(warmup):
            call()
    latencies: dict[str, list[float]] = {label: [] for label in modes}
    elapsed = dict.fromkeys(modes, 0.0)
    connections = dict.fromkeys(modes, 0)
    for round_index in range(rounds):
        share = calls // rounds + (1 if round_index < calls % rounds else 0)
        for label, call in modes.items():
            connections_before = Endpoint.connections
            started = time.perf_counter()
            for _ in range(share):
                t0 = time.perf_counter()
                call()
                latencies[label].append(time.perf_counter() - t0)
            elapsed[label] += time.perf_counter() - started
            connections[label] += Endpoint.connections - connections_before
    results = {}
    for label in modes:
        cuts = statistics.quantiles(latencies[label], n=100)
        results[label] = {
            "rate": len(latencies[label]) / elapsed[label],
            "p50_ms": cuts[49] * 1000,
            "p95_ms": cuts[94] * 1000,
            "connections": connections[label],
        }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Endpoint)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_port}/hooks/run"
    call = client.WorkflowCall(
        url=url,
        method="POST",
        secret=generate_secret(),
        timeout_seconds=5,
        idempotency_key="5e0c8a3e-8f5b-4c0e-b1d7-1f8e1c2a9b10",
        payload={"workflow_id": 1, "inputs": {"report": "weekly"}, "attempt": 1},
    )
    body = client.encode_body(call.payload).encode()
    stock = requests.Session()

    def ours() -> None:
        assert client.call_workflow(call).run_id

    def plain() -> None:
        response = stock.post(url, data=body, headers={"Content-Type": "application/json"}, timeout=(5, 5))
        assert response.status_code == 200 and response.json()["run_id"]

    def no_reuse() -> None:
        client.REUSE_CONNECTIONS = False
        try:
            ours()
        finally:
            client.REUSE_CONNECTIONS = True

    modes = {
        "call_workflow, pooled": ours,
        "stock requests.Session": plain,
        "call_workflow, no reuse": no_reuse,
    }
    print(f"{args.calls} sequential calls per mode to {url}, in {args.rounds} alternating rounds")
    try:
        results = measure(modes, args.calls, args.warmup, args.rounds)
    finally:
        stock.close()
        network.close_shared_session()
        server.shutdown()
        server.server_close()
    print(f"{'mode':26} {'calls/s':>9} {'p50 ms':>8} {'p95 ms':>8} {'new connections':>16}")
    for label, result in results.items():
        print(
            f"{label:26} {result['rate']:>9.0f} {result['p50_ms']:>8.2f} {result['p95_ms']:>8.2f} "
            f"{result['connections']:>16}"
        )


if __name__ == "__main__":
    main()
