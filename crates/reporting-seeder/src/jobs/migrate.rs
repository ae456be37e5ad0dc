//! `migrate`: create the control tables that are missing (every job does this first too).

use clap::{CommandFactory, Parser};
use etl_core::{ExitStatus, JobContext, JobEntry, JobError, JobFuture};

use crate::cli::context::{run_error, AppContext};
use crate::processors::run::{connect_job, RunError};

pub const JOB: JobEntry = JobEntry {
    name: "migrate",
    description: "Create the control tables that are missing; existing tables are left as they are",
    command: Cli::command,
    run,
};

#[derive(Debug, Parser)]
struct Cli {}

fn run(ctx: JobContext, matches: clap::ArgMatches) -> JobFuture {
    Box::pin(async move {
        let _: Cli = super::args(&matches)?;
        let app = AppContext::from_env(&ctx.env)?;
        let (mut session, _cancel) = connect_job(app.store.as_ref(), &ctx.interrupt)
            .await
            .map_err(run_error)?;
        let applied = session.migrate().await.map_err(|error| {
            run_error(RunError::Database {
                context: "applying migrations",
                error,
            })
        })?;
        if applied.is_empty() {
            etl_core::outln!(
                "control tables are up to date on {}",
                app.connection.target()
            );
        } else {
            etl_core::outln!(
                "applied on {}: {}",
                app.connection.target(),
                applied.join(", ")
            );
        }
        Ok::<_, JobError>(ExitStatus::Success)
    })
}
