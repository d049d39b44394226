//! Loads: single flight, eager refresh, fail-safe, distributed loads, warming.

use super::*;

impl<V: Send + Sync + 'static> Cache<V> {
    /// The value of `key`, loading it with `loader` on a miss. Concurrent misses of one key
    /// share one load (and, with [`CacheBuilder::distributed_lock`], one load across
    /// instances). Uses the cache's default [`EntryOptions`]. An L1 hit completes on the
    /// first poll without allocating.
    ///
    /// The loader runs in its own task, so it must be `'static`: move what it needs into it.
    /// That task runs in the caller's `tracing` span (the span of the caller that started
    /// the load, when several share it), so the loader's logs carry the request's fields,
    /// the correlation id keel-observability records included. Task-local context (such
    /// as keel-observability's `RequestContext`) does not cross tasks by itself: wrap the
    /// loader's future with `keel_observability::in_current_context` when it reads it.
    ///
    /// # Errors
    /// The loader's error (shared by every caller of that load) when no stale value may
    /// be served; [`CacheError::Timeout`] after the hard timeout; [`CacheError::Absent`]
    /// when the key is cached as absent.
    #[inline]
    pub fn get_or_load<'a, F, Fut, E>(
        &'a self,
        key: &'a str,
        loader: F,
    ) -> impl Future<Output = Result<Arc<V>, CacheError>> + Send + 'a
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<V, E>> + Send + 'static,
        E: Into<BoxError> + 'static,
    {
        self.get_or_load_with(key, &self.inner.options, loader)
    }

    /// [`get_or_load`](Self::get_or_load) with options for this call.
    ///
    /// # Errors
    /// As [`get_or_load`](Self::get_or_load).
    #[inline]
    pub fn get_or_load_with<'a, F, Fut, E>(
        &'a self,
        key: &'a str,
        options: &EntryOptions,
        loader: F,
    ) -> impl Future<Output = Result<Arc<V>, CacheError>> + Send + 'a
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<V, E>> + Send + 'static,
        E: Into<BoxError> + 'static,
    {
        let load = move || -> Load<V> {
            async move { loader().await.map(Some).map_err(Into::into) }.boxed()
        };
        match self.lookup_or_load(key, options, load) {
            Ok(landed) => Either::Left(std::future::ready(
                landed.and_then(|v| v.ok_or(CacheError::Absent)),
            )),
            Err(waiting) => Either::Right(waiting.map(|landed| landed?.ok_or(CacheError::Absent))),
        }
    }

    /// For keys that may not exist: a loader answering `Ok(None)` caches "absent" for the
    /// options' [negative TTL](EntryOptions::negative_ttl) (if set), so a flood of requests
    /// for a missing id does not reach the source.
    ///
    /// # Errors
    /// As [`get_or_load`](Self::get_or_load), except that absence is `Ok(None)`.
    pub fn get_or_load_optional<'a, F, Fut, E>(
        &'a self,
        key: &'a str,
        loader: F,
    ) -> impl Future<Output = Result<Option<Arc<V>>, CacheError>> + Send + 'a
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Option<V>, E>> + Send + 'static,
        E: Into<BoxError> + 'static,
    {
        self.get_or_load_optional_with(key, &self.inner.options, loader)
    }

    /// [`get_or_load_optional`](Self::get_or_load_optional) with options for this call.
    ///
    /// # Errors
    /// As [`get_or_load_optional`](Self::get_or_load_optional).
    pub fn get_or_load_optional_with<'a, F, Fut, E>(
        &'a self,
        key: &'a str,
        options: &EntryOptions,
        loader: F,
    ) -> impl Future<Output = Result<Option<Arc<V>>, CacheError>> + Send + 'a
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Option<V>, E>> + Send + 'static,
        E: Into<BoxError> + 'static,
    {
        let load = move || -> Load<V> { async move { loader().await.map_err(Into::into) }.boxed() };
        match self.lookup_or_load(key, options, load) {
            Ok(landed) => Either::Left(std::future::ready(landed)),
            Err(waiting) => Either::Right(waiting),
        }
    }

    /// The L1 check happens here, synchronously: `Ok` is the answer from L1; only a miss
    /// builds (and boxes) the future that waits for the load.
    #[inline]
    fn lookup_or_load(
        &self,
        key: &str,
        options: &EntryOptions,
        load: impl FnOnce() -> Load<V>,
    ) -> Result<Landed<V>, BoxFuture<'static, Landed<V>>> {
        let now = self.inner.clock.now_ms();
        match self.inner.l1.get(key) {
            Some(entry) if entry.is_fresh(now) && entry.deadlines.refresh_at > now => {
                self.inner.stats.l1_hit();
                Ok(Ok(entry.value))
            }
            found => self.refresh_or_load(key, options, load, found.is_some(), now),
        }
    }

    /// The rest of [`lookup_or_load`](Self::lookup_or_load), kept out of line.
    #[inline(never)]
    fn refresh_or_load(
        &self,
        key: &str,
        options: &EntryOptions,
        load: impl FnOnce() -> Load<V>,
        found: bool,
        now: u64,
    ) -> Result<Landed<V>, BoxFuture<'static, Landed<V>>> {
        // Note the key's changes, then look again: a change that landed since the lookup
        // is either seen in this second look or noted by the load (a change marks both
        // before and after it touches L1), so an invalidated entry never becomes the
        // load's fallback.
        let seen = self.inner.changes.seen(key);
        let found = if found { self.inner.l1.get(key) } else { None };
        let mut stale = None;
        if let Some(entry) = found {
            if entry.is_fresh(now) {
                self.inner.stats.l1_hit();
                // Stale-while-revalidate: answer now, reload in the background (or leave
                // the load already running alone: `start` joins it).
                drop(self.start(key, options, load, Some(entry.clone()), true, seen));
                return Ok(Ok(entry.value));
            }
            if entry.is_servable(now) {
                stale = Some(entry);
            }
        }
        self.inner.stats.l1_miss();
        let flight = self.start(key, options, load, stale.clone(), false, seen);
        let limit = match (&stale, options.soft_timeout, options.hard_timeout) {
            (Some(_), Some(soft), Some(hard)) => Some(soft.min(hard)),
            (Some(_), Some(soft), None) => Some(soft),
            (_, _, hard) => hard,
        };
        // The stale value answers a soft timeout only while nothing overwrote or
        // invalidated the key.
        let stale = stale.map(|entry| Stale {
            entry,
            inner: self.inner.clone(),
            key: Arc::from(key),
            seen,
        });
        Err(wait(
            flight,
            stale,
            limit,
            options.hard_timeout,
            self.inner.stats.clone(),
        )
        .boxed())
    }

    /// Joins the running load of `key` or starts one in its own task.
    fn start(
        &self,
        key: &str,
        options: &EntryOptions,
        load: impl FnOnce() -> Load<V>,
        stale: Option<Entry<V>>,
        refresh: bool,
        seen: Seen,
    ) -> SharedLoad<V> {
        self.inner
            .flights
            .join_or_start(key, &options.tags, |ticket| {
                let inner = self.inner.clone();
                let key: Arc<str> = Arc::from(key);
                let options = options.clone();
                // In the caller's tracing span (and with it the correlation id that
                // keel-observability's layer records on it): the loader's logs keep
                // the request they serve.
                let task = tokio::spawn(tracing::Instrument::in_current_span(Inner::load(
                    inner,
                    key,
                    options,
                    load(),
                    stale,
                    refresh,
                    ticket,
                    seen,
                )));
                async move { task.await.unwrap_or(Err(CacheError::LoaderPanicked)) }.boxed()
            })
    }

    /// Loads `keys` ahead of traffic, `concurrency` at a time: each is taken from L2 if
    /// there, else from `loader`. Returns how many are now cached and how many failed.
    pub async fn warm<I, F, Fut, E>(&self, keys: I, concurrency: usize, loader: F) -> Warmed
    where
        I: IntoIterator<Item = String>,
        F: Fn(String) -> Fut + Clone + Send + 'static,
        Fut: Future<Output = Result<V, E>> + Send + 'static,
        E: Into<BoxError> + 'static,
    {
        use futures_util::StreamExt as _;
        let results = futures_util::stream::iter(keys)
            .map(|key| {
                let loader = loader.clone();
                async move {
                    let k = key.clone();
                    self.get_or_load(&key, move || loader(k)).await.is_ok()
                }
            })
            .buffer_unordered(concurrency.max(1))
            .collect::<Vec<bool>>()
            .await;
        let loaded = results.iter().filter(|ok| **ok).count();
        Warmed {
            loaded,
            failed: results.len() - loaded,
        }
    }
}

/// A stale entry a caller may fall back to, and how to tell it is still the key's.
struct Stale<V: Send + Sync + 'static> {
    entry: Entry<V>,
    inner: Arc<Inner<V>>,
    key: Arc<str>,
    seen: Seen,
}

/// Waits for a load within the soft/hard limit, falling back to `stale` (unless the key
/// changed since).
async fn wait<V: Send + Sync + 'static>(
    flight: SharedLoad<V>,
    stale: Option<Stale<V>>,
    limit: Option<Duration>,
    hard: Option<Duration>,
    stats: Arc<Stats>,
) -> Landed<V> {
    let Some(limit) = limit else {
        return flight.await;
    };
    let mut flight = flight;
    match with_timeout(limit, &mut flight).await {
        Ok(landed) => landed,
        Err(_) => match stale {
            Some(stale) => {
                let tagged = !stale.entry.tags.is_empty();
                if stale
                    .inner
                    .changes
                    .unchanged(&stale.key, stale.seen, tagged)
                {
                    stats.stale_served();
                    return Ok(stale.entry.value);
                }
                // The key changed since the call began: its stale value is no answer.
                // Wait for the load, up to the hard limit if there is one.
                match hard {
                    None => flight.await,
                    Some(hard) => match with_timeout(hard.saturating_sub(limit), flight).await {
                        Ok(landed) => landed,
                        Err(_) => Err(CacheError::Timeout { after: hard }),
                    },
                }
            }
            None => Err(CacheError::Timeout { after: limit }),
        },
    }
}

/// What [`Cache::warm`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Warmed {
    /// Keys now cached.
    pub loaded: usize,
    /// Keys whose load failed.
    pub failed: usize,
}

impl<V: Send + Sync + 'static> Inner<V> {
    /// One load, in its own task: L2 first, then (optionally) the distributed lock, then
    /// the loader; fail-safe on failure.
    #[cfg_attr(
        not(feature = "redis"),
        allow(unused_mut, unused_variables, clippy::redundant_clone)
    )]
    #[allow(clippy::too_many_arguments)]
    async fn load(
        self: Arc<Self>,
        key: Arc<str>,
        options: EntryOptions,
        load: Load<V>,
        mut stale: Option<Entry<V>>,
        refresh: bool,
        ticket: Ticket,
        seen: Seen,
    ) -> Landed<V> {
        let _landing = Landing {
            inner: &self,
            key: &key,
            id: ticket.id,
        };
        // Fills of this load's own result: a change of the key poisons the load (and the
        // write's second round, after its L2 step, catches a fill that came first), so
        // unrelated changes never cost a load its caching.
        let cacheable = || !ticket.poisoned.load(Ordering::Acquire);
        // An entry found in L2 may carry tags this load was not started with: a tag
        // invalidation since the load began also stops its fill (it costs an L2 read).
        let (inner, this_key) = (&*self, &*key);
        let from_l2 =
            |tagged: bool| move || cacheable() && (!tagged || inner.changes.tags_unchanged(seen));
        // The caller's stale entry was read before the load existed: only a key that did
        // not change since the lookup noted it may fall back on it.
        let current =
            |tagged: bool| move || cacheable() && inner.changes.unchanged(this_key, seen, tagged);
        #[cfg(feature = "redis")]
        let mut lock = None;
        #[cfg(feature = "redis")]
        let mut snapshot = None;
        #[cfg(feature = "redis")]
        if let Some(remote) = &self.remote {
            let now = self.clock.now_ms();
            let found = match remote.read_for_load(&key, &options.tags).await {
                Ok((found, taken)) => {
                    if taken.tombstoned {
                        // Invalidated since the caller's entry was read: no fail-safe.
                        stale = None;
                    }
                    snapshot = Some(taken);
                    found
                }
                Err(_) => None,
            };
            match found {
                Some(found) if usable(&found, now, refresh) => {
                    self.stats.l2_hit();
                    self.fill(&key, found.clone(), from_l2(!found.tags.is_empty()));
                    return Ok(found.value);
                }
                Some(found) => {
                    if found.is_servable(now)
                        && stale.as_ref().is_none_or(|s| s.version < found.version)
                    {
                        stale = Some(found);
                    }
                    self.stats.l2_miss();
                }
                None => self.stats.l2_miss(),
            }
            match remote.lock_or_wait(&key, &*self.clock, refresh).await {
                crate::remote::LockStep::Found(found) => {
                    self.fill(&key, found.clone(), from_l2(!found.tags.is_empty()));
                    return Ok(found.value);
                }
                crate::remote::LockStep::Held(held) => lock = Some(held),
                crate::remote::LockStep::Proceed => {}
            }
        }
        // Versions that reach L2 are minted by Redis: the snapshot's, when there is one.
        #[cfg(feature = "redis")]
        let version = snapshot
            .as_ref()
            .map_or_else(|| self.versions.next(&*self.clock), |s| s.version);
        #[cfg(not(feature = "redis"))]
        let version = self.versions.next(&*self.clock);
        let started = Instant::now();
        let result = load.await;
        self.stats.load(result.is_ok(), started.elapsed());
        let now = self.clock.now_ms();
        let landed = match result {
            Ok(value) => {
                let negative = value.is_none();
                if negative && options.negative_ttl.is_none() {
                    Ok(None)
                } else {
                    let entry = Entry {
                        value: value.map(Arc::new),
                        version,
                        deadlines: options.deadlines(now, negative),
                        tags: Tags::from(&options.tags),
                    };
                    if cacheable() {
                        self.fill(&key, entry.clone(), cacheable);
                        // Best effort: the value is served from L1 either way. Only with a
                        // snapshot, so it cannot land over a change made during the load.
                        #[cfg(feature = "redis")]
                        if let (Some(remote), Some(snapshot)) = (&self.remote, &snapshot) {
                            let _ = remote.fill(&key, &entry, snapshot, &cacheable).await;
                        }
                    }
                    Ok(entry.value.clone())
                }
            }
            // An invalidated or overwritten value is never served as fail-safe.
            Err(error) => {
                match stale.filter(|s| s.is_servable(now) && current(!s.tags.is_empty())()) {
                    Some(stale) => {
                        tracing::warn!(cache = %self.name, error = %error, "loader failed; serving the last good value (fail-safe)");
                        self.stats.stale_served();
                        if cacheable() {
                            let retry_at = now
                                .saturating_add(crate::options::millis(options.fail_safe_throttle));
                            let fresh_until = stale
                                .deadlines
                                .fresh_until
                                .max(retry_at.min(stale.deadlines.stale_until));
                            let throttled = stale.with_deadlines(Deadlines {
                                fresh_until,
                                refresh_at: stale.deadlines.refresh_at.max(retry_at),
                                stale_until: stale.deadlines.stale_until,
                            });
                            let tagged = !throttled.tags.is_empty();
                            self.fill(&key, throttled, current(tagged));
                        }
                        Ok(stale.value)
                    }
                    None => Err(CacheError::loader(error)),
                }
            }
        };
        #[cfg(feature = "redis")]
        if let (Some(remote), Some(held)) = (&self.remote, lock) {
            remote.unlock(held).await;
        }
        landed
    }
}

/// Whether an entry found in L2 answers a load (for a refresh: it must not itself be due).
#[cfg(feature = "redis")]
fn usable<V>(entry: &Entry<V>, now: u64, refresh: bool) -> bool {
    entry.is_fresh(now) && (!refresh || entry.deadlines.refresh_at > now)
}

/// Removes a flight from the map when its task ends, even by panic.
struct Landing<'a, V: Send + Sync + 'static> {
    inner: &'a Inner<V>,
    key: &'a str,
    id: u64,
}

impl<V: Send + Sync + 'static> Drop for Landing<'_, V> {
    fn drop(&mut self) {
        self.inner.flights.land(self.key, self.id);
    }
}
