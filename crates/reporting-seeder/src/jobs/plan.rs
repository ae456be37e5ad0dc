//! `plan`: what a run with the same selection would do, changing nothing.

use clap::{CommandFactory, Parser};
use etl_core::{ExitStatus, JobContext, JobEntry, JobError, JobFuture};

use super::refresh_all::ReportTypeArg;
use crate::cli::args::{OutputFormat, SelectArgs};
use crate::cli::context::{run_error, AppContext};
use crate::processors::planner::{Scope, Selection};
use crate::processors::run::{connect_job, prepare, RunError};
use crate::processors::summary;

pub const JOB: JobEntry = JobEntry {
    name: "plan",
    description: "Show what a refresh with the same selection would do, without changing anything",
    command: Cli::command,
    run,
};

#[derive(Debug, Parser)]
#[command(
    after_help = "For each view: its action (create, refresh, refresh concurrently, rebuild, \
skip-invalid), its upstream views, its expected duration (~ marks an estimate: the median of the \
others), and the expected wall time of the run with SEEDER_MAX_WORKERS workers."
)]
struct Cli {
    /// Plan a refresh_agency of this agency.
    #[arg(long, value_name = "SLUG", conflicts_with = "table")]
    agency: Option<String>,
    /// Plan a refresh_table of this view.
    #[arg(long, value_name = "SCHEMA.TABLE", conflicts_with = "retry")]
    table: Option<String>,
    /// Plan a `retry`: the views that did not succeed in the last finished run (or --run-id).
    #[arg(long, conflicts_with = "agency")]
    retry: bool,
    /// With --retry: the run to repeat.
    #[arg(long, value_parser = crate::cli::args::parse_run_id, value_name = "RUN_ID", requires = "retry")]
    run_id: Option<String>,
    #[command(flatten)]
    report_type: ReportTypeArg,
    #[command(flatten)]
    select: SelectArgs,
    /// What to print.
    #[arg(long, value_enum, default_value = "text")]
    output: OutputFormat,
}

fn run(ctx: JobContext, matches: clap::ArgMatches) -> JobFuture {
    Box::pin(async move {
        let cli: Cli = super::args(&matches)?;
        let scope = match (cli.agency, cli.table) {
            _ if cli.retry => Scope::Retry(cli.run_id),
            (Some(slug), _) => Scope::Agency(slug),
            (None, Some(table)) => Scope::Table(table),
            (None, None) => Scope::All,
        };
        let selection = Selection {
            report_type: cli.report_type.report_type,
            scope,
            select: cli.select.select(),
            exclude: cli.select.exclude(),
        };
        let app = AppContext::from_env(&ctx.env)?;
        let (mut session, _cancel) = connect_job(app.store.as_ref(), &ctx.interrupt)
            .await
            .map_err(run_error)?;
        let prepared = prepare(
            session.as_mut(),
            &selection,
            &app.settings.run,
            |_| {},
        )
        .await
        .map_err(|e| match e {
            // plan changes nothing, so it does not create the control tables either.
            RunError::Database { error, .. } if error.code.as_deref() == Some("42P01") => {
                JobError::usage(format!(
                    "the control tables do not exist yet ({}): run `reporting-seeder run migrate` first",
                    error.message
                ))
            }
            other => run_error(other),
        })?;
        let workers = app.settings.run.max_workers;
        match cli.output {
            OutputFormat::Text => etl_core::out!("{}", summary::render_plan(&prepared, workers)),
            OutputFormat::Json => etl_core::outln!("{:#}", summary::plan_json(&prepared, workers)),
        }
        Ok::<_, JobError>(ExitStatus::Success)
    })
}
