//! The breaker's states, its state word, and the transitions between them.

use super::*;

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
    pub(in crate::breaker) fn from_bits(bits: u64) -> State {
        match bits & 0b111 {
            0 => State::Closed,
            1 => State::Open,
            2 => State::HalfOpen,
            3 => State::Disabled,
            4 => State::ForcedOpen,
            _ => State::MetricsOnly,
        }
    }

    pub(in crate::breaker) fn bits(self) -> u64 {
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

/// The state word: bits 0–2 the state, bits 3–22 the half-open permits issued in this
/// generation, bits 23–63 the generation (bumped by every transition). Taking a trial
/// permit and changing state are each one compare-and-swap on it.
pub(super) mod word {
    pub(in crate::breaker) const ISSUED_SHIFT: u64 = 3;
    pub(in crate::breaker) const ISSUED_MASK: u64 = ((1 << 20) - 1) << ISSUED_SHIFT;
    pub(in crate::breaker) const GENERATION_SHIFT: u64 = 23;

    /// State and generation, without the permit count.
    pub(in crate::breaker) fn phase(word: u64) -> u64 {
        word & !ISSUED_MASK
    }

    pub(in crate::breaker) fn issued(word: u64) -> u64 {
        (word & ISSUED_MASK) >> ISSUED_SHIFT
    }

    pub(in crate::breaker) fn generation(word: u64) -> u64 {
        word >> GENERATION_SHIFT
    }
}

/// Half-open trial results in one word: the generation's low 16 bits, then finished,
/// failed and slow trials, 16 bits each (permits are capped at 10 000). A result from a
/// new generation starts the tally from zero, so nothing needs resetting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Trials {
    pub(super) generation: u16,
    pub(super) done: u16,
    pub(super) failed: u16,
    pub(super) slow: u16,
}

impl Trials {
    pub(in crate::breaker) fn unpack(word: u64) -> Trials {
        #[allow(clippy::cast_possible_truncation)]
        Trials {
            generation: (word >> 48) as u16,
            done: (word >> 32) as u16,
            failed: (word >> 16) as u16,
            slow: word as u16,
        }
    }

    pub(in crate::breaker) fn pack(self) -> u64 {
        (u64::from(self.generation) << 48)
            | (u64::from(self.done) << 32)
            | (u64::from(self.failed) << 16)
            | u64::from(self.slow)
    }

    pub(in crate::breaker) fn counts(self) -> Counts {
        Counts {
            calls: u32::from(self.done),
            failures: u32::from(self.failed),
            slow: u32::from(self.slow),
        }
    }
}

#[allow(clippy::cast_possible_truncation)]
pub(super) fn generation_tag(phase: u64) -> u16 {
    word::generation(phase) as u16
}

impl CircuitBreaker {
    #[inline(always)]
    pub(in crate::breaker) fn on_result(&self, phase: u64, outcome: Outcome, slow: bool) {
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
    pub(in crate::breaker) fn on_trial_result(&self, phase: u64, failed: bool, slow: bool) {
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
    pub(in crate::breaker) fn tally(&self, phase: u64, failed: bool, slow: bool) -> Trials {
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
    pub(in crate::breaker) fn on_ignored(&self, phase: u64) {
        self.release_trial(phase);
    }

    #[cold]
    pub(in crate::breaker) fn trip(&self, phase: u64, counts: Counts) {
        self.open(phase, counts);
    }

    pub(in crate::breaker) fn exceeds(&self, counts: Counts) -> bool {
        counts.calls >= self.config.minimum_calls
            && (counts.failure_rate() >= self.config.failure_rate_threshold
                || counts.slow_rate() >= self.slow_rate_threshold())
    }

    pub(in crate::breaker) fn open(&self, from_word: u64, counts: Counts) {
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
    pub(in crate::breaker) fn transition(&self, from: u64, to: State, counts: Counts) -> bool {
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

    pub(in crate::breaker) fn announce(&self, from: State, to: State, counts: Counts) {
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

    pub(in crate::breaker) fn force(&self, to: State) {
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
}
