//! Reads the manifest tables: custom reports per agency, canned reports and their per-agency
//! mappings.

use etl_core::DbError;
use tokio_postgres::Client;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ReportType {
    Custom,
    Canned,
}

impl ReportType {
    pub fn as_str(self) -> &'static str {
        match self {
            ReportType::Custom => "custom",
            ReportType::Canned => "canned",
        }
    }
}

/// One manifest row. For a canned report this is one agency's mapping: `manifest_id` is the
/// mapping's id and `report_id` the canned report's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestRow {
    pub report_type: ReportType,
    pub manifest_id: i64,
    pub report_id: Option<i64>,
    pub table_name: String,
    pub report_name: String,
    pub agency_id: i64,
    pub agency_slug: String,
    pub query: String,
    pub enabled: bool,
    /// The manifest's own timeouts, where its table has such columns (text as stored).
    pub statement_timeout: Option<String>,
    pub lock_timeout: Option<String>,
}

// Optional columns are read through to_jsonb(row), once per row, which has a key only for the
// columns the table has: a manifest table without `enabled` (as the old Django model has the
// canned one) means every row is enabled; `statement_timeout` / `lock_timeout`, where a table has
// them, override the run's timeouts for that view. `enabled` may be a boolean, a number or text
// (`1`, `t`, `yes`, `on`…); NULL or anything else is not enabled, in both tables, as the old tool's
// `enabled = true` filter had it.
const ENABLED: &str = "CASE WHEN NOT (j ? 'enabled') THEN true
           ELSE coalesce(lower(btrim(j ->> 'enabled')) IN ('true', 't', '1', 'yes', 'y', 'on'), false) END";

fn custom_sql() -> String {
    format!(
        "SELECT m.id::bigint, m.table_name::text, coalesce(m.report_name, '')::text, m.agency_id::bigint,
                m.agency_slug::text, m.query::text, {ENABLED},
                j ->> 'statement_timeout', j ->> 'lock_timeout'
         FROM reporting.seeder_custom_report_manifest m CROSS JOIN LATERAL (SELECT to_jsonb(m) AS j) x"
    )
}

fn canned_sql() -> String {
    format!(
        "SELECT m.id::bigint, r.id::bigint, r.table_name::text, coalesce(r.report_name, '')::text,
                m.agency_id::bigint, m.agency_slug::text, r.query::text, {ENABLED},
                to_jsonb(r) ->> 'statement_timeout', to_jsonb(r) ->> 'lock_timeout'
         FROM reporting.seeder_canned_report_manifest m
         CROSS JOIN LATERAL (SELECT to_jsonb(m) AS j) x
         JOIN reporting.seeder_canned_report r ON r.id = m.canned_report_id"
    )
}

/// Every manifest row, enabled or not (the caller tells "disabled" from "unknown").
pub async fn load(client: &Client) -> Result<Vec<ManifestRow>, DbError> {
    // Both sent at once: one round trip where there would be two.
    let (custom_sql, canned_sql) = (custom_sql(), canned_sql());
    let (custom, canned) = tokio::join!(
        client.query_typed(&custom_sql, &[]),
        client.query_typed(&canned_sql, &[])
    );
    let (custom, canned) = (custom?, canned?);
    let mut rows = Vec::with_capacity(custom.len() + canned.len());
    for r in custom {
        rows.push(ManifestRow {
            report_type: ReportType::Custom,
            manifest_id: r.try_get(0)?,
            report_id: None,
            table_name: r.try_get::<_, Option<String>>(1)?.unwrap_or_default(),
            report_name: r.try_get(2)?,
            agency_id: r.try_get::<_, Option<i64>>(3)?.unwrap_or_default(),
            agency_slug: r.try_get::<_, Option<String>>(4)?.unwrap_or_default(),
            query: r.try_get::<_, Option<String>>(5)?.unwrap_or_default(),
            enabled: r.try_get::<_, Option<bool>>(6)?.unwrap_or(false),
            statement_timeout: r.try_get(7)?,
            lock_timeout: r.try_get(8)?,
        });
    }
    for r in canned {
        rows.push(ManifestRow {
            report_type: ReportType::Canned,
            manifest_id: r.try_get(0)?,
            report_id: Some(r.try_get(1)?),
            table_name: r.try_get::<_, Option<String>>(2)?.unwrap_or_default(),
            report_name: r.try_get(3)?,
            agency_id: r.try_get::<_, Option<i64>>(4)?.unwrap_or_default(),
            agency_slug: r.try_get::<_, Option<String>>(5)?.unwrap_or_default(),
            query: r.try_get::<_, Option<String>>(6)?.unwrap_or_default(),
            enabled: r.try_get::<_, Option<bool>>(7)?.unwrap_or(false),
            statement_timeout: r.try_get(8)?,
            lock_timeout: r.try_get(9)?,
        });
    }
    Ok(rows)
}

/// The tables [`load`](self) reads, in schema `reporting`: a lock that keeps a reader out of one
/// of them (ACCESS EXCLUSIVE: an `ALTER TABLE`, a `TRUNCATE`, a `LOCK TABLE`) holds up a run's
/// start.
pub const TABLES: [&str; 3] = [
    "seeder_custom_report_manifest",
    "seeder_canned_report",
    "seeder_canned_report_manifest",
];
