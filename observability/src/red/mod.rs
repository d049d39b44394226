//! RED metrics (rate, errors, duration) for axum servers.

mod handles;

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Once};
use std::task::{Context, Poll};
use std::time::Instant;

use axum::extract::MatchedPath;
use http::{Request, Response};
use metrics::Gauge;
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::slo::SloTracker;
use handles::{ACTIVE, DURATION, ERRORS, HandleCache, REQUESTS, UNMATCHED, method_label};

/// A tower layer that records, per matched route, method and status:
///
/// | metric | kind |
/// |---|---|
/// | `http_server_requests_total` | counter |
/// | `http_server_errors_total` | counter (5xx and service errors) |
/// | `http_server_request_duration_seconds` | histogram |
/// | `http_server_active_requests` | gauge (by route and method) |
///
/// The route is axum's matched path template (`/users/{id}`), never the raw path, and
/// unknown methods are `_OTHER`, so the number of series stays bounded; unmatched
/// requests are counted under the route `<unmatched>`. Add the layer with
/// `Router::layer` so it runs after routing, and set a `Router::fallback` if 404s should
/// be counted: axum layers the fallback only when one is set. With [`with_slo`](Self::with_slo) it
/// also feeds an [`SloTracker`].
///
/// Add it together with [`CorrelationLayer`](crate::CorrelationLayer) in one
/// `tower::ServiceBuilder`: axum boxes and clones every `Router::layer` call per request,
/// so one call is cheaper than two (about 0.25 µs each here, see `docs/benchmarks.md`).
///
/// Metric handles are cached per label set; install the metrics recorder (for example
/// [`PrometheusMetrics::install`](crate::PrometheusMetrics::install)) before serving.
///
/// ```
/// use axum::{routing::get, Router};
/// use keel_observability::{CorrelationLayer, RedLayer};
/// use keel_observability::slo::{SloConfig, SloTracker};
///
/// let slo = SloTracker::new(SloConfig::standard());
/// let app: Router = Router::new()
///     .route("/users/{id}", get(|| async { "user" }))
///     .fallback(|| async { axum::http::StatusCode::NOT_FOUND })
///     .layer(
///         tower::ServiceBuilder::new()
///             .layer(CorrelationLayer::new())
///             .layer(RedLayer::new().with_slo(slo.clone())),
///     );
/// ```
#[derive(Clone, Default)]
pub struct RedLayer {
    state: Arc<State>,
}

#[derive(Default)]
struct State {
    handles: HandleCache,
    slo: Option<SloTracker>,
}

impl std::fmt::Debug for RedLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedLayer")
            .field("slo", &self.state.slo)
            .finish_non_exhaustive()
    }
}

static DESCRIBE: Once = Once::new();

impl RedLayer {
    /// The layer.
    #[must_use]
    pub fn new() -> Self {
        DESCRIBE.call_once(|| {
            metrics::describe_counter!(REQUESTS, "HTTP requests served.");
            metrics::describe_counter!(ERRORS, "HTTP requests that ended in a 5xx or error.");
            metrics::describe_histogram!(
                DURATION,
                metrics::Unit::Seconds,
                "Time from request to response headers."
            );
            metrics::describe_gauge!(ACTIVE, "HTTP requests being served.");
        });
        RedLayer::default()
    }

    /// Also records every request in `tracker` (success = not 5xx).
    #[must_use]
    pub fn with_slo(self, tracker: SloTracker) -> Self {
        RedLayer {
            state: Arc::new(State {
                handles: HandleCache::default(),
                slo: Some(tracker),
            }),
        }
    }
}

impl<S> Layer<S> for RedLayer {
    type Service = RedService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RedService {
            inner,
            state: self.state.clone(),
        }
    }
}

/// The service made by [`RedLayer`].
#[derive(Clone)]
pub struct RedService<S> {
    inner: S,
    state: Arc<State>,
}

impl<S> std::fmt::Debug for RedService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedService").finish_non_exhaustive()
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for RedService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = RedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let route = request.extensions().get::<MatchedPath>().cloned();
        let method = method_label(request.method());
        let route_str = route.as_ref().map_or(UNMATCHED, MatchedPath::as_str);
        let active = self.state.handles.active(route_str, method);
        active.increment(1.0);
        RedFuture {
            inner: self.inner.call(request),
            record: Some(Recording {
                state: self.state.clone(),
                route,
                method,
                start: Instant::now(),
                active: ActiveGuard(active),
            }),
        }
    }
}

struct Recording {
    state: Arc<State>,
    route: Option<MatchedPath>,
    method: &'static str,
    start: Instant,
    active: ActiveGuard,
}

/// Decrements the in-flight gauge when the request ends, also when it is cancelled.
struct ActiveGuard(Gauge);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

impl Recording {
    fn finish(self, status: u16) {
        let elapsed = self.start.elapsed();
        let route = self.route.as_ref().map_or(UNMATCHED, MatchedPath::as_str);
        let handles = self.state.handles.completed(route, self.method, status);
        handles.requests.increment(1);
        if let Some(errors) = &handles.errors {
            errors.increment(1);
        }
        handles.duration.record(elapsed.as_secs_f64());
        if let Some(slo) = &self.state.slo {
            slo.record(route, elapsed, status < 500);
        }
        drop(self.active);
    }
}

pin_project! {
    /// The response future of [`RedService`].
    pub struct RedFuture<F> {
        #[pin]
        inner: F,
        record: Option<Recording>,
    }
}

impl<F> std::fmt::Debug for RedFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedFuture").finish_non_exhaustive()
    }
}

impl<F, B, E> Future for RedFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = match this.inner.poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(result) => result,
        };
        if let Some(record) = this.record.take() {
            // A service error never produced a response: count it as a 500.
            let status = result.as_ref().map_or(500, |r| r.status().as_u16());
            record.finish(status);
        }
        Poll::Ready(result)
    }
}
