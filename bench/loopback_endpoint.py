"""A fast HTTP/1.1 endpoint on 127.0.0.1 for the worker benchmarks, and a load probe for it.

    .venv/bin/python bench/loopback_endpoint.py [--port 0]

prints ``PORT <n>`` and serves until stdin closes (so it dies with the process that started it).
Every request but the two below is answered 200 ``{"run_id": "run-<n>"}`` on a kept-alive
connection and counted:

- ``GET /_stats``: ``{"calls", "connections", "first", "last", "repeated"}`` (calls so far, TCP
  connections that made them, time.time() of the first and last counted call, and calls whose
  Idempotency-Key an earlier call carried: the same execution's attempt sent twice);
- ``POST /_reset``: zero the counters.

One asyncio process, no framework: a single core answers well over ten thousand small requests a
second, far above what the workers ask for (``probe`` measures it). Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

_STATS = {"calls": 0, "connections": 0, "first": None, "last": None, "repeated": 0}
_KEYS: set[str] = set()


def _response(status: str, body: bytes, *, close: bool) -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        f"Connection: {'close' if close else 'keep-alive'}\r\n\r\n"
    )
    return head.encode("latin-1") + body


class _Endpoint(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.buffer = bytearray()
        self.counted = False

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buffer[:end]).decode("latin-1")
            lines = head.split("\r\n")
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            length = int(headers.get("content-length") or 0)
            if len(self.buffer) < end + 4 + length:
                return
            del self.buffer[: end + 4 + length]
            method, _, rest = lines[0].partition(" ")
            path = rest.split(" ", 1)[0]
            close = headers.get("connection", "").lower() == "close"
            self.transport.write(self._answer(method, path, close=close, key=headers.get("idempotency-key")))
            if close:
                self.transport.close()
                return

    def _answer(self, method: str, path: str, *, close: bool, key: str | None = None) -> bytes:
        if path == "/_stats":
            return _response("200 OK", json.dumps(_STATS).encode(), close=close)
        if path == "/_reset":
            _STATS.update(calls=0, connections=0, first=None, last=None, repeated=0)
            _KEYS.clear()
            return _response("200 OK", b"{}", close=close)
        now = time.time()
        if not self.counted:
            self.counted = True
            _STATS["connections"] += 1
        _STATS["calls"] += 1
        if key:
            _STATS["repeated"] += key in _KEYS
            _KEYS.add(key)
        _STATS["first"] = _STATS["first"] or now
        _STATS["last"] = now
        return _response("200 OK", b'{"run_id": "run-%d"}' % _STATS["calls"], close=close)


async def _serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Endpoint, "127.0.0.1", port, backlog=1024, reuse_address=True)
    print(f"PORT {server.sockets[0].getsockname()[1]}", flush=True)
    # Stop when the parent goes away (stdin reaches EOF).
    await loop.run_in_executor(None, sys.stdin.read)
    server.close()


async def _probe(port: int, connections: int, seconds: float) -> float:
    """Requests/s answered to ``connections`` kept-alive clients, each sending one request at a time."""
    request = (
        b"POST /probe HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 17\r\n\r\n"
        b'{"probe": "load"}'
    )
    deadline = time.monotonic() + seconds
    answered = 0

    async def client() -> None:
        nonlocal answered
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while time.monotonic() < deadline:
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                await reader.readexactly(length)
                answered += 1
        finally:
            writer.close()

    started = time.monotonic()
    await asyncio.gather(*(client() for _ in range(connections)))
    return answered / (time.monotonic() - started)


def probe(port: int, *, connections: int = 32, seconds: float = 2.0) -> float:
    """Load probe (a lower bound of the endpoint's capacity: the client is Python on the same cores)."""
    return asyncio.run(_probe(port, connections, seconds))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    asyncio.run(_serve(args.port))


if __name__ == "__main__":
    main()
