"""Wake the relay on outbox inserts: NOTIFY walletd_outbox once per inserting statement.

A statement-level trigger sends one notification per INSERT statement (and
PostgreSQL folds identical notifications of one transaction into one), delivered
at commit only, so the relay never hears of rows it cannot see yet. The relay
also polls, so a lost notification delays an event by one poll interval at most.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

from walletd.migrations import execute_script

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

UPGRADE = r"""
CREATE FUNCTION walletd_notify_outbox() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('walletd_outbox', '');
    RETURN NULL;
END $$;
CREATE TRIGGER outbox_notify AFTER INSERT ON outbox
    FOR EACH STATEMENT EXECUTE FUNCTION walletd_notify_outbox();
"""

DOWNGRADE = """
DROP TRIGGER IF EXISTS outbox_notify ON outbox;
DROP FUNCTION IF EXISTS walletd_notify_outbox();
"""


def upgrade() -> None:
    execute_script(UPGRADE)


def downgrade() -> None:
    execute_script(DOWNGRADE)
