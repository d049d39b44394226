//! Letters in this process: bounded, gone with it. For tests, single instances, and as a
//! last resort behind a remote store.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use tokio::time::Instant;

use super::error::DeadLetterError;
use super::letter::{DeadLetter, LetterId, NewLetter};
use super::store::{ClaimRequest, Claimed, DeadLetterStore, Purge, QueueStats};

struct Kept {
    letter: DeadLetter,
    claim: Option<(String, Instant)>,
    /// When a replay last failed it, on the store's counter.
    failed_at: Option<u64>,
}

#[derive(Default)]
struct Letters {
    next: u64,
    /// The store's clock: replay starts and failures, in order.
    clock: u64,
    kept: BTreeMap<u64, Kept>,
}

/// A bounded dead-letter store in memory. When full it refuses new letters
/// ([`DeadLetterError::Full`]) rather than drop old ones: nothing is lost silently.
/// Leases run on tokio's clock.
///
/// ```
/// use keel_resilience::dead_letter::{DeadLetterQueue, MemoryDeadLetters};
///
/// let queue = DeadLetterQueue::new("emails", MemoryDeadLetters::new().capacity(1_000));
/// # let _ = queue;
/// ```
#[derive(Debug)]
pub struct MemoryDeadLetters {
    capacity: usize,
    max_payload: usize,
    letters: Mutex<Letters>,
}

impl std::fmt::Debug for Letters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Letters")
            .field("len", &self.kept.len())
            .finish()
    }
}

impl Default for MemoryDeadLetters {
    fn default() -> Self {
        Self::new()
    }
}

fn id_of(n: u64) -> LetterId {
    // Zero-padded, so the text sorts as the number does.
    LetterId(format!("{n:020}"))
}

fn number(id: &LetterId) -> Option<u64> {
    id.0.parse().ok()
}

impl MemoryDeadLetters {
    /// An empty store for 10 000 letters of up to 1 MiB each.
    #[must_use]
    pub fn new() -> Self {
        MemoryDeadLetters {
            capacity: 10_000,
            max_payload: 1 << 20,
            letters: Mutex::new(Letters::default()),
        }
    }

    /// At most `letters` letters (at least 1).
    #[must_use]
    pub fn capacity(mut self, letters: usize) -> Self {
        self.capacity = letters.max(1);
        self
    }

    /// Payloads of at most `bytes`.
    #[must_use]
    pub fn max_payload(mut self, bytes: usize) -> Self {
        self.max_payload = bytes;
        self
    }

    fn with<T>(&self, f: impl FnOnce(&mut Letters) -> T) -> T {
        f(&mut self
            .letters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner))
    }
}

fn after_key(after: Option<&LetterId>) -> std::ops::Bound<u64> {
    match after.map(number) {
        None => std::ops::Bound::Unbounded,
        Some(Some(n)) => std::ops::Bound::Excluded(n),
        // Not one of ours: nothing comes after it.
        Some(None) => std::ops::Bound::Excluded(u64::MAX),
    }
}

impl DeadLetterStore for MemoryDeadLetters {
    fn push(&self, letter: NewLetter) -> BoxFuture<'_, Result<LetterId, DeadLetterError>> {
        let pushed = if letter.payload.len() > self.max_payload {
            Err(DeadLetterError::TooLarge {
                size: letter.payload.len(),
                limit: self.max_payload,
            })
        } else {
            self.with(|l| {
                if l.kept.len() >= self.capacity {
                    return Err(DeadLetterError::Full {
                        capacity: self.capacity,
                    });
                }
                l.next += 1;
                let id = id_of(l.next);
                l.kept.insert(
                    l.next,
                    Kept {
                        letter: DeadLetter {
                            id: id.clone(),
                            letter,
                            enqueued_at: SystemTime::now(),
                            replay_failures: 0,
                            last_replay_error: None,
                        },
                        claim: None,
                        failed_at: None,
                    },
                );
                Ok(id)
            })
        };
        async move { pushed }.boxed()
    }

    fn list(
        &self,
        after: Option<LetterId>,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<DeadLetter>, DeadLetterError>> {
        let page = self.with(|l| {
            l.kept
                .range((after_key(after.as_ref()), std::ops::Bound::Unbounded))
                .take(limit)
                .map(|(_, k)| k.letter.clone())
                .collect()
        });
        async move { Ok(page) }.boxed()
    }

    fn get(&self, id: LetterId) -> BoxFuture<'_, Result<Option<DeadLetter>, DeadLetterError>> {
        let found =
            number(&id).and_then(|n| self.with(|l| l.kept.get(&n).map(|k| k.letter.clone())));
        async move { Ok(found) }.boxed()
    }

    fn claim(&self, request: ClaimRequest) -> BoxFuture<'_, Result<Claimed, DeadLetterError>> {
        let now = Instant::now();
        let lease_end = now
            .checked_add(request.lease)
            .unwrap_or(now + Duration::from_secs(86_400 * 365));
        let claimed = self.with(|l| {
            let started = request.started.unwrap_or_else(|| {
                l.clock += 1;
                l.clock
            });
            let until = match &request.until {
                Some(id) => number(id),
                None => l.kept.keys().next_back().copied(),
            };
            let Some(last) = until else {
                return Claimed {
                    started,
                    until: None,
                    ..Claimed::nothing(&request)
                };
            };
            let from = after_key(request.after.as_ref());
            if matches!(from, std::ops::Bound::Excluded(a) if a >= last) {
                // Past the replay's end (a range that starts after it ends panics).
                return Claimed {
                    started,
                    until: Some(id_of(last)),
                    ..Claimed::nothing(&request)
                };
            }
            let mut letters = Vec::new();
            let mut cursor = None;
            let mut range = l.kept.range_mut((from, std::ops::Bound::Included(last)));
            for (n, kept) in range.by_ref() {
                cursor = Some(id_of(*n));
                let held_by_another = kept
                    .claim
                    .as_ref()
                    .is_some_and(|(token, ends)| *ends > now && *token != request.token);
                if held_by_another || kept.failed_at.is_some_and(|t| t > started) {
                    continue;
                }
                kept.claim = Some((request.token.clone(), lease_end));
                letters.push(kept.letter.clone());
                if letters.len() >= request.limit {
                    break;
                }
            }
            let exhausted = range.next().is_none();
            Claimed {
                letters,
                unreadable: Vec::new(),
                cursor,
                exhausted,
                started,
                until: Some(id_of(last)),
            }
        });
        async move { Ok(claimed) }.boxed()
    }

    fn complete(
        &self,
        id: LetterId,
        token: String,
    ) -> BoxFuture<'_, Result<bool, DeadLetterError>> {
        let done = number(&id).is_some_and(|n| {
            self.with(|l| {
                let held = l
                    .kept
                    .get(&n)
                    .and_then(|k| k.claim.as_ref())
                    .is_some_and(|(t, until)| *t == token && *until > Instant::now());
                if held {
                    l.kept.remove(&n);
                }
                held
            })
        });
        async move { Ok(done) }.boxed()
    }

    fn release(
        &self,
        id: LetterId,
        token: String,
        error: String,
    ) -> BoxFuture<'_, Result<bool, DeadLetterError>> {
        let done = number(&id).is_some_and(|n| {
            self.with(|l| match l.kept.get_mut(&n) {
                Some(kept) if kept.claim.as_ref().is_some_and(|(t, _)| *t == token) => {
                    l.clock += 1;
                    kept.claim = None;
                    kept.failed_at = Some(l.clock);
                    kept.letter.replay_failures = kept.letter.replay_failures.saturating_add(1);
                    kept.letter.last_replay_error = Some(error);
                    true
                }
                _ => false,
            })
        });
        async move { Ok(done) }.boxed()
    }

    fn purge(&self, which: Purge) -> BoxFuture<'_, Result<u64, DeadLetterError>> {
        let purged = self.with(|l| {
            let before = l.kept.len();
            match &which {
                Purge::All => l.kept.clear(),
                Purge::One(id) => {
                    if let Some(n) = number(id) {
                        l.kept.remove(&n);
                    }
                }
                Purge::EnqueuedBefore(t) => l.kept.retain(|_, k| k.letter.enqueued_at >= *t),
            }
            (before - l.kept.len()) as u64
        });
        async move { Ok(purged) }.boxed()
    }

    fn stats(&self) -> BoxFuture<'_, Result<QueueStats, DeadLetterError>> {
        let stats = self.with(|l| QueueStats {
            letters: l.kept.len() as u64,
            oldest_enqueued_at: l.kept.values().next().map(|k| k.letter.enqueued_at),
        });
        async move { Ok(stats) }.boxed()
    }
}
