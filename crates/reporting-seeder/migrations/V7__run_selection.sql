-- The views a run selected, recorded when it starts: a run killed before it reached some of them
-- left no row for those, and `retry` of that run reruns them from this list. `views` is set from it
-- at the start too, so a running run shows how many views it holds.
ALTER TABLE reporting.seeder_run ADD COLUMN IF NOT EXISTS selected text[];
-- A killed run's view has no known duration: its `abandoned` row records none, rather than the
-- time until the next run noticed it.
ALTER TABLE reporting.seeder_view_run ALTER COLUMN duration_ms DROP NOT NULL;
