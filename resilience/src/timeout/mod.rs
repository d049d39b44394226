//! Time limits: per attempt, or in total around a retry loop.

mod layer;

pub use layer::{ResponseFuture, TimeoutLayer, TimeoutService};

use std::future::Future;
use std::time::Duration;

use crate::classify::{Classify, ErrorClass};

/// The work did not finish in time. It was cancelled: its future was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("timed out after {after:?}")]
pub struct TimeoutError {
    after: Duration,
}

impl TimeoutError {
    /// The limit that passed.
    #[must_use]
    pub fn after(&self) -> Duration {
        self.after
    }
}

impl Classify for TimeoutError {
    fn class(&self) -> ErrorClass {
        ErrorClass::Transient
    }
}

/// Either the limit passed or the work failed.
#[derive(Debug, thiserror::Error)]
pub enum TimeoutOr<E> {
    /// The limit passed.
    #[error(transparent)]
    Elapsed(TimeoutError),
    /// The work failed in time.
    #[error(transparent)]
    Inner(E),
}

impl<E: Classify> Classify for TimeoutOr<E> {
    fn class(&self) -> ErrorClass {
        match self {
            TimeoutOr::Elapsed(e) => e.class(),
            TimeoutOr::Inner(e) => e.class(),
        }
    }
}

/// Runs `work` for at most `limit`. When the limit passes, `work` is dropped (so it stops
/// at its next await point and releases what it holds) and a `TimeoutError` returned.
///
/// ```
/// use std::time::Duration;
/// use keel_resilience::timeout::with_timeout;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
/// let slow = with_timeout(Duration::from_secs(1), tokio::time::sleep(Duration::from_secs(5))).await;
/// assert_eq!(slow.unwrap_err().to_string(), "timed out after 1s");
/// # }
/// ```
///
/// # Errors
/// [`TimeoutError`] when the limit passed first.
pub async fn with_timeout<F: Future>(limit: Duration, work: F) -> Result<F::Output, TimeoutError> {
    OptionalTimeout::new(Some(limit), work).await
}

/// [`with_timeout`] for fallible work, flattening the two errors.
///
/// # Errors
/// [`TimeoutOr::Elapsed`] when the limit passed, [`TimeoutOr::Inner`] when the work
/// failed.
pub async fn try_with_timeout<F, T, E>(limit: Duration, work: F) -> Result<T, TimeoutOr<E>>
where
    F: Future<Output = Result<T, E>>,
{
    match with_timeout(limit, work).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(TimeoutOr::Inner(e)),
        Err(elapsed) => Err(TimeoutOr::Elapsed(elapsed)),
    }
}

pin_project_lite::pin_project! {
    /// `work` with an optional time limit, holding `work` once whether or not a limit
    /// is set (branching between a timed and an untimed future would store it twice).
    pub(crate) struct OptionalTimeout<F> {
        #[pin]
        work: F,
        #[pin]
        sleep: Option<tokio::time::Sleep>,
        limit: Duration,
    }
}

impl<F: Future> OptionalTimeout<F> {
    pub(crate) fn new(limit: Option<Duration>, work: F) -> Self {
        OptionalTimeout {
            work,
            sleep: limit.map(tokio::time::sleep),
            limit: limit.unwrap_or_default(),
        }
    }
}

impl<F: Future> Future for OptionalTimeout<F> {
    type Output = Result<F::Output, TimeoutError>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let this = self.project();
        if let std::task::Poll::Ready(output) = this.work.poll(cx) {
            return std::task::Poll::Ready(Ok(output));
        }
        if let Some(sleep) = this.sleep.as_pin_mut()
            && sleep.poll(cx).is_ready()
        {
            tracing::debug!(
                limit_ms = u64::try_from(this.limit.as_millis()).unwrap_or(u64::MAX),
                "timed out"
            );
            metrics::counter!("resilience_timeouts_total").increment(1);
            return std::task::Poll::Ready(Err(TimeoutError { after: *this.limit }));
        }
        std::task::Poll::Pending
    }
}
