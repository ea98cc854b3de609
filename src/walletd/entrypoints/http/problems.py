"""The one place where errors become RFC 9457 ``application/problem+json`` responses.

Handlers raise :mod:`walletd.errors` exceptions; framework validation errors map to
400/422 here; anything unexpected is logged with a request id and answered with a
bare "internal error" — never a stack trace.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import asyncpg
import orjson
import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from walletd.adapters.postgres import UNAVAILABLE_ERRORS
from walletd.entrypoints.http.schemas import Problem
from walletd.errors import RateLimited, Unavailable, ValidationFailed, WalletdError
from walletd.ids import process_unique_id

PROBLEM_MEDIA_TYPE = "application/problem+json"
REQUEST_ID_KEY = "walletd.request_id"  # in the ASGI scope: the id sent as X-Request-Id
logger = structlog.get_logger("walletd.http")


def _documented(description: str) -> dict[str, Any]:
    schema = Problem.model_json_schema()
    return {"description": description, "content": {PROBLEM_MEDIA_TYPE: {"schema": schema}}}


# OpenAPI: the problems every /v1 route may answer (app.py adds them to each router).
PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: _documented("invalid_request (malformed JSON) or idempotency_key_required"),
    401: _documented("unauthorized: missing or invalid API key"),
    403: _documented("forbidden: the key lacks the scope"),
    404: _documented("not_found: no such object for this tenant"),
    413: _documented("payload_too_large: body over the limit"),
    422: _documented("validation_error or a business rule (code says which)"),
    429: _documented("rate_limited: see Retry-After"),
    503: _documented("unavailable: a dependency did not answer; see Retry-After"),
}
# POSTs that take an Idempotency-Key may also answer 409 while the first request runs.
IDEMPOTENT_RESPONSES: dict[int | str, dict[str, Any]] = {
    **PROBLEM_RESPONSES,
    409: _documented("idempotency_key_in_use: the first request with this key is running"),
}


def problem_body(status: int, code: str, title: str, detail: str, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": f"urn:walletd:problem:{code}",
        "title": title,
        "status": status,
        "detail": detail,
        "code": code,
    }
    body.update(extra)
    return body


def error_body(error: WalletdError, **extra: Any) -> dict[str, Any]:
    return problem_body(error.status, error.code, error.title, error.detail, **extra)


def problem_response(body: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps(body),
        status_code=int(body["status"]),
        media_type=PROBLEM_MEDIA_TYPE,
        headers=headers,
    )


def error_response(error: WalletdError, **extra: Any) -> Response:
    headers = None
    if isinstance(error, RateLimited | Unavailable):
        headers = {"Retry-After": str(error.retry_after_seconds)}
    return problem_response(error_body(error, **extra), headers)


def _describe(errors: Sequence[Any]) -> str:
    parts = []
    for error in list(errors)[:5]:
        location = ".".join(str(part) for part in error.get("loc", ()) if part != "body")
        message = str(error.get("msg", "invalid"))
        parts.append(f"{location}: {message}" if location else message)
    return "; ".join(parts) or "invalid input"


def is_malformed_body(errors: Sequence[Any]) -> bool:
    """Unparseable or empty JSON: a 400, not a 422."""
    for error in errors:
        kind = error.get("type")
        if kind == "json_invalid":
            return True
        if kind == "missing" and tuple(error.get("loc", ())) == ("body",):
            return True
    return False


async def _on_validation(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    if is_malformed_body(errors):
        return problem_response(
            problem_body(400, "invalid_request", "Invalid request", "the body is not valid JSON")
        )
    return problem_response(
        problem_body(422, "validation_error", "Validation error", _describe(errors))
    )


async def _on_walletd_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, WalletdError)
    if exc.status >= 500 and not isinstance(exc, Unavailable):
        return await unexpected_response(request, exc)
    return error_response(exc)


async def _on_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    status = exc.status_code
    code = {
        400: "invalid_request",
        401: "unauthorized",
        403: "forbidden",
        404: "not_found",
        413: "payload_too_large",
        422: "validation_error",
    }.get(status, "invalid_request")
    title = {404: "Not found", 405: "Method not allowed", 413: "Payload too large"}.get(
        status, "Invalid request"
    )
    detail = str(exc.detail) if status != 404 else "no such resource"
    headers = dict(exc.headers) if exc.headers else None
    return problem_response(problem_body(status, code, title, detail), headers)


# Text PostgreSQL cannot store (U+0000) that no request model refused first: the client's
# data, not a server fault. A safety net; request models should refuse it up front.
UNSTORABLE_TEXT_ERRORS: tuple[type[Exception], ...] = (
    asyncpg.exceptions.CharacterNotInRepertoireError,
    asyncpg.exceptions.UntranslatableCharacterError,
)


async def _on_unstorable_text(request: Request, exc: Exception) -> Response:
    logger.warning("unstorable_text", path=request.url.path, error=type(exc).__name__)
    return error_response(ValidationFailed("text must not contain NUL (\\u0000) characters"))


async def unexpected_response(request: Request, exc: Exception) -> Response:
    """The 500 (or 503) for an exception nothing else handled; logged with the request id."""
    if isinstance(exc, UNAVAILABLE_ERRORS):
        return error_response(Unavailable("a dependency did not answer in time"))
    request_id = request.scope.get(REQUEST_ID_KEY) or process_unique_id()
    logger.error(
        "unhandled_error",
        request_id=request_id,
        path=request.url.path,
        error=repr(exc),
        exc_info=exc,
    )
    body = problem_body(
        500, "internal_error", "Internal error", f"internal error (request id {request_id})"
    )
    return problem_response(body)


Handler = Callable[[Request, Exception], Awaitable[Response]]
# Exceptions a handler (not the framework) raises, and their answers; the catch-all apart.
RAISED_ERROR_HANDLERS: tuple[tuple[type[Exception], Handler], ...] = (
    (WalletdError, _on_walletd_error),
    *((unstorable, _on_unstorable_text) for unstorable in UNSTORABLE_TEXT_ERRORS),
)


async def handled_response(request: Request, exc: Exception) -> Response | None:
    """The answer of :data:`RAISED_ERROR_HANDLERS` for ``exc``, for code outside the router.

    Used by the lean posting path; ``None`` means "re-raise": the request middleware
    then answers 500 exactly as for a route.
    """
    for kind, handler in RAISED_ERROR_HANDLERS:
        if isinstance(exc, kind):
            return await handler(request, exc)
    return None


def install(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _on_validation)
    app.add_exception_handler(StarletteHTTPException, _on_http_exception)
    for kind, handler in RAISED_ERROR_HANDLERS:
        app.add_exception_handler(kind, handler)
    app.add_exception_handler(Exception, unexpected_response)
