//! Every circuit breaker transition, under tokio's paused clock (no real sleeps), and
//! the half-open permit bound under real concurrency.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keel_resilience::breaker::{
    BreakerError, CircuitBreaker, CircuitBreakerConfig, CircuitBreakerLayer, OpenWait, Outcome,
    SlidingWindow, State, StateChange,
};
use keel_resilience::{Classify, ErrorClass};
use proptest::prelude::*;
use tower::{Service, ServiceBuilder, ServiceExt};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    Transient,
    BadRequest,
}

impl Classify for Fault {
    fn class(&self) -> ErrorClass {
        match self {
            Fault::Transient => ErrorClass::Transient,
            Fault::BadRequest => ErrorClass::Permanent,
        }
    }
}

fn config() -> keel_resilience::breaker::CircuitBreakerConfigBuilder {
    CircuitBreakerConfig::builder("test")
        .sliding_window(SlidingWindow::Count { size: 10 })
        .minimum_calls(5)
        .failure_rate_threshold(50.0)
        .half_open_permits(2)
        .open_wait(OpenWait::Fixed(Duration::from_secs(10)))
}

async fn ok(b: &CircuitBreaker) -> Result<(), BreakerError<Fault>> {
    b.call(|| async { Ok(()) }).await
}

async fn fail(b: &CircuitBreaker) -> Result<(), BreakerError<Fault>> {
    b.call(|| async { Err(Fault::Transient) }).await
}

/// State changes seen by a listener, in order.
type Transitions = Arc<Mutex<Vec<(State, State)>>>;

fn recorder() -> (Transitions, impl Fn(&StateChange) + Send + Sync) {
    let log = Transitions::default();
    let sink = log.clone();
    (log, move |c: &StateChange| {
        sink.lock().unwrap().push((c.from, c.to));
    })
}

#[tokio::test(start_paused = true)]
async fn closed_opens_at_the_failure_rate_once_minimum_calls_are_in() {
    let (log, listener) = recorder();
    let b = CircuitBreaker::new(config().on_state_change(listener).build().unwrap());
    // 4 failures: 100% but below the minimum of 5 calls.
    for _ in 0..4 {
        assert!(matches!(
            fail(&b).await,
            Err(BreakerError::Inner(Fault::Transient))
        ));
    }
    assert_eq!(b.state(), State::Closed);
    ok(&b).await.unwrap(); // 5 calls, 80% failed, but a success never opens it
    assert_eq!(b.state(), State::Closed);
    let _ = fail(&b).await; // 6 calls, 5 failed: 83% >= 50%
    assert_eq!(b.state(), State::Open);
    assert_eq!(*log.lock().unwrap(), [(State::Closed, State::Open)]);
    let m = b.metrics();
    assert_eq!((m.calls, m.failed_calls), (6, 5));
}

#[tokio::test(start_paused = true)]
async fn permanent_errors_do_not_count() {
    let b = CircuitBreaker::new(config().build().unwrap());
    for _ in 0..20 {
        let r = b.call(|| async { Err::<(), _>(Fault::BadRequest) }).await;
        assert!(matches!(r, Err(BreakerError::Inner(Fault::BadRequest))));
    }
    assert_eq!(b.state(), State::Closed);
    assert_eq!(b.metrics().calls, 0);
}

#[tokio::test(start_paused = true)]
async fn open_refuses_with_a_hint_then_half_open_success_closes() {
    let (log, listener) = recorder();
    let b = CircuitBreaker::new(config().on_state_change(listener).build().unwrap());
    for _ in 0..5 {
        let _ = fail(&b).await;
    }
    assert_eq!(b.state(), State::Open);
    let ran = AtomicUsize::new(0);
    let r = b
        .call(|| async {
            ran.fetch_add(1, Ordering::SeqCst);
            Ok::<_, Fault>(())
        })
        .await;
    let Err(BreakerError::Rejected(rejected)) = r else {
        panic!("{r:?}")
    };
    assert_eq!(ran.load(Ordering::SeqCst), 0, "a refused call never runs");
    assert_eq!(rejected.state(), State::Open);
    assert_eq!(rejected.retry_after(), Some(Duration::from_secs(10)));
    assert!(
        rejected.to_string().contains("`test` is open"),
        "{rejected}"
    );

    tokio::time::advance(Duration::from_secs(4)).await;
    let Err(BreakerError::Rejected(r)) = ok(&b).await else {
        panic!()
    };
    assert_eq!(r.retry_after(), Some(Duration::from_secs(6)));

    tokio::time::advance(Duration::from_secs(6)).await;
    ok(&b).await.unwrap(); // first trial: moves to half-open and runs
    assert_eq!(b.state(), State::HalfOpen);
    ok(&b).await.unwrap(); // second trial succeeds: closes
    assert_eq!(b.state(), State::Closed);
    assert_eq!(
        b.metrics().calls,
        0,
        "the window starts empty after closing"
    );
    assert_eq!(
        *log.lock().unwrap(),
        [
            (State::Closed, State::Open),
            (State::Open, State::HalfOpen),
            (State::HalfOpen, State::Closed)
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn half_open_failure_reopens_with_a_growing_wait() {
    let b = CircuitBreaker::new(
        config()
            .open_wait(OpenWait::Backoff {
                initial: Duration::from_secs(10),
                multiplier: 2.0,
                max: Duration::from_secs(25),
            })
            .build()
            .unwrap(),
    );
    for _ in 0..5 {
        let _ = fail(&b).await;
    }
    let mut expected_waits = vec![];
    for round in 0..3 {
        let Err(BreakerError::Rejected(r)) = ok(&b).await else {
            panic!("round {round}")
        };
        expected_waits.push(r.retry_after().unwrap().as_secs());
        tokio::time::advance(r.retry_after().unwrap()).await;
        ok(&b).await.unwrap();
        let _ = fail(&b).await; // 1 of 2 trials failed: 50% >= 50%, open again
        assert_eq!(b.state(), State::Open);
    }
    expected_waits.push(match ok(&b).await {
        Err(BreakerError::Rejected(r)) => r.retry_after().unwrap().as_secs(),
        other => panic!("{other:?}"),
    });
    assert_eq!(expected_waits, [10, 20, 25, 25]);
    // Closing resets the backoff.
    tokio::time::advance(Duration::from_secs(25)).await;
    ok(&b).await.unwrap();
    ok(&b).await.unwrap();
    assert_eq!(b.state(), State::Closed);
    for _ in 0..5 {
        let _ = fail(&b).await;
    }
    let Err(BreakerError::Rejected(r)) = ok(&b).await else {
        panic!()
    };
    assert_eq!(r.retry_after(), Some(Duration::from_secs(10)));
}

#[tokio::test(start_paused = true)]
async fn half_open_refuses_beyond_its_permits_and_ignored_abandoned_trials_give_them_back() {
    let b = Arc::new(CircuitBreaker::new(
        config().abandoned_calls(Outcome::Ignored).build().unwrap(),
    ));
    for _ in 0..5 {
        let _ = fail(&b).await;
    }
    tokio::time::advance(Duration::from_secs(10)).await;
    let first = b.try_acquire().unwrap();
    let second = b.try_acquire().unwrap();
    let Err(refused) = b.try_acquire() else {
        panic!("a third trial was admitted")
    };
    assert_eq!(refused.state(), State::HalfOpen);
    assert!(
        refused.retry_after().is_some(),
        "half-open says when to come back"
    );
    drop(second); // cancelled on purpose: gives its permit back
    let third = b.try_acquire().expect("the released permit is reusable");
    first.record(Outcome::Success);
    third.record(Outcome::Success);
    assert_eq!(b.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn calls_abandoned_by_an_outer_timeout_count_as_failures() {
    // The review's case: a timeout outside the breaker drops hung calls; the breaker must
    // still see them (before: 100 hung calls, breaker closed, 0 calls recorded).
    let b = Arc::new(CircuitBreaker::new(CircuitBreakerConfig::standard("hung")));
    let mut timed_out = 0;
    for _ in 0..100 {
        let call = b.call(|| async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok::<_, std::io::Error>(())
        });
        match tokio::time::timeout(Duration::from_millis(100), call).await {
            Err(_) => timed_out += 1,
            Ok(result) => assert!(matches!(result, Err(BreakerError::Rejected(_)))),
        }
    }
    assert_eq!(b.state(), State::Open);
    assert_eq!(
        timed_out, 20,
        "opened once the minimum of 20 abandoned calls was in"
    );
}

#[tokio::test(start_paused = true)]
async fn a_hung_half_open_trial_does_not_keep_the_breaker_half_open_forever() {
    let b = CircuitBreaker::new(
        config()
            .half_open_permits(1)
            .max_half_open(Duration::from_secs(60))
            .build()
            .unwrap(),
    );
    for _ in 0..5 {
        let _ = fail(&b).await;
    }
    tokio::time::advance(Duration::from_secs(10)).await;
    let hung = b.try_acquire().unwrap(); // never reports
    tokio::time::advance(Duration::from_secs(30)).await;
    let refused = b.try_acquire().unwrap_err();
    assert_eq!(refused.state(), State::HalfOpen);
    assert_eq!(refused.retry_after(), Some(Duration::from_secs(30)));
    tokio::time::advance(Duration::from_secs(31)).await;
    let reopened = b.try_acquire().unwrap_err();
    assert_eq!(
        reopened.state(),
        State::Open,
        "past max_half_open: open again"
    );
    assert!(reopened.retry_after().is_some());
    tokio::time::advance(Duration::from_secs(11)).await;
    let trial = b.try_acquire().expect("a new trial after the open wait");
    trial.record(Outcome::Success);
    assert_eq!(b.state(), State::Closed);
    hung.record(Outcome::Failure); // from an old generation: ignored
    assert_eq!(b.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn a_recovery_records_how_long_the_outage_lasted() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    // Handles are taken when the breaker is built: it records into this recorder.
    let b = metrics::with_local_recorder(&recorder, || {
        CircuitBreaker::new(config().half_open_permits(1).build().unwrap())
    });
    for _ in 0..5 {
        let _ = fail(&b).await;
    }
    assert_eq!(b.state(), State::Open);
    tokio::time::advance(Duration::from_secs(10)).await;
    b.try_acquire().unwrap().record(Outcome::Failure); // the outage goes on
    tokio::time::advance(Duration::from_secs(10)).await;
    b.try_acquire().unwrap().record(Outcome::Success);
    assert_eq!(b.state(), State::Closed);
    let recoveries: Vec<f64> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(key, ..)| key.key().name() == "resilience_breaker_recovery_seconds")
        .flat_map(|(.., value)| match value {
            DebugValue::Histogram(values) => values.into_iter().map(|v| v.into_inner()).collect(),
            _ => Vec::new(),
        })
        .collect();
    assert_eq!(recoveries.len(), 1, "{recoveries:?}");
    assert!(
        (recoveries[0] - 20.0).abs() < 0.01,
        "open 10 s, half-open, open 10 s: {recoveries:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn slow_calls_open_it() {
    let b = CircuitBreaker::new(
        config()
            .slow_calls(Duration::from_secs(2), 60.0)
            .build()
            .unwrap(),
    );
    for i in 0..5 {
        let r = b
            .call(|| async move {
                if i < 3 {
                    tokio::time::sleep(Duration::from_secs(3)).await;
                }
                Ok::<_, Fault>(())
            })
            .await;
        assert!(r.is_ok());
    }
    // 3 of 5 slow (60%), all successful: the last slow one was the 3rd call, below the
    // minimum; the 4th and 5th were fast, so no judgement yet.
    assert_eq!(b.state(), State::Closed);
    let m = b.metrics();
    assert_eq!((m.calls, m.slow_calls), (5, 3));
    b.call(|| async {
        tokio::time::sleep(Duration::from_secs(3)).await;
        Ok::<_, Fault>(())
    })
    .await
    .unwrap();
    assert_eq!(b.state(), State::Open, "4 of 6 slow: 67% >= 60%");
}

#[tokio::test(start_paused = true)]
async fn time_window_forgets_old_failures() {
    let b = CircuitBreaker::new(
        config()
            .sliding_window(SlidingWindow::Time {
                duration: Duration::from_secs(10),
            })
            .build()
            .unwrap(),
    );
    for _ in 0..4 {
        let _ = fail(&b).await;
    }
    tokio::time::advance(Duration::from_secs(11)).await;
    for _ in 0..4 {
        ok(&b).await.unwrap();
    }
    let _ = fail(&b).await; // 5 calls in the window, 1 failed
    assert_eq!(b.state(), State::Closed);
    assert_eq!(b.metrics().calls, 5);
}

#[tokio::test(start_paused = true)]
async fn manual_states() {
    let b = CircuitBreaker::new(config().build().unwrap());
    b.force_open();
    let Err(BreakerError::Rejected(r)) = ok(&b).await else {
        panic!()
    };
    assert_eq!((r.state(), r.retry_after()), (State::ForcedOpen, None));

    b.disable();
    for _ in 0..20 {
        let _ = fail(&b).await;
    }
    assert_eq!(b.state(), State::Disabled);
    assert_eq!(b.metrics().calls, 0, "disabled records nothing");

    b.metrics_only();
    for _ in 0..20 {
        let _ = fail(&b).await;
    }
    assert_eq!(b.state(), State::MetricsOnly, "metrics-only never opens");
    assert_eq!(b.metrics().failed_calls, 10);

    b.reset();
    assert_eq!(b.state(), State::Closed);
    assert_eq!(b.metrics().calls, 0);
}

#[tokio::test(start_paused = true)]
async fn a_permit_from_before_a_transition_is_ignored() {
    let b = CircuitBreaker::new(config().build().unwrap());
    let stale = b.try_acquire().unwrap();
    b.force_open();
    b.reset();
    stale.record(Outcome::Failure);
    assert_eq!(b.metrics().calls, 0);
}

#[tokio::test(start_paused = true)]
async fn tower_layer_refuses_without_calling_the_service() {
    let breaker = Arc::new(CircuitBreaker::new(config().build().unwrap()));
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let mut service = ServiceBuilder::new()
        .layer(CircuitBreakerLayer::new(breaker.clone()))
        .service_fn(move |fail: bool| {
            counter.fetch_add(1, Ordering::SeqCst);
            async move {
                if fail {
                    Err(Fault::Transient)
                } else {
                    Ok("ok")
                }
            }
        });
    for _ in 0..5 {
        let r = service.ready().await.unwrap().call(true).await;
        assert!(matches!(r, Err(BreakerError::Inner(Fault::Transient))));
    }
    assert_eq!(breaker.state(), State::Open);
    let r = service.ready().await.unwrap().call(false).await;
    assert!(matches!(r, Err(BreakerError::Rejected(_))));
    assert_eq!(
        calls.load(Ordering::SeqCst),
        5,
        "the inner service was not called"
    );
    tokio::time::advance(Duration::from_secs(10)).await;
    assert_eq!(
        service.ready().await.unwrap().call(false).await.unwrap(),
        "ok"
    );
    assert_eq!(breaker.state(), State::HalfOpen);
}

/// Trips a breaker with `permits` half-open trials, lets its wait pass (real time, 1 ms),
/// then has `threads` threads grab trial permits at once.
fn admitted_at_once(permits: u32, threads: usize) -> usize {
    let b = Arc::new(CircuitBreaker::new(
        CircuitBreakerConfig::builder("race")
            .minimum_calls(1)
            .half_open_permits(permits)
            .open_wait(OpenWait::Fixed(Duration::from_millis(1)))
            .build()
            .unwrap(),
    ));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    runtime.block_on(async {
        let _ = b.call(|| async { Err::<(), _>(Fault::Transient) }).await;
    });
    assert_eq!(b.state(), State::Open);
    std::thread::sleep(Duration::from_millis(2));
    let barrier = Arc::new(std::sync::Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let b = b.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                // Hold the permit (an unfinished trial) while others try.
                b.try_acquire_owned().ok()
            })
        })
        .collect();
    let held: Vec<_> = handles
        .into_iter()
        .filter_map(|h| h.join().unwrap())
        .collect();
    held.len()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn half_open_never_admits_more_than_its_permits(permits in 1u32..8, threads in 2usize..16) {
        let admitted = admitted_at_once(permits, threads);
        prop_assert_eq!(admitted, (permits as usize).min(threads));
    }
}

/// The values recorded in `resilience_breaker_recovery_seconds`.
fn recoveries(snapshotter: &metrics_util::debugging::Snapshotter) -> Vec<f64> {
    use metrics_util::debugging::DebugValue;
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(key, ..)| key.key().name() == "resilience_breaker_recovery_seconds")
        .flat_map(|(.., value)| match value {
            DebugValue::Histogram(values) => values.into_iter().map(|v| v.into_inner()).collect(),
            _ => Vec::new(),
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_manual_reset_is_not_recorded_as_a_recovery() {
    // Review: the recovery histogram is documented as "each automatic close", but
    // `reset()` from half-open recorded an MTTR sample (from open it did not).
    use metrics_util::debugging::DebuggingRecorder;
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let b = metrics::with_local_recorder(&recorder, || {
        CircuitBreaker::new(config().half_open_permits(2).build().unwrap())
    });
    for _ in 0..5 {
        let _ = fail(&b).await;
    }
    tokio::time::advance(Duration::from_secs(10)).await;
    let trial = b.try_acquire().unwrap();
    assert_eq!(b.state(), State::HalfOpen);
    tokio::time::advance(Duration::from_secs(5)).await;
    b.reset(); // an operator closes it by hand
    trial.record(Outcome::Success);
    assert_eq!(b.state(), State::Closed);
    assert_eq!(recoveries(&snapshotter), Vec::<f64>::new());
}

#[tokio::test(start_paused = true)]
async fn a_trial_out_for_less_than_max_half_open_is_not_taken_for_hung() {
    // Review: "trials still out after max_half_open" was measured from the start of
    // half-open, not from the trials: on a quiet dependency the last trial permit went
    // out 70 s into half-open, and a call 1 s later reopened the breaker although no
    // trial had been out for more than a second (the first one had succeeded).
    let b = CircuitBreaker::new(
        config()
            .half_open_permits(2)
            .max_half_open(Duration::from_secs(60))
            .build()
            .unwrap(),
    );
    for _ in 0..5 {
        let _ = fail(&b).await;
    }
    tokio::time::advance(Duration::from_secs(10)).await;
    b.try_acquire().unwrap().record(Outcome::Success); // first trial, at once
    tokio::time::advance(Duration::from_secs(70)).await; // a quiet dependency
    let second = b.try_acquire().unwrap(); // takes 2 s
    tokio::time::advance(Duration::from_secs(1)).await;
    let refused = b.try_acquire().unwrap_err();
    assert_eq!(
        refused.state(),
        State::HalfOpen,
        "the only trial out has been out for 1 s"
    );
    assert_eq!(refused.retry_after(), Some(Duration::from_secs(59)));
    tokio::time::advance(Duration::from_secs(1)).await;
    second.record(Outcome::Success);
    assert_eq!(b.state(), State::Closed);
}
