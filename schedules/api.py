"""The schedules API: /api/triggers/, /api/executions/, stats, a trigger's audit trail and /api/health/.

Thin views: serializers check the shape of the input, schedules.services make every change and
schedules.selectors do the reads; errors become answers in scheduler_project.api.
"""

from __future__ import annotations

import functools
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from django.db.models import QuerySet
from django.shortcuts import get_object_or_404
from django.utils import timezone
from django_filters import rest_framework as filters
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_field
from rest_framework import generics, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from scheduler_project.api import (
    MAX_ID,
    IdFilter,
    ModelSerializer,
    StableOrderingFilter,
    StrictFieldsMixin,
    UtcIsoDateTimeFromToRangeFilter,
    WriteThrottleMixin,
    owned,
    refuse_nul,
)
from workflows import services as workflow_services
from workflows.api import ObjectAuditView, StartSerializer, WorkflowRunSerializer, runs_of, workflows_of
from workflows.models import Workflow

from . import selectors, services, timing
from .exceptions import ScheduleError
from .models import Execution, ExecutionStatus, SkipReason, Trigger, TriggerKind, TriggerStatus

PREVIEW_COUNT = 5
# Longest delay or interval taken (ten years): far longer ones only overflow the date arithmetic.
MAX_DURATION_SECONDS = 10 * 365 * 24 * 3600
MAX_PREVIEW_COUNT = 100
# Write-only inputs that are not Trigger fields: turned into cron / run_at before the services see them.
_PRESET_PARAMS = ("time", "day", "minute")
_RETRY_FIELDS = ("max_attempts", "min_backoff_seconds", "max_backoff_seconds", "max_doublings")
_RETRY_FIELDS += ("max_retry_duration_seconds",)


def triggers_of(user: Any) -> QuerySet[Trigger]:
    """The triggers ``user`` may see, with last_status and finished_executions (no query per row)."""
    return selectors.triggers_with_last_status(owned(Trigger.objects.all(), user)).select_related("paused_by")


def executions_of(user: Any) -> QuerySet[Execution]:
    """The executions of ``user``'s triggers (staff: everyone's): owned(..., "trigger__owner"), found fast."""
    if user.is_authenticated and not user.is_staff:
        return selectors.executions_owned_by(user)
    return owned(Execution.objects.all(), user, "trigger__owner")


# --- Serializers ------------------------------------------------------------------------------


@extend_schema_field(OpenApiTypes.DATETIME)
class LocalDateTimeField(serializers.Field):
    """A datetime shown with its own UTC offset (DRF would convert it to UTC)."""

    def to_representation(self, value: datetime) -> str:
        return value.isoformat()


class PreviewRunSerializer(serializers.Serializer):
    at = serializers.DateTimeField(default_timezone=UTC, help_text="The slot, in UTC.")
    local = LocalDateTimeField(help_text="The same instant in the trigger's time zone.")
    runs = serializers.BooleanField(help_text="False: the slot would not call the workflow (see reason).")
    reason = serializers.CharField(help_text="outside_window, paused, workflow_inactive or empty.")

    @classmethod
    def rows(cls, runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """``cls(runs, many=True).data``, with fields built once per process instead of per call: a
        trigger list calls this for every row, and building the serializer cost more than the preview."""
        fields = cls._shared_fields()
        return [
            {name: None if run[name] is None else field.to_representation(run[name]) for name, field in fields}
            for run in runs
        ]

    @classmethod
    @functools.cache
    def _shared_fields(cls) -> tuple[tuple[str, serializers.Field], ...]:
        return tuple((field.field_name, field) for field in cls()._readable_fields)


class OwnersWorkflowField(serializers.PrimaryKeyRelatedField):
    """A workflow id among the trigger owner's workflows; another user's is as unknown as a missing one."""

    default_error_messages = {"does_not_exist": "the trigger's owner has no workflow with id {pk_value}."}

    def to_internal_value(self, data: Any) -> Workflow:
        # A number past the id range would overflow the lookup; it is simply no workflow.
        if isinstance(data, int) and not isinstance(data, bool) and not 0 <= data <= MAX_ID:
            self.fail("does_not_exist", pk_value=data)
        return super().to_internal_value(data)

    def get_queryset(self) -> QuerySet[Workflow]:
        parent = self.parent
        instance = getattr(parent, "instance", None)
        owner = instance.owner if isinstance(instance, Trigger) else self.context["request"].user
        return Workflow.objects.filter(owner=owner).defer("secret", "previous_secret")


class TriggerSerializer(StrictFieldsMixin, ModelSerializer):
    owner = serializers.SlugRelatedField(slug_field="username", read_only=True)
    workflow = OwnersWorkflowField(help_text="One of your workflows, e.g. 3.")
    fallback_workflow = OwnersWorkflowField(
        required=False, allow_null=True, help_text="Another of your workflows, run when an execution finally fails."
    )
    paused_by = serializers.SlugRelatedField(
        slug_field="username",
        read_only=True,
        allow_null=True,
        help_text="Who paused it; null: not paused, or the scheduler.",
    )
    status = serializers.ChoiceField(
        choices=TriggerStatus.choices,
        read_only=True,
        help_text="completed: ran out of slots; paused: not enabled; active: enabled.",
    )
    description = serializers.CharField(read_only=True, help_text="The schedule in words.")
    next_runs = serializers.SerializerMethodField(help_text=f"The next {PREVIEW_COUNT} runs.")
    last_status = serializers.ChoiceField(
        choices=ExecutionStatus.choices, read_only=True, allow_null=True, help_text="Of the latest execution."
    )
    finished_executions = serializers.IntegerField(
        read_only=True,
        help_text="Finished executions so far (succeeded, failed or skipped; fallback runs not counted), from the "
        "running stats: the same as total in …/stats/, and pruning the history does not lower it.",
    )
    runs_remaining = serializers.IntegerField(read_only=True, allow_null=True, help_text="null: no max_runs.")
    delay_seconds = serializers.IntegerField(
        write_only=True,
        required=False,
        min_value=1,
        max_value=MAX_DURATION_SECONDS,
        help_text="For kind once, instead of run_at: run in N seconds.",
    )
    preset = serializers.ChoiceField(
        choices=timing.PRESETS,
        write_only=True,
        required=False,
        help_text="Instead of cron: hourly (with minute), daily or weekdays (with time), weekly (day, time) or "
        'monthly (day, time), e.g. "preset": "weekdays", "time": "09:00".',
    )
    time = serializers.CharField(write_only=True, required=False, help_text='With a preset: "HH:MM", e.g. "09:00".')
    day = serializers.CharField(
        write_only=True,
        required=False,
        help_text="With preset weekly: 0-6 (0 = Sunday) or MON..SUN; with monthly: 1-31.",
    )
    minute = serializers.IntegerField(
        write_only=True, required=False, min_value=0, max_value=59, help_text="With preset hourly: 0-59."
    )

    class Meta:
        model = Trigger
        fields = [
            "id",
            "owner",
            "workflow",
            "name",
            "status",
            "description",
            "next_run_at",
            "next_runs",
            "last_status",
            "finished_executions",
            "run_count",
            "runs_remaining",
            "kind",
            "cron",
            "preset",
            "time",
            "day",
            "minute",
            "timezone",
            "run_at",
            "delay_seconds",
            "interval_seconds",
            "anchor_at",
            "dst_policy",
            "start_at",
            "end_at",
            "max_runs",
            "inputs",
            "enabled",
            "pause_reason",
            "paused_by",
            "paused_at",
            "completed_at",
            "jitter_seconds",
            "execution_window",
            "catchup",
            "catchup_window_seconds",
            "overlap",
            "priority",
            "pause_after_failures",
            "consecutive_failures",
            "notify_emails",
            "notify_webhook_url",
            "fallback_workflow",
            "keep_succeeded",
            "keep_failed",
            "retention_days",
            *_RETRY_FIELDS,
            "last_run_at",
            "active_since",
            "created_at",
            "updated_at",
        ]
        read_only_fields = ["pause_reason", "paused_at", "created_at", "updated_at"]
        # Uniqueness of the name per owner is the service's check (full_clean), answered on "name".
        validators: list[Any] = []
        # Model defaults of the retry fields are not what a trigger gets: left out, it takes its workflow's.
        extra_kwargs = {name: {"required": False} for name in _RETRY_FIELDS} | {
            "interval_seconds": {"max_value": MAX_DURATION_SECONDS}
        }

    @extend_schema_field(PreviewRunSerializer(many=True))
    def get_next_runs(self, trigger: Trigger) -> list[dict[str, Any]]:
        try:
            runs = selectors.trigger_preview(trigger, count=PREVIEW_COUNT, now=self.context.get("now"))
        except ScheduleError:
            return []
        return PreviewRunSerializer.rows(runs)


class PreviewTriggerSerializer(TriggerSerializer):
    """The create body; name may be left out (nothing is saved)."""

    name = serializers.CharField(required=False, max_length=200)


class DescribeSerializer(serializers.Serializer):
    description = serializers.CharField(help_text="The schedule in words.")
    status = serializers.ChoiceField(choices=TriggerStatus.choices)
    state = serializers.CharField(help_text="Whether and when it runs next, in words.")
    rules = serializers.DictField(child=serializers.CharField(), help_text="Each rule in words, by field.")
    next_runs = PreviewRunSerializer(many=True)


class PauseSerializer(StrictFieldsMixin, serializers.Serializer):
    reason = serializers.CharField(
        required=False, allow_blank=True, max_length=500, default="", help_text="Why, e.g. 'vendor outage'."
    )


class RunNowSerializer(StrictFieldsMixin, serializers.Serializer):
    inputs = serializers.DictField(
        required=False,
        allow_null=True,
        validators=[refuse_nul],
        help_text='Merged over the trigger\'s inputs, e.g. {"report": "weekly"}.',
    )


class BackfillSerializer(StrictFieldsMixin, serializers.Serializer):
    start = serializers.DateTimeField(help_text="Run the slots from here ...")
    end = serializers.DateTimeField(help_text="... to here (in the past), both included.")
    overlap = serializers.ChoiceField(
        choices=services.BACKFILL_OVERLAP,
        default="buffer_all",
        help_text="buffer_all: one after another; allow: side by side; buffer_one / skip: as the policies.",
    )


class BackfillReportSerializer(serializers.Serializer):
    created = serializers.IntegerField(help_text="Executions queued.")
    existing = serializers.IntegerField(help_text="Slots that already had an execution.")
    skipped = serializers.IntegerField(help_text="Slots recorded as skipped (window, overlap).")
    execution_ids = serializers.ListField(child=serializers.UUIDField())


class ExecutionSerializer(ModelSerializer):
    # Declared: a read-only ModelSerializer field loses allow_blank, and the schema would leave "" out of the enum.
    skip_reason = serializers.ChoiceField(
        choices=SkipReason.choices, allow_blank=True, read_only=True, help_text="Why it was skipped; blank: it was not."
    )

    class Meta:
        model = Execution
        fields = [
            "id",
            "trigger",
            "workflow",
            "scheduled_for",
            "status",
            "origin",
            "manual",
            "skip_reason",
            "wait_reason",
            "due_at",
            "jitter_seconds",
            "retry_of",
            "fallback_of",
            "inputs",
            "attempts",
            "created_at",
            "started_at",
            "finished_at",
            "next_attempt_at",
            "http_status",
            "error",
            "run_id",
            "duration_ms",
            "metadata",
        ]
        read_only_fields = fields


class _StatsFigures(serializers.Serializer):
    total = serializers.IntegerField(help_text="Finished executions (counters survive pruning).")
    succeeded = serializers.IntegerField()
    failed = serializers.IntegerField()
    skipped = serializers.IntegerField()
    success_rate = serializers.FloatField(allow_null=True, help_text="succeeded / (succeeded + failed).")
    avg_duration_ms = serializers.FloatField(allow_null=True)
    p95_duration_ms = serializers.FloatField(allow_null=True)
    last_statuses = serializers.ListField(child=serializers.ChoiceField(choices=ExecutionStatus.choices))


class TriggerStatsSerializer(_StatsFigures):
    next_runs = serializers.ListField(child=serializers.DateTimeField())


class WorkflowNextRunSerializer(serializers.Serializer):
    at = serializers.DateTimeField()
    trigger_id = serializers.IntegerField()
    trigger = serializers.CharField(help_text="The trigger's name.")


class WorkflowStatsSerializer(_StatsFigures):
    next_runs = WorkflowNextRunSerializer(many=True)


class StatsLastSerializer(serializers.Serializer):
    last = serializers.IntegerField(
        required=False, default=10, min_value=0, max_value=100, help_text="How many latest statuses, 0-100."
    )


class StatsQuerySerializer(StatsLastSerializer):
    trigger = serializers.IntegerField(required=False, min_value=0, max_value=MAX_ID, help_text="One of your triggers.")
    workflow = serializers.IntegerField(
        required=False, min_value=0, max_value=MAX_ID, help_text="One of your workflows."
    )

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if "trigger" in attrs and "workflow" in attrs:
            raise serializers.ValidationError(
                {"trigger": ["give trigger or workflow, not both (neither: all your executions)."]}
            )
        return attrs


class PreviewQuerySerializer(serializers.Serializer):
    count = serializers.IntegerField(required=False, default=PREVIEW_COUNT, min_value=1, max_value=MAX_PREVIEW_COUNT)


class HealthSerializer(serializers.Serializer):
    status = serializers.ChoiceField(choices=["ok", "unavailable"])
    checks = serializers.DictField(
        child=serializers.CharField(), help_text='database, broker, beat, workers: "ok" or what is wrong.'
    )


# --- Filters ----------------------------------------------------------------------------------


class TriggerFilter(filters.FilterSet):
    # Plain ids, not ModelChoiceFilter: that would answer "not a valid choice" for a missing id and
    # nothing for another user's, telling the two apart.
    workflow = IdFilter(field_name="workflow_id", help_text="Workflow id.")
    status = filters.ChoiceFilter(choices=TriggerStatus.choices, method="filter_status")
    name = filters.CharFilter(lookup_expr="icontains", help_text="Part of the name, any case.")

    class Meta:
        model = Trigger
        fields = ["workflow", "kind", "enabled", "status", "priority", "name"]

    def filter_status(self, queryset: QuerySet[Trigger], name: str, value: str) -> QuerySet[Trigger]:
        if value == TriggerStatus.COMPLETED:
            return queryset.filter(completed_at__isnull=False)
        return queryset.filter(completed_at__isnull=True, enabled=value == TriggerStatus.ACTIVE)


class ExecutionFilter(filters.FilterSet):
    trigger = IdFilter(field_name="trigger_id", help_text="Trigger id.")
    workflow = IdFilter(field_name="workflow_id", help_text="Workflow id.")
    scheduled_for = UtcIsoDateTimeFromToRangeFilter(
        help_text="scheduled_for_after / scheduled_for_before, ISO 8601, both included."
    )

    class Meta:
        model = Execution
        fields = ["trigger", "workflow", "status", "origin", "manual", "scheduled_for"]


_EXECUTION_ORDERING = ["scheduled_for", "created_at", "finished_at", "duration_ms", "status"]
# The lists' filters and ordering; the ordering always ends with the primary key (stable pages).
LIST_FILTERS = [filters.DjangoFilterBackend, StableOrderingFilter]


# --- Input translation ------------------------------------------------------------------------


def _schedule_inputs(data: dict[str, Any], *, kind: str, now: datetime, run_at_given: bool) -> dict[str, Any]:
    """preset (+ time/day/minute) becomes cron; delay_seconds becomes run_at (updates; trigger_create does it)."""
    fields = dict(data)
    preset = fields.pop("preset", None)
    params = {name: fields.pop(name) for name in _PRESET_PARAMS if name in fields}
    if preset is None and params:
        raise serializers.ValidationError({name: ["only goes with a preset."] for name in params})
    if preset is not None:
        if fields.get("cron"):
            raise serializers.ValidationError({"preset": ["give a preset or a cron expression, not both."]})
        if kind != TriggerKind.CRON:
            raise serializers.ValidationError({"preset": [f"only for cron triggers, not {kind}."]})
        fields["cron"] = timing.preset_cron(preset, **params)
    delay = fields.pop("delay_seconds", None)
    if delay is not None:
        if kind != TriggerKind.ONCE or run_at_given:
            raise serializers.ValidationError({"delay_seconds": ["only for a once trigger, instead of run_at."]})
        fields["run_at"] = now + timedelta(seconds=delay)
    return fields


def _unsaved_trigger(owner: Any, data: dict[str, Any], now: datetime) -> Trigger:
    """The trigger trigger_create would make from ``data``, checked the same way, never saved."""
    fields = dict(data)
    kind = fields.setdefault("kind", TriggerKind.CRON)
    fields = _schedule_inputs(fields, kind=kind, now=now, run_at_given=fields.get("run_at") is not None)
    fields.setdefault("name", f"preview {uuid.uuid4().hex[:12]}")
    workflow = fields["workflow"]
    for name in _RETRY_FIELDS:
        if fields.get(name) is None:
            fields[name] = getattr(workflow, name)
    trigger = Trigger(owner=owner, **fields)
    services.trigger_validate(trigger=trigger, now=now)
    return trigger


def _describe(trigger: Trigger, count: int, now: datetime) -> dict[str, Any]:
    described = selectors.trigger_describe(trigger, count=count, now=now)
    return {
        "description": described["schedule"],
        "status": described["status"],
        "state": described["state"],
        "rules": described["rules"],
        "next_runs": described["next_runs"],
    }


# --- Views ------------------------------------------------------------------------------------


class TriggerViewSet(WriteThrottleMixin, viewsets.ModelViewSet):
    """Your triggers (staff: everyone's). Writes and actions go through schedules.services."""

    serializer_class = TriggerSerializer
    filter_backends = LIST_FILTERS
    filterset_class = TriggerFilter
    lookup_value_converter = "id"
    ordering_fields = ["id", "name", "created_at", "updated_at", "next_run_at", "last_run_at", "priority"]
    ordering = ["name", "id"]
    run_actions = frozenset({"run", "backfill"})

    def get_queryset(self) -> QuerySet[Trigger]:
        return triggers_of(self.request.user)

    def get_serializer_context(self) -> dict[str, Any]:
        return {**super().get_serializer_context(), "now": timezone.now()}

    def paginate_queryset(self, queryset: QuerySet[Trigger]) -> list[Trigger] | None:
        """Pages the ids (filtered and ordered as asked), then loads that page alone with its
        annotations. In one query PostgreSQL computes a row's subqueries (last_status,
        finished_executions) for the rows OFFSET skips too: page 20 cost twenty pages of them."""
        ids = super().paginate_queryset(queryset.values_list("pk", flat=True))
        if ids is None:
            return None
        rows = queryset.order_by().in_bulk(ids)
        return [rows[pk] for pk in ids if pk in rows]  # a trigger deleted in between is left out

    def _object(self) -> Trigger:
        """The trigger in the URL among the user's, without this action's filters (those are for its list)."""
        return get_object_or_404(self.get_queryset(), pk=self.kwargs["pk"])

    def _answer(self, trigger: Trigger, code: int = status.HTTP_200_OK) -> Response:
        fresh = self.get_queryset().get(pk=trigger.pk)  # re-read with last_status and finished_executions
        return Response(TriggerSerializer(fresh, context=self.get_serializer_context()).data, status=code)

    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        fields = dict(serializer.validated_data)
        kind = fields.pop("kind", TriggerKind.CRON)
        delay = fields.pop("delay_seconds", None)
        fields = _schedule_inputs(fields, kind=kind, now=timezone.now(), run_at_given=False)
        if "timezone" in fields:
            fields["timezone_name"] = fields.pop("timezone")
        trigger = services.trigger_create(
            owner=request.user, actor=request.user, kind=kind, delay_seconds=delay, **fields
        )
        return self._answer(trigger, status.HTTP_201_CREATED)

    def update(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        trigger = self._object()
        serializer = self.get_serializer(trigger, data=request.data, partial=kwargs.get("partial", False))
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        fields = _schedule_inputs(
            data,
            kind=data.get("kind", trigger.kind),
            now=timezone.now(),
            run_at_given=data.get("run_at") is not None,
        )
        trigger = services.trigger_update(trigger=trigger, actor=request.user, **fields)
        return self._answer(trigger)

    def destroy(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        services.trigger_delete(trigger=self._object(), actor=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(
        request=PauseSerializer, responses={200: TriggerSerializer, 409: OpenApiResponse(description="Already paused.")}
    )
    @action(detail=True, methods=["post"])
    def pause(self, request: Request, pk: str | None = None) -> Response:
        """Stop firing (slots due while paused never run); 409 if already paused."""
        serializer = PauseSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        trigger = services.trigger_pause(
            trigger=self._object(), reason=serializer.validated_data["reason"], by=request.user
        )
        return self._answer(trigger)

    @extend_schema(request=None, responses={200: TriggerSerializer, 409: OpenApiResponse(description="Not paused.")})
    @action(detail=True, methods=["post"])
    def resume(self, request: Request, pk: str | None = None) -> Response:
        """Fire again from the next slot after now; 409 if not paused."""
        trigger = services.trigger_resume(trigger=self._object(), actor=request.user)
        return self._answer(trigger)

    @extend_schema(request=RunNowSerializer, responses={202: ExecutionSerializer})
    @action(detail=True, methods=["post"])
    def run(self, request: Request, pk: str | None = None) -> Response:
        """Queue a manual execution now (paused triggers too), with optional input overrides."""
        serializer = RunNowSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        execution = services.trigger_run_now(
            trigger=self._object(), inputs=serializer.validated_data.get("inputs"), actor=request.user
        )
        return Response(ExecutionSerializer(execution).data, status=status.HTTP_202_ACCEPTED)

    @extend_schema(request=BackfillSerializer, responses={202: BackfillReportSerializer})
    @action(detail=True, methods=["post"])
    def backfill(self, request: Request, pk: str | None = None) -> Response:
        """Run the slots between start and end (in the past) that have no execution yet."""
        serializer = BackfillSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        report = services.trigger_backfill(trigger=self._object(), actor=request.user, **serializer.validated_data)
        return Response(BackfillReportSerializer(report).data, status=status.HTTP_202_ACCEPTED)

    @extend_schema(parameters=[PreviewQuerySerializer], responses={200: DescribeSerializer})
    @action(detail=True, methods=["get"], filter_backends=[], pagination_class=None)
    def preview(self, request: Request, pk: str | None = None) -> Response:
        """The schedule and every rule in words, and the next ``count`` runs (1-100)."""
        query = PreviewQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        return Response(_describe(self._object(), query.validated_data["count"], timezone.now()))

    @extend_schema(
        request=PreviewTriggerSerializer,
        parameters=[PreviewQuerySerializer],
        responses={200: DescribeSerializer},
    )
    @action(
        detail=False,
        methods=["post"],
        url_path="preview",
        url_name="preview-unsaved",
        serializer_class=PreviewTriggerSerializer,
        filter_backends=[],
        pagination_class=None,
    )
    def preview_unsaved(self, request: Request) -> Response:
        """Check a trigger as create would (400 with field errors) and describe it; nothing is saved."""
        query = PreviewQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        serializer = PreviewTriggerSerializer(data=request.data, context=self.get_serializer_context())
        serializer.is_valid(raise_exception=True)
        now = timezone.now()
        trigger = _unsaved_trigger(request.user, serializer.validated_data, now)
        return Response(_describe(trigger, query.validated_data["count"], now))

    @extend_schema(parameters=[StatsLastSerializer], responses={200: TriggerStatsSerializer})
    @action(detail=True, methods=["get"], filter_backends=[], pagination_class=None)
    def stats(self, request: Request, pk: str | None = None) -> Response:
        """Counts, success rate and durations (they survive pruning), the latest statuses and the next runs."""
        last = _last(request)
        return Response(TriggerStatsSerializer(selectors.trigger_stats(self._object(), last=last)).data)


# Either shape (an empty next_runs fits both, so anyOf, not oneOf); the components come from the nested stats views.
_TRIGGER_OR_WORKFLOW_STATS = {
    "anyOf": [{"$ref": "#/components/schemas/TriggerStats"}, {"$ref": "#/components/schemas/WorkflowStats"}]
}


def _last(request: Request) -> int:
    query = StatsLastSerializer(data=request.query_params)
    query.is_valid(raise_exception=True)
    return query.validated_data["last"]


class ExecutionViewSet(WriteThrottleMixin, viewsets.ReadOnlyModelViewSet):
    """Executions of your triggers (staff: everyone's)."""

    serializer_class = ExecutionSerializer
    filter_backends = LIST_FILTERS
    filterset_class = ExecutionFilter
    ordering_fields = _EXECUTION_ORDERING
    # Read off the index execution_slot (-scheduled_for, -id): StableOrderingFilter adds the -pk.
    ordering = ["-scheduled_for"]
    lookup_value_converter = "uuid"
    run_actions = frozenset({"retry"})

    def get_queryset(self) -> QuerySet[Execution]:
        return executions_of(self.request.user)

    @extend_schema(request=None, responses={202: ExecutionSerializer, 409: OpenApiResponse(description="Not failed.")})
    @action(detail=True, methods=["post"])
    def retry(self, request: Request, pk: str | None = None) -> Response:
        """Run a failed execution again as a new execution with the same inputs; 409 unless it failed."""
        execution = get_object_or_404(self.get_queryset().select_related("trigger", "workflow"), pk=pk)
        retry = services.execution_retry(execution=execution, actor=request.user)
        return Response(ExecutionSerializer(retry).data, status=status.HTTP_202_ACCEPTED)

    @extend_schema(
        parameters=[StatsQuerySerializer],
        responses={
            200: OpenApiResponse(
                _TRIGGER_OR_WORKFLOW_STATS,
                description="TriggerStats with ?trigger=; WorkflowStats with ?workflow=, or with neither: over "
                "all your executions (staff: everyone's), next_runs across all your triggers.",
            ),
            404: OpenApiResponse(description="No such trigger or workflow among yours."),
        },
    )
    @action(detail=False, methods=["get"], filter_backends=[], pagination_class=None)
    def stats(self, request: Request) -> Response:
        """Stats of one trigger (?trigger=ID), one workflow (?workflow=ID), or all your executions (neither)."""
        query = StatsQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        last = query.validated_data["last"]
        if "trigger" in query.validated_data:
            trigger = get_object_or_404(triggers_of(request.user), pk=query.validated_data["trigger"])
            return Response(TriggerStatsSerializer(selectors.trigger_stats(trigger, last=last)).data)
        if "workflow" in query.validated_data:
            workflow = get_object_or_404(workflows_of(request.user), pk=query.validated_data["workflow"])
            return Response(WorkflowStatsSerializer(selectors.workflow_stats(workflow, last=last)).data)
        return Response(WorkflowStatsSerializer(selectors.owner_stats(request.user, last=last)).data)


class TriggerExecutionsView(generics.ListAPIView):
    """GET /api/triggers/<id>/executions/: the trigger's executions, newest slot first."""

    serializer_class = ExecutionSerializer
    filter_backends = LIST_FILTERS
    filterset_class = ExecutionFilter
    ordering_fields = _EXECUTION_ORDERING
    ordering = ["-scheduled_for"]

    def get_queryset(self) -> QuerySet[Execution]:
        if getattr(self, "swagger_fake_view", False):
            return Execution.objects.none()
        trigger = get_object_or_404(owned(Trigger.objects.all(), self.request.user), pk=self.kwargs["pk"])
        return Execution.objects.filter(trigger=trigger)


class TriggerAuditView(ObjectAuditView):
    """GET /api/triggers/<id>/audit/: the trigger's audit trail, newest first."""

    object_type = "trigger"

    def objects_of(self, user: Any) -> QuerySet[Trigger]:
        return owned(Trigger.objects.all(), user)


class WorkflowStartSerializer(StartSerializer):
    """Now or later (delay_seconds, run_at: one run), or again and again (cron or a preset: a trigger)."""

    cron = serializers.CharField(
        required=False, max_length=100, help_text='Start on this schedule instead: a trigger, e.g. "0 9 * * 1-5".'
    )
    preset = serializers.ChoiceField(
        choices=timing.PRESETS,
        required=False,
        help_text='Or a preset, as for triggers: "preset": "weekdays", "time": "09:00".',
    )
    time = serializers.CharField(required=False, help_text='With a preset: "HH:MM", e.g. "09:00".')
    day = serializers.CharField(required=False, help_text="With preset weekly: 0-6 or MON..SUN; monthly: 1-31.")
    minute = serializers.IntegerField(required=False, min_value=0, max_value=59, help_text="With preset hourly.")
    timezone = serializers.CharField(
        required=False, max_length=64, help_text="For cron or a preset, e.g. Europe/Berlin."
    )
    name = serializers.CharField(
        required=False, max_length=200, help_text="For cron or a preset: the trigger's name (default: made up)."
    )


class StartedSerializer(serializers.Serializer):
    run = WorkflowRunSerializer(allow_null=True, help_text="The run, queued until it begins (now or later).")
    trigger = TriggerSerializer(allow_null=True, help_text="With cron or a preset: the trigger that starts it.")


_RECURRING = ("cron", "preset", "time", "day", "minute", "timezone", "name")


class WorkflowStartView(WriteThrottleMixin, APIView):
    """POST /api/workflows/<id>/start/: start a workflow with a definition now, later, or on a schedule."""

    @extend_schema(
        request=WorkflowStartSerializer,
        responses={
            201: StartedSerializer,
            200: OpenApiResponse(StartedSerializer, description="A repeat of an earlier idempotency_key."),
        },
    )
    def post(self, request: Request, pk: int) -> Response:
        """One call for "start now or later": delay_seconds (0, the default: now) or run_at make one run,
        queued until it begins (move it with /api/runs/<id>/move/, cancel it with …/cancel/); cron or a
        preset make a trigger that starts it on that schedule (change or delete it as any trigger)."""
        workflow = get_object_or_404(workflows_of(request.user), pk=pk)
        body = WorkflowStartSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        fields = dict(body.validated_data)
        recurring = {name: fields.pop(name) for name in _RECURRING if name in fields}
        if "cron" not in recurring and "preset" not in recurring:
            if recurring:
                raise serializers.ValidationError({name: ["only goes with cron or a preset."] for name in recurring})
            run, created = workflow_services.workflow_start(workflow=workflow, actor=request.user, **fields)
            answer = {"run": WorkflowRunSerializer(runs_of(request.user).get(pk=run.pk)).data, "trigger": None}
            return Response(answer, status=status.HTTP_201_CREATED if created else status.HTTP_200_OK)
        single = [name for name in ("delay_seconds", "run_at", "idempotency_key") if name in fields]
        if single:
            raise serializers.ValidationError(
                {name: ["not with cron or a preset (those start it again and again)."] for name in single}
            )
        workflow_services.startable_check(workflow)
        now = timezone.now()
        schedule = _schedule_inputs(recurring, kind=TriggerKind.CRON, now=now, run_at_given=False)
        trigger = services.trigger_create(
            owner=workflow.owner,
            actor=request.user,
            workflow=workflow,
            name=schedule.pop("name", None) or f"Start {workflow.name} ({schedule['cron']})"[:200],
            kind=TriggerKind.CRON,
            cron=schedule["cron"],
            timezone_name=schedule.get("timezone", "UTC"),
            inputs=fields.get("inputs") or {},
            priority=fields.get("priority", "normal"),
            now=now,
        )
        fresh = triggers_of(request.user).get(pk=trigger.pk)
        answer = {"run": None, "trigger": TriggerSerializer(fresh, context={"request": request, "now": now}).data}
        return Response(answer, status=status.HTTP_201_CREATED)


class WorkflowStatsView(APIView):
    """GET /api/workflows/<id>/stats/: a workflow's figures over every trigger that called it."""

    @extend_schema(parameters=[StatsLastSerializer], responses={200: WorkflowStatsSerializer})
    def get(self, request: Request, pk: int) -> Response:
        workflow = get_object_or_404(workflows_of(request.user), pk=pk)
        return Response(WorkflowStatsSerializer(selectors.workflow_stats(workflow, last=_last(request))).data)


class HealthView(APIView):
    """GET /api/health/ (no authentication): database, broker, beat and workers, each "ok" or why not."""

    authentication_classes: list[Any] = []
    permission_classes = [AllowAny]
    throttle_classes: list[Any] = []

    @extend_schema(auth=[], responses={200: HealthSerializer, 503: HealthSerializer})
    def get(self, request: Request) -> Response:
        checks = selectors.health_checks()
        healthy = all(value == "ok" for value in checks.values())
        return Response(
            {"status": "ok" if healthy else "unavailable", "checks": checks},
            status=status.HTTP_200_OK if healthy else status.HTTP_503_SERVICE_UNAVAILABLE,
        )
