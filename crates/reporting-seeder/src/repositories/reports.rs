//! What `status` and `history` show: current state per view, runs, per-view rows.

use etl_core::DbError;
use tokio_postgres::Client;

/// A view's current state.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StatusRow {
    pub key: String,
    pub status: Option<String>,
    pub consecutive_failures: i32,
    pub last_error: Option<String>,
    /// ISO 8601, UTC.
    pub last_success: Option<String>,
    /// Seconds since the last success.
    pub age_seconds: Option<f64>,
    pub last_duration_ms: Option<i64>,
}

const STATUS: &str = "
    SELECT k.t, js.status, coalesce(js.consecutive_failures, 0), js.last_errors,
           to_char(ls.at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'),
           extract(epoch FROM now() - ls.at)::float8,
           (SELECT v.duration_ms FROM reporting.seeder_view_run v
            WHERE v.table_name = k.t AND v.duration_ms IS NOT NULL
            ORDER BY v.finished_at DESC LIMIT 1)
    FROM unnest($1::text[]) WITH ORDINALITY AS k(t, n)
    LEFT JOIN LATERAL (
        SELECT status::text AS status, consecutive_failures, last_errors, updated_at
        FROM (SELECT table_name, status, consecutive_failures, last_errors, updated_at
              FROM reporting.seeder_job_status
              UNION ALL
              SELECT table_name, status, consecutive_failures, last_errors, updated_at
              FROM reporting.seeder_canned_job_status) s
        WHERE s.table_name = k.t ORDER BY updated_at DESC LIMIT 1) js ON true
    LEFT JOIN LATERAL (
        SELECT greatest(
            (SELECT max(v.finished_at) FROM reporting.seeder_view_run v
             WHERE v.table_name = k.t AND v.status = 'success'),
            CASE WHEN js.status = 'success' THEN js.updated_at END) AS at) ls ON true
    ORDER BY k.n";

pub async fn status(client: &Client, keys: &[String]) -> Result<Vec<StatusRow>, DbError> {
    client
        .query(STATUS, &[&keys])
        .await?
        .iter()
        .map(|r| {
            Ok(StatusRow {
                key: r.try_get(0)?,
                status: r.try_get(1)?,
                consecutive_failures: r.try_get(2)?,
                last_error: r.try_get(3)?,
                last_success: r.try_get(4)?,
                age_seconds: r.try_get(5)?,
                last_duration_ms: r.try_get(6)?,
            })
        })
        .collect()
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct RunRow {
    pub run_id: String,
    pub job: String,
    pub arguments: String,
    pub started_at: String,
    pub wall_seconds: Option<f64>,
    pub status: String,
    pub views: i32,
    pub succeeded: i32,
    pub failed: i32,
    pub skipped: i32,
}

impl RunRow {
    /// Views a run stopped by a signal counted but did not finish (the table has no column for
    /// them); 0 for other runs (a running or abandoned run's others are not known to be done).
    pub fn cancelled(&self) -> i32 {
        self.unfinished_if("cancelled")
    }

    /// Views a killed run never finished: `abandoned` by the run that found it dead (or never
    /// started by it).
    pub fn abandoned(&self) -> i32 {
        self.unfinished_if("abandoned")
    }

    fn unfinished_if(&self, status: &str) -> i32 {
        if self.status == status {
            (self.views - self.succeeded - self.failed - self.skipped).max(0)
        } else {
            0
        }
    }
}

const ISO: &str = "'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'";

pub async fn runs(client: &Client, limit: i64) -> Result<Vec<RunRow>, DbError> {
    // A run recorded `running` whose sessions are all gone (killed) is shown `abandoned` at
    // once, as the next run's recovery will record it.
    let sql = format!(
        "SELECT r.run_id, r.job, r.arguments, to_char(r.started_at AT TIME ZONE 'UTC', {ISO}),
                -- An abandoned run's end is not known (finished_at is when it was found).
                CASE WHEN s.status <> 'abandoned'
                     THEN extract(epoch FROM r.finished_at - r.started_at)::float8 END, s.status,
                r.views,
                -- A run still going writes its counts at its end: until then, what it has
                -- finished so far, from its views' rows.
                CASE WHEN r.status = 'running' THEN l.succeeded ELSE r.succeeded END,
                CASE WHEN r.status = 'running' THEN l.failed ELSE r.failed END,
                CASE WHEN r.status = 'running' THEN l.skipped ELSE r.skipped END
         FROM reporting.seeder_run r
         CROSS JOIN LATERAL (
             SELECT CASE WHEN r.status = 'running' AND NOT {held} THEN 'abandoned'
                         ELSE r.status END AS status) s
         LEFT JOIN LATERAL (
             SELECT count(*) FILTER (WHERE v.status = 'success')::int AS succeeded,
                    count(*) FILTER (WHERE v.status = 'error')::int AS failed,
                    count(*) FILTER (WHERE v.status = 'skipped')::int AS skipped
             FROM reporting.seeder_view_run v
             WHERE r.status = 'running' AND v.run_id = r.run_id) l ON true
         ORDER BY r.started_at DESC LIMIT $1",
        held = super::locks::run_lock_held("r.run_id", "$2")
    );
    client
        .query(&sql, &[&limit, &super::locks::RUN_CLASS])
        .await?
        .iter()
        .map(|r| {
            Ok(RunRow {
                run_id: r.try_get(0)?,
                job: r.try_get(1)?,
                arguments: r.try_get(2)?,
                started_at: r.try_get(3)?,
                wall_seconds: r.try_get(4)?,
                status: r.try_get(5)?,
                views: r.try_get(6)?,
                succeeded: r.try_get(7)?,
                failed: r.try_get(8)?,
                skipped: r.try_get(9)?,
            })
        })
        .collect()
}

/// One view in one run.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ViewRunRow {
    pub run_id: String,
    pub table: String,
    pub report_type: String,
    pub status: String,
    pub action: Option<String>,
    /// None for a view a killed run abandoned: how long it worked on it is not known.
    pub duration_ms: Option<i64>,
    pub rows: Option<i64>,
    pub bytes: Option<i64>,
    pub attempts: i32,
    pub error: Option<String>,
    /// None while the view is still running.
    pub finished_at: Option<String>,
}

fn view_runs_sql(filter: &str) -> String {
    format!(
        "SELECT run_id, table_name, report_type, status, action, duration_ms, rows, bytes, attempts,
                error, to_char(finished_at AT TIME ZONE 'UTC', {ISO})
         FROM reporting.seeder_view_run WHERE {filter}"
    )
}

fn view_run_rows(rows: &[tokio_postgres::Row]) -> Result<Vec<ViewRunRow>, DbError> {
    rows.iter()
        .map(|r| {
            Ok(ViewRunRow {
                run_id: r.try_get(0)?,
                table: r.try_get(1)?,
                report_type: r.try_get(2)?,
                status: r.try_get(3)?,
                action: r.try_get(4)?,
                duration_ms: r.try_get(5)?,
                rows: r.try_get(6)?,
                bytes: r.try_get(7)?,
                attempts: r.try_get(8)?,
                error: r.try_get(9)?,
                finished_at: r.try_get(10)?,
            })
        })
        .collect()
}

// A run's views with an outcome, then those it is working on now (their history row still
// `running`, no outcome yet).
fn in_flight() -> String {
    format!(
        "
    UNION ALL
    SELECT h.run_id::text, h.table_name::text, h.report_type::text,
           -- Its run killed (its sessions gone): abandoned, as the next run's recovery records.
           CASE WHEN {held} THEN 'running' ELSE 'abandoned' END, NULL, NULL, NULL,
           NULL, 0, NULL, NULL
    FROM (SELECT run_id, table_name, report_type, status FROM reporting.seeder_run_history
          UNION ALL
          SELECT run_id, table_name, report_type, status FROM reporting.seeder_canned_run_history) h
    WHERE h.run_id = $1::text AND h.status = 'running'
      AND NOT EXISTS (SELECT 1 FROM reporting.seeder_view_run v
                      WHERE v.run_id = $1::text AND v.table_name = h.table_name)
    ORDER BY 2",
        held = super::locks::run_lock_held("$1::text", "$2")
    )
}

/// A run's views, those still running included; `None` when no such run is recorded.
pub async fn run_views(client: &Client, run_id: &str) -> Result<Option<Vec<ViewRunRow>>, DbError> {
    let sql = format!("{}{}", view_runs_sql("run_id = $1::text"), in_flight());
    let (one, both): (
        [&(dyn tokio_postgres::types::ToSql + Sync); 1],
        [&(dyn tokio_postgres::types::ToSql + Sync); 2],
    ) = ([&run_id], [&run_id, &super::locks::RUN_CLASS]);
    let (known, rows) = tokio::join!(
        client.query_opt("SELECT 1 FROM reporting.seeder_run WHERE run_id = $1", &one),
        client.query(&sql, &both)
    );
    let rows = view_run_rows(&rows?)?;
    if known?.is_none() && rows.is_empty() {
        return Ok(None);
    }
    Ok(Some(rows))
}

pub async fn table_history(
    client: &Client,
    table: &str,
    limit: i64,
) -> Result<Vec<ViewRunRow>, DbError> {
    let rows = client
        .query(
            &view_runs_sql("table_name = $1 ORDER BY finished_at DESC LIMIT $2"),
            &[&table, &limit],
        )
        .await?;
    view_run_rows(&rows)
}
