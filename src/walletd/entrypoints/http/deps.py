"""Typed FastAPI dependencies: the process's services, the caller, the idempotency key."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Annotated, Any
from uuid import UUID

from fastapi import Depends, Header, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from walletd.adapters.postgres import Database
from walletd.entrypoints.http.rate_limit import enforce_rate_limit
from walletd.errors import Forbidden, IdempotencyKeyRequired, InvalidRequest, NotFound, Unauthorized
from walletd.service_layer import tenants
from walletd.service_layer.posting import PostingEngine
from walletd.service_layer.queries import LedgerQueries
from walletd.service_layer.tenants import Principal
from walletd.service_layer.wallets import WalletService
from walletd.settings import Settings

AUTH_CACHE_SECONDS = 5.0
# A cached key in use is looked up again in the background this long before it expires.
AUTH_REFRESH_SECONDS = 1.0
AUTH_CACHE_MAX = 10_000
IDEMPOTENCY_KEY_MAX = 255


@dataclass
class Services:
    """Everything a request handler may use; one instance per process."""

    settings: Settings
    database: Database
    engine: PostingEngine
    wallets: WalletService
    queries: LedgerQueries
    extras: dict[str, Any] = field(default_factory=dict)
    _auth_cache: dict[str, tuple[float, Principal]] = field(default_factory=dict)
    _auth_lookups: dict[str, asyncio.Task[Principal]] = field(default_factory=dict)

    def cached_principal(self, secret: str) -> Principal | None:
        """The principal of ``secret`` if it was authenticated less than 5 s ago.

        In the last second of that, the first caller starts one lookup in the
        background, so a key in steady use never expires under its requests (which
        would all look it up at once); a key found revoked is dropped at once.
        """
        cached = self._auth_cache.get(secret)
        if cached is None:
            return None
        expires, principal = cached
        now = time.monotonic()
        if now >= expires:
            return None
        if now >= expires - AUTH_REFRESH_SECONDS and secret not in self._auth_lookups:
            self._look_up(secret)
        return principal

    async def authenticate(self, secret: str) -> Principal:
        """The caller of ``secret``: cached, else one database lookup per secret at a time."""
        cached = self.cached_principal(secret)
        if cached is not None:
            return cached
        lookup = self._auth_lookups.get(secret) or self._look_up(secret)
        return await asyncio.shield(lookup)

    def _look_up(self, secret: str) -> asyncio.Task[Principal]:
        lookup = asyncio.get_running_loop().create_task(self._read_key(secret))
        self._auth_lookups[secret] = lookup
        lookup.add_done_callback(functools.partial(self._looked_up, secret))
        return lookup

    async def _read_key(self, secret: str) -> Principal:
        now = time.monotonic()
        async with self.database.connection() as connection:
            principal = await tenants.authenticate(connection, secret)
        if len(self._auth_cache) >= AUTH_CACHE_MAX:
            self._auth_cache.clear()
        self._auth_cache[secret] = (now + AUTH_CACHE_SECONDS, principal)
        return principal

    def _looked_up(self, secret: str, lookup: asyncio.Task[Principal]) -> None:
        self._auth_lookups.pop(secret, None)
        if not lookup.cancelled() and isinstance(lookup.exception(), Unauthorized):
            self._auth_cache.pop(secret, None)  # revoked meanwhile


async def get_services(request: Request) -> Services:
    # async: a plain ``def`` dependency would be run in a worker thread per request.
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


# Documents the bearer scheme in OpenAPI; a missing/other-scheme header gives None → 401.
BEARER = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer wdk_…`")


async def get_principal(
    services: ServicesDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)],
) -> Principal:
    if credentials is None:
        raise Unauthorized("missing or malformed Authorization: Bearer <key>")
    principal = await services.authenticate(credentials.credentials)
    await enforce_rate_limit(services, principal)  # after auth, before any handler work
    return principal


# The scope each ``require(...)`` dependency enforces: the security tests read it off
# the route table, so a /v1 route that enforces no scope fails them.
REQUIRED_SCOPE: dict[Callable[..., Awaitable[Principal]], str] = {}


def require(scope: str) -> Callable[..., Awaitable[Principal]]:
    async def dependency(
        principal: Annotated[Principal, Depends(get_principal)],
    ) -> Principal:
        if scope not in principal.scopes:
            raise Forbidden(f"this key lacks the {scope!r} scope")
        return principal

    REQUIRED_SCOPE[dependency] = scope
    return dependency


ReadPrincipal = Annotated[Principal, Depends(require("read"))]
WritePrincipal = Annotated[Principal, Depends(require("write"))]
AdminPrincipal = Annotated[Principal, Depends(require("admin"))]


def valid_idempotency_key(key: str) -> bool:
    return 1 <= len(key) <= IDEMPOTENCY_KEY_MAX and all(" " <= ch <= "~" for ch in key)


async def required_idempotency_key(
    idempotency_key: Annotated[
        str | None, Header(description="Required here (else 400): 1-255 printable ASCII")
    ] = None,
) -> str:
    if idempotency_key is None:
        raise IdempotencyKeyRequired("this request needs an Idempotency-Key header")
    if not valid_idempotency_key(idempotency_key):
        raise InvalidRequest("Idempotency-Key must be 1-255 printable ASCII characters")
    return idempotency_key


async def optional_idempotency_key(
    idempotency_key: Annotated[
        str | None, Header(description="Optional here: 1-255 printable ASCII")
    ] = None,
) -> str | None:
    if idempotency_key is not None and not valid_idempotency_key(idempotency_key):
        raise InvalidRequest("Idempotency-Key must be 1-255 printable ASCII characters")
    return idempotency_key


RequiredKey = Annotated[str, Depends(required_idempotency_key)]
OptionalKey = Annotated[str | None, Depends(optional_idempotency_key)]


def path_uuid(value: str, kind: str) -> UUID:
    """A path id that is not a UUID names nothing: 404."""
    try:
        return UUID(value)
    except ValueError as error:
        raise NotFound(f"{kind} {value} not found") from error
