//! A dead-letter queue: work that failed for good is kept, not dropped, so an operator
//! can list it, inspect it, hand it back to a handler (replay) or purge it.
//!
//! [`DeadLetterQueue`] is the API; where the letters live is a [`DeadLetterStore`]:
//!
//! | store | kept | bounded | feature |
//! |---|---|---|---|
//! | [`MemoryDeadLetters`] | in this process | yes (default 10 000, refuses when full) | — |
//! | `RedisDeadLetters` | a Redis stream (single node or cluster), as durable as Redis | yes (default 100 000, refuses when full) | `redis` |
//! | `PostgresDeadLetters` | a PostgreSQL table, with its migration | no: purge old letters | `postgres` |
//!
//! A letter keeps what failed: the key of the work, an opaque payload the caller
//! serialized, the error's class and message (at most 1 024 characters), the attempts,
//! the first and last failure times, the correlation id and where it came from
//! (`source`, such as a pipeline's name).
//!
//! ## Replay
//!
//! [`DeadLetterQueue::replay`] claims letters in order, a batch at a time, and hands each
//! to the handler: on success the letter is deleted; on failure (or when the handler
//! runs past its timeout) it stays, with its replay failures counted and the last error
//! kept. Each replay hands a letter over **at most once**, and two replays running at the
//! same time (on two instances) never hand over the same letter (one that a replay
//! failed is left for the next replay, not given to another one already running): a claim is a lease
//! taken atomically in the store, on the store's clock (Redis `TIME`, PostgreSQL
//! `clock_timestamp()`), and the handler is stopped at `handler_timeout`, which must be
//! shorter than the lease. A replay that dies mid-way (its process killed) leaves its
//! claims to expire: the letters come back for the next replay after the lease, so over
//! crashes a letter is delivered at least once: make the handler idempotent, or check the
//! letter's `id`. A batch is leased at once; before each handler the replay checks that
//! the handler would end within the lease, and otherwise claims again (renewing its own
//! claims). A replay covers the letters kept before it started, so a handler that
//! dead-letters the work again cannot make it run forever. Entries of the store that are
//! not letters are skipped, counted and logged with their ids.
//!
//! ```
//! use keel_resilience::dead_letter::{DeadLetterQueue, MemoryDeadLetters, NewLetter, ReplayOptions};
//! use keel_resilience::ErrorClass;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let queue = DeadLetterQueue::new("orders", MemoryDeadLetters::new());
//! queue
//!     .push(NewLetter::new("order-42", b"{\"id\":42}".to_vec(), ErrorClass::Permanent, "400 Bad Request"))
//!     .await?;
//!
//! let page = queue.list(None, 10).await?;
//! assert_eq!(page[0].key(), "order-42");
//!
//! let report = queue
//!     .replay(ReplayOptions::default(), |letter| async move {
//!         assert_eq!(letter.payload(), b"{\"id\":42}");
//!         Ok::<(), std::io::Error>(()) // sent again: the letter is deleted
//!     })
//!     .await?;
//! assert_eq!(report.delivered, 1);
//! assert_eq!(queue.stats().await?.letters, 0);
//! # Ok(()) }
//! ```
//!
//! ## Where letters come from
//!
//! [`Pipeline::run_or_dead_letter`](crate::pipeline::Pipeline::run_or_dead_letter) keeps
//! the work of a call that failed for good; keel-cache-layers' write-behind keeps the
//! writes it gives up on; push your own with [`DeadLetterQueue::push`].
//!
//! ## Metrics
//!
//! Counters `resilience_dead_letters_added_total`, `resilience_dead_letters_push_failed_total`,
//! `resilience_dead_letters_replayed_total` (label `outcome`: `delivered` or `failed`)
//! and `resilience_dead_letters_purged_total`; gauges `resilience_dead_letters` (how many
//! letters) and `resilience_dead_letters_oldest_age_seconds`, set by every
//! [`DeadLetterQueue::stats`] call (call it from your metrics scrape or a periodic task).
//! Every series has the label `queue`.

mod capture;
mod error;
mod letter;
mod memory;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "redis")]
mod redis;
mod store;

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

pub use capture::{DeadLettered, KeepOnFailure};
pub use error::DeadLetterError;
pub use letter::{DeadLetter, LetterId, NewLetter};
pub use memory::MemoryDeadLetters;
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub use postgres::PostgresDeadLetters;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use redis::RedisDeadLetters;
pub use store::{ClaimRequest, Claimed, DeadLetterStore, Purge, QueueStats};

/// How a replay runs. `Default`: batches of 100, a 5-minute lease, handlers stopped
/// after 1 minute, every letter.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ReplayOptions {
    /// How many letters one claim takes.
    pub batch: usize,
    /// How long a claimed letter stays reserved for this replay.
    pub lease: Duration,
    /// How long the handler may take for one letter; shorter than `lease`, so a slow
    /// handler cannot outlive its claim and meet another replay on the same letter.
    pub handler_timeout: Duration,
    /// Stop after this many letters (delivered or failed); `None`: all of them.
    pub limit: Option<usize>,
}

impl Default for ReplayOptions {
    fn default() -> Self {
        ReplayOptions {
            batch: 100,
            lease: Duration::from_secs(300),
            handler_timeout: Duration::from_secs(60),
            limit: None,
        }
    }
}

impl ReplayOptions {
    /// Letters per claim (at least 1).
    #[must_use]
    pub fn batch(mut self, batch: usize) -> Self {
        self.batch = batch.max(1);
        self
    }

    /// The claim's lease.
    #[must_use]
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// The handler's limit per letter.
    #[must_use]
    pub fn handler_timeout(mut self, limit: Duration) -> Self {
        self.handler_timeout = limit;
        self
    }

    /// At most this many letters.
    #[must_use]
    pub fn limit(mut self, letters: usize) -> Self {
        self.limit = Some(letters);
        self
    }
}

/// What a replay did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReplayReport {
    /// Handed over and accepted: deleted from the queue.
    pub delivered: usize,
    /// Handed over and refused (or timed out): still in the queue.
    pub failed: usize,
    /// Accepted by the handler, but the letter was purged (or its claim expired) in the
    /// meantime: nothing was deleted by this replay.
    pub lost_claims: usize,
    /// Entries of the store that are not letters (written by something else, or
    /// damaged): skipped and logged with their ids, for an operator to purge.
    pub unreadable: usize,
}

/// A dead-letter queue over a [`DeadLetterStore`]. Cheap to clone; clones share the store.
#[derive(Clone)]
pub struct DeadLetterQueue {
    name: Cow<'static, str>,
    store: Arc<dyn DeadLetterStore>,
}

impl fmt::Debug for DeadLetterQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeadLetterQueue")
            .field("name", &self.name)
            .field("store", &self.store)
            .finish()
    }
}

impl DeadLetterQueue {
    /// A queue named `name` (the metrics' `queue` label) over `store`.
    pub fn new(name: impl Into<Cow<'static, str>>, store: impl DeadLetterStore) -> Self {
        DeadLetterQueue {
            name: name.into(),
            store: Arc::new(store),
        }
    }

    /// The queue's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Keeps `letter`. Returns its id.
    ///
    /// # Errors
    /// [`DeadLetterError::Full`] when a bounded store is full, [`DeadLetterError::TooLarge`]
    /// for a payload over the store's limit, [`DeadLetterError::Store`] when the store
    /// cannot be reached: the letter was **not** kept, and the caller still holds it.
    pub async fn push(&self, letter: NewLetter) -> Result<LetterId, DeadLetterError> {
        let pushed = self.store.push(letter.bounded()).await;
        match &pushed {
            Ok(id) => {
                metrics::counter!("resilience_dead_letters_added_total", "queue" => self.name.clone())
                    .increment(1);
                tracing::warn!(queue = %self.name, letter = %id, "work dead-lettered");
            }
            Err(e) => {
                metrics::counter!("resilience_dead_letters_push_failed_total", "queue" => self.name.clone())
                    .increment(1);
                tracing::error!(queue = %self.name, error = %e, "a dead letter could not be kept");
            }
        }
        pushed
    }

    /// Up to `limit` letters after `after` (from the oldest when `None`), oldest first.
    /// Page on with the last letter's id.
    ///
    /// # Errors
    /// [`DeadLetterError::Store`] when the store cannot be reached or holds something
    /// that is not a letter.
    pub async fn list(
        &self,
        after: Option<&LetterId>,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, DeadLetterError> {
        self.store.list(after.cloned(), limit).await
    }

    /// One letter, if it is still there.
    ///
    /// # Errors
    /// As for [`list`](Self::list).
    pub async fn inspect(&self, id: &LetterId) -> Result<Option<DeadLetter>, DeadLetterError> {
        self.store.get(id.clone()).await
    }

    /// Deletes letters; returns how many.
    ///
    /// # Errors
    /// As for [`list`](Self::list).
    pub async fn purge(&self, which: Purge) -> Result<u64, DeadLetterError> {
        let purged = self.store.purge(which).await?;
        metrics::counter!("resilience_dead_letters_purged_total", "queue" => self.name.clone())
            .increment(purged);
        Ok(purged)
    }

    /// How many letters there are and how old the oldest is; also sets the gauges.
    ///
    /// # Errors
    /// As for [`list`](Self::list).
    pub async fn stats(&self) -> Result<QueueStats, DeadLetterError> {
        let stats = self.store.stats().await?;
        #[allow(clippy::cast_precision_loss)]
        metrics::gauge!("resilience_dead_letters", "queue" => self.name.clone())
            .set(stats.letters as f64);
        let age = stats
            .oldest_enqueued_at
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .unwrap_or_default();
        metrics::gauge!("resilience_dead_letters_oldest_age_seconds", "queue" => self.name.clone())
            .set(age.as_secs_f64());
        Ok(stats)
    }

    /// Hands the letters back, oldest first, to `handler`: see the [module docs](self).
    /// A letter the handler accepts is deleted; one it refuses (or that times out) stays,
    /// its failure counted. A replay covers the letters kept before it started: those
    /// kept meanwhile (a handler that dead-letters the work again) wait for the next.
    ///
    /// # Errors
    /// [`DeadLetterError::InvalidOptions`] when `handler_timeout` is not shorter than
    /// `lease`; [`DeadLetterError::Store`] when the store fails mid-way: what was
    /// delivered before stays delivered, and claims not settled expire with their lease.
    pub async fn replay<F, Fut, E>(
        &self,
        options: ReplayOptions,
        mut handler: F,
    ) -> Result<ReplayReport, DeadLetterError>
    where
        F: FnMut(DeadLetter) -> Fut,
        Fut: Future<Output = Result<(), E>>,
        E: fmt::Display,
    {
        if options.lease.is_zero()
            || options.handler_timeout >= options.lease
            || options.lease > MAX_LEASE
        {
            return Err(DeadLetterError::InvalidOptions(
                "handler_timeout must be shorter than lease, and lease between zero and 7 days",
            ));
        }
        let token = claim_token();
        let mut report = ReplayReport::default();
        let mut request = ClaimRequest {
            after: None,
            until: None,
            limit: options.batch,
            lease: options.lease,
            token: token.clone(),
            started: None,
        };
        let mut left = options.limit.unwrap_or(usize::MAX);
        while left > 0 {
            request.limit = options.batch.min(left);
            let asked = tokio::time::Instant::now();
            let claimed = self.store.claim(request.clone()).await?;
            if request.started.is_none() {
                request.started = Some(claimed.started);
                request.until.clone_from(&claimed.until);
                if claimed.until.is_none() {
                    break; // the store was empty
                }
            }
            for (id, why) in &claimed.unreadable {
                report.unreadable += 1;
                tracing::warn!(queue = %self.name, letter = %id, problem = %why, "an entry of the dead-letter store is not a letter: skipped (purge it by id)");
            }
            let mut handled: Option<LetterId> = None;
            let mut lease_short = false;
            for letter in claimed.letters {
                // A batch is leased at once and handled one letter after another: a
                // handler that could end after the lease would meet another replay on
                // the letter. Claim again from here instead (this replay's own claims
                // are renewed).
                if asked.elapsed() + options.handler_timeout >= options.lease {
                    lease_short = true;
                    break;
                }
                left = left.saturating_sub(1);
                let id = letter.id().clone();
                handled = Some(id.clone());
                let outcome =
                    crate::timeout::with_timeout(options.handler_timeout, handler(letter)).await;
                match outcome {
                    Ok(Ok(())) => {
                        if self.store.complete(id, token.clone()).await? {
                            report.delivered += 1;
                            self.count_replay("delivered");
                        } else {
                            report.lost_claims += 1;
                        }
                    }
                    Ok(Err(e)) => {
                        report.failed += 1;
                        self.count_replay("failed");
                        let reason = letter::bounded(&e.to_string(), letter::MESSAGE_MAX);
                        self.store.release(id, token.clone(), reason).await?;
                    }
                    Err(timeout) => {
                        report.failed += 1;
                        self.count_replay("failed");
                        self.store
                            .release(id, token.clone(), format!("the handler {timeout}"))
                            .await?;
                    }
                }
            }
            if lease_short {
                if handled.is_none() {
                    return Err(DeadLetterError::store(format!(
                        "a claim took longer than lease - handler_timeout ({:?}) to answer",
                        options.lease.saturating_sub(options.handler_timeout)
                    )));
                }
                request.after = handled;
                continue;
            }
            if let Some(next) = claimed.cursor {
                request.after = Some(next);
            }
            if claimed.exhausted {
                break;
            }
        }
        Ok(report)
    }

    fn count_replay(&self, outcome: &'static str) {
        metrics::counter!("resilience_dead_letters_replayed_total", "queue" => self.name.clone(), "outcome" => outcome)
            .increment(1);
    }
}

/// The longest lease a replay may take.
const MAX_LEASE: Duration = Duration::from_secs(7 * 86_400);

/// A token naming one replay's claims: random, so two replays never share one.
fn claim_token() -> String {
    format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..))
}
