//! A circuit breaker per host.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use keel_resilience::breaker::{CircuitBreaker, CircuitBreakerConfig, Outcome};
use keel_resilience::keyed::KeyedRegistry;
use keel_resilience::{Classify, ErrorClass};
use tower::{Layer, Service, ServiceExt as _};

use super::{GraphHttpRequest, GraphHttpResponse};
use crate::error::GraphError;

/// A circuit breaker per host (keel-resilience's, by default
/// [`CircuitBreakerConfig::standard`]): while one opens after failures (5xx, timeouts,
/// transport errors; not throttling, not the caller's own errors), calls to that host
/// fail at once with [`GraphError::CircuitOpen`].
#[derive(Clone)]
pub struct BreakerLayer {
    breakers: KeyedRegistry<String, CircuitBreaker>,
}

impl std::fmt::Debug for BreakerLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BreakerLayer").finish_non_exhaustive()
    }
}

impl BreakerLayer {
    /// A breaker per host, each made by `config` from the host name.
    #[must_use]
    pub fn new(config: impl Fn(&str) -> CircuitBreakerConfig + Send + Sync + 'static) -> Self {
        BreakerLayer {
            breakers: KeyedRegistry::new(
                1_000,
                Duration::from_secs(3_600),
                move |host: &String| CircuitBreaker::new(config(host)),
            ),
        }
    }

    /// keel-resilience's standard breaker per host, named `graph:{host}`.
    #[must_use]
    pub fn standard() -> Self {
        Self::new(|host| CircuitBreakerConfig::standard(format!("graph:{host}")))
    }
}

impl<S> Layer<S> for BreakerLayer {
    type Service = BreakerService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        BreakerService {
            inner,
            breakers: self.breakers.clone(),
        }
    }
}

/// The service of [`BreakerLayer`].
#[derive(Clone)]
pub struct BreakerService<S> {
    inner: S,
    breakers: KeyedRegistry<String, CircuitBreaker>,
}

impl<S> std::fmt::Debug for BreakerService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BreakerService").finish_non_exhaustive()
    }
}

/// How an answer counts for the host's health.
fn outcome(answer: &Result<GraphHttpResponse, GraphError>) -> Outcome {
    match answer {
        Ok(response) if response.status().is_server_error() => {
            // 503 is Graph throttling; the rest of 5xx is the host failing.
            if response.status().as_u16() == 503 {
                Outcome::Ignored
            } else {
                Outcome::Failure
            }
        }
        Ok(_) => Outcome::Success,
        Err(e) => match e.class() {
            ErrorClass::Transient => Outcome::Failure,
            _ => Outcome::Ignored,
        },
    }
}

impl<S> Service<GraphHttpRequest> for BreakerService<S>
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
        let host = request
            .uri()
            .authority()
            .map(|a| a.as_str().to_ascii_lowercase())
            .unwrap_or_default();
        let breaker = self.breakers.get(&host);
        Box::pin(async move {
            let permit = breaker
                .try_acquire_owned()
                .map_err(GraphError::CircuitOpen)?;
            let answer = inner.oneshot(request).await;
            permit.record(outcome(&answer));
            answer
        })
    }
}
