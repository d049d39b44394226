//! Wall-clock time, injectable so that behaviour that depends on it (expiry, lifetimes,
//! key overlaps, token validity) is tested under a [`ManualClock`] instead of sleeping.
//!
//! One time model for the whole family: wall-clock time (what deadlines that travel to
//! Redis, PostgreSQL or another instance are written in) comes from a [`WallClock`];
//! monotonic time (timeouts, back-off waits, rate-limiter waits, freshness windows) comes
//! from `tokio::time::Instant`, so tests under tokio's paused time need no sleeping either.
//!
//! ```
//! use keel_resilience::clock::{ManualClock, WallClock};
//! use std::time::{Duration, UNIX_EPOCH};
//!
//! let clock = ManualClock::new(1_000);
//! clock.advance(Duration::from_secs(2));
//! assert_eq!(clock.now(), UNIX_EPOCH + Duration::from_millis(3_000));
//! ```

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Where wall-clock time is read, in milliseconds since the Unix epoch.
///
/// Wall-clock time (not `Instant`) because the deadlines it makes travel: cache entries
/// to Redis, refresh-token lifetimes to the store, `exp` into tokens read by other
/// services. Clocks kept in sync by NTP are good enough for lifetimes of seconds and up.
///
/// Implemented by [`SystemClock`] (precise), [`CoarseClock`] (one atomic load, for hot
/// paths) and [`ManualClock`] (tests); `Arc<C>` is a clock too. A clock must be
/// `RefUnwindSafe` (so the key rings and validators holding one stay unwind-safe): wrap
/// a closure-based clock in `std::panic::AssertUnwindSafe` inside your type.
pub trait WallClock: Send + Sync + std::panic::RefUnwindSafe + fmt::Debug + 'static {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;

    /// The time as a [`SystemTime`].
    fn now(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.now_ms())
    }

    /// Whole seconds since the Unix epoch (what JWT `exp`, `iat` and `nbf` hold).
    fn now_secs(&self) -> u64 {
        self.now_ms() / 1_000
    }
}

impl<C: WallClock + ?Sized> WallClock for Arc<C> {
    #[inline]
    fn now_ms(&self) -> u64 {
        (**self).now_ms()
    }

    #[inline]
    fn now(&self) -> SystemTime {
        (**self).now()
    }

    #[inline]
    fn now_secs(&self) -> u64 {
        (**self).now_secs()
    }
}

/// The system's wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl WallClock for SystemClock {
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
/// use keel_resilience::clock::{CoarseClock, SystemClock, WallClock};
///
/// let drift = SystemClock.now_ms().abs_diff(CoarseClock.now_ms());
/// assert!(drift < 1_000);
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct CoarseClock;

static COARSE_NOW: AtomicU64 = AtomicU64::new(0);
static TICKER: std::sync::OnceLock<()> = std::sync::OnceLock::new();

impl WallClock for CoarseClock {
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
            .name("keel-coarse-clock".into())
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

/// A clock that moves only when told to, for tests of expiry, lifetimes and refresh.
///
/// Clones share the time, so the clock handed to the code under test is moved by the test.
///
/// ```
/// use keel_resilience::clock::{ManualClock, WallClock};
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

    /// A clock showing the system's time now (then moving only when told to).
    #[must_use]
    pub fn starting_now() -> Self {
        Self::new(SystemClock.now_ms())
    }

    /// Moves the clock forward (stopping at the end of time, never wrapping round).
    pub fn advance(&self, by: Duration) {
        let ms = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
        let _ = self
            .0
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |now| {
                Some(now.saturating_add(ms))
            });
    }

    /// Sets the clock, forward or back (a stepped wall clock, as NTP does after a
    /// long drift).
    pub fn set(&self, at: SystemTime) {
        let ms = at
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        self.0.store(ms, Ordering::SeqCst);
    }
}

impl WallClock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
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
    fn a_manual_clock_stops_at_the_end_of_time_instead_of_wrapping() {
        let clock = ManualClock::new(1_000);
        clock.advance(Duration::MAX);
        assert_eq!(clock.now_ms(), u64::MAX);
        clock.advance(Duration::from_secs(1));
        assert_eq!(clock.now_ms(), u64::MAX);
    }

    /// A clock that computes its own `now` and `now_secs` is read the same through an
    /// `Arc<dyn WallClock>` (what every Keel type holds).
    #[test]
    fn an_arc_passes_every_method_through() {
        #[derive(Debug)]
        struct Odd;
        impl WallClock for Odd {
            fn now_ms(&self) -> u64 {
                1_000_000
            }
            fn now_secs(&self) -> u64 {
                42
            }
            fn now(&self) -> SystemTime {
                UNIX_EPOCH + Duration::from_secs(42)
            }
        }
        let shared: Arc<dyn WallClock> = Arc::new(Odd);
        assert_eq!(shared.now_secs(), 42);
        assert_eq!(shared.now(), UNIX_EPOCH + Duration::from_secs(42));
        let boxed_twice = Arc::new(shared);
        assert_eq!(boxed_twice.now_secs(), 42);
    }

    #[test]
    fn a_manual_clock_is_shared_by_its_clones_and_can_step_back() {
        let clock = ManualClock::new(10_500);
        let seen_by_code = Arc::new(clock.clone());
        clock.advance(Duration::from_millis(1_600));
        assert_eq!(seen_by_code.now_ms(), 12_100);
        assert_eq!(seen_by_code.now_secs(), 12);
        clock.set(UNIX_EPOCH + Duration::from_secs(5));
        assert_eq!(seen_by_code.now(), UNIX_EPOCH + Duration::from_secs(5));
        let real = ManualClock::starting_now();
        assert!(real.now_ms().abs_diff(SystemClock.now_ms()) < 1_000);
    }
}
