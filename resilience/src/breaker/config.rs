//! Circuit breaker settings.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::StateChange;

/// How the breaker remembers recent calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SlidingWindow {
    /// The last `size` calls.
    Count {
        /// How many calls (1 to 100 000).
        size: u32,
    },
    /// The calls of the last `duration`, in up to 600 buckets.
    Time {
        /// How far back (1 s to 1 h).
        duration: Duration,
    },
}

/// How long the breaker stays open before letting trial calls through.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub enum OpenWait {
    /// Always the same wait.
    Fixed(Duration),
    /// `initial`, then multiplied by `multiplier` each time a trial fails and the breaker
    /// opens again, up to `max`; back to `initial` once it closes.
    Backoff {
        /// The first wait.
        initial: Duration,
        /// Growth per consecutive opening (at least 1.0).
        multiplier: f64,
        /// The longest wait.
        max: Duration,
    },
}

impl OpenWait {
    /// The wait after `consecutive` openings in a row (0 for the first).
    #[must_use]
    pub fn wait(&self, consecutive: u32) -> Duration {
        match *self {
            OpenWait::Fixed(wait) => wait,
            OpenWait::Backoff {
                initial,
                multiplier,
                max,
            } => {
                let factor = multiplier.powi(i32::try_from(consecutive).unwrap_or(i32::MAX));
                let secs = (initial.as_secs_f64() * factor).min(max.as_secs_f64());
                Duration::try_from_secs_f64(secs).unwrap_or(max).min(max)
            }
        }
    }
}

/// Slow-call detection settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct SlowCalls {
    pub(crate) duration: Duration,
    pub(crate) rate_threshold: f64,
}

/// Why a configuration was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A percentage outside (0, 100].
    #[error("{setting} must be a percentage above 0 and at most 100, got {value}")]
    Percentage {
        /// Which setting.
        setting: &'static str,
        /// The value given.
        value: f64,
    },
    /// A count or duration out of its range.
    #[error("{setting} is out of range: {reason}")]
    Range {
        /// Which setting.
        setting: &'static str,
        /// What the range is.
        reason: String,
    },
}

pub(crate) type Listener = Arc<dyn Fn(&StateChange) + Send + Sync>;

/// Circuit breaker settings. Start from a preset and adjust with the builder; `build`
/// checks every value.
///
/// ```
/// use std::time::Duration;
/// use keel_resilience::breaker::{CircuitBreakerConfig, OpenWait, SlidingWindow};
///
/// let config = CircuitBreakerConfig::builder("graph")
///     .sliding_window(SlidingWindow::Time { duration: Duration::from_secs(30) })
///     .failure_rate_threshold(25.0)
///     .minimum_calls(10)
///     .open_wait(OpenWait::Backoff {
///         initial: Duration::from_secs(5),
///         multiplier: 2.0,
///         max: Duration::from_secs(120),
///     })
///     .build()?;
///
/// let error = CircuitBreakerConfig::builder("bad").failure_rate_threshold(150.0).build();
/// assert!(error.unwrap_err().to_string().contains("at most 100"));
/// # Ok::<(), keel_resilience::breaker::ConfigError>(())
/// ```
#[derive(Clone)]
#[non_exhaustive]
pub struct CircuitBreakerConfig {
    pub(crate) name: Cow<'static, str>,
    pub(crate) window: SlidingWindow,
    pub(crate) failure_rate_threshold: f64,
    pub(crate) slow_calls: Option<SlowCalls>,
    pub(crate) minimum_calls: u32,
    pub(crate) half_open_permits: u32,
    pub(crate) open_wait: OpenWait,
    pub(crate) max_half_open: Duration,
    pub(crate) abandoned_calls: super::Outcome,
    pub(crate) listeners: Vec<Listener>,
}

impl fmt::Debug for CircuitBreakerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreakerConfig")
            .field("name", &self.name)
            .field("window", &self.window)
            .field("failure_rate_threshold", &self.failure_rate_threshold)
            .field("slow_calls", &self.slow_calls)
            .field("minimum_calls", &self.minimum_calls)
            .field("half_open_permits", &self.half_open_permits)
            .field("open_wait", &self.open_wait)
            .field("max_half_open", &self.max_half_open)
            .field("abandoned_calls", &self.abandoned_calls)
            .field("listeners", &self.listeners.len())
            .finish()
    }
}

impl CircuitBreakerConfig {
    /// The standard preset, named `name`: the last 100 calls, open at 50% failures once
    /// 20 calls are in the window, 10 trial calls half-open, 30 s open, at most 60 s
    /// half-open, and a call abandoned before it reports (dropped unrecorded: a timeout
    /// or a cancellation outside the breaker) counted as a failure. Slow-call detection
    /// is off (see [`CircuitBreakerConfigBuilder::slow_calls`]): with it off a call
    /// through a count-based window reads no clock.
    pub fn standard(name: impl Into<Cow<'static, str>>) -> Self {
        CircuitBreakerConfig {
            name: name.into(),
            window: SlidingWindow::Count { size: 100 },
            failure_rate_threshold: 50.0,
            slow_calls: None,
            minimum_calls: 20,
            half_open_permits: 10,
            open_wait: OpenWait::Fixed(Duration::from_secs(30)),
            max_half_open: Duration::from_secs(60),
            abandoned_calls: super::Outcome::Failure,
            listeners: Vec::new(),
        }
    }

    /// A builder from [`standard`](Self::standard).
    pub fn builder(name: impl Into<Cow<'static, str>>) -> CircuitBreakerConfigBuilder {
        CircuitBreakerConfigBuilder {
            config: Self::standard(name),
        }
    }

    /// The breaker's name (used in events, metrics and errors).
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// Builds a [`CircuitBreakerConfig`].
#[derive(Debug, Clone)]
#[must_use]
pub struct CircuitBreakerConfigBuilder {
    config: CircuitBreakerConfig,
}

impl CircuitBreakerConfigBuilder {
    /// Count- or time-based window.
    pub fn sliding_window(mut self, window: SlidingWindow) -> Self {
        self.config.window = window;
        self
    }

    /// Open when at least this percentage of calls in the window failed (0–100].
    pub fn failure_rate_threshold(mut self, percent: f64) -> Self {
        self.config.failure_rate_threshold = percent;
        self
    }

    /// Also open when at least `rate_percent` (0–100] of the calls in the window took
    /// `duration` or longer, failed or not. Each call then reads the clock twice.
    pub fn slow_calls(mut self, duration: Duration, rate_percent: f64) -> Self {
        self.config.slow_calls = Some(SlowCalls {
            duration,
            rate_threshold: rate_percent,
        });
        self
    }

    /// Rates are only judged once the window holds this many calls.
    pub fn minimum_calls(mut self, calls: u32) -> Self {
        self.config.minimum_calls = calls;
        self
    }

    /// Trial calls let through when half-open.
    pub fn half_open_permits(mut self, permits: u32) -> Self {
        self.config.half_open_permits = permits;
        self
    }

    /// How long to stay open.
    pub fn open_wait(mut self, wait: OpenWait) -> Self {
        self.config.open_wait = wait;
        self
    }

    /// How long half-open trials may stay out (default 60 s). A trial that never
    /// finishes (a hung call) would otherwise keep the breaker half-open, refusing
    /// everything, forever; a call that finds every trial permit out, the newest issued
    /// at least this long ago, opens the breaker again, and new trials follow the next
    /// open wait.
    pub fn max_half_open(mut self, limit: Duration) -> Self {
        self.config.max_half_open = limit;
        self
    }

    /// How a call abandoned before it reports counts: a permit dropped unrecorded,
    /// which is what a timeout or a cancellation outside the breaker does (default
    /// [`Outcome::Failure`](super::Outcome::Failure), so hung calls cut off by an outer
    /// timeout still open the breaker). [`Outcome::Ignored`](super::Outcome::Ignored)
    /// gives the permit back uncounted, for callers that cancel healthy calls on
    /// purpose (hedging losers inside the breaker).
    pub fn abandoned_calls(mut self, outcome: super::Outcome) -> Self {
        self.config.abandoned_calls = outcome;
        self
    }

    /// Calls `listener` on every state change, after the change.
    pub fn on_state_change(
        mut self,
        listener: impl Fn(&StateChange) + Send + Sync + 'static,
    ) -> Self {
        self.config.listeners.push(Arc::new(listener));
        self
    }

    /// Checks every setting.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the setting and its valid range.
    pub fn build(self) -> Result<CircuitBreakerConfig, ConfigError> {
        let c = &self.config;
        let slow_rate = c.slow_calls.map_or(100.0, |s| s.rate_threshold);
        for (setting, value) in [
            ("failure_rate_threshold", c.failure_rate_threshold),
            ("slow_calls rate", slow_rate),
        ] {
            if !(value > 0.0 && value <= 100.0) {
                return Err(ConfigError::Percentage { setting, value });
            }
        }
        let range = |setting, reason: &str| {
            Err(ConfigError::Range {
                setting,
                reason: reason.to_owned(),
            })
        };
        match c.window {
            SlidingWindow::Count { size } if !(1..=100_000).contains(&size) => {
                return range("sliding_window", "a count window holds 1 to 100000 calls");
            }
            SlidingWindow::Time { duration }
                if duration < Duration::from_secs(1) || duration > Duration::from_secs(3600) =>
            {
                return range("sliding_window", "a time window lasts 1 s to 1 h");
            }
            _ => {}
        }
        if c.minimum_calls == 0 {
            return range("minimum_calls", "at least 1");
        }
        if let SlidingWindow::Count { size } = c.window
            && c.minimum_calls > size
        {
            return range(
                "minimum_calls",
                "at most the count window's size: a window that never holds that many calls never opens",
            );
        }
        if c.max_half_open.is_zero() {
            return range("max_half_open", "above zero");
        }
        if c.half_open_permits == 0 || c.half_open_permits > 10_000 {
            return range("half_open_permits", "1 to 10000");
        }
        if c.slow_calls.is_some_and(|s| s.duration.is_zero()) {
            return range("slow_calls duration", "above zero");
        }
        match c.open_wait {
            OpenWait::Fixed(wait) if wait.is_zero() => {
                return range("open_wait", "above zero");
            }
            OpenWait::Backoff {
                initial,
                multiplier,
                max,
            } if initial.is_zero()
                || !(multiplier >= 1.0 && multiplier.is_finite())
                || max < initial =>
            {
                return range(
                    "open_wait",
                    "backoff needs initial > 0, a finite multiplier >= 1 and max >= initial",
                );
            }
            _ => {}
        }
        Ok(self.config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        let wait = OpenWait::Backoff {
            initial: Duration::from_secs(1),
            multiplier: 2.0,
            max: Duration::from_secs(10),
        };
        let waits: Vec<u64> = (0..6).map(|n| wait.wait(n).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 10, 10]);
        assert_eq!(wait.wait(u32::MAX), Duration::from_secs(10));
    }

    #[test]
    fn every_setting_is_checked() {
        let b = || CircuitBreakerConfig::builder("t");
        assert!(b().build().is_ok());
        assert!(b().failure_rate_threshold(0.0).build().is_err());
        assert!(b().failure_rate_threshold(f64::NAN).build().is_err());
        assert!(
            b().slow_calls(Duration::from_secs(1), 100.1)
                .build()
                .is_err()
        );
        assert!(b().slow_calls(Duration::ZERO, 50.0).build().is_err());
        assert!(
            b().sliding_window(SlidingWindow::Count { size: 0 })
                .build()
                .is_err()
        );
        assert!(
            b().sliding_window(SlidingWindow::Time {
                duration: Duration::from_millis(10)
            })
            .build()
            .is_err()
        );
        assert!(b().minimum_calls(0).build().is_err());
        assert!(b().half_open_permits(0).build().is_err());
        let never_trips = b()
            .sliding_window(SlidingWindow::Count { size: 10 })
            .minimum_calls(20)
            .build()
            .unwrap_err();
        assert!(
            never_trips.to_string().contains("minimum_calls"),
            "{never_trips}"
        );
        assert!(
            b().sliding_window(SlidingWindow::Count { size: 10 })
                .minimum_calls(10)
                .build()
                .is_ok()
        );
        assert!(b().max_half_open(Duration::ZERO).build().is_err());
        assert!(
            b().open_wait(OpenWait::Fixed(Duration::ZERO))
                .build()
                .is_err()
        );
        let err = b()
            .open_wait(OpenWait::Backoff {
                initial: Duration::from_secs(1),
                multiplier: 0.5,
                max: Duration::from_secs(2),
            })
            .build()
            .unwrap_err();
        assert!(err.to_string().contains("open_wait"), "{err}");
    }
}
