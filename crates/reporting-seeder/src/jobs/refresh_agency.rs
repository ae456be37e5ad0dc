//! `refresh_agency <slug>`: one agency's custom views and the canned views mapped to it.

use clap::{CommandFactory, Parser};
use etl_core::{JobContext, JobEntry, JobFuture};

use super::refresh_all::ReportTypeArg;
use crate::cli::args::{RefreshArgs, SelectArgs};
use crate::cli::context;
use crate::processors::planner::{Scope, Selection};

pub const JOB: JobEntry = JobEntry {
    name: "refresh_agency",
    description: "Refresh one agency's views, including the canned views it shares with others",
    command: Cli::command,
    run,
};

#[derive(Debug, Parser)]
#[command(
    after_help = "Example: reporting-seeder run refresh_agency -- gotham\n\
Same as: reporting-seeder run refresh_all -- --select agency:gotham\n\
A --select given here narrows these views; it does not add to them."
)]
struct Cli {
    /// The agency's slug, as in the manifests' agency_slug column.
    slug: String,
    #[command(flatten)]
    report_type: ReportTypeArg,
    #[command(flatten)]
    select: SelectArgs,
    #[command(flatten)]
    refresh: RefreshArgs,
}

fn run(ctx: JobContext, matches: clap::ArgMatches) -> JobFuture {
    Box::pin(async move {
        let cli: Cli = super::args(&matches)?;
        let selection = Selection {
            report_type: cli.report_type.report_type,
            scope: Scope::Agency(cli.slug),
            select: cli.select.select(),
            exclude: cli.select.exclude(),
        };
        context::refresh(&ctx, selection, &cli.refresh).await
    })
}
