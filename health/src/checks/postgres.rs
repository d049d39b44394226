use tokio::time::Instant;

use crate::check::{CheckResult, HealthCheck};

/// Runs `SELECT 1` on a connection from a deadpool-postgres pool and reports the round
/// trip in ms.
///
/// ```no_run
/// use deadpool_postgres::{Config, Runtime};
///
/// let mut config = Config::new();
/// config.url = Some("postgres://app@127.0.0.1:5432/app".into());
/// let pool = config.create_pool(Some(Runtime::Tokio1), tokio_postgres::NoTls).unwrap();
/// let check = keel_health::checks::PostgresCheck::new(pool);
/// ```
#[derive(Clone)]
pub struct PostgresCheck {
    pool: deadpool_postgres::Pool,
}

impl std::fmt::Debug for PostgresCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresCheck").finish_non_exhaustive()
    }
}

impl PostgresCheck {
    /// A check on this pool.
    #[must_use]
    pub fn new(pool: deadpool_postgres::Pool) -> Self {
        PostgresCheck { pool }
    }
}

#[async_trait::async_trait]
impl HealthCheck for PostgresCheck {
    async fn check(&self) -> CheckResult {
        let start = Instant::now();
        let client = match self.pool.get().await {
            Ok(client) => client,
            // Pool errors can quote the connection string: report the category only.
            Err(deadpool_postgres::PoolError::Timeout(_)) => {
                return CheckResult::fail("timed out waiting for a connection");
            }
            Err(_) => return CheckResult::fail("could not get a connection from the pool"),
        };
        match client.query_one("SELECT 1", &[]).await {
            Ok(row) if row.get::<_, i32>(0) == 1 => {
                CheckResult::pass().observed(super::millis(start.elapsed()), "ms")
            }
            Ok(_) => CheckResult::fail("SELECT 1 returned something else"),
            Err(e) => CheckResult::fail(format!(
                "SELECT 1 failed{}",
                e.code()
                    .map(|c| format!(" ({})", c.code()))
                    .unwrap_or_default()
            )),
        }
    }

    fn component_type(&self) -> &'static str {
        "datastore"
    }

    fn measurement(&self) -> &'static str {
        "responseTime"
    }
}
