//! Retry with backoff, delays taken from the error, a budget, and respect for
//! idempotency.
//!
//! An attempt that fails is retried when all of these hold:
//! - its error is [transient or throttled](crate::ErrorClass), not permanent;
//! - the work is idempotent (or the policy was told to retry non-idempotent work);
//! - attempts are left (`max_attempts` counts the first one);
//! - the delay fits in what is left of `max_elapsed`, if one is set, and before the
//!   caller's deadline ([`Retry::run_until`]; the [`Pipeline`](crate::pipeline::Pipeline)
//!   passes its total timeout): a `Retry-After` of 60 s with 30 s left is not slept,
//!   the error comes back at once with its delay, for the caller or a queue to honour;
//! - the shared [`RetryBudget`] has a retry left.
//!
//! The delay is the error's own (`Retry-After`, through
//! [`crate::ErrorClass::Throttled`]) when it gave one, else the
//! [`Backoff`]'s.

mod backoff;
mod budget;

use std::borrow::Cow;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

pub use backoff::Backoff;
pub use budget::RetryBudget;

use crate::classify::{Classify, ErrorClass};

/// Whether running the work twice is safe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Idempotency {
    /// Safe to repeat (GET, PUT, DELETE, or a POST with an idempotency key).
    Idempotent,
    /// Not safe to repeat: never retried unless the policy allows it.
    NonIdempotent,
}

impl Idempotency {
    /// The idempotency of an HTTP method per RFC 9110 §9.2.2.
    #[must_use]
    pub fn of_method(method: &http::Method) -> Self {
        match *method {
            http::Method::GET
            | http::Method::HEAD
            | http::Method::OPTIONS
            | http::Method::TRACE
            | http::Method::PUT
            | http::Method::DELETE => Idempotency::Idempotent,
            _ => Idempotency::NonIdempotent,
        }
    }
}

/// Why a retry policy stopped and returned the last error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum GaveUp {
    /// The error is permanent.
    Permanent,
    /// The work is not idempotent.
    NotIdempotent,
    /// No attempts left.
    Attempts,
    /// The next delay would pass `max_elapsed`.
    Elapsed,
    /// The retry budget is spent.
    Budget,
    /// The next delay would end after the caller's deadline.
    Deadline,
}

impl GaveUp {
    fn as_str(self) -> &'static str {
        match self {
            GaveUp::Permanent => "permanent",
            GaveUp::NotIdempotent => "not_idempotent",
            GaveUp::Attempts => "attempts",
            GaveUp::Elapsed => "elapsed",
            GaveUp::Budget => "budget",
            GaveUp::Deadline => "deadline",
        }
    }
}

/// Why a retry configuration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// `max_attempts` is zero.
    #[error("max_attempts counts the first attempt and must be at least 1")]
    Attempts,
    /// The backoff's base is above its max.
    #[error("the backoff's base delay must not exceed its max delay")]
    Backoff,
    /// The budget ratio is negative or not finite.
    #[error("the retry budget ratio must be a finite number >= 0 (0.2 = 20% extra load), got {0}")]
    Ratio(String),
}

/// Retry settings.
///
/// ```
/// use std::time::Duration;
/// use keel_resilience::retry::{Backoff, RetryConfig};
///
/// let config = RetryConfig::builder("graph")
///     .max_attempts(5)
///     .max_elapsed(Duration::from_secs(60))
///     .backoff(Backoff::Decorrelated {
///         base: Duration::from_millis(100),
///         max: Duration::from_secs(10),
///     })
///     .build()?;
/// assert!(RetryConfig::builder("x").max_attempts(0).build().is_err());
/// # Ok::<(), keel_resilience::retry::ConfigError>(())
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct RetryConfig {
    name: Cow<'static, str>,
    max_attempts: u32,
    max_elapsed: Option<Duration>,
    backoff: Backoff,
    budget_ratio: Option<f64>,
    budget_min_per_second: u32,
    budget_window: Duration,
    retry_non_idempotent: bool,
}

impl RetryConfig {
    /// 3 attempts, exponential backoff from 200 ms to 30 s with full jitter, no elapsed
    /// limit, a 20% budget over 10 s with 10 retries per second in reserve,
    /// non-idempotent work not retried.
    pub fn standard(name: impl Into<Cow<'static, str>>) -> Self {
        RetryConfig {
            name: name.into(),
            max_attempts: 3,
            max_elapsed: None,
            backoff: Backoff::standard(),
            budget_ratio: Some(0.2),
            budget_min_per_second: 10,
            budget_window: Duration::from_secs(10),
            retry_non_idempotent: false,
        }
    }

    /// A builder from [`standard`](Self::standard).
    pub fn builder(name: impl Into<Cow<'static, str>>) -> RetryConfigBuilder {
        RetryConfigBuilder {
            config: Self::standard(name),
        }
    }
}

/// Builds a [`RetryConfig`].
#[derive(Clone, Debug)]
#[must_use]
pub struct RetryConfigBuilder {
    config: RetryConfig,
}

impl RetryConfigBuilder {
    /// Attempts in all, the first included.
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.config.max_attempts = attempts;
        self
    }

    /// Stop when the next delay would end after this long since the first attempt.
    pub fn max_elapsed(mut self, elapsed: Duration) -> Self {
        self.config.max_elapsed = Some(elapsed);
        self
    }

    /// The delays when the error gives none.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.config.backoff = backoff;
        self
    }

    /// Retries may add at most `ratio` extra load over `window` (plus `min_per_second`).
    pub fn budget(mut self, ratio: f64, min_per_second: u32, window: Duration) -> Self {
        self.config.budget_ratio = Some(ratio);
        self.config.budget_min_per_second = min_per_second;
        self.config.budget_window = window;
        self
    }

    /// No budget: every retryable failure is retried up to `max_attempts`.
    pub fn without_budget(mut self) -> Self {
        self.config.budget_ratio = None;
        self
    }

    /// Retry work declared non-idempotent too.
    pub fn retry_non_idempotent(mut self, retry: bool) -> Self {
        self.config.retry_non_idempotent = retry;
        self
    }

    /// Checks the settings.
    ///
    /// # Errors
    /// A [`ConfigError`] saying which setting is wrong.
    pub fn build(self) -> Result<RetryConfig, ConfigError> {
        let c = &self.config;
        if c.max_attempts == 0 {
            return Err(ConfigError::Attempts);
        }
        if !c.backoff.is_valid() {
            return Err(ConfigError::Backoff);
        }
        if let Some(ratio) = c.budget_ratio
            && !(ratio.is_finite() && ratio >= 0.0)
        {
            return Err(ConfigError::Ratio(ratio.to_string()));
        }
        Ok(self.config)
    }
}

struct Inner {
    config: RetryConfig,
    budget: Option<RetryBudget>,
    retries: metrics::Counter,
}

/// A retry policy. Cheap to clone; clones share the budget.
///
/// ```
/// use std::sync::atomic::{AtomicU32, Ordering};
/// use keel_resilience::retry::{Idempotency, Retry, RetryConfig};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
/// let retry = Retry::new(RetryConfig::standard("inventory"));
/// let calls = AtomicU32::new(0);
/// let stock = retry
///     .run(Idempotency::Idempotent, |_attempt| async {
///         if calls.fetch_add(1, Ordering::SeqCst) == 0 {
///             Err(std::io::Error::from(std::io::ErrorKind::ConnectionReset))
///         } else {
///             Ok(42)
///         }
///     })
///     .await
///     .unwrap();
/// assert_eq!((stock, calls.load(Ordering::SeqCst)), (42, 2));
/// # }
/// ```
#[derive(Clone)]
pub struct Retry {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Retry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Retry")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl Retry {
    /// A policy from `config`.
    #[must_use]
    pub fn new(config: RetryConfig) -> Self {
        let budget = config.budget_ratio.map(|ratio| {
            RetryBudget::new(ratio, config.budget_min_per_second, config.budget_window)
        });
        let retries =
            metrics::counter!("resilience_retries_total", "policy" => config.name.clone());
        Retry {
            inner: Arc::new(Inner {
                config,
                budget,
                retries,
            }),
        }
    }

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &RetryConfig {
        &self.inner.config
    }

    /// Runs `attempt` (given the attempt number, from 1) until it succeeds or the policy
    /// gives up, and returns the last result.
    ///
    /// # Errors
    /// The last attempt's error.
    pub async fn run<T, E, F, Fut>(&self, idempotency: Idempotency, attempt: F) -> Result<T, E>
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: Classify,
    {
        self.run_inner(idempotency, None, Classify::class, attempt)
            .await
    }

    /// Like [`run`](Self::run), knowing that the caller gives up at `deadline`: a retry
    /// whose delay would end after it is not slept, and the last error comes back at
    /// once (with its `retry_after`, if it was throttled).
    ///
    /// ```
    /// use std::time::Duration;
    /// use keel_resilience::{Classify, ErrorClass};
    /// use keel_resilience::retry::{Idempotency, Retry, RetryConfig};
    ///
    /// #[derive(Debug)]
    /// struct TooMany; // a 429 with Retry-After: 60
    /// impl Classify for TooMany {
    ///     fn class(&self) -> ErrorClass {
    ///         ErrorClass::Throttled { retry_after: Some(Duration::from_secs(60)) }
    ///     }
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
    /// let retry = Retry::new(RetryConfig::standard("graph"));
    /// let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    /// let started = tokio::time::Instant::now();
    /// let result = retry
    ///     .run_until(deadline, Idempotency::Idempotent, |_| async { Err::<(), _>(TooMany) })
    ///     .await;
    /// assert!(result.is_err());
    /// assert_eq!(started.elapsed(), Duration::ZERO, "60 s do not fit in 30 s: not slept");
    /// # }
    /// ```
    ///
    /// # Errors
    /// The last attempt's error.
    pub async fn run_until<T, E, F, Fut>(
        &self,
        deadline: Instant,
        idempotency: Idempotency,
        attempt: F,
    ) -> Result<T, E>
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: Classify,
    {
        self.run_inner(idempotency, Some(deadline), Classify::class, attempt)
            .await
    }

    /// Like [`run`](Self::run), classifying errors with `classify`.
    ///
    /// # Errors
    /// The last attempt's error.
    pub async fn run_classified<T, E, F, Fut, C>(
        &self,
        idempotency: Idempotency,
        classify: C,
        attempt: F,
    ) -> Result<T, E>
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<T, E>>,
        C: Fn(&E) -> ErrorClass,
    {
        self.run_inner(idempotency, None, classify, attempt).await
    }

    /// The loop behind every `run`: `deadline` is when the caller gives up, if it said.
    pub(crate) async fn run_inner<T, E, F, Fut, C>(
        &self,
        idempotency: Idempotency,
        deadline: Option<Instant>,
        classify: C,
        mut attempt: F,
    ) -> Result<T, E>
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<T, E>>,
        C: Fn(&E) -> ErrorClass,
    {
        let config = &self.inner.config;
        if let Some(budget) = &self.inner.budget {
            budget.deposit();
        }
        // Read the clock only when a time limit needs it.
        let start = config.max_elapsed.map(|_| Instant::now());
        let mut previous = Duration::ZERO;
        let mut number = 1;
        loop {
            let error = match attempt(number).await {
                Ok(value) => return Ok(value),
                Err(error) => error,
            };
            let class = classify(&error);
            let delay = class
                .retry_after()
                .unwrap_or_else(|| config.backoff.delay(number, previous));
            if let Some(reason) = self.stop(class, idempotency, number, start, deadline, delay) {
                tracing::debug!(policy = %config.name, attempts = number, reason = reason.as_str(), "retry gave up");
                if reason != GaveUp::Permanent {
                    metrics::counter!(
                        "resilience_retry_gave_up_total",
                        "policy" => config.name.clone(), "reason" => reason.as_str()
                    )
                    .increment(1);
                }
                return Err(error);
            }
            tracing::debug!(policy = %config.name, attempt = number, delay_ms = delay.as_millis() as u64, "retrying");
            self.inner.retries.increment(1);
            tokio::time::sleep(delay).await;
            previous = delay;
            number += 1;
        }
    }

    fn stop(
        &self,
        class: ErrorClass,
        idempotency: Idempotency,
        number: u32,
        start: Option<Instant>,
        deadline: Option<Instant>,
        delay: Duration,
    ) -> Option<GaveUp> {
        let config = &self.inner.config;
        if !class.is_retryable() {
            return Some(GaveUp::Permanent);
        }
        if idempotency == Idempotency::NonIdempotent && !config.retry_non_idempotent {
            return Some(GaveUp::NotIdempotent);
        }
        if number >= config.max_attempts {
            return Some(GaveUp::Attempts);
        }
        // Checked sums: a delay too long for the clock (a `Duration::MAX` from an
        // error's `Classify`) does not fit either limit; it must not panic.
        if let (Some(max), Some(start)) = (config.max_elapsed, start)
            && start
                .elapsed()
                .checked_add(delay)
                .is_none_or(|end| end > max)
        {
            return Some(GaveUp::Elapsed);
        }
        if let Some(deadline) = deadline
            && Instant::now()
                .checked_add(delay)
                .is_none_or(|end| end >= deadline)
        {
            return Some(GaveUp::Deadline);
        }
        if let Some(budget) = &self.inner.budget
            && !budget.try_withdraw()
        {
            return Some(GaveUp::Budget);
        }
        None
    }
}
