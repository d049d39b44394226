//! The HTTP endpoints.

use axum::Router;
use axum::response::Response;
use axum::routing::get;

use crate::registry::{HealthRegistry, Rendered, Tag};

/// The media type of the draft's health responses.
pub const HEALTH_JSON: &str = "application/health+json";

#[derive(Clone)]
struct Endpoint {
    registry: HealthRegistry,
    details: bool,
}

/// How much the health endpoints tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Details {
    /// Every check's status, output and observed values: for endpoints only operators
    /// and the orchestrator reach.
    Shown,
    /// The overall status only: for endpoints the public can reach.
    Hidden,
}

/// An axum router with the four probes:
///
/// | path | runs | answers |
/// |---|---|---|
/// | `/health/live` | checks tagged `Live` (none by default) | 200 unless one fails |
/// | `/health/ready` | checks tagged `Ready`; fails at once while draining | 200 / 503 |
/// | `/health/startup` | fails until startup is marked done, then `Startup` checks | 200 / 503 |
/// | `/health` | every check, with details unless turned off | 200 / 503 |
///
/// Bodies are `application/health+json` with `Cache-Control: no-store`; `pass` and
/// `warn` answer 200, `fail` 503. Pass [`Details::Hidden`] when the endpoints are
/// public: only the status is shown.
///
/// ```
/// use keel_health::{health_router, Details, HealthRegistry};
///
/// let health = HealthRegistry::builder().started().build();
/// let app: axum::Router = axum::Router::new().merge(health_router(health, Details::Shown));
/// ```
pub fn health_router<S: Clone + Send + Sync + 'static>(
    registry: HealthRegistry,
    details: Details,
) -> Router<S> {
    let endpoint = Endpoint {
        registry,
        details: details == Details::Shown,
    };
    // Handlers capture the endpoint instead of extracting it as `State`: an extractor
    // splits the request into its parts and moves them, on every probe.
    let route = |tag: Option<&'static Tag>| {
        let endpoint = endpoint.clone();
        get(move || async move { respond(endpoint.registry.render(tag, endpoint.details).await) })
    };
    Router::<()>::new()
        .route("/health/live", route(Some(&Tag::Live)))
        .route("/health/ready", route(Some(&Tag::Ready)))
        .route("/health/startup", route(Some(&Tag::Startup)))
        .route("/health", route(None))
        // Turns the handlers into routes now rather than on every request.
        .with_state(())
}

fn respond(rendered: Rendered) -> Response {
    // Built from the parts rendered with the body, instead of an `IntoResponse` tuple
    // that parses and copies each header value and hashes each header on every probe.
    let mut response = Response::new(axum::body::Body::from(rendered.body));
    *response.status_mut() = rendered.status.http_status();
    *response.headers_mut() = rendered.headers;
    response
}
