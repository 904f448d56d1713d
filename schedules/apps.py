"""App config for schedules: triggers (when) and executions (history)."""

from django.apps import AppConfig


class SchedulesConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "schedules"

    def ready(self) -> None:
        from . import checks  # noqa: F401  (registers the start-up checks)
