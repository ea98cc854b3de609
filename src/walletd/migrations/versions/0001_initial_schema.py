"""Initial schema: tenants, keys, wallets, ledger, holds, idempotency, outbox, audit log.

The database enforces the ledger's rules on its own, so that no bug in the engine
can break them silently: entries of a transaction sum to zero per currency
(deferred constraint trigger), one entry per wallet version, the balance floor for
user wallets, immutable entries, and one reversal per transaction.

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

from walletd.migrations import execute_script

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

SCHEMA = r"""
CREATE TABLE tenants (
    id          uuid PRIMARY KEY,
    name        text NOT NULL UNIQUE CHECK (length(name) BETWEEN 1 AND 200),
    risk_rules  jsonb NOT NULL DEFAULT '[]'::jsonb,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE api_keys (
    id          uuid PRIMARY KEY,
    tenant_id   uuid NOT NULL REFERENCES tenants (id),
    secret_hash bytea NOT NULL,
    scopes      text[] NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz,
    CHECK (scopes <@ ARRAY['read', 'write', 'admin']::text[])
);

CREATE TABLE wallets (
    id                  uuid PRIMARY KEY,
    tenant_id           uuid NOT NULL REFERENCES tenants (id),
    currency            char(3) NOT NULL,
    owner_id            text,
    is_system           boolean NOT NULL DEFAULT false,
    status              text NOT NULL DEFAULT 'active'
                        CHECK (status IN ('active', 'frozen', 'closed')),
    balance             bigint NOT NULL DEFAULT 0,
    held_balance        bigint NOT NULL DEFAULT 0 CHECK (held_balance >= 0),
    overdraft_limit     bigint NOT NULL DEFAULT 0 CHECK (overdraft_limit >= 0),
    version             bigint NOT NULL DEFAULT 0 CHECK (version >= 0),
    last_hash           bytea NOT NULL DEFAULT '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea,
    limits              jsonb NOT NULL DEFAULT '{}'::jsonb,
    debit_day           date,
    debit_day_total     bigint NOT NULL DEFAULT 0 CHECK (debit_day_total >= 0),
    metadata            jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at          timestamptz NOT NULL,
    updated_at          timestamptz NOT NULL,
    CONSTRAINT wallets_balance_floor
        CHECK (is_system OR balance::numeric - held_balance >= -overdraft_limit)
);
CREATE UNIQUE INDEX wallets_one_system_wallet ON wallets (tenant_id, currency) WHERE is_system;
CREATE INDEX wallets_by_owner ON wallets (tenant_id, owner_id, created_at, id);
CREATE INDEX wallets_by_tenant ON wallets (tenant_id, created_at, id);

CREATE TABLE transactions (
    id                      uuid PRIMARY KEY,
    tenant_id               uuid NOT NULL REFERENCES tenants (id),
    type                    text NOT NULL
                            CHECK (type IN ('credit', 'debit', 'transfer', 'capture', 'reversal')),
    status                  text NOT NULL CHECK (status IN ('posted', 'pending_review', 'rejected')),
    amount                  bigint NOT NULL CHECK (amount > 0),
    currency                char(3) NOT NULL,
    reference               text,
    metadata                jsonb NOT NULL DEFAULT '{}'::jsonb,
    from_wallet_id          uuid REFERENCES wallets (id),
    to_wallet_id            uuid REFERENCES wallets (id),
    reverses_transaction_id uuid UNIQUE REFERENCES transactions (id),
    hold_id                 uuid,
    review_rule             text,
    created_at              timestamptz NOT NULL,
    updated_at              timestamptz NOT NULL
);
CREATE INDEX transactions_pending_review ON transactions (tenant_id, created_at)
    WHERE status = 'pending_review';

CREATE TABLE entries (
    id              uuid PRIMARY KEY,
    transaction_id  uuid NOT NULL REFERENCES transactions (id),
    wallet_id       uuid NOT NULL REFERENCES wallets (id),
    currency        char(3) NOT NULL,
    amount          bigint NOT NULL CHECK (amount <> 0),
    balance_after   bigint NOT NULL,
    wallet_version  bigint NOT NULL CHECK (wallet_version > 0),
    hash            bytea NOT NULL,
    created_at      timestamptz NOT NULL,
    CONSTRAINT entries_one_per_wallet_version UNIQUE (wallet_id, wallet_version)
);
CREATE INDEX entries_by_transaction ON entries (transaction_id);
CREATE INDEX entries_by_wallet_time ON entries (wallet_id, created_at, wallet_version);

-- Entries of one transaction sum to zero per currency and there are at least two:
-- checked at commit, once all of the transaction's entries are written.
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

-- The ledger is append-only: an entry, once written, never changes or disappears.
CREATE FUNCTION walletd_forbid_entry_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'ledger entries are append-only' USING ERRCODE = 'restrict_violation';
END $$;
CREATE TRIGGER entries_append_only BEFORE UPDATE OR DELETE ON entries
    FOR EACH ROW EXECUTE FUNCTION walletd_forbid_entry_change();

CREATE TABLE holds (
    id              uuid PRIMARY KEY,
    tenant_id       uuid NOT NULL REFERENCES tenants (id),
    wallet_id       uuid NOT NULL REFERENCES wallets (id),
    amount          bigint NOT NULL CHECK (amount > 0),
    currency        char(3) NOT NULL,
    status          text NOT NULL CHECK (status IN ('pending', 'captured', 'voided', 'expired')),
    captured_amount bigint CHECK (captured_amount > 0 AND captured_amount <= amount),
    transaction_id  uuid REFERENCES transactions (id),
    expires_at      timestamptz,
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL
);
CREATE INDEX holds_expiring ON holds (expires_at) WHERE status = 'pending';
CREATE INDEX holds_by_wallet ON holds (wallet_id) WHERE status = 'pending';

CREATE TABLE idempotency_keys (
    tenant_id       uuid NOT NULL REFERENCES tenants (id),
    key             text NOT NULL,
    method          text NOT NULL,
    path            text NOT NULL,
    request_hash    bytea NOT NULL,
    status_code     integer NOT NULL,
    response_body   bytea NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, key)
);
CREATE INDEX idempotency_keys_by_age ON idempotency_keys (created_at);

CREATE TABLE outbox (
    id              bigserial PRIMARY KEY,
    event_id        uuid NOT NULL UNIQUE,
    tenant_id       uuid NOT NULL,
    message_key     text NOT NULL,
    event_type      text NOT NULL,
    payload         jsonb NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    published_at    timestamptz
);
CREATE INDEX outbox_unpublished ON outbox (id) WHERE published_at IS NULL;
CREATE INDEX outbox_by_time ON outbox (created_at);

CREATE TABLE audit_log (
    id          bigserial PRIMARY KEY,
    tenant_id   uuid NOT NULL REFERENCES tenants (id),
    key_id      uuid,
    action      text NOT NULL,
    target_type text NOT NULL,
    target_id   text NOT NULL,
    before      jsonb,
    after       jsonb,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX audit_log_by_tenant ON audit_log (tenant_id, id);
"""

DROP = """
DROP TABLE IF EXISTS audit_log, outbox, idempotency_keys, holds, entries, transactions,
    wallets, api_keys, tenants CASCADE;
DROP FUNCTION IF EXISTS walletd_check_transaction_balanced();
DROP FUNCTION IF EXISTS walletd_forbid_entry_change();
"""


def upgrade() -> None:
    execute_script(SCHEMA)


def downgrade() -> None:
    execute_script(DROP)
