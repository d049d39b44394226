//! The HTTP endpoints.

use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
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
    Router::new()
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .route("/health/startup", get(startup))
        .route("/health", get(all))
        .with_state(endpoint)
}

fn respond(rendered: Rendered) -> Response {
    (
        rendered.status.http_status(),
        [
            (http::header::CONTENT_TYPE, HEALTH_JSON),
            (http::header::CACHE_CONTROL, "no-store"),
        ],
        rendered.body,
    )
        .into_response()
}

async fn live(State(e): State<Endpoint>) -> Response {
    respond(e.registry.render(Some(&Tag::Live), e.details).await)
}

async fn ready(State(e): State<Endpoint>) -> Response {
    respond(e.registry.render(Some(&Tag::Ready), e.details).await)
}

async fn startup(State(e): State<Endpoint>) -> Response {
    respond(e.registry.render(Some(&Tag::Startup), e.details).await)
}

async fn all(State(e): State<Endpoint>) -> Response {
    respond(e.registry.render(None, e.details).await)
}
