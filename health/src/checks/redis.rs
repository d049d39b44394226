use std::time::Instant;

use crate::check::{CheckResult, HealthCheck};

/// Sends `PING` and reports the round trip in ms.
///
/// ```no_run
/// # async fn example() -> Result<(), redis::RedisError> {
/// let client = redis::Client::open("redis://127.0.0.1:6379")?;
/// let check = keel_health::checks::RedisCheck::new(redis::aio::ConnectionManager::new(client).await?);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisCheck {
    connection: redis::aio::ConnectionManager,
}

impl std::fmt::Debug for RedisCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisCheck").finish_non_exhaustive()
    }
}

impl RedisCheck {
    /// A check on this connection (it reconnects by itself).
    #[must_use]
    pub fn new(connection: redis::aio::ConnectionManager) -> Self {
        RedisCheck { connection }
    }
}

#[async_trait::async_trait]
impl HealthCheck for RedisCheck {
    async fn check(&self) -> CheckResult {
        let mut connection = self.connection.clone();
        let start = Instant::now();
        match redis::cmd("PING")
            .query_async::<String>(&mut connection)
            .await
        {
            Ok(pong) if pong == "PONG" => {
                CheckResult::pass().observed(super::millis(start.elapsed()), "ms")
            }
            Ok(other) => CheckResult::fail(format!("unexpected PING reply: {other:.40}")),
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
