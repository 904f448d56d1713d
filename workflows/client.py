"""The outbound call to a workflow's execution endpoint, and how each outcome maps to a result.

The retry policy is not here: the client reports retryable (WorkflowUnavailable) or final
(WorkflowRejected) failures, and the schedules app decides what to do about them. Where the call
may go (the SSRF guard) and how its total deadline is enforced live in workflows.network.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urljoin

import requests
import urllib3
from django.conf import settings
from django.views.decorators.debug import sensitive_variables
from standardwebhooks import Webhook

from scheduler_project import metrics

from . import network
from .exceptions import TargetRefused, WorkflowCallError, WorkflowRejected, WorkflowTimedOut, WorkflowUnavailable
from .validators import json_loads

logger = logging.getLogger(__name__)

# Statuses worth another try (RFC 9110 / RFC 8470 / RFC 6585), besides every 5xx.
RETRYABLE_STATUSES = frozenset({408, 425, 429})
USER_AGENT = "workflow-scheduler/1.0"
_CHUNK = 8192
# Redirects (RFC 9110 section 15.4), followed only with SCHEDULER_OUTBOUND_FOLLOW_REDIRECTS, at most this many.
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
MAX_REDIRECTS = 5
# requests' defaults (Accept-Encoding: gzip, deflate, ..., Connection: keep-alive).
_DEFAULT_HEADERS = dict(requests.utils.default_headers())
# Keep connections alive in the process's shared session (network.shared_adapter). False: a new
# connection per call, closed after it (bench/http_call.py measures the difference).
REUSE_CONNECTIONS = True
# Never sent on to another host, besides the workflow's own headers: requests strips only Authorization.
CREDENTIAL_HEADERS = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "cookie",
        "idempotency-key",
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
    }
)


@dataclass(frozen=True)
class WorkflowCall:
    """Everything needed to call an execution endpoint once."""

    url: str
    method: str
    secret: str = field(repr=False)  # repr=False: a logged or reported call never shows a secret
    timeout_seconds: float
    idempotency_key: str
    payload: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)
    # During a rotation overlap, the old secret: the call then carries a signature made with each.
    previous_secret: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class CallResult:
    """A 2xx answer."""

    http_status: int
    run_id: str
    body_excerpt: str
    duration_ms: int
    # The whole body as read (up to SCHEDULER_MAX_RESPONSE_BYTES), for the engine's http step output.
    content: bytes = field(default=b"", repr=False)


def encode_body(payload: dict[str, Any]) -> str:
    """The exact JSON text that is signed and sent."""
    return json.dumps(payload, separators=(",", ":"), sort_keys=True)


@sensitive_variables("secret", "previous_secret")
def sign(
    *, secret: str, message_id: str, body: str, at: datetime | None = None, previous_secret: str | None = None
) -> dict[str, str]:
    """Standard Webhooks headers for ``body`` (https://www.standardwebhooks.com/).

    With ``previous_secret`` (a rotation overlap) webhook-signature holds two space-separated
    signatures, "v1,<new> v1,<old>", and a receiver holding either secret verifies the call.
    """
    timestamp = (at or datetime.now(UTC)).replace(microsecond=0)
    keys = [secret, previous_secret] if previous_secret and previous_secret != secret else [secret]
    signature = " ".join(Webhook(key).sign(msg_id=message_id, timestamp=timestamp, data=body) for key in keys)
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
        data = json_loads(body)  # an endpoint's answer nested 1,000 deep must not crash the worker
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

    The socket is looked up before each read, never kept: the read that reaches the end of the
    body hands the connection back to the pool, where another thread may take it (its timeout is
    not ours to set) or, the pool being full, it is closed (setting a timeout on it then failed
    with EBADF, and an answered call was recorded as failed and called again).
    """
    cap = settings.SCHEDULER_MAX_RESPONSE_BYTES
    chunks: list[bytes] = []
    size = 0
    while size < cap:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("response body not received within the deadline")
        # None once the connection is back in the pool (the body is then read whole).
        sock = getattr(getattr(response.raw, "connection", None), "sock", None)
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

    Raises WorkflowUnavailable (retryable) or WorkflowRejected (final; TargetRefused when the
    SSRF guard refuses the host). The whole exchange, redirects included, ends within
    ``timeout_seconds``. Its duration goes to the scheduler_workflow_call_duration_seconds
    histogram (an in-memory observe: nothing on this path waits for the metrics).
    """
    started = time.monotonic()
    outcome = "error"  # an exception that is not ours
    try:
        result = _call_workflow(call)
        outcome = "ok"
        return result
    except WorkflowUnavailable:
        outcome = "retryable"
        raise
    except WorkflowRejected:
        outcome = "rejected"
        raise
    finally:
        metrics.observe_call(outcome, time.monotonic() - started)


def _call_workflow(call: WorkflowCall) -> CallResult:
    body = encode_body(call.payload)
    headers = {
        **call.headers,
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "Idempotency-Key": call.idempotency_key,
        **sign(secret=call.secret, previous_secret=call.previous_secret, message_id=call.idempotency_key, body=body),
    }
    started = time.monotonic()
    timed_out = WorkflowTimedOut(f"timed out after {call.timeout_seconds}s")
    with network.Deadline(call.timeout_seconds) as deadline:
        try:
            response, content = _exchange(call, body.encode(), headers, deadline)
        except WorkflowCallError:
            raise
        except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
            # Past the deadline the watchdog has shut the socket: whatever broke, the cause is time.
            if deadline.expired:
                raise timed_out from exc
            failure = _failure(exc, call)
            if failure is None:
                raise
            raise failure from exc
    if deadline.expired:
        # Cut at the deadline while a body without a length was being read: it may be partial.
        raise timed_out
    duration_ms = int((time.monotonic() - started) * 1000)
    status = response.status_code
    excerpt = _excerpt(content)
    if 200 <= status < 300:
        return CallResult(
            http_status=status,
            run_id=_run_id_from(content),
            body_excerpt=excerpt,
            duration_ms=duration_ms,
            content=content,
        )
    message = f"HTTP {status} {response.reason or ''}".strip()
    if status >= 500 or status in RETRYABLE_STATUSES:
        raise WorkflowUnavailable(
            message,
            http_status=status,
            retry_after_seconds=parse_retry_after(response.headers.get("Retry-After")),
            body_excerpt=excerpt,
        )
    if status in REDIRECT_STATUSES and settings.SCHEDULER_OUTBOUND_FOLLOW_REDIRECTS:
        message += " (no Location to follow)"
    elif 300 <= status < 400:
        message += " (redirects are not followed)"
    raise WorkflowRejected(message, http_status=status, body_excerpt=excerpt)


def _failure(exc: Exception, call: WorkflowCall) -> WorkflowCallError | None:
    """Our error for a transport failure, or None for one we do not know (re-raised as is)."""
    if isinstance(exc, (requests.exceptions.Timeout, TimeoutError, urllib3.exceptions.TimeoutError)):
        return WorkflowTimedOut(f"timed out after {call.timeout_seconds}s")
    if isinstance(exc, requests.exceptions.InvalidURL):
        return WorkflowRejected(f"invalid endpoint URL: {type(exc).__name__}")
    if isinstance(exc, (requests.exceptions.MissingSchema, requests.exceptions.InvalidSchema)):
        return WorkflowRejected("endpoint URL must use http or https")
    if isinstance(exc, requests.exceptions.ConnectionError):
        return WorkflowUnavailable(f"connection failed: {_describe(exc)}")
    if isinstance(exc, requests.exceptions.RequestException):
        return WorkflowUnavailable(f"request failed: {_describe(exc)}")
    if isinstance(exc, urllib3.exceptions.HTTPError):
        # The body is read from response.raw, where requests does not wrap urllib3's errors
        # (ProtocolError for a body cut short, DecodeError for a bad gzip stream).
        return WorkflowUnavailable(f"response broken: {_describe(exc)}")
    if isinstance(exc, OSError):
        return WorkflowUnavailable(f"connection failed: {_describe(exc)}")
    return None


def _exchange(
    call: WorkflowCall, data: bytes, headers: dict[str, str], deadline: network.Deadline
) -> tuple[requests.Response, bytes]:
    """Send the request, following redirects hop by hop if allowed; return the last answer and its body.

    Each hop's host is resolved and vetted (network.vet) and the connection made to the vetted
    address. A hop to another origin loses the credential and workflow headers for good.
    """
    follow = settings.SCHEDULER_OUTBOUND_FOLLOW_REDIRECTS
    url, method, body = call.url, call.method, data
    defaults = _DEFAULT_HEADERS if REUSE_CONNECTIONS else {**_DEFAULT_HEADERS, "Connection": "close"}
    # The adapter is used directly, not through Session.send: no proxy, .netrc or cookie from the
    # environment or the session takes part, and redirects are ours to follow (or not).
    adapter = network.shared_adapter() if REUSE_CONNECTIONS else network.PinnedAdapter()
    try:
        for hop in range(MAX_REDIRECTS + 1):
            request = requests.Request(method, url, data=body, headers={**defaults, **headers}).prepare()
            target = _vet(request.url or "", deadline)
            remaining = deadline.remaining()
            if remaining <= 0:
                raise TimeoutError("deadline passed before the request was sent")
            timeout = (min(settings.SCHEDULER_CONNECT_TIMEOUT_SECONDS, remaining), remaining)
            pinned = network.Hop(target=target, deadline=deadline)
            with adapter.send(request, stream=True, timeout=timeout, verify=True, hop=pinned) as response:
                location = _location(response) if follow else None
                if location is None:
                    return response, _read_body(response, deadline.at)
            status = response.status_code
            if hop == MAX_REDIRECTS:
                message = f"HTTP {status} {response.reason or ''}".strip()
                raise WorkflowRejected(f"{message} (more than {MAX_REDIRECTS} redirects)", http_status=status)
            next_url = urljoin(request.url or "", location)
            if (status == 303 and method != "HEAD") or (status in (301, 302) and method == "POST"):
                # As browsers and requests do: the next request is a GET without the body.
                method, body = "GET", None
                headers = {name: value for name, value in headers.items() if name.lower() != "content-type"}
            if not _same_origin(request.url or "", next_url):
                custom = {name.lower() for name in call.headers}
                headers = {
                    name: value
                    for name, value in headers.items()
                    if name.lower() not in CREDENTIAL_HEADERS and name.lower() not in custom
                }
            url = next_url
    finally:
        if not REUSE_CONNECTIONS:
            adapter.close()
    raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises


def _vet(url: str, deadline: network.Deadline) -> network.Target:
    """Resolve and vet the URL's host (TargetRefused if it is not allowed)."""
    parts = urllib3.util.parse_url(url)
    scheme = (parts.scheme or "").lower()
    if scheme not in network.ALLOWED_SCHEMES:
        raise TargetRefused(f"refused: only http and https URLs are called, not {scheme or 'none'}")
    if not parts.host:
        raise WorkflowRejected("invalid endpoint URL: no host")
    host = network.normal_host(parts.host)
    try:
        return network.vet(
            host,
            parts.port or network.DEFAULT_PORTS[scheme],
            timeout=deadline.remaining(),
            implicit_host=network.builtin_host(url),
        )
    except TimeoutError:
        raise
    except (OSError, UnicodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise WorkflowUnavailable(f"connection failed: cannot resolve {host} ({reason})"[:300]) from exc


def _location(response: requests.Response) -> str | None:
    """The Location of a redirect, as requests reads it (UTF-8 sent as Latin-1), else None."""
    if response.status_code not in REDIRECT_STATUSES:
        return None
    location = response.headers.get("location")
    if not location:
        return None
    try:
        return location.encode("latin1").decode("utf8")
    except UnicodeError:
        return location


def _same_origin(old: str, new: str) -> bool:
    """Same scheme, host and port; an http to https upgrade on the default ports counts as the same."""
    before, after = urllib3.util.parse_url(old), urllib3.util.parse_url(new)
    if network.normal_host(before.host or "") != network.normal_host(after.host or ""):
        return False
    old_scheme, new_scheme = (before.scheme or "").lower(), (after.scheme or "").lower()
    old_port = before.port or network.DEFAULT_PORTS.get(old_scheme)
    new_port = after.port or network.DEFAULT_PORTS.get(new_scheme)
    if (old_scheme, old_port) == (new_scheme, new_port):
        return True
    return (old_scheme, old_port, new_scheme, new_port) == ("http", 80, "https", 443)


def _describe(exc: Exception) -> str:
    """A short reason without the URL (which may carry credentials in its query)."""
    reason = exc.args[0] if exc.args else exc
    inner = getattr(reason, "reason", None)
    text = str(inner or reason)
    # urllib3 messages embed the URL after "with url:"; drop it.
    if "with url:" in text:
        text = text.split("with url:")[0].rstrip(" :")
    return f"{type(exc).__name__}: {text}"[:300]
