//! Correlation: one id and one trace context per unit of work, carried in a task-local
//! scope into logs, spawned tasks and outgoing calls.
//!
//! - [`RequestContext`] holds the [`CorrelationId`] and the W3C [`TraceContext`].
//! - [`CorrelationLayer`] (a tower layer for servers) reads them from the request, or
//!   makes them, runs the request inside their scope and echoes the id.
//! - [`spawn`] and [`in_current_context`] carry the scope and the current span into
//!   spawned tasks, which would otherwise lose both.
//! - `CorrelationMiddleware` (feature `reqwest`) sends them on outgoing calls.

mod id;
mod layer;
#[cfg(feature = "reqwest")]
mod middleware;
mod trace_context;

use std::future::Future;

use http::HeaderMap;
use tracing::Instrument;

pub use id::{CorrelationId, MAX_CORRELATION_ID_LEN};
pub use layer::{CorrelationFuture, CorrelationLayer, CorrelationService};
#[cfg(feature = "reqwest")]
#[cfg_attr(docsrs, doc(cfg(feature = "reqwest")))]
pub use middleware::CorrelationMiddleware;
pub use trace_context::TraceContext;

/// Header names Keel reads and writes.
pub mod headers {
    use http::HeaderName;

    /// `x-correlation-id`: read first, always echoed and sent.
    pub const CORRELATION_ID: HeaderName = HeaderName::from_static("x-correlation-id");
    /// `x-request-id`: read when `x-correlation-id` is absent, echoed when it was used.
    pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
    /// W3C `traceparent`.
    pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
    /// Microsoft Graph's `client-request-id` (a GUID).
    pub const CLIENT_REQUEST_ID: HeaderName = HeaderName::from_static("client-request-id");
}

tokio::task_local! {
    static CURRENT: RequestContext;
}

/// The correlation id and trace context of the unit of work being run.
///
/// ```
/// use keel_observability::{CorrelationId, RequestContext};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let ctx = RequestContext::new();
/// let id = ctx.correlation_id().clone();
/// ctx.scope(async move {
///     // Anywhere below, without passing it around:
///     assert_eq!(CorrelationId::current(), Some(id));
/// })
/// .await;
/// assert_eq!(CorrelationId::current(), None);
/// # }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestContext {
    correlation_id: CorrelationId,
    trace: TraceContext,
}

impl RequestContext {
    /// A fresh context: a new UUIDv7 correlation id and a new trace whose id is that
    /// UUID's 128 bits (so the two can be matched by eye).
    #[must_use]
    pub fn new() -> Self {
        let uuid = uuid::Uuid::now_v7();
        RequestContext {
            correlation_id: CorrelationId::from_uuid(uuid),
            trace: TraceContext::with_trace_id(uuid.as_u128()),
        }
    }

    /// A context from parts.
    #[must_use]
    pub fn from_parts(correlation_id: CorrelationId, trace: TraceContext) -> Self {
        RequestContext {
            correlation_id,
            trace,
        }
    }

    /// Reads the context from request headers: the id from `x-correlation-id`, else
    /// `x-request-id`, else the `traceparent`'s trace id; the trace from `traceparent`.
    /// Invalid values are ignored and what is missing is made fresh. Never fails.
    #[must_use]
    pub fn from_headers(headers: &HeaderMap) -> Self {
        let trace = headers
            .get(headers::TRACEPARENT)
            .and_then(|v| v.to_str().ok())
            .and_then(TraceContext::from_traceparent);
        let id = headers
            .get(headers::CORRELATION_ID)
            .and_then(CorrelationId::from_header)
            .or_else(|| {
                headers
                    .get(headers::REQUEST_ID)
                    .and_then(CorrelationId::from_header)
            });
        match (id, trace) {
            (Some(id), Some(trace)) => Self::from_parts(id, trace),
            (Some(id), None) => Self::from_parts(id, TraceContext::new_root()),
            (None, Some(trace)) => {
                let id = CorrelationId::from_uuid(uuid::Uuid::from_u128(trace.trace_id()));
                Self::from_parts(id, trace)
            }
            (None, None) => Self::new(),
        }
    }

    /// The correlation id.
    #[must_use]
    pub fn correlation_id(&self) -> &CorrelationId {
        &self.correlation_id
    }

    /// The trace context.
    #[must_use]
    pub fn trace(&self) -> &TraceContext {
        &self.trace
    }

    /// The context of the task being run, if it runs inside a scope.
    #[must_use]
    pub fn current() -> Option<RequestContext> {
        CURRENT.try_with(Clone::clone).ok()
    }

    /// Calls `f` with the current context without cloning it.
    pub fn with_current<R>(f: impl FnOnce(Option<&RequestContext>) -> R) -> R {
        let mut f = Some(f);
        match CURRENT.try_with(|ctx| (f.take().expect("called once"))(Some(ctx))) {
            Ok(r) => r,
            Err(_) => (f.take().expect("not called yet"))(None),
        }
    }

    /// Runs `future` with this context as the current one.
    pub fn scope<F: Future>(self, future: F) -> tokio::task::futures::TaskLocalFuture<Self, F> {
        CURRENT.scope(self, future)
    }

    /// Runs `f` synchronously with this context as the current one.
    pub fn sync_scope<R>(self, f: impl FnOnce() -> R) -> R {
        CURRENT.sync_scope(self, f)
    }
}

impl Default for RequestContext {
    fn default() -> Self {
        Self::new()
    }
}

impl CorrelationId {
    /// The correlation id of the task being run, if it runs inside a scope.
    #[must_use]
    pub fn current() -> Option<CorrelationId> {
        CURRENT.try_with(|ctx| ctx.correlation_id.clone()).ok()
    }
}

/// Wraps `future` so that it runs with the current [`RequestContext`] and the current
/// `tracing` span, wherever it is polled. Use it for futures handed to another task,
/// `JoinSet` or executor.
///
/// ```
/// use keel_observability::{in_current_context, CorrelationId, RequestContext};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let ctx = RequestContext::new();
/// let id = ctx.correlation_id().clone();
/// let seen = ctx
///     .scope(async { tokio::spawn(in_current_context(async { CorrelationId::current() })) })
///     .await
///     .await
///     .unwrap();
/// assert_eq!(seen, Some(id));
/// # }
/// ```
pub fn in_current_context<F: Future>(future: F) -> impl Future<Output = F::Output> {
    let context = RequestContext::current();
    let span = tracing::Span::current();
    let future = future.instrument(span);
    async move {
        match context {
            Some(context) => context.scope(future).await,
            None => future.await,
        }
    }
}

/// `tokio::spawn` that keeps the current [`RequestContext`] and `tracing` span, so logs
/// from the spawned task carry the same correlation id.
///
/// ```
/// use keel_observability::{spawn, CorrelationId, RequestContext};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let ctx = RequestContext::new();
/// let id = ctx.correlation_id().clone();
/// let handle = ctx.scope(async { spawn(async { CorrelationId::current() }) }).await;
/// assert_eq!(handle.await.unwrap(), Some(id));
/// # }
/// ```
pub fn spawn<F>(future: F) -> tokio::task::JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    tokio::spawn(in_current_context(future))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn headers(pairs: &[(&http::HeaderName, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert((*name).clone(), HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn correlation_header_wins_over_request_id() {
        let ctx = RequestContext::from_headers(&headers(&[
            (&headers::CORRELATION_ID, "corr-1"),
            (&headers::REQUEST_ID, "req-1"),
        ]));
        assert_eq!(ctx.correlation_id().as_str(), "corr-1");
        assert_eq!(ctx.trace().parent_span_id(), None);
    }

    #[test]
    fn request_id_is_used_when_alone() {
        let ctx = RequestContext::from_headers(&headers(&[(&headers::REQUEST_ID, "req-1")]));
        assert_eq!(ctx.correlation_id().as_str(), "req-1");
    }

    #[test]
    fn traceparent_alone_gives_the_trace_id_as_correlation_id() {
        let ctx = RequestContext::from_headers(&headers(&[(&headers::TRACEPARENT, TRACEPARENT)]));
        assert_eq!(
            ctx.correlation_id().as_str(),
            "4bf92f35-77b3-4da6-a3ce-929d0e0e4736"
        );
        assert_eq!(
            ctx.trace().trace_id_hex(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(ctx.trace().parent_span_id(), Some(0x00f0_67aa_0ba9_02b7));
    }

    #[test]
    fn invalid_headers_give_a_fresh_context() {
        let ctx = RequestContext::from_headers(&headers(&[
            (&headers::CORRELATION_ID, "bad id with spaces"),
            (&headers::TRACEPARENT, "00-garbage"),
        ]));
        assert!(ctx.correlation_id().is_uuid());
        assert_eq!(ctx.trace().parent_span_id(), None);
        assert_eq!(
            ctx.trace().trace_id_hex(),
            ctx.correlation_id().as_str().replace('-', "")
        );
    }

    #[test]
    fn with_current_sees_the_scope() {
        assert!(RequestContext::with_current(|c| c.is_none()));
        let ctx = RequestContext::new();
        let id = ctx.correlation_id().clone();
        ctx.sync_scope(|| {
            RequestContext::with_current(|c| assert_eq!(c.map(|c| c.correlation_id()), Some(&id)));
        });
    }
}
