"""Single-field rules for workflows."""

from __future__ import annotations

import base64
import binascii
import json
import re
from functools import lru_cache
from typing import Any
from zoneinfo import available_timezones

from django.core.exceptions import ValidationError

SECRET_PREFIX = "whsec_"  # noqa: S105 - the format's prefix, not a secret
# Headers the worker sets itself: a workflow may not override them.
RESERVED_HEADERS = frozenset(
    {
        "content-type",
        "content-length",
        "host",
        "idempotency-key",
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
        "transfer-encoding",
        "connection",
    }
)
_HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")
# Bounds of a workflow's extra headers: far above what an endpoint needs, far below what would make
# every call fail (servers refuse requests with more than ~8-16 KiB of headers).
MAX_HEADERS = 50
MAX_HEADER_NAME_LENGTH = 128
MAX_HEADER_VALUE_LENGTH = 4096
MAX_HEADERS_BYTES = 16384
# JSON from users (inputs, headers, windows, a run's body) nests at most this deep: deeper is refused
# with a 400 naming the field (Python's parser would hit its recursion limit near 1,000 levels).
MAX_JSON_DEPTH = 32


class JSONTooDeep(ValueError):
    """JSON text nested deeper than the parser can follow."""


def json_loads(text: str | bytes) -> Any:
    """json.loads, with nesting too deep for Python's parser as a ValueError (JSONTooDeep), not a RecursionError."""
    try:
        return json.loads(text)
    except RecursionError:
        raise JSONTooDeep(f"is nested deeper than {MAX_JSON_DEPTH} levels.") from None


def _not_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # an unpaired surrogate, e.g. from "\ud800" in JSON
        return True
    return False


def json_problem(value: Any, *, max_depth: int = MAX_JSON_DEPTH) -> tuple[str, str] | None:
    """Why parsed JSON can't be stored, as (path, message), or None.

    Nested deeper than ``max_depth`` containers, or text (a key or a string) that is not Unicode:
    an unpaired surrogate such as ``"\\ud800"``, which PostgreSQL's jsonb refuses (and SQLite
    would keep, so both refuse it here). ``path`` is dotted from the top, e.g. ``region.0``.
    """
    stack: list[tuple[Any, int, str]] = [(value, 1, "")]
    while stack:
        item, depth, path = stack.pop()
        if isinstance(item, dict | list):
            if depth > max_depth:
                return path, f"is nested deeper than {max_depth} levels."
            children = item.items() if isinstance(item, dict) else enumerate(item)
            for key, child in children:
                if isinstance(key, str) and _not_unicode(key):
                    return path, "has a key that is not Unicode text (an unpaired surrogate such as \\ud800)."
                stack.append((child, depth + 1, f"{path}.{key}" if path else str(key)))
        elif isinstance(item, str) and _not_unicode(item):
            return path, "is not Unicode text (an unpaired surrogate such as \\ud800)."
    return None


def validate_storable_json(value: object) -> None:
    problem = json_problem(value)
    if problem is not None:
        path, message = problem
        raise ValidationError(f"{path}: {message}" if path else message)


def validate_secret(value: str) -> None:
    """A Standard Webhooks secret: ``whsec_`` then base64 of 24 to 64 random bytes."""
    if not value.startswith(SECRET_PREFIX):
        raise ValidationError("must start with 'whsec_' followed by base64 (Standard Webhooks format).")
    try:
        raw = base64.b64decode(value[len(SECRET_PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        raise ValidationError("after 'whsec_' must come valid base64.") from None
    if not 24 <= len(raw) <= 64:
        raise ValidationError(f"must decode to 24-64 bytes, not {len(raw)}.")


def validate_headers(value: object) -> None:
    """Extra headers: a JSON object of header name to string value."""
    if not isinstance(value, dict):
        raise ValidationError('must be a JSON object, for example {"X-Team": "growth"}.')
    if len(value) > MAX_HEADERS:
        raise ValidationError(f"at most {MAX_HEADERS} headers, not {len(value)}.")
    size = 0
    for name, header_value in value.items():
        if len(name) > MAX_HEADER_NAME_LENGTH:
            raise ValidationError(f"header names are at most {MAX_HEADER_NAME_LENGTH} characters ({name[:20]!r}...).")
        if not _HEADER_NAME.match(name):
            raise ValidationError(f"{name!r} is not a valid header name.")
        if name.lower() in RESERVED_HEADERS:
            raise ValidationError(f"{name!r} is set by the scheduler and cannot be overridden.")
        if not isinstance(header_value, str) or "\n" in header_value or "\r" in header_value:
            raise ValidationError(f"the value of {name!r} must be a single-line string.")
        try:
            header_value.encode("latin-1")
        except UnicodeEncodeError:
            # HTTP/1.1 header values are Latin-1 on the wire; requests would fail every call.
            raise ValidationError(f"the value of {name!r} must be ASCII or Latin-1 text.") from None
        if len(header_value) > MAX_HEADER_VALUE_LENGTH:
            raise ValidationError(f"the value of {name!r} is longer than {MAX_HEADER_VALUE_LENGTH} characters.")
        size += len(name) + len(header_value) + 4  # "name: value\r\n"
    if size > MAX_HEADERS_BYTES:
        raise ValidationError(f"the headers add up to {size} bytes; at most {MAX_HEADERS_BYTES}.")


def validate_json_object(value: object) -> None:
    """Inputs are a JSON object (a dict), never a list or a scalar."""
    if not isinstance(value, dict):
        raise ValidationError('must be a JSON object, for example {"report": "daily"}.')
    validate_storable_json(value)


@lru_cache(maxsize=1)
def _known_zones() -> frozenset[str]:
    return frozenset(available_timezones())


def validate_timezone_name(value: str) -> None:
    """An IANA time zone name, e.g. 'Europe/Paris' (the same list and message as schedules.timing.zone)."""
    if value not in _known_zones():
        raise ValidationError(f"{value!r} is not an IANA time zone name (for example 'America/Los_Angeles' or 'UTC').")
