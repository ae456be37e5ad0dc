//! Dependencies between views, selection, `plan`, `retry` and machine-readable results, against a
//! real server.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use common::*;

/// (table, status, errors) of the last run, by table.
async fn last(db: &TestDb) -> Vec<(String, String, Option<String>)> {
    db.history(&db.last_run_id().await).await
}

fn status<'a>(
    rows: &'a [(String, String, Option<String>)],
    table: &str,
) -> (&'a str, Option<&'a str>) {
    let r = rows
        .iter()
        .find(|r| r.0 == table)
        .unwrap_or_else(|| panic!("{table} not in {rows:?}"));
    (r.1.as_str(), r.2.as_deref())
}

/// The entry for `table` in a JSON document's `views` (plan's or a run's results).
fn entry<'a>(json: &'a serde_json::Value, table: &str) -> &'a serde_json::Value {
    json["views"]
        .as_array()
        .and_then(|views| views.iter().find(|v| v["table"] == table))
        .unwrap_or_else(|| panic!("{table} not in {json}"))
}

/// stg (canned, two agencies) ← rollup (custom gotham) ← top (custom gotham), plus an
/// independent view; manifests in the reverse of dependency order.
async fn chain(db: &TestDb) {
    db.migrate().await;
    db.client()
        .await
        .batch_execute("CREATE TABLE public.src (id int, v int); INSERT INTO public.src SELECT i, i FROM generate_series(1, 100) i")
        .await
        .unwrap();
    db.custom(
        "reporting.top",
        "gotham",
        1,
        "SELECT max(total) AS top FROM reporting.rollup",
    )
    .await;
    db.custom(
        "reporting.rollup",
        "gotham",
        1,
        "SELECT sum(v) AS total FROM reporting.stg",
    )
    .await;
    db.custom("reporting.alone", "metropolis", 2, "SELECT 1 AS id")
        .await;
    db.canned(
        "reporting.stg",
        "SELECT id, v FROM public.src",
        &[(1, "gotham"), (2, "metropolis")],
    )
    .await;
}

/// [start, finish] of each view of the last run, from the history.
async fn times(db: &TestDb) -> std::collections::HashMap<String, (f64, f64)> {
    db.client()
        .await
        .query(
            "SELECT table_name, extract(epoch FROM start_time)::float8, extract(epoch FROM finish_time)::float8
             FROM reporting.seeder_run_history WHERE run_id = $1",
            &[&db.last_run_id().await],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_run_after_the_views_they_read() {
    let db = TestDb::new().await;
    chain(&db).await;
    for _ in 0..2 {
        let out = db
            .run(&["run", "refresh_all"], &[("SEEDER_MAX_WORKERS", "8")])
            .await;
        assert_exit(&out, 0);
        let t = times(&db).await;
        assert!(t["reporting.stg"].1 <= t["reporting.rollup"].0, "{t:?}");
        assert!(t["reporting.rollup"].1 <= t["reporting.top"].0, "{t:?}");
    }
    let top: i64 = db
        .client()
        .await
        .query_one("SELECT top FROM reporting.top", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(top, 5050);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_upstream_skips_everything_downstream() {
    let db = TestDb::new().await;
    chain(&db).await;
    db.client()
        .await
        .execute(
            "UPDATE reporting.seeder_canned_report SET query = 'SELECT 1 / 0 AS id, 1 AS v'",
            &[],
        )
        .await
        .unwrap();
    let out = db.run(&["run", "refresh_all"], &[]).await;
    assert_exit(&out, 1);
    let rows = last(&db).await;
    assert_eq!(status(&rows, "reporting.stg").0, "error");
    assert_eq!(
        status(&rows, "reporting.rollup"),
        ("skipped", Some("upstream reporting.stg failed"))
    );
    assert_eq!(
        status(&rows, "reporting.top"),
        ("skipped", Some("upstream reporting.stg failed"))
    );
    assert_eq!(status(&rows, "reporting.alone").0, "success");
    assert!(
        db.oid("reporting.rollup").await.is_none(),
        "nothing ran for a skipped view"
    );
    assert!(db.oid("reporting.top").await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cycle_is_reported_once_and_the_rest_goes_on() {
    let db = TestDb::new().await;
    db.migrate().await;
    db.custom("reporting.a", "gotham", 1, "SELECT * FROM reporting.b")
        .await;
    db.custom("reporting.b", "gotham", 1, "SELECT * FROM reporting.c")
        .await;
    db.custom("reporting.c", "gotham", 1, "SELECT * FROM reporting.a")
        .await;
    db.custom("reporting.reader", "gotham", 1, "SELECT * FROM reporting.a")
        .await;
    db.custom("reporting.fine", "gotham", 1, "SELECT 1 AS id")
        .await;
    let out = db
        .run(&["run", "refresh_all"], &[("RUST_LOG", "error")])
        .await;
    assert_exit(&out, 1);
    let rows = last(&db).await;
    for t in ["reporting.a", "reporting.b", "reporting.c"] {
        let (s, e) = status(&rows, t);
        assert_eq!(s, "error");
        let e = e.unwrap();
        assert!(
            e.contains("reporting.a") && e.contains("reporting.b") && e.contains("reporting.c"),
            "{e}"
        );
    }
    assert_eq!(
        status(&rows, "reporting.reader"),
        ("skipped", Some("upstream reporting.a failed"))
    );
    assert_eq!(status(&rows, "reporting.fine").0, "success");
    assert_eq!(
        stderr(&out).matches("dependency cycle").count(),
        1,
        "{}",
        stderr(&out)
    );
    // A run that selects none of it does not hear of it; a view reading itself is said so.
    db.custom(
        "reporting.selfish",
        "gotham",
        1,
        "SELECT * FROM reporting.selfish",
    )
    .await;
    let out = db
        .run(
            &["run", "refresh_table", "--", "reporting.fine"],
            &[("RUST_LOG", "error")],
        )
        .await;
    assert_exit(&out, 0);
    assert!(!stderr(&out).contains("cycle"), "{}", stderr(&out));
    assert!(!stderr(&out).contains("itself"), "{}", stderr(&out));
    let out = db
        .run(
            &["run", "refresh_table", "--", "reporting.selfish"],
            &[("RUST_LOG", "error")],
        )
        .await;
    assert_exit(&out, 1);
    assert!(
        stderr(&out).contains("reporting.selfish reads itself"),
        "{}",
        stderr(&out)
    );
}

/// The upstream's query changes: it is rebuilt, and the view reading it is recreated in the same
/// swap, pointing at the new view, while a reader queries the downstream view throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_upstream_is_rebuilt_with_its_dependents_without_reader_errors() {
    let db = TestDb::new().await;
    chain(&db).await;
    assert_exit(&db.run(&["run", "refresh_all"], &[]).await, 0);
    let c = db.client().await;
    c.batch_execute(
        "CREATE UNIQUE INDEX rollup_key ON reporting.rollup (total);
         GRANT SELECT ON reporting.rollup TO PUBLIC;
         UPDATE public.src SET v = v * 2;
         UPDATE reporting.seeder_canned_report
            SET query = 'SELECT id, v, v * 10 AS w FROM public.src, (SELECT pg_sleep(1)) s';",
    )
    .await
    .unwrap();
    let old_stg = db.oid("reporting.stg").await.unwrap();

    // plan says so: the views reading stg, directly or not, are recreated by its rebuild.
    let out = db
        .run(&["run", "plan", "--", "--output", "json"], &[])
        .await;
    assert_exit(&out, 0);
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let planned = |t: &str| {
        let v = entry(&json, t);
        (v["action"].clone(), v["reason"].clone())
    };
    assert_eq!(planned("reporting.stg").0, "rebuild");
    let stg = |json: &serde_json::Value| entry(json, "reporting.stg").clone();
    assert_eq!(
        stg(&json)["recreates"],
        serde_json::json!(["reporting.rollup", "reporting.top"]),
        "{json}"
    );
    // Planned alone, it still says what its swap recreates, though neither reader is selected.
    let out = db
        .run(&["run", "plan", "--", "--table", "reporting.stg"], &[])
        .await;
    assert_exit(&out, 0);
    let text = stdout(&out);
    assert!(
        text.contains("also recreates reporting.rollup, reporting.top, which read it"),
        "{text}"
    );
    assert!(
        text.starts_with("plan: 1 view,"),
        "only stg is planned: {text}"
    );
    assert_eq!(
        planned("reporting.alone"),
        ("refresh".into(), serde_json::Value::Null)
    );
    for t in ["reporting.rollup", "reporting.top"] {
        let (action, reason) = planned(t);
        assert_eq!(action, "rebuild", "{t}: {json}");
        assert!(
            reason
                .as_str()
                .unwrap()
                .contains("rebuild of reporting.stg"),
            "{t}: {reason}"
        );
    }

    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicUsize::new(0));
    let reader = {
        let (stop, reads, client) = (stop.clone(), reads.clone(), db.client().await);
        tokio::spawn(async move {
            let mut errors = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                match client.query_one("SELECT top FROM reporting.top", &[]).await {
                    Ok(_) => {
                        reads.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(e) => errors.push(e.to_string()),
                }
            }
            errors
        })
    };
    let out = db.run(&["run", "refresh_all"], &[]).await;
    stop.store(true, Ordering::SeqCst);
    let errors = reader.await.unwrap();
    assert_exit(&out, 0);
    assert!(errors.is_empty(), "reader errors: {errors:?}");
    assert!(reads.load(Ordering::SeqCst) > 10);

    let new_stg = db.oid("reporting.stg").await.unwrap();
    assert_ne!(new_stg, old_stg);
    // rollup now reads the new stg (dependent views bind by OID).
    let reads_new: bool = c
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid
             WHERE r.ev_class = 'reporting.rollup'::regclass AND d.refobjid = $1)",
            &[&new_stg],
        )
        .await
        .unwrap()
        .get(0);
    assert!(reads_new);
    let top: i64 = c
        .query_one("SELECT top FROM reporting.top", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(top, 10100, "the chain shows the new data");
    let kept: (bool, bool) = {
        let r = c
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_indexes WHERE indexname = 'rollup_key'),
                        has_table_privilege('public', 'reporting.rollup', 'SELECT')",
                &[],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(
        kept,
        (true, true),
        "the recreated dependent keeps its index and grants"
    );
    let rows = last(&db).await;
    for t in ["reporting.stg", "reporting.rollup", "reporting.top"] {
        assert_eq!(status(&rows, t).0, "success", "{rows:?}");
    }
    // The next run refreshes: nothing is left marked as changed.
    assert_exit(&db.run(&["run", "refresh_all"], &[]).await, 0);
    let actions: Vec<String> = c
        .query(
            "SELECT action FROM reporting.seeder_view_run WHERE run_id = $1 ORDER BY table_name",
            &[&db.last_run_id().await],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(actions.iter().all(|a| a == "refresh"), "{actions:?}");
}

/// Two levels changed: the upstream one's rebuild recreates the other and what reads it, and
/// plan names that rebuild for both, as the run records it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_two_levels_changed_plan_names_the_upstream_rebuild() {
    let db = TestDb::new().await;
    chain(&db).await;
    assert_exit(&db.run(&["run", "refresh_all"], &[]).await, 0);
    db.client()
        .await
        .batch_execute(
            "UPDATE reporting.seeder_canned_report SET query = 'SELECT id, v, 1 AS w FROM public.src';
             UPDATE reporting.seeder_custom_report_manifest
                SET query = 'SELECT sum(v) + 0 AS total FROM reporting.stg'
              WHERE table_name = 'reporting.rollup';",
        )
        .await
        .unwrap();
    let out = db
        .run(&["run", "plan", "--", "--output", "json"], &[])
        .await;
    assert_exit(&out, 0);
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let planned = |t: &str| entry(&json, t).clone();
    assert_eq!(planned("reporting.stg")["action"], "rebuild");
    for t in ["reporting.rollup", "reporting.top"] {
        let v = planned(t);
        assert_eq!(v["action"], "rebuild", "{t}: {json}");
        assert!(
            v["reason"]
                .as_str()
                .unwrap_or_default()
                .contains("recreated by the rebuild of reporting.stg"),
            "{t}: {v}"
        );
    }
    assert_exit(&db.run(&["run", "refresh_all"], &[]).await, 0);
    let action: String = db
        .client()
        .await
        .query_one(
            "SELECT action FROM reporting.seeder_view_run
              WHERE run_id = $1 AND table_name = 'reporting.rollup'",
            &[&db.last_run_id().await],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(action, "rebuilt with upstream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unmanaged_dependent_stops_the_rebuild_and_is_never_dropped() {
    let db = TestDb::new().await;
    chain(&db).await;
    assert_exit(&db.run(&["run", "refresh_all"], &[]).await, 0);
    let c = db.client().await;
    c.batch_execute(
        "CREATE VIEW public.hand_made AS SELECT * FROM reporting.stg;
         UPDATE reporting.seeder_canned_report SET query = 'SELECT id, v, 0 AS extra FROM public.src';",
    )
    .await
    .unwrap();
    let old = db.oid("reporting.stg").await;
    // plan knows before anything is built: the rebuild cannot happen, and its readers wait.
    let out = db
        .run(&["run", "plan", "--", "--output", "json"], &[])
        .await;
    assert_exit(&out, 0);
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let stg = entry(&json, "reporting.stg");
    assert_eq!(stg["action"], "skip-invalid", "{stg}");
    assert!(
        stg["reason"].as_str().unwrap().contains("public.hand_made"),
        "{stg}"
    );
    let out = db.run(&["run", "refresh_all"], &[]).await;
    assert_exit(&out, 1);
    let rows = last(&db).await;
    let (s, e) = status(&rows, "reporting.stg");
    assert_eq!(s, "error");
    assert!(e.unwrap().contains("public.hand_made"), "{e:?}");
    assert!(db.oid("public.hand_made").await.is_some());
    assert_eq!(
        db.oid("reporting.stg").await,
        old,
        "the old view stays for its readers"
    );
    let leftovers: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_class WHERE relname LIKE '\\_rs\\_%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(leftovers, 0);
}

/// The views of the last run, sorted.
async fn ran(db: &TestDb) -> Vec<String> {
    last(db).await.into_iter().map(|r| r.0).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_selector_and_operator() {
    let db = TestDb::new().await;
    chain(&db).await;
    let cases: &[(&[&str], &[&str])] = &[
        (
            &["--select", "agency:metropolis"],
            &["reporting.alone", "reporting.stg"],
        ),
        (&["--select", "type:canned"], &["reporting.stg"]),
        (&["--select", "table:reporting.r*"], &["reporting.rollup"]),
        (
            &["--select", "+table:reporting.rollup"],
            &["reporting.rollup", "reporting.stg"],
        ),
        (
            &["--select", "table:reporting.rollup+"],
            &["reporting.rollup", "reporting.top"],
        ),
        (
            &[
                "--select",
                "table:reporting.stg+",
                "--exclude",
                "table:reporting.top",
            ],
            &["reporting.rollup", "reporting.stg"],
        ),
        (
            &["--select", "type:custom", "table:reporting.stg"],
            &[
                "reporting.alone",
                "reporting.rollup",
                "reporting.stg",
                "reporting.top",
            ],
        ),
        (&["--exclude", "agency:gotham"], &["reporting.alone"]),
        (
            &[
                "--report-type",
                "custom",
                "--exclude",
                "table:reporting.alone",
            ],
            &["reporting.rollup", "reporting.top"],
        ),
    ];
    for (args, expected) in cases {
        let mut argv = vec!["run", "refresh_all", "--"];
        argv.extend_from_slice(args);
        let out = db.run(&argv, &[]).await;
        assert_exit(&out, 0);
        assert_eq!(ran(&db).await, *expected, "{args:?}");
    }
    // The old jobs are the same selections.
    assert_exit(
        &db.run(&["run", "refresh_agency", "metropolis"], &[]).await,
        0,
    );
    assert_eq!(ran(&db).await, ["reporting.alone", "reporting.stg"]);
    assert_exit(
        &db.run(&["run", "refresh_table", "reporting.rollup"], &[])
            .await,
        0,
    );
    assert_eq!(ran(&db).await, ["reporting.rollup"]);

    for bad in ["agency:atlantis", "table:nothing.*", "view:x"] {
        let out = db
            .run(&["run", "refresh_all", "--", "--select", bad], &[])
            .await;
        assert_exit(&out, 2);
        assert!(stderr(&out).contains(bad), "{}", stderr(&out));
    }
    // An exclusion matching nothing leaves nothing out, with a warning.
    let out = db
        .run(
            &[
                "run",
                "refresh_all",
                "--select",
                "table:reporting.rollup",
                "--exclude",
                "table:reporting.gone",
            ],
            &[],
        )
        .await;
    assert_exit(&out, 0);
    assert!(
        stderr(&out).contains("table:reporting.gone"),
        "{}",
        stderr(&out)
    );
    assert_eq!(ran(&db).await, ["reporting.rollup"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_shows_the_run_without_changing_anything() {
    let db = TestDb::new().await;
    chain(&db).await;
    assert_exit(
        &db.run(&["run", "refresh_table", "reporting.stg"], &[])
            .await,
        0,
    );
    db.custom("reporting.broken", "gotham", 1, "SELECT 1; SELECT 2")
        .await;
    db.custom(
        "reporting.reads_broken",
        "gotham",
        1,
        "SELECT * FROM reporting.broken",
    )
    .await;
    let c = db.client().await;
    let count = || async {
        let c = db.client().await;
        let runs: i64 = c
            .query_one("SELECT count(*) FROM reporting.seeder_run", &[])
            .await
            .unwrap()
            .get(0);
        let views: i64 = c
            .query_one("SELECT count(*) FROM pg_matviews", &[])
            .await
            .unwrap()
            .get(0);
        (runs, views)
    };
    let before = count().await;
    let out = db.run(&["run", "plan"], &[]).await;
    assert_exit(&out, 0);
    let text = stdout(&out);
    assert!(text.contains("expected wall time"), "{text}");
    // The view is the second column, after the 20-wide action.
    let line = |t: &str| {
        text.lines()
            .find(|l| {
                l.get(23..)
                    .is_some_and(|rest| rest.starts_with(&format!("{t} ")))
            })
            .unwrap_or_else(|| panic!("{t}: {text}"))
            .to_string()
    };
    assert!(line("reporting.stg").contains("refresh"));
    assert!(
        line("reporting.rollup").contains("create")
            && line("reporting.rollup").contains("reporting.stg")
    );
    assert!(line("reporting.broken").contains("skip-invalid"));
    // The run will skip a reader of an invalid view: plan says so, naming it.
    let reads_broken = line("reporting.reads_broken");
    assert!(
        reads_broken.starts_with("  skip ") && reads_broken.contains("upstream reporting.broken"),
        "{reads_broken}"
    );

    let out = db
        .run(
            &[
                "run",
                "plan",
                "--",
                "--output",
                "json",
                "--select",
                "+table:reporting.top",
            ],
            &[],
        )
        .await;
    assert_exit(&out, 0);
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let views = json["views"].as_array().unwrap();
    let tables: Vec<&str> = views.iter().map(|v| v["table"].as_str().unwrap()).collect();
    assert_eq!(
        tables,
        ["reporting.top", "reporting.rollup", "reporting.stg"]
    );
    assert_eq!(
        views[0]["upstream"],
        serde_json::json!(["reporting.rollup"])
    );
    assert_eq!(views[2]["action"], "refresh");
    assert!(views[2]["expected_from_history"].as_bool().unwrap());
    assert!(json["expected_wall_ms"].as_u64().is_some());
    assert_eq!(count().await, before, "plan changed something");
    drop(c);
}

/// A view's expected duration is the median of its five newest successes, whatever else its
/// history holds: newer failures, and hundreds of older successes. Those reads go through the
/// index of successes (migration 5), so a long history does not make them read every row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expected_duration_is_the_median_of_the_five_newest_successes() {
    let db = TestDb::new().await;
    db.migrate().await;
    db.custom("reporting.long_history", "gotham", 1, "SELECT 1 AS id")
        .await;
    let c = db.client().await;
    // 300 old successes of 5 s, then five of 10..50 ms, then failures of 9.9 s, newest last.
    c.batch_execute(
        "INSERT INTO reporting.seeder_view_run (run_id, table_name, history_table, history_id,
             report_type, status, duration_ms, finished_at)
         SELECT 'old-' || i, 'reporting.long_history', 'reporting.seeder_run_history', i, 'custom',
                'success', 5000, now() - interval '400 days' + i * interval '1 day'
         FROM generate_series(1, 300) i;
         INSERT INTO reporting.seeder_view_run (run_id, table_name, history_table, history_id,
             report_type, status, duration_ms, finished_at)
         SELECT 'recent-' || i, 'reporting.long_history', 'reporting.seeder_run_history', 1000 + i,
                'custom', 'success', 10 * i, now() - interval '1 hour' + i * interval '1 minute'
         FROM generate_series(1, 5) i;
         INSERT INTO reporting.seeder_view_run (run_id, table_name, history_table, history_id,
             report_type, status, duration_ms, finished_at)
         SELECT 'failed-' || i, 'reporting.long_history', 'reporting.seeder_run_history', 2000 + i,
                'custom', 'error', 9900, now() - interval '10 minutes' + i * interval '1 minute'
         FROM generate_series(1, 3) i;",
    )
    .await
    .unwrap();
    let out = db
        .run(&["run", "plan", "--", "--output", "json"], &[])
        .await;
    assert_exit(&out, 0);
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let view = &json["views"][0];
    assert_eq!(view["table"], "reporting.long_history");
    assert_eq!(view["expected_ms"], 30, "{view}");
    assert_eq!(view["expected_from_history"], true, "{view}");
    let indexed: bool = c
        .query_one(
            "SELECT EXISTS (SELECT FROM pg_indexes WHERE schemaname = 'reporting'
                 AND indexname = 'seeder_view_run_success_idx'
                 AND indexdef LIKE '%WHERE (status = ''success''::text)%')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(indexed, "the index of successes is missing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_runs_again_what_failed_or_was_skipped_in_order() {
    let db = TestDb::new().await;
    chain(&db).await;
    let c = db.client().await;
    c.execute(
        "UPDATE reporting.seeder_canned_report SET query = 'SELECT 1 / 0 AS id, 1 AS v'",
        &[],
    )
    .await
    .unwrap();
    assert_exit(&db.run(&["run", "refresh_all"], &[]).await, 1);
    let failed_run = db.last_run_id().await;
    c.execute(
        "UPDATE reporting.seeder_canned_report SET query = 'SELECT id, v FROM public.src'",
        &[],
    )
    .await
    .unwrap();
    // plan --retry says what retry will run, and which run it repeats.
    let out = db
        .run(&["run", "plan", "--", "--retry", "--output", "json"], &[])
        .await;
    assert_exit(&out, 0);
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(json["retried_run"], failed_run.as_str(), "{json}");
    let mut planned: Vec<&str> = json["views"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["table"].as_str())
        .collect();
    planned.sort();
    assert_eq!(
        planned,
        ["reporting.rollup", "reporting.stg", "reporting.top"]
    );
    let out = db.run(&["run", "retry"], &[]).await;
    assert_exit(&out, 0);
    assert_eq!(
        ran(&db).await,
        ["reporting.rollup", "reporting.stg", "reporting.top"]
    );
    let t = times(&db).await;
    assert!(
        t["reporting.stg"].1 <= t["reporting.rollup"].0
            && t["reporting.rollup"].1 <= t["reporting.top"].0
    );
    // Retrying the retry: nothing failed, nothing to do.
    let out = db.run(&["run", "retry"], &[]).await;
    assert_exit(&out, 0);
    assert!(ran(&db).await.is_empty());
    // An explicit run id.
    let out = db
        .run(&["run", "retry", "--", "--run-id", &failed_run], &[])
        .await;
    assert_exit(&out, 0);
    assert_eq!(ran(&db).await.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_takes_cancelled_and_unfinished_views_and_refuses_an_unknown_run() {
    let db = TestDb::new().await;
    db.migrate().await;
    for t in ["reporting.a", "reporting.b", "reporting.c", "reporting.d"] {
        db.custom(t, "gotham", 1, "SELECT 1 AS id").await;
    }
    db.custom("reporting.bad", "gotham", 1, "SELECT 1 / 0 AS id")
        .await;
    assert_exit(&db.run(&["run", "refresh_all"], &[]).await, 1);
    let run = db.last_run_id().await;
    // As a signal leaves them (cancelled) and as a crash does (running, then abandoned).
    let c = db.client().await;
    c.batch_execute(&format!(
        "UPDATE reporting.seeder_view_run SET status = 'cancelled'
           WHERE run_id = '{run}' AND table_name = 'reporting.a';
         DELETE FROM reporting.seeder_view_run WHERE run_id = '{run}'
           AND table_name IN ('reporting.b', 'reporting.c');
         UPDATE reporting.seeder_run_history SET status = 'running'
           WHERE run_id = '{run}' AND table_name = 'reporting.b';
         UPDATE reporting.seeder_run_history SET status = 'abandoned'
           WHERE run_id = '{run}' AND table_name = 'reporting.c';"
    ))
    .await
    .unwrap();
    // A retry that selects nothing left to retry records an empty run; it does not hide the
    // failures from the next plain retry.
    let out = db
        .run(
            &["run", "retry", "--", "--select", "table:reporting.d"],
            &[],
        )
        .await;
    assert_exit(&out, 0);
    assert!(ran(&db).await.is_empty());
    let out = db.run(&["run", "retry"], &[]).await;
    assert_exit(&out, 1);
    assert_eq!(
        ran(&db).await,
        ["reporting.a", "reporting.b", "reporting.bad", "reporting.c"]
    );
    for bad in ["00000000-0000-0000-0000-000000000000", "notauuid"] {
        let out = db.run(&["run", "retry", "--", "--run-id", bad], &[]).await;
        assert_exit(&out, 2);
    }
    // Run ids are taken in either case.
    let out = db
        .run(
            &["run", "retry", "--", "--run-id", &run.to_uppercase()],
            &[],
        )
        .await;
    assert_exit(&out, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_view_reading_an_invalid_manifest_is_skipped_not_refreshed_from_stale_data() {
    let db = TestDb::new().await;
    db.migrate().await;
    let up = db
        .custom("reporting.up", "gotham", 1, "SELECT 1 AS x")
        .await;
    db.custom("reporting.down", "gotham", 1, "SELECT x FROM reporting.up")
        .await;
    assert_exit(&db.run(&["run", "refresh_all"], &[]).await, 0);
    db.set_query(up, "SELECT 3 AS x; SELECT 4").await;
    let out = db.run(&["run", "refresh_all"], &[]).await;
    assert_exit(&out, 1);
    let rows = db.history(&db.last_run_id().await).await;
    assert_eq!(rows[0].0, "reporting.down");
    assert_eq!(rows[0].1, "skipped", "{rows:?}");
    assert!(
        rows[0]
            .2
            .as_deref()
            .unwrap_or_default()
            .contains("reporting.up"),
        "{rows:?}"
    );
    assert_eq!(
        (rows[1].0.as_str(), rows[1].1.as_str()),
        ("reporting.up", "error")
    );
}

/// `X+` and `+X` go on through a view whose manifest became invalid: the view that exists still
/// reads (and is read by) the others, so it is selected, recorded as the error it is, and its
/// readers are skipped rather than left out of the run unseen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graph_operators_go_on_through_an_invalid_manifest() {
    let db = TestDb::new().await;
    chain(&db).await;
    assert_exit(&db.run(&["run", "refresh_all"], &[]).await, 0);
    let rollup: i64 = db
        .client()
        .await
        .query_one(
            "SELECT id::bigint FROM reporting.seeder_custom_report_manifest WHERE table_name = 'reporting.rollup'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    db.set_query(
        rollup,
        "SELECT sum(v) AS total FROM reporting.stg; SELECT 4",
    )
    .await;

    let out = db
        .run(
            &[
                "run",
                "refresh_all",
                "--",
                "--select",
                "table:reporting.stg+",
            ],
            &[],
        )
        .await;
    assert_exit(&out, 1);
    let rows = last(&db).await;
    assert_eq!(
        ran(&db).await,
        ["reporting.rollup", "reporting.stg", "reporting.top"]
    );
    assert_eq!(status(&rows, "reporting.stg").0, "success");
    assert_eq!(status(&rows, "reporting.rollup").0, "error");
    let (top, why) = status(&rows, "reporting.top");
    assert_eq!(top, "skipped", "{rows:?}");
    assert!(
        why.unwrap_or_default().contains("reporting.rollup"),
        "{rows:?}"
    );

    let out = db
        .run(
            &["run", "plan", "--", "--select", "+table:reporting.top"],
            &[],
        )
        .await;
    assert_exit(&out, 0);
    let text = stdout(&out);
    for view in ["reporting.top", "reporting.rollup", "reporting.stg"] {
        assert!(text.contains(view), "{view} missing from:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_failing_in_a_dependent_or_an_index_copy_says_which() {
    let db = TestDb::new().await;
    db.migrate().await;
    let up = db
        .custom("reporting.up", "gotham", 1, "SELECT 1 AS x")
        .await;
    let down = db
        .custom("reporting.down", "gotham", 1, "SELECT x FROM reporting.up")
        .await;
    let ix = db
        .custom("reporting.ix", "gotham", 1, "SELECT 1 AS id")
        .await;
    assert_exit(&db.run(&["run", "refresh_all"], &[]).await, 0);
    let c = db.client().await;
    c.batch_execute("CREATE UNIQUE INDEX ix_id ON reporting.ix (id)")
        .await
        .unwrap();
    db.set_query(up, "SELECT 2 AS x").await;
    db.set_query(down, "SELECT x / 0 AS x FROM reporting.up")
        .await;
    db.set_query(ix, "SELECT 1 AS other").await;
    assert_exit(&db.run(&["run", "refresh_all"], &[]).await, 1);
    let rows = db.history(&db.last_run_id().await).await;
    let error = |t: &str| {
        rows.iter()
            .find(|r| r.0 == t)
            .and_then(|r| r.2.clone())
            .unwrap_or_default()
    };
    assert!(
        error("reporting.up").contains("recreating reporting.down, which reads reporting.up"),
        "{rows:?}"
    );
    assert!(
        error("reporting.ix").contains("copying index ix_id"),
        "{rows:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_output_and_results_file() {
    let db = TestDb::new().await;
    chain(&db).await;
    db.custom("reporting.broken", "gotham", 1, "SELECT 1 / 0 AS x")
        .await;
    let file = db.dir.path().join("results.json");
    let out = db
        .run(
            &[
                "run",
                "refresh_all",
                "--",
                "--output",
                "json",
                "--results-file",
                file.to_str().unwrap(),
            ],
            &[],
        )
        .await;
    assert_exit(&out, 1);
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let from_file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(json, from_file);
    assert_eq!(json["run_id"], db.last_run_id().await);
    assert_eq!(json["status"], "failed");
    assert_eq!(json["counts"]["views"], 5);
    assert_eq!(json["counts"]["error"], 1);
    let broken = entry(&json, "reporting.broken");
    assert_eq!(broken["status"], "error");
    assert!(broken["error"]
        .as_str()
        .unwrap()
        .contains("division by zero"));
    // Not refreshed: its size is not known, in the document and in the per-view history.
    assert_eq!(
        (&broken["rows"], &broken["bytes"]),
        (&serde_json::Value::Null, &serde_json::Value::Null)
    );
    let rows: Option<i64> = db
        .client()
        .await
        .query_one(
            "SELECT rows FROM reporting.seeder_view_run WHERE run_id = $1 AND table_name = 'reporting.broken'",
            &[&db.last_run_id().await],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, None);
    let stg = entry(&json, "reporting.stg");
    assert_eq!(stg["action"], "create");
    assert_eq!(stg["rows"], 100);
    assert!(stg["duration_ms"].as_u64().is_some());
}

/// Names in other scripts are taken as PostgreSQL takes them unquoted (the tool this one replaces
/// wrote them unquoted): ASCII letters fold, the others stay; dependencies between such views are
/// seen, and `refresh_table` finds them under any case of their ASCII letters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_in_other_scripts_work_as_they_do_unquoted() {
    let db = TestDb::new().await;
    db.migrate().await;
    db.custom(
        "rapports.résumé_Été",
        "gotham",
        1,
        "SELECT sum(n) AS total FROM Rapports.Ventes_Été",
    )
    .await;
    db.custom(
        "Rapports.Ventes_Été",
        "gotham",
        1,
        "SELECT n FROM generate_series(1, 10) AS s(n)",
    )
    .await;
    let out = db
        .run(&["run", "refresh_all"], &[("SEEDER_MAX_WORKERS", "8")])
        .await;
    assert_exit(&out, 0);
    let t = times(&db).await;
    assert!(
        t["rapports.ventes_Été"].1 <= t["rapports.résumé_Été"].0,
        "{t:?}"
    );
    let client = db.client().await;
    // Written unquoted, the names reach the views the tool made.
    let total: i64 = client
        .query_one("SELECT total FROM RAPPORTS.résumé_Été", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(total, 55);

    let out = db
        .run(&["run", "refresh_table", "--", "RAPPORTS.Ventes_Été"], &[])
        .await;
    assert_exit(&out, 0);
    assert_eq!(
        last(&db).await,
        vec![("rapports.ventes_Été".to_owned(), "success".to_owned(), None)]
    );
    // A name with an invisible character in it is still refused, the run going on without it.
    db.custom("rapports.ventes\u{a0}x", "gotham", 1, "SELECT 1 AS a")
        .await;
    let out = db.run(&["run", "refresh_all"], &[]).await;
    assert_exit(&out, 1);
    let rows = last(&db).await;
    let (s, e) = status(&rows, "rapports.ventes\u{a0}x");
    assert_eq!(s, "error");
    assert!(
        e.is_some_and(|e| e.contains("invalid character") && e.contains("U+00A0")),
        "{e:?}"
    );
    assert_eq!(status(&rows, "rapports.résumé_Été").0, "success");
}

/// `plan`'s columns line up by what a terminal shows: a name in CJK (two cells a character) or
/// longer than the column does not push the expected durations out of line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_columns_line_up_for_wide_and_long_names() {
    use unicode_width::UnicodeWidthStr;
    let db = TestDb::new().await;
    db.migrate().await;
    let long = format!("reporting.{}", "l".repeat(50));
    for (table, id) in [
        ("reporting.報告書", 1),
        ("reporting.plain", 2),
        (long.as_str(), 3),
    ] {
        db.custom(table, "gotham", 1, &format!("SELECT {id} AS id"))
            .await;
    }
    let out = db.run(&["run", "plan"], &[]).await;
    assert_exit(&out, 0);
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().skip(1).collect();
    assert_eq!(lines.len(), 4, "{text}");
    // Where the header's `expected` ends, every row's expected duration ends.
    let end = lines[0].find("expected").unwrap() + "expected".len();
    for line in &lines {
        let (mut cells, mut cut) = (0, line.len());
        for (i, ch) in line.char_indices() {
            if cells == end {
                cut = i;
                break;
            }
            cells += line[i..i + ch.len_utf8()].width();
        }
        let (head, rest) = line.split_at(cut);
        assert!(
            !head.ends_with(' ') && rest.starts_with("  "),
            "not aligned at {end} cells: {line:?}\n{text}"
        );
    }
}

/// `pg_depend` is read for the run's own readers only: the pairs of the views asked for, each
/// once, whatever their names, and none of any other reader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dependencies_are_read_for_the_readers_asked_for_only() {
    use reporting_seeder::repositories::{views, Rel};
    let db = TestDb::new().await;
    let c = db.client().await;
    c.batch_execute(
        r#"CREATE SCHEMA "Odd Schema";
         CREATE MATERIALIZED VIEW public.a AS SELECT 1 AS id;
         CREATE MATERIALIZED VIEW public.b AS SELECT id FROM public.a;
         CREATE MATERIALIZED VIEW "Odd Schema"."C v" AS
             SELECT a.id FROM public.a JOIN public.b USING (id) JOIN public.a a2 USING (id);
         CREATE MATERIALIZED VIEW public.d AS SELECT id FROM "Odd Schema"."C v";
         CREATE VIEW public.plain AS SELECT id FROM public.a;
         CREATE MATERIALIZED VIEW public.e AS SELECT id FROM public.plain;"#,
    )
    .await
    .unwrap();
    let rel = |schema: &'static str, name: &'static str| Rel { schema, name };
    let read = |readers: Vec<Rel<'static>>| {
        let c = &c;
        async move {
            let mut pairs = views::dependencies(c, &readers).await.unwrap();
            pairs.sort();
            pairs
        }
    };
    let pair = |r: &str, u: &str| (r.to_string(), u.to_string());
    assert_eq!(
        read(vec![rel("public", "b"), rel("Odd Schema", "C v")]).await,
        vec![
            pair("Odd Schema.C v", "public.a"),
            pair("Odd Schema.C v", "public.b"),
            pair("public.b", "public.a"),
        ],
        "each pair of the readers asked for, once, and none of public.d's"
    );
    assert_eq!(
        read(vec![rel("public", "d")]).await,
        vec![pair("public.d", "Odd Schema.C v")]
    );
    assert_eq!(
        read(vec![
            rel("public", "a"),
            rel("public", "e"),
            rel("public", "missing")
        ])
        .await,
        vec![pair("public.e", "public.a")],
        "a reads no view, e reads a through a plain view, and a missing name has no pairs"
    );
    assert!(read(Vec::new()).await.is_empty());
}

/// A view that reads a managed view through a plain (hand-made) view depends on it: once they
/// exist, the catalog shows the chain, and `+X` and the run's order follow it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dependency_through_a_plain_view_is_found() {
    let db = TestDb::new().await;
    db.migrate().await;
    db.custom("reporting.d1", "gotham", 1, "SELECT 1 AS n")
        .await;
    db.custom("reporting.d2", "gotham", 1, "SELECT n FROM reporting.d1")
        .await;
    assert_exit(&db.run(&["run", "refresh_all"], &[]).await, 0);
    db.client()
        .await
        .batch_execute(
            "CREATE VIEW public.plain_inner AS SELECT * FROM reporting.d2;
             CREATE VIEW public.plain_outer AS SELECT * FROM public.plain_inner",
        )
        .await
        .unwrap();
    db.custom(
        "reporting.via_plain",
        "gotham",
        1,
        "SELECT * FROM public.plain_outer",
    )
    .await;
    assert_exit(&db.run(&["run", "refresh_all"], &[]).await, 0);
    let out = db
        .run(
            &[
                "run",
                "plan",
                "--",
                "--select",
                "+table:reporting.via_plain",
                "--output",
                "json",
            ],
            &[],
        )
        .await;
    assert_exit(&out, 0);
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let mut tables: Vec<&str> = json["views"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["table"].as_str().unwrap())
        .collect();
    tables.sort();
    assert_eq!(
        tables,
        ["reporting.d1", "reporting.d2", "reporting.via_plain"]
    );
    let via = entry(&json, "reporting.via_plain");
    assert_eq!(via["upstream"], serde_json::json!(["reporting.d2"]));
}

/// A rebuild that would have to drop a dependent whose manifest cannot be used (invalid, or
/// disabled) stops, saying so rather than that no manifest manages it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_names_the_dependent_whose_manifest_is_invalid_or_disabled() {
    let db = TestDb::new().await;
    db.migrate().await;
    let d1 = db
        .custom("reporting.d1", "gotham", 1, "SELECT 10 AS n")
        .await;
    let d2 = db
        .custom("reporting.d2", "gotham", 1, "SELECT n FROM reporting.d1")
        .await;
    assert_exit(&db.run(&["run", "refresh_all"], &[]).await, 0);
    db.set_query(d2, "SELECT n FROM reporting.d1; SELECT 1")
        .await;
    db.set_query(d1, "SELECT 11 AS n").await;
    assert_exit(&db.run(&["run", "refresh_all"], &[]).await, 1);
    let rows = last(&db).await;
    let (s, e) = status(&rows, "reporting.d1");
    assert_eq!(s, "error");
    let e = e.unwrap_or_default();
    assert!(e.contains("reporting.d2 (its manifest is invalid"), "{e}");
    db.client()
        .await
        .execute(
            "UPDATE reporting.seeder_custom_report_manifest SET enabled = false WHERE id = $1",
            &[&(d2 as i32)],
        )
        .await
        .unwrap();
    assert_exit(&db.run(&["run", "refresh_all"], &[]).await, 1);
    let rows = last(&db).await;
    let e = status(&rows, "reporting.d1").1.unwrap_or_default();
    assert!(e.contains("reporting.d2 (its manifest is disabled)"), "{e}");
    assert!(db.oid("reporting.d2").await.is_some(), "never dropped");
}

/// What binds to a view without being a view (a `BEGIN ATOMIC` function, a row-level security
/// policy, a column of its row type) would make the swap's `DROP` fail after the new view is
/// built: found first, `plan` shows it and the run records it before building anything, naming
/// each object and, for one bound to a dependent the swap recreates, that dependent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_under_a_function_or_policy_bound_to_it_stops_before_building() {
    let db = TestDb::new().await;
    db.migrate().await;
    let d1 = db
        .custom("reporting.d1", "gotham", 1, "SELECT 10 AS n")
        .await;
    db.custom("reporting.d2", "gotham", 1, "SELECT n FROM reporting.d1")
        .await;
    assert_exit(&db.run(&["run", "refresh_all"], &[]).await, 0);
    let before = db.oid("reporting.d1").await;
    db.client()
        .await
        .batch_execute(
            "CREATE FUNCTION public.f() RETURNS bigint LANGUAGE sql
                 BEGIN ATOMIC SELECT count(*) FROM reporting.d1; END;
             CREATE TABLE public.t (a int);
             ALTER TABLE public.t ENABLE ROW LEVEL SECURITY;
             CREATE POLICY p ON public.t USING (a IN (SELECT n FROM reporting.d2));
             CREATE TABLE public.keep (r reporting.d1);",
        )
        .await
        .unwrap();
    db.set_query(d1, "SELECT 11 AS n").await;

    let out = db
        .run(&["run", "plan", "--", "--output", "json"], &[])
        .await;
    assert_exit(&out, 0);
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let d1_plan = entry(&json, "reporting.d1");
    assert_eq!(d1_plan["action"], "skip-invalid", "{json}");
    let why = d1_plan["reason"].as_str().unwrap_or_default();
    for part in [
        "function f()",
        "column r of table keep",
        "policy p on table t (on reporting.d2, which the rebuild recreates)",
    ] {
        assert!(why.contains(part), "{part} not in {why}");
    }

    assert_exit(&db.run(&["run", "refresh_all"], &[]).await, 1);
    let rows = last(&db).await;
    let (s, e) = status(&rows, "reporting.d1");
    assert_eq!(s, "error");
    assert!(
        e.unwrap_or_default().contains("policy p on table t"),
        "{e:?}"
    );
    assert_eq!(status(&rows, "reporting.d2").0, "skipped");
    assert_eq!(db.oid("reporting.d1").await, before, "the old view stays");
    assert_eq!(db.temporaries().await, 0, "nothing was built");

    // Once they are gone, the rebuild goes ahead.
    db.client()
        .await
        .batch_execute("DROP FUNCTION public.f(); DROP TABLE public.t, public.keep;")
        .await
        .unwrap();
    assert_exit(&db.run(&["run", "refresh_all"], &[]).await, 0);
    assert_ne!(db.oid("reporting.d1").await, before, "rebuilt");
}

/// A rebuild recreates the managed views reading it even when the run did not select them: each
/// gets a history row saying so, rather than changing unrecorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dependents_recreated_outside_the_selection_are_recorded() {
    let db = TestDb::new().await;
    chain(&db).await;
    assert_exit(&db.run(&["run", "refresh_all"], &[]).await, 0);
    db.client()
        .await
        .batch_execute("UPDATE reporting.seeder_canned_report SET query = 'SELECT id, v, 1 AS w FROM public.src'")
        .await
        .unwrap();
    let out = db
        .run(&["run", "refresh_table", "reporting.stg"], &[])
        .await;
    assert_exit(&out, 0);
    let rows: Vec<(String, String, Option<String>)> = db
        .client()
        .await
        .query(
            "SELECT table_name, status, action FROM reporting.seeder_view_run WHERE run_id = $1 ORDER BY table_name",
            &[&db.last_run_id().await],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let rebuilt = |t: &str| {
        (
            t.to_string(),
            "success".to_string(),
            Some("rebuilt with upstream".to_string()),
        )
    };
    assert_eq!(
        rows,
        [
            rebuilt("reporting.rollup"),
            (
                "reporting.stg".into(),
                "success".into(),
                Some("rebuild".into())
            ),
            rebuilt("reporting.top"),
        ]
    );
    // With their figures, and no error text on a success (the old history's readers take a
    // set `errors` for a failure).
    let figures: Vec<(String, Option<i64>, Option<String>)> = db
        .client()
        .await
        .query(
            "SELECT v.table_name, v.rows, h.errors FROM reporting.seeder_view_run v
             JOIN reporting.seeder_run_history h ON h.run_id = v.run_id AND h.table_name = v.table_name
             WHERE v.run_id = $1 AND v.table_name IN ('reporting.rollup', 'reporting.top')
             ORDER BY 1",
            &[&db.last_run_id().await],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        figures,
        [
            ("reporting.rollup".to_string(), Some(1), None),
            ("reporting.top".to_string(), Some(1), None)
        ]
    );
}

/// An unqualified name resolves as PostgreSQL resolves it: a table first on the search path
/// shadows a managed view of that name further down, so the reader does not wait for (or get
/// skipped with) that view.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_first_on_the_search_path_shadows_a_managed_view() {
    let db = TestDb::new().await;
    db.migrate().await;
    db.client()
        .await
        .batch_execute(&format!(
            "ALTER DATABASE {} SET search_path = reporting, public;
             CREATE TABLE reporting.pb (x int); INSERT INTO reporting.pb VALUES (7);",
            db.name
        ))
        .await
        .unwrap();
    db.custom("public.pb", "gotham", 1, "SELECT 1 / 0 AS x")
        .await;
    db.custom("reporting.reads_pb", "gotham", 1, "SELECT x FROM pb")
        .await;
    let out = db.run(&["run", "refresh_all"], &[]).await;
    assert_exit(&out, 1);
    let rows = last(&db).await;
    assert_eq!(status(&rows, "public.pb").0, "error");
    assert_eq!(status(&rows, "reporting.reads_pb").0, "success", "{rows:?}");
}
