"""Ids reach JSON as canonical text, whether made here or read back by asyncpg."""

from __future__ import annotations

import uuid

import orjson
import pytest
from asyncpg.pgproto.pgproto import UUID as AsyncpgUUID

from walletd import jsontext


def test_ids_of_both_origins_are_written_as_the_same_canonical_text() -> None:
    made = uuid.uuid4()
    read_back = AsyncpgUUID(made.bytes)
    body = {"made": made, "read_back": read_back, "nested": [made], "none": None}
    assert orjson.loads(jsontext.dumps(body)) == {
        "made": str(made),
        "read_back": str(made),
        "nested": [str(made)],
        "none": None,
    }
    assert jsontext.dumps_text([read_back]) == f'["{made}"]'


def test_other_unknown_types_are_still_refused() -> None:
    with pytest.raises(TypeError, match="not JSON serializable: object"):
        jsontext.dumps({"value": object()})
