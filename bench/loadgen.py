"""A lean HTTP/1.1 keep-alive load generator, run in its own process by ``bench.run``.

``python -m bench.loadgen SPEC.json`` opens ``concurrency`` connections, each a closed
loop of one request at a time for ``seconds``, picks requests at random from a pool of
pre-encoded bytes (only a fresh ``Idempotency-Key`` is spliced in), parses no further
than the status line and ``Content-Length``, and prints one JSON object: counts by
status, latency percentiles of the 2xx answers, items/s and its own CPU share.
:func:`fetch_all` is the same client for set-up work (bodies kept), in-process.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import resource
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

LOOPBACK = "127.0.0.1"
CONNECT_TIMEOUT_SECONDS = 5.0
CONNECT_ATTEMPTS = 5
MAX_HEADER_BYTES = 64 * 1024
MAX_BODY_BYTES = 64 * 1024 * 1024
MAX_LATENCY_SAMPLES = 5_000_000
WATCHDOG_INTERVAL_SECONDS = 0.25
MAX_CONCURRENCY = 1024
_LENGTH_HEADER = b"\r\ncontent-length:"


class ResponseError(Exception):
    """The server's answer could not be read (no Content-Length, too large, …)."""


class HttpConnection(asyncio.Protocol):
    """One keep-alive connection with at most one request in flight."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self._body_start = -1
        self._status = 0
        self._length = 0
        self._keep_body = False
        self.sent_ns = 0
        self.closed = False

    # -- asyncio.Protocol ------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCPTransport is not an asyncio.Transport subclass, but behaves as one.
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if self._waiter is not None:
            self._parse()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(ConnectionError("connection closed"))

    # -- client side -----------------------------------------------------------------
    @property
    def busy(self) -> bool:
        return self._waiter is not None

    def request(self, payload: bytes, keep_body: bool = False) -> asyncio.Future[tuple[int, bytes]]:
        """Send ``payload``; the future gives (status, body or b"")."""
        if self.closed or self._transport is None:
            raise ConnectionError("connection closed")
        assert self._waiter is None, "one request at a time"
        self._keep_body = keep_body
        self._waiter = self._loop.create_future()
        self.sent_ns = time.perf_counter_ns()
        self._transport.write(payload)
        return self._waiter

    def abort(self, error: Exception) -> None:
        self._fail(error)
        self.closed = True
        if self._transport is not None:
            self._transport.abort()

    def _fail(self, error: Exception) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)

    def _parse(self) -> None:
        buffer = self._buffer
        if self._body_start < 0:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(buffer) > MAX_HEADER_BYTES:
                    self.abort(ResponseError("response header too large"))
                return
            head = bytes(buffer[:end]).lower()
            at = head.find(_LENGTH_HEADER)
            if at < 0 or not head.startswith(b"http/1.1 "):
                self.abort(ResponseError("response without Content-Length"))
                return
            stop = head.find(b"\r\n", at + len(_LENGTH_HEADER))
            self._length = int(head[at + len(_LENGTH_HEADER) : stop if stop >= 0 else len(head)])
            self._status = int(head[9:12])
            self._body_start = end + 4
            if self._length > MAX_BODY_BYTES:
                self.abort(ResponseError("response body too large"))
                return
        total = self._body_start + self._length
        if len(buffer) < total:
            return
        body = bytes(buffer[self._body_start : total]) if self._keep_body else b""
        del buffer[:total]
        self._body_start = -1
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result((self._status, body))


async def open_connection(port: int) -> HttpConnection:
    """Connect to 127.0.0.1:``port``, retrying a few times (bounded)."""
    loop = asyncio.get_running_loop()
    for attempt in range(CONNECT_ATTEMPTS):
        try:
            _, protocol = await asyncio.wait_for(
                loop.create_connection(lambda: HttpConnection(loop), LOOPBACK, port),
                CONNECT_TIMEOUT_SECONDS,
            )
            return protocol
        except (OSError, TimeoutError):
            if attempt == CONNECT_ATTEMPTS - 1:
                raise
            await asyncio.sleep(0.1 * (attempt + 1))
    raise AssertionError("unreachable")


# ----------------------------------------------------------------------------- requests


@dataclass(frozen=True, slots=True)
class Template:
    """A pre-encoded request: ``prefix + idempotency key + suffix``."""

    prefix: bytes
    suffix: bytes
    items: int
    idempotent: bool


def encode_request(
    method: str,
    path: str,
    token: str,
    port: int,
    body: bytes | None,
    *,
    items: int = 1,
    idempotent: bool = True,
) -> Template:
    """Build the constant bytes of one request; the key goes last among the headers."""
    lines = [
        f"{method} {path} HTTP/1.1",
        f"Host: {LOOPBACK}:{port}",
        f"Authorization: Bearer {token}",
    ]
    if body is not None:
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    head = ("\r\n".join(lines) + "\r\n").encode("ascii")
    tail = b"\r\n" + (body or b"")
    if idempotent:
        return Template(head + b"Idempotency-Key: ", b"\r\n" + tail, items, True)
    return Template(head + tail, b"", items, False)


class KeySource:
    """Fresh idempotency keys: a random run tag and a counter (cheap, never repeated)."""

    def __init__(self) -> None:
        self._tag = os.urandom(8).hex().encode("ascii")
        self._next = 0

    def next(self) -> bytes:
        self._next += 1
        return b"%s-%d" % (self._tag, self._next)


def payload_of(template: Template, keys: KeySource) -> bytes:
    if template.idempotent:
        return template.prefix + keys.next() + template.suffix
    return template.prefix


# ----------------------------------------------------------------------------- the run


@dataclass
class RunStats:
    """What all connections of one run observed."""

    statuses: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    latencies_ns: list[int] = field(default_factory=list)
    items_ok: int = 0
    requests: int = 0
    last_done_ns: int = 0

    def record(self, status: int, template: Template, latency_ns: int, done_ns: int) -> None:
        self.requests += 1
        self.statuses[str(status)] += 1
        self.last_done_ns = max(self.last_done_ns, done_ns)
        if 200 <= status < 300:
            self.items_ok += template.items
            if len(self.latencies_ns) < MAX_LATENCY_SAMPLES:
                self.latencies_ns.append(latency_ns)


async def client_loop(
    port: int,
    templates: Sequence[Template],
    deadline_ns: int,
    stats: RunStats,
    connections: list[HttpConnection],
    seed: int,
) -> None:
    """One closed-loop client: request, wait for the answer, repeat until the deadline."""
    rng = random.Random(seed)
    keys = KeySource()
    connection = await open_connection(port)
    connections.append(connection)
    pick = rng.randrange
    count = len(templates)
    while time.perf_counter_ns() < deadline_ns:
        template = templates[pick(count)]
        payload = payload_of(template, keys)
        try:
            status, _ = await connection.request(payload)
        except (ConnectionError, TimeoutError, ResponseError) as error:
            stats.errors[type(error).__name__] += 1
            connection = await open_connection(port)
            connections.append(connection)
            continue
        done = time.perf_counter_ns()
        stats.record(status, template, done - connection.sent_ns, done)


async def watchdog(connections: list[HttpConnection], timeout_seconds: float) -> None:
    """Abort any connection whose request has waited longer than ``timeout_seconds``."""
    limit_ns = int(timeout_seconds * 1e9)
    while True:
        await asyncio.sleep(WATCHDOG_INTERVAL_SECONDS)
        now = time.perf_counter_ns()
        for connection in connections:
            if connection.busy and now - connection.sent_ns > limit_ns:
                connection.abort(TimeoutError("request timed out"))
        connections[:] = [c for c in connections if not c.closed]


def percentile_ms(sorted_ns: Sequence[int], percent: float) -> float | None:
    """Nearest-rank percentile, in milliseconds; None without samples."""
    if not sorted_ns:
        return None
    rank = max(1, math.ceil(percent / 100.0 * len(sorted_ns)))
    return sorted_ns[rank - 1] / 1e6


def summarize(
    stats: RunStats, started_ns: int, ended_ns: int, cpu_seconds: float
) -> dict[str, Any]:
    """The JSON answer of one run."""
    latencies = sorted(stats.latencies_ns)
    elapsed = max(1e-9, (max(stats.last_done_ns, started_ns) - started_ns) / 1e9)
    wall = max(1e-9, (ended_ns - started_ns) / 1e9)
    ok = sum(n for status, n in stats.statuses.items() if status.startswith("2"))
    return {
        "requests": stats.requests,
        "ok": ok,
        "items_ok": stats.items_ok,
        "statuses": dict(sorted(stats.statuses.items())),
        "errors": dict(stats.errors),
        "elapsed_seconds": round(elapsed, 4),
        "requests_per_second": round(ok / elapsed, 2),
        "items_per_second": round(stats.items_ok / elapsed, 2),
        "latency_ms": {
            "p50": percentile_ms(latencies, 50),
            "p90": percentile_ms(latencies, 90),
            "p99": percentile_ms(latencies, 99),
            "max": latencies[-1] / 1e6 if latencies else None,
            "mean": (sum(latencies) / len(latencies) / 1e6) if latencies else None,
        },
        "loadgen_cpu_seconds": round(cpu_seconds, 3),
        "loadgen_wall_seconds": round(wall, 3),
        "loadgen_cpu_share": round(cpu_seconds / wall, 3),
    }


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def run_load(spec: dict[str, Any]) -> dict[str, Any]:
    """Run the closed loops of ``spec`` and return :func:`summarize`'s answer."""
    port, concurrency = int(spec["port"]), int(spec["concurrency"])
    assert 1 <= concurrency <= MAX_CONCURRENCY
    templates = [
        encode_request(
            r["method"],
            r["path"],
            spec["token"],
            port,
            r["body"].encode() if r.get("body") is not None else None,
            items=int(r.get("items", 1)),
            idempotent=bool(r.get("idempotent", True)),
        )
        for r in spec["requests"]
    ]
    assert templates, "an empty request pool"
    stats = RunStats()
    connections: list[HttpConnection] = []
    cpu_before, started = _cpu_seconds(), time.perf_counter_ns()
    deadline = started + int(float(spec["seconds"]) * 1e9)
    dog = asyncio.create_task(watchdog(connections, float(spec.get("timeout_seconds", 30))))
    seed = int(spec.get("seed", 1))
    tasks = [
        asyncio.create_task(client_loop(port, templates, deadline, stats, connections, seed + i))
        for i in range(concurrency)
    ]
    grace = float(spec["seconds"]) + float(spec.get("drain_seconds", 60))
    done, pending = await asyncio.wait(tasks, timeout=grace)
    for task in pending:
        task.cancel()
    dog.cancel()
    for task in done:
        if task.exception() is not None:
            stats.errors[type(task.exception()).__name__] += 1
    stats.errors.update({"unfinished": len(pending)} if pending else {})
    result = summarize(stats, started, time.perf_counter_ns(), _cpu_seconds() - cpu_before)
    result["concurrency"] = concurrency
    return result


# ----------------------------------------------------------------------------- set-up helper


async def fetch_all(
    port: int,
    token: str,
    requests: Sequence[tuple[str, str, bytes | None]],
    concurrency: int = 16,
    timeout_seconds: float = 60.0,
    idempotent: bool = True,
) -> list[tuple[int, bytes]]:
    """Send every (method, path, body), with a fresh key if ``idempotent``; answers in order."""
    answers: list[tuple[int, bytes]] = [(0, b"")] * len(requests)
    queue = list(enumerate(requests))
    queue.reverse()

    async def worker() -> None:
        keys = KeySource()
        connection = await open_connection(port)
        try:
            while queue:
                index, (method, path, body) = queue.pop()
                template = encode_request(method, path, token, port, body, idempotent=idempotent)
                future = connection.request(payload_of(template, keys), keep_body=True)
                answers[index] = await asyncio.wait_for(future, timeout_seconds)
        finally:
            connection.abort(ConnectionError("done"))

    workers = max(1, min(concurrency, len(requests), MAX_CONCURRENCY))
    await asyncio.gather(*(worker() for _ in range(workers)))
    return answers


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: python -m bench.loadgen SPEC.json")
    with open(sys.argv[1], "rb") as spec_file:
        spec = json.load(spec_file)
    try:
        import uvloop

        result = uvloop.run(run_load(spec))
    except ImportError:
        result = asyncio.run(run_load(spec))
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
