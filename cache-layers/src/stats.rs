//! Counters for the cache: kept in the process (see [`CacheStats`]) and reported through
//! the `metrics` facade.
//!
//! | metric | labels | what |
//! |---|---|---|
//! | `keel_cache_hits_total` | `cache`, `layer` (`l1`, `l2`) | fresh values served |
//! | `keel_cache_misses_total` | `cache`, `layer` | lookups that found nothing fresh |
//! | `keel_cache_loads_total` | `cache`, `outcome` (`ok`, `error`) | loader runs |
//! | `keel_cache_load_duration_seconds` | `cache` | loader latency (histogram) |
//! | `keel_cache_evictions_total` | `cache`, `cause` (`size`, `expired`) | L1 evictions |
//! | `keel_cache_stale_served_total` | `cache` | stale values served (fail-safe, soft timeout) |
//! | `keel_cache_l2_errors_total` | `cache` | L2 calls that failed or were refused by the breaker |
//! | `keel_cache_invalidations_received_total` | `cache` | backplane invalidations applied |

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use metrics::{Counter, Histogram};

/// A snapshot of a cache's counters since it was built.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use keel_cache_layers::Cache;
///
/// let cache = Cache::<u32>::builder("docs").build().unwrap();
/// cache.insert("a", 1).await.unwrap();
/// assert!(cache.get("a").await.is_some());
/// assert!(cache.get("b").await.is_none());
/// let stats = cache.stats();
/// assert_eq!((stats.l1_hits, stats.l1_misses), (1, 1));
/// # }
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CacheStats {
    /// Fresh values served from L1.
    pub l1_hits: u64,
    /// Lookups that found nothing fresh in L1.
    pub l1_misses: u64,
    /// Fresh values served from L2.
    pub l2_hits: u64,
    /// Lookups that found nothing fresh in L2.
    pub l2_misses: u64,
    /// Loader runs that succeeded.
    pub loads: u64,
    /// Loader runs that failed.
    pub load_errors: u64,
    /// Stale values served.
    pub stale_served: u64,
    /// L1 entries evicted (size or expiry).
    pub evictions: u64,
    /// L2 calls that failed, timed out or were refused by the breaker.
    pub l2_errors: u64,
    /// L2 writes refused because L2 held a newer version.
    pub l2_write_conflicts: u64,
    /// L2 records that could not be decoded (counted as misses).
    pub decode_errors: u64,
    /// Invalidations received from other instances (live or caught up) and applied.
    pub invalidations_received: u64,
    /// Times the whole L1 was dropped because missed invalidations could not be known.
    pub full_resyncs: u64,
}

macro_rules! counters {
    ($($field:ident),* $(,)?) => {
        #[derive(Debug, Default)]
        pub(crate) struct Local { $(pub(crate) $field: AtomicU64,)* }
        impl Local {
            fn snapshot(&self) -> CacheStats {
                CacheStats { $($field: self.$field.load(Ordering::Relaxed),)* }
            }
        }
    };
}

counters!(
    l1_hits,
    l1_misses,
    l2_hits,
    l2_misses,
    loads,
    load_errors,
    stale_served,
    evictions,
    l2_errors,
    l2_write_conflicts,
    decode_errors,
    invalidations_received,
    full_resyncs,
);

/// A counter split over cache-line-padded stripes, one per thread (modulo), so threads
/// counting L1 hits do not fight over one cache line.
#[derive(Debug, Default)]
pub(crate) struct Striped([Padded; STRIPES]);

const STRIPES: usize = 8;

#[derive(Debug, Default)]
#[repr(align(128))]
struct Padded(AtomicU64);

impl Striped {
    #[inline]
    fn add(&self) {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        thread_local! {
            static STRIPE: usize = NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES;
        }
        let i = STRIPE.with(|s| *s);
        self.0[i].0.fetch_add(1, Ordering::Relaxed);
    }

    fn sum(&self) -> u64 {
        self.0.iter().map(|p| p.0.load(Ordering::Relaxed)).sum()
    }
}

/// The counters plus pre-registered `metrics` handles, so the hot path never looks up a
/// metric by name.
#[derive(Debug)]
pub(crate) struct Stats {
    pub(crate) local: Local,
    hits: Striped,
    l1_hit: Counter,
    l1_miss: Counter,
    l2_hit: Counter,
    l2_miss: Counter,
    load_ok: Counter,
    load_error: Counter,
    load_duration: Histogram,
    evicted_size: Counter,
    evicted_expired: Counter,
    stale: Counter,
    l2_error: Counter,
    received: Counter,
}

impl Stats {
    pub(crate) fn new(cache: &str) -> Self {
        let name = cache.to_owned();
        let layer = |metric: &'static str, layer: &'static str| metrics::counter!(metric, "cache" => name.clone(), "layer" => layer);
        Self {
            local: Local::default(),
            hits: Striped::default(),
            l1_hit: layer("keel_cache_hits_total", "l1"),
            l1_miss: layer("keel_cache_misses_total", "l1"),
            l2_hit: layer("keel_cache_hits_total", "l2"),
            l2_miss: layer("keel_cache_misses_total", "l2"),
            load_ok: metrics::counter!("keel_cache_loads_total", "cache" => name.clone(), "outcome" => "ok"),
            load_error: metrics::counter!("keel_cache_loads_total", "cache" => name.clone(), "outcome" => "error"),
            load_duration: metrics::histogram!("keel_cache_load_duration_seconds", "cache" => name.clone()),
            evicted_size: metrics::counter!("keel_cache_evictions_total", "cache" => name.clone(), "cause" => "size"),
            evicted_expired: metrics::counter!("keel_cache_evictions_total", "cache" => name.clone(), "cause" => "expired"),
            stale: metrics::counter!("keel_cache_stale_served_total", "cache" => name.clone()),
            l2_error: metrics::counter!("keel_cache_l2_errors_total", "cache" => name.clone()),
            received: metrics::counter!("keel_cache_invalidations_received_total", "cache" => name),
        }
    }

    pub(crate) fn snapshot(&self) -> CacheStats {
        let mut stats = self.local.snapshot();
        stats.l1_hits = self.hits.sum();
        stats
    }

    #[inline]
    pub(crate) fn l1_hit(&self) {
        self.hits.add();
        self.l1_hit.increment(1);
    }

    pub(crate) fn l1_miss(&self) {
        self.local.l1_misses.fetch_add(1, Ordering::Relaxed);
        self.l1_miss.increment(1);
    }

    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn l2_hit(&self) {
        self.local.l2_hits.fetch_add(1, Ordering::Relaxed);
        self.l2_hit.increment(1);
    }

    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn l2_miss(&self) {
        self.local.l2_misses.fetch_add(1, Ordering::Relaxed);
        self.l2_miss.increment(1);
    }

    pub(crate) fn load(&self, ok: bool, took: Duration) {
        if ok {
            self.local.loads.fetch_add(1, Ordering::Relaxed);
            self.load_ok.increment(1);
        } else {
            self.local.load_errors.fetch_add(1, Ordering::Relaxed);
            self.load_error.increment(1);
        }
        self.load_duration.record(took.as_secs_f64());
    }

    pub(crate) fn evicted(&self, expired: bool) {
        self.local.evictions.fetch_add(1, Ordering::Relaxed);
        if expired {
            self.evicted_expired.increment(1);
        } else {
            self.evicted_size.increment(1);
        }
    }

    pub(crate) fn stale_served(&self) {
        self.local.stale_served.fetch_add(1, Ordering::Relaxed);
        self.stale.increment(1);
    }

    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn l2_error(&self) {
        self.local.l2_errors.fetch_add(1, Ordering::Relaxed);
        self.l2_error.increment(1);
    }

    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn received(&self) {
        self.local
            .invalidations_received
            .fetch_add(1, Ordering::Relaxed);
        self.received.increment(1);
    }

    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn bump(&self, counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}
