//! Flag groups shared by several jobs, defined once and flattened where needed.

use std::path::PathBuf;

use clap::{Args, ValueEnum};

use crate::processors::select::Selector;

/// `--select` / `--exclude`.
#[derive(Debug, Clone, Default, Args)]
pub struct SelectArgs {
    /// Only these views: agency:<slug>, type:custom|canned, table:<schema.table> (glob * allowed);
    /// +X adds everything X reads, X+ everything that reads X. Repeat or separate with spaces.
    #[arg(long, value_name = "SELECTOR", num_args = 1.., value_parser = parse_selectors)]
    select: Vec<Vec<Selector>>,
    /// Leave out these views (same forms as --select).
    #[arg(long, value_name = "SELECTOR", num_args = 1.., value_parser = parse_selectors)]
    exclude: Vec<Vec<Selector>>,
}

impl SelectArgs {
    /// The `--select` selectors, however they were separated.
    pub fn select(&self) -> Vec<Selector> {
        self.select.iter().flatten().cloned().collect()
    }
    /// The `--exclude` selectors.
    pub fn exclude(&self) -> Vec<Selector> {
        self.exclude.iter().flatten().cloned().collect()
    }
}

/// One argument may hold several selectors separated by spaces (`--select "a b"`, as dbt takes);
/// a value holding spaces is written in double quotes (`agency:"new york"`).
fn parse_selectors(s: &str) -> Result<Vec<Selector>, String> {
    let mut words = Vec::new();
    let (mut word, mut quoted) = (String::new(), false);
    for c in s.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                word.push(c);
            }
            c if c.is_whitespace() && !quoted => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if quoted {
        return Err(format!("{s:?}: a double quote is not closed"));
    }
    if !word.is_empty() {
        words.push(word);
    }
    let selectors: Vec<Selector> = words
        .iter()
        .map(|one| {
            one.parse()
                .map_err(|e: crate::processors::select::SelectError| e.to_string())
        })
        .collect::<Result<_, _>>()?;
    if selectors.is_empty() {
        return Err("an empty selector: give e.g. agency:gotham or table:reporting.*".into());
    }
    Ok(selectors)
}

/// A run id as the runs are recorded: a UUID, written in lower case.
pub fn parse_run_id(s: &str) -> Result<String, String> {
    uuid::Uuid::parse_str(s.trim())
        .map(|u| u.hyphenated().to_string())
        .map_err(|_| {
            format!("{s:?} is not a run id (a UUID, as `reporting-seeder run history` lists them)")
        })
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
    /// Wait for a view another run is refreshing instead of skipping it at once: once that run
    /// lets it go, the view is refreshed, unless that run refreshed it since this one started
    /// (then it is recorded skipped, "already refreshed by run …", as without this flag).
    #[arg(long)]
    pub wait_for_locks: bool,
}

/// What the terminal shows.
#[derive(Debug, Clone, Default, Args)]
pub struct UiArgs {
    /// No progress bar and no log lines but errors; the summary (or JSON) is still printed.
    #[arg(long, short = 'q')]
    pub quiet: bool,
    /// `json`: one JSON object per log line on stderr, with the run id, view and agency;
    /// `text` (the default). Overrides SEEDER_LOG_FORMAT.
    #[arg(long, value_name = "FORMAT", value_parser = ["text", "json"])]
    pub log_format: Option<String>,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_split_on_spaces_outside_double_quotes() {
        let texts = |s: &str| -> Vec<String> {
            parse_selectors(s)
                .unwrap()
                .into_iter()
                .map(|s| s.text)
                .collect()
        };
        assert_eq!(texts("agency:a  table:s.*"), ["agency:a", "table:s.*"]);
        assert_eq!(
            texts("agency:\"new york\" type:custom"),
            ["agency:\"new york\"", "type:custom"]
        );
        assert!(parse_selectors("agency:\"new york").is_err());
        assert!(parse_selectors("agency:new york").is_err(), "york alone");
        assert!(parse_selectors("   ").is_err());
    }
}
