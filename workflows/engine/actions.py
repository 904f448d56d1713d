"""The engine's actions: each one a function and the JSON Schema of its params (adding one = both).

An action gets a ``StepCall`` (its params with variables filled in, unless it reads variables
itself, and the run's ids) and returns an ``Outcome``. Failures it expects are an Outcome with an
error; the runner turns anything it raises into a failed step too.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.core.mail import send_mail
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from ..client import WorkflowCall, call_workflow
from ..exceptions import StepFailed, WorkflowCallError, WorkflowTimedOut
from ..models import RUN_FINISHED_STATUSES, HttpMethod, Workflow
from ..validators import validate_headers
from . import variables

logger = logging.getLogger("workflows.engine")

# A param that may also be given as one variable, e.g. "seconds": "${inputs.delay}".
VARIABLE_STRING = {"type": "string", "pattern": r"^\$\{[^${}]+\}$"}
MAX_WAIT_SECONDS = 366 * 24 * 3600
MAX_HTTP_RETRIES = 10
DEFAULT_RETRIES = 2
# Backoff between attempts of an http step: 2, 4, 8... seconds, at most this.
MAX_RETRY_BACKOFF_SECONDS = 60


def var_or(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, VARIABLE_STRING]}


@dataclass(frozen=True)
class StepCall:
    """What an action is given."""

    run_id: str
    step_id: str
    seq: int
    attempt: int
    workflow: Workflow
    params: dict[str, Any]
    values: dict[str, Any]  # what variables are read from (variables.scope)
    now: datetime
    depth: int = 0  # how many run_workflow steps above this run (0: started by a trigger or a call)
    # What earlier attempts of this step recorded as done (record_progress), e.g. {"email": 2}: an
    # attempt after a worker died skips that part instead of doing it again.
    progress: dict[str, Any] = field(default_factory=dict)
    # Save ``name`` as done with ``value`` in the run now (committed), for a later attempt of this
    # step to see; False if this attempt no longer holds the step (cancelled, or taken over).
    record_progress: Callable[[str, Any], bool] = field(default=lambda name, value: True, repr=False)


@dataclass(frozen=True)
class Outcome:
    """What a step did: succeeded (with an output and perhaps a named event), failed, or waits."""

    status: str  # "succeeded", "failed" or "waiting"
    output: Any = None
    event: str = ""  # a named event for a state's transitions, e.g. "true"
    error: str = ""
    timed_out: bool = False  # a failure by timeout: the "timeout" transition if the state has one
    retry_in_seconds: float | None = None  # a failure worth another attempt, after this long
    wait_until: datetime | None = None
    child_run_id: str = ""  # waiting for this sub-workflow run to finish (run_workflow)


def succeeded(output: Any = None, *, event: str = "") -> Outcome:
    return Outcome("succeeded", output=output, event=event)


def failed(error: str, *, timed_out: bool = False, retry_in_seconds: float | None = None) -> Outcome:
    return Outcome("failed", error=error, timed_out=timed_out, retry_in_seconds=retry_in_seconds)


@dataclass(frozen=True)
class Action:
    name: str
    schema: dict[str, Any]
    run: Callable[[StepCall], Outcome]
    # False: the action reads variables itself (condition: ``exists`` must not fail on a missing one).
    resolve_params: bool = True
    # How long one attempt may take at most (the run's lease is this plus the grace).
    seconds: Callable[[dict[str, Any], Workflow], float] = field(default=lambda params, workflow: 10.0)


REGISTRY: dict[str, Action] = {}


def action(name: str, schema: dict[str, Any], **options: Any) -> Callable[[Callable[[StepCall], Outcome]], Any]:
    """Register ``func`` as the action ``name`` whose params ``schema`` describes."""

    def register(func: Callable[[StepCall], Outcome]) -> Callable[[StepCall], Outcome]:
        REGISTRY[name] = Action(name=name, schema=schema, run=func, **options)
        return func

    return register


# --- set, log ------------------------------------------------------------------------------------


@action(
    "set",
    {
        "type": "object",
        "additionalProperties": False,
        "required": ["values"],
        "properties": {"values": {"type": "object", "description": 'The step\'s output, e.g. {"region": "eu"}.'}},
    },
)
def set_values(call: StepCall) -> Outcome:
    """Output ``values`` (variables filled in): later steps read them as ${steps.<id>.output.<name>}."""
    return succeeded(call.params["values"])


@action(
    "log",
    {
        "type": "object",
        "additionalProperties": False,
        "required": ["message"],
        "properties": {
            "message": {"type": "string", "maxLength": 2000},
            "level": {"enum": ["info", "warning", "error"]},
        },
    },
)
def log_message(call: StepCall) -> Outcome:
    """Write ``message`` to the worker's log (logger workflows.engine) and the step's output."""
    level = {"info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}[call.params.get("level", "info")]
    logger.log(
        level,
        "run %s step %s: %s",
        call.run_id,
        call.step_id,
        call.params["message"],
        extra={"run_id": call.run_id, "workflow_id": call.workflow.pk},
    )
    return succeeded({"message": call.params["message"]})


# --- wait ------------------------------------------------------------------------------------------


@action(
    "wait",
    {
        "type": "object",
        "additionalProperties": False,
        "minProperties": 1,
        "maxProperties": 1,
        "properties": {
            "seconds": var_or({"type": "number", "minimum": 0, "maximum": MAX_WAIT_SECONDS}),
            "until": {"type": "string", "description": "An ISO 8601 time with its offset, e.g. 2027-01-01T09:00:00Z."},
        },
    },
)
def wait(call: StepCall) -> Outcome:
    """Wait ``seconds`` or ``until`` a time: held in the database (WorkflowRun.wake_at), no worker sleeps."""
    if "seconds" in call.params:
        seconds = call.params["seconds"]
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not 0 <= seconds <= MAX_WAIT_SECONDS:
            return failed(f"seconds must be a number from 0 to {MAX_WAIT_SECONDS}, not {seconds!r}")
        return Outcome("waiting", wait_until=call.now + timedelta(seconds=seconds))
    until = call.params["until"]
    when = parse_datetime(until) if isinstance(until, str) else None
    if when is None or timezone.is_naive(when):
        return failed(f"until must be an ISO 8601 time with its offset, e.g. 2027-01-01T09:00:00Z, not {until!r}")
    return Outcome("waiting", wait_until=max(when.astimezone(UTC), call.now))


# --- condition -------------------------------------------------------------------------------------

_COMPARE = ("eq", "ne", "gt", "lt", "in")
EXPRESSION: dict[str, Any] = {
    "type": "object",
    "minProperties": 1,
    "maxProperties": 1,
    "properties": {
        **{op: {"type": "array", "minItems": 2, "maxItems": 2} for op in _COMPARE},
        "exists": {"type": "string", "description": "A variable, e.g. ${steps.fetch.output.id}."},
        "and": {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/expression"}},
        "or": {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/expression"}},
        "not": {"$ref": "#/$defs/expression"},
    },
    "additionalProperties": False,
}


def evaluate(expression: dict[str, Any], values: dict[str, Any]) -> bool:
    """True or false for a condition (eq, ne, gt, lt, in, exists, and, or, not): data, never eval."""
    (op, operand), *_ = expression.items()
    if op == "and":
        return all(evaluate(item, values) for item in operand)
    if op == "or":
        return any(evaluate(item, values) for item in operand)
    if op == "not":
        return not evaluate(operand, values)
    if op == "exists":
        match = variables.VARIABLE.fullmatch(operand.strip())
        try:
            variables.lookup(values, match.group(1) if match else operand)
        except variables.VariableMissing:
            return False
        return True
    left, right = (variables.resolve(item, values) for item in operand)
    if op == "eq":
        return left == right
    if op == "ne":
        return left != right
    if op == "in":
        if not isinstance(right, list | str | dict):
            raise StepFailed(f"in: the right side must be a list, a string or an object, not {json.dumps(right)}")
        if not isinstance(right, list) and not isinstance(left, str):
            raise StepFailed(f"in: only text can be looked for in text or an object's keys, not {json.dumps(left)}")
        return left in right
    numbers = all(isinstance(side, int | float) and not isinstance(side, bool) for side in (left, right))
    if not numbers and not (isinstance(left, str) and isinstance(right, str)):
        raise StepFailed(f"{op}: cannot compare {json.dumps(left)} with {json.dumps(right)}")
    return left > right if op == "gt" else left < right


@action(
    "condition",
    {
        "$defs": {"expression": EXPRESSION},
        "type": "object",
        "additionalProperties": False,
        "required": ["if"],
        "properties": {"if": {"$ref": "#/$defs/expression"}},
    },
    resolve_params=False,
)
def condition(call: StepCall) -> Outcome:
    """Decide: the output is {"result": true|false} and the named event "true" or "false"."""
    result = evaluate(call.params["if"], call.values)
    return succeeded({"result": result}, event="true" if result else "false")


# A named event (what a state's transitions are keyed by).
EVENT = {"type": "string", "pattern": r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$"}
MAX_CASES = 50


@action(
    "branch",
    {
        "$defs": {"expression": EXPRESSION},
        "type": "object",
        "additionalProperties": False,
        "required": ["cases"],
        "properties": {
            "cases": {
                "type": "array",
                "minItems": 1,
                "maxItems": MAX_CASES,
                "items": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["if", "event"],
                    "properties": {"if": {"$ref": "#/$defs/expression"}, "event": EVENT},
                },
            },
            "default": EVENT,
        },
    },
    resolve_params=False,
)
def branch(call: StepCall) -> Outcome:
    """Pick a way: the event of the first case whose condition holds, else ``default`` ("default" if
    not given); a state's transitions go on from that event. Output {"event": ...}."""
    for case in call.params["cases"]:
        if evaluate(case["if"], call.values):
            return succeeded({"event": case["event"]}, event=case["event"])
    chosen = call.params.get("default", "default")
    return succeeded({"event": chosen}, event=chosen)


# --- http ------------------------------------------------------------------------------------------


def _http_seconds(params: dict[str, Any], workflow: Workflow) -> float:
    return float(params.get("timeout_seconds") or workflow.timeout_seconds)


@action(
    "http",
    {
        "type": "object",
        "additionalProperties": False,
        "required": ["url"],
        "properties": {
            "url": {"type": "string", "minLength": 1, "maxLength": 2048, "description": "http(s) URL to call."},
            "method": {"enum": list(HttpMethod.values)},
            "body": var_or({"type": "object"}),
            "headers": {"type": "object", "additionalProperties": {"type": "string"}},
            "timeout_seconds": {"type": "integer", "minimum": 1, "maximum": 300},
            "retries": {"type": "integer", "minimum": 0, "maximum": MAX_HTTP_RETRIES},
        },
    },
    seconds=_http_seconds,
)
def http(call: StepCall) -> Outcome:
    """Call a URL through the guarded, signed client (workflows.client): the same SSRF guard, deadline
    and Standard Webhooks signature as the scheduler's own calls. Every attempt of one step carries the
    same Idempotency-Key (run id, step number, step id), so a retry after a lost answer repeats nothing."""
    params = call.params
    body = params.get("body", {})
    if not isinstance(body, dict):
        return failed(f"body must be a JSON object, not {json.dumps(body)[:200]}")
    headers = params.get("headers", {})
    validate_headers(headers)
    url = params["url"]
    if not isinstance(url, str) or not url.lower().startswith(("http://", "https://")):
        return failed("url must be an http or https URL")
    return _signed_call(
        call,
        url=url,
        method=params.get("method", HttpMethod.POST),
        body=body,
        headers=headers,
        timeout_seconds=_http_seconds(params, call.workflow),
        retries=params.get("retries", DEFAULT_RETRIES),
    )


def _signed_call(
    call: StepCall,
    *,
    url: str,
    method: str,
    body: dict[str, Any],
    headers: dict[str, str],
    timeout_seconds: float,
    retries: int,
) -> Outcome:
    """One attempt through workflows.client; a retryable failure asks for another attempt after a backoff."""
    request = WorkflowCall(
        url=url,
        method=method,
        secret=call.workflow.secret,
        previous_secret=call.workflow.valid_previous_secret(),
        timeout_seconds=timeout_seconds,
        idempotency_key=f"{call.run_id}:{call.seq}:{call.step_id}",
        headers=headers,
        payload=body,
    )
    try:
        result = call_workflow(request)
    except WorkflowCallError as exc:
        again = exc.retryable and call.attempt <= retries
        delay = min(MAX_RETRY_BACKOFF_SECONDS, 2.0**call.attempt)
        if exc.retry_after_seconds is not None:
            delay = min(MAX_RETRY_BACKOFF_SECONDS, max(delay, exc.retry_after_seconds))
        return failed(
            str(exc)[:2000], timed_out=isinstance(exc, WorkflowTimedOut), retry_in_seconds=delay if again else None
        )
    try:
        answer: Any = json.loads(result.content) if result.content else None
    except (ValueError, UnicodeDecodeError, RecursionError):
        answer = result.content.decode("utf-8", errors="replace")
    return succeeded({"status": result.http_status, "body": answer})


# --- notify ----------------------------------------------------------------------------------------

NOTIFY_WEBHOOK_TIMEOUT_SECONDS = 10
MAX_RECIPIENTS = 50
# The attempt lost its step meanwhile (the run was cancelled, or recovery gave the step to another
# worker): it stops, and the runner does not use its outcome.
NOT_HELD = "stopped: this attempt no longer holds the step"


@action(
    "notify",
    {
        "type": "object",
        "additionalProperties": False,
        "required": ["message"],
        # E-mail, a webhook or both: without a webhook, the addresses are required.
        "if": {"not": {"required": ["webhook"]}},
        "then": {"required": ["email"]},
        "properties": {
            "email": {
                "type": "array",
                "minItems": 1,
                "maxItems": MAX_RECIPIENTS,
                "items": {"type": "string", "pattern": r"^[^@\s]+@[^@\s]+$|^\$\{[^${}]+\}$"},
            },
            "subject": {"type": "string", "maxLength": 200},
            "message": {"type": "string", "maxLength": 10_000},
            "webhook": {"type": "string", "minLength": 1, "maxLength": 2048},
            "retries": {"type": "integer", "minimum": 0, "maximum": MAX_HTTP_RETRIES},
        },
    },
    seconds=lambda params, workflow: NOTIFY_WEBHOOK_TIMEOUT_SECONDS + 30.0,  # the webhook, then the mail server
)
def notify(call: StepCall) -> Outcome:
    """Tell people: an e-mail (Django's mail backend, from SCHEDULER_NOTIFY_FROM_EMAIL) and/or a signed
    JSON POST to a webhook through the guarded client ({"subject", "message", "run_id", "workflow_id",
    "step"}). The webhook goes first and is retried like an http step; the e-mail is sent once it has
    succeeded. Each channel is recorded as done in the run (committed) as soon as it is, so an attempt
    after a worker died skips it. Still at least once: a worker killed after a channel went out and
    before that record commits sends it again (the webhook with the same Idempotency-Key)."""
    params = call.params
    subject = params.get("subject") or f"Workflow {call.workflow.name}: {call.step_id}"
    output: dict[str, Any] = {}
    if "webhook" in call.progress:
        output["webhook"] = call.progress["webhook"]
    elif "webhook" in params:
        url = params["webhook"]
        if not isinstance(url, str) or not url.lower().startswith(("http://", "https://")):
            return failed("webhook must be an http or https URL")
        body = {
            "subject": subject,
            "message": params["message"],
            "run_id": call.run_id,
            "workflow_id": call.workflow.pk,
            "step": call.step_id,
        }
        sent = _signed_call(
            call,
            url=url,
            method=HttpMethod.POST,
            body=body,
            headers={},
            timeout_seconds=NOTIFY_WEBHOOK_TIMEOUT_SECONDS,
            retries=params.get("retries", DEFAULT_RETRIES),
        )
        if sent.status != "succeeded":
            return sent
        output["webhook"] = sent.output["status"]
        if not call.record_progress("webhook", output["webhook"]):
            return failed(NOT_HELD)
    recipients = params.get("email") or []
    if "email" in call.progress:
        output["email"] = call.progress["email"]
    elif recipients:
        wrong = [address for address in recipients if not isinstance(address, str) or "@" not in address]
        if wrong:
            return failed(f"email: not e-mail addresses: {json.dumps(wrong)[:200]}")
        try:
            send_mail(subject, params["message"], settings.SCHEDULER_NOTIFY_FROM_EMAIL, recipients)
        except Exception as exc:  # noqa: BLE001 - a mail outage fails the step, never the worker
            return failed(f"e-mail not sent: {type(exc).__name__}: {str(exc)[:200]}")
        output["email"] = len(recipients)
        if not call.record_progress("email", output["email"]):
            return failed(NOT_HELD)
    return succeeded(output)


# --- run_workflow ----------------------------------------------------------------------------------

# Sub-workflows nest at most this deep: a workflow that (indirectly) runs itself stops here.
MAX_SUB_WORKFLOW_DEPTH = 5


@action(
    "run_workflow",
    {
        "type": "object",
        "additionalProperties": False,
        "required": ["workflow"],
        "properties": {
            "workflow": var_or(
                {"type": "integer", "minimum": 1, "description": "The id of a workflow of the same owner."}
            ),
            "inputs": var_or({"type": "object"}),
        },
    },
    seconds=lambda params, workflow: 30.0,
)
def run_workflow(call: StepCall) -> Outcome:
    """Start a run of another workflow of the same owner (with a definition) and wait for it: the step
    succeeds with the sub-run's id, status and step outputs, or fails with its error. The sub-run's
    key is this step's (run id, step number, step id), so a repeat of the step never starts a second."""
    from .. import services  # (services starts runs on the engine: imported when used)

    workflow_id = call.params["workflow"]
    if isinstance(workflow_id, bool) or not isinstance(workflow_id, int):
        return failed(f"workflow must be a workflow id, not {json.dumps(workflow_id)[:100]}")
    inputs = call.params.get("inputs", {})
    if not isinstance(inputs, dict):
        return failed(f"inputs must be a JSON object, not {json.dumps(inputs)[:200]}")
    child = Workflow.objects.filter(pk=workflow_id, owner_id=call.workflow.owner_id).first()
    if child is None:
        return failed(f"workflow {workflow_id}: no such workflow of this workflow's owner")
    if not child.definition or child.endpoint_url:
        return failed(f"workflow {workflow_id} ({child.name}) has no definition for the built-in engine to run")
    if not child.is_active:
        return failed(f"workflow {workflow_id} ({child.name}) is not active")
    if call.depth + 1 > MAX_SUB_WORKFLOW_DEPTH:
        return failed(f"sub-workflows nest deeper than {MAX_SUB_WORKFLOW_DEPTH} (does a workflow run itself?)")
    # The sub-run works for the same slot: its ${execution.*} are its parent's (the execution, the
    # trigger and the slot the parent run was started for, as far as the parent knows them).
    slot = {
        name: value
        for name, value in (call.values.get("execution") or {}).items()
        if name in ("execution_id", "scheduled_for", "trigger_id", "manual")
    }
    run, _ = services.run_record(
        workflow=child,
        idempotency_key=f"{call.run_id}:{call.seq}:{call.step_id}",
        payload={
            **slot,
            "inputs": {**child.default_inputs, **inputs},
            "parent_run_id": call.run_id,
            "parent_step": call.step_id,
            "depth": call.depth + 1,
        },
    )
    if run.status in RUN_FINISHED_STATUSES:
        return sub_run_outcome(run)
    return Outcome("waiting", child_run_id=str(run.pk))


def sub_run_outcome(run: Any) -> Outcome:
    """A finished sub-workflow run as the outcome of the step that waited for it."""
    if run.status == "succeeded":
        steps = (run.context or {}).get("steps", {})
        return succeeded(
            {
                "run_id": str(run.pk),
                "status": run.status,
                "steps": {name: {"output": step.get("output")} for name, step in steps.items()},
            }
        )
    return failed(f"sub-workflow run {run.pk} {run.status}: {run.error}"[:2000])
