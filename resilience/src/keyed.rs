//! One policy per key, with bounded memory.

use std::fmt;
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

/// Holds one value (a breaker, a limiter) per key — per host, tenant or mailbox — made
/// on first use. Memory stays bounded whatever the keys: at most `max_keys` entries
/// (least recently and least frequently used go first, moka's TinyLFU) and entries idle
/// for `idle` are dropped. Unlike governor's keyed limiters, nobody needs to call a
/// `retain_recent` for that.
///
/// ```
/// use std::time::Duration;
/// use keel_resilience::breaker::{CircuitBreaker, CircuitBreakerConfig};
/// use keel_resilience::keyed::KeyedRegistry;
///
/// let per_host = KeyedRegistry::new(10_000, Duration::from_secs(600), |host: &String| {
///     CircuitBreaker::new(CircuitBreakerConfig::standard(format!("host:{host}")))
/// });
/// let breaker = per_host.get(&"graph.microsoft.com".to_owned());
/// assert_eq!(breaker.name(), "host:graph.microsoft.com");
/// ```
pub struct KeyedRegistry<K, V> {
    entries: moka::sync::Cache<K, Arc<V>>,
    make: Arc<dyn Fn(&K) -> V + Send + Sync>,
    max_keys: u64,
}

impl<K, V> fmt::Debug for KeyedRegistry<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedRegistry")
            .field("max_keys", &self.max_keys)
            .field("entries", &self.entries.entry_count())
            .finish_non_exhaustive()
    }
}

impl<K, V> Clone for KeyedRegistry<K, V> {
    fn clone(&self) -> Self {
        KeyedRegistry {
            entries: self.entries.clone(),
            make: self.make.clone(),
            max_keys: self.max_keys,
        }
    }
}

impl<K, V> KeyedRegistry<K, V>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Send + Sync + 'static,
{
    /// A registry of at most `max_keys` entries, each dropped after `idle` unused,
    /// made by `make` on first use.
    pub fn new(
        max_keys: u64,
        idle: Duration,
        make: impl Fn(&K) -> V + Send + Sync + 'static,
    ) -> Self {
        KeyedRegistry {
            entries: moka::sync::Cache::builder()
                .max_capacity(max_keys)
                .time_to_idle(idle)
                .build(),
            make: Arc::new(make),
            max_keys,
        }
    }

    /// The value for `key`, made now if there is none. Concurrent first uses of one key
    /// make it once.
    pub fn get(&self, key: &K) -> Arc<V> {
        self.entries
            .get_with_by_ref(key, || Arc::new((self.make)(key)))
    }

    /// The value for `key` if it exists, without making it.
    pub fn peek(&self, key: &K) -> Option<Arc<V>> {
        self.entries.get(key)
    }

    /// Drops `key`'s value; the next use makes a fresh one.
    pub fn remove(&self, key: &K) {
        self.entries.invalidate(key);
    }

    /// How many entries are held. Evictions are applied in the background; call
    /// [`sync`](Self::sync) first for an exact figure.
    #[must_use]
    pub fn len(&self) -> u64 {
        self.entries.entry_count()
    }

    /// Whether no entry is held (see [`len`](Self::len)).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Applies pending evictions now.
    pub fn sync(&self) {
        self.entries.run_pending_tasks();
    }

    /// The size bound.
    #[must_use]
    pub fn max_keys(&self) -> u64 {
        self.max_keys
    }
}
