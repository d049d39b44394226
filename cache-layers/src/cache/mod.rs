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

mod load;
mod read;
mod write;

pub use load::Warmed;

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
