-- Runs churn like a queue: every claim and completion leaves a dead row version, and the
-- partial due index keeps an entry for it until a vacuum. With the default thresholds
-- (20% of the table) a table of a million finished runs would gather 200,000 dead versions
-- before a vacuum, and every claim would step over their index entries. Vacuum after a
-- fixed number of changes instead, so claim cost stays flat however many runs are kept.
alter table kagzi.runs set (
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 20000,
    autovacuum_vacuum_insert_scale_factor = 0,
    autovacuum_vacuum_insert_threshold = 50000,
    autovacuum_analyze_scale_factor = 0.02
);
alter table kagzi.steps set (
    autovacuum_vacuum_insert_scale_factor = 0,
    autovacuum_vacuum_insert_threshold = 100000
);
