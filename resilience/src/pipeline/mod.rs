//! One call through every policy, in a fixed, documented order.
//!
//! Outermost first:
//!
//! ```text
//! rate limit → total timeout → retry → circuit breaker → bulkhead → attempt timeout → work
//! ```
//!
//! - The **rate limit** is checked once per call, so retries never count twice against it.
//! - The **total timeout** bounds everything, retries and their delays included.
//! - **Retry** runs attempts; each attempt asks the **breaker** for a permit. A refusal
//!   by the pipeline's own breaker ends the call at once ([`PipelineError::CircuitOpen`],
//!   with the breaker's `retry_after` for the caller): waiting out an open breaker would
//!   hold every caller for the whole open period. A delay that would end after the total
//!   timeout (a long `Retry-After`) is not slept either: the error comes back at once,
//!   with its delay.
//! - The **bulkhead** bounds concurrent attempts, and the **attempt timeout** bounds each
//!   one. A timed-out attempt counts as a breaker failure; a bulkhead refusal does not
//!   (the dependency was never asked).
//!
//! This is the order Polly v8's standard HTTP pipeline uses, with a bulkhead added
//! inside the breaker.

mod layer;

pub use layer::{
    AlwaysIdempotent, ByMethod, HttpRequest, PipelineLayer, PipelineService, RequestIdempotency,
    ResponseFuture,
};

use std::borrow::Cow;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::breaker::{CallNotPermitted, CircuitBreaker, CircuitBreakerConfig, Outcome, Permit};
use crate::bulkhead::{Bulkhead, BulkheadFull};
use crate::classify::{Classify, ErrorClass};
use crate::rate_limit::{RateLimited, RateLimiter};
use crate::retry::{Idempotency, Retry, RetryConfig};
use crate::timeout::{OptionalTimeout, TimeoutError};

/// Why a call through a [`Pipeline`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PipelineError<E> {
    /// The rate limit refused the call.
    #[error(transparent)]
    RateLimited(RateLimited),
    /// The whole call, retries included, ran out of time.
    #[error("the call ran out of time: {0}")]
    TotalTimeout(TimeoutError),
    /// The circuit breaker refused the (last) attempt.
    #[error(transparent)]
    CircuitOpen(CallNotPermitted),
    /// The bulkhead was full for the (last) attempt.
    #[error(transparent)]
    BulkheadFull(BulkheadFull),
    /// The (last) attempt ran out of time.
    #[error("the attempt ran out of time: {0}")]
    AttemptTimeout(TimeoutError),
    /// The work itself failed.
    #[error(transparent)]
    Inner(E),
}

impl<E> PipelineError<E> {
    /// The work's own error, if that is what failed.
    pub fn into_inner(self) -> Option<E> {
        match self {
            PipelineError::Inner(e) => Some(e),
            _ => None,
        }
    }

    /// The policy that stopped the call, or `"inner"`: for logs and metrics.
    #[must_use]
    pub fn policy(&self) -> &'static str {
        match self {
            PipelineError::RateLimited(_) => "rate_limit",
            PipelineError::TotalTimeout(_) => "total_timeout",
            PipelineError::CircuitOpen(_) => "circuit_breaker",
            PipelineError::BulkheadFull(_) => "bulkhead",
            PipelineError::AttemptTimeout(_) => "attempt_timeout",
            PipelineError::Inner(_) => "inner",
        }
    }
}

impl<E: Classify> Classify for PipelineError<E> {
    fn class(&self) -> ErrorClass {
        match self {
            PipelineError::RateLimited(e) => e.class(),
            PipelineError::TotalTimeout(e) | PipelineError::AttemptTimeout(e) => e.class(),
            PipelineError::CircuitOpen(e) => e.class(),
            PipelineError::BulkheadFull(e) => e.class(),
            PipelineError::Inner(e) => e.class(),
        }
    }
}

/// The policies of one dependency, composed. Cheap to clone; clones share state.
///
/// ```
/// use std::time::Duration;
/// use keel_resilience::pipeline::Pipeline;
/// use keel_resilience::retry::Idempotency;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let pipeline = Pipeline::standard("inventory");
/// let stock = pipeline
///     .run(Idempotency::Idempotent, || async { Ok::<_, std::io::Error>(42) })
///     .await
///     .unwrap();
/// assert_eq!(stock, 42);
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct Pipeline {
    name: Cow<'static, str>,
    rate_limiter: Option<Arc<RateLimiter>>,
    total_timeout: Option<Duration>,
    retry: Option<Retry>,
    breaker: Option<Arc<CircuitBreaker>>,
    bulkhead: Option<Bulkhead>,
    attempt_timeout: Option<Duration>,
}

impl Pipeline {
    /// The standard pipeline: no rate limit, 30 s in total, the standard retry (3
    /// attempts, 20% budget), the standard breaker, no bulkhead, 10 s per attempt.
    pub fn standard(name: impl Into<Cow<'static, str>>) -> Self {
        let name = name.into();
        Pipeline::builder(name.clone())
            .total_timeout(Duration::from_secs(30))
            .retry(Retry::new(RetryConfig::standard(name.clone())))
            .circuit_breaker(Arc::new(CircuitBreaker::new(
                CircuitBreakerConfig::standard(name),
            )))
            .attempt_timeout(Duration::from_secs(10))
            .build()
    }

    /// An empty pipeline to add policies to.
    pub fn builder(name: impl Into<Cow<'static, str>>) -> PipelineBuilder {
        PipelineBuilder {
            pipeline: Pipeline {
                name: name.into(),
                rate_limiter: None,
                total_timeout: None,
                retry: None,
                breaker: None,
                bulkhead: None,
                attempt_timeout: None,
            },
        }
    }

    /// The pipeline's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The breaker, to read its state or force it.
    #[must_use]
    pub fn circuit_breaker(&self) -> Option<&Arc<CircuitBreaker>> {
        self.breaker.as_ref()
    }

    /// Runs `work` (called once per attempt) through every policy.
    ///
    /// # Errors
    /// A [`PipelineError`] naming the policy that stopped the call, or the work's own
    /// error.
    pub async fn run<T, E, F, Fut>(
        &self,
        idempotency: Idempotency,
        mut work: F,
    ) -> Result<T, PipelineError<E>>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: Classify,
    {
        if let Some(limiter) = &self.rate_limiter {
            limiter.check().map_err(PipelineError::RateLimited)?;
        }
        let deadline = self
            .total_timeout
            .and_then(|limit| tokio::time::Instant::now().checked_add(limit));
        let attempts = async {
            match &self.retry {
                Some(retry) => {
                    retry
                        .run_inner(
                            idempotency,
                            deadline,
                            |error: &PipelineError<E>| match error {
                                // Our own breaker's refusal: fail fast, not a wait.
                                PipelineError::CircuitOpen(_) => ErrorClass::Permanent,
                                other => other.class(),
                            },
                            |_| self.attempt(&mut work),
                        )
                        .await
                }
                None => self.attempt(&mut work).await,
            }
        };
        let result = match OptionalTimeout::new(self.total_timeout, attempts).await {
            Ok(result) => result,
            Err(elapsed) => Err(PipelineError::TotalTimeout(elapsed)),
        };
        if let Err(error) = &result {
            metrics::counter!(
                "resilience_pipeline_failures_total",
                "pipeline" => self.name.clone(), "policy" => error.policy()
            )
            .increment(1);
        }
        result
    }

    /// One attempt: breaker permit, bulkhead slot, attempt timeout, work.
    fn attempt<'a, T, E, F, Fut>(
        &'a self,
        work: &mut F,
    ) -> impl Future<Output = Result<T, PipelineError<E>>> + use<'a, T, E, F, Fut>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>> + 'a,
        E: Classify,
    {
        let future = work();
        async move {
            let permit = match &self.breaker {
                Some(breaker) => Some(breaker.try_acquire().map_err(PipelineError::CircuitOpen)?),
                None => None,
            };
            // Until the bulkhead gives a slot the dependency has not been asked: a caller
            // that gives up while queued (its total timeout, a cancellation) or is refused
            // a slot does not count against the breaker.
            let mut unasked = NotYetAsked(permit);
            let _slot = match &self.bulkhead {
                Some(bulkhead) => Some(
                    bulkhead
                        .acquire()
                        .await
                        .map_err(PipelineError::BulkheadFull)?,
                ),
                None => None,
            };
            let permit = unasked.0.take();
            let result = match OptionalTimeout::new(self.attempt_timeout, future).await {
                Ok(result) => result.map_err(PipelineError::Inner),
                Err(elapsed) => Err(PipelineError::AttemptTimeout(elapsed)),
            };
            if let Some(permit) = permit {
                permit.record(match &result {
                    Ok(_) => Outcome::Success,
                    Err(error) => match error.class() {
                        ErrorClass::Permanent => Outcome::Ignored,
                        _ => Outcome::Failure,
                    },
                });
            }
            result
        }
    }
}

/// A breaker permit for an attempt that has not reached the dependency yet: dropped
/// while it still holds the permit, the attempt counts as ignored, not abandoned.
struct NotYetAsked<'a>(Option<Permit<'a>>);

impl Drop for NotYetAsked<'_> {
    fn drop(&mut self) {
        if let Some(permit) = self.0.take() {
            permit.record(Outcome::Ignored);
        }
    }
}

/// Builds a [`Pipeline`]. Policies run in the documented order whatever order they are
/// added in.
#[derive(Debug)]
#[must_use]
pub struct PipelineBuilder {
    pipeline: Pipeline,
}

impl PipelineBuilder {
    /// Checks a rate limit once per call.
    pub fn rate_limit(mut self, limiter: Arc<RateLimiter>) -> Self {
        self.pipeline.rate_limiter = Some(limiter);
        self
    }

    /// Bounds the whole call.
    pub fn total_timeout(mut self, limit: Duration) -> Self {
        self.pipeline.total_timeout = Some(limit);
        self
    }

    /// Retries failed attempts.
    pub fn retry(mut self, retry: Retry) -> Self {
        self.pipeline.retry = Some(retry);
        self
    }

    /// Asks a (shared) breaker before each attempt.
    pub fn circuit_breaker(mut self, breaker: Arc<CircuitBreaker>) -> Self {
        self.pipeline.breaker = Some(breaker);
        self
    }

    /// Bounds concurrent attempts.
    pub fn bulkhead(mut self, bulkhead: Bulkhead) -> Self {
        self.pipeline.bulkhead = Some(bulkhead);
        self
    }

    /// Bounds each attempt.
    pub fn attempt_timeout(mut self, limit: Duration) -> Self {
        self.pipeline.attempt_timeout = Some(limit);
        self
    }

    /// The pipeline.
    #[must_use]
    pub fn build(self) -> Pipeline {
        self.pipeline
    }
}
