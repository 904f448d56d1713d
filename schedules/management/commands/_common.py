"""Helpers for the schedules commands: finding triggers and turning errors into CommandError."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.core.management.base import CommandError

from schedules.exceptions import ScheduleError
from schedules.models import Trigger
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
