"""Identifiers made in-process, without a system call per id.

:func:`new_id` gives the ids of the rows walletd makes (wallets, transactions, entries,
holds, events, tenants, API keys): UUIDv7 (RFC 9562), a 48-bit millisecond timestamp
then 74 random bits. The rows of a moment sit next to each other in every index on
their id, so PostgreSQL appends to the right edge of its B-trees instead of touching a
random page per insert. The random bits come from ``os.urandom`` in 4 KiB draws; a
forked child drops its parent's unused bytes.

:func:`process_unique_id` gives request ids and Redis lock tokens, which need
uniqueness, not secrecy: a random prefix per process (renewed in a forked child), then
a counter.
"""

from __future__ import annotations

import itertools
import os
import secrets
import time
from uuid import UUID, SafeUUID

_DRAW_BYTES = 4096
_RANDOM_BYTES = 10  # 80 bits drawn per id: 12 for rand_a, 62 for rand_b, 6 unused
_VERSION_7 = 0x7 << 76
_VARIANT_RFC = 0b10 << 62
_RAND_B_MASK = (1 << 62) - 1


class _RandomPool:
    """Random bytes drawn from the OS in blocks; emptied in a forked child."""

    def __init__(self) -> None:
        self._block = b""
        self._at = 0

    def take(self, size: int) -> bytes:
        if self._at + size > len(self._block):
            self._block, self._at = os.urandom(_DRAW_BYTES), 0
        start = self._at
        self._at = start + size
        return self._block[start : self._at]

    def forget(self) -> None:
        self._block, self._at = b"", 0


_random = _RandomPool()


def uuid7_int(milliseconds: int, random_bits: int) -> int:
    """The 128-bit value of a UUIDv7 from a Unix time in ms and 74+ random bits."""
    rand_a = (random_bits >> 62) & 0xFFF
    return (
        (milliseconds & 0xFFFF_FFFF_FFFF) << 80
        | _VERSION_7
        | rand_a << 64
        | _VARIANT_RFC
        | (random_bits & _RAND_B_MASK)
    )


def new_id() -> UUID:
    """A fresh UUIDv7 (time-ordered to the millisecond, random below)."""
    value = uuid7_int(time.time_ns() // 1_000_000, int.from_bytes(_random.take(_RANDOM_BYTES)))
    # What UUID(int=value) does, without its argument checks (value is in range).
    made = object.__new__(UUID)
    object.__setattr__(made, "int", value)
    object.__setattr__(made, "is_safe", SafeUUID.unknown)
    return made


class _ProcessUniqueIds:
    """A random prefix per process (renewed in a forked child), then a counter."""

    def __init__(self) -> None:
        self.renew()

    def renew(self) -> None:
        self._prefix = secrets.token_hex(10)
        self._counter = itertools.count()

    def __call__(self) -> str:
        return f"{self._prefix}{next(self._counter) & 0xFFFFFFFFFFFF:012x}"


process_unique_id = _ProcessUniqueIds()
"""32 hex digits: 80 random bits for the process, 48 bits of counter."""


def _after_fork_in_child() -> None:
    _random.forget()
    process_unique_id.renew()


os.register_at_fork(after_in_child=_after_fork_in_child)
