//! The live progress bar of the refresh jobs, on stderr when it is a terminal.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::processors::run::Progress;

pub struct Bar {
    bar: ProgressBar,
    state: Arc<Mutex<State>>,
}

#[derive(Default)]
struct State {
    expected_ms: Vec<u64>,
    /// When each running view started.
    running: Vec<Option<Instant>>,
    done: Vec<bool>,
    failures: usize,
    skipped: usize,
    workers: usize,
}

impl State {
    /// What is left, from the views' expected durations: the running views' remainders (what
    /// they have run already deducted) and the waiting views' durations, spread over the
    /// workers that can take them, but never less than the longest single remainder.
    fn eta(&self, now: Instant) -> Duration {
        let mut left: Vec<u64> = Vec::new();
        for (i, ms) in self.expected_ms.iter().enumerate() {
            if self.done.get(i).copied().unwrap_or(true) {
                continue;
            }
            let ran = self
                .running
                .get(i)
                .copied()
                .flatten()
                .map(|t| u64::try_from(now.duration_since(t).as_millis()).unwrap_or(u64::MAX))
                .unwrap_or(0);
            left.push(ms.saturating_sub(ran));
        }
        let lanes = self.workers.clamp(1, left.len().max(1)) as u64;
        let spread = left.iter().sum::<u64>() / lanes;
        let longest = left.iter().copied().max().unwrap_or(0);
        Duration::from_millis(spread.max(longest))
    }
}

impl Default for Bar {
    fn default() -> Bar {
        Bar::new()
    }
}

impl Bar {
    pub fn new() -> Bar {
        let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
        let state = Arc::new(Mutex::new(State::default()));
        let live = state.clone();
        if let Ok(style) = ProgressStyle::with_template(
            "{elapsed_precise} [{bar:30.cyan/blue}] {pos}/{len} views  {msg}, ETA ~{left}",
        ) {
            // Computed at each redraw (every 200 ms), so it counts down while views run.
            let style = style.progress_chars("=> ").with_key(
                "left",
                move |_: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                    let eta = lock(&live).eta(Instant::now());
                    let _ = write!(w, "{}", indicatif::HumanDuration(eta));
                },
            );
            bar.set_style(style);
        }
        bar.enable_steady_tick(Duration::from_millis(200));
        Bar { bar, state }
    }

    /// The message, from the state; the caller sets it once the lock is released (a redraw
    /// reads the state for the ETA: holding the lock then would deadlock).
    fn message(s: &State) -> String {
        let running = s.running.iter().filter(|r| r.is_some()).count();
        format!(
            "running {running}, failed {}, skipped {}",
            s.failures, s.skipped,
        )
    }
}

fn lock(m: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Progress for Bar {
    fn begin(&self, keys: &[String], expected_ms: &[u64], workers: usize) {
        let message = {
            let mut s = lock(&self.state);
            s.expected_ms = expected_ms.to_vec();
            s.running = vec![None; keys.len()];
            s.done = vec![false; keys.len()];
            s.workers = workers;
            Bar::message(&s)
        };
        self.bar.set_length(keys.len() as u64);
        self.bar.set_message(message);
    }

    fn started(&self, view: usize) {
        let message = {
            let mut s = lock(&self.state);
            if let Some(r) = s.running.get_mut(view) {
                *r = Some(Instant::now());
            }
            Bar::message(&s)
        };
        self.bar.set_message(message);
    }

    fn finished(&self, view: usize, status: &str) {
        let message = {
            let mut s = lock(&self.state);
            if let Some(r) = s.running.get_mut(view) {
                *r = None;
            }
            if let Some(d) = s.done.get_mut(view) {
                *d = true;
            }
            // As the summary counts them: errors are failures; skipped and cancelled views are
            // not.
            match status {
                "success" => {}
                "error" => s.failures += 1,
                _ => s.skipped += 1,
            }
            Bar::message(&s)
        };
        self.bar.inc(1);
        self.bar.set_message(message);
    }

    fn end(&self) {
        self.bar.finish_and_clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_eta_counts_down_and_spreads_over_the_workers_the_views_can_use() {
        let t0 = Instant::now();
        let mut s = State {
            expected_ms: vec![2_000],
            running: vec![Some(t0)],
            done: vec![false],
            workers: 8,
            ..State::default()
        };
        // One view on eight workers: its own duration, not an eighth of it.
        assert_eq!(s.eta(t0), Duration::from_millis(2_000));
        // Counting down as it runs.
        assert_eq!(
            s.eta(t0 + Duration::from_millis(500)),
            Duration::from_millis(1_500)
        );
        // Four waiting views of 1 s on two workers: 2 s.
        s.expected_ms = vec![1_000; 4];
        s.running = vec![None; 4];
        s.done = vec![false; 4];
        s.workers = 2;
        assert_eq!(s.eta(t0), Duration::from_millis(2_000));
    }
}
