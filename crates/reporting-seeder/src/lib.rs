//! reporting-seeder: reads the manifest tables of per-agency reporting queries and creates,
//! refreshes or rebuilds one materialized view per query, in parallel, behind a circuit breaker,
//! recording a history row per view.
//!
//! Layers, each depending only on the next: `jobs` → `processors` → `repositories` → `etl_core`.

pub mod cli;
pub mod jobs;
pub mod processors;
pub mod repositories;
