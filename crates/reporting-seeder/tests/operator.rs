//! What operators read: logs, summary, status, history, metrics.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::cluster::OwnCluster;
use common::*;

async fn setup(db: &TestDb) {
    db.migrate().await;
    db.custom("reporting.good", "gotham", 1, "SELECT 1 AS id")
        .await;
    db.custom("reporting.bad", "gotham", 1, "SELECT 1 / 0 AS id")
        .await;
    db.canned(
        "reporting.shared",
        "SELECT 2 AS id",
        &[(1, "gotham"), (2, "metropolis")],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_a_terminal_there_is_no_bar_and_no_control_characters() {
    let db = TestDb::new().await;
    setup(&db).await;
    let out = db
        .run(&["run", "refresh_all"], &[("RUST_LOG", "info")])
        .await;
    assert_exit(&out, 1);
    let (o, e) = (stdout(&out), stderr(&out));
    for text in [&o, &e] {
        assert!(
            !text.contains('\u{1b}') && !text.contains('\r'),
            "control characters: {text:?}"
        );
    }
    assert!(!e.contains("ETA"), "a progress bar off a terminal: {e}");
    assert!(e.contains("refreshed"), "log lines instead: {e}");
    // --quiet: no log lines, the summary still.
    let out = db
        .run(
            &["run", "refresh_all", "--", "--quiet"],
            &[("RUST_LOG", "info")],
        )
        .await;
    assert_exit(&out, 1);
    assert!(!stderr(&out).contains("refreshed"), "{}", stderr(&out));
    assert!(stdout(&out).contains("3 views"), "{}", stdout(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_summary_has_counts_failures_with_reasons_and_the_run() {
    let db = TestDb::new().await;
    setup(&db).await;
    let out = db.run(&["run", "refresh_all"], &[]).await;
    assert_exit(&out, 1);
    let text = stdout(&out);
    let run = db.last_run_id().await;
    let first = text.lines().next().unwrap();
    assert!(
        first.starts_with(&format!("run {run} finished in ")),
        "{first}"
    );
    assert!(
        first.ends_with("3 views, 2 success, 1 error, 0 skipped"),
        "{first}"
    );
    let bad = text
        .lines()
        .find(|l| l.contains("reporting.bad") && !l.starts_with("slowest:"))
        .unwrap();
    assert!(
        bad.contains("error") && bad.contains("division by zero"),
        "{bad}"
    );
    assert!(text
        .lines()
        .any(|l| l.contains("reporting.good") && l.contains("success")));
    assert!(!text.contains('\u{1b}'), "no colour off a terminal");
    // The failure's long reason does not pad the other lines out to its width.
    assert!(
        text.lines().all(|l| l == l.trim_end()),
        "trailing blanks:\n{}",
        text.replace(' ', "·")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_run_view_and_agency() {
    let db = TestDb::new().await;
    setup(&db).await;
    // Views that never run say so in the logs too: an invalid one, a cycle, and a reader of the
    // failing view.
    db.custom("reporting.one two", "gotham", 1, "SELECT 1 AS id")
        .await;
    db.custom("reporting.c1", "gotham", 1, "SELECT * FROM reporting.c2")
        .await;
    db.custom("reporting.c2", "gotham", 1, "SELECT * FROM reporting.c1")
        .await;
    db.custom(
        "reporting.reads_bad",
        "gotham",
        1,
        "SELECT * FROM reporting.bad",
    )
    .await;
    for (args, env) in [
        (
            vec!["run", "refresh_all", "--", "--log-format", "json"],
            vec![("RUST_LOG", "info")],
        ),
        (
            vec!["run", "refresh_all"],
            vec![("RUST_LOG", "info"), ("SEEDER_LOG_FORMAT", "json")],
        ),
    ] {
        let out = db.run(&args, &env).await;
        assert_exit(&out, 1);
        let run = db.last_run_id().await;
        let lines: Vec<serde_json::Value> = stderr(&out)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect();
        let view_events: Vec<&serde_json::Value> = lines
            .iter()
            .filter(|l| {
                l["spans"]
                    .as_array()
                    .is_some_and(|s| s.iter().any(|s| s["name"] == "view"))
            })
            .collect();
        assert!(view_events.len() >= 3, "{lines:?}");
        for e in &lines {
            let spans = e["spans"].as_array();
            let has = |name: &str| spans.is_some_and(|s| s.iter().any(|s| s["name"] == name));
            // Every warning and error of the run carries its run id, and every event about one
            // view (whether it ran or not) its view span.
            if matches!(e["level"].as_str(), Some("WARN" | "ERROR")) {
                assert!(has("run"), "no run span: {e}");
            }
            if e["fields"]["view"].is_string() {
                assert!(has("view"), "no view span: {e}");
            }
        }
        let messages: Vec<&str> = lines
            .iter()
            .filter_map(|l| l["fields"]["message"].as_str())
            .collect();
        for wanted in ["dependency cycle", "not refreshed", "skipped"] {
            assert!(
                messages.iter().any(|m| m.contains(wanted)),
                "{wanted}: {messages:?}"
            );
        }
        for e in view_events {
            let spans = e["spans"].as_array().unwrap();
            let run_span = spans.iter().find(|s| s["name"] == "run").unwrap();
            let view_span = spans.iter().find(|s| s["name"] == "view").unwrap();
            assert_eq!(run_span["run_id"], run.as_str());
            assert!(view_span["view"]
                .as_str()
                .unwrap()
                .starts_with("reporting."));
            assert!(view_span["agency"].as_str().unwrap().contains("gotham"));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_exits_1_on_stale_or_failing_views() {
    let db = TestDb::new().await;
    db.migrate().await;
    db.custom("reporting.good", "gotham", 1, "SELECT 1 AS id")
        .await;
    db.custom("reporting.other", "metropolis", 2, "SELECT 1 AS id")
        .await;
    assert_exit(&db.run(&["run", "refresh_all"], &[]).await, 0);
    let out = db
        .run(&["run", "status", "--", "--stale-after", "1h"], &[])
        .await;
    assert_exit(&out, 0);
    assert!(
        stdout(&out).starts_with("2 views: 2 ok, 0 failing, 0 stale"),
        "{}",
        stdout(&out)
    );

    // Fresh now, stale with a tiny window once time passes: make the success look old.
    db.client()
        .await
        .batch_execute(
            "UPDATE reporting.seeder_view_run SET finished_at = finished_at - interval '2 days' WHERE table_name = 'reporting.other';
             UPDATE reporting.seeder_job_status SET updated_at = updated_at - interval '2 days' WHERE table_name = 'reporting.other';",
        )
        .await
        .unwrap();
    let out = db
        .run(&["run", "status", "--", "--stale-after", "26h"], &[])
        .await;
    assert_exit(&out, 1);
    let stale = stdout(&out)
        .lines()
        .find(|l| l.contains("reporting.other"))
        .unwrap()
        .to_string();
    assert!(stale.trim_start().starts_with("stale"), "{stale}");
    // Filtered by agency: gotham's view alone is fine.
    assert_exit(
        &db.run(
            &[
                "run",
                "status",
                "--",
                "--stale-after",
                "26h",
                "--agency",
                "gotham",
            ],
            &[],
        )
        .await,
        0,
    );

    // A failing view: exit 1 even without --stale-after; JSON for machines.
    db.custom("reporting.bad", "gotham", 1, "SELECT 1 / 0 AS id")
        .await;
    assert_exit(&db.run(&["run", "refresh_all"], &[]).await, 1);
    let out = db
        .run(
            &[
                "run", "status", "--", "--agency", "gotham", "--output", "json",
            ],
            &[],
        )
        .await;
    assert_exit(&out, 1);
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let bad = json["views"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["table"] == "reporting.bad")
        .unwrap();
    assert_eq!(bad["state"], "failing");
    assert_eq!(bad["consecutive_failures"], 1);
    assert!(bad["last_error"]
        .as_str()
        .unwrap()
        .contains("division by zero"));
    assert!(bad["last_success"].is_null());
    assert_exit(
        &db.run(&["run", "status", "--", "--stale-after", "soon"], &[])
            .await,
        2,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_lists_runs_and_their_views() {
    let db = TestDb::new().await;
    setup(&db).await;
    assert_exit(&db.run(&["run", "refresh_all"], &[]).await, 1);
    let first = db.last_run_id().await;
    // The tool runs with no HOSTNAME in its environment (as from cron): the host is still known.
    let host: Option<String> = db
        .client()
        .await
        .query_one(
            "SELECT host FROM reporting.seeder_run WHERE run_id = $1",
            &[&first],
        )
        .await
        .unwrap()
        .get(0);
    assert!(host.is_some_and(|h| !h.is_empty()));
    assert_exit(
        &db.run(&["run", "refresh_table", "reporting.good"], &[])
            .await,
        0,
    );
    let second = db.last_run_id().await;

    let out = db.run(&["run", "history"], &[]).await;
    assert_exit(&out, 0);
    let text = stdout(&out);
    let pos = |id: &str| {
        text.find(id)
            .unwrap_or_else(|| panic!("{id} missing: {text}"))
    };
    assert!(pos(&second) < pos(&first), "newest first");

    let out = db
        .run(
            &["run", "history", "--", "--limit", "1", "--output", "json"],
            &[],
        )
        .await;
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let runs = json["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0]["run_id"], second.as_str());
    assert_eq!(runs[0]["counts"]["success"], 1);

    let out = db
        .run(
            &[
                "run", "history", "--", "--run-id", &first, "--output", "json",
            ],
            &[],
        )
        .await;
    assert_exit(&out, 0);
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let views = json["views"].as_array().unwrap();
    assert_eq!(views.len(), 3);
    let bad = views
        .iter()
        .find(|v| v["table"] == "reporting.bad")
        .unwrap();
    assert_eq!(bad["status"], "error");

    let out = db
        .run(&["run", "history", "--", "--table", "reporting.good"], &[])
        .await;
    assert_exit(&out, 0);
    assert_eq!(
        stdout(&out).matches("reporting.good").count(),
        2,
        "{}",
        stdout(&out)
    );
    assert_exit(
        &db.run(&["run", "history", "--", "--run-id", "nope"], &[])
            .await,
        2,
    );
}

/// A manifest whose table name the tool refuses has history rows all the same (its errors):
/// `history --table` finds them under the name as the manifest wrote it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_of_a_refused_table_name_shows_its_errors() {
    let db = TestDb::new().await;
    db.migrate().await;
    db.custom("bad table; drop", "gotham", 1, "SELECT 1 AS id")
        .await;
    assert_exit(&db.run(&["run", "refresh_all"], &[]).await, 1);
    let out = db
        .run(
            &[
                "run",
                "history",
                "--",
                "--table",
                "bad table; drop",
                "--output",
                "json",
            ],
            &[],
        )
        .await;
    assert_exit(&out, 0);
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let views = json["views"].as_array().unwrap();
    assert_eq!(views.len(), 1, "{json}");
    assert_eq!(views[0]["status"], "error", "{json}");
}

/// `history --run-id` of a run that is recorded but has no finished view (still running, or a
/// retry that had nothing to do) shows what there is, exit 0: the run exists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_of_a_running_or_empty_run_shows_it() {
    let db = TestDb::new().await;
    db.migrate().await;
    db.custom(
        "reporting.slow",
        "gotham",
        1,
        "SELECT 1 AS id FROM (SELECT pg_sleep(2)) s",
    )
    .await;
    let child = db.spawn(&["run", "refresh_all"], &[]);
    db.wait_active("%pg_sleep(2)%", 1).await;
    let running = db.last_run_id().await;
    let out = db
        .run(
            &[
                "run", "history", "--", "--run-id", &running, "--output", "json",
            ],
            &[],
        )
        .await;
    assert_exit(&out, 0);
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(json["views"][0]["table"], "reporting.slow", "{json}");
    assert_eq!(json["views"][0]["status"], "running", "{json}");
    assert_exit(&child.wait_with_output().await.unwrap(), 0);

    // Nothing failed: a retry has nothing to do, and its run has no view.
    assert_exit(&db.run(&["run", "retry"], &[]).await, 0);
    let empty = db.last_run_id().await;
    assert_ne!(empty, running);
    let out = db
        .run(&["run", "history", "--", "--run-id", &empty], &[])
        .await;
    assert_exit(&out, 0);
}

/// (metric name, labels, value)
type Sample = (String, Vec<(String, String)>, f64);

/// Parses Prometheus text format: `# HELP`/`# TYPE` lines, then `name{labels} value`.
fn parse_metrics(text: &str) -> Vec<Sample> {
    let mut samples = Vec::new();
    let mut typed = std::collections::HashSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            typed.insert(parts.next().unwrap().to_string());
            assert_eq!(parts.next(), Some("gauge"));
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad line {line}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line}"));
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => (
                n,
                l.strip_suffix('}')
                    .unwrap_or_else(|| panic!("bad labels {line}")),
            ),
            None => (series, ""),
        };
        assert!(typed.contains(name), "{name} has no TYPE line");
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "{name}"
        );
        let labels = labels
            .split("\",")
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (k, v) = l
                    .split_once("=\"")
                    .unwrap_or_else(|| panic!("bad label {l}"));
                (k.to_string(), v.trim_end_matches('"').to_string())
            })
            .collect();
        samples.push((name.to_string(), labels, value));
    }
    samples
}

/// A results file that cannot be written at the end (`/dev/full`: no space left) does not cost
/// the run its metrics: both are attempted, and the error names the one that failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_written_when_the_results_file_cannot_be() {
    let db = TestDb::new().await;
    setup(&db).await;
    let file = db.dir.path().join("seeder.prom");
    let out = db
        .run(
            &[
                "run",
                "refresh_all",
                "--",
                "--results-file",
                "/dev/full",
                "--metrics-file",
                file.to_str().unwrap(),
            ],
            &[],
        )
        .await;
    assert_exit(&out, 1);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("results could not be written to /dev/full") && !err.contains("metrics could"),
        "{err}"
    );
    let samples = parse_metrics(&std::fs::read_to_string(&file).unwrap());
    assert!(
        samples
            .iter()
            .any(|(n, _, _)| n == "reporting_seeder_run_views"),
        "{samples:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_file_parses_and_agrees_with_the_run() {
    let db = TestDb::new().await;
    setup(&db).await;
    let file = db.dir.path().join("seeder.prom");
    let out = db
        .run(
            &[
                "run",
                "refresh_all",
                "--",
                "--metrics-file",
                file.to_str().unwrap(),
            ],
            &[],
        )
        .await;
    assert_exit(&out, 1);
    let samples = parse_metrics(&std::fs::read_to_string(&file).unwrap());
    let value = |name: &str, label: (&str, &str)| {
        samples
            .iter()
            .find(|(n, l, _)| n == name && l.iter().any(|(k, v)| k == label.0 && v == label.1))
            .map(|s| s.2)
            .unwrap_or_else(|| panic!("{name} {label:?} missing"))
    };
    assert_eq!(
        value("reporting_seeder_run_views", ("status", "success")),
        2.0
    );
    assert_eq!(
        value("reporting_seeder_run_views", ("status", "error")),
        1.0
    );
    assert_eq!(
        value("reporting_seeder_run_success", ("job", "refresh_all")),
        0.0
    );
    assert!(value("reporting_seeder_run_wall_seconds", ("job", "refresh_all")) > 0.0);
    assert!(
        value(
            "reporting_seeder_view_duration_seconds",
            ("view", "reporting.good")
        ) >= 0.0
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let last = value(
        "reporting_seeder_view_last_success_timestamp_seconds",
        ("view", "reporting.good"),
    );
    assert!((now - last).abs() < 60.0, "{last} vs {now}");
    assert!(
        !samples.iter().any(|(n, l, _)| n
            == "reporting_seeder_view_last_success_timestamp_seconds"
            && l.iter().any(|(_, v)| v == "reporting.bad")),
        "a view that never succeeded has no last-success sample"
    );
    assert!(!db.dir.path().join("seeder.prom.tmp").exists());
}

/// With pg_stat_statements (a cluster of the test's own, since it must be preloaded), a refresh
/// records what its statement cost the database; without it, nothing and no error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statement_figures_come_from_pg_stat_statements_when_installed() {
    let cluster = tokio::task::spawn_blocking(|| {
        OwnCluster::start_with("-c shared_preload_libraries=pg_stat_statements")
    })
    .await
    .unwrap();
    let admin = connect(&cluster.url("postgres")).await;
    admin.batch_execute("CREATE DATABASE seeder").await.unwrap();
    let url = cluster.url("seeder");
    let c = connect(&url).await;
    let run = || async {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_reporting-seeder"))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("DATABASE_URL", &url)
            .env("RUST_LOG", "debug")
            .args(["run", "refresh_all"])
            .output()
            .await
            .unwrap();
        assert_exit(&out, 0);
        out
    };
    let figures = || async {
        let r = connect(&url)
            .await
            .query_one(
                "SELECT action, db_exec_ms, shared_blks_hit + shared_blks_read, (pgss_totals->>'calls')::bigint
                 FROM reporting.seeder_view_run
                 WHERE run_id = (SELECT run_id FROM reporting.seeder_run ORDER BY started_at DESC LIMIT 1)",
                &[],
            )
            .await
            .unwrap();
        (
            r.get::<_, String>(0),
            r.get::<_, Option<f64>>(1),
            r.get::<_, Option<i64>>(2),
            r.get::<_, Option<i64>>(3),
        )
    };
    assert_exit(
        &tokio::process::Command::new(env!("CARGO_BIN_EXE_reporting-seeder"))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("DATABASE_URL", &url)
            .args(["run", "migrate"])
            .output()
            .await
            .unwrap(),
        0,
    );
    c.batch_execute(
        "INSERT INTO reporting.seeder_custom_report_manifest (table_name, report_name, agency_id, agency_slug, query, enabled)
         VALUES ('reporting.v', 'v', 1, 'gotham', 'SELECT i, md5(i::text) FROM generate_series(1, 5000) i', true)",
    )
    .await
    .unwrap();

    // Not installed in this database yet: no figures, no error, a debug line.
    let out = run().await;
    assert!(
        stderr(&out).contains("pg_stat_statements is not installed"),
        "{}",
        stderr(&out)
    );
    run().await;
    let (action, exec, blocks, _) = figures().await;
    assert_eq!(action, "refresh");
    assert_eq!((exec, blocks), (None, None));

    c.batch_execute("CREATE EXTENSION pg_stat_statements")
        .await
        .unwrap();
    // The library was loaded all along, so the statement has calls the tool never recorded:
    // this run records the baseline only.
    run().await;
    let (action, exec, blocks, calls) = figures().await;
    assert_eq!(action, "refresh");
    assert_eq!((exec, blocks), (None, None));
    assert_eq!(calls, Some(2));
    // From then on, each run's own share.
    for expected_calls in [3, 4] {
        run().await;
        let (_, exec, blocks, calls) = figures().await;
        assert!(exec.unwrap() > 0.0, "{exec:?}");
        assert!(blocks.unwrap() > 0, "{blocks:?}");
        assert_eq!(calls, Some(expected_calls));
    }
    // The baseline is found through the index of recorded figures (migration 6), not by
    // reading and sorting all of the view's history rows.
    let plan: Vec<String> = c
        .query(
            "EXPLAIN SELECT v.pgss_totals FROM reporting.seeder_view_run v
             WHERE v.table_name = 'reporting.v' AND v.pgss_queryid = 1
             ORDER BY v.finished_at DESC LIMIT 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        plan.iter()
            .any(|l| l.contains("seeder_view_run_statement_idx")),
        "{plan:#?}"
    );
    drop(c);
    drop(admin);
    drop(cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_stderr_pipe_does_not_turn_refreshes_into_errors() {
    let db = TestDb::new().await;
    db.migrate().await;
    db.custom("reporting.good", "gotham", 1, "SELECT 1 AS id")
        .await;
    let mut c = db.cmd();
    // Debug logs: every view logs while its reader is gone.
    c.args(["run", "refresh_all"])
        .env("RUST_LOG", "debug")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let mut child = c.spawn().unwrap();
    drop(child.stderr.take());
    let status = child.wait().await.unwrap();
    assert_eq!(status.code(), Some(0));
    let run = db.last_run_id().await;
    assert_eq!(
        db.history(&run).await,
        [("reporting.good".to_string(), "success".to_string(), None)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_history_work_on_an_untouched_database_and_never_refreshed_is_stale() {
    let db = TestDb::new().await;
    // No `migrate` first: like the refresh jobs, these create the control tables.
    assert_exit(&db.run(&["run", "status"], &[]).await, 0);
    assert_exit(&db.run(&["run", "history"], &[]).await, 0);
    db.custom("reporting.never", "gotham", 1, "SELECT 1 AS id")
        .await;
    // Without --stale-after, a view that never succeeded is still stale.
    let out = db.run(&["run", "status"], &[]).await;
    assert_exit(&out, 1);
    assert!(stdout(&out).contains("stale"), "{}", stdout(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_logs_name_views_that_never_started_and_the_end_of_the_run() {
    let db = TestDb::new().await;
    db.migrate().await;
    db.custom("reporting.up", "gotham", 1, "SELECT 1 AS x; SELECT 2")
        .await;
    db.custom("reporting.down", "gotham", 1, "SELECT x FROM reporting.up")
        .await;
    let out = db
        .run(&["run", "refresh_all"], &[("RUST_LOG", "info")])
        .await;
    assert_exit(&out, 1);
    let err = stderr(&out);
    let line = |needle: &str, view: &str| {
        err.lines()
            .any(|l| l.contains(needle) && l.contains(view) && l.contains("run_id="))
    };
    assert!(line("not refreshed", "view=reporting.up"), "{err}");
    assert!(line("skipped", "view=reporting.down"), "{err}");
    assert!(
        err.lines().any(|l| l.contains("run finished")
            && l.contains("failed=1")
            && l.contains("skipped=1")),
        "{err}"
    );
}

/// A role without privileges on the control tables is a configuration problem (exit 2, saying
/// what to grant), not "a view failed" (1): a monitor running `status` must not take it for
/// stale views.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_lacking_privileges_is_a_configuration_error() {
    let db = TestDb::new().await;
    db.migrate().await;
    let role = format!("{}_ro", db.name);
    let c = db.client().await;
    c.batch_execute(&format!("CREATE ROLE \"{role}\" LOGIN"))
        .await
        .unwrap();
    let url = db.url_as(&role);
    for job in ["status", "refresh_all"] {
        let out = db.run(&["run", job], &[("DATABASE_URL", &url)]).await;
        let code = code(&out);
        let err = stderr(&out);
        if code != 2 || !err.contains("lacks a privilege") {
            c.batch_execute(&format!("DROP ROLE \"{role}\""))
                .await
                .unwrap();
            panic!("{job}: exit {code}: {err}");
        }
    }
    // A role that may read but not write the control tables cannot store a snapshot: the same
    // configuration error, not a view's failure.
    db.custom("reporting.v", "gotham", 1, "SELECT 1 AS id")
        .await;
    assert_exit(&db.run(&["run", "refresh_all"], &[]).await, 0);
    c.batch_execute(&format!(
        "GRANT USAGE ON SCHEMA reporting TO \"{role}\";
         GRANT SELECT ON ALL TABLES IN SCHEMA reporting TO \"{role}\";"
    ))
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
                "x",
            ],
            &[("DATABASE_URL", &url)],
        )
        .await;
    c.batch_execute(&format!(
        "REVOKE ALL ON ALL TABLES IN SCHEMA reporting FROM \"{role}\";
         REVOKE ALL ON SCHEMA reporting FROM \"{role}\"; DROP ROLE \"{role}\""
    ))
    .await
    .unwrap();
    assert_exit(&out, 2);
    assert!(
        stderr(&out).contains("lacks a privilege")
            && stderr(&out).contains(
                "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA reporting TO <role>"
            ),
        "{}",
        stderr(&out)
    );
}

/// pg_stat_statements installed in the database but not loaded by the server (not in
/// shared_preload_libraries, as on the shared test server): found in the catalog, said once in a
/// debug line, and never read, so the run leaves no ERROR in the server's log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_stat_statements_installed_but_not_loaded_is_found_without_reading_it() {
    let db = TestDb::new().await;
    db.migrate().await;
    let c = db.client().await;
    let preloaded: String = c
        .query_one("SELECT current_setting('shared_preload_libraries')", &[])
        .await
        .unwrap()
        .get(0);
    if preloaded.contains("pg_stat_statements") {
        return; // A server that loads it: the case above covers it.
    }
    c.batch_execute("CREATE EXTENSION pg_stat_statements")
        .await
        .unwrap();
    db.custom("reporting.v", "gotham", 1, "SELECT 1 AS id")
        .await;
    let out = db
        .run(
            &["run", "refresh_all"],
            &[("RUST_LOG", "reporting_seeder=debug")],
        )
        .await;
    assert_exit(&out, 0);
    let err = stderr(&out);
    assert_eq!(
        err.matches("the server has not loaded it").count(),
        1,
        "{err}"
    );
    assert!(!err.contains("must be loaded via"), "{err}");
}

/// On a dumb terminal (TERM=dumb: no cursor movement, no colour) there is no bar, so the run
/// logs as it does off a terminal, in plain text, instead of showing nothing until the summary.
/// Needs util-linux's `script` for the terminal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dumb_terminal_gets_plain_log_lines_instead_of_a_bar() {
    if std::process::Command::new("script")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("no `script` here: skipped");
        return;
    }
    let db = TestDb::new().await;
    setup(&db).await;
    let out = tokio::process::Command::new("script")
        .args([
            "-qec",
            &format!("{} run refresh_all", env!("CARGO_BIN_EXE_reporting-seeder")),
            "/dev/null",
        ])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", &db.url)
        .env("TERM", "dumb")
        .current_dir(db.dir.path())
        .output()
        .await
        .unwrap();
    let text = stdout(&out);
    assert!(text.contains("refreshed"), "{text}");
    assert!(text.contains("run finished"), "{text}");
    assert!(
        !text.contains('\u{1b}'),
        "escape codes on a dumb terminal: {text:?}"
    );
}

/// On a real terminal the bar is drawn (and redrawn while views run, its ETA computed at each
/// redraw) and the run ends as it would off a terminal. Needs util-linux's `script`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_terminal_the_bar_is_drawn_and_the_run_ends() {
    if std::process::Command::new("script")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("no `script` here: skipped");
        return;
    }
    let db = TestDb::new().await;
    setup(&db).await;
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        tokio::process::Command::new("script")
            .args([
                "-qec",
                &format!("{} run refresh_all", env!("CARGO_BIN_EXE_reporting-seeder")),
                "/dev/null",
            ])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("DATABASE_URL", &db.url)
            .env("TERM", "xterm")
            .current_dir(db.dir.path())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the run on a terminal did not end")
    .unwrap();
    let text = stdout(&out);
    assert!(text.contains("views") && text.contains("ETA ~"), "{text}");
    assert!(text.contains("finished in"), "no summary: {text}");
}

/// A manifest's text is shown, never acted on: off a terminal, a table name or agency slug
/// holding an escape sequence or a newline reaches the logs, the summary, `status`, `plan` and
/// `history` escaped, and every log line stays one line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_characters_from_manifests_are_escaped_in_text_output() {
    let db = TestDb::new().await;
    db.migrate().await;
    db.custom("reporting.esc\u{1b}[2Jx", "gotham", 1, "SELECT 1 AS x")
        .await;
    db.custom("reporting.new\nline", "gotham", 1, "SELECT 1 AS x")
        .await;
    db.custom(
        "reporting.ok",
        "got\u{1b}]0;title\u{7}ham",
        2,
        "SELECT 1 AS x",
    )
    .await;
    let clean = |what: &str, text: &str| {
        assert!(
            !text.chars().any(|c| c.is_control() && c != '\n'),
            "{what}: {text:?}"
        );
    };
    let out = db
        .run(&["run", "refresh_all"], &[("RUST_LOG", "info")])
        .await;
    assert_exit(&out, 1);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    clean("summary", &stdout);
    clean("logs", &stderr);
    assert!(stderr.contains(r"reporting.esc\u{1b}[2Jx"), "{stderr}");
    assert!(
        stderr.contains(r"agency=got\u{1b}]0;title\u{7}ham"),
        "{stderr}"
    );
    for line in stderr.lines() {
        assert!(line.starts_with("20"), "a line of its own: {line:?}");
    }
    assert!(stdout.contains(r"reporting.new\u{a}line"), "{stdout}");
    let run_id = db.last_run_id().await;
    for job in [
        vec!["run", "status"],
        vec!["run", "plan"],
        vec!["run", "history", "--", "--run-id", run_id.as_str()],
    ] {
        let out = db.run(&job, &[]).await;
        let stdout = String::from_utf8_lossy(&out.stdout);
        clean(job[1], &stdout);
        assert!(
            stdout.contains(r"reporting.new\u{a}line"),
            "{job:?}: {stdout}"
        );
    }
}
