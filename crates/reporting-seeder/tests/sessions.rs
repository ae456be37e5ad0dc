//! How the tool's connections end: with a goodbye to the server (Terminate, then the TLS and TCP
//! close), never cut off. A cut-off TLS connection shows in the server's log as "could not
//! receive data from client: Connection reset by peer", once per connection and run.
//!
//! A file of its own: the connection tasks [`end_sessions`] waits for are the whole process's.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use etl_core::db::{end_sessions, ConnectionSettings, DatabaseClient, PostgresClient};

#[tokio::test]
async fn connections_end_their_sessions_cleanly() {
    let db = TestDb::new().await;
    // The server offers TLS (`.ci/run` makes sure of it), which the default `prefer` takes.
    let settings = ConnectionSettings::from_config(db.url.parse().unwrap());
    let client = PostgresClient::new(&settings, 2).unwrap();

    // One connection handed back to the pool and dropped with it, one taken out of the pool
    // (how a run closes a worker's connection early).
    let pooled = client.connection().await.unwrap();
    let taken = client.connection().await.unwrap();
    let mut pids = Vec::new();
    for conn in [&pooled, &taken] {
        let row = conn
            .query_one(
                "SELECT pg_backend_pid(), ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )
            .await
            .unwrap();
        assert!(row.get::<_, bool>(1), "the test connection should use TLS");
        pids.push(row.get::<_, i32>(0));
    }
    drop(deadpool_postgres::Object::take(taken));
    drop(pooled);
    drop(client);

    let seen = end_sessions(Duration::from_secs(10)).await;
    assert_eq!(
        (seen.clean, seen.cut, seen.open),
        (2, 0, 0),
        "both sessions should have ended with a goodbye: {seen:?}"
    );

    // And the server let both backends go.
    let admin = db.client().await;
    let left = count_until_zero(
        &admin,
        "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1)",
        &[&pids],
    )
    .await;
    assert_eq!(left, 0, "the server still has the backends {pids:?}");
}

/// Runs a `count(*)` query until it says 0, for at most ten seconds (a backend leaves a moment
/// after its client said goodbye); the last count.
async fn count_until_zero(
    client: &tokio_postgres::Client,
    query: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> i64 {
    let mut count = i64::MAX;
    for _ in 0..200 {
        count = client.query_one(query, params).await.unwrap().get(0);
        if count == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    count
}

#[tokio::test]
async fn a_healthy_run_leaves_no_error_in_the_server_log() {
    let db = TestDb::new().await;
    db.migrate().await;
    db.custom("reporting.quiet", "gotham", 1, "SELECT 1 AS id")
        .await;
    let before = db.rollbacks().await;
    // A first build, then a refresh; the database has no pg_stat_statements, the usual case.
    for _ in 0..2 {
        assert_exit(&db.run(&["run", "refresh_all"], &[]).await, 0);
    }
    let after = db.rollbacks().await;
    assert_eq!(
        after - before,
        0,
        "every statement of a healthy run should succeed: an ERROR in the server log is a DBA's alarm"
    );
}
