"""Amounts and currencies: integers of a currency's minor unit, ISO 4217 codes.

Balances are PostgreSQL ``bigint``; every sum is checked against that range so
that an overflow is a validation error, never a wrapped or truncated number.
"""

from __future__ import annotations

from functools import lru_cache

import pycountry

from walletd.errors import ValidationFailed

MIN_AMOUNT = 1
MAX_AMOUNT = 2**63 - 1
MIN_BALANCE = -(2**63)
MAX_BALANCE = 2**63 - 1


@lru_cache(maxsize=512)
def is_known_currency(code: str) -> bool:
    """True for an active ISO 4217 alphabetic code such as ``EUR``."""
    if len(code) != 3 or not code.isascii() or not code.isupper():
        return False
    return pycountry.currencies.get(alpha_3=code) is not None


def checked_balance(value: int, what: str = "balance") -> int:
    """Return ``value`` when it fits a bigint balance, else raise a validation error."""
    if value < MIN_BALANCE or value > MAX_BALANCE:
        raise ValidationFailed(f"the movement would overflow the {what}")
    return value
