//! keel-resilience against its peers, in the same run.
//!
//! - `breaker/closed`: one call through a closed breaker, Keel's permit API against
//!   recloser's `call`, on 1 thread and on 2 threads sharing the breaker;
//! - `breaker/tower`: the same through tower layers (Keel's and tower-resilience's)
//!   around a no-op service, against the bare service;
//! - `retry/success`: a first-attempt success through Keel's retry and backon's;
//! - `rate_limiter/check`: a permitted check, Keel's limiter against raw governor;
//! - `pipeline/success`: a successful call through total timeout → retry → breaker →
//!   bulkhead → attempt timeout, Keel's `PipelineLayer` (and `Pipeline::run`) against the
//!   same stack of tower-resilience layers.
//!
//! `cargo bench -p keel-benches --bench resilience`

#[path = "support/mod.rs"]
mod support;

use std::hint::black_box;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use backon::{ExponentialBuilder, Retryable};
use criterion::{Criterion, criterion_group, criterion_main};
use keel_resilience::breaker::{
    CircuitBreaker, CircuitBreakerConfig, CircuitBreakerLayer, Outcome,
};
use keel_resilience::rate_limit::{Quota, RateLimiter};
use keel_resilience::retry::{Idempotency, Retry, RetryConfig};
use tower::{ServiceBuilder, ServiceExt};

/// Runs `op` `iters` times split over two threads started together; returns the wall
/// time, so the per-iteration figure is the aggregate cost per call.
fn on_two_threads(iters: u64, op: &(dyn Fn() + Sync)) -> Duration {
    let barrier = Barrier::new(2);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..2)
            .map(|_| {
                scope.spawn(|| {
                    barrier.wait();
                    let start = Instant::now();
                    for _ in 0..iters / 2 {
                        op();
                    }
                    start.elapsed()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("bench thread"))
            .max()
            .unwrap_or_default()
    })
}

fn keel_breaker() -> CircuitBreaker {
    CircuitBreaker::new(CircuitBreakerConfig::standard("bench"))
}

fn recloser() -> recloser::Recloser {
    recloser::Recloser::custom()
        .error_rate(0.5)
        .closed_len(100)
        .half_open_len(10)
        .open_wait(Duration::from_secs(30))
        .build()
}

fn breaker_closed(c: &mut Criterion) {
    let keel = keel_breaker();
    let peer = recloser();
    let keel_call = || {
        let permit = keel.try_acquire().expect("closed");
        permit.record(Outcome::Success);
    };
    let peer_call = || {
        black_box(peer.call(|| Ok::<(), ()>(()))).expect("closed");
    };
    let mut group = c.benchmark_group("breaker/closed");
    group.bench_function("1_thread/keel", |b| b.iter(keel_call));
    group.bench_function("1_thread/recloser", |b| b.iter(peer_call));
    group.bench_function("2_threads/keel", |b| {
        b.iter_custom(|iters| on_two_threads(iters, &keel_call));
    });
    group.bench_function("2_threads/recloser", |b| {
        b.iter_custom(|iters| on_two_threads(iters, &peer_call));
    });
    group.finish();
}

fn breaker_tower(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let bare = tower::service_fn(|()| async { Ok::<_, std::io::Error>(()) });
    let keel = ServiceBuilder::new()
        .layer(CircuitBreakerLayer::new(
            std::sync::Arc::new(keel_breaker()),
        ))
        .service(bare);
    let peer_layer = tower_resilience::circuitbreaker::CircuitBreakerLayer::builder()
        .failure_rate_threshold(0.5)
        .sliding_window_size(100)
        .build()
        .expect("valid config");
    let peer = ServiceBuilder::new().layer(peer_layer).service(bare);
    let mut group = c.benchmark_group("breaker/tower");
    group.bench_function("bare", |b| {
        b.to_async(&runtime).iter(|| bare.oneshot(()));
    });
    group.bench_function("keel", |b| {
        b.to_async(&runtime).iter(|| keel.clone().oneshot(()));
    });
    group.bench_function("tower_resilience", |b| {
        b.to_async(&runtime).iter(|| peer.clone().oneshot(()));
    });
    group.finish();
}

fn retry_success(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let keel = Retry::new(RetryConfig::standard("bench"));
    let mut group = c.benchmark_group("retry/success");
    group.bench_function("keel", |b| {
        b.to_async(&runtime).iter(|| {
            keel.run(Idempotency::Idempotent, |_| async {
                Ok::<_, std::io::Error>(1)
            })
        });
    });
    group.bench_function("backon", |b| {
        b.to_async(&runtime).iter(|| {
            (|| async { Ok::<_, std::io::Error>(1) }).retry(ExponentialBuilder::default())
        });
    });
    group.finish();
}

fn rate_limiter(c: &mut Criterion) {
    // A quota no benchmark can exhaust, so every check is a permitted one.
    let keel = RateLimiter::new("bench", Quota::per_second(u32::MAX).burst(u32::MAX)).unwrap();
    let raw = governor::RateLimiter::direct(
        governor::Quota::per_second(std::num::NonZeroU32::MAX)
            .allow_burst(std::num::NonZeroU32::MAX),
    );
    let mut group = c.benchmark_group("rate_limiter/check");
    group.bench_function("governor", |b| {
        b.iter(|| black_box(raw.check()).expect("permitted"));
    });
    group.bench_function("keel", |b| {
        b.iter(|| black_box(keel.check()).expect("permitted"));
    });
    group.finish();
}

/// The work's error in the pipeline benches (tower-resilience's retry needs `Clone`).
#[derive(Debug, Clone)]
struct BenchError;

impl std::fmt::Display for BenchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("bench error")
    }
}

impl std::error::Error for BenchError {}

impl keel_resilience::Classify for BenchError {
    fn class(&self) -> keel_resilience::ErrorClass {
        keel_resilience::ErrorClass::Transient
    }
}

fn pipeline(c: &mut Criterion) {
    use keel_resilience::bulkhead::Bulkhead;
    use keel_resilience::pipeline::Pipeline;
    use keel_resilience::pipeline::PipelineLayer;
    use tower_resilience::bulkhead::BulkheadLayer;
    use tower_resilience::retry::RetryLayer;
    use tower_resilience::timelimiter::TimeLimiterLayer;

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let work = tower::service_fn(|()| async { Ok::<_, BenchError>(()) });

    let keel_pipeline = Pipeline::builder("bench")
        .total_timeout(Duration::from_secs(30))
        .retry(Retry::new(RetryConfig::standard("bench")))
        .circuit_breaker(std::sync::Arc::new(keel_breaker()))
        .bulkhead(Bulkhead::new("bench", 100, Duration::from_millis(100)).unwrap())
        .attempt_timeout(Duration::from_secs(10))
        .build();
    let keel_layered = ServiceBuilder::new()
        .layer(PipelineLayer::every_request_idempotent(
            keel_pipeline.clone(),
        ))
        .service(work);

    let peer = ServiceBuilder::new()
        .layer(
            TimeLimiterLayer::builder()
                .timeout_duration(Duration::from_secs(30))
                .build(),
        )
        .layer(
            RetryLayer::builder()
                .max_attempts(3)
                .exponential_backoff(Duration::from_millis(200))
                .build(),
        )
        .layer(
            tower_resilience::circuitbreaker::CircuitBreakerLayer::builder()
                .failure_rate_threshold(0.5)
                .sliding_window_size(100)
                .build()
                .expect("valid config"),
        )
        .layer(
            BulkheadLayer::builder()
                .max_concurrent_calls(100)
                .build()
                .expect("valid config"),
        )
        .layer(
            TimeLimiterLayer::builder()
                .timeout_duration(Duration::from_secs(10))
                .build(),
        )
        .service(work);

    let mut group = c.benchmark_group("pipeline/success");
    group.bench_function("keel_pipeline_run", |b| {
        b.to_async(&runtime).iter(|| {
            keel_pipeline.run(Idempotency::Idempotent, || async {
                Ok::<_, BenchError>(())
            })
        });
    });
    group.bench_function("keel_pipeline_layer", |b| {
        b.to_async(&runtime)
            .iter(|| keel_layered.clone().oneshot(()));
    });
    group.bench_function("tower_resilience_stack", |b| {
        b.to_async(&runtime).iter(|| peer.clone().oneshot(()));
    });
    group.finish();
}

criterion_group! {
    name = resilience;
    config = support::criterion();
    targets = breaker_closed, breaker_tower, retry_success, rate_limiter, pipeline
}
criterion_main!(resilience);
