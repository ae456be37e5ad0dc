-- How many attempts a view took in a run (transient failures are retried).
ALTER TABLE reporting.seeder_view_run ADD COLUMN IF NOT EXISTS attempts integer NOT NULL DEFAULT 1;
