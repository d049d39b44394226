//! Retries: throttled answers after their `Retry-After` (or a backoff), transient
//! failures of idempotent calls, within caps on attempts and total delay.

use std::time::Duration;

use keel_resilience::retry::Backoff;
use keel_resilience::{Classify, ErrorClass};
use tower::Layer;

use super::{
    CallContext, GraphFuture, GraphHttpRequest, GraphHttpResponse, GraphService, Middleware,
    MiddlewareService, copy_request,
};
use crate::error::GraphError;

/// How calls are retried.
///
/// ```
/// use std::time::Duration;
/// use keel_graph_client::middleware::RetryPolicy;
///
/// let policy = RetryPolicy::default().attempts(6).total_delay(Duration::from_secs(120));
/// assert_eq!(policy.max_attempts(), 6);
/// ```
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    attempts: u32,
    total_delay: Duration,
    backoff: Backoff,
}

impl Default for RetryPolicy {
    /// 4 attempts, at most 60 s of waiting in all, keel-resilience's standard
    /// exponential backoff with full jitter when Graph gives no `Retry-After`.
    fn default() -> Self {
        RetryPolicy {
            attempts: 4,
            total_delay: Duration::from_secs(60),
            backoff: Backoff::standard(),
        }
    }
}

impl RetryPolicy {
    /// At most `n` attempts per call (at least 1).
    #[must_use]
    pub fn attempts(mut self, n: u32) -> Self {
        self.attempts = n.max(1);
        self
    }

    /// At most `limit` of waiting between attempts in all: a wait that would pass it
    /// ends the retries with the last answer.
    #[must_use]
    pub fn total_delay(mut self, limit: Duration) -> Self {
        self.total_delay = limit;
        self
    }

    /// The backoff when an answer has no usable `Retry-After`.
    #[must_use]
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// The most attempts per call.
    #[must_use]
    pub fn max_attempts(&self) -> u32 {
        self.attempts
    }

    /// The most waiting per call.
    #[must_use]
    pub fn max_total_delay(&self) -> Duration {
        self.total_delay
    }

    /// The backoff delay before retry `retry` (from 1), after `previous`.
    #[must_use]
    pub fn backoff_delay(&self, retry: u32, previous: Duration) -> Duration {
        self.backoff.delay(retry, previous)
    }
}

/// Retries by [`RetryPolicy`]: 429 and 503 always (throttling: the call was not run),
/// after `Retry-After` — seconds, fractional seconds or an HTTP date; a negative, huge
/// or unreadable one falls back to the backoff — and 500, 502, 504, timeouts, failed
/// connections and answers cut short only for idempotent calls
/// ([`CallContext::idempotent`]).
#[derive(Clone, Debug, Default)]
pub struct RetryLayer {
    policy: RetryPolicy,
}

impl RetryLayer {
    /// Retries by `policy`.
    #[must_use]
    pub fn new(policy: RetryPolicy) -> Self {
        RetryLayer { policy }
    }
}

impl Layer<GraphService> for RetryLayer {
    type Service = MiddlewareService<Self>;

    fn layer(&self, next: GraphService) -> Self::Service {
        MiddlewareService::new(self.clone(), next)
    }
}

impl Middleware for RetryLayer {
    fn handle(&self, next: GraphService, request: GraphHttpRequest) -> GraphFuture {
        let inner = next;
        let policy = self.policy.clone();
        Box::pin(async move {
            let context = request.extensions().get::<CallContext>();
            let idempotent = context.is_some_and(|c| c.idempotent);
            let deadline = context.and_then(|c| c.deadline);
            let mut waited = Duration::ZERO;
            let mut previous = Duration::ZERO;
            let mut attempt = 0;
            loop {
                attempt += 1;
                let mut this = copy_request(&request);
                if let Some(context) = this.extensions_mut().get_mut::<CallContext>() {
                    context.attempt = attempt;
                }
                let answer = inner.send(this).await;
                let Some(after) = verdict(&answer, idempotent) else {
                    return answer;
                };
                if attempt >= policy.attempts {
                    return answer;
                }
                let delay = after.unwrap_or_else(|| policy.backoff.delay(attempt, previous));
                if waited.saturating_add(delay) > policy.total_delay
                    || deadline.is_some_and(|d| tokio::time::Instant::now() + delay > d)
                {
                    return answer;
                }
                waited += delay;
                previous = delay;
                tracing::debug!(
                    attempt,
                    delay_ms = delay.as_millis() as u64,
                    status = answer.as_ref().ok().map(|r| r.status().as_u16()),
                    "retrying a Graph call"
                );
                tokio::time::sleep(delay).await;
            }
        })
    }
}

/// Whether an answer is retried, and after what.
fn verdict(
    answer: &Result<GraphHttpResponse, GraphError>,
    idempotent: bool,
) -> Option<Option<Duration>> {
    let class = match answer {
        Ok(response) if response.status().is_success() => return None,
        Ok(response) => {
            let status = response.status();
            if !(status.is_server_error() || status.as_u16() == 429 || status.as_u16() == 409) {
                return None;
            }
            GraphError::from_response(status, response.headers(), response.body()).class()
        }
        // No answer, or one cut short (a reset, a dropped connection): transient by the
        // error's own class, repeated only when the call is idempotent.
        Err(e @ (GraphError::Transport(_) | GraphError::Timeout(_))) => e.class(),
        Err(_) => return None,
    };
    match class {
        ErrorClass::Throttled { retry_after } => Some(retry_after),
        ErrorClass::Transient if idempotent => Some(None),
        _ => None,
    }
}
