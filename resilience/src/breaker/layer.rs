//! The circuit breaker as a tower layer.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::{BreakerError, CallNotPermitted, CircuitBreaker, Outcome, OwnedPermit};
use crate::classify::Classify;

/// Decides how a response or error counts, for [`CircuitBreakerLayer`].
pub trait ClassifyOutcome<T, E> {
    /// The outcome of one call.
    fn outcome(&self, result: &Result<T, E>) -> Outcome;
}

/// The default: [`Outcome::of`], by the error's [`Classify`] class.
#[derive(Clone, Copy, Debug, Default)]
pub struct ByErrorClass;

impl<T, E: Classify> ClassifyOutcome<T, E> for ByErrorClass {
    fn outcome(&self, result: &Result<T, E>) -> Outcome {
        Outcome::of(result)
    }
}

impl<T, E, F> ClassifyOutcome<T, E> for F
where
    F: Fn(&Result<T, E>) -> Outcome,
{
    fn outcome(&self, result: &Result<T, E>) -> Outcome {
        self(result)
    }
}

/// A tower layer that runs every request through a shared [`CircuitBreaker`]. Refused
/// requests fail at once with [`BreakerError::Rejected`], without reaching the inner
/// service.
///
/// ```
/// use std::sync::Arc;
/// use keel_resilience::breaker::{CircuitBreaker, CircuitBreakerConfig, CircuitBreakerLayer, Outcome};
///
/// let breaker = Arc::new(CircuitBreaker::new(CircuitBreakerConfig::standard("graph")));
/// // Count HTTP 5xx responses as failures, not only transport errors:
/// let layer = CircuitBreakerLayer::new(breaker).with_classifier(
///     |r: &Result<http::Response<()>, std::io::Error>| match r {
///         Ok(response) if response.status().is_server_error() => Outcome::Failure,
///         Ok(_) => Outcome::Success,
///         Err(_) => Outcome::Failure,
///     },
/// );
/// # let _ = layer;
/// ```
#[derive(Clone, Debug)]
pub struct CircuitBreakerLayer<C = ByErrorClass> {
    breaker: Arc<CircuitBreaker>,
    classifier: C,
}

impl CircuitBreakerLayer {
    /// A layer that classifies by the error's [`Classify`] class.
    #[must_use]
    pub fn new(breaker: Arc<CircuitBreaker>) -> Self {
        CircuitBreakerLayer {
            breaker,
            classifier: ByErrorClass,
        }
    }
}

impl<C> CircuitBreakerLayer<C> {
    /// Classifies outcomes with `classifier` instead.
    #[must_use]
    pub fn with_classifier<C2>(self, classifier: C2) -> CircuitBreakerLayer<C2> {
        CircuitBreakerLayer {
            breaker: self.breaker,
            classifier,
        }
    }
}

impl<S, C: Clone> Layer<S> for CircuitBreakerLayer<C> {
    type Service = CircuitBreakerService<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        CircuitBreakerService {
            inner,
            breaker: self.breaker.clone(),
            classifier: self.classifier.clone(),
        }
    }
}

/// The service made by [`CircuitBreakerLayer`].
#[derive(Clone, Debug)]
pub struct CircuitBreakerService<S, C = ByErrorClass> {
    inner: S,
    breaker: Arc<CircuitBreaker>,
    classifier: C,
}

impl<S, C, Req> Service<Req> for CircuitBreakerService<S, C>
where
    S: Service<Req>,
    C: ClassifyOutcome<S::Response, S::Error> + Clone,
{
    type Response = S::Response;
    type Error = BreakerError<S::Error>;
    type Future = ResponseFuture<S::Future, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(BreakerError::Inner)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        match self.breaker.try_acquire_owned() {
            Ok(permit) => ResponseFuture {
                inner: Some(self.inner.call(request)),
                rejected: None,
                permit: Some(permit),
                classifier: self.classifier.clone(),
            },
            Err(rejected) => ResponseFuture {
                inner: None,
                rejected: Some(rejected),
                permit: None,
                classifier: self.classifier.clone(),
            },
        }
    }
}

pin_project! {
    /// The response future of [`CircuitBreakerService`].
    pub struct ResponseFuture<F, C> {
        #[pin]
        inner: Option<F>,
        rejected: Option<CallNotPermitted>,
        permit: Option<OwnedPermit>,
        classifier: C,
    }
}

impl<F, C> std::fmt::Debug for ResponseFuture<F, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("rejected", &self.rejected)
            .finish_non_exhaustive()
    }
}

impl<F, C, T, E> Future for ResponseFuture<F, C>
where
    F: Future<Output = Result<T, E>>,
    C: ClassifyOutcome<T, E>,
{
    type Output = Result<T, BreakerError<E>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Some(rejected) = this.rejected.take() {
            return Poll::Ready(Err(BreakerError::Rejected(rejected)));
        }
        let Some(inner) = this.inner.as_pin_mut() else {
            // Polled again after completion: tower futures are not fused.
            return Poll::Pending;
        };
        let result = match inner.poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(result) => result,
        };
        if let Some(permit) = this.permit.take() {
            permit.record(this.classifier.outcome(&result));
        }
        Poll::Ready(result.map_err(BreakerError::Inner))
    }
}
