//! Concurrency budgets: adaptive concurrency per tenant (additive increase,
//! multiplicative decrease on throttling) and Outlook's limits per mailbox (four
//! concurrent requests and 10,000 requests per 10 minutes, per app per mailbox), shared
//! by direct calls, `$batch` items and the auto-batcher.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// Adaptive concurrency: how many calls of one tenant may be in flight, adjusted by
/// what Graph answers.
///
/// ```
/// use keel_graph_client::Concurrency;
///
/// let adaptive = Concurrency::adaptive(8, 64); // start at 8, never above 64
/// let fixed = Concurrency::fixed(4);
/// # let _ = (adaptive, fixed);
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Concurrency {
    initial: usize,
    max: usize,
    adaptive: bool,
}

impl Concurrency {
    /// Starts at `initial` calls in flight per tenant (at least 1); each success adds
    /// `1 / limit` (one more per round of answers), up to `max`; a throttled answer (429,
    /// 503) halves it, once per round.
    #[must_use]
    pub fn adaptive(initial: usize, max: usize) -> Self {
        let max = max.max(1);
        Concurrency {
            initial: initial.clamp(1, max),
            max,
            adaptive: true,
        }
    }

    /// Exactly `limit` calls in flight per tenant (at least 1).
    #[must_use]
    pub fn fixed(limit: usize) -> Self {
        let limit = limit.max(1);
        Concurrency {
            initial: limit,
            max: limit,
            adaptive: false,
        }
    }
}

impl Default for Concurrency {
    /// Adaptive, from 16 up to 256 per tenant.
    fn default() -> Self {
        Concurrency::adaptive(16, 256)
    }
}

#[derive(Debug)]
struct AimdState {
    limit: f64,
    in_flight: usize,
    epoch: u64,
}

/// One tenant's adaptive limit.
#[derive(Debug)]
pub(crate) struct Adaptive {
    config: Concurrency,
    state: Mutex<AimdState>,
    freed: Notify,
}

/// A call in flight; dropping it frees its place.
#[derive(Debug)]
#[must_use]
pub(crate) struct AdaptivePermit {
    owner: Arc<Adaptive>,
    epoch: u64,
}

impl Adaptive {
    fn new(config: Concurrency) -> Self {
        Adaptive {
            config,
            state: Mutex::new(AimdState {
                limit: config.initial as f64,
                in_flight: 0,
                epoch: 0,
            }),
            freed: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, AimdState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) async fn acquire(self: &Arc<Self>) -> AdaptivePermit {
        loop {
            let freed = self.freed.notified();
            {
                let mut state = self.lock();
                if (state.in_flight as f64) < state.limit.floor().max(1.0) {
                    state.in_flight += 1;
                    return AdaptivePermit {
                        owner: self.clone(),
                        epoch: state.epoch,
                    };
                }
            }
            freed.await;
        }
    }

    pub(crate) fn limit(&self) -> f64 {
        self.lock().limit
    }

    /// The round: how many decreases so far.
    pub(crate) fn epoch(&self) -> u64 {
        self.lock().epoch
    }

    /// Throttling seen by a call sent in round `epoch`: halves the limit unless it was
    /// halved since that call was sent.
    pub(crate) fn throttled_in(&self, epoch: u64) {
        if !self.config.adaptive {
            return;
        }
        let mut state = self.lock();
        if state.epoch == epoch {
            state.limit = (state.limit / 2.0).max(1.0);
            state.epoch += 1;
        }
    }
}

impl AdaptivePermit {
    /// Graph answered without throttling.
    pub(crate) fn succeeded(&self) {
        if !self.owner.config.adaptive {
            return;
        }
        let mut state = self.owner.lock();
        state.limit = (state.limit + 1.0 / state.limit).min(self.owner.config.max as f64);
        drop(state);
        self.owner.freed.notify_waiters();
    }

    /// Graph throttled the call: halve the limit, once per round (calls sent before the
    /// last decrease do not decrease it again).
    pub(crate) fn throttled(&self) {
        self.owner.throttled_in(self.epoch);
    }
}

impl Drop for AdaptivePermit {
    fn drop(&mut self) {
        self.owner.lock().in_flight -= 1;
        self.owner.freed.notify_waiters();
    }
}

/// Outlook's documented limits per app per mailbox.
const MAILBOX_CONCURRENCY: usize = 4;
const MAILBOX_REQUESTS: u32 = 10_000;
const MAILBOX_WINDOW: Duration = Duration::from_secs(600);
/// Requests that may go at once before the steady rate applies: the burst and the
/// refill over one window add up to `MAILBOX_REQUESTS`.
const MAILBOX_BURST: u32 = 1_000;
/// How many mailboxes' budgets are kept, and for how long unused (longer than the
/// window, so a mailbox's rate is remembered while it matters).
const MAILBOXES_KEPT: u64 = 100_000;
const MAILBOX_IDLE: Duration = Duration::from_secs(900);

/// One mailbox's budget: four in flight, and a GCRA that lets at most 10,000 requests
/// through in any 10 minutes (a burst of 1,000, then one per 66.7 ms).
#[derive(Debug)]
struct Mailbox {
    in_flight: Arc<Semaphore>,
    /// The theoretical arrival time of the next request.
    tat: Mutex<Option<Instant>>,
}

impl keel_resilience::keyed::Retain for Mailbox {
    /// Kept through size eviction while requests are in flight or waiting (each holds
    /// the semaphore), or while its rate is spent.
    fn retain(&self) -> bool {
        Arc::strong_count(&self.in_flight) > 1
            || self
                .tat
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .is_some_and(|t| t > Instant::now())
    }
}

impl Mailbox {
    /// Waits until `n` more requests conform to the rate, then takes them. Nothing is
    /// taken while waiting, so a caller that gives up costs nothing.
    async fn pace(&self, n: u32) {
        // Rounded up, so that the burst and the refill never add up past the limit.
        let interval = Duration::from_nanos(
            (MAILBOX_WINDOW.as_nanos() as u64)
                .div_ceil(u64::from(MAILBOX_REQUESTS - MAILBOX_BURST)),
        );
        let tolerance = interval * MAILBOX_BURST;
        loop {
            let wait = {
                let now = Instant::now();
                let mut tat = self.tat.lock().unwrap_or_else(PoisonError::into_inner);
                let base = tat.map_or(now, |t| t.max(now));
                let wait = base
                    .saturating_duration_since(now)
                    .saturating_sub(tolerance);
                if wait.is_zero() {
                    *tat = Some(base + interval * n);
                }
                wait
            };
            if wait.is_zero() {
                return;
            }
            tokio::time::sleep(wait).await;
        }
    }
}

/// Every tenant's budgets.
#[derive(Debug)]
pub(crate) struct Budgets {
    concurrency: Concurrency,
    tenants: Mutex<HashMap<String, Arc<Adaptive>>>,
    mailboxes: keel_resilience::keyed::KeyedRegistry<String, Mailbox>,
}

/// Places held for one HTTP request: its tenant's and its mailboxes'.
#[derive(Debug)]
pub(crate) struct Held {
    pub(crate) tenant: AdaptivePermit,
    _mailboxes: Vec<OwnedSemaphorePermit>,
}

impl Budgets {
    pub(crate) fn new(concurrency: Concurrency) -> Self {
        Budgets {
            concurrency,
            tenants: Mutex::new(HashMap::new()),
            mailboxes: keel_resilience::keyed::KeyedRegistry::new(
                MAILBOXES_KEPT,
                MAILBOX_IDLE,
                |_: &String| Mailbox {
                    in_flight: Arc::new(Semaphore::new(MAILBOX_CONCURRENCY)),
                    tat: Mutex::new(None),
                },
            ),
        }
    }

    pub(crate) fn tenant(&self, tenant: &str) -> Arc<Adaptive> {
        self.tenants
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(tenant.to_owned())
            .or_insert_with(|| Arc::new(Adaptive::new(self.concurrency)))
            .clone()
    }

    /// Waits for a place of `tenant` and one per item for each of `mailboxes` (one entry
    /// per request to that mailbox; at most four of one mailbox in one call), spacing
    /// requests so that no mailbox gets more than 10,000 in 10 minutes.
    pub(crate) async fn acquire(&self, tenant: &str, mailboxes: &[String]) -> Held {
        let mut counts: Vec<(String, u32)> = Vec::new();
        for mailbox in mailboxes {
            let key = format!("{tenant}/{}", mailbox.to_ascii_lowercase());
            match counts.iter_mut().find(|(k, _)| *k == key) {
                Some((_, n)) => *n += 1,
                None => counts.push((key, 1)),
            }
        }
        // A fixed order, so that two calls never wait on each other's mailboxes.
        counts.sort();
        let mut held = Vec::with_capacity(counts.len());
        for (key, n) in counts {
            let mailbox = self.mailboxes.get(&key);
            let n = n.min(MAILBOX_CONCURRENCY as u32);
            // The places first, then the rate: a request paced is about to go out.
            if let Ok(permit) = mailbox.in_flight.clone().acquire_many_owned(n).await {
                held.push(permit);
            }
            mailbox.pace(n).await;
        }
        let tenant = self.tenant(tenant).acquire().await;
        Held {
            tenant,
            _mailboxes: held,
        }
    }
}

/// The path segments after `/users/{id}/` or `/me/` that are Outlook resources (lower
/// case), held to Outlook's limits per mailbox.
pub(crate) const OUTLOOK: &[&str] = &[
    "messages",
    "mailfolders",
    "events",
    "calendar",
    "calendars",
    "calendarview",
    "contacts",
    "contactfolders",
    "mailboxsettings",
    "outlook",
    "inferenceclassification",
    "sendmail",
    "calendargroups",
    "findmeetingtimes",
    "getmailtips",
    "todo",
];

/// The mailbox an Outlook request addresses: `users/{id}` or `me`, followed by one of
/// Outlook's resources; `None` for anything else. `path` is relative to the version;
/// the id is percent-decoded and lower-cased, so one mailbox has one key however its
/// path was spelt.
pub(crate) fn mailbox_of(path: &str) -> Option<String> {
    let path = path.split(['?', '#']).next().unwrap_or_default();
    let mut segments = path.trim_start_matches('/').split('/');
    let first = segments.next()?;
    let (mailbox, resource) = if first.eq_ignore_ascii_case("me") {
        ("me".to_owned(), segments.next()?)
    } else if first.eq_ignore_ascii_case("users") {
        (
            crate::request::percent_decode(segments.next()?, false)?.to_lowercase(),
            segments.next()?,
        )
    } else {
        return None;
    };
    let resource = resource.to_ascii_lowercase();
    OUTLOOK
        .contains(&resource.as_str())
        .then_some(mailbox)
        .filter(|m| !m.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outlook_paths_name_their_mailbox() {
        assert_eq!(
            mailbox_of("/users/Ada@contoso.com/messages?$top=5").as_deref(),
            Some("ada@contoso.com")
        );
        assert_eq!(mailbox_of("/me/mailFolders/inbox").as_deref(), Some("me"));
        assert_eq!(mailbox_of("users/42/events").as_deref(), Some("42"));
        assert_eq!(mailbox_of("/users/42"), None);
        assert_eq!(mailbox_of("/users/42/memberOf"), None);
        assert_eq!(mailbox_of("/groups/1/events"), None);
        assert_eq!(mailbox_of("/users//messages"), None);
        // One mailbox, one key, however the id was spelt in the path.
        assert_eq!(
            mailbox_of("/users/Ada%5Ex@contoso.com/messages"),
            mailbox_of("/users/ada^x@contoso.com/events")
        );
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn adaptive_limit_halves_once_per_round_and_grows_back() {
        let budgets = Budgets::new(Concurrency::adaptive(8, 10));
        let limiter = budgets.tenant("t");
        let permits: Vec<_> =
            futures_util::future::join_all((0..8).map(|_| limiter.acquire())).await;
        // Eight throttled answers of one round halve the limit once.
        for p in &permits {
            p.throttled();
        }
        assert_eq!(limiter.limit(), 4.0);
        drop(permits);
        let p = limiter.acquire().await;
        p.throttled();
        assert_eq!(limiter.limit(), 2.0);
        drop(p);
        for _ in 0..20 {
            limiter.acquire().await.succeeded();
        }
        assert!(
            limiter.limit() > 5.0 && limiter.limit() <= 10.0,
            "{}",
            limiter.limit()
        );
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_full_limit_makes_the_next_call_wait() {
        let budgets = Budgets::new(Concurrency::fixed(2));
        let a = budgets.acquire("t", &[]).await;
        let _b = budgets.acquire("t", &[]).await;
        let third =
            tokio::time::timeout(Duration::from_millis(10), budgets.acquire("t", &[])).await;
        assert!(third.is_err(), "a third call went out above the limit");
        drop(a);
        let third =
            tokio::time::timeout(Duration::from_millis(10), budgets.acquire("t", &[])).await;
        assert!(third.is_ok());
        // Another tenant has its own limit.
        assert!(
            tokio::time::timeout(Duration::from_millis(10), budgets.acquire("u", &[]))
                .await
                .is_ok()
        );
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_mailbox_gets_four_in_flight_and_ten_thousand_per_ten_minutes() {
        let budgets = Budgets::new(Concurrency::fixed(100));
        let box_ = vec!["ada".to_owned()];
        let held: Vec<_> =
            futures_util::future::join_all((0..4).map(|_| budgets.acquire("t", &box_))).await;
        let fifth =
            tokio::time::timeout(Duration::from_millis(10), budgets.acquire("t", &box_)).await;
        assert!(fifth.is_err(), "a fifth request to one mailbox went out");
        // Another mailbox is not held up.
        assert!(
            tokio::time::timeout(
                Duration::from_millis(10),
                budgets.acquire("t", &["bob".to_owned()])
            )
            .await
            .is_ok()
        );
        drop(held);
        // Requests one after another for 25 minutes of (paused) time: no 10-minute
        // window ever holds more than 10,000.
        let start = Instant::now();
        let mut sent: Vec<Duration> = Vec::new();
        while start.elapsed() < Duration::from_secs(1_500) {
            drop(budgets.acquire("t", &box_).await);
            sent.push(start.elapsed());
        }
        let mut most = 0;
        let mut first = 0;
        for (last, at) in sent.iter().enumerate() {
            while *at - sent[first] >= MAILBOX_WINDOW {
                first += 1;
            }
            most = most.max(last + 1 - first);
        }
        assert!(
            most <= MAILBOX_REQUESTS as usize,
            "{most} requests in one window"
        );
        assert!(most >= 9_900, "the budget should be used: {most}");
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_caller_that_gives_up_while_paced_costs_nothing() {
        let budgets = Budgets::new(Concurrency::fixed(100));
        let box_ = vec!["ada".to_owned()];
        for _ in 0..MAILBOX_BURST {
            drop(budgets.acquire("t", &box_).await);
        }
        // 1,000 callers give up while waiting for the rate.
        for _ in 0..1_000 {
            let _ =
                tokio::time::timeout(Duration::from_millis(1), budgets.acquire("t", &box_)).await;
        }
        let start = Instant::now();
        drop(budgets.acquire("t", &box_).await);
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "{:?}",
            start.elapsed()
        );
    }
}
