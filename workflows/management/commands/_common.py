"""Helpers shared by the management commands: parsing, error messages and tables."""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit
from zoneinfo import ZoneInfo

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import NON_FIELD_ERRORS, ValidationError
from django.core.management.base import CommandError
from django.db.models import QuerySet

from workflows.models import Workflow
from workflows.validators import JSONTooDeep, json_loads, json_problem

EMPTY = "-"


def positive_int(text: str) -> int:
    """argparse type: a whole number of at least 1 (argparse names the option in its error)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {value}")
    return value


def parse_json_object(text: str | None, *, option: str) -> dict[str, Any] | None:
    """The JSON object given to ``option``, or None when the option was not given."""
    if text is None:
        return None
    try:
        value = json_loads(text)
    except JSONTooDeep as exc:
        raise CommandError(f"{option}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise CommandError(
            f"{option}: not valid JSON ({exc.msg} at column {exc.colno}); "
            f"""give an object, for example '{{"region": "us"}}'."""
        ) from None
    if not isinstance(value, dict):
        raise CommandError(f"""{option}: must be a JSON object, for example '{{"region": "us"}}'.""")
    problem = json_problem(value)
    if problem is not None:
        path, message = problem
        raise CommandError(f"{option}: {path}: {message}" if path else f"{option}: {message}")
    return value


def validation_error_message(exc: ValidationError, options: Mapping[str, str]) -> str:
    """'--option: message' lines for a model ValidationError (fields renamed to their options)."""
    if not hasattr(exc, "error_dict"):
        return " ".join(exc.messages)
    lines = []
    for field, messages in exc.message_dict.items():
        text = " ".join(messages)
        if field == NON_FIELD_ERRORS:
            lines.append(text)
        else:
            lines.append(f"{options.get(field, field)}: {text}")
    return "\n".join(lines)


def command_error(exc: ValidationError, options: Mapping[str, str]) -> CommandError:
    return CommandError(validation_error_message(exc, options))


def user_get(username: str, *, option: str = "--owner") -> AbstractBaseUser:
    user_model = get_user_model()
    try:
        return user_model._default_manager.get_by_natural_key(username)
    except user_model.DoesNotExist:
        raise CommandError(f"{option}: there is no user {username!r}.") from None


def by_id_or_name(queryset: QuerySet, value: str, *, owner: AbstractBaseUser | None, noun: str, option: str) -> Any:
    """One object of ``queryset`` by id or name (of ``owner`` when given).

    Names are unique per owner, so a name that matches several objects belongs to several
    owners: the caller is asked for the id or --owner.
    """
    if owner is not None:
        queryset = queryset.filter(owner=owner)
    if value.isdigit():
        found = queryset.filter(pk=int(value)).first()
        if found is not None:
            return found
    matches = list(queryset.filter(name=value)[:2])
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise CommandError(f"{option}: several owners have a {noun} named {value!r}; give its id or --owner.")
    whose = f" of user {owner.get_username()!r}" if owner is not None else ""
    raise CommandError(f"{option}: no {noun}{whose} has the id or name {value!r} (see `manage.py {noun} list`).")


def workflow_get(value: str, *, owner: AbstractBaseUser | None = None, option: str = "--workflow") -> Workflow:
    """A workflow by id or name (of ``owner`` when given)."""
    return by_id_or_name(Workflow.objects.select_related("owner"), value, owner=owner, noun="workflow", option=option)


def redact_url(url: str) -> str:
    """The URL without credentials or query string, which may carry tokens."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "..." if parts.query else "", ""))


def format_utc(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if value else EMPTY


def format_local(value: datetime | None, zone: ZoneInfo) -> str:
    return value.astimezone(zone).strftime("%Y-%m-%d %H:%M:%S %Z") if value else EMPTY


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A plain text table with columns as wide as their widest cell."""
    cells = [[str(cell) for cell in headers]] + [
        [EMPTY if c is None or c == "" else str(c) for c in row] for row in rows
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in cells
    )
