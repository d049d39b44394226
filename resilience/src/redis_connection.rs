//! One way to hand Redis to every Keel crate: a [`RedisConnection`], single node or
//! cluster.
//!
//! Everything in Keel that sends commands to Redis takes a `RedisConnection` (or
//! anything that converts into one): keel-resilience's `RedisRateLimiter` and
//! `RedisDeadLetters`, keel-token-manager's `RedisStore` and `SharedTokenCache`. Two
//! things open connections of their own and so take addresses instead, with the same
//! single / cluster shape: keel-cache-layers' `RedisL2::single(url)` /
//! `RedisL2::cluster(urls)` (it also subscribes to the backplane) and keel-health's
//! `RedisCheck` (a probe must not share the application's reconnect backoff).

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisError, RedisFuture, Value};

/// A Redis connection that reconnects by itself: one node (or a primary with
/// replicas), or a Redis Cluster. Cheap to clone; clones share the connection.
///
/// ```no_run
/// use keel_resilience::RedisConnection;
/// use keel_resilience::rate_limit::{Quota, RedisRateLimiter};
///
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let redis = RedisConnection::single("redis://127.0.0.1:6379").await?;
/// // or: RedisConnection::cluster(["redis://10.0.0.1:7000", "redis://10.0.0.2:7000"]).await?;
/// // or: an existing redis-rs ConnectionManager / ClusterConnection, with `.into()`.
/// let limiter = RedisRateLimiter::new(redis.clone(), "graph-tenant", Quota::per_second(100))?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
#[non_exhaustive]
pub enum RedisConnection {
    /// One node, through redis-rs's `ConnectionManager`.
    Single(ConnectionManager),
    /// A Redis Cluster, through redis-rs's `ClusterConnection` (keys that must change
    /// together share a hash slot: Keel's keys carry `{…}` hash tags).
    Cluster(ClusterConnection),
}

impl std::fmt::Debug for RedisConnection {
    // Without addresses: a URL can hold a password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RedisConnection::Single(_) => "RedisConnection::Single",
            RedisConnection::Cluster(_) => "RedisConnection::Cluster",
        })
    }
}

/// Each connection attempt and each reply waits at most this long (redis-rs's default
/// for replies is 500 ms; a Lua script of Keel's on a busy node can take longer).
const TIMEOUT: Duration = Duration::from_secs(1);

/// The first connection, retries included, gives up after this long.
const FIRST_CONNECTION: Duration = Duration::from_secs(3);

impl RedisConnection {
    /// Connects to one node at `url` (`redis://`, `rediss://` or `unix://`): each
    /// connection attempt and each reply waits at most 1 s, and the first connection,
    /// with redis-rs's retries, at most 3 s. Later, the connection reconnects by itself.
    ///
    /// # Errors
    /// redis-rs's error when the URL is invalid or no connection was made within 3 s.
    pub async fn single(url: &str) -> Result<Self, RedisError> {
        let client = redis::Client::open(url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(TIMEOUT))
            .set_response_timeout(Some(TIMEOUT));
        let manager = tokio::time::timeout(
            FIRST_CONNECTION,
            ConnectionManager::new_with_config(client, config),
        )
        .await
        .map_err(|_| {
            RedisError::from((redis::ErrorKind::Io, "no connection to Redis within 3 s"))
        })??;
        Ok(RedisConnection::Single(manager))
    }

    /// Connects to the Redis Cluster that `urls` (any of its nodes) belong to, with 1 s
    /// limits on each connection attempt and each reply.
    ///
    /// # Errors
    /// redis-rs's error when a URL is invalid or no node answers.
    pub async fn cluster<I, S>(urls: I) -> Result<Self, RedisError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let urls: Vec<String> = urls.into_iter().map(|u| u.as_ref().to_owned()).collect();
        let client = ClusterClient::builder(urls)
            .connection_timeout(TIMEOUT)
            .response_timeout(TIMEOUT)
            .build()?;
        Ok(RedisConnection::Cluster(
            client.get_async_connection().await?,
        ))
    }

    /// Whether this is a cluster connection.
    #[must_use]
    pub fn is_cluster(&self) -> bool {
        matches!(self, RedisConnection::Cluster(_))
    }
}

impl From<ConnectionManager> for RedisConnection {
    fn from(connection: ConnectionManager) -> Self {
        RedisConnection::Single(connection)
    }
}

impl From<ClusterConnection> for RedisConnection {
    fn from(connection: ClusterConnection) -> Self {
        RedisConnection::Cluster(connection)
    }
}

impl ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConnection::Single(c) => c.req_packed_command(cmd),
            RedisConnection::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConnection::Single(c) => c.req_packed_commands(pipeline, offset, count),
            RedisConnection::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConnection::Single(c) => c.get_db(),
            RedisConnection::Cluster(c) => c.get_db(),
        }
    }
}
