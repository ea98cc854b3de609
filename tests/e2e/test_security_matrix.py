"""The security matrix (SPEC 2): 401, 403 and 404-across-tenants for every /v1 route.

The routes come from the application's own route table, so a new route cannot escape:
every /v1 route must enforce exactly one scope (``require("read"|"write"|"admin")``
from deps.py, read off its dependencies) and have an entry in ``ROUTE_CASES`` saying
which scope SPEC 3 gives it and how to call it. Each route is then called with no
key, with wrong keys, with a key of the right tenant lacking the scope, and with
another tenant's full key on tenant A's real objects: 401, 401, 403, 404 — and
tenant A's objects are unchanged afterwards.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx
import pytest
import pytest_asyncio
from fastapi.dependencies.models import Dependant
from fastapi.routing import iter_route_contexts

from tests.support.api import ApiHarness, TenantClient, api_harness
from walletd.entrypoints.http.app import create_app
from walletd.entrypoints.http.deps import REQUIRED_SCOPE
from walletd.settings import Settings

SCOPES = ("read", "write", "admin")
MAX_DEPENDENCY_DEPTH = 20
REVIEW_THRESHOLD = 5_000
module_loop = pytest.mark.asyncio(loop_scope="module")


@dataclass(frozen=True)
class World:
    """Tenant A's real objects, and the keys that call the routes."""

    api: ApiHarness
    owner: TenantClient
    lacking: dict[str, TenantClient]  # scope → a key of tenant A with every other scope
    intruder: TenantClient  # tenant B, every scope
    ids: dict[str, str]  # wallet, payee, credit, hold, review, owner_id, tenant


@dataclass(frozen=True)
class Call:
    path_params: dict[str, str] = field(default_factory=dict)
    body: Any = None
    query: dict[str, str] = field(default_factory=dict)


# How tenant B's call on A's objects must end:
#   path/body: 404 (A's id in the path / in the body);
#   list: 200, and none of A's ids appear; own: 2xx on B's own data, A untouched.
Isolation = Literal["path", "body", "list", "own"]


@dataclass(frozen=True)
class RouteCase:
    scope: str
    isolation: Isolation
    build: Callable[[dict[str, str]], Call]


def money(ids: dict[str, str], amount: int = 1) -> dict[str, Any]:
    return {"wallet_id": ids["wallet"], "amount": amount, "currency": "EUR"}


def transfer(ids: dict[str, str]) -> dict[str, Any]:
    return {
        "from_wallet_id": ids["wallet"],
        "to_wallet_id": ids["payee"],
        "amount": 1,
        "currency": "EUR",
    }


def on_wallet(body: Any = None, **query: str) -> Callable[[dict[str, str]], Call]:
    return lambda ids: Call({"wallet_id": ids["wallet"]}, body, dict(query))


def on_transaction(kind: str, body: Any = None) -> Callable[[dict[str, str]], Call]:
    return lambda ids: Call({"transaction_id": ids[kind]}, body)


def on_hold(body: Any = None) -> Callable[[dict[str, str]], Call]:
    return lambda ids: Call({"hold_id": ids["hold"]}, body)


REVIEW_RULE = {
    "name": "matrix-review",
    "type": "amount_at_least",
    "params": {"amount": REVIEW_THRESHOLD, "currency": "EUR"},
    "action": "review",
}
REASON = {"reason": "security matrix"}

# Every /v1 route: the scope SPEC 3 gives it, what tenant B's call must do, a valid call.
ROUTE_CASES: dict[tuple[str, str], RouteCase] = {
    ("POST", "/v1/wallets"): RouteCase("write", "own", lambda ids: Call(body={"currency": "EUR"})),
    ("GET", "/v1/wallets"): RouteCase(
        "read", "list", lambda ids: Call(query={"owner_id": ids["owner_id"]})
    ),
    ("GET", "/v1/wallets/{wallet_id}"): RouteCase("read", "path", on_wallet()),
    ("POST", "/v1/wallets/{wallet_id}/freeze"): RouteCase("admin", "path", on_wallet(REASON)),
    ("POST", "/v1/wallets/{wallet_id}/unfreeze"): RouteCase("admin", "path", on_wallet(REASON)),
    ("POST", "/v1/wallets/{wallet_id}/close"): RouteCase("admin", "path", on_wallet(REASON)),
    ("PUT", "/v1/wallets/{wallet_id}/limits"): RouteCase(
        "admin", "path", on_wallet({"max_debit_amount": 1})
    ),
    ("GET", "/v1/wallets/{wallet_id}/entries"): RouteCase("read", "path", on_wallet()),
    ("GET", "/v1/wallets/{wallet_id}/balance"): RouteCase(
        "read", "path", on_wallet(at="2100-01-01T00:00:00Z")
    ),
    ("GET", "/v1/wallets/{wallet_id}/statement"): RouteCase("read", "path", on_wallet()),
    ("POST", "/v1/credits"): RouteCase("write", "body", lambda ids: Call(body=money(ids))),
    ("POST", "/v1/debits"): RouteCase("write", "body", lambda ids: Call(body=money(ids))),
    ("POST", "/v1/transfers"): RouteCase("write", "body", lambda ids: Call(body=transfer(ids))),
    ("POST", "/v1/transfers/batch"): RouteCase(
        "write", "body", lambda ids: Call(body={"transfers": [transfer(ids)], "atomic": True})
    ),
    ("GET", "/v1/transactions/{transaction_id}"): RouteCase(
        "read", "path", on_transaction("credit")
    ),
    ("POST", "/v1/transactions/{transaction_id}/reverse"): RouteCase(
        "admin", "path", on_transaction("credit", REASON)
    ),
    ("POST", "/v1/holds"): RouteCase("write", "body", lambda ids: Call(body=money(ids))),
    ("GET", "/v1/holds/{hold_id}"): RouteCase("read", "path", on_hold()),
    ("POST", "/v1/holds/{hold_id}/capture"): RouteCase("write", "path", on_hold({"amount": 1})),
    ("POST", "/v1/holds/{hold_id}/void"): RouteCase("write", "path", on_hold()),
    ("GET", "/v1/risk-rules"): RouteCase("admin", "list", lambda ids: Call()),
    ("PUT", "/v1/risk-rules"): RouteCase("admin", "own", lambda ids: Call(body={"rules": []})),
    ("GET", "/v1/reviews"): RouteCase("admin", "list", lambda ids: Call()),
    ("POST", "/v1/reviews/{transaction_id}/approve"): RouteCase(
        "admin", "path", on_transaction("review", REASON)
    ),
    ("POST", "/v1/reviews/{transaction_id}/reject"): RouteCase(
        "admin", "path", on_transaction("review", REASON)
    ),
    ("GET", "/v1/audit-log"): RouteCase("admin", "list", lambda ids: Call()),
}


def route_table() -> dict[tuple[str, str], Dependant]:
    """Every (method, path) under /v1 in the app's route table, with its dependencies."""
    app = create_app(Settings(database_url="postgresql://unused@127.0.0.1:1/unused"))  # no I/O
    routes: dict[tuple[str, str], Dependant] = {}
    for context in iter_route_contexts(app.routes):
        path = context.path or ""
        if not path.startswith("/v1/"):
            continue
        for method in sorted(context.methods or ()):
            routes[(method, path)] = context.dependant
    assert len(routes) >= len(ROUTE_CASES) // 2, "the route table looks empty"
    return routes


ROUTES = route_table()
ROUTE_IDS = [f"{method} {path}" for method, path in ROUTES]


def enforced_scopes(dependant: Dependant) -> set[str]:
    """The scopes a route's dependency tree enforces through ``deps.require``."""
    found: set[str] = set()
    pending = [(dependant, 0)]
    while pending:
        node, depth = pending.pop()
        assert depth <= MAX_DEPENDENCY_DEPTH, "dependency tree deeper than expected"
        if node.call in REQUIRED_SCOPE:
            found.add(REQUIRED_SCOPE[node.call])
        pending.extend((child, depth + 1) for child in node.dependencies)
    return found


def case_for(route: tuple[str, str]) -> RouteCase:
    method, path = route
    case = ROUTE_CASES.get(route)
    if case is None:
        pytest.fail(
            f"route {method} {path} has no entry in ROUTE_CASES"
            " (tests/e2e/test_security_matrix.py): add its scope from SPEC 3,"
            " how tenant B's call on tenant A's objects must end, and a valid call"
        )
    return case


@pytest.mark.parametrize("route", list(ROUTES), ids=ROUTE_IDS)
def test_every_v1_route_enforces_the_scope_spec_gives_it(route: tuple[str, str]) -> None:
    case = case_for(route)
    scopes = enforced_scopes(ROUTES[route])
    assert scopes, (
        f"route {route[0]} {route[1]} enforces no scope: declare one with"
        " ReadPrincipal / WritePrincipal / AdminPrincipal (deps.require)"
    )
    assert scopes == {case.scope}


def test_route_cases_name_only_routes_that_exist() -> None:
    stale = sorted(set(ROUTE_CASES) - set(ROUTES))
    assert stale == [], f"ROUTE_CASES lists routes the app no longer has: {stale}"


async def new_world(api: ApiHarness) -> World:
    name = f"matrix-{uuid.uuid4().hex[:12]}"
    owner = await api.tenant(name=name)
    lacking = {
        scope: await api.tenant(",".join(s for s in SCOPES if s != scope), name=name)
        for scope in SCOPES
    }
    owner_id = f"owner-{uuid.uuid4().hex}"
    wallet = await owner.wallet(owner_id=owner_id)
    payee = await owner.wallet()
    credit = await owner.credit(wallet["id"], 10 * REVIEW_THRESHOLD)
    hold = await owner.post("/v1/holds", money({"wallet": wallet["id"]}, 100))
    assert hold.status_code == 201, hold.text
    assert (await owner.put("/v1/risk-rules", {"rules": [REVIEW_RULE]})).status_code == 200
    review = await owner.post("/v1/debits", money({"wallet": wallet["id"]}, REVIEW_THRESHOLD))
    assert (review.status_code, review.json()["status"]) == (202, "pending_review")
    ids = {
        "wallet": wallet["id"],
        "payee": payee["id"],
        "credit": credit["id"],
        "hold": hold.json()["id"],
        "review": review.json()["id"],
        "owner_id": owner_id,
        "tenant": str(owner.tenant_id),
    }
    return World(api, owner, lacking, await api.tenant(), ids)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(database_url: str) -> AsyncIterator[World]:
    async with api_harness(Settings(database_url=database_url)) as api:
        yield await new_world(api)


async def call_route(
    world: World, route: tuple[str, str], authorization: str | None
) -> httpx.Response:
    method, path = route
    call = case_for(route).build(world.ids)
    headers = {"Idempotency-Key": uuid.uuid4().hex}
    if authorization is not None:
        headers["Authorization"] = authorization
    return await world.api.http.request(
        method,
        path.format(**call.path_params),
        json=call.body,
        params=call.query,
        headers=headers,
    )


def assert_problem(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert (problem["status"], problem["code"]) == (status, code)


@module_loop
@pytest.mark.parametrize("route", list(ROUTES), ids=ROUTE_IDS)
async def test_no_key_is_401(world: World, route: tuple[str, str]) -> None:
    assert_problem(await call_route(world, route, None), 401, "unauthorized")


def wrong_authorizations(world: World) -> list[str]:
    real = world.owner.key
    prefix, key_id, _ = real.split("_", 2)
    return [
        "Bearer not-a-walletd-key",
        f"Bearer {prefix}_{uuid.uuid4().hex}_{'x' * 43}",  # well formed, unknown key id
        f"Bearer {prefix}_{key_id}_{'x' * 43}",  # a real key id, the wrong secret
        f"Basic {real}",  # the right secret, the wrong scheme
        "Bearer ",
    ]


@module_loop
@pytest.mark.parametrize("route", list(ROUTES), ids=ROUTE_IDS)
async def test_wrong_keys_are_401(world: World, route: tuple[str, str]) -> None:
    for authorization in wrong_authorizations(world):
        assert_problem(await call_route(world, route, authorization), 401, "unauthorized")


@module_loop
@pytest.mark.parametrize("route", list(ROUTES), ids=ROUTE_IDS)
async def test_a_key_lacking_the_scope_is_403(world: World, route: tuple[str, str]) -> None:
    client = world.lacking[case_for(route).scope]
    response = await call_route(world, route, f"Bearer {client.key}")
    assert_problem(response, 403, "forbidden")


async def snapshot(world: World) -> dict[str, Any]:
    """Everything tenant A could see change if tenant B's call leaked through."""
    ids, owner = world.ids, world.owner
    paths = {
        "wallet": f"/v1/wallets/{ids['wallet']}",
        "payee": f"/v1/wallets/{ids['payee']}",
        "credit": f"/v1/transactions/{ids['credit']}",
        "hold": f"/v1/holds/{ids['hold']}",
        "review": f"/v1/transactions/{ids['review']}",
        "rules": "/v1/risk-rules",
        "entries": f"/v1/wallets/{ids['wallet']}/entries",
    }
    state: dict[str, Any] = {}
    for name, path in paths.items():
        response = await owner.get(path)
        assert response.status_code == 200, response.text
        state[name] = response.json()
    return state


@module_loop
@pytest.mark.parametrize("route", list(ROUTES), ids=ROUTE_IDS)
async def test_another_tenants_objects_do_not_exist_for_the_caller(
    world: World, route: tuple[str, str]
) -> None:
    before = await snapshot(world)
    isolation = case_for(route).isolation
    response = await call_route(world, route, f"Bearer {world.intruder.key}")
    if isolation in ("path", "body"):
        assert_problem(response, 404, "not_found")
    elif isolation == "list":
        assert response.status_code == 200, response.text
        leaked = [name for name, value in world.ids.items() if value in response.text]
        assert leaked == [], f"tenant B sees tenant A's {leaked}"
        assert "matrix-review" not in response.text
    else:
        assert 200 <= response.status_code < 300, response.text
    assert await snapshot(world) == before
