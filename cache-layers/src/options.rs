//! How long entries live and what happens around their expiry.

use std::sync::Arc;
use std::time::Duration;

/// Per-entry settings: TTL and jitter, negative caching, eager refresh, fail-safe, loader
/// timeouts and tags. Set the cache's defaults with
/// [`CacheBuilder::entry_options`](crate::CacheBuilder::entry_options) and override them
/// per call with the `*_with` methods.
///
/// ```
/// use keel_cache_layers::EntryOptions;
/// use std::time::Duration;
///
/// let options = EntryOptions::new(Duration::from_secs(300))
///     .jitter(Duration::from_secs(30))          // TTL between 300 and 330 s
///     .negative_ttl(Duration::from_secs(10))    // "not found" kept 10 s
///     .eager_refresh(0.8)                       // reload in the background after 240 s
///     .fail_safe(Duration::from_secs(3600))     // serve the last good value up to 1 h
///     .soft_timeout(Duration::from_millis(100)) // ...or when the loader is slower than this
///     .hard_timeout(Duration::from_secs(2))
///     .tags(["tenant:42"]);
/// assert_eq!(options.ttl(), Duration::from_secs(300));
/// ```
#[derive(Clone, Debug, PartialEq)]
#[must_use]
pub struct EntryOptions {
    pub(crate) ttl: Duration,
    pub(crate) jitter: Duration,
    pub(crate) negative_ttl: Option<Duration>,
    pub(crate) eager_refresh: Option<f64>,
    pub(crate) fail_safe: Option<Duration>,
    pub(crate) fail_safe_throttle: Duration,
    pub(crate) soft_timeout: Option<Duration>,
    pub(crate) hard_timeout: Option<Duration>,
    pub(crate) tags: Arc<[Arc<str>]>,
}

impl Default for EntryOptions {
    /// Five minutes, no jitter, no negative caching, no eager refresh, no fail-safe, no
    /// timeouts, no tags.
    fn default() -> Self {
        Self::new(Duration::from_secs(300))
    }
}

impl EntryOptions {
    /// Entries fresh for `ttl`, with everything else off.
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            jitter: Duration::ZERO,
            negative_ttl: None,
            eager_refresh: None,
            fail_safe: None,
            fail_safe_throttle: Duration::from_secs(30),
            soft_timeout: None,
            hard_timeout: None,
            tags: Arc::from([]),
        }
    }

    /// How long an entry is fresh.
    #[must_use]
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Sets how long an entry is fresh.
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Adds a random `0..=max` to each entry's TTL so entries written together do not
    /// expire together (and stampede the source together).
    pub fn jitter(mut self, max: Duration) -> Self {
        self.jitter = max;
        self
    }

    /// Caches "not found" (a loader returning `Ok(None)`) for `ttl`.
    pub fn negative_ttl(mut self, ttl: Duration) -> Self {
        self.negative_ttl = Some(ttl);
        self
    }

    /// Once an entry is older than `fraction` of its TTL (0 < fraction < 1), the next
    /// `get_or_load` returns it at once and reloads it in the background
    /// (stale-while-revalidate), so hot keys never expire in front of a caller.
    pub fn eager_refresh(mut self, fraction: f64) -> Self {
        self.eager_refresh = Some(fraction);
        self
    }

    /// Keeps expired entries up to `max` longer and serves them when the loader fails or
    /// times out (fail-safe).
    pub fn fail_safe(mut self, max: Duration) -> Self {
        self.fail_safe = Some(max);
        self
    }

    /// After a failed reload, how long the stale value is served before the loader is
    /// tried again (default 30 s), so a failing source is not hammered.
    pub fn fail_safe_throttle(mut self, throttle: Duration) -> Self {
        self.fail_safe_throttle = throttle;
        self
    }

    /// When a stale value is available, callers wait at most this long for the loader and
    /// then get the stale value; the load goes on in the background.
    pub fn soft_timeout(mut self, timeout: Duration) -> Self {
        self.soft_timeout = Some(timeout);
        self
    }

    /// Callers wait at most this long for the loader; then they get the stale value if
    /// there is one, or [`CacheError::Timeout`](crate::CacheError::Timeout). The load goes
    /// on in the background.
    pub fn hard_timeout(mut self, timeout: Duration) -> Self {
        self.hard_timeout = Some(timeout);
        self
    }

    /// Tags for [`Cache::invalidate_tag`](crate::Cache::invalidate_tag).
    pub fn tags<I, T>(mut self, tags: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<Arc<str>>,
    {
        self.tags = tags.into_iter().map(Into::into).collect();
        self
    }

    pub(crate) fn validate(&self) -> Result<(), &'static str> {
        if self.ttl.is_zero() {
            return Err("the TTL must be more than zero");
        }
        if let Some(fraction) = self.eager_refresh
            && !(fraction > 0.0 && fraction < 1.0)
        {
            return Err("eager_refresh must be a fraction strictly between 0 and 1");
        }
        if matches!(self.negative_ttl, Some(ttl) if ttl.is_zero()) {
            return Err("the negative TTL must be more than zero");
        }
        Ok(())
    }

    /// The deadlines of an entry written at `now_ms`, with the jitter drawn.
    pub(crate) fn deadlines(&self, now_ms: u64, negative: bool) -> Deadlines {
        let base = if negative {
            self.negative_ttl.unwrap_or(self.ttl)
        } else {
            self.ttl
        };
        let jitter_ms = millis(self.jitter);
        let ttl_ms = millis(base)
            + if jitter_ms > 0 {
                fastrand::u64(0..=jitter_ms)
            } else {
                0
            };
        let fresh_until = now_ms.saturating_add(ttl_ms.max(1));
        let refresh_at = match self.eager_refresh {
            #[allow(
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss,
                clippy::cast_precision_loss
            )]
            Some(fraction) if !negative => now_ms.saturating_add((ttl_ms as f64 * fraction) as u64),
            _ => u64::MAX,
        };
        let stale_until = match self.fail_safe {
            Some(max) if !negative => fresh_until.saturating_add(millis(max)),
            _ => fresh_until,
        };
        Deadlines {
            fresh_until,
            refresh_at,
            stale_until,
        }
    }
}

/// When an entry stops being fresh, should be refreshed, and stops being servable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Deadlines {
    pub(crate) fresh_until: u64,
    pub(crate) refresh_at: u64,
    pub(crate) stale_until: u64,
}

pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_its_bounds_and_spreads() {
        let options = EntryOptions::new(Duration::from_secs(10)).jitter(Duration::from_secs(2));
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..2_000 {
            let d = options.deadlines(1_000, false);
            assert!((11_000..=13_000).contains(&d.fresh_until), "{d:?}");
            seen.insert(d.fresh_until / 100);
        }
        assert!(seen.len() > 15, "jitter should spread deadlines: {seen:?}");
    }

    #[test]
    fn eager_refresh_and_fail_safe_place_their_deadlines() {
        let options = EntryOptions::new(Duration::from_secs(10))
            .eager_refresh(0.5)
            .fail_safe(Duration::from_secs(60));
        let d = options.deadlines(0, false);
        assert_eq!(d.fresh_until, 10_000);
        assert_eq!(d.refresh_at, 5_000);
        assert_eq!(d.stale_until, 70_000);
        // "Not found" is never refreshed eagerly nor served stale.
        let options = options.negative_ttl(Duration::from_secs(1));
        let d = options.deadlines(0, true);
        assert_eq!(
            (d.fresh_until, d.refresh_at, d.stale_until),
            (1_000, u64::MAX, 1_000)
        );
    }

    #[test]
    fn settings_out_of_range_are_refused() {
        assert!(EntryOptions::new(Duration::ZERO).validate().is_err());
        assert!(
            EntryOptions::default()
                .eager_refresh(1.0)
                .validate()
                .is_err()
        );
        assert!(
            EntryOptions::default()
                .eager_refresh(f64::NAN)
                .validate()
                .is_err()
        );
        assert!(EntryOptions::default().validate().is_ok());
    }
}
