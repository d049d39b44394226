//! A client protected by keel-resilience's pipeline, calling a local service that
//! misbehaves on cue: throttles with `Retry-After: 0.05`, fails, goes down, recovers,
//! and hangs. Each phase prints what the policies did.
//!
//! ```text
//! cargo run -p keel-examples --example resilient_client            # the whole story
//! cargo run -p keel-examples --example resilient_client -- --smoke # the same, checked
//! ```

// An executable's report goes to stdout.
#![allow(clippy::print_stdout)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU32, Ordering};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use keel_resilience::breaker::{
    CircuitBreaker, CircuitBreakerConfig, OpenWait, State as BreakerState,
};
use keel_resilience::pipeline::{Pipeline, PipelineError};
use keel_resilience::retry::{Backoff, Idempotency, Retry, RetryConfig};
use keel_resilience::{Classify, ErrorClass, parse_retry_after};

/// How the local service behaves.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
enum Mode {
    /// One request in 4 throttled (429, `Retry-After: 0.05`), one in 7 a 500: about a
    /// third failing, below the breaker's 50% threshold.
    Flaky = 0,
    /// Every request a 500.
    Down = 1,
    /// Every request fine.
    Healthy = 2,
    /// Every request hangs for 5 s.
    Hanging = 3,
}

#[derive(Default)]
struct Service {
    mode: AtomicU8,
    requests: AtomicU32,
}

async fn stock(State(service): State<Arc<Service>>) -> Response {
    let n = service.requests.fetch_add(1, Ordering::SeqCst);
    match service.mode.load(Ordering::SeqCst) {
        0 if n % 4 == 1 => (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", "0.05")],
            "slow down",
        )
            .into_response(),
        0 if n % 7 == 3 => (StatusCode::INTERNAL_SERVER_ERROR, "oops").into_response(),
        1 => (StatusCode::INTERNAL_SERVER_ERROR, "down").into_response(),
        3 => {
            tokio::time::sleep(Duration::from_secs(5)).await;
            "late".into_response()
        }
        _ => "42".into_response(),
    }
}

/// An HTTP failure, classified for the policies from its status and `Retry-After`.
#[derive(Debug, thiserror::Error)]
#[error("inventory answered {status}")]
struct HttpError {
    status: u16,
    retry_after: Option<Duration>,
}

impl Classify for HttpError {
    fn class(&self) -> ErrorClass {
        ErrorClass::from_http_status(self.status, self.retry_after)
    }
}

#[derive(Debug, thiserror::Error)]
enum CallError {
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error("transport: {0}")]
    Transport(#[from] reqwest::Error),
}

impl Classify for CallError {
    fn class(&self) -> ErrorClass {
        match self {
            CallError::Http(e) => e.class(),
            CallError::Transport(_) => ErrorClass::Transient,
        }
    }
}

async fn fetch(
    client: &reqwest::Client,
    url: &str,
    attempts: &AtomicU32,
) -> Result<String, CallError> {
    attempts.fetch_add(1, Ordering::SeqCst);
    let response = client.get(url).send().await?;
    let status = response.status().as_u16();
    if status >= 400 {
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()));
        return Err(HttpError {
            status,
            retry_after,
        }
        .into());
    }
    Ok(response.text().await?)
}

struct Report {
    ok: u32,
    attempts: u32,
    refused_by_breaker: u32,
    attempt_timeouts: u32,
    other_failures: u32,
}

async fn phase(
    title: &str,
    calls: u32,
    pipeline: &Pipeline,
    client: &reqwest::Client,
    url: &str,
) -> Report {
    println!("\n== {title}");
    let mut report = Report {
        ok: 0,
        attempts: 0,
        refused_by_breaker: 0,
        attempt_timeouts: 0,
        other_failures: 0,
    };
    for call in 1..=calls {
        let attempts = AtomicU32::new(0);
        let result = pipeline
            .run(Idempotency::Idempotent, || fetch(client, url, &attempts))
            .await;
        let attempts = attempts.load(Ordering::SeqCst);
        report.attempts += attempts;
        let breaker = pipeline
            .circuit_breaker()
            .map_or(BreakerState::Closed, |b| b.state());
        let what = match &result {
            Ok(body) => {
                report.ok += 1;
                format!("ok ({body})")
            }
            Err(PipelineError::CircuitOpen(refused)) => {
                report.refused_by_breaker += 1;
                format!("refused by the breaker without a request ({refused})")
            }
            Err(PipelineError::AttemptTimeout(t)) => {
                report.attempt_timeouts += 1;
                format!("attempt timed out after {:?}", t.after())
            }
            Err(other) => {
                report.other_failures += 1;
                format!("failed: {other}")
            }
        };
        println!("call {call:>2}: {attempts} attempt(s), breaker {breaker:<9} → {what}");
    }
    report
}

async fn serve(service: Arc<Service>) -> std::io::Result<SocketAddr> {
    let app = Router::new()
        .route("/stock", get(stock))
        .with_state(service);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(addr)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let smoke = std::env::args().any(|a| a == "--smoke");
    let service = Arc::new(Service::default());
    let url = format!("http://{}/stock", serve(service.clone()).await?);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;

    let breaker = Arc::new(CircuitBreaker::new(
        CircuitBreakerConfig::builder("inventory")
            .minimum_calls(10)
            .failure_rate_threshold(50.0)
            .half_open_permits(2)
            .open_wait(OpenWait::Fixed(Duration::from_millis(500)))
            .on_state_change(|c| println!("   breaker `{}`: {} → {}", c.breaker, c.from, c.to))
            .build()?,
    ));
    let pipeline = Pipeline::builder("inventory")
        .total_timeout(Duration::from_secs(5))
        .retry(Retry::new(
            RetryConfig::builder("inventory")
                .max_attempts(4)
                .backoff(Backoff::Exponential {
                    base: Duration::from_millis(20),
                    max: Duration::from_millis(200),
                    jitter: true,
                })
                .max_elapsed(Duration::from_secs(1))
                .build()?,
        ))
        .circuit_breaker(breaker.clone())
        .attempt_timeout(Duration::from_millis(200))
        .build();

    service.mode.store(Mode::Flaky as u8, Ordering::SeqCst);
    let flaky = phase(
        "flaky: throttling (Retry-After: 0.05) and 500s",
        8,
        &pipeline,
        &client,
        &url,
    )
    .await;

    service.mode.store(Mode::Down as u8, Ordering::SeqCst);
    let down = phase("down: every request fails", 6, &pipeline, &client, &url).await;

    service.mode.store(Mode::Healthy as u8, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(600)).await; // the breaker's open wait
    let recovered = phase(
        "recovered, after the breaker's 500 ms wait",
        4,
        &pipeline,
        &client,
        &url,
    )
    .await;

    service.mode.store(Mode::Hanging as u8, Ordering::SeqCst);
    breaker.disable(); // let every hanging attempt through to show the attempt timeout
    let hanging = phase(
        "hanging: the attempt timeout cancels each try",
        1,
        &pipeline,
        &client,
        &url,
    )
    .await;

    if smoke {
        let checks = [
            (
                flaky.ok == 8 && flaky.attempts > 8,
                "flaky calls all succeed, some after retries",
            ),
            (
                down.refused_by_breaker >= 1,
                "the breaker opens and refuses calls while the service is down",
            ),
            (
                recovered.ok == 4,
                "calls succeed again once the service recovers",
            ),
            (
                breaker.state() == BreakerState::Disabled,
                "the breaker was disabled by hand",
            ),
            (
                hanging.attempt_timeouts == 1 && hanging.attempts >= 2,
                "hanging attempts time out and are retried",
            ),
        ];
        println!();
        for (ok, what) in checks {
            println!("{} {what}", if ok { "ok  " } else { "FAIL" });
        }
        if checks.iter().any(|(ok, _)| !ok) {
            return Err("smoke test failed".into());
        }
        println!("smoke test passed");
    }
    Ok(())
}
