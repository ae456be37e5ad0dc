//! Materialized views: catalog state, create, refresh, rebuild-and-swap, analyze.

use std::collections::HashMap;

use deadpool_postgres::ClientWrapper;
use etl_core::DbError;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::Type;
use tokio_postgres::{Client, GenericClient};

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
    /// (owner, the tool's role) when the relation's owner is a role whose privileges the tool's
    /// role does not have: it can neither refresh nor replace the view.
    pub foreign_owner: Option<(String, String)>,
    /// Whether that owner is a superuser (granting it to the tool's role would make that one).
    pub owner_superuser: bool,
    /// The database's name, for the GRANT a message suggests.
    pub database: String,
    /// The tool's role, when it may not create the view: no CREATE on its schema, or (the schema
    /// missing) on the database.
    pub create_denied: Option<String>,
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
           -- A view with another OID than the one the tool built was replaced by hand: what it
           -- holds is not known to be its manifest's query, so it has no hash (it is adopted).
           CASE WHEN s.view_oid IS NULL OR s.view_oid = c.oid THEN s.query_hash END,
           -- REFRESH, DROP and the swap's ALTER … OWNER all need the owner's privileges.
           CASE WHEN c.oid IS NOT NULL AND NOT pg_has_role(c.relowner, 'USAGE')
                THEN pg_get_userbyid(c.relowner)::text END,
           CASE WHEN n.oid IS NULL THEN NOT has_database_privilege(current_database(), 'CREATE')
                ELSE NOT (has_schema_privilege(n.oid, 'CREATE')
                          AND has_schema_privilege(n.oid, 'USAGE')) END,
           current_user::text,
           coalesce((SELECT r.rolsuper FROM pg_roles r WHERE r.oid = c.relowner), false),
           current_database()::text
    FROM unnest($1::text[], $2::text[]) AS v(schema, name)
    LEFT JOIN pg_namespace n ON n.nspname = v.schema
    LEFT JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = v.name
    LEFT JOIN reporting.seeder_view_state s ON s.table_name = v.schema || '.' || v.name";

/// `views` as two parallel arrays, schemas and names, for `unnest($1::text[], $2::text[])`.
fn as_arrays<'a>(views: &[Rel<'a>]) -> (Vec<&'a str>, Vec<&'a str>) {
    views.iter().map(|v| (v.schema, v.name)).unzip()
}

/// The state of every named view, keyed by `schema.name`, in one round trip.
pub async fn inspect(
    client: &Client,
    views: &[Rel<'_>],
) -> Result<HashMap<String, ViewState>, DbError> {
    let (schemas, names) = as_arrays(views);
    let mut out = HashMap::with_capacity(views.len());
    for r in client
        .query_typed(
            INSPECT,
            &[(&schemas, Type::TEXT_ARRAY), (&names, Type::TEXT_ARRAY)],
        )
        .await?
    {
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
                foreign_owner: r
                    .try_get::<_, Option<String>>(8)?
                    .map(|owner| Ok::<_, DbError>((owner, r.try_get(10)?)))
                    .transpose()?,
                create_denied: if r.try_get(9)? {
                    Some(r.try_get(10)?)
                } else {
                    None
                },
                owner_superuser: r.try_get(11)?,
                database: r.try_get(12)?,
            },
        );
    }
    Ok(out)
}

// With the view's OID ($4, $5: its schema and name) when it exists by now: not yet for a
// create, whose row goes first (the figures read after its ANALYZE fill it in).
const UPSERT_STATE: &str = "
    INSERT INTO reporting.seeder_view_state
        (table_name, query_hash, built_at, built_by_run_id, view_oid)
    VALUES ($1, $2, now(), $3,
            (SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = $4 AND c.relname = $5 AND c.relkind = 'm'))
    ON CONFLICT (table_name) DO UPDATE
    SET query_hash = EXCLUDED.query_hash, built_at = EXCLUDED.built_at,
        built_by_run_id = EXCLUDED.built_by_run_id, view_oid = EXCLUDED.view_oid";

fn create_sql(target: &str, query: &str) -> String {
    // The query goes last, on a line of its own, so nothing of ours follows it.
    format!("CREATE MATERIALIZED VIEW {target} AS\n{query}")
}

/// A view that replaces another one readers may be looking at: created empty, then filled by
/// `REFRESH`, whose rows (written frozen) are visible to every snapshot. Rows `CREATE … AS`
/// writes are visible only to snapshots taken after it commits, so a reader in a `REPEATABLE
/// READ` transaction (a release snapshot's capture, a report) would find the rebuilt view empty
/// once the swap put it in the old one's place.
fn create_empty_sql(target: &str, query: &str) -> String {
    // The query keeps a line of its own; validation removed any trailing comment from it.
    format!("CREATE MATERIALIZED VIEW {target} AS\n{query}\nWITH NO DATA")
}

/// Creates the view's schema when it is missing, then the view, and records the query it was
/// built from, in one transaction sent as one flight: `BEGIN`, the state row, the `CREATE` and
/// `COMMIT` go together and run in order, so a first build waits for one round trip instead of
/// six. When a statement fails, the ones after it fail or roll back with it, and its own error
/// is returned. The `CREATE` carries the manifest's query, so it goes through the extended
/// protocol (parse, bind and execute in one message): PostgreSQL runs exactly one statement
/// there, whatever the text holds.
pub async fn create(
    client: &ClientWrapper,
    view: Rel<'_>,
    create_schema: bool,
    query: &str,
    hash: &str,
    run_id: &str,
) -> Result<u64, DbError> {
    if create_schema {
        ensure_schema(client, view.schema).await?;
    }
    let upsert = client.prepare_cached(UPSERT_STATE).await?;
    let create = create_sql(&view.quoted(), query);
    let key = view.key();
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 5] =
        [&key, &hash, &run_id, &view.schema, &view.name];
    // The state row goes before the CREATE: when the manifest's query fails (its own error, a
    // cancel), only COMMIT follows, which rolls back quietly. After it, the state row would
    // fail too, with a second ERROR in the server's log ("current transaction is aborted").
    let (begun, recorded, created, committed) = tokio::join!(
        client.batch_execute("BEGIN"),
        client.execute(&upsert, &params),
        client.execute_typed(&create, &[]),
        client.batch_execute("COMMIT"),
    );
    begun?;
    recorded?;
    let rows = created?;
    committed?;
    Ok(rows)
}

/// One schema creation at a time in this process (they are short).
static SCHEMA_CREATION: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Creates `schema` in a transaction of its own, before the view's. Views of one new schema are
/// built at once: inside their transactions, every `CREATE SCHEMA IF NOT EXISTS` but the first
/// waited for the first view's whole build, then failed on `pg_namespace`'s unique index once
/// it committed. Here the run's views take turns, so the second finds the schema made (a
/// NOTICE) instead of racing the first to that index (an ERROR in the server's log); another
/// process that wins such a race counts as success too.
async fn ensure_schema(client: &Client, schema: &str) -> Result<(), DbError> {
    let _turn = SCHEMA_CREATION.lock().await;
    match client
        .batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {}", ident(schema)))
        .await
    {
        Err(e)
            if e.code() == Some(&SqlState::UNIQUE_VIOLATION)
                || e.code() == Some(&SqlState::DUPLICATE_SCHEMA) =>
        {
            Ok(())
        }
        other => Ok(other?),
    }
}

pub async fn refresh(client: &Client, view: Rel<'_>, concurrently: bool) -> Result<(), DbError> {
    let target = view.quoted();
    refresh_falling_back(view, concurrently, |how| {
        let sql = format!("REFRESH MATERIALIZED VIEW {how}{target}");
        async move { client.batch_execute(&sql).await }
    })
    .await
}

/// Sends a refresh through `send` (given `"CONCURRENTLY "` or `""` to put after `REFRESH
/// MATERIALIZED VIEW`): concurrently when asked, and plainly again when PostgreSQL refuses the
/// concurrent form for this view (no usable unique index, not populated), since the plain form
/// still brings it up to date.
async fn refresh_falling_back<T, F, Fut>(
    view: Rel<'_>,
    concurrently: bool,
    send: F,
) -> Result<T, DbError>
where
    F: Fn(&'static str) -> Fut,
    Fut: std::future::Future<Output = Result<T, tokio_postgres::Error>>,
{
    if concurrently {
        match send("CONCURRENTLY ").await {
            Ok(done) => return Ok(done),
            Err(e)
                if e.code() == Some(&SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE)
                    || e.code() == Some(&SqlState::FEATURE_NOT_SUPPORTED) =>
            {
                tracing::info!(view = %view.key(), error = %e, "concurrent refresh refused; refreshing plainly");
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(send("").await?)
}

pub async fn drop_if_exists(client: &Client, view: Rel<'_>) -> Result<(), DbError> {
    let sql = format!("DROP MATERIALIZED VIEW IF EXISTS {}", view.quoted());
    // After a signal the run cancels this session's statements until the view's work ends; a
    // cleanup caught by one of those cancels is tried again (a DROP takes far less than the
    // 100 ms between cancels).
    let mut tries = 0;
    loop {
        match client.batch_execute(&sql).await {
            Ok(()) => return Ok(()),
            Err(e) if tries < 3 && e.code() == Some(&SqlState::QUERY_CANCELED) => tries += 1,
            Err(e) => return Err(e.into()),
        }
    }
}

const OLD_VIEW: &str = "
    SELECT c.oid, pg_get_userbyid(c.relowner), c.relowner <> (SELECT oid FROM pg_roles WHERE rolname = current_user),
           obj_description(c.oid, 'pg_class'), coalesce(c.reloptions, '{}')::text[],
           coalesce((SELECT t.reloptions FROM pg_class t WHERE t.oid = c.reltoastrelid), '{}')::text[]
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind = 'm'";

// Per column: its comment, statistics target (NULL when the default) and options (`n_distinct`).
const OLD_COLUMNS: &str = "
    SELECT a.attname::text, col_description(a.attrelid, a.attnum),
           CASE WHEN a.attstattarget >= 0 THEN a.attstattarget::int4 END,
           coalesce(a.attoptions, '{}')::text[]
    FROM pg_attribute a
    WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped
      AND (col_description(a.attrelid, a.attnum) IS NOT NULL OR a.attstattarget >= 0
           OR a.attoptions IS NOT NULL)
    ORDER BY a.attnum";

// Column-level grants (`GRANT SELECT (id) ON …`), which a dashboard may hold instead of a grant
// on the whole view.
const OLD_COLUMN_GRANTS: &str = "
    SELECT a.attname::text, CASE WHEN x.grantee = 0 THEN NULL ELSE pg_get_userbyid(x.grantee) END,
           x.privilege_type, x.is_grantable
    FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid, aclexplode(a.attacl) x
    WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped AND x.grantee <> c.relowner
    ORDER BY a.attnum, 2, 3";

// The columns a view has, to give it only the column settings that still apply.
const COLUMNS_OF: &str = "
    SELECT a.attname::text
    FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
    JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped";

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
           i.indisunique, obj_description(i.indexrelid, 'pg_class'), i.indisclustered
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

/// The views manifests manage, for a rebuild that must recreate those reading the rebuilt one.
#[derive(Debug, Clone, Default)]
pub struct Managed {
    /// Every valid managed view, selected or not: key → (query, hash).
    pub views: HashMap<String, (String, String)>,
    /// Views a manifest names but cannot build (its query or name is invalid, or it is
    /// disabled): key → why, for the error that stops a rebuild which would drop one.
    pub unusable: HashMap<String, String>,
    /// The valid managed views' records, for the history row of one a rebuild recreates
    /// outside the run's selection.
    pub records: HashMap<String, super::ViewRecord>,
    /// The statement timeout (ms) of those whose manifest sets one: recreated with a rebuilt
    /// upstream, each runs its query under its own.
    pub statement_ms: HashMap<String, u64>,
}

/// A grant: (grantee, `None` for PUBLIC; privilege keyword; grantable).
type Grant = (Option<String>, &'static str, bool);

/// What a view carries besides its query, to give a new view of the same name: its owner,
/// comment, grants (on the view and on its columns), storage options, indexes (with their
/// comments and the CLUSTER mark) and its columns' comments, statistics targets and options.
#[derive(Debug, Clone, Default)]
struct Dress {
    owner: String,
    foreign_owner: bool,
    comment: Option<String>,
    grants: Vec<Grant>,
    /// Storage parameters, `name=value` as `pg_class.reloptions` holds them (`fillfactor=70`).
    options: Vec<String>,
    /// The TOAST table's storage parameters, given back as `toast.name=value`.
    toast_options: Vec<String>,
    indexes: Vec<IndexDress>,
    columns: Vec<ColumnDress>,
}

#[derive(Debug, Clone)]
struct IndexDress {
    name: String,
    unique: bool,
    /// The definition after `USING`.
    tail: String,
    comment: Option<String>,
    clustered: bool,
}

/// One column's settings; given only to a new view that has a column of the same name.
#[derive(Debug, Clone, Default)]
struct ColumnDress {
    name: String,
    comment: Option<String>,
    statistics: Option<i32>,
    /// `name=value` as `pg_attribute.attoptions` holds them (`n_distinct=100`).
    options: Vec<String>,
    grants: Vec<Grant>,
}

/// A privilege keyword from the catalog, as one of the known keywords: only those are ever put
/// into SQL.
fn known_privilege(privilege: &str, what: &str) -> Result<&'static str, DbError> {
    PRIVILEGES
        .iter()
        .find(|p| **p == privilege)
        .copied()
        .ok_or_else(|| {
            DbError::other(format!(
                "cannot copy privilege {privilege:?} of {what}: unknown privilege"
            ))
        })
}

async fn capture(client: &impl GenericClient, view: Rel<'_>) -> Result<(u32, Dress), DbError> {
    let old = client
        .query_opt(OLD_VIEW, &[&view.schema, &view.name])
        .await?
        .ok_or_else(|| DbError::other(format!("{} disappeared during the rebuild", view.key())))?;
    let oid: u32 = old.try_get(0)?;
    let mut dress = Dress {
        owner: old.try_get(1)?,
        foreign_owner: old.try_get(2)?,
        comment: old.try_get(3)?,
        options: old.try_get(4)?,
        toast_options: old.try_get(5)?,
        ..Dress::default()
    };
    for r in client.query(OLD_INDEXES, &[&oid]).await? {
        let name: String = r.try_get(0)?;
        let tail: Option<String> = r.try_get(1)?;
        let tail = tail.ok_or_else(|| {
            DbError::other(format!(
                "cannot copy index {name} of {}: its definition has an unexpected form; rebuild it by hand",
                view.key()
            ))
        })?;
        dress.indexes.push(IndexDress {
            name,
            unique: r.try_get(2)?,
            tail,
            comment: r.try_get(3)?,
            clustered: r.try_get(4)?,
        });
    }
    for g in client.query(OLD_GRANTS, &[&oid]).await? {
        let privilege: String = g.try_get(1)?;
        let privilege = known_privilege(&privilege, &view.key())?;
        dress.grants.push((g.try_get(0)?, privilege, g.try_get(2)?));
    }
    for r in client.query(OLD_COLUMNS, &[&oid]).await? {
        dress.columns.push(ColumnDress {
            name: r.try_get(0)?,
            comment: r.try_get(1)?,
            statistics: r.try_get(2)?,
            options: r.try_get(3)?,
            grants: Vec::new(),
        });
    }
    for g in client.query(OLD_COLUMN_GRANTS, &[&oid]).await? {
        let column: String = g.try_get(0)?;
        let privilege: String = g.try_get(2)?;
        let privilege = known_privilege(&privilege, &format!("{}.{column}", view.key()))?;
        let grant = (g.try_get(1)?, privilege, g.try_get(3)?);
        match dress.columns.iter_mut().find(|c| c.name == column) {
            Some(c) => c.grants.push(grant),
            None => dress.columns.push(ColumnDress {
                name: column,
                grants: vec![grant],
                ..ColumnDress::default()
            }),
        }
    }
    Ok((oid, dress))
}

/// `name = 'value'` of each `name=value` storage parameter, the name (prefixed `toast.` when
/// `toast`) quoted as an identifier and the value as a literal.
fn parameters(options: &[String], toast: bool) -> Vec<String> {
    options
        .iter()
        .filter_map(|o| o.split_once('='))
        .map(|(name, value)| {
            format!(
                "{}{} = {}",
                if toast { "toast." } else { "" },
                ident(name),
                postgres_protocol::escape::escape_literal(value)
            )
        })
        .collect()
}

/// `GRANT privilege [(column)] ON view TO grantee [WITH GRANT OPTION]`.
fn grant_sql(view: &str, column: Option<&str>, (grantee, privilege, grantable): &Grant) -> String {
    format!(
        "GRANT {privilege}{} ON {view} TO {}{}",
        column.map(|c| format!(" ({c})")).unwrap_or_default(),
        grantee
            .as_deref()
            .map(ident)
            .unwrap_or_else(|| "PUBLIC".to_string()),
        if *grantable { " WITH GRANT OPTION" } else { "" }
    )
}

/// The server's error, saying which step of a rebuild it came from and what to do.
fn in_context(e: tokio_postgres::Error, step: String, then: &str) -> DbError {
    let e = DbError::from(&e);
    // A timeout or a cancel is no fault of the statement: what to fix is the time it may take.
    let then = match e.code.as_deref() {
        Some("57014") | Some("55P03") => {
            "it was stopped, not refused, and the old definitions stay: allow it more time \
             (the timeout named below) or try again when the database is quieter"
        }
        _ => then,
    };
    DbError {
        message: format!("{step}: {}; {then}", e.message),
        ..e
    }
}

/// Gives `target` what `dress` describes; index `n` is named `index_name(n, original)`.
/// Column settings go only to columns `target` still has: a column the new query dropped
/// takes its grants and comment with it (logged under `shown`, the view readers know: the
/// target may be the temporary one).
async fn put_on(
    client: &impl GenericClient,
    target: Rel<'_>,
    shown: &str,
    dress: &Dress,
    index_name: impl Fn(usize, &str) -> String,
) -> Result<(), DbError> {
    let quoted = target.quoted();
    for (n, ix) in dress.indexes.iter().enumerate() {
        let new_name = index_name(n, &ix.name);
        client
            .batch_execute(&format!(
                "CREATE {}INDEX {} ON {quoted} USING {}",
                if ix.unique { "UNIQUE " } else { "" },
                ident(&new_name),
                ix.tail
            ))
            .await
            .map_err(|e| {
                in_context(
                    e,
                    format!(
                        "copying index {} (USING {}) to the rebuilt view",
                        ix.name, ix.tail
                    ),
                    "the view keeps its old definition; drop or change that index if the new \
                     query no longer has what it needs",
                )
            })?;
        // DDL takes no bind parameters: literals are escaped by the driver's own function.
        if let Some(comment) = &ix.comment {
            client
                .batch_execute(&format!(
                    "COMMENT ON INDEX {}.{} IS {}",
                    ident(target.schema),
                    ident(&new_name),
                    postgres_protocol::escape::escape_literal(comment)
                ))
                .await?;
        }
        if ix.clustered {
            client
                .batch_execute(&format!(
                    "ALTER MATERIALIZED VIEW {quoted} CLUSTER ON {}",
                    ident(&new_name)
                ))
                .await?;
        }
    }
    let mut parameters_sql = parameters(&dress.options, false);
    parameters_sql.extend(parameters(&dress.toast_options, true));
    if !parameters_sql.is_empty() {
        client
            .batch_execute(&format!(
                "ALTER MATERIALIZED VIEW {quoted} SET ({})",
                parameters_sql.join(", ")
            ))
            .await?;
    }
    if dress.foreign_owner {
        client
            .batch_execute(&format!(
                "ALTER MATERIALIZED VIEW {quoted} OWNER TO {}",
                ident(&dress.owner)
            ))
            .await?;
    }
    for grant in &dress.grants {
        client
            .batch_execute(&grant_sql(&quoted, None, grant))
            .await?;
    }
    if let Some(comment) = &dress.comment {
        client
            .batch_execute(&format!(
                "COMMENT ON MATERIALIZED VIEW {quoted} IS {}",
                postgres_protocol::escape::escape_literal(comment)
            ))
            .await?;
    }
    if dress.columns.is_empty() {
        return Ok(());
    }
    let present: Vec<String> = client
        .query(COLUMNS_OF, &[&target.schema, &target.name])
        .await?
        .iter()
        .map(|r| r.try_get(0))
        .collect::<Result<_, _>>()?;
    for column in &dress.columns {
        if !present.contains(&column.name) {
            tracing::warn!(
                view = %shown,
                column = %column.name,
                "the new query has no such column: its grants, comment and statistics settings are not carried over"
            );
            continue;
        }
        let col = ident(&column.name);
        if let Some(comment) = &column.comment {
            client
                .batch_execute(&format!(
                    "COMMENT ON COLUMN {quoted}.{col} IS {}",
                    postgres_protocol::escape::escape_literal(comment)
                ))
                .await?;
        }
        if let Some(n) = column.statistics {
            client
                .batch_execute(&format!(
                    "ALTER MATERIALIZED VIEW {quoted} ALTER COLUMN {col} SET STATISTICS {n}"
                ))
                .await?;
        }
        let options = parameters(&column.options, false);
        if !options.is_empty() {
            client
                .batch_execute(&format!(
                    "ALTER MATERIALIZED VIEW {quoted} ALTER COLUMN {col} SET ({})",
                    options.join(", ")
                ))
                .await?;
        }
        for grant in &column.grants {
            client
                .batch_execute(&grant_sql(&quoted, Some(&col), grant))
                .await?;
        }
    }
    Ok(())
}

// Everything that reads the view through a rewrite rule (views and materialized views),
// transitively, deepest last.
const DEPENDENTS: &str = "
    WITH RECURSIVE deps(oid, depth) AS (
        SELECT r.ev_class, 1
        FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid
        WHERE d.classid = 'pg_rewrite'::regclass AND d.refclassid = 'pg_class'::regclass
          AND d.refobjid = $1 AND r.ev_class <> $1
        UNION
        SELECT r.ev_class, deps.depth + 1
        FROM deps
        JOIN pg_depend d ON d.refobjid = deps.oid
        JOIN pg_rewrite r ON r.oid = d.objid
        WHERE d.classid = 'pg_rewrite'::regclass AND d.refclassid = 'pg_class'::regclass
          AND r.ev_class <> deps.oid AND deps.depth < 64
    )
    SELECT n.nspname::text, c.relname::text, c.relkind::text, c.oid, max(deps.depth)
    FROM deps JOIN pg_class c ON c.oid = deps.oid JOIN pg_namespace n ON n.oid = c.relnamespace
    GROUP BY 1, 2, 3, 4
    ORDER BY 5, 1, 2";

// What else binds to the relations in $1 (a view to rebuild and the views its swap recreates),
// so that dropping them without CASCADE fails: a SQL function with a `BEGIN ATOMIC` body, a
// row-level security policy, a column or function using a view's row type, a view other than
// those (one using only a row type). Each as `pg_describe_object` names it (a rule, or a view's
// column, as its view), with the relation it binds to.
const OTHER_DEPENDENTS: &str = "
    WITH rels AS (SELECT c.oid, c.reltype FROM pg_class c WHERE c.oid = ANY($1))
    SELECT DISTINCT
           CASE WHEN d.classid = 'pg_rewrite'::regclass
                THEN pg_describe_object('pg_class'::regclass, r.ev_class, 0)
                WHEN d.classid = 'pg_class'::regclass
                     AND (SELECT relkind FROM pg_class WHERE oid = d.objid) IN ('v', 'm')
                THEN pg_describe_object('pg_class'::regclass, d.objid, 0)
                ELSE pg_describe_object(d.classid, d.objid, d.objsubid) END,
           rels.oid
    FROM pg_depend d
    JOIN rels ON (d.refclassid = 'pg_class'::regclass AND d.refobjid = rels.oid)
              OR (d.refclassid = 'pg_type'::regclass AND d.refobjid = rels.reltype)
    LEFT JOIN pg_rewrite r ON d.classid = 'pg_rewrite'::regclass AND r.oid = d.objid
    WHERE d.deptype = 'n'
      AND NOT (d.classid = 'pg_rewrite'::regclass AND r.ev_class = ANY($1))
    ORDER BY 2, 1";

/// What a rebuild of one view would do beyond the view itself, found before anything is built.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RebuildCheck {
    /// Why it would stop: a view reading it that no usable manifest manages would have to be
    /// dropped by the swap, or something else (a function, a policy) binds to it or to them.
    pub blocker: Option<String>,
    /// The views reading it (`schema.name`, each after what it reads), which the swap drops and
    /// recreates from their manifests.
    pub recreates: Vec<String>,
}

/// What a rebuild of the view with `oid` would recreate with it, or why it would stop. (Whether
/// the role may build the new view beside it is in its [`ViewState`].)
pub async fn rebuild_check(
    client: &impl GenericClient,
    view: Rel<'_>,
    oid: u32,
    managed: &Managed,
) -> Result<RebuildCheck, DbError> {
    let deps = dependents(client, oid).await?;
    let blocked = match unmanaged(view, &deps, managed) {
        Some(e) => Some(e),
        None => bound(client, view, oid, &deps).await?,
    };
    Ok(match blocked {
        Some(e) => RebuildCheck {
            blocker: Some(e.message),
            recreates: Vec::new(),
        },
        None => RebuildCheck {
            blocker: None,
            recreates: deps.iter().map(|(s, n, _, _)| format!("{s}.{n}")).collect(),
        },
    })
}

/// The temporary name a rebuild builds under: short, ours, and the same for the same view so an
/// interrupted rebuild's leftover is found and replaced.
pub fn temp_name(oid: u32) -> String {
    format!("_rs_{oid}_new")
}

/// Whether `name` is one [`temp_name`] gives: a rebuild's new view (a manifest cannot name one).
fn is_temp_name(name: &str) -> bool {
    name.strip_prefix("_rs_")
        .and_then(|r| r.strip_suffix("_new"))
        .is_some_and(|oid| !oid.is_empty() && oid.bytes().all(|b| b.is_ascii_digit()))
}

/// (schema, name, relkind, oid) of everything depending on `oid` through a rule, each after
/// what it reads.
type Dependent = (String, String, String, u32);

async fn dependents(client: &impl GenericClient, oid: u32) -> Result<Vec<Dependent>, DbError> {
    client
        .query(DEPENDENTS, &[&oid])
        .await?
        .iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?)))
        .collect()
}

/// Why a rebuild of `view` (OID `oid`, read by `deps`) cannot drop it and its readers: what
/// else binds to them (see [`OTHER_DEPENDENTS`]). PostgreSQL would refuse the swap's `DROP`;
/// found first, it is an error that names them and says what to do, before anything is built.
async fn bound(
    client: &impl GenericClient,
    view: Rel<'_>,
    oid: u32,
    deps: &[Dependent],
) -> Result<Option<DbError>, DbError> {
    let oids: Vec<u32> = std::iter::once(oid)
        .chain(deps.iter().map(|d| d.3))
        .collect();
    let rows = client.query(OTHER_DEPENDENTS, &[&oids]).await?;
    let mut found = Vec::with_capacity(rows.len());
    for r in &rows {
        let what: Option<String> = r.try_get(0)?;
        let on: u32 = r.try_get(1)?;
        let what = what.unwrap_or_else(|| "an object".to_string());
        found.push(match deps.iter().find(|d| d.3 == on) {
            Some((s, n, _, _)) => format!("{what} (on {s}.{n}, which the rebuild recreates)"),
            None => what,
        });
    }
    if found.is_empty() {
        return Ok(None);
    }
    let one = found.len() == 1;
    Ok(Some(DbError {
        kind: etl_core::FailureKind::OwnError,
        code: None,
        connect: false,
        message: format!(
            "cannot rebuild {}: {} depend{} on it, and PostgreSQL cannot drop the old view under {}; \
             drop or change {} by hand (a SQL function whose body is a string, `AS $$…$$`, \
             reads the view without binding to it; one with `BEGIN ATOMIC` binds)",
            view.key(),
            found.join(", "),
            if one { "s" } else { "" },
            if one { "it" } else { "them" },
            if one { "it" } else { "them" },
        ),
    }))
}

/// A rebuild's new view, built under its temporary name and dressed as the old view is, waiting
/// for its swap. A swap that failed (a reader held the old view past the lock timeout) can be
/// tried again with it, on the same session, without running the query again.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Built {
    /// The old view's OID, whose dependents the swap recreates.
    oid: u32,
    /// The old view's index names, in the order the copies were made on the new view.
    indexes: Vec<String>,
}

#[cfg(test)]
impl Built {
    /// What a fake session's build returns.
    pub fn fake() -> Self {
        Built::default()
    }
}

/// Builds `query` under `temp` and gives it what `view` carries (indexes, grants, comments,
/// owner, settings), outside any transaction that touches the old view: readers never wait for
/// it. Whatever fails, nothing is left under `temp`.
pub async fn build(
    client: &mut Client,
    view: Rel<'_>,
    temp: &str,
    query: &str,
) -> Result<Built, DbError> {
    let temp_rel = Rel {
        schema: view.schema,
        name: temp,
    };
    drop_if_exists(client, temp_rel).await?;
    client
        .execute(&create_empty_sql(&temp_rel.quoted(), query), &[])
        .await?;
    let dressed = async {
        refresh(client, temp_rel, false).await?;
        let (oid, dress) = capture(&*client, view).await?;
        put_on(&*client, temp_rel, &view.key(), &dress, |n, _| {
            format!("{temp}_ix{n}")
        })
        .await?;
        Ok::<_, DbError>(Built {
            oid,
            indexes: dress.indexes.into_iter().map(|ix| ix.name).collect(),
        })
    }
    .await;
    if dressed.is_err() {
        drop_temporary(client, temp_rel).await;
    }
    dressed
}

/// Drops a rebuild's temporary view, saying so when it cannot (the next run's recovery drops it).
pub async fn drop_temporary(client: &Client, temp: Rel<'_>) {
    if let Err(cleanup) = drop_if_exists(client, temp).await {
        tracing::warn!(view = %temp.key(), error = %cleanup, "could not drop the temporary view; the next run drops it");
    }
}

/// In one short transaction under `lock_timeout_ms`, drops the old view and gives `temp` (made
/// by [`build`]) its name and its indexes' names. When other views read the old one, they must
/// all be managed materialized views (`managed`: key → (query, hash)): the same transaction
/// drops and recreates them from their manifests, dressed as they were. A dependent no manifest
/// manages stops the swap with an error naming it. `temp` is left as it is when the swap fails:
/// the caller tries again or drops it.
#[allow(clippy::too_many_arguments)]
pub async fn swap(
    client: &mut Client,
    view: Rel<'_>,
    temp: &str,
    built: &Built,
    hash: &str,
    run_id: &str,
    lock_timeout_ms: u64,
    managed: &Managed,
) -> Result<Vec<String>, DbError> {
    let temp = Rel {
        schema: view.schema,
        name: temp,
    };
    let deps = dependents(&*client, built.oid).await?;
    if let Some(e) = unmanaged(view, &deps, managed) {
        return Err(e);
    }
    if let Some(e) = bound(&*client, view, built.oid, &deps).await? {
        return Err(e);
    }
    let mut dep_dress = Vec::with_capacity(deps.len());
    for (s, n, _, _) in &deps {
        dep_dress.push(capture(&*client, Rel { schema: s, name: n }).await?.1);
    }

    let tx = client.transaction().await?;
    tx.execute(
        "SELECT set_config('lock_timeout', $1, true)",
        &[&format!("{lock_timeout_ms}ms")],
    )
    .await?;
    // The dependents first, deepest first, then the view, each without CASCADE: should anything
    // else have come to depend on one of them since the check, its DROP fails and the whole
    // swap rolls back, so nothing unmanaged is ever dropped.
    for (s, n, _, _) in deps.iter().rev() {
        tx.batch_execute(&format!(
            "DROP MATERIALIZED VIEW {}",
            Rel { schema: s, name: n }.quoted()
        ))
        .await?;
    }
    tx.batch_execute(&format!("DROP MATERIALIZED VIEW {}", view.quoted()))
        .await?;
    tx.batch_execute(&format!(
        "ALTER MATERIALIZED VIEW {} RENAME TO {}",
        temp.quoted(),
        ident(view.name)
    ))
    .await?;
    for (n, ix) in built.indexes.iter().enumerate() {
        tx.batch_execute(&format!(
            "ALTER INDEX {}.{} RENAME TO {}",
            ident(view.schema),
            ident(&format!("{}_ix{n}", temp.name)),
            ident(ix)
        ))
        .await?;
    }
    tx.execute(
        UPSERT_STATE,
        &[&view.key(), &hash, &run_id, &view.schema, &view.name],
    )
    .await?;
    let mut recreated = Vec::with_capacity(deps.len());
    // Each dependent runs its query under its manifest's statement timeout, when it has one.
    let base_timeout: Option<String> = if deps
        .iter()
        .any(|(s, n, _, _)| managed.statement_ms.contains_key(&format!("{s}.{n}")))
    {
        Some(
            tx.query_one("SELECT current_setting('statement_timeout')", &[])
                .await?
                .try_get(0)?,
        )
    } else {
        None
    };
    for ((s, n, _, _), d) in deps.iter().zip(&dep_dress) {
        let key = format!("{s}.{n}");
        let Some((query, dep_hash)) = managed.views.get(&key) else {
            continue;
        };
        let rel = Rel { schema: s, name: n };
        async {
            // Its own, or (after one with its own) the swap's again.
            if let Some(base) = &base_timeout {
                let timeout = managed
                    .statement_ms
                    .get(&key)
                    .map_or_else(|| base.clone(), |ms| format!("{ms}ms"));
                tx.execute(
                    "SELECT set_config('statement_timeout', $1, true)",
                    &[&timeout],
                )
                .await?;
            }
            tx.execute(&create_empty_sql(&rel.quoted(), query), &[])
                .await?;
            tx.batch_execute(&format!("REFRESH MATERIALIZED VIEW {}", rel.quoted()))
                .await
        }
        .await
        .map_err(|e| {
            let mut e = in_context(
                e,
                format!(
                    "recreating {key}, which reads {}, from its manifest's query",
                    view.key()
                ),
                "both keep their old definitions; fix that manifest's query",
            );
            // The dependent's own timeout is the one that ran out, not the rebuilt view's.
            if let Some(ms) = managed.statement_ms.get(&key) {
                if e.code.as_deref() == Some("57014") && e.message.contains("statement timeout") {
                    e.message = format!(
                        "{} [statement_timeout {ms}ms, from the statement_timeout column of \
                         {key}'s manifest]",
                        e.message
                    );
                }
            }
            e
        })?;
        put_on(&tx, rel, &key, d, |_, original| original.to_string()).await?;
        tx.execute(UPSERT_STATE, &[&key, dep_hash, &run_id, s, n])
            .await?;
        recreated.push(key);
    }
    tx.commit().await?;
    Ok(recreated)
}

fn unmanaged(view: Rel<'_>, deps: &[Dependent], managed: &Managed) -> Option<DbError> {
    // Another run's rebuild of a view reading this one, its new view built and not yet
    // swapped in: not a view to drop by hand, a run to let finish.
    if let Some((s, n, _, _)) = deps.iter().find(|(_, n, k, _)| k == "m" && is_temp_name(n)) {
        return Some(DbError {
            kind: etl_core::FailureKind::OwnError,
            code: None,
            connect: false,
            message: format!(
                "cannot rebuild {} now: another run is rebuilding a view that reads it (its new \
                 view {s}.{n}, not yet swapped in, reads {}); run again once that run is over \
                 (`reporting-seeder run history` shows it)",
                view.key(),
                view.key()
            ),
        });
    }
    let bad: Vec<String> = deps
        .iter()
        .filter(|(s, n, k, _)| k != "m" || !managed.views.contains_key(&format!("{s}.{n}")))
        .map(|(s, n, k, _)| {
            let key = format!("{s}.{n}");
            match (k.as_str(), managed.unusable.get(&key)) {
                ("m", Some(why)) => format!("materialized view {key} (its manifest {why})"),
                ("m", None) => format!("materialized view {key} (no manifest manages it)"),
                _ => format!("view {key} (no manifest manages it)"),
            }
        })
        .collect();
    if bad.is_empty() {
        return None;
    }
    Some(DbError {
        kind: etl_core::FailureKind::OwnError,
        code: None,
        connect: false,
        message: format!(
            "cannot rebuild {}: {} read{} it, and the rebuild would have to drop {}; drop or change {} by hand, or fix, enable or add {} manifest{}",
            view.key(),
            bad.join(", "),
            if bad.len() == 1 { "s" } else { "" },
            if bad.len() == 1 { "it" } else { "them" },
            if bad.len() == 1 { "it" } else { "them" },
            if bad.len() == 1 { "its" } else { "their" },
            if bad.len() == 1 { "" } else { "s" },
        ),
    })
}

/// The (reader, read) pairs of materialized views, by `schema.name`, from `pg_depend`, through
/// plain views too (a reader of a plain view that reads a managed view depends on it), for the
/// readers in `readers` only: a run never uses a pair whose reader it does not build, and a
/// `refresh_table` on a database of ten thousand views reads one view's pairs instead of all.
///
/// The readers' OIDs are computed once, up front (the names looked up in `pg_namespace` and
/// `pg_class`, in an `ARRAY(…)` sub-select the server runs once), and each reader's rule is found
/// by its reader, rather than by joining `pg_namespace`, `pg_class` and `pg_rewrite` on names in
/// the main query: the planner orders a five-way join instead of a seven-way one (whose plan took
/// 7–11 ms of the run's connection while nine backends started on two cores). The names are looked
/// up in the catalog rather than by `to_regclass`, which fails the whole query with "permission
/// denied for schema" when one view's schema is one the role may not use (that view's own work
/// fails, saying so, and the others go on). BENCHMARKS.md has what each form saved a whole run.
pub async fn dependencies(
    client: &Client,
    readers: &[Rel<'_>],
) -> Result<Vec<(String, String)>, DbError> {
    let (schemas, names) = as_arrays(readers);
    client
        .query_typed(
            // What each reader's rule depends on, and, through plain views it reads (which a
            // manifest's query may go through: `SELECT * FROM public.some_view`), what theirs
            // depend on, however deep; then the materialized views among them.
            "WITH RECURSIVE reach(reader, read) AS (
                 SELECT dc.oid, d.refobjid
                 FROM pg_class dc
                 JOIN pg_depend d
                   ON d.classid = 'pg_rewrite'::regclass AND d.refclassid = 'pg_class'::regclass
                  AND d.objid = (SELECT r.oid FROM pg_rewrite r
                                 WHERE r.ev_class = dc.oid AND r.rulename = '_RETURN')
                 WHERE dc.oid = ANY (ARRAY(
                         SELECT c.oid
                         FROM unnest($1::text[], $2::text[]) AS w(schema_name, view_name)
                         JOIN pg_namespace n ON n.nspname = w.schema_name
                         JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = w.view_name))
                   AND dc.relkind = 'm'
                 UNION
                 SELECT reach.reader, d.refobjid
                 FROM reach
                 JOIN pg_class vc ON vc.oid = reach.read AND vc.relkind = 'v'
                 JOIN pg_depend d
                   ON d.classid = 'pg_rewrite'::regclass AND d.refclassid = 'pg_class'::regclass
                  AND d.objid = (SELECT r.oid FROM pg_rewrite r
                                 WHERE r.ev_class = vc.oid AND r.rulename = '_RETURN')
             )
             SELECT DISTINCT dn.nspname || '.' || dc.relname, un.nspname || '.' || uc.relname
             FROM reach
             JOIN pg_class dc ON dc.oid = reach.reader
             JOIN pg_namespace dn ON dn.oid = dc.relnamespace
             JOIN pg_class uc ON uc.oid = reach.read
             JOIN pg_namespace un ON un.oid = uc.relnamespace
             WHERE uc.relkind = 'm' AND dc.oid <> uc.oid",
            &[(&schemas, Type::TEXT_ARRAY), (&names, Type::TEXT_ARRAY)],
        )
        .await?
        .iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect()
}

// The figures, and the view's OID recorded where it is not yet (a view just created, or built
// before the tool recorded OIDs): a lookup by key that finds nothing to write, most times.
const STATS: &str = "
    WITH v AS (
        SELECT c.oid, greatest(c.reltuples, 0)::bigint AS rows,
               pg_total_relation_size(c.oid) AS bytes
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind = 'm'
    ), known AS (
        UPDATE reporting.seeder_view_state s SET view_oid = v.oid FROM v
        WHERE s.table_name = $1::text || '.' || $2::text AND s.view_oid IS NULL
        RETURNING 1
    )
    SELECT rows, bytes FROM v";

/// A worker session's settings, set once when it opens; each only where the server knows it, so
/// an older server takes the rest.
///
/// - `plan_cache_mode = force_generic_plan`: its prepared statements planned once, not at each
///   execution. A worker runs the same few bookkeeping statements (history rows, locks,
///   figures) for every view, each time with other values. PostgreSQL plans a prepared statement
///   afresh for each of its first five executions (a custom plan) before it considers reusing
///   one, so a worker with six views planned nearly every execution: 13 % of the server's CPU in
///   a run of 48 views on eight workers, 6 % with this setting. The statements are lookups by
///   key, whose generic plan is the custom one. Only this session's prepared statements are
///   affected: a view's own query is planned by `CREATE` / `REFRESH` as always (PostgreSQL 12+).
/// - `client_connection_check_interval` (PostgreSQL 14+), unless the server or role already sets
///   one: while a statement runs, the server checks every 2 s that the tool is still there. A
///   tool killed (`kill -9`, an evicted pod) or cut off mid-`REFRESH` then has its statements
///   stopped within seconds, and their locks freed, instead of running to their end for nobody.
pub async fn tune_session(client: &Client) -> Result<(), DbError> {
    client
        .batch_execute(&format!("{PLAN_ONCE}; {CHECK_CLIENT}"))
        .await?;
    Ok(())
}

/// The second of [`tune_session`]'s settings alone, for a session whose statements may run long
/// but are not the workers' bookkeeping (a release snapshot's reads of a whole view).
pub async fn check_client(client: &Client) -> Result<(), DbError> {
    client.batch_execute(CHECK_CLIENT).await?;
    Ok(())
}

const PLAN_ONCE: &str = "SELECT set_config('plan_cache_mode', 'force_generic_plan', false)
    WHERE current_setting('plan_cache_mode', true) IS NOT NULL";

const CHECK_CLIENT: &str = "SELECT set_config('client_connection_check_interval', '2000', false)
    WHERE current_setting('client_connection_check_interval', true) = '0'";

/// Prepares the figures' statement, which every view runs after `ANALYZE`.
pub async fn prepare_view_statements(client: &ClientWrapper) -> Result<(), DbError> {
    super::prepare_all(client, &[STATS]).await
}

/// Refreshes the view and analyzes it in one message, so `ANALYZE` runs only when the refresh
/// succeeded and waits for no round trip after it; the figures are read in the same flight.
/// One message is one transaction: the new contents become visible with their statistics, and
/// the refresh's lock is held until `ANALYZE` is done (a plain refresh keeps readers waiting a
/// moment longer; a concurrent one never blocks them).
pub async fn refresh_and_analyze(
    client: &ClientWrapper,
    view: Rel<'_>,
    concurrently: bool,
) -> Result<ViewStats, DbError> {
    let statement = client.prepare_cached(STATS).await?;
    let target = view.quoted();
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&view.schema, &view.name];
    let (statement, params) = (&statement, &params);
    let stats = refresh_falling_back(view, concurrently, |how| {
        let sql = format!("REFRESH MATERIALIZED VIEW {how}{target}; ANALYZE {target}");
        async move {
            let (done, stats) = tokio::join!(
                client.batch_execute(&sql),
                client.query_one(statement, params)
            );
            done.map(|()| stats)
        }
    })
    .await?;
    figures(&stats?)
}

fn figures(r: &tokio_postgres::Row) -> Result<ViewStats, DbError> {
    Ok(ViewStats {
        rows: r.try_get(0)?,
        bytes: r.try_get(1)?,
    })
}

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
    figures(&stats?)
}

/// Sets this session's timeouts (milliseconds; 0 is off); `None` puts one back to the value the
/// connection started with (the run's settings).
pub async fn set_timeouts(
    client: &Client,
    statement_ms: Option<u64>,
    lock_ms: Option<u64>,
) -> Result<(), DbError> {
    let text = |v: Option<u64>| v.map(|ms| ms.to_string());
    client
        .execute(
            "SELECT set_config('statement_timeout', coalesce($1::text,
                        (SELECT reset_val FROM pg_settings WHERE name = 'statement_timeout')), false),
                    set_config('lock_timeout', coalesce($2::text,
                        (SELECT reset_val FROM pg_settings WHERE name = 'lock_timeout')), false)",
            &[&text(statement_ms), &text(lock_ms)],
        )
        .await?;
    Ok(())
}

pub async fn active_queries(client: &Client) -> Result<i64, DbError> {
    Ok(client
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND pid <> pg_backend_pid()",
            &[],
        )
        .await?
        .try_get(0)?)
}

/// The schemas unqualified names resolve in (existing ones, in search_path order), and the
/// relations of any kind in them, as `schema.name`, whose name is one of `names` (the managed
/// views' names): an unqualified name resolves to the first of those, which may be a table that
/// shadows a managed view further down the path.
pub async fn search_path(
    client: &Client,
    names: &[&str],
) -> Result<(Vec<String>, Vec<String>), DbError> {
    let r = client
        .query_typed_one(
            "SELECT current_schemas(false)::text[],
                    ARRAY(SELECT n.nspname || '.' || c.relname
                          FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                          WHERE n.nspname = ANY (current_schemas(false))
                            AND c.relname = ANY ($1::text[]))::text[]",
            &[(&names, Type::TEXT_ARRAY)],
        )
        .await?;
    Ok((r.try_get(0)?, r.try_get(1)?))
}

#[cfg(test)]
mod tests {
    use super::{is_temp_name, temp_name};

    #[test]
    fn a_temporary_name_is_recognised_and_nothing_else() {
        assert!(is_temp_name(&temp_name(42)) && is_temp_name(&temp_name(u32::MAX)));
        for other in [
            "_rs__new",
            "_rs_4x_new",
            "rs_42_new",
            "_rs_42_old",
            "reports",
        ] {
            assert!(!is_temp_name(other), "{other}");
        }
    }
}
