"""The workflows API: /api/workflows/ (CRUD, rotate-secret), /api/workflows/<id>/runs/ and the audit trail."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from django.http import HttpResponseBase
from django.shortcuts import get_object_or_404
from django_filters import rest_framework as filters
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import generics, serializers, status, viewsets
from rest_framework.authentication import BaseAuthentication
from rest_framework.decorators import action
from rest_framework.permissions import BasePermission
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.throttling import BaseThrottle

from scheduler_project.api import (
    JsonObjectField,
    ModelSerializer,
    StrictFieldsMixin,
    UtcIsoDateTimeFromToRangeFilter,
    WriteThrottleMixin,
    owned,
)

from . import services, views
from .models import STEP_HISTORY_FIELDS, AuditEvent, RunPriority, Workflow, WorkflowRun, WorkflowStep

# Secrets are decrypted when a row is loaded: reads that never show them don't load them.
_SECRETS = ("secret", "previous_secret")


def workflows_of(user: Any) -> QuerySet[Workflow]:
    """The workflows ``user`` may see (all of them for staff), secrets not loaded."""
    return owned(Workflow.objects.select_related("owner").defer(*_SECRETS), user)


# --- Serializers ------------------------------------------------------------------------------


class WorkflowSerializer(StrictFieldsMixin, ModelSerializer):
    owner = serializers.SlugRelatedField(slug_field="username", read_only=True)
    secret = serializers.CharField(
        write_only=True,
        required=False,
        allow_blank=True,
        style={"input_type": "password"},
        help_text="Standard Webhooks signing secret (whsec_ + base64). Write-only. Left out or blank on create: "
        "one is generated and returned once in the response; blank on update: unchanged.",
    )
    execution_url = serializers.CharField(read_only=True, help_text="Where runs are sent.")

    class Meta:
        model = Workflow
        fields = [
            "id",
            "owner",
            "name",
            "endpoint_url",
            "execution_url",
            "http_method",
            "headers",
            "secret",
            "previous_secret_expires_at",
            "timeout_seconds",
            "default_inputs",
            "is_active",
            "max_concurrency",
            "max_attempts",
            "min_backoff_seconds",
            "max_backoff_seconds",
            "max_doublings",
            "max_retry_duration_seconds",
            "definition",
            "created_at",
            "updated_at",
        ]
        read_only_fields = ["previous_secret_expires_at", "created_at", "updated_at"]
        # Uniqueness of the name per owner is the service's check (full_clean), answered on "name".
        validators: list[Any] = []


class WorkflowCreatedSerializer(WorkflowSerializer):
    secret = serializers.CharField(
        read_only=True, required=False, help_text="Only when it was generated: shown this once, never again."
    )


class RotateSecretSerializer(StrictFieldsMixin, serializers.Serializer):
    overlap_seconds = serializers.IntegerField(
        min_value=0,
        max_value=services.MAX_OVERLAP_SECONDS,
        default=services.DEFAULT_OVERLAP_SECONDS,
        help_text="How long the old secret stays valid too, e.g. 86400; 0 ends it now (after a leak).",
    )
    secret = serializers.CharField(
        write_only=True, required=False, allow_blank=True, help_text="The new secret; left out: one is generated."
    )


class RotatedSecretSerializer(serializers.Serializer):
    secret = serializers.CharField(help_text="The new secret: shown this once, never again.")
    previous_secret_expires_at = serializers.DateTimeField(
        allow_null=True, help_text="Until then the old secret is still accepted; null: not at all."
    )


class WorkflowStepSerializer(ModelSerializer):
    class Meta:
        model = WorkflowStep
        fields = list(STEP_HISTORY_FIELDS)


class WorkflowRunSerializer(ModelSerializer):
    steps = WorkflowStepSerializer(many=True, read_only=True, help_text="The run's path, one entry per attempt.")

    class Meta:
        model = WorkflowRun
        fields = [
            "id",
            "workflow",
            "idempotency_key",
            "inputs",
            "payload",
            "received_at",
            "status",
            "priority",
            "current_step",
            "started_at",
            "finished_at",
            "wake_at",
            "error",
            "context",
            "steps",
        ]


class RunAcceptedSerializer(serializers.Serializer):
    run_id = serializers.UUIDField()
    created = serializers.BooleanField(help_text="False: a repeat of an earlier request with the same webhook-id.")


class AuditEventSerializer(ModelSerializer):
    actor = serializers.SlugRelatedField(
        slug_field="username", read_only=True, allow_null=True, help_text="Who did it; null: the scheduler itself."
    )
    changes = JsonObjectField(
        read_only=True, help_text='Changed fields as {"field": [old, new]}, or details such as a pause reason.'
    )

    class Meta:
        model = AuditEvent
        fields = ["id", "at", "actor", "source", "action", "object_type", "object_id", "object_repr", "changes"]
        read_only_fields = fields


# --- Filters ----------------------------------------------------------------------------------


class WorkflowFilter(filters.FilterSet):
    name = filters.CharFilter(lookup_expr="icontains", help_text="Part of the name, any case.")

    class Meta:
        model = Workflow
        fields = ["name", "is_active", "http_method"]


class WorkflowRunFilter(filters.FilterSet):
    received_at = UtcIsoDateTimeFromToRangeFilter(help_text="received_at_after / received_at_before.")

    class Meta:
        model = WorkflowRun
        fields = ["idempotency_key", "received_at", "status"]


class RunListFilter(WorkflowRunFilter):
    class Meta:
        model = WorkflowRun
        fields = ["workflow", "idempotency_key", "received_at", "status"]


class StartSerializer(StrictFieldsMixin, serializers.Serializer):
    delay_seconds = serializers.IntegerField(
        required=False, min_value=0, max_value=services.MAX_START_DELAY_SECONDS, help_text="0 (default): now; e.g. 600."
    )
    run_at = serializers.DateTimeField(
        required=False, help_text="Or when, with its offset, e.g. 2027-01-04T09:00:00Z (not with delay_seconds)."
    )
    inputs = JsonObjectField(
        required=False, help_text='Over the workflow\'s default inputs, e.g. {"stream": "tuesday"}.'
    )
    priority = serializers.ChoiceField(choices=RunPriority.choices, default=RunPriority.NORMAL)
    idempotency_key = serializers.CharField(
        required=False,
        allow_blank=True,
        max_length=200,
        help_text="The same key again returns the first run instead of starting another.",
    )


class MoveSerializer(StrictFieldsMixin, serializers.Serializer):
    delay_seconds = serializers.IntegerField(
        required=False, min_value=0, max_value=services.MAX_START_DELAY_SECONDS, help_text="From now, e.g. 600."
    )
    run_at = serializers.DateTimeField(required=False, help_text="Or when, e.g. 2027-01-04T09:00:00Z.")


class CancelRunSerializer(StrictFieldsMixin, serializers.Serializer):
    reason = serializers.CharField(
        required=False, allow_blank=True, max_length=500, help_text="Why, for the run's error, e.g. 'wrong inputs'."
    )


AUDIT_OBJECT_TYPES = [
    ("workflow", "workflow"),
    ("trigger", "trigger"),
    ("execution", "execution"),
    ("workflowrun", "workflow run"),
]
AUDIT_SOURCES = [("admin", "admin"), ("api", "api"), ("command", "command"), ("scheduler", "scheduler")]


class ObjectAuditEventFilter(filters.FilterSet):
    """The filters of one object's trail."""

    action = filters.CharFilter(
        max_length=32, help_text="created, updated, paused, resumed, ran, backfilled, retried, deleted, ..."
    )
    source = filters.ChoiceFilter(choices=AUDIT_SOURCES)
    actor = filters.CharFilter(field_name="actor__username", max_length=150, help_text="Username of who did it.")
    at = UtcIsoDateTimeFromToRangeFilter(help_text="at_after / at_before, ISO 8601, both included.")

    class Meta:
        model = AuditEvent
        fields = ["action", "source", "actor", "at"]


class AuditEventFilter(ObjectAuditEventFilter):
    object_type = filters.ChoiceFilter(choices=AUDIT_OBJECT_TYPES)
    object_id = filters.CharFilter(max_length=64, help_text="The object's id, e.g. 3 (deleted objects too).")

    class Meta:
        model = AuditEvent
        fields = ["object_type", "object_id", "action", "source", "actor", "at"]


# --- Views ------------------------------------------------------------------------------------


@extend_schema_view(
    create=extend_schema(responses={201: WorkflowCreatedSerializer}),
    destroy=extend_schema(responses={204: None, 409: OpenApiResponse(description="Triggers still run it.")}),
)
class WorkflowViewSet(WriteThrottleMixin, viewsets.ModelViewSet):
    """Your workflows (staff: everyone's). Writes go through workflows.services."""

    serializer_class = WorkflowSerializer
    filterset_class = WorkflowFilter
    lookup_value_converter = "id"
    ordering_fields = ["id", "name", "created_at", "updated_at"]
    ordering = ["name", "id"]

    def get_queryset(self) -> QuerySet[Workflow]:
        return workflows_of(self.request.user)

    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        fields = dict(serializer.validated_data)
        generated = not fields.get("secret")
        workflow = services.workflow_create(owner=request.user, actor=request.user, **fields)
        body = WorkflowCreatedSerializer(workflow, context=self.get_serializer_context()).data
        if not generated:
            body.pop("secret", None)
        return Response(body, status=status.HTTP_201_CREATED)

    def update(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        workflow = self.get_object()
        serializer = self.get_serializer(workflow, data=request.data, partial=kwargs.get("partial", False))
        serializer.is_valid(raise_exception=True)
        workflow = services.workflow_update(workflow=workflow, actor=request.user, **serializer.validated_data)
        return Response(self.get_serializer(workflow).data)

    def destroy(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        services.workflow_delete(workflow=self.get_object(), actor=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(request=RotateSecretSerializer, responses={200: RotatedSecretSerializer})
    @action(detail=True, methods=["post"], url_path="rotate-secret", serializer_class=RotateSecretSerializer)
    def rotate_secret(self, request: Request, pk: str | None = None) -> Response:
        """Give the workflow a new secret (returned this once); the old one stays valid for overlap_seconds."""
        workflow = self.get_object()
        serializer = RotateSecretSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        secret = services.workflow_rotate_secret(
            workflow=workflow,
            overlap_seconds=serializer.validated_data["overlap_seconds"],
            new_secret=serializer.validated_data.get("secret") or None,
            actor=request.user,
        )
        return Response({"secret": secret, "previous_secret_expires_at": workflow.previous_secret_expires_at})


class WorkflowRunsView(generics.ListAPIView):
    """GET: the workflow's runs, for its owner. POST: the signed execution endpoint (no user auth).

    POST is what workflows without an endpoint_url are called with: a Standard Webhooks signature
    (webhook-id, webhook-timestamp, webhook-signature) made with the workflow's secret is the only
    credential, so it takes no token or session and no CSRF token (workflows.views.workflow_runs).
    """

    serializer_class = WorkflowRunSerializer
    filterset_class = WorkflowRunFilter
    ordering_fields = ["received_at"]
    ordering = ["-received_at"]
    _signed = False

    def initialize_request(self, request: Any, *args: Any, **kwargs: Any) -> Request:
        # Decided before DRF authenticates: the signed POST skips users, permissions and throttles.
        self._signed = request.method == "POST"
        return super().initialize_request(request, *args, **kwargs)

    def get_authenticators(self) -> list[BaseAuthentication]:
        return [] if self._signed else super().get_authenticators()

    def get_permissions(self) -> list[BasePermission]:
        return [] if self._signed else super().get_permissions()

    def get_throttles(self) -> list[BaseThrottle]:
        return [] if self._signed else super().get_throttles()

    def perform_content_negotiation(self, request: Request, force: bool = False) -> Any:
        # A webhook sender's Accept header must not turn a signed call into a 406.
        return super().perform_content_negotiation(request, force=force or self._signed)

    def get_queryset(self) -> QuerySet[WorkflowRun]:
        if getattr(self, "swagger_fake_view", False):
            return WorkflowRun.objects.none()
        workflow = get_object_or_404(workflows_of(self.request.user), pk=self.kwargs["workflow_id"])
        return workflow.runs.prefetch_related("steps")

    @extend_schema(
        auth=[],
        request={"application/json": OpenApiTypes.OBJECT},
        responses={
            202: RunAcceptedSerializer,
            400: OpenApiResponse(description="Not a JSON object, or Idempotency-Key differs from webhook-id."),
            401: OpenApiResponse(description="Missing, wrong or stale signature."),
            404: OpenApiResponse(description="No such workflow."),
            409: OpenApiResponse(description="The workflow is not active."),
        },
        description="Record a run, signed with Standard Webhooks headers (webhook-id is the idempotency key).",
    )
    def post(self, request: Request, workflow_id: int) -> HttpResponseBase:
        return views.workflow_runs(request._request, workflow_id)


def runs_of(user: Any) -> QuerySet[WorkflowRun]:
    """The runs of ``user``'s workflows (staff: everyone's), with their steps."""
    return owned(
        WorkflowRun.objects.select_related("workflow").prefetch_related("steps"), user, owner_path="workflow__owner"
    )


_CONFLICT = OpenApiResponse(description="The run's status does not allow it (e.g. resume a run that is not paused).")


@extend_schema_view(
    pause=extend_schema(request=None, responses={200: WorkflowRunSerializer, 409: _CONFLICT}),
    resume=extend_schema(request=None, responses={200: WorkflowRunSerializer, 409: _CONFLICT}),
    cancel=extend_schema(request=CancelRunSerializer, responses={200: WorkflowRunSerializer, 409: _CONFLICT}),
    retry=extend_schema(request=None, responses={200: WorkflowRunSerializer, 409: _CONFLICT}),
    move=extend_schema(request=MoveSerializer, responses={200: WorkflowRunSerializer, 409: _CONFLICT}),
)
class WorkflowRunViewSet(WriteThrottleMixin, viewsets.ReadOnlyModelViewSet):
    """Runs of your workflows (staff: everyone's) with their step history; pause, resume, cancel and
    retry those of the built-in engine. Writes go through workflows.services."""

    serializer_class = WorkflowRunSerializer
    filterset_class = RunListFilter
    lookup_value_converter = "uuid"
    ordering_fields = ["received_at"]
    ordering = ["-received_at"]

    def get_queryset(self) -> QuerySet[WorkflowRun]:
        return runs_of(self.request.user)

    def _control(self, change: Any, **options: Any) -> Response:
        run = change(run=self.get_object(), actor=self.request.user, **options)
        return Response(self.get_serializer(runs_of(self.request.user).get(pk=run.pk)).data)

    @action(detail=True, methods=["post"])
    def pause(self, request: Request, pk: str | None = None) -> Response:
        """Stop sending the run's steps (a step in flight finishes and is recorded)."""
        return self._control(services.run_pause)

    @action(detail=True, methods=["post"])
    def resume(self, request: Request, pk: str | None = None) -> Response:
        """Carry on from where the run was paused."""
        return self._control(services.run_resume)

    @action(detail=True, methods=["post"], serializer_class=CancelRunSerializer)
    def cancel(self, request: Request, pk: str | None = None) -> Response:
        """End the run as cancelled; the Execution that started it fails."""
        body = CancelRunSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        run = services.run_cancel(
            run=self.get_object(), actor=request.user, reason=body.validated_data.get("reason", "")
        )
        return Response(WorkflowRunSerializer(runs_of(request.user).get(pk=run.pk)).data)

    @action(detail=True, methods=["post"], serializer_class=MoveSerializer)
    def move(self, request: Request, pk: str | None = None) -> Response:
        """Move a queued run's start (one made with POST /api/workflows/<id>/start/ that has not begun)."""
        body = MoveSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        run = services.run_move(run=self.get_object(), actor=request.user, **body.validated_data)
        return Response(WorkflowRunSerializer(runs_of(request.user).get(pk=run.pk)).data)

    @action(detail=True, methods=["post"])
    def retry(self, request: Request, pk: str | None = None) -> Response:
        """Run a failed run again from the step that failed (completed steps are not run again)."""
        return self._control(services.run_retry)


def audit_of(user: Any) -> QuerySet[AuditEvent]:
    """The audit events of ``user``'s objects (staff: everyone's)."""
    return owned(AuditEvent.objects.select_related("actor"), user)


class AuditEventListView(generics.ListAPIView):
    """GET /api/audit/: who created, changed, paused, resumed, ran or deleted your objects, and when; newest first."""

    serializer_class = AuditEventSerializer
    filterset_class = AuditEventFilter
    ordering_fields = ["at"]
    ordering = ["-at", "-id"]

    def get_queryset(self) -> QuerySet[AuditEvent]:
        return audit_of(self.request.user)


class ObjectAuditView(AuditEventListView):
    """The audit events of one of your objects (the one in the URL; another user's is 404), newest first."""

    filterset_class = ObjectAuditEventFilter
    object_type = ""

    def objects_of(self, user: Any) -> QuerySet[Any]:
        raise NotImplementedError

    def get_queryset(self) -> QuerySet[AuditEvent]:
        if getattr(self, "swagger_fake_view", False):
            return AuditEvent.objects.none()
        obj = get_object_or_404(self.objects_of(self.request.user), pk=self.kwargs["pk"])
        return audit_of(self.request.user).filter(object_type=self.object_type, object_id=str(obj.pk))


class WorkflowAuditView(ObjectAuditView):
    """GET /api/workflows/<id>/audit/: the workflow's audit trail, newest first."""

    object_type = "workflow"

    def objects_of(self, user: Any) -> QuerySet[Workflow]:
        return workflows_of(user)
