//! The bounded parallel executor: work items with dependencies, at most `limit` in flight, an
//! item started only after all its upstreams succeeded, and among the ready items the one with
//! the highest priority (for instance the longest remaining path) first. When an item fails,
//! every item downstream of it is skipped, naming the failed one. Whether an item may start is
//! decided when a slot frees up (not when the run is planned), so a circuit breaker consulted by
//! the caller sees every outcome that finished before.
//!
//! [`Scheduler`] is the pure state machine; [`run_graph`] drives it with tokio tasks and
//! [`simulate`] predicts a run's wall time from expected durations.

use std::collections::BinaryHeap;
use std::future::Future;
use std::num::NonZeroUsize;

use tokio::task::JoinSet;

/// What the caller decided for one item when its turn came.
pub enum Start<F, R> {
    /// Run this future on a slot of its own.
    Run(F),
    /// Finished without running (skipped, invalid): takes no slot.
    Done(R),
}

pub(crate) fn panic_message(err: tokio::task::JoinError) -> String {
    if err.is_panic() {
        let payload = err.into_panic();
        payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "task panicked".to_string())
    } else {
        "task was cancelled".to_string()
    }
}

/// Items `0..n`; `upstream[i]` lists what `i` waits for. Must be acyclic: the caller reports
/// and removes cycles before scheduling.
#[derive(Debug, Clone, Default)]
pub struct Graph {
    pub upstream: Vec<Vec<usize>>,
}

impl Graph {
    pub fn len(&self) -> usize {
        self.upstream.len()
    }

    pub fn is_empty(&self) -> bool {
        self.upstream.is_empty()
    }

    pub fn downstream(&self) -> Vec<Vec<usize>> {
        let mut down = vec![Vec::new(); self.len()];
        for (i, ups) in self.upstream.iter().enumerate() {
            for &u in ups {
                if u < down.len() && !down[u].contains(&i) {
                    down[u].push(i);
                }
            }
        }
        down
    }

    /// Each item's weight plus the heaviest path below it: what is left of the run once the
    /// item starts, if nothing else held it back.
    pub fn remaining_path(&self, weight: &[u64]) -> Vec<u64> {
        let down = self.downstream();
        let mut memo: Vec<Option<u64>> = vec![None; self.len()];
        // Iterative post-order: deep chains must not overflow the stack.
        for start in 0..self.len() {
            let mut stack = vec![(start, false)];
            while let Some((i, expanded)) = stack.pop() {
                if memo[i].is_some() {
                    continue;
                }
                if expanded {
                    let below = down[i].iter().filter_map(|&d| memo[d]).max().unwrap_or(0);
                    memo[i] = Some(weight.get(i).copied().unwrap_or(0).saturating_add(below));
                } else {
                    stack.push((i, true));
                    stack.extend(
                        down[i]
                            .iter()
                            .filter(|&&d| memo[d].is_none())
                            .map(|&d| (d, false)),
                    );
                }
            }
        }
        memo.into_iter().map(Option::unwrap_or_default).collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Waiting,
    Ready,
    Running,
    Succeeded,
    Failed,
    Skipped,
}

/// The pure scheduling state.
#[derive(Debug)]
pub struct Scheduler {
    upstream: Vec<Vec<usize>>,
    downstream: Vec<Vec<usize>>,
    waiting_on: Vec<usize>,
    state: Vec<State>,
    priority: Vec<u64>,
    ready: BinaryHeap<(u64, std::cmp::Reverse<usize>)>,
}

impl Scheduler {
    pub fn new(graph: &Graph, priority: Vec<u64>) -> Scheduler {
        let n = graph.len();
        let waiting_on: Vec<usize> = graph.upstream.iter().map(Vec::len).collect();
        let mut s = Scheduler {
            upstream: graph.upstream.clone(),
            downstream: graph.downstream(),
            waiting_on,
            state: vec![State::Waiting; n],
            priority,
            ready: BinaryHeap::new(),
        };
        for i in 0..n {
            if s.waiting_on[i] == 0 {
                s.make_ready(i);
            }
        }
        s
    }

    fn make_ready(&mut self, i: usize) {
        self.state[i] = State::Ready;
        let p = self.priority.get(i).copied().unwrap_or(0);
        self.ready.push((p, std::cmp::Reverse(i)));
    }

    /// The ready item to start now: highest priority, then lowest index.
    pub fn start_next(&mut self) -> Option<usize> {
        while let Some((_, std::cmp::Reverse(i))) = self.ready.pop() {
            if self.state[i] == State::Ready {
                self.state[i] = State::Running;
                return Some(i);
            }
        }
        None
    }

    /// Records that `i` finished. On failure returns every item now skipped, each with the
    /// failed item it is skipped for.
    pub fn finish(&mut self, i: usize, succeeded: bool) -> Vec<(usize, usize)> {
        if succeeded {
            self.state[i] = State::Succeeded;
            for d in self.downstream[i].clone() {
                self.waiting_on[d] = self.waiting_on[d].saturating_sub(1);
                if self.waiting_on[d] == 0 && self.state[d] == State::Waiting {
                    self.make_ready(d);
                }
            }
            return Vec::new();
        }
        self.state[i] = State::Failed;
        let mut skipped = Vec::new();
        let mut stack = self.downstream[i].clone();
        while let Some(d) = stack.pop() {
            if matches!(self.state[d], State::Waiting | State::Ready) {
                self.state[d] = State::Skipped;
                skipped.push((d, i));
                stack.extend(self.downstream[d].iter().copied());
            }
        }
        skipped.sort_unstable();
        skipped
    }

    pub fn upstream(&self, i: usize) -> &[usize] {
        &self.upstream[i]
    }

    /// Nothing is ready, running or waiting.
    pub fn is_done(&self) -> bool {
        self.state
            .iter()
            .all(|s| matches!(s, State::Succeeded | State::Failed | State::Skipped))
    }
}

/// One item's result, or the panic message of the task that ran it.
pub type Finished<R> = (usize, Result<R, String>);

/// Runs the graph: `start(i)` when `i` is ready and a slot is free; `succeeded` tells whether a
/// result lets the downstream items run; `skip(i, failed)` makes the result of an item skipped
/// because `failed` did not succeed. Every item gets exactly one result. Before each start,
/// `pace(started_so_far)` is awaited: the caller's throttle.
pub async fn run_graph<R, F, S, K, P, PF>(
    graph: &Graph,
    priority: Vec<u64>,
    limit: NonZeroUsize,
    mut start: S,
    succeeded: impl Fn(&R) -> bool,
    mut skip: K,
    mut pace: P,
) -> Vec<Finished<R>>
where
    R: Send + 'static,
    F: Future<Output = R> + Send + 'static,
    S: FnMut(usize) -> Start<F, R>,
    K: FnMut(usize, usize) -> R,
    P: FnMut(usize) -> PF,
    PF: Future<Output = ()>,
{
    let mut started = 0usize;
    let mut sched = Scheduler::new(graph, priority);
    let mut in_flight: JoinSet<(usize, R)> = JoinSet::new();
    let mut ids = std::collections::HashMap::new();
    let mut results = Vec::with_capacity(graph.len());
    loop {
        // Start what may start; items finished without running can make others ready.
        while in_flight.len() < limit.get() {
            let Some(i) = sched.start_next() else { break };
            pace(started).await;
            started += 1;
            match start(i) {
                Start::Done(r) => {
                    let ok = succeeded(&r);
                    results.push((i, Ok(r)));
                    for (d, failed) in sched.finish(i, ok) {
                        results.push((d, Ok(skip(d, failed))));
                    }
                }
                Start::Run(fut) => {
                    let handle = in_flight.spawn(async move { (i, fut.await) });
                    ids.insert(handle.id(), i);
                }
            }
        }
        let Some(done) = in_flight.join_next_with_id().await else {
            if sched.is_done() {
                break;
            }
            // Nothing runs and nothing is ready, yet items wait: only a cycle does that.
            break;
        };
        let (i, outcome) = match done {
            Ok((id, (i, r))) => {
                ids.remove(&id);
                (i, Ok(r))
            }
            Err(err) => {
                let i = ids.remove(&err.id()).unwrap_or(usize::MAX);
                (i, Err(panic_message(err)))
            }
        };
        if i == usize::MAX {
            continue;
        }
        let ok = outcome.as_ref().is_ok_and(&succeeded);
        results.push((i, outcome));
        for (d, failed) in sched.finish(i, ok) {
            results.push((d, Ok(skip(d, failed))));
        }
    }
    results
}

/// The wall time a run would take with `limit` workers if every item took its expected
/// duration and the scheduler started them as [`run_graph`] does.
pub fn simulate(graph: &Graph, durations: &[u64], limit: NonZeroUsize) -> u64 {
    let priority = graph.remaining_path(durations);
    let mut sched = Scheduler::new(graph, priority);
    let mut now = 0u64;
    // (finish time, item) of what runs.
    let mut running: Vec<(u64, usize)> = Vec::new();
    loop {
        while running.len() < limit.get() {
            match sched.start_next() {
                Some(i) => running.push((now + durations.get(i).copied().unwrap_or(0), i)),
                None => break,
            }
        }
        let Some(pos) = running
            .iter()
            .enumerate()
            .min_by_key(|(_, (t, i))| (*t, *i))
            .map(|(p, _)| p)
        else {
            return now;
        };
        let (t, i) = running.swap_remove(pos);
        now = t;
        sched.finish(i, true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    fn graph(edges: &[(usize, usize)], n: usize) -> Graph {
        // (downstream, upstream)
        let mut upstream = vec![Vec::new(); n];
        for &(d, u) in edges {
            upstream[d].push(u);
        }
        Graph { upstream }
    }

    #[test]
    fn remaining_path_weighs_the_longest_chain_below() {
        // 0 → 1 → 2, and 3 alone
        let g = graph(&[(1, 0), (2, 1)], 4);
        assert_eq!(g.remaining_path(&[1, 2, 3, 10]), vec![6, 5, 3, 10]);
    }

    #[test]
    fn ready_items_start_by_priority_and_only_after_their_upstreams() {
        let g = graph(&[(2, 0), (2, 1)], 4);
        let mut s = Scheduler::new(&g, vec![1, 5, 9, 3]);
        assert_eq!(s.start_next(), Some(1));
        assert_eq!(s.start_next(), Some(3));
        assert_eq!(s.start_next(), Some(0));
        assert_eq!(s.start_next(), None, "2 waits for 0 and 1");
        s.finish(1, true);
        assert_eq!(s.start_next(), None, "2 still waits for 0");
        s.finish(0, true);
        assert_eq!(s.start_next(), Some(2));
        s.finish(2, true);
        s.finish(3, true);
        assert!(s.is_done());
    }

    #[test]
    fn a_failure_skips_everything_downstream_naming_the_failed_item() {
        // 0 → 1 → 2, 0 → 3, and 4 independent
        let g = graph(&[(1, 0), (2, 1), (3, 0)], 5);
        let mut s = Scheduler::new(&g, vec![0; 5]);
        assert_eq!(s.start_next(), Some(0));
        assert_eq!(s.start_next(), Some(4));
        assert_eq!(s.finish(0, false), vec![(1, 0), (2, 0), (3, 0)]);
        assert_eq!(s.start_next(), None);
        s.finish(4, true);
        assert!(s.is_done());
    }

    #[test]
    fn simulation_is_the_list_schedule() {
        // W3-like: four long items last in order, many short ones, 2 workers.
        let g = graph(&[], 6);
        let d = [1, 1, 1, 1, 4, 4];
        assert_eq!(simulate(&g, &d, NonZeroUsize::new(2).unwrap()), 6);
        // A chain cannot be parallelised.
        let chain = graph(&[(1, 0), (2, 1)], 3);
        assert_eq!(
            simulate(&chain, &[2, 2, 2], NonZeroUsize::new(8).unwrap()),
            6
        );
    }

    #[tokio::test]
    async fn run_graph_respects_order_limits_and_skips() {
        // 0 → 1, 2 fails → 3 skipped, 4 alone
        let g = graph(&[(1, 0), (3, 2)], 5);
        let log = Arc::new(Mutex::new(Vec::new()));
        let results = run_graph(
            &g,
            vec![0; 5],
            NonZeroUsize::new(2).unwrap(),
            |i| {
                let log = log.clone();
                Start::Run(async move {
                    log.lock().unwrap().push(i);
                    i != 2
                })
            },
            |ok: &bool| *ok,
            |_, _| false,
            |_| async {},
        )
        .await;
        let mut by_item: Vec<_> = results.iter().map(|(i, r)| (*i, r.clone())).collect();
        by_item.sort_by_key(|(i, _)| *i);
        assert_eq!(
            by_item,
            vec![
                (0, Ok(true)),
                (1, Ok(true)),
                (2, Ok(false)),
                (3, Ok(false)),
                (4, Ok(true))
            ]
        );
        let started = log.lock().unwrap().clone();
        assert!(!started.contains(&3), "a skipped item never starts");
        let pos = |x| started.iter().position(|&y| y == x).unwrap();
        assert!(pos(0) < pos(1));
    }
    #[tokio::test]
    async fn never_more_than_limit_in_flight() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let running = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let results = run_graph(
            &graph(&[], 20),
            vec![0; 20],
            NonZeroUsize::new(3).unwrap(),
            |i| {
                let (running, peak) = (running.clone(), peak.clone());
                Start::Run(async move {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    tokio::task::yield_now().await;
                    running.fetch_sub(1, Ordering::SeqCst);
                    i * 2
                })
            },
            |_| true,
            |_, _| 0,
            |_| async {},
        )
        .await;
        assert_eq!(results.len(), 20);
        assert!(peak.load(Ordering::SeqCst) <= 3);
        let mut values: Vec<_> = results.into_iter().map(|(_, r)| r.unwrap()).collect();
        values.sort();
        assert_eq!(values, (0..20).map(|i| i * 2).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_slow_item_does_not_hold_back_the_others() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        // Item 0 blocks until every other item has finished: with 2 slots this only completes
        // if the other slot keeps taking new items while item 0 is still running.
        let release = Arc::new(tokio::sync::Notify::new());
        let done = Arc::new(AtomicUsize::new(0));
        let results = run_graph(
            &graph(&[], 10),
            vec![0; 10],
            NonZeroUsize::new(2).unwrap(),
            |i| {
                let (release, done) = (release.clone(), done.clone());
                Start::Run(async move {
                    if i == 0 {
                        release.notified().await;
                    } else if done.fetch_add(1, Ordering::SeqCst) + 1 == 9 {
                        release.notify_one();
                    }
                })
            },
            |_| true,
            |_, _| (),
            |_| async {},
        )
        .await;
        assert_eq!(results.len(), 10);
        assert_eq!(results.last().map(|(k, _)| *k), Some(0));
    }

    #[tokio::test]
    async fn finished_without_running_and_panics_are_reported_and_skip_downstream() {
        // 1 → 2: 1 panics, so 2 is skipped; 0 is done without running.
        let results = run_graph(
            &graph(&[(2, 1)], 3),
            vec![0; 3],
            NonZeroUsize::new(1).unwrap(),
            |i| {
                if i == 0 {
                    Start::Done(-1)
                } else {
                    Start::Run(async move {
                        if i == 1 {
                            panic!("boom {i}");
                        }
                        i as i32
                    })
                }
            },
            |r: &i32| *r >= 0,
            |_, failed| -10 - failed as i32,
            |_| async {},
        )
        .await;
        let mut by_key: Vec<_> = results.into_iter().collect();
        by_key.sort_by_key(|(k, _)| *k);
        assert_eq!(by_key[0].1, Ok(-1));
        assert_eq!(by_key[1].1, Err("boom 1".to_string()));
        assert_eq!(by_key[2].1, Ok(-11));
    }
}
