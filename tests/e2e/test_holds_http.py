"""Holds and reversals over HTTP: status codes, exact bodies, races, and expiry.

Most tests use the in-process app (tests/support/api.py). The last one runs the real
``walletd serve --workers 2`` as a subprocess and watches holds expire while both
worker processes run their expiry loops.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import psutil
import pytest

from tests.support.api import ApiHarness, TenantClient, api_harness
from walletd.adapters.embedded import free_port
from walletd.service_layer.tenants import create_api_key
from walletd.settings import Settings

pytestmark = pytest.mark.e2e

WALLETD = Path(sys.executable).parent / "walletd"
SERVER_START_SECONDS = 30.0
SERVER_STOP_SECONDS = 15.0


def in_seconds(seconds: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")


async def funded(client: TenantClient, amount: int, **fields: Any) -> str:
    wallet = await client.wallet(**fields)
    if amount:
        await client.credit(wallet["id"], amount)
    wallet_id: str = wallet["id"]
    return wallet_id


async def balances(client: TenantClient, wallet_id: str) -> tuple[int, int, int]:
    wallet = (await client.get(f"/v1/wallets/{wallet_id}")).json()
    return wallet["balance"], wallet["held_balance"], wallet["available_balance"]


async def place(client: TenantClient, wallet_id: str, amount: int, **fields: Any) -> httpx.Response:
    body = {"wallet_id": wallet_id, "amount": amount, "currency": "EUR", **fields}
    return await client.post("/v1/holds", body)


async def test_a_hold_is_created_read_back_and_reserves_funds(api: ApiHarness) -> None:
    client = await api.tenant()
    wallet_id = await funded(client, 1000)
    response = await place(client, wallet_id, 300, expires_at="2099-01-02T03:04:05.678901Z")
    assert response.status_code == 201, response.text
    hold = response.json()
    assert {k: v for k, v in hold.items() if k not in ("id", "created_at")} == {
        "wallet_id": wallet_id,
        "amount": 300,
        "currency": "EUR",
        "status": "pending",
        "captured_amount": None,
        "transaction_id": None,
        "expires_at": "2099-01-02T03:04:05.678901Z",
    }
    assert (await client.get(f"/v1/holds/{hold['id']}")).json() == hold
    assert await balances(client, wallet_id) == (1000, 300, 700)


async def test_holds_and_captures_need_an_idempotency_key(api: ApiHarness) -> None:
    client = await api.tenant()
    wallet_id = await funded(client, 1000)
    body = {"wallet_id": wallet_id, "amount": 10, "currency": "EUR"}
    response = await client.post("/v1/holds", body, auto_key=False)
    assert (response.status_code, response.json()["code"]) == (400, "idempotency_key_required")
    hold = (await place(client, wallet_id, 10)).json()
    response = await client.post(f"/v1/holds/{hold['id']}/capture", auto_key=False)
    assert (response.status_code, response.json()["code"]) == (400, "idempotency_key_required")
    assert await balances(client, wallet_id) == (1000, 10, 990)


async def test_a_capture_without_a_body_takes_the_whole_hold_as_one_capture(
    api: ApiHarness,
) -> None:
    client = await api.tenant()
    wallet_id = await funded(client, 1000)
    hold = (await place(client, wallet_id, 400)).json()
    response = await client.post(f"/v1/holds/{hold['id']}/capture")
    assert response.status_code == 200, response.text
    captured = response.json()
    assert (captured["status"], captured["captured_amount"]) == ("captured", 400)
    transaction = (await client.get(f"/v1/transactions/{captured['transaction_id']}")).json()
    assert (transaction["type"], transaction["status"], transaction["amount"]) == (
        "capture",
        "posted",
        400,
    )
    assert [e["amount"] for e in transaction["entries"] if e["wallet_id"] == wallet_id] == [-400]
    assert await balances(client, wallet_id) == (600, 0, 600)


async def test_a_partial_capture_to_a_wallet_releases_the_rest(api: ApiHarness) -> None:
    client = await api.tenant()
    payer, payee = await funded(client, 1000), await funded(client, 0)
    hold = (await place(client, payer, 500)).json()
    response = await client.post(
        f"/v1/holds/{hold['id']}/capture", {"amount": 150, "to_wallet_id": payee}
    )
    assert response.status_code == 200, response.text
    assert response.json()["captured_amount"] == 150
    assert await balances(client, payer) == (850, 0, 850)
    assert await balances(client, payee) == (150, 0, 150)


async def test_capturing_more_than_held_is_a_validation_error(api: ApiHarness) -> None:
    client = await api.tenant()
    wallet_id = await funded(client, 1000)
    hold = (await place(client, wallet_id, 300)).json()
    response = await client.post(f"/v1/holds/{hold['id']}/capture", {"amount": 301})
    assert (response.status_code, response.json()["code"]) == (422, "validation_error")
    assert (await client.get(f"/v1/holds/{hold['id']}")).json()["status"] == "pending"


async def test_a_voided_hold_answers_hold_not_pending_afterwards(api: ApiHarness) -> None:
    client = await api.tenant()
    wallet_id = await funded(client, 1000)
    hold = (await place(client, wallet_id, 300)).json()
    response = await client.post(f"/v1/holds/{hold['id']}/void", auto_key=False)
    assert response.status_code == 200, response.text
    assert response.json() == {**hold, "status": "voided"}
    for action in ("void", "capture"):
        again = await client.post(f"/v1/holds/{hold['id']}/{action}")
        assert (again.status_code, again.json()["code"]) == (422, "hold_not_pending")
    assert await balances(client, wallet_id) == (1000, 0, 1000)


@pytest.mark.parametrize(
    ("fields", "status", "code"),
    [
        ({"amount": 0}, 422, "validation_error"),
        ({"amount": -5}, 422, "validation_error"),
        ({"amount": 1.5}, 422, "validation_error"),
        ({"amount": "10"}, 422, "validation_error"),
        ({"amount": True}, 422, "validation_error"),
        ({"currency": "ABC"}, 422, "validation_error"),
        ({"currency": "USD"}, 422, "currency_mismatch"),
        ({"amount": 1001}, 422, "insufficient_funds"),
        ({"expires_at": "2000-01-01T00:00:00Z"}, 422, "validation_error"),
        ({"expires_at": "2099-01-01T00:00:00"}, 422, "validation_error"),
        ({"wallet_id": "not-a-uuid"}, 422, "validation_error"),
        ({"wallet_id": str(uuid.uuid4())}, 404, "not_found"),
    ],
)
async def test_a_bad_hold_request_is_refused_and_reserves_nothing(
    api: ApiHarness, fields: dict[str, Any], status: int, code: str
) -> None:
    client = await api.tenant()
    wallet_id = await funded(client, 1000)
    body = {"wallet_id": wallet_id, "amount": 10, "currency": "EUR", **fields}
    response = await client.post("/v1/holds", body)
    assert (response.status_code, response.json()["code"]) == (status, code), response.text
    assert await balances(client, wallet_id) == (1000, 0, 1000)


async def test_holds_on_frozen_or_closed_wallets_are_refused(api: ApiHarness) -> None:
    client = await api.tenant()
    frozen, closed = await funded(client, 1000), await funded(client, 0)
    await client.post(f"/v1/wallets/{frozen}/freeze", {"reason": "fraud"})
    await client.post(f"/v1/wallets/{closed}/close")
    response = await place(client, frozen, 10)
    assert (response.status_code, response.json()["code"]) == (422, "wallet_frozen")
    response = await place(client, closed, 10)
    assert (response.status_code, response.json()["code"]) == (422, "wallet_closed")


async def test_a_capture_retried_with_its_key_replays_the_same_answer(api: ApiHarness) -> None:
    client = await api.tenant()
    wallet_id = await funded(client, 1000)
    hold = (await place(client, wallet_id, 300)).json()
    first = await client.post(f"/v1/holds/{hold['id']}/capture", idempotency_key="cap-1")
    again = await client.post(f"/v1/holds/{hold['id']}/capture", idempotency_key="cap-1")
    assert (first.status_code, again.status_code) == (200, 200)
    assert again.json() == first.json()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert await balances(client, wallet_id) == (700, 0, 700)


async def test_twenty_concurrent_http_captures_of_one_hold_succeed_once(api: ApiHarness) -> None:
    client = await api.tenant()
    wallet_id = await funded(client, 1000)
    hold = (await place(client, wallet_id, 600)).json()
    responses = await asyncio.gather(
        *(client.post(f"/v1/holds/{hold['id']}/capture") for _ in range(20))
    )
    statuses = sorted((r.status_code, r.json().get("code")) for r in responses)
    assert statuses == [(200, None)] + [(422, "hold_not_pending")] * 19
    assert await balances(client, wallet_id) == (400, 0, 400)


async def test_scopes_and_tenants_are_enforced(api: ApiHarness) -> None:
    client, stranger = await api.tenant(), await api.tenant()
    wallet_id = await funded(client, 1000)
    hold = (await place(client, wallet_id, 100)).json()
    reader = await api.tenant(scopes="read")
    response = await reader.post(
        "/v1/holds", {"wallet_id": wallet_id, "amount": 1, "currency": "EUR"}
    )
    assert response.status_code == 403
    assert (await stranger.get(f"/v1/holds/{hold['id']}")).status_code == 404
    assert (await stranger.post(f"/v1/holds/{hold['id']}/void")).status_code == 404
    assert (await client.get("/v1/holds/not-a-uuid")).status_code == 404
    writer = await api.tenant(scopes="read,write")
    credit = await writer.credit(await funded(writer, 0), 10)
    response = await writer.post(f"/v1/transactions/{credit['id']}/reverse")
    assert (response.status_code, response.json()["code"]) == (403, "forbidden")


async def test_a_reversal_over_http_posts_once_and_refuses_what_it_must(api: ApiHarness) -> None:
    client = await api.tenant()
    payer, payee = await funded(client, 1000), await funded(client, 0, overdraft_limit=0)
    transfer = (
        await client.post(
            "/v1/transfers",
            {
                "from_wallet_id": payer,
                "to_wallet_id": payee,
                "amount": 300,
                "currency": "EUR",
            },
        )
    ).json()
    response = await client.post(
        f"/v1/transactions/{transfer['id']}/reverse", {"reason": "dispute"}, auto_key=False
    )
    assert response.status_code == 201, response.text
    reversal = response.json()
    assert (reversal["type"], reversal["amount"], reversal["reverses_transaction_id"]) == (
        "reversal",
        300,
        transfer["id"],
    )
    assert sorted((e["wallet_id"], e["amount"]) for e in reversal["entries"]) == sorted(
        [(payee, -300), (payer, 300)]
    )
    assert (await client.get(f"/v1/transactions/{reversal['id']}")).json() == reversal
    again = await client.post(f"/v1/transactions/{transfer['id']}/reverse")
    assert (again.status_code, again.json()["code"]) == (422, "already_reversed")
    twice = await client.post(f"/v1/transactions/{reversal['id']}/reverse")
    assert (twice.status_code, twice.json()["code"]) == (422, "validation_error")
    credit = await client.credit(payee, 50)
    await client.post("/v1/debits", {"wallet_id": payee, "amount": 50, "currency": "EUR"})
    broke = await client.post(f"/v1/transactions/{credit['id']}/reverse")
    assert (broke.status_code, broke.json()["code"]) == (422, "insufficient_funds")
    assert "below its floor" in broke.json()["detail"]
    assert await balances(client, payer) == (1000, 0, 1000)


async def test_a_hold_expires_on_its_own_while_the_api_runs(database_url: str) -> None:
    settings = Settings(database_url=database_url, hold_expiry_interval_seconds=0.1)
    async with api_harness(settings) as api:
        client = await api.tenant()
        wallet_id = await funded(client, 1000)
        hold = (await place(client, wallet_id, 250, expires_at=in_seconds(0.5))).json()
        assert await balances(client, wallet_id) == (1000, 250, 750)
        deadline = time.monotonic() + 10
        while (await client.get(f"/v1/holds/{hold['id']}")).json()["status"] == "pending":
            assert time.monotonic() < deadline, "the hold never expired"
            await asyncio.sleep(0.05)
        assert (await client.get(f"/v1/holds/{hold['id']}")).json()["status"] == "expired"
        assert await balances(client, wallet_id) == (1000, 0, 1000)


# ------------------------------------------------------------ two worker processes


@pytest.fixture
def two_worker_server(database_url: str, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """``walletd serve --workers 2`` on a free loopback port; stopped by PID afterwards."""
    port = free_port()
    log_path = tmp_path / "serve.log"
    env = {key: value for key, value in os.environ.items() if not key.startswith("WALLETD_")}
    env |= {
        "WALLETD_DATABASE_URL": database_url,
        "WALLETD_HOLD_EXPIRY_INTERVAL_SECONDS": "0.2",
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path),
    }
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [str(WALLETD), "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", "2"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        yield f"http://127.0.0.1:{port}", log_path
    finally:
        stop_server(process)


def stop_server(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server (its workers follow); SIGKILL it and its workers on a timeout."""
    try:
        children = psutil.Process(process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        children = []
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=SERVER_STOP_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)
    for child in children:
        if child.is_running():
            child.kill()


async def wait_until_ready(http: httpx.AsyncClient, log_path: Path) -> None:
    deadline = time.monotonic() + SERVER_START_SECONDS
    while log_path.read_text().count('"api_started"') < 2:
        assert time.monotonic() < deadline, log_path.read_text()[-2000:]
        await asyncio.sleep(0.1)
    while True:
        try:
            if (await http.get("/healthz")).status_code == 200:
                return
        except httpx.TransportError:
            assert time.monotonic() < deadline, log_path.read_text()[-2000:]
        await asyncio.sleep(0.1)


async def test_holds_expire_exactly_once_with_two_api_worker_processes(
    two_worker_server: tuple[str, Path],
    database_url: str,
) -> None:
    base_url, log_path = two_worker_server
    connection = await asyncpg.connect(database_url)
    try:
        key = await create_api_key(
            connection, f"workers-{uuid.uuid4().hex[:12]}", ["read", "write"]
        )
    finally:
        await connection.close()
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as http:
        await wait_until_ready(http, log_path)
        client = TenantClient(http, key.secret, key.tenant_id)
        wallets = [await funded(client, 1000) for _ in range(3)]
        holds = []
        for index in range(12):
            response = await place(client, wallets[index % 3], 10 + index, expires_at=in_seconds(1))
            assert response.status_code == 201, response.text
            holds.append(response.json()["id"])
        deadline = time.monotonic() + 15
        for hold_id in holds:
            while (await client.get(f"/v1/holds/{hold_id}")).json()["status"] != "expired":
                assert time.monotonic() < deadline, f"hold {hold_id} never expired"
                await asyncio.sleep(0.1)
        for wallet_id in wallets:
            assert await balances(client, wallet_id) == (1000, 0, 1000)
    connection = await asyncpg.connect(database_url)
    try:
        expired = await connection.fetch(
            "SELECT payload->'data'->>'hold_id' AS hold_id FROM outbox"
            " WHERE tenant_id = $1 AND event_type = 'hold.expired'",
            key.tenant_id,
        )
    finally:
        await connection.close()
    assert sorted(row["hold_id"] for row in expired) == sorted(holds)
