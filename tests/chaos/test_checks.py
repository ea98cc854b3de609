"""The chaos verdicts on hand-made data: each one fails when its property is broken.

No services: these pin the checkers themselves, so that a clean chaos run means
something.
"""

from __future__ import annotations

from collections.abc import Sequence

from tests.chaos import checks
from tests.chaos.faults import FAULT_KINDS, FaultRecord
from tests.chaos.workload import ACKNOWLEDGED, REFUSED, UNRESOLVED, Operation

A, B = "wallet-a", "wallet-b"


def transfer(key: str, amount: int, outcome: str, object_id: str | None = None) -> Operation:
    body = {"from_wallet_id": A, "to_wallet_id": B, "amount": amount, "currency": "EUR"}
    operation = Operation("transfer", "/v1/transfers", body, key=key, outcome=outcome)
    operation.object_id = object_id
    operation.status = {ACKNOWLEDGED: 201, REFUSED: 422}.get(outcome)
    operation.code = "insufficient_funds" if outcome == REFUSED else None
    return operation


def snapshot(
    transfers: dict[str, tuple[str, str, int, str]],
    keys: dict[str, tuple[int, dict[str, object]]],
    balances: dict[str, int],
) -> checks.Snapshot:
    return checks.Snapshot(
        balances=balances,
        system_balance=-sum(balances.values()),
        transfers=transfers,
        credits={},
        keys=keys,
        entries=set(),
        outbox_event_ids=set(),
    )


def funding(amount: int) -> list[Operation]:
    return [
        Operation("credit", "/v1/credits", {"wallet_id": wallet, "amount": amount})
        for wallet in (A, B)
    ]


def verdict_for(ops: Sequence[Operation], snap: checks.Snapshot) -> checks.Verdict:
    fates = checks.resolve(ops, snap)
    return checks.check_exactly_once(ops, fates, snap, [], 0)


def test_acknowledged_and_refused_transfers_that_match_the_database_pass() -> None:
    ops = [transfer("k1", 10, ACKNOWLEDGED, "t1"), transfer("k2", 500, REFUSED)]
    snap = snapshot(
        {"t1": (A, B, 10, "posted")},
        {"k1": (201, {"id": "t1"}), "k2": (422, {"code": "insufficient_funds"})},
        {A: 90, B: 110},
    )
    assert verdict_for(ops, snap).ok
    posted = checks.posted_transfers(ops, checks.resolve(ops, snap))
    expected = checks.expected_balances(funding(100), posted)
    assert expected == {A: 90, B: 110}
    assert checks.check_conservation(snap, 200, expected).ok


def test_a_posting_without_acknowledgement_fails() -> None:
    ops = [transfer("k1", 10, ACKNOWLEDGED, "t1")]
    snap = snapshot(
        {"t1": (A, B, 10, "posted"), "t2": (A, B, 10, "posted")},
        {"k1": (201, {"id": "t1"})},
        {A: 80, B: 120},
    )
    verdict = verdict_for(ops, snap)
    assert not verdict.ok
    assert verdict.data["posted_without_acknowledgement"] == ["t2"]


def test_an_acknowledged_transfer_missing_from_the_database_fails() -> None:
    ops = [transfer("k1", 10, ACKNOWLEDGED, "t1")]
    snap = snapshot({}, {"k1": (201, {"id": "t1"})}, {A: 100, B: 100})
    assert not verdict_for(ops, snap).ok
    expected = checks.expected_balances(funding(100), checks.posted_transfers(ops, {}))
    assert not checks.check_conservation(snap, 200, expected).ok


def test_an_unresolved_operation_is_decided_by_its_stored_key() -> None:
    ops = [transfer("k1", 10, UNRESOLVED), transfer("k2", 10, UNRESOLVED)]
    snap = snapshot({"t1": (A, B, 10, "posted")}, {"k1": (201, {"id": "t1"})}, {A: 90, B: 110})
    assert checks.resolve(ops, snap) == {"k1": "t1", "k2": None}
    verdict = verdict_for(ops, snap)
    assert verdict.ok
    assert (verdict.data["unresolved_posted"], verdict.data["unresolved_not_posted"]) == (1, 1)


def test_a_replay_with_another_answer_fails() -> None:
    ops = [transfer("k1", 10, ACKNOWLEDGED, "t1")]
    snap = snapshot({"t1": (A, B, 10, "posted")}, {"k1": (201, {"id": "t1"})}, {A: 90, B: 110})
    problem = {"key": "k1", "first": [201, "t1", None], "replay": [201, "t9", None, True]}
    assert not checks.check_exactly_once(ops, {}, snap, [problem], 1).ok


def test_money_created_from_nothing_breaks_conservation() -> None:
    snap = snapshot({}, {}, {A: 100, B: 100})
    snap.system_balance = -150
    assert not checks.check_conservation(snap, 200, {A: 100, B: 100}).ok


def test_missing_events_and_out_of_order_wallets_fail() -> None:
    snap = snapshot({}, {}, {})
    snap.outbox_event_ids = {"e1", "e2"}
    snap.entries = {("t1", A, 1), ("t2", A, 2)}
    read = checks.TopicRead(event_ids={"e1", "e2"}, entry_keys={("t1", A, 1), ("t2", A, 2)})
    read.versions, read.partitions_of = {A: [1, 2]}, {A: {0}}
    assert checks.check_events(snap, read, drained=True).ok
    read.versions = {A: [2, 1]}
    assert not checks.check_events(snap, read, drained=True).ok
    read.versions, read.event_ids = {A: [1, 2]}, {"e1"}
    assert not checks.check_events(snap, read, drained=True).ok


def test_recovery_and_coverage_verdicts() -> None:
    records = [FaultRecord(n, kind, 0.0, 1.0, 0.5) for n, kind in enumerate(FAULT_KINDS)]
    assert checks.check_recovery(records, 15.0).ok
    assert checks.check_coverage(records, 5).ok
    assert not checks.check_coverage(records, 6).ok
    assert not checks.check_coverage(records[1:], 4).ok
    records[0].recovery_seconds = None
    assert not checks.check_recovery(records, 15.0).ok
