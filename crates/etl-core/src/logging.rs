//! Logging to stderr with `RUST_LOG`-style filtering; stdout is kept for results.

use tracing_subscriber::EnvFilter;

use crate::config::Env;

/// `RUST_LOG` when set (an invalid filter falls back to the default), otherwise `info` (server
/// notices such as "already exists, skipping" only at `RUST_LOG=tokio_postgres=info`).
/// `SEEDER_LOG_FORMAT=json` emits one JSON object per line.
pub fn init(env: &Env) {
    let filter = env
        .get("RUST_LOG")
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| EnvFilter::new("info,tokio_postgres=warn"));
    let json = env
        .get("SEEDER_LOG_FORMAT")
        .is_some_and(|f| f.eq_ignore_ascii_case("json"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    // A second init (tests) is harmless: keep the first subscriber.
    let _ = if json {
        builder.json().try_init()
    } else {
        builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init()
    };
}
