//! Changes made while L2 was unreachable, kept until Redis answers again.
//!
//! An `insert`, `invalidate`, `invalidate_tag` or `clear` whose L2 step failed is applied
//! to this instance's L1 only. Redis may come back *with its data* (persistence, a
//! promoted replica), still holding the old value, and the other instances never heard
//! of the change. So the change is kept here: until it is applied, this instance does
//! not read the key (the tag's entries, or anything, for a clear) from L2, and the
//! backplane applies it to L2 and announces it to the others as soon as Redis answers.
//! An insert is kept as an invalidation of its key (its value stays in this instance's
//! L1; the others load theirs from the source).
//!
//! Bounded: past [`MAX_PENDING`] keys and tags, the set turns into one pending `clear`
//! (every instance drops everything once Redis answers), and this instance drops its
//! L1: never an unbounded queue, never a change forgotten.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// The most keys and tags kept before the set turns into a pending `clear`.
pub(crate) const MAX_PENDING: usize = 10_000;

/// What one replay has to apply. Each item carries the mark it was added with, so one
/// re-added while it was being applied stays pending.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    pub(crate) clear: Option<u64>,
    pub(crate) tags: Vec<(String, u64)>,
    pub(crate) keys: Vec<(String, u64)>,
}

#[derive(Debug, Default)]
struct State {
    clear: Option<u64>,
    tags: HashMap<String, u64>,
    keys: HashMap<String, u64>,
}

#[derive(Debug, Default)]
pub(crate) struct Pending {
    state: Mutex<State>,
    any: AtomicBool,
    marks: AtomicU64,
}

/// What adding a change did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Added {
    Kept,
    /// The set was full and is now one pending `clear`: drop L1.
    Overflowed,
}

impl Pending {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn mark(&self) -> u64 {
        self.marks.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub(crate) fn key(&self, key: &str) -> Added {
        let mark = self.mark();
        let mut state = self.lock();
        self.any.store(true, Ordering::Release);
        if state.clear.is_some() {
            // A pending clear covers it; a newer mark keeps the clear from being taken
            // as done by a replay that began before this change.
            state.clear = Some(mark);
            return Added::Kept;
        }
        state.keys.insert(key.to_owned(), mark);
        Self::bound(&mut state, mark)
    }

    pub(crate) fn tag(&self, tag: &str) -> Added {
        let mark = self.mark();
        let mut state = self.lock();
        self.any.store(true, Ordering::Release);
        if state.clear.is_some() {
            state.clear = Some(mark);
            return Added::Kept;
        }
        state.tags.insert(tag.to_owned(), mark);
        Self::bound(&mut state, mark)
    }

    pub(crate) fn clear(&self) {
        let mark = self.mark();
        let mut state = self.lock();
        self.any.store(true, Ordering::Release);
        state.clear = Some(mark);
        // Keys and tags stay: a clear moves L2 to a new generation, but one kept
        // invalidation more does no harm and keeps the reads of them off L2 meanwhile.
    }

    fn bound(state: &mut State, mark: u64) -> Added {
        if state.keys.len() + state.tags.len() <= MAX_PENDING {
            return Added::Kept;
        }
        state.keys.clear();
        state.tags.clear();
        state.clear = Some(mark);
        Added::Overflowed
    }

    /// How many changes wait (a pending clear counts as one).
    pub(crate) fn len(&self) -> usize {
        if !self.any.load(Ordering::Acquire) {
            return 0;
        }
        let state = self.lock();
        state.keys.len() + state.tags.len() + usize::from(state.clear.is_some())
    }

    /// Whether reads of `key` must keep off L2 (it, or everything, has a change pending).
    #[inline]
    pub(crate) fn blocks(&self, key: &str) -> bool {
        if !self.any.load(Ordering::Acquire) {
            return false;
        }
        let state = self.lock();
        state.clear.is_some() || state.keys.contains_key(key)
    }

    /// Whether an entry with `tags` must not be served from L2.
    pub(crate) fn blocks_tags<T: AsRef<str>>(&self, tags: &[T]) -> bool {
        if tags.is_empty() || !self.any.load(Ordering::Acquire) {
            return false;
        }
        let state = self.lock();
        tags.iter().any(|t| state.tags.contains_key(t.as_ref()))
    }

    /// What to apply now (empty when nothing waits).
    pub(crate) fn batch(&self) -> Option<Batch> {
        if !self.any.load(Ordering::Acquire) {
            return None;
        }
        let state = self.lock();
        Some(Batch {
            clear: state.clear,
            tags: state.tags.iter().map(|(t, m)| (t.clone(), *m)).collect(),
            keys: state.keys.iter().map(|(k, m)| (k.clone(), *m)).collect(),
        })
    }

    pub(crate) fn cleared(&self, mark: u64) {
        let mut state = self.lock();
        if state.clear == Some(mark) {
            state.clear = None;
        }
        self.settle(&state);
    }

    pub(crate) fn tag_done(&self, tag: &str, mark: u64) {
        let mut state = self.lock();
        if state.tags.get(tag) == Some(&mark) {
            state.tags.remove(tag);
        }
        self.settle(&state);
    }

    pub(crate) fn key_done(&self, key: &str, mark: u64) {
        let mut state = self.lock();
        if state.keys.get(key) == Some(&mark) {
            state.keys.remove(key);
        }
        self.settle(&state);
    }

    fn settle(&self, state: &State) {
        if state.clear.is_none() && state.keys.is_empty() && state.tags.is_empty() {
            self.any.store(false, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_re_added_during_its_replay_stays_pending() {
        let pending = Pending::default();
        assert!(!pending.blocks("k"));
        assert_eq!(pending.key("k"), Added::Kept);
        assert!(pending.blocks("k") && !pending.blocks("j"));
        let batch = pending.batch().unwrap();
        pending.key("k");
        pending.key_done("k", batch.keys[0].1);
        assert!(pending.blocks("k"), "the newer change is still pending");
        let batch = pending.batch().unwrap();
        pending.key_done("k", batch.keys[0].1);
        assert!(!pending.blocks("k"));
        assert_eq!(pending.len(), 0);
    }

    #[test]
    fn too_many_changes_turn_into_one_clear() {
        let pending = Pending::default();
        pending.tag("t");
        assert!(pending.blocks_tags(&["t"]) && !pending.blocks_tags(&["u"]));
        let mut overflowed = false;
        for i in 0..=MAX_PENDING {
            overflowed |= pending.key(&format!("k{i}")) == Added::Overflowed;
        }
        assert!(overflowed);
        assert_eq!(pending.len(), 1, "one pending clear");
        assert!(pending.blocks("anything"));
        let batch = pending.batch().unwrap();
        pending.cleared(batch.clear.unwrap());
        assert!(!pending.blocks("anything"));
    }
}
