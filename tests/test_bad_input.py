"""Hostile input gets a 400 (or 413/404/405) in the documented shape, and changes nothing.

Each case here was a 500 with a traceback, or an HTML page, before: JSON nested 1,000+ deep
(RecursionError), an unpaired surrogate (PostgreSQL's DataError), a body over
DATA_UPLOAD_MAX_MEMORY_SIZE, unknown /api/ URLs with DEBUG on, 10,000 headers."""

from __future__ import annotations

from datetime import UTC, datetime
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient
from standardwebhooks import Webhook

from schedules.models import Execution, Trigger
from tests.workflows.test_views import post, signed
from workflows.models import Workflow, WorkflowRun
from workflows.validators import MAX_HEADERS, MAX_JSON_DEPTH, json_problem

DEEP = 1500  # past Python's recursion limit: json.loads itself fails


def deep_text(levels: int) -> str:
    return '{"a": ' * levels + "1" + "}" * levels


def deep_value(levels: int) -> dict:
    value: dict = {"a": 1}
    for _ in range(levels - 1):
        value = {"a": value}
    return value


@pytest.fixture
def api(user):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    return client


def raw(api, method: str, url: str, body: str):
    return getattr(api, method)(url, data=body, content_type="application/json")


def assert_error_shape(response, status: int, field: str, text: str = ""):
    assert response.status_code == status, response.content[:500]
    assert response["Content-Type"].startswith("application/json")
    errors = response.json()["errors"]
    assert field in errors, errors
    assert text in " ".join(errors[field]), errors


def test_json_problem__depth_and_surrogates():
    assert json_problem(deep_value(MAX_JSON_DEPTH)) is None
    assert json_problem(deep_value(MAX_JSON_DEPTH + 1)) == (
        ".".join(["a"] * MAX_JSON_DEPTH),
        f"is nested deeper than {MAX_JSON_DEPTH} levels.",
    )
    assert json_problem({"k": ["ok", "\ud800"]})[0] == "k.1"
    assert json_problem({"\udfff": 1}) is not None
    assert json_problem({"emoji": "\U0001f600", "text": "é"}) is None  # a paired surrogate in JSON is fine


@pytest.mark.parametrize("levels", [MAX_JSON_DEPTH + 1, DEEP])
def test_api__deeply_nested_default_inputs_is_a_400_naming_the_field(api, levels):
    body = '{"name": "Deep", "default_inputs": ' + deep_text(levels) + "}"
    response = raw(api, "post", "/api/workflows/", body)
    if levels == DEEP:  # too deep to parse at all: the parse error, still our shape
        assert_error_shape(response, 400, "detail", f"nested deeper than {MAX_JSON_DEPTH} levels")
    else:
        assert_error_shape(response, 400, "default_inputs", f"nested deeper than {MAX_JSON_DEPTH} levels")
    assert not Workflow.objects.exists()


@pytest.mark.parametrize("field", ["inputs", "execution_window"])
def test_api__deeply_nested_trigger_json_is_a_400(api, workflow, field):
    body = f'{{"name": "Deep", "workflow": {workflow.pk}, "cron": "0 9 * * *", "{field}": {deep_text(DEEP)}}}'
    assert_error_shape(raw(api, "post", "/api/triggers/", body), 400, "detail", "nested deeper")
    body = f'{{"name": "Deep", "workflow": {workflow.pk}, "cron": "0 9 * * *", "{field}": {deep_text(40)}}}'
    assert_error_shape(raw(api, "post", "/api/triggers/", body), 400, field, "nested deeper")
    assert not Trigger.objects.exists()


def test_api__run_now_overrides_nested_too_deep_is_a_400(api, trigger):
    response = raw(api, "post", f"/api/triggers/{trigger.pk}/run/", '{"inputs": ' + deep_text(40) + "}")
    assert_error_shape(response, 400, "inputs", "nested deeper")
    assert not Execution.objects.exists()


def test_api__unpaired_surrogate_is_a_400(api):
    body = '{"name": "Bad text", "default_inputs": {"note": "\\ud800"}}'
    assert_error_shape(raw(api, "post", "/api/workflows/", body), 400, "default_inputs", "note: is not Unicode text")
    assert not Workflow.objects.exists()


def test_signed_run__deeply_nested_body_is_a_400(client, workflow):
    deep = deep_text(DEEP)  # signed as text: json.dumps could not even write it
    at = datetime.now(UTC)
    headers = {
        "webhook-id": "k1",
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": Webhook(workflow.secret).sign(msg_id="k1", timestamp=at, data=deep),
    }
    assert_error_shape(post(client, workflow.pk, deep, headers), 400, "body", "nested deeper")
    assert not WorkflowRun.objects.exists()


def test_signed_run__unpaired_surrogate_is_a_400(client, workflow):
    response = post(client, workflow.pk, *signed(workflow.secret, {"inputs": {"x": "\ud800"}}, key="k2"))
    assert_error_shape(response, 400, "body", "inputs.x: is not Unicode text")
    assert not WorkflowRun.objects.exists()


def test_api__body_over_the_upload_limit_is_a_413_in_our_shape(api, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    body = '{"name": "Big", "default_inputs": {"blob": "' + "x" * 2000 + '"}}'
    assert_error_shape(raw(api, "post", "/api/workflows/", body), 413, "detail", "larger than 1000 bytes")
    assert not Workflow.objects.exists()


def test_signed_run__body_over_the_upload_limit_is_a_413(client, workflow, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    response = post(client, workflow.pk, *signed(workflow.secret, {"blob": "x" * 2000}))
    assert_error_shape(response, 413, "body", "larger than 1000 bytes")
    assert not WorkflowRun.objects.exists()


@pytest.mark.parametrize("debug", [True, False])
def test_api__unknown_url_is_a_json_404_with_debug_on_or_off(api, settings, debug):
    settings.DEBUG = debug
    for url in ("/api/nope/", "/api/workflows/1/nope/", "/api/triggers/abc/"):
        assert_error_shape(api.get(url), 404, "detail", "not found")


def test_api__wrong_method_and_malformed_json_have_our_shape(api, workflow):
    assert_error_shape(api.put("/api/health/"), 405, "detail", "not allowed")
    assert_error_shape(raw(api, "post", "/api/workflows/", '{"name": '), 400, "detail", "JSON parse error")
    response = api.post("/api/workflows/", data="name=x", content_type="application/x-www-form-urlencoded")
    assert_error_shape(response, 415, "detail", "Unsupported media type")


def test_api__too_many_or_too_long_headers_are_refused(api):
    many = {f"X-H{index}": "v" for index in range(10_000)}
    response = api.post("/api/workflows/", {"name": "Many", "headers": many}, format="json")
    assert_error_shape(response, 400, "headers", f"at most {MAX_HEADERS} headers, not 10000")
    response = api.post("/api/workflows/", {"name": "Long", "headers": {"X-Long": "v" * 5000}}, format="json")
    assert_error_shape(response, 400, "headers", "longer than 4096 characters")
    wide = {f"X-Wide-{index}": "v" * 4000 for index in range(5)}
    assert_error_shape(
        api.post("/api/workflows/", {"name": "Wide", "headers": wide}, format="json"), 400, "headers", "at most 16384"
    )
    assert not Workflow.objects.exists()


def test_command__inputs_nested_too_deep_names_the_option(user):
    with pytest.raises(CommandError, match=r"^--inputs: .*nested deeper than"):
        call_command(
            "workflow", "create", "--owner", user.username, "--name", "Deep", "--inputs", deep_text(DEEP),
            stdout=StringIO(), stderr=StringIO(),
        )  # fmt: skip
    assert not Workflow.objects.exists()


def test_admin__deeply_nested_json_is_a_form_error(admin_client, user):
    response = admin_client.post(
        "/admin/workflows/workflow/add/",
        {"owner": user.pk, "name": "Deep", "http_method": "POST", "timeout_seconds": 30,
         "default_inputs": deep_text(DEEP), "headers": "{}", "is_active": "on",
         "max_attempts": 3, "min_backoff_seconds": 10, "max_backoff_seconds": 600, "max_doublings": 5,
         "max_retry_duration_seconds": 0},
    )  # fmt: skip
    assert response.status_code == 200  # the form again, with the error
    assert "nested deeper than" in response.content.decode()
    assert not Workflow.objects.exists()


def test_api__max_attempts_over_20_is_refused_and_the_schema_says_so(api, workflow, client):
    body = {"name": "Many tries", "workflow": workflow.pk, "cron": "0 9 * * *", "max_attempts": 21}
    assert_error_shape(api.post("/api/triggers/", body, format="json"), 400, "max_attempts", "20")
    assert not Trigger.objects.exists()
    schema = client.get("/api/schema/?format=json").json()["components"]["schemas"]
    for name in ("TriggerRequest", "WorkflowRequest"):
        assert schema[name]["properties"]["max_attempts"]["maximum"] == 20
