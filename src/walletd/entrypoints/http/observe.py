"""ASGI middleware: request metrics and the ``X-Request-Id`` header, without buffering.

The id is the client's ``X-Request-Id`` when it sent a sane one, else a fresh one; it is
also left in the scope, and an exception nothing handled is answered here (500
problem, logged once), so that the header, the body and the log line name one id.

A plain ASGI wrapper rather than Starlette's ``BaseHTTPMiddleware``: it adds no task,
stream or exception group to each request, which matters on the posting hot path.
"""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from walletd.adapters.metrics import HTTP_LATENCY, HTTP_REQUESTS
from walletd.entrypoints.http.problems import REQUEST_ID_KEY, unexpected_response
from walletd.ids import process_unique_id


class ObserveMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = _request_id(scope)
        scope[REQUEST_ID_KEY] = request_id.decode("latin-1")  # for the 500 handler's log
        status = 500
        answered = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, answered
            if message["type"] == "http.response.start":
                status, answered = message["status"], True
                headers = list(message.get("headers", ()))
                headers.append((b"x-request-id", request_id))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception as error:
            if answered:
                raise
            # Answered here rather than by the framework's outermost handler, so that
            # the 500 carries the X-Request-Id its body and log line name. Logged once.
            response = await unexpected_response(Request(scope), error)
            await response(scope, receive, send_with_id)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", "unmatched")
            method = scope.get("method", "")
            HTTP_REQUESTS.labels(method, template, str(status)).inc()
            HTTP_LATENCY.labels(method, template).observe(time.perf_counter() - started)


def _request_id(scope: Scope) -> bytes:
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id" and 0 < len(value) <= 128:
            return bytes(value)
    return process_unique_id().encode()
