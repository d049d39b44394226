//! Where refresh-token families live: the [`RefreshTokenStore`] trait, with one atomic
//! `rotate`, and the in-memory store.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Mutex;

/// SHA-256 of a refresh token: the only form in which tokens are stored.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenHash(pub(crate) [u8; 32]);

impl TokenHash {
    /// A hash as a store kept it (a custom [`RefreshTokenStore`] reading its records).
    #[must_use]
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The hash's bytes, to store.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Even a hash is not printed in full: an 8-hex-digit prefix identifies it in logs.
        write!(
            f,
            "TokenHash({:02x}{:02x}{:02x}{:02x}…)",
            self.0[0], self.0[1], self.0[2], self.0[3]
        )
    }
}

/// The id of a token family (one login session).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FamilyId(pub(crate) String);

impl FamilyId {
    /// An id as a store kept it (a custom [`RefreshTokenStore`] reading its records).
    pub fn new(id: impl Into<String>) -> Self {
        Self(id.into())
    }

    /// The id, to store.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for FamilyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One login session's chain of refresh tokens. Times are milliseconds since the epoch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Family {
    /// The id.
    pub id: FamilyId,
    /// The user.
    pub subject: String,
    /// The OAuth client.
    pub client_id: String,
    /// When the session began.
    pub created_at: u64,
    /// The session's end, whatever happens (rotation does not extend it).
    pub absolute_expiry: u64,
    /// The end if unused: moved forward by each rotation, never past `absolute_expiry`.
    pub idle_expiry: u64,
    /// The last rotation.
    pub last_used_at: u64,
    /// When it was revoked, if it was.
    pub revoked_at: Option<u64>,
}

impl Family {
    /// Whether it is neither revoked nor expired at `now`.
    #[must_use]
    pub fn is_live(&self, now: u64) -> bool {
        self.revoked_at.is_none() && now < self.absolute_expiry && now < self.idle_expiry
    }
}

/// What became of a token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenState {
    /// The family's current token.
    Active,
    /// Exchanged for `successor` at `at`; `sealed_successor` (AES-256-GCM) lets a retry
    /// within the grace period get the very same successor back.
    Rotated {
        /// The successor's hash.
        successor: TokenHash,
        /// When.
        at: u64,
        /// The successor token, sealed.
        sealed_successor: Vec<u8>,
    },
    /// Revoked on its own (written by older versions; today revoking a token revokes
    /// its family). Presenting it while its family is live counts as reuse.
    Revoked,
}

/// One stored refresh token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenRecord {
    /// Its hash.
    pub hash: TokenHash,
    /// Its family.
    pub family: FamilyId,
    /// 0 for the login's token, then +1 per rotation.
    pub generation: u32,
    /// When it was issued.
    pub issued_at: u64,
    /// What became of it.
    pub state: TokenState,
}

/// One rotation, for [`RefreshTokenStore::rotate`].
#[derive(Clone, Debug)]
pub struct RotateRequest {
    /// The presented token's hash.
    pub presented: TokenHash,
    /// The successor's hash.
    pub successor: TokenHash,
    /// The successor, sealed, kept for retries within the grace period.
    pub sealed_successor: Vec<u8>,
    /// Now, in ms since the epoch.
    pub now: u64,
    /// The grace period, ms.
    pub grace_ms: u64,
    /// The idle lifetime, ms (`u64::MAX` for none).
    pub idle_ms: u64,
}

/// What a rotation did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RotateOutcome {
    /// The token was current: the successor is now.
    Rotated {
        /// The family after the rotation.
        family: Family,
    },
    /// The token was rotated moments ago (within the grace period) and its successor is
    /// still current: the same successor again.
    Retried {
        /// The family.
        family: Family,
        /// The successor's hash.
        successor: TokenHash,
        /// The successor, sealed.
        sealed_successor: Vec<u8>,
    },
    /// Reuse of a rotated token: the whole family is now revoked.
    ReuseDetected {
        /// The family revoked.
        family: Family,
    },
    /// No such token.
    Unknown,
    /// The family is past its absolute or idle lifetime.
    Expired,
    /// The token or its family was revoked.
    Revoked,
}

/// A store failed: it did not answer in time, could not be reached, refused the
/// operation, or holds data that does not parse. Nothing was half-written. The store's
/// own error (Redis's, PostgreSQL's) is the [`source`](std::error::Error::source).
///
/// ```
/// use keel_resilience::{Classify, ErrorClass};
/// use keel_token_manager::store::StoreError;
///
/// let e = StoreError::timeout(std::io::Error::from(std::io::ErrorKind::TimedOut));
/// assert!(e.is_timeout());
/// assert_eq!(e.class(), ErrorClass::Transient);
/// assert!(std::error::Error::source(&e).is_some());
/// assert_eq!(StoreError::corrupt("a stored number").class(), ErrorClass::Permanent);
/// ```
#[derive(Debug, thiserror::Error)]
#[error("{}", .kind.message())]
pub struct StoreError {
    kind: StoreErrorKind,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

/// What kind of failure a [`StoreError`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreErrorKind {
    /// The store did not answer within the limit.
    Timeout,
    /// The store could not be reached (connection refused or lost, pool closed).
    Unavailable,
    /// Stored data does not parse (named: what was corrupt).
    Corrupt(&'static str),
    /// The store answered with an error (a constraint, a script error...).
    Failed,
}

impl StoreErrorKind {
    fn message(self) -> String {
        match self {
            StoreErrorKind::Timeout => "the refresh-token store did not answer in time".into(),
            StoreErrorKind::Unavailable => "the refresh-token store could not be reached".into(),
            StoreErrorKind::Corrupt(what) => {
                format!("the refresh-token store holds corrupt data: {what}")
            }
            StoreErrorKind::Failed => "the refresh-token store failed".into(),
        }
    }
}

impl StoreError {
    /// The store did not answer in time.
    pub fn timeout(source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>) -> Self {
        Self::with(StoreErrorKind::Timeout, source)
    }

    /// The store could not be reached.
    pub fn unavailable(
        source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Self {
        Self::with(StoreErrorKind::Unavailable, source)
    }

    /// The store answered with an error.
    pub fn failed(source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>) -> Self {
        Self::with(StoreErrorKind::Failed, source)
    }

    /// Stored data does not parse; `what` names it (no stored value in it).
    #[must_use]
    pub fn corrupt(what: &'static str) -> Self {
        Self {
            kind: StoreErrorKind::Corrupt(what),
            source: None,
        }
    }

    fn with(
        kind: StoreErrorKind,
        source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Self {
        Self {
            kind,
            source: Some(source.into()),
        }
    }

    /// What kind of failure it is.
    #[must_use]
    pub fn kind(&self) -> StoreErrorKind {
        self.kind
    }

    /// Whether the store did not answer in time.
    #[must_use]
    pub fn is_timeout(&self) -> bool {
        self.kind == StoreErrorKind::Timeout
    }

    /// Whether the store could not be reached.
    #[must_use]
    pub fn is_unavailable(&self) -> bool {
        self.kind == StoreErrorKind::Unavailable
    }
}

impl keel_resilience::Classify for StoreError {
    /// Timeouts, unreachable stores and store-side errors are transient (nothing changed:
    /// retry); corrupt data is permanent.
    fn class(&self) -> keel_resilience::ErrorClass {
        match self.kind {
            StoreErrorKind::Corrupt(_) => keel_resilience::ErrorClass::Permanent,
            _ => keel_resilience::ErrorClass::Transient,
        }
    }
}

/// Storage for refresh-token families. Every method is atomic: under concurrent calls on
/// one token, exactly one rotation succeeds.
#[async_trait::async_trait]
pub trait RefreshTokenStore: Send + Sync + fmt::Debug {
    /// Stores a new family and its first token.
    async fn create(&self, family: Family, first: TokenRecord) -> Result<(), StoreError>;
    /// Rotates a token (see [`RotateOutcome`]), all or nothing.
    async fn rotate(&self, request: RotateRequest) -> Result<RotateOutcome, StoreError>;
    /// Revokes the family of a token (RFC 7009 §2.1 lets a server revoke the grant a token
    /// belongs to): whoever holds any token of that session, a thief who rotated it
    /// included, is signed out. Returns the family when the token was known (revoked
    /// before or not).
    async fn revoke_token(&self, hash: TokenHash, now: u64)
    -> Result<Option<FamilyId>, StoreError>;
    /// Revokes a whole family. True if it existed.
    async fn revoke_family(&self, family: &FamilyId, now: u64) -> Result<bool, StoreError>;
    /// Revokes every family of a user; how many.
    async fn revoke_subject(&self, subject: &str, now: u64) -> Result<usize, StoreError>;
    /// The user's families, live or not.
    async fn families(&self, subject: &str) -> Result<Vec<Family>, StoreError>;
    /// Deletes families that expired (or were revoked) before `now`, with their tokens;
    /// how many families.
    async fn cleanup(&self, now: u64) -> Result<usize, StoreError>;
}

/// A store in process memory: for tests, single-instance services and the embedded
/// default.
#[derive(Debug, Default)]
pub struct MemoryStore {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    tokens: HashMap<TokenHash, TokenRecord>,
    families: HashMap<FamilyId, Family>,
    by_subject: HashMap<String, HashSet<FamilyId>>,
    by_family: HashMap<FamilyId, Vec<TokenHash>>,
}

impl MemoryStore {
    /// An empty store.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[async_trait::async_trait]
impl RefreshTokenStore for MemoryStore {
    async fn create(&self, family: Family, first: TokenRecord) -> Result<(), StoreError> {
        let mut s = self.lock();
        s.by_subject
            .entry(family.subject.clone())
            .or_default()
            .insert(family.id.clone());
        s.by_family
            .entry(family.id.clone())
            .or_default()
            .push(first.hash);
        s.tokens.insert(first.hash, first);
        s.families.insert(family.id.clone(), family);
        Ok(())
    }

    async fn rotate(&self, r: RotateRequest) -> Result<RotateOutcome, StoreError> {
        let mut s = self.lock();
        let Some(record) = s.tokens.get(&r.presented).cloned() else {
            return Ok(RotateOutcome::Unknown);
        };
        let Some(family) = s.families.get(&record.family).cloned() else {
            return Ok(RotateOutcome::Unknown);
        };
        if family.revoked_at.is_some() {
            return Ok(RotateOutcome::Revoked);
        }
        if r.now >= family.absolute_expiry || r.now >= family.idle_expiry {
            return Ok(RotateOutcome::Expired);
        }
        match record.state {
            TokenState::Revoked => {
                // A revoked token of a live family: reuse.
                let mut family = family;
                family.revoked_at = Some(r.now);
                s.families.insert(family.id.clone(), family.clone());
                Ok(RotateOutcome::ReuseDetected { family })
            }
            TokenState::Active => {
                let mut family = family;
                family.last_used_at = r.now;
                family.idle_expiry = r.now.saturating_add(r.idle_ms).min(family.absolute_expiry);
                s.tokens.insert(
                    r.presented,
                    TokenRecord {
                        state: TokenState::Rotated {
                            successor: r.successor,
                            at: r.now,
                            sealed_successor: r.sealed_successor,
                        },
                        ..record.clone()
                    },
                );
                s.tokens.insert(
                    r.successor,
                    TokenRecord {
                        hash: r.successor,
                        family: family.id.clone(),
                        generation: record.generation + 1,
                        issued_at: r.now,
                        state: TokenState::Active,
                    },
                );
                s.by_family
                    .entry(family.id.clone())
                    .or_default()
                    .push(r.successor);
                s.families.insert(family.id.clone(), family.clone());
                Ok(RotateOutcome::Rotated { family })
            }
            TokenState::Rotated {
                successor,
                at,
                sealed_successor,
            } => {
                let successor_current = s
                    .tokens
                    .get(&successor)
                    .is_some_and(|t| t.state == TokenState::Active);
                if successor_current && r.now.saturating_sub(at) < r.grace_ms {
                    return Ok(RotateOutcome::Retried {
                        family,
                        successor,
                        sealed_successor,
                    });
                }
                let mut family = family;
                family.revoked_at = Some(r.now);
                s.families.insert(family.id.clone(), family.clone());
                Ok(RotateOutcome::ReuseDetected { family })
            }
        }
    }

    async fn revoke_token(
        &self,
        hash: TokenHash,
        now: u64,
    ) -> Result<Option<FamilyId>, StoreError> {
        let mut s = self.lock();
        let Some(id) = s.tokens.get(&hash).map(|t| t.family.clone()) else {
            return Ok(None);
        };
        if let Some(f) = s.families.get_mut(&id) {
            f.revoked_at.get_or_insert(now);
        }
        Ok(Some(id))
    }

    async fn revoke_family(&self, family: &FamilyId, now: u64) -> Result<bool, StoreError> {
        let mut s = self.lock();
        Ok(match s.families.get_mut(family) {
            Some(f) => {
                f.revoked_at.get_or_insert(now);
                true
            }
            None => false,
        })
    }

    async fn revoke_subject(&self, subject: &str, now: u64) -> Result<usize, StoreError> {
        let mut s = self.lock();
        let ids: Vec<FamilyId> = s
            .by_subject
            .get(subject)
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        let mut revoked = 0;
        for id in ids {
            if let Some(f) = s.families.get_mut(&id)
                && f.revoked_at.is_none()
            {
                f.revoked_at = Some(now);
                revoked += 1;
            }
        }
        Ok(revoked)
    }

    async fn families(&self, subject: &str) -> Result<Vec<Family>, StoreError> {
        let s = self.lock();
        let mut out: Vec<Family> = s
            .by_subject
            .get(subject)
            .into_iter()
            .flatten()
            .filter_map(|id| s.families.get(id).cloned())
            .collect();
        out.sort_by_key(|f| f.created_at);
        Ok(out)
    }

    async fn cleanup(&self, now: u64) -> Result<usize, StoreError> {
        let mut s = self.lock();
        let dead: Vec<FamilyId> = s
            .families
            .values()
            .filter(|f| now >= f.absolute_expiry || now >= f.idle_expiry || f.revoked_at.is_some())
            .map(|f| f.id.clone())
            .collect();
        for id in &dead {
            if let Some(f) = s.families.remove(id)
                && let Some(set) = s.by_subject.get_mut(&f.subject)
            {
                set.remove(id);
            }
            for hash in s.by_family.remove(id).unwrap_or_default() {
                s.tokens.remove(&hash);
            }
        }
        Ok(dead.len())
    }
}

/// A shared store is a store.
#[async_trait::async_trait]
impl<T: RefreshTokenStore + ?Sized> RefreshTokenStore for std::sync::Arc<T> {
    async fn create(&self, family: Family, first: TokenRecord) -> Result<(), StoreError> {
        (**self).create(family, first).await
    }
    async fn rotate(&self, request: RotateRequest) -> Result<RotateOutcome, StoreError> {
        (**self).rotate(request).await
    }
    async fn revoke_token(
        &self,
        hash: TokenHash,
        now: u64,
    ) -> Result<Option<FamilyId>, StoreError> {
        (**self).revoke_token(hash, now).await
    }
    async fn revoke_family(&self, family: &FamilyId, now: u64) -> Result<bool, StoreError> {
        (**self).revoke_family(family, now).await
    }
    async fn revoke_subject(&self, subject: &str, now: u64) -> Result<usize, StoreError> {
        (**self).revoke_subject(subject, now).await
    }
    async fn families(&self, subject: &str) -> Result<Vec<Family>, StoreError> {
        (**self).families(subject).await
    }
    async fn cleanup(&self, now: u64) -> Result<usize, StoreError> {
        (**self).cleanup(now).await
    }
}
