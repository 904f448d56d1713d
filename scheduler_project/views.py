"""The pages outside the admin and the API: the landing page at / and the API root at /api/."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import reverse
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

# (name, route name, what it is): the API root and the landing page list the same resources.
RESOURCES = (
    ("workflows", "workflow-list", "what to call: endpoint, method, headers, signing secret, default inputs"),
    ("triggers", "trigger-list", "when: cron, presets, once, interval; pause, resume, run now, backfill"),
    ("executions", "execution-list", "what happened, one per trigger and slot; retry, stats"),
    ("runs", "run-list", "built-in engine runs and their steps; pause, resume, cancel, retry"),
    ("audit", "audit-list", "who changed what"),
    ("health", "health", "database, broker, beat and workers (no token needed)"),
    ("schema", "api-schema", "OpenAPI 3 schema (no token needed)"),
    ("docs", "api-docs", "interactive documentation (no token needed)"),
)


def home(request: HttpRequest) -> HttpResponse:
    """GET /: what this service is and where to go next."""
    links = [(name, reverse(route), about) for name, route, about in RESOURCES]
    return render(request, "home.html", {"links": links})


class ApiRootView(APIView):
    """GET /api/: the resources of the API, as absolute URLs (no token needed to read the map)."""

    authentication_classes: list[Any] = []
    permission_classes = [AllowAny]
    throttle_classes: list[Any] = []

    @extend_schema(
        auth=[],
        responses=inline_serializer("ApiRoot", {name: serializers.URLField() for name, _route, _about in RESOURCES}),
    )
    def get(self, request: Request) -> Response:
        return Response({name: request.build_absolute_uri(reverse(route)) for name, route, _about in RESOURCES})


def metrics(request: HttpRequest) -> HttpResponse:
    """GET /metrics: the scheduler's state for Prometheus (scheduler_project/metrics.py).

    With SCHEDULER_METRICS_TOKEN set it answers only ``Authorization: Bearer <token>``; without
    one it is open while DEBUG is on (local) and closed when DEBUG is off, so a deployment never
    publishes it by accident.
    """
    from django.conf import settings
    from django.db import DatabaseError
    from django.http import JsonResponse

    from . import metrics as scheduler_metrics

    if request.method != "GET":
        return JsonResponse({"errors": {"method": ["use GET"]}}, status=405, headers={"Allow": "GET"})
    token = settings.SCHEDULER_METRICS_TOKEN
    if token:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not scheduler_metrics.token_matches(given.strip(), token):
            return JsonResponse(
                {"errors": {"authorization": ["send Authorization: Bearer <SCHEDULER_METRICS_TOKEN>"]}},
                status=401,
                headers={"WWW-Authenticate": 'Bearer realm="metrics"'},
            )
    elif not settings.DEBUG:
        return JsonResponse(
            {"errors": {"metrics": ["closed: set SCHEDULER_METRICS_TOKEN and scrape with that bearer token"]}},
            status=403,
        )
    try:
        body, content_type = scheduler_metrics.render(scheduler_metrics.state_registry())
    except DatabaseError as exc:
        return JsonResponse({"errors": {"database": [f"unavailable ({type(exc).__name__})"]}}, status=503)
    return HttpResponse(body, content_type=content_type)
