//! The client: one token provider per tenant, every call (next links included) through
//! the same path of authentication, ids, retries on throttling and transient failures,
//! and typed errors.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::stream::BoxStream;
use http::{HeaderMap, StatusCode};
use keel_resilience::retry::{Backoff, Idempotency};
use keel_resilience::{Classify, ErrorClass};
use keel_token_manager::client::{TokenProvider, TokenRequest, claims_challenge};
use serde::de::DeserializeOwned;

use crate::autobatch::{AutoBatch, AutoBatcher};
use crate::budget::{Budgets, Concurrency, mailbox_of};
use crate::cloud::{ApiVersion, Cloud};
use crate::error::GraphError;
use crate::model::Page;
use crate::request::GraphRequest;

/// The most read of an error body, and of a success body.
const MAX_ERROR_BODY: usize = 1 << 20;
const MAX_BODY: usize = 64 << 20;

/// The `SdkVersion` header Graph's SDKs send, with ours.
const SDK_VERSION: &str = concat!("keel-graph-client/", env!("CARGO_PKG_VERSION"));

/// A Microsoft Graph client for one cloud and any number of tenants. Cheap to clone.
///
/// ```no_run
/// use std::sync::Arc;
/// use keel_graph_client::{Cloud, GraphClient, GraphRequest, model::User};
/// use keel_token_manager::client::{Authority, ClientSecretCredential};
///
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let contoso = ClientSecretCredential::new(Authority::AzurePublic, "contoso.onmicrosoft.com", "app-id", "secret")?;
/// let graph = GraphClient::builder(Cloud::Global)
///     .tenant("contoso", Arc::new(contoso))
///     .build()?;
/// let me: User = graph.get("contoso", &GraphRequest::get("/users/ada@contoso.com")).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct GraphClient {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    cloud: Cloud,
    version: ApiVersion,
    tenants: HashMap<String, Arc<dyn TokenProvider>>,
    retry: Retries,
    next_id: AtomicU64,
    id_prefix: String,
    budgets: Budgets,
    autobatch: Option<AutoBatcher>,
}

impl std::fmt::Debug for GraphClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut tenants: Vec<&String> = self.inner.tenants.keys().collect();
        tenants.sort();
        f.debug_struct("GraphClient")
            .field("cloud", &self.inner.cloud)
            .field("version", &self.inner.version)
            .field("tenants", &tenants)
            .finish_non_exhaustive()
    }
}

/// How a call is retried.
#[derive(Clone, Debug)]
struct Retries {
    attempts: u32,
    total_delay: Duration,
    backoff: Backoff,
    attempt_timeout: Duration,
}

/// Builds a [`GraphClient`].
#[must_use]
pub struct GraphClientBuilder {
    cloud: Cloud,
    version: ApiVersion,
    tenants: HashMap<String, Arc<dyn TokenProvider>>,
    retry: Retries,
    http: Option<reqwest::Client>,
    concurrency: Concurrency,
    autobatch: Option<AutoBatch>,
}

impl std::fmt::Debug for GraphClientBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GraphClientBuilder")
            .field("cloud", &self.cloud)
            .field("version", &self.version)
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

/// A client that cannot be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// No tenant was given a token provider.
    #[error("a Graph client needs at least one tenant with its token provider")]
    NoTenant,
    /// At most zero attempts: no call could be made.
    #[error("a Graph client needs at least one attempt per call")]
    NoAttempt,
    /// The HTTP client could not be built (the TLS backend failed to load).
    #[error("the HTTP client could not be built")]
    Http(#[source] reqwest::Error),
}

impl GraphClientBuilder {
    /// The API version for requests that do not name one (default v1.0).
    pub fn version(mut self, version: ApiVersion) -> Self {
        self.version = version;
        self
    }

    /// The token provider of `tenant` (the name callers pass to each call: a tenant id,
    /// a domain, or any label). Tokens of one tenant are only ever sent on its calls.
    pub fn tenant(mut self, tenant: &str, provider: Arc<dyn TokenProvider>) -> Self {
        self.tenants.insert(tenant.to_ascii_lowercase(), provider);
        self
    }

    /// At most `attempts` tries per call (default 4), waiting at most `total_delay`
    /// between them in all (default 60 s): a `Retry-After` or a backoff delay that would
    /// pass it ends the retries with the last error.
    pub fn retries(mut self, attempts: u32, total_delay: Duration) -> Self {
        self.retry.attempts = attempts;
        self.retry.total_delay = total_delay;
        self
    }

    /// The backoff when a throttled or failed answer has no `Retry-After` (default:
    /// keel-resilience's standard exponential backoff with full jitter).
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.retry.backoff = backoff;
        self
    }

    /// How long one attempt may take, answer included (default 30 s).
    pub fn attempt_timeout(mut self, timeout: Duration) -> Self {
        self.retry.attempt_timeout = timeout;
        self
    }

    /// How many calls of one tenant may be in flight (default
    /// [`Concurrency::default`]: adaptive, halved on throttling). Calls to one Outlook
    /// mailbox (`/users/{id}/messages`, `/me/events`, …) are also held to Outlook's
    /// documented limits: four at once and 10,000 per 10 minutes, `$batch` items
    /// included.
    pub fn concurrency(mut self, concurrency: Concurrency) -> Self {
        self.concurrency = concurrency;
        self
    }

    /// Auto-batching (off by default): calls of one tenant made within `config`'s
    /// window go out together as one `$batch`, each caller still getting its own answer.
    pub fn auto_batch(mut self, config: AutoBatch) -> Self {
        self.autobatch = Some(config);
        self
    }

    /// Your own reqwest client (proxies, certificates). Redirects are followed by it:
    /// keep reqwest's default policy, which drops `Authorization` on a cross-host
    /// redirect.
    pub fn http_client(mut self, http: reqwest::Client) -> Self {
        self.http = Some(http);
        self
    }

    /// The client.
    ///
    /// # Errors
    /// [`BuildError`] without a tenant, without an attempt, or without TLS.
    pub fn build(self) -> Result<GraphClient, BuildError> {
        if self.tenants.is_empty() {
            return Err(BuildError::NoTenant);
        }
        if self.retry.attempts == 0 {
            return Err(BuildError::NoAttempt);
        }
        let http = match self.http {
            Some(http) => http,
            None => reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(10))
                .build()
                .map_err(BuildError::Http)?,
        };
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        Ok(GraphClient {
            inner: Arc::new(Inner {
                http,
                cloud: self.cloud,
                version: self.version,
                tenants: self.tenants,
                retry: self.retry,
                next_id: AtomicU64::new(1),
                id_prefix: format!(
                    "{:08x}-{:04x}",
                    (seed >> 32) as u32,
                    std::process::id() & 0xffff
                ),
                budgets: Budgets::new(self.concurrency),
                autobatch: self.autobatch.map(AutoBatcher::new),
            }),
        })
    }
}

/// A successful answer: status, headers and body.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct GraphResponse {
    /// The status (200, 201, 204…).
    pub status: StatusCode,
    /// The headers.
    pub headers: HeaderMap,
    /// The body (empty for a 204).
    pub body: bytes::Bytes,
}

impl GraphResponse {
    /// The body as `T`.
    ///
    /// # Errors
    /// [`GraphError::Decode`] when it is not `T`'s JSON.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, GraphError> {
        serde_json::from_slice(&self.body).map_err(|source| GraphError::Decode {
            status: self.status,
            request_id: self
                .headers
                .get("request-id")
                .and_then(|v| v.to_str().ok())
                .map(|v| v.chars().take(128).collect()),
            source,
        })
    }
}

impl GraphClient {
    /// A builder for `cloud`.
    pub fn builder(cloud: Cloud) -> GraphClientBuilder {
        GraphClientBuilder {
            cloud,
            version: ApiVersion::V1,
            tenants: HashMap::new(),
            retry: Retries {
                attempts: 4,
                total_delay: Duration::from_secs(60),
                backoff: Backoff::standard(),
                attempt_timeout: Duration::from_secs(30),
            },
            http: None,
            concurrency: Concurrency::default(),
            autobatch: None,
        }
    }

    /// The cloud.
    #[must_use]
    pub fn cloud(&self) -> &Cloud {
        &self.inner.cloud
    }

    /// Sends `request` for `tenant` and returns Graph's answer. With
    /// [auto-batching](GraphClientBuilder::auto_batch) on, the request may travel in a
    /// `$batch` with others; the answer is the same.
    ///
    /// # Errors
    /// A [`GraphError`]: Graph's error once retries are spent or for an error that is
    /// not retried, a token, transport or request error.
    pub async fn send(
        &self,
        tenant: &str,
        request: &GraphRequest,
    ) -> Result<GraphResponse, GraphError> {
        let url = request.url(&self.inner.cloud, self.inner.version)?;
        if let Some(batcher) = &self.inner.autobatch
            && request.mailboxes.is_none()
            && batcher.accepts(request, self.inner.version)
        {
            if !self
                .inner
                .tenants
                .contains_key(&tenant.to_ascii_lowercase())
            {
                return Err(GraphError::UnknownTenant(tenant.chars().take(64).collect()));
            }
            return batcher.submit(self, tenant, request.clone()).await;
        }
        self.send_url(tenant, request, &url).await
    }

    /// The current concurrency limit of `tenant` (calls in flight at once), as adapted
    /// to Graph's throttling so far.
    #[must_use]
    pub fn concurrency_limit(&self, tenant: &str) -> usize {
        self.inner
            .budgets
            .tenant(&tenant.to_ascii_lowercase())
            .limit()
            .floor() as usize
    }

    pub(crate) fn tenant_limiter(&self, tenant: &str) -> Arc<crate::budget::Adaptive> {
        self.inner.budgets.tenant(&tenant.to_ascii_lowercase())
    }

    pub(crate) fn autobatch_ref(&self) -> Option<&AutoBatcher> {
        self.inner.autobatch.as_ref()
    }

    pub(crate) fn version(&self) -> ApiVersion {
        self.inner.version
    }

    pub(crate) fn retry_attempts(&self) -> u32 {
        self.inner.retry.attempts
    }

    pub(crate) fn retry_total_delay(&self) -> Duration {
        self.inner.retry.total_delay
    }

    pub(crate) fn backoff_delay(&self, attempt: u32, previous: Duration) -> Duration {
        self.inner.retry.backoff.delay(attempt, previous)
    }

    /// Sends `request` and reads its body as `T`.
    ///
    /// # Errors
    /// As [`send`](Self::send), and [`GraphError::Decode`].
    pub async fn get<T: DeserializeOwned>(
        &self,
        tenant: &str,
        request: &GraphRequest,
    ) -> Result<T, GraphError> {
        self.send(tenant, request).await?.json()
    }

    /// The pages of a collection, one at a time (one page in memory): the first from
    /// `request`, the next ones from each `@odata.nextLink`, followed verbatim with the
    /// request's headers (such as `ConsistencyLevel`) and only on this cloud's Graph
    /// origin. `@odata.count` is on the first page.
    #[must_use]
    pub fn pages<T: DeserializeOwned + Send + 'static>(
        &self,
        tenant: &str,
        request: GraphRequest,
    ) -> BoxStream<'static, Result<Page<T>, GraphError>> {
        use futures_util::StreamExt as _;
        let client = self.clone();
        let tenant = tenant.to_owned();
        let first = request
            .url(&client.inner.cloud, client.inner.version)
            .map_err(GraphError::from);
        futures_util::stream::unfold(Some(first), move |next| {
            let client = client.clone();
            let tenant = tenant.clone();
            let request = request.clone();
            async move {
                let url = match next? {
                    Ok(url) => url,
                    Err(e) => return Some((Err(e), None)),
                };
                match client
                    .send_url(&tenant, &request, &url)
                    .await
                    .and_then(|r| r.json::<Page<T>>())
                {
                    Ok(page) => {
                        // A next link off this cloud's Graph origin is refused on the next
                        // poll: the token is never sent there.
                        let next = page.next_link.clone().map(|link| {
                            if client.inner.cloud.is_graph_url(&link) {
                                Ok(link)
                            } else {
                                Err(GraphError::ForeignUrl)
                            }
                        });
                        Some((Ok(page), next))
                    }
                    Err(e) => Some((Err(e), None)),
                }
            }
        })
        .boxed()
    }

    /// The items of a collection, page after page (one page in memory), as
    /// [`pages`](Self::pages) reads them.
    #[must_use]
    pub fn items<T: DeserializeOwned + Send + 'static>(
        &self,
        tenant: &str,
        request: GraphRequest,
    ) -> BoxStream<'static, Result<T, GraphError>> {
        use futures_util::StreamExt as _;
        self.pages::<T>(tenant, request)
            .flat_map(|page| {
                futures_util::stream::iter(match page {
                    Ok(page) => page.value.into_iter().map(Ok).collect::<Vec<_>>(),
                    Err(e) => vec![Err(e)],
                })
            })
            .boxed()
    }

    pub(crate) async fn send_url(
        &self,
        tenant: &str,
        request: &GraphRequest,
        url: &str,
    ) -> Result<GraphResponse, GraphError> {
        let inner = &self.inner;
        if !inner.cloud.is_graph_url(url) {
            return Err(GraphError::ForeignUrl);
        }
        let provider = inner
            .tenants
            .get(&tenant.to_ascii_lowercase())
            .ok_or_else(|| GraphError::UnknownTenant(tenant.chars().take(64).collect()))?
            .clone();
        let mut token_request = TokenRequest::new([inner.cloud.default_scope()]);
        let client_request_id = self.request_id();
        // Safe to repeat: by method (RFC 9110), or a write guarded by `If-Match` (a
        // repeat after a lost answer meets a changed ETag: 412, never a second write).
        let idempotent = request.idempotent.unwrap_or_else(|| {
            Idempotency::of_method(request.method()) == Idempotency::Idempotent
                || request.headers().contains_key(http::header::IF_MATCH)
        });
        let mailboxes: Vec<String> = match &request.mailboxes {
            Some(list) => list.clone(),
            None => mailbox_of(self.relative_path(url)).into_iter().collect(),
        };
        let tenant_key = tenant.to_ascii_lowercase();
        let mut waited = Duration::ZERO;
        let mut previous = Duration::ZERO;
        let mut answered_challenge = false;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let token = provider
                .token(&token_request)
                .await
                .map_err(GraphError::Token)?;
            // A place of the tenant's and of each mailbox's budget, for this attempt.
            let held = inner.budgets.acquire(&tenant_key, &mailboxes).await;
            let mut call = inner
                .http
                .request(request.method().clone(), url)
                .headers(request.headers().clone())
                .bearer_auth(token.secret())
                .header("client-request-id", &client_request_id)
                .header("SdkVersion", SDK_VERSION)
                .header(http::header::ACCEPT, "application/json")
                .timeout(inner.retry.attempt_timeout);
            if let Some(body) = request.body() {
                call = call.body(body.to_vec());
            }
            let sent = call.send().await;
            match &sent {
                Ok(r) if matches!(r.status().as_u16(), 429 | 503) => held.tenant.throttled(),
                Ok(_) => held.tenant.succeeded(),
                Err(_) => {}
            }
            let error = match sent {
                Ok(response) if response.status().is_success() => {
                    let status = response.status();
                    let headers = response.headers().clone();
                    let body = read_limited(response, MAX_BODY).await?;
                    return Ok(GraphResponse {
                        status,
                        headers,
                        body,
                    });
                }
                Ok(response) => {
                    let status = response.status();
                    let headers = response.headers().clone();
                    let body = read_limited(response, MAX_ERROR_BODY)
                        .await
                        .unwrap_or_default();
                    let error = GraphError::from_response(status, &headers, &body);
                    // A claims challenge (Conditional Access, CAE) goes back to the
                    // token provider with its claims, once.
                    if status == StatusCode::UNAUTHORIZED
                        && !answered_challenge
                        && let Some(claims) = headers
                            .get(http::header::WWW_AUTHENTICATE)
                            .and_then(|v| v.to_str().ok())
                            .and_then(claims_challenge)
                    {
                        answered_challenge = true;
                        token_request = token_request.claims(claims);
                        if attempt < inner.retry.attempts {
                            continue;
                        }
                    }
                    error
                }
                Err(e) => GraphError::Transport(e),
            };
            let class = error.class();
            let retryable = match (&error, class) {
                (_, ErrorClass::Throttled { .. }) => true,
                (GraphError::Transport(e), _) => idempotent && (e.is_timeout() || e.is_connect()),
                (_, ErrorClass::Transient) => idempotent,
                _ => false,
            };
            if !retryable || attempt >= inner.retry.attempts {
                return Err(error);
            }
            let delay = match class {
                ErrorClass::Throttled {
                    retry_after: Some(after),
                } => after,
                _ => inner.retry.backoff.delay(attempt, previous),
            };
            if waited.saturating_add(delay) > inner.retry.total_delay {
                return Err(error);
            }
            waited += delay;
            previous = delay;
            tracing::debug!(
                attempt,
                delay_ms = delay.as_millis() as u64,
                status = error.status().map(|s| s.as_u16()),
                "retrying a Graph call"
            );
            drop(held);
            tokio::time::sleep(delay).await;
        }
    }

    /// The path of `url` after the cloud's Graph base and the version segment.
    fn relative_path<'u>(&self, url: &'u str) -> &'u str {
        let rest = url
            .strip_prefix(self.inner.cloud.graph_base())
            .unwrap_or(url);
        let rest = rest.trim_start_matches('/');
        rest.split_once('/').map_or("", |(_, path)| path)
    }

    fn request_id(&self) -> String {
        let n = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        format!("{}-4000-8000-{n:012x}", self.inner.id_prefix)
    }
}

async fn read_limited(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<bytes::Bytes, GraphError> {
    let mut body = bytes::BytesMut::new();
    while let Some(chunk) = response.chunk().await.map_err(GraphError::Transport)? {
        if body.len() + chunk.len() > limit {
            return Err(GraphError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}
