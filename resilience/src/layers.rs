//! Zero-allocation tower layers for single policies: [`TimeoutLayer`] and
//! [`RateLimitLayer`]. (The circuit breaker's is
//! [`CircuitBreakerLayer`](crate::breaker::CircuitBreakerLayer); retry, bulkhead and
//! the whole pipeline go through [`PipelineLayer`](crate::pipeline_layer::PipelineLayer).)

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::classify::{Classify, ErrorClass};
use crate::rate_limit::{RateLimited, RateLimiter};
use crate::timeout::TimeoutError;

/// The error of a single-policy layer: the policy refused, or the inner service failed.
#[derive(Debug, thiserror::Error)]
pub enum LayerError<P, E> {
    /// The policy stopped the call.
    #[error(transparent)]
    Policy(P),
    /// The inner service failed.
    #[error(transparent)]
    Inner(E),
}

impl<P: Classify, E: Classify> Classify for LayerError<P, E> {
    fn class(&self) -> ErrorClass {
        match self {
            LayerError::Policy(p) => p.class(),
            LayerError::Inner(e) => e.class(),
        }
    }
}

/// Bounds each call; on timeout the inner future is dropped (cancelled).
///
/// ```
/// use std::time::Duration;
/// use keel_resilience::layers::{LayerError, TimeoutLayer};
/// use tower::{ServiceBuilder, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
/// let service = ServiceBuilder::new()
///     .layer(TimeoutLayer::new(Duration::from_secs(1)))
///     .service_fn(|()| async {
///         tokio::time::sleep(Duration::from_secs(5)).await;
///         Ok::<_, std::io::Error>("late")
///     });
/// assert!(matches!(service.oneshot(()).await, Err(LayerError::Policy(_))));
/// # }
/// ```
#[derive(Clone, Copy, Debug)]
pub struct TimeoutLayer {
    limit: Duration,
}

impl TimeoutLayer {
    /// A limit of `limit` per call.
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

/// The service made by [`TimeoutLayer`].
#[derive(Clone, Debug)]
pub struct TimeoutService<S> {
    inner: S,
    limit: Duration,
}

impl<S, Req> Service<Req> for TimeoutService<S>
where
    S: Service<Req>,
{
    type Response = S::Response;
    type Error = LayerError<TimeoutError, S::Error>;
    type Future = TimeoutFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(LayerError::Inner)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        TimeoutFuture {
            inner: crate::timeout::OptionalTimeout::new(Some(self.limit), self.inner.call(request)),
        }
    }
}

pin_project! {
    /// The response future of [`TimeoutService`].
    pub struct TimeoutFuture<F> {
        #[pin]
        inner: crate::timeout::OptionalTimeout<F>,
    }
}

impl<F> std::fmt::Debug for TimeoutFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TimeoutFuture").finish_non_exhaustive()
    }
}

impl<F, T, E> Future for TimeoutFuture<F>
where
    F: Future<Output = Result<T, E>>,
{
    type Output = Result<T, LayerError<TimeoutError, E>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().inner.poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(result)) => Poll::Ready(result.map_err(LayerError::Inner)),
            Poll::Ready(Err(elapsed)) => Poll::Ready(Err(LayerError::Policy(elapsed))),
        }
    }
}

/// Refuses calls over a shared [`RateLimiter`] at once (no waiting), with the wait
/// until the next allowed call in the error.
///
/// ```
/// use std::sync::Arc;
/// use keel_resilience::layers::{LayerError, RateLimitLayer};
/// use keel_resilience::rate_limit::{quota, RateLimiter};
/// use tower::{Service, ServiceBuilder, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let limiter = Arc::new(RateLimiter::new("api", quota(1, 1)));
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
    type Future = RateLimitFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(LayerError::Inner)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        match self.limiter.check() {
            Ok(()) => RateLimitFuture {
                inner: Some(self.inner.call(request)),
                refused: None,
            },
            Err(limited) => RateLimitFuture {
                inner: None,
                refused: Some(limited),
            },
        }
    }
}

pin_project! {
    /// The response future of [`RateLimitService`].
    pub struct RateLimitFuture<F> {
        #[pin]
        inner: Option<F>,
        refused: Option<RateLimited>,
    }
}

impl<F> std::fmt::Debug for RateLimitFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimitFuture")
            .field("refused", &self.refused)
            .finish_non_exhaustive()
    }
}

impl<F, T, E> Future for RateLimitFuture<F>
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
