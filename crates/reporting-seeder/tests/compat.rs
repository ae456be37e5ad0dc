//! Compatibility with the old tool's tables: the old names and columns on a fresh database,
//! another team's Django-created tables left exactly as they were, concurrent migrations, and
//! the history/status details operators read.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use tokio_postgres::types::ToSql;
use tokio_postgres::Client;

/// The old tool's tables with the columns DESIGN.md lists.
const OLD_TABLES: &[(&str, &[&str])] = &[
    (
        "seeder_custom_report_manifest",
        &[
            "id",
            "table_name",
            "report_name",
            "agency_id",
            "agency_slug",
            "query",
            "database_id",
            "enabled",
        ],
    ),
    (
        "seeder_canned_report",
        &["id", "table_name", "report_name", "query", "database_id"],
    ),
    (
        "seeder_canned_report_manifest",
        &["id", "agency_id", "agency_slug", "canned_report_id"],
    ),
    (
        "seeder_job_status",
        &[
            "table_name",
            "manifest_id",
            "report_name",
            "report_type",
            "agency_id",
            "agency_slug",
            "status",
            "duration_seconds",
            "start_time",
            "consecutive_failures",
            "last_run_id",
            "last_errors",
            "updated_at",
        ],
    ),
    (
        "seeder_run_history",
        &[
            "id",
            "run_id",
            "manifest_id",
            "table_name",
            "report_name",
            "agency_id",
            "agency_slug",
            "report_type",
            "status",
            "start_time",
            "finish_time",
            "duration_seconds",
            "records_processed",
            "bytes_processed",
            "memory_usage_mb",
            "cpu_percentage",
            "consecutive_failures",
            "errors",
            "created_at",
            "updated_at",
        ],
    ),
];

/// The tool's own tables.
const OWN_TABLES: &[&str] = &[
    "seeder_schema_migrations",
    "seeder_canned_run_history",
    "seeder_canned_job_status",
    "seeder_view_state",
    "seeder_run",
    "seeder_view_run",
];

/// Each row of `sql` as one JSON text (`sql` must select a single `row_to_json`-able set).
async fn json_rows(c: &Client, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Vec<String> {
    c.query(
        &format!("SELECT row_to_json(x)::text FROM ({sql}) x ORDER BY 1"),
        params,
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

async fn columns(c: &Client, table: &str) -> Vec<String> {
    c.query(
        "SELECT column_name::text FROM information_schema.columns
         WHERE table_schema = 'reporting' AND table_name = $1 ORDER BY ordinal_position",
        &[&table],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

async fn i64_of(c: &Client, sql: &str, params: &[&(dyn ToSql + Sync)]) -> i64 {
    c.query_one(sql, params).await.unwrap().get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_creates_the_old_tables_with_their_columns_then_applies_nothing() {
    let db = TestDb::new().await;
    let out = db.run(&["run", "migrate"], &[]).await;
    assert_exit(&out, 0);
    assert!(
        stdout(&out).contains("V1__control_tables"),
        "{}",
        stdout(&out)
    );

    let c = db.client().await;
    for (table, wanted) in OLD_TABLES {
        let have = columns(&c, table).await;
        for col in *wanted {
            assert!(
                have.iter().any(|h| h == col),
                "reporting.{table} lacks column {col}; has {have:?}"
            );
        }
    }
    for table in OWN_TABLES {
        assert!(
            db.oid(&format!("reporting.{table}")).await.is_some(),
            "reporting.{table} missing"
        );
    }
    let migrations = json_rows(
        &c,
        "SELECT version, name, applied_at FROM reporting.seeder_schema_migrations",
        &[],
    )
    .await;
    assert_eq!(migrations.len(), migration_files(), "{migrations:?}");

    let out = db.run(&["run", "migrate"], &[]).await;
    assert_exit(&out, 0);
    assert!(
        stdout(&out).contains("up to date") && !stdout(&out).contains("applied"),
        "second migrate applied something: {}",
        stdout(&out)
    );
    let again = json_rows(
        &c,
        "SELECT version, name, applied_at FROM reporting.seeder_schema_migrations",
        &[],
    )
    .await;
    assert_eq!(
        again, migrations,
        "second migrate changed the migration log"
    );
}

/// The other team's tables in the Django fixture.
const DJANGO_TABLES: &[&str] = &[
    "reporting.seeder_custom_report_manifest",
    "reporting.seeder_canned_report",
    "reporting.seeder_canned_report_manifest",
    "reporting.seeder_job_status",
    "reporting.seeder_run_history",
    "public.\"reporting.seeder_release_snapshot\"",
    "public.agency",
];

/// Everything that defines those tables: columns, constraints, indexes, triggers, table options.
async fn django_definition(c: &Client) -> Vec<String> {
    let tables: Vec<String> = DJANGO_TABLES.iter().map(|t| t.to_string()).collect();
    let mut out = Vec::new();
    let oids = "SELECT t::regclass AS oid FROM unnest($1::text[]) AS t";
    for part in [
        format!(
            "SELECT 'column' AS what, c.table_schema, c.table_name, c.column_name, c.ordinal_position,
                    c.data_type, c.character_maximum_length, c.numeric_precision, c.is_nullable,
                    c.column_default, c.is_identity, c.identity_generation, c.is_generated
             FROM information_schema.columns c
             JOIN pg_class k ON k.relname = c.table_name
             JOIN pg_namespace n ON n.oid = k.relnamespace AND n.nspname = c.table_schema
             WHERE k.oid IN ({oids})"
        ),
        format!(
            "SELECT 'constraint' AS what, conrelid::regclass::text AS rel, conname, contype,
                    condeferrable, condeferred, convalidated, pg_get_constraintdef(oid) AS def
             FROM pg_constraint WHERE conrelid IN ({oids})"
        ),
        format!(
            "SELECT 'index' AS what, i.schemaname, i.tablename, i.indexname, i.indexdef
             FROM pg_indexes i
             JOIN pg_class k ON k.relname = i.tablename
             JOIN pg_namespace n ON n.oid = k.relnamespace AND n.nspname = i.schemaname
             WHERE k.oid IN ({oids})"
        ),
        format!(
            "SELECT 'trigger' AS what, tgrelid::regclass::text AS rel, tgname, tgenabled, tgdeferrable,
                    tginitdeferred, tgconstraint <> 0 AS constraint_trigger
             FROM pg_trigger WHERE tgrelid IN ({oids})"
        ),
        format!(
            "SELECT 'table' AS what, oid::regclass::text AS rel, relkind, relowner, relacl::text,
                    reloptions, relpersistence, relrowsecurity, obj_description(oid, 'pg_class') AS comment
             FROM pg_class WHERE oid IN ({oids})"
        ),
    ] {
        out.extend(json_rows(c, &part, &[&tables]).await);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn django_tables_are_left_unchanged_and_runs_work_on_them() {
    let db = TestDb::django().await;
    let c = db.client().await;
    let before = django_definition(&c).await;
    // The snapshot is worth comparing: it sees Django's deferred foreign keys and its indexes.
    assert!(
        before.iter().any(|r| r.contains("\"what\":\"constraint\"")
            && r.contains("seeder_run_history_manifest_id_a04ee1a1_fk_seeder_cu")
            && r.contains("\"condeferrable\":true,\"condeferred\":true")),
        "{before:#?}"
    );
    assert!(
        before
            .iter()
            .any(|r| r.contains("seeder_job_status_table_name_2faf91b2_like")),
        "{before:#?}"
    );
    assert!(
        before
            .iter()
            .filter(|r| r.contains("\"what\":\"column\""))
            .count()
            > 60,
        "{before:#?}"
    );

    let out = db.run(&["run", "migrate"], &[]).await;
    assert_exit(&out, 0);
    let out = db
        .run(&["run", "refresh_all"], &[("SEEDER_MAX_WORKERS", "2")])
        .await;
    assert_exit(&out, 0);
    assert_eq!(
        django_definition(&c).await,
        before,
        "migrate or refresh_all changed a Django table"
    );
    // The canned manifest table still has no `enabled` column.
    assert!(
        !columns(&c, "seeder_canned_report_manifest")
            .await
            .contains(&"enabled".to_string()),
        "enabled was added to Django's canned manifest table"
    );

    // Data as Django would write it: every NOT NULL column named.
    c.batch_execute(
        "INSERT INTO public.agency (id, name, address, subdomain, active, lms_integration_enabled)
         VALUES (1, 'Gotham PD', '1 Main St', 'gotham', true, false),
                (2, 'Metropolis PD', '2 Main St', 'metropolis', true, false)",
    )
    .await
    .unwrap();
    db.custom("reporting.gotham_a", "gotham", 1, "SELECT 1 AS id")
        .await;
    db.custom(
        "reporting.metropolis_b",
        "metropolis",
        2,
        "SELECT generate_series(1, 3) AS id",
    )
    .await;
    db.canned(
        "reporting.canned_shared",
        "SELECT 42 AS answer",
        &[(1, "gotham"), (2, "metropolis")],
    )
    .await;

    let mut run_ids = Vec::new();
    for run in 1..=2 {
        let out = db
            .run(&["run", "refresh_all"], &[("SEEDER_MAX_WORKERS", "2")])
            .await;
        assert_exit(&out, 0);
        let run_id = db.last_run_id().await;
        assert!(!run_ids.contains(&run_id), "run {run} reused a run id");
        run_ids.push(run_id.clone());

        let custom = json_rows(
            &c,
            "SELECT table_name, status, report_type FROM reporting.seeder_run_history WHERE run_id = $1",
            &[&run_id],
        )
        .await;
        assert_eq!(
            custom,
            vec![
                r#"{"table_name":"reporting.gotham_a","status":"success","report_type":"custom"}"#,
                r#"{"table_name":"reporting.metropolis_b","status":"success","report_type":"custom"}"#,
            ],
            "run {run}: custom history"
        );
        let canned = json_rows(
            &c,
            "SELECT table_name, status, report_type FROM reporting.seeder_canned_run_history WHERE run_id = $1",
            &[&run_id],
        )
        .await;
        assert_eq!(
            canned,
            vec![
                r#"{"table_name":"reporting.canned_shared","status":"success","report_type":"canned"}"#
            ],
            "run {run}: canned history (one row for the shared view)"
        );

        let status = json_rows(
            &c,
            "SELECT table_name, status, consecutive_failures, last_run_id = $1 AS this_run
             FROM reporting.seeder_job_status",
            &[&run_id],
        )
        .await;
        assert_eq!(
            status,
            vec![
                r#"{"table_name":"reporting.gotham_a","status":"success","consecutive_failures":0,"this_run":true}"#,
                r#"{"table_name":"reporting.metropolis_b","status":"success","consecutive_failures":0,"this_run":true}"#,
            ],
            "run {run}: seeder_job_status"
        );
        let canned_status = json_rows(
            &c,
            "SELECT table_name, status, consecutive_failures, last_run_id = $1 AS this_run
             FROM reporting.seeder_canned_job_status",
            &[&run_id],
        )
        .await;
        assert_eq!(
            canned_status,
            vec![
                r#"{"table_name":"reporting.canned_shared","status":"success","consecutive_failures":0,"this_run":true}"#
            ],
            "run {run}: seeder_canned_job_status"
        );
        for view in [
            "reporting.gotham_a",
            "reporting.metropolis_b",
            "reporting.canned_shared",
        ] {
            assert!(db.oid(view).await.is_some(), "run {run}: {view} missing");
        }
    }
    let answer: i32 = c
        .query_one("SELECT answer FROM reporting.canned_shared", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(answer, 42);
    assert_eq!(
        i64_of(&c, "SELECT count(*) FROM reporting.metropolis_b", &[]).await,
        3
    );
    assert_eq!(
        django_definition(&c).await,
        before,
        "the runs changed a Django table"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_migrations_at_once_both_succeed_and_apply_each_version_once() {
    let db = TestDb::new().await;
    let spawn = || {
        let mut c = db.cmd();
        c.args(["run", "migrate"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        c.spawn().unwrap()
    };
    let (a, b) = (spawn(), spawn());
    let (a, b) = tokio::join!(a.wait_with_output(), b.wait_with_output());
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_exit(&a, 0);
    assert_exit(&b, 0);
    let applied = [&a, &b]
        .iter()
        .filter(|o| stdout(o).contains("V1__control_tables"))
        .count();
    assert_eq!(
        applied,
        1,
        "exactly one process applies V1:\n{}\n{}",
        stdout(&a),
        stdout(&b)
    );

    let c = db.client().await;
    let versions = json_rows(
        &c,
        "SELECT version, count(*) AS n FROM reporting.seeder_schema_migrations GROUP BY version",
        &[],
    )
    .await;
    let expected: Vec<String> = (1..=migration_files())
        .map(|v| format!(r#"{{"version":{v},"n":1}}"#))
        .collect();
    assert_eq!(versions, expected);
    for (table, _) in OLD_TABLES {
        assert!(db.oid(&format!("reporting.{table}")).await.is_some());
    }
}

/// The history row of `table` in `run_id`, as the old table holds it.
struct HistoryRow {
    status: String,
    errors: Option<String>,
    records: i64,
    bytes: i64,
    finish_not_before_start: Option<bool>,
    duration_seconds: Option<i32>,
    consecutive_failures: i32,
}

async fn history_row(c: &Client, run_id: &str, table: &str) -> HistoryRow {
    let rows = c
        .query(
            "SELECT status::text, errors, records_processed, bytes_processed,
                    finish_time >= start_time, duration_seconds, consecutive_failures
             FROM reporting.seeder_run_history WHERE run_id = $1 AND table_name = $2",
            &[&run_id, &table],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 1, "{table}: history rows in run {run_id}");
    let r = &rows[0];
    HistoryRow {
        status: r.get(0),
        errors: r.get(1),
        records: r.get(2),
        bytes: r.get(3),
        finish_not_before_start: r.get(4),
        duration_seconds: r.get(5),
        consecutive_failures: r.get(6),
    }
}

/// (status, consecutive_failures, last_run_id, last_errors) from seeder_job_status.
async fn job_status(c: &Client, table: &str) -> (String, i32, String, Option<String>) {
    let r = c
        .query_one(
            "SELECT status::text, consecutive_failures, last_run_id::text, last_errors
             FROM reporting.seeder_job_status WHERE table_name = $1",
            &[&table],
        )
        .await
        .unwrap();
    (r.get(0), r.get(1), r.get(2), r.get(3))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_and_status_record_each_outcome_in_detail() {
    let db = TestDb::new().await;
    db.migrate().await;
    let good = "reporting.good";
    let bad = "reporting.bad";
    let canned = "reporting.canned_ok";
    db.custom(good, "gotham", 1, "SELECT generate_series(1, 5) AS x")
        .await;
    let bad_id = db.custom(bad, "gotham", 1, "SELECT 1/0 AS x").await;
    db.canned(canned, "SELECT 7 AS x", &[(1, "gotham"), (2, "metropolis")])
        .await;
    let c = db.client().await;
    let env = [("SEEDER_MAX_WORKERS", "2")];

    let mut run_ids: Vec<String> = Vec::new();
    for run in 1..=2 {
        let out = db.run(&["run", "refresh_all"], &env).await;
        assert_exit(&out, 1);
        let run_id = db.last_run_id().await;
        run_ids.push(run_id.clone());

        let all = db.history(&run_id).await;
        let names: Vec<&str> = all.iter().map(|(t, _, _)| t.as_str()).collect();
        assert_eq!(names, vec![bad, canned, good], "run {run}: {all:?}");

        let g = history_row(&c, &run_id, good).await;
        assert_eq!(g.status, "success", "run {run}: {:?}", g.errors);
        assert_eq!(g.errors, None);
        assert_eq!(g.records, 5, "run {run}: records_processed");
        assert!(g.bytes > 0, "run {run}: bytes_processed {}", g.bytes);
        assert_eq!(g.finish_not_before_start, Some(true), "run {run}");
        assert!(g.duration_seconds.is_some(), "run {run}: duration_seconds");
        assert_eq!(g.consecutive_failures, 0);

        let b = history_row(&c, &run_id, bad).await;
        assert_eq!(b.status, "error", "run {run}");
        let errors = b.errors.clone().unwrap_or_default();
        assert!(errors.contains("division by zero"), "run {run}: {errors}");
        assert_eq!(b.finish_not_before_start, Some(true), "run {run}");
        assert!(b.duration_seconds.is_some(), "run {run}: duration_seconds");
        assert_eq!(b.consecutive_failures, run, "run {run}: history row");

        let (status, failures, last_run, last_errors) = job_status(&c, bad).await;
        assert_eq!(status, "error");
        assert_eq!(failures, run, "run {run}: consecutive_failures of {bad}");
        assert_eq!(last_run, run_id, "run {run}: last_run_id of {bad}");
        let last_errors = last_errors.unwrap_or_default();
        assert!(
            last_errors.contains("division by zero"),
            "run {run}: {last_errors}"
        );
        let (status, failures, last_run, last_errors) = job_status(&c, good).await;
        assert_eq!(
            (status.as_str(), failures, last_run.as_str(), last_errors),
            ("success", 0, run_id.as_str(), None),
            "run {run}: status of {good}"
        );
    }
    assert_ne!(run_ids[0], run_ids[1], "two runs share a run id");
    // Every history row belongs to one of the two runs, three rows each.
    let per_run = json_rows(
        &c,
        "SELECT run_id, count(*) AS n FROM reporting.seeder_run_history GROUP BY run_id",
        &[],
    )
    .await;
    let mut expected: Vec<String> = run_ids
        .iter()
        .map(|id| format!(r#"{{"run_id":"{id}","n":3}}"#))
        .collect();
    expected.sort();
    assert_eq!(per_run, expected);

    // Fixed: the next success resets the streak.
    c.execute(
        "UPDATE reporting.seeder_custom_report_manifest SET query = 'SELECT 1 AS x' WHERE id = $1",
        &[&i32::try_from(bad_id).unwrap()],
    )
    .await
    .unwrap();
    let out = db.run(&["run", "refresh_all"], &env).await;
    assert_exit(&out, 0);
    let run_id = db.last_run_id().await;
    assert!(!run_ids.contains(&run_id));
    let b = history_row(&c, &run_id, bad).await;
    assert_eq!(
        (b.status.as_str(), b.consecutive_failures, b.errors),
        ("success", 0, None)
    );
    let (status, failures, last_run, _) = job_status(&c, bad).await;
    assert_eq!(
        (status.as_str(), failures, last_run.as_str()),
        ("success", 0, run_id.as_str())
    );
    assert!(db.oid(bad).await.is_some());
}

/// How many migrations the crate ships (`migrations/V*.sql`).
fn migration_files() -> usize {
    std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".sql")
        })
        .count()
}

/// Old tables created by other tools differ in their column types (varchar where ours say text,
/// numeric or smallint where ours say integer): every statement casts its values, so the tool
/// works on them as they are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_tables_with_other_column_types_work_as_they_are() {
    let db = TestDb::new().await;
    db.migrate().await;
    let c = db.client().await;
    for t in ["seeder_run_history", "seeder_canned_run_history"] {
        c.batch_execute(&format!(
            "ALTER TABLE reporting.{t}
                ALTER COLUMN table_name TYPE varchar(255),
                ALTER COLUMN report_name TYPE varchar(255),
                ALTER COLUMN run_id TYPE varchar(64),
                ALTER COLUMN status TYPE varchar(32),
                ALTER COLUMN agency_slug TYPE varchar(255),
                ALTER COLUMN duration_seconds TYPE numeric,
                ALTER COLUMN records_processed TYPE numeric,
                ALTER COLUMN consecutive_failures TYPE smallint,
                ALTER COLUMN agency_id TYPE integer"
        ))
        .await
        .unwrap();
    }
    for t in ["seeder_job_status", "seeder_canned_job_status"] {
        c.batch_execute(&format!(
            "ALTER TABLE reporting.{t}
                ALTER COLUMN table_name TYPE varchar(255),
                ALTER COLUMN status TYPE varchar(32),
                ALTER COLUMN duration_seconds TYPE numeric,
                ALTER COLUMN consecutive_failures TYPE smallint,
                ALTER COLUMN last_run_id TYPE varchar(64)"
        ))
        .await
        .unwrap();
    }
    db.custom("reporting.good", "gotham", 1, "SELECT 1 AS id")
        .await;
    db.custom("reporting.bad", "gotham", 1, "SELECT 1 / 0 AS id")
        .await;
    db.custom(
        "reporting.reads_bad",
        "gotham",
        1,
        "SELECT * FROM reporting.bad",
    )
    .await;
    db.canned(
        "reporting.shared",
        "SELECT 2 AS id",
        &[(1, "gotham"), (2, "metropolis")],
    )
    .await;
    for _ in 0..2 {
        let out = db.run(&["run", "refresh_all"], &[]).await;
        assert_exit(&out, 1);
        assert!(!stderr(&out).contains("bookkeeping"), "{}", stderr(&out));
        assert!(!stdout(&out).contains("bookkeeping"), "{}", stdout(&out));
    }
    let mut rows = db.history(&db.last_run_id().await).await;
    rows.sort();
    let statuses: Vec<(&str, &str)> = rows.iter().map(|r| (r.0.as_str(), r.1.as_str())).collect();
    assert_eq!(
        statuses,
        [
            ("reporting.bad", "error"),
            ("reporting.good", "success"),
            ("reporting.reads_bad", "skipped"),
            ("reporting.shared", "success")
        ]
    );
    let failures: i64 = c
        .query_one(
            "SELECT consecutive_failures::bigint FROM reporting.seeder_job_status WHERE table_name = 'reporting.bad'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(failures, 2);
    // A counter at the column's largest value stays there instead of losing the outcome.
    c.batch_execute(
        "UPDATE reporting.seeder_job_status SET consecutive_failures = 32767
         WHERE table_name = 'reporting.bad'",
    )
    .await
    .unwrap();
    let out = db
        .run(&["run", "refresh_table", "--", "reporting.bad"], &[])
        .await;
    assert_exit(&out, 1);
    assert!(!stdout(&out).contains("bookkeeping"), "{}", stdout(&out));
    let failures: i64 = c
        .query_one(
            "SELECT consecutive_failures::bigint FROM reporting.seeder_job_status WHERE table_name = 'reporting.bad'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(failures, 32767);
    let out = db.run(&["run", "refresh_all"], &[]).await;
    assert_exit(&out, 1);
    let out = db.run(&["run", "status"], &[]).await;
    assert_exit(&out, 1);
    assert!(
        stdout(&out).starts_with("4 views: 2 ok, 1 failing"),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    let out = db.run(&["run", "history"], &[]).await;
    assert_exit(&out, 0);
    assert!(stdout(&out).contains("refresh_all"), "{}", stdout(&out));
    let out = db.run(&["run", "retry"], &[]).await;
    assert_exit(&out, 1);
    assert!(!stderr(&out).contains("error:"), "{}", stderr(&out));
    assert_eq!(db.history(&db.last_run_id().await).await.len(), 2);
}

/// `enabled` as operators' tables hold it: missing (every row enabled), a number or text, or
/// NULL (not enabled), in both manifest tables alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enabled_columns_of_other_types_or_missing_are_read_alike() {
    let db = TestDb::new().await;
    db.migrate().await;
    let c = db.client().await;
    db.custom("reporting.on", "gotham", 1, "SELECT 1 AS id")
        .await;
    let off = db
        .custom("reporting.off", "gotham", 1, "SELECT 1 AS id")
        .await;
    let null = db
        .custom("reporting.null", "gotham", 1, "SELECT 1 AS id")
        .await;
    db.canned("reporting.c_on", "SELECT 1 AS id", &[(1, "gotham")])
        .await;
    db.canned("reporting.c_null", "SELECT 1 AS id", &[(1, "gotham")])
        .await;
    c.batch_execute(&format!(
        "ALTER TABLE reporting.seeder_custom_report_manifest
             ALTER COLUMN enabled DROP NOT NULL, ALTER COLUMN enabled DROP DEFAULT,
             ALTER COLUMN enabled TYPE text USING CASE WHEN enabled THEN 'Yes' ELSE 'no' END;
         UPDATE reporting.seeder_custom_report_manifest SET enabled = ' 0 ' WHERE id = {off};
         UPDATE reporting.seeder_custom_report_manifest SET enabled = NULL WHERE id = {null};
         ALTER TABLE reporting.seeder_canned_report_manifest
             ALTER COLUMN enabled DROP NOT NULL, ALTER COLUMN enabled DROP DEFAULT,
             ALTER COLUMN enabled TYPE smallint USING enabled::int;
         UPDATE reporting.seeder_canned_report_manifest m SET enabled = NULL
         FROM reporting.seeder_canned_report r
         WHERE r.id = m.canned_report_id AND r.table_name = 'reporting.c_null';"
    ))
    .await
    .unwrap();
    let out = db.run(&["run", "refresh_all"], &[]).await;
    assert_exit(&out, 0);
    let mut built: Vec<String> = db
        .history(&db.last_run_id().await)
        .await
        .into_iter()
        .map(|r| r.0)
        .collect();
    built.sort();
    assert_eq!(
        built,
        ["reporting.c_on", "reporting.on"],
        "{}",
        stdout(&out)
    );

    // Without the column at all, every row is enabled.
    c.batch_execute(
        "ALTER TABLE reporting.seeder_custom_report_manifest DROP COLUMN enabled;
         ALTER TABLE reporting.seeder_canned_report_manifest DROP COLUMN enabled;",
    )
    .await
    .unwrap();
    let out = db.run(&["run", "refresh_all"], &[]).await;
    assert_exit(&out, 0);
    assert_eq!(db.history(&db.last_run_id().await).await.len(), 5);
}

/// A login role for the tool, named after the test's database, that may read and write the
/// control tables and has `schema_privileges` on the reporting schema (`USAGE`, or
/// `USAGE, CREATE`). Dropped by [`drop_runner`].
async fn runner(c: &Client, db: &TestDb, schema_privileges: &str) -> String {
    let role = format!("{}_runner", db.name);
    c.batch_execute(&format!(
        "CREATE ROLE \"{role}\" LOGIN;
         GRANT {schema_privileges} ON SCHEMA reporting TO \"{role}\";
         GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA reporting TO \"{role}\";
         GRANT USAGE ON ALL SEQUENCES IN SCHEMA reporting TO \"{role}\";"
    ))
    .await
    .unwrap();
    role
}

/// Takes back what [`runner`] granted and drops the role (roles outlive the test's database).
async fn drop_runner(c: &Client, role: &str) {
    c.batch_execute(&format!(
        "REVOKE ALL ON ALL TABLES IN SCHEMA reporting FROM \"{role}\";
         REVOKE ALL ON ALL SEQUENCES IN SCHEMA reporting FROM \"{role}\";
         REVOKE ALL ON SCHEMA reporting FROM \"{role}\"; DROP ROLE \"{role}\";"
    ))
    .await
    .unwrap();
}

/// An old view the tool cannot adopt by a rebuild (a hand-made view reads it, or the role may not
/// create in the schema) is refreshed in place, as the old tool refreshed it, with a warning,
/// instead of failing every run; a changed query it cannot rebuild is an error found up front.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_views_that_cannot_be_adopted_are_refreshed_in_place() {
    let db = TestDb::new().await;
    db.migrate().await;
    let c = db.client().await;
    db.custom(
        "reporting.read_by_hand",
        "gotham",
        1,
        "SELECT count(*) AS n FROM reporting.src",
    )
    .await;
    let owned = db
        .custom(
            "reporting.owned",
            "gotham",
            1,
            "SELECT count(*) AS n FROM reporting.src",
        )
        .await;
    // Built as the old tool built them: no recorded hash.
    c.batch_execute(
        "CREATE TABLE reporting.src AS SELECT 1 AS i;
         CREATE MATERIALIZED VIEW reporting.read_by_hand AS SELECT count(*) AS n FROM reporting.src;
         CREATE MATERIALIZED VIEW reporting.owned AS SELECT count(*) AS n FROM reporting.src;
         CREATE VIEW public.hand_made AS SELECT * FROM reporting.read_by_hand;
         INSERT INTO reporting.src VALUES (2);",
    )
    .await
    .unwrap();
    let role = runner(&c, &db, "USAGE").await;
    c.batch_execute(&format!(
        "ALTER MATERIALIZED VIEW reporting.owned OWNER TO \"{role}\";"
    ))
    .await
    .unwrap();
    let oids = (
        db.oid("reporting.read_by_hand").await,
        db.oid("reporting.owned").await,
    );
    let as_role = db.url_as(&role);

    let by_hand = db
        .run(
            &["run", "refresh_table", "--", "reporting.read_by_hand"],
            &[],
        )
        .await;
    let by_role = db
        .run(
            &["run", "refresh_table", "--", "reporting.owned"],
            &[("DATABASE_URL", &as_role)],
        )
        .await;
    let states: i64 = c
        .query_one("SELECT count(*) FROM reporting.seeder_view_state", &[])
        .await
        .unwrap()
        .get(0);
    // A changed query (a view built from a recorded one) the role cannot rebuild: an error
    // saying what to grant, before anything is built.
    db.set_query(owned, "SELECT count(*) + 0 AS n FROM reporting.src")
        .await;
    c.batch_execute(
        "INSERT INTO reporting.seeder_view_state (table_name, query_hash, built_at, built_by_run_id)
         VALUES ('reporting.owned', 'an older query', now(), 'test')",
    )
    .await
    .unwrap();
    let changed = db
        .run(
            &["run", "refresh_table", "--", "reporting.owned"],
            &[("DATABASE_URL", &as_role)],
        )
        .await;
    let counts: (i64, i64) = {
        let r = c
            .query_one(
                "SELECT (SELECT n FROM reporting.read_by_hand), (SELECT n FROM reporting.owned)",
                &[],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    c.batch_execute("DROP VIEW public.hand_made; DROP MATERIALIZED VIEW reporting.owned;")
        .await
        .unwrap();
    drop_runner(&c, &role).await;

    for out in [&by_hand, &by_role] {
        assert_exit(out, 0);
        assert!(stderr(out).contains("not adoptable now"), "{}", stderr(out));
        assert!(stdout(out).contains("refresh"), "{}", stdout(out));
    }
    assert!(stderr(&by_hand).contains("public.hand_made"));
    assert!(stderr(&by_role).contains("GRANT CREATE ON SCHEMA"));
    assert_eq!(counts, (2, 2), "both refreshed");
    assert_eq!(
        (db.oid("reporting.read_by_hand").await, oids.1.map(|_| ())),
        (oids.0, Some(())),
        "refreshed in place"
    );
    assert_eq!(states, 0, "neither is taken for adopted");
    assert_exit(&changed, 1);
    assert!(
        stdout(&changed).contains("GRANT CREATE ON SCHEMA"),
        "{}",
        stdout(&changed)
    );
}

/// Views the tool's role may not create (no CREATE on the schema, or a new schema and no CREATE
/// on the database) or refresh (owned by a role whose privileges it lacks) are errors that
/// `plan` shows and the run records before running anything for them, saying what to grant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_the_role_may_not_create_or_refresh_are_planned_as_errors() {
    let db = TestDb::new().await;
    db.migrate().await;
    let c = db.client().await;
    db.custom("reporting.theirs", "gotham", 1, "SELECT 1 AS n")
        .await;
    // Built by the tool as another role (the superuser): the runner is no member of it.
    assert_exit(&db.run(&["run", "refresh_all"], &[]).await, 0);
    db.custom("reporting.fresh", "gotham", 1, "SELECT 1 AS n")
        .await;
    db.custom("brandnew.v", "gotham", 1, "SELECT 1 AS n").await;
    let role = runner(&c, &db, "USAGE").await;
    let as_role = db.url_as(&role);
    let oid = db.oid("reporting.theirs").await;
    let plan = db
        .run(&["run", "plan"], &[("DATABASE_URL", &as_role)])
        .await;
    let run = db
        .run(&["run", "refresh_all"], &[("DATABASE_URL", &as_role)])
        .await;
    drop_runner(&c, &role).await;

    assert_exit(&plan, 0);
    let shown = stdout(&plan);
    for (view, hint) in [
        // postgres is a superuser: the hint gives the view away instead of granting that role.
        (
            "reporting.theirs",
            "ALTER MATERIALIZED VIEW \"reporting\".\"theirs\" OWNER TO",
        ),
        (
            "reporting.fresh",
            "GRANT USAGE, CREATE ON SCHEMA reporting TO",
        ),
        ("brandnew.v", "GRANT CREATE ON DATABASE \""),
    ] {
        assert!(
            shown
                .lines()
                .any(|l| l.contains(view) && l.contains("skip-invalid")),
            "{view}: {shown}"
        );
        assert!(shown.contains(hint), "{hint}: {shown}");
        let (status, _, error) = db.view_run(view).await;
        let error = error.unwrap_or_default();
        assert!(status == "error" && error.contains(hint), "{view}: {error}");
    }
    assert!(!shown.contains("GRANT postgres"), "{shown}");
    assert_exit(&run, 1);
    assert_eq!(db.oid("reporting.theirs").await, oid, "left as it was");
    assert!(db.oid("reporting.fresh").await.is_none());
}

/// A manifest naming a schema the tool's role may not use is that view's error, found before
/// running it (saying what to grant): the run reads the catalog without touching the schema,
/// and every other view is refreshed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_view_in_a_schema_the_role_cannot_use_fails_alone() {
    let db = TestDb::new().await;
    db.migrate().await;
    let c = db.client().await;
    db.custom("reporting.ok1", "gotham", 1, "SELECT 1 AS id")
        .await;
    db.custom(
        "secret.newone",
        "gotham",
        1,
        "SELECT id + 1 AS id FROM reporting.ok1",
    )
    .await;
    c.batch_execute("CREATE SCHEMA secret").await.unwrap();
    let role = runner(&c, &db, "USAGE, CREATE").await;
    let as_role = db.url_as(&role);
    let env = [("DATABASE_URL", as_role.as_str())];
    // Twice: the second run knows both views from the first.
    let first = db.run(&["run", "refresh_all"], &env).await;
    let plan = db.run(&["run", "plan"], &env).await;
    let out = db.run(&["run", "refresh_all"], &env).await;
    let ok = db.oid("reporting.ok1").await.is_some();
    c.batch_execute("DROP MATERIALIZED VIEW IF EXISTS reporting.ok1")
        .await
        .unwrap();
    drop_runner(&c, &role).await;
    assert_exit(&first, 1);
    assert_exit(&plan, 0);
    assert_exit(&out, 1);
    assert!(ok, "the other view was built: {}", stderr(&out));
    let (status, _, errors) = db.view_run("secret.newone").await;
    assert_eq!(status, "error");
    assert!(
        errors
            .unwrap_or_default()
            .contains("GRANT USAGE, CREATE ON SCHEMA secret TO"),
        "{}",
        stdout(&out)
    );
    assert_eq!(db.view_run("reporting.ok1").await.0, "success");
}
