"""The lean path serves well-formed single postings and hands everything else to FastAPI.

Both ways must give a client the same answers; these tests check which way a request
went (``walletd_http_lean_requests_total``) and what it answered.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import orjson
from prometheus_client import REGISTRY

from tests.support.api import ApiHarness, TenantClient
from walletd.entrypoints.http.app import create_app
from walletd.settings import Settings


def _lean(outcome: str) -> float:
    return REGISTRY.get_sample_value("walletd_http_lean_requests_total", {"outcome": outcome}) or 0


@contextmanager
def counted() -> Iterator[dict[str, float]]:
    """After the block: how many requests the lean path served and delegated in it."""
    before = {outcome: _lean(outcome) for outcome in ("served", "delegated")}
    seen: dict[str, float] = {}
    yield seen
    seen.update({outcome: _lean(outcome) - before[outcome] for outcome in before})


async def _pair(client: TenantClient, funds: int = 1_000) -> tuple[str, str]:
    alice, bob = await client.wallet(), await client.wallet()
    await client.credit(alice["id"], funds)
    return alice["id"], bob["id"]


def _transfer(alice: str, bob: str, amount: int = 10) -> dict[str, Any]:
    return {"from_wallet_id": alice, "to_wallet_id": bob, "amount": amount, "currency": "EUR"}


async def test_a_known_key_is_served_lean_and_answers_like_the_route(api: ApiHarness) -> None:
    client = await api.tenant()
    alice, bob = await _pair(client)  # authenticates the key: cached from here on
    with counted() as lean:
        first = await client.post("/v1/transfers", _transfer(alice, bob), idempotency_key="k-1")
        again = await client.post("/v1/transfers", _transfer(alice, bob), idempotency_key="k-1")
    assert lean == {"served": 2, "delegated": 0}
    assert first.status_code == 201 and first.headers["content-type"] == "application/json"
    assert first.headers["x-request-id"]
    body = first.json()
    assert (body["type"], body["status"], body["amount"]) == ("transfer", "posted", 10)
    assert again.status_code == 201 and again.headers["idempotent-replayed"] == "true"
    assert again.content == first.content
    fetched = await client.get(f"/v1/transactions/{body['id']}")
    assert fetched.json() == body


async def test_credits_and_debits_are_served_lean(api: ApiHarness) -> None:
    client = await api.tenant()
    alice, _ = await _pair(client)
    with counted() as lean:
        credit = await client.post(
            "/v1/credits", {"wallet_id": alice, "amount": 5, "currency": "EUR"}
        )
        debit = await client.post(
            "/v1/debits", {"wallet_id": alice, "amount": 7, "currency": "EUR"}
        )
    assert lean == {"served": 2, "delegated": 0}
    assert (credit.status_code, credit.json()["type"]) == (201, "credit")
    assert (debit.status_code, debit.json()["type"]) == (201, "debit")
    assert (await client.get(f"/v1/wallets/{alice}")).json()["balance"] == 1_000 + 5 - 7


async def test_business_errors_on_the_lean_path(api: ApiHarness) -> None:
    client = await api.tenant()
    alice, bob = await _pair(client, funds=100)
    with counted() as lean:
        poor = await client.post("/v1/transfers", _transfer(alice, bob, 101))
        missing = await client.post("/v1/transfers", _transfer(alice, str(uuid.uuid4())))
        await client.post("/v1/transfers", _transfer(alice, bob, 1), idempotency_key="k-2")
        reused = await client.post("/v1/transfers", _transfer(alice, bob, 2), idempotency_key="k-2")
    assert lean == {"served": 4, "delegated": 0}
    assert (poor.status_code, poor.json()["code"]) == (422, "insufficient_funds")
    assert (missing.status_code, missing.json()["code"]) == (404, "not_found")
    assert (reused.status_code, reused.json()["code"]) == (422, "idempotency_key_reused")
    for problem in (poor, missing, reused):
        assert problem.headers["content-type"] == "application/problem+json"
    assert (await client.get(f"/v1/wallets/{alice}")).json()["balance"] == 99


async def test_anything_unusual_is_delegated_to_fastapi(api: ApiHarness) -> None:
    client = await api.tenant()
    reader = await api.tenant(scopes="read")
    alice, bob = await _pair(client)
    await reader.get("/v1/wallets")  # the read-only key is known too
    good = orjson.dumps(_transfer(alice, bob))
    auth = {"Authorization": f"Bearer {client.key}", "Content-Type": "application/json"}
    cases = [
        ({**auth, "Idempotency-Key": "a"}, b"{not json", 400, "invalid_request"),
        ({**auth, "Idempotency-Key": "a"}, b"", 400, "invalid_request"),
        ({**auth, "Idempotency-Key": "a"}, b"{}", 422, "validation_error"),
        ({**auth}, good, 400, "idempotency_key_required"),
        ({**auth, "Idempotency-Key": "tab\tkey"}, good, 400, "invalid_request"),
        ({"Authorization": f"Basic {client.key}", "Idempotency-Key": "a"}, good, 401, None),
        ({"Authorization": "Bearer wdk_unknown", "Idempotency-Key": "a"}, good, 401, None),
        ({"Authorization": f"Bearer {reader.key}", "Idempotency-Key": "a"}, good, 403, None),
        ({**auth, "Idempotency-Key": "a", "Content-Type": "text/plain"}, good, 422, None),
        ({**auth, "Idempotency-Key": "a"}, good.replace(b"10", b"1e1"), 422, None),
    ]
    for headers, content, status, code in cases:
        with counted() as lean:
            response = await api.http.post("/v1/transfers", content=content, headers=headers)
        assert lean == {"served": 0, "delegated": 1}, (headers, content)
        assert response.status_code == status, (headers, content, response.text)
        assert response.headers["content-type"] == "application/problem+json"
        if code is not None:
            assert response.json()["code"] == code
    assert (await client.get(f"/v1/wallets/{bob}")).json()["version"] == 0


async def test_request_metrics_name_the_route_template(api: ApiHarness) -> None:
    client = await api.tenant()
    alice, bob = await _pair(client)
    labels = {"method": "POST", "route": "/v1/transfers", "status": "201"}
    timed = {"method": "POST", "route": "/v1/transfers"}

    def seen() -> tuple[float, float, float]:
        sample = REGISTRY.get_sample_value
        return (
            sample("walletd_http_requests_total", labels) or 0,
            sample("walletd_http_request_duration_seconds_count", timed) or 0,
            sample("walletd_http_request_duration_seconds_sum", timed) or 0,
        )

    before = seen()
    began = time.perf_counter()
    with counted() as lean:
        await client.post("/v1/transfers", _transfer(alice, bob))
    took = time.perf_counter() - began
    after = seen()
    assert lean["served"] == 1
    assert (after[0], after[1]) == (before[0] + 1, before[1] + 1)
    assert 0 < after[2] - before[2] <= took  # this request's own duration, in seconds


async def _call(app: Any, headers: dict[str, str], chunks: list[bytes]) -> tuple[int, bytes]:
    """One POST /v1/transfers straight through ASGI, its body in several messages."""
    messages = [
        {"type": "http.request", "body": chunk, "more_body": n < len(chunks) - 1}
        for n, chunk in enumerate(chunks)
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/transfers",
        "raw_path": b"/v1/transfers",
        "root_path": "",
        "query_string": b"",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "server": ("walletd.test", 80),
        "client": ("127.0.0.1", 5000),
    }
    await app(scope, receive, send)
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return sent[0]["status"], body


async def test_bodies_in_several_messages_both_ways(database_url: str, api: ApiHarness) -> None:
    """Delegated (key not yet known to this app) and served: the split body is read whole."""
    client = await api.tenant()
    alice, bob = await _pair(client)
    app = create_app(Settings(database_url=database_url))
    async with app.router.lifespan_context(app):
        body = orjson.dumps(_transfer(alice, bob))
        chunks = [body[:7], body[7:30], body[30:]]
        headers = {"Authorization": f"Bearer {client.key}", "Content-Type": "application/json"}
        with counted() as lean:
            cold = await _call(app, {**headers, "Idempotency-Key": "split-1"}, chunks)
            warm = await _call(app, {**headers, "Idempotency-Key": "split-2"}, chunks)
        assert lean == {"served": 1, "delegated": 1}
    assert cold[0] == warm[0] == 201
    assert orjson.loads(cold[1])["amount"] == orjson.loads(warm[1])["amount"] == 10
    assert (await client.get(f"/v1/wallets/{bob}")).json()["balance"] == 20


async def test_batches_are_served_lean_both_ways(api: ApiHarness) -> None:
    client = await api.tenant()
    alice, bob = await _pair(client, funds=100)
    items = [_transfer(alice, bob, 30), _transfer(alice, bob, 80)]
    with counted() as lean:
        atomic = await client.post("/v1/transfers/batch", {"transfers": items, "atomic": True})
        per_item = await client.post("/v1/transfers/batch", {"transfers": items, "atomic": False})
        bad = await client.post("/v1/transfers/batch", {"transfers": [], "atomic": True})
    assert lean == {"served": 2, "delegated": 1}
    assert (atomic.status_code, atomic.json()["code"]) == (422, "insufficient_funds")
    assert atomic.json()["index"] == 1
    assert per_item.status_code == 200
    assert [item["status"] for item in per_item.json()["data"]] == [201, 422]
    assert bad.status_code == 422 and bad.json()["code"] == "validation_error"
    assert (await client.get(f"/v1/wallets/{alice}")).json()["balance"] == 70
