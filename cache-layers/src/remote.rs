//! The L2 side of a cache: reads and version-checked writes of entries, tombstones, tag
//! sets, the distributed load lock, and the write-behind queue.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keel_resilience::ErrorClass;
use keel_resilience::dead_letter::{DeadLetterQueue, NewLetter};
use keel_resilience::timeout::with_timeout;
use tokio::sync::{mpsc, oneshot};

use crate::backplane::Backplane;
use crate::backplane::Kind;
use crate::clock::VersionClock;
use crate::codec::{Codec, Compression};
use crate::entry::{self, Decoded, Entry};
use crate::error::CacheError;
use crate::l2::L2Error;
use crate::pending::Pending;
use crate::stats::Stats;
use keel_resilience::clock::WallClock;

/// The distributed load lock's settings.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LockSettings {
    /// How long a lock lives if its holder dies.
    pub(crate) ttl: Duration,
    /// How long others wait for the holder's value before loading themselves.
    pub(crate) wait: Duration,
}

pub(crate) struct Remote<V> {
    pub(crate) backplane: Arc<Backplane>,
    pub(crate) codec: Arc<dyn Codec<V>>,
    pub(crate) compression: Compression,
    pub(crate) max_value_bytes: usize,
    pub(crate) stats: Arc<Stats>,
    pub(crate) clock: Arc<dyn WallClock>,
    pub(crate) versions: Arc<VersionClock>,
    pub(crate) lock: Option<LockSettings>,
    pub(crate) tombstone_ttl: Duration,
    behind: Mutex<Option<mpsc::Sender<Queued<V>>>>,
    worker: Mutex<Option<tokio::task::JoinHandle<()>>>,
    pending: AtomicUsize,
    abandon: AtomicBool,
    /// Where given-up writes go, and the source they are marked with.
    dead_letters: Option<(DeadLetterQueue, String)>,
    /// Changes made while L2 was unreachable, applied when it answers again.
    pub(crate) changes_pending: Pending,
    /// Keys with a write-behind queued: reads keep off L2 (it holds the older value)
    /// until it lands, even when L1 evicted the new value meanwhile.
    queued_keys: Mutex<std::collections::HashMap<Arc<str>, usize>>,
    /// The last place given in the write-behind queue.
    serials: AtomicU64,
    /// Local changes made while writes were queued, by the last queue place they cover.
    superseded: Mutex<Superseded>,
    /// The write-behind write on its way to L2, if any: a local change it covers waits
    /// for it, so the change lands after it.
    in_flight: Mutex<Option<InFlight>>,
}

struct InFlight {
    key: Arc<str>,
    tags: crate::entry::Tags,
    /// Closed when the write is done.
    done: Arc<tokio::sync::Semaphore>,
}

/// Local changes that replace write-behind writes queued before them: such a write is
/// dropped instead of landing after the change (program order on one instance).
#[derive(Debug, Default)]
struct Superseded {
    keys: std::collections::HashMap<Arc<str>, u64>,
    tags: std::collections::HashMap<Arc<str>, u64>,
    all: u64,
}

impl<V> fmt::Debug for Remote<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Remote")
            .field("l2", &self.backplane.l2)
            .field("pending_writes", &self.pending.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

enum Queued<V> {
    /// A key, its entry, and its place in the queue (see `Superseded`).
    Write(Arc<str>, Entry<V>, u64),
    Flush(oneshot::Sender<()>),
}

/// How many times a change follows the namespace to a new generation before giving up.
const MOVES: usize = 3;

/// The namespace moved to another generation (a `clear`, or Redis went back in time)
/// while a change was on its way: it landed where no one reads. It is made again there.
fn moved(from: u64, to: u64) -> u64 {
    tracing::debug!(
        from,
        to,
        "the cache's generation moved during a change; making it again"
    );
    to
}

fn generation_moving() -> CacheError {
    CacheError::L2Unavailable(crate::L2Failure::GenerationMoving)
}

/// Where a key (and the tags a load will store it with) stood in L2 when a load began.
#[derive(Debug)]
pub(crate) struct Snapshot {
    generation: u64,
    /// Every change of the key after this point has a higher version (minted by Redis).
    pub(crate) version: u64,
    tag_versions: Vec<String>,
    taken: Instant,
    /// L2 held a tombstone: the key was invalidated, so no older value may be served as
    /// fail-safe.
    pub(crate) tombstoned: bool,
}

/// The outcome of asking for the load lock.
pub(crate) enum LockStep<V> {
    /// Another instance loaded it meanwhile.
    Found(Entry<V>),
    /// We hold the lock: load, write, then unlock.
    Held(HeldLock),
    /// No lock (disabled, L2 trouble, or the holder took too long): load anyway.
    Proceed,
}

pub(crate) struct HeldLock {
    key: String,
    token: String,
}

impl<V> Remote<V> {
    /// Drops the sender so the worker ends once the queue is empty.
    pub(crate) fn close_queue(&self) {
        drop(
            self.behind
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take(),
        );
    }
}

impl<V: Send + Sync + 'static> Remote<V> {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn start(
        backplane: Arc<Backplane>,
        codec: Arc<dyn Codec<V>>,
        compression: Compression,
        max_value_bytes: usize,
        stats: Arc<Stats>,
        clock: Arc<dyn WallClock>,
        versions: Arc<VersionClock>,
        lock: Option<LockSettings>,
        tombstone_ttl: Duration,
        queue_capacity: usize,
        dead_letters: Option<(DeadLetterQueue, String)>,
    ) -> Arc<Self> {
        let (tx, rx) = mpsc::channel(queue_capacity.max(1));
        let remote = Arc::new(Self {
            backplane,
            codec,
            compression,
            max_value_bytes,
            stats,
            clock,
            versions,
            lock,
            tombstone_ttl,
            behind: Mutex::new(Some(tx)),
            worker: Mutex::new(None),
            pending: AtomicUsize::new(0),
            abandon: AtomicBool::new(false),
            dead_letters,
            changes_pending: Pending::default(),
            queued_keys: Mutex::default(),
            serials: AtomicU64::new(0),
            superseded: Mutex::default(),
            in_flight: Mutex::new(None),
        });
        let worker = tokio::spawn(remote.clone().drain(rx));
        *remote
            .worker
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(worker);
        remote
    }

    fn generation(&self) -> Result<u64, L2Error> {
        self.backplane.generation().ok_or(L2Error::NotConnected)
    }

    fn counted<T>(&self, result: Result<T, L2Error>) -> Result<T, L2Error> {
        if result.is_err() {
            self.stats.l2_error();
        }
        result
    }

    /// The servable entry of `key` in L2, if any. Tombstones, other generations and
    /// undecodable records are misses.
    pub(crate) async fn read(&self, key: &str) -> Option<Entry<V>> {
        if self.changes_pending.blocks(key) || self.is_queued(key) {
            return None;
        }
        let generation = self.generation().ok()?;
        let keys = &self.backplane.keys;
        let bytes = self
            .counted(self.backplane.l2.get(&keys.entry(generation, key)).await)
            .ok()??;
        self.servable(&bytes)
    }

    fn superseding(&self) -> Option<std::sync::MutexGuard<'_, Superseded>> {
        (self.pending.load(Ordering::Acquire) > 0).then(|| {
            self.superseded
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        })
    }

    /// A local change of `key`: write-behind writes of it queued so far must not land.
    pub(crate) fn supersede_key(&self, key: &str) {
        if let Some(mut superseded) = self.superseding() {
            let serial = self.serials.load(Ordering::Acquire);
            superseded.keys.insert(Arc::from(key), serial);
        }
    }

    /// A local invalidation of `tag`.
    pub(crate) fn supersede_tag(&self, tag: &str) {
        if let Some(mut superseded) = self.superseding() {
            let serial = self.serials.load(Ordering::Acquire);
            superseded.tags.insert(Arc::from(tag), serial);
        }
    }

    /// A clear, made here or by another instance.
    pub(crate) fn supersede_all(&self) {
        if let Some(mut superseded) = self.superseding() {
            superseded.all = self.serials.load(Ordering::Acquire);
        }
    }

    fn superseded(&self, key: &str, entry: &Entry<V>, serial: u64) -> bool {
        let superseded = self
            .superseded
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        serial <= superseded.all
            || superseded.keys.get(key).is_some_and(|s| serial <= *s)
            || entry
                .tags
                .iter()
                .any(|t| superseded.tags.get(&**t).is_some_and(|s| serial <= *s))
    }

    /// One queued write is done with; when none is left, the record of superseding
    /// changes is too.
    fn landed_or_dropped(&self, given_up: bool) {
        // A write given up at shutdown stays counted: `close` reports it as unflushed.
        if given_up && self.abandon.load(Ordering::Acquire) {
            return;
        }
        let mut superseded = self
            .superseded
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if self.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            superseded.keys.clear();
            superseded.tags.clear();
        }
    }

    fn flight_slot(&self) -> std::sync::MutexGuard<'_, Option<InFlight>> {
        self.in_flight
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Waits (up to a few L2 call limits) for the write-behind write on its way to L2 when
    /// it is of `key`, has `tag`, or, with neither, is any write: a local change made
    /// after it was queued must land after it (queued writes not yet started are dropped
    /// instead, see `Superseded`).
    pub(crate) async fn after_write_behind(&self, key: Option<&str>, tag: Option<&str>) {
        if self.pending.load(Ordering::Acquire) == 0 {
            return;
        }
        let done = self.flight_slot().as_ref().and_then(|f| {
            let covered = match (key, tag) {
                (Some(key), _) => *f.key == *key,
                (None, Some(tag)) => f.tags.iter().any(|t| &**t == tag),
                (None, None) => true,
            };
            covered.then(|| (f.done.clone(), 2 * f.tags.len() + 2))
        });
        if let Some((done, calls)) = done {
            // As long as the write can take: its calls (tags before and after the value,
            // the value), each up to the L2 call limit, in every generation it follows.
            let calls = u32::try_from(calls).unwrap_or(u32::MAX);
            let limit = self.backplane.l2.op_timeout * calls.saturating_mul(MOVES as u32)
                + Duration::from_secs(1);
            let _ = with_timeout(limit, done.acquire()).await;
        }
    }

    fn is_queued(&self, key: &str) -> bool {
        self.pending.load(Ordering::Acquire) > 0
            && self
                .queued_keys
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .contains_key(key)
    }

    fn mark_queued(&self, key: &Arc<str>, queued: bool) {
        let mut keys = self
            .queued_keys
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if queued {
            *keys.entry(key.clone()).or_insert(0) += 1;
        } else if let Some(n) = keys.get_mut(key) {
            *n -= 1;
            if *n == 0 {
                keys.remove(key);
            }
        }
    }

    fn servable(&self, bytes: &[u8]) -> Option<Entry<V>> {
        match entry::decode(bytes, &*self.codec, self.max_value_bytes) {
            Ok(Decoded::Entry(entry)) => {
                // Keep this instance's versions ahead of any it has seen, whatever its clock.
                self.versions.observe(entry.version);
                (entry.is_servable(self.clock.now_ms())
                    && !self.changes_pending.blocks_tags(&entry.tags))
                .then_some(entry)
            }
            Ok(Decoded::Tombstone { version }) => {
                self.versions.observe(version);
                None
            }
            Err(e) => {
                self.stats.bump(&self.stats.local.decode_errors);
                tracing::debug!(error = %e, "an L2 record did not decode; treated as a miss");
                None
            }
        }
    }

    /// A load's first step: the servable entry of `key` in L2 (if any) and a snapshot of
    /// where the key and `tags` stand, so the load's result is written to L2 only if
    /// nothing changed them meanwhile. `Err` when L2 cannot be read: the load's result
    /// then stays out of L2.
    pub(crate) async fn read_for_load(
        &self,
        key: &str,
        tags: &[Arc<str>],
    ) -> Result<(Option<Entry<V>>, Snapshot), L2Error> {
        // Before the calls: the snapshot may be older than this, never younger.
        let taken = Instant::now();
        let generation = self.counted(self.generation())?;
        let keys = &self.backplane.keys;
        let l2 = &self.backplane.l2;
        let mut tag_versions = Vec::with_capacity(tags.len());
        // Tags before the key: a tag invalidation after this point changes the tag's
        // version; one before it tombstoned the key first.
        for tag in tags {
            let version = self.counted(l2.tag_version(&keys.tag_version(generation, tag)).await)?;
            tag_versions.push(version);
        }
        let (bytes, version) =
            self.counted(l2.read_snapshot(&keys.entry(generation, key)).await)?;
        let tombstoned = bytes.as_deref().is_some_and(|b| {
            b.get(entry::VERSION_DIGITS)
                .is_some_and(|f| f & entry::TOMBSTONE != 0)
        });
        // A key with a change still pending: L2 may hold what the change replaced.
        let found = bytes
            .filter(|_| !self.changes_pending.blocks(key) && !self.is_queued(key))
            .and_then(|bytes| self.servable(&bytes));
        Ok((
            found,
            Snapshot {
                generation,
                version,
                tag_versions,
                taken,
                tombstoned,
            },
        ))
    }

    /// Writes an insert (it lands whatever L2 holds: the newest write to reach Redis wins)
    /// and tells the other instances to drop their copy. Returns the version Redis gave
    /// it.
    pub(crate) async fn write(&self, key: &str, entry: &Entry<V>) -> Result<u64, CacheError> {
        self.write_if(key, entry, &|| true)
            .await
            .map(|written| written.unwrap_or(0))
    }

    /// [`write`](Self::write), unless `wanted()` turns false before the value is sent
    /// (`None` then): a write-behind that a later local change replaced while its tags
    /// were being written.
    async fn write_if(
        &self,
        key: &str,
        entry: &Entry<V>,
        wanted: &(dyn Fn() -> bool + Sync),
    ) -> Result<Option<u64>, CacheError> {
        let record =
            entry::encode(entry, &*self.codec, self.compression).map_err(CacheError::Encode)?;
        // The record (its version) lives at least as long as a tombstone, so a load that
        // read its source before this write cannot find the key empty and fill it: the
        // load compares with this version, and gives up past a tombstone's life. Its own
        // deadlines still decide when it is served.
        let ttl_ms = self
            .ttl_ms(entry)
            .max(crate::options::millis(self.tombstone_ttl));
        let keys = &self.backplane.keys;
        let mut generation = self.counted(self.generation())?;
        for _ in 0..MOVES {
            let tag_keys: Vec<String> =
                entry.tags.iter().map(|t| keys.tag(generation, t)).collect();
            // Before the value: a failure in between leaves a harmless extra member.
            self.counted(self.backplane.l2.add_to_tags(&tag_keys, key, ttl_ms).await)?;
            if !wanted() {
                return Ok(None);
            }
            let entry_key = keys.entry(generation, key);
            let (version, now) = self.counted(
                self.backplane
                    .write_then_publish(key, &entry_key, &record, ttl_ms)
                    .await,
            )?;
            self.versions.observe(version);
            // Again after the value: a tag invalidation that took the set in between (this
            // write then landed after it) must not leave the key out of the set for the
            // next one.
            self.counted(self.backplane.l2.add_to_tags(&tag_keys, key, ttl_ms).await)?;
            if now == generation {
                return Ok(Some(version));
            }
            generation = moved(generation, now);
        }
        Err(generation_moving())
    }

    fn ttl_ms(&self, entry: &Entry<V>) -> u64 {
        entry
            .deadlines
            .stale_until
            .saturating_sub(self.clock.now_ms())
            .max(1)
    }

    /// Writes a load's result, unless the key or one of its tags changed since the load's
    /// snapshot (or the load took longer than a tombstone lives). True when written.
    pub(crate) async fn fill(
        &self,
        key: &str,
        entry: &Entry<V>,
        snapshot: &Snapshot,
        still_wanted: &(dyn Fn() -> bool + Sync),
    ) -> Result<bool, CacheError> {
        // A change since may have expired from L2 (tombstones and written records live a
        // tombstone's life at least): past half of it there may be nothing left to
        // compare with. Checked again before the value is sent (the tag calls take
        // time), with the load's own poisoning.
        let in_time = || snapshot.taken.elapsed() < self.tombstone_ttl / 2 && still_wanted();
        if !in_time() {
            return Ok(false);
        }
        let record =
            entry::encode(entry, &*self.codec, self.compression).map_err(CacheError::Encode)?;
        let ttl_ms = self.ttl_ms(entry);
        let (keys, l2, generation) = (
            &self.backplane.keys,
            &self.backplane.l2,
            snapshot.generation,
        );
        for (tag, expected) in entry.tags.iter().zip(&snapshot.tag_versions) {
            let joined = l2
                .join_tag(
                    &keys.tag(generation, tag),
                    &keys.tag_version(generation, tag),
                    key,
                    ttl_ms,
                    expected,
                )
                .await;
            if !self.counted(joined)? {
                self.stats.bump(&self.stats.local.l2_write_conflicts);
                return Ok(false);
            }
        }
        if !in_time() {
            return Ok(false);
        }
        let written = self.counted(
            l2.fill(
                &keys.entry(generation, key),
                &record,
                snapshot.version,
                ttl_ms,
            )
            .await,
        )?;
        if !written {
            self.stats.bump(&self.stats.local.l2_write_conflicts);
        }
        Ok(written)
    }

    /// Writes a tombstone over `key` (it lands whatever L2 holds) and tells the other
    /// instances.
    pub(crate) async fn tombstone(&self, key: &str) -> Result<(), CacheError> {
        let record = entry::encode_tombstone(0);
        let ttl = crate::options::millis(self.tombstone_ttl);
        let mut generation = self.counted(self.generation())?;
        for _ in 0..MOVES {
            let entry_key = self.backplane.keys.entry(generation, key);
            let (version, now) = self.counted(
                self.backplane
                    .write_then_publish(key, &entry_key, &record, ttl)
                    .await,
            )?;
            self.versions.observe(version);
            if now == generation {
                return Ok(());
            }
            generation = moved(generation, now);
        }
        Err(generation_moving())
    }

    /// Tombstones every key of `tag` in L2, raises the tag's version (so a load that
    /// started before cannot add its result to the tag afterwards), and tells the other
    /// instances.
    pub(crate) async fn tombstone_tag(&self, tag: &str) -> Result<(), CacheError> {
        let keys = &self.backplane.keys;
        let l2 = &self.backplane.l2;
        let record = entry::encode_tombstone(0);
        let ttl = crate::options::millis(self.tombstone_ttl);
        let mut generation = self.counted(self.generation())?;
        for _ in 0..MOVES {
            // The version outlives any load that could still compare with it (`fill`
            // refuses loads older than a tombstone's life).
            let members = self.counted(
                l2.take_tag(
                    &keys.tag(generation, tag),
                    &keys.tag_version(generation, tag),
                    ttl.saturating_mul(2),
                )
                .await,
            )?;
            for member in &members {
                let written = l2.put(&keys.entry(generation, member), &record, ttl).await;
                self.versions.observe(self.counted(written)?);
            }
            // Only now out of the set: a failure before this leaves them for the replay.
            self.counted(
                l2.forget_members(&keys.tag(generation, tag), &members)
                    .await,
            )?;
            let now = self.counted(self.backplane.publish(Kind::Tag, tag).await)?;
            if now == generation {
                return Ok(());
            }
            generation = moved(generation, now);
        }
        Err(generation_moving())
    }

    /// Applies the changes made while L2 was unreachable: to L2, then announced to the
    /// other instances. Stops at the first failure (the rest stay pending).
    pub(crate) async fn replay_pending(&self) -> Result<(), CacheError> {
        let Some(batch) = self.changes_pending.batch() else {
            return Ok(());
        };
        let count = batch.keys.len() + batch.tags.len() + usize::from(batch.clear.is_some());
        if let Some(mark) = batch.clear {
            self.counted(self.backplane.publish(Kind::Clear, "").await)?;
            self.changes_pending.cleared(mark);
        }
        for (tag, mark) in batch.tags {
            self.tombstone_tag(&tag).await?;
            self.changes_pending.tag_done(&tag, mark);
        }
        for (key, mark) in batch.keys {
            self.tombstone(&key).await?;
            self.changes_pending.key_done(&key, mark);
        }
        tracing::info!(
            changes = count,
            "applied the cache changes made while Redis was unreachable"
        );
        Ok(())
    }

    /// Takes the load lock of `key`, or waits for its holder's value.
    pub(crate) async fn lock_or_wait(
        &self,
        key: &str,
        clock: &dyn WallClock,
        refresh: bool,
    ) -> LockStep<V> {
        let (Some(settings), Ok(generation)) = (self.lock, self.generation()) else {
            return LockStep::Proceed;
        };
        let l2 = &self.backplane.l2;
        let lock_key = self.backplane.keys.lock(generation, key);
        let token = format!("{}:{:016x}", self.backplane.origin, fastrand::u64(..));
        let deadline = Instant::now() + settings.wait;
        loop {
            match l2.try_lock(&lock_key, &token, settings.ttl).await {
                Ok(true) => {
                    return LockStep::Held(HeldLock {
                        key: lock_key,
                        token,
                    });
                }
                Ok(false) => {}
                Err(_) => return LockStep::Proceed,
            }
            let mut poll = Duration::from_millis(2);
            loop {
                tokio::time::sleep(poll).await;
                poll = (poll * 2).min(Duration::from_millis(25));
                if let Some(found) = self.read(key).await {
                    let now = clock.now_ms();
                    if found.is_fresh(now) && (!refresh || found.deadlines.refresh_at > now) {
                        self.stats.l2_hit();
                        return LockStep::Found(found);
                    }
                }
                if Instant::now() >= deadline {
                    return LockStep::Proceed;
                }
                match l2.lock_held(&lock_key).await {
                    Ok(true) => {}
                    Ok(false) => break, // released without a value (failed load): try to take it
                    Err(_) => return LockStep::Proceed,
                }
            }
        }
    }

    pub(crate) async fn unlock(&self, held: HeldLock) {
        let _ = self.backplane.l2.unlock(&held.key, &held.token).await;
    }

    /// Queues a write-behind.
    pub(crate) async fn queue(&self, key: Arc<str>, entry: Entry<V>) -> Result<(), CacheError> {
        let sender = self
            .behind
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
            .ok_or(CacheError::ShutDown)?;
        self.pending.fetch_add(1, Ordering::AcqRel);
        self.mark_queued(&key, true);
        let serial = self.serials.fetch_add(1, Ordering::AcqRel) + 1;
        if sender
            .send(Queued::Write(key.clone(), entry, serial))
            .await
            .is_err()
        {
            self.mark_queued(&key, false);
            self.pending.fetch_sub(1, Ordering::AcqRel);
            return Err(CacheError::ShutDown);
        }
        Ok(())
    }

    pub(crate) async fn flush(&self, within: Duration) -> Result<(), CacheError> {
        let sender = self
            .behind
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let Some(sender) = sender else {
            return self.unflushed();
        };
        let (tx, rx) = oneshot::channel();
        let flushed = with_timeout(within, async {
            sender.send(Queued::Flush(tx)).await.is_ok() && rx.await.is_ok()
        })
        .await;
        match flushed {
            Ok(true) => Ok(()),
            _ => Err(CacheError::Unflushed {
                pending: self.pending.load(Ordering::Acquire),
            }),
        }
    }

    fn unflushed(&self) -> Result<(), CacheError> {
        match self.pending.load(Ordering::Acquire) {
            0 => Ok(()),
            pending => Err(CacheError::Unflushed { pending }),
        }
    }

    /// Closes the queue and waits for it to drain. When `within` passes first, the writes
    /// still queued are given up: each is tried once more, and those that fail go to the
    /// dead-letter queue (this waits up to `within` again for that).
    pub(crate) async fn close(&self, within: Duration) -> Result<(), CacheError> {
        self.close_queue();
        let worker = self
            .worker
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(mut worker) = worker
            && with_timeout(within, &mut worker).await.is_err()
        {
            self.abandon.store(true, Ordering::Release);
            let _ = with_timeout(within, worker).await;
        }
        self.unflushed()
    }

    /// The write-behind worker: one write at a time, in queue order, each retried until
    /// it lands (or the shutdown deadline passes), then announced to the other instances.
    async fn drain(self: Arc<Self>, mut queue: mpsc::Receiver<Queued<V>>) {
        while let Some(item) = queue.recv().await {
            match item {
                Queued::Flush(done) => {
                    let _ = done.send(());
                }
                Queued::Write(key, entry, serial) => {
                    // In flight before the check: a local change either is seen by the
                    // check, or sees this write in flight and waits for it.
                    let done = Arc::new(tokio::sync::Semaphore::new(0));
                    *self.flight_slot() = Some(InFlight {
                        key: key.clone(),
                        tags: entry.tags.clone(),
                        done: done.clone(),
                    });
                    if self.superseded(&key, &entry, serial) {
                        // A later change made here (a write, an invalidation, a tag
                        // invalidation or a clear) replaced it: it must not land after it.
                        self.flight_slot().take();
                        done.close();
                        self.mark_queued(&key, false);
                        self.landed_or_dropped(false);
                        continue;
                    }
                    let mut backoff = Duration::from_millis(10);
                    let mut attempts = 0_u32;
                    let mut first_failure = None;
                    let given_up = loop {
                        if attempts > 0 && self.superseded(&key, &entry, serial) {
                            break None; // replaced while it waited for Redis
                        }
                        attempts = attempts.saturating_add(1);
                        let wanted = || !self.superseded(&key, &entry, serial);
                        match self.write_if(&key, &entry, &wanted).await {
                            Ok(_) => break None,
                            Err(CacheError::Encode(e)) => {
                                break Some((
                                    ErrorClass::Permanent,
                                    format!("the value could not be encoded: {e}"),
                                ));
                            }
                            Err(e) => {
                                first_failure.get_or_insert_with(std::time::SystemTime::now);
                                if self.abandon.load(Ordering::Acquire) {
                                    break Some((
                                        ErrorClass::Transient,
                                        format!("not written before shutdown: {e}"),
                                    ));
                                }
                            }
                        }
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(1));
                    };
                    let lost = given_up.is_some();
                    if let Some((class, message)) = given_up {
                        self.give_up(&key, &entry, class, message, attempts, first_failure)
                            .await;
                    }
                    self.flight_slot().take();
                    done.close();
                    self.mark_queued(&key, false);
                    self.landed_or_dropped(lost);
                }
            }
        }
    }

    /// A write-behind write that will not be made: to the dead-letter queue, or dropped
    /// with an error logged.
    async fn give_up(
        &self,
        key: &str,
        entry: &Entry<V>,
        class: ErrorClass,
        message: String,
        attempts: u32,
        first_failure: Option<std::time::SystemTime>,
    ) {
        let Some((queue, source)) = &self.dead_letters else {
            tracing::error!(%key, error = %message, "a write-behind write was given up and dropped (no dead-letter queue)");
            return;
        };
        // The value as the cache's codec encodes it; empty for an absence, or for a
        // value that does not encode.
        let mut payload = Vec::new();
        if let Some(value) = &entry.value
            && self.codec.encode(value, &mut payload).is_err()
        {
            payload.clear();
        }
        let now = std::time::SystemTime::now();
        let letter = NewLetter::new(key, payload, class, message)
            .with_attempts(attempts)
            .with_failure_times(first_failure.unwrap_or(now), now)
            .with_source(source.clone());
        // The queue logs and counts a letter it could not keep.
        let _ = queue.push(letter).await;
    }
}
