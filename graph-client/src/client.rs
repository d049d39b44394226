//! The client: one token provider per tenant, every call (next links and `$batch`
//! requests included) through one pipeline of tower layers ([`crate::middleware`]), and
//! typed errors.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::stream::BoxStream;
use http::{HeaderMap, HeaderValue, StatusCode};
use keel_resilience::retry::Backoff;
use keel_token_manager::client::TokenProvider;
use serde::de::DeserializeOwned;
use tower::Layer;

use crate::autobatch::{AutoBatch, AutoBatcher};
use crate::budget::{Budgets, Concurrency, mailbox_of};
use crate::cloud::{ApiVersion, Cloud};
use crate::error::GraphError;
use crate::middleware::{
    AuthLayer, BreakerLayer, BudgetLayer, CallContext, GraphHttpRequest, GraphHttpResponse,
    GraphService, RetryLayer, RetryPolicy, TimeoutLayer, TraceLayer, Transport, UserLayer,
};
use crate::model::Page;
use crate::request::GraphRequest;

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
    cloud: Cloud,
    version: ApiVersion,
    tenants: HashMap<String, Arc<dyn TokenProvider>>,
    retry: RetryPolicy,
    next_id: AtomicU64,
    id_prefix: String,
    budgets: Arc<Budgets>,
    autobatch: Option<AutoBatcher>,
    service: GraphService,
    max_pages: usize,
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

/// Builds a [`GraphClient`].
#[must_use]
pub struct GraphClientBuilder {
    cloud: Cloud,
    version: ApiVersion,
    tenants: HashMap<String, Arc<dyn TokenProvider>>,
    retry: RetryPolicy,
    attempts: u32,
    attempt_timeout: Duration,
    http: Option<reqwest::Client>,
    concurrency: Concurrency,
    autobatch: Option<AutoBatch>,
    breaker: BreakerLayer,
    layers: Vec<UserLayer>,
    max_pages: usize,
    duplicate_tenant: Option<String>,
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
    /// Two tenants were given one name (names are compared without case): one would
    /// have used the other's tokens.
    #[error("tenant `{0}` was given twice (names are compared without case)")]
    DuplicateTenant(String),
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
        if self
            .tenants
            .insert(tenant.to_ascii_lowercase(), provider)
            .is_some()
        {
            self.duplicate_tenant = Some(tenant.chars().take(64).collect());
        }
        self
    }

    /// At most `attempts` tries per call (default 4), waiting at most `total_delay`
    /// between them in all (default 60 s): a `Retry-After` or a backoff delay that would
    /// pass it ends the retries with the last error.
    pub fn retries(mut self, attempts: u32, total_delay: Duration) -> Self {
        self.attempts = attempts;
        self.retry = self.retry.attempts(attempts).total_delay(total_delay);
        self
    }

    /// The backoff when a throttled or failed answer has no `Retry-After` (default:
    /// keel-resilience's standard exponential backoff with full jitter).
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.retry = self.retry.backoff(backoff);
        self
    }

    /// How long one attempt may take, answer included (default 30 s).
    pub fn attempt_timeout(mut self, timeout: Duration) -> Self {
        self.attempt_timeout = timeout;
        self
    }

    /// The circuit breakers per host (default [`BreakerLayer::standard`]).
    pub fn breaker(mut self, breaker: BreakerLayer) -> Self {
        self.breaker = breaker;
        self
    }

    /// Adds your own tower layer to the pipeline, after authentication and the time
    /// limit, before the transport: it sees each attempt as sent (with its
    /// `Authorization`, `client-request-id` and a [`CallContext`] in its extensions)
    /// and each answer, error statuses included, as Graph sent it. Layers added first
    /// are outermost.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use keel_graph_client::{Cloud, GraphClient};
    /// use keel_graph_client::middleware::GraphService;
    /// # fn demo(provider: Arc<dyn keel_token_manager::client::TokenProvider>) {
    /// // Any tower layer over the pipeline's service, e.g. one from tower itself:
    /// let graph = GraphClient::builder(Cloud::Global)
    ///     .tenant("contoso", provider)
    ///     .layer(tower::layer::layer_fn(|inner: GraphService| inner))
    ///     .build();
    /// # drop(graph); }
    /// ```
    pub fn layer<L>(mut self, layer: L) -> Self
    where
        L: Layer<GraphService> + Send + Sync + 'static,
        L::Service: tower::Service<GraphHttpRequest, Response = GraphHttpResponse, Error = GraphError>
            + Clone
            + Send
            + Sync
            + 'static,
        <L::Service as tower::Service<GraphHttpRequest>>::Future: Send + 'static,
    {
        self.layers
            .push(Arc::new(move |inner| GraphService::new(layer.layer(inner))));
        self
    }

    /// At most `n` pages per [`pages`](GraphClient::pages) or
    /// [`items`](GraphClient::items) stream (default 100,000): a next link past it ends
    /// the stream with [`GraphError::TooManyPages`], so that a server that keeps linking
    /// cannot keep a caller reading for ever.
    pub fn max_pages(mut self, n: usize) -> Self {
        self.max_pages = n.max(1);
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
        if self.attempts == 0 {
            return Err(BuildError::NoAttempt);
        }
        if let Some(tenant) = self.duplicate_tenant {
            return Err(BuildError::DuplicateTenant(tenant));
        }
        let http = match self.http {
            Some(http) => http,
            // No connect timeout of its own (reqwest's costs about 50 µs a call, even
            // on a pooled connection): the time limit per attempt bounds connecting too.
            None => reqwest::Client::builder()
                .build()
                .map_err(BuildError::Http)?,
        };
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let budgets = Arc::new(Budgets::new(self.concurrency));
        let mut service = GraphService::new(Transport { http });
        for layer in self.layers.iter().rev() {
            service = layer(service);
        }
        // Innermost first: each layer in front of what is built so far.
        let budget = BudgetLayer {
            budgets: budgets.clone(),
        };
        let auth = AuthLayer::new(self.tenants.clone(), &self.cloud.default_scope());
        let service = TimeoutLayer::new(self.attempt_timeout).layer(service);
        let service = auth.layer(service.into());
        let service = self.breaker.layer(service.into());
        let service = budget.layer(service.into());
        let service = RetryLayer::new(self.retry.clone()).layer(service.into());
        let service: GraphService = TraceLayer.layer(service.into()).into();
        Ok(GraphClient {
            inner: Arc::new(Inner {
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
                budgets,
                autobatch: self.autobatch.map(AutoBatcher::new),
                service,
                max_pages: self.max_pages,
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
            retry: RetryPolicy::default(),
            attempts: RetryPolicy::default().max_attempts(),
            attempt_timeout: Duration::from_secs(30),
            http: None,
            concurrency: Concurrency::default(),
            autobatch: None,
            breaker: BreakerLayer::standard(),
            layers: Vec::new(),
            max_pages: 100_000,
            duplicate_tenant: None,
        }
    }

    /// The most pages one paged read (or delta round) follows.
    pub(crate) fn max_pages(&self) -> usize {
        self.inner.max_pages
    }

    /// The API version of calls that do not set their own.
    pub(crate) fn api_version(&self) -> ApiVersion {
        self.inner.version
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
            // The call keeps its own client-request-id inside the batch (Graph echoes it
            // per item), taken now, while the caller's correlation scope is current.
            let mut request = request.clone();
            if !request.headers().contains_key("client-request-id") {
                request = request.header("client-request-id", &self.client_request_id());
            }
            return batcher.submit(self, tenant, request).await;
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
        self.inner.retry.max_attempts()
    }

    pub(crate) fn retry_total_delay(&self) -> Duration {
        self.inner.retry.max_total_delay()
    }

    pub(crate) fn backoff_delay(&self, attempt: u32, previous: Duration) -> Duration {
        self.inner.retry.backoff_delay(attempt, previous)
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
        let max_pages = client.inner.max_pages;
        futures_util::stream::unfold((Some(first), 0usize), move |(next, read)| {
            let client = client.clone();
            let tenant = tenant.clone();
            let request = request.clone();
            async move {
                let url = match next? {
                    Ok(url) => url,
                    Err(e) => return Some((Err(e), (None, read))),
                };
                if read >= max_pages {
                    return Some((Err(GraphError::TooManyPages(max_pages)), (None, read)));
                }
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
                        Some((Ok(page), (next, read + 1)))
                    }
                    Err(e) => Some((Err(e), (None, read))),
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
        let tenant_key = tenant.to_ascii_lowercase();
        if !inner.tenants.contains_key(&tenant_key) {
            return Err(GraphError::UnknownTenant(tenant.chars().take(64).collect()));
        }
        let idempotent = request.is_idempotent();
        let mailboxes: Vec<String> = match &request.mailboxes {
            Some(list) => list.clone(),
            None => mailbox_of(self.relative_path(url)).into_iter().collect(),
        };
        let uri: http::Uri = url
            .parse()
            .map_err(|_| GraphError::Request(crate::RequestError::InvalidPath))?;
        let mut call = http::Request::new(bytes::Bytes::from(
            request.body().map(<[u8]>::to_vec).unwrap_or_default(),
        ));
        *call.method_mut() = request.method().clone();
        *call.uri_mut() = uri;
        let headers = call.headers_mut();
        headers.extend(request.headers().clone());
        // The request's own (an auto-batched call's, kept from when it was made), or the
        // current correlation id, or a fresh one.
        if !headers.contains_key("client-request-id")
            && let Ok(id) = HeaderValue::try_from(self.client_request_id())
        {
            headers.insert("client-request-id", id);
        }
        headers.insert("sdkversion", HeaderValue::from_static(SDK_VERSION));
        headers.insert(
            http::header::ACCEPT,
            HeaderValue::from_static("application/json"),
        );
        if request.body().is_some() && !headers.contains_key(http::header::CONTENT_TYPE) {
            headers.insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }
        call.extensions_mut().insert(CallContext {
            tenant: tenant_key,
            idempotent,
            mailboxes,
            attempt: 0,
            deadline: request.deadline,
        });
        let answer = inner.service.send(call).await?;
        let (parts, body) = answer.into_parts();
        if parts.status.is_success() {
            Ok(GraphResponse {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        } else {
            Err(GraphError::from_response(
                parts.status,
                &parts.headers,
                &body,
            ))
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

    /// The `client-request-id` of a new call: with the `correlation` feature, the
    /// current keel-observability correlation id when it is GUID-shaped (Graph's
    /// `client-request-id` is a GUID); otherwise one of the client's own.
    pub(crate) fn client_request_id(&self) -> String {
        #[cfg(feature = "correlation")]
        if let Some(id) = keel_observability::CorrelationId::current()
            && crate::request::is_guid(id.as_str())
        {
            return id.as_str().to_owned();
        }
        self.request_id()
    }

    fn request_id(&self) -> String {
        let n = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        format!("{}-4000-8000-{n:012x}", self.inner.id_prefix)
    }
}
