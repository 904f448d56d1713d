"""workflows.validators: signing secrets, extra headers and JSON objects."""

from __future__ import annotations

import base64

import pytest
from django.core.exceptions import ValidationError

from workflows.models import generate_secret
from workflows.validators import validate_headers, validate_json_object, validate_secret


def secret_of(size: int) -> str:
    return "whsec_" + base64.b64encode(b"\x01" * size).decode()


@pytest.mark.parametrize("secret", [generate_secret(), secret_of(24), secret_of(64)])
def test_validate_secret__standard_webhooks_secret_accepted(secret):
    """whsec_ followed by base64 of 24-64 bytes is accepted (generated secrets too)."""
    validate_secret(secret)


@pytest.mark.parametrize(
    ("secret", "message"),
    [
        (base64.b64encode(b"\x01" * 32).decode(), "whsec_"),
        ("WHSEC_" + base64.b64encode(b"\x01" * 32).decode(), "whsec_"),
        ("whsec_not base64!", "base64"),
        ("whsec_" + base64.b64encode(b"\x01" * 32).decode()[:-2], "base64"),
        (secret_of(23), "24-64"),
        (secret_of(65), "24-64"),
        ("whsec_", "24-64"),
    ],
)
def test_validate_secret__bad_format_rejected(secret, message):
    """A missing prefix, invalid base64 or a key of the wrong size is rejected with the reason."""
    with pytest.raises(ValidationError, match=message):
        validate_secret(secret)


def test_validate_headers__ordinary_headers_accepted():
    """Custom single-line string headers are accepted."""
    validate_headers({"X-Team": "growth", "Authorization": "Bearer abc", "x-empty": ""})


@pytest.mark.parametrize(
    "name",
    [
        "Idempotency-Key",
        "webhook-id",
        "Webhook-Timestamp",
        "WEBHOOK-SIGNATURE",
        "Content-Type",
        "content-length",
        "Host",
        "Transfer-Encoding",
        "Connection",
    ],
)
def test_validate_headers__reserved_headers_rejected(name):
    """Headers the scheduler sets itself cannot be overridden, in any letter case."""
    with pytest.raises(ValidationError, match="cannot be overridden"):
        validate_headers({name: "x"})


@pytest.mark.parametrize("value", ["a\r\nX-Injected: 1", "a\nb", "a\rb"])
def test_validate_headers__multi_line_values_rejected(value):
    """Header values must be single-line (no header injection)."""
    with pytest.raises(ValidationError, match="single-line"):
        validate_headers({"X-Team": value})


@pytest.mark.parametrize("value", [5, None, ["a"], {"a": "b"}])
def test_validate_headers__non_string_values_rejected(value):
    """Header values must be strings."""
    with pytest.raises(ValidationError, match="single-line string"):
        validate_headers({"X-Team": value})


@pytest.mark.parametrize("name", ["Bad Header", "X-Team:", "", "X-Ünicode", "a\nb"])
def test_validate_headers__invalid_names_rejected(name):
    """Header names must be HTTP tokens."""
    with pytest.raises(ValidationError, match="not a valid header name"):
        validate_headers({name: "x"})


@pytest.mark.parametrize("value", [["X-Team", "growth"], "X-Team: growth", None])
def test_validate_headers__not_an_object_rejected(value):
    """Headers must be a JSON object."""
    with pytest.raises(ValidationError, match="JSON object"):
        validate_headers(value)


@pytest.mark.parametrize("value", [[], "x", 1, None])
def test_validate_json_object__non_objects_rejected(value):
    """Inputs must be a JSON object."""
    with pytest.raises(ValidationError, match="JSON object"):
        validate_json_object(value)


def test_validate_json_object__object_accepted():
    """A dict is accepted."""
    validate_json_object({"report": "daily"})


def test_validate_headers__non_latin1_value_rejected():
    """A header value HTTP cannot carry (outside Latin-1) is refused when saved, not on every call."""
    with pytest.raises(ValidationError, match="Latin-1"):
        validate_headers({"X-Team": "日本"})
    validate_headers({"X-Team": "café"})
