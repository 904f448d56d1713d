"""The rules for workflows: every write goes through here (admin, commands, API, tasks)."""

from __future__ import annotations

import json
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, transaction
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from .exceptions import SignatureInvalid
from .models import Workflow, WorkflowRun

_EDITABLE = frozenset(
    {"name", "endpoint_url", "http_method", "headers", "secret", "timeout_seconds", "default_inputs", "is_active"}
)


@transaction.atomic
def workflow_create(*, owner: AbstractBaseUser, name: str, **fields: Any) -> Workflow:
    """Create a workflow; a blank or missing secret gets a generated one."""
    unknown = set(fields) - _EDITABLE
    if unknown:
        raise TypeError(f"unknown workflow fields: {sorted(unknown)}")
    if not fields.get("secret"):
        fields.pop("secret", None)
    _json_defaults(fields)
    workflow = Workflow(owner=owner, name=name, **fields)
    workflow.full_clean()
    workflow.save()
    return workflow


@transaction.atomic
def workflow_update(*, workflow: Workflow, **fields: Any) -> Workflow:
    """Change a workflow; a blank secret keeps the current one (secrets are write-only)."""
    unknown = set(fields) - _EDITABLE
    if unknown:
        raise TypeError(f"unknown workflow fields: {sorted(unknown)}")
    if "secret" in fields and not fields["secret"]:
        fields.pop("secret")
    _json_defaults(fields)
    for name, value in fields.items():
        setattr(workflow, name, value)
    workflow.full_clean()
    workflow.save()
    return workflow


def _json_defaults(fields: dict[str, Any]) -> None:
    # An emptied JSON field arrives as None; it means "none", i.e. an empty object.
    for name in ("headers", "default_inputs"):
        if name in fields and fields[name] is None:
            fields[name] = {}


def run_signature_verify(*, workflow: Workflow, body: bytes, headers: dict[str, str]) -> Any:
    """Check a Standard Webhooks signature (and its timestamp's freshness); return the parsed body."""
    try:
        payload = Webhook(workflow.secret).verify(body, headers)
    except WebhookVerificationError as exc:
        raise SignatureInvalid(str(exc)) from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise SignatureInvalid("body or signature headers are malformed") from exc
    return payload


def run_record(*, workflow: Workflow, idempotency_key: str, payload: dict[str, Any]) -> tuple[WorkflowRun, bool]:
    """Record a run once per idempotency key; a repeat returns the first run and records nothing."""
    inputs = payload.get("inputs")
    if not isinstance(inputs, dict):
        inputs = {}
    existing = WorkflowRun.objects.filter(workflow=workflow, idempotency_key=idempotency_key).first()
    if existing is not None:
        return existing, False
    try:
        with transaction.atomic():
            run = WorkflowRun.objects.create(
                workflow=workflow,
                idempotency_key=idempotency_key,
                inputs=inputs,
                payload=json.loads(json.dumps(payload)),
            )
    except IntegrityError:
        # A concurrent request with the same key won the insert.
        return WorkflowRun.objects.get(workflow=workflow, idempotency_key=idempotency_key), False
    return run, True
