//! Where acknowledged notifications wait for their handler.

use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;

use tokio::sync::mpsc;

use super::notification::Notification;

/// The future a [`NotificationQueue`] returns.
pub type QueueFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, QueueError>> + Send + 'a>>;

/// A queue of notifications the receiver acknowledged: it must hold them until a worker
/// has handled them. Object-safe: hold it as `Arc<dyn NotificationQueue>`.
pub trait NotificationQueue: Send + Sync {
    /// Adds `notifications`, all or none; done when this returns.
    fn push<'a>(&'a self, notifications: Vec<Notification>) -> QueueFuture<'a, ()>;
    /// The next notification, waiting for one; `None` once the queue is closed and
    /// empty.
    fn next<'a>(&'a self) -> QueueFuture<'a, Option<Delivery>>;
    /// Marks a delivery handled: it will not be given again.
    fn ack<'a>(&'a self, delivery: &'a Delivery) -> QueueFuture<'a, ()>;
    /// Gives a delivery back, not handled: it will be given again (a Redis stream keeps
    /// it pending until another worker claims it; memory puts it back).
    fn release<'a>(&'a self, delivery: &'a Delivery) -> QueueFuture<'a, ()>;
}

/// A notification taken from a queue, to acknowledge once handled.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Delivery {
    /// The notification.
    pub notification: Notification,
    /// The queue's id of it (a Redis stream entry id; empty in memory).
    pub id: String,
}

/// A queue that failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QueueError {
    /// The queue is full: the receiver answers 503 and Graph delivers again.
    #[error(
        "notification queue: full ({0} waiting); handle notifications faster or give the queue more room"
    )]
    Full(usize),
    /// The queue's backend failed.
    #[error("notification queue: {0}")]
    Backend(String),
}

/// A bounded in-process queue. What it holds is lost if the process dies: the next
/// delta round covers the gap (the notifications only said that something changed).
#[derive(Debug)]
pub struct MemoryQueue {
    capacity: usize,
    sender: mpsc::Sender<Notification>,
    receiver: tokio::sync::Mutex<mpsc::Receiver<Notification>>,
    /// Serializes pushes so that a batch is taken whole or not at all.
    pushing: Mutex<()>,
}

impl MemoryQueue {
    /// A queue holding at most `capacity` notifications.
    #[must_use]
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        let (sender, receiver) = mpsc::channel(capacity);
        MemoryQueue {
            capacity,
            sender,
            receiver: tokio::sync::Mutex::new(receiver),
            pushing: Mutex::new(()),
        }
    }

    /// Notifications waiting.
    #[must_use]
    pub fn len(&self) -> usize {
        self.capacity - self.sender.capacity()
    }

    /// No notification waiting.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl NotificationQueue for MemoryQueue {
    fn push<'a>(&'a self, notifications: Vec<Notification>) -> QueueFuture<'a, ()> {
        let result = (|| {
            let _one = self
                .pushing
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if self.sender.capacity() < notifications.len() {
                return Err(QueueError::Full(self.len()));
            }
            for notification in notifications {
                self.sender
                    .try_send(notification)
                    .map_err(|_| QueueError::Full(self.len()))?;
            }
            Ok(())
        })();
        Box::pin(async move { result })
    }

    fn next<'a>(&'a self) -> QueueFuture<'a, Option<Delivery>> {
        Box::pin(async move {
            let mut receiver = self.receiver.lock().await;
            Ok(receiver.recv().await.map(|notification| Delivery {
                notification,
                id: String::new(),
            }))
        })
    }

    fn ack<'a>(&'a self, _delivery: &'a Delivery) -> QueueFuture<'a, ()> {
        Box::pin(async { Ok(()) })
    }

    fn release<'a>(&'a self, delivery: &'a Delivery) -> QueueFuture<'a, ()> {
        self.push(vec![delivery.notification.clone()])
    }
}

impl MemoryQueue {
    /// Stops taking notifications (pushes fail, the receiver answers 503): a worker
    /// drains what is left, then `next` gives `None`. For an orderly shutdown.
    pub async fn close(&self) {
        self.receiver.lock().await.close();
    }
}
