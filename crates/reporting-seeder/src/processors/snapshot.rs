//! Release snapshots: what a view looks like at a release (columns, row count, per-column null and
//! distinct counts, top values), and the drift between two of them.

use std::collections::BTreeMap;
use std::time::Instant;

use etl_core::DbError;
use serde_json::{json, Value};

use super::planner::{hash_query, PlannedView, ViewPlan};
use crate::repositories::{Rel, Sample, Snapshot, Snapshots};

/// What `capture_release_snapshot` was asked for.
#[derive(Debug, Clone, Default)]
pub struct CaptureOptions {
    pub release_tag: String,
    pub release_version: Option<String>,
    /// Columns whose most frequent values are recorded.
    pub top_values_columns: Vec<String>,
    /// Statistics from a `TABLESAMPLE SYSTEM` sample of this percentage of the view.
    pub sample_percent: Option<f64>,
    /// The run's timeouts, to name the one a capture ran into.
    pub settings: Option<super::run::RunSettings>,
}

const TOP_VALUES: i64 = 10;

/// Columns counted per statement: each takes two of PostgreSQL's 1,664 target-list entries, so a
/// wider view is counted in several passes (over the same sample).
const COLUMNS_PER_PASS: usize = 800;

/// The widths of the snapshot table's text columns (the old tool's table).
pub const REPORT_NAME_MAX: usize = 255;
pub const AGENCY_SLUG_MAX: usize = 64;
pub const RELEASE_TAG_MAX: usize = 128;

/// The schema hash: SHA-256 over the ordered `name type` list.
pub fn schema_hash(columns: &[(String, String)]) -> String {
    let text: String = columns.iter().map(|(n, t)| format!("{n} {t}\n")).collect();
    hash_query(&text)
}

/// Takes one view's snapshot and stores it. A view that cannot be read is stored with status
/// `error` (and the error in its column_stats), so every capture leaves a record.
pub async fn capture(
    repo: &mut dyn Snapshots,
    view: &PlannedView,
    options: &CaptureOptions,
) -> Result<Snapshot, DbError> {
    let began = Instant::now();
    let mut snapshot = Snapshot {
        id: uuid::Uuid::new_v4(),
        manifest_id: view.record.manifest_id,
        table_name: view.key.clone(),
        report_name: Some(
            view.record
                .report_name
                .chars()
                .take(REPORT_NAME_MAX)
                .collect(),
        ),
        agency_id: Some(view.record.agency_id),
        agency_slug: Some(slugs_that_fit(&view.record.agency_slug)),
        release_tag: options.release_tag.clone(),
        release_version: options.release_version.clone(),
        status: "success".into(),
        execution_duration_ms: 0,
        total_rows: 0,
        total_columns: 0,
        schema_hash: schema_hash(&[]),
        columns: json!([]),
        column_stats: json!({}),
        released_at: String::new(),
    };
    // One seed per view, the same at every capture: every statement of a snapshot reads the
    // same pages, and so do two captures of a view whose pages did not change, so that sampling
    // alone does not show as drift between releases.
    let sample = options.sample_percent.map(|percent| Sample {
        percent,
        seed: sample_seed(&view.key),
    });
    // Every statement of the snapshot reads one database snapshot, and the view's read lock,
    // taken by the first count, is held to the end: a refresh committing between two passes over
    // a wide view, or between the counts and the top values, cannot mix two contents.
    let gathered = match repo.snapshot_read_begin().await {
        Ok(()) => {
            let gathered = gather(repo, view, options, sample).await;
            let ended = repo.snapshot_read_end().await;
            gathered.and_then(|g| ended.map(|()| g))
        }
        Err(e) => Err(e),
    };
    match gathered {
        Ok((columns, rows, stats)) => {
            snapshot.total_rows = rows;
            snapshot.total_columns = i32::try_from(columns.len()).unwrap_or(i32::MAX);
            snapshot.schema_hash = schema_hash(&columns);
            snapshot.columns = json!(columns
                .iter()
                .map(|(n, t)| json!({"name": n, "type": t}))
                .collect::<Vec<_>>());
            snapshot.column_stats = stats;
        }
        Err(mut e) => {
            if let Some(settings) = &options.settings {
                if super::run::name_timeout_of(&mut e, Default::default(), settings) {
                    // Not the view's fault: the same capture may well succeed later.
                    e.message
                        .push_str("; capture it again when the view is less busy");
                }
            }
            snapshot.status = "error".into();
            snapshot.column_stats = json!({ "error": e.message });
        }
    }
    snapshot.execution_duration_ms = i32::try_from(began.elapsed().as_millis()).unwrap_or(i32::MAX);
    repo.insert_snapshot(&snapshot).await?;
    Ok(snapshot)
}

/// The `REPEATABLE` seed of a view's samples: from its name, so stable across captures.
fn sample_seed(key: &str) -> f64 {
    let digest = hash_query(key);
    let n = u32::from_str_radix(&digest[..8], 16).unwrap_or(0);
    f64::from(n % 1_000_000_007)
}

/// A shared canned view's agency slugs, cut to the snapshot column's 64 characters at a comma.
fn slugs_that_fit(slugs: &str) -> String {
    super::planner::slugs_within(slugs, AGENCY_SLUG_MAX, |s| s.chars().count())
}

/// `count` scaled from the sample to the whole view (rounded); unchanged without a sample.
fn scaled(count: i64, sample: Option<Sample>) -> i64 {
    match sample {
        Some(s) => (count as f64 * 100.0 / s.percent).round() as i64,
        None => count,
    }
}

/// Fewer rows than this in a sample and the view is read whole instead: an estimate from so few
/// would be noise, and the view is small enough to read.
const MIN_SAMPLED_ROWS: i64 = 1_000;

async fn gather(
    repo: &mut dyn Snapshots,
    view: &PlannedView,
    options: &CaptureOptions,
    sample: Option<Sample>,
) -> Result<(Vec<(String, String)>, i64, Value), DbError> {
    let ViewPlan::Valid { name, .. } = &view.plan else {
        return Err(DbError::other(format!(
            "{} has an invalid manifest",
            view.key
        )));
    };
    let rel = Rel {
        schema: name.schema(),
        name: name.name(),
    };
    let columns = repo.snapshot_columns(rel).await?;
    if columns.is_empty() {
        return Err(DbError::other(format!(
            "{} does not exist (or has no columns): refresh it first",
            view.key
        )));
    }
    let mut read = 0;
    let mut counts = Vec::with_capacity(columns.len());
    let mut sample = sample;
    let mut whole_instead = false;
    for (i, pass) in columns.chunks(COLUMNS_PER_PASS).enumerate() {
        let (mut rows, mut c) = repo.snapshot_counts(rel, pass, sample).await?;
        // A sample of a small view draws a page or none: its estimate would be 0 rows, or a
        // page's rows times the inverse of the percentage. Such a view is cheap to read whole.
        if i == 0 && sample.is_some() && rows < MIN_SAMPLED_ROWS {
            sample = None;
            whole_instead = true;
            (rows, c) = repo.snapshot_counts(rel, pass, None).await?;
        }
        read = rows;
        counts.extend(c);
    }
    // With a sample, counts are scaled to the whole view (estimates), fractions are the sample's,
    // and distinct counts are the sample's own (they do not scale).
    let rows = scaled(read, sample);
    let mut stats = serde_json::Map::new();
    for ((name, _), (non_null, distinct)) in columns.iter().zip(counts) {
        // No rows read (an empty view, or a sample that drew no page): no fraction to give,
        // and none to compare with another snapshot's.
        let null_fraction = if read == 0 {
            Value::Null
        } else {
            json!((read - non_null) as f64 / read as f64)
        };
        let mut s = json!({
            "null_count": scaled(read - non_null, sample),
            "null_fraction": null_fraction,
            "distinct_count": distinct,
        });
        if options.top_values_columns.iter().any(|c| c == name) {
            let top = repo
                .snapshot_top_values(rel, name, TOP_VALUES, sample)
                .await?;
            s["top_values"] = json!(top
                .iter()
                .map(|(v, n)| json!({"value": v, "count": scaled(*n, sample)}))
                .collect::<Vec<_>>());
        }
        stats.insert(name.clone(), s);
    }
    let mut all = serde_json::Map::new();
    all.insert("columns".into(), Value::Object(stats));
    all.insert("sample_percent".into(), json!(sample.map(|s| s.percent)));
    if whole_instead {
        all.insert(
            "sample_skipped".into(),
            json!(format!(
                "the {}% sample read fewer than {MIN_SAMPLED_ROWS} rows: the whole view was read",
                options.sample_percent.unwrap_or_default()
            )),
        );
    }
    if let Some(s) = sample {
        all.insert("sample_rows".into(), json!(read));
        all.insert("sample_seed".into(), json!(s.seed));
        all.insert("estimated".into(), json!(true));
    }
    Ok((columns, rows, Value::Object(all)))
}

/// Thresholds above which drift is reported (and, with `--fail-on`, fails).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    /// Absolute change of a column's null fraction (0.05 = 5 points).
    pub null_fraction: f64,
    /// Relative change of a column's distinct count (0.1 = 10 %).
    pub distinct: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            null_fraction: 0.05,
            distinct: 0.10,
        }
    }
}

/// A threshold: a finite number, at least 0.
pub fn fraction(s: &str) -> Option<f64> {
    s.parse::<f64>().ok().filter(|v| v.is_finite() && *v >= 0.0)
}

/// A fraction of a whole, from 0 to 1: how far a null fraction may move.
pub fn share(s: &str) -> Option<f64> {
    fraction(s).filter(|v| *v <= 1.0)
}

/// Whether a change is more than a threshold. Changes are differences of binary fractions
/// (0.65 − 0.60 is 0.05000000000000004), so a change equal to the threshold up to rounding is
/// not more than it, whichever way it goes.
fn exceeds(change: f64, limit: f64) -> bool {
    change.abs() > limit + 1e-9
}

/// What `--fail-on` makes a failure.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct FailOn {
    /// Any column added, removed or retyped.
    pub schema: bool,
    /// Row count changed by more than this fraction (or from zero).
    pub rows: Option<f64>,
    /// Any column's null fraction changed by more than this.
    pub nulls: Option<f64>,
    /// Any column's distinct count changed by more than this fraction.
    pub distinct: Option<f64>,
}

impl std::str::FromStr for FailOn {
    type Err = String;
    fn from_str(s: &str) -> Result<FailOn, String> {
        let mut f = FailOn::default();
        let mut seen = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (kind, value) = part.split_once(':').unwrap_or((part, ""));
            if seen.contains(&kind) {
                return Err(format!("{kind} is given twice: give each check once"));
            }
            seen.push(kind);
            let number = || {
                fraction(value)
                    .ok_or_else(|| format!("{part:?}: expected {kind}:<fraction>, e.g. {kind}:0.1"))
            };
            match kind {
                "schema" if value.is_empty() => f.schema = true,
                "rows" => f.rows = Some(number()?),
                // A null fraction moves by at most 1: a larger limit would gate nothing.
                "nulls" => {
                    f.nulls = Some(share(value).ok_or_else(|| {
                        format!("{part:?}: expected nulls:<fraction from 0 to 1>, e.g. nulls:0.05")
                    })?)
                }
                "distinct" => f.distinct = Some(number()?),
                _ => {
                    return Err(format!(
                        "{part:?}: expected schema, rows:<fraction>, nulls:<fraction> or distinct:<fraction>"
                    ))
                }
            }
        }
        if seen.is_empty() {
            // An empty list (an unset variable in a CI script) would quietly gate nothing.
            return Err(
                "no check given: expected schema, rows:<fraction>, nulls:<fraction> or distinct:<fraction>, comma-separated"
                    .into(),
            );
        }
        Ok(f)
    }
}

/// A snapshot written by the old tool: its `column_stats` is a list of per-column objects with a
/// `null_pct` (0–100), its types are `information_schema` names (no modifiers) and its schema
/// hash is computed differently.
fn legacy(s: &Snapshot) -> bool {
    s.column_stats.is_array()
}

/// The old tool's (`information_schema`'s) name for enums, domains and composite types.
const USER_DEFINED: &str = "USER-DEFINED";

/// A type as the old tool recorded it: without modifiers, and arrays as `ARRAY`.
fn plain_type(t: &str) -> String {
    if t.ends_with("[]") || t == "ARRAY" {
        return "ARRAY".into();
    }
    let mut out = String::new();
    let mut depth = 0;
    for ch in t.chars() {
        match ch {
            '(' => depth += 1,
            ')' => depth -= 1,
            _ if depth == 0 => out.push(ch),
            _ => {}
        }
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The ordered `(name, type)` list; types without modifiers when `plain`.
fn ordered_columns(s: &Snapshot, plain: bool) -> Vec<(String, String)> {
    s.columns
        .as_array()
        .map(|cols| {
            cols.iter()
                .filter_map(|c| {
                    let name = c["name"].as_str()?.to_string();
                    let t = c["type"].as_str().unwrap_or_default();
                    Some((name, if plain { plain_type(t) } else { t.to_string() }))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn column_stats<'a>(s: &'a Snapshot, column: &str) -> Option<&'a Value> {
    match s.column_stats.as_array() {
        Some(list) => list.iter().find(|c| c["name"].as_str() == Some(column)),
        None => s.column_stats["columns"].get(column),
    }
}

fn stat(s: &Snapshot, column: &str, field: &str) -> Option<f64> {
    let c = column_stats(s, column)?;
    if field == "null_fraction" && legacy(s) {
        return c["null_pct"].as_f64().map(|p| p / 100.0);
    }
    c[field].as_f64()
}

fn top(s: &Snapshot, column: &str) -> Option<Vec<(Value, i64)>> {
    column_stats(s, column)?["top_values"]
        .as_array()
        .map(|values| {
            values
                .iter()
                .map(|v| (v["value"].clone(), v["count"].as_i64().unwrap_or(0)))
                .collect()
        })
}

/// The sampling percentage a snapshot's statistics were taken with (none: the whole view).
fn sample_percent(s: &Snapshot) -> Option<f64> {
    s.column_stats["sample_percent"].as_f64()
}

/// A count as JSON: an integer when it is one.
fn count_json(v: f64) -> Value {
    if v.fract() == 0.0 && v.abs() < 9.0e15 {
        json!(v as i64)
    } else {
        json!(v)
    }
}

/// Why two snapshots cannot be compared, if they cannot: they are of different views, or one
/// of them recorded an error instead of statistics.
pub fn incomparable(base: &Snapshot, new: &Snapshot) -> Option<String> {
    if base.table_name != new.table_name {
        return Some(format!(
            "snapshot {} is of {} and snapshot {} of {}: compare two snapshots of one view",
            base.id, base.table_name, new.id, new.table_name
        ));
    }
    for (which, s) in [("base", base), ("new", new)] {
        if s.status != "success" {
            let why = s.column_stats["error"]
                .as_str()
                .map(|e| format!(": {e}"))
                .unwrap_or_default();
            return Some(format!(
                "the {which} snapshot {} ({} at {}) has status {}{why}; it holds no statistics to \
                 compare: capture it again once the view can be read",
                s.id, s.table_name, s.release_tag, s.status
            ));
        }
    }
    None
}

/// The drift from `base` to `new`, as a JSON document (also what the text output shows), and
/// whether it exceeds `fail_on`.
pub fn compare(
    base: &Snapshot,
    new: &Snapshot,
    thresholds: Thresholds,
    fail_on: FailOn,
) -> (Value, bool) {
    // The old tool's snapshots record types without modifiers: compare like with like.
    let plain = legacy(base) || legacy(new);
    let (base_cols, new_cols) = (ordered_columns(base, plain), ordered_columns(new, plain));
    let old_types: BTreeMap<String, String> = base_cols.iter().cloned().collect();
    let new_types: BTreeMap<String, String> = new_cols.iter().cloned().collect();
    let base_order: Vec<String> = base_cols.iter().map(|(n, _)| n.clone()).collect();
    let new_order: Vec<String> = new_cols.iter().map(|(n, _)| n.clone()).collect();
    // The columns both have, in each one's order.
    let kept_base: Vec<&String> = base_order
        .iter()
        .filter(|c| new_types.contains_key(*c))
        .collect();
    let kept_new: Vec<&String> = new_order
        .iter()
        .filter(|c| old_types.contains_key(*c))
        .collect();
    let reordered = kept_base != kept_new;
    let mut notes = Vec::new();
    if plain {
        notes.push(
            "one snapshot was written by the old tool: types are compared without modifiers \
             (USER-DEFINED, its name for enums and domains, matches any type), the schema is \
             compared column by column (its hash is computed differently), and top values are \
             not compared (it kept five, typed, without NULL)"
                .to_string(),
        );
    }
    let (base_sample, new_sample) = (sample_percent(base), sample_percent(new));
    let distinct_comparable = base_sample == new_sample;
    match (base_sample, new_sample) {
        (None, None) => {}
        (a, b) if a == b => notes.push(format!(
            "both snapshots are of a {}% sample: row and null figures are estimates",
            a.unwrap_or(100.0)
        )),
        (a, b) => notes.push(format!(
            "the snapshots were sampled differently (base: {}, new: {}): row and null figures \
             are estimates, and distinct counts are not comparable, so they are not compared",
            a.map(|p| format!("{p}%"))
                .unwrap_or_else(|| "whole view".into()),
            b.map(|p| format!("{p}%"))
                .unwrap_or_else(|| "whole view".into()),
        )),
    }
    let added: Vec<&String> = new_order
        .iter()
        .filter(|c| !old_types.contains_key(*c))
        .collect();
    let removed: Vec<&String> = base_order
        .iter()
        .filter(|c| !new_types.contains_key(*c))
        .collect();
    let retyped: Vec<Value> = new_order
        .iter()
        .filter_map(|c| match (old_types.get(c), new_types.get(c)) {
            // The old tool recorded enums, domains and composite types as `USER-DEFINED`: it
            // names no type, so it is not a retype.
            (Some(a), Some(b)) if plain && (a == USER_DEFINED || b == USER_DEFINED) => None,
            (Some(a), Some(b)) if a != b => Some(json!({"column": c, "from": a, "to": b})),
            _ => None,
        })
        .collect();
    let row_delta = new.total_rows - base.total_rows;
    let row_pct = if base.total_rows == 0 {
        if new.total_rows == 0 {
            Some(0.0)
        } else {
            None
        }
    } else {
        Some(row_delta as f64 / base.total_rows as f64)
    };
    let mut nulls = Vec::new();
    let mut distinct = Vec::new();
    let mut tops = Vec::new();
    let (mut worst_null, mut worst_distinct) = (0.0f64, 0.0f64);
    // The columns behind the worst changes, as `name: from → to`, for the gate's message.
    let (mut worst_null_at, mut worst_distinct_at) = (String::new(), String::new());
    for c in new_order.iter().filter(|c| old_types.contains_key(*c)) {
        if let (Some(a), Some(b)) = (
            stat(base, c, "null_fraction"),
            stat(new, c, "null_fraction"),
        ) {
            let d = b - a;
            if d.abs() > worst_null {
                worst_null = d.abs();
                worst_null_at = format!("{c}: {a:.4} → {b:.4}");
            }
            if exceeds(d, thresholds.null_fraction) {
                nulls.push(json!({"column": c, "from": a, "to": b, "delta": d}));
            }
        }
        if let (true, Some(a), Some(b)) = (
            distinct_comparable,
            stat(base, c, "distinct_count"),
            stat(new, c, "distinct_count"),
        ) {
            let rel = if a == 0.0 {
                if b == 0.0 {
                    0.0
                } else {
                    f64::INFINITY
                }
            } else {
                (b - a) / a
            };
            if rel.abs() > worst_distinct {
                worst_distinct = rel.abs();
                worst_distinct_at = format!("{c}: {} → {}", count_json(a), count_json(b));
            }
            if exceeds(rel, thresholds.distinct) {
                distinct.push(json!({"column": c, "from": count_json(a), "to": count_json(b), "delta_fraction": if rel.is_finite() { json!(rel) } else { Value::Null }}));
            }
        }
        // The old tool kept five top values, without NULL, as typed JSON values: its lists are not
        // comparable with ten text values, so they are not compared (a note says so).
        if let (false, Some(a), Some(b)) = (plain, top(base, c), top(new, c)) {
            let values = |t: &[(Value, i64)]| t.iter().map(|(v, _)| v.clone()).collect::<Vec<_>>();
            let (va, vb) = (values(&a), values(&b));
            let entered: Vec<&Value> = vb.iter().filter(|v| !va.contains(v)).collect();
            let left: Vec<&Value> = va.iter().filter(|v| !vb.contains(v)).collect();
            if !entered.is_empty() || !left.is_empty() {
                tops.push(json!({"column": c, "entered": entered, "left": left}));
            }
        }
    }
    let schema_changed =
        !added.is_empty() || !removed.is_empty() || !retyped.is_empty() || reordered;
    let schema_hash_equal = if plain {
        !schema_changed
    } else {
        base.schema_hash == new.schema_hash
    };
    let mut failures = Vec::new();
    if fail_on.schema && schema_changed {
        failures.push("schema changed".to_string());
    }
    if let Some(limit) = fail_on.rows {
        if row_pct.is_none_or(|p| exceeds(p, limit)) {
            failures.push(format!("row count changed by more than {limit}"));
        }
    }
    if let Some(limit) = fail_on.nulls {
        if exceeds(worst_null, limit) {
            failures.push(format!(
                "a null fraction changed by more than {limit} ({worst_null_at})"
            ));
        }
    }
    if let Some(limit) = fail_on.distinct {
        if exceeds(worst_distinct, limit) {
            failures.push(format!(
                "a distinct count changed by more than {limit} ({worst_distinct_at}{})",
                if worst_distinct.is_infinite() {
                    "; from none, any change exceeds"
                } else {
                    ""
                }
            ));
        }
    }
    let doc = json!({
        "table": new.table_name,
        "base": {"id": base.id.to_string(), "release_tag": base.release_tag, "released_at": base.released_at},
        "new": {"id": new.id.to_string(), "release_tag": new.release_tag, "released_at": new.released_at},
        "schema_hash_equal": schema_hash_equal,
        "columns_added": added,
        "columns_removed": removed,
        "columns_retyped": retyped,
        "columns_reordered": if reordered { json!({"from": kept_base, "to": kept_new}) } else { Value::Null },
        "rows": {"from": base.total_rows, "to": new.total_rows, "delta": row_delta, "delta_fraction": row_pct},
        "null_fraction_changes": nulls,
        "distinct_count_changes": distinct,
        "top_value_changes": tops,
        "notes": notes,
        "failures": failures,
    });
    let failed = !doc["failures"].as_array().is_none_or(Vec::is_empty);
    (doc, failed)
}

/// The drift for people.
pub fn render_compare(doc: &Value) -> String {
    let list = |v: &Value| {
        v.as_array()
            .map(|a| {
                a.iter()
                    .map(|x| {
                        x.as_str()
                            .map(str::to_string)
                            .unwrap_or_else(|| x.to_string())
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "none".into())
    };
    // Values as JSON, so that a NULL and the text 'null' read differently.
    let values = |v: &Value| {
        v.as_array()
            .map(|a| {
                a.iter()
                    .map(Value::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "none".into())
    };
    let mut out = format!(
        "{}: {} ({}) -> {} ({})\n",
        doc["table"].as_str().unwrap_or_default(),
        doc["base"]["release_tag"].as_str().unwrap_or_default(),
        doc["base"]["id"].as_str().unwrap_or_default(),
        doc["new"]["release_tag"].as_str().unwrap_or_default(),
        doc["new"]["id"].as_str().unwrap_or_default(),
    );
    out += &format!(
        "schema hash: {}\n",
        if doc["schema_hash_equal"] == true {
            "equal"
        } else {
            "changed"
        }
    );
    out += &format!("columns added: {}\n", list(&doc["columns_added"]));
    out += &format!("columns removed: {}\n", list(&doc["columns_removed"]));
    let retyped: Vec<String> = doc["columns_retyped"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|r| {
                    format!(
                        "{} {} -> {}",
                        r["column"].as_str().unwrap_or_default(),
                        r["from"].as_str().unwrap_or_default(),
                        r["to"].as_str().unwrap_or_default()
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    out += &format!(
        "columns retyped: {}\n",
        if retyped.is_empty() {
            "none".into()
        } else {
            retyped.join(", ")
        }
    );
    if let Some(order) = doc["columns_reordered"].as_object() {
        out += &format!(
            "column order changed: {} -> {}\n",
            list(&order["from"]),
            list(&order["to"])
        );
    }
    let rows = &doc["rows"];
    let pct = rows["delta_fraction"]
        .as_f64()
        .map(|p| format!("{:+.1}%", p * 100.0))
        .unwrap_or_else(|| "from zero".into());
    out += &format!(
        "rows: {} -> {} ({:+}, {pct})\n",
        rows["from"],
        rows["to"],
        rows["delta"].as_i64().unwrap_or(0)
    );
    for n in doc["null_fraction_changes"]
        .as_array()
        .into_iter()
        .flatten()
    {
        out += &format!(
            "null fraction of {}: {:.3} -> {:.3}\n",
            n["column"].as_str().unwrap_or_default(),
            n["from"].as_f64().unwrap_or(0.0),
            n["to"].as_f64().unwrap_or(0.0)
        );
    }
    for d in doc["distinct_count_changes"]
        .as_array()
        .into_iter()
        .flatten()
    {
        out += &format!(
            "distinct values of {}: {} -> {}\n",
            d["column"].as_str().unwrap_or_default(),
            d["from"],
            d["to"]
        );
    }
    for t in doc["top_value_changes"].as_array().into_iter().flatten() {
        out += &format!(
            "top values of {}: entered {}, left {}\n",
            t["column"].as_str().unwrap_or_default(),
            values(&t["entered"]),
            values(&t["left"])
        );
    }
    for n in doc["notes"].as_array().into_iter().flatten() {
        out += &format!("note: {}\n", n.as_str().unwrap_or_default());
    }
    for f in doc["failures"].as_array().into_iter().flatten() {
        out += &format!("FAIL: {}\n", f.as_str().unwrap_or_default());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records the calls a capture makes; `fail_counts` makes the counts fail.
    #[derive(Default)]
    struct Recorder {
        calls: Vec<String>,
        width: usize,
        fail_counts: bool,
        stored: Vec<Snapshot>,
    }

    #[async_trait::async_trait]
    impl Snapshots for Recorder {
        async fn snapshot_read_begin(&mut self) -> Result<(), DbError> {
            self.calls.push("begin".into());
            Ok(())
        }
        async fn snapshot_read_end(&mut self) -> Result<(), DbError> {
            self.calls.push("end".into());
            Ok(())
        }
        async fn snapshot_columns(&mut self, _: Rel<'_>) -> Result<Vec<(String, String)>, DbError> {
            self.calls.push("columns".into());
            Ok((0..self.width)
                .map(|i| (format!("c{i}"), "integer".to_string()))
                .collect())
        }
        async fn snapshot_counts(
            &mut self,
            _: Rel<'_>,
            columns: &[(String, String)],
            _: Option<Sample>,
        ) -> Result<(i64, Vec<(i64, i64)>), DbError> {
            self.calls.push(format!("counts {}", columns.len()));
            if self.fail_counts {
                return Err(DbError::other(
                    "canceling statement due to statement timeout".into(),
                ));
            }
            Ok((10, columns.iter().map(|_| (10, 3)).collect()))
        }
        async fn snapshot_top_values(
            &mut self,
            _: Rel<'_>,
            column: &str,
            _: i64,
            _: Option<Sample>,
        ) -> Result<Vec<(Option<String>, i64)>, DbError> {
            self.calls.push(format!("top {column}"));
            Ok(vec![(Some("1".into()), 10)])
        }
        async fn insert_snapshot(&mut self, s: &Snapshot) -> Result<(), DbError> {
            self.calls.push("insert".into());
            self.stored.push(s.clone());
            Ok(())
        }
        async fn snapshot_by_id(&mut self, _: uuid::Uuid) -> Result<Option<Snapshot>, DbError> {
            Ok(None)
        }
        async fn snapshot_by_tag(&mut self, _: &str, _: &str) -> Result<Option<Snapshot>, DbError> {
            Ok(None)
        }
        async fn snapshots_taken_at(
            &mut self,
            _: &str,
            _: &[String],
        ) -> Result<Vec<(String, uuid::Uuid, String)>, DbError> {
            Ok(Vec::new())
        }
    }

    fn one_view(slug: &str) -> PlannedView {
        let row = crate::repositories::ManifestRow {
            report_type: crate::repositories::ReportType::Custom,
            manifest_id: 7,
            report_id: None,
            table_name: "reporting.wide".into(),
            report_name: "wide".into(),
            agency_id: 1,
            agency_slug: slug.into(),
            query: "SELECT 1 AS c0".into(),
            enabled: true,
            statement_timeout: None,
            lock_timeout: None,
        };
        let planned = super::super::planner::plan(&[row], &Default::default());
        match planned {
            Ok(mut p) => p.views.remove(0),
            Err(e) => panic!("{e:?}"),
        }
    }

    #[tokio::test]
    async fn every_read_of_a_capture_is_in_one_transaction_ended_before_the_insert() {
        let options = CaptureOptions {
            release_tag: "r1".into(),
            top_values_columns: vec!["c1".into()],
            ..Default::default()
        };
        let mut repo = Recorder {
            width: COLUMNS_PER_PASS + 1,
            ..Default::default()
        };
        let s = capture(&mut repo, &one_view("gotham"), &options)
            .await
            .unwrap();
        assert_eq!(s.status, "success");
        assert_eq!(
            repo.calls,
            [
                "begin",
                "columns",
                &format!("counts {COLUMNS_PER_PASS}"),
                "counts 1",
                "top c1",
                "end",
                "insert"
            ]
        );

        // A failed read still ends the transaction before the error snapshot is stored.
        let mut repo = Recorder {
            width: 3,
            fail_counts: true,
            ..Default::default()
        };
        let s = capture(&mut repo, &one_view("gotham"), &options)
            .await
            .unwrap();
        assert_eq!(s.status, "error");
        assert_eq!(
            repo.calls,
            ["begin", "columns", "counts 3", "end", "insert"]
        );
    }

    #[test]
    fn shared_views_slugs_are_cut_at_a_comma() {
        let many: Vec<String> = (0..8).map(|i| format!("police_department_{i}")).collect();
        let cut = slugs_that_fit(&many.join(","));
        assert!(cut.chars().count() <= AGENCY_SLUG_MAX, "{cut}");
        assert_eq!(cut, many[..3].join(","));
        assert_eq!(slugs_that_fit("gotham,metropolis"), "gotham,metropolis");
        let long = "x".repeat(AGENCY_SLUG_MAX + 5);
        assert_eq!(slugs_that_fit(&long).chars().count(), AGENCY_SLUG_MAX);
    }

    #[test]
    fn a_change_equal_to_the_threshold_is_not_more_than_it() {
        let stats =
            |x: f64| json!({"x": {"null_fraction": x, "null_count": 0, "distinct_count": 1}});
        let a = snap("a", 20, &[("x", "text")], stats(0.60));
        for to in [0.65, 0.55] {
            let b = snap("b", 20, &[("x", "text")], stats(to));
            let fail_on = FailOn {
                nulls: Some(0.05),
                ..Default::default()
            };
            let (doc, failed) = compare(&a, &b, Thresholds::default(), fail_on);
            assert!(!failed, "{to}: {doc}");
            assert_eq!(doc["null_fraction_changes"], json!([]), "{to}");
        }
        let b = snap("b", 20, &[("x", "text")], stats(0.66));
        let (_, failed) = compare(
            &a,
            &b,
            Thresholds::default(),
            FailOn {
                nulls: Some(0.05),
                ..Default::default()
            },
        );
        assert!(failed);
    }

    fn snap(tag: &str, rows: i64, cols: &[(&str, &str)], stats: Value) -> Snapshot {
        Snapshot {
            id: uuid::Uuid::new_v4(),
            manifest_id: 1,
            table_name: "reporting.v".into(),
            report_name: None,
            agency_id: None,
            agency_slug: None,
            release_tag: tag.into(),
            release_version: None,
            status: "success".into(),
            execution_duration_ms: 1,
            total_rows: rows,
            total_columns: cols.len() as i32,
            schema_hash: schema_hash(
                &cols
                    .iter()
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .collect::<Vec<_>>(),
            ),
            columns: json!(cols
                .iter()
                .map(|(n, t)| json!({"name": n, "type": t}))
                .collect::<Vec<_>>()),
            column_stats: json!({ "columns": stats }),
            released_at: String::new(),
        }
    }

    #[test]
    fn drift_names_every_change_and_fails_only_as_asked() {
        let a = snap(
            "r1",
            100,
            &[("id", "integer"), ("status", "text"), ("old", "text")],
            json!({
                "id": {"null_fraction": 0.0, "distinct_count": 100},
                "status": {"null_fraction": 0.0, "distinct_count": 3, "top_values": [{"value": "open", "count": 60}, {"value": "closed", "count": 40}]},
            }),
        );
        let b = snap(
            "r2",
            150,
            &[("id", "bigint"), ("status", "text"), ("new", "date")],
            json!({
                "id": {"null_fraction": 0.0, "distinct_count": 150},
                "status": {"null_fraction": 0.2, "distinct_count": 3, "top_values": [{"value": "open", "count": 90}, {"value": "void", "count": 30}]},
            }),
        );
        let (doc, failed) = compare(&a, &b, Thresholds::default(), FailOn::default());
        assert!(!failed);
        assert_eq!(doc["schema_hash_equal"], false);
        assert_eq!(doc["columns_added"], json!(["new"]));
        assert_eq!(doc["columns_removed"], json!(["old"]));
        assert_eq!(
            doc["columns_retyped"],
            json!([{"column": "id", "from": "integer", "to": "bigint"}])
        );
        assert_eq!(
            doc["rows"],
            json!({"from": 100, "to": 150, "delta": 50, "delta_fraction": 0.5})
        );
        assert_eq!(doc["null_fraction_changes"][0]["column"], "status");
        assert_eq!(doc["distinct_count_changes"][0]["column"], "id");
        assert_eq!(
            doc["top_value_changes"],
            json!([{"column": "status", "entered": ["void"], "left": ["closed"]}])
        );
        let (_, failed) = compare(&a, &b, Thresholds::default(), "schema".parse().unwrap());
        assert!(failed);
        let (doc, failed) = compare(
            &a,
            &b,
            Thresholds::default(),
            "rows:0.6,nulls:0.25".parse().unwrap(),
        );
        assert!(!failed, "{doc}");
        let (_, failed) = compare(&a, &b, Thresholds::default(), "rows:0.4".parse().unwrap());
        assert!(failed);
        // A gate that fails names the column behind it.
        let (doc, failed) = compare(
            &a,
            &b,
            Thresholds::default(),
            "nulls:0.1,distinct:0.2".parse().unwrap(),
        );
        assert!(failed);
        assert_eq!(
            doc["failures"],
            json!([
                "a null fraction changed by more than 0.1 (status: 0.0000 → 0.2000)",
                "a distinct count changed by more than 0.2 (id: 100 → 150)"
            ])
        );
    }

    #[test]
    fn an_empty_snapshot_has_no_null_fraction_to_compare() {
        let a = snap(
            "r1",
            0,
            &[("id", "integer")],
            json!({"id": {"null_fraction": null, "distinct_count": 0}}),
        );
        let b = snap(
            "r2",
            0,
            &[("id", "integer")],
            json!({"id": {"null_fraction": 0.3, "distinct_count": 0}}),
        );
        let (doc, failed) = compare(&a, &b, Thresholds::default(), "nulls:0.05".parse().unwrap());
        assert!(!failed, "{doc}");
        assert_eq!(doc["null_fraction_changes"], json!([]));
    }

    #[test]
    fn a_zero_row_base_is_handled() {
        let a = snap("r1", 0, &[("id", "integer")], json!({}));
        let b = snap("r2", 10, &[("id", "integer")], json!({}));
        let (doc, failed) = compare(&a, &b, Thresholds::default(), "rows:1000".parse().unwrap());
        assert_eq!(doc["rows"]["delta_fraction"], Value::Null);
        assert!(failed, "from zero is more than any fraction");
        let (doc, _) = compare(&a, &a, Thresholds::default(), FailOn::default());
        assert_eq!(doc["rows"]["delta_fraction"], 0.0);
        assert_eq!(doc["schema_hash_equal"], true);
        assert!(render_compare(&doc).contains("schema hash: equal"));
    }

    #[test]
    fn a_reorder_is_a_schema_change() {
        let a = snap("r1", 1, &[("a", "integer"), ("b", "text")], json!({}));
        let b = snap("r2", 1, &[("b", "text"), ("a", "integer")], json!({}));
        let (doc, failed) = compare(&a, &b, Thresholds::default(), "schema".parse().unwrap());
        assert!(failed, "{doc}");
        assert_eq!(
            doc["columns_reordered"],
            json!({"from": ["a", "b"], "to": ["b", "a"]})
        );
        assert!(render_compare(&doc).contains("column order changed: a, b -> b, a"));
        let (doc, failed) = compare(&a, &a, Thresholds::default(), "schema".parse().unwrap());
        assert!(!failed);
        assert_eq!(doc["columns_reordered"], Value::Null);
    }

    #[test]
    fn the_old_tools_snapshots_are_read() {
        let mut old = snap(
            "r1",
            10,
            &[
                ("id", "integer"),
                ("name", "character varying"),
                ("m", "USER-DEFINED"),
            ],
            json!({}),
        );
        old.column_stats = json!([
            {"name": "id", "type": "integer", "null_count": 9, "null_pct": 90.0, "distinct_count": 5},
            {"name": "name", "type": "character varying", "null_pct": 0.0, "distinct_count": 1,
             "top_values": [{"value": "x", "count": 10, "pct": 100.0}]},
        ]);
        old.schema_hash = "something else".into();
        let new = snap(
            "r2",
            10,
            &[
                ("id", "integer"),
                ("name", "character varying(20)"),
                ("m", "mood"),
            ],
            json!({
                "id": {"null_fraction": 0.24, "distinct_count": 50},
                "name": {"null_fraction": 0.0, "distinct_count": 1, "top_values": [{"value": "y", "count": 10}]},
            }),
        );
        let (doc, failed) = compare(
            &old,
            &new,
            Thresholds::default(),
            "nulls:0.05,distinct:0.1,schema".parse().unwrap(),
        );
        assert!(failed, "{doc}");
        assert_eq!(doc["schema_hash_equal"], true, "the same columns: {doc}");
        assert_eq!(doc["columns_retyped"], json!([]));
        assert_eq!(doc["null_fraction_changes"][0]["column"], "id");
        assert_eq!(doc["distinct_count_changes"][0]["from"], 5);
        // The old tool's top values (five, typed, no NULL) are not compared with ten text ones.
        assert_eq!(doc["top_value_changes"], json!([]));
        let note = doc["notes"][0].as_str().unwrap();
        assert!(
            note.contains("old tool") && note.contains("top values are not compared"),
            "{note}"
        );
    }

    #[test]
    fn differently_sampled_snapshots_do_not_compare_distinct_counts() {
        let a = snap(
            "r1",
            100,
            &[("id", "integer")],
            json!({"id": {"null_fraction": 0.0, "distinct_count": 100}}),
        );
        let mut b = snap(
            "r2",
            100,
            &[("id", "integer")],
            json!({"id": {"null_fraction": 0.0, "distinct_count": 9}}),
        );
        b.column_stats["sample_percent"] = json!(10.0);
        let (doc, failed) = compare(
            &a,
            &b,
            Thresholds::default(),
            "distinct:0.1".parse().unwrap(),
        );
        assert!(!failed, "{doc}");
        assert_eq!(doc["distinct_count_changes"], json!([]));
        assert!(doc["notes"][0]
            .as_str()
            .unwrap()
            .contains("sampled differently"));
        b.column_stats["sample_percent"] = Value::Null;
        let (_, failed) = compare(
            &a,
            &b,
            Thresholds::default(),
            "distinct:0.1".parse().unwrap(),
        );
        assert!(failed);
    }

    #[test]
    fn error_snapshots_and_other_views_are_not_compared() {
        let a = snap("r1", 10, &[("id", "integer")], json!({}));
        let mut b = snap("r2", 0, &[], json!({}));
        assert_eq!(incomparable(&a, &a), None);
        b.status = "error".into();
        b.column_stats = json!({"error": "gone"});
        let why = incomparable(&a, &b).unwrap();
        assert!(why.contains("status error: gone"), "{why}");
        let mut c = snap("r2", 10, &[("id", "integer")], json!({}));
        c.table_name = "reporting.other".into();
        assert!(incomparable(&a, &c).unwrap().contains("reporting.other"));
    }

    #[test]
    fn plain_types_drop_modifiers() {
        assert_eq!(plain_type("numeric(10,2)"), "numeric");
        assert_eq!(
            plain_type("timestamp(3) without time zone"),
            "timestamp without time zone"
        );
        assert_eq!(plain_type("integer[]"), "ARRAY");
        assert_eq!(plain_type("text"), "text");
    }

    #[test]
    fn fail_on_parses() {
        assert_eq!(
            "schema,rows:0.1".parse::<FailOn>(),
            Ok(FailOn {
                schema: true,
                rows: Some(0.1),
                ..Default::default()
            })
        );
        assert!("rows".parse::<FailOn>().is_err());
        assert!("colour:1".parse::<FailOn>().is_err());
        assert!("nulls:-1".parse::<FailOn>().is_err());
        assert!("nulls:NaN".parse::<FailOn>().is_err());
        // A null fraction cannot move by more than 1; rows and distinct counts can.
        assert!("nulls:2".parse::<FailOn>().is_err());
        assert!("nulls:1".parse::<FailOn>().is_ok());
        assert!("rows:2,distinct:3".parse::<FailOn>().is_ok());
        for gates_nothing in ["", " ", ","] {
            assert!(
                gates_nothing.parse::<FailOn>().is_err(),
                "{gates_nothing:?}"
            );
        }
        assert!("rows:0.1,rows:0.5".parse::<FailOn>().is_err());
    }
}
