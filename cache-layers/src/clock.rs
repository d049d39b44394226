//! Wall-clock time for expiry, injectable so expiry logic is testable without sleeping.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Where the cache reads the time, in milliseconds since the Unix epoch.
///
/// Wall-clock time (not `Instant`) because entry deadlines travel to Redis and are read by
/// other instances; clocks kept in sync by NTP are good enough for TTLs of seconds and up.
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
}

/// The system's wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    #[inline]
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
}

/// The default clock: wall-clock time as of the last millisecond tick of a background
/// thread (started on first use, one per process), so reading it is one atomic load
/// instead of a system call. Deadlines are honoured to within a few milliseconds.
///
/// It follows the wall clock forward (NTP slewing, a step forward) but never back: after
/// a backward step it goes on at the monotonic clock's pace from where it was, so no
/// deadline is stretched by the size of the step (and time never stands still).
///
/// ```
/// use keel_cache_layers::{Clock, CoarseClock, SystemClock};
///
/// let drift = SystemClock.now_ms().abs_diff(CoarseClock.now_ms());
/// assert!(drift < 1_000);
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct CoarseClock;

static COARSE_NOW: AtomicU64 = AtomicU64::new(0);
static TICKER: std::sync::OnceLock<()> = std::sync::OnceLock::new();

impl Clock for CoarseClock {
    #[inline]
    fn now_ms(&self) -> u64 {
        match COARSE_NOW.load(Ordering::Relaxed) {
            0 => start_ticker(),
            now => now,
        }
    }
}

#[cold]
fn start_ticker() -> u64 {
    TICKER.get_or_init(|| {
        COARSE_NOW.fetch_max(SystemClock.now_ms(), Ordering::Relaxed);
        let spawned = std::thread::Builder::new()
            .name("keel-cache-clock".into())
            .spawn(|| {
                let started = std::time::Instant::now();
                let mut anchored = Anchored::new(SystemClock.now_ms(), 0);
                loop {
                    std::thread::sleep(Duration::from_millis(1));
                    let mono = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
                    let now = anchored.now(SystemClock.now_ms(), mono);
                    COARSE_NOW.fetch_max(now, Ordering::Relaxed);
                }
            });
        if spawned.is_err() {
            // No thread: stay precise instead (0 keeps every read on this path).
            COARSE_NOW.store(0, Ordering::Relaxed);
        }
    });
    SystemClock.now_ms()
}

/// Wall-clock time carried forward by the monotonic clock: the wall clock at the last
/// anchor plus the monotonic time since. A wall clock ahead of it moves the anchor
/// forward; one behind it (a backward step) is ignored.
#[derive(Debug)]
struct Anchored {
    wall_ms: u64,
    mono_ms: u64,
}

impl Anchored {
    fn new(wall_ms: u64, mono_ms: u64) -> Self {
        Self { wall_ms, mono_ms }
    }

    fn now(&mut self, wall_ms: u64, mono_ms: u64) -> u64 {
        let carried = self
            .wall_ms
            .saturating_add(mono_ms.saturating_sub(self.mono_ms));
        if wall_ms > carried {
            *self = Self::new(wall_ms, mono_ms);
            return wall_ms;
        }
        carried
    }
}

/// A clock that moves only when told to, for tests of expiry, eager refresh and fail-safe.
///
/// ```
/// use keel_cache_layers::{Clock, ManualClock};
/// use std::time::Duration;
///
/// let clock = ManualClock::new(1_000);
/// clock.advance(Duration::from_secs(2));
/// assert_eq!(clock.now_ms(), 3_000);
/// ```
#[derive(Clone, Debug, Default)]
pub struct ManualClock(Arc<AtomicU64>);

impl ManualClock {
    /// A clock showing `start_ms`.
    #[must_use]
    pub fn new(start_ms: u64) -> Self {
        Self(Arc::new(AtomicU64::new(start_ms)))
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        let ms = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// Issues entry versions: microseconds of wall-clock time, strictly increasing within the
/// process (a hybrid logical clock). A version is taken when a load *starts* or an
/// invalidation happens, so an L2 write of a value read before an invalidation loses the
/// compare-and-set against the invalidation's tombstone.
#[derive(Debug)]
pub(crate) struct VersionClock {
    last: AtomicU64,
}

impl VersionClock {
    pub(crate) fn new() -> Self {
        Self {
            last: AtomicU64::new(0),
        }
    }

    pub(crate) fn next(&self, clock: &dyn Clock) -> u64 {
        let wall = clock.now_ms().saturating_mul(1_000);
        let mut last = self.last.load(Ordering::Relaxed);
        loop {
            let next = wall.max(last.saturating_add(1));
            match self
                .last
                .compare_exchange_weak(last, next, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return next,
                Err(seen) => last = seen,
            }
        }
    }

    /// Keeps versions ahead of one seen from another instance.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn observe(&self, version: u64) {
        // Versions are below 2^53 (Redis mints them as Lua numbers); a larger one was not
        // written by this crate and must not push the clock to its end.
        if version < 1 << 53 {
            self.last.fetch_max(version, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_coarse_clock_follows_the_wall_clock_forward_but_not_back() {
        let mut clock = Anchored::new(1_000_000, 0);
        assert_eq!(clock.now(1_000_010, 10), 1_000_010);
        // A step forward is followed at once.
        assert_eq!(clock.now(1_005_020, 20), 1_005_020);
        // A step back of 15 minutes: time goes on at the monotonic pace, not frozen for
        // 15 minutes (which would stretch every deadline by that much).
        assert_eq!(clock.now(1_005_030 - 900_000, 30), 1_005_030);
        assert_eq!(clock.now(1_005_040 - 900_000, 40), 1_005_040);
        // Once the wall clock is ahead again it is followed.
        assert_eq!(clock.now(1_009_000, 50), 1_009_000);
    }

    #[test]
    fn versions_increase_even_when_the_clock_stands_still() {
        let clock = ManualClock::new(5);
        let versions = VersionClock::new();
        let a = versions.next(&clock);
        let b = versions.next(&clock);
        assert_eq!(a, 5_000);
        assert_eq!(b, 5_001);
        versions.observe(9_000);
        assert_eq!(versions.next(&clock), 9_001);
        // A hostile version read from L2 is ignored.
        versions.observe(u64::MAX);
        assert_eq!(versions.next(&clock), 9_002);
    }
}
