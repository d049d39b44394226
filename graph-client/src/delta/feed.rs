//! The pattern services want, ready-made: a local copy kept current by delta rounds
//! that run when a change notification says something changed, on a timer for
//! resources without notifications, and once at start to cover what happened while the
//! service was down.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use serde::de::DeserializeOwned;
use tokio::sync::{Notify, watch};

use super::{DeltaPage, DeltaTracker};

/// Runs a [`DeltaTracker`]'s rounds in a task of its own, one at a time: at start, on
/// each [`changed`](Self::changed) or [`request`](Self::request) (many requests while a
/// round runs make one more round, not many), and every [`poll_every`](ChangeFeedBuilder::poll_every)
/// when set (the polling mode, for resources Graph sends no notifications for, such as
/// Planner). A failed round is tried again after a backoff (1 s doubling to 1 min).
///
/// [`changed`](Self::changed) waits for a round that started after the call and
/// answers its outcome: a notification handler that awaits it acknowledges the
/// notification only once the change is in the local copy, and a round that fails
/// fails the handler (so the notification worker retries it, then dead-letters it).
///
/// ```no_run
/// use std::sync::Arc;
/// use std::time::Duration;
/// use keel_graph_client::delta::{ChangeFeed, DeltaPage, DeltaQuery, DeltaTracker, MemoryDeltaStore};
/// use keel_graph_client::model::User;
/// # async fn run(client: keel_graph_client::GraphClient) -> Result<(), Box<dyn std::error::Error>> {
/// let tracker = DeltaTracker::new(
///     client,
///     "contoso",
///     DeltaQuery::users(),
///     Arc::new(MemoryDeltaStore::new()),
///     "contoso/users",
/// );
/// let copy = Arc::new(std::sync::Mutex::new(std::collections::HashMap::new()));
/// let local = copy.clone();
/// let feed = ChangeFeed::builder(tracker)
///     .poll_every(Duration::from_secs(300)) // a safety net under the notifications
///     .spawn(move |page: DeltaPage<User>| {
///         let mut local = local.lock().unwrap();
///         for user in page.changed {
///             local.insert(user.id.clone(), user);
///         }
///         for gone in page.removed {
///             local.remove(&gone.id);
///         }
///         async { Ok::<(), std::io::Error>(()) }
///     });
/// // In the notification worker's handler: acknowledged once the change is applied.
/// feed.changed().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ChangeFeed {
    inner: Arc<Inner>,
    /// Dropped with the last handle: the feed's task stops.
    _owner: Arc<Owner>,
}

/// Stops the feed's task when the last [`ChangeFeed`] handle goes.
struct Owner(Arc<Inner>);

impl Drop for Owner {
    fn drop(&mut self) {
        self.0.stopping.store(true, Ordering::SeqCst);
        self.0.wake.notify_one();
    }
}

/// Marks the feed stopped however its task ends (a return, a panic, a runtime shut
/// down), so no waiter waits for ever.
struct StoppedOnExit(Arc<Inner>);

impl Drop for StoppedOnExit {
    fn drop(&mut self) {
        self.0.done.send_modify(|d| d.stopped = true);
    }
}

impl std::fmt::Debug for ChangeFeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChangeFeed")
            .field("status", &self.status())
            .finish_non_exhaustive()
    }
}

struct Inner {
    /// Rounds asked for so far (a generation number).
    requested: AtomicU64,
    wake: Notify,
    stopping: AtomicBool,
    done: watch::Sender<Done>,
    rounds: AtomicU64,
    failures: AtomicU64,
}

/// What the feed's task has done, for waiters.
#[derive(Clone, Default)]
struct Done {
    /// Every request up to this generation is covered by a round that succeeded.
    succeeded: u64,
    /// The last round that failed covered requests up to this generation.
    failed: u64,
    /// Its error, cut short.
    error: Option<Arc<str>>,
    stopped: bool,
}

/// Why [`ChangeFeed::changed`] failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum FeedError {
    /// The round that would have covered the change failed (it is tried again after a
    /// backoff; so may your caller).
    #[error("change feed: the delta round failed: {0}")]
    Round(String),
    /// The feed was stopped.
    #[error("change feed: stopped")]
    Stopped,
}

impl keel_resilience::Classify for FeedError {
    fn class(&self) -> keel_resilience::ErrorClass {
        match self {
            FeedError::Round(_) => keel_resilience::ErrorClass::Transient,
            FeedError::Stopped => keel_resilience::ErrorClass::Permanent,
        }
    }
}

/// The feed's counters, for health checks and logs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct FeedStatus {
    /// Rounds that succeeded.
    pub rounds: u64,
    /// Rounds that failed.
    pub failures: u64,
    /// The last failure's message, when the last round failed.
    pub last_error: Option<String>,
}

/// Options of a [`ChangeFeed`].
#[must_use]
pub struct ChangeFeedBuilder {
    tracker: DeltaTracker,
    poll: Option<Duration>,
    backoff: (Duration, Duration),
}

impl std::fmt::Debug for ChangeFeedBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChangeFeedBuilder")
            .field("tracker", &self.tracker)
            .field("poll", &self.poll)
            .field("backoff", &self.backoff)
            .finish()
    }
}

impl ChangeFeedBuilder {
    /// Also run a round when `every` has passed without one (polling; at least 1 s).
    pub fn poll_every(mut self, every: Duration) -> Self {
        self.poll = Some(every.max(Duration::from_secs(1)));
        self
    }

    /// After a failed round, wait `first`, doubling up to `max`, before the next.
    pub fn backoff(mut self, first: Duration, max: Duration) -> Self {
        self.backoff = (first, max.max(first));
        self
    }

    /// Starts the feed's task on the current tokio runtime, with `apply` for each page
    /// (as [`DeltaTracker::round`] gives them). Its first round starts at once.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn spawn<T, F, Fut, E>(self, apply: F) -> ChangeFeed
    where
        T: DeserializeOwned + Send + 'static,
        F: FnMut(DeltaPage<T>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
    {
        let inner = Arc::new(Inner {
            // The round at start counts as asked for.
            requested: AtomicU64::new(1),
            wake: Notify::new(),
            stopping: AtomicBool::new(false),
            done: watch::Sender::new(Done::default()),
            rounds: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        });
        tokio::spawn(run(inner.clone(), self, apply));
        ChangeFeed {
            _owner: Arc::new(Owner(inner.clone())),
            inner,
        }
    }
}

impl ChangeFeed {
    /// A feed of `tracker`'s rounds: no polling, backoff 1 s to 1 min.
    pub fn builder(tracker: DeltaTracker) -> ChangeFeedBuilder {
        ChangeFeedBuilder {
            tracker,
            poll: None,
            backoff: (Duration::from_secs(1), Duration::from_secs(60)),
        }
    }

    /// Asks for a round and waits until one that started after this call has
    /// finished.
    ///
    /// # Errors
    /// [`FeedError::Round`] when that round failed; [`FeedError::Stopped`].
    pub async fn changed(&self) -> Result<(), FeedError> {
        let mut done = self.inner.done.subscribe();
        let mine = self.ask();
        let outcome = done
            .wait_for(|d| d.succeeded >= mine || d.failed >= mine || d.stopped)
            .await
            .map(|d| d.clone());
        match outcome {
            Ok(d) if d.succeeded >= mine => Ok(()),
            Ok(d) if d.failed >= mine => Err(FeedError::Round(
                d.error.as_deref().unwrap_or("unknown").to_owned(),
            )),
            _ => Err(FeedError::Stopped),
        }
    }

    /// Asks for a round without waiting (a `missed` lifecycle event, an operator's
    /// button).
    pub fn request(&self) {
        self.ask();
    }

    /// Asks for a round without waiting, or [`FeedError::Stopped`] when the feed no
    /// longer runs them.
    pub fn try_request(&self) -> Result<(), FeedError> {
        if self.inner.done.borrow().stopped || self.inner.stopping.load(Ordering::SeqCst) {
            return Err(FeedError::Stopped);
        }
        self.ask();
        Ok(())
    }

    /// Asks for a round; the request's generation.
    fn ask(&self) -> u64 {
        let mine = self.inner.requested.fetch_add(1, Ordering::SeqCst) + 1;
        self.inner.wake.notify_one();
        mine
    }

    /// Stops the feed after the round under way, and waits for it.
    pub async fn stop(&self) {
        self.inner.stopping.store(true, Ordering::SeqCst);
        self.inner.wake.notify_one();
        let mut done = self.inner.done.subscribe();
        let _ = done.wait_for(|d| d.stopped).await;
    }

    /// Rounds done and failed, and the last failure.
    #[must_use]
    pub fn status(&self) -> FeedStatus {
        let done = self.inner.done.borrow();
        FeedStatus {
            rounds: self.inner.rounds.load(Ordering::Relaxed),
            failures: self.inner.failures.load(Ordering::Relaxed),
            last_error: (done.failed > done.succeeded)
                .then(|| done.error.as_deref().map(str::to_owned))
                .flatten(),
        }
    }
}

/// The feed's task.
async fn run<T, F, Fut, E>(inner: Arc<Inner>, options: ChangeFeedBuilder, mut apply: F)
where
    T: DeserializeOwned + Send + 'static,
    F: FnMut(DeltaPage<T>) -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
{
    let _stopped = StoppedOnExit(inner.clone());
    let (first_backoff, max_backoff) = options.backoff;
    let mut backoff = first_backoff;
    let mut poll_due = false;
    loop {
        if inner.stopping.load(Ordering::SeqCst) {
            break;
        }
        let generation = inner.requested.load(Ordering::SeqCst);
        let pending = generation > inner.done.borrow().succeeded;
        if !pending && !poll_due {
            match options.poll {
                Some(every) => {
                    if tokio::time::timeout(every, inner.wake.notified())
                        .await
                        .is_err()
                    {
                        poll_due = true;
                    }
                }
                None => inner.wake.notified().await,
            }
            continue;
        }
        // A handler that panics fails the round (it is tried again), not the feed.
        let round = std::panic::AssertUnwindSafe(options.tracker.round(&mut apply));
        let outcome = match futures_util::FutureExt::catch_unwind(round).await {
            Ok(outcome) => outcome.map_err(|e| e.to_string()),
            Err(_) => Err("the page handler panicked".to_owned()),
        };
        match outcome {
            Ok(summary) => {
                inner.rounds.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("graph_delta_feed_rounds_total", "outcome" => "ok").increment(1);
                tracing::debug!(
                    changed = summary.changed,
                    removed = summary.removed,
                    full = summary.full,
                    "change feed: round done"
                );
                inner
                    .done
                    .send_modify(|d| d.succeeded = d.succeeded.max(generation));
                backoff = first_backoff;
                poll_due = false;
            }
            Err(error) => {
                inner.failures.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("graph_delta_feed_rounds_total", "outcome" => "failed")
                    .increment(1);
                tracing::warn!(%error, retry_in = ?backoff, "change feed: the delta round failed");
                let message: Arc<str> = error
                    .to_string()
                    .chars()
                    .take(300)
                    .collect::<String>()
                    .into();
                inner.done.send_modify(|d| {
                    d.failed = d.failed.max(generation);
                    d.error = Some(message);
                });
                // Wait out the backoff (a stop cuts it short); the failed requests are
                // still pending, so the next round starts after it.
                let _ = tokio::time::timeout(backoff, async {
                    while !inner.stopping.load(Ordering::SeqCst) {
                        inner.wake.notified().await;
                    }
                })
                .await;
                backoff = (backoff * 2).min(max_backoff);
            }
        }
    }
}
