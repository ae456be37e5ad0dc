//! A run in parallel: at most SEEDER_MAX_WORKERS refreshes in flight, each on its own
//! connection, a slow view holding back no other, and the circuit breaker that opens on database
//! trouble but not on a manifest's own SQL error.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use std::time::Duration;

async fn migrated() -> TestDb {
    let db = TestDb::new().await;
    db.migrate().await;
    db
}

/// 1 when the database has pg_stat_statements: a run then reads its figures on a connection of
/// its own, one more than its workers and itself.
async fn statements_reader(db: &TestDb) -> i64 {
    db.client()
        .await
        .query_one(
            "SELECT count(*) FROM pg_extension WHERE extname = 'pg_stat_statements'",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

/// The highest count `query` (given the database's name as `$1`) returns while `child` runs,
/// polled every 5 ms.
async fn peak_while_running(db: &TestDb, child: &mut tokio::process::Child, query: &str) -> i64 {
    let observer = db.client().await;
    let mut peak = 0i64;
    while child.try_wait().unwrap().is_none() {
        let n: i64 = observer.query_one(query, &[&db.name]).await.unwrap().get(0);
        peak = peak.max(n);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    peak
}

/// The largest number of this run's history intervals [start_time, finish_time) that contain one
/// instant (the maximum is always reached at some interval's start).
async fn max_overlap(db: &TestDb, run_id: &str) -> i64 {
    db.client()
        .await
        .query_one(
            "SELECT max((SELECT count(*) FROM reporting.seeder_run_history o
                         WHERE o.run_id = h.run_id
                           AND o.start_time <= h.start_time AND o.finish_time > h.start_time))
             FROM reporting.seeder_run_history h WHERE h.run_id = $1",
            &[&run_id],
        )
        .await
        .unwrap()
        .get::<_, Option<i64>>(0)
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_most_max_workers_refreshes_are_in_flight() {
    let db = migrated().await;
    for i in 0..6 {
        db.custom(
            &format!("reporting.sleepy_{i}"),
            "gotham",
            1,
            "SELECT pg_sleep(0.4)::text AS s, 1 AS id",
        )
        .await;
    }
    let out = db
        .run(&["run", "refresh_all"], &[("SEEDER_MAX_WORKERS", "2")])
        .await;
    assert_exit(&out, 0);
    let run_id = db.last_run_id().await;
    let history = db.history(&run_id).await;
    assert_eq!(history.len(), 6, "{history:?}");
    assert!(
        history.iter().all(|(_, s, _)| s == "success"),
        "{history:?}"
    );
    let unfinished: i64 = db
        .client()
        .await
        .query_one(
            "SELECT count(*) FROM reporting.seeder_run_history WHERE run_id = $1 AND finish_time IS NULL",
            &[&run_id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(unfinished, 0);
    let overlap = max_overlap(&db, &run_id).await;
    assert!(overlap <= 2, "{overlap} refreshes in flight with 2 workers");
    assert!(overlap >= 2, "refreshes never overlapped: {overlap}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_view_does_not_hold_back_the_others() {
    let db = migrated().await;
    db.custom(
        "reporting.slow",
        "gotham",
        1,
        "SELECT pg_sleep(3)::text AS s, 1 AS id",
    )
    .await;
    for i in 0..5 {
        db.custom(
            &format!("reporting.fast_{i}"),
            "gotham",
            1,
            "SELECT pg_sleep(0.2)::text AS s, 1 AS id",
        )
        .await;
    }
    let out = db
        .run(&["run", "refresh_all"], &[("SEEDER_MAX_WORKERS", "2")])
        .await;
    assert_exit(&out, 0);
    let run_id = db.last_run_id().await;
    let rows = db
        .client()
        .await
        .query(
            "SELECT f.table_name, f.finish_time < s.finish_time
             FROM reporting.seeder_run_history f
             JOIN reporting.seeder_run_history s
               ON s.run_id = f.run_id AND s.table_name = 'reporting.slow'
             WHERE f.run_id = $1 AND f.table_name <> 'reporting.slow'
             ORDER BY 1",
            &[&run_id],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 5);
    for r in rows {
        let table: String = r.get(0);
        let earlier: Option<bool> = r.get(1);
        assert_eq!(
            earlier,
            Some(true),
            "{table} finished after the slow view: it waited for it"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_refresh_runs_on_its_own_connection() {
    let db = migrated().await;
    for i in 0..4 {
        db.custom(
            &format!("reporting.sleep_{i}"),
            "gotham",
            1,
            "SELECT pg_sleep(1)::text AS s, 1 AS id",
        )
        .await;
    }
    let mut child = db.spawn(&["run", "refresh_all"], &[("SEEDER_MAX_WORKERS", "4")]);
    let max_seen = peak_while_running(
        &db,
        &mut child,
        "SELECT count(DISTINCT pid) FROM pg_stat_activity
         WHERE datname = $1 AND application_name = 'reporting-seeder'
           AND query ILIKE '%pg_sleep%' AND state = 'active'",
    )
    .await;
    let out = child.wait_with_output().await.unwrap();
    assert_exit(&out, 0);
    assert!(
        max_seen >= 2,
        "at most {max_seen} backend(s) ran the refreshes at once"
    );
    assert!(
        max_seen <= 4,
        "{max_seen} backends ran refreshes with 4 workers"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_opens_on_database_trouble_then_a_failed_probe_skips_the_rest() {
    let db = migrated().await;
    let killers = ["reporting.kill_1", "reporting.kill_2", "reporting.kill_3"];
    let ordinary = [
        "reporting.plain_1",
        "reporting.plain_2",
        "reporting.plain_3",
    ];
    for t in killers {
        db.custom(
            t,
            "gotham",
            1,
            "SELECT pg_terminate_backend(pg_backend_pid())::text AS t, 1 AS id",
        )
        .await;
    }
    for t in ordinary {
        db.custom(t, "gotham", 1, "SELECT 1 AS id").await;
    }
    let out = db
        .run(
            &["run", "refresh_all"],
            &[
                ("SEEDER_MAX_WORKERS", "1"),
                ("SEEDER_MAX_FAILURES", "2"),
                ("SEEDER_RESET_SECONDS", "1"),
            ],
        )
        .await;
    assert_exit(&out, 1);
    let run_id = db.last_run_id().await;
    let history = db.history(&run_id).await;
    assert_eq!(history.len(), 6, "one row per view: {history:?}");
    let row = |t: &str| {
        history
            .iter()
            .find(|(name, _, _)| name == t)
            .cloned()
            .unwrap_or_else(|| panic!("{t} has no history row: {history:?}"))
    };
    // Two failures open the breaker; after the reset time the next view (the third killer)
    // starts as the probe, fails the same way, and the rest are skipped.
    for t in killers {
        let (_, status, errors) = row(t);
        assert_eq!(status, "error", "{t}: {errors:?}");
    }
    for t in ordinary {
        let (_, status, errors) = row(t);
        assert_eq!(status, "skipped", "{t}: {errors:?}");
        let errors = errors.unwrap_or_default();
        assert!(
            errors.contains("circuit breaker") && errors.contains("probe"),
            "{t}: {errors}"
        );
    }
    for t in ordinary {
        assert_eq!(
            db.oid(t).await,
            None,
            "{t} was created after the breaker opened"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_sql_errors_do_not_open_the_breaker() {
    let db = migrated().await;
    for i in 0..4 {
        db.custom(
            &format!("reporting.broken_{i}"),
            "gotham",
            1,
            "SELECT 1/0 AS x",
        )
        .await;
    }
    let good = ["reporting.good_1", "reporting.good_2"];
    for t in good {
        db.custom(t, "gotham", 1, "SELECT 1 AS id").await;
    }
    let out = db
        .run(
            &["run", "refresh_all"],
            &[("SEEDER_MAX_WORKERS", "1"), ("SEEDER_MAX_FAILURES", "2")],
        )
        .await;
    assert_exit(&out, 1);
    let run_id = db.last_run_id().await;
    let history = db.history(&run_id).await;
    assert_eq!(history.len(), 6, "{history:?}");
    for (t, status, errors) in &history {
        if t.starts_with("reporting.broken_") {
            assert_eq!(status, "error", "{t}: {errors:?}");
            let errors = errors.clone().unwrap_or_default();
            assert!(errors.contains("division by zero"), "{t}: {errors}");
        } else {
            assert_eq!(status, "success", "{t}: {errors:?}");
        }
    }
    for t in good {
        assert!(db.oid(t).await.is_some(), "{t} was not created");
    }
}

/// Once every view has started, a worker whose view is done closes its connection rather than
/// keeping it (and its server process) idle while the slowest view finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_workers_close_their_connections_once_nothing_is_left_to_start() {
    let db = migrated().await;
    db.custom(
        "reporting.slow",
        "gotham",
        1,
        "SELECT pg_sleep(3)::text AS s, 1 AS id",
    )
    .await;
    for i in 0..3 {
        db.custom(
            &format!("reporting.fast_{i}"),
            "gotham",
            1,
            "SELECT 1 AS id",
        )
        .await;
    }
    let child = db.spawn(&["run", "refresh_all"], &[("SEEDER_MAX_WORKERS", "4")]);
    let slow = db.wait_active("%pg_sleep(3)%", 1).await;
    let observer = db.client().await;
    let expected = 2 + statements_reader(&db).await;
    // The tool's connections, and whether the slow refresh is still running.
    let mut seen = Vec::new();
    for _ in 0..400 {
        let r = observer
            .query_one(
                "SELECT count(*), bool_or(pid = $2 AND state = 'active')
                 FROM pg_stat_activity
                 WHERE datname = $1 AND application_name = 'reporting-seeder'",
                &[&db.name, &slow[0]],
            )
            .await
            .unwrap();
        let (n, slow_running): (i64, Option<bool>) = (r.get(0), r.get(1));
        if slow_running != Some(true) {
            break;
        }
        seen.push(n);
        if n <= expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let out = child.wait_with_output().await.unwrap();
    assert_exit(&out, 0);
    // The run's own connection and the slow view's: the three fast views' are gone.
    assert!(
        seen.last().is_some_and(|&n| n <= expected),
        "connections of the tool seen while the slow view ran: {seen:?}"
    );
}

/// A run holds one connection per worker besides its own, as the README says: the views wait for
/// the connections opened ahead for them instead of opening one more while those come up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_holds_one_connection_per_worker_besides_its_own() {
    let db = migrated().await;
    for i in 0..6 {
        db.custom(
            &format!("reporting.nap_{i}"),
            "gotham",
            1,
            "SELECT pg_sleep(0.5)::text AS s, 1 AS id",
        )
        .await;
    }
    let budget = 2 + 1 + statements_reader(&db).await;
    let mut child = db.spawn(&["run", "refresh_all"], &[("SEEDER_MAX_WORKERS", "2")]);
    let most = peak_while_running(
        &db,
        &mut child,
        "SELECT count(*) FROM pg_stat_activity
         WHERE datname = $1 AND application_name = 'reporting-seeder'",
    )
    .await;
    let out = child.wait_with_output().await.unwrap();
    assert_exit(&out, 0);
    assert!(
        most >= 3,
        "the run was never seen with its connections: {most}"
    );
    assert!(
        most <= budget,
        "{most} connections at once with 2 workers (at most {budget})"
    );
}
