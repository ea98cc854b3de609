"""How long ``walletd audit`` takes per million ledger entries, and how much memory.

Builds a throw-away database with a valid ledger of ``--entries`` entries (credits
from the system wallet and transfers between ``--wallets`` user wallets, hash chains,
outbox events), written with COPY under ``session_replication_role = replica`` so that
neither the balance trigger (COPY chunks may split a transaction's entries) nor the
foreign-key checks run (the data is correct by construction, and the audit must say
so). Then runs ``walletd audit --json`` in a child process and prints seconds per
million entries and the child's peak RSS.

    .venv/bin/python bench/audit_speed.py --entries 1000000
    .venv/bin/python bench/audit_speed.py --admin-url postgresql://walletd@127.0.0.1:5432/postgres

Without ``--admin-url`` a private PostgreSQL is started under ``.walletd/bench-audit``.
The database needs a superuser (replica mode) and is dropped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import UUID, uuid4

import asyncpg
import orjson
import psutil

from walletd.adapters.embedded import EmbeddedStack
from walletd.adapters.migrations import upgrade
from walletd.domain.hashing import GENESIS_HASH, canonical_entry, chain_hash

REPO_ROOT = Path(__file__).resolve().parents[1]
MAX_ENTRIES = 50_000_000
CHUNK_TRANSACTIONS = 50_000
CURRENCY = "EUR"


@dataclass(slots=True)
class Chain:
    balance: int = 0
    version: int = 0
    last_hash: bytes = GENESIS_HASH


@dataclass(slots=True)
class Ledger:
    tenant_id: UUID
    system_id: UUID
    user_ids: list[UUID]
    chains: dict[UUID, Chain]
    clock: datetime


def entry_row(
    ledger: Ledger, wallet_id: UUID, transaction_id: UUID, amount: int, at: datetime
) -> tuple[object, ...]:
    chain = ledger.chains[wallet_id]
    entry_id = uuid4()
    balance_after, version = chain.balance + amount, chain.version + 1
    digest = chain_hash(
        chain.last_hash,
        canonical_entry(
            entry_id=entry_id,
            transaction_id=transaction_id,
            wallet_id=wallet_id,
            currency=CURRENCY,
            amount=amount,
            balance_after=balance_after,
            wallet_version=version,
            created_at=at,
        ),
    )
    chain.balance, chain.version, chain.last_hash = balance_after, version, digest
    return (
        entry_id,
        transaction_id,
        wallet_id,
        CURRENCY,
        amount,
        balance_after,
        version,
        digest,
        at,
    )


def outbox_row(ledger: Ledger, entry: tuple[object, ...], kind: str) -> tuple[object, ...]:
    _, transaction_id, wallet_id, _, amount, balance_after, version, _, at = entry
    data = {
        "tenant_id": str(ledger.tenant_id),
        "wallet_id": str(wallet_id),
        "transaction_id": str(transaction_id),
        "transaction_type": kind,
        "amount": amount,
        "currency": CURRENCY,
        "balance_after": balance_after,
        "wallet_version": version,
        "counterparty_wallet_id": None,
    }
    event_id = uuid4()
    payload = {"specversion": "1.0", "id": str(event_id), "type": "wallet.credited", "data": data}
    return (
        event_id,
        ledger.tenant_id,
        str(wallet_id),
        "wallet.credited",
        orjson.dumps(payload).decode(),
        at,
        at,
    )


def generate(
    ledger: Ledger, transactions: int, rng: random.Random
) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]], list[tuple[object, ...]]]:
    """``transactions`` postings: a credit when the payer cannot pay, else a transfer."""
    tx_rows: list[tuple[object, ...]] = []
    entry_rows: list[tuple[object, ...]] = []
    event_rows: list[tuple[object, ...]] = []
    for _ in range(transactions):
        ledger.clock += timedelta(microseconds=7)
        at, transaction_id = ledger.clock, uuid4()
        payer, payee = rng.sample(ledger.user_ids, 2)
        amount = rng.randint(1, 10_000)
        kind = "transfer"
        if ledger.chains[payer].balance < amount:
            payer, kind = ledger.system_id, "credit"
        tx_rows.append(
            (
                transaction_id,
                ledger.tenant_id,
                kind,
                "posted",
                amount,
                CURRENCY,
                "{}",
                payer if kind == "transfer" else None,
                payee,
                at,
                at,
            )
        )
        for wallet_id, signed in ((payer, -amount), (payee, amount)):
            entry = entry_row(ledger, wallet_id, transaction_id, signed, at)
            entry_rows.append(entry)
            event_rows.append(outbox_row(ledger, entry, kind))
    return tx_rows, entry_rows, event_rows


TX_COLUMNS = [
    "id",
    "tenant_id",
    "type",
    "status",
    "amount",
    "currency",
    "metadata",
    "from_wallet_id",
    "to_wallet_id",
    "created_at",
    "updated_at",
]
ENTRY_COLUMNS = [
    "id",
    "transaction_id",
    "wallet_id",
    "currency",
    "amount",
    "balance_after",
    "wallet_version",
    "hash",
    "created_at",
]
OUTBOX_COLUMNS = [
    "event_id",
    "tenant_id",
    "message_key",
    "event_type",
    "payload",
    "created_at",
    "published_at",
]


async def create_ledger(connection: asyncpg.Connection, wallets: int) -> Ledger:
    tenant_id, system_id = uuid4(), uuid4()
    user_ids = [uuid4() for _ in range(wallets)]
    await connection.execute("INSERT INTO tenants (id, name) VALUES ($1, 'bench')", tenant_id)
    now = datetime.now(UTC)
    await connection.copy_records_to_table(
        "wallets",
        records=[
            (wallet_id, tenant_id, CURRENCY, wallet_id == system_id, now, now)
            for wallet_id in [system_id, *user_ids]
        ],
        columns=["id", "tenant_id", "currency", "is_system", "created_at", "updated_at"],
    )
    chains = {wallet_id: Chain() for wallet_id in [system_id, *user_ids]}
    return Ledger(tenant_id, system_id, user_ids, chains, now)


async def fill(admin_url: str, url: str, entries: int, wallets: int, seed: int) -> None:
    connection = await asyncpg.connect(url)
    try:
        await connection.execute("SET session_replication_role = replica")
        ledger = await create_ledger(connection, wallets)
        rng = random.Random(seed)
        remaining = entries // 2
        while remaining > 0:
            count = min(CHUNK_TRANSACTIONS, remaining)
            tx_rows, entry_rows, event_rows = generate(ledger, count, rng)
            await connection.copy_records_to_table(
                "transactions", records=tx_rows, columns=TX_COLUMNS
            )
            await connection.copy_records_to_table(
                "entries", records=entry_rows, columns=ENTRY_COLUMNS
            )
            await connection.copy_records_to_table(
                "outbox", records=event_rows, columns=OUTBOX_COLUMNS
            )
            remaining -= count
        await connection.execute(
            """UPDATE wallets w SET balance = c.balance, version = c.version, last_hash = c.hash
               FROM unnest($1::uuid[], $2::bigint[], $3::bigint[], $4::bytea[])
                    AS c(id, balance, version, hash) WHERE w.id = c.id""",
            list(ledger.chains),
            [c.balance for c in ledger.chains.values()],
            [c.version for c in ledger.chains.values()],
            [c.last_hash for c in ledger.chains.values()],
        )
        await connection.execute("VACUUM ANALYZE")
    finally:
        await connection.close()


def run_audit_child(url: str) -> tuple[float, int, bytes, int]:
    """Seconds, exit code, stdout and peak RSS bytes of ``walletd audit --json`` (a child)."""
    command = [
        sys.executable,
        "-m",
        "walletd.entrypoints.cli_audit",
        "--json",
        "--no-progress",
        "--database-url",
        url,
    ]
    started = time.perf_counter()
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as child:
        watched, peak_rss = psutil.Process(child.pid), 0
        deadline = started + 3600
        while child.poll() is None and time.perf_counter() < deadline:
            with contextlib.suppress(psutil.Error):
                peak_rss = max(peak_rss, watched.memory_info().rss)
            time.sleep(0.05)
        stdout, _ = child.communicate(timeout=60)
    return time.perf_counter() - started, child.returncode, stdout, peak_rss


async def admin(admin_url: str, sql: str) -> None:
    connection = await asyncpg.connect(admin_url)
    try:
        await connection.execute(sql)
    finally:
        await connection.close()


def measure(admin_url: str, entries: int, wallets: int, seed: int, keep: bool) -> None:
    name = f"walletd_bench_{uuid4().hex[:12]}"
    url = f"{admin_url.rpartition('/')[0]}/{name}"
    asyncio.run(admin(admin_url, f'CREATE DATABASE "{name}"'))
    try:
        upgrade(url)
        started = time.perf_counter()
        asyncio.run(fill(admin_url, url, entries, wallets, seed))
        print(f"generated {entries} entries in {time.perf_counter() - started:.1f} s", flush=True)
        seconds, code, stdout, peak_rss = run_audit_child(url)
        peak_rss_mib = peak_rss / 2**20
        report = orjson.loads(stdout)
        print(f"audit exit {code}, ok={report['ok']}, checked={report['checked']}")
        print(
            f"audit took {seconds:.1f} s = {seconds / entries * 1e6:.1f} s per million entries;"
            f" peak RSS of the audit process {peak_rss_mib:.0f} MiB"
        )
    finally:
        if keep:
            print(f"kept {url}")
        else:
            asyncio.run(admin(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--wallets", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--admin-url", help="a superuser URL to the 'postgres' database")
    parser.add_argument("--keep", action="store_true", help="keep the database (--admin-url)")
    args = parser.parse_args()
    if not 2 <= args.entries <= MAX_ENTRIES or not 2 <= args.wallets <= 10_000_000:
        parser.error(f"--entries must be 2..{MAX_ENTRIES}, --wallets 2..10000000")
    if args.admin_url:
        measure(args.admin_url, args.entries, args.wallets, args.seed, args.keep)
        return
    with EmbeddedStack(
        REPO_ROOT / ".walletd" / "bench-audit", redis=False, kafka=False, fast=True
    ) as stack:
        measure(
            stack.endpoints.database_url.rpartition("/")[0] + "/postgres",
            args.entries,
            args.wallets,
            args.seed,
            False,
        )


if __name__ == "__main__":
    main()
