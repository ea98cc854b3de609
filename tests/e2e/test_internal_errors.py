"""An unexpected failure is a bare 500 problem naming the request id, never a stack trace."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI

from tests.support.api import ApiHarness
from walletd.entrypoints.http.app import create_app
from walletd.settings import Settings


class Broken(RuntimeError):
    """Stands for a bug: nothing maps it to a client error."""


@pytest_asyncio.fixture
async def app(database_url: str) -> AsyncIterator[FastAPI]:
    app = create_app(Settings(database_url=database_url))
    async with app.router.lifespan_context(app):
        yield app


async def _fail(*args: Any, **kwargs: Any) -> Any:
    raise Broken("secret internals")


@pytest.mark.parametrize("path", ["/v1/transfers", "/v1/credits"])
async def test_a_bug_answers_500_with_the_request_id_of_the_response(
    app: FastAPI, api: ApiHarness, path: str
) -> None:
    client = await api.tenant()
    alice, bob = await client.wallet(), await client.wallet()
    app.state.services.engine.post = _fail
    body = (
        {"from_wallet_id": alice["id"], "to_wallet_id": bob["id"], "amount": 1, "currency": "EUR"}
        if path == "/v1/transfers"
        else {"wallet_id": alice["id"], "amount": 1, "currency": "EUR"}
    )
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://walletd.test") as http:
        headers = {"Authorization": f"Bearer {client.key}"}
        for _ in range(2):  # the first authenticates the key (FastAPI), the second is lean
            headers["Idempotency-Key"] = uuid.uuid4().hex
            response = await http.post(path, json=body, headers=headers)
            assert response.status_code == 500
            assert response.headers["content-type"] == "application/problem+json"
            problem = response.json()
            assert problem["code"] == "internal_error"
            assert response.headers["x-request-id"] in problem["detail"]
            assert "secret" not in response.text and "Traceback" not in response.text
        given = {**headers, "Idempotency-Key": uuid.uuid4().hex, "X-Request-Id": "trace-42"}
        response = await http.post(path, json=body, headers=given)
        assert response.headers["x-request-id"] == "trace-42"
        assert "trace-42" in response.json()["detail"]
