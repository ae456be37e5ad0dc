//! The live progress bar of the refresh jobs, on stderr when it is a terminal.

use std::sync::Mutex;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::processors::run::Progress;

pub struct Bar {
    bar: ProgressBar,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    expected_ms: Vec<u64>,
    running: Vec<bool>,
    done: Vec<bool>,
    failures: usize,
    skipped: usize,
    workers: usize,
}

impl Default for Bar {
    fn default() -> Bar {
        Bar::new()
    }
}

impl Bar {
    pub fn new() -> Bar {
        let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
        if let Ok(style) = ProgressStyle::with_template(
            "{elapsed_precise} [{bar:30.cyan/blue}] {pos}/{len} views  {msg}",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.enable_steady_tick(Duration::from_millis(200));
        Bar {
            bar,
            state: Mutex::new(State::default()),
        }
    }

    fn update(&self, s: &State) {
        let running = s.running.iter().filter(|r| **r).count();
        let left: u64 = s
            .expected_ms
            .iter()
            .zip(&s.done)
            .filter(|(_, d)| !**d)
            .map(|(ms, _)| *ms)
            .sum();
        let eta = left / s.workers.max(1) as u64;
        self.bar.set_message(format!(
            "running {running}, failed {}, skipped {}, ETA ~{}",
            s.failures,
            s.skipped,
            indicatif::HumanDuration(Duration::from_millis(eta))
        ));
    }
}

fn lock(m: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Progress for Bar {
    fn begin(&self, keys: &[String], expected_ms: &[u64], workers: usize) {
        let mut s = lock(&self.state);
        s.expected_ms = expected_ms.to_vec();
        s.running = vec![false; keys.len()];
        s.done = vec![false; keys.len()];
        s.workers = workers;
        self.bar.set_length(keys.len() as u64);
        self.update(&s);
    }

    fn started(&self, view: usize) {
        let mut s = lock(&self.state);
        if let Some(r) = s.running.get_mut(view) {
            *r = true;
        }
        self.update(&s);
    }

    fn finished(&self, view: usize, status: &str) {
        let mut s = lock(&self.state);
        if let Some(r) = s.running.get_mut(view) {
            *r = false;
        }
        if let Some(d) = s.done.get_mut(view) {
            *d = true;
        }
        // As the summary counts them: errors are failures; skipped and cancelled views are not.
        match status {
            "success" => {}
            "error" => s.failures += 1,
            _ => s.skipped += 1,
        }
        self.bar.inc(1);
        self.update(&s);
    }

    fn end(&self) {
        self.bar.finish_and_clear();
    }
}
