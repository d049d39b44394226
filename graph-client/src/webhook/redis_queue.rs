//! Acknowledged notifications in a Redis stream (feature `redis`): a crash after the
//! 202 loses nothing.

use keel_resilience::RedisConnection;
use keel_resilience::redis::{self, Value};

use super::notification::Notification;
use super::queue::{Delivery, NotificationQueue, QueueError, QueueFuture};

/// How long a read waits for a new entry (under the connection's 1 s response limit).
const BLOCK_MS: u64 = 500;

/// A queue in a Redis stream (single node or cluster; one key, so one slot), read by a
/// consumer group: a notification stays in the stream until a worker acknowledges it
/// (`XACK`, then `XDEL`), and one that a worker took but did not acknowledge within
/// `claim_after` (the worker died) is taken over by the next worker that asks
/// (`XAUTOCLAIM`). Pushes are atomic (`MULTI`); the stream holds at most `capacity`
/// entries (a push beyond that is refused, and the receiver answers 503, so Graph
/// delivers again).
///
/// ```no_run
/// use std::time::Duration;
/// use keel_graph_client::webhook::RedisQueue;
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let redis = keel_resilience::RedisConnection::single("redis://127.0.0.1:6379").await?;
/// let queue = RedisQueue::new(redis, "svc:graph:notifications", "worker-1")
///     .await?
///     .claim_after(Duration::from_secs(60));
/// # drop(queue); Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisQueue {
    connection: RedisConnection,
    key: String,
    consumer: String,
    capacity: usize,
    claim_after_ms: u64,
}

impl std::fmt::Debug for RedisQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisQueue")
            .field("key", &self.key)
            .field("consumer", &self.consumer)
            .finish_non_exhaustive()
    }
}

/// The consumer group every worker reads in.
const GROUP: &str = "workers";

fn backend(error: &redis::RedisError) -> QueueError {
    QueueError::Backend(error.to_string().chars().take(200).collect())
}

impl RedisQueue {
    /// A queue in stream `key`, read as consumer `consumer` (one name per worker
    /// process); creates the stream and its group if missing. Holds at most 100,000
    /// notifications; entries taken by a worker and not acknowledged within 5 minutes
    /// go to another.
    ///
    /// # Errors
    /// [`QueueError::Backend`] when Redis cannot be reached.
    pub async fn new(
        connection: RedisConnection,
        key: &str,
        consumer: &str,
    ) -> Result<Self, QueueError> {
        let queue = RedisQueue {
            connection,
            key: key.to_owned(),
            consumer: consumer.to_owned(),
            capacity: 100_000,
            claim_after_ms: 300_000,
        };
        queue.ensure_group().await?;
        Ok(queue)
    }

    /// Creates the stream and its consumer group unless they exist: at start, and again
    /// when Redis lost them (restarted without its data).
    async fn ensure_group(&self) -> Result<(), QueueError> {
        let mut c = self.connection.clone();
        let created: Result<Value, _> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&self.key)
            .arg(GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut c)
            .await;
        match created {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            Err(e) => Err(backend(&e)),
        }
    }

    /// Entries a worker took and did not acknowledge within `after` are given to
    /// another (make it longer than a handler's longest run).
    #[must_use]
    pub fn claim_after(mut self, after: std::time::Duration) -> Self {
        self.claim_after_ms = u64::try_from(after.as_millis()).unwrap_or(u64::MAX).max(1);
        self
    }

    /// At most `capacity` notifications waiting.
    #[must_use]
    pub fn capacity(mut self, capacity: usize) -> Self {
        self.capacity = capacity.max(1);
        self
    }

    /// Turns a stream entry (`[id, [field, value, …]]`) into a delivery; `None` for an
    /// entry that is not one of ours.
    fn delivery(entry: &Value) -> Option<Result<Delivery, String>> {
        let Value::Array(parts) = entry else {
            return None;
        };
        let id = match parts.first()? {
            Value::BulkString(id) => String::from_utf8(id.clone()).ok()?,
            Value::SimpleString(id) => id.clone(),
            _ => return None,
        };
        let fields = match parts.get(1) {
            Some(Value::Array(fields)) => fields,
            // A claimed entry deleted meanwhile comes back without fields.
            _ => return Some(Err(id)),
        };
        let payload = fields.chunks(2).find_map(|pair| match pair {
            [Value::BulkString(name), Value::BulkString(value)] if name == b"n" => Some(value),
            _ => None,
        });
        Some(
            payload
                .and_then(|p| serde_json::from_slice::<Notification>(p).ok())
                .map(|notification| Delivery {
                    notification,
                    id: id.clone(),
                })
                .ok_or(id),
        )
    }

    /// The first entry of an `XREADGROUP` or `XAUTOCLAIM` answer.
    fn first_entry(answer: &Value, claim: bool) -> Option<&Value> {
        let Value::Array(top) = answer else {
            return None;
        };
        if claim {
            // [next-cursor, [entries…], [deleted ids…]]
            match top.get(1)? {
                Value::Array(entries) => entries.first(),
                _ => None,
            }
        } else {
            // [[key, [entries…]]] (RESP2) or a map (RESP3)
            match top.first()? {
                Value::Array(stream) => match stream.get(1)? {
                    Value::Array(entries) => entries.first(),
                    _ => None,
                },
                _ => None,
            }
        }
    }

    async fn drop_entry(&self, id: &str) -> Result<(), QueueError> {
        let mut c = self.connection.clone();
        redis::pipe()
            .atomic()
            .cmd("XACK")
            .arg(&self.key)
            .arg(GROUP)
            .arg(id)
            .ignore()
            .cmd("XDEL")
            .arg(&self.key)
            .arg(id)
            .ignore()
            .query_async::<()>(&mut c)
            .await
            .map_err(|e| backend(&e))
    }
}

impl NotificationQueue for RedisQueue {
    fn push<'a>(&'a self, notifications: Vec<Notification>) -> QueueFuture<'a, ()> {
        Box::pin(async move {
            let mut c = self.connection.clone();
            let waiting: usize = redis::cmd("XLEN")
                .arg(&self.key)
                .query_async(&mut c)
                .await
                .map_err(|e| backend(&e))?;
            if waiting + notifications.len() > self.capacity {
                return Err(QueueError::Full(waiting));
            }
            let mut pipe = redis::pipe();
            pipe.atomic();
            for notification in &notifications {
                let json = serde_json::to_vec(notification).unwrap_or_default();
                pipe.cmd("XADD")
                    .arg(&self.key)
                    .arg("*")
                    .arg("n")
                    .arg(json)
                    .ignore();
            }
            pipe.query_async::<()>(&mut c)
                .await
                .map_err(|e| backend(&e))
        })
    }

    fn next<'a>(&'a self) -> QueueFuture<'a, Option<Delivery>> {
        Box::pin(async move {
            loop {
                let mut c = self.connection.clone();
                // An entry another worker took and never acknowledged, first.
                let claimed: Result<Value, _> = redis::cmd("XAUTOCLAIM")
                    .arg(&self.key)
                    .arg(GROUP)
                    .arg(&self.consumer)
                    .arg(self.claim_after_ms)
                    .arg("0-0")
                    .arg("COUNT")
                    .arg(1)
                    .query_async(&mut c)
                    .await;
                let claimed = match claimed {
                    Ok(claimed) => claimed,
                    // Redis came back without the group (a restart without its data):
                    // create it again, and read on.
                    Err(e) if e.code() == Some("NOGROUP") => {
                        tracing::warn!(key = %self.key, "webhook: the notification stream's group was gone (Redis lost its data); created again");
                        self.ensure_group().await?;
                        continue;
                    }
                    Err(e) => return Err(backend(&e)),
                };
                let entry = match Self::first_entry(&claimed, true) {
                    Some(entry) => Some(entry.clone()),
                    None => {
                        let read: Result<Value, _> = redis::cmd("XREADGROUP")
                            .arg("GROUP")
                            .arg(GROUP)
                            .arg(&self.consumer)
                            .arg("COUNT")
                            .arg(1)
                            .arg("BLOCK")
                            .arg(BLOCK_MS)
                            .arg("STREAMS")
                            .arg(&self.key)
                            .arg(">")
                            .query_async(&mut c)
                            .await;
                        let read = match read {
                            Ok(read) => read,
                            Err(e) if e.code() == Some("NOGROUP") => {
                                self.ensure_group().await?;
                                continue;
                            }
                            Err(e) => return Err(backend(&e)),
                        };
                        Self::first_entry(&read, false).cloned()
                    }
                };
                let Some(entry) = entry else { continue };
                match Self::delivery(&entry) {
                    Some(Ok(delivery)) => return Ok(Some(delivery)),
                    Some(Err(id)) => {
                        metrics::counter!("graph_webhook_queue_skipped_total").increment(1);
                        tracing::warn!(entry = %id, "webhook: a stream entry that is not a notification was skipped and removed");
                        self.drop_entry(&id).await?;
                    }
                    None => {}
                }
            }
        })
    }

    fn ack<'a>(&'a self, delivery: &'a Delivery) -> QueueFuture<'a, ()> {
        Box::pin(async move { self.drop_entry(&delivery.id).await })
    }

    fn release<'a>(&'a self, _delivery: &'a Delivery) -> QueueFuture<'a, ()> {
        // Left pending: claimed again after `claim_after`.
        Box::pin(async { Ok(()) })
    }
}
