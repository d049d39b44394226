//! Letters in PostgreSQL: one table for every queue (`keel_dead_letters`), created by
//! [`PostgresDeadLetters::migrate`]. Each step is one statement; a claim takes its rows
//! with `FOR UPDATE SKIP LOCKED`, so two replays never wait on, or take, each other's
//! letters, and leases run on the database's clock.

use std::fmt;

use deadpool_postgres::Pool;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use tokio_postgres::Row;

use super::error::DeadLetterError;
use super::letter::{DeadLetter, LetterId, NewLetter, class_from, class_text, from_millis, millis};
use super::store::{ClaimRequest, Claimed, DeadLetterStore, Purge, QueueStats};

/// The migrations, in order: (version, SQL).
const MIGRATIONS: &[(i32, &str)] = &[(1, include_str!("../../migrations/0001_dead_letters.sql"))];

/// An arbitrary constant for `pg_advisory_xact_lock`, so instances migrate one at a time.
const MIGRATION_LOCK: i64 = 0x6b65_656c_646c_7131;

const NOW_MS: &str = "(extract(epoch FROM clock_timestamp()) * 1000)::BIGINT";
const NOW_MICROS: &str = "(extract(epoch FROM clock_timestamp()) * 1000000)::BIGINT";

const COLUMNS: &str = "id, key, payload, class, message, attempts, first_failed_at, last_failed_at, correlation_id, source, enqueued_at, replay_failures, last_replay_error";

/// Dead letters in PostgreSQL, through a deadpool-postgres pool. Unbounded (the disk is
/// the bound): purge what you no longer need, for example
/// `Purge::EnqueuedBefore(now - 30 days)`. Payloads up to 1 MiB by default.
///
/// ```no_run
/// # async fn demo(pool: deadpool_postgres::Pool) -> Result<(), Box<dyn std::error::Error>> {
/// use keel_resilience::dead_letter::{DeadLetterQueue, PostgresDeadLetters};
///
/// let store = PostgresDeadLetters::new(pool, "orders");
/// store.migrate().await?; // creates or upgrades the table
/// let queue = DeadLetterQueue::new("orders", store);
/// # let _ = queue;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct PostgresDeadLetters {
    pool: Pool,
    queue: String,
    max_payload: usize,
}

impl fmt::Debug for PostgresDeadLetters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresDeadLetters")
            .field("queue", &self.queue)
            .field("max_payload", &self.max_payload)
            .finish_non_exhaustive()
    }
}

fn db(e: impl std::error::Error + Send + Sync + 'static) -> DeadLetterError {
    DeadLetterError::caused("PostgreSQL", e)
}

fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn uint(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// A row id from a letter id; `None` when it is not one.
fn row_id(id: &LetterId) -> Option<i64> {
    id.0.parse().ok().filter(|n| *n > 0)
}

fn letter_of(row: &Row) -> Result<DeadLetter, DeadLetterError> {
    let id: i64 = row.get(0);
    let class: String = row.get(3);
    let class = class_from(&class).ok_or_else(|| {
        DeadLetterError::store("PostgreSQL holds something that is not a letter: a class")
    })?;
    let letter = NewLetter {
        key: row.get(1),
        payload: row.get(2),
        class,
        message: row.get(4),
        attempts: u32::try_from(row.get::<_, i64>(5)).unwrap_or(u32::MAX),
        first_failed_at: from_millis(uint(row.get(6))),
        last_failed_at: from_millis(uint(row.get(7))),
        correlation_id: row.get(8),
        source: row.get(9),
    };
    Ok(DeadLetter {
        id: LetterId(id.to_string()),
        letter: letter.bounded(),
        enqueued_at: from_millis(uint(row.get(10))),
        replay_failures: u32::try_from(row.get::<_, i64>(11)).unwrap_or(u32::MAX),
        last_replay_error: row.get(12),
    })
}

impl PostgresDeadLetters {
    /// The queue `name` on `pool`. Call [`migrate`](Self::migrate) once at start-up.
    #[must_use]
    pub fn new(pool: Pool, name: &str) -> Self {
        PostgresDeadLetters {
            pool,
            queue: name.to_owned(),
            max_payload: 1 << 20,
        }
    }

    /// Payloads of at most `bytes`.
    #[must_use]
    pub fn max_payload(mut self, bytes: usize) -> Self {
        self.max_payload = bytes;
        self
    }

    /// Applies the migrations this version ships that the database lacks, in one
    /// transaction, one instance at a time. Returns how many ran.
    ///
    /// # Errors
    /// [`DeadLetterError::Store`] when the database refuses; nothing is half-applied.
    pub async fn migrate(&self) -> Result<usize, DeadLetterError> {
        let mut client = self.pool.get().await.map_err(db)?;
        let tx = client.transaction().await.map_err(db)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(db)?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS keel_resilience_migrations (version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
        )
        .await
        .map_err(db)?;
        let done: Vec<i32> = tx
            .query("SELECT version FROM keel_resilience_migrations", &[])
            .await
            .map_err(db)?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let mut ran = 0;
        for (version, sql) in MIGRATIONS {
            if done.contains(version) {
                continue;
            }
            tx.batch_execute(sql).await.map_err(db)?;
            tx.execute(
                "INSERT INTO keel_resilience_migrations (version) VALUES ($1)",
                &[version],
            )
            .await
            .map_err(db)?;
            ran += 1;
        }
        tx.commit().await.map_err(db)?;
        Ok(ran)
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, DeadLetterError> {
        self.pool.get().await.map_err(db)
    }
}

impl DeadLetterStore for PostgresDeadLetters {
    fn push(&self, letter: NewLetter) -> BoxFuture<'_, Result<LetterId, DeadLetterError>> {
        async move {
            if letter.payload.len() > self.max_payload {
                return Err(DeadLetterError::TooLarge {
                    size: letter.payload.len(),
                    limit: self.max_payload,
                });
            }
            let client = self.client().await?;
            // Kept only once durable, whatever the server's default: the caller drops
            // its copy when this returns.
            let row = client
                .query_one(
                    "WITH durable AS (SELECT set_config('synchronous_commit', 'on', true)) \
                     INSERT INTO keel_dead_letters (queue, key, payload, class, message, attempts, first_failed_at, last_failed_at, correlation_id, source) \
                     SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10 FROM durable RETURNING id",
                    &[
                        &self.queue,
                        &letter.key,
                        &letter.payload,
                        &class_text(letter.class),
                        &letter.message,
                        &i64::from(letter.attempts),
                        &int(millis(letter.first_failed_at)),
                        &int(millis(letter.last_failed_at)),
                        &letter.correlation_id,
                        &letter.source,
                    ],
                )
                .await
                .map_err(db)?;
            Ok(LetterId(row.get::<_, i64>(0).to_string()))
        }
        .boxed()
    }

    fn list(
        &self,
        after: Option<LetterId>,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<DeadLetter>, DeadLetterError>> {
        async move {
            let after = match after {
                None => 0,
                Some(id) => match row_id(&id) {
                    Some(n) => n,
                    None => return Ok(Vec::new()),
                },
            };
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let rows = self
                .client()
                .await?
                .query(
                    &format!("SELECT {COLUMNS} FROM keel_dead_letters WHERE queue = $1 AND id > $2 ORDER BY id LIMIT $3"),
                    &[&self.queue, &after, &limit],
                )
                .await
                .map_err(db)?;
            Ok(rows
                .iter()
                .filter_map(|row| match letter_of(row) {
                    Ok(letter) => Some(letter),
                    Err(e) => {
                        tracing::warn!(letter = row.get::<_, i64>(0), problem = %e, "a row of keel_dead_letters is not a letter: skipped (purge it by id)");
                        None
                    }
                })
                .collect())
        }
        .boxed()
    }

    fn get(&self, id: LetterId) -> BoxFuture<'_, Result<Option<DeadLetter>, DeadLetterError>> {
        async move {
            let Some(id) = row_id(&id) else {
                return Ok(None);
            };
            let row = self
                .client()
                .await?
                .query_opt(
                    &format!(
                        "SELECT {COLUMNS} FROM keel_dead_letters WHERE queue = $1 AND id = $2"
                    ),
                    &[&self.queue, &id],
                )
                .await
                .map_err(db)?;
            row.as_ref().map(letter_of).transpose()
        }
        .boxed()
    }

    fn claim(&self, request: ClaimRequest) -> BoxFuture<'_, Result<Claimed, DeadLetterError>> {
        async move {
            // An id that is not one of ours: nothing comes after it.
            let after = request
                .after
                .as_ref()
                .map_or(0, |id| row_id(id).unwrap_or(i64::MAX));
            let client = self.client().await?;
            let (started, until) = match (request.started, &request.until) {
                (Some(started), Some(until)) => match row_id(until) {
                    Some(until) => (int(started), until),
                    None => return Ok(Claimed::nothing(&request)),
                },
                _ => {
                    let row = client
                        .query_one(
                            &format!(
                                "SELECT {NOW_MICROS}, max(id) FROM keel_dead_letters WHERE queue = $1"
                            ),
                            &[&self.queue],
                        )
                        .await
                        .map_err(db)?;
                    let started: i64 = row.get(0);
                    match row.get::<_, Option<i64>>(1) {
                        Some(until) => (started, until),
                        None => {
                            return Ok(Claimed {
                                started: uint(started),
                                until: None,
                                ..Claimed::nothing(&request)
                            });
                        }
                    }
                }
            };
            let limit = request.limit.max(1);
            // At most a year: `now + lease` stays far from BIGINT's end.
            let lease_ms = int(
                u64::try_from(request.lease.as_millis())
                    .unwrap_or(u64::MAX)
                    .min(365 * 86_400_000),
            );
            let rows = client
                .query(
                    &format!(
                        "WITH picked AS ( \
                           SELECT id FROM keel_dead_letters \
                           WHERE queue = $1 AND id > $2 AND id <= $7 \
                             AND (claimed_until IS NULL OR claimed_until <= {NOW_MS} OR claim_token = $4) \
                             AND (last_replay_at IS NULL OR last_replay_at <= $6) \
                           ORDER BY id LIMIT $3 FOR UPDATE SKIP LOCKED) \
                         UPDATE keel_dead_letters d SET claim_token = $4, claimed_until = {NOW_MS} + $5 \
                         FROM picked WHERE d.id = picked.id \
                         RETURNING d.id, d.key, d.payload, d.class, d.message, d.attempts, d.first_failed_at, d.last_failed_at, d.correlation_id, d.source, d.enqueued_at, d.replay_failures, d.last_replay_error"
                    ),
                    &[
                        &self.queue,
                        &after,
                        &i64::try_from(limit).unwrap_or(i64::MAX),
                        &request.token,
                        &lease_ms,
                        &started,
                        &until,
                    ],
                )
                .await
                .map_err(db)?;
            let mut letters = Vec::with_capacity(rows.len());
            let mut unreadable = Vec::new();
            let mut last = None;
            for row in &rows {
                let id: i64 = row.get(0);
                last = last.max(Some(id));
                match letter_of(row) {
                    Ok(letter) => letters.push(letter),
                    Err(e) => unreadable.push((LetterId(id.to_string()), e.to_string())),
                }
            }
            letters.sort_by_key(|l| row_id(&l.id));
            Ok(Claimed {
                cursor: last.map(|id| LetterId(id.to_string())),
                // Fewer than asked: none is left after the cursor that no one holds.
                exhausted: rows.len() < limit,
                letters,
                unreadable,
                started: uint(started),
                until: Some(LetterId(until.to_string())),
            })
        }
        .boxed()
    }

    fn complete(
        &self,
        id: LetterId,
        token: String,
    ) -> BoxFuture<'_, Result<bool, DeadLetterError>> {
        async move {
            let Some(id) = row_id(&id) else {
                return Ok(false);
            };
            let deleted = self
                .client()
                .await?
                .execute(
                    &format!(
                        "DELETE FROM keel_dead_letters WHERE queue = $1 AND id = $2 AND claim_token = $3 AND claimed_until > {NOW_MS}"
                    ),
                    &[&self.queue, &id, &token],
                )
                .await
                .map_err(db)?;
            Ok(deleted == 1)
        }
        .boxed()
    }

    fn release(
        &self,
        id: LetterId,
        token: String,
        error: String,
    ) -> BoxFuture<'_, Result<bool, DeadLetterError>> {
        async move {
            let Some(id) = row_id(&id) else {
                return Ok(false);
            };
            let updated = self
                .client()
                .await?
                .execute(
                    &format!("UPDATE keel_dead_letters SET claim_token = NULL, claimed_until = NULL, \
                     replay_failures = replay_failures + 1, last_replay_error = $4, last_replay_at = {NOW_MICROS} \
                     WHERE queue = $1 AND id = $2 AND claim_token = $3"),
                    &[&self.queue, &id, &token, &error],
                )
                .await
                .map_err(db)?;
            Ok(updated == 1)
        }
        .boxed()
    }

    fn purge(&self, which: Purge) -> BoxFuture<'_, Result<u64, DeadLetterError>> {
        async move {
            let client = self.client().await?;
            let purged =
                match which {
                    Purge::All => {
                        client
                            .execute(
                                "DELETE FROM keel_dead_letters WHERE queue = $1",
                                &[&self.queue],
                            )
                            .await
                    }
                    Purge::One(id) => {
                        match row_id(&id) {
                            None => return Ok(0),
                            Some(id) => client
                                .execute(
                                    "DELETE FROM keel_dead_letters WHERE queue = $1 AND id = $2",
                                    &[&self.queue, &id],
                                )
                                .await,
                        }
                    }
                    Purge::EnqueuedBefore(t) => client
                        .execute(
                            "DELETE FROM keel_dead_letters WHERE queue = $1 AND enqueued_at < $2",
                            &[&self.queue, &int(millis(t))],
                        )
                        .await,
                };
            purged.map_err(db)
        }
        .boxed()
    }

    fn stats(&self) -> BoxFuture<'_, Result<QueueStats, DeadLetterError>> {
        async move {
            let row = self
                .client()
                .await?
                .query_one(
                    "SELECT count(*), min(enqueued_at) FROM keel_dead_letters WHERE queue = $1",
                    &[&self.queue],
                )
                .await
                .map_err(db)?;
            Ok(QueueStats {
                letters: uint(row.get(0)),
                oldest_enqueued_at: row.get::<_, Option<i64>>(1).map(|ms| from_millis(uint(ms))),
            })
        }
        .boxed()
    }
}
