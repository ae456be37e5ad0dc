//! `refresh_table <schema.table>`: one view.

use clap::{CommandFactory, Parser};
use etl_core::{JobContext, JobEntry, JobFuture};

use crate::cli::args::RefreshArgs;
use crate::cli::context;
use crate::processors::planner::{Scope, Selection};

pub const JOB: JobEntry = JobEntry {
    name: "refresh_table",
    description: "Create, refresh or rebuild one view, named schema.table",
    command: Cli::command,
    run,
};

#[derive(Debug, Parser)]
#[command(
    after_help = "Example: reporting-seeder run refresh_table -- reporting.stg_arrests\n\
Same as: reporting-seeder run refresh_all -- --select table:reporting.stg_arrests"
)]
struct Cli {
    /// The view, as in the manifests' table_name column (schema.table).
    table: String,
    #[command(flatten)]
    refresh: RefreshArgs,
}

fn run(ctx: JobContext, matches: clap::ArgMatches) -> JobFuture {
    Box::pin(async move {
        let cli: Cli = super::args(&matches)?;
        let selection = Selection {
            scope: Scope::Table(cli.table),
            ..Default::default()
        };
        context::refresh(&ctx, selection, &cli.refresh).await
    })
}
