"""Single-field rules for workflows."""

from __future__ import annotations

import base64
import binascii
import re

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
    for name, header_value in value.items():
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


def validate_json_object(value: object) -> None:
    """Inputs are a JSON object (a dict), never a list or a scalar."""
    if not isinstance(value, dict):
        raise ValidationError('must be a JSON object, for example {"report": "daily"}.')
