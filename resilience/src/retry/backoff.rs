//! Delays between attempts.

use std::time::Duration;

/// How long to wait before each retry when the error did not say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Backoff {
    /// `base × 2^(retry−1)`, capped at `max`; with full jitter each delay is drawn
    /// uniformly from zero to that (AWS's "full jitter", which spreads a herd best).
    Exponential {
        /// The first delay.
        base: Duration,
        /// The longest delay.
        max: Duration,
        /// Whether to randomise.
        jitter: bool,
    },
    /// AWS's "decorrelated jitter": each delay is drawn from `base` to three times the
    /// previous one, capped at `max`.
    Decorrelated {
        /// The smallest delay.
        base: Duration,
        /// The longest delay.
        max: Duration,
    },
    /// The same delay every time.
    Constant(Duration),
}

impl Backoff {
    /// Exponential from 200 ms to 30 s with full jitter.
    #[must_use]
    pub fn standard() -> Self {
        Backoff::Exponential {
            base: Duration::from_millis(200),
            max: Duration::from_secs(30),
            jitter: true,
        }
    }

    /// The delay before retry number `retry` (1 for the first retry), given the delay
    /// used before the previous one.
    #[must_use]
    pub fn delay(&self, retry: u32, previous: Duration) -> Duration {
        match *self {
            Backoff::Exponential { base, max, jitter } => {
                let shift = retry.saturating_sub(1).min(32);
                let ceiling = base.saturating_mul(1u32 << shift.min(31)).min(max);
                if jitter {
                    random_between(Duration::ZERO, ceiling)
                } else {
                    ceiling
                }
            }
            Backoff::Decorrelated { base, max } => {
                let upper = previous.max(base).saturating_mul(3).min(max);
                random_between(base.min(max), upper)
            }
            Backoff::Constant(delay) => delay,
        }
    }

    pub(crate) fn is_valid(&self) -> bool {
        match *self {
            Backoff::Exponential { base, max, .. } | Backoff::Decorrelated { base, max } => {
                base <= max
            }
            Backoff::Constant(_) => true,
        }
    }
}

fn random_between(low: Duration, high: Duration) -> Duration {
    if high <= low {
        return low;
    }
    let span = u64::try_from((high - low).as_nanos()).unwrap_or(u64::MAX);
    low + Duration::from_nanos(fastrand::u64(0..=span))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn exponential_doubles_and_caps() {
        let b = Backoff::Exponential {
            base: 100 * MS,
            max: 1000 * MS,
            jitter: false,
        };
        let delays: Vec<u128> = (1..=6)
            .map(|n| b.delay(n, Duration::ZERO).as_millis())
            .collect();
        assert_eq!(delays, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(b.delay(u32::MAX, Duration::ZERO), 1000 * MS);
    }

    #[test]
    fn full_jitter_stays_under_the_ceiling_and_spreads() {
        let b = Backoff::Exponential {
            base: 100 * MS,
            max: 10_000 * MS,
            jitter: true,
        };
        let delays: Vec<Duration> = (0..1000).map(|_| b.delay(3, Duration::ZERO)).collect();
        assert!(delays.iter().all(|d| *d <= 400 * MS));
        let mean = delays.iter().sum::<Duration>() / 1000;
        assert!(
            mean > 150 * MS && mean < 250 * MS,
            "mean {mean:?} of U(0, 400 ms)"
        );
    }

    #[test]
    fn decorrelated_stays_in_its_band() {
        let b = Backoff::Decorrelated {
            base: 100 * MS,
            max: 2000 * MS,
        };
        let mut previous = Duration::ZERO;
        for _ in 0..1000 {
            let d = b.delay(1, previous);
            assert!(
                d >= 100 * MS && d <= (previous.max(100 * MS) * 3).min(2000 * MS),
                "{d:?}"
            );
            previous = d;
        }
    }
}
