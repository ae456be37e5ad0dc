//! Transport security against the local server's self-signed certificate (`.ci/run` makes sure
//! the server has TLS on with a certificate for `localhost`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::cluster::OwnCluster;
use common::*;

/// The server's certificate file: self-signed, so it is its own root.
async fn server_certificate() -> String {
    let c = connect(&server_url()).await;
    let on: String = c.query_one("SHOW ssl", &[]).await.unwrap().get(0);
    assert_eq!(
        on, "on",
        "the test server has TLS off: run .ci/run, which turns it on"
    );
    c.query_one("SHOW ssl_cert_file", &[]).await.unwrap().get(0)
}

/// `url` with its host replaced and TLS parameters added.
fn url(db: &TestDb, host: &str, tls: &str) -> String {
    let u = db.url.replacen("127.0.0.1", host, 1);
    let sep = if u.contains('?') { '&' } else { '?' };
    format!("{u}{sep}{tls}")
}

async fn run_with(db: &TestDb, database_url: &str, args: &[&str]) -> std::process::Output {
    db.run(args, &[("DATABASE_URL", database_url)]).await
}

/// Whether the tool's connections to `db` use TLS, seen from the server while a refresh runs.
async fn tool_uses_tls(db: &TestDb, database_url: &str) -> bool {
    db.custom(
        "reporting.slow",
        "gotham",
        1,
        "SELECT 1 AS id FROM (SELECT pg_sleep(1)) s",
    )
    .await;
    let child = db.spawn(&["run", "refresh_all"], &[("DATABASE_URL", database_url)]);
    // CREATE … pg_sleep the first time, REFRESH "reporting"."slow" the next.
    db.wait_active("%\"slow\"%", 1).await;
    let ssl: Vec<bool> = db
        .client()
        .await
        .query(
            "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
             WHERE a.datname = $1 AND a.application_name = 'reporting-seeder'",
            &[&db.name],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let out = child.wait_with_output().await.unwrap();
    assert_exit(&out, 0);
    assert!(!ssl.is_empty());
    assert!(ssl.iter().all(|s| *s == ssl[0]), "mixed: {ssl:?}");
    ssl[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_encrypts_and_disable_does_not() {
    let db = TestDb::new().await;
    server_certificate().await;
    db.migrate().await;
    assert!(tool_uses_tls(&db, &url(&db, "127.0.0.1", "sslmode=require")).await);
    assert!(!tool_uses_tls(&db, &url(&db, "127.0.0.1", "sslmode=disable")).await);
    // DB_SSLMODE does the same for the DB_* variables.
    let out = db
        .run(
            &["run", "migrate"],
            &[
                ("DATABASE_URL", ""),
                ("DB_HOST", "127.0.0.1"),
                ("DB_NAME", &db.name),
                ("DB_SSLMODE", "require"),
            ],
        )
        .await;
    assert_exit(&out, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_ca_and_verify_full_check_the_certificate() {
    let db = TestDb::new().await;
    let cert = server_certificate().await;
    let root = format!("sslrootcert={cert}");
    // The chain is trusted: verify-ca passes whatever the host is called.
    let out = run_with(
        &db,
        &url(&db, "127.0.0.1", &format!("sslmode=verify-ca&{root}")),
        &["run", "migrate"],
    )
    .await;
    assert_exit(&out, 0);
    // verify-full also checks the name: the certificate is for localhost.
    let out = run_with(
        &db,
        &url(&db, "localhost", &format!("sslmode=verify-full&{root}")),
        &["run", "migrate"],
    )
    .await;
    assert_exit(&out, 0);
    let out = run_with(
        &db,
        &url(&db, "127.0.0.1", &format!("sslmode=verify-full&{root}")),
        &["run", "migrate"],
    )
    .await;
    // The settings must change, not the database come back: a configuration error.
    assert_exit(&out, 2);
    assert!(
        stderr(&out).to_lowercase().contains("certificate"),
        "{}",
        stderr(&out)
    );
    // Roots that did not sign it: refused.
    let out = run_with(
        &db,
        &url(
            &db,
            "localhost",
            "sslmode=verify-full&sslrootcert=/etc/ssl/certs/ca-certificates.crt",
        ),
        &["run", "migrate"],
    )
    .await;
    assert_exit(&out, 2);
    // `require` with roots checks the chain against them, as libpq does: the wrong ones are
    // refused, the right ones pass whatever the host is called.
    let out = run_with(
        &db,
        &url(
            &db,
            "127.0.0.1",
            "sslmode=require&sslrootcert=/etc/ssl/certs/ca-certificates.crt",
        ),
        &["run", "migrate"],
    )
    .await;
    assert_exit(&out, 2);
    assert!(
        stderr(&out).to_lowercase().contains("certificate"),
        "{}",
        stderr(&out)
    );
    let out = run_with(
        &db,
        &url(&db, "127.0.0.1", &format!("sslmode=require&{root}")),
        &["run", "migrate"],
    )
    .await;
    assert_exit(&out, 0);
    // verify-full without roots is a configuration error, before any connection.
    let out = run_with(
        &db,
        &url(&db, "localhost", "sslmode=verify-full"),
        &["run", "migrate"],
    )
    .await;
    assert_exit(&out, 2);
    assert!(stderr(&out).contains("sslrootcert"), "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_password_is_never_logged_even_at_debug_level() {
    let db = TestDb::new().await;
    server_certificate().await;
    // Trust authentication ignores the password, so the run goes through with it in the URL.
    let with_password = db.url.replacen("postgres@", "postgres:hunter2-Secret@", 1);
    let database_url = url(&db, "127.0.0.1", "sslmode=require");
    let database_url = database_url.replacen(&db.url, &with_password, 1);
    db.migrate().await;
    db.custom("reporting.v", "gotham", 1, "SELECT 1 AS id")
        .await;
    let out = db
        .run(
            &["run", "refresh_all"],
            &[("DATABASE_URL", &database_url), ("RUST_LOG", "trace")],
        )
        .await;
    assert_exit(&out, 0);
    let all = format!("{}{}", stdout(&out), stderr(&out));
    assert!(all.len() > 1000, "expected plenty of debug output");
    assert!(!all.contains("hunter2-Secret"), "the password leaked");
}

/// A server without TLS (a throwaway cluster of the test's own): sslmode=require over TCP is a
/// configuration error (exit 2, retrying will not help), and over its Unix socket sslmode does
/// not apply, as with libpq.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_tls_require_is_a_configuration_error_except_over_a_socket() {
    let cluster =
        tokio::task::spawn_blocking(|| OwnCluster::start_with("-c listen_addresses=127.0.0.1"))
            .await
            .unwrap();
    let run = |url: String| async move {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_reporting-seeder"))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("DATABASE_URL", url)
            .args(["run", "migrate"])
            .output()
            .await
            .unwrap()
    };
    let tcp = format!(
        "postgres://postgres@127.0.0.1:{}/postgres?sslmode=require",
        cluster.port
    );
    let out = run(tcp).await;
    assert_exit(&out, 2);
    assert!(
        stderr(&out).contains("does not offer TLS"),
        "{}",
        stderr(&out)
    );
    let socket = format!("{}&sslmode=require", cluster.url("postgres"));
    assert_exit(&run(socket).await, 0);
    drop(cluster);
}
