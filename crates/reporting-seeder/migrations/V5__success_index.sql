-- Each view's successful runs, newest first. A run reads them for every view at its start (the
-- median of the last five durations, for scheduling) and at its end (the last success, for the
-- summary), `status` reads them, and each view's lock checks whether another run has just
-- succeeded. Through the (table_name, finished_at) index alone the server read all of a view's
-- history rows to keep the successful ones, so these reads grew with every run kept; through
-- this one they read the few rows they return.
CREATE INDEX IF NOT EXISTS seeder_view_run_success_idx
    ON reporting.seeder_view_run (table_name, finished_at DESC) WHERE status = 'success';
