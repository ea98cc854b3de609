"""Pure tests of risk rules: validation on write, each rule at its boundary, precedence."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import pytest
from hypothesis import given
from hypothesis import strategies as st

from walletd.domain.ledger import Limits, Movement, WalletState, WalletStatus, hold_for_review
from walletd.domain.risk import (
    MAX_RULES,
    AmountAtLeast,
    DistinctRecipients,
    Payment,
    RiskScreen,
    YoungWallet,
    evaluate_risk,
    parse_rules,
    recipients_window,
    rule_fires,
    rules_json,
)
from walletd.errors import InsufficientFunds, LimitExceeded, ValidationFailed

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
PAYER = UUID(int=1)


def rule(name: str, rule_type: str, params: Any, action: str = "review") -> Any:
    return {"name": name, "type": rule_type, "params": params, "action": action}


def payment(
    amount: int = 100,
    *,
    currency: str = "EUR",
    recipient: UUID | None = None,
    age: timedelta = timedelta(days=30),
    recent: dict[UUID, datetime] | None = None,
) -> Payment:
    return Payment(
        kind="transfer" if recipient else "debit",
        payer_id=PAYER,
        payer_created_at=NOW - age,
        recipient_id=recipient,
        amount=amount,
        currency=currency,
        at=NOW,
        recent_recipients=recent or {},
    )


def one(raw: Any) -> Any:
    (parsed,) = parse_rules([raw])
    return parsed


def test_valid_rules_round_trip_through_json_unchanged() -> None:
    raw = [
        rule("big", "amount_at_least", {"amount": 10_000, "currency": "EUR"}, "reject"),
        rule("young", "young_wallet", {"max_age_minutes": 60, "amount": 0}),
        rule("fan-out", "distinct_recipients", {"count": 3, "window_minutes": 10}),
    ]
    parsed = parse_rules(raw)
    assert rules_json(parsed) == raw
    assert parsed[0].params == AmountAtLeast(10_000, "EUR")
    assert parsed[1].params == YoungWallet(60, 0)
    assert parsed[2].params == DistinctRecipients(3, 10)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (rule("x", "velocity", {}), "rules[0].type"),
        (rule("x", "amount_at_least", {"amount": 1}), "rules[0].params"),
        (rule("x", "amount_at_least", {"amount": 0, "currency": "EUR"}), "params.amount"),
        (rule("x", "amount_at_least", {"amount": 1.5, "currency": "EUR"}), "params.amount"),
        (rule("x", "amount_at_least", {"amount": True, "currency": "EUR"}), "params.amount"),
        (rule("x", "amount_at_least", {"amount": "5", "currency": "EUR"}), "params.amount"),
        (rule("x", "amount_at_least", {"amount": 5, "currency": "XYZ"}), "params.currency"),
        (rule("x", "amount_at_least", {"amount": 2**63, "currency": "EUR"}), "params.amount"),
        (rule("x", "young_wallet", {"max_age_minutes": 0, "amount": 1}), "max_age_minutes"),
        (rule("x", "young_wallet", {"max_age_minutes": 5, "amount": -1}), "params.amount"),
        (rule("x", "young_wallet", {"max_age_minutes": 5, "amount": 1, "extra": 1}), "params"),
        (rule("x", "distinct_recipients", {"count": -1, "window_minutes": 5}), "params.count"),
        (rule("x", "distinct_recipients", {"count": 1, "window_minutes": 10_081}), "window"),
        (rule("x", "distinct_recipients", [1, 2]), "params: must be an object"),
        (rule("", "young_wallet", {"max_age_minutes": 5, "amount": 1}), "rules[0].name"),
        (rule("x", "young_wallet", {"max_age_minutes": 5, "amount": 1}, "block"), "action"),
        ({"name": "x", "type": "young_wallet", "params": {}}, "exactly the keys"),
        ("not a rule", "rules[0]: must be an object"),
    ],
)
def test_invalid_rule_is_refused_naming_the_field(raw: Any, message: str) -> None:
    with pytest.raises(ValidationFailed) as caught:
        parse_rules([raw])
    assert message in caught.value.detail


def test_duplicate_rule_names_are_refused() -> None:
    params = {"max_age_minutes": 5, "amount": 1}
    with pytest.raises(ValidationFailed, match=r"rules\[1\]\.name: 'same' is used twice"):
        parse_rules([rule("same", "young_wallet", params), rule("same", "young_wallet", params)])


def test_more_than_the_maximum_number_of_rules_is_refused() -> None:
    params = {"max_age_minutes": 5, "amount": 1}
    allowed = [rule(f"r{i}", "young_wallet", params) for i in range(MAX_RULES)]
    assert len(parse_rules(allowed)) == MAX_RULES
    with pytest.raises(ValidationFailed, match="at most 100 rules, got 101"):
        parse_rules([*allowed, rule("one-more", "young_wallet", params)])


def test_amount_at_least_fires_at_the_amount_and_only_in_its_currency() -> None:
    big = one(rule("big", "amount_at_least", {"amount": 1000, "currency": "EUR"}))
    assert rule_fires(big, payment(1000)) is True
    assert rule_fires(big, payment(999)) is False
    assert rule_fires(big, payment(5000, currency="USD")) is False
    assert rule_fires(big, payment(1000, recipient=uuid4())) is True


def test_young_wallet_fires_below_the_age_and_above_the_amount() -> None:
    young = one(rule("young", "young_wallet", {"max_age_minutes": 60, "amount": 500}))
    minute = timedelta(minutes=1)
    assert rule_fires(young, payment(501, age=59 * minute)) is True
    assert rule_fires(young, payment(500, age=59 * minute)) is False
    assert rule_fires(young, payment(501, age=60 * minute)) is False
    assert rule_fires(young, payment(501, age=60 * minute - timedelta(microseconds=1))) is True


def test_distinct_recipients_fires_when_this_transfer_makes_one_too_many() -> None:
    fan_out = one(rule("fan", "distinct_recipients", {"count": 2, "window_minutes": 10}))
    first, second, third = uuid4(), uuid4(), uuid4()
    recent = {first: NOW - timedelta(minutes=1), second: NOW - timedelta(minutes=9)}
    assert rule_fires(fan_out, payment(recipient=third, recent=recent)) is True
    assert rule_fires(fan_out, payment(recipient=first, recent=recent)) is False
    assert rule_fires(fan_out, payment(recipient=second, recent=recent)) is False


def test_distinct_recipients_forgets_transfers_older_than_the_window() -> None:
    fan_out = one(rule("fan", "distinct_recipients", {"count": 1, "window_minutes": 10}))
    old = {uuid4(): NOW - timedelta(minutes=10)}
    assert rule_fires(fan_out, payment(recipient=uuid4(), recent=old)) is False
    recent = {uuid4(): NOW - timedelta(minutes=10) + timedelta(microseconds=1)}
    assert rule_fires(fan_out, payment(recipient=uuid4(), recent=recent)) is True


def test_distinct_recipients_never_fires_for_a_debit() -> None:
    fan_out = one(rule("fan", "distinct_recipients", {"count": 0, "window_minutes": 10}))
    assert rule_fires(fan_out, payment(recipient=None)) is False
    assert rule_fires(fan_out, payment(recipient=uuid4())) is True


def test_a_firing_reject_rule_wins_over_an_earlier_review_rule() -> None:
    rules = parse_rules(
        [
            rule("review-big", "amount_at_least", {"amount": 100, "currency": "EUR"}, "review"),
            rule("reject-huge", "amount_at_least", {"amount": 1000, "currency": "EUR"}, "reject"),
            rule("reject-young", "young_wallet", {"max_age_minutes": 5, "amount": 0}, "reject"),
        ]
    )
    decision = evaluate_risk(rules, payment(5000))
    assert decision is not None
    assert (decision.rule.name, decision.action) == ("reject-huge", "reject")
    decision = evaluate_risk(rules, payment(500))
    assert decision is not None
    assert (decision.rule.name, decision.action) == ("review-big", "review")
    assert evaluate_risk(rules, payment(99)) is None


def test_recipients_window_is_needed_only_with_a_distinct_recipients_rule() -> None:
    young = rule("young", "young_wallet", {"max_age_minutes": 5, "amount": 0})
    assert recipients_window(parse_rules([young])) is None
    rules = parse_rules(
        [
            young,
            rule("a", "distinct_recipients", {"count": 3, "window_minutes": 60}),
            rule("b", "distinct_recipients", {"count": 9, "window_minutes": 5}),
        ]
    )
    assert recipients_window(rules) == (60, 10)


@given(
    amounts=st.lists(st.integers(min_value=1, max_value=10**6), min_size=0, max_size=5),
    actions=st.lists(st.sampled_from(["review", "reject"]), min_size=5, max_size=5),
    paid=st.integers(min_value=1, max_value=10**6),
)
def test_the_decision_is_always_a_rule_that_fired_with_reject_first(
    amounts: list[int], actions: list[str], paid: int
) -> None:
    rules = parse_rules(
        [
            rule(f"r{i}", "amount_at_least", {"amount": amount, "currency": "EUR"}, actions[i])
            for i, amount in enumerate(amounts)
        ]
    )
    fired = [r for r in rules if rule_fires(r, payment(paid))]
    decision = evaluate_risk(rules, payment(paid))
    if not fired:
        assert decision is None
        return
    assert decision is not None
    assert decision.rule in fired
    expected = "reject" if any(r.action == "reject" for r in fired) else "review"
    assert decision.action == expected


def wallet(balance: int, **fields: Any) -> WalletState:
    return WalletState(
        id=fields.pop("id", uuid4()),
        tenant_id=UUID(int=9),
        currency="EUR",
        is_system=False,
        status=WalletStatus.ACTIVE,
        balance=balance,
        held_balance=0,
        overdraft_limit=0,
        version=0,
        last_hash=bytes(32),
        created_at=NOW,
        updated_at=NOW,
        **fields,
    )


def test_hold_for_review_holds_the_amount_without_moving_money() -> None:
    payer, payee = wallet(1000), wallet(0)
    states = {payer.id: payer, payee.id: payee}
    hold_for_review(states, Movement("transfer", payer.id, payee.id, 600, "EUR"), NOW)
    assert (payer.balance, payer.held_balance, payer.version) == (1000, 600, 0)
    assert (payee.balance, payee.held_balance, payee.version) == (0, 0, 0)
    assert payer.debit_day_total == 0


def test_a_capture_sent_to_review_keeps_only_the_captured_amount_held() -> None:
    payer, payee = wallet(1000), wallet(0)
    payer.held_balance = 700  # a hold of 700, 400 of it captured into review
    states = {payer.id: payer, payee.id: payee}
    capture = Movement("capture", payer.id, payee.id, 400, "EUR", release_held=700)
    hold_for_review(states, capture, NOW)
    assert (payer.balance, payer.held_balance, payer.version) == (1000, 400, 0)


def test_hold_for_review_applies_the_floor_and_the_limits() -> None:
    payer, payee = wallet(1000), wallet(0)
    states = {payer.id: payer, payee.id: payee}
    with pytest.raises(InsufficientFunds):
        hold_for_review(states, Movement("transfer", payer.id, payee.id, 1001, "EUR"), NOW)
    payer.limits = Limits(max_debit_amount=500)
    with pytest.raises(LimitExceeded, match="max_debit_amount"):
        hold_for_review(states, Movement("transfer", payer.id, payee.id, 501, "EUR"), NOW)
    assert payer.held_balance == 0


def _record(screen: RiskScreen, to: UUID) -> None:
    screen.record(PAYER, to, NOW)


def _check(screen: RiskScreen, to: UUID) -> str | None:
    return screen.check(_payer(), to, 100, "EUR", NOW)


def _payer() -> WalletState:
    return WalletState(
        PAYER, UUID(int=9), "EUR", False, WalletStatus.ACTIVE, 10_000, 0, 0, 1, b"", NOW, NOW
    )


def test_a_screen_restored_to_a_mark_forgets_only_what_came_after_it() -> None:
    fan_out = one(rule("fan", "distinct_recipients", {"count": 2, "window_minutes": 10}))
    a, b, c = uuid4(), uuid4(), uuid4()
    screen = RiskScreen(UUID(int=9), [fan_out], {PAYER: {a: NOW - timedelta(minutes=20)}})
    _record(screen, b)
    mark = screen.checkpoint()
    _record(screen, c)  # a new recipient …
    _record(screen, a)  # … and one seen before, now inside the window
    assert _check(screen, uuid4()) == "fan"
    screen.restore(mark)
    # back to: a outside the window, b inside; c forgotten
    assert _check(screen, c) is None
    _record(screen, c)
    assert _check(screen, uuid4()) == "fan"


def test_a_wallet_snapshot_is_equal_and_independent() -> None:
    state = _payer()
    saved = state.snapshot()
    assert saved == state and saved is not state
    state.balance -= 500
    assert saved.balance == 10_000
