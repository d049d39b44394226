//! Retry under tokio's paused clock: delays from `Retry-After` (fractional seconds,
//! whole seconds, HTTP date), fallback to backoff on garbage, the stop rules, and the
//! budget under a failure storm.

use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use keel_resilience::retry::{Backoff, Idempotency, Retry, RetryConfig};
use keel_resilience::{Classify, ErrorClass, parse_retry_after};
use tokio::time::Instant;

/// An error as an HTTP client would build it from a 429 response.
#[derive(Debug)]
enum Failure {
    TooManyRequests { retry_after: String },
    Unavailable,
    NotFound,
}

impl Classify for Failure {
    fn class(&self) -> ErrorClass {
        match self {
            Failure::TooManyRequests { retry_after } => ErrorClass::Throttled {
                retry_after: parse_retry_after(retry_after, SystemTime::now()),
            },
            Failure::Unavailable => ErrorClass::Transient,
            Failure::NotFound => ErrorClass::Permanent,
        }
    }
}

fn policy() -> keel_resilience::retry::RetryConfigBuilder {
    RetryConfig::builder("test")
        .max_attempts(2)
        .backoff(Backoff::Constant(Duration::from_millis(300)))
        .without_budget()
}

/// Fails once with `retry_after`, then succeeds; returns the gap between the attempts.
async fn gap_after(retry_after: &str) -> Duration {
    let retry = Retry::new(policy().build().unwrap());
    let times = Mutex::new(Vec::new());
    let result = retry
        .run(Idempotency::Idempotent, |attempt| {
            times.lock().unwrap().push(Instant::now());
            let header = retry_after.to_owned();
            async move {
                if attempt == 1 {
                    Err(Failure::TooManyRequests {
                        retry_after: header,
                    })
                } else {
                    Ok(())
                }
            }
        })
        .await;
    assert!(result.is_ok());
    let times = times.into_inner().unwrap();
    assert_eq!(times.len(), 2);
    times[1] - times[0]
}

#[tokio::test(start_paused = true)]
async fn honours_fractional_retry_after() {
    assert_eq!(gap_after("2.128").await, Duration::from_millis(2128));
}

#[tokio::test(start_paused = true)]
async fn honours_whole_seconds_retry_after() {
    assert_eq!(gap_after("120").await, Duration::from_secs(120));
}

#[tokio::test(start_paused = true)]
async fn honours_an_http_date() {
    // HTTP dates have whole-second resolution and are read against the wall clock.
    let date = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(5));
    let gap = gap_after(&date).await;
    assert!(
        gap > Duration::from_secs(3) && gap <= Duration::from_secs(5),
        "{gap:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn garbage_retry_after_falls_back_to_backoff() {
    assert_eq!(gap_after("soon, maybe").await, Duration::from_millis(300));
    assert_eq!(gap_after("-5").await, Duration::from_millis(300));
}

async fn attempts_made(retry: &Retry, idempotency: Idempotency, error: fn() -> Failure) -> u32 {
    let mut made = 0;
    let _ = retry
        .run(idempotency, |n| {
            made = n;
            async move { Err::<(), _>(error()) }
        })
        .await;
    made
}

#[tokio::test(start_paused = true)]
async fn stop_rules() {
    let retry = Retry::new(policy().max_attempts(4).build().unwrap());
    assert_eq!(
        attempts_made(&retry, Idempotency::Idempotent, || Failure::Unavailable).await,
        4
    );
    assert_eq!(
        attempts_made(&retry, Idempotency::Idempotent, || Failure::NotFound).await,
        1,
        "permanent"
    );
    assert_eq!(
        attempts_made(&retry, Idempotency::NonIdempotent, || Failure::Unavailable).await,
        1,
        "non-idempotent work is not retried by default"
    );
    let allowed = Retry::new(
        policy()
            .max_attempts(4)
            .retry_non_idempotent(true)
            .build()
            .unwrap(),
    );
    assert_eq!(
        attempts_made(&allowed, Idempotency::NonIdempotent, || {
            Failure::Unavailable
        })
        .await,
        4
    );

    // 300 ms apart, 1 s in all: attempts at 0, 0.3, 0.6, 0.9; the next would end at 1.2.
    let bounded = Retry::new(
        policy()
            .max_attempts(10)
            .max_elapsed(Duration::from_secs(1))
            .build()
            .unwrap(),
    );
    let start = Instant::now();
    assert_eq!(
        attempts_made(&bounded, Idempotency::Idempotent, || Failure::Unavailable).await,
        4
    );
    assert_eq!(start.elapsed(), Duration::from_millis(900));

    // A server asking for longer than the elapsed limit: give up at once.
    let start = Instant::now();
    let made = attempts_made(&bounded, Idempotency::Idempotent, || {
        Failure::TooManyRequests {
            retry_after: "30".into(),
        }
    })
    .await;
    assert_eq!((made, start.elapsed()), (1, Duration::ZERO));
}

#[tokio::test(start_paused = true)]
async fn exponential_backoff_spacing() {
    let retry = Retry::new(
        policy()
            .max_attempts(5)
            .backoff(Backoff::Exponential {
                base: Duration::from_millis(100),
                max: Duration::from_millis(350),
                jitter: false,
            })
            .build()
            .unwrap(),
    );
    let start = Instant::now();
    assert_eq!(
        attempts_made(&retry, Idempotency::Idempotent, || Failure::Unavailable).await,
        5
    );
    // 100 + 200 + 350 + 350
    assert_eq!(start.elapsed(), Duration::from_millis(1000));
}

#[tokio::test(start_paused = true)]
async fn budget_holds_retries_to_their_share_in_a_failure_storm() {
    let retry = Retry::new(
        RetryConfig::builder("storm")
            .max_attempts(3)
            .backoff(Backoff::Constant(Duration::ZERO))
            .budget(0.2, 0, Duration::from_secs(10))
            .build()
            .unwrap(),
    );
    let requests = 10_000u32;
    let mut attempts = 0u32;
    for _ in 0..requests {
        attempts += attempts_made(&retry, Idempotency::Idempotent, || Failure::Unavailable).await;
    }
    let retries = attempts - requests;
    // Without a budget this storm would make 20 000 retries.
    assert!(
        retries <= requests / 5 + 1,
        "{retries} retries for {requests} requests"
    );
    assert!(
        retries >= requests / 5 - 10,
        "the budget is used, not starved: {retries}"
    );

    // Once the window has passed, old deposits no longer fund retries: a fresh request
    // still gets its 20% (here, one retry for the first request through the reserve-less
    // budget) rather than the storm's leftovers.
    tokio::time::advance(Duration::from_secs(11)).await;
    assert_eq!(
        attempts_made(&retry, Idempotency::Idempotent, || Failure::Unavailable).await,
        2
    );
}

#[test]
fn the_retry_budget_cannot_be_overdrawn_by_concurrent_withdrawals() {
    // Before: check and withdrawal were two steps; with a budget of 1 and 8 threads, two
    // retries were granted in 77 of 3,000 rounds.
    use keel_resilience::retry::RetryBudget;
    use std::sync::Barrier;
    use std::sync::atomic::{AtomicU32, Ordering};

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let mut overdrawn = 0;
    for _ in 0..1_500 {
        // A reserve of one retry in a one-second window, nothing deposited.
        let budget = RetryBudget::new(0.0, 1, Duration::from_secs(1));
        let granted = AtomicU32::new(0);
        let start = Barrier::new(8);
        std::thread::scope(|scope| {
            for _ in 0..8 {
                scope.spawn(|| {
                    start.wait();
                    if budget.try_withdraw() {
                        granted.fetch_add(1, Ordering::SeqCst);
                    }
                });
            }
        });
        let granted = granted.load(Ordering::SeqCst);
        assert!(granted >= 1, "the reserve allows one");
        overdrawn += usize::from(granted > 1);
    }
    assert_eq!(
        overdrawn, 0,
        "rounds in which more than one retry was granted"
    );
}

/// An error whose own delay is as long as a `Duration` goes (a `Classify` impl that
/// trusts a server's number, or says "never" with `Duration::MAX`).
#[derive(Debug)]
struct WaitForever;

impl Classify for WaitForever {
    fn class(&self) -> ErrorClass {
        ErrorClass::Throttled {
            retry_after: Some(Duration::MAX),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_delay_too_long_for_the_clock_gives_up_instead_of_panicking() {
    // Review: `Instant::now() + delay` (deadline) and `start.elapsed() + delay`
    // (max_elapsed) overflowed and panicked on a huge delay.
    let with_deadline = Retry::new(policy().build().unwrap());
    let deadline = Instant::now() + Duration::from_secs(30);
    let result = with_deadline
        .run_until(deadline, Idempotency::Idempotent, |_| async {
            Err::<(), _>(WaitForever)
        })
        .await;
    assert!(result.is_err());

    let with_elapsed = Retry::new(
        policy()
            .max_elapsed(Duration::from_secs(30))
            .build()
            .unwrap(),
    );
    let result = with_elapsed
        .run(Idempotency::Idempotent, |_| async {
            Err::<(), _>(WaitForever)
        })
        .await;
    assert!(result.is_err());
}
