//! `run demo`: on the configured server, and on a throwaway cluster when none answers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;

fn demo_cmd() -> tokio::process::Command {
    let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_reporting-seeder"));
    c.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RUST_LOG", "warn")
        .args(["run", "demo"])
        .kill_on_drop(true);
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_runs_on_the_configured_server_in_a_database_of_its_own() {
    // Runs twice: the second run resets the demo database and must succeed the same way. The
    // database DATABASE_URL names need not exist: the demo uses one of its own.
    for url in [
        server_url(),
        url_with_db(&server_url(), "no_such_database_for_the_demo"),
    ] {
        let out = demo_cmd().env("DATABASE_URL", url).output().await.unwrap();
        assert_exit(&out, 0);
        let text = stdout(&out);
        assert!(
            text.contains("4 views, 4 success, 0 error, 0 skipped"),
            "{text}"
        );
        assert!(
            text.contains("gotham") && text.contains("metropolis"),
            "{text}"
        );
        assert!(
            text.contains("psql ") && text.contains("reporting_seeder_demo"),
            "{text}"
        );
    }
    let demo = connect(&url_with_db(&server_url(), "reporting_seeder_demo")).await;
    let agencies: String = demo
        .query_one(
            "SELECT agency_slug FROM reporting.seeder_run_history WHERE table_name = 'reporting.canned_arrests_by_agency'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(agencies, "gotham,metropolis");
    let rows: i64 = demo
        .query_one(
            "SELECT count(*) FROM reporting.canned_arrests_by_agency",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 2);
}

/// Nothing answers on port 1: the demo starts a throwaway cluster of its own and removes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_without_a_server_uses_a_throwaway_cluster() {
    let before = tmp_dirs();
    let out = demo_cmd()
        .env("DB_HOST", "127.0.0.1")
        .env("DB_PORT", "1")
        .output()
        .await
        .unwrap();
    assert_exit(&out, 0);
    let text = stdout(&out);
    assert!(text.contains("4 views, 4 success"), "{text}");
    assert!(
        text.contains("throwaway cluster has been removed"),
        "{text}"
    );
    let left: Vec<_> = tmp_dirs().difference(&before).cloned().collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

fn tmp_dirs() -> std::collections::BTreeSet<String> {
    std::fs::read_dir(std::env::temp_dir())
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("tmp-postgrust"))
                .collect()
        })
        .unwrap_or_default()
}
