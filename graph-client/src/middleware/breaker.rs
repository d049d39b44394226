//! A circuit breaker per host.

use std::time::Duration;

use keel_resilience::breaker::{CircuitBreaker, CircuitBreakerConfig, Outcome};
use keel_resilience::keyed::KeyedRegistry;
use keel_resilience::{Classify, ErrorClass};
use tower::Layer;

use super::{
    GraphFuture, GraphHttpRequest, GraphHttpResponse, GraphService, Middleware, MiddlewareService,
};
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

impl Layer<GraphService> for BreakerLayer {
    type Service = MiddlewareService<Self>;

    fn layer(&self, next: GraphService) -> Self::Service {
        MiddlewareService::new(self.clone(), next)
    }
}

impl Middleware for BreakerLayer {
    fn handle(&self, next: GraphService, request: GraphHttpRequest) -> GraphFuture {
        let inner = next;
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
            let answer = inner.send(request).await;
            permit.record(outcome(&answer));
            answer
        })
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
