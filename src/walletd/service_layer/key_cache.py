"""The API-key cache of one process: each secret is looked up at most once at a time.

A principal is cached for :data:`AUTH_CACHE_SECONDS`. In the last second of that, the
first caller starts one lookup in the background, so a key in steady use never expires
under its requests (which would all look it up at once); a key found revoked is dropped
at once, so a revocation reaches every process within the cache time.
"""

from __future__ import annotations

import asyncio
import functools
import time

from walletd.adapters.postgres import Database
from walletd.errors import Unauthorized
from walletd.service_layer import tenants
from walletd.service_layer.tenants import Principal

AUTH_CACHE_SECONDS = 5.0
# A cached key in use is looked up again in the background this long before it expires.
AUTH_REFRESH_SECONDS = 1.0
AUTH_CACHE_MAX = 10_000


class KeyCache:
    """Principals by secret, for one process."""

    def __init__(self, database: Database) -> None:
        self._database = database
        self._cache: dict[str, tuple[float, Principal]] = {}
        self._lookups: dict[str, asyncio.Task[Principal]] = {}

    def cached_principal(self, secret: str) -> Principal | None:
        """The principal of ``secret`` if it was authenticated in the cache time."""
        cached = self._cache.get(secret)
        if cached is None:
            return None
        expires, principal = cached
        now = time.monotonic()
        if now >= expires:
            return None
        if now >= expires - AUTH_REFRESH_SECONDS and secret not in self._lookups:
            self._look_up(secret)
        return principal

    def expiry(self, secret: str) -> float | None:
        """When the cached principal of ``secret`` expires (monotonic clock), if cached."""
        cached = self._cache.get(secret)
        return None if cached is None else cached[0]

    def set_expiry(self, secret: str, expires: float) -> None:
        """Move a cached principal's expiry (tests of the refresh use it)."""
        _, principal = self._cache[secret]
        self._cache[secret] = (expires, principal)

    async def authenticate(self, secret: str) -> Principal:
        """The caller of ``secret``: cached, else one database lookup per secret at a time."""
        cached = self.cached_principal(secret)
        if cached is not None:
            return cached
        lookup = self._lookups.get(secret) or self._look_up(secret)
        return await asyncio.shield(lookup)

    def _look_up(self, secret: str) -> asyncio.Task[Principal]:
        lookup = asyncio.get_running_loop().create_task(self._read_key(secret))
        self._lookups[secret] = lookup
        lookup.add_done_callback(functools.partial(self._looked_up, secret))
        return lookup

    async def _read_key(self, secret: str) -> Principal:
        now = time.monotonic()
        async with self._database.connection() as connection:
            principal = await tenants.authenticate(connection, secret)
        if len(self._cache) >= AUTH_CACHE_MAX:
            self._cache.clear()
        self._cache[secret] = (now + AUTH_CACHE_SECONDS, principal)
        return principal

    def _looked_up(self, secret: str, lookup: asyncio.Task[Principal]) -> None:
        self._lookups.pop(secret, None)
        if not lookup.cancelled() and isinstance(lookup.exception(), Unauthorized):
            self._cache.pop(secret, None)  # revoked meanwhile
