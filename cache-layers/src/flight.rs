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

    pub(crate) fn poison(&self, key: &str) {
        let map = self
            .map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(flight) = map.get(key) {
            flight.poisoned.store(true, Ordering::Release);
        }
    }

    pub(crate) fn poison_all(&self) {
        let map = self
            .map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for flight in map.values() {
            flight.poisoned.store(true, Ordering::Release);
        }
    }
}
