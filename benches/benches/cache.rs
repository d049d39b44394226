//! keel-cache-layers against raw moka and raw redis-rs.
//!
//! `cargo bench -p keel-benches --bench cache` runs the criterion groups (L1 hit, L2
//! hit) and then prints the figures that are not timings of one call: cross-instance
//! invalidation latency against a raw pub/sub round trip, the hit ratio on a Zipf(0.99)
//! trace, and memory per entry at one million entries. The L2 parts need `redis-server`
//! (they are skipped, with a message, without it).
#![allow(clippy::print_stdout, clippy::cast_precision_loss, missing_docs)]

mod support;

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion};
use futures_util::{FutureExt as _, StreamExt as _};
use keel_cache_layers::{Cache, Compression, EntryOptions, RedisL2};
use keel_testkit::RedisServer;

const KEYS: usize = 1_000;

fn keys() -> Vec<String> {
    (0..KEYS).map(|i| format!("user:{i}")).collect()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn l1_hit(c: &mut Criterion) {
    let keys = keys();
    let raw: moka::sync::Cache<String, Arc<String>> = moka::sync::Cache::new(10_000);
    let keel = Cache::<String>::builder("bench")
        .l1_capacity(10_000)
        .build()
        .unwrap();
    for k in &keys {
        raw.insert(k.clone(), Arc::new(format!("value of {k}")));
        keel.insert(k, format!("value of {k}"))
            .now_or_never()
            .unwrap()
            .unwrap();
    }
    let mut group = c.benchmark_group("cache/l1_hit");
    let mut i = 0usize;
    group.bench_function("raw_moka_get", |b| {
        b.iter(|| {
            i = (i + 1) % KEYS;
            black_box(raw.get(keys[i].as_str()))
        });
    });
    group.bench_function("keel_peek", |b| {
        b.iter(|| {
            i = (i + 1) % KEYS;
            black_box(keel.peek(&keys[i]))
        });
    });
    group.bench_function("keel_get", |b| {
        b.iter(|| {
            i = (i + 1) % KEYS;
            black_box(keel.get(&keys[i]).now_or_never())
        });
    });
    group.bench_function("keel_get_or_load", |b| {
        b.iter(|| {
            i = (i + 1) % KEYS;
            black_box(
                keel.get_or_load(&keys[i], || async {
                    Ok::<_, std::io::Error>(String::new())
                })
                .now_or_never(),
            )
        });
    });
    group.finish();

    // The same comparison interleaved, raw and keel alternating in rounds, so drift in
    // this noisy machine's speed hits both sides alike; the median ratio is reported.
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let round = |f: &mut dyn FnMut(&str)| {
        let start = Instant::now();
        for _ in 0..200 {
            for k in &keys {
                f(k);
            }
        }
        start.elapsed()
    };
    let mut ratios: Vec<(f64, f64, f64)> = Vec::new();
    for _ in 0..15 {
        let raw_t = round(&mut |k| {
            black_box(raw.get(k));
        });
        let get_t = round(&mut |k| {
            black_box(keel.get(k).now_or_never());
        });
        let load_t = round(&mut |k| {
            black_box(
                keel.get_or_load(k, || async { Ok::<_, std::io::Error>(String::new()) })
                    .now_or_never(),
            );
        });
        let peek_t = round(&mut |k| {
            black_box(keel.peek(k));
        });
        let raw_t = raw_t.as_secs_f64();
        ratios.push((
            peek_t.as_secs_f64() / raw_t,
            get_t.as_secs_f64() / raw_t,
            load_t.as_secs_f64() / raw_t,
        ));
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!(
        "cache/l1_hit interleaved (15 rounds of 200k reads each): median ratio to raw moka get: \
         peek {:.2}x, get {:.2}x, get_or_load {:.2}x",
        median(ratios.iter().map(|r| r.0).collect()),
        median(ratios.iter().map(|r| r.1).collect()),
        median(ratios.iter().map(|r| r.2).collect()),
    );
}

struct Redis {
    server: RedisServer,
    rt: tokio::runtime::Runtime,
}

fn redis() -> Option<Redis> {
    match RedisServer::start() {
        Ok(server) => Some(Redis {
            server,
            rt: runtime(),
        }),
        Err(e) => {
            println!("skipping the L2 benches: {e}");
            None
        }
    }
}

fn l2_hit(c: &mut Criterion, redis: &Redis) {
    let keys = keys();
    let url = redis.server.url();
    // One thread for the client, its connection tasks and the cache's: no cross-thread
    // wake-ups in the measurement, for either side.
    let rt = &tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (keel, raw) = rt.block_on(async {
        // Each timed read finds the key only in L2 (evicted from L1 before it, untimed),
        // and promotes it into L1, as a real L2 hit does.
        let keel = Cache::<String>::builder("bench")
            .compression(Compression::off())
            .l2(RedisL2::single(&url).unwrap())
            .build()
            .unwrap();
        while !keel.backplane_status().unwrap().connected {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let raw = redis::Client::open(url.as_str())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let mut setter = raw.clone();
        for k in &keys {
            let value = format!("value of {k}");
            keel.insert(k, value.clone()).await.unwrap();
            let bytes = postcard::to_allocvec(&value).unwrap();
            let _: () = redis::cmd("SET")
                .arg(format!("raw:{k}"))
                .arg(bytes)
                .query_async(&mut setter)
                .await
                .unwrap();
        }
        (keel, raw)
    });
    let mut group = c.benchmark_group("cache/l2_hit");
    let mut i = 0usize;
    group.bench_function("raw_redis_get_decode", |b| {
        b.to_async(rt).iter(|| {
            i = (i + 1) % KEYS;
            let key = format!("raw:{}", keys[i]);
            let mut conn = raw.clone();
            async move {
                let bytes: Vec<u8> = redis::cmd("GET")
                    .arg(key)
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                let value: String = postcard::from_bytes(&bytes).unwrap();
                black_box(value)
            }
        });
    });
    group.bench_function("keel_get", |b| {
        b.to_async(rt).iter_batched(
            || {
                i = (i + 1) % KEYS;
                keel.evict_local(&keys[i]);
                &keys[i]
            },
            |key| {
                let keel = &keel;
                async move { black_box(keel.get(key).await.unwrap()) }
            },
            BatchSize::NumIterations(100),
        );
    });
    group.finish();

    // Interleaved rounds, as for L1: the median ratio is the figure to trust.
    let mut ratios = Vec::new();
    rt.block_on(async {
        for _ in 0..15 {
            let start = Instant::now();
            for k in keys.iter().take(300) {
                let mut conn = raw.clone();
                let bytes: Vec<u8> = redis::cmd("GET")
                    .arg(format!("raw:{k}"))
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                black_box(postcard::from_bytes::<String>(&bytes).unwrap());
            }
            let raw_t = start.elapsed();
            let mut keel_t = Duration::ZERO;
            for k in keys.iter().take(300) {
                keel.evict_local(k);
                let start = Instant::now();
                black_box(keel.get(k).await.unwrap());
                keel_t += start.elapsed();
            }
            ratios.push(keel_t.as_secs_f64() / raw_t.as_secs_f64());
        }
    });
    ratios.sort_by(f64::total_cmp);
    println!(
        "cache/l2_hit interleaved (15 rounds of 300 reads each): median ratio to raw GET + decode {:.2}x",
        ratios[ratios.len() / 2]
    );
    let stats = keel.stats();
    println!(
        "cache/l2_hit: keel served {} from L2 and {} from L1",
        stats.l2_hits, stats.l1_hits
    );
}

fn percentiles(mut samples: Vec<Duration>) -> (Duration, Duration) {
    samples.sort();
    let at = |p: f64| samples[((samples.len() - 1) as f64 * p).round() as usize];
    (at(0.5), at(0.99))
}

/// Cross-instance invalidation (A invalidates, until B's L1 has dropped the entry)
/// against a raw PUBLISH-to-receive round trip on the same server.
fn invalidation_latency(redis: &Redis) {
    const ROUNDS: usize = 2_000;
    let url = redis.server.url();
    redis.rt.block_on(async {
        let raw_client = redis::Client::open(url.as_str()).unwrap();
        let mut publisher = raw_client.get_multiplexed_async_connection().await.unwrap();
        let mut subscriber = raw_client.get_async_pubsub().await.unwrap();
        subscriber.subscribe("bench-channel").await.unwrap();
        let mut messages = subscriber.into_on_message();
        let mut raw = Vec::with_capacity(ROUNDS);
        for _ in 0..ROUNDS {
            let start = Instant::now();
            let _: i64 = redis::cmd("PUBLISH")
                .arg("bench-channel")
                .arg("user:1")
                .query_async(&mut publisher)
                .await
                .unwrap();
            messages.next().await.unwrap();
            raw.push(start.elapsed());
        }

        let l2 = || RedisL2::single(&url).unwrap();
        let a = Cache::<String>::builder("latency").l2(l2()).build().unwrap();
        let b = Cache::<String>::builder("latency").l2(l2()).build().unwrap();
        for cache in [&a, &b] {
            while !cache.backplane_status().unwrap().connected {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        let mut keel = Vec::with_capacity(ROUNDS);
        for round in 0..ROUNDS {
            b.get_or_load("user:1", move || async move { Ok::<_, std::io::Error>(format!("v{round}")) })
                .await
                .unwrap();
            assert!(b.peek("user:1").is_some());
            let start = Instant::now();
            a.invalidate("user:1").await.unwrap();
            let deadline = start + Duration::from_secs(2);
            while b.peek("user:1").is_some() {
                assert!(Instant::now() < deadline, "invalidation never arrived");
                // This thread is not a runtime worker: yielding the CPU to them (and to
                // redis-server) keeps the spin from delaying what it waits for.
                std::thread::yield_now();
            }
            keel.push(start.elapsed());
            // B drops in two rounds; a load started between them is not cached, so the
            // next round waits until B is done with this invalidation.
            let applied = round as u64 + 1;
            while b.stats().invalidations_received < applied {
                std::thread::yield_now();
            }
        }
        let (raw50, raw99) = percentiles(raw);
        let (keel50, keel99) = percentiles(keel);
        println!(
            "cache/invalidation ({ROUNDS} rounds): raw pub/sub round trip p50 {raw50:?} p99 {raw99:?}; \
             keel invalidate-to-dropped p50 {keel50:?} p99 {keel99:?} ({:.2}x / {:.2}x)",
            keel50.as_secs_f64() / raw50.as_secs_f64(),
            keel99.as_secs_f64() / raw99.as_secs_f64()
        );
    });
}

/// A Zipf(s) sampler over `n` ranks (inverse CDF by binary search).
struct Zipf {
    cdf: Vec<f64>,
    rng: fastrand::Rng,
}

impl Zipf {
    fn new(n: usize, s: f64, seed: u64) -> Self {
        let mut cdf = Vec::with_capacity(n);
        let mut total = 0.0;
        for rank in 1..=n {
            total += 1.0 / (rank as f64).powf(s);
            cdf.push(total);
        }
        for p in &mut cdf {
            *p /= total;
        }
        Self {
            cdf,
            rng: fastrand::Rng::with_seed(seed),
        }
    }

    fn sample(&mut self) -> usize {
        let u = self.rng.f64();
        self.cdf.partition_point(|p| *p < u).min(self.cdf.len() - 1)
    }
}

/// Hit ratio on a Zipf(0.99) trace with L1 capacity at 10% of the keys.
fn zipf_hit_ratio() {
    const KEYS: usize = 100_000;
    const REQUESTS: usize = 1_000_000;
    let mut zipf = Zipf::new(KEYS, 0.99, 42);
    let trace: Vec<String> = (0..REQUESTS)
        .map(|_| format!("k{}", zipf.sample()))
        .collect();

    // moka seeds its frequency sketch randomly, so each side runs three times.
    const TRIALS: usize = 3;
    let mut raw_ratios = Vec::new();
    let mut keel_ratios = Vec::new();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for _ in 0..TRIALS {
        let raw: moka::sync::Cache<String, Arc<u64>> = moka::sync::Cache::new((KEYS / 10) as u64);
        let mut raw_hits = 0usize;
        for key in &trace {
            if raw.get(key.as_str()).is_some() {
                raw_hits += 1;
            } else {
                raw.insert(key.clone(), Arc::new(1));
            }
        }
        raw_ratios.push(raw_hits as f64 / REQUESTS as f64);

        let keel = Cache::<u64>::builder("zipf")
            .l1_capacity((KEYS / 10) as u64)
            .entry_options(EntryOptions::new(Duration::from_secs(3_600)))
            .build()
            .unwrap();
        rt.block_on(async {
            for key in &trace {
                keel.get_or_load(key, || async { Ok::<_, std::io::Error>(1) })
                    .await
                    .unwrap();
            }
        });
        keel_ratios.push(keel.stats().l1_hits as f64 / REQUESTS as f64);
    }
    let show = |ratios: &[f64]| {
        let mean = ratios.iter().sum::<f64>() / ratios.len() as f64;
        let min = ratios.iter().copied().fold(f64::MAX, f64::min);
        let max = ratios.iter().copied().fold(f64::MIN, f64::max);
        format!(
            "{:.2}% (runs {:.2}..{:.2}%)",
            mean * 100.0,
            min * 100.0,
            max * 100.0
        )
    };
    println!(
        "cache/zipf(0.99), {KEYS} keys, {REQUESTS} requests, L1 = 10%: raw moka hit ratio {}, keel {}",
        show(&raw_ratios),
        show(&keel_ratios)
    );
}

/// Resident memory per entry at one million small entries (key `k<i>`, value `u64`),
/// each measured in a fresh child process so one does not reuse the other's pages.
fn memory_per_entry() {
    let exe = std::env::current_exe().unwrap();
    let mut figures = Vec::new();
    for which in ["moka", "keel"] {
        let out = std::process::Command::new(&exe)
            .env("KEEL_BENCH_MEMORY", which)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let bytes: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("bytes_per_entry="))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(f64::NAN);
        figures.push(bytes);
    }
    println!(
        "cache/memory, 1M entries: raw moka {:.0} B/entry, keel L1 {:.0} B/entry ({:.2}x)",
        figures[0],
        figures[1],
        figures[1] / figures[0]
    );
}

fn rss_bytes() -> f64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: f64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0.0);
    pages * 4096.0
}

fn memory_child(which: &str) {
    const N: u64 = 1_000_000;
    let keys: Vec<String> = (0..N).map(|i| format!("k{i}")).collect();
    let before = rss_bytes();
    match which {
        "moka" => {
            let cache: moka::sync::Cache<String, Arc<u64>> = moka::sync::Cache::new(N * 2);
            for (i, k) in keys.iter().enumerate() {
                cache.insert(k.clone(), Arc::new(i as u64));
            }
            cache.run_pending_tasks();
            let after = rss_bytes();
            println!("bytes_per_entry={}", (after - before) / N as f64);
            black_box(&cache);
        }
        _ => {
            let cache = Cache::<u64>::builder("memory")
                .l1_capacity(N * 2)
                .build()
                .unwrap();
            for (i, k) in keys.iter().enumerate() {
                cache.insert(k, i as u64).now_or_never().unwrap().unwrap();
            }
            let count = cache.l1_entry_count();
            let after = rss_bytes();
            println!("bytes_per_entry={}", (after - before) / N as f64);
            black_box((&cache, count));
        }
    }
}

fn main() {
    if let Ok(which) = std::env::var("KEEL_BENCH_MEMORY") {
        memory_child(&which);
        return;
    }
    let mut c = support::criterion();
    l1_hit(&mut c);
    let redis = redis();
    if let Some(redis) = &redis {
        l2_hit(&mut c, redis);
    }
    c.final_summary();
    if let Some(redis) = &redis {
        invalidation_latency(redis);
    }
    zipf_hit_ratio();
    memory_per_entry();
}
