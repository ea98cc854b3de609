-- 100 transfers in ONE database transaction (every source is the hot wallet 1), the way walletd posts a batch:
-- BEGIN; lock every wallet involved in id order with one statement; one statement that
-- chains each wallet's entries in order (running balance and version by window
-- functions), inserts 100 transactions, 200 entries and 100 outbox events and
-- writes each wallet's final state; COMMIT.  Written by `python -m bench.raw_sql`.
-- pgbench -n -M prepared -D nwallets=N -f bench/sql/batch100_hot.sql

\set amount random(1, 100)
\set s1 1
\set d1 random(2, :nwallets)
\set s2 1
\set d2 random(2, :nwallets)
\set s3 1
\set d3 random(2, :nwallets)
\set s4 1
\set d4 random(2, :nwallets)
\set s5 1
\set d5 random(2, :nwallets)
\set s6 1
\set d6 random(2, :nwallets)
\set s7 1
\set d7 random(2, :nwallets)
\set s8 1
\set d8 random(2, :nwallets)
\set s9 1
\set d9 random(2, :nwallets)
\set s10 1
\set d10 random(2, :nwallets)
\set s11 1
\set d11 random(2, :nwallets)
\set s12 1
\set d12 random(2, :nwallets)
\set s13 1
\set d13 random(2, :nwallets)
\set s14 1
\set d14 random(2, :nwallets)
\set s15 1
\set d15 random(2, :nwallets)
\set s16 1
\set d16 random(2, :nwallets)
\set s17 1
\set d17 random(2, :nwallets)
\set s18 1
\set d18 random(2, :nwallets)
\set s19 1
\set d19 random(2, :nwallets)
\set s20 1
\set d20 random(2, :nwallets)
\set s21 1
\set d21 random(2, :nwallets)
\set s22 1
\set d22 random(2, :nwallets)
\set s23 1
\set d23 random(2, :nwallets)
\set s24 1
\set d24 random(2, :nwallets)
\set s25 1
\set d25 random(2, :nwallets)
\set s26 1
\set d26 random(2, :nwallets)
\set s27 1
\set d27 random(2, :nwallets)
\set s28 1
\set d28 random(2, :nwallets)
\set s29 1
\set d29 random(2, :nwallets)
\set s30 1
\set d30 random(2, :nwallets)
\set s31 1
\set d31 random(2, :nwallets)
\set s32 1
\set d32 random(2, :nwallets)
\set s33 1
\set d33 random(2, :nwallets)
\set s34 1
\set d34 random(2, :nwallets)
\set s35 1
\set d35 random(2, :nwallets)
\set s36 1
\set d36 random(2, :nwallets)
\set s37 1
\set d37 random(2, :nwallets)
\set s38 1
\set d38 random(2, :nwallets)
\set s39 1
\set d39 random(2, :nwallets)
\set s40 1
\set d40 random(2, :nwallets)
\set s41 1
\set d41 random(2, :nwallets)
\set s42 1
\set d42 random(2, :nwallets)
\set s43 1
\set d43 random(2, :nwallets)
\set s44 1
\set d44 random(2, :nwallets)
\set s45 1
\set d45 random(2, :nwallets)
\set s46 1
\set d46 random(2, :nwallets)
\set s47 1
\set d47 random(2, :nwallets)
\set s48 1
\set d48 random(2, :nwallets)
\set s49 1
\set d49 random(2, :nwallets)
\set s50 1
\set d50 random(2, :nwallets)
\set s51 1
\set d51 random(2, :nwallets)
\set s52 1
\set d52 random(2, :nwallets)
\set s53 1
\set d53 random(2, :nwallets)
\set s54 1
\set d54 random(2, :nwallets)
\set s55 1
\set d55 random(2, :nwallets)
\set s56 1
\set d56 random(2, :nwallets)
\set s57 1
\set d57 random(2, :nwallets)
\set s58 1
\set d58 random(2, :nwallets)
\set s59 1
\set d59 random(2, :nwallets)
\set s60 1
\set d60 random(2, :nwallets)
\set s61 1
\set d61 random(2, :nwallets)
\set s62 1
\set d62 random(2, :nwallets)
\set s63 1
\set d63 random(2, :nwallets)
\set s64 1
\set d64 random(2, :nwallets)
\set s65 1
\set d65 random(2, :nwallets)
\set s66 1
\set d66 random(2, :nwallets)
\set s67 1
\set d67 random(2, :nwallets)
\set s68 1
\set d68 random(2, :nwallets)
\set s69 1
\set d69 random(2, :nwallets)
\set s70 1
\set d70 random(2, :nwallets)
\set s71 1
\set d71 random(2, :nwallets)
\set s72 1
\set d72 random(2, :nwallets)
\set s73 1
\set d73 random(2, :nwallets)
\set s74 1
\set d74 random(2, :nwallets)
\set s75 1
\set d75 random(2, :nwallets)
\set s76 1
\set d76 random(2, :nwallets)
\set s77 1
\set d77 random(2, :nwallets)
\set s78 1
\set d78 random(2, :nwallets)
\set s79 1
\set d79 random(2, :nwallets)
\set s80 1
\set d80 random(2, :nwallets)
\set s81 1
\set d81 random(2, :nwallets)
\set s82 1
\set d82 random(2, :nwallets)
\set s83 1
\set d83 random(2, :nwallets)
\set s84 1
\set d84 random(2, :nwallets)
\set s85 1
\set d85 random(2, :nwallets)
\set s86 1
\set d86 random(2, :nwallets)
\set s87 1
\set d87 random(2, :nwallets)
\set s88 1
\set d88 random(2, :nwallets)
\set s89 1
\set d89 random(2, :nwallets)
\set s90 1
\set d90 random(2, :nwallets)
\set s91 1
\set d91 random(2, :nwallets)
\set s92 1
\set d92 random(2, :nwallets)
\set s93 1
\set d93 random(2, :nwallets)
\set s94 1
\set d94 random(2, :nwallets)
\set s95 1
\set d95 random(2, :nwallets)
\set s96 1
\set d96 random(2, :nwallets)
\set s97 1
\set d97 random(2, :nwallets)
\set s98 1
\set d98 random(2, :nwallets)
\set s99 1
\set d99 random(2, :nwallets)
\set s100 1
\set d100 random(2, :nwallets)
BEGIN;
SELECT id FROM bench_raw.wallets
WHERE id = ANY (ARRAY[:s1, :d1, :s2, :d2, :s3, :d3, :s4, :d4, :s5, :d5, :s6, :d6, :s7, :d7, :s8, :d8, :s9, :d9, :s10, :d10, :s11, :d11, :s12, :d12, :s13, :d13, :s14, :d14, :s15, :d15, :s16, :d16, :s17, :d17, :s18, :d18, :s19, :d19, :s20, :d20, :s21, :d21, :s22, :d22, :s23, :d23, :s24, :d24, :s25, :d25, :s26, :d26, :s27, :d27, :s28, :d28, :s29, :d29, :s30, :d30, :s31, :d31, :s32, :d32, :s33, :d33, :s34, :d34, :s35, :d35, :s36, :d36, :s37, :d37, :s38, :d38, :s39, :d39, :s40, :d40, :s41, :d41, :s42, :d42, :s43, :d43, :s44, :d44, :s45, :d45, :s46, :d46, :s47, :d47, :s48, :d48, :s49, :d49, :s50, :d50, :s51, :d51, :s52, :d52, :s53, :d53, :s54, :d54, :s55, :d55, :s56, :d56, :s57, :d57, :s58, :d58, :s59, :d59, :s60, :d60, :s61, :d61, :s62, :d62, :s63, :d63, :s64, :d64, :s65, :d65, :s66, :d66, :s67, :d67, :s68, :d68, :s69, :d69, :s70, :d70, :s71, :d71, :s72, :d72, :s73, :d73, :s74, :d74, :s75, :d75, :s76, :d76, :s77, :d77, :s78, :d78, :s79, :d79, :s80, :d80, :s81, :d81, :s82, :d82, :s83, :d83, :s84, :d84, :s85, :d85, :s86, :d86, :s87, :d87, :s88, :d88, :s89, :d89, :s90, :d90, :s91, :d91, :s92, :d92, :s93, :d93, :s94, :d94, :s95, :d95, :s96, :d96, :s97, :d97, :s98, :d98, :s99, :d99, :s100, :d100]::bigint[])
ORDER BY id FOR UPDATE;
WITH pairs (n, source_id, destination_id) AS (VALUES
    (1, :s1::bigint, :d1::bigint),
    (2, :s2, :d2),
    (3, :s3, :d3),
    (4, :s4, :d4),
    (5, :s5, :d5),
    (6, :s6, :d6),
    (7, :s7, :d7),
    (8, :s8, :d8),
    (9, :s9, :d9),
    (10, :s10, :d10),
    (11, :s11, :d11),
    (12, :s12, :d12),
    (13, :s13, :d13),
    (14, :s14, :d14),
    (15, :s15, :d15),
    (16, :s16, :d16),
    (17, :s17, :d17),
    (18, :s18, :d18),
    (19, :s19, :d19),
    (20, :s20, :d20),
    (21, :s21, :d21),
    (22, :s22, :d22),
    (23, :s23, :d23),
    (24, :s24, :d24),
    (25, :s25, :d25),
    (26, :s26, :d26),
    (27, :s27, :d27),
    (28, :s28, :d28),
    (29, :s29, :d29),
    (30, :s30, :d30),
    (31, :s31, :d31),
    (32, :s32, :d32),
    (33, :s33, :d33),
    (34, :s34, :d34),
    (35, :s35, :d35),
    (36, :s36, :d36),
    (37, :s37, :d37),
    (38, :s38, :d38),
    (39, :s39, :d39),
    (40, :s40, :d40),
    (41, :s41, :d41),
    (42, :s42, :d42),
    (43, :s43, :d43),
    (44, :s44, :d44),
    (45, :s45, :d45),
    (46, :s46, :d46),
    (47, :s47, :d47),
    (48, :s48, :d48),
    (49, :s49, :d49),
    (50, :s50, :d50),
    (51, :s51, :d51),
    (52, :s52, :d52),
    (53, :s53, :d53),
    (54, :s54, :d54),
    (55, :s55, :d55),
    (56, :s56, :d56),
    (57, :s57, :d57),
    (58, :s58, :d58),
    (59, :s59, :d59),
    (60, :s60, :d60),
    (61, :s61, :d61),
    (62, :s62, :d62),
    (63, :s63, :d63),
    (64, :s64, :d64),
    (65, :s65, :d65),
    (66, :s66, :d66),
    (67, :s67, :d67),
    (68, :s68, :d68),
    (69, :s69, :d69),
    (70, :s70, :d70),
    (71, :s71, :d71),
    (72, :s72, :d72),
    (73, :s73, :d73),
    (74, :s74, :d74),
    (75, :s75, :d75),
    (76, :s76, :d76),
    (77, :s77, :d77),
    (78, :s78, :d78),
    (79, :s79, :d79),
    (80, :s80, :d80),
    (81, :s81, :d81),
    (82, :s82, :d82),
    (83, :s83, :d83),
    (84, :s84, :d84),
    (85, :s85, :d85),
    (86, :s86, :d86),
    (87, :s87, :d87),
    (88, :s88, :d88),
    (89, :s89, :d89),
    (90, :s90, :d90),
    (91, :s91, :d91),
    (92, :s92, :d92),
    (93, :s93, :d93),
    (94, :s94, :d94),
    (95, :s95, :d95),
    (96, :s96, :d96),
    (97, :s97, :d97),
    (98, :s98, :d98),
    (99, :s99, :d99),
    (100, :s100, :d100)
), transfers AS MATERIALIZED (
    SELECT n, source_id, destination_id, :amount::bigint AS amount, gen_random_uuid() AS id,
           now() AS created_at
    FROM pairs
), legs AS (
    SELECT id AS transaction_id, n, 0 AS leg, source_id AS wallet_id, -amount AS amount,
           created_at
    FROM transfers
    UNION ALL
    SELECT id, n, 1, destination_id, amount, created_at FROM transfers
), chained AS MATERIALIZED (
    SELECT legs.transaction_id, legs.wallet_id, legs.amount, legs.created_at,
           wallets.balance + sum(legs.amount) OVER running AS balance_after,
           wallets.version + row_number() OVER running AS wallet_version,
           wallets.last_hash,
           row_number() OVER running = count(*) OVER (PARTITION BY legs.wallet_id) AS is_last
    FROM legs JOIN bench_raw.wallets AS wallets ON wallets.id = legs.wallet_id
    WINDOW running AS (PARTITION BY legs.wallet_id ORDER BY legs.n, legs.leg
                       ROWS UNBOUNDED PRECEDING)
), hashed AS MATERIALIZED (
    SELECT chained.*,
           sha256(last_hash || convert_to(concat_ws('|', transaction_id, wallet_id, amount,
               balance_after, wallet_version, created_at), 'UTF8')) AS hash
    FROM chained
), new_transactions AS (
    INSERT INTO bench_raw.transactions (id, type, status, amount, from_wallet_id, to_wallet_id,
                                        created_at)
    SELECT id, 'transfer', 'posted', amount, source_id, destination_id, created_at
    FROM transfers ORDER BY n
), new_entries AS (
    INSERT INTO bench_raw.entries (id, transaction_id, wallet_id, amount, balance_after,
                                   wallet_version, hash, created_at)
    SELECT gen_random_uuid(), transaction_id, wallet_id, amount, balance_after, wallet_version,
           hash, created_at
    FROM hashed
), new_events AS (
    INSERT INTO bench_raw.outbox (event_id, message_key, payload)
    SELECT gen_random_uuid(), source_id::text,
           jsonb_build_object('specversion', '1.0', 'type', 'transfer.posted', 'source', 'bench',
               'subject', source_id, 'time', created_at,
               'data', jsonb_build_object('transaction_id', id, 'from_wallet_id', source_id,
                   'to_wallet_id', destination_id, 'amount', amount))
    FROM transfers ORDER BY n
)
UPDATE bench_raw.wallets AS wallets
SET balance = hashed.balance_after, version = hashed.wallet_version, last_hash = hashed.hash,
    updated_at = hashed.created_at
FROM hashed WHERE hashed.is_last AND wallets.id = hashed.wallet_id;
COMMIT;
