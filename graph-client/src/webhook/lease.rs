//! One renewer per fleet: a lease that one instance holds at a time.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

/// The future a [`Lease`] returns.
pub type LeaseFuture<'a> = Pin<Box<dyn Future<Output = Result<bool, LeaseError>> + Send + 'a>>;

/// A lease that at most one holder has at a time, for a time: taken (or extended) by
/// its holder, lost when the holder stops extending it (it died), so another takes
/// over. Object-safe: hold it as `Arc<dyn Lease>`.
pub trait Lease: Send + Sync {
    /// Takes the lease for `ttl`, or extends it when this holder has it; `true` when
    /// this holder has it afterwards.
    fn acquire<'a>(&'a self, ttl: Duration) -> LeaseFuture<'a>;
    /// Gives the lease up if this holder has it (an orderly stop: the next holder need
    /// not wait for it to expire).
    fn release<'a>(&'a self) -> LeaseFuture<'a>;
}

/// A lease store that failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LeaseError {
    /// The backend failed; the holder must act as if it did not hold the lease.
    #[error("lease: {0}")]
    Backend(String),
}

/// A lease for one process: always held (a service of one instance).
#[derive(Debug, Default, Clone, Copy)]
pub struct SoleLease;

impl Lease for SoleLease {
    fn acquire<'a>(&'a self, _ttl: Duration) -> LeaseFuture<'a> {
        Box::pin(async { Ok(true) })
    }
    fn release<'a>(&'a self) -> LeaseFuture<'a> {
        Box::pin(async { Ok(true) })
    }
}

/// A lease in Redis (feature `redis`): one key holding the holder's name, taken with
/// `SET NX PX`, extended and released by scripts that first check the holder, so a
/// holder that lost the lease (it expired while the holder was paused) cannot extend
/// or delete another's. On Redis's clock: the holders' clocks may disagree.
///
/// ```no_run
/// use keel_graph_client::webhook::RedisLease;
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let redis = keel_resilience::RedisConnection::single("redis://127.0.0.1:6379").await?;
/// let lease = RedisLease::new(redis, "svc:graph:subscriptions:renewer", "instance-a");
/// # drop(lease); Ok(()) }
/// ```
#[cfg(feature = "redis")]
#[derive(Clone)]
pub struct RedisLease {
    connection: keel_resilience::RedisConnection,
    key: String,
    holder: String,
}

#[cfg(feature = "redis")]
impl std::fmt::Debug for RedisLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLease")
            .field("key", &self.key)
            .field("holder", &self.holder)
            .finish_non_exhaustive()
    }
}

#[cfg(feature = "redis")]
const ACQUIRE: &str = r"
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
";

#[cfg(feature = "redis")]
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
";

#[cfg(feature = "redis")]
impl RedisLease {
    /// The lease under `key`, for holder `holder` (one name per instance).
    #[must_use]
    pub fn new(connection: keel_resilience::RedisConnection, key: &str, holder: &str) -> Self {
        RedisLease {
            connection,
            key: key.to_owned(),
            holder: holder.to_owned(),
        }
    }

    async fn run(&self, script: &str, ttl_ms: u64) -> Result<bool, LeaseError> {
        let mut c = self.connection.clone();
        keel_resilience::redis::Script::new(script)
            .key(&self.key)
            .arg(&self.holder)
            .arg(ttl_ms)
            .invoke_async::<i64>(&mut c)
            .await
            .map(|held| held == 1)
            .map_err(|e| LeaseError::Backend(e.to_string().chars().take(200).collect()))
    }
}

#[cfg(feature = "redis")]
impl Lease for RedisLease {
    fn acquire<'a>(&'a self, ttl: Duration) -> LeaseFuture<'a> {
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        Box::pin(self.run(ACQUIRE, ttl_ms))
    }

    fn release<'a>(&'a self) -> LeaseFuture<'a> {
        Box::pin(self.run(RELEASE, 0))
    }
}

/// A lease in PostgreSQL (feature `postgres`): one row of `keel_graph_leases` (shipped
/// in the crate's migrations: run [`PostgresDeltaStore::migrate`](crate::delta::PostgresDeltaStore::migrate)
/// first), taken or extended by one statement that succeeds only when the row is this
/// holder's or has expired, on the database's clock (the holders' clocks may
/// disagree); released only by its holder.
///
/// ```no_run
/// use keel_graph_client::webhook::PostgresLease;
/// # fn demo(pool: deadpool_postgres::Pool) {
/// let lease = PostgresLease::new(pool, "svc:graph:subscriptions:renewer", "instance-a");
/// # drop(lease); }
/// ```
#[cfg(feature = "postgres")]
#[derive(Clone)]
pub struct PostgresLease {
    pool: deadpool_postgres::Pool,
    name: String,
    holder: String,
}

#[cfg(feature = "postgres")]
impl std::fmt::Debug for PostgresLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresLease")
            .field("name", &self.name)
            .field("holder", &self.holder)
            .finish_non_exhaustive()
    }
}

#[cfg(feature = "postgres")]
impl PostgresLease {
    /// The lease `name`, for holder `holder` (one name per instance).
    #[must_use]
    pub fn new(pool: deadpool_postgres::Pool, name: &str, holder: &str) -> Self {
        PostgresLease {
            pool,
            name: name.to_owned(),
            holder: holder.to_owned(),
        }
    }

    async fn run(&self, sql: &str, ttl_ms: Option<f64>) -> Result<bool, LeaseError> {
        let failed = |e: &dyn std::fmt::Display| {
            LeaseError::Backend(e.to_string().chars().take(200).collect())
        };
        let client = self.pool.get().await.map_err(|e| failed(&e))?;
        let rows = match ttl_ms {
            Some(ms) => client.execute(sql, &[&self.name, &self.holder, &ms]).await,
            None => client.execute(sql, &[&self.name, &self.holder]).await,
        }
        .map_err(|e| failed(&e))?;
        Ok(rows == 1)
    }
}

#[cfg(feature = "postgres")]
const PG_ACQUIRE: &str = "INSERT INTO keel_graph_leases (name, holder, expires_at) \
     VALUES ($1, $2, clock_timestamp() + make_interval(secs => $3::float8 / 1000.0)) \
     ON CONFLICT (name) DO UPDATE SET holder = EXCLUDED.holder, expires_at = EXCLUDED.expires_at \
     WHERE keel_graph_leases.holder = EXCLUDED.holder OR keel_graph_leases.expires_at < clock_timestamp()";

#[cfg(feature = "postgres")]
const PG_RELEASE: &str = "DELETE FROM keel_graph_leases WHERE name = $1 AND holder = $2";

#[cfg(feature = "postgres")]
impl Lease for PostgresLease {
    fn acquire<'a>(&'a self, ttl: Duration) -> LeaseFuture<'a> {
        // Within what an interval holds (a day is far more than any renewal period).
        let ttl_ms = ttl.min(Duration::from_secs(86_400)).as_secs_f64() * 1000.0;
        Box::pin(self.run(PG_ACQUIRE, Some(ttl_ms.max(1.0))))
    }

    fn release<'a>(&'a self) -> LeaseFuture<'a> {
        Box::pin(self.run(PG_RELEASE, None))
    }
}
