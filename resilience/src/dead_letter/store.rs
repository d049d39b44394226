//! Where letters live: the trait each backend implements.

use std::fmt;
use std::time::{Duration, SystemTime};

use futures_util::future::BoxFuture;

use super::error::DeadLetterError;
use super::letter::{DeadLetter, LetterId, NewLetter};

/// Which letters [`DeadLetterQueue::purge`](super::DeadLetterQueue::purge) deletes.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Purge {
    /// Every letter.
    All,
    /// One letter.
    One(LetterId),
    /// Every letter kept before this time.
    EnqueuedBefore(SystemTime),
}

/// How many letters a queue holds and since when.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct QueueStats {
    /// How many letters.
    pub letters: u64,
    /// When the oldest was kept.
    pub oldest_enqueued_at: Option<SystemTime>,
}

/// What a replay asks of [`DeadLetterStore::claim`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ClaimRequest {
    /// Claim letters after this one (from the oldest when `None`).
    pub after: Option<LetterId>,
    /// Claim no letter after this one: the newest letter when the replay started, so
    /// letters kept during the replay (a handler that dead-letters again) wait for the
    /// next one. `None` on a replay's first claim: the store finds it.
    pub until: Option<LetterId>,
    /// At most this many letters.
    pub limit: usize,
    /// How long the claim holds them.
    pub lease: Duration,
    /// The replay's token: letters it already holds may be claimed again (the lease is
    /// renewed).
    pub token: String,
    /// When the replay started (from its first claim): letters a replay failed after
    /// that are left alone. `None` on a replay's first claim.
    pub started: Option<u64>,
}

/// Letters claimed for one replay.
#[derive(Debug)]
#[non_exhaustive]
pub struct Claimed {
    /// The letters now reserved for the claimer, oldest first.
    pub letters: Vec<DeadLetter>,
    /// Entries the claim looked at that are not letters (written by something else, or
    /// damaged): their ids and what is wrong. They are skipped, not handed over.
    pub unreadable: Vec<(LetterId, String)>,
    /// Where the next claim starts (after this id); `None` to keep the one given.
    pub cursor: Option<LetterId>,
    /// Whether the store has no letters after the cursor (up to `until`).
    pub exhausted: bool,
    /// When the replay started, as a mark on the store's clock (Redis and PostgreSQL:
    /// microseconds of their own time; memory: a counter): the `started` given, or now
    /// for a replay's first claim. Opaque to the caller, who passes it back.
    pub started: u64,
    /// The newest letter the replay covers: the `until` given, or the store's newest
    /// letter for a replay's first claim (`None`: the store was empty).
    pub until: Option<LetterId>,
}

impl Claimed {
    /// Nothing claimed, nothing left: for an `after` that is not one of the store's ids.
    pub(crate) fn nothing(request: &ClaimRequest) -> Self {
        Claimed {
            letters: Vec::new(),
            unreadable: Vec::new(),
            cursor: None,
            exhausted: true,
            started: request.started.unwrap_or(0),
            until: request.until.clone(),
        }
    }
}

/// A dead-letter backend. Every method is one atomic step in the store, so several
/// instances can share it; [`DeadLetterQueue`](super::DeadLetterQueue) builds replay on
/// top. Implement it to keep letters elsewhere.
pub trait DeadLetterStore: fmt::Debug + Send + Sync + 'static {
    /// Keeps a letter (already bounded); returns its id, greater than every id before.
    fn push(&self, letter: NewLetter) -> BoxFuture<'_, Result<LetterId, DeadLetterError>>;

    /// Up to `limit` letters after `after`, oldest first.
    fn list(
        &self,
        after: Option<LetterId>,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<DeadLetter>, DeadLetterError>>;

    /// One letter.
    fn get(&self, id: LetterId) -> BoxFuture<'_, Result<Option<DeadLetter>, DeadLetterError>>;

    /// Reserves for `lease` up to `limit` letters after `after` and up to `until` that
    /// no other live claim holds and that no replay failed since `started` (so a letter
    /// one replay failed is not handed to another replay already running), under
    /// `token`, atomically (two claimers never get the same letter while a lease runs),
    /// on the store's clock.
    fn claim(&self, request: ClaimRequest) -> BoxFuture<'_, Result<Claimed, DeadLetterError>>;

    /// Deletes a letter still claimed under `token`; `false` when it is not (purged, or
    /// the lease ran out and another claimer took it).
    fn complete(&self, id: LetterId, token: String)
    -> BoxFuture<'_, Result<bool, DeadLetterError>>;

    /// Ends the claim under `token` on a letter the handler refused, counting the failure
    /// and keeping `error`; `false` when the claim was no longer held.
    fn release(
        &self,
        id: LetterId,
        token: String,
        error: String,
    ) -> BoxFuture<'_, Result<bool, DeadLetterError>>;

    /// Deletes letters; returns how many.
    fn purge(&self, which: Purge) -> BoxFuture<'_, Result<u64, DeadLetterError>>;

    /// How many letters and since when.
    fn stats(&self) -> BoxFuture<'_, Result<QueueStats, DeadLetterError>>;
}

/// One store shared by several queues (or several [`DeadLetterQueue`](super::DeadLetterQueue)s
/// standing for several instances in a test).
impl<S: DeadLetterStore> DeadLetterStore for std::sync::Arc<S> {
    fn push(&self, letter: NewLetter) -> BoxFuture<'_, Result<LetterId, DeadLetterError>> {
        (**self).push(letter)
    }
    fn list(
        &self,
        after: Option<LetterId>,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<DeadLetter>, DeadLetterError>> {
        (**self).list(after, limit)
    }
    fn get(&self, id: LetterId) -> BoxFuture<'_, Result<Option<DeadLetter>, DeadLetterError>> {
        (**self).get(id)
    }
    fn claim(&self, request: ClaimRequest) -> BoxFuture<'_, Result<Claimed, DeadLetterError>> {
        (**self).claim(request)
    }
    fn complete(
        &self,
        id: LetterId,
        token: String,
    ) -> BoxFuture<'_, Result<bool, DeadLetterError>> {
        (**self).complete(id, token)
    }
    fn release(
        &self,
        id: LetterId,
        token: String,
        error: String,
    ) -> BoxFuture<'_, Result<bool, DeadLetterError>> {
        (**self).release(id, token, error)
    }
    fn purge(&self, which: Purge) -> BoxFuture<'_, Result<u64, DeadLetterError>> {
        (**self).purge(which)
    }
    fn stats(&self) -> BoxFuture<'_, Result<QueueStats, DeadLetterError>> {
        (**self).stats()
    }
}
