//! pg_stat_statements: the counters of the statement a worker session ran last.

use etl_core::DbError;
use tokio_postgres::Client;

/// A statement's cumulative pg_stat_statements counters.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct StatementTotals {
    pub queryid: i64,
    pub calls: i64,
    pub exec_ms: f64,
    pub blks_hit: i64,
    pub blks_read: i64,
    pub blks_written: i64,
    pub temp_blks_written: i64,
}

impl StatementTotals {
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "calls": self.calls, "total_exec_time": self.exec_ms,
            "shared_blks_hit": self.blks_hit, "shared_blks_read": self.blks_read,
            "shared_blks_written": self.blks_written, "temp_blks_written": self.temp_blks_written,
        })
    }

    fn from_json(queryid: i64, v: &serde_json::Value) -> Option<StatementTotals> {
        Some(StatementTotals {
            queryid,
            calls: v["calls"].as_i64()?,
            exec_ms: v["total_exec_time"].as_f64()?,
            blks_hit: v["shared_blks_hit"].as_i64()?,
            blks_read: v["shared_blks_read"].as_i64()?,
            blks_written: v["shared_blks_written"].as_i64()?,
            temp_blks_written: v["temp_blks_written"].as_i64()?,
        })
    }
}

// Where the extension is installed, whether that schema is on the search path, and whether the
// server loaded its library (it must be in shared_preload_libraries, possibly quoted or as a
// `$libdir/` path).
const WHERE_INSTALLED: &str = "
    SELECT n.nspname::text, n.nspname = ANY (current_schemas(false)),
           current_setting('shared_preload_libraries') ~ '(^|[\\s,/\"])pg_stat_statements([\\s,\"]|$)'
    FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
    WHERE e.extname = 'pg_stat_statements'";

/// Whether pg_stat_statements can be read here: `Err` says why not. Everything is looked up in
/// the catalog before the view is read, so that a database without it (the usual case), or with
/// it installed but not loaded, gets no ERROR in its server log at every run.
pub async fn available(client: &Client) -> Result<(), String> {
    let found = client
        .query_typed(WHERE_INSTALLED, &[])
        .await
        .map_err(|e| format!("could not look pg_stat_statements up: {e}"))?;
    let Some(row) = found.first() else {
        return Err("pg_stat_statements is not installed in this database (CREATE EXTENSION pg_stat_statements)".into());
    };
    let schema: String = row.try_get(0).map_err(|e| e.to_string())?;
    let on_path: bool = row.try_get(1).map_err(|e| e.to_string())?;
    let loaded: bool = row.try_get(2).map_err(|e| e.to_string())?;
    if !loaded {
        return Err("pg_stat_statements is installed but the server has not loaded it: add it to shared_preload_libraries and restart".into());
    }
    if !on_path {
        return Err(format!(
            "pg_stat_statements is installed in schema {schema}, which is not on the search path: add {schema} to the role's search_path"
        ));
    }
    let readable = client
        // Really read: with `WHERE false` the planner never calls the view's function, so
        // an extension installed but not loaded passed, then failed once per view.
        .query_typed_one(
            "SELECT count(*) FROM (SELECT 1 FROM pg_stat_statements LIMIT 1) s",
            &[],
        )
        .await
        .map_err(|e| format!("pg_stat_statements cannot be read: {e}"));
    readable.map(|_| ())
}

// The statement is found by the query id the server reports for the session that ran it (idle
// since), never by matching its text.
const LAST_STATEMENT: &str = "
    SELECT s.queryid, s.calls, s.total_exec_time, s.shared_blks_hit, s.shared_blks_read,
           s.shared_blks_written, s.temp_blks_written,
           (SELECT v.pgss_totals FROM reporting.seeder_view_run v
            WHERE v.table_name = $2 AND v.pgss_queryid = s.queryid
            ORDER BY v.finished_at DESC LIMIT 1)
    FROM pg_stat_activity a
    JOIN pg_stat_statements s
      ON s.queryid = a.query_id AND s.dbid = a.datid AND s.userid = a.usesysid AND s.toplevel
    WHERE a.pid = $1";

/// The counters of the last statement of backend `pid` now, and as this tool last recorded them
/// for `table`.
pub async fn last_statement(
    client: &Client,
    pid: i32,
    table: &str,
) -> Result<Option<(StatementTotals, Option<StatementTotals>)>, DbError> {
    let Some(r) = client.query_opt(LAST_STATEMENT, &[&pid, &table]).await? else {
        return Ok(None);
    };
    let now = StatementTotals {
        queryid: r.try_get(0)?,
        calls: r.try_get(1)?,
        exec_ms: r.try_get(2)?,
        blks_hit: r.try_get(3)?,
        blks_read: r.try_get(4)?,
        blks_written: r.try_get(5)?,
        temp_blks_written: r.try_get(6)?,
    };
    let before = r
        .try_get::<_, Option<serde_json::Value>>(7)?
        .and_then(|v| StatementTotals::from_json(now.queryid, &v));
    Ok(Some((now, before)))
}

pub async fn backend_pid(client: &Client) -> Result<i32, DbError> {
    Ok(client
        .query_one("SELECT pg_backend_pid()", &[])
        .await?
        .try_get(0)?)
}
