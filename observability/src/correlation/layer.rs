//! The tower layer that gives every server request a correlation scope.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{HeaderValue, Request, Response};
use pin_project_lite::pin_project;
use tokio::task::futures::TaskLocalFuture;
use tower_layer::Layer;
use tower_service::Service;
use tracing::Instrument;
use tracing::instrument::Instrumented;

use super::{RequestContext, headers};

/// A tower layer for servers: reads the correlation id and `traceparent` from each
/// request (or makes them), runs the request inside their scope and inside a
/// `http_request` span that records them, and echoes the id as `x-correlation-id` on the
/// response (and as `x-request-id` when that is the header the caller used).
///
/// Malformed, oversized or hostile ids are replaced by a fresh one and never echoed.
///
/// ```
/// use axum::{routing::get, Router};
/// use keel_observability::{CorrelationId, CorrelationLayer};
///
/// async fn handler(id: CorrelationId) -> String {
///     format!("handling {id}")
/// }
///
/// let app: Router = Router::new()
///     .route("/", get(handler))
///     .layer(CorrelationLayer::new());
/// ```
#[derive(Clone, Debug, Default)]
pub struct CorrelationLayer {
    _private: (),
}

impl CorrelationLayer {
    /// The layer with its standard behaviour.
    #[must_use]
    pub fn new() -> Self {
        CorrelationLayer::default()
    }
}

impl<S> Layer<S> for CorrelationLayer {
    type Service = CorrelationService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CorrelationService { inner }
    }
}

/// The service made by [`CorrelationLayer`].
#[derive(Clone, Debug)]
pub struct CorrelationService<S> {
    inner: S,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for CorrelationService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = CorrelationFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let context = RequestContext::from_headers(request.headers());
        let echo = context.correlation_id().as_header_value().clone();
        let echo_request_id = !request.headers().contains_key(headers::CORRELATION_ID)
            && request
                .headers()
                .get(headers::REQUEST_ID)
                .is_some_and(|v| v == echo);
        let make_span = || {
            tracing::info_span!(
                "http_request",
                http.request.method = %request.method(),
                url.path = request.uri().path(),
                correlation_id = context.correlation_id().as_str(),
                trace_id = %format_args!("{:032x}", context.trace().trace_id()),
                span_id = %format_args!("{:016x}", context.trace().span_id()),
            )
        };
        // With OTLP on, the span is made inside the scope so that its exported trace id
        // is the request's (see `otlp::CorrelatedIds`).
        #[cfg(feature = "otlp")]
        let span = context.clone().sync_scope(make_span);
        #[cfg(not(feature = "otlp"))]
        let span = make_span();
        #[cfg(feature = "otlp")]
        continue_remote_trace(&span, context.trace());
        let inner = context.scope(self.inner.call(request).instrument(span));
        CorrelationFuture {
            inner,
            echo: Some(echo),
            echo_request_id,
        }
    }
}

/// With OTLP export on, makes the request span a child of the caller's span so the
/// exported trace continues the caller's.
#[cfg(feature = "otlp")]
fn continue_remote_trace(span: &tracing::Span, trace: &super::TraceContext) {
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
    };
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    let Some(parent) = trace.parent_span_id() else {
        return;
    };
    let flags = if trace.sampled() {
        TraceFlags::SAMPLED
    } else {
        TraceFlags::default()
    };
    let remote = SpanContext::new(
        TraceId::from(trace.trace_id()),
        SpanId::from(parent),
        flags,
        true,
        TraceState::default(),
    );
    let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote));
}

pin_project! {
    /// The response future of [`CorrelationService`].
    pub struct CorrelationFuture<F> {
        #[pin]
        inner: TaskLocalFuture<RequestContext, Instrumented<F>>,
        echo: Option<HeaderValue>,
        echo_request_id: bool,
    }
}

impl<F> std::fmt::Debug for CorrelationFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CorrelationFuture")
            .field("echo", &self.echo)
            .finish_non_exhaustive()
    }
}

impl<F, B, E> Future for CorrelationFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut response = match this.inner.poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Ready(Ok(response)) => response,
        };
        if let Some(echo) = this.echo.take() {
            if *this.echo_request_id {
                response
                    .headers_mut()
                    .insert(headers::REQUEST_ID, echo.clone());
            }
            response.headers_mut().insert(headers::CORRELATION_ID, echo);
        }
        Poll::Ready(Ok(response))
    }
}

#[cfg(feature = "axum")]
mod extract {
    use axum::extract::FromRequestParts;
    use http::request::Parts;

    use crate::correlation::{CorrelationId, RequestContext};

    /// Extracts the request's correlation id inside a [`CorrelationLayer`]; outside one,
    /// reads the headers the same way the layer would.
    ///
    /// [`CorrelationLayer`]: crate::CorrelationLayer
    impl<S: Send + Sync> FromRequestParts<S> for CorrelationId {
        type Rejection = std::convert::Infallible;

        async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
            Ok(CorrelationId::current()
                .unwrap_or_else(|| RequestContext::from_headers(&parts.headers).correlation_id))
        }
    }

    /// Extracts the whole [`RequestContext`] (correlation id and trace context).
    impl<S: Send + Sync> FromRequestParts<S> for RequestContext {
        type Rejection = std::convert::Infallible;

        async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
            Ok(RequestContext::current()
                .unwrap_or_else(|| RequestContext::from_headers(&parts.headers)))
        }
    }
}
