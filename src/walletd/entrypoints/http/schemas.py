"""Request and response models of the HTTP API, one per direction.

Requests are validated here (shape, ranges, currencies, metadata caps); anything that
fails becomes a 422 ``validation_error``. Response models document the wire format in
OpenAPI; the bytes themselves come from :mod:`walletd.entrypoints.http.render`.

Every request model derives from :class:`RequestModel`, which makes its fields strict
JSON types in one place: a boolean takes only ``true``/``false``, an integer only a JSON
integer (no ``1.0``, ``"1"`` or ``true``), a string only a string. FastAPI (and the lean
path) validate the *parsed* body, in pydantic's Python mode, where strict mode would also
refuse the strings that carry UUIDs and timestamps; so :class:`RequestModel` relaxes
exactly those two leaves of its schema to "a string, parsed": a UUID field takes a UUID
string, a timestamp field an RFC 3339 string, and neither a number nor anything else.
Subclasses get this whatever they annotate (``UUID``, ``AwareDatetime``, ``X | None``,
lists of them, nested request models).
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

import orjson
import pycountry
from pydantic import UUID4 as _UUID4  # noqa: F401  (kept for schema consumers)
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    StrictInt,
    StrictStr,
)
from pydantic_core import CoreSchema, PydanticCustomError, core_schema

from walletd.domain.money import MAX_AMOUNT, is_known_currency

METADATA_MAX_BYTES = 16 * 1024
METADATA_MAX_DEPTH = 5
# PostgreSQL text and jsonb cannot hold U+0000: refuse it here (422), not in the database.
NUL_FREE = r"^[^\x00]*$"


def _check_currency(code: str) -> str:
    if not is_known_currency(code):
        raise ValueError(f"unknown currency code {code!r}: expected an ISO 4217 code like EUR")
    return code


def _depth_at_most(value: Any, limit: int) -> bool:
    """True when ``value`` nests objects/arrays at most ``limit`` levels (iterative)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return False
        children = node.values() if isinstance(node, dict) else node
        for child in children:
            if isinstance(child, dict | list):
                stack.append((child, depth + 1))
    return True


def _check_metadata(value: dict[str, Any]) -> dict[str, Any]:
    if not _depth_at_most(value, METADATA_MAX_DEPTH):
        raise ValueError(f"metadata nests deeper than {METADATA_MAX_DEPTH} levels")
    try:
        size = len(orjson.dumps(value))
    except (orjson.JSONEncodeError, TypeError) as error:
        raise ValueError("metadata must be plain JSON") from error
    if size > METADATA_MAX_BYTES:
        raise ValueError(f"metadata is {size} bytes; at most {METADATA_MAX_BYTES} allowed")
    if any("\x00" in text for text in _strings(value)):
        raise ValueError("metadata must not contain NUL (\\u0000) characters")
    return value


def _strings(value: Any) -> list[str]:
    """Every key and string value inside ``value`` (iterative; called on capped input)."""
    found: list[str] = []
    stack: list[Any] = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            found.append(node)
        elif isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return found


Amount = Annotated[StrictInt, Field(ge=1, le=MAX_AMOUNT, description="Minor units, 1..2^63-1")]
NonNegativeAmount = Annotated[StrictInt, Field(ge=0, le=MAX_AMOUNT)]
# Documented as an enum (OpenAPI) so clients and generated tests know the accepted codes.
KNOWN_CURRENCIES = sorted(currency.alpha_3 for currency in pycountry.currencies)
Currency = Annotated[
    StrictStr,
    Field(
        min_length=3, max_length=3, examples=["EUR"], json_schema_extra={"enum": KNOWN_CURRENCIES}
    ),
    AfterValidator(_check_currency),
]
Metadata = Annotated[dict[str, Any], AfterValidator(_check_metadata)]
Reference = Annotated[StrictStr, Field(max_length=255, pattern=NUL_FREE)]


# An RFC 3339 date-time starts with its full date and the "T" (or space) before the time;
# pydantic alone would also read "1700000000" as a Unix time.
RFC3339_START = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]")


def _uuid_string(value: Any) -> Any:
    if isinstance(value, str | UUID):
        return value
    raise PydanticCustomError("uuid_type", "Input should be a UUID string")


def _timestamp_string(value: Any) -> Any:
    if isinstance(value, datetime) or (isinstance(value, str) and RFC3339_START.match(value)):
        return value
    raise PydanticCustomError("datetime_type", "Input should be an RFC 3339 timestamp string")


# Core-schema leaf type → the check that lets only its JSON form (a string) through.
_STRING_LEAVES = {"uuid": _uuid_string, "datetime": _timestamp_string}
# Keys of a core schema that hold no validation schema to relax.
_NOT_SCHEMAS = frozenset({"metadata", "serialization", "config", "cls", "ref", "default"})


def _strings_for_uuids_and_timestamps(schema: Any) -> Any:
    """``schema`` with each strict UUID/datetime leaf taking its string form instead.

    Walks every nested schema (fields, items, choices, definitions, wrapped schemas);
    a leaf already lax (``strict: False``: a nested request model, relaxed when it was
    built) is left as it is.
    """
    if isinstance(schema, list):
        return [_strings_for_uuids_and_timestamps(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    kind = schema.get("type")
    only_strings = _STRING_LEAVES.get(kind) if isinstance(kind, str) else None
    if only_strings is not None and schema.get("strict") is not False:
        relaxed = {**schema, "strict": False}
        return core_schema.no_info_before_validator_function(only_strings, relaxed)
    walked: dict[str, Any] = {}
    for key, value in schema.items():
        if key in _NOT_SCHEMAS and isinstance(kind, str):
            walked[key] = value
        else:  # a schema's parts, or a {field name: field schema} mapping
            walked[key] = _strings_for_uuids_and_timestamps(value)
    return walked


class RequestModel(BaseModel):
    """A request body: strict JSON types, UUIDs and timestamps as strings (see above)."""

    model_config = ConfigDict(extra="ignore", strict=True)

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: type[BaseModel], handler: GetCoreSchemaHandler, /
    ) -> CoreSchema:
        relaxed: CoreSchema = _strings_for_uuids_and_timestamps(handler(source))
        return relaxed


class WalletCreate(RequestModel):
    currency: Currency
    owner_id: Annotated[StrictStr, Field(max_length=255, pattern=NUL_FREE)] | None = None
    overdraft_limit: NonNegativeAmount = 0
    metadata: Metadata = Field(default_factory=dict)


class CreditCreate(RequestModel):
    wallet_id: UUID
    amount: Amount
    currency: Currency
    reference: Reference | None = None
    metadata: Metadata = Field(default_factory=dict)


class DebitCreate(CreditCreate):
    pass


class TransferCreate(RequestModel):
    from_wallet_id: UUID
    to_wallet_id: UUID
    amount: Amount
    currency: Currency
    reference: Reference | None = None
    metadata: Metadata = Field(default_factory=dict)


class TransferBatchCreate(RequestModel):
    transfers: Annotated[list[TransferCreate], Field(min_length=1, max_length=1000)]
    atomic: bool


class ReasonBody(RequestModel):
    reason: Annotated[StrictStr, Field(max_length=1000, pattern=NUL_FREE)] | None = None


class LimitsUpdate(RequestModel):
    max_debit_amount: Amount | None = None
    daily_debit_amount: Amount | None = None
    max_debits_per_minute: Annotated[StrictInt, Field(ge=1, le=1_000_000)] | None = None


class LimitsPublic(BaseModel):
    max_debit_amount: int | None
    daily_debit_amount: int | None
    max_debits_per_minute: int | None


class WalletPublic(BaseModel):
    id: UUID
    currency: str
    owner_id: str | None
    status: Literal["active", "frozen", "closed"]
    balance: int
    held_balance: int
    available_balance: int
    overdraft_limit: int
    version: int
    limits: LimitsPublic
    metadata: dict[str, Any]
    created_at: datetime
    updated_at: datetime


class EntryPublic(BaseModel):
    id: UUID
    transaction_id: UUID
    wallet_id: UUID
    amount: int
    balance_after: int
    wallet_version: int
    created_at: datetime


class TransactionPublic(BaseModel):
    id: UUID
    type: Literal["credit", "debit", "transfer", "capture", "reversal"]
    status: Literal["posted", "pending_review", "rejected"]
    amount: int
    currency: str
    reference: str | None
    metadata: dict[str, Any]
    reverses_transaction_id: UUID | None
    entries: list[EntryPublic]
    created_at: datetime


class WalletList(BaseModel):
    data: list[WalletPublic]
    next_cursor: str | None


class EntryList(BaseModel):
    data: list[EntryPublic]
    next_cursor: str | None


class BalancePublic(BaseModel):
    wallet_id: UUID
    currency: str
    balance: int
    wallet_version: int
    at: datetime


class StatementPublic(BaseModel):
    wallet_id: UUID
    currency: str
    from_: datetime | None = Field(alias="from")
    to: datetime
    opening_balance: int
    closing_balance: int
    total_credits: int
    total_debits: int
    entries: list[EntryPublic]
    next_cursor: str | None


class BatchAtomicPublic(BaseModel):
    data: list[TransactionPublic]


class BatchItemPublic(BaseModel):
    index: int
    status: int
    transaction: TransactionPublic | None
    error: dict[str, Any] | None


class BatchResultsPublic(BaseModel):
    data: list[BatchItemPublic]


class Problem(BaseModel):
    type: str
    title: str
    status: int
    detail: str
    code: str
