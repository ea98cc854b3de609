"""The summary of a chaos run: built as JSON, printed for people, written to files."""

from __future__ import annotations

import asyncio
import contextlib
import json
import statistics
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tests.chaos.faults import FAULT_KINDS, FaultRecord
from tests.chaos.workload import ACKNOWLEDGED, REFUSED, UNRESOLVED, Operation

if TYPE_CHECKING:
    from tests.chaos.checks import Verdict
    from tests.chaos.harness import ChaosConfig

PROGRESS_EVERY_SECONDS = 30.0


@contextlib.contextmanager
def timed(phases: dict[str, float], name: str) -> Iterator[None]:
    """Record how long the ``with`` body took under ``phases[name]`` (seconds)."""
    started = time.monotonic()
    try:
        yield
    finally:
        phases[name] = round(time.monotonic() - started, 2)


def _percentile(values: Sequence[float], fraction: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def operations_summary(operations: Sequence[Operation], seconds: float) -> dict[str, Any]:
    """Counts by outcome, refusals by code, retries by reason, latency of whole operations."""
    outcomes = Counter(op.outcome for op in operations)
    reasons: Counter[str] = Counter()
    for operation in operations:
        reasons.update(operation.uncertain)
    latencies_ms = [op.seconds * 1000 for op in operations if op.outcome != UNRESOLVED]
    return {
        "attempted": len(operations),
        "acknowledged": outcomes[ACKNOWLEDGED],
        "acknowledged_by_replay": sum(1 for op in operations if op.replayed and op.status == 201),
        "refused": outcomes[REFUSED],
        "refused_by_code": dict(Counter(op.code for op in operations if op.outcome == REFUSED)),
        "retried_operations": sum(1 for op in operations if op.retries),
        "retries": sum(op.retries for op in operations),
        "retry_reasons": dict(reasons.most_common()),
        "unresolved": outcomes[UNRESOLVED],
        "unresolved_keys": [op.key for op in operations if op.outcome == UNRESOLVED][:20],
        "per_second": round(len(operations) / seconds, 1) if seconds else 0.0,
        "latency_ms": {
            "p50": round(_percentile(latencies_ms, 0.50), 1),
            "p99": round(_percentile(latencies_ms, 0.99), 1),
            "max": round(max(latencies_ms, default=0.0), 1),
        },
    }


def faults_summary(records: Sequence[FaultRecord]) -> dict[str, Any]:
    """Per kind: how many, outage and recovery times; then every fault."""
    by_kind: dict[str, Any] = {}
    for kind in FAULT_KINDS:
        mine = [record for record in records if record.kind == kind]
        recoveries = [r.recovery_seconds for r in mine if r.recovery_seconds is not None]
        by_kind[kind] = {
            "count": len(mine),
            "outage_seconds_mean": round(statistics.fmean([r.outage_seconds for r in mine]), 3)
            if mine
            else None,
            "recovery_seconds_max": round(max(recoveries), 3) if recoveries else None,
            "recovery_seconds_mean": round(statistics.fmean(recoveries), 3) if recoveries else None,
            "not_recovered": len(mine) - len(recoveries),
        }
    return {
        "injected": len(records),
        "by_kind": by_kind,
        "records": [record.as_json() for record in records],
    }


def build(
    config: ChaosConfig,
    funding: Sequence[Operation],
    operations: Sequence[Operation],
    faults: Sequence[FaultRecord],
    seconds: float,
    verdicts: Sequence[Verdict],
    phases: dict[str, float],
) -> dict[str, Any]:
    return {
        "seed": config.seed,
        "ok": all(verdict.ok for verdict in verdicts),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "config": config.as_json(),
        "workload_seconds": round(seconds, 1),
        "funding": {
            "wallets": len(funding),
            "credited_total": sum(int(op.body["amount"]) for op in funding),
        },
        "operations": operations_summary(operations, seconds),
        "faults": faults_summary(faults),
        "verdicts": {verdict.name: verdict.as_json() for verdict in verdicts},
        "phases_seconds": phases,
    }


def render(summary: dict[str, Any]) -> str:
    """The summary for a terminal: counts, faults by kind, one line per verdict."""
    ops, faults = summary["operations"], summary["faults"]
    lines = [
        f"chaos summary — seed {summary['seed']}, workload {summary['workload_seconds']} s",
        f"  operations: {ops['attempted']} attempted, {ops['acknowledged']} acknowledged"
        f" ({ops['acknowledged_by_replay']} by a replay), {ops['refused']} refused"
        f" {ops['refused_by_code']}, {ops['unresolved']} unresolved",
        f"  retries: {ops['retries']} in {ops['retried_operations']} operations"
        f" {ops['retry_reasons']}",
        f"  throughput {ops['per_second']}/s; operation latency p50 {ops['latency_ms']['p50']} ms,"
        f" p99 {ops['latency_ms']['p99']} ms, max {ops['latency_ms']['max']} ms",
        f"  faults: {faults['injected']} injected",
    ]
    for kind, numbers in faults["by_kind"].items():
        lines.append(
            f"    {kind:<18} x{numbers['count']:<3} outage mean {numbers['outage_seconds_mean']} s,"
            f" back to 200 in mean {numbers['recovery_seconds_mean']} s /"
            f" max {numbers['recovery_seconds_max']} s"
        )
    for name, verdict in summary["verdicts"].items():
        lines.append(f"  [{'PASS' if verdict['ok'] else 'FAIL'}] {name}: {verdict['detail']}")
    lines.append(f"  phases (s): {summary['phases_seconds']}")
    lines.append(f"chaos: {'OK' if summary['ok'] else 'FAILED'} (seed {summary['seed']})")
    return "\n".join(lines)


def write(summary: dict[str, Any], paths: Sequence[Path]) -> None:
    """Write the summary as JSON to every path (nothing when there is no summary)."""
    if not summary:
        return
    text = json.dumps(summary, indent=2, sort_keys=False) + "\n"
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


async def progress(operations: list[Operation], started: float, stop: asyncio.Event) -> None:
    """Print a line every ``PROGRESS_EVERY_SECONDS`` while the workload runs."""
    while not stop.is_set():
        await asyncio.sleep(PROGRESS_EVERY_SECONDS)
        outcomes = Counter(op.outcome for op in operations)
        retries = sum(op.retries for op in operations)
        print(
            f"chaos: t={time.monotonic() - started:.0f} s, {len(operations)} operations,"
            f" {outcomes[ACKNOWLEDGED]} acknowledged, {outcomes[REFUSED]} refused,"
            f" {retries} retries",
            flush=True,
        )
