//! `compare_release_snapshots`: the drift between two snapshots of a view.

use clap::{CommandFactory, Parser};
use etl_core::{ExitStatus, JobContext, JobEntry, JobError, JobFuture};

use crate::cli::args::OutputFormat;
use crate::cli::context::{run_error, AppContext};
use crate::processors::run::{connect_job, RunError};
use crate::processors::snapshot::{
    compare, fraction, incomparable, render_compare, share, FailOn, Thresholds,
};

pub const JOB: JobEntry = JobEntry {
    name: "compare_release_snapshots",
    description:
        "Show the drift between two release snapshots of a view; exit 1 past --fail-on thresholds",
    command: Cli::command,
    run,
};

#[derive(Debug, Parser)]
#[command(
    after_help = "Examples:\n  reporting-seeder run compare_release_snapshots -- <BASE_ID> <NEW_ID>\n  \
reporting-seeder run compare_release_snapshots -- --table-name reporting.reports --base-tag v1 --new-tag v2 --fail-on schema,rows:0.2"
)]
struct Cli {
    /// Two snapshot ids: the base, then the new one.
    #[arg(value_name = "SNAPSHOT_ID", num_args = 2, value_parser = snapshot_id, conflicts_with_all = ["table_name", "base_tag", "new_tag"])]
    ids: Vec<uuid::Uuid>,
    /// Or: the view, with two release tags (the newest snapshot at each).
    #[arg(long, value_name = "SCHEMA.TABLE", requires_all = ["base_tag", "new_tag"])]
    table_name: Option<String>,
    /// With --table-name: the base release's tag.
    #[arg(long, value_name = "TAG", requires = "table_name")]
    base_tag: Option<String>,
    /// With --table-name: the new release's tag.
    #[arg(long, value_name = "TAG", requires = "table_name")]
    new_tag: Option<String>,
    /// Report a column whose null fraction moved by more than this (0.05 = 5 points), 0 to 1.
    #[arg(long, default_value_t = 0.05, value_parser = null_threshold)]
    null_threshold: f64,
    /// Report a column whose distinct count changed by more than this fraction.
    #[arg(long, default_value_t = 0.10, value_parser = threshold)]
    distinct_threshold: f64,
    /// Exit 1 when drift exceeds these: schema, rows:<fraction>, nulls:<fraction>,
    /// distinct:<fraction> (comma-separated).
    #[arg(long, value_name = "LIST", value_parser = |s: &str| s.parse::<FailOn>())]
    fail_on: Option<FailOn>,
    /// What to print.
    #[arg(long, value_enum, default_value = "text")]
    output: OutputFormat,
}

fn null_threshold(s: &str) -> Result<f64, String> {
    share(s.trim()).ok_or_else(|| format!("{s:?} is not a fraction from 0 to 1, e.g. 0.05"))
}

fn threshold(s: &str) -> Result<f64, String> {
    fraction(s).ok_or_else(|| format!("{s:?} is not a fraction of at least 0, e.g. 0.05"))
}

fn run(ctx: JobContext, matches: clap::ArgMatches) -> JobFuture {
    Box::pin(async move {
        let cli: Cli = super::args(&matches)?;
        if cli.ids.is_empty() && cli.table_name.is_none() {
            return Err(JobError::usage(
                "give two snapshot ids, or --table-name with --base-tag and --new-tag",
            ));
        }
        let app = AppContext::from_env(&ctx.env)?;
        // Like every job but plan: pending migrations first (they create the snapshot table).
        {
            let (mut session, _cancel) = connect_job(app.store.as_ref(), &ctx.interrupt)
                .await
                .map_err(run_error)?;
            session.migrate().await.map_err(|error| {
                run_error(RunError::Database {
                    context: "applying migrations",
                    error,
                })
            })?;
        }
        let mut repo = app.store.snapshots().await.map_err(|e| {
            if e.is_configuration() {
                run_error(RunError::Configuration(e))
            } else {
                run_error(RunError::Unavailable(e))
            }
        })?;
        let db = |error| {
            run_error(RunError::Database {
                context: "reading the snapshots",
                error,
            })
        };
        let missing = |what: String| {
            JobError::usage(format!(
                "no snapshot {what}; the snapshots' ids and tags are in the snapshot table \
                 (reporting.seeder_release_snapshot, or public.\"reporting.seeder_release_snapshot\" \
                 where Django created it)"
            ))
        };
        let (base, new) = match (&cli.table_name, &cli.base_tag, &cli.new_tag) {
            (Some(table), Some(a), Some(b)) => {
                let table = table.to_ascii_lowercase();
                // Stored trimmed at capture: the same CI variable finds them here.
                let (a, b) = (a.trim(), b.trim());
                let base = repo
                    .snapshot_by_tag(&table, a)
                    .await
                    .map_err(db)?
                    .ok_or_else(|| missing(format!("of {table} at {a}")))?;
                let new = repo
                    .snapshot_by_tag(&table, b)
                    .await
                    .map_err(db)?
                    .ok_or_else(|| missing(format!("of {table} at {b}")))?;
                (base, new)
            }
            _ => {
                let base = repo
                    .snapshot_by_id(cli.ids[0])
                    .await
                    .map_err(db)?
                    .ok_or_else(|| missing(cli.ids[0].to_string()))?;
                let new = repo
                    .snapshot_by_id(cli.ids[1])
                    .await
                    .map_err(db)?
                    .ok_or_else(|| missing(cli.ids[1].to_string()))?;
                (base, new)
            }
        };
        if base.table_name != new.table_name {
            return Err(JobError::usage(
                incomparable(&base, &new).unwrap_or_default(),
            ));
        }
        if let Some(why) = incomparable(&base, &new) {
            if cli.output == OutputFormat::Json {
                // A CI gate reading the JSON gets a document saying why, not nothing.
                etl_core::outln!(
                    "{:#}",
                    serde_json::json!({
                        "table": new.table_name,
                        "base": {"id": base.id.to_string(), "status": base.status},
                        "new": {"id": new.id.to_string(), "status": new.status},
                        "error": why,
                        "failures": [why],
                    })
                );
            }
            return Err(JobError::failed(why));
        }
        let thresholds = Thresholds {
            null_fraction: cli.null_threshold,
            distinct: cli.distinct_threshold,
        };
        let (doc, failed) = compare(&base, &new, thresholds, cli.fail_on.unwrap_or_default());
        match cli.output {
            OutputFormat::Text => etl_core::out!("{}", render_compare(&doc)),
            OutputFormat::Json => etl_core::outln!("{doc:#}"),
        }
        Ok::<_, JobError>(if failed {
            ExitStatus::Failed
        } else {
            ExitStatus::Success
        })
    })
}

/// A snapshot id as `capture_release_snapshot` prints it: a UUID.
fn snapshot_id(s: &str) -> Result<uuid::Uuid, String> {
    uuid::Uuid::parse_str(s.trim()).map_err(|_| {
        format!(
            "{s:?} is not a snapshot id (a UUID, as capture_release_snapshot prints it); or \
             compare by release with --table-name, --base-tag and --new-tag"
        )
    })
}
