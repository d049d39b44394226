//! Reviewer probe (temporary).
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use keel_resilience::pipeline::{Pipeline, PipelineLayer};
use keel_resilience::rate_limit::{Quota, RateLimiter};
use keel_resilience::retry::{Idempotency, RetryConfig};
use tower::{ServiceBuilder, ServiceExt};

#[tokio::test(start_paused = true)]
async fn tokio_time_budget_and_wait() {
    let l = RateLimiter::new("p", Quota::per_second(10).burst(5))
        .unwrap()
        .on_tokio_time();
    for i in 0..5 {
        assert!(l.check().is_ok(), "burst call {i}");
    }
    let e = l.check().unwrap_err();
    println!("6th refused, retry_after = {:?}", e.retry_after());
    tokio::time::advance(Duration::from_millis(99)).await;
    println!("after 99ms: {:?}", l.check().map_err(|e| e.retry_after()));
    tokio::time::advance(Duration::from_millis(1)).await;
    println!("after 100ms: {:?}", l.check().map_err(|e| e.retry_after()));
    // 10 s of paused time through acquire: about 100 more calls.
    let start = tokio::time::Instant::now();
    let real = std::time::Instant::now();
    let mut n = 0;
    while start.elapsed() < Duration::from_secs(10) {
        l.acquire(Duration::from_secs(1)).await.unwrap();
        n += 1;
    }
    println!(
        "acquired {n} in 10 s paused time (real {:?})",
        real.elapsed()
    );
    // Long idle: the budget is capped at the burst.
    tokio::time::advance(Duration::from_secs(3600)).await;
    let mut ok = 0;
    while l.check().is_ok() {
        ok += 1;
    }
    println!("after an hour idle: {ok} calls allowed at once");
}

#[test]
fn tokio_time_outside_runtime() {
    let l = RateLimiter::new("p", Quota::per_second(1))
        .unwrap()
        .on_tokio_time();
    println!(
        "outside runtime: {:?}",
        l.check().map_err(|e| e.retry_after())
    );
    println!(
        "outside runtime 2: {:?}",
        l.check().map_err(|e| e.retry_after())
    );
}

#[derive(Clone)]
struct NotSync {
    calls: Arc<AtomicUsize>,
    _cell: std::cell::Cell<u8>,
}

impl tower::Service<String> for NotSync {
    type Response = &'static str;
    type Error = std::io::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<&'static str, std::io::Error>> + Send>,
    >;
    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn call(&mut self, _: String) -> Self::Future {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            if n < 2 {
                Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "x",
                ))
            } else {
                Ok("ok")
            }
        })
    }
}

#[tokio::test(start_paused = true)]
async fn pipeline_layer_retries_non_sync() {
    let calls = Arc::new(AtomicUsize::new(0));
    let pipeline = Pipeline::builder("p")
        .retry(keel_resilience::retry::Retry::new(
            RetryConfig::builder("p").max_attempts(3).build().unwrap(),
        ))
        .build();
    let svc = ServiceBuilder::new()
        .layer(
            PipelineLayer::new(pipeline.clone()).with_idempotency(|r: &String| {
                if r.starts_with("read") {
                    Idempotency::Idempotent
                } else {
                    Idempotency::NonIdempotent
                }
            }),
        )
        .service(NotSync {
            calls: calls.clone(),
            _cell: Default::default(),
        });
    let r = svc.clone().oneshot("read:1".to_string()).await;
    println!(
        "read: {:?} after {} calls",
        r.map_err(|e| e.to_string()),
        calls.load(Ordering::SeqCst)
    );
    calls.store(0, Ordering::SeqCst);
    let r = svc.oneshot("write:1".to_string()).await;
    println!(
        "write: {:?} after {} calls",
        r.map_err(|e| e.to_string()),
        calls.load(Ordering::SeqCst)
    );
}

#[cfg(feature = "redis")]
#[tokio::test]
async fn redis_connection_errors_and_debug() {
    use keel_resilience::RedisConnection;
    let t = std::time::Instant::now();
    let e = RedisConnection::single("redis://:hunter2@127.0.0.1:1/")
        .await
        .unwrap_err();
    println!("single refused: {e} / {e:?} in {:?}", t.elapsed());
    // A server that accepts and never answers.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut keep = Vec::new();
        for s in listener.incoming() {
            keep.push(s);
        }
    });
    let t = std::time::Instant::now();
    let r = RedisConnection::single(&format!("redis://:hunter2@{addr}/")).await;
    println!(
        "single blackhole: {:?} in {:?}",
        r.as_ref().map(|_| ()).map_err(|e| e.to_string()),
        t.elapsed()
    );
    let t = std::time::Instant::now();
    let r = RedisConnection::cluster([format!("redis://:hunter2@{addr}/")]).await;
    println!(
        "cluster blackhole: {:?} in {:?}",
        r.as_ref().map(|_| ()).map_err(|e| e.to_string()),
        t.elapsed()
    );
}
