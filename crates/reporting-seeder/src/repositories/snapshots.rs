//! Release snapshots: a view's columns and per-column statistics at a release, in the old
//! tool's table (never updated once written).

use etl_core::DbError;
use tokio_postgres::Client;

use super::{ident, Rel};

/// Which snapshot table exists: Django's quoting made `public."reporting.seeder_release_snapshot"`,
/// the documentation says `reporting.seeder_release_snapshot` (created by migration V4 when
/// neither exists).
pub async fn table(client: &Client) -> Result<&'static str, DbError> {
    let django: bool = client
        .query_one(
            "SELECT to_regclass('public.\"reporting.seeder_release_snapshot\"') IS NOT NULL",
            &[],
        )
        .await?
        .try_get(0)?;
    Ok(if django {
        "public.\"reporting.seeder_release_snapshot\""
    } else {
        "reporting.seeder_release_snapshot"
    })
}

/// The view's columns and their types, in order.
pub async fn columns(client: &Client, view: Rel<'_>) -> Result<Vec<(String, String)>, DbError> {
    client
        .query(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod)
             FROM pg_attribute a
             JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped
             ORDER BY a.attnum",
            &[&view.schema, &view.name],
        )
        .await?
        .iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect()
}

/// A `TABLESAMPLE SYSTEM` sample: the percentage of the view's pages, and the seed that makes
/// every statement of one snapshot read the same pages (`REPEATABLE`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    pub percent: f64,
    pub seed: f64,
}

/// The `FROM` clause's sampling, its parameters numbered from `first`.
fn sample_clause(sample: Option<Sample>, first: usize) -> String {
    match sample {
        Some(_) => format!(
            " TABLESAMPLE SYSTEM (CAST(${first} AS float8)::float4) REPEATABLE (${})",
            first + 1
        ),
        None => String::new(),
    }
}

/// Rows, and per column the non-null and distinct counts, in one pass over the view (or a
/// `TABLESAMPLE SYSTEM` sample of it).
pub async fn counts(
    client: &Client,
    view: Rel<'_>,
    columns: &[(String, String)],
    sample: Option<Sample>,
) -> Result<(i64, Vec<(i64, i64)>), DbError> {
    let mut select = vec!["count(*)".to_string()];
    for (name, _) in columns {
        let c = ident(name);
        // Through text, so that types without equality (json, point…) can be counted too.
        select.push(format!("count({c})"));
        select.push(format!("count(DISTINCT {c}::text)"));
    }
    let sql = format!(
        "SELECT {} FROM {}{}",
        select.join(", "),
        view.quoted(),
        sample_clause(sample, 1)
    );
    let row = match sample {
        Some(s) => client.query_one(&sql, &[&s.percent, &s.seed]).await?,
        None => client.query_one(&sql, &[]).await?,
    };
    let total: i64 = row.try_get(0)?;
    let mut out = Vec::with_capacity(columns.len());
    for i in 0..columns.len() {
        out.push((row.try_get(1 + 2 * i)?, row.try_get(2 + 2 * i)?));
    }
    Ok((total, out))
}

/// The most frequent values of one column (as text), most frequent first.
pub async fn top_values(
    client: &Client,
    view: Rel<'_>,
    column: &str,
    limit: i64,
    sample: Option<Sample>,
) -> Result<Vec<(Option<String>, i64)>, DbError> {
    let sql = format!(
        "SELECT {c}::text, count(*) FROM {v}{sample} GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT $1",
        c = ident(column),
        v = view.quoted(),
        sample = sample_clause(sample, 2)
    );
    let rows = match sample {
        Some(s) => client.query(&sql, &[&limit, &s.percent, &s.seed]).await?,
        None => client.query(&sql, &[&limit]).await?,
    };
    rows.iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect()
}

/// One snapshot, as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub id: uuid::Uuid,
    pub manifest_id: i64,
    pub table_name: String,
    pub report_name: Option<String>,
    pub agency_id: Option<i64>,
    pub agency_slug: Option<String>,
    pub release_tag: String,
    pub release_version: Option<String>,
    pub status: String,
    pub execution_duration_ms: i32,
    pub total_rows: i64,
    pub total_columns: i32,
    pub schema_hash: String,
    pub columns: serde_json::Value,
    pub column_stats: serde_json::Value,
    /// ISO 8601, UTC (read back only).
    pub released_at: String,
}

/// Writes a snapshot (they are never updated).
pub async fn insert(client: &Client, s: &Snapshot) -> Result<(), DbError> {
    let table = table(client).await?;
    client
        .execute(
            &format!(
                "INSERT INTO {table} (id, manifest_id, table_name, report_name, agency_id,
                     agency_slug, release_tag, release_version, released_at, executed_at, status,
                     execution_duration_ms, total_rows, total_columns, schema_hash, columns,
                     column_stats)
                 VALUES ($1::uuid, $2::bigint, $3::text, $4::text, $5::bigint, $6::text,
                     $7::text, $8::text, now(), now(), $9::text, $10::integer, $11::bigint,
                     $12::integer, $13::text, $14::jsonb, $15::jsonb)"
            ),
            &[
                &s.id,
                &s.manifest_id,
                &s.table_name,
                &s.report_name,
                &s.agency_id,
                &s.agency_slug,
                &s.release_tag,
                &s.release_version,
                &s.status,
                &s.execution_duration_ms,
                &s.total_rows,
                &s.total_columns,
                &s.schema_hash,
                &s.columns,
                &s.column_stats,
            ],
        )
        .await?;
    Ok(())
}

fn select_sql(table: &str, filter: &str) -> String {
    format!(
        "SELECT id, manifest_id::bigint, table_name::text, report_name::text, agency_id::bigint,
                agency_slug::text, release_tag::text, release_version::text, status::text,
                execution_duration_ms::integer, total_rows::bigint, total_columns::integer,
                schema_hash::text, columns::jsonb, column_stats::jsonb, to_char(released_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')
         FROM {table} WHERE {filter}"
    )
}

fn from_row(r: &tokio_postgres::Row) -> Result<Snapshot, DbError> {
    Ok(Snapshot {
        id: r.try_get(0)?,
        manifest_id: r.try_get(1)?,
        table_name: r.try_get(2)?,
        report_name: r.try_get(3)?,
        agency_id: r.try_get(4)?,
        agency_slug: r.try_get(5)?,
        release_tag: r.try_get(6)?,
        release_version: r.try_get(7)?,
        status: r.try_get(8)?,
        execution_duration_ms: r.try_get(9)?,
        total_rows: r.try_get(10)?,
        total_columns: r.try_get(11)?,
        schema_hash: r.try_get(12)?,
        columns: r.try_get(13)?,
        column_stats: r.try_get(14)?,
        released_at: r.try_get(15)?,
    })
}

pub async fn by_id(client: &Client, id: uuid::Uuid) -> Result<Option<Snapshot>, DbError> {
    let table = table(client).await?;
    client
        .query_opt(&select_sql(table, "id = $1"), &[&id])
        .await?
        .as_ref()
        .map(from_row)
        .transpose()
}

/// The newest snapshot of `view` taken at `tag`.
pub async fn by_tag(client: &Client, view: &str, tag: &str) -> Result<Option<Snapshot>, DbError> {
    let table = table(client).await?;
    client
        .query_opt(
            &select_sql(
                table,
                "table_name = $1 AND release_tag = $2 ORDER BY released_at DESC, executed_at DESC LIMIT 1",
            ),
            &[&view, &tag],
        )
        .await?
        .as_ref()
        .map(from_row)
        .transpose()
}

/// The snapshots already taken at `tag` of any of `views`, oldest first: (view, id, when).
pub async fn taken_at(
    client: &Client,
    tag: &str,
    views: &[String],
) -> Result<Vec<(String, uuid::Uuid, String)>, DbError> {
    let table = table(client).await?;
    client
        .query(
            &format!(
                "SELECT table_name::text, id,
                        to_char(released_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')
                 FROM {table} WHERE release_tag = $1 AND table_name = ANY($2)
                 ORDER BY released_at, executed_at"
            ),
            &[&tag, &views],
        )
        .await?
        .iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
        .collect()
}

const BEGIN_READ: &str = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY";

/// What the snapshot jobs need from the database.
#[async_trait::async_trait]
pub trait Snapshots: Send {
    /// Starts the read-only transaction one snapshot's statistics are read in: one database
    /// snapshot for all of them, and the view's read lock held from the first read to the end.
    async fn snapshot_read_begin(&mut self) -> Result<(), DbError>;
    /// Ends it (it changed nothing: rolled back).
    async fn snapshot_read_end(&mut self) -> Result<(), DbError>;
    async fn snapshot_columns(&mut self, view: Rel<'_>) -> Result<Vec<(String, String)>, DbError>;
    async fn snapshot_counts(
        &mut self,
        view: Rel<'_>,
        columns: &[(String, String)],
        sample: Option<Sample>,
    ) -> Result<(i64, Vec<(i64, i64)>), DbError>;
    async fn snapshot_top_values(
        &mut self,
        view: Rel<'_>,
        column: &str,
        limit: i64,
        sample: Option<Sample>,
    ) -> Result<Vec<(Option<String>, i64)>, DbError>;
    async fn insert_snapshot(&mut self, s: &Snapshot) -> Result<(), DbError>;
    async fn snapshot_by_id(&mut self, id: uuid::Uuid) -> Result<Option<Snapshot>, DbError>;
    async fn snapshot_by_tag(&mut self, view: &str, tag: &str)
        -> Result<Option<Snapshot>, DbError>;
    /// The snapshots already taken at `tag` of any of `views`, oldest first: (view, id, when).
    async fn snapshots_taken_at(
        &mut self,
        tag: &str,
        views: &[String],
    ) -> Result<Vec<(String, uuid::Uuid, String)>, DbError>;
}

#[async_trait::async_trait]
impl Snapshots for super::PgSession {
    async fn snapshot_read_begin(&mut self) -> Result<(), DbError> {
        self.client()
            .batch_execute(BEGIN_READ)
            .await
            .map_err(DbError::from)
    }
    async fn snapshot_read_end(&mut self) -> Result<(), DbError> {
        self.client()
            .batch_execute("ROLLBACK")
            .await
            .map_err(DbError::from)
    }
    async fn snapshot_columns(&mut self, view: Rel<'_>) -> Result<Vec<(String, String)>, DbError> {
        columns(self.client(), view).await
    }
    async fn snapshot_counts(
        &mut self,
        view: Rel<'_>,
        cols: &[(String, String)],
        sample: Option<Sample>,
    ) -> Result<(i64, Vec<(i64, i64)>), DbError> {
        counts(self.client(), view, cols, sample).await
    }
    async fn snapshot_top_values(
        &mut self,
        view: Rel<'_>,
        column: &str,
        limit: i64,
        sample: Option<Sample>,
    ) -> Result<Vec<(Option<String>, i64)>, DbError> {
        top_values(self.client(), view, column, limit, sample).await
    }
    async fn insert_snapshot(&mut self, s: &Snapshot) -> Result<(), DbError> {
        insert(self.client(), s).await
    }
    async fn snapshot_by_id(&mut self, id: uuid::Uuid) -> Result<Option<Snapshot>, DbError> {
        by_id(self.client(), id).await
    }
    async fn snapshot_by_tag(
        &mut self,
        view: &str,
        tag: &str,
    ) -> Result<Option<Snapshot>, DbError> {
        by_tag(self.client(), view, tag).await
    }
    async fn snapshots_taken_at(
        &mut self,
        tag: &str,
        views: &[String],
    ) -> Result<Vec<(String, uuid::Uuid, String)>, DbError> {
        taken_at(self.client(), tag, views).await
    }
}
