"""Helpers for the schedules commands: lookups, option parsing, and errors as CommandError."""

from __future__ import annotations

import argparse
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime, tzinfo

from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.core.management.base import CommandError
from django.utils import timezone

from schedules.exceptions import ScheduleError
from schedules.models import Execution, Trigger
from workflows.management.commands._common import by_id_or_name, validation_error_message


@contextmanager
def errors_as_command_errors(options: Mapping[str, str]) -> Iterator[None]:
    """Service errors become CommandError naming the option (``options``: model field -> option)."""
    try:
        yield
    except ValidationError as exc:
        raise CommandError(validation_error_message(exc, options)) from None
    except ScheduleError as exc:
        option = options.get(exc.field or "")
        raise CommandError(f"{option}: {exc}" if option else str(exc)) from None


def trigger_get(value: str, *, owner: AbstractBaseUser | None = None) -> Trigger:
    """A trigger by id or name (of ``owner`` when given); a name several owners use is refused."""
    triggers = Trigger.objects.select_related("owner", "workflow", "periodic_task")
    return by_id_or_name(triggers, value, owner=owner, noun="trigger", option="TRIGGER")


class Clear:
    """What an option given as 'none' means: set the field to blank (None)."""

    def __repr__(self) -> str:
        return "none"


CLEAR = Clear()


def non_negative_int(text: str) -> int:
    """argparse type: a whole number of at least 0 (argparse names the option in its error)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {value}")
    return value


def int_or_none(minimum: int) -> Callable[[str], int | Clear]:
    """argparse type: a whole number of at least ``minimum``, or 'none' to clear the field."""

    def parse(text: str) -> int | Clear:
        if text.strip().lower() == "none":
            return CLEAR
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number or 'none'") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be {minimum} or more (or 'none'), not {value}")
        return value

    return parse


def parse_time(text: str, zone: tzinfo, *, option: str) -> datetime:
    """An ISO 8601 time; without an offset it is read in ``zone`` (the trigger's time zone)."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise CommandError(
            f"{option}: {text!r} is not an ISO 8601 time; for example 2026-12-01T09:00 or 2026-12-01T09:00:00+01:00."
        ) from None
    return value.replace(tzinfo=zone) if timezone.is_naive(value) else value


def execution_get(value: str) -> Execution:
    """An execution by its id (a UUID, as `trigger history` and the admin show it)."""
    try:
        pk = uuid.UUID(value.strip())
    except ValueError:
        raise CommandError(
            f"EXECUTION_ID: {value!r} is not an execution id; give the UUID `manage.py trigger history` shows, "
            "e.g. 0b5e1c52-8f0e-4a3c-9a53-2a1f0c7d9e11."
        ) from None
    execution = Execution.objects.select_related("trigger", "workflow", "retry_of", "fallback_of").filter(pk=pk).first()
    if execution is None:
        raise CommandError(f"EXECUTION_ID: there is no execution {pk}.")
    return execution
