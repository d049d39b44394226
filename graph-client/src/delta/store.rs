//! Where a delta tracker keeps its place: a store of small values by key.

use std::collections::HashMap;
use std::future::Future;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Mutex, PoisonError};

/// The future a [`DeltaStore`] returns.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// Where a [`DeltaTracker`](super::DeltaTracker) keeps its link between pages and
/// between runs. Object-safe: hold it as `Arc<dyn DeltaStore>`. A value is written
/// whole or not at all: a crash never leaves half a link.
///
/// ```
/// use keel_graph_client::delta::{DeltaStore, MemoryDeltaStore};
///
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let store = MemoryDeltaStore::new();
/// store.save("users", "https://graph.microsoft.com/v1.0/users/delta?$deltatoken=abc").await.unwrap();
/// assert!(store.load("users").await.unwrap().is_some());
/// store.remove("users").await.unwrap();
/// assert_eq!(store.load("users").await.unwrap(), None);
/// # });
/// ```
pub trait DeltaStore: Send + Sync {
    /// The value saved under `key`, if any.
    fn load<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<String>>;
    /// Saves `value` under `key`, replacing what was there; done when this returns.
    fn save<'a>(&'a self, key: &'a str, value: &'a str) -> StoreFuture<'a, ()>;
    /// Forgets `key`.
    fn remove<'a>(&'a self, key: &'a str) -> StoreFuture<'a, ()>;
}

/// A store that failed: what it was doing and why.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A file store could not read or write its file.
    #[error("delta store: {action} {path}: {source}; check the directory exists and is writable")]
    Io {
        /// What it was doing.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// A key too long for a file store (at most 100 bytes: a file name holds its hex).
    #[error(
        "delta store: a key of {0} bytes is too long for a file store (at most 100); use a shorter key"
    )]
    KeyTooLong(usize),
    /// A stored value is not a tracker's state (written by something else, or damaged).
    #[error(
        "delta store: the value under {key:?} is not a delta tracker's state; remove it to start again"
    )]
    Corrupt {
        /// The key (at most 64 characters of it).
        key: String,
    },
}

/// The longest key a file store takes (its hex, 200 characters, is the file name).
const MAX_KEY: usize = 100;

/// An in-memory store: a process's links, gone when it stops (the next run starts a
/// full round).
#[derive(Debug, Default)]
pub struct MemoryDeltaStore {
    values: Mutex<HashMap<String, String>>,
}

impl MemoryDeltaStore {
    /// An empty store.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }
}

impl DeltaStore for MemoryDeltaStore {
    fn load<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<String>> {
        let value = self
            .values
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
            .cloned();
        Box::pin(async move { Ok(value) })
    }

    fn save<'a>(&'a self, key: &'a str, value: &'a str) -> StoreFuture<'a, ()> {
        self.values
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key.to_owned(), value.to_owned());
        Box::pin(async { Ok(()) })
    }

    fn remove<'a>(&'a self, key: &'a str) -> StoreFuture<'a, ()> {
        self.values
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(key);
        Box::pin(async { Ok(()) })
    }
}

/// A store of one file per key in a directory, each written atomically: the new value
/// goes to a temporary file, is synced to disk, then renamed over the old one (and the
/// directory synced), so a crash leaves the old value or the new, never a mix.
///
/// ```
/// use keel_graph_client::delta::{DeltaStore, FileDeltaStore};
///
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let dir = std::env::temp_dir().join(format!("keel-delta-doc-{}", std::process::id()));
/// let store = FileDeltaStore::new(&dir).unwrap();
/// store.save("contoso/users", "https://graph.microsoft.com/v1.0/users/delta?$deltatoken=abc").await.unwrap();
/// let again = FileDeltaStore::new(&dir).unwrap();
/// assert!(again.load("contoso/users").await.unwrap().is_some());
/// # std::fs::remove_dir_all(&dir).unwrap();
/// # });
/// ```
#[derive(Debug, Clone)]
pub struct FileDeltaStore {
    dir: PathBuf,
}

impl FileDeltaStore {
    /// A store in `dir`, created if missing.
    ///
    /// # Errors
    /// [`StoreError::Io`] when the directory cannot be created.
    pub fn new(dir: impl AsRef<Path>) -> Result<Self, StoreError> {
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir).map_err(|source| StoreError::Io {
            action: "create",
            path: dir.clone(),
            source,
        })?;
        Ok(FileDeltaStore { dir })
    }

    /// The file of `key`: its bytes in hex, so that any key is one safe file name.
    fn path(&self, key: &str) -> Result<PathBuf, StoreError> {
        use std::fmt::Write as _;
        if key.len() > MAX_KEY {
            return Err(StoreError::KeyTooLong(key.len()));
        }
        let mut name = String::with_capacity(key.len() * 2 + 6);
        for byte in key.as_bytes() {
            let _ = write!(name, "{byte:02x}");
        }
        name.push_str(".delta");
        Ok(self.dir.join(name))
    }
}

fn io<'p>(action: &'static str, path: &'p Path) -> impl FnOnce(std::io::Error) -> StoreError + 'p {
    move |source| StoreError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

impl DeltaStore for FileDeltaStore {
    fn load<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<String>> {
        let path = self.path(key);
        Box::pin(async move {
            let path = path?;
            tokio::task::spawn_blocking(move || match std::fs::read(&path) {
                Ok(bytes) => String::from_utf8(bytes)
                    .map(Some)
                    .map_err(|_| StoreError::Corrupt {
                        key: path.display().to_string().chars().take(64).collect(),
                    }),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(io("read", &path)(e)),
            })
            .await
            .map_err(|e| StoreError::Io {
                action: "read",
                path: PathBuf::new(),
                source: std::io::Error::other(e),
            })?
        })
    }

    fn save<'a>(&'a self, key: &'a str, value: &'a str) -> StoreFuture<'a, ()> {
        let path = self.path(key);
        let dir = self.dir.clone();
        let value = value.to_owned();
        Box::pin(async move {
            let path = path?;
            tokio::task::spawn_blocking(move || {
                let mut temp = tempfile::NamedTempFile::new_in(&dir).map_err(io("create", &dir))?;
                temp.write_all(value.as_bytes())
                    .map_err(io("write", &path))?;
                temp.as_file().sync_all().map_err(io("sync", &path))?;
                temp.persist(&path)
                    .map_err(|e| io("rename", &path)(e.error))?;
                // The rename itself is durable once the directory is synced.
                std::fs::File::open(&dir)
                    .and_then(|d| d.sync_all())
                    .map_err(io("sync", &dir))
            })
            .await
            .map_err(|e| StoreError::Io {
                action: "write",
                path: PathBuf::new(),
                source: std::io::Error::other(e),
            })?
        })
    }

    fn remove<'a>(&'a self, key: &'a str) -> StoreFuture<'a, ()> {
        let path = self.path(key);
        let dir = self.dir.clone();
        Box::pin(async move {
            let path = path?;
            tokio::task::spawn_blocking(move || {
                match std::fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                    Err(e) => return Err(io("remove", &path)(e)),
                }
                // The removal is durable once the directory is synced: a crash must
                // not bring the old link back.
                std::fs::File::open(&dir)
                    .and_then(|d| d.sync_all())
                    .map_err(io("sync", &dir))
            })
            .await
            .map_err(|e| StoreError::Io {
                action: "remove",
                path: PathBuf::new(),
                source: std::io::Error::other(e),
            })?
        })
    }
}

/// A store in Redis (feature `redis`; single node or cluster): each value one key,
/// `{prefix}{key}`, written whole by `SET`. As durable as the Redis behind it: with
/// persistence off, a Redis restart forgets the links and the next round lists the
/// collection again.
///
/// ```no_run
/// use keel_graph_client::delta::RedisDeltaStore;
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let redis = keel_resilience::RedisConnection::single("redis://127.0.0.1:6379").await?;
/// let store = RedisDeltaStore::new(redis, "svc:delta:");
/// # drop(store); Ok(()) }
/// ```
#[cfg(feature = "redis")]
#[derive(Clone)]
pub struct RedisDeltaStore {
    connection: keel_resilience::RedisConnection,
    prefix: String,
}

#[cfg(feature = "redis")]
impl std::fmt::Debug for RedisDeltaStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisDeltaStore")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

#[cfg(feature = "redis")]
impl RedisDeltaStore {
    /// A store of keys starting with `prefix`.
    #[must_use]
    pub fn new(connection: keel_resilience::RedisConnection, prefix: &str) -> Self {
        RedisDeltaStore {
            connection,
            prefix: prefix.to_owned(),
        }
    }
}

#[cfg(feature = "redis")]
fn redis_failed(
    action: &'static str,
) -> impl FnOnce(keel_resilience::redis::RedisError) -> StoreError {
    move |e| StoreError::Io {
        action,
        path: PathBuf::from("redis"),
        source: std::io::Error::other(e.to_string().chars().take(200).collect::<String>()),
    }
}

#[cfg(feature = "redis")]
impl DeltaStore for RedisDeltaStore {
    fn load<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<String>> {
        Box::pin(async move {
            let mut c = self.connection.clone();
            keel_resilience::redis::cmd("GET")
                .arg(format!("{}{key}", self.prefix))
                .query_async::<Option<String>>(&mut c)
                .await
                .map_err(redis_failed("read"))
        })
    }

    fn save<'a>(&'a self, key: &'a str, value: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let mut c = self.connection.clone();
            keel_resilience::redis::cmd("SET")
                .arg(format!("{}{key}", self.prefix))
                .arg(value)
                .query_async::<()>(&mut c)
                .await
                .map_err(redis_failed("write"))
        })
    }

    fn remove<'a>(&'a self, key: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let mut c = self.connection.clone();
            keel_resilience::redis::cmd("DEL")
                .arg(format!("{}{key}", self.prefix))
                .query_async::<()>(&mut c)
                .await
                .map_err(redis_failed("remove"))
        })
    }
}

/// The migrations of [`PostgresDeltaStore`], in order: (version, SQL).
#[cfg(feature = "postgres")]
const MIGRATIONS: &[(i32, &str)] = &[
    (1, include_str!("../../migrations/0001_graph_state.sql")),
    (2, include_str!("../../migrations/0002_graph_leases.sql")),
];

/// Serializes migrations across instances (`pg_advisory_xact_lock`).
#[cfg(feature = "postgres")]
const MIGRATION_LOCK: i64 = 0x6b65_656c_6772_6170; // "keelgrap"

/// A store in PostgreSQL (feature `postgres`): one row per key in `keel_graph_state`,
/// written whole by one statement (`INSERT … ON CONFLICT DO UPDATE`), durable once it
/// returns. The schema ships with the crate (`migrations/`); run
/// [`migrate`](Self::migrate) at start.
///
/// ```no_run
/// use keel_graph_client::delta::PostgresDeltaStore;
/// # async fn demo(pool: deadpool_postgres::Pool) -> Result<(), Box<dyn std::error::Error>> {
/// let store = PostgresDeltaStore::new(pool);
/// store.migrate().await?;
/// # Ok(()) }
/// ```
#[cfg(feature = "postgres")]
#[derive(Clone)]
pub struct PostgresDeltaStore {
    pool: deadpool_postgres::Pool,
}

#[cfg(feature = "postgres")]
impl std::fmt::Debug for PostgresDeltaStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresDeltaStore").finish_non_exhaustive()
    }
}

#[cfg(feature = "postgres")]
fn postgres_failed<E: std::fmt::Display>(action: &'static str) -> impl FnOnce(E) -> StoreError {
    move |e| StoreError::Io {
        action,
        path: PathBuf::from("postgres"),
        source: std::io::Error::other(e.to_string().chars().take(200).collect::<String>()),
    }
}

#[cfg(feature = "postgres")]
impl PostgresDeltaStore {
    /// A store on `pool`.
    #[must_use]
    pub fn new(pool: deadpool_postgres::Pool) -> Self {
        PostgresDeltaStore { pool }
    }

    /// Applies the migrations this version ships that the database lacks, in one
    /// transaction, one instance at a time. Returns how many ran.
    ///
    /// # Errors
    /// [`StoreError`] when the database refuses; nothing is half-applied.
    pub async fn migrate(&self) -> Result<usize, StoreError> {
        let mut client = self.pool.get().await.map_err(postgres_failed("connect"))?;
        let tx = client
            .transaction()
            .await
            .map_err(postgres_failed("migrate"))?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(postgres_failed("migrate"))?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS keel_graph_migrations (version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
        )
        .await
        .map_err(postgres_failed("migrate"))?;
        let done: Vec<i32> = tx
            .query("SELECT version FROM keel_graph_migrations", &[])
            .await
            .map_err(postgres_failed("migrate"))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let mut ran = 0;
        for (version, sql) in MIGRATIONS {
            if done.contains(version) {
                continue;
            }
            tx.batch_execute(sql)
                .await
                .map_err(postgres_failed("migrate"))?;
            tx.execute(
                "INSERT INTO keel_graph_migrations (version) VALUES ($1)",
                &[version],
            )
            .await
            .map_err(postgres_failed("migrate"))?;
            ran += 1;
        }
        tx.commit().await.map_err(postgres_failed("migrate"))?;
        Ok(ran)
    }
}

#[cfg(feature = "postgres")]
impl DeltaStore for PostgresDeltaStore {
    fn load<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<String>> {
        Box::pin(async move {
            let client = self.pool.get().await.map_err(postgres_failed("connect"))?;
            let row = client
                .query_opt("SELECT value FROM keel_graph_state WHERE key = $1", &[&key])
                .await
                .map_err(postgres_failed("read"))?;
            Ok(row.map(|r| r.get(0)))
        })
    }

    fn save<'a>(&'a self, key: &'a str, value: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let client = self.pool.get().await.map_err(postgres_failed("connect"))?;
            client
                .execute(
                    "INSERT INTO keel_graph_state (key, value) VALUES ($1, $2) \
                     ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, updated_at = now()",
                    &[&key, &value],
                )
                .await
                .map_err(postgres_failed("write"))?;
            Ok(())
        })
    }

    fn remove<'a>(&'a self, key: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let client = self.pool.get().await.map_err(postgres_failed("connect"))?;
            client
                .execute("DELETE FROM keel_graph_state WHERE key = $1", &[&key])
                .await
                .map_err(postgres_failed("remove"))?;
            Ok(())
        })
    }
}
