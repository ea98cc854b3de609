"""Typed FastAPI dependencies: the process's services, the caller, the idempotency key."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated
from uuid import UUID

from fastapi import Depends, Header, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from walletd.entrypoints.bootstrap import Services
from walletd.errors import Forbidden, IdempotencyKeyRequired, InvalidRequest, NotFound, Unauthorized
from walletd.service_layer.tenants import Principal

IDEMPOTENCY_KEY_MAX = 255


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
    principal = await services.keys.authenticate(credentials.credentials)
    await limit_rate(services, principal)  # after auth, before any handler work
    return principal


async def limit_rate(services: Services, principal: Principal) -> None:
    """Take one token of the key's bucket (429 when empty); nothing when limiting is off."""
    if services.rate_limiter is not None:
        await services.rate_limiter.check(principal.key_id)


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
