"""PostgreSQL access: the connection pool and the unit of work.

A :class:`UnitOfWork` owns one pooled connection and one database transaction;
it rolls back unless :meth:`UnitOfWork.commit` was called. Driver errors that mean
"the database is not reachable right now" become :class:`~walletd.errors.Unavailable`
so that clients get a 503 with ``Retry-After``, never a stack trace.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any

import asyncpg
import orjson

from walletd import jsontext
from walletd.errors import TimedOut, Unavailable

UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.QueryCanceledError,  # statement_timeout
    asyncpg.exceptions.LockNotAvailableError,  # lock_timeout
    asyncpg.exceptions.IdleInTransactionSessionTimeoutError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.InternalClientError,
)


# A bound of the session reached (statement_timeout, lock_timeout): the database is up.
TIMEOUT_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.exceptions.QueryCanceledError,
    asyncpg.exceptions.LockNotAvailableError,
)


async def init_connection(connection: asyncpg.Connection) -> None:
    """What every walletd connection needs: ``jsonb`` as Python values (orjson)."""
    await connection.set_type_codec(
        "jsonb",
        encoder=jsontext.dumps_text,
        decoder=orjson.loads,
        schema="pg_catalog",
        format="text",
    )


async def keep_session(connection: asyncpg.Connection) -> None:
    """Pool release without asyncpg's reset query (one round trip per checkout saved).

    walletd leaves no session state on a pooled connection: its advisory locks are
    transaction-scoped, it sets no session settings, opens cursors only inside
    transactions and LISTENs only on dedicated connections. asyncpg still rolls back a
    transaction left open and drops listeners before calling this.
    """


class Database:
    """The pool of one process; every request borrows a connection for one transaction."""

    def __init__(
        self,
        url: str,
        *,
        min_size: int = 2,
        max_size: int = 20,
        command_timeout_seconds: float = 5.0,
        acquire_timeout_seconds: float = 2.0,
        server_settings: dict[str, str] | None = None,
    ) -> None:
        self.url = url
        self._min_size, self._max_size = min_size, max_size
        self._command_timeout = command_timeout_seconds
        self.acquire_timeout = acquire_timeout_seconds
        self._server_settings = {"application_name": "walletd", **(server_settings or {})}
        self._pool: asyncpg.Pool | None = None

    async def connect(self, *, connect_timeout_seconds: float = 10.0) -> None:
        """Open the pool; raise :class:`Unavailable` naming PostgreSQL when it does not answer."""
        try:
            self._pool = await asyncpg.create_pool(
                self.url,
                min_size=self._min_size,
                max_size=self._max_size,
                command_timeout=self._command_timeout,
                timeout=connect_timeout_seconds,
                init=init_connection,
                reset=keep_session,
                server_settings=self._server_settings,
            )
        except (*UNAVAILABLE_ERRORS, asyncpg.PostgresError) as error:
            raise Unavailable(
                f"PostgreSQL is unreachable at {_redact(self.url)}: {error}"
            ) from error

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise Unavailable("PostgreSQL pool is not open")
        return self._pool

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[asyncpg.Connection]:
        """Borrow a connection without a transaction (reads)."""
        try:
            async with self.pool.acquire(timeout=self.acquire_timeout) as connection:
                yield connection
        except UNAVAILABLE_ERRORS as error:
            raise Unavailable(f"database unavailable: {type(error).__name__}") from error

    def unit_of_work(self) -> UnitOfWork:
        return UnitOfWork(self)

    async def ping(self, timeout_seconds: float = 1.0) -> bool:
        try:
            async with self.pool.acquire(timeout=timeout_seconds) as connection:
                await connection.fetchval("SELECT 1", timeout=timeout_seconds)
            return True
        except (*UNAVAILABLE_ERRORS, asyncpg.PostgresError, Unavailable):
            return False


class UnitOfWork:
    """One connection, one transaction; rolled back unless committed."""

    def __init__(self, database: Database) -> None:
        self._database = database
        self._acquired: Any = None
        self._transaction: Any = None
        self.connection: asyncpg.Connection = None
        self._committed = False

    async def __aenter__(self) -> UnitOfWork:
        try:
            self._acquired = self._database.pool.acquire(timeout=self._database.acquire_timeout)
            self.connection = await self._acquired.__aenter__()
            self._transaction = self.connection.transaction()
            await self._transaction.start()
        except UNAVAILABLE_ERRORS as error:
            await self._release(type(error), error, None)
            raise Unavailable(f"database unavailable: {type(error).__name__}") from error
        return self

    async def commit(self) -> None:
        try:
            await self._transaction.commit()
        except UNAVAILABLE_ERRORS as error:
            raise Unavailable(f"database unavailable at commit: {type(error).__name__}") from error
        self._committed = True

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            if self._transaction is not None and not self._committed:
                with contextlib.suppress(*UNAVAILABLE_ERRORS, asyncpg.PostgresError):
                    await self._transaction.rollback()
        finally:
            await self._release(exc_type, exc, traceback)
        if exc is not None and isinstance(exc, TIMEOUT_ERRORS):
            raise TimedOut(f"the database bounded a wait: {type(exc).__name__}") from exc
        if exc is not None and isinstance(exc, UNAVAILABLE_ERRORS):
            raise Unavailable(f"database unavailable: {type(exc).__name__}") from exc

    async def _release(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._acquired is not None:
            acquired, self._acquired = self._acquired, None
            with contextlib.suppress(*UNAVAILABLE_ERRORS):
                await acquired.__aexit__(exc_type, exc, traceback)


def _redact(url: str) -> str:
    """Hide a password in a URL before it reaches a message."""
    if "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    credentials, host = rest.rsplit("@", 1)
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}@{host}"
