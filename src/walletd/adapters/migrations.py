"""Schema migrations through Alembic, from code (``walletd migrate`` and the tests)."""

from __future__ import annotations

import logging

from alembic import command
from alembic.config import Config


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", "walletd:migrations")
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    """Create or upgrade the schema; safe to run again and from several processes."""
    logging.getLogger("alembic").setLevel(logging.WARNING)
    command.upgrade(alembic_config(database_url), revision)
