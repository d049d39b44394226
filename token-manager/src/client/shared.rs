//! One token per key for every instance of a service, through Redis.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use keel_resilience::ErrorClass;
use keel_resilience::timeout::with_timeout;
use redis::{Script, Value};
use tokio::time::Instant;
use tracing::Instrument as _;

use super::cache::RefreshPolicy;
use super::{AccessToken, TokenError, TokenFuture, TokenProvider, TokenRequest};
use crate::SealingKeys;
use crate::redis_store::Connection;

const PROVIDER: &str = "shared token cache";
/// The largest sealed record read back (a token is a few KiB).
const MAX_RECORD: usize = 64 * 1024;

/// The key's epoch (`<p>{<h>}:e`): raised by every challenge answer and every
/// `forget`, kept two days after its last change, well past any refresh in flight. A
/// write lands only if the epoch is still the one its writer read when it began, so a
/// refresh that began before a challenge answer or a `forget` never undoes it, even when
/// the record expired in between. A value that is not a small non-negative integer
/// counts as 0 and is reset.
const EPOCH_FN: &str = r"
local function epoch(key)
  local e = tonumber(redis.call('GET', key) or '0')
  if not e or e < 0 or e > 4503599627370496 or e ~= math.floor(e) then
    redis.call('DEL', key)
    return 0
  end
  return e
end
local EPOCH_TTL = 172800000
";

/// Reads the key's record against the Redis clock of its node and, when it is not
/// fresh, takes the refresh lock if asked. A key of another type under our name is
/// deleted; an oversized sealed value is returned empty (so it does not open and is
/// replaced). KEYS: record, lock, epoch. ARGV: owner, lock ms, whether to lock, the
/// largest sealed value. Returns `{state, now, epoch}` or
/// `{state, now, epoch, exp, ref, sealed}` where state is `fresh`, `locked` (this
/// caller refreshes) or `wait`.
const READ_OR_LOCK: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind ~= 'hash' and kind ~= 'none' then redis.call('DEL', KEYS[1]) end
kind = redis.call('TYPE', KEYS[2])['ok']
if kind ~= 'string' and kind ~= 'none' then redis.call('DEL', KEYS[2]) end
kind = redis.call('TYPE', KEYS[3])['ok']
if kind ~= 'string' and kind ~= 'none' then redis.call('DEL', KEYS[3]) end
local e = string.format('%d', epoch(KEYS[3]))
local r = redis.call('HMGET', KEYS[1], 'exp', 'ref', 'sealed')
local exp, ref = tonumber(r[1]), tonumber(r[2])
local nows = string.format('%d', now)
local sealed = r[3]
if sealed and string.len(sealed) > tonumber(ARGV[4]) then sealed = '' end
if exp and ref and sealed and exp > now and ref > now then
  return {'fresh', nows, e, r[1], r[2], sealed}
end
local state = 'wait'
if ARGV[3] == '1' and redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
  state = 'locked'
end
if exp and ref and sealed and exp > now then
  return {state, nows, e, r[1], r[2], sealed}
end
return {state, nows, e}
";

/// Stores a sealed token if the epoch is still the one the writer read, then frees the
/// lock if this caller holds it. Modes: `plain` (a refresh: not over a token expiring
/// later), `replace` (the record could not be opened), `challenge` (a challenge's
/// answer: raises the epoch). When it does not write, returns the record that stays.
/// KEYS: record, lock, epoch. ARGV: owner, exp, ref, sealed, mode, epoch as read.
/// Returns `{1}` or `{0}` or `{0, exp, ref, sealed}`.
const WRITE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local exp = tonumber(ARGV[2])
if redis.call('TYPE', KEYS[1])['ok'] ~= 'hash' then redis.call('DEL', KEYS[1]) end
if redis.call('TYPE', KEYS[3])['ok'] ~= 'string' then redis.call('DEL', KEYS[3]) end
local e = epoch(KEYS[3])
local stored = tonumber(redis.call('HGET', KEYS[1], 'exp'))
local mode = ARGV[5]
local ok = e == (tonumber(ARGV[6]) or -1) and exp > now
if ok and mode == 'plain' then ok = not stored or stored <= exp end
if redis.call('GET', KEYS[2]) == ARGV[1] then redis.call('DEL', KEYS[2]) end
if ok then
  if mode == 'challenge' then
    redis.call('SET', KEYS[3], string.format('%d', e + 1), 'PX', EPOCH_TTL)
  end
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[1], 'exp', ARGV[2], 'ref', ARGV[3], 'sealed', ARGV[4])
  redis.call('PEXPIREAT', KEYS[1], exp)
  return {1}
end
local r = redis.call('HMGET', KEYS[1], 'exp', 'ref', 'sealed')
if r[1] and r[2] and r[3] then return {0, r[1], r[2], r[3]} end
return {0}
";

/// Forgets a key's record and lock, and raises its epoch so that no refresh in flight
/// writes the forgotten kind back. KEYS: record, lock, epoch.
const FORGET: &str = r"
if redis.call('TYPE', KEYS[3])['ok'] ~= 'string' then redis.call('DEL', KEYS[3]) end
local e = epoch(KEYS[3])
redis.call('SET', KEYS[3], string.format('%d', e + 1), 'PX', EPOCH_TTL)
redis.call('DEL', KEYS[1])
redis.call('DEL', KEYS[2])
return 1
";

/// Keeps the lock of a failed refresh (a backoff shared by the instances) no longer
/// than the still-valid token lives. KEYS: lock. ARGV: owner, ms.
const SHORTEN: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
";

/// Frees the lock if this caller holds it. KEYS: lock. ARGV: owner.
const UNLOCK: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

struct Scripts {
    read_or_lock: Script,
    write: Script,
    unlock: Script,
    forget: Script,
    shorten: Script,
}

fn scripts() -> &'static Scripts {
    static SCRIPTS: std::sync::OnceLock<Scripts> = std::sync::OnceLock::new();
    SCRIPTS.get_or_init(|| Scripts {
        read_or_lock: Script::new(&format!("{EPOCH_FN}{READ_OR_LOCK}")),
        write: Script::new(&format!("{EPOCH_FN}{WRITE}")),
        unlock: Script::new(UNLOCK),
        forget: Script::new(&format!("{EPOCH_FN}{FORGET}")),
        shorten: Script::new(SHORTEN),
    })
}

/// What a [`SharedTokenCache`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SharedStats {
    /// Tokens another instance (or an earlier call) had stored in Redis.
    pub shared_hits: u64,
    /// Requests this instance made to the provider.
    pub requests: u64,
    /// Calls that waited for another instance's refresh.
    pub waits: u64,
    /// Calls that went to the provider without Redis (Redis failed or timed out, or a
    /// record could not be opened).
    pub fallbacks: u64,
}

#[derive(Default)]
struct Counters {
    shared_hits: AtomicU64,
    requests: AtomicU64,
    waits: AtomicU64,
    fallbacks: AtomicU64,
}

/// A token cache shared by every instance of a service through Redis (single node or
/// Cluster): one token per key for all of them, refreshed by one instance at a time
/// while the others read its result, sealed at rest.
///
/// Put a [`CachingProvider`](super::CachingProvider) in front (each instance's own
/// memory cache) and the provider behind:
/// `CachingProvider::new(SharedTokenCache::new(credential, redis, keys, "app-id"))`.
/// When the memory cache wants a token (none yet, or one due for refresh), this cache:
///
/// - returns the token in Redis if it is not due for refresh yet (another instance
///   fetched it);
/// - else takes the key's refresh lock (`SET NX PX`, 15 s by default) and asks the
///   provider; its token is sealed (AES-256-GCM, [`SealingKeys`], bound to the key and
///   to its expiry) and stored until it expires, unless Redis already holds one
///   expiring later;
/// - else (another instance is refreshing) returns the still-valid token in Redis at
///   once, or, when there is none, waits for the other instance's token (polling, at
///   most the lock time) and then asks the provider itself.
///
/// Times are read from Redis (`TIME` of the key's node), so instances with skewed
/// clocks agree on when a token expires. Redis is a cache here, never a dependency:
/// when it fails or is slower than the call limit (1 s), the provider is asked
/// directly ([`SharedStats::fallbacks`]). A record that does not open (another key
/// ring, altered bytes, a changed expiry) is ignored and replaced. A claims challenge
/// goes to the provider, and its token replaces the stored one.
///
/// Keys (`<p>` is the prefix, `keel:tok:` by default; `<h>` is a SHA-256 of the
/// namespace, tenant, scopes and client capabilities, so scopes and tenants never show):
/// `<p>{<h>}` (the record: `exp`, `ref`, `sealed`), `<p>{<h>}:lock` and `<p>{<h>}:e`
/// (the key's epoch, raised by challenge answers and [`forget`](Self::forget): a
/// refresh that began before either never undoes it).
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use keel_token_manager::SealingKeys;
/// use keel_token_manager::client::{Authority, CachingProvider, ClientSecretCredential, SharedTokenCache};
///
/// let credential = ClientSecretCredential::new(Authority::AzurePublic, "contoso.onmicrosoft.com", "app-id", "secret")?;
/// let redis = keel_resilience::RedisConnection::single("redis://127.0.0.1:6379").await?;
/// // The same 32-byte key on every instance (from your secret store).
/// let keys = SealingKeys::new(&[(1, &[7u8; 32])])?;
/// let tokens = CachingProvider::new(SharedTokenCache::new(credential, redis, keys, "app-id"));
/// # Ok(()) }
/// ```
pub struct SharedTokenCache<P> {
    provider: Arc<P>,
    connection: Connection,
    keys: SealingKeys,
    namespace: String,
    prefix: String,
    policy: RefreshPolicy,
    lock_for: Duration,
    timeout: Duration,
    counters: Arc<Counters>,
}

impl<P> Clone for SharedTokenCache<P> {
    fn clone(&self) -> Self {
        Self {
            provider: self.provider.clone(),
            connection: self.connection.clone(),
            keys: self.keys.clone(),
            namespace: self.namespace.clone(),
            prefix: self.prefix.clone(),
            policy: self.policy,
            lock_for: self.lock_for,
            timeout: self.timeout,
            counters: self.counters.clone(),
        }
    }
}

impl<P> fmt::Debug for SharedTokenCache<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedTokenCache")
            .field("namespace", &self.namespace)
            .field("prefix", &self.prefix)
            .field("lock_for", &self.lock_for)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// A record read from Redis.
struct Record {
    exp: String,
    refresh: String,
    sealed: Vec<u8>,
}

enum Read {
    Fresh(Record),
    Locked(Option<Record>),
    Wait(Option<Record>),
}

/// What a read saw: Redis's time (ms) and the key's epoch.
#[derive(Clone, Copy)]
struct Seen {
    now: u64,
    epoch: u64,
    /// When `now` was read here.
    at: Instant,
}

/// How a token is written.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Plain,
    Replace,
    Challenge,
}

impl Mode {
    fn as_str(self) -> &'static str {
        match self {
            Mode::Plain => "plain",
            Mode::Replace => "replace",
            Mode::Challenge => "challenge",
        }
    }
}

impl<P: TokenProvider> SharedTokenCache<P> {
    /// `provider`'s tokens shared through Redis (a single node or a cluster, as the
    /// connection is). `namespace` tells apart
    /// the services sharing one Redis (the service's name, or its client id): keys also
    /// hold the provider's [`identity`](TokenProvider::identity) when it has one, but a
    /// system-assigned managed identity or a provider made with
    /// [`from_fn`](super::from_fn) has none, and then the namespace alone keeps two
    /// services' tokens apart. `keys` must be the same on every instance.
    ///
    /// `connection` is a [`RedisConnection`](keel_resilience::RedisConnection), single
    /// node or cluster (a key's record and lock share a slot), the way every Keel crate
    /// takes Redis; a redis-rs `ConnectionManager` or `ClusterConnection` converts.
    pub fn new(
        provider: P,
        connection: impl Into<Connection>,
        keys: SealingKeys,
        namespace: impl Into<String>,
    ) -> Self {
        Self {
            provider: Arc::new(provider),
            connection: connection.into(),
            keys,
            namespace: namespace.into(),
            prefix: "keel:tok:".into(),
            policy: RefreshPolicy::default(),
            lock_for: Duration::from_secs(15),
            timeout: Duration::from_secs(1),
            counters: Arc::default(),
        }
    }

    /// Another key prefix (default `keel:tok:`).
    #[must_use]
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// When stored tokens are due for refresh (default: the memory cache's default, 5
    /// minutes before expiry or the provider's `refresh_in`). Use the same policy as the
    /// [`CachingProvider`](super::CachingProvider) in front.
    #[must_use]
    pub fn policy(mut self, policy: RefreshPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// How long one instance may refresh a key before another may (default 15 s; longer
    /// than a token request takes).
    #[must_use]
    pub fn lock_for(mut self, lock_for: Duration) -> Self {
        self.lock_for = lock_for.max(Duration::from_millis(100));
        self
    }

    /// The limit per Redis call (default 1 s); past it the provider is asked directly.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// What this instance's cache did so far.
    #[must_use]
    pub fn stats(&self) -> SharedStats {
        let c = &self.counters;
        SharedStats {
            shared_hits: c.shared_hits.load(Ordering::Relaxed),
            requests: c.requests.load(Ordering::Relaxed),
            waits: c.waits.load(Ordering::Relaxed),
            fallbacks: c.fallbacks.load(Ordering::Relaxed),
        }
    }
}

impl<P: TokenProvider> SharedTokenCache<P> {
    /// `<p>{<sha-256 of the key's parts, hex>}`.
    fn record_key(&self, request: &TokenRequest) -> String {
        let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
        let mut part = |bytes: &[u8]| {
            digest.update(&(bytes.len() as u64).to_be_bytes());
            digest.update(bytes);
        };
        part(self.namespace.as_bytes());
        // Whose tokens (a credential's authority, home tenant and client; a user).
        match self.provider.identity() {
            Some(identity) => {
                part(b"identity");
                part(identity.as_bytes());
            }
            None => part(b"no identity"),
        }
        part(&[u8::from(request.tenant_id().is_some())]);
        part(request.tenant_id().unwrap_or("").as_bytes());
        // Each list with its length first: no scope can pass for a capability.
        part(&(request.scopes().len() as u64).to_be_bytes());
        for scope in request.scopes() {
            part(scope.as_bytes());
        }
        part(&(request.capabilities().len() as u64).to_be_bytes());
        for capability in request.capabilities() {
            part(capability.as_bytes());
        }
        let hash = digest.finish();
        let hex: String = hash.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        format!("{}{{{hex}}}", self.prefix)
    }

    fn context(key: &str, exp: &str, refresh: &str) -> Vec<u8> {
        format!("{key}|{exp}|{refresh}").into_bytes()
    }

    /// The token in a record, with its times from Redis's `now` (ms); `None` when it
    /// does not open.
    fn open(&self, key: &str, record: &Record, now: u64) -> Option<AccessToken> {
        let exp: u64 = record.exp.parse().ok()?;
        let refresh: u64 = record.refresh.parse().ok()?;
        let plain = self
            .keys
            .open(
                &record.sealed,
                &Self::context(key, &record.exp, &record.refresh),
            )
            .ok()?;
        let secret = String::from_utf8(plain).ok()?;
        let token = AccessToken::new(secret, Duration::from_millis(exp.checked_sub(now)?));
        Some(token.refresh_in(Duration::from_millis(refresh.saturating_sub(now))))
    }

    async fn read_or_lock(
        &self,
        key: &str,
        lock: &str,
        owner: &str,
        try_lock: bool,
    ) -> Result<(Seen, Read), TokenError> {
        let lock_ms = self.lock_for.as_millis().to_string();
        let mut invocation = scripts().read_or_lock.prepare_invoke();
        invocation
            .key(key)
            .key(lock)
            .key(epoch_key(key))
            .arg(owner)
            .arg(lock_ms)
            .arg(if try_lock { "1" } else { "0" })
            .arg(MAX_RECORD);
        let mut connection = self.connection.clone();
        let reply: Value = with_timeout(self.timeout, invocation.invoke_async(&mut connection))
            .await
            .map_err(|e| redis_error(e.into()))?
            .map_err(|e| redis_error(e.into()))?;
        parse_read(reply).ok_or_else(|| {
            redis_error(std::io::Error::other("unexpected reply from the read script").into())
        })
    }

    #[allow(clippy::too_many_arguments)]
    async fn write(
        &self,
        key: &str,
        lock: &str,
        owner: &str,
        token: &AccessToken,
        seen: Seen,
        mode: Mode,
    ) -> Result<Option<AccessToken>, TokenError> {
        // Redis time now = its time when read plus what passed here since.
        let now = seen.now + millis(seen.at.elapsed());
        let exp = now + millis(token.expires_in());
        let due = self.policy.refresh_at(token, Instant::now());
        let refresh = now + millis(due.saturating_duration_since(Instant::now()));
        let (exp, refresh) = (exp.to_string(), refresh.to_string());
        let sealed = self
            .keys
            .seal(
                token.secret().as_bytes(),
                &Self::context(key, &exp, &refresh),
            )
            .map_err(|e| TokenError::failed(PROVIDER, ErrorClass::Transient, e))?;
        let mut invocation = scripts().write.prepare_invoke();
        invocation
            .key(key)
            .key(lock)
            .key(epoch_key(key))
            .arg(owner)
            .arg(exp)
            .arg(refresh)
            .arg(sealed)
            .arg(mode.as_str())
            .arg(seen.epoch);
        let mut connection = self.connection.clone();
        let reply: Value = with_timeout(self.timeout, invocation.invoke_async(&mut connection))
            .await
            .map_err(|e| redis_error(e.into()))?
            .map_err(|e| redis_error(e.into()))?;
        // Not written: the token that stays (a challenge's answer, a later token), when
        // it opens.
        let Value::Array(items) = reply else {
            return Ok(None);
        };
        match items.get(1..4) {
            Some([exp, refresh, Value::BulkString(sealed)]) if sealed.len() <= MAX_RECORD => {
                let record = Record {
                    exp: text(exp).unwrap_or_default(),
                    refresh: text(refresh).unwrap_or_default(),
                    sealed: sealed.clone(),
                };
                Ok(self.open(key, &record, now))
            }
            _ => Ok(None),
        }
    }

    /// Keeps the lock of a failed refresh no longer than `for_at_most`.
    async fn shorten_lock(&self, lock: &str, owner: &str, for_at_most: Duration) {
        let ms = millis(for_at_most.min(self.lock_for)).max(1);
        let mut invocation = scripts().shorten.prepare_invoke();
        invocation.key(lock).arg(owner).arg(ms);
        let mut connection = self.connection.clone();
        let _ = with_timeout(
            self.timeout,
            invocation.invoke_async::<i64>(&mut connection),
        )
        .await;
    }

    async fn unlock(&self, lock: &str, owner: &str) {
        let mut invocation = scripts().unlock.prepare_invoke();
        invocation.key(lock).arg(owner);
        let mut connection = self.connection.clone();
        let done = with_timeout(
            self.timeout,
            invocation.invoke_async::<i64>(&mut connection),
        )
        .await;
        if !matches!(done, Ok(Ok(_))) {
            tracing::debug!("could not free the shared token lock; it expires by itself");
        }
    }

    /// Forgets the shared token for `request` (and its refresh lock) on every instance's
    /// next read: a credential changed, or the token must not be used again. Each
    /// instance's own memory cache ([`CachingProvider::clear`](super::CachingProvider::clear))
    /// is cleared separately.
    ///
    /// # Errors
    /// [`TokenError`] (transient) when Redis fails or does not answer in time.
    pub async fn forget(&self, request: &TokenRequest) -> Result<(), TokenError> {
        let key = self.record_key(&request.without_claims());
        let lock = format!("{key}:lock");
        let mut invocation = scripts().forget.prepare_invoke();
        invocation.key(&key).key(&lock).key(epoch_key(&key));
        let mut connection = self.connection.clone();
        let _: i64 = with_timeout(self.timeout, invocation.invoke_async(&mut connection))
            .await
            .map_err(|e| redis_error(e.into()))?
            .map_err(|e| redis_error(e.into()))?;
        Ok(())
    }

    async fn fetch(&self, request: &TokenRequest) -> Result<AccessToken, TokenError> {
        self.counters.requests.fetch_add(1, Ordering::Relaxed);
        self.provider.token(request).await
    }

    /// The provider's token, Redis left aside.
    async fn fallback(
        &self,
        request: &TokenRequest,
        error: &TokenError,
    ) -> Result<AccessToken, TokenError> {
        self.counters.fallbacks.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(error = %error, "shared token cache unavailable; asking the provider directly");
        self.fetch(request).await
    }
}

impl<P: TokenProvider + 'static> SharedTokenCache<P> {
    async fn get(&self, request: &TokenRequest) -> Result<AccessToken, TokenError> {
        let key = self.record_key(&request.without_claims());
        let lock = format!("{key}:lock");
        let owner = random_owner()?;
        if request.claims_json().is_some() {
            // A challenge: the stored token is what was refused. Its answer replaces it,
            // and a refresh that began before does not bring the refused kind back.
            let seen = match self.read_or_lock(&key, &lock, &owner, false).await {
                Ok((seen, _)) => seen,
                Err(e) => return self.fallback(request, &e).await,
            };
            return self
                .refresh(request, key, lock, owner, seen, Mode::Challenge, None)
                .await;
        }
        let started = Instant::now();
        let mut pause = Duration::from_millis(20);
        let mut waited = false;
        loop {
            let (seen, read) = match self.read_or_lock(&key, &lock, &owner, true).await {
                Ok(read) => read,
                Err(e) => return self.fallback(request, &e).await,
            };
            match read {
                Read::Fresh(record) => {
                    if let Some(token) = self.open(&key, &record, seen.now) {
                        self.counters.shared_hits.fetch_add(1, Ordering::Relaxed);
                        return Ok(token);
                    }
                    // Unreadable (another key ring, altered): replace it.
                    return self
                        .refresh(request, key, lock, owner, seen, Mode::Replace, None)
                        .await;
                }
                Read::Locked(record) => {
                    let valid = record.as_ref().map(|r| self.open(&key, r, seen.now));
                    let mode = if matches!(valid, Some(None)) {
                        Mode::Replace
                    } else {
                        Mode::Plain
                    };
                    return self
                        .refresh(request, key, lock, owner, seen, mode, valid.flatten())
                        .await;
                }
                Read::Wait(record) => {
                    if let Some(token) = record.and_then(|r| self.open(&key, &r, seen.now)) {
                        // Still valid: the other instance's refresh will replace it.
                        self.counters.shared_hits.fetch_add(1, Ordering::Relaxed);
                        return Ok(token);
                    }
                    if !waited {
                        waited = true;
                        self.counters.waits.fetch_add(1, Ordering::Relaxed);
                    }
                    if started.elapsed() >= self.lock_for {
                        // The other instance is taking too long: do not wait forever.
                        return self
                            .refresh(request, key, lock, owner, seen, Mode::Plain, None)
                            .await;
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(250));
                }
            }
        }
    }

    /// Asks the provider and stores its token, in a task of its own: a caller that
    /// gives up (a timeout, a dropped request) neither wastes the answer nor leaves the
    /// lock held. When the provider fails and Redis still holds a valid token
    /// (`still_valid`), that token is served and the lock kept until it expires, so
    /// the instances do not all retry at once.
    #[allow(clippy::too_many_arguments)]
    async fn refresh(
        &self,
        request: &TokenRequest,
        key: String,
        lock: String,
        owner: String,
        seen: Seen,
        mode: Mode,
        still_valid: Option<AccessToken>,
    ) -> Result<AccessToken, TokenError> {
        let this = self.clone();
        let request = request.clone();
        let work = async move {
            match this.fetch(&request).await {
                Ok(token) => {
                    match this.write(&key, &lock, &owner, &token, seen, mode).await {
                        // A challenge's answer (or a later token) stays in Redis: serve
                        // that, not what this older request brought.
                        Ok(Some(stays)) if mode != Mode::Challenge => return Ok(stays),
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, "could not share the token"),
                    }
                    Ok(token)
                }
                Err(e) => {
                    if let Some(token) = still_valid {
                        tracing::warn!(error = %e, "token refresh failed; serving the shared token until it expires");
                        // The lock, kept as a backoff shared by the instances, lives no
                        // longer than the token it lets them serve.
                        this.shorten_lock(&lock, &owner, token.expires_in()).await;
                        return Ok(token);
                    }
                    // Let another instance try.
                    this.unlock(&lock, &owner).await;
                    Err(e)
                }
            }
        };
        tokio::spawn(work.in_current_span())
            .await
            .map_err(|e| TokenError::failed(PROVIDER, ErrorClass::Transient, e))?
    }
}

/// The key's epoch key, in the record's slot.
fn epoch_key(key: &str) -> String {
    format!("{key}:e")
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

fn random_owner() -> Result<String, TokenError> {
    let bytes: [u8; 16] = super::error::random_bytes(PROVIDER)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn redis_error(source: super::BoxError) -> TokenError {
    TokenError::failed(PROVIDER, ErrorClass::Transient, source)
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) if bytes.len() <= MAX_RECORD => {
            String::from_utf8(bytes.clone()).ok()
        }
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

fn parse_read(reply: Value) -> Option<(Seen, Read)> {
    let at = Instant::now();
    let Value::Array(items) = reply else {
        return None;
    };
    let state = text(items.first()?)?;
    let now: u64 = text(items.get(1)?)?.parse().ok()?;
    let epoch: u64 = text(items.get(2)?)?.parse().ok()?;
    let record = match items.get(3..6) {
        Some([exp, refresh, Value::BulkString(sealed)]) if sealed.len() <= MAX_RECORD => {
            Some(Record {
                exp: text(exp)?,
                refresh: text(refresh)?,
                sealed: sealed.clone(),
            })
        }
        Some(_) => return None,
        None => None,
    };
    let read = match state.as_str() {
        "fresh" => Read::Fresh(record?),
        "locked" => Read::Locked(record),
        "wait" => Read::Wait(record),
        _ => return None,
    };
    Some((Seen { now, epoch, at }, read))
}

impl<P: TokenProvider + 'static> TokenProvider for SharedTokenCache<P> {
    fn token<'a>(&'a self, request: &'a TokenRequest) -> TokenFuture<'a> {
        Box::pin(self.get(request))
    }

    fn identity(&self) -> Option<String> {
        self.provider.identity()
    }
}
