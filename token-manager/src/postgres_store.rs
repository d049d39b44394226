//! A refresh-token store on PostgreSQL: each rotation is one transaction that locks the
//! family's row, so concurrent rotations of one token serialize and exactly one
//! successor is created. The schema ships with the crate (`migrations/`) and
//! [`PostgresStore::migrate`] applies what is missing, under an advisory lock.

use std::fmt;

use deadpool_postgres::Pool;
use tokio_postgres::Row;

use crate::store::{
    Family, FamilyId, RefreshTokenStore, RotateOutcome, RotateRequest, StoreError, TokenHash,
    TokenRecord,
};

/// The migrations, in order: (version, SQL).
const MIGRATIONS: &[(i32, &str)] = &[(1, include_str!("../migrations/0001_refresh_tokens.sql"))];

/// An arbitrary constant for `pg_advisory_xact_lock`, so instances migrate one at a time.
const MIGRATION_LOCK: i64 = 0x6b65_656c_746f_6b31;

const ACTIVE: i16 = 0;
const ROTATED: i16 = 1;
const REVOKED: i16 = 2;

/// Refresh-token families in PostgreSQL, through a deadpool-postgres pool.
///
/// ```no_run
/// # async fn demo(pool: deadpool_postgres::Pool) -> Result<(), Box<dyn std::error::Error>> {
/// use keel_token_manager::{PostgresStore, RefreshConfig, RefreshTokens, SealingKeys};
///
/// let store = PostgresStore::new(pool);
/// store.migrate().await?; // creates or upgrades the tables
/// let tokens = RefreshTokens::new(store, SealingKeys::generate(1)?, RefreshConfig::default());
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

fn db(e: impl fmt::Display) -> StoreError {
    StoreError(format!("PostgreSQL: {e}"))
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
        let mut client = self.pool.get().await.map_err(db)?;
        let tx = client.transaction().await.map_err(db)?;
        durable(&tx).await?;
        // Locking the family's and the token's rows serializes every rotation of the
        // family; a waiter re-reads both once the lock is its own.
        let row = tx
            .query_opt(
                &format!(
                    "SELECT {FAMILY_COLUMNS}, t.generation, t.state, t.successor, t.rotated_at, t.sealed_successor
                     FROM keel_refresh_tokens t JOIN keel_refresh_families f ON f.id = t.family_id
                     WHERE t.hash = $1 FOR UPDATE OF f, t"
                ),
                &[&r.presented.0.as_slice()],
            )
            .await
            .map_err(db)?;
        let Some(row) = row else {
            tx.commit().await.map_err(db)?;
            return Ok(RotateOutcome::Unknown);
        };
        let mut family = family_of(&row, 0);
        let generation: i32 = row.get(8);
        let state: i16 = row.get(9);
        let outcome = if family.revoked_at.is_some() || state == REVOKED {
            RotateOutcome::Revoked
        } else if r.now >= family.absolute_expiry || r.now >= family.idle_expiry {
            RotateOutcome::Expired
        } else if state == ACTIVE {
            family.last_used_at = r.now;
            family.idle_expiry = r.now.saturating_add(r.idle_ms).min(family.absolute_expiry);
            tx.execute(
                "UPDATE keel_refresh_tokens SET state = $2, successor = $3, rotated_at = $4, sealed_successor = $5 WHERE hash = $1",
                &[&r.presented.0.as_slice(), &ROTATED, &r.successor.0.as_slice(), &int(r.now), &r.sealed_successor],
            )
            .await
            .map_err(db)?;
            tx.execute(
                "INSERT INTO keel_refresh_tokens (hash, family_id, generation, issued_at, state) VALUES ($1, $2, $3, $4, $5)",
                &[&r.successor.0.as_slice(), &family.id.0, &(generation + 1), &int(r.now), &ACTIVE],
            )
            .await
            .map_err(db)?;
            tx.execute(
                "UPDATE keel_refresh_families SET idle_expiry = $2, last_used_at = $3 WHERE id = $1",
                &[&family.id.0, &int(family.idle_expiry), &int(r.now)],
            )
            .await
            .map_err(db)?;
            RotateOutcome::Rotated { family }
        } else {
            let successor: Vec<u8> = row.get::<_, Option<Vec<u8>>>(10).unwrap_or_default();
            let rotated_at = uint(row.get::<_, Option<i64>>(11).unwrap_or(0));
            let sealed: Vec<u8> = row.get::<_, Option<Vec<u8>>>(12).unwrap_or_default();
            let current = tx
                .query_opt(
                    "SELECT state FROM keel_refresh_tokens WHERE hash = $1",
                    &[&successor.as_slice()],
                )
                .await
                .map_err(db)?
                .is_some_and(|row| row.get::<_, i16>(0) == ACTIVE);
            let hash = <[u8; 32]>::try_from(successor.as_slice())
                .map_err(|_| StoreError("a stored successor hash is corrupt".into()))?;
            if current && r.now.saturating_sub(rotated_at) < r.grace_ms {
                RotateOutcome::Retried {
                    family,
                    successor: TokenHash(hash),
                    sealed_successor: sealed,
                }
            } else {
                family.revoked_at = Some(r.now);
                tx.execute(
                    "UPDATE keel_refresh_families SET revoked_at = $2 WHERE id = $1",
                    &[&family.id.0, &int(r.now)],
                )
                .await
                .map_err(db)?;
                RotateOutcome::ReuseDetected { family }
            }
        };
        tx.commit().await.map_err(db)?;
        Ok(outcome)
    }

    async fn revoke_token(&self, hash: TokenHash, _now: u64) -> Result<bool, StoreError> {
        let client = self.pool.get().await.map_err(db)?;
        let n = client
            .execute(
                "UPDATE keel_refresh_tokens SET state = $2 WHERE hash = $1",
                &[&hash.0.as_slice(), &REVOKED],
            )
            .await
            .map_err(db)?;
        Ok(n == 1)
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
