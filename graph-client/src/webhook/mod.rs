//! Change notifications (webhooks): the receiver Graph posts to, the queue between the
//! acknowledgement and the processing, and the worker that hands notifications to your
//! handler (feature `webhooks`).
//!
//! Graph wants the validation handshake answered within 10 seconds and each
//! notification acknowledged within 3: the [`WebhookReceiver`] answers at once, after
//! checking each notification's `clientState` (in constant time), dropping duplicates
//! and queueing what it believed; the [`NotificationWorker`] takes them from the queue
//! to your handler with retries, and what keeps failing goes to keel-resilience's
//! dead-letter queue.
//!
//! Refusals, each counted in `graph_webhook_rejected_total` by `reason`:
//!
//! | request | answer | reason |
//! |---|---|---|
//! | a body over the limit (4 MiB by default) | 413 | `too_large` |
//! | not Graph's notifications (not JSON, wrong types, an unknown `changeType`, over 1,000 items) | 400 | `malformed`, `bad_item`, `too_many` |
//! | every notification with a wrong `clientState` | 403 | `client_state` (each) |
//! | a queue that cannot take them | 503 with `Retry-After` | `queue` |
//! | more than 64 POSTs at once | 503 with `Retry-After` | `busy` |
//!
//! Duplicates — a notification delivered again, known by its subscription and Graph's
//! notification `id`, within 15 minutes — are acknowledged and dropped
//! (`graph_webhook_duplicates_total`). A notification without an `id` is never taken
//! for a duplicate: two genuine changes to one resource can look byte for byte alike,
//! and a handler that runs a delta round is idempotent anyway.

mod decrypt;
mod keep_current;
mod lease;
mod notification;
mod queue;
mod receiver;
#[cfg(feature = "redis")]
mod redis_queue;
mod subscriptions;
mod validation;
mod worker;

pub use decrypt::{DecryptError, NotificationDecryptor};
pub use keep_current::{KeepCurrent, KeepCurrentError};
#[cfg(feature = "postgres")]
pub use lease::PostgresLease;
#[cfg(feature = "redis")]
pub use lease::RedisLease;
pub use lease::{Lease, LeaseError, LeaseFuture, SoleLease};
pub use notification::{
    ChangeType, EncryptedContent, LifecycleEvent, Notification, NotificationBatch,
    NotificationError, NotificationKind, parse_notifications,
};
pub use queue::{Delivery, MemoryQueue, NotificationQueue, QueueError, QueueFuture};
pub use receiver::{
    ClientStates, DEFAULT_BODY_LIMIT, SharedClientState, WebhookReceiver, WebhookReceiverBuilder,
    constant_time_eq,
};
#[cfg(feature = "redis")]
pub use redis_queue::RedisQueue;
pub use subscriptions::{
    ManagedSubscription, SubscriptionError, SubscriptionManager, SubscriptionSpec, max_lifetime,
};
pub use validation::{CHANGE_TRACKING_PUBLISHER, ValidationTokenError, ValidationTokenValidator};
pub use worker::NotificationWorker;
