//! Console entry point and job wiring: the job table, and the context every job builds once.

pub mod args;
pub mod context;
pub mod progress;

use std::process::ExitCode;

use etl_core::JobEntry;

use crate::jobs;

/// The job table. Adding a job is one file under `jobs/` and one line here.
pub const JOBS: &[JobEntry] = &[
    jobs::refresh_all::JOB,
    jobs::refresh_agency::JOB,
    jobs::refresh_table::JOB,
    jobs::plan::JOB,
    jobs::retry::JOB,
    jobs::status::JOB,
    jobs::history::JOB,
    jobs::capture_release_snapshot::JOB,
    jobs::compare_release_snapshots::JOB,
    jobs::migrate::JOB,
    jobs::demo::JOB,
];

pub const BIN: &str = "reporting-seeder";
const ABOUT: &str =
    "Keeps a shared PostgreSQL's reporting materialized views up to date: reads the \
manifest tables, then creates, refreshes or rebuilds one materialized view per enabled query, in \
parallel, behind a circuit breaker, recording a history row per view.

Configuration (environment, or a .env file in the working directory that never overrides it; \
the README's Configuration section says what each does): DATABASE_URL, or DB_HOST, DB_PORT, \
DB_NAME, DB_USER, DB_PASSWORD; DB_SSLMODE (prefer), DB_SSLROOTCERT; SEEDER_MAX_WORKERS (8), \
SEEDER_MAX_FAILURES (5), SEEDER_RESET_SECONDS (300), SEEDER_REFRESH_CONCURRENTLY (false), \
SEEDER_STATEMENT_TIMEOUT (off), SEEDER_LOCK_TIMEOUT (5s), SEEDER_MAX_RETRIES (2), \
SEEDER_BATCH_SIZE (8), SEEDER_START_DELAY_MS (0), SEEDER_MAX_DB_ACTIVE_QUERIES (off); RUST_LOG, \
SEEDER_LOG_FORMAT=json.

Exit codes: 0 every selected view is up to date (refreshed, or already refreshed by a run \
started at the same time); 1 a view failed or was skipped; 2 usage or configuration error; 3 the \
database could not be reached at start; 130/143 interrupted.";

pub fn main() -> ExitCode {
    etl_core::job::main(BIN, ABOUT, JOBS)
}
