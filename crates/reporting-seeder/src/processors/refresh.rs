//! One view: decide what to do from the catalog and the stored hash, do it, analyze.

use etl_core::DbError;

use crate::repositories::{
    Built, Managed, Rel, Session, StatementDelta, StatementFigures, StatementTotals, ViewState,
};

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
    let schema = key.split_once('.').map_or(key, |(schema, _)| schema);
    let Some(oid) = state.oid else {
        if let Some(role) = &state.create_denied {
            return Err(if state.schema_exists {
                format!(
                    "cannot create {key}: role {role} may not create in schema {schema} (or use \
                     it); GRANT USAGE, CREATE ON SCHEMA {schema} TO {role}, or run the tool as the \
                     schema's owner"
                )
            } else {
                format!(
                    "cannot create {key}: schema {schema} does not exist and role {role} may not \
                     create schemas in this database; create it (and GRANT USAGE, CREATE ON \
                     SCHEMA {schema} TO {role}), or GRANT CREATE ON DATABASE {} TO {role}",
                    crate::repositories::ident(&state.database)
                )
            });
        }
        return Ok(Action::Create {
            create_schema: !state.schema_exists,
        });
    };
    if state.relkind != Some('m') {
        let kind = match state.relkind {
            Some('r') | Some('p') => "a table",
            Some('v') => "a view",
            Some('i') | Some('I') => "an index",
            Some('S') => "a sequence",
            Some('f') => "a foreign table",
            Some('c') => "a composite type",
            _ => "a relation",
        };
        return Err(format!(
            "{key} exists and is {kind}, not a materialized view; it is left alone: rename it or change the manifest's table_name"
        ));
    }
    if let Some((owner, role)) = &state.foreign_owner {
        // The statement to copy names the view quoted, as SQL must for some names.
        let view = key.split_once('.').map_or_else(
            || crate::repositories::ident(key),
            |(s, n)| crate::repositories::Rel { schema: s, name: n }.quoted(),
        );
        return Err(if state.owner_superuser {
            // Granting a superuser's role would make the tool's role one.
            format!(
                "cannot refresh or rebuild {key}: it is owned by {owner}, a superuser, and role \
                 {role} is not one; give it to the tool's role (ALTER MATERIALIZED VIEW {view} \
                 OWNER TO {role}), or run the tool as {owner}"
            )
        } else {
            format!(
                "cannot refresh or rebuild {key}: it is owned by role {owner}, whose privileges \
                 role {role} does not have; give it to the tool's role (ALTER MATERIALIZED VIEW \
                 {view} OWNER TO {role}), GRANT {owner} TO {role}, or run the tool as {owner}"
            )
        });
    }
    match &state.stored_hash {
        None => Ok(Action::Rebuild { oid, adopt: true }),
        Some(stored) if stored != hash => Ok(Action::Rebuild { oid, adopt: false }),
        Some(_) => Ok(Action::Refresh {
            concurrently: concurrently_enabled && state.has_concurrent_index && state.populated,
        }),
    }
}

/// Why the role cannot rebuild an existing view, from what the catalog says: the new view is
/// built beside the old one, in its schema. `None` when it may.
pub fn rebuild_denied(state: &ViewState, key: &str) -> Option<String> {
    let role = state.create_denied.as_ref()?;
    let schema = key.split_once('.').map_or(key, |(schema, _)| schema);
    Some(format!(
        "cannot rebuild {key}: role {role} may not create in schema {schema} (the new view is \
         built beside the old one); GRANT CREATE ON SCHEMA {} TO {role}, or run the tool as the \
         schema's owner",
        crate::repositories::ident(schema)
    ))
}

pub use crate::repositories::views::temp_name;

/// What a successful refresh reports.
#[derive(Debug, Clone, PartialEq)]
pub struct Done {
    pub rows: i64,
    pub bytes: i64,
    /// Managed views a rebuild recreated with this one (they read it).
    pub dependents: Vec<String>,
    /// What the refresh statement cost the database, from pg_stat_statements.
    pub statement: Option<StatementFigures>,
}

/// Reads the counters of the statement a session ran last (from another session).
#[async_trait::async_trait]
pub trait StatementProbe: Send + Sync {
    async fn figures(&self, pid: i32, table: &str) -> Option<StatementFigures>;
}

/// This run's cost of a statement, from its cumulative counters now and as last recorded: the
/// difference, or the counters themselves when this run made the first call. The delta is
/// unknown when the history cannot tell (no baseline yet, or the counters were reset); the totals
/// are kept either way, as the next run's baseline.
pub fn per_run(now: &StatementTotals, before: Option<&StatementTotals>) -> StatementFigures {
    let base = match before {
        Some(b) if now.calls > b.calls => Some(*b),
        // Not a counter moved since the last recorded run: this run's statement was not counted
        // (pg_stat_statements.track_utility off, say), so nothing is known of its cost.
        Some(b) if b == now => None,
        _ if now.calls == 1 => Some(StatementTotals {
            queryid: now.queryid,
            ..Default::default()
        }),
        _ => None,
    };
    StatementFigures {
        delta: base.map(|base| StatementDelta {
            exec_ms: (now.exec_ms - base.exec_ms).max(0.0),
            blks_hit: now.blks_hit - base.blks_hit,
            blks_read: now.blks_read - base.blks_read,
            blks_written: now.blks_written - base.blks_written,
            temp_blks_written: now.temp_blks_written - base.temp_blks_written,
        }),
        totals: *now,
    }
}

/// Performs `action`, then `ANALYZE`. Rows are exact for a create (PostgreSQL's command tag),
/// and `ANALYZE`'s count otherwise (a rebuild's new view is filled by `REFRESH`, which counts none). A refresh and its `ANALYZE` are one
/// transaction sent at once, unless pg_stat_statements figures must be read in between.
///
/// A rebuild swaps in the new view `kept` holds, when an earlier call left one there, instead of
/// running the query again. When the swap fails for a reason worth trying again on the same
/// connection (a reader held the old view past the lock timeout, a deadlock) and `keep`, the new
/// view is left in `kept` for the next call; otherwise, and whatever else fails, it is dropped.
#[allow(clippy::too_many_arguments)]
pub async fn perform(
    session: &mut dyn Session,
    name: Rel<'_>,
    action: Action,
    query: &str,
    hash: &str,
    run_id: &str,
    lock_timeout_ms: u64,
    managed: &Managed,
    probe: Option<(&dyn StatementProbe, i32)>,
    kept: &mut Option<Built>,
    keep: bool,
) -> Result<Done, DbError> {
    if let (Action::Refresh { concurrently }, None) = (action, probe) {
        // Nothing to read between the refresh and ANALYZE: both go at once.
        let stats = session.refresh_and_analyze(name, concurrently).await?;
        return Ok(Done {
            rows: stats.rows,
            bytes: stats.bytes,
            dependents: Vec::new(),
            statement: None,
        });
    }
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
            let temp = temp_name(oid);
            let built = match kept.take() {
                Some(built) => built,
                None => session.build_view(name, &temp, query).await?,
            };
            let swapped = session
                .swap_view(name, &temp, &built, hash, run_id, lock_timeout_ms, managed)
                .await;
            match swapped {
                Ok(d) => {
                    dependents = d;
                    // `REFRESH` filled it and counts nothing: `ANALYZE` gives the rows.
                    None
                }
                Err(e) => {
                    if keep && e.is_transient() && !e.connection_lost() {
                        *kept = Some(built);
                    } else {
                        session
                            .drop_temporary(Rel {
                                schema: name.schema,
                                name: &temp,
                            })
                            .await;
                    }
                    return Err(e);
                }
            }
        }
        Action::RebuiltWithUpstream => None,
    };
    // Before ANALYZE: the session's last statement must still be the REFRESH.
    let statement = match (action, probe) {
        (Action::Refresh { .. }, Some((probe, pid))) => probe.figures(pid, &name.key()).await,
        _ => None,
    };
    let stats = session.analyze_view(name).await?;
    Ok(Done {
        rows: exact
            .map(|r| i64::try_from(r).unwrap_or(i64::MAX))
            .unwrap_or(stats.rows),
        bytes: stats.bytes,
        dependents,
        statement,
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
            ..ViewState::default()
        }
    }

    #[test]
    fn a_view_the_role_may_not_create_refresh_or_replace_is_an_error_before_running() {
        let denied = |schema_exists| ViewState {
            schema_exists,
            create_denied: Some("seeder".into()),
            ..ViewState::default()
        };
        let err = decide(&denied(true), "h", false, "s.v").unwrap_err();
        assert!(
            err.contains("GRANT USAGE, CREATE ON SCHEMA s TO seeder"),
            "{err}"
        );
        let err = decide(&denied(false), "h", false, "s.v").unwrap_err();
        assert!(err.contains("schema s does not exist"), "{err}");
        let foreign = ViewState {
            foreign_owner: Some(("bi".into(), "seeder".into())),
            ..matview(Some("h"))
        };
        for hash in ["h", "changed"] {
            let err = decide(&foreign, hash, false, "s.v").unwrap_err();
            assert!(
                err.contains("ALTER MATERIALIZED VIEW \"s\".\"v\" OWNER TO seeder")
                    && err.contains("GRANT bi TO seeder"),
                "{err}"
            );
        }
        // A superuser's role is never suggested for granting.
        let superuser = ViewState {
            foreign_owner: Some(("postgres".into(), "seeder".into())),
            owner_superuser: true,
            ..matview(Some("h"))
        };
        let err = decide(&superuser, "h", false, "s.Mixed").unwrap_err();
        assert!(
            err.contains("ALTER MATERIALIZED VIEW \"s\".\"Mixed\" OWNER TO seeder")
                && !err.contains("GRANT postgres"),
            "{err}"
        );
        let no_schema = ViewState {
            database: "reports db".into(),
            ..denied(false)
        };
        let err = decide(&no_schema, "h", false, "s.v").unwrap_err();
        assert!(
            err.contains("GRANT CREATE ON DATABASE \"reports db\" TO seeder"),
            "{err}"
        );
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
        for (kind, said) in [('i', "is an index"), ('c', "is a composite type")] {
            let other = ViewState {
                relkind: Some(kind),
                ..matview(Some("h"))
            };
            let err = decide(&other, "h", false, "s.v").unwrap_err();
            assert!(err.contains(said), "{err}");
        }
    }

    #[test]
    fn statement_figures_are_this_runs_share_of_the_totals() {
        let t = |calls, exec_ms, hit| StatementTotals {
            queryid: 7,
            calls,
            exec_ms,
            blks_hit: hit,
            ..Default::default()
        };
        // First call ever: the totals are this run's.
        let first = per_run(&t(1, 5.0, 40), None).delta.unwrap();
        assert_eq!((first.exec_ms, first.blks_hit), (5.0, 40));
        // Later: the difference from what the last run recorded.
        let later = per_run(&t(3, 20.0, 100), Some(&t(2, 12.0, 70)));
        let d = later.delta.unwrap();
        assert_eq!((d.exec_ms, d.blks_hit, later.totals.calls), (8.0, 30, 3));
        // Counters reset, or calls the tool did not record: unknown, but the totals are kept.
        assert_eq!(per_run(&t(2, 3.0, 1), Some(&t(5, 50.0, 500))).delta, None);
        let no_base = per_run(&t(4, 3.0, 1), None);
        assert_eq!((no_base.delta, no_base.totals.calls), (None, 4));
        // The one call ever counted was an earlier run's: this run's was not counted.
        assert_eq!(per_run(&t(1, 5.0, 40), Some(&t(1, 5.0, 40))).delta, None);
        // Reset, then exactly our one call: the totals again.
        assert_eq!(
            per_run(&t(1, 3.0, 9), Some(&t(5, 50.0, 500)))
                .delta
                .unwrap()
                .blks_hit,
            9
        );
    }

    #[test]
    fn temp_names_fit_identifiers() {
        assert!(temp_name(u32::MAX).len() <= 63);
    }
}
