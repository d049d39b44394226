//! Lock-free sliding windows of call outcomes.
//!
//! Both windows record a call with a handful of atomic operations and no lock. A success
//! touches two atomics (count window) or one (time window); aggregates are only read
//! when a failure or slow call might have pushed a rate over its threshold.

use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};

use crate::rolling::RollingCounter;
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

    /// Records one call; `now` (nanoseconds on the breaker's clock) is only read by the
    /// time window. Returns the counts when the call was a failure or slow, so the
    /// caller can judge the rates.
    #[inline]
    pub(crate) fn record(
        &self,
        now: impl FnOnce() -> u64,
        failed: bool,
        slow: bool,
    ) -> Option<Counts> {
        match self {
            Window::Count(w) => w.record(failed, slow),
            Window::Time(w) => w.record(now(), failed, slow),
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

    #[inline]
    fn record(&self, failed: bool, slow: bool) -> Option<Counts> {
        // A full window of successes stays a full window of successes whatever slot the
        // next success lands in: skip the write. Healthy traffic then only reads shared
        // memory, which costs a few loads and scales across cores. While any failure or
        // slow call is in the window every call takes the full path, so each one still
        // ages out after exactly `size` further calls.
        if !failed
            && !slow
            && self.failures.load(Ordering::Relaxed) == 0
            && self.slow.load(Ordering::Relaxed) == 0
            && self.calls.load(Ordering::Relaxed) as usize == self.slots.len()
        {
            return None;
        }
        self.record_slot(failed, slow)
    }

    fn record_slot(&self, failed: bool, slow: bool) -> Option<Counts> {
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

/// Three rolling counters: calls, failures, slow calls.
pub(crate) struct TimeWindow {
    calls: RollingCounter,
    failures: RollingCounter,
    slow: RollingCounter,
}

impl TimeWindow {
    fn new(duration: Duration) -> Self {
        TimeWindow {
            calls: RollingCounter::new(duration),
            failures: RollingCounter::new(duration),
            slow: RollingCounter::new(duration),
        }
    }

    fn record(&self, now: u64, failed: bool, slow: bool) -> Option<Counts> {
        self.calls.add(now);
        if failed {
            self.failures.add(now);
        }
        if slow {
            self.slow.add(now);
        }
        (failed || slow).then(|| self.counts(now))
    }

    fn counts(&self, now: u64) -> Counts {
        Counts {
            calls: self.calls.sum(now),
            failures: self.failures.sum(now),
            slow: self.slow.sum(now),
        }
    }

    fn reset(&self) {
        self.calls.reset();
        self.failures.reset();
        self.slow.reset();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    const SEC: u64 = 1_000_000_000;

    fn counts(calls: u32, failures: u32, slow: u32) -> Counts {
        Counts {
            calls,
            failures,
            slow,
        }
    }

    #[test]
    fn count_window_keeps_the_last_n() {
        let w = CountWindow::new(4);
        assert_eq!(w.record(true, false).unwrap().failures, 1);
        w.record(false, false);
        w.record(false, true);
        w.record(false, false);
        assert_eq!(w.counts(), counts(4, 1, 1));
        // The failure rolls out.
        w.record(false, false);
        assert_eq!(w.counts(), counts(4, 0, 1));
        w.reset();
        assert_eq!(w.counts(), Counts::default());
    }

    #[test]
    fn a_failure_ages_out_after_exactly_size_calls_even_after_skipped_successes() {
        let w = CountWindow::new(4);
        for _ in 0..100 {
            w.record(false, false); // full of successes: later ones are skipped
        }
        assert_eq!(w.record(true, false).unwrap().failures, 1);
        for _ in 0..3 {
            w.record(false, false);
            assert_eq!(w.counts().failures, 1, "still among the last 4 calls");
        }
        w.record(false, false);
        assert_eq!(w.counts(), counts(4, 0, 0));
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
    fn time_window_counts_each_kind() {
        let w = TimeWindow::new(Duration::from_secs(10));
        w.record(0, true, false);
        w.record(SEC, false, true);
        assert_eq!(w.record(2 * SEC, true, true), Some(counts(3, 2, 2)));
        assert_eq!(w.counts(11 * SEC), counts(1, 1, 1));
    }
}
