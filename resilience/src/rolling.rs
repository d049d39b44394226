//! A lock-free counter over a rolling time window.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Counts events over the last `window`, in up to 600 buckets. Each bucket is one `u64`
/// holding its epoch (high half) and count (low half), updated by compare-and-swap, so a
/// bucket that rolls over restarts from zero without a lock and without losing a
/// concurrent increment. Times are nanoseconds on the owner's monotonic clock.
pub(crate) struct RollingCounter {
    buckets: Box<[AtomicU64]>,
    bucket_nanos: u64,
}

const EMPTY: u64 = u64::MAX;

impl RollingCounter {
    pub(crate) fn new(window: Duration) -> Self {
        let count = window.as_secs().clamp(1, 600);
        let bucket_nanos = u64::try_from(window.as_nanos() / u128::from(count))
            .unwrap_or(u64::MAX)
            .max(1);
        RollingCounter {
            buckets: (0..count).map(|_| AtomicU64::new(EMPTY)).collect(),
            bucket_nanos,
        }
    }

    fn epoch(&self, now: u64) -> u32 {
        u32::try_from(now / self.bucket_nanos).unwrap_or(u32::MAX - 1)
    }

    /// Adds one event at `now`.
    pub(crate) fn add(&self, now: u64) {
        let epoch = self.epoch(now);
        let word = &self.buckets[epoch as usize % self.buckets.len()];
        let mut current = word.load(Ordering::Relaxed);
        loop {
            let next = if current == EMPTY {
                pack(epoch, 1)
            } else {
                let (e, count) = unpack(current);
                // A caller with an older clock reading adds to the newer bucket rather
                // than wiping it.
                if e >= epoch {
                    pack(e, count.saturating_add(1))
                } else {
                    pack(epoch, 1)
                }
            };
            match word.compare_exchange_weak(current, next, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return,
                Err(actual) => current = actual,
            }
        }
    }

    /// Events in the window ending at `now`.
    pub(crate) fn sum(&self, now: u64) -> u32 {
        let epoch = self.epoch(now);
        let span = u32::try_from(self.buckets.len()).unwrap_or(u32::MAX);
        self.buckets.iter().fold(0u32, |sum, word| {
            let word = word.load(Ordering::Relaxed);
            if word == EMPTY {
                return sum;
            }
            let (e, count) = unpack(word);
            if e <= epoch && epoch - e < span {
                sum.saturating_add(count)
            } else {
                sum
            }
        })
    }

    pub(crate) fn reset(&self) {
        for word in &*self.buckets {
            word.store(EMPTY, Ordering::Relaxed);
        }
    }
}

fn pack(epoch: u32, count: u32) -> u64 {
    (u64::from(epoch) << 32) | u64::from(count)
}

fn unpack(word: u64) -> (u32, u32) {
    #[allow(clippy::cast_possible_truncation)]
    ((word >> 32) as u32, word as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn ages_buckets_out() {
        let c = RollingCounter::new(Duration::from_secs(10));
        c.add(0);
        c.add(SEC / 2);
        c.add(5 * SEC);
        assert_eq!(c.sum(5 * SEC), 3);
        assert_eq!(
            c.sum(10 * SEC + SEC / 2),
            1,
            "the t=0 bucket left the window"
        );
        c.add(20 * SEC);
        assert_eq!(c.sum(20 * SEC), 1, "a reused bucket starts from zero");
        c.reset();
        assert_eq!(c.sum(20 * SEC), 0);
    }

    #[test]
    fn counts_every_concurrent_event() {
        let c = Arc::new(RollingCounter::new(Duration::from_secs(60)));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let c = c.clone();
                std::thread::spawn(move || {
                    for i in 0..10_000u64 {
                        c.add(i * 1000);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(c.sum(0), 40_000);
    }
}
