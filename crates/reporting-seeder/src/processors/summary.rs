//! The end-of-run summary printed on stdout.

use std::fmt::Write;

use comfy_table::{Cell, CellAlignment, Color, Table};
use unicode_width::UnicodeWidthStr;

use super::run::{RunReport, ViewResult};

/// Up to this many views are listed one per line; beyond it, failures and the slowest views.
const LIST_ALL_UP_TO: usize = 40;
const SLOWEST: usize = 10;

fn status_cell(status: &str, colour: bool) -> Cell {
    let cell = Cell::new(status);
    if !colour {
        return cell;
    }
    match status {
        "success" => cell.fg(Color::Green),
        "error" => cell.fg(Color::Red),
        _ => cell.fg(Color::Yellow),
    }
}

/// Text from the database as a table cell shows it: control characters escaped (a newline in
/// a table name would otherwise make two lines of one row, an escape sequence redraw the
/// screen), so that widths are counted on what is printed.
pub(crate) fn shown(text: &str) -> String {
    etl_core::output::printable(text, etl_core::output::Keep::default()).into_owned()
}

/// The table's text without the padding comfy-table puts after each line's last cell: a long
/// reason in one row otherwise pads every line of the table to its width in logs.
pub(crate) fn trimmed(t: &Table) -> String {
    t.lines()
        .map(|line| line.trim_end().to_owned())
        .collect::<Vec<_>>()
        .join("\n")
}

fn view_table(rows: &[&ViewResult], colour: bool) -> String {
    let mut t = Table::new();
    t.load_preset(comfy_table::presets::NOTHING);
    if colour {
        t.enforce_styling();
    } else {
        t.force_no_tty();
    }
    t.set_header(["status", "action", "duration", "rows", "view", "reason"]);
    for r in rows {
        let o = &r.outcome;
        let reason = o
            .error
            .as_deref()
            .filter(|_| o.status != "success")
            .and_then(|e| e.lines().next())
            .unwrap_or_default();
        t.add_row(vec![
            status_cell(o.status, colour),
            Cell::new(o.action.unwrap_or("-")),
            Cell::new(format!("{} ms", o.duration_ms)).set_alignment(CellAlignment::Right),
            Cell::new(if o.status == "success" {
                o.rows.to_string()
            } else {
                "-".to_string()
            })
            .set_alignment(CellAlignment::Right),
            Cell::new(shown(&r.key)),
            Cell::new(shown(reason)),
        ]);
    }
    trimmed(&t)
}

/// The end-of-run summary: counts by status, every failure with its reason, the slowest views,
/// the run id and wall time. Colour only when asked (a terminal without `NO_COLOR`).
pub fn render(report: &RunReport, colour: bool) -> String {
    let c = report.counts();
    let mut out = String::new();
    let cancelled = report.cancelled();
    let _ = write!(
        out,
        "run {} finished in {:.2}s: {}, {} success, {} error, {} skipped",
        report.run_id,
        report.wall.as_secs_f64(),
        views(c.views as usize),
        c.succeeded,
        c.failed,
        c.skipped
    );
    if cancelled > 0 {
        let _ = write!(out, ", {cancelled} cancelled");
    }
    out.push('\n');
    if report.results.is_empty() {
        let _ = writeln!(
            out,
            "no view to run: nothing selected, or (for retry) nothing left that did not succeed"
        );
    }
    let mut by_time: Vec<&ViewResult> = report
        .results
        .iter()
        .filter(|r| r.outcome.duration_ms > 0)
        .collect();
    by_time.sort_by_key(|r| std::cmp::Reverse(r.outcome.duration_ms));
    if !by_time.is_empty() {
        let slowest: Vec<String> = by_time
            .iter()
            .take(3)
            .map(|r| format!("{} ({} ms)", r.key, r.outcome.duration_ms))
            .collect();
        let _ = writeln!(out, "slowest: {}", slowest.join(", "));
    }
    let failures: Vec<&ViewResult> = report
        .results
        .iter()
        .filter(|r| r.outcome.status != "success")
        .collect();
    if report.results.len() <= LIST_ALL_UP_TO {
        if !report.results.is_empty() {
            let all: Vec<&ViewResult> = report.results.iter().collect();
            let _ = writeln!(out, "{}", view_table(&all, colour));
        }
    } else {
        if !failures.is_empty() {
            let _ = writeln!(
                out,
                "failures ({}):\n{}",
                failures.len(),
                view_table(&failures, colour)
            );
        }
        let mut ok: Vec<&ViewResult> = report
            .results
            .iter()
            .filter(|r| r.outcome.status == "success")
            .collect();
        ok.sort_by_key(|r| std::cmp::Reverse(r.outcome.duration_ms));
        ok.truncate(SLOWEST);
        if !ok.is_empty() {
            let _ = writeln!(
                out,
                "slowest {} of {} successful views:\n{}",
                ok.len(),
                c.succeeded,
                view_table(&ok, colour)
            );
        }
    }
    for e in &report.bookkeeping_errors {
        let _ = writeln!(out, "bookkeeping error: {e}");
    }
    out
}

/// Prometheus label values: backslash, double quote and newline escaped.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The run as Prometheus text exposition format, for the node_exporter textfile collector.
pub fn metrics(report: &RunReport, job: &str) -> String {
    let job = label(job);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# HELP reporting_seeder_run_views Views of the last run, by final status."
    );
    let _ = writeln!(out, "# TYPE reporting_seeder_run_views gauge");
    for status in ["success", "error", "skipped", "cancelled"] {
        let n = report
            .results
            .iter()
            .filter(|r| r.outcome.status == status)
            .count();
        let _ = writeln!(
            out,
            "reporting_seeder_run_views{{job=\"{job}\",status=\"{status}\"}} {n}"
        );
    }
    let _ = writeln!(
        out,
        "# HELP reporting_seeder_run_wall_seconds Wall time of the last run."
    );
    let _ = writeln!(out, "# TYPE reporting_seeder_run_wall_seconds gauge");
    let _ = writeln!(
        out,
        "reporting_seeder_run_wall_seconds{{job=\"{job}\"}} {:.3}",
        report.wall.as_secs_f64()
    );
    let _ = writeln!(
        out,
        "# HELP reporting_seeder_run_success Whether every view of the last run succeeded."
    );
    let _ = writeln!(out, "# TYPE reporting_seeder_run_success gauge");
    let _ = writeln!(
        out,
        "reporting_seeder_run_success{{job=\"{job}\"}} {}",
        u8::from(report.all_succeeded())
    );
    let _ = writeln!(
        out,
        "# HELP reporting_seeder_run_finished_timestamp_seconds When the last run ended."
    );
    let _ = writeln!(
        out,
        "# TYPE reporting_seeder_run_finished_timestamp_seconds gauge"
    );
    let _ = writeln!(
        out,
        "reporting_seeder_run_finished_timestamp_seconds{{job=\"{job}\"}} {:.3}",
        report.finished_at
    );
    let _ = writeln!(
        out,
        "# HELP reporting_seeder_view_duration_seconds How long each view took in the last run."
    );
    let _ = writeln!(out, "# TYPE reporting_seeder_view_duration_seconds gauge");
    for r in &report.results {
        let _ = writeln!(
            out,
            "reporting_seeder_view_duration_seconds{{view=\"{}\",status=\"{}\"}} {:.3}",
            label(&r.key),
            r.outcome.status,
            r.outcome.duration_ms as f64 / 1000.0
        );
    }
    let _ = writeln!(out, "# HELP reporting_seeder_view_last_success_timestamp_seconds When each view last succeeded.");
    let _ = writeln!(
        out,
        "# TYPE reporting_seeder_view_last_success_timestamp_seconds gauge"
    );
    for r in &report.results {
        if let Some(at) = report.last_success.get(&r.key) {
            let _ = writeln!(
                out,
                "reporting_seeder_view_last_success_timestamp_seconds{{view=\"{}\"}} {at:.3}",
                label(&r.key)
            );
        }
    }
    out
}

/// [`to_json`]'s document, with the same keys, for a refresh job that ended before its run had
/// anything to report: a usage or configuration error, the database unreachable, a signal
/// before the first view.
pub fn not_run_json(job: &str, exit: etl_core::ExitStatus, error: &str) -> serde_json::Value {
    let interrupted = matches!(
        exit,
        etl_core::ExitStatus::Interrupted | etl_core::ExitStatus::Terminated
    );
    serde_json::json!({
        "run_id": null,
        "job": job,
        "status": if interrupted { "cancelled" } else { "error" },
        "exit_code": exit as i32,
        "error": error,
        "wall_ms": null,
        "counts": { "views": 0, "success": 0, "error": 0, "skipped": 0, "cancelled": 0 },
        "views": [],
        "bookkeeping_errors": [],
    })
}

/// The run's results for machines (`--output json`, `--results-file`); the schema is in the README.
pub fn to_json(report: &RunReport, job: &str) -> serde_json::Value {
    let c = report.counts();
    serde_json::json!({
        "run_id": report.run_id,
        "job": job,
        "status": if report.all_succeeded() {
            "success"
        } else if report.cancelled() > 0 {
            "cancelled"
        } else {
            "failed"
        },
        "wall_ms": u64::try_from(report.wall.as_millis()).unwrap_or(u64::MAX),
        "counts": {
            "views": c.views,
            "success": c.succeeded,
            "error": c.failed,
            "skipped": c.skipped,
            "cancelled": report.cancelled(),
        },
        "views": report.results.iter().map(|r| serde_json::json!({
            "table": r.key,
            "report_type": r.record.report_type.as_str(),
            "manifest_id": r.record.manifest_id,
            "agencies": r.record.agency_slug,
            "status": r.outcome.status,
            "action": r.outcome.action,
            "duration_ms": r.outcome.duration_ms,
            // Known only for a view that was refreshed.
            "rows": (r.outcome.status == "success").then_some(r.outcome.rows),
            "bytes": (r.outcome.status == "success").then_some(r.outcome.bytes),
            "error": r.outcome.error,
        })).collect::<Vec<_>>(),
        "bookkeeping_errors": report.bookkeeping_errors,
    })
}

/// What `plan` says a run will do with each view, and why where that is not obvious.
fn planned_actions(p: &super::run::Prepared) -> Vec<(&'static str, Option<String>)> {
    use super::refresh::Action;
    let rebuilt_with = p.rebuilt_with();
    let blocked_by = p.blocked_by();
    p.actions
        .iter()
        .zip(rebuilt_with)
        .zip(blocked_by)
        .zip(&p.recreates)
        .map(|(((a, with), blocked), recreates)| match (a, blocked, with) {
            (Err(reason), _, _) => ("skip-invalid", Some(reason.clone())),
            (Ok(_), Some(upstream), _) => (
                "skip",
                Some(format!(
                    "upstream {upstream} cannot run (skip-invalid), so the run skips this view as `upstream {upstream} failed`"
                )),
            ),
            (Ok(_), None, Some(upstream)) => (
                "rebuild",
                Some(format!(
                    "recreated by the rebuild of {upstream}, which it reads, directly or not"
                )),
            ),
            (Ok(Action::Rebuild { adopt, .. }), None, None) => {
                let adopted = adopt.then_some(
                    "adopt: it exists without a recorded query hash (built by the old tool or \
                     by hand), so it is rebuilt once and recorded as adopt",
                );
                let also = recreated_with(recreates);
                let reason = match (adopted, also) {
                    (Some(a), Some(b)) => Some(format!("{a}; {b}")),
                    (Some(a), None) => Some(a.to_string()),
                    (None, b) => b,
                };
                ("rebuild", reason)
            }
            (Ok(other), None, None) => (other.label(), None),
        })
        .collect()
}

/// "also recreates a.b, c.d, which read it": what a rebuild's swap drops and builds again; past
/// five, how many more (JSON's `recreates` lists them all).
fn recreated_with(readers: &[String]) -> Option<String> {
    const SHOWN: usize = 5;
    (!readers.is_empty()).then(|| {
        let mut names = readers[..readers.len().min(SHOWN)].join(", ");
        if readers.len() > SHOWN {
            let _ = write!(names, " and {} more", readers.len() - SHOWN);
        }
        format!(
            "also recreates {names}, which read{} it",
            if readers.len() == 1 { "s" } else { "" }
        )
    })
}

fn human_ms(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms} ms")
    } else {
        format!("{:.1} s", ms as f64 / 1000.0)
    }
}

/// "1 view", "2 views".
fn views(n: usize) -> String {
    counted(n as i64, "view", "views")
}

/// `n` and the noun for it: "1 row", "0 rows", "2 rows".
pub fn counted(n: i64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// `text` followed by spaces to fill `width` terminal cells.
fn padded(text: &str, width: usize) -> String {
    let fill = width.saturating_sub(text.width());
    format!("{text}{}", " ".repeat(fill))
}

/// `plan` for people.
pub fn render_plan(p: &super::run::Prepared, workers: std::num::NonZeroUsize) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "plan: {}, expected wall time {} with {} workers (nothing has been changed)",
        views(p.views.len()),
        human_ms(p.expected_wall_ms(workers)),
        workers
    );
    if let Some(run) = &p.retried_run {
        let _ = writeln!(out, "retrying what failed or was skipped in run {run}");
    }
    for c in &p.cycles {
        let _ = writeln!(out, "  error: {}", shown(&c.to_string()));
    }
    if p.views.is_empty() {
        return out;
    }
    // Columns padded by what a terminal shows (a name in CJK takes two cells a character), and
    // the view column as wide as the widest name.
    let names: Vec<String> = p.views.iter().map(|v| shown(&v.key)).collect();
    let view_width = names.iter().map(|n| n.width()).max().unwrap_or(0).max(40);
    let _ = writeln!(
        out,
        "  {:<20} {} {:>10}  upstream",
        "action",
        padded("view", view_width),
        "expected"
    );
    let planned = planned_actions(p);
    for (i, name) in names.iter().enumerate() {
        let expected = if p.expected_known[i] {
            human_ms(p.expected_ms[i])
        } else {
            format!("~{}", human_ms(p.expected_ms[i]))
        };
        let upstream = if p.upstream[i].is_empty() {
            "-".to_string()
        } else {
            p.upstream[i].join(", ")
        };
        let _ = write!(
            out,
            "  {:<20} {} {:>10}  {}",
            planned[i].0,
            padded(name, view_width),
            expected,
            shown(&upstream)
        );
        if let Some(reason) = &planned[i].1 {
            let _ = write!(
                out,
                "  ({})",
                shown(reason.lines().next().unwrap_or_default())
            );
        }
        out.push('\n');
    }
    out
}

/// `plan --output json`.
pub fn plan_json(p: &super::run::Prepared, workers: std::num::NonZeroUsize) -> serde_json::Value {
    let planned = planned_actions(p);
    serde_json::json!({
        "workers": workers.get(),
        "expected_wall_ms": p.expected_wall_ms(workers),
        "retried_run": p.retried_run,
        "cycles": p.cycles,
        "views": p.views.iter().enumerate().map(|(i, v)| serde_json::json!({
            "table": v.key,
            "report_type": v.record.report_type.as_str(),
            "agencies": v.agencies,
            "action": planned[i].0,
            "reason": planned[i].1,
            "upstream": p.upstream[i],
            "recreates": p.recreates[i],
            "expected_ms": p.expected_ms[i],
            "expected_from_history": p.expected_known[i],
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::counted;

    #[test]
    fn counts_take_the_singular_only_for_one() {
        assert_eq!(counted(1, "row", "rows"), "1 row");
        assert_eq!(counted(0, "row", "rows"), "0 rows");
        assert_eq!(counted(2, "column", "columns"), "2 columns");
    }

    #[test]
    fn a_rebuild_names_five_of_the_views_it_recreates_then_counts() {
        let names = |n: usize| (1..=n).map(|i| format!("r.v{i}")).collect::<Vec<_>>();
        assert_eq!(super::recreated_with(&[]), None);
        assert_eq!(
            super::recreated_with(&names(1)).as_deref(),
            Some("also recreates r.v1, which reads it")
        );
        assert_eq!(
            super::recreated_with(&names(5)).as_deref(),
            Some("also recreates r.v1, r.v2, r.v3, r.v4, r.v5, which read it")
        );
        assert_eq!(
            super::recreated_with(&names(8)).as_deref(),
            Some("also recreates r.v1, r.v2, r.v3, r.v4, r.v5 and 3 more, which read it")
        );
    }
}
