"""workflows.services: creating and updating workflows, verifying and recording incoming runs."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from django.core.exceptions import ValidationError
from standardwebhooks import Webhook

from workflows import client, services
from workflows.exceptions import SignatureInvalid
from workflows.models import Workflow, WorkflowRun, generate_secret
from workflows.validators import validate_secret


def signed_headers(secret: str, body: str, *, msg_id: str = "msg-1", at: datetime | None = None) -> dict[str, str]:
    at = at or datetime.now(UTC)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": Webhook(secret).sign(msg_id=msg_id, timestamp=at, data=body),
    }


# --- workflow_create / workflow_update ----------------------------------------------------------


@pytest.mark.parametrize("secret", [None, ""])
def test_workflow_create__missing_secret_is_generated(user, secret):
    """A workflow created without a secret gets a valid generated one."""
    fields = {} if secret is None else {"secret": secret}
    workflow = services.workflow_create(owner=user, name="Nightly", endpoint_url="https://example.com/hook", **fields)
    validate_secret(workflow.secret)
    assert Workflow.objects.get().secret == workflow.secret


def test_workflow_create__generated_secrets_differ(user):
    """Each generated secret is new."""
    one = services.workflow_create(owner=user, name="One")
    two = services.workflow_create(owner=user, name="Two")
    assert one.secret != two.secret


def test_workflow_create__unknown_field_raises_type_error(user):
    """Only editable fields may be passed."""
    with pytest.raises(TypeError):
        services.workflow_create(owner=user, name="Nightly", owner_id=5)


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"secret": "not-a-secret"}, "secret"),
        ({"headers": {"Idempotency-Key": "x"}}, "headers"),
        ({"endpoint_url": "ftp://example.com/hook"}, "endpoint_url"),
        ({"timeout_seconds": 0}, "timeout_seconds"),
        ({"timeout_seconds": 301}, "timeout_seconds"),
        ({"default_inputs": [1]}, "default_inputs"),
        ({"http_method": "DELETE"}, "http_method"),
    ],
)
def test_workflow_create__invalid_field_rejected(user, fields, field):
    """An invalid value raises a ValidationError for its field and saves nothing."""
    with pytest.raises(ValidationError) as excinfo:
        services.workflow_create(owner=user, name="Nightly", **fields)
    assert field in excinfo.value.message_dict
    assert not Workflow.objects.exists()


def test_workflow_update__blank_secret_keeps_current(workflow):
    """Secrets are write-only: an update with a blank secret keeps the current one."""
    current = workflow.secret
    services.workflow_update(workflow=workflow, secret="", name="Renamed")
    workflow.refresh_from_db()
    assert (workflow.secret, workflow.name) == (current, "Renamed")


def test_workflow_update__new_secret_replaces(workflow):
    """A new valid secret replaces the old one."""
    new = generate_secret()
    services.workflow_update(workflow=workflow, secret=new)
    workflow.refresh_from_db()
    assert workflow.secret == new


def test_workflow_update__unknown_field_raises_type_error(workflow):
    """Only editable fields may be changed."""
    with pytest.raises(TypeError):
        services.workflow_update(workflow=workflow, owner=None)


# --- run_signature_verify -----------------------------------------------------------------------


def test_run_signature_verify__valid_returns_payload(workflow):
    """A valid signature returns the parsed JSON body."""
    body = json.dumps({"inputs": {"a": 1}})
    payload = services.run_signature_verify(
        workflow=workflow, body=body.encode(), headers=signed_headers(workflow.secret, body)
    )
    assert payload == {"inputs": {"a": 1}}


def test_run_signature_verify__accepts_what_the_client_signs(workflow):
    """The worker's own signing (workflows.client.sign) verifies at the built-in endpoint."""
    body = client.encode_body({"inputs": {"a": 1}, "attempt": 2})
    headers = client.sign(secret=workflow.secret, message_id="exec-1", body=body)
    assert services.run_signature_verify(workflow=workflow, body=body.encode(), headers=headers)["attempt"] == 2


@pytest.mark.parametrize(
    "breakage",
    [
        pytest.param(lambda w, body: (body, signed_headers(generate_secret(), body)), id="other-secret"),
        pytest.param(
            lambda w, body: (body, signed_headers(w.secret, body, at=datetime.now(UTC) - timedelta(minutes=6))),
            id="stale",
        ),
        pytest.param(lambda w, body: (body, {**signed_headers(w.secret, body), "webhook-signature": "x"}), id="junk"),
        pytest.param(lambda w, body: (body, {}), id="unsigned"),
        pytest.param(lambda w, body: ("{not json", signed_headers(w.secret, "{not json")), id="not-json"),
    ],
)
def test_run_signature_verify__refusals_raise_signature_invalid(workflow, breakage):
    """Wrong secret, stale timestamp, junk or missing headers and non-object bodies raise SignatureInvalid."""
    body, headers = breakage(workflow, json.dumps({"inputs": {}}))
    with pytest.raises(SignatureInvalid):
        services.run_signature_verify(workflow=workflow, body=body.encode(), headers=headers)


def test_run_signature_verify__invalid_utf8_raises_signature_invalid(workflow):
    """A body that is not UTF-8 is refused, not a server error."""
    with pytest.raises(SignatureInvalid):
        services.run_signature_verify(workflow=workflow, body=b"\xff\xfe", headers=signed_headers(workflow.secret, "x"))


# --- run_record ---------------------------------------------------------------------------------


def test_run_record__once_per_key(workflow):
    """The first call records a run; a repeat with the same key returns it and records nothing."""
    run, created = services.run_record(workflow=workflow, idempotency_key="k", payload={"inputs": {"a": 1}})
    again, created_again = services.run_record(workflow=workflow, idempotency_key="k", payload={"inputs": {"a": 2}})
    assert (created, created_again) == (True, False)
    assert again.pk == run.pk
    assert WorkflowRun.objects.get().inputs == {"a": 1}


def test_run_record__non_object_inputs_recorded_empty(workflow):
    """Inputs that are not an object are recorded as {} (the whole body is kept in payload)."""
    run, _ = services.run_record(workflow=workflow, idempotency_key="k", payload={"inputs": [1]})
    assert run.inputs == {}
    assert run.payload == {"inputs": [1]}
