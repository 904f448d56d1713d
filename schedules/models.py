"""Triggers (when a workflow runs) and executions (what happened for each slot)."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator, URLValidator
from django.db import models
from django.db.models import F, Q
from django.utils import timezone

from scheduler_project.model_loading import from_db
from workflows.models import Workflow
from workflows.validators import validate_json_object

from . import timing
from .validators import (
    MAX_INTERVAL_SECONDS,
    validate_cron,
    validate_email_list,
    validate_execution_window,
    validate_schedulable_time,
    validate_timezone,
)


class TriggerKind(models.TextChoices):
    CRON = timing.CRON, "Cron"
    ONCE = timing.ONCE, "Once"
    INTERVAL = timing.INTERVAL, "Interval"


class CatchupPolicy(models.TextChoices):
    SKIP = "skip", "Skip missed slots"
    LATEST = "latest", "Run the latest missed slot"
    ALL = "all", "Run every missed slot in the catch-up window"


class OverlapPolicy(models.TextChoices):
    SKIP = "skip", "Skip while the previous run is unfinished"
    BUFFER_ONE = "buffer_one", "Run right after the previous one (at most one waiting)"
    ALLOW = "allow", "Run alongside"


class Priority(models.TextChoices):
    HIGH = "high", "High"
    NORMAL = "normal", "Normal"
    LOW = "low", "Low"


class DstPolicy(models.TextChoices):
    VIXIE = timing.DST_VIXIE, "Vixie cron: a skipped time runs after the gap, a repeated time once"
    SKIP_MISSING = timing.DST_SKIP_MISSING, "Skip local times that do not exist"
    REPEAT_TWICE = timing.DST_REPEAT_TWICE, "Run repeated local times twice"


class TriggerStatus(models.TextChoices):
    ACTIVE = "active", "Active"
    PAUSED = "paused", "Paused"
    COMPLETED = "completed", "Completed"


class Trigger(models.Model):
    """When a workflow runs: a cron schedule in a time zone, a single time, or an interval."""

    # Beat rewrites a due trigger's row (next_run_at, which is indexed) at every slot, and each of
    # the table's indexes gets a new entry then: the owner is served by trigger_unique_name_per_owner
    # (it starts with it), and the rarely set keys below only by partial indexes (Meta.indexes).
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="triggers", db_index=False
    )
    # PROTECT: a workflow's triggers are removed through trigger_delete, which also removes
    # their periodic tasks; a cascade would leave beat firing for triggers that are gone.
    workflow = models.ForeignKey(Workflow, on_delete=models.PROTECT, related_name="triggers")
    name = models.CharField(max_length=200, help_text="For example: Weekday morning report.")
    kind = models.CharField(max_length=16, choices=TriggerKind.choices, default=TriggerKind.CRON)
    cron = models.CharField(
        max_length=200,
        blank=True,
        validators=[validate_cron],
        help_text="For kind cron: 5 fields or @hourly/@daily/..., e.g. '0 9 * * MON-FRI'.",
    )
    timezone = models.CharField(
        max_length=64,
        default="UTC",
        validators=[validate_timezone],
        help_text="IANA time zone the cron expression is read in, e.g. 'America/Los_Angeles'.",
    )
    run_at = models.DateTimeField(
        null=True,
        blank=True,
        validators=[validate_schedulable_time],
        help_text="For kind once: when to run, e.g. 2026-12-01T09:00Z.",
    )
    interval_seconds = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MaxValueValidator(MAX_INTERVAL_SECONDS)],
        help_text="For kind interval: seconds between runs, aligned to the Unix epoch, e.g. 900.",
    )
    inputs = models.JSONField(
        default=dict,
        blank=True,
        validators=[validate_json_object],
        help_text='Merged over the workflow\'s default inputs, e.g. {"report": "weekly"}.',
    )
    enabled = models.BooleanField(default=True, help_text="Paused triggers do not fire.")
    pause_reason = models.CharField(max_length=500, blank=True)
    paused_at = models.DateTimeField(null=True, blank=True)
    paused_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        editable=False,
        db_index=False,
    )
    dst_policy = models.CharField(
        max_length=16,
        choices=DstPolicy.choices,
        default=DstPolicy.VIXIE,
        help_text="What a cron trigger does with local times a DST change skips or repeats.",
    )
    anchor_at = models.DateTimeField(
        null=True,
        blank=True,
        validators=[validate_schedulable_time],
        help_text="For kind interval: slots are anchor + k * interval. Blank: the Unix epoch.",
    )
    start_at = models.DateTimeField(
        null=True,
        blank=True,
        validators=[validate_schedulable_time],
        help_text="No slot before this time, e.g. 2026-12-01T00:00Z.",
    )
    end_at = models.DateTimeField(
        null=True,
        blank=True,
        validators=[validate_schedulable_time],
        help_text="No slot after this time; then the trigger completes.",
    )
    max_runs = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1)],
        help_text="Complete after this many scheduled runs (manual runs and skipped slots do not count).",
    )
    run_count = models.PositiveIntegerField(default=0, editable=False, help_text="Scheduled runs so far.")
    completed_at = models.DateTimeField(null=True, blank=True, editable=False)
    jitter_seconds = models.PositiveIntegerField(
        default=0,
        validators=[MaxValueValidator(3600)],
        help_text="Delay each slot by a random 0..N seconds (the slot keeps its time), e.g. 30.",
    )
    execution_window = models.JSONField(
        default=dict,
        blank=True,
        validators=[validate_execution_window],
        help_text="Days (0=Sunday) and local time ranges slots may run in, e.g. "
        '{"days": [1, 2, 3, 4, 5], "ranges": [["09:00", "17:00"]]}. Empty: always.',
    )
    catchup = models.CharField(
        max_length=16,
        choices=CatchupPolicy.choices,
        default=CatchupPolicy.LATEST,
        help_text="What to do with slots missed while beat or workers were down.",
    )
    catchup_window_seconds = models.PositiveIntegerField(
        default=3600,
        validators=[MaxValueValidator(MAX_INTERVAL_SECONDS)],
        help_text="With catch-up 'all': how far back missed slots are run, e.g. 3600.",
    )
    overlap = models.CharField(
        max_length=16,
        choices=OverlapPolicy.choices,
        default=OverlapPolicy.SKIP,
        help_text="What a slot does while the trigger's previous execution is unfinished.",
    )
    priority = models.CharField(
        max_length=8, choices=Priority.choices, default=Priority.NORMAL, help_text="Queue its executions run on."
    )
    pause_after_failures = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1)],
        help_text="Pause after this many failed executions in a row, e.g. 5. Blank: never.",
    )
    consecutive_failures = models.PositiveIntegerField(default=0, editable=False)
    notify_emails = models.CharField(
        max_length=1000,
        blank=True,
        validators=[validate_email_list],
        help_text="Comma-separated addresses told of final failures, auto-pause and recovery.",
    )
    notify_webhook_url = models.CharField(
        max_length=2048,
        blank=True,
        validators=[URLValidator(schemes=["http", "https"])],
        help_text="Optional URL that gets a signed JSON POST for the same events.",
    )
    fallback_workflow = models.ForeignKey(
        Workflow,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="fallback_for",
        help_text="Run this workflow (same inputs) when an execution finally fails.",
        db_index=False,
    )
    keep_succeeded = models.PositiveIntegerField(
        null=True, blank=True, help_text="Keep the last N succeeded executions. Blank: the setting's default."
    )
    keep_failed = models.PositiveIntegerField(
        null=True, blank=True, help_text="Keep the last N failed executions. Blank: the setting's default."
    )
    retention_days = models.PositiveIntegerField(
        null=True, blank=True, validators=[MinValueValidator(1)], help_text="Drop executions older than this."
    )
    max_attempts = models.PositiveSmallIntegerField(
        default=3,
        validators=[MinValueValidator(1), MaxValueValidator(20)],
        help_text="Calls per slot before it is failed, 1-20, e.g. 3.",
    )
    min_backoff_seconds = models.PositiveIntegerField(
        default=5,
        validators=[MinValueValidator(1)],
        help_text="Wait before the first retry, e.g. 5; each retry waits up to twice as long.",
    )
    max_backoff_seconds = models.PositiveIntegerField(
        default=300,
        validators=[MinValueValidator(1)],
        help_text="Longest wait between retries, e.g. 300.",
    )
    max_doublings = models.PositiveSmallIntegerField(
        default=5,
        validators=[MaxValueValidator(30)],
        help_text="Waits double this many times, then grow linearly (as Cloud Scheduler), e.g. 5.",
    )
    max_retry_duration_seconds = models.PositiveIntegerField(
        default=0, help_text="Stop retrying once the first attempt is this long ago; 0 = no limit."
    )
    next_run_at = models.DateTimeField(null=True, blank=True, editable=False, db_index=True)
    # Set when the trigger is created, resumed or its schedule changes: only slots after it run,
    # so a message sent before a pause or an edit and delivered after it calls nothing.
    active_since = models.DateTimeField(null=True, blank=True, editable=False)
    last_run_at = models.DateTimeField(null=True, blank=True, editable=False)
    # Kept in sync by schedules.beat, never edited by hand.
    periodic_task = models.OneToOneField(
        "django_celery_beat.PeriodicTask",
        null=True,
        blank=True,
        editable=False,
        on_delete=models.SET_NULL,
        related_name="trigger",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name", "id"]
        indexes = [
            # The due index beat dispatches from: only triggers that can fire are in it, so finding
            # what is due costs O(due), however many paused or completed triggers there are.
            # With the id: a burst reads it in batches from where the last batch ended
            # (dispatch.dispatch_due), not from its start past the entries of triggers it has
            # just moved on, which stay until no transaction can see them.
            models.Index(
                fields=["next_run_at", "id"],
                condition=Q(enabled=True, completed_at__isnull=True, next_run_at__isnull=False),
                name="trigger_due_next",
            ),
            # The default order of every trigger list (a staff user's: all of them), read off the
            # index instead of sorted; one owner's come off trigger_unique_name_per_owner.
            models.Index(fields=["name", "id"], name="trigger_name_id"),
            # The time zones in use (the admin's filter), one probe per zone (selectors.trigger_timezones).
            models.Index(fields=["timezone", "owner"], name="trigger_timezone_owner"),
            # Mostly empty keys (for SET_NULL when a user or workflow goes): indexed where set only,
            # so a trigger beat advances writes no entry in them.
            models.Index(fields=["paused_by"], condition=Q(paused_by__isnull=False), name="trigger_paused_by"),
            models.Index(
                fields=["fallback_workflow"],
                condition=Q(fallback_workflow__isnull=False),
                name="trigger_fallback_workflow",
            ),
        ]
        constraints = [
            models.UniqueConstraint(fields=["owner", "name"], name="trigger_unique_name_per_owner"),
            models.CheckConstraint(
                condition=Q(min_backoff_seconds__lte=F("max_backoff_seconds")),
                name="trigger_backoff_min_le_max",
            ),
        ]

    def __str__(self) -> str:
        return self.name

    @classmethod
    def from_db(cls, db: str, field_names: Any, values: Any) -> Any:
        return from_db(cls, db, field_names, values)  # Django's result without Model.__init__

    @property
    def cadence(self) -> timing.Cadence:
        """The schedule as the timing functions read it (cron in numeric form)."""
        cron = timing.normalize_cron(self.cron) if self.kind == TriggerKind.CRON and self.cron else ""
        return timing.Cadence(
            kind=self.kind,
            cron=cron,
            timezone=self.timezone,
            run_at=self.run_at,
            interval_seconds=self.interval_seconds,
            dst_policy=self.dst_policy,
            anchor_at=self.anchor_at,
            start_at=self.start_at,
            end_at=self.end_at,
        )

    @property
    def status(self) -> str:
        """active, paused or completed (a once trigger that ran, or one past its end or max_runs)."""
        if self.completed_at is not None:
            return TriggerStatus.COMPLETED
        return TriggerStatus.ACTIVE if self.enabled else TriggerStatus.PAUSED

    @property
    def runs_remaining(self) -> int | None:
        return None if self.max_runs is None else max(0, self.max_runs - self.run_count)

    @property
    def description(self) -> str:
        try:
            return timing.describe(self.cadence)
        except Exception:  # noqa: BLE001 - a description must never break a page
            return "(invalid schedule)"

    def clean(self) -> None:
        errors: dict[str, list[str]] = {}
        if self.kind == TriggerKind.CRON and not self.cron:
            errors.setdefault("cron", []).append("is required for a cron trigger, e.g. '0 9 * * MON-FRI'.")
        if self.kind == TriggerKind.ONCE and self.run_at is None:
            errors.setdefault("run_at", []).append("is required for a once trigger.")
        if self.kind == TriggerKind.INTERVAL:
            minimum = settings.SCHEDULER_MIN_INTERVAL_SECONDS
            if self.interval_seconds is None:
                errors.setdefault("interval_seconds", []).append("is required for an interval trigger.")
            elif self.interval_seconds < minimum:
                errors.setdefault("interval_seconds", []).append(f"must be at least {minimum} seconds.")
        if self.kind != TriggerKind.CRON and self.cron:
            errors.setdefault("cron", []).append(f"only applies to cron triggers; clear it for a {self.kind} trigger.")
        if self.kind != TriggerKind.ONCE and self.run_at is not None:
            errors.setdefault("run_at", []).append(
                f"only applies to once triggers; clear it for a {self.kind} trigger."
            )
        if self.kind != TriggerKind.INTERVAL and self.interval_seconds is not None:
            errors.setdefault("interval_seconds", []).append(
                f"only applies to interval triggers; clear it for a {self.kind} trigger."
            )
        cap = settings.SCHEDULER_MAX_BACKOFF_CAP_SECONDS
        if self.max_backoff_seconds and self.max_backoff_seconds > cap:
            errors.setdefault("max_backoff_seconds", []).append(f"must be at most {cap} seconds.")
        if (
            self.min_backoff_seconds
            and self.max_backoff_seconds
            and self.min_backoff_seconds > self.max_backoff_seconds
        ):
            errors.setdefault("min_backoff_seconds", []).append("must not exceed max_backoff_seconds.")
        if self.workflow_id and self.owner_id and self.workflow.owner_id != self.owner_id:
            errors.setdefault("workflow", []).append("must be one of the trigger owner's workflows.")
        if self.start_at and self.end_at and self.start_at >= self.end_at:
            errors.setdefault("end_at", []).append("must be after start_at.")
        if self.kind != TriggerKind.INTERVAL and self.anchor_at is not None:
            errors.setdefault("anchor_at", []).append("only applies to interval triggers.")
        if self.kind == TriggerKind.INTERVAL and self.interval_seconds and self.jitter_seconds >= self.interval_seconds:
            errors.setdefault("jitter_seconds", []).append("must be shorter than the interval.")
        if self.catchup == CatchupPolicy.ALL and not self.catchup_window_seconds:
            errors.setdefault("catchup_window_seconds", []).append("must be at least 1 with catch-up 'all'.")
        if self.fallback_workflow_id:
            if self.fallback_workflow_id == self.workflow_id:
                errors.setdefault("fallback_workflow", []).append("must be another workflow than the trigger's own.")
            elif self.owner_id and self.fallback_workflow.owner_id != self.owner_id:
                errors.setdefault("fallback_workflow", []).append("must be one of the trigger owner's workflows.")
        if errors:
            raise ValidationError(errors)


class SkipReason(models.TextChoices):
    MISSED = "missed", "Missed while beat or workers were down"
    OVERLAP = "overlap", "Previous execution still unfinished"
    OUTSIDE_WINDOW = "outside_window", "Outside the execution window"
    WORKFLOW_INACTIVE = "workflow_inactive", "Workflow inactive"


class ExecutionOrigin(models.TextChoices):
    SCHEDULE = "schedule", "Schedule"
    CATCHUP = "catchup", "Catch-up"
    MANUAL = "manual", "Run now"
    BACKFILL = "backfill", "Backfill"
    RETRY = "retry", "Retry of a failed execution"
    FALLBACK = "fallback", "Fallback workflow"


class ExecutionStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    RETRYING = "retrying", "Retrying"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    SKIPPED = "skipped", "Skipped"


FINISHED_STATUSES = (ExecutionStatus.SUCCEEDED, ExecutionStatus.FAILED, ExecutionStatus.SKIPPED)
UNFINISHED_STATUSES = (ExecutionStatus.QUEUED, ExecutionStatus.RUNNING, ExecutionStatus.RETRYING)


class Handoff(models.Model):
    """One batch of first attempts that beat wrote and then handed to the broker together.

    ``sent_at`` is set once the broker has taken all of them: one row written per batch of a
    burst, instead of an UPDATE of each of its executions (every index of the execution table
    written again for each). The executions name it (``Execution.handoff``) and keep ``sent_at``
    empty; recovery reads it for those whose hand-off lease runs out unclaimed
    (``dispatch.handoffs_settle``). Rows older than any such lease are deleted.
    """

    created_at = models.DateTimeField()
    sent_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"hand-off {self.pk} of {self.created_at:%Y-%m-%d %H:%M:%S} UTC"


class Execution(models.Model):
    """One slot of a trigger (or one manual run) and how calling the workflow went."""

    # Sent as the Idempotency-Key and webhook-id of every call for this slot.
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    # No single-column indexes on the foreign keys: every query (and the cascades) by trigger or
    # workflow is served by a composite index that starts with it (Meta.indexes), and each index
    # costs every insert, which beat makes by the thousand in a burst.
    trigger = models.ForeignKey(Trigger, on_delete=models.CASCADE, related_name="executions", db_index=False)
    workflow = models.ForeignKey(Workflow, on_delete=models.CASCADE, related_name="executions", db_index=False)
    scheduled_for = models.DateTimeField(help_text="The slot this execution is for (manual runs: when asked).")
    manual = models.BooleanField(default=False, help_text="Started by a person (run now, backfill, retry).")
    origin = models.CharField(max_length=16, choices=ExecutionOrigin.choices, default=ExecutionOrigin.SCHEDULE)
    skip_reason = models.CharField(max_length=32, choices=SkipReason.choices, blank=True)
    # Why a queued execution waits (concurrency limit, behind the trigger's previous one, jitter).
    wait_reason = models.CharField(max_length=32, blank=True)
    # When it may start: the slot plus jitter, or when a held retry falls due.
    due_at = models.DateTimeField(null=True, blank=True)
    jitter_seconds = models.FloatField(null=True, blank=True, help_text="Random delay applied to this slot.")
    # Mostly empty: indexed only where set (partial indexes in Meta), so most inserts skip them.
    retry_of = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="retries",
        editable=False,
        db_index=False,
    )
    fallback_of = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="fallbacks",
        editable=False,
        db_index=False,
    )
    inputs = models.JSONField(default=dict, blank=True, help_text="What was sent: workflow defaults + trigger inputs.")
    status = models.CharField(max_length=16, choices=ExecutionStatus.choices, default=ExecutionStatus.QUEUED)
    attempts = models.PositiveSmallIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    # Whoever works on the execution holds it until then; past it, recovery takes it over.
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    # When the message for its next attempt was handed to the broker; empty while it is held in the
    # database (a wait, or a publish that never happened). Recovery sends unsent ones when their
    # lease runs out, and holds back re-sending sent ones while the broker still has a backlog.
    sent_at = models.DateTimeField(null=True, blank=True, editable=False)
    # The batch beat published this execution's first attempt in: while that is not known to be
    # sent, it counts as unsent; once it is, as sent at the batch's sent_at (see Handoff). No
    # constraint or index: beat writes it by the thousand, and only recovery reads it (by join).
    handoff = models.ForeignKey(
        Handoff,
        null=True,
        blank=True,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        db_index=False,
        related_name="+",
        editable=False,
    )
    http_status = models.PositiveSmallIntegerField(null=True, blank=True)
    error = models.TextField(blank=True)
    run_id = models.CharField(max_length=255, blank=True, help_text="The run id the endpoint answered with.")
    duration_ms = models.PositiveIntegerField(null=True, blank=True, help_text="Duration of the last call.")
    metadata = models.JSONField(default=dict, blank=True, help_text="Attempt log and other details.")
    # Finished executions are added to ExecutionStats in batches (services.stats_fold), not one by
    # one on the worker's path; until then readers add them in themselves.
    counted = models.BooleanField(default=False, editable=False)

    class Meta:
        ordering = ["-scheduled_for"]
        constraints = [
            # At most one execution per slot: a second delivery of the same slot calls nothing.
            # (A fallback run shares the failed slot's time, so it is left out.)
            models.UniqueConstraint(
                fields=["trigger", "scheduled_for"],
                condition=Q(fallback_of__isnull=True),
                name="execution_unique_slot",
            ),
        ]
        indexes = [
            # Recovery's look for stale leases, and the unfinished counts: the unfinished rows only, a
            # small set however long the history, which finishing an execution leaves (no entry).
            models.Index(
                fields=["status", "lease_expires_at"],
                condition=Q(status__in=["queued", "running", "retrying"]),
                name="execution_unfinished_lease",
            ),
            models.Index(fields=["trigger", "-scheduled_for"], name="execution_trigger_slot"),
            models.Index(fields=["workflow", "status"], name="execution_workflow_status"),
            # Retention keeps the newest N per (trigger, status): a range scan on this index.
            models.Index(fields=["trigger", "status", "scheduled_for"], name="execution_trigger_status_slot"),
            models.Index(fields=["retry_of"], condition=Q(retry_of__isnull=False), name="execution_retry_of"),
            models.Index(fields=["fallback_of"], condition=Q(fallback_of__isnull=False), name="execution_fallback_of"),
            # The finished executions not yet folded into ExecutionStats: a small, moving set.
            models.Index(
                fields=["trigger"],
                condition=Q(counted=False, status__in=["succeeded", "failed", "skipped"]),
                name="execution_uncounted",
            ),
            # The lists' order (newest slot first, the id breaking ties between the executions of one
            # slot), read off an index so a page reads its 50 rows instead of sorting millions; one
            # per common filter, each ending in that order. A filter on the trigger uses
            # execution_trigger_slot. Partial where one value is most rows (succeeded, schedule):
            # filtering on it reads execution_slot, which is then mostly matches.
            models.Index(fields=["-scheduled_for", "-id"], name="execution_slot"),
            models.Index(fields=["workflow", "-scheduled_for", "-id"], name="execution_workflow_slot"),
            models.Index(
                fields=["status", "-scheduled_for", "-id"],
                condition=~Q(status="succeeded"),
                name="execution_status_slot",
            ),
            models.Index(
                fields=["origin", "-scheduled_for", "-id"],
                condition=~Q(origin="schedule"),
                name="execution_origin_slot",
            ),
        ]

    def __str__(self) -> str:
        # The admin's one time format (titles, breadcrumbs, messages): 2026-12-07 09:00:00 UTC.
        return f"trigger {self.trigger_id} @ {self.scheduled_for:%Y-%m-%d %H:%M:%S} UTC ({self.status})"

    @classmethod
    def from_db(cls, db: str, field_names: Any, values: Any) -> Any:
        return from_db(cls, db, field_names, values)  # Django's result without Model.__init__


# Duration buckets (upper bounds in ms, inclusive) for ExecutionStats.duration_histogram: each is
# 1.2x the last, so a bucket spans +-10% around its middle from 10 ms to about 63 s; longer calls
# go in "inf". A p95 read from the histogram is therefore within about one bucket of the exact one.
DURATION_BUCKETS_MS: tuple[int, ...] = tuple(round(10 * 1.2**k) for k in range(49))
DURATION_OVERFLOW_BUCKET = "inf"


def duration_bucket(duration_ms: int) -> str:
    """The histogram key a duration is counted under: its bucket's upper bound, or "inf"."""
    for bound in DURATION_BUCKETS_MS:
        if duration_ms <= bound:
            return str(bound)
    return DURATION_OVERFLOW_BUCKET


def histogram_quantile(histogram: dict[str, int], quantile: float, *, max_ms: int | None = None) -> float | None:
    """Estimate a quantile from a duration histogram, interpolating inside the bucket it falls in.

    Reads whatever bounds the keys name, so histograms written with other buckets still work.
    ``max_ms`` (the longest duration seen) caps the estimate and closes the "inf" bucket.
    """
    counts = sorted(
        ((float(key), count) for key, count in histogram.items() if count > 0),
        key=lambda item: item[0],
    )
    total = sum(count for _, count in counts)
    if not total:
        return None
    rank = quantile * total
    lower, seen = 0.0, 0
    for upper, count in counts:
        if seen + count >= rank:
            if upper == float("inf"):
                upper = float(max_ms) if max_ms is not None and max_ms > lower else lower
            estimate = lower + (upper - lower) * (rank - seen) / count
            return min(estimate, float(max_ms)) if max_ms is not None else estimate
        lower, seen = upper, seen + count
    return lower


@dataclass
class StatsDelta:
    """Counts to add to one ExecutionStats row, with the same names (so a reader can add up saved
    rows and not yet folded executions alike)."""

    total: int = 0
    succeeded: int = 0
    failed: int = 0
    skipped: int = 0
    duration_count: int = 0
    duration_sum_ms: int = 0
    duration_max_ms: int = 0
    duration_histogram: dict[str, int] = field(default_factory=dict)

    def add(self, status: str, duration_ms: int | None) -> None:
        """Count one finished execution; durations only of calls that were made."""
        self.total += 1
        counter = {ExecutionStatus.SUCCEEDED: "succeeded", ExecutionStatus.FAILED: "failed"}.get(status, "skipped")
        setattr(self, counter, getattr(self, counter) + 1)
        if duration_ms is not None and status != ExecutionStatus.SKIPPED:
            self.duration_count += 1
            self.duration_sum_ms += duration_ms
            self.duration_max_ms = max(self.duration_max_ms, duration_ms)
            key = duration_bucket(duration_ms)
            self.duration_histogram[key] = self.duration_histogram.get(key, 0) + 1


def stats_deltas(rows: Iterable[tuple[int, int, str, str, int | None]]) -> dict[tuple[int, int], StatsDelta]:
    """Group finished executions, given as (trigger_id, workflow_id, status, origin, duration_ms),
    into one StatsDelta per (trigger, workflow). Fallback executions are left out: their slot
    already counted as failed, and counting the fallback too would make a trigger's total exceed
    its slots."""
    deltas: dict[tuple[int, int], StatsDelta] = {}
    for trigger_id, workflow_id, status, origin, duration_ms in rows:
        if origin == ExecutionOrigin.FALLBACK:
            continue
        deltas.setdefault((trigger_id, workflow_id), StatsDelta()).add(status, duration_ms)
    return deltas


class ExecutionStats(models.Model):
    """Running counts of a trigger's finished executions, per workflow it called; pruning never lowers them.

    One row per (trigger, workflow): a trigger that is moved to another workflow keeps counting
    in a new row, so per-workflow figures only include calls that workflow really got.
    Fallback executions are not counted (their slot already counted as failed).
    """

    trigger = models.ForeignKey(Trigger, on_delete=models.CASCADE, related_name="stats")
    workflow = models.ForeignKey(Workflow, on_delete=models.CASCADE, related_name="execution_stats")
    total = models.PositiveBigIntegerField(default=0, help_text="Finished executions, e.g. 120.")
    succeeded = models.PositiveBigIntegerField(default=0)
    failed = models.PositiveBigIntegerField(default=0)
    skipped = models.PositiveBigIntegerField(default=0)
    duration_count = models.PositiveBigIntegerField(default=0, help_text="Executions with a call duration.")
    duration_sum_ms = models.PositiveBigIntegerField(default=0)
    duration_max_ms = models.PositiveIntegerField(default=0)
    duration_histogram = models.JSONField(
        default=dict,
        blank=True,
        help_text='Counts by bucket upper bound in ms (see DURATION_BUCKETS_MS), e.g. {"10": 3, "12": 7, "inf": 1}.',
    )
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        verbose_name_plural = "execution stats"
        constraints = [
            models.UniqueConstraint(fields=["trigger", "workflow"], name="execution_stats_unique_trigger_workflow"),
        ]

    def __str__(self) -> str:
        return f"stats of trigger {self.trigger_id} / workflow {self.workflow_id}"


class BeatLease(models.Model):
    """Which beat process runs the ordinary periodic tasks (recovery, retention, users' own).

    Every beat dispatches triggers (their due rows are claimed with SKIP LOCKED, so each slot is
    dispatched once however many beats run), but a plain PeriodicTask has no such claim: only the
    beat holding this lease sends those, and when it dies another takes over once it expires.
    """

    name = models.CharField(max_length=64, primary_key=True)
    holder = models.CharField(max_length=255, help_text="host:pid of the beat holding it.")
    expires_at = models.DateTimeField()

    def __str__(self) -> str:
        return f"{self.name}: {self.holder} until {self.expires_at:%H:%M:%S}"
