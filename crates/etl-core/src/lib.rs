//! What every ETL job CLI reuses: the job table and its `list`/`help`/`run` runner, configuration
//! from the environment, logging, the database client, the circuit breaker and the bounded
//! parallel executor.

pub mod breaker;
pub mod cluster;
pub mod config;
pub mod db;
pub mod executor;
pub mod job;
pub mod logging;
pub mod output;
pub mod pydotenv;
pub mod tls;

pub use config::{ConfigError, Env};
pub use db::{classify, DatabaseClient, DbError, FailureKind, PostgresClient};
pub use job::{ExitStatus, JobContext, JobEntry, JobError, JobFuture};
