"""Start-up checks for scheduler settings (run by manage.py check, migrate, runserver)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import Error, register


@register()
def backoff_below_visibility_timeout(app_configs: Any, **kwargs: Any) -> list[Error]:
    """Countdown retries sit in the broker: Redis re-delivers them after its visibility timeout."""
    if settings.CELERY_BROKER_URL.startswith("filesystem://"):
        return []
    cap = settings.SCHEDULER_MAX_BACKOFF_CAP_SECONDS + settings.SCHEDULER_LEASE_GRACE_SECONDS
    timeout = settings.CELERY_VISIBILITY_TIMEOUT_SECONDS
    if cap >= timeout:
        return [
            Error(
                f"SCHEDULER_MAX_BACKOFF_CAP_SECONDS + SCHEDULER_LEASE_GRACE_SECONDS ({cap}) must be below "
                f"CELERY_VISIBILITY_TIMEOUT_SECONDS ({timeout}), or Redis re-delivers waiting retries.",
                id="schedules.E001",
            )
        ]
    return []
