-- Database-side figures per view and run, from pg_stat_statements when it is installed: the
-- time and block counters of the refresh statement in that run (deltas), and the statement's
-- cumulative totals they were computed from.
ALTER TABLE reporting.seeder_view_run
    ADD COLUMN IF NOT EXISTS db_exec_ms double precision,
    ADD COLUMN IF NOT EXISTS shared_blks_hit bigint,
    ADD COLUMN IF NOT EXISTS shared_blks_read bigint,
    ADD COLUMN IF NOT EXISTS shared_blks_written bigint,
    ADD COLUMN IF NOT EXISTS temp_blks_written bigint,
    ADD COLUMN IF NOT EXISTS pgss_queryid bigint,
    ADD COLUMN IF NOT EXISTS pgss_totals jsonb;
