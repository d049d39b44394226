//! The pipeline as a tower layer.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tower_layer::Layer;
use tower_service::Service;

use super::{Pipeline, PipelineError};
use crate::classify::Classify;
use crate::retry::Idempotency;

/// A tower layer that runs every request through a [`Pipeline`]. Any single policy is a
/// layer too: build a pipeline with just that policy.
///
/// Retrying needs a fresh copy of the request and of the service for each attempt, so
/// the request and the service must be `Clone` (and `Send`, as the future is `Send`;
/// neither needs to be `Sync`). Whether a request may be retried is decided per request: by its HTTP
/// method with [`PipelineLayer::new`] (RFC 9110 §9.2.2: GET, HEAD, OPTIONS, TRACE, PUT
/// and DELETE, or any request with an `Idempotency-Key` header; a POST or PATCH without
/// one is never retried), by a function of the request with
/// [`with_idempotency`](PipelineLayer::with_idempotency), or, as an explicit opt-in,
/// for every request with [`every_request_idempotent`](PipelineLayer::every_request_idempotent).
/// Requests that are not HTTP requests (no [`HttpRequest`] impl) must say which.
/// Each call allocates one boxed future, unlike
/// [`CircuitBreakerLayer`](crate::breaker::CircuitBreakerLayer), which allocates nothing.
///
/// ```
/// use std::time::Duration;
/// use keel_resilience::bulkhead::Bulkhead;
/// use keel_resilience::pipeline::Pipeline;
/// use keel_resilience::pipeline::PipelineLayer;
/// use tower::{ServiceBuilder, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let only_a_bulkhead = Pipeline::builder("reports")
///     .bulkhead(Bulkhead::new("reports", 8, Duration::from_millis(100)).unwrap())
///     .build();
/// // Plain strings have no HTTP method: every request is declared safe to repeat.
/// let service = ServiceBuilder::new()
///     .layer(PipelineLayer::every_request_idempotent(only_a_bulkhead))
///     .service_fn(|name: &'static str| async move { Ok::<_, std::io::Error>(name.len()) });
/// assert_eq!(service.oneshot("quarterly").await.unwrap(), 9);
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct PipelineLayer<I = ByMethod> {
    pipeline: Pipeline,
    idempotency: I,
}

impl PipelineLayer {
    /// Decides by each request's HTTP method (see [`ByMethod`]): the safe default.
    #[must_use]
    pub fn new(pipeline: Pipeline) -> Self {
        PipelineLayer {
            pipeline,
            idempotency: ByMethod,
        }
    }
}

impl PipelineLayer<AlwaysIdempotent> {
    /// Treats every request as safe to repeat: an explicit opt-in, for services whose
    /// requests are all reads or carry their own de-duplication.
    #[must_use]
    pub fn every_request_idempotent(pipeline: Pipeline) -> Self {
        PipelineLayer {
            pipeline,
            idempotency: AlwaysIdempotent,
        }
    }
}

/// Every request is safe to repeat: what
/// [`every_request_idempotent`](PipelineLayer::every_request_idempotent) decides.
#[derive(Clone, Copy, Debug, Default)]
pub struct AlwaysIdempotent;

impl<Req> RequestIdempotency<Req> for AlwaysIdempotent {
    fn idempotency(&self, _: &Req) -> Idempotency {
        Idempotency::Idempotent
    }
}

/// What [`ByMethod`] needs to know of a request. Implemented for `http::Request<B>` and
/// `http::request::Parts`; implement it for your own (`Clone`) request type.
pub trait HttpRequest {
    /// The method.
    fn method(&self) -> &http::Method;
    /// The headers.
    fn headers(&self) -> &http::HeaderMap;
}

impl<B> HttpRequest for http::Request<B> {
    fn method(&self) -> &http::Method {
        self.method()
    }
    fn headers(&self) -> &http::HeaderMap {
        self.headers()
    }
}

impl HttpRequest for http::request::Parts {
    fn method(&self) -> &http::Method {
        &self.method
    }
    fn headers(&self) -> &http::HeaderMap {
        &self.headers
    }
}

/// Idempotency by HTTP method (RFC 9110 §9.2.2), or by an `Idempotency-Key` header (the
/// IETF draft that lets a POST be repeated safely): the default of
/// [`PipelineLayer::new`].
///
/// ```
/// use keel_resilience::pipeline::{ByMethod, RequestIdempotency};
/// use keel_resilience::retry::Idempotency;
///
/// let post = http::Request::post("/orders").body(()).unwrap();
/// assert_eq!(ByMethod.idempotency(&post), Idempotency::NonIdempotent);
/// let keyed = http::Request::post("/orders").header("idempotency-key", "8e03978e").body(()).unwrap();
/// assert_eq!(ByMethod.idempotency(&keyed), Idempotency::Idempotent);
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct ByMethod;

impl<Req: HttpRequest> RequestIdempotency<Req> for ByMethod {
    fn idempotency(&self, request: &Req) -> Idempotency {
        if request.headers().contains_key("idempotency-key") {
            return Idempotency::Idempotent;
        }
        Idempotency::of_method(request.method())
    }
}

impl<I> PipelineLayer<I> {
    /// Decides per request whether it may be retried: a [`RequestIdempotency`], such as a
    /// closure over the request (the way
    /// [`CircuitBreakerLayer::with_classifier`](crate::breaker::CircuitBreakerLayer)
    /// takes a closure over the outcome).
    ///
    /// ```
    /// use keel_resilience::pipeline::{Pipeline, PipelineLayer};
    /// use keel_resilience::retry::Idempotency;
    ///
    /// let layer = PipelineLayer::new(Pipeline::builder("jobs").build())
    ///     .with_idempotency(|job: &String| {
    ///         if job.starts_with("read:") { Idempotency::Idempotent } else { Idempotency::NonIdempotent }
    ///     });
    /// # let _ = layer;
    /// ```
    #[must_use]
    pub fn with_idempotency<I2>(self, idempotency: I2) -> PipelineLayer<I2> {
        PipelineLayer {
            pipeline: self.pipeline,
            idempotency,
        }
    }
}

impl<S, I: Clone> Layer<S> for PipelineLayer<I> {
    type Service = PipelineService<S, I>;

    fn layer(&self, inner: S) -> Self::Service {
        PipelineService {
            inner,
            pipeline: self.pipeline.clone(),
            idempotency: self.idempotency.clone(),
        }
    }
}

/// The service made by [`PipelineLayer`].
#[derive(Clone, Debug)]
pub struct PipelineService<S, I> {
    inner: S,
    pipeline: Pipeline,
    idempotency: I,
}

/// Decides whether a request may be retried: [`ByMethod`], [`AlwaysIdempotent`], or any
/// `Fn(&Req) -> Idempotency`.
pub trait RequestIdempotency<Req> {
    /// The request's idempotency.
    fn idempotency(&self, request: &Req) -> Idempotency;
}

impl<Req, F: Fn(&Req) -> Idempotency> RequestIdempotency<Req> for F {
    fn idempotency(&self, request: &Req) -> Idempotency {
        self(request)
    }
}

/// The response future of [`PipelineService`]: boxed, as the pipeline's attempts are an
/// `async` block.
pub type ResponseFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, PipelineError<E>>> + Send>>;

impl<S, I, Req> Service<Req> for PipelineService<S, I>
where
    S: Service<Req> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Classify + Send,
    S::Response: Send,
    Req: Clone + Send + 'static,
    I: RequestIdempotency<Req>,
{
    type Response = S::Response;
    type Error = PipelineError<S::Error>;
    type Future = ResponseFuture<S::Response, S::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Readiness is awaited per attempt, inside the pipeline's bulkhead and timeouts.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let idempotency = self.idempotency.idempotency(&request);
        let pipeline = self.pipeline.clone();
        let inner = self.inner.clone();
        Box::pin(async move {
            pipeline
                .run(idempotency, move || {
                    let mut service = inner.clone();
                    let request = request.clone();
                    async move {
                        std::future::poll_fn(|cx| service.poll_ready(cx)).await?;
                        service.call(request).await
                    }
                })
                .await
        })
    }
}
