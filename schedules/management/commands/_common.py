"""Helpers for the schedules commands: finding triggers and turning errors into CommandError."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.core.management.base import CommandError

from schedules.exceptions import ScheduleError
from schedules.models import Trigger
from workflows.management.commands._common import validation_error_message


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
    if owner is not None:
        triggers = triggers.filter(owner=owner)
    if value.isdigit():
        found = triggers.filter(pk=int(value)).first()
        if found is not None:
            return found
    # Names are unique per owner, so several matches belong to different owners.
    matches = list(triggers.filter(name=value)[:2])
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise CommandError(f"TRIGGER: several owners have a trigger named {value!r}; give its id or --owner.")
    whose = f" of user {owner.get_username()!r}" if owner is not None else ""
    raise CommandError(f"TRIGGER: no trigger{whose} has the id or name {value!r} (see `manage.py trigger list`).")
