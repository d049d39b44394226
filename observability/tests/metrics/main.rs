//! RED metrics through the Prometheus endpoint: bucketed histograms, bounded labels,
//! SLO gauges, and output that passes `promtool check metrics`.

#[path = "../support/mod.rs"]
mod support;

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::routing::get;
use http_body_util::BodyExt;
use keel_observability::slo::{SloConfig, SloTracker};
use keel_observability::{PrometheusMetrics, RedLayer};
use tower::ServiceExt;

/// The recorder is global: one per test binary, shared by its tests, which run side by
/// side on `cargo test`'s threads. So each test requests routes of its own and reads only
/// their series: `/users/{id}`, `/fail`, `/slow` and unmatched paths belong to
/// `red_metrics_are_exported_with_buckets_and_bounded_labels`, `/orders/{id}` to
/// `slo_snapshot_is_readable_in_code`.
fn metrics() -> &'static (PrometheusMetrics, SloTracker) {
    static METRICS: OnceLock<(PrometheusMetrics, SloTracker)> = OnceLock::new();
    METRICS.get_or_init(|| {
        let slo = SloTracker::new(SloConfig::standard());
        let metrics = PrometheusMetrics::install()
            .expect("first install")
            .with_slo(slo.clone());
        (metrics, slo)
    })
}

fn app() -> Router {
    let (metrics, slo) = metrics();
    Router::new()
        .route("/users/{id}", get(|| async { "user" }))
        .route("/orders/{id}", get(|| async { "order" }))
        .route(
            "/fail",
            get(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "boom") }),
        )
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(30)).await;
                "slow"
            }),
        )
        // axum layers the fallback only when one is set: set it so 404s are counted.
        .fallback(|| async { StatusCode::NOT_FOUND })
        .layer(RedLayer::new().with_slo(slo.clone()))
        .merge(metrics.router())
}

async fn get_status(app: &Router, path: &str) -> StatusCode {
    let request = Request::get(path).body(Body::empty()).unwrap();
    app.clone().oneshot(request).await.unwrap().status()
}

fn line_value(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn red_metrics_are_exported_with_buckets_and_bounded_labels() {
    let app = app();
    for id in 0..5 {
        assert_eq!(
            get_status(&app, &format!("/users/{id}")).await,
            StatusCode::OK
        );
    }
    assert_eq!(
        get_status(&app, "/fail").await,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    assert_eq!(get_status(&app, "/slow").await, StatusCode::OK);
    for path in ["/wp-admin", "/.env", "/random/123"] {
        assert_eq!(get_status(&app, path).await, StatusCode::NOT_FOUND);
    }
    let request = Request::builder()
        .method("BREW")
        .uri("/users/1")
        .body(Body::empty())
        .unwrap();
    let _ = app.clone().oneshot(request).await.unwrap();

    let response = app
        .clone()
        .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let text = String::from_utf8(
        response
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap();

    let ok = r#"http_server_requests_total{method="GET",route="/users/{id}",status="200"}"#;
    assert_eq!(line_value(&text, ok), Some(5.0), "{text}");
    let failed = r#"http_server_errors_total{method="GET",route="/fail",status="500"}"#;
    assert_eq!(line_value(&text, failed), Some(1.0), "{text}");
    // Raw paths never become labels.
    let unmatched = r#"http_server_requests_total{method="GET",route="<unmatched>",status="404"}"#;
    assert_eq!(line_value(&text, unmatched), Some(3.0), "{text}");
    assert!(!text.contains("wp-admin") && !text.contains(".env"));
    assert!(
        text.contains(r#"method="_OTHER""#),
        "unknown methods are bucketed"
    );
    // Histograms, not summaries.
    let bucket = r#"http_server_request_duration_seconds_bucket{method="GET",route="/slow",status="200",le="0.025"}"#;
    assert_eq!(line_value(&text, bucket), Some(0.0), "{text}");
    let bucket = r#"http_server_request_duration_seconds_bucket{method="GET",route="/slow",status="200",le="0.05"}"#;
    assert_eq!(line_value(&text, bucket), Some(1.0), "{text}");
    assert!(!text.contains("quantile="), "no summaries");
    assert!(text.contains("# TYPE http_server_request_duration_seconds histogram"));
    // Nothing in flight once the requests are done.
    let active = r#"http_server_active_requests{method="GET",route="/users/{id}"}"#;
    assert_eq!(line_value(&text, active), Some(0.0), "{text}");
    // SLO gauges are refreshed at scrape time.
    let availability = r#"slo_availability_ratio{route="/fail"}"#;
    assert_eq!(line_value(&text, availability), Some(0.0), "{text}");
    let p99 = r#"slo_latency_seconds{route="/slow",percentile="99"}"#;
    assert!(line_value(&text, p99).is_some_and(|v| v >= 0.03), "{text}");

    promtool_check(&text);
}

fn promtool_check(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool not found: install the Debian package `prometheus` (apt-get install -y prometheus)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "promtool check metrics failed:\n{}{}\n---\n{text}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test]
async fn slo_snapshot_is_readable_in_code() {
    let app = app();
    for _ in 0..20 {
        assert_eq!(get_status(&app, "/orders/7").await, StatusCode::OK);
    }
    let (_, slo) = metrics();
    let snapshot = slo.snapshot("/orders/{id}").expect("route tracked");
    assert_eq!(snapshot.requests, 20);
    assert_eq!(snapshot.failures, 0);
    assert!((snapshot.availability - 1.0).abs() < f64::EPSILON);
    assert!(snapshot.p50 <= snapshot.p95 && snapshot.p95 <= snapshot.p99);
}

#[test]
fn a_second_install_is_refused() {
    let _ = metrics();
    let error = PrometheusMetrics::install().unwrap_err();
    assert!(error.to_string().contains("already installed"), "{error}");
}
