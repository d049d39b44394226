//! The axum router Graph posts to.

use std::collections::{HashSet, VecDeque};
use std::hash::{Hash as _, Hasher as _};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;

use super::notification::{Notification, parse_notifications};
use super::queue::NotificationQueue;

/// The largest body accepted unless [`WebhookReceiverBuilder::body_limit`] says
/// otherwise (a POST of rich notifications can hold several hundred KiB).
pub const DEFAULT_BODY_LIMIT: usize = 4 << 20;
/// The longest `validationToken` echoed.
const MAX_VALIDATION_TOKEN: usize = 4 << 10;
/// POSTs handled at once; more get 503 (Graph delivers again).
const MAX_CONCURRENT: usize = 64;
/// How long, and how many, notifications are remembered to drop duplicates.
const DEDUP_WINDOW: Duration = Duration::from_secs(15 * 60);
const DEDUP_CAPACITY: usize = 100_000;

/// The `clientState` each subscription was created with: what a notification must
/// carry to be believed.
pub trait ClientStates: Send + Sync + 'static {
    /// Whether `presented` is a `clientState` of `subscription_id`. Compare with
    /// [`constant_time_eq`].
    fn accepts(&self, subscription_id: &str, presented: &str) -> bool;
}

/// One `clientState` for every subscription.
pub struct SharedClientState(String);

impl SharedClientState {
    /// `secret` (at least 16 bytes of randomness, as 22 base64 characters carry).
    #[must_use]
    pub fn new(secret: impl Into<String>) -> Self {
        SharedClientState(secret.into())
    }
}

impl std::fmt::Debug for SharedClientState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SharedClientState(…)")
    }
}

impl ClientStates for SharedClientState {
    fn accepts(&self, _subscription_id: &str, presented: &str) -> bool {
        constant_time_eq(self.0.as_bytes(), presented.as_bytes())
    }
}

/// Compares two byte strings in time that depends on their lengths only.
#[must_use]
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let difference = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(difference) == 0
}

/// Builds a [`WebhookReceiver`].
#[must_use]
#[allow(missing_debug_implementations)] // holds trait objects; nothing to show
pub struct WebhookReceiverBuilder {
    states: Arc<dyn ClientStates>,
    queue: Arc<dyn NotificationQueue>,
    body_limit: usize,
    validation: Option<Arc<super::ValidationTokenValidator>>,
}

impl WebhookReceiverBuilder {
    /// The largest body accepted (larger ones get 413).
    pub fn body_limit(mut self, bytes: usize) -> Self {
        self.body_limit = bytes.max(1_024);
        self
    }

    /// Checks the `validationTokens` of POSTs that carry rich notifications (resource
    /// data): refused with 403 unless Microsoft Graph signed them for this app. Without
    /// it, rich notifications are believed on their `clientState` alone.
    pub fn validation_tokens(mut self, validator: Arc<super::ValidationTokenValidator>) -> Self {
        self.validation = Some(validator);
        self
    }

    /// The receiver.
    #[must_use]
    pub fn build(self) -> WebhookReceiver {
        WebhookReceiver {
            inner: Arc::new(Inner {
                states: self.states,
                queue: self.queue,
                body_limit: self.body_limit,
                validation: self.validation,
                recent: Mutex::new(Recent::default()),
                admitted: tokio::sync::Semaphore::new(MAX_CONCURRENT),
            }),
        }
    }
}

/// Receives Graph's change and lifecycle notifications: answers the validation
/// handshake, checks each notification's `clientState`, drops duplicates, queues what it
/// accepted and answers `202 Accepted` at once (processing happens after, from the
/// queue). Bodies over the limit get 413; a body that is not Graph's notifications gets
/// 400; a POST whose every notification has a wrong `clientState` gets 403; a queue that
/// cannot take the notifications gets 503, so that Graph delivers them again.
///
/// ```
/// use std::sync::Arc;
/// use keel_graph_client::webhook::{MemoryQueue, SharedClientState, WebhookReceiver};
///
/// let queue = Arc::new(MemoryQueue::new(10_000));
/// let receiver = WebhookReceiver::builder(Arc::new(SharedClientState::new("a-long-random-secret")), queue.clone())
///     .build();
/// let app: axum::Router = receiver.router("/graph/notifications");
/// # drop(app);
/// ```
#[derive(Clone)]
pub struct WebhookReceiver {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for WebhookReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookReceiver")
            .field("body_limit", &self.inner.body_limit)
            .finish_non_exhaustive()
    }
}

struct Inner {
    states: Arc<dyn ClientStates>,
    queue: Arc<dyn NotificationQueue>,
    body_limit: usize,
    validation: Option<Arc<super::ValidationTokenValidator>>,
    recent: Mutex<Recent>,
    admitted: tokio::sync::Semaphore,
}

impl WebhookReceiver {
    /// A receiver that believes notifications carrying a `clientState` of `states`, and
    /// queues them in `queue`.
    pub fn builder(
        states: Arc<dyn ClientStates>,
        queue: Arc<dyn NotificationQueue>,
    ) -> WebhookReceiverBuilder {
        WebhookReceiverBuilder {
            states,
            queue,
            body_limit: DEFAULT_BODY_LIMIT,
            validation: None,
        }
    }

    /// An axum router serving `path` (the subscription's `notificationUrl` and
    /// `lifecycleNotificationUrl` may both point at it).
    pub fn router<S>(&self, path: &str) -> Router<S>
    where
        S: Clone + Send + Sync + 'static,
    {
        Router::new()
            .route(path, post(receive))
            .layer(DefaultBodyLimit::max(self.inner.body_limit))
            .with_state(self.clone())
    }
}

#[derive(serde::Deserialize)]
struct Handshake {
    #[serde(rename = "validationToken")]
    validation_token: Option<String>,
}

async fn receive(
    State(receiver): State<WebhookReceiver>,
    Query(handshake): Query<Handshake>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    // The validation handshake: the token, decoded, as plain text (never as HTML).
    if let Some(token) = handshake.validation_token {
        if token.len() > MAX_VALIDATION_TOKEN {
            return rejected("token_too_long", StatusCode::BAD_REQUEST);
        }
        metrics::counter!("graph_webhook_validations_total").increment(1);
        return (
            StatusCode::OK,
            [
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; charset=utf-8"),
                ),
                (
                    header::X_CONTENT_TYPE_OPTIONS,
                    HeaderValue::from_static("nosniff"),
                ),
            ],
            token,
        )
            .into_response();
    }
    let Ok(_admitted) = receiver.inner.admitted.try_acquire() else {
        return rejected_with_retry("busy");
    };
    let body = match body {
        Ok(body) => body,
        Err(rejection) => {
            let status = rejection.status();
            let reason = if status == StatusCode::PAYLOAD_TOO_LARGE {
                "too_large"
            } else {
                "unreadable"
            };
            return rejected(reason, status);
        }
    };
    let batch = match parse_notifications(&body) {
        Ok(batch) => batch,
        Err(error) => {
            tracing::warn!(%error, "webhook: refused a notification body");
            return rejected(error.reason(), StatusCode::BAD_REQUEST);
        }
    };
    let inner = &receiver.inner;
    let total = batch.notifications.len();
    let mut believed = Vec::with_capacity(total);
    for mut notification in batch.notifications {
        let state = notification.client_state.take().unwrap_or_default();
        if inner.states.accepts(&notification.subscription_id, &state) {
            believed.push(notification);
        } else {
            metrics::counter!("graph_webhook_rejected_total", "reason" => "client_state")
                .increment(1);
            tracing::warn!(
                subscription = %notification.subscription_id.chars().take(64).collect::<String>(),
                "webhook: a notification's clientState does not match its subscription's"
            );
        }
    }
    if believed.is_empty() && total > 0 {
        return StatusCode::FORBIDDEN.into_response();
    }
    if let Some(validator) = &inner.validation
        && believed.iter().any(|n| n.encrypted_content.is_some())
        && let Err(error) = validator.check(&batch.validation_tokens).await
    {
        tracing::warn!(%error, "webhook: rich notifications refused");
        return rejected("validation_token", StatusCode::FORBIDDEN);
    }
    // Duplicates are known by Graph's notification id: without one, two genuine
    // changes may look alike, so nothing is dropped (handlers are idempotent).
    let keyed: Vec<(Option<u128>, Notification)> =
        believed.into_iter().map(|n| (fingerprint(&n), n)).collect();
    let (fresh, keys) = {
        let mut recent = inner.recent.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        let mut fresh = Vec::with_capacity(keyed.len());
        let mut keys = Vec::new();
        for (key, notification) in keyed {
            match key {
                Some(key) if !recent.insert(key, now) => {
                    metrics::counter!("graph_webhook_duplicates_total").increment(1);
                }
                Some(key) => {
                    keys.push(key);
                    fresh.push(notification);
                }
                None => fresh.push(notification),
            }
        }
        (fresh, keys)
    };
    if fresh.is_empty() {
        return StatusCode::ACCEPTED.into_response();
    }
    let count = fresh.len() as u64;
    match inner.queue.push(fresh).await {
        Ok(()) => {
            metrics::counter!("graph_webhook_notifications_total").increment(count);
            StatusCode::ACCEPTED.into_response()
        }
        Err(error) => {
            // Not taken: forget them, so that Graph's next delivery is not a duplicate.
            let mut recent = inner.recent.lock().unwrap_or_else(PoisonError::into_inner);
            for key in keys {
                recent.forget(key);
            }
            tracing::error!(%error, "webhook: the queue refused notifications; Graph will deliver them again");
            metrics::counter!("graph_webhook_rejected_total", "reason" => "queue").increment(count);
            (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::RETRY_AFTER, HeaderValue::from_static("5"))],
            )
                .into_response()
        }
    }
}

fn rejected_with_retry(reason: &'static str) -> Response {
    metrics::counter!("graph_webhook_rejected_total", "reason" => reason).increment(1);
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::RETRY_AFTER, HeaderValue::from_static("5"))],
    )
        .into_response()
}

fn rejected(reason: &'static str, status: StatusCode) -> Response {
    metrics::counter!("graph_webhook_rejected_total", "reason" => reason).increment(1);
    status.into_response()
}

/// A notification's identity for duplicates: its subscription and Graph's id of it;
/// `None` without an id.
fn fingerprint(notification: &Notification) -> Option<u128> {
    let id = notification.id.as_deref()?;
    let bytes = [
        notification.subscription_id.as_bytes(),
        b"\0",
        id.as_bytes(),
    ]
    .concat();
    let mut low = std::hash::DefaultHasher::new();
    bytes.hash(&mut low);
    let mut high = std::hash::DefaultHasher::new();
    0xA5u8.hash(&mut high);
    bytes.hash(&mut high);
    Some((u128::from(high.finish()) << 64) | u128::from(low.finish()))
}

/// Recently seen notifications, bounded in time and number.
#[derive(Default)]
struct Recent {
    seen: HashSet<u128>,
    order: VecDeque<(u128, Instant)>,
}

impl Recent {
    /// False when `key` was seen within the window.
    fn insert(&mut self, key: u128, now: Instant) -> bool {
        while let Some(&(old, at)) = self.order.front() {
            if now.duration_since(at) > DEDUP_WINDOW || self.order.len() >= DEDUP_CAPACITY {
                self.order.pop_front();
                self.seen.remove(&old);
            } else {
                break;
            }
        }
        if !self.seen.insert(key) {
            return false;
        }
        self.order.push_back((key, now));
        true
    }

    /// Forgets `key` (its place in the order stays; evicting it later removes nothing
    /// that matters: at worst a duplicate is taken once more).
    fn forget(&mut self, key: u128) {
        self.seen.remove(&key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_eq_compares_whole_strings() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret!"));
        assert!(!constant_time_eq(b"", b"x"));
    }

    #[test]
    fn recent_forgets_after_its_window_and_stays_bounded() {
        let mut recent = Recent::default();
        let start = Instant::now();
        assert!(recent.insert(1, start));
        assert!(!recent.insert(1, start + Duration::from_secs(60)));
        assert!(recent.insert(1, start + DEDUP_WINDOW + Duration::from_secs(1)));
        for key in 10..(10 + DEDUP_CAPACITY as u128 + 5) {
            recent.insert(key, start + DEDUP_WINDOW + Duration::from_secs(2));
        }
        assert!(recent.order.len() <= DEDUP_CAPACITY);
        assert_eq!(recent.seen.len(), recent.order.len());
    }
}
