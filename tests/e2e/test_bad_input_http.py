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


# ------------------------------------------------------------------ strict JSON types


def _transfer(alice: str, bob: str, **change: Any) -> dict[str, Any]:
    return {"from_wallet_id": alice, "to_wallet_id": bob, "amount": 10, "currency": "EUR", **change}


async def _assert_validation_error(response: Any) -> None:
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "validation_error"


@pytest.mark.parametrize("atomic", ["yes", "true", "false", 1, 0, 1.0, None, [True]])
async def test_batch_atomic_takes_only_true_or_false_and_posts_nothing_else(
    api: ApiHarness, atomic: Any
) -> None:
    client = await api.tenant()
    alice, bob = await _funded_pair(client)
    response = await client.post(
        "/v1/transfers/batch", {"transfers": [_transfer(alice, bob)], "atomic": atomic}
    )
    await _assert_validation_error(response)
    assert await _versions(client, alice, bob) == [1, 0]


# (path, the field's path in the body, a bad value); the body is valid but for that field.
WRONG_TYPES: list[tuple[str, str, Any]] = [
    ("/v1/credits", "amount", 10.0),
    ("/v1/credits", "amount", "10"),
    ("/v1/credits", "amount", True),
    ("/v1/debits", "amount", 10.0),
    ("/v1/transfers", "amount", "10"),
    ("/v1/transfers", "amount", False),
    ("/v1/transfers", "to_wallet_id", 7),
    ("/v1/transfers/batch", "transfers.0.amount", 10.0),
    ("/v1/transfers/batch", "transfers.0.amount", True),
    ("/v1/transfers/batch", "transfers.0.currency", 978),
    ("/v1/holds", "amount", "10"),
    ("/v1/holds", "amount", 10.0),
    ("/v1/holds", "expires_at", 4_000_000_000),
    ("/v1/holds", "expires_at", "4000000000"),
    ("/v1/holds", "wallet_id", 1),
    ("/v1/credits", "reference", 5),
]


def _body_for(path: str, alice: str, bob: str) -> dict[str, Any]:
    if path in ("/v1/credits", "/v1/debits"):
        return {"wallet_id": alice, "amount": 10, "currency": "EUR"}
    if path == "/v1/transfers":
        return _transfer(alice, bob)
    if path == "/v1/transfers/batch":
        return {"transfers": [_transfer(alice, bob)], "atomic": False}
    return {"wallet_id": alice, "amount": 10, "currency": "EUR"}  # /v1/holds


def _set(body: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    node: Any = body
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    node[last] = value


@pytest.mark.parametrize(
    ("path", "field", "value"), WRONG_TYPES, ids=[f"{p}:{f}={v!r}" for p, f, v in WRONG_TYPES]
)
async def test_a_field_of_the_wrong_json_type_is_422_and_moves_nothing(
    api: ApiHarness, path: str, field: str, value: Any
) -> None:
    client = await api.tenant()
    alice, bob = await _funded_pair(client)
    body = _body_for(path, alice, bob)
    _set(body, field, value)
    response = await client.post(path, body)
    await _assert_validation_error(response)
    assert await _versions(client, alice, bob) == [1, 0]
    held = (await client.get(f"/v1/wallets/{alice}")).json()["held_balance"]
    assert held == 0


async def _wallet_count(client: TenantClient) -> int:
    return len((await client.get("/v1/wallets")).json()["data"])


@pytest.mark.parametrize("overdraft_limit", ["5", 5.0, True, None])
async def test_overdraft_limit_takes_only_a_json_integer(
    api: ApiHarness, overdraft_limit: Any
) -> None:
    client = await api.tenant()
    response = await client.post(
        "/v1/wallets", {"currency": "EUR", "overdraft_limit": overdraft_limit}
    )
    await _assert_validation_error(response)
    assert await _wallet_count(client) == 0


@pytest.mark.parametrize(
    "limits",
    [
        {"max_debit_amount": "100"},
        {"daily_debit_amount": 100.0},
        {"max_debits_per_minute": True},
    ],
)
async def test_limits_take_only_json_integers(api: ApiHarness, limits: dict[str, Any]) -> None:
    client = await api.tenant()
    wallet = await client.wallet()
    response = await client.put(f"/v1/wallets/{wallet['id']}/limits", limits)
    await _assert_validation_error(response)
    stored = (await client.get(f"/v1/wallets/{wallet['id']}")).json()["limits"]
    assert stored == {
        "max_debit_amount": None,
        "daily_debit_amount": None,
        "max_debits_per_minute": None,
    }


async def test_a_risk_rule_of_the_wrong_json_type_is_422(api: ApiHarness) -> None:
    client = await api.tenant()
    rule = {
        "name": "big",
        "type": "amount_at_least",
        "params": {"amount": 1_000, "currency": "EUR"},
        "action": "review",
    }
    for change in (
        {"name": 5},
        {"action": True},
        {"params": {"amount": 1_000.0, "currency": "EUR"}},
    ):
        response = await client.put("/v1/risk-rules", {"rules": [{**rule, **change}]})
        await _assert_validation_error(response)
    assert (await client.get("/v1/risk-rules")).json() == {"rules": []}


async def test_uuid_strings_timestamps_and_booleans_still_post(api: ApiHarness) -> None:
    client = await api.tenant()
    alice, bob = await _funded_pair(client)
    atomic = await client.post(
        "/v1/transfers/batch", {"transfers": [_transfer(alice, bob)], "atomic": True}
    )
    assert atomic.status_code == 201, atomic.text
    per_item = await client.post(
        "/v1/transfers/batch", {"transfers": [_transfer(alice, bob)], "atomic": False}
    )
    assert per_item.status_code == 200, per_item.text
    assert [item["status"] for item in per_item.json()["data"]] == [201]
    hold = await client.post(
        "/v1/holds",
        {
            "wallet_id": alice.upper(),
            "amount": 5,
            "currency": "EUR",
            "expires_at": "2099-01-02T04:04:05.678901+01:00",
        },
    )
    assert hold.status_code == 201, hold.text
    assert (hold.json()["wallet_id"], hold.json()["expires_at"]) == (
        alice,
        "2099-01-02T03:04:05.678901Z",
    )
    capture = await client.post(
        f"/v1/holds/{hold.json()['id']}/capture", {"amount": 5, "to_wallet_id": bob}
    )
    assert capture.status_code == 200, capture.text
    wallet = await client.post("/v1/wallets", {"currency": "EUR", "overdraft_limit": 0})
    assert wallet.status_code == 201, wallet.text
    assert await _versions(client, alice, bob) == [4, 3]
