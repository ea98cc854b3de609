"""walletd over HTTP: the API and the relay as subprocesses, the wallets, the scenarios.

``walletd serve --workers N`` and ``walletd relay`` run on the embedded servers with
idempotency (Redis), the outbox and the relay on. Each scenario is one run of
``bench.loadgen`` in its own process, with :class:`~bench.processes.TreeSampler`
watching the API, PostgreSQL and the relay meanwhile (peak RSS, CPU seconds).
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from bench.common import REPO_ROOT, walletd_argv
from bench.loadgen import fetch_all
from bench.processes import Children, TreeSampler
from bench.speed import SpeedProbe

CURRENCY = "EUR"
READY_TIMEOUT_SECONDS = 60.0
KEY_TIMEOUT_SECONDS = 60
POOL_MIN, POOL_MAX = 8, 40
SINGLE_POOL = 4096
BATCH_POOL = 8
BATCH_SIZE = 1000
FUND_AMOUNT = 10**9
HOT_FUND_AMOUNT = 10**15
REQUEST_TIMEOUT_SECONDS = 30.0
DRAIN_SECONDS = {"batch_1000": 90.0}
DEFAULT_DRAIN_SECONDS = 30.0
SETUP_CONCURRENCY = 16
RELAY_SCRIPT = (
    "import typer; from walletd.entrypoints import cli_relay; "
    "app = typer.Typer(add_completion=False); cli_relay.register(app); app()"
)
SCENARIOS = ("transfers_uniform", "transfers_hot", "credits", "batch_1000")


@dataclass
class Api:
    """The running API: its process, port and the bench tenant's key."""

    process: subprocess.Popen[bytes]
    port: int
    token: str = ""
    tenant_id: str = ""


def _answers(argv: Sequence[str], env: Mapping[str, str] | None = None) -> bool:
    done = subprocess.run(
        [*argv, "--help"], capture_output=True, timeout=60, check=False, env=env, cwd=REPO_ROOT
    )
    return done.returncode == 0


def relay_command() -> tuple[list[str], str] | None:
    """``walletd relay``; else the relay's Typer fragment when the CLI does not list it yet."""
    if _answers(walletd_argv("relay")):
        return walletd_argv("relay"), "walletd relay"
    if importlib.util.find_spec("walletd.entrypoints.cli_relay") is not None:
        argv = [sys.executable, "-c", RELAY_SCRIPT, "relay"]
        if _answers(argv):
            return argv, "walletd.entrypoints.cli_relay (not yet in the walletd CLI)"
    return None


def audit_command() -> tuple[list[str], str] | None:
    """``walletd audit``; else ``python -m walletd.entrypoints.cli_audit`` when present."""
    if _answers(walletd_argv("audit")):
        return walletd_argv("audit", "--json", "--no-progress"), "walletd audit"
    module = [sys.executable, "-m", "walletd.entrypoints.cli_audit"]
    if importlib.util.find_spec("walletd.entrypoints.cli_audit") is not None and _answers(module):
        return [*module, "--json", "--no-progress"], "python -m walletd.entrypoints.cli_audit"
    return None


def service_env(
    endpoints_env: Mapping[str, str], run_dir: Path, api_workers: int
) -> dict[str, str]:
    """Environment of the API and relay: the embedded servers, pools sized for 64 clients.

    Prometheus runs in multi-process mode (files under the run directory) only with
    several API workers, as ``walletd serve`` itself chooses: one worker counts in
    memory, without a file write and a pid check per update.
    """
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("WALLETD_") and key != "PROMETHEUS_MULTIPROC_DIR"
    }
    env.update(endpoints_env)
    env.update(
        WALLETD_DATABASE_POOL_MIN=str(POOL_MIN),
        WALLETD_DATABASE_POOL_MAX=str(POOL_MAX),
        WALLETD_LOG_LEVEL="WARNING",
    )
    if api_workers > 1:
        metrics_dir = run_dir / "prometheus"
        metrics_dir.mkdir(parents=True, exist_ok=True)
        env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    return env


def wait_ready(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the API exited during start (code {process.returncode})")
        try:
            url = f"http://127.0.0.1:{port}/readyz"
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the API was not ready within {READY_TIMEOUT_SECONDS:.0f} s")


def start_api(
    children: Children, env: Mapping[str, str], port: int, workers: int, log_dir: Path
) -> Api:
    argv = walletd_argv("serve", "--host", "127.0.0.1", "--port", str(port))
    argv += ["--workers", str(workers)]
    process = children.start(argv, env, log_dir / "api.log", cwd=str(REPO_ROOT))
    wait_ready(port, process)
    children.remember_descendants(process)
    return Api(process, port)


def start_relay(
    children: Children, env: Mapping[str, str], log_dir: Path
) -> tuple[subprocess.Popen[bytes] | None, str]:
    found = relay_command()
    if found is None:
        return None, "no relay command found: outbox events stay unpublished"
    argv, how = found
    return children.start(argv, env, log_dir / "relay.log", cwd=str(REPO_ROOT)), how


def create_key(env: Mapping[str, str]) -> tuple[str, str]:
    """``walletd api-keys create``: (secret from the last stdout line, tenant id)."""
    argv = walletd_argv("api-keys", "create", "--tenant", "bench", "--scopes", "read,write,admin")
    done = subprocess.run(
        argv, env=dict(env), capture_output=True, text=True, timeout=KEY_TIMEOUT_SECONDS, check=True
    )
    lines = done.stdout.strip().splitlines()
    tenant = re.search(r"\(([0-9a-f-]{36})\)", lines[0]) if lines else None
    if tenant is None or len(lines) < 2:
        raise RuntimeError(f"unexpected `walletd api-keys create` output: {done.stdout!r}")
    return lines[-1].strip(), tenant.group(1)


# ----------------------------------------------------------------------------- set-up


def _check_all(answers: Sequence[tuple[int, bytes]], expected: int, what: str) -> None:
    bad = [(status, body) for status, body in answers if status != expected]
    if bad:
        status, body = bad[0]
        raise RuntimeError(
            f"{what}: {len(bad)} of {len(answers)} answers were not {expected}"
            f" (first: {status} {body[:300]!r})"
        )


async def create_wallets(api: Api, count: int) -> list[str]:
    """``count`` EUR wallets through the API; their ids."""
    body = [
        ("POST", "/v1/wallets", orjson.dumps({"currency": CURRENCY, "owner_id": f"bench-{n}"}))
        for n in range(count)
    ]
    answers = await fetch_all(api.port, api.token, body, SETUP_CONCURRENCY)
    _check_all(answers, 201, "creating wallets")
    return [orjson.loads(answer)["id"] for _, answer in answers]


async def fund_wallets(api: Api, wallet_ids: Sequence[str], hot_wallet_id: str) -> None:
    """One credit per wallet; the hot wallet's first and alone (it creates the system wallet)."""
    first = [("POST", "/v1/credits", orjson.dumps(_credit(hot_wallet_id, HOT_FUND_AMOUNT)))]
    _check_all(await fetch_all(api.port, api.token, first, 1), 201, "funding the hot wallet")
    credits = [
        ("POST", "/v1/credits", orjson.dumps(_credit(wallet_id, FUND_AMOUNT)))
        for wallet_id in wallet_ids
    ]
    answers = await fetch_all(api.port, api.token, credits, SETUP_CONCURRENCY)
    _check_all(answers, 201, "funding wallets")


def _credit(wallet_id: str, amount: int) -> dict[str, Any]:
    return {"wallet_id": wallet_id, "amount": amount, "currency": CURRENCY}


def _transfer(source: str, destination: str, amount: int) -> dict[str, Any]:
    return {
        "from_wallet_id": source,
        "to_wallet_id": destination,
        "amount": amount,
        "currency": CURRENCY,
    }


def request_pools(
    wallet_ids: Sequence[str], hot_wallet_id: str, seed: int = 11
) -> dict[str, list[dict[str, Any]]]:
    """Pre-built bodies per scenario; the load generator adds a fresh key to each use."""
    rng = random.Random(seed)

    def pair() -> tuple[str, str]:
        source, destination = rng.sample(wallet_ids, 2)
        return source, destination

    def post(path: str, body: Any, items: int = 1) -> dict[str, Any]:
        return {"method": "POST", "path": path, "body": orjson.dumps(body).decode(), "items": items}

    uniform = [
        post("/v1/transfers", _transfer(*pair(), rng.randint(1, 100))) for _ in range(SINGLE_POOL)
    ]
    hot = [
        post("/v1/transfers", _transfer(hot_wallet_id, rng.choice(wallet_ids), rng.randint(1, 100)))
        for _ in range(SINGLE_POOL)
    ]
    credits = [
        post("/v1/credits", _credit(rng.choice(wallet_ids), rng.randint(1, 100)))
        for _ in range(SINGLE_POOL)
    ]
    batches = [
        post(
            "/v1/transfers/batch",
            {
                "atomic": True,
                "transfers": [_transfer(*pair(), rng.randint(1, 100)) for _ in range(BATCH_SIZE)],
            },
            items=BATCH_SIZE,
        )
        for _ in range(BATCH_POOL)
    ]
    return {
        "transfers_uniform": uniform,
        "transfers_hot": hot,
        "credits": credits,
        "batch_1000": batches,
    }


# ----------------------------------------------------------------------------- one run


def other_cpu_share(trees: Mapping[str, Mapping[str, Any]], own_cpu_seconds: float) -> float | None:
    """CPU share of everything else on the machine (other users' tests): the noise."""
    machine = trees.get("machine")
    if not machine:
        return None
    ours = own_cpu_seconds + sum(
        float(tree["cpu_seconds"]) for name, tree in trees.items() if name != "machine"
    )
    others = max(0.0, float(machine["cpu_seconds"]) - ours)
    return round(others / max(1e-9, float(machine["wall_seconds"])), 3)


def run_load(
    children: Children,
    api: Api,
    name: str,
    requests: Sequence[dict[str, Any]],
    concurrency: int,
    seconds: float,
    roots: Mapping[str, int | None],
    run_dir: Path,
) -> dict[str, Any]:
    """One load-generator run of ``seconds`` at ``concurrency``, with the process trees sampled."""
    drain = DRAIN_SECONDS.get(name, DEFAULT_DRAIN_SECONDS)
    spec = {
        "port": api.port,
        "token": api.token,
        "concurrency": concurrency,
        "seconds": seconds,
        "drain_seconds": drain,
        "timeout_seconds": REQUEST_TIMEOUT_SECONDS,
        "seed": concurrency * 7919 + len(name),
        "requests": list(requests),
    }
    spec_path = run_dir / f"loadgen-{name}-c{concurrency}.json"
    spec_path.write_bytes(orjson.dumps(spec))
    sampler = TreeSampler(roots, pss_trees=("api",)).start()
    speed = SpeedProbe().start()
    process = children.start(
        [sys.executable, "-m", "bench.loadgen", str(spec_path)],
        os.environ,
        run_dir / "logs" / "loadgen.log",
        stdout=subprocess.PIPE,
        cwd=str(REPO_ROOT),
    )
    try:
        output, _ = process.communicate(timeout=seconds + drain + 60)
    finally:
        children.stop(process)
        trees = sampler.stop()
        machine_speed = speed.stop()
    if process.returncode != 0 or not output.strip():
        raise RuntimeError(f"load generator failed for {name} (code {process.returncode})")
    result: dict[str, Any] = json.loads(output)
    result.update(scenario=name, processes=trees, machine_speed_ms=machine_speed)
    result["other_cpu_share"] = other_cpu_share(trees, result.get("loadgen_cpu_seconds", 0.0))
    spec_path.unlink(missing_ok=True)
    return result
