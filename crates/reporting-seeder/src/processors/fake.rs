//! An in-memory [`Store`] for unit tests of the processors.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use etl_core::{DbError, FailureKind};

use crate::repositories::{
    Built, Canceller, HistoryId, HistoryRoutes, ManifestRow, Outcome, Recovery, Rel, RunCounts,
    RunRow, Session, StatementTotals, StatusRow, Store, ViewLock, ViewRecord, ViewRunRow,
    ViewState, ViewStats,
};

#[derive(Default)]
pub struct FakeState {
    pub manifests: Vec<ManifestRow>,
    pub views: HashMap<String, ViewState>,
    /// Scripted failures by `schema.name` for create/refresh/rebuild.
    pub failures: HashMap<String, DbError>,
    /// Every DDL-ish call, in order: ("create" | "refresh" | "rebuild" | ..., key).
    pub calls: Vec<(String, String)>,
    /// (history id, table, status) of every history write.
    pub started: Vec<(HistoryId, String)>,
    pub finished: Vec<(Option<HistoryId>, String, Outcome)>,
    pub connect_error: Option<DbError>,
    next_id: HistoryId,
    pub in_flight: usize,
    pub peak_in_flight: usize,
    pub durations: HashMap<String, u64>,
    /// (reader, read) pairs the catalog reports.
    pub catalog_edges: Vec<(String, String)>,
    /// What a rebuild of a key recreates with it.
    pub rebuilt_dependents: HashMap<String, Vec<String>>,
    pub last_run: Option<String>,
    pub unfinished: Vec<String>,
    /// Views another run holds.
    pub locked: HashMap<String, ViewLock>,
    /// Failures that happen only on the first attempt of a key (then it succeeds).
    pub fail_once: HashMap<String, DbError>,
    /// The views each catalog inspection asked for, by `schema.name`.
    pub inspected: Vec<Vec<String>>,
    /// How many times the throttle asked for the server's active queries.
    pub active_checks: usize,
    /// How many of the next checks find the server busy (then it is not).
    pub busy_checks: usize,
    /// How many times the idle connections were closed.
    pub idle_closed: usize,
    /// A signal that arrives as soon as a rebuild is done.
    pub interrupt_after_rebuild: Option<etl_core::job::Interrupt>,
    /// Failures of the first attempt to take a key's lock (then it is taken).
    pub lock_fails_once: HashMap<String, DbError>,
    /// Failures of a rebuild's swap, one per swap of the key, in order (then it succeeds).
    pub swap_failures: HashMap<String, Vec<DbError>>,
    /// The key of every swap tried, in order.
    pub swaps: Vec<String>,
    /// Every temporary view dropped, by `schema.name`.
    pub dropped_temporaries: Vec<String>,
}

#[derive(Clone, Default)]
pub struct FakeStore(pub Arc<Mutex<FakeState>>);

impl FakeStore {
    pub fn state(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub fn trouble(msg: &str) -> DbError {
    DbError {
        kind: FailureKind::DatabaseTrouble,
        code: Some("57P01".into()),
        connect: false,
        message: msg.into(),
    }
}

pub fn own_error(msg: &str) -> DbError {
    DbError {
        kind: FailureKind::OwnError,
        code: Some("22012".into()),
        connect: false,
        message: msg.into(),
    }
}

#[async_trait]
impl Store for FakeStore {
    async fn session(&self) -> Result<Box<dyn Session>, DbError> {
        if let Some(e) = self.state().connect_error.clone() {
            return Err(e);
        }
        Ok(Box::new(self.clone()))
    }
    async fn snapshots(&self) -> Result<Box<dyn crate::repositories::Snapshots>, DbError> {
        Err(DbError::other("the fake store keeps no snapshots".into()))
    }
    fn close_idle(&self) {
        self.state().idle_closed += 1;
    }
}

impl FakeStore {
    async fn ddl(&mut self, what: &str, key: String) -> Result<(), DbError> {
        {
            let mut s = self.state();
            s.calls.push((what.to_string(), key.clone()));
            s.in_flight += 1;
            s.peak_in_flight = s.peak_in_flight.max(s.in_flight);
        }
        tokio::task::yield_now().await;
        let mut s = self.state();
        s.in_flight -= 1;
        if let Some(e) = s.fail_once.remove(&key) {
            return Err(e);
        }
        match s.failures.get(&key) {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }
}

#[async_trait]
impl Session for FakeStore {
    async fn migrate(&mut self) -> Result<Vec<String>, DbError> {
        Ok(vec![])
    }
    async fn load_manifests(&mut self) -> Result<Vec<ManifestRow>, DbError> {
        Ok(self.state().manifests.clone())
    }
    async fn inspect(&mut self, views: &[Rel<'_>]) -> Result<HashMap<String, ViewState>, DbError> {
        // As the repository does: only the views asked for.
        let keys: Vec<String> = views.iter().map(|v| v.key()).collect();
        let mut state = self.state();
        state.inspected.push(keys.clone());
        Ok(keys
            .into_iter()
            .filter_map(|k| state.views.get(&k).map(|v| (k, v.clone())))
            .collect())
    }
    async fn history_routes(&mut self) -> Result<HistoryRoutes, DbError> {
        Ok(HistoryRoutes::default())
    }
    async fn recent_durations(&mut self, keys: &[String]) -> Result<HashMap<String, u64>, DbError> {
        // As the repository does: only the keys asked for.
        let state = self.state();
        Ok(keys
            .iter()
            .filter_map(|k| state.durations.get(k).map(|&ms| (k.clone(), ms)))
            .collect())
    }
    async fn view_dependencies(
        &mut self,
        readers: &[Rel<'_>],
    ) -> Result<Vec<(String, String)>, DbError> {
        // As the repository does: only the pairs of the readers asked for.
        let readers: HashSet<String> = readers.iter().map(|r| r.key()).collect();
        Ok(self
            .state()
            .catalog_edges
            .iter()
            .filter(|(reader, _)| readers.contains(reader))
            .cloned()
            .collect())
    }
    async fn search_path(&mut self) -> Result<Vec<String>, DbError> {
        Ok(vec!["public".into()])
    }
    async fn last_successes(&mut self, _: &[String]) -> Result<HashMap<String, f64>, DbError> {
        Ok(HashMap::new())
    }
    async fn view_status(&mut self, _: &[String]) -> Result<Vec<StatusRow>, DbError> {
        Ok(Vec::new())
    }
    async fn runs(&mut self, _: i64) -> Result<Vec<RunRow>, DbError> {
        Ok(Vec::new())
    }
    async fn run_views(&mut self, _: &str) -> Result<Option<Vec<ViewRunRow>>, DbError> {
        Ok(Some(Vec::new()))
    }
    async fn table_history(&mut self, _: &str, _: i64) -> Result<Vec<ViewRunRow>, DbError> {
        Ok(Vec::new())
    }
    async fn last_run_id(&mut self) -> Result<Option<String>, DbError> {
        Ok(self.state().last_run.clone())
    }
    async fn unfinished_views(
        &mut self,
        _: &str,
    ) -> Result<crate::repositories::history::RetryViews, DbError> {
        Ok(crate::repositories::history::RetryViews::Views(
            self.state().unfinished.clone(),
        ))
    }
    async fn start_run(&mut self, _: &str, _: &str, _: &str, _: &[String]) -> Result<(), DbError> {
        Ok(())
    }
    async fn finish_run(&mut self, _: &str, _: &str, _: RunCounts) -> Result<(), DbError> {
        Ok(())
    }
    async fn record_start(
        &mut self,
        _: HistoryRoutes,
        _: &str,
        view: &ViewRecord,
    ) -> Result<HistoryId, DbError> {
        let mut s = self.state();
        s.next_id += 1;
        let id = s.next_id;
        s.started.push((id, view.table_name.clone()));
        Ok(id)
    }
    async fn record_finish(
        &mut self,
        _: HistoryRoutes,
        _: &str,
        view: &ViewRecord,
        history: Option<HistoryId>,
        outcome: &Outcome,
    ) -> Result<(), DbError> {
        self.state()
            .finished
            .push((history, view.table_name.clone(), outcome.clone()));
        Ok(())
    }
    async fn create_view(
        &mut self,
        view: Rel<'_>,
        _: bool,
        _: &str,
        _: &str,
        _: &str,
    ) -> Result<u64, DbError> {
        self.ddl("create", view.key()).await.map(|_| 1)
    }
    async fn refresh_view(&mut self, view: Rel<'_>, concurrently: bool) -> Result<(), DbError> {
        let what = if concurrently {
            "refresh concurrently"
        } else {
            "refresh"
        };
        self.ddl(what, view.key()).await
    }
    async fn build_view(&mut self, view: Rel<'_>, _: &str, _: &str) -> Result<Built, DbError> {
        self.ddl("rebuild", view.key()).await?;
        Ok(Built::fake())
    }
    async fn swap_view(
        &mut self,
        view: Rel<'_>,
        _: &str,
        _: &Built,
        _: &str,
        _: &str,
        _: u64,
        _: &crate::repositories::Managed,
    ) -> Result<Vec<String>, DbError> {
        let (dependents, interrupt) = {
            let mut s = self.state();
            s.swaps.push(view.key());
            if let Some(e) = (s.swap_failures.get_mut(&view.key()))
                .filter(|q| !q.is_empty())
                .map(|q| q.remove(0))
            {
                return Err(e);
            }
            (
                s.rebuilt_dependents
                    .get(&view.key())
                    .cloned()
                    .unwrap_or_default(),
                s.interrupt_after_rebuild.clone(),
            )
        };
        if let Some(i) = interrupt {
            i.trigger(etl_core::ExitStatus::Terminated);
        }
        Ok(dependents)
    }
    async fn drop_temporary(&mut self, temp: Rel<'_>) {
        self.state().dropped_temporaries.push(temp.key());
    }
    async fn lock_run(&mut self, _: &str) -> Result<(), DbError> {
        Ok(())
    }
    async fn recover(&mut self, _: Option<&str>) -> Result<Recovery, DbError> {
        Ok(Recovery::default())
    }
    async fn lock_view(&mut self, key: &str, _: &str, _: bool) -> Result<ViewLock, DbError> {
        let mut s = self.state();
        if let Some(e) = s.lock_fails_once.remove(key) {
            return Err(e);
        }
        Ok(s.locked.get(key).cloned().unwrap_or(ViewLock::Acquired))
    }
    async fn unlock_view(&mut self, _: &str) -> Result<(), DbError> {
        Ok(())
    }
    async fn set_timeouts(&mut self, _: Option<u64>, _: Option<u64>) -> Result<(), DbError> {
        Ok(())
    }
    async fn active_queries(&mut self) -> Result<i64, DbError> {
        let mut s = self.state();
        s.active_checks += 1;
        if s.busy_checks > 0 {
            s.busy_checks -= 1;
            return Ok(i64::MAX);
        }
        Ok(0)
    }
    async fn rebuild_check(
        &mut self,
        view: Rel<'_>,
        _: u32,
        _: &crate::repositories::Managed,
    ) -> Result<crate::repositories::views::RebuildCheck, DbError> {
        Ok(crate::repositories::views::RebuildCheck {
            blocker: None,
            recreates: self
                .state()
                .rebuilt_dependents
                .get(&view.key())
                .cloned()
                .unwrap_or_default(),
        })
    }
    async fn statements_available(&mut self) -> Result<(), String> {
        Err("the fake store has no pg_stat_statements".into())
    }
    async fn backend_pid(&mut self) -> Result<i32, DbError> {
        Ok(1)
    }
    async fn last_statement(
        &mut self,
        _: i32,
        _: &str,
    ) -> Result<Option<(StatementTotals, Option<StatementTotals>)>, DbError> {
        Ok(None)
    }
    fn canceller(&self) -> Option<Canceller> {
        None
    }
    async fn analyze_view(&mut self, _: Rel<'_>) -> Result<ViewStats, DbError> {
        Ok(ViewStats {
            rows: 1,
            bytes: 8192,
        })
    }
}
