//! MSAL's cache behaviour in front of any provider.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use keel_resilience::retry::Backoff;
use keel_resilience::{Classify as _, ErrorClass};
use tokio::time::Instant;
use tracing::Instrument as _;

use super::{AccessToken, TokenError, TokenFuture, TokenProvider, TokenRequest};

/// When cached tokens are refreshed, and how failed refreshes are retried.
///
/// A failed background refresh is retried after keel-resilience's [`Backoff`] (by
/// default exponential from 2 s to 60 s with full jitter, so that many instances whose
/// refresh failed together do not retry together), or after the provider's
/// `Retry-After` when it throttled us, whichever is longer. The old token is served
/// meanwhile, until it expires.
///
/// ```
/// use keel_resilience::retry::Backoff;
/// use keel_token_manager::client::RefreshPolicy;
/// use std::time::Duration;
///
/// let policy = RefreshPolicy::default(); // 5 minutes before expiry, as MSAL
/// assert_eq!(policy.buffer(), Duration::from_secs(300));
/// let policy = RefreshPolicy::default()
///     .with_buffer(Duration::from_secs(120))
///     .with_retry_backoff(Backoff::Constant(Duration::from_secs(5)));
/// assert_eq!(policy.buffer(), Duration::from_secs(120));
/// assert_eq!(policy.retry_backoff(), Backoff::Constant(Duration::from_secs(5)));
/// ```
#[derive(Clone, Copy, Debug)]
pub struct RefreshPolicy {
    buffer: Duration,
    retry: Backoff,
}

impl Default for RefreshPolicy {
    fn default() -> Self {
        Self {
            buffer: Duration::from_secs(300),
            retry: Backoff::Exponential {
                base: Duration::from_secs(2),
                max: Duration::from_secs(60),
                jitter: true,
            },
        }
    }
}

impl RefreshPolicy {
    /// Refresh this long before expiry (default 5 minutes), unless the provider said
    /// when (`refresh_in`). Tokens living less than twice this are refreshed at half
    /// their lifetime instead.
    #[must_use]
    pub fn with_buffer(mut self, buffer: Duration) -> Self {
        self.buffer = buffer;
        self
    }

    /// After a failed background refresh, wait this long before the next: the same as
    /// `with_retry_backoff(Backoff::Constant(every))`.
    #[must_use]
    pub fn with_retry_every(self, every: Duration) -> Self {
        self.with_retry_backoff(Backoff::Constant(every))
    }

    /// The delays between failed background refreshes (keel-resilience's [`Backoff`];
    /// retry number 1 follows the first failure). A throttled refresh waits at least the
    /// provider's `Retry-After`.
    #[must_use]
    pub fn with_retry_backoff(mut self, backoff: Backoff) -> Self {
        self.retry = backoff;
        self
    }

    /// The delays between failed background refreshes.
    #[must_use]
    pub fn retry_backoff(&self) -> Backoff {
        self.retry
    }

    /// How long to wait after failure number `failures` (1 for the first) with `error`.
    fn retry_delay(&self, failures: u32, previous: Duration, error: &TokenError) -> Duration {
        let backoff = self.retry.delay(failures, previous);
        match error.class() {
            ErrorClass::Throttled {
                retry_after: Some(asked),
            } => backoff.max(asked),
            _ => backoff,
        }
    }

    /// The refresh buffer.
    #[must_use]
    pub fn buffer(&self) -> Duration {
        self.buffer
    }

    pub(super) fn refresh_at(&self, token: &AccessToken, issued: Instant) -> Instant {
        let lifetime = token.expires_at().saturating_duration_since(issued);
        // Never sooner than 30 s (or half the life of a shorter token) after it came: a
        // provider's `refresh_in: 0` must not turn every call into a request.
        let earliest = issued + (lifetime / 2).min(Duration::from_secs(30));
        if let Some(at) = token.refresh_at() {
            return at.max(earliest);
        }
        if lifetime >= self.buffer * 2 {
            token.expires_at() - self.buffer
        } else {
            issued + lifetime / 2
        }
    }
}

/// What a [`CachingProvider`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CacheStats {
    /// Calls that the cache answered.
    pub hits: u64,
    /// Requests made to the provider (first fetches, refreshes, claims challenges).
    pub requests: u64,
    /// Background refreshes that failed (the old token was kept).
    pub failed_refreshes: u64,
}

#[derive(Default)]
struct Counters {
    hits: AtomicU64,
    requests: AtomicU64,
    failed_refreshes: AtomicU64,
}

struct Cached {
    token: AccessToken,
    refresh_at: Instant,
}

#[derive(Default)]
struct Slot {
    cached: Option<Cached>,
    refreshing: bool,
    retry_at: Option<Instant>,
    /// Background refreshes failed in a row, and the last delay (for the backoff).
    failures: u32,
    last_delay: Duration,
    /// The challenge sequence number of the last challenge answer stored here: a fetch
    /// that began before it does not replace it (a number from the whole cache, so an
    /// evicted and remade slot does not start over).
    challenged_at: u64,
    /// Held by the caller fetching a token nobody has yet (others wait on it).
    fetching: Arc<tokio::sync::Mutex<()>>,
}

struct Shared<P> {
    provider: P,
    slots: Mutex<HashMap<TokenRequest, Slot>>,
    policy: RefreshPolicy,
    max_entries: AtomicUsize,
    counters: Counters,
    /// Bumped by `clear`: a fetch that began before it does not store its token.
    cleared: AtomicU64,
    /// Counts challenge answers stored, across keys.
    challenge_seq: AtomicU64,
}

/// A token cache in front of a provider, as MSAL keeps one: a token per tenant, scope
/// set (in any order) and provider; refreshed in the background ahead of expiry (at
/// `refresh_in` when the provider gave it, else [`RefreshPolicy`]'s buffer) by exactly
/// one request at a time per key while every caller keeps getting the still-valid
/// token without waiting; a failed refresh keeps serving the old token until it
/// expires, retried after a backoff ([`RefreshPolicy`]); a request with claims (a challenge) goes to the
/// provider and its token replaces the cached one. Bounded (10,000 keys by default):
/// past that, expired tokens go first, then the one expiring soonest.
///
/// Background refreshes run in their own task, in the caller's tracing span.
#[derive(Clone)]
pub struct CachingProvider<P> {
    shared: Arc<Shared<P>>,
}

impl<P> fmt::Debug for CachingProvider<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CachingProvider")
            .field("policy", &self.shared.policy)
            .field("entries", &self.shared.slots().len())
            .finish_non_exhaustive()
    }
}

impl<P> Shared<P> {
    fn slots(&self) -> MutexGuard<'_, HashMap<TokenRequest, Slot>> {
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Keeps `token` for `key`, unless the cache was cleared since the fetch began
    /// (`cleared` as it was then). A token answering a claims challenge (`challenged`)
    /// replaces the cached one whatever its expiry: the cached one was refused.
    fn store(
        &self,
        key: &TokenRequest,
        token: &AccessToken,
        issued: Instant,
        (cleared, challenges_before): (u64, u64),
        challenged: bool,
    ) {
        let refresh_at = self.policy.refresh_at(token, issued);
        let mut slots = self.slots();
        if self.cleared.load(Ordering::Acquire) != cleared {
            return;
        }
        if !slots.contains_key(key) && slots.len() >= self.max_entries.load(Ordering::Relaxed) {
            evict(&mut slots);
        }
        let slot = slots.entry(key.clone()).or_default();
        if challenged {
            slot.challenged_at = self.challenge_seq.fetch_add(1, Ordering::AcqRel) + 1;
        } else if slot.challenged_at > challenges_before {
            // A challenge was answered while this fetch ran: its token stays.
            return;
        }
        // A token that expires sooner than the cached one (a slower, older request) does
        // not replace it.
        if challenged
            || slot
                .cached
                .as_ref()
                .is_none_or(|c| c.token.expires_at() <= token.expires_at())
        {
            slot.cached = Some(Cached {
                token: token.clone(),
                refresh_at,
            });
        }
        slot.retry_at = None;
        slot.failures = 0;
        slot.last_delay = Duration::ZERO;
    }
}

/// Makes room for one more key: expired tokens first, else the one expiring soonest.
fn evict(slots: &mut HashMap<TokenRequest, Slot>) {
    let now = Instant::now();
    let before = slots.len();
    slots.retain(|_, slot| {
        slot.refreshing
            || slot
                .cached
                .as_ref()
                .is_some_and(|c| c.token.is_valid_at(now))
    });
    if slots.len() < before {
        return;
    }
    let soonest = slots
        .iter()
        .filter(|(_, slot)| !slot.refreshing)
        .min_by_key(|(_, slot)| slot.cached.as_ref().map(|c| c.token.expires_at()))
        .map(|(key, _)| key.clone());
    if let Some(key) = soonest {
        slots.remove(&key);
    }
}

impl<P: TokenProvider + 'static> CachingProvider<P> {
    /// A cache in front of `provider` with the default [`RefreshPolicy`].
    pub fn new(provider: P) -> Self {
        Self::with_policy(provider, RefreshPolicy::default())
    }

    /// A cache with its own refresh policy.
    pub fn with_policy(provider: P, policy: RefreshPolicy) -> Self {
        Self {
            shared: Arc::new(Shared {
                provider,
                slots: Mutex::new(HashMap::new()),
                policy,
                max_entries: AtomicUsize::new(10_000),
                counters: Counters::default(),
                cleared: AtomicU64::new(0),
                challenge_seq: AtomicU64::new(0),
            }),
        }
    }

    /// The most keys kept (default 10,000; at least 1).
    #[must_use]
    pub fn max_entries(self, entries: usize) -> Self {
        self.shared
            .max_entries
            .store(entries.max(1), Ordering::Relaxed);
        self
    }

    /// What the cache did so far.
    #[must_use]
    pub fn stats(&self) -> CacheStats {
        let c = &self.shared.counters;
        CacheStats {
            hits: c.hits.load(Ordering::Relaxed),
            requests: c.requests.load(Ordering::Relaxed),
            failed_refreshes: c.failed_refreshes.load(Ordering::Relaxed),
        }
    }

    /// Forgets every token this cache holds (a sign-out, a credential change). A
    /// [`SharedTokenCache`](super::SharedTokenCache) behind it keeps its own: call its
    /// `forget` too.
    pub fn clear(&self) {
        let mut slots = self.shared.slots();
        self.shared.cleared.fetch_add(1, Ordering::AcqRel);
        slots.clear();
    }

    async fn fetch(shared: &Shared<P>, request: &TokenRequest) -> Result<AccessToken, TokenError> {
        shared.counters.requests.fetch_add(1, Ordering::Relaxed);
        let issued = Instant::now();
        let key = request.without_claims();
        let seen = {
            let _slots = shared.slots();
            (
                shared.cleared.load(Ordering::Acquire),
                shared.challenge_seq.load(Ordering::Acquire),
            )
        };
        let fetched = shared.provider.token(request).await;
        metrics::counter!(
            "keel_token_client_requests_total",
            "outcome" => if fetched.is_ok() { "ok" } else { "error" }
        )
        .increment(1);
        let token = fetched?;
        let challenged = request.claims_json().is_some();
        shared.store(&key, &token, issued, seen, challenged);
        Ok(token)
    }

    /// Starts the background refresh of `key` unless one runs or a failed one is
    /// waiting to be retried. Called with the slots locked.
    fn refresh_in_background(&self, key: &TokenRequest, slot: &mut Slot, now: Instant) {
        if slot.refreshing || slot.retry_at.is_some_and(|at| now < at) {
            return;
        }
        slot.refreshing = true;
        let (shared, key) = (self.shared.clone(), key.clone());
        // Holds the key's fetch lock: a caller whose token expires meanwhile waits for
        // this refresh instead of sending a second request.
        let fetching = slot.fetching.clone();
        let refresh = async move {
            let _turn = fetching.lock().await;
            let fetched = Self::fetch(&shared, &key).await;
            let mut slots = shared.slots();
            if let Some(slot) = slots.get_mut(&key) {
                slot.refreshing = false;
                if let Err(e) = &fetched {
                    slot.failures = slot.failures.saturating_add(1);
                    let delay = shared.policy.retry_delay(slot.failures, slot.last_delay, e);
                    slot.last_delay = delay;
                    let now = Instant::now();
                    // A delay too long for the clock ("never") waits a year.
                    slot.retry_at = Some(
                        now.checked_add(delay)
                            .unwrap_or_else(|| now + Duration::from_secs(365 * 24 * 3600)),
                    );
                    shared
                        .counters
                        .failed_refreshes
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX), "token refresh failed; serving the current token until it expires");
                }
            }
        };
        tokio::spawn(refresh.in_current_span());
    }

    async fn cached_or_fetch(&self, request: &TokenRequest) -> Result<AccessToken, TokenError> {
        let shared = &*self.shared;
        if request.claims_json().is_some() {
            // A challenge: the cached token is what was refused.
            return Self::fetch(shared, request).await;
        }
        let fetching = {
            let now = Instant::now();
            let mut slots = shared.slots();
            if let Some(slot) = slots.get_mut(request)
                && let Some(cached) = &slot.cached
                && cached.token.is_valid_at(now)
            {
                let token = cached.token.clone();
                if now >= cached.refresh_at {
                    self.refresh_in_background(request, slot, now);
                }
                shared.counters.hits.fetch_add(1, Ordering::Relaxed);
                return Ok(token);
            }
            if !slots.contains_key(request)
                && slots.len() >= shared.max_entries.load(Ordering::Relaxed)
            {
                evict(&mut slots);
            }
            slots.entry(request.clone()).or_default().fetching.clone()
        };
        // No valid token: one caller fetches, the others wait for it and take its token.
        let _turn = fetching.lock().await;
        let now = Instant::now();
        if let Some(cached) = shared
            .slots()
            .get(request)
            .and_then(|slot| slot.cached.as_ref())
            .filter(|c| c.token.is_valid_at(now))
        {
            shared.counters.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(cached.token.clone());
        }
        Self::fetch(shared, request).await
    }
}

impl<P: TokenProvider + 'static> TokenProvider for CachingProvider<P> {
    fn token<'a>(&'a self, request: &'a TokenRequest) -> TokenFuture<'a> {
        Box::pin(self.cached_or_fetch(request))
    }

    fn identity(&self) -> Option<String> {
        self.shared.provider.identity()
    }
}
