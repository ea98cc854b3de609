"""The HTTP/1.1 protocol of ``walletd serve``: uvicorn's httptools protocol plus the bounds
uvicorn lacks, so that no client can hold a connection or grow a worker's memory at will.

uvicorn itself bounds idle kept-alive connections (``timeout_keep_alive``) and the
listen backlog. Here, per connection:

- the request head must be complete within ``http_header_timeout_seconds`` of the
  connection opening, or of the first byte after the previous response; else the
  connection is closed without an answer (this also closes connections that send nothing);
- the body must be complete within ``http_body_timeout_seconds`` of the head; else the
  connection is closed (the handler sees the client leave);
- a head larger than ``http_max_head_bytes`` is answered 400 ``invalid_request`` and the
  connection closed;
- past ``http_max_connections`` open connections, or as many requests running, in the
  worker, a request is answered 503 ``unavailable`` with ``Retry-After`` and its
  connection closed (uvicorn's own ``limit_concurrency`` answers in plain text).

Besides the one armed when a connection opens, a timer is armed only when a read leaves
a request incomplete: a request that arrives in one piece costs none.
"""

from __future__ import annotations

import asyncio
import enum
import functools
from dataclasses import dataclass
from typing import Any

import orjson
from uvicorn._types import ASGIReceiveCallable, ASGISendCallable, Scope
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from walletd.adapters.metrics import HTTP_CONNECTIONS_CUT
from walletd.entrypoints.http.problems import PROBLEM_MEDIA_TYPE, error_response, problem_body
from walletd.errors import Unavailable
from walletd.settings import Settings


@dataclass(frozen=True)
class ConnectionLimits:
    header_timeout_seconds: float
    body_timeout_seconds: float
    max_head_bytes: int
    max_connections: int


@functools.cache
def connection_limits() -> ConnectionLimits:
    """Read once per process: uvicorn's workers get their settings from the environment."""
    settings = Settings()
    return ConnectionLimits(
        header_timeout_seconds=settings.http_header_timeout_seconds,
        body_timeout_seconds=settings.http_body_timeout_seconds,
        max_head_bytes=settings.http_max_head_bytes,
        max_connections=settings.http_max_connections,
    )


class _Reading(enum.Enum):
    HEAD = "head"  # waiting for, or reading, a request head
    BODY = "body"  # the head is complete, the body is not
    NOTHING = "nothing"  # the request is complete (being answered), or the connection upgraded


async def _too_many_connections(
    scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
) -> None:
    response = error_response(Unavailable("the server has too many open connections"))
    response.headers["connection"] = "close"
    await response(scope, receive, send)  # type: ignore[arg-type]


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.limits = connection_limits()
        self.reading = _Reading.HEAD
        self.head_bytes = 0
        self.deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(self.limits.header_timeout_seconds, "header_timeout")

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.reading is _Reading.HEAD:
            self.head_bytes += len(data)
        super().data_received(data)  # the parser callbacks below run in here
        if self.transport.is_closing():
            return
        # Only a read that leaves the request incomplete is checked or arms a timer: the
        # read that completes a head is not counted against its size, it ends the head.
        if self.reading is _Reading.HEAD:
            if self.head_bytes > self.limits.max_head_bytes:
                self._refuse_large_head()
            elif self.deadline is None:
                self._arm(self.limits.header_timeout_seconds, "header_timeout")
        elif self.reading is _Reading.BODY and self.deadline is None:
            self._arm(self.limits.body_timeout_seconds, "body_timeout")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.reading = _Reading.HEAD

    def on_headers_complete(self) -> None:
        self._disarm()
        self.head_bytes = 0
        if self.parser.should_upgrade() and self._should_upgrade():
            self.reading = _Reading.NOTHING  # the connection is handed to another protocol
        else:
            self.reading = _Reading.BODY
            if self._over_limit():
                HTTP_CONNECTIONS_CUT.labels("too_many_connections").inc()
                self.app = _too_many_connections  # answered, then the connection closes
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._disarm()
        self.reading = _Reading.NOTHING
        super().on_message_complete()

    def on_response_complete(self) -> None:
        # Waiting for the next head, unless it has begun or a whole request is queued.
        # Any byte now (even the blank lines the parser skips) starts the header timer.
        if self.reading is _Reading.NOTHING and not self.pipeline:
            self.reading = _Reading.HEAD
        super().on_response_complete()

    def _over_limit(self) -> bool:
        maximum = self.limits.max_connections
        return len(self.connections) > maximum or len(self.tasks) >= maximum

    def _arm(self, seconds: float, reason: str) -> None:
        self.deadline = self.loop.call_later(seconds, self._cut, reason)

    def _disarm(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None

    def _cut(self, reason: str) -> None:
        self.deadline = None
        if not self.transport.is_closing():
            HTTP_CONNECTIONS_CUT.labels(reason).inc()
            self.transport.close()

    def _refuse_large_head(self) -> None:
        HTTP_CONNECTIONS_CUT.labels("head_too_large").inc()
        detail = f"the request head is larger than {self.limits.max_head_bytes} bytes"
        body = orjson.dumps(problem_body(400, "invalid_request", "Invalid request", detail))
        head = [b"HTTP/1.1 400 Bad Request\r\n"]
        for name, value in self.server_state.default_headers:
            head.append(name + b": " + value + b"\r\n")
        head.append(b"content-type: " + PROBLEM_MEDIA_TYPE.encode() + b"\r\n")
        head.append(b"content-length: " + str(len(body)).encode() + b"\r\n")
        head.append(b"connection: close\r\n\r\n")
        self.transport.write(b"".join(head) + body)
        self.transport.close()
