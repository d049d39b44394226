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

use crate::classify::{Classify, ErrorClass};
use window::{Counts, Window};

/// A breaker's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum State {
    /// Calls run and are recorded.
    Closed,
    /// Calls are refused until the open wait has passed.
    Open,
    /// A limited number of trial calls run.
    HalfOpen,
    /// Calls run and nothing is recorded.
    Disabled,
    /// Every call is refused.
    ForcedOpen,
    /// Calls run and are recorded, but the breaker never opens.
    MetricsOnly,
}

impl State {
    fn from_bits(bits: u64) -> State {
        match bits & 0b111 {
            0 => State::Closed,
            1 => State::Open,
            2 => State::HalfOpen,
            3 => State::Disabled,
            4 => State::ForcedOpen,
            _ => State::MetricsOnly,
        }
    }

    fn bits(self) -> u64 {
        match self {
            State::Closed => 0,
            State::Open => 1,
            State::HalfOpen => 2,
            State::Disabled => 3,
            State::ForcedOpen => 4,
            State::MetricsOnly => 5,
        }
    }

    /// The lowercase name used in events and metrics.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
            State::Disabled => "disabled",
            State::ForcedOpen => "forced_open",
            State::MetricsOnly => "metrics_only",
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A state change, as given to listeners and logged.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct StateChange {
    /// The breaker's name.
    pub breaker: String,
    /// The state before.
    pub from: State,
    /// The state after.
    pub to: State,
    /// The failure rate (percent) that caused it, for automatic changes.
    pub failure_rate: f64,
    /// The slow-call rate (percent) that caused it, for automatic changes.
    pub slow_call_rate: f64,
}

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

/// Leave to run one call, from [`CircuitBreaker::try_acquire`] ([`Permit`], borrowing
/// the breaker) or [`CircuitBreaker::try_acquire_owned`] ([`OwnedPermit`], holding an
/// `Arc` so it can live in a `'static` future). Report how the call went with
/// [`record`](Self::record); dropping it unrecorded (an abandoned call: a timeout or
/// a cancellation outside the breaker) counts as the configured
/// [`abandoned_calls`](CircuitBreakerConfigBuilder::abandoned_calls) outcome, a failure
/// by default.
#[must_use = "a permit must be recorded, or the call does not count"]
pub struct PermitOf<B: Deref<Target = CircuitBreaker>> {
    breaker: B,
    /// The state and generation the permit was issued in.
    phase: u64,
    /// When the call started, if slow calls are detected.
    start: Option<Instant>,
    recorded: bool,
}

/// A permit borrowing its breaker.
pub type Permit<'a> = PermitOf<&'a CircuitBreaker>;

/// A permit owning a reference to its breaker.
pub type OwnedPermit = PermitOf<Arc<CircuitBreaker>>;

impl<B: Deref<Target = CircuitBreaker>> fmt::Debug for PermitOf<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("breaker", &self.breaker.name())
            .field("state", &State::from_bits(self.phase))
            .finish_non_exhaustive()
    }
}

impl<B: Deref<Target = CircuitBreaker>> PermitOf<B> {
    /// Records the call's outcome; its duration is measured from the permit.
    #[inline(always)]
    pub fn record(mut self, outcome: Outcome) {
        self.recorded = true;
        let slow = self.breaker.is_slow(self.start);
        self.breaker.on_result(self.phase, outcome, slow);
    }
}

impl<B: Deref<Target = CircuitBreaker>> Drop for PermitOf<B> {
    #[inline]
    fn drop(&mut self) {
        if !self.recorded {
            self.breaker.on_abandoned(self.phase, self.start);
        }
    }
}

/// The state word: bits 0–2 the state, bits 3–22 the half-open permits issued in this
/// generation, bits 23–63 the generation (bumped by every transition). Taking a trial
/// permit and changing state are each one compare-and-swap on it.
mod word {
    pub(super) const ISSUED_SHIFT: u64 = 3;
    pub(super) const ISSUED_MASK: u64 = ((1 << 20) - 1) << ISSUED_SHIFT;
    pub(super) const GENERATION_SHIFT: u64 = 23;

    /// State and generation, without the permit count.
    pub(super) fn phase(word: u64) -> u64 {
        word & !ISSUED_MASK
    }

    pub(super) fn issued(word: u64) -> u64 {
        (word & ISSUED_MASK) >> ISSUED_SHIFT
    }

    pub(super) fn generation(word: u64) -> u64 {
        word >> GENERATION_SHIFT
    }
}

/// Half-open trial results in one word: the generation's low 16 bits, then finished,
/// failed and slow trials, 16 bits each (permits are capped at 10 000). A result from a
/// new generation starts the tally from zero, so nothing needs resetting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Trials {
    generation: u16,
    done: u16,
    failed: u16,
    slow: u16,
}

impl Trials {
    fn unpack(word: u64) -> Trials {
        #[allow(clippy::cast_possible_truncation)]
        Trials {
            generation: (word >> 48) as u16,
            done: (word >> 32) as u16,
            failed: (word >> 16) as u16,
            slow: word as u16,
        }
    }

    fn pack(self) -> u64 {
        (u64::from(self.generation) << 48)
            | (u64::from(self.done) << 32)
            | (u64::from(self.failed) << 16)
            | u64::from(self.slow)
    }

    fn counts(self) -> Counts {
        Counts {
            calls: u32::from(self.done),
            failures: u32::from(self.failed),
            slow: u32::from(self.slow),
        }
    }
}

#[allow(clippy::cast_possible_truncation)]
fn generation_tag(phase: u64) -> u16 {
    word::generation(phase) as u16
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

    /// Asks to run one call.
    ///
    /// # Errors
    /// [`CallNotPermitted`] when the breaker is open, forced open, or half-open with all
    /// trial permits out.
    #[inline]
    pub fn try_acquire(&self) -> Result<Permit<'_>, CallNotPermitted> {
        self.acquire(self)
    }

    /// Like [`try_acquire`](Self::try_acquire), for a breaker in an `Arc`: the permit
    /// owns a reference, so it can live in a `'static` future.
    ///
    /// # Errors
    /// As [`try_acquire`](Self::try_acquire).
    pub fn try_acquire_owned(self: &Arc<Self>) -> Result<OwnedPermit, CallNotPermitted> {
        self.acquire(Arc::clone(self))
    }

    /// Takes a permit that holds the breaker through `holder` (`&self` or an `Arc`).
    #[inline]
    fn acquire<B: Deref<Target = Self>>(&self, holder: B) -> Result<PermitOf<B>, CallNotPermitted> {
        let current = self.word.load(Ordering::Acquire);
        if matches!(
            State::from_bits(current),
            State::Closed | State::MetricsOnly | State::Disabled
        ) {
            return Ok(self.permit(current, holder));
        }
        self.acquire_slow(current, holder)
    }

    #[cold]
    fn acquire_slow<B: Deref<Target = Self>>(
        &self,
        mut current: u64,
        holder: B,
    ) -> Result<PermitOf<B>, CallNotPermitted> {
        loop {
            match State::from_bits(current) {
                State::Closed | State::MetricsOnly | State::Disabled => {
                    return Ok(self.permit(current, holder));
                }
                State::ForcedOpen => return Err(self.reject(State::ForcedOpen, None)),
                State::Open => {
                    let now = self.now();
                    let until = self.open_until.load(Ordering::Acquire);
                    if now < until {
                        return Err(
                            self.reject(State::Open, Some(Duration::from_nanos(until - now)))
                        );
                    }
                    // The wait is over: whoever wins moves it to half-open; everyone
                    // then competes for trial permits.
                    self.transition(current, State::HalfOpen, Counts::default());
                    current = self.word.load(Ordering::Acquire);
                }
                State::HalfOpen => {
                    if word::issued(current) >= u64::from(self.config.half_open_permits) {
                        let limit =
                            u64::try_from(self.config.max_half_open.as_nanos()).unwrap_or(u64::MAX);
                        // Every trial out has been out at least since the newest permit
                        // of this generation was issued, and that permit was stamped
                        // before it was published. (Not the time of the transition: that
                        // stamp follows the state word, so a call seeing the new state
                        // early would read the state before's, an open wait ago.)
                        let newest = self.last_trial.load(Ordering::Acquire);
                        let since = self.now().saturating_sub(newest);
                        if since < limit {
                            return Err(self.reject(
                                State::HalfOpen,
                                Some(Duration::from_nanos(limit - since)),
                            ));
                        }
                        // Every trial out for longer than half-open may last: hung. Open
                        // again, so that new trials can run after the open wait.
                        tracing::warn!(breaker = %self.config.name, "half-open trials did not finish in time; opening again");
                        self.open(current, Counts::default());
                        current = self.word.load(Ordering::Acquire);
                        continue;
                    }
                    let next = current + (1 << word::ISSUED_SHIFT);
                    self.last_trial.fetch_max(self.now(), Ordering::AcqRel);
                    match self.word.compare_exchange_weak(
                        current,
                        next,
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    ) {
                        Ok(_) => return Ok(self.permit(current, holder)),
                        Err(actual) => current = actual,
                    }
                }
            }
        }
    }

    #[inline]
    fn permit<B: Deref<Target = Self>>(&self, current: u64, holder: B) -> PermitOf<B> {
        PermitOf {
            breaker: holder,
            phase: word::phase(current),
            start: self.config.slow_calls.map(|_| Instant::now()),
            recorded: false,
        }
    }

    fn reject(&self, state: State, retry_after: Option<Duration>) -> CallNotPermitted {
        self.rejected.increment(1);
        CallNotPermitted {
            breaker: self.config.name.clone(),
            state,
            retry_after,
        }
    }

    /// A permit dropped unrecorded: counted as configured. Out of line, so that the drop
    /// of a recorded permit stays one test.
    #[cold]
    #[inline(never)]
    fn on_abandoned(&self, phase: u64, start: Option<Instant>) {
        match self.config.abandoned_calls {
            Outcome::Ignored => self.release_trial(phase),
            outcome => self.on_result(phase, outcome, self.is_slow(start)),
        }
    }

    /// Gives back a half-open trial permit issued in `phase` (a no-op in other states).
    #[inline]
    fn release_trial(&self, phase: u64) {
        if State::from_bits(phase) != State::HalfOpen {
            return;
        }
        self.release_trial_slow(phase);
    }

    #[cold]
    fn release_trial_slow(&self, phase: u64) {
        let mut current = self.word.load(Ordering::Acquire);
        while word::phase(current) == phase && word::issued(current) > 0 {
            let next = current - (1 << word::ISSUED_SHIFT);
            match self.word.compare_exchange_weak(
                current,
                next,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return,
                Err(actual) => current = actual,
            }
        }
    }

    #[inline]
    fn is_slow(&self, start: Option<Instant>) -> bool {
        match (self.config.slow_calls, start) {
            (Some(slow), Some(start)) => start.elapsed() >= slow.duration,
            _ => false,
        }
    }

    fn slow_rate_threshold(&self) -> f64 {
        // Above 100%: never reached when slow calls are not detected.
        self.config
            .slow_calls
            .map_or(f64::INFINITY, |s| s.rate_threshold)
    }

    #[inline(always)]
    fn on_result(&self, phase: u64, outcome: Outcome, slow: bool) {
        let current = self.word.load(Ordering::Acquire);
        if word::phase(current) != phase {
            return; // issued before a transition: it says nothing about the new state
        }
        if outcome == Outcome::Ignored {
            self.on_ignored(phase);
            return;
        }
        let failed = outcome == Outcome::Failure;
        match State::from_bits(phase) {
            State::Closed | State::MetricsOnly => {
                if let Some(counts) = self.window.record(|| self.now(), failed, slow)
                    && State::from_bits(phase) == State::Closed
                    && self.exceeds(counts)
                {
                    self.trip(phase, counts);
                }
            }
            State::HalfOpen => self.on_trial_result(phase, failed, slow),
            _ => {}
        }
    }

    #[cold]
    fn on_trial_result(&self, phase: u64, failed: bool, slow: bool) {
        let trials = self.tally(phase, failed, slow);
        if u32::from(trials.done) != self.config.half_open_permits {
            return;
        }
        let counts = trials.counts();
        // Trials are judged on their own: no minimum applies.
        if counts.failure_rate() >= self.config.failure_rate_threshold
            || counts.slow_rate() >= self.slow_rate_threshold()
        {
            self.open(phase, counts);
        } else {
            self.window.reset();
            if self.transition(phase, State::Closed, counts) {
                self.consecutive_opens.store(0, Ordering::Release);
                // Recovered by itself (not a manual reset): how long the dependency was
                // out (MTTR).
                let outage = self
                    .now()
                    .saturating_sub(self.outage_since.load(Ordering::Acquire));
                #[allow(clippy::cast_precision_loss)]
                self.recovery.record(outage as f64 / 1e9);
            }
        }
    }

    /// Adds one trial result to this generation's tally and returns the new tally.
    fn tally(&self, phase: u64, failed: bool, slow: bool) -> Trials {
        let tag = generation_tag(phase);
        let mut current = self.trials.load(Ordering::Acquire);
        loop {
            let mut trials = Trials::unpack(current);
            if current == u64::MAX || trials.generation != tag {
                trials = Trials {
                    generation: tag,
                    done: 0,
                    failed: 0,
                    slow: 0,
                };
            }
            trials.done = trials.done.saturating_add(1);
            trials.failed = trials.failed.saturating_add(u16::from(failed));
            trials.slow = trials.slow.saturating_add(u16::from(slow));
            match self.trials.compare_exchange_weak(
                current,
                trials.pack(),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return trials,
                Err(actual) => current = actual,
            }
        }
    }

    /// An ignored half-open trial gives its permit back so another call can judge.
    #[cold]
    fn on_ignored(&self, phase: u64) {
        self.release_trial(phase);
    }

    #[cold]
    fn trip(&self, phase: u64, counts: Counts) {
        self.open(phase, counts);
    }

    fn exceeds(&self, counts: Counts) -> bool {
        counts.calls >= self.config.minimum_calls
            && (counts.failure_rate() >= self.config.failure_rate_threshold
                || counts.slow_rate() >= self.slow_rate_threshold())
    }

    fn open(&self, from_word: u64, counts: Counts) {
        let consecutive = self.consecutive_opens.load(Ordering::Acquire);
        // `open_until` is stored before the transition (a caller that sees the new
        // state must see its wait), so a caller that will lose the race must not store
        // it: one that read the count after the winner bumped it sees the winner's state
        // here, and one that read it before computes the winner's wait.
        if word::phase(self.word.load(Ordering::Acquire)) != word::phase(from_word) {
            return;
        }
        let wait = self.config.open_wait.wait(consecutive);
        let until = self
            .now()
            .saturating_add(u64::try_from(wait.as_nanos()).unwrap_or(u64::MAX));
        self.open_until.store(until, Ordering::Release);
        if self.transition(from_word, State::Open, counts) {
            self.consecutive_opens.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Moves from the phase of `from` to `to`; false if another thread moved first.
    fn transition(&self, from: u64, to: State, counts: Counts) -> bool {
        let phase = word::phase(from);
        let next = ((word::generation(phase) + 1) << word::GENERATION_SHIFT) | to.bits();
        let mut current = self.word.load(Ordering::Acquire);
        while word::phase(current) == phase {
            match self.word.compare_exchange_weak(
                current,
                next,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    let from = State::from_bits(phase);
                    if to == State::Open && from == State::Closed {
                        self.outage_since.store(self.now(), Ordering::Release);
                    }
                    self.announce(from, to, counts);
                    return true;
                }
                Err(actual) => current = actual,
            }
        }
        false
    }

    fn announce(&self, from: State, to: State, counts: Counts) {
        let change = StateChange {
            breaker: self.config.name.to_string(),
            from,
            to,
            failure_rate: counts.failure_rate(),
            slow_call_rate: counts.slow_rate(),
        };
        if to == State::Open {
            tracing::warn!(
                breaker = %change.breaker, from = from.as_str(), to = to.as_str(),
                failure_rate = change.failure_rate, slow_call_rate = change.slow_call_rate,
                "circuit breaker opened"
            );
        } else {
            tracing::info!(
                breaker = %change.breaker, from = from.as_str(), to = to.as_str(),
                "circuit breaker state changed"
            );
        }
        metrics::counter!(
            "resilience_breaker_transitions_total",
            "breaker" => self.config.name.clone(), "from" => from.as_str(), "to" => to.as_str()
        )
        .increment(1);
        metrics::gauge!("resilience_breaker_state", "breaker" => self.config.name.clone())
            .set(f64::from(u8::try_from(to.bits()).unwrap_or(0)));
        for listener in &self.config.listeners {
            listener(&change);
        }
    }

    fn force(&self, to: State) {
        loop {
            let current = self.word.load(Ordering::Acquire);
            if State::from_bits(current) == to && to != State::Closed {
                return;
            }
            if to == State::Closed {
                self.window.reset();
                self.consecutive_opens.store(0, Ordering::Release);
            }
            if self.transition(current, to, Counts::default()) {
                return;
            }
        }
    }

    /// Closes the breaker and clears its window.
    pub fn reset(&self) {
        self.force(State::Closed);
    }

    /// Refuses every call until [`reset`](Self::reset).
    pub fn force_open(&self) {
        self.force(State::ForcedOpen);
    }

    /// Runs every call and records nothing until [`reset`](Self::reset).
    pub fn disable(&self) {
        self.force(State::Disabled);
    }

    /// Records calls but never opens, until [`reset`](Self::reset).
    pub fn metrics_only(&self) {
        self.force(State::MetricsOnly);
    }

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
