//! RFC 9068 access tokens: the claims and the issuer that signs them.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::Header;
use keel_resilience::clock::WallClock;
use ring::rand::{SecureRandom as _, SystemRandom};
use serde::{Deserialize, Serialize};

use crate::audit;
use crate::keys::KeyRing;

/// The JOSE `typ` of an RFC 9068 access token.
pub const ACCESS_TOKEN_TYP: &str = "at+jwt";

/// One audience or several (`aud` may be a string or an array).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    /// A single audience.
    One(String),
    /// Several audiences.
    Many(Vec<String>),
}

impl Audience {
    /// Whether `audience` is among them.
    #[must_use]
    pub fn contains(&self, audience: &str) -> bool {
        match self {
            Audience::One(a) => a == audience,
            Audience::Many(all) => all.iter().any(|a| a == audience),
        }
    }
}

/// The claims of an RFC 9068 access token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessTokenClaims {
    /// The issuer.
    pub iss: String,
    /// The subject (the user, or the client for client credentials).
    pub sub: String,
    /// The audience(s): the resource server(s).
    pub aud: Audience,
    /// Expiry, seconds since the epoch.
    pub exp: u64,
    /// Issued at, seconds since the epoch.
    pub iat: u64,
    /// Not before, seconds since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// The token's unique id (Entra ID calls it `uti`).
    #[serde(alias = "uti")]
    pub jti: String,
    /// The OAuth client the token was issued to (Entra ID: `azp` in v2.0 tokens, `appid`
    /// in v1.0).
    #[serde(alias = "azp", alias = "appid")]
    pub client_id: String,
    /// Space-separated scopes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// Authentication context class reference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acr: Option<String>,
    /// Authentication methods (`pwd`, `mfa`, `hwk`...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub amr: Vec<String>,
    /// When the user authenticated, seconds since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_time: Option<u64>,
    /// The Entra ID tenant the token was issued in (Entra ID's `tid`); checked against
    /// a multi-tenant issuer template and [`Validator::tenants`](crate::Validator::tenants).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tid: Option<String>,
    /// Application permissions granted to the client (Entra ID's app-only tokens carry
    /// them here, `scope` / `scp` holding delegated ones).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
}

impl AccessTokenClaims {
    /// Whether `roles` holds `wanted` (an application permission such as
    /// `User.Read.All`).
    #[must_use]
    pub fn has_role(&self, wanted: &str) -> bool {
        self.roles.iter().any(|r| r == wanted)
    }

    /// Whether the space-separated `scope` holds `wanted`.
    #[must_use]
    pub fn has_scope(&self, wanted: &str) -> bool {
        self.scope
            .as_deref()
            .is_some_and(|s| s.split(' ').any(|x| x == wanted))
    }
}

/// What an access token is issued for.
///
/// ```
/// use keel_token_manager::Grant;
///
/// let grant = Grant::new("user-42", "web-app").scope("orders:read").acr("mfa").amr(["pwd", "otp"]);
/// assert_eq!(grant.subject(), "user-42");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use]
pub struct Grant {
    subject: String,
    client_id: String,
    scope: Option<String>,
    acr: Option<String>,
    amr: Vec<String>,
    auth_time: Option<u64>,
    tenant: Option<String>,
    roles: Vec<String>,
}

impl Grant {
    /// A grant for `subject` through `client_id`.
    pub fn new(subject: impl Into<String>, client_id: impl Into<String>) -> Self {
        Self {
            subject: subject.into(),
            client_id: client_id.into(),
            scope: None,
            acr: None,
            amr: Vec::new(),
            auth_time: None,
            tenant: None,
            roles: Vec::new(),
        }
    }

    /// The tenant the token is issued in (the `tid` claim).
    pub fn tenant(mut self, tid: impl Into<String>) -> Self {
        self.tenant = Some(tid.into());
        self
    }

    /// Application permissions (the `roles` claim).
    pub fn roles<I, S>(mut self, roles: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.roles = roles.into_iter().map(Into::into).collect();
        self
    }

    /// Space-separated scopes.
    pub fn scope(mut self, scope: impl Into<String>) -> Self {
        self.scope = Some(scope.into());
        self
    }

    /// The authentication context class.
    pub fn acr(mut self, acr: impl Into<String>) -> Self {
        self.acr = Some(acr.into());
        self
    }

    /// The authentication methods.
    pub fn amr<I, S>(mut self, methods: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.amr = methods.into_iter().map(Into::into).collect();
        self
    }

    /// When the user authenticated.
    pub fn auth_time(mut self, at: SystemTime) -> Self {
        self.auth_time = Some(unix(at));
        self
    }

    /// The subject.
    #[must_use]
    pub fn subject(&self) -> &str {
        &self.subject
    }
}

/// A signed access token and when it expires.
#[derive(Clone, PartialEq, Eq)]
pub struct IssuedAccessToken {
    /// The compact JWT.
    pub token: String,
    /// Its `jti`.
    pub jti: String,
    /// Its expiry.
    pub expires_at: SystemTime,
}

impl fmt::Debug for IssuedAccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The token is a bearer credential: never printed.
        f.debug_struct("IssuedAccessToken")
            .field("jti", &self.jti)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// An access token could not be signed: the random generator failed (for its id), or
/// the signature did (its error is the source).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IssueError {
    /// The system random generator failed.
    #[error("could not sign the access token: the system random generator failed")]
    Random,
    /// Signing failed.
    #[error("could not sign the access token")]
    Sign(#[source] Box<dyn std::error::Error + Send + Sync + 'static>),
    /// The token would expire past what a timestamp can hold (a `ttl` far too long).
    #[error("could not sign the access token: its expiry is out of range (shorten the ttl)")]
    Lifetime,
}

impl keel_resilience::Classify for IssueError {
    /// Transient when the random generator failed; permanent when signing did (the key
    /// does not sign).
    fn class(&self) -> keel_resilience::ErrorClass {
        match self {
            IssueError::Random => keel_resilience::ErrorClass::Transient,
            IssueError::Sign(_) | IssueError::Lifetime => keel_resilience::ErrorClass::Permanent,
        }
    }
}

/// Signs access tokens with a [`KeyRing`]'s active key.
///
/// ```
/// use keel_token_manager::{AccessTokenIssuer, Algorithm, Grant, KeyRing, SigningKey};
///
/// let keys = KeyRing::new(SigningKey::generate("k1", Algorithm::EdDSA).unwrap());
/// let issuer = AccessTokenIssuer::new(keys, "https://auth.example", "https://api.example");
/// let issued = issuer.issue(&Grant::new("user-42", "web-app").scope("orders:read")).unwrap();
/// assert_eq!(issued.token.split('.').count(), 3);
/// ```
#[derive(Debug, Clone)]
pub struct AccessTokenIssuer {
    keys: KeyRing,
    issuer: String,
    audience: String,
    ttl: Duration,
    rng: SystemRandom,
    clock: Arc<dyn WallClock>,
}

impl AccessTokenIssuer {
    /// An issuer named `issuer` for resource server `audience`; tokens live 15 minutes.
    #[must_use]
    pub fn new(keys: KeyRing, issuer: impl Into<String>, audience: impl Into<String>) -> Self {
        Self {
            issuer: issuer.into(),
            audience: audience.into(),
            ttl: Duration::from_secs(15 * 60),
            rng: SystemRandom::new(),
            clock: keys.wall_clock(),
            keys,
        }
    }

    /// Reads the time for `iat` and `exp` from `clock` (default: the key ring's).
    ///
    /// ```
    /// use keel_resilience::clock::ManualClock;
    /// use keel_token_manager::{AccessTokenIssuer, Algorithm, Grant, KeyRing, SigningKey};
    /// use std::time::{Duration, UNIX_EPOCH};
    ///
    /// let keys = KeyRing::new(SigningKey::generate("k1", Algorithm::EdDSA).unwrap());
    /// let issuer = AccessTokenIssuer::new(keys, "https://auth.example", "https://api.example")
    ///     .clock(ManualClock::new(1_800_000_000_000));
    /// let issued = issuer.issue(&Grant::new("user-42", "web-app")).unwrap();
    /// assert_eq!(issued.expires_at, UNIX_EPOCH + Duration::from_secs(1_800_000_000 + 900));
    /// ```
    #[must_use]
    pub fn clock(mut self, clock: impl WallClock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// How long tokens live (default 15 minutes).
    #[must_use]
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// The key ring.
    #[must_use]
    pub fn keys(&self) -> &KeyRing {
        &self.keys
    }

    /// Signs an access token for `grant` with the active key.
    ///
    /// # Errors
    /// [`IssueError`] when signing fails (it does not with a key that loaded).
    pub fn issue(&self, grant: &Grant) -> Result<IssuedAccessToken, IssueError> {
        let key = self.keys.active();
        let now = self.clock.now();
        let expires_at = now.checked_add(self.ttl).ok_or(IssueError::Lifetime)?;
        let mut id = [0u8; 16];
        self.rng.fill(&mut id).map_err(|_| IssueError::Random)?;
        let jti = URL_SAFE_NO_PAD.encode(id);
        let claims = AccessTokenClaims {
            iss: self.issuer.clone(),
            sub: grant.subject.clone(),
            aud: Audience::One(self.audience.clone()),
            exp: unix(expires_at),
            iat: unix(now),
            nbf: None,
            jti: jti.clone(),
            client_id: grant.client_id.clone(),
            scope: grant.scope.clone(),
            acr: grant.acr.clone(),
            amr: grant.amr.clone(),
            auth_time: grant.auth_time,
            tid: grant.tenant.clone(),
            roles: grant.roles.clone(),
        };
        let mut header = Header::new(key.algorithm().jwt());
        header.typ = Some(ACCESS_TOKEN_TYP.to_owned());
        header.kid = Some(key.kid().to_owned());
        let token = jsonwebtoken::encode(&header, &claims, key.encoding())
            .map_err(|e| IssueError::Sign(Box::new(e)))?;
        audit::issued(key.kid(), key.algorithm(), &grant.client_id, &jti);
        Ok(IssuedAccessToken {
            token,
            jti,
            expires_at,
        })
    }
}

pub(crate) fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
