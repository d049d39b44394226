//! Built-in checks against real servers from the testkit: pass when up, fail within
//! the check timeout when stopped, pass again after a restart.

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use keel_health::checks::{PostgresCheck, RedisCheck};
use keel_health::{HealthRegistry, Registration, Status, health_router};
use keel_testkit::{PostgresServer, RedisServer};
use tower::ServiceExt;

const CHECK_TIMEOUT: Duration = Duration::from_millis(500);

/// With the server stopped: the check fails within its timeout, and its output does not
/// contain `secret` (an address or connection string).
async fn fails_quickly_without_leaking(registry: &HealthRegistry, secret: &str) {
    let start = Instant::now();
    let report = registry.run(None).await;
    let took = start.elapsed();
    let output = report.checks()[0]
        .result
        .output()
        .unwrap_or_default()
        .to_owned();
    assert_eq!(report.status(), Status::Fail, "{output}");
    assert!(
        took <= CHECK_TIMEOUT + Duration::from_millis(200),
        "failed within the timeout: {took:?}"
    );
    assert!(
        !output.contains(secret),
        "{secret} leaked into the output: {output}"
    );
}

/// Polls until the check passes again (bounded: 10 s).
async fn passes_again(registry: &HealthRegistry) -> bool {
    for _ in 0..100 {
        if registry.run(None).await.status() == Status::Pass {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_check_follows_the_server() {
    let mut redis = RedisServer::start().unwrap();
    let check = RedisCheck::new(redis::Client::open(redis.url()).unwrap())
        .connection_timeout(Duration::from_millis(200))
        .response_timeout(Duration::from_millis(300));
    let registry = HealthRegistry::builder()
        .cache_ttl(Duration::ZERO)
        .register(Registration::new("redis", check).timeout(CHECK_TIMEOUT))
        .build();

    let report = registry.run(None).await;
    assert_eq!(report.status(), Status::Pass);
    let json = report.to_json(true);
    assert_eq!(
        json["checks"]["redis:responseTime"][0]["componentType"],
        "datastore"
    );
    assert_eq!(
        json["checks"]["redis:responseTime"][0]["observedUnit"],
        "ms"
    );

    redis.stop();
    fails_quickly_without_leaking(&registry, "127.0.0.1").await;
    redis.restart().unwrap();
    assert!(passes_again(&registry).await, "passes once Redis is back");
}

/// `/health/ready`'s status code.
async fn readiness(app: &axum::Router) -> StatusCode {
    let request = Request::get("/health/ready").body(Body::empty()).unwrap();
    app.clone().oneshot(request).await.unwrap().status()
}

/// How long `/health/ready` takes to answer `want`, polled every 20 ms; gives up (and
/// returns what it waited) after 15 s, far beyond any bound asserted on the result.
async fn time_until(app: &axum::Router, want: StatusCode) -> Duration {
    let start = Instant::now();
    while readiness(app).await != want && start.elapsed() < Duration::from_secs(15) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    start.elapsed()
}

/// The promise on `RedisCheck`: readiness reflects Redis within the cache TTL plus
/// about a second, when Redis dies and when it comes back, after a short outage and
/// after a long one (a client's reconnect backoff grows with the outage: with
/// redis-rs's default `ConnectionManager` this took over 4 s after the 6 s outage).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_a_redis_restart_within_the_ttl() {
    const TTL: Duration = Duration::from_secs(1);
    const BOUND: Duration = Duration::from_secs(2); // TTL + 1 s
    let mut redis = RedisServer::start().unwrap();
    let check = RedisCheck::new(redis::Client::open(redis.url()).unwrap());
    let registry = HealthRegistry::builder()
        .started()
        .cache_ttl(TTL)
        .register(Registration::new("redis", check))
        .build();
    let app: axum::Router = health_router(registry, keel_health::Details::Hidden);
    assert_eq!(readiness(&app).await, StatusCode::OK);

    for outage in [Duration::from_millis(500), Duration::from_secs(6)] {
        redis.stop();
        let down = time_until(&app, StatusCode::SERVICE_UNAVAILABLE).await;
        assert!(
            down <= BOUND,
            "readiness took {down:?} to fail after Redis died"
        );
        tokio::time::sleep(outage.saturating_sub(down)).await;
        redis.restart().unwrap();
        let up = time_until(&app, StatusCode::OK).await;
        assert!(
            up <= BOUND,
            "readiness took {up:?} to pass after Redis came back from a {outage:?} outage"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_check_follows_the_server() {
    let mut pg = PostgresServer::start().unwrap();
    let mut config = deadpool_postgres::Config::new();
    config.url = Some(pg.url());
    config.connect_timeout = Some(Duration::from_millis(300));
    config.pool = Some(deadpool_postgres::PoolConfig {
        max_size: 4,
        timeouts: deadpool_postgres::Timeouts {
            wait: Some(Duration::from_millis(300)),
            create: Some(Duration::from_millis(300)),
            recycle: Some(Duration::from_millis(300)),
        },
        ..Default::default()
    });
    let pool = config
        .create_pool(
            Some(deadpool_postgres::Runtime::Tokio1),
            tokio_postgres::NoTls,
        )
        .unwrap();
    let registry = HealthRegistry::builder()
        .cache_ttl(Duration::ZERO)
        .register(Registration::new("postgres", PostgresCheck::new(pool)).timeout(CHECK_TIMEOUT))
        .build();

    assert_eq!(registry.run(None).await.status(), Status::Pass);

    pg.stop();
    fails_quickly_without_leaking(&registry, "postgres://").await;
    pg.restart().unwrap();
    assert!(
        passes_again(&registry).await,
        "passes once PostgreSQL is back"
    );
}
