-- Release snapshots: the old tool's table. Its Django model's quoting created
-- public."reporting.seeder_release_snapshot" (a table in public whose name contains a dot); where
-- either exists it is used as it is. Created here only when neither exists.
DO $$
BEGIN
    IF to_regclass('public."reporting.seeder_release_snapshot"') IS NULL
       AND to_regclass('reporting.seeder_release_snapshot') IS NULL THEN
        CREATE TABLE reporting.seeder_release_snapshot (
            id uuid PRIMARY KEY,
            manifest_id bigint NOT NULL,
            table_name varchar(255) NOT NULL,
            report_name varchar(255),
            agency_id bigint,
            agency_slug varchar(64),
            release_tag varchar(128) NOT NULL,
            release_version varchar(128),
            released_at timestamptz NOT NULL,
            executed_at timestamptz NOT NULL,
            status varchar(16) NOT NULL,
            execution_duration_ms integer NOT NULL CHECK (execution_duration_ms >= 0),
            total_rows bigint NOT NULL,
            total_columns integer NOT NULL CHECK (total_columns >= 0),
            schema_hash varchar(128) NOT NULL,
            columns jsonb NOT NULL,
            column_stats jsonb NOT NULL
        );
        CREATE INDEX seeder_release_snapshot_table_idx
            ON reporting.seeder_release_snapshot (table_name, released_at DESC);
    END IF;
END
$$;
