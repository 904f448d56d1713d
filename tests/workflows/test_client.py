"""workflows.client against a real HTTP server on 127.0.0.1: outcomes, deadlines, signing, secrecy."""

from __future__ import annotations

import contextlib
import gzip
import json
import socket
import threading
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from standardwebhooks import Webhook

from workflows import network
from workflows.client import CallResult, WorkflowCall, call_workflow, parse_retry_after
from workflows.exceptions import WorkflowRejected, WorkflowUnavailable
from workflows.models import generate_secret

SECRET = generate_secret()
URL_TOKEN = "tok3n-in-query-8c1f"


class Recorder:
    """What the server received, and how it should answer the next request."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.answer = lambda handler: handler.reply(200, b'{"run_id": "run-1"}')
        self.stop = threading.Event()


class Handler(BaseHTTPRequestHandler):
    recorder: Recorder

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        self.recorder.requests.append(
            {"method": self.command, "path": self.path, "headers": dict(self.headers.items()), "body": body}
        )
        with contextlib.suppress(OSError):  # the client gave up first, as several tests intend
            self.recorder.answer(self)

    do_POST = do_PUT = do_PATCH = do_GET = _handle

    def reply(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(autouse=True)
def fresh_session():
    """Each test starts and ends without pooled connections."""
    network.close_shared_session()
    yield
    network.close_shared_session()


@pytest.fixture
def server():
    recorder = Recorder()
    handler = type("BoundHandler", (Handler,), {"recorder": recorder})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    recorder.url = f"http://127.0.0.1:{httpd.server_port}"
    yield recorder
    recorder.stop.set()
    httpd.shutdown()
    httpd.server_close()


def make_call(url: str, **overrides) -> WorkflowCall:
    fields = {
        "url": url,
        "method": "POST",
        "secret": SECRET,
        "timeout_seconds": 5,
        "idempotency_key": "0b7c7e2e-5a3c-4c55-9d4b-3f1e0d9f7a21",
        "payload": {"workflow_id": 1, "inputs": {"report": "weekly"}, "attempt": 1},
    }
    fields.update(overrides)
    return WorkflowCall(**fields)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# --- outcomes -----------------------------------------------------------------------------------


def test_call_workflow__2xx_nested_deeper_than_the_parser_goes_is_a_success_without_run_id(server):
    """An answer nested 3,000 deep was a RecursionError in the worker."""
    body = b'{"a": ' * 3000 + b"1" + b"}" * 3000
    server.answer = lambda handler: handler.reply(200, body)
    result = call_workflow(make_call(server.url + "/run"))
    assert isinstance(result, CallResult) and (result.http_status, result.run_id) == (200, "")


@pytest.mark.parametrize(
    ("status", "body", "run_id"),
    [
        (200, b'{"run_id": "run-1"}', "run-1"),
        (202, b'{"runId": "abc"}', "abc"),
        (201, b'{"id": 42}', "42"),
        (204, b"", ""),
        (200, b"not json", ""),
    ],
)
def test_call_workflow__2xx_returns_result_with_run_id(server, status, body, run_id):
    """A 2xx answer is a CallResult with the run id from the JSON body (or empty)."""
    server.answer = lambda handler: handler.reply(status, body)
    result = call_workflow(make_call(server.url + "/run"))
    assert isinstance(result, CallResult)
    assert (result.http_status, result.run_id) == (status, run_id)
    assert result.body_excerpt == body.decode()
    assert result.duration_ms >= 0


def test_call_workflow__chunked_body_read_whole(server):
    """A chunked 2xx body arriving in pieces is read to the end and its run id parsed."""

    def answer(handler):
        handler.protocol_version = "HTTP/1.1"
        handler.close_connection = True
        handler.send_response(200)
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        for piece in (b'{"run_', b'id": "chunk', b'ed-1"}'):
            handler.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            handler.wfile.flush()
            time.sleep(0.05)
        handler.wfile.write(b"0\r\n\r\n")

    server.answer = answer
    assert call_workflow(make_call(server.url + "/run")).run_id == "chunked-1"


def test_call_workflow__gzip_body_decoded(server):
    """A gzip-encoded 2xx body is decoded before the run id is read."""
    body = gzip.compress(b'{"run_id": "zipped-1"}')
    server.answer = lambda handler: handler.reply(200, body, {"Content-Encoding": "gzip"})
    result = call_workflow(make_call(server.url + "/run"))
    assert result.run_id == "zipped-1"
    assert result.body_excerpt == '{"run_id": "zipped-1"}'


@pytest.mark.parametrize("status", [503, 429])
def test_call_workflow__busy_with_retry_after_seconds_is_unavailable(server, status):
    """503 and 429 are retryable and carry the Retry-After delay."""
    server.answer = lambda handler: handler.reply(status, b"busy", {"Retry-After": "7"})
    with pytest.raises(WorkflowUnavailable) as excinfo:
        call_workflow(make_call(server.url + "/run"))
    assert excinfo.value.retryable
    assert excinfo.value.http_status == status
    assert excinfo.value.retry_after_seconds == 7.0
    assert excinfo.value.body_excerpt == "busy"


def test_call_workflow__retry_after_http_date(server):
    """A Retry-After given as an HTTP-date becomes the seconds until that date."""
    when = datetime.now(UTC) + timedelta(seconds=90)
    server.answer = lambda handler: handler.reply(429, b"", {"Retry-After": format_datetime(when, usegmt=True)})
    with pytest.raises(WorkflowUnavailable) as excinfo:
        call_workflow(make_call(server.url + "/run"))
    assert 80 <= excinfo.value.retry_after_seconds <= 90


@pytest.mark.parametrize("status", [408, 425, 500, 502, 504])
def test_call_workflow__other_retryable_statuses_are_unavailable(server, status):
    """408, 425 and 5xx are retryable, without Retry-After a None delay."""
    server.answer = lambda handler: handler.reply(status)
    with pytest.raises(WorkflowUnavailable) as excinfo:
        call_workflow(make_call(server.url + "/run"))
    assert excinfo.value.http_status == status
    assert excinfo.value.retry_after_seconds is None


@pytest.mark.parametrize("status", [400, 401, 404, 410, 422])
def test_call_workflow__client_errors_are_rejected(server, status):
    """Other 4xx answers are final."""
    server.answer = lambda handler: handler.reply(status, b'{"error": "nope"}')
    with pytest.raises(WorkflowRejected) as excinfo:
        call_workflow(make_call(server.url + "/run"))
    assert not excinfo.value.retryable
    assert excinfo.value.http_status == status
    assert str(status) in str(excinfo.value)


def test_call_workflow__redirect_not_followed(server):
    """A 302 is a final rejection and the redirect target is never requested."""

    def answer(handler):
        if handler.path == "/run":
            handler.reply(302, b"", {"Location": "/elsewhere"})
        else:
            handler.reply(200, b'{"run_id": "should-not-happen"}')

    server.answer = answer
    with pytest.raises(WorkflowRejected) as excinfo:
        call_workflow(make_call(server.url + "/run"))
    assert excinfo.value.http_status == 302
    assert "redirect" in str(excinfo.value)
    assert [request["path"] for request in server.requests] == ["/run"]


def test_call_workflow__connection_refused_is_unavailable():
    """Nobody listening on the port is retryable."""
    with pytest.raises(WorkflowUnavailable) as excinfo:
        call_workflow(make_call(f"http://127.0.0.1:{free_port()}/run"))
    assert excinfo.value.http_status is None


def test_call_workflow__silent_server_is_unavailable_within_timeout():
    """A server that accepts the connection but never answers times out after timeout_seconds."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)  # the kernel completes the handshake; nobody ever reads or answers
        started = time.monotonic()
        with pytest.raises(WorkflowUnavailable, match="timed out"):
            call_workflow(make_call(f"http://127.0.0.1:{listener.getsockname()[1]}/run", timeout_seconds=1))
        assert time.monotonic() - started < 2.5


def test_call_workflow__trickling_body_stopped_at_deadline(server):
    """A body sent one byte every 0.2 s is abandoned at the 1 s deadline, not when it ends."""

    def answer(handler):
        handler.send_response(200)
        handler.send_header("Content-Length", "100")
        handler.end_headers()
        for _ in range(100):
            if server.stop.wait(0.2):
                return
            handler.wfile.write(b"x")
            handler.wfile.flush()

    server.answer = answer
    started = time.monotonic()
    with pytest.raises(WorkflowUnavailable, match="timed out"):
        call_workflow(make_call(server.url + "/run", timeout_seconds=1))
    assert time.monotonic() - started < 1.8


def test_call_workflow__silence_after_headers_is_unavailable(server):
    """Headers then silence: a retryable timeout at the deadline, not a raw urllib3 error."""

    def answer(handler):
        handler.send_response(200)
        handler.send_header("Content-Length", "100")
        handler.end_headers()
        handler.wfile.flush()
        server.stop.wait(5)

    server.answer = answer
    started = time.monotonic()
    with pytest.raises(WorkflowUnavailable, match="timed out"):
        call_workflow(make_call(server.url + "/run", timeout_seconds=1))
    assert time.monotonic() - started < 1.8


def _trickle(handler, server, pieces, interval: float = 0.2) -> None:
    for piece in pieces:
        if server.stop.wait(interval):
            return
        handler.wfile.write(piece)
        handler.wfile.flush()


@pytest.mark.parametrize(
    "sent_slowly",
    [
        pytest.param(b"HTTP/1.1 200 OK\r\n", id="status-line"),
        pytest.param(b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 60, id="headers"),
    ],
)
def test_call_workflow__trickling_status_line_or_headers_stopped_at_deadline(server, sent_slowly):
    """A server sending its status line or headers a byte every 0.2 s is cut off at the 1 s deadline.

    Each byte arrives well within the read timeout, so only the total deadline can end this.
    """
    server.answer = lambda handler: _trickle(handler, server, [bytes([byte]) for byte in sent_slowly])
    started = time.monotonic()
    with pytest.raises(WorkflowUnavailable, match="timed out after 1s"):
        call_workflow(make_call(server.url + "/run", timeout_seconds=1))
    assert time.monotonic() - started < 1.8


def test_call_workflow__trickling_gzip_body_stopped_at_deadline(server):
    """A gzip body trickled as empty deflate blocks (nothing ever decodes) is cut off at the deadline.

    urllib3's read1 keeps reading until something decodes, so the per-read socket timeout
    alone never returns control; the deadline's watchdog must end it.
    """
    gzip_header = gzip.compress(b"")[:10]
    empty_block = b"\x00\x00\x00\xff\xff"  # a non-final stored block of length 0 (a zlib sync flush)

    def answer(handler):
        handler.send_response(200)
        handler.send_header("Content-Encoding", "gzip")
        handler.send_header("Content-Length", "100000")
        handler.end_headers()
        handler.wfile.write(gzip_header)
        _trickle(handler, server, [bytes([byte]) for byte in empty_block * 100])

    server.answer = answer
    started = time.monotonic()
    with pytest.raises(WorkflowUnavailable, match="timed out after 1s"):
        call_workflow(make_call(server.url + "/run", timeout_seconds=1))
    assert time.monotonic() - started < 1.8


def test_call_workflow__trickling_body_without_length_is_not_a_success(server):
    """A body without Content-Length, cut off by the deadline, is a timeout, never a truncated 2xx."""

    def answer(handler):
        handler.send_response(200)
        handler.end_headers()  # no Content-Length: the body ends when the connection does
        _trickle(handler, server, [b"x"] * 100)

    server.answer = answer
    with pytest.raises(WorkflowUnavailable, match="timed out"):
        call_workflow(make_call(server.url + "/run", timeout_seconds=1))


def test_call_workflow__connection_cut_mid_body_is_unavailable(server):
    """A body cut short (connection closed early) is retryable, not a raw urllib3 error."""

    def answer(handler):
        handler.send_response(200)
        handler.send_header("Content-Length", "100")
        handler.end_headers()
        handler.wfile.write(b"x" * 10)
        handler.wfile.flush()
        handler.close_connection = True
        handler.connection.shutdown(socket.SHUT_RDWR)

    server.answer = answer
    with pytest.raises(WorkflowUnavailable):
        call_workflow(make_call(server.url + "/run"))


def test_call_workflow__oversized_body_truncated(server, settings):
    """Only SCHEDULER_MAX_RESPONSE_BYTES of a huge body are read."""
    settings.SCHEDULER_MAX_RESPONSE_BYTES = 2048
    settings.SCHEDULER_RESPONSE_EXCERPT_BYTES = 10**6
    server.answer = lambda handler: handler.reply(200, b"a" * (8 * 1024 * 1024))
    result = call_workflow(make_call(server.url + "/run"))
    assert result.body_excerpt == "a" * 2048


def test_call_workflow__excerpt_limited(server, settings):
    """The excerpt kept for history is at most SCHEDULER_RESPONSE_EXCERPT_BYTES."""
    settings.SCHEDULER_RESPONSE_EXCERPT_BYTES = 16
    server.answer = lambda handler: handler.reply(500, b"e" * 5000)
    with pytest.raises(WorkflowUnavailable) as excinfo:
        call_workflow(make_call(server.url + "/run"))
    assert excinfo.value.body_excerpt == "e" * 16


# --- the request --------------------------------------------------------------------------------


def test_call_workflow__request_is_signed_and_carries_key_and_body(server):
    """The request has the Idempotency-Key, a Standard Webhooks signature that verifies, and the JSON body."""
    call = make_call(server.url + "/run", headers={"X-Team": "growth"})
    call_workflow(call)
    (request,) = server.requests
    headers = {name.lower(): value for name, value in request["headers"].items()}
    assert request["method"] == "POST"
    assert headers["idempotency-key"] == call.idempotency_key
    assert headers["webhook-id"] == call.idempotency_key
    assert headers["content-type"] == "application/json"
    assert headers["x-team"] == "growth"
    verified = Webhook(SECRET).verify(request["body"], headers)
    assert verified == call.payload
    assert json.loads(request["body"]) == call.payload
    assert abs(int(headers["webhook-timestamp"]) - time.time()) < 60


def test_call_workflow__signature_fails_with_another_secret(server):
    """The signature is bound to the workflow's secret."""
    call_workflow(make_call(server.url + "/run"))
    (request,) = server.requests
    headers = {name.lower(): value for name, value in request["headers"].items()}
    with pytest.raises(Exception, match="(?i)signature"):
        Webhook(generate_secret()).verify(request["body"], headers)


def test_call_workflow__uses_the_workflow_method(server):
    """PUT workflows are called with PUT."""
    call_workflow(make_call(server.url + "/run", method="PUT"))
    assert server.requests[0]["method"] == "PUT"


# --- secrecy of error messages ------------------------------------------------------------------


def _raise_for(server, scenario: str) -> Exception:
    if scenario == "refused":
        url = f"http://127.0.0.1:{free_port()}/run?token={URL_TOKEN}"
    else:
        url = f"{server.url}/run?token={URL_TOKEN}"
        status = {"rejected": 403, "unavailable": 503}[scenario]
        server.answer = lambda handler: handler.reply(status, b"")
    with pytest.raises((WorkflowUnavailable, WorkflowRejected)) as excinfo:
        call_workflow(make_call(url))
    return excinfo.value


@pytest.mark.parametrize("scenario", ["refused", "rejected", "unavailable"])
def test_call_workflow__errors_hide_secret_and_query(server, scenario):
    """Error messages contain neither the signing secret nor the URL's query string."""
    error = _raise_for(server, scenario)
    text = f"{error} {error!r} {error.body_excerpt}"
    assert URL_TOKEN not in text
    assert SECRET not in text
    assert SECRET.removeprefix("whsec_") not in text


def test_call_workflow__timeout_error_hides_query():
    """A timeout message does not contain the URL's query string either."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/run?token={URL_TOKEN}"
        with pytest.raises(WorkflowUnavailable) as excinfo:
            call_workflow(make_call(url, timeout_seconds=1))
    assert URL_TOKEN not in str(excinfo.value)


# --- parse_retry_after --------------------------------------------------------------------------

NOW = datetime(2027, 3, 10, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("120", 120.0),
        (" 5 ", 5.0),
        ("0", 0.0),
        ("Wed, 10 Mar 2027 12:00:30 GMT", 30.0),
        ("Wed, 10 Mar 2027 11:59:00 GMT", 0.0),
        ("soon", None),
        ("-5", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_retry_after__seconds_and_http_date(value, expected):
    """Delta-seconds and HTTP-dates become seconds to wait (never negative); junk is None."""
    assert parse_retry_after(value, now=NOW) == expected


def test_call_workflow__threads_sharing_a_full_pool_never_fail_an_answered_call(server, monkeypatch):
    """A threads (or gevent) worker's calls share one connection pool per endpoint. The read that
    ends a body hands its connection back to the pool, where another thread takes it or, the pool
    being full, it is closed: the reader must not touch that socket again. It did (setting its
    timeout), which failed with EBADF, so an answered call was recorded as failed and called again."""

    def keep_alive(handler):
        handler.protocol_version = "HTTP/1.1"
        handler.reply(200, b'{"run_id": "run-1"}')

    server.answer = keep_alive
    monkeypatch.setattr(network, "POOL_MAXSIZE", 1)  # 8 threads, 1 pooled connection: most are discarded
    network.close_shared_session()
    errors: list[str] = []

    def calls(thread: int) -> None:
        for number in range(40):
            try:
                call_workflow(make_call(server.url + "/run", idempotency_key=f"{thread}-{number}"))
            except WorkflowUnavailable as exc:
                errors.append(str(exc))

    threads = [threading.Thread(target=calls, args=(thread,)) for thread in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    assert len(server.requests) == 8 * 40


def test_worker_init__the_connection_pool_holds_as_many_connections_as_the_worker_runs_calls(
    server, monkeypatch, caplog
):
    """A threads or gevent worker started with -c 16 keeps up to 16 connections per endpoint, so
    16 calls at once neither close their connections after use nor log "Connection pool is full"."""
    from celery import signals

    import scheduler_project.celery  # noqa: F401 - connects the worker's signal handlers

    def keep_alive(handler):
        handler.protocol_version = "HTTP/1.1"
        time.sleep(0.05)  # the calls overlap
        handler.reply(200, b'{"run_id": "run-1"}')

    server.answer = keep_alive
    monkeypatch.setattr(network, "POOL_MAXSIZE", network.POOL_MAXSIZE)
    worker = type("Worker", (), {"concurrency": 16})()  # what celery's WorkController has by then
    signals.worker_init.send(sender=worker)
    assert network.POOL_MAXSIZE == 16
    network.close_shared_session()

    def calls(thread: int) -> None:
        for number in range(3):
            call_workflow(make_call(server.url + "/run", idempotency_key=f"{thread}-{number}"))

    with caplog.at_level("WARNING", logger="urllib3.connectionpool"):
        threads = [threading.Thread(target=calls, args=(thread,)) for thread in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    assert len(server.requests) == 16 * 3
    assert not [record for record in caplog.records if "pool is full" in record.getMessage()]
