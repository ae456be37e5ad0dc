//! A run: plan, order by dependencies, execute with at most `max_workers` refreshes in flight
//! under the circuit breaker, record every view's outcome, report.

use std::collections::{HashMap, HashSet};
use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etl_core::breaker::{Admission, CircuitBreaker, Clock, Outcome as BreakerOutcome, Ticket};
use etl_core::executor::{run_graph, simulate, Graph, Start};
use etl_core::job::Interrupt;
use etl_core::{DbError, FailureKind};
use tracing::Instrument;

use super::graph;
use super::planner::{
    plan, PlanError, PlannedView, Scope, Selection, Timeouts, ViewName, ViewPlan,
};
use super::refresh::{decide, perform, Action};
use super::select::{self, SelectError};
use crate::repositories::{
    BeginError, Built, CatalogPart, CatalogRead, HistoryId, HistoryRoutes, Managed, Outcome, Rel,
    RunCounts, Session, Store, ViewLock, ViewRecord,
};

/// What a run is allowed to do.
#[derive(Debug, Clone)]
pub struct RunSettings {
    pub max_workers: NonZeroUsize,
    pub max_failures: NonZeroU32,
    pub reset_after: Duration,
    pub refresh_concurrently: bool,
    /// Per statement, 0 off (`SEEDER_STATEMENT_TIMEOUT`); a manifest may override it.
    pub statement_timeout_ms: u64,
    /// For DDL, refreshes and the swap (`SEEDER_LOCK_TIMEOUT`); a manifest may override it.
    pub lock_timeout_ms: u64,
    /// Transient failures are tried again this many times (`SEEDER_MAX_RETRIES`).
    pub max_retries: u32,
    /// The first backoff; each retry doubles it, plus up to as much again of jitter.
    pub retry_base: Duration,
    /// Wait for a view another run is refreshing instead of skipping it.
    pub wait_for_locks: bool,
    /// The old tool's throttle: between batches of `batch_size` starts wait `start_delay`, and
    /// before every batch wait while the server has at least `max_db_active_queries` active
    /// queries (0 off).
    pub batch_size: NonZeroUsize,
    pub start_delay: Duration,
    pub max_db_active_queries: u64,
}

/// One view's result, as the summary and the exit code see it.
#[derive(Debug, Clone, PartialEq)]
pub struct ViewResult {
    pub key: String,
    pub record: ViewRecord,
    pub outcome: Outcome,
    /// Skipped because another run refreshed it since this run started: up to date all the
    /// same (its readers run, and it does not fail the run).
    pub up_to_date: bool,
}

#[derive(Debug, Clone)]
pub struct RunReport {
    pub run_id: String,
    pub results: Vec<ViewResult>,
    pub wall: Duration,
    /// When each view last succeeded (seconds since the epoch), this run included.
    pub last_success: HashMap<String, f64>,
    /// When the run ended (seconds since the epoch).
    pub finished_at: f64,
    /// Bookkeeping writes that failed (the outcome is still in `results`).
    pub bookkeeping_errors: Vec<String>,
}

impl RunReport {
    pub fn counts(&self) -> RunCounts {
        let n = |s: &str| {
            self.results
                .iter()
                .filter(|r| r.outcome.status == s)
                .count() as i32
        };
        RunCounts {
            views: self.results.len() as i32,
            succeeded: n("success"),
            failed: n("error"),
            skipped: n("skipped"),
        }
    }

    /// Views stopped by a signal (not among `counts`: the old run table has no column for them).
    pub fn cancelled(&self) -> usize {
        self.results
            .iter()
            .filter(|r| r.outcome.status == "cancelled")
            .count()
    }

    /// Every selected view is up to date and recorded.
    pub fn all_succeeded(&self) -> bool {
        self.bookkeeping_errors.is_empty()
            && self
                .results
                .iter()
                .all(|r| r.outcome.status == "success" || r.up_to_date)
    }
}

/// Why a run did not happen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RunError {
    /// The database could not be reached at start: nothing ran.
    #[error("{0}; nothing ran, try again when the database is reachable")]
    Unavailable(DbError),
    /// Credentials or database name refused: fix the configuration.
    #[error("{0}; check DATABASE_URL or DB_HOST/DB_PORT/DB_NAME/DB_USER/DB_PASSWORD")]
    Configuration(DbError),
    #[error(transparent)]
    Selection(#[from] PlanError),
    #[error(transparent)]
    Select(#[from] SelectError),
    #[error("no run is recorded yet: nothing to retry")]
    NoRunToRetry,
    #[error("interrupted by {0} before any view started: nothing was changed")]
    Interrupted(&'static str),
    #[error("no run {0} is recorded; `reporting-seeder run history` lists the runs")]
    UnknownRun(String),
    #[error(
        "run {0} is still going: its views are its own; retry it once it is over \
         (`reporting-seeder run history` shows when)"
    )]
    StillRunning(String),
    #[error("{context}: {error}")]
    Database {
        context: &'static str,
        error: DbError,
    },
}

fn at(context: &'static str) -> impl FnOnce(DbError) -> RunError {
    move |error| RunError::Database { context, error }
}

/// Opens the first session of a job: tells "unreachable" from "misconfigured". A server that
/// takes its time to answer (or never does) is no reason to outlive a signal: nothing has started
/// yet, and the job ends at once. A connection that is there together with the signal is taken
/// (not a coin toss): the job then notices the signal itself.
pub async fn connect(
    store: &dyn Store,
    interrupt: &Interrupt,
) -> Result<Box<dyn Session>, RunError> {
    tokio::select! {
        biased;
        session = store.session() => session.map_err(|e| {
            if e.is_configuration() {
                RunError::Configuration(e)
            } else {
                RunError::Unavailable(e)
            }
        }),
        _ = interrupt.cancelled() => Err(RunError::Interrupted(interrupt.signal_name())),
    }
}

/// [`connect`] for the jobs other than a run (status, plan, history, migrate, the snapshots),
/// whose every statement may be cut short: with the guard of [`cancel_on_interrupt`], to keep
/// for as long as the session is used.
pub async fn connect_job(
    store: &dyn Store,
    interrupt: &Interrupt,
) -> Result<(Box<dyn Session>, Option<CancelGuard>), RunError> {
    let session = connect(store, interrupt).await?;
    let cancel = cancel_on_interrupt(session.as_ref(), interrupt);
    Ok((session, cancel))
}

/// Cancels the session's statements on the server once the job is interrupted, and again every
/// 100 ms (a statement sent after a cancel included) for as long as the guard lives: a job
/// waiting on a lock someone holds (a manifest or control table) ends at once on a signal, as
/// the notice says. Not for a run, whose bookkeeping goes on after a signal. `None` when the
/// session cannot cancel (a fake).
fn cancel_on_interrupt(session: &dyn Session, interrupt: &Interrupt) -> Option<CancelGuard> {
    let canceller = session.canceller()?;
    let interrupt = interrupt.clone();
    Some(CancelGuard(tokio::spawn(async move {
        interrupt.cancelled().await;
        loop {
            canceller.cancel().await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })))
}

/// Stops [`cancel_on_interrupt`]'s cancels when dropped.
pub struct CancelGuard(tokio::task::JoinHandle<()>);

impl Drop for CancelGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What a run with a selection would do, before anything changes.
#[derive(Debug, Clone, Default)]
pub struct Prepared {
    /// The selected views, in manifest order.
    pub views: Vec<PlannedView>,
    /// Dependencies among them (the scheduler's order).
    pub graph: Graph,
    /// Each view's managed upstreams, selected or not, by key.
    pub upstream: Vec<Vec<String>>,
    /// What each view needs, or why it is an error without running.
    pub actions: Vec<Result<Action, String>>,
    /// For each view to rebuild: the views reading it (selected or not, each after what it
    /// reads), which its swap drops and recreates from their manifests. Empty for the others.
    pub recreates: Vec<Vec<String>>,
    /// Expected duration: the median of recent successful runs, else the median of the others.
    pub expected_ms: Vec<u64>,
    pub expected_known: Vec<bool>,
    /// Every valid managed view, selected or not: key → (query, hash); a rebuild recreates the
    /// managed views that read the rebuilt one from these.
    pub managed: Managed,
    /// One message per dependency cycle, naming every view in it.
    pub cycles: Vec<String>,
    /// The run a `retry` repeats.
    pub retried_run: Option<String>,
}

impl Prepared {
    /// The wall time the schedule predicts with `workers`, from the expected durations.
    pub fn expected_wall_ms(&self, workers: NonZeroUsize) -> u64 {
        // A view that will not run (invalid, or reading one that is) takes no time.
        let blocked = self.blocked_by();
        let ms: Vec<u64> = (0..self.views.len())
            .map(|i| {
                if self.actions[i].is_err() || blocked[i].is_some() {
                    0
                } else {
                    self.expected_ms[i]
                }
            })
            .collect();
        simulate(&self.graph, &ms, workers)
    }

    /// Each view's priority: its expected duration plus the longest path below it.
    pub fn priority(&self) -> Vec<u64> {
        self.graph.remaining_path(&self.expected_ms)
    }

    /// For each view: the selected view whose rebuild will recreate it first, if any (a rebuild
    /// recreates the views reading the rebuilt one, however indirectly, so of two rebuilds one
    /// of which reads the other, the upstream one does it). `None` for every other view.
    pub fn rebuilt_with(&self) -> Vec<Option<String>> {
        // Each recreated view → the rebuilds that recreate it, in manifest order.
        let mut by: HashMap<&str, Vec<usize>> = HashMap::new();
        for (j, readers) in self.recreates.iter().enumerate() {
            for r in readers {
                by.entry(r.as_str()).or_default().push(j);
            }
        }
        self.views
            .iter()
            .map(|v| {
                let by = by.get(v.key.as_str())?;
                // The one no other of them recreates: it runs first.
                by.iter()
                    .find(|&&j| {
                        !by.iter()
                            .any(|&k| self.recreates[k].contains(&self.views[j].key))
                    })
                    .map(|&j| self.views[j].key.clone())
            })
            .collect()
    }

    /// For each view that could run: the selected upstream, however indirect, that cannot (an
    /// invalid manifest, a cycle), so the run will skip this view. `None` for every other view.
    pub fn blocked_by(&self) -> Vec<Option<String>> {
        self.through_upstream(|a| a.is_err(), |a| a.is_ok())
    }

    /// For each view that is not a `root`: the first root among its selected upstreams reached
    /// through views that `pass` it on (the view itself must pass), if any.
    fn through_upstream(
        &self,
        root: impl Fn(&Result<Action, String>) -> bool,
        pass: impl Fn(&Result<Action, String>) -> bool,
    ) -> Vec<Option<String>> {
        let index: HashMap<&str, usize> = self
            .views
            .iter()
            .enumerate()
            .map(|(i, v)| (v.key.as_str(), i))
            .collect();
        // Some(found) once view i is known: Some(key) when it is a root or reaches one.
        let mut known: Vec<Option<Option<String>>> = vec![None; self.views.len()];
        let mut on_path = HashSet::new();
        fn reach(
            p: &Prepared,
            index: &HashMap<&str, usize>,
            root: &dyn Fn(&Result<Action, String>) -> bool,
            pass: &dyn Fn(&Result<Action, String>) -> bool,
            known: &mut [Option<Option<String>>],
            on_path: &mut HashSet<usize>,
            i: usize,
        ) -> Option<String> {
            if let Some(k) = &known[i] {
                return k.clone();
            }
            let found = if root(&p.actions[i]) {
                Some(p.views[i].key.clone())
            } else if pass(&p.actions[i]) && on_path.insert(i) {
                let found = p.upstream[i].iter().find_map(|u| {
                    let &j = index.get(u.as_str())?;
                    reach(p, index, root, pass, known, on_path, j)
                });
                on_path.remove(&i);
                found
            } else {
                None
            };
            known[i] = Some(found.clone());
            found
        }
        (0..self.views.len())
            .map(|i| {
                if root(&self.actions[i]) {
                    None
                } else {
                    reach(self, &index, &root, &pass, &mut known, &mut on_path, i)
                }
            })
            .collect()
    }
}

/// Reads manifests and catalog, builds the dependency graph, applies the selection and decides
/// each view's action. Changes nothing. `on_count` hears, once, how many views the run will hold
/// as soon as that is known, before the catalog is read (a run opens its workers' connections
/// then).
pub async fn prepare(
    session: &mut dyn Session,
    selection: &Selection,
    settings: &RunSettings,
    on_count: impl FnOnce(usize) + Send,
) -> Result<Prepared, RunError> {
    let refresh_concurrently = settings.refresh_concurrently;
    let mut on_count = Some(on_count);
    let mut selection = selection.clone();
    let mut retried_run = None;
    if let Scope::Retry(run_id) = &selection.scope {
        let run_id = match run_id {
            Some(id) => id.clone(),
            None => session
                .last_run_id()
                .await
                .map_err(at("finding the last run"))?
                .ok_or(RunError::NoRunToRetry)?,
        };
        use crate::repositories::history::RetryViews;
        let keys = match session
            .unfinished_views(&run_id)
            .await
            .map_err(at("reading the run to retry"))?
        {
            RetryViews::Views(keys) => keys,
            RetryViews::Unknown => return Err(RunError::UnknownRun(run_id)),
            RetryViews::StillRunning => return Err(RunError::StillRunning(run_id)),
        };
        retried_run = Some(run_id);
        selection.scope = Scope::Tables(keys);
    }
    let rows = match session.load_manifests().await {
        Ok(rows) => rows,
        Err(mut e) => {
            name_manifest_lock_holders(&mut e, session, settings).await;
            return Err(at("reading the manifest tables")(e));
        }
    };
    let planned = plan(&rows, &selection)?;
    // Every enabled view is planned (the dependency graph needs them all), but only those in
    // the job's scope (its table, agency or report type) are in the run. Without
    // --select/--exclude those are known now; with them, the count waits for the graph.
    let narrowed = !(selection.select.is_empty() && selection.exclude.is_empty());
    let scoped = || {
        (planned.views.iter().zip(&planned.in_scope))
            .filter(|&(_, &in_scope)| in_scope)
            .map(|(v, _)| v)
    };
    if !narrowed {
        if let Some(tell) = on_count.take() {
            tell(scoped().count());
        }
    }

    let reads: Vec<_> = planned
        .views
        .iter()
        .map(|v| match &v.plan {
            ViewPlan::Valid { reads, .. } => reads.clone(),
            ViewPlan::Invalid(_) => Vec::new(),
        })
        .collect();
    // The views' state decides what a run does to each of its views, and tells the graph which
    // catalog dependencies still hold (those of views built from their current query). Without
    // --select/--exclude the run's views are known: a refresh_table out of ten thousand
    // manifests inspects one view, not all of them.
    // A view whose query is invalid but whose name is not is inspected too: the view that
    // exists is what its readers read, and what it reads links it into the graph.
    let inspected: Vec<std::borrow::Cow<'_, ViewName>> = (planned.views.iter())
        .zip(&planned.in_scope)
        .filter(|&(_, &in_scope)| narrowed || in_scope)
        .filter_map(|(p, _)| match &p.plan {
            ViewPlan::Valid { name, .. } => Some(std::borrow::Cow::Borrowed(name)),
            ViewPlan::Invalid(_) => ViewName::parse(&p.key).ok().map(std::borrow::Cow::Owned),
        })
        .collect();
    let names: Vec<Rel<'_>> = inspected
        .iter()
        .map(|name| Rel {
            schema: name.schema(),
            name: name.name(),
        })
        .collect();
    // Without --select/--exclude the run is the scope's views, so their recent durations go
    // with the other reads: one round trip for all four. With them, they are read once the
    // selection is known, for the selected views only (a narrow selection out of thousands of
    // manifests reads a handful).
    let durations_for: Vec<String> = if narrowed {
        Vec::new()
    } else {
        scoped().map(|v| v.key.clone()).collect()
    };
    let CatalogRead {
        states,
        dependencies,
        search_path,
        on_search_path,
        recent_ms: recent,
    } = session
        .read_catalog(&names, &durations_for)
        .await
        .map_err(|e| {
            at(match e.what {
                CatalogPart::Views => "inspecting the views",
                CatalogPart::Dependencies => "reading dependencies between views",
                CatalogPart::SearchPath => "reading the search path",
                CatalogPart::RecentDurations => "reading recent durations",
            })(e.error)
        })?;
    let hashes: HashMap<&str, &str> = planned
        .views
        .iter()
        .filter_map(|v| match &v.plan {
            ViewPlan::Valid { hash, .. } => Some((v.key.as_str(), hash.as_str())),
            ViewPlan::Invalid(_) => None,
        })
        .collect();
    // The catalog's dependencies hold only for views built from their current query, and for
    // views whose manifest is invalid: their query says nothing, and the view that exists is
    // what they read, so `X+` and `+X` go on through them (and their readers wait for them).
    let catalog: Vec<(String, String)> = dependencies
        .into_iter()
        .filter(|(reader, _)| match hashes.get(reader.as_str()) {
            Some(&hash) => states.get(reader).and_then(|s| s.stored_hash.as_deref()) == Some(hash),
            None => true,
        })
        .collect();
    let deps = graph::build(
        &planned.views,
        &reads,
        &catalog,
        &search_path,
        &on_search_path,
    );
    let mask = match select::apply(
        &planned,
        &deps,
        &selection.select,
        &selection.exclude,
        selection.report_type.only(),
    ) {
        // What a retried run left undone need not include the selected views: nothing to do.
        Err(SelectError::LeavesNothing) if retried_run.is_some() => {
            vec![false; planned.views.len()]
        }
        other => other?,
    };
    let keep: Vec<usize> = (0..planned.views.len()).filter(|&i| mask[i]).collect();
    if let Some(tell) = on_count.take() {
        tell(keep.len());
    }

    // Only the cycles the run touches: one among views it does not select is no news to it
    // (and logged at ERROR on every run of another agency, it would drown the run's own).
    let mut cycle_of: HashMap<usize, usize> = HashMap::new();
    let cycles: Vec<String> = deps
        .cycles
        .iter()
        .filter(|members| members.iter().any(|&m| mask[m]))
        .enumerate()
        .map(|(c, members)| {
            for &m in members {
                cycle_of.insert(m, c);
            }
            let names: Vec<&str> = members.iter().map(|&m| planned.views[m].key.as_str()).collect();
            match names.as_slice() {
                [one] => format!(
                    "{one} reads itself, so it cannot be built; change its query"
                ),
                _ => format!(
                    "dependency cycle between {}: each reads another, so none can be built first; change one of their queries",
                    names.join(", ")
                ),
            }
        })
        .collect();

    let mut managed = Managed::default();
    for v in &planned.views {
        match &v.plan {
            ViewPlan::Valid { query, hash, .. } => {
                managed
                    .views
                    .insert(v.key.clone(), (query.clone(), hash.clone()));
                managed.records.insert(v.key.clone(), v.record.clone());
                if let Some(ms) = v.timeouts.statement_ms {
                    managed.statement_ms.insert(v.key.clone(), ms);
                }
            }
            ViewPlan::Invalid(why) => {
                let why = why.lines().next().unwrap_or_default();
                managed
                    .unusable
                    .insert(v.key.clone(), format!("is invalid: {why}"));
            }
        }
    }
    for r in rows.iter().filter(|r| !r.enabled) {
        if let Ok(name) = ViewName::parse(&r.table_name) {
            let key = name.to_string();
            if !managed.views.contains_key(&key) {
                managed
                    .unusable
                    .entry(key)
                    .or_insert_with(|| "is disabled".to_string());
            }
        }
    }
    let graph = deps.restrict(&keep);
    let upstream: Vec<Vec<String>> = keep
        .iter()
        .map(|&i| {
            deps.upstream[i]
                .iter()
                .map(|&u| planned.views[u].key.clone())
                .collect()
        })
        .collect();
    let actions: Vec<Result<Action, String>> = keep
        .iter()
        .map(|&i| {
            let v = &planned.views[i];
            if let Some(&c) = cycle_of.get(&i) {
                return Err(cycles[c].clone());
            }
            match &v.plan {
                ViewPlan::Invalid(reason) => Err(reason.clone()),
                ViewPlan::Valid { hash, .. } => decide(
                    &states.get(&v.key).cloned().unwrap_or_default(),
                    hash,
                    refresh_concurrently,
                    &v.key,
                ),
            }
        })
        .collect();
    // A rebuild that would have to drop a view no usable manifest manages stops at its swap,
    // after building the new view for nothing: found now, it is an error before anything runs
    // (and plan shows it). One catalog read per view to rebuild, for those only.
    //
    // A view built without a recorded hash (by the old tool, or by hand) that cannot be adopted
    // so is refreshed in place instead, as the old tool refreshed it: its definition stays
    // unchecked against the manifest, and each run tries the adoption again.
    let mut actions = actions;
    let mut recreates: Vec<Vec<String>> = vec![Vec::new(); keep.len()];
    for ((slot, &i), recreated) in actions.iter_mut().zip(&keep).zip(&mut recreates) {
        let (Ok(Action::Rebuild { oid, adopt }), ViewPlan::Valid { name, .. }) =
            (&*slot, &planned.views[i].plan)
        else {
            continue;
        };
        let rel = Rel {
            schema: name.schema(),
            name: name.name(),
        };
        let state = states
            .get(&planned.views[i].key)
            .cloned()
            .unwrap_or_default();
        let why = match super::refresh::rebuild_denied(&state, &planned.views[i].key) {
            Some(why) => why,
            None => {
                let check = session
                    .rebuild_check(rel, *oid, &managed)
                    .await
                    .map_err(at("reading what reads the views to rebuild"))?;
                let Some(why) = check.blocker else {
                    *recreated = check.recreates;
                    continue;
                };
                why
            }
        };
        if *adopt {
            tracing::warn!(
                view = %planned.views[i].key,
                reason = %why,
                "built without a recorded query hash (by the old tool or by hand) and not adoptable now: refreshed in place, its definition unchecked against the manifest"
            );
            *slot = Ok(Action::Refresh {
                concurrently: refresh_concurrently && state.has_concurrent_index && state.populated,
            });
        } else {
            *slot = Err(why);
        }
    }
    for &i in &keep {
        let v = &planned.views[i];
        if let ViewPlan::Valid {
            unparsed: Some(why),
            ..
        } = &v.plan
        {
            tracing::info!(
                view = %v.key,
                "the tool's parser does not know this query's syntax ({why}): its tokens were checked instead, and PostgreSQL checks the rest when it builds the view"
            );
        }
    }
    let mut views_by_index: Vec<Option<PlannedView>> =
        planned.views.into_iter().map(Some).collect();
    let views: Vec<PlannedView> = keep
        .iter()
        .filter_map(|&i| views_by_index[i].take())
        .collect();

    let keys: Vec<String> = views.iter().map(|v| v.key.clone()).collect();
    let recent = if narrowed {
        session
            .recent_durations(&keys)
            .await
            .map_err(at("reading recent durations"))?
    } else {
        recent
    };
    let (expected_ms, expected_known) = expected(&keys, &recent);
    Ok(Prepared {
        views,
        graph,
        upstream,
        actions,
        recreates,
        expected_ms,
        expected_known,
        managed,
        cycles,
        retried_run,
    })
}

/// Each view's expected duration: its recent median, or the median of the known ones.
pub fn expected(keys: &[String], recent_ms: &HashMap<String, u64>) -> (Vec<u64>, Vec<bool>) {
    let mut known: Vec<u64> = keys
        .iter()
        .filter_map(|k| recent_ms.get(k).copied())
        .collect();
    known.sort_unstable();
    let n = known.len();
    let median = match n {
        0 => 0,
        _ if n % 2 == 1 => known[n / 2],
        _ => (known[n / 2 - 1] + known[n / 2]) / 2,
    };
    keys.iter()
        .map(|k| match recent_ms.get(k) {
            Some(&ms) => (ms, true),
            None => (median, false),
        })
        .unzip()
}

pub struct RunProcessor<C: Clock + Clone + 'static> {
    store: Arc<dyn Store>,
    settings: RunSettings,
    clock: C,
    interrupt: Interrupt,
    progress: Arc<dyn Progress>,
}

/// Told as a run goes, for a progress display; every method defaults to nothing.
pub trait Progress: Send + Sync {
    /// The run begins: its views (keys) and their expected durations.
    fn begin(&self, _keys: &[String], _expected_ms: &[u64], _workers: usize) {}
    fn started(&self, _view: usize) {}
    /// `view` ended with `status` (`success`, `error`, `skipped`, `cancelled`).
    fn finished(&self, _view: usize, _status: &str) {}
    fn end(&self) {}
}

struct NoProgress;
impl Progress for NoProgress {}

/// Shared by the tasks of one run.
struct Shared<C: Clock> {
    store: Arc<dyn Store>,
    breaker: Mutex<CircuitBreaker<C>>,
    last_trouble: Mutex<Option<String>>,
    /// A probe the breaker let through failed as well: views still waiting are skipped.
    probe_failed: AtomicBool,
    routes: HistoryRoutes,
    run_id: String,
    settings: RunSettings,
    prepared: Prepared,
    /// Views recreated in this run by the rebuild of a view they read.
    rebuilt_with_upstream: Mutex<HashSet<String>>,
    /// Views skipped because another run holds them, and who: their readers' reason says so.
    held_elsewhere: Mutex<HashMap<String, String>>,
    interrupt: Interrupt,
    progress: Arc<dyn Progress>,
    /// A session of its own that reads pg_stat_statements, when the server has it.
    statements: Option<SessionProbe>,
    /// Views started, or settled without starting (skipped, failed before a connection).
    /// Once it reaches the number of views, no view will ask for a connection again.
    settled: AtomicUsize,
    warmed: Warmed,
}

/// The connections opened ahead for the workers. A view waits for one of them rather than open
/// another while they are still coming up: the pool has room for one more (the throttle's
/// checks, the pg_stat_statements reader), and a view that took it would hold a connection more
/// than the workers for the whole run.
struct Warmed {
    /// How many were opened ahead.
    opened: usize,
    /// How many of them are back in the pool, ready (or failed to open).
    ready: tokio::sync::watch::Receiver<usize>,
    /// How many views have asked for their first connection.
    asked: AtomicUsize,
}

impl Warmed {
    /// Returns once the pool holds a connection opened ahead for this view (the k-th view to
    /// ask waits for k of them to be ready), or none is coming any more.
    async fn wait_for_one(&self) {
        let k = self.asked.fetch_add(1, Ordering::SeqCst) + 1;
        let need = k.min(self.opened);
        let mut ready = self.ready.clone();
        // An error: every warming task is done, none is coming.
        let _ = ready.wait_for(|&n| n >= need).await;
    }
}

impl<C: Clock> Shared<C> {
    /// Counts one view's start, or its settling without one.
    fn settle(&self) {
        self.settled.fetch_add(1, Ordering::SeqCst);
    }

    /// Whether every view of the run has started or settled: a connection a view is done with
    /// is then closed rather than kept idle in the pool until the run ends.
    fn all_settled(&self) -> bool {
        self.settled.load(Ordering::SeqCst) >= self.prepared.views.len()
    }
}

/// Reads the last statement's counters of a worker's backend on a session of its own (the
/// worker's own session would see its own query).
struct SessionProbe(tokio::sync::Mutex<Box<dyn Session>>);

#[async_trait::async_trait]
impl super::refresh::StatementProbe for SessionProbe {
    async fn figures(
        &self,
        pid: i32,
        table: &str,
    ) -> Option<crate::repositories::StatementFigures> {
        match self.0.lock().await.last_statement(pid, table).await {
            Ok(Some((now, before))) => Some(super::refresh::per_run(&now, before.as_ref())),
            Ok(None) => None,
            Err(e) => {
                tracing::debug!(error = %e, "could not read pg_stat_statements");
                None
            }
        }
    }
}

/// The old tool's throttle, before start number `started`: before every batch of `batch_size`
/// starts (the first too), wait while the server is busier than `max_db_active_queries`, and
/// between batches wait `start_delay` first.
async fn throttle<C: Clock>(shared: Arc<Shared<C>>, started: usize) {
    let s = &shared.settings;
    if started % s.batch_size.get() != 0 || shared.interrupt.is_interrupted() {
        return;
    }
    if started > 0 && !s.start_delay.is_zero() {
        tokio::select! {
            _ = tokio::time::sleep(s.start_delay) => {}
            _ = shared.interrupt.cancelled() => return,
        }
    }
    if s.max_db_active_queries == 0 {
        return;
    }
    let mut session = match shared.store.session().await {
        Ok(session) => session,
        Err(e) => {
            tracing::warn!(error = %e, "could not check the server's active queries; going on");
            return;
        }
    };
    // Said once per wait, and again each minute it lasts: a check every 500 ms is no reason
    // for a log line every 500 ms.
    let began = std::time::Instant::now();
    let mut said: Option<std::time::Instant> = None;
    loop {
        match session.active_queries().await {
            Ok(n) if u64::try_from(n).unwrap_or(0) < s.max_db_active_queries => {
                if said.is_some() {
                    tracing::info!(
                        waited_s = began.elapsed().as_secs(),
                        "server less busy: starting views again"
                    );
                }
                return;
            }
            Ok(n) => {
                // A busy server is what the throttle protects: the run's connections that wait
                // idle in the pool (opened ahead, or done with their views) are closed rather
                // than held through the wait, at every check (one may come back meanwhile). The
                // views open theirs again once it is over.
                shared.store.close_idle();
                if said.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                    tracing::info!(
                        active = n,
                        limit = s.max_db_active_queries,
                        "server busy: waiting before starting more views (checked every 500 ms)"
                    );
                    said = Some(std::time::Instant::now());
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not check the server's active queries; going on");
                return;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = shared.interrupt.cancelled() => return,
        }
    }
}

/// What a task hands back: the result, and whether its history is already written.
struct TaskResult {
    result: ViewResult,
    history: Option<HistoryId>,
    recorded: bool,
}

impl<C: Clock + Clone + 'static> RunProcessor<C> {
    pub fn new(store: Arc<dyn Store>, settings: RunSettings, clock: C) -> Self {
        RunProcessor {
            store,
            settings,
            clock,
            interrupt: Interrupt::new(),
            progress: Arc::new(NoProgress),
        }
    }

    pub fn with_progress(mut self, progress: Arc<dyn Progress>) -> Self {
        self.progress = progress;
        self
    }

    /// SIGINT/SIGTERM: no new view starts and the running statements are cancelled on the server.
    pub fn with_interrupt(mut self, interrupt: Interrupt) -> Self {
        self.interrupt = interrupt;
        self
    }

    /// Opens `n` sessions at once and gets each ready for views; they go back to the pool for
    /// the workers, and `ready` counts each one back (or failed).
    fn warm(
        &self,
        routes: HistoryRoutes,
        n: usize,
        ready: &Arc<tokio::sync::watch::Sender<usize>>,
    ) -> Vec<tokio::task::JoinHandle<Result<(), DbError>>> {
        (0..n)
            .map(|_| {
                let store = self.store.clone();
                let ready = ready.clone();
                tokio::spawn(async move {
                    // The session is back in the pool before it is counted.
                    let warmed = async { store.session().await?.warm(routes).await }.await;
                    ready.send_modify(|n| *n += 1);
                    warmed
                })
            })
            .collect()
    }

    /// Migrates, prepares `selection`, refreshes every selected view in dependency order and
    /// records each outcome.
    pub async fn run(
        &self,
        job: &str,
        arguments: &str,
        selection: &Selection,
    ) -> Result<RunReport, RunError> {
        let started = Instant::now();
        let mut main = connect(self.store.as_ref(), &self.interrupt).await?;
        let mut warming = Vec::new();
        let workers = self.settings.max_workers.get();
        let (ready, ready_count) = tokio::sync::watch::channel(0usize);
        let ready = Arc::new(ready);
        // The start can wait on the server (the migrations' lock, a manifest table locked by
        // someone else): a signal cancels that on the server too, and the run ends before any
        // view started.
        let canceller = main.canceller();
        let (routes, prepared) = {
            let start = async {
                main.migrate().await.map_err(at("applying migrations"))?;
                let recovery = main
                    .recover(None)
                    .await
                    .map_err(at("recovering from interrupted runs"))?;
                if !recovery.abandoned_runs.is_empty() || !recovery.dropped_temporary.is_empty() {
                    tracing::warn!(
                        runs = ?recovery.abandoned_runs,
                        views = recovery.abandoned_views,
                        temporary_views_dropped = ?recovery.dropped_temporary,
                        "earlier runs ended without recording their outcome: their running views are marked abandoned"
                    );
                }
                let routes = main
                    .history_routes()
                    .await
                    .map_err(at("inspecting the history tables"))?;
                // The workers' connections open (and prepare their statements) while the catalog
                // is read and the run recorded, rather than one after another as the first views
                // start; each goes back to the pool ready, where the next worker to ask takes it.
                let prepared = prepare(main.as_mut(), selection, &self.settings, |views| {
                    warming = self.warm(routes, views.min(workers), &ready)
                })
                .await?;
                Ok::<_, RunError>((routes, prepared))
            };
            tokio::pin!(start);
            // On a signal the statement waiting is cancelled on the server (again every 200 ms,
            // in case the start was between statements) and the start is awaited: it either
            // fails, and the run ends saying nothing was changed, or completes, and the run
            // records every view `cancelled`.
            let mut interrupted = false;
            let started = loop {
                tokio::select! {
                    biased;
                    r = &mut start => break r,
                    _ = self.interrupt.cancelled(), if !interrupted => {
                        interrupted = true;
                        if let Some(c) = &canceller {
                            c.cancel().await;
                        }
                    }
                    _ = tokio::time::sleep(Duration::from_millis(200)), if interrupted => {
                        if let Some(c) = &canceller {
                            c.cancel().await;
                        }
                    }
                }
            };
            match started {
                Ok(started) => started,
                Err(_) if interrupted => {
                    return Err(RunError::Interrupted(self.interrupt.signal_name()))
                }
                Err(e) => return Err(e),
            }
        };
        // Only the warming tasks count from now on: once they are all done, the channel closes
        // and no view waits for it any more.
        drop(ready);
        if let Some(retried) = &prepared.retried_run {
            tracing::info!(retried_run = %retried, views = prepared.views.len(), "retrying the views that failed or were skipped");
        }
        let run_id = uuid::Uuid::new_v4().to_string();
        let keys: Vec<String> = prepared.views.iter().map(|v| v.key.clone()).collect();
        main.start_run(&run_id, job, arguments, &keys)
            .await
            .map_err(at("locking and recording the run"))?;
        tracing::info!(run_id = %run_id, views = prepared.views.len(), workers = self.settings.max_workers.get(), "run started");

        let statements = match main.statements_available().await {
            Ok(()) => match self.store.session().await {
                Ok(s) => Some(SessionProbe(tokio::sync::Mutex::new(s))),
                Err(e) => {
                    tracing::debug!(error = %e, "no session for pg_stat_statements figures");
                    None
                }
            },
            Err(why) => {
                tracing::debug!("{why}: no per-statement figures");
                None
            }
        };
        let priority = prepared.priority();
        let graph = prepared.graph.clone();
        let shared = Arc::new(Shared {
            store: self.store.clone(),
            breaker: Mutex::new(CircuitBreaker::new(
                self.settings.max_failures,
                self.settings.reset_after,
                self.clock.clone(),
            )),
            last_trouble: Mutex::new(None),
            probe_failed: AtomicBool::new(false),
            routes,
            run_id: run_id.clone(),
            settings: self.settings.clone(),
            prepared,
            rebuilt_with_upstream: Mutex::new(HashSet::new()),
            held_elsewhere: Mutex::new(HashMap::new()),
            interrupt: self.interrupt.clone(),
            progress: self.progress.clone(),
            statements,
            settled: AtomicUsize::new(0),
            warmed: Warmed {
                opened: warming.len(),
                ready: ready_count,
                asked: AtomicUsize::new(0),
            },
        });
        self.progress.begin(
            &keys,
            &shared.prepared.expected_ms,
            self.settings.max_workers.get(),
        );
        // At the error level so that the span is there whatever RUST_LOG lets through: a warning
        // at RUST_LOG=warn still carries its run id (and, below, its view and agency).
        let run_span = tracing::error_span!("run", run_id = %run_id);
        // Logged here rather than where they are found (plan prints them instead), so each line
        // carries the run id.
        run_span.in_scope(|| {
            for c in &shared.prepared.cycles {
                tracing::error!("{c}");
            }
        });
        let finished = run_graph(
            &graph,
            priority,
            self.settings.max_workers,
            |i| {
                shared.settle();
                start_view(&shared, i)
            },
            // A view another run has just refreshed is as good as refreshed for its readers.
            |t: &TaskResult| t.result.outcome.status == "success" || t.result.up_to_date,
            |i, failed| {
                shared.settle();
                let outcome = if shared.interrupt.is_interrupted() {
                    not_started(&shared.interrupt)
                } else {
                    let upstream = &shared.prepared.views[failed].key;
                    match lock(&shared.held_elsewhere).get(upstream) {
                        // Nothing failed: the other run is at it (and refreshes its readers).
                        Some(by) => skipped(format!(
                            "upstream {upstream} locked by {by}: its session holds that view now"
                        )),
                        None => skipped(format!("upstream {upstream} failed")),
                    }
                };
                never_ran(&shared, i, outcome)
            },
            |started| throttle(shared.clone(), started),
        )
        .instrument(run_span)
        .await;
        self.progress.end();
        // Long done by now: the workers did not wait for them, they took each connection from
        // the pool as it came back ready.
        for warm in warming {
            // A connection that could not open was reported by the view that asked for it.
            if let Ok(Err(e)) = warm.await {
                tracing::debug!(error = %e, "could not open a worker's connection ahead of time");
            }
        }

        // Whatever a worker could not record (skips, failures to connect, panics) is recorded
        // here, so every view ends with exactly one history row.
        let mut results: Vec<(usize, ViewResult)> = Vec::with_capacity(finished.len());
        let mut bookkeeping_errors = Vec::new();
        for (i, task) in finished {
            let view = &shared.prepared.views[i];
            let task = task.unwrap_or_else(|panic| TaskResult {
                result: ViewResult {
                    key: view.key.clone(),
                    record: view.record.clone(),
                    outcome: failed(0, format!("internal error, please report it: {panic}")),
                    up_to_date: false,
                },
                history: None,
                recorded: false,
            });
            if !task.recorded {
                // Once more on a new connection if the run's own was lost.
                let mut written = Ok(());
                for _ in 0..2 {
                    written = main
                        .record_finish(
                            routes,
                            &run_id,
                            &task.result.record,
                            task.history,
                            &task.result.outcome,
                        )
                        .await;
                    match &written {
                        Err(e)
                            if reopen_if_lost(self.store.as_ref(), &mut main, &run_id, e).await =>
                        {
                            continue
                        }
                        _ => break,
                    }
                }
                if let Err(e) = written {
                    bookkeeping_errors.push(format!(
                        "{}: could not record the outcome: {e}",
                        task.result.key
                    ));
                }
            }
            results.push((i, task.result));
        }
        results.sort_by_key(|(i, _)| *i);
        let keys: Vec<String> = results.iter().map(|(_, r)| r.key.clone()).collect();
        let mut report = RunReport {
            run_id,
            results: results.into_iter().map(|(_, r)| r).collect(),
            wall: started.elapsed(),
            last_success: HashMap::new(),
            finished_at: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or_default(),
            bookkeeping_errors,
        };
        let status = if report.all_succeeded() {
            "success"
        } else if self.interrupt.is_interrupted() {
            "cancelled"
        } else {
            "failed"
        };
        // Both at once; the end row once more on a new connection if the run's own was lost.
        let (mut last_success, mut finished) = main
            .end_run(&report.run_id, status, report.counts(), &keys)
            .await;
        // The run's connection lost (a failover, a terminated backend): both again on a new one,
        // or the metrics would lose every view's last success.
        let lost = [finished.as_ref().err(), last_success.as_ref().err()]
            .into_iter()
            .flatten()
            .find(|e| e.connection_lost())
            .cloned();
        if let Some(e) = lost {
            if reopen_if_lost(self.store.as_ref(), &mut main, &report.run_id, &e).await {
                if finished.is_err() {
                    finished = main
                        .finish_run(&report.run_id, status, report.counts())
                        .await;
                }
                if last_success.is_err() {
                    last_success = main.last_successes(&keys).await;
                }
            }
        }
        report.last_success = last_success.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "could not read when the views last succeeded: the metrics have no last-success series");
            HashMap::new()
        });
        if let Err(e) = finished {
            report
                .bookkeeping_errors
                .push(format!("could not record the end of the run: {e}"));
        }
        let c = report.counts();
        tracing::info!(
            run_id = %report.run_id,
            status,
            views = c.views,
            succeeded = c.succeeded,
            failed = c.failed,
            skipped = c.skipped,
            cancelled = report.cancelled(),
            wall_ms = u64::try_from(report.wall.as_millis()).unwrap_or(u64::MAX),
            "run finished"
        );
        Ok(report)
    }
}

/// When the run's own connection was lost (a server restart, say), opens another and takes the
/// run's lock again, so the bookkeeping at the end still lands.
async fn reopen_if_lost(
    store: &dyn Store,
    main: &mut Box<dyn Session>,
    run_id: &str,
    e: &DbError,
) -> bool {
    if !e.connection_lost() {
        return false;
    }
    match store.session().await {
        Ok(mut session) => {
            if let Err(e) = session.lock_run(run_id).await {
                tracing::warn!(error = %e, "could not take the run's lock again");
            }
            tracing::info!("the run's connection was lost; continuing on a new one");
            *main = session;
            true
        }
        Err(_) => false,
    }
}

/// How much of an error message is kept: PostgreSQL's can echo a whole token of the query
/// (100 KB of it), which would be a 100 KB summary line, log line and history cell.
const ERROR_BYTES: usize = 2000;

fn failed(duration_ms: u64, error: String) -> Outcome {
    Outcome {
        status: "error",
        action: None,
        duration_ms,
        rows: 0,
        bytes: 0,
        error: Some(cut_error(error)),
        attempts: 1,
        statement: None,
    }
}

/// `error`, or its first [`ERROR_BYTES`] (at a character boundary) and how long it was.
fn cut_error(error: String) -> String {
    if error.len() <= ERROR_BYTES {
        return error;
    }
    let mut end = ERROR_BYTES;
    while !error.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… (cut; {} bytes in all)", &error[..end], error.len())
}

fn skipped(reason: String) -> Outcome {
    Outcome {
        status: "skipped",
        action: None,
        duration_ms: 0,
        rows: 0,
        bytes: 0,
        error: Some(reason),
        attempts: 0,
        statement: None,
    }
}

fn not_started(interrupt: &Interrupt) -> Outcome {
    Outcome {
        status: "cancelled",
        attempts: 0,
        ..skipped(format!(
            "not started: the run was interrupted by {}",
            interrupt.signal_name()
        ))
    }
}

/// Says which timeout fired, and where it was set.
fn name_timeout(e: &mut DbError, view: &PlannedView, settings: &RunSettings) {
    name_timeout_of(e, view.timeouts, settings);
}

/// [`name_timeout`] with the manifest's own timeouts given (none before they are set).
pub(crate) fn name_timeout_of(e: &mut DbError, timeouts: Timeouts, settings: &RunSettings) -> bool {
    if e.message.contains("[statement_timeout ") || e.message.contains("[lock_timeout ") {
        return false; // named where it happened (a dependent recreated under its own)
    }
    let (which, ms, from_manifest) =
        if e.code.as_deref() == Some("57014") && e.message.contains("statement timeout") {
            let own = timeouts.statement_ms;
            (
                "statement_timeout",
                own.unwrap_or(settings.statement_timeout_ms),
                own.is_some(),
            )
        } else if e.code.as_deref() == Some("55P03") && e.message.contains("lock timeout") {
            let own = timeouts.lock_ms;
            (
                "lock_timeout",
                own.unwrap_or(settings.lock_timeout_ms),
                own.is_some(),
            )
        } else {
            return false;
        };
    let source = if from_manifest {
        format!("the manifest's {which} column")
    } else if which == "statement_timeout" {
        "SEEDER_STATEMENT_TIMEOUT".to_string()
    } else {
        "SEEDER_LOCK_TIMEOUT".to_string()
    };
    e.message = format!("{} [{which} {ms}ms, from {source}]", e.message);
    true
}

/// A lock timeout reading the manifest tables: who keeps readers out of them (someone altering
/// or truncating one, a `LOCK TABLE` left open), so the operator can go to them. Best effort.
pub async fn name_manifest_lock_holders(
    e: &mut DbError,
    session: &mut dyn Session,
    settings: &RunSettings,
) {
    // The tool's own statements run under the session's SEEDER_* timeouts.
    name_timeout_of(e, Timeouts::default(), settings);
    if e.code.as_deref() != Some("55P03") {
        return;
    }
    match session.manifest_lock_holders().await {
        Ok(holders) if !holders.shown.is_empty() => {
            e.message = format!("{}; blocked by {holders}", e.message);
        }
        Ok(_) => {}
        Err(lookup) => {
            tracing::debug!(error = %lookup, "could not look up who holds the manifest tables' locks");
        }
    }
}

/// A lock timeout says nothing of whom it waited for: name the sessions holding a lock on the
/// view now (a report left open, an idle transaction), so whoever reads the history can go to
/// them. Best effort: a lookup that fails leaves the message as it was.
///
/// Only locks that conflict with the one the action waits for: a concurrent refresh's EXCLUSIVE
/// lets readers be, a plain refresh's and a swap's ACCESS EXCLUSIVE does not; and a swap drops
/// the views reading the view too, so their holders count.
async fn name_lock_holders(
    e: &mut DbError,
    session: &mut dyn Session,
    view: Rel<'_>,
    action: Action,
) {
    let (dependents, exclusive_access) = match action {
        Action::Refresh { concurrently } => (false, !concurrently),
        Action::Rebuild { .. } => (true, true),
        Action::Create { .. } | Action::RebuiltWithUpstream => (false, true),
    };
    match session
        .lock_holders(view, dependents, exclusive_access)
        .await
    {
        Ok(holders) if !holders.shown.is_empty() => {
            e.message = format!("{}; blocked by {holders}", e.message);
        }
        Ok(_) => {}
        Err(lookup) => {
            tracing::debug!(view = %view.key(), error = %lookup, "could not look up who holds the view's locks");
        }
    }
}

/// The longest wait before a retry, jitter excluded.
const BACKOFF_MAX: Duration = Duration::from_secs(60);

/// The wait before retry `attempt` (1-based): the base doubled each time, up to a minute, plus
/// jitter of up to as much again, so retries from many workers do not arrive together.
fn backoff(base: Duration, attempt: u32) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let exp = base
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
        .min(BACKOFF_MAX.max(base));
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(attempt);
    let jitter = exp.mul_f64((h.finish() % 1000) as f64 / 1000.0);
    exp + jitter
}

type Task = std::pin::Pin<Box<dyn std::future::Future<Output = TaskResult> + Send>>;

/// After a signal: cancels the session's running statement on the server, and again every
/// 100 ms until `work` ends. A cancel that arrives between two of a rebuild's statements (or
/// before the first reached the server) finds nothing running; the next one stops the statement
/// that followed, so no long statement runs to its end after a signal.
async fn cancel_until_done<F: std::future::Future>(
    mut work: std::pin::Pin<&mut F>,
    canceller: Option<&crate::repositories::Canceller>,
) -> F::Output {
    let Some(canceller) = canceller else {
        return work.await;
    };
    loop {
        canceller.cancel().await;
        tokio::select! {
            r = &mut work => return r,
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
}

/// Called when view `i`'s upstreams are done and a worker slot is free: decides whether it runs.
fn start_view<C: Clock + 'static>(shared: &Arc<Shared<C>>, i: usize) -> Start<Task, TaskResult> {
    let view = &shared.prepared.views[i];
    let done = |outcome: Outcome| Start::Done(never_ran(shared, i, outcome));
    let (name, query, hash) = match &view.plan {
        ViewPlan::Invalid(reason) => return done(failed(0, reason.clone())),
        ViewPlan::Valid {
            name, query, hash, ..
        } => (name.clone(), query.clone(), hash.clone()),
    };
    let mut action = match &shared.prepared.actions[i] {
        Ok(a) => *a,
        Err(reason) => return done(failed(0, reason.clone())),
    };
    let rebuilt = lock(&shared.rebuilt_with_upstream).contains(&view.key);
    if shared.interrupt.is_interrupted() {
        if rebuilt {
            // Its upstream's rebuild recreated it, on the new data, before the signal: that is
            // what happened to it in this run (only its ANALYZE did not run).
            return done(Outcome {
                status: "success",
                action: Some(Action::RebuiltWithUpstream.label()),
                ..skipped(format!(
                    "recreated by its upstream's rebuild; not analyzed: the run was interrupted by {}",
                    shared.interrupt.signal_name()
                ))
            });
        }
        return done(not_started(&shared.interrupt));
    }
    if rebuilt {
        action = Action::RebuiltWithUpstream;
    }
    // While the breaker is open the view waits (on its slot, holding no connection) for the
    // breaker to let it start: as the probe once the reset time has passed, or as any view once
    // a probe closed it. A probe that fails too ends the waiting: the run's other views are
    // skipped, rather than each waiting out another reset time against a database still down.
    let admitted = match lock(&shared.breaker).admit() {
        Admission::Admitted(t) => Some(t),
        Admission::Denied { .. } if shared.probe_failed.load(Ordering::SeqCst) => {
            return done(skipped(breaker_gave_up(shared)));
        }
        Admission::Denied { .. } => None,
    };
    let shared = shared.clone();
    if admitted.is_some() {
        shared.progress.started(i);
    }
    let span = tracing::error_span!("view", view = %view.key, agency = %view.record.agency_slug);
    Start::Run(Box::pin(async move {
        let view = &shared.prepared.views[i];
        let ticket = match admitted {
            Some(t) => t,
            None => match wait_for_breaker(&shared).await {
                Ok(t) => {
                    shared.progress.started(i);
                    t
                }
                Err(outcome) => return never_ran_in_span(&shared, i, outcome),
            },
        };
        let mut guard = TicketGuard {
            shared: &shared,
            ticket: Some(ticket),
        };
        let mut outcome =
            refresh_with_retries(&shared, view, name, action, &query, &hash, &mut guard).await;
        let recorded = match outcome.session.as_mut() {
            Some(session) => {
                let (written, unlocked) = session
                    .end_view(
                        shared.routes,
                        &shared.run_id,
                        &view.record,
                        outcome.history,
                        &outcome.outcome,
                        outcome.locked.then_some(view.key.as_str()),
                    )
                    .await;
                if let Err(e) = unlocked {
                    tracing::warn!(view = %view.key, error = %e, "could not release the view's lock; it goes with the connection");
                }
                match written {
                    Ok(()) => true,
                    // Retried once on the run's own connection at the end.
                    Err(e) => {
                        tracing::warn!(view = %view.key, error = %e, "could not record the outcome; retrying at the end of the run");
                        false
                    }
                }
            }
            None => false,
        };
        // No view will ask for a connection again: close this one now rather than leave it
        // idle (and its server process waiting) until the last view of the run is done.
        if shared.all_settled() {
            if let Some(session) = outcome.session.take() {
                session.close();
            }
            // Opened ahead of the work and never taken, or handed back by views done earlier.
            shared.store.close_idle();
        }
        shared.progress.finished(i, outcome.outcome.status);
        TaskResult {
            result: ViewResult {
                key: view.key.clone(),
                record: view.record.clone(),
                outcome: outcome.outcome,
                up_to_date: outcome.up_to_date,
            },
            history: outcome.history,
            recorded,
        }
    }.instrument(span)))
}

/// View `i` settled without running (invalid, skipped, stopped while it waited): the logs say
/// so, as they do for every view that ran, and so does the progress display.
fn never_ran<C: Clock>(shared: &Shared<C>, i: usize, outcome: Outcome) -> TaskResult {
    let view = &shared.prepared.views[i];
    // The same span as a view that ran: log shippers find its view and agency on each line.
    let _span =
        tracing::error_span!("view", view = %view.key, agency = %view.record.agency_slug).entered();
    never_ran_in_span(shared, i, outcome)
}

/// [`never_ran`] from inside the view's span already (a view that waited for the breaker).
fn never_ran_in_span<C: Clock>(shared: &Shared<C>, i: usize, outcome: Outcome) -> TaskResult {
    let view = &shared.prepared.views[i];
    let reason = outcome.error.as_deref().unwrap_or_default();
    match outcome.status {
        "error" => tracing::warn!(view = %view.key, error = %reason, "not refreshed"),
        "skipped" => tracing::warn!(view = %view.key, %reason, "skipped"),
        _ => tracing::info!(view = %view.key, %reason, status = outcome.status, "not started"),
    }
    shared.progress.finished(i, outcome.status);
    TaskResult {
        result: ViewResult {
            key: view.key.clone(),
            record: view.record.clone(),
            outcome,
            up_to_date: false,
        },
        history: None,
        recorded: false,
    }
}

/// Why a view is skipped once the breaker's probe failed as well.
fn breaker_gave_up<C: Clock>(shared: &Shared<C>) -> String {
    let last = lock(&shared.last_trouble).clone().unwrap_or_default();
    format!(
        "circuit breaker open after {} consecutive database failure{} (last: {last}), and the \
         probe after {}s failed too: not started",
        shared.settings.max_failures,
        if shared.settings.max_failures.get() == 1 {
            ""
        } else {
            "s"
        },
        shared.settings.reset_after.as_secs()
    )
}

/// Waits until the breaker admits this view, checking it at least every 200 ms (a probe's
/// outcome, or the reset time passing), or until the run is interrupted or a probe fails.
async fn wait_for_breaker<C: Clock>(shared: &Shared<C>) -> Result<Ticket, Outcome> {
    let mut logged = false;
    loop {
        if shared.probe_failed.load(Ordering::SeqCst) {
            return Err(skipped(breaker_gave_up(shared)));
        }
        let wait = match lock(&shared.breaker).admit() {
            Admission::Admitted(t) => return Ok(t),
            Admission::Denied { retry_after } => retry_after,
        };
        if !logged {
            logged = true;
            tracing::warn!(
                // Rounded up: a wait of 1.9 s is not "1".
                probe_in_s = wait.as_millis().div_ceil(1000),
                "circuit breaker open after consecutive database failures: no view starts until it allows a probe"
            );
        }
        let nap = wait.clamp(Duration::from_millis(10), Duration::from_millis(200));
        tokio::select! {
            _ = tokio::time::sleep(nap) => {}
            _ = shared.interrupt.cancelled() => return Err(not_started(&shared.interrupt)),
        }
    }
}

/// Gets a fresh session ready for a view: its `running` row first (whoever holds a view's lock
/// has one, so a run that finds the lock taken can say which run holds it), then its lock, then
/// the manifest's own timeouts. `Err` is the outcome to record instead of refreshing.
async fn ready<C: Clock>(
    shared: &Shared<C>,
    view: &PlannedView,
    session: &mut dyn Session,
    history: &mut Option<HistoryId>,
    up_to_date: &mut bool,
    // Where a transient failure goes to be tried again (when attempts are left).
    mut lost: Option<&mut Option<DbError>>,
    guard: &mut TicketGuard<'_, C>,
) -> Result<(), Outcome> {
    let mut fail = |what: &str, mut e: DbError| {
        // The connection lost (or another transient failure) while taking the lock: tried again
        // on a new connection, like a refresh, when attempts are left.
        if let Some(lost) = lost.as_deref_mut().filter(|_| e.is_transient()) {
            let message = format!("could not {what}: {}", e.message);
            *lost = Some(e);
            return failed(0, message);
        }
        // A wait for the view's lock (--wait-for-locks) can end in a timeout: say which (the
        // manifest's own timeouts are set only once the lock is taken).
        name_timeout_of(&mut e, Timeouts::default(), &shared.settings);
        guard.finish(&e);
        failed(0, format!("could not {what}: {}", e.message))
    };
    match session
        .begin_view(
            shared.routes,
            &shared.run_id,
            &view.record,
            history,
            &view.key,
            shared.settings.wait_for_locks,
        )
        .await
    {
        Ok(ViewLock::Acquired) => {}
        Ok(ViewLock::Held(by)) => {
            guard.record(BreakerOutcome::OwnError);
            let by = by
                .map(|r| format!("run {r}"))
                .unwrap_or_else(|| "another run".to_string());
            lock(&shared.held_elsewhere).insert(view.key.clone(), by.clone());
            // A killed run's session may still hold it (its last statement running on): say what is
            // known, not that the run is alive.
            let reason = format!("locked by {by}: its session holds this view now");
            tracing::warn!(view = %view.key, %reason, "skipped");
            return Err(skipped(reason));
        }
        Ok(ViewLock::AlreadyDone(by)) => {
            guard.record(BreakerOutcome::OwnError);
            *up_to_date = true;
            let reason = format!("already refreshed by run {by} since this run started");
            tracing::info!(view = %view.key, %reason, "up to date");
            return Err(skipped(reason));
        }
        Err(BeginError::Start(e)) => return Err(fail("record the start", e)),
        Err(BeginError::Lock(e)) => return Err(fail("take the view's lock", e)),
    }
    let own = view.timeouts;
    if own.statement_ms.is_some() || own.lock_ms.is_some() {
        if let Err(e) = session.set_timeouts(own.statement_ms, own.lock_ms).await {
            // Nothing will run: give the lock back now, or it would stay with the pooled
            // connection.
            if let Err(unlock) = session.unlock_view(&view.key).await {
                tracing::warn!(view = %view.key, error = %unlock, "could not release the view's lock");
            }
            return Err(fail("set the manifest's timeouts", e));
        }
    }
    Ok(())
}

/// One view's work and where it stands.
struct Attempted {
    outcome: Outcome,
    /// The session that holds the view's lock and its history row (gone if the connection was lost
    /// for good).
    session: Option<Box<dyn Session>>,
    history: Option<HistoryId>,
    locked: bool,
    /// Another run refreshed it since this run started (so it was skipped).
    up_to_date: bool,
}

/// Takes the view's lock, records its start, then refreshes it, trying transient failures again
/// (on a new connection when the old one is gone), cancelling on the server when interrupted.
async fn refresh_with_retries<C: Clock>(
    shared: &Shared<C>,
    view: &PlannedView,
    name: super::validate::ViewName,
    action: Action,
    query: &str,
    hash: &str,
    guard: &mut TicketGuard<'_, C>,
) -> Attempted {
    // A rebuild whose swap is to be tried again keeps its new view here between attempts.
    let mut kept = None;
    let mut done = attempts(shared, view, &name, action, query, hash, guard, &mut kept).await;
    // The attempts ended (a signal, a failure that is not worth trying again) with it unused.
    if kept.is_some() {
        if let (Some(session), Action::Rebuild { oid, .. }) = (done.session.as_mut(), action) {
            session
                .drop_temporary(Rel {
                    schema: name.schema(),
                    name: &super::refresh::temp_name(oid),
                })
                .await;
        }
    }
    done
}

#[allow(clippy::too_many_arguments)]
async fn attempts<C: Clock>(
    shared: &Shared<C>,
    view: &PlannedView,
    name: &super::validate::ViewName,
    action: Action,
    query: &str,
    hash: &str,
    guard: &mut TicketGuard<'_, C>,
    kept: &mut Option<Built>,
) -> Attempted {
    let settings = &shared.settings;
    let began = Instant::now();
    let ms = |b: Instant| u64::try_from(b.elapsed().as_millis()).unwrap_or(u64::MAX);
    let mut done = Attempted {
        outcome: failed(0, String::new()),
        session: None,
        history: None,
        locked: false,
        up_to_date: false,
    };
    let mut errors: Vec<String> = Vec::new();
    // A transient failure while the view was getting ready, to try again on a new connection.
    let mut lost: Option<DbError> = None;
    // The worker's backend, for pg_stat_statements figures read from another session.
    let mut pid: Option<i32> = None;
    let max_attempts = settings.max_retries.saturating_add(1);
    let mut attempt = 0u32;
    // The view's own work over every attempt: waits for its lock and between attempts excluded.
    let mut worked = Duration::ZERO;
    loop {
        attempt += 1;
        // A session holding the view's lock, with its `running` row.
        if done.session.is_none() {
            if attempt == 1 {
                shared.warmed.wait_for_one().await;
            }
            let mut session = match shared.store.session().await {
                Ok(s) => s,
                Err(e) => {
                    if e.is_transient()
                        && attempt < max_attempts
                        && !shared.interrupt.is_interrupted()
                    {
                        tracing::warn!(view = %view.key, attempt, error = %cut_error(e.message.clone()), "could not get a connection; retrying");
                        errors.push(format!(
                            "attempt {attempt} of {max_attempts}: {}",
                            e.message
                        ));
                        tokio::select! {
                            _ = tokio::time::sleep(backoff(settings.retry_base, attempt)) => continue,
                            _ = shared.interrupt.cancelled() => {}
                        }
                    }
                    guard.finish(&e);
                    errors.push(format!(
                        "attempt {attempt} of {max_attempts}: {}",
                        e.message
                    ));
                    done.outcome = Outcome {
                        attempts: attempt as i32,
                        ..failed(ms(began), errors.join("; "))
                    };
                    return done;
                }
            };
            // `--wait-for-locks` can wait long for another run's refresh: a signal cancels that
            // wait on the server too.
            let canceller = session.canceller();
            let readied = {
                let wait = ready(
                    shared,
                    view,
                    session.as_mut(),
                    &mut done.history,
                    &mut done.up_to_date,
                    (attempt < max_attempts).then_some(&mut lost),
                    guard,
                );
                tokio::pin!(wait);
                tokio::select! {
                    r = &mut wait => r,
                    _ = shared.interrupt.cancelled() => {
                        // Taken just before the cancel arrived: end_view gives it back.
                        if cancel_until_done(wait, canceller.as_ref()).await.is_ok() {
                            done.locked = true;
                        }
                        Err(Outcome {
                            status: "cancelled",
                            ..skipped(format!(
                                "cancelled by {} while waiting for the view's lock",
                                shared.interrupt.signal_name()
                            ))
                        })
                    }
                }
            };
            match readied {
                Ok(()) => done.locked = true,
                Err(failure) if lost.is_some() && !shared.interrupt.is_interrupted() => {
                    lost = None;
                    let error = failure.error.unwrap_or_default();
                    tracing::warn!(view = %view.key, attempt, error = %cut_error(error.clone()), "the connection was lost while the view got ready; retrying");
                    errors.push(format!("attempt {attempt} of {max_attempts}: {error}"));
                    // A new connection next time round; this one is dropped.
                    tokio::select! {
                        _ = tokio::time::sleep(backoff(settings.retry_base, attempt)) => continue,
                        _ = shared.interrupt.cancelled() => {
                            guard.record(BreakerOutcome::OwnError);
                            done.outcome = Outcome {
                                attempts: attempt as i32,
                                ..not_started(&shared.interrupt)
                            };
                            return done;
                        }
                    }
                }
                Err(mut failure) => {
                    if let Some(e) = lost.take() {
                        // Not retried after all (a signal came): it counts as it is.
                        guard.finish(&e);
                    }
                    if failure.status == "cancelled" {
                        guard.record(BreakerOutcome::OwnError);
                    }
                    if failure.status == "error" {
                        failure.duration_ms = ms(began);
                    }
                    done.outcome = failure;
                    done.session = Some(session);
                    return done;
                }
            }
            if shared.statements.is_some() {
                pid = session.backend_pid().await.ok();
            }
            done.session = Some(session);
        }
        let Some(session) = done.session.as_mut() else {
            continue;
        };
        // A signal that came while the view was getting ready: nothing of it has run yet.
        if shared.interrupt.is_interrupted() {
            guard.record(BreakerOutcome::OwnError);
            done.outcome = not_started(&shared.interrupt);
            return done;
        }
        // The recorded duration is the view's own work, of this attempt and those before.
        let work_began = Instant::now();
        let rel = Rel {
            schema: name.schema(),
            name: name.name(),
        };
        tracing::debug!(view = %view.key, action = action.label(), attempt, "refresh started");
        let canceller = session.canceller();
        let result = {
            let work = perform(
                session.as_mut(),
                rel,
                action,
                query,
                hash,
                &shared.run_id,
                view.timeouts.lock_ms.unwrap_or(settings.lock_timeout_ms),
                &shared.prepared.managed,
                shared
                    .statements
                    .as_ref()
                    .zip(pid)
                    .map(|(p, pid)| (p as &dyn super::refresh::StatementProbe, pid)),
                kept,
                attempt < max_attempts,
            );
            tokio::pin!(work);
            tokio::select! {
                r = &mut work => r,
                _ = shared.interrupt.cancelled() => cancel_until_done(work, canceller.as_ref()).await,
            }
        };
        worked += work_began.elapsed();
        let work_ms = u64::try_from(worked.as_millis()).unwrap_or(u64::MAX);
        match result {
            Ok(done_work) => {
                guard.succeed();
                if !done_work.dependents.is_empty() {
                    tracing::info!(view = %view.key, dependents = ?done_work.dependents, "rebuilt together with the views reading it");
                    lock(&shared.rebuilt_with_upstream)
                        .extend(done_work.dependents.iter().cloned());
                    // Those outside the selection are recreated all the same: they get a
                    // history row saying so (those inside get theirs when their turn comes).
                    for d in &done_work.dependents {
                        if shared.prepared.views.iter().any(|v| &v.key == d) {
                            continue;
                        }
                        let Some(record) = shared.prepared.managed.records.get(d) else {
                            continue;
                        };
                        // Analyzed like any view built, which gives its figures; its action says
                        // what happened, and a success carries no error text.
                        let stats = match ViewName::parse(d) {
                            Ok(name) => session
                                .analyze_view(Rel { schema: name.schema(), name: name.name() })
                                .await
                                .map_err(|e| tracing::warn!(view = %d, error = %e, "could not analyze a view recreated with its upstream"))
                                .ok(),
                            Err(_) => None,
                        };
                        tracing::info!(view = %d, upstream = %view.key, "recreated by the rebuild of its upstream (not selected in this run)");
                        let note = Outcome {
                            status: "success",
                            action: Some(Action::RebuiltWithUpstream.label()),
                            rows: stats.map_or(0, |s| s.rows),
                            bytes: stats.map_or(0, |s| s.bytes),
                            error: None,
                            attempts: 1,
                            ..skipped(String::new())
                        };
                        if let Err(e) = session
                            .record_finish(shared.routes, &shared.run_id, record, None, &note)
                            .await
                        {
                            tracing::warn!(view = %d, error = %e, "could not record a view recreated with its upstream");
                        }
                    }
                }
                tracing::info!(view = %view.key, action = action.label(), ms = work_ms, rows = done_work.rows, "refreshed");
                done.outcome = Outcome {
                    status: "success",
                    action: Some(action.label()),
                    duration_ms: work_ms,
                    rows: done_work.rows,
                    bytes: done_work.bytes,
                    error: (!errors.is_empty()).then(|| errors.join("; ")),
                    attempts: attempt as i32,
                    statement: done_work.statement,
                };
                break;
            }
            Err(_) if shared.interrupt.is_interrupted() => {
                guard.record(BreakerOutcome::OwnError);
                errors.push(format!(
                    "cancelled by {}: the running statement was cancelled on the server",
                    shared.interrupt.signal_name()
                ));
                tracing::warn!(view = %view.key, action = action.label(), "cancelled on the server");
                done.outcome = Outcome {
                    status: "cancelled",
                    action: Some(action.label()),
                    attempts: attempt as i32,
                    ..failed(work_ms, errors.join("; "))
                };
                break;
            }
            Err(mut e) => {
                name_timeout(&mut e, view, settings);
                if e.code.as_deref() == Some("55P03") {
                    name_lock_holders(&mut e, session.as_mut(), rel, action).await;
                }
                errors.push(format!(
                    "attempt {attempt} of {max_attempts}: {}",
                    e.message
                ));
                tracing::warn!(view = %view.key, action = action.label(), attempt, error = %cut_error(e.to_string()), "refresh failed");
                if e.is_transient() && attempt < max_attempts {
                    if e.connection_lost() {
                        // The connection is gone, and its locks with it: start over on a new one.
                        done.session = None;
                        done.locked = false;
                    } else if kept.is_some() {
                        tracing::info!(view = %view.key, "the new view is kept: the next attempt only swaps it in");
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(backoff(settings.retry_base, attempt)) => continue,
                        _ = shared.interrupt.cancelled() => {
                            guard.record(BreakerOutcome::OwnError);
                            done.outcome = Outcome {
                                status: "cancelled",
                                action: Some(action.label()),
                                attempts: attempt as i32,
                                ..failed(work_ms, errors.join("; "))
                            };
                            break;
                        }
                    }
                }
                guard.finish(&e);
                let message = if attempt == 1 {
                    e.message
                } else {
                    errors.join("; ")
                };
                done.outcome = Outcome {
                    action: Some(action.label()),
                    attempts: attempt as i32,
                    ..failed(work_ms, message)
                };
                break;
            }
        }
    }
    let own = view.timeouts;
    if own.statement_ms.is_some() || own.lock_ms.is_some() {
        if let Some(session) = done.session.as_mut() {
            if let Err(e) = session.set_timeouts(None, None).await {
                tracing::warn!(view = %view.key, error = %e, "could not reset the manifest's timeouts");
            }
        }
    }
    done
}

/// Hands the breaker its outcome exactly once, even if the task panics or is dropped, so a
/// probe can never leave the breaker half-open for good.
struct TicketGuard<'a, C: Clock> {
    shared: &'a Shared<C>,
    ticket: Option<Ticket>,
}

impl<C: Clock> TicketGuard<'_, C> {
    fn record(&mut self, outcome: BreakerOutcome) {
        if let Some(t) = self.ticket.take() {
            if t.is_probe() && outcome == BreakerOutcome::DatabaseTrouble {
                self.shared.probe_failed.store(true, Ordering::SeqCst);
            }
            lock(&self.shared.breaker).record(t, outcome);
        }
    }
    fn succeed(&mut self) {
        self.record(BreakerOutcome::Success);
    }
    fn finish(&mut self, e: &DbError) {
        match e.kind {
            FailureKind::DatabaseTrouble => {
                *lock(&self.shared.last_trouble) = Some(e.message.clone());
                self.record(BreakerOutcome::DatabaseTrouble);
            }
            FailureKind::OwnError => self.record(BreakerOutcome::OwnError),
        }
    }
}

impl<C: Clock> Drop for TicketGuard<'_, C> {
    fn drop(&mut self) {
        // Only reached without an outcome when the task panicked: assume the worst.
        self.record(BreakerOutcome::DatabaseTrouble);
    }
}

/// A poisoned lock only means another task panicked mid-update of plain data: keep going.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_errors_are_cut_at_a_character_boundary() {
        assert_eq!(cut_error("short".into()), "short");
        let long = format!("syntax error at or near \"{}\"", "é".repeat(50_000));
        let cut = cut_error(long.clone());
        assert!(cut.len() < ERROR_BYTES + 40, "{}", cut.len());
        assert!(cut.starts_with("syntax error at or near"));
        assert!(
            cut.ends_with(&format!("… (cut; {} bytes in all)", long.len())),
            "{cut}"
        );
    }
    use crate::processors::fake::{own_error, trouble, FakeStore};
    use crate::repositories::{ManifestRow, ReportType, ViewState};
    use std::sync::atomic::{AtomicU64, Ordering};

    /// A clock that only moves when the test says so.
    #[derive(Clone, Default)]
    struct TestClock(Arc<AtomicU64>);
    impl Clock for TestClock {
        fn now(&self) -> std::time::Instant {
            // A fixed origin plus the test's offset.
            static ORIGIN: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
            *ORIGIN.get_or_init(std::time::Instant::now)
                + Duration::from_millis(self.0.load(Ordering::SeqCst))
        }
    }

    fn settings(workers: usize, failures: u32) -> RunSettings {
        RunSettings {
            max_workers: NonZeroUsize::new(workers).unwrap(),
            max_failures: NonZeroU32::new(failures).unwrap(),
            reset_after: Duration::from_secs(300),
            refresh_concurrently: false,
            statement_timeout_ms: 0,
            lock_timeout_ms: 1000,
            max_retries: 2,
            retry_base: Duration::from_millis(1),
            wait_for_locks: false,
            batch_size: NonZeroUsize::new(8).unwrap(),
            start_delay: Duration::ZERO,
            max_db_active_queries: 0,
        }
    }

    fn manifest(id: i64, table: &str, query: &str) -> ManifestRow {
        ManifestRow {
            report_type: ReportType::Custom,
            manifest_id: id,
            report_id: None,
            table_name: table.into(),
            report_name: table.into(),
            agency_id: 1,
            agency_slug: "gotham".into(),
            query: query.into(),
            enabled: true,
            statement_timeout: None,
            lock_timeout: None,
        }
    }

    fn store(rows: Vec<ManifestRow>) -> FakeStore {
        let s = FakeStore::default();
        s.state().manifests = rows;
        s
    }

    async fn run(store: &FakeStore, workers: usize, failures: u32) -> RunReport {
        RunProcessor::new(
            Arc::new(store.clone()),
            settings(workers, failures),
            TestClock::default(),
        )
        .run("test", "", &Selection::default())
        .await
        .unwrap()
    }

    /// A populated materialized view the tool built from the query with this hash.
    fn built_from(hash: &str) -> ViewState {
        ViewState {
            schema_exists: true,
            oid: Some(7),
            relkind: Some('m'),
            populated: true,
            has_concurrent_index: false,
            stored_hash: Some(hash.into()),
            ..ViewState::default()
        }
    }

    fn statuses(r: &RunReport) -> Vec<(&str, &str)> {
        r.results
            .iter()
            .map(|v| (v.key.as_str(), v.outcome.status))
            .collect()
    }

    #[tokio::test]
    async fn prepare_tells_how_many_views_the_run_holds_once() {
        let s = store(vec![
            manifest(1, "s.a", "SELECT 1"),
            manifest(2, "s.b", "SELECT 1"),
            manifest(3, "s.c", "SELECT 1"),
        ]);
        let count = |selection: Selection| {
            let s = s.clone();
            async move {
                let mut session = s.session().await.unwrap();
                let mut told = Vec::new();
                prepare(session.as_mut(), &selection, &settings(8, 5), |n| {
                    told.push(n)
                })
                .await
                .unwrap();
                told
            }
        };
        assert_eq!(count(Selection::default()).await, vec![3]);
        let only_b = Selection {
            select: vec!["table:s.b".parse().unwrap()],
            ..Selection::default()
        };
        assert_eq!(count(only_b).await, vec![1]);
        let not_a = Selection {
            exclude: vec!["table:s.a".parse().unwrap()],
            ..Selection::default()
        };
        assert_eq!(count(not_a).await, vec![2]);
        // The job's own scope counts too: every view is planned, but refresh_table's run
        // holds one (and opens one worker connection, not one per planned view).
        let table_b = Selection {
            scope: Scope::Table("s.b".into()),
            ..Selection::default()
        };
        assert_eq!(count(table_b.clone()).await, vec![1]);
        // ... and inspects that one view's state, which decides its action.
        s.state().views.insert(
            "s.b".into(),
            built_from(&crate::processors::planner::hash_query("SELECT 1")),
        );
        s.state().inspected.clear();
        let mut session = s.session().await.unwrap();
        let p = prepare(session.as_mut(), &table_b, &settings(8, 5), |_| {})
            .await
            .unwrap();
        assert_eq!(s.state().inspected, vec![vec!["s.b".to_string()]]);
        assert_eq!(
            p.actions,
            vec![Ok(Action::Refresh {
                concurrently: false
            })]
        );
        let canned = Selection {
            report_type: crate::processors::planner::TypeFilter::Canned,
            ..Selection::default()
        };
        assert_eq!(count(canned).await, vec![0]);
    }

    #[tokio::test]
    async fn recent_durations_are_known_with_and_without_a_selection() {
        let s = store(vec![
            manifest(1, "s.a", "SELECT 1"),
            manifest(2, "s.b", "SELECT 1"),
            manifest(3, "s.c", "SELECT 1"),
        ]);
        s.state().durations = [("s.a".to_string(), 100), ("s.c".to_string(), 3000)].into();
        let expected_of = |selection: Selection| {
            let s = s.clone();
            async move {
                let mut session = s.session().await.unwrap();
                let p = prepare(session.as_mut(), &selection, &settings(8, 5), |_| {})
                    .await
                    .unwrap();
                (p.expected_ms, p.expected_known)
            }
        };
        // Read with the catalog for every view; b never ran, so it counts as the median.
        assert_eq!(
            expected_of(Selection::default()).await,
            (vec![100, 1550, 3000], vec![true, false, true])
        );
        // Read after the selection, for the selected views only.
        let not_a = Selection {
            exclude: vec!["table:s.a".parse().unwrap()],
            ..Selection::default()
        };
        assert_eq!(
            expected_of(not_a).await,
            (vec![3000, 3000], vec![false, true])
        );
    }

    #[tokio::test]
    async fn every_view_gets_exactly_one_finished_record() {
        let s = store(vec![
            manifest(1, "s.a", "SELECT 1"),
            manifest(2, "s.bad name", "SELECT 1"),
            manifest(3, "s.c", "SELECT 1; DROP TABLE x"),
            manifest(4, "s.d", "SELECT 1"),
        ]);
        s.state()
            .failures
            .insert("s.d".into(), own_error("division by zero"));
        let r = run(&s, 2, 5).await;
        assert_eq!(
            statuses(&r),
            [
                ("s.a", "success"),
                ("s.bad name", "error"),
                ("s.c", "error"),
                ("s.d", "error")
            ]
        );
        assert!(!r.all_succeeded());
        let st = s.state();
        let mut finished: Vec<&str> = st.finished.iter().map(|(_, t, _)| t.as_str()).collect();
        finished.sort();
        assert_eq!(finished, ["s.a", "s.bad name", "s.c", "s.d"]);
        // Invalid manifests never reached the database: only the valid ones were created.
        let created: Vec<&str> = st.calls.iter().map(|(_, k)| k.as_str()).collect();
        assert_eq!(created.len(), 2);
        assert!(!created.contains(&"s.c"));
        // Started views completed their own `running` row; invalid ones got a complete row.
        for (history, table, _) in &st.finished {
            let started = st
                .started
                .iter()
                .any(|(id, t)| Some(*id) == *history && t == table);
            assert_eq!(started, history.is_some(), "{table}");
        }
        let d = r.results.iter().find(|v| v.key == "s.d").unwrap();
        assert_eq!(d.outcome.error.as_deref(), Some("division by zero"));
        assert_eq!(d.outcome.action, Some("create"));
    }

    /// Six views `s.v1`…`s.v6`; those in `failing` fail as the database in trouble does.
    fn six_views_in_trouble(failing: &[&str]) -> FakeStore {
        let rows: Vec<_> = (1..=6)
            .map(|i| manifest(i, &format!("s.v{i}"), "SELECT 1"))
            .collect();
        let s = store(rows);
        for k in failing {
            s.state().failures.insert(
                (*k).into(),
                trouble("terminating connection due to administrator command"),
            );
        }
        s
    }

    /// Runs with one worker and a breaker that opens after two failures; once `calls` views have
    /// been tried, moves the test clock past the reset time.
    async fn run_then_pass_the_reset(s: &FakeStore, calls: usize) -> RunReport {
        let clock = TestClock::default();
        let hand = clock.clone();
        let watched = s.clone();
        let mover = tokio::spawn(async move {
            while watched.state().calls.len() < calls {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            // Nothing more starts while the breaker is open, however long the clock stands.
            tokio::time::sleep(Duration::from_millis(100)).await;
            assert_eq!(watched.state().calls.len(), calls, "started while open");
            hand.0.fetch_add(300_000, Ordering::SeqCst);
        });
        let r = RunProcessor::new(Arc::new(s.clone()), settings(1, 2), clock)
            .run("test", "", &Selection::default())
            .await
            .unwrap();
        mover.await.unwrap();
        r
    }

    #[tokio::test]
    async fn breaker_opens_on_database_trouble_then_one_probe_closes_it() {
        let s = six_views_in_trouble(&["s.v1", "s.v2"]);
        // Each failing view is tried three times (admin shutdown is transient).
        let r = run_then_pass_the_reset(&s, 6).await;
        assert_eq!(
            statuses(&r),
            [
                ("s.v1", "error"),
                ("s.v2", "error"),
                ("s.v3", "success"),
                ("s.v4", "success"),
                ("s.v5", "success"),
                ("s.v6", "success")
            ]
        );
        let calls: Vec<String> = s.state().calls.iter().map(|(_, k)| k.clone()).collect();
        assert_eq!(
            calls,
            ["s.v1", "s.v1", "s.v1", "s.v2", "s.v2", "s.v2", "s.v3", "s.v4", "s.v5", "s.v6"],
            "after the reset time, the probe (s.v3) first, then the rest"
        );
        assert_eq!(s.state().finished.len(), 6);
    }

    #[tokio::test]
    async fn a_failed_probe_skips_the_rest() {
        let s = six_views_in_trouble(&["s.v1", "s.v2", "s.v3"]);
        let r = run_then_pass_the_reset(&s, 6).await;
        assert_eq!(
            statuses(&r),
            [
                ("s.v1", "error"),
                ("s.v2", "error"),
                ("s.v3", "error"),
                ("s.v4", "skipped"),
                ("s.v5", "skipped"),
                ("s.v6", "skipped")
            ]
        );
        let reason = r.results[3].outcome.error.clone().unwrap();
        assert!(
            reason.contains("circuit breaker open")
                && reason.contains("administrator command")
                && reason.contains("probe"),
            "{reason}"
        );
        // The probe (s.v3) ran, with its retries; nothing after it did.
        let calls: Vec<String> = s.state().calls.iter().map(|(_, k)| k.clone()).collect();
        assert!(calls.iter().any(|k| k == "s.v3"), "{calls:?}");
        assert!(
            calls
                .iter()
                .all(|k| ["s.v1", "s.v2", "s.v3"].contains(&k.as_str())),
            "{calls:?}"
        );
        assert_eq!(s.state().finished.len(), 6);
    }

    #[tokio::test]
    async fn the_active_queries_throttle_checks_before_every_batch_the_first_too() {
        let rows: Vec<_> = (1..=5)
            .map(|i| manifest(i, &format!("s.v{i}"), "SELECT 1"))
            .collect();
        let s = store(rows);
        let mut config = settings(1, 5);
        config.batch_size = NonZeroUsize::new(2).unwrap();
        config.max_db_active_queries = 3;
        let r = RunProcessor::new(Arc::new(s.clone()), config, TestClock::default())
            .run("test", "", &Selection::default())
            .await
            .unwrap();
        assert!(r.all_succeeded());
        // Batches of 2, 2 and 1: three checks.
        assert_eq!(s.state().active_checks, 3);
        // Never busy: closed only once every view has started, as in any run.
        assert_eq!(s.state().idle_closed, 1);
    }

    /// While the server is busy the run holds no idle connection: at every check that finds it
    /// busy, those waiting in the pool are closed. (Time is paused: the 500 ms between checks
    /// pass at once.)
    #[tokio::test(start_paused = true)]
    async fn a_busy_server_gets_the_runs_idle_connections_back_while_the_throttle_waits() {
        let rows: Vec<_> = (1..=3)
            .map(|i| manifest(i, &format!("s.v{i}"), "SELECT 1"))
            .collect();
        let s = store(rows);
        s.state().busy_checks = 2;
        let mut config = settings(2, 5);
        config.max_db_active_queries = 3;
        let r = RunProcessor::new(Arc::new(s.clone()), config, TestClock::default())
            .run("test", "", &Selection::default())
            .await
            .unwrap();
        assert!(r.all_succeeded());
        // One batch of 3: two busy checks, then one that lets it start.
        assert_eq!(s.state().active_checks, 3);
        // At each busy check, and once every view has started.
        assert_eq!(s.state().idle_closed, 3);
    }

    #[tokio::test]
    async fn own_sql_errors_never_open_the_breaker() {
        let rows: Vec<_> = (1..=6)
            .map(|i| manifest(i, &format!("s.v{i}"), "SELECT 1"))
            .collect();
        let s = store(rows);
        for k in ["s.v1", "s.v2", "s.v3", "s.v4"] {
            s.state()
                .failures
                .insert(k.into(), own_error("division by zero"));
        }
        let r = run(&s, 1, 2).await;
        assert_eq!(r.counts().failed, 4);
        assert_eq!(r.counts().succeeded, 2);
        assert_eq!(r.counts().skipped, 0);
    }

    #[tokio::test]
    async fn never_more_than_max_workers_in_flight() {
        let rows: Vec<_> = (1..=12)
            .map(|i| manifest(i, &format!("s.v{i}"), "SELECT 1"))
            .collect();
        let s = store(rows);
        let r = run(&s, 3, 5).await;
        assert!(r.all_succeeded());
        let peak = s.state().peak_in_flight;
        assert!((1..=3).contains(&peak), "peak {peak}");
    }

    #[test]
    fn unknown_durations_count_as_the_median() {
        let keys: Vec<String> = ["a", "b", "c", "d", "e"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let ms: HashMap<String, u64> = [("a", 100), ("b", 2000), ("d", 300)]
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect();
        // The median of 100, 300 and 2000 is 300.
        assert_eq!(
            expected(&keys, &ms),
            (
                vec![100, 2000, 300, 300, 300],
                vec![true, true, false, true, false]
            )
        );
        assert_eq!(expected(&keys[..2], &HashMap::new()).0, vec![0, 0]);
    }

    #[tokio::test]
    async fn long_views_start_first_and_results_stay_in_manifest_order() {
        let rows: Vec<_> = (1..=4)
            .map(|i| manifest(i, &format!("s.v{i}"), "SELECT 1"))
            .collect();
        let s = store(rows);
        s.state().durations.insert("s.v4".into(), 5000);
        s.state().durations.insert("s.v1".into(), 10);
        let r = run(&s, 1, 5).await;
        let started: Vec<String> = s.state().calls.iter().map(|(_, k)| k.clone()).collect();
        assert_eq!(started, ["s.v4", "s.v2", "s.v3", "s.v1"]);
        let keys: Vec<&str> = r.results.iter().map(|v| v.key.as_str()).collect();
        assert_eq!(keys, ["s.v1", "s.v2", "s.v3", "s.v4"]);
    }

    #[tokio::test]
    async fn transient_failures_are_retried_and_each_attempt_is_kept() {
        let rows: Vec<_> = (1..=3)
            .map(|i| manifest(i, &format!("s.v{i}"), "SELECT 1"))
            .collect();
        let s = store(rows);
        s.state().fail_once.insert(
            "s.v1".into(),
            trouble("terminating connection due to administrator command"),
        );
        s.state()
            .failures
            .insert("s.v2".into(), own_error("division by zero"));
        let mut lock_timeout = trouble("canceling statement due to lock timeout");
        lock_timeout.code = Some("55P03".into());
        s.state().failures.insert("s.v3".into(), lock_timeout);
        let r = run(&s, 1, 10).await;
        let v1 = &r.results[0].outcome;
        assert_eq!((v1.status, v1.attempts), ("success", 2));
        assert!(
            v1.error
                .as_deref()
                .unwrap_or_default()
                .contains("attempt 1 of 3"),
            "{v1:?}"
        );
        let v2 = &r.results[1].outcome;
        assert_eq!(
            (v2.status, v2.attempts),
            ("error", 1),
            "own errors are never retried"
        );
        let v3 = &r.results[2].outcome;
        assert_eq!((v3.status, v3.attempts), ("error", 3));
        let e = v3.error.as_deref().unwrap_or_default();
        assert!(
            e.contains("attempt 3 of 3")
                && e.contains("lock_timeout 1000ms, from SEEDER_LOCK_TIMEOUT"),
            "{e}"
        );
        let calls = s.state().calls.iter().filter(|(_, k)| k == "s.v3").count();
        assert_eq!(calls, 3);
    }

    #[tokio::test]
    async fn views_another_run_holds_are_skipped_and_their_downstream_too() {
        let s = store(vec![
            manifest(1, "s.held", "SELECT 1"),
            manifest(2, "s.reads_held", "SELECT * FROM s.held"),
            manifest(3, "s.done", "SELECT 1"),
            manifest(4, "s.reads_done", "SELECT * FROM s.done"),
        ]);
        s.state()
            .locked
            .insert("s.held".into(), ViewLock::Held(Some("run-a".into())));
        s.state()
            .locked
            .insert("s.done".into(), ViewLock::AlreadyDone("run-b".into()));
        let r = run(&s, 2, 5).await;
        let reasons: Vec<(&str, String)> = r
            .results
            .iter()
            .map(|v| {
                (
                    v.outcome.status,
                    v.outcome.error.clone().unwrap_or_default(),
                )
            })
            .collect();
        assert_eq!(reasons[0].0, "skipped");
        assert!(
            reasons[0].1.starts_with("locked by run run-a"),
            "{reasons:?}"
        );
        assert_eq!(
            reasons[1],
            (
                "skipped",
                "upstream s.held locked by run run-a: its session holds that view now".to_string()
            )
        );
        assert!(
            reasons[2].1.contains("already refreshed by run run-b"),
            "{reasons:?}"
        );
        // Another run has just refreshed s.done: its reader runs, on fresh data.
        assert_eq!(reasons[3].0, "success", "{reasons:?}");
        let ran: Vec<String> = s.state().calls.iter().map(|(_, k)| k.clone()).collect();
        assert_eq!(ran, ["s.reads_done"]);
        assert!(!r.all_succeeded(), "s.held was not refreshed by anyone yet");

        // Without the held view, everything is up to date: the run succeeds (exit 0).
        let s = store(vec![
            manifest(3, "s.done", "SELECT 1"),
            manifest(4, "s.reads_done", "SELECT * FROM s.done"),
        ]);
        s.state()
            .locked
            .insert("s.done".into(), ViewLock::AlreadyDone("run-b".into()));
        let r = run(&s, 2, 5).await;
        assert_eq!(r.results[0].outcome.status, "skipped");
        assert!(r.results[0].up_to_date);
        assert!(r.all_succeeded());
    }

    #[tokio::test]
    async fn an_interrupted_run_starts_nothing_and_records_it_cancelled() {
        let rows: Vec<_> = (1..=3)
            .map(|i| manifest(i, &format!("s.v{i}"), "SELECT 1"))
            .collect();
        let s = store(rows);
        let interrupt = Interrupt::new();
        interrupt.trigger(etl_core::ExitStatus::Terminated);
        let r = RunProcessor::new(Arc::new(s.clone()), settings(2, 5), TestClock::default())
            .with_interrupt(interrupt)
            .run("test", "", &Selection::default())
            .await
            .unwrap();
        assert!(r.results.iter().all(|v| v.outcome.status == "cancelled"));
        assert!(r.results[0]
            .outcome
            .error
            .as_deref()
            .unwrap_or_default()
            .contains("SIGTERM"));
        assert!(s.state().calls.is_empty());
        assert_eq!(
            s.state().finished.len(),
            3,
            "every view still gets its history row"
        );
    }

    #[test]
    fn backoff_doubles_with_jitter_up_to_as_much_again() {
        let base = Duration::from_millis(100);
        for attempt in 1..=4u32 {
            let exp = base * (1 << (attempt - 1));
            let d = backoff(base, attempt);
            assert!(d >= exp && d < exp * 2, "attempt {attempt}: {d:?}");
        }
        let base = Duration::from_millis(200);
        for attempt in [10u32, 17, 100] {
            let d = backoff(base, attempt);
            assert!(
                d >= BACKOFF_MAX && d < BACKOFF_MAX * 2,
                "attempt {attempt}: {d:?}"
            );
        }
    }

    #[tokio::test]
    async fn unreachable_database_is_reported_as_such() {
        let s = store(vec![]);
        s.state().connect_error = Some(trouble("connection refused"));
        let err = RunProcessor::new(Arc::new(s), settings(1, 1), TestClock::default())
            .run("test", "", &Selection::default())
            .await
            .unwrap_err();
        assert!(matches!(err, RunError::Unavailable(_)), "{err:?}");
    }

    #[tokio::test]
    async fn a_connection_lost_while_taking_the_views_lock_is_tried_again() {
        let s = store(vec![manifest(1, "s.v", "SELECT 1")]);
        s.state().lock_fails_once.insert(
            "s.v".into(),
            DbError {
                kind: FailureKind::DatabaseTrouble,
                code: None,
                connect: false,
                message: "connection closed".into(),
            },
        );
        let r = run(&s, 1, 5).await;
        let v = &r.results[0].outcome;
        assert_eq!((v.status, v.attempts), ("success", 2), "{v:?}");
        assert!(
            v.error
                .as_deref()
                .unwrap_or_default()
                .contains("connection closed"),
            "{v:?}"
        );
    }

    #[tokio::test]
    async fn the_expected_wall_time_leaves_out_views_that_will_not_run() {
        let s = store(vec![
            manifest(1, "s.bad", "SELECT 1; SELECT 2"),
            manifest(2, "s.reads_bad", "SELECT * FROM s.bad"),
            manifest(3, "s.ok", "SELECT 1"),
        ]);
        {
            let mut st = s.state();
            st.durations.insert("s.bad".into(), 5_000);
            st.durations.insert("s.reads_bad".into(), 7_000);
            st.durations.insert("s.ok".into(), 100);
        }
        let mut session = s.session().await.unwrap();
        let p = prepare(
            session.as_mut(),
            &Selection::default(),
            &settings(8, 5),
            |_| {},
        )
        .await
        .unwrap();
        assert_eq!(p.expected_wall_ms(NonZeroUsize::new(8).unwrap()), 100);
    }

    #[tokio::test]
    async fn a_view_its_upstream_rebuilt_before_a_signal_is_recorded_rebuilt_not_cancelled() {
        let s = store(vec![
            manifest(1, "s.up", "SELECT 2"),
            manifest(2, "s.down", "SELECT * FROM s.up"),
        ]);
        let interrupt = Interrupt::new();
        {
            let mut st = s.state();
            st.views.insert("s.up".into(), built_from("stale"));
            st.views.insert(
                "s.down".into(),
                built_from(&super::super::planner::hash_query("SELECT * FROM s.up")),
            );
            st.rebuilt_dependents
                .insert("s.up".into(), vec!["s.down".into()]);
            st.interrupt_after_rebuild = Some(interrupt.clone());
        }
        let r = RunProcessor::new(Arc::new(s.clone()), settings(2, 5), TestClock::default())
            .with_interrupt(interrupt)
            .run("test", "", &Selection::default())
            .await
            .unwrap();
        let down = &r.results[1].outcome;
        assert_eq!(
            (down.status, down.action),
            ("success", Some("rebuilt with upstream")),
            "{down:?}"
        );
        let calls: Vec<String> = s.state().calls.iter().map(|(_, k)| k.clone()).collect();
        assert_eq!(calls, ["s.up"], "nothing ran for s.down after the signal");
    }

    #[tokio::test]
    async fn existing_views_are_refreshed_changed_ones_rebuilt_and_tables_left_alone() {
        let s = store(vec![
            manifest(1, "s.same", "SELECT 1"),
            manifest(2, "s.changed", "SELECT 2"),
            manifest(3, "s.table", "SELECT 3"),
        ]);
        {
            let mut st = s.state();
            st.views.insert(
                "s.same".into(),
                built_from(&super::super::planner::hash_query("SELECT 1")),
            );
            st.views.insert("s.changed".into(), built_from("stale"));
            st.views.insert(
                "s.table".into(),
                ViewState {
                    relkind: Some('r'),
                    ..built_from("x")
                },
            );
        }
        let r = run(&s, 2, 5).await;
        let actions: Vec<_> = r
            .results
            .iter()
            .map(|v| (v.key.as_str(), v.outcome.status, v.outcome.action))
            .collect();
        assert_eq!(
            actions,
            [
                ("s.same", "success", Some("refresh")),
                ("s.changed", "success", Some("rebuild")),
                ("s.table", "error", None)
            ]
        );
        assert!(r.results[2]
            .outcome
            .error
            .as_deref()
            .unwrap_or_default()
            .contains("is a table"));
    }

    fn lock_timeout() -> DbError {
        let mut e = trouble("canceling statement due to lock timeout");
        e.code = Some("55P03".into());
        e
    }

    #[tokio::test]
    async fn a_swap_that_timed_out_is_tried_again_without_building_again() {
        let s = store(vec![manifest(1, "s.changed", "SELECT 2")]);
        {
            let mut st = s.state();
            st.views.insert("s.changed".into(), built_from("stale"));
            st.swap_failures
                .insert("s.changed".into(), vec![lock_timeout(), lock_timeout()]);
        }
        let r = run(&s, 1, 5).await;
        let v = &r.results[0].outcome;
        assert_eq!(
            (v.status, v.action, v.attempts),
            ("success", Some("rebuild"), 3)
        );
        assert!(
            v.error
                .as_deref()
                .unwrap_or_default()
                .contains("attempt 2 of 3"),
            "{v:?}"
        );
        let st = s.state();
        let builds = st
            .calls
            .iter()
            .filter(|(what, _)| what == "rebuild")
            .count();
        assert_eq!(builds, 1, "the query ran once: {:?}", st.calls);
        assert_eq!(st.swaps, ["s.changed"; 3]);
        assert!(
            st.dropped_temporaries.is_empty(),
            "{:?}",
            st.dropped_temporaries
        );
    }

    #[tokio::test]
    async fn a_swap_that_never_gets_its_lock_drops_the_new_view_once() {
        let s = store(vec![manifest(1, "s.changed", "SELECT 2")]);
        {
            let mut st = s.state();
            st.views.insert("s.changed".into(), built_from("stale"));
            st.swap_failures
                .insert("s.changed".into(), vec![lock_timeout(); 3]);
        }
        let r = run(&s, 1, 5).await;
        let v = &r.results[0].outcome;
        assert_eq!((v.status, v.attempts), ("error", 3), "{v:?}");
        let st = s.state();
        assert_eq!(st.calls.iter().filter(|(w, _)| w == "rebuild").count(), 1);
        assert_eq!(st.dropped_temporaries, ["s._rs_7_new"]);
    }

    #[tokio::test]
    async fn a_swap_refused_for_its_own_reasons_drops_the_new_view_and_is_not_retried() {
        let s = store(vec![manifest(1, "s.changed", "SELECT 2")]);
        {
            let mut st = s.state();
            st.views.insert("s.changed".into(), built_from("stale"));
            st.swap_failures.insert(
                "s.changed".into(),
                vec![own_error(
                    "cannot rebuild s.changed: view s.reader reads it",
                )],
            );
        }
        let r = run(&s, 1, 5).await;
        let v = &r.results[0].outcome;
        assert_eq!((v.status, v.attempts), ("error", 1), "{v:?}");
        let st = s.state();
        assert_eq!(st.swaps.len(), 1);
        assert_eq!(st.dropped_temporaries, ["s._rs_7_new"]);
    }

    #[tokio::test]
    async fn a_swap_waiting_to_be_tried_again_when_a_signal_comes_drops_the_new_view() {
        let s = store(vec![manifest(1, "s.changed", "SELECT 2")]);
        {
            let mut st = s.state();
            st.views.insert("s.changed".into(), built_from("stale"));
            st.swap_failures
                .insert("s.changed".into(), vec![lock_timeout(); 3]);
        }
        let interrupt = Interrupt::new();
        let mut settings = settings(1, 5);
        // Long enough that the signal below comes during the wait between attempts.
        settings.retry_base = Duration::from_secs(600);
        let processor = RunProcessor::new(Arc::new(s.clone()), settings, TestClock::default())
            .with_interrupt(interrupt.clone());
        let watcher = {
            let s = s.clone();
            async move {
                while s.state().swaps.is_empty() {
                    tokio::task::yield_now().await;
                }
                interrupt.trigger(etl_core::ExitStatus::Terminated);
            }
        };
        let selection = Selection::default();
        let (r, ()) = tokio::join!(processor.run("test", "", &selection), watcher);
        let r = r.unwrap();
        assert_eq!(r.results[0].outcome.status, "cancelled");
        let st = s.state();
        assert_eq!(st.swaps.len(), 1);
        assert_eq!(st.dropped_temporaries, ["s._rs_7_new"]);
    }
}
