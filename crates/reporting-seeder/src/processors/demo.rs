//! The demo: a database of its own on the configured server (or on a throwaway cluster when no
//! server answers), loaded with two agencies' manifests, then a `refresh_all`.

use etl_core::cluster::ThrowawayCluster;
use etl_core::db::{ConnectionSettings, DatabaseClient, PostgresClient};
use etl_core::DbError;

use super::planner::Selection;
use super::run::{RunError, RunReport, RunSettings};
use crate::repositories::{demo, PgStore};

pub const DEMO_DATABASE: &str = "reporting_seeder_demo";

/// Where the demo ran and what it found.
pub struct DemoOutcome {
    pub report: RunReport,
    /// `None` when the demo ran on a throwaway cluster, already removed.
    pub psql: Option<String>,
    pub preview: Vec<String>,
    pub server: String,
}

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error(transparent)]
    Run(#[from] RunError),
    #[error("nothing answers at {target} ({cause}) and no throwaway cluster could be started ({cluster}); start PostgreSQL or point DB_HOST/DB_PORT at one")]
    NoServer {
        target: String,
        cause: String,
        cluster: String,
    },
    #[error("{context}: {error}")]
    Database {
        context: &'static str,
        error: DbError,
    },
}

fn at(context: &'static str) -> impl FnOnce(DbError) -> DemoError {
    move |error| DemoError::Database { context, error }
}

pub async fn run(
    server: ConnectionSettings,
    settings: RunSettings,
    application_name: &str,
) -> Result<DemoOutcome, DemoError> {
    let probe = PostgresClient::new(&server, 1).map_err(at("preparing the connection"))?;
    let mut probed = probe.connection().await;
    // The demo uses a database of its own: the one DATABASE_URL names need not exist. The
    // server is reached through its maintenance database then.
    let server = match &probed {
        Err(e) if e.code.as_deref() == Some("3D000") => {
            let maintenance = server.with_dbname("postgres");
            let probe =
                PostgresClient::new(&maintenance, 1).map_err(at("preparing the connection"))?;
            probed = probe.connection().await;
            maintenance
        }
        _ => server,
    };
    match probed {
        Ok(admin) => {
            drop(admin);
            let mut outcome = on_server(&server, settings).await?;
            let demo = server.with_dbname(DEMO_DATABASE);
            outcome.psql = Some(format!(
                "psql '{}' -c 'TABLE reporting.seeder_run_history'",
                demo.psql_conninfo()
            ));
            Ok(outcome)
        }
        Err(e) if e.is_configuration() => Err(RunError::Configuration(e).into()),
        Err(e) => {
            tracing::info!(target = %server.target(), error = %e, "no server answers; starting a throwaway cluster");
            let cluster = tokio::task::spawn_blocking(ThrowawayCluster::start)
                .await
                .map_err(|j| j.to_string())
                .and_then(|r| r);
            let cluster = cluster.map_err(|c| DemoError::NoServer {
                target: server.target().to_string(),
                cause: e.message.clone(),
                cluster: c,
            })?;
            let local = cluster
                .settings(application_name)
                .map_err(|c| DemoError::NoServer {
                    target: server.target().to_string(),
                    cause: e.message.clone(),
                    cluster: c,
                })?;
            let result = on_server(&local, settings).await;
            // Stops the server and removes its directory.
            tokio::task::spawn_blocking(move || drop(cluster))
                .await
                .ok();
            result
        }
    }
}

async fn on_server(
    server: &ConnectionSettings,
    settings: RunSettings,
) -> Result<DemoOutcome, DemoError> {
    let admin = PostgresClient::new(server, 1).map_err(at("preparing the connection"))?;
    let conn = admin.connection().await.map_err(RunError::Unavailable)?;
    demo::reset_database(&conn, DEMO_DATABASE)
        .await
        .map_err(at("creating the demo database"))?;
    drop(conn);

    let demo_settings = server.with_dbname(DEMO_DATABASE);
    let client = PostgresClient::new(&demo_settings, settings.max_workers.get() + 1)
        .map_err(at("preparing the connection"))?;
    {
        let conn = client.connection().await.map_err(RunError::Unavailable)?;
        let mut session = crate::repositories::PgSession::from_connection(conn);
        crate::repositories::Session::migrate(&mut session)
            .await
            .map_err(at("creating the control tables"))?;
        demo::load(session.client())
            .await
            .map_err(at("loading the demo data"))?;
    }
    let preview_client =
        PostgresClient::new(&demo_settings, 1).map_err(at("preparing the connection"))?;
    let store = std::sync::Arc::new(PgStore::new(client));
    let report = super::run::RunProcessor::new(store, settings, etl_core::breaker::SystemClock)
        .run("demo", "", &Selection::default())
        .await?;
    let conn = preview_client
        .connection()
        .await
        .map_err(at("reading the result"))?;
    let preview = demo::preview(&conn).await.unwrap_or_default();
    Ok(DemoOutcome {
        report,
        psql: None,
        preview,
        server: server.target().to_string(),
    })
}
