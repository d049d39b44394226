//! A time limit per attempt.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tower::{Layer, Service, ServiceExt as _};

use super::{GraphHttpRequest, GraphHttpResponse};
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

impl<S> Layer<S> for TimeoutLayer {
    type Service = TimeoutService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TimeoutService {
            inner,
            limit: self.limit,
        }
    }
}

/// The service of [`TimeoutLayer`].
#[derive(Clone, Debug)]
pub struct TimeoutService<S> {
    inner: S,
    limit: Duration,
}

impl<S> Service<GraphHttpRequest> for TimeoutService<S>
where
    S: Service<GraphHttpRequest, Response = GraphHttpResponse, Error = GraphError>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    type Response = GraphHttpResponse;
    type Error = GraphError;
    type Future = Pin<Box<dyn Future<Output = Result<GraphHttpResponse, GraphError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), GraphError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: GraphHttpRequest) -> Self::Future {
        let inner = self.inner.clone();
        let limit = self.limit;
        Box::pin(async move {
            match tokio::time::timeout(limit, inner.oneshot(request)).await {
                Ok(answer) => answer,
                Err(_) => Err(GraphError::Timeout(limit)),
            }
        })
    }
}
