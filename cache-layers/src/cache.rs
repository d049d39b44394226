//! The cache: L1, optional L2 and backplane, single-flight loads.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures_util::FutureExt as _;
use futures_util::future::{BoxFuture, Either};
use keel_resilience::timeout::with_timeout;
use moka::sync::Cache as Moka;

use crate::builder::CacheBuilder;
use crate::clock::VersionClock;
use crate::codec::{Codec, Postcard};
use crate::entry::{Entry, Tags};
use crate::error::{BoxError, CacheError};
use crate::flight::{Changes, Flights, Landed, Seen, SharedLoad, Ticket};
use crate::options::{Deadlines, EntryOptions};
use crate::stats::{CacheStats, Stats};
#[cfg(feature = "redis")]
use crate::{
    backplane::{BackplaneStatus, Dropped, Kind, LocalCache},
    remote::Remote,
};
use keel_resilience::clock::WallClock;

/// A loader turned into a boxed future (only when a load actually starts).
pub(crate) type Load<V> = BoxFuture<'static, Result<Option<V>, BoxError>>;

/// A two-level cache of `Arc<V>` by string key.
///
/// L1 is an in-process [moka](https://docs.rs/moka) cache holding `Arc<V>`: a hit clones
/// an `Arc`, never the value, and never decodes. L2, when configured with
/// [`CacheBuilder::l2`], is Redis (single node or cluster), shared by every instance and
/// kept coherent by a backplane. Cloning a `Cache` is cheap and shares it.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), keel_cache_layers::CacheError> {
/// use keel_cache_layers::Cache;
///
/// let cache = Cache::<String>::builder("users").build().unwrap();
/// let name = cache
///     .get_or_load("user:1", || async { Ok::<_, std::io::Error>("Ada".to_owned()) })
///     .await?;
/// assert_eq!(*name, "Ada");
/// // Loaded once; now a hit.
/// assert_eq!(cache.get("user:1").await.as_deref().map(String::as_str), Some("Ada"));
/// cache.invalidate("user:1").await?;
/// assert!(cache.get("user:1").await.is_none());
/// # Ok(()) }
/// ```
pub struct Cache<V> {
    pub(crate) inner: Arc<Inner<V>>,
}

impl<V> Clone for Cache<V> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<V> fmt::Debug for Cache<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Cache");
        d.field("namespace", &self.inner.name)
            .field("l1_entries", &self.inner.l1.entry_count());
        #[cfg(feature = "redis")]
        d.field("l2", &self.inner.remote.is_some());
        d.finish_non_exhaustive()
    }
}

pub(crate) struct Inner<V> {
    pub(crate) name: Arc<str>,
    pub(crate) l1: Moka<Arc<str>, Entry<V>>,
    pub(crate) options: EntryOptions,
    pub(crate) clock: Arc<dyn WallClock>,
    pub(crate) versions: Arc<VersionClock>,
    pub(crate) flights: Flights<V>,
    /// Changes per key (stripe), so fills from reads never undo a newer change.
    pub(crate) changes: Changes,
    pub(crate) stats: Arc<Stats>,
    #[cfg(feature = "redis")]
    pub(crate) remote: Option<Arc<Remote<V>>>,
}

impl<V> Drop for Inner<V> {
    fn drop(&mut self) {
        #[cfg(feature = "redis")]
        if let Some(remote) = &self.remote {
            remote.close_queue();
            remote.backplane.stop();
        }
    }
}

impl<V> Cache<V>
where
    V: serde::Serialize + serde::de::DeserializeOwned + Send + Sync + 'static,
{
    /// A builder for a cache in `namespace` (used in Redis keys and metric labels), with the
    /// default [`Postcard`] codec.
    pub fn builder(namespace: &str) -> CacheBuilder<V> {
        CacheBuilder::new(namespace, Arc::new(Postcard))
    }
}

impl<V: Send + Sync + 'static> Cache<V> {
    /// A builder with a codec of your own (for values that are not serde types, or to
    /// keep an existing L2 format).
    pub fn builder_with_codec(namespace: &str, codec: impl Codec<V>) -> CacheBuilder<V> {
        CacheBuilder::new(namespace, Arc::new(codec))
    }

    /// The namespace.
    #[must_use]
    pub fn namespace(&self) -> &str {
        &self.inner.name
    }

    /// The counters since the cache was built.
    #[must_use]
    pub fn stats(&self) -> CacheStats {
        self.inner.stats.snapshot()
    }

    /// How many entries L1 holds (moka's estimate, exact after pending maintenance).
    #[must_use]
    pub fn l1_entry_count(&self) -> u64 {
        self.inner.l1.run_pending_tasks();
        self.inner.l1.entry_count()
    }

    /// The backplane's state, when an L2 is configured.
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    #[must_use]
    pub fn backplane_status(&self) -> Option<BackplaneStatus> {
        self.inner.remote.as_ref().map(|r| {
            let mut status = r.backplane.status();
            status.pending_changes = r.changes_pending.len();
            status
        })
    }

    /// The fresh value in L1, without touching L2 or awaiting. The fastest read there is.
    #[inline]
    #[must_use]
    pub fn peek(&self, key: &str) -> Option<Arc<V>> {
        self.fresh_in_l1(key).flatten()
    }

    /// `Some(value)` for a fresh L1 entry (`Some(None)`: cached as absent), counted as a hit.
    #[inline]
    fn fresh_in_l1(&self, key: &str) -> Option<Option<Arc<V>>> {
        let entry = self.inner.l1.get(key)?;
        if entry.is_fresh(self.inner.clock.now_ms()) {
            self.inner.stats.l1_hit();
            Some(entry.value)
        } else {
            None
        }
    }

    /// The fresh value of `key` from L1, else from L2 (then kept in L1). `None` when
    /// neither has it, or it is cached as absent.
    ///
    /// An L1 hit completes on the first poll without allocating.
    #[inline]
    pub fn get<'a>(&'a self, key: &'a str) -> impl Future<Output = Option<Arc<V>>> + Send + 'a {
        match self.fresh_in_l1(key) {
            Some(value) => Either::Left(std::future::ready(value)),
            None => {
                self.inner.stats.l1_miss();
                Either::Right(Box::pin(self.get_from_l2(key)))
            }
        }
    }

    #[cfg_attr(not(feature = "redis"), allow(clippy::unused_async))]
    async fn get_from_l2(&self, key: &str) -> Option<Arc<V>> {
        #[cfg(feature = "redis")]
        if let Some(remote) = &self.inner.remote {
            let now = self.inner.clock.now_ms();
            let seen = self.inner.changes.seen(key);
            if let Some(entry) = remote.read(key).await
                && entry.is_fresh(now)
            {
                self.inner.stats.l2_hit();
                let value = entry.value.clone();
                let tagged = !entry.tags.is_empty();
                self.inner.fill(key, entry, || {
                    self.inner.changes.unchanged(key, seen, tagged)
                });
                return value;
            }
            self.inner.stats.l2_miss();
        }
        let _ = key;
        None
    }

    /// The value of `key`, loading it with `loader` on a miss. Concurrent misses of one key
    /// share one load (and, with [`CacheBuilder::distributed_lock`], one load across
    /// instances). Uses the cache's default [`EntryOptions`]. An L1 hit completes on the
    /// first poll without allocating.
    ///
    /// The loader runs in its own task, so it must be `'static`: move what it needs into it.
    /// That task runs in the caller's `tracing` span (the span of the caller that started
    /// the load, when several share it), so the loader's logs carry the request's fields,
    /// the correlation id keel-observability records included. Task-local context (such
    /// as keel-observability's `RequestContext`) does not cross tasks by itself: wrap the
    /// loader's future with `keel_observability::in_current_context` when it reads it.
    ///
    /// # Errors
    /// The loader's error (shared by every caller of that load) when no stale value may
    /// be served; [`CacheError::Timeout`] after the hard timeout; [`CacheError::Absent`]
    /// when the key is cached as absent.
    #[inline]
    pub fn get_or_load<'a, F, Fut, E>(
        &'a self,
        key: &'a str,
        loader: F,
    ) -> impl Future<Output = Result<Arc<V>, CacheError>> + Send + 'a
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<V, E>> + Send + 'static,
        E: Into<BoxError> + 'static,
    {
        self.get_or_load_with(key, &self.inner.options, loader)
    }

    /// [`get_or_load`](Self::get_or_load) with options for this call.
    ///
    /// # Errors
    /// As [`get_or_load`](Self::get_or_load).
    #[inline]
    pub fn get_or_load_with<'a, F, Fut, E>(
        &'a self,
        key: &'a str,
        options: &EntryOptions,
        loader: F,
    ) -> impl Future<Output = Result<Arc<V>, CacheError>> + Send + 'a
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<V, E>> + Send + 'static,
        E: Into<BoxError> + 'static,
    {
        let load = move || -> Load<V> {
            async move { loader().await.map(Some).map_err(Into::into) }.boxed()
        };
        match self.lookup_or_load(key, options, load) {
            Ok(landed) => Either::Left(std::future::ready(
                landed.and_then(|v| v.ok_or(CacheError::Absent)),
            )),
            Err(waiting) => Either::Right(waiting.map(|landed| landed?.ok_or(CacheError::Absent))),
        }
    }

    /// For keys that may not exist: a loader answering `Ok(None)` caches "absent" for the
    /// options' [negative TTL](EntryOptions::negative_ttl) (if set), so a flood of requests
    /// for a missing id does not reach the source.
    ///
    /// # Errors
    /// As [`get_or_load`](Self::get_or_load), except that absence is `Ok(None)`.
    pub fn get_or_load_optional<'a, F, Fut, E>(
        &'a self,
        key: &'a str,
        loader: F,
    ) -> impl Future<Output = Result<Option<Arc<V>>, CacheError>> + Send + 'a
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Option<V>, E>> + Send + 'static,
        E: Into<BoxError> + 'static,
    {
        self.get_or_load_optional_with(key, &self.inner.options, loader)
    }

    /// [`get_or_load_optional`](Self::get_or_load_optional) with options for this call.
    ///
    /// # Errors
    /// As [`get_or_load_optional`](Self::get_or_load_optional).
    pub fn get_or_load_optional_with<'a, F, Fut, E>(
        &'a self,
        key: &'a str,
        options: &EntryOptions,
        loader: F,
    ) -> impl Future<Output = Result<Option<Arc<V>>, CacheError>> + Send + 'a
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Option<V>, E>> + Send + 'static,
        E: Into<BoxError> + 'static,
    {
        let load = move || -> Load<V> { async move { loader().await.map_err(Into::into) }.boxed() };
        match self.lookup_or_load(key, options, load) {
            Ok(landed) => Either::Left(std::future::ready(landed)),
            Err(waiting) => Either::Right(waiting),
        }
    }

    /// The L1 check happens here, synchronously: `Ok` is the answer from L1; only a miss
    /// builds (and boxes) the future that waits for the load.
    #[inline]
    fn lookup_or_load(
        &self,
        key: &str,
        options: &EntryOptions,
        load: impl FnOnce() -> Load<V>,
    ) -> Result<Landed<V>, BoxFuture<'static, Landed<V>>> {
        let now = self.inner.clock.now_ms();
        match self.inner.l1.get(key) {
            Some(entry) if entry.is_fresh(now) && entry.deadlines.refresh_at > now => {
                self.inner.stats.l1_hit();
                Ok(Ok(entry.value))
            }
            found => self.refresh_or_load(key, options, load, found.is_some(), now),
        }
    }

    /// The rest of [`lookup_or_load`](Self::lookup_or_load), kept out of line.
    #[inline(never)]
    fn refresh_or_load(
        &self,
        key: &str,
        options: &EntryOptions,
        load: impl FnOnce() -> Load<V>,
        found: bool,
        now: u64,
    ) -> Result<Landed<V>, BoxFuture<'static, Landed<V>>> {
        // Note the key's changes, then look again: a change that landed since the lookup
        // is either seen in this second look or noted by the load (a change marks both
        // before and after it touches L1), so an invalidated entry never becomes the
        // load's fallback.
        let seen = self.inner.changes.seen(key);
        let found = if found { self.inner.l1.get(key) } else { None };
        let mut stale = None;
        if let Some(entry) = found {
            if entry.is_fresh(now) {
                self.inner.stats.l1_hit();
                // Stale-while-revalidate: answer now, reload in the background (or leave
                // the load already running alone: `start` joins it).
                drop(self.start(key, options, load, Some(entry.clone()), true, seen));
                return Ok(Ok(entry.value));
            }
            if entry.is_servable(now) {
                stale = Some(entry);
            }
        }
        self.inner.stats.l1_miss();
        let flight = self.start(key, options, load, stale.clone(), false, seen);
        let limit = match (&stale, options.soft_timeout, options.hard_timeout) {
            (Some(_), Some(soft), Some(hard)) => Some(soft.min(hard)),
            (Some(_), Some(soft), None) => Some(soft),
            (_, _, hard) => hard,
        };
        // The stale value answers a soft timeout only while nothing overwrote or
        // invalidated the key.
        let stale = stale.map(|entry| Stale {
            entry,
            inner: self.inner.clone(),
            key: Arc::from(key),
            seen,
        });
        Err(wait(
            flight,
            stale,
            limit,
            options.hard_timeout,
            self.inner.stats.clone(),
        )
        .boxed())
    }

    /// Joins the running load of `key` or starts one in its own task.
    fn start(
        &self,
        key: &str,
        options: &EntryOptions,
        load: impl FnOnce() -> Load<V>,
        stale: Option<Entry<V>>,
        refresh: bool,
        seen: Seen,
    ) -> SharedLoad<V> {
        self.inner
            .flights
            .join_or_start(key, &options.tags, |ticket| {
                let inner = self.inner.clone();
                let key: Arc<str> = Arc::from(key);
                let options = options.clone();
                // In the caller's tracing span (and with it the correlation id that
                // keel-observability's layer records on it): the loader's logs keep
                // the request they serve.
                let task = tokio::spawn(tracing::Instrument::in_current_span(Inner::load(
                    inner,
                    key,
                    options,
                    load(),
                    stale,
                    refresh,
                    ticket,
                    seen,
                )));
                async move { task.await.unwrap_or(Err(CacheError::LoaderPanicked)) }.boxed()
            })
    }

    /// Stores a value (write-through): in L1 at once, and in L2 before returning, then
    /// tells the other instances to drop their copy. Uses the default options.
    ///
    /// # Errors
    /// [`CacheError::L2Unavailable`] when L2 could not be written or the others not told
    /// (L1 holds the value all the same; the key is kept pending, and when Redis answers
    /// its L2 copy is dropped and the others are told); [`CacheError::Encode`] when the
    /// codec failed.
    pub async fn insert(&self, key: &str, value: V) -> Result<(), CacheError> {
        let options = self.inner.options.clone();
        self.insert_with(key, value, &options).await
    }

    /// [`insert`](Self::insert) with options for this entry (TTL, tags...).
    ///
    /// # Errors
    /// As [`insert`](Self::insert).
    pub async fn insert_with(
        &self,
        key: &str,
        value: V,
        options: &EntryOptions,
    ) -> Result<(), CacheError> {
        #[cfg_attr(not(feature = "redis"), allow(unused_mut))]
        let mut entry = self.inner.store_locally(key, value, options);
        #[cfg(feature = "redis")]
        if let Some(remote) = &self.inner.remote {
            remote.after_write_behind(Some(key), None).await;
            let written = remote.write(key, &entry).await;
            if let Ok(version) = written {
                entry.version = version;
            }
            // A read of L2 that began before the write landed there may have filled L1
            // meanwhile (this instance skips its own announcement): put the write back.
            // Pending first, so a read that missed this second round is kept off L2.
            self.inner.keep_pending(&written, |p| p.key(key));
            self.inner.put_back(key, &entry);
            written?;
        }
        #[cfg(not(feature = "redis"))]
        drop(entry);
        Ok(())
    }

    /// Stores a value in L1 at once and queues its L2 write (write-behind). The queue is
    /// bounded ([`CacheBuilder::write_behind_capacity`]): when full, this waits for room. Writes of
    /// one key reach L2 in the order they were made; [`flush`](Self::flush) and
    /// [`shutdown`](Self::shutdown) wait for the queue to drain. Without an L2 this is a
    /// plain L1 insert.
    ///
    /// # Errors
    /// [`CacheError::ShutDown`] after [`shutdown`](Self::shutdown).
    pub async fn insert_behind(&self, key: &str, value: V) -> Result<(), CacheError> {
        let options = self.inner.options.clone();
        let entry = self.inner.store_locally(key, value, &options);
        #[cfg(feature = "redis")]
        if let Some(remote) = &self.inner.remote {
            return remote.queue(Arc::from(key), entry).await;
        }
        #[cfg(not(feature = "redis"))]
        drop(entry);
        Ok(())
    }

    /// Waits until every write queued by [`insert_behind`](Self::insert_behind) before
    /// this call is in L2, or `within` passes.
    ///
    /// # Errors
    /// [`CacheError::Unflushed`] when the deadline passed first.
    pub async fn flush(&self, within: Duration) -> Result<(), CacheError> {
        #[cfg(feature = "redis")]
        if let Some(remote) = &self.inner.remote {
            return remote.flush(within).await;
        }
        let _ = within;
        Ok(())
    }

    /// Flushes the write-behind queue (within `within`), then stops the backplane. Other
    /// clones of this cache keep L1 but no longer write behind. Writes still queued when
    /// `within` passes are tried once more and, when that fails too, go to the
    /// dead-letter queue set with [`CacheBuilder::dead_letters`](crate::CacheBuilder::dead_letters)
    /// (this waits up to `within` again for that), or are dropped with an error logged.
    ///
    /// # Errors
    /// [`CacheError::Unflushed`] with the number of writes that could not be made.
    pub async fn shutdown(&self, within: Duration) -> Result<(), CacheError> {
        #[cfg(feature = "redis")]
        if let Some(remote) = &self.inner.remote {
            let flushed = remote.close(within).await;
            remote.backplane.stop();
            return flushed;
        }
        let _ = within;
        Ok(())
    }

    /// Drops `key` from this instance's L1 only: L2 and the other instances keep it, and
    /// the next read here comes from L2. For memory pressure, or to make one instance
    /// re-read a value.
    pub fn evict_local(&self, key: &str) {
        self.inner.l1.invalidate(key);
    }

    /// Drops `key` here and in L2 (a versioned tombstone, so a load that read the old value
    /// before this call cannot write it back), and tells the other instances to drop it.
    ///
    /// # Errors
    /// [`CacheError::L2Unavailable`]: dropped here only for now; kept pending and applied
    /// to L2 and the other instances when Redis answers.
    pub async fn invalidate(&self, key: &str) -> Result<(), CacheError> {
        self.inner.drop_key_locally(key);
        #[cfg(feature = "redis")]
        if let Some(remote) = &self.inner.remote {
            remote.after_write_behind(Some(key), None).await;
            let dropped = remote.tombstone(key).await;
            // A read of L2 that began before the tombstone landed may have filled L1
            // meanwhile (this instance skips its own announcement): drop it again.
            // Pending first, so a read that missed this second round is kept off L2.
            self.inner.keep_pending(&dropped, |p| p.key(key));
            self.inner.drop_key_locally(key);
            dropped?;
        }
        Ok(())
    }

    /// Drops every entry written with `tag`, here, in L2 and on the other instances.
    ///
    /// # Errors
    /// [`CacheError::L2Unavailable`]: dropped here only for now; kept pending and applied
    /// when Redis answers.
    pub async fn invalidate_tag(&self, tag: &str) -> Result<(), CacheError> {
        self.inner.drop_tag_locally(tag);
        #[cfg(feature = "redis")]
        if let Some(remote) = &self.inner.remote {
            remote.after_write_behind(None, Some(tag)).await;
            let dropped = remote.tombstone_tag(tag).await;
            // Reads of L2 that began before the tombstones landed: drop again.
            self.inner.keep_pending(&dropped, |p| p.tag(tag));
            self.inner.drop_tag_locally(tag);
            dropped?;
        }
        Ok(())
    }

    /// Drops everything: L1 here and on the other instances, and L2 (by moving the
    /// namespace to a new generation: old keys are never scanned, they expire).
    ///
    /// # Errors
    /// [`CacheError::L2Unavailable`]: cleared here only for now; kept pending and applied
    /// (a new generation, announced) when Redis answers.
    pub async fn clear(&self) -> Result<(), CacheError> {
        #[cfg(feature = "redis")]
        self.inner.supersede(Remote::supersede_all);
        self.inner.drop_all_locally();
        #[cfg(feature = "redis")]
        if let Some(remote) = &self.inner.remote {
            remote.after_write_behind(None, None).await;
            let cleared = remote.backplane.publish(Kind::Clear, "").await;
            let cleared = cleared.map_err(CacheError::from);
            self.inner.keep_pending(&cleared, |p| {
                p.clear();
                crate::pending::Added::Kept
            });
            // Reads of the old generation that began before it moved: drop again.
            self.inner.drop_all_locally();
            cleared?;
        }
        Ok(())
    }

    /// Loads `keys` ahead of traffic, `concurrency` at a time: each is taken from L2 if
    /// there, else from `loader`. Returns how many are now cached and how many failed.
    pub async fn warm<I, F, Fut, E>(&self, keys: I, concurrency: usize, loader: F) -> Warmed
    where
        I: IntoIterator<Item = String>,
        F: Fn(String) -> Fut + Clone + Send + 'static,
        Fut: Future<Output = Result<V, E>> + Send + 'static,
        E: Into<BoxError> + 'static,
    {
        use futures_util::StreamExt as _;
        let results = futures_util::stream::iter(keys)
            .map(|key| {
                let loader = loader.clone();
                async move {
                    let k = key.clone();
                    self.get_or_load(&key, move || loader(k)).await.is_ok()
                }
            })
            .buffer_unordered(concurrency.max(1))
            .collect::<Vec<bool>>()
            .await;
        let loaded = results.iter().filter(|ok| **ok).count();
        Warmed {
            loaded,
            failed: results.len() - loaded,
        }
    }
}

/// A stale entry a caller may fall back to, and how to tell it is still the key's.
struct Stale<V: Send + Sync + 'static> {
    entry: Entry<V>,
    inner: Arc<Inner<V>>,
    key: Arc<str>,
    seen: Seen,
}

/// Waits for a load within the soft/hard limit, falling back to `stale` (unless the key
/// changed since).
async fn wait<V: Send + Sync + 'static>(
    flight: SharedLoad<V>,
    stale: Option<Stale<V>>,
    limit: Option<Duration>,
    hard: Option<Duration>,
    stats: Arc<Stats>,
) -> Landed<V> {
    let Some(limit) = limit else {
        return flight.await;
    };
    let mut flight = flight;
    match with_timeout(limit, &mut flight).await {
        Ok(landed) => landed,
        Err(_) => match stale {
            Some(stale) => {
                let tagged = !stale.entry.tags.is_empty();
                if stale
                    .inner
                    .changes
                    .unchanged(&stale.key, stale.seen, tagged)
                {
                    stats.stale_served();
                    return Ok(stale.entry.value);
                }
                // The key changed since the call began: its stale value is no answer.
                // Wait for the load, up to the hard limit if there is one.
                match hard {
                    None => flight.await,
                    Some(hard) => match with_timeout(hard.saturating_sub(limit), flight).await {
                        Ok(landed) => landed,
                        Err(_) => Err(CacheError::Timeout { after: hard }),
                    },
                }
            }
            None => Err(CacheError::Timeout { after: limit }),
        },
    }
}

/// What [`Cache::warm`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Warmed {
    /// Keys now cached.
    pub loaded: usize,
    /// Keys whose load failed.
    pub failed: usize,
}

impl<V: Send + Sync + 'static> Inner<V> {
    fn store_locally(&self, key: &str, value: V, options: &EntryOptions) -> Entry<V> {
        let version = self.versions.next(&*self.clock);
        let entry = Entry {
            value: Some(Arc::new(value)),
            version,
            deadlines: options.deadlines(self.clock.now_ms(), false),
            tags: Tags::from(&options.tags),
        };
        // A load or a read from L2 that started before this write must not replace it:
        // two rounds, as in `drop_key_locally`.
        #[cfg(feature = "redis")]
        self.supersede(|remote| remote.supersede_key(key));
        self.changes.mark(key);
        self.flights.poison(key);
        self.l1.insert(Arc::from(key), entry.clone());
        self.put_back(key, &entry);
        entry
    }

    /// Puts `entry` in L1 if `still_current()` (nothing changed the key since it was
    /// read), and takes it back if a change landed while it went in: every L1 fill from
    /// a read goes through here, so none undoes a newer write or an invalidation (at
    /// worst the key is dropped, and the next read goes to L2).
    fn fill(&self, key: &str, entry: Entry<V>, still_current: impl Fn() -> bool) {
        if !still_current() {
            return;
        }
        self.l1.insert(Arc::from(key), entry);
        if !still_current() {
            self.l1.invalidate(key);
        }
    }

    /// Tells the write-behind queue of a local change (queued writes it replaces must not
    /// land after it).
    #[cfg(feature = "redis")]
    fn supersede(&self, change: impl FnOnce(&Remote<V>)) {
        if let Some(remote) = &self.remote {
            change(remote);
        }
    }

    /// Keeps a change whose L2 step failed, to apply when Redis answers (see `pending`).
    #[cfg(feature = "redis")]
    fn keep_pending<T>(
        &self,
        result: &Result<T, CacheError>,
        add: impl FnOnce(&crate::pending::Pending) -> crate::pending::Added,
    ) {
        if let (Err(CacheError::L2Unavailable { .. }), Some(remote)) = (result, &self.remote)
            && add(&remote.changes_pending) == crate::pending::Added::Overflowed
        {
            tracing::warn!(cache = %self.name, "too many cache changes wait for Redis: they turn into one clear, and L1 is dropped");
            self.drop_all_locally();
        }
    }

    /// Drops `key` from L1, in two rounds: note the change, drop; note it again, drop
    /// again. A fill checks the notes before and after it inserts, so one that slipped
    /// in between the first drop and the second note is removed by the second drop; a
    /// lookup that still saw the old entry looks again after noting the changes, and
    /// sees the drop or is told of the change.
    pub(crate) fn drop_key_locally(&self, key: &str) {
        #[cfg(feature = "redis")]
        self.supersede(|remote| remote.supersede_key(key));
        for _ in 0..2 {
            self.changes.mark(key);
            self.flights.poison(key);
            self.l1.invalidate(key);
        }
    }

    /// The second round of a write (again after its L2 step, when there is one): note
    /// the change again, and put the write back if an older entry took its place
    /// meanwhile (a read of L2 that began before the write landed there).
    fn put_back(&self, key: &str, entry: &Entry<V>) {
        self.changes.mark(key);
        self.flights.poison(key);
        if self
            .l1
            .get(key)
            .is_some_and(|current| current.version < entry.version)
        {
            self.l1.insert(Arc::from(key), entry.clone());
        }
    }

    /// Drops every L1 entry stored with `tag`, in two rounds as in `drop_key_locally`
    /// (fills of tagged entries check the tag notes).
    pub(crate) fn drop_tag_locally(&self, tag: &str) {
        #[cfg(feature = "redis")]
        self.supersede(|remote| remote.supersede_tag(tag));
        for _ in 0..2 {
            self.changes.mark_tag();
            self.flights.poison_tag(tag);
            // A scan, not moka's invalidation closures: those tax every read of the cache
            // to speed up an operation that is rare.
            for (key, entry) in &self.l1 {
                if entry.tags.iter().any(|t| &**t == tag) {
                    self.changes.mark(&key);
                    self.l1.invalidate(&*key);
                }
            }
        }
    }

    /// Drops every L1 entry, in two rounds as in `drop_key_locally`.
    pub(crate) fn drop_all_locally(&self) {
        for _ in 0..2 {
            self.changes.mark_all();
            self.flights.poison_all();
            self.l1.invalidate_all();
            // moka's invalidate_all spares entries written within its clock's last tick; an
            // entry written just before a clear must go too.
            for (key, _) in &self.l1 {
                self.l1.invalidate(&*key);
            }
        }
    }

    /// One load, in its own task: L2 first, then (optionally) the distributed lock, then
    /// the loader; fail-safe on failure.
    #[cfg_attr(not(feature = "redis"), allow(unused_mut, unused_variables))]
    #[allow(clippy::too_many_arguments)]
    async fn load(
        self: Arc<Self>,
        key: Arc<str>,
        options: EntryOptions,
        load: Load<V>,
        mut stale: Option<Entry<V>>,
        refresh: bool,
        ticket: Ticket,
        seen: Seen,
    ) -> Landed<V> {
        let _landing = Landing {
            inner: &self,
            key: &key,
            id: ticket.id,
        };
        // Fills of this load's own result: a change of the key poisons the load (and the
        // write's second round, after its L2 step, catches a fill that came first), so
        // unrelated changes never cost a load its caching.
        let cacheable = || !ticket.poisoned.load(Ordering::Acquire);
        // An entry found in L2 may carry tags this load was not started with: a tag
        // invalidation since the load began also stops its fill (it costs an L2 read).
        let (inner, this_key) = (&*self, &*key);
        let from_l2 =
            |tagged: bool| move || cacheable() && (!tagged || inner.changes.tags_unchanged(seen));
        // The caller's stale entry was read before the load existed: only a key that did
        // not change since the lookup noted it may fall back on it.
        let current =
            |tagged: bool| move || cacheable() && inner.changes.unchanged(this_key, seen, tagged);
        #[cfg(feature = "redis")]
        let mut lock = None;
        #[cfg(feature = "redis")]
        let mut snapshot = None;
        #[cfg(feature = "redis")]
        if let Some(remote) = &self.remote {
            let now = self.clock.now_ms();
            let found = match remote.read_for_load(&key, &options.tags).await {
                Ok((found, taken)) => {
                    if taken.tombstoned {
                        // Invalidated since the caller's entry was read: no fail-safe.
                        stale = None;
                    }
                    snapshot = Some(taken);
                    found
                }
                Err(_) => None,
            };
            match found {
                Some(found) if usable(&found, now, refresh) => {
                    self.stats.l2_hit();
                    self.fill(&key, found.clone(), from_l2(!found.tags.is_empty()));
                    return Ok(found.value);
                }
                Some(found) => {
                    if found.is_servable(now)
                        && stale.as_ref().is_none_or(|s| s.version < found.version)
                    {
                        stale = Some(found);
                    }
                    self.stats.l2_miss();
                }
                None => self.stats.l2_miss(),
            }
            match remote.lock_or_wait(&key, &*self.clock, refresh).await {
                crate::remote::LockStep::Found(found) => {
                    self.fill(&key, found.clone(), from_l2(!found.tags.is_empty()));
                    return Ok(found.value);
                }
                crate::remote::LockStep::Held(held) => lock = Some(held),
                crate::remote::LockStep::Proceed => {}
            }
        }
        // Versions that reach L2 are minted by Redis: the snapshot's, when there is one.
        #[cfg(feature = "redis")]
        let version = snapshot
            .as_ref()
            .map_or_else(|| self.versions.next(&*self.clock), |s| s.version);
        #[cfg(not(feature = "redis"))]
        let version = self.versions.next(&*self.clock);
        let started = Instant::now();
        let result = load.await;
        self.stats.load(result.is_ok(), started.elapsed());
        let now = self.clock.now_ms();
        let landed = match result {
            Ok(value) => {
                let negative = value.is_none();
                if negative && options.negative_ttl.is_none() {
                    Ok(None)
                } else {
                    let entry = Entry {
                        value: value.map(Arc::new),
                        version,
                        deadlines: options.deadlines(now, negative),
                        tags: Tags::from(&options.tags),
                    };
                    if cacheable() {
                        self.fill(&key, entry.clone(), cacheable);
                        // Best effort: the value is served from L1 either way. Only with a
                        // snapshot, so it cannot land over a change made during the load.
                        #[cfg(feature = "redis")]
                        if let (Some(remote), Some(snapshot)) = (&self.remote, &snapshot) {
                            let _ = remote.fill(&key, &entry, snapshot, &cacheable).await;
                        }
                    }
                    Ok(entry.value.clone())
                }
            }
            // An invalidated or overwritten value is never served as fail-safe.
            Err(error) => {
                match stale.filter(|s| s.is_servable(now) && current(!s.tags.is_empty())()) {
                    Some(stale) => {
                        tracing::warn!(cache = %self.name, error = %error, "loader failed; serving the last good value (fail-safe)");
                        self.stats.stale_served();
                        if cacheable() {
                            let retry_at = now
                                .saturating_add(crate::options::millis(options.fail_safe_throttle));
                            let fresh_until = stale
                                .deadlines
                                .fresh_until
                                .max(retry_at.min(stale.deadlines.stale_until));
                            let throttled = stale.with_deadlines(Deadlines {
                                fresh_until,
                                refresh_at: stale.deadlines.refresh_at.max(retry_at),
                                stale_until: stale.deadlines.stale_until,
                            });
                            let tagged = !throttled.tags.is_empty();
                            self.fill(&key, throttled, current(tagged));
                        }
                        Ok(stale.value)
                    }
                    None => Err(CacheError::loader(error)),
                }
            }
        };
        #[cfg(feature = "redis")]
        if let (Some(remote), Some(held)) = (&self.remote, lock) {
            remote.unlock(held).await;
        }
        landed
    }
}

/// Whether an entry found in L2 answers a load (for a refresh: it must not itself be due).
#[cfg(feature = "redis")]
fn usable<V>(entry: &Entry<V>, now: u64, refresh: bool) -> bool {
    entry.is_fresh(now) && (!refresh || entry.deadlines.refresh_at > now)
}

/// Removes a flight from the map when its task ends, even by panic.
struct Landing<'a, V: Send + Sync + 'static> {
    inner: &'a Inner<V>,
    key: &'a str,
    id: u64,
}

impl<V: Send + Sync + 'static> Drop for Landing<'_, V> {
    fn drop(&mut self) {
        self.inner.flights.land(self.key, self.id);
    }
}

#[cfg(feature = "redis")]
impl<V: Send + Sync + 'static> LocalCache for Inner<V> {
    fn drop_key(&self, key: &str) {
        self.drop_key_locally(key);
    }

    fn drop_tag(&self, tag: &str) {
        self.drop_tag_locally(tag);
    }

    fn drop_all(&self, why: Dropped) {
        match why {
            Dropped::Resync => self.stats.bump(&self.stats.local.full_resyncs),
            // Another instance's clear (a resync or a first contact keeps queued writes).
            Dropped::Clear => self.supersede(Remote::supersede_all),
            Dropped::FirstContact => {}
        }
        self.drop_all_locally();
    }

    fn has_entries(&self) -> bool {
        self.l1.iter().next().is_some()
    }

    fn received(&self) {
        self.stats.received();
    }

    fn replay(&self) -> futures_util::future::BoxFuture<'_, ()> {
        Box::pin(async move {
            if let Some(remote) = &self.remote
                && let Err(e) = remote.replay_pending().await
            {
                tracing::debug!(cache = %self.name, error = %e, "pending cache changes not applied yet; retrying on the next catch-up");
            }
        })
    }
}
