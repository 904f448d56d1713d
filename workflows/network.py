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
  our own service (``http://web:8000`` in compose), which workflows without an endpoint call; and,
  while ``SCHEDULER_DEMO_TARGET`` is on, for the demo target's path (``manage.py demo``'s examples).

A host with some allowed and some blocked addresses is called on the allowed ones only.

Connections are kept alive in one shared session per worker process, in pools keyed by the
vetted address set: a connection is reused only by a call whose own vetting gave the same
addresses, and the call's deadline watches whichever connection it uses, new or reused.
"""

from __future__ import annotations

import contextlib
import contextvars
import heapq
import ipaddress
import itertools
import logging
import os
import socket
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from http.cookiejar import DefaultCookiePolicy
from typing import Any
from urllib.parse import urlsplit

import requests
from django.conf import settings
from django.urls import Resolver404, resolve
from requests import PreparedRequest, Response
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError

from .exceptions import TargetRefused

logger = logging.getLogger(__name__)

ALLOWED_SCHEMES = frozenset({"http", "https"})
DEFAULT_PORTS = {"http": 80, "https": 443}
# At save time a name gets this long to resolve; one that doesn't is accepted (the worker checks).
SAVE_RESOLVE_SECONDS = 2.0
# The built-in execution endpoint's URL name (scheduler_project/urls.py).
BUILTIN_ROUTE = "workflow-runs"
# The demo target's URL name (workflows/demo.py), allowed like it while SCHEDULER_DEMO_TARGET is on.
DEMO_ROUTE = "demo-target"

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
    """The host of SCHEDULER_PUBLIC_BASE_URL when ``url`` is our built-in run endpoint on it (or the
    demo target, while SCHEDULER_DEMO_TARGET is on), else None.

    Only those paths are implicitly allowed: our own service is not a way into the rest of the network.
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
    allowed = match.url_name == BUILTIN_ROUTE or (match.url_name == DEMO_ROUTE and settings.SCHEDULER_DEMO_TARGET)
    return normal_host(base.hostname or "") if allowed else None


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
    it likes. At the deadline the watchdog shuts down every socket the call is using, new or taken
    from the pool, so whatever read is blocked ends at once (for TLS too: the shutdown is on the
    TCP socket underneath). A socket handed back to the pool is released first: a call's watchdog
    never touches a connection another call is using.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.at = time.monotonic() + seconds
        self.expired = False
        self.closed = False
        self._lock = threading.Lock()
        # Duplicates of the call's sockets: they stay valid whatever urllib3 does with the
        # originals (TLS wrapping detaches them), and their numbers cannot be reused meanwhile.
        self._sockets: list[socket.socket] = []

    def __enter__(self) -> Deadline:
        _watchdog.schedule(self)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def remaining(self) -> float:
        return self.at - time.monotonic()

    def watch(self, sock: socket.socket) -> socket.socket | None:
        """Shut ``sock`` down at the deadline (at once if it has passed); the handle is for release()."""
        with self._lock:
            if self.closed:
                return None
            # fromfd duplicates the descriptor; unlike sock.dup() it works for a TLS socket too.
            duplicate = socket.fromfd(sock.fileno(), sock.family, sock.type)
            self._sockets.append(duplicate)
            if self.expired:
                _shutdown(duplicate)
            return duplicate

    def release(self, handle: socket.socket) -> bool:
        """Stop watching a socket; False if the watchdog has already shut it down (it is then unusable)."""
        with self._lock:
            for index, sock in enumerate(self._sockets):
                if sock is handle:
                    del self._sockets[index]
                    sock.close()
                    break
            return not self.expired

    def _expire(self) -> None:
        with self._lock:
            if self.closed:
                return
            self.expired = True
            for sock in self._sockets:
                _shutdown(sock)

    def close(self) -> None:
        """End the watch and drop the duplicates (the sockets themselves belong to urllib3)."""
        with self._lock:
            self.closed = True
            for sock in self._sockets:
                sock.close()
            self._sockets.clear()


def _shutdown(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


class _Watchdog:
    """The one thread per process that expires deadlines, earliest first.

    A threading.Timer per call cost a thread start, about 1 ms, a quarter of a call to a nearby
    endpoint (bench/http_call.py). A closed deadline stays queued until its time comes and is then
    skipped, so the queue holds at most the calls of the last timeout_seconds.
    """

    def __init__(self) -> None:
        self._condition = threading.Condition(threading.Lock())
        self._queue: list[tuple[float, int, Deadline]] = []
        self._order = itertools.count()
        self._thread: threading.Thread | None = None

    def schedule(self, deadline: Deadline) -> None:
        with self._condition:
            heapq.heappush(self._queue, (deadline.at, next(self._order), deadline))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="outbound-deadlines", daemon=True)
                self._thread.start()
            elif self._queue[0][2] is deadline:
                self._condition.notify()  # earlier than what the thread is waiting for

    def _run(self) -> None:
        while True:
            with self._condition:
                due = self._take_due()
                while not due:
                    wait = self._queue[0][0] - time.monotonic() if self._queue else None
                    self._condition.wait(wait)
                    due = self._take_due()
            for deadline in due:
                deadline._expire()

    def _take_due(self) -> list[Deadline]:
        now = time.monotonic()
        due = []
        while self._queue and (self._queue[0][0] <= now or self._queue[0][2].closed):
            deadline = heapq.heappop(self._queue)[2]
            if not deadline.closed:
                due.append(deadline)
        return due


_watchdog = _Watchdog()


# --- connecting to the vetted address, over pooled connections ----------------------------------

# At most this many pools (one per scheme, host, port, vetted address set and TLS settings) per
# process; the least recently used is closed beyond that. A single-threaded prefork child keeps
# at most one idle connection per pool, a thread-pool worker up to POOL_MAXSIZE.
MAX_POOLS = 256
POOL_MAXSIZE = 10
# A failure on a reused connection before any answer is what a server closing an idle keep-alive
# connection as the request arrives looks like; such a request is sent once more on a fresh
# connection if it may be repeated (the rule of Go's net/http Transport: idempotent method, or an
# Idempotency-Key header, which every workflow call carries).
_IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})


@dataclass(frozen=True)
class Hop:
    """One request: the vetted target and the call's deadline."""

    target: Target
    deadline: Deadline


@dataclass
class _Send:
    """The hop being sent in this thread (or task), and what became of its connection."""

    hop: Hop
    reused: bool = False
    fresh_only: bool = False


# Per-call state reaches the shared pools through a context variable, never through the pools
# themselves: each thread (each task of an async worker) sees only its own hop.
_sending: contextvars.ContextVar[_Send | None] = contextvars.ContextVar("workflows_network_sending", default=None)

PoolKey = tuple[str, str, int, tuple[Candidate, ...], tuple[tuple[str, Any], ...]]


def _watch(conn: Any, deadline: Deadline, sock: socket.socket) -> None:
    _unwatch(conn)
    handle = deadline.watch(sock)
    conn.watched_by = None if handle is None else (deadline, handle)


def _unwatch(conn: Any) -> bool:
    """Release the connection from its call's watchdog; False if that watchdog has shut it down."""
    watched = getattr(conn, "watched_by", None)
    conn.watched_by = None
    if watched is None:
        return True
    deadline, handle = watched
    return deadline.release(handle)


class _PinnedMixin:
    """Connects to the hop's vetted addresses instead of resolving ``host`` again.

    ``host`` stays the name from the URL, so the Host header, TLS SNI and the certificate's
    hostname check (urllib3 uses ``self.host`` for server_hostname) are those of the name.
    ``vetted`` is the address set of the pool's key: whatever the hop says, nothing else is dialled.
    """

    host: str
    port: int | None
    timeout: Any
    socket_options: Any
    default_port: int

    def __init__(self, *args: Any, vetted: frozenset[Candidate], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._vetted = vetted
        self.watched_by: tuple[Deadline, socket.socket] | None = None

    def _new_conn(self) -> socket.socket:
        sending = _sending.get()
        if sending is None:
            raise NewConnectionError(self, "refused: no vetted target for this connection")
        target, deadline = sending.hop.target, sending.hop.deadline
        if normal_host(self.host) != target.host or (self.port or self.default_port) != target.port:
            raise NewConnectionError(self, "refused: the connection's host differs from the vetted one")
        error: OSError | None = None
        for family, sockaddr in target.candidates:
            if (family, sockaddr) not in self._vetted:
                error = OSError(f"refused: {sockaddr[0]} is not among the pool's vetted addresses")
                continue
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
            _watch(self, deadline, sock)
            sys.audit("http.client.connect", self, self.host, self.port)
            return sock
        if isinstance(error, TimeoutError):
            raise ConnectTimeoutError(self, f"Connection to {self.host} timed out. (connect timeout={self.timeout})")
        raise NewConnectionError(self, f"Failed to establish a new connection: {error}")


class PinnedHTTPConnection(_PinnedMixin, HTTPConnection):
    pass


class PinnedHTTPSConnection(_PinnedMixin, HTTPSConnection):
    pass


class _PinnedPoolMixin:
    """Puts a connection taken from the pool under the current call's watchdog, and takes it off on return."""

    def _get_conn(self, timeout: float | None = None) -> Any:
        conn = super()._get_conn(timeout)  # type: ignore[misc]
        if getattr(conn, "sock", None) is not None:
            # Kept alive from an earlier request (urllib3 has just checked that it was not dropped).
            sending = _sending.get()
            if sending is None or sending.fresh_only:
                conn.close()  # reconnects in _new_conn, or refuses there without a hop
            else:
                sending.reused = True
                _watch(conn, sending.hop.deadline, conn.sock)
        return conn

    def _put_conn(self, conn: Any) -> None:
        if conn is not None and not _unwatch(conn):
            # Shut down by the watchdog: closed and dropped, its place taken by a new connection later.
            conn.close()
            conn = None
        super()._put_conn(conn)  # type: ignore[misc]


class PinnedHTTPConnectionPool(_PinnedPoolMixin, HTTPConnectionPool):
    ConnectionCls = PinnedHTTPConnection


class PinnedHTTPSConnectionPool(_PinnedPoolMixin, HTTPSConnectionPool):
    ConnectionCls = PinnedHTTPSConnection


class PinnedAdapter(HTTPAdapter):
    """A requests adapter whose pooled connections go only to addresses vetted for the call using them.

    Every send names its Hop (send(..., hop=...)). Pools are keyed by scheme, host, port, the set
    of vetted addresses and the TLS settings, so a kept-alive connection is reused only by a call
    whose own resolution and vetting gave the same addresses: when DNS answers differently or the
    allowlist changes, the key differs and a new pool connects afresh. The old pool ages out of
    the LRU (MAX_POOLS).
    """

    def __init__(self, *, max_pools: int | None = None, pool_maxsize: int | None = None) -> None:
        super().__init__(pool_connections=1, pool_maxsize=pool_maxsize or POOL_MAXSIZE, max_retries=0)
        self.max_pools = max_pools or MAX_POOLS
        self._pinned_pools: OrderedDict[PoolKey, HTTPConnectionPool] = OrderedDict()
        self._pinned_lock = threading.Lock()

    def send(  # type: ignore[override]
        self,
        request: PreparedRequest,
        stream: bool = False,
        timeout: Any = None,
        verify: Any = True,
        cert: Any = None,
        proxies: Any = None,
        *,
        hop: Hop | None = None,
    ) -> Response:
        if hop is None:
            # Through Session.send or any other path that has not vetted the host: fail closed.
            raise TargetRefused("refused: a request needs a vetted target (network.Hop)")
        sending = _Send(hop)
        token = _sending.set(sending)
        try:
            try:
                return super().send(request, stream=stream, timeout=timeout, verify=verify, cert=cert, proxies={})
            except requests.exceptions.ConnectionError as exc:
                if not (sending.reused and _may_repeat(request) and _closed_by_peer(exc)) or hop.deadline.expired:
                    raise
            logger.debug("kept-alive connection to %s closed by the server; sending once more", hop.target.host)
            sending.reused, sending.fresh_only = False, True
            return super().send(request, stream=stream, timeout=timeout, verify=verify, cert=cert, proxies={})
        finally:
            _sending.reset(token)

    def get_connection_with_tls_context(
        self, request: Any, verify: Any, proxies: Any = None, cert: Any = None
    ) -> HTTPConnectionPool:
        sending = _sending.get()
        if sending is None:
            raise TargetRefused("refused: a request needs a vetted target (network.Hop)")
        host_params, pool_kwargs = self.build_connection_pool_key_attributes(request, verify, cert)
        scheme, host = host_params["scheme"], host_params["host"] or ""
        if scheme not in ALLOWED_SCHEMES:
            raise TargetRefused(f"refused: {scheme!r} is not http or https")
        target = sending.hop.target
        port = host_params["port"] or DEFAULT_PORTS[scheme]
        if normal_host(host) != target.host or port != target.port:
            raise TargetRefused("refused: the request's host differs from the vetted one")
        if scheme == "https":
            # cert_verify sets the CA bundle on the pool for every request: part of the key, too.
            tls = (*sorted(pool_kwargs.items()), ("ca_bundle", requests.adapters.DEFAULT_CA_BUNDLE_PATH))
        else:
            tls, pool_kwargs = (), {}
        vetted = tuple(sorted(set(target.candidates)))  # a set: round-robin DNS reorders, same addresses
        # The host as the URL spells it (lower case): it is the pool's Host header, SNI and certificate name.
        key: PoolKey = (scheme, host, port, vetted, tls)
        evicted: list[HTTPConnectionPool] = []
        with self._pinned_lock:
            pool = self._pinned_pools.get(key)
            if pool is not None:
                self._pinned_pools.move_to_end(key)
                return pool
            pool_class = PinnedHTTPSConnectionPool if scheme == "https" else PinnedHTTPConnectionPool
            pool = pool_class(host, port, maxsize=self._pool_maxsize, vetted=frozenset(vetted), **pool_kwargs)
            self._pinned_pools[key] = pool
            while len(self._pinned_pools) > self.max_pools:
                evicted.append(self._pinned_pools.popitem(last=False)[1])
        for old in evicted:
            old.close()  # idle connections close now; one in use closes when it is handed back
        return pool

    def get_connection(self, url: str, proxies: Any = None) -> HTTPConnectionPool:
        # requests before 2.32.2 calls this instead, which would connect unpinned: fail closed.
        raise TargetRefused("refused: address pinning needs requests 2.32.2 or later")

    def pool_count(self) -> int:
        return len(self._pinned_pools)

    def close(self) -> None:
        super().close()
        with self._pinned_lock:
            pools = list(self._pinned_pools.values())
            self._pinned_pools.clear()
        for pool in pools:
            pool.close()


def _may_repeat(request: PreparedRequest) -> bool:
    replayable_body = request.body is None or isinstance(request.body, (bytes, str))
    return replayable_body and (request.method in _IDEMPOTENT_METHODS or "Idempotency-Key" in request.headers)


def _closed_by_peer(exc: BaseException) -> bool:
    """Whether the server reset or closed the connection (RemoteDisconnected is a ConnectionResetError)."""
    pending: list[BaseException] = [exc]
    for _ in range(8):
        if not pending:
            break
        error = pending.pop()
        if isinstance(error, (ConnectionResetError, ConnectionAbortedError, BrokenPipeError)):
            return True
        pending.extend(arg for arg in error.args if isinstance(arg, BaseException))
        for inner in (error.__cause__, getattr(error, "reason", None)):
            if isinstance(inner, BaseException):
                pending.append(inner)
    return False


# --- the shared session -------------------------------------------------------------------------

_shared_lock = threading.Lock()
_shared: tuple[requests.Session, PinnedAdapter] | None = None


def shared_session() -> requests.Session:
    """The worker process's one Session: a PinnedAdapter for http:// and https://, no environment, no cookies.

    Calls go through ``shared_adapter().send(..., hop=...)``: Session.send would even with
    allow_redirects=False read a redirect's whole body into memory (resolve_redirects), and a
    send without a Hop is refused anyway.
    """
    return _shared_pair()[0]


def shared_adapter() -> PinnedAdapter:
    return _shared_pair()[1]


def _shared_pair() -> tuple[requests.Session, PinnedAdapter]:
    global _shared
    shared = _shared
    if shared is None:
        with _shared_lock:
            if _shared is None:
                session = requests.Session()
                session.trust_env = False  # no proxy, .netrc or CA bundle from the environment
                session.cookies.set_policy(DefaultCookiePolicy(allowed_domains=[]))  # no cookie kept or sent
                adapter = PinnedAdapter()
                session.mount("http://", adapter)
                session.mount("https://", adapter)
                _shared = (session, adapter)
            shared = _shared
    return shared


def close_shared_session() -> None:
    """Close every pooled connection; the next call starts a new session."""
    global _shared
    with _shared_lock:
        shared, _shared = _shared, None
    if shared is not None:
        shared[0].close()


def _forget_after_fork() -> None:
    # A forked child (celery prefork) must not talk over its parent's sockets: it starts empty,
    # and with a watchdog of its own (the parent's thread does not exist in the child).
    global _shared, _shared_lock, _watchdog
    _shared = None
    _shared_lock = threading.Lock()
    _watchdog = _Watchdog()


os.register_at_fork(after_in_child=_forget_after_fork)
