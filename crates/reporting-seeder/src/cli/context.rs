//! What a job builds once from the environment: settings, the database client, the store.

use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::Arc;
use std::time::Duration;

use etl_core::breaker::SystemClock;
use etl_core::db::{client_from_env, ConnectionSettings};
use etl_core::{ConfigError, Env, ExitStatus, JobError};

use super::args::{OutputArgs, OutputFormat, RefreshArgs};
use crate::processors::planner::{Selection, TIMEOUT_MAX_MS};
use crate::processors::run::{RunError, RunProcessor, RunReport, RunSettings};
use crate::processors::summary;
use crate::repositories::{PgStore, Store};

pub const APPLICATION_NAME: &str = "reporting-seeder";

/// Settings from `SEEDER_*` variables, validated before any connection.
#[derive(Debug, Clone)]
pub struct Settings {
    pub run: RunSettings,
}

/// At most this many retries per view: with waits of up to two minutes each, 100 already keep a
/// view trying for hours.
const MAX_RETRIES: u32 = 100;

/// Every `SEEDER_*` variable the tool reads.
const KNOWN: &[&str] = &[
    "SEEDER_MAX_WORKERS",
    "SEEDER_MAX_FAILURES",
    "SEEDER_RESET_SECONDS",
    "SEEDER_REFRESH_CONCURRENTLY",
    "SEEDER_STATEMENT_TIMEOUT",
    "SEEDER_LOCK_TIMEOUT",
    "SEEDER_MAX_RETRIES",
    "SEEDER_BATCH_SIZE",
    "SEEDER_START_DELAY_MS",
    "SEEDER_MAX_DB_ACTIVE_QUERIES",
    "SEEDER_LOG_FORMAT",
];

/// A `SEEDER_*` variable the tool does not read is most likely a misspelt setting, which would
/// otherwise be ignored without a word: warned of, with the nearest known name.
fn warn_unknown(env: &Env) {
    let mut unknown: Vec<&str> = env
        .names()
        .filter(|n| n.starts_with("SEEDER_") && !KNOWN.contains(n))
        .collect();
    unknown.sort_unstable();
    for name in unknown {
        let near = KNOWN
            .iter()
            .map(|k| (strsim::levenshtein(k, name), *k))
            .min()
            .filter(|(d, _)| *d <= 3)
            .map(|(_, k)| format!("; did you mean {k}?"))
            .unwrap_or_default();
        tracing::warn!("{name} is not a setting of this tool and is ignored{near}");
    }
}

impl Settings {
    pub fn from_env(env: &Env) -> Result<Settings, ConfigError> {
        warn_unknown(env);
        let workers = env.positive_or("SEEDER_MAX_WORKERS", 8)?;
        let failures = env.positive_or("SEEDER_MAX_FAILURES", 5)?;
        let invalid = |var: &str, value: u64, expected: &str| ConfigError::Invalid {
            var: var.into(),
            value: value.to_string(),
            expected: expected.into(),
        };
        let max_workers = usize::try_from(workers)
            .ok()
            .filter(|w| *w <= 1000)
            .and_then(NonZeroUsize::new)
            .ok_or_else(|| {
                invalid(
                    "SEEDER_MAX_WORKERS",
                    workers,
                    "expected 1 to 1000 (one connection each)",
                )
            })?;
        let max_failures = u32::try_from(failures)
            .ok()
            .and_then(NonZeroU32::new)
            .ok_or_else(|| {
                invalid(
                    "SEEDER_MAX_FAILURES",
                    failures,
                    "expected a whole number of at least 1",
                )
            })?;
        // Bounded, like every other setting: a value past them would leave a run waiting for
        // good rather than throttled.
        let bounded = |name: &str, default: u64, max: u64, expected: &str| {
            let v: u64 = env.parse_or(name, default, expected)?;
            if v > max {
                return Err(invalid(name, v, expected));
            }
            Ok(v)
        };
        let reset = bounded(
            "SEEDER_RESET_SECONDS",
            300,
            86_400,
            "expected a whole number of seconds from 0 to 86400 (a day)",
        )?;
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        // Checked here, naming the variable, rather than refused by the server at connect.
        let timeout = |name: &str, default: Duration| {
            let t = ms(env.duration_or(name, default)?);
            if t > TIMEOUT_MAX_MS {
                return Err(ConfigError::Invalid {
                    var: name.to_string(),
                    value: env.get(name).unwrap_or_default().to_string(),
                    expected: format!(
                        "expected at most {TIMEOUT_MAX_MS}ms (about 24 days), PostgreSQL's largest timeout"
                    ),
                });
            }
            Ok(t)
        };
        let batch = env.positive_or("SEEDER_BATCH_SIZE", 8)?;
        Ok(Settings {
            run: RunSettings {
                max_workers,
                max_failures,
                reset_after: Duration::from_secs(reset),
                refresh_concurrently: env.bool_or("SEEDER_REFRESH_CONCURRENTLY", false)?,
                statement_timeout_ms: timeout("SEEDER_STATEMENT_TIMEOUT", Duration::ZERO)?,
                lock_timeout_ms: timeout("SEEDER_LOCK_TIMEOUT", Duration::from_secs(5))?,
                max_retries: u32::try_from(bounded(
                    "SEEDER_MAX_RETRIES",
                    2,
                    MAX_RETRIES.into(),
                    "expected a whole number from 0 to 100 (0 turns retries off; each wait \
                     doubles, up to a minute and as much again)",
                )?)
                .unwrap_or(MAX_RETRIES),
                retry_base: Duration::from_millis(200),
                wait_for_locks: false,
                batch_size: usize::try_from(batch)
                    .ok()
                    .and_then(NonZeroUsize::new)
                    .unwrap_or(NonZeroUsize::MIN),
                start_delay: Duration::from_millis(bounded(
                    "SEEDER_START_DELAY_MS",
                    0,
                    3_600_000,
                    "expected a whole number of milliseconds from 0 to 3600000 (an hour)",
                )?),
                max_db_active_queries: env.parse_or(
                    "SEEDER_MAX_DB_ACTIVE_QUERIES",
                    0,
                    "expected a whole number (0 turns it off)",
                )?,
            },
        })
    }
}

/// Built once per job.
pub struct AppContext {
    pub settings: Settings,
    pub connection: ConnectionSettings,
    pub store: Arc<dyn Store>,
}

impl AppContext {
    /// Reads and validates every setting and picks the client from the environment; connects
    /// lazily (nothing is opened here).
    pub fn from_env(env: &Env) -> Result<AppContext, ConfigError> {
        let settings = Settings::from_env(env)?;
        // Every statement of the tool runs under these; a manifest may override them per view.
        let session = [
            (
                "statement_timeout",
                format!("{}ms", settings.run.statement_timeout_ms),
            ),
            (
                "lock_timeout",
                format!("{}ms", settings.run.lock_timeout_ms),
            ),
        ];
        // One connection per worker, the run's own, and one for the throttle's checks.
        let (connection, client) = client_from_env(
            env,
            APPLICATION_NAME,
            settings.run.max_workers.get() + 2,
            &session,
        )?;
        Ok(AppContext {
            settings,
            connection,
            store: Arc::new(PgStore::new(client)),
        })
    }

    pub fn processor(&self) -> RunProcessor<SystemClock> {
        RunProcessor::new(self.store.clone(), self.settings.run.clone(), SystemClock)
    }
}

pub fn run_error(e: RunError) -> JobError {
    match e {
        RunError::Unavailable(_) => JobError::unavailable(e.to_string()),
        RunError::Configuration(_)
        | RunError::Selection(_)
        | RunError::Select(_)
        | RunError::NoRunToRetry
        | RunError::UnknownRun(_)
        | RunError::StillRunning(_) => JobError::usage(e.to_string()),
        // The run's own statements (migrations, manifests, history) refused for lack of a
        // privilege: the role is misconfigured, which no view's outcome and no retry changes.
        RunError::Database { ref error, .. } if error.code.as_deref() == Some("42501") => {
            JobError::usage(format!(
                "{e}; the role in DATABASE_URL (or DB_USER) lacks a privilege the tool needs on \
                 the reporting schema or its control tables: grant it, or use a role that has \
                 it. What a role that runs the tool needs, once `run migrate` has created the \
                 tables as their owner: GRANT USAGE, CREATE ON SCHEMA reporting TO <role>; \
                 GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA reporting TO \
                 <role>; GRANT USAGE ON ALL SEQUENCES IN SCHEMA reporting TO <role> (README, \
                 \"Privileges\")"
            ))
        }
        // Before any view started (every RunError::Database is): the database in trouble
        // (connection lost, a lock or statement timeout, shutting down) is "retry later", as
        // when it cannot be reached at all.
        RunError::Database { ref error, .. }
            if error.kind == etl_core::FailureKind::DatabaseTrouble =>
        {
            let next = if error.message.contains("[lock_timeout ") {
                "try again once the sessions holding the lock are done, or raise SEEDER_LOCK_TIMEOUT"
            } else if error.code.as_deref() == Some("57014")
                && error.message.contains("due to user request")
            {
                "the statement was cancelled (by a signal to this job, or pg_cancel_backend)"
            } else if error.message.contains("[statement_timeout ") {
                "try again when the database is less busy, or raise SEEDER_STATEMENT_TIMEOUT"
            } else {
                "try again when the database is reachable and less busy"
            };
            JobError::unavailable(format!("{e}; nothing ran, {next}"))
        }
        RunError::Database { .. } | RunError::Interrupted(_) => JobError::failed(e.to_string()),
    }
}

/// Prints the summary (or JSON), writes the results file, and maps the outcome to the exit code.
pub async fn finish(
    report: &RunReport,
    job: &str,
    output: &OutputArgs,
    colour: bool,
    interrupt: &etl_core::job::Interrupt,
) -> Result<ExitStatus, JobError> {
    let json = summary::to_json(report, job);
    match output.output {
        OutputFormat::Text => etl_core::out!("{}", summary::render(report, colour)),
        OutputFormat::Json => etl_core::outln!("{json:#}"),
    }
    // Both files are written even when one cannot be: a run's metrics must not go missing
    // because its results file could not be written, nor the other way round.
    let mut unwritten = Vec::new();
    for (what, path, text) in [
        ("results", &output.results_file, format!("{json:#}\n")),
        (
            "metrics",
            &output.metrics_file,
            summary::metrics(report, job),
        ),
    ] {
        let Some(path) = path else { continue };
        let written = if what == "metrics" {
            write_whole(path, &text)
        } else {
            write_in_place(path, text, READER_WAIT, interrupt).await
        };
        if let Err(e) = written {
            unwritten.push(format!(
                "its {what} could not be written to {}: {e}",
                path.display()
            ));
        }
    }
    if !unwritten.is_empty() {
        return Err(JobError::failed(format!(
            "run {} finished ({}) but {}",
            report.run_id,
            if report.all_succeeded() {
                "every view up to date"
            } else {
                "not every view up to date"
            },
            unwritten.join("; and ")
        )));
    }
    Ok(if report.all_succeeded() {
        ExitStatus::Success
    } else {
        ExitStatus::Failed
    })
}

/// `path` with `.tmp` appended: where a file is written before it is renamed into place.
fn temporary(path: &std::path::Path) -> std::path::PathBuf {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    tmp.into()
}

/// Writes next to `path`, then renames: a collector reading the file never sees half of it.
/// Nothing is left behind when either step fails.
fn write_whole(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    let tmp = temporary(path);
    let written = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// How long the results file, when it is a FIFO (or `/dev/stdout` on a pipe), waits at the end
/// of a run for a process to read it. A signal ends the wait (one that came before it, at once).
const READER_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Writes the results in place: `path` may be a FIFO or `/dev/stdout`, which a rename would
/// replace. A FIFO with no reader would block the write, and the job, for ever (a scheduled job
/// piling up behind a collector that died, deaf to signals on its one runtime thread); it is
/// given `wait` for a reader to open it, and then the write fails naming the FIFO. The write
/// itself runs off the runtime thread, so that a reader that stops reading leaves signals heard.
async fn write_in_place(
    path: &std::path::Path,
    text: String,
    wait: std::time::Duration,
    interrupt: &etl_core::job::Interrupt,
) -> std::io::Result<()> {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let fifo = std::fs::metadata(path).is_ok_and(|m| m.file_type().is_fifo());
    // The open that found the reader is the one written through (a second, blocking open would
    // wait for ever if the reader left in between).
    let mut probe = None;
    if fifo {
        let deadline = tokio::time::Instant::now() + wait;
        // Opening a FIFO for writing without blocking fails with ENXIO while no process has it
        // open for reading.
        while probe.is_none() {
            let opened = std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(path);
            match opened {
                Ok(file) => probe = Some(file),
                Err(e) if e.raw_os_error() == Some(libc::ENXIO) => {
                    if tokio::time::Instant::now() >= deadline {
                        return Err(std::io::Error::other(format!(
                            "it is a FIFO that no process opened for reading within {wait:?}; \
                             start its reader before the job, or give a regular file"
                        )));
                    }
                    tokio::select! {
                        () = tokio::time::sleep(std::time::Duration::from_millis(50)) => {}
                        () = interrupt.cancelled() => {
                            return Err(std::io::Error::other(format!(
                                "it is a FIFO that no process had opened for reading when {} \
                                 stopped the job",
                                interrupt.signal_name()
                            )));
                        }
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || match probe {
        Some(pipe) => write_to_pipe(pipe, text.as_bytes()),
        None => std::fs::write(path, text),
    })
    .await
    .map_err(std::io::Error::other)?
}

/// Writes all of `bytes` to a FIFO opened without blocking: a full pipe is waited out while its
/// reader reads; a reader that leaves ends the write with an error (EPIPE).
fn write_to_pipe(mut pipe: std::fs::File, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut rest = bytes;
    while !rest.is_empty() {
        match pipe.write(rest) {
            Ok(n) => rest = &rest[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Whether `path` can take the file, checked before the run so that a bad path is a usage error
/// at once rather than a failure after every view was refreshed: not a directory, in a
/// directory that exists. A file written whole and renamed into place (`renamed`: the metrics)
/// needs a directory that takes new files (tried with its temporary file, removed at once); one
/// written in place (the results, which may be a FIFO or `/dev/stdout`) needs, when it exists,
/// to be writable, and otherwise that directory too.
fn check_writable(flag: &str, path: &std::path::Path, renamed: bool) -> Result<(), JobError> {
    let usage = |why: String| JobError::usage(format!("{flag} {}: {why}", path.display()));
    let raw = path.as_os_str().to_string_lossy();
    if raw.ends_with('/') || path.is_dir() {
        return Err(usage("is a directory; give the path of a file".into()));
    }
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    if !dir.is_dir() {
        return Err(usage(format!(
            "the directory {} does not exist",
            dir.display()
        )));
    }
    match std::fs::metadata(path) {
        Ok(meta) if !renamed => {
            // Opening a FIFO for writing would wait for its reader: only files are tried.
            if meta.is_file() {
                if let Err(e) = std::fs::OpenOptions::new().append(true).open(path) {
                    return Err(usage(format!("the file cannot be written: {e}")));
                }
            }
            return Ok(());
        }
        _ => {}
    }
    let tmp = temporary(path);
    let probe = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp);
    match probe {
        Ok(_) => {
            let _ = std::fs::remove_file(&tmp);
            Ok(())
        }
        // Someone else's temporary file: leave it, the directory takes files.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(usage(format!(
            "a file cannot be created in {}: {e}",
            dir.display()
        ))),
    }
}

/// Where `path` is, links and `..` resolved, whether or not the file exists yet (its directory
/// does: [`check_writable`] saw to that).
fn resolved(path: &std::path::Path) -> Option<std::path::PathBuf> {
    if let Ok(whole) = std::fs::canonicalize(path) {
        return Some(whole);
    }
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    Some(std::fs::canonicalize(dir).ok()?.join(path.file_name()?))
}

/// The shared body of the refresh jobs.
pub async fn refresh(
    job: &etl_core::JobContext,
    selection: Selection,
    args: &RefreshArgs,
) -> Result<ExitStatus, JobError> {
    let (locks, output) = (&args.locks, &args.output);
    // A file that cannot be written is a usage error now, not a failure after every view was
    // refreshed.
    for (flag, path) in [
        ("--results-file", &output.results_file),
        ("--metrics-file", &output.metrics_file),
    ] {
        if let Some(path) = path {
            check_writable(flag, path, flag == "--metrics-file")?;
        }
    }
    if let (Some(results), Some(metrics)) = (&output.results_file, &output.metrics_file) {
        let same =
            results == metrics || resolved(results).is_some_and(|r| resolved(metrics) == Some(r));
        if same {
            return Err(JobError::usage(format!(
                "--results-file and --metrics-file both name {}: one would overwrite the other; \
                 give each its own file",
                results.display()
            )));
        }
    }
    let outcome = async {
        let mut ctx = AppContext::from_env(&job.env)?;
        ctx.settings.run.wait_for_locks = locks.wait_for_locks;
        tracing::debug!(target = %ctx.connection.target(), "configuration read");
        let mut processor = ctx.processor().with_interrupt(job.interrupt.clone());
        if job.ui.progress {
            processor = processor.with_progress(std::sync::Arc::new(super::progress::Bar::new()));
        }
        processor
            .run(job.job, &job.args.join(" "), &selection)
            .await
            .map_err(run_error)
    }
    .await;
    match outcome {
        Ok(report) => finish(&report, job.job, output, job.ui.colour, &job.interrupt).await,
        Err(e) => {
            if let Some(path) = &output.results_file {
                // Yesterday's results must not pass for today's: the file says why nothing ran.
                // A signal decides the exit code over the error it caused.
                let exit = job.interrupt.status().unwrap_or(e.status);
                let text = format!("{:#}\n", summary::not_run_json(job.job, exit, &e.message));
                if let Err(io) = write_in_place(path, text, READER_WAIT, &job.interrupt).await {
                    tracing::warn!(
                        "the results file {} could not be written: {io}",
                        path.display()
                    );
                }
            }
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{write_in_place, KNOWN};
    use etl_core::job::Interrupt;
    use std::time::Duration;

    fn fifo(dir: &tempfile::TempDir) -> std::path::PathBuf {
        let path = dir.path().join("results.fifo");
        let made = std::process::Command::new("mkfifo").arg(&path).status();
        assert!(made.is_ok_and(|s| s.success()), "mkfifo failed");
        path
    }

    /// A FIFO nobody reads fails the write after the wait, naming why, instead of blocking the
    /// job (and its signals) for ever.
    #[tokio::test]
    async fn a_fifo_without_a_reader_fails_after_the_wait() {
        let dir = tempfile::tempdir().unwrap();
        let path = fifo(&dir);
        let started = std::time::Instant::now();
        let written = write_in_place(
            &path,
            "{}".into(),
            Duration::from_millis(200),
            &Interrupt::new(),
        )
        .await;
        let e = written.unwrap_err().to_string();
        assert!(e.contains("FIFO") && e.contains("reading"), "{e}");
        assert!(started.elapsed() >= Duration::from_millis(200));
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    /// A signal ends the wait for a reader, even a long one.
    #[tokio::test]
    async fn a_signal_ends_the_wait_for_a_reader() {
        let dir = tempfile::tempdir().unwrap();
        let path = fifo(&dir);
        let interrupt = Interrupt::new();
        interrupt.trigger(etl_core::ExitStatus::Terminated);
        let written =
            write_in_place(&path, "{}".into(), Duration::from_secs(3600), &interrupt).await;
        let e = written.unwrap_err().to_string();
        assert!(e.contains("SIGTERM"), "{e}");
    }

    /// A reader that opens the FIFO while the job waits gets the whole document.
    #[tokio::test]
    async fn a_fifo_with_a_reader_gets_the_document() {
        let dir = tempfile::tempdir().unwrap();
        let path = fifo(&dir);
        let reader = {
            let path = path.clone();
            std::thread::spawn(move || std::fs::read_to_string(path))
        };
        let text = format!("{{\"views\": \"{}\"}}\n", "x".repeat(200_000));
        write_in_place(
            &path,
            text.clone(),
            Duration::from_secs(60),
            &Interrupt::new(),
        )
        .await
        .unwrap();
        assert_eq!(reader.join().unwrap().unwrap(), text);
    }

    /// Every `SEEDER_*` name this file reads is in the list of known settings, so adding a
    /// setting without listing it fails here rather than warning users of a setting they set.
    #[test]
    fn every_setting_read_here_is_known() {
        let source = include_str!("context.rs");
        let read: Vec<&str> = source
            .match_indices("\"SEEDER_")
            .map(|(at, _)| {
                let name = &source[at + 1..];
                let end = name
                    .find(|c: char| !(c.is_ascii_uppercase() || c == '_'))
                    .unwrap_or(name.len());
                &name[..end]
            })
            .filter(|n| *n != "SEEDER_")
            .collect();
        assert!(read.len() >= 10, "{read:?}");
        for name in read {
            assert!(KNOWN.contains(&name), "{name} is read but not in KNOWN");
        }
    }
}
