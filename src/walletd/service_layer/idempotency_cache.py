"""The Redis fast path of idempotency: in-flight locks and cached first answers.

PostgreSQL decides (see :mod:`walletd.service_layer.idempotency`); Redis only answers
sooner. One Lua call per request *claims* a key: it returns the cached answer when
there is one, else takes the in-flight lock (``SET NX PX``, value = a random token),
else reports the key in use. One Lua call at the end *finishes* it: caches the answer
(status, body, fingerprint, method, path; TTL = retention) and deletes the lock only
if it still holds our token. Any Redis failure makes the claim ``UNAVAILABLE`` and the
request takes the database path; it is counted in
``walletd_idempotency_redis_fallbacks_total{reason}``.
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass
from typing import Final
from uuid import UUID

import orjson
import structlog
from prometheus_client import Counter

from walletd.adapters.redis_client import RedisClient, RedisUnavailable
from walletd.ids import process_unique_id
from walletd.service_layer.idempotency import IdempotentRequest, StoredAnswer

logger = structlog.get_logger("walletd.idempotency")

MAX_CACHED_BODY_BYTES: Final = 256 * 1024  # larger answers are replayed from PostgreSQL
MAX_LOCK_SECONDS: Final = 3600.0
ENTRY_VERSION: Final = 1
KEY_PREFIX: Final = "walletd:idem"

FALLBACKS = Counter(
    "walletd_idempotency_redis_fallbacks",
    "Idempotent requests answered without Redis (PostgreSQL decided alone), by reason.",
    ["reason"],
)
OUTCOMES = Counter(
    "walletd_idempotency_requests",
    "Requests with an Idempotency-Key, by outcome.",
    ["outcome"],
)
OUTCOME_LABELS: Final = ("executed", "replayed_redis", "replayed_database", "in_use", "reused")

# KEYS[1] answer, KEYS[2] lock; ARGV[1] token, ARGV[2] lock TTL in ms.
# Returns {1, entry} (cached answer), {2, ""} (lock taken) or {3, ""} (lock held by another).
CLAIM_SCRIPT: Final = """
local entry = redis.call('GET', KEYS[1])
if entry then return {1, entry} end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return {2, ''} end
return {3, ''}
"""

# KEYS[1] answer, KEYS[2] lock; ARGV[1] token ('' = none), ARGV[2] entry ('' = none),
# ARGV[3] answer TTL in ms. Compare-and-delete: a lock that expired and was taken by
# another request is left alone. Returns 1 when our lock was deleted, else 0.
FINISH_SCRIPT: Final = """
if ARGV[2] ~= '' then redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3]) end
if ARGV[1] ~= '' and redis.call('GET', KEYS[2]) == ARGV[1] then
    return redis.call('DEL', KEYS[2])
end
return 0
"""


class ClaimOutcome(enum.Enum):
    REPLAY = "replay"  # the first answer is cached: replay it (or 422 if reused)
    LOCKED = "locked"  # this request holds the in-flight lock: execute it
    IN_USE = "in_use"  # another request holds the lock: 409 unless already answered
    UNAVAILABLE = "unavailable"  # Redis cannot say: PostgreSQL decides alone


@dataclass(frozen=True, slots=True)
class Claim:
    outcome: ClaimOutcome
    answer: StoredAnswer | None = None
    token: str = ""


UNAVAILABLE_CLAIM: Final = Claim(ClaimOutcome.UNAVAILABLE)


class InvalidEntry(ValueError):
    """A cached entry that does not decode to this tenant's key: ignored, never replayed."""


def redis_keys(tenant_id: UUID, key: str) -> tuple[str, str]:
    """(answer key, lock key): bounded length, same cluster slot (one hash tag)."""
    digest = hashlib.sha256(f"{tenant_id}\n{key}".encode()).hexdigest()[:32]
    return f"{KEY_PREFIX}:{{{digest}}}:answer", f"{KEY_PREFIX}:{{{digest}}}:lock"


def encode_entry(tenant_id: UUID, key: str, answer: StoredAnswer) -> bytes:
    """A JSON header line, then the body bytes exactly as stored in PostgreSQL."""
    header = {
        "v": ENTRY_VERSION,
        "tenant": str(tenant_id),
        "key": key,
        "method": answer.method,
        "path": answer.path,
        "hash": answer.request_hash.hex(),
        "status": answer.status_code,
    }
    return orjson.dumps(header) + b"\n" + answer.body


def decode_entry(raw: bytes, tenant_id: UUID, key: str) -> StoredAnswer:
    """Check the entry after reading it back; raise :class:`InvalidEntry` when it is not ours."""
    header_bytes, newline, body = raw.partition(b"\n")
    try:
        header = orjson.loads(header_bytes) if newline else None
    except orjson.JSONDecodeError as error:
        raise InvalidEntry("header is not JSON") from error
    if not isinstance(header, dict) or header.get("v") != ENTRY_VERSION:
        raise InvalidEntry("unknown entry format")
    if header.get("tenant") != str(tenant_id) or header.get("key") != key:
        raise InvalidEntry("entry belongs to another key")
    status, method, path = header.get("status"), header.get("method"), header.get("path")
    request_hash = header.get("hash")
    if not (isinstance(status, int) and 200 <= status <= 599):
        raise InvalidEntry("bad status")
    if not (isinstance(method, str) and isinstance(path, str) and isinstance(request_hash, str)):
        raise InvalidEntry("bad request identity")
    if len(request_hash) != 64 or len(body) > MAX_CACHED_BODY_BYTES:
        raise InvalidEntry("bad fingerprint or body size")
    return StoredAnswer(method, path, bytes.fromhex(request_hash), status, body)


class IdempotencyCache:
    """Claims and finishes idempotent requests in Redis; never raises on a Redis failure."""

    def __init__(
        self,
        redis: RedisClient,
        *,
        retention_seconds: float,
        lock_seconds: float,
        max_body_bytes: int = MAX_CACHED_BODY_BYTES,
    ) -> None:
        assert retention_seconds >= 24 * 3600, "answers are kept at least 24 h (SPEC 4)"
        assert 0 < lock_seconds <= MAX_LOCK_SECONDS
        assert 0 <= max_body_bytes <= MAX_CACHED_BODY_BYTES
        self._redis = redis
        self._answer_ttl_ms = int(retention_seconds * 1000)
        self._lock_ttl_ms = max(1, int(lock_seconds * 1000))
        self._max_body_bytes = max_body_bytes
        self._claim = redis.script(CLAIM_SCRIPT)
        self._finish = redis.script(FINISH_SCRIPT)

    async def load_scripts(self) -> bool:
        """Load both scripts into Redis now (False when it cannot be reached).

        Until a script is loaded its first calls fail with NOSCRIPT and are sent again
        after the calls queued behind them; loaded at start, a :meth:`finish` is
        seen by every later claim of this process.
        """
        return await self._redis.load_scripts(self._claim, self._finish)

    async def claim(self, tenant_id: UUID, request: IdempotentRequest) -> Claim:
        """One round trip: the cached answer, else our lock, else "in use"."""
        token = process_unique_id()  # unique among live locks; no secret needed
        keys = redis_keys(tenant_id, request.key)
        try:
            reply = await self._redis.run_script(self._claim, keys, (token, self._lock_ttl_ms))
        except RedisUnavailable as error:
            FALLBACKS.labels(error.reason).inc()
            return UNAVAILABLE_CLAIM
        kind, entry = int(reply[0]), reply[1]
        if kind == 2:
            return Claim(ClaimOutcome.LOCKED, token=token)
        if kind == 3:
            return Claim(ClaimOutcome.IN_USE)
        assert kind == 1, kind
        try:
            answer = decode_entry(bytes(entry), tenant_id, request.key)
        except InvalidEntry as error:
            logger.warning("idempotency_cache_invalid_entry", error=str(error))
            FALLBACKS.labels("invalid_entry").inc()
            return UNAVAILABLE_CLAIM
        return Claim(ClaimOutcome.REPLAY, answer=answer)

    def finish(
        self,
        tenant_id: UUID,
        request: IdempotentRequest,
        claim: Claim,
        answer: tuple[int, bytes] | None,
    ) -> None:
        """Cache ``answer`` (when given and small enough) and release our lock, if any.

        ``answer`` must be the one PostgreSQL holds for the key: committed, never a
        guess. The call is queued (:meth:`RedisClient.send_script`) and nobody waits for
        it, so the answer can go to the client at once. That is safe because PostgreSQL
        already holds it: a retry of the key from this process is queued behind this
        call, and one that reaches Redis before it (from another worker) finds our lock,
        reads the answer from PostgreSQL and replays it. A failure costs only speed: the
        lock expires by its TTL.
        """
        entry = b""
        if answer is not None and len(answer[1]) <= self._max_body_bytes:
            stored = StoredAnswer(request.method, request.path, request.request_hash, *answer)
            entry = encode_entry(tenant_id, request.key, stored)
        if not entry and not claim.token:
            return
        keys = redis_keys(tenant_id, request.key)
        arguments = (claim.token, entry, self._answer_ttl_ms)
        self._redis.send_script(self._finish, keys, arguments, on_failure=_finish_failed)


def _finish_failed(error: RedisUnavailable) -> None:
    if error.reason != "circuit_open":  # known already; counted by the client
        logger.info("idempotency_cache_finish_failed", reason=error.reason)
