//! Reads: L1, then L2.

use super::*;

impl<V: Send + Sync + 'static> Cache<V> {
    /// The fresh value in L1, without touching L2 or awaiting. The fastest read there is.
    #[inline]
    #[must_use]
    pub fn peek(&self, key: &str) -> Option<Arc<V>> {
        self.fresh_in_l1(key).flatten()
    }

    /// `Some(value)` for a fresh L1 entry (`Some(None)`: cached as absent), counted as a hit.
    #[inline]
    fn fresh_in_l1(&self, key: &str) -> Option<Option<Arc<V>>> {
        let entry = self.inner.l1.get(key)?;
        if entry.is_fresh(self.inner.clock.now_ms()) {
            self.inner.stats.l1_hit();
            Some(entry.value)
        } else {
            None
        }
    }

    /// The fresh value of `key` from L1, else from L2 (then kept in L1). `None` when
    /// neither has it, or it is cached as absent.
    ///
    /// An L1 hit completes on the first poll without allocating.
    #[inline]
    pub fn get<'a>(&'a self, key: &'a str) -> impl Future<Output = Option<Arc<V>>> + Send + 'a {
        match self.fresh_in_l1(key) {
            Some(value) => Either::Left(std::future::ready(value)),
            None => {
                self.inner.stats.l1_miss();
                Either::Right(Box::pin(self.get_from_l2(key)))
            }
        }
    }

    #[cfg_attr(not(feature = "redis"), allow(clippy::unused_async))]
    async fn get_from_l2(&self, key: &str) -> Option<Arc<V>> {
        #[cfg(feature = "redis")]
        if let Some(remote) = &self.inner.remote {
            let now = self.inner.clock.now_ms();
            let seen = self.inner.changes.seen(key);
            if let Some(entry) = remote.read(key).await
                && entry.is_fresh(now)
            {
                self.inner.stats.l2_hit();
                let value = entry.value.clone();
                let tagged = !entry.tags.is_empty();
                self.inner.fill(key, entry, || {
                    self.inner.changes.unchanged(key, seen, tagged)
                });
                return value;
            }
            self.inner.stats.l2_miss();
        }
        let _ = key;
        None
    }
}
