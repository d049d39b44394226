//! Takes notifications from the queue to your handler, with retries and a dead-letter
//! queue for what keeps failing.

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use keel_resilience::Classify;
use keel_resilience::dead_letter::{DeadLetterQueue, KeepOnFailure};
use keel_resilience::pipeline::Pipeline;
use keel_resilience::retry::{Idempotency, Retry, RetryConfig};

use super::notification::Notification;
use super::queue::{NotificationQueue, QueueError};

/// Hands each queued notification to a handler through a keel-resilience
/// [`Pipeline`] (retries, breaker, time limits); a notification whose handler keeps
/// failing goes to the [`DeadLetterQueue`] (its key the subscription id, its payload the
/// notification as JSON), where an operator can list and replay it. A delivery is
/// acknowledged once handled or dead-lettered; one that could be neither stays in the
/// queue (a Redis stream gives it again).
///
/// ```
/// use std::sync::Arc;
/// use keel_graph_client::webhook::{MemoryQueue, NotificationWorker};
/// use keel_resilience::dead_letter::{DeadLetterQueue, MemoryDeadLetters};
///
/// let queue = Arc::new(MemoryQueue::new(1_000));
/// let worker = NotificationWorker::new(queue, DeadLetterQueue::new("graph-notifications", MemoryDeadLetters::new()));
/// // tokio::spawn(async move { worker.run(|n| async move { handle(n).await }).await });
/// # drop(worker);
/// ```
pub struct NotificationWorker {
    queue: Arc<dyn NotificationQueue>,
    dead_letters: DeadLetterQueue,
    pipeline: Pipeline,
}

impl fmt::Debug for NotificationWorker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NotificationWorker").finish_non_exhaustive()
    }
}

impl NotificationWorker {
    /// A worker taking from `queue`, dead-lettering into `dead_letters`, with
    /// keel-resilience's standard retry (3 attempts), 10 s an attempt and 30 s in all —
    /// and no circuit breaker: an open breaker refuses at once, which would send the
    /// whole backlog to the dead-letter queue during a short outage of what the
    /// handler writes to.
    #[must_use]
    pub fn new(queue: Arc<dyn NotificationQueue>, dead_letters: DeadLetterQueue) -> Self {
        let pipeline = Pipeline::builder("graph-notifications")
            .total_timeout(std::time::Duration::from_secs(30))
            .retry(Retry::new(RetryConfig::standard("graph-notifications")))
            .attempt_timeout(std::time::Duration::from_secs(10))
            .build();
        NotificationWorker {
            queue,
            dead_letters,
            pipeline,
        }
    }

    /// Runs handlers through `pipeline` instead.
    #[must_use]
    pub fn pipeline(mut self, pipeline: Pipeline) -> Self {
        self.pipeline = pipeline;
        self
    }

    /// Handles one notification from the queue (waiting for one); `false` once the
    /// queue is closed and empty.
    ///
    /// # Errors
    /// [`QueueError`] when the queue fails.
    pub async fn handle_one<F, Fut, E>(&self, handler: &F) -> Result<bool, QueueError>
    where
        F: Fn(Notification) -> Fut,
        Fut: Future<Output = Result<(), E>>,
        E: Classify + fmt::Display + fmt::Debug + 'static,
    {
        let Some(delivery) = self.queue.next().await? else {
            return Ok(false);
        };
        let notification = delivery.notification.clone();
        let payload = || serde_json::to_vec(&notification).unwrap_or_default();
        let outcome = self
            .pipeline
            .run_or_dead_letter(
                // A handler applies a change to a local copy: running it again is safe.
                Idempotency::Idempotent,
                &self.dead_letters,
                KeepOnFailure::new(notification.subscription_id.clone(), payload),
                || handler(delivery.notification.clone()),
            )
            .await;
        match outcome {
            Ok(()) => {
                metrics::counter!("graph_webhook_handled_total", "outcome" => "ok").increment(1);
                self.queue.ack(&delivery).await?;
            }
            Err(failed) if failed.is_kept() => {
                metrics::counter!("graph_webhook_handled_total", "outcome" => "dead_lettered")
                    .increment(1);
                tracing::warn!(error = %failed, "webhook: a notification's handler kept failing; it is in the dead-letter queue");
                self.queue.ack(&delivery).await?;
            }
            Err(failed) => {
                metrics::counter!("graph_webhook_handled_total", "outcome" => "not_kept")
                    .increment(1);
                tracing::error!(error = %failed, "webhook: a notification's handler failed and the dead-letter queue did not take it; it goes back to the queue");
                self.queue.release(&delivery).await?;
            }
        }
        Ok(true)
    }

    /// Handles notifications until the queue is closed and empty; a failing queue is
    /// logged and tried again a second later.
    pub async fn run<F, Fut, E>(&self, handler: F)
    where
        F: Fn(Notification) -> Fut,
        Fut: Future<Output = Result<(), E>>,
        E: Classify + fmt::Display + fmt::Debug + 'static,
    {
        loop {
            match self.handle_one(&handler).await {
                Ok(true) => {}
                Ok(false) => return,
                Err(error) => {
                    metrics::counter!("graph_webhook_queue_failures_total").increment(1);
                    tracing::error!(%error, "webhook: the notification queue failed; trying again in a second");
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                }
            }
        }
    }
}
