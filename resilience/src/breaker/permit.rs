//! Permits: taking one (closed, open, half-open), and what a permit's result does.

use super::*;

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

impl CircuitBreaker {
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
    pub(super) fn acquire<B: Deref<Target = Self>>(
        &self,
        holder: B,
    ) -> Result<PermitOf<B>, CallNotPermitted> {
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
    pub(super) fn acquire_slow<B: Deref<Target = Self>>(
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
    pub(super) fn permit<B: Deref<Target = Self>>(&self, current: u64, holder: B) -> PermitOf<B> {
        PermitOf {
            breaker: holder,
            phase: word::phase(current),
            start: self.config.slow_calls.map(|_| Instant::now()),
            recorded: false,
        }
    }

    pub(super) fn reject(&self, state: State, retry_after: Option<Duration>) -> CallNotPermitted {
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
    pub(super) fn on_abandoned(&self, phase: u64, start: Option<Instant>) {
        match self.config.abandoned_calls {
            Outcome::Ignored => self.release_trial(phase),
            outcome => self.on_result(phase, outcome, self.is_slow(start)),
        }
    }

    /// Gives back a half-open trial permit issued in `phase` (a no-op in other states).
    #[inline]
    pub(super) fn release_trial(&self, phase: u64) {
        if State::from_bits(phase) != State::HalfOpen {
            return;
        }
        self.release_trial_slow(phase);
    }

    #[cold]
    pub(super) fn release_trial_slow(&self, phase: u64) {
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
    pub(super) fn is_slow(&self, start: Option<Instant>) -> bool {
        match (self.config.slow_calls, start) {
            (Some(slow), Some(start)) => start.elapsed() >= slow.duration,
            _ => false,
        }
    }

    pub(super) fn slow_rate_threshold(&self) -> f64 {
        // Above 100%: never reached when slow calls are not detected.
        self.config
            .slow_calls
            .map_or(f64::INFINITY, |s| s.rate_threshold)
    }
}
