//! The backplane: invalidations published on Redis pub/sub for live delivery, and kept in
//! a Redis stream (numbered by a sequence counter) so an instance that was cut off catches
//! up on exactly what it missed when it comes back.
//!
//! Each instance keeps a cursor: the last sequence number it has applied, and the epoch
//! of the Redis data it was counting in. Pub/sub messages arrive with their sequence
//! number; a gap in the numbers, a reconnect, or the periodic check (the sequence counter
//! moved past the cursor) makes it read the stream from the cursor. If the stream no
//! longer reaches back that far (it is trimmed), or Redis lost its data (the epoch
//! changed), the instance cannot know what it missed and drops its whole L1 instead.
//! Either way it never goes on serving a value invalidated while it was away.
//!
//! Each log entry carries a nonce, and the instance keeps the nonce of the entry at its
//! cursor. When Redis goes back in time (a restart from an older snapshot, a lagging
//! replica promoted), the sequence falls below the cursor or the entry at the cursor is
//! another one: the position script then starts a new epoch and a new generation (the
//! data Redis went back to may hold values invalidated since), and every instance drops
//! its L1 when it sees the new epoch.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures_util::StreamExt as _;
use keel_resilience::timeout::with_timeout;
use tokio::sync::Notify;

use crate::keys::KeySpace;
use crate::l2::{L2Error, PublishArgs, RedisL2};

/// What the backplane does to the local cache.
pub(crate) trait LocalCache: Send + Sync {
    fn drop_key(&self, key: &str);
    fn drop_tag(&self, tag: &str);
    /// Drops every L1 entry, for `why`.
    fn drop_all(&self, why: Dropped);
    fn has_entries(&self) -> bool;
    fn received(&self);
    /// Applies the changes made while Redis was unreachable (see `pending`).
    fn replay(&self) -> futures_util::future::BoxFuture<'_, ()>;
}

/// Why the whole L1 is dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Dropped {
    /// A `clear` from another instance (write-behind writes queued before it go too).
    Clear,
    /// Missed messages cannot be known (the log was trimmed, Redis lost its data or went
    /// back in time): counted as a resync; queued writes stay.
    Resync,
    /// First contact: loads already running are stopped; queued writes stay.
    FirstContact,
}

/// The kinds of invalidation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Key,
    Tag,
    Clear,
}

impl Kind {
    fn code(self) -> &'static str {
        match self {
            Kind::Key => "k",
            Kind::Tag => "t",
            Kind::Clear => "c",
        }
    }

    fn parse(code: &[u8]) -> Option<Self> {
        match code {
            b"k" => Some(Kind::Key),
            b"t" => Some(Kind::Tag),
            b"c" => Some(Kind::Clear),
            _ => None,
        }
    }
}

/// Whether the backplane is connected, and how often it reconnected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct BackplaneStatus {
    /// Subscribed and caught up.
    pub connected: bool,
    /// Times it came back after losing its subscription (each followed by a catch-up).
    pub reconnects: u64,
    /// The last invalidation sequence number applied.
    pub applied_seq: u64,
    /// Changes made here while Redis was unreachable, not yet applied to L2 and announced
    /// (a pending `clear` counts as one). They are applied as soon as Redis answers.
    pub pending_changes: usize,
}

#[derive(Debug, Default)]
struct Cursor {
    epoch: Option<String>,
    seq: u64,
    /// The nonce of the log entry at `seq` (empty when unknown).
    nonce: String,
    /// Sequence numbers applied live, ahead of `seq` (after a gap), with their nonces.
    ahead: BTreeMap<u64, String>,
    /// The last sequence numbers applied, with their nonces: a message with one of them
    /// and the same nonce is a duplicate; with another nonce, or older than these, it
    /// may mean Redis went back in time, and a catch-up checks.
    recent: VecDeque<(u64, String)>,
    /// When a message last made the backplane check (at most every `SUSPECT_EVERY`).
    last_suspect: Option<std::time::Instant>,
}

impl Cursor {
    fn remember(&mut self, seq: u64, nonce: &str) {
        if self.recent.len() == RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back((seq, nonce.to_owned()));
    }

    /// Whether a message numbered at or below the cursor calls for a check.
    fn suspicious(&mut self, seq: u64, nonce: &str) -> bool {
        let known = self.ahead.get(&seq).map(String::as_str).or_else(|| {
            self.recent
                .iter()
                .rev()
                .find(|(s, _)| *s == seq)
                .map(|(_, n)| n.as_str())
        });
        let suspicious = match known {
            Some(known) => known != nonce,
            None => true,
        };
        let now = std::time::Instant::now();
        if suspicious && self.last_suspect.is_none_or(|t| now - t >= SUSPECT_EVERY) {
            self.last_suspect = Some(now);
            return true;
        }
        false
    }
}

/// How many applied sequence numbers a cursor remembers.
const RECENT: usize = 512;
/// The least time between two checks caused by suspicious messages.
const SUSPECT_EVERY: Duration = Duration::from_millis(50);

const UNKNOWN: u64 = u64::MAX;
const LOG_PAGE: usize = 512;

#[derive(Debug)]
pub(crate) struct Backplane {
    pub(crate) origin: String,
    pub(crate) keys: KeySpace,
    pub(crate) l2: RedisL2,
    cursor: Mutex<Cursor>,
    generation: AtomicU64,
    connected: AtomicBool,
    ever_connected: AtomicBool,
    reconnects: AtomicU64,
    shutdown: Notify,
    stopped: AtomicBool,
    log_length: usize,
    sync_every: Duration,
}

impl Backplane {
    pub(crate) fn new(
        l2: RedisL2,
        keys: KeySpace,
        log_length: usize,
        sync_every: Duration,
    ) -> Self {
        Self {
            origin: format!("{:016x}", fastrand::u64(..)),
            keys,
            l2,
            cursor: Mutex::new(Cursor::default()),
            generation: AtomicU64::new(UNKNOWN),
            connected: AtomicBool::new(false),
            ever_connected: AtomicBool::new(false),
            reconnects: AtomicU64::new(0),
            shutdown: Notify::new(),
            stopped: AtomicBool::new(false),
            log_length,
            sync_every,
        }
    }

    /// The namespace's generation, once known (entries of other generations are ignored).
    pub(crate) fn generation(&self) -> Option<u64> {
        match self.generation.load(Ordering::Acquire) {
            UNKNOWN => None,
            g => Some(g),
        }
    }

    pub(crate) fn status(&self) -> BackplaneStatus {
        let applied_seq = self.cursor.lock().map_or(0, |c| c.seq);
        BackplaneStatus {
            connected: self.connected.load(Ordering::Acquire),
            reconnects: self.reconnects.load(Ordering::Relaxed),
            applied_seq,
            pending_changes: 0,
        }
    }

    pub(crate) fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
        self.shutdown.notify_waiters();
        self.shutdown.notify_one();
    }

    /// Publishes an invalidation to the other instances. Returns the namespace's
    /// generation after it.
    pub(crate) async fn publish(&self, kind: Kind, arg: &str) -> Result<u64, L2Error> {
        let (candidate, nonce) = (epoch_candidate(), epoch_candidate());
        let (_, generation) = self
            .l2
            .publish(&self.keys, &self.message(kind, arg, &candidate, &nonce))
            .await?;
        if kind == Kind::Clear {
            self.raise_generation(generation);
        }
        Ok(generation)
    }

    /// Writes a record (with a version Redis mints), then publishes an invalidation of
    /// its key: in one round trip on a single node, in two (in that order) on a cluster.
    /// Returns the version written and the namespace's generation after it.
    pub(crate) async fn write_then_publish(
        &self,
        key: &str,
        entry_key: &str,
        record: &[u8],
        ttl_ms: u64,
    ) -> Result<(u64, u64), L2Error> {
        if self.l2.cluster {
            let version = self.l2.put(entry_key, record, ttl_ms).await?;
            let generation = self.publish(Kind::Key, key).await?;
            return Ok((version, generation));
        }
        let (candidate, nonce) = (epoch_candidate(), epoch_candidate());
        let message = self.message(Kind::Key, key, &candidate, &nonce);
        self.l2
            .put_then_publish(&self.keys, entry_key, record, ttl_ms, &message)
            .await
    }

    fn message<'a>(
        &'a self,
        kind: Kind,
        arg: &'a str,
        candidate: &'a str,
        nonce: &'a str,
    ) -> PublishArgs<'a> {
        PublishArgs {
            origin: &self.origin,
            kind: kind.code(),
            arg,
            log_length: self.log_length,
            epoch_candidate: candidate,
            nonce,
        }
    }

    fn raise_generation(&self, generation: u64) {
        let _ = self
            .generation
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |g| {
                (g == UNKNOWN || g < generation).then_some(generation)
            });
    }

    fn apply(&self, local: &dyn LocalCache, origin: &[u8], kind: Kind, generation: u64, arg: &str) {
        if kind == Kind::Clear {
            self.raise_generation(generation);
        }
        if origin == self.origin.as_bytes() {
            return;
        }
        match kind {
            Kind::Key => local.drop_key(arg),
            Kind::Tag => local.drop_tag(arg),
            Kind::Clear => local.drop_all(Dropped::Clear),
        }
        local.received();
    }

    /// Applies one live message; true when it revealed a gap that needs a catch-up.
    fn on_message(&self, local: &dyn LocalCache, payload: &[u8]) -> bool {
        let mut parts = payload.splitn(6, |b| *b == b'|');
        let (Some(origin), Some(kind), Some(seq), Some(generation), Some(nonce), Some(arg)) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            tracing::warn!("ignored a malformed backplane message");
            return false;
        };
        let (Some(kind), Some(seq), Some(generation), Ok(nonce), Ok(arg)) = (
            Kind::parse(kind),
            parse_u64(seq),
            parse_u64(generation),
            std::str::from_utf8(nonce),
            std::str::from_utf8(arg),
        ) else {
            tracing::warn!("ignored a malformed backplane message");
            return false;
        };
        let Ok(mut cursor) = self.cursor.lock() else {
            return false;
        };
        if cursor.epoch.is_none() {
            return false; // not caught up yet: the catch-up covers it
        }
        if seq <= cursor.seq || cursor.ahead.contains_key(&seq) {
            // Already applied, or Redis went back in time (the number is reused with
            // another nonce, or is older than what this instance remembers): the
            // catch-up finds out and starts over.
            return cursor.suspicious(seq, nonce);
        }
        self.apply(local, origin, kind, generation, arg);
        cursor.remember(seq, nonce);
        if seq == cursor.seq + 1 {
            cursor.seq = seq;
            nonce.clone_into(&mut cursor.nonce);
            loop {
                let next = cursor.seq + 1;
                let Some(nonce) = cursor.ahead.remove(&next) else {
                    break;
                };
                cursor.seq = next;
                cursor.nonce = nonce;
            }
            false
        } else {
            cursor.ahead.insert(seq, nonce.to_owned());
            true
        }
    }

    /// Catches up from the log to the current sequence number.
    async fn catch_up(&self, local: &Weak<dyn LocalCache>) -> Result<(), L2Error> {
        let known = self
            .cursor
            .lock()
            .ok()
            .and_then(|c| c.epoch.clone().map(|epoch| (epoch, c.seq, c.nonce.clone())));
        let position = self
            .l2
            .position(
                &self.keys,
                &epoch_candidate(),
                known
                    .as_ref()
                    .map(|(epoch, seq, nonce)| (epoch.as_str(), *seq, nonce.as_str())),
            )
            .await?;
        let seq_now = position.seq;
        let Some(local) = local.upgrade() else {
            return Ok(());
        };
        {
            let Ok(mut cursor) = self.cursor.lock() else {
                return Ok(());
            };
            if cursor.epoch.as_deref() != Some(position.epoch.as_str()) {
                // First contact, Redis lost its data, or it went back in time: what was
                // missed cannot be known.
                if position.rewound {
                    tracing::warn!(
                        channel = self.keys.channel(),
                        "Redis went back in time (its invalidation log is behind this \
                         instance): starting a new generation and dropping L1"
                    );
                }
                // Even at first contact with nothing cached, loads already running
                // are stopped: they read their source before this instance heard of
                // the invalidations made since.
                let why = if cursor.epoch.is_some() || position.rewound || local.has_entries() {
                    Dropped::Resync
                } else {
                    Dropped::FirstContact
                };
                local.drop_all(why);
                *cursor = Cursor {
                    epoch: Some(position.epoch),
                    seq: seq_now,
                    nonce: position.nonce.clone(),
                    ahead: BTreeMap::new(),
                    recent: VecDeque::new(),
                    last_suspect: None,
                };
                cursor.remember(seq_now, &position.nonce);
                self.generation
                    .store(position.generation, Ordering::Release);
                return Ok(());
            }
        }
        self.raise_generation(position.generation);
        loop {
            let after = match self.cursor.lock() {
                Ok(c) if c.seq < seq_now => c.seq,
                _ => return Ok(()),
            };
            let page = self.l2.log_after(&self.keys, after, LOG_PAGE).await?;
            let Ok(mut cursor) = self.cursor.lock() else {
                return Ok(());
            };
            if cursor.seq != after {
                continue; // moved on meanwhile
            }
            let first = page.first().and_then(|(id, _)| stream_seq(id));
            if first.is_none_or(|first| first > after + 1) {
                // The log was trimmed past our cursor.
                local.drop_all(Dropped::Resync);
                let last = page.last().and_then(|(id, fields)| {
                    stream_seq(id).map(|seq| (seq, parse_fields(fields).map(|f| f.nonce)))
                });
                match last {
                    Some((seq, nonce)) if seq >= seq_now => {
                        cursor.seq = seq;
                        nonce.unwrap_or_default().clone_into(&mut cursor.nonce);
                    }
                    _ => {
                        cursor.seq = seq_now;
                        cursor.nonce.clear();
                    }
                }
                cursor.ahead.clear();
                cursor.recent.clear();
                let (seq, nonce) = (cursor.seq, cursor.nonce.clone());
                cursor.remember(seq, &nonce);
                return Ok(());
            }
            for (id, fields) in &page {
                let Some(seq) = stream_seq(id) else { continue };
                if seq <= cursor.seq {
                    continue;
                }
                let parsed = parse_fields(fields);
                if cursor.ahead.remove(&seq).is_none()
                    && let Some(message) = &parsed
                {
                    self.apply(
                        &*local,
                        message.origin,
                        message.kind,
                        message.generation,
                        message.arg,
                    );
                }
                cursor.seq = seq;
                let nonce = parsed.map(|m| m.nonce).unwrap_or_default();
                nonce.clone_into(&mut cursor.nonce);
                cursor.remember(seq, nonce);
            }
        }
    }

    /// Runs until the cache is dropped or shut down: subscribe, catch up, apply messages;
    /// on any loss, reconnect with backoff and catch up again.
    pub(crate) async fn run(self: Arc<Self>, local: Weak<dyn LocalCache>) {
        let mut backoff = Duration::from_millis(20);
        let mut node = 0usize;
        let connect_limit = self.l2.op_timeout.max(Duration::from_millis(500));
        while !self.stopped.load(Ordering::Acquire) {
            if local.strong_count() == 0 {
                return;
            }
            let client = &self.l2.subscribers[node % self.l2.subscribers.len()];
            let subscribed = with_timeout(connect_limit, async {
                let mut pubsub = client.get_async_pubsub().await?;
                pubsub.subscribe(self.keys.channel()).await?;
                Ok::<_, redis::RedisError>(pubsub)
            })
            .await;
            let pubsub = match subscribed {
                Ok(Ok(pubsub)) => pubsub,
                _ => {
                    node = node.wrapping_add(1);
                    if self.pause(backoff).await {
                        return;
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            };
            if self.catch_up(&local).await.is_err() {
                if self.pause(backoff).await {
                    return;
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
            if let Some(strong) = local.upgrade() {
                strong.replay().await;
            }
            if self.ever_connected.swap(true, Ordering::AcqRel) {
                self.reconnects.fetch_add(1, Ordering::Relaxed);
            }
            self.connected.store(true, Ordering::Release);
            backoff = Duration::from_millis(20);
            tracing::debug!(
                channel = self.keys.channel(),
                "cache backplane connected and caught up"
            );
            let mut messages = pubsub.into_on_message();
            let mut tick = tokio::time::interval(self.sync_every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tokio::select! {
                    () = self.shutdown.notified() => return,
                    message = messages.next() => {
                        let Some(message) = message else { break };
                        let Some(strong) = local.upgrade() else { return };
                        let gap = self.on_message(&*strong, message.get_payload_bytes());
                        drop(strong);
                        if gap && self.catch_up(&local).await.is_err() {
                            break;
                        }
                    }
                    _ = tick.tick() => {
                        // Catches messages lost silently; a failure here (L2 down) is
                        // retried on the next tick while the subscription holds.
                        if self.catch_up(&local).await.is_ok()
                            && let Some(strong) = local.upgrade()
                        {
                            strong.replay().await;
                        }
                    }
                }
            }
            self.connected.store(false, Ordering::Release);
            tracing::warn!(
                channel = self.keys.channel(),
                "cache backplane lost its subscription; reconnecting"
            );
        }
    }

    /// Sleeps unless shut down first; true when shut down.
    async fn pause(&self, d: Duration) -> bool {
        tokio::select! {
            () = self.shutdown.notified() => true,
            () = tokio::time::sleep(d) => self.stopped.load(Ordering::Acquire),
        }
    }
}

fn epoch_candidate() -> String {
    format!("{:016x}", fastrand::u64(..))
}

fn parse_u64(bytes: &[u8]) -> Option<u64> {
    std::str::from_utf8(bytes).ok()?.parse().ok()
}

fn stream_seq(id: &str) -> Option<u64> {
    id.split_once('-').and_then(|(seq, _)| seq.parse().ok())
}

/// One invalidation as the log holds it.
struct Logged<'a> {
    origin: &'a [u8],
    kind: Kind,
    generation: u64,
    nonce: &'a str,
    arg: &'a str,
}

fn parse_fields(fields: &[Vec<u8>]) -> Option<Logged<'_>> {
    let (mut origin, mut kind, mut generation, mut nonce, mut arg) = (None, None, None, "", None);
    for pair in fields.chunks_exact(2) {
        match pair[0].as_slice() {
            b"o" => origin = Some(pair[1].as_slice()),
            b"k" => kind = Kind::parse(&pair[1]),
            b"g" => generation = parse_u64(&pair[1]),
            b"n" => nonce = std::str::from_utf8(&pair[1]).unwrap_or(""),
            b"a" => arg = std::str::from_utf8(&pair[1]).ok(),
            _ => {}
        }
    }
    Some(Logged {
        origin: origin?,
        kind: kind?,
        generation: generation?,
        nonce,
        arg: arg?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder(Mutex<Vec<String>>);

    impl LocalCache for Recorder {
        fn drop_key(&self, key: &str) {
            self.0.lock().unwrap().push(format!("key {key}"));
        }
        fn drop_tag(&self, tag: &str) {
            self.0.lock().unwrap().push(format!("tag {tag}"));
        }
        fn drop_all(&self, why: Dropped) {
            self.0
                .lock()
                .unwrap()
                .push(format!("all {}", why == Dropped::Resync));
        }
        fn has_entries(&self) -> bool {
            true
        }
        fn received(&self) {}
        fn replay(&self) -> futures_util::future::BoxFuture<'_, ()> {
            Box::pin(async {})
        }
    }

    fn backplane() -> Backplane {
        let l2 = RedisL2::single("redis://127.0.0.1:1").unwrap();
        let b = Backplane::new(l2, KeySpace::new("t", 1), 100, Duration::from_secs(1));
        b.cursor.lock().unwrap().epoch = Some("e".into());
        b
    }

    #[tokio::test]
    async fn live_messages_advance_the_cursor_and_gaps_ask_for_a_catch_up() {
        let b = backplane();
        let local = Recorder::default();
        assert!(!b.on_message(&local, b"other|k|1|0|n1|user:1"));
        assert!(
            !b.on_message(&local, b"other|k|1|0|n1|user:1"),
            "a duplicate is ignored"
        );
        assert!(
            b.on_message(&local, b"other|t|3|0|n3|tenant|x"),
            "seq 2 is missing"
        );
        assert_eq!(b.status().applied_seq, 1);
        assert!(!b.on_message(&local, b"other|c|2|5|n2|"));
        assert_eq!(b.status().applied_seq, 3, "the gap closed");
        assert_eq!(b.generation(), Some(5));
        // Our own messages move the cursor but are not applied.
        assert!(!b.on_message(&local, format!("{}|k|4|5|n4|mine", b.origin).as_bytes()));
        assert_eq!(b.status().applied_seq, 4);
        assert_eq!(
            *local.0.lock().unwrap(),
            ["key user:1", "tag tenant|x", "all false"]
        );
    }

    #[tokio::test]
    async fn a_message_at_the_cursor_with_another_nonce_asks_for_a_catch_up() {
        let b = backplane();
        let local = Recorder::default();
        assert!(!b.on_message(&local, b"other|k|1|0|n1|user:1"));
        assert!(
            !b.on_message(&local, b"other|k|1|0|n1|user:1"),
            "a duplicate"
        );
        assert!(
            b.on_message(&local, b"other|k|1|0|elsewhere|user:2"),
            "the same number with another nonce: Redis went back in time"
        );
        assert_eq!(*local.0.lock().unwrap(), ["key user:1"]);
    }

    #[tokio::test]
    async fn malformed_messages_are_ignored() {
        let b = backplane();
        let local = Recorder::default();
        for junk in [
            &b""[..],
            b"|||",
            b"a|z|1|0|k",
            b"a|k|x|0|k",
            b"a|k|1|0|n|\xff",
            b"a|k|1|0|k",
        ] {
            assert!(!b.on_message(&local, junk));
        }
        assert!(local.0.lock().unwrap().is_empty());
        assert_eq!(b.status().applied_seq, 0);
    }
}
