//! A circuit breaker with count- or time-based sliding windows.
//!
//! - **Closed**: calls run; outcomes go into the window. Once it holds
//!   `minimum_calls`, a failure rate or slow-call rate at or above its threshold opens
//!   the breaker.
//! - **Open**: calls are refused with [`CallNotPermitted`] and a `retry_after` hint until
//!   the open wait (fixed or backing off) has passed; the next call then moves it to
//!   half-open.
//! - **Half-open**: `half_open_permits` trial calls run; when they have all finished,
//!   the breaker closes (rates below thresholds) or opens again. Trials still out after
//!   `max_half_open` (hung calls) open it again instead of keeping it half-open forever.
//! - A permit dropped without a result (a call abandoned by a timeout or cancellation
//!   outside the breaker) counts as a failure by default, so a timeout layered outside
//!   the breaker does not hide hung calls from it.
//! - Recovery: each automatic close after an outage records how long the breaker was
//!   open or half-open in the histogram `resilience_breaker_recovery_seconds{breaker}`
//!   (MTTR per dependency), beside `resilience_breaker_transitions_total`.
//! - Manual states: **disabled** (always run, record nothing), **forced open** (refuse
//!   everything), **metrics only** (record, never open).
//!
//! The closed path is lock-free and allocates nothing: the state is one atomic word
//! (state and generation), a permit is a stack value, and the windows are atomics.
//! Outcomes recorded by a permit from an earlier generation are ignored, so a slow call
//! that started before a transition cannot skew the new state.

mod config;
mod error;
mod layer;
mod permit;
mod state;
mod window;

use std::fmt;
use std::future::Future;
use std::ops::Deref;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

pub use config::{
    CircuitBreakerConfig, CircuitBreakerConfigBuilder, ConfigError, OpenWait, SlidingWindow,
};
pub use error::{BreakerError, CallNotPermitted};
pub use layer::{
    ByErrorClass, CircuitBreakerLayer, CircuitBreakerService, ClassifyOutcome, ResponseFuture,
};
pub use permit::{OwnedPermit, Permit, PermitOf};
pub use state::{State, StateChange};

use crate::classify::{Classify, ErrorClass};
use state::{Trials, generation_tag, word};
use window::{Counts, Window};

/// How a finished call counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// It worked.
    Success,
    /// It failed in a way that says the dependency is unwell.
    Failure,
    /// It does not count either way (e.g. the caller's own bad request).
    Ignored,
}

impl Outcome {
    /// The default classification: `Ok` is a success; transient and throttled errors are
    /// failures; permanent errors are ignored (the dependency answered).
    pub fn of<T, E: Classify>(result: &Result<T, E>) -> Outcome {
        match result {
            Ok(_) => Outcome::Success,
            Err(e) => match e.class() {
                ErrorClass::Permanent => Outcome::Ignored,
                _ => Outcome::Failure,
            },
        }
    }
}

/// What the breaker looks like now.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub struct BreakerMetrics {
    /// The state.
    pub state: State,
    /// Calls in the window (closed), or trial calls finished (half-open).
    pub calls: u32,
    /// Failed calls among them.
    pub failed_calls: u32,
    /// Slow calls among them.
    pub slow_calls: u32,
    /// Failure rate in percent.
    pub failure_rate: f64,
    /// Slow-call rate in percent.
    pub slow_call_rate: f64,
}

/// A circuit breaker. Share it with `Arc`; every method takes `&self`.
///
/// ```
/// use std::time::Duration;
/// use keel_resilience::breaker::{BreakerError, CircuitBreaker, CircuitBreakerConfig, State};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let config = CircuitBreakerConfig::builder("inventory")
///     .minimum_calls(4)
///     .build()
///     .unwrap();
/// let breaker = CircuitBreaker::new(config);
/// for _ in 0..4 {
///     let failed: Result<(), _> = breaker
///         .call(|| async { Err(std::io::Error::from(std::io::ErrorKind::TimedOut)) })
///         .await;
///     assert!(matches!(failed, Err(BreakerError::Inner(_))));
/// }
/// assert_eq!(breaker.state(), State::Open);
/// let refused = breaker.call(|| async { Ok::<_, std::io::Error>(()) }).await;
/// let Err(BreakerError::Rejected(refused)) = refused else { panic!() };
/// let wait = refused.retry_after().unwrap(); // the 30 s open wait, less time passed
/// assert!(wait <= Duration::from_secs(30) && wait > Duration::from_secs(29));
/// # }
/// ```
pub struct CircuitBreaker {
    config: CircuitBreakerConfig,
    /// Generation, half-open permits issued, and state, in one word (see `word`).
    word: AtomicU64,
    window: Window,
    base: Instant,
    open_until: AtomicU64,
    consecutive_opens: AtomicU32,
    /// Half-open trial results, tagged with the generation they belong to (see `Trials`).
    trials: AtomicU64,
    /// When the newest half-open trial permit was issued (ns since `base`), stamped
    /// before the permit is published.
    last_trial: AtomicU64,
    /// When the current outage began: the last move from closed to open (ns since `base`).
    outage_since: AtomicU64,
    rejected: metrics::Counter,
    recovery: metrics::Histogram,
}

/// An open, half-open or forced-open breaker is kept through a
/// [`KeyedRegistry`](crate::keyed::KeyedRegistry)'s size-based eviction.
impl crate::keyed::Retain for CircuitBreaker {
    fn retain(&self) -> bool {
        matches!(
            self.state(),
            State::Open | State::HalfOpen | State::ForcedOpen
        )
    }
}

impl fmt::Debug for CircuitBreaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("name", &self.config.name)
            .field("state", &self.state())
            .finish_non_exhaustive()
    }
}

impl CircuitBreaker {
    /// A breaker, closed.
    #[must_use]
    pub fn new(config: CircuitBreakerConfig) -> Self {
        let rejected = metrics::counter!("resilience_breaker_rejected_total", "breaker" => config.name.clone());
        let recovery = metrics::histogram!("resilience_breaker_recovery_seconds", "breaker" => config.name.clone());
        CircuitBreaker {
            window: Window::new(config.window),
            config,
            word: AtomicU64::new(State::Closed.bits()),
            base: Instant::now(),
            open_until: AtomicU64::new(0),
            consecutive_opens: AtomicU32::new(0),
            trials: AtomicU64::new(u64::MAX),
            last_trial: AtomicU64::new(0),
            outage_since: AtomicU64::new(0),
            rejected,
            recovery,
        }
    }

    /// The breaker's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &CircuitBreakerConfig {
        &self.config
    }

    /// The current state. An open breaker whose wait has passed still reads `Open`
    /// until the next call moves it to half-open.
    #[must_use]
    pub fn state(&self) -> State {
        State::from_bits(self.word.load(Ordering::Acquire))
    }

    fn now(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

impl CircuitBreaker {
    /// The state and the window's counts now.
    #[must_use]
    pub fn metrics(&self) -> BreakerMetrics {
        let state = self.state();
        let current = self.word.load(Ordering::Acquire);
        let counts = if state == State::HalfOpen {
            let trials = Trials::unpack(self.trials.load(Ordering::Acquire));
            if trials.generation == generation_tag(current) {
                trials.counts()
            } else {
                Counts::default()
            }
        } else {
            self.window.counts(self.now())
        };
        BreakerMetrics {
            state,
            calls: counts.calls,
            failed_calls: counts.failures,
            slow_calls: counts.slow,
            failure_rate: counts.failure_rate(),
            slow_call_rate: counts.slow_rate(),
        }
    }

    /// Runs `call` if permitted and records its outcome with [`Outcome::of`].
    ///
    /// # Errors
    /// [`BreakerError::Rejected`] when refused, [`BreakerError::Inner`] when the call
    /// failed.
    pub async fn call<F, Fut, T, E>(&self, call: F) -> Result<T, BreakerError<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: Classify,
    {
        self.call_with(Outcome::of, call).await
    }

    /// Runs `call` if permitted and records the outcome `classify` gives its result.
    ///
    /// # Errors
    /// As [`call`](Self::call).
    pub async fn call_with<F, Fut, T, E, C>(
        &self,
        classify: C,
        call: F,
    ) -> Result<T, BreakerError<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        C: FnOnce(&Result<T, E>) -> Outcome,
    {
        let permit = self.try_acquire().map_err(BreakerError::Rejected)?;
        let result = call().await;
        permit.record(classify(&result));
        result.map_err(BreakerError::Inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_half_open_state_is_not_judged_by_the_time_of_the_state_before_it() {
        // Review: `transition` published the new state word first and stamped
        // `state_since` after, and half-open was judged by that stamp. A call that found
        // every trial permit out in between read the stamp of the state before (the
        // opening, an open wait ago): with an open wait of at least `max_half_open` it
        // reopened a breaker half-open for nanoseconds.
        let b = CircuitBreaker::new(
            CircuitBreakerConfig::builder("t")
                .minimum_calls(1)
                .half_open_permits(1)
                .open_wait(OpenWait::Fixed(Duration::from_secs(120)))
                .max_half_open(Duration::from_secs(60))
                .build()
                .unwrap(),
        );
        b.try_acquire().unwrap().record(Outcome::Failure);
        assert_eq!(b.state(), State::Open);
        tokio::time::advance(Duration::from_secs(120)).await;
        // Thread A wins the move to half-open: its compare-and-swap of the word is
        // visible, its stamp of the time not yet.
        let open = b.word.load(Ordering::Acquire);
        let half_open =
            ((word::generation(open) + 1) << word::GENERATION_SHIFT) | State::HalfOpen.bits();
        b.word.store(half_open, Ordering::Release);
        // Thread B takes the only trial permit; thread C finds every permit out.
        let trial = b.try_acquire().unwrap();
        let refused = b.try_acquire().unwrap_err();
        assert_eq!(
            refused.state(),
            State::HalfOpen,
            "a trial a few nanoseconds old is not hung"
        );
        assert_eq!(refused.retry_after(), Some(Duration::from_secs(60)));
        trial.record(Outcome::Success);
        assert_eq!(b.state(), State::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_reopening_that_lost_the_race_does_not_change_the_open_wait() {
        // Review: thread A finds every trial permit out past `max_half_open` and calls
        // `open`; meanwhile thread B's failed trial reopens the breaker first and bumps
        // the backoff count. A's `open` stored its `open_until` (from the bumped count,
        // a doubled wait) before its transition failed: the breaker stayed open 40 s
        // where the backoff said 20 s.
        let b = CircuitBreaker::new(
            CircuitBreakerConfig::builder("t")
                .minimum_calls(1)
                .half_open_permits(1)
                .open_wait(OpenWait::Backoff {
                    initial: Duration::from_secs(10),
                    multiplier: 2.0,
                    max: Duration::from_secs(100),
                })
                .max_half_open(Duration::from_secs(5))
                .build()
                .unwrap(),
        );
        b.try_acquire().unwrap().record(Outcome::Failure);
        tokio::time::advance(Duration::from_secs(10)).await;
        let trial = b.try_acquire().unwrap();
        tokio::time::advance(Duration::from_secs(5)).await;
        // A: every permit out for `max_half_open`; it is about to open again.
        let seen_by_a = b.word.load(Ordering::Acquire);
        // B: its trial fails first; open again for the second wait, 20 s.
        trial.record(Outcome::Failure);
        assert_eq!(b.state(), State::Open);
        // A goes on.
        b.open(seen_by_a, Counts::default());
        let refused = b.try_acquire().unwrap_err();
        assert_eq!(refused.retry_after(), Some(Duration::from_secs(20)));
    }
}
