//! The command line end to end: jobs, help, exit codes, configuration errors.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;

fn bin() -> assert_cmd::Command {
    let mut c = assert_cmd::Command::cargo_bin("reporting-seeder").unwrap();
    c.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    c
}

const JOBS: &[&str] = &[
    "refresh_all",
    "refresh_agency",
    "refresh_table",
    "migrate",
    "demo",
];

#[test]
fn list_prints_every_job_with_its_description() {
    let out = bin().arg("list").output().unwrap();
    assert_exit(&out, 0);
    let text = stdout(&out);
    for job in JOBS {
        let line = text
            .lines()
            .find(|l| l.starts_with(job))
            .unwrap_or_else(|| panic!("{job} missing:\n{text}"));
        assert!(line.len() > job.len() + 10, "no description: {line}");
    }
}

#[test]
fn help_job_prints_its_usage() {
    let out = bin().args(["help", "refresh_agency"]).output().unwrap();
    assert_exit(&out, 0);
    let text = stdout(&out);
    assert!(
        text.contains("reporting-seeder run refresh_agency"),
        "{text}"
    );
    assert!(
        text.contains("<SLUG>") && text.contains("--report-type"),
        "{text}"
    );
    let out = bin().args(["help", "refresh_all"]).output().unwrap();
    assert!(stdout(&out).contains("custom") && stdout(&out).contains("canned"));
}

#[test]
fn unknown_job_exits_2_and_names_the_jobs() {
    for args in [
        &["run", "refresh_everything"][..],
        &["help", "refresh_everything"][..],
    ] {
        let out = bin().args(args).output().unwrap();
        assert_exit(&out, 2);
        let err = stderr(&out);
        assert!(err.contains("refresh_everything"), "{err}");
        for job in JOBS {
            assert!(err.contains(job), "{job} not named: {err}");
        }
    }
}

#[test]
fn bad_job_arguments_exit_2() {
    let out = bin()
        .args(["run", "refresh_all", "--", "--report-type", "bogus"])
        .output()
        .unwrap();
    assert_exit(&out, 2);
    let out = bin().args(["run", "refresh_agency"]).output().unwrap();
    assert_exit(&out, 2);
}

/// Nothing listens on port 1: a configuration error must be reported before any connection
/// attempt, so it exits 2, not 3.
#[test]
fn bad_settings_exit_2_naming_the_variable_before_connecting() {
    for (var, value) in [
        ("SEEDER_MAX_WORKERS", "abc"),
        ("SEEDER_MAX_WORKERS", "0"),
        ("SEEDER_MAX_FAILURES", "-1"),
        ("SEEDER_RESET_SECONDS", "soon"),
        ("SEEDER_REFRESH_CONCURRENTLY", "perhaps"),
        ("DB_PORT", "http"),
        // Valid durations, but longer than PostgreSQL takes.
        ("SEEDER_LOCK_TIMEOUT", "600h"),
        ("SEEDER_STATEMENT_TIMEOUT", "3000000000"),
        ("SEEDER_MAX_RETRIES", "99999999999"),
        // A number, but waits of up to two minutes each would keep a view trying for days.
        ("SEEDER_MAX_RETRIES", "101"),
        // Numbers, but a run would wait for good.
        ("SEEDER_RESET_SECONDS", "18446744073709551615"),
        ("SEEDER_START_DELAY_MS", "3600001"),
    ] {
        let out = bin()
            .env("DB_HOST", "127.0.0.1")
            .env("DB_PORT", "1")
            .env(var, value)
            .args(["run", "refresh_all"])
            .output()
            .unwrap();
        assert_exit(&out, 2);
        assert!(stderr(&out).contains(var), "{var}: {}", stderr(&out));
        if var == "SEEDER_MAX_RETRIES" {
            // Out of range says the range, not only "a whole number" (which it is).
            assert!(stderr(&out).contains("from 0 to 100"), "{}", stderr(&out));
        }
    }
}

#[test]
fn malformed_url_exits_2_without_showing_the_password() {
    for url in [
        "postgres://u:hunter2secret@h:notaport/db",
        "mysql://u:hunter2secret@h/db",
    ] {
        let out = bin()
            .env("DATABASE_URL", url)
            .args(["run", "refresh_all"])
            .output()
            .unwrap();
        assert_exit(&out, 2);
        let all = format!("{}{}", stdout(&out), stderr(&out));
        assert!(all.contains("DATABASE_URL"), "{all}");
        assert!(!all.contains("hunter2secret"), "{all}");
    }
}

#[test]
fn unreachable_database_exits_3_without_showing_the_password() {
    let out = bin()
        .env("DATABASE_URL", "postgres://u:hunter2secret@127.0.0.1:1/db")
        .env("RUST_LOG", "debug")
        .args(["run", "refresh_all"])
        .output()
        .unwrap();
    assert_exit(&out, 3);
    let all = format!("{}{}", stdout(&out), stderr(&out));
    assert!(all.contains("127.0.0.1:1"), "{all}");
    assert!(!all.contains("hunter2secret"), "{all}");
}

/// A refresh job that ends before its run (the database unreachable, a bad setting) rewrites
/// its results file to say so: a reader of the file never takes the last run's results for
/// this one's. The metrics file keeps the last run's figures, with their timestamps.
#[test]
fn a_job_that_ends_before_running_says_so_in_its_results_file() {
    let dir = tempfile::tempdir().unwrap();
    let results = dir.path().join("results.json");
    let stale = r#"{"run_id": "yesterday", "status": "success"}"#;
    for (env, code) in [
        (("DATABASE_URL", "postgres://u@127.0.0.1:1/db"), 3),
        (("SEEDER_MAX_WORKERS", "many"), 2),
    ] {
        std::fs::write(&results, stale).unwrap();
        let out = bin()
            .env("DB_HOST", "127.0.0.1")
            .env("DB_PORT", "1")
            .env(env.0, env.1)
            .args(["run", "refresh_all", "--", "--results-file"])
            .arg(&results)
            .output()
            .unwrap();
        assert_exit(&out, code);
        let doc: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&results).unwrap()).unwrap();
        assert_eq!(doc["status"], "error", "{doc}");
        assert_eq!(doc["exit_code"], code, "{doc}");
        assert!(doc["run_id"].is_null(), "{doc}");
        assert_eq!(doc["views"], serde_json::json!([]), "{doc}");
        assert!(
            stderr(&out).contains(doc["error"].as_str().unwrap()),
            "{doc} {}",
            stderr(&out)
        );
    }
}

/// `RUST_LOG=debug` shows the tool's debug lines, not the SQL parser's line per token, which
/// shows only when the filter names it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debug_logs_leave_out_the_sql_parsers_tokens_unless_asked() {
    let db = TestDb::new().await;
    db.migrate().await;
    db.custom("reporting.one", "gotham", 1, "SELECT 1 + 2 * 3 AS n")
        .await;
    let out = db.run(&["run", "plan"], &[("RUST_LOG", "debug")]).await;
    assert_exit(&out, 0);
    let err = stderr(&out);
    assert!(err.contains("DEBUG"), "{err}");
    assert!(!err.contains("get_next_precedence"), "{err}");
    let out = db
        .run(&["run", "plan"], &[("RUST_LOG", "debug,sqlparser=debug")])
        .await;
    assert_exit(&out, 0);
    assert!(
        stderr(&out).contains("get_next_precedence"),
        "the filter names it"
    );
}

/// A server that accepts the connection and never answers (a stuck pooler, a black-holed
/// path): exit 3 once the connect timeout and the handshake's allowance are spent, and a signal
/// meanwhile ends the run at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_never_answers_is_unreachable_and_a_signal_ends_the_wait() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (accepted, mut connected) = tokio::sync::mpsc::unbounded_channel();
    let held = tokio::spawn(async move {
        let mut sockets = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            sockets.push(socket);
            let _ = accepted.send(());
        }
    });
    let url = format!("postgres://u:pw@127.0.0.1:{port}/db?connect_timeout=1&sslmode=disable");
    let run = || {
        let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_reporting-seeder"));
        c.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("DATABASE_URL", &url)
            .args(["run", "refresh_all"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        c
    };
    let out = tokio::time::timeout(std::time::Duration::from_secs(30), run().output())
        .await
        .expect("the run hung")
        .unwrap();
    assert_exit(&out, 3);
    assert!(stderr(&out).contains("did not answer"), "{}", stderr(&out));

    while connected.try_recv().is_ok() {}
    let dir = tempfile::tempdir().unwrap();
    let results = dir.path().join("results.json");
    let child = run()
        .args(["--", "--results-file"])
        .arg(&results)
        .spawn()
        .unwrap();
    // Signalled once it waits for the server (which holds the connection it opened).
    connected.recv().await.unwrap();
    signal(&child, "TERM");
    let out = child.wait_with_output().await.unwrap();
    assert_exit(&out, 143);
    // Its results file says it was stopped before its run, with the code it exited with.
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&results).unwrap()).unwrap();
    assert_eq!(doc["status"], "cancelled", "{doc}");
    assert_eq!(doc["exit_code"], 143, "{doc}");

    // Every job that connects ends at once too, and with JSON logs filtered off, the notice and
    // the fatal line are still JSON lines, the latter with the code the process exits with.
    // Without connect_timeout the wait would last 15 s.
    let url = format!("postgres://u:pw@127.0.0.1:{port}/db?sslmode=disable");
    for job in ["status", "plan", "migrate"] {
        while connected.try_recv().is_ok() {}
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_reporting-seeder"))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("DATABASE_URL", &url)
            .env("SEEDER_LOG_FORMAT", "json")
            .env("RUST_LOG", "off")
            .args(["run", job])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        connected.recv().await.unwrap();
        let sent = std::time::Instant::now();
        signal(&child, "INT");
        let out = child.wait_with_output().await.unwrap();
        assert_exit(&out, 130);
        assert!(
            sent.elapsed() < std::time::Duration::from_secs(8),
            "{job} waited for the server after the signal"
        );
        let lines: Vec<serde_json::Value> = stderr(&out)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("{job}: not JSON: {l}")))
            .collect();
        assert!(
            lines.iter().any(|l| l["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("SIGINT: stopping"))),
            "{job}: {lines:?}"
        );
        let fatal = lines
            .iter()
            .find(|l| l["level"] == "ERROR")
            .unwrap_or_else(|| panic!("{job}: no fatal line: {lines:?}"));
        assert_eq!(fatal["fields"]["exit_code"], 130, "{job}: {fatal}");
    }
    held.abort();
}

/// A server that asks for a password none was given for: a configuration error (exit 2, saying
/// where to set it), not an outage to retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_the_server_asks_for_and_none_given_is_exit_2() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let mut startup = [0u8; 1024];
            let _ = socket.read(&mut startup).await;
            // AuthenticationCleartextPassword.
            let _ = socket.write_all(b"R\0\0\0\x08\0\0\0\x03").await;
            let _ = socket.read(&mut startup).await;
        }
    });
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_reporting-seeder"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env(
            "DATABASE_URL",
            format!("postgres://someone@127.0.0.1:{port}/db?sslmode=disable"),
        )
        .args(["run", "refresh_all"])
        .output()
        .await
        .unwrap();
    server.abort();
    assert_exit(&out, 2);
    assert!(stderr(&out).contains("DB_PASSWORD"), "{}", stderr(&out));
}

/// A `.env` that cannot be read is a configuration error naming it; with JSON logs (known from
/// the environment, since the file could not say), a JSON line.
#[test]
fn an_unreadable_dotenv_exits_2_naming_it_and_in_json_mode_as_json() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(".env"), b"X=\xff\xfe\n").unwrap();
    let run = |json: bool| {
        let mut c = bin();
        c.current_dir(dir.path()).args(["run", "refresh_all"]);
        if json {
            c.env("SEEDER_LOG_FORMAT", "json");
        }
        c.output().unwrap()
    };
    let out = run(false);
    assert_exit(&out, 2);
    let err = stderr(&out);
    assert!(
        err.contains(".env") && err.contains("UTF-8") && !err.contains("could not read it"),
        "{err}"
    );
    let out = run(true);
    assert_exit(&out, 2);
    let err = stderr(&out);
    let line: serde_json::Value = serde_json::from_str(err.trim())
        .unwrap_or_else(|e| panic!("not one JSON line ({e}): {err}"));
    assert_eq!(line["fields"]["exit_code"], 2, "{line}");
    assert!(
        line["fields"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains(".env"),
        "{line}"
    );
}

#[test]
fn dotenv_is_read_but_never_overrides_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let run_with = |dotenv: &str, env: &[(&str, &str)]| {
        std::fs::write(dir.path().join(".env"), dotenv).unwrap();
        let mut c = bin();
        c.current_dir(dir.path()).args(["run", "refresh_all"]);
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().unwrap()
    };
    let dotenv = "SEEDER_MAX_WORKERS=abc\nDB_HOST=127.0.0.1\nDB_PORT=1\n";
    // From .env alone: the bad value is seen.
    let out = run_with(dotenv, &[]);
    assert_exit(&out, 2);
    assert!(
        stderr(&out).contains("SEEDER_MAX_WORKERS"),
        "{}",
        stderr(&out)
    );
    // The real environment wins over .env: the value is fine, so it gets as far as connecting.
    assert_exit(&run_with(dotenv, &[("SEEDER_MAX_WORKERS", "2")]), 3);
    // A statement python-dotenv cannot parse is skipped with a warning, as it skipped it, and
    // the lines after it count: here the unreachable port.
    let out = run_with(
        "DB_HOST=127.0.0.1\nDB_PASSWORD=\"s3cret\" trailing words\nDB_PORT=1\n",
        &[],
    );
    assert_exit(&out, 3);
    let err = stderr(&out);
    assert!(err.contains("127.0.0.1:1"), "{err}");
    assert!(err.contains("line 2 could not be parsed"), "{err}");
    assert!(!err.contains("s3cret"), "{err}");
    // DATABASE_URL from .env outranks the DB_* of the environment: used, and said.
    let out = run_with(
        "DATABASE_URL=postgres://postgres@127.0.0.1:1/x\n",
        &[("DB_HOST", "127.0.0.1"), ("DB_NAME", "elsewhere")],
    );
    assert_exit(&out, 3);
    let err = stderr(&out);
    assert!(
        err.contains(
            "its DATABASE_URL is used, and DB_HOST, DB_NAME set in the environment ignored"
        ),
        "{err}"
    );
    // A misspelt setting is not silently ignored.
    let out = run_with(
        "DB_HOST=127.0.0.1\nDB_PORT=1\n",
        &[("SEEDER_MAX_WORKER", "2")],
    );
    assert_exit(&out, 3);
    let err = stderr(&out);
    assert!(
        err.contains("SEEDER_MAX_WORKER") && err.contains("did you mean SEEDER_MAX_WORKERS?"),
        "{err}"
    );
}

#[tokio::test]
async fn run_with_and_without_double_dash_is_the_same() {
    let db = TestDb::new().await;
    let out = db.run(&["run", "migrate"], &[]).await;
    assert_exit(&out, 0);
    db.custom("reporting.a", "gotham", 1, "SELECT 1 AS id")
        .await;
    let out = db
        .run(
            &[
                "run",
                "refresh_agency",
                "--",
                "gotham",
                "--report-type",
                "custom",
            ],
            &[],
        )
        .await;
    assert_exit(&out, 0);
    let out = db
        .run(
            &["run", "refresh_agency", "gotham", "--report-type", "custom"],
            &[],
        )
        .await;
    assert_exit(&out, 0);
    assert!(stdout(&out).contains("reporting.a"), "{}", stdout(&out));
}

/// The README's quick start, `cargo run --release -- run demo` at the workspace root, needs the
/// root's default members to hold exactly one binary, the tool's (xtask's made it ambiguous).
#[test]
fn cargo_run_at_the_root_runs_the_tool() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let readme = std::fs::read_to_string(format!("{root}/README.md")).unwrap();
    assert!(
        readme.contains("cargo run --release -- run demo"),
        "the quick start changed: update this test"
    );
    let out = std::process::Command::new(option_env!("CARGO").unwrap_or("cargo"))
        .args([
            "metadata",
            "--no-deps",
            "--format-version",
            "1",
            "--manifest-path",
        ])
        .arg(format!("{root}/Cargo.toml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let defaults = meta["workspace_default_members"].as_array().unwrap();
    let bins: Vec<&str> = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| defaults.contains(&p["id"]))
        .flat_map(|p| p["targets"].as_array().unwrap())
        .filter(|t| t["kind"].as_array().unwrap().iter().any(|k| k == "bin"))
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(bins, ["reporting-seeder"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_format_comes_from_the_flag_over_the_environment_and_a_bad_one_exits_2() {
    let db = TestDb::new().await;
    db.migrate().await;
    db.custom("reporting.bad", "gotham", 1, "SELECT 1 / 0 AS id")
        .await;
    let out = db
        .run(&["run", "refresh_all"], &[("SEEDER_LOG_FORMAT", "xml")])
        .await;
    assert_exit(&out, 2);
    assert!(
        stderr(&out).contains("SEEDER_LOG_FORMAT"),
        "{}",
        stderr(&out)
    );
    // The flag wins; at RUST_LOG=warn the warning still names its run and view.
    let out = db
        .run(
            &["run", "refresh_all", "--", "--log-format", "text"],
            &[("SEEDER_LOG_FORMAT", "json")],
        )
        .await;
    let err = stderr(&out);
    let warning = err.lines().find(|l| l.contains("WARN")).unwrap_or_default();
    assert!(!warning.starts_with('{'), "{err}");
    assert!(
        warning.contains("run{run_id=") && warning.contains("view=reporting.bad"),
        "{err}"
    );
    let out = db
        .run(&["run", "refresh_all"], &[("SEEDER_LOG_FORMAT", "json")])
        .await;
    let warning = stderr(&out)
        .lines()
        .find(|l| l.contains("\"WARN\""))
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .unwrap();
    assert_eq!(warning["spans"][1]["view"], "reporting.bad");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_selectors_may_share_one_argument() {
    let db = TestDb::new().await;
    db.migrate().await;
    db.custom("reporting.a", "gotham", 1, "SELECT 1 AS id")
        .await;
    db.custom("reporting.b", "metropolis", 2, "SELECT 1 AS id")
        .await;
    db.custom("reporting.c", "star", 3, "SELECT 1 AS id").await;
    let out = db
        .run(
            &[
                "run",
                "plan",
                "--",
                "--select",
                "agency:gotham  agency:star",
                "--output",
                "json",
            ],
            &[],
        )
        .await;
    assert_exit(&out, 0);
    let plan: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let mut views: Vec<&str> = plan["views"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["table"].as_str().unwrap())
        .collect();
    views.sort();
    assert_eq!(views, ["reporting.a", "reporting.c"]);
}

/// A reader that closed its end of the pipe (`| head`, `| true`) ends the output, not the job:
/// no panic, and the exit status is the job's own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_stdout_pipe_keeps_the_exit_status() {
    let db = TestDb::new().await;
    db.migrate().await;
    db.custom("reporting.v", "gotham", 1, "SELECT 1 AS id")
        .await;
    for (args, expected) in [
        (&["list"][..], 0),
        (&["run", "refresh_all"][..], 0),
        (&["run", "status"][..], 0),
        (&["run", "history"][..], 0),
    ] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = db
            .cmd()
            .args(args)
            .stdout(writer)
            .stderr(std::process::Stdio::piped())
            .output()
            .await
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(expected),
            "{args:?}: {}",
            stderr(&out)
        );
        assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
    }
}

/// A RUST_LOG that is not a filter is a configuration error naming it, like any bad value.
#[test]
fn a_bad_rust_log_exits_2_naming_it() {
    let out = bin()
        .env("DB_HOST", "127.0.0.1")
        .env("DB_PORT", "1")
        .env("RUST_LOG", "[[[")
        .args(["run", "refresh_all"])
        .output()
        .unwrap();
    assert_exit(&out, 2);
    assert!(stderr(&out).contains("RUST_LOG"), "{}", stderr(&out));
    // With JSON logs it is a JSON line like any fatal error, though the logger never started.
    let out = bin()
        .env("DB_HOST", "127.0.0.1")
        .env("DB_PORT", "1")
        .env("RUST_LOG", "[[[")
        .env("SEEDER_LOG_FORMAT", "json")
        .args(["run", "refresh_all"])
        .output()
        .unwrap();
    assert_exit(&out, 2);
    let err = stderr(&out);
    let line: serde_json::Value = serde_json::from_str(err.trim())
        .unwrap_or_else(|e| panic!("not one JSON line ({e}): {err}"));
    assert_eq!(line["level"], "ERROR", "{line}");
    assert_eq!(line["fields"]["exit_code"], 2, "{line}");
    assert!(
        line["fields"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("RUST_LOG"),
        "{line}"
    );
}

/// With JSON logs, stderr is JSON lines only: the fatal error too (a log shipper reads nothing
/// else).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_json_logs_a_fatal_error_is_a_json_line_too() {
    let db = TestDb::new().await;
    db.migrate().await;
    db.custom("reporting.v", "gotham", 1, "SELECT 1 AS id")
        .await;
    let out = db
        .run(
            &[
                "run",
                "refresh_all",
                "--",
                "--log-format",
                "json",
                "--select",
                "agency:nobody",
            ],
            &[],
        )
        .await;
    assert_exit(&out, 2);
    let err = stderr(&out);
    let lines: Vec<serde_json::Value> = err
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let fatal = lines
        .iter()
        .find(|l| l["level"] == "ERROR")
        .unwrap_or_else(|| panic!("no error line: {err}"));
    assert!(
        fatal["fields"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("agency:nobody"),
        "{fatal}"
    );
    assert_eq!(fatal["fields"]["exit_code"], 2);
    // Logging filtered off, the fatal error is still said (as text mode says it).
    let out = db
        .run(
            &["run", "refresh_all", "--", "--select", "agency:nobody"],
            &[("RUST_LOG", "off"), ("SEEDER_LOG_FORMAT", "json")],
        )
        .await;
    assert_exit(&out, 2);
    let err = stderr(&out);
    let line: serde_json::Value = serde_json::from_str(err.trim())
        .unwrap_or_else(|e| panic!("not one JSON line ({e}): {err}"));
    assert_eq!(line["fields"]["exit_code"], 2, "{line}");
}

/// A results or metrics file in a directory that does not exist is a usage error before any
/// connection, not a failure after the run.
#[test]
fn an_output_file_in_a_missing_directory_exits_2_before_running() {
    for flag in ["--results-file", "--metrics-file"] {
        let out = bin()
            .env("DB_HOST", "127.0.0.1")
            .env("DB_PORT", "1")
            .args(["run", "refresh_all", "--", flag, "/no/such/dir/out"])
            .output()
            .unwrap();
        assert_exit(&out, 2);
        assert!(stderr(&out).contains("does not exist"), "{}", stderr(&out));
    }
}

/// A directory given as an output file (with or without its slash), or one file given for
/// both, is a usage error before any connection, and leaves nothing behind.
#[test]
fn an_output_file_that_is_a_directory_or_given_twice_exits_2_before_running() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap().to_string();
    let file = format!("{d}/out.json");
    for (args, says) in [
        (vec!["--results-file", d.as_str()], "is a directory"),
        (vec!["--metrics-file", &format!("{d}/")], "is a directory"),
        (
            vec![
                "--results-file",
                file.as_str(),
                "--metrics-file",
                file.as_str(),
            ],
            "both name",
        ),
        // Not there yet, and spelt two ways (the job runs in the directory).
        (
            vec![
                "--results-file",
                "out.json",
                "--metrics-file",
                file.as_str(),
            ],
            "both name",
        ),
    ] {
        let out = bin()
            .current_dir(dir.path())
            .env("DB_HOST", "127.0.0.1")
            .env("DB_PORT", "1")
            .args(["run", "refresh_all", "--"])
            .args(&args)
            .output()
            .unwrap();
        assert_exit(&out, 2);
        assert!(stderr(&out).contains(says), "{args:?}: {}", stderr(&out));
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert!(left.is_empty(), "{args:?} left {left:?}");
    }
}

/// Output that never reached stdout (a full disk behind the redirect) is exit 1, not a success.
#[tokio::test]
async fn output_that_cannot_be_written_is_exit_1() {
    if !std::path::Path::new("/dev/full").exists() {
        return;
    }
    let db = TestDb::new().await;
    db.migrate().await;
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let out = db
        .cmd()
        .args(["run", "history", "--", "--output", "json"])
        .stdout(full)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
        .wait_with_output()
        .await
        .unwrap();
    assert_exit(&out, 1);
    assert!(
        stderr(&out).contains("could not write the output"),
        "{}",
        stderr(&out)
    );
    // Written where it can be, the same job succeeds.
    assert_exit(
        &db.run(&["run", "history", "--", "--output", "json"], &[])
            .await,
        0,
    );
}
