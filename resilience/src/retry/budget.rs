//! Retry budgets: retries may add at most a share of extra load.

use std::time::Duration;

use tokio::time::Instant;

use crate::rolling::RollingCounter;

/// Caps retries at a share of recent requests, so that when a dependency is down,
/// retries add `ratio` extra load instead of multiplying it by the attempt count. A
/// small reserve (`min_per_second`) lets a quiet service still retry.
///
/// Over the last `window`: a retry is allowed while
/// `retries < min_per_second × window_seconds + ratio × requests`.
///
/// ```
/// use std::time::Duration;
/// use keel_resilience::retry::RetryBudget;
///
/// let budget = RetryBudget::new(0.2, 0, Duration::from_secs(10));
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
    requests: RollingCounter,
    retries: RollingCounter,
    base: Instant,
}

impl std::fmt::Debug for RetryBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetryBudget")
            .field("ratio", &self.ratio)
            .field("reserve", &self.reserve)
            .finish_non_exhaustive()
    }
}

impl RetryBudget {
    /// A budget of `ratio` (0.2 = 20% extra load) over `window`, plus `min_per_second`
    /// retries always allowed.
    #[must_use]
    pub fn new(ratio: f64, min_per_second: u32, window: Duration) -> Self {
        let window = window.max(Duration::from_secs(1));
        RetryBudget {
            ratio: ratio.max(0.0),
            reserve: f64::from(min_per_second) * window.as_secs_f64(),
            requests: RollingCounter::new(window),
            retries: RollingCounter::new(window),
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

    /// Records a first attempt.
    pub fn deposit(&self) {
        self.requests.add(self.now());
    }

    /// Takes one retry from the budget; `false` when it is spent.
    #[must_use]
    pub fn try_withdraw(&self) -> bool {
        let now = self.now();
        let allowed = self.reserve + self.ratio * f64::from(self.requests.sum(now));
        if f64::from(self.retries.sum(now)) < allowed {
            self.retries.add(now);
            true
        } else {
            false
        }
    }
}
