//! The cache's `metrics` output.

use std::time::Duration;

use keel_cache_layers::{Cache, EntryOptions, ManualClock};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};

#[test]
fn hits_misses_loads_latency_evictions_and_stale_values_are_exported() {
    // A recorder of this test's own, in effect on this thread while the cache is built
    // (its metric handles are registered then) and used on a runtime on this thread
    // alone: the test sees everything the cache records and nothing from tests running
    // beside it, without a global recorder.
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let l1_hits = metrics::with_local_recorder(&recorder, || runtime.block_on(exercise_a_cache()));

    let snapshot = snapshotter.snapshot().into_vec();
    let value = |name: &str, label: Option<(&str, &str)>| -> f64 {
        snapshot
            .iter()
            .filter(|(key, _, _, _)| {
                let key = key.key();
                key.name() == name
                    && key
                        .labels()
                        .any(|l| l.key() == "cache" && l.value() == "orders")
                    && label
                        .is_none_or(|(k, v)| key.labels().any(|l| l.key() == k && l.value() == v))
            })
            .map(|(_, _, _, value)| match value {
                DebugValue::Counter(n) => *n as f64,
                DebugValue::Histogram(samples) => samples.len() as f64,
                DebugValue::Gauge(g) => g.into_inner(),
            })
            .sum()
    };
    assert_eq!(value("keel_cache_hits_total", Some(("layer", "l1"))), 1.0);
    assert_eq!(value("keel_cache_misses_total", Some(("layer", "l1"))), 2.0);
    assert_eq!(
        value("keel_cache_loads_total", Some(("outcome", "ok"))),
        1.0
    );
    assert_eq!(
        value("keel_cache_loads_total", Some(("outcome", "error"))),
        1.0
    );
    assert_eq!(value("keel_cache_load_duration_seconds", None), 2.0);
    assert_eq!(value("keel_cache_stale_served_total", None), 1.0);
    assert!(value("keel_cache_evictions_total", Some(("cause", "size"))) >= 1.0);
    assert_eq!(l1_hits, 1);
}

/// One load, one hit, a stale value served after a failed load, and evictions; returns
/// the cache's own count of L1 hits.
async fn exercise_a_cache() -> u64 {
    let clock = ManualClock::new(1_000_000);
    let cache = Cache::<String>::builder("orders")
        .clock(clock.clone())
        .l1_capacity(1)
        .entry_options(EntryOptions::new(Duration::from_secs(1)).fail_safe(Duration::from_secs(60)))
        .build()
        .unwrap();
    cache
        .get_or_load("a", || async { Ok::<_, std::io::Error>("A".to_owned()) })
        .await
        .unwrap(); // L1 miss, load
    cache
        .get_or_load("a", || async {
            Ok::<_, std::io::Error>("unused".to_owned())
        })
        .await
        .unwrap(); // L1 hit
    clock.advance(Duration::from_secs(2));
    let stale = cache
        .get_or_load("a", || async {
            Err::<String, _>(std::io::Error::other("down"))
        })
        .await
        .unwrap(); // miss (stale), failed load, stale served
    assert_eq!(*stale, "A");
    // Capacity 1: more keys evict.
    for key in ["b", "c", "d", "e"] {
        cache.insert(key, key.to_owned()).await.unwrap();
    }
    let _ = cache.l1_entry_count(); // runs moka's pending maintenance
    cache.stats().l1_hits
}
