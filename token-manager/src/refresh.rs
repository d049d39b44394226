//! Refresh tokens: opaque, 256-bit, stored only as SHA-256 hashes, rotated on every use,
//! one family per login session, reuse detection, and a grace period in which a retried
//! rotation returns the same successor.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use keel_resilience::clock::{SystemClock, WallClock};
use ring::digest::{SHA256, digest};
use ring::rand::{SecureRandom as _, SystemRandom};

use crate::audit;
use crate::seal::{SealError, SealingKeys};
use crate::store::{
    Family, FamilyId, RefreshTokenStore, RotateOutcome, RotateRequest, StoreError, TokenHash,
    TokenRecord, TokenState,
};

/// Lifetimes and the grace period.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RefreshConfig {
    /// How long a session lasts at most; rotation never extends it (default 30 days).
    pub absolute_lifetime: Duration,
    /// How long a session lasts unused (default 30 days; `None`: no idle limit).
    pub idle_lifetime: Option<Duration>,
    /// How long after a rotation a retry with the same token returns the same successor
    /// instead of counting as reuse (default 10 s; zero turns it off).
    pub grace_period: Duration,
}

impl Default for RefreshConfig {
    fn default() -> Self {
        Self {
            absolute_lifetime: Duration::from_secs(30 * 24 * 3600),
            idle_lifetime: Some(Duration::from_secs(30 * 24 * 3600)),
            grace_period: Duration::from_secs(10),
        }
    }
}

/// A [`RefreshConfig`] that cannot work.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RefreshConfigError {
    /// The absolute lifetime is zero: every session would be over before it starts.
    #[error("the absolute lifetime must be above zero")]
    AbsoluteLifetime,
    /// The idle lifetime is zero (use `None` for no idle limit).
    #[error("the idle lifetime must be above zero (None: no idle limit)")]
    IdleLifetime,
    /// The grace period is not shorter than the session's lifetimes.
    #[error("the grace period must be shorter than the absolute and idle lifetimes")]
    GracePeriod,
}

impl keel_resilience::Classify for RefreshConfigError {
    /// Always permanent: the settings are wrong.
    fn class(&self) -> keel_resilience::ErrorClass {
        keel_resilience::ErrorClass::Permanent
    }
}

impl RefreshConfig {
    /// Checks that the settings can work ([`RefreshTokens::new`] does).
    ///
    /// # Errors
    /// The first setting that cannot work.
    pub fn validate(&self) -> Result<(), RefreshConfigError> {
        if self.absolute_lifetime.is_zero() {
            return Err(RefreshConfigError::AbsoluteLifetime);
        }
        if self.idle_lifetime.is_some_and(|idle| idle.is_zero()) {
            return Err(RefreshConfigError::IdleLifetime);
        }
        let shortest = self.idle_lifetime.map_or(self.absolute_lifetime, |idle| {
            idle.min(self.absolute_lifetime)
        });
        if self.grace_period >= shortest {
            return Err(RefreshConfigError::GracePeriod);
        }
        Ok(())
    }

    /// Sets the absolute lifetime.
    #[must_use]
    pub fn absolute_lifetime(mut self, lifetime: Duration) -> Self {
        self.absolute_lifetime = lifetime;
        self
    }

    /// Sets (or removes) the idle lifetime.
    #[must_use]
    pub fn idle_lifetime(mut self, lifetime: Option<Duration>) -> Self {
        self.idle_lifetime = lifetime;
        self
    }

    /// Sets the grace period.
    #[must_use]
    pub fn grace_period(mut self, grace: Duration) -> Self {
        self.grace_period = grace;
        self
    }
}

/// A refresh token as handed to a client. `Debug` never shows the token.
#[derive(Clone, PartialEq, Eq)]
pub struct IssuedRefreshToken {
    /// The opaque token (43 base64url characters).
    pub token: String,
    /// Its family (the login session).
    pub family: FamilyId,
    /// The user.
    pub subject: String,
    /// The OAuth client.
    pub client_id: String,
    /// When the session ends at the latest (ms since the epoch).
    pub expires_at: u64,
    /// True when this is a retry inside the grace period returning the same successor.
    pub retried: bool,
}

impl fmt::Debug for IssuedRefreshToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedRefreshToken")
            .field("family", &self.family)
            .field("subject", &self.subject)
            .field("client_id", &self.client_id)
            .field("expires_at", &self.expires_at)
            .field("retried", &self.retried)
            .finish_non_exhaustive()
    }
}

/// Why a refresh token was refused. All but `Store` map to OAuth's `invalid_grant`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RefreshError {
    /// Not a token we issued (or one cleaned up since).
    #[error("unknown refresh token")]
    Unknown,
    /// The session is past its absolute or idle lifetime.
    #[error("the session has expired; sign in again")]
    Expired,
    /// The token or its session was revoked.
    #[error("the session was revoked; sign in again")]
    Revoked,
    /// An already-rotated (or revoked) token was presented again: the whole session is
    /// revoked. The message names no id, so it can go to the client as it is.
    #[error("refresh token reuse detected; the session is revoked, sign in again")]
    ReuseDetected {
        /// The revoked family.
        family: FamilyId,
    },
    /// The store failed; nothing changed. Retry.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Sealing or opening the stored successor failed.
    #[error("could not seal or open a stored token")]
    Seal(#[from] SealError),
}

impl RefreshError {
    /// The OAuth error code (RFC 6749 §5.2).
    #[must_use]
    pub fn oauth_error(&self) -> &'static str {
        match self {
            RefreshError::Store(_) | RefreshError::Seal(_) => "server_error",
            _ => "invalid_grant",
        }
    }
}

/// A user's live session, for listing and revocation.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Session {
    /// The family id.
    pub family: FamilyId,
    /// The client.
    pub client_id: String,
    /// Sign-in time (ms since the epoch).
    pub created_at: u64,
    /// Last rotation (ms since the epoch).
    pub last_used_at: u64,
    /// When it ends unless used (ms since the epoch).
    pub expires_at: u64,
}

/// The refresh-token engine over a store.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use keel_token_manager::{MemoryStore, RefreshConfig, RefreshError, RefreshTokens, SealingKeys};
///
/// let tokens = RefreshTokens::new(MemoryStore::new(), SealingKeys::generate(1).unwrap(), RefreshConfig::default()).unwrap();
/// let first = tokens.issue("user-42", "web-app").await.unwrap();
/// let second = tokens.rotate(&first.token).await.unwrap();
/// assert_eq!(second.family, first.family);
/// // Presenting the first token again, after the grace period, is reuse:
/// let strict = RefreshTokens::new(MemoryStore::new(), SealingKeys::generate(1).unwrap(),
///     RefreshConfig::default().grace_period(std::time::Duration::ZERO)).unwrap();
/// let a = strict.issue("u", "c").await.unwrap();
/// strict.rotate(&a.token).await.unwrap();
/// assert!(matches!(strict.rotate(&a.token).await, Err(RefreshError::ReuseDetected { .. })));
/// # }
/// ```
#[derive(Debug)]
pub struct RefreshTokens<S> {
    store: S,
    seal: SealingKeys,
    config: RefreshConfig,
    rng: SystemRandom,
    clock: Arc<dyn WallClock>,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The hash of a token as presented (its text).
#[must_use]
pub fn hash_token(token: &str) -> TokenHash {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, token.as_bytes()).as_ref());
    TokenHash(out)
}

fn plausible(token: &str) -> bool {
    token.len() == 43
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl<S: RefreshTokenStore> RefreshTokens<S> {
    /// An engine over `store`, sealing retry successors with `seal`.
    ///
    /// # Errors
    /// [`RefreshConfigError`] when the config cannot work (a zero lifetime, a grace
    /// period as long as a session).
    pub fn new(
        store: S,
        seal: SealingKeys,
        config: RefreshConfig,
    ) -> Result<Self, RefreshConfigError> {
        config.validate()?;
        Ok(Self {
            store,
            seal,
            config,
            rng: SystemRandom::new(),
            clock: Arc::new(SystemClock),
        })
    }

    /// Reads the time for lifetimes, the grace period and cleanup from `clock` (default
    /// [`SystemClock`]); every instance sharing a store should read clocks kept in sync
    /// (NTP), as lifetimes are stored as times.
    ///
    /// ```
    /// use keel_resilience::clock::ManualClock;
    /// use keel_token_manager::{MemoryStore, RefreshConfig, RefreshError, RefreshTokens, SealingKeys};
    /// use std::time::Duration;
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let clock = ManualClock::starting_now();
    /// let config = RefreshConfig::default().idle_lifetime(Some(Duration::from_secs(3600)));
    /// let tokens = RefreshTokens::new(MemoryStore::new(), SealingKeys::generate(1).unwrap(), config)
    ///     .unwrap()
    ///     .clock(clock.clone());
    /// let issued = tokens.issue("user-42", "web-app").await.unwrap();
    /// clock.advance(Duration::from_secs(3601));
    /// assert!(matches!(tokens.rotate(&issued.token).await, Err(RefreshError::Expired)));
    /// # }
    /// ```
    #[must_use]
    pub fn clock(mut self, clock: impl WallClock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }

    fn random(&self, bytes: usize) -> Result<Vec<u8>, RefreshError> {
        let mut buf = vec![0u8; bytes];
        self.rng.fill(&mut buf).map_err(|_| SealError::Random)?;
        Ok(buf)
    }

    fn new_token(&self) -> Result<String, RefreshError> {
        Ok(URL_SAFE_NO_PAD.encode(self.random(32)?))
    }

    /// Starts a session: a new family and its first token.
    ///
    /// # Errors
    /// [`RefreshError::Store`] when the store fails.
    pub async fn issue(
        &self,
        subject: &str,
        client_id: &str,
    ) -> Result<IssuedRefreshToken, RefreshError> {
        let now = self.now_ms();
        let token = self.new_token()?;
        let family = Family {
            id: FamilyId(URL_SAFE_NO_PAD.encode(self.random(16)?)),
            subject: subject.to_owned(),
            client_id: client_id.to_owned(),
            created_at: now,
            absolute_expiry: now.saturating_add(ms(self.config.absolute_lifetime)),
            idle_expiry: now
                .saturating_add(self.config.idle_lifetime.map_or(u64::MAX, ms))
                .min(now.saturating_add(ms(self.config.absolute_lifetime))),
            last_used_at: now,
            revoked_at: None,
        };
        let first = TokenRecord {
            hash: hash_token(&token),
            family: family.id.clone(),
            generation: 0,
            issued_at: now,
            state: TokenState::Active,
        };
        let issued = IssuedRefreshToken {
            token,
            family: family.id.clone(),
            subject: family.subject.clone(),
            client_id: family.client_id.clone(),
            expires_at: family.absolute_expiry,
            retried: false,
        };
        self.store.create(family, first).await?;
        audit::refresh_issued(&issued.family, client_id);
        Ok(issued)
    }

    /// Exchanges a refresh token for its successor.
    ///
    /// # Errors
    /// [`RefreshError::ReuseDetected`] (the session is revoked), `Unknown`, `Expired`,
    /// `Revoked`, or `Store` (nothing changed; retry).
    pub async fn rotate(&self, token: &str) -> Result<IssuedRefreshToken, RefreshError> {
        if !plausible(token) {
            return Err(RefreshError::Unknown);
        }
        let presented = hash_token(token);
        let successor_token = self.new_token()?;
        let successor = hash_token(&successor_token);
        let context = seal_context(presented, successor);
        let sealed_successor = self.seal.seal(successor_token.as_bytes(), &context)?;
        let outcome = self
            .store
            .rotate(RotateRequest {
                presented,
                successor,
                sealed_successor,
                now: self.now_ms(),
                grace_ms: ms(self.config.grace_period),
                idle_ms: self.config.idle_lifetime.map_or(u64::MAX, ms),
            })
            .await?;
        match outcome {
            RotateOutcome::Rotated { family } => {
                audit::refresh_rotated(&family.id, false);
                Ok(issued(&family, successor_token, false))
            }
            RotateOutcome::Retried {
                family,
                successor,
                sealed_successor,
            } => {
                let plain = self
                    .seal
                    .open(&sealed_successor, &seal_context(presented, successor))?;
                let token = String::from_utf8(plain).map_err(|_| SealError::Corrupt)?;
                audit::refresh_rotated(&family.id, true);
                Ok(issued(&family, token, true))
            }
            RotateOutcome::ReuseDetected { family } => {
                audit::reuse_detected(&family.id, &family.subject, &family.client_id);
                Err(RefreshError::ReuseDetected { family: family.id })
            }
            RotateOutcome::Unknown => Err(RefreshError::Unknown),
            RotateOutcome::Expired => Err(RefreshError::Expired),
            RotateOutcome::Revoked => Err(RefreshError::Revoked),
        }
    }

    /// Revokes the session a token belongs to (logout, RFC 7009). Succeeds for unknown
    /// tokens too. Any token of the session counts, a rotated one included: revoking only
    /// that token would let whoever rotated it (a thief) keep the successor, and would
    /// turn the victim's later reuse into a plain "revoked" instead of reuse detection.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// use keel_token_manager::{MemoryStore, RefreshConfig, RefreshError, RefreshTokens, SealingKeys};
    ///
    /// let tokens = RefreshTokens::new(MemoryStore::new(), SealingKeys::generate(1).unwrap(), RefreshConfig::default()).unwrap();
    /// let stolen = tokens.issue("user-42", "web-app").await.unwrap();
    /// let thiefs = tokens.rotate(&stolen.token).await.unwrap();
    /// tokens.revoke(&stolen.token).await.unwrap(); // logout with the old token
    /// assert!(matches!(tokens.rotate(&thiefs.token).await, Err(RefreshError::Revoked)));
    /// # }
    /// ```
    ///
    /// # Errors
    /// [`RefreshError::Store`].
    pub async fn revoke(&self, token: &str) -> Result<(), RefreshError> {
        if plausible(token)
            && let Some(family) = self
                .store
                .revoke_token(hash_token(token), self.now_ms())
                .await?
        {
            audit::revoked("token", Some(&family));
        }
        Ok(())
    }

    /// Revokes a whole session.
    ///
    /// # Errors
    /// [`RefreshError::Store`].
    pub async fn revoke_family(&self, family: &FamilyId) -> Result<bool, RefreshError> {
        let done = self.store.revoke_family(family, self.now_ms()).await?;
        if done {
            audit::revoked("family", Some(family));
        }
        Ok(done)
    }

    /// Revokes every session of a user ("sign out everywhere"); how many.
    ///
    /// # Errors
    /// [`RefreshError::Store`].
    pub async fn revoke_subject(&self, subject: &str) -> Result<usize, RefreshError> {
        let n = self.store.revoke_subject(subject, self.now_ms()).await?;
        audit::revoked("subject", None);
        Ok(n)
    }

    /// The user's live sessions, oldest first.
    ///
    /// # Errors
    /// [`RefreshError::Store`].
    pub async fn sessions(&self, subject: &str) -> Result<Vec<Session>, RefreshError> {
        let now = self.now_ms();
        Ok(self
            .store
            .families(subject)
            .await?
            .into_iter()
            .filter(|f| f.is_live(now))
            .map(|f| Session {
                family: f.id,
                client_id: f.client_id,
                created_at: f.created_at,
                last_used_at: f.last_used_at,
                expires_at: f.idle_expiry.min(f.absolute_expiry),
            })
            .collect())
    }

    /// Deletes expired and revoked sessions; how many.
    ///
    /// # Errors
    /// [`RefreshError::Store`].
    pub async fn cleanup(&self) -> Result<usize, RefreshError> {
        Ok(self.store.cleanup(self.now_ms()).await?)
    }
}

fn seal_context(presented: TokenHash, successor: TokenHash) -> Vec<u8> {
    let mut context = Vec::with_capacity(64);
    context.extend_from_slice(&presented.0);
    context.extend_from_slice(&successor.0);
    context
}

fn issued(family: &Family, token: String, retried: bool) -> IssuedRefreshToken {
    IssuedRefreshToken {
        token,
        family: family.id.clone(),
        subject: family.subject.clone(),
        client_id: family.client_id.clone(),
        expires_at: family.absolute_expiry,
        retried,
    }
}

impl keel_resilience::Classify for RefreshError {
    /// The store's class for [`RefreshError::Store`] (a retry may help), transient for a
    /// failed random generator; permanent for the rest: the token is no good.
    fn class(&self) -> keel_resilience::ErrorClass {
        match self {
            RefreshError::Store(e) => e.class(),
            RefreshError::Seal(e) => e.class(),
            _ => keel_resilience::ErrorClass::Permanent,
        }
    }
}
