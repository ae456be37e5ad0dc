//! Runs work items with at most `limit` in flight. Whether an item may start is decided at the
//! moment a slot frees up (not when the run is planned), so a circuit breaker consulted by the
//! caller sees every outcome that finished before.

use std::future::Future;
use std::num::NonZeroUsize;

use tokio::task::JoinSet;

/// What the caller decided for one item when its turn came.
pub enum Start<F, R> {
    /// Run this future on a slot of its own.
    Run(F),
    /// Finished without running (skipped): takes no slot.
    Done(R),
}

/// One item's result, or the panic message of the task that ran it.
pub type Finished<K, R> = (K, Result<R, String>);

/// Calls `start` for each item in order when a slot is free and returns every item's result,
/// in completion order. A panicking task is reported as `Err` for its key, never lost.
pub async fn run_bounded<T, K, R, F, S>(
    items: impl IntoIterator<Item = T>,
    limit: NonZeroUsize,
    mut start: S,
) -> Vec<Finished<K, R>>
where
    K: Clone + Send + 'static,
    R: Send + 'static,
    F: Future<Output = R> + Send + 'static,
    S: FnMut(T) -> (K, Start<F, R>),
{
    let mut in_flight: JoinSet<(K, R)> = JoinSet::new();
    let mut keys = std::collections::HashMap::new();
    let mut results = Vec::new();
    for item in items {
        while in_flight.len() >= limit.get() {
            if let Some(done) = in_flight.join_next_with_id().await {
                results.push(collect(done, &mut keys));
            }
        }
        let (key, decision) = start(item);
        match decision {
            Start::Done(r) => results.push((key, Ok(r))),
            Start::Run(fut) => {
                let k = key.clone();
                let handle = in_flight.spawn(async move { (k, fut.await) });
                keys.insert(handle.id(), key);
            }
        }
    }
    while let Some(done) = in_flight.join_next_with_id().await {
        results.push(collect(done, &mut keys));
    }
    results
}

fn collect<K, R>(
    done: Result<(tokio::task::Id, (K, R)), tokio::task::JoinError>,
    keys: &mut std::collections::HashMap<tokio::task::Id, K>,
) -> Finished<K, R>
where
    K: Clone,
{
    match done {
        Ok((id, (key, r))) => {
            keys.remove(&id);
            (key, Ok(r))
        }
        Err(err) => {
            let id = err.id();
            let message = if err.is_panic() {
                let payload = err.into_panic();
                payload
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "task panicked".to_string())
            } else {
                "task was cancelled".to_string()
            };
            match keys.remove(&id) {
                Some(key) => (key, Err(message)),
                // Every spawned task's id is recorded before it can finish, so this cannot happen.
                None => unreachable_key(message),
            }
        }
    }
}

#[cold]
fn unreachable_key<K, R>(message: String) -> Finished<K, R> {
    panic!("executor lost track of a task: {message}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use tokio::sync::Notify;

    #[tokio::test]
    async fn never_more_than_limit_in_flight() {
        let running = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let limit = NonZeroUsize::new(3).unwrap();
        let results = run_bounded(0..20, limit, |i| {
            let running = running.clone();
            let peak = peak.clone();
            (
                i,
                Start::Run(async move {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    tokio::task::yield_now().await;
                    running.fetch_sub(1, Ordering::SeqCst);
                    i * 2
                }),
            )
        })
        .await;
        assert_eq!(results.len(), 20);
        assert!(peak.load(Ordering::SeqCst) <= 3);
        let mut values: Vec<_> = results.into_iter().map(|(_, r)| r.unwrap()).collect();
        values.sort();
        assert_eq!(values, (0..20).map(|i| i * 2).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_slow_item_does_not_hold_back_the_others() {
        // Item 0 blocks until every other item has finished: with 2 slots this only completes
        // if the other slot keeps taking new items while item 0 is still running.
        let release = Arc::new(Notify::new());
        let done = Arc::new(AtomicUsize::new(0));
        let limit = NonZeroUsize::new(2).unwrap();
        let results = run_bounded(0..10, limit, |i| {
            let release = release.clone();
            let done = done.clone();
            (
                i,
                Start::Run(async move {
                    if i == 0 {
                        release.notified().await;
                    } else if done.fetch_add(1, Ordering::SeqCst) + 1 == 9 {
                        release.notify_one();
                    }
                }),
            )
        })
        .await;
        assert_eq!(results.len(), 10);
        assert_eq!(results.last().map(|(k, _)| *k), Some(0));
    }

    #[tokio::test]
    async fn skipped_items_take_no_slot_and_panics_are_reported() {
        let limit = NonZeroUsize::new(1).unwrap();
        let results = run_bounded(0..4, limit, |i| {
            if i % 2 == 0 {
                (i, Start::Done(-1))
            } else {
                (
                    i,
                    Start::Run(async move {
                        if i == 3 {
                            panic!("boom {i}");
                        }
                        i
                    }),
                )
            }
        })
        .await;
        let mut by_key: Vec<_> = results.into_iter().collect();
        by_key.sort_by_key(|(k, _)| *k);
        assert_eq!(by_key[0].1, Ok(-1));
        assert_eq!(by_key[1].1, Ok(1));
        assert_eq!(by_key[2].1, Ok(-1));
        assert_eq!(by_key[3].1, Err("boom 3".to_string()));
    }
}
