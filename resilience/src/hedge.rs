//! Hedging: when a call is slow, start another and take whichever answers first.

use std::future::Future;
use std::pin::pin;
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};

/// Hedging settings: after `delay` without an answer, start another attempt, up to
/// `max_attempts` running at once; the first success wins and the others are dropped
/// (cancelled). Only hedge idempotent work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hedge {
    delay: Duration,
    max_attempts: u32,
}

impl Hedge {
    /// Hedge after `delay`, with at most `max_attempts` attempts in all (at least 1).
    #[must_use]
    pub fn new(delay: Duration, max_attempts: u32) -> Self {
        Hedge {
            delay,
            max_attempts: max_attempts.max(1),
        }
    }

    /// Runs `attempt` (given the attempt number, from 1), starting a new one every
    /// `delay` while none has succeeded, and returns the first success. A failed
    /// attempt starts the next one at once. When all fail, returns the last error.
    ///
    /// ```
    /// use std::time::Duration;
    /// use keel_resilience::hedge::Hedge;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
    /// let hedge = Hedge::new(Duration::from_millis(50), 2);
    /// let answer = hedge
    ///     .run(|n| async move {
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
    /// The last attempt's error when every attempt failed.
    pub async fn run<T, E, F, Fut>(&self, mut attempt: F) -> Result<T, E>
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let mut running = FuturesUnordered::new();
        running.push(attempt(1));
        let mut started = 1;
        let mut last_error = None;
        loop {
            let timer = pin!(tokio::time::sleep(self.delay));
            let can_hedge = started < self.max_attempts;
            tokio::select! {
                biased;
                finished = running.next() => match finished {
                    Some(Ok(value)) => return Ok(value),
                    Some(Err(error)) => {
                        last_error = Some(error);
                        if can_hedge {
                            started += 1;
                            running.push(attempt(started));
                        } else if running.is_empty() {
                            // Every attempt has failed.
                            if let Some(error) = last_error {
                                return Err(error);
                            }
                        }
                    }
                    None => {
                        if let Some(error) = last_error.take() {
                            return Err(error);
                        }
                    }
                },
                () = timer, if can_hedge => {
                    started += 1;
                    tracing::debug!(attempt = started, "hedging a slow call");
                    metrics::counter!("resilience_hedges_total").increment(1);
                    running.push(attempt(started));
                }
            }
        }
    }
}
