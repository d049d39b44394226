//! The composed pipeline, hedging and fallback, under tokio's paused clock.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use keel_resilience::breaker::{CircuitBreaker, CircuitBreakerConfig, OpenWait, State};
use keel_resilience::bulkhead::Bulkhead;
use keel_resilience::fallback::{on_retryable, with_fallback};
use keel_resilience::hedge::Hedge;
use keel_resilience::pipeline::{Pipeline, PipelineError};
use keel_resilience::rate_limit::{Quota, RateLimiter};
use keel_resilience::retry::{Backoff, Idempotency, Retry, RetryConfig};
use keel_resilience::{Classify, ErrorClass};
use tokio::time::Instant;

#[derive(Debug, PartialEq)]
enum Fault {
    Down,
    BadInput,
}

impl Classify for Fault {
    fn class(&self) -> ErrorClass {
        match self {
            Fault::Down => ErrorClass::Transient,
            Fault::BadInput => ErrorClass::Permanent,
        }
    }
}

/// Work that never answers in time.
async fn hangs() -> Result<(), Fault> {
    tokio::time::sleep(Duration::from_secs(60)).await;
    Ok(())
}

fn retry(attempts: u32) -> Retry {
    Retry::new(
        RetryConfig::builder("t")
            .max_attempts(attempts)
            .backoff(Backoff::Constant(Duration::from_millis(100)))
            .without_budget()
            .build()
            .unwrap(),
    )
}

fn breaker(minimum_calls: u32) -> Arc<CircuitBreaker> {
    Arc::new(CircuitBreaker::new(
        CircuitBreakerConfig::builder("t")
            .minimum_calls(minimum_calls)
            .open_wait(OpenWait::Fixed(Duration::from_secs(30)))
            .build()
            .unwrap(),
    ))
}

#[tokio::test(start_paused = true)]
async fn a_flaky_dependency_is_retried_and_every_attempt_is_recorded() {
    let b = breaker(100);
    let pipeline = Pipeline::builder("t")
        .retry(retry(3))
        .circuit_breaker(b.clone())
        .build();
    let calls = AtomicU32::new(0);
    let value = pipeline
        .run(Idempotency::Idempotent, || {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            async move { if n < 2 { Err(Fault::Down) } else { Ok(n) } }
        })
        .await
        .unwrap();
    assert_eq!(value, 2);
    let m = b.metrics();
    assert_eq!((m.calls, m.failed_calls), (3, 2));
}

#[tokio::test(start_paused = true)]
async fn attempt_timeouts_are_retried_and_count_as_breaker_failures() {
    let b = breaker(100);
    let pipeline = Pipeline::builder("t")
        .retry(retry(3))
        .circuit_breaker(b.clone())
        .attempt_timeout(Duration::from_secs(1))
        .build();
    let start = Instant::now();
    let error = pipeline
        .run(Idempotency::Idempotent, hangs)
        .await
        .unwrap_err();
    assert!(
        matches!(error, PipelineError::AttemptTimeout(_)),
        "{error:?}"
    );
    assert_eq!(
        start.elapsed(),
        Duration::from_millis(3200),
        "3 × 1 s + 2 × 100 ms"
    );
    assert_eq!(b.metrics().failed_calls, 3);
}

#[tokio::test(start_paused = true)]
async fn the_total_timeout_bounds_retries_and_their_delays() {
    let pipeline = Pipeline::builder("t")
        .total_timeout(Duration::from_millis(1500))
        .retry(retry(10))
        .attempt_timeout(Duration::from_secs(1))
        .build();
    let start = Instant::now();
    let error = pipeline
        .run(Idempotency::Idempotent, hangs)
        .await
        .unwrap_err();
    assert!(matches!(error, PipelineError::TotalTimeout(_)), "{error:?}");
    assert_eq!(start.elapsed(), Duration::from_millis(1500));
    assert_eq!(error.policy(), "total_timeout");
}

#[tokio::test(start_paused = true)]
async fn the_rate_limit_is_taken_once_per_call_not_per_attempt() {
    let pipeline = Pipeline::builder("t")
        .rate_limit(Arc::new(
            RateLimiter::new("t", Quota::per_second(1).burst(1)).unwrap(),
        ))
        .retry(retry(3))
        .build();
    let calls = AtomicU32::new(0);
    let first = pipeline
        .run(Idempotency::Idempotent, || {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            async move { if n < 2 { Err(Fault::Down) } else { Ok(()) } }
        })
        .await;
    assert!(first.is_ok(), "three attempts used one permit");
    let second = pipeline
        .run(Idempotency::Idempotent, || async { Ok::<_, Fault>(()) })
        .await;
    assert!(matches!(second, Err(PipelineError::RateLimited(_))));
}

#[tokio::test(start_paused = true)]
async fn an_open_breaker_stops_calls_before_the_work_runs() {
    let b = breaker(2);
    let pipeline = Pipeline::builder("t")
        .retry(Retry::new(
            RetryConfig::builder("t")
                .max_attempts(5)
                .max_elapsed(Duration::from_secs(5))
                .without_budget()
                .build()
                .unwrap(),
        ))
        .circuit_breaker(b.clone())
        .build();
    let runs = AtomicU32::new(0);
    let error = pipeline
        .run(Idempotency::Idempotent, || {
            runs.fetch_add(1, Ordering::SeqCst);
            async { Err::<(), _>(Fault::Down) }
        })
        .await
        .unwrap_err();
    // Two failures open the breaker; the third attempt is refused, and the 30 s wait
    // does not fit in the 5 s the retry may take, so it stops there.
    assert!(matches!(error, PipelineError::CircuitOpen(_)), "{error:?}");
    assert_eq!(b.state(), State::Open);
    assert_eq!(
        runs.load(Ordering::SeqCst),
        3,
        "closures built, but the third never ran"
    );
}

#[tokio::test(start_paused = true)]
async fn permanent_errors_and_full_bulkheads_do_not_trip_the_breaker() {
    let b = breaker(1);
    let pipeline = Pipeline::builder("t")
        .retry(retry(3))
        .circuit_breaker(b.clone())
        .bulkhead(Bulkhead::new("t", 1, Duration::ZERO).unwrap())
        .build();
    let error = pipeline
        .run(Idempotency::Idempotent, || async {
            Err::<(), _>(Fault::BadInput)
        })
        .await
        .unwrap_err();
    assert!(matches!(error, PipelineError::Inner(Fault::BadInput)));
    assert_eq!(b.state(), State::Closed);

    let slow = {
        let pipeline = pipeline.clone();
        tokio::spawn(async move {
            pipeline
                .run(Idempotency::Idempotent, || async {
                    tokio::time::sleep(Duration::from_secs(10)).await;
                    Ok::<_, Fault>(())
                })
                .await
        })
    };
    tokio::task::yield_now().await;
    let refused = pipeline
        .run(Idempotency::Idempotent, || async { Ok::<_, Fault>(()) })
        .await;
    assert!(
        matches!(refused, Err(PipelineError::BulkheadFull(_))),
        "{refused:?}"
    );
    assert_eq!(
        b.state(),
        State::Closed,
        "a full bulkhead is not the dependency's fault"
    );
    assert!(slow.await.unwrap().is_ok());
}

#[tokio::test(start_paused = true)]
async fn hedging_takes_the_first_success_and_cancels_the_rest() {
    let cancelled = Arc::new(AtomicBool::new(false));
    struct Flag(Arc<AtomicBool>);
    impl Drop for Flag {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    let hedge = Hedge::new(Duration::from_millis(100), 3);
    let start = Instant::now();
    let winner = hedge
        .run(Idempotency::Idempotent, |n| {
            let flag = Flag(cancelled.clone());
            async move {
                let _flag = flag;
                let delay = if n == 1 { 10_000 } else { 50 };
                tokio::time::sleep(Duration::from_millis(delay)).await;
                Ok::<_, Fault>(n)
            }
        })
        .await
        .unwrap();
    assert_eq!(winner, 2);
    assert_eq!(
        start.elapsed(),
        Duration::from_millis(150),
        "hedged at 100 ms, answered 50 ms later"
    );
    assert!(
        cancelled.load(Ordering::SeqCst),
        "the stuck attempt was dropped"
    );
}

#[derive(Debug, PartialEq)]
enum HedgeFault {
    Down,
    BadInput,
    Throttled,
}

impl Classify for HedgeFault {
    fn class(&self) -> ErrorClass {
        match self {
            HedgeFault::Down => ErrorClass::Transient,
            HedgeFault::BadInput => ErrorClass::Permanent,
            HedgeFault::Throttled => ErrorClass::Throttled {
                retry_after: Some(Duration::from_secs(30)),
            },
        }
    }
}

/// Runs one hedged call whose attempts fail with `fault` after 10 ms; how many
/// attempts it made and how long it took.
async fn hedged_failures(hedge: &Hedge, fault: fn() -> HedgeFault) -> (u32, Duration, HedgeFault) {
    let start = Instant::now();
    let tried = AtomicU32::new(0);
    let error = hedge
        .run(Idempotency::Idempotent, |_| {
            tried.fetch_add(1, Ordering::SeqCst);
            async move {
                tokio::time::sleep(Duration::from_millis(10)).await;
                Err::<(), _>(fault())
            }
        })
        .await
        .unwrap_err();
    (tried.load(Ordering::SeqCst), start.elapsed(), error)
}

#[tokio::test(start_paused = true)]
async fn hedging_never_acts_on_permanent_or_throttled_errors() {
    // Before: a permanent 400-style error made 4 attempts in 0 ns, a 429 with
    // Retry-After: 30 too.
    let eager = Hedge::new(Duration::from_secs(1), 4).on_transient_errors();
    let (tried, took, error) = hedged_failures(&eager, || HedgeFault::BadInput).await;
    assert_eq!(
        (tried, error),
        (1, HedgeFault::BadInput),
        "no hedge after a permanent error"
    );
    assert_eq!(took, Duration::from_millis(10), "it ends the call at once");
    let (tried, _, error) = hedged_failures(&eager, || HedgeFault::Throttled).await;
    assert_eq!(
        (tried, error),
        (1, HedgeFault::Throttled),
        "nor after a throttled one"
    );
    // Hedges already running when a permanent error comes are cancelled with the call.
    let quick = Hedge::new(Duration::from_millis(1), 4);
    let (tried, took, _) = hedged_failures(&quick, || HedgeFault::BadInput).await;
    assert_eq!((tried, took), (4, Duration::from_millis(10)));

    // Transient errors start the next attempt only when asked.
    let slow_only = Hedge::new(Duration::from_secs(10), 3);
    let (tried, _, error) = hedged_failures(&slow_only, || HedgeFault::Down).await;
    assert_eq!((tried, error), (1, HedgeFault::Down));
    let on_errors = Hedge::new(Duration::from_secs(10), 3).on_transient_errors();
    let (tried, took, _) = hedged_failures(&on_errors, || HedgeFault::Down).await;
    assert_eq!((tried, took), (3, Duration::from_millis(30)));
}

#[tokio::test(start_paused = true)]
async fn hedging_runs_non_idempotent_work_once() {
    let hedge = Hedge::new(Duration::from_millis(10), 5).without_budget();
    let tried = AtomicU32::new(0);
    let answer = hedge
        .run(Idempotency::NonIdempotent, |n| {
            tried.fetch_add(1, Ordering::SeqCst);
            async move {
                tokio::time::sleep(Duration::from_secs(1)).await;
                Ok::<_, HedgeFault>(n)
            }
        })
        .await;
    assert_eq!((answer, tried.load(Ordering::SeqCst)), (Ok(1), 1));
}

#[tokio::test(start_paused = true)]
async fn hedging_a_uniformly_slow_dependency_stays_within_its_budget() {
    // Before: 300 attempts for 100 calls. Every attempt takes 200 ms; hedges start at 50 ms.
    let hedge = Hedge::new(Duration::from_millis(50), 3);
    let tried = AtomicU32::new(0);
    for _ in 0..100 {
        hedge
            .run(Idempotency::Idempotent, |_| {
                tried.fetch_add(1, Ordering::SeqCst);
                async {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    Ok::<_, HedgeFault>(())
                }
            })
            .await
            .unwrap();
    }
    let tried = tried.load(Ordering::SeqCst);
    // 100 calls over ~20 s: 10% of them plus the reserve of 1 a second over the window.
    assert!(
        (100..=135).contains(&tried),
        "{tried} attempts for 100 calls"
    );
}

#[tokio::test(start_paused = true)]
async fn an_open_breaker_makes_500_concurrent_callers_fail_fast() {
    // Before: the standard pipeline classed its own breaker's refusal as throttled and
    // slept through the open period (a call 5 s after opening returned after 25.4 s).
    let pipeline = Arc::new(Pipeline::standard("down"));
    let breaker = pipeline.circuit_breaker().unwrap().clone();
    breaker.force_open();
    breaker.reset();
    for _ in 0..20 {
        breaker
            .try_acquire()
            .unwrap()
            .record(keel_resilience::breaker::Outcome::Failure);
    }
    assert_eq!(breaker.state(), State::Open);
    tokio::time::advance(Duration::from_secs(5)).await;
    let start = Instant::now();
    let mut callers = Vec::new();
    for _ in 0..500 {
        let pipeline = pipeline.clone();
        callers.push(tokio::spawn(async move {
            pipeline
                .run(Idempotency::Idempotent, || async { Ok::<_, Fault>(()) })
                .await
        }));
    }
    for caller in callers {
        let error = caller.await.unwrap().unwrap_err();
        let PipelineError::CircuitOpen(refused) = &error else {
            panic!("{error:?}")
        };
        assert_eq!(
            refused.retry_after(),
            Some(Duration::from_secs(25)),
            "for the caller to use"
        );
    }
    assert_eq!(start.elapsed(), Duration::ZERO, "nobody waited");
}

#[tokio::test(start_paused = true)]
async fn a_retry_after_longer_than_the_time_left_is_not_slept() {
    // Before: a 429 with Retry-After: 60 under a 30 s total timeout slept until the
    // timeout and returned TotalTimeout, losing the 429 and its delay.
    let pipeline = Pipeline::standard("graph");
    let start = Instant::now();
    let tried = AtomicU32::new(0);
    let error = pipeline
        .run(Idempotency::Idempotent, || {
            tried.fetch_add(1, Ordering::SeqCst);
            async { Err::<(), _>(HedgeFault::Throttled) }
        })
        .await
        .unwrap_err();
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(tried.load(Ordering::SeqCst), 1);
    assert!(
        matches!(error, PipelineError::Inner(HedgeFault::Throttled)),
        "{error:?}"
    );
    assert_eq!(
        error.class().retry_after(),
        Some(Duration::from_secs(30)),
        "its delay, for the caller"
    );

    // A delay that fits is slept and retried.
    let short = Pipeline::builder("t")
        .total_timeout(Duration::from_secs(60))
        .retry(retry(2))
        .build();
    let start = Instant::now();
    let _ = short
        .run(Idempotency::Idempotent, || async {
            Err::<(), _>(HedgeFault::Throttled)
        })
        .await;
    assert_eq!(start.elapsed(), Duration::from_secs(30));
}

#[tokio::test(start_paused = true)]
async fn the_pipeline_layer_decides_by_http_method_by_default() {
    use keel_resilience::pipeline::PipelineLayer;
    use tower::{ServiceBuilder, ServiceExt};

    // Before: PipelineLayer::new treated every request as idempotent: a failing POST
    // reached the service 3 times.
    let calls = Arc::new(AtomicU32::new(0));
    let service = {
        let calls = calls.clone();
        tower::service_fn(move |_: http::Request<String>| {
            calls.fetch_add(1, Ordering::SeqCst);
            async { Err::<(), _>(Fault::Down) }
        })
    };
    let svc = ServiceBuilder::new()
        .layer(PipelineLayer::new(
            Pipeline::builder("t").retry(retry(3)).build(),
        ))
        .service(service);
    let request = |method: http::Method, key: Option<&str>| {
        let mut builder = http::Request::builder().method(method).uri("/orders");
        if let Some(key) = key {
            builder = builder.header("idempotency-key", key);
        }
        builder.body(String::new()).unwrap()
    };
    let _ = svc.clone().oneshot(request(http::Method::POST, None)).await;
    assert_eq!(calls.swap(0, Ordering::SeqCst), 1, "a POST is not retried");
    let _ = svc
        .clone()
        .oneshot(request(http::Method::PATCH, None))
        .await;
    assert_eq!(calls.swap(0, Ordering::SeqCst), 1, "nor a PATCH");
    let _ = svc.clone().oneshot(request(http::Method::GET, None)).await;
    assert_eq!(calls.swap(0, Ordering::SeqCst), 3, "a GET is");
    let _ = svc
        .clone()
        .oneshot(request(http::Method::POST, Some("k-1")))
        .await;
    assert_eq!(
        calls.swap(0, Ordering::SeqCst),
        3,
        "so is a POST with an Idempotency-Key"
    );
}

#[tokio::test]
async fn fallback_answers_retryable_failures_only() {
    let cached = with_fallback(
        async { Err::<u32, _>(Fault::Down) },
        on_retryable,
        |_| async { Ok(7) },
    )
    .await;
    assert_eq!(cached, Ok(7));
    let refused = with_fallback(
        async { Err::<u32, _>(Fault::BadInput) },
        on_retryable,
        |_| async { Ok(7) },
    )
    .await;
    assert_eq!(refused, Err(Fault::BadInput));
}

#[tokio::test(start_paused = true)]
async fn the_pipeline_layer_retries_idempotent_requests_only() {
    use keel_resilience::pipeline::PipelineLayer;
    use tower::{ServiceBuilder, ServiceExt};

    let failures_left = Arc::new(AtomicU32::new(0));
    let calls = Arc::new(AtomicU32::new(0));
    let service = {
        let (failures_left, calls) = (failures_left.clone(), calls.clone());
        tower::service_fn(move |write: bool| {
            calls.fetch_add(1, Ordering::SeqCst);
            let fail = failures_left
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            async move { if fail { Err(Fault::Down) } else { Ok(write) } }
        })
    };
    let layer = PipelineLayer::new(Pipeline::builder("t").retry(retry(3)).build())
        .with_idempotency(|write: &bool| {
            if *write {
                Idempotency::NonIdempotent
            } else {
                Idempotency::Idempotent
            }
        });
    let svc = ServiceBuilder::new().layer(layer).service(service);

    failures_left.store(1, Ordering::SeqCst);
    assert!(
        !svc.clone().oneshot(false).await.unwrap(),
        "a read is retried past one failure"
    );
    assert_eq!(calls.swap(0, Ordering::SeqCst), 2);

    failures_left.store(1, Ordering::SeqCst);
    let error = svc.clone().oneshot(true).await.unwrap_err();
    assert!(matches!(error, PipelineError::Inner(Fault::Down)));
    assert_eq!(calls.load(Ordering::SeqCst), 1, "a write is not retried");
}

#[tokio::test(start_paused = true)]
async fn callers_timed_out_while_queued_at_the_bulkhead_do_not_trip_the_breaker() {
    // Review: the breaker permit is taken before the bulkhead slot. A caller whose total
    // timeout fires while it waits for a slot drops that permit unrecorded, which counts
    // as an abandoned call (a failure by default) although the dependency was never
    // asked: a saturated but healthy dependency got its breaker opened.
    let b = breaker(5);
    let bulkhead = Bulkhead::new("t", 1, Duration::from_secs(60)).unwrap();
    let pipeline = Pipeline::builder("t")
        .total_timeout(Duration::from_secs(1))
        .circuit_breaker(b.clone())
        .bulkhead(bulkhead.clone())
        .build();
    // A slow report (no total timeout) holds the only slot for 5 s; it succeeds.
    let reports = Pipeline::builder("t")
        .circuit_breaker(b.clone())
        .bulkhead(bulkhead)
        .build();
    let busy = {
        let pipeline = reports.clone();
        tokio::spawn(async move {
            pipeline
                .run(Idempotency::Idempotent, || async {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    Ok::<_, Fault>(())
                })
                .await
        })
    };
    tokio::task::yield_now().await;
    let mut queued = Vec::new();
    for _ in 0..10 {
        let pipeline = pipeline.clone();
        queued.push(tokio::spawn(async move {
            pipeline
                .run(Idempotency::Idempotent, || async { Ok::<_, Fault>(()) })
                .await
        }));
    }
    for caller in queued {
        let result = caller.await.unwrap();
        assert!(
            matches!(result, Ok(()) | Err(PipelineError::TotalTimeout(_))),
            "{result:?}"
        );
    }
    assert!(busy.await.unwrap().is_ok());
    assert_eq!(
        b.state(),
        State::Closed,
        "nobody failed: callers only waited for a bulkhead slot ({:?})",
        b.metrics()
    );
    assert_eq!(b.metrics().failed_calls, 0);
}

/// A service (and a request) that is `Send` but not `Sync`, as many tower services are
/// (a `Cell`, a non-`Sync` client): the pipeline layer takes it.
#[tokio::test(start_paused = true)]
async fn the_pipeline_layer_takes_services_and_requests_that_are_not_sync() {
    use keel_resilience::pipeline::PipelineLayer;
    use std::cell::Cell;
    use tower::{ServiceBuilder, ServiceExt};

    let attempts = Arc::new(AtomicU32::new(0));
    let not_sync = Cell::new(0_u32);
    let service = tower::service_fn(move |request: Cell<u32>| {
        not_sync.set(not_sync.get() + 1);
        let failing = attempts.fetch_add(1, Ordering::SeqCst) < 2;
        async move {
            if failing {
                Err(Fault::Down)
            } else {
                Ok(request.get())
            }
        }
    });
    let svc = ServiceBuilder::new()
        .layer(PipelineLayer::every_request_idempotent(
            Pipeline::builder("t").retry(retry(3)).build(),
        ))
        .service(service);
    let answer = tokio::spawn(svc.oneshot(Cell::new(7))).await.unwrap();
    assert_eq!(answer.unwrap(), 7, "answered on the third attempt");
}
