"""The benchmark's big-wallet loader writes a ledger that ``walletd audit`` accepts."""

from __future__ import annotations

import asyncpg
import orjson
import pytest
from bench import big_wallet

from tests.support.databases import fresh_database
from walletd.adapters.embedded import ServiceEndpoints
from walletd.domain.events import POSTING_ROW, expand_posting
from walletd.service_layer.audit import run_audit
from walletd.service_layer.tenants import create_api_key

pytestmark = pytest.mark.integration


async def test_a_small_big_wallet_passes_the_audit(endpoints: ServiceEndpoints) -> None:
    url = await fresh_database(endpoints.database_url)
    connection = await asyncpg.connect(url)
    try:
        key = await create_api_key(connection, "big-wallet", ["read"])
    finally:
        await connection.close()

    big = await big_wallet.build(url, key.tenant_id, 2_000)

    report = await run_audit(url)
    assert report.violations == [] and report.ok
    assert big.entries == big.version == 2_000
    connection = await asyncpg.connect(url)
    try:
        payload = await connection.fetchval(
            "SELECT payload::text FROM outbox WHERE event_type = $1 ORDER BY id DESC LIMIT 1",
            POSTING_ROW,
        )
    finally:
        await connection.close()
    events = expand_posting(orjson.loads(payload))
    assert str(big.wallet_id) in [event["data"]["wallet_id"] for _, event in events]
