//! Single-flight: concurrent misses of one key share one load.
//!
//! The load runs in its own task, so it finishes (and fills the cache) even when every
//! caller stopped waiting (a soft or hard timeout, a cancelled request).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::future::{BoxFuture, Shared};

use crate::error::CacheError;

/// What every caller of one load gets.
pub(crate) type Landed<V> = Result<Option<Arc<V>>, CacheError>;

pub(crate) type SharedLoad<V> = Shared<BoxFuture<'static, Landed<V>>>;

/// Loads in progress, by key.
#[derive(Debug)]
pub(crate) struct Flights<V> {
    map: Mutex<HashMap<Arc<str>, Flight<V>>>,
    ids: AtomicU64,
}

#[derive(Debug)]
struct Flight<V> {
    id: u64,
    load: SharedLoad<V>,
    /// The tags its result is stored with.
    tags: Arc<[Arc<str>]>,
    /// Set when the key is invalidated while the load runs: its result is returned to
    /// its callers but not cached.
    poisoned: Arc<AtomicBool>,
}

/// A flight just created, for its creator to start.
pub(crate) struct Ticket {
    pub(crate) id: u64,
    pub(crate) poisoned: Arc<AtomicBool>,
}

impl<V: Send + Sync + 'static> Flights<V> {
    pub(crate) fn new() -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
            ids: AtomicU64::new(1),
        }
    }

    /// Joins the load of `key`, or registers the one `start` makes.
    pub(crate) fn join_or_start(
        &self,
        key: &str,
        tags: &Arc<[Arc<str>]>,
        start: impl FnOnce(Ticket) -> BoxFuture<'static, Landed<V>>,
    ) -> SharedLoad<V> {
        let mut map = self
            .map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(flight) = map.get(key) {
            return flight.load.clone();
        }
        let id = self.ids.fetch_add(1, Ordering::Relaxed);
        let poisoned = Arc::new(AtomicBool::new(false));
        let load = futures_util::FutureExt::shared(start(Ticket {
            id,
            poisoned: poisoned.clone(),
        }));
        map.insert(
            Arc::from(key),
            Flight {
                id,
                load: load.clone(),
                tags: tags.clone(),
                poisoned,
            },
        );
        load
    }

    /// Removes the flight `id` of `key` (not a newer one).
    pub(crate) fn land(&self, key: &str, id: u64) {
        let mut map = self
            .map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if map.get(key).is_some_and(|f| f.id == id) {
            map.remove(key);
        }
    }

    /// Marks the load of `key` as overtaken by a write or an invalidation, and takes it
    /// out of the map: its callers still get its result, but nobody joins it any more
    /// (a request that starts after an invalidation must not get the read from before
    /// it), and its result is neither cached nor served as fail-safe.
    pub(crate) fn poison(&self, key: &str) {
        let mut map = self
            .map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(flight) = map.remove(key) {
            flight.poisoned.store(true, Ordering::Release);
        }
    }

    /// [`poison`](Self::poison) for the loads whose result is stored with `tag`; the
    /// others stay shared (an unrelated tag must not split every flight).
    pub(crate) fn poison_tag(&self, tag: &str) {
        let mut map = self
            .map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.retain(|_, flight| {
            let hit = flight.tags.iter().any(|t| &**t == tag);
            if hit {
                flight.poisoned.store(true, Ordering::Release);
            }
            !hit
        });
    }

    /// [`poison`](Self::poison) for every load (a clear, or a resync after missed
    /// invalidations).
    pub(crate) fn poison_all(&self) {
        let mut map = self
            .map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (_, flight) in map.drain() {
            flight.poisoned.store(true, Ordering::Release);
        }
    }
}

/// How many times each key may have changed in L1 (written, invalidated, cleared), in
/// stripes: a read that fills L1 from L2 notes its key's stripe before reading and checks
/// it after filling, and takes its fill back when a change landed in between, so a fill
/// never undoes a newer write or an invalidation. Stripes keep it cheap; a change to
/// another key of the same stripe only costs a fill (the next read goes to L2).
#[derive(Debug)]
pub(crate) struct Changes {
    stripes: Box<[AtomicU64]>,
    /// Tag invalidations: a fill of a tagged entry also checks this one (the keys a tag
    /// covers in L2 are not known here).
    tags: AtomicU64,
}

/// Where one key's changes stood when a read began.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Seen {
    stripe: u64,
    tags: u64,
}

const STRIPES: usize = 1024;

impl Changes {
    pub(crate) fn new() -> Self {
        Self {
            stripes: (0..STRIPES).map(|_| AtomicU64::new(0)).collect(),
            tags: AtomicU64::new(0),
        }
    }

    fn stripe(&self, key: &str) -> &AtomicU64 {
        // FNV-1a: cheap, and only the stripe's spread matters.
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in key.as_bytes() {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        #[allow(clippy::cast_possible_truncation)] // below STRIPES
        &self.stripes[(hash % STRIPES as u64) as usize]
    }

    /// Notes a change of `key` (before L1 is changed).
    pub(crate) fn mark(&self, key: &str) {
        self.stripe(key).fetch_add(1, Ordering::AcqRel);
    }

    /// Notes a change of every key.
    pub(crate) fn mark_all(&self) {
        self.tags.fetch_add(1, Ordering::AcqRel);
        for stripe in &self.stripes {
            stripe.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Notes a tag invalidation (the keys it covers in L1 are marked one by one).
    pub(crate) fn mark_tag(&self) {
        self.tags.fetch_add(1, Ordering::AcqRel);
    }

    /// Where `key`'s changes stand, for [`unchanged`](Self::unchanged).
    pub(crate) fn seen(&self, key: &str) -> Seen {
        Seen {
            stripe: self.stripe(key).load(Ordering::Acquire),
            tags: self.tags.load(Ordering::Acquire),
        }
    }

    /// Whether no tag was invalidated since `seen`.
    pub(crate) fn tags_unchanged(&self, seen: Seen) -> bool {
        self.tags.load(Ordering::Acquire) == seen.tags
    }

    /// Whether `key` (an entry with tags when `tagged`) has not changed since `seen`.
    pub(crate) fn unchanged(&self, key: &str, seen: Seen, tagged: bool) -> bool {
        self.stripe(key).load(Ordering::Acquire) == seen.stripe
            && (!tagged || self.tags.load(Ordering::Acquire) == seen.tags)
    }
}
