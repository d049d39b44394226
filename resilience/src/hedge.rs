//! Hedging: when a call is slow, start another and take whichever answers first.
//!
//! Hedging multiplies load exactly when a dependency is slowest, so it is bounded three
//! ways: only idempotent work is hedged; a hedge starts on slowness (and, if asked, after
//! a transient error), never after a permanent or throttled error, which end the call at
//! once; and hedges draw on a budget like the retry budget (10% extra load over 10 s,
//! plus 1 per second, by default).

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};

use crate::classify::{Classify, ErrorClass};
use crate::retry::{Idempotency, RetryBudget};

/// Hedging settings: after `delay` without an answer, start another attempt, up to
/// `max_attempts` running at once; the first success wins and the others are dropped
/// (cancelled). Cheap to clone; clones share the budget.
#[derive(Clone, Debug)]
pub struct Hedge {
    delay: Duration,
    max_attempts: u32,
    on_transient_errors: bool,
    budget: Option<Arc<RetryBudget>>,
}

impl Hedge {
    /// Hedge after `delay`, with at most `max_attempts` attempts in all (at least 1), on
    /// slowness only, under a budget of 10% extra attempts over 10 s plus 1 per second.
    #[must_use]
    pub fn new(delay: Duration, max_attempts: u32) -> Self {
        Hedge {
            delay,
            max_attempts: max_attempts.max(1),
            on_transient_errors: false,
            budget: Some(Arc::new(RetryBudget::new(0.1, 1, Duration::from_secs(10)))),
        }
    }

    /// Also start the next attempt at once when one fails with a transient error
    /// (never after a permanent or throttled one).
    #[must_use]
    pub fn on_transient_errors(mut self) -> Self {
        self.on_transient_errors = true;
        self
    }

    /// Hedges draw on `budget` (shared with whatever else holds it).
    #[must_use]
    pub fn budget(mut self, budget: Arc<RetryBudget>) -> Self {
        self.budget = Some(budget);
        self
    }

    /// No budget: every slow call is hedged up to `max_attempts`. Only for a dependency
    /// that can take the extra load whatever happens.
    #[must_use]
    pub fn without_budget(mut self) -> Self {
        self.budget = None;
        self
    }

    fn may_hedge(&self) -> bool {
        self.budget.as_ref().is_none_or(|b| b.try_withdraw())
    }

    /// Runs `attempt` (given the attempt number, from 1), starting another one every
    /// `delay` while none has answered (if the budget allows), and returns the first
    /// success. Non-idempotent work runs once, unhedged. A permanent or throttled error
    /// ends the call at once (the others are cancelled); after a transient error the
    /// call goes on with the attempts still running (and starts the next at once, with
    /// [`on_transient_errors`](Self::on_transient_errors)). When all fail, the last
    /// error comes back.
    ///
    /// ```
    /// use std::time::Duration;
    /// use keel_resilience::hedge::Hedge;
    /// use keel_resilience::retry::Idempotency;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
    /// let hedge = Hedge::new(Duration::from_millis(50), 2);
    /// let answer = hedge
    ///     .run(Idempotency::Idempotent, |n| async move {
    ///         // The first replica is stuck; the hedge answers.
    ///         if n == 1 { tokio::time::sleep(Duration::from_secs(10)).await }
    ///         Ok::<_, std::io::Error>(n)
    ///     })
    ///     .await
    ///     .unwrap();
    /// assert_eq!(answer, 2);
    /// # }
    /// ```
    ///
    /// # Errors
    /// A permanent or throttled error at once; else the last attempt's error when every
    /// attempt failed.
    pub async fn run<T, E, F, Fut>(&self, idempotency: Idempotency, mut attempt: F) -> Result<T, E>
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: Classify,
    {
        if idempotency == Idempotency::NonIdempotent || self.max_attempts == 1 {
            return attempt(1).await;
        }
        if let Some(budget) = &self.budget {
            budget.deposit();
        }
        let mut running = FuturesUnordered::new();
        running.push(attempt(1));
        let mut started = 1;
        let mut last_error = None;
        // Once the budget says no, no more hedges for this call.
        let mut budget_left = true;
        loop {
            let timer = pin!(tokio::time::sleep(self.delay));
            let can_hedge = budget_left && started < self.max_attempts;
            tokio::select! {
                biased;
                finished = running.next() => match finished {
                    Some(Ok(value)) => return Ok(value),
                    Some(Err(error)) => {
                        match error.class() {
                            ErrorClass::Permanent | ErrorClass::Throttled { .. } => return Err(error),
                            _ => {}
                        }
                        if can_hedge && self.on_transient_errors && self.may_hedge() {
                            started += 1;
                            running.push(attempt(started));
                        } else if running.is_empty() {
                            return Err(error);
                        }
                        last_error = Some(error);
                    }
                    None => {
                        if let Some(error) = last_error.take() {
                            return Err(error);
                        }
                    }
                },
                () = timer, if can_hedge => {
                    if self.may_hedge() {
                        started += 1;
                        tracing::debug!(attempt = started, "hedging a slow call");
                        metrics::counter!("resilience_hedges_total").increment(1);
                        running.push(attempt(started));
                    } else {
                        budget_left = false;
                        metrics::counter!("resilience_hedges_refused_total", "reason" => "budget").increment(1);
                    }
                }
            }
        }
    }
}
