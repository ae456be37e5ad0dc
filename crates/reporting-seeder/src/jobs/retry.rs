//! `retry`: run again the views that ended `error` or `skipped` in the last run (or in one).

use clap::{CommandFactory, Parser};
use etl_core::{JobContext, JobEntry, JobFuture};

use crate::cli::args::{RefreshArgs, SelectArgs};
use crate::cli::context;
use crate::processors::planner::{Scope, Selection};

pub const JOB: JobEntry = JobEntry {
    name: "retry",
    description: "Run again the views that did not succeed in the last finished run (or --run-id): failed, skipped, cancelled or never finished",
    command: Cli::command,
    run,
};

#[derive(Debug, Parser)]
#[command(
    after_help = "Dependencies between the retried views are respected. A view whose manifest \
has since been disabled or removed is left out."
)]
struct Cli {
    /// The run to retry; default the newest that is over and had views.
    #[arg(long, value_parser = crate::cli::args::parse_run_id, value_name = "RUN_ID")]
    run_id: Option<String>,
    #[command(flatten)]
    select: SelectArgs,
    #[command(flatten)]
    refresh: RefreshArgs,
}

fn run(ctx: JobContext, matches: clap::ArgMatches) -> JobFuture {
    Box::pin(async move {
        let cli: Cli = super::args(&matches)?;
        let selection = Selection {
            scope: Scope::Retry(cli.run_id),
            select: cli.select.select(),
            exclude: cli.select.exclude(),
            ..Default::default()
        };
        context::refresh(&ctx, selection, &cli.refresh).await
    })
}
