-- The OID of the view the tool last built (or first refreshed after this migration): a view
-- dropped and created again by hand has another, and is adopted (rebuilt from its manifest)
-- rather than refreshed with whatever definition it was given. NULL until known.
ALTER TABLE reporting.seeder_view_state ADD COLUMN IF NOT EXISTS view_oid oid;
