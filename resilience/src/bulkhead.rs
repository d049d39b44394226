//! Bulkheads: a limit on concurrent calls, with a bounded wait for a slot.

use std::borrow::Cow;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

use crate::classify::{Classify, ErrorClass};

/// The bulkhead was full and no slot freed up within the wait.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "bulkhead `{name}` is full ({max_concurrent} calls running) and no slot freed within {waited:?}"
)]
pub struct BulkheadFull {
    name: Cow<'static, str>,
    max_concurrent: usize,
    waited: Duration,
}

impl Classify for BulkheadFull {
    fn class(&self) -> ErrorClass {
        ErrorClass::Throttled { retry_after: None }
    }
}

/// Limits how many calls run at once. A call waits at most `max_wait` for a slot; the
/// slot is released when the call finishes or is cancelled.
///
/// ```
/// use std::time::Duration;
/// use keel_resilience::bulkhead::Bulkhead;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let bulkhead = Bulkhead::new("reports", 4, Duration::from_millis(50)).unwrap();
/// let report = bulkhead.run(async { "done" }).await.unwrap();
/// assert_eq!(report, "done");
/// assert!(Bulkhead::new("none", 0, Duration::ZERO).is_err());
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct Bulkhead {
    name: Cow<'static, str>,
    semaphore: Arc<Semaphore>,
    max_concurrent: usize,
    max_wait: Duration,
}

/// A bulkhead's settings cannot work.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// `max_concurrent` is zero (no call could ever run) or above what a semaphore holds.
    #[error("a bulkhead's max_concurrent must be between 1 and {max}, got {got}")]
    MaxConcurrent {
        /// What was asked.
        got: usize,
        /// The most a bulkhead holds.
        max: usize,
    },
}

impl Bulkhead {
    /// At most `max_concurrent` calls at once; callers wait up to `max_wait` for a slot
    /// (zero: refuse at once when full).
    ///
    /// # Errors
    /// [`ConfigError::MaxConcurrent`] when `max_concurrent` is zero (no call
    /// could run) or too large, instead of quietly changing it.
    pub fn new(
        name: impl Into<Cow<'static, str>>,
        max_concurrent: usize,
        max_wait: Duration,
    ) -> Result<Self, ConfigError> {
        if max_concurrent == 0 || max_concurrent > Semaphore::MAX_PERMITS {
            return Err(ConfigError::MaxConcurrent {
                got: max_concurrent,
                max: Semaphore::MAX_PERMITS,
            });
        }
        Ok(Bulkhead {
            name: name.into(),
            semaphore: Arc::new(Semaphore::new(max_concurrent)),
            max_concurrent,
            max_wait,
        })
    }

    /// Slots free now.
    #[must_use]
    pub fn available(&self) -> usize {
        self.semaphore.available_permits()
    }

    /// Runs `work` once a slot is free.
    ///
    /// # Errors
    /// [`BulkheadFull`] when no slot freed within the wait.
    pub async fn run<F: Future>(&self, work: F) -> Result<F::Output, BulkheadFull> {
        let _slot = self.acquire().await?;
        // The slot lives in this future: dropping the future (cancellation) frees it.
        Ok(work.await)
    }

    /// Waits for a slot and returns it; the slot is freed when the guard is dropped.
    ///
    /// # Errors
    /// [`BulkheadFull`] when no slot freed within the wait.
    pub async fn acquire(&self) -> Result<BulkheadSlot, BulkheadFull> {
        // A free slot is taken without arming a timer; only a full bulkhead waits.
        let permit = match self.semaphore.clone().try_acquire_owned() {
            Ok(permit) => Some(permit),
            Err(_) if self.max_wait.is_zero() => None,
            Err(_) => tokio::time::timeout(self.max_wait, self.semaphore.clone().acquire_owned())
                .await
                .ok()
                .and_then(Result::ok),
        };
        let Some(permit) = permit else {
            metrics::counter!("resilience_bulkhead_rejected_total", "bulkhead" => self.name.clone())
                .increment(1);
            return Err(BulkheadFull {
                name: self.name.clone(),
                max_concurrent: self.max_concurrent,
                waited: self.max_wait,
            });
        };
        Ok(BulkheadSlot { _permit: permit })
    }
}

/// A slot in a [`Bulkhead`], freed on drop.
#[derive(Debug)]
#[must_use = "the slot is freed as soon as the guard is dropped"]
pub struct BulkheadSlot {
    _permit: tokio::sync::OwnedSemaphorePermit,
}
