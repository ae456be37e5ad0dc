//! Applies the control-table migrations (`migrations/*.sql`), each once, in order, under a
//! session advisory lock so that two processes starting together do not collide.

use etl_core::DbError;
use tokio_postgres::Client;

/// (version, name, SQL). Append only: never edit an applied migration.
const MIGRATIONS: &[(i32, &str, &str)] = &[
    (
        1,
        "control_tables",
        include_str!("../../migrations/V1__control_tables.sql"),
    ),
    (
        2,
        "attempts",
        include_str!("../../migrations/V2__attempts.sql"),
    ),
    (
        3,
        "statement_figures",
        include_str!("../../migrations/V3__statement_figures.sql"),
    ),
    (
        4,
        "release_snapshot",
        include_str!("../../migrations/V4__release_snapshot.sql"),
    ),
    (
        5,
        "success_index",
        include_str!("../../migrations/V5__success_index.sql"),
    ),
    (
        6,
        "statement_index",
        include_str!("../../migrations/V6__statement_index.sql"),
    ),
    (
        7,
        "run_selection",
        include_str!("../../migrations/V7__run_selection.sql"),
    ),
    (
        8,
        "view_oid",
        include_str!("../../migrations/V8__view_oid.sql"),
    ),
];

/// "reporting-seeder migrations", as a fixed advisory-lock key.
const LOCK_KEY: i64 = 0x7273_6d69_6772_6174;

pub async fn apply(client: &mut Client) -> Result<Vec<String>, DbError> {
    if all_applied(client).await {
        return Ok(Vec::new());
    }
    client
        .execute("SELECT pg_advisory_lock($1)", &[&LOCK_KEY])
        .await?;
    let result = apply_locked(client).await;
    // Release even on failure; a lost connection releases it anyway.
    let unlock = client
        .execute("SELECT pg_advisory_unlock($1)", &[&LOCK_KEY])
        .await;
    let applied = result?;
    unlock?;
    Ok(applied)
}

/// Whether every migration is recorded as applied: one round trip, no lock, the common case of
/// every run after the first. Anything else (no table yet, no schema, no privilege) takes the
/// locked path, which reports real errors.
pub async fn all_applied(client: &Client) -> bool {
    applied_versions(client)
        .await
        .is_ok_and(|done| MIGRATIONS.iter().all(|(v, _, _)| done.contains(v)))
}

/// The versions recorded as applied, in one round trip.
async fn applied_versions(client: &Client) -> Result<Vec<i32>, DbError> {
    let messages = client
        .simple_query("SELECT version FROM reporting.seeder_schema_migrations")
        .await?;
    Ok(messages
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0)?.parse().ok(),
            _ => None,
        })
        .collect())
}

async fn apply_locked(client: &mut Client) -> Result<Vec<String>, DbError> {
    // Check before creating: CREATE SCHEMA IF NOT EXISTS needs CREATE on the database even
    // when the schema exists, which a locked-down role may not have.
    let has_schema: bool = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'reporting')",
            &[],
        )
        .await?
        .try_get(0)?;
    if !has_schema {
        client
            .batch_execute("CREATE SCHEMA IF NOT EXISTS reporting")
            .await?;
    }
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS reporting.seeder_schema_migrations (
                version integer PRIMARY KEY,
                name text NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now()
            )",
        )
        .await?;
    let done = applied_versions(client).await?;
    let mut applied = Vec::new();
    for (version, name, sql) in MIGRATIONS {
        if done.contains(version) {
            continue;
        }
        let tx = client.transaction().await?;
        tx.batch_execute(sql).await.map_err(|e| {
            let mut err = DbError::from(&e);
            err.message = format!("migration V{version}__{name} failed: {}", err.message);
            err
        })?;
        tx.execute(
            "INSERT INTO reporting.seeder_schema_migrations (version, name) VALUES ($1, $2)",
            &[version, name],
        )
        .await?;
        tx.commit().await?;
        applied.push(format!("V{version}__{name}"));
    }
    Ok(applied)
}
