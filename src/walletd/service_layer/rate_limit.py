"""Rate limiting per API key: a token bucket in Redis, one atomic Lua script per request.

Each key earns ``WALLETD_RATE_LIMIT_PER_SECOND`` tokens a second up to
``WALLETD_RATE_LIMIT_BURST`` (0 = one second's worth); a request spends one, and a key
with none left gets 429 ``rate_limited`` with ``Retry-After``. 0 per second (the default)
turns it off. It runs right after authentication (:func:`deps.get_principal`), before
any handler or idempotency work, so a 429 is never stored under an Idempotency-Key. The
composition root (:mod:`walletd.entrypoints.bootstrap`) builds the one limiter of a process.

Redis is the shared state of every worker. When Redis cannot answer (down, slow,
circuit open, or not configured) the limiter *fails open*: the request goes through
and ``walletd_rate_limit_decisions_total{outcome="fail_open"}`` counts it — a limiter
outage must not become an API outage. See docs/security.md.
"""

from __future__ import annotations

import math
import time
from typing import Final
from uuid import UUID

import structlog
from prometheus_client import Counter
from redis.commands.core import AsyncScript

from walletd.adapters.redis_client import RedisClient, RedisUnavailable
from walletd.errors import RateLimited

KEY_PREFIX: Final = "walletd:ratelimit:"
MAX_RETRY_AFTER_SECONDS: Final = 3600
FAIL_OPEN_LOG_INTERVAL_SECONDS: Final = 10.0  # one warning per interval, not one per request

# KEYS[1] the bucket; ARGV[1] tokens per second, ARGV[2] capacity.
# Returns {1, 0} when a token was taken, else {0, milliseconds until one is available}.
# Time comes from the Redis server, so workers on different hosts share one clock.
BUCKET_SCRIPT_LUA: Final = """
local rate = tonumber(ARGV[1])
local capacity = tonumber(ARGV[2])
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at_ms')
local tokens = tonumber(state[1])
local at_ms = tonumber(state[2])
if tokens == nil or at_ms == nil then
  tokens = capacity
  at_ms = now_ms
end
local elapsed_ms = math.max(0, now_ms - at_ms)
tokens = math.min(capacity, tokens + elapsed_ms * rate / 1000)
local allowed = 0
local wait_ms = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
else
  wait_ms = math.ceil((1 - tokens) * 1000 / rate)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at_ms', tostring(now_ms))
redis.call('PEXPIRE', KEYS[1], math.ceil(capacity * 1000 / rate) + 1000)
return {allowed, wait_ms}
"""

RATE_LIMIT_DECISIONS = Counter(
    "walletd_rate_limit_decisions",
    "Rate-limit decisions: allowed, limited (429), or fail_open (Redis could not answer).",
    ["outcome"],
)

logger = structlog.get_logger("walletd.rate_limit")


class RateLimiter:
    """The token bucket of every API key, kept in one Redis (or none: always fail open)."""

    def __init__(self, redis: RedisClient | None, per_second: int, burst: int) -> None:
        assert per_second >= 1
        assert burst >= 0
        self.redis = redis
        self.per_second = per_second
        self.capacity = burst or per_second
        self._script: AsyncScript | None = None
        self._warned_at = -FAIL_OPEN_LOG_INTERVAL_SECONDS
        if redis is not None:
            self._script = redis.script(BUCKET_SCRIPT_LUA)

    async def check(self, key_id: UUID) -> None:
        """Take one token for ``key_id``; raise :class:`RateLimited` when there is none."""
        if self.redis is None or self._script is None:
            RATE_LIMIT_DECISIONS.labels("fail_open").inc()
            return
        bucket = f"{KEY_PREFIX}{key_id}"
        try:  # batched with the other script calls of this moment (idempotency claims, …)
            reply = await self.redis.run_script(
                self._script, (bucket,), (self.per_second, self.capacity)
            )
        except RedisUnavailable as error:
            RATE_LIMIT_DECISIONS.labels("fail_open").inc()
            now = time.monotonic()
            if now - self._warned_at >= FAIL_OPEN_LOG_INTERVAL_SECONDS:
                self._warned_at = now
                logger.warning("rate_limit_fail_open", reason=error.reason)
            return
        allowed, wait_ms = int(reply[0]), int(reply[1])
        assert allowed in (0, 1)
        assert wait_ms >= 0
        if allowed:
            RATE_LIMIT_DECISIONS.labels("allowed").inc()
            return
        RATE_LIMIT_DECISIONS.labels("limited").inc()
        retry_after = min(max(1, math.ceil(wait_ms / 1000)), MAX_RETRY_AFTER_SECONDS)
        raise RateLimited(
            f"this API key is limited to {self.per_second} requests per second"
            f" (burst {self.capacity}); retry in {retry_after} s",
            retry_after_seconds=retry_after,
        )
