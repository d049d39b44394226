//! `/health/ready` served from the result cache, against a bare axum handler that
//! answers 200, both driven in-process with `oneshot`.
//!
//! `cargo bench -p keel-benches --bench health`

#[path = "support/mod.rs"]
mod support;

use std::hint::black_box;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::routing::get;
use criterion::{Criterion, criterion_group, criterion_main};
use keel_health::{CheckResult, HealthRegistry, Registration, check_fn, health_router};
use tower::ServiceExt;

fn request() -> Request<Body> {
    Request::get("/health/ready")
        .body(Body::empty())
        .expect("valid request")
}

fn benches(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let bare: Router = Router::new().route("/health/ready", get(|| async { StatusCode::OK }));
    let mut builder = HealthRegistry::builder()
        .started()
        .cache_ttl(Duration::from_secs(3600));
    for name in ["redis", "postgres", "graph"] {
        builder = builder.register(Registration::new(
            name,
            check_fn(|| async { CheckResult::pass() }),
        ));
    }
    let registry = builder.build();
    let keel: Router = health_router(registry, keel_health::Details::Hidden);
    // Fill the cache once.
    runtime.block_on(async {
        let warm = keel.clone().oneshot(request()).await.expect("infallible");
        assert_eq!(warm.status(), StatusCode::OK);
    });

    let mut group = c.benchmark_group("health/ready");
    group.bench_function("bare_axum_200", |b| {
        b.to_async(&runtime).iter(|| {
            let app = bare.clone();
            async move { black_box(app.oneshot(request()).await.expect("infallible")) }
        });
    });
    group.bench_function("keel_cached_3_checks", |b| {
        b.to_async(&runtime).iter(|| {
            let app = keel.clone();
            async move { black_box(app.oneshot(request()).await.expect("infallible")) }
        });
    });
    group.finish();
}

criterion_group! {
    name = health;
    config = support::criterion();
    targets = benches
}
criterion_main!(health);
