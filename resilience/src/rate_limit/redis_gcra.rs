//! A GCRA rate limiter in Redis: one atomic script per call, on the server's clock.

use std::borrow::Cow;
use std::time::Duration;

use redis::aio::ConnectionLike;

use crate::RedisConnection;

use super::RateLimited;
use crate::classify::{Classify, ErrorClass};

/// GCRA ("generic cell rate algorithm") on one key holding the theoretical arrival time
/// (TAT). Redis's own `TIME` is the clock, so instances with skewed clocks still share
/// one limit; the key expires once it no longer constrains anything.
///
/// Exact at any rate: the TAT is whole microseconds plus a remainder in units of
/// 1/`per_second` µs, so an interval of 1,000,000/`per_second` µs (333,333.33… µs at 3
/// per second, a third of a µs at 3,000,000 per second) is added without rounding.
/// Every number stays an integer below 2^53, which Lua's doubles hold exactly. A stored
/// TAT further ahead than this limit ever sets it (a corrupt value, or one left by other
/// settings under the same name) is held at a spent burst, so it cannot refuse calls
/// for longer than one burst's worth of time.
///
/// ARGV: per_second, (burst - 1) × 1,000,000 (the tolerance, scaled by per_second).
/// Returns `{1, 0}` when allowed, `{0, wait_us}` when not.
const SCRIPT: &str = r"
local rate = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
-- The furthest ahead of now this limit ever sets its TAT (µs): burst × interval.
local span = math.floor((tolerance + 1000000) / rate) + 1
local tat, frac = now, 0
local stored = redis.call('GET', KEYS[1])
if stored then
  local sep = string.find(stored, ':', 1, true)
  if sep then
    local a, b = tonumber(string.sub(stored, 1, sep - 1)), tonumber(string.sub(stored, sep + 1))
    if a and b and (a > now or (a == now and b > 0)) then
      tat, frac = a, b
      if not (frac >= 0 and frac < rate) then frac = 0 end
      if tat - now > span then
        -- Not a state this limit writes (corrupt, or left by other settings): held
        -- at a spent burst and written back with an expiry, so it heals.
        tat, frac = now + span, 0
        redis.call('SET', KEYS[1], string.format('%d:%d', tat, frac), 'PX', math.floor(span / 1000) + 2)
      end
    end
  end
end
local ahead = (tat - now) * rate + frac
if ahead > tolerance then
  return {0, math.ceil((ahead - tolerance) / rate)}
end
local sum = frac + 1000000
tat = tat + math.floor(sum / rate)
frac = sum % rate
redis.call('SET', KEYS[1], string.format('%d:%d', tat, frac), 'PX', math.floor((tat - now) / 1000) + 2)
return {1, 0}
";

/// Why a Redis rate-limit check did not allow the call.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RedisRateLimitError {
    /// Over the limit.
    #[error(transparent)]
    Limited(#[from] RateLimited),
    /// Redis did not answer within the decision timeout (and the limiter fails closed).
    #[error("rate limit `{name}`: Redis did not answer within {after:?}")]
    Timeout {
        /// The limiter's name.
        name: Cow<'static, str>,
        /// The decision timeout.
        after: Duration,
    },
    /// Redis could not be asked (and the limiter fails closed).
    #[error("rate limit `{name}` could not reach Redis")]
    Redis {
        /// The limiter's name.
        name: Cow<'static, str>,
        /// What redis-rs said.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
}

impl Classify for RedisRateLimitError {
    fn class(&self) -> ErrorClass {
        match self {
            RedisRateLimitError::Limited(limited) => limited.class(),
            RedisRateLimitError::Redis { .. } | RedisRateLimitError::Timeout { .. } => {
                ErrorClass::Transient
            }
        }
    }
}

/// A rate limit shared by every instance of a service: a [`Quota`](super::Quota) per key,
/// kept in Redis: on a [`RedisConnection`] (single node or cluster: the default, the way
/// every Keel crate takes Redis) or any cloneable [`ConnectionLike`]; each key is one
/// slot. Each check is one round trip
/// running one Lua script, so concurrent instances can never both take the last call.
/// Any rate is kept exactly (no interval rounding, even above a million per second).
///
/// A check decides within its decision timeout (5 ms by default): when Redis is slow,
/// paused or gone, the limiter does not wait on it, and fails closed
/// ([`RedisRateLimitError::Timeout`]) or, if asked, open. Keys are
/// `keel:ratelimit:v2:<length of name>:<name>:<key>`, so two limiters' keys cannot
/// collide whatever their names hold.
///
/// ```no_run
/// use keel_resilience::rate_limit::{Quota, RedisRateLimiter};
///
/// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
/// let connection = keel_resilience::RedisConnection::single("redis://127.0.0.1:6379").await?;
/// let limiter = RedisRateLimiter::new(connection, "graph-tenant", Quota::per_second(100).burst(20)).unwrap();
/// limiter.check("tenant:contoso").await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisRateLimiter<C = RedisConnection> {
    connection: C,
    script: redis::Script,
    name: Cow<'static, str>,
    prefix: String,
    per_second: u32,
    /// (burst - 1) × 1,000,000: the tolerance in units of 1/`per_second` µs.
    tolerance_scaled: u64,
    decision_timeout: Duration,
    fail_open: bool,
}

impl<C> std::fmt::Debug for RedisRateLimiter<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisRateLimiter")
            .field("name", &self.name)
            .field("per_second", &self.per_second)
            .field("tolerance_scaled", &self.tolerance_scaled)
            .field("decision_timeout", &self.decision_timeout)
            .field("fail_open", &self.fail_open)
            .finish_non_exhaustive()
    }
}

impl<C: ConnectionLike + Clone + Send + Sync> RedisRateLimiter<C> {
    /// A limit of `quota` shared by every instance on `connection`. Fails closed when
    /// Redis is down or slower than the decision timeout (5 ms).
    ///
    /// # Errors
    /// [`ConfigError`](super::ConfigError) when the quota allows no call.
    pub fn new(
        connection: C,
        name: impl Into<Cow<'static, str>>,
        quota: super::Quota,
    ) -> Result<Self, super::ConfigError> {
        quota.validate()?;
        let (per_second, burst) = (quota.rate(), quota.max_burst());
        let name = name.into();
        Ok(RedisRateLimiter {
            connection,
            script: redis::Script::new(SCRIPT),
            prefix: format!("keel:ratelimit:v2:{}:{name}:", name.len()),
            name,
            per_second,
            tolerance_scaled: u64::from(burst - 1) * 1_000_000,
            decision_timeout: Duration::from_millis(5),
            fail_open: false,
        })
    }

    /// How long a check may wait on Redis before it decides without it (default 5 ms),
    /// failing closed, or open with [`fail_open`](Self::fail_open).
    #[must_use]
    pub fn decision_timeout(mut self, limit: Duration) -> Self {
        self.decision_timeout = limit;
        self
    }

    /// The Redis key holding `key`'s state.
    #[must_use]
    pub fn redis_key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// Allow calls (and log a warning) when Redis cannot be reached or does not answer
    /// in time, instead of refusing them.
    #[must_use]
    pub fn fail_open(mut self, fail_open: bool) -> Self {
        self.fail_open = fail_open;
        self
    }

    /// Takes one call from `key`'s limit.
    ///
    /// # Errors
    /// [`RedisRateLimitError::Limited`] when over the limit;
    /// [`RedisRateLimitError::Redis`] or [`RedisRateLimitError::Timeout`] when Redis
    /// cannot be asked in time and the limiter fails closed.
    pub async fn check(&self, key: &str) -> Result<(), RedisRateLimitError> {
        let mut connection = self.connection.clone();
        let mut invocation = self.script.key(self.redis_key(key));
        invocation.arg(self.per_second).arg(self.tolerance_scaled);
        let reply = tokio::time::timeout(
            self.decision_timeout,
            invocation.invoke_async::<(i64, i64)>(&mut connection),
        )
        .await;
        let reply = match reply {
            Ok(reply) => reply,
            Err(_) if self.fail_open => {
                tracing::warn!(limiter = %self.name, timeout = ?self.decision_timeout, "Redis too slow; rate limit failing open");
                return Ok(());
            }
            Err(_) => {
                return Err(RedisRateLimitError::Timeout {
                    name: self.name.clone(),
                    after: self.decision_timeout,
                });
            }
        };
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
                source: Box::new(source),
            }),
        }
    }
}
