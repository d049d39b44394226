//! Two cache instances in one process, as two replicas of a service would be: sharing a
//! Redis L2 and backplane when `REDIS_URL` is set, L1-only otherwise. Shows a load, a
//! hit, an update reaching the other instance, and fail-safe.
//!
//! ```text
//! cargo run -p keel-examples --example two_level_cache                         # L1 only
//! REDIS_URL=redis://127.0.0.1:6379 cargo run -p keel-examples --example two_level_cache
//! cargo run -p keel-examples --example two_level_cache -- --smoke              # checked
//! ```

// An executable's report goes to stdout.
#![allow(clippy::print_stdout)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use keel_cache_layers::{Cache, EntryOptions, RedisL2};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct User {
    id: u64,
    name: String,
}

/// A pretend database that counts its queries and can be switched off.
#[derive(Default)]
struct Database {
    queries: AtomicUsize,
    down: std::sync::atomic::AtomicBool,
}

impl Database {
    async fn user(self: Arc<Self>, id: u64, name: &'static str) -> Result<User, std::io::Error> {
        self.queries.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(20)).await;
        if self.down.load(Ordering::SeqCst) {
            return Err(std::io::Error::other("database unreachable"));
        }
        Ok(User {
            id,
            name: name.to_owned(),
        })
    }
}

fn check(ok: bool, what: &str) -> Result<(), String> {
    if ok {
        Ok(())
    } else {
        Err(format!("check failed: {what}"))
    }
}

#[tokio::main]
async fn main() {
    let smoke = std::env::args().any(|a| a == "--smoke");
    if let Err(e) = run().await {
        eprintln!("{e}");
        std::process::exit(1);
    }
    if smoke {
        println!("smoke: ok");
    }
}

async fn run() -> Result<(), String> {
    let redis_url = std::env::var("REDIS_URL").ok().filter(|u| !u.is_empty());
    let options = EntryOptions::new(Duration::from_millis(300))
        .fail_safe(Duration::from_secs(60))
        .fail_safe_throttle(Duration::from_secs(5));
    let instance = || -> Result<Cache<User>, String> {
        let mut builder = Cache::<User>::builder("example-users").entry_options(options.clone());
        if let Some(url) = &redis_url {
            builder = builder.l2(RedisL2::single(url).map_err(|e| e.to_string())?);
        }
        builder.build().map_err(|e| e.to_string())
    };
    let a = instance()?;
    let b = instance()?;
    let shared = redis_url.is_some();
    println!(
        "two instances, {}",
        if shared {
            "sharing Redis (L1 + L2 + backplane)"
        } else {
            "L1 only (set REDIS_URL to share)"
        }
    );
    if shared {
        wait_connected(&a).await?;
        wait_connected(&b).await?;
        // Start from a clean namespace, whatever an earlier run left in this Redis.
        a.clear().await.map_err(|e| e.to_string())?;
    }

    let db = Arc::new(Database::default());

    // 1. A load, then a hit.
    let d = db.clone();
    let ada = a
        .get_or_load("user:1", move || d.user(1, "Ada"))
        .await
        .map_err(|e| e.to_string())?;
    println!(
        "A loaded {ada:?} (database queries: {})",
        db.queries.load(Ordering::SeqCst)
    );
    let d = db.clone();
    let again = a
        .get_or_load("user:1", move || d.user(1, "unused"))
        .await
        .map_err(|e| e.to_string())?;
    check(
        *again == *ada && db.queries.load(Ordering::SeqCst) == 1,
        "the second read is an L1 hit",
    )?;
    println!("A read it again from L1: no query");

    // 2. The other instance: from L2 when shared, else its own load.
    let d = db.clone();
    let on_b = b
        .get_or_load("user:1", move || d.user(1, "Ada"))
        .await
        .map_err(|e| e.to_string())?;
    check(on_b.name == "Ada", "B sees Ada")?;
    let queries = db.queries.load(Ordering::SeqCst);
    if shared {
        check(queries == 1, "B found the value in L2")?;
        println!("B read it from L2: no query");
    } else {
        println!("B loaded its own copy (queries: {queries})");
    }

    // 3. An update on A reaches B.
    let started = Instant::now();
    a.insert(
        "user:1",
        User {
            id: 1,
            name: "Ada Lovelace".into(),
        },
    )
    .await
    .map_err(|e| e.to_string())?;
    if shared {
        while b.peek("user:1").is_some() {
            check(
                started.elapsed() < Duration::from_secs(5),
                "the invalidation reaches B",
            )?;
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        println!(
            "A updated user:1; B dropped its copy after {:?}",
            started.elapsed()
        );
        let d = db.clone();
        let fresh = b
            .get_or_load("user:1", move || d.user(1, "unused"))
            .await
            .map_err(|e| e.to_string())?;
        check(
            fresh.name == "Ada Lovelace",
            "B reads the new value from L2",
        )?;
        println!("B now reads {:?} from L2", fresh.name);
    } else {
        b.invalidate("user:1").await.map_err(|e| e.to_string())?;
        println!("L1 only: B's copy is independent (invalidated it by hand)");
    }

    // 4. Fail-safe: the entry expires while the database is down.
    tokio::time::sleep(Duration::from_millis(400)).await;
    db.down.store(true, Ordering::SeqCst);
    let d = db.clone();
    let served = a
        .get_or_load("user:1", move || d.user(1, "unused"))
        .await
        .map_err(|e| e.to_string())?;
    check(
        served.name == "Ada Lovelace",
        "fail-safe serves the last good value",
    )?;
    println!(
        "database down after expiry: A served the last good value {:?} (fail-safe)",
        served.name
    );

    let stats = a.stats();
    println!(
        "A's counters: {} L1 hits, {} L1 misses, {} L2 hits, {} loads, {} failed loads, {} stale served",
        stats.l1_hits,
        stats.l1_misses,
        stats.l2_hits,
        stats.loads,
        stats.load_errors,
        stats.stale_served
    );
    check(stats.stale_served == 1, "one stale value served")?;
    a.shutdown(Duration::from_secs(5))
        .await
        .map_err(|e| e.to_string())?;
    b.shutdown(Duration::from_secs(5))
        .await
        .map_err(|e| e.to_string())?;
    Ok(())
}

async fn wait_connected(cache: &Cache<User>) -> Result<(), String> {
    let started = Instant::now();
    while !cache.backplane_status().is_some_and(|s| s.connected) {
        check(
            started.elapsed() < Duration::from_secs(10),
            "the backplane connects to Redis",
        )?;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}
