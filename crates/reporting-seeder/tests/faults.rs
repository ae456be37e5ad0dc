//! Fault injection against a real server: killed backends, a restarted server, the tool killed or
//! stopped mid-run, two runs at once, a refresh blocked by a lock, a manifest that times out.
//! Each test checks every view and every history row, not only the exit code.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::cluster::OwnCluster;
use common::*;

/// (table, status) of every history row of the last run.
async fn statuses(db: &TestDb) -> Vec<(String, String)> {
    last_statuses(db, &db.last_run_id().await).await
}

async fn last_statuses(db: &TestDb, run: &str) -> Vec<(String, String)> {
    db.history(run)
        .await
        .into_iter()
        .map(|(t, s, _)| (t, s))
        .collect()
}

/// Gives the custom manifest table a `statement_timeout` column (as an operator may) and sets
/// `table`'s.
async fn own_statement_timeout(db: &TestDb, table: &str, timeout: Option<&str>) {
    let c = db.client().await;
    c.batch_execute(
        "ALTER TABLE reporting.seeder_custom_report_manifest ADD COLUMN IF NOT EXISTS statement_timeout text",
    )
    .await
    .unwrap();
    c.execute(
        "UPDATE reporting.seeder_custom_report_manifest SET statement_timeout = $2 WHERE table_name = $1",
        &[&table, &timeout],
    )
    .await
    .unwrap();
}

/// The new connection is set up as the first was: its session finds a killed client within
/// seconds too (client_connection_check_interval, read by the view's own query).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminated_backend_is_retried_on_a_new_connection() {
    let db = TestDb::new().await;
    db.migrate().await;
    db.custom(
        "reporting.slow",
        "gotham",
        1,
        "SELECT 1 AS id, current_setting('client_connection_check_interval') AS checked \
         FROM (SELECT pg_sleep(1.5)) s",
    )
    .await;
    db.custom("reporting.quick", "gotham", 1, "SELECT 2 AS id")
        .await;
    let child = db.spawn(&["run", "refresh_all"], &[]);
    let pids = db.wait_active("%pg_sleep(1.5)%", 1).await;
    db.client()
        .await
        .execute("SELECT pg_terminate_backend($1)", &[&pids[0]])
        .await
        .unwrap();
    let out = child.wait_with_output().await.unwrap();
    assert_exit(&out, 0);
    assert_eq!(
        statuses(&db).await,
        [
            ("reporting.quick".into(), "success".into()),
            ("reporting.slow".into(), "success".into())
        ]
    );
    let (status, attempts, errors) = db.view_run("reporting.slow").await;
    assert_eq!((status.as_str(), attempts), ("success", 2));
    assert!(errors.unwrap().contains("attempt 1 of 3"));
    let checked: String = db
        .client()
        .await
        .query_one("SELECT checked FROM reporting.slow", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(checked, "2s");
}

/// A tool killed in the middle of a long refresh does not leave it running on the server for
/// nobody: the server finds the client gone within seconds (client_connection_check_interval),
/// cancels the statement and frees its locks, so the next run can refresh the view at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_runs_long_refresh_stops_on_the_server() {
    let db = TestDb::new().await;
    db.migrate().await;
    db.custom(
        "reporting.long",
        "gotham",
        1,
        "SELECT 1 AS id FROM (SELECT pg_sleep(600)) s",
    )
    .await;
    let mut child = db.spawn(&["run", "refresh_all"], &[]);
    db.wait_active("%pg_sleep(600)%", 1).await;
    signal(&child, "KILL");
    let _ = child.wait().await;
    // Within wait_tool_gone's 10 s, not the statement's ten minutes.
    db.wait_tool_gone().await;
}

/// `plan --retry` right after a run was killed names the run `retry` will take, the killed one,
/// though no recovery has marked it abandoned yet (plan changes nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_retry_after_a_killed_run_plans_what_retry_runs() {
    let db = TestDb::new().await;
    db.migrate().await;
    db.custom("reporting.quick", "gotham", 1, "SELECT 1 AS id")
        .await;
    db.custom(
        "reporting.slow",
        "gotham",
        1,
        "SELECT 1 AS id FROM (SELECT pg_sleep(0.8)) s",
    )
    .await;
    let mut child = db.spawn(&["run", "refresh_all"], &[]);
    db.wait_active("%pg_sleep(0.8)%", 1).await;
    let killed = db.last_run_id().await;
    signal(&child, "KILL");
    let _ = child.wait().await;
    db.wait_tool_gone().await;
    // `history` shows it abandoned at once, and the view it was refreshing too (recorded
    // `running` until a later refresh job's recovery marks it), not as still running.
    let out = db
        .run(&["run", "history", "--", "--output", "json"], &[])
        .await;
    assert_exit(&out, 0);
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(json["runs"][0]["run_id"], killed.as_str(), "{json}");
    assert_eq!(json["runs"][0]["status"], "abandoned", "{json}");
    let out = db
        .run(
            &[
                "run", "history", "--", "--run-id", &killed, "--output", "json",
            ],
            &[],
        )
        .await;
    assert_exit(&out, 0);
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let slow = json["views"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["table"] == "reporting.slow")
        .unwrap_or_else(|| panic!("{json}"));
    assert_eq!(slow["status"], "abandoned", "{json}");
    let out = db
        .run(&["run", "plan", "--", "--retry", "--output", "json"], &[])
        .await;
    assert_exit(&out, 0);
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(json["retried_run"], killed.as_str(), "{json}");
    let planned: Vec<&str> = json["views"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["table"].as_str())
        .collect();
    assert!(planned.contains(&"reporting.slow"), "{json}");
    // And retry runs exactly that.
    let out = db.run(&["run", "retry"], &[]).await;
    assert_exit(&out, 0);
    assert!(stderr(&out).contains(&killed), "{}", stderr(&out));
}

/// A run still going: `history` shows what it has finished so far, not zeros until its end, and
/// `retry --run-id` naming it is refused (exit 2): its views are being refreshed by it, and
/// retrying them would only find them locked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_still_going_is_counted_so_far_and_not_retried() {
    let db = TestDb::new().await;
    db.migrate().await;
    db.custom(
        "reporting.slow",
        "gotham",
        1,
        "SELECT 1 AS id FROM (SELECT pg_sleep(1.5)) s",
    )
    .await;
    db.custom("reporting.quick", "gotham", 1, "SELECT 2 AS id")
        .await;
    let child = db.spawn(&["run", "refresh_all"], &[]);
    db.wait_active("%pg_sleep(1.5)%", 1).await;
    let live = db.last_run_id().await;
    let c = db.client().await;
    for _ in 0..400 {
        let done: i64 = c
            .query_one(
                "SELECT count(*) FROM reporting.seeder_view_run WHERE run_id = $1 AND status = 'success'",
                &[&live],
            )
            .await
            .unwrap()
            .get(0);
        if done == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    let out = db
        .run(&["run", "history", "--", "--output", "json"], &[])
        .await;
    assert_exit(&out, 0);
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let run = &json["runs"][0];
    assert_eq!(run["run_id"], live.as_str(), "{json}");
    assert_eq!(run["status"], "running", "{json}");
    assert_eq!(run["counts"]["views"], 2, "{json}");
    assert_eq!(run["counts"]["success"], 1, "{json}");
    for args in [
        vec!["run", "retry", "--", "--run-id", &live],
        vec!["run", "plan", "--", "--retry", "--run-id", &live],
    ] {
        let out = db.run(&args, &[]).await;
        assert_exit(&out, 2);
        assert!(
            stderr(&out).contains(&format!("run {live} is still going")),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    let out = child.wait_with_output().await.unwrap();
    assert_exit(&out, 0);
    assert_eq!(db.view_run("reporting.slow").await.0, "success");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restart_mid_run_is_survived() {
    let cluster = tokio::task::spawn_blocking(OwnCluster::start)
        .await
        .unwrap();
    let admin = connect(&cluster.url("postgres")).await;
    admin.batch_execute("CREATE DATABASE seeder").await.unwrap();
    let url = cluster.url("seeder");
    let run = |args: &'static [&'static str]| {
        let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_reporting-seeder"));
        c.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("DATABASE_URL", &url)
            .env("SEEDER_MAX_WORKERS", "2")
            .env("SEEDER_MAX_RETRIES", "6")
            .env("RUST_LOG", "warn")
            .args(args)
            .kill_on_drop(true)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        c
    };
    assert_exit(&run(&["run", "migrate"]).output().await.unwrap(), 0);
    let c = connect(&url).await;
    for i in 0..4 {
        c.execute(
            "INSERT INTO reporting.seeder_custom_report_manifest (table_name, report_name, agency_id, agency_slug, query, enabled)
             VALUES ($1, $1, 1, 'gotham', 'SELECT 1 AS id FROM (SELECT pg_sleep(0.8)) s', true)",
            &[&format!("reporting.v{i}")],
        )
        .await
        .unwrap();
    }
    drop(c);
    let child = run(&["run", "refresh_all"]).spawn().unwrap();
    // Restart once two refreshes are running.
    let watcher = connect(&url).await;
    for _ in 0..400 {
        let n: i64 = watcher
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'reporting-seeder' AND query ILIKE '%pg_sleep%' AND state = 'active'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if n >= 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    drop(watcher);
    let cluster = tokio::task::spawn_blocking(move || {
        cluster.restart();
        cluster
    })
    .await
    .unwrap();
    let out = child.wait_with_output().await.unwrap();
    assert_exit(&out, 0);
    let c = connect(&url).await;
    let rows: Vec<(String, String, i32)> = c
        .query(
            "SELECT h.table_name, h.status, v.attempts FROM reporting.seeder_run_history h
             JOIN reporting.seeder_view_run v USING (run_id, table_name)
             WHERE h.run_id = (SELECT run_id FROM reporting.seeder_run ORDER BY started_at DESC LIMIT 1)
             ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(rows.len(), 4, "{rows:?}");
    assert!(rows.iter().all(|r| r.1 == "success"), "{rows:?}");
    assert!(
        rows.iter().any(|r| r.2 >= 2),
        "the interrupted refreshes were tried again: {rows:?}"
    );
    let views: i64 = c
        .query_one("SELECT count(*) FROM pg_matviews", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(views, 4);
    drop(c);
    drop(admin);
    drop(cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_sigkill_the_next_run_recovers() {
    let db = TestDb::new().await;
    db.migrate().await;
    let id = db
        .custom("reporting.rebuilt", "gotham", 1, "SELECT 1 AS id")
        .await;
    db.custom("reporting.other", "gotham", 1, "SELECT 2 AS id")
        .await;
    assert_exit(&db.run(&["run", "refresh_all"], &[]).await, 0);
    db.set_query(id, "SELECT 3 AS id FROM (SELECT pg_sleep(1)) s")
        .await;
    let mut child = db.spawn(&["run", "refresh_all"], &[]);
    // A rebuild fills its new view by REFRESH: that is the statement running the query.
    db.wait_active("REFRESH MATERIALIZED VIEW %_rs_%_new%", 1)
        .await;
    let killed_run = db.last_run_id().await;
    signal(&child, "KILL");
    let _ = child.wait().await;
    // Readers never lose the view: the old one is still there.
    let v: i32 = db
        .client()
        .await
        .query_one("SELECT id FROM reporting.rebuilt", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, 1);
    // The killed run's backend finishes its statement, then notices the client is gone.
    db.wait_tool_gone().await;
    assert_eq!(
        db.temporaries().await,
        1,
        "the interrupted rebuild left its temporary view"
    );
    let dead = last_statuses(&db, &killed_run).await;
    assert!(dead.iter().any(|(_, s)| s == "running"), "{dead:?}");
    // Views of other people's that merely look like the tool's temporaries are not its own:
    // one in another schema (even with the OID of a managed view), one naming no view, one
    // whose digits are no OID.
    let other_oid = db.oid("reporting.other").await.unwrap();
    db.client()
        .await
        .batch_execute(&format!(
            "CREATE SCHEMA otherteam;
             CREATE MATERIALIZED VIEW otherteam._rs_42_new AS SELECT 1 AS important;
             CREATE MATERIALIZED VIEW otherteam._rs_{other_oid}_new AS SELECT 1 AS important;
             CREATE MATERIALIZED VIEW reporting._rs_1_new AS SELECT 1 AS important;
             CREATE MATERIALIZED VIEW reporting._rs_9999999999_new AS SELECT 1 AS important;"
        ))
        .await
        .unwrap();

    let out = db.run(&["run", "refresh_all"], &[]).await;
    assert_exit(&out, 0);
    let dead = last_statuses(&db, &killed_run).await;
    assert!(dead.iter().all(|(_, s)| s != "running"), "{dead:?}");
    assert!(dead.iter().any(|(_, s)| s == "abandoned"), "{dead:?}");
    let status: String = db
        .client()
        .await
        .query_one(
            "SELECT status FROM reporting.seeder_run WHERE run_id = $1",
            &[&killed_run],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(status, "abandoned");
    // `history --run-id` shows the abandoned view too.
    let out = db
        .run(&["run", "history", "--", "--run-id", &killed_run], &[])
        .await;
    assert_exit(&out, 0);
    let text = stdout(&out);
    assert!(
        text.lines()
            .any(|l| l.contains("reporting.rebuilt") && l.contains("abandoned")),
        "{text}"
    );
    let kept: Vec<String> = db
        .client()
        .await
        .query(
            "SELECT relnamespace::regnamespace || '.' || relname FROM pg_class
             WHERE relname ~ '^_rs_[0-9]+_new' ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut expected = vec![
        "otherteam._rs_42_new".to_string(),
        format!("otherteam._rs_{other_oid}_new"),
        "reporting._rs_1_new".into(),
        "reporting._rs_9999999999_new".into(),
    ];
    expected.sort();
    assert_eq!(
        kept, expected,
        "recovery drops its own leftover, and only that"
    );
    db.client()
        .await
        .batch_execute("DROP SCHEMA otherteam CASCADE; DROP MATERIALIZED VIEW reporting._rs_1_new, reporting._rs_9999999999_new")
        .await
        .unwrap();
    assert_eq!(
        statuses(&db).await,
        [
            ("reporting.other".into(), "success".into()),
            ("reporting.rebuilt".into(), "success".into())
        ]
    );
    let v: i32 = db
        .client()
        .await
        .query_one("SELECT id FROM reporting.rebuilt", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, 3);
}

/// A run killed before it reached most of its views left no row for them: `retry` of it still
/// reruns them (the run recorded its selection when it started), and the killed run's record
/// counts them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_sigkill_reruns_the_views_the_dead_run_never_reached() {
    let db = TestDb::new().await;
    db.migrate().await;
    for i in 0..3 {
        db.custom(
            &format!("reporting.slow{i}"),
            "gotham",
            1,
            "SELECT 1 AS id FROM (SELECT pg_sleep(0.5)) s",
        )
        .await;
    }
    // Built once, so each view has its status row (success) before the run that is killed.
    assert_exit(
        &db.run(&["run", "refresh_all"], &[("SEEDER_MAX_WORKERS", "3")])
            .await,
        0,
    );
    let mut child = db.spawn(&["run", "refresh_all"], &[("SEEDER_MAX_WORKERS", "1")]);
    db.wait_active("%REFRESH MATERIALIZED VIEW%slow%", 1).await;
    let killed_run = db.last_run_id().await;
    signal(&child, "KILL");
    let _ = child.wait().await;
    db.wait_tool_gone().await;

    // Another run (of another agency) recovers the dead one: the view it was refreshing says
    // `abandoned` in its status row too, not the success before.
    db.custom("reporting.elsewhere", "metropolis", 2, "SELECT 1 AS id")
        .await;
    assert_exit(
        &db.run(
            &["run", "refresh_all", "--", "--select", "agency:metropolis"],
            &[],
        )
        .await,
        0,
    );
    let abandoned: Vec<String> = db
        .client()
        .await
        .query(
            "SELECT table_name FROM reporting.seeder_job_status WHERE status = 'abandoned' AND last_run_id = $1",
            &[&killed_run],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(abandoned.len(), 1, "{abandoned:?}");

    let out = db
        .run(&["run", "retry", "--", "--run-id", &killed_run], &[])
        .await;
    assert_exit(&out, 0);
    let mut retried = statuses(&db).await;
    retried.sort();
    assert_eq!(
        retried,
        (0..3)
            .map(|i| (format!("reporting.slow{i}"), "success".to_string()))
            .collect::<Vec<_>>(),
        "{}",
        stdout(&out)
    );
    let c = db.client().await;
    let (status, views): (String, i32) = {
        let r = c
            .query_one(
                "SELECT status, views FROM reporting.seeder_run WHERE run_id = $1",
                &[&killed_run],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!((status.as_str(), views), ("abandoned", 3));
    // How long the dead run worked on its view is not known, so no duration is recorded.
    let durations: Vec<Option<i64>> = c
        .query(
            "SELECT duration_ms FROM reporting.seeder_view_run WHERE run_id = $1 AND status = 'abandoned'",
            &[&killed_run],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(durations, [None]);
    // `history` counts what the dead run never finished as abandoned.
    let out = db
        .run(&["run", "history", "--", "--output", "json"], &[])
        .await;
    assert_exit(&out, 0);
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let killed = json["runs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["run_id"] == killed_run.as_str())
        .unwrap_or_else(|| panic!("{json}"));
    let counts = &killed["counts"];
    assert_eq!(counts["views"], 3, "{json}");
    assert_eq!(counts["cancelled"], 0, "{json}");
    assert!(counts["abandoned"].as_i64().unwrap_or(0) >= 1, "{json}");
    assert_eq!(
        ["success", "error", "skipped", "abandoned"]
            .iter()
            .map(|k| counts[k].as_i64().unwrap_or(-100))
            .sum::<i64>(),
        3,
        "{json}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_cancels_running_statements_on_the_server() {
    let db = TestDb::new().await;
    db.migrate().await;
    let id = db
        .custom("reporting.rebuilt", "gotham", 1, "SELECT 1 AS id")
        .await;
    assert_exit(&db.run(&["run", "refresh_all"], &[]).await, 0);
    db.set_query(id, "SELECT 2 AS id FROM (SELECT pg_sleep(30)) s")
        .await;
    db.custom(
        "reporting.sleeper",
        "gotham",
        1,
        "SELECT 1 AS id FROM (SELECT pg_sleep(30)) s",
    )
    .await;
    for i in 0..3 {
        db.custom(
            &format!("reporting.later{i}"),
            "gotham",
            1,
            "SELECT 1 AS id",
        )
        .await;
    }
    // Two workers, both busy with the 30 s views; the three quick ones wait.
    let child = db.spawn(&["run", "refresh_all"], &[("SEEDER_MAX_WORKERS", "2")]);
    // A rebuild fills its new view by REFRESH: that is the statement running the query.
    db.wait_active("%pg_sleep(30)%", 1).await;
    db.wait_active("REFRESH MATERIALIZED VIEW %_rs_%_new%", 1)
        .await;
    let started = std::time::Instant::now();
    signal(&child, "TERM");
    let out = child.wait_with_output().await.unwrap();
    assert_exit(&out, 143);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "waited for the statements instead of cancelling them"
    );
    db.wait_tool_gone().await;
    let rows = statuses(&db).await;
    assert_eq!(rows.len(), 5, "{rows:?}");
    assert!(rows.iter().all(|(_, s)| s == "cancelled"), "{rows:?}");
    assert_eq!(db.temporaries().await, 0);
    let v: i32 = db
        .client()
        .await
        .query_one("SELECT id FROM reporting.rebuilt", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, 1, "the old view stays whole");
    assert!(
        db.oid("reporting.later0").await.is_none(),
        "nothing new started"
    );
    // The run itself is recorded as cancelled, not failed, and history counts its views so.
    let out = db
        .run(
            &["run", "history", "--", "--limit", "1", "--output", "json"],
            &[],
        )
        .await;
    assert_exit(&out, 0);
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let run = &json["runs"][0];
    assert_eq!(run["status"], "cancelled", "{json}");
    assert_eq!(run["counts"]["cancelled"], 5, "{json}");
    assert_eq!(run["counts"]["error"], 0, "{json}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_runs_at_once_refresh_each_view_exactly_once() {
    let db = TestDb::new().await;
    db.migrate().await;
    for i in 0..8 {
        db.custom(
            &format!("reporting.v{i}"),
            "gotham",
            1,
            "SELECT 1 AS id FROM (SELECT pg_sleep(0.2)) s",
        )
        .await;
    }
    // At info: a view found already refreshed by the other run is up to date, said at info.
    let env = [("SEEDER_MAX_WORKERS", "2"), ("RUST_LOG", "info")];
    let a = db.spawn(&["run", "refresh_all"], &env);
    let b = db.spawn(&["run", "refresh_all"], &env);
    let (a, b) = tokio::join!(a.wait_with_output(), b.wait_with_output());
    let (a, b) = (a.unwrap(), b.unwrap());
    for out in [&a, &b] {
        assert!(matches!(code(out), 0 | 1), "{}", stderr(out));
    }
    let rows: Vec<(String, String, Option<String>)> = db
        .client()
        .await
        .query(
            "SELECT table_name, status, errors FROM reporting.seeder_run_history ORDER BY table_name",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    for i in 0..8 {
        let t = format!("reporting.v{i}");
        let mine: Vec<_> = rows.iter().filter(|r| r.0 == t).collect();
        assert_eq!(mine.len(), 2, "one row per run: {mine:?}");
        let ok = mine.iter().filter(|r| r.1 == "success").count();
        assert_eq!(ok, 1, "refreshed exactly once: {mine:?}");
        let other = mine.iter().find(|r| r.1 != "success").unwrap();
        assert_eq!(other.1, "skipped");
        let why = other.2.clone().unwrap_or_default();
        assert!(
            why.contains("locked by run") || why.contains("already refreshed by run"),
            "{why}"
        );
        // The logs (all a cron job may keep) say why, too.
        let logs = format!("{}{}", stderr(&a), stderr(&b));
        assert!(logs.contains(&why), "{why} not in the logs:\n{logs}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_blocked_by_a_reader_times_out_and_is_retried() {
    let db = TestDb::new().await;
    db.migrate().await;
    db.custom("reporting.busy", "gotham", 1, "SELECT 1 AS id")
        .await;
    db.custom("reporting.free", "gotham", 1, "SELECT 2 AS id")
        .await;
    assert_exit(&db.run(&["run", "refresh_all"], &[]).await, 0);
    // A long report holds the view open: a plain REFRESH needs an exclusive lock. ANALYZE in
    // its transaction: a second lock on the view, for the same session.
    let (reader, pid) = holding(
        &db,
        "dashboard",
        "SELECT * FROM reporting.busy; ANALYZE reporting.busy",
    )
    .await;
    let env = [("SEEDER_LOCK_TIMEOUT", "200ms")];
    let out = db.run(&["run", "refresh_all"], &env).await;
    assert_exit(&out, 1);
    let (status, attempts, errors) = db.view_run("reporting.busy").await;
    assert_eq!((status.as_str(), attempts), ("error", 3));
    let errors = errors.unwrap();
    assert!(
        errors.contains("lock timeout")
            && errors.contains("lock_timeout 200ms, from SEEDER_LOCK_TIMEOUT"),
        "{errors}"
    );
    // Each attempt names the session in the way, once with both its locks: enough to find it
    // and end it.
    assert_eq!(
        errors.matches(&format!("blocked by pid {pid} ")).count(),
        3,
        "{errors}"
    );
    assert!(
        errors.contains("application \"dashboard\", idle in transaction")
            && errors.contains(", AccessShareLock+ShareUpdateExclusiveLock)"),
        "{errors}"
    );
    assert_eq!(db.view_run("reporting.free").await.0, "success");
    reader.batch_execute("COMMIT").await.unwrap();
    assert_exit(&db.run(&["run", "refresh_all"], &env).await, 0);
}

async fn holding(db: &TestDb, app: &str, sql: &str) -> (tokio_postgres::Client, i32) {
    let c = db.client().await;
    c.batch_execute(&format!("SET application_name = '{app}'; BEGIN; {sql}"))
        .await
        .unwrap();
    let pid: i32 = c
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    (c, pid)
}

/// A concurrent refresh waits only for locks that conflict with its EXCLUSIVE one: a reader's
/// ACCESS SHARE does not, an index build's SHARE does. Only the latter is named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_timeout_names_only_the_sessions_in_the_way() {
    let db = TestDb::new().await;
    db.migrate().await;
    db.custom(
        "reporting.conc",
        "gotham",
        1,
        "SELECT g AS id FROM generate_series(1, 10) g",
    )
    .await;
    assert_exit(&db.run(&["run", "refresh_all"], &[]).await, 0);
    db.client()
        .await
        .batch_execute("CREATE UNIQUE INDEX conc_id ON reporting.conc (id)")
        .await
        .unwrap();
    let (_reader, reader) = holding(&db, "reader", "SELECT * FROM reporting.conc").await;
    let (_ddl, ddl) = holding(&db, "ddl", "CREATE INDEX conc_tmp ON reporting.conc (id)").await;
    let env = [
        ("SEEDER_REFRESH_CONCURRENTLY", "true"),
        ("SEEDER_LOCK_TIMEOUT", "200ms"),
        ("SEEDER_MAX_RETRIES", "0"),
    ];
    assert_exit(&db.run(&["run", "refresh_all"], &env).await, 1);
    let errors = db.view_run("reporting.conc").await.2.unwrap();
    assert!(
        errors.contains(&format!("blocked by pid {ddl} (user "))
            && errors.contains("application \"ddl\"")
            && errors.contains("ShareLock)"),
        "{errors}"
    );
    assert!(
        !errors.contains(&format!("pid {reader} ")) && !errors.contains("\"reader\""),
        "a reader does not block a concurrent refresh: {errors}"
    );
}

/// A swap drops and recreates the views reading the view: a report holding one of those blocks
/// it as surely as one holding the view, and is named with the view it holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swap_blocked_by_a_reader_of_a_dependent_names_it_and_the_dependent() {
    let db = TestDb::new().await;
    db.migrate().await;
    let base = db
        .custom("reporting.base", "gotham", 1, "SELECT 1 AS id")
        .await;
    db.custom(
        "reporting.dep",
        "gotham",
        1,
        "SELECT id FROM reporting.base",
    )
    .await;
    assert_exit(&db.run(&["run", "refresh_all"], &[]).await, 0);
    let (_reader, pid) = holding(&db, "dashboard", "SELECT * FROM reporting.dep").await;
    db.set_query(base, "SELECT 2 AS id").await;
    let env = [
        ("SEEDER_LOCK_TIMEOUT", "200ms"),
        ("SEEDER_MAX_RETRIES", "0"),
    ];
    assert_exit(&db.run(&["run", "refresh_all"], &env).await, 1);
    let errors = db.view_run("reporting.base").await.2.unwrap();
    assert!(
        errors.contains("lock timeout")
            && errors.contains(&format!("blocked by pid {pid} "))
            && errors.contains("AccessShareLock on reporting.dep)"),
        "{errors}"
    );
}

/// A rebuild's swap needs the old view to itself: while a report holds it, each attempt times out.
/// The new view is built once and only the swap is tried again, so a slow query does not run
/// once per attempt on a database that is already busy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swap_blocked_by_a_reader_is_retried_without_building_again() {
    let db = TestDb::new().await;
    db.migrate().await;
    let id = db
        .custom("reporting.busy", "gotham", 1, "SELECT 1 AS id")
        .await;
    assert_exit(&db.run(&["run", "refresh_all"], &[]).await, 0);
    let client = db.client().await;
    // Each run of the new query takes one number: the sequence counts the builds.
    client
        .batch_execute("CREATE SEQUENCE public.builds")
        .await
        .unwrap();
    db.set_query(id, "SELECT nextval('public.builds') AS n")
        .await;
    let reader = db.client().await;
    reader
        .batch_execute("BEGIN; SELECT * FROM reporting.busy")
        .await
        .unwrap();
    let env = [("SEEDER_LOCK_TIMEOUT", "200ms")];
    let out = db.run(&["run", "refresh_all"], &env).await;
    assert_exit(&out, 1);
    let (status, attempts, errors) = db.view_run("reporting.busy").await;
    assert_eq!((status.as_str(), attempts), ("error", 3));
    let errors = errors.unwrap();
    assert!(
        errors.contains("lock timeout") && errors.contains("blocked by pid"),
        "{errors}"
    );
    let builds: i64 = client
        .query_one("SELECT last_value FROM public.builds", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(builds, 1, "three swaps, one build");
    // The recorded duration is the work of every attempt: three lock waits of 200 ms at least.
    let duration: i64 = client
        .query_one(
            "SELECT duration_ms FROM reporting.seeder_view_run WHERE table_name = 'reporting.busy' \
             ORDER BY finished_at DESC LIMIT 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(duration >= 600, "{duration} ms");
    assert_eq!(
        db.temporaries().await,
        0,
        "the new view is dropped at the end"
    );
    // Readers kept the old view throughout.
    let old: i32 = reader
        .query_one("SELECT id FROM reporting.busy", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(old, 1);
    reader.batch_execute("COMMIT").await.unwrap();
    assert_exit(&db.run(&["run", "refresh_all"], &env).await, 0);
    let n: i64 = client
        .query_one("SELECT n FROM reporting.busy", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 2, "built once more, then swapped in");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_that_times_out_is_not_retried_and_names_the_timeout() {
    let db = TestDb::new().await;
    db.migrate().await;
    db.custom(
        "reporting.too_slow",
        "gotham",
        1,
        "SELECT 1 AS id FROM (SELECT pg_sleep(3)) s",
    )
    .await;
    db.custom(
        "reporting.own_budget",
        "gotham",
        1,
        "SELECT 1 AS id FROM (SELECT pg_sleep(0.5)) s",
    )
    .await;
    // A manifest table with its own timeout column overrides the run's setting for that view.
    own_statement_timeout(&db, "reporting.own_budget", Some("5s")).await;
    let out = db
        .run(
            &["run", "refresh_all"],
            &[("SEEDER_STATEMENT_TIMEOUT", "300ms")],
        )
        .await;
    assert_exit(&out, 1);
    let (status, attempts, errors) = db.view_run("reporting.too_slow").await;
    assert_eq!((status.as_str(), attempts), ("error", 1));
    let errors = errors.unwrap();
    assert!(
        errors.contains("statement timeout")
            && errors.contains("statement_timeout 300ms, from SEEDER_STATEMENT_TIMEOUT"),
        "{errors}"
    );
    assert_eq!(db.view_run("reporting.own_budget").await.0, "success");
    assert!(db.oid("reporting.too_slow").await.is_none());
}

/// A timeout column of type `interval` (what Django's `DurationField` makes) is read as the
/// interval it holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interval_timeout_column_is_read_as_its_interval() {
    let db = TestDb::new().await;
    db.migrate().await;
    db.canned(
        "reporting.roomy",
        "SELECT 1 AS id FROM (SELECT pg_sleep(0.5)) s",
        &[(1, "gotham")],
    )
    .await;
    db.canned(
        "reporting.tight",
        "SELECT 1 AS id FROM (SELECT pg_sleep(2)) s",
        &[(1, "gotham")],
    )
    .await;
    db.client()
        .await
        .batch_execute(
            "ALTER TABLE reporting.seeder_canned_report ADD COLUMN statement_timeout interval;
             UPDATE reporting.seeder_canned_report SET statement_timeout = '5 seconds'
              WHERE table_name = 'reporting.roomy';
             UPDATE reporting.seeder_canned_report SET statement_timeout = '0.2 seconds'
              WHERE table_name = 'reporting.tight';",
        )
        .await
        .unwrap();
    let out = db
        .run(
            &["run", "refresh_all"],
            &[("SEEDER_STATEMENT_TIMEOUT", "300ms")],
        )
        .await;
    assert_exit(&out, 1);
    assert_eq!(db.view_run("reporting.roomy").await.0, "success");
    let (status, _, errors) = db.view_run("reporting.tight").await;
    assert_eq!(status, "error");
    let errors = errors.unwrap_or_default();
    assert!(
        errors.contains("statement_timeout 200ms, from the manifest's statement_timeout column"),
        "{errors}"
    );
}

/// A view recreated inside its upstream's rebuild runs its query under its own manifest's
/// statement timeout, as it does when refreshed on its own; the others keep the run's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dependent_recreated_with_its_upstream_keeps_its_own_statement_timeout() {
    let db = TestDb::new().await;
    db.migrate().await;
    let up = db
        .custom("reporting.up", "gotham", 1, "SELECT 1 AS id")
        .await;
    db.custom(
        "reporting.slow_down",
        "gotham",
        1,
        "SELECT id FROM reporting.up, (SELECT pg_sleep(0.6)) s",
    )
    .await;
    db.custom(
        "reporting.quick_down",
        "gotham",
        1,
        "SELECT id FROM reporting.up",
    )
    .await;
    own_statement_timeout(&db, "reporting.slow_down", Some("10s")).await;
    let c = db.client().await;
    let env = [("SEEDER_STATEMENT_TIMEOUT", "300ms")];
    assert_exit(&db.run(&["run", "refresh_all"], &env).await, 0);
    db.set_query(up, "SELECT 2 AS id").await;
    let out = db.run(&["run", "refresh_all"], &env).await;
    assert_exit(&out, 0);
    let ids: (i32, i32) = {
        let r = c
            .query_one(
                "SELECT (SELECT id FROM reporting.slow_down), (SELECT id FROM reporting.quick_down)",
                &[],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(ids, (2, 2), "both recreated from the new upstream");
    // The override was the swap's only: the session is back to the run's timeout.
    own_statement_timeout(&db, "reporting.slow_down", None).await;
    db.set_query(up, "SELECT 3 AS id").await;
    let out = db.run(&["run", "refresh_all"], &env).await;
    assert_exit(&out, 1);
    assert!(
        stdout(&out).contains("statement timeout"),
        "{}",
        stdout(&out)
    );
    // When the dependent's own timeout is the one that runs out, that is the one named.
    own_statement_timeout(&db, "reporting.slow_down", Some("100ms")).await;
    db.set_query(up, "SELECT 4 AS id").await;
    let out = db
        .run(
            &["run", "refresh_all"],
            &[("SEEDER_STATEMENT_TIMEOUT", "10s")],
        )
        .await;
    assert_exit(&out, 1);
    let error = db.view_run("reporting.up").await.2.unwrap_or_default();
    assert!(
        error.contains(
            "[statement_timeout 100ms, from the statement_timeout column of reporting.slow_down's manifest]"
        ) && !error.contains("SEEDER_STATEMENT_TIMEOUT"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_run_that_lost_its_own_connection_is_not_taken_for_dead() {
    let db = TestDb::new().await;
    db.migrate().await;
    db.custom(
        "reporting.slow",
        "gotham",
        1,
        "SELECT pg_sleep(2)::text AS s, 1 AS id",
    )
    .await;
    db.custom("reporting.quick", "star", 2, "SELECT 1 AS id")
        .await;
    let child = db.spawn(
        &[
            "run",
            "refresh_all",
            "--",
            "--select",
            "table:reporting.slow",
            "--metrics-file",
            "m.prom",
        ],
        &[],
    );
    let worker = db.wait_active("%pg_sleep(2)%", 1).await;
    let c = db.client().await;
    let first: String = c
        .query_one(
            "SELECT run_id FROM reporting.seeder_run ORDER BY started_at LIMIT 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    // The run's own connection (every other backend of the tool) is terminated.
    let killed: i64 = c
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
             WHERE datname = $1 AND application_name = 'reporting-seeder' AND pid <> ALL($2)",
            &[&db.name, &worker],
        )
        .await
        .unwrap()
        .get(0);
    assert!(killed >= 1);
    // Another run starts meanwhile; its recovery must leave the live run alone.
    let out = db
        .run(
            &[
                "run",
                "refresh_all",
                "--",
                "--select",
                "table:reporting.quick",
            ],
            &[],
        )
        .await;
    assert_exit(&out, 0);
    assert!(
        !stderr(&out).contains("earlier runs ended"),
        "{}",
        stderr(&out)
    );
    let status: String = c
        .query_one(
            "SELECT status FROM reporting.seeder_run WHERE run_id = $1",
            &[&first],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(status, "running");
    let slow: String = c
        .query_one(
            "SELECT status FROM reporting.seeder_run_history WHERE run_id = $1",
            &[&first],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(slow, "running", "the live run's view was marked abandoned");
    let out = child.wait_with_output().await.unwrap();
    assert_exit(&out, 0);
    // Its end, on a new connection, still read when the view last succeeded.
    let metrics = std::fs::read_to_string(db.dir.path().join("m.prom")).unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("reporting_seeder_view_last_success_timestamp_seconds{")),
        "{metrics}"
    );
    let (run, view): (String, String) = {
        let r = c
            .query_one(
                "SELECT (SELECT status FROM reporting.seeder_run WHERE run_id = $1),
                        (SELECT status FROM reporting.seeder_view_run WHERE run_id = $1)",
                &[&first],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!((run.as_str(), view.as_str()), ("success", "success"));
}

/// `--wait-for-locks` waits as long as the other run takes: the statement timeout is for the
/// view's own statements, not for the wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_for_locks_outlasts_the_statement_timeout() {
    let db = TestDb::new().await;
    db.migrate().await;
    db.custom(
        "reporting.slow",
        "gotham",
        1,
        "SELECT pg_sleep(1.5)::text AS s, 1 AS id",
    )
    .await;
    let first = db.spawn(&["run", "refresh_all"], &[]);
    db.wait_active("%pg_sleep(1.5)%", 1).await;
    let out = db
        .run(
            &["run", "refresh_all", "--", "--wait-for-locks"],
            &[("SEEDER_STATEMENT_TIMEOUT", "500ms"), ("RUST_LOG", "info")],
        )
        .await;
    assert_exit(&first.wait_with_output().await.unwrap(), 0);
    let (status, _, reason) = db.view_run("reporting.slow").await;
    assert_eq!(status, "skipped", "{reason:?} {}", stderr(&out));
    assert!(
        reason
            .as_deref()
            .unwrap_or_default()
            .contains("already refreshed"),
        "{reason:?}"
    );
    // The wait is said, with whom it waits for, and its end.
    let err = stderr(&out);
    assert!(
        err.contains("waiting for the run refreshing this view to let it go")
            && err.contains("held_by=run ")
            && err.contains("the view's lock was let go"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_a_wait_for_another_runs_lock_at_once() {
    let db = TestDb::new().await;
    db.migrate().await;
    db.custom(
        "reporting.slow",
        "gotham",
        1,
        "SELECT pg_sleep(3)::text AS s, 1 AS id",
    )
    .await;
    let first = db.spawn(&["run", "refresh_all"], &[]);
    db.wait_active("%pg_sleep(3)%", 1).await;
    let waiting = db.spawn(
        &[
            "run",
            "refresh_all",
            "--",
            "--wait-for-locks",
            "--output",
            "json",
        ],
        &[],
    );
    db.wait_active("%pg_advisory_lock(%", 1).await;
    let sent = std::time::Instant::now();
    signal(&waiting, "TERM");
    let out = waiting.wait_with_output().await.unwrap();
    assert_exit(&out, 143);
    assert!(
        sent.elapsed() < std::time::Duration::from_secs(2),
        "it waited for the other run: {:?}",
        sent.elapsed()
    );
    let (status, _, reason) = db.view_run("reporting.slow").await;
    assert_eq!(status, "cancelled", "{reason:?}");
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(json["counts"]["cancelled"], 1, "{json}");
    // Nothing of the waiting run is left waiting on the server.
    let c = db.client().await;
    let mut waiting_backends = -1i64;
    for _ in 0..40 {
        waiting_backends = c
            .query_one(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE datname = $1 AND application_name = 'reporting-seeder'
                   AND state = 'active' AND wait_event_type = 'Lock'",
                &[&db.name],
            )
            .await
            .unwrap()
            .get(0);
        if waiting_backends == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(waiting_backends, 0);
    assert_exit(&first.wait_with_output().await.unwrap(), 0);
}

/// `retry` without `--run-id` repeats the newest run that is over: one killed before it reached
/// any view (it recorded its selection, and no history row) is that run, and a live one is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_retry_takes_a_run_killed_before_any_view_and_never_a_live_one() {
    let db = TestDb::new().await;
    db.migrate().await;
    for i in 0..2 {
        db.custom(&format!("reporting.v{i}"), "gotham", 1, "SELECT 1 AS id")
            .await;
    }
    assert_exit(&db.run(&["run", "refresh_all"], &[]).await, 0);
    // Another session's query keeps the active-query throttle shut: the run starts, records its
    // selection, and waits before its first view.
    let blocker = db.client().await;
    let blocker_pid: i32 = blocker
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let sleeping = tokio::spawn(async move {
        let _ = blocker.batch_execute("SELECT pg_sleep(60)").await;
    });
    let mut child = db.spawn(
        &["run", "refresh_all"],
        &[("SEEDER_MAX_DB_ACTIVE_QUERIES", "1")],
    );
    let c = db.client().await;
    let mut live = None;
    for _ in 0..400 {
        live = c
            .query_opt(
                "SELECT run_id FROM reporting.seeder_run
                 WHERE status = 'running' AND cardinality(selected) = 2",
                &[],
            )
            .await
            .unwrap()
            .map(|r| r.get::<_, String>(0));
        if live.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    let live = live.expect("the run did not start within 10 s");

    // While it runs, a plain retry does not take it (its views are its own).
    let out = db.run(&["run", "retry"], &[]).await;
    assert!(
        !stderr(&out).contains(&live) && !stdout(&out).contains(&live),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );

    signal(&child, "KILL");
    let _ = child.wait().await;
    c.execute("SELECT pg_cancel_backend($1)", &[&blocker_pid])
        .await
        .unwrap();
    let _ = sleeping.await;
    db.wait_tool_gone().await;

    let out = db.run(&["run", "retry"], &[]).await;
    assert_exit(&out, 0);
    let retried = db.last_run_id().await;
    let rows = db.history(&retried).await;
    assert_eq!(
        rows.iter()
            .map(|r| (r.0.as_str(), r.1.as_str()))
            .collect::<Vec<_>>(),
        [("reporting.v0", "success"), ("reporting.v1", "success")],
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
}

/// A manifest table locked by someone else past the lock timeout, before any view started:
/// nothing ran, so the orchestrator is told to retry later (exit 3), not that a view failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_stopped_by_a_lock_timeout_is_exit_3() {
    let db = TestDb::new().await;
    db.migrate().await;
    db.custom("reporting.v", "gotham", 1, "SELECT 1 AS id")
        .await;
    let mut locker = db.client().await;
    let tx = locker.transaction().await.unwrap();
    tx.batch_execute("LOCK TABLE reporting.seeder_custom_report_manifest IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let out = db
        .run(&["run", "refresh_all"], &[("SEEDER_LOCK_TIMEOUT", "200ms")])
        .await;
    tx.rollback().await.unwrap();
    assert_exit(&out, 3);
    assert!(stderr(&out).contains("nothing ran"), "{}", stderr(&out));
}

/// A tool killed while its start waits for a manifest table someone holds, with no lock
/// timeout, leaves no backend waiting in that table's lock queue (where it would hold up
/// whoever queues behind it): the run's own session finds the client gone within seconds too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_runs_wait_for_a_manifest_table_ends_on_the_server() {
    let db = TestDb::new().await;
    db.migrate().await;
    db.custom("reporting.v", "gotham", 1, "SELECT 1 AS id")
        .await;
    let mut locker = db.client().await;
    let tx = locker.transaction().await.unwrap();
    tx.batch_execute("LOCK TABLE reporting.seeder_custom_report_manifest IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let mut child = db.spawn(&["run", "refresh_all"], &[("SEEDER_LOCK_TIMEOUT", "0")]);
    db.wait_active("%seeder_custom_report_manifest%", 1).await;
    signal(&child, "KILL");
    let _ = child.wait().await;
    // Within wait_tool_gone's 10 s, while the table is still held.
    db.wait_tool_gone().await;
    tx.rollback().await.unwrap();
}

/// A run (or `status`) that times out reading the manifest tables says who keeps it out of
/// them and which setting timed out, as a refresh's lock timeout does: exit 3, nothing ran.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_timeout_on_the_manifest_tables_names_the_holder() {
    let db = TestDb::new().await;
    db.migrate().await;
    db.custom("reporting.v", "gotham", 1, "SELECT 1 AS id")
        .await;
    let holder = db.client().await;
    holder
        .batch_execute(
            "SET application_name = 'ddl-job'; BEGIN;
             LOCK TABLE reporting.seeder_canned_report IN ACCESS EXCLUSIVE MODE",
        )
        .await
        .unwrap();
    let pid: i32 = holder
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    for job in ["refresh_all", "status"] {
        let out = db
            .run(&["run", job], &[("SEEDER_LOCK_TIMEOUT", "200ms")])
            .await;
        assert_exit(&out, 3);
        let err = stderr(&out);
        assert!(
            err.contains(&format!("blocked by pid {pid} (user "))
                && err.contains("application \"ddl-job\"")
                && err.contains("AccessExclusiveLock on reporting.seeder_canned_report)")
                && err.contains("[lock_timeout 200ms, from SEEDER_LOCK_TIMEOUT]")
                && err.contains("or raise SEEDER_LOCK_TIMEOUT"),
            "{job}: {err}"
        );
    }
    holder.batch_execute("ROLLBACK").await.unwrap();
    assert!(db.oid("reporting.v").await.is_none(), "nothing ran");
    // `status` reads the views' status rows too: one held there is named as well.
    holder
        .batch_execute("BEGIN; LOCK TABLE reporting.seeder_job_status IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let out = db
        .run(&["run", "status"], &[("SEEDER_LOCK_TIMEOUT", "200ms")])
        .await;
    holder.batch_execute("ROLLBACK").await.unwrap();
    assert_exit(&out, 3);
    assert!(
        stderr(&out).contains("AccessExclusiveLock on reporting.seeder_job_status)"),
        "{}",
        stderr(&out)
    );
}

/// A job other than a run (`status`, `plan`) waiting for a manifest table someone holds ends
/// at once on a signal: its statement is cancelled on the server, not left to wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signal_ends_a_job_waiting_for_a_lock_at_once() {
    let db = TestDb::new().await;
    db.migrate().await;
    db.custom("reporting.v", "gotham", 1, "SELECT 1 AS id")
        .await;
    let holder = db.client().await;
    holder
        .batch_execute("BEGIN; LOCK TABLE reporting.seeder_canned_report IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    for job in ["status", "plan"] {
        let child = db.spawn(&["run", job], &[("SEEDER_LOCK_TIMEOUT", "0")]);
        db.wait_active("%seeder_canned_report%", 1).await;
        let sent = std::time::Instant::now();
        signal(&child, "INT");
        let out = child.wait_with_output().await.unwrap();
        assert_exit(&out, 130);
        assert!(
            sent.elapsed() < std::time::Duration::from_secs(2),
            "{job} waited for the lock: {:?}",
            sent.elapsed()
        );
        assert!(
            stderr(&out).contains("cancelled"),
            "{job}: {}",
            stderr(&out)
        );
        // Nothing of it is left waiting on the server.
        db.wait_tool_gone().await;
    }
    holder.batch_execute("ROLLBACK").await.unwrap();
}

/// A rebuild that finds another run's rebuild of a view reading it half done (the new view
/// built, not yet swapped in) says so, rather than asking for the tool's own new view to be
/// dropped by hand; that other run goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_meeting_another_runs_rebuild_of_its_reader_says_so() {
    let db = TestDb::new().await;
    db.migrate().await;
    let a = db
        .custom("reporting.a", "gotham", 1, "SELECT 1 AS id, 2 AS v")
        .await;
    let b = db
        .custom(
            "reporting.b",
            "gotham",
            1,
            "SELECT v, count(*) AS c FROM reporting.a GROUP BY v",
        )
        .await;
    assert_exit(&db.run(&["run", "refresh_all"], &[]).await, 0);
    db.set_query(
        a,
        "SELECT 1 AS id, 2 AS v, 1 AS z FROM (SELECT pg_sleep(1.2)) s",
    )
    .await;
    db.set_query(
        b,
        "SELECT v, count(*) AS c, 1 AS k FROM reporting.a, (SELECT pg_sleep(2.5)) s GROUP BY v",
    )
    .await;
    // A rebuild fills its new view with REFRESH: both are under way together.
    let first = db.spawn(&["run", "refresh_table", "--", "reporting.a"], &[]);
    db.wait_active("REFRESH MATERIALIZED VIEW %_rs_%", 1).await;
    let second = db.spawn(&["run", "refresh_table", "--", "reporting.b"], &[]);
    db.wait_active("REFRESH MATERIALIZED VIEW %_rs_%", 2).await;
    let out = first.wait_with_output().await.unwrap();
    assert_exit(&out, 1);
    let text = stdout(&out);
    assert!(
        text.contains(
            "cannot rebuild reporting.a now: another run is rebuilding a view that reads it"
        ) && !text.contains("by hand"),
        "{text}"
    );
    assert_exit(&second.wait_with_output().await.unwrap(), 0);
}
