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
