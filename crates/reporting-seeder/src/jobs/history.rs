//! `history`: recent runs, or the per-view rows of one run or one view.

use clap::{CommandFactory, Parser};
use etl_core::{ExitStatus, JobContext, JobEntry, JobError, JobFuture};

use crate::cli::args::OutputFormat;
use crate::cli::context::{run_error, AppContext};
use crate::processors::run::{connect_job, RunError};
use crate::processors::status::{render_runs, render_view_runs, runs_json, view_runs_json};

pub const JOB: JobEntry = JobEntry {
    name: "history",
    description: "Show recent runs with their counts, or the per-view rows of a run (--run-id) or a view (--table)",
    command: Cli::command,
    run,
};

#[derive(Debug, Parser)]
struct Cli {
    /// The per-view rows of this run.
    #[arg(long, value_parser = crate::cli::args::parse_run_id, value_name = "RUN_ID", conflicts_with = "table")]
    run_id: Option<String>,
    /// The rows of this view across runs, newest first.
    #[arg(long, value_name = "SCHEMA.TABLE")]
    table: Option<String>,
    /// How many runs (or rows of --table) to show, 1 to 10000.
    #[arg(long, default_value_t = 20, value_parser = parse_limit)]
    limit: i64,
    /// What to print.
    #[arg(long, value_enum, default_value = "text")]
    output: OutputFormat,
}

fn run(ctx: JobContext, matches: clap::ArgMatches) -> JobFuture {
    Box::pin(async move {
        let cli: Cli = super::args(&matches)?;
        let app = AppContext::from_env(&ctx.env)?;
        let (mut session, _cancel) = connect_job(app.store.as_ref(), &ctx.interrupt)
            .await
            .map_err(run_error)?;
        let db = |error| {
            run_error(RunError::Database {
                context: "reading the history",
                error,
            })
        };
        // Like every job but `plan` (an untouched database then has an empty history).
        session.migrate().await.map_err(|error| {
            run_error(RunError::Database {
                context: "applying migrations",
                error,
            })
        })?;
        let json = cli.output == OutputFormat::Json;
        let text = match (&cli.run_id, &cli.table) {
            (Some(run_id), _) => {
                let Some(rows) = session.run_views(run_id).await.map_err(db)? else {
                    return Err(JobError::usage(format!(
                        "no run {run_id:?} is recorded; list the runs with `reporting-seeder run history`"
                    )));
                };
                if json {
                    format!("{:#}\n", view_runs_json(&rows))
                } else {
                    render_view_runs(&rows)
                }
            }
            (None, Some(table)) => {
                // A name the tool refuses still has history rows (its manifest's errors),
                // recorded under the manifest's text: look that up as given.
                let table = crate::processors::planner::ViewName::parse(table)
                    .map_or_else(|_| table.trim().to_string(), |name| name.to_string());
                let rows = session.table_history(&table, cli.limit).await.map_err(db)?;
                if json {
                    format!("{:#}\n", view_runs_json(&rows))
                } else {
                    render_view_runs(&rows)
                }
            }
            (None, None) => {
                let runs = session.runs(cli.limit).await.map_err(db)?;
                if json {
                    format!("{:#}\n", runs_json(&runs))
                } else {
                    render_runs(&runs)
                }
            }
        };
        etl_core::out!("{text}");
        Ok::<_, JobError>(ExitStatus::Success)
    })
}

/// `--limit`: one message for every value out of range, however it is out.
fn parse_limit(s: &str) -> Result<i64, String> {
    s.trim()
        .parse::<i64>()
        .ok()
        .filter(|n| (1..=10_000).contains(n))
        .ok_or_else(|| "expected a whole number from 1 to 10000".to_string())
}

#[cfg(test)]
mod tests {
    #[test]
    fn limit_out_of_range_says_the_range() {
        assert_eq!(super::parse_limit(" 25 "), Ok(25));
        for bad in ["0", "-1", "10001", "99999999999999999999", "", "ten"] {
            assert_eq!(
                super::parse_limit(bad),
                Err("expected a whole number from 1 to 10000".to_string()),
                "{bad:?}"
            );
        }
    }
}
