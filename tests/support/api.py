"""An in-process HTTP harness: the real app, its lifespan, and a keyed client per tenant.

``ApiHarness`` builds the FastAPI app from real settings (real PostgreSQL, optional
Redis), enters its lifespan, and hands out ``TenantClient``s whose requests carry the
tenant's API key and a fresh ``Idempotency-Key`` unless the test gives one.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import httpx

from walletd.entrypoints.http.app import create_app
from walletd.service_layer.tenants import create_api_key
from walletd.settings import Settings


class TenantClient:
    """Requests as one tenant; ``key`` is that tenant's secret."""

    def __init__(self, http: httpx.AsyncClient, key: str, tenant_id: uuid.UUID) -> None:
        self.http, self.key, self.tenant_id = http, key, tenant_id

    def headers(self, idempotency_key: str | None = None, auto_key: bool = True) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {self.key}"}
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        elif auto_key:
            headers["Idempotency-Key"] = uuid.uuid4().hex
        return headers

    async def post(
        self,
        path: str,
        json: Any = None,
        *,
        idempotency_key: str | None = None,
        auto_key: bool = True,
        **kwargs: Any,
    ) -> httpx.Response:
        headers = {**self.headers(idempotency_key, auto_key), **kwargs.pop("headers", {})}
        return await self.http.post(path, json=json, headers=headers, **kwargs)

    async def put(self, path: str, json: Any = None) -> httpx.Response:
        return await self.http.put(path, json=json, headers=self.headers(auto_key=False))

    async def get(self, path: str, **kwargs: Any) -> httpx.Response:
        headers = {**self.headers(auto_key=False), **kwargs.pop("headers", {})}
        return await self.http.get(path, headers=headers, **kwargs)

    async def wallet(self, currency: str = "EUR", **fields: Any) -> dict[str, Any]:
        response = await self.post("/v1/wallets", {"currency": currency, **fields})
        assert response.status_code == 201, response.text
        body: dict[str, Any] = response.json()
        return body

    async def credit(self, wallet_id: str, amount: int, currency: str = "EUR") -> dict[str, Any]:
        response = await self.post(
            "/v1/credits", {"wallet_id": wallet_id, "amount": amount, "currency": currency}
        )
        assert response.status_code == 201, response.text
        body: dict[str, Any] = response.json()
        return body


class ApiHarness:
    def __init__(self, settings: Settings, http: httpx.AsyncClient) -> None:
        self.settings, self.http = settings, http

    async def tenant(
        self, scopes: str = "read,write,admin", name: str | None = None
    ) -> TenantClient:
        connection = await asyncpg.connect(self.settings.database_url)
        try:
            new_key = await create_api_key(
                connection, name or f"tenant-{uuid.uuid4().hex[:12]}", scopes.split(",")
            )
        finally:
            await connection.close()
        return TenantClient(self.http, new_key.secret, new_key.tenant_id)


@asynccontextmanager
async def api_harness(settings: Settings) -> AsyncIterator[ApiHarness]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://walletd.test") as http:
            yield ApiHarness(settings, http)
