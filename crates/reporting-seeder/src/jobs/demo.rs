//! `demo`: the first thing a newcomer runs. Never touches anyone's data: it uses a database of
//! its own (`reporting_seeder_demo`, reset each time), or a throwaway cluster.

use clap::{CommandFactory, Parser};
use etl_core::db::ConnectionSettings;
use etl_core::{JobContext, JobEntry, JobError, JobFuture};

use crate::cli::args::OutputArgs;
use crate::cli::context::{finish, run_error, Settings, APPLICATION_NAME};
use crate::processors::demo::{self, DemoError, DEMO_DATABASE};

pub const JOB: JobEntry = JobEntry {
    name: "demo",
    description: "Load a small demo (two agencies, custom and canned reports) into a database of its own and refresh it",
    command: Cli::command,
    run,
};

#[derive(Debug, Parser)]
#[command(
    after_help = "Uses the server named by DATABASE_URL or DB_HOST/DB_PORT (database reporting_seeder_demo, \
dropped and recreated each time); when no server answers and PostgreSQL's binaries are installed, a \
throwaway cluster in a temporary directory, removed afterwards."
)]
struct Cli {}

fn run(ctx: JobContext, matches: clap::ArgMatches) -> JobFuture {
    Box::pin(async move {
        let _: Cli = super::args(&matches)?;
        let settings = Settings::from_env(&ctx.env)?;
        let server = ConnectionSettings::from_env(&ctx.env, APPLICATION_NAME)?;
        let outcome = demo::run(server, settings.run, APPLICATION_NAME)
            .await
            .map_err(|e| match e {
                DemoError::Run(r) => run_error(r),
                DemoError::NoServer { .. } => JobError::unavailable(e.to_string()),
                DemoError::Database { .. } => JobError::failed(e.to_string()),
            })?;
        etl_core::outln!(
            "demo: loaded 2 agencies (gotham, metropolis), 2 custom and 2 canned reports (one shared by both agencies) into database {DEMO_DATABASE} on {}, then ran refresh_all",
            outcome.server
        );
        let status = finish(
            &outcome.report,
            "demo",
            &OutputArgs::default(),
            ctx.ui.colour,
            &ctx.interrupt,
        )
        .await?;
        if !outcome.preview.is_empty() {
            etl_core::outln!("reporting.canned_arrests_by_agency (shared by both agencies):");
            for line in &outcome.preview {
                etl_core::outln!("  {line}");
            }
        }
        match &outcome.psql {
            Some(cmd) => etl_core::outln!("look at the history: {cmd}"),
            None => etl_core::outln!("the throwaway cluster has been removed; start PostgreSQL and run the demo again to keep the result"),
        }
        Ok(status)
    })
}
