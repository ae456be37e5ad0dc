//! `status` and `history`: what monitors and operators read, assessed and rendered.

use std::fmt::Write;
use std::time::Duration;

use comfy_table::{presets, Table};

use crate::repositories::{RunRow, StatusRow, ViewRunRow};

/// How a view stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Ok,
    /// Its last run ended in error.
    Failing,
    /// No success for longer than `--stale-after` (or never).
    Stale,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Ok => "ok",
            State::Failing => "failing",
            State::Stale => "stale",
        }
    }
}

/// Failing wins over stale: it is what to look at first.
pub fn assess(row: &StatusRow, stale_after: Option<Duration>) -> State {
    if row.status.as_deref() == Some("error") {
        return State::Failing;
    }
    match stale_after {
        Some(limit) => match row.age_seconds {
            Some(age) if age <= limit.as_secs_f64() => State::Ok,
            _ => State::Stale,
        },
        // Without a limit, only a view that never succeeded is stale.
        None if row.age_seconds.is_none() => State::Stale,
        None => State::Ok,
    }
}

fn human_age(seconds: f64) -> String {
    let s = seconds.max(0.0) as u64;
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

use super::summary::shown;

fn table() -> Table {
    let mut t = Table::new();
    t.load_preset(presets::NOTHING);
    t.force_no_tty();
    t
}

pub fn render_status(rows: &[StatusRow], stale_after: Option<Duration>) -> String {
    let mut t = table();
    t.set_header([
        "state",
        "view",
        "last status",
        "last success",
        "age",
        "last duration",
        "failures",
        "last error",
    ]);
    let mut counts = [0usize; 3];
    for r in rows {
        let state = assess(r, stale_after);
        counts[state as usize] += 1;
        t.add_row(vec![
            state.as_str().to_string(),
            shown(&r.key),
            r.status.clone().unwrap_or_else(|| "never run".into()),
            r.last_success.clone().unwrap_or_else(|| "never".into()),
            r.age_seconds.map(human_age).unwrap_or_else(|| "-".into()),
            r.last_duration_ms
                .map(|ms| format!("{ms} ms"))
                .unwrap_or_else(|| "-".into()),
            r.consecutive_failures.to_string(),
            shown(
                r.last_error
                    .as_deref()
                    .filter(|_| state != State::Ok)
                    .and_then(|e| e.lines().next())
                    .unwrap_or_default(),
            ),
        ]);
    }
    let mut out = format!(
        "{}: {} ok, {} failing, {} stale\n",
        super::summary::counted(rows.len() as i64, "view", "views"),
        counts[State::Ok as usize],
        counts[State::Failing as usize],
        counts[State::Stale as usize]
    );
    if !rows.is_empty() {
        let _ = writeln!(out, "{}", super::summary::trimmed(&t));
    }
    out
}

pub fn status_json(rows: &[StatusRow], stale_after: Option<Duration>) -> serde_json::Value {
    serde_json::json!({
        "stale_after_seconds": stale_after.map(|d| d.as_secs_f64()),
        "views": rows.iter().map(|r| serde_json::json!({
            "table": r.key,
            "state": assess(r, stale_after).as_str(),
            "last_status": r.status,
            "last_success": r.last_success,
            "age_seconds": r.age_seconds,
            "last_duration_ms": r.last_duration_ms,
            "consecutive_failures": r.consecutive_failures,
            "last_error": r.last_error,
        })).collect::<Vec<_>>(),
    })
}

pub fn render_runs(runs: &[RunRow]) -> String {
    let mut t = table();
    t.set_header([
        "run id",
        "job",
        "started (UTC)",
        "wall",
        "status",
        "views",
        "success",
        "error",
        "skipped",
        "cancelled",
        "abandoned",
    ]);
    for r in runs {
        t.add_row(vec![
            shown(&r.run_id),
            shown(&r.job),
            r.started_at.clone(),
            r.wall_seconds
                .map(|s| format!("{s:.2}s"))
                .unwrap_or_else(|| "-".into()),
            r.status.clone(),
            r.views.to_string(),
            r.succeeded.to_string(),
            r.failed.to_string(),
            r.skipped.to_string(),
            r.cancelled().to_string(),
            r.abandoned().to_string(),
        ]);
    }
    if runs.is_empty() {
        return "no run recorded yet\n".into();
    }
    format!("{}\n", super::summary::trimmed(&t))
}

pub fn runs_json(runs: &[RunRow]) -> serde_json::Value {
    serde_json::json!({
        "runs": runs.iter().map(|r| serde_json::json!({
            "run_id": r.run_id, "job": r.job, "arguments": r.arguments, "started_at": r.started_at,
            "wall_seconds": r.wall_seconds, "status": r.status,
            "counts": { "views": r.views, "success": r.succeeded, "error": r.failed, "skipped": r.skipped, "cancelled": r.cancelled(), "abandoned": r.abandoned() },
        })).collect::<Vec<_>>(),
    })
}

pub fn render_view_runs(rows: &[ViewRunRow]) -> String {
    if rows.is_empty() {
        return "no rows\n".into();
    }
    let mut t = table();
    t.set_header([
        "finished (UTC)",
        "run id",
        "view",
        "status",
        "action",
        "duration",
        "rows",
        "attempts",
        "error",
    ]);
    for r in rows {
        t.add_row(vec![
            r.finished_at.clone().unwrap_or_else(|| "-".into()),
            r.run_id.clone(),
            shown(&r.table),
            r.status.clone(),
            r.action.clone().unwrap_or_else(|| "-".into()),
            r.duration_ms
                .map(|ms| format!("{ms} ms"))
                .unwrap_or_else(|| "-".into()),
            r.rows.map(|n| n.to_string()).unwrap_or_else(|| "-".into()),
            r.attempts.to_string(),
            shown(
                r.error
                    .as_deref()
                    .and_then(|e| e.lines().next())
                    .unwrap_or_default(),
            ),
        ]);
    }
    format!("{}\n", super::summary::trimmed(&t))
}

pub fn view_runs_json(rows: &[ViewRunRow]) -> serde_json::Value {
    serde_json::json!({
        "views": rows.iter().map(|r| serde_json::json!({
            "run_id": r.run_id, "table": r.table, "report_type": r.report_type, "status": r.status,
            "action": r.action, "duration_ms": r.duration_ms, "rows": r.rows, "bytes": r.bytes,
            "attempts": r.attempts, "error": r.error, "finished_at": r.finished_at,
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(status: Option<&str>, age: Option<f64>) -> StatusRow {
        StatusRow {
            key: "s.v".into(),
            status: status.map(str::to_string),
            age_seconds: age,
            ..Default::default()
        }
    }

    #[test]
    fn failing_beats_stale_and_staleness_needs_a_limit() {
        let day = Some(Duration::from_secs(26 * 3600));
        assert_eq!(assess(&row(Some("success"), Some(3600.0)), day), State::Ok);
        assert_eq!(
            assess(&row(Some("success"), Some(30.0 * 3600.0)), day),
            State::Stale
        );
        assert_eq!(
            assess(&row(None, None), day),
            State::Stale,
            "never succeeded"
        );
        assert_eq!(assess(&row(Some("error"), Some(60.0)), day), State::Failing);
        assert_eq!(assess(&row(Some("skipped"), Some(1e9)), None), State::Ok);
        assert_eq!(assess(&row(Some("error"), None), None), State::Failing);
        assert_eq!(
            assess(&row(Some("skipped"), None), None),
            State::Stale,
            "never succeeded, whatever the limit"
        );
    }

    #[test]
    fn ages_read_naturally() {
        assert_eq!(human_age(59.0), "59s");
        assert_eq!(human_age(600.0), "10m");
        assert_eq!(human_age(30.0 * 3600.0), "30h");
        assert_eq!(human_age(5.0 * 86400.0), "5d");
    }
}
