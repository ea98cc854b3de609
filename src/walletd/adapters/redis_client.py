"""The process's Redis client: hard timeouts, no hidden retries, and a circuit breaker.

Redis is only ever a fast path in walletd, so a call must fail fast rather than wait:
every call is bounded by ``timeout_seconds`` (socket timeouts *and* an asyncio deadline
around the whole call), redis-py's own retries are off, and after
``failure_threshold`` consecutive connection failures or timeouts the breaker opens for
``open_seconds``: calls fail at once (no network), then one probe call is let through.
A dead Redis therefore costs at most one timeout per ``open_seconds`` instead of one
per request. Redis returning is noticed by that probe; redis-py reconnects by itself.

Callers (idempotency, rate limiting, counters) catch :class:`RedisUnavailable`, whose
``reason`` is a short, bounded label fit for a metric.

Lua scripts run through :meth:`RedisClient.run_script` are *batched*: calls made while a
round trip is in flight wait for it to end and then travel together as one pipeline
(one write on one pooled connection, one deadline and one breaker verdict for all of
them). Under load most requests share a round trip; alone, a call costs what it did
before. A call whose reply nobody needs goes through :meth:`RedisClient.send_script`:
it is queued the same way, in order with the others, but its caller does not wait for
it; :meth:`flush` waits for what is queued, and :meth:`close` sends it (bounded by the
timeout) before it closes. Calls reach Redis in the order they were queued, except a
call of a script Redis does not have (after a restart or ``SCRIPT FLUSH``): it fails
with NOSCRIPT and is sent again once the script is loaded, after the calls that
followed it (:meth:`load_scripts` loads them up front).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeVar

from prometheus_client import Counter, Gauge, Histogram
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

T = TypeVar("T")
UnavailableReason = Literal["circuit_open", "timeout", "connection", "error"]

DEFAULT_MAX_CONNECTIONS: Final = 64
DEFAULT_FAILURE_THRESHOLD: Final = 3
DEFAULT_OPEN_SECONDS: Final = 2.0
MAX_OPEN_SECONDS: Final = 300.0
MAX_SCRIPT_BATCH: Final = 256

REDIS_CALL_FAILURES = Counter(
    "walletd_redis_call_failures",
    "Redis calls that failed or were refused by the open circuit breaker.",
    ["reason"],
)
REDIS_SCRIPT_BATCH = Histogram(
    "walletd_redis_script_batch_size",
    "Lua script calls sent to Redis together in one pipeline.",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
REDIS_CIRCUIT_OPEN = Gauge(
    "walletd_redis_circuit_open",
    "1 while the Redis circuit breaker of this process is open, else 0.",
    multiprocess_mode="max",
)


class RedisUnavailable(Exception):
    """Redis could not serve this call; the caller takes its slower, safe path."""

    def __init__(self, reason: UnavailableReason, detail: str) -> None:
        super().__init__(f"redis {reason}: {detail}")
        self.reason: UnavailableReason = reason


class CircuitBreaker:
    """Consecutive-failure breaker: closed → open (for ``open_seconds``) → one probe → …

    Single event loop, no threads: the state needs no lock.
    """

    def __init__(
        self,
        failure_threshold: int = DEFAULT_FAILURE_THRESHOLD,
        open_seconds: float = DEFAULT_OPEN_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        assert 1 <= failure_threshold <= 1000
        assert 0 < open_seconds <= MAX_OPEN_SECONDS
        self._threshold = failure_threshold
        self._open_seconds = open_seconds
        self._clock = clock
        self._failures = 0
        self._open_until: float | None = None
        self._probing = False

    @property
    def is_open(self) -> bool:
        return self._open_until is not None

    def allow(self) -> bool:
        """May a call go to Redis now? When open, lets exactly one probe through per period."""
        if self._open_until is None:
            return True
        if self._probing or self._clock() < self._open_until:
            return False
        self._probing = True
        return True

    def record_success(self) -> None:
        self._failures = 0
        self._open_until = None
        self._probing = False
        REDIS_CIRCUIT_OPEN.set(0)

    def record_failure(self) -> None:
        self._probing = False
        self._failures = min(self._failures + 1, self._threshold)
        if self._open_until is not None or self._failures >= self._threshold:
            self._open_until = self._clock() + self._open_seconds
            REDIS_CIRCUIT_OPEN.set(1)

    def abandon_probe(self) -> None:
        """A call ended without a verdict (cancelled): let the next caller probe."""
        self._probing = False


@dataclass(slots=True)
class _ScriptCall:
    script: AsyncScript
    keys: Sequence[str]
    args: Sequence[Any]
    reply: asyncio.Future[Any]


async def _run_pipeline(
    calls: Sequence[_ScriptCall], redis: Redis, connection: AbstractConnection
) -> list[Any]:
    """Every call's reply (or its error), in order; scripts Redis forgot are loaded again."""
    replies = await _evalsha_all(connection, calls)
    missing = [n for n, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
    if missing:  # a restarted or flushed Redis: load the scripts, run those calls once more
        await _load(redis, {id(calls[n].script): calls[n].script for n in missing}.values())
        again = await _evalsha_all(connection, [calls[n] for n in missing])
        for n, reply in zip(missing, again, strict=True):
            replies[n] = reply
    return replies


async def _load(redis: Redis, scripts: Iterable[AsyncScript]) -> None:
    for script in scripts:
        script.sha = await redis.script_load(script.script)


async def _evalsha_all(connection: AbstractConnection, calls: Sequence[_ScriptCall]) -> list[Any]:
    """EVALSHA every call on the scripts' connection: one write, then a read per reply.

    redis-py's pipeline object is skipped on purpose: its per-command bookkeeping and
    a deadline per reply cost more CPU than the calls themselves. :meth:`RedisClient.call`
    bounds the whole exchange instead. A connection left mid-exchange (an error, the
    deadline) is closed, never reused with replies still in flight; the next batch
    opens it again.
    """
    try:
        await connection.send_packed_command(_evalsha_commands(calls), check_health=False)
        replies: list[Any] = []
        for _ in calls:
            try:
                replies.append(await connection.read_response(timeout=math.inf))
            except ResponseError as error:  # this call's own error (NOSCRIPT, a script error)
                replies.append(error)
    except BaseException:
        await connection.disconnect(nowait=True)
        raise
    return replies


def _evalsha_commands(calls: Sequence[_ScriptCall]) -> bytes:
    """The calls in the Redis protocol (RESP): arrays of bulk strings, back to back."""
    out = bytearray()
    for call in calls:
        out += b"*%d\r\n$7\r\nEVALSHA\r\n" % (3 + len(call.keys) + len(call.args))
        for part in (call.script.sha, len(call.keys), *call.keys, *call.args):
            data = _bulk(part)
            out += b"$%d\r\n%s\r\n" % (len(data), data)
    return bytes(out)


def _bulk(value: Any) -> bytes:
    """One argument as Redis receives it: text as UTF-8, numbers in decimal (as redis-py)."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, int) and not isinstance(value, bool):
        return b"%d" % value
    if isinstance(value, float):
        return repr(value).encode()
    raise TypeError(f"a script argument must be bytes, str or a number, not {type(value).__name__}")


class RedisClient:
    """One pooled Redis connection set per process, used through :meth:`call`."""

    def __init__(
        self,
        url: str,
        *,
        timeout_seconds: float,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        assert 0 < timeout_seconds <= 10
        assert 1 <= max_connections <= 10_000
        self.timeout_seconds = timeout_seconds
        self.breaker = breaker or CircuitBreaker()
        pool = BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=timeout_seconds,  # waiting for a free pooled connection is bounded too
            socket_timeout=timeout_seconds,
            socket_connect_timeout=timeout_seconds,
            retry_on_timeout=False,
            retry=Retry(NoBackoff(), 0),  # redis-py would otherwise retry 10 times
        )
        self._redis: Redis = Redis.from_pool(pool)
        self._queued: list[_ScriptCall] = []
        self._draining: asyncio.Task[None] | None = None
        # Batches go one at a time (one drain task), so they share one connection.
        self._scripts_connection: AbstractConnection | None = None

    def script(self, source: str) -> AsyncScript:
        """A Lua script run by EVALSHA (loaded again by itself after a Redis restart)."""
        return self._redis.register_script(source)

    async def run_script(
        self, script: AsyncScript, keys: Sequence[str], args: Sequence[Any]
    ) -> Any:
        """EVALSHA ``script``, batched with the other calls of this moment (module docstring).

        Raises :class:`RedisUnavailable` like :meth:`call`; a script error fails only
        its own call, with reason ``error``.
        """
        return await self._enqueue(script, keys, args)

    def send_script(
        self,
        script: AsyncScript,
        keys: Sequence[str],
        args: Sequence[Any],
        on_failure: Callable[[RedisUnavailable], None],
    ) -> None:
        """Queue an EVALSHA like :meth:`run_script` without waiting for its reply.

        Calls of this process reach Redis in the order they were queued (module
        docstring), so a later call sees this one's effect. ``on_failure`` hears of a
        failed call.
        """

        def settled(reply: asyncio.Future[Any]) -> None:
            if reply.cancelled():
                return
            error = reply.exception()
            if isinstance(error, RedisUnavailable):
                on_failure(error)

        self._enqueue(script, keys, args).add_done_callback(settled)

    def _enqueue(
        self, script: AsyncScript, keys: Sequence[str], args: Sequence[Any]
    ) -> asyncio.Future[Any]:
        reply: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queued.append(_ScriptCall(script, keys, args, reply))
        if self._draining is None:
            self._draining = asyncio.create_task(self._drain(), name="walletd-redis-scripts")
        return reply

    async def _drain(self) -> None:
        """Send the queued calls, a pipeline at a time, until none is left."""
        batch: list[_ScriptCall] = []
        try:
            while self._queued:
                batch = self._queued[:MAX_SCRIPT_BATCH]
                del self._queued[:MAX_SCRIPT_BATCH]
                REDIS_SCRIPT_BATCH.observe(len(batch))
                try:
                    replies = await self.call(functools.partial(self._send_batch, batch))
                except RedisUnavailable as error:
                    replies = [error] * len(batch)
                for call, reply in zip(batch, replies, strict=True):
                    if call.reply.done():  # its caller gave up (cancelled)
                        continue
                    if isinstance(reply, RedisUnavailable):
                        call.reply.set_exception(reply)
                    elif isinstance(reply, RedisError):
                        REDIS_CALL_FAILURES.labels("error").inc()
                        detail = f"{type(reply).__name__}: {reply}"
                        call.reply.set_exception(RedisUnavailable("error", detail))
                    else:
                        call.reply.set_result(reply)
                batch = []
        finally:
            self._draining = None
            # Cancelled mid-flight (shutdown): nobody may wait forever.
            for call in (*batch, *self._queued):
                if not call.reply.done():
                    call.reply.set_exception(RedisUnavailable("connection", "client stopped"))
            self._queued.clear()

    async def _send_batch(self, batch: Sequence[_ScriptCall], redis: Redis) -> list[Any]:
        if self._scripts_connection is None:
            pool = redis.connection_pool
            self._scripts_connection = await pool.get_connection()  # type: ignore[no-untyped-call]
        return await _run_pipeline(batch, redis, self._scripts_connection)

    async def call(self, operation: Callable[[Redis], Awaitable[T]]) -> T:
        """Run ``operation`` within the deadline; raise :class:`RedisUnavailable` on failure."""
        if not self.breaker.allow():
            REDIS_CALL_FAILURES.labels("circuit_open").inc()
            raise RedisUnavailable("circuit_open", "circuit breaker open")
        verdict = False
        try:
            async with asyncio.timeout(self.timeout_seconds):
                result = await operation(self._redis)
            verdict = True
            self.breaker.record_success()
            return result
        except (TimeoutError, RedisTimeoutError) as error:
            verdict = True
            raise self._failed("timeout", error) from error
        except (RedisConnectionError, OSError) as error:
            verdict = True
            raise self._failed("connection", error) from error
        except RedisError as error:
            # Redis answered (e.g. a script or type error): it is alive, the call is not.
            verdict = True
            self.breaker.record_success()
            REDIS_CALL_FAILURES.labels("error").inc()
            raise RedisUnavailable("error", f"{type(error).__name__}: {error}") from error
        finally:
            if not verdict:
                self.breaker.abandon_probe()

    def _failed(self, reason: UnavailableReason, error: BaseException) -> RedisUnavailable:
        self.breaker.record_failure()
        REDIS_CALL_FAILURES.labels(reason).inc()
        return RedisUnavailable(reason, f"{type(error).__name__}: {error}")

    async def load_scripts(self, *scripts: AsyncScript) -> bool:
        """SCRIPT LOAD each of ``scripts``; False when Redis cannot be reached (never raises)."""

        try:
            await self.call(functools.partial(_load, scripts=scripts))
        except RedisUnavailable:
            return False
        return True

    async def ping(self) -> bool:
        """True when Redis answers PING within the deadline (never raises)."""
        try:
            return bool(await self.call(lambda redis: redis.ping()))
        except RedisUnavailable:
            return False

    async def flush(self) -> None:
        """Wait (within the timeout) until every call queued so far has been sent."""
        if self._draining is not None:
            await asyncio.wait({self._draining}, timeout=self.timeout_seconds)

    async def close(self) -> None:
        """Send the calls still queued (within the timeout), then close the connections."""
        await self.flush()
        if self._draining is not None:
            self._draining.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._draining
        if self._scripts_connection is not None:
            await self._redis.connection_pool.release(self._scripts_connection)
            self._scripts_connection = None
        await self._redis.aclose()


def create_redis_client(
    url: str, *, timeout_seconds: float, max_connections: int = DEFAULT_MAX_CONNECTIONS
) -> RedisClient:
    """The shared client of one process; creating it does not connect (no I/O)."""
    return RedisClient(url, timeout_seconds=timeout_seconds, max_connections=max_connections)
