"""Marks audit events made while handling a request as coming from the API, the web UI or the admin."""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse

from .services import audit_source


class AuditSourceMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        path = request.path
        source = "api" if path.startswith("/api/") else "web" if path.startswith("/app/") else "admin"
        with audit_source(source):
            return self.get_response(request)
