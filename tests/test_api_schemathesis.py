"""Schemathesis against /api/schema/: every operation, generated input, never a 5xx and every answer as documented.

The schema is loaded from the Django app and each request goes through its WSGI handler in this
process (no sockets). Each operation is one test with a user, a token and some objects of theirs:
about half the generated cases use those objects' ids (else nearly every case would be a 404),
positive and negative data alike. API_FUZZ_EXAMPLES=200 makes a deeper run; it is deterministic
unless API_FUZZ_RANDOM=1.
"""

from __future__ import annotations

import os
import socket
from datetime import timedelta
from typing import Any

import hypothesis
import pytest
import schemathesis
from django.core.cache import cache
from django.core.wsgi import get_wsgi_application
from django.utils import timezone
from hypothesis import HealthCheck, given
from hypothesis import strategies as st
from rest_framework.authtoken.models import Token
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from schedules import selectors
from schedules.models import Execution, ExecutionStatus
from tests.factories import TriggerFactory, UserFactory, WorkflowFactory
from workflows import network
from workflows import services as workflow_services

MAX_EXAMPLES = int(os.environ.get("API_FUZZ_EXAMPLES", "20"))
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]

SCHEMA = schemathesis.openapi.from_wsgi("/api/schema/", get_wsgi_application())
OPERATIONS = sorted(result.ok().label for result in SCHEMA.get_all_operations())


@pytest.fixture
def objects(settings, tmp_path, monkeypatch) -> dict[str, Any]:
    """A user with a token, a workflow, a trigger and a failed execution of theirs; no throttling, DNS or worker."""
    real_resolve = network.resolve_host

    def resolve_offline(host: str, port: int, *, timeout: float):
        # IP literals need no lookup; a name "does not resolve", which a save accepts (nothing leaves the machine).
        if network.literal_address(host) is not None:
            return real_resolve(host, port, timeout=timeout)
        raise socket.gaierror(socket.EAI_NONAME, "offline test")

    monkeypatch.setattr(network, "resolve_host", resolve_offline)
    monkeypatch.setattr(selectors, "workers_check", lambda **kwargs: "ok")
    monkeypatch.setattr(selectors, "beat_check", lambda **kwargs: "ok")
    settings.REST_FRAMEWORK = {
        **settings.REST_FRAMEWORK,
        "DEFAULT_THROTTLE_RATES": {"writes": "100000/min", "runs": "100000/min"},
    }
    cache.clear()
    user = UserFactory()
    workflow = WorkflowFactory(owner=user)
    trigger = TriggerFactory(workflow=workflow)
    execution = Execution.objects.create(
        trigger=trigger,
        workflow=workflow,
        scheduled_for=timezone.now() - timedelta(hours=1),
        status=ExecutionStatus.FAILED,
    )
    # A run of the built-in engine, so the run controls meet a real run (waiting, then whatever the case does).
    engine = WorkflowFactory(
        owner=user,
        endpoint_url="",
        definition={"type": "sequence", "steps": [{"id": "w", "action": "wait", "params": {"seconds": 600}}]},
    )
    run, _ = workflow_services.run_record(workflow=engine, idempotency_key="fuzz", payload={"inputs": {}})
    return {
        "headers": {"Authorization": f"Token {Token.objects.create(user=user).key}"},
        "workflow": workflow.pk,
        "trigger": trigger.pk,
        "execution": str(execution.pk),
        "run": str(run.pk),
    }


# Free strings rarely make a schedule: some cases get a real one, to reach past validation.
SCHEDULES = st.fixed_dictionaries(
    {
        "cron": st.sampled_from(["0 9 * * 1-5", "*/15 * * * *", "30 2 1 * *", "0 0 29 2 *"]),
        "timezone": st.sampled_from(["UTC", "America/Los_Angeles", "Europe/Berlin", "Asia/Kolkata"]),
    }
)


def _use_objects(case: Any, objects: dict[str, Any], schedule: dict[str, str]) -> None:
    """Point the case at the user's own objects (path ids, ?workflow= / ?trigger=, body references); real schedules."""
    path = case.operation.path
    resource = "executions" if path.startswith("/api/executions/") else path.split("/")[2]
    own = {
        "workflows": objects["workflow"],
        "triggers": objects["trigger"],
        "executions": objects["execution"],
        "runs": objects["run"],
    }
    for name in list(case.path_parameters or {}):
        case.path_parameters[name] = objects["workflow"] if name == "workflow_id" else own[resource]
    for name in ("workflow", "trigger"):
        if case.query and name in case.query:
            case.query[name] = objects[name]
    if isinstance(case.body, dict):
        for name in ("workflow", "fallback_workflow"):
            if name in case.body:
                case.body[name] = objects["workflow"]
        writes_trigger = path in ("/api/triggers/", "/api/triggers/{id}/", "/api/triggers/preview/")
        if writes_trigger and case.body.get("kind", "cron") == "cron" and "preset" not in case.body:
            case.body.update(schedule)


@pytest.mark.django_db(transaction=True)  # the WSGI handler closes the connection after each request
@pytest.mark.parametrize("label", OPERATIONS)
def test_api_operation__no_server_error_and_answers_as_documented(label, objects):
    """Generated requests, valid and invalid, with and without the user's own ids: no 5xx, answers as documented."""
    operation = SCHEMA.find_operation_by_label(label)
    cases = operation.as_strategy(GenerationMode.POSITIVE) | operation.as_strategy(GenerationMode.NEGATIVE)

    @hypothesis.settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,
        derandomize=os.environ.get("API_FUZZ_RANDOM") != "1",
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
    )
    @given(case=cases, own=st.booleans(), schedule=SCHEDULES)
    def check(case: Any, own: bool, schedule: dict[str, str]) -> None:
        if own:
            _use_objects(case, objects, schedule)
        response = case.call(headers=objects["headers"])
        case.validate_response(response, checks=CHECKS, headers=objects["headers"])

    check()


def test_schema__every_operation_is_tested():
    """The run covers the whole API, the signed run endpoint and the audit trail included."""
    assert len(OPERATIONS) >= 30
    for label in ("POST /api/workflows/{workflow_id}/runs/", "GET /api/audit/", "GET /api/triggers/{id}/audit/"):
        assert label in OPERATIONS
