"""Schema migrations through Alembic, from code (``walletd migrate`` and the tests)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging

from alembic import command
from alembic.config import Config


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", "walletd:migrations")
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    """Create or upgrade the schema; safe to run again and from several processes.

    Alembic runs its own event loop, so from inside a running loop the work moves
    to a short-lived thread.
    """
    logging.getLogger("alembic").setLevel(logging.WARNING)
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        command.upgrade(alembic_config(database_url), revision)
        return
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as executor:
        executor.submit(command.upgrade, alembic_config(database_url), revision).result()
