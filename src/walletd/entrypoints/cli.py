"""The ``walletd`` command line: migrate, serve, api-keys, audit, relay, events, dev.

Every failure a user can cause or meet (a dependency down, a bad flag value) is one
line on stderr and a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from typing import Annotated, NoReturn

import asyncpg
import typer

from walletd.errors import Unavailable, WalletdError
from walletd.service_layer.tenants import NewKey, create_api_key
from walletd.settings import Settings, load_settings

app = typer.Typer(
    name="walletd",
    help="walletd: a wallet engine.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
api_keys = typer.Typer(help="Manage API keys.", no_args_is_help=True)
app.add_typer(api_keys, name="api-keys")

DatabaseUrl = Annotated[
    str | None, typer.Option("--database-url", help="postgresql://… (else WALLETD_DATABASE_URL)")
]


def fail(message: str, code: int = 1) -> NoReturn:
    typer.echo(f"walletd: {message}", err=True)
    raise typer.Exit(code)


def settings_or_fail(**overrides: object) -> Settings:
    try:
        return load_settings(**overrides)
    except ValueError as error:
        first = str(error).splitlines()
        fail(f"invalid configuration: {' '.join(first[:3])}")


async def check_database(url: str) -> None:
    try:
        connection = await asyncpg.connect(url, timeout=5)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
        raise Unavailable(f"PostgreSQL is unreachable ({type(error).__name__}: {error})") from error
    await connection.close()


async def check_redis(url: str) -> None:
    import redis.asyncio as redis
    from redis.exceptions import RedisError

    client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
    try:
        await client.ping()
    except (RedisError, OSError) as error:
        raise Unavailable(f"Redis is unreachable at {url} ({type(error).__name__})") from error
    finally:
        await client.aclose()


@app.command()
def migrate(database_url: DatabaseUrl = None) -> None:
    """Create or upgrade the schema (safe to run again)."""
    from walletd.adapters.migrations import upgrade

    settings = settings_or_fail(database_url=database_url)
    try:
        asyncio.run(check_database(settings.database_url))
        upgrade(settings.database_url)
    except Unavailable as error:
        fail(error.detail)
    except (OSError, asyncpg.PostgresError) as error:
        fail(f"migration failed: {type(error).__name__}: {error}")
    typer.echo("schema is up to date")


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Address to bind (default 127.0.0.1)")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default 8080)")] = None,
    workers: Annotated[int | None, typer.Option(help="Worker processes (default 1)")] = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Run the HTTP API."""
    import tempfile

    import uvicorn

    from walletd.entrypoints.http.connections import BoundedHttpToolsProtocol

    settings = settings_or_fail(host=host, port=port, workers=workers, database_url=database_url)
    try:
        asyncio.run(check_database(settings.database_url))
        if settings.redis_url:
            asyncio.run(check_redis(settings.redis_url))
    except Unavailable as error:
        fail(error.detail)
    os.environ["WALLETD_DATABASE_URL"] = settings.database_url
    if settings.workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="walletd-metrics-")
    # uvicorn drains in-flight requests on SIGTERM, then re-raises the signal; a drained
    # stop is a clean stop, so the process exits 0.
    signal.signal(signal.SIGTERM, lambda _signum, _frame: sys.exit(0))
    try:
        uvicorn.run(
            "walletd.entrypoints.http.asgi:create_app_from_env",
            factory=True,
            host=settings.host,
            port=settings.port,
            workers=settings.workers,
            loop="uvloop",
            # Header and body deadlines, head size and connection caps: see its module.
            http=BoundedHttpToolsProtocol,
            timeout_keep_alive=settings.http_keep_alive_seconds,
            backlog=settings.http_backlog,
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=10,
        )
    except OSError as error:
        fail(f"cannot listen on {settings.host}:{settings.port}: {error.strerror or error}")


@api_keys.command("create")
def api_keys_create(
    tenant: Annotated[str, typer.Option(help="Tenant name; created on first use")],
    scopes: Annotated[str, typer.Option(help="Comma-separated: read,write,admin")] = "read,write",
    database_url: DatabaseUrl = None,
) -> None:
    """Create an API key; its secret is the last line printed."""
    from walletd.service_layer.tenants import parse_scopes

    settings = settings_or_fail(database_url=database_url)
    try:
        wanted = parse_scopes(scopes)
        new_key = asyncio.run(_create_key(settings.database_url, tenant, wanted))
    except WalletdError as error:
        fail(error.detail)
    typer.echo(
        f"tenant {tenant} ({new_key.tenant_id}), key {new_key.key_id},"
        f" scopes {','.join(new_key.scopes)}"
    )
    typer.echo(new_key.secret)


async def _create_key(url: str, tenant: str, scopes: tuple[str, ...]) -> NewKey:

    await check_database(url)
    connection = await asyncpg.connect(url)
    try:
        return await create_api_key(connection, tenant, scopes)
    except asyncpg.UndefinedTableError as error:
        raise Unavailable("the schema is missing: run `walletd migrate` first") from error
    finally:
        await connection.close()


@app.command()
def dev(
    run_dir: Annotated[str, typer.Option(help="Where the private servers live")] = ".walletd",
    port: Annotated[int, typer.Option(help="API port")] = 8080,
) -> None:
    """Run everything on private embedded servers: PostgreSQL, Redis, Kafka, API, relay."""
    from walletd.entrypoints.dev import run_dev

    try:
        run_dev(run_dir, port)
    except WalletdError as error:
        fail(error.detail)


def _register_commands() -> None:
    from walletd.entrypoints import cli_audit, cli_relay

    cli_relay.register(app)
    cli_audit.register(app)


_register_commands()


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
