"""Money over HTTP: exact balances, entries, point-in-time balances, statements, tenants."""

from __future__ import annotations

import asyncio
import csv
import io
import uuid

from tests.support.api import ApiHarness


async def test_credit_transfer_debit_give_exact_balances_and_entries(api: ApiHarness) -> None:
    client = await api.tenant()
    alice, bob = await client.wallet(owner_id="alice"), await client.wallet(owner_id="bob")
    credit = await client.credit(alice["id"], 10_000)
    assert credit["type"] == "credit" and credit["status"] == "posted"
    assert sorted(e["amount"] for e in credit["entries"]) == [-10_000, 10_000]
    transfer = await client.post(
        "/v1/transfers",
        {
            "from_wallet_id": alice["id"],
            "to_wallet_id": bob["id"],
            "amount": 2_500,
            "currency": "EUR",
            "reference": "rent",
            "metadata": {"month": "2026-11"},
        },
    )
    assert transfer.status_code == 201
    body = transfer.json()
    assert body["reference"] == "rent" and body["metadata"] == {"month": "2026-11"}
    entries = {e["wallet_id"]: e for e in body["entries"]}
    assert entries[alice["id"]]["amount"] == -2_500
    assert entries[alice["id"]]["balance_after"] == 7_500
    assert entries[alice["id"]]["wallet_version"] == 2
    assert entries[bob["id"]]["balance_after"] == 2_500
    debit = await client.post(
        "/v1/debits", {"wallet_id": bob["id"], "amount": 500, "currency": "EUR"}
    )
    assert debit.status_code == 201
    alice_now = (await client.get(f"/v1/wallets/{alice['id']}")).json()
    bob_now = (await client.get(f"/v1/wallets/{bob['id']}")).json()
    assert (alice_now["balance"], alice_now["version"]) == (7_500, 2)
    assert (bob_now["balance"], bob_now["available_balance"], bob_now["version"]) == (
        2_000,
        2_000,
        2,
    )
    fetched = (await client.get(f"/v1/transactions/{body['id']}")).json()
    assert fetched == body


async def test_insufficient_funds_changes_nothing(api: ApiHarness) -> None:
    client = await api.tenant()
    alice, bob = await client.wallet(), await client.wallet()
    await client.credit(alice["id"], 100)
    response = await client.post(
        "/v1/transfers",
        {
            "from_wallet_id": alice["id"],
            "to_wallet_id": bob["id"],
            "amount": 101,
            "currency": "EUR",
        },
    )
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "insufficient_funds"
    assert (await client.get(f"/v1/wallets/{alice['id']}")).json()["version"] == 1
    assert (await client.get(f"/v1/wallets/{bob['id']}")).json()["version"] == 0


async def test_overdraft_limit_allows_going_negative_down_to_the_limit(api: ApiHarness) -> None:
    client = await api.tenant()
    wallet = await client.wallet(overdraft_limit=300)
    ok = await client.post(
        "/v1/debits", {"wallet_id": wallet["id"], "amount": 300, "currency": "EUR"}
    )
    assert ok.status_code == 201
    paying = next(e for e in ok.json()["entries"] if e["wallet_id"] == wallet["id"])
    assert (paying["amount"], paying["balance_after"]) == (-300, -300)
    too_much = await client.post(
        "/v1/debits", {"wallet_id": wallet["id"], "amount": 1, "currency": "EUR"}
    )
    assert too_much.json()["code"] == "insufficient_funds"
    assert (await client.get(f"/v1/wallets/{wallet['id']}")).json()["balance"] == -300


async def test_currency_mismatch_and_same_wallet(api: ApiHarness) -> None:
    client = await api.tenant()
    eur, usd = await client.wallet("EUR"), await client.wallet("USD")
    mismatch = await client.post(
        "/v1/credits", {"wallet_id": eur["id"], "amount": 5, "currency": "USD"}
    )
    assert (mismatch.status_code, mismatch.json()["code"]) == (422, "currency_mismatch")
    cross = await client.post(
        "/v1/transfers",
        {"from_wallet_id": usd["id"], "to_wallet_id": eur["id"], "amount": 1, "currency": "USD"},
    )
    assert (cross.status_code, cross.json()["code"]) == (422, "currency_mismatch")
    same = await client.post(
        "/v1/transfers",
        {"from_wallet_id": eur["id"], "to_wallet_id": eur["id"], "amount": 1, "currency": "EUR"},
    )
    assert (same.status_code, same.json()["code"]) == (422, "same_wallet")


async def test_balance_at_a_point_in_time(api: ApiHarness) -> None:
    client = await api.tenant()
    wallet = await client.wallet()
    first = await client.credit(wallet["id"], 100)
    await asyncio.sleep(0.01)
    second = await client.credit(wallet["id"], 50)
    before_any = await client.get(
        f"/v1/wallets/{wallet['id']}/balance", params={"at": "2000-01-01T00:00:00Z"}
    )
    assert before_any.json()["balance"] == 0 and before_any.json()["wallet_version"] == 0
    at_first = await client.get(
        f"/v1/wallets/{wallet['id']}/balance", params={"at": first["created_at"]}
    )
    assert (at_first.json()["balance"], at_first.json()["wallet_version"]) == (100, 1)
    at_second = await client.get(
        f"/v1/wallets/{wallet['id']}/balance", params={"at": second["created_at"]}
    )
    assert (at_second.json()["balance"], at_second.json()["wallet_version"]) == (150, 2)
    assert at_second.json()["currency"] == "EUR"


async def test_entries_are_paginated_in_version_order(api: ApiHarness) -> None:
    client = await api.tenant()
    wallet = await client.wallet()
    for amount in range(1, 6):
        await client.credit(wallet["id"], amount)
    seen, cursor = [], None
    for _ in range(5):
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = (await client.get(f"/v1/wallets/{wallet['id']}/entries", params=params)).json()
        seen += [entry["wallet_version"] for entry in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [1, 2, 3, 4, 5]


async def test_statement_totals_and_csv(api: ApiHarness) -> None:
    client = await api.tenant()
    alice, bob = await client.wallet(), await client.wallet()
    opening = await client.credit(alice["id"], 1_000)
    await asyncio.sleep(0.01)
    start = (await client.credit(alice["id"], 500))["created_at"]
    await client.post(
        "/v1/transfers",
        {
            "from_wallet_id": alice["id"],
            "to_wallet_id": bob["id"],
            "amount": 300,
            "currency": "EUR",
        },
    )
    statement = (
        await client.get(f"/v1/wallets/{alice['id']}/statement", params={"from": start})
    ).json()
    assert opening["entries"]
    assert statement["opening_balance"] == 1_000
    assert statement["total_credits"] == 500 and statement["total_debits"] == 300
    assert statement["closing_balance"] == 1_200
    assert [e["amount"] for e in statement["entries"]] == [500, -300]
    response = await client.get(
        f"/v1/wallets/{alice['id']}/statement",
        params={"from": start},
        headers={"Accept": "text/csv"},
    )
    assert response.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert [int(row["amount"]) for row in rows] == [500, -300]
    assert response.headers["x-closing-balance"] == "1200"


async def test_another_tenants_objects_do_not_exist(api: ApiHarness) -> None:
    owner, stranger = await api.tenant(), await api.tenant()
    wallet = await owner.wallet()
    credit = await owner.credit(wallet["id"], 10)
    assert (await stranger.get(f"/v1/wallets/{wallet['id']}")).status_code == 404
    assert (await stranger.get(f"/v1/transactions/{credit['id']}")).status_code == 404
    theft = await stranger.post(
        "/v1/debits", {"wallet_id": wallet["id"], "amount": 10, "currency": "EUR"}
    )
    assert (theft.status_code, theft.json()["code"]) == (404, "not_found")
    assert (await owner.get(f"/v1/wallets/{wallet['id']}")).json()["balance"] == 10


async def test_scopes_are_enforced(api: ApiHarness) -> None:
    reader = await api.tenant(scopes="read")
    response = await reader.post("/v1/wallets", {"currency": "EUR"})
    assert (response.status_code, response.json()["code"]) == (403, "forbidden")
    writer = await api.tenant(scopes="read,write")
    wallet = await writer.wallet()
    freeze = await writer.post(f"/v1/wallets/{wallet['id']}/freeze", {"reason": "x"})
    assert freeze.status_code == 403
    bad_key = await api.http.get(
        f"/v1/wallets/{wallet['id']}", headers={"Authorization": "Bearer nope"}
    )
    assert (bad_key.status_code, bad_key.json()["code"]) == (401, "unauthorized")


async def test_freeze_blocks_money_out_but_not_in_and_close_needs_zero(api: ApiHarness) -> None:
    client = await api.tenant()
    wallet, other = await client.wallet(), await client.wallet()
    await client.credit(wallet["id"], 100)
    frozen = await client.post(f"/v1/wallets/{wallet['id']}/freeze", {"reason": "suspicious"})
    assert (frozen.status_code, frozen.json()["status"]) == (200, "frozen")
    out = await client.post(
        "/v1/debits", {"wallet_id": wallet["id"], "amount": 1, "currency": "EUR"}
    )
    assert out.json()["code"] == "wallet_frozen"
    transfer_out = await client.post(
        "/v1/transfers",
        {
            "from_wallet_id": wallet["id"],
            "to_wallet_id": other["id"],
            "amount": 1,
            "currency": "EUR",
        },
    )
    assert transfer_out.json()["code"] == "wallet_frozen"
    assert (await client.credit(wallet["id"], 5))["status"] == "posted"
    not_empty = await client.post(f"/v1/wallets/{wallet['id']}/close")
    assert (not_empty.status_code, not_empty.json()["code"]) == (422, "wallet_not_empty")
    assert (await client.post(f"/v1/wallets/{wallet['id']}/unfreeze")).json()["status"] == "active"
    await client.post("/v1/debits", {"wallet_id": wallet["id"], "amount": 105, "currency": "EUR"})
    closed = await client.post(f"/v1/wallets/{wallet['id']}/close")
    assert (closed.status_code, closed.json()["status"]) == (200, "closed")
    money_in = await client.post(
        "/v1/credits", {"wallet_id": wallet["id"], "amount": 1, "currency": "EUR"}
    )
    assert money_in.json()["code"] == "wallet_closed"


async def test_list_wallets_by_owner_is_paginated(api: ApiHarness) -> None:
    client = await api.tenant()
    owner = f"owner-{uuid.uuid4().hex[:6]}"
    ids = [(await client.wallet(owner_id=owner))["id"] for _ in range(3)]
    await client.wallet(owner_id="someone-else")
    first = (await client.get("/v1/wallets", params={"owner_id": owner, "limit": 2})).json()
    second = (
        await client.get(
            "/v1/wallets", params={"owner_id": owner, "limit": 2, "cursor": first["next_cursor"]}
        )
    ).json()
    assert [w["id"] for w in first["data"] + second["data"]] == ids
    assert second["next_cursor"] is None


async def test_concurrent_transfers_conserve_money(api: ApiHarness) -> None:
    client = await api.tenant()
    wallets = [(await client.wallet())["id"] for _ in range(6)]
    for wallet_id in wallets:
        await client.credit(wallet_id, 1_000)

    async def shuffle(seed: int) -> None:
        for step in range(15):
            source = wallets[(seed + step) % len(wallets)]
            target = wallets[(seed * 7 + step * 3 + 1) % len(wallets)]
            if source != target:
                await client.post(
                    "/v1/transfers",
                    {
                        "from_wallet_id": source,
                        "to_wallet_id": target,
                        "amount": 1 + (seed * step) % 400,
                        "currency": "EUR",
                    },
                )

    await asyncio.gather(*(shuffle(seed) for seed in range(12)))
    balances = [(await client.get(f"/v1/wallets/{w}")).json() for w in wallets]
    assert sum(w["balance"] for w in balances) == 6_000
    assert all(w["balance"] >= 0 for w in balances)
    for wallet in balances:
        entries = (
            await client.get(f"/v1/wallets/{wallet['id']}/entries", params={"limit": 500})
        ).json()["data"]
        assert [e["wallet_version"] for e in entries] == list(range(1, wallet["version"] + 1))
        assert entries[-1]["balance_after"] == wallet["balance"]
