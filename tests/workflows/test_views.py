"""The built-in execution endpoint: POST /api/workflows/<id>/runs/ with a Standard Webhooks signature."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from django.urls import reverse
from standardwebhooks import Webhook

from tests.factories import WorkflowFactory
from workflows.models import WorkflowRun, generate_secret

PAYLOAD = {"workflow_id": 1, "execution_id": "e-1", "attempt": 1, "inputs": {"report": "weekly"}}


def signed(secret: str, payload: object, *, key: str | None = "key-1", msg_id: str | None = None, at=None):
    """Body and headers as a Standard Webhooks sender makes them (signed with the library itself)."""
    body = json.dumps(payload)
    msg_id = msg_id or key or "msg-1"
    at = at or datetime.now(UTC)
    headers = {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": Webhook(secret).sign(msg_id=msg_id, timestamp=at, data=body),
    }
    if key is not None:
        headers["Idempotency-Key"] = key
    return body, headers


def post(client, workflow_id: int, body: str, headers: dict[str, str]):
    url = reverse("workflow-runs", kwargs={"workflow_id": workflow_id})
    return client.post(url, data=body, content_type="application/json", headers=headers)


def test_workflow_runs__signed_request_records_run(client, workflow):
    """A correctly signed request is accepted (202) with a run id, and the run is recorded."""
    response = post(client, workflow.pk, *signed(workflow.secret, PAYLOAD))
    assert response.status_code == 202
    run_id = response.json()["run_id"]
    run = WorkflowRun.objects.get()
    assert str(run.id) == run_id
    assert run.workflow == workflow
    assert run.idempotency_key == "key-1"
    assert run.inputs == {"report": "weekly"}
    assert run.payload == PAYLOAD


def test_workflow_runs__same_key_returns_same_run(client, workflow):
    """A repeat with the same Idempotency-Key (a retry, newly signed) gets the same run id; one row."""
    first = post(client, workflow.pk, *signed(workflow.secret, PAYLOAD))
    later = datetime.now(UTC) + timedelta(seconds=30)
    second = post(client, workflow.pk, *signed(workflow.secret, PAYLOAD, at=later))
    assert second.status_code == 202
    assert second.json()["run_id"] == first.json()["run_id"]
    assert first.json()["created"] is True and second.json()["created"] is False
    assert WorkflowRun.objects.count() == 1


def test_workflow_runs__different_keys_record_different_runs(client, workflow):
    """Two different keys are two runs."""
    first = post(client, workflow.pk, *signed(workflow.secret, PAYLOAD, key="key-1"))
    second = post(client, workflow.pk, *signed(workflow.secret, PAYLOAD, key="key-2"))
    assert first.json()["run_id"] != second.json()["run_id"]
    assert WorkflowRun.objects.count() == 2


def test_workflow_runs__same_key_on_another_workflow_is_another_run(client, user):
    """Idempotency keys are per workflow."""
    one, two = WorkflowFactory(owner=user), WorkflowFactory(owner=user)
    first = post(client, one.pk, *signed(one.secret, PAYLOAD))
    second = post(client, two.pk, *signed(two.secret, PAYLOAD))
    assert first.json()["run_id"] != second.json()["run_id"]


def test_workflow_runs__bad_signature_is_401_and_records_nothing(client, workflow):
    """A request signed with another secret is refused and nothing is recorded."""
    response = post(client, workflow.pk, *signed(generate_secret(), PAYLOAD))
    assert response.status_code == 401
    assert "signature" in response.json()["errors"]
    assert not WorkflowRun.objects.exists()


def test_workflow_runs__tampered_body_is_401(client, workflow):
    """A body changed after signing does not verify."""
    _, headers = signed(workflow.secret, PAYLOAD)
    tampered = json.dumps({**PAYLOAD, "inputs": {"report": "all"}})
    assert post(client, workflow.pk, tampered, headers).status_code == 401
    assert not WorkflowRun.objects.exists()


@pytest.mark.parametrize("shift", [timedelta(minutes=-6), timedelta(minutes=6)])
def test_workflow_runs__stale_or_future_timestamp_is_401(client, workflow, shift):
    """A signature more than 5 minutes old (or ahead) is refused."""
    response = post(client, workflow.pk, *signed(workflow.secret, PAYLOAD, at=datetime.now(UTC) + shift))
    assert response.status_code == 401
    assert not WorkflowRun.objects.exists()


def test_workflow_runs__timestamp_within_tolerance_accepted(client, workflow):
    """A signature four minutes old is still accepted."""
    at = datetime.now(UTC) - timedelta(minutes=4)
    assert post(client, workflow.pk, *signed(workflow.secret, PAYLOAD, at=at)).status_code == 202


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_workflow_runs__missing_signature_header_is_401(client, workflow, missing):
    """Each Standard Webhooks header is required."""
    body, headers = signed(workflow.secret, PAYLOAD)
    del headers[missing]
    assert post(client, workflow.pk, body, headers).status_code == 401
    assert not WorkflowRun.objects.exists()


@pytest.mark.parametrize("signature", ["garbage", "v1,not-base64!!", "v1"])
def test_workflow_runs__malformed_signature_is_401(client, workflow, signature):
    """A malformed signature header is a 401, not a server error."""
    body, headers = signed(workflow.secret, PAYLOAD)
    headers["webhook-signature"] = signature
    assert post(client, workflow.pk, body, headers).status_code == 401


def test_workflow_runs__too_long_key_is_400(client, workflow):
    """A signed webhook-id (the idempotency key) over 255 characters is refused with 400, nothing recorded."""
    response = post(client, workflow.pk, *signed(workflow.secret, PAYLOAD, key="k" * 256))
    assert response.status_code == 400
    assert "webhook-id" in response.json()["errors"]
    assert not WorkflowRun.objects.exists()


def test_workflow_runs__idempotency_key_must_match_signed_id(client, workflow):
    """A replayed request with a new, unsigned Idempotency-Key is refused: it cannot create a second run."""
    body, headers = signed(workflow.secret, PAYLOAD, key="key-1")
    assert post(client, workflow.pk, body, headers).status_code == 202
    replay = post(client, workflow.pk, body, {**headers, "Idempotency-Key": "key-2"})
    assert replay.status_code == 400
    assert "Idempotency-Key" in replay.json()["errors"]
    assert WorkflowRun.objects.count() == 1


def test_workflow_runs__signed_body_that_is_not_an_object_is_400(client, workflow):
    """A correctly signed body that is not a JSON object is bad input (400), not a bad signature."""
    response = post(client, workflow.pk, *signed(workflow.secret, [1, 2]))
    assert response.status_code == 400
    assert "body" in response.json()["errors"]
    assert not WorkflowRun.objects.exists()


def test_workflow_runs__without_idempotency_key_dedupes_on_webhook_id(client, workflow):
    """Without an Idempotency-Key header the signed webhook-id is the key."""
    msg_id = str(uuid.uuid4())
    first = post(client, workflow.pk, *signed(workflow.secret, PAYLOAD, key=None, msg_id=msg_id))
    second = post(client, workflow.pk, *signed(workflow.secret, PAYLOAD, key=None, msg_id=msg_id))
    assert first.status_code == second.status_code == 202
    assert first.json()["run_id"] == second.json()["run_id"]
    assert WorkflowRun.objects.get().idempotency_key == msg_id


def test_workflow_runs__unknown_workflow_is_404(client, db):
    """A run for a workflow that does not exist is 404."""
    body, headers = signed(generate_secret(), PAYLOAD)
    assert post(client, 999999, body, headers).status_code == 404


def test_workflow_runs__only_post_is_open(client, workflow):
    """Only the signed POST needs no user: GET (the owner's run list, tests/workflows/test_api.py) and PUT are 401."""
    url = reverse("workflow-runs", kwargs={"workflow_id": workflow.pk})
    assert client.get(url).status_code == 401
    assert client.put(url, data="{}", content_type="application/json").status_code == 401


def test_workflow_runs__inactive_workflow_is_409(client, user):
    """A signed run for an inactive workflow is refused with 409 and nothing is recorded."""
    workflow = WorkflowFactory(owner=user, is_active=False)
    response = post(client, workflow.pk, *signed(workflow.secret, PAYLOAD))
    assert response.status_code == 409
    assert not WorkflowRun.objects.exists()


def test_workflow_runs__body_not_an_object_refused(client, workflow):
    """A signed body that is not a JSON object is refused and nothing is recorded."""
    response = post(client, workflow.pk, *signed(workflow.secret, [1, 2, 3]))
    assert 400 <= response.status_code < 500
    assert not WorkflowRun.objects.exists()


def test_workflow_runs__inputs_not_an_object_recorded_empty(client, workflow):
    """A run whose inputs are not an object is recorded with empty inputs."""
    assert post(client, workflow.pk, *signed(workflow.secret, {**PAYLOAD, "inputs": "x"})).status_code == 202
    assert WorkflowRun.objects.get().inputs == {}


def test_workflow_execution_url__blank_endpoint_is_this_view(settings, user):
    """A workflow without endpoint_url is called at this service's own runs URL."""
    settings.SCHEDULER_PUBLIC_BASE_URL = "http://scheduler.internal:8000"
    workflow = WorkflowFactory(owner=user, endpoint_url="")
    assert workflow.execution_url == f"http://scheduler.internal:8000/api/workflows/{workflow.pk}/runs/"


def test_workflow_runs__nul_character_in_body_is_400(client, workflow):
    """A signed body with a NUL character (which PostgreSQL cannot store) is refused with 400, nothing recorded."""
    response = post(client, workflow.pk, *signed(workflow.secret, {"inputs": {"note": "a\u0000b"}}))
    assert response.status_code == 400
    assert "body" in response.json()["errors"]
    assert not WorkflowRun.objects.exists()
