//! `status`: per view, how it stands now; exits 1 when any is stale or failing (for monitors).

use clap::{CommandFactory, Parser};
use etl_core::config::parse_duration;
use etl_core::{ExitStatus, JobContext, JobEntry, JobError, JobFuture};

use super::refresh_all::ReportTypeArg;
use crate::cli::args::OutputFormat;
use crate::cli::context::{run_error, AppContext};
use crate::processors::planner::{plan, Scope, Selection};
use crate::processors::run::{connect_job, name_manifest_lock_holders, RunError};
use crate::processors::status::{assess, render_status, status_json, State};

pub const JOB: JobEntry = JobEntry {
    name: "status",
    description: "Show each view's last status, last success, age and failures; exit 1 if any is stale or failing",
    command: Cli::command,
    run,
};

#[derive(Debug, Parser)]
#[command(
    after_help = "Example (a monitor): reporting-seeder run status -- --stale-after 26h\n\
Exit codes: 0 every selected view is fine; 1 one is failing (its last run ended in error) or \
stale (no success within --stale-after, or never)."
)]
struct Cli {
    /// Only this agency's views.
    #[arg(long, value_name = "SLUG")]
    agency: Option<String>,
    /// A view is stale when it has not succeeded for this long (30min, 26h, 2d…).
    #[arg(long, value_name = "DURATION", value_parser = parse_stale)]
    stale_after: Option<std::time::Duration>,
    #[command(flatten)]
    report_type: ReportTypeArg,
    /// What to print.
    #[arg(long, value_enum, default_value = "text")]
    output: OutputFormat,
}

/// A duration with its unit: a bare number (milliseconds elsewhere) would make every view
/// stale by mistake.
fn parse_stale(s: &str) -> Result<std::time::Duration, String> {
    let t = s.trim();
    let has_unit = t.chars().last().is_some_and(|c| c.is_ascii_alphabetic());
    match parse_duration(t).filter(|_| has_unit) {
        Some(d) if d.is_zero() => Err(format!(
            "{s:?} would make every view stale; give a positive duration such as 30min, 26h or 2d"
        )),
        Some(d) => Ok(d),
        None => Err(format!(
            "{s:?} is not a duration with its unit (ms, s, min, h or d), such as 30min, 26h or 2d"
        )),
    }
}

fn run(ctx: JobContext, matches: clap::ArgMatches) -> JobFuture {
    Box::pin(async move {
        let cli: Cli = super::args(&matches)?;
        let app = AppContext::from_env(&ctx.env)?;
        let (mut session, _cancel) = connect_job(app.store.as_ref(), &ctx.interrupt)
            .await
            .map_err(run_error)?;
        let db = |context| move |error| run_error(RunError::Database { context, error });
        // Like every job but `plan`: on a database the tool never ran on, the tables exist
        // (empty) and every view reads as never refreshed, instead of a missing-table error.
        session.migrate().await.map_err(db("applying migrations"))?;
        let rows = match session.load_manifests().await {
            Ok(rows) => rows,
            Err(mut e) => {
                name_manifest_lock_holders(&mut e, session.as_mut(), &app.settings.run).await;
                return Err(db("reading the manifest tables")(e));
            }
        };
        let selection = Selection {
            report_type: cli.report_type.report_type,
            scope: cli.agency.map(Scope::Agency).unwrap_or_default(),
            ..Default::default()
        };
        let planned = plan(&rows, &selection).map_err(|e| run_error(e.into()))?;
        let keys: Vec<String> = planned
            .views
            .iter()
            .zip(&planned.in_scope)
            .filter(|(_, s)| **s)
            .map(|(v, _)| v.key.clone())
            .collect();
        let status = match session.view_status(&keys).await {
            Ok(status) => status,
            Err(mut e) => {
                name_manifest_lock_holders(&mut e, session.as_mut(), &app.settings.run).await;
                return Err(db("reading the views' status")(e));
            }
        };
        match cli.output {
            OutputFormat::Text => etl_core::out!("{}", render_status(&status, cli.stale_after)),
            OutputFormat::Json => etl_core::outln!("{:#}", status_json(&status, cli.stale_after)),
        }
        let bad = status
            .iter()
            .any(|r| assess(r, cli.stale_after) != State::Ok);
        Ok::<_, JobError>(if bad {
            ExitStatus::Failed
        } else {
            ExitStatus::Success
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_after_needs_a_unit() {
        assert_eq!(
            parse_stale("26h"),
            Ok(std::time::Duration::from_secs(26 * 3600))
        );
        for bad in ["26", "0s", "", "soon", "1w"] {
            assert!(parse_stale(bad).is_err(), "{bad:?}");
        }
        // Zero has its unit: what is wrong with it is said.
        assert!(parse_stale("0s").is_err_and(|e| e.contains("every view stale")));
    }
}
