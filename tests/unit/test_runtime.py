"""Process-unique ids: distinct, fixed-format, and distinct again in a forked child."""

from __future__ import annotations

import os
import re

from walletd.runtime import process_unique_id


def test_ids_are_distinct_32_hex_digits() -> None:
    ids = [process_unique_id() for _ in range(10_000)]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"[0-9a-f]{32}", value) for value in ids)


def test_a_forked_child_takes_a_prefix_of_its_own() -> None:
    parent = process_unique_id()
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: one id through the pipe, then out without cleanup
        os.write(writer, process_unique_id().encode())
        os._exit(0)
    os.close(writer)
    child = os.read(reader, 64).decode()
    os.close(reader)
    os.waitpid(pid, 0)
    assert len(child) == 32 and child[:20] != parent[:20]
