//! Signed-in users: their refresh tokens kept sealed, redeemed one at a time.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use keel_resilience::ErrorClass;

use super::response::{ResponseError, TokenGrant};
use super::{AccessToken, TokenError, TokenFuture, TokenProvider, TokenRequest};
use crate::SealingKeys;

const PROVIDER: &str = "signed-in users";

/// The future a [`RefreshGrant`] returns.
pub type GrantFuture<'a> =
    Pin<Box<dyn Future<Output = Result<TokenGrant, TokenError>> + Send + 'a>>;

/// A client that redeems refresh tokens (RFC 6749 §6):
/// [`AuthorizationCodeClient`](super::AuthorizationCodeClient) and
/// [`DeviceCodeClient`](super::DeviceCodeClient).
pub trait RefreshGrant: Send + Sync {
    /// A new access token (and, when the provider rotates them, a new refresh token) for
    /// `request` from `refresh_token`.
    fn refresh<'a>(&'a self, refresh_token: &'a str, request: &'a TokenRequest) -> GrantFuture<'a>;

    /// The client: its token endpoint and client id (see
    /// [`TokenProvider::identity`]). `None` by default.
    fn identity(&self) -> Option<String> {
        None
    }
}

struct Session {
    /// The refresh token, sealed with the account as context.
    sealed: Vec<u8>,
    /// Random, per sign-in: shared caches key a user's tokens by it, so an account id
    /// used again for another sign-in never meets the earlier one's tokens.
    id: u64,
    /// Held while the refresh token is redeemed: a rotating token is spent once.
    turn: Arc<tokio::sync::Mutex<()>>,
}

struct Inner {
    client: Box<dyn RefreshGrant>,
    keys: SealingKeys,
    sessions: Mutex<HashMap<String, Session>>,
    max_accounts: std::sync::atomic::AtomicUsize,
}

/// The users signed in to a web app or a device (authorization code or device code
/// flow): each one's refresh token kept sealed (AES-256-GCM, [`SealingKeys`], bound to
/// the account), and a [`TokenProvider`] per user that redeems it, keeping the rotated
/// token Entra ID sends back. Requests for one user are redeemed one at a time (a
/// rotated refresh token is spent once: two redemptions at once would make the second
/// a reuse), and a refresh token the provider refuses (`invalid_grant`: expired,
/// revoked, reused) signs the user out, so that callers are told to sign in again
/// rather than retrying.
///
/// Put a [`CachingProvider`](super::CachingProvider) in front of each user's provider
/// for MSAL's silent acquisition (cached access tokens, refreshed ahead of expiry).
/// [`sign_out`](Self::sign_out) forgets the refresh token; access tokens already handed
/// out stay valid until they expire, so also `clear()` that user's `CachingProvider`.
/// Redemptions run in a task of their own (in the caller's tracing span), so a caller
/// that gives up never loses a rotated refresh token.
/// [`sealed`](Self::sealed) and [`restore`](Self::restore) move a user's sealed refresh
/// token to and from your own session store. Bounded (100,000 accounts by default).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use keel_token_manager::SealingKeys;
/// use keel_token_manager::client::{Authority, AuthorizationCodeClient, CachingProvider, SignedInUsers};
///
/// let client = AuthorizationCodeClient::new(Authority::AzurePublic, "organizations", "app-id", "https://app.example/callback", None)?;
/// let users = SignedInUsers::new(client, SealingKeys::generate(1)?);
/// // After `client.redeem(...)` gave a grant: `users.keep("user-oid", &grant)?;`
/// assert!(!users.is_signed_in("user-oid"));
/// let alice = CachingProvider::new(users.user("user-oid"));
/// # drop(alice); Ok(()) }
/// ```
#[derive(Clone)]
pub struct SignedInUsers {
    inner: Arc<Inner>,
}

impl fmt::Debug for SignedInUsers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignedInUsers")
            .field("accounts", &self.inner.sessions().len())
            .field("keys", &self.inner.keys)
            .finish_non_exhaustive()
    }
}

impl Inner {
    fn sessions(&self) -> MutexGuard<'_, HashMap<String, Session>> {
        self.sessions.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn seal(&self, account: &str, refresh_token: &str) -> Result<Vec<u8>, TokenError> {
        self.keys
            .seal(refresh_token.as_bytes(), account.as_bytes())
            .map_err(|e| TokenError::failed(PROVIDER, ErrorClass::Transient, e))
    }
}

/// A random session id.
fn session_id() -> Result<u64, TokenError> {
    super::error::random_bytes(PROVIDER).map(u64::from_be_bytes)
}

fn signed_out(account_known: bool) -> TokenError {
    let reason = if account_known {
        "the user signed out while the token was being refreshed"
    } else {
        "the user is not signed in (or must sign in again)"
    };
    TokenError::failed(
        PROVIDER,
        ErrorClass::Permanent,
        ResponseError::Invalid(reason.into()),
    )
}

impl SignedInUsers {
    /// Users of `client`, their refresh tokens sealed with `keys`.
    pub fn new(client: impl RefreshGrant + 'static, keys: SealingKeys) -> Self {
        Self {
            inner: Arc::new(Inner {
                client: Box::new(client),
                keys,
                sessions: Mutex::new(HashMap::new()),
                max_accounts: std::sync::atomic::AtomicUsize::new(100_000),
            }),
        }
    }

    /// The most accounts kept (default 100,000; at least 1); past it
    /// [`keep`](Self::keep) refuses new accounts.
    #[must_use]
    pub fn max_accounts(self, accounts: usize) -> Self {
        self.inner
            .max_accounts
            .store(accounts.max(1), std::sync::atomic::Ordering::Relaxed);
        self
    }

    /// Keeps the refresh token of `grant` (from `redeem` or a device code `wait`) for
    /// `account` (your id for the user: the ID token's `oid`, or a session id), replacing
    /// any earlier one. Returns `false` when the grant has no refresh token (ask for
    /// `offline_access`).
    ///
    /// # Errors
    /// [`TokenError::Failed`] when the account bound is reached, or sealing fails.
    pub fn keep(&self, account: &str, grant: &TokenGrant) -> Result<bool, TokenError> {
        let Some(refresh_token) = grant.refresh_token() else {
            return Ok(false);
        };
        let sealed = self.inner.seal(account, refresh_token)?;
        self.insert(account, sealed)?;
        Ok(true)
    }

    fn insert(&self, account: &str, sealed: Vec<u8>) -> Result<(), TokenError> {
        self.insert_session(account, sealed, true).map(|_| ())
    }

    /// Whether `account` has a refresh token kept.
    #[must_use]
    pub fn is_signed_in(&self, account: &str) -> bool {
        self.inner.sessions().contains_key(account)
    }

    /// Forgets `account`'s refresh token; a redemption under way keeps nothing.
    pub fn sign_out(&self, account: &str) {
        self.inner.sessions().remove(account);
    }

    /// `account`'s refresh token as kept: sealed, bound to the account (to store in your
    /// own session store and [`restore`](Self::restore) later, on this or another
    /// instance with the same keys).
    #[must_use]
    pub fn sealed(&self, account: &str) -> Option<Vec<u8>> {
        self.inner
            .sessions()
            .get(account)
            .map(|session| session.sealed.clone())
    }

    /// Takes back a refresh token from [`sealed`](Self::sealed), unless the account is
    /// signed in here already: the one held here is at least as new (it may have been
    /// rotated since the copy was stored), and replacing it would make the next
    /// redemption a reuse. Returns whether it was taken.
    ///
    /// # Errors
    /// [`TokenError::Failed`] (permanent) when it does not open with these keys for this
    /// account (altered, another account's, another key ring), or the account bound is
    /// reached.
    pub fn restore(&self, account: &str, sealed: &[u8]) -> Result<bool, TokenError> {
        self.inner
            .keys
            .open(sealed, account.as_bytes())
            .map_err(|e| TokenError::failed(PROVIDER, ErrorClass::Permanent, e))?;
        if self.is_signed_in(account) {
            return Ok(false);
        }
        self.insert_if_absent(account, sealed.to_vec())
    }

    fn insert_if_absent(&self, account: &str, sealed: Vec<u8>) -> Result<bool, TokenError> {
        self.insert_session(account, sealed, false)
    }

    /// Keeps a new session for `account` (a new turn: a redemption of an older token
    /// under way does not overwrite it), replacing one held here only if `replace`.
    /// Whether it was kept.
    fn insert_session(
        &self,
        account: &str,
        sealed: Vec<u8>,
        replace: bool,
    ) -> Result<bool, TokenError> {
        let id = session_id()?;
        let mut sessions = self.inner.sessions();
        let held = sessions.contains_key(account);
        if held && !replace {
            return Ok(false);
        }
        let bound = self
            .inner
            .max_accounts
            .load(std::sync::atomic::Ordering::Relaxed);
        if !held && sessions.len() >= bound {
            return Err(TokenError::failed(
                PROVIDER,
                ErrorClass::Transient,
                ResponseError::Invalid("too many signed-in accounts are kept".into()),
            ));
        }
        sessions.insert(
            account.to_owned(),
            Session {
                sealed,
                id,
                turn: Arc::default(),
            },
        );
        Ok(true)
    }

    /// A [`TokenProvider`] for `account`: each request redeems the account's refresh
    /// token (put a [`CachingProvider`](super::CachingProvider) in front).
    #[must_use]
    pub fn user(&self, account: impl Into<String>) -> SignedInUser {
        SignedInUser {
            users: self.clone(),
            account: account.into(),
        }
    }

    /// Redeems in a task of its own: a caller that gives up (a timeout, a dropped
    /// request) after the provider rotated the refresh token does not lose the rotated
    /// one, which would sign the user out at the next redemption.
    async fn token(
        &self,
        account: &str,
        request: &TokenRequest,
    ) -> Result<AccessToken, TokenError> {
        let (users, account, request) = (self.clone(), account.to_owned(), request.clone());
        let redemption = async move { users.redeem(&account, &request).await };
        tokio::spawn(tracing::Instrument::in_current_span(redemption))
            .await
            .map_err(|e| TokenError::failed(PROVIDER, ErrorClass::Transient, e))?
    }

    async fn redeem(
        &self,
        account: &str,
        request: &TokenRequest,
    ) -> Result<AccessToken, TokenError> {
        let inner = &*self.inner;
        let turn = inner
            .sessions()
            .get(account)
            .map(|session| session.turn.clone())
            .ok_or_else(|| signed_out(false))?;
        let _turn = turn.lock().await;
        // Read after taking the turn: the previous holder may have rotated it.
        let sealed = inner
            .sessions()
            .get(account)
            .filter(|session| Arc::ptr_eq(&session.turn, &turn))
            .map(|session| session.sealed.clone())
            .ok_or_else(|| signed_out(true))?;
        let refresh_token = inner
            .keys
            .open(&sealed, account.as_bytes())
            .map_err(|e| TokenError::failed(PROVIDER, ErrorClass::Permanent, e))
            .and_then(|plain| {
                String::from_utf8(plain)
                    .map_err(|e| TokenError::failed(PROVIDER, ErrorClass::Permanent, e))
            })?;
        let grant = match inner.client.refresh(&refresh_token, request).await {
            Ok(grant) => grant,
            Err(e) => {
                if e.oauth().is_some_and(|o| o.error == "invalid_grant") {
                    // Expired, revoked or reused: the user must sign in again.
                    let mut sessions = inner.sessions();
                    if sessions
                        .get(account)
                        .is_some_and(|session| Arc::ptr_eq(&session.turn, &turn))
                    {
                        sessions.remove(account);
                    }
                }
                return Err(e);
            }
        };
        let resealed = match grant.refresh_token() {
            Some(rotated) => Some(inner.seal(account, rotated)?),
            None => None,
        };
        let mut sessions = inner.sessions();
        match sessions.get_mut(account) {
            Some(session) if Arc::ptr_eq(&session.turn, &turn) => {
                if let Some(resealed) = resealed {
                    session.sealed = resealed;
                }
            }
            // Signed out (or in again) meanwhile: this grant is neither kept nor served.
            _ => return Err(signed_out(true)),
        }
        Ok(grant.access)
    }
}

/// One signed-in user's tokens, from [`SignedInUsers::user`].
#[derive(Clone)]
pub struct SignedInUser {
    users: SignedInUsers,
    account: String,
}

impl fmt::Debug for SignedInUser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignedInUser")
            .field("account", &self.account)
            .finish_non_exhaustive()
    }
}

impl TokenProvider for SignedInUser {
    fn token<'a>(&'a self, request: &'a TokenRequest) -> TokenFuture<'a> {
        Box::pin(self.users.token(&self.account, request))
    }

    fn identity(&self) -> Option<String> {
        let session = self
            .users
            .inner
            .sessions()
            .get(&self.account)
            .map_or(0, |session| session.id);
        Some(format!(
            "signed-in|{}|{}|{session:016x}",
            self.users
                .inner
                .client
                .identity()
                .unwrap_or_else(|| "?".into()),
            self.account
        ))
    }
}
