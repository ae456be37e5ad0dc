//! The database client: connection settings from the environment, a lazily connecting pool,
//! and the classification of failures that the circuit breaker relies on.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::error::SqlState;

use crate::config::{ConfigError, Env};
use crate::tls::{self, Connector, SslMode, TlsSettings};

/// A pooled connection; it goes back to the pool when dropped.
pub type Connection = deadpool_postgres::Object;

/// Hands out connections. The PostgreSQL implementation is a pool that connects on first use.
#[async_trait]
pub trait DatabaseClient: Send + Sync {
    async fn connection(&self) -> Result<Connection, DbError>;
    /// Where it connects, without the password, for messages.
    fn target(&self) -> &str;
    /// The TLS connector, for cancel requests (they open a connection of their own).
    fn tls(&self) -> Connector;
    /// Closes the connections that wait idle for reuse (those in use stay open).
    fn close_idle(&self) {}
}

/// Connection parameters and their printable (password-free) form.
#[derive(Clone)]
pub struct ConnectionSettings {
    config: tokio_postgres::Config,
    target: String,
    tls: TlsSettings,
    connector: Connector,
}

impl fmt::Debug for ConnectionSettings {
    // Never print the config itself: it holds the password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionSettings")
            .field("target", &self.target)
            .finish()
    }
}

const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

impl ConnectionSettings {
    /// `DATABASE_URL` when set, otherwise `DB_HOST`, `DB_PORT`, `DB_NAME`, `DB_USER`, `DB_PASSWORD`.
    pub fn from_env(env: &Env, application_name: &str) -> Result<ConnectionSettings, ConfigError> {
        let mut tls = TlsSettings::default();
        let mut mode_var = "DB_SSLMODE";
        // Set but empty, as `DATABASE_URL=${SECRET}` leaves it when the secret is missing: with
        // no DB_* either, the defaults would pick a database nobody chose (and migrate it).
        if env.get_raw("DATABASE_URL").is_some()
            && env.get("DATABASE_URL").is_none()
            && ["DB_HOST", "DB_PORT", "DB_NAME", "DB_USER"]
                .iter()
                .all(|v| env.get(v).is_none())
        {
            return Err(ConfigError::Invalid {
                var: "DATABASE_URL".into(),
                value: env.get_raw("DATABASE_URL").unwrap_or_default().into(),
                expected: "it is set but empty, and no DB_HOST, DB_PORT, DB_NAME or DB_USER is \
                           set either; give it a postgres:// URL, set the DB_* variables, or \
                           unset it to connect to localhost:5432/postgres by the defaults"
                    .into(),
            });
        }
        let mut config = match env.get("DATABASE_URL") {
            Some(raw) => {
                let (config, mode, root) = parse_database_url(raw)?;
                if let Some(mode) = mode {
                    tls.mode = mode;
                    mode_var = "DATABASE_URL";
                }
                tls.root_cert = root;
                config
            }
            None => {
                let mut config = tokio_postgres::Config::new();
                // Several hosts, comma-separated, are tried in turn, as libpq's PGHOST.
                for host in env.get("DB_HOST").unwrap_or("localhost").split(',') {
                    if host.trim().is_empty() {
                        return Err(ConfigError::Invalid {
                            var: "DB_HOST".into(),
                            value: env.get("DB_HOST").unwrap_or_default().into(),
                            expected: "a host name, address or socket directory, or several \
                                       separated by commas, none empty"
                                .into(),
                        });
                    }
                    config.host(db_host(host));
                }
                config
                    .port(
                        env.parse_or("DB_PORT", DEFAULT_PORT, "expected a port number (1-65535)")?
                            .get(),
                    )
                    .dbname(env.get("DB_NAME").unwrap_or("postgres"))
                    .user(env.get("DB_USER").unwrap_or("postgres"));
                if let Some(password) = env.get_raw("DB_PASSWORD").filter(|p| !p.is_empty()) {
                    config.password(password);
                }
                config
            }
        };
        if mode_var == "DB_SSLMODE" {
            if let Some(raw) = env.get("DB_SSLMODE") {
                tls.mode = raw.parse().map_err(|reason| ConfigError::Invalid {
                    var: "DB_SSLMODE".into(),
                    value: raw.into(),
                    expected: reason,
                })?;
            }
        }
        if tls.root_cert.is_none() {
            tls.root_cert = env.get("DB_SSLROOTCERT").map(std::path::PathBuf::from);
        }
        // Like libpq, no TLS over Unix sockets, whatever sslmode says: the connection never
        // leaves the machine, and the server refuses TLS there.
        let sockets_only = !config.get_hosts().is_empty()
            && config.get_hosts().iter().all(|h| {
                #[cfg(unix)]
                {
                    matches!(h, tokio_postgres::config::Host::Unix(_))
                }
                #[cfg(not(unix))]
                {
                    let _ = h;
                    false
                }
            });
        if sockets_only {
            tls.mode = SslMode::Disable;
        }
        config.ssl_mode(tls.mode.transport());
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(DEFAULT_CONNECT_TIMEOUT);
        }
        config.application_name(application_name);
        let connector = tls::connector(&tls).map_err(|reason| ConfigError::InvalidSecret {
            var: if mode_var == "DATABASE_URL" {
                "DATABASE_URL".into()
            } else {
                "DB_SSLMODE / DB_SSLROOTCERT".into()
            },
            reason,
        })?;
        let target = describe(&config);
        Ok(ConnectionSettings {
            config,
            target,
            tls,
            connector,
        })
    }

    /// Settings for a known config (tests, throwaway clusters): TLS when the server offers it.
    pub fn from_config(config: tokio_postgres::Config) -> ConnectionSettings {
        let tls = TlsSettings::default();
        // The default settings need no file, so building their connector cannot fail.
        let connector = tls::connector(&tls).unwrap_or_else(|_| unreachable_connector());
        let target = describe(&config);
        ConnectionSettings {
            config,
            target,
            tls,
            connector,
        }
    }

    pub fn tls(&self) -> &TlsSettings {
        &self.tls
    }

    /// Sets a server parameter for every session (`-c name=value` in the startup packet), so it
    /// costs no round trip and `RESET` returns to it.
    pub fn set_session_parameter(&mut self, name: &str, value: &str) {
        let existing = self.config.get_options().unwrap_or_default().to_string();
        let option = format!("-c {name}={value}");
        let options = if existing.is_empty() {
            option
        } else {
            format!("{existing} {option}")
        };
        self.config.options(&options);
    }

    /// The same server and credentials, another database.
    pub fn with_dbname(&self, dbname: &str) -> ConnectionSettings {
        let mut config = self.config.clone();
        config.dbname(dbname);
        ConnectionSettings {
            target: describe(&config),
            config,
            tls: self.tls.clone(),
            connector: self.connector.clone(),
        }
    }

    pub fn dbname(&self) -> Option<&str> {
        self.config.get_dbname()
    }

    pub fn user(&self) -> Option<&str> {
        self.config.get_user()
    }

    pub fn config(&self) -> &tokio_postgres::Config {
        &self.config
    }

    pub fn target(&self) -> &str {
        &self.target
    }

    /// A libpq connection string for `psql`, without the password (psql reads `PGPASSWORD`).
    pub fn psql_conninfo(&self) -> String {
        let mut parts = Vec::new();
        if let Some(host) = self.config.get_hosts().first() {
            match host {
                tokio_postgres::config::Host::Tcp(h) => parts.push(format!("host={h}")),
                tokio_postgres::config::Host::Unix(p) => {
                    parts.push(format!("host={}", p.display()))
                }
            }
        }
        if let Some(port) = self.config.get_ports().first() {
            parts.push(format!("port={port}"));
        }
        if let Some(user) = self.config.get_user() {
            parts.push(format!("user={user}"));
        }
        if let Some(db) = self.config.get_dbname() {
            parts.push(format!("dbname={db}"));
        }
        parts.join(" ")
    }
}

#[cold]
fn unreachable_connector() -> Connector {
    panic!("the default TLS settings could not be built")
}

type ParsedUrl = (
    tokio_postgres::Config,
    Option<SslMode>,
    Option<std::path::PathBuf>,
);

/// The URL's connection config, with `sslmode` (all of libpq's names) and `sslrootcert` taken out
/// for the TLS settings, since tokio-postgres knows only some of them.
const DEFAULT_PORT: std::num::NonZeroU16 = match std::num::NonZeroU16::new(5432) {
    Some(p) => p,
    None => std::num::NonZeroU16::MAX,
};

fn parse_database_url(raw: &str) -> Result<ParsedUrl, ConfigError> {
    let invalid = |reason: String| ConfigError::InvalidSecret {
        var: "DATABASE_URL".to_string(),
        reason,
    };
    // url's errors never repeat the input, so the password cannot leak through them.
    let raw = without_empty_host(raw.trim());
    // libpq's several hosts, `host1:5432,host2:5433`, tried in turn: the URL parser takes one,
    // so the list is set aside while the rest is read and put back for the connection's parser.
    let (raw, host_list) = one_host(&raw).map_err(|e| invalid(e.to_string()))?;
    let mut url = url::Url::parse(&raw).map_err(|e| {
        invalid(format!(
            "{e}; expected postgres://user:password@host:port/dbname"
        ))
    })?;
    if !matches!(url.scheme(), "postgres" | "postgresql") {
        return Err(invalid(format!(
            "scheme {:?} is not supported; expected postgres://user:password@host:port/dbname",
            url.scheme()
        )));
    }
    let mut mode = None;
    let mut root = None;
    let mut kept: Vec<(String, String)> = Vec::new();
    for (k, v) in url.query_pairs() {
        match k.as_ref() {
            "sslmode" => mode = Some(v.parse::<SslMode>().map_err(invalid)?),
            "sslrootcert" => root = Some(std::path::PathBuf::from(v.as_ref())),
            _ => kept.push((k.into_owned(), v.into_owned())),
        }
    }
    if kept.is_empty() {
        url.set_query(None);
    } else {
        // Form encoding writes a space as `+`, which the connection-URL parser keeps as a plus
        // (`options=-c%20work_mem%3D8MB` became `-c+work_mem=8MB`). A literal plus is encoded
        // as `%2B` there, so every `+` left is a space.
        let query = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(kept)
            .finish()
            .replace('+', "%20");
        url.set_query(Some(&query));
    }
    let text = match host_list {
        Some(list) => with_hosts(url.as_str(), list),
        None => url.as_str().to_string(),
    };
    let config = tokio_postgres::Config::from_str(&text).map_err(|e| {
        invalid(format!(
            "could not be parsed as a PostgreSQL connection URL{}; expected \
             postgres://user:password@host:port/dbname[?parameter=value&…]",
            url_parse_reason(&e, &url)
        ))
    })?;
    if config.get_ports().contains(&0) {
        return Err(invalid(
            "port 0 is no port; expected postgres://user:password@host:port/dbname with a port from 1 to 65535".to_string(),
        ));
    }
    Ok((config, mode, root))
}

/// What the connection-URL parser found wrong (`: unknown option `foo``, `: invalid value for
/// option `port``), unless it would show the password: its messages name options, never
/// values, but a password in the wrong place could be taken for an option's name.
fn url_parse_reason(e: &tokio_postgres::Error, url: &url::Url) -> String {
    let Some(reason) = std::error::Error::source(e).map(|c| c.to_string()) else {
        return String::new();
    };
    let decoded = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8_lossy()
            .into_owned()
    };
    let mut secrets: Vec<String> = url
        .password()
        .into_iter()
        .flat_map(|p| [p.to_string(), decoded(p)])
        .collect();
    secrets.extend(
        url.query_pairs()
            .filter(|(k, _)| k == "password")
            .map(|(_, v)| v.into_owned()),
    );
    if secrets
        .iter()
        .any(|p| !p.is_empty() && reason.contains(p.as_str()))
    {
        return String::new();
    }
    format!(": {reason}")
}

/// `postgres://user:password@/db?host=/run/postgresql`, which libpq takes (the host in a query
/// parameter, a socket directory), as `postgres:///db?host=…&user=user&password=password`: the
/// URL parser refuses a user with an empty host. Percent-encoding is kept (a `+`, which means
/// itself in the user part and a space in a query, is encoded); anything else is returned as it
/// was.
/// Where a connection URL's hosts are: the span of `url` between its userinfo (if any) and its
/// path or query.
fn host_span(url: &str) -> Option<std::ops::Range<usize>> {
    let start = url.find("://")? + 3;
    let end = url[start..]
        .find(['/', '?'])
        .map_or(url.len(), |e| start + e);
    let hosts = url[start..end]
        .rfind('@')
        .map_or(start, |at| start + at + 1);
    Some(hosts..end)
}

/// `url` with its comma-separated host list cut to the first host, and the list; `url` as it is
/// when it names one host.
fn one_host(url: &str) -> Result<(String, Option<&str>), &'static str> {
    let Some(span) = host_span(url) else {
        return Ok((url.to_string(), None));
    };
    let list = &url[span.clone()];
    if !list.contains(',') {
        return Ok((url.to_string(), None));
    }
    if list.split(',').any(|h| h.trim().is_empty()) {
        return Err("its host list has an empty entry; expected                     postgres://user:password@host1:port1,host2:port2/dbname");
    }
    let first = list.split(',').next().unwrap_or_default();
    Ok((
        format!("{}{first}{}", &url[..span.start], &url[span.end..]),
        Some(list),
    ))
}

/// `url` (one host) with the host list put back in its place.
fn with_hosts(url: &str, list: &str) -> String {
    match host_span(url) {
        Some(span) => format!("{}{list}{}", &url[..span.start], &url[span.end..]),
        None => url.to_string(),
    }
}

fn without_empty_host(raw: &str) -> std::borrow::Cow<'_, str> {
    let Some((scheme, rest)) = raw.split_once("://") else {
        return raw.into();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let Some(userinfo) = authority.strip_suffix('@') else {
        return raw.into();
    };
    if userinfo.contains('@') {
        return raw.into();
    }
    let (user, password) = match userinfo.split_once(':') {
        Some((u, p)) => (u, Some(p)),
        None => (userinfo, None),
    };
    let mut params = vec![format!("user={}", user.replace('+', "%2B"))];
    if let Some(p) = password {
        params.push(format!("password={}", p.replace('+', "%2B")));
    }
    let (path, query) = match tail.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (tail, None),
    };
    let mut out = format!("{scheme}://{path}?");
    if let Some(q) = query.filter(|q| !q.is_empty()) {
        out.push_str(q);
        out.push('&');
    }
    out.push_str(&params.join("&"));
    out.into()
}

/// `DB_HOST` as the connection takes it: an IPv6 address written as in a URL (`[::1]`) loses its
/// brackets, which no resolver would take, and the surrounding blanks go.
fn db_host(raw: &str) -> &str {
    let raw = raw.trim();
    match raw.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(inner) if inner.contains(':') => inner,
        _ => raw,
    }
}

fn describe(config: &tokio_postgres::Config) -> String {
    let port = config.get_ports().first().copied().unwrap_or(5432);
    #[cfg(unix)]
    if let Some(tokio_postgres::config::Host::Unix(dir)) = config.get_hosts().first() {
        // libpq's form for a socket: the directory is a parameter, and the socket file it means
        // is named, since "No such file or directory" alone does not say which file.
        return format!(
            "postgres://{}@/{}?host={} (socket {})",
            config.get_user().unwrap_or("postgres"),
            config.get_dbname().unwrap_or("postgres"),
            dir.display(),
            dir.join(format!(".s.PGSQL.{port}")).display()
        );
    }
    let shown = |host: Option<&tokio_postgres::config::Host>| match host {
        // An IPv6 address goes in brackets, as in a URL: `::1:5432` would not say where the
        // address ends and the port begins.
        Some(tokio_postgres::config::Host::Tcp(h)) if h.contains(':') => format!("[{h}]"),
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "localhost".to_string(),
    };
    let ports = config.get_ports();
    // Several hosts, each with its port (one port given is every host's): all of them, in the
    // order they are tried, as libpq writes them.
    let hosts = match config.get_hosts() {
        [] | [_] => format!("{}:{port}", shown(config.get_hosts().first())),
        many => many
            .iter()
            .enumerate()
            .map(|(i, h)| {
                let p = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
                format!("{}:{p}", shown(Some(h)))
            })
            .collect::<Vec<_>>()
            .join(","),
    };
    format!(
        "postgres://{}@{}/{}",
        config.get_user().unwrap_or("postgres"),
        hosts,
        config.get_dbname().unwrap_or("postgres")
    )
}

/// The PostgreSQL client: a pool that opens connections when first asked for them.
pub struct PostgresClient {
    pool: Pool,
    target: String,
    connector: Connector,
}

/// The tasks that drive open connections, so that [`end_sessions`] can let each one say goodbye.
/// Each task tells whether its session ended cleanly.
static CONNECTION_TASKS: Mutex<Vec<tokio::task::JoinHandle<bool>>> = Mutex::new(Vec::new());

type Connected =
    Result<(tokio_postgres::Client, tokio::task::JoinHandle<()>), tokio_postgres::Error>;

/// Opens the pool's connections. Unlike deadpool's own, it keeps the task that drives each
/// connection to itself: deadpool aborts the task it is handed as soon as the client is dropped,
/// which cuts the socket mid-conversation, so that the server logs "could not receive data from
/// client: Connection reset by peer" for every TLS connection the tool ever opened. A task left
/// running ends by itself once its client is gone: it sends Terminate, then closes TLS and the
/// socket.
struct GracefulConnect {
    tls: Connector,
}

impl deadpool_postgres::Connect for GracefulConnect {
    fn connect(
        &self,
        pg_config: &tokio_postgres::Config,
    ) -> Pin<Box<dyn Future<Output = Connected> + Send + '_>> {
        let tls = self.tls.clone();
        let pg_config = pg_config.clone();
        Box::pin(async move {
            let (client, connection) = pg_config.connect(tls).await?;
            let task = tokio::spawn(async move {
                match connection.await {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::debug!(error = %e, "connection ended with an error");
                        false
                    }
                }
            });
            let mut tasks = CONNECTION_TASKS.lock().unwrap_or_else(|p| p.into_inner());
            tasks.retain(|t| !t.is_finished());
            tasks.push(task);
            // What deadpool will abort: a task with nothing to do.
            Ok((client, tokio::spawn(async {})))
        })
    }
}

/// What [`end_sessions`] saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SessionsEnded {
    /// Ended with Terminate and a clean close (since the last call).
    pub clean: usize,
    /// Ended on an error: the server or the network cut them.
    pub cut: usize,
    /// Still open after the limit: in use, or their server does not answer.
    pub open: usize,
}

/// Waits, at most `limit`, for every connection whose client has been dropped to end its
/// session (Terminate, then the TLS and TCP close). Call it once the work is done and the pools
/// are dropped, before the runtime shuts down: a runtime that shuts down first cuts them off.
/// Connections still open after `limit` are left to that shutdown.
pub async fn end_sessions(limit: Duration) -> SessionsEnded {
    let tasks = std::mem::take(&mut *CONNECTION_TASKS.lock().unwrap_or_else(|p| p.into_inner()));
    let mut seen = SessionsEnded {
        open: tasks.len(),
        ..SessionsEnded::default()
    };
    let all = async {
        for task in tasks {
            match task.await {
                Ok(true) => seen.clean += 1,
                // A task cut off by an earlier runtime's shutdown counts as cut too.
                Ok(false) | Err(_) => seen.cut += 1,
            }
            seen.open -= 1;
        }
    };
    if tokio::time::timeout(limit, all).await.is_err() {
        tracing::debug!(
            open = seen.open,
            "some connections had not ended their sessions at exit"
        );
    }
    seen
}

impl PostgresClient {
    pub fn new(settings: &ConnectionSettings, max_connections: usize) -> Result<Self, DbError> {
        let manager = Manager::from_connect(
            settings.config.clone(),
            GracefulConnect {
                tls: settings.connector.clone(),
            },
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        // tokio-postgres's connect_timeout bounds each TCP connect only: a server (or a stuck
        // pooler, or a black-holed path) that accepts the socket and never answers would hang
        // the handshake for good. The whole of a connection's opening is bounded too.
        let hosts = u32::try_from(settings.config.get_hosts().len().max(1)).unwrap_or(u32::MAX);
        let per_host = settings
            .config
            .get_connect_timeout()
            .copied()
            .unwrap_or(DEFAULT_CONNECT_TIMEOUT);
        let pool = Pool::builder(manager)
            .max_size(max_connections.max(1))
            .runtime(Runtime::Tokio1)
            .create_timeout(Some(
                per_host.saturating_mul(hosts) + per_host.min(Duration::from_secs(5)),
            ))
            .build()
            .map_err(|e| DbError::other(format!("could not build the connection pool: {e}")))?;
        Ok(PostgresClient {
            pool,
            target: settings.target.clone(),
            connector: settings.connector.clone(),
        })
    }
}

/// The factory: picks the client for the configured database. PostgreSQL is the only kind today;
/// the URL scheme has already been checked by [`ConnectionSettings::from_env`].
pub fn client_from_env(
    env: &Env,
    application_name: &str,
    max_connections: usize,
    session_parameters: &[(&str, String)],
) -> Result<(ConnectionSettings, PostgresClient), ConfigError> {
    let mut settings = ConnectionSettings::from_env(env, application_name)?;
    for (name, value) in session_parameters {
        settings.set_session_parameter(name, value);
    }
    let client = PostgresClient::new(&settings, max_connections).map_err(|e| {
        ConfigError::InvalidSecret {
            var: "DATABASE_URL".to_string(),
            reason: e.to_string(),
        }
    })?;
    Ok((settings, client))
}

#[async_trait]
impl DatabaseClient for PostgresClient {
    async fn connection(&self) -> Result<Connection, DbError> {
        self.pool.get().await.map_err(|err| match err {
            deadpool_postgres::PoolError::Backend(e) => DbError::connect(&e, &self.target),
            deadpool_postgres::PoolError::Timeout(_) => DbError {
                kind: FailureKind::DatabaseTrouble,
                code: None,
                connect: true,
                message: format!(
                    "could not connect to {}: the server accepted the connection but did not \
                     answer in time (connect_timeout, default 10 s, and as long again, at most \
                     5 s, for the handshake)",
                    self.target
                ),
            },
            other => DbError {
                kind: FailureKind::DatabaseTrouble,
                code: None,
                connect: true,
                message: format!("could not get a connection to {}: {other}", self.target),
            },
        })
    }

    fn target(&self) -> &str {
        &self.target
    }

    fn tls(&self) -> Connector {
        self.connector.clone()
    }

    fn close_idle(&self) {
        // The idle connections are handed back and dropped, which ends their sessions.
        drop(self.pool.retain(|_, _| false));
    }
}

/// What a failure says about the database: the circuit breaker counts only trouble.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The database is in trouble: connection lost or refused, too many connections, out of
    /// memory or disk, shutting down, a timeout.
    DatabaseTrouble,
    /// The statement's own fault (syntax, missing column, division by zero): the database is fine.
    OwnError,
}

/// Classifies by SQLSTATE; an error without one (I/O, closed connection) is trouble.
pub fn classify(err: &tokio_postgres::Error) -> FailureKind {
    match err.code() {
        None => FailureKind::DatabaseTrouble,
        Some(code) => classify_sqlstate(code.code()),
    }
}

pub fn classify_sqlstate(code: &str) -> FailureKind {
    // The query's own doing, though in classes that otherwise mean trouble: a file it names
    // that does not exist or already does (`pg_read_file`), a temp_file_limit it went over.
    if matches!(code, "58P01" | "58P02" | "53400") {
        return FailureKind::OwnError;
    }
    let trouble = code.starts_with("08") // connection exception
        || code.starts_with("53") // insufficient resources: disk full, out of memory, too many connections
        || code.starts_with("58") // system error (I/O)
        || code.starts_with("XX") // internal error, data corrupted
        || code == SqlState::ADMIN_SHUTDOWN.code()
        || code == SqlState::CRASH_SHUTDOWN.code()
        || code == SqlState::CANNOT_CONNECT_NOW.code()
        || code == SqlState::QUERY_CANCELED.code() // statement_timeout, cancel
        || code == SqlState::LOCK_NOT_AVAILABLE.code() // lock_timeout
        || code == SqlState::IDLE_SESSION_TIMEOUT.code();
    if trouble {
        FailureKind::DatabaseTrouble
    } else {
        FailureKind::OwnError
    }
}

/// A database failure with PostgreSQL's own message, its SQLSTATE and what it says about the server.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct DbError {
    pub kind: FailureKind,
    pub code: Option<String>,
    /// True when it happened while connecting.
    pub connect: bool,
    pub message: String,
}

impl DbError {
    pub fn other(message: String) -> DbError {
        DbError {
            kind: FailureKind::DatabaseTrouble,
            code: None,
            connect: false,
            message,
        }
    }

    fn connect(err: &tokio_postgres::Error, target: &str) -> DbError {
        let mut e = DbError::from(err);
        e.connect = true;
        if e.message.contains("server does not support TLS") {
            // sslmode asks for TLS and the server offers none: a setting to change, not an
            // outage to wait out.
            e.code = Some(TLS_UNSUPPORTED.to_string());
            e.message = format!(
                "could not connect to {target}: the server does not offer TLS, and sslmode \
                 (DATABASE_URL or DB_SSLMODE) requires it; use sslmode=prefer or disable, or \
                 enable ssl on the server"
            );
            return e;
        }
        if e.message.contains("invalid configuration") {
            // The client's own settings fall short of what the server asks (no password for a
            // server that wants one): nothing to wait out.
            e.code = Some(CLIENT_CONFIGURATION.to_string());
            e.message = format!(
                "could not connect to {target}: {}{}",
                e.message,
                if e.message.contains("password missing") {
                    "; the server asks for a password: set it in DATABASE_URL or DB_PASSWORD"
                } else {
                    ""
                }
            );
            return e;
        }
        if certificate_rejected(err) {
            // Not the database being down: retrying will not help, the settings must change.
            e.code = Some(CERTIFICATE_REJECTED.to_string());
            e.message = format!(
                "could not connect to {target}: {}; check sslmode, sslrootcert (DB_SSLROOTCERT) \
                 and the host name the certificate is for",
                e.message
            );
            return e;
        }
        e.message = format!("could not connect to {target}: {}", e.message);
        if target.contains("(socket ") && e.message.contains("No such file or directory") {
            e.message.push_str(
                "; check that the server is running and that this directory is one of its \
                 unix_socket_directories (DB_HOST, or host= in DATABASE_URL)",
            );
        }
        e
    }

    /// Worth trying again, on a new connection when the old one is gone: connection lost,
    /// serialization failure, deadlock, lock timeout, shutdown, too many connections.
    pub fn is_transient(&self) -> bool {
        match self.code.as_deref() {
            None => self.kind == FailureKind::DatabaseTrouble,
            Some(c) => {
                c.starts_with("08")
                    || c == SqlState::T_R_SERIALIZATION_FAILURE.code()
                    || c == SqlState::T_R_DEADLOCK_DETECTED.code()
                    || c == SqlState::LOCK_NOT_AVAILABLE.code()
                    || c == SqlState::ADMIN_SHUTDOWN.code()
                    || c == SqlState::CRASH_SHUTDOWN.code()
                    || c == SqlState::CANNOT_CONNECT_NOW.code()
                    || c == SqlState::TOO_MANY_CONNECTIONS.code()
            }
        }
    }

    /// The connection is unusable after this: closed, broken, or the server ended the session.
    pub fn connection_lost(&self) -> bool {
        match self.code.as_deref() {
            None => true,
            Some(c) => {
                c.starts_with("08")
                    || c == SqlState::ADMIN_SHUTDOWN.code()
                    || c == SqlState::CRASH_SHUTDOWN.code()
                    || c == SqlState::CANNOT_CONNECT_NOW.code()
            }
        }
    }

    /// A connection failure the operator must fix (credentials, database name, a setting in the
    /// URL's `options` the server refuses) rather than retry.
    pub fn is_configuration(&self) -> bool {
        self.code.as_deref().is_some_and(|c| {
            c == CERTIFICATE_REJECTED
                || c == TLS_UNSUPPORTED
                || c == CLIENT_CONFIGURATION
                || c.starts_with("28")
                || c == SqlState::INVALID_CATALOG_NAME.code()
                || c == SqlState::UNDEFINED_OBJECT.code()
                || c == SqlState::INVALID_PARAMETER_VALUE.code()
                || c == SqlState::CANT_CHANGE_RUNTIME_PARAM.code()
        })
    }
}

/// The code a [`DbError`] carries when the server's TLS certificate was refused (not a
/// SQLSTATE: PostgreSQL never saw the session).
pub const CERTIFICATE_REJECTED: &str = "tls-certificate";

/// The code a [`DbError`] carries when the client's settings cannot make the connection the
/// server asks for (a password the server wants and none was given).
pub const CLIENT_CONFIGURATION: &str = "client-configuration";

/// The code a [`DbError`] carries when sslmode requires TLS and the server offers none.
pub const TLS_UNSUPPORTED: &str = "tls-unsupported";

/// Whether connecting failed because the server's certificate did not verify.
fn certificate_rejected(err: &tokio_postgres::Error) -> bool {
    let refused = |e: &rustls::Error| {
        matches!(
            e,
            rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented
        )
    };
    let mut source = std::error::Error::source(err);
    while let Some(s) = source {
        if s.downcast_ref::<rustls::Error>().is_some_and(refused) {
            return true;
        }
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            if io
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                .is_some_and(refused)
            {
                return true;
            }
        }
        source = s.source();
    }
    false
}

impl From<&tokio_postgres::Error> for DbError {
    fn from(err: &tokio_postgres::Error) -> DbError {
        let message = match err.as_db_error() {
            Some(db) => {
                let mut m = format!("{} (SQLSTATE {})", db.message(), db.code().code());
                if let Some(detail) = db.detail() {
                    m.push_str(&format!("; detail: {detail}"));
                }
                if let Some(hint) = db.hint() {
                    m.push_str(&format!("; hint: {hint}"));
                }
                m
            }
            None => {
                // tokio-postgres puts the useful part (e.g. "Connection refused") in the source.
                let mut m = err.to_string();
                let mut source = std::error::Error::source(err);
                while let Some(s) = source {
                    let text = s.to_string();
                    if !m.contains(&text) {
                        m.push_str(": ");
                        m.push_str(&text);
                    }
                    source = s.source();
                }
                m
            }
        };
        DbError {
            kind: classify(err),
            code: err.code().map(|c| c.code().to_string()),
            connect: false,
            message,
        }
    }
}

impl From<tokio_postgres::Error> for DbError {
    fn from(err: tokio_postgres::Error) -> DbError {
        DbError::from(&err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstates_that_mean_trouble() {
        for code in [
            "08006", "08001", "53300", "53200", "53100", "57P01", "57014", "55P03",
        ] {
            assert_eq!(
                classify_sqlstate(code),
                FailureKind::DatabaseTrouble,
                "{code}"
            );
        }
        for code in [
            "42601", "42703", "22012", "42P01", "23505", "58P01", "58P02", "53400",
        ] {
            assert_eq!(classify_sqlstate(code), FailureKind::OwnError, "{code}");
        }
    }

    #[test]
    fn transient_failures_are_the_retryable_ones() {
        let e = |code: Option<&str>, kind| DbError {
            kind,
            code: code.map(str::to_string),
            connect: false,
            message: String::new(),
        };
        for code in ["08006", "40001", "40P01", "55P03", "57P01", "53300"] {
            assert!(
                e(Some(code), classify_sqlstate(code)).is_transient(),
                "{code}"
            );
        }
        assert!(
            e(None, FailureKind::DatabaseTrouble).is_transient(),
            "connection lost"
        );
        for code in ["57014", "42601", "22012", "53100"] {
            assert!(
                !e(Some(code), classify_sqlstate(code)).is_transient(),
                "{code}"
            );
        }
    }

    #[test]
    fn url_options_keep_their_spaces_and_pluses() {
        let (config, _, _) = parse_database_url(
            "postgres://u@h/d?options=-c%20work_mem%3D8MB%20-c%20search_path%3Da%2Bb&sslmode=disable",
        )
        .unwrap();
        assert_eq!(
            config.get_options(),
            Some("-c work_mem=8MB -c search_path=a+b")
        );
    }

    #[test]
    fn url_wins_and_password_is_never_described() {
        let env = Env::from_pairs([
            (
                "DATABASE_URL",
                "postgres://alice:s3cret@db.example:6543/reports",
            ),
            ("DB_HOST", "ignored"),
        ]);
        let s = ConnectionSettings::from_env(&env, "t").unwrap();
        assert_eq!(s.target(), "postgres://alice@db.example:6543/reports");
        assert!(!format!("{s:?}").contains("s3cret"));
        assert!(!s.psql_conninfo().contains("s3cret"));
    }

    #[test]
    fn an_ipv6_host_is_described_in_brackets() {
        for (pairs, want) in [
            (
                vec![("DATABASE_URL", "postgres://bob@[::1]:6543/reports")],
                "postgres://bob@[::1]:6543/reports",
            ),
            (
                vec![("DB_HOST", "fd00::5"), ("DB_USER", "bob"), ("DB_NAME", "r")],
                "postgres://bob@[fd00::5]:5432/r",
            ),
        ] {
            let s = ConnectionSettings::from_env(&Env::from_pairs(pairs), "t").unwrap();
            assert_eq!(s.target(), want);
        }
    }

    #[test]
    fn sslmode_and_root_certificate_come_from_the_url_or_the_environment() {
        let env = Env::from_pairs([(
            "DATABASE_URL",
            "postgres://u@h/d?sslmode=require&application_name=x",
        )]);
        let s = ConnectionSettings::from_env(&env, "t").unwrap();
        assert_eq!(s.tls().mode, SslMode::Require);
        let env = Env::from_pairs([("DB_SSLMODE", "disable")]);
        assert_eq!(
            ConnectionSettings::from_env(&env, "t").unwrap().tls().mode,
            SslMode::Disable
        );
        let env = Env::from_pairs([("DB_SSLMODE", "sometimes")]);
        assert!(ConnectionSettings::from_env(&env, "t")
            .unwrap_err()
            .to_string()
            .contains("DB_SSLMODE"));
        let env = Env::from_pairs([(
            "DATABASE_URL",
            "postgres://u:pw9secret@h/d?sslmode=verify-full",
        )]);
        let err = ConnectionSettings::from_env(&env, "t")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("sslrootcert") && !err.contains("pw9secret"),
            "{err}"
        );
        let env = Env::from_pairs([(
            "DATABASE_URL",
            "postgres://u@h/d?sslmode=verify-ca&sslrootcert=/nonexistent/ca.pem",
        )]);
        let err = ConnectionSettings::from_env(&env, "t")
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/ca.pem"), "{err}");
    }

    #[test]
    fn a_url_with_a_user_and_no_host_takes_its_host_from_the_query_as_libpq_does() {
        let (config, _, _) =
            parse_database_url("postgres://al+ice:p%40ss+w@/reports?host=/run/postgresql").unwrap();
        assert_eq!(config.get_user(), Some("al+ice"));
        assert_eq!(config.get_password(), Some(&b"p@ss+w"[..]));
        assert_eq!(config.get_dbname(), Some("reports"));
        assert_eq!(
            config.get_hosts(),
            [tokio_postgres::config::Host::Unix("/run/postgresql".into())]
        );
        let (config, _, _) = parse_database_url("postgresql://bob@").unwrap();
        assert_eq!(config.get_user(), Some("bob"));
        assert!(config.get_hosts().is_empty());
    }

    #[test]
    fn an_empty_database_url_with_no_db_variables_is_a_configuration_error() {
        for blank in ["", "  "] {
            let err =
                ConnectionSettings::from_env(&Env::from_pairs([("DATABASE_URL", blank)]), "t")
                    .unwrap_err()
                    .to_string();
            assert!(
                err.starts_with("DATABASE_URL=") && err.contains("set but empty"),
                "{err}"
            );
        }
        // With DB_* set, an empty DATABASE_URL is unset, as the tool this one replaces read it.
        let settings = ConnectionSettings::from_env(
            &Env::from_pairs([("DATABASE_URL", ""), ("DB_NAME", "reports")]),
            "t",
        )
        .unwrap();
        assert_eq!(settings.config.get_dbname(), Some("reports"));
        // Unset, the defaults apply.
        let settings =
            ConnectionSettings::from_env(&Env::from_pairs([("DB_PASSWORD", "")]), "t").unwrap();
        assert_eq!(settings.config.get_dbname(), Some("postgres"));
    }

    #[test]
    fn port_zero_is_a_configuration_error() {
        for env in [
            Env::from_pairs([("DB_PORT", "0")]),
            Env::from_pairs([("DATABASE_URL", "postgres://u@h:0/d")]),
        ] {
            let err = ConnectionSettings::from_env(&env, "t")
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("DB_PORT") || err.contains("DATABASE_URL"),
                "{err}"
            );
        }
    }

    #[test]
    fn db_vars_are_used_without_url() {
        let env = Env::from_pairs([("DB_HOST", "h"), ("DB_PORT", "7777"), ("DB_NAME", "d")]);
        let s = ConnectionSettings::from_env(&env, "t").unwrap();
        assert_eq!(s.target(), "postgres://postgres@h:7777/d");
    }

    #[test]
    fn malformed_url_names_the_variable_and_hides_the_password() {
        for bad in [
            "mysql://u:pw9secret@h/d",
            "not a url pw9secret",
            "postgres://u:pw9secret@h:99999/d",
        ] {
            let env = Env::from_pairs([("DATABASE_URL", bad)]);
            let err = ConnectionSettings::from_env(&env, "t")
                .unwrap_err()
                .to_string();
            assert!(err.contains("DATABASE_URL"), "{err}");
            assert!(!err.contains("pw9secret"), "{err}");
        }
        let env = Env::from_pairs([("DB_PORT", "many")]);
        let err = ConnectionSettings::from_env(&env, "t")
            .unwrap_err()
            .to_string();
        assert!(err.contains("DB_PORT"), "{err}");
    }

    #[test]
    fn a_url_parameter_the_client_does_not_know_is_named_never_a_password() {
        let url_error = |url: &str| {
            let env = Env::from_pairs([("DATABASE_URL", url)]);
            ConnectionSettings::from_env(&env, "t")
                .unwrap_err()
                .to_string()
        };
        let err = url_error("postgres://u:pw9secret@h/d?connect_timout=5");
        assert!(err.contains("unknown option `connect_timout`"), "{err}");
        assert!(!err.contains("pw9secret"), "{err}");
        let err = url_error("postgres://u:pw9secret@h/d?connect_timeout=soon");
        assert!(
            err.contains("invalid value for option `connect_timeout`"),
            "{err}"
        );
        // A password pasted where a parameter's name goes is not repeated.
        for url in [
            "postgres://u:pw9%2Fsecret@h/d?pw9/secret=1",
            "postgres://u@h/d?password=pw9secret&pw9secret=1",
        ] {
            let err = url_error(url);
            assert!(err.contains("DATABASE_URL"), "{err}");
            assert!(!err.contains("pw9"), "{err}");
        }
    }

    #[test]
    fn a_bracketed_ipv6_db_host_is_taken_without_its_brackets() {
        let env = Env::from_pairs([("DB_HOST", " [::1] "), ("DB_NAME", "r")]);
        let s = ConnectionSettings::from_env(&env, "t").unwrap();
        assert_eq!(s.target(), "postgres://postgres@[::1]:5432/r");
        assert_eq!(
            s.config().get_hosts(),
            [tokio_postgres::config::Host::Tcp("::1".into())]
        );
    }

    /// libpq's form of several hosts in one URL, each with its port or the default, tried in
    /// turn; the query's settings still apply.
    #[test]
    fn a_url_takes_several_hosts_separated_by_commas() {
        use tokio_postgres::config::Host;
        let env = Env::from_pairs([(
            "DATABASE_URL",
            "postgres://u:p%40ss@db1:5433,[::1]:5434,db3/r?sslmode=disable&target_session_attrs=read-write",
        )]);
        let s = ConnectionSettings::from_env(&env, "t").unwrap();
        assert_eq!(
            s.config().get_hosts(),
            [
                Host::Tcp("db1".into()),
                Host::Tcp("::1".into()),
                Host::Tcp("db3".into())
            ]
        );
        assert_eq!(s.config().get_ports(), [5433, 5434, 5432]);
        assert_eq!(s.target(), "postgres://u@db1:5433,[::1]:5434,db3:5432/r");
        assert_eq!(s.config().get_dbname(), Some("r"));
        assert_eq!(s.config().get_password(), Some(&b"p@ss"[..]));
        for bad in [
            "postgres://u@db1,,db2/r",
            "postgres://u@db1:0,db2/r",
            "postgres://u@db1,/r",
        ] {
            let env = Env::from_pairs([("DATABASE_URL", bad)]);
            assert!(ConnectionSettings::from_env(&env, "t").is_err(), "{bad}");
        }
    }

    #[test]
    fn db_host_takes_several_hosts_separated_by_commas() {
        use tokio_postgres::config::Host;
        let env = Env::from_pairs([("DB_HOST", "db1, [::1]"), ("DB_NAME", "r")]);
        let s = ConnectionSettings::from_env(&env, "t").unwrap();
        assert_eq!(
            s.config().get_hosts(),
            [Host::Tcp("db1".into()), Host::Tcp("::1".into())]
        );
        let env = Env::from_pairs([("DB_HOST", "db1,,db2")]);
        assert!(ConnectionSettings::from_env(&env, "t")
            .unwrap_err()
            .to_string()
            .contains("none empty"));
    }

    #[cfg(unix)]
    #[test]
    fn a_socket_directory_is_described_with_the_socket_file() {
        let env = Env::from_pairs([
            ("DB_HOST", "/run/pg"),
            ("DB_PORT", "5433"),
            ("DB_NAME", "r"),
        ]);
        let s = ConnectionSettings::from_env(&env, "t").unwrap();
        assert_eq!(
            s.target(),
            "postgres://postgres@/r?host=/run/pg (socket /run/pg/.s.PGSQL.5433)"
        );
    }
}
