//! One policy per key, with bounded memory.

use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use moka::notification::RemovalCause;

/// Whether a value holds state that must survive size pressure. An open circuit breaker
/// does: evicting it would hand the next call a fresh closed breaker that hammers the
/// failing dependency. Values that return `true` are not lost when a flood of new keys
/// pushes them out of the registry's main store.
///
/// ```
/// use keel_resilience::keyed::Retain;
///
/// struct Counter(u64);
/// impl Retain for Counter {} // nothing to keep: evict freely
/// ```
pub trait Retain {
    /// Whether to keep this value through size-based eviction (default: no).
    fn retain(&self) -> bool {
        false
    }
}

impl Retain for () {}

/// Holds one value (a breaker, a limiter) per key — per host, tenant or mailbox — made
/// on first use. Memory stays bounded whatever the keys: at most `max_keys` entries
/// (least recently and least frequently used go first, moka's TinyLFU) and entries idle
/// for `idle` are dropped. Unlike governor's keyed limiters, nobody needs to call a
/// `retain_recent` for that.
///
/// Values whose state matters ([`Retain`]: an open, half-open or forced-open breaker)
/// are not lost to size pressure: evicted from the main store, they move to a second,
/// separately bounded store (`max_keys / 10`, at least 64) and come back on their next
/// use, so a flood of new keys cannot reset a victim's open breaker. Idle expiry still
/// applies to them: one not used again within `idle` of its eviction is dropped.
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
    /// Values evicted by size whose state must be kept, with when they were evicted.
    retained: Arc<Mutex<HashMap<K, Kept<V>>>>,
    make: Arc<dyn Fn(&K) -> V + Send + Sync>,
    max_keys: u64,
    idle: Duration,
}

/// A retained value and when it left the main store: it expires `idle` after that
/// unless a use takes it back first (an open breaker reads "open" until a call comes,
/// so without this a retained breaker whose key is never used again stays for ever).
struct Kept<V> {
    value: Arc<V>,
    since: Instant,
}

impl<V> Kept<V> {
    fn fresh(&self, idle: Duration) -> bool {
        self.since.elapsed() < idle
    }
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
            retained: self.retained.clone(),
            make: self.make.clone(),
            max_keys: self.max_keys,
            idle: self.idle,
        }
    }
}

impl<K, V> KeyedRegistry<K, V>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Retain + Send + Sync + 'static,
{
    /// A registry of at most `max_keys` entries, each dropped after `idle` unused,
    /// made by `make` on first use.
    pub fn new(
        max_keys: u64,
        idle: Duration,
        make: impl Fn(&K) -> V + Send + Sync + 'static,
    ) -> Self {
        let retained: Arc<Mutex<HashMap<K, Kept<V>>>> = Arc::default();
        let max_retained = usize::try_from((max_keys / 10).max(64)).unwrap_or(usize::MAX);
        let keep = retained.clone();
        let on_evicted = move |key: Arc<K>, value: Arc<V>, cause: RemovalCause| {
            if cause != RemovalCause::Size || !value.retain() {
                return;
            }
            let mut kept = keep.lock().unwrap_or_else(PoisonError::into_inner);
            if kept.len() >= max_retained {
                kept.retain(|_, k| k.value.retain() && k.fresh(idle));
            }
            if kept.len() < max_retained {
                let since = Instant::now();
                kept.insert((*key).clone(), Kept { value, since });
            } else {
                metrics::counter!("resilience_keyed_retained_dropped_total").increment(1);
                tracing::warn!("keyed registry: too many values to retain; one is dropped");
            }
        };
        KeyedRegistry {
            entries: moka::sync::Cache::builder()
                .max_capacity(max_keys)
                .time_to_idle(idle)
                .eviction_listener(on_evicted)
                .build(),
            retained,
            make: Arc::new(make),
            max_keys,
            idle,
        }
    }

    fn take_retained(&self, key: &K) -> Option<Arc<V>> {
        let mut kept = self.retained.lock().unwrap_or_else(PoisonError::into_inner);
        if kept.is_empty() {
            return None;
        }
        kept.remove(key)
            .filter(|k| k.fresh(self.idle))
            .map(|k| k.value)
    }

    /// The value for `key`, made now if there is none. Concurrent first uses of one key
    /// make it once.
    pub fn get(&self, key: &K) -> Arc<V> {
        self.entries.get_with_by_ref(key, || {
            self.take_retained(key)
                .unwrap_or_else(|| Arc::new((self.make)(key)))
        })
    }

    /// The value for `key` if it exists, without making it.
    pub fn peek(&self, key: &K) -> Option<Arc<V>> {
        self.entries.get(key).or_else(|| {
            self.retained
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get(key)
                .filter(|k| k.fresh(self.idle))
                .map(|k| k.value.clone())
        })
    }

    /// Drops `key`'s value; the next use makes a fresh one.
    pub fn remove(&self, key: &K) {
        self.entries.invalidate(key);
        self.take_retained(key);
    }

    /// How many entries are held, retained ones included. Evictions are applied in the
    /// background; call [`sync`](Self::sync) first for an exact figure.
    #[must_use]
    pub fn len(&self) -> u64 {
        let retained = self
            .retained
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len();
        self.entries.entry_count() + u64::try_from(retained).unwrap_or(u64::MAX)
    }

    /// Whether no entry is held (see [`len`](Self::len)).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Applies pending evictions now.
    pub fn sync(&self) {
        self.entries.run_pending_tasks();
        let idle = self.idle;
        self.retained
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|_, k| k.fresh(idle));
    }

    /// The size bound.
    #[must_use]
    pub fn max_keys(&self) -> u64 {
        self.max_keys
    }
}
