"""Fresh databases on the session's PostgreSQL server, for tests that need their own."""

from __future__ import annotations

from uuid import uuid4

import asyncpg

from walletd.adapters.migrations import upgrade


async def fresh_database(server_url: str) -> str:
    """Create and migrate a new database on the server of ``server_url``; its URL."""
    base = server_url.rpartition("/")[0]
    name = f"walletd_test_{uuid4().hex[:12]}"
    admin = await asyncpg.connect(f"{base}/postgres")
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    url = f"{base}/{name}"
    upgrade(url)
    return url
