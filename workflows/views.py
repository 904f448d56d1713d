"""The built-in workflow execution endpoint: POST /api/workflows/<id>/runs/."""

from __future__ import annotations

import json
import logging

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from scheduler_project.api import too_big_message

from . import demo, services
from .exceptions import RunBodyInvalid, SignatureInvalid
from .models import Workflow
from .validators import json_problem

logger = logging.getLogger(__name__)
MAX_KEY_LENGTH = 255


@csrf_exempt
@require_POST
def workflow_runs(request: HttpRequest, workflow_id: int) -> JsonResponse:
    """Accept a signed run request: 202 {"run_id": ...}, the same run id for a repeated key."""
    workflow = Workflow.objects.filter(pk=workflow_id).first()
    if workflow is None:
        return JsonResponse({"errors": {"workflow": ["not found"]}}, status=404)
    headers = {name.lower(): value for name, value in request.headers.items()}
    try:
        body = request.body
    except RequestDataTooBig:
        return JsonResponse({"errors": {"body": [too_big_message()]}}, status=413)
    try:
        payload = services.run_signature_verify(workflow=workflow, body=body, headers=headers)
    except SignatureInvalid as exc:
        logger.info("run request for workflow %s refused: %s", workflow.pk, exc)
        return JsonResponse({"errors": {"signature": [str(exc)]}}, status=401)
    except RunBodyInvalid as exc:
        return JsonResponse({"errors": {"body": [str(exc)]}}, status=400)
    if not isinstance(payload, dict):
        return JsonResponse({"errors": {"body": ["must be a JSON object"]}}, status=400)
    problem = json_problem(payload)
    if problem is not None:
        path, message = problem
        return JsonResponse({"errors": {"body": [f"{path}: {message}" if path else message]}}, status=400)
    if b"\\u0000" in body.lower():
        # PostgreSQL cannot store NUL in text or JSON: refuse it here rather than fail on save.
        return JsonResponse({"errors": {"body": ["must not contain NUL characters (\\u0000)"]}}, status=400)
    # The signed webhook-id is the idempotency key: an unsigned header could be changed to
    # replay a captured request as new runs. Idempotency-Key, when sent, must agree with it.
    key = headers.get("webhook-id", "")
    if len(key) > MAX_KEY_LENGTH:
        return JsonResponse({"errors": {"webhook-id": [f"at most {MAX_KEY_LENGTH} characters"]}}, status=400)
    if headers.get("idempotency-key", key) != key:
        return JsonResponse({"errors": {"Idempotency-Key": ["must equal the signed webhook-id"]}}, status=400)
    if not workflow.is_active:
        return JsonResponse({"errors": {"workflow": ["is not active"]}}, status=409)
    run, created = services.run_record(workflow=workflow, idempotency_key=key, payload=payload)
    return JsonResponse({"run_id": str(run.id), "created": created}, status=202)


@csrf_exempt
@require_POST
def demo_target(request: HttpRequest, call: str) -> JsonResponse:
    """The demo target (workflows/demo.py): a made-up JSON answer to an example's call; 404 while
    SCHEDULER_DEMO_TARGET is off."""
    if not settings.SCHEDULER_DEMO_TARGET:
        return JsonResponse({"errors": {"demo-target": ["is off: set SCHEDULER_DEMO_TARGET=1 to use it"]}}, status=404)
    try:
        body = json.loads(request.body or b"{}")
    except RequestDataTooBig:
        return JsonResponse({"errors": {"body": [too_big_message()]}}, status=413)
    except (ValueError, UnicodeDecodeError):
        return JsonResponse({"errors": {"body": ["must be JSON"]}}, status=400)
    if not isinstance(body, dict):
        return JsonResponse({"errors": {"body": ["must be a JSON object"]}}, status=400)
    status, answer = demo.answer(call, body)
    return JsonResponse(answer, status=status)
