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
