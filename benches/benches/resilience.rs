//! keel-resilience against its peers, in the same run.
//!
//! - `breaker/closed`: one call through a closed breaker, Keel's permit API against
//!   recloser's `call`, on 1 thread and on 2 threads sharing the breaker;
//! - `breaker/tower`: the same through tower layers (Keel's and tower-resilience's)
//!   around a no-op service, against the bare service;
//! - `retry/success`: a first-attempt success through Keel's retry and backon's;
//! - `rate_limiter/check`: a permitted check, Keel's limiter against raw governor.
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
use keel_resilience::rate_limit::{RateLimiter, quota};
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
    let keel = RateLimiter::new("bench", quota(u32::MAX, u32::MAX));
    let raw = governor::RateLimiter::direct(quota(u32::MAX, u32::MAX));
    let mut group = c.benchmark_group("rate_limiter/check");
    group.bench_function("governor", |b| {
        b.iter(|| black_box(raw.check()).expect("permitted"));
    });
    group.bench_function("keel", |b| {
        b.iter(|| black_box(keel.check()).expect("permitted"));
    });
    group.finish();
}

criterion_group! {
    name = resilience;
    config = support::criterion();
    targets = breaker_closed, breaker_tower, retry_success, rate_limiter
}
criterion_main!(resilience);
