//! A time limit per attempt.

use std::time::Duration;

use tower::Layer;

use super::{GraphFuture, GraphHttpRequest, GraphService, Middleware, MiddlewareService};
use crate::error::GraphError;

/// Fails an attempt that has not answered within `limit` with
/// [`GraphError::Timeout`] (transient: retried when the call is idempotent).
#[derive(Clone, Copy, Debug)]
pub struct TimeoutLayer {
    limit: Duration,
}

impl TimeoutLayer {
    /// At most `limit` per attempt, answer included.
    #[must_use]
    pub fn new(limit: Duration) -> Self {
        TimeoutLayer { limit }
    }
}

impl Layer<GraphService> for TimeoutLayer {
    type Service = MiddlewareService<Self>;

    fn layer(&self, next: GraphService) -> Self::Service {
        MiddlewareService::new(*self, next)
    }
}

impl Middleware for TimeoutLayer {
    fn handle(&self, next: GraphService, request: GraphHttpRequest) -> GraphFuture {
        let inner = next;
        let limit = self.limit;
        Box::pin(async move {
            match tokio::time::timeout(limit, inner.send(request)).await {
                Ok(answer) => answer,
                Err(_) => Err(GraphError::Timeout(limit)),
            }
        })
    }
}
