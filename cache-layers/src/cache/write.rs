//! Writes: insert, write-behind, invalidation, clearing.

use super::*;

impl<V: Send + Sync + 'static> Cache<V> {
    /// Stores a value (write-through): in L1 at once, and in L2 before returning, then
    /// tells the other instances to drop their copy. Uses the default options.
    ///
    /// # Errors
    /// [`CacheError::L2Unavailable`] when L2 could not be written or the others not told
    /// (L1 holds the value all the same; the key is kept pending, and when Redis answers
    /// its L2 copy is dropped and the others are told); [`CacheError::Encode`] when the
    /// codec failed.
    pub async fn insert(&self, key: &str, value: V) -> Result<(), CacheError> {
        let options = self.inner.options.clone();
        self.insert_with(key, value, &options).await
    }

    /// [`insert`](Self::insert) with options for this entry (TTL, tags...).
    ///
    /// # Errors
    /// As [`insert`](Self::insert).
    pub async fn insert_with(
        &self,
        key: &str,
        value: V,
        options: &EntryOptions,
    ) -> Result<(), CacheError> {
        #[cfg_attr(not(feature = "redis"), allow(unused_mut))]
        let mut entry = self.inner.store_locally(key, value, options);
        #[cfg(feature = "redis")]
        if let Some(remote) = &self.inner.remote {
            remote.after_write_behind(Some(key), None).await;
            let written = remote.write(key, &entry).await;
            if let Ok(version) = written {
                entry.version = version;
            }
            // A read of L2 that began before the write landed there may have filled L1
            // meanwhile (this instance skips its own announcement): put the write back.
            // Pending first, so a read that missed this second round is kept off L2.
            self.inner.keep_pending(&written, |p| p.key(key));
            self.inner.put_back(key, &entry);
            written?;
        }
        #[cfg(not(feature = "redis"))]
        drop(entry);
        Ok(())
    }

    /// Stores a value in L1 at once and queues its L2 write (write-behind). The queue is
    /// bounded ([`CacheBuilder::write_behind_capacity`]): when full, this waits for room. Writes of
    /// one key reach L2 in the order they were made; [`flush`](Self::flush) and
    /// [`shutdown`](Self::shutdown) wait for the queue to drain. Without an L2 this is a
    /// plain L1 insert.
    ///
    /// # Errors
    /// [`CacheError::ShutDown`] after [`shutdown`](Self::shutdown).
    pub async fn insert_behind(&self, key: &str, value: V) -> Result<(), CacheError> {
        let options = self.inner.options.clone();
        let entry = self.inner.store_locally(key, value, &options);
        #[cfg(feature = "redis")]
        if let Some(remote) = &self.inner.remote {
            return remote.queue(Arc::from(key), entry).await;
        }
        #[cfg(not(feature = "redis"))]
        drop(entry);
        Ok(())
    }

    /// Waits until every write queued by [`insert_behind`](Self::insert_behind) before
    /// this call is in L2, or `within` passes.
    ///
    /// # Errors
    /// [`CacheError::Unflushed`] when the deadline passed first.
    pub async fn flush(&self, within: Duration) -> Result<(), CacheError> {
        #[cfg(feature = "redis")]
        if let Some(remote) = &self.inner.remote {
            return remote.flush(within).await;
        }
        let _ = within;
        Ok(())
    }

    /// Flushes the write-behind queue (within `within`), then stops the backplane. Other
    /// clones of this cache keep L1 but no longer write behind. Writes still queued when
    /// `within` passes are tried once more and, when that fails too, go to the
    /// dead-letter queue set with [`CacheBuilder::dead_letters`](crate::CacheBuilder::dead_letters)
    /// (this waits up to `within` again for that), or are dropped with an error logged.
    ///
    /// # Errors
    /// [`CacheError::Unflushed`] with the number of writes that could not be made.
    pub async fn shutdown(&self, within: Duration) -> Result<(), CacheError> {
        #[cfg(feature = "redis")]
        if let Some(remote) = &self.inner.remote {
            let flushed = remote.close(within).await;
            remote.backplane.stop();
            return flushed;
        }
        let _ = within;
        Ok(())
    }

    /// Drops `key` from this instance's L1 only: L2 and the other instances keep it, and
    /// the next read here comes from L2. For memory pressure, or to make one instance
    /// re-read a value.
    pub fn evict_local(&self, key: &str) {
        self.inner.l1.invalidate(key);
    }

    /// Drops `key` here and in L2 (a versioned tombstone, so a load that read the old value
    /// before this call cannot write it back), and tells the other instances to drop it.
    ///
    /// # Errors
    /// [`CacheError::L2Unavailable`]: dropped here only for now; kept pending and applied
    /// to L2 and the other instances when Redis answers.
    pub async fn invalidate(&self, key: &str) -> Result<(), CacheError> {
        self.inner.drop_key_locally(key);
        #[cfg(feature = "redis")]
        if let Some(remote) = &self.inner.remote {
            remote.after_write_behind(Some(key), None).await;
            let dropped = remote.tombstone(key).await;
            // A read of L2 that began before the tombstone landed may have filled L1
            // meanwhile (this instance skips its own announcement): drop it again.
            // Pending first, so a read that missed this second round is kept off L2.
            self.inner.keep_pending(&dropped, |p| p.key(key));
            self.inner.drop_key_locally(key);
            dropped?;
        }
        Ok(())
    }

    /// Drops every entry written with `tag`, here, in L2 and on the other instances.
    ///
    /// # Errors
    /// [`CacheError::L2Unavailable`]: dropped here only for now; kept pending and applied
    /// when Redis answers.
    pub async fn invalidate_tag(&self, tag: &str) -> Result<(), CacheError> {
        self.inner.drop_tag_locally(tag);
        #[cfg(feature = "redis")]
        if let Some(remote) = &self.inner.remote {
            remote.after_write_behind(None, Some(tag)).await;
            let dropped = remote.tombstone_tag(tag).await;
            // Reads of L2 that began before the tombstones landed: drop again.
            self.inner.keep_pending(&dropped, |p| p.tag(tag));
            self.inner.drop_tag_locally(tag);
            dropped?;
        }
        Ok(())
    }

    /// Drops everything: L1 here and on the other instances, and L2 (by moving the
    /// namespace to a new generation: old keys are never scanned, they expire).
    ///
    /// # Errors
    /// [`CacheError::L2Unavailable`]: cleared here only for now; kept pending and applied
    /// (a new generation, announced) when Redis answers.
    pub async fn clear(&self) -> Result<(), CacheError> {
        #[cfg(feature = "redis")]
        self.inner.supersede(Remote::supersede_all);
        self.inner.drop_all_locally();
        #[cfg(feature = "redis")]
        if let Some(remote) = &self.inner.remote {
            remote.after_write_behind(None, None).await;
            let cleared = remote.backplane.publish(Kind::Clear, "").await;
            let cleared = cleared.map_err(CacheError::from);
            self.inner.keep_pending(&cleared, |p| {
                p.clear();
                crate::pending::Added::Kept
            });
            // Reads of the old generation that began before it moved: drop again.
            self.inner.drop_all_locally();
            cleared?;
        }
        Ok(())
    }
}
