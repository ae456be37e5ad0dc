//! Materialized views: catalog state, create, refresh, rebuild-and-swap, analyze.

use std::collections::HashMap;

use deadpool_postgres::ClientWrapper;
use etl_core::DbError;
use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

use super::{ident, Rel};

/// What the catalog says about one view name.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ViewState {
    pub schema_exists: bool,
    /// `None` when no relation has the name.
    pub oid: Option<u32>,
    /// `pg_class.relkind` of the relation holding the name (`m` for a materialized view).
    pub relkind: Option<char>,
    pub populated: bool,
    /// A valid unique index on plain columns, without predicate: what `CONCURRENTLY` needs.
    pub has_concurrent_index: bool,
    /// The hash of the query the view was last built from by this tool.
    pub stored_hash: Option<String>,
}

/// Figures read after `ANALYZE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ViewStats {
    /// `pg_class.reltuples` after `ANALYZE`: exact for views small enough to be read whole by
    /// ANALYZE, an estimate beyond that.
    pub rows: i64,
    pub bytes: i64,
}

const INSPECT: &str = "
    SELECT v.schema, v.name, n.oid IS NOT NULL, c.oid, c.relkind::text, coalesce(c.relispopulated, false),
           coalesce((SELECT bool_or(i.indisunique AND i.indisvalid AND i.indpred IS NULL
                                    AND i.indexprs IS NULL)
                     FROM pg_index i WHERE i.indrelid = c.oid), false),
           s.query_hash
    FROM unnest($1::text[], $2::text[]) AS v(schema, name)
    LEFT JOIN pg_namespace n ON n.nspname = v.schema
    LEFT JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = v.name
    LEFT JOIN reporting.seeder_view_state s ON s.table_name = v.schema || '.' || v.name";

/// The state of every named view, keyed by `schema.name`, in one round trip.
pub async fn inspect(
    client: &Client,
    views: &[Rel<'_>],
) -> Result<HashMap<String, ViewState>, DbError> {
    let schemas: Vec<&str> = views.iter().map(|v| v.schema).collect();
    let names: Vec<&str> = views.iter().map(|v| v.name).collect();
    let mut out = HashMap::with_capacity(views.len());
    for r in client.query(INSPECT, &[&schemas, &names]).await? {
        let schema: String = r.try_get(0)?;
        let name: String = r.try_get(1)?;
        let oid: Option<u32> = r.try_get(3)?;
        let relkind: Option<String> = r.try_get(4)?;
        out.insert(
            format!("{schema}.{name}"),
            ViewState {
                schema_exists: r.try_get(2)?,
                oid,
                relkind: relkind.and_then(|k| k.chars().next()),
                populated: r.try_get(5)?,
                has_concurrent_index: r.try_get(6)?,
                stored_hash: r.try_get(7)?,
            },
        );
    }
    Ok(out)
}

const UPSERT_STATE: &str = "
    INSERT INTO reporting.seeder_view_state (table_name, query_hash, built_at, built_by_run_id)
    VALUES ($1, $2, now(), $3)
    ON CONFLICT (table_name) DO UPDATE
    SET query_hash = EXCLUDED.query_hash, built_at = EXCLUDED.built_at,
        built_by_run_id = EXCLUDED.built_by_run_id";

fn create_sql(target: &str, query: &str) -> String {
    // The query goes last, on a line of its own, so nothing of ours follows it.
    format!("CREATE MATERIALIZED VIEW {target} AS\n{query}")
}

pub async fn create(
    client: &mut Client,
    view: Rel<'_>,
    create_schema: bool,
    query: &str,
    hash: &str,
    run_id: &str,
) -> Result<u64, DbError> {
    let tx = client.transaction().await?;
    if create_schema {
        tx.batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS {}",
            ident(view.schema)
        ))
        .await?;
    }
    let rows = tx.execute(&create_sql(&view.quoted(), query), &[]).await?;
    tx.execute(UPSERT_STATE, &[&view.key(), &hash, &run_id])
        .await?;
    tx.commit().await?;
    Ok(rows)
}

pub async fn refresh(client: &Client, view: Rel<'_>, concurrently: bool) -> Result<(), DbError> {
    let target = view.quoted();
    if concurrently {
        match client
            .batch_execute(&format!("REFRESH MATERIALIZED VIEW CONCURRENTLY {target}"))
            .await
        {
            Ok(()) => return Ok(()),
            // PostgreSQL refuses the concurrent form for this view (no usable unique index,
            // not populated): the plain form still brings it up to date.
            Err(e)
                if e.code() == Some(&SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE)
                    || e.code() == Some(&SqlState::FEATURE_NOT_SUPPORTED) =>
            {
                tracing::info!(view = %view.key(), error = %e, "concurrent refresh refused; refreshing plainly");
            }
            Err(e) => return Err(e.into()),
        }
    }
    client
        .batch_execute(&format!("REFRESH MATERIALIZED VIEW {target}"))
        .await?;
    Ok(())
}

pub async fn drop_if_exists(client: &Client, view: Rel<'_>) -> Result<(), DbError> {
    client
        .batch_execute(&format!(
            "DROP MATERIALIZED VIEW IF EXISTS {}",
            view.quoted()
        ))
        .await?;
    Ok(())
}

const OLD_VIEW: &str = "
    SELECT c.oid, pg_get_userbyid(c.relowner), c.relowner <> (SELECT oid FROM pg_roles WHERE rolname = current_user),
           obj_description(c.oid, 'pg_class')
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind = 'm'";

// The owner's own privileges come with ownership; every other grant is copied.
const OLD_GRANTS: &str = "
    SELECT CASE WHEN a.grantee = 0 THEN NULL ELSE pg_get_userbyid(a.grantee) END,
           a.privilege_type, a.is_grantable
    FROM pg_class c, aclexplode(c.relacl) a
    WHERE c.oid = $1 AND a.grantee <> c.relowner
    ORDER BY 1, 2";

// pg_get_indexdef always schema-qualifies the table, so its text after this prefix is the part
// that applies unchanged to the new view ("btree (id) WHERE …").
const OLD_INDEXES: &str = "
    SELECT ic.relname::text,
           CASE WHEN starts_with(d.def, d.prefix) THEN substr(d.def, length(d.prefix) + 1) END,
           i.indisunique
    FROM pg_index i
    JOIN pg_class ic ON ic.oid = i.indexrelid
    JOIN pg_class c ON c.oid = i.indrelid
    JOIN pg_namespace n ON n.oid = c.relnamespace
    CROSS JOIN LATERAL (SELECT pg_get_indexdef(i.indexrelid) AS def,
        format('CREATE %sINDEX %s ON %s.%s USING ',
               CASE WHEN i.indisunique THEN 'UNIQUE ' ELSE '' END,
               quote_ident(ic.relname), quote_ident(n.nspname), quote_ident(c.relname)) AS prefix) d
    WHERE i.indrelid = $1
    ORDER BY ic.relname";

const PRIVILEGES: &[&str] = &[
    "SELECT",
    "INSERT",
    "UPDATE",
    "DELETE",
    "TRUNCATE",
    "REFERENCES",
    "TRIGGER",
    "MAINTAIN",
];

pub async fn rebuild(
    client: &mut Client,
    view: Rel<'_>,
    temp: &str,
    query: &str,
    hash: &str,
    run_id: &str,
    lock_timeout_ms: u64,
) -> Result<u64, DbError> {
    let temp_rel = Rel {
        schema: view.schema,
        name: temp,
    };
    drop_if_exists(client, temp_rel).await?;
    // Built outside any transaction that touches the old view: readers never wait for it.
    let rows = client
        .execute(&create_sql(&temp_rel.quoted(), query), &[])
        .await?;
    match dress_and_swap(client, view, temp_rel, hash, run_id, lock_timeout_ms).await {
        Ok(()) => Ok(rows),
        Err(e) => {
            if let Err(cleanup) = drop_if_exists(client, temp_rel).await {
                tracing::warn!(view = %temp_rel.key(), error = %cleanup, "could not drop the temporary view; the next rebuild drops it");
            }
            Err(e)
        }
    }
}

async fn dress_and_swap(
    client: &mut Client,
    view: Rel<'_>,
    temp: Rel<'_>,
    hash: &str,
    run_id: &str,
    lock_timeout_ms: u64,
) -> Result<(), DbError> {
    let old = client
        .query_opt(OLD_VIEW, &[&view.schema, &view.name])
        .await?
        .ok_or_else(|| DbError::other(format!("{} disappeared during the rebuild", view.key())))?;
    let oid: u32 = old.try_get(0)?;
    let owner: String = old.try_get(1)?;
    let foreign_owner: bool = old.try_get(2)?;
    let comment: Option<String> = old.try_get(3)?;

    let mut renames = Vec::new();
    for (n, r) in client.query(OLD_INDEXES, &[&oid]).await?.iter().enumerate() {
        let name: String = r.try_get(0)?;
        let tail: Option<String> = r.try_get(1)?;
        let unique: bool = r.try_get(2)?;
        let tail = tail.ok_or_else(|| {
            DbError::other(format!(
                "cannot copy index {name} of {}: its definition has an unexpected form; rebuild it by hand",
                view.key()
            ))
        })?;
        let temp_index = format!("{}_ix{n}", temp.name);
        client
            .batch_execute(&format!(
                "CREATE {}INDEX {} ON {} USING {tail}",
                if unique { "UNIQUE " } else { "" },
                ident(&temp_index),
                temp.quoted()
            ))
            .await?;
        renames.push((temp_index, name));
    }
    if foreign_owner {
        client
            .batch_execute(&format!(
                "ALTER MATERIALIZED VIEW {} OWNER TO {}",
                temp.quoted(),
                ident(&owner)
            ))
            .await?;
    }
    for g in client.query(OLD_GRANTS, &[&oid]).await? {
        let grantee: Option<String> = g.try_get(0)?;
        let privilege: String = g.try_get(1)?;
        let grantable: bool = g.try_get(2)?;
        // The privilege is a keyword from the catalog; only known ones are put into SQL.
        let Some(privilege) = PRIVILEGES.iter().find(|p| **p == privilege) else {
            return Err(DbError::other(format!(
                "cannot copy privilege {privilege:?} of {}: unknown privilege",
                view.key()
            )));
        };
        client
            .batch_execute(&format!(
                "GRANT {privilege} ON {} TO {}{}",
                temp.quoted(),
                grantee
                    .as_deref()
                    .map(ident)
                    .unwrap_or_else(|| "PUBLIC".to_string()),
                if grantable { " WITH GRANT OPTION" } else { "" }
            ))
            .await?;
    }
    if let Some(comment) = comment {
        // DDL takes no bind parameters: the one literal we embed, escaped by the driver's own
        // escaping function.
        client
            .batch_execute(&format!(
                "COMMENT ON MATERIALIZED VIEW {} IS {}",
                temp.quoted(),
                postgres_protocol::escape::escape_literal(&comment)
            ))
            .await?;
    }

    let tx = client.transaction().await?;
    tx.execute(
        "SELECT set_config('lock_timeout', $1, true)",
        &[&format!("{lock_timeout_ms}ms")],
    )
    .await?;
    tx.batch_execute(&format!("DROP MATERIALIZED VIEW {}", view.quoted()))
        .await?;
    tx.batch_execute(&format!(
        "ALTER MATERIALIZED VIEW {} RENAME TO {}",
        temp.quoted(),
        ident(view.name)
    ))
    .await?;
    for (temp_index, name) in &renames {
        tx.batch_execute(&format!(
            "ALTER INDEX {}.{} RENAME TO {}",
            ident(view.schema),
            ident(temp_index),
            ident(name)
        ))
        .await?;
    }
    tx.execute(UPSERT_STATE, &[&view.key(), &hash, &run_id])
        .await?;
    tx.commit().await?;
    Ok(())
}

const STATS: &str = "
    SELECT greatest(c.reltuples, 0)::bigint, pg_total_relation_size(c.oid)
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname = $1 AND c.relname = $2";

pub async fn analyze(client: &ClientWrapper, view: Rel<'_>) -> Result<ViewStats, DbError> {
    let statement = client.prepare_cached(STATS).await?;
    let analyze = format!("ANALYZE {}", view.quoted());
    // Pipelined: both are sent at once and run in order, so the figures are read after ANALYZE
    // without waiting a round trip in between.
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&view.schema, &view.name];
    let (analyzed, stats) = tokio::join!(
        client.batch_execute(&analyze),
        client.query_one(&statement, &params)
    );
    analyzed?;
    let r = stats?;
    Ok(ViewStats {
        rows: r.try_get(0)?,
        bytes: r.try_get(1)?,
    })
}
