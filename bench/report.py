"""The results of ``bench.run``: ratios to the SQL ceiling, the targets, Rich tables, JSON.

Each HTTP figure is divided by the raw-SQL figure of the same run at the same
concurrency (:data:`CEILING_OF`); the issue's targets are checked at the highest
configured concurrency. ``bench/results/latest.json`` holds everything printed here.
"""

from __future__ import annotations

import os
import platform
import subprocess
from collections.abc import Iterable
from typing import Any

import psutil
from rich.console import Console
from rich.table import Table

from bench.common import REPO_ROOT

CEILING_OF = {
    "transfers_uniform": "single_uniform",
    "transfers_hot": "single_hot",
    "credits": "single_uniform",
    "batch_1000": "batch100_uniform",
}


def machine_info() -> dict[str, Any]:
    """Cores, RAM, OS, Python, git commit (and whether the tree had changes), load average."""

    def git(*arguments: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", *arguments], cwd=REPO_ROOT, capture_output=True, text=True, timeout=30
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    status = git("status", "--porcelain")
    return {
        "cores": os.cpu_count(),
        "ram_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "git_commit": git("rev-parse", "HEAD"),
        "git_dirty": bool(status) if status is not None else None,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def find(runs: Iterable[dict[str, Any]], scenario: str, concurrency: int) -> dict[str, Any] | None:
    for run in runs:
        if run.get("scenario") == scenario and run.get("concurrency") == concurrency:
            return run
    return None


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if not numerator or not denominator:
        return None
    return round(numerator / denominator, 3)


def attach_ceilings(results: dict[str, Any]) -> None:
    """Give every HTTP run its raw-SQL ceiling (same run, same concurrency) and the ratio."""
    raw_runs = results.get("raw", {}).get("runs", [])
    for run in results.get("http", {}).get("runs", []):
        ceiling = find(raw_runs, CEILING_OF[run["scenario"]], run["concurrency"])
        ceiling_tps = ceiling.get("transfers_per_second") if ceiling else None
        run["ceiling"] = {
            "scenario": CEILING_OF[run["scenario"]],
            "transfers_per_second": ceiling_tps,
        }
        run["ratio_to_ceiling"] = ratio(run.get("items_per_second"), ceiling_tps)


def _target(
    name: str, value: float | None, wanted: float, at_least: bool, unit: str = ""
) -> dict[str, Any]:
    ok = None if value is None else (value >= wanted if at_least else value <= wanted)
    sign = ">=" if at_least else "<="
    return {"name": name, "value": value, "target": f"{sign} {wanted:g}{unit}", "ok": ok}


def evaluate_targets(results: dict[str, Any], top: int) -> list[dict[str, Any]]:
    """The issue's targets, at the highest concurrency ``top``."""
    raw = results.get("raw", {}).get("runs", [])
    http = results.get("http", {}).get("runs", [])
    reads = results.get("reads", {}).get("runs", [])

    def ips(runs: list[dict[str, Any]], scenario: str) -> float | None:
        run = find(runs, scenario, top)
        key = "items_per_second" if runs is http else "transfers_per_second"
        return run.get(key) if run else None

    uniform_run = find(http, "transfers_uniform", top)
    p99 = uniform_run["latency_ms"]["p99"] if uniform_run else None
    rss = [
        r["processes"]["api"]["peak_process_rss_mb"]
        for r in http + reads
        if "api" in r.get("processes", {})
    ]
    balance_runs = sorted(
        (r for r in reads if r["scenario"] == "balance_at"), key=lambda r: r["concurrency"]
    )
    balance_p99 = balance_runs[0]["latency_ms"]["p99"] if balance_runs else None
    balance_c = balance_runs[0]["concurrency"] if balance_runs else "?"
    uniform = ips(http, "transfers_uniform")
    return [
        _target(
            f"HTTP transfers uniform / raw single uniform @{top}",
            ratio(uniform, ips(raw, "single_uniform")),
            0.40,
            True,
        ),
        _target(
            f"HTTP transfers hot / HTTP transfers uniform @{top}",
            ratio(ips(http, "transfers_hot"), uniform),
            0.90,
            True,
        ),
        _target(
            f"HTTP credits / HTTP transfers uniform @{top}",
            ratio(ips(http, "credits"), uniform),
            0.90,
            True,
        ),
        _target(
            f"HTTP batch (1000/request) / raw 100-per-transaction @{top}",
            ratio(ips(http, "batch_1000"), ips(raw, "batch100_uniform")),
            0.50,
            True,
        ),
        _target(f"p99 latency, HTTP transfers uniform @{top}", p99, 50, False, " ms"),
        _target(
            "API worker peak RSS (largest process)", max(rss) if rss else None, 250, False, " MB"
        ),
        _target(f"p99 latency, balance at a past time @{balance_c}", balance_p99, 5, False, " ms"),
    ]


# ----------------------------------------------------------------------------- tables


def _f(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def _problems(run: dict[str, Any]) -> str:
    statuses = {k: v for k, v in run.get("statuses", {}).items() if not k.startswith("2")}
    statuses.update(run.get("errors", {}))
    return ", ".join(f"{k}:{v}" for k, v in sorted(statuses.items())) or "0"


def raw_table(results: dict[str, Any]) -> Table:
    table = Table(title="Raw-SQL ceiling (pgbench, bench_raw schema)")
    for column in (
        "scenario",
        "c",
        "tps",
        "transfers/s",
        "avg ms",
        "failed",
        "PG CPU",
        "pgbench CPU",
        "others' CPU",
        "speed ms",
    ):
        table.add_column(column, justify="right" if column != "scenario" else "left")
    for run in results.get("raw", {}).get("runs", []):
        processes = run.get("processes", {})
        table.add_row(
            run["scenario"],
            str(run["concurrency"]),
            _f(run.get("tps")),
            _f(run.get("transfers_per_second"), 0),
            _f(run.get("latency_avg_ms"), 2),
            _f(run.get("failed_transactions")),
            _f(processes.get("postgres", {}).get("cpu_share"), 2),
            _f(run.get("pgbench_cpu_share"), 2),
            _f(run.get("other_cpu_share"), 2),
            _f(run.get("machine_speed_ms", {}).get("median_ms"), 2),
        )
    return table


def http_table(results: dict[str, Any], section: str, title: str) -> Table:
    table = Table(title=title)
    columns = (
        "scenario",
        "c",
        "items/s",
        "req/s",
        "p50 ms",
        "p99 ms",
        "non-2xx/errors",
        "ceiling/s",
        "ratio",
        "loadgen CPU",
        "API CPU",
        "PG CPU",
        "others' CPU",
        "API RSS / PSS MB",
        "speed ms",
    )
    for column in columns:
        table.add_column(column, justify="right" if column != "scenario" else "left")
    for run in results.get(section, {}).get("runs", []):
        processes, latency = run.get("processes", {}), run.get("latency_ms", {})
        table.add_row(
            run["scenario"],
            str(run["concurrency"]),
            _f(run.get("items_per_second"), 0),
            _f(run.get("requests_per_second"), 0),
            _f(latency.get("p50"), 2),
            _f(latency.get("p99"), 2),
            _problems(run),
            _f(run.get("ceiling", {}).get("transfers_per_second"), 0),
            _f(run.get("ratio_to_ceiling"), 2),
            _f(run.get("loadgen_cpu_share"), 2),
            _f(processes.get("api", {}).get("cpu_share"), 2),
            _f(processes.get("postgres", {}).get("cpu_share"), 2),
            _f(run.get("other_cpu_share"), 2),
            f"{_f(processes.get('api', {}).get('peak_rss_mb'), 0)}"
            f" / {_f(processes.get('api', {}).get('peak_pss_mb'), 0)}",
            _f(run.get("machine_speed_ms", {}).get("median_ms"), 2),
        )
    return table


def targets_table(targets: list[dict[str, Any]]) -> Table:
    table = Table(title="Targets of the issue")
    for column in ("target", "value", "wanted", "met"):
        table.add_column(column, justify="left" if column == "target" else "right")
    for target in targets:
        met = {True: "[green]yes[/]", False: "[red]NO[/]", None: "n/a"}[target["ok"]]
        table.add_row(target["name"], _f(target["value"], 3), target["target"], met)
    return table


def print_report(results: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console(width=180)
    machine = results.get("machine", {})
    console.print(
        f"walletd benchmark — {machine.get('cores')} cores, {machine.get('ram_gb')} GB RAM, "
        f"PostgreSQL {machine.get('postgres_version')}, "
        f"commit {str(machine.get('git_commit'))[:12]}"
        f"{' (+ uncommitted changes)' if machine.get('git_dirty') else ''}, "
        f"load average at start {machine.get('load_average_at_start')}"
    )
    if results.get("raw"):
        console.print(raw_table(results))
    if results.get("http"):
        console.print(
            http_table(results, "http", "walletd over HTTP (idempotency, outbox, Redis on)")
        )
    if results.get("reads"):
        big = results.get("big_wallet", {})
        title = f"Reads on a wallet with {big.get('entries', '?'):,} entries" if big else "Reads"
        console.print(http_table(results, "reads", title))
    for key in ("big_wallet", "audit", "profile"):
        if results.get(key):
            console.print(f"[bold]{key}[/]: {_brief(results[key])}")
    if results.get("targets"):
        console.print(targets_table(results["targets"]))


def _brief(section: dict[str, Any]) -> str:
    if "self_by_package" in section:
        top = ", ".join(f"{p['name']} {p['share']:.0%}" for p in section["self_by_package"][:8])
        return f"{section['samples']} samples of one worker; self time by package: {top}"
    keep = {k: v for k, v in section.items() if k not in ("output_tail", "first_violations")}
    return str(keep)
