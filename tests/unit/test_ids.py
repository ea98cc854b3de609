"""Identifiers: UUIDv7 ledger ids and process-unique tokens, distinct again after fork."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from uuid import UUID

from hypothesis import given
from hypothesis import strategies as st

from walletd.ids import new_id, process_unique_id, uuid7_int


def test_ids_are_distinct_32_hex_digits() -> None:
    ids = [process_unique_id() for _ in range(10_000)]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"[0-9a-f]{32}", value) for value in ids)


def test_new_ids_are_version_7_rfc_variant_and_distinct() -> None:
    before = time.time_ns() // 1_000_000
    ids = [new_id() for _ in range(20_000)]
    after = time.time_ns() // 1_000_000
    assert len(set(ids)) == len(ids)
    for made in ids[::97]:
        assert isinstance(made, UUID)
        assert made.version == 7
        assert made.variant == "specified in RFC 4122"
        assert UUID(str(made)) == made and hash(made) == hash(UUID(str(made)))
        assert before <= made.int >> 80 <= after


def test_new_ids_sort_by_their_millisecond() -> None:
    first = new_id()
    time.sleep(0.002)
    second = new_id()
    assert first < second and str(first) < str(second)


@given(st.integers(0, 2**48 - 1), st.integers(0, 2**80 - 1))
def test_uuid7_layout(milliseconds: int, random_bits: int) -> None:
    made = UUID(int=uuid7_int(milliseconds, random_bits))
    assert made.version == 7
    assert made.variant == "specified in RFC 4122"
    assert made.int >> 80 == milliseconds
    assert (made.int >> 64) & 0xFFF == (random_bits >> 62) & 0xFFF
    assert made.int & (2**62 - 1) == random_bits & (2**62 - 1)


def _in_child(make: Callable[[], object]) -> str:
    """``make()`` in a forked child, as text."""
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: one value through the pipe, then out without cleanup
        os.write(writer, str(make()).encode())
        os._exit(0)
    os.close(writer)
    value = os.read(reader, 128).decode()
    os.close(reader)
    os.waitpid(pid, 0)
    return value


def test_a_forked_child_takes_a_prefix_of_its_own() -> None:
    parent = process_unique_id()
    child = _in_child(process_unique_id)
    assert len(child) == 32 and child[:20] != parent[:20]


def test_a_forked_child_does_not_reuse_its_parents_random_bytes() -> None:
    new_id()  # the parent has drawn a block and has most of it left
    child = UUID(_in_child(new_id))
    parent_next = new_id()
    # Without a fresh draw the child would take the very bytes the parent takes next.
    assert child.int & (2**62 - 1) != parent_next.int & (2**62 - 1)
