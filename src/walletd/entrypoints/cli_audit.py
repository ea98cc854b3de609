"""The ``walletd audit`` command: check every invariant (docs/audit.md), name what is broken.

A Typer fragment: :func:`register` adds the command to the main CLI. Exit 0 when every
invariant holds, 1 when any is broken (each broken wallet/transaction named on stdout),
2 when PostgreSQL cannot be audited (one line on stderr, never a traceback).
``--every`` runs it as a job, forever, with Prometheus gauges on 127.0.0.1.
Also runnable alone: ``python -m walletd.entrypoints.cli_audit --help``.
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Annotated, NoReturn

import orjson
import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from walletd.adapters import audit_metrics
from walletd.errors import Unavailable
from walletd.service_layer.audit import (
    DEFAULT_MAX_LISTED,
    DEFAULT_OUTBOX_MARGIN_SECONDS,
    MAX_LISTED_LIMIT,
    AuditOptions,
    AuditReport,
    ProgressSink,
    run_audit,
)
from walletd.settings import load_settings

EXIT_OK = 0
EXIT_VIOLATIONS = 1
EXIT_UNAVAILABLE = 2
DEFAULT_METRICS_PORT = 9465
MIN_EVERY_SECONDS = 1.0
MAX_EVERY_SECONDS = 7 * 86_400.0


class RichProgress:
    """A :class:`ProgressSink` drawing one bar per phase on stderr."""

    def __init__(self, progress: Progress) -> None:
        self._progress = progress
        self._task: TaskID | None = None

    def phase(self, description: str, total: int | None) -> None:
        self._close_task()
        self._task = self._progress.add_task(description, total=total or None)

    def advance(self, count: int) -> None:
        if self._task is not None:
            self._progress.advance(self._task, count)

    def _close_task(self) -> None:
        if self._task is not None:
            # The entry count is an estimate: a finished phase shows as complete.
            done = next(task.completed for task in self._progress.tasks if task.id == self._task)
            self._progress.update(self._task, total=done or 1, completed=done or 1)


def fail(message: str, code: int = EXIT_UNAVAILABLE) -> NoReturn:
    typer.echo(f"walletd audit: {message}", err=True)
    raise typer.Exit(code)


def audit_once(url: str, options: AuditOptions, show_progress: bool) -> AuditReport:
    """One audit, with a progress bar on stderr unless told not to."""
    console = Console(stderr=True)
    if not show_progress or not console.is_terminal:
        return asyncio.run(run_audit(url, options))
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=True) as progress:
        sink: ProgressSink = RichProgress(progress)
        return asyncio.run(run_audit(url, options, sink))


def summary_line(report: AuditReport) -> str:
    checked = ", ".join(f"{count} {what}" for what, count in report.checked.items())
    if report.ok:
        return f"ok: every invariant holds (checked {checked})"
    per_invariant = ", ".join(
        f"invariant {invariant}: {count}"
        for invariant, count in sorted(report.by_invariant.items())
    )
    return f"FAILED: {report.violation_count} violations ({per_invariant}; checked {checked})"


def print_report(report: AuditReport, as_json: bool) -> None:
    """The report on stdout: JSON, or one line per violation after a summary."""
    if as_json:
        typer.echo(orjson.dumps(report.to_json()).decode())
        return
    typer.echo(summary_line(report))
    for violation in report.violations:
        subject = violation.subject.removesuffix("_id")
        typer.echo(
            f"invariant {violation.invariant}  {subject} {violation.subject_id}: {violation.detail}"
        )
    hidden = report.violation_count - len(report.violations)
    if hidden > 0:
        typer.echo(f"... and {hidden} more violations not listed (see --max-listed)")
    if report.outbox_checked_since is not None:
        typer.echo(f"outbox events checked for transactions since {report.outbox_checked_since}")


def run_forever(
    url: str, options: AuditOptions, every_seconds: float, max_runs: int | None, as_json: bool
) -> None:
    """Audit every ``every_seconds`` (``max_runs`` times, or until stopped)."""
    runs = 0
    while max_runs is None or runs < max_runs:
        started = time.monotonic()
        try:
            report = asyncio.run(run_audit(url, options))
        except Unavailable as error:
            audit_metrics.record_failure()
            typer.echo(f"walletd audit: {error.detail}", err=True)
        else:
            duration = time.monotonic() - started
            audit_metrics.record_run(dict(report.by_invariant), time.time(), duration)
            if as_json:
                typer.echo(orjson.dumps(report.to_json()).decode())
            else:
                typer.echo(f"{summary_line(report)} in {duration:.1f} s")
        runs += 1
        if max_runs is None or runs < max_runs:
            time.sleep(max(0.0, every_seconds - (time.monotonic() - started)))


def audit(
    json_output: Annotated[
        bool, typer.Option("--json", help="Print a machine-readable JSON report.")
    ] = False,
    database_url: Annotated[
        str | None,
        typer.Option("--database-url", help="postgresql://… (else WALLETD_DATABASE_URL)"),
    ] = None,
    every: Annotated[
        float | None,
        typer.Option(
            "--every",
            min=MIN_EVERY_SECONDS,
            max=MAX_EVERY_SECONDS,
            help="Run forever, every SECONDS, exposing Prometheus gauges.",
        ),
    ] = None,
    metrics_port: Annotated[
        int, typer.Option("--metrics-port", min=1, max=65535, help="Port for --every metrics.")
    ] = DEFAULT_METRICS_PORT,
    max_runs: Annotated[
        int | None, typer.Option("--max-runs", min=1, help="With --every: stop after N runs.")
    ] = None,
    max_listed: Annotated[
        int, typer.Option("--max-listed", min=1, max=MAX_LISTED_LIMIT, help="Violations listed.")
    ] = DEFAULT_MAX_LISTED,
    outbox_margin_seconds: Annotated[
        float,
        typer.Option(
            "--outbox-margin-seconds",
            min=0,
            max=86_400,
            help="After outbox pruning: skip transactions this close to its oldest row.",
        ),
    ] = DEFAULT_OUTBOX_MARGIN_SECONDS,
    progress: Annotated[
        bool, typer.Option("--progress/--no-progress", help="Progress bar on stderr.")
    ] = True,
) -> None:
    """Check every invariant of the ledger (exit 0), or name what is broken (exit 1)."""
    try:
        url = load_settings(database_url=database_url).database_url
    except ValueError as error:
        fail(f"invalid configuration: {str(error).splitlines()[0]}")
    options = AuditOptions(max_listed=max_listed, outbox_margin_seconds=outbox_margin_seconds)
    if every is not None:
        try:
            audit_metrics.serve(metrics_port)
        except OSError as error:
            fail(f"cannot serve metrics on 127.0.0.1:{metrics_port}: {error.strerror or error}")
        run_forever(url, options, every, max_runs, json_output)
        return
    try:
        report = audit_once(url, options, progress)
    except Unavailable as error:
        fail(error.detail)
    print_report(report, json_output)
    raise typer.Exit(EXIT_OK if report.ok else EXIT_VIOLATIONS)


def register(app: typer.Typer) -> None:
    """Add ``audit`` to the main ``walletd`` command line."""
    app.command("audit")(audit)


def main() -> None:
    """``python -m walletd.entrypoints.cli_audit``: the audit command on its own."""
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    register(app)
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
