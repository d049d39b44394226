//! The breaker, rate-limit and timeout call paths allocate nothing: counted by dhat's heap profiler, which
//! replaces the global allocator in this test binary only.

use std::sync::Arc;
use std::time::Duration;

use keel_resilience::breaker::{
    CircuitBreaker, CircuitBreakerConfig, CircuitBreakerLayer, Outcome, SlidingWindow,
};
use tower::{Service, ServiceBuilder, ServiceExt};

#[global_allocator]
static ALLOCATOR: dhat::Alloc = dhat::Alloc;

/// The blocks allocated while `f` runs, the least of three runs. dhat counts the whole
/// process, and the test harness allocates on its own thread at moments the test does
/// not control: under libtest's threaded runner (`cargo test`, and nextest, which runs
/// the binary without `--test-threads=1`) about one run in thirty counted a few blocks
/// that were not the test's. A call path that allocates does so in every run.
fn blocks_during(mut f: impl FnMut()) -> u64 {
    (0..3)
        .map(|_| {
            let before = dhat::HeapStats::get().total_blocks;
            f();
            dhat::HeapStats::get().total_blocks - before
        })
        .min()
        .unwrap_or_default()
}

#[test]
fn hot_paths_allocate_nothing() {
    let _profiler = dhat::Profiler::builder().testing().build();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    // The counter does see allocations.
    assert_eq!(
        blocks_during(|| drop(std::hint::black_box(Box::new(7u64)))),
        1
    );

    let count = CircuitBreaker::new(CircuitBreakerConfig::standard("count"));
    let time = CircuitBreaker::new(
        CircuitBreakerConfig::builder("time")
            .sliding_window(SlidingWindow::Time {
                duration: Duration::from_secs(60),
            })
            .slow_calls(Duration::from_secs(5), 80.0)
            .failure_rate_threshold(100.0)
            .build()
            .unwrap(),
    );
    for breaker in [&count, &time] {
        // Warm up: fill the window once.
        for _ in 0..200 {
            breaker.try_acquire().unwrap().record(Outcome::Success);
        }
        let blocks = blocks_during(|| {
            for i in 0..10_000 {
                let outcome = if i % 10 == 0 {
                    Outcome::Failure
                } else {
                    Outcome::Success
                };
                breaker.try_acquire().unwrap().record(outcome);
            }
        });
        assert_eq!(blocks, 0, "{} allocated on the call path", breaker.name());
    }

    let blocks = blocks_during(|| {
        runtime.block_on(async {
            for _ in 0..1000 {
                let r = count.call(|| async { Ok::<_, std::io::Error>(1) }).await;
                assert!(r.is_ok());
            }
        });
    });
    assert_eq!(blocks, 0, "CircuitBreaker::call allocated");

    let shared = Arc::new(CircuitBreaker::new(CircuitBreakerConfig::standard("tower")));
    let mut service = ServiceBuilder::new()
        .layer(CircuitBreakerLayer::new(shared))
        .service(tower::service_fn(|()| async {
            Ok::<_, std::io::Error>(())
        }));
    let blocks = blocks_during(|| {
        runtime.block_on(async {
            for _ in 0..1000 {
                service.ready().await.unwrap().call(()).await.unwrap();
            }
        });
    });
    assert_eq!(blocks, 0, "the tower layer allocated");

    let limiter = Arc::new(
        keel_resilience::rate_limit::RateLimiter::new(
            "alloc",
            keel_resilience::rate_limit::Quota::per_second(u32::MAX).burst(u32::MAX),
        )
        .unwrap(),
    );
    let mut limited = ServiceBuilder::new()
        .layer(keel_resilience::rate_limit::RateLimitLayer::new(limiter))
        .layer(keel_resilience::timeout::TimeoutLayer::new(
            Duration::from_secs(5),
        ))
        .service(tower::service_fn(|()| async {
            Ok::<_, std::io::Error>(())
        }));
    runtime.block_on(async { limited.ready().await.unwrap().call(()).await.unwrap() });
    let blocks = blocks_during(|| {
        runtime.block_on(async {
            for _ in 0..1000 {
                limited.ready().await.unwrap().call(()).await.unwrap();
            }
        });
    });
    assert_eq!(blocks, 0, "the rate-limit and timeout layers allocated");
}
