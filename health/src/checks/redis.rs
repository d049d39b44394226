use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, RedisResult};

use crate::check::{CheckResult, HealthCheck};

/// Sends `PING` on a connection of its own and reports the round trip in ms.
///
/// The check says what Redis is like when it runs, so a probe reflects Redis within
/// the registry's cache TTL plus this check's own time (at most the registration's
/// timeout), when Redis goes away and when it comes back:
///
/// - It opens its own connection from `client` and keeps it between runs. It does not
///   borrow the application's redis-rs `ConnectionManager`, whose reconnect backoff
///   (by default six retries doubling from 100 ms, with jitter) kept readiness
///   failing for up to seconds after Redis was back.
/// - Nothing reconnects in the background and nothing backs off. A run that finds the
///   kept connection gone (Redis restarted, the connection dropped) opens a new one
///   and asks again at once, so a restart between two runs is not reported as a
///   failure; a run without a kept connection opens one. That is at most one
///   connection attempt per run, and the registry runs a check at most once per TTL,
///   however many probes arrive.
/// - Any failure discards the connection; the next run starts afresh.
/// - A connection attempt gives up after
///   [`connection_timeout`](Self::connection_timeout) (default 500 ms), a `PING`
///   after [`response_timeout`](Self::response_timeout) (default 500 ms). The
///   registration's timeout (default 1 s) bounds the whole run.
///
/// `new` does not connect: the first run does.
///
/// ```
/// use std::time::Duration;
/// use keel_health::checks::RedisCheck;
/// use keel_health::{HealthRegistry, Registration};
///
/// // No `redis` dependency of your own needed: keel-health re-exports the one it takes.
/// let client = keel_health::redis::Client::open("redis://127.0.0.1:6379")?;
/// let check = RedisCheck::new(client)
///     .connection_timeout(Duration::from_millis(300))
///     .response_timeout(Duration::from_millis(300));
/// // Readiness follows Redis within 2 s plus at most the 1 s timeout, both ways.
/// let health = HealthRegistry::builder()
///     .cache_ttl(Duration::from_secs(2))
///     .register(Registration::new("redis", check).timeout(Duration::from_secs(1)))
///     .build();
/// # Ok::<(), keel_health::redis::RedisError>(())
/// ```
#[derive(Clone)]
pub struct RedisCheck {
    client: Client,
    connection_timeout: Duration,
    response_timeout: Duration,
    /// The connection kept from the last passing run, shared by clones.
    kept: Arc<Mutex<Option<MultiplexedConnection>>>,
}

impl std::fmt::Debug for RedisCheck {
    // Without the client: its connection info can hold a password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisCheck")
            .field("connection_timeout", &self.connection_timeout)
            .field("response_timeout", &self.response_timeout)
            .finish_non_exhaustive()
    }
}

impl RedisCheck {
    /// The default for [`connection_timeout`](Self::connection_timeout).
    pub const DEFAULT_CONNECTION_TIMEOUT: Duration = Duration::from_millis(500);
    /// The default for [`response_timeout`](Self::response_timeout).
    pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_millis(500);

    /// A check that connects with `client` on its first run.
    #[must_use]
    pub fn new(client: Client) -> Self {
        RedisCheck {
            client,
            connection_timeout: Self::DEFAULT_CONNECTION_TIMEOUT,
            response_timeout: Self::DEFAULT_RESPONSE_TIMEOUT,
            kept: Arc::default(),
        }
    }

    /// How long one connection attempt may take (default 500 ms).
    #[must_use]
    pub fn connection_timeout(mut self, timeout: Duration) -> Self {
        self.connection_timeout = timeout;
        // A connection made with other settings is not reused.
        self.kept = Arc::default();
        self
    }

    /// How long one `PING` may wait for its answer (default 500 ms).
    #[must_use]
    pub fn response_timeout(mut self, timeout: Duration) -> Self {
        self.response_timeout = timeout;
        self.kept = Arc::default();
        self
    }

    fn kept(&self) -> MutexGuard<'_, Option<MultiplexedConnection>> {
        self.kept.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn ping_on_new_connection(&self) -> RedisResult<(MultiplexedConnection, String)> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.connection_timeout))
            .set_response_timeout(Some(self.response_timeout));
        let mut connection = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        let reply = ping(&mut connection).await?;
        Ok((connection, reply))
    }
}

async fn ping(connection: &mut MultiplexedConnection) -> RedisResult<String> {
    redis::cmd("PING").query_async(connection).await
}

#[async_trait::async_trait]
impl HealthCheck for RedisCheck {
    async fn check(&self) -> CheckResult {
        let start = Instant::now();
        // Taken out, and put back only after a pass: a run that fails or is cancelled
        // by its timeout leaves no connection behind.
        let kept = self.kept().take();
        let reply = match kept {
            Some(mut connection) => match ping(&mut connection).await {
                // The kept connection is gone, Redis may well be back: ask it now
                // rather than fail this run and wait a TTL for the next.
                Err(e) if e.is_unrecoverable_error() => self.ping_on_new_connection().await,
                reply => reply.map(|reply| (connection, reply)),
            },
            None => self.ping_on_new_connection().await,
        };
        match reply {
            Ok((connection, reply)) if reply == "PONG" => {
                *self.kept() = Some(connection);
                CheckResult::pass().observed(super::millis(start.elapsed()), "ms")
            }
            Ok((_, other)) => CheckResult::fail(format!("unexpected PING reply: {other:.40}")),
            // The error's category only: redis-rs error text can carry the URL.
            Err(e) => CheckResult::fail(format!("redis unreachable: {:?}", e.kind())),
        }
    }

    fn component_type(&self) -> &'static str {
        "datastore"
    }

    fn measurement(&self) -> &'static str {
        "responseTime"
    }
}
