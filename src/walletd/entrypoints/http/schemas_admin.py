"""Request and response models of the admin endpoints: risk rules, reviews, audit log.

Requests are checked for shape here (422 ``validation_error``), with the strict JSON
types of every :class:`~walletd.entrypoints.http.schemas.RequestModel`; a rule's
``params`` are checked by :func:`walletd.domain.risk.parse_rules`, the one validator of
rules (integers there are strict too).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, StrictStr

from walletd.domain.risk import MAX_NAME_LENGTH, MAX_RULES
from walletd.entrypoints.http.schemas import NUL_FREE, RequestModel, TransactionPublic


class RiskRuleIn(RequestModel):
    """One rule as a client writes it; unknown keys are refused, not ignored."""

    model_config = ConfigDict(extra="forbid")  # strict JSON types too, as every RequestModel

    name: Annotated[StrictStr, Field(min_length=1, max_length=MAX_NAME_LENGTH, pattern=NUL_FREE)]
    type: Literal["amount_at_least", "young_wallet", "distinct_recipients"]
    params: dict[str, Any]
    action: Literal["review", "reject"]


class RiskRulesPut(RequestModel):
    rules: Annotated[list[RiskRuleIn], Field(max_length=MAX_RULES)]


class RiskRulePublic(BaseModel):
    name: str
    type: Literal["amount_at_least", "young_wallet", "distinct_recipients"]
    params: dict[str, Any]
    action: Literal["review", "reject"]


class RiskRulesPublic(BaseModel):
    rules: list[RiskRulePublic]


class ReviewPublic(TransactionPublic):
    """A pending transaction as the review queue shows it: which wallet, which rule."""

    from_wallet_id: UUID
    to_wallet_id: UUID | None
    review_rule: str | None


class ReviewList(BaseModel):
    data: list[ReviewPublic]
    next_cursor: str | None


class AuditLogItem(BaseModel):
    id: str
    key_id: UUID | None
    action: str
    target_type: str
    target_id: str
    before: Any
    after: Any
    created_at: datetime


class AuditLogList(BaseModel):
    data: list[AuditLogItem]
    next_cursor: str | None
