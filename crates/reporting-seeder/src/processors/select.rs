//! `--select` / `--exclude`: which views a run covers, dbt-style.
//!
//! A selector is `agency:<slug>`, `type:custom|canned` or `table:<schema.table>` (`*` matches any
//! run of characters), optionally with graph operators: `+X` is X and everything it reads,
//! directly or not; `X+` is X and everything that reads it.

use std::str::FromStr;

use super::graph::Dependencies;
use super::planner::{Plan, PlannedView};
use crate::repositories::ReportType;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Atom {
    Agency(String),
    Type(ReportType),
    /// A lower-case pattern over `schema.table`.
    Table(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector {
    pub atom: Atom,
    pub upstream: bool,
    pub downstream: bool,
    /// As written, for messages.
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectError {
    #[error("invalid selector {0:?}: {1}")]
    Invalid(String, String),
    #[error("selector {0:?} matches no enabled view; check it, or list the views with `reporting-seeder run plan`")]
    MatchesNothing(String),
    #[error(
        "selector {0:?} matches no enabled {1} view; leave out --report-type to run its others"
    )]
    MatchesNoneOfType(String, &'static str),
    #[error(
        "--select/--exclude leave none of the job's views to run: --select narrows what the job \
         covers (refresh_agency X --select Y runs those of X's views that Y matches) and \
         --exclude takes views out of it; `reporting-seeder run plan` with the same arguments \
         shows the rest"
    )]
    LeavesNothing,
}

const FORMS: &str = "expected agency:<slug>, type:custom|canned or table:<schema.table> (glob * allowed), optionally +X or X+";

impl FromStr for Selector {
    type Err = SelectError;

    fn from_str(raw: &str) -> Result<Selector, SelectError> {
        let invalid = |why: &str| SelectError::Invalid(raw.to_string(), why.to_string());
        let text = raw.trim();
        let (upstream, rest) = match text.strip_prefix('+') {
            Some(r) => (true, r),
            None => (false, text),
        };
        let (downstream, rest) = match rest.strip_suffix('+') {
            Some(r) => (true, r),
            None => (false, rest),
        };
        if rest.starts_with('+') || rest.ends_with('+') {
            return Err(invalid(
                "one + at most on each side: +X adds what X reads, X+ what reads X",
            ));
        }
        let (kind, value) = rest.split_once(':').ok_or_else(|| invalid(FORMS))?;
        let value = value.trim();
        // `agency:"new york"`: the quotes only keep the value one word.
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(value);
        if value.contains('"') {
            return Err(invalid(
                "a double quote only goes around a whole value (agency:\"new york\")",
            ));
        }
        if value.is_empty() {
            return Err(invalid("empty value"));
        }
        let atom = match kind.trim() {
            "agency" => Atom::Agency(value.to_string()),
            "type" => match value {
                "custom" => Atom::Type(ReportType::Custom),
                "canned" => Atom::Type(ReportType::Canned),
                _ => return Err(invalid("type is custom or canned")),
            },
            "table" => Atom::Table(value.to_ascii_lowercase()),
            _ => return Err(invalid(FORMS)),
        };
        Ok(Selector {
            atom,
            upstream,
            downstream,
            text: text.to_string(),
        })
    }
}

impl Atom {
    fn matches(&self, v: &PlannedView) -> bool {
        match self {
            Atom::Agency(slug) => v.agencies.iter().any(|a| a == slug),
            Atom::Type(t) => v.types.contains(t),
            Atom::Table(pattern) => glob(pattern, &v.key),
        }
    }
}

/// `*` matches any run of characters (including none); everything else matches itself.
pub fn glob(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || text.len() < first.len() + last.len() || !text.ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for part in &parts[1..parts.len() - 1] {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    true
}

/// The views a selector stands for, graph operators applied.
fn expand(s: &Selector, plan: &Plan, deps: &Dependencies) -> Vec<bool> {
    let n = plan.views.len();
    let mut out = vec![false; n];
    for (i, v) in plan.views.iter().enumerate() {
        if !s.atom.matches(v) {
            continue;
        }
        out[i] = true;
        if s.upstream {
            for u in deps.with_upstream(i) {
                out[u] = true;
            }
        }
        if s.downstream {
            for d in deps.with_downstream(i) {
                out[d] = true;
            }
        }
    }
    out
}

/// The views the run covers: in the job's scope, matching one `select` selector (all when there
/// is none), matching no `exclude` selector. A selector matching no view is an error, and so is
/// one matching no view of the report type the run is limited to (`only`), as `refresh_agency
/// --report-type` is for an agency without that type.
pub fn apply(
    plan: &Plan,
    deps: &Dependencies,
    select: &[Selector],
    exclude: &[Selector],
    only: Option<ReportType>,
) -> Result<Vec<bool>, SelectError> {
    let n = plan.views.len();
    let mut chosen = if select.is_empty() {
        vec![true; n]
    } else {
        vec![false; n]
    };
    for s in select {
        let hits = expand(s, plan, deps);
        if !hits.contains(&true) {
            return Err(SelectError::MatchesNothing(s.text.clone()));
        }
        if let Some(t) = only {
            if !(hits.iter().zip(&plan.views)).any(|(h, v)| *h && v.types.contains(&t)) {
                return Err(SelectError::MatchesNoneOfType(s.text.clone(), t.as_str()));
            }
        }
        for (c, h) in chosen.iter_mut().zip(hits) {
            *c |= h;
        }
    }
    // An exclusion that matches nothing leaves nothing out, and is only a warning: a scheduler's
    // defensive `--exclude table:x` must not stop every run once x's manifest is disabled.
    for s in exclude {
        let hits = expand(s, plan, deps);
        if !hits.contains(&true) {
            tracing::warn!(
                selector = %s.text,
                "--exclude matches no enabled view: nothing is left out for it"
            );
            continue;
        }
        for (c, h) in chosen.iter_mut().zip(hits) {
            *c &= !h;
        }
    }
    let chosen: Vec<bool> = chosen
        .into_iter()
        .zip(&plan.in_scope)
        .map(|(c, s)| c && *s)
        .collect();
    // Selectors that each match views but together leave none of the job's: a mistake to say,
    // not a run of nothing that exits 0.
    let narrowed = !(select.is_empty() && exclude.is_empty());
    if narrowed && !chosen.contains(&true) && plan.in_scope.contains(&true) {
        return Err(SelectError::LeavesNothing);
    }
    Ok(chosen)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::processors::graph::build;
    use crate::processors::planner::{plan, Selection};
    use crate::processors::validate::RelationRef;
    use crate::repositories::ManifestRow;

    fn sel(s: &str) -> Selector {
        s.parse().unwrap()
    }

    #[test]
    fn parses_every_form() {
        assert_eq!(sel("agency:gotham").atom, Atom::Agency("gotham".into()));
        assert_eq!(sel("type:canned").atom, Atom::Type(ReportType::Canned));
        assert_eq!(
            sel("agency:\"new york\"").atom,
            Atom::Agency("new york".into())
        );
        let s = sel("+table:Reporting.*_Rollup+");
        assert_eq!(s.atom, Atom::Table("reporting.*_rollup".into()));
        assert!(s.upstream && s.downstream);
        for bad in [
            "gotham",
            "agency:",
            "type:both",
            "view:x",
            "+",
            "",
            "table:x++",
            "++agency:a",
            "++",
        ] {
            assert!(bad.parse::<Selector>().is_err(), "{bad}");
        }
    }

    #[test]
    fn globs() {
        assert!(glob("reporting.*", "reporting.x"));
        assert!(glob("*.stg_*", "reporting.stg_arrests"));
        assert!(glob("a*b*c", "aXbYc"));
        assert!(!glob("a*b*c", "aXcYb"));
        assert!(!glob("reporting.x", "reporting.xy"));
        assert!(glob("*", ""));
        assert!(!glob("ab*ba", "aba"));
    }

    /// stg (canned, gotham+metropolis) → gotham_rollup (custom gotham) → gotham_top; metro (custom).
    fn fixture() -> (Plan, Dependencies) {
        let custom = |id: i64, t: &str, slug: &str| ManifestRow {
            report_type: ReportType::Custom,
            manifest_id: id,
            report_id: None,
            table_name: t.into(),
            report_name: t.into(),
            agency_id: id,
            agency_slug: slug.into(),
            query: format!("SELECT {id}"),
            enabled: true,
            statement_timeout: None,
            lock_timeout: None,
        };
        let canned = |id: i64, slug: &str| ManifestRow {
            report_type: ReportType::Canned,
            manifest_id: id,
            report_id: Some(50),
            table_name: "reporting.stg".into(),
            report_name: "stg".into(),
            agency_id: id,
            agency_slug: slug.into(),
            query: "SELECT 1".into(),
            enabled: true,
            statement_timeout: None,
            lock_timeout: None,
        };
        let rows = vec![
            custom(1, "reporting.gotham_rollup", "gotham"),
            custom(2, "reporting.gotham_top", "gotham"),
            custom(3, "reporting.metro", "metropolis"),
            canned(10, "gotham"),
            canned(11, "metropolis"),
        ];
        let p = plan(&rows, &Selection::default()).unwrap();
        let keys: Vec<&str> = p.views.iter().map(|v| v.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "reporting.gotham_rollup",
                "reporting.gotham_top",
                "reporting.metro",
                "reporting.stg"
            ]
        );
        let rel = |n: &str| RelationRef {
            schema: Some("reporting".into()),
            name: n.into(),
        };
        let reads = vec![vec![rel("stg")], vec![rel("gotham_rollup")], vec![], vec![]];
        let d = build(
            &p.views,
            &reads,
            &[],
            &["public".to_string()],
            &Default::default(),
        );
        (p, d)
    }

    fn chosen(
        p: &Plan,
        d: &Dependencies,
        select: &[&str],
        exclude: &[&str],
    ) -> Result<Vec<String>, SelectError> {
        let s: Vec<Selector> = select.iter().map(|x| sel(x)).collect();
        let e: Vec<Selector> = exclude.iter().map(|x| sel(x)).collect();
        let mask = apply(p, d, &s, &e, None)?;
        Ok(p.views
            .iter()
            .zip(mask)
            .filter(|(_, m)| *m)
            .map(|(v, _)| v.key.clone())
            .collect())
    }

    #[test]
    fn atoms_and_operators() {
        let (p, d) = fixture();
        assert_eq!(chosen(&p, &d, &[], &[]).unwrap().len(), 4);
        assert_eq!(
            chosen(&p, &d, &["agency:metropolis"], &[]).unwrap(),
            ["reporting.metro", "reporting.stg"]
        );
        assert_eq!(
            chosen(&p, &d, &["type:canned"], &[]).unwrap(),
            ["reporting.stg"]
        );
        assert_eq!(
            chosen(&p, &d, &["table:reporting.gotham_*"], &[]).unwrap(),
            ["reporting.gotham_rollup", "reporting.gotham_top"]
        );
        assert_eq!(
            chosen(&p, &d, &["+table:reporting.gotham_top"], &[]).unwrap(),
            [
                "reporting.gotham_rollup",
                "reporting.gotham_top",
                "reporting.stg"
            ]
        );
        assert_eq!(
            chosen(&p, &d, &["table:reporting.stg+"], &[]).unwrap(),
            [
                "reporting.gotham_rollup",
                "reporting.gotham_top",
                "reporting.stg"
            ]
        );
        assert_eq!(
            chosen(
                &p,
                &d,
                &["table:reporting.stg+"],
                &["table:reporting.gotham_top"]
            )
            .unwrap(),
            ["reporting.gotham_rollup", "reporting.stg"]
        );
        assert_eq!(
            chosen(
                &p,
                &d,
                &["type:custom", "table:reporting.stg"],
                &["agency:metropolis"]
            )
            .unwrap(),
            ["reporting.gotham_rollup", "reporting.gotham_top"]
        );
    }

    #[test]
    fn a_selector_matching_nothing_is_an_error() {
        let (p, d) = fixture();
        assert_eq!(
            chosen(&p, &d, &["agency:atlantis"], &[]),
            Err(SelectError::MatchesNothing("agency:atlantis".into()))
        );
        // An exclusion matching nothing leaves everything in.
        assert_eq!(
            chosen(&p, &d, &[], &["table:nope.*"]),
            chosen(&p, &d, &[], &[])
        );
        // Selectors that each match, together leaving nothing.
        assert_eq!(
            chosen(&p, &d, &["table:reporting.metro"], &["agency:metropolis"]),
            Err(SelectError::LeavesNothing)
        );
        assert_eq!(
            chosen(&p, &d, &[], &["table:*"]),
            Err(SelectError::LeavesNothing)
        );
    }

    #[test]
    fn a_selector_matching_no_view_of_the_one_report_type_is_an_error() {
        let (p, d) = fixture();
        let s = [sel("table:reporting.metro")];
        assert_eq!(
            apply(&p, &d, &s, &[], Some(ReportType::Canned)),
            Err(SelectError::MatchesNoneOfType(
                "table:reporting.metro".into(),
                "canned"
            ))
        );
        // Metropolis has a canned view: the selector stands.
        assert!(apply(
            &p,
            &d,
            &[sel("agency:metropolis")],
            &[],
            Some(ReportType::Canned)
        )
        .is_ok());
        assert!(apply(&p, &d, &s, &[], Some(ReportType::Custom)).is_ok());
    }

    #[test]
    fn the_job_scope_still_applies() {
        let (mut p, d) = fixture();
        p.in_scope = vec![false, true, true, true];
        assert_eq!(
            chosen(&p, &d, &["table:reporting.gotham_*"], &[]).unwrap(),
            ["reporting.gotham_top"]
        );
    }
}
