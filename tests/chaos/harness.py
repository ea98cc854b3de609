"""One chaos run from start to verdict: private stack, children, workload, faults, checks.

:func:`run_chaos` starts PostgreSQL (normal fsync), Redis and the Kafka-compatible
broker under ``.walletd/chaos-<pid>/``, migrates, creates a tenant key, runs
``walletd serve --workers 2`` and ``walletd relay`` as children on a fresh topic,
creates and funds the wallets, runs the clients while the fault schedule runs, lets
the relay catch up, checks, and stops everything it started by PID, even on failure
or Ctrl-C.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.chaos import checks, report
from tests.chaos.faults import (
    FaultInjector,
    FaultRecord,
    FaultTiming,
    Processes,
    Schedule,
    run_schedule,
)
from tests.chaos.processes import ApiServer, Child, run_cli
from tests.chaos.workload import (
    ACKNOWLEDGED,
    Operation,
    RetryPolicy,
    TransferMix,
    client_loop,
    create_wallets,
    fund_wallets,
    new_client,
)
from walletd.adapters.embedded import EmbeddedStack, ServiceEndpoints, free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
STATE_DIR = REPO_ROOT / ".walletd"
DEFAULT_SUMMARY_PATH = REPO_ROOT / "bench" / "results" / "chaos-latest.json"
TENANT_NAME = "chaos"
DRAIN_TIMEOUT_SECONDS = 120.0
KAFKA_READ_SECONDS = 180.0
SHORT_RUN_SECONDS = 120.0
MIN_REPLAYS, MAX_REPLAYS = 500, 5_000


class SetupError(RuntimeError):
    """The run could not get to the workload (a service, a command or the setup failed)."""


@dataclass(frozen=True)
class ChaosConfig:
    """Every knob of a run; ``seed`` decides the transfers, the fault order and timing."""

    seed: int
    seconds: float = 600.0
    clients: int = 16
    wallets: int = 20
    min_faults: int = 30
    workers: int = 2
    recovery_bound_seconds: float = 15.0
    funding_minor: int = 100_000
    run_dir: Path = field(default_factory=lambda: STATE_DIR / f"chaos-{os.getpid()}")
    summary_path: Path = DEFAULT_SUMMARY_PATH
    keep_run_dir: bool = False

    def __post_init__(self) -> None:
        assert self.seconds > 0 and self.clients >= 1 and self.wallets >= 2
        assert self.min_faults >= 0 and self.workers >= 2 and self.recovery_bound_seconds > 0

    @property
    def replay_limit(self) -> int:
        """How many definitive operations are sent again after the run (12 per second)."""
        return min(MAX_REPLAYS, max(MIN_REPLAYS, int(self.seconds * 12)))

    @property
    def policy(self) -> RetryPolicy:
        """60 s per operation; 40 s in short runs (still past the 30 s Redis key lock)."""
        return RetryPolicy(operation_deadline_seconds=40.0 if self.short else 60.0)

    @property
    def short(self) -> bool:
        return self.seconds < SHORT_RUN_SECONDS

    @property
    def timing(self) -> FaultTiming:
        short = self.short
        return FaultTiming(
            outage_min_seconds=1.0 if short else 2.0,
            outage_max_seconds=2.5 if short else 5.0,
            recovery_bound_seconds=self.recovery_bound_seconds,
        )

    @property
    def schedule(self) -> Schedule:
        tail = min(10.0, self.seconds / 8)
        return Schedule(self.seconds, self.min_faults, tail_seconds=tail)

    def as_json(self) -> dict[str, Any]:
        return {
            "seed": self.seed, "seconds": self.seconds, "clients": self.clients,
            "wallets": self.wallets, "min_faults": self.min_faults, "workers": self.workers,
            "recovery_bound_seconds": self.recovery_bound_seconds,
            "funding_minor": self.funding_minor, "replay_limit": self.replay_limit,
            "run_dir": str(self.run_dir),
        }  # fmt: skip


@dataclass
class Context:
    """What the async part of a run needs: services, children, environment, the tenant."""

    config: ChaosConfig
    stack: EmbeddedStack
    processes: Processes
    env: dict[str, str]
    api_key: str
    tenant_id: str
    topic: str
    phases: dict[str, float]


def child_env(endpoints: ServiceEndpoints, topic: str, run_dir: Path) -> dict[str, str]:
    """The children's environment: ours without WALLETD_*, plus the private endpoints."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("WALLETD_")}
    env.update(endpoints.as_env())
    metrics = run_dir / "metrics"
    metrics.mkdir(parents=True, exist_ok=True)
    env.update(WALLETD_KAFKA_TOPIC=topic, PROMETHEUS_MULTIPROC_DIR=str(metrics))
    return env


def _prepare_database(env: Mapping[str, str]) -> tuple[str, str]:
    """``walletd migrate`` and ``walletd api-keys create``: (secret, tenant id)."""
    migrated = run_cli(["migrate"], env)
    if migrated.returncode != 0:
        raise SetupError(f"walletd migrate failed: {migrated.stderr.strip()}")
    created = run_cli(
        ["api-keys", "create", "--tenant", TENANT_NAME, "--scopes", "read,write,admin"], env
    )
    lines = created.stdout.strip().splitlines()
    found = re.search(r"\(([0-9a-f-]{36})\)", lines[0]) if lines else None
    if created.returncode != 0 or found is None:
        raise SetupError(f"walletd api-keys create failed: {created.stderr.strip()}")
    return lines[-1].strip(), found.group(1)


def _start_children(config: ChaosConfig, env: dict[str, str]) -> Processes:
    logs = config.run_dir / "logs"
    api = ApiServer(free_port(), config.workers, env, logs / "api.log")
    counter = iter(range(1, 1_000_000))

    def make_relay() -> Child:
        return Child("relay", ["relay"], env, logs / f"relay-{next(counter)}.log")

    relay = make_relay()
    processes = Processes(api=api, relay=relay, make_relay=make_relay)
    api.start()
    relay.start()
    api.wait_ready()
    return processes


def run_chaos(config: ChaosConfig) -> dict[str, Any]:
    """Run the whole thing; the summary (``summary["ok"]`` is the verdict)."""
    print(f"chaos: seed {config.seed} (replay with CHAOS_SEED={config.seed})", flush=True)
    config.run_dir.mkdir(parents=True, exist_ok=True)
    stack = EmbeddedStack(config.run_dir, fast=False)
    processes: Processes | None = None
    summary: dict[str, Any] = {}
    phases: dict[str, float] = {}
    try:
        with report.timed(phases, "services"):
            endpoints = stack.start()
        topic = f"walletd.chaos.{os.getpid()}.{config.seed}"
        env = child_env(endpoints, topic, config.run_dir)
        with report.timed(phases, "migrate_and_key"):
            api_key, tenant_id = _prepare_database(env)
        with report.timed(phases, "api_and_relay"):
            processes = _start_children(config, env)
        print(f"chaos: stack up in {sum(phases.values()):.1f} s under {config.run_dir}", flush=True)
        context = Context(config, stack, processes, env, api_key, tenant_id, topic, phases)
        summary = asyncio.run(_exercise(context))
    finally:
        for child in processes.all() if processes is not None else []:
            child.stop()
        stack.stop()
    report.write(summary, [config.run_dir / "summary.json", config.summary_path])
    if summary.get("ok") and not config.keep_run_dir:
        _prune(config.run_dir)
    return summary


def _prune(run_dir: Path) -> None:
    """After a clean run keep the logs and the summary, drop the servers' data."""
    for server in ("postgres", "redis", "kafka", "metrics"):
        directory = run_dir / server
        for path in directory.iterdir() if directory.is_dir() else []:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            elif not path.name.endswith(".log"):
                path.unlink(missing_ok=True)


@dataclass
class WorkloadResult:
    """What the clients did and which faults hit them."""

    operations: list[Operation]
    faults: list[FaultRecord]
    seconds: float


async def _exercise(context: Context) -> dict[str, Any]:
    """Set up the wallets, run workload and faults, then check; the summary."""
    config = context.config
    policy = config.policy
    rng = random.Random(f"{config.seed}:setup")
    phases = context.phases
    async with new_client(context.processes.api.url, context.api_key, policy) as admin:
        with report.timed(phases, "wallets_and_funding"):
            wallet_ids, funding = await _setup(admin, config, policy, rng)
        with report.timed(phases, "workload"):
            result = await _run_workload(context, wallet_ids, policy)
        with report.timed(phases, "replays"):
            replays = await checks.replay_sample(
                admin, result.operations, config.replay_limit, policy, rng
            )
    verdicts = await _check(context, funding, result, replays)
    return report.build(
        config, funding, result.operations, result.faults, result.seconds, verdicts, phases
    )


async def _setup(
    admin: httpx.AsyncClient, config: ChaosConfig, policy: RetryPolicy, rng: random.Random
) -> tuple[list[str], list[Operation]]:
    """Create and fund the wallets; every one must be acknowledged."""
    wallets = await create_wallets(admin, config.wallets, policy, rng)
    failed = [op for op in wallets if op.outcome != ACKNOWLEDGED or op.object_id is None]
    if failed:
        raise SetupError(f"could not create wallets: {[(op.status, op.code) for op in failed]}")
    wallet_ids = [str(op.object_id) for op in wallets]
    funding = await fund_wallets(admin, wallet_ids, config.funding_minor, policy, rng)
    failed = [op for op in funding if op.outcome != ACKNOWLEDGED]
    if failed:
        raise SetupError(f"could not fund wallets: {[(op.status, op.code) for op in failed]}")
    print(f"chaos: {len(wallet_ids)} wallets funded with {config.funding_minor} each", flush=True)
    return wallet_ids, funding


async def _run_workload(
    context: Context, wallet_ids: list[str], policy: RetryPolicy
) -> WorkloadResult:
    """The clients and the fault schedule together; returns when both are done."""
    config = context.config
    url, key = context.processes.api.url, context.api_key
    mix = TransferMix(tuple(wallet_ids), max(1, config.funding_minor // 3))
    stop = asyncio.Event()
    operations: list[Operation] = []
    clients = [new_client(url, key, policy) for _ in range(config.clients)]
    probe = httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {key}"})
    fault_rng = random.Random(f"{config.seed}:faults")
    injector = FaultInjector(
        context.stack, context.processes, probe, wallet_ids[0], config.timing, fault_rng
    )
    started = time.monotonic()
    tasks = [
        asyncio.create_task(
            client_loop(http, mix, policy, random.Random(f"{config.seed}:client:{n}"), stop,
                        operations)
        )
        for n, http in enumerate(clients)
    ]  # fmt: skip
    ticker = asyncio.create_task(report.progress(operations, started, stop))
    try:
        schedule = asyncio.create_task(run_schedule(injector, config.schedule, fault_rng, started))
        await asyncio.sleep(config.seconds)
        faults = await schedule
    finally:
        stop.set()
        await _finish(tasks, policy.operation_deadline_seconds + 15)
        ticker.cancel()
        for http in [*clients, probe]:
            await http.aclose()
    return WorkloadResult(operations, faults, time.monotonic() - started)


async def _finish(tasks: list[asyncio.Task[None]], timeout_seconds: float) -> None:
    """Let each client finish its operation; re-raise a client's crash."""
    _, pending = await asyncio.wait(tasks, timeout=timeout_seconds)
    for task in pending:
        task.cancel()
    for task in tasks:
        if task.done() and not task.cancelled() and task.exception() is not None:
            raise RuntimeError("a client crashed") from task.exception()


async def _check(
    context: Context,
    funding: list[Operation],
    result: WorkloadResult,
    replays: tuple[int, list[dict[str, Any]]],
) -> list[checks.Verdict]:
    """Let the relay catch up, then every verdict."""
    config, database_url = context.config, context.env["WALLETD_DATABASE_URL"]
    phases = context.phases
    with report.timed(phases, "outbox_drain"):
        drained, _, left = await checks.wait_drained(database_url, DRAIN_TIMEOUT_SECONDS)
    print(f"chaos: outbox drained={drained} ({left} rows left); checking", flush=True)
    with report.timed(phases, "snapshot"):
        snapshot = await checks.read_snapshot(database_url, context.tenant_id)
    fates = checks.resolve(result.operations, snapshot)
    posted = checks.posted_transfers(result.operations, fates)
    expected = checks.expected_balances(funding, posted)
    credited = sum(int(op.body["amount"]) for op in funding)
    with report.timed(phases, "audit_and_topic_read"):
        audit, topic_read = await asyncio.gather(
            asyncio.to_thread(checks.check_audit, context.env),
            asyncio.to_thread(
                checks.read_topic, context.env["WALLETD_KAFKA_BOOTSTRAP"], context.topic,
                context.tenant_id, snapshot.outbox_event_ids, KAFKA_READ_SECONDS,
            ),
        )  # fmt: skip
    return [
        checks.check_conservation(snapshot, credited, expected),
        checks.check_exactly_once(result.operations, fates, snapshot, replays[1], replays[0]),
        audit,
        checks.check_events(snapshot, topic_read, drained),
        checks.check_recovery(result.faults, config.recovery_bound_seconds),
        checks.check_coverage(result.faults, config.min_faults),
    ]
