//! Planning: select manifest rows, merge the rows that name one view, validate each view.
//! Pure functions over the rows the repository read.

use std::collections::HashMap;

use sha2::{Digest, Sha256};

pub use super::validate::ViewName;
use super::validate::{unparsed_postgres, validate_query_and_reads, InvalidManifest, RelationRef};
use crate::repositories::{ManifestRow, ReportType, ViewRecord};

/// Which report types a run covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum TypeFilter {
    #[default]
    All,
    Custom,
    Canned,
}

impl TypeFilter {
    /// The one report type it admits; `None` when it admits both.
    pub fn only(self) -> Option<ReportType> {
        match self {
            TypeFilter::All => None,
            TypeFilter::Custom => Some(ReportType::Custom),
            TypeFilter::Canned => Some(ReportType::Canned),
        }
    }

    fn admits(self, t: ReportType) -> bool {
        self.only().is_none_or(|only| only == t)
    }
}

/// What a refresh job selects.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Scope {
    #[default]
    All,
    /// One agency's custom views and the canned views mapped to it (shared or not).
    Agency(String),
    /// One view, by `schema.table`.
    Table(String),
    /// These views (by key), those no enabled manifest names any more left out.
    Tables(Vec<String>),
    /// The views that ended `error` or `skipped` in this run (the newest when none); resolved
    /// to [`Scope::Tables`] before planning.
    Retry(Option<String>),
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Selection {
    pub report_type: TypeFilter,
    pub scope: Scope,
    /// `--select`: when not empty, only views matching one of these (graph operators applied).
    pub select: Vec<super::select::Selector>,
    /// `--exclude`: views matching one of these are left out.
    pub exclude: Vec<super::select::Selector>,
}

/// Every enabled view, and which of them the job's own arguments (scope, report type) select.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub views: Vec<PlannedView>,
    pub in_scope: Vec<bool>,
}

/// One view of the run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedView {
    /// `schema.name` when valid, else the manifest's table name as written.
    pub key: String,
    pub record: ViewRecord,
    /// Every agency the view serves (a shared canned view serves several).
    pub agencies: Vec<String>,
    /// The report types of the manifests naming it: a custom manifest and a canned report with
    /// the same table and query are one view, which `type:canned` selects as well as
    /// `type:custom`.
    pub types: Vec<ReportType>,
    /// Each agency the view serves, with the report type it serves that agency as: a view that
    /// is one agency's custom view and another's canned one is not the first agency's canned
    /// view.
    pub served: Vec<(String, ReportType)>,
    /// The manifest's own timeouts (milliseconds), overriding the run's.
    pub timeouts: Timeouts,
    pub plan: ViewPlan,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Timeouts {
    pub statement_ms: Option<u64>,
    pub lock_ms: Option<u64>,
}

/// PostgreSQL keeps its timeouts as whole milliseconds in an `int`: about 24.8 days at most.
pub const TIMEOUT_MAX_MS: u64 = i32::MAX as u64;

/// A manifest's timeout column: a bare number of milliseconds, `30s`, `5min`…, or an `interval`
/// column's value (`00:00:30`, `1 day 02:00:00`: what Django's `DurationField` makes).
fn timeout(column: &str, raw: &Option<String>) -> Result<Option<u64>, String> {
    match raw.as_deref().map(str::trim).filter(|r| !r.is_empty()) {
        None => Ok(None),
        Some(r) => etl_core::config::parse_duration(r)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .or_else(|| interval_ms(r))
            .filter(|ms| *ms <= TIMEOUT_MAX_MS)
            .map(Some)
            .ok_or_else(|| format!("invalid {column} {r:?}: expected milliseconds, a duration such as 30s or 5min, or an interval such as 00:00:30, at most {TIMEOUT_MAX_MS}ms (PostgreSQL's largest)")),
    }
}

/// An `interval` as PostgreSQL prints it by default, days and time only: `[N day[s]]
/// [HH:MM:SS[.fraction]]`, to whole milliseconds. `None` for anything else (months, years and
/// negative intervals make no timeout).
fn interval_ms(raw: &str) -> Option<u64> {
    let mut rest = raw.trim();
    let mut ms: u64 = 0;
    if let Some((days, after)) = rest.split_once(" days").or_else(|| rest.split_once(" day")) {
        let days: u64 = days.trim().parse().ok()?;
        ms = days.checked_mul(86_400_000)?;
        rest = after.trim();
        if rest.is_empty() {
            return Some(ms);
        }
    }
    let mut parts = rest.splitn(3, ':');
    let (h, m, sec) = (parts.next()?, parts.next()?, parts.next()?);
    let all_digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
    let (whole, fraction) = sec.split_once('.').unwrap_or((sec, ""));
    let well_formed = all_digits(h)
        && all_digits(m)
        && all_digits(whole)
        && fraction.bytes().all(|b| b.is_ascii_digit())
        && m.len() == 2
        && whole.len() == 2;
    if !well_formed {
        return None;
    }
    let (h, m, whole): (u64, u64, u64) = (h.parse().ok()?, m.parse().ok()?, whole.parse().ok()?);
    if m > 59 || whole > 59 {
        return None;
    }
    // Milliseconds of the fraction, truncated as PostgreSQL's own setting would round it away.
    let frac_ms: u64 = format!("{fraction:0<3}")[..3].parse().ok()?;
    let time = h
        .checked_mul(3_600_000)?
        .checked_add(m * 60_000 + whole * 1_000 + frac_ms)?;
    ms.checked_add(time)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ViewPlan {
    Valid {
        name: ViewName,
        /// The text to execute.
        query: String,
        /// SHA-256 of `query`, hex: what the view is known to be built from.
        hash: String,
        /// The relations `query` reads, found when it was validated.
        reads: Vec<RelationRef>,
        /// Why the tool's parser could not parse `query`, when it could not (PostgreSQL syntax
        /// it lacks): its tokens were checked instead, `reads` come from them, and PostgreSQL's
        /// own `CREATE MATERIALIZED VIEW` refuses anything but a read-only query.
        unparsed: Option<String>,
    },
    /// Recorded as an error with this reason; nothing is executed.
    Invalid(String),
}

/// A selection that names nothing: a usage error (exit 2).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("no manifest names table {0}; check the name (schema.table) or add a manifest")]
    UnknownTable(String),
    #[error("table {0} is named only by disabled manifests; enable one to refresh it")]
    DisabledTable(String),
    #[error("invalid table argument: {0}")]
    BadTable(String),
    #[error("no manifest names agency {0:?}; check the slug{hint}", hint = did_you_mean(.1))]
    UnknownAgency(String, Option<String>),
    #[error("agency {0:?} has only disabled manifests; enable one to refresh it")]
    DisabledAgency(String),
    #[error(
        "agency {0:?} has no enabled {1} report; leave out --report-type to refresh its others"
    )]
    AgencyLacksType(String, &'static str),
}

const SLUG_COLUMN_BYTES: usize = 255;

/// How much of an invalid table name is kept as its key (and recorded): longer ones are cut.
const INVALID_NAME_CHARS: usize = 100;

fn key_of(table_name: &str) -> String {
    ViewName::parse(table_name)
        .map(|n| n.to_string())
        .unwrap_or_else(|_| table_name.to_string())
}

pub fn hash_query(query: &str) -> String {
    Sha256::digest(query.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn did_you_mean(slug: &Option<String>) -> String {
    slug.as_ref()
        .map(|s| format!(" (did you mean {s:?}?)"))
        .unwrap_or_default()
}

/// The slug an operator probably meant: the same but for case and spaces, else one within two
/// edits.
fn nearest_slug<'a>(asked: &str, slugs: impl Iterator<Item = &'a str> + Clone) -> Option<String> {
    let folded = asked.trim().to_lowercase();
    slugs
        .clone()
        .find(|s| s.trim().to_lowercase() == folded)
        .or_else(|| {
            slugs
                .map(|s| (strsim::levenshtein(&folded, &s.to_lowercase()), s))
                .filter(|(d, _)| *d <= 2)
                .min_by_key(|(d, _)| *d)
                .map(|(_, s)| s)
        })
        .map(str::to_string)
}

/// Every enabled view (manifest order: custom by id, then canned), and which of them
/// `selection`'s scope and report type select. A scope naming nothing is a usage error.
pub fn plan(rows: &[ManifestRow], selection: &Selection) -> Result<Plan, PlanError> {
    let mut rows: Vec<&ManifestRow> = rows.iter().collect();
    rows.sort_by_key(|r| (r.report_type, r.manifest_id));

    let wanted_table = match &selection.scope {
        Scope::All | Scope::Tables(_) | Scope::Retry(_) => None,
        Scope::Agency(slug) => {
            let named: Vec<&&ManifestRow> =
                rows.iter().filter(|r| &r.agency_slug == slug).collect();
            if named.is_empty() {
                return Err(PlanError::UnknownAgency(
                    slug.clone(),
                    nearest_slug(slug, rows.iter().map(|r| r.agency_slug.as_str())),
                ));
            }
            if !named.iter().any(|r| r.enabled) {
                return Err(PlanError::DisabledAgency(slug.clone()));
            }
            None
        }
        Scope::Table(table) => {
            let wanted = ViewName::parse(table)
                .map_err(|e| PlanError::BadTable(e.to_string()))?
                .to_string();
            let named: Vec<&&ManifestRow> = rows
                .iter()
                .filter(|r| key_of(&r.table_name) == wanted)
                .collect();
            if named.is_empty() {
                return Err(PlanError::UnknownTable(wanted));
            }
            if !named.iter().any(|r| r.enabled) {
                return Err(PlanError::DisabledTable(wanted));
            }
            Some(wanted)
        }
    };

    // Manifests naming one view are one view. A table name that is not a valid schema.name
    // names no view: each such manifest stays on its own, so each gets its own error row.
    let mut order: Vec<(String, String)> = Vec::new();
    let mut groups: HashMap<String, Vec<&ManifestRow>> = HashMap::new();
    for r in rows.into_iter().filter(|r| r.enabled) {
        let key = key_of(&r.table_name);
        let group_key = if ViewName::parse(&r.table_name).is_ok() {
            key.clone()
        } else {
            format!("\u{0}{:?}\u{0}{}", r.report_type, r.manifest_id)
        };
        let group = groups.entry(group_key.clone()).or_default();
        if group.is_empty() {
            order.push((group_key, key));
        }
        group.push(r);
    }
    let mut views: Vec<PlannedView> = order
        .into_iter()
        .filter_map(|(group_key, key)| groups.remove(&group_key).map(|g| plan_view(key, &g)))
        .collect();
    // Invalid names shared by several manifests (two half-filled rows with an empty name): each
    // is named with its manifest, so each keeps a status row, a history row and a metric series
    // of its own instead of sharing (and double-counting) one.
    let mut seen: HashMap<String, usize> = HashMap::new();
    for v in &views {
        *seen.entry(v.key.clone()).or_default() += 1;
    }
    // So are names too long to record (the history's table_name is indexed, and an old table's
    // may be varchar(255)): cut to 100 characters. An empty name says so.
    for v in views.iter_mut() {
        let shared = seen.get(&v.key).is_some_and(|n| *n > 1);
        let long = v.key.chars().count() > INVALID_NAME_CHARS;
        if matches!(v.plan, ViewPlan::Invalid(_)) && (shared || long || v.key.is_empty()) {
            let which = match v.record.report_type {
                ReportType::Custom => "manifest",
                ReportType::Canned => "canned report",
            };
            let name = if v.key.is_empty() {
                "(no table name)".to_string()
            } else if long {
                let cut: String = v.key.chars().take(INVALID_NAME_CHARS).collect();
                format!("{cut}…")
            } else {
                v.key.clone()
            };
            v.key = format!("{name} ({which} {})", v.record.manifest_id);
            v.record.table_name = v.key.clone();
        }
    }
    let in_scope = views
        .iter()
        .map(|v| {
            v.types.iter().any(|t| selection.report_type.admits(*t))
                && match &selection.scope {
                    Scope::All => true,
                    // The agency's own views of the type asked for.
                    Scope::Agency(slug) => v
                        .served
                        .iter()
                        .any(|(s, t)| s == slug && selection.report_type.admits(*t)),
                    Scope::Table(_) => Some(&v.key) == wanted_table.as_ref(),
                    Scope::Tables(keys) => keys.contains(&v.key),
                    Scope::Retry(_) => false,
                }
        })
        .collect::<Vec<bool>>();
    // The agency has enabled views (checked above), but none of the one type asked for.
    if let (Scope::Agency(slug), Some(only)) = (&selection.scope, selection.report_type.only()) {
        if !in_scope.iter().any(|s| *s) {
            return Err(PlanError::AgencyLacksType(slug.clone(), only.as_str()));
        }
    }
    Ok(Plan { views, in_scope })
}

fn plan_view(key: String, group: &[&ManifestRow]) -> PlannedView {
    let first = group[0];
    let mut agencies: Vec<(i64, &str)> = group
        .iter()
        .map(|r| (r.agency_id, r.agency_slug.as_str()))
        .collect();
    agencies.sort();
    agencies.dedup();
    // A mapping without a slug adds none (no `,metropolis`).
    let mut slugs: Vec<&str> = agencies
        .iter()
        .map(|(_, s)| *s)
        .filter(|s| !s.is_empty())
        .collect();
    slugs.sort();
    slugs.dedup();
    let agency_list: Vec<String> = slugs.iter().map(|s| s.to_string()).collect();
    let record = ViewRecord {
        table_name: key.clone(),
        manifest_id: match first.report_type {
            ReportType::Custom => first.manifest_id,
            ReportType::Canned => first.report_id.unwrap_or(first.manifest_id),
        },
        report_name: first.report_name.clone(),
        report_type: first.report_type,
        agency_id: agencies
            .first()
            .map(|(id, _)| *id)
            .unwrap_or(first.agency_id),
        agency_slug: slugs_within(&slugs.join(","), SLUG_COLUMN_BYTES, str::len),
    };

    let mut sources: Vec<String> = Vec::new();
    for r in group {
        let source = match r.report_type {
            ReportType::Custom => format!("custom manifest {}", r.manifest_id),
            ReportType::Canned => format!("canned report {}", r.report_id.unwrap_or_default()),
        };
        if !sources.contains(&source) {
            sources.push(source);
        }
    }
    let distinct_queries = {
        let mut q: Vec<&str> = group.iter().map(|r| r.query.as_str()).collect();
        q.sort();
        q.dedup();
        if q.len() > 1 {
            // Different texts may still be one query (`SELECT 1` and `SELECT 1;`).
            q = q.into_iter().map(super::validate::normalized).collect();
            q.sort();
            q.dedup();
        }
        q.len()
    };
    let timeouts =
        timeout("statement_timeout", &first.statement_timeout).and_then(|statement_ms| {
            Ok(Timeouts {
                statement_ms,
                lock_ms: timeout("lock_timeout", &first.lock_timeout)?,
            })
        });
    let plan = if let Err(reason) = &timeouts {
        ViewPlan::Invalid(reason.clone())
    } else if distinct_queries > 1 {
        ViewPlan::Invalid(format!(
            "{} name the same table with different queries; give each its own table_name or disable all but one",
            sources.join(", ")
        ))
    } else {
        match ViewName::parse(&first.table_name) {
            Err(e) => ViewPlan::Invalid(e.to_string()),
            Ok(name) => match validate_query_and_reads(&first.query) {
                Err(InvalidManifest::Unparsable { message }) => {
                    match unparsed_postgres(&first.query) {
                        Ok((query, reads)) => ViewPlan::Valid {
                            name,
                            hash: hash_query(&query),
                            query,
                            reads,
                            unparsed: Some(message),
                        },
                        Err(e) => ViewPlan::Invalid(e.to_string()),
                    }
                }
                Err(e) => ViewPlan::Invalid(e.to_string()),
                Ok((query, reads)) => ViewPlan::Valid {
                    name,
                    hash: hash_query(&query),
                    query,
                    reads,
                    unparsed: None,
                },
            },
        }
    };
    let mut types: Vec<ReportType> = group.iter().map(|r| r.report_type).collect();
    types.sort();
    types.dedup();
    let mut served: Vec<(String, ReportType)> = group
        .iter()
        .filter(|r| !r.agency_slug.is_empty())
        .map(|r| (r.agency_slug.clone(), r.report_type))
        .collect();
    served.sort();
    served.dedup();
    PlannedView {
        key,
        record,
        agencies: agency_list,
        types,
        served,
        timeouts: timeouts.unwrap_or_default(),
        plan,
    }
}

/// A shared view's comma-separated agency slugs, cut to a column's width (`len` measures it:
/// bytes or characters) at a comma, so no slug is stored cut in the middle; a single slug too
/// long for the column alone is cut.
pub fn slugs_within(joined: &str, max: usize, len: impl Fn(&str) -> usize) -> String {
    if len(joined) <= max {
        return joined.to_string();
    }
    let mut out = String::new();
    for slug in joined.split(',') {
        let sep = if out.is_empty() { "" } else { "," };
        if len(&out) + len(sep) + len(slug) > max {
            break;
        }
        out.push_str(sep);
        out.push_str(slug);
    }
    if out.is_empty() {
        for c in joined.chars() {
            let mut next = out.clone();
            next.push(c);
            if len(&next) > max {
                break;
            }
            out = next;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_interval_columns_value_is_a_timeout() {
        let t = |r: &str| timeout("lock_timeout", &Some(r.to_string()));
        assert_eq!(t("00:00:30"), Ok(Some(30_000)));
        assert_eq!(t("00:00:00.25"), Ok(Some(250)));
        assert_eq!(t("00:05:00"), Ok(Some(300_000)));
        assert_eq!(t("1 day"), Ok(Some(86_400_000)));
        assert_eq!(t("2 days 01:00:00"), Ok(Some(2 * 86_400_000 + 3_600_000)));
        assert_eq!(t("30s"), Ok(Some(30_000)));
        assert_eq!(t("1500"), Ok(Some(1_500)));
        for bad in [
            "-00:00:01",
            "1 mon",
            "00:61:00",
            "1:2",
            "00:00:xx",
            "25 days",
            "1 day x",
        ] {
            let e = t(bad).expect_err(bad);
            assert!(e.contains("interval such as 00:00:30"), "{bad}: {e}");
        }
    }

    fn custom(id: i64, table: &str, slug: &str, enabled: bool) -> ManifestRow {
        ManifestRow {
            report_type: ReportType::Custom,
            manifest_id: id,
            report_id: None,
            table_name: table.to_string(),
            report_name: format!("report {id}"),
            agency_id: i64::from(slug.len() as u8),
            agency_slug: slug.to_string(),
            query: format!("SELECT {id} AS id"),
            enabled,
            statement_timeout: None,
            lock_timeout: None,
        }
    }

    fn canned(mapping: i64, report: i64, table: &str, agency_id: i64, slug: &str) -> ManifestRow {
        ManifestRow {
            report_type: ReportType::Canned,
            manifest_id: mapping,
            report_id: Some(report),
            table_name: table.to_string(),
            report_name: format!("canned {report}"),
            agency_id,
            agency_slug: slug.to_string(),
            query: "SELECT 1 AS id".to_string(),
            enabled: true,
            statement_timeout: None,
            lock_timeout: None,
        }
    }

    fn rows() -> Vec<ManifestRow> {
        vec![
            custom(1, "reporting.gotham_arrests", "gotham", true),
            custom(2, "reporting.metro_arrests", "metropolis", true),
            custom(3, "reporting.gotham_old", "gotham", false),
            canned(10, 100, "reporting.stg_arrests", 7, "metropolis"),
            canned(11, 100, "reporting.stg_arrests", 5, "gotham"),
            canned(12, 101, "reporting.metro_only", 7, "metropolis"),
        ]
    }

    fn keys(p: &Plan) -> Vec<&str> {
        p.views
            .iter()
            .zip(&p.in_scope)
            .filter(|(_, s)| **s)
            .map(|(v, _)| v.key.as_str())
            .collect()
    }

    #[test]
    fn shared_canned_report_is_one_view_listing_every_agency() {
        let p = plan(&rows(), &Selection::default()).unwrap();
        assert_eq!(
            keys(&p),
            [
                "reporting.gotham_arrests",
                "reporting.metro_arrests",
                "reporting.stg_arrests",
                "reporting.metro_only"
            ]
        );
        let shared = &p.views[2];
        assert_eq!(shared.record.manifest_id, 100);
        assert_eq!(shared.record.agency_slug, "gotham,metropolis");
        assert_eq!(shared.record.agency_id, 5);
        assert!(matches!(shared.plan, ViewPlan::Valid { .. }));
    }

    /// One agency's custom view that is another's canned view is the first agency's custom
    /// view only: `refresh_agency gotham --report-type canned` does not take it.
    #[test]
    fn an_agency_and_a_report_type_select_the_views_of_that_type_for_that_agency() {
        let mut rows = vec![
            custom(1, "reporting.same", "gotham", true),
            canned(10, 100, "reporting.same", 2, "metropolis"),
        ];
        rows[1].query = rows[0].query.clone();
        let pick = |slug: &str, report_type| {
            plan(
                &rows,
                &Selection {
                    scope: Scope::Agency(slug.into()),
                    report_type,
                    ..Selection::default()
                },
            )
            .map(|p| p.in_scope.iter().filter(|s| **s).count())
        };
        assert_eq!(pick("gotham", TypeFilter::Custom), Ok(1));
        assert_eq!(pick("gotham", TypeFilter::All), Ok(1));
        assert_eq!(pick("metropolis", TypeFilter::Canned), Ok(1));
        assert_eq!(
            pick("gotham", TypeFilter::Canned),
            Err(PlanError::AgencyLacksType("gotham".into(), "canned"))
        );
        assert_eq!(
            pick("metropolis", TypeFilter::Custom),
            Err(PlanError::AgencyLacksType("metropolis".into(), "custom"))
        );
    }

    #[test]
    fn a_custom_manifest_and_a_canned_report_of_one_query_are_one_view_of_both_types() {
        let mut rows = vec![
            custom(1, "reporting.same", "gotham", true),
            canned(10, 100, "reporting.same", 1, "gotham"),
        ];
        // The same query, written with a semicolon and a comment after it.
        rows[0].query = "SELECT 1 AS id;\n".into();
        rows[1].query = "SELECT 1 AS id -- shared".into();
        for report_type in [TypeFilter::All, TypeFilter::Custom, TypeFilter::Canned] {
            let selection = Selection {
                scope: Scope::Agency("gotham".into()),
                report_type,
                ..Selection::default()
            };
            let p = plan(&rows, &selection).unwrap();
            assert_eq!(keys(&p), ["reporting.same"], "{report_type:?}");
            assert!(
                matches!(p.views[0].plan, ViewPlan::Valid { .. }),
                "{:?}",
                p.views[0].plan
            );
        }
        // An agency with nothing of the type asked for is a usage error, not an empty run.
        let selection = Selection {
            scope: Scope::Agency("gotham".into()),
            report_type: TypeFilter::Canned,
            ..Selection::default()
        };
        assert_eq!(
            plan(&rows[..1], &selection).map(|_| ()),
            Err(PlanError::AgencyLacksType("gotham".into(), "canned"))
        );
    }

    #[test]
    fn manifests_with_the_same_invalid_table_name_each_stay_a_view_of_their_own() {
        let rows = vec![
            custom(1, "", "gotham", true),
            custom(2, "", "gotham", true),
            custom(3, "no_schema", "gotham", true),
            custom(4, "reporting.ok", "gotham", true),
        ];
        let p = plan(&rows, &Selection::default()).unwrap();
        // Named with their manifest, so each keeps its own status row and metric series.
        assert_eq!(
            keys(&p),
            [
                "(no table name) (manifest 1)",
                "(no table name) (manifest 2)",
                "no_schema",
                "reporting.ok"
            ]
        );
        assert_eq!(p.views[1].record.table_name, "(no table name) (manifest 2)");
        // A name too long to record is cut, and named with its manifest.
        let long = format!("reporting.{}", "x".repeat(6000));
        let cut = plan(&[custom(9, &long, "gotham", true)], &Selection::default()).unwrap();
        assert_eq!(
            cut.views[0].key,
            format!("reporting.{}… (manifest 9)", "x".repeat(90))
        );
        assert!(matches!(cut.views[0].plan, ViewPlan::Invalid(_)));
        let ids: Vec<i64> = p.views.iter().map(|v| v.record.manifest_id).collect();
        assert_eq!(ids, [1, 2, 3, 4]);
        assert!(matches!(p.views[0].plan, ViewPlan::Invalid(_)));
    }

    #[test]
    fn shared_views_slugs_are_cut_at_a_comma_to_the_column() {
        let many: Vec<String> = (0..40).map(|i| format!("agency-number-{i}")).collect();
        let cut = slugs_within(&many.join(","), 255, str::len);
        assert!(cut.len() <= 255, "{cut}");
        assert!(
            cut.split(',').all(|s| many.contains(&s.to_string())),
            "{cut}"
        );
        assert_eq!(slugs_within("a,b", 255, str::len), "a,b");
        let long = "é".repeat(200);
        assert_eq!(slugs_within(&long, 255, str::len).len(), 254);
    }

    #[test]
    fn report_type_filter() {
        let s = Selection {
            report_type: TypeFilter::Canned,
            scope: Scope::All,
            ..Default::default()
        };
        assert_eq!(
            keys(&plan(&rows(), &s).unwrap()),
            ["reporting.stg_arrests", "reporting.metro_only"]
        );
        let s = Selection {
            report_type: TypeFilter::Custom,
            scope: Scope::All,
            ..Default::default()
        };
        assert_eq!(
            keys(&plan(&rows(), &s).unwrap()),
            ["reporting.gotham_arrests", "reporting.metro_arrests"]
        );
    }

    #[test]
    fn agency_includes_its_shared_canned_views_only() {
        let s = Selection {
            scope: Scope::Agency("gotham".into()),
            ..Default::default()
        };
        let p = plan(&rows(), &s).unwrap();
        assert_eq!(
            keys(&p),
            ["reporting.gotham_arrests", "reporting.stg_arrests"]
        );
        assert_eq!(p.views[2].record.agency_slug, "gotham,metropolis");
    }

    #[test]
    fn unknown_and_disabled_selections_are_usage_errors() {
        let agency = |s: &str| Selection {
            scope: Scope::Agency(s.into()),
            ..Default::default()
        };
        let table = |s: &str| Selection {
            scope: Scope::Table(s.into()),
            ..Default::default()
        };
        assert_eq!(
            plan(&rows(), &agency("smallville")),
            Err(PlanError::UnknownAgency("smallville".into(), None))
        );
        // A slug off by case or a typo gets the one meant.
        for asked in ["Gotham", "gothm"] {
            let err = plan(&rows(), &agency(asked)).unwrap_err();
            assert_eq!(
                err,
                PlanError::UnknownAgency(asked.into(), Some("gotham".into()))
            );
            assert!(
                err.to_string()
                    .ends_with("check the slug (did you mean \"gotham\"?)"),
                "{err}"
            );
        }
        let mut r = rows();
        r.push(custom(4, "reporting.sv", "smallville", false));
        assert_eq!(
            plan(&r, &agency("smallville")),
            Err(PlanError::DisabledAgency("smallville".into()))
        );
        assert_eq!(
            plan(&r, &table("reporting.nope")),
            Err(PlanError::UnknownTable("reporting.nope".into()))
        );
        assert_eq!(
            plan(&r, &table("reporting.gotham_old")),
            Err(PlanError::DisabledTable("reporting.gotham_old".into()))
        );
        assert!(matches!(
            plan(&r, &table("a.b.c")),
            Err(PlanError::BadTable(_))
        ));
        assert_eq!(
            keys(&plan(&r, &table("Reporting.Metro_Arrests")).unwrap()),
            ["reporting.metro_arrests"]
        );
    }

    #[test]
    fn invalid_manifests_are_planned_as_errors_with_a_reason() {
        let mut bad_name = custom(5, "reporting.x; DROP TABLE y", "gotham", true);
        bad_name.query = "SELECT 1".into();
        let mut bad_query = custom(6, "reporting.two", "gotham", true);
        bad_query.query = "SELECT 1; DROP TABLE x".into();
        let p = plan(
            &[
                bad_name,
                bad_query,
                custom(7, "reporting.ok", "gotham", true),
            ],
            &Selection::default(),
        )
        .unwrap()
        .views;
        assert_eq!(p.len(), 3);
        assert!(
            matches!(&p[0].plan, ViewPlan::Invalid(r) if r.contains("table name")),
            "{:?}",
            p[0].plan
        );
        assert!(
            matches!(&p[1].plan, ViewPlan::Invalid(r) if r.contains("statement")),
            "{:?}",
            p[1].plan
        );
        assert!(matches!(p[2].plan, ViewPlan::Valid { .. }));
    }

    #[test]
    fn two_manifests_with_different_queries_for_one_table_conflict() {
        let a = custom(1, "reporting.same", "gotham", true);
        let mut b = custom(2, "reporting.same", "metropolis", true);
        b.query = "SELECT 2 AS id".into();
        let p = plan(&[a.clone(), b], &Selection::default()).unwrap().views;
        assert_eq!(p.len(), 1);
        assert!(
            matches!(&p[0].plan, ViewPlan::Invalid(r) if r.contains("custom manifest 1") && r.contains("custom manifest 2"))
        );
        let mut c = custom(3, "reporting.same", "metropolis", true);
        c.query = a.query.clone();
        let p = plan(&[a, c], &Selection::default()).unwrap().views;
        assert!(matches!(p[0].plan, ViewPlan::Valid { .. }));
    }

    #[test]
    fn hash_is_stable_sha256() {
        assert_eq!(
            hash_query("SELECT 1"),
            "e004ebd5b5532a4b85984a62f8ad48a81aa3460c1ca07701f386135d72cdecf5"
        );
    }
}
