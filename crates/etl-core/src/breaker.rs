//! Circuit breaker that protects a sick database from more work.
//!
//! The breaker guards the database, not one query. A single broken view
//! definition must not stop every other refresh, but a database that drops
//! connections, runs out of memory or disk, or is shutting down should not be
//! hit again and again. For that reason each finished unit of work reports an
//! [`Outcome`], classified elsewhere. Only [`Outcome::DatabaseTrouble`] counts
//! toward opening. [`Outcome::OwnError`] means the database answered, so it
//! neither counts nor proves that the database is healthy.
//!
//! * **Closed**: consecutive `DatabaseTrouble` outcomes are counted, and
//!   reaching `max_failures` opens the breaker. One `Success` breaks the
//!   streak and resets the counter.
//! * **Open**: new work is denied until `reset_after` has passed since
//!   opening. Work admitted before the breaker opened may still finish here.
//!   Its outcomes are ignored. A late success says nothing about the database
//!   *now*, and a late failure is the same sickness that opened the breaker, so
//!   it does not push the reset further out.
//! * **Half-open**: after the wait, exactly one probe is admitted and
//!   everything else is denied until it reports back. Its outcome alone
//!   decides: `DatabaseTrouble` reopens for a fresh `reset_after`, anything else
//!   closes. Outcomes of older, non-probe work are again ignored because they
//!   started before the database was known to be back.
//!
//! The machine is synchronous, does no I/O and reads time only through
//! [`Clock`], so tests can drive it with a fake clock. Moving from open to
//! half-open happens lazily in [`CircuitBreaker::admit`]. Until then,
//! [`CircuitBreaker::state`] reports `Open` even after the wait has passed.
//!
//! Callers must record every ticket exactly once, including when work fails
//! or is cancelled. There is no probe timeout, because a refresh can
//! legitimately run for longer than `reset_after`. So a lost probe ticket
//! leaves the breaker half-open for good.

use std::num::NonZeroU32;
use std::time::{Duration, Instant};

/// Source of time for the breaker. It is injected so that tests control time.
pub trait Clock: Send + Sync {
    fn now(&self) -> Instant;
}

/// Production clock backed by the monotonic [`Instant::now`].
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// How a finished unit of work went, as far as database health is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// The database itself is in trouble: connection lost or refused, too many
    /// connections, out of memory or disk, admin shutdown, timeouts.
    DatabaseTrouble,
    /// The work's own fault, such as a syntax error. The database answered.
    OwnError,
}

/// What [`CircuitBreaker::admit`] decided. Normal and probe admissions carry a
/// [`Ticket`], which the caller hands back to [`CircuitBreaker::record`].
#[must_use = "denied work must not run, and admitted work must be recorded"]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Admitted(Ticket),
    /// Do not start the work. `retry_after` says when asking again makes
    /// sense.
    Denied {
        retry_after: Duration,
    },
}

/// Proof of admission. It tells `record` whether the outcome is the probe's,
/// because only the probe may close a half-open breaker.
#[must_use = "every ticket must be handed back to CircuitBreaker::record"]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    probe: bool,
}

impl Ticket {
    #[must_use]
    pub fn is_probe(&self) -> bool {
        self.probe
    }
}

/// Observable state, for logging and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed { consecutive_failures: u32 },
    Open,
    HalfOpen,
}

/// Internal state. `Open` keeps the instant it opened, which `BreakerState`
/// does not expose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed { consecutive_failures: u32 },
    Open { since: Instant },
    HalfOpen,
}

/// See the [module documentation](self) for the semantics.
#[derive(Debug)]
pub struct CircuitBreaker<C: Clock = SystemClock> {
    max_failures: NonZeroU32,
    reset_after: Duration,
    clock: C,
    state: State,
}

impl<C: Clock> CircuitBreaker<C> {
    pub fn new(max_failures: NonZeroU32, reset_after: Duration, clock: C) -> Self {
        Self {
            max_failures,
            reset_after,
            clock,
            state: State::Closed {
                consecutive_failures: 0,
            },
        }
    }

    /// Asks whether a new unit of work may start now.
    ///
    /// While the probe is in flight, `retry_after` is `reset_after`. How long
    /// the probe will take is unknown. If it fails, the breaker stays shut at
    /// least that long. Using zero instead would make a caller that sleeps for
    /// `retry_after` spin.
    pub fn admit(&mut self) -> Admission {
        match self.state {
            State::Closed { .. } => Admission::Admitted(Ticket { probe: false }),
            State::Open { since } => {
                // Saturating, so that a clock that appears to go backwards
                // (only possible with a custom Clock) means "still waiting"
                // and does not panic.
                let elapsed = self.clock.now().saturating_duration_since(since);
                let remaining = self.reset_after.saturating_sub(elapsed);
                if remaining.is_zero() {
                    self.state = State::HalfOpen;
                    Admission::Admitted(Ticket { probe: true })
                } else {
                    Admission::Denied {
                        retry_after: remaining,
                    }
                }
            }
            State::HalfOpen => Admission::Denied {
                retry_after: self.reset_after,
            },
        }
    }

    /// Reports how a unit of work admitted with `ticket` finished.
    pub fn record(&mut self, ticket: Ticket, outcome: Outcome) {
        match self.state {
            State::Closed {
                consecutive_failures,
            } => match outcome {
                Outcome::Success => {
                    self.state = State::Closed {
                        consecutive_failures: 0,
                    };
                }
                Outcome::DatabaseTrouble => {
                    let failures = consecutive_failures.saturating_add(1);
                    self.state = if failures >= self.max_failures.get() {
                        State::Open {
                            since: self.clock.now(),
                        }
                    } else {
                        State::Closed {
                            consecutive_failures: failures,
                        }
                    };
                }
                Outcome::OwnError => {}
            },
            // Only work from before the breaker opened can report here. Its
            // outcome is stale, so it neither closes the breaker nor extends
            // the wait.
            State::Open { .. } => {}
            State::HalfOpen if ticket.probe => {
                self.state = match outcome {
                    Outcome::DatabaseTrouble => State::Open {
                        since: self.clock.now(),
                    },
                    Outcome::Success | Outcome::OwnError => State::Closed {
                        consecutive_failures: 0,
                    },
                };
            }
            State::HalfOpen => {}
        }
    }

    #[must_use]
    pub fn state(&self) -> BreakerState {
        match self.state {
            State::Closed {
                consecutive_failures,
            } => BreakerState::Closed {
                consecutive_failures,
            },
            State::Open { .. } => BreakerState::Open,
            State::HalfOpen => BreakerState::HalfOpen,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    /// A clock that moves only when the test advances it. The breaker owns a
    /// clone, and the clones share one offset.
    #[derive(Debug, Clone)]
    struct FakeClock {
        base: Instant,
        offset_nanos: Arc<AtomicU64>,
    }

    impl FakeClock {
        fn new() -> Self {
            Self {
                base: Instant::now(),
                offset_nanos: Arc::new(AtomicU64::new(0)),
            }
        }

        fn advance(&self, by: Duration) {
            let nanos = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
            self.offset_nanos.fetch_add(nanos, Ordering::SeqCst);
        }
    }

    impl Clock for FakeClock {
        fn now(&self) -> Instant {
            self.base + Duration::from_nanos(self.offset_nanos.load(Ordering::SeqCst))
        }
    }

    const RESET: Duration = Duration::from_secs(30);

    fn nz(n: u32) -> NonZeroU32 {
        match NonZeroU32::new(n) {
            Some(n) => n,
            None => panic!("test used max_failures = 0"),
        }
    }

    fn breaker(max_failures: u32) -> (CircuitBreaker<FakeClock>, FakeClock) {
        let clock = FakeClock::new();
        (
            CircuitBreaker::new(nz(max_failures), RESET, clock.clone()),
            clock,
        )
    }

    fn admitted<C: Clock>(b: &mut CircuitBreaker<C>) -> Ticket {
        match b.admit() {
            Admission::Admitted(t) => t,
            Admission::Denied { retry_after } => {
                panic!("expected admission, denied with retry_after {retry_after:?}")
            }
        }
    }

    fn denied<C: Clock>(b: &mut CircuitBreaker<C>) -> Duration {
        match b.admit() {
            Admission::Denied { retry_after } => retry_after,
            Admission::Admitted(t) => panic!("expected denial, admitted {t:?}"),
        }
    }

    /// Runs one normal unit of work and records its outcome.
    fn run<C: Clock>(b: &mut CircuitBreaker<C>, outcome: Outcome) {
        let t = admitted(b);
        assert!(!t.is_probe());
        b.record(t, outcome);
    }

    /// Opens the breaker with `max_failures` consecutive failures.
    fn trip(b: &mut CircuitBreaker<FakeClock>, max_failures: u32) {
        for _ in 0..max_failures {
            run(b, Outcome::DatabaseTrouble);
        }
        assert_eq!(b.state(), BreakerState::Open);
    }

    /// Trips the breaker, waits out the reset period and takes the probe.
    fn half_open(max_failures: u32) -> (CircuitBreaker<FakeClock>, FakeClock, Ticket) {
        let (mut b, clock) = breaker(max_failures);
        trip(&mut b, max_failures);
        clock.advance(RESET);
        let probe = admitted(&mut b);
        assert!(probe.is_probe());
        assert_eq!(b.state(), BreakerState::HalfOpen);
        (b, clock, probe)
    }

    #[test]
    fn starts_closed_and_admits_normal_work() {
        let (mut b, _clock) = breaker(3);
        assert_eq!(
            b.state(),
            BreakerState::Closed {
                consecutive_failures: 0
            }
        );
        for _ in 0..10 {
            assert!(!admitted(&mut b).is_probe());
        }
    }

    #[test]
    fn opens_exactly_at_threshold_and_not_before() {
        let (mut b, _clock) = breaker(3);
        run(&mut b, Outcome::DatabaseTrouble);
        assert_eq!(
            b.state(),
            BreakerState::Closed {
                consecutive_failures: 1
            }
        );
        run(&mut b, Outcome::DatabaseTrouble);
        assert_eq!(
            b.state(),
            BreakerState::Closed {
                consecutive_failures: 2
            }
        );
        // One below the threshold, work is still admitted.
        let t = admitted(&mut b);
        b.record(t, Outcome::DatabaseTrouble);
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(denied(&mut b), RESET);
    }

    #[test]
    fn single_failure_opens_when_max_failures_is_one() {
        let (mut b, _clock) = breaker(1);
        run(&mut b, Outcome::DatabaseTrouble);
        assert_eq!(b.state(), BreakerState::Open);
        denied(&mut b);
    }

    #[test]
    fn own_errors_neither_count_nor_reset() {
        let (mut b, _clock) = breaker(3);
        for _ in 0..10 {
            run(&mut b, Outcome::OwnError);
        }
        assert_eq!(
            b.state(),
            BreakerState::Closed {
                consecutive_failures: 0
            }
        );

        run(&mut b, Outcome::DatabaseTrouble);
        run(&mut b, Outcome::DatabaseTrouble);
        run(&mut b, Outcome::OwnError);
        run(&mut b, Outcome::OwnError);
        assert_eq!(
            b.state(),
            BreakerState::Closed {
                consecutive_failures: 2
            }
        );
        // The streak survived the own errors, so one more failure opens.
        run(&mut b, Outcome::DatabaseTrouble);
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[test]
    fn success_resets_the_streak() {
        let (mut b, _clock) = breaker(3);
        run(&mut b, Outcome::DatabaseTrouble);
        run(&mut b, Outcome::DatabaseTrouble);
        run(&mut b, Outcome::Success);
        assert_eq!(
            b.state(),
            BreakerState::Closed {
                consecutive_failures: 0
            }
        );
        run(&mut b, Outcome::DatabaseTrouble);
        run(&mut b, Outcome::DatabaseTrouble);
        assert_eq!(
            b.state(),
            BreakerState::Closed {
                consecutive_failures: 2
            }
        );
        run(&mut b, Outcome::DatabaseTrouble);
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[test]
    fn open_denies_with_remaining_time_until_reset() {
        let (mut b, clock) = breaker(2);
        trip(&mut b, 2);
        assert_eq!(denied(&mut b), RESET);

        clock.advance(Duration::from_secs(10));
        assert_eq!(denied(&mut b), Duration::from_secs(20));

        clock.advance(Duration::from_secs(20) - Duration::from_millis(1));
        assert_eq!(denied(&mut b), Duration::from_millis(1));
        // Denials do not move the breaker out of open.
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[test]
    fn probe_admitted_exactly_once_after_reset_and_others_denied_meanwhile() {
        let (mut b, clock) = breaker(2);
        trip(&mut b, 2);

        clock.advance(RESET);
        // The wait is over, but the transition happens only in admit().
        assert_eq!(b.state(), BreakerState::Open);

        let probe = admitted(&mut b);
        assert!(probe.is_probe());
        assert_eq!(b.state(), BreakerState::HalfOpen);

        for _ in 0..5 {
            assert_eq!(denied(&mut b), RESET);
        }
        // However long the probe takes, no second probe is admitted.
        clock.advance(RESET * 10);
        assert_eq!(denied(&mut b), RESET);
        assert_eq!(b.state(), BreakerState::HalfOpen);

        b.record(probe, Outcome::Success);
        assert!(!admitted(&mut b).is_probe());
    }

    #[test]
    fn probe_comes_after_any_wait_at_least_reset_after() {
        let (mut b, clock) = breaker(1);
        trip(&mut b, 1);
        clock.advance(RESET * 3);
        assert!(admitted(&mut b).is_probe());
    }

    #[test]
    fn probe_failure_reopens_with_a_fresh_reset_period() {
        let (mut b, clock, probe) = half_open(2);

        clock.advance(Duration::from_secs(5));
        b.record(probe, Outcome::DatabaseTrouble);
        assert_eq!(b.state(), BreakerState::Open);
        // The wait counts from the probe's failure, not from the first
        // opening and not from when the probe was admitted.
        assert_eq!(denied(&mut b), RESET);

        clock.advance(RESET - Duration::from_secs(1));
        assert_eq!(denied(&mut b), Duration::from_secs(1));

        clock.advance(Duration::from_secs(1));
        let second_probe = admitted(&mut b);
        assert!(second_probe.is_probe());
        assert_eq!(b.state(), BreakerState::HalfOpen);
    }

    #[test]
    fn probe_success_closes() {
        let (mut b, _clock, probe) = half_open(3);
        b.record(probe, Outcome::Success);
        assert_eq!(
            b.state(),
            BreakerState::Closed {
                consecutive_failures: 0
            }
        );
        // Normal work flows again, and it takes the full threshold to reopen.
        run(&mut b, Outcome::DatabaseTrouble);
        run(&mut b, Outcome::DatabaseTrouble);
        assert_eq!(
            b.state(),
            BreakerState::Closed {
                consecutive_failures: 2
            }
        );
        run(&mut b, Outcome::DatabaseTrouble);
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[test]
    fn probe_own_error_closes_because_the_database_answered() {
        let (mut b, _clock, probe) = half_open(3);
        b.record(probe, Outcome::OwnError);
        assert_eq!(
            b.state(),
            BreakerState::Closed {
                consecutive_failures: 0
            }
        );
        assert!(!admitted(&mut b).is_probe());
    }

    #[test]
    fn late_outcomes_of_pre_open_work_do_not_close_or_extend_open() {
        let (mut b, clock) = breaker(2);
        let early_success = admitted(&mut b);
        let early_failure = admitted(&mut b);
        let early_own_error = admitted(&mut b);
        trip(&mut b, 2);

        clock.advance(Duration::from_secs(10));
        b.record(early_success, Outcome::Success);
        assert_eq!(b.state(), BreakerState::Open);
        b.record(early_own_error, Outcome::OwnError);
        assert_eq!(b.state(), BreakerState::Open);
        b.record(early_failure, Outcome::DatabaseTrouble);
        assert_eq!(b.state(), BreakerState::Open);
        // Still counted from the original opening: 30s - 10s.
        assert_eq!(denied(&mut b), Duration::from_secs(20));

        clock.advance(Duration::from_secs(20));
        assert!(admitted(&mut b).is_probe());
    }

    #[test]
    fn non_probe_outcomes_while_half_open_are_ignored() {
        let (mut b, clock) = breaker(2);
        let early = [admitted(&mut b), admitted(&mut b), admitted(&mut b)];
        trip(&mut b, 2);
        clock.advance(RESET);
        let probe = admitted(&mut b);
        assert!(probe.is_probe());

        b.record(early[0], Outcome::Success);
        assert_eq!(b.state(), BreakerState::HalfOpen);
        b.record(early[1], Outcome::OwnError);
        assert_eq!(b.state(), BreakerState::HalfOpen);
        b.record(early[2], Outcome::DatabaseTrouble);
        assert_eq!(b.state(), BreakerState::HalfOpen);
        // The probe is still considered in flight.
        assert_eq!(denied(&mut b), RESET);

        b.record(probe, Outcome::DatabaseTrouble);
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(denied(&mut b), RESET);
    }

    #[test]
    fn zero_reset_after_probes_on_the_next_admit() {
        let clock = FakeClock::new();
        let mut b = CircuitBreaker::new(nz(1), Duration::ZERO, clock);
        run(&mut b, Outcome::DatabaseTrouble);
        assert_eq!(b.state(), BreakerState::Open);
        assert!(admitted(&mut b).is_probe());
        assert_eq!(denied(&mut b), Duration::ZERO);
    }

    #[test]
    fn works_with_the_default_system_clock() {
        let mut b: CircuitBreaker = CircuitBreaker::new(nz(1), RESET, SystemClock);
        run(&mut b, Outcome::DatabaseTrouble);
        let retry_after = denied(&mut b);
        assert!(retry_after > Duration::ZERO && retry_after <= RESET);
    }
}
