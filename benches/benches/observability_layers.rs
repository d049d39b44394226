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

fn layered(slo: Option<SloTracker>) -> Router {
    let red = match slo {
        Some(slo) => RedLayer::new().with_slo(slo),
        None => RedLayer::new(),
    };
    Router::new()
        .route("/orders/{id}", get(handler))
        .layer(red)
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
    for (name, router) in [
        ("bare", bare()),
        ("correlation+red", layered(None)),
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
    let serve = |router: Router| {
        runtime.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let addr = listener.local_addr().expect("addr");
            tokio::spawn(async move { axum::serve(listener, router).await });
            format!("http://{addr}/orders/42")
        })
    };
    let bare_url = serve(bare());
    let layered_url = serve(layered(None));
    let client = reqwest::Client::new();
    let mut group = c.benchmark_group("layers/loopback_http");
    for (name, url) in [("bare", bare_url), ("correlation+red", layered_url)] {
        group.bench_function(name, |b| {
            b.to_async(&runtime).iter(|| {
                let request = client
                    .get(&url)
                    .header("x-correlation-id", "bench-0190a6b2-7c4e");
                async move {
                    let response = request.send().await.expect("loopback call");
                    black_box(response.bytes().await.expect("body"))
                }
            });
        });
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
