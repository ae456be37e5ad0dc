//! One file per job: parse its arguments, build its dependencies, call a processor, map the
//! outcome to an exit code.

pub mod capture_release_snapshot;
pub mod compare_release_snapshots;
pub mod demo;
pub mod history;
pub mod migrate;
pub mod plan;
pub mod refresh_agency;
pub mod refresh_all;
pub mod refresh_table;
pub mod retry;
pub mod status;

use clap::FromArgMatches;
use etl_core::JobError;

/// The job's typed arguments from what the runner parsed.
pub(crate) fn args<A: FromArgMatches>(matches: &clap::ArgMatches) -> Result<A, JobError> {
    A::from_arg_matches(matches).map_err(|e| JobError::usage(e.to_string()))
}
