"""Amounts, currency codes and the canonical form of the entry hash chain, pinned exactly.

The expected digest was computed outside Python too:
``(head -c 32 /dev/zero; printf '%s' '<canonical line>') | sha256sum``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from uuid import UUID

import pytest

from walletd.domain.hashing import (
    GENESIS_HASH,
    canonical_entry,
    canonical_timestamp,
    chain_hash,
)
from walletd.domain.money import (
    MAX_AMOUNT,
    MAX_BALANCE,
    MIN_BALANCE,
    checked_balance,
    is_known_currency,
)
from walletd.errors import ValidationFailed

ENTRY_FIELDS = {
    "entry_id": UUID("00000000-0000-4000-8000-000000000001"),
    "transaction_id": UUID("00000000-0000-4000-8000-000000000002"),
    "wallet_id": UUID("00000000-0000-4000-8000-000000000003"),
    "currency": "EUR",
    "amount": -2500,
    "balance_after": 7500,
    "wallet_version": 2,
    "created_at": datetime(2026, 11, 24, 12, 0, 0, 123456, tzinfo=UTC),
}
CANONICAL_LINE = (
    b"00000000-0000-4000-8000-000000000001|00000000-0000-4000-8000-000000000002|"
    b"00000000-0000-4000-8000-000000000003|EUR|-2500|7500|2|2026-11-24T12:00:00.123456Z"
)
FIRST_LINK_HEX = "28a44bf4b0ca6489ec20688b2301958be62b3e0bf83eb3767abf9488528d94f0"
SECOND_LINK_HEX = "4d62c85b859aab6e0bc1fce4c3e3c72a161e3a67d69b67985f1b875cbf3b68c6"


@pytest.mark.parametrize("code", ["EUR", "USD", "JPY", "XXX"])
def test_iso_4217_codes_are_known(code: str) -> None:
    assert is_known_currency(code) is True


@pytest.mark.parametrize("code", ["ZZZ", "eur", "Eur", "EU", "EURO", "", "ÉUR", "E1R"])
def test_unknown_or_malformed_codes_are_not_currencies(code: str) -> None:
    assert is_known_currency(code) is False


def test_the_largest_amount_is_the_largest_bigint() -> None:
    assert MAX_AMOUNT == 9_223_372_036_854_775_807
    assert MAX_BALANCE == 9_223_372_036_854_775_807
    assert MIN_BALANCE == -9_223_372_036_854_775_808


@pytest.mark.parametrize("value", [0, -1, 1, MAX_BALANCE, MIN_BALANCE])
def test_a_balance_within_bigint_is_returned_unchanged(value: int) -> None:
    assert checked_balance(value) == value


@pytest.mark.parametrize("value", [MAX_BALANCE + 1, MIN_BALANCE - 1, 2**64])
def test_a_balance_outside_bigint_is_a_validation_error(value: int) -> None:
    with pytest.raises(ValidationFailed) as raised:
        checked_balance(value)
    assert raised.value.detail == "the movement would overflow the balance"
    assert raised.value.code == "validation_error"
    assert raised.value.status == 422


def test_an_overflow_error_names_what_overflowed() -> None:
    with pytest.raises(ValidationFailed) as raised:
        checked_balance(MAX_BALANCE + 1, "held balance")
    assert raised.value.detail == "the movement would overflow the held balance"


def test_canonical_timestamp_is_utc_with_microseconds() -> None:
    moment = datetime(2026, 11, 24, 12, 0, 0, 123456, tzinfo=UTC)
    assert canonical_timestamp(moment) == "2026-11-24T12:00:00.123456Z"


def test_canonical_timestamp_converts_other_offsets_to_utc() -> None:
    paris = timezone(timedelta(hours=1))
    moment = datetime(2026, 11, 25, 0, 30, 0, 5, tzinfo=paris)
    assert canonical_timestamp(moment) == "2026-11-24T23:30:00.000005Z"


def test_canonical_timestamp_keeps_zero_microseconds() -> None:
    moment = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert canonical_timestamp(moment) == "2026-01-02T03:04:05.000000Z"


def test_canonical_entry_is_the_pipe_separated_ascii_line() -> None:
    assert canonical_entry(**ENTRY_FIELDS) == CANONICAL_LINE  # type: ignore[arg-type]


def test_genesis_hash_is_32_zero_bytes() -> None:
    assert GENESIS_HASH == b"\x00" * 32


def test_first_link_is_sha256_of_genesis_and_the_canonical_entry() -> None:
    assert chain_hash(GENESIS_HASH, CANONICAL_LINE).hex() == FIRST_LINK_HEX


def test_each_link_depends_on_the_previous_hash() -> None:
    first = chain_hash(GENESIS_HASH, CANONICAL_LINE)
    assert chain_hash(first, CANONICAL_LINE).hex() == SECOND_LINK_HEX


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("amount", -2501),
        ("balance_after", 7501),
        ("wallet_version", 3),
        ("currency", "USD"),
        ("created_at", datetime(2026, 11, 24, 12, 0, 0, 123457, tzinfo=UTC)),
        ("wallet_id", UUID("00000000-0000-4000-8000-000000000004")),
    ],
)
def test_changing_any_field_changes_the_hash(field: str, value: object) -> None:
    changed = canonical_entry(**{**ENTRY_FIELDS, field: value})  # type: ignore[arg-type]
    assert changed != CANONICAL_LINE
    assert chain_hash(GENESIS_HASH, changed).hex() != FIRST_LINK_HEX


def test_a_previous_hash_of_the_wrong_length_is_refused() -> None:
    with pytest.raises(AssertionError):
        chain_hash(b"\x00" * 31, CANONICAL_LINE)
