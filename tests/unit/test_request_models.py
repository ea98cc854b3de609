"""Request bodies take strict JSON types: the models, validated as FastAPI validates them.

FastAPI (and the lean posting path) validate the parsed JSON body in pydantic's Python
mode; these tests do the same, from ``orjson.loads`` of the raw text.
"""

from __future__ import annotations

import typing
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import orjson
import pytest
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError

from walletd.entrypoints.http import routes_admin, routes_holds, routes_money, routes_wallets
from walletd.entrypoints.http.routes_holds import HoldCapture, HoldCreate, ReverseBody
from walletd.entrypoints.http.schemas import (
    CreditCreate,
    DebitCreate,
    LimitsUpdate,
    ReasonBody,
    RequestModel,
    TransferBatchCreate,
    TransferCreate,
    WalletCreate,
)
from walletd.entrypoints.http.schemas_admin import RiskRuleIn, RiskRulesPut

PAYER = "0190a1b2-3c4d-7e5f-8a6b-7c8d9e0f1a2b"
PAYEE = "0190a1b2-3c4d-7e5f-8a6b-7c8d9e0f1a2c"
TRANSFER: dict[str, Any] = {
    "from_wallet_id": PAYER,
    "to_wallet_id": PAYEE,
    "amount": 10,
    "currency": "EUR",
}
RULE: dict[str, Any] = {
    "name": "big",
    "type": "amount_at_least",
    "params": {"amount": 1_000, "currency": "EUR"},
    "action": "review",
}
# A valid body of each model, the base that every bad case below changes in one field.
VALID: dict[type[RequestModel], dict[str, Any]] = {
    WalletCreate: {"currency": "EUR", "owner_id": "o-1", "overdraft_limit": 5, "metadata": {}},
    CreditCreate: {"wallet_id": PAYER, "amount": 10, "currency": "EUR", "reference": "r"},
    TransferCreate: TRANSFER,
    TransferBatchCreate: {"transfers": [TRANSFER], "atomic": True},
    ReasonBody: {"reason": "checked"},
    LimitsUpdate: {"max_debit_amount": 5, "daily_debit_amount": 9, "max_debits_per_minute": 3},
    HoldCreate: {
        "wallet_id": PAYER,
        "amount": 10,
        "currency": "EUR",
        "expires_at": "2036-11-24T12:00:00.123456Z",
    },
    HoldCapture: {"amount": 5, "to_wallet_id": PAYEE},
    ReverseBody: {"reason": "duplicate"},
    RiskRuleIn: RULE,
    RiskRulesPut: {"rules": [RULE]},
}


def from_json(model: type[BaseModel], body: Any) -> BaseModel:
    """Validate ``body`` as it reaches the model over HTTP: encoded, then parsed."""
    return model.model_validate(orjson.loads(orjson.dumps(body)))


def _models_in(annotation: Any) -> Iterator[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
        for field in annotation.model_fields.values():
            yield from _models_in(field.annotation)
    for argument in typing.get_args(annotation):
        yield from _models_in(argument)


def body_models() -> set[type[BaseModel]]:
    """Every model a route validates a request body with, nested ones included."""
    found: set[type[BaseModel]] = set()
    for module in (routes_wallets, routes_money, routes_holds, routes_admin):
        for route in module.router.routes:
            assert isinstance(route, APIRoute)
            for param in route.dependant.body_params:
                found.update(_models_in(param.field_info.annotation))
    return found


def test_every_request_body_model_is_a_strict_request_model() -> None:
    models = body_models()
    assert models == set(VALID) | {DebitCreate}
    for model in models:
        assert issubclass(model, RequestModel), model
        assert model.model_config.get("strict") is True, model


@pytest.mark.parametrize("model", list(VALID), ids=lambda model: model.__name__)
def test_valid_bodies_are_accepted(model: type[RequestModel]) -> None:
    from_json(model, VALID[model])


def test_uuid_and_timestamp_strings_are_parsed() -> None:
    hold = from_json(HoldCreate, VALID[HoldCreate])
    assert isinstance(hold, HoldCreate)
    assert hold.wallet_id == UUID(PAYER)
    assert hold.expires_at == datetime(2036, 11, 24, 12, 0, 0, 123456, tzinfo=UTC)
    batch = from_json(TransferBatchCreate, VALID[TransferBatchCreate])
    assert isinstance(batch, TransferBatchCreate)
    assert batch.atomic is True
    assert batch.transfers[0].to_wallet_id == UUID(PAYEE)
    offset = from_json(HoldCreate, {**VALID[HoldCreate], "expires_at": "2036-11-24T13:00:00+01:00"})
    assert isinstance(offset, HoldCreate)
    assert offset.expires_at == datetime(2036, 11, 24, 12, 0, tzinfo=UTC)


def test_python_callers_may_still_pass_uuid_and_datetime_objects() -> None:
    at = datetime(2036, 11, 24, 12, 0, tzinfo=UTC)
    hold = HoldCreate(wallet_id=UUID(PAYER), amount=1, currency="EUR", expires_at=at)
    assert (hold.wallet_id, hold.expires_at) == (UUID(PAYER), at)
    assert HoldCapture().to_wallet_id is None


NOT_BOOLEANS: list[Any] = ["yes", "true", "false", 1, 0, 1.0, None, [], {}]
NOT_INTEGERS: list[Any] = [10.0, 1.5, "10", True, False, [], {}]
NOT_STRINGS: list[Any] = [978, 1.0, True, [], {}]
NOT_UUIDS: list[Any] = [1, 1.0, True, [], {}, "nope", PAYER[:-1]]
NOT_TIMESTAMPS: list[Any] = [
    2_000_000_000,
    2_000_000_000.5,
    "2000000000",
    True,
    [],
    "2036-11-24",
    "2036-11-24T12:00:00",  # no offset: the zone is unknown
    "tomorrow",
]


def bad_cases() -> Iterator[Any]:
    """(model, body) pairs that differ from a valid body in one field's JSON type."""
    changes: list[tuple[type[RequestModel], str, list[Any]]] = [
        (TransferBatchCreate, "atomic", NOT_BOOLEANS),
        (TransferCreate, "amount", NOT_INTEGERS),
        (CreditCreate, "amount", NOT_INTEGERS),
        (WalletCreate, "overdraft_limit", NOT_INTEGERS),
        (LimitsUpdate, "max_debit_amount", NOT_INTEGERS),
        (LimitsUpdate, "max_debits_per_minute", NOT_INTEGERS),
        (HoldCreate, "amount", NOT_INTEGERS),
        (HoldCapture, "amount", NOT_INTEGERS),
        (WalletCreate, "currency", NOT_STRINGS),
        (WalletCreate, "owner_id", NOT_STRINGS),
        (CreditCreate, "reference", NOT_STRINGS),
        (ReasonBody, "reason", NOT_STRINGS),
        (ReverseBody, "reason", NOT_STRINGS),
        (RiskRuleIn, "name", NOT_STRINGS),
        (RiskRuleIn, "type", NOT_STRINGS),
        (RiskRuleIn, "action", NOT_STRINGS),
        (WalletCreate, "metadata", [[], "x", 1, True]),
        (CreditCreate, "wallet_id", NOT_UUIDS),
        (TransferCreate, "to_wallet_id", NOT_UUIDS),
        (HoldCreate, "wallet_id", NOT_UUIDS),
        (HoldCapture, "to_wallet_id", NOT_UUIDS),
        (HoldCreate, "expires_at", NOT_TIMESTAMPS),
        (TransferBatchCreate, "transfers", [[{**TRANSFER, "amount": "10"}]]),
        (TransferBatchCreate, "transfers", [[{**TRANSFER, "from_wallet_id": 1}]]),
        (RiskRulesPut, "rules", [[{**RULE, "action": True}]]),
    ]
    for model, field, values in changes:
        for value in values:
            body = {**VALID[model], field: value}
            yield pytest.param(model, body, id=f"{model.__name__}.{field}={value!r}")


@pytest.mark.parametrize(("model", "body"), list(bad_cases()))
def test_a_field_of_the_wrong_json_type_is_refused(
    model: type[RequestModel], body: dict[str, Any]
) -> None:
    with pytest.raises(ValidationError):
        from_json(model, body)


def test_refusals_name_the_field_and_what_it_takes() -> None:
    cases = [
        (TransferBatchCreate, {"atomic": "yes"}, ("atomic",), "bool_type"),
        (CreditCreate, {"amount": 10.0}, ("amount",), "int_type"),
        (CreditCreate, {"wallet_id": 7}, ("wallet_id",), "uuid_type"),
        (HoldCreate, {"expires_at": 2_000_000_000}, ("expires_at",), "datetime_type"),
        (TransferBatchCreate, {"transfers": [{**TRANSFER, "amount": True}]}, None, "int_type"),
    ]
    for model, change, location, kind in cases:
        with pytest.raises(ValidationError) as raised:
            from_json(model, {**VALID[model], **change})
        (error,) = raised.value.errors()
        assert error["type"] == kind
        assert error["loc"] == (location or ("transfers", 0, "amount"))


def test_the_strict_models_keep_their_json_schema() -> None:
    properties = HoldCreate.model_json_schema()["properties"]
    assert properties["wallet_id"] == {"format": "uuid", "title": "Wallet Id", "type": "string"}
    assert {"format": "date-time", "type": "string"} in properties["expires_at"]["anyOf"]
    assert TransferBatchCreate.model_json_schema()["properties"]["atomic"] == {
        "title": "Atomic",
        "type": "boolean",
    }
