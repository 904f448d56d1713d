"""Workflows (what to call) and the runs the built-in execution endpoint records."""

from __future__ import annotations

import base64
import secrets
import uuid
from datetime import datetime

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator, URLValidator
from django.db import models
from django.urls import reverse
from django.utils import timezone
from rest_framework.authtoken.models import TokenProxy

from .fields import EncryptedTextField
from .validators import SECRET_PREFIX, validate_headers, validate_json_object, validate_secret, validate_timezone_name


def generate_secret() -> str:
    """A new Standard Webhooks signing secret (``whsec_`` + base64 of 32 random bytes)."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


class HttpMethod(models.TextChoices):
    POST = "POST", "POST"
    PUT = "PUT", "PUT"
    PATCH = "PATCH", "PATCH"


class Workflow(models.Model):
    """An HTTP-started workflow: our built-in engine or an external one (n8n, LangGraph, ...)."""

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="workflows")
    name = models.CharField(max_length=200, help_text="For example: Daily sales report.")
    endpoint_url = models.CharField(
        max_length=2048,
        blank=True,
        validators=[URLValidator(schemes=["http", "https"])],
        help_text="Execution endpoint, e.g. https://n8n.example.com/webhook/abc. "
        "Blank: this service's own /api/workflows/<id>/runs/.",
    )
    http_method = models.CharField(max_length=8, choices=HttpMethod.choices, default=HttpMethod.POST)
    headers = models.JSONField(
        default=dict,
        blank=True,
        validators=[validate_headers],
        help_text='Extra request headers, e.g. {"X-Team": "growth"}.',
    )
    secret = EncryptedTextField(
        default=generate_secret,
        validators=[validate_secret],
        help_text="Standard Webhooks signing secret (whsec_...). Write-only; encrypted in the database.",
    )
    # Set by a rotation (services.workflow_rotate_secret): until previous_secret_expires_at, calls are
    # signed with both secrets and the built-in endpoint accepts either, so receivers can switch over.
    previous_secret = EncryptedTextField(
        blank=True,
        default="",
        editable=False,
        validators=[validate_secret],
        help_text="The secret before the last rotation, still valid until previous_secret_expires_at.",
    )
    previous_secret_expires_at = models.DateTimeField(
        null=True,
        blank=True,
        editable=False,
        help_text="End of the rotation overlap, e.g. 2026-01-02 09:00 UTC; blank: no previous secret.",
    )
    timeout_seconds = models.PositiveIntegerField(
        default=30,
        validators=[MinValueValidator(1), MaxValueValidator(300)],
        help_text="Deadline for one call, 1-300 seconds, e.g. 30.",
    )
    default_inputs = models.JSONField(
        default=dict,
        blank=True,
        validators=[validate_json_object],
        help_text='Inputs every run gets unless a trigger overrides them, e.g. {"region": "us"}.',
    )
    is_active = models.BooleanField(default=True, help_text="Inactive workflows are not called.")
    # The built-in engine's program (workflows/engine/definitions.py; README "Built-in workflow
    # engine"). Empty: the built-in endpoint only records runs, as before.
    definition = models.JSONField(
        default=dict,
        blank=True,
        help_text='What the built-in engine runs, e.g. {"type": "sequence", "steps": [{"id": "hello", '
        '"action": "log", "params": {"message": "hi"}}]}. Empty: runs are only recorded. Needs a blank endpoint_url.',
    )
    max_concurrency = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1)],
        help_text="Most executions running at once across all its triggers, e.g. 2. Blank: no limit.",
    )
    # The retry policy a new trigger gets unless it sets its own (Cloud Scheduler's defaults shape).
    max_attempts = models.PositiveSmallIntegerField(
        default=3,
        validators=[MinValueValidator(1), MaxValueValidator(20)],
        help_text="Default for new triggers, e.g. 3.",
    )
    min_backoff_seconds = models.PositiveIntegerField(
        default=5, validators=[MinValueValidator(1)], help_text="Default for new triggers, e.g. 5."
    )
    max_backoff_seconds = models.PositiveIntegerField(
        default=300, validators=[MinValueValidator(1)], help_text="Default for new triggers, e.g. 300."
    )
    max_doublings = models.PositiveSmallIntegerField(
        default=5, validators=[MaxValueValidator(30)], help_text="Default for new triggers, e.g. 5."
    )
    max_retry_duration_seconds = models.PositiveIntegerField(
        default=0, help_text="Default for new triggers: stop retrying after this long, 0 = no limit."
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name", "id"]
        constraints = [models.UniqueConstraint(fields=["owner", "name"], name="workflow_unique_name_per_owner")]

    def __str__(self) -> str:
        return self.name

    def valid_previous_secret(self, *, now: datetime | None = None) -> str | None:
        """The pre-rotation secret while its overlap lasts, else None (expiry is checked here, at use)."""
        if not self.previous_secret or self.previous_secret_expires_at is None:
            return None
        if self.previous_secret_expires_at <= (now or timezone.now()):
            return None
        return self.previous_secret

    def valid_secrets(self, *, now: datetime | None = None) -> list[str]:
        """The secrets a signature may be made with: the current one, then the previous one during an overlap."""
        previous = self.valid_previous_secret(now=now)
        return [self.secret] if previous is None else [self.secret, previous]

    @property
    def execution_url(self) -> str:
        """Where the worker sends runs: the endpoint, or this service's own run endpoint."""
        if self.endpoint_url:
            return self.endpoint_url
        return settings.SCHEDULER_PUBLIC_BASE_URL + reverse("workflow-runs", kwargs={"workflow_id": self.pk})


class RunStatus(models.TextChoices):
    RECORDED = "", "recorded"  # the workflow has no definition: nothing to run
    QUEUED = "queued", "queued"  # started for later (POST /api/workflows/<id>/start/): begins at wake_at
    RUNNING = "running", "running"
    WAITING = "waiting", "waiting"
    PAUSED = "paused", "paused"
    SUCCEEDED = "succeeded", "succeeded"
    FAILED = "failed", "failed"
    CANCELLED = "cancelled", "cancelled"


RUN_FINISHED_STATUSES = (RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED)
RUN_ACTIVE_STATUSES = (RunStatus.QUEUED, RunStatus.RUNNING, RunStatus.WAITING, RunStatus.PAUSED)


class RunPriority(models.TextChoices):
    """The broker queue a run's steps go to (the worker's queues: high, normal, low)."""

    HIGH = "high", "high"
    NORMAL = "normal", "normal"
    LOW = "low", "low"


class WorkflowRun(models.Model):
    """A run accepted by the built-in execution endpoint (one per idempotency key), and, for a
    workflow with a definition, the built-in engine's progress through it (workflows/engine/runner.py)."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False, help_text="The run id.")
    workflow = models.ForeignKey(Workflow, on_delete=models.CASCADE, related_name="runs")
    idempotency_key = models.CharField(max_length=255, help_text="The caller's Idempotency-Key header.")
    inputs = models.JSONField(default=dict, blank=True)
    payload = models.JSONField(default=dict, blank=True, help_text="The whole request body as received.")
    received_at = models.DateTimeField(auto_now_add=True)
    # --- The engine's state, saved after every step -------------------------------------------
    status = models.CharField(
        max_length=16,
        choices=RunStatus.choices,
        default=RunStatus.RECORDED,
        blank=True,
        help_text="queued, running, waiting, paused, succeeded, failed or cancelled; blank: recorded only.",
    )
    priority = models.CharField(
        max_length=8,
        choices=RunPriority.choices,
        default=RunPriority.NORMAL,
        help_text="The queue its steps go to: high, normal or low.",
    )
    definition = models.JSONField(
        default=dict, blank=True, help_text="The workflow's definition when the run started (later edits don't apply)."
    )
    context = models.JSONField(
        default=dict, blank=True, help_text='What steps produced, e.g. {"steps": {"fetch": {"output": {...}}}}.'
    )
    current_step = models.CharField(max_length=64, blank=True, help_text="The step (or state) id, e.g. fetch.")
    step_seq = models.PositiveIntegerField(
        default=0, help_text="How many steps the run has entered; with the run id it names the step's Idempotency-Key."
    )
    attempt = models.PositiveIntegerField(default=0, help_text="Attempts of the current step so far, e.g. 1.")
    transitions = models.PositiveIntegerField(default=0, help_text="State machine transitions taken so far.")
    step_started_at = models.DateTimeField(
        null=True, blank=True, help_text="Set while a worker performs the current step; empty: ready to run."
    )
    lease_expires_at = models.DateTimeField(
        null=True,
        blank=True,
        help_text="Past this, the worker holding the step (or the message sent for it) is presumed lost "
        "and the recovery task sends the run again.",
    )
    wake_at = models.DateTimeField(
        null=True, blank=True, help_text="A wait or a retry: the current step runs again at this time, e.g. 09:00 UTC."
    )
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    error = models.TextField(blank=True, help_text="Why the run failed, e.g. step fetch: HTTP 500.")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-received_at"]
        constraints = [
            models.UniqueConstraint(fields=["workflow", "idempotency_key"], name="run_unique_idempotency_key")
        ]
        indexes = [
            # The recovery task's look: unfinished runs whose lease or wait ran out.
            models.Index(
                fields=["lease_expires_at"],
                name="run_lease",
                condition=models.Q(status="running"),
            ),
            models.Index(fields=["wake_at"], name="run_wake", condition=models.Q(status__in=["waiting", "queued"])),
        ]

    def __str__(self) -> str:
        return f"run {self.id}"

    @property
    def finished(self) -> bool:
        return self.status in RUN_FINISHED_STATUSES


class StepStatus(models.TextChoices):
    RUNNING = "running", "running"
    WAITING = "waiting", "waiting"
    SUCCEEDED = "succeeded", "succeeded"
    FAILED = "failed", "failed"


class WorkflowStep(models.Model):
    """One attempt of one step of a run: the run's history, written as the engine goes."""

    run = models.ForeignKey(WorkflowRun, on_delete=models.CASCADE, related_name="steps")
    seq = models.PositiveIntegerField(help_text="The step's place in the run's path, 1 for the first.")
    step_id = models.CharField(max_length=64, help_text="The step (or state) id, e.g. fetch.")
    action = models.CharField(max_length=32, blank=True, help_text="http, wait, set...; blank: a terminal state.")
    attempt = models.PositiveIntegerField(default=1)
    status = models.CharField(max_length=16, choices=StepStatus.choices, default=StepStatus.RUNNING)
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)
    input = models.JSONField(default=dict, blank=True, help_text="The step's params with variables filled in.")
    output_excerpt = models.TextField(blank=True, help_text="The start of the step's output as JSON.")
    error = models.TextField(blank=True)

    class Meta:
        ordering = ["run", "seq", "attempt"]
        indexes = [models.Index(fields=["run", "seq", "attempt"], name="step_run_seq")]

    def __str__(self) -> str:
        return f"{self.step_id} #{self.seq}.{self.attempt}"


# A step's history as the admin and the API show it, in this order.
STEP_HISTORY_FIELDS = (
    "seq",
    "step_id",
    "action",
    "attempt",
    "status",
    "started_at",
    "finished_at",
    "input",
    "output_excerpt",
    "error",
)


class AuditEvent(models.Model):
    """Who created, changed, paused, resumed, ran or deleted a workflow or trigger, and when."""

    at = models.DateTimeField(default=timezone.now, db_index=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="Who did it; empty for the scheduler itself (e.g. an automatic pause).",
    )
    # The owner of the object acted on, so users can list the events of their own objects.
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.CASCADE, related_name="+")
    action = models.CharField(max_length=32, help_text="created, updated, paused, resumed, ran, deleted, ...")
    source = models.CharField(max_length=16, default="scheduler", help_text="admin, api, web, command or scheduler.")
    object_type = models.CharField(max_length=32, help_text="workflow, trigger or execution")
    object_id = models.CharField(max_length=64)
    object_repr = models.CharField(max_length=200)
    changes = models.JSONField(default=dict, blank=True, help_text="Changed fields as [old, new]; secrets never.")

    class Meta:
        ordering = ["-at", "-id"]
        indexes = [models.Index(fields=["object_type", "object_id", "-at"], name="audit_object")]

    def __str__(self) -> str:
        return f"{self.at:%Y-%m-%d %H:%M:%S} {self.action} {self.object_type} {self.object_repr}"


# How much of an API token the admin shows: enough to tell tokens apart, never enough to use one.
TOKEN_SHOWN_CHARS = 4


def mask_token(key: str) -> str:
    """``3f9a…`` for a 40-character key: the first characters only."""
    return f"{key[:TOKEN_SHOWN_CHARS]}…" if key else ""


class ApiToken(TokenProxy):
    """DRF's token as the admin shows it: its key masked wherever the admin names the object (lists,
    titles, delete pages, messages, the admin log). The full key is shown once, when it is made."""

    class Meta:
        proxy = True
        verbose_name = "API token"
        verbose_name_plural = "API tokens"

    def __str__(self) -> str:
        return f"{self.user} ({mask_token(self.key)})"


class UserPreferences(models.Model):
    """What a user chose for the web UI: the time zone its pages show times in."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="preferences")
    timezone = models.CharField(
        max_length=64,
        default="UTC",
        validators=[validate_timezone_name],
        help_text="IANA time zone the web pages show times in, e.g. 'Europe/Paris'.",
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "user preferences"

    def __str__(self) -> str:
        return f"preferences of {self.user_id}"
