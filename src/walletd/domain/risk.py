"""Risk rules: a tenant's rules as validated data, and the one pure function that applies them.

A rule looks at one debit or transfer about to leave a wallet (a :class:`Payment`)
and either lets it through or fires with its action: ``review`` (hold the funds and
wait for an admin) or ``reject`` (refuse it). :func:`parse_rules` validates rules
on write and again after reading them back; :func:`evaluate_risk` is the only place
that decides. No I/O here: the service layer loads what a rule needs under the
paying wallet's lock and logs the decision.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal
from uuid import UUID

from walletd.domain.events import OutboxEvent, cloud_event
from walletd.domain.ledger import WalletState
from walletd.domain.money import MAX_AMOUNT, is_known_currency
from walletd.domain.records import Transaction
from walletd.errors import RiskRejected, ValidationFailed

RuleAction = Literal["review", "reject"]
PaymentKind = Literal["debit", "transfer"]

MAX_RULES = 100
MAX_NAME_LENGTH = 100
MAX_AGE_MINUTES = 525_600  # one year
MAX_WINDOW_MINUTES = 10_080  # seven days: bounds the recipients query on a hot wallet
MAX_RECIPIENT_COUNT = 1_000
ACTIONS: tuple[RuleAction, ...] = ("review", "reject")


@dataclass(frozen=True, slots=True)
class AmountAtLeast:
    """Fires for a payment of at least ``amount`` in ``currency``."""

    amount: int
    currency: str


@dataclass(frozen=True, slots=True)
class YoungWallet:
    """Fires when the paying wallet is younger than ``max_age_minutes`` and amount > ``amount``."""

    max_age_minutes: int
    amount: int


@dataclass(frozen=True, slots=True)
class DistinctRecipients:
    """Fires when a transfer would make more than ``count`` recipients within the window."""

    count: int
    window_minutes: int


RuleParams = AmountAtLeast | YoungWallet | DistinctRecipients

RULE_TYPES: dict[str, type[RuleParams]] = {
    "amount_at_least": AmountAtLeast,
    "young_wallet": YoungWallet,
    "distinct_recipients": DistinctRecipients,
}
PARAM_RANGES: dict[str, dict[str, tuple[int, int]]] = {
    "amount_at_least": {"amount": (1, MAX_AMOUNT)},
    "young_wallet": {"max_age_minutes": (1, MAX_AGE_MINUTES), "amount": (0, MAX_AMOUNT)},
    "distinct_recipients": {
        "count": (0, MAX_RECIPIENT_COUNT),
        "window_minutes": (1, MAX_WINDOW_MINUTES),
    },
}
RULE_KEYS = frozenset({"name", "type", "params", "action"})


@dataclass(frozen=True, slots=True)
class RiskRule:
    name: str
    type: str
    params: RuleParams
    action: RuleAction

    def to_json(self) -> dict[str, Any]:
        params: dict[str, Any] = {
            key: getattr(self.params, key) for key in self.params.__dataclass_fields__
        }
        return {"name": self.name, "type": self.type, "params": params, "action": self.action}


@dataclass(frozen=True, slots=True)
class Payment:
    """One debit or transfer about to leave ``payer_id``, as the rules see it.

    ``recent_recipients`` maps each wallet the payer sent a transfer to (posted or
    pending review) to the time of the latest such transfer.
    """

    kind: PaymentKind
    payer_id: UUID
    payer_created_at: datetime
    recipient_id: UUID | None
    amount: int
    currency: str
    at: datetime
    recent_recipients: Mapping[UUID, datetime]


@dataclass(frozen=True, slots=True)
class RiskDecision:
    rule: RiskRule

    @property
    def action(self) -> RuleAction:
        return self.rule.action


def _strict_int(value: Any, where: str, low: int, high: int) -> int:
    if type(value) is not int:  # bool is an int subclass and is refused here on purpose
        raise ValidationFailed(f"{where}: must be an integer")
    if not low <= value <= high:
        raise ValidationFailed(f"{where}: must be between {low} and {high}")
    return value


def _parse_params(rule_type: str, params: Any, where: str) -> RuleParams:
    if not isinstance(params, dict):
        raise ValidationFailed(f"{where}.params: must be an object")
    ranges = PARAM_RANGES[rule_type]
    expected = set(ranges) | ({"currency"} if rule_type == "amount_at_least" else set())
    if set(params) != expected:
        raise ValidationFailed(
            f"{where}.params: {rule_type} takes exactly {', '.join(sorted(expected))}"
        )
    values: dict[str, Any] = {
        key: _strict_int(params[key], f"{where}.params.{key}", low, high)
        for key, (low, high) in ranges.items()
    }
    if rule_type == "amount_at_least":
        currency = params["currency"]
        if not isinstance(currency, str) or not is_known_currency(currency):
            raise ValidationFailed(f"{where}.params.currency: not an ISO 4217 code")
        values["currency"] = currency
    return RULE_TYPES[rule_type](**values)


def parse_rule(raw: Any, where: str) -> RiskRule:
    """One rule from its JSON form; :class:`ValidationFailed` naming the bad field."""
    if not isinstance(raw, dict):
        raise ValidationFailed(f"{where}: must be an object")
    if set(raw) != RULE_KEYS:
        raise ValidationFailed(f"{where}: a rule has exactly the keys name, type, params, action")
    name, rule_type, action = raw["name"], raw["type"], raw["action"]
    if not isinstance(name, str) or not 1 <= len(name) <= MAX_NAME_LENGTH:
        raise ValidationFailed(f"{where}.name: must be 1 to {MAX_NAME_LENGTH} characters")
    if not isinstance(rule_type, str) or rule_type not in RULE_TYPES:
        raise ValidationFailed(f"{where}.type: must be one of {', '.join(RULE_TYPES)}")
    if action not in ACTIONS:
        raise ValidationFailed(f"{where}.action: must be review or reject")
    return RiskRule(name, rule_type, _parse_params(rule_type, raw["params"], where), action)


def parse_rules(raw: Any) -> tuple[RiskRule, ...]:
    """A whole rule set: at most :data:`MAX_RULES`, names unique."""
    if not isinstance(raw, list):
        raise ValidationFailed("rules: must be an array")
    if len(raw) > MAX_RULES:
        raise ValidationFailed(f"rules: at most {MAX_RULES} rules, got {len(raw)}")
    rules = tuple(parse_rule(item, f"rules[{index}]") for index, item in enumerate(raw))
    seen: set[str] = set()
    for index, rule in enumerate(rules):
        if rule.name in seen:
            raise ValidationFailed(f"rules[{index}].name: {rule.name!r} is used twice")
        seen.add(rule.name)
    return rules


def rules_json(rules: Sequence[RiskRule]) -> list[dict[str, Any]]:
    return [rule.to_json() for rule in rules]


def recipients_window(rules: Sequence[RiskRule]) -> tuple[int, int] | None:
    """(longest window in minutes, most recipients worth knowing per payer), or None.

    None when no rule counts recipients, so that no query is needed.
    """
    counting = [rule.params for rule in rules if isinstance(rule.params, DistinctRecipients)]
    if not counting:
        return None
    return (
        max(params.window_minutes for params in counting),
        max(params.count for params in counting) + 1,
    )


def rule_fires(rule: RiskRule, payment: Payment) -> bool:
    params = rule.params
    if isinstance(params, AmountAtLeast):
        return payment.currency == params.currency and payment.amount >= params.amount
    if isinstance(params, YoungWallet):
        age = payment.at - payment.payer_created_at
        return age < timedelta(minutes=params.max_age_minutes) and payment.amount > params.amount
    if payment.recipient_id is None:
        return False
    since = payment.at - timedelta(minutes=params.window_minutes)
    recipients = {wallet for wallet, last in payment.recent_recipients.items() if last > since}
    recipients.add(payment.recipient_id)
    return len(recipients) > params.count


class RiskScreen:
    """The rules of one tenant plus what they need to know, for one group of commands.

    :meth:`check` decides; :meth:`record` lets later payments of the group see a
    recipient; :meth:`checkpoint` and :meth:`restore` undo records of a cancelled
    request in O(1) per record. ``fired`` keeps each decision for the service layer to log.
    """

    def __init__(
        self,
        tenant_id: UUID,
        rules: Sequence[RiskRule] = (),
        recipients: dict[UUID, dict[UUID, datetime]] | None = None,
    ) -> None:
        self.tenant_id = tenant_id
        self._rules = tuple(rules)
        self._recipients = recipients if recipients is not None else {}
        # What each record() replaced: (payer, recipient, previous time or None).
        self._undo: list[tuple[UUID, UUID, datetime | None]] = []
        self.fired: list[tuple[Payment, RiskDecision]] = []

    def check(
        self,
        payer: WalletState,
        recipient_id: UUID | None,
        amount: int,
        currency: str,
        at: datetime,
    ) -> str | None:
        """None: post it; a rule name: send it to review; raises :class:`RiskRejected`.

        A payment with a user wallet as ``recipient_id`` is a transfer, else a debit.
        """
        if not self._rules:
            return None
        payment = Payment(
            kind="debit" if recipient_id is None else "transfer",
            payer_id=payer.id,
            payer_created_at=payer.created_at,
            recipient_id=recipient_id,
            amount=amount,
            currency=currency,
            at=at,
            recent_recipients=self._recipients.get(payer.id, {}),
        )
        decision = evaluate_risk(self._rules, payment)
        if decision is None:
            return None
        self.fired.append((payment, decision))
        if decision.action == "reject":
            raise RiskRejected(
                f"risk rule {decision.rule.name!r} ({decision.rule.type}) rejected this"
                f" {payment.kind}"
            )
        return decision.rule.name

    def checkpoint(self) -> int:
        """A mark for :meth:`restore`, which forgets what was recorded after it (O(1))."""
        return len(self._undo)

    def restore(self, mark: int) -> None:
        """Forget the records made since ``mark`` (a cancelled request)."""
        while len(self._undo) > mark:
            payer, recipient, previous = self._undo.pop()
            seen = self._recipients[payer]
            if previous is None:
                del seen[recipient]
            else:
                seen[recipient] = previous

    def record(self, payer_id: UUID, recipient_id: UUID | None, at: datetime) -> None:
        """A payment to a user wallet was posted or sent to review: later ones see it.

        Without rules nothing reads the recipients, so nothing is recorded.
        """
        if not self._rules or recipient_id is None:
            return
        seen = self._recipients.setdefault(payer_id, {})
        self._undo.append((payer_id, recipient_id, seen.get(recipient_id)))
        seen[recipient_id] = at


def evaluate_risk(rules: Sequence[RiskRule], payment: Payment) -> RiskDecision | None:
    """The decision for ``payment``: the first ``reject`` rule that fires wins over any
    ``review`` rule; else the first ``review`` rule that fires; else None (go ahead)."""
    fired = [rule for rule in rules if rule_fires(rule, payment)]
    for action in ("reject", "review"):
        for rule in fired:
            if rule.action == action:
                return RiskDecision(rule)
    return None


def review_event(event_type: str, transaction: Transaction, at: datetime) -> OutboxEvent:
    """``review.created`` / ``review.approved`` / ``review.rejected``, keyed by the payer."""
    assert transaction.from_wallet_id is not None
    data = {
        "tenant_id": str(transaction.tenant_id),
        "wallet_id": str(transaction.from_wallet_id),
        "transaction_id": str(transaction.id),
        "transaction_type": transaction.type,
        "status": transaction.status,
        "amount": transaction.amount,
        "currency": transaction.currency,
        "rule": transaction.review_rule,
        "counterparty_wallet_id": (
            str(transaction.to_wallet_id) if transaction.to_wallet_id else None
        ),
    }
    return cloud_event(event_type, transaction.from_wallet_id, at, data)
