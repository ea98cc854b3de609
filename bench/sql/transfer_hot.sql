-- One transfer from the hot wallet 1 to a random other wallet, the way walletd posts it,
-- in raw SQL (every transfer queues on the lock of wallet 1):
-- BEGIN; lock both wallets in id order; one statement that moves the balances and
-- versions and inserts the transaction, its two entries and one outbox event; COMMIT.
-- pgbench -n -M prepared -D nwallets=N -f bench/sql/transfer_hot.sql
\set source 1
\set destination random(2, :nwallets)
\set low least(:source, :destination)
\set high greatest(:source, :destination)
\set amount random(1, 100)
BEGIN;
SELECT id, balance, version FROM bench_raw.wallets WHERE id IN (:low, :high) ORDER BY id FOR UPDATE;
WITH transfer AS MATERIALIZED (
    SELECT gen_random_uuid() AS id, :source::bigint AS source_id,
           :destination::bigint AS destination_id, :amount::bigint AS amount, now() AS created_at
), legs AS (
    SELECT id AS transaction_id, source_id AS wallet_id, -amount AS amount, created_at FROM transfer
    UNION ALL
    SELECT id, destination_id, amount, created_at FROM transfer
), chained AS MATERIALIZED (
    SELECT legs.transaction_id, legs.wallet_id, legs.amount, legs.created_at,
           wallets.balance + legs.amount AS balance_after, wallets.version + 1 AS wallet_version,
           sha256(wallets.last_hash || convert_to(concat_ws('|', legs.transaction_id, legs.wallet_id,
               legs.amount, wallets.balance + legs.amount, wallets.version + 1, legs.created_at),
               'UTF8')) AS hash
    FROM legs JOIN bench_raw.wallets AS wallets ON wallets.id = legs.wallet_id
), new_transaction AS (
    INSERT INTO bench_raw.transactions (id, type, status, amount, from_wallet_id, to_wallet_id,
                                        created_at)
    SELECT id, 'transfer', 'posted', amount, source_id, destination_id, created_at FROM transfer
), new_entries AS (
    INSERT INTO bench_raw.entries (id, transaction_id, wallet_id, amount, balance_after,
                                   wallet_version, hash, created_at)
    SELECT gen_random_uuid(), transaction_id, wallet_id, amount, balance_after, wallet_version,
           hash, created_at
    FROM chained
), new_event AS (
    INSERT INTO bench_raw.outbox (event_id, message_key, payload)
    SELECT gen_random_uuid(), source_id::text,
           jsonb_build_object('specversion', '1.0', 'type', 'transfer.posted', 'source', 'bench',
               'subject', source_id, 'time', created_at,
               'data', jsonb_build_object('transaction_id', id, 'from_wallet_id', source_id,
                   'to_wallet_id', destination_id, 'amount', amount))
    FROM transfer
)
UPDATE bench_raw.wallets AS wallets
SET balance = chained.balance_after, version = chained.wallet_version, last_hash = chained.hash,
    updated_at = chained.created_at
FROM chained WHERE wallets.id = chained.wallet_id;
COMMIT;
