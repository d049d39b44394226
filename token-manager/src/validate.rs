//! Validating access tokens: algorithm allowlist, `typ`, `kid` lookup, signature, iss,
//! aud, exp/nbf with leeway; and RFC 9470 step-up requirements.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use keel_resilience::clock::{SystemClock, WallClock};
use serde::Deserialize;

use crate::access::{AccessTokenClaims, unix};
use crate::audit;
use crate::keys::{Algorithm, Jwks, KeyError, KeyRing, VerifyingKey};
use crate::untrusted::shown;

/// Why a token was refused. Each reason is distinct, so logs and metrics can tell an
/// attack (`none`, algorithm confusion, tampering) from a stale client (expired).
///
/// Text taken from the token (an `alg`, a `typ`, a `kid`, a parser's complaint) is cut
/// to 128 characters (then `...`), with quotes, backslashes, control and non-ASCII bytes escaped as
/// `%XX`: the messages can go into a `WWW-Authenticate` header or a log line as they
/// are.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ValidationError {
    /// Not three base64url parts with a JSON header.
    #[error("the token is not a well-formed JWS")]
    Malformed,
    /// Longer than the validator accepts ([`Validator::max_token_len`]).
    #[error("the token is too large")]
    TooLarge,
    /// The header has `crit`: extensions the recipient must understand, and this
    /// validator implements none (RFC 7515 §4.1.11).
    #[error("the token requires header extensions (crit) that are not supported")]
    CriticalHeader,
    /// `alg: none`: unsigned tokens are never accepted.
    #[error("unsigned tokens (alg none) are not accepted")]
    AlgorithmNone,
    /// An algorithm outside the allowlist (HMAC included: no shared secrets here).
    #[error("algorithm {0:?} is not allowed")]
    AlgorithmNotAllowed(String),
    /// The header's algorithm is not the one of the key named by `kid`.
    #[error("the token's algorithm does not match its key's")]
    AlgorithmMismatch,
    /// `typ` is not `at+jwt`.
    #[error("the token's typ is {0:?}, not at+jwt")]
    WrongType(Option<String>),
    /// No `kid` in the header.
    #[error("the token names no key (kid)")]
    MissingKeyId,
    /// The `kid` is not a key we know (or it has been retired).
    #[error("unknown signing key {0:?}")]
    UnknownKey(String),
    /// The signature does not verify: the token was altered or signed by someone else.
    #[error("the signature does not verify")]
    BadSignature,
    /// `exp` has passed (beyond the leeway).
    #[error("the token has expired")]
    Expired,
    /// `nbf` is still ahead (beyond the leeway).
    #[error("the token is not valid yet")]
    NotYetValid,
    /// `iat` is ahead of now by more than the leeway.
    #[error("the token claims to be issued in the future")]
    IssuedInFuture,
    /// `exp - iat` is longer than [`Validator::max_lifetime`] allows.
    #[error("the token's lifetime is longer than accepted")]
    LifetimeTooLong,
    /// `iss` is not the expected issuer.
    #[error("the token was issued by someone else")]
    WrongIssuer,
    /// `aud` does not include this resource.
    #[error("the token is for another audience")]
    WrongAudience,
    /// A required claim is missing or has the wrong type.
    #[error("the token's claims are invalid: {0}")]
    InvalidClaims(String),
}

impl ValidationError {
    /// A short stable name, for metrics and logs.
    #[must_use]
    pub fn reason(&self) -> &'static str {
        match self {
            ValidationError::Malformed => "malformed",
            ValidationError::TooLarge => "too_large",
            ValidationError::CriticalHeader => "crit_unsupported",
            ValidationError::AlgorithmNone => "alg_none",
            ValidationError::AlgorithmNotAllowed(_) => "alg_not_allowed",
            ValidationError::AlgorithmMismatch => "alg_mismatch",
            ValidationError::WrongType(_) => "wrong_typ",
            ValidationError::MissingKeyId => "missing_kid",
            ValidationError::UnknownKey(_) => "unknown_kid",
            ValidationError::BadSignature => "bad_signature",
            ValidationError::Expired => "expired",
            ValidationError::NotYetValid => "not_yet_valid",
            ValidationError::IssuedInFuture => "iat_in_future",
            ValidationError::LifetimeTooLong => "lifetime_too_long",
            ValidationError::WrongIssuer => "wrong_issuer",
            ValidationError::WrongAudience => "wrong_audience",
            ValidationError::InvalidClaims(_) => "invalid_claims",
        }
    }

    /// The `WWW-Authenticate` value for a 401 (RFC 6750 `invalid_token`). Its length is
    /// bounded whatever the token held.
    ///
    /// ```
    /// # use keel_token_manager::ValidationError;
    /// let e = ValidationError::Expired;
    /// assert_eq!(e.www_authenticate(), "Bearer error=\"invalid_token\", error_description=\"the token has expired\"");
    /// ```
    #[must_use]
    pub fn www_authenticate(&self) -> String {
        format!(
            "Bearer error=\"invalid_token\", error_description=\"{}\"",
            self.to_string().replace('"', "'")
        )
    }
}

#[derive(Clone)]
enum Keys {
    Ring(KeyRing),
    Fixed(HashMap<String, Arc<VerifyingKey>>),
    #[cfg(feature = "http")]
    Remote(crate::client::RemoteJwks),
}

impl Keys {
    fn find(&self, kid: &str) -> Option<Arc<VerifyingKey>> {
        match self {
            Keys::Ring(ring) => ring.verifying(kid),
            Keys::Fixed(map) => map.get(kid).cloned(),
            #[cfg(feature = "http")]
            Keys::Remote(remote) => remote.find(kid),
        }
    }
}

/// The verification keys of a JWKS by `kid`: duplicate `kid`s refused, keys that may not
/// verify (`use`, `key_ops`) or of unknown algorithms left out.
pub(crate) fn verifying_keys(jwks: &Jwks) -> Result<HashMap<String, Arc<VerifyingKey>>, KeyError> {
    let mut map = HashMap::new();
    let mut seen = std::collections::HashSet::new();
    for jwk in &jwks.keys {
        if !seen.insert(jwk.kid.as_str()) {
            return Err(KeyError::DuplicateKid(shown(&jwk.kid)));
        }
        if !jwk.verifies_signatures() || jwk.algorithm().is_none() {
            continue;
        }
        let (algorithm, key) = jwk.decoding_key()?;
        map.insert(jwk.kid.clone(), Arc::new(VerifyingKey { algorithm, key }));
    }
    Ok(map)
}

/// Validates access tokens for one resource server.
///
/// ```
/// use keel_token_manager::{AccessTokenIssuer, Algorithm, Grant, KeyRing, SigningKey, Validator};
///
/// let keys = KeyRing::new(SigningKey::generate("k1", Algorithm::ES256).unwrap());
/// let issuer = AccessTokenIssuer::new(keys.clone(), "https://auth.example", "https://api.example");
/// let validator = Validator::new(keys, "https://auth.example", "https://api.example");
///
/// let token = issuer.issue(&Grant::new("user-42", "web-app")).unwrap().token;
/// let claims = validator.validate(&token).unwrap();
/// assert_eq!(claims.sub, "user-42");
/// assert!(validator.validate(&format!("{token}x")).is_err());
/// ```
#[derive(Clone)]
pub struct Validator {
    keys: Keys,
    issuer: String,
    audience: String,
    leeway: Duration,
    allowed: Vec<Algorithm>,
    max_lifetime: Option<Duration>,
    max_token_len: usize,
    extra_types: Vec<String>,
    tenants: Tenants,
    clock: Arc<dyn WallClock>,
}

/// Which tenants' tokens a validator takes.
#[derive(Clone, Debug)]
enum Tenants {
    /// Not said: a fixed issuer takes its own; an issuer template takes none.
    Unset,
    /// Any tenant (a multi-tenant app that checks tenants itself).
    Any,
    /// These tenant ids only.
    Only(Vec<String>),
}

/// Entra ID's multi-tenant issuer placeholder (`https://login.microsoftonline.com/{tenantid}/v2.0`).
const TENANT_PLACEHOLDER: &str = "{tenantid}";

/// Whether `tid` has a tenant id's shape (a GUID): anything else could bend the issuer
/// built from the template.
fn is_tenant_id(tid: &str) -> bool {
    tid.len() == 36
        && tid.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

/// The longest token accepted by default: 16 KiB, room for Entra ID tokens with many
/// claims, and a bound on what an attacker makes us decode.
const DEFAULT_MAX_TOKEN_LEN: usize = 16 * 1024;

impl fmt::Debug for Validator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Validator")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("leeway", &self.leeway)
            .field("allowed", &self.allowed)
            .field("max_lifetime", &self.max_lifetime)
            .field("max_token_len", &self.max_token_len)
            .field("tenants", &self.tenants)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct JoseHeader {
    alg: String,
    #[serde(default)]
    typ: Option<String>,
    #[serde(default)]
    kid: Option<String>,
    /// Present at all means refused: no extension is implemented. `null` counts as
    /// present (a plain `Option` would read it as absent).
    #[serde(default, deserialize_with = "present")]
    crit: Option<serde::de::IgnoredAny>,
}

/// `Some` for any value, `null` included; only a missing field stays `None`.
fn present<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<serde::de::IgnoredAny>, D::Error> {
    serde::de::IgnoredAny::deserialize(deserializer).map(Some)
}

impl Validator {
    /// Validates tokens from `issuer` for `audience`, verified by `keys` (our own ring:
    /// retired keys stop verifying by themselves). Leeway 60 s; all three algorithms
    /// allowed.
    #[must_use]
    pub fn new(keys: KeyRing, issuer: impl Into<String>, audience: impl Into<String>) -> Self {
        Self::with_keys(Keys::Ring(keys), issuer.into(), audience.into())
    }

    /// Validates tokens verified by the keys of a JWKS (another issuer's, or our own as
    /// published). Keys whose `use` or `key_ops` do not allow verifying signatures
    /// (encryption keys published in the same set), and keys of an algorithm this crate
    /// does not verify (RS512, ES384, `oct`, an encryption `alg`), are left out: a token
    /// naming one is refused as [`ValidationError::UnknownKey`].
    ///
    /// # Errors
    /// [`KeyError::DuplicateKid`] when two keys of the set share a `kid` (a token naming
    /// it would be ambiguous), [`KeyError::Jwk`] when a signature key of the set is
    /// invalid.
    pub fn from_jwks(
        jwks: &Jwks,
        issuer: impl Into<String>,
        audience: impl Into<String>,
    ) -> Result<Self, KeyError> {
        let map = verifying_keys(jwks)?;
        Ok(Self::with_keys(
            Keys::Fixed(map),
            issuer.into(),
            audience.into(),
        ))
    }

    /// Validates tokens from an external issuer (Entra ID, any OpenID provider) whose
    /// keys come from its JWKS endpoint (see [`RemoteJwks`](crate::client::RemoteJwks)):
    /// validate with [`validate_fresh`](Self::validate_fresh) so an unknown `kid` (the
    /// issuer rotated its keys) fetches the JWKS again, at a bounded rate.
    #[cfg(feature = "http")]
    #[cfg_attr(docsrs, doc(cfg(feature = "http")))]
    #[must_use]
    pub fn from_remote(
        jwks: crate::client::RemoteJwks,
        issuer: impl Into<String>,
        audience: impl Into<String>,
    ) -> Self {
        Self::with_keys(Keys::Remote(jwks), issuer.into(), audience.into())
    }

    /// [`validate`](Self::validate), and for a validator [`from_remote`](Self::from_remote)
    /// whose keys do not know the token's `kid`: fetches the issuer's JWKS again (at most
    /// once per the remote's refresh interval, whatever the tokens say, so random `kid`s
    /// cannot make us hammer the issuer) and validates once more.
    ///
    /// # Errors
    /// As [`validate`](Self::validate).
    #[cfg(feature = "http")]
    #[cfg_attr(docsrs, doc(cfg(feature = "http")))]
    pub async fn validate_fresh(&self, token: &str) -> Result<AccessTokenClaims, ValidationError> {
        if let Keys::Remote(remote) = &self.keys {
            remote.refresh_if_stale();
        }
        let first = self.validate(token);
        if let (Err(ValidationError::UnknownKey(_)), Keys::Remote(remote)) = (&first, &self.keys)
            && remote.refresh().await
        {
            return self.validate(token);
        }
        first
    }

    /// Also accepts these `typ` values besides `at+jwt` (Entra ID's access tokens say
    /// `JWT`). For tokens from an external issuer only: our own are always `at+jwt`.
    #[must_use]
    pub fn accept_types(mut self, types: &[&str]) -> Self {
        self.extra_types = types.iter().map(|t| (*t).to_owned()).collect();
        self
    }

    fn with_keys(keys: Keys, issuer: String, audience: String) -> Self {
        let clock = match &keys {
            Keys::Ring(ring) => ring.wall_clock(),
            _ => Arc::new(SystemClock),
        };
        Self {
            clock,
            keys,
            issuer,
            audience,
            leeway: Duration::from_secs(60),
            allowed: vec![Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA],
            max_lifetime: None,
            max_token_len: DEFAULT_MAX_TOKEN_LEN,
            extra_types: Vec::new(),
            tenants: Tenants::Unset,
        }
    }

    /// Reads the time for `exp`, `nbf` and `iat` from `clock` (default: the key ring's for
    /// [`new`](Self::new), the system's otherwise).
    ///
    /// ```
    /// use keel_resilience::clock::ManualClock;
    /// use keel_token_manager::{AccessTokenIssuer, Algorithm, Grant, KeyRing, SigningKey, ValidationError, Validator};
    /// use std::time::Duration;
    ///
    /// let clock = ManualClock::starting_now();
    /// let keys = KeyRing::new(SigningKey::generate("k1", Algorithm::EdDSA).unwrap()).clock(clock.clone());
    /// let issuer = AccessTokenIssuer::new(keys.clone(), "https://auth.example", "api").ttl(Duration::from_secs(300));
    /// let validator = Validator::new(keys, "https://auth.example", "api").leeway(Duration::ZERO);
    /// let token = issuer.issue(&Grant::new("user-42", "web")).unwrap().token;
    /// assert!(validator.validate(&token).is_ok());
    /// clock.advance(Duration::from_secs(301));
    /// assert!(matches!(validator.validate(&token), Err(ValidationError::Expired)));
    /// ```
    #[must_use]
    pub fn clock(mut self, clock: impl WallClock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Takes tokens of these Entra ID tenants only (their `tid`). Needed with a
    /// multi-tenant issuer template (`https://login.microsoftonline.com/{tenantid}/v2.0`,
    /// what the `common` and `organizations` discovery documents name), whose tokens are
    /// otherwise all refused: every Entra ID tenant's tokens are signed by the same keys,
    /// so without a tenant check a token from any tenant in the world would pass. With a
    /// template, a token's `iss` must also be the template with its own `tid` in place.
    ///
    /// ```
    /// # use keel_token_manager::{Jwks, Validator};
    /// let validator = Validator::from_jwks(&Jwks { keys: vec![] }, "https://login.microsoftonline.com/{tenantid}/v2.0", "api://orders")
    ///     .unwrap()
    ///     .tenants(["72f988bf-86f1-41af-91ab-2d7cd011db47"]);
    /// # drop(validator);
    /// ```
    #[must_use]
    pub fn tenants<I, S>(mut self, tenants: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.tenants = Tenants::Only(
            tenants
                .into_iter()
                .map(|t| t.into().to_ascii_lowercase())
                .collect(),
        );
        self
    }

    /// Takes tokens of any Entra ID tenant under a multi-tenant issuer template (each
    /// token's `iss` still must be the template with its own `tid`): for an app that
    /// checks the tenant itself, per request.
    #[must_use]
    pub fn any_tenant(mut self) -> Self {
        self.tenants = Tenants::Any;
        self
    }

    /// The issuer and tenant checks beyond jsonwebtoken's.
    fn check_tenant(&self, claims: &AccessTokenClaims) -> Result<(), ValidationError> {
        let tid = claims.tid.as_deref().map(str::to_ascii_lowercase);
        if let Some((before, after)) = self.issuer.split_once(TENANT_PLACEHOLDER) {
            let tid = tid
                .as_deref()
                .filter(|tid| is_tenant_id(tid))
                .ok_or(ValidationError::WrongIssuer)?;
            let iss = claims.iss.as_str();
            let matches = iss.len() == before.len() + tid.len() + after.len()
                && iss.starts_with(before)
                && iss.ends_with(after)
                && iss[before.len()..before.len() + tid.len()].eq_ignore_ascii_case(tid);
            if !matches || matches!(self.tenants, Tenants::Unset) {
                return Err(ValidationError::WrongIssuer);
            }
        }
        if let Tenants::Only(allowed) = &self.tenants
            && !tid.as_ref().is_some_and(|tid| allowed.contains(tid))
        {
            return Err(ValidationError::WrongIssuer);
        }
        Ok(())
    }

    /// Refuses tokens whose `exp - iat` is longer than `max` ([`ValidationError::LifetimeTooLong`]):
    /// for tokens from another issuer, a bound on how long a leaked token can be
    /// replayed whatever that issuer chose. Off by default.
    ///
    /// ```
    /// # use keel_token_manager::{Algorithm, KeyRing, SigningKey, Validator, AccessTokenIssuer, Grant, ValidationError};
    /// # use std::time::Duration;
    /// # let keys = KeyRing::new(SigningKey::generate("k", Algorithm::EdDSA).unwrap());
    /// let issuer = AccessTokenIssuer::new(keys.clone(), "iss", "aud").ttl(Duration::from_secs(3600));
    /// let token = issuer.issue(&Grant::new("u", "c")).unwrap().token;
    /// let strict = Validator::new(keys, "iss", "aud").max_lifetime(Duration::from_secs(900));
    /// assert_eq!(strict.validate(&token).unwrap_err(), ValidationError::LifetimeTooLong);
    /// ```
    #[must_use]
    pub fn max_lifetime(mut self, max: Duration) -> Self {
        self.max_lifetime = Some(max);
        self
    }

    /// The longest token accepted, in bytes (default 16 KiB); longer ones are refused
    /// with [`ValidationError::TooLarge`] before anything is decoded.
    #[must_use]
    pub fn max_token_len(mut self, bytes: usize) -> Self {
        self.max_token_len = bytes;
        self
    }

    /// The clock-skew allowance on exp, nbf and iat (default 60 s).
    #[must_use]
    pub fn leeway(mut self, leeway: Duration) -> Self {
        self.leeway = leeway;
        self
    }

    /// Restricts the algorithms accepted.
    #[must_use]
    pub fn allow(mut self, algorithms: &[Algorithm]) -> Self {
        self.allowed = algorithms.to_vec();
        self
    }

    /// Validates a compact JWT and returns its claims.
    ///
    /// # Errors
    /// The [`ValidationError`] that says why the token was refused; every refusal is
    /// also an audit event.
    pub fn validate(&self, token: &str) -> Result<AccessTokenClaims, ValidationError> {
        let mut kid_seen = None;
        let result = self.check(token, &mut kid_seen);
        if let Err(e) = &result {
            audit::validation_failed(e.reason(), kid_seen.as_deref());
        }
        result
    }

    fn check(
        &self,
        token: &str,
        kid_seen: &mut Option<String>,
    ) -> Result<AccessTokenClaims, ValidationError> {
        if token.len() > self.max_token_len {
            return Err(ValidationError::TooLarge);
        }
        let mut parts = token.split('.');
        let (Some(header), Some(_), Some(_), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(ValidationError::Malformed);
        };
        let header = URL_SAFE_NO_PAD
            .decode(header)
            .ok()
            .and_then(|json| serde_json::from_slice::<JoseHeader>(&json).ok())
            .ok_or(ValidationError::Malformed)?;
        if header.crit.is_some() {
            return Err(ValidationError::CriticalHeader);
        }
        if header.alg.eq_ignore_ascii_case("none") {
            return Err(ValidationError::AlgorithmNone);
        }
        let algorithm = Algorithm::parse(&header.alg)
            .filter(|a| self.allowed.contains(a))
            .ok_or_else(|| ValidationError::AlgorithmNotAllowed(shown(&header.alg)))?;
        let typ_ok = header.typ.as_deref().is_some_and(|t| {
            t.eq_ignore_ascii_case("at+jwt")
                || t.eq_ignore_ascii_case("application/at+jwt")
                || self.extra_types.iter().any(|x| t.eq_ignore_ascii_case(x))
        });
        if !typ_ok {
            return Err(ValidationError::WrongType(header.typ.as_deref().map(shown)));
        }
        let kid = header.kid.ok_or(ValidationError::MissingKeyId)?;
        *kid_seen = Some(shown(&kid));
        let key = self
            .keys
            .find(&kid)
            .ok_or_else(|| ValidationError::UnknownKey(shown(&kid)))?;
        if key.algorithm != algorithm {
            return Err(ValidationError::AlgorithmMismatch);
        }
        let mut validation = jsonwebtoken::Validation::new(algorithm.jwt());
        // Times are checked below against the validator's clock.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        // The issuer and the audience are checked below, after the times, in the order
        // jsonwebtoken checks them (exp, nbf, iss, aud), so a refusal names the same
        // reason it did when jsonwebtoken read the clock.
        validation.iss = None;
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let claims = jsonwebtoken::decode::<AccessTokenClaims>(token, &key.key, &validation)
            .map(|data| data.claims)
            .map_err(|e| match e.kind() {
                ErrorKind::InvalidSignature
                | ErrorKind::InvalidEcdsaKey
                | ErrorKind::InvalidRsaKey(_) => ValidationError::BadSignature,
                ErrorKind::ExpiredSignature => ValidationError::Expired,
                ErrorKind::ImmatureSignature => ValidationError::NotYetValid,
                ErrorKind::InvalidIssuer => ValidationError::WrongIssuer,
                ErrorKind::InvalidAudience => ValidationError::WrongAudience,
                ErrorKind::MissingRequiredClaim(claim) => {
                    ValidationError::InvalidClaims(shown(&format!("missing {claim}")))
                }
                ErrorKind::Json(e) => ValidationError::InvalidClaims(shown(&e.to_string())),
                _ => ValidationError::Malformed,
            })?;
        let now = self.clock.now_secs();
        let leeway = self.leeway.as_secs();
        if claims.exp < now.saturating_sub(leeway) {
            return Err(ValidationError::Expired);
        }
        if claims
            .nbf
            .is_some_and(|nbf| nbf > now.saturating_add(leeway))
        {
            return Err(ValidationError::NotYetValid);
        }
        // A template's issuer is checked against the token's own tenant, below.
        if !self.issuer.contains(TENANT_PLACEHOLDER) && claims.iss != self.issuer {
            return Err(ValidationError::WrongIssuer);
        }
        if !claims.aud.contains(&self.audience) {
            return Err(ValidationError::WrongAudience);
        }
        if claims.iat > now.saturating_add(leeway) {
            return Err(ValidationError::IssuedInFuture);
        }
        if let Some(max) = self.max_lifetime
            && claims.exp.saturating_sub(claims.iat) > max.as_secs()
        {
            return Err(ValidationError::LifetimeTooLong);
        }
        self.check_tenant(&claims)?;
        Ok(claims)
    }
}

/// A step-up requirement (RFC 9470): the authentication context and/or freshness a
/// resource needs beyond a valid token.
///
/// ```
/// use keel_token_manager::StepUp;
/// use std::time::Duration;
///
/// let needs_mfa = StepUp::acr(["urn:example:mfa"]).max_age(Duration::from_secs(300));
/// # let _ = needs_mfa;
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use]
pub struct StepUp {
    acr_values: Vec<String>,
    max_age: Option<Duration>,
}

impl StepUp {
    /// Requires one of these `acr` values.
    pub fn acr<I, S>(values: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            acr_values: values.into_iter().map(Into::into).collect(),
            max_age: None,
        }
    }

    /// Requires an authentication no older than `max_age` (from `auth_time`).
    pub fn max_age(mut self, max_age: Duration) -> Self {
        self.max_age = Some(max_age);
        self
    }

    /// Checks validated claims.
    ///
    /// # Errors
    /// A [`StepUpChallenge`] to send back as `WWW-Authenticate` with a 401.
    pub fn check(&self, claims: &AccessTokenClaims) -> Result<(), StepUpChallenge> {
        self.check_at(claims, SystemClock.now())
    }

    /// [`check`](Self::check) with `now` read from your clock (a
    /// [`WallClock`]; tests use a [`ManualClock`](keel_resilience::clock::ManualClock)).
    ///
    /// # Errors
    /// As [`check`](Self::check).
    pub fn check_at(
        &self,
        claims: &AccessTokenClaims,
        now: SystemTime,
    ) -> Result<(), StepUpChallenge> {
        let acr_ok = self.acr_values.is_empty()
            || claims
                .acr
                .as_ref()
                .is_some_and(|acr| self.acr_values.iter().any(|v| v == acr));
        let fresh = self.max_age.is_none_or(|max| {
            claims
                .auth_time
                .is_some_and(|at| unix(now).saturating_sub(at) <= max.as_secs())
        });
        if acr_ok && fresh {
            Ok(())
        } else {
            Err(StepUpChallenge {
                acr_values: self.acr_values.clone(),
                max_age: self.max_age,
            })
        }
    }
}

/// A refusal for insufficient authentication, with its RFC 9470 challenge.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("a stronger or more recent authentication is required")]
pub struct StepUpChallenge {
    acr_values: Vec<String>,
    max_age: Option<Duration>,
}

impl StepUpChallenge {
    /// The `WWW-Authenticate` header value (RFC 9470 §3).
    ///
    /// ```
    /// # use keel_token_manager::StepUp;
    /// # use std::time::Duration;
    /// # let claims: keel_token_manager::AccessTokenClaims = serde_json::from_str(
    /// #   r#"{"iss":"i","sub":"s","aud":"a","exp":0,"iat":0,"jti":"j","client_id":"c","acr":"pwd"}"#).unwrap();
    /// let challenge = StepUp::acr(["mfa"]).max_age(Duration::from_secs(300)).check(&claims).unwrap_err();
    /// assert_eq!(
    ///     challenge.www_authenticate(),
    ///     "Bearer error=\"insufficient_user_authentication\", \
    ///      error_description=\"A different authentication level is required\", \
    ///      acr_values=\"mfa\", max_age=300"
    /// );
    /// ```
    #[must_use]
    pub fn www_authenticate(&self) -> String {
        let mut value = String::from(
            "Bearer error=\"insufficient_user_authentication\", error_description=\"A different authentication level is required\"",
        );
        if !self.acr_values.is_empty() {
            value.push_str(&format!(", acr_values=\"{}\"", self.acr_values.join(" ")));
        }
        if let Some(max_age) = self.max_age {
            value.push_str(&format!(", max_age={}", max_age.as_secs()));
        }
        value
    }
}

impl keel_resilience::Classify for ValidationError {
    /// Always permanent: the same token is refused again.
    fn class(&self) -> keel_resilience::ErrorClass {
        keel_resilience::ErrorClass::Permanent
    }
}
