"""Check that transactions balance once per inserting statement, not once per entry.

Until now a deferred constraint trigger ran for every entry row at commit: two
queries over ``entries`` per row, so a group of 64 transfers paid 256 queries at
commit. The check now runs once per ``INSERT`` statement on ``entries``, over that
statement's new rows (a transition table): for every transaction among them, the new
entries number at least two and sum to zero in each currency.

This is as strict as before, and stricter in one way: the entries of a transaction
must now balance within one statement (walletd always writes a transaction's entries
in one statement), so a transaction cannot be balanced by a later statement of the
same database transaction. Entries added later to a transaction must balance among
themselves, which keeps the whole balanced.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24
"""

from walletd.migrations import execute_script

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

UPGRADE = r"""
DROP TRIGGER entries_balanced ON entries;
DROP FUNCTION walletd_check_transaction_balanced();

CREATE FUNCTION walletd_check_entries_balanced() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    unbalanced uuid;
BEGIN
    SELECT per_currency.transaction_id INTO unbalanced
    FROM (
        SELECT transaction_id, sum(amount) AS total, count(*) AS entry_count
        FROM new_entries
        GROUP BY transaction_id, currency
    ) AS per_currency
    GROUP BY per_currency.transaction_id
    HAVING sum(per_currency.entry_count) < 2 OR bool_or(per_currency.total <> 0)
    LIMIT 1;
    IF unbalanced IS NOT NULL THEN
        RAISE EXCEPTION 'transaction % is unbalanced', unbalanced
            USING ERRCODE = 'check_violation', CONSTRAINT = 'entries_balanced';
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER entries_balanced AFTER INSERT ON entries
    REFERENCING NEW TABLE AS new_entries
    FOR EACH STATEMENT EXECUTE FUNCTION walletd_check_entries_balanced();
"""

DOWNGRADE = r"""
DROP TRIGGER entries_balanced ON entries;
DROP FUNCTION walletd_check_entries_balanced();

CREATE FUNCTION walletd_check_transaction_balanced() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    entry_count bigint;
    unbalanced  text;
BEGIN
    SELECT count(*) INTO entry_count FROM entries WHERE transaction_id = NEW.transaction_id;
    SELECT currency INTO unbalanced FROM entries WHERE transaction_id = NEW.transaction_id
        GROUP BY currency HAVING sum(amount) <> 0 LIMIT 1;
    IF entry_count < 2 OR unbalanced IS NOT NULL THEN
        RAISE EXCEPTION 'transaction % is unbalanced', NEW.transaction_id
            USING ERRCODE = 'check_violation', CONSTRAINT = 'entries_balanced';
    END IF;
    RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER entries_balanced AFTER INSERT ON entries
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
    EXECUTE FUNCTION walletd_check_transaction_balanced();
"""


def upgrade() -> None:
    execute_script(UPGRADE)


def downgrade() -> None:
    execute_script(DOWNGRADE)
