"""Configuration of ``bench.run`` (environment variables, read once) and small shared helpers."""

from __future__ import annotations

import asyncio
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO_ROOT / "bench" / "results"
SECTIONS = ("raw", "http", "profile", "reads", "audit")
CHECKPOINT_TIMEOUT_SECONDS = 120


def _int(name: str, default: int, low: int, high: int) -> int:
    raw = os.environ.get(name, "").strip()
    value = int(raw) if raw else default
    if not low <= value <= high:
        raise SystemExit(f"bench: {name}={value} is outside {low}..{high}")
    return value


def _int_list(name: str, default: str, low: int, high: int) -> tuple[int, ...]:
    raw = os.environ.get(name, "").strip() or default
    try:
        values = tuple(int(part) for part in raw.split(",") if part.strip())
    except ValueError:
        raise SystemExit(
            f"bench: {name}={raw!r} is not a comma-separated list of integers"
        ) from None
    if not values or any(not low <= value <= high for value in values):
        raise SystemExit(f"bench: {name}={raw!r}: each value must be in {low}..{high}")
    return values


def default_api_workers() -> int:
    """Half the cores for API workers, the rest for PostgreSQL, the relay and Redis.

    On the 2-core reference machine that is one worker: all clients then share one
    group committer (bigger groups, less CPU per posting), and no worker competes with
    the database for a core. With ``--workers 2`` there, the kernel hands the 64
    keep-alive connections to the workers unevenly from run to run.
    """
    return max(1, (os.cpu_count() or 2) // 2)


@dataclass(frozen=True)
class Config:
    """Every knob of one benchmark run (see docs/benchmarks.md)."""

    seconds: int = 10
    concurrency: tuple[int, ...] = (16, 64)
    wallets: int = 1000
    big_wallet_entries: int = 1_000_000
    read_concurrency: tuple[int, ...] = (1, 16)
    api_workers: int = 1
    profile_seconds: int = 5
    skip: frozenset[str] = field(default_factory=frozenset)
    keep_run_dir: bool = False

    @classmethod
    def from_env(cls) -> Config:
        skip = frozenset(
            part.strip() for part in os.environ.get("BENCH_SKIP", "").split(",") if part.strip()
        )
        unknown = skip - set(SECTIONS)
        if unknown:
            raise SystemExit(
                f"bench: BENCH_SKIP names unknown sections {sorted(unknown)}; "
                f"known: {', '.join(SECTIONS)}"
            )
        return cls(
            seconds=_int("BENCH_SECONDS", 10, 1, 600),
            concurrency=_int_list("BENCH_CONCURRENCY", "16,64", 1, 512),
            wallets=_int("BENCH_WALLETS", 1000, 10, 1_000_000),
            big_wallet_entries=_int("BENCH_BIG_WALLET_ENTRIES", 1_000_000, 1000, 50_000_000),
            read_concurrency=_int_list("BENCH_READ_CONCURRENCY", "1,16", 1, 512),
            api_workers=_int("BENCH_API_WORKERS", default_api_workers(), 1, 16),
            profile_seconds=_int("BENCH_PROFILE_SECONDS", 5, 1, 60),
            skip=skip,
            keep_run_dir=os.environ.get("BENCH_KEEP", "") not in ("", "0"),
        )

    def runs(self, section: str) -> bool:
        return section not in self.skip

    @property
    def top_concurrency(self) -> int:
        return max(self.concurrency)

    def to_json(self) -> dict[str, Any]:
        return {
            "seconds": self.seconds,
            "concurrency": list(self.concurrency),
            "wallets": self.wallets,
            "big_wallet_entries": self.big_wallet_entries,
            "read_concurrency": list(self.read_concurrency),
            "api_workers": self.api_workers,
            "profile_seconds": self.profile_seconds,
            "skip": sorted(self.skip),
        }


def walletd_argv(*arguments: str) -> list[str]:
    """The ``walletd`` command of this interpreter (as ``walletd dev`` runs it)."""
    return [sys.executable, "-m", "walletd.entrypoints.cli", *arguments]


async def _settle(database_url: str) -> None:
    connection = await asyncpg.connect(database_url, timeout=10)
    try:
        await connection.execute("VACUUM (ANALYZE)", timeout=CHECKPOINT_TIMEOUT_SECONDS)
        await connection.execute("CHECKPOINT", timeout=CHECKPOINT_TIMEOUT_SECONDS)
    finally:
        await connection.close()


def settle_database(database_url: str) -> None:
    """Vacuum and analyse every table, then flush dirty pages, before a scenario.

    pgbench vacuums before its runs by default; doing it here, for the raw and the HTTP
    scenarios alike, keeps autovacuum (and its write-ahead log) from waking up in the
    middle of one because the previous one grew a table, and no scenario pays for the
    previous one's checkpoint.
    """
    asyncio.run(_settle(database_url))
