//! Retry budgets: retries may add at most a share of extra load.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::rolling::RollingCounter;

/// Every this many deposits, one reads the clock and marks the request total for its
/// time bucket. Deposits are otherwise one atomic add.
const MARK_EVERY: u64 = 1024;

/// Caps retries at a share of recent requests, so that when a dependency is down,
/// retries add `ratio` extra load instead of multiplying it by the attempt count. A
/// small reserve (`min_per_second`) lets a quiet service still retry.
///
/// Over the last `window`: a retry is allowed while
/// `retries < min_per_second × window_seconds + ratio × requests`.
///
/// Requests are counted with one atomic add and no clock read; the window's start is
/// found from marks of the running total taken per one-second bucket (on every
/// withdrawal, and on one deposit in 1024), so the request count is exact to within
/// those marks.
///
/// ```
/// use std::time::Duration;
/// use keel_resilience::retry::RetryBudget;
///
/// let budget = RetryBudget::new(0.2, 0, Duration::from_secs(10));
/// assert!(!budget.try_withdraw(), "nothing deposited, no reserve");
/// for _ in 0..10 {
///     budget.deposit();
/// }
/// assert!(budget.try_withdraw());
/// assert!(budget.try_withdraw());
/// assert!(!budget.try_withdraw(), "2 retries for 10 requests is 20%");
/// ```
pub struct RetryBudget {
    ratio: f64,
    reserve: f64,
    requests: AtomicU64,
    /// Per bucket: the epoch it was marked in, and the request total then.
    mark_epochs: Box<[AtomicU32]>,
    mark_totals: Box<[AtomicU64]>,
    retries: RollingCounter,
    /// Serialises withdrawals: the check and the withdrawal are one step, so concurrent
    /// retries cannot overdraw the budget. Only failures withdraw, so this lock is off
    /// the success path (deposits never take it).
    withdrawing: std::sync::Mutex<()>,
    base: Instant,
}

const UNMARKED: u32 = u32::MAX;

impl std::fmt::Debug for RetryBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetryBudget")
            .field("ratio", &self.ratio)
            .field("reserve", &self.reserve)
            .finish_non_exhaustive()
    }
}

impl RetryBudget {
    /// A budget of `ratio` (0.2 = 20% extra load) over `window` (whole seconds, 1 to
    /// 600), plus `min_per_second` retries always allowed.
    #[must_use]
    pub fn new(ratio: f64, min_per_second: u32, window: Duration) -> Self {
        let seconds = window.as_secs().clamp(1, 600);
        // Seconds are at most 600: the cast cannot truncate.
        #[allow(clippy::cast_possible_truncation)]
        let buckets = seconds as usize;
        RetryBudget {
            ratio: ratio.max(0.0),
            #[allow(clippy::cast_precision_loss)]
            reserve: f64::from(min_per_second) * seconds as f64,
            requests: AtomicU64::new(0),
            mark_epochs: (0..buckets).map(|_| AtomicU32::new(UNMARKED)).collect(),
            mark_totals: (0..buckets).map(|_| AtomicU64::new(0)).collect(),
            retries: RollingCounter::new(Duration::from_secs(seconds)),
            withdrawing: std::sync::Mutex::new(()),
            base: Instant::now(),
        }
    }

    /// 20% over 10 s, with 10 retries per second in reserve (tower's `TpsBudget`
    /// defaults).
    #[must_use]
    pub fn standard() -> Self {
        Self::new(0.2, 10, Duration::from_secs(10))
    }

    fn now(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn epoch(now: u64) -> u32 {
        u32::try_from(now / 1_000_000_000).unwrap_or(UNMARKED - 1)
    }

    /// Marks `total` as the request count at the start of `epoch`'s bucket, unless the
    /// bucket is already marked for that epoch.
    fn mark(&self, epoch: u32, total: u64) {
        let slot = epoch as usize % self.mark_epochs.len();
        let seen = self.mark_epochs[slot].load(Ordering::Acquire);
        if seen != epoch
            && self.mark_epochs[slot]
                .compare_exchange(seen, epoch, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            self.mark_totals[slot].store(total, Ordering::Release);
        }
    }

    /// Requests since the oldest mark inside the window ending at `epoch`.
    fn requests_in_window(&self, epoch: u32, total: u64) -> u64 {
        let span = u32::try_from(self.mark_epochs.len()).unwrap_or(u32::MAX);
        let oldest = self
            .mark_epochs
            .iter()
            .zip(self.mark_totals.iter())
            .filter_map(|(e, t)| {
                let e = e.load(Ordering::Acquire);
                (e != UNMARKED && e <= epoch && epoch - e < span).then(|| t.load(Ordering::Acquire))
            })
            .min()
            .unwrap_or(total);
        total.saturating_sub(oldest)
    }

    /// Records a first attempt: one atomic add.
    pub fn deposit(&self) {
        let total = self.requests.fetch_add(1, Ordering::Relaxed);
        if total.is_multiple_of(MARK_EVERY) {
            self.mark(Self::epoch(self.now()), total);
        }
    }

    /// Takes one retry from the budget; `false` when it is spent. Atomic: however many
    /// threads withdraw at once, no more retries are granted than the budget allows.
    #[must_use]
    pub fn try_withdraw(&self) -> bool {
        let _one_at_a_time = self
            .withdrawing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = self.now();
        let epoch = Self::epoch(now);
        let total = self.requests.load(Ordering::Acquire);
        self.mark(epoch, total.saturating_sub(1));
        #[allow(clippy::cast_precision_loss)]
        let allowed = self.reserve + self.ratio * self.requests_in_window(epoch, total) as f64;
        if f64::from(self.retries.sum(now)) < allowed {
            self.retries.add(now);
            true
        } else {
            false
        }
    }
}
