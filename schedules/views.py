"""Health endpoint: GET /api/health/ reports the database, the broker and beat."""

from __future__ import annotations

from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_GET

from . import selectors


@require_GET
def health(request: HttpRequest) -> JsonResponse:
    """200 when every part is ok, 503 naming the part that is not."""
    checks = selectors.health_checks()
    healthy = all(value == "ok" for value in checks.values())
    return JsonResponse(
        {"status": "ok" if healthy else "unavailable", "checks": checks}, status=200 if healthy else 503
    )
