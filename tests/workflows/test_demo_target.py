"""The demo target (workflows/demo.py): its answers, its switch, and the SSRF guard letting workers call
exactly it (not loopback in general) while it is on; the examples run against it over real HTTP."""

from __future__ import annotations

import pytest

from tests.workflows.test_engine_runner import drive, start
from workflows import demo, network
from workflows.engine import runner
from workflows.models import RunStatus


@pytest.fixture
def demo_on(settings):
    settings.SCHEDULER_DEMO_TARGET = True
    settings.SCHEDULER_PUBLIC_BASE_URL = "http://127.0.0.1:8123"
    settings.SCHEDULER_OUTBOUND_ALLOW_NETWORKS = []  # the default: loopback refused
    return settings


@pytest.mark.parametrize(
    ("call", "body", "status", "answer"),
    [
        ("announce", {"stream": "tue"}, 200, {"call": "announce", "message_id": 1, "text": "tue starts now"}),
        ("stats", {"stream": "tue"}, 200, {"call": "stats", "viewers": 42, "peak": 57}),
        ("joined", {"target": "friend"}, 200, {"call": "joined", "joined": 5}),
        ("joined", {"target": "nobody"}, 200, {"call": "joined", "joined": 0}),
        ("anything-else", {}, 200, {"call": "anything-else", "ok": True}),
        ("raid", {"target": "fail"}, 503, {"error": "the demo target fails on purpose: a body value is 'fail'"}),
    ],
)
def test_demo_target__answers_the_examples_calls(client, demo_on, call, body, status, answer):
    """Each example's call gets a made-up JSON answer; a body value "fail" gets a 503 on purpose."""
    response = client.post(f"/api/demo-target/{call}", body, content_type="application/json")
    assert (response.status_code, response.json()) == (status, answer)


def test_demo_target__refuses_what_is_not_a_json_object(client, demo_on):
    """A body that is not a JSON object is a 400 saying so."""
    response = client.post("/api/demo-target/raid", "[1]", content_type="application/json")
    assert (response.status_code, response.json()) == (400, {"errors": {"body": ["must be a JSON object"]}})
    assert client.post("/api/demo-target/raid", "{", content_type="application/json").status_code == 400


def test_demo_target__off_is_a_404_naming_the_setting(client, settings):
    """With SCHEDULER_DEMO_TARGET off the path answers 404 and says how to turn it on."""
    settings.SCHEDULER_DEMO_TARGET = False
    response = client.post("/api/demo-target/raid", {}, content_type="application/json")
    assert response.status_code == 404
    assert "SCHEDULER_DEMO_TARGET=1" in response.json()["errors"]["demo-target"][0]


def test_guard__allows_exactly_the_demo_target_while_it_is_on(demo_on):
    """The demo target's path on SCHEDULER_PUBLIC_BASE_URL is allowed like the built-in run endpoint;
    other paths, ports and hosts are not, and nothing is while the demo target is off."""
    assert demo.target_url() == "http://127.0.0.1:8123/api/demo-target"
    assert network.builtin_host("http://127.0.0.1:8123/api/demo-target/raid") == "127.0.0.1"
    assert network.builtin_host("http://127.0.0.1:8123/api/workflows/1/runs/") == "127.0.0.1"
    assert network.builtin_host("http://127.0.0.1:8123/api/health/") is None
    assert network.builtin_host("http://127.0.0.1:8124/api/demo-target/raid") is None
    assert network.builtin_host("http://localhost:8123/api/demo-target/raid") is None
    assert network.builtin_host("http://user:pw@127.0.0.1:8123/api/demo-target/raid") is None
    demo_on.SCHEDULER_DEMO_TARGET = False
    assert network.builtin_host("http://127.0.0.1:8123/api/demo-target/raid") is None


@pytest.fixture
def served(live_server, settings):
    """This service on a real port, the demo target on, and loopback refused by the guard otherwise."""
    settings.SCHEDULER_DEMO_TARGET = True
    settings.SCHEDULER_PUBLIC_BASE_URL = live_server.url
    settings.SCHEDULER_OUTBOUND_ALLOW_NETWORKS = []
    return live_server


@pytest.mark.parametrize(
    ("target", "status", "end"),
    [("friend", RunStatus.SUCCEEDED, "done"), ("nobody", RunStatus.FAILED, "cancelled")],
)
def test_raid_example__runs_against_the_demo_target_through_the_guard(served, target, status, end):
    """The raid example, pointed at the demo target, calls it over HTTP through the guard: enough
    joined goes, nobody joining is called off."""
    example = next(example for example in demo.EXAMPLES if example.name == "raid")
    run = start(example.definition(demo.target_url()), inputs={"target": target, "gather_seconds": 0})
    run = drive(run)
    if run.status == RunStatus.WAITING:  # the 0 s wait: due at once, as recovery would find it
        runner.runs_recover()
        run = drive(run)
    assert (run.status, run.current_step) == (status, end), run.error
    call_raid = run.steps.get(step_id="call_raid")
    assert (call_raid.status, call_raid.input["url"]) == ("succeeded", f"{served.url}/api/demo-target/raid")


def test_raid_example__a_failing_demo_target_takes_the_error_transition(served):
    """{"target": "fail"}: the demo target answers 503, the step retries once, then raid_failed."""
    example = next(example for example in demo.EXAMPLES if example.name == "raid")
    run = drive(start(example.definition(demo.target_url()), inputs={"target": "fail", "gather_seconds": 0}))
    if run.status == RunStatus.RUNNING:  # the retry's backoff: due in 2 s
        from datetime import timedelta

        from django.utils import timezone

        later = timezone.now() + timedelta(seconds=3)
        run = drive(run, now=later)
    assert (run.status, run.current_step) == (RunStatus.FAILED, "raid_failed")
    assert run.error == "ended in state raid_failed after call_raid: HTTP 503 Service Unavailable"
    assert [step.status for step in run.steps.filter(step_id="call_raid").order_by("attempt")] == ["failed", "failed"]


def test_guard__still_refuses_other_paths_of_this_service_on_loopback(served):
    """The demo target on is no opening for loopback in general: an http step to another path of the
    same service is refused by the guard."""
    definition = {
        "type": "sequence",
        "steps": [{"id": "peek", "action": "http", "params": {"url": f"{served.url}/api/health/", "retries": 0}}],
    }
    run = drive(start(definition))
    assert run.status == RunStatus.FAILED
    assert "refused: localhost resolves to 127.0.0.1 (loopback)" in run.error
