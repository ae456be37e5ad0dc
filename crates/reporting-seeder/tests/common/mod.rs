//! Test harness: a fresh database per test on the server named by `TEST_DATABASE_URL`
//! (default: the local server), dropped afterwards unless the test panicked (kept for
//! debugging), and the release-like binary run against it.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::process::Output;
use tokio_postgres::{Client, NoTls};

pub const DJANGO_SCHEMA: &str = include_str!("../fixtures/django_schema.sql");

pub fn server_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_string())
}

pub async fn connect(url: &str) -> Client {
    let (client, conn) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| {
            panic!("cannot connect to {url}: {e}; is PostgreSQL running? set TEST_DATABASE_URL")
        });
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

pub struct TestDb {
    pub name: String,
    pub url: String,
    /// Working directory for the binary: empty, so no stray `.env` is read.
    pub dir: tempfile::TempDir,
}

impl TestDb {
    pub async fn new() -> TestDb {
        let name = format!("rs_test_{}", uuid::Uuid::new_v4().simple());
        let admin = connect(&server_url()).await;
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
        let url = url_with_db(&server_url(), &name);
        TestDb {
            name,
            url,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// A fresh database with the tables another team's Django migrations create.
    pub async fn django() -> TestDb {
        let db = TestDb::new().await;
        db.client()
            .await
            .batch_execute(DJANGO_SCHEMA)
            .await
            .unwrap();
        db
    }

    /// This database's URL with `role` as the user: postgres://user@host/db → postgres://role@host/db.
    pub fn url_as(&self, role: &str) -> String {
        let (scheme, rest) = self.url.split_once("://").unwrap();
        let host = rest.split_once('@').map_or(rest, |(_, h)| h);
        format!("{scheme}://{role}@{host}")
    }

    pub async fn client(&self) -> Client {
        connect(&self.url).await
    }

    /// The binary with a clean environment pointing at this database.
    pub fn cmd(&self) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_reporting-seeder"));
        c.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("DATABASE_URL", &self.url)
            .env("RUST_LOG", "warn")
            .current_dir(self.dir.path())
            .kill_on_drop(true);
        c
    }

    /// Runs `reporting-seeder <args>` with extra env and returns its output.
    pub async fn run(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut c = self.cmd();
        c.args(args);
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().await.unwrap()
    }

    /// `run migrate`, which must succeed.
    pub async fn migrate(&self) {
        assert_exit(&self.run(&["run", "migrate"], &[]).await, 0);
    }

    /// Changes a custom manifest's query.
    pub async fn set_query(&self, manifest_id: i64, query: &str) {
        self.client()
            .await
            .execute(
                "UPDATE reporting.seeder_custom_report_manifest SET query = $1 WHERE id = $2",
                &[&query, &(manifest_id as i32)],
            )
            .await
            .unwrap();
    }

    pub async fn custom(&self, table: &str, slug: &str, agency_id: i64, query: &str) -> i64 {
        self.client()
            .await
            .query_one(
                "INSERT INTO reporting.seeder_custom_report_manifest
                     (table_name, report_name, agency_id, agency_slug, query, enabled)
                 VALUES ($1, $1, $2, $3, $4, true) RETURNING id::bigint",
                &[&table, &agency_id, &slug, &query],
            )
            .await
            .unwrap()
            .get(0)
    }

    /// A canned report mapped to each (agency_id, slug).
    pub async fn canned(&self, table: &str, query: &str, agencies: &[(i64, &str)]) -> i64 {
        let c = self.client().await;
        let id: i64 = c
            .query_one(
                "INSERT INTO reporting.seeder_canned_report (table_name, report_name, query)
                 VALUES ($1, $1, $2) RETURNING id::bigint",
                &[&table, &query],
            )
            .await
            .unwrap()
            .get(0);
        for (agency_id, slug) in agencies {
            c.execute(
                "INSERT INTO reporting.seeder_canned_report_manifest (agency_id, agency_slug, canned_report_id)
                 VALUES ($1, $2, $3::bigint)",
                &[agency_id, slug, &id],
            )
            .await
            .unwrap();
        }
        id
    }

    pub async fn oid(&self, table: &str) -> Option<u32> {
        self.client()
            .await
            .query_one("SELECT to_regclass($1)::oid", &[&table])
            .await
            .unwrap()
            .get(0)
    }

    /// How many rebuilds' temporary views (`_rs_<oid>_new`) exist, in any schema.
    pub async fn temporaries(&self) -> i64 {
        self.client()
            .await
            .query_one(
                "SELECT count(*) FROM pg_class WHERE relname ~ '^_rs_[0-9]+_new'",
                &[],
            )
            .await
            .unwrap()
            .get(0)
    }

    /// (table_name, status, errors) of one run's history rows, both history tables.
    pub async fn history(&self, run_id: &str) -> Vec<(String, String, Option<String>)> {
        self.client()
            .await
            .query(
                "SELECT table_name, status::text, errors FROM reporting.seeder_run_history WHERE run_id = $1
                 UNION ALL
                 SELECT table_name, status::text, errors FROM reporting.seeder_canned_run_history WHERE run_id = $1
                 ORDER BY 1",
                &[&run_id],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect()
    }

    pub async fn last_run_id(&self) -> String {
        self.client()
            .await
            .query_one(
                "SELECT run_id FROM reporting.seeder_run ORDER BY started_at DESC LIMIT 1",
                &[],
            )
            .await
            .unwrap()
            .get(0)
    }

    /// The database's count of rolled-back transactions, once every backend of the tool is gone
    /// (a backend reports its counts when it exits).
    pub async fn rollbacks(&self) -> i64 {
        self.wait_tool_gone().await;
        let admin = self.client().await;
        admin
            .batch_execute("SELECT pg_stat_clear_snapshot()")
            .await
            .unwrap();
        admin
            .query_one(
                "SELECT xact_rollback FROM pg_stat_database WHERE datname = current_database()",
                &[],
            )
            .await
            .unwrap()
            .get(0)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("test failed: database {} kept for inspection", self.name);
            return;
        }
        let name = self.name.clone();
        // Drop runs inside the test's runtime: use a thread with a runtime of its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let admin = connect(&server_url()).await;
                let _ = admin
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await;
            });
        })
        .join();
    }
}

pub fn url_with_db(url: &str, db: &str) -> String {
    // postgres://user@host:port/dbname?params → replace the path.
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let path_start = base[scheme_end..]
        .find('/')
        .map(|i| i + scheme_end)
        .unwrap_or(base.len());
    let mut out = format!("{}/{}", &base[..path_start], db);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Exit code, with both streams in the panic message when it is not what the test expects.
pub fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

#[track_caller]
pub fn assert_exit(o: &Output, expected: i32) {
    assert_eq!(
        code(o),
        expected,
        "exit code\nstdout:\n{}\nstderr:\n{}",
        stdout(o),
        stderr(o)
    );
}

pub mod cluster;

impl TestDb {
    /// Starts the binary without waiting for it.
    pub fn spawn(&self, args: &[&str], env: &[(&str, &str)]) -> tokio::process::Child {
        let mut c = self.cmd();
        c.args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        for (k, v) in env {
            c.env(k, v);
        }
        c.spawn().unwrap()
    }

    /// Waits (bounded) until `n` of the tool's backends in this database run a query matching
    /// `pattern` (ILIKE); returns their pids.
    pub async fn wait_active(&self, pattern: &str, n: usize) -> Vec<i32> {
        let c = self.client().await;
        for _ in 0..400 {
            let pids: Vec<i32> = c
                .query(
                    "SELECT pid FROM pg_stat_activity
                     WHERE datname = $1 AND application_name = 'reporting-seeder'
                       AND state = 'active' AND query ILIKE $2",
                    &[&self.name, &pattern],
                )
                .await
                .unwrap()
                .iter()
                .map(|r| r.get(0))
                .collect();
            if pids.len() >= n {
                return pids;
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
        panic!("no {n} active queries matching {pattern} within 10 s");
    }

    /// Waits (bounded) until no backend of the tool is connected to this database.
    pub async fn wait_tool_gone(&self) {
        let c = self.client().await;
        for _ in 0..400 {
            let n: i64 = c
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND application_name = 'reporting-seeder'",
                    &[&self.name],
                )
                .await
                .unwrap()
                .get(0);
            if n == 0 {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
        panic!("the tool's backends did not go away within 10 s");
    }

    /// (status, attempts, errors) of `table` in the last run, from seeder_view_run.
    pub async fn view_run(&self, table: &str) -> (String, i32, Option<String>) {
        let r = self
            .client()
            .await
            .query_one(
                "SELECT status, attempts, error FROM reporting.seeder_view_run
                 WHERE table_name = $1 AND run_id = $2",
                &[&table, &self.last_run_id().await],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1), r.get(2))
    }
}

/// Sends `signal` (e.g. "TERM", "KILL") to a child process.
pub fn signal(child: &tokio::process::Child, signal: &str) {
    let pid = child.id().expect("child still running");
    let status = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{signal} {pid}");
}
