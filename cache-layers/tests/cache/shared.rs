//! The two-level cache against real Redis: every test runs on a single node and on a
//! three-node Redis Cluster.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use keel_cache_layers::{Cache, EntryOptions};

use crate::support::{Topology, builder, connected, eventually, percentile, suite};

suite!(
    an_invalidation_reaches_the_other_instance,
    a_cut_off_instance_catches_up_when_it_reconnects,
    an_instance_too_far_behind_drops_its_whole_l1,
    reads_survive_redis_being_killed_and_l2_comes_back,
    one_load_per_process_and_one_across_instances_with_the_lock,
    tags_invalidate_across_instances,
    absence_is_shared_through_l2,
    l2_ttls_carry_the_jitter,
    a_schema_bump_or_an_undecodable_record_is_a_miss,
    write_behind_keeps_order_and_loses_nothing_on_shutdown,
    writes_given_up_at_shutdown_go_to_the_dead_letter_queue,
    an_older_load_never_overwrites_a_newer_value,
    clear_empties_every_instance_and_l2,
);

fn value(
    s: &str,
) -> impl FnOnce() -> std::future::Ready<Result<String, std::io::Error>> + Send + 'static {
    let s = s.to_owned();
    move || std::future::ready(Ok(s))
}

async fn an_invalidation_reaches_the_other_instance(redis: Topology) {
    let a = builder("users", redis.l2().await).build().unwrap();
    let b = builder("users", redis.l2().await).build().unwrap();
    connected(&a).await;
    connected(&b).await;

    a.insert("user:1", "Ada".into()).await.unwrap();
    // The write's announcement reaches B (which has nothing to drop yet).
    eventually(Duration::from_secs(2), || {
        b.stats().invalidations_received >= 1
    })
    .await;
    // B has never seen it: L2 answers, then L1 does.
    assert_eq!(
        b.get("user:1").await.as_deref().map(String::as_str),
        Some("Ada")
    );
    assert_eq!(b.stats().l2_hits, 1);
    assert!(b.peek("user:1").is_some());

    let mut took = Vec::new();
    let mut expected = b.stats().invalidations_received;
    for round in 0..30 {
        a.insert("user:1", format!("v{round}")).await.unwrap();
        expected += 1;
        eventually(Duration::from_secs(2), || {
            b.stats().invalidations_received >= expected
        })
        .await;
        assert!(b.peek("user:1").is_none());
        assert_eq!(
            *b.get_or_load("user:1", value("unused")).await.unwrap(),
            format!("v{round}")
        );
        assert!(b.peek("user:1").is_some());
        let start = Instant::now();
        a.invalidate("user:1").await.unwrap();
        eventually(Duration::from_secs(2), || b.peek("user:1").is_none()).await;
        took.push(start.elapsed());
        expected += 1;
        eventually(Duration::from_secs(2), || {
            b.stats().invalidations_received >= expected
        })
        .await;
    }
    took.sort();
    eprintln!(
        "invalidation propagation: p50 {:?}, p99 {:?}",
        percentile(&took, 0.5),
        percentile(&took, 0.99)
    );
    assert!(percentile(&took, 0.99) < Duration::from_millis(500));
    // B is told; A ignores its own messages.
    assert!(b.stats().invalidations_received >= 60);
    assert_eq!(a.stats().invalidations_received, 0);
    // After the invalidation nobody serves the value: L2 holds a tombstone.
    assert!(b.get("user:1").await.is_none());
}

async fn a_cut_off_instance_catches_up_when_it_reconnects(redis: Topology) {
    let proxy = redis.proxy();
    let a = builder("users", redis.l2().await).build().unwrap();
    let b = builder("users", redis.l2_through(&proxy).await)
        .build()
        .unwrap();
    connected(&a).await;
    connected(&b).await;
    a.insert("user:1", "old".into()).await.unwrap();
    a.insert("user:2", "old".into()).await.unwrap();
    eventually(Duration::from_secs(2), || {
        b.stats().invalidations_received >= 2
    })
    .await;
    assert!(b.get("user:1").await.is_some() && b.get("user:2").await.is_some());

    proxy.cut();
    eventually(Duration::from_secs(10), || {
        !b.backplane_status().unwrap().connected
    })
    .await;
    // While B is away: a change and an invalidation it cannot hear about.
    a.insert("user:1", "new".into()).await.unwrap();
    a.invalidate("user:2").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(b.peek("user:1").is_some(), "B could not know yet");

    proxy.restore();
    eventually(Duration::from_secs(10), || {
        let s = b.backplane_status().unwrap();
        s.connected && s.reconnects >= 1
    })
    .await;
    // Reconnected means caught up: neither stale value is served.
    assert!(b.peek("user:1").is_none());
    assert!(b.peek("user:2").is_none());
    assert_eq!(
        b.get("user:1").await.as_deref().map(String::as_str),
        Some("new")
    );
    assert!(b.get("user:2").await.is_none());
    assert_eq!(
        b.stats().full_resyncs,
        0,
        "caught up from the log, not by dropping everything"
    );
    assert!(b.stats().invalidations_received >= 2);
}

async fn an_instance_too_far_behind_drops_its_whole_l1(redis: Topology) {
    let proxy = redis.proxy();
    let a = builder("users", redis.l2().await)
        .backplane_log_length(10)
        .build()
        .unwrap();
    let b = builder("users", redis.l2_through(&proxy).await)
        .backplane_log_length(10)
        .build()
        .unwrap();
    connected(&a).await;
    connected(&b).await;
    for i in 0..5 {
        a.insert(&format!("k{i}"), "v".into()).await.unwrap();
        assert!(b.get(&format!("k{i}")).await.is_some());
    }
    b.insert("only-b", "mine".into()).await.unwrap();
    proxy.cut();
    eventually(Duration::from_secs(10), || {
        !b.backplane_status().unwrap().connected
    })
    .await;
    // Far more invalidations than the log keeps (it is trimmed in blocks of ~100).
    for i in 0..600 {
        a.invalidate(&format!("other{i}")).await.unwrap();
    }
    proxy.restore();
    eventually(Duration::from_secs(10), || {
        let s = b.backplane_status().unwrap();
        s.connected && s.reconnects >= 1
    })
    .await;
    assert_eq!(b.stats().full_resyncs, 1);
    assert!(b.peek("k0").is_none() && b.peek("only-b").is_none());
    // L2 still serves what was not invalidated.
    assert!(b.get("k0").await.is_some());
}

async fn reads_survive_redis_being_killed_and_l2_comes_back(mut redis: Topology) {
    let options = EntryOptions::new(Duration::from_secs(60)).fail_safe(Duration::from_secs(600));
    let cache = builder("users", redis.l2().await)
        .entry_options(options)
        .build()
        .unwrap();
    connected(&cache).await;
    for i in 0..50 {
        cache
            .get_or_load(&format!("k{i}"), value("v"))
            .await
            .unwrap();
    }
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let answered = Arc::new(AtomicUsize::new(0));
    let mut readers = Vec::new();
    for r in 0..4 {
        let cache = cache.clone();
        let stop = stop.clone();
        let answered = answered.clone();
        readers.push(tokio::spawn(async move {
            let mut i = r;
            let mut errors = 0;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("k{}", i % 60); // 10 of them were never loaded
                i += 1;
                let started = Instant::now();
                match cache.get_or_load(&key, value("v")).await {
                    Ok(v) if *v == "v" => {}
                    _ => errors += 1,
                }
                assert!(started.elapsed() < Duration::from_secs(2), "a read hung");
                answered.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
            errors
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    redis.stop();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let during = answered.load(Ordering::Relaxed);
    tokio::task::block_in_place(|| redis.restart());
    let back = Instant::now();

    // L2 is used again within a second: a new value written now reaches Redis.
    let mut raw = redis.raw().await;
    let mut reached = None;
    while back.elapsed() < Duration::from_secs(5) {
        let key = format!("probe{}", back.elapsed().as_micros());
        let _ = cache.insert(&key, "p".into()).await;
        let found: Option<Vec<u8>> = match raw.entry_key("users", 1, &key).await {
            Some(entry) => raw
                .query(redis::cmd("GET").arg(entry))
                .await
                .unwrap_or(None),
            None => None,
        };
        if found.is_some() {
            reached = Some(back.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut errors = 0;
    for reader in readers {
        errors += reader.await.unwrap();
    }
    let reached = reached.expect("L2 never came back");
    eprintln!("L2 back {reached:?} after Redis restarted; {during} reads answered before");
    assert_eq!(errors, 0, "every read answered with the value");
    assert!(
        during > 1_000,
        "reads kept flowing while Redis was down ({during})"
    );
    assert!(
        reached < Duration::from_secs(1),
        "L2 came back after {reached:?}"
    );
}

/// 1,000 concurrent `get_or_load` of `key` on each instance; how many loads ran.
async fn stampede(instances: &[Cache<String>], key: &'static str) -> usize {
    let loads = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for cache in instances {
        for _ in 0..1_000 {
            let cache = cache.clone();
            let loads = loads.clone();
            tasks.push(tokio::spawn(async move {
                cache
                    .get_or_load(key, move || async move {
                        loads.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        Ok::<_, std::io::Error>("loaded".to_owned())
                    })
                    .await
            }));
        }
    }
    for task in tasks {
        assert_eq!(*task.await.unwrap().unwrap(), "loaded");
    }
    loads.load(Ordering::SeqCst)
}

async fn one_load_per_process_and_one_across_instances_with_the_lock(redis: Topology) {
    let mut locked = Vec::new();
    let mut unlocked = Vec::new();
    for _ in 0..3 {
        let cache = builder("users", redis.l2().await)
            .distributed_lock(Duration::from_secs(5))
            .build()
            .unwrap();
        connected(&cache).await;
        locked.push(cache);
        let cache = builder("users", redis.l2().await).build().unwrap();
        connected(&cache).await;
        unlocked.push(cache);
    }
    assert_eq!(
        stampede(&locked, "hot").await,
        1,
        "one load across three instances"
    );
    let n = stampede(&unlocked, "hot2").await;
    assert!(
        (1..=3).contains(&n),
        "at most one load per process, saw {n}"
    );
}

async fn tags_invalidate_across_instances(redis: Topology) {
    let a = builder("docs", redis.l2().await).build().unwrap();
    let b = builder("docs", redis.l2().await).build().unwrap();
    connected(&a).await;
    connected(&b).await;
    let t1 = EntryOptions::default().tags(["tenant:1"]);
    let t2 = EntryOptions::default().tags(["tenant:2"]);
    a.get_or_load_with("a", &t1, value("A")).await.unwrap();
    a.get_or_load_with("b", &t1, value("B")).await.unwrap();
    a.get_or_load_with("c", &t2, value("C")).await.unwrap();
    for key in ["a", "b", "c"] {
        assert!(b.get(key).await.is_some(), "{key} from L2");
    }
    a.invalidate_tag("tenant:1").await.unwrap();
    eventually(Duration::from_secs(2), || {
        b.peek("a").is_none() && b.peek("b").is_none()
    })
    .await;
    assert!(b.peek("c").is_some());
    // Gone from L2 too.
    assert!(b.get("a").await.is_none() && b.get("b").await.is_none());
    let fresh = builder("docs", redis.l2().await).build().unwrap();
    connected(&fresh).await;
    assert!(fresh.get("a").await.is_none());
    assert_eq!(
        fresh.get("c").await.as_deref().map(String::as_str),
        Some("C")
    );
}

async fn absence_is_shared_through_l2(redis: Topology) {
    let options =
        EntryOptions::new(Duration::from_secs(60)).negative_ttl(Duration::from_millis(500));
    let a = builder("users", redis.l2().await)
        .entry_options(options.clone())
        .build()
        .unwrap();
    let b = builder("users", redis.l2().await)
        .entry_options(options)
        .build()
        .unwrap();
    connected(&a).await;
    connected(&b).await;
    let loads = Arc::new(AtomicUsize::new(0));
    let absent = |loads: &Arc<AtomicUsize>| {
        let loads = loads.clone();
        move || async move {
            loads.fetch_add(1, Ordering::SeqCst);
            Ok::<Option<String>, std::io::Error>(None)
        }
    };
    assert!(
        a.get_or_load_optional("ghost", absent(&loads))
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        b.get_or_load_optional("ghost", absent(&loads))
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(loads.load(Ordering::SeqCst), 1, "B found the absence in L2");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(
        b.get_or_load_optional("ghost", absent(&loads))
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(loads.load(Ordering::SeqCst), 2, "the negative TTL is short");
}

async fn l2_ttls_carry_the_jitter(redis: Topology) {
    let options = EntryOptions::new(Duration::from_secs(10)).jitter(Duration::from_secs(5));
    // Inserted records live at least a tombstone's life in Redis: short here, so the
    // entries' own TTLs show.
    let cache = builder("users", redis.l2().await)
        .entry_options(options)
        .tombstone_ttl(Duration::from_secs(1))
        .build()
        .unwrap();
    connected(&cache).await;
    let mut raw = redis.raw().await;
    let mut ttls = Vec::new();
    for i in 0..40 {
        cache.insert(&format!("k{i}"), "v".into()).await.unwrap();
        let entry = raw.entry_key("users", 1, &format!("k{i}")).await.unwrap();
        let ttl: i64 = raw.query(redis::cmd("PTTL").arg(entry)).await.unwrap();
        ttls.push(ttl);
    }
    assert!(
        ttls.iter().all(|t| (9_500..=15_000).contains(t)),
        "{ttls:?}"
    );
    let spread = ttls.iter().max().unwrap() - ttls.iter().min().unwrap();
    assert!(spread > 1_000, "jitter spreads expiries: {ttls:?}");
}

async fn a_schema_bump_or_an_undecodable_record_is_a_miss(redis: Topology) {
    let v1 = builder("users", redis.l2().await).build().unwrap();
    connected(&v1).await;
    v1.insert("k", "written by v1".into()).await.unwrap();
    let v2 = builder("users", redis.l2().await)
        .schema_version(2)
        .build()
        .unwrap();
    connected(&v2).await;
    assert!(v2.get("k").await.is_none());
    assert_eq!(
        *v2.get_or_load("k", value("v2 value")).await.unwrap(),
        "v2 value"
    );
    assert_eq!(
        v1.get("k").await.as_deref().map(String::as_str),
        Some("written by v1")
    );

    // A record that does not decode (another writer, a corrupted value) is a miss.
    let mut raw = redis.raw().await;
    let junk = raw.entry_key("users", 2, "junk").await.unwrap();
    let _: () = raw
        .query(
            redis::cmd("SET")
                .arg(junk)
                .arg(b"\x00\xffnot an envelope".as_slice()),
        )
        .await
        .unwrap();
    assert!(v2.get("junk").await.is_none());
    assert_eq!(
        *v2.get_or_load("junk", value("reloaded")).await.unwrap(),
        "reloaded"
    );
    assert!(v2.stats().decode_errors >= 1);
}

async fn write_behind_keeps_order_and_loses_nothing_on_shutdown(mut redis: Topology) {
    let writer = builder("users", redis.l2().await)
        .write_behind_capacity(64)
        .build()
        .unwrap();
    let reader = builder("users", redis.l2().await).build().unwrap();
    connected(&writer).await;
    connected(&reader).await;
    for round in 0..10 {
        for key in 0..50 {
            writer
                .insert_behind(&format!("k{key}"), format!("round {round}"))
                .await
                .unwrap();
        }
    }
    writer.flush(Duration::from_secs(10)).await.unwrap();
    for key in 0..50 {
        assert_eq!(
            reader
                .get(&format!("k{key}"))
                .await
                .as_deref()
                .map(String::as_str),
            Some("round 9"),
            "k{key}"
        );
    }
    // Queued while Redis is down, written once it is back, all before shutdown returns.
    redis.stop();
    for key in 0..20 {
        writer
            .insert_behind(&format!("late{key}"), "queued".into())
            .await
            .unwrap();
    }
    let restart = tokio::task::spawn_blocking(move || {
        std::thread::sleep(Duration::from_millis(700));
        redis.restart();
        redis
    });
    writer.shutdown(Duration::from_secs(20)).await.unwrap();
    let redis = restart.await.unwrap();
    assert!(matches!(
        writer.insert_behind("after", "x".into()).await,
        Err(keel_cache_layers::CacheError::ShutDown)
    ));
    let mut raw = redis.raw().await;
    for key in 0..20 {
        let entry = raw
            .entry_key("users", 1, &format!("late{key}"))
            .await
            .unwrap();
        let found: Option<Vec<u8>> = raw.query(redis::cmd("GET").arg(entry)).await.unwrap();
        assert!(found.is_some(), "late{key} was lost");
    }
}

async fn writes_given_up_at_shutdown_go_to_the_dead_letter_queue(mut redis: Topology) {
    use keel_cache_layers::{Codec, Postcard};
    use keel_resilience::ErrorClass;
    use keel_resilience::dead_letter::{DeadLetterQueue, MemoryDeadLetters};

    let dead_letters = DeadLetterQueue::new("cache", MemoryDeadLetters::new());
    let writer = builder("users", redis.l2().await)
        .dead_letters(dead_letters.clone())
        .build()
        .unwrap();
    connected(&writer).await;
    writer
        .insert_behind("landed", "kept in L2".into())
        .await
        .unwrap();
    writer.flush(Duration::from_secs(10)).await.unwrap();
    // Redis is gone for good: the queued writes cannot be made before shutdown ends.
    redis.stop();
    for key in 0..5 {
        writer
            .insert_behind(&format!("late{key}"), format!("value {key}"))
            .await
            .unwrap();
    }
    let flushed = writer.shutdown(Duration::from_secs(2)).await;
    assert!(
        matches!(
            flushed,
            Err(keel_cache_layers::CacheError::Unflushed { pending: 5 })
        ),
        "{flushed:?}"
    );
    let letters = dead_letters.list(None, 100).await.unwrap();
    let keys: Vec<&str> = letters.iter().map(|l| l.key()).collect();
    assert_eq!(keys, ["late0", "late1", "late2", "late3", "late4"]);
    for (n, letter) in letters.iter().enumerate() {
        let value: String = Codec::<String>::decode(&Postcard, letter.payload()).unwrap();
        assert_eq!(value, format!("value {n}"));
        assert_eq!(letter.source(), "cache-write-behind:users");
        assert_eq!(letter.class(), ErrorClass::Transient);
        assert!(letter.attempts() >= 1);
        assert!(
            letter.message().contains("not written before shutdown"),
            "{}",
            letter.message()
        );
    }
}

async fn an_older_load_never_overwrites_a_newer_value(redis: Topology) {
    let a = builder("users", redis.l2().await).build().unwrap();
    let b = builder("users", redis.l2().await).build().unwrap();
    connected(&a).await;
    connected(&b).await;
    // A starts loading first but its source is slow; B loads later and finishes first.
    let slow = {
        let a = a.clone();
        tokio::spawn(async move {
            a.get_or_load("k", || async {
                tokio::time::sleep(Duration::from_millis(300)).await;
                Ok::<_, std::io::Error>("older read".to_owned())
            })
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        *b.get_or_load("k", value("newer read")).await.unwrap(),
        "newer read"
    );
    assert_eq!(*slow.await.unwrap().unwrap(), "older read");
    assert_eq!(
        a.stats().l2_write_conflicts,
        1,
        "A's write lost the compare-and-set"
    );
    let c = builder("users", redis.l2().await).build().unwrap();
    connected(&c).await;
    assert_eq!(
        c.get("k").await.as_deref().map(String::as_str),
        Some("newer read")
    );

    // An invalidation beats a load that read before it.
    let slow = {
        let a = a.clone();
        tokio::spawn(async move {
            a.get_or_load("j", || async {
                tokio::time::sleep(Duration::from_millis(300)).await;
                Ok::<_, std::io::Error>("read before the invalidation".to_owned())
            })
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    b.invalidate("j").await.unwrap();
    slow.await.unwrap().unwrap();
    assert!(
        c.get("j").await.is_none(),
        "the tombstone kept the old read out of L2"
    );
    eventually(Duration::from_secs(2), || a.peek("j").is_none()).await;
}

async fn clear_empties_every_instance_and_l2(redis: Topology) {
    let a = builder("users", redis.l2().await).build().unwrap();
    let b = builder("users", redis.l2().await).build().unwrap();
    connected(&a).await;
    connected(&b).await;
    for i in 0..20 {
        a.insert(&format!("k{i}"), "v".into()).await.unwrap();
        assert!(b.get(&format!("k{i}")).await.is_some());
    }
    a.clear().await.unwrap();
    // B applies the clear on its own task, within the backplane's delay: until then it
    // may still read the old generation. (An empty L1 is not the sign: the late
    // invalidations of the inserts above can empty it first.)
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut left = Vec::new();
    loop {
        left.clear();
        for i in 0..20 {
            if b.get(&format!("k{i}")).await.is_some() {
                left.push(i);
            }
        }
        if left.is_empty() || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(left.is_empty(), "{left:?} survived the clear");
    assert!(b.peek("k0").is_none());
    // Writes after the clear work in the new generation.
    a.insert("k0", "after".into()).await.unwrap();
    assert_eq!(
        b.get("k0").await.as_deref().map(String::as_str),
        Some("after")
    );
    let _ = Cache::<String>::builder("users"); // the builder is reusable per namespace
}

/// Review (issue 11, item 4): `get` put its L2 read into L1 without the checks loads go
/// through, so a write landing while the L2 reply was on its way was undone in L1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_whose_l2_reply_is_late_does_not_undo_a_newer_write() {
    let (_redis, proxy, other, slow) = slow_pair().await;
    other.insert("k", "old".into()).await.unwrap();

    proxy.delay_replies(Duration::from_millis(300));
    let read = tokio::spawn({
        let slow = slow.clone();
        async move { slow.get("k").await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    // The write lands in L1 at once; its L2 part waits on the slow link.
    let write = tokio::spawn({
        let slow = slow.clone();
        async move { slow.insert("k", "new".into()).await }
    });
    let _ = read.await.unwrap();
    proxy.delay_replies(Duration::ZERO);
    write.await.unwrap().unwrap();
    assert_ne!(
        slow.peek("k").as_deref().map(String::as_str),
        Some("old"),
        "the late L2 reply undid the newer write in L1"
    );
    assert_eq!(
        slow.get("k").await.as_deref().map(String::as_str),
        Some("new")
    );
}

/// A second instance whose Redis replies can be held back by a proxy.
async fn slow_pair() -> (
    Topology,
    keel_testkit::TcpProxy,
    Cache<String>,
    Cache<String>,
) {
    let redis = Topology::single();
    let Topology::Single(server) = &redis else {
        unreachable!()
    };
    let proxy = keel_testkit::TcpProxy::start(([127, 0, 0, 1], server.port()).into()).unwrap();
    let other = builder("users", redis.l2().await).build().unwrap();
    let slow = builder(
        "users",
        redis
            .l2_through(&proxy)
            .await
            .op_timeout(Duration::from_secs(3)),
    )
    .build()
    .unwrap();
    connected(&other).await;
    connected(&slow).await;
    (redis, proxy, other, slow)
}

/// Runs `change` on `slow` with its Redis replies held 300 ms, reads `k` on `slow` while
/// the change is under way, then lets the replies through and waits for things to settle.
async fn read_during_own_change<F, Fut>(
    proxy: &keel_testkit::TcpProxy,
    slow: &Cache<String>,
    change: F,
) where
    F: FnOnce(Cache<String>) -> Fut,
    Fut: Future<Output = Result<(), keel_cache_layers::CacheError>> + Send + 'static,
{
    proxy.delay_replies(Duration::from_millis(300));
    let change = tokio::spawn(change(slow.clone()));
    tokio::time::sleep(Duration::from_millis(50)).await;
    let _ = slow.get("k").await;
    change.await.unwrap().unwrap();
    proxy.delay_replies(Duration::ZERO);
    tokio::time::sleep(Duration::from_millis(500)).await;
}

/// Review of the fill guard: a read on the instance that is itself clearing (its own
/// announcement skipped) cached the old generation's value until its TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_during_its_own_clear_does_not_keep_the_old_value() {
    let (_redis, proxy, other, slow) = slow_pair().await;
    other.insert("k", "old".into()).await.unwrap();
    read_during_own_change(&proxy, &slow, |slow| async move { slow.clear().await }).await;
    assert!(
        slow.peek("k").is_none(),
        "old value cached in L1 after clear returned"
    );
}

/// Review of the fill guard: the same for the instance invalidating a tag.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_during_its_own_tag_invalidation_does_not_keep_the_old_value() {
    let (_redis, proxy, other, slow) = slow_pair().await;
    other
        .insert_with(
            "k",
            "old".into(),
            &EntryOptions::new(Duration::from_secs(600)).tags(["t"]),
        )
        .await
        .unwrap();
    read_during_own_change(&proxy, &slow, |slow| async move {
        slow.invalidate_tag("t").await
    })
    .await;
    assert!(
        slow.peek("k").is_none(),
        "old value cached in L1 after invalidate_tag returned"
    );
}

/// Review of the fill guard: a `get` decided before a write but polled after it (join!,
/// FuturesUnordered) overwrote the newer write in L1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_polled_after_a_write_does_not_overwrite_it() {
    let (_redis, proxy, other, slow) = slow_pair().await;
    other.insert("k", "old".into()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await; // its backplane message is in
    // L1 miss decided now; the future is polled later (join!, FuturesUnordered...).
    let read = slow.get("k");
    proxy.delay_replies(Duration::from_millis(300));
    let write = tokio::spawn({
        let slow = slow.clone();
        async move {
            slow.insert_with(
                "k",
                "new".into(),
                &EntryOptions::new(Duration::from_secs(600)).tags(["t"]),
            )
            .await
        }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(slow.peek("k").as_deref().map(String::as_str), Some("new"));
    let _ = read.await;
    write.await.unwrap().unwrap();
    proxy.delay_replies(Duration::ZERO);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_ne!(
        slow.peek("k").as_deref().map(String::as_str),
        Some("old"),
        "old value overwrote newer insert in L1"
    );
}

/// Review of the fill guard: an invalidation whose script had to be loaded again (after
/// a Redis restart or failover) let a read in between cache the old value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_during_its_own_invalidation_after_a_script_flush_does_not_keep_the_old_value() {
    let (redis, proxy, other, slow) = slow_pair().await;
    other.insert("k", "old".into()).await.unwrap();
    // As after a Redis restart or failover: the script cache is empty.
    let mut raw = redis.raw().await;
    let _: () = raw.query(redis::cmd("SCRIPT").arg("FLUSH")).await.unwrap();
    read_during_own_change(
        &proxy,
        &slow,
        |slow| async move { slow.invalidate("k").await },
    )
    .await;
    assert!(
        slow.peek("k").is_none(),
        "old value cached in L1 after invalidate returned"
    );
}
