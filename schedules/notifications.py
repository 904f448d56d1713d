"""Tells people about a trigger's final failures, automatic pauses and recoveries.

By e-mail (Django's mail backend) to the trigger's notify_emails, and by a JSON POST to its
notify_webhook_url, signed like workflow calls (Standard Webhooks, the workflow's secret) and
sent through the same client (deadline, size cap, redirects off).
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from django.conf import settings
from django.core.mail import send_mail

from workflows.client import WorkflowCall, call_workflow
from workflows.exceptions import WorkflowCallError

from .models import Execution, Trigger

logger = logging.getLogger(__name__)

SUBJECTS = {
    "failed": "Trigger {name!r}: execution failed",
    "auto_paused": "Trigger {name!r} paused after repeated failures",
    "recovered": "Trigger {name!r} recovered",
}
WEBHOOK_TIMEOUT_SECONDS = 10


def event_payload(trigger: Trigger, event: str, execution: Execution | None, detail: dict[str, Any]) -> dict[str, Any]:
    """What both channels say; never secrets, never response bodies."""
    return {
        "event": event,
        "trigger": {"id": trigger.pk, "name": trigger.name, "status": trigger.status},
        "workflow": {"id": trigger.workflow_id, "name": trigger.workflow.name},
        "execution": None
        if execution is None
        else {
            "id": str(execution.pk),
            "scheduled_for": execution.scheduled_for.isoformat(),
            "status": execution.status,
            "attempts": execution.attempts,
            "http_status": execution.http_status,
            "error": execution.error[:500],
        },
        "consecutive_failures": trigger.consecutive_failures,
        "pause_reason": trigger.pause_reason,
        "detail": detail,
    }


def send(trigger: Trigger, event: str, execution: Execution | None, detail: dict[str, Any]) -> dict[str, str]:
    """Send on every configured channel; report each channel's outcome (never raises)."""
    payload = event_payload(trigger, event, execution, detail)
    outcome: dict[str, str] = {}
    recipients = [address.strip() for address in trigger.notify_emails.split(",") if address.strip()]
    if recipients:
        subject = SUBJECTS.get(event, "Trigger {name!r}: " + event).format(name=trigger.name)
        lines = [f"{key}: {value}" for key, value in payload.items() if key not in ("detail",)]
        try:
            send_mail(subject, "\n".join(lines), settings.SCHEDULER_NOTIFY_FROM_EMAIL, recipients)
            outcome["email"] = "sent"
        except Exception as exc:  # noqa: BLE001 - a mail outage is reported, never raised into the worker
            logger.warning("notification e-mail for trigger %s failed: %s", trigger.pk, type(exc).__name__)
            outcome["email"] = f"failed: {type(exc).__name__}"
    if trigger.notify_webhook_url:
        call = WorkflowCall(
            url=trigger.notify_webhook_url,
            method="POST",
            secret=trigger.workflow.secret,
            timeout_seconds=WEBHOOK_TIMEOUT_SECONDS,
            idempotency_key=str(uuid.uuid5(uuid.NAMESPACE_URL, f"{trigger.pk}:{event}:{payload['execution']}")),
            payload=payload,
        )
        try:
            call_workflow(call)
            outcome["webhook"] = "sent"
        except WorkflowCallError as exc:
            logger.warning("notification webhook for trigger %s failed: %s", trigger.pk, exc)
            outcome["webhook"] = f"failed: {exc}"
    return outcome
