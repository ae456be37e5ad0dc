-- Each view's recorded pg_stat_statements totals, by statement, newest first. With
-- pg_stat_statements installed, every view's refresh reads the totals this tool last recorded for
-- the same statement (the baseline of this run's share). Through the (table_name, finished_at)
-- index the server read all of the view's history rows and sorted them; through this one it
-- reads the row it returns. Only rows with figures are in it.
CREATE INDEX IF NOT EXISTS seeder_view_run_statement_idx
    ON reporting.seeder_view_run (table_name, pgss_queryid, finished_at DESC)
    WHERE pgss_queryid IS NOT NULL;
