//! The built-in demo: its own database and a small data set with manifests.

use etl_core::DbError;
use tokio_postgres::Client;

use super::ident;

/// Drops and recreates `dbname` (on the server `client` is connected to), closing any session
/// still connected to it. Only ever called with the demo's own database name.
pub async fn reset_database(client: &Client, dbname: &str) -> Result<(), DbError> {
    client
        .batch_execute(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            ident(dbname)
        ))
        .await?;
    client
        .batch_execute(&format!("CREATE DATABASE {}", ident(dbname)))
        .await?;
    Ok(())
}

/// Two agencies, arrests data, two custom reports, two canned reports — one shared by both
/// agencies — and one deliberately broken manifest, disabled, to show `enabled`.
const DATA: &str = r#"
CREATE SCHEMA demo;
CREATE TABLE demo.arrests (
    id integer PRIMARY KEY,
    agency_slug text NOT NULL,
    offense text NOT NULL,
    arrested_on date NOT NULL
);
INSERT INTO demo.arrests
SELECT i,
       CASE WHEN i % 3 = 0 THEN 'metropolis' ELSE 'gotham' END,
       (ARRAY['burglary', 'assault', 'fraud', 'vandalism', 'theft'])[1 + i % 5],
       date '2026-01-01' + (i % 300)
FROM generate_series(1, 5000) AS s(i);

INSERT INTO reporting.seeder_custom_report_manifest
    (table_name, report_name, agency_id, agency_slug, query, enabled)
VALUES
    ('reporting.gotham_arrests_by_offense', 'Gotham arrests by offense', 1, 'gotham',
     'SELECT offense, count(*) AS arrests FROM demo.arrests WHERE agency_slug = ''gotham'' GROUP BY offense', true),
    ('reporting.metropolis_arrests_by_month', 'Metropolis arrests by month', 2, 'metropolis',
     'SELECT date_trunc(''month'', arrested_on)::date AS month, count(*) AS arrests FROM demo.arrests WHERE agency_slug = ''metropolis'' GROUP BY 1', true),
    ('reporting.gotham_draft', 'Gotham draft (disabled)', 1, 'gotham',
     'SELECT 1 / 0 AS never', false);

INSERT INTO reporting.seeder_canned_report (table_name, report_name, query)
VALUES
    ('reporting.canned_arrests_by_agency', 'Arrests by agency',
     'SELECT agency_slug, count(*) AS arrests, max(arrested_on) AS latest FROM demo.arrests GROUP BY agency_slug'),
    ('reporting.canned_offense_totals', 'Offense totals',
     'SELECT offense, count(*) AS arrests FROM demo.arrests GROUP BY offense');

INSERT INTO reporting.seeder_canned_report_manifest (agency_id, agency_slug, canned_report_id)
SELECT a.id, a.slug, r.id
FROM (VALUES (1, 'gotham'), (2, 'metropolis')) AS a(id, slug)
JOIN reporting.seeder_canned_report r ON r.table_name = 'reporting.canned_arrests_by_agency'
UNION ALL
SELECT 1, 'gotham', r.id FROM reporting.seeder_canned_report r
WHERE r.table_name = 'reporting.canned_offense_totals';
"#;

pub async fn load(client: &Client) -> Result<(), DbError> {
    client.batch_execute(DATA).await?;
    Ok(())
}

/// A few lines of the shared canned view, for the closing message.
pub async fn preview(client: &Client) -> Result<Vec<String>, DbError> {
    let rows = client
        .query(
            "SELECT agency_slug, arrests, latest::text FROM reporting.canned_arrests_by_agency ORDER BY 1",
            &[],
        )
        .await?;
    rows.iter()
        .map(|r| {
            let slug: String = r.try_get(0)?;
            let arrests: i64 = r.try_get(1)?;
            let latest: String = r.try_get(2)?;
            Ok(format!("{slug:<12} {arrests:>6} arrests, latest {latest}"))
        })
        .collect()
}
