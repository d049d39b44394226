//! The pipeline every Graph call goes through — direct calls, next links and `$batch`
//! requests alike — built from tower layers, as Kiota's handlers are:
//!
//! | order | layer | does |
//! |---|---|---|
//! | 1 | [`TraceLayer`] | a `graph.request` span, and RED metrics by method, route template and status |
//! | 2 | [`RetryLayer`] | 429/503 with `Retry-After` (seconds, fractions, dates), backoff with jitter otherwise; transient failures of idempotent calls; caps on attempts and total delay |
//! | 3 | budgets | a place in the tenant's adaptive concurrency and in each Outlook mailbox's budget, per attempt |
//! | 4 | [`BreakerLayer`] | a circuit breaker per host (keel-resilience): refuses calls while Graph's host fails |
//! | 5 | [`AuthLayer`] | the tenant's bearer token; a 401 with a claims challenge goes back to the token provider once |
//! | 6 | [`TimeoutLayer`] | a time limit per attempt |
//! | 7 | your layers | [`GraphClientBuilder::layer`](crate::GraphClientBuilder::layer): they see each attempt as sent |
//! | 8 | transport | reqwest, bodies read within bounds |
//!
//! Inside the pipeline a call is an [`http::Request`] with a [`Bytes`] body and a
//! [`CallContext`] in its extensions; every HTTP answer, error statuses included, is an
//! `Ok` [`http::Response`] (so layers see Graph's errors as Graph sent them); `Err` is a
//! call that got no answer (transport, timeout, token, open breaker).
//!
//! Each layer here is a [`Middleware`]: one `handle` given the rest of the pipeline,
//! run by [`MiddlewareService`]. Yours can be written the same way, or be any tower
//! layer over [`GraphService`].

mod auth;
mod breaker;
mod budget;
mod retry;
mod timeout;
mod trace;
mod transport;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;

pub use auth::AuthLayer;
pub use breaker::BreakerLayer;
pub(crate) use budget::BudgetLayer;
pub use retry::{RetryLayer, RetryPolicy};
pub use timeout::TimeoutLayer;
pub use trace::{TraceLayer, route_template};
pub(crate) use transport::Transport;

use crate::error::GraphError;

/// A call inside the pipeline.
pub type GraphHttpRequest = http::Request<Bytes>;
/// An answer inside the pipeline (any status).
pub type GraphHttpResponse = http::Response<Bytes>;
/// The pipeline as one service: what your layers wrap.
///
/// Cloning one is a reference count, whatever it wraps: a layer hands the rest of the
/// pipeline to each call without copying it. [`GraphService::new`] takes any tower
/// service (each call goes to a clone of it, made ready first, so a layer's
/// backpressure is kept); a [`MiddlewareService`] converts with `From` and is called in
/// place.
///
/// ```
/// use keel_graph_client::middleware::{GraphHttpRequest, GraphService};
/// use keel_graph_client::GraphError;
/// use tower::ServiceExt;
///
/// # tokio_test_block_on(async {
/// let answer_ok = GraphService::new(tower::service_fn(|_request: GraphHttpRequest| async {
///     Ok::<_, GraphError>(http::Response::new(bytes::Bytes::from_static(b"{}")))
/// }));
/// let response = answer_ok
///     .oneshot(http::Request::new(bytes::Bytes::new()))
///     .await
///     .unwrap();
/// assert_eq!(response.status(), 200);
/// # });
/// # fn tokio_test_block_on(f: impl std::future::Future<Output = ()>) {
/// #     tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
/// # }
/// ```
#[derive(Clone)]
pub struct GraphService(Arc<dyn Call>);

/// A service called through a shared reference.
trait Call: Send + Sync {
    fn call(&self, request: GraphHttpRequest) -> GraphFuture;
}

/// Any tower service: each call goes to a clone, made ready first.
struct Cloned<S>(S);

impl<S> Call for Cloned<S>
where
    S: tower::Service<GraphHttpRequest, Response = GraphHttpResponse, Error = GraphError>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    fn call(&self, request: GraphHttpRequest) -> GraphFuture {
        Box::pin(tower::ServiceExt::oneshot(self.0.clone(), request))
    }
}

impl<M: Middleware> Call for MiddlewareService<M> {
    fn call(&self, request: GraphHttpRequest) -> GraphFuture {
        self.middleware.handle(self.next.clone(), request)
    }
}

impl GraphService {
    /// Any tower service over the pipeline's calls.
    pub fn new<S>(service: S) -> Self
    where
        S: tower::Service<GraphHttpRequest, Response = GraphHttpResponse, Error = GraphError>
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        GraphService(Arc::new(Cloned(service)))
    }

    /// Sends `request` through the service.
    pub(crate) fn send(&self, request: GraphHttpRequest) -> GraphFuture {
        self.0.call(request)
    }
}

impl<M: Middleware> From<MiddlewareService<M>> for GraphService {
    fn from(service: MiddlewareService<M>) -> Self {
        GraphService(Arc::new(service))
    }
}

impl std::fmt::Debug for GraphService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GraphService")
    }
}

impl tower::Service<GraphHttpRequest> for GraphService {
    type Response = GraphHttpResponse;
    type Error = GraphError;
    type Future = GraphFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), GraphError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: GraphHttpRequest) -> GraphFuture {
        self.send(request)
    }
}

/// What the layers know of a call, in its request's extensions.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct CallContext {
    /// The tenant the call is for (as given to the client, lower-cased).
    pub tenant: String,
    /// Whether repeating the call is safe (by method, or a write with `If-Match`).
    pub idempotent: bool,
    /// The Outlook mailboxes the call addresses (one entry per `$batch` item).
    pub mailboxes: Vec<String>,
    /// The attempt, from 1 (set by the retry layer).
    pub attempt: u32,
    /// No retry waits past this instant (a `$batch` request shares its batch's time).
    pub deadline: Option<tokio::time::Instant>,
}

/// A copy of a request for another attempt (`http::Request` is not `Clone`).
pub(crate) fn copy_request(request: &GraphHttpRequest) -> GraphHttpRequest {
    let mut copy = http::Request::new(request.body().clone());
    *copy.method_mut() = request.method().clone();
    *copy.uri_mut() = request.uri().clone();
    *copy.headers_mut() = request.headers().clone();
    *copy.version_mut() = request.version();
    if let Some(context) = request.extensions().get::<CallContext>() {
        copy.extensions_mut().insert(context.clone());
    }
    copy
}

/// The future of a call through the pipeline.
pub type GraphFuture = Pin<Box<dyn Future<Output = Result<GraphHttpResponse, GraphError>> + Send>>;

/// One step of the pipeline: what it does with a call, given the rest of the pipeline
/// (`next`). Each of this module's layers is one; a [`MiddlewareService`] runs it.
pub trait Middleware: Clone + Send + Sync + 'static {
    /// Handles `request`, calling `next` (once, several times, or not at all).
    fn handle(&self, next: GraphService, request: GraphHttpRequest) -> GraphFuture;
}

/// A [`Middleware`] in front of the rest of the pipeline: the service each of this
/// module's layers makes.
#[derive(Clone)]
pub struct MiddlewareService<M> {
    middleware: M,
    next: GraphService,
}

impl<M> MiddlewareService<M> {
    /// `middleware` in front of `next`.
    pub fn new(middleware: M, next: GraphService) -> Self {
        MiddlewareService { middleware, next }
    }
}

impl<M: std::fmt::Debug> std::fmt::Debug for MiddlewareService<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("MiddlewareService")
            .field(&self.middleware)
            .finish()
    }
}

impl<M: Middleware> tower::Service<GraphHttpRequest> for MiddlewareService<M> {
    type Response = GraphHttpResponse;
    type Error = GraphError;
    type Future = GraphFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), GraphError>> {
        // Each call readies its own clone of `next` (`oneshot`), so this one always is.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: GraphHttpRequest) -> GraphFuture {
        self.middleware.handle(self.next.clone(), request)
    }
}

/// A user layer, kept until the pipeline is built.
pub(crate) type UserLayer = Arc<dyn Fn(GraphService) -> GraphService + Send + Sync>;
