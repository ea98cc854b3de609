"""Input caps at their exact boundaries (SPEC 2): body 1 MiB, metadata 16 KiB and depth 5.

A body of exactly 1 MiB passes the body-limit middleware (and posts); one byte more
is a 413 ``payload_too_large`` whether the size is announced (Content-Length) or only
discovered while streaming (chunked). Metadata is measured as compact UTF-8 JSON in
bytes, whatever spacing the client sent; the metadata object itself is depth 1.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest

from tests.support.api import ApiHarness, TenantClient

MIB = 1024 * 1024
METADATA_MAX_BYTES = 16 * 1024
CHUNK_BYTES = 64 * 1024


def padded_credit(wallet_id: str, total_bytes: int) -> bytes:
    """A valid credit body, padded with JSON whitespace to exactly ``total_bytes``."""
    core = orjson.dumps({"wallet_id": wallet_id, "amount": 7, "currency": "EUR"})
    assert len(core) < total_bytes
    body = core[:-1] + b" " * (total_bytes - len(core)) + b"}"
    assert len(body) == total_bytes
    return body


async def chunks(body: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(body), CHUNK_BYTES):
        yield body[start : start + CHUNK_BYTES]


async def post_credit(
    api: ApiHarness, client: TenantClient, content: bytes | AsyncIterator[bytes]
) -> httpx.Response:
    headers = {**client.headers(), "Content-Type": "application/json"}
    return await api.http.post("/v1/credits", content=content, headers=headers)


async def balance(client: TenantClient, wallet_id: str) -> int:
    response = await client.get(f"/v1/wallets/{wallet_id}")
    assert response.status_code == 200
    value: int = response.json()["balance"]
    return value


@pytest.mark.parametrize("streamed", [False, True], ids=["content-length", "chunked"])
async def test_a_body_of_exactly_one_mebibyte_is_accepted(api: ApiHarness, streamed: bool) -> None:
    client = await api.tenant()
    wallet = await client.wallet()
    body = padded_credit(wallet["id"], MIB)
    response = await post_credit(api, client, chunks(body) if streamed else body)
    assert response.status_code == 201, response.text
    assert response.json()["amount"] == 7
    assert await balance(client, wallet["id"]) == 7


@pytest.mark.parametrize("streamed", [False, True], ids=["content-length", "chunked"])
async def test_one_byte_over_one_mebibyte_is_413_and_posts_nothing(
    api: ApiHarness, streamed: bool
) -> None:
    client = await api.tenant()
    wallet = await client.wallet()
    body = padded_credit(wallet["id"], MIB + 1)
    response = await post_credit(api, client, chunks(body) if streamed else body)
    assert response.status_code == 413
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert (problem["code"], problem["status"]) == ("payload_too_large", 413)
    assert await balance(client, wallet["id"]) == 0


def metadata_of_size(total_bytes: int, filler: str = "x") -> dict[str, Any]:
    """``{"k": "<filler>..."}`` whose compact UTF-8 JSON is exactly ``total_bytes`` long."""
    overhead = len(orjson.dumps({"k": ""}))
    filler_bytes = len(filler.encode())
    assert (total_bytes - overhead) % filler_bytes == 0
    metadata = {"k": filler * ((total_bytes - overhead) // filler_bytes)}
    assert len(orjson.dumps(metadata)) == total_bytes
    return metadata


async def create_wallet_raw(api: ApiHarness, client: TenantClient, body: bytes) -> httpx.Response:
    headers = {**client.headers(), "Content-Type": "application/json"}
    return await api.http.post("/v1/wallets", content=body, headers=headers)


async def test_metadata_of_exactly_16_kib_compact_json_is_accepted(api: ApiHarness) -> None:
    client = await api.tenant()
    metadata = metadata_of_size(METADATA_MAX_BYTES)
    # Sent pretty-printed: the cap is on the compact form, not on the bytes on the wire.
    raw = json.dumps({"currency": "EUR", "metadata": metadata}, indent=4).encode()
    assert len(raw) > METADATA_MAX_BYTES + 16
    response = await create_wallet_raw(api, client, raw)
    assert response.status_code == 201, response.text
    assert response.json()["metadata"] == metadata


async def test_metadata_one_byte_over_16_kib_is_422(api: ApiHarness) -> None:
    client = await api.tenant()
    body = {"currency": "EUR", "metadata": metadata_of_size(METADATA_MAX_BYTES + 1)}
    response = await client.post("/v1/wallets", body)
    assert (response.status_code, response.json()["code"]) == (422, "validation_error")
    assert (await client.get("/v1/wallets")).json()["data"] == []


async def test_metadata_size_counts_utf8_bytes_not_characters(api: ApiHarness) -> None:
    client = await api.tenant()
    at_cap = metadata_of_size(METADATA_MAX_BYTES, filler="é")  # 2 bytes per character
    assert len(json.dumps(at_cap, ensure_ascii=False)) < METADATA_MAX_BYTES // 2 + 16
    accepted = await client.post("/v1/wallets", {"currency": "EUR", "metadata": at_cap})
    assert accepted.status_code == 201, accepted.text
    over = {"k": at_cap["k"] + "é"}  # 16,384 bytes + 2, yet only 8,197 characters
    assert len(orjson.dumps(over)) == METADATA_MAX_BYTES + 2
    rejected = await client.post("/v1/wallets", {"currency": "EUR", "metadata": over})
    assert (rejected.status_code, rejected.json()["code"]) == (422, "validation_error")


def nested_objects(depth: int) -> dict[str, Any]:
    """A metadata object of exactly ``depth`` levels of objects."""
    node: dict[str, Any] = {"leaf": 1}
    for level in range(depth - 1):
        node = {f"level{depth - 1 - level}": node}
    return node


def nested_arrays(depth: int) -> dict[str, Any]:
    """The metadata object (level 1) holding ``depth - 1`` levels of arrays."""
    node: Any = [1]
    for _ in range(depth - 2):
        node = [node]
    return {"list": node}


@pytest.mark.parametrize("builder", [nested_objects, nested_arrays], ids=["objects", "arrays"])
async def test_metadata_depth_five_is_accepted_and_six_is_422(
    api: ApiHarness, builder: Any
) -> None:
    client = await api.tenant()
    five = await client.post("/v1/wallets", {"currency": "EUR", "metadata": builder(5)})
    assert five.status_code == 201, five.text
    assert five.json()["metadata"] == builder(5)
    six = await client.post("/v1/wallets", {"currency": "EUR", "metadata": builder(6)})
    assert (six.status_code, six.json()["code"]) == (422, "validation_error")
    assert "deeper than 5" in six.json()["detail"]


NUL = "\u0000"  # PostgreSQL text and jsonb cannot store it: refused as input, never a 5xx


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/v1/wallets", {"currency": "EUR", "owner_id": f"owner{NUL}"}),
        ("POST", "/v1/wallets", {"currency": "EUR", "metadata": {f"key{NUL}": 1}}),
        ("POST", "/v1/wallets", {"currency": "EUR", "metadata": {"key": [f"value{NUL}"]}}),
        ("GET", "/v1/wallets?owner_id=owner%00", None),
        ("POST", "/v1/credits", {"amount": 5, "currency": "EUR", "reference": f"r{NUL}"}),
        ("POST", "/v1/credits", {"amount": 5, "currency": "EUR", "metadata": {"k": NUL}}),
        ("POST", "/v1/wallets/{wallet}/freeze", {"reason": f"reason{NUL}"}),
        ("POST", "/v1/transactions/{credit}/reverse", {"reason": f"reason{NUL}"}),
        (
            "PUT",
            "/v1/risk-rules",
            {
                "rules": [
                    {
                        "name": f"rule{NUL}",
                        "type": "amount_at_least",
                        "params": {"amount": 5, "currency": "EUR"},
                        "action": "review",
                    }
                ]
            },
        ),
    ],
)
async def test_text_with_a_nul_character_is_422_and_changes_nothing(
    api: ApiHarness, method: str, path: str, body: dict[str, Any] | None
) -> None:
    client = await api.tenant()
    wallet = await client.wallet()
    credit = await client.credit(wallet["id"], 10)
    if body is not None and "amount" in body:
        body = {**body, "wallet_id": wallet["id"]}
    url = path.format(wallet=wallet["id"], credit=credit["id"])
    response = await api.http.request(method, url, json=body, headers=client.headers())
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "validation_error"
    after = (await client.get(f"/v1/wallets/{wallet['id']}")).json()
    assert (after["balance"], after["version"], after["status"]) == (10, 1, "active")
    assert (await client.get("/v1/risk-rules")).json() == {"rules": []}
    assert len((await client.get("/v1/wallets")).json()["data"]) == 1
