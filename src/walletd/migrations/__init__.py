"""Alembic migrations for the walletd schema (run with ``walletd migrate``).

Migrations are plain SQL scripts: :func:`execute_script` sends one through the
driver's simple-query protocol so that a script may hold many statements and
PL/pgSQL bodies, inside the migration's transaction.
"""

from __future__ import annotations

from typing import Any


def execute_script(sql: str) -> None:
    """Run a multi-statement SQL script on the current migration connection."""
    from alembic import op
    from sqlalchemy.util import await_only

    driver_connection: Any = op.get_bind().connection.driver_connection
    await_only(driver_connection.execute(sql))
