//! Rate limits: in-process on governor's GCRA (direct and keyed), and in Redis for a
//! limit that every instance of a service shares (feature `redis`).

#[cfg(feature = "redis")]
mod redis_gcra;

use std::borrow::Cow;
use std::hash::Hash;
use std::num::NonZeroU32;
use std::time::Duration;

use std::sync::OnceLock;

use governor::Quota;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
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

/// A limit of `per_second` calls per second with bursts of `burst` (zeros are raised
/// to one).
#[must_use]
pub fn quota(per_second: u32, burst: u32) -> Quota {
    let rate = NonZeroU32::new(per_second).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
    Quota::per_second(rate).allow_burst(burst)
}

/// An in-process rate limiter (GCRA on one atomic word, from governor).
///
/// ```
/// use keel_resilience::rate_limit::{quota, RateLimiter};
///
/// let limiter = RateLimiter::new("graph-writes", quota(10, 2));
/// assert!(limiter.check().is_ok());
/// assert!(limiter.check().is_ok());
/// let refused = limiter.check().unwrap_err(); // burst of 2 used up
/// assert!(refused.retry_after().as_millis() <= 100);
/// ```
#[derive(Debug)]
pub struct RateLimiter {
    name: Cow<'static, str>,
    limiter: governor::RateLimiter<
        NotKeyed,
        InMemoryState,
        DefaultClock,
        NoOpMiddleware<<DefaultClock as Clock>::Instant>,
    >,
    clock: DefaultClock,
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
    /// A limiter for `quota`.
    pub fn new(name: impl Into<Cow<'static, str>>, quota: Quota) -> Self {
        let name = name.into();
        let rejected =
            metrics::counter!("resilience_rate_limited_total", "limiter" => name.clone());
        let clock = shared_clock();
        RateLimiter {
            name,
            limiter: governor::RateLimiter::direct_with_clock(quota, clock.clone()),
            clock,
            rejected,
        }
    }

    /// Takes one call from the limit now.
    ///
    /// # Errors
    /// [`RateLimited`] with the wait until the next call is allowed.
    pub fn check(&self) -> Result<(), RateLimited> {
        match self.limiter.check() {
            Ok(()) => Ok(()),
            Err(not_until) => {
                self.rejected.increment(1);
                let wait = not_until.wait_time_from(self.clock.now());
                Err(RateLimited::new(self.name.clone(), wait))
            }
        }
    }

    /// Waits up to `max_wait` for the limit to allow a call.
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
/// use keel_resilience::rate_limit::{quota, KeyedRateLimiter};
///
/// let per_tenant = KeyedRateLimiter::new("tenant", quota(5, 1), 100_000, Duration::from_secs(300));
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
    pub fn new(
        name: impl Into<Cow<'static, str>>,
        quota: Quota,
        max_keys: u64,
        idle: Duration,
    ) -> Self {
        let name = name.into();
        KeyedRateLimiter {
            limiters: KeyedRegistry::new(max_keys, idle, move |_| {
                RateLimiter::new(name.clone(), quota)
            }),
        }
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
