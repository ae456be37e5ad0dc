//! All SQL lives here: manifests, materialized views, history and run status, migrations, the
//! demo data. Repositories run statements and map rows; they never decide policy.
//!
//! Identifiers are quoted by [`ident`]; values are always bound parameters. The only literal
//! ever embedded in SQL is a view's comment (DDL takes no parameters), escaped by
//! `postgres_protocol::escape::escape_literal` at the one marked spot in `views.rs`.

pub mod demo;
pub mod history;
pub mod locks;
pub mod manifests;
pub mod migrations;
pub mod reports;
pub mod snapshots;
pub mod statements;
pub mod views;

use std::collections::HashMap;

use async_trait::async_trait;
use deadpool_postgres::ClientWrapper;
use etl_core::db::{Connection, DatabaseClient};
use etl_core::DbError;

pub use history::{
    HistoryId, HistoryRoutes, Outcome, RunCounts, StatementDelta, StatementFigures, ViewRecord,
};
pub use locks::{LockHolder, LockHolders, Recovery, ViewLock};
pub use manifests::{ManifestRow, ReportType};
pub use reports::{RunRow, StatusRow, ViewRunRow};
pub use snapshots::{Sample, Snapshot, Snapshots};
pub use statements::StatementTotals;
pub use views::{Built, Managed, ViewState, ViewStats};

/// A relation name as two parts; always quoted when put into SQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rel<'a> {
    pub schema: &'a str,
    pub name: &'a str,
}

impl Rel<'_> {
    /// `"schema"."name"`, each part quoted.
    pub fn quoted(&self) -> String {
        format!("{}.{}", ident(self.schema), ident(self.name))
    }
    pub fn key(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }
}

/// Prepares each statement on this connection (or finds it prepared), all sent at once. A
/// session that sends statements together prepares them first: one still being prepared would
/// go out after those sent behind it.
pub async fn prepare_all(client: &ClientWrapper, statements: &[&str]) -> Result<(), DbError> {
    futures_util::future::try_join_all(statements.iter().map(|s| client.prepare_cached(s))).await?;
    Ok(())
}

/// Quotes an identifier (doubling embedded quotes), so no name can escape into SQL.
pub fn ident(name: &str) -> String {
    postgres_protocol::escape::escape_identifier(name)
}

/// The tables a job reads before it changes anything: the manifests, and the views' status.
const READ_TABLES: [&str; 5] = [
    manifests::TABLES[0],
    manifests::TABLES[1],
    manifests::TABLES[2],
    "seeder_job_status",
    "seeder_canned_job_status",
];

/// Everything a run does on one connection. The PostgreSQL implementation is [`PgSession`];
/// processors take `Box<dyn Session>` so unit tests hand in fakes.
#[async_trait]
pub trait Session: Send {
    /// Applies pending migrations under an advisory lock; returns the names applied.
    async fn migrate(&mut self) -> Result<Vec<String>, DbError>;
    async fn load_manifests(&mut self) -> Result<Vec<ManifestRow>, DbError>;
    /// The catalog state of each named view, in one round trip.
    async fn inspect(&mut self, views: &[Rel<'_>]) -> Result<HashMap<String, ViewState>, DbError>;
    /// Which history/status tables can hold which report type.
    async fn history_routes(&mut self) -> Result<HistoryRoutes, DbError>;
    /// Median of each view's recent successful durations (ms), for scheduling.
    async fn recent_durations(&mut self, keys: &[String]) -> Result<HashMap<String, u64>, DbError>;
    /// (reader, read) pairs of materialized views from `pg_depend`, by `schema.name`, for the
    /// readers in `readers` only.
    async fn view_dependencies(
        &mut self,
        readers: &[Rel<'_>],
    ) -> Result<Vec<(String, String)>, DbError>;
    /// The schemas this session resolves unqualified names in, in order.
    async fn search_path(&mut self) -> Result<Vec<String>, DbError>;
    /// When each view last succeeded (seconds since the epoch).
    async fn last_successes(&mut self, keys: &[String]) -> Result<HashMap<String, f64>, DbError>;
    /// Each view's current state, in `keys` order.
    async fn view_status(&mut self, keys: &[String]) -> Result<Vec<StatusRow>, DbError>;
    /// The newest runs first.
    async fn runs(&mut self, limit: i64) -> Result<Vec<RunRow>, DbError>;
    /// A run's views, those still running included; `None` when no such run is recorded.
    async fn run_views(&mut self, run_id: &str) -> Result<Option<Vec<ViewRunRow>>, DbError>;
    async fn table_history(&mut self, table: &str, limit: i64) -> Result<Vec<ViewRunRow>, DbError>;
    /// The newest run's id, or none.
    async fn last_run_id(&mut self) -> Result<Option<String>, DbError>;
    /// The views that ended `error` or `skipped` in `run_id`.
    async fn unfinished_views(&mut self, run_id: &str) -> Result<history::RetryViews, DbError>;

    async fn finish_run(
        &mut self,
        run_id: &str,
        status: &str,
        counts: RunCounts,
    ) -> Result<(), DbError>;
    /// When each of `keys` last succeeded, then the run's end row; PostgreSQL sessions send both
    /// at once. Each result is its own.
    async fn end_run(
        &mut self,
        run_id: &str,
        status: &str,
        counts: RunCounts,
        keys: &[String],
    ) -> (Result<HashMap<String, f64>, DbError>, Result<(), DbError>) {
        let last = self.last_successes(keys).await;
        (last, self.finish_run(run_id, status, counts).await)
    }
    /// Inserts the `running` history row.
    async fn record_start(
        &mut self,
        routes: HistoryRoutes,
        run_id: &str,
        view: &ViewRecord,
    ) -> Result<HistoryId, DbError>;
    /// Completes the history row (or inserts a complete one when `history` is `None`), upserts
    /// the job status and the per-run detail, in one statement.
    async fn record_finish(
        &mut self,
        routes: HistoryRoutes,
        run_id: &str,
        view: &ViewRecord,
        history: Option<HistoryId>,
        outcome: &Outcome,
    ) -> Result<(), DbError>;

    /// `CREATE MATERIALIZED VIEW … AS <query>` and its hash, in one transaction; returns rows.
    async fn create_view(
        &mut self,
        view: Rel<'_>,
        create_schema: bool,
        query: &str,
        hash: &str,
        run_id: &str,
    ) -> Result<u64, DbError>;
    async fn refresh_view(&mut self, view: Rel<'_>, concurrently: bool) -> Result<(), DbError>;
    /// Builds `query` under `temp` beside `view` and copies what `view` carries (indexes,
    /// grants, comments, owner, settings), leaving nothing under `temp` when it fails.
    async fn build_view(
        &mut self,
        view: Rel<'_>,
        temp: &str,
        query: &str,
    ) -> Result<Built, DbError>;
    /// Swaps `temp` (from [`Session::build_view`]) for `view` and drops the old view in one short
    /// transaction under `lock_timeout_ms`, recreating the managed views that read it (from
    /// `managed`); returns those. `temp` stays when it fails.
    #[allow(clippy::too_many_arguments)]
    async fn swap_view(
        &mut self,
        view: Rel<'_>,
        temp: &str,
        built: &Built,
        hash: &str,
        run_id: &str,
        lock_timeout_ms: u64,
        managed: &Managed,
    ) -> Result<Vec<String>, DbError>;
    /// Drops a rebuild's temporary view, if it is there (a failure is logged, not returned: the
    /// next run's recovery drops what is left).
    async fn drop_temporary(&mut self, temp: Rel<'_>);
    /// Holds the run's own lock for the life of this session (so a later run can tell it is alive).
    async fn lock_run(&mut self, run_id: &str) -> Result<(), DbError>;
    /// Marks dead runs' `running` rows abandoned and drops leftover temporary views.
    async fn recover(&mut self, own_run: Option<&str>) -> Result<Recovery, DbError>;
    /// Takes the view's lock for this session (waiting for it when `wait`).
    async fn lock_view(&mut self, key: &str, run_id: &str, wait: bool)
        -> Result<ViewLock, DbError>;
    async fn unlock_view(&mut self, key: &str) -> Result<(), DbError>;
    /// Overrides this session's statement and lock timeouts (None: back to the run's settings).
    async fn set_timeouts(
        &mut self,
        statement_ms: Option<u64>,
        lock_ms: Option<u64>,
    ) -> Result<(), DbError>;
    /// Active queries on the server, this session's excluded.
    async fn active_queries(&mut self) -> Result<i64, DbError>;
    /// The other sessions holding a lock on `view` (with `dependents`, on the views reading it
    /// too) that conflicts with ACCESS EXCLUSIVE (`exclusive_access`) or else EXCLUSIVE, to
    /// name them when a refresh or a swap gave up waiting. Sessions that cannot tell say none.
    async fn lock_holders(
        &mut self,
        _view: Rel<'_>,
        _dependents: bool,
        _exclusive_access: bool,
    ) -> Result<LockHolders, DbError> {
        Ok(LockHolders::default())
    }
    /// The other sessions holding a lock that keeps readers out of the manifest tables (or the
    /// status tables `status` reads), to name them when reading those timed out. Sessions that
    /// cannot tell say none.
    async fn manifest_lock_holders(&mut self) -> Result<LockHolders, DbError> {
        Ok(LockHolders::default())
    }
    /// What rebuilding this view would recreate with it, or why it would stop (a dependent the
    /// swap would have to drop that no usable manifest manages, or a function or policy bound
    /// to what it drops).
    async fn rebuild_check(
        &mut self,
        view: Rel<'_>,
        oid: u32,
        managed: &Managed,
    ) -> Result<views::RebuildCheck, DbError>;
    /// Whether pg_stat_statements can be read here: `Err` says why not.
    async fn statements_available(&mut self) -> Result<(), String>;
    /// This session's server process id.
    async fn backend_pid(&mut self) -> Result<i32, DbError>;
    /// The pg_stat_statements counters of backend `pid`'s last statement, now and as last
    /// recorded for `table`.
    async fn last_statement(
        &mut self,
        pid: i32,
        table: &str,
    ) -> Result<Option<(StatementTotals, Option<StatementTotals>)>, DbError>;
    /// A handle that cancels this session's running statement on the server.
    fn canceller(&self) -> Option<Canceller>;
    /// `ANALYZE`, then the view's row estimate and size.
    async fn analyze_view(&mut self, view: Rel<'_>) -> Result<ViewStats, DbError>;
    /// Refreshes the view, then (only when that succeeded) `ANALYZE`, then its row estimate and
    /// size. PostgreSQL sessions send it all at once, refresh and `ANALYZE` as one transaction.
    async fn refresh_and_analyze(
        &mut self,
        view: Rel<'_>,
        concurrently: bool,
    ) -> Result<ViewStats, DbError> {
        self.refresh_view(view, concurrently).await?;
        self.analyze_view(view).await
    }

    /// Everything a run reads of the catalog before it starts: the states of `views`, the
    /// materialized views they read (from `pg_depend`), the search path and the recent durations
    /// of `keys`. PostgreSQL sessions send the four queries at once. An error says which read failed.
    async fn read_catalog(
        &mut self,
        views: &[Rel<'_>],
        keys: &[String],
    ) -> Result<CatalogRead, CatalogError> {
        Ok(CatalogRead {
            states: self
                .inspect(views)
                .await
                .map_err(CatalogPart::Views.failed())?,
            dependencies: self
                .view_dependencies(views)
                .await
                .map_err(CatalogPart::Dependencies.failed())?,
            search_path: self
                .search_path()
                .await
                .map_err(CatalogPart::SearchPath.failed())?,
            on_search_path: Default::default(),
            recent_ms: self
                .recent_durations(keys)
                .await
                .map_err(CatalogPart::RecentDurations.failed())?,
        })
    }

    /// Takes the run's lock for the life of this session, then records the run (its `running`
    /// row, with the views it selected), so the row of a live run is never found without its
    /// lock.
    async fn start_run(
        &mut self,
        run_id: &str,
        job: &str,
        arguments: &str,
        selected: &[String],
    ) -> Result<(), DbError>;

    /// Ends this session's connection instead of handing it back for reuse (the default just
    /// drops it, which hands it back).
    fn close(self: Box<Self>) {}

    /// Gets a new connection ready for views: prepares the statements every view runs, so a
    /// worker's first view does not wait for them, and has them planned once per connection
    /// rather than at every execution.
    async fn warm(&mut self, _routes: HistoryRoutes) -> Result<(), DbError> {
        Ok(())
    }

    /// A view's `running` row (unless `history` already names it), then its lock. PostgreSQL
    /// sessions send both at once: one round trip where there would be two. If the row cannot
    /// be written, the lock is not kept.
    async fn begin_view(
        &mut self,
        routes: HistoryRoutes,
        run_id: &str,
        view: &ViewRecord,
        history: &mut Option<HistoryId>,
        key: &str,
        wait: bool,
    ) -> Result<ViewLock, BeginError> {
        begin_view_in_turn(self, routes, run_id, view, history, key, wait).await
    }

    /// A view's outcome, then its lock (`unlock`: the view's key) given back; PostgreSQL sessions
    /// send both at once. Each result is its own: the lock goes even when the outcome cannot be written.
    async fn end_view(
        &mut self,
        routes: HistoryRoutes,
        run_id: &str,
        view: &ViewRecord,
        history: Option<HistoryId>,
        outcome: &Outcome,
        unlock: Option<&str>,
    ) -> (Result<(), DbError>, Result<(), DbError>) {
        let written = self
            .record_finish(routes, run_id, view, history, outcome)
            .await;
        let unlocked = match unlock {
            Some(key) => self.unlock_view(key).await,
            None => Ok(()),
        };
        (written, unlocked)
    }
}

/// [`Session::begin_view`] one statement after the other: the row (unless known), then the lock.
async fn begin_view_in_turn<S: Session + ?Sized>(
    session: &mut S,
    routes: HistoryRoutes,
    run_id: &str,
    view: &ViewRecord,
    history: &mut Option<HistoryId>,
    key: &str,
    wait: bool,
) -> Result<ViewLock, BeginError> {
    if history.is_none() {
        *history = Some(
            session
                .record_start(routes, run_id, view)
                .await
                .map_err(BeginError::Start)?,
        );
    }
    session
        .lock_view(key, run_id, wait)
        .await
        .map_err(BeginError::Lock)
}

/// What [`Session::read_catalog`] reads.
#[derive(Debug, Clone, Default)]
pub struct CatalogRead {
    /// Each view's state, by `schema.name`.
    pub states: HashMap<String, ViewState>,
    /// (reader, read) pairs of materialized views from `pg_depend`.
    pub dependencies: Vec<(String, String)>,
    /// The schemas the session resolves unqualified names in, in order.
    pub search_path: Vec<String>,
    /// Relations in those schemas named as a managed view is (`schema.name`).
    pub on_search_path: std::collections::HashSet<String>,
    /// The median of each key's recent successful durations (ms); absent when none succeeded.
    pub recent_ms: HashMap<String, u64>,
}

/// Which read of [`Session::read_catalog`] failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CatalogPart {
    Views,
    Dependencies,
    SearchPath,
    RecentDurations,
}

impl CatalogPart {
    /// Names this read as the one that failed with the error it is given.
    fn failed(self) -> impl FnOnce(DbError) -> CatalogError {
        move |error| CatalogError { what: self, error }
    }
}

#[derive(Debug)]
pub struct CatalogError {
    pub what: CatalogPart,
    pub error: DbError,
}

/// Which half of [`Session::begin_view`] failed.
#[derive(Debug)]
pub enum BeginError {
    Start(DbError),
    Lock(DbError),
}

/// Opens sessions: one per worker.
#[async_trait]
pub trait Store: Send + Sync {
    async fn session(&self) -> Result<Box<dyn Session>, DbError>;
    /// A session for the release-snapshot jobs.
    async fn snapshots(&self) -> Result<Box<dyn Snapshots>, DbError>;
    /// Closes the sessions that wait idle for reuse.
    fn close_idle(&self) {}
}

/// Sessions on connections from a [`DatabaseClient`].
pub struct PgStore<C: DatabaseClient> {
    client: C,
}

impl<C: DatabaseClient> PgStore<C> {
    pub fn new(client: C) -> Self {
        PgStore { client }
    }
}

#[async_trait]
impl<C: DatabaseClient + 'static> Store for PgStore<C> {
    async fn session(&self) -> Result<Box<dyn Session>, DbError> {
        Ok(Box::new(PgSession {
            conn: self.client.connection().await?,
            tls: Some(self.client.tls()),
            holds_run: None,
        }))
    }
    async fn snapshots(&self) -> Result<Box<dyn Snapshots>, DbError> {
        let conn = self.client.connection().await?;
        // A capture reads whole views: one killed meanwhile stops on the server too.
        views::check_client(&conn).await?;
        Ok(Box::new(PgSession {
            conn,
            tls: Some(self.client.tls()),
            holds_run: None,
        }))
    }
    fn close_idle(&self) {
        self.client.close_idle();
    }
}

pub struct PgSession {
    conn: Connection,
    /// For cancel requests, which open a connection of their own.
    tls: Option<etl_core::tls::Connector>,
    /// The run whose lock this session shares (taken with its first view).
    holds_run: Option<String>,
}

/// Cancels a session's running statement through PostgreSQL's cancel protocol.
pub struct Canceller(
    tokio_postgres::CancelToken,
    Option<etl_core::tls::Connector>,
);

impl Canceller {
    pub async fn cancel(&self) {
        let sent = match &self.1 {
            Some(tls) => self.0.cancel_query(tls.clone()).await,
            None => self.0.cancel_query(tokio_postgres::NoTls).await,
        };
        if let Err(e) = sent {
            tracing::warn!(error = %e, "could not cancel a running statement on the server");
        }
    }
}

impl PgSession {
    /// Takes the run's shared lock on this connection (once).
    async fn share_run(&mut self, run_id: &str) {
        let taken = locks::share_run(&self.conn, run_id).await;
        self.note_shared(run_id, taken);
    }

    fn note_shared(&mut self, run_id: &str, taken: Result<(), DbError>) {
        match taken {
            Ok(()) => self.holds_run = Some(run_id.to_string()),
            // The view's own statements, sent with it, report what is wrong with the connection.
            Err(e) => tracing::debug!(error = %e, "could not share the run's lock"),
        }
    }

    pub fn from_connection(conn: Connection) -> PgSession {
        PgSession {
            conn,
            tls: None,
            holds_run: None,
        }
    }

    /// For repository functions outside the [`Session`] trait (the demo's).
    pub fn client(&self) -> &tokio_postgres::Client {
        &self.conn
    }
}

#[async_trait]
impl Session for PgSession {
    async fn migrate(&mut self) -> Result<Vec<String>, DbError> {
        // A job's first flight. With the migrations check goes the setting that has the server
        // find a killed client within seconds, so this session's waits (for the migrations'
        // lock, for a manifest table someone holds, with SEEDER_LOCK_TIMEOUT=0 for as long as
        // it takes) end with the tool as the workers' statements do: no round trip of its own.
        let (checked, done) = tokio::join!(
            views::check_client(&self.conn),
            migrations::all_applied(&self.conn)
        );
        if let Err(e) = checked {
            tracing::debug!(error = %e, "could not set client_connection_check_interval");
        }
        if done {
            return Ok(Vec::new());
        }
        migrations::apply(&mut self.conn).await
    }
    async fn load_manifests(&mut self) -> Result<Vec<ManifestRow>, DbError> {
        manifests::load(&self.conn).await
    }
    async fn inspect(&mut self, views: &[Rel<'_>]) -> Result<HashMap<String, ViewState>, DbError> {
        views::inspect(&self.conn, views).await
    }
    async fn history_routes(&mut self) -> Result<HistoryRoutes, DbError> {
        history::routes(&self.conn).await
    }
    async fn recent_durations(&mut self, keys: &[String]) -> Result<HashMap<String, u64>, DbError> {
        history::recent_durations(&self.conn, keys).await
    }
    async fn view_dependencies(
        &mut self,
        readers: &[Rel<'_>],
    ) -> Result<Vec<(String, String)>, DbError> {
        views::dependencies(&self.conn, readers).await
    }
    async fn search_path(&mut self) -> Result<Vec<String>, DbError> {
        Ok(views::search_path(&self.conn, &[]).await?.0)
    }
    async fn last_run_id(&mut self) -> Result<Option<String>, DbError> {
        history::last_run_id(&self.conn).await
    }
    async fn last_successes(&mut self, keys: &[String]) -> Result<HashMap<String, f64>, DbError> {
        history::last_successes(&self.conn, keys).await
    }
    async fn view_status(&mut self, keys: &[String]) -> Result<Vec<StatusRow>, DbError> {
        reports::status(&self.conn, keys).await
    }
    async fn runs(&mut self, limit: i64) -> Result<Vec<RunRow>, DbError> {
        reports::runs(&self.conn, limit).await
    }
    async fn run_views(&mut self, run_id: &str) -> Result<Option<Vec<ViewRunRow>>, DbError> {
        reports::run_views(&self.conn, run_id).await
    }
    async fn table_history(&mut self, table: &str, limit: i64) -> Result<Vec<ViewRunRow>, DbError> {
        reports::table_history(&self.conn, table, limit).await
    }
    async fn unfinished_views(&mut self, run_id: &str) -> Result<history::RetryViews, DbError> {
        history::unfinished_views(&self.conn, run_id).await
    }
    async fn finish_run(
        &mut self,
        run_id: &str,
        status: &str,
        counts: RunCounts,
    ) -> Result<(), DbError> {
        history::finish_run(&self.conn, run_id, status, counts).await
    }
    async fn end_run(
        &mut self,
        run_id: &str,
        status: &str,
        counts: RunCounts,
        keys: &[String],
    ) -> (Result<HashMap<String, f64>, DbError>, Result<(), DbError>) {
        tokio::join!(
            history::last_successes(&self.conn, keys),
            history::finish_run(&self.conn, run_id, status, counts)
        )
    }
    async fn record_start(
        &mut self,
        routes: HistoryRoutes,
        run_id: &str,
        view: &ViewRecord,
    ) -> Result<HistoryId, DbError> {
        history::record_start(&self.conn, routes, run_id, view).await
    }
    async fn record_finish(
        &mut self,
        routes: HistoryRoutes,
        run_id: &str,
        view: &ViewRecord,
        history: Option<HistoryId>,
        outcome: &Outcome,
    ) -> Result<(), DbError> {
        history::record_finish(&self.conn, routes, run_id, view, history, outcome).await
    }
    async fn create_view(
        &mut self,
        view: Rel<'_>,
        create_schema: bool,
        query: &str,
        hash: &str,
        run_id: &str,
    ) -> Result<u64, DbError> {
        views::create(&self.conn, view, create_schema, query, hash, run_id).await
    }
    async fn refresh_view(&mut self, view: Rel<'_>, concurrently: bool) -> Result<(), DbError> {
        views::refresh(&self.conn, view, concurrently).await
    }
    async fn build_view(
        &mut self,
        view: Rel<'_>,
        temp: &str,
        query: &str,
    ) -> Result<Built, DbError> {
        views::build(&mut self.conn, view, temp, query).await
    }
    async fn swap_view(
        &mut self,
        view: Rel<'_>,
        temp: &str,
        built: &Built,
        hash: &str,
        run_id: &str,
        lock_timeout_ms: u64,
        managed: &Managed,
    ) -> Result<Vec<String>, DbError> {
        views::swap(
            &mut self.conn,
            view,
            temp,
            built,
            hash,
            run_id,
            lock_timeout_ms,
            managed,
        )
        .await
    }
    async fn drop_temporary(&mut self, temp: Rel<'_>) {
        views::drop_temporary(&self.conn, temp).await
    }
    async fn lock_run(&mut self, run_id: &str) -> Result<(), DbError> {
        locks::lock_run(&self.conn, run_id).await
    }
    async fn read_catalog(
        &mut self,
        views: &[Rel<'_>],
        keys: &[String],
    ) -> Result<CatalogRead, CatalogError> {
        let conn = &self.conn;
        let mut names: Vec<&str> = views.iter().map(|v| v.name).collect();
        names.sort_unstable();
        names.dedup();
        let (states, dependencies, search_path, recent_ms) = tokio::join!(
            views::inspect(conn, views),
            views::dependencies(conn, views),
            views::search_path(conn, &names),
            history::recent_durations(conn, keys),
        );
        let (search_path, on_search_path) =
            search_path.map_err(CatalogPart::SearchPath.failed())?;
        Ok(CatalogRead {
            states: states.map_err(CatalogPart::Views.failed())?,
            dependencies: dependencies.map_err(CatalogPart::Dependencies.failed())?,
            search_path,
            on_search_path: on_search_path.into_iter().collect(),
            recent_ms: recent_ms.map_err(CatalogPart::RecentDurations.failed())?,
        })
    }
    async fn start_run(
        &mut self,
        run_id: &str,
        job: &str,
        arguments: &str,
        selected: &[String],
    ) -> Result<(), DbError> {
        // One statement, the lock first: no other run's recovery can find the row of a run
        // whose lock is free, and a cancelled wait for the lock writes no row.
        history::lock_and_begin_run(&self.conn, run_id, job, arguments, selected).await
    }
    async fn recover(&mut self, own_run: Option<&str>) -> Result<Recovery, DbError> {
        locks::recover(&self.conn, own_run).await
    }
    async fn lock_view(
        &mut self,
        key: &str,
        run_id: &str,
        wait: bool,
    ) -> Result<ViewLock, DbError> {
        if wait {
            locks::wait_lock_view(&self.conn, key, run_id).await
        } else {
            locks::try_lock_view(&self.conn, key, run_id).await
        }
    }
    async fn unlock_view(&mut self, key: &str) -> Result<(), DbError> {
        locks::unlock_view(&self.conn, key).await
    }
    fn close(self: Box<Self>) {
        // Out of the pool: dropping the client ends the session (PostgreSQL hears Terminate).
        drop(deadpool_postgres::Object::take(self.conn));
    }
    async fn warm(&mut self, routes: HistoryRoutes) -> Result<(), DbError> {
        let (a, b, c, d) = tokio::join!(
            views::tune_session(&self.conn),
            history::prepare_view_statements(&self.conn, routes),
            locks::prepare_view_statements(&self.conn),
            views::prepare_view_statements(&self.conn),
        );
        a.and(b).and(c).and(d)
    }
    async fn begin_view(
        &mut self,
        routes: HistoryRoutes,
        run_id: &str,
        view: &ViewRecord,
        history: &mut Option<HistoryId>,
        key: &str,
        wait: bool,
    ) -> Result<ViewLock, BeginError> {
        // A connection the run did not open ahead (one opened after another was lost, or after
        // one failed to open at the start) has nothing prepared yet: it is set up as those are,
        // so its session too finds a killed client within seconds. Its own statements report
        // anything wrong with it.
        if self.conn.statement_cache.size() == 0 {
            if let Err(e) = self.warm(routes).await {
                tracing::debug!(error = %e, "could not set up a new connection ahead of its view");
            }
        }
        // Every connection doing the run's work shares the run's lock, so that another run's
        // recovery never takes this one for dead while any of them is alive (the run's own
        // connection may be lost, to a terminated backend say, while its workers go on).
        let share = self.holds_run.as_deref() != Some(run_id);
        if wait || history.is_some() {
            if share {
                self.share_run(run_id).await;
            }
            // Waiting takes several statements; a known row needs none.
            return begin_view_in_turn(self, routes, run_id, view, history, key, wait).await;
        }
        // Sent together and run in order: the row is in before the lock is taken. Both
        // statements are prepared first (found in the connection's cache after its first view),
        // so neither is still being prepared when the other is sent. A failure here is the
        // start's own and is reported by it.
        let (_, _) = tokio::join!(
            history::prepare_view_pair(&self.conn, routes, view.report_type, true),
            locks::prepare_view_statements(&self.conn)
        );
        let (shared, started, locked) = tokio::join!(
            async {
                if share {
                    Some(locks::share_run(&self.conn, run_id).await)
                } else {
                    None
                }
            },
            history::record_start(&self.conn, routes, run_id, view),
            locks::try_lock_view(&self.conn, key, run_id)
        );
        if let Some(taken) = shared {
            self.note_shared(run_id, taken);
        }
        match started {
            Ok(id) => {
                *history = Some(id);
                locked.map_err(BeginError::Lock)
            }
            Err(e) => {
                if matches!(locked, Ok(ViewLock::Acquired)) {
                    if let Err(unlock) = locks::unlock_view(&self.conn, key).await {
                        tracing::warn!(view = %key, error = %unlock, "could not release the view's lock; it goes with the connection");
                    }
                }
                Err(BeginError::Start(e))
            }
        }
    }
    async fn end_view(
        &mut self,
        routes: HistoryRoutes,
        run_id: &str,
        view: &ViewRecord,
        history: Option<HistoryId>,
        outcome: &Outcome,
        unlock: Option<&str>,
    ) -> (Result<(), DbError>, Result<(), DbError>) {
        let conn = &self.conn;
        // Prepared first, as in begin_view, so the outcome is written before the lock goes.
        let (_, _) = tokio::join!(
            history::prepare_view_pair(conn, routes, view.report_type, history.is_some()),
            locks::prepare_view_statements(conn)
        );
        let unlocked = async {
            match unlock {
                Some(key) => locks::unlock_view(conn, key).await,
                None => Ok(()),
            }
        };
        tokio::join!(
            history::record_finish(conn, routes, run_id, view, history, outcome),
            unlocked
        )
    }
    async fn set_timeouts(
        &mut self,
        statement_ms: Option<u64>,
        lock_ms: Option<u64>,
    ) -> Result<(), DbError> {
        views::set_timeouts(&self.conn, statement_ms, lock_ms).await
    }
    async fn active_queries(&mut self) -> Result<i64, DbError> {
        views::active_queries(&self.conn).await
    }
    async fn lock_holders(
        &mut self,
        view: Rel<'_>,
        dependents: bool,
        exclusive_access: bool,
    ) -> Result<LockHolders, DbError> {
        locks::holders(&self.conn, view, dependents, exclusive_access).await
    }
    async fn manifest_lock_holders(&mut self) -> Result<LockHolders, DbError> {
        // A reader waits only for an ACCESS EXCLUSIVE lock.
        locks::table_holders(
            &self.conn,
            "reporting",
            &READ_TABLES,
            &["AccessExclusiveLock"],
        )
        .await
    }
    async fn rebuild_check(
        &mut self,
        view: Rel<'_>,
        oid: u32,
        managed: &Managed,
    ) -> Result<views::RebuildCheck, DbError> {
        views::rebuild_check(&**self.conn, view, oid, managed).await
    }
    async fn statements_available(&mut self) -> Result<(), String> {
        statements::available(&self.conn).await
    }
    async fn backend_pid(&mut self) -> Result<i32, DbError> {
        statements::backend_pid(&self.conn).await
    }
    async fn last_statement(
        &mut self,
        pid: i32,
        table: &str,
    ) -> Result<Option<(StatementTotals, Option<StatementTotals>)>, DbError> {
        statements::last_statement(&self.conn, pid, table).await
    }
    fn canceller(&self) -> Option<Canceller> {
        Some(Canceller(self.conn.cancel_token(), self.tls.clone()))
    }
    async fn analyze_view(&mut self, view: Rel<'_>) -> Result<ViewStats, DbError> {
        views::analyze(&self.conn, view).await
    }
    async fn refresh_and_analyze(
        &mut self,
        view: Rel<'_>,
        concurrently: bool,
    ) -> Result<ViewStats, DbError> {
        views::refresh_and_analyze(&self.conn, view, concurrently).await
    }
}
