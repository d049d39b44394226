//! A GCRA rate limiter in Redis: one atomic script per call, on the server's clock.

use std::borrow::Cow;
use std::time::Duration;

use redis::aio::ConnectionManager;

use super::RateLimited;
use crate::classify::{Classify, ErrorClass};

/// GCRA ("generic cell rate algorithm") on one key holding the theoretical arrival time
/// (TAT) in microseconds. Redis's own `TIME` is the clock, so instances with skewed
/// clocks still share one limit; the key expires once it no longer constrains anything.
/// Returns `{1, 0}` when allowed, `{0, wait_us}` when not.
const SCRIPT: &str = r"
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]))
if (not tat) or tat < now then tat = now end
local allow_at = tat - tolerance
if now < allow_at then
  return {0, allow_at - now}
end
local new_tat = tat + interval
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1)
return {1, 0}
";

/// Why a Redis rate-limit check did not allow the call.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RedisRateLimitError {
    /// Over the limit.
    #[error(transparent)]
    Limited(#[from] RateLimited),
    /// Redis could not be asked (and the limiter fails closed).
    #[error("rate limit `{name}` could not reach Redis: {source}")]
    Redis {
        /// The limiter's name.
        name: Cow<'static, str>,
        /// What redis-rs said.
        #[source]
        source: redis::RedisError,
    },
}

impl Classify for RedisRateLimitError {
    fn class(&self) -> ErrorClass {
        match self {
            RedisRateLimitError::Limited(limited) => limited.class(),
            RedisRateLimitError::Redis { .. } => ErrorClass::Transient,
        }
    }
}

/// A rate limit shared by every instance of a service: `per_second` calls per second
/// per key, with bursts of `burst`, kept in Redis (single node or cluster: each key is
/// one slot). Each check is one round trip running one Lua script, so concurrent
/// instances can never both take the last call.
///
/// ```no_run
/// use keel_resilience::rate_limit::RedisRateLimiter;
///
/// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
/// let client = redis::Client::open("redis://127.0.0.1:6379")?;
/// let connection = redis::aio::ConnectionManager::new(client).await?;
/// let limiter = RedisRateLimiter::new(connection, "graph-tenant", 100, 20);
/// limiter.check("tenant:contoso").await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisRateLimiter {
    connection: ConnectionManager,
    script: redis::Script,
    name: Cow<'static, str>,
    prefix: String,
    interval_us: u64,
    tolerance_us: u64,
    fail_open: bool,
}

impl std::fmt::Debug for RedisRateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisRateLimiter")
            .field("name", &self.name)
            .field("interval_us", &self.interval_us)
            .field("tolerance_us", &self.tolerance_us)
            .field("fail_open", &self.fail_open)
            .finish_non_exhaustive()
    }
}

impl RedisRateLimiter {
    /// `per_second` calls per second (at least 1) with bursts of `burst` (at least 1),
    /// keys prefixed with `keel:ratelimit:<name>:`. Fails closed when Redis is down.
    pub fn new(
        connection: ConnectionManager,
        name: impl Into<Cow<'static, str>>,
        per_second: u32,
        burst: u32,
    ) -> Self {
        let name = name.into();
        let interval_us = 1_000_000 / u64::from(per_second.max(1));
        RedisRateLimiter {
            connection,
            script: redis::Script::new(SCRIPT),
            prefix: format!("keel:ratelimit:{name}:"),
            name,
            interval_us,
            tolerance_us: interval_us * u64::from(burst.max(1) - 1),
            fail_open: false,
        }
    }

    /// Allow calls (and log a warning) when Redis cannot be reached, instead of refusing
    /// them.
    #[must_use]
    pub fn fail_open(mut self, fail_open: bool) -> Self {
        self.fail_open = fail_open;
        self
    }

    /// Takes one call from `key`'s limit.
    ///
    /// # Errors
    /// [`RedisRateLimitError::Limited`] when over the limit;
    /// [`RedisRateLimitError::Redis`] when Redis cannot be asked and the limiter fails
    /// closed.
    pub async fn check(&self, key: &str) -> Result<(), RedisRateLimitError> {
        let mut connection = self.connection.clone();
        let reply: Result<(i64, i64), _> = self
            .script
            .key(format!("{}{key}", self.prefix))
            .arg(self.interval_us)
            .arg(self.tolerance_us)
            .invoke_async(&mut connection)
            .await;
        match reply {
            Ok((1, _)) => Ok(()),
            Ok((_, wait_us)) => {
                metrics::counter!("resilience_rate_limited_total", "limiter" => self.name.clone())
                    .increment(1);
                let wait = Duration::from_micros(u64::try_from(wait_us).unwrap_or(0));
                Err(RateLimited::new(self.name.clone(), wait).into())
            }
            Err(source) if self.fail_open => {
                tracing::warn!(limiter = %self.name, error = %source, "Redis unreachable; rate limit failing open");
                Ok(())
            }
            Err(source) => Err(RedisRateLimitError::Redis {
                name: self.name.clone(),
                source,
            }),
        }
    }
}
