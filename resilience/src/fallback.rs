//! Fallback: a second way to answer when the first failed.

use std::future::Future;

use crate::classify::{Classify, ErrorClass};

/// Runs `work`; if it fails with an error `should_fall_back` accepts, runs `fallback`
/// with that error and returns its result instead. Each fallback is logged and counted
/// (`resilience_fallbacks_total`).
///
/// ```
/// use keel_resilience::fallback::with_fallback;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let price = with_fallback(
///     async { Err::<u32, _>(std::io::Error::from(std::io::ErrorKind::TimedOut)) },
///     |e| keel_resilience::Classify::class(e).is_retryable(),
///     |_| async { Ok(99) }, // last known price
/// )
/// .await;
/// assert_eq!(price.unwrap(), 99);
/// # }
/// ```
///
/// # Errors
/// `work`'s error when the predicate refuses it, else `fallback`'s error.
pub async fn with_fallback<T, E, W, P, F, FFut>(
    work: W,
    should_fall_back: P,
    fallback: F,
) -> Result<T, E>
where
    W: Future<Output = Result<T, E>>,
    P: FnOnce(&E) -> bool,
    F: FnOnce(E) -> FFut,
    FFut: Future<Output = Result<T, E>>,
{
    match work.await {
        Ok(value) => Ok(value),
        Err(error) if should_fall_back(&error) => {
            tracing::debug!("falling back");
            metrics::counter!("resilience_fallbacks_total").increment(1);
            fallback(error).await
        }
        Err(error) => Err(error),
    }
}

/// The usual predicate: fall back on transient and throttled errors, not on permanent
/// ones (a bad request stays a bad request).
pub fn on_retryable<E: Classify>(error: &E) -> bool {
    !matches!(error.class(), ErrorClass::Permanent)
}
