//! Notification → delta round → your handler, ready-made: the notification worker's
//! handler for a service that keeps a local copy current.

use std::future::Future;

use crate::delta::{ChangeFeed, FeedError};

use super::notification::{Notification, NotificationKind};
use super::subscriptions::{SubscriptionError, SubscriptionManager};

/// The handler to give [`NotificationWorker::run`](super::NotificationWorker::run)
/// when notifications only say "something changed" and a [`ChangeFeed`]'s delta rounds
/// say what: a lifecycle event goes first to the [`SubscriptionManager`]
/// (`reauthorizationRequired` renews, `subscriptionRemoved` creates the subscription
/// again), then every notification asks the feed for a round and is acknowledged. A
/// burst of notifications makes one round, however long it takes (a first full listing
/// can take longer than the worker's time limits).
///
/// Acknowledging before the round is applied loses nothing: the feed stores its place
/// only after your handler took a page, tries a failed round again by itself (with a
/// backoff; its [`status`](ChangeFeed::status) and `graph_delta_feed_rounds_total`
/// show it), and its first round after a restart covers what a crash left unapplied.
/// A lifecycle action that keeps failing fails the notification, which the worker
/// retries and then dead-letters. Stop the worker before the feed: a notification
/// handled after the feed stopped fails with [`FeedError::Stopped`].
///
/// ```no_run
/// use std::sync::Arc;
/// use keel_graph_client::delta::ChangeFeed;
/// use keel_graph_client::webhook::{KeepCurrent, MemoryQueue, NotificationWorker, SubscriptionManager};
/// use keel_resilience::dead_letter::{DeadLetterQueue, MemoryDeadLetters};
/// # async fn run(feed: ChangeFeed, manager: SubscriptionManager, queue: Arc<MemoryQueue>) {
/// let worker = NotificationWorker::new(queue, DeadLetterQueue::new("graph", MemoryDeadLetters::new()));
/// let keep = KeepCurrent::new(feed).subscriptions(manager);
/// tokio::spawn(async move { worker.run(move |n| keep.handle(n)).await });
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct KeepCurrent {
    feed: ChangeFeed,
    manager: Option<SubscriptionManager>,
}

/// Why [`KeepCurrent::handle`] failed a notification.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeepCurrentError {
    /// The lifecycle event's action failed.
    #[error("keep current: {0}")]
    Subscription(#[from] SubscriptionError),
    /// The delta round failed.
    #[error("keep current: {0}")]
    Feed(#[from] FeedError),
}

impl keel_resilience::Classify for KeepCurrentError {
    fn class(&self) -> keel_resilience::ErrorClass {
        match self {
            KeepCurrentError::Feed(e) => e.class(),
            // Graph's and the store's failures are worth another try.
            KeepCurrentError::Subscription(_) => keel_resilience::ErrorClass::Transient,
        }
    }
}

impl KeepCurrent {
    /// Notifications lead to rounds of `feed`.
    #[must_use]
    pub fn new(feed: ChangeFeed) -> Self {
        KeepCurrent {
            feed,
            manager: None,
        }
    }

    /// Lifecycle events go to `manager` first.
    #[must_use]
    pub fn subscriptions(mut self, manager: SubscriptionManager) -> Self {
        self.manager = Some(manager);
        self
    }

    /// Handles one notification (see the type's documentation).
    pub fn handle(
        &self,
        notification: Notification,
    ) -> impl Future<Output = Result<(), KeepCurrentError>> + Send + use<> {
        let (feed, manager) = (self.feed.clone(), self.manager.clone());
        async move {
            if matches!(notification.kind, NotificationKind::Lifecycle(_))
                && let Some(manager) = manager
            {
                manager.on_lifecycle(&notification).await?;
            }
            feed.try_request()?;
            Ok(())
        }
    }
}
