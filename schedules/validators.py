"""Single-field rules for triggers, as Django validators."""

from __future__ import annotations

from datetime import datetime

from django.core.exceptions import ValidationError

from . import timing
from .exceptions import ScheduleError


def validate_cron(value: str) -> None:
    """A 5-field cron expression or @macro that fires at least once."""
    try:
        timing.normalize_cron(value)
    except ScheduleError as exc:
        raise ValidationError(str(exc)) from None


def validate_timezone(value: str) -> None:
    """An IANA time zone name, e.g. 'America/Los_Angeles'."""
    try:
        timing.zone(value)
    except ScheduleError as exc:
        raise ValidationError(str(exc)) from None


def validate_execution_window(value: object) -> None:
    """{"days": [0-6, 0=Sunday], "ranges": [["HH:MM", "HH:MM"], ...]}; empty means always."""
    try:
        timing.parse_window(value)
    except ScheduleError as exc:
        raise ValidationError(str(exc)) from None


def validate_email_list(value: str) -> None:
    """Comma-separated e-mail addresses."""
    from django.core.validators import validate_email

    for address in (part.strip() for part in value.split(",")):
        if address:
            try:
                validate_email(address)
            except ValidationError:
                raise ValidationError(f"{address!r} is not an e-mail address.") from None


# Ten years: longer intervals and windows overflow date arithmetic long before they matter.
MAX_INTERVAL_SECONDS = 10 * 365 * 86400


def validate_schedulable_time(value: datetime) -> None:
    """A time between 1970 and 2999 (beyond that, schedule arithmetic overflows)."""
    if value is not None and not 1970 <= value.year <= 2999:
        raise ValidationError(f"must be between 1970 and 2999, not {value.year}.")
