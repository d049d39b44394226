//! Rate limits: in-process on governor's GCRA (direct and keyed), and in Redis for a
//! limit that every instance of a service shares (feature `redis`).

mod layer;

pub use layer::{RateLimitLayer, RateLimitService, ResponseFuture};

#[cfg(feature = "redis")]
mod redis_gcra;

use std::borrow::Cow;
use std::hash::Hash;
use std::num::NonZeroU32;
use std::time::Duration;

use std::sync::OnceLock;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::{InMemoryState, NotKeyed};

use crate::classify::{Classify, ErrorClass};
use crate::keyed::KeyedRegistry;

#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use redis_gcra::{RedisRateLimitError, RedisRateLimiter};

/// A call was refused by a rate limit.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("rate limit `{name}` reached; the next call is allowed in {retry_after:?}")]
pub struct RateLimited {
    name: Cow<'static, str>,
    retry_after: Duration,
}

impl RateLimited {
    pub(crate) fn new(name: Cow<'static, str>, retry_after: Duration) -> Self {
        RateLimited { name, retry_after }
    }

    /// When a call will be allowed.
    #[must_use]
    pub fn retry_after(&self) -> Duration {
        self.retry_after
    }
}

impl Classify for RateLimited {
    fn class(&self) -> ErrorClass {
        ErrorClass::Throttled {
            retry_after: Some(self.retry_after),
        }
    }
}

/// How many calls a rate limit allows: `per_second(n)` with bursts of up to `n` calls, or
/// of `burst(b)`. Checked when a limiter is built: zeros are refused, not raised to one.
///
/// ```
/// use keel_resilience::rate_limit::{ConfigError, Quota, RateLimiter};
///
/// let writes = RateLimiter::new("graph-writes", Quota::per_second(10).burst(2))?;
/// assert!(writes.check().is_ok());
/// assert_eq!(
///     RateLimiter::new("none", Quota::per_second(0)).unwrap_err(),
///     ConfigError::ZeroRate
/// );
/// # Ok::<(), ConfigError>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[must_use]
pub struct Quota {
    per_second: u32,
    burst: Option<u32>,
}

impl Quota {
    /// `n` calls per second, in bursts of up to `n`.
    pub const fn per_second(n: u32) -> Self {
        Quota {
            per_second: n,
            burst: None,
        }
    }

    /// Bursts of up to `b` calls (default: the rate per second).
    pub const fn burst(mut self, b: u32) -> Self {
        self.burst = Some(b);
        self
    }

    /// The calls per second.
    #[must_use]
    pub const fn rate(&self) -> u32 {
        self.per_second
    }

    /// The largest burst.
    #[must_use]
    pub const fn max_burst(&self) -> u32 {
        match self.burst {
            Some(b) => b,
            None => self.per_second,
        }
    }

    /// Checks that the quota can work ([`RateLimiter::new`] does).
    ///
    /// # Errors
    /// [`ConfigError::ZeroRate`] or [`ConfigError::ZeroBurst`].
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.nonzero().map(|_| ())
    }

    fn nonzero(&self) -> Result<(NonZeroU32, NonZeroU32), ConfigError> {
        let rate = NonZeroU32::new(self.per_second).ok_or(ConfigError::ZeroRate)?;
        let burst = NonZeroU32::new(self.max_burst()).ok_or(ConfigError::ZeroBurst)?;
        Ok((rate, burst))
    }

    fn governor(&self) -> Result<governor::Quota, ConfigError> {
        let (rate, burst) = self.nonzero()?;
        Ok(governor::Quota::per_second(rate).allow_burst(burst))
    }
}

/// A rate limit's settings cannot work.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// Zero calls per second: no call would ever be allowed.
    #[error("a rate limit must allow at least one call per second")]
    ZeroRate,
    /// A burst of zero: no call would ever be allowed.
    #[error("a rate limit's burst must be at least one call")]
    ZeroBurst,
}

impl Classify for ConfigError {
    /// Always permanent: the settings are wrong.
    fn class(&self) -> ErrorClass {
        ErrorClass::Permanent
    }
}

type Direct<C> =
    governor::RateLimiter<NotKeyed, InMemoryState, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// The limiter's state, on one of two clocks.
#[derive(Debug)]
enum Gcra {
    /// `quanta`'s TSC clock: the fastest read.
    Quanta(Direct<DefaultClock>, DefaultClock),
    /// tokio's clock, which tests can pause and advance.
    Tokio(Direct<TokioClock>, TokioClock),
}

/// tokio's monotonic clock for governor, counted from the limiter's creation.
#[derive(Clone, Debug)]
struct TokioClock {
    origin: tokio::time::Instant,
}

impl Clock for TokioClock {
    type Instant = Nanos;

    fn now(&self) -> Nanos {
        Nanos::from(tokio::time::Instant::now().saturating_duration_since(self.origin))
    }
}

/// An in-process rate limiter (GCRA on one atomic word, from governor).
///
/// ```
/// use keel_resilience::rate_limit::{Quota, RateLimiter};
///
/// let limiter = RateLimiter::new("graph-writes", Quota::per_second(10).burst(2)).unwrap();
/// assert!(limiter.check().is_ok());
/// assert!(limiter.check().is_ok());
/// let refused = limiter.check().unwrap_err(); // burst of 2 used up
/// assert!(refused.retry_after().as_millis() <= 100);
/// ```
#[derive(Debug)]
pub struct RateLimiter {
    name: Cow<'static, str>,
    quota: Quota,
    governed: governor::Quota,
    gcra: Gcra,
    rejected: metrics::Counter,
}

/// A limiter's budget can be rebuilt from its quota: evicted freely.
impl crate::keyed::Retain for RateLimiter {}

/// One clock for every limiter: building a `quanta` clock runs `cpuid`, which costs tens
/// of microseconds on a virtual machine, far too much per key or per refusal.
fn shared_clock() -> DefaultClock {
    static CLOCK: OnceLock<DefaultClock> = OnceLock::new();
    CLOCK.get_or_init(DefaultClock::default).clone()
}

impl RateLimiter {
    /// A limiter for `quota`, on a TSC clock (the fastest to read).
    ///
    /// # Errors
    /// [`ConfigError`] when the quota allows no call.
    pub fn new(name: impl Into<Cow<'static, str>>, quota: Quota) -> Result<Self, ConfigError> {
        let governed = quota.governor()?;
        Ok(Self::governed(name.into(), quota, governed))
    }

    fn governed(name: Cow<'static, str>, quota: Quota, governed: governor::Quota) -> Self {
        let rejected =
            metrics::counter!("resilience_rate_limited_total", "limiter" => name.clone());
        let clock = shared_clock();
        RateLimiter {
            name,
            quota,
            governed,
            gcra: Gcra::Quanta(
                governor::RateLimiter::direct_with_clock(governed, clock.clone()),
                clock,
            ),
            rejected,
        }
    }

    /// Reads tokio's clock instead (a few nanoseconds more per check), so that tests under
    /// paused time (`#[tokio::test(start_paused = true)]`, `tokio::time::advance`) see the
    /// limit refill as tokio's time moves, and [`acquire`](Self::acquire) waits no real
    /// time. The budget starts full again.
    ///
    /// ```
    /// use std::time::Duration;
    /// use keel_resilience::rate_limit::{Quota, RateLimiter};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
    /// let limiter = RateLimiter::new("writes", Quota::per_second(1)).unwrap().on_tokio_time();
    /// assert!(limiter.check().is_ok());
    /// assert!(limiter.check().is_err());
    /// tokio::time::advance(Duration::from_secs(1)).await;
    /// assert!(limiter.check().is_ok());
    /// # }
    /// ```
    #[must_use]
    pub fn on_tokio_time(self) -> Self {
        let clock = TokioClock {
            origin: tokio::time::Instant::now(),
        };
        RateLimiter {
            gcra: Gcra::Tokio(
                governor::RateLimiter::direct_with_clock(self.governed, clock.clone()),
                clock,
            ),
            ..self
        }
    }

    /// The quota.
    pub fn quota(&self) -> Quota {
        self.quota
    }

    /// Takes one call from the limit now.
    ///
    /// # Errors
    /// [`RateLimited`] with the wait until the next call is allowed.
    #[inline]
    pub fn check(&self) -> Result<(), RateLimited> {
        let wait = match &self.gcra {
            Gcra::Quanta(limiter, clock) => match limiter.check() {
                Ok(()) => return Ok(()),
                Err(not_until) => not_until.wait_time_from(clock.now()),
            },
            Gcra::Tokio(limiter, clock) => match limiter.check() {
                Ok(()) => return Ok(()),
                Err(not_until) => not_until.wait_time_from(clock.now()),
            },
        };
        self.rejected.increment(1);
        Err(RateLimited::new(self.name.clone(), wait))
    }

    /// Waits up to `max_wait` for the limit to allow a call, on tokio's timer.
    ///
    /// # Errors
    /// [`RateLimited`] when the wait needed is longer than `max_wait` (nothing is waited
    /// for in that case).
    pub async fn acquire(&self, max_wait: Duration) -> Result<(), RateLimited> {
        loop {
            match self.check() {
                Ok(()) => return Ok(()),
                Err(limited) if limited.retry_after() <= max_wait => {
                    tokio::time::sleep(limited.retry_after()).await;
                }
                Err(limited) => return Err(limited),
            }
        }
    }
}

/// One [`RateLimiter`] per key (tenant, mailbox, client IP) with bounded memory: see
/// [`KeyedRegistry`].
///
/// ```
/// use std::time::Duration;
/// use keel_resilience::rate_limit::{KeyedRateLimiter, Quota};
///
/// let per_tenant =
///     KeyedRateLimiter::new("tenant", Quota::per_second(5).burst(1), 100_000, Duration::from_secs(300))
///         .unwrap();
/// assert!(per_tenant.check(&"contoso").is_ok());
/// assert!(per_tenant.check(&"contoso").is_err());
/// assert!(per_tenant.check(&"fabrikam").is_ok(), "keys are limited separately");
/// ```
#[derive(Debug, Clone)]
pub struct KeyedRateLimiter<K> {
    limiters: KeyedRegistry<K, RateLimiter>,
}

impl<K> KeyedRateLimiter<K>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
{
    /// `quota` per key, for at most `max_keys` keys, each forgotten after `idle`.
    ///
    /// # Errors
    /// [`ConfigError`] when the quota allows no call.
    pub fn new(
        name: impl Into<Cow<'static, str>>,
        quota: Quota,
        max_keys: u64,
        idle: Duration,
    ) -> Result<Self, ConfigError> {
        let governed = quota.governor()?;
        let name = name.into();
        Ok(KeyedRateLimiter {
            limiters: KeyedRegistry::new(max_keys, idle, move |_| {
                RateLimiter::governed(name.clone(), quota, governed)
            }),
        })
    }

    /// Takes one call from `key`'s limit.
    ///
    /// # Errors
    /// [`RateLimited`] when `key` is over its limit.
    pub fn check(&self, key: &K) -> Result<(), RateLimited> {
        self.limiters.get(key).check()
    }

    /// The registry, to inspect its size.
    #[must_use]
    pub fn registry(&self) -> &KeyedRegistry<K, RateLimiter> {
        &self.limiters
    }
}
