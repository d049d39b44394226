//! The problem+json body has the RFC 9457 shape and the right status for each code
//! family, carries the correlation id, and never leaks internal details.

#[path = "../support/mod.rs"]
mod support;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::routing::get;
use http_body_util::BodyExt;
use keel_observability::{
    ApiError, CorrelationLayer, ErrorCode, ErrorFamily, IntoProblem, JsonLayer,
};
use serde_json::Value;
use tower::ServiceExt;
use tracing_subscriber::layer::SubscriberExt;

#[derive(Debug, thiserror::Error)]
enum ServiceError {
    #[error("order {0} not found")]
    NotFound(u64),
    #[error("database at db-7.internal:5432 refused the query")]
    Database,
    #[error("upstream throttled")]
    Throttled,
}

impl IntoProblem for ServiceError {
    fn error_code(&self) -> ErrorCode {
        match self {
            ServiceError::NotFound(_) => ErrorCode::RES_NOT_FOUND,
            ServiceError::Database => ErrorCode::SYS_INTERNAL,
            ServiceError::Throttled => ErrorCode::RATE_LIMITED,
        }
    }
    fn public_detail(&self) -> Option<String> {
        match self {
            ServiceError::NotFound(id) => Some(format!("No order {id}.")),
            _ => None,
        }
    }
    fn retry_after(&self) -> Option<u64> {
        matches!(self, ServiceError::Throttled).then_some(30)
    }
}

fn app() -> Router {
    Router::new()
        .route(
            "/missing",
            get(|| async { Err::<(), _>(ApiError(ServiceError::NotFound(42))) }),
        )
        .route(
            "/db",
            get(|| async { Err::<(), _>(ApiError(ServiceError::Database)) }),
        )
        .route(
            "/throttled",
            get(|| async { Err::<(), _>(ApiError(ServiceError::Throttled)) }),
        )
        .layer(CorrelationLayer::new())
}

async fn call(path: &str) -> (StatusCode, axum::http::HeaderMap, Value) {
    let request = Request::get(path)
        .header("x-correlation-id", "problem-1")
        .body(Body::empty())
        .unwrap();
    let response = app().oneshot(request).await.unwrap();
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    (
        parts.status,
        parts.headers,
        serde_json::from_slice(&bytes).unwrap(),
    )
}

/// RFC 9457 §3.1: the standard members and their JSON types.
fn assert_rfc9457_shape(body: &Value, status: StatusCode) {
    assert!(body["type"].is_string(), "type is a URI reference string");
    assert!(body["title"].is_string());
    assert_eq!(
        body["status"],
        status.as_u16(),
        "status member matches the HTTP status"
    );
    if let Some(detail) = body.get("detail") {
        assert!(detail.is_string());
    }
    assert!(body["code"].is_string());
}

#[tokio::test(flavor = "current_thread")]
async fn problems_have_the_rfc_shape_status_and_correlation_id() {
    let (status, headers, body) = call("/missing").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(headers["content-type"], "application/problem+json");
    assert_rfc9457_shape(&body, status);
    assert_eq!(body["code"], "RES_NOT_FOUND");
    assert_eq!(body["detail"], "No order 42.");
    assert_eq!(body["correlation_id"], "problem-1");
    assert_eq!(headers["x-correlation-id"], "problem-1");

    let (status, headers, body) = call("/throttled").await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(headers["retry-after"], "30");
    assert_eq!(body["retry_after"], 30);
    assert_rfc9457_shape(&body, status);
}

#[tokio::test(flavor = "current_thread")]
async fn internal_details_go_to_the_logs_not_the_body() {
    let captured = support::Captured::default();
    let subscriber = tracing_subscriber::registry().with(JsonLayer::new(captured.clone()));
    let _default = tracing::subscriber::set_default(subscriber);

    let (status, _, body) = call("/db").await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_rfc9457_shape(&body, status);
    let text = body.to_string();
    assert!(
        !text.contains("db-7.internal") && !text.contains("5432"),
        "{text}"
    );
    assert_eq!(body["title"], ErrorCode::SYS_INTERNAL.title());
    assert!(body.get("detail").is_none());

    let logged = captured.json_lines();
    let line = logged
        .iter()
        .find(|l| l["message"] == "request failed")
        .expect("error logged");
    assert_eq!(line["code"], "SYS_INTERNAL");
    assert_eq!(line["correlation_id"], "problem-1");
    assert!(
        line["error"]
            .as_str()
            .unwrap()
            .contains("refused the query")
    );
}

#[test]
fn each_family_maps_to_its_status_class() {
    let families = [
        (ErrorFamily::Auth, 401),
        (ErrorFamily::Validation, 400),
        (ErrorFamily::Resource, 404),
        (ErrorFamily::System, 500),
        (ErrorFamily::External, 502),
        (ErrorFamily::RateLimit, 429),
        (ErrorFamily::Business, 422),
    ];
    for (family, status) in families {
        let code = ErrorCode::new(family, "CUSTOM", "A custom problem.");
        let response = keel_observability::Problem::new(code).to_response();
        assert_eq!(response.status().as_u16(), status, "{family:?}");
        let body: Value = serde_json::from_slice(response.body()).unwrap();
        assert_eq!(body["code"], format!("{}CUSTOM", family.prefix()));
        assert_eq!(body["type"], "about:blank");
        assert!(body.get("correlation_id").is_none(), "no scope, no id");
        assert_eq!(
            family.is_retryable(),
            matches!(status, 429 | 500 | 502),
            "{family:?}"
        );
    }
}
