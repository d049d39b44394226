//! L1-only behaviour: single-flight, negative caching, eager refresh, fail-safe, timeouts,
//! tags, warming. Expiry runs on a `ManualClock`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use keel_cache_layers::{Cache, CacheError, EntryOptions, ManualClock};

fn counted(
    count: &Arc<AtomicUsize>,
    value: &str,
) -> impl Future<Output = Result<String, std::io::Error>> + Send + use<> {
    let count = count.clone();
    let value = value.to_owned();
    async move {
        count.fetch_add(1, Ordering::SeqCst);
        Ok(value)
    }
}

async fn failing() -> Result<String, std::io::Error> {
    Err(std::io::Error::other("source down"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_share_one_load_and_one_error() {
    let cache = Cache::<String>::builder("local").build().unwrap();
    let loads = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..1_000 {
        let cache = cache.clone();
        let loads = loads.clone();
        tasks.push(tokio::spawn(async move {
            cache
                .get_or_load("k", move || async move {
                    loads.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Ok::<_, std::io::Error>("v".to_owned())
                })
                .await
        }));
    }
    for task in tasks {
        assert_eq!(*task.await.unwrap().unwrap(), "v");
    }
    assert_eq!(loads.load(Ordering::SeqCst), 1);

    // A failed load is shared by its waiters and not cached.
    let errors = futures_join(10, || {
        cache.get_or_load("bad", || async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            Err::<String, _>(std::io::Error::other("boom"))
        })
    })
    .await;
    assert!(errors.iter().all(|r| matches!(r, Err(e) if e.is_loader()
                && e.loader_error().is_some_and(|cause| cause.to_string() == "boom"))));
    let again = cache
        .get_or_load("bad", || async { Ok::<_, std::io::Error>("ok".to_owned()) })
        .await;
    assert_eq!(*again.unwrap(), "ok");
}

async fn futures_join<T, F, Fut>(n: usize, make: F) -> Vec<T>
where
    F: Fn() -> Fut,
    Fut: Future<Output = T>,
{
    let futures: Vec<_> = (0..n).map(|_| make()).collect();
    let mut out = Vec::new();
    // Start them all before awaiting any, so they overlap.
    let pinned: Vec<_> = futures.into_iter().map(Box::pin).collect();
    for f in pinned {
        out.push(f.await);
    }
    out
}

#[tokio::test]
async fn a_panicking_loader_is_an_error_and_the_key_recovers() {
    let cache = Cache::<String>::builder("local").build().unwrap();
    let result = cache
        .get_or_load("k", || async {
            if true {
                panic!("loader bug");
            }
            Ok::<String, std::io::Error>(String::new())
        })
        .await;
    assert!(matches!(result, Err(CacheError::LoaderPanicked)));
    let loads = Arc::new(AtomicUsize::new(0));
    let l = loads.clone();
    assert_eq!(
        *cache
            .get_or_load("k", move || counted(&l, "fine"))
            .await
            .unwrap(),
        "fine"
    );
}

#[tokio::test]
async fn absent_keys_are_cached_for_the_negative_ttl_only() {
    let clock = ManualClock::new(1_000_000);
    let cache = Cache::<String>::builder("local")
        .clock(clock.clone())
        .entry_options(
            EntryOptions::new(Duration::from_secs(60)).negative_ttl(Duration::from_secs(5)),
        )
        .build()
        .unwrap();
    let loads = Arc::new(AtomicUsize::new(0));
    for _ in 0..3 {
        let l = loads.clone();
        let found = cache
            .get_or_load_optional("ghost", move || async move {
                l.fetch_add(1, Ordering::SeqCst);
                Ok::<Option<String>, std::io::Error>(None)
            })
            .await
            .unwrap();
        assert!(found.is_none());
    }
    assert_eq!(loads.load(Ordering::SeqCst), 1, "absence is cached");
    assert!(matches!(
        cache
            .get_or_load("ghost", || async {
                Ok::<_, std::io::Error>("x".to_owned())
            })
            .await,
        Err(CacheError::Absent)
    ));
    clock.advance(Duration::from_secs(6));
    let l = loads.clone();
    let found = cache
        .get_or_load_optional("ghost", move || async move {
            l.fetch_add(1, Ordering::SeqCst);
            Ok::<_, std::io::Error>(Some("now here".to_owned()))
        })
        .await
        .unwrap();
    assert_eq!(found.as_deref().map(String::as_str), Some("now here"));
    assert_eq!(loads.load(Ordering::SeqCst), 2);

    // Without a negative TTL, absence is not cached.
    let plain = Cache::<String>::builder("local").build().unwrap();
    for _ in 0..2 {
        let l = loads.clone();
        let _ = plain
            .get_or_load_optional("ghost", move || async move {
                l.fetch_add(1, Ordering::SeqCst);
                Ok::<Option<String>, std::io::Error>(None)
            })
            .await;
    }
    assert_eq!(loads.load(Ordering::SeqCst), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eager_refresh_answers_at_once_and_reloads_in_the_background() {
    let clock = ManualClock::new(1_000_000);
    let cache = Cache::<String>::builder("local")
        .clock(clock.clone())
        .entry_options(EntryOptions::new(Duration::from_secs(10)).eager_refresh(0.5))
        .build()
        .unwrap();
    let loads = Arc::new(AtomicUsize::new(0));
    let l = loads.clone();
    assert_eq!(
        *cache
            .get_or_load("k", move || counted(&l, "v1"))
            .await
            .unwrap(),
        "v1"
    );
    clock.advance(Duration::from_secs(4));
    let l = loads.clone();
    assert_eq!(
        *cache
            .get_or_load("k", move || counted(&l, "never"))
            .await
            .unwrap(),
        "v1"
    );
    assert_eq!(
        loads.load(Ordering::SeqCst),
        1,
        "before the threshold nothing reloads"
    );

    clock.advance(Duration::from_secs(2)); // 60% of the TTL
    let l = loads.clone();
    let started = Instant::now();
    let answer = cache
        .get_or_load("k", move || async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            counted(&l, "v2").await
        })
        .await
        .unwrap();
    assert_eq!(*answer, "v1", "the caller is not made to wait");
    assert!(started.elapsed() < Duration::from_millis(150));
    wait_for(|| cache.peek("k").is_some_and(|v| *v == "v2")).await;
    assert_eq!(loads.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_safe_serves_the_last_good_value_with_throttled_retries_then_gives_up() {
    let clock = ManualClock::new(1_000_000);
    let cache = Cache::<String>::builder("local")
        .clock(clock.clone())
        .entry_options(
            EntryOptions::new(Duration::from_secs(1))
                .fail_safe(Duration::from_secs(60))
                .fail_safe_throttle(Duration::from_secs(5)),
        )
        .build()
        .unwrap();
    let loads = Arc::new(AtomicUsize::new(0));
    let l = loads.clone();
    cache
        .get_or_load("k", move || counted(&l, "good"))
        .await
        .unwrap();
    clock.advance(Duration::from_secs(2));
    assert!(
        cache.get("k").await.is_none(),
        "get serves only fresh values"
    );
    let attempts = Arc::new(AtomicUsize::new(0));
    let fail = |attempts: &Arc<AtomicUsize>| {
        let attempts = attempts.clone();
        move || {
            attempts.fetch_add(1, Ordering::SeqCst);
            failing()
        }
    };
    assert_eq!(
        *cache.get_or_load("k", fail(&attempts)).await.unwrap(),
        "good"
    );
    assert_eq!(cache.stats().stale_served, 1);
    // Within the throttle the failing source is left alone.
    clock.advance(Duration::from_secs(3));
    assert_eq!(
        *cache.get_or_load("k", fail(&attempts)).await.unwrap(),
        "good"
    );
    assert_eq!(attempts.load(Ordering::SeqCst), 1);
    clock.advance(Duration::from_secs(3));
    assert_eq!(
        *cache.get_or_load("k", fail(&attempts)).await.unwrap(),
        "good"
    );
    assert_eq!(attempts.load(Ordering::SeqCst), 2);
    // Past the fail-safe bound the error comes through.
    clock.advance(Duration::from_secs(61));
    let err = cache.get_or_load("k", fail(&attempts)).await.unwrap_err();
    assert!(err.is_loader(), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soft_timeout_serves_stale_and_hard_timeout_gives_up_while_the_load_completes() {
    let clock = ManualClock::new(1_000_000);
    let options = EntryOptions::new(Duration::from_secs(1))
        .fail_safe(Duration::from_secs(60))
        .soft_timeout(Duration::from_millis(50))
        .hard_timeout(Duration::from_millis(2_000));
    let cache = Cache::<String>::builder("local")
        .clock(clock.clone())
        .entry_options(options)
        .build()
        .unwrap();
    let loads = Arc::new(AtomicUsize::new(0));
    let l = loads.clone();
    cache
        .get_or_load("k", move || counted(&l, "old"))
        .await
        .unwrap();
    clock.advance(Duration::from_secs(2));
    let slow = |value: &'static str| {
        move || async move {
            tokio::time::sleep(Duration::from_millis(400)).await;
            Ok::<_, std::io::Error>(value.to_owned())
        }
    };
    let started = Instant::now();
    assert_eq!(*cache.get_or_load("k", slow("new")).await.unwrap(), "old");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(45) && waited < Duration::from_millis(300),
        "{waited:?}"
    );
    wait_for(|| cache.peek("k").is_some_and(|v| *v == "new")).await;

    // No stale value: the hard timeout applies, and the load still lands.
    let hard = EntryOptions::new(Duration::from_secs(10)).hard_timeout(Duration::from_millis(50));
    let started = Instant::now();
    let err = cache
        .get_or_load_with("other", &hard, slow("late"))
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err}");
    assert!(started.elapsed() < Duration::from_millis(300));
    wait_for(|| cache.peek("other").is_some_and(|v| *v == "late")).await;
}

#[tokio::test]
async fn tags_and_clear_drop_what_they_name() {
    let cache = Cache::<String>::builder("local").build().unwrap();
    let tenant1 = EntryOptions::default().tags(["tenant:1"]);
    let tenant2 = EntryOptions::default().tags(["tenant:2", "all"]);
    cache.insert_with("a", "1".into(), &tenant1).await.unwrap();
    cache.insert_with("b", "1".into(), &tenant1).await.unwrap();
    cache.insert_with("c", "2".into(), &tenant2).await.unwrap();
    cache.insert("d", "none".into()).await.unwrap();
    cache.invalidate_tag("tenant:1").await.unwrap();
    assert!(cache.peek("a").is_none() && cache.peek("b").is_none());
    assert!(cache.peek("c").is_some() && cache.peek("d").is_some());
    // An entry written after the tag invalidation is not affected by it.
    cache
        .insert_with("a", "again".into(), &tenant1)
        .await
        .unwrap();
    assert!(cache.peek("a").is_some());
    cache.clear().await.unwrap();
    assert_eq!(cache.l1_entry_count(), 0);
}

#[tokio::test]
async fn warming_loads_each_key_once() {
    let cache = Cache::<String>::builder("local").build().unwrap();
    let loads = Arc::new(AtomicUsize::new(0));
    let l = loads.clone();
    let keys: Vec<String> = (0..100).map(|i| format!("k{i}")).collect();
    let warmed = cache
        .warm(keys.clone(), 8, move |key: String| {
            let l = l.clone();
            async move {
                l.fetch_add(1, Ordering::SeqCst);
                if key == "k13" {
                    Err(std::io::Error::other("no such row"))
                } else {
                    Ok(key.to_uppercase())
                }
            }
        })
        .await;
    assert_eq!((warmed.loaded, warmed.failed), (99, 1));
    assert_eq!(loads.load(Ordering::SeqCst), 100);
    assert_eq!(cache.peek("k7").as_deref().map(String::as_str), Some("K7"));
}

#[test]
fn invalid_settings_are_refused_with_a_reason() {
    let err = Cache::<String>::builder("has space").build().unwrap_err();
    assert!(err.to_string().contains("namespace"), "{err}");
    let err = Cache::<String>::builder("ok")
        .entry_options(EntryOptions::default().eager_refresh(2.0))
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("eager_refresh"), "{err}");
}

async fn wait_for(mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !condition() {
        assert!(Instant::now() < deadline, "condition not met within 5 s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Review (issue 11, item 5): an invalidation left the running load joinable, so a
/// request that started after the invalidation got the read from before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_after_an_invalidation_does_not_join_the_load_before_it() {
    let cache = Cache::<String>::builder("local").build().unwrap();
    let before = tokio::spawn({
        let cache = cache.clone();
        async move {
            cache
                .get_or_load("k", || async {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    Ok::<_, std::io::Error>("read before the invalidation".to_owned())
                })
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    cache.invalidate("k").await.unwrap();
    let after = cache
        .get_or_load("k", || async {
            Ok::<_, std::io::Error>("read after the invalidation".to_owned())
        })
        .await
        .unwrap();
    assert_eq!(*after, "read after the invalidation");
    // The earlier caller gets its own read, which is not cached over the newer one.
    assert_eq!(
        *before.await.unwrap().unwrap(),
        "read before the invalidation"
    );
    assert_eq!(
        cache.peek("k").as_deref().map(String::as_str),
        Some("read after the invalidation")
    );
}

/// A cache on a manual clock: 1 s TTL, an hour of fail-safe, and `soft` as soft timeout.
fn fail_safe_cache(soft: Duration) -> (ManualClock, Cache<String>) {
    let clock = ManualClock::new(1_000_000);
    let cache = Cache::<String>::builder("local")
        .clock(clock.clone())
        .entry_options(
            EntryOptions::new(Duration::from_secs(1))
                .fail_safe(Duration::from_secs(3600))
                .soft_timeout(soft),
        )
        .build()
        .unwrap();
    (clock, cache)
}

/// Review (issue 11, item 5): with fail-safe on, a load overtaken by an invalidation
/// served the explicitly invalidated value when its loader failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_safe_never_serves_an_invalidated_value() {
    let (clock, cache) = fail_safe_cache(Duration::from_millis(100));
    cache
        .get_or_load("k", || async { Ok::<_, std::io::Error>("old".to_owned()) })
        .await
        .unwrap();
    clock.advance(Duration::from_secs(2)); // expired, still servable as fail-safe
    let slow_failure = || async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        Err::<String, _>(std::io::Error::other("source down"))
    };
    let first = tokio::spawn({
        let cache = cache.clone();
        async move { cache.get_or_load("k", slow_failure).await }
    });
    let second = tokio::spawn({
        let cache = cache.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            cache.get_or_load("k", slow_failure).await
        }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    cache.invalidate("k").await.unwrap();
    let third = cache.get_or_load("k", slow_failure).await;
    for (name, answer) in [
        ("first", first.await.unwrap()),
        ("second", second.await.unwrap()),
        ("third", third),
    ] {
        assert!(
            !matches!(&answer, Ok(v) if **v == "old"),
            "{name}: the invalidated value came back: {answer:?}"
        );
    }
}

/// Review of the fix above: a tag invalidation split every running load (single-flight
/// lost for keys the tag does not cover). Only loads stored with the tag are left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_invalidation_leaves_other_loads_shared_and_splits_its_own() {
    let cache = Cache::<String>::builder("local").build().unwrap();
    let loads = Arc::new(AtomicUsize::new(0));
    let slow = |loads: &Arc<AtomicUsize>, value: &'static str| {
        let loads = loads.clone();
        move || async move {
            loads.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(200)).await;
            Ok::<_, std::io::Error>(value.to_owned())
        }
    };
    let tagged = EntryOptions::new(Duration::from_secs(60)).tags(["t"]);
    let first = tokio::spawn({
        let (cache, load) = (cache.clone(), slow(&loads, "untagged"));
        async move { cache.get_or_load("plain", load).await }
    });
    let first_tagged = tokio::spawn({
        let (cache, load, options) = (cache.clone(), slow(&loads, "before"), tagged.clone());
        async move { cache.get_or_load_with("tagged", &options, load).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    cache.invalidate_tag("t").await.unwrap();
    let second = cache
        .get_or_load("plain", slow(&loads, "untagged"))
        .await
        .unwrap();
    let second_tagged = cache
        .get_or_load_with("tagged", &tagged, slow(&loads, "after"))
        .await
        .unwrap();
    assert_eq!(*second, "untagged");
    assert_eq!(*first.await.unwrap().unwrap(), "untagged");
    assert_eq!(*first_tagged.await.unwrap().unwrap(), "before");
    assert_eq!(*second_tagged, "after", "joined a load the tag invalidated");
    assert_eq!(
        loads.load(Ordering::SeqCst),
        3,
        "one load for `plain`, two for `tagged`"
    );
    assert_eq!(
        cache.peek("plain").as_deref().map(String::as_str),
        Some("untagged")
    );
}

/// Review of the fix above: with a soft timeout and no hard one, a change to the key
/// (or its stripe) while waiting made the caller fail with `Timeout`; it waits for the
/// load instead, since the stale value is no longer an answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_soft_timeout_after_a_change_waits_for_the_load() {
    let (clock, cache) = fail_safe_cache(Duration::from_millis(50));
    cache.insert("k", "old".into()).await.unwrap();
    clock.advance(Duration::from_secs(2));
    let call = tokio::spawn({
        let cache = cache.clone();
        async move {
            cache
                .get_or_load("k", || async {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    Ok::<_, std::io::Error>("new".to_owned())
                })
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    cache.insert("k", "newer".into()).await.unwrap(); // its stale value is no answer now
    let answer = call.await.unwrap();
    assert_eq!(
        answer.as_deref().map(String::as_str).ok(),
        Some("new"),
        "{answer:?}"
    );
    // The load was overtaken by the write: its result went to its caller only.
    assert_eq!(
        cache.peek("k").as_deref().map(String::as_str),
        Some("newer")
    );
}

/// Review of the fill guard: a lookup that still saw the old entry while an invalidation
/// ran handed it to a new load as its fail-safe fallback, and it came back into L1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lookup_racing_an_invalidation_never_brings_the_value_back() {
    let clock = ManualClock::new(1_000_000);
    let cache = Cache::<String>::builder("local")
        .clock(clock.clone())
        .entry_options(
            EntryOptions::new(Duration::from_secs(1)).fail_safe(Duration::from_secs(3600)),
        )
        .build()
        .unwrap();
    let mut hits = 0;
    let rounds = 3_000;
    for i in 0..rounds {
        let v = format!("old{i}");
        cache.insert("k", v.clone()).await.unwrap();
        clock.advance(Duration::from_secs(2)); // stale but servable
        let barrier = Arc::new(std::sync::Barrier::new(2));
        let inv = {
            let c = cache.clone();
            let b = barrier.clone();
            tokio::task::spawn_blocking(move || {
                b.wait();
                futures_util::FutureExt::now_or_never(c.invalidate("k"))
                    .unwrap()
                    .unwrap();
            })
        };
        barrier.wait();
        let _ = cache.get_or_load("k", failing).await;
        inv.await.unwrap();
        // give the load task time to finish
        tokio::task::yield_now().await;
        for _ in 0..100 {
            if cache.peek("k").is_some() {
                break;
            }
            tokio::task::yield_now().await;
        }
        if cache.peek("k").as_deref() == Some(&v) {
            hits += 1;
        }
    }
    assert_eq!(
        hits, 0,
        "the invalidated value came back in {hits} of {rounds} rounds"
    );
}

/// Loads of one key, while other keys (or tags) are invalidated all the time.
async fn loads_under_churn(cache: Cache<String>, tagged: bool) -> usize {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let churn = tokio::spawn({
        let cache = cache.clone();
        let stop = stop.clone();
        async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                if tagged {
                    cache
                        .invalidate_tag(&format!("unrelated:{}", i % 1000))
                        .await
                        .unwrap();
                } else {
                    for _ in 0..5 {
                        cache
                            .invalidate(&format!("unrelated:{}", i % 1000))
                            .await
                            .unwrap();
                        i += 1;
                    }
                }
                i += 1;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            i
        }
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    let loads = Arc::new(AtomicUsize::new(0));
    let options = if tagged {
        EntryOptions::new(Duration::from_secs(600)).tags(["hot"])
    } else {
        EntryOptions::new(Duration::from_secs(600))
    };
    let started = Instant::now();
    for _ in 0..10 {
        let l = loads.clone();
        cache
            .get_or_load_with("hot", &options, move || async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                counted(&l, "v").await
            })
            .await
            .unwrap();
    }
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let changes = churn.await.unwrap();
    let n = loads.load(Ordering::SeqCst);
    assert!(changes > 0, "{elapsed:?}");
    n
}

/// Review of the fill guard: invalidations of other keys (same stripe) or of other tags
/// made every load of a hot key throw its result away (9 and 10 loads of 10).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_key_stays_cached_while_other_keys_and_tags_are_invalidated() {
    let a = loads_under_churn(Cache::<String>::builder("local").build().unwrap(), false).await;
    let b = loads_under_churn(Cache::<String>::builder("local").build().unwrap(), true).await;
    assert_eq!((a, b), (1, 1));
}

/// The loader's task runs in the caller's span (issue 13: a new user's loader logs lost
/// the request's span and correlation id).
#[tokio::test(flavor = "current_thread")]
async fn the_loader_runs_in_the_callers_span() {
    use tracing::Instrument as _;
    let _guard = tracing::subscriber::set_default(tracing_subscriber::registry());
    let cache = keel_cache_layers::Cache::<String>::builder("spans")
        .build()
        .unwrap();
    let seen = async {
        cache
            .get_or_load("k", || async {
                let name = tracing::Span::current()
                    .metadata()
                    .map(|m| m.name().to_owned())
                    .unwrap_or_default();
                Ok::<_, std::io::Error>(name)
            })
            .await
    }
    .instrument(tracing::info_span!("orders_request"))
    .await
    .unwrap();
    assert_eq!(seen.as_str(), "orders_request");
}
