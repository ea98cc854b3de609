"""The lean path for postings: ``POST /v1/credits``, ``/v1/debits``, ``/v1/transfers``
and ``/v1/transfers/batch``.

These routes carry nearly all of a wallet's traffic, and on them FastAPI's per-request
work (dependency solving, routing, a thread hop) cost more CPU than the posting
itself; on batches, its cached copies of the parsed body held memory while the batch
waited for its turn. This ASGI middleware serves them directly when the request is plainly
well-formed:

- a JSON body (no ``Content-Type``, or ``application/json``) that the route's own
  pydantic model accepts;
- one valid ``Idempotency-Key``;
- ``Authorization: Bearer <key>`` whose key was authenticated in the last seconds
  (:meth:`KeyCache.cached_principal`) and has the ``write`` scope.

It then runs the very code the FastAPI route runs (rate limit, then the route's entry
in :data:`routes_money.POSTINGS`) and answers errors through the same handlers. Any
other request — a missing or unknown key, bad JSON, a validation error, another
content type — is handed, body and all, to the FastAPI app, so every error a client
can see is produced in one place.
``walletd_http_lean_requests_total{outcome}`` counts both ways.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Any

import orjson
from fastapi.routing import APIRoute, iter_route_contexts
from prometheus_client import Counter
from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from walletd.entrypoints.bootstrap import Services
from walletd.entrypoints.http.deps import limit_rate, valid_idempotency_key
from walletd.entrypoints.http.problems import handled_response
from walletd.entrypoints.http.routes_money import POSTINGS, PostingHandler
from walletd.service_layer.tenants import Principal

LEAN_REQUESTS = Counter(
    "walletd_http_lean_requests",
    "Postings served by the lean path, or delegated to the full FastAPI app.",
    ["outcome"],
)
_SERVED = LEAN_REQUESTS.labels("served")
_DELEGATED = LEAN_REQUESTS.labels("delegated")
_JSON = b"application/json"


class LeanPostingMiddleware:
    """Serves well-formed postings; hands everything else to ``app`` unchanged."""

    def __init__(self, app: ASGIApp, services: Services, routes: Sequence[BaseRoute]) -> None:
        self.app = app
        self.services = services
        self._targets: dict[str, tuple[APIRoute, type[BaseModel], PostingHandler]] = {}
        for context in iter_route_contexts(routes):
            route = context.original_route
            if isinstance(route, APIRoute) and "POST" in (context.methods or ()):
                posting = POSTINGS.get(context.path or "")
                if posting is not None:
                    self._targets[route.path] = (route, *posting)
        assert len(self._targets) == len(POSTINGS), "a posting route is missing"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        target = None
        if scope["type"] == "http" and scope["method"] == "POST":
            target = self._targets.get(scope["path"])
        if target is None:
            await self.app(scope, receive, send)
            return
        messages, body = await _read_body(receive)
        prepared = None if body is None else self._prepare(scope, body, target[1])
        if prepared is None:
            _DELEGATED.inc()
            await self.app(scope, _replaying(messages, receive), send)
            return
        _SERVED.inc()
        messages, body = [], None  # the raw body is not kept while the posting waits
        principal, key, model = prepared
        route, _, handler = target
        scope["route"] = route  # the route template, for the request metrics
        try:
            await limit_rate(self.services, principal)
            response = await handler(self.services, principal.tenant_id, key, model)
        except Exception as error:
            handled = await handled_response(Request(scope), error)
            if handled is None:
                raise
            response = handled
        await response(scope, receive, send)

    def _prepare(
        self, scope: Scope, body: bytes, model_type: type[BaseModel]
    ) -> tuple[Principal, str, BaseModel] | None:
        """(caller, key, body) when the request is plainly well-formed, else None."""
        authorization = key = content_type = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = authorization if authorization is not None else value
            elif name == b"idempotency-key":
                key = key if key is not None else value
            elif name == b"content-type":
                content_type = content_type if content_type is not None else value
        if authorization is None or key is None or not body:
            return None
        if content_type is not None and content_type.partition(b";")[0].strip().lower() != _JSON:
            return None
        scheme, _, secret = authorization.decode("latin-1").partition(" ")
        secret = secret.strip()
        if scheme.lower() != "bearer" or not secret:
            return None
        principal = self.services.keys.cached_principal(secret)
        if principal is None or "write" not in principal.scopes:
            return None
        key_text = key.decode("latin-1")
        if not valid_idempotency_key(key_text):
            return None
        try:
            parsed: Any = orjson.loads(body)
            model = model_type.model_validate(parsed)
        except (orjson.JSONDecodeError, ValidationError):
            return None
        return principal, key_text, model


async def _read_body(receive: Receive) -> tuple[list[Message], bytes | None]:
    """Every message up to the end of the body, and the body (None: the client left)."""
    messages: list[Message] = []
    chunks: list[bytes] = []
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            return messages, None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return messages, b"".join(chunks)


def _replaying(messages: list[Message], receive: Receive) -> Receive:
    """A ``receive`` that gives the messages already read, then the client's next ones."""
    pending = deque(messages)

    async def replayed() -> Message:
        if pending:
            return pending.popleft()
        return await receive()

    return replayed
