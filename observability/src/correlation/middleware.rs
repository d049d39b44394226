//! Sending the correlation scope on outgoing reqwest calls.

use http::Extensions;
use reqwest::{Request, Response};
use reqwest_middleware::{Middleware, Next, Result};

use super::{RequestContext, headers};

/// A `reqwest-middleware` middleware that sends the current [`RequestContext`] on every
/// outgoing call: the id as `x-correlation-id` (and as Microsoft Graph's
/// `client-request-id` when it is a GUID, which Graph requires), and the trace as
/// `traceparent` with this service's span as the parent. Headers the caller set
/// explicitly are left alone. Outside a scope it sends nothing.
///
/// ```
/// use keel_observability::CorrelationMiddleware;
///
/// let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
///     .with(CorrelationMiddleware::new())
///     .build();
/// ```
#[derive(Clone, Debug, Default)]
pub struct CorrelationMiddleware {
    _private: (),
}

impl CorrelationMiddleware {
    /// The middleware.
    #[must_use]
    pub fn new() -> Self {
        CorrelationMiddleware::default()
    }

    /// Adds the current context's headers to `request`'s headers, keeping any the caller
    /// set. Useful with a plain `reqwest::Client` too.
    pub fn apply(request: &mut Request) {
        RequestContext::with_current(|context| {
            let Some(context) = context else { return };
            let request_headers = request.headers_mut();
            let id = context.correlation_id();
            if !request_headers.contains_key(headers::CORRELATION_ID) {
                request_headers.insert(headers::CORRELATION_ID, id.as_header_value().clone());
            }
            if id.is_uuid() && !request_headers.contains_key(headers::CLIENT_REQUEST_ID) {
                request_headers.insert(headers::CLIENT_REQUEST_ID, id.as_header_value().clone());
            }
            if !request_headers.contains_key(headers::TRACEPARENT)
                && let Ok(value) = http::HeaderValue::from_str(&context.trace().to_traceparent())
            {
                request_headers.insert(headers::TRACEPARENT, value);
            }
        });
    }
}

#[async_trait::async_trait]
impl Middleware for CorrelationMiddleware {
    async fn handle(
        &self,
        mut request: Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> Result<Response> {
        Self::apply(&mut request);
        next.run(request, extensions).await
    }
}
