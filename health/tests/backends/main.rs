//! Built-in checks against real servers from the testkit: pass when up, fail within
//! the check timeout when stopped, pass again after a restart.

use std::time::{Duration, Instant};

use keel_health::checks::{PostgresCheck, RedisCheck};
use keel_health::{HealthRegistry, Registration, Status};
use keel_testkit::{PostgresServer, RedisServer};

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
    let client = redis::Client::open(redis.url()).unwrap();
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_number_of_retries(1)
        .set_connection_timeout(Some(Duration::from_millis(200)))
        .set_response_timeout(Some(Duration::from_millis(300)));
    let connection = redis::aio::ConnectionManager::new_with_config(client, config)
        .await
        .unwrap();
    let registry = HealthRegistry::builder()
        .cache_ttl(Duration::ZERO)
        .register(Registration::new("redis", RedisCheck::new(connection)).timeout(CHECK_TIMEOUT))
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
