//! An external issuer's signing keys, fetched from its JWKS endpoint and kept fresh.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use keel_resilience::ErrorClass;
use tokio::time::Instant;

use super::TokenError;
use super::response::{MAX_RESPONSE_BYTES, ResponseError};
use crate::keys::{Jwks, VerifyingKey};

const PROVIDER: &str = "JWKS fetcher";
/// The largest JWKS or discovery document read.
const MAX_DOCUMENT_BYTES: usize = 4 * MAX_RESPONSE_BYTES;

struct State {
    keys: Arc<HashMap<String, Arc<VerifyingKey>>>,
    fetched: Option<Instant>,
    /// How long the issuer said the keys may be kept (`Cache-Control`), if it did.
    max_age: Option<Duration>,
}

struct Inner {
    jwks_uri: String,
    http: reqwest::Client,
    state: RwLock<State>,
    /// One fetch at a time; callers that find one running wait for it.
    fetching: tokio::sync::Mutex<()>,
    /// The least time between two fetches, in milliseconds.
    min_refresh_ms: AtomicU64,
    fetches: AtomicU64,
}

/// An issuer's JWKS (Entra ID's, or any OpenID provider's) for
/// [`Validator::from_remote`](crate::Validator::from_remote): fetched at start; again in
/// the background when the issuer's `Cache-Control: max-age` has passed (12 hours when
/// it does not say, at most 24), the current keys serving meanwhile; and again when a
/// token names a `kid` it does not know (the issuer rotated its keys), but at most once
/// per refresh interval (5 minutes by default) whatever the tokens say, so an attacker
/// sending random `kid`s cannot make us hammer the issuer.
///
/// ```no_run
/// # async fn demo() -> Result<(), keel_token_manager::client::TokenError> {
/// use keel_token_manager::Validator;
/// use keel_token_manager::client::RemoteJwks;
///
/// let (jwks, issuer) = RemoteJwks::discover("https://login.microsoftonline.com/contoso.onmicrosoft.com/v2.0").await?;
/// let validator = Validator::from_remote(jwks, issuer, "api://orders").accept_types(&["JWT"]);
/// # let token = "";
/// let claims = validator.validate_fresh(token).await;
/// # drop(claims); Ok(()) }
/// ```
#[derive(Clone)]
pub struct RemoteJwks {
    inner: Arc<Inner>,
}

impl fmt::Debug for RemoteJwks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteJwks")
            .field("jwks_uri", &self.inner.jwks_uri)
            .field("fetches", &self.fetches())
            .finish_non_exhaustive()
    }
}

/// How long a document may be kept, from its `Cache-Control` (`max-age`; `no-store`
/// and `no-cache` mean none): `None` when it does not say.
fn max_age(response: &reqwest::Response) -> Option<Duration> {
    let value = response
        .headers()
        .get(reqwest::header::CACHE_CONTROL)?
        .to_str()
        .ok()?;
    let mut age = None;
    for directive in value.split(',').map(str::trim) {
        let lower = directive.to_ascii_lowercase();
        if lower == "no-store" || lower == "no-cache" {
            return Some(Duration::ZERO);
        }
        if let Some(seconds) = lower.strip_prefix("max-age=") {
            age = seconds
                .trim_matches('"')
                .parse::<u64>()
                .ok()
                .map(Duration::from_secs);
        }
    }
    age
}

async fn get_json(http: &reqwest::Client, url: &str) -> Result<serde_json::Value, TokenError> {
    get_json_cached(http, url).await.map(|(json, _)| json)
}

/// The document at `url` and its `Cache-Control` max age.
async fn get_json_cached(
    http: &reqwest::Client,
    url: &str,
) -> Result<(serde_json::Value, Option<Duration>), TokenError> {
    let transient =
        |e: reqwest::Error| TokenError::failed(PROVIDER, ErrorClass::Transient, e.without_url());
    let mut response = http.get(url).send().await.map_err(transient)?;
    let max_age = max_age(&response);
    let status = response.status().as_u16();
    if status != 200 {
        return Err(TokenError::failed(
            PROVIDER,
            ErrorClass::from_http_status(status, None),
            ResponseError::Invalid(format!("HTTP {status} from the issuer")),
        ));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(transient)? {
        if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
            return Err(TokenError::failed(
                PROVIDER,
                ErrorClass::Permanent,
                ResponseError::TooLarge,
            ));
        }
        body.extend_from_slice(&chunk);
    }
    let json = serde_json::from_slice(&body).map_err(|e| {
        TokenError::failed(
            PROVIDER,
            ErrorClass::Transient,
            ResponseError::Invalid(super::response::bounded(&format!("not JSON: {e}"))),
        )
    })?;
    Ok((json, max_age))
}

/// How long keys are kept when the issuer's `Cache-Control` does not say (as
/// Microsoft.IdentityModel's automatic refresh interval), and the longest they are kept
/// whatever it says.
const DEFAULT_KEEP: Duration = Duration::from_secs(12 * 3600);
const MAX_KEEP: Duration = Duration::from_secs(24 * 3600);

impl RemoteJwks {
    /// Reads `issuer`'s OpenID discovery document
    /// (`{issuer}/.well-known/openid-configuration`), checks that it names the same
    /// issuer, and fetches the keys at its `jwks_uri`. Returns them and the issuer to
    /// validate against: for Entra ID's `common` and `organizations` documents, the
    /// multi-tenant template `https://login.microsoftonline.com/{tenantid}/v2.0`, which
    /// the [`Validator`](crate::Validator) checks against each token's `tid` (name the
    /// tenants you take with [`Validator::tenants`](crate::Validator::tenants)).
    ///
    /// # Errors
    /// When the document or the keys cannot be fetched or read, or name another issuer.
    pub async fn discover(issuer: &str) -> Result<(Self, String), TokenError> {
        let http = super::credential::http_client(PROVIDER)?;
        let issuer = issuer.trim_end_matches('/');
        let discovery =
            get_json(&http, &format!("{issuer}/.well-known/openid-configuration")).await?;
        let invalid = |what: &str| {
            TokenError::failed(
                PROVIDER,
                ErrorClass::Permanent,
                ResponseError::Invalid(what.into()),
            )
        };
        let named = discovery["issuer"]
            .as_str()
            .ok_or_else(|| invalid("the discovery document has no issuer"))?;
        if let Some((before, after)) = named.trim_end_matches('/').split_once("{tenantid}") {
            // Entra's `common` / `organizations` documents: every tenant's tokens carry
            // their own issuer, the template with their `tid` (the Validator checks it).
            // The template must be this issuer's, with the tenant segment in its place.
            let segment = issuer
                .strip_prefix(before)
                .and_then(|rest| rest.strip_suffix(after));
            if !segment.is_some_and(|s| !s.is_empty() && !s.contains('/')) {
                return Err(invalid("the discovery document names another issuer"));
            }
        } else if named.trim_end_matches('/') != issuer {
            return Err(invalid("the discovery document names another issuer"));
        }
        let jwks_uri = discovery["jwks_uri"]
            .as_str()
            .ok_or_else(|| invalid("the discovery document has no jwks_uri"))?;
        let jwks = Self::from_uri(jwks_uri).await?;
        Ok((jwks, named.to_owned()))
    }

    /// The keys at `jwks_uri`, fetched now.
    ///
    /// # Errors
    /// When they cannot be fetched or read.
    pub async fn from_uri(jwks_uri: &str) -> Result<Self, TokenError> {
        let jwks = Self {
            inner: Arc::new(Inner {
                jwks_uri: jwks_uri.to_owned(),
                http: super::credential::http_client(PROVIDER)?,
                state: RwLock::new(State {
                    keys: Arc::default(),
                    fetched: None,
                    max_age: None,
                }),
                fetching: tokio::sync::Mutex::new(()),
                min_refresh_ms: AtomicU64::new(300_000),
                fetches: AtomicU64::new(0),
            }),
        };
        jwks.fetch().await?;
        Ok(jwks)
    }

    /// At most one refresh per `interval` (default 5 minutes).
    #[must_use]
    pub fn min_refresh_interval(self, interval: Duration) -> Self {
        let ms = u64::try_from(interval.as_millis()).unwrap_or(u64::MAX);
        self.inner.min_refresh_ms.store(ms, Ordering::Relaxed);
        self
    }

    /// How many times the JWKS was fetched.
    #[must_use]
    pub fn fetches(&self) -> u64 {
        self.inner.fetches.load(Ordering::Relaxed)
    }

    pub(crate) fn find(&self, kid: &str) -> Option<Arc<VerifyingKey>> {
        self.inner
            .state
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .keys
            .get(kid)
            .cloned()
    }

    async fn fetch(&self) -> Result<(), TokenError> {
        self.inner.fetches.fetch_add(1, Ordering::Relaxed);
        let (json, max_age) = get_json_cached(&self.inner.http, &self.inner.jwks_uri).await?;
        let jwks: Jwks = serde_json::from_value(json).map_err(|e| {
            TokenError::failed(
                PROVIDER,
                ErrorClass::Permanent,
                ResponseError::Invalid(super::response::bounded(&format!("not a JWKS: {e}"))),
            )
        })?;
        let keys = crate::validate::verifying_keys(&jwks)
            .map_err(|e| TokenError::failed(PROVIDER, ErrorClass::Permanent, e))?;
        let mut state = self
            .inner
            .state
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        state.keys = Arc::new(keys);
        state.fetched = Some(Instant::now());
        state.max_age = max_age;
        Ok(())
    }

    /// Whether the issuer's `Cache-Control` time for the keys has passed (never sooner
    /// than the refresh interval after the last fetch).
    pub(crate) fn is_stale(&self) -> bool {
        let min = Duration::from_millis(self.inner.min_refresh_ms.load(Ordering::Relaxed));
        let state = self
            .inner
            .state
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        let keep = state
            .max_age
            .unwrap_or(DEFAULT_KEEP)
            .clamp(min.min(MAX_KEEP), MAX_KEEP);
        state.fetched.is_some_and(|at| at.elapsed() >= keep)
    }

    /// Fetches the keys again in the background if they are stale (one fetch at a
    /// time; the current keys serve meanwhile).
    pub(crate) fn refresh_if_stale(&self) {
        if self.is_stale() && self.inner.fetching.try_lock().is_ok() {
            let this = self.clone();
            tokio::spawn(async move {
                this.refresh().await;
            });
        }
    }

    /// Fetches the keys again unless that was done within the refresh interval. True
    /// when it fetched them.
    pub(crate) async fn refresh(&self) -> bool {
        let _turn = self.inner.fetching.lock().await;
        let recent = self
            .inner
            .state
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .fetched
            .is_some_and(|at| {
                at.elapsed()
                    < Duration::from_millis(self.inner.min_refresh_ms.load(Ordering::Relaxed))
            });
        if recent {
            return false;
        }
        match self.fetch().await {
            Ok(()) => true,
            Err(e) => {
                // Counted as a fetch: a failing issuer is not asked again before the interval.
                self.inner
                    .state
                    .write()
                    .unwrap_or_else(PoisonError::into_inner)
                    .fetched = Some(Instant::now());
                tracing::warn!(error = %e, "the issuer's JWKS could not be fetched again");
                false
            }
        }
    }
}
