//! A refresh-token store on PostgreSQL: each rotation is one statement (a function the
//! migrations install) whose transaction locks the family's and the token's rows, so
//! concurrent rotations of one token serialize and exactly one successor is created. The schema ships with the crate (`migrations/`) and
//! [`PostgresStore::migrate`] applies what is missing, under an advisory lock.

use std::fmt;

use deadpool_postgres::Pool;
use tokio_postgres::Row;

use crate::store::{
    Family, FamilyId, RefreshTokenStore, RotateOutcome, RotateRequest, StoreError, TokenHash,
    TokenRecord,
};

/// The migrations, in order: (version, SQL).
const MIGRATIONS: &[(i32, &str)] = &[
    (1, include_str!("../migrations/0001_refresh_tokens.sql")),
    (2, include_str!("../migrations/0002_rotate_function.sql")),
    (
        3,
        include_str!("../migrations/0003_revoke_means_family.sql"),
    ),
];

/// An arbitrary constant for `pg_advisory_xact_lock`, so instances migrate one at a time.
const MIGRATION_LOCK: i64 = 0x6b65_656c_746f_6b31;

// Token states, as in the schema: 0 active, 1 rotated (set by the rotation function), 2
// revoked alone (older versions only).
const ACTIVE: i16 = 0;

/// The longest idle lifetime passed to the rotation function, ms: `now + idle` must not
/// overflow BIGINT.
const IDLE_MS_MAX: u64 = 1_000_000_000_000_000;

/// Refresh-token families in PostgreSQL, through a deadpool-postgres pool.
///
/// ```no_run
/// # async fn demo(pool: deadpool_postgres::Pool) -> Result<(), Box<dyn std::error::Error>> {
/// use keel_token_manager::{PostgresStore, RefreshConfig, RefreshTokens, SealingKeys};
///
/// let store = PostgresStore::new(pool);
/// store.migrate().await?; // creates or upgrades the tables
/// let tokens = RefreshTokens::new(store, SealingKeys::generate(1)?, RefreshConfig::default())?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct PostgresStore {
    pool: Pool,
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStore").finish_non_exhaustive()
    }
}

/// PostgreSQL's and the pool's errors, by kind; the error itself is the source.
trait IntoStoreError {
    fn into_store_error(self) -> StoreError;
}

impl IntoStoreError for tokio_postgres::Error {
    fn into_store_error(self) -> StoreError {
        if self.is_closed() || self.code().is_none() && self.as_db_error().is_none() {
            // No SQLSTATE: the connection failed, not the statement.
            StoreError::unavailable(self)
        } else {
            StoreError::failed(self)
        }
    }
}

impl IntoStoreError for deadpool_postgres::PoolError {
    fn into_store_error(self) -> StoreError {
        match self {
            deadpool_postgres::PoolError::Timeout(_) => StoreError::timeout(self),
            deadpool_postgres::PoolError::Backend(e) => e.into_store_error(),
            other => StoreError::unavailable(other),
        }
    }
}

fn db(e: impl IntoStoreError) -> StoreError {
    e.into_store_error()
}

fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn uint(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn family_of(row: &Row, offset: usize) -> Family {
    Family {
        id: FamilyId(row.get(offset)),
        subject: row.get(offset + 1),
        client_id: row.get(offset + 2),
        created_at: uint(row.get(offset + 3)),
        absolute_expiry: uint(row.get(offset + 4)),
        idle_expiry: uint(row.get(offset + 5)),
        last_used_at: uint(row.get(offset + 6)),
        revoked_at: row.get::<_, Option<i64>>(offset + 7).map(uint),
    }
}

/// Rotations are acknowledged only once durable, whatever the server's default: a lost
/// commit would leave a client holding a token the store has forgotten.
async fn durable(tx: &deadpool_postgres::Transaction<'_>) -> Result<(), StoreError> {
    tx.batch_execute("SET LOCAL synchronous_commit TO on")
        .await
        .map_err(db)
}

const FAMILY_COLUMNS: &str = "f.id, f.subject, f.client_id, f.created_at, f.absolute_expiry, f.idle_expiry, f.last_used_at, f.revoked_at";

impl PostgresStore {
    /// A store on `pool`. Call [`migrate`](Self::migrate) once at start-up.
    #[must_use]
    pub fn new(pool: Pool) -> Self {
        Self { pool }
    }

    /// Applies the migrations this version ships that the database lacks, in one
    /// transaction, one instance at a time. Returns how many ran.
    ///
    /// # Errors
    /// [`StoreError`] when the database refuses; nothing is half-applied.
    pub async fn migrate(&self) -> Result<usize, StoreError> {
        let mut client = self.pool.get().await.map_err(db)?;
        let tx = client.transaction().await.map_err(db)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(db)?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS keel_token_migrations (version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
        )
        .await
        .map_err(db)?;
        let done: Vec<i32> = tx
            .query("SELECT version FROM keel_token_migrations", &[])
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
                "INSERT INTO keel_token_migrations (version) VALUES ($1)",
                &[version],
            )
            .await
            .map_err(db)?;
            ran += 1;
        }
        tx.commit().await.map_err(db)?;
        Ok(ran)
    }
}

#[async_trait::async_trait]
impl RefreshTokenStore for PostgresStore {
    async fn create(&self, family: Family, first: TokenRecord) -> Result<(), StoreError> {
        let mut client = self.pool.get().await.map_err(db)?;
        let tx = client.transaction().await.map_err(db)?;
        durable(&tx).await?;
        tx.execute(
            "INSERT INTO keel_refresh_families (id, subject, client_id, created_at, absolute_expiry, idle_expiry, last_used_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &[
                &family.id.0,
                &family.subject,
                &family.client_id,
                &int(family.created_at),
                &int(family.absolute_expiry),
                &int(family.idle_expiry),
                &int(family.last_used_at),
            ],
        )
        .await
        .map_err(db)?;
        tx.execute(
            "INSERT INTO keel_refresh_tokens (hash, family_id, generation, issued_at, state) VALUES ($1, $2, $3, $4, $5)",
            &[
                &first.hash.0.as_slice(),
                &family.id.0,
                &i32::try_from(first.generation).unwrap_or(i32::MAX),
                &int(first.issued_at),
                &ACTIVE,
            ],
        )
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)
    }

    async fn rotate(&self, r: RotateRequest) -> Result<RotateOutcome, StoreError> {
        // One statement: the function (migration 2) locks, checks and writes in the
        // statement's own transaction, with a synchronous commit.
        let client = self.pool.get().await.map_err(db)?;
        let row = client
            .query_one(
                "SELECT * FROM keel_rotate_refresh_token($1, $2, $3, $4, $5, $6)",
                &[
                    &r.presented.0.as_slice(),
                    &r.successor.0.as_slice(),
                    &r.sealed_successor,
                    &int(r.now),
                    &int(r.grace_ms),
                    // No idle limit is `u64::MAX`: capped (at 31 million years) so that
                    // `now + idle` stays inside BIGINT.
                    &int(r.idle_ms.min(IDLE_MS_MAX)),
                ],
            )
            .await
            .map_err(db)?;
        let outcome: String = row.get(0);
        let family = || family_of(&row, 1);
        Ok(match outcome.as_str() {
            "unknown" => RotateOutcome::Unknown,
            "revoked" => RotateOutcome::Revoked,
            "expired" => RotateOutcome::Expired,
            "rotated" => RotateOutcome::Rotated { family: family() },
            "reuse" => RotateOutcome::ReuseDetected { family: family() },
            "retried" => {
                let successor: Vec<u8> = row.get::<_, Option<Vec<u8>>>(9).unwrap_or_default();
                let hash = <[u8; 32]>::try_from(successor.as_slice())
                    .map_err(|_| StoreError::corrupt("a stored successor hash"))?;
                RotateOutcome::Retried {
                    family: family(),
                    successor: TokenHash(hash),
                    sealed_successor: row.get::<_, Option<Vec<u8>>>(10).unwrap_or_default(),
                }
            }
            _ => return Err(StoreError::corrupt("the rotation's outcome")),
        })
    }

    async fn revoke_token(
        &self,
        hash: TokenHash,
        now: u64,
    ) -> Result<Option<FamilyId>, StoreError> {
        let client = self.pool.get().await.map_err(db)?;
        let row = client
            .query_opt(
                "UPDATE keel_refresh_families SET revoked_at = COALESCE(revoked_at, $2)
                 WHERE id = (SELECT family_id FROM keel_refresh_tokens WHERE hash = $1)
                 RETURNING id",
                &[&hash.0.as_slice(), &int(now)],
            )
            .await
            .map_err(db)?;
        Ok(row.map(|row| FamilyId(row.get(0))))
    }

    async fn revoke_family(&self, family: &FamilyId, now: u64) -> Result<bool, StoreError> {
        let client = self.pool.get().await.map_err(db)?;
        let n = client
            .execute(
                "UPDATE keel_refresh_families SET revoked_at = COALESCE(revoked_at, $2) WHERE id = $1",
                &[&family.0, &int(now)],
            )
            .await
            .map_err(db)?;
        Ok(n == 1)
    }

    async fn revoke_subject(&self, subject: &str, now: u64) -> Result<usize, StoreError> {
        let client = self.pool.get().await.map_err(db)?;
        let n = client
            .execute(
                "UPDATE keel_refresh_families SET revoked_at = $2 WHERE subject = $1 AND revoked_at IS NULL",
                &[&subject, &int(now)],
            )
            .await
            .map_err(db)?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }

    async fn families(&self, subject: &str) -> Result<Vec<Family>, StoreError> {
        let client = self.pool.get().await.map_err(db)?;
        let rows = client
            .query(
                &format!("SELECT {FAMILY_COLUMNS} FROM keel_refresh_families f WHERE f.subject = $1 ORDER BY f.created_at"),
                &[&subject],
            )
            .await
            .map_err(db)?;
        Ok(rows.iter().map(|row| family_of(row, 0)).collect())
    }

    async fn cleanup(&self, now: u64) -> Result<usize, StoreError> {
        let client = self.pool.get().await.map_err(db)?;
        // Tokens go with their family (ON DELETE CASCADE).
        let n = client
            .execute(
                "DELETE FROM keel_refresh_families WHERE absolute_expiry <= $1 OR idle_expiry <= $1 OR revoked_at IS NOT NULL",
                &[&int(now)],
            )
            .await
            .map_err(db)?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }
}
