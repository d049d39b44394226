//! The rate limit as a tower layer.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::{RateLimited, RateLimiter};
use crate::layer_error::LayerError;

/// Refuses calls over a shared [`RateLimiter`] at once (no waiting), with the wait
/// until the next allowed call in the error.
///
/// ```
/// use std::sync::Arc;
/// use keel_resilience::LayerError;
/// use keel_resilience::rate_limit::RateLimitLayer;
/// use keel_resilience::rate_limit::{Quota, RateLimiter};
/// use tower::{Service, ServiceBuilder, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let limiter = Arc::new(RateLimiter::new("api", Quota::per_second(1).burst(1)).unwrap());
/// let mut service = ServiceBuilder::new()
///     .layer(RateLimitLayer::new(limiter))
///     .service_fn(|()| async { Ok::<_, std::io::Error>("ok") });
/// assert!(service.ready().await.unwrap().call(()).await.is_ok());
/// let refused = service.ready().await.unwrap().call(()).await;
/// assert!(matches!(refused, Err(LayerError::Policy(_))));
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct RateLimitLayer {
    limiter: Arc<RateLimiter>,
}

impl RateLimitLayer {
    /// A layer over `limiter` (share it to share the limit).
    #[must_use]
    pub fn new(limiter: Arc<RateLimiter>) -> Self {
        RateLimitLayer { limiter }
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimitService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimitService {
            inner,
            limiter: self.limiter.clone(),
        }
    }
}

/// The service made by [`RateLimitLayer`].
#[derive(Clone, Debug)]
pub struct RateLimitService<S> {
    inner: S,
    limiter: Arc<RateLimiter>,
}

impl<S, Req> Service<Req> for RateLimitService<S>
where
    S: Service<Req>,
{
    type Response = S::Response;
    type Error = LayerError<RateLimited, S::Error>;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(LayerError::Inner)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        match self.limiter.check() {
            Ok(()) => ResponseFuture {
                inner: Some(self.inner.call(request)),
                refused: None,
            },
            Err(limited) => ResponseFuture {
                inner: None,
                refused: Some(limited),
            },
        }
    }
}

pin_project! {
    /// The response future of [`RateLimitService`].
    pub struct ResponseFuture<F> {
        #[pin]
        inner: Option<F>,
        refused: Option<RateLimited>,
    }
}

impl<F> std::fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("refused", &self.refused)
            .finish_non_exhaustive()
    }
}

impl<F, T, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, E>>,
{
    type Output = Result<T, LayerError<RateLimited, E>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Some(refused) = this.refused.take() {
            return Poll::Ready(Err(LayerError::Policy(refused)));
        }
        match this.inner.as_pin_mut() {
            Some(inner) => inner.poll(cx).map_err(LayerError::Inner),
            None => Poll::Pending,
        }
    }
}
