"""Where the worker may connect: the SSRF guard, address pinning and the call's total deadline.

A workflow's endpoint is user input, and the worker runs inside our network, so before each
request (and each redirect hop) the host is resolved once, every address is vetted, and the
connection goes to a vetted address, never to a second resolution's answer (DNS rebinding).
Refused: loopback, private, link-local (cloud metadata 169.254.169.254), multicast, reserved,
unspecified, shared (100.64.0.0/10) and other non-global addresses, IPv4 and IPv6 alike, including
IPv4 embedded in IPv6 (``::ffff:10.0.0.5``, NAT64 ``64:ff9b::a00:5``, 6to4 ``2002:a00:5::``).

Exceptions, read from settings on every call:
- ``SCHEDULER_OUTBOUND_ALLOW_NETWORKS``: CIDRs whose addresses are allowed (``10.20.0.0/16``).
- ``SCHEDULER_OUTBOUND_ALLOW_HOSTS``: exact host names allowed whatever they resolve to (``n8n.internal``).
- The host of ``SCHEDULER_PUBLIC_BASE_URL``, for the built-in run endpoint's path only: that is
  our own service (``http://web:8000`` in compose), which workflows without an endpoint call.

A host with some allowed and some blocked addresses is called on the allowed ones only.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.urls import Resolver404, resolve
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError

from .exceptions import TargetRefused

ALLOWED_SCHEMES = frozenset({"http", "https"})
DEFAULT_PORTS = {"http": 80, "https": 443}
# At save time a name gets this long to resolve; one that doesn't is accepted (the worker checks).
SAVE_RESOLVE_SECONDS = 2.0
# The built-in execution endpoint's URL name (scheduler_project/urls.py).
BUILTIN_ROUTE = "workflow-runs"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Candidate = tuple[int, tuple[Any, ...]]  # (address family, socket address) as getaddrinfo gives them

_RFC1918 = tuple(ipaddress.ip_network(net) for net in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"))
_UNIQUE_LOCAL = ipaddress.ip_network("fc00::/7")
_SHARED = ipaddress.ip_network("100.64.0.0/10")  # carrier-grade NAT; is_private misses it
_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # RFC 6052: the last 32 bits are the IPv4 destination
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")  # RFC 8215: site-specific translators
_METADATA = frozenset(ipaddress.ip_address(ip) for ip in ("169.254.169.254", "fd00:ec2::254"))


# --- vetting ------------------------------------------------------------------------------------


def embedded_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for (IPv4-mapped, NAT64, 6to4), else None."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip.sixtofour


def address_problem(ip: IPAddress) -> str | None:
    """Why a connection to ``ip`` is refused (e.g. "private"), or None for a public address.

    ``is_global`` decides in the end; the named checks come first so the reason is useful, and
    cover what ``is_global`` lets through (IPv4 and IPv6 multicast, fec0::/10, ::/96 forms).
    """
    inner = embedded_ipv4(ip)
    if inner is not None:
        problem = address_problem(inner)
        if problem is not None or ip.ipv4_mapped is not None or ip in _NAT64:
            return problem
        # A 6to4 address with a public IPv4 inside: judged as IPv6 below.
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_loopback:
        return "loopback"
    if ip in _METADATA:
        return "link-local (cloud metadata)"
    if ip.is_link_local:
        return "link-local"
    if ip.is_multicast:
        return "multicast"
    if any(ip in net for net in _RFC1918) or ip in _UNIQUE_LOCAL or ip in _NAT64_LOCAL:
        return "private"
    if ip in _SHARED:
        return "shared address space (100.64.0.0/10)"
    if ip.is_reserved or (isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local):
        return "reserved"
    if not ip.is_global:
        return "not globally routable"
    return None


@lru_cache(maxsize=8)
def _networks(values: tuple[str, ...]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(value, strict=False) for value in values)


def allowed_networks() -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return _networks(tuple(settings.SCHEDULER_OUTBOUND_ALLOW_NETWORKS))


def normal_host(host: str) -> str:
    """A host name as compared here: lower case, no IPv6 brackets, no trailing dot."""
    return host.strip().strip("[]").rstrip(".").lower()


def allowed_hosts() -> frozenset[str]:
    return frozenset(normal_host(host) for host in settings.SCHEDULER_OUTBOUND_ALLOW_HOSTS)


def is_allowlisted(ip: IPAddress) -> bool:
    """In SCHEDULER_OUTBOUND_ALLOW_NETWORKS, itself or as the IPv4 address it embeds."""
    forms = [ip]
    inner = embedded_ipv4(ip)
    if inner is not None and (ip.ipv4_mapped is not None or ip in _NAT64):
        forms.append(inner)
    return any(form.version == net.version and form in net for form in forms for net in allowed_networks())


def builtin_host(url: str) -> str | None:
    """The host of SCHEDULER_PUBLIC_BASE_URL when ``url`` is our built-in run endpoint on it, else None.

    Only that path is implicitly allowed: our own service is not a way into the rest of the network.
    """
    base = urlsplit(settings.SCHEDULER_PUBLIC_BASE_URL)
    try:
        target = urlsplit(url)
        same_origin = (target.scheme, target.hostname, target.port) == (base.scheme, base.hostname, base.port)
    except ValueError:
        return None
    prefix = base.path.rstrip("/")
    if not same_origin or target.username or target.password or not target.path.startswith(prefix + "/"):
        return None
    try:
        match = resolve(target.path[len(prefix) :])
    except Resolver404:
        return None
    return normal_host(base.hostname or "") if match.url_name == BUILTIN_ROUTE else None


def literal_address(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(normal_host(host))
    except ValueError:
        return None


def resolve_host(host: str, port: int, *, timeout: float) -> list[Candidate]:
    """All addresses ``host`` resolves to, in the resolver's order, within ``timeout`` seconds.

    getaddrinfo has no timeout of its own, so a name is looked up in a helper thread that is
    abandoned at the timeout (TimeoutError). IP literals need no lookup.
    """
    flags = socket.AI_NUMERICHOST if literal_address(host) is not None else 0
    if flags:
        return _candidates(socket.getaddrinfo(normal_host(host), port, type=socket.SOCK_STREAM, flags=flags))
    outcome: dict[str, Any] = {}
    done = threading.Event()

    def lookup() -> None:
        try:
            outcome["infos"] = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as exc:
            outcome["error"] = exc
        finally:
            done.set()

    threading.Thread(target=lookup, name=f"resolve {host}", daemon=True).start()
    if not done.wait(max(0.0, timeout)):
        raise TimeoutError(f"resolving {host} took longer than {timeout:g}s")
    if "error" in outcome:
        raise outcome["error"]
    return _candidates(outcome["infos"])


def _candidates(infos: Iterable[tuple[Any, ...]]) -> list[Candidate]:
    seen: list[Candidate] = []
    for family, _type, _proto, _name, sockaddr in infos:
        if family in (socket.AF_INET, socket.AF_INET6) and (family, sockaddr) not in seen:
            seen.append((family, sockaddr))
    return seen


def candidate_ip(candidate: Candidate) -> IPAddress:
    # An IPv6 socket address may carry a zone ("fe80::1%eth0"); the address is what is judged.
    return ipaddress.ip_address(str(candidate[1][0]).split("%", 1)[0])


@dataclass(frozen=True)
class Target:
    """A host and port with the addresses the connection may use, in order."""

    host: str
    port: int
    candidates: tuple[Candidate, ...]


def vet(host: str, port: int, *, timeout: float, implicit_host: str | None = None) -> Target:
    """Resolve ``host`` once and keep the addresses we may connect to; raise TargetRefused if none.

    Raises TargetRefused (final), TimeoutError or OSError (resolution failed: retryable).
    """
    name = normal_host(host)
    candidates = resolve_host(name, port, timeout=timeout)
    if not candidates:
        raise OSError(f"{name} has no IPv4 or IPv6 address")
    if name in allowed_hosts() or (implicit_host is not None and name == implicit_host):
        usable = candidates
    else:
        usable = [c for c in candidates if is_allowlisted(candidate_ip(c)) or address_problem(candidate_ip(c)) is None]
    if not usable:
        raise TargetRefused(f"refused: {refusal(name, candidates)}")
    return Target(host=name, port=port, candidates=tuple(_connectable(c, port) for c in usable))


def _connectable(candidate: Candidate, port: int) -> Candidate:
    # An IPv4-mapped address is reached as plain IPv4: works where IPV6_V6ONLY is set, too.
    ip = candidate_ip(candidate)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return socket.AF_INET, (str(ip.ipv4_mapped), port)
    return candidate


def refusal(host: str, candidates: list[Candidate]) -> str:
    """Why ``host`` is refused, naming its first address, e.g. "db.internal resolves to 10.0.0.5 (private)"."""
    blocked = [(candidate_ip(c), address_problem(candidate_ip(c)) or "not allowed") for c in candidates]
    ip, problem = blocked[0]
    literal = literal_address(host)
    if literal is not None:
        text = f"{host} is {problem}"
        hint = "SCHEDULER_OUTBOUND_ALLOW_NETWORKS"
    else:
        text = f"{host} resolves to {ip} ({problem})"
        hint = "SCHEDULER_OUTBOUND_ALLOW_NETWORKS or SCHEDULER_OUTBOUND_ALLOW_HOSTS"
        if len(blocked) > 1:
            text += f" and {len(blocked) - 1} more blocked address{'es' if len(blocked) > 2 else ''}"
    return f"{text}; allow it with {hint}"


def endpoint_problem(url: str, *, timeout: float) -> str | None:
    """At save time: why ``url`` would always be refused, or None.

    Only a host that resolves, and only to blocked addresses, is a problem. A malformed URL is
    the URL validator's to report, and a name that does not resolve (yet) is accepted: it may
    exist by the time the workflow runs, and the worker vets every call anyway.
    """
    try:
        parts = urlsplit(url)
        port = parts.port or DEFAULT_PORTS.get(parts.scheme.lower(), 0)
    except ValueError:
        return None
    if parts.scheme.lower() not in ALLOWED_SCHEMES or not parts.hostname or not port:
        return None
    try:
        vet(parts.hostname, port, timeout=timeout, implicit_host=builtin_host(url))
    except TargetRefused as exc:
        return str(exc).removeprefix("refused: ")
    except (OSError, TimeoutError, UnicodeError, ValueError):
        return None
    return None


# --- the total deadline -------------------------------------------------------------------------


class Deadline:
    """A call's total deadline, enforced by a watchdog that shuts the call's sockets down when it passes.

    requests' read timeout bounds each wait for bytes, not the whole exchange: a server trickling
    its status line, headers or a gzip body a byte at a time would hold the worker for as long as
    it likes. At the deadline the watchdog shuts down every socket the call opened, so whatever
    read is blocked ends at once (for TLS too: the shutdown is on the TCP socket underneath).
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.at = time.monotonic() + seconds
        self.expired = False
        self._closed = False
        self._lock = threading.Lock()
        # Duplicates of the call's sockets: they stay valid whatever urllib3 does with the
        # originals (TLS wrapping detaches them), and their numbers cannot be reused meanwhile.
        self._sockets: list[socket.socket] = []
        self._timer = threading.Timer(max(0.0, seconds), self._expire)
        self._timer.daemon = True

    def __enter__(self) -> Deadline:
        self._timer.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def remaining(self) -> float:
        return self.at - time.monotonic()

    def watch(self, sock: socket.socket) -> None:
        """Shut ``sock`` down at the deadline (at once if it has passed)."""
        with self._lock:
            if self._closed:
                return
            duplicate = sock.dup()
            self._sockets.append(duplicate)
            if self.expired:
                _shutdown(duplicate)

    def _expire(self) -> None:
        with self._lock:
            if self._closed:
                return
            self.expired = True
            for sock in self._sockets:
                _shutdown(sock)

    def close(self) -> None:
        """Stop the watchdog and drop the duplicates (the sockets themselves belong to urllib3)."""
        self._timer.cancel()
        with self._lock:
            self._closed = True
            for sock in self._sockets:
                sock.close()
            self._sockets.clear()


def _shutdown(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


# --- connecting to the vetted address -----------------------------------------------------------


@dataclass(frozen=True)
class Hop:
    """One request: the vetted target and the call's deadline."""

    target: Target
    deadline: Deadline


class _PinnedMixin:
    """Connects to the hop's vetted addresses instead of resolving ``host`` again.

    ``host`` stays the name from the URL, so the Host header, TLS SNI and the certificate's
    hostname check (urllib3 uses ``self.host`` for server_hostname) are those of the name.
    """

    host: str
    port: int | None
    timeout: Any
    socket_options: Any
    default_port: int

    def __init__(self, *args: Any, hop: Hop, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._hop = hop

    def _new_conn(self) -> socket.socket:
        target, deadline = self._hop.target, self._hop.deadline
        if normal_host(self.host) != target.host or (self.port or self.default_port) != target.port:
            raise NewConnectionError(self, "refused: the connection's host differs from the vetted one")
        error: OSError | None = None
        for family, sockaddr in target.candidates:
            remaining = deadline.remaining()
            if remaining <= 0:
                error = TimeoutError("deadline passed")
                break
            timeout = min(self.timeout, remaining) if isinstance(self.timeout, (int, float)) else remaining
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                for option in self.socket_options or ():
                    sock.setsockopt(*option)
                sock.settimeout(timeout)
                sock.connect(sockaddr)
            except OSError as exc:
                sock.close()
                error = exc
                continue
            deadline.watch(sock)
            sys.audit("http.client.connect", self, self.host, self.port)
            return sock
        if isinstance(error, TimeoutError):
            raise ConnectTimeoutError(self, f"Connection to {self.host} timed out. (connect timeout={self.timeout})")
        raise NewConnectionError(self, f"Failed to establish a new connection: {error}")


class PinnedHTTPConnection(_PinnedMixin, HTTPConnection):
    pass


class PinnedHTTPSConnection(_PinnedMixin, HTTPSConnection):
    pass


class PinnedHTTPConnectionPool(HTTPConnectionPool):
    ConnectionCls = PinnedHTTPConnection


class PinnedHTTPSConnectionPool(HTTPSConnectionPool):
    ConnectionCls = PinnedHTTPSConnection


class PinnedAdapter(HTTPAdapter):
    """A requests adapter that sends one hop over a fresh connection to its vetted address.

    No connection outlives the call: the next call resolves and vets again, and a pooled
    connection would carry an address vetted under yesterday's DNS answer or settings.
    """

    def __init__(self, hop: Hop) -> None:
        super().__init__(pool_connections=1, pool_maxsize=1, max_retries=0)
        self._hop = hop
        self._pools: list[HTTPConnectionPool] = []

    def get_connection_with_tls_context(
        self, request: Any, verify: Any, proxies: Any = None, cert: Any = None
    ) -> HTTPConnectionPool:
        host_params, pool_kwargs = self.build_connection_pool_key_attributes(request, verify, cert)
        if host_params["scheme"] == "https":
            pool: HTTPConnectionPool = PinnedHTTPSConnectionPool(
                host_params["host"], host_params["port"], hop=self._hop, **pool_kwargs
            )
        elif host_params["scheme"] == "http":
            pool = PinnedHTTPConnectionPool(host_params["host"], host_params["port"], hop=self._hop)
        else:
            raise TargetRefused(f"refused: {host_params['scheme']!r} is not http or https")
        self._pools.append(pool)
        return pool

    def get_connection(self, url: str, proxies: Any = None) -> HTTPConnectionPool:
        # requests before 2.32.2 calls this instead, which would connect unpinned: fail closed.
        raise TargetRefused("refused: address pinning needs requests 2.32.2 or later")

    def close(self) -> None:
        super().close()
        for pool in self._pools:
            pool.close()
        self._pools.clear()
