//! The end-of-run summary printed on stdout.

use std::fmt::Write;

use super::run::RunReport;

/// Up to this many views are listed one per line; beyond it, failures and the slowest views.
const LIST_ALL_UP_TO: usize = 40;
const SLOWEST: usize = 10;

pub fn render(report: &RunReport) -> String {
    let c = report.counts();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "run {} finished in {:.2}s: {} views, {} success, {} error, {} skipped",
        report.run_id,
        report.wall.as_secs_f64(),
        c.views,
        c.succeeded,
        c.failed,
        c.skipped
    );
    if report.results.is_empty() {
        let _ = writeln!(out, "no enabled manifest selected: nothing to do");
    }
    let line = |out: &mut String, r: &super::run::ViewResult| {
        let o = &r.outcome;
        let _ = write!(
            out,
            "  {:<8} {:<21} {:>9} {:>10}  {}",
            o.status,
            o.action.unwrap_or("-"),
            format!("{} ms", o.duration_ms),
            if o.status == "success" {
                o.rows.to_string()
            } else {
                "-".to_string()
            },
            r.key
        );
        if let Some(e) = &o.error {
            let first = e.lines().next().unwrap_or_default();
            let _ = write!(out, "  {first}");
        }
        out.push('\n');
    };
    if !report.results.is_empty() {
        let _ = writeln!(
            out,
            "  {:<8} {:<21} {:>9} {:>10}  view",
            "status", "action", "duration", "rows"
        );
    }
    if report.results.len() <= LIST_ALL_UP_TO {
        for r in &report.results {
            line(&mut out, r);
        }
    } else {
        for r in report
            .results
            .iter()
            .filter(|r| r.outcome.status != "success")
        {
            line(&mut out, r);
        }
        let mut ok: Vec<_> = report
            .results
            .iter()
            .filter(|r| r.outcome.status == "success")
            .collect();
        ok.sort_by_key(|r| std::cmp::Reverse(r.outcome.duration_ms));
        let _ = writeln!(
            out,
            "  slowest {} of {} successful views:",
            SLOWEST.min(ok.len()),
            ok.len()
        );
        for r in ok.into_iter().take(SLOWEST) {
            line(&mut out, r);
        }
    }
    for e in &report.bookkeeping_errors {
        let _ = writeln!(out, "  bookkeeping error: {e}");
    }
    out
}

/// The run's results for machines (`--output json`, `--results-file`); the schema is in the README.
pub fn to_json(report: &RunReport, job: &str) -> serde_json::Value {
    let c = report.counts();
    serde_json::json!({
        "run_id": report.run_id,
        "job": job,
        "status": if report.all_succeeded() { "success" } else { "failed" },
        "wall_ms": u64::try_from(report.wall.as_millis()).unwrap_or(u64::MAX),
        "counts": {
            "views": c.views,
            "success": c.succeeded,
            "error": c.failed,
            "skipped": c.skipped,
        },
        "views": report.results.iter().map(|r| serde_json::json!({
            "table": r.key,
            "report_type": r.record.report_type.as_str(),
            "manifest_id": r.record.manifest_id,
            "agencies": r.record.agency_slug,
            "status": r.outcome.status,
            "action": r.outcome.action,
            "duration_ms": r.outcome.duration_ms,
            "rows": r.outcome.rows,
            "bytes": r.outcome.bytes,
            "error": r.outcome.error,
        })).collect::<Vec<_>>(),
        "bookkeeping_errors": report.bookkeeping_errors,
    })
}

/// What `plan` shows for one view's action.
fn plan_action(a: &Result<super::refresh::Action, String>) -> &'static str {
    use super::refresh::Action;
    match a {
        Err(_) => "skip-invalid",
        Ok(Action::Rebuild { .. }) => "rebuild",
        Ok(other) => other.label(),
    }
}

fn human_ms(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms} ms")
    } else {
        format!("{:.1} s", ms as f64 / 1000.0)
    }
}

/// `plan` for people.
pub fn render_plan(p: &super::run::Prepared, workers: std::num::NonZeroUsize) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "plan: {} views, expected wall time {} with {} workers (nothing has been changed)",
        p.views.len(),
        human_ms(p.expected_wall_ms(workers)),
        workers
    );
    if let Some(run) = &p.retried_run {
        let _ = writeln!(out, "retrying what failed or was skipped in run {run}");
    }
    for c in &p.cycles {
        let _ = writeln!(out, "  error: {c}");
    }
    if p.views.is_empty() {
        return out;
    }
    let _ = writeln!(
        out,
        "  {:<20} {:<40} {:>10}  upstream",
        "action", "view", "expected"
    );
    for (i, v) in p.views.iter().enumerate() {
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
            "  {:<20} {:<40} {:>10}  {}",
            plan_action(&p.actions[i]),
            v.key,
            expected,
            upstream
        );
        if let Err(reason) = &p.actions[i] {
            let _ = write!(out, "  ({})", reason.lines().next().unwrap_or_default());
        }
        out.push('\n');
    }
    out
}

/// `plan --output json`.
pub fn plan_json(p: &super::run::Prepared, workers: std::num::NonZeroUsize) -> serde_json::Value {
    serde_json::json!({
        "workers": workers.get(),
        "expected_wall_ms": p.expected_wall_ms(workers),
        "retried_run": p.retried_run,
        "cycles": p.cycles,
        "views": p.views.iter().enumerate().map(|(i, v)| serde_json::json!({
            "table": v.key,
            "report_type": v.record.report_type.as_str(),
            "agencies": v.agencies,
            "action": plan_action(&p.actions[i]),
            "reason": p.actions[i].as_ref().err(),
            "upstream": p.upstream[i],
            "expected_ms": p.expected_ms[i],
            "expected_from_history": p.expected_known[i],
        })).collect::<Vec<_>>(),
    })
}
