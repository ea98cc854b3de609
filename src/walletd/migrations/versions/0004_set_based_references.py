"""Check the ledger's references once per statement instead of once per row.

A foreign key checks each inserted row on its own: one query and one row lock per
reference, so a batch of 1,000 transfers paid 7,000 of them (five on the transaction
rows, two on each entry) — a third of the time PostgreSQL spent writing it. The
references of ``transactions`` and ``entries`` are now checked by statement-level
triggers over each statement's new rows, as the balance of entries already is:

- a new transaction's tenant exists, and its ``from_wallet_id`` / ``to_wallet_id``
  exist and belong to that tenant (stricter than before: a foreign key does not
  check the tenant);
- a new entry's transaction exists, and its wallet exists with the entry's currency
  (stricter too).

A foreign key also forbade deleting or re-keying a row still referenced. The ledger
never deletes: tenants, wallets and transactions now refuse ``DELETE`` and any change
of their ``id`` (entries already refused both), so no reference can dangle later.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-05
"""

from walletd.migrations import execute_script

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

UPGRADE = r"""
ALTER TABLE entries
    DROP CONSTRAINT entries_transaction_id_fkey,
    DROP CONSTRAINT entries_wallet_id_fkey;
ALTER TABLE transactions
    DROP CONSTRAINT transactions_tenant_id_fkey,
    DROP CONSTRAINT transactions_from_wallet_id_fkey,
    DROP CONSTRAINT transactions_to_wallet_id_fkey;

-- Index probes, row by row: never a hash or merge join over a whole ledger table.
CREATE FUNCTION walletd_check_transaction_references() RETURNS trigger
LANGUAGE plpgsql SET enable_hashjoin = off SET enable_mergejoin = off AS $$
DECLARE
    dangling uuid;
BEGIN
    SELECT t.id INTO dangling FROM new_transactions t
    WHERE NOT EXISTS (SELECT 1 FROM tenants x WHERE x.id = t.tenant_id)
       OR (t.from_wallet_id IS NOT NULL AND NOT EXISTS (
               SELECT 1 FROM wallets w WHERE w.id = t.from_wallet_id AND w.tenant_id = t.tenant_id))
       OR (t.to_wallet_id IS NOT NULL AND NOT EXISTS (
               SELECT 1 FROM wallets w WHERE w.id = t.to_wallet_id AND w.tenant_id = t.tenant_id))
    LIMIT 1;
    IF dangling IS NOT NULL THEN
        RAISE EXCEPTION 'transaction % names a tenant or wallet that does not exist', dangling
            USING ERRCODE = 'foreign_key_violation', CONSTRAINT = 'transactions_references';
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER transactions_references AFTER INSERT ON transactions
    REFERENCING NEW TABLE AS new_transactions
    FOR EACH STATEMENT EXECUTE FUNCTION walletd_check_transaction_references();

CREATE FUNCTION walletd_check_entry_references() RETURNS trigger
LANGUAGE plpgsql SET enable_hashjoin = off SET enable_mergejoin = off AS $$
DECLARE
    dangling uuid;
BEGIN
    SELECT n.id INTO dangling FROM new_entries n
    WHERE NOT EXISTS (SELECT 1 FROM transactions t WHERE t.id = n.transaction_id)
       OR NOT EXISTS (SELECT 1 FROM wallets w WHERE w.id = n.wallet_id AND w.currency = n.currency)
    LIMIT 1;
    IF dangling IS NOT NULL THEN
        RAISE EXCEPTION 'entry % names a transaction or wallet that does not exist', dangling
            USING ERRCODE = 'foreign_key_violation', CONSTRAINT = 'entries_references';
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER entries_references AFTER INSERT ON entries
    REFERENCING NEW TABLE AS new_entries
    FOR EACH STATEMENT EXECUTE FUNCTION walletd_check_entry_references();

CREATE FUNCTION walletd_forbid_delete_or_rekey() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% rows are never deleted and keep their id', TG_TABLE_NAME
        USING ERRCODE = 'restrict_violation';
END $$;
CREATE TRIGGER tenants_kept BEFORE DELETE OR UPDATE OF id ON tenants
    FOR EACH ROW EXECUTE FUNCTION walletd_forbid_delete_or_rekey();
CREATE TRIGGER wallets_kept BEFORE DELETE OR UPDATE OF id ON wallets
    FOR EACH ROW EXECUTE FUNCTION walletd_forbid_delete_or_rekey();
CREATE TRIGGER transactions_kept BEFORE DELETE OR UPDATE OF id ON transactions
    FOR EACH ROW EXECUTE FUNCTION walletd_forbid_delete_or_rekey();
"""

DOWNGRADE = r"""
DROP TRIGGER transactions_kept ON transactions;
DROP TRIGGER wallets_kept ON wallets;
DROP TRIGGER tenants_kept ON tenants;
DROP FUNCTION walletd_forbid_delete_or_rekey();
DROP TRIGGER entries_references ON entries;
DROP FUNCTION walletd_check_entry_references();
DROP TRIGGER transactions_references ON transactions;
DROP FUNCTION walletd_check_transaction_references();
ALTER TABLE transactions
    ADD CONSTRAINT transactions_tenant_id_fkey FOREIGN KEY (tenant_id) REFERENCES tenants (id),
    ADD CONSTRAINT transactions_from_wallet_id_fkey
        FOREIGN KEY (from_wallet_id) REFERENCES wallets (id),
    ADD CONSTRAINT transactions_to_wallet_id_fkey FOREIGN KEY (to_wallet_id) REFERENCES wallets (id);
ALTER TABLE entries
    ADD CONSTRAINT entries_transaction_id_fkey
        FOREIGN KEY (transaction_id) REFERENCES transactions (id),
    ADD CONSTRAINT entries_wallet_id_fkey FOREIGN KEY (wallet_id) REFERENCES wallets (id);
"""


def upgrade() -> None:
    execute_script(UPGRADE)


def downgrade() -> None:
    execute_script(DOWNGRADE)
