//! Each error keeps its source chain and answers keel-resilience's `Classify` rightly.

use std::error::Error as _;
use std::time::Duration;

use keel_cache_layers::{Cache, CacheError, L2Failure};
use keel_resilience::{Classified, Classify, ErrorClass};

fn cache() -> Cache<String> {
    Cache::<String>::builder("errors").build().unwrap()
}

#[tokio::test]
async fn a_loader_error_is_the_source_and_gives_its_class() {
    let cache = cache();
    // An I/O error: its own class (a reset connection is transient).
    let error = cache
        .get_or_load("reset", || async {
            Err::<String, _>(std::io::Error::from(std::io::ErrorKind::ConnectionReset))
        })
        .await
        .unwrap_err();
    assert_eq!(error.to_string(), "the loader for this key failed");
    let source = error.source().expect("the loader's error is the source");
    assert!(source.downcast_ref::<std::io::Error>().is_some());
    assert_eq!(error.class(), ErrorClass::Transient);
    assert!(error.is_loader() && !error.is_timeout() && !error.is_unavailable());
    assert_eq!(
        error.loader_error_as::<std::io::Error>().unwrap().kind(),
        std::io::ErrorKind::ConnectionReset
    );

    // A classified error (Graph's 429 with Retry-After): the class and the delay come
    // through, and the typed error is reachable without a downcast.
    let throttled = ErrorClass::Throttled {
        retry_after: Some(Duration::from_secs(7)),
    };
    let error = cache
        .get_or_load("throttled", move || async move {
            Err::<String, _>(Classified::new(throttled, std::io::Error::other("429")))
        })
        .await
        .unwrap_err();
    assert_eq!(error.class(), throttled);
    assert_eq!(error.class().retry_after(), Some(Duration::from_secs(7)));
    assert_eq!(
        error
            .loader_error_as::<std::io::Error>()
            .unwrap()
            .to_string(),
        "429"
    );

    // A permanent one is not retried by a policy around the cache.
    let error = cache
        .get_or_load("gone", || async {
            Err::<String, _>(Classified::new(
                ErrorClass::Permanent,
                "404 from the backend",
            ))
        })
        .await
        .unwrap_err();
    assert_eq!(error.class(), ErrorClass::Permanent);
    // Unclassified: transient (a dependency failed).
    let error = cache
        .get_or_load("plain", || async { Err::<String, _>("no idea") })
        .await
        .unwrap_err();
    assert_eq!(error.class(), ErrorClass::Transient);
    assert_eq!(error.loader_error().unwrap().to_string(), "no idea");
}

#[tokio::test]
async fn cache_side_errors_are_classified() {
    assert_eq!(CacheError::Absent.class(), ErrorClass::Permanent);
    assert_eq!(CacheError::LoaderPanicked.class(), ErrorClass::Permanent);
    assert_eq!(CacheError::ShutDown.class(), ErrorClass::Permanent);
    let timeout = CacheError::Timeout {
        after: Duration::from_secs(1),
    };
    assert_eq!(timeout.class(), ErrorClass::Transient);
    assert!(timeout.is_timeout());
    let unavailable = CacheError::L2Unavailable(L2Failure::Timeout(Duration::from_millis(250)));
    assert!(unavailable.is_unavailable() && unavailable.is_timeout());
    assert_eq!(unavailable.class(), ErrorClass::Transient);
    assert_eq!(
        unavailable.source().unwrap().to_string(),
        "Redis did not answer within 250ms"
    );
    let invalid = Cache::<String>::builder("bad namespace!")
        .build()
        .unwrap_err();
    assert_eq!(invalid.class(), ErrorClass::Permanent);
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_l2_keeps_redis_error_in_the_chain() {
    use keel_cache_layers::RedisL2;
    // Not a Redis URL: permanent, Redis's error as the source.
    let setup = RedisL2::single("http://not-redis").unwrap_err();
    assert_eq!(setup.to_string(), "could not set up the Redis L2");
    assert!(setup.source().is_some());
    assert_eq!(setup.class(), ErrorClass::Permanent);

    // A server that stops: the change is applied locally, and the error says why, down
    // to Redis's own error.
    let mut server = keel_testkit::RedisServer::start().unwrap();
    let l2 = RedisL2::single(&server.url()).unwrap();
    let cache = Cache::<String>::builder("errors").l2(l2).build().unwrap();
    crate::support::connected(&cache).await;
    server.stop();
    let error = cache.insert("k", "v".into()).await.unwrap_err();
    assert!(error.is_unavailable(), "{error:?}");
    assert_eq!(error.class(), ErrorClass::Transient);
    let failure = error
        .source()
        .and_then(|s| s.downcast_ref::<L2Failure>())
        .expect("the L2 failure is the source");
    match failure {
        L2Failure::Redis(redis) => assert!(!redis.to_string().is_empty()),
        L2Failure::Timeout(_) | L2Failure::BreakerOpen => {}
        other => panic!("{other:?}"),
    }
    // The message is the cache's; the cause is one level down, not repeated.
    assert!(!error.to_string().contains(&failure.to_string()));
}

#[cfg(feature = "problem")]
#[tokio::test]
async fn cache_errors_become_problems() {
    use keel_observability::{ErrorCode, IntoProblem as _};
    let cache = cache();
    let throttled = ErrorClass::Throttled {
        retry_after: Some(Duration::from_millis(2500)),
    };
    let error = cache
        .get_or_load("throttled", move || async move {
            Err::<String, _>(Classified::new(throttled, std::io::Error::other("429")))
        })
        .await
        .unwrap_err();
    let problem = error.to_problem();
    assert_eq!(problem.code(), ErrorCode::RATE_LIMITED);
    let response = problem.to_response();
    assert_eq!(response.headers()["retry-after"], "3");
    // The loader's message stays in the logs, out of the body.
    let failed = cache
        .get_or_load("db", || async {
            Err::<String, _>(std::io::Error::other("replica db-7.internal is read-only"))
        })
        .await
        .unwrap_err();
    assert_eq!(failed.to_problem().code(), ErrorCode::EXT_DEPENDENCY_FAILED);
    assert!(
        !String::from_utf8(failed.to_problem().to_json())
            .unwrap()
            .contains("db-7")
    );
    assert_eq!(
        CacheError::Absent.to_problem().code(),
        ErrorCode::RES_NOT_FOUND
    );
}
