//! The publisher's metrics: each check's status and duration, as gauges.

use std::time::Duration;

use keel_health::{CheckResult, HealthRegistry, Registration, check_fn};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};

#[test]
fn the_publisher_exports_status_and_duration_per_check() {
    // A recorder of this test's own, in effect on this thread, and a runtime on this
    // thread alone (the publisher and the checks run on it): the test sees every gauge
    // it causes and none from tests running beside it, without a global recorder.
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    metrics::with_local_recorder(&recorder, || runtime.block_on(publish_once()));

    let gauges: Vec<(String, String, f64)> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter_map(|(key, _, _, value)| {
            let DebugValue::Gauge(value) = value else {
                return None;
            };
            let check = key
                .key()
                .labels()
                .find(|l| l.key() == "check")?
                .value()
                .to_owned();
            Some((key.key().name().to_owned(), check, value.into_inner()))
        })
        .collect();
    let gauge = |name: &str, check: &str| {
        gauges
            .iter()
            .find(|(n, c, _)| n == name && c == check)
            .map(|(_, _, v)| *v)
            .unwrap_or_else(|| panic!("no {name} for {check} in {gauges:?}"))
    };
    assert_eq!(gauge("health_check_status", "db"), 1.0);
    assert_eq!(gauge("health_check_status", "cache"), 0.5);
    assert_eq!(gauge("health_check_status", "queue"), 0.0);
    let queue_seconds = gauge("health_check_duration_seconds", "queue");
    assert!((0.03..1.0).contains(&queue_seconds), "{queue_seconds}");
}

/// Registers a passing, a warning and a failing check and lets the publisher run them
/// once.
async fn publish_once() {
    let registry = HealthRegistry::builder()
        .cache_ttl(Duration::ZERO)
        .register(Registration::new(
            "db",
            check_fn(|| async { CheckResult::pass() }),
        ))
        .register(
            Registration::new("cache", check_fn(|| async { CheckResult::warn("slow") }))
                .non_critical(),
        )
        .register(Registration::new(
            "queue",
            check_fn(|| async {
                tokio::time::sleep(Duration::from_millis(30)).await;
                CheckResult::fail("down")
            }),
        ))
        .build();
    let publisher = registry.spawn_publisher(Duration::from_secs(60));
    // The first tick runs at once; wait for it to finish.
    tokio::time::sleep(Duration::from_millis(200)).await;
    publisher.abort();
}
