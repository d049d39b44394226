//! Building a cache.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use moka::notification::RemovalCause;

use crate::cache::{Cache, Inner};
use crate::clock::VersionClock;
use crate::codec::{Codec, Compression};
use crate::error::BuildError;
use crate::flight::{Changes, Flights};
use crate::options::EntryOptions;
use crate::stats::Stats;
use keel_resilience::clock::{CoarseClock, WallClock};
#[cfg(feature = "redis")]
use keel_resilience::dead_letter::DeadLetterQueue;

#[cfg(feature = "redis")]
use crate::{
    backplane::{Backplane, LocalCache},
    keys::KeySpace,
    l2::RedisL2,
    remote::{LockSettings, Remote},
};

/// Settings for a [`Cache`], from [`Cache::builder`].
///
/// ```
/// use keel_cache_layers::{Cache, Compression, EntryOptions};
/// use std::time::Duration;
///
/// let cache = Cache::<Vec<u8>>::builder("thumbnails")
///     .schema_version(2)                 // bump when the value type changes
///     .l1_capacity(50_000)
///     .entry_options(EntryOptions::new(Duration::from_secs(600)).jitter(Duration::from_secs(60)))
///     .compression(Compression::above(4096))
///     .build()
///     .unwrap();
/// assert_eq!(cache.namespace(), "thumbnails");
/// ```
#[must_use]
pub struct CacheBuilder<V> {
    namespace: String,
    schema: u32,
    l1_capacity: u64,
    options: EntryOptions,
    codec: Arc<dyn Codec<V>>,
    compression: Compression,
    max_value_bytes: usize,
    clock: Arc<dyn WallClock>,
    l1_max_lifetime: Option<Duration>,
    #[cfg(feature = "redis")]
    l2: Option<RedisL2>,
    #[cfg(feature = "redis")]
    lock: Option<LockSettings>,
    #[cfg(feature = "redis")]
    tombstone_ttl: Duration,
    #[cfg(feature = "redis")]
    log_length: usize,
    #[cfg(feature = "redis")]
    catch_up_every: Duration,
    #[cfg(feature = "redis")]
    queue_capacity: usize,
    #[cfg(feature = "redis")]
    dead_letters: Option<DeadLetterQueue>,
}

impl<V> fmt::Debug for CacheBuilder<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheBuilder")
            .field("namespace", &self.namespace)
            .field("schema", &self.schema)
            .field("l1_capacity", &self.l1_capacity)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl<V: Send + Sync + 'static> CacheBuilder<V> {
    pub(crate) fn new(namespace: &str, codec: Arc<dyn Codec<V>>) -> Self {
        Self {
            namespace: namespace.to_owned(),
            schema: 1,
            l1_capacity: 10_000,
            options: EntryOptions::default(),
            codec,
            compression: Compression::default(),
            max_value_bytes: 64 << 20,
            clock: Arc::new(CoarseClock),
            l1_max_lifetime: None,
            #[cfg(feature = "redis")]
            l2: None,
            #[cfg(feature = "redis")]
            lock: None,
            #[cfg(feature = "redis")]
            tombstone_ttl: Duration::from_secs(60),
            #[cfg(feature = "redis")]
            log_length: 10_000,
            #[cfg(feature = "redis")]
            catch_up_every: Duration::from_secs(2),
            #[cfg(feature = "redis")]
            queue_capacity: 10_000,
            #[cfg(feature = "redis")]
            dead_letters: None,
        }
    }

    /// The schema version in every L2 key (default 1). Bump it when `V` changes shape:
    /// values written under the old version are then misses, never decode errors.
    pub fn schema_version(mut self, version: u32) -> Self {
        self.schema = version;
        self
    }

    /// The most entries L1 holds (default 10 000); moka evicts by TinyLFU beyond it.
    pub fn l1_capacity(mut self, entries: u64) -> Self {
        self.l1_capacity = entries;
        self
    }

    /// The default [`EntryOptions`] of every call without its own.
    pub fn entry_options(mut self, options: EntryOptions) -> Self {
        self.options = options;
        self
    }

    /// Compression of L2 values (default: LZ4 at 1 KiB and above).
    pub fn compression(mut self, compression: Compression) -> Self {
        self.compression = compression;
        self
    }

    /// The largest decompressed value accepted from L2 (default 64 MiB); a record claiming
    /// more is a miss, so a corrupt record cannot make the process allocate gigabytes.
    pub fn max_value_bytes(mut self, bytes: usize) -> Self {
        self.max_value_bytes = bytes;
        self
    }

    /// The longest an entry stays in L1, whatever its own deadlines (default: the default
    /// options' TTL + jitter + fail-safe). Entries past their own deadlines are never
    /// served; this bounds how long they can occupy L1 before moka drops them. Raise it
    /// when some calls use longer TTLs than the defaults, or they are re-read from L2.
    pub fn l1_max_lifetime(mut self, lifetime: Duration) -> Self {
        self.l1_max_lifetime = Some(lifetime);
        self
    }

    /// The clock for entry deadlines (default [`CoarseClock`]; tests use
    /// [`ManualClock`](crate::ManualClock)).
    pub fn clock(mut self, clock: impl WallClock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Adds the shared L2 and its backplane.
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    pub fn l2(mut self, l2: RedisL2) -> Self {
        self.l2 = Some(l2);
        self
    }

    /// One instance loads a missing key for all: the others wait (up to `ttl`) for its
    /// value to appear in L2. The lock expires after `ttl` if its holder dies.
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    pub fn distributed_lock(mut self, ttl: Duration) -> Self {
        self.lock = Some(LockSettings { ttl, wait: ttl });
        self
    }

    /// How long an invalidation's tombstone keeps slower loads from writing back the old
    /// value (default 60 s; make it at least twice your slowest loader). Records written
    /// by `insert` also stay in Redis at least this long (never served past their own
    /// deadlines), and a load that took more than half of it does not write to L2.
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    pub fn tombstone_ttl(mut self, ttl: Duration) -> Self {
        self.tombstone_ttl = ttl;
        self
    }

    /// How many invalidations the backplane keeps for instances catching up (default
    /// 10 000). One further behind drops its whole L1 instead.
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    pub fn backplane_log_length(mut self, entries: usize) -> Self {
        self.log_length = entries;
        self
    }

    /// How often an instance checks that it missed no invalidation (default 2 s). A gap
    /// in live messages or a reconnect triggers the check at once.
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    pub fn catch_up_interval(mut self, every: Duration) -> Self {
        self.catch_up_every = every;
        self
    }

    /// The write-behind queue's capacity (default 10 000).
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    pub fn write_behind_capacity(mut self, writes: usize) -> Self {
        self.queue_capacity = writes;
        self
    }

    /// Where write-behind writes go when they are given up (the value could not be
    /// encoded, or [`Cache::shutdown`](crate::Cache::shutdown) ran out of time with Redis
    /// unreachable): each becomes a letter with the cache key, the value encoded by the
    /// cache's codec, the error, the attempts and the failure times, source
    /// `cache-write-behind:<namespace>`. Without a queue they are dropped, with an error
    /// logged. A replay handler decides whether such a value is still current before
    /// writing it back: the cache may have moved on since.
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    pub fn dead_letters(mut self, queue: DeadLetterQueue) -> Self {
        self.dead_letters = Some(queue);
        self
    }

    /// Builds the cache. With an L2, this starts its backplane and write-behind tasks, so
    /// it must run inside a tokio runtime.
    ///
    /// # Errors
    /// [`BuildError`] for an invalid namespace or setting, or an L2 without a runtime.
    pub fn build(self) -> Result<Cache<V>, BuildError> {
        if !crate::keys::valid_namespace(&self.namespace) {
            return Err(BuildError::Namespace(self.namespace));
        }
        self.options.validate().map_err(BuildError::Setting)?;
        if self.l1_capacity == 0 {
            return Err(BuildError::Setting("the L1 capacity must be at least 1"));
        }
        let stats = Arc::new(Stats::new(&self.namespace));
        let versions = Arc::new(VersionClock::new());
        let listener = stats.clone();
        let l1 = moka::sync::Cache::builder()
            .max_capacity(self.l1_capacity)
            .time_to_live(
                self.l1_max_lifetime
                    .unwrap_or_else(|| horizon(&self.options)),
            )
            .eviction_listener(move |_, _, cause| match cause {
                RemovalCause::Expired => listener.evicted(true),
                RemovalCause::Size => listener.evicted(false),
                RemovalCause::Explicit | RemovalCause::Replaced => {}
            })
            .build();
        #[cfg(feature = "redis")]
        let remote = match self.l2 {
            None => None,
            Some(l2) => {
                if tokio::runtime::Handle::try_current().is_err() {
                    return Err(BuildError::NoRuntime);
                }
                if self.catch_up_every.is_zero() || self.log_length == 0 {
                    return Err(BuildError::Setting(
                        "the catch-up interval and the log length must be more than zero",
                    ));
                }
                let backplane = Arc::new(Backplane::new(
                    l2,
                    KeySpace::new(&self.namespace, self.schema),
                    self.log_length,
                    self.catch_up_every,
                ));
                Some(Remote::start(
                    backplane,
                    self.codec.clone(),
                    self.compression,
                    self.max_value_bytes,
                    stats.clone(),
                    self.clock.clone(),
                    versions.clone(),
                    self.lock,
                    self.tombstone_ttl,
                    self.queue_capacity,
                    self.dead_letters
                        .map(|queue| (queue, format!("cache-write-behind:{}", self.namespace))),
                ))
            }
        };
        #[cfg(not(feature = "redis"))]
        let _ = (
            &self.codec,
            self.compression,
            self.max_value_bytes,
            self.schema,
        );
        let inner = Arc::new(Inner {
            name: Arc::from(self.namespace.as_str()),
            l1,
            options: self.options,
            clock: self.clock,
            versions,
            flights: Flights::new(),
            changes: Changes::new(),
            stats,
            #[cfg(feature = "redis")]
            remote,
        });
        #[cfg(feature = "redis")]
        if let Some(remote) = &inner.remote {
            let local: std::sync::Weak<dyn LocalCache> = Arc::downgrade(&inner) as _;
            tokio::spawn(remote.backplane.clone().run(local));
        }
        Ok(Cache { inner })
    }
}

/// How long the default options keep an entry servable.
fn horizon(options: &EntryOptions) -> Duration {
    let servable = options.ttl + options.jitter + options.fail_safe.unwrap_or_default();
    servable.max(options.negative_ttl.unwrap_or_default()) + Duration::from_secs(1)
}
