//! A pipeline call whose failure is kept in a dead-letter queue instead of dropped.

use std::fmt;
use std::future::Future;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::SystemTime;

use super::{DeadLetterError, DeadLetterQueue, LetterId, NewLetter};
use crate::classify::Classify;
use crate::pipeline::{Pipeline, PipelineError};
use crate::retry::Idempotency;

/// What to keep when a call fails for good: the work's key, its payload (built only on
/// failure) and the request's correlation id.
///
/// ```
/// use keel_resilience::dead_letter::KeepOnFailure;
///
/// let keep = KeepOnFailure::new("order-42", || b"{\"id\":42}".to_vec())
///     .correlation_id("4bf92f3577b34da6a3ce929d0e0e4736");
/// # let _ = keep;
/// ```
#[must_use]
pub struct KeepOnFailure<P> {
    key: String,
    payload: P,
    correlation_id: Option<String>,
}

impl<P> fmt::Debug for KeepOnFailure<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeepOnFailure")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl<P: FnOnce() -> Vec<u8>> KeepOnFailure<P> {
    /// Keep the work `key`, with the payload `payload()` returns.
    pub fn new(key: impl Into<String>, payload: P) -> Self {
        KeepOnFailure {
            key: key.into(),
            payload,
            correlation_id: None,
        }
    }

    /// The correlation id of the request doing the work.
    pub fn correlation_id(mut self, id: impl Into<String>) -> Self {
        self.correlation_id = Some(id.into());
        self
    }
}

/// A call that failed for good, and what became of its letter.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct DeadLettered<E: fmt::Display + fmt::Debug + 'static> {
    /// Why the call failed.
    #[source]
    pub error: PipelineError<E>,
    /// The letter's id, or why it could not be kept: then nothing holds the work but
    /// the caller, who should log it or keep it elsewhere.
    pub letter: Result<LetterId, DeadLetterError>,
}

impl<E: fmt::Display + fmt::Debug + 'static> DeadLettered<E> {
    /// Whether the work is safe in the queue.
    #[must_use]
    pub fn is_kept(&self) -> bool {
        self.letter.is_ok()
    }
}

impl Pipeline {
    /// [`run`](Self::run), and when the call fails for good (retries exhausted or not
    /// allowed, a permanent error, the total timeout, or a policy refusing it) the work
    /// goes to `dead_letters`: its key and payload, the error's class and message, the
    /// attempts that reached the dependency, the first and last failure times, the
    /// correlation id, and this pipeline's name as the source.
    ///
    /// ```
    /// use keel_resilience::dead_letter::{DeadLetterQueue, KeepOnFailure, MemoryDeadLetters};
    /// use keel_resilience::pipeline::Pipeline;
    /// use keel_resilience::retry::Idempotency;
    /// use keel_resilience::{Classify, ErrorClass};
    ///
    /// #[derive(Debug)]
    /// struct Refused;
    /// impl std::fmt::Display for Refused {
    ///     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { f.write_str("400 Bad Request") }
    /// }
    /// impl Classify for Refused {
    ///     fn class(&self) -> ErrorClass { ErrorClass::Permanent }
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let dead_letters = DeadLetterQueue::new("orders", MemoryDeadLetters::new());
    /// let pipeline = Pipeline::standard("orders-api");
    /// let failed = pipeline
    ///     .run_or_dead_letter(
    ///         Idempotency::NonIdempotent,
    ///         &dead_letters,
    ///         KeepOnFailure::new("order-42", || b"{\"id\":42}".to_vec()),
    ///         || async { Err::<(), _>(Refused) },
    ///     )
    ///     .await
    ///     .unwrap_err();
    /// assert!(failed.is_kept());
    /// let letter = &dead_letters.list(None, 1).await.unwrap()[0];
    /// assert_eq!((letter.key(), letter.message(), letter.source()), ("order-42", "400 Bad Request", "orders-api"));
    /// # }
    /// ```
    ///
    /// # Errors
    /// [`DeadLettered`]: the pipeline's error, and the letter's id or why it could not
    /// be kept.
    pub async fn run_or_dead_letter<T, E, F, Fut, P>(
        &self,
        idempotency: Idempotency,
        dead_letters: &DeadLetterQueue,
        keep: KeepOnFailure<P>,
        mut work: F,
    ) -> Result<T, DeadLettered<E>>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: Classify + fmt::Display + fmt::Debug + 'static,
        P: FnOnce() -> Vec<u8>,
    {
        let attempts = AtomicU32::new(0);
        let first_failure = Mutex::new(None::<SystemTime>);
        let result = self
            .run(idempotency, || {
                let future = work();
                let (attempts, first_failure) = (&attempts, &first_failure);
                async move {
                    // Counted when it runs: an attempt refused by the breaker or the
                    // bulkhead never reached the dependency.
                    attempts.fetch_add(1, Ordering::Relaxed);
                    let result = future.await;
                    if result.is_err() {
                        first_failure
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .get_or_insert_with(SystemTime::now);
                    }
                    result
                }
            })
            .await;
        let error = match result {
            Ok(value) => return Ok(value),
            Err(error) => error,
        };
        let last = SystemTime::now();
        let first = first_failure
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .unwrap_or(last);
        let mut letter =
            NewLetter::new(keep.key, (keep.payload)(), error.class(), error.to_string())
                .with_attempts(attempts.into_inner())
                .with_failure_times(first, last)
                .with_source(self.name().to_owned());
        if let Some(id) = keep.correlation_id {
            letter = letter.with_correlation_id(id);
        }
        let letter = dead_letters.push(letter).await;
        Err(DeadLettered { error, letter })
    }
}
