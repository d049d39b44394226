//! The interleavings a third outside review reproduced (issue 11), each a test that
//! failed before its fix. (Its findings about a hostile publisher on the Redis channel
//! and about eviction policies are stated as limits in the README instead.)

use std::time::{Duration, Instant};

use keel_cache_layers::{Cache, EntryOptions};

use crate::support::{Topology, builder, connected, eventually};

fn loaded(
    s: &str,
) -> impl FnOnce() -> std::future::Ready<Result<String, std::io::Error>> + Send + 'static {
    let s = s.to_owned();
    move || std::future::ready(Ok(s))
}

async fn get(cache: &Cache<String>, key: &str) -> Option<String> {
    cache.get(key).await.map(|v| (*v).clone())
}

/// Loads every Lua script into Redis (EVALSHA would otherwise cost a NOSCRIPT round
/// trip on first use, as it does not in production).
async fn warm_scripts(cache: &Cache<String>) {
    let tagged = EntryOptions::new(Duration::from_secs(60)).tags(["warm-tag"]);
    cache
        .insert_with("warm", "w".into(), &tagged)
        .await
        .unwrap();
    cache.invalidate_tag("warm-tag").await.unwrap();
    cache.invalidate("warm").await.unwrap();
    cache
        .get_or_load_with("warm2", &tagged, loaded("w"))
        .await
        .unwrap();
    cache.invalidate("warm2").await.unwrap();
}

fn report(violations: &[String]) {
    for v in violations {
        eprintln!("VIOLATION: {v}");
    }
    assert!(violations.is_empty(), "{} violation(s)", violations.len());
}

async fn stale_reads(caches: &[(&str, &Cache<String>)], key: &str, after: &str) -> Vec<String> {
    let mut violations = Vec::new();
    for (name, cache) in caches {
        let seen = get(cache, key).await;
        if seen.is_some() {
            violations.push(format!("{name} reads {key} = {seen:?} after {after}"));
        }
    }
    violations
}

/// N1: a tag invalidation whose L2 reply is late (timeout) already took the tag's set in
/// Redis; kept pending, its replay finds the set empty, tombstones nothing and announces:
/// every instance re-reads the old entries from L2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_invalidation_that_timed_out_replays_with_its_members() {
    let redis = Topology::single();
    let proxy = redis.proxy();
    let a = builder(
        "users",
        redis
            .l2_through(&proxy)
            .await
            .op_timeout(Duration::from_millis(200)),
    )
    .build()
    .unwrap();
    let b = builder("users", redis.l2().await).build().unwrap();
    let c = builder("users", redis.l2().await).build().unwrap();
    for cache in [&a, &b, &c] {
        connected(cache).await;
    }
    let tagged = EntryOptions::new(Duration::from_secs(60)).tags(["t"]);
    b.insert_with("k", "old".into(), &tagged).await.unwrap();
    assert_eq!(get(&c, "k").await.as_deref(), Some("old"));
    proxy.delay_replies(Duration::from_millis(400));
    warm_scripts(&b).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let result = a.invalidate_tag("t").await;
    eprintln!("A's invalidate_tag: {result:?}");
    proxy.delay_replies(Duration::ZERO);
    eventually(Duration::from_secs(10), || {
        a.backplane_status().unwrap().pending_changes == 0
    })
    .await;
    eprintln!("A's pending tag invalidation replayed (applied to L2 and announced)");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut raw = redis.raw().await;
    let key = raw.entry_key("users", 1, "k").await.unwrap();
    let record: Option<Vec<u8>> = raw.query(redis::cmd("GET").arg(&key)).await.unwrap();
    eprintln!(
        "L2 record of k: flags byte {:?}",
        record.as_ref().and_then(|r| r.get(20))
    );
    report(
        &stale_reads(
            &[("A", &a), ("B", &b), ("C", &c)],
            "k",
            "A's invalidate_tag(t) was replayed",
        )
        .await,
    );
}

/// N2: an insert with a tag adds the key to the tag's set, then writes the value (two
/// calls). A tag invalidation between them takes the set; the value lands after it
/// (fine: they overlapped), but the key is no longer in the set, so every LATER tag
/// invalidation misses it in L2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_insert_racing_a_tag_invalidation_stays_in_the_tag() {
    let redis = Topology::single();
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
    let tagged = EntryOptions::new(Duration::from_secs(60)).tags(["t"]);
    warm_scripts(&b).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.delay_replies(Duration::from_millis(300));
    let insert = {
        let (a, tagged) = (a.clone(), tagged.clone());
        tokio::spawn(async move { a.insert_with("k", "v1".into(), &tagged).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    b.invalidate_tag("t").await.unwrap(); // overlaps the insert: either order is fine
    insert.await.unwrap().unwrap();
    proxy.delay_replies(Duration::ZERO);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(get(&c, "k").await.as_deref(), Some("v1"));
    // Well after the insert returned Ok: the source changes, C invalidates the tag.
    c.invalidate_tag("t").await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    report(
        &stale_reads(
            &[("A", &a), ("B", &b), ("C", &c)],
            "k",
            "C's invalidate_tag(t) returned Ok",
        )
        .await,
    );
}

/// N3: the wait for the write-behind write under way is capped at 4 x op_timeout, but
/// one write is (tags + 1) calls. A local invalidate made after the write was queued
/// stops waiting, lands its tombstone, returns Ok, and the write's value lands after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_write_behind_never_lands_after_a_later_local_invalidate() {
    let redis = Topology::single();
    let proxy = redis.proxy();
    let tags: Vec<String> = (0..12).map(|i| format!("t{i}")).collect();
    let a = builder(
        "users",
        redis
            .l2_through(&proxy)
            .await
            .op_timeout(Duration::from_secs(1)),
    )
    .catch_up_interval(Duration::from_secs(30))
    .entry_options(EntryOptions::new(Duration::from_secs(30)).tags(tags))
    .build()
    .unwrap();
    let b = builder("users", redis.l2().await).build().unwrap();
    connected(&a).await;
    connected(&b).await;
    warm_scripts(&b).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Replies take 400 ms (each call well under the 1 s limit, even queued behind one
    // other reply in the proxy).
    proxy.delay_replies(Duration::from_millis(400));
    a.insert_behind("k", "queued before the invalidate".into())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let t = Instant::now();
    let invalidated = a.invalidate("k").await;
    eprintln!(
        "invalidate(k) returned {invalidated:?} after {:?}",
        t.elapsed()
    );
    invalidated.unwrap();
    a.flush(Duration::from_secs(20)).await.unwrap();
    proxy.delay_replies(Duration::ZERO);
    tokio::time::sleep(Duration::from_millis(500)).await;
    report(
        &stale_reads(
            &[("A", &a), ("B", &b)],
            "k",
            "A's invalidate(k) (made after its insert_behind) returned Ok",
        )
        .await,
    );
}

/// the load passes the age check, the tombstone expires during its join_tag calls, and
/// the fill lands over nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fill_whose_calls_outlast_half_a_short_tombstone_ttl_is_dropped() {
    let redis = Topology::single();
    let proxy = redis.proxy();
    let tags = ["t0", "t1", "t2", "t3"];
    let tagged = EntryOptions::new(Duration::from_secs(60)).tags(tags);
    let l = builder(
        "users",
        redis
            .l2_through(&proxy)
            .await
            .op_timeout(Duration::from_secs(2)),
    )
    .catch_up_interval(Duration::from_secs(30))
    .tombstone_ttl(Duration::from_secs(1))
    .build()
    .unwrap();
    let b = builder("users", redis.l2().await)
        .tombstone_ttl(Duration::from_secs(1))
        .build()
        .unwrap();
    let c = builder("users", redis.l2().await)
        .tombstone_ttl(Duration::from_secs(1))
        .build()
        .unwrap();
    for cache in [&l, &b, &c] {
        connected(cache).await;
    }
    warm_scripts(&b).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (read, source_read) = tokio::sync::oneshot::channel();
    let slow = {
        let (l, tagged) = (l.clone(), tagged.clone());
        tokio::spawn(async move {
            l.get_or_load_with("k", &tagged, || async move {
                let _ = read.send(());
                tokio::time::sleep(Duration::from_millis(250)).await;
                Ok::<_, std::io::Error>("read before the invalidate".to_owned())
            })
            .await
        })
    };
    source_read.await.unwrap();
    // L's replies (and so B's announcement to it) now take 300 ms.
    proxy.delay_replies(Duration::from_millis(300));
    tokio::time::sleep(Duration::from_millis(40)).await;
    b.invalidate("k").await.unwrap();
    slow.await.unwrap().unwrap();
    tokio::time::sleep(Duration::from_millis(2000)).await;
    proxy.delay_replies(Duration::ZERO);
    tokio::time::sleep(Duration::from_millis(300)).await;
    report(
        &stale_reads(
            &[("B", &b), ("C", &c)],
            "k",
            "B's invalidate(k) returned Ok",
        )
        .await
        .into_iter()
        .filter(|v| v.contains("read before"))
        .collect::<Vec<_>>(),
    );
}

/// N6: the sequence counter lost (evicted under allkeys-*, deleted) while the log
/// stream survives: XADD refuses the lower id, every publish fails with Redis up
/// until the counter climbs past the log's top id by failed attempts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_sequence_counter_does_not_fail_every_publish() {
    let redis = Topology::single();
    let a = builder("users", redis.l2().await).build().unwrap();
    let b = builder("users", redis.l2().await).build().unwrap();
    connected(&a).await;
    connected(&b).await;
    for i in 0..40 {
        a.invalidate(&format!("o{i}")).await.unwrap();
    }
    let mut raw = redis.raw().await;
    let _: i64 = raw
        .query(redis::cmd("DEL").arg("keel:{users}:seq"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    b.get_or_load("k", loaded("v1")).await.unwrap();
    let mut failed = 0;
    let mut first = None;
    for i in 0..10 {
        if let Err(e) = a.insert("k", format!("v{}", i + 2)).await {
            failed += 1;
            first.get_or_insert(e.to_string());
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    eprintln!(
        "{failed} of 10 inserts failed with Redis up; first error: {first:?}; B holds {:?}; A pending {}",
        b.peek("k"),
        a.backplane_status().unwrap().pending_changes
    );
    let mut violations = Vec::new();
    if failed > 0 {
        violations.push(format!("{failed} of 10 inserts failed with Redis up"));
    }
    report(&violations);
}

/// N7: a write-behind queued before the backplane's first contact, whose L1 entry is
/// gone by then: first contact with an empty L1 counts as "another instance's clear"
/// and drops the queued write; flush returns Ok, L2 never gets it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_contact_keeps_a_queued_write_behind() {
    let redis = Topology::single();
    let proxy = redis.proxy();
    proxy.cut();
    let a = builder("users", redis.l2_through(&proxy).await)
        .build()
        .unwrap();
    a.insert_behind("k", "written behind".into()).await.unwrap();
    a.evict_local("k");
    tokio::time::sleep(Duration::from_millis(200)).await;
    proxy.restore();
    connected(&a).await;
    let flushed = a.flush(Duration::from_secs(5)).await;
    let b = builder("users", redis.l2().await).build().unwrap();
    connected(&b).await;
    let seen = get(&b, "k").await;
    eprintln!("flush: {flushed:?}; B reads {seen:?}");
    let mut violations = Vec::new();
    if flushed.is_ok() && seen.is_none() {
        violations.push("flush returned Ok but the write-behind never reached L2".to_owned());
    }
    report(&violations);
}

/// Review 3, side note: after `shutdown` gave up waiting, a write that still landed was
/// reported as unflushed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_that_lands_after_shutdown_gave_up_waiting_is_not_reported_lost() {
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
    warm_scripts(&a).await;
    proxy.delay_replies(Duration::from_millis(1_500));
    a.insert_behind("k", "late but landed".into())
        .await
        .unwrap();
    // The first wait (1 s) passes; the write lands during the second (1 to 2 s).
    let shut = a.shutdown(Duration::from_secs(1)).await;
    proxy.delay_replies(Duration::ZERO);
    assert!(shut.is_ok(), "{shut:?}");
    let b = builder("users", redis.l2().await).build().unwrap();
    connected(&b).await;
    assert_eq!(get(&b, "k").await.as_deref(), Some("late but landed"));
}
