"""Graceful behaviour under stress: draining on SIGTERM, and a full pool answering 503.

``walletd serve`` runs as a real subprocess on a free loopback port. Clients upload
their bodies slowly (a request is in flight for about a second); SIGTERM arrives while
several are mid-body. Every request in flight at that moment must get its complete
201, every response anyone got must be complete, exactly the acknowledged credits must
be in the ledger, and the process must exit 0 within uvicorn's graceful timeout.

The pool test runs the app in-process with one connection, holds it from the test,
and expects the next request to get 503 ``unavailable`` with ``Retry-After`` in well
under a second — never a hang.
"""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import httpx
import pytest

from tests.support.api import ApiHarness
from tests.support.serve import Server, serving
from walletd.entrypoints.bootstrap import Services
from walletd.entrypoints.http.app import create_app
from walletd.service_layer.tenants import create_api_key
from walletd.settings import Settings

GRACEFUL_TIMEOUT_SECONDS = 10.0  # cli.py: uvicorn timeout_graceful_shutdown
EXIT_MARGIN_SECONDS = 5.0
WORKERS = 6
REQUESTS_PER_WORKER = 5
BODY_CHUNKS = 5
CHUNK_GAP_SECONDS = 0.2
SIGTERM_AFTER_SECONDS = 1.5
IN_FLIGHT_MARGIN_SECONDS = 0.2  # headers sent this long before SIGTERM: surely received
CREDIT_AMOUNT = 7


@pytest.fixture
def server(database_url: str, tmp_path: Path) -> Iterator[Server]:
    with serving(database_url, tmp_path / "serve.log") as running:
        yield running


async def new_key(database_url: str) -> str:
    connection = await asyncpg.connect(database_url)
    try:
        created = await create_api_key(connection, f"graceful-{uuid.uuid4().hex[:12]}", ["write"])
    finally:
        await connection.close()
    return created.secret


@dataclass
class Outcome:
    first_chunk_at: float
    status: int | None = None  # None: no response at all (refused, or closed before headers)
    complete: bool = False
    error: str = ""


@dataclass
class Traffic:
    wallet_id: str
    headers: dict[str, str]
    outcomes: list[Outcome] = field(default_factory=list)


async def slow_body(wallet_id: str, outcome: Outcome) -> AsyncIterator[bytes]:
    payload = f'{{"wallet_id":"{wallet_id}","amount":{CREDIT_AMOUNT},"currency":"EUR"}}'
    encoded = payload.encode()
    size = -(-len(encoded) // BODY_CHUNKS)
    for index in range(BODY_CHUNKS):
        if index == 0:
            outcome.first_chunk_at = time.monotonic()
        else:
            await asyncio.sleep(CHUNK_GAP_SECONDS)
        yield encoded[index * size : (index + 1) * size]


async def one_slow_credit(http: httpx.AsyncClient, traffic: Traffic) -> Outcome:
    outcome = Outcome(first_chunk_at=float("inf"))
    traffic.outcomes.append(outcome)
    headers = {
        **traffic.headers,
        "Idempotency-Key": uuid.uuid4().hex,
        "Content-Type": "application/json",
    }
    try:
        request = http.build_request(
            "POST", "/v1/credits", content=slow_body(traffic.wallet_id, outcome), headers=headers
        )
        response = await http.send(request, stream=True)
    except httpx.TransportError as error:
        outcome.error = f"no response: {type(error).__name__}"
        return outcome
    outcome.status = response.status_code
    try:
        body = await response.aread()
        outcome.complete = response.json()["amount"] == CREDIT_AMOUNT and body.endswith(b"}")
    except (httpx.TransportError, ValueError, KeyError) as error:
        outcome.error = f"incomplete response: {type(error).__name__}"
    finally:
        await response.aclose()
    return outcome


async def worker(http: httpx.AsyncClient, traffic: Traffic) -> None:
    for _ in range(REQUESTS_PER_WORKER):
        outcome = await one_slow_credit(http, traffic)
        if outcome.status is None:
            return  # the server stopped accepting: this client is done


async def open_wallet(base_url: str, headers: dict[str, str]) -> str:
    async with httpx.AsyncClient(base_url=base_url, timeout=10.0) as http:
        keyed = {**headers, "Idempotency-Key": uuid.uuid4().hex}
        response = await http.post("/v1/wallets", json={"currency": "EUR"}, headers=keyed)
    assert response.status_code == 201, response.text
    wallet_id: str = response.json()["id"]
    return wallet_id


async def posted_credits(database_url: str, wallet_id: str) -> int:
    connection = await asyncpg.connect(database_url)
    try:
        count: int = await connection.fetchval(
            "SELECT count(*) FROM entries WHERE wallet_id = $1", uuid.UUID(wallet_id)
        )
    finally:
        await connection.close()
    return count


async def test_sigterm_drains_in_flight_requests_and_exits_zero(
    server: Server, database_url: str
) -> None:
    headers = {"Authorization": f"Bearer {await new_key(database_url)}"}
    traffic = Traffic(await open_wallet(server.base_url, headers), headers)
    no_reuse = httpx.Limits(max_keepalive_connections=0)  # a fresh connection per request
    async with httpx.AsyncClient(
        base_url=server.base_url, timeout=GRACEFUL_TIMEOUT_SECONDS, limits=no_reuse
    ) as http:
        workers = [asyncio.create_task(worker(http, traffic)) for _ in range(WORKERS)]
        await asyncio.sleep(SIGTERM_AFTER_SECONDS)
        server.process.send_signal(signal.SIGTERM)
        sigterm_at = time.monotonic()
        await asyncio.wait_for(asyncio.gather(*workers), GRACEFUL_TIMEOUT_SECONDS)
    exit_code = await asyncio.to_thread(
        server.process.wait, GRACEFUL_TIMEOUT_SECONDS + EXIT_MARGIN_SECONDS
    )
    stopped_after = time.monotonic() - sigterm_at

    cutoff = sigterm_at - IN_FLIGHT_MARGIN_SECONDS
    answered = [o for o in traffic.outcomes if o.status is not None]
    in_flight = [o for o in answered if o.first_chunk_at < cutoff]
    assert len(in_flight) >= WORKERS, "too few requests were in flight at SIGTERM"
    unanswered_in_flight = [
        o for o in traffic.outcomes if o.status is None and o.first_chunk_at < cutoff
    ]
    assert unanswered_in_flight == [], server.log()
    assert [(o.status, o.complete, o.error) for o in answered] == [(201, True, "")] * len(answered)
    assert await posted_credits(database_url, traffic.wallet_id) == len(answered)
    assert stopped_after < GRACEFUL_TIMEOUT_SECONDS + EXIT_MARGIN_SECONDS
    assert exit_code == 0, server.log()


@asynccontextmanager
async def in_process(settings: Settings) -> AsyncIterator[tuple[ApiHarness, Services]]:
    """The app in-process, and its services (to reach its connection pool)."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://walletd.test") as http:
            yield ApiHarness(settings, http), app.state.services


async def test_an_exhausted_pool_answers_503_with_retry_after_quickly(database_url: str) -> None:
    settings = Settings(
        database_url=database_url,
        database_pool_min=1,
        database_pool_max=1,
        database_acquire_timeout_seconds=0.2,
    )
    async with in_process(settings) as (api, services):
        client = await api.tenant()
        wallet = await client.wallet()
        async with services.database.pool.acquire():  # the pool's only connection, held
            started = time.monotonic()
            read = await client.get(f"/v1/wallets/{wallet['id']}")
            write = await client.post(
                "/v1/credits", {"wallet_id": wallet["id"], "amount": 5, "currency": "EUR"}
            )
            elapsed = time.monotonic() - started
        for response in (read, write):
            assert response.status_code == 503, response.text
            assert response.headers["retry-after"] == "1"
            assert response.headers["content-type"] == "application/problem+json"
            assert response.json()["code"] == "unavailable"
        assert elapsed < 1.5  # two acquire timeouts of 0.2 s each, not a hang
        after = await client.get(f"/v1/wallets/{wallet['id']}")
        assert (after.status_code, after.json()["balance"]) == (200, 0)
