"""Opaque pagination cursors and query-parameter parsing (bad values → 422)."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from uuid import UUID

import orjson

from walletd.errors import ValidationFailed


def encode(value: object) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(value)).decode().rstrip("=")


def decode(cursor: str) -> object:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        return orjson.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
    except (ValueError, orjson.JSONDecodeError, UnicodeEncodeError) as error:
        raise ValidationFailed("cursor: not a cursor this API returned") from error


def version_cursor(cursor: str | None) -> int:
    if cursor is None:
        return 0
    value = decode(cursor)
    if not isinstance(value, dict) or not isinstance(value.get("v"), int) or value["v"] < 0:
        raise ValidationFailed("cursor: not a cursor this API returned")
    version: int = value["v"]
    return version


def wallet_cursor(cursor: str | None) -> tuple[datetime, UUID] | None:
    if cursor is None:
        return None
    value = decode(cursor)
    if not isinstance(value, list) or len(value) != 2:
        raise ValidationFailed("cursor: not a cursor this API returned")
    try:
        return parse_timestamp(str(value[0]), "cursor"), UUID(str(value[1]))
    except ValueError as error:
        raise ValidationFailed("cursor: not a cursor this API returned") from error


def parse_timestamp(text: str | None, name: str) -> datetime:
    """RFC 3339; a timestamp without an offset is taken as UTC."""
    if text is None:
        raise ValidationFailed(f"{name}: a timestamp is required")
    try:
        moment = datetime.fromisoformat(text.strip().replace("z", "Z"))
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return moment.astimezone(UTC)
    except (ValueError, OverflowError) as error:
        raise ValidationFailed(f"{name}: {text!r} is not an RFC 3339 timestamp") from error


def optional_timestamp(text: str | None, name: str) -> datetime | None:
    return None if text is None else parse_timestamp(text, name)
