//! A run: plan, execute with at most `max_workers` refreshes in flight under the circuit
//! breaker, record every view's outcome, report.

use std::collections::HashMap;
use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etl_core::breaker::{Admission, CircuitBreaker, Clock, Outcome as BreakerOutcome, Ticket};
use etl_core::executor::{run_bounded, Start};
use etl_core::{DbError, FailureKind};

use super::planner::{plan, PlanError, PlannedView, Selection, ViewPlan};
use super::refresh::{decide, perform};
use crate::repositories::{
    HistoryId, HistoryRoutes, Outcome, Rel, RunCounts, Session, Store, ViewRecord, ViewState,
};

/// What a run is allowed to do.
#[derive(Debug, Clone)]
pub struct RunSettings {
    pub max_workers: NonZeroUsize,
    pub max_failures: NonZeroU32,
    pub reset_after: Duration,
    pub refresh_concurrently: bool,
    /// For the short swap transaction of a rebuild.
    pub lock_timeout_ms: u64,
}

/// One view's result, as the summary and the exit code see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViewResult {
    pub key: String,
    pub record: ViewRecord,
    pub outcome: Outcome,
}

#[derive(Debug, Clone)]
pub struct RunReport {
    pub run_id: String,
    pub results: Vec<ViewResult>,
    pub wall: Duration,
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

    /// Every selected view is up to date and recorded.
    pub fn all_succeeded(&self) -> bool {
        self.bookkeeping_errors.is_empty()
            && self.results.iter().all(|r| r.outcome.status == "success")
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
    #[error("{context}: {error}")]
    Database {
        context: &'static str,
        error: DbError,
    },
}

fn at(context: &'static str) -> impl FnOnce(DbError) -> RunError {
    move |error| RunError::Database { context, error }
}

/// Opens the first session of a job: tells "unreachable" from "misconfigured".
pub async fn connect(store: &dyn Store) -> Result<Box<dyn Session>, RunError> {
    store.session().await.map_err(|e| {
        if e.is_configuration() {
            RunError::Configuration(e)
        } else {
            RunError::Unavailable(e)
        }
    })
}

pub struct RunProcessor<C: Clock + Clone + 'static> {
    store: Arc<dyn Store>,
    settings: RunSettings,
    clock: C,
}

/// Shared by the tasks of one run.
struct Shared<C: Clock> {
    store: Arc<dyn Store>,
    breaker: Mutex<CircuitBreaker<C>>,
    last_trouble: Mutex<Option<String>>,
    routes: HistoryRoutes,
    run_id: String,
    settings: RunSettings,
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
        }
    }

    /// Migrates, plans `selection`, refreshes every selected view and records each outcome.
    pub async fn run(
        &self,
        job: &str,
        arguments: &str,
        selection: &Selection,
    ) -> Result<RunReport, RunError> {
        let started = Instant::now();
        let mut main = connect(self.store.as_ref()).await?;
        main.migrate().await.map_err(at("applying migrations"))?;
        let rows = main
            .load_manifests()
            .await
            .map_err(at("reading the manifest tables"))?;
        let planned = plan(&rows, selection)?;
        let routes = main
            .history_routes()
            .await
            .map_err(at("inspecting the history tables"))?;
        let names: Vec<Rel<'_>> = planned
            .iter()
            .filter_map(|p| match &p.plan {
                ViewPlan::Valid { name, .. } => Some(Rel {
                    schema: name.schema(),
                    name: name.name(),
                }),
                ViewPlan::Invalid(_) => None,
            })
            .collect();
        let states = main
            .inspect(&names)
            .await
            .map_err(at("inspecting the views"))?;
        let keys: Vec<String> = planned.iter().map(|p| p.key.clone()).collect();
        let durations = main
            .recent_durations(&keys)
            .await
            .map_err(at("reading recent durations"))?;
        let order = longest_first(&keys, &durations);
        let run_id = uuid::Uuid::new_v4().to_string();
        main.begin_run(&run_id, job, arguments)
            .await
            .map_err(at("recording the run"))?;
        tracing::info!(run_id = %run_id, views = planned.len(), workers = self.settings.max_workers.get(), "run started");

        let shared = Arc::new(Shared {
            store: self.store.clone(),
            breaker: Mutex::new(CircuitBreaker::new(
                self.settings.max_failures,
                self.settings.reset_after,
                self.clock.clone(),
            )),
            last_trouble: Mutex::new(None),
            routes,
            run_id: run_id.clone(),
            settings: self.settings.clone(),
        });

        let mut slots: Vec<Option<PlannedView>> = planned.into_iter().map(Some).collect();
        let scheduled: Vec<(usize, PlannedView)> = order
            .into_iter()
            .filter_map(|i| slots.get_mut(i).and_then(Option::take).map(|v| (i, v)))
            .collect();
        let finished = run_bounded(
            scheduled,
            self.settings.max_workers,
            |(i, view)| {
                let key = (i, view.key.clone(), view.record.clone());
                let decision = start_view(&shared, view, &states);
                (key, decision)
            },
        )
        .await;

        // Whatever a worker could not record (skips, failures to connect, panics) is recorded
        // here, so every view ends with exactly one history row.
        let mut results: Vec<(usize, ViewResult)> = Vec::with_capacity(finished.len());
        let mut bookkeeping_errors = Vec::new();
        for ((i, key, record), task) in finished {
            let task = task.unwrap_or_else(|panic| TaskResult {
                result: ViewResult {
                    key: key.clone(),
                    record: record.clone(),
                    outcome: failed(0, format!("internal error, please report it: {panic}")),
                },
                history: None,
                recorded: false,
            });
            if !task.recorded {
                if let Err(e) = main
                    .record_finish(
                        routes,
                        &run_id,
                        &task.result.record,
                        task.history,
                        &task.result.outcome,
                    )
                    .await
                {
                    bookkeeping_errors.push(format!(
                        "{}: could not record the outcome: {e}",
                        task.result.key
                    ));
                }
            }
            results.push((i, task.result));
        }
        results.sort_by_key(|(i, _)| *i);
        let mut report = RunReport {
            run_id,
            results: results.into_iter().map(|(_, r)| r).collect(),
            wall: started.elapsed(),
            bookkeeping_errors,
        };
        let status = if report.all_succeeded() {
            "success"
        } else {
            "failed"
        };
        if let Err(e) = main
            .finish_run(&report.run_id, status, report.counts())
            .await
        {
            report
                .bookkeeping_errors
                .push(format!("could not record the end of the run: {e}"));
        }
        Ok(report)
    }
}

/// The order views start in: longest expected duration first, so a long view never starts last
/// and stretches the run. A view with no successful run yet counts as the median of the others;
/// ties keep manifest order.
pub fn longest_first(keys: &[String], recent_ms: &HashMap<String, u64>) -> Vec<usize> {
    let mut known: Vec<u64> = keys.iter().filter_map(|k| recent_ms.get(k).copied()).collect();
    known.sort_unstable();
    let n = known.len();
    let median = match n {
        0 => 0,
        _ if n % 2 == 1 => known[n / 2],
        _ => (known[n / 2 - 1] + known[n / 2]) / 2,
    };
    let mut order: Vec<usize> = (0..keys.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(recent_ms.get(&keys[i]).copied().unwrap_or(median)));
    order
}

fn failed(duration_ms: u64, error: String) -> Outcome {
    Outcome {
        status: "error",
        action: None,
        duration_ms,
        rows: 0,
        bytes: 0,
        error: Some(error),
    }
}

fn skipped(reason: String) -> Outcome {
    Outcome {
        status: "skipped",
        action: None,
        duration_ms: 0,
        rows: 0,
        bytes: 0,
        error: Some(reason),
    }
}

type Task = std::pin::Pin<Box<dyn std::future::Future<Output = TaskResult> + Send>>;

/// Called when a worker slot is free: decides whether the view runs now.
fn start_view<C: Clock + 'static>(
    shared: &Arc<Shared<C>>,
    view: PlannedView,
    states: &HashMap<String, ViewState>,
) -> Start<Task, TaskResult> {
    let done = |outcome: Outcome| {
        Start::Done(TaskResult {
            result: ViewResult {
                key: view.key.clone(),
                record: view.record.clone(),
                outcome,
            },
            history: None,
            recorded: false,
        })
    };
    let (name, query, hash) = match &view.plan {
        ViewPlan::Invalid(reason) => return done(failed(0, reason.clone())),
        ViewPlan::Valid { name, query, hash } => (name.clone(), query.clone(), hash.clone()),
    };
    let state = states.get(&view.key).cloned().unwrap_or_default();
    let action = match decide(
        &state,
        &hash,
        shared.settings.refresh_concurrently,
        &view.key,
    ) {
        Ok(a) => a,
        Err(reason) => return done(failed(0, reason)),
    };
    let ticket = match lock(&shared.breaker).admit() {
        Admission::Admitted(t) => t,
        Admission::Denied { retry_after } => {
            let last = lock(&shared.last_trouble).clone().unwrap_or_default();
            return done(skipped(format!(
                "circuit breaker open after {} consecutive database failures (last: {last}); not started, the breaker allows a probe in {}s",
                shared.settings.max_failures,
                retry_after.as_secs()
            )));
        }
    };
    let shared = shared.clone();
    Start::Run(Box::pin(async move {
        let mut guard = TicketGuard {
            shared: &shared,
            ticket: Some(ticket),
        };
        let began = Instant::now();
        let ms = |b: Instant| u64::try_from(b.elapsed().as_millis()).unwrap_or(u64::MAX);
        let record = view.record.clone();
        let key = view.key.clone();
        let result = |outcome: Outcome, history, recorded| TaskResult {
            result: ViewResult {
                key: key.clone(),
                record: record.clone(),
                outcome,
            },
            history,
            recorded,
        };
        let mut session = match shared.store.session().await {
            Ok(s) => s,
            Err(e) => {
                guard.finish(&e);
                return result(failed(ms(began), e.message), None, false);
            }
        };
        let history = match session
            .record_start(shared.routes, &shared.run_id, &view.record)
            .await
        {
            Ok(id) => id,
            Err(e) => {
                guard.finish(&e);
                return result(
                    failed(
                        ms(began),
                        format!("could not record the start: {}", e.message),
                    ),
                    None,
                    false,
                );
            }
        };
        // The recorded duration is the view's own work, from its `running` row on.
        let began = Instant::now();
        let rel = Rel {
            schema: name.schema(),
            name: name.name(),
        };
        tracing::debug!(view = %view.key, action = action.label(), "refresh started");
        let outcome = match perform(
            session.as_mut(),
            rel,
            action,
            &query,
            &hash,
            &shared.run_id,
            shared.settings.lock_timeout_ms,
        )
        .await
        {
            Ok(done) => {
                guard.succeed();
                tracing::info!(view = %view.key, action = action.label(), ms = ms(began), rows = done.rows, "refreshed");
                Outcome {
                    status: "success",
                    action: Some(action.label()),
                    duration_ms: ms(began),
                    rows: done.rows,
                    bytes: done.bytes,
                    error: None,
                }
            }
            Err(e) => {
                guard.finish(&e);
                tracing::warn!(view = %view.key, action = action.label(), error = %e, "refresh failed");
                Outcome {
                    action: Some(action.label()),
                    ..failed(ms(began), e.message)
                }
            }
        };
        match session
            .record_finish(
                shared.routes,
                &shared.run_id,
                &view.record,
                Some(history),
                &outcome,
            )
            .await
        {
            Ok(()) => result(outcome, Some(history), true),
            // Retried once on the run's own connection at the end.
            Err(e) => {
                tracing::warn!(view = %view.key, error = %e, "could not record the outcome; retrying at the end of the run");
                result(outcome, Some(history), false)
            }
        }
    }))
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
    use crate::processors::fake::{own_error, trouble, FakeStore};
    use crate::repositories::{ManifestRow, ReportType};
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
            lock_timeout_ms: 1000,
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

    fn statuses(r: &RunReport) -> Vec<(&str, &str)> {
        r.results
            .iter()
            .map(|v| (v.key.as_str(), v.outcome.status))
            .collect()
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

    #[tokio::test]
    async fn breaker_opens_on_database_trouble_and_skips_the_rest() {
        let rows: Vec<_> = (1..=6)
            .map(|i| manifest(i, &format!("s.v{i}"), "SELECT 1"))
            .collect();
        let s = store(rows);
        for k in ["s.v1", "s.v2"] {
            s.state().failures.insert(
                k.into(),
                trouble("terminating connection due to administrator command"),
            );
        }
        let r = run(&s, 1, 2).await;
        assert_eq!(
            statuses(&r),
            [
                ("s.v1", "error"),
                ("s.v2", "error"),
                ("s.v3", "skipped"),
                ("s.v4", "skipped"),
                ("s.v5", "skipped"),
                ("s.v6", "skipped")
            ]
        );
        let reason = r.results[2].outcome.error.clone().unwrap();
        assert!(
            reason.contains("circuit breaker open") && reason.contains("administrator command"),
            "{reason}"
        );
        assert_eq!(
            s.state().calls.len(),
            2,
            "nothing starts while the breaker is open"
        );
        assert_eq!(s.state().finished.len(), 6);
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
    fn longest_expected_first_unknown_as_median_ties_in_manifest_order() {
        let keys: Vec<String> = ["a", "b", "c", "d", "e"].iter().map(|s| s.to_string()).collect();
        let ms: HashMap<String, u64> =
            [("a", 100), ("b", 2000), ("d", 300)].iter().map(|(k, v)| (k.to_string(), *v)).collect();
        // median of 100, 300, 2000 is 300: c and e count as 300, after b, tied with d in order.
        assert_eq!(longest_first(&keys, &ms), [1, 2, 3, 4, 0]);
        assert_eq!(longest_first(&keys, &HashMap::new()), [0, 1, 2, 3, 4]);
    }

    #[tokio::test]
    async fn long_views_start_first_and_results_stay_in_manifest_order() {
        let rows: Vec<_> = (1..=4).map(|i| manifest(i, &format!("s.v{i}"), "SELECT 1")).collect();
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
    async fn existing_views_are_refreshed_changed_ones_rebuilt_and_tables_left_alone() {
        let s = store(vec![
            manifest(1, "s.same", "SELECT 1"),
            manifest(2, "s.changed", "SELECT 2"),
            manifest(3, "s.table", "SELECT 3"),
        ]);
        {
            let mut st = s.state();
            let mv = |hash: &str| ViewState {
                schema_exists: true,
                oid: Some(7),
                relkind: Some('m'),
                populated: true,
                has_concurrent_index: false,
                stored_hash: Some(hash.into()),
            };
            st.views.insert(
                "s.same".into(),
                mv(&super::super::planner::hash_query("SELECT 1")),
            );
            st.views.insert("s.changed".into(), mv("stale"));
            st.views.insert(
                "s.table".into(),
                ViewState {
                    relkind: Some('r'),
                    ..mv("x")
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
}
