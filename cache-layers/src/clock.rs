//! Entry versions. Wall-clock time itself comes from keel-resilience's
//! [`WallClock`](keel_resilience::clock::WallClock), re-exported at the crate root.

use std::sync::atomic::{AtomicU64, Ordering};

use keel_resilience::clock::WallClock;

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

    pub(crate) fn next(&self, clock: &dyn WallClock) -> u64 {
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
    use keel_resilience::clock::ManualClock;

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
