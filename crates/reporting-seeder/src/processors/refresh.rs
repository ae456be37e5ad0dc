//! One view: decide what to do from the catalog and the stored hash, do it, analyze.

use std::collections::HashMap;

use etl_core::DbError;

use crate::repositories::{Rel, Session, ViewState};

/// What a view needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// No relation has the name.
    Create { create_schema: bool },
    /// Built from the same query: refresh in place (it keeps its OID).
    Refresh { concurrently: bool },
    /// The query changed, or the view was built without a recorded hash (by the old tool or by
    /// hand: adopted): build anew under a temporary name and swap.
    Rebuild { oid: u32, adopt: bool },
    /// Already rebuilt in this run, with an upstream view whose rebuild recreated it.
    RebuiltWithUpstream,
}

impl Action {
    pub fn label(self) -> &'static str {
        match self {
            Action::Create { .. } => "create",
            Action::Refresh {
                concurrently: false,
            } => "refresh",
            Action::Refresh { concurrently: true } => "refresh concurrently",
            Action::Rebuild { adopt: false, .. } => "rebuild",
            Action::Rebuild { adopt: true, .. } => "adopt",
            Action::RebuiltWithUpstream => "rebuilt with upstream",
        }
    }
}

/// The refresh rules, as a pure function of what the catalog says.
pub fn decide(
    state: &ViewState,
    hash: &str,
    concurrently_enabled: bool,
    key: &str,
) -> Result<Action, String> {
    let Some(oid) = state.oid else {
        return Ok(Action::Create {
            create_schema: !state.schema_exists,
        });
    };
    if state.relkind != Some('m') {
        let kind = match state.relkind {
            Some('r') | Some('p') => "table",
            Some('v') => "view",
            Some('i') | Some('I') => "index",
            Some('S') => "sequence",
            Some('f') => "foreign table",
            _ => "relation",
        };
        return Err(format!(
            "{key} exists and is a {kind}, not a materialized view; it is left alone: rename it or change the manifest's table_name"
        ));
    }
    match &state.stored_hash {
        None => Ok(Action::Rebuild { oid, adopt: true }),
        Some(stored) if stored != hash => Ok(Action::Rebuild { oid, adopt: false }),
        Some(_) => Ok(Action::Refresh {
            concurrently: concurrently_enabled && state.has_concurrent_index && state.populated,
        }),
    }
}

/// The temporary name a rebuild builds under: short, ours, and the same for the same view so an
/// interrupted rebuild's leftover is found and replaced.
pub fn temp_name(oid: u32) -> String {
    format!("_rs_{oid}_new")
}

/// What a successful refresh reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Done {
    pub rows: i64,
    pub bytes: i64,
    /// Managed views a rebuild recreated with this one (they read it).
    pub dependents: Vec<String>,
}

/// Performs `action`, then `ANALYZE`. Rows are exact for a create or rebuild (PostgreSQL's
/// command tag), and `ANALYZE`'s count otherwise.
#[allow(clippy::too_many_arguments)]
pub async fn perform(
    session: &mut dyn Session,
    name: Rel<'_>,
    action: Action,
    query: &str,
    hash: &str,
    run_id: &str,
    lock_timeout_ms: u64,
    managed: &HashMap<String, (String, String)>,
) -> Result<Done, DbError> {
    let mut dependents = Vec::new();
    let exact = match action {
        Action::Create { create_schema } => Some(
            session
                .create_view(name, create_schema, query, hash, run_id)
                .await?,
        ),
        Action::Refresh { concurrently } => {
            session.refresh_view(name, concurrently).await?;
            None
        }
        Action::Rebuild { oid, .. } => {
            let rebuilt = session
                .rebuild_view(
                    name,
                    &temp_name(oid),
                    query,
                    hash,
                    run_id,
                    lock_timeout_ms,
                    managed,
                )
                .await?;
            dependents = rebuilt.dependents;
            Some(rebuilt.rows)
        }
        Action::RebuiltWithUpstream => None,
    };
    let stats = session.analyze_view(name).await?;
    Ok(Done {
        rows: exact
            .map(|r| i64::try_from(r).unwrap_or(i64::MAX))
            .unwrap_or(stats.rows),
        bytes: stats.bytes,
        dependents,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matview(hash: Option<&str>) -> ViewState {
        ViewState {
            schema_exists: true,
            oid: Some(42),
            relkind: Some('m'),
            populated: true,
            has_concurrent_index: true,
            stored_hash: hash.map(str::to_string),
        }
    }

    #[test]
    fn missing_view_is_created_with_its_schema_when_needed() {
        let none = ViewState::default();
        assert_eq!(
            decide(&none, "h", false, "s.v"),
            Ok(Action::Create {
                create_schema: true
            })
        );
        let schema_only = ViewState {
            schema_exists: true,
            ..Default::default()
        };
        assert_eq!(
            decide(&schema_only, "h", false, "s.v"),
            Ok(Action::Create {
                create_schema: false
            })
        );
    }

    #[test]
    fn unchanged_view_is_refreshed_concurrently_only_when_allowed_and_possible() {
        assert_eq!(
            decide(&matview(Some("h")), "h", false, "s.v"),
            Ok(Action::Refresh {
                concurrently: false
            })
        );
        assert_eq!(
            decide(&matview(Some("h")), "h", true, "s.v"),
            Ok(Action::Refresh { concurrently: true })
        );
        let no_index = ViewState {
            has_concurrent_index: false,
            ..matview(Some("h"))
        };
        assert_eq!(
            decide(&no_index, "h", true, "s.v"),
            Ok(Action::Refresh {
                concurrently: false
            })
        );
        let unpopulated = ViewState {
            populated: false,
            ..matview(Some("h"))
        };
        assert_eq!(
            decide(&unpopulated, "h", true, "s.v"),
            Ok(Action::Refresh {
                concurrently: false
            })
        );
    }

    #[test]
    fn changed_or_unknown_query_is_rebuilt() {
        assert_eq!(
            decide(&matview(Some("old")), "new", true, "s.v"),
            Ok(Action::Rebuild {
                oid: 42,
                adopt: false
            })
        );
        assert_eq!(
            decide(&matview(None), "new", true, "s.v"),
            Ok(Action::Rebuild {
                oid: 42,
                adopt: true
            })
        );
    }

    #[test]
    fn a_table_of_that_name_is_never_touched() {
        let table = ViewState {
            relkind: Some('r'),
            ..matview(Some("h"))
        };
        let err = decide(&table, "h", false, "s.v").unwrap_err();
        assert!(err.contains("is a table"), "{err}");
    }

    #[test]
    fn temp_names_fit_identifiers() {
        assert!(temp_name(u32::MAX).len() <= 63);
    }
}
