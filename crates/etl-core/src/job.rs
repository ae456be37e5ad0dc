//! The job table and its runner: `list`, `help <job>`, `run <job> [--] [args…]`.
//!
//! A job is a named entry point with a one-line description; a binary declares all of its jobs
//! in one static slice of [`JobEntry`] and hands it to [`main`].

use std::ffi::OsString;
use std::future::Future;
use std::io::Write;
use std::pin::Pin;
use std::process::ExitCode;

use clap::{Arg, ArgAction, Command};

use crate::config::{ConfigError, Env};

/// How a job ended, as the process exit code orchestrators read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// Everything selected is done.
    Success = 0,
    /// At least one item failed or was skipped.
    Failed = 1,
    /// Usage or configuration error: nothing ran.
    Usage = 2,
    /// The database could not be reached at start: nothing ran, retry later.
    Unavailable = 3,
    /// SIGINT.
    Interrupted = 130,
    /// SIGTERM.
    Terminated = 143,
}

impl From<ExitStatus> for ExitCode {
    fn from(s: ExitStatus) -> ExitCode {
        ExitCode::from(s as u8)
    }
}

/// A job's failure before or instead of a normal outcome; `message` is printed as is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct JobError {
    pub status: ExitStatus,
    pub message: String,
}

impl JobError {
    pub fn usage(message: impl Into<String>) -> JobError {
        JobError {
            status: ExitStatus::Usage,
            message: message.into(),
        }
    }
    pub fn unavailable(message: impl Into<String>) -> JobError {
        JobError {
            status: ExitStatus::Unavailable,
            message: message.into(),
        }
    }
    pub fn failed(message: impl Into<String>) -> JobError {
        JobError {
            status: ExitStatus::Failed,
            message: message.into(),
        }
    }
}

impl From<ConfigError> for JobError {
    fn from(e: ConfigError) -> JobError {
        JobError::usage(format!("configuration error: {e}"))
    }
}

/// SIGINT / SIGTERM: the first asks running work to stop (jobs watch [`Interrupt::cancelled`]),
/// the second exits at once.
#[derive(Debug, Clone, Default)]
pub struct Interrupt {
    token: tokio_util::sync::CancellationToken,
    signal: std::sync::Arc<std::sync::atomic::AtomicU8>,
}

impl Interrupt {
    pub fn new() -> Interrupt {
        Interrupt::default()
    }

    /// Marks the job interrupted by `status` (130 or 143) and wakes every waiter.
    pub fn trigger(&self, status: ExitStatus) {
        self.signal
            .store(status as u8, std::sync::atomic::Ordering::SeqCst);
        self.token.cancel();
    }

    pub fn is_interrupted(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Resolves when the job is interrupted.
    pub async fn cancelled(&self) {
        self.token.cancelled().await
    }

    /// The exit status the interruption calls for.
    pub fn status(&self) -> Option<ExitStatus> {
        match self.signal.load(std::sync::atomic::Ordering::SeqCst) {
            130 => Some(ExitStatus::Interrupted),
            143 => Some(ExitStatus::Terminated),
            _ => None,
        }
    }

    /// The signal's name, for messages.
    pub fn signal_name(&self) -> &'static str {
        match self.status() {
            Some(ExitStatus::Terminated) => "SIGTERM",
            Some(_) => "SIGINT",
            None => "no signal",
        }
    }
}

/// Installs the SIGINT and SIGTERM handlers at once (inside the runtime, before the job starts:
/// a signal arriving while the job's first statement waits is the job's to handle), and returns
/// the task that watches them.
#[cfg(unix)]
fn watch_signals(interrupt: Interrupt, json: bool) -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let handlers = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    );
    async move {
        let (Ok(int), Ok(term)) = handlers else {
            tracing::warn!(
                "could not install signal handlers; SIGINT/SIGTERM will end the process at once"
            );
            return;
        };
        watch(int, term, interrupt, json).await
    }
}

#[cfg(unix)]
async fn watch(
    mut int: tokio::signal::unix::Signal,
    mut term: tokio::signal::unix::Signal,
    interrupt: Interrupt,
    json: bool,
) {
    loop {
        let status = tokio::select! {
            _ = int.recv() => ExitStatus::Interrupted,
            _ = term.recv() => ExitStatus::Terminated,
        };
        if interrupt.is_interrupted() {
            let message = "second signal: exiting now; a statement still running on the server \
                           stops when the server finds the connection gone (within seconds where \
                           it checks), and the next run marks this one abandoned";
            if json {
                json_always(tracing::enabled!(tracing::Level::WARN), || {
                    tracing::warn!(exit_code = status as i32, "{message}")
                });
            } else {
                let _ = writeln!(std::io::stderr(), "{message}");
            }
            std::process::exit(status as i32);
        }
        interrupt.trigger(status);
        let message = format!(
            "{}: stopping; no new view starts and the running ones are cancelled on the server (a second signal exits at once)",
            interrupt.signal_name()
        );
        if json {
            // A log shipper reads JSON lines only, and this one whatever the filter.
            json_always(tracing::enabled!(tracing::Level::WARN), || {
                tracing::warn!("{message}")
            });
        } else {
            // Not `eprintln!`: it panics when stderr is a closed pipe.
            let _ = writeln!(std::io::stderr(), "{message}");
        }
    }
}

#[cfg(not(unix))]
async fn watch_signals(_interrupt: Interrupt, _json: bool) {}

/// What every job receives: built once by the runner.
#[derive(Debug, Clone)]
pub struct JobContext {
    pub env: Env,
    /// The job's own name, for messages.
    pub job: &'static str,
    /// The job's arguments as given (after `--`), for the run's record.
    pub args: Vec<String>,
    pub interrupt: Interrupt,
    /// What the terminal gets: a progress bar, colour.
    pub ui: Ui,
}

/// What a job may show on the terminal.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ui {
    /// A live progress bar on stderr: a terminal, not `--quiet`, not JSON logs.
    pub progress: bool,
    /// Colour in what is printed on stdout.
    pub colour: bool,
    pub quiet: bool,
}

pub type JobFuture = Pin<Box<dyn Future<Output = Result<ExitStatus, JobError>> + Send>>;

/// One line of the job table.
pub struct JobEntry {
    pub name: &'static str,
    pub description: &'static str,
    /// The job's argument parser; its help is what `help <job>` prints.
    pub command: fn() -> Command,
    /// Runs the job with parsed arguments.
    pub run: fn(JobContext, clap::ArgMatches) -> JobFuture,
}

fn cli(bin: &'static str, about: &'static str, jobs: &[JobEntry]) -> Command {
    let names: Vec<&'static str> = jobs.iter().map(|j| j.name).collect();
    Command::new(bin)
        .about(about)
        .version(env!("CARGO_PKG_VERSION"))
        .disable_help_subcommand(true)
        .subcommand_required(true)
        .arg_required_else_help(true)
        .after_help(format!(
            "Jobs: {}\nRun `{bin} list` for their descriptions.",
            names.join(", ")
        ))
        .subcommand(Command::new("list").about("List every job with its one-line description"))
        .subcommand(
            Command::new("help")
                .about("Show a job's usage (or this help)")
                .arg(Arg::new("job").value_name("JOB")),
        )
        .subcommand(
            Command::new("run")
                .about("Run a job: `run <job> [--] [args…]`")
                // `run <job> --help` is the job's help, as `run <job> -- --help` is: the flag
                // goes to the job; `run --help` alone is handled below.
                .disable_help_flag(true)
                .bin_name(format!("{bin} run"))
                .arg(
                    Arg::new("job")
                        .value_name("JOB")
                        .required(true)
                        .allow_hyphen_values(true),
                )
                .arg(
                    Arg::new("args")
                        .value_name("ARGS")
                        .num_args(0..)
                        .trailing_var_arg(true)
                        .allow_hyphen_values(true)
                        .action(ArgAction::Append)
                        .value_parser(clap::value_parser!(OsString)),
                ),
        )
}

fn unknown_job(name: &str, jobs: &[JobEntry]) -> JobError {
    let names: Vec<&str> = jobs.iter().map(|j| j.name).collect();
    JobError::usage(format!(
        "unknown job {name:?}; the jobs are: {}",
        names.join(", ")
    ))
}

/// What the command line asked for, before anything runs.
pub enum Invocation<'a> {
    /// Print this and exit with this status (list, help, usage errors).
    Print { text: String, status: ExitStatus },
    Run {
        job: &'a JobEntry,
        matches: clap::ArgMatches,
        args: Vec<String>,
    },
}

/// Parses the command line against the job table. No I/O, so it is unit-testable.
pub fn parse<'a>(
    bin: &'static str,
    about: &'static str,
    jobs: &'a [JobEntry],
    args: impl IntoIterator<Item = OsString>,
) -> Invocation<'a> {
    let matches = match cli(bin, about, jobs).try_get_matches_from(args) {
        Ok(m) => m,
        Err(e) => return clap_print(e),
    };
    match matches.subcommand() {
        Some(("list", _)) => {
            let width = jobs.iter().map(|j| j.name.len()).max().unwrap_or(0);
            let text = jobs
                .iter()
                .map(|j| format!("{:width$}  {}\n", j.name, j.description))
                .collect();
            Invocation::Print {
                text,
                status: ExitStatus::Success,
            }
        }
        Some(("help", sub)) => match sub.get_one::<String>("job") {
            None => Invocation::Print {
                text: cli(bin, about, jobs).render_long_help().to_string(),
                status: ExitStatus::Success,
            },
            Some(name) => match jobs.iter().find(|j| j.name == name) {
                Some(job) => Invocation::Print {
                    text: job_command(bin, job).render_long_help().to_string(),
                    status: ExitStatus::Success,
                },
                // `help run`, `help list`, `help help`: that command's usage.
                None => {
                    let mut cmd = cli(bin, about, jobs);
                    match cmd.find_subcommand_mut(name) {
                        Some(c) => Invocation::Print {
                            text: c.render_long_help().to_string(),
                            status: ExitStatus::Success,
                        },
                        None => usage_error(unknown_job(name, jobs)),
                    }
                }
            },
        },
        Some(("run", sub)) => {
            let name = sub.get_one::<String>("job").cloned().unwrap_or_default();
            if name == "--help" || name == "-h" {
                let mut cmd = cli(bin, about, jobs);
                let text = cmd
                    .find_subcommand_mut("run")
                    .map(|run| run.render_long_help().to_string())
                    .unwrap_or_default();
                return Invocation::Print {
                    text,
                    status: ExitStatus::Success,
                };
            }
            let Some(job) = jobs.iter().find(|j| j.name == name) else {
                return usage_error(unknown_job(&name, jobs));
            };
            let mut rest: Vec<OsString> = sub
                .get_many::<OsString>("args")
                .map(|v| v.cloned().collect())
                .unwrap_or_default();
            // `run job -- args` and `run job args` mean the same.
            if rest.first().is_some_and(|a| a == "--") {
                rest.remove(0);
            }
            let args = rest
                .iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect();
            let argv = std::iter::once(OsString::from(job.name)).chain(rest);
            match job_command(bin, job).try_get_matches_from(argv) {
                Ok(matches) => Invocation::Run { job, matches, args },
                Err(e) => clap_print(e),
            }
        }
        _ => Invocation::Print {
            text: cli(bin, about, jobs).render_help().to_string(),
            status: ExitStatus::Usage,
        },
    }
}

fn job_command(bin: &'static str, job: &JobEntry) -> Command {
    (job.command)()
        .name(job.name)
        .bin_name(format!("{bin} run {}", job.name))
        .about(job.description)
}

fn usage_error(e: JobError) -> Invocation<'static> {
    Invocation::Print {
        text: format!("error: {}\n", e.message),
        status: e.status,
    }
}

fn clap_print(e: clap::Error) -> Invocation<'static> {
    let status = if e.use_stderr() {
        ExitStatus::Usage
    } else {
        ExitStatus::Success
    };
    Invocation::Print {
        text: e.render().to_string(),
        status,
    }
}

/// The whole console entry point: parse, set up logging, run the job on a runtime, map the
/// outcome to an exit code. `.env` is read before any thread starts.
pub fn main(bin: &'static str, about: &'static str, jobs: &[JobEntry]) -> ExitCode {
    let invocation = parse(bin, about, jobs, std::env::args_os());
    let (job, matches, args) = match invocation {
        Invocation::Print { text, status } => {
            if status == ExitStatus::Success {
                crate::out!("{text}");
            } else {
                eprint!("{text}");
            }
            return status.into();
        }
        Invocation::Run { job, matches, args } => (job, matches, args),
    };
    let format_flag = matches
        .try_get_one::<String>("log_format")
        .ok()
        .flatten()
        .cloned();
    let env = match Env::load() {
        Ok(env) => env,
        Err(e) => {
            // `.env` could not be read, so only the flag and the process environment say
            // whether the logs are JSON.
            let json = format_flag.as_deref().map_or_else(
                || std::env::var("SEEDER_LOG_FORMAT").is_ok_and(|f| is_json(&f)),
                is_json,
            );
            return configuration_error(json, &e);
        }
    };
    // Flags every job may define (`--quiet`, `--log-format`); absent ones are their defaults.
    let quiet = matches
        .try_get_one::<bool>("quiet")
        .ok()
        .flatten()
        .copied()
        .unwrap_or(false);
    // `--log-format` wins over SEEDER_LOG_FORMAT; a value that is neither is a usage error.
    let format = match format_flag {
        Some(flag) => flag,
        None => env
            .get("SEEDER_LOG_FORMAT")
            .map(|f| f.trim().to_ascii_lowercase())
            .unwrap_or_else(|| "text".into()),
    };
    let json = match format.as_str() {
        "json" => true,
        "text" | "" => false,
        other => {
            let _ = writeln!(
                std::io::stderr(),
                "error: configuration error: SEEDER_LOG_FORMAT={other:?}: expected text or json"
            );
            return ExitStatus::Usage.into();
        }
    };
    // A dumb terminal cannot draw a bar (the bar library hides itself there): log as off a
    // terminal instead, or nothing would show until the summary.
    let progress = !quiet
        && !json
        && std::io::IsTerminal::is_terminal(&std::io::stderr())
        && env.get_raw("TERM") != Some("dumb")
        && matches.try_get_one::<bool>("quiet").is_ok();
    if let Err(e) = crate::logging::init(
        &env,
        crate::logging::LogOptions {
            json,
            quiet,
            progress,
        },
    ) {
        // The job's logger is not there: its filter is what failed.
        return configuration_error(json, &e);
    }
    for warning in env.dotenv_warnings() {
        tracing::warn!("{warning}");
    }
    // One thread drives every connection. The tool's own work per view is a fraction of a
    // millisecond next to the server's; on a small database host, a second runtime thread only
    // hands wake-ups across threads: with the multi-threaded runtime, the same refresh of 400
    // small views took about 1.5 times the tool's CPU and 4 % more wall time (BENCHMARKS.md).
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: could not start the async runtime: {e}");
            return ExitStatus::Failed.into();
        }
    };
    let interrupt = Interrupt::new();
    let ui = Ui {
        progress,
        colour: crate::logging::colour(&env, &std::io::stdout()),
        quiet,
    };
    crate::output::set_stdout_colour(ui.colour);
    let ctx = JobContext {
        env,
        job: job.name,
        args,
        interrupt: interrupt.clone(),
        ui,
    };
    let outcome = runtime.block_on(async {
        let watcher = tokio::spawn(watch_signals(interrupt.clone(), json));
        let outcome = (job.run)(ctx, matches).await;
        watcher.abort();
        // The job's pools are gone with it: let their connections say goodbye to the server.
        crate::db::end_sessions(std::time::Duration::from_secs(1)).await;
        outcome
    });
    // In-flight work has been awaited by the job; don't wait for stray blocking tasks.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    let status = match outcome {
        Ok(status) => status,
        Err(e) => {
            // What the process exits with: a signal's status wins over the job's.
            let exit = interrupt.status().unwrap_or(e.status);
            if json {
                // One JSON object per line, the fatal error included.
                json_always(tracing::enabled!(tracing::Level::ERROR), || {
                    tracing::error!(exit_code = exit as i32, "{}", e.message)
                });
            } else {
                let message = crate::output::printable(&e.message, Default::default());
                let _ = writeln!(std::io::stderr(), "error: {message}");
            }
            e.status
        }
    };
    // A job that did its work but whose output never arrived has not done what was asked.
    let status = if status == ExitStatus::Success && crate::output::stdout_failed() {
        ExitStatus::Failed
    } else {
        status
    };
    interrupt.status().unwrap_or(status).into()
}

fn is_json(format: &str) -> bool {
    format.trim().eq_ignore_ascii_case("json")
}

/// A configuration error found before the job's logger could start (exit 2): in JSON mode a
/// JSON line like every other fatal error, otherwise plain text.
fn configuration_error(json: bool, e: &dyn std::fmt::Display) -> ExitCode {
    if json {
        json_always(false, || {
            tracing::error!(
                exit_code = ExitStatus::Usage as i32,
                "configuration error: {e}"
            )
        });
    } else {
        let _ = writeln!(std::io::stderr(), "error: configuration error: {e}");
    }
    ExitStatus::Usage.into()
}

/// Emits a JSON log line through the job's logger when its filter keeps the line's level, and
/// otherwise (`RUST_LOG=off`) through one that keeps everything: the lines an operator must see
/// (a signal's notice, the fatal error) are said in the shape of the others, as text mode says
/// them whatever the filter.
fn json_always(enabled: bool, emit: impl FnOnce()) {
    if enabled {
        emit();
    } else {
        let unfiltered = tracing_subscriber::fmt()
            .json()
            .with_target(false)
            .with_writer(std::io::stderr)
            .finish();
        tracing::subscriber::with_default(unfiltered, emit);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noop(_: JobContext, _: clap::ArgMatches) -> JobFuture {
        Box::pin(async { Ok(ExitStatus::Success) })
    }

    fn with_slug() -> Command {
        Command::new("x")
            .arg(Arg::new("slug").required(true))
            .arg(Arg::new("flag").long("flag"))
    }

    const JOBS: &[JobEntry] = &[
        JobEntry {
            name: "alpha",
            description: "first job",
            command: || Command::new("alpha"),
            run: noop,
        },
        JobEntry {
            name: "beta",
            description: "second job",
            command: with_slug,
            run: noop,
        },
    ];

    fn argv(args: &[&str]) -> Vec<OsString> {
        std::iter::once("tool")
            .chain(args.iter().copied())
            .map(OsString::from)
            .collect()
    }

    #[test]
    fn list_prints_every_job() {
        match parse("tool", "about", JOBS, argv(&["list"])) {
            Invocation::Print { text, status } => {
                assert_eq!(status, ExitStatus::Success);
                assert!(text.contains("alpha") && text.contains("first job"));
                assert!(text.contains("beta") && text.contains("second job"));
            }
            Invocation::Run { .. } => panic!("list must not run"),
        }
    }

    #[test]
    fn unknown_job_is_a_usage_error_naming_the_jobs() {
        for args in [&["run", "gamma"][..], &["help", "gamma"][..]] {
            match parse("tool", "about", JOBS, argv(args)) {
                Invocation::Print { text, status } => {
                    assert_eq!(status, ExitStatus::Usage);
                    assert!(
                        text.contains("gamma") && text.contains("alpha, beta"),
                        "{text}"
                    );
                }
                Invocation::Run { .. } => panic!("must not run"),
            }
        }
    }

    #[test]
    fn double_dash_is_optional() {
        for args in [
            &["run", "beta", "--", "gotham", "--flag", "v"][..],
            &["run", "beta", "gotham", "--flag", "v"][..],
        ] {
            match parse("tool", "about", JOBS, argv(args)) {
                Invocation::Run { job, matches, .. } => {
                    assert_eq!(job.name, "beta");
                    assert_eq!(
                        matches.get_one::<String>("slug").map(String::as_str),
                        Some("gotham")
                    );
                    assert_eq!(
                        matches.get_one::<String>("flag").map(String::as_str),
                        Some("v")
                    );
                }
                Invocation::Print { text, .. } => panic!("{text}"),
            }
        }
    }

    #[test]
    fn help_job_shows_its_usage_and_bad_args_are_usage_errors() {
        match parse("tool", "about", JOBS, argv(&["help", "beta"])) {
            Invocation::Print { text, status } => {
                assert_eq!(status, ExitStatus::Success);
                assert!(
                    text.contains("tool run beta") && text.contains("<slug>"),
                    "{text}"
                );
            }
            Invocation::Run { .. } => panic!("help must not run"),
        }
        match parse("tool", "about", JOBS, argv(&["run", "beta"])) {
            Invocation::Print { status, .. } => assert_eq!(status, ExitStatus::Usage),
            Invocation::Run { .. } => panic!("missing slug must not run"),
        }
        // The runner's own commands have a usage too.
        for (command, says) in [("run", "<JOB>"), ("list", "one-line"), ("help", "[JOB]")] {
            match parse("tool", "about", JOBS, argv(&["help", command])) {
                Invocation::Print { text, status } => {
                    assert_eq!(status, ExitStatus::Success, "{command}: {text}");
                    assert!(text.contains(says), "{command}: {text}");
                }
                Invocation::Run { .. } => panic!("help must not run"),
            }
        }
        match parse("tool", "about", JOBS, argv(&["help", "nope"])) {
            Invocation::Print { status, .. } => assert_eq!(status, ExitStatus::Usage),
            Invocation::Run { .. } => panic!("help must not run"),
        }
    }

    #[test]
    fn run_job_help_is_the_jobs_help_with_or_without_double_dash() {
        for args in [
            &["run", "beta", "--help"][..],
            &["run", "beta", "-h"][..],
            &["run", "beta", "--", "--help"][..],
        ] {
            match parse("tool", "about", JOBS, argv(args)) {
                Invocation::Print { text, status } => {
                    assert_eq!(status, ExitStatus::Success, "{args:?}");
                    assert!(
                        text.contains("tool run beta") && text.contains("<slug>"),
                        "{args:?}: {text}"
                    );
                }
                Invocation::Run { .. } => panic!("help must not run"),
            }
        }
        match parse("tool", "about", JOBS, argv(&["run", "--help"])) {
            Invocation::Print { text, status } => {
                assert_eq!(status, ExitStatus::Success);
                assert!(text.contains("tool run <JOB>"), "{text}");
            }
            Invocation::Run { .. } => panic!("help must not run"),
        }
    }
}
