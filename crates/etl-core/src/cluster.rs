//! A throwaway PostgreSQL cluster in a temporary directory, from the installed `initdb` and
//! `postgres` binaries (run as the `postgres` user when we are root). Removed when dropped.

use std::str::FromStr;

use tmp_postgrust::synchronous::ProcessGuard;
use tmp_postgrust::{TmpPostgrustFactory, TmpPostgrustFactoryConfig};

use crate::db::ConnectionSettings;

pub struct ThrowawayCluster {
    // Field order is drop order: stop the server before removing its directories.
    guard: ProcessGuard,
    _factory: TmpPostgrustFactory,
}

impl ThrowawayCluster {
    /// Blocking: runs `initdb` and starts the server. Call from `spawn_blocking`.
    pub fn start() -> Result<ThrowawayCluster, String> {
        let mut config = TmpPostgrustFactoryConfig::default();
        config.disable_fsync = true;
        let factory = TmpPostgrustFactory::try_new(&config).map_err(|e| e.to_string())?;
        let guard = factory.new_instance().map_err(|e| e.to_string())?;
        Ok(ThrowawayCluster {
            guard,
            _factory: factory,
        })
    }

    /// Superuser connection settings for database `postgres` (unix socket, no password).
    pub fn settings(&self, application_name: &str) -> Result<ConnectionSettings, String> {
        let mut config =
            tokio_postgres::Config::from_str(&self.guard.connection_string_for_db("postgres"))
                .map_err(|e| {
                    format!("unexpected connection string from the throwaway cluster: {e}")
                })?;
        config.user("postgres").application_name(application_name);
        Ok(ConnectionSettings::from_config(config))
    }
}
