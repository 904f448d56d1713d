"""Reads configuration from the environment, with clear errors for bad values."""

from __future__ import annotations

import base64
import os
import re

from cryptography.fernet import Fernet
from django.core.exceptions import ImproperlyConfigured
from django.utils.crypto import salted_hmac

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def env_str(name: str, default: str | None = None) -> str:
    """Return a string setting; a missing one without default stops start-up."""
    value = os.environ.get(name)
    if value is None:
        if default is None:
            raise ImproperlyConfigured(f"Set the environment variable {name}.")
        return default
    return value


def env_bool(name: str, default: bool) -> bool:
    """Return a boolean setting: one of 1/0, true/false, yes/no, on/off."""
    value = os.environ.get(name)
    if value is None:
        return default
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name}={value!r}: use one of 1/0, true/false, yes/no, on/off.")


def env_int(name: str, default: int, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """Return an integer setting within [minimum, maximum]."""
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={value!r}: must be a whole number.") from None
    if minimum is not None and number < minimum:
        raise ImproperlyConfigured(f"{name}={number}: must be at least {minimum}.")
    if maximum is not None and number > maximum:
        raise ImproperlyConfigured(f"{name}={number}: must be at most {maximum}.")
    return number


def env_float(name: str, default: float, *, minimum: float | None = None) -> float:
    """Return a number setting of at least ``minimum``."""
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        number = float(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={value!r}: must be a number.") from None
    if minimum is not None and number < minimum:
        raise ImproperlyConfigured(f"{name}={number}: must be at least {minimum}.")
    return number


def env_list(name: str, default: list[str]) -> list[str]:
    """Return a comma-separated list setting."""
    value = os.environ.get(name)
    if value is None:
        return default
    return [item.strip() for item in value.split(",") if item.strip()]


def env_fernet_keys(name: str, *, fallback_secret: str | None) -> list[str]:
    """Return a comma-separated list of Fernet keys, each checked; the first one encrypts.

    Without the variable, ``fallback_secret`` (local development only) yields one derived key;
    with no fallback either, start-up stops. Messages name the variable and the key's position,
    never the key.
    """
    keys = env_list(name, [])
    if not keys:
        if fallback_secret is None:
            raise ImproperlyConfigured(
                f"Set the environment variable {name} (comma-separated Fernet keys; the first encrypts). Generate "
                'one: python -c "from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())"'
            )
        return [derive_fernet_key(fallback_secret)]
    for position, key in enumerate(keys, start=1):
        try:
            Fernet(key)
        except ValueError:
            raise ImproperlyConfigured(
                f"{name}: key {position} of {len(keys)} is not a Fernet key (32 url-safe base64-encoded bytes)."
            ) from None
    return keys


def derive_fernet_key(secret: str) -> str:
    """A Fernet key derived from ``secret`` (SECRET_KEY), for local development without SCHEDULER_SECRET_KEYS."""
    digest = salted_hmac("scheduler.secret-keys", "fernet", secret=secret, algorithm="sha256").digest()
    return base64.urlsafe_b64encode(digest).decode()


_RATE_PERIODS = {"s": "second", "m": "minute", "h": "hour", "d": "day"}


def env_rate(name: str, default: str) -> str:
    """Return a request rate as DRF's throttles read it: 'N/period', period one of s, m, h, d (or sec, min, ...)."""
    value = os.environ.get(name, default).strip()
    number, _, period = value.partition("/")
    if not number.isdigit() or int(number) < 1 or not period or period[0] not in _RATE_PERIODS:
        raise ImproperlyConfigured(f"{name}={value!r}: give requests per period, e.g. 60/min, 1000/hour or 5/s.")
    return value


_HEADER_NAME = re.compile(r"^[A-Za-z0-9-]+$")


def env_proxy_ssl_header(name: str, default: str) -> tuple[str, str] | None:
    """Return Django's SECURE_PROXY_SSL_HEADER from "Header-Name: value" (empty: None, trust no header)."""
    value = os.environ.get(name, default).strip()
    if not value:
        return None
    header, separator, expected = (part.strip() for part in value.partition(":"))
    if not separator or not _HEADER_NAME.match(header) or not expected:
        raise ImproperlyConfigured(
            f"{name}={value!r}: give the header the proxy sets and its HTTPS value, e.g. 'X-Forwarded-Proto: https', "
            "or leave it empty to trust none."
        )
    return "HTTP_" + header.upper().replace("-", "_"), expected


def env_choice(name: str, default: str, choices: tuple[str, ...]) -> str:
    """Return a setting that must be one of ``choices`` (compared in lower case)."""
    value = os.environ.get(name, default).strip().lower()
    if value not in choices:
        raise ImproperlyConfigured(f"{name}={value!r}: use one of {', '.join(choices)}.")
    return value
