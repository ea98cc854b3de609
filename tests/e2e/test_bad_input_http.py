"""Bad input gets its 4xx problem+json and changes nothing (SPEC.md section 2)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from tests.support.api import ApiHarness, TenantClient


async def _funded_pair(client: TenantClient) -> tuple[str, str]:
    alice, bob = await client.wallet(), await client.wallet()
    await client.credit(alice["id"], 1_000)
    return alice["id"], bob["id"]


async def _versions(client: TenantClient, *wallet_ids: str) -> list[int]:
    return [(await client.get(f"/v1/wallets/{w}")).json()["version"] for w in wallet_ids]


BAD_AMOUNTS: list[Any] = [0, -1, 1.5, 10.0, "10", True, None, 2**63, 10**30, [], {}]


@pytest.mark.parametrize("amount", BAD_AMOUNTS)
async def test_bad_amounts_are_422_and_change_nothing(api: ApiHarness, amount: Any) -> None:
    client = await api.tenant()
    alice, bob = await _funded_pair(client)
    response = await client.post(
        "/v1/transfers",
        {"from_wallet_id": alice, "to_wallet_id": bob, "amount": amount, "currency": "EUR"},
    )
    assert response.status_code == 422
    problem = response.json()
    assert problem["code"] == "validation_error" and problem["status"] == 422
    assert set(problem) >= {"type", "title", "status", "detail", "code"}
    assert await _versions(client, alice, bob) == [1, 0]


@pytest.mark.parametrize("currency", ["XXY", "eur", "EURO", "", 978, None])
async def test_unknown_currencies_are_422(api: ApiHarness, currency: Any) -> None:
    client = await api.tenant()
    response = await client.post("/v1/wallets", {"currency": currency})
    assert (response.status_code, response.json()["code"]) == (422, "validation_error")


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"{not json", 400, "invalid_request"),
        (b"", 400, "invalid_request"),
        (b"[1, 2]", 422, "validation_error"),
        (b'"text"', 422, "validation_error"),
        (b"{}", 422, "validation_error"),
        (b"[" * 100_000 + b"]" * 100_000, 400, "invalid_request"),
    ],
)
async def test_malformed_bodies(api: ApiHarness, body: bytes, status: int, code: str) -> None:
    client = await api.tenant()
    response = await api.http.post(
        "/v1/credits",
        content=body,
        headers={**client.headers(), "Content-Type": "application/json"},
    )
    assert (response.status_code, response.json()["code"]) == (status, code)


async def test_ten_megabyte_body_is_413(api: ApiHarness) -> None:
    client = await api.tenant()
    response = await api.http.post(
        "/v1/credits",
        content=b"a" * 10_000_000,
        headers={**client.headers(), "Content-Type": "application/json"},
    )
    assert (response.status_code, response.json()["code"]) == (413, "payload_too_large")


async def test_non_uuid_ids(api: ApiHarness) -> None:
    client = await api.tenant()
    wallet = await client.wallet()
    assert (await client.get("/v1/wallets/not-a-uuid")).status_code == 404
    assert (await client.get("/v1/transactions/123")).status_code == 404
    assert (await client.get(f"/v1/wallets/{uuid.uuid4()}")).json()["code"] == "not_found"
    response = await client.post(
        "/v1/credits", {"wallet_id": "nope", "amount": 1, "currency": "EUR"}
    )
    assert (response.status_code, response.json()["code"]) == (422, "validation_error")
    missing = await client.post(
        "/v1/credits", {"wallet_id": str(uuid.uuid4()), "amount": 1, "currency": "EUR"}
    )
    assert (missing.status_code, missing.json()["code"]) == (404, "not_found")
    assert (await client.get(f"/v1/wallets/{wallet['id']}")).json()["version"] == 0


def _nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth - 1):
        value = {"k": value}
    return value


async def test_metadata_caps_on_depth_and_size(api: ApiHarness) -> None:
    client = await api.tenant()
    ok = await client.post("/v1/wallets", {"currency": "EUR", "metadata": _nested(5)})
    assert ok.status_code == 201
    deep = await client.post("/v1/wallets", {"currency": "EUR", "metadata": _nested(6)})
    assert (deep.status_code, deep.json()["code"]) == (422, "validation_error")
    large = await client.post("/v1/wallets", {"currency": "EUR", "metadata": {"x": "a" * 17_000}})
    assert (large.status_code, large.json()["code"]) == (422, "validation_error")
    not_object = await client.post("/v1/wallets", {"currency": "EUR", "metadata": [1]})
    assert not_object.status_code == 422


@pytest.mark.parametrize(
    "params",
    [
        {"limit": 0},
        {"limit": 501},
        {"limit": "x"},
        {"cursor": "!!!"},
        {"from": "yesterday"},
        {"to": "2026-13-01T00:00:00Z"},
    ],
)
async def test_bad_query_parameters_are_422(api: ApiHarness, params: dict[str, Any]) -> None:
    client = await api.tenant()
    wallet = await client.wallet()
    response = await client.get(f"/v1/wallets/{wallet['id']}/entries", params=params)
    assert (response.status_code, response.json()["code"]) == (422, "validation_error")


async def test_balance_needs_a_valid_at(api: ApiHarness) -> None:
    client = await api.tenant()
    wallet = await client.wallet()
    response = await client.get(f"/v1/wallets/{wallet['id']}/balance", params={"at": "noon"})
    assert (response.status_code, response.json()["code"]) == (422, "validation_error")


@pytest.mark.parametrize("key", ["", "x" * 256, "caf\u00e9".encode(), "tab\there"])
async def test_malformed_idempotency_key_is_400(api: ApiHarness, key: str | bytes) -> None:
    client = await api.tenant()
    response = await api.http.post(
        "/v1/wallets",
        json={"currency": "EUR"},
        headers={"Authorization": f"Bearer {client.key}", "Idempotency-Key": key},
    )
    assert (response.status_code, response.json()["code"]) == (400, "invalid_request")


async def test_missing_idempotency_key_is_400(api: ApiHarness) -> None:
    client = await api.tenant()
    response = await client.post("/v1/wallets", {"currency": "EUR"}, auto_key=False)
    assert (response.status_code, response.json()["code"]) == (400, "idempotency_key_required")


async def test_overflowing_balance_is_422(api: ApiHarness) -> None:
    client = await api.tenant()
    wallet = await client.wallet()
    await client.credit(wallet["id"], 2**63 - 1)
    response = await client.post(
        "/v1/credits", {"wallet_id": wallet["id"], "amount": 1, "currency": "EUR"}
    )
    assert (response.status_code, response.json()["code"]) == (422, "validation_error")
    assert (await client.get(f"/v1/wallets/{wallet['id']}")).json()["balance"] == 2**63 - 1


async def test_unknown_route_is_problem_json(api: ApiHarness) -> None:
    response = await api.http.get("/v1/nothing-here")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
