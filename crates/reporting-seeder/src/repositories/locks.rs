//! Advisory locks that keep runs from overlapping, and the recovery of what a killed run left.
//!
//! Every run holds a session lock on its run id for its whole life (shared by its own connection
//! and its workers'), and every refresh a session lock on its view. A run whose lock can be taken
//! is dead; a view whose lock is held is being refreshed by someone else.

use deadpool_postgres::ClientWrapper;
use etl_core::DbError;
use tokio_postgres::types::Type;
use tokio_postgres::Client;

/// Lock classes (the first key of the two-key advisory locks): "RS" + 1 or 2.
pub(super) const RUN_CLASS: i32 = 0x5253_0001;

/// An SQL condition, true while some session holds the lock of the run whose id is the
/// expression `run_id`; `class` is the placeholder bound to [`RUN_CLASS`]. A run's sessions hold
/// it from its start to its end: a run recorded `running` that nobody holds it for is over
/// (killed, its connections gone), and the next run's recovery marks it abandoned.
pub(super) fn run_lock_held(run_id: &str, class: &str) -> String {
    format!(
        "EXISTS (SELECT 1 FROM pg_locks l
                 WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
                   AND l.database = (SELECT oid FROM pg_database
                                     WHERE datname = current_database())
                   AND l.classid = {class}::int4::oid AND l.objid = hashtext({run_id})::oid)"
    )
}
const VIEW_CLASS: i32 = 0x5253_0002;

// Shared: the run's own connection and each of its workers' hold it, and another run's
// recovery, which takes it exclusively and only without waiting, finds it free only when every
// one of them is gone.
const LOCK_RUN: &str = "SELECT pg_advisory_lock_shared($1, hashtext($2))";

/// Held by a run for its whole life, on its own connection. Taken once per run (again only when
/// the run's connection was lost), so it is sent with its parameter types in one round trip
/// rather than prepared.
pub async fn lock_run(client: &Client, run_id: &str) -> Result<(), DbError> {
    client
        .execute_typed(LOCK_RUN, &[(&RUN_CLASS, Type::INT4), (&run_id, Type::TEXT)])
        .await?;
    Ok(())
}

/// The run's lock, shared by a worker's connection with its first view (prepared: it goes in
/// the same flight as the view's first statements).
pub async fn share_run(client: &ClientWrapper, run_id: &str) -> Result<(), DbError> {
    let st = client.prepare_cached(LOCK_RUN).await?;
    client.execute(&st, &[&RUN_CLASS, &run_id]).await?;
    Ok(())
}

/// What taking a view's lock found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ViewLock {
    Acquired,
    /// Another run is refreshing it (its id when its history row says so).
    Held(Option<String>),
    /// Another run refreshed it after this run started.
    AlreadyDone(String),
}

const TRY_VIEW: &str = "
    SELECT pg_try_advisory_lock($1, hashtext($2)),
           (SELECT v.run_id FROM reporting.seeder_view_run v
            WHERE v.table_name = $2 AND v.status = 'success' AND v.run_id <> $3
              AND v.finished_at >= (SELECT started_at FROM reporting.seeder_run WHERE run_id = $3)
            ORDER BY v.finished_at DESC LIMIT 1)";

// Only asked when the lock is held, so the history tables are not scanned for every view. The
// holder has a history row for the view; it may have just finished (its lock goes a moment
// after its row is written), so a running row comes first, then the newest.
const HOLDER: &str = "
    SELECT run_id FROM (
        SELECT run_id, status, start_time FROM reporting.seeder_run_history
        WHERE table_name = $1::text AND run_id <> $2::text
        UNION ALL
        SELECT run_id, status, start_time FROM reporting.seeder_canned_run_history
        WHERE table_name = $1::text AND run_id <> $2::text
    ) r ORDER BY status = 'running' DESC, start_time DESC LIMIT 1";

/// Takes the view's lock without waiting, or says who has it (or has just done the work).
/// Statements are prepared once per connection: every view runs them.
pub async fn try_lock_view(
    client: &ClientWrapper,
    key: &str,
    run_id: &str,
) -> Result<ViewLock, DbError> {
    let statement = client.prepare_cached(TRY_VIEW).await?;
    let r = client
        .query_one(&statement, &[&VIEW_CLASS, &key, &run_id])
        .await?;
    let got: bool = r.try_get(0)?;
    let done_by: Option<String> = r.try_get(1)?;
    match (got, done_by) {
        (true, None) => Ok(ViewLock::Acquired),
        (true, Some(other)) => {
            unlock_view(client, key).await?;
            Ok(ViewLock::AlreadyDone(other))
        }
        (false, _) => {
            let holder = client.query_opt(HOLDER, &[&key, &run_id]).await?;
            Ok(ViewLock::Held(holder.map(|h| h.try_get(0)).transpose()?))
        }
    }
}

/// Waits for the view's lock (`--wait-for-locks`), however long the other run takes: neither
/// the lock timeout nor the statement timeout (both meant for the view's own statements) cuts
/// the wait short.
pub async fn wait_lock_view(
    client: &ClientWrapper,
    key: &str,
    run_id: &str,
) -> Result<ViewLock, DbError> {
    // Free (or just done by another run): nothing to wait for. Held: say so, as the wait may
    // be long and is otherwise silent.
    let holder = match try_lock_view(client, key, run_id).await? {
        ViewLock::Held(by) => by.map_or_else(|| "another run".to_string(), |r| format!("run {r}")),
        free_or_done => return Ok(free_or_done),
    };
    tracing::info!(
        view = %key,
        held_by = %holder,
        "waiting for the run refreshing this view to let it go (--wait-for-locks)"
    );
    let waited = std::time::Instant::now();
    client
        .batch_execute(
            "SELECT set_config('lock_timeout', '0', false), set_config('statement_timeout', '0', false)",
        )
        .await?;
    let result = client
        .execute(
            "SELECT pg_advisory_lock($1, hashtext($2))",
            &[&VIEW_CLASS, &key],
        )
        .await;
    client
        .batch_execute("RESET lock_timeout; RESET statement_timeout")
        .await?;
    result?;
    tracing::info!(view = %key, waited_s = waited.elapsed().as_secs(), "the view's lock was let go");
    match try_lock_view(client, key, run_id).await? {
        // Session locks stack: the second take must be given back.
        ViewLock::Acquired => {
            unlock_view(client, key).await?;
            Ok(ViewLock::Acquired)
        }
        ViewLock::AlreadyDone(other) => {
            unlock_view(client, key).await?;
            Ok(ViewLock::AlreadyDone(other))
        }
        held => Ok(held),
    }
}

const UNLOCK_VIEW: &str = "SELECT pg_advisory_unlock($1, hashtext($2))";

pub async fn unlock_view(client: &ClientWrapper, key: &str) -> Result<(), DbError> {
    let statement = client.prepare_cached(UNLOCK_VIEW).await?;
    client.execute(&statement, &[&VIEW_CLASS, &key]).await?;
    Ok(())
}

/// Prepares the statements every view runs, so a worker's first view waits for none of them.
pub async fn prepare_view_statements(client: &ClientWrapper) -> Result<(), DbError> {
    super::prepare_all(client, &[TRY_VIEW, UNLOCK_VIEW]).await
}

/// What recovery found.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Recovery {
    pub abandoned_runs: Vec<String>,
    pub abandoned_views: i64,
    pub dropped_temporary: Vec<String>,
}

const ABANDON: &str = "
    WITH l AS MATERIALIZED (SELECT pg_try_advisory_lock($2, hashtext($1::text)) AS got),
    h1 AS (
        UPDATE reporting.seeder_run_history
        SET status = 'abandoned', finish_time = now(), updated_at = now(),
            errors = 'abandoned: run ' || $1::text || ' ended without recording an outcome (killed, or its connection was lost)'
        WHERE run_id = $1::text AND status = 'running' AND (SELECT got FROM l)
        RETURNING id, table_name::text AS table_name, start_time, errors::text AS errors,
                  report_type::text AS report_type
    ), h2 AS (
        UPDATE reporting.seeder_canned_run_history
        SET status = 'abandoned', finish_time = now(), updated_at = now(),
            errors = 'abandoned: run ' || $1::text || ' ended without recording an outcome (killed, or its connection was lost)'
        WHERE run_id = $1::text AND status = 'running' AND (SELECT got FROM l)
        RETURNING id, table_name::text AS table_name, start_time, errors::text AS errors,
                  report_type::text AS report_type
    ), s1 AS (
        -- The views' status rows say so too, unless a later run has written them since.
        UPDATE reporting.seeder_job_status s
        SET status = 'abandoned', last_run_id = $1::text, last_errors = h1.errors,
            updated_at = now()
        FROM h1 WHERE s.table_name = h1.table_name AND s.updated_at <= h1.start_time
        RETURNING 1
    ), s2 AS (
        UPDATE reporting.seeder_canned_job_status s
        SET status = 'abandoned', last_run_id = $1::text, last_errors = h2.errors,
            updated_at = now()
        FROM h2 WHERE s.table_name = h2.table_name AND s.updated_at <= h2.start_time
        RETURNING 1
    ), v AS (
        -- The per-view rows `history` and `retry` read, which the dead run never wrote.
        INSERT INTO reporting.seeder_view_run (run_id, table_name, history_table, history_id,
            report_type, status, duration_ms, error, finished_at, attempts)
        -- No duration: when the dead run stopped working on the view is not known.
        SELECT $1::text, h.table_name, h.history_table, h.id, h.report_type, 'abandoned', NULL,
               h.errors, now(), 1
        FROM (SELECT *, 'reporting.seeder_run_history' AS history_table FROM h1
              UNION ALL
              SELECT *, 'reporting.seeder_canned_run_history' FROM h2) h
        ON CONFLICT (run_id, table_name) DO NOTHING
        RETURNING 1
    ), r AS (
        -- Still running: a run that recorded its end (and then let its lock go) since the list
        -- of running runs was read is left as it ended.
        -- The views it selected (recorded at its start since migration 7), and what it
        -- finished of them.
        UPDATE reporting.seeder_run SET status = 'abandoned', finished_at = now(),
            views = coalesce(cardinality(selected),
                             (SELECT count(*) FROM reporting.seeder_view_run WHERE run_id = $1::text)
                             + (SELECT count(*) FROM v)),
            succeeded = (SELECT count(*) FROM reporting.seeder_view_run
                         WHERE run_id = $1::text AND status = 'success'),
            failed = (SELECT count(*) FROM reporting.seeder_view_run
                      WHERE run_id = $1::text AND status = 'error'),
            skipped = (SELECT count(*) FROM reporting.seeder_view_run
                       WHERE run_id = $1::text AND status = 'skipped')
        WHERE run_id = $1::text AND status = 'running' AND (SELECT got FROM l)
        RETURNING 1
    )
    SELECT (SELECT got FROM l), (SELECT count(*) FROM h1) + (SELECT count(*) FROM h2),
           EXISTS (SELECT 1 FROM r)";

// Temporary views of interrupted rebuilds, with the view each was for. Only the tool's own:
// `_rs_<oid>_new` beside the materialized view with that OID, in its schema. Another team's
// view that merely has such a name (in another schema, or naming no such view) is not one.
const TEMPORARIES: &str = "
    SELECT n.nspname::text, c.relname::text, n.nspname || '.' || v.relname
    FROM pg_class c
    JOIN pg_namespace n ON n.oid = c.relnamespace
    CROSS JOIN LATERAL (SELECT substring(c.relname FROM '^_rs_([0-9]{1,10})_new$')::int8 AS n) d
    JOIN pg_class v ON v.oid = CASE WHEN d.n <= 4294967295 THEN d.n::oid END
        AND v.relnamespace = c.relnamespace AND v.relkind = 'm'
    WHERE c.relkind = 'm' AND c.relname ~ '^_rs_[0-9]{1,10}_new$'";

/// Marks the `running` rows of dead runs `abandoned` and drops the temporary views of rebuilds
/// nobody is doing any more. Live runs (their lock is held) are left alone.
pub async fn recover(client: &ClientWrapper, own_run: Option<&str>) -> Result<Recovery, DbError> {
    let mut out = Recovery::default();
    // Both reads sent at once; neither depends on what the other finds.
    let (running, temporaries) = tokio::join!(
        client.query_typed(
            "SELECT run_id FROM reporting.seeder_run WHERE status = 'running'",
            &[],
        ),
        client.query_typed(TEMPORARIES, &[])
    );
    let (running, temporaries) = (running?, temporaries?);
    let running: Vec<String> = running
        .iter()
        .map(|r| r.try_get(0))
        .collect::<Result<_, _>>()?;
    for run in running.iter().filter(|r| Some(r.as_str()) != own_run) {
        let r = client.query_one(ABANDON, &[run, &RUN_CLASS]).await?;
        if r.try_get::<_, bool>(0)? {
            client
                .execute(
                    "SELECT pg_advisory_unlock($2, hashtext($1))",
                    &[run, &RUN_CLASS],
                )
                .await?;
            out.abandoned_views += r.try_get::<_, i64>(1)?;
            if r.try_get::<_, bool>(2)? {
                out.abandoned_runs.push(run.clone());
            }
        }
    }
    for r in temporaries {
        let schema: String = r.try_get(0)?;
        let temp: String = r.try_get(1)?;
        let temp_key = format!("{schema}.{temp}");
        let key: String = r.try_get(2)?;
        let got: bool = client
            .query_one(
                "SELECT pg_try_advisory_lock($1, hashtext($2))",
                &[&VIEW_CLASS, &key],
            )
            .await?
            .try_get(0)?;
        if !got {
            continue; // a live rebuild of that view
        }
        let dropped = client
            .batch_execute(&format!(
                "DROP MATERIALIZED VIEW IF EXISTS {}",
                super::Rel {
                    schema: &schema,
                    name: &temp
                }
                .quoted()
            ))
            .await;
        unlock_view(client, &key).await?;
        dropped?;
        out.dropped_temporary.push(temp_key);
    }
    Ok(out)
}

/// A session holding a lock on a relation: who it is and what it is doing, to name it when a
/// refresh or a swap gave up waiting for it.
#[derive(Debug, Clone, PartialEq)]
pub struct LockHolder {
    pub pid: i32,
    pub user: String,
    /// `client backend` for a client's session; otherwise what holds it (`autovacuum worker`).
    pub kind: String,
    pub application: String,
    pub state: String,
    /// How long its transaction (or, outside one, its statement) has been going. Like its
    /// state, unknown to a role that may not see another user's activity.
    pub seconds: Option<f64>,
    /// Its locks in the way (`AccessShareLock`, or several joined by `+`).
    pub mode: String,
    /// The views it holds them on, when not (only) the view itself: those a rebuild's swap
    /// drops and recreates with it.
    pub on: Option<String>,
}

impl std::fmt::Display for LockHolder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.user.is_empty() || self.kind != "client backend" {
            write!(f, "pid {} ({}", self.pid, self.kind)?;
        } else {
            write!(f, "pid {} (user {}", self.pid, self.user)?;
        }
        if !self.application.is_empty() {
            // Quoted and escaped: the name is the session's to choose, and must not pass for
            // more of the message.
            write!(f, ", application {:?}", self.application)?;
        }
        if !self.state.is_empty() {
            write!(f, ", {}", self.state)?;
        }
        if let Some(s) = self.seconds {
            write!(f, " for {s:.0} s")?;
        }
        write!(f, ", {}", self.mode)?;
        if let Some(on) = &self.on {
            write!(f, " on {on}")?;
        }
        write!(f, ")")
    }
}

/// Who was in the way: the first few, and how many in all.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LockHolders {
    pub shown: Vec<LockHolder>,
    pub total: i64,
}

impl std::fmt::Display for LockHolders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, h) in self.shown.iter().enumerate() {
            if i > 0 {
                write!(f, ", ")?;
            }
            write!(f, "{h}")?;
        }
        let more = self.total - self.shown.len() as i64;
        if more > 0 {
            write!(f, ", and {more} more")?;
        }
        Ok(())
    }
}

// Granted locks that conflict with what the tool waited for, by other sessions, the
// longest-running first: on the view, and with `$3` on every view reading it however deep
// (a swap drops and recreates them). `$4`: the tool wanted ACCESS EXCLUSIVE (a plain refresh, a
// swap), which every lock conflicts with; otherwise EXCLUSIVE (a concurrent refresh), which
// readers' ACCESS SHARE does not. pg_locks and a session's pid, user and application are
// readable by every role; its state and start only by its own role and those with
// pg_read_all_stats (NULL otherwise). Not its query: the message goes into history rows that
// others read, and another user's query text (its literals) is not the tool's to copy there;
// the pid finds it in pg_stat_activity.
const HOLDERS: &str = "
    WITH RECURSIVE target AS (
        SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = $1 AND c.relname = $2
    ), rels(oid) AS (
        SELECT oid FROM target
        UNION
        SELECT r.ev_class
        FROM rels
        JOIN pg_depend d ON d.refclassid = 'pg_class'::regclass AND d.refobjid = rels.oid
                        AND d.classid = 'pg_rewrite'::regclass
        JOIN pg_rewrite r ON r.oid = d.objid
        WHERE $3 AND r.ev_class <> rels.oid
    ), held AS (
        SELECT a.pid, coalesce(a.usename::text, '') AS usr, coalesce(a.backend_type, '') AS kind,
               coalesce(a.application_name, '') AS app, coalesce(a.state, '') AS state,
               extract(epoch FROM now() - coalesce(a.xact_start, a.query_start))::float8 AS secs,
               string_agg(DISTINCT l.mode, '+' ORDER BY l.mode) AS modes,
               string_agg(DISTINCT format('%I.%I', n.nspname, c.relname), ', ')
                   FILTER (WHERE c.oid NOT IN (SELECT oid FROM target)) AS others,
               bool_or(c.oid IN (SELECT oid FROM target)) AS on_view,
               a.xact_start
        FROM pg_locks l
        JOIN rels ON rels.oid = l.relation
        JOIN pg_class c ON c.oid = l.relation
        JOIN pg_namespace n ON n.oid = c.relnamespace
        JOIN pg_stat_activity a ON a.pid = l.pid
        WHERE l.locktype = 'relation' AND l.granted AND l.pid <> pg_backend_pid()
          AND ($4 OR l.mode <> 'AccessShareLock')
          -- A parallel query's workers hold what their leader holds: the leader is the one to name.
          AND a.backend_type IS DISTINCT FROM 'parallel worker'
          AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
        GROUP BY a.pid, a.usename, a.backend_type, a.application_name, a.state, a.xact_start,
                 a.query_start
    )
    SELECT pid, usr, kind, app, state, secs, modes,
           CASE WHEN others IS NULL THEN NULL
                WHEN on_view THEN format('%I.%I', $1::text, $2::text) || ', ' || others
                ELSE others END,
           count(*) OVER ()
    FROM held
    ORDER BY xact_start NULLS LAST, pid
    LIMIT 4";

/// Who holds a lock on `view` (and, with `dependents`, on the views reading it) that conflicts
/// with ACCESS EXCLUSIVE (`exclusive_access`) or EXCLUSIVE: at most four, and how many in all.
pub async fn holders(
    client: &Client,
    view: super::Rel<'_>,
    dependents: bool,
    exclusive_access: bool,
) -> Result<LockHolders, DbError> {
    let rows = client
        .query_typed(
            HOLDERS,
            &[
                (&view.schema, Type::TEXT),
                (&view.name, Type::TEXT),
                (&dependents, Type::BOOL),
                (&exclusive_access, Type::BOOL),
            ],
        )
        .await?;
    holders_from(&rows)
}

// Granted locks of `$3`'s modes on the tables `$2` of schema `$1`, by other sessions, the
// longest-running first; as HOLDERS says them (never their queries).
const TABLE_HOLDERS: &str = "
    WITH held AS (
        SELECT a.pid, coalesce(a.usename::text, '') AS usr, coalesce(a.backend_type, '') AS kind,
               coalesce(a.application_name, '') AS app, coalesce(a.state, '') AS state,
               extract(epoch FROM now() - coalesce(a.xact_start, a.query_start))::float8 AS secs,
               string_agg(DISTINCT l.mode, '+' ORDER BY l.mode) AS modes,
               string_agg(DISTINCT format('%I.%I', n.nspname, c.relname), ', ') AS tables,
               a.xact_start
        FROM pg_locks l
        JOIN pg_class c ON c.oid = l.relation
        JOIN pg_namespace n ON n.oid = c.relnamespace
        JOIN pg_stat_activity a ON a.pid = l.pid
        WHERE l.locktype = 'relation' AND l.granted AND l.pid <> pg_backend_pid()
          AND n.nspname = $1 AND c.relname = ANY($2) AND l.mode = ANY($3)
          AND a.backend_type IS DISTINCT FROM 'parallel worker'
          AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
        GROUP BY a.pid, a.usename, a.backend_type, a.application_name, a.state, a.xact_start,
                 a.query_start
    )
    SELECT pid, usr, kind, app, state, secs, modes, tables, count(*) OVER ()
    FROM held
    ORDER BY xact_start NULLS LAST, pid
    LIMIT 4";

/// Who holds a lock of one of `modes` on one of `tables` in `schema`: at most four, and how
/// many in all.
pub async fn table_holders(
    client: &Client,
    schema: &str,
    tables: &[&str],
    modes: &[&str],
) -> Result<LockHolders, DbError> {
    let rows = client
        .query_typed(
            TABLE_HOLDERS,
            &[
                (&schema, Type::TEXT),
                (&tables, Type::TEXT_ARRAY),
                (&modes, Type::TEXT_ARRAY),
            ],
        )
        .await?;
    holders_from(&rows)
}

fn holders_from(rows: &[tokio_postgres::Row]) -> Result<LockHolders, DbError> {
    let mut out = LockHolders::default();
    for r in rows {
        out.total = r.try_get(8)?;
        out.shown.push(LockHolder {
            pid: r.try_get(0)?,
            user: r.try_get(1)?,
            kind: r.try_get(2)?,
            application: r.try_get(3)?,
            state: r.try_get(4)?,
            seconds: r.try_get(5)?,
            mode: r.try_get(6)?,
            on: r.try_get(7)?,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::{LockHolder, LockHolders};

    #[test]
    fn a_lock_holder_says_what_the_role_may_see_of_it() {
        let mut h = LockHolder {
            pid: 4242,
            user: "alice".into(),
            kind: "client backend".into(),
            application: "dashboard".into(),
            state: "idle in transaction".into(),
            seconds: Some(312.4),
            mode: "AccessShareLock".into(),
            on: None,
        };
        assert_eq!(
            h.to_string(),
            "pid 4242 (user alice, application \"dashboard\", idle in transaction for 312 s, AccessShareLock)"
        );
        // Another user's session, seen by a role without pg_read_all_stats.
        h.application.clear();
        h.state.clear();
        h.seconds = None;
        assert_eq!(h.to_string(), "pid 4242 (user alice, AccessShareLock)");
        // Not a client: what it is says more than an empty user.
        h.user.clear();
        h.kind = "autovacuum worker".into();
        h.mode = "ShareUpdateExclusiveLock".into();
        assert_eq!(
            h.to_string(),
            "pid 4242 (autovacuum worker, ShareUpdateExclusiveLock)"
        );
    }

    #[test]
    fn holders_say_where_their_lock_is_how_many_there_are_and_cannot_forge_the_message() {
        let h = |pid, app: &str, on: Option<&str>| LockHolder {
            pid,
            user: "bob".into(),
            kind: "client backend".into(),
            application: app.into(),
            state: String::new(),
            seconds: None,
            mode: "AccessShareLock".into(),
            on: on.map(str::to_string),
        };
        let all = LockHolders {
            shown: vec![
                h(1, "it\"s), pid 9 (user root", None),
                h(2, "", Some("rep.dep")),
            ],
            total: 5,
        };
        assert_eq!(
            all.to_string(),
            "pid 1 (user bob, application \"it\\\"s), pid 9 (user root\", AccessShareLock), \
             pid 2 (user bob, AccessShareLock on rep.dep), and 3 more"
        );
    }
}
