//! Logging to stderr with `RUST_LOG`-style filtering; stdout is kept for results.

use tracing_subscriber::EnvFilter;

use crate::config::Env;

/// How a job asked to log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogOptions {
    /// One JSON object per line (`--log-format json`, or `SEEDER_LOG_FORMAT=json` without the flag).
    pub json: bool,
    /// Only errors (`--quiet`).
    pub quiet: bool,
    /// Only warnings and errors: a progress bar is drawn on the same terminal.
    pub progress: bool,
}

/// `RUST_LOG` when set, otherwise `info` (server notices such as "already exists, skipping"
/// only at `RUST_LOG=tokio_postgres=info`, the pool's recycling at `deadpool.postgres=warn`). JSON lines carry the fields of the spans they happen
/// in (run id, view, agency). A `RUST_LOG` that is not a filter is a configuration error.
pub fn init(env: &Env, options: LogOptions) -> Result<(), String> {
    // The pool's "Connection could not be recycled" is its own business: it drops the
    // connection (one a server or a DBA ended) and opens another; the view is not concerned.
    let default = if options.quiet {
        "error"
    } else if options.progress {
        "warn,deadpool.postgres=error"
    } else {
        "info,tokio_postgres=warn,deadpool.postgres=error"
    };
    let asked = env
        .get("RUST_LOG")
        .map(|f| {
            EnvFilter::try_new(f)
                .map(|filter| quiet_parser(f, filter))
                .map_err(|e| {
                    format!("RUST_LOG={f:?}: {e}; expected a filter such as info, warn or reporting_seeder=debug")
                })
        })
        .transpose()?;
    let filter = asked
        .filter(|_| !options.quiet)
        .unwrap_or_else(|| EnvFilter::new(default));
    let json = options.json;
    let ansi = colour(env, &std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Text lines: a field holding a control character (a manifest's table name, say)
        // cannot move the cursor or start a line of its own. JSON escapes them itself.
        .with_writer(move || crate::output::PrintableStderr { colour: ansi })
        .with_target(false)
        // When stderr is gone (a closed pipe), drop the event: by default tracing-subscriber
        // reports the failure with `eprintln!`, which panics on the same closed pipe, inside
        // whichever task was logging (a view's refresh, recorded as an internal error).
        .log_internal_errors(false);
    // A second init (tests) is harmless: keep the first subscriber.
    let _ = if json {
        builder
            .json()
            .with_current_span(false)
            .with_span_list(true)
            .try_init()
    } else {
        builder.with_ansi(ansi).try_init()
    };
    Ok(())
}

/// The SQL parser logs each token it reads at debug: under a plain `RUST_LOG=debug` that buries
/// everything else, so it keeps to warnings unless the filter names it.
fn quiet_parser(asked: &str, filter: EnvFilter) -> EnvFilter {
    if asked.contains("sqlparser") {
        return filter;
    }
    match "sqlparser=warn".parse() {
        Ok(directive) => filter.add_directive(directive),
        Err(_) => filter,
    }
}

/// Colour only on a terminal that can show it (not `TERM=dumb`), and never with `NO_COLOR` set
/// (https://no-color.org).
pub fn colour(env: &Env, stream: &impl std::io::IsTerminal) -> bool {
    env.get_raw("NO_COLOR").is_none_or(str::is_empty)
        && env.get_raw("TERM") != Some("dumb")
        && stream.is_terminal()
}
