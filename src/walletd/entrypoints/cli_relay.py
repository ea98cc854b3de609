"""CLI commands of the outbox relay: ``walletd relay`` and ``walletd events replay``.

The main CLI calls :func:`register`. A dependency that cannot be reached at start,
or a bad option, is one line on stderr and a non-zero exit, never a traceback;
SIGTERM and SIGINT stop the relay cleanly (unacknowledged rows stay unpublished).
"""

from __future__ import annotations

import asyncio
import signal
from datetime import datetime
from typing import Annotated, NoReturn
from uuid import UUID

import structlog
import typer
import uvloop

from walletd.errors import WalletdError
from walletd.runtime import settle_heap
from walletd.service_layer.relay import ReplayFilter, run_relay, run_replay
from walletd.settings import Settings, load_settings

DatabaseUrl = Annotated[
    str | None, typer.Option("--database-url", help="postgresql://… (else WALLETD_DATABASE_URL)")
]
KafkaBootstrap = Annotated[
    str | None,
    typer.Option("--kafka-bootstrap", help="host:port[,…] (else WALLETD_KAFKA_BOOTSTRAP)"),
]
KafkaTopic = Annotated[
    str | None, typer.Option("--kafka-topic", help="Topic (else WALLETD_KAFKA_TOPIC)")
]
LOG_LEVELS = {"DEBUG": 10, "INFO": 20, "WARNING": 30, "ERROR": 40, "CRITICAL": 50}


def _fail(command: str, message: str, code: int = 1) -> NoReturn:
    typer.echo(f"walletd {command}: {' '.join(message.split())}", err=True)
    raise typer.Exit(code)


def _settings(command: str, **overrides: object) -> Settings:
    try:
        return load_settings(**overrides)
    except ValueError as error:
        _fail(command, f"invalid configuration: {' '.join(str(error).splitlines()[:3])}")


def _configure_logging(settings: Settings) -> None:
    """Filter structlog by ``log_level`` unless the main CLI configured it already."""
    if structlog.is_configured():
        return
    level = LOG_LEVELS.get(settings.log_level.upper(), 20)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(level))


async def _relay_until_signalled(settings: Settings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signal_number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signal_number, stop.set)
    settle_heap()
    await run_relay(settings, stop)


def relay(
    metrics_port: Annotated[
        int,
        typer.Option(
            "--metrics-port",
            min=0,
            max=65535,
            help="Serve Prometheus metrics on 127.0.0.1:PORT (0 = off)",
        ),
    ] = 0,
    database_url: DatabaseUrl = None,
    kafka_bootstrap: KafkaBootstrap = None,
    kafka_topic: KafkaTopic = None,
) -> None:
    """Drain the outbox to Kafka; several may run, only one publishes at a time."""
    settings = _settings(
        "relay", database_url=database_url, kafka_bootstrap=kafka_bootstrap,
        kafka_topic=kafka_topic,
    )  # fmt: skip
    _configure_logging(settings)
    if metrics_port:
        from prometheus_client import start_http_server

        try:
            start_http_server(metrics_port, addr="127.0.0.1")
        except OSError as error:
            _fail("relay", f"cannot serve metrics on 127.0.0.1:{metrics_port}: {error}")
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(_relay_until_signalled(settings))
    except WalletdError as error:
        _fail("relay", error.detail)


def _timestamp(value: str | None, option: str) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as error:
        raise typer.BadParameter(
            f"{value!r} is not an RFC 3339 timestamp", param_hint=option
        ) from error
    if parsed.tzinfo is None:
        raise typer.BadParameter("the timestamp needs a time zone (Z or ±hh:mm)", param_hint=option)
    return parsed


def _wallet(value: str | None) -> UUID | None:
    if value is None:
        return None
    try:
        return UUID(value)
    except ValueError as error:
        raise typer.BadParameter(f"{value!r} is not a UUID", param_hint="--wallet") from error


def replay(
    from_: Annotated[str, typer.Option("--from", help="RFC 3339; events stored at or after it")],
    to: Annotated[
        str | None, typer.Option("--to", help="RFC 3339; events stored before it")
    ] = None,
    wallet: Annotated[
        str | None, typer.Option("--wallet", help="Only this wallet's events")
    ] = None,
    database_url: DatabaseUrl = None,
    kafka_bootstrap: KafkaBootstrap = None,
    kafka_topic: KafkaTopic = None,
) -> None:
    """Republish stored events (same ids, same payloads) in outbox order."""
    start = _timestamp(from_, "--from")
    assert start is not None
    replay_filter = ReplayFilter(start, _timestamp(to, "--to"), _wallet(wallet))
    settings = _settings(
        "events replay", database_url=database_url, kafka_bootstrap=kafka_bootstrap,
        kafka_topic=kafka_topic,
    )  # fmt: skip
    _configure_logging(settings)
    try:
        sent = _replay_with_progress(settings, replay_filter)
    except WalletdError as error:
        _fail("events replay", error.detail)
    typer.echo(f"replayed {sent} events to {settings.kafka_topic}")


def _replay_with_progress(settings: Settings, replay_filter: ReplayFilter) -> int:
    from rich.console import Console
    from rich.progress import Progress

    with Progress(console=Console(stderr=True), transient=False) as progress:
        task = progress.add_task("replaying events", total=None)

        def on_total(total: int) -> None:
            progress.update(task, total=total)

        def on_progress(count: int) -> None:
            progress.advance(task, count)

        return asyncio.run(
            run_replay(settings, replay_filter, on_total=on_total, on_progress=on_progress)
        )


def register(app: typer.Typer) -> None:
    """Add ``relay`` and the ``events`` group (``events replay``) to the main CLI."""
    app.command("relay")(relay)
    events = typer.Typer(help="Outbox events.", no_args_is_help=True)
    events.command("replay")(replay)
    app.add_typer(events, name="events")
