//! Run bookkeeping: one `seeder_run` row per run; per view one history row (`running`, then its
//! final status), the job status upsert and the per-run detail.

use std::collections::HashMap;

use deadpool_postgres::ClientWrapper;
use etl_core::DbError;
use tokio_postgres::types::Type;
use tokio_postgres::Client;

use super::manifests::ReportType;

pub type HistoryId = i64;

const HISTORY: &str = "reporting.seeder_run_history";
const STATUS: &str = "reporting.seeder_job_status";
const CANNED_HISTORY: &str = "reporting.seeder_canned_run_history";
const CANNED_STATUS: &str = "reporting.seeder_canned_job_status";

/// Where canned views' rows go. The old tables hold them unless their `manifest_id` is a foreign
/// key (as Django creates it, to the custom manifest table): then the tool's own tables do,
/// so no outcome is lost and no other team's constraint is touched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HistoryRoutes {
    pub canned_history_in_own_table: bool,
    pub canned_status_in_own_table: bool,
}

impl HistoryRoutes {
    fn tables(self, report_type: ReportType) -> (&'static str, &'static str) {
        match report_type {
            ReportType::Custom => (HISTORY, STATUS),
            ReportType::Canned => (
                if self.canned_history_in_own_table {
                    CANNED_HISTORY
                } else {
                    HISTORY
                },
                if self.canned_status_in_own_table {
                    CANNED_STATUS
                } else {
                    STATUS
                },
            ),
        }
    }
}

/// The identity of one view in the old tables' terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViewRecord {
    pub table_name: String,
    /// The custom manifest's id, or the canned report's id.
    pub manifest_id: i64,
    pub report_name: String,
    pub report_type: ReportType,
    pub agency_id: i64,
    /// For a canned view shared by several agencies, their slugs joined by commas.
    pub agency_slug: String,
}

/// How one view ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// `success`, `error` or `skipped`.
    pub status: &'static str,
    /// `create`, `refresh`, `refresh concurrently`, `rebuild`, or none when nothing ran.
    pub action: Option<&'static str>,
    pub duration_ms: u64,
    pub rows: i64,
    pub bytes: i64,
    /// PostgreSQL's message, or the reason for the skip.
    pub error: Option<String>,
    /// Attempts made (transient failures are retried).
    pub attempts: i32,
    /// pg_stat_statements figures of the refresh statement in this run, when available.
    pub statement: Option<StatementFigures>,
}

/// What the database spent on a view's refresh statement in one run.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct StatementFigures {
    /// This run's share; unknown when there is no baseline yet (the next run has one).
    pub delta: Option<StatementDelta>,
    /// The statement's cumulative counters now: the next run's baseline.
    pub totals: super::StatementTotals,
}

#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct StatementDelta {
    pub exec_ms: f64,
    pub blks_hit: i64,
    pub blks_read: i64,
    pub blks_written: i64,
    pub temp_blks_written: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RunCounts {
    pub views: i32,
    pub succeeded: i32,
    pub failed: i32,
    pub skipped: i32,
}

const ROUTES: &str = "
    SELECT coalesce(bool_or(c.conrelid = 'reporting.seeder_run_history'::regclass), false),
           coalesce(bool_or(c.conrelid = 'reporting.seeder_job_status'::regclass), false)
    FROM pg_constraint c
    JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = ANY (c.conkey)
    WHERE c.contype = 'f' AND a.attname = 'manifest_id'
      AND c.conrelid IN ('reporting.seeder_run_history'::regclass, 'reporting.seeder_job_status'::regclass)";

pub async fn routes(client: &Client) -> Result<HistoryRoutes, DbError> {
    let r = client.query_typed_one(ROUTES, &[]).await?;
    Ok(HistoryRoutes {
        canned_history_in_own_table: r.try_get(0)?,
        canned_status_in_own_table: r.try_get(1)?,
    })
}

/// This machine's name: `HOSTNAME` where it is set (a pod's name under Kubernetes), else the
/// kernel's (bash does not export `HOSTNAME`, so cron and systemd runs have none).
fn host_name() -> Option<String> {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
}

/// The run's shared lock, then its `running` row, in one statement: a signal that cancels the
/// wait for the lock leaves no row behind (two statements sent together could lose the lock
/// and still write the row, which the next run then took for a dead run).
const LOCK_AND_BEGIN_RUN: &str =
    "WITH l AS MATERIALIZED (SELECT pg_advisory_lock_shared($7, hashtext($1::text)))
     INSERT INTO reporting.seeder_run (run_id, job, arguments, started_at, status, host, pid,
         views, selected)
     SELECT $1, $2, $3, now(), 'running', $4, $5, cardinality($6::text[]), $6 FROM l";

/// The run's lock and `running` row (see [`LOCK_AND_BEGIN_RUN`]): once per run, sent with its
/// parameter types in one round trip rather than prepared.
pub async fn lock_and_begin_run(
    client: &Client,
    run_id: &str,
    job: &str,
    arguments: &str,
    selected: &[String],
) -> Result<(), DbError> {
    let host = host_name();
    let pid = i32::try_from(std::process::id()).unwrap_or_default();
    client
        .execute_typed(
            LOCK_AND_BEGIN_RUN,
            &[
                (&run_id, Type::TEXT),
                (&job, Type::TEXT),
                (&arguments, Type::TEXT),
                (&host, Type::TEXT),
                (&pid, Type::INT4),
                (&selected, Type::TEXT_ARRAY),
                (&super::locks::RUN_CLASS, Type::INT4),
            ],
        )
        .await?;
    Ok(())
}

const FINISH_RUN: &str = "UPDATE reporting.seeder_run
     SET finished_at = now(), status = $2, views = $3, succeeded = $4, failed = $5, skipped = $6
     WHERE run_id = $1";

/// The run's end row, written once per run: sent with its parameter types in one round trip
/// rather than prepared.
pub async fn finish_run(
    client: &Client,
    run_id: &str,
    status: &str,
    c: RunCounts,
) -> Result<(), DbError> {
    client
        .execute_typed(
            FINISH_RUN,
            &[
                (&run_id, Type::TEXT),
                (&status, Type::TEXT),
                (&c.views, Type::INT4),
                (&c.succeeded, Type::INT4),
                (&c.failed, Type::INT4),
                (&c.skipped, Type::INT4),
            ],
        )
        .await?;
    Ok(())
}

/// Joined into a view's start and outcome statements: their transaction commits without waiting
/// for its WAL to reach disk (`synchronous_commit = off` for that transaction only). Other
/// sessions see the rows at once all the same. The refresh that follows a start, and the run's
/// end row, commit as the server is configured, and flushing their WAL flushes these rows'
/// too; a server crash in between loses at most the last moment's rows of a run that then
/// fails anyway (the next run marks it abandoned). Two WAL flushes fewer per view: the
/// bookkeeping no longer waits for the disk between one refresh and the next.
const ASYNC_COMMIT: &str = "(SELECT set_config('synchronous_commit', 'off', true)) AS async_commit";

/// The `running` row's insert for views of `report_type`.
fn start_sql(routes: HistoryRoutes, report_type: ReportType) -> String {
    let (history, status) = routes.tables(report_type);
    // Every NOT NULL column is named: Django-created tables have no database defaults.
    format!(
        "INSERT INTO {history} (run_id, manifest_id, table_name, report_name, agency_id, agency_slug,
             report_type, status, start_time, records_processed, bytes_processed,
             consecutive_failures, created_at, updated_at)
         SELECT $1::text, $2::bigint, $3::text, $4::text, $5::bigint, $6::text, $7::text, 'running', now(), 0, 0,
             coalesce((SELECT consecutive_failures FROM {status} WHERE table_name = $3::text), 0),
             now(), now()
         FROM {ASYNC_COMMIT}
         RETURNING id::bigint"
    )
}

/// Prepares (or finds prepared) the statements one view's start and outcome use. Sessions that
/// pipeline them with the lock's call this first, so the statements go out in the order they
/// are sent: a statement still being prepared would otherwise run after the lock's.
pub async fn prepare_view_pair(
    client: &ClientWrapper,
    routes: HistoryRoutes,
    report_type: ReportType,
    has_row: bool,
) -> Result<(), DbError> {
    let start = start_sql(routes, report_type);
    let finish = finish_sql(routes, report_type, has_row);
    super::prepare_all(client, &[&start, &finish]).await
}

/// Prepares the start and finish statements of both report types on this connection, all sent
/// at once, so a worker's first view waits for none of them.
pub async fn prepare_view_statements(
    client: &ClientWrapper,
    routes: HistoryRoutes,
) -> Result<(), DbError> {
    let (custom, canned) = tokio::join!(
        prepare_view_pair(client, routes, ReportType::Custom, true),
        prepare_view_pair(client, routes, ReportType::Canned, true),
    );
    custom.and(canned)
}

pub async fn record_start(
    client: &ClientWrapper,
    routes: HistoryRoutes,
    run_id: &str,
    v: &ViewRecord,
) -> Result<HistoryId, DbError> {
    let sql = start_sql(routes, v.report_type);
    // Prepared once per connection: the hot path runs it for every view.
    let statement = client.prepare_cached(&sql).await?;
    let row = client
        .query_one(
            &statement,
            &[
                &run_id,
                &v.manifest_id,
                &v.table_name,
                &v.report_name,
                &v.agency_id,
                &v.agency_slug,
                &v.report_type.as_str(),
            ],
        )
        .await?;
    Ok(row.try_get(0)?)
}

/// The outcome's statement for views of `report_type`: it completes the `running` row when
/// there is one (`has_row`), or inserts a whole row.
fn finish_sql(routes: HistoryRoutes, report_type: ReportType, has_row: bool) -> String {
    let (history, status) = routes.tables(report_type);
    let history_write = if has_row {
        format!(
            "UPDATE {history}
             SET status = $7::text, duration_seconds = $8::integer,
                 -- Server time throughout: the row is written as the work ends (after every
                 -- attempt: the duration is the last one's, so start plus duration would be
                 -- early for a view that was retried).
                 finish_time = now(), records_processed = $9::bigint,
                 bytes_processed = $10::bigint, errors = $11::text, consecutive_failures = (SELECT n FROM cf),
                 updated_at = now()
             WHERE id = $12::bigint
             RETURNING id::bigint AS id, start_time, finish_time"
        )
    } else {
        format!(
            "INSERT INTO {history} (run_id, manifest_id, table_name, report_name, agency_id,
                 agency_slug, report_type, status, start_time, finish_time, duration_seconds,
                 records_processed, bytes_processed, errors, consecutive_failures, created_at,
                 updated_at)
             SELECT $1::text, $2::bigint, $3::text, $4::text, $5::bigint, $6::text, $13::text, $7::text, now(), now(), $8::integer, $9::bigint, $10::bigint,
                 $11::text, (SELECT n FROM cf), now(), now()
             WHERE $12::bigint IS NULL
             RETURNING id::bigint AS id, start_time, finish_time"
        )
    };
    // consecutive_failures counts errors only: a skip leaves it as it was. It stops at the
    // largest value the column holds (an old table's may be smallint or integer) rather than
    // losing the outcome to an out-of-range error.
    format!(
        "WITH prev AS (
             SELECT coalesce((SELECT consecutive_failures FROM {status} WHERE table_name = $3::text), 0) AS n
             FROM {ASYNC_COMMIT}
         ), cf AS (
             SELECT CASE $7::text
                 WHEN 'error' THEN least(n::numeric + 1, (
                     SELECT min(CASE atttypid WHEN 'int2'::regtype THEN 32767
                                              WHEN 'int4'::regtype THEN 2147483647
                                              ELSE 9223372036854775807 END)
                     FROM pg_attribute
                     WHERE attrelid IN ('{history}'::regclass, '{status}'::regclass)
                       AND attname = 'consecutive_failures'))
                 WHEN 'success' THEN 0 ELSE n END AS n FROM prev
         ), h AS (
             {history_write}
         ), s AS (
             INSERT INTO {status} AS s (table_name, manifest_id, report_name, report_type, agency_id,
                 agency_slug, status, duration_seconds, start_time, consecutive_failures,
                 last_run_id, last_errors, updated_at)
             SELECT $3::text, $2::bigint, $4::text, $13::text, $5::bigint, $6::text, $7::text, $8::integer, h.start_time,
                 (SELECT n FROM cf), $1::text, $11::text, now()
             FROM h
             ON CONFLICT (table_name) DO UPDATE SET
                 manifest_id = EXCLUDED.manifest_id, report_name = EXCLUDED.report_name,
                 report_type = EXCLUDED.report_type, agency_id = EXCLUDED.agency_id,
                 agency_slug = EXCLUDED.agency_slug, status = EXCLUDED.status,
                 duration_seconds = EXCLUDED.duration_seconds, start_time = EXCLUDED.start_time,
                 consecutive_failures = EXCLUDED.consecutive_failures,
                 last_run_id = EXCLUDED.last_run_id, last_errors = EXCLUDED.last_errors,
                 updated_at = EXCLUDED.updated_at
         )
         INSERT INTO reporting.seeder_view_run (run_id, table_name, history_table, history_id,
             report_type, status, action, duration_ms, rows, bytes, error, finished_at, attempts,
             db_exec_ms, shared_blks_hit, shared_blks_read, shared_blks_written, temp_blks_written,
             pgss_queryid, pgss_totals)
         SELECT $1::text, $3::text, '{history}', h.id, $13::text, $7::text, $14::text, $15::bigint,
             -- The view's size is known only when it was refreshed (the old tables say 0).
             CASE WHEN $7::text = 'success' THEN $9::bigint END, CASE WHEN $7::text = 'success' THEN $10::bigint END,
             $11::text, h.finish_time, $16::integer,
             $17::float8, $18::bigint, $19::bigint, $20::bigint, $21::bigint, $22::bigint, $23::jsonb
         FROM h
         ON CONFLICT (run_id, table_name) DO UPDATE SET
             history_table = EXCLUDED.history_table, history_id = EXCLUDED.history_id,
             status = EXCLUDED.status, action = EXCLUDED.action,
             duration_ms = EXCLUDED.duration_ms, rows = EXCLUDED.rows, bytes = EXCLUDED.bytes,
             error = EXCLUDED.error, finished_at = EXCLUDED.finished_at,
             attempts = EXCLUDED.attempts, db_exec_ms = EXCLUDED.db_exec_ms,
             shared_blks_hit = EXCLUDED.shared_blks_hit, shared_blks_read = EXCLUDED.shared_blks_read,
             shared_blks_written = EXCLUDED.shared_blks_written,
             temp_blks_written = EXCLUDED.temp_blks_written, pgss_queryid = EXCLUDED.pgss_queryid,
             pgss_totals = EXCLUDED.pgss_totals"
    )
}

pub async fn record_finish(
    client: &ClientWrapper,
    routes: HistoryRoutes,
    run_id: &str,
    v: &ViewRecord,
    history_id: Option<HistoryId>,
    o: &Outcome,
) -> Result<(), DbError> {
    let sql = finish_sql(routes, v.report_type, history_id.is_some());
    let seconds = whole_seconds(o.duration_ms);
    let ms = i64::try_from(o.duration_ms).unwrap_or(i64::MAX);
    let statement = client.prepare_cached(&sql).await?;
    client
        .execute(
            &statement,
            &[
                &run_id,
                &v.manifest_id,
                &v.table_name,
                &v.report_name,
                &v.agency_id,
                &v.agency_slug,
                &o.status,
                &seconds,
                &o.rows,
                &o.bytes,
                &o.error,
                &history_id,
                &v.report_type.as_str(),
                &o.action,
                &ms,
                &o.attempts,
                &o.statement.and_then(|f| f.delta).map(|d| d.exec_ms),
                &o.statement.and_then(|f| f.delta).map(|d| d.blks_hit),
                &o.statement.and_then(|f| f.delta).map(|d| d.blks_read),
                &o.statement.and_then(|f| f.delta).map(|d| d.blks_written),
                &o.statement
                    .and_then(|f| f.delta)
                    .map(|d| d.temp_blks_written),
                &o.statement.map(|f| f.totals.queryid),
                &o.statement.map(|f| f.totals.to_json()),
            ],
        )
        .await?;
    Ok(())
}

// The last five successful durations per view, through the (table_name, finished_at) index.
// A view recreated by its upstream's rebuild did not time its own work: not one of them.
const RECENT_DURATIONS: &str = "
    SELECT k.t, (SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY x.d)
                 FROM (SELECT r.duration_ms AS d FROM reporting.seeder_view_run r
                       WHERE r.table_name = k.t AND r.status = 'success'
                         AND r.action IS DISTINCT FROM 'rebuilt with upstream'
                       ORDER BY r.finished_at DESC LIMIT 5) x)::bigint
    FROM unnest($1::text[]) AS k(t)";

/// The median of each view's recent successful durations, in milliseconds; views that never
/// succeeded are absent.
pub async fn recent_durations(
    client: &Client,
    keys: &[String],
) -> Result<HashMap<String, u64>, DbError> {
    let mut out = HashMap::new();
    for r in client
        .query_typed(RECENT_DURATIONS, &[(&keys, Type::TEXT_ARRAY)])
        .await?
    {
        let ms: Option<i64> = r.try_get(1)?;
        if let Some(ms) = ms {
            out.insert(r.try_get(0)?, u64::try_from(ms).unwrap_or(0));
        }
    }
    Ok(out)
}

/// The old columns' whole seconds, rounded up (a 300 ms refresh took 1 s, not none);
/// milliseconds are in seeder_view_run.
fn whole_seconds(ms: u64) -> i32 {
    i32::try_from(ms.div_ceil(1000)).unwrap_or(i32::MAX)
}

/// The newest run that is over (a live one is no run to repeat: its views are locked by it) and
/// had views: ones it selected (recorded at its start: a run killed before it reached any view
/// has them all to retry) or history rows (runs from before that record). One that selected none
/// has nothing to retry.
pub async fn last_run_id(client: &Client) -> Result<Option<String>, DbError> {
    // A run still `running` whose lock nobody holds is over too (killed, its connections
    // gone): the next run's recovery marks it abandoned, and `plan --retry` must name the run
    // `retry` will take without doing that first.
    let sql = format!(
        "SELECT r.run_id FROM reporting.seeder_run r
         WHERE (r.status <> 'running' OR NOT {})
           AND (cardinality(r.selected) > 0
            OR EXISTS (SELECT 1 FROM reporting.seeder_view_run v WHERE v.run_id = r.run_id)
            OR EXISTS (SELECT 1 FROM reporting.seeder_run_history h WHERE h.run_id = r.run_id)
            OR EXISTS (SELECT 1 FROM reporting.seeder_canned_run_history h
                       WHERE h.run_id = r.run_id))
         ORDER BY r.started_at DESC LIMIT 1",
        super::locks::run_lock_held("r.run_id", "$1")
    );
    Ok(client
        .query_opt(&sql, &[&super::locks::RUN_CLASS])
        .await?
        .map(|r| r.try_get(0))
        .transpose()?)
}

/// The views of a run that did not end in success: `error`, `skipped` or `cancelled`, and those
/// it never finished (its history row still `running`, or `abandoned` by a later run's
/// recovery, or no row at all: selected, and never reached by a run that was killed). `None` when no such run is recorded.
pub async fn unfinished_views(client: &Client, run_id: &str) -> Result<RetryViews, DbError> {
    // Still going: `running`, and its lock held (by its own connections).
    let sql = format!(
        "SELECT r.status = 'running' AND {} FROM reporting.seeder_run r WHERE r.run_id = $1::text",
        super::locks::run_lock_held("r.run_id", "$2")
    );
    let live: Option<bool> = client
        .query_opt(&sql, &[&run_id, &super::locks::RUN_CLASS])
        .await?
        .map(|r| r.try_get(0))
        .transpose()?;
    match live {
        None => return Ok(RetryViews::Unknown),
        Some(true) => return Ok(RetryViews::StillRunning),
        Some(false) => {}
    }
    client
        .query(
            "SELECT table_name FROM reporting.seeder_view_run
             WHERE run_id = $1::text AND status IN ('error', 'skipped', 'cancelled', 'abandoned')
             UNION
             -- What a killed run selected but never reached (recorded at its start).
             SELECT k FROM reporting.seeder_run r, unnest(r.selected) AS k
             WHERE r.run_id = $1::text AND NOT EXISTS (
                 SELECT 1 FROM reporting.seeder_view_run v
                 WHERE v.run_id = $1::text AND v.table_name = k AND v.status = 'success')
             UNION
             (SELECT h.table_name::text FROM reporting.seeder_run_history h
              WHERE h.run_id = $1::text AND h.status::text IN ('running', 'abandoned')
              UNION
              SELECT h.table_name::text FROM reporting.seeder_canned_run_history h
              WHERE h.run_id = $1::text AND h.status::text IN ('running', 'abandoned'))
             ORDER BY 1",
            &[&run_id],
        )
        .await?
        .iter()
        .map(|r| Ok(r.try_get(0)?))
        .collect::<Result<Vec<String>, DbError>>()
        .map(RetryViews::Views)
}

/// What `retry` finds of the run it is asked to repeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RetryViews {
    /// No such run is recorded.
    Unknown,
    /// The run is still going: its views are its own.
    StillRunning,
    /// It is over; these views did not succeed in it.
    Views(Vec<String>),
}

const LAST_SUCCESSES: &str = "
    SELECT k.t, (SELECT extract(epoch FROM max(v.finished_at))::float8
                 FROM reporting.seeder_view_run v
                 WHERE v.table_name = k.t AND v.status = 'success')
    FROM unnest($1::text[]) AS k(t)";

/// When each view last succeeded (seconds since the epoch), for those that ever did. Read once
/// per run, at its end: sent with its parameter type in one round trip rather than prepared.
pub async fn last_successes(
    client: &Client,
    keys: &[String],
) -> Result<HashMap<String, f64>, DbError> {
    let mut out = HashMap::new();
    for r in client
        .query_typed(LAST_SUCCESSES, &[(&keys, Type::TEXT_ARRAY)])
        .await?
    {
        if let Some(at) = r.try_get::<_, Option<f64>>(1)? {
            out.insert(r.try_get(0)?, at);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::whole_seconds;

    #[test]
    fn seconds_are_rounded_up() {
        let cases = [
            (0, 0),
            (1, 1),
            (318, 1),
            (999, 1),
            (1000, 1),
            (1210, 2),
            (3510, 4),
        ];
        for (ms, s) in cases {
            assert_eq!(whole_seconds(ms), s, "{ms} ms");
        }
    }
}
