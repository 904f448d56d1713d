"""The SSRF guard (workflows.network): vetted addresses, pinned and pooled connections, redirects, save-time check.

Real listeners on 127.0.0.1 and ::1 only. Names are resolved by a fake getaddrinfo, and every
socket connect in these tests is checked to go to loopback: a blocked address is refused before
any connection is attempted.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import os
import re
import socket
import ssl
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from django.core.exceptions import ValidationError
from django.urls import reverse

from workflows import network, services
from workflows.client import WorkflowCall, call_workflow
from workflows.exceptions import TargetRefused, WorkflowRejected, WorkflowUnavailable
from workflows.models import generate_secret

SECRET = generate_secret()
URL_TOKEN = "tok3n-in-query-5d2a"
HINT = "SCHEDULER_OUTBOUND_ALLOW_NETWORKS"


# --- fixtures -----------------------------------------------------------------------------------


class Listener:
    """An HTTP server on a loopback address that records requests and answers from ``answer``."""

    def __init__(
        self, host: str = "127.0.0.1", tls: ssl.SSLContext | None = None, *, keep_alive: bool = False, port: int = 0
    ) -> None:
        self.requests: list[dict] = []
        self.peers: list[tuple] = []  # one per accepted connection
        self.answer = lambda handler: handler.reply(200, b'{"run_id": "run-1"}')
        self.stop = threading.Event()
        listener = self

        class Handler(BaseHTTPRequestHandler):
            # HTTP/1.1 keeps the connection open after an answer with a Content-Length; 1.0 closes it.
            protocol_version = "HTTP/1.1" if keep_alive else "HTTP/1.0"

            def setup(self) -> None:
                super().setup()
                listener.peers.append(self.client_address)

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                listener.requests.append(
                    {
                        "method": self.command,
                        "path": self.path,
                        "headers": {name.lower(): value for name, value in self.headers.items()},
                        "body": self.rfile.read(length),
                        "peer": self.client_address,
                    }
                )
                with contextlib.suppress(OSError):
                    listener.answer(self)

            do_POST = do_PUT = do_PATCH = do_GET = _handle  # noqa: N815 - http.server's naming

            def reply(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        server_class = type(
            "Server", (ThreadingHTTPServer,), {"address_family": socket.AF_INET6 if ":" in host else socket.AF_INET}
        )
        self.httpd = server_class((host, port), Handler)
        self.httpd.daemon_threads = True
        if tls is not None:
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def url(self, path: str = "/run", *, host: str = "127.0.0.1", scheme: str = "http") -> str:
        return f"{scheme}://{host}:{self.port}{path}"

    @property
    def connections(self) -> int:
        return len(self.peers)

    def close(self) -> None:
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def listener():
    server = Listener()
    yield server
    server.close()


@pytest.fixture
def other_listener():
    server = Listener()
    yield server
    server.close()


@pytest.fixture(autouse=True)
def fresh_session():
    """Each test starts and ends without pooled connections."""
    network.close_shared_session()
    yield
    network.close_shared_session()


@pytest.fixture(autouse=True)
def connects(monkeypatch):
    """Every socket connect in these tests; anything but loopback fails the test at once."""
    attempts: list[tuple] = []

    class GuardedSocket(socket.socket):
        def connect(self, address):
            attempts.append(address)
            host = str(address[0]).split("%", 1)[0]
            assert ipaddress.ip_address(host).is_loopback, f"tried to connect to {address}"
            return super().connect(address)

    monkeypatch.setattr(network.socket, "socket", GuardedSocket)
    return attempts


@pytest.fixture
def dns(monkeypatch):
    """A fake resolver: ``dns.names[name] = [ip, ...]`` (or an exception, or a callable); other names as usual."""

    class FakeDNS:
        def __init__(self) -> None:
            self.names: dict = {}
            self.lookups: list[str] = []

    fake = FakeDNS()
    real = socket.getaddrinfo

    def getaddrinfo(host, port, family=0, type=0, proto=0, flags=0):  # noqa: A002 - socket's signature
        name = str(host).lower().rstrip(".")
        if name not in fake.names:
            return real(host, port, family, type, proto, flags)
        fake.lookups.append(name)
        answer = fake.names[name]
        answer = answer() if callable(answer) else answer
        if isinstance(answer, BaseException):
            raise answer
        return [
            (socket.AF_INET6, socket.SOCK_STREAM, 6, "", (ip, port, 0, 0))
            if ":" in ip
            else (socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port))
            for ip in answer
        ]

    monkeypatch.setattr(network.socket, "getaddrinfo", getaddrinfo)
    return fake


@pytest.fixture
def no_allowlist(settings):
    """The production default: nothing allowlisted, loopback refused."""
    settings.SCHEDULER_OUTBOUND_ALLOW_NETWORKS = []
    settings.SCHEDULER_OUTBOUND_ALLOW_HOSTS = []
    settings.SCHEDULER_PUBLIC_BASE_URL = "http://scheduler.invalid:8000"
    return settings


def make_call(url: str, **overrides) -> WorkflowCall:
    fields = {
        "url": url,
        "method": "POST",
        "secret": SECRET,
        "timeout_seconds": 5,
        "idempotency_key": "5e0c8a3e-8f5b-4c0e-b1d7-1f8e1c2a9b10",
        "payload": {"workflow_id": 1, "inputs": {}, "attempt": 1},
    }
    fields.update(overrides)
    return WorkflowCall(**fields)


def ipv6_loopback_available() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


# --- loopback, literal addresses and schemes ----------------------------------------------------


def test_call_workflow__loopback_refused_without_allowlist_and_never_connected(no_allowlist, connects):
    """127.0.0.1 is refused (final, with the reason and the setting to change) before any connection."""
    with socket.socket() as bare:
        bare.bind(("127.0.0.1", 0))
        bare.listen(1)
        with pytest.raises(TargetRefused) as excinfo:
            call_workflow(make_call(f"http://127.0.0.1:{bare.getsockname()[1]}/run"))
        bare.settimeout(0.2)
        with pytest.raises(TimeoutError):
            bare.accept()  # nobody knocked
    assert str(excinfo.value) == f"refused: 127.0.0.1 is loopback; allow it with {HINT}"
    assert not excinfo.value.retryable
    assert isinstance(excinfo.value, WorkflowRejected)
    assert connects == []


def test_call_workflow__loopback_allowed_when_allowlisted(listener, settings):
    """With 127.0.0.0/8 in SCHEDULER_OUTBOUND_ALLOW_NETWORKS the call goes through."""
    settings.SCHEDULER_OUTBOUND_ALLOW_NETWORKS = ["127.0.0.0/8"]
    assert call_workflow(make_call(listener.url())).run_id == "run-1"
    assert len(listener.requests) == 1


@pytest.mark.skipif(not ipv6_loopback_available(), reason="no IPv6 loopback on this machine")
def test_call_workflow__ipv6_loopback_refused_then_allowed(settings, no_allowlist, connects):
    """[::1] is refused by default and called when ::1/128 is allowlisted."""
    server = Listener("::1")
    try:
        url = server.url(host="[::1]")
        with pytest.raises(TargetRefused, match=r"refused: ::1 is loopback"):
            call_workflow(make_call(url))
        assert connects == []
        settings.SCHEDULER_OUTBOUND_ALLOW_NETWORKS = ["::1/128"]
        assert call_workflow(make_call(url)).run_id == "run-1"
        assert server.requests[0]["headers"]["host"] == f"[::1]:{server.port}"
    finally:
        server.close()


def test_call_workflow__ipv4_mapped_ipv6_loopback_refused_then_allowed_by_ipv4_network(
    listener, settings, no_allowlist, connects
):
    """[::ffff:127.0.0.1] is judged as 127.0.0.1: refused by default, allowed by 127.0.0.0/8, reached over IPv4."""
    url = listener.url(host="[::ffff:127.0.0.1]")
    with pytest.raises(TargetRefused, match=r"refused: ::ffff:127\.0\.0\.1 is loopback"):
        call_workflow(make_call(url))
    assert connects == []
    settings.SCHEDULER_OUTBOUND_ALLOW_NETWORKS = ["127.0.0.0/8"]
    assert call_workflow(make_call(url)).run_id == "run-1"
    assert connects == [("127.0.0.1", listener.port)]


@pytest.mark.parametrize(
    ("host", "reason"),
    [
        ("169.254.169.254", "link-local (cloud metadata)"),
        ("100.64.0.1", "shared address space (100.64.0.0/10)"),
        ("10.0.0.5", "private"),
        ("192.168.1.1", "private"),
        ("0.0.0.0", "unspecified"),  # noqa: S104 - an address to refuse, not a bind
        ("224.0.0.1", "multicast"),
        ("[fd00:ec2::254]", "link-local (cloud metadata)"),
        ("[fe80::1]", "link-local"),
        ("[64:ff9b::a9fe:a9fe]", "link-local (cloud metadata)"),
    ],
)
def test_call_workflow__blocked_literal_addresses_refused_without_connecting(settings, connects, host, reason):
    """Metadata, shared, private, unspecified, multicast and NAT64-embedded addresses are refused before connecting."""
    with pytest.raises(TargetRefused) as excinfo:
        call_workflow(make_call(f"http://{host}/latest/meta-data/?token={URL_TOKEN}"))
    assert str(excinfo.value) == f"refused: {host.strip('[]')} is {reason}; allow it with {HINT}"
    assert connects == []


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/run", "file:///etc/passwd", "gopher://127.0.0.1:70/_x"])
def test_call_workflow__only_http_and_https(url, connects):
    """Other schemes are refused, final."""
    with pytest.raises(TargetRefused, match="only http and https"):
        call_workflow(make_call(url))
    assert connects == []


def test_call_workflow__refusal_message_hides_query_and_credentials(no_allowlist, dns):
    """A refusal names the host and address, never the URL's query string or user info."""
    dns.names["db.internal.test"] = ["10.0.0.5"]
    with pytest.raises(TargetRefused) as excinfo:
        call_workflow(make_call(f"http://bob:hunter2@db.internal.test:5432/x?token={URL_TOKEN}"))
    text = f"{excinfo.value} {excinfo.value!r}"
    assert URL_TOKEN not in text and "hunter2" not in text and "bob" not in text
    assert str(excinfo.value) == (
        "refused: db.internal.test resolves to 10.0.0.5 (private); allow it with "
        "SCHEDULER_OUTBOUND_ALLOW_NETWORKS or SCHEDULER_OUTBOUND_ALLOW_HOSTS"
    )


# --- names: resolved once, connected to the vetted address --------------------------------------


def test_call_workflow__name_resolving_to_private_address_refused(no_allowlist, dns, connects):
    """A DNS name that resolves to 10.0.0.5 is refused, and nothing is connected."""
    dns.names["api.example.test"] = ["10.0.0.5"]
    with pytest.raises(TargetRefused, match=r"api\.example\.test resolves to 10\.0\.0\.5 \(private\)"):
        call_workflow(make_call("https://api.example.test/hook"))
    assert connects == []


def test_call_workflow__name_connects_to_vetted_address_with_original_host_header(listener, settings, dns, connects):
    """A fake name resolving to 127.0.0.1 (allowlisted) is resolved once and called there, Host: the name."""
    settings.SCHEDULER_OUTBOUND_ALLOW_NETWORKS = ["127.0.0.0/8"]
    answers = iter([["127.0.0.1"], ["10.0.0.5"]])  # a rebinding resolver: the second answer would be private
    dns.names["hooks.example.test"] = lambda: next(answers)
    call_workflow(make_call(listener.url(host="hooks.example.test")))
    assert dns.lookups == ["hooks.example.test"]
    assert connects == [("127.0.0.1", listener.port)]
    assert listener.requests[0]["headers"]["host"] == f"hooks.example.test:{listener.port}"


def test_call_workflow__mixed_answer_uses_only_the_allowed_addresses(listener, settings, dns, connects):
    """A name answering a private and an allowed address is called on the allowed one only."""
    settings.SCHEDULER_OUTBOUND_ALLOW_NETWORKS = ["127.0.0.0/8"]
    dns.names["mixed.example.test"] = ["10.0.0.5", "127.0.0.1"]
    call_workflow(make_call(listener.url(host="mixed.example.test")))
    assert connects == [("127.0.0.1", listener.port)]


def test_call_workflow__allowlisted_host_name_skips_address_checks(listener, settings, no_allowlist, dns, connects):
    """A name in SCHEDULER_OUTBOUND_ALLOW_HOSTS is called whatever it resolves to (here loopback)."""
    settings.SCHEDULER_OUTBOUND_ALLOW_HOSTS = ["Internal.Example.Test"]
    dns.names["internal.example.test"] = ["127.0.0.1"]
    assert call_workflow(make_call(listener.url(host="internal.example.test"))).run_id == "run-1"
    dns.names["other.example.test"] = ["127.0.0.1"]
    with pytest.raises(TargetRefused):
        call_workflow(make_call(listener.url(host="other.example.test")))


def test_call_workflow__unresolvable_name_is_retryable(dns, connects):
    """A name that does not resolve is a retryable connection failure naming the host."""
    dns.names["gone.example.test"] = socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    with pytest.raises(WorkflowUnavailable, match=r"cannot resolve gone\.example\.test") as excinfo:
        call_workflow(make_call("http://gone.example.test/run"))
    assert excinfo.value.retryable
    assert connects == []


def test_call_workflow__slow_resolver_bounded_by_deadline(dns):
    """A resolver that hangs ends the call at its deadline."""

    def hang():
        time.sleep(3)
        return ["127.0.0.1"]

    dns.names["slow.example.test"] = hang
    started = time.monotonic()
    with pytest.raises(WorkflowUnavailable, match="timed out after 1s"):
        call_workflow(make_call("http://slow.example.test/run", timeout_seconds=1))
    assert time.monotonic() - started < 1.8


# --- TLS: SNI and certificate checked against the name, connection to the vetted IP -------------


def _certificates(tmp_path: Path, name: str) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for ``name``: (ca.pem, cert.pem, key.pem)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = tmp_path / "ca.pem", tmp_path / "cert.pem", tmp_path / "key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return paths


def _tls_listener(tmp_path: Path, monkeypatch, *, keep_alive: bool = False) -> Listener:
    ca, cert, key = _certificates(tmp_path, "api.example.test")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server_names: list[str | None] = []  # one per TLS handshake
    context.sni_callback = lambda _sock, name, _context: server_names.append(name)
    monkeypatch.setattr("requests.adapters.DEFAULT_CA_BUNDLE_PATH", str(ca))
    server = Listener(tls=context, keep_alive=keep_alive)
    server.server_names = server_names
    return server


@pytest.fixture
def tls_listener(tmp_path, monkeypatch):
    """An HTTPS listener on 127.0.0.1 with a certificate for api.example.test, trusted by the client."""
    server = _tls_listener(tmp_path, monkeypatch)
    yield server
    server.close()


@pytest.fixture
def tls_keep_alive(tmp_path, monkeypatch):
    """The same over HTTP/1.1, keeping connections open between requests."""
    server = _tls_listener(tmp_path, monkeypatch, keep_alive=True)
    yield server
    server.close()


def test_call_workflow__https_pinned_address_keeps_sni_and_certificate_name(tls_listener, settings, dns, connects):
    """https://api.example.test is connected at its vetted 127.0.0.1 with SNI and certificate check for the name."""
    settings.SCHEDULER_OUTBOUND_ALLOW_NETWORKS = ["127.0.0.0/8"]
    dns.names["api.example.test"] = ["127.0.0.1"]
    result = call_workflow(make_call(tls_listener.url(host="api.example.test", scheme="https")))
    assert result.run_id == "run-1"
    assert connects == [("127.0.0.1", tls_listener.port)]
    assert tls_listener.server_names == ["api.example.test"]
    assert tls_listener.requests[0]["headers"]["host"] == f"api.example.test:{tls_listener.port}"


def test_call_workflow__https_certificate_for_another_name_fails(tls_listener, settings, dns):
    """Pinning the address does not weaken verification: a name the certificate lacks fails the handshake."""
    settings.SCHEDULER_OUTBOUND_ALLOW_NETWORKS = ["127.0.0.0/8"]
    dns.names["evil.example.test"] = ["127.0.0.1"]
    with pytest.raises(WorkflowUnavailable, match="connection failed: SSLError"):
        call_workflow(make_call(tls_listener.url(host="evil.example.test", scheme="https")))
    assert tls_listener.requests == []


# --- redirects ----------------------------------------------------------------------------------


def redirect_to(location: str, status: int = 302):
    def answer(handler):
        if handler.path.startswith("/run"):
            handler.reply(status, b"", {"Location": location})
        else:
            handler.reply(200, b'{"run_id": "after-redirect"}')

    return answer


def test_call_workflow__redirects_off_by_default(listener, settings):
    """Without SCHEDULER_OUTBOUND_FOLLOW_REDIRECTS a 3xx is final and its Location never requested."""
    listener.answer = redirect_to("/next")
    with pytest.raises(WorkflowRejected, match="redirects are not followed") as excinfo:
        call_workflow(make_call(listener.url()))
    assert not isinstance(excinfo.value, TargetRefused)
    assert [request["path"] for request in listener.requests] == ["/run"]


@pytest.mark.parametrize(
    ("location", "message"),
    [
        ("http://169.254.169.254/latest/meta-data/", "refused: 169.254.169.254 is link-local (cloud metadata)"),
        ("http://10.1.2.3:8080/admin", "refused: 10.1.2.3 is private"),
        ("http://metadata.example.test/", "refused: metadata.example.test resolves to 169.254.169.254"),
        ("ftp://127.0.0.1/file", "only http and https"),
    ],
)
def test_call_workflow__redirect_to_blocked_target_refused_at_the_hop(
    listener, settings, dns, connects, location, message
):
    """With redirects on, each hop is vetted again: a hop to a blocked address is refused without connecting."""
    settings.SCHEDULER_OUTBOUND_FOLLOW_REDIRECTS = True
    dns.names["metadata.example.test"] = ["169.254.169.254"]
    listener.answer = redirect_to(location)
    with pytest.raises(TargetRefused, match=re.escape(message)):
        call_workflow(make_call(listener.url()))
    assert connects == [("127.0.0.1", listener.port)]


def test_call_workflow__redirect_same_host_keeps_method_body_and_signature(listener, settings):
    """A 307 on the same host is followed with the same method, body and headers."""
    settings.SCHEDULER_OUTBOUND_FOLLOW_REDIRECTS = True
    listener.answer = redirect_to("/next", status=307)
    result = call_workflow(make_call(listener.url(), headers={"X-Team": "growth"}))
    assert result.run_id == "after-redirect"
    first, second = listener.requests
    assert (second["method"], second["path"], second["body"]) == ("POST", "/next", first["body"])
    for name in ("webhook-signature", "idempotency-key", "x-team"):
        assert second["headers"][name] == first["headers"][name]


def test_call_workflow__redirect_303_becomes_get_without_body(listener, settings):
    """A 303 is followed with a GET and no body, as RFC 9110 says."""
    settings.SCHEDULER_OUTBOUND_FOLLOW_REDIRECTS = True
    listener.answer = redirect_to("/next", status=303)
    call_workflow(make_call(listener.url()))
    assert (listener.requests[1]["method"], listener.requests[1]["body"]) == ("GET", b"")
    assert "content-type" not in listener.requests[1]["headers"]


def test_call_workflow__cross_host_redirect_drops_signature_and_credentials(
    listener, other_listener, settings, dns, connects
):
    """A hop to another host gets the body but no signature, Idempotency-Key, Authorization or workflow headers."""
    settings.SCHEDULER_OUTBOUND_FOLLOW_REDIRECTS = True
    settings.SCHEDULER_OUTBOUND_ALLOW_NETWORKS = ["127.0.0.0/8"]
    dns.names["elsewhere.example.test"] = ["127.0.0.1"]
    listener.answer = redirect_to(other_listener.url("/landing", host="elsewhere.example.test"), status=307)
    other_listener.answer = lambda handler: handler.reply(200, b'{"run_id": "elsewhere"}')
    call = make_call(f"http://bob:hunter2@127.0.0.1:{listener.port}/run", headers={"X-Api-Key": "k3y"})
    assert call_workflow(call).run_id == "elsewhere"
    sent, forwarded = listener.requests[0]["headers"], other_listener.requests[0]["headers"]
    assert {"authorization", "webhook-signature", "idempotency-key", "x-api-key"} <= set(sent)
    leaked = set(forwarded) & {
        "authorization",
        "proxy-authorization",
        "cookie",
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
        "idempotency-key",
        "x-api-key",
    }
    assert leaked == set()
    assert forwarded["host"] == f"elsewhere.example.test:{other_listener.port}"
    assert other_listener.requests[0]["body"] == listener.requests[0]["body"]


def test_call_workflow__at_most_five_redirects(listener, settings):
    """A redirect loop ends after five hops with a final rejection."""
    settings.SCHEDULER_OUTBOUND_FOLLOW_REDIRECTS = True
    listener.answer = lambda handler: handler.reply(307, b"", {"Location": "/run"})
    with pytest.raises(WorkflowRejected, match="more than 5 redirects") as excinfo:
        call_workflow(make_call(listener.url()))
    assert excinfo.value.http_status == 307
    assert len(listener.requests) == 6


# --- the built-in endpoint ----------------------------------------------------------------------


def test_call_workflow__builtin_endpoint_host_allowed_for_its_run_path_only(listener, settings, no_allowlist):
    """The host of SCHEDULER_PUBLIC_BASE_URL is allowed for /api/workflows/<id>/runs/ and nothing else."""
    settings.SCHEDULER_PUBLIC_BASE_URL = f"http://127.0.0.1:{listener.port}"
    runs = reverse("workflow-runs", kwargs={"workflow_id": 7})
    assert call_workflow(make_call(settings.SCHEDULER_PUBLIC_BASE_URL + runs)).run_id == "run-1"
    assert listener.requests[0]["path"] == runs
    for other in (listener.url("/admin/"), f"http://127.0.0.1:{listener.port + 1}{runs}"):
        with pytest.raises(TargetRefused):
            call_workflow(make_call(other))
    assert len(listener.requests) == 1


# --- connection reuse ---------------------------------------------------------------------------


@pytest.fixture
def keep_alive():
    server = Listener(keep_alive=True)
    yield server
    server.close()


@pytest.fixture
def keep_alive_pair():
    """Two keep-alive listeners on one port, at 127.0.0.1 and 127.0.0.2."""
    for _ in range(20):
        first = Listener(keep_alive=True)
        try:
            second = Listener("127.0.0.2", keep_alive=True, port=first.port)
        except OSError:
            first.close()
            continue
        break
    else:
        pytest.skip("no port free on both 127.0.0.1 and 127.0.0.2")
    yield first, second
    first.close()
    second.close()


def trickle_status_line(listener: Listener):
    """An answer whose status line arrives a byte every 0.2 s: only the total deadline ends it."""

    def answer(handler):
        for byte in b"HTTP/1.1 200 OK\r\n":
            if listener.stop.wait(0.2):
                return
            handler.wfile.write(bytes([byte]))
            handler.wfile.flush()

    return answer


def live_pooled_sockets() -> list[socket.socket]:
    """The open sockets of the idle connections in the shared adapter's pools."""
    pools = network.shared_adapter()._pinned_pools.values()
    return [conn.sock for pool in pools for conn in list(pool.pool.queue) if conn is not None and conn.sock is not None]


def test_call_workflow__same_endpoint_reuses_one_connection(keep_alive, dns, connects):
    """Calls to the same endpoint share one kept-alive TCP connection, each still resolved and vetted."""
    dns.names["hooks.example.test"] = ["127.0.0.1"]
    url = keep_alive.url(host="hooks.example.test")
    for _ in range(3):
        assert call_workflow(make_call(url)).run_id == "run-1"
    assert keep_alive.connections == 1
    assert connects == [("127.0.0.1", keep_alive.port)]
    assert len({request["peer"] for request in keep_alive.requests}) == 1
    assert dns.lookups == ["hooks.example.test"] * 3


def test_call_workflow__https_reuses_one_tls_connection(tls_keep_alive, dns, connects):
    """Over TLS, two calls make one connection and one handshake (SNI and certificate for the name)."""
    dns.names["api.example.test"] = ["127.0.0.1"]
    url = tls_keep_alive.url(host="api.example.test", scheme="https")
    assert [call_workflow(make_call(url)).run_id for _ in range(2)] == ["run-1", "run-1"]
    assert tls_keep_alive.connections == 1
    assert tls_keep_alive.server_names == ["api.example.test"]
    assert connects == [("127.0.0.1", tls_keep_alive.port)]


def test_call_workflow__pooled_connection_does_not_skip_vetting(keep_alive, dns, connects):
    """A name now resolving to a private address is refused, though a kept-alive connection to it is open."""
    answers = iter([["127.0.0.1"], ["10.0.0.5"]])
    dns.names["rebind.example.test"] = lambda: next(answers)
    url = keep_alive.url(host="rebind.example.test")
    call_workflow(make_call(url))
    with pytest.raises(TargetRefused, match=r"resolves to 10\.0\.0\.5 \(private\)"):
        call_workflow(make_call(url))
    assert len(keep_alive.requests) == 1
    assert len(live_pooled_sockets()) == 1  # still open, and unused


@pytest.mark.parametrize("change", ["dns answer", "allowlist"])
def test_call_workflow__newly_vetted_addresses_get_a_new_connection(keep_alive_pair, settings, dns, connects, change):
    """After DNS answers differently or the allowlist changes, calls connect to the newly vetted address.

    The open connection to the address vetted before is never reused for them.
    """
    old, new = keep_alive_pair
    settings.SCHEDULER_OUTBOUND_ALLOW_NETWORKS = ["127.0.0.0/8"]
    name = "moving.example.test"
    dns.names[name] = ["127.0.0.1"] if change == "dns answer" else ["127.0.0.1", "127.0.0.2"]
    url = f"http://{name}:{old.port}/run"
    call_workflow(make_call(url))
    if change == "dns answer":
        dns.names[name] = ["127.0.0.2"]
    else:
        settings.SCHEDULER_OUTBOUND_ALLOW_NETWORKS = ["127.0.0.2/32"]
    call_workflow(make_call(url))
    call_workflow(make_call(url))
    assert (len(old.requests), len(new.requests)) == (1, 2)
    assert (old.connections, new.connections) == (1, 1)
    assert connects == [("127.0.0.1", old.port), ("127.0.0.2", old.port)]
    assert {request["headers"]["host"] for request in new.requests} == {f"{name}:{old.port}"}


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_call_workflow__deadline_cuts_a_reused_connection_and_next_call_connects_afresh(
    keep_alive, tls_keep_alive, dns, connects, scheme
):
    """The deadline's watchdog shuts down a reused connection too; it never returns to the pool.

    The next call opens a new connection and succeeds.
    """
    server = keep_alive if scheme == "http" else tls_keep_alive
    dns.names["api.example.test"] = ["127.0.0.1"]
    url = server.url(host="api.example.test", scheme=scheme)
    call_workflow(make_call(url))
    server.answer = trickle_status_line(server)
    started = time.monotonic()
    with pytest.raises(WorkflowUnavailable, match="timed out after 1s"):
        call_workflow(make_call(url, timeout_seconds=1))
    assert time.monotonic() - started < 1.8
    assert server.connections == 1  # the slow answer came over the reused connection
    assert live_pooled_sockets() == []
    server.answer = lambda handler: handler.reply(200, b'{"run_id": "after"}')
    assert call_workflow(make_call(url)).run_id == "after"
    assert server.connections == 2
    assert server.requests[2]["peer"] != server.requests[0]["peer"]
    assert len(connects) == 2


def test_shared_adapter__pool_map_is_a_bounded_lru(keep_alive, dns, monkeypatch):
    """Beyond MAX_POOLS the least recently used pool is closed and dropped."""
    monkeypatch.setattr(network, "MAX_POOLS", 3)
    network.close_shared_session()
    adapter = network.shared_adapter()
    pools = []
    for index in range(5):
        name = f"n{index}.example.test"
        dns.names[name] = ["127.0.0.1"]
        call_workflow(make_call(keep_alive.url(host=name)))
        pools.append(next(reversed(adapter._pinned_pools.values())))
        assert adapter.pool_count() <= 3
    assert [pool.pool is None for pool in pools] == [True, True, False, False, False]
    call_workflow(make_call(keep_alive.url(host="n2.example.test")))  # n2 is now the most recent
    dns.names["n5.example.test"] = ["127.0.0.1"]
    call_workflow(make_call(keep_alive.url(host="n5.example.test")))
    assert [pool.pool is None for pool in pools[2:]] == [False, True, False]
    assert adapter.pool_count() == 3
    assert keep_alive.connections == 6


def test_shared_adapter__threads_share_the_pools_safely(keep_alive):
    """Eight threads calling at once all succeed, over at most eight connections."""
    with ThreadPoolExecutor(max_workers=8) as executor:
        results = list(executor.map(lambda _: call_workflow(make_call(keep_alive.url())).run_id, range(200)))
    assert results == ["run-1"] * 200
    assert 1 <= keep_alive.connections <= 8


def test_deadline__released_socket_is_left_alone():
    """A socket released back to the pool is untouched when the deadline passes; one still watched is shut."""
    kept, kept_peer = socket.socketpair()
    cut, cut_peer = socket.socketpair()
    with network.Deadline(0.2) as deadline:
        handle = deadline.watch(kept)
        late = deadline.watch(cut)
        assert deadline.release(handle) is True
        time.sleep(0.4)
        assert deadline.release(late) is False
    kept.sendall(b"x")
    assert kept_peer.recv(1) == b"x"
    cut_peer.settimeout(1)
    assert cut_peer.recv(1) == b""
    for sock in (kept, kept_peer, cut, cut_peer):
        sock.close()


@pytest.mark.parametrize("expired_before_return", [True, False])
def test_pinned_pool__connection_shut_by_watchdog_is_never_pooled(keep_alive, expired_before_return):
    """A connection handed back after its deadline shut it is closed and dropped; one handed back in time stays."""
    address = (socket.AF_INET, ("127.0.0.1", keep_alive.port))
    target = network.Target(host="127.0.0.1", port=keep_alive.port, candidates=(address,))
    pool = network.PinnedHTTPConnectionPool("127.0.0.1", keep_alive.port, vetted=frozenset({address}))
    with network.Deadline(5) as deadline:
        token = network._sending.set(network._Send(network.Hop(target=target, deadline=deadline)))
        try:
            conn = pool._get_conn()
            conn.connect()
            if expired_before_return:
                deadline._expire()
            pool._put_conn(conn)
            deadline._expire()
        finally:
            network._sending.reset(token)
    pooled = [conn for conn in list(pool.pool.queue) if conn is not None]
    if expired_before_return:
        assert conn.sock is None and pooled == []
    else:
        assert pooled == [conn] and conn.is_connected
    pool.close()


def _read_request(stream) -> dict[str, str]:
    headers = {}
    stream.readline()
    while (line := stream.readline().decode()) not in ("\r\n", ""):
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    stream.read(int(headers.get("content-length") or 0))
    return headers


def test_call_workflow__request_dropped_on_kept_alive_connection_is_sent_once_more(connects):
    """A server closing a kept-alive connection as the request arrives gets it again once, on a new connection.

    The repeat carries the same Idempotency-Key. A new connection closed that way is not repeated.
    """
    received: list[dict] = []
    ok = b'HTTP/1.1 200 OK\r\nContent-Length: 19\r\n\r\n{"run_id": "run-%d"}'
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        listener.settimeout(5)

        def serve() -> None:
            first, _ = listener.accept()
            with first, first.makefile("rb") as stream:
                received.append(_read_request(stream))
                first.sendall(ok % 1)
                received.append(_read_request(stream))  # then closed without an answer
            second, _ = listener.accept()
            with second, second.makefile("rb") as stream:
                received.append(_read_request(stream))
                second.sendall(ok % 2)
            third, _ = listener.accept()
            with third, third.makefile("rb") as stream:
                received.append(_read_request(stream))  # a new connection, closed without an answer

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/run"
        assert call_workflow(make_call(url)).run_id == "run-1"
        assert call_workflow(make_call(url)).run_id == "run-2"
        network.close_shared_session()
        with pytest.raises(WorkflowUnavailable, match="connection failed"):
            call_workflow(make_call(url))
        thread.join(5)
    assert len(received) == 4 and len(connects) == 3
    assert received[1]["idempotency-key"] == received[2]["idempotency-key"]


def test_shared_session__ignores_environment_keeps_no_cookie_and_refuses_unvetted_sends(keep_alive, monkeypatch):
    """The process's one Session: no proxy from the environment, no cookie kept, no send without a vetted hop."""
    monkeypatch.setenv("HTTP_PROXY", "http://10.0.0.5:3128")
    keep_alive.answer = lambda handler: handler.reply(200, b"{}", {"Set-Cookie": "session=abc; Path=/"})
    session = network.shared_session()
    assert session is network.shared_session() and session.trust_env is False
    assert session.get_adapter("http://x.test/") is session.get_adapter("https://x.test/") is network.shared_adapter()
    call_workflow(make_call(keep_alive.url()))
    call_workflow(make_call(keep_alive.url()))
    assert "cookie" not in keep_alive.requests[1]["headers"]
    assert len(session.cookies) == 0
    with pytest.raises(TargetRefused, match="needs a vetted target"):
        session.post(keep_alive.url(), data=b"{}")
    assert len(keep_alive.requests) == 2


def test_shared_session__forked_child_starts_without_the_parents_connections(keep_alive):
    """A forked worker child (celery prefork) never talks over its parent's pooled connections."""
    call_workflow(make_call(keep_alive.url()))
    parent = network.shared_adapter()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        child = network.shared_adapter()
        os._exit(0 if child is not parent and child.pool_count() == 0 else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert parent.pool_count() == 1


# --- vetting rules ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "problem"),
    [
        ("8.8.8.8", None),
        ("2606:4700::1111", None),
        ("::ffff:8.8.8.8", None),
        ("64:ff9b::808:808", None),
        ("127.0.0.1", "loopback"),
        ("127.255.255.254", "loopback"),
        ("::1", "loopback"),
        ("::ffff:127.0.0.1", "loopback"),
        ("0.0.0.0", "unspecified"),  # noqa: S104 - an address to refuse, not a bind
        ("::", "unspecified"),
        ("10.0.0.5", "private"),
        ("172.16.0.1", "private"),
        ("192.168.0.1", "private"),
        ("fd12:3456::1", "private"),
        ("::ffff:10.0.0.5", "private"),
        ("64:ff9b::a00:5", "private"),
        ("64:ff9b:1::a00:5", "private"),
        ("2002:a00:5::1", "private"),
        ("100.64.0.1", "shared address space (100.64.0.0/10)"),
        ("100.127.255.254", "shared address space (100.64.0.0/10)"),
        ("169.254.169.254", "link-local (cloud metadata)"),
        ("fd00:ec2::254", "link-local (cloud metadata)"),
        ("::ffff:169.254.169.254", "link-local (cloud metadata)"),
        ("169.254.1.1", "link-local"),
        ("fe80::1", "link-local"),
        ("224.0.0.1", "multicast"),
        ("239.255.255.250", "multicast"),
        ("ff02::1", "multicast"),
        ("240.0.0.1", "reserved"),
        ("fec0::1", "reserved"),
        ("::7f00:1", "reserved"),
        ("192.0.2.10", "not globally routable"),
        ("198.18.0.1", "not globally routable"),
        ("2001:db8::1", "not globally routable"),
        ("255.255.255.255", "reserved"),
    ],
)
def test_address_problem__classifies_ipv4_ipv6_and_embedded_forms(address, problem):
    """Every non-global address has a reason; public ones, also IPv4-mapped and NAT64 forms, have none."""
    assert network.address_problem(ipaddress.ip_address(address)) == problem


def test_is_allowlisted__networks_cover_mapped_and_nat64_forms(settings):
    """127.0.0.0/8 allows 127.0.0.1 and its IPv4-mapped and NAT64 forms, nothing else."""
    settings.SCHEDULER_OUTBOUND_ALLOW_NETWORKS = ["127.0.0.0/8", "fd00:1::/64"]
    for allowed in ("127.0.0.1", "::ffff:127.0.0.1", "64:ff9b::7f00:1", "fd00:1::5"):
        assert network.is_allowlisted(ipaddress.ip_address(allowed)), allowed
    for refused in ("10.0.0.1", "::1", "fd00:2::5"):
        assert not network.is_allowlisted(ipaddress.ip_address(refused)), refused


def test_settings__bad_allow_network_stops_start_up():
    """A malformed SCHEDULER_OUTBOUND_ALLOW_NETWORKS stops start-up naming the bad value."""
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "scheduler_project.settings"}
    env["SCHEDULER_OUTBOUND_ALLOW_NETWORKS"] = "10.0.0.0/8,not-a-net"
    code = "import django; django.setup()"
    result = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "SCHEDULER_OUTBOUND_ALLOW_NETWORKS: 'not-a-net' is not a network" in result.stderr


# --- the save-time check ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "answer", "refused"),
    [
        ("http://10.0.0.5/hook", None, "10.0.0.5 is private"),
        ("http://[::1]:8080/hook", None, "::1 is loopback"),
        ("http://169.254.169.254/latest/", None, "169.254.169.254 is link-local (cloud metadata)"),
        ("https://intranet.example.test/hook", ["10.0.0.5", "fd00::5"], "resolves to 10.0.0.5 (private) and 1 more"),
        ("https://mixed.example.test/hook", ["10.0.0.5", "93.184.215.14"], None),
        ("https://public.example.test/hook", ["93.184.215.14"], None),
        ("https://later.example.test/hook", socket.gaierror(socket.EAI_NONAME, "unknown"), None),
        ("ftp://10.0.0.5/x", None, None),  # the URL validator's to report
        ("", None, None),
    ],
)
def test_endpoint_check__refuses_hosts_that_only_resolve_to_blocked_addresses(
    no_allowlist, dns, connects, url, answer, refused
):
    """Only a host that resolves, and only to blocked addresses, is refused at save time; nothing is connected."""
    if answer is not None:
        dns.names[url.split("/")[2]] = answer
    if refused is None:
        services.endpoint_check(url)
    else:
        with pytest.raises(ValidationError) as excinfo:
            services.endpoint_check(url)
        (message,) = excinfo.value.message_dict["endpoint_url"]
        assert refused in message and "SCHEDULER_OUTBOUND_ALLOW_NETWORKS" in message
    assert connects == []


def test_endpoint_check__slow_resolver_accepted(no_allowlist, dns, monkeypatch):
    """A name that does not resolve within the save-time limit is accepted (the worker checks at call time)."""
    monkeypatch.setattr(network, "SAVE_RESOLVE_SECONDS", 0.2)
    dns.names["slow.example.test"] = lambda: time.sleep(2) or ["10.0.0.5"]
    started = time.monotonic()
    services.endpoint_check("https://slow.example.test/hook")
    assert time.monotonic() - started < 1


def test_endpoint_check__allowlists_and_builtin_endpoint_accepted(settings, no_allowlist):
    """Allowlisted networks and hosts, and the built-in endpoint on the public base URL, pass."""
    settings.SCHEDULER_OUTBOUND_ALLOW_NETWORKS = ["10.0.0.0/8"]
    services.endpoint_check("http://10.0.0.5/hook")
    settings.SCHEDULER_OUTBOUND_ALLOW_HOSTS = ["localhost"]
    services.endpoint_check("http://localhost:9000/hook")
    settings.SCHEDULER_PUBLIC_BASE_URL = "http://127.0.0.1:8000"
    services.endpoint_check("http://127.0.0.1:8000" + reverse("workflow-runs", kwargs={"workflow_id": 3}))
    with pytest.raises(ValidationError):
        services.endpoint_check("http://127.0.0.1:8000/admin/")


def test_workflow_create_and_update__refuse_blocked_endpoint(user, no_allowlist):
    """workflow_create and workflow_update put the refusal on endpoint_url; other edits keep working."""
    with pytest.raises(ValidationError) as excinfo:
        services.workflow_create(owner=user, name="metadata", endpoint_url="http://169.254.169.254/latest/")
    assert "endpoint_url" in excinfo.value.message_dict
    workflow = services.workflow_create(owner=user, name="ok", endpoint_url="https://93.184.215.14/hook")
    with pytest.raises(ValidationError) as excinfo:
        services.workflow_update(workflow=workflow, endpoint_url="http://127.0.0.1:6379/")
    assert "127.0.0.1 is loopback" in excinfo.value.message_dict["endpoint_url"][0]
    # An endpoint saved before an allowlist shrank does not block unrelated edits.
    workflow.refresh_from_db()
    type(workflow).objects.filter(pk=workflow.pk).update(endpoint_url="http://10.0.0.5/hook")
    workflow.refresh_from_db()
    services.workflow_update(workflow=workflow, name="renamed")
    assert workflow.name == "renamed"
