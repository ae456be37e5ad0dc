//! `capture_release_snapshot`: record a view's columns and per-column statistics at a release.

use clap::{ArgGroup, CommandFactory, Parser};
use etl_core::{ExitStatus, JobContext, JobEntry, JobError, JobFuture};

use crate::cli::args::OutputFormat;
use crate::cli::context::{run_error, AppContext};
use crate::processors::planner::{plan, Selection, ViewName};
use crate::processors::run::{connect_job, name_manifest_lock_holders, RunError};
use crate::processors::snapshot::{capture, CaptureOptions, RELEASE_TAG_MAX};
use crate::processors::summary::{counted, shown};

pub const JOB: JobEntry = JobEntry {
    name: "capture_release_snapshot",
    description: "Record a view's schema and per-column statistics at a release (immutable), for drift checks",
    command: Cli::command,
    run,
};

#[derive(Debug, Parser)]
#[command(group(ArgGroup::new("which").required(true).args(["table_name", "manifest_id", "all"])))]
#[command(
    after_help = "Example: reporting-seeder run capture_release_snapshot -- --table-name reporting.reports \
--release-tag abc123 --release-version v1.2.3 --top-values-columns status,category"
)]
struct Cli {
    /// The view, schema.table.
    #[arg(long, value_name = "SCHEMA.TABLE")]
    table_name: Option<String>,
    /// The view of this manifest (a custom manifest's id, or a canned report's id).
    #[arg(long, value_name = "ID")]
    manifest_id: Option<i64>,
    /// Every enabled view.
    #[arg(long)]
    all: bool,
    /// The release; default $GIT_SHA, then $CI_COMMIT_SHA.
    #[arg(long, value_name = "TAG")]
    release_tag: Option<String>,
    /// The release's version, e.g. v1.2.3 (optional; stored beside the tag).
    #[arg(long, value_name = "VERSION")]
    release_version: Option<String>,
    /// Columns whose most frequent values are recorded (comma-separated; as in SQL, a name is
    /// folded to lower case unless in double quotes, which also keep a comma: '"a,b",status').
    #[arg(long, value_name = "A,B", value_parser = column_list)]
    top_values_columns: Vec<Vec<String>>,
    /// Statistics from a sample of this percentage of the view's pages (TABLESAMPLE SYSTEM), for
    /// very large views; recorded in the snapshot. From 0.000001 to 100.
    /// Counts are then estimates scaled to the whole view; distinct counts are the sample's.
    #[arg(long, value_name = "PERCENT", value_parser = parse_percent)]
    sample_percent: Option<f64>,
    /// What to print.
    #[arg(long, value_enum, default_value = "text")]
    output: OutputFormat,
}

/// The smallest sample: PostgreSQL takes the percentage as a `real`, and the statements scale
/// counts by its inverse.
const MIN_PERCENT: f64 = 0.000_001;

fn parse_percent(s: &str) -> Result<f64, String> {
    s.trim()
        .parse::<f64>()
        .ok()
        .filter(|p| p.is_finite() && (MIN_PERCENT..=100.0).contains(p))
        .ok_or_else(|| format!("{s:?} is not a percentage from {MIN_PERCENT} to 100"))
}

/// Column names, comma-separated; a name in double quotes may hold commas (and `""` for a
/// quote), others are trimmed; empty entries are ignored.
fn column_list(s: &str) -> Result<Vec<String>, String> {
    let mut names = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut name = String::new();
        if chars.next_if_eq(&'"').is_some() {
            loop {
                match chars.next() {
                    Some('"') if chars.next_if_eq(&'"').is_some() => name.push('"'),
                    Some('"') => break,
                    Some(c) => name.push(c),
                    None => return Err(format!("{s:?}: a double quote is not closed")),
                }
            }
            while chars.next_if(|c| c.is_whitespace()).is_some() {}
            if chars.peek().is_some_and(|c| *c != ',') {
                return Err(format!(
                    "{s:?}: expected a comma after the quoted name \"{name}\""
                ));
            }
            names.push(name);
        } else {
            while let Some(c) = chars.next_if(|c| *c != ',') {
                name.push(c);
            }
            // Folded as PostgreSQL folds an unquoted name: `Status` is the column `status`.
            let name = name.trim().to_ascii_lowercase();
            if !name.is_empty() {
                names.push(name);
            }
        }
        if chars.next().is_none() {
            if names.is_empty() {
                return Err("names no column; name at least one, or leave the option out".into());
            }
            return Ok(names);
        }
    }
}

fn run(ctx: JobContext, matches: clap::ArgMatches) -> JobFuture {
    Box::pin(async move {
        let cli: Cli = super::args(&matches)?;
        let from_env = |name| {
            ctx.env
                .get(name)
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(str::to_string)
        };
        // Tags and versions are stored trimmed, as the ones taken from the environment are, so
        // `compare --base-tag v1` finds what `--release-tag ' v1 '` stored.
        let release_tag = match cli.release_tag.as_deref().map(str::trim) {
            Some("") => {
                return Err(JobError::usage(
                    "--release-tag is empty: give the release's tag",
                ))
            }
            Some(tag) => tag.to_string(),
            None => from_env("GIT_SHA")
                .or_else(|| from_env("CI_COMMIT_SHA"))
                .ok_or_else(|| {
                    JobError::usage(
                        "no release tag: pass --release-tag, or set GIT_SHA or CI_COMMIT_SHA",
                    )
                })?,
        };
        let release_version = cli
            .release_version
            .as_deref()
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_string);
        for (what, value) in [
            ("release tag", Some(&release_tag)),
            ("--release-version", release_version.as_ref()),
        ] {
            if value.is_some_and(|v| v.chars().count() > RELEASE_TAG_MAX) {
                return Err(JobError::usage(format!(
                    "the {what} is longer than the snapshot table holds ({RELEASE_TAG_MAX} characters)"
                )));
            }
        }
        let wanted = match &cli.table_name {
            Some(t) => Some(
                ViewName::parse(t)
                    .map_err(|e| JobError::usage(format!("--table-name: {e}")))?
                    .to_string(),
            ),
            None => None,
        };
        let app = AppContext::from_env(&ctx.env)?;
        let (mut session, _cancel) = connect_job(app.store.as_ref(), &ctx.interrupt)
            .await
            .map_err(run_error)?;
        let db = |context| move |error| run_error(RunError::Database { context, error });
        session.migrate().await.map_err(db("applying migrations"))?;
        let rows = match session.load_manifests().await {
            Ok(rows) => rows,
            Err(mut e) => {
                name_manifest_lock_holders(&mut e, session.as_mut(), &app.settings.run).await;
                return Err(db("reading the manifest tables")(e));
            }
        };
        let planned = plan(&rows, &Selection::default()).map_err(|e| run_error(e.into()))?;
        let views: Vec<_> = planned
            .views
            .iter()
            .filter(|v| match (&wanted, cli.manifest_id) {
                (Some(key), _) => &v.key == key,
                (None, Some(id)) => v.record.manifest_id == id,
                (None, None) => true,
            })
            .collect();
        if cli.manifest_id.is_some() && views.len() > 1 {
            let names: Vec<&str> = views.iter().map(|v| v.key.as_str()).collect();
            return Err(JobError::usage(format!(
                "--manifest-id {} names more than one view (a custom manifest and a canned report \
                 share the id): {}; name the view with --table-name instead",
                cli.manifest_id.unwrap_or_default(),
                names.join(", ")
            )));
        }
        if views.is_empty() {
            return Err(JobError::usage(match (&wanted, cli.manifest_id) {
                (Some(key), _) => format!("no enabled manifest names table {key}"),
                (None, Some(id)) => format!("no enabled manifest has id {id} (a custom manifest's id, or a canned report's id)"),
                (None, None) => "no enabled manifest: nothing to snapshot".to_string(),
            }));
        }
        let options = CaptureOptions {
            release_tag,
            release_version,
            top_values_columns: cli.top_values_columns.into_iter().flatten().collect(),
            // A sample of 100 % is the whole view: counted exactly, not estimated.
            sample_percent: cli.sample_percent.filter(|p| *p < 100.0),
            settings: Some(app.settings.run.clone()),
        };
        let mut repo = app
            .store
            .snapshots()
            .await
            .map_err(|e| run_error(RunError::Unavailable(e)))?;
        let mut all_ok = true;
        // A store refused for lack of a privilege: the role is misconfigured (exit 2, as for
        // the refresh jobs), not a view's failure.
        let mut refused = None;
        let mut out = Vec::new();
        let mut seen_columns = std::collections::BTreeSet::new();
        // Snapshots are never replaced: a second one at a tag is stored beside the first, and
        // compare takes the newer. Say so, for a CI job that ran twice by mistake; one read for
        // every view, and a capture goes on without it.
        let keys: Vec<String> = views.iter().map(|v| v.key.clone()).collect();
        let earlier = repo
            .snapshots_taken_at(&options.release_tag, &keys)
            .await
            .unwrap_or_default();
        for view in views {
            if let Some((_, id, taken)) = earlier.iter().find(|(key, ..)| *key == view.key) {
                tracing::warn!(
                    view = %view.key,
                    "{} already has snapshot {id} at release {} (taken {taken}); this one is \
                     stored beside it, and compare_release_snapshots will take the newer",
                    shown(&view.key),
                    shown(&options.release_tag),
                );
            }
            // One view's snapshot that cannot be stored does not stop the others'.
            let s = match capture(repo.as_mut(), view, &options).await {
                Ok(s) => s,
                Err(error) => {
                    all_ok = false;
                    if error.code.as_deref() == Some("42501") {
                        refused = Some(RunError::Database {
                            context: "storing a snapshot",
                            error: error.clone(),
                        });
                    }
                    let message = format!("storing the snapshot of {}: {error}", view.key);
                    tracing::error!(view = %view.key, "{message}");
                    match cli.output {
                        OutputFormat::Text => etl_core::outln!(
                            "{}",
                            shown(&format!("no snapshot of {}: {message}", view.key))
                        ),
                        OutputFormat::Json => out.push(serde_json::json!({
                            "table": view.key, "status": "not stored", "error": message,
                        })),
                    }
                    continue;
                }
            };
            all_ok &= s.status == "success";
            for c in s.columns.as_array().into_iter().flatten() {
                if let Some(name) = c["name"].as_str() {
                    seen_columns.insert(name.to_string());
                }
            }
            match cli.output {
                // An error snapshot holds no statistics: its counts and hash mean nothing.
                // Names and tags as printable text: one line each, whatever they hold.
                OutputFormat::Text if s.status != "success" => etl_core::outln!(
                    "{}",
                    shown(&format!(
                        "snapshot {} of {} at {}: {} ({})",
                        s.id,
                        s.table_name,
                        s.release_tag,
                        s.status,
                        s.column_stats["error"]
                            .as_str()
                            .unwrap_or("no reason recorded")
                    ))
                ),
                OutputFormat::Text => etl_core::outln!(
                    "{}",
                    shown(&format!(
                    "snapshot {} of {} at {}: {}, {}{}, {}, schema {}{}",
                    s.id,
                    s.table_name,
                    s.release_tag,
                    s.status,
                    counted(s.total_rows, "row", "rows"),
                    s.column_stats["sample_percent"]
                        .as_f64()
                        .map(|p| format!(" (estimated from a {p}% sample)"))
                        .unwrap_or_default(),
                    counted(s.total_columns.into(), "column", "columns"),
                    &s.schema_hash[..12.min(s.schema_hash.len())],
                    s.column_stats["error"].as_str().map(|e| format!(" ({e})")).unwrap_or_default()
                    ))
                ),
                OutputFormat::Json => out.push(serde_json::json!({
                    "id": s.id.to_string(), "table": s.table_name, "release_tag": s.release_tag,
                    "release_version": s.release_version, "status": s.status,
                    "total_rows": s.total_rows, "total_columns": s.total_columns,
                    "schema_hash": s.schema_hash, "columns": s.columns, "column_stats": s.column_stats,
                })),
            }
        }
        if cli.output == OutputFormat::Json {
            etl_core::outln!("{:#}", serde_json::json!({ "snapshots": out }));
        }
        for c in &options.top_values_columns {
            if !seen_columns.is_empty() && !seen_columns.contains(c) {
                tracing::warn!("--top-values-columns: no captured view has a column {c:?}");
            }
        }
        if let Some(e) = refused {
            return Err(run_error(e));
        }
        Ok::<_, JobError>(if all_ok {
            ExitStatus::Success
        } else {
            ExitStatus::Failed
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn column_lists_are_trimmed_and_quoted_names_keep_their_commas() {
        let ok = |s: &str| column_list(s).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ok("status, m"), ["status", "m"]);
        assert_eq!(ok(r#""a,b",status"#), ["a,b", "status"]);
        assert_eq!(ok(r#" "say ""hi""" , x"#), [r#"say "hi""#, "x"]);
        assert_eq!(ok("Status, \"Mixed\""), ["status", "Mixed"]);
        assert!(column_list("").is_err() && column_list(" , ").is_err());
        assert!(column_list(r#""a,b"#).is_err());
        assert!(column_list(r#""a"b"#).is_err());
    }

    #[test]
    fn sample_percentages_postgres_can_take() {
        assert!(parse_percent("1e-300").is_err());
        assert!(parse_percent("0").is_err());
        assert!(parse_percent("100.5").is_err());
        assert_eq!(parse_percent(" 0.5 "), Ok(0.5));
        assert_eq!(parse_percent("0.000001"), Ok(MIN_PERCENT));
    }
}
