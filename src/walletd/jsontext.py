"""JSON as walletd writes it: orjson, with ids of any origin as canonical text.

orjson writes a ``uuid.UUID`` natively, faster than ``str()``; asyncpg hands back ids of
its own ``UUID`` type, which orjson does not know, so :func:`dumps` turns those (and any
other ``UUID`` subclass) into the same canonical text.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

import orjson


def dumps(value: Any) -> bytes:
    """``value`` as compact JSON bytes; ids as ``"xxxxxxxx-xxxx-…"``."""
    return orjson.dumps(value, default=_default)


def dumps_text(value: Any) -> str:
    """:func:`dumps`, as text (for ``jsonb`` parameters)."""
    return dumps(value).decode()


def _default(value: object) -> str:
    if isinstance(value, UUID):
        return str(value)
    raise TypeError(f"Type is not JSON serializable: {type(value).__name__}")
