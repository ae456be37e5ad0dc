//! `refresh_all`: every enabled manifest's view (narrowed by `--select`/`--exclude`).

use clap::{Args, CommandFactory, Parser};
use etl_core::{JobContext, JobEntry, JobFuture};

use crate::cli::args::{RefreshArgs, SelectArgs};
use crate::cli::context;
use crate::processors::planner::{Scope, Selection, TypeFilter};

pub const JOB: JobEntry = JobEntry {
    name: "refresh_all",
    description:
        "Create, refresh or rebuild the view of every enabled manifest, in dependency order",
    command: Cli::command,
    run,
};

#[derive(Debug, Parser)]
#[command(
    after_help = "Examples:\n  reporting-seeder run refresh_all -- --report-type canned\n  reporting-seeder run refresh_all -- --select 'table:reporting.stg_*+' --exclude agency:gotham"
)]
struct Cli {
    #[command(flatten)]
    report_type: ReportTypeArg,
    #[command(flatten)]
    select: SelectArgs,
    #[command(flatten)]
    refresh: RefreshArgs,
}

/// Shared by the refresh jobs.
#[derive(Debug, Clone, Args)]
pub struct ReportTypeArg {
    /// Which manifests to include.
    #[arg(long, value_enum, default_value = "all")]
    pub report_type: TypeFilter,
}

fn run(ctx: JobContext, matches: clap::ArgMatches) -> JobFuture {
    Box::pin(async move {
        let cli: Cli = super::args(&matches)?;
        let selection = Selection {
            report_type: cli.report_type.report_type,
            scope: Scope::All,
            select: cli.select.select(),
            exclude: cli.select.exclude(),
        };
        context::refresh(&ctx, selection, &cli.refresh).await
    })
}
