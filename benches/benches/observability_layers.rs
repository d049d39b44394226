//! The correlation + RED layers on a minimal axum handler, against the bare handler.
//!
//! Two drives of the same router:
//! - `in_process`: `Router::oneshot`, no network: the layers' cost is as large a share
//!   as it can ever be;
//! - `loopback_http`: a real HTTP/1.1 request over 127.0.0.1 with a keep-alive client,
//!   the way a service is actually called.
//!
//! A Prometheus recorder is installed, so metric updates are real, and no tracing
//! subscriber, so spans cost what they cost when logging is filtered out.
//!
//! `cargo bench -p keel-benches --bench observability_layers`

#[path = "support/mod.rs"]
mod support;

use std::hint::black_box;

use axum::Router;
use axum::body::Body;
use axum::http::Request;
use axum::routing::get;
use criterion::{Criterion, criterion_group, criterion_main};
use keel_observability::slo::{SloConfig, SloTracker};
use keel_observability::{CorrelationLayer, PrometheusMetrics, RedLayer};
use tower::ServiceExt;

async fn handler() -> &'static str {
    "ok"
}

fn bare() -> Router {
    Router::new().route("/orders/{id}", get(handler))
}

/// Both layers in one `ServiceBuilder`: axum boxes and clones each `Router::layer`
/// call per request, so one call costs less than two.
fn layered(slo: Option<SloTracker>) -> Router {
    let red = match slo {
        Some(slo) => RedLayer::new().with_slo(slo),
        None => RedLayer::new(),
    };
    Router::new().route("/orders/{id}", get(handler)).layer(
        tower::ServiceBuilder::new()
            .layer(CorrelationLayer::new())
            .layer(red),
    )
}

/// The same layers added with two `Router::layer` calls.
fn layered_separately() -> Router {
    Router::new()
        .route("/orders/{id}", get(handler))
        .layer(RedLayer::new())
        .layer(CorrelationLayer::new())
}

fn request() -> Request<Body> {
    Request::get("/orders/42")
        .header("x-correlation-id", "bench-0190a6b2-7c4e")
        .body(Body::empty())
        .expect("valid request")
}

fn in_process(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("layers/in_process");
    let slo = SloTracker::new(SloConfig::standard());
    let correlation_only = bare().layer(CorrelationLayer::new());
    let red_only = bare().layer(RedLayer::new());
    for (name, router) in [
        ("bare", bare()),
        ("correlation", correlation_only),
        ("red", red_only),
        ("correlation+red", layered(None)),
        ("correlation+red/two_layer_calls", layered_separately()),
        ("correlation+red+slo", layered(Some(slo))),
    ] {
        group.bench_function(name, |b| {
            b.to_async(&runtime).iter(|| {
                let router = router.clone();
                async move { black_box(router.oneshot(request()).await.expect("infallible")) }
            });
        });
    }
    group.finish();
}

fn loopback_http(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    // One server and one keep-alive connection for both variants, so they see the same
    // network path; only the layers differ.
    let bare_routes = Router::new().route("/bare/{id}", get(handler));
    let layered_routes = Router::new().route("/layered/{id}", get(handler)).layer(
        tower::ServiceBuilder::new()
            .layer(CorrelationLayer::new())
            .layer(RedLayer::new()),
    );
    let base = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let app = bare_routes.merge(layered_routes);
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}")
    });
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .build()
        .expect("client");
    let mut group = c.benchmark_group("layers/loopback_http");
    group.measurement_time(std::time::Duration::from_secs(8));
    for name in ["bare", "layered"] {
        let url = format!("{base}/{name}/42");
        group.bench_function(
            if name == "bare" {
                "bare"
            } else {
                "correlation+red"
            },
            |b| {
                b.to_async(&runtime).iter(|| {
                    let request = client
                        .get(&url)
                        .header("x-correlation-id", "bench-0190a6b2-7c4e");
                    async move {
                        let response = request.send().await.expect("loopback call");
                        black_box(response.bytes().await.expect("body"))
                    }
                });
            },
        );
    }
    group.finish();
}

fn benches(c: &mut Criterion) {
    let _metrics = PrometheusMetrics::install().expect("first recorder");
    in_process(c);
    loopback_http(c);
}

criterion_group! {
    name = layers;
    config = support::criterion();
    targets = benches
}
criterion_main!(layers);
