"""The rules for workflows: every write goes through here (admin, commands, API, tasks)."""

from __future__ import annotations

import contextvars
import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

from django.contrib.auth import get_user_model, password_validation
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import IntegrityError, models, transaction
from django.utils import timezone
from django.views.decorators.debug import sensitive_variables
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from . import network
from .exceptions import RunBodyInvalid, SignatureInvalid
from .models import AuditEvent, RunPriority, UserPreferences, Workflow, WorkflowRun, generate_secret
from .validators import MAX_JSON_DEPTH

_EDITABLE = frozenset(
    {"name", "endpoint_url", "http_method", "headers", "secret", "timeout_seconds", "default_inputs", "is_active"}
    # The concurrency limit, and the retry policy new triggers start from.
    | {"max_concurrency", "max_attempts", "min_backoff_seconds", "max_backoff_seconds", "max_doublings"}
    | {"max_retry_duration_seconds"}
    # The built-in engine's program (workflows/engine/definitions.py).
    | {"definition"}
)
# Longest rotation overlap: past a week the old secret is no longer being retired, just kept.
MAX_OVERLAP_SECONDS = 7 * 24 * 3600
DEFAULT_OVERLAP_SECONDS = 24 * 3600


# Where the current action comes from; the edges set it (middleware, commands), tasks leave the default.
_audit_source: contextvars.ContextVar[str] = contextvars.ContextVar("audit_source", default="scheduler")


@contextmanager
def audit_source(source: str) -> Iterator[None]:
    """Record audit events made inside the block as coming from ``source`` (admin, api, command)."""
    token = _audit_source.set(source)
    try:
        yield
    finally:
        _audit_source.reset(token)


# Never written to the audit trail, whatever changed.
_SECRET_FIELDS = frozenset({"secret", "previous_secret", "previous_secret_expires_at"})


def _audit_value(value: Any) -> Any:
    if isinstance(value, models.Model):
        return value.pk
    if isinstance(value, (datetime, date, time, timedelta, Decimal, uuid.UUID)):
        return str(value)
    return value


def audit_record(
    *,
    actor: AbstractBaseUser | None,
    action: str,
    obj: models.Model,
    owner: AbstractBaseUser | None = None,
    changes: dict[str, Any] | None = None,
) -> AuditEvent:
    """Record who did ``action`` to ``obj`` (a workflow, trigger or execution), never secrets."""
    details = {
        name: [_audit_value(part) for part in value] if isinstance(value, (list, tuple)) else _audit_value(value)
        for name, value in (changes or {}).items()
        if name not in _SECRET_FIELDS
    }
    if changes and _SECRET_FIELDS & set(changes):
        details["secret"] = "changed"  # noqa: S105 - a marker, never the value
    if actor is not None and not getattr(actor, "is_authenticated", False):
        actor = None
    return AuditEvent.objects.create(
        actor=actor,
        owner=owner if owner is not None else getattr(obj, "owner", None),
        action=action,
        source=_audit_source.get(),
        object_type=obj._meta.model_name,
        object_id=str(obj.pk),
        object_repr=str(obj)[:200],
        changes=json.loads(json.dumps(details, default=str)),
    )


def audit_changes(obj: models.Model, before: dict[str, Any]) -> dict[str, list[Any]]:
    """The fields of ``obj`` that differ from ``before``, as {name: [old, new]} (audit_record drops secrets)."""
    return {name: [old, getattr(obj, name)] for name, old in before.items() if getattr(obj, name) != old}


@transaction.atomic
def user_create(
    *, username: str, email: str = "", is_staff: bool = False, is_superuser: bool = False, password: str | None = None
) -> AbstractBaseUser:
    """Create a user who owns workflows and triggers.

    Without a password the user can't log in to the admin (an API-only user: give it a token);
    a password must pass ``AUTH_PASSWORD_VALIDATORS``. Errors are a ValidationError by field
    (``username``, ``email``, ``password``); nothing is saved then.
    """
    user_model = get_user_model()
    user = user_model(
        **{user_model.USERNAME_FIELD: username},
        email=email,
        is_staff=is_staff or is_superuser,
        is_superuser=is_superuser,
    )
    if password is None:
        user.set_unusable_password()
    else:
        try:
            password_validation.validate_password(password, user)
        except ValidationError as exc:
            raise ValidationError({"password": exc.messages}) from None
        user.set_password(password)
    user.full_clean()  # username rules and uniqueness, e-mail format
    user.save()
    return user


@transaction.atomic
def workflow_create(
    *, owner: AbstractBaseUser, name: str, actor: AbstractBaseUser | None = None, **fields: Any
) -> Workflow:
    """Create a workflow; a blank or missing secret gets a generated one."""
    unknown = set(fields) - _EDITABLE
    if unknown:
        raise TypeError(f"unknown workflow fields: {sorted(unknown)}")
    if not fields.get("secret"):
        fields.pop("secret", None)
    _json_defaults(fields)
    workflow = Workflow(owner=owner, name=name, **fields)
    workflow.full_clean()
    definition_check(workflow)
    endpoint_check(workflow.endpoint_url)
    workflow.save()
    audit_record(actor=actor, action="created", obj=workflow)
    return workflow


@transaction.atomic
def workflow_update(*, workflow: Workflow, actor: AbstractBaseUser | None = None, **fields: Any) -> Workflow:
    """Change a workflow; a blank secret keeps the current one (secrets are write-only).

    A new secret given here replaces the old one at once and ends any rotation overlap (e.g.
    after a leak); workflow_rotate_secret is the way to switch with an overlap.
    """
    unknown = set(fields) - _EDITABLE
    if unknown:
        raise TypeError(f"unknown workflow fields: {sorted(unknown)}")
    if "secret" in fields and not fields["secret"]:
        fields.pop("secret")
    if "secret" in fields and fields["secret"] != workflow.secret:
        workflow.previous_secret, workflow.previous_secret_expires_at = "", None
    _json_defaults(fields)
    endpoint_changed = "endpoint_url" in fields and fields["endpoint_url"] != workflow.endpoint_url
    before = {name: getattr(workflow, name) for name in fields}
    for name, value in fields.items():
        setattr(workflow, name, value)
    workflow.full_clean()
    definition_check(workflow)
    if endpoint_changed:
        endpoint_check(workflow.endpoint_url)
    workflow.save()
    changes = audit_changes(workflow, before)
    if changes:
        audit_record(actor=actor, action="updated", obj=workflow, changes=changes)
    return workflow


@transaction.atomic
def workflow_delete(*, workflow: Workflow, actor: AbstractBaseUser | None = None) -> None:
    """Delete a workflow and its runs; refused while triggers still point at it."""
    from .exceptions import WorkflowInUse

    if workflow.triggers.exists():
        count = workflow.triggers.count()
        raise WorkflowInUse(
            f"workflow {workflow.name!r} still has {count} trigger{'s' if count != 1 else ''}: delete them first."
        )
    audit_record(actor=actor, action="deleted", obj=workflow)
    workflow.delete()


def endpoint_check(url: str) -> None:
    """Refuse an endpoint the worker would always refuse: its host resolves, and only to blocked addresses.

    A host that does not resolve (yet) is accepted: it may exist by the time the workflow runs,
    and the worker vets every call anyway (workflows.network). Blank means the built-in endpoint.
    """
    if not url:
        return
    problem = network.endpoint_problem(url, timeout=network.SAVE_RESOLVE_SECONDS)
    if problem:
        raise ValidationError({"endpoint_url": f"calls to it would be refused: {problem}"})


def definition_check(workflow: Workflow) -> None:
    """Refuse a definition the engine could not run (ValidationError on ``definition``, each problem
    naming its path, e.g. definition.states[2].transitions.success), or one on a workflow with an
    endpoint_url (the engine runs only what the built-in endpoint receives). Empty: no engine."""
    if workflow.definition == {}:
        return
    from .engine.definitions import definition_check as check

    check(workflow.definition)
    if workflow.endpoint_url:
        raise ValidationError(
            {"definition": ["a workflow with an endpoint_url is run there: clear endpoint_url to run the definition."]}
        )


def _json_defaults(fields: dict[str, Any]) -> None:
    # An emptied JSON field arrives as None; it means "none", i.e. an empty object.
    for name in ("headers", "default_inputs", "definition"):
        if name in fields and fields[name] is None:
            fields[name] = {}


@sensitive_variables("secret")
def run_signature_verify(
    *, workflow: Workflow, body: bytes, headers: dict[str, str], now: datetime | None = None
) -> Any:
    """Check a Standard Webhooks signature (and its timestamp's freshness); return the parsed body.

    During a rotation overlap a signature made with the previous secret is accepted too.
    """
    error: WebhookVerificationError | None = None
    for secret in workflow.valid_secrets(now=now):
        try:
            return Webhook(secret).verify(body, headers)
        except WebhookVerificationError as exc:
            error = exc
        except (ValueError, UnicodeDecodeError) as exc:
            raise SignatureInvalid("body or signature headers are malformed") from exc
        except RecursionError:
            # Signed, but JSON nested too deep for Python's parser (standardwebhooks parses it).
            raise RunBodyInvalid(f"is nested deeper than {MAX_JSON_DEPTH} levels.") from None
    raise SignatureInvalid(str(error)) from error


@sensitive_variables("new_secret", "old_secret")
@transaction.atomic
def workflow_rotate_secret(
    *,
    workflow: Workflow,
    overlap_seconds: int = DEFAULT_OVERLAP_SECONDS,
    new_secret: str | None = None,
    now: datetime | None = None,
    actor: AbstractBaseUser | None = None,
) -> str:
    """Give the workflow a new signing secret and return it (the only time it is shown).

    For ``overlap_seconds`` the old secret stays valid: calls carry signatures made with both and
    the built-in endpoint accepts either, so receivers can switch over. 0 ends the old one now.
    A rotation during an overlap drops the secret before the current one.
    """
    if not 0 <= overlap_seconds <= MAX_OVERLAP_SECONDS:
        raise ValidationError(
            {"overlap_seconds": f"must be 0-{MAX_OVERLAP_SECONDS} seconds (7 days), not {overlap_seconds}."}
        )
    locked = Workflow.objects.select_for_update().get(pk=workflow.pk)
    new_secret = new_secret or generate_secret()
    old_secret = locked.secret
    if new_secret == old_secret:
        raise ValidationError({"secret": "must differ from the current secret."})
    locked.secret = new_secret
    if overlap_seconds:
        locked.previous_secret = old_secret
        locked.previous_secret_expires_at = (now or timezone.now()) + timedelta(seconds=overlap_seconds)
    else:
        locked.previous_secret, locked.previous_secret_expires_at = "", None
    locked.full_clean()
    locked.save(update_fields=["secret", "previous_secret", "previous_secret_expires_at", "updated_at"])
    for name in ("secret", "previous_secret", "previous_secret_expires_at", "updated_at"):
        setattr(workflow, name, getattr(locked, name))
    audit_record(actor=actor, action="secret_rotated", obj=workflow, changes={"overlap_seconds": overlap_seconds})
    return new_secret


def workflow_secrets_reencrypt() -> int:
    """Re-encrypt every stored secret with the first key in SCHEDULER_SECRET_KEYS; return how many workflows.

    Run after putting a new key first: afterwards the old keys can be removed from the list.
    """
    count = 0
    for pk in Workflow.objects.order_by("pk").values_list("pk", flat=True):
        with transaction.atomic():
            # Loading decrypts with any key, saving encrypts with the first; the lock keeps a
            # concurrent rotation from being overwritten with the values read here.
            workflow = Workflow.objects.select_for_update().filter(pk=pk).first()
            if workflow is not None:
                workflow.save(update_fields=["secret", "previous_secret"])
                count += 1
    return count


def run_record(*, workflow: Workflow, idempotency_key: str, payload: dict[str, Any]) -> tuple[WorkflowRun, bool]:
    """Record a run once per idempotency key; a repeat returns the first run and records nothing.

    For a workflow with a definition the new run is started on the built-in engine in the same
    transaction (its first step is sent when that commits); a repeat starts nothing.
    """
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
                # A trigger's call says its priority: the engine's steps take the same queue.
                priority=payload.get("priority") if payload.get("priority") in RunPriority.values else "normal",
            )
            if workflow.definition:
                from .engine.runner import run_start

                run_start(run=run)
    except IntegrityError:
        # A concurrent request with the same key won the insert.
        return WorkflowRun.objects.get(workflow=workflow, idempotency_key=idempotency_key), False
    return run, True


def user_timezone(user: AbstractBaseUser) -> str:
    """The time zone ``user`` chose for the web pages ("UTC" until they choose one)."""
    zone = UserPreferences.objects.filter(user=user).values_list("timezone", flat=True).first()
    return zone or "UTC"


@transaction.atomic
def user_set_timezone(*, user: AbstractBaseUser, timezone_name: str) -> UserPreferences:
    """Set the zone the web pages show ``user`` times in; ValidationError on "timezone" if unknown."""
    preferences, _ = UserPreferences.objects.select_for_update().get_or_create(user=user)
    preferences.timezone = timezone_name
    preferences.full_clean(exclude=["user"])
    preferences.save()
    return preferences


# --- Runs of the built-in engine: pause, resume, cancel, retry -------------------------------------


def _run_control(action: str, run: WorkflowRun, actor: AbstractBaseUser | None, **options: Any) -> WorkflowRun:
    from .engine import runner

    change = getattr(runner, f"run_{action}")
    with transaction.atomic():
        done = change(run_id=run.pk, **options)
        audit_record(
            actor=actor,
            action={"pause": "paused", "resume": "resumed", "cancel": "cancelled", "retry": "retried"}[action],
            obj=done,
            owner=done.workflow.owner,
            changes={"status": done.status, **options},
        )
    return done


def run_pause(*, run: WorkflowRun, actor: AbstractBaseUser | None = None) -> WorkflowRun:
    """Pause a running or waiting run: no step is sent until it is resumed (RunStateError otherwise)."""
    return _run_control("pause", run, actor)


def run_resume(*, run: WorkflowRun, actor: AbstractBaseUser | None = None) -> WorkflowRun:
    """Resume a paused run where it stopped."""
    return _run_control("resume", run, actor)


def run_cancel(*, run: WorkflowRun, actor: AbstractBaseUser | None = None, reason: str = "") -> WorkflowRun:
    """Cancel an unfinished run; the Execution that started it, if any, fails with the reason."""
    return _run_control("cancel", run, actor, reason=reason[:500])


def run_retry(*, run: WorkflowRun, actor: AbstractBaseUser | None = None) -> WorkflowRun:
    """Run a failed run again from its failed step (a dag: its failed and skipped nodes)."""
    return _run_control("retry", run, actor)


# --- Start now or later (without a trigger) --------------------------------------------------------

# How far ahead a start may be set (a start further out is a trigger's job, with its preview and pause).
MAX_START_DELAY_SECONDS = 366 * 24 * 3600


def _start_at(*, delay_seconds: int | None, run_at: datetime | None, now: datetime) -> datetime:
    if delay_seconds is not None and run_at is not None:
        raise ValidationError({"run_at": ["give delay_seconds or run_at, not both."]})
    if run_at is not None:
        if timezone.is_naive(run_at):
            raise ValidationError({"run_at": ["needs a time zone offset, e.g. 2027-01-04T09:00:00Z."]})
        if run_at > now + timedelta(seconds=MAX_START_DELAY_SECONDS):
            raise ValidationError({"run_at": ["at most a year ahead; for later or repeating starts, use a trigger."]})
        return max(run_at, now)
    delay = delay_seconds or 0
    if not 0 <= delay <= MAX_START_DELAY_SECONDS:
        raise ValidationError({"delay_seconds": [f"must be 0-{MAX_START_DELAY_SECONDS} (a year), not {delay}."]})
    return now + timedelta(seconds=delay)


def startable_check(workflow: Workflow) -> None:
    """Only an active workflow with a definition can be started (a ValidationError on ``workflow``)."""
    if not workflow.definition or workflow.endpoint_url:
        raise ValidationError(
            {"workflow": ["has no definition: only the built-in engine's workflows can be started here."]}
        )
    if not workflow.is_active:
        raise ValidationError({"workflow": ["is not active."]})


def workflow_start(
    *,
    workflow: Workflow,
    inputs: dict[str, Any] | None = None,
    delay_seconds: int | None = None,
    run_at: datetime | None = None,
    priority: str = "normal",
    idempotency_key: str = "",
    actor: AbstractBaseUser | None = None,
    now: datetime | None = None,
) -> tuple[WorkflowRun, bool]:
    """Start a run of a workflow with a definition now (delay 0) or later (delay_seconds or run_at),
    without a trigger; until it begins it can be moved (run_move) or cancelled (run_cancel).
    Returns the run and whether it was created (False: the same idempotency_key was used before)."""
    from .engine import runner

    now = now or timezone.now()
    startable_check(workflow)
    if priority not in RunPriority.values:
        raise ValidationError({"priority": [f"must be one of {', '.join(RunPriority.values)}, not {priority!r}."]})
    inputs = {} if inputs is None else inputs
    if not isinstance(inputs, dict):
        raise ValidationError({"inputs": ["must be a JSON object."]})
    start_at = _start_at(delay_seconds=delay_seconds, run_at=run_at, now=now)
    run, created = runner.run_schedule(
        workflow=workflow,
        start_at=start_at,
        inputs=json.loads(json.dumps(inputs)),
        priority=priority,
        idempotency_key=idempotency_key,
        now=now,
    )
    if created:
        audit_record(
            actor=actor,
            action="started",
            obj=workflow,
            changes={"run_id": str(run.pk), "start_at": start_at.isoformat(), "priority": priority},
        )
    return run, created


def run_move(
    *,
    run: WorkflowRun,
    delay_seconds: int | None = None,
    run_at: datetime | None = None,
    actor: AbstractBaseUser | None = None,
    now: datetime | None = None,
) -> WorkflowRun:
    """Move a queued run's start (RunStateError once it has begun)."""
    from .engine import runner

    now = now or timezone.now()
    start_at = _start_at(delay_seconds=delay_seconds, run_at=run_at, now=now)
    with transaction.atomic():
        moved = runner.run_move(run_id=run.pk, start_at=start_at, now=now)
        audit_record(
            actor=actor,
            action="moved",
            obj=moved,
            owner=moved.workflow.owner,
            changes={"start_at": start_at.isoformat()},
        )
    return moved
