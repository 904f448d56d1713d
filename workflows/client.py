"""The outbound call to a workflow's execution endpoint, and how each outcome maps to a result.

The retry policy is not here: the client reports retryable (WorkflowUnavailable) or final
(WorkflowRejected) failures, and the schedules app decides what to do about them.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import requests
import urllib3
from django.conf import settings
from standardwebhooks import Webhook

from .exceptions import WorkflowRejected, WorkflowUnavailable

logger = logging.getLogger(__name__)

# Statuses worth another try (RFC 9110 / RFC 8470 / RFC 6585), besides every 5xx.
RETRYABLE_STATUSES = frozenset({408, 425, 429})
USER_AGENT = "workflow-scheduler/1.0"
_CHUNK = 8192
_local = threading.local()


@dataclass(frozen=True)
class WorkflowCall:
    """Everything needed to call an execution endpoint once."""

    url: str
    method: str
    secret: str
    timeout_seconds: float
    idempotency_key: str
    payload: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class CallResult:
    """A 2xx answer."""

    http_status: int
    run_id: str
    body_excerpt: str
    duration_ms: int


def session() -> requests.Session:
    """One pooled Session per worker thread (a prefork child has one thread)."""
    current = getattr(_local, "session", None)
    if current is None:
        current = requests.Session()
        # Proxies and .netrc from the environment must not redirect or decorate our calls.
        current.trust_env = False
        _local.session = current
    return current


def encode_body(payload: dict[str, Any]) -> str:
    """The exact JSON text that is signed and sent."""
    return json.dumps(payload, separators=(",", ":"), sort_keys=True)


def sign(*, secret: str, message_id: str, body: str, at: datetime | None = None) -> dict[str, str]:
    """Standard Webhooks headers for ``body`` (https://www.standardwebhooks.com/)."""
    timestamp = (at or datetime.now(UTC)).replace(microsecond=0)
    signature = Webhook(secret).sign(msg_id=message_id, timestamp=timestamp, data=body)
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(int(timestamp.timestamp())),
        "webhook-signature": signature,
    }


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def _run_id_from(body: bytes) -> str:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return ""
    if isinstance(data, dict):
        for key in ("run_id", "runId", "id"):
            value = data.get(key)
            if isinstance(value, (str, int)) and str(value):
                return str(value)[:255]
    return ""


def _excerpt(body: bytes) -> str:
    return body[: settings.SCHEDULER_RESPONSE_EXCERPT_BYTES].decode("utf-8", errors="replace")


def _read_body(response: requests.Response, deadline: float) -> bytes:
    """Read up to the size cap, ending at the deadline however slowly the server trickles.

    requests' read timeout bounds the gap between bytes, not the whole body, so before each
    read the socket's timeout is cut to what is left of the deadline.
    """
    cap = settings.SCHEDULER_MAX_RESPONSE_BYTES
    connection = getattr(response.raw, "connection", None)
    sock = getattr(connection, "sock", None)
    chunks: list[bytes] = []
    size = 0
    while size < cap:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("response body not received within the deadline")
        if sock is not None:
            sock.settimeout(remaining)
        # read1: at most one socket read per call. read() keeps reading until it has the whole
        # chunk, so a server trickling a byte every few hundred ms would never hit the timeout.
        chunk = response.raw.read1(min(_CHUNK, cap - size), decode_content=True)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def call_workflow(call: WorkflowCall) -> CallResult:
    """POST (or PUT/PATCH) the signed payload; return the 2xx answer or raise.

    Raises WorkflowUnavailable (retryable) or WorkflowRejected (final).
    """
    body = encode_body(call.payload)
    headers = {
        **call.headers,
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "Idempotency-Key": call.idempotency_key,
        **sign(secret=call.secret, message_id=call.idempotency_key, body=body),
    }
    started = time.monotonic()
    deadline = started + call.timeout_seconds
    timeout = (min(settings.SCHEDULER_CONNECT_TIMEOUT_SECONDS, call.timeout_seconds), call.timeout_seconds)
    try:
        with session().request(
            call.method,
            call.url,
            data=body.encode(),
            headers=headers,
            timeout=timeout,
            allow_redirects=False,
            stream=True,
        ) as response:
            content = _read_body(response, deadline)
    except requests.exceptions.InvalidURL as exc:
        raise WorkflowRejected(f"invalid endpoint URL: {type(exc).__name__}") from exc
    except (requests.exceptions.MissingSchema, requests.exceptions.InvalidSchema) as exc:
        raise WorkflowRejected("endpoint URL must use http or https") from exc
    except (requests.exceptions.Timeout, TimeoutError, urllib3.exceptions.TimeoutError) as exc:
        raise WorkflowUnavailable(f"timed out after {call.timeout_seconds}s") from exc
    except requests.exceptions.ConnectionError as exc:
        raise WorkflowUnavailable(f"connection failed: {_describe(exc)}") from exc
    except requests.exceptions.RequestException as exc:
        raise WorkflowUnavailable(f"request failed: {_describe(exc)}") from exc
    except urllib3.exceptions.HTTPError as exc:
        # The body is read from response.raw, where requests does not wrap urllib3's errors
        # (ProtocolError for a body cut short, DecodeError for a bad gzip stream).
        raise WorkflowUnavailable(f"response broken: {_describe(exc)}") from exc
    duration_ms = int((time.monotonic() - started) * 1000)
    status = response.status_code
    excerpt = _excerpt(content)
    if 200 <= status < 300:
        return CallResult(
            http_status=status, run_id=_run_id_from(content), body_excerpt=excerpt, duration_ms=duration_ms
        )
    message = f"HTTP {status} {response.reason or ''}".strip()
    if status >= 500 or status in RETRYABLE_STATUSES:
        raise WorkflowUnavailable(
            message,
            http_status=status,
            retry_after_seconds=parse_retry_after(response.headers.get("Retry-After")),
            body_excerpt=excerpt,
        )
    if 300 <= status < 400:
        message += " (redirects are not followed)"
    raise WorkflowRejected(message, http_status=status, body_excerpt=excerpt)


def _describe(exc: Exception) -> str:
    """A short reason without the URL (which may carry credentials in its query)."""
    reason = exc.args[0] if exc.args else exc
    inner = getattr(reason, "reason", None)
    text = str(inner or reason)
    # urllib3 messages embed the URL after "with url:"; drop it.
    if "with url:" in text:
        text = text.split("with url:")[0].rstrip(" :")
    return f"{type(exc).__name__}: {text}"[:300]
