"""Risk rules on every way out (SPEC 5): a capture is screened like the payment it makes.

A capture with ``to_wallet_id`` is screened as a transfer to that wallet (and counts as
one of its payer's recipients); one without, as a debit. A capture caught by ``review``
answers 202 with the captured Hold, its amount stays held until the review is decided,
and the rest of the hold is released at once.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.api import ApiHarness, TenantClient

pytestmark = pytest.mark.e2e


def rule(name: str, kind: str, action: str = "review", **params: Any) -> dict[str, Any]:
    return {"name": name, "type": kind, "params": params, "action": action}


BIG = rule("big", "amount_at_least", amount=5_000, currency="EUR")


async def setup(api: ApiHarness, *rules: dict[str, Any]) -> tuple[TenantClient, str, str]:
    client = await api.tenant()
    assert (await client.put("/v1/risk-rules", {"rules": list(rules)})).status_code == 200
    payer, payee = await client.wallet(), await client.wallet()
    await client.credit(payer["id"], 20_000)
    return client, payer["id"], payee["id"]


async def state(client: TenantClient, wallet_id: str) -> tuple[int, int]:
    wallet = (await client.get(f"/v1/wallets/{wallet_id}")).json()
    return wallet["balance"], wallet["held_balance"]


async def hold(client: TenantClient, wallet_id: str, amount: int) -> str:
    body = {"wallet_id": wallet_id, "amount": amount, "currency": "EUR"}
    placed = await client.post("/v1/holds", body)
    assert placed.status_code == 201, placed.text
    hold_id: str = placed.json()["id"]
    return hold_id


async def test_a_capture_to_a_wallet_is_screened_as_a_transfer_and_approved(
    api: ApiHarness,
) -> None:
    client, payer, payee = await setup(api, BIG)
    hold_id = await hold(client, payer, 6_000)
    captured = await client.post(f"/v1/holds/{hold_id}/capture", {"to_wallet_id": payee})
    assert captured.status_code == 202, captured.text
    body = captured.json()
    assert (body["status"], body["captured_amount"]) == ("captured", 6_000)
    pending = (await client.get(f"/v1/transactions/{body['transaction_id']}")).json()
    assert (pending["type"], pending["status"], pending["entries"]) == (
        "capture",
        "pending_review",
        [],
    )
    assert await state(client, payer) == (20_000, 6_000)
    assert await state(client, payee) == (0, 0)
    reviews = (await client.get("/v1/reviews")).json()["data"]
    assert [review["id"] for review in reviews] == [body["transaction_id"]]
    approved = await client.post(f"/v1/reviews/{body['transaction_id']}/approve")
    assert approved.status_code == 200, approved.text
    assert approved.json()["status"] == "posted"
    assert await state(client, payer) == (14_000, 0)
    assert await state(client, payee) == (6_000, 0)


async def test_a_partial_capture_in_review_keeps_its_amount_held_and_a_rejection_frees_it(
    api: ApiHarness,
) -> None:
    client, payer, payee = await setup(api, BIG)
    hold_id = await hold(client, payer, 7_000)
    captured = await client.post(
        f"/v1/holds/{hold_id}/capture", {"amount": 6_000, "to_wallet_id": payee}
    )
    assert captured.status_code == 202, captured.text
    assert await state(client, payer) == (20_000, 6_000)  # the other 1,000 released now
    rejected = await client.post(f"/v1/reviews/{captured.json()['transaction_id']}/reject")
    assert rejected.status_code == 200, rejected.text
    assert rejected.json()["status"] == "rejected"
    assert await state(client, payer) == (20_000, 0)
    assert await state(client, payee) == (0, 0)
    again = await client.post(f"/v1/holds/{hold_id}/capture", {"to_wallet_id": payee})
    assert again.json()["code"] == "hold_not_pending"


async def test_a_capture_to_the_outside_is_screened_as_a_debit(api: ApiHarness) -> None:
    client, payer, _ = await setup(api, BIG)
    hold_id = await hold(client, payer, 5_000)
    captured = await client.post(f"/v1/holds/{hold_id}/capture")
    assert captured.status_code == 202, captured.text
    assert await state(client, payer) == (20_000, 5_000)
    small = await hold(client, payer, 4_999)
    posted = await client.post(f"/v1/holds/{small}/capture")
    assert posted.status_code == 200, posted.text
    assert await state(client, payer) == (15_001, 5_000)


async def test_a_reject_rule_refuses_a_capture_and_leaves_the_hold_pending(
    api: ApiHarness,
) -> None:
    client, payer, payee = await setup(
        api, rule("no", "amount_at_least", "reject", amount=1, currency="EUR")
    )
    hold_id = await hold(client, payer, 100)
    refused = await client.post(f"/v1/holds/{hold_id}/capture", {"to_wallet_id": payee})
    assert refused.status_code == 422, refused.text
    assert refused.json()["code"] == "risk_rejected"
    assert (await client.get(f"/v1/holds/{hold_id}")).json()["status"] == "pending"
    assert await state(client, payer) == (20_000, 100)


async def test_a_capture_to_a_wallet_counts_as_one_of_the_payers_recipients(
    api: ApiHarness,
) -> None:
    fan_out = rule("fan", "distinct_recipients", count=1, window_minutes=60)
    client, payer, first = await setup(api, fan_out)
    second = (await client.wallet())["id"]
    hold_id = await hold(client, payer, 100)
    captured = await client.post(f"/v1/holds/{hold_id}/capture", {"to_wallet_id": first})
    assert captured.status_code == 200, captured.text
    transfer = {"from_wallet_id": payer, "to_wallet_id": second, "amount": 10, "currency": "EUR"}
    sent = await client.post("/v1/transfers", transfer)
    assert sent.status_code == 202, sent.text  # a second recipient, counting the capture's
