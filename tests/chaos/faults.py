"""The fault schedule: seeded, round-robin over five kinds, with random timing.

Kinds: ``api_worker_kill`` (SIGKILL one uvicorn worker; the master respawns it),
``relay_kill`` (SIGKILL the relay, start a new one), ``postgres_restart`` (immediate
shutdown and start), ``redis_flush_stop`` (FLUSHALL, stop, start again a few seconds
later) and ``kafka_pause`` (SIGSTOP the broker for a few seconds, then SIGCONT).
After each fault the time until ``GET /readyz`` and a real ``GET`` of a wallet both
answer 200 is measured.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import redis

from tests.chaos.processes import ApiServer, Child
from walletd.adapters.embedded import EmbeddedStack

FAULT_KINDS = (
    "api_worker_kill",
    "relay_kill",
    "postgres_restart",
    "redis_flush_stop",
    "kafka_pause",
)
MAX_FAULTS = 10_000
PROBE_INTERVAL_SECONDS = 0.1
PROBE_TIMEOUT_SECONDS = 1.0
# After the schedule's end, faults still owed to ``min_faults`` come this fast.
CATCH_UP_GAP_SECONDS = 0.5


@dataclass
class FaultRecord:
    """One injected fault and how the system came back."""

    index: int
    kind: str
    at_seconds: float  # since the start of the workload
    outage_seconds: float = 0.0  # from injection until the service was restored
    recovery_seconds: float | None = None  # from restoration until the API answered 200
    details: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "kind": self.kind,
            "at_seconds": round(self.at_seconds, 3),
            "outage_seconds": round(self.outage_seconds, 3),
            "recovery_seconds": None
            if self.recovery_seconds is None
            else round(self.recovery_seconds, 3),
            **self.details,
        }


@dataclass
class Processes:
    """The children a run owns; a killed relay is replaced here and kept for the final stop."""

    api: ApiServer
    relay: Child
    make_relay: Callable[[], Child]
    retired: list[Child] = field(default_factory=list)

    def all(self) -> list[Child]:
        return [self.relay, self.api, *self.retired]


@dataclass(frozen=True)
class FaultTiming:
    """Outage lengths and the recovery bound, in seconds."""

    outage_min_seconds: float = 2.0
    outage_max_seconds: float = 5.0
    recovery_bound_seconds: float = 15.0


async def measure_recovery(
    probe: httpx.AsyncClient, wallet_id: str, limit_seconds: float
) -> float | None:
    """Seconds until /readyz and GET /v1/wallets/{id} both answer 200; None past the limit."""
    started = time.monotonic()
    while time.monotonic() - started < limit_seconds:
        try:
            ready = await probe.get("/readyz", timeout=PROBE_TIMEOUT_SECONDS)
            wallet = await probe.get(f"/v1/wallets/{wallet_id}", timeout=PROBE_TIMEOUT_SECONDS)
            if ready.status_code == 200 and wallet.status_code == 200:
                return time.monotonic() - started
        except httpx.HTTPError:
            pass
        await asyncio.sleep(PROBE_INTERVAL_SECONDS)
    return None


class FaultInjector:
    """Injects one fault of a kind and restores the service; knows the stack and children."""

    def __init__(
        self,
        stack: EmbeddedStack,
        processes: Processes,
        probe: httpx.AsyncClient,
        wallet_id: str,
        timing: FaultTiming,
        rng: random.Random,
    ) -> None:
        self.stack, self.processes, self.probe = stack, processes, probe
        self.wallet_id, self.timing, self.rng = wallet_id, timing, rng

    async def inject(self, index: int, kind: str, at_seconds: float) -> FaultRecord:
        record = FaultRecord(index, kind, at_seconds)
        started = time.monotonic()
        action = getattr(self, f"_{kind}")
        await action(record)
        record.outage_seconds = time.monotonic() - started
        record.recovery_seconds = await measure_recovery(
            self.probe, self.wallet_id, 2 * self.timing.recovery_bound_seconds
        )
        return record

    def _outage_seconds(self) -> float:
        return self.rng.uniform(self.timing.outage_min_seconds, self.timing.outage_max_seconds)

    async def _api_worker_kill(self, record: FaultRecord) -> None:
        api = self.processes.api
        workers = api.worker_pids()
        if not workers:
            record.details["note"] = "no worker found to kill"
            return
        victim = self.rng.choice(workers)
        os.kill(victim, signal.SIGKILL)
        record.details["killed_pid"] = victim
        respawn = await self._wait_respawn(api, victim)
        record.details["respawn_seconds"] = None if respawn is None else round(respawn, 3)
        if respawn is None:  # uvicorn did not replace it: restart serve and say so
            record.details["note"] = "worker not respawned; walletd serve restarted"
            await asyncio.to_thread(api.stop)
            api.start()
            await asyncio.to_thread(api.wait_ready)

    async def _wait_respawn(self, api: ApiServer, victim: int) -> float | None:
        started = time.monotonic()
        while time.monotonic() - started < self.timing.recovery_bound_seconds:
            pids = api.worker_pids()
            if len(pids) >= api.workers and victim not in pids:
                return time.monotonic() - started
            await asyncio.sleep(PROBE_INTERVAL_SECONDS)
        return None

    async def _relay_kill(self, record: FaultRecord) -> None:
        old = self.processes.relay
        record.details["killed_pid"] = old.pid
        await asyncio.to_thread(old.kill9)
        self.processes.retired.append(old)
        await asyncio.sleep(self.rng.uniform(0.0, 1.0))  # sometimes no relay for a moment
        new = self.processes.make_relay()
        new.start()
        self.processes.relay = new
        record.details["new_pid"] = new.pid

    async def _postgres_restart(self, record: FaultRecord) -> None:
        postgres = self.stack.postgres
        assert postgres is not None
        await asyncio.to_thread(postgres.restart, immediate=True)
        record.details["postgres_pid"] = postgres.pid

    async def _redis_flush_stop(self, record: FaultRecord) -> None:
        server = self.stack.redis
        assert server is not None
        client = redis.Redis.from_url(server.url, socket_timeout=2, socket_connect_timeout=2)
        try:
            await asyncio.to_thread(client.flushall)
        finally:
            client.close()
        await asyncio.to_thread(server.stop)
        down = self._outage_seconds()
        record.details["down_seconds"] = round(down, 3)
        await asyncio.sleep(down)
        await asyncio.to_thread(server.start)

    async def _kafka_pause(self, record: FaultRecord) -> None:
        broker = self.stack.kafka
        assert broker is not None
        await asyncio.to_thread(broker.pause)
        paused = self._outage_seconds()
        record.details["paused_seconds"] = round(paused, 3)
        try:
            await asyncio.sleep(paused)
        finally:
            broker.resume()


@dataclass(frozen=True)
class Schedule:
    """When to inject: ``min_faults`` spread over ``duration_seconds``, gaps drawn at random."""

    duration_seconds: float
    min_faults: int
    tail_seconds: float  # no new fault this close to the end (unless still owed)

    @property
    def mean_interval_seconds(self) -> float:
        return max(1.0, (self.duration_seconds - self.tail_seconds) / max(1, self.min_faults))


async def run_schedule(
    injector: FaultInjector, schedule: Schedule, rng: random.Random, started: float
) -> list[FaultRecord]:
    """Inject faults round-robin (kind order shuffled by the seed) until the schedule ends.

    Faults still owed to ``min_faults`` at the end come quickly one after another, so
    a run always has its minimum (bounded by ``MAX_FAULTS``).
    """
    kinds = list(FAULT_KINDS)
    rng.shuffle(kinds)
    records: list[FaultRecord] = []
    end = started + schedule.duration_seconds - schedule.tail_seconds
    for index in range(MAX_FAULTS):
        owed = len(records) < schedule.min_faults
        on_time_at = started + (index + 1) * schedule.mean_interval_seconds
        gap = rng.uniform(0.3, 1.0) * schedule.mean_interval_seconds
        if time.monotonic() > on_time_at and owed:
            gap = CATCH_UP_GAP_SECONDS  # behind schedule: catch up
        if time.monotonic() + gap > end and not owed:
            break
        await asyncio.sleep(gap)
        kind = kinds[index % len(kinds)]
        record = await injector.inject(index, kind, time.monotonic() - started)
        records.append(record)
        back = record.recovery_seconds
        recovery = "never" if back is None else f"{back:.2f} s"
        print(
            f"chaos: fault {index + 1} {kind} at {record.at_seconds:.1f} s:"
            f" outage {record.outage_seconds:.2f} s, back to 200 in {recovery}",
            flush=True,
        )
    return records
