//! Business logic: planning a run, deciding and performing each view's refresh, scheduling the
//! run under the circuit breaker, summarising it. Processors take their store by constructor
//! injection and never build SQL.

pub mod demo;
pub mod graph;
pub mod planner;
pub mod refresh;
pub mod run;
pub mod select;
pub mod snapshot;
pub mod status;
pub mod summary;
pub mod validate;

#[cfg(test)]
pub(crate) mod fake;
