//! Flag groups shared by several jobs, defined once and flattened where needed.

use std::path::PathBuf;

use clap::{Args, ValueEnum};

use crate::processors::select::Selector;

/// `--select` / `--exclude`.
#[derive(Debug, Clone, Default, Args)]
pub struct SelectArgs {
    /// Only these views: agency:<slug>, type:custom|canned, table:<schema.table> (glob * allowed);
    /// +X adds everything X reads, X+ everything that reads X. Repeat or separate with spaces.
    #[arg(long, value_name = "SELECTOR", num_args = 1.., value_parser = parse_selector)]
    pub select: Vec<Selector>,
    /// Leave out these views (same forms as --select).
    #[arg(long, value_name = "SELECTOR", num_args = 1.., value_parser = parse_selector)]
    pub exclude: Vec<Selector>,
}

fn parse_selector(s: &str) -> Result<Selector, String> {
    s.parse()
        .map_err(|e: crate::processors::select::SelectError| e.to_string())
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// A table for people.
    #[default]
    Text,
    /// One JSON document on stdout (schema in the README).
    Json,
}

/// `--output` and `--results-file` of the refresh jobs.
#[derive(Debug, Clone, Default, Args)]
pub struct OutputArgs {
    /// What to print on stdout at the end.
    #[arg(long, value_enum, default_value = "text")]
    pub output: OutputFormat,
    /// Also write the run's results as JSON to this file.
    #[arg(long, value_name = "PATH")]
    pub results_file: Option<PathBuf>,
    /// Write Prometheus metrics of the run to this file at the end (text format, for the
    /// node_exporter textfile collector); written whole, then renamed into place.
    #[arg(long, value_name = "PATH")]
    pub metrics_file: Option<PathBuf>,
}

/// How a run treats views another run is refreshing.
#[derive(Debug, Clone, Default, Args)]
pub struct LockArgs {
    /// Wait for a view another run is refreshing, instead of recording it skipped.
    #[arg(long)]
    pub wait_for_locks: bool,
}

/// What the terminal shows.
#[derive(Debug, Clone, Default, Args)]
pub struct UiArgs {
    /// No progress bar and no log lines but errors; the summary (or JSON) is still printed.
    #[arg(long, short = 'q')]
    pub quiet: bool,
    /// `json`: one JSON object per log line on stderr, with the run id, view and agency
    /// (also SEEDER_LOG_FORMAT=json).
    #[arg(long, value_name = "FORMAT", value_parser = ["text", "json"], default_value = "text")]
    pub log_format: String,
}

/// Everything a refresh job takes besides what it selects.
#[derive(Debug, Clone, Default, Args)]
pub struct RefreshArgs {
    #[command(flatten)]
    pub locks: LockArgs,
    #[command(flatten)]
    pub output: OutputArgs,
    // Read by the runner before the job starts (logging, progress bar).
    #[allow(dead_code)]
    #[command(flatten)]
    pub ui: UiArgs,
}
