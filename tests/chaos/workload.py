"""The bank workload: wallets, funding credits and concurrent random transfers over HTTP.

Every money movement carries a fresh ``Idempotency-Key``. An uncertain outcome (a
timeout, a connection error, a 5xx, 409 ``idempotency_key_in_use``, 429) is retried
with the SAME key and body, with bounded exponential backoff and a bounded total time,
until a definitive answer: 2xx (acknowledged) or another 4xx (refused). An operation
that never gets one is ``unresolved``; the checks later decide from the database
whether it posted.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx

CURRENCY = "EUR"
ACKNOWLEDGED = "acknowledged"
REFUSED = "refused"
UNRESOLVED = "unresolved"
RETRYABLE_STATUSES = frozenset({409, 429})
MAX_ATTEMPTS = 1_000  # the deadline ends retries first; this only bounds the loop


@dataclass(frozen=True)
class RetryPolicy:
    """How hard one operation tries: per attempt, in total, and the backoff between."""

    attempt_timeout_seconds: float = 2.0
    operation_deadline_seconds: float = 60.0
    backoff_first_seconds: float = 0.05
    backoff_max_seconds: float = 2.0

    def backoff_seconds(self, attempt: int, rng: random.Random) -> float:
        """Full-jitter exponential backoff after ``attempt`` failed attempts (1-based)."""
        ceiling = min(self.backoff_max_seconds, self.backoff_first_seconds * 2 ** min(attempt, 16))
        return rng.uniform(ceiling / 2, ceiling)


@dataclass(slots=True)
class Operation:
    """One idempotent POST and everything its attempts learned."""

    kind: str  # "wallet", "credit" or "transfer"
    path: str
    body: dict[str, Any]
    key: str = field(default_factory=lambda: f"chaos-{uuid.uuid4()}")
    outcome: str = UNRESOLVED
    status: int | None = None
    code: str | None = None
    object_id: str | None = None  # the created wallet's or transaction's id
    replayed: bool = False  # the definitive answer carried Idempotent-Replayed: true
    attempts: int = 0
    uncertain: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0

    @property
    def retries(self) -> int:
        return max(0, self.attempts - 1)


def _uncertain_reason(response: httpx.Response) -> str | None:
    """Why this answer is not definitive, or None when it is."""
    if response.status_code >= 500:
        return f"http_{response.status_code}"
    if response.status_code in RETRYABLE_STATUSES:
        return f"http_{response.status_code}"
    return None


def _record_answer(operation: Operation, response: httpx.Response) -> None:
    """Store a definitive answer (2xx or a non-retryable 4xx) on the operation."""
    operation.status = response.status_code
    body = response.json() if response.content else {}
    if 200 <= response.status_code < 300:
        operation.outcome = ACKNOWLEDGED
        operation.object_id = str(body["id"])
    else:
        operation.outcome = REFUSED
        operation.code = str(body.get("code", f"http_{response.status_code}"))
    operation.replayed = response.headers.get("Idempotent-Replayed", "").lower() == "true"


async def send_until_definitive(
    http: httpx.AsyncClient, operation: Operation, policy: RetryPolicy, rng: random.Random
) -> Operation:
    """POST ``operation`` (same key, same body) until a definitive answer or the deadline."""
    started = time.monotonic()
    deadline = started + policy.operation_deadline_seconds
    headers = {"Idempotency-Key": operation.key}
    for attempt in range(1, MAX_ATTEMPTS + 1):
        operation.attempts = attempt
        try:
            response = await http.post(
                operation.path,
                json=operation.body,
                headers=headers,
                timeout=policy.attempt_timeout_seconds,
            )
        except httpx.TimeoutException:
            operation.uncertain["timeout"] += 1
        except httpx.TransportError as error:
            operation.uncertain[type(error).__name__] += 1
        else:
            reason = _uncertain_reason(response)
            if reason is None:
                _record_answer(operation, response)
                break
            operation.uncertain[reason] += 1
        pause = policy.backoff_seconds(attempt, rng)
        if time.monotonic() + pause > deadline:
            break
        await asyncio.sleep(pause)
    operation.seconds = time.monotonic() - started
    return operation


def new_client(base_url: str, api_key: str, policy: RetryPolicy) -> httpx.AsyncClient:
    """An HTTP client of one simulated customer: its own connections, short timeouts."""
    return httpx.AsyncClient(
        base_url=base_url,
        headers={"Authorization": f"Bearer {api_key}"},
        timeout=policy.attempt_timeout_seconds,
        limits=httpx.Limits(max_connections=4, max_keepalive_connections=4),
    )


async def create_wallets(
    http: httpx.AsyncClient, count: int, policy: RetryPolicy, rng: random.Random
) -> list[Operation]:
    """Create ``count`` wallets (idempotently); the caller checks every one was created."""
    operations = [
        Operation("wallet", "/v1/wallets", {"currency": CURRENCY, "owner_id": f"chaos-{n}"})
        for n in range(count)
    ]
    return list(
        await asyncio.gather(*(send_until_definitive(http, op, policy, rng) for op in operations))
    )


async def fund_wallets(
    http: httpx.AsyncClient,
    wallet_ids: list[str],
    amount_minor: int,
    policy: RetryPolicy,
    rng: random.Random,
) -> list[Operation]:
    """Credit every wallet with ``amount_minor`` (idempotently)."""
    operations = [
        Operation(
            "credit",
            "/v1/credits",
            {"wallet_id": wallet, "amount": amount_minor, "currency": CURRENCY},
        )
        for wallet in wallet_ids
    ]
    return list(
        await asyncio.gather(*(send_until_definitive(http, op, policy, rng) for op in operations))
    )


@dataclass(frozen=True)
class TransferMix:
    """What a client sends: amounts up to ``max_amount_minor`` between random wallets."""

    wallet_ids: tuple[str, ...]
    max_amount_minor: int

    def next_transfer(self, rng: random.Random) -> Operation:
        source, target = rng.sample(self.wallet_ids, 2)
        body = {
            "from_wallet_id": source,
            "to_wallet_id": target,
            "amount": rng.randint(1, self.max_amount_minor),
            "currency": CURRENCY,
            "reference": "chaos",
        }
        return Operation("transfer", "/v1/transfers", body)


async def client_loop(
    http: httpx.AsyncClient,
    mix: TransferMix,
    policy: RetryPolicy,
    rng: random.Random,
    stop: asyncio.Event,
    done: list[Operation],
) -> None:
    """One customer: transfer after transfer until ``stop`` is set; each one to the end."""
    while not stop.is_set():
        operation = mix.next_transfer(rng)
        done.append(operation)  # recorded before sending: an interrupted one stays unresolved
        await send_until_definitive(http, operation, policy, rng)
