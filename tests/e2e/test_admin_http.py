"""Admin endpoints over HTTP: risk rules, the review queue, 202 answers, the audit log."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from tests.support.api import ApiHarness, TenantClient


def rule(name: str, rule_type: str, action: str = "review", **params: Any) -> dict[str, Any]:
    return {"name": name, "type": rule_type, "params": params, "action": action}


BIG = rule("big", "amount_at_least", amount=1_000, currency="EUR")
HUGE = rule("huge", "amount_at_least", "reject", amount=5_000, currency="EUR")


def key_id(client: TenantClient) -> str:
    return str(uuid.UUID(hex=client.key.split("_")[1]))


async def funded_wallet(client: TenantClient, amount: int = 10_000) -> str:
    wallet = await client.wallet()
    await client.credit(wallet["id"], amount)
    wallet_id: str = wallet["id"]
    return wallet_id


async def debit(client: TenantClient, wallet_id: str, amount: int) -> Any:
    return await client.post(
        "/v1/debits", {"wallet_id": wallet_id, "amount": amount, "currency": "EUR"}
    )


async def test_risk_rules_are_replaced_whole_and_read_back(api: ApiHarness) -> None:
    client = await api.tenant()
    assert (await client.get("/v1/risk-rules")).json() == {"rules": []}
    put = await client.put("/v1/risk-rules", {"rules": [BIG, HUGE]})
    assert (put.status_code, put.json()) == (200, {"rules": [BIG, HUGE]})
    assert (await client.get("/v1/risk-rules")).json() == {"rules": [BIG, HUGE]}
    put = await client.put("/v1/risk-rules", {"rules": [HUGE]})
    assert (await client.get("/v1/risk-rules")).json() == {"rules": [HUGE]}
    other = await api.tenant()
    assert (await other.get("/v1/risk-rules")).json() == {"rules": []}


@pytest.mark.parametrize(
    "rules",
    [
        [rule("x", "velocity", amount=1)],
        [rule("x", "amount_at_least", amount=1)],
        [rule("x", "amount_at_least", amount=0, currency="EUR")],
        [rule("x", "amount_at_least", amount=10, currency="XXZ")],
        [rule("x", "young_wallet", max_age_minutes="5", amount=1)],
        [rule("x", "distinct_recipients", count=1, window_minutes=1.5)],
        [rule("x", "young_wallet", "block", max_age_minutes=5, amount=1)],
        [BIG, {**HUGE, "name": "big"}],
        [{**BIG, "enabled": True}],
        [rule(f"r{i}", "young_wallet", max_age_minutes=5, amount=1) for i in range(101)],
        "not a list",
    ],
)
async def test_an_invalid_rule_set_is_a_422_and_replaces_nothing(
    api: ApiHarness, rules: Any
) -> None:
    client = await api.tenant()
    await client.put("/v1/risk-rules", {"rules": [BIG]})
    response = await client.put("/v1/risk-rules", {"rules": rules})
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "validation_error"
    assert (await client.get("/v1/risk-rules")).json() == {"rules": [BIG]}


async def test_admin_endpoints_need_the_admin_scope(api: ApiHarness) -> None:
    client = await api.tenant(scopes="read,write")
    some_id = str(uuid.uuid4())
    responses = [
        await client.get("/v1/risk-rules"),
        await client.put("/v1/risk-rules", {"rules": []}),
        await client.get("/v1/reviews"),
        await client.post(f"/v1/reviews/{some_id}/approve"),
        await client.post(f"/v1/reviews/{some_id}/reject"),
        await client.get("/v1/audit-log"),
    ]
    assert [r.status_code for r in responses] == [403] * 6
    assert {r.json()["code"] for r in responses} == {"forbidden"}
    anonymous = await api.http.get("/v1/audit-log")
    assert (anonymous.status_code, anonymous.json()["code"]) == (401, "unauthorized")


async def test_a_reviewed_debit_is_202_then_approved_with_200(api: ApiHarness) -> None:
    client = await api.tenant()
    await client.put("/v1/risk-rules", {"rules": [BIG, HUGE]})
    wallet_id = await funded_wallet(client)
    response = await debit(client, wallet_id, 1_000)
    assert response.status_code == 202
    pending = response.json()
    assert (pending["status"], pending["entries"], pending["type"]) == (
        "pending_review",
        [],
        "debit",
    )
    wallet = (await client.get(f"/v1/wallets/{wallet_id}")).json()
    assert (wallet["balance"], wallet["held_balance"], wallet["available_balance"]) == (
        10_000,
        1_000,
        9_000,
    )
    queue = (await client.get("/v1/reviews")).json()
    assert queue["next_cursor"] is None
    (item,) = queue["data"]
    assert (item["id"], item["review_rule"], item["from_wallet_id"], item["to_wallet_id"]) == (
        pending["id"],
        "big",
        wallet_id,
        None,
    )
    approved = await client.post(f"/v1/reviews/{pending['id']}/approve", auto_key=False)
    assert approved.status_code == 200
    body = approved.json()
    assert (body["id"], body["status"]) == (pending["id"], "posted")
    assert sorted(entry["amount"] for entry in body["entries"]) == [-1_000, 1_000]
    assert (await client.get(f"/v1/transactions/{pending['id']}")).json() == body
    wallet = (await client.get(f"/v1/wallets/{wallet_id}")).json()
    assert (wallet["balance"], wallet["held_balance"], wallet["version"]) == (9_000, 0, 2)
    again = await client.post(f"/v1/reviews/{pending['id']}/approve", auto_key=False)
    assert (again.status_code, again.json()["code"]) == (422, "review_not_pending")
    assert (await client.get("/v1/reviews")).json() == {"data": [], "next_cursor": None}


async def test_a_reject_rule_is_a_422_naming_the_rule(api: ApiHarness) -> None:
    client = await api.tenant()
    await client.put("/v1/risk-rules", {"rules": [BIG, HUGE]})
    wallet_id = await funded_wallet(client)
    response = await debit(client, wallet_id, 5_000)
    assert response.status_code == 422
    problem = response.json()
    assert problem["code"] == "risk_rejected"
    assert "'huge'" in problem["detail"]
    wallet = (await client.get(f"/v1/wallets/{wallet_id}")).json()
    assert (wallet["balance"], wallet["held_balance"], wallet["version"]) == (10_000, 0, 1)


async def test_rejecting_a_review_releases_the_funds(api: ApiHarness) -> None:
    client = await api.tenant()
    await client.put("/v1/risk-rules", {"rules": [BIG]})
    payer, payee = await funded_wallet(client), (await client.wallet())["id"]
    response = await client.post(
        "/v1/transfers",
        {"from_wallet_id": payer, "to_wallet_id": payee, "amount": 2_000, "currency": "EUR"},
    )
    assert (response.status_code, response.json()["status"]) == (202, "pending_review")
    transaction_id = response.json()["id"]
    rejected = await client.post(
        f"/v1/reviews/{transaction_id}/reject", {"reason": "card testing"}, auto_key=False
    )
    assert (rejected.status_code, rejected.json()["status"]) == (200, "rejected")
    assert rejected.json()["entries"] == []
    for wallet_id, expected in ((payer, (10_000, 0, 1)), (payee, (0, 0, 0))):
        wallet = (await client.get(f"/v1/wallets/{wallet_id}")).json()
        assert (wallet["balance"], wallet["held_balance"], wallet["version"]) == expected
    approve = await client.post(f"/v1/reviews/{transaction_id}/approve", auto_key=False)
    assert (approve.status_code, approve.json()["code"]) == (422, "review_not_pending")


async def test_batch_items_sent_to_review_answer_202(api: ApiHarness) -> None:
    client = await api.tenant()
    await client.put("/v1/risk-rules", {"rules": [BIG]})
    payer, payee = await funded_wallet(client), (await client.wallet())["id"]

    def item(amount: int) -> dict[str, Any]:
        return {"from_wallet_id": payer, "to_wallet_id": payee, "amount": amount, "currency": "EUR"}

    per_item = await client.post(
        "/v1/transfers/batch", {"transfers": [item(10), item(1_000)], "atomic": False}
    )
    assert per_item.status_code == 200
    assert [(i["status"], i["transaction"]["status"]) for i in per_item.json()["data"]] == [
        (201, "posted"),
        (202, "pending_review"),
    ]
    atomic = await client.post(
        "/v1/transfers/batch", {"transfers": [item(10), item(1_000)], "atomic": True}
    )
    assert atomic.status_code == 202
    assert [tx["status"] for tx in atomic.json()["data"]] == ["posted", "pending_review"]
    plain = await client.post("/v1/transfers/batch", {"transfers": [item(10)], "atomic": True})
    assert plain.status_code == 201


async def test_review_queue_pages_with_a_cursor(api: ApiHarness) -> None:
    client = await api.tenant()
    await client.put("/v1/risk-rules", {"rules": [BIG]})
    wallet_id = await funded_wallet(client)
    created = [(await debit(client, wallet_id, 1_000)).json()["id"] for _ in range(3)]
    first = (await client.get("/v1/reviews", params={"limit": 2})).json()
    assert [item["id"] for item in first["data"]] == created[:2]
    second = (
        await client.get("/v1/reviews", params={"limit": 2, "cursor": first["next_cursor"]})
    ).json()
    assert ([item["id"] for item in second["data"]], second["next_cursor"]) == (created[2:], None)
    for params in ({"limit": 0}, {"limit": 501}, {"cursor": "not-a-cursor"}):
        response = await client.get("/v1/reviews", params=params)
        assert (response.status_code, response.json()["code"]) == (422, "validation_error")


async def test_unknown_reviews_are_404(api: ApiHarness) -> None:
    client = await api.tenant()
    for path in (f"/v1/reviews/{uuid.uuid4()}/approve", "/v1/reviews/not-a-uuid/reject"):
        response = await client.post(path, auto_key=False)
        assert (response.status_code, response.json()["code"]) == (404, "not_found")


async def test_an_approval_with_an_idempotency_key_is_replayed(api: ApiHarness) -> None:
    client = await api.tenant()
    await client.put("/v1/risk-rules", {"rules": [BIG]})
    wallet_id = await funded_wallet(client)
    pending = (await debit(client, wallet_id, 1_000)).json()
    path = f"/v1/reviews/{pending['id']}/approve"
    first = await client.post(path, idempotency_key="approve-1")
    replay = await client.post(path, idempotency_key="approve-1")
    assert (first.status_code, replay.status_code) == (200, 200)
    assert replay.json() == first.json()
    assert replay.headers["idempotent-replayed"] == "true"
    wallet = (await client.get(f"/v1/wallets/{wallet_id}")).json()
    assert (wallet["balance"], wallet["version"]) == (9_000, 2)


async def test_every_admin_action_is_in_the_audit_log_newest_first(api: ApiHarness) -> None:
    client = await api.tenant()
    me = key_id(client)
    wallet_id = await funded_wallet(client)
    empty = (await client.wallet())["id"]
    await client.put("/v1/risk-rules", {"rules": [BIG]})
    limits = {"max_debit_amount": 5_000, "daily_debit_amount": None, "max_debits_per_minute": None}
    await client.put(f"/v1/wallets/{wallet_id}/limits", limits)
    approved = (await debit(client, wallet_id, 1_000)).json()["id"]
    rejected = (await debit(client, wallet_id, 2_000)).json()["id"]
    await client.post(f"/v1/reviews/{approved}/approve", auto_key=False)
    await client.post(f"/v1/reviews/{rejected}/reject", {"reason": "no"}, auto_key=False)
    for action in ("freeze", "unfreeze"):
        await client.post(f"/v1/wallets/{wallet_id}/{action}", {"reason": "check"})
    await client.post(f"/v1/wallets/{empty}/close")
    log = (await client.get("/v1/audit-log")).json()
    assert log["next_cursor"] is None
    seen = [(i["action"], i["key_id"], i["target_type"], i["target_id"]) for i in log["data"]]
    assert seen == [
        ("wallet.close", me, "wallet", empty),
        ("wallet.unfreeze", me, "wallet", wallet_id),
        ("wallet.freeze", me, "wallet", wallet_id),
        ("review.reject", me, "transaction", rejected),
        ("review.approve", me, "transaction", approved),
        ("wallet.limits", me, "wallet", wallet_id),
        ("risk_rules.replace", me, "tenant", str(client.tenant_id)),
        ("api_key.create", None, "api_key", me),
    ]
    by_action = {item["action"]: item for item in log["data"]}
    assert by_action["api_key.create"]["after"] == {"scopes": ["read", "write", "admin"]}
    assert by_action["wallet.limits"]["after"] == limits
    assert (
        by_action["risk_rules.replace"]["before"],
        by_action["risk_rules.replace"]["after"],
    ) == (
        [],
        [BIG],
    )
    assert by_action["review.reject"]["after"]["reason"] == "no"
    assert by_action["review.approve"]["after"]["status"] == "posted"
    assert set(by_action["wallet.close"]) == {
        "id",
        "key_id",
        "action",
        "target_type",
        "target_id",
        "before",
        "after",
        "created_at",
    }


async def test_audit_log_pages_newest_first_and_stays_in_its_tenant(api: ApiHarness) -> None:
    client = await api.tenant()
    for index in range(3):
        rules = [rule(f"r{index}", "young_wallet", max_age_minutes=5, amount=index)]
        await client.put("/v1/risk-rules", {"rules": rules})
    first = (await client.get("/v1/audit-log", params={"limit": 2})).json()
    assert [item["after"][0]["name"] for item in first["data"]] == ["r2", "r1"]
    second = (
        await client.get("/v1/audit-log", params={"limit": 2, "cursor": first["next_cursor"]})
    ).json()
    assert [item["action"] for item in second["data"]] == ["risk_rules.replace", "api_key.create"]
    assert second["next_cursor"] is None
    other = await api.tenant()
    assert [i["action"] for i in (await other.get("/v1/audit-log")).json()["data"]] == [
        "api_key.create",
    ]
    bad = await client.get("/v1/audit-log", params={"cursor": "e30"})
    assert (bad.status_code, bad.json()["code"]) == (422, "validation_error")
