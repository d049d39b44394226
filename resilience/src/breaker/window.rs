//! Lock-free sliding windows of call outcomes.
//!
//! Both windows record a call with a handful of atomic operations and no lock. A success
//! touches two atomics (count window) or one (time window); aggregates are only read
//! when a failure or slow call might have pushed a rate over its threshold.

use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use super::config::SlidingWindow;

/// Calls, failures and slow calls currently in the window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    pub(crate) calls: u32,
    pub(crate) failures: u32,
    pub(crate) slow: u32,
}

impl Counts {
    #[allow(clippy::cast_precision_loss)]
    pub(crate) fn failure_rate(&self) -> f64 {
        if self.calls == 0 {
            0.0
        } else {
            f64::from(self.failures) * 100.0 / f64::from(self.calls)
        }
    }

    pub(crate) fn slow_rate(&self) -> f64 {
        if self.calls == 0 {
            0.0
        } else {
            f64::from(self.slow) * 100.0 / f64::from(self.calls)
        }
    }
}

pub(crate) enum Window {
    Count(CountWindow),
    Time(TimeWindow),
}

impl Window {
    pub(crate) fn new(config: SlidingWindow) -> Self {
        match config {
            SlidingWindow::Count { size } => Window::Count(CountWindow::new(size)),
            SlidingWindow::Time { duration } => Window::Time(TimeWindow::new(duration)),
        }
    }

    /// Records one call at `now` (nanoseconds on the breaker's clock). Returns the counts
    /// when the call was a failure or slow, so the caller can judge the rates.
    pub(crate) fn record(&self, now: u64, failed: bool, slow: bool) -> Option<Counts> {
        match self {
            Window::Count(w) => w.record(failed, slow),
            Window::Time(w) => w.record(now, failed, slow),
        }
    }

    pub(crate) fn counts(&self, now: u64) -> Counts {
        match self {
            Window::Count(w) => w.counts(),
            Window::Time(w) => w.counts(now),
        }
    }

    pub(crate) fn reset(&self) {
        match self {
            Window::Count(w) => w.reset(),
            Window::Time(w) => w.reset(),
        }
    }
}

const RECORDED: u8 = 0b100;
const FAILED: u8 = 0b001;
const SLOW: u8 = 0b010;

/// A ring of the last `size` outcomes, one byte each, with running totals. Writers
/// `swap` their slot, so the totals always equal what the slots hold, however writers
/// interleave.
pub(crate) struct CountWindow {
    slots: Box<[AtomicU8]>,
    next: AtomicU64,
    calls: AtomicU32,
    failures: AtomicU32,
    slow: AtomicU32,
}

impl CountWindow {
    fn new(size: u32) -> Self {
        CountWindow {
            slots: (0..size.max(1)).map(|_| AtomicU8::new(0)).collect(),
            next: AtomicU64::new(0),
            calls: AtomicU32::new(0),
            failures: AtomicU32::new(0),
            slow: AtomicU32::new(0),
        }
    }

    fn record(&self, failed: bool, slow: bool) -> Option<Counts> {
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len() as u64;
        let new = RECORDED | if failed { FAILED } else { 0 } | if slow { SLOW } else { 0 };
        #[allow(clippy::cast_possible_truncation)]
        let old = self.slots[index as usize].swap(new, Ordering::AcqRel);
        if old & RECORDED == 0 {
            self.calls.fetch_add(1, Ordering::Relaxed);
        }
        adjust(&self.failures, old & FAILED != 0, failed);
        adjust(&self.slow, old & SLOW != 0, slow);
        (failed || slow).then(|| self.counts())
    }

    fn counts(&self) -> Counts {
        Counts {
            calls: self.calls.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            slow: self.slow.load(Ordering::Relaxed),
        }
    }

    fn reset(&self) {
        for slot in &*self.slots {
            let old = slot.swap(0, Ordering::AcqRel);
            if old & RECORDED != 0 {
                self.calls.fetch_sub(1, Ordering::Relaxed);
            }
            adjust(&self.failures, old & FAILED != 0, false);
            adjust(&self.slow, old & SLOW != 0, false);
        }
    }
}

fn adjust(total: &AtomicU32, was: bool, is: bool) {
    match (was, is) {
        (false, true) => {
            total.fetch_add(1, Ordering::Relaxed);
        }
        (true, false) => {
            total.fetch_sub(1, Ordering::Relaxed);
        }
        _ => {}
    }
}

/// Buckets of a fixed span; each counter is one `u64` holding the bucket's epoch in the
/// high half and its count in the low half, updated by compare-and-swap, so a bucket
/// that rolls over to a new epoch restarts from zero without a lock and without losing
/// a concurrent increment.
pub(crate) struct TimeWindow {
    buckets: Box<[Bucket]>,
    bucket_nanos: u64,
}

struct Bucket {
    calls: AtomicU64,
    failures: AtomicU64,
    slow: AtomicU64,
}

const EMPTY: u64 = u64::MAX;

impl TimeWindow {
    fn new(duration: Duration) -> Self {
        let count = duration.as_secs().clamp(1, 600);
        let bucket_nanos = u64::try_from(duration.as_nanos() / u128::from(count))
            .unwrap_or(u64::MAX)
            .max(1);
        TimeWindow {
            buckets: (0..count)
                .map(|_| Bucket {
                    calls: AtomicU64::new(EMPTY),
                    failures: AtomicU64::new(EMPTY),
                    slow: AtomicU64::new(EMPTY),
                })
                .collect(),
            bucket_nanos,
        }
    }

    fn epoch(&self, now: u64) -> u32 {
        u32::try_from(now / self.bucket_nanos).unwrap_or(u32::MAX - 1)
    }

    fn record(&self, now: u64, failed: bool, slow: bool) -> Option<Counts> {
        let epoch = self.epoch(now);
        let bucket = &self.buckets[epoch as usize % self.buckets.len()];
        bump(&bucket.calls, epoch);
        if failed {
            bump(&bucket.failures, epoch);
        }
        if slow {
            bump(&bucket.slow, epoch);
        }
        (failed || slow).then(|| self.counts(now))
    }

    fn counts(&self, now: u64) -> Counts {
        let epoch = self.epoch(now);
        let span = u32::try_from(self.buckets.len()).unwrap_or(u32::MAX);
        let live = |word: &AtomicU64| {
            let word = word.load(Ordering::Relaxed);
            if word == EMPTY {
                return 0;
            }
            let (e, count) = unpack(word);
            if e <= epoch && epoch - e < span {
                count
            } else {
                0
            }
        };
        self.buckets.iter().fold(Counts::default(), |mut c, b| {
            c.calls = c.calls.saturating_add(live(&b.calls));
            c.failures = c.failures.saturating_add(live(&b.failures));
            c.slow = c.slow.saturating_add(live(&b.slow));
            c
        })
    }

    fn reset(&self) {
        for bucket in &*self.buckets {
            bucket.calls.store(EMPTY, Ordering::Relaxed);
            bucket.failures.store(EMPTY, Ordering::Relaxed);
            bucket.slow.store(EMPTY, Ordering::Relaxed);
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

fn bump(word: &AtomicU64, epoch: u32) {
    let mut current = word.load(Ordering::Relaxed);
    loop {
        let next = if current == EMPTY {
            pack(epoch, 1)
        } else {
            let (e, count) = unpack(current);
            // A caller with an older clock reading adds to the newer bucket rather than
            // wiping it.
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn count_window_keeps_the_last_n() {
        let w = CountWindow::new(4);
        assert_eq!(w.record(true, false).unwrap().failures, 1);
        w.record(false, false);
        w.record(false, true);
        w.record(false, false);
        assert_eq!(
            w.counts(),
            Counts {
                calls: 4,
                failures: 1,
                slow: 1
            }
        );
        // The failure rolls out.
        w.record(false, false);
        assert_eq!(
            w.counts(),
            Counts {
                calls: 4,
                failures: 0,
                slow: 1
            }
        );
        w.reset();
        assert_eq!(w.counts(), Counts::default());
    }

    #[test]
    fn count_window_totals_match_slots_under_threads() {
        let w = Arc::new(CountWindow::new(64));
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let w = w.clone();
                std::thread::spawn(move || {
                    for i in 0..20_000u32 {
                        w.record((i + t) % 3 == 0, i % 5 == 0);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let from_slots = w.slots.iter().fold(Counts::default(), |mut c, s| {
            let v = s.load(Ordering::Relaxed);
            c.calls += u32::from(v & RECORDED != 0);
            c.failures += u32::from(v & FAILED != 0);
            c.slow += u32::from(v & SLOW != 0);
            c
        });
        assert_eq!(w.counts(), from_slots);
        assert_eq!(from_slots.calls, 64);
    }

    #[test]
    fn time_window_ages_buckets_out() {
        let w = TimeWindow::new(Duration::from_secs(10));
        w.record(0, true, false);
        w.record(SEC / 2, false, false);
        w.record(5 * SEC, false, true);
        assert_eq!(
            w.counts(5 * SEC),
            Counts {
                calls: 3,
                failures: 1,
                slow: 1
            }
        );
        // At t=10.5 s the bucket of t=0 s has left the 10 s window.
        assert_eq!(
            w.counts(10 * SEC + SEC / 2),
            Counts {
                calls: 1,
                failures: 0,
                slow: 1
            }
        );
        // A new call in the reused bucket starts it from zero.
        w.record(20 * SEC, false, false);
        assert_eq!(
            w.counts(20 * SEC),
            Counts {
                calls: 1,
                failures: 0,
                slow: 0
            }
        );
        w.reset();
        assert_eq!(w.counts(20 * SEC), Counts::default());
    }

    #[test]
    fn time_window_counts_every_concurrent_call() {
        let w = Arc::new(TimeWindow::new(Duration::from_secs(60)));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let w = w.clone();
                std::thread::spawn(move || {
                    for i in 0..10_000u64 {
                        w.record(i * 1000, i % 2 == 0, false);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(
            w.counts(0),
            Counts {
                calls: 40_000,
                failures: 20_000,
                slow: 0
            }
        );
    }
}
