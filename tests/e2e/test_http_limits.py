"""HTTP limits of ``walletd serve`` over a real loopback socket.

A client that trickles its request head or body, connects and sends nothing, or lets a
kept-alive connection idle is disconnected once its deadline passes, while other
clients are served; a head past the size cap gets 400 ``invalid_request``; past the
connection cap a request gets 503 ``unavailable`` with ``Retry-After``. The limits are
set short through the environment, as an operator would set them.
"""

from __future__ import annotations

import math
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import orjson
import pytest

from tests.support.serve import HOST, Server, serving

pytestmark = pytest.mark.e2e

HEADER_TIMEOUT_SECONDS = 2
BODY_TIMEOUT_SECONDS = 2
KEEP_ALIVE_SECONDS = 1
MAX_HEAD_BYTES = 4096
MAX_CONNECTIONS = 3
# How late after its deadline a close may come and still count: scheduling on a busy
# machine, never close to uvicorn's default keep-alive (5 s) or to no deadline at all.
CLOSE_SLACK_SECONDS = 2.5
TRICKLE_GAP_SECONDS = 1.0
SHORT_LIMITS = {
    "WALLETD_HTTP_HEADER_TIMEOUT_SECONDS": str(HEADER_TIMEOUT_SECONDS),
    "WALLETD_HTTP_BODY_TIMEOUT_SECONDS": str(BODY_TIMEOUT_SECONDS),
    "WALLETD_HTTP_KEEP_ALIVE_SECONDS": str(KEEP_ALIVE_SECONDS),
    "WALLETD_HTTP_MAX_HEAD_BYTES": str(MAX_HEAD_BYTES),
}


@pytest.fixture(scope="module")
def server(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    log_path = tmp_path_factory.mktemp("http-limits") / "serve.log"
    with serving(database_url, log_path, SHORT_LIMITS) as running:
        yield running


@dataclass
class Watched:
    """What the server sent on a connection, and when it closed it (None: still open)."""

    received: bytes = b""
    closed_after_seconds: float | None = None


class Client:
    """One raw connection; ``watch`` reads until the server closes it or time is up."""

    def __init__(self, server: Server) -> None:
        self.socket = socket.create_connection((HOST, server.port), timeout=5)
        self.opened_at = time.monotonic()
        self.seen = Watched()

    def send(self, data: bytes) -> None:
        try:
            self.socket.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            self._closed()

    def watch(self, seconds: float) -> Watched:
        until = time.monotonic() + seconds
        while self.seen.closed_after_seconds is None and time.monotonic() < until:
            self.socket.settimeout(max(until - time.monotonic(), 0.01))
            try:
                data = self.socket.recv(65536)
            except TimeoutError:
                break
            except ConnectionResetError:
                data = b""
            if not data:
                self._closed()
            self.seen.received += data
        return self.seen

    def close(self) -> None:
        self.socket.close()

    def _closed(self) -> None:
        if self.seen.closed_after_seconds is None:
            self.seen.closed_after_seconds = time.monotonic() - self.opened_at


@pytest.fixture
def clients(server: Server) -> Iterator[list[Client]]:
    opened: list[Client] = []
    yield opened
    for client in opened:
        client.close()


def connect(server: Server, clients: list[Client]) -> Client:
    client = Client(server)
    clients.append(client)
    return client


def trickle(client: Client, data: bytes, deadline_seconds: float) -> Watched:
    """Send ``data`` one byte a second until the server closes the connection."""
    for index in range(math.ceil((deadline_seconds + CLOSE_SLACK_SECONDS) / TRICKLE_GAP_SECONDS)):
        client.send(data[index : index + 1])
        seen = client.watch(TRICKLE_GAP_SECONDS)
        if seen.closed_after_seconds is not None:
            break
    return client.seen


def assert_cut_silently(seen: Watched, deadline_seconds: float) -> None:
    assert seen.received == b""
    assert seen.closed_after_seconds is not None, "the connection is still open"
    assert deadline_seconds - 0.5 <= seen.closed_after_seconds
    assert seen.closed_after_seconds <= deadline_seconds + CLOSE_SLACK_SECONDS


def test_a_client_trickling_its_head_is_cut_off_while_others_are_served(
    server: Server, clients: list[Client]
) -> None:
    slow = connect(server, clients)
    slow.send(b"POST /v1/credits HTTP/1.1\r\nHost: x\r\n")
    slow.send(b"X")
    assert slow.watch(TRICKLE_GAP_SECONDS).closed_after_seconds is None
    ready = httpx.get(f"{server.base_url}/readyz", timeout=5)  # meanwhile, another client
    assert ready.status_code == 200
    seen = trickle(slow, b"-Slow: " + b"a" * 60, HEADER_TIMEOUT_SECONDS)
    assert_cut_silently(seen, HEADER_TIMEOUT_SECONDS)


def test_a_connection_that_sends_nothing_is_closed(server: Server, clients: list[Client]) -> None:
    idle = connect(server, clients)
    seen = idle.watch(HEADER_TIMEOUT_SECONDS + CLOSE_SLACK_SECONDS)
    assert_cut_silently(seen, HEADER_TIMEOUT_SECONDS)


def test_an_idle_kept_alive_connection_is_closed_after_the_keep_alive_bound(
    server: Server, clients: list[Client]
) -> None:
    kept = connect(server, clients)
    kept.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    answered = b""
    for _ in range(50):  # the answer is small: a few reads at most
        answered = kept.watch(0.1).received
        if b"\r\n\r\n" in answered and answered.endswith(b"}"):
            break
    assert answered.startswith(b"HTTP/1.1 200 ")
    assert b"connection: close" not in answered.lower()
    answered_at = time.monotonic() - kept.opened_at
    seen = kept.watch(KEEP_ALIVE_SECONDS + CLOSE_SLACK_SECONDS)
    assert seen.received == answered  # nothing more: closed, not answered
    assert seen.closed_after_seconds is not None, "the kept-alive connection is still open"
    assert seen.closed_after_seconds - answered_at <= KEEP_ALIVE_SECONDS + CLOSE_SLACK_SECONDS


def test_a_client_trickling_its_body_is_cut_off(server: Server, clients: list[Client]) -> None:
    slow = connect(server, clients)
    slow.send(b"POST /v1/credits HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
    seen = trickle(slow, b'{"amount": 1' + b" " * 88, BODY_TIMEOUT_SECONDS)
    assert_cut_silently(seen, BODY_TIMEOUT_SECONDS)
    assert "Traceback" not in server.log()


def test_a_head_past_the_size_cap_is_refused_with_400(
    server: Server, clients: list[Client]
) -> None:
    large = connect(server, clients)
    large.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Large: " + b"a" * MAX_HEAD_BYTES)
    seen = large.watch(CLOSE_SLACK_SECONDS)
    head, _, body = seen.received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ")
    assert b"content-type: application/problem+json" in head.lower()
    assert orjson.loads(body)["code"] == "invalid_request"
    assert seen.closed_after_seconds is not None


def test_past_the_connection_cap_a_request_gets_503_until_connections_close(
    database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    log_path = tmp_path_factory.mktemp("http-max-connections") / "serve.log"
    cap = {"WALLETD_HTTP_MAX_CONNECTIONS": str(MAX_CONNECTIONS)}
    with serving(database_url, log_path, cap) as server:
        holders = [Client(server) for _ in range(MAX_CONNECTIONS)]
        try:
            refused = httpx.get(f"{server.base_url}/healthz", timeout=5)
        finally:
            for holder in holders:
                holder.close()
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "1"
        assert refused.headers["connection"] == "close"
        assert refused.headers["content-type"] == "application/problem+json"
        assert refused.json()["code"] == "unavailable"
        statuses = []
        for _ in range(50):  # the server notices the holders leave within a few reads
            statuses.append(httpx.get(f"{server.base_url}/healthz", timeout=5).status_code)
            if statuses[-1] == 200:
                break
            time.sleep(0.1)
        assert statuses[-1] == 200, statuses
