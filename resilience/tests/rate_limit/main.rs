//! Rate limiters: in-process, keyed with bounded memory, and shared in a real Redis.

use std::time::{Duration, Instant};

use keel_resilience::keyed::KeyedRegistry;
use keel_resilience::rate_limit::{
    KeyedRateLimiter, RateLimiter, RedisRateLimitError, RedisRateLimiter, quota,
};
use keel_resilience::{Classify, ErrorClass};
use keel_testkit::RedisServer;

#[tokio::test]
async fn local_limiter_allows_its_burst_then_waits() {
    let limiter = RateLimiter::new("local", quota(100, 3));
    for _ in 0..3 {
        limiter.check().unwrap();
    }
    let refused = limiter.check().unwrap_err();
    assert!(
        refused.retry_after() <= Duration::from_millis(10),
        "{refused}"
    );
    assert!(matches!(
        refused.class(),
        ErrorClass::Throttled {
            retry_after: Some(_)
        }
    ));
    // acquire waits for the next slot when the wait is short enough...
    let start = Instant::now();
    limiter.acquire(Duration::from_millis(50)).await.unwrap();
    assert!(start.elapsed() <= Duration::from_millis(40));
    // ...and refuses at once when it is not.
    let slow = RateLimiter::new("slow", quota(1, 1));
    slow.check().unwrap();
    let start = Instant::now();
    assert!(slow.acquire(Duration::from_millis(10)).await.is_err());
    assert!(start.elapsed() < Duration::from_millis(10));
}

#[test]
fn a_million_distinct_keys_stay_within_the_bound() {
    let registry = KeyedRegistry::new(10_000, Duration::from_secs(600), |_key: &u64| {
        RateLimiter::new("per-key", quota(10, 10))
    });
    for key in 0..1_000_000u64 {
        registry.get(&key).check().unwrap();
    }
    registry.sync();
    assert!(registry.len() <= 10_000, "{} entries held", registry.len());
    assert!(
        registry.len() >= 9_000,
        "the bound is used: {}",
        registry.len()
    );
}

#[test]
fn idle_keys_are_forgotten() {
    let registry = KeyedRegistry::new(100, Duration::from_millis(50), |_key: &&str| 0u8);
    registry.get(&"a");
    registry.sync();
    assert_eq!(registry.len(), 1);
    std::thread::sleep(Duration::from_millis(120));
    registry.sync();
    assert_eq!(registry.len(), 0);
    assert!(registry.peek(&"a").is_none());
}

#[test]
fn keyed_limiter_limits_keys_separately() {
    let limiter = KeyedRateLimiter::new("tenant", quota(1, 2), 1000, Duration::from_secs(60));
    for tenant in ["contoso", "fabrikam"] {
        limiter.check(&tenant).unwrap();
        limiter.check(&tenant).unwrap();
        assert!(limiter.check(&tenant).is_err(), "{tenant} over its burst");
    }
}

async fn connect(redis: &RedisServer) -> redis::aio::ConnectionManager {
    let client = redis::Client::open(redis.url()).unwrap();
    // Short timeouts and one reconnect attempt, so an outage shows up in milliseconds.
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(50))
        .set_connection_timeout(Some(Duration::from_millis(200)))
        .set_response_timeout(Some(Duration::from_millis(500)));
    redis::aio::ConnectionManager::new_with_config(client, config)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_clients_sharing_redis_admit_no_more_than_the_limit() {
    let redis = RedisServer::start().unwrap();
    let (per_second, burst) = (40u32, 5u32);
    let window = Duration::from_millis(1500);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let limiter = RedisRateLimiter::new(connect(&redis).await, "shared", per_second, burst);
        tasks.push(tokio::spawn(async move {
            let mut admitted = 0u32;
            // Bounded: stops by itself when the window ends.
            while start.elapsed() < window {
                match limiter.check("tenant-a").await {
                    Ok(()) => admitted += 1,
                    Err(RedisRateLimitError::Limited(_)) => {}
                    Err(other) => panic!("{other}"),
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            admitted
        }));
    }
    let mut total = 0;
    for task in tasks {
        total += task.await.unwrap();
    }
    let elapsed = start.elapsed().as_secs_f64();
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let ceiling = burst + (f64::from(per_second) * elapsed).ceil() as u32;
    assert!(
        total <= ceiling,
        "{total} admitted, the limit allows {ceiling}"
    );
    assert!(
        total >= ceiling * 3 / 4,
        "the limit is used: {total} of {ceiling}"
    );
}

#[tokio::test]
async fn redis_limiter_burst_retry_after_and_separate_keys() {
    let redis = RedisServer::start().unwrap();
    let limiter = RedisRateLimiter::new(connect(&redis).await, "burst", 10, 3);
    for _ in 0..3 {
        limiter.check("k").await.unwrap();
    }
    let Err(RedisRateLimitError::Limited(limited)) = limiter.check("k").await else {
        panic!("the 4th call passed a burst of 3");
    };
    assert!(
        limited.retry_after() > Duration::ZERO
            && limited.retry_after() <= Duration::from_millis(100)
    );
    limiter.check("other").await.unwrap();
    // The key expires once it no longer constrains anything.
    let ttl = redis
        .command(&["PTTL", "keel:ratelimit:burst:k"])
        .unwrap()
        .as_integer()
        .unwrap();
    assert!(ttl > 0 && ttl <= 302, "ttl {ttl} ms");
}

#[tokio::test]
async fn redis_down_fails_closed_or_open_as_configured() {
    let mut redis = RedisServer::start().unwrap();
    let connection = connect(&redis).await;
    let closed = RedisRateLimiter::new(connection.clone(), "down", 10, 1);
    let open = RedisRateLimiter::new(connection, "down-open", 10, 1).fail_open(true);
    redis.stop();
    let error = closed.check("k").await.unwrap_err();
    assert!(
        matches!(error, RedisRateLimitError::Redis { .. }),
        "{error}"
    );
    assert_eq!(error.class(), ErrorClass::Transient);
    assert!(open.check("k").await.is_ok());
    // And back: the connection manager reconnects by itself.
    redis.restart().unwrap();
    let mut recovered = false;
    for _ in 0..50 {
        if closed.check("k").await.is_ok() {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(recovered, "the limiter works again once Redis is back");
}
