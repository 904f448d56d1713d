"""End to end: `manage.py demo --run --wait` runs the three examples against the demo target with real
gunicorn, worker and beat, the SSRF guard at its default (loopback refused): the demo target's path is
the one opening, and a run asked to fail takes its error transition."""

from __future__ import annotations

import json
import subprocess
import sys

from workflows.models import RunStatus, WorkflowRun

from .harness import ROOT


def demo(stack, *args: str, timeout: float = 150) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", "demo", *args],
        cwd=ROOT,
        env=stack.env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_demo_command__runs_each_example_against_the_demo_target(stack):
    """demo --run --wait 120 sets up the examples, starts each, prints its steps as they end and ends
    when all three succeeded; --inputs '{"target": "fail"}' makes the raid end in raid_failed."""
    # The guard as shipped (the test settings allow loopback otherwise): only the demo target's path
    # and the built-in run endpoint of SCHEDULER_PUBLIC_BASE_URL are let through.
    stack.env_extra.update(SCHEDULER_DEMO_TARGET="1", SCHEDULER_OUTBOUND_ALLOW_NETWORKS="")
    _web, base_url = stack.start_web()
    stack.env_extra["SCHEDULER_PUBLIC_BASE_URL"] = base_url
    stack.start_worker_and_beat()

    done = demo(stack, "--run", "--wait", "120")
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert f"The examples call the demo target {base_url}/api/demo-target/<call>." in out
    assert "All 3 runs ended: 3 succeeded." in out, out
    for line in ("gather (wait, try 1) waiting", "go (http, try 1) succeeded", "recap (http, try 1) succeeded"):
        assert line in out, out

    # The examples' runs (demo also sets up "Demo workflow" with an every-minute trigger, which
    # records a run of its own whenever the test spans a minute's start).
    examples = WorkflowRun.objects.select_related("workflow").filter(workflow__name__startswith="Example: ")
    runs = {run.workflow.name: run for run in examples}
    assert {name: run.status for name, run in runs.items()} == dict.fromkeys(
        ["Example: stream-start", "Example: stream-end", "Example: raid"], RunStatus.SUCCEEDED
    )
    recap = runs["Example: stream-end"].steps.get(step_id="recap")
    assert recap.input["url"] == f"{base_url}/api/demo-target/recap"
    assert recap.input["body"]["stats"] == {"call": "stats", "viewers": 42, "peak": 57}
    assert json.loads(recap.output_excerpt) == {"status": 200, "body": {"call": "recap", "posted": True}}

    failing = demo(stack, "--run", "raid", "--inputs", '{"target": "fail"}', "--wait", "60")
    assert failing.returncode == 0, failing.stdout + failing.stderr
    assert "call_raid (http, try 2) failed  HTTP 503 Service Unavailable" in failing.stdout, failing.stdout
    assert "failed: ended in state raid_failed after call_raid: HTTP 503 Service Unavailable" in failing.stdout
    assert "All 1 runs ended: 1 failed." in failing.stdout
    assert WorkflowRun.objects.filter(workflow__name="Example: raid").count() == 2
