//! Release snapshots against a real server: capture, change the query, rebuild, capture again,
//! compare, and the exact drift reported.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use serde_json::{json, Value};

const BEFORE: &str =
    "SELECT i AS id, CASE WHEN i % 2 = 0 THEN 'open' ELSE 'closed' END AS status, \
                      i::text AS old_col FROM generate_series(1, 10) i";
const AFTER: &str = "SELECT i::bigint AS id, CASE WHEN i % 5 = 0 THEN NULL WHEN i % 2 = 0 THEN 'open' \
                     ELSE 'void' END AS status, date '2026-01-01' AS new_col FROM generate_series(1, 20) i";

async fn capture(db: &TestDb, args: &[&str], env: &[(&str, &str)]) -> Value {
    let mut argv = vec!["run", "capture_release_snapshot", "--", "--output", "json"];
    argv.extend_from_slice(args);
    let out = db.run(&argv, env).await;
    assert_exit(&out, 0);
    serde_json::from_str(&stdout(&out)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_across_a_release_is_reported_exactly() {
    let db = TestDb::new().await;
    db.migrate().await;
    let id = db.custom("reporting.v", "gotham", 1, BEFORE).await;
    assert_exit(&db.run(&["run", "refresh_all"], &[]).await, 0);
    let first = capture(
        &db,
        &[
            "--table-name",
            "reporting.v",
            "--release-tag",
            "r1",
            "--release-version",
            "v1.0",
            "--top-values-columns",
            "status",
        ],
        &[],
    )
    .await;
    let first = &first["snapshots"][0];
    assert_eq!(first["total_rows"], 10);
    assert_eq!(first["total_columns"], 3);
    assert_eq!(first["column_stats"]["columns"]["status"]["null_count"], 0);
    assert_eq!(
        first["column_stats"]["columns"]["status"]["distinct_count"],
        2
    );
    assert_eq!(
        first["column_stats"]["columns"]["status"]["top_values"],
        json!([{"value": "closed", "count": 5}, {"value": "open", "count": 5}])
    );
    assert_eq!(
        first["columns"][0],
        json!({"name": "id", "type": "integer"})
    );

    db.set_query(id, AFTER).await;
    assert_exit(&db.run(&["run", "refresh_all"], &[]).await, 0);
    // The tag from the environment, as CI would give it.
    let second = capture(
        &db,
        &[
            "--manifest-id",
            &id.to_string(),
            "--top-values-columns",
            "status",
        ],
        &[("GIT_SHA", "r2")],
    )
    .await;
    let second = &second["snapshots"][0];
    assert_eq!(second["release_tag"], "r2");

    let out = db
        .run(
            &[
                "run",
                "compare_release_snapshots",
                "--",
                "--table-name",
                "reporting.v",
                "--base-tag",
                // Tags are stored trimmed, and found so, whatever spaces a CI variable adds.
                " r1 ",
                "--new-tag",
                "r2",
                "--output",
                "json",
            ],
            &[],
        )
        .await;
    assert_exit(&out, 0);
    let drift: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(drift["schema_hash_equal"], false);
    assert_eq!(drift["columns_added"], json!(["new_col"]));
    assert_eq!(drift["columns_removed"], json!(["old_col"]));
    assert_eq!(
        drift["columns_retyped"],
        json!([{"column": "id", "from": "integer", "to": "bigint"}])
    );
    assert_eq!(
        drift["rows"],
        json!({"from": 10, "to": 20, "delta": 10, "delta_fraction": 1.0})
    );
    assert_eq!(
        drift["null_fraction_changes"],
        json!([{"column": "status", "from": 0.0, "to": 0.2, "delta": 0.2}])
    );
    assert_eq!(
        drift["distinct_count_changes"],
        json!([{"column": "id", "from": 10, "to": 20, "delta_fraction": 1.0}])
    );
    assert_eq!(
        drift["top_value_changes"],
        json!([{"column": "status", "entered": ["void", null], "left": ["closed"]}])
    );
    assert_eq!(drift["failures"], json!([]));

    // By ids, with thresholds that fail it, and with ones that do not.
    let (a, b) = (
        first["id"].as_str().unwrap(),
        second["id"].as_str().unwrap(),
    );
    let out = db
        .run(
            &[
                "run",
                "compare_release_snapshots",
                "--",
                a,
                b,
                "--fail-on",
                "schema",
            ],
            &[],
        )
        .await;
    assert_exit(&out, 1);
    let text = stdout(&out);
    assert!(
        text.contains("columns added: new_col") && text.contains("FAIL: schema changed"),
        "{text}"
    );
    assert!(text.contains("rows: 10 -> 20 (+10, +100.0%)"), "{text}");
    let out = db
        .run(
            &[
                "run",
                "compare_release_snapshots",
                "--",
                a,
                b,
                "--fail-on",
                "rows:1.5,nulls:0.3",
            ],
            &[],
        )
        .await;
    assert_exit(&out, 0);

    // Snapshots are never updated: both still as written.
    let stored: Vec<(String, i64)> = db
        .client()
        .await
        .query("SELECT release_tag::text, total_rows FROM reporting.seeder_release_snapshot ORDER BY executed_at", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(stored, [("r1".to_string(), 10), ("r2".to_string(), 20)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_django_table_is_used_where_it_exists_and_sampling_is_recorded() {
    let db = TestDb::django().await;
    db.migrate().await;
    let c = db.client().await;
    c.batch_execute(
        "INSERT INTO public.agency (id, name, address, subdomain, active, lms_integration_enabled)
         VALUES (1, 'Gotham', 'x', 'gotham', true, false);
         INSERT INTO reporting.seeder_custom_report_manifest (table_name, report_name, agency_slug, query, enabled, agency_id)
         VALUES ('reporting.big', 'big', 'gotham', 'SELECT i AS id FROM generate_series(1, 20000) i', true, 1);",
    )
    .await
    .unwrap();
    assert_exit(&db.run(&["run", "refresh_all"], &[]).await, 0);
    let s = capture(
        &db,
        &["--all", "--release-tag", "t1", "--sample-percent", "50"],
        &[],
    )
    .await;
    assert_eq!(s["snapshots"][0]["column_stats"]["sample_percent"], 50.0);
    let stats = &s["snapshots"][0]["column_stats"];
    let read = stats["sample_rows"].as_i64().unwrap();
    assert!(read > 0 && read < 20000, "a sample: {read}");
    assert_eq!(stats["estimated"], true);
    // Scaled to the whole view: an estimate of its 20,000 rows.
    let rows = s["snapshots"][0]["total_rows"].as_i64().unwrap();
    assert!(
        (6000..=34000).contains(&rows),
        "an estimate of 20000: {rows}"
    );
    // A view that did not change is sampled alike at the next capture: no drift from sampling.
    let again = capture(
        &db,
        &["--all", "--release-tag", "t1b", "--sample-percent", "50"],
        &[],
    )
    .await;
    assert_eq!(
        again["snapshots"][0]["column_stats"]["sample_rows"],
        stats["sample_rows"]
    );
    assert_eq!(again["snapshots"][0]["total_rows"], rows);
    let in_django: i64 = c
        .query_one(
            "SELECT count(*) FROM public.\"reporting.seeder_release_snapshot\"",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(in_django, 2);
    assert!(
        db.oid("reporting.seeder_release_snapshot").await.is_none(),
        "no second table"
    );
    // A variant of the old table with an integer manifest_id works the same.
    c.batch_execute(
        "ALTER TABLE public.\"reporting.seeder_release_snapshot\" ALTER COLUMN manifest_id TYPE integer",
    )
    .await
    .unwrap();
    capture(&db, &["--all", "--release-tag", "t2"], &[]).await;
    let out = db
        .run(
            &[
                "run",
                "compare_release_snapshots",
                "--",
                "--table-name",
                "reporting.big",
                "--base-tag",
                "t1",
                "--new-tag",
                "t2",
            ],
            &[],
        )
        .await;
    assert_exit(&out, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_arguments_exit_2() {
    let db = TestDb::new().await;
    db.migrate().await;
    db.custom("reporting.v", "gotham", 1, "SELECT 1 AS id")
        .await;
    let cases: &[&[&str]] = &[
        &[
            "run",
            "capture_release_snapshot",
            "--",
            "--table-name",
            "reporting.v",
        ],
        &[
            "run",
            "capture_release_snapshot",
            "--",
            "--release-tag",
            "x",
        ],
        &[
            "run",
            "capture_release_snapshot",
            "--",
            "--all",
            "--table-name",
            "reporting.v",
            "--release-tag",
            "x",
        ],
        &[
            "run",
            "capture_release_snapshot",
            "--",
            "--table-name",
            "reporting.nope",
            "--release-tag",
            "x",
        ],
        &[
            "run",
            "capture_release_snapshot",
            "--",
            "--manifest-id",
            "999",
            "--release-tag",
            "x",
        ],
        &[
            "run",
            "capture_release_snapshot",
            "--",
            "--all",
            "--release-tag",
            "x",
            "--sample-percent",
            "0",
        ],
        &["run", "compare_release_snapshots", "--"],
        &[
            "run",
            "compare_release_snapshots",
            "--",
            "not-a-uuid",
            "neither",
        ],
        &[
            "run",
            "compare_release_snapshots",
            "--",
            "--table-name",
            "reporting.v",
            "--base-tag",
            "a",
            "--new-tag",
            "b",
        ],
        &[
            "run",
            "compare_release_snapshots",
            "--",
            "--table-name",
            "reporting.v",
            "--base-tag",
            "a",
        ],
        &[
            "run",
            "compare_release_snapshots",
            "--",
            "--fail-on",
            "colour:1",
        ],
    ];
    for args in cases {
        let out = db.run(args, &[]).await;
        assert_eq!(code(&out), 2, "{args:?}: {}{}", stdout(&out), stderr(&out));
        if args.contains(&"not-a-uuid") {
            assert!(
                stderr(&out).contains("is not a snapshot id (a UUID"),
                "{}",
                stderr(&out)
            );
        }
    }
    // A view not refreshed yet: recorded as an error snapshot, exit 1.
    let out = db
        .run(
            &[
                "run",
                "capture_release_snapshot",
                "--",
                "--all",
                "--release-tag",
                "x",
            ],
            &[],
        )
        .await;
    assert_exit(&out, 1);
    assert!(
        stdout(&out).contains("error") && stdout(&out).contains("refresh it first"),
        "{}",
        stdout(&out)
    );
    // Comparing it with --output json: exit 1, and a document saying why for the CI gate.
    let out = db
        .run(
            &[
                "run",
                "compare_release_snapshots",
                "--",
                "--table-name",
                "reporting.v",
                "--base-tag",
                "x",
                "--new-tag",
                "x",
                "--output",
                "json",
            ],
            &[],
        )
        .await;
    assert_exit(&out, 1);
    let doc: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert!(
        doc["error"].as_str().unwrap().contains("status error"),
        "{doc}"
    );
}

/// On a database the tool has never touched, compare applies the migrations like every job but
/// plan, then says there is no such snapshot (a usage error), not that a table is missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_on_an_untouched_database_migrates_and_finds_no_snapshot() {
    let db = TestDb::new().await;
    let out = db
        .run(
            &[
                "run",
                "compare_release_snapshots",
                "--",
                "--table-name",
                "reporting.v",
                "--base-tag",
                "a",
                "--new-tag",
                "b",
            ],
            &[],
        )
        .await;
    assert_exit(&out, 2);
    assert!(stderr(&out).contains("no snapshot"), "{}", stderr(&out));
    let table: Option<String> = db
        .client()
        .await
        .query_one(
            "SELECT to_regclass('reporting.seeder_release_snapshot')::text",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(table.as_deref(), Some("reporting.seeder_release_snapshot"));
}

/// A capture that times out waiting for the view (a refresh holding it) is an error snapshot
/// that names the timeout and says to capture again, without counts or a hash it never had.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capture_that_times_out_names_the_timeout() {
    let db = TestDb::new().await;
    db.migrate().await;
    db.custom("reporting.v", "gotham", 1, BEFORE).await;
    assert_exit(&db.run(&["run", "refresh_all"], &[]).await, 0);
    let holder = db.client().await;
    holder
        .batch_execute("BEGIN; REFRESH MATERIALIZED VIEW reporting.v")
        .await
        .unwrap();
    let out = db
        .run(
            &[
                "run",
                "capture_release_snapshot",
                "--",
                "--table-name",
                "reporting.v",
                "--release-tag",
                "busy",
            ],
            &[("SEEDER_LOCK_TIMEOUT", "200ms")],
        )
        .await;
    holder.batch_execute("ROLLBACK").await.unwrap();
    assert_exit(&out, 1);
    let text = stdout(&out);
    assert!(
        text.contains(": error (")
            && text.contains("[lock_timeout 200ms, from SEEDER_LOCK_TIMEOUT]; capture it again")
            && !text.contains("schema"),
        "{text}"
    );
}

/// A capture's lines show a manifest's name as printable text: a newline in it cannot make a
/// line of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_with_a_newline_is_one_line_of_capture_output() {
    let db = TestDb::new().await;
    db.migrate().await;
    let id = db.custom("bad\nname", "gotham", 1, "SELECT 1 AS id").await;
    let out = db
        .run(
            &[
                "run",
                "capture_release_snapshot",
                "--",
                "--manifest-id",
                &id.to_string(),
                "--release-tag",
                "v1",
            ],
            &[],
        )
        .await;
    let text = stdout(&out);
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(text.contains("bad\\u{a}name"), "{text}");
}

/// A sample of a small view would draw a page or none (an estimate of 0 rows, or of ten times
/// too many): fewer than 1,000 rows sampled and the view is read whole, and the snapshot says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_view_is_read_whole_whatever_the_sample() {
    let db = TestDb::new().await;
    db.migrate().await;
    db.custom(
        "reporting.small",
        "gotham",
        1,
        "SELECT i AS id, CASE WHEN i % 5 = 0 THEN NULL ELSE i END AS v FROM generate_series(1, 50) i",
    )
    .await;
    assert_exit(&db.run(&["run", "refresh_all"], &[]).await, 0);
    for percent in ["10", "50"] {
        let s = capture(
            &db,
            &[
                "--all",
                "--release-tag",
                percent,
                "--sample-percent",
                percent,
            ],
            &[],
        )
        .await;
        let snap = &s["snapshots"][0];
        assert_eq!(snap["total_rows"], 50, "{snap}");
        let stats = &snap["column_stats"];
        assert_eq!(stats["sample_percent"], Value::Null, "{stats}");
        assert_eq!(stats["columns"]["v"]["null_count"], 10, "{stats}");
        assert!(
            stats["sample_skipped"]
                .as_str()
                .is_some_and(|s| s.contains("the whole view was read")),
            "{stats}"
        );
    }
}

/// A second capture at a release tag is stored beside the first (snapshots are never replaced)
/// and says so, naming the first, for a CI job that ran twice by mistake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_capture_at_a_tag_names_the_first() {
    let db = TestDb::new().await;
    db.migrate().await;
    db.custom("reporting.v", "gotham", 1, BEFORE).await;
    assert_exit(&db.run(&["run", "refresh_all"], &[]).await, 0);
    let args = [
        "run",
        "capture_release_snapshot",
        "--",
        "--all",
        "--release-tag",
        "r1",
        "--output",
        "json",
    ];
    let first = db.run(&args, &[]).await;
    assert_exit(&first, 0);
    assert!(
        !stderr(&first).contains("already has"),
        "{}",
        stderr(&first)
    );
    let first: Value = serde_json::from_str(&stdout(&first)).unwrap();
    let second = db.run(&args, &[]).await;
    assert_exit(&second, 0);
    let id = first["snapshots"][0]["id"].as_str().unwrap();
    assert!(
        stderr(&second).contains(&format!("already has snapshot {id} at release r1")),
        "{}",
        stderr(&second)
    );
    let second: Value = serde_json::from_str(&stdout(&second)).unwrap();
    assert_ne!(second["snapshots"][0]["id"], first["snapshots"][0]["id"]);
}
