"""Errors of the schedules app. Subclasses only set class attributes."""

from __future__ import annotations


class ScheduleError(Exception):
    """Base class; ``field`` names the input that is wrong, when there is one."""

    field: str | None = None

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        if field is not None:
            self.field = field


class InvalidCron(ScheduleError):
    """A cron expression that is malformed, out of range or never fires."""

    field = "cron"


class TriggerNotFound(ScheduleError):
    """No trigger with that id or name (for this owner)."""

    field = "trigger"


class TriggerStateError(ScheduleError):
    """The action does not fit the trigger's state (e.g. resuming a running trigger)."""
