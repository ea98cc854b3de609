-- 100 transfers in ONE database transaction (random pairs), the way walletd posts a batch:
-- BEGIN; lock every wallet involved in id order with one statement; one statement that
-- chains each wallet's entries in order (running balance and version by window
-- functions), inserts 100 transactions, 200 entries and 100 outbox events and
-- writes each wallet's final state; COMMIT.  Written by `python -m bench.raw_sql`.
-- pgbench -n -M prepared -D nwallets=N -f bench/sql/batch100_uniform.sql

\set amount random(1, 100)
\set s1 random(1, :nwallets)
\set k1 random(1, :nwallets - 1)
\set d1 1 + (:s1 - 1 + :k1) % :nwallets
\set s2 random(1, :nwallets)
\set k2 random(1, :nwallets - 1)
\set d2 1 + (:s2 - 1 + :k2) % :nwallets
\set s3 random(1, :nwallets)
\set k3 random(1, :nwallets - 1)
\set d3 1 + (:s3 - 1 + :k3) % :nwallets
\set s4 random(1, :nwallets)
\set k4 random(1, :nwallets - 1)
\set d4 1 + (:s4 - 1 + :k4) % :nwallets
\set s5 random(1, :nwallets)
\set k5 random(1, :nwallets - 1)
\set d5 1 + (:s5 - 1 + :k5) % :nwallets
\set s6 random(1, :nwallets)
\set k6 random(1, :nwallets - 1)
\set d6 1 + (:s6 - 1 + :k6) % :nwallets
\set s7 random(1, :nwallets)
\set k7 random(1, :nwallets - 1)
\set d7 1 + (:s7 - 1 + :k7) % :nwallets
\set s8 random(1, :nwallets)
\set k8 random(1, :nwallets - 1)
\set d8 1 + (:s8 - 1 + :k8) % :nwallets
\set s9 random(1, :nwallets)
\set k9 random(1, :nwallets - 1)
\set d9 1 + (:s9 - 1 + :k9) % :nwallets
\set s10 random(1, :nwallets)
\set k10 random(1, :nwallets - 1)
\set d10 1 + (:s10 - 1 + :k10) % :nwallets
\set s11 random(1, :nwallets)
\set k11 random(1, :nwallets - 1)
\set d11 1 + (:s11 - 1 + :k11) % :nwallets
\set s12 random(1, :nwallets)
\set k12 random(1, :nwallets - 1)
\set d12 1 + (:s12 - 1 + :k12) % :nwallets
\set s13 random(1, :nwallets)
\set k13 random(1, :nwallets - 1)
\set d13 1 + (:s13 - 1 + :k13) % :nwallets
\set s14 random(1, :nwallets)
\set k14 random(1, :nwallets - 1)
\set d14 1 + (:s14 - 1 + :k14) % :nwallets
\set s15 random(1, :nwallets)
\set k15 random(1, :nwallets - 1)
\set d15 1 + (:s15 - 1 + :k15) % :nwallets
\set s16 random(1, :nwallets)
\set k16 random(1, :nwallets - 1)
\set d16 1 + (:s16 - 1 + :k16) % :nwallets
\set s17 random(1, :nwallets)
\set k17 random(1, :nwallets - 1)
\set d17 1 + (:s17 - 1 + :k17) % :nwallets
\set s18 random(1, :nwallets)
\set k18 random(1, :nwallets - 1)
\set d18 1 + (:s18 - 1 + :k18) % :nwallets
\set s19 random(1, :nwallets)
\set k19 random(1, :nwallets - 1)
\set d19 1 + (:s19 - 1 + :k19) % :nwallets
\set s20 random(1, :nwallets)
\set k20 random(1, :nwallets - 1)
\set d20 1 + (:s20 - 1 + :k20) % :nwallets
\set s21 random(1, :nwallets)
\set k21 random(1, :nwallets - 1)
\set d21 1 + (:s21 - 1 + :k21) % :nwallets
\set s22 random(1, :nwallets)
\set k22 random(1, :nwallets - 1)
\set d22 1 + (:s22 - 1 + :k22) % :nwallets
\set s23 random(1, :nwallets)
\set k23 random(1, :nwallets - 1)
\set d23 1 + (:s23 - 1 + :k23) % :nwallets
\set s24 random(1, :nwallets)
\set k24 random(1, :nwallets - 1)
\set d24 1 + (:s24 - 1 + :k24) % :nwallets
\set s25 random(1, :nwallets)
\set k25 random(1, :nwallets - 1)
\set d25 1 + (:s25 - 1 + :k25) % :nwallets
\set s26 random(1, :nwallets)
\set k26 random(1, :nwallets - 1)
\set d26 1 + (:s26 - 1 + :k26) % :nwallets
\set s27 random(1, :nwallets)
\set k27 random(1, :nwallets - 1)
\set d27 1 + (:s27 - 1 + :k27) % :nwallets
\set s28 random(1, :nwallets)
\set k28 random(1, :nwallets - 1)
\set d28 1 + (:s28 - 1 + :k28) % :nwallets
\set s29 random(1, :nwallets)
\set k29 random(1, :nwallets - 1)
\set d29 1 + (:s29 - 1 + :k29) % :nwallets
\set s30 random(1, :nwallets)
\set k30 random(1, :nwallets - 1)
\set d30 1 + (:s30 - 1 + :k30) % :nwallets
\set s31 random(1, :nwallets)
\set k31 random(1, :nwallets - 1)
\set d31 1 + (:s31 - 1 + :k31) % :nwallets
\set s32 random(1, :nwallets)
\set k32 random(1, :nwallets - 1)
\set d32 1 + (:s32 - 1 + :k32) % :nwallets
\set s33 random(1, :nwallets)
\set k33 random(1, :nwallets - 1)
\set d33 1 + (:s33 - 1 + :k33) % :nwallets
\set s34 random(1, :nwallets)
\set k34 random(1, :nwallets - 1)
\set d34 1 + (:s34 - 1 + :k34) % :nwallets
\set s35 random(1, :nwallets)
\set k35 random(1, :nwallets - 1)
\set d35 1 + (:s35 - 1 + :k35) % :nwallets
\set s36 random(1, :nwallets)
\set k36 random(1, :nwallets - 1)
\set d36 1 + (:s36 - 1 + :k36) % :nwallets
\set s37 random(1, :nwallets)
\set k37 random(1, :nwallets - 1)
\set d37 1 + (:s37 - 1 + :k37) % :nwallets
\set s38 random(1, :nwallets)
\set k38 random(1, :nwallets - 1)
\set d38 1 + (:s38 - 1 + :k38) % :nwallets
\set s39 random(1, :nwallets)
\set k39 random(1, :nwallets - 1)
\set d39 1 + (:s39 - 1 + :k39) % :nwallets
\set s40 random(1, :nwallets)
\set k40 random(1, :nwallets - 1)
\set d40 1 + (:s40 - 1 + :k40) % :nwallets
\set s41 random(1, :nwallets)
\set k41 random(1, :nwallets - 1)
\set d41 1 + (:s41 - 1 + :k41) % :nwallets
\set s42 random(1, :nwallets)
\set k42 random(1, :nwallets - 1)
\set d42 1 + (:s42 - 1 + :k42) % :nwallets
\set s43 random(1, :nwallets)
\set k43 random(1, :nwallets - 1)
\set d43 1 + (:s43 - 1 + :k43) % :nwallets
\set s44 random(1, :nwallets)
\set k44 random(1, :nwallets - 1)
\set d44 1 + (:s44 - 1 + :k44) % :nwallets
\set s45 random(1, :nwallets)
\set k45 random(1, :nwallets - 1)
\set d45 1 + (:s45 - 1 + :k45) % :nwallets
\set s46 random(1, :nwallets)
\set k46 random(1, :nwallets - 1)
\set d46 1 + (:s46 - 1 + :k46) % :nwallets
\set s47 random(1, :nwallets)
\set k47 random(1, :nwallets - 1)
\set d47 1 + (:s47 - 1 + :k47) % :nwallets
\set s48 random(1, :nwallets)
\set k48 random(1, :nwallets - 1)
\set d48 1 + (:s48 - 1 + :k48) % :nwallets
\set s49 random(1, :nwallets)
\set k49 random(1, :nwallets - 1)
\set d49 1 + (:s49 - 1 + :k49) % :nwallets
\set s50 random(1, :nwallets)
\set k50 random(1, :nwallets - 1)
\set d50 1 + (:s50 - 1 + :k50) % :nwallets
\set s51 random(1, :nwallets)
\set k51 random(1, :nwallets - 1)
\set d51 1 + (:s51 - 1 + :k51) % :nwallets
\set s52 random(1, :nwallets)
\set k52 random(1, :nwallets - 1)
\set d52 1 + (:s52 - 1 + :k52) % :nwallets
\set s53 random(1, :nwallets)
\set k53 random(1, :nwallets - 1)
\set d53 1 + (:s53 - 1 + :k53) % :nwallets
\set s54 random(1, :nwallets)
\set k54 random(1, :nwallets - 1)
\set d54 1 + (:s54 - 1 + :k54) % :nwallets
\set s55 random(1, :nwallets)
\set k55 random(1, :nwallets - 1)
\set d55 1 + (:s55 - 1 + :k55) % :nwallets
\set s56 random(1, :nwallets)
\set k56 random(1, :nwallets - 1)
\set d56 1 + (:s56 - 1 + :k56) % :nwallets
\set s57 random(1, :nwallets)
\set k57 random(1, :nwallets - 1)
\set d57 1 + (:s57 - 1 + :k57) % :nwallets
\set s58 random(1, :nwallets)
\set k58 random(1, :nwallets - 1)
\set d58 1 + (:s58 - 1 + :k58) % :nwallets
\set s59 random(1, :nwallets)
\set k59 random(1, :nwallets - 1)
\set d59 1 + (:s59 - 1 + :k59) % :nwallets
\set s60 random(1, :nwallets)
\set k60 random(1, :nwallets - 1)
\set d60 1 + (:s60 - 1 + :k60) % :nwallets
\set s61 random(1, :nwallets)
\set k61 random(1, :nwallets - 1)
\set d61 1 + (:s61 - 1 + :k61) % :nwallets
\set s62 random(1, :nwallets)
\set k62 random(1, :nwallets - 1)
\set d62 1 + (:s62 - 1 + :k62) % :nwallets
\set s63 random(1, :nwallets)
\set k63 random(1, :nwallets - 1)
\set d63 1 + (:s63 - 1 + :k63) % :nwallets
\set s64 random(1, :nwallets)
\set k64 random(1, :nwallets - 1)
\set d64 1 + (:s64 - 1 + :k64) % :nwallets
\set s65 random(1, :nwallets)
\set k65 random(1, :nwallets - 1)
\set d65 1 + (:s65 - 1 + :k65) % :nwallets
\set s66 random(1, :nwallets)
\set k66 random(1, :nwallets - 1)
\set d66 1 + (:s66 - 1 + :k66) % :nwallets
\set s67 random(1, :nwallets)
\set k67 random(1, :nwallets - 1)
\set d67 1 + (:s67 - 1 + :k67) % :nwallets
\set s68 random(1, :nwallets)
\set k68 random(1, :nwallets - 1)
\set d68 1 + (:s68 - 1 + :k68) % :nwallets
\set s69 random(1, :nwallets)
\set k69 random(1, :nwallets - 1)
\set d69 1 + (:s69 - 1 + :k69) % :nwallets
\set s70 random(1, :nwallets)
\set k70 random(1, :nwallets - 1)
\set d70 1 + (:s70 - 1 + :k70) % :nwallets
\set s71 random(1, :nwallets)
\set k71 random(1, :nwallets - 1)
\set d71 1 + (:s71 - 1 + :k71) % :nwallets
\set s72 random(1, :nwallets)
\set k72 random(1, :nwallets - 1)
\set d72 1 + (:s72 - 1 + :k72) % :nwallets
\set s73 random(1, :nwallets)
\set k73 random(1, :nwallets - 1)
\set d73 1 + (:s73 - 1 + :k73) % :nwallets
\set s74 random(1, :nwallets)
\set k74 random(1, :nwallets - 1)
\set d74 1 + (:s74 - 1 + :k74) % :nwallets
\set s75 random(1, :nwallets)
\set k75 random(1, :nwallets - 1)
\set d75 1 + (:s75 - 1 + :k75) % :nwallets
\set s76 random(1, :nwallets)
\set k76 random(1, :nwallets - 1)
\set d76 1 + (:s76 - 1 + :k76) % :nwallets
\set s77 random(1, :nwallets)
\set k77 random(1, :nwallets - 1)
\set d77 1 + (:s77 - 1 + :k77) % :nwallets
\set s78 random(1, :nwallets)
\set k78 random(1, :nwallets - 1)
\set d78 1 + (:s78 - 1 + :k78) % :nwallets
\set s79 random(1, :nwallets)
\set k79 random(1, :nwallets - 1)
\set d79 1 + (:s79 - 1 + :k79) % :nwallets
\set s80 random(1, :nwallets)
\set k80 random(1, :nwallets - 1)
\set d80 1 + (:s80 - 1 + :k80) % :nwallets
\set s81 random(1, :nwallets)
\set k81 random(1, :nwallets - 1)
\set d81 1 + (:s81 - 1 + :k81) % :nwallets
\set s82 random(1, :nwallets)
\set k82 random(1, :nwallets - 1)
\set d82 1 + (:s82 - 1 + :k82) % :nwallets
\set s83 random(1, :nwallets)
\set k83 random(1, :nwallets - 1)
\set d83 1 + (:s83 - 1 + :k83) % :nwallets
\set s84 random(1, :nwallets)
\set k84 random(1, :nwallets - 1)
\set d84 1 + (:s84 - 1 + :k84) % :nwallets
\set s85 random(1, :nwallets)
\set k85 random(1, :nwallets - 1)
\set d85 1 + (:s85 - 1 + :k85) % :nwallets
\set s86 random(1, :nwallets)
\set k86 random(1, :nwallets - 1)
\set d86 1 + (:s86 - 1 + :k86) % :nwallets
\set s87 random(1, :nwallets)
\set k87 random(1, :nwallets - 1)
\set d87 1 + (:s87 - 1 + :k87) % :nwallets
\set s88 random(1, :nwallets)
\set k88 random(1, :nwallets - 1)
\set d88 1 + (:s88 - 1 + :k88) % :nwallets
\set s89 random(1, :nwallets)
\set k89 random(1, :nwallets - 1)
\set d89 1 + (:s89 - 1 + :k89) % :nwallets
\set s90 random(1, :nwallets)
\set k90 random(1, :nwallets - 1)
\set d90 1 + (:s90 - 1 + :k90) % :nwallets
\set s91 random(1, :nwallets)
\set k91 random(1, :nwallets - 1)
\set d91 1 + (:s91 - 1 + :k91) % :nwallets
\set s92 random(1, :nwallets)
\set k92 random(1, :nwallets - 1)
\set d92 1 + (:s92 - 1 + :k92) % :nwallets
\set s93 random(1, :nwallets)
\set k93 random(1, :nwallets - 1)
\set d93 1 + (:s93 - 1 + :k93) % :nwallets
\set s94 random(1, :nwallets)
\set k94 random(1, :nwallets - 1)
\set d94 1 + (:s94 - 1 + :k94) % :nwallets
\set s95 random(1, :nwallets)
\set k95 random(1, :nwallets - 1)
\set d95 1 + (:s95 - 1 + :k95) % :nwallets
\set s96 random(1, :nwallets)
\set k96 random(1, :nwallets - 1)
\set d96 1 + (:s96 - 1 + :k96) % :nwallets
\set s97 random(1, :nwallets)
\set k97 random(1, :nwallets - 1)
\set d97 1 + (:s97 - 1 + :k97) % :nwallets
\set s98 random(1, :nwallets)
\set k98 random(1, :nwallets - 1)
\set d98 1 + (:s98 - 1 + :k98) % :nwallets
\set s99 random(1, :nwallets)
\set k99 random(1, :nwallets - 1)
\set d99 1 + (:s99 - 1 + :k99) % :nwallets
\set s100 random(1, :nwallets)
\set k100 random(1, :nwallets - 1)
\set d100 1 + (:s100 - 1 + :k100) % :nwallets
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
