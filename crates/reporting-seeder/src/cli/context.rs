//! What a job builds once from the environment: settings, the database client, the store.

use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::Arc;
use std::time::Duration;

use etl_core::breaker::SystemClock;
use etl_core::db::{client_from_env, ConnectionSettings};
use etl_core::{ConfigError, Env, ExitStatus, JobError};

use super::args::{OutputArgs, OutputFormat};
use crate::processors::planner::Selection;
use crate::processors::run::{RunError, RunProcessor, RunReport, RunSettings};
use crate::processors::summary;
use crate::repositories::{PgStore, Store};

pub const APPLICATION_NAME: &str = "reporting-seeder";

/// How long the swap of a rebuild may wait for a lock before giving up (readers keep the old view).
const SWAP_LOCK_TIMEOUT_MS: u64 = 5_000;

/// Settings from `SEEDER_*` variables, validated before any connection.
#[derive(Debug, Clone)]
pub struct Settings {
    pub run: RunSettings,
    /// Kept from the old tool and validated; not enforced yet.
    pub batch_size: u64,
    pub start_delay_ms: u64,
    pub max_db_active_queries: u64,
}

impl Settings {
    pub fn from_env(env: &Env) -> Result<Settings, ConfigError> {
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
        let reset: u64 = env.parse_or(
            "SEEDER_RESET_SECONDS",
            300,
            "expected a whole number of seconds",
        )?;
        Ok(Settings {
            run: RunSettings {
                max_workers,
                max_failures,
                reset_after: Duration::from_secs(reset),
                refresh_concurrently: env.bool_or("SEEDER_REFRESH_CONCURRENTLY", false)?,
                lock_timeout_ms: SWAP_LOCK_TIMEOUT_MS,
            },
            batch_size: env.positive_or("SEEDER_BATCH_SIZE", 8)?,
            start_delay_ms: env.parse_or(
                "SEEDER_START_DELAY_MS",
                0,
                "expected a whole number of milliseconds",
            )?,
            max_db_active_queries: env.parse_or(
                "SEEDER_MAX_DB_ACTIVE_QUERIES",
                0,
                "expected a whole number (0 turns it off)",
            )?,
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
        // One connection per worker plus the run's own.
        let (connection, client) =
            client_from_env(env, APPLICATION_NAME, settings.run.max_workers.get() + 1)?;
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
        | RunError::NoRunToRetry => JobError::usage(e.to_string()),
        RunError::Database { .. } => JobError::failed(e.to_string()),
    }
}

/// Prints the summary (or JSON), writes the results file, and maps the outcome to the exit code.
pub fn finish(report: &RunReport, job: &str, output: &OutputArgs) -> Result<ExitStatus, JobError> {
    let json = summary::to_json(report, job);
    match output.output {
        OutputFormat::Text => print!("{}", summary::render(report)),
        OutputFormat::Json => println!("{json:#}"),
    }
    if let Some(path) = &output.results_file {
        std::fs::write(path, format!("{json:#}\n")).map_err(|e| {
            JobError::failed(format!(
                "run {} finished but its results could not be written to {}: {e}",
                report.run_id,
                path.display()
            ))
        })?;
    }
    Ok(if report.all_succeeded() {
        ExitStatus::Success
    } else {
        ExitStatus::Failed
    })
}

/// The shared body of the refresh jobs.
pub async fn refresh(
    env: &etl_core::Env,
    job: &str,
    arguments: String,
    selection: Selection,
    output: &OutputArgs,
) -> Result<ExitStatus, JobError> {
    let ctx = AppContext::from_env(env)?;
    tracing::debug!(target = %ctx.connection.target(), "configuration read");
    let report = ctx
        .processor()
        .run(job, &arguments, &selection)
        .await
        .map_err(run_error)?;
    finish(&report, job, output)
}
