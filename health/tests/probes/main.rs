//! Probe semantics: statuses and bodies, concurrency, timeouts, panics, single flight,
//! startup, and draining on shutdown.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use keel_health::checks::{BreakerCheck, HttpCheck};
use keel_health::{
    CheckResult, HealthRegistry, Registration, Status, Tag, check_fn, health_router,
};
use serde_json::Value;
use tower::ServiceExt;

fn router(registry: &HealthRegistry, details: bool) -> axum::Router {
    health_router(
        registry.clone(),
        if details {
            keel_health::Details::Shown
        } else {
            keel_health::Details::Hidden
        },
    )
}

async fn get(app: &axum::Router, path: &str) -> (StatusCode, axum::http::HeaderMap, Value) {
    let response = app
        .clone()
        .oneshot(Request::get(path).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    (
        parts.status,
        parts.headers,
        serde_json::from_slice(&bytes).unwrap(),
    )
}

fn fixed(result: CheckResult) -> impl keel_health::HealthCheck {
    check_fn(move || {
        let result = result.clone();
        async move { result }
    })
}

#[tokio::test]
async fn bodies_follow_the_health_check_draft_and_statuses_map_to_http() {
    let registry = HealthRegistry::builder()
        .started()
        .register(Registration::new(
            "db",
            fixed(CheckResult::pass().observed(1.5, "ms")),
        ))
        .register(Registration::new("cache", fixed(CheckResult::fail("refused"))).non_critical())
        .build();
    let app = router(&registry, true);
    let (status, headers, body) = get(&app, "/health").await;
    assert_eq!(
        status,
        StatusCode::OK,
        "a non-critical failure is a warning: {body}"
    );
    assert_eq!(headers["content-type"], "application/health+json");
    assert_eq!(headers["cache-control"], "no-store");
    assert_eq!(body["status"], "warn");
    let db = &body["checks"]["db:status"][0];
    assert_eq!(db["componentId"], "db");
    assert_eq!(db["componentType"], "component");
    assert_eq!(db["status"], "pass");
    assert_eq!(db["observedValue"], 1.5);
    assert_eq!(db["observedUnit"], "ms");
    let time = db["time"].as_str().unwrap();
    assert!(
        time.ends_with('Z') && time.contains('T'),
        "RFC 3339: {time}"
    );
    assert_eq!(body["checks"]["cache:status"][0]["output"], "refused");

    // Details off: status only.
    let (_, _, public) = get(&router(&registry, false), "/health").await;
    assert_eq!(public, serde_json::json!({ "status": "warn" }));

    let failing = HealthRegistry::builder()
        .register(Registration::new("db", fixed(CheckResult::fail("down"))))
        .build();
    let (status, _, body) = get(&router(&failing, true), "/health/ready").await;
    assert_eq!(
        (status, body["status"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("fail"))
    );
}

#[tokio::test(start_paused = true)]
async fn a_slow_check_does_not_delay_the_others_and_timeouts_fail() {
    let slow = check_fn(|| async {
        tokio::time::sleep(Duration::from_millis(800)).await;
        CheckResult::pass()
    });
    let stuck = check_fn(|| async {
        tokio::time::sleep(Duration::from_secs(3600)).await;
        CheckResult::pass()
    });
    let quick = check_fn(|| async {
        tokio::time::sleep(Duration::from_millis(10)).await;
        CheckResult::pass()
    });
    let registry = HealthRegistry::builder()
        .register(Registration::new("slow", slow))
        .register(Registration::new("stuck", stuck).timeout(Duration::from_secs(1)))
        .register(Registration::new("quick", quick))
        .build();
    let start = tokio::time::Instant::now();
    let report = registry.run(None).await;
    assert_eq!(
        start.elapsed(),
        Duration::from_secs(1),
        "the slowest (the timeout), not the sum"
    );
    let stuck = report.checks().iter().find(|c| c.name == "stuck").unwrap();
    assert_eq!(stuck.result.status(), Status::Fail);
    assert_eq!(stuck.result.output(), Some("timed out after 1s"));
    assert_eq!(report.status(), Status::Fail);
}

#[tokio::test]
async fn a_panicking_check_fails_without_taking_the_service_down() {
    let registry = HealthRegistry::builder()
        .started()
        .register(Registration::new(
            "buggy",
            check_fn(|| async { panic!("bug in a check") }),
        ))
        .build();
    let app = router(&registry, true);
    let (status, _, body) = get(&app, "/health/ready").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        body["checks"]["buggy:status"][0]["output"],
        "the check panicked"
    );
    let (status, _, _) = get(&app, "/health/live").await;
    assert_eq!(status, StatusCode::OK, "the service still answers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_probes_run_each_check_once_per_ttl() {
    let runs = Arc::new(AtomicU32::new(0));
    let counter = runs.clone();
    let registry = HealthRegistry::builder()
        .cache_ttl(Duration::from_millis(300))
        .register(Registration::new(
            "db",
            check_fn(move || {
                counter.fetch_add(1, Ordering::SeqCst);
                async {
                    // A dependency that takes a while, so probes pile up on the run.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    CheckResult::pass()
                }
            }),
        ))
        .build();
    let app = router(&registry, false);
    let burst = |app: axum::Router| async move {
        let probes: Vec<_> = (0..1000)
            .map(|_| {
                let app = app.clone();
                tokio::spawn(async move { get(&app, "/health/ready").await.0 })
            })
            .collect();
        for probe in probes {
            assert_eq!(probe.await.unwrap(), StatusCode::OK);
        }
    };
    burst(app.clone()).await;
    assert_eq!(runs.load(Ordering::SeqCst), 1, "one run for 1000 probes");
    tokio::time::sleep(Duration::from_millis(350)).await;
    burst(app).await;
    assert_eq!(
        runs.load(Ordering::SeqCst),
        2,
        "one more run once the TTL passed"
    );
}

#[tokio::test(start_paused = true)]
async fn readiness_drains_on_shutdown_while_liveness_stays_up() {
    let registry = HealthRegistry::builder()
        .started()
        .register(Registration::new("db", fixed(CheckResult::pass())))
        .build();
    let app = router(&registry, true);
    assert_eq!(get(&app, "/health/ready").await.0, StatusCode::OK);
    let draining = {
        let registry = registry.clone();
        tokio::spawn(async move { registry.drain(Duration::from_secs(5)).await })
    };
    tokio::task::yield_now().await;
    let (status, _, body) = get(&app, "/health/ready").await;
    assert_eq!(
        status,
        StatusCode::SERVICE_UNAVAILABLE,
        "at once, not after the drain period"
    );
    assert!(body["output"].as_str().unwrap().starts_with("draining"));
    assert_eq!(get(&app, "/health/live").await.0, StatusCode::OK);
    let start = tokio::time::Instant::now();
    draining.await.unwrap();
    assert_eq!(
        start.elapsed(),
        Duration::from_secs(5),
        "drain waits its period"
    );
}

#[tokio::test]
async fn startup_fails_until_marked_done_and_runs_only_startup_checks() {
    let registry = HealthRegistry::builder()
        .register(Registration::new("migrations", fixed(CheckResult::pass())).tags([Tag::Startup]))
        .register(Registration::new("db", fixed(CheckResult::fail("down"))))
        .build();
    let app = router(&registry, true);
    let (status, _, body) = get(&app, "/health/startup").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body["output"].as_str().unwrap().starts_with("starting"));
    registry.mark_started();
    let (status, _, body) = get(&app, "/health/startup").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        body["checks"].get("db:status").is_none(),
        "the readiness check is not run"
    );
}

#[tokio::test]
async fn http_and_breaker_checks() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let upstream = axum::Router::new()
        .route("/ok", axum::routing::get(|| async { "ok" }))
        .route(
            "/broken",
            axum::routing::get(|| async { StatusCode::INTERNAL_SERVER_ERROR }),
        )
        .route(
            "/slow",
            axum::routing::get(|| async {
                tokio::time::sleep(Duration::from_millis(120)).await;
                "late"
            }),
        );
    tokio::spawn(async move { axum::serve(listener, upstream).await });
    let client = reqwest::Client::new();
    let check = |path: &str| HttpCheck::new(client.clone(), format!("http://{addr}{path}"));
    use keel_health::HealthCheck;
    assert_eq!(check("/ok").check().await.status(), Status::Pass);
    let broken = check("/broken").check().await;
    assert_eq!(broken.status(), Status::Fail);
    assert!(broken.output().unwrap().contains("500"));
    let slow = check("/slow")
        .warn_above(Duration::from_millis(50))
        .check()
        .await;
    assert_eq!(slow.status(), Status::Warn, "{slow:?}");
    let gone = HttpCheck::new(client.clone(), "http://127.0.0.1:1/nothing")
        .check()
        .await;
    assert_eq!(gone.status(), Status::Fail);
    assert!(
        !gone.output().unwrap().contains("127.0.0.1:1"),
        "no URL in the output"
    );

    let breaker = Arc::new(keel_resilience::breaker::CircuitBreaker::new(
        keel_resilience::breaker::CircuitBreakerConfig::standard("upstream"),
    ));
    let breaker_check = BreakerCheck::new(breaker.clone());
    assert_eq!(breaker_check.check().await.status(), Status::Pass);
    breaker.force_open();
    assert_eq!(breaker_check.check().await.status(), Status::Fail);
}

#[tokio::test(start_paused = true)]
async fn the_publisher_runs_the_checks_on_its_interval() {
    let runs = Arc::new(AtomicU32::new(0));
    let counter = runs.clone();
    let registry = HealthRegistry::builder()
        .cache_ttl(Duration::ZERO)
        .register(Registration::new(
            "db",
            check_fn(move || {
                counter.fetch_add(1, Ordering::SeqCst);
                async { CheckResult::pass() }
            }),
        ))
        .build();
    let publisher = registry.spawn_publisher(Duration::from_secs(10));
    // Ticks at 0, 10, 20 and 30 s.
    tokio::time::sleep(Duration::from_secs(35)).await;
    publisher.abort();
    assert_eq!(runs.load(Ordering::SeqCst), 4);
}

/// A check runs on its own task, in the probe's span (issue 13: work Keel spawns keeps
/// the caller's span).
#[tokio::test(flavor = "current_thread")]
async fn a_check_runs_in_the_callers_span() {
    use tracing::Instrument as _;
    let _guard = tracing::subscriber::set_default(tracing_subscriber::registry());
    let registry = HealthRegistry::builder()
        .started()
        .register(Registration::new(
            "span",
            check_fn(|| async {
                let name = tracing::Span::current()
                    .metadata()
                    .map(|m| m.name().to_owned())
                    .unwrap_or_default();
                if name == "readiness_probe" {
                    CheckResult::pass()
                } else {
                    CheckResult::fail(format!("ran in span {name:?}"))
                }
            }),
        ))
        .build();
    let report = registry
        .run(None)
        .instrument(tracing::info_span!("readiness_probe"))
        .await;
    assert_eq!(report.status(), Status::Pass, "{report:?}");
}

/// Draining and startup refusals apply to every way of asking (issue 13): `run` with the
/// `Ready` tag no longer runs the checks of a draining service.
#[tokio::test]
async fn refusals_apply_to_every_readiness_path() {
    let runs = Arc::new(AtomicU32::new(0));
    let counted = runs.clone();
    let registry = HealthRegistry::builder()
        .register(
            Registration::new(
                "db",
                check_fn(move || {
                    counted.fetch_add(1, Ordering::SeqCst);
                    async { CheckResult::pass() }
                }),
            )
            .tags([Tag::Ready, Tag::Startup]),
        )
        .build();
    // Not started: startup refuses, whichever way.
    assert_eq!(
        registry.run(Some(&Tag::Startup)).await.status(),
        Status::Fail
    );
    assert_eq!(registry.startup().await.status(), Status::Fail);
    registry.mark_started();
    assert_eq!(registry.run(Some(&Tag::Ready)).await.status(), Status::Pass);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    let draining = {
        let registry = registry.clone();
        tokio::spawn(async move { registry.drain(Duration::from_millis(200)).await })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(registry.run(Some(&Tag::Ready)).await.status(), Status::Fail);
    assert_eq!(registry.readiness().await.status(), Status::Fail);
    let app = router(&registry, true);
    let (status, _, _) = get(&app, "/health/ready").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    draining.await.unwrap();
}

/// Health follows tokio's clock: under paused time a result is reused for exactly the
/// cache TTL and a check's duration is the time tokio says it took, with no real waiting.
#[tokio::test(start_paused = true)]
async fn cached_results_and_durations_follow_tokio_time() {
    let runs = Arc::new(AtomicU32::new(0));
    let counter = runs.clone();
    let registry = HealthRegistry::builder()
        .started()
        .cache_ttl(Duration::from_secs(30))
        .register(
            Registration::new(
                "db",
                check_fn(move || {
                    counter.fetch_add(1, Ordering::SeqCst);
                    async {
                        tokio::time::sleep(Duration::from_millis(1_500)).await;
                        CheckResult::pass()
                    }
                }),
            )
            .timeout(Duration::from_secs(5)),
        )
        .build();
    let app = router(&registry, true);
    let real = std::time::Instant::now();
    get(&app, "/health/ready").await;
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    let took = registry.readiness().await.checks()[0].duration;
    assert_eq!(runs.load(Ordering::SeqCst), 1, "the cached result");
    assert!(
        (Duration::from_millis(1_500)..Duration::from_millis(1_510)).contains(&took),
        "{took:?}"
    );
    // The TTL counts from when the result came in.
    tokio::time::advance(Duration::from_millis(29_900)).await;
    get(&app, "/health/ready").await;
    assert_eq!(runs.load(Ordering::SeqCst), 1, "still fresh");
    tokio::time::advance(Duration::from_millis(200)).await;
    get(&app, "/health/ready").await;
    assert_eq!(runs.load(Ordering::SeqCst), 2, "stale after the TTL");
    assert!(
        real.elapsed() < Duration::from_secs(5),
        "no real waiting under paused time"
    );
}

/// The headers rendered once with a body (type, no-store, length) stay right on cached
/// answers, on a refusal while draining, and on HEAD.
#[tokio::test]
async fn cached_answers_carry_their_own_length_and_headers() {
    let registry = HealthRegistry::builder()
        .started()
        .register(Registration::new("db", fixed(CheckResult::pass())))
        .build();
    let app = router(&registry, true);
    for _ in 0..2 {
        let response = app
            .clone()
            .oneshot(Request::get("/health/ready").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let length: usize = response.headers()["content-length"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(response.headers()["cache-control"], "no-store");
        assert_eq!(
            response.headers()["content-type"],
            "application/health+json"
        );
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body.len(), length);
    }
    let head = app
        .clone()
        .oneshot(Request::head("/health/ready").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(head.status(), StatusCode::OK);
    registry.begin_drain();
    let (status, headers, body) = get(&app, "/health/ready").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers["content-type"], "application/health+json");
    assert_eq!(
        headers["content-length"].to_str().unwrap(),
        body.to_string().len().to_string()
    );
}
