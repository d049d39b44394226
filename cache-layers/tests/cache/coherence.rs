//! The coherence guarantee under the interleavings an outside review reproduced (issue
//! 11): clock skew, equal clocks, a tag invalidation racing a load on another instance,
//! Redis going back in time, and invalidations made while Redis was unreachable. Each
//! test failed on the code before the fix.

use std::time::Duration;

use keel_cache_layers::{Cache, EntryOptions, ManualClock, SystemClock, WallClock};

use crate::support::{Topology, builder, connected, eventually, suite};

suite!(
    a_fast_clock_does_not_make_its_loads_win_over_later_writes,
    equal_clocks_do_not_tie_a_load_with_a_later_invalidation,
    a_tag_invalidation_beats_a_load_on_another_instance_that_started_before_it,
    a_change_made_in_an_old_generation_is_made_again_in_the_new_one,
    losing_the_backplane_keys_never_brings_back_older_data,
);

/// The system clock shifted by a fixed amount.
#[derive(Debug)]
struct Skewed(u64);

impl WallClock for Skewed {
    fn now_ms(&self) -> u64 {
        SystemClock.now_ms() + self.0
    }
}

fn loaded(
    s: &str,
) -> impl FnOnce() -> std::future::Ready<Result<String, std::io::Error>> + Send + 'static {
    let s = s.to_owned();
    move || std::future::ready(Ok(s))
}

async fn get(cache: &Cache<String>, key: &str) -> Option<String> {
    cache.get(key).await.map(|v| (*v).clone())
}

/// Reproduced by the review: with A's clock 500 ms ahead, B's invalidate and insert both
/// returned `Ok` but lost to A's earlier load in L2, and every instance read A's value.
async fn a_fast_clock_does_not_make_its_loads_win_over_later_writes(redis: Topology) {
    let ahead = builder("users", redis.l2().await)
        .clock(Skewed(500))
        .build()
        .unwrap();
    let b = builder("users", redis.l2().await).build().unwrap();
    let c = builder("users", redis.l2().await).build().unwrap();
    for cache in [&ahead, &b, &c] {
        connected(cache).await;
    }
    ahead.get_or_load("k", loaded("a's read")).await.unwrap();
    assert_eq!(get(&c, "k").await.as_deref(), Some("a's read"));
    c.evict_local("k");
    tokio::time::sleep(Duration::from_millis(100)).await;

    b.invalidate("k").await.unwrap();
    assert_eq!(get(&c, "k").await, None, "the invalidation lost in L2");
    b.insert("k", "b's write".into()).await.unwrap();
    assert_eq!(
        get(&c, "k").await.as_deref(),
        Some("b's write"),
        "the insert lost in L2"
    );
    assert_eq!(get(&b, "k").await.as_deref(), Some("b's write"));
    eventually(Duration::from_secs(5), || ahead.peek("k").is_none()).await;
    assert_eq!(get(&ahead, "k").await.as_deref(), Some("b's write"));
}

/// Found by reading: two instances whose clocks show the same millisecond minted equal
/// versions, and the compare-and-set kept the existing record on a tie, so an
/// invalidation right after the other instance's load was lost in L2.
async fn equal_clocks_do_not_tie_a_load_with_a_later_invalidation(redis: Topology) {
    let clock = ManualClock::new(SystemClock.now_ms());
    let a = builder("users", redis.l2().await)
        .clock(clock.clone())
        .build()
        .unwrap();
    let b = builder("users", redis.l2().await)
        .clock(clock.clone())
        .build()
        .unwrap();
    let c = builder("users", redis.l2().await)
        .clock(clock)
        .build()
        .unwrap();
    for cache in [&a, &b, &c] {
        connected(cache).await;
    }
    for round in 0..20 {
        let key = format!("k{round}");
        a.get_or_load(&key, loaded("loaded")).await.unwrap();
        b.invalidate(&key).await.unwrap();
        assert_eq!(
            get(&c, &key).await,
            None,
            "round {round}: the invalidation lost"
        );
    }
}

/// Issue 11, item 6: a load whose source read came before a tag invalidation on another
/// instance wrote that read to L2 after it (the key was not yet in the tag's set), where
/// every instance then found it. A's Redis replies (and so the invalidation's
/// announcement) are held back 600 ms, so its write lands before it hears of the
/// invalidation.
async fn a_tag_invalidation_beats_a_load_on_another_instance_that_started_before_it(
    redis: Topology,
) {
    let proxy = redis.proxy();
    let a = builder(
        "users",
        redis
            .l2_through(&proxy)
            .await
            .op_timeout(Duration::from_secs(3)),
    )
    // Nor does it catch up from the log meanwhile.
    .catch_up_interval(Duration::from_secs(30))
    .build()
    .unwrap();
    let b = builder("users", redis.l2().await).build().unwrap();
    let c = builder("users", redis.l2().await).build().unwrap();
    for cache in [&a, &b, &c] {
        connected(cache).await;
    }
    proxy.delay_replies(Duration::from_millis(600));
    let options = EntryOptions::new(Duration::from_secs(30)).tags(["tenant:1"]);
    let (read, source_read) = tokio::sync::oneshot::channel();
    let slow = {
        let (a, options) = (a.clone(), options.clone());
        tokio::spawn(async move {
            a.get_or_load_with("k", &options, || async move {
                let _ = read.send(());
                tokio::time::sleep(Duration::from_millis(300)).await;
                Ok::<_, std::io::Error>("read before the invalidation".to_owned())
            })
            .await
        })
    };
    source_read.await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    b.invalidate_tag("tenant:1").await.unwrap();
    slow.await.unwrap().unwrap();
    assert_eq!(
        get(&c, "k").await,
        None,
        "the old read reached L2 after the tag invalidation"
    );
    proxy.delay_replies(Duration::ZERO);
    // A drops the key in two rounds when the invalidation reaches it; a load started
    // between them is not cached, so wait until it has applied it.
    eventually(Duration::from_secs(5), || {
        a.stats().invalidations_received >= 1
    })
    .await;
    assert_eq!(a.peek("k"), None);
    // A load that starts after the invalidation is cached as usual.
    a.get_or_load_with("k", &options, loaded("fresh"))
        .await
        .unwrap();
    assert_eq!(get(&c, "k").await.as_deref(), Some("fresh"));
}

/// A single node kept on disk: `SAVE` now, and a restart brings that snapshot back.
fn snapshot(redis: &Topology) {
    let Topology::Single(server) = redis else {
        unreachable!()
    };
    server.command(&["SAVE"]).unwrap();
}

/// Issue 11, item 2: Redis restarted from an older snapshot: its sequence counter went
/// back (the epoch survived), every instance's cursor was ahead, and the next
/// invalidations were dropped as duplicates; the snapshot's old value was served again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_going_back_in_time_brings_back_no_old_value() {
    let mut redis = Topology::single();
    let a = builder("users", redis.l2().await).build().unwrap();
    let b = builder("users", redis.l2().await).build().unwrap();
    connected(&a).await;
    connected(&b).await;
    a.insert("k", "v1".into()).await.unwrap();
    snapshot(&redis);
    // Past the snapshot: many invalidations, and a newer value everyone reads.
    for i in 0..30 {
        a.invalidate(&format!("other{i}")).await.unwrap();
    }
    a.insert("k", "v2".into()).await.unwrap();
    eventually(Duration::from_secs(5), || b.peek("k").is_none()).await;
    assert_eq!(get(&b, "k").await.as_deref(), Some("v2"));

    redis.restart();
    // Back with v1 in L2 and the sequence 31 behind the instances' cursors.
    eventually(Duration::from_secs(20), || {
        b.backplane_status()
            .is_some_and(|s| s.connected && s.reconnects > 0)
            && a.backplane_status()
                .is_some_and(|s| s.connected && s.reconnects > 0)
    })
    .await;
    a.insert("k", "v3".into()).await.unwrap();
    eventually(Duration::from_secs(5), || {
        b.peek("k").is_none_or(|v| *v == "v3")
    })
    .await;
    let fresh = builder("users", redis.l2().await).build().unwrap();
    connected(&fresh).await;
    for cache in [&a, &b, &fresh] {
        let seen = get(cache, "k").await;
        assert!(
            seen.as_deref().is_none_or(|v| v == "v3"),
            "an instance read {seen:?} after Redis went back in time"
        );
    }
}

/// Issue 11, item 1: an invalidation (or insert) made while Redis was unreachable came
/// back when Redis returned with its data: the invalidating instance read the old value
/// from L2 again, a new instance read it, and the other instance kept it until its TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_made_while_redis_is_down_are_applied_when_it_returns() {
    let mut redis = Topology::single();
    let a = builder("users", redis.l2().await).build().unwrap();
    let b = builder("users", redis.l2().await).build().unwrap();
    connected(&a).await;
    connected(&b).await;
    a.insert("k", "old".into()).await.unwrap();
    a.insert("j", "old".into()).await.unwrap();
    a.evict_local("k");
    assert_eq!(get(&b, "k").await.as_deref(), Some("old"));
    assert_eq!(get(&b, "j").await.as_deref(), Some("old"));
    snapshot(&redis);

    let Topology::Single(server) = &mut redis else {
        unreachable!()
    };
    server.stop();
    assert!(matches!(
        a.invalidate("k").await,
        Err(keel_cache_layers::CacheError::L2Unavailable { .. })
    ));
    assert!(a.insert("j", "new".into()).await.is_err());
    assert_eq!(a.backplane_status().unwrap().pending_changes, 2);

    server.restart().unwrap();
    // From the first read on, A never takes the old value back from L2.
    while a.backplane_status().unwrap().pending_changes > 0 {
        assert_eq!(
            get(&a, "k").await,
            None,
            "A read the invalidated value from L2"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(get(&a, "j").await.as_deref(), Some("new"));
    // B hears of both changes; a new instance finds neither old value.
    eventually(Duration::from_secs(5), || {
        b.peek("k").is_none() && b.peek("j").is_none()
    })
    .await;
    let c = builder("users", redis.l2().await).build().unwrap();
    connected(&c).await;
    assert_eq!(get(&c, "k").await, None);
    assert_eq!(get(&c, "j").await, None);
    assert_eq!(get(&b, "k").await, None);
}

/// Found by the randomized checker: an instance that had not yet heard that the namespace
/// moved to a new generation (a clear, or Redis going back in time) wrote its invalidation
/// into the old generation and returned `Ok`, while the others read the key's old value
/// in the new one.
async fn a_change_made_in_an_old_generation_is_made_again_in_the_new_one(redis: Topology) {
    let proxy = redis.proxy();
    let a = builder(
        "users",
        redis
            .l2_through(&proxy)
            .await
            .op_timeout(Duration::from_secs(3)),
    )
    .catch_up_interval(Duration::from_secs(30))
    .build()
    .unwrap();
    let b = builder("users", redis.l2().await).build().unwrap();
    let c = builder("users", redis.l2().await).build().unwrap();
    for cache in [&a, &b, &c] {
        connected(cache).await;
    }
    // A hears of the clear late.
    proxy.delay_replies(Duration::from_millis(400));
    b.clear().await.unwrap();
    b.get_or_load("k", loaded("old")).await.unwrap();
    a.invalidate("k").await.unwrap();
    assert_eq!(
        get(&c, "k").await,
        None,
        "the invalidation went to the old generation"
    );
    a.insert("j", "new".into()).await.unwrap();
    assert_eq!(get(&c, "j").await.as_deref(), Some("new"));
    proxy.delay_replies(Duration::ZERO);
}

/// Issue 11, evicted control keys: under an `allkeys-*` eviction policy Redis may drop
/// the backplane's generation key; new instances then went back to generation 0 and read
/// the data from before a `clear`.
async fn losing_the_backplane_keys_never_brings_back_older_data(redis: Topology) {
    let a = builder("users", redis.l2().await).build().unwrap();
    connected(&a).await;
    a.insert("k", "before the clear".into()).await.unwrap();
    a.clear().await.unwrap();
    a.insert("j", "after the clear".into()).await.unwrap();
    let mut raw = redis.raw().await;
    for lost in ["gen", "epoch"] {
        let _: i64 = raw
            .query(redis::cmd("DEL").arg(format!("keel:{{users}}:{lost}")))
            .await
            .unwrap();
        let fresh = builder("users", redis.l2().await).build().unwrap();
        connected(&fresh).await;
        assert_eq!(
            get(&fresh, "k").await,
            None,
            "lost {lost}: data from before the clear"
        );
        assert_eq!(
            get(&fresh, "j").await,
            None,
            "lost {lost}: the L2 now starts cold"
        );
        // A finds out at its next catch-up and drops what it holds.
        eventually(Duration::from_secs(5), || a.peek("j").is_none()).await;
        a.insert("j", "after the clear".into()).await.unwrap();
    }
}

/// Issue 11, write-behind: an `insert_behind` whose L1 entry was evicted before its
/// queued write reached L2 was replaced on the same instance by a read of the older L2
/// value, kept until its TTL (the write's own announcement is skipped here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_never_takes_the_older_value_while_a_write_behind_is_queued() {
    let redis = Topology::single();
    let proxy = redis.proxy();
    let a = builder(
        "users",
        redis
            .l2_through(&proxy)
            .await
            .op_timeout(Duration::from_secs(3)),
    )
    .build()
    .unwrap();
    connected(&a).await;
    a.insert("k", "old".into()).await.unwrap();
    proxy.delay_replies(Duration::from_millis(300));
    a.insert_behind("k", "new".into()).await.unwrap();
    a.evict_local("k");
    let read = get(&a, "k").await;
    assert_ne!(
        read.as_deref(),
        Some("old"),
        "read the value the queued write replaces"
    );
    a.flush(Duration::from_secs(5)).await.unwrap();
    proxy.delay_replies(Duration::ZERO);
    assert_eq!(get(&a, "k").await.as_deref(), Some("new"));
}
