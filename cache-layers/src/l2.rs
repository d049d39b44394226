//! The shared L2 on Redis (single node or Redis Cluster), behind a circuit breaker and
//! per-call timeouts from `keel-resilience`.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use keel_resilience::breaker::{
    CircuitBreaker, CircuitBreakerConfig, OpenWait, Outcome, SlidingWindow,
};
use keel_resilience::timeout::with_timeout;
use redis::Script;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

/// A Redis L2 for [`CacheBuilder::l2`](crate::CacheBuilder::l2): where the cache's shared
/// entries live and where its backplane runs.
///
/// Every call goes through a circuit breaker and a timeout (250 ms by default): with Redis
/// down, the cache answers from L1 at L1 speed and goes back to L2 by itself within about
/// a second of Redis coming back.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use keel_cache_layers::{Cache, RedisL2};
/// use std::time::Duration;
///
/// let l2 = RedisL2::single("redis://127.0.0.1:6379")?.op_timeout(Duration::from_millis(100));
/// let cache = Cache::<String>::builder("users").l2(l2).build()?;
/// // Or a cluster: RedisL2::cluster(["redis://10.0.0.1:7000", "redis://10.0.0.2:7000"]).await?
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisL2 {
    pub(crate) connection: Connection,
    /// Clients the backplane subscribes through (any node of a cluster will do: classic
    /// pub/sub messages reach every node).
    pub(crate) subscribers: Arc<[redis::Client]>,
    pub(crate) op_timeout: Duration,
    pub(crate) breaker: Arc<CircuitBreaker>,
    /// Whether this is a cluster: multi-key scripts across slots are not possible there.
    pub(crate) cluster: bool,
}

impl fmt::Debug for RedisL2 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // No URLs: they may carry passwords.
        f.debug_struct("RedisL2")
            .field("cluster", &self.cluster)
            .field("op_timeout", &self.op_timeout)
            .field("breaker", &self.breaker.state())
            .finish_non_exhaustive()
    }
}

/// The L2 could not be set up: a URL that is not a Redis URL, no node given, or (for a
/// cluster) no node answering. Redis's own error, when there is one, is the source.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct L2SetupError(SetupFailure);

#[derive(Debug, thiserror::Error)]
enum SetupFailure {
    #[error("could not set up the Redis L2")]
    Redis(#[source] redis::RedisError),
    #[error("the Redis L2 needs at least one node")]
    NoNodes,
}

impl L2SetupError {
    fn from_redis(e: redis::RedisError) -> Self {
        // RedisError's Display has no credentials; the URL is never included.
        Self(SetupFailure::Redis(e))
    }
}

impl keel_resilience::Classify for L2SetupError {
    /// Transient when no node answered (the cluster may come up), else permanent (a
    /// URL that is not a Redis URL).
    fn class(&self) -> keel_resilience::ErrorClass {
        match &self.0 {
            SetupFailure::Redis(e)
                if e.is_io_error() || e.is_timeout() || e.is_connection_refusal() =>
            {
                keel_resilience::ErrorClass::Transient
            }
            _ => keel_resilience::ErrorClass::Permanent,
        }
    }
}

const DEFAULT_OP_TIMEOUT: Duration = Duration::from_millis(250);

impl RedisL2 {
    /// A single Redis node. The connection is made on first use and remade after a
    /// failure, so this works even while Redis is down.
    ///
    /// # Errors
    /// When the URL is not a Redis URL.
    pub fn single(url: &str) -> Result<Self, L2SetupError> {
        let client = redis::Client::open(url).map_err(L2SetupError::from_redis)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(DEFAULT_OP_TIMEOUT))
            // No response timeout here: every call already runs under `op_timeout`.
            .set_response_timeout(None)
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(Duration::from_millis(200))
            .set_number_of_retries(2);
        let manager = ConnectionManager::new_lazy_with_config(client.clone(), config)
            .map_err(L2SetupError::from_redis)?;
        Ok(Self::new(Connection::Single(manager), vec![client], false))
    }

    /// A Redis Cluster, from one or more of its nodes.
    ///
    /// # Errors
    /// When a URL is invalid or no node answers.
    pub async fn cluster<I, S>(urls: I) -> Result<Self, L2SetupError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let urls: Vec<String> = urls.into_iter().map(|u| u.as_ref().to_owned()).collect();
        let clients = urls
            .iter()
            .map(|u| redis::Client::open(u.as_str()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(L2SetupError::from_redis)?;
        let cluster = redis::cluster::ClusterClient::builder(urls)
            .connection_timeout(DEFAULT_OP_TIMEOUT)
            .response_timeout(DEFAULT_OP_TIMEOUT)
            .retries(2)
            .min_retry_wait(10)
            .max_retry_wait(200)
            .build()
            .map_err(L2SetupError::from_redis)?;
        let connection = cluster
            .get_async_connection()
            .await
            .map_err(L2SetupError::from_redis)?;
        Ok(Self::new(Connection::Cluster(connection), clients, true))
    }

    fn new(connection: Connection, subscribers: Vec<redis::Client>, cluster: bool) -> Self {
        Self {
            connection,
            subscribers: subscribers.into(),
            op_timeout: DEFAULT_OP_TIMEOUT,
            breaker: Arc::new(CircuitBreaker::new(default_breaker())),
            cluster,
        }
    }

    /// The nodes the backplane subscribes through, in order of preference (default: the
    /// URL or cluster seeds given). Any node of a cluster will do, since classic pub/sub
    /// messages reach every node.
    ///
    /// # Errors
    /// When a URL is invalid or the list is empty.
    pub fn backplane_nodes<I, S>(mut self, urls: I) -> Result<Self, L2SetupError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let clients = urls
            .into_iter()
            .map(|u| redis::Client::open(u.as_ref()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(L2SetupError::from_redis)?;
        if clients.is_empty() {
            return Err(L2SetupError(SetupFailure::NoNodes));
        }
        self.subscribers = clients.into();
        Ok(self)
    }

    /// The limit on each L2 call (default 250 ms). Past it the call counts as a failure for
    /// the breaker and the cache goes on without L2.
    #[must_use]
    pub fn op_timeout(mut self, timeout: Duration) -> Self {
        self.op_timeout = timeout;
        self
    }

    /// Replaces the default breaker (opens when half of at least 5 of the last 20 calls
    /// failed; tries again after 500 ms).
    #[must_use]
    pub fn breaker(mut self, config: CircuitBreakerConfig) -> Self {
        self.breaker = Arc::new(CircuitBreaker::new(config));
        self
    }

    /// The breaker guarding L2, for health checks (`keel-health`'s `BreakerCheck`).
    #[must_use]
    pub fn circuit_breaker(&self) -> &Arc<CircuitBreaker> {
        &self.breaker
    }

    /// Runs one Redis call through the breaker and the timeout.
    pub(crate) async fn call<T, F>(&self, work: F) -> Result<T, L2Error>
    where
        F: Future<Output = redis::RedisResult<T>>,
    {
        let permit = self
            .breaker
            .try_acquire()
            .map_err(|_| L2Error::BreakerOpen)?;
        match with_timeout(self.op_timeout, work).await {
            Ok(Ok(value)) => {
                permit.record(Outcome::Success);
                Ok(value)
            }
            Ok(Err(e)) => {
                permit.record(Outcome::Failure);
                Err(L2Error::Redis(std::sync::Arc::new(e)))
            }
            Err(_) => {
                permit.record(Outcome::Failure);
                Err(L2Error::Timeout(self.op_timeout))
            }
        }
    }

    pub(crate) async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, L2Error> {
        let mut c = self.connection.clone();
        self.call(redis::cmd("GET").arg(key).query_async(&mut c))
            .await
    }

    /// Writes `record` whatever L2 holds (an insert or an invalidation: the newest call
    /// to reach Redis wins), with a version minted by Redis above the key's current one.
    /// Returns that version.
    pub(crate) async fn put(&self, key: &str, record: &[u8], ttl_ms: u64) -> Result<u64, L2Error> {
        let mut c = self.connection.clone();
        let mut invocation = scripts().put.key(key);
        invocation.arg(record).arg(ttl_ms.max(1));
        self.call(invocation.invoke_async(&mut c)).await
    }

    /// Writes a load's `record` unless the key changed after the load's `snapshot` (see
    /// [`read_snapshot`](Self::read_snapshot)). True when written.
    pub(crate) async fn fill(
        &self,
        key: &str,
        record: &[u8],
        snapshot: u64,
        ttl_ms: u64,
    ) -> Result<bool, L2Error> {
        let mut c = self.connection.clone();
        let mut invocation = scripts().fill.key(key);
        invocation.arg(record).arg(snapshot).arg(ttl_ms.max(1));
        let written: i64 = self.call(invocation.invoke_async(&mut c)).await?;
        Ok(written == 1)
    }

    /// The record of `key` (if any) and a snapshot of its version: every later change of
    /// the key gets a higher version, every earlier one a version no higher.
    pub(crate) async fn read_snapshot(&self, key: &str) -> Result<(Option<Vec<u8>>, u64), L2Error> {
        let mut c = self.connection.clone();
        let invocation = scripts().snapshot.key(key);
        self.call(invocation.invoke_async(&mut c)).await
    }

    /// The current version of a tag (empty when it was never invalidated).
    pub(crate) async fn tag_version(&self, version_key: &str) -> Result<String, L2Error> {
        let mut c = self.connection.clone();
        let version: Option<String> = self
            .call(redis::cmd("GET").arg(version_key).query_async(&mut c))
            .await?;
        Ok(version.unwrap_or_default())
    }

    /// Adds `key` to tag sets (an insert's tags). The sets live as long as their newest entry.
    pub(crate) async fn add_to_tags(
        &self,
        tag_keys: &[String],
        key: &str,
        ttl_ms: u64,
    ) -> Result<(), L2Error> {
        for tag_key in tag_keys {
            let mut c = self.connection.clone();
            let mut invocation = scripts().join_tag.key(tag_key);
            invocation.key(tag_key).arg(key).arg(ttl_ms.max(1)).arg("");
            self.call(invocation.invoke_async::<i64>(&mut c)).await?;
        }
        Ok(())
    }

    /// Adds a load's `key` to a tag set unless the tag was invalidated since the load's
    /// snapshot of its version (`expected`). True when added.
    pub(crate) async fn join_tag(
        &self,
        tag_key: &str,
        version_key: &str,
        key: &str,
        ttl_ms: u64,
        expected: &str,
    ) -> Result<bool, L2Error> {
        let mut c = self.connection.clone();
        let mut invocation = scripts().join_tag.key(tag_key);
        invocation
            .key(version_key)
            .arg(key)
            .arg(ttl_ms.max(1))
            .arg(expected)
            .arg(1);
        let joined: i64 = self.call(invocation.invoke_async(&mut c)).await?;
        Ok(joined == 1)
    }

    /// Invalidates a tag: raises its version (so loads that started before cannot join
    /// it) and takes its members, in one step.
    pub(crate) async fn take_tag(
        &self,
        tag_key: &str,
        version_key: &str,
        version_ttl_ms: u64,
    ) -> Result<Vec<String>, L2Error> {
        let mut c = self.connection.clone();
        let mut invocation = scripts().take_tag.key(tag_key);
        invocation.key(version_key).arg(version_ttl_ms.max(1));
        self.call(invocation.invoke_async(&mut c)).await
    }

    /// Removes `members` from a tag set once they are tombstoned (members added since
    /// stay).
    pub(crate) async fn forget_members(
        &self,
        tag_key: &str,
        members: &[String],
    ) -> Result<(), L2Error> {
        for chunk in members.chunks(512) {
            let mut c = self.connection.clone();
            self.call(
                redis::cmd("SREM")
                    .arg(tag_key)
                    .arg(chunk)
                    .query_async::<i64>(&mut c),
            )
            .await?;
        }
        Ok(())
    }

    /// Tries to take the load lock of a key.
    pub(crate) async fn try_lock(
        &self,
        lock_key: &str,
        token: &str,
        ttl: Duration,
    ) -> Result<bool, L2Error> {
        let mut c = self.connection.clone();
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let reply: Option<String> = self
            .call(
                redis::cmd("SET")
                    .arg(lock_key)
                    .arg(token)
                    .arg("NX")
                    .arg("PX")
                    .arg(ttl_ms)
                    .query_async(&mut c),
            )
            .await?;
        Ok(reply.is_some())
    }

    pub(crate) async fn lock_held(&self, lock_key: &str) -> Result<bool, L2Error> {
        let mut c = self.connection.clone();
        let n: i64 = self
            .call(redis::cmd("EXISTS").arg(lock_key).query_async(&mut c))
            .await?;
        Ok(n == 1)
    }

    pub(crate) async fn unlock(&self, lock_key: &str, token: &str) -> Result<(), L2Error> {
        let mut c = self.connection.clone();
        let mut invocation = scripts().unlock.key(lock_key);
        invocation.arg(token);
        self.call(invocation.invoke_async::<i64>(&mut c)).await?;
        Ok(())
    }

    /// Appends an invalidation to the backplane's log and publishes it. Returns the
    /// sequence number and the generation after it.
    pub(crate) async fn publish(
        &self,
        keys: &crate::keys::KeySpace,
        message: &PublishArgs<'_>,
    ) -> Result<(u64, u64), L2Error> {
        let mut c = self.connection.clone();
        let invocation = publishing(&scripts().publish, keys, message);
        self.call(invocation.invoke_async(&mut c)).await
    }

    /// [`put`](Self::put) then [`publish`](Self::publish) in one script (single node
    /// only). Returns the version written and the generation.
    pub(crate) async fn put_then_publish(
        &self,
        keys: &crate::keys::KeySpace,
        entry_key: &str,
        record: &[u8],
        ttl_ms: u64,
        message: &PublishArgs<'_>,
    ) -> Result<(u64, u64), L2Error> {
        let mut c = self.connection.clone();
        let mut invocation = publishing(&scripts().put_and_publish, keys, message);
        invocation.key(entry_key).arg(record).arg(ttl_ms.max(1));
        let (version, _seq, generation): (u64, u64, u64) =
            self.call(invocation.invoke_async(&mut c)).await?;
        Ok((version, generation))
    }

    /// Reads (creating if missing) the epoch, and the current sequence and generation,
    /// checking the instance's cursor against them: when Redis went back in time (the
    /// sequence is below the cursor, or the cursor's log entry is not the one the
    /// instance applied), the script starts a new epoch and a new generation, since data
    /// invalidated after the point Redis went back to may be in L2 again.
    pub(crate) async fn position(
        &self,
        keys: &crate::keys::KeySpace,
        epoch_candidate: &str,
        cursor: Option<(&str, u64, &str)>,
    ) -> Result<Position, L2Error> {
        let mut c = self.connection.clone();
        let mut invocation = scripts().position.key(keys.shared("epoch"));
        let (epoch, seq, nonce) = cursor.unwrap_or(("", 0, ""));
        invocation
            .key(keys.shared("seq"))
            .key(keys.shared("gen"))
            .key(keys.shared("log"))
            .arg(epoch_candidate)
            .arg(epoch)
            .arg(seq)
            .arg(nonce);
        let (epoch, seq, generation, nonce, rewound): (String, u64, u64, String, i64) =
            self.call(invocation.invoke_async(&mut c)).await?;
        Ok(Position {
            epoch,
            seq,
            generation,
            nonce,
            rewound: rewound == 1,
        })
    }

    /// Log entries after `after`, oldest first, at most `count`.
    pub(crate) async fn log_after(
        &self,
        keys: &crate::keys::KeySpace,
        after: u64,
        count: usize,
    ) -> Result<Vec<(String, Vec<Vec<u8>>)>, L2Error> {
        let mut c = self.connection.clone();
        self.call(
            redis::cmd("XRANGE")
                .arg(keys.shared("log"))
                .arg(format!("{}-0", after + 1))
                .arg("+")
                .arg("COUNT")
                .arg(count)
                .query_async(&mut c),
        )
        .await
    }
}

/// Where the backplane stands in Redis.
#[derive(Debug)]
pub(crate) struct Position {
    pub(crate) epoch: String,
    pub(crate) seq: u64,
    pub(crate) generation: u64,
    /// The nonce of the log entry at `seq` (empty when unknown).
    pub(crate) nonce: String,
    /// The script found Redis had gone back in time and started a new epoch.
    pub(crate) rewound: bool,
}

/// An invocation of a publishing script with its four shared keys and seven arguments.
fn publishing<'a>(
    script: &'a Script,
    keys: &crate::keys::KeySpace,
    message: &PublishArgs<'_>,
) -> redis::ScriptInvocation<'a> {
    let mut invocation = script.key(keys.shared("seq"));
    invocation
        .key(keys.shared("log"))
        .key(keys.shared("gen"))
        .key(keys.shared("epoch"))
        .arg(message.origin)
        .arg(message.kind)
        .arg(message.arg)
        .arg(message.log_length)
        .arg(keys.channel())
        .arg(message.epoch_candidate)
        .arg(message.nonce);
    invocation
}

/// The arguments of one published invalidation.
pub(crate) struct PublishArgs<'a> {
    pub(crate) origin: &'a str,
    pub(crate) kind: &'a str,
    pub(crate) arg: &'a str,
    pub(crate) log_length: usize,
    pub(crate) epoch_candidate: &'a str,
    /// Unique to this message: lets an instance tell its log entry from another one with
    /// the same sequence number (after Redis went back in time).
    pub(crate) nonce: &'a str,
}

fn default_breaker() -> CircuitBreakerConfig {
    CircuitBreakerConfig::builder("keel-cache-l2")
        .sliding_window(SlidingWindow::Count { size: 20 })
        .minimum_calls(5)
        .failure_rate_threshold(50.0)
        .open_wait(OpenWait::Fixed(Duration::from_millis(500)))
        .half_open_permits(2)
        .build()
        .unwrap_or_else(|_| CircuitBreakerConfig::standard("keel-cache-l2"))
}

/// Why an L2 call did not happen or failed.
pub(crate) type L2Error = crate::L2Failure;

impl From<L2Error> for crate::CacheError {
    fn from(e: L2Error) -> Self {
        crate::CacheError::L2Unavailable(e)
    }
}

struct Scripts {
    put: Script,
    fill: Script,
    snapshot: Script,
    join_tag: Script,
    take_tag: Script,
    unlock: Script,
    publish: Script,
    put_and_publish: Script,
    position: Script,
}

/// Appends an invalidation to the log (numbered by the sequence counter, creating the
/// epoch if missing, bumping the generation for a clear) and publishes it.
const PUBLISH_FN: &str = r"
local function publish(seqk, logk, genk, epochk, origin, kind, arg, maxlen, channel, candidate, nonce)
  local _, gen = control(epochk, genk, candidate)
  local seq = redis.call('INCR', seqk)
  -- A lost counter must not fall behind the log it numbers (the log would refuse the
  -- entry): go on after the log's last entry.
  local top = redis.call('XREVRANGE', logk, '+', '-', 'COUNT', 1)
  if #top > 0 then
    local last = tonumber(string.match(top[1][1], '^(%d+)')) or 0
    if seq <= last then
      seq = last + 1
      redis.call('SET', seqk, string.format('%d', seq))
    end
  end
  if kind == 'c' then gen = redis.call('INCR', genk) end
  -- Numbers as integers: Lua would write a large one as 1.7e+15.
  local seqs, gens = string.format('%d', seq), string.format('%d', gen)
  redis.call('XADD', logk, 'MAXLEN', '~', maxlen, seqs .. '-0', 'o', origin, 'k', kind, 'g', gens, 'n', nonce, 'a', arg)
  redis.call('PUBLISH', channel, origin .. '|' .. kind .. '|' .. seqs .. '|' .. gens .. '|' .. nonce .. '|' .. arg)
  return {seq, gen}
end
";

/// The epoch and the generation live and die together. On first use, or when Redis lost
/// (or evicted) either key, a new epoch starts with a generation never used before (the
/// node's time in microseconds, above the old generation), so data of an older
/// generation cannot come back and every instance drops its L1 when it sees the epoch.
const CONTROL_FN: &str = r"
local function control(epochk, genk, candidate)
  local epoch = redis.call('GET', epochk)
  local gen = redis.call('GET', genk)
  if epoch and gen then return epoch, tonumber(gen), 0 end
  local t = redis.call('TIME')
  local fresh = tonumber(t[1]) * 1000000 + tonumber(t[2])
  local old = tonumber(gen or '0') or 0
  if fresh <= old and old < 9007199254740992 then fresh = old + 1 end
  -- Epochs start with the time they were made, so a newer one sorts after an older one.
  epoch = string.format('%020d', fresh) .. '-' .. candidate
  redis.call('SET', epochk, epoch)
  redis.call('SET', genk, string.format('%d', fresh))
  return epoch, fresh, 1
end
";

/// Versions, minted where writes meet (the Redis node holding the key), never from an
/// instance's clock: microseconds of the node's `TIME`, kept above the key's current
/// version. They stay below 2^53, so exact as Lua numbers. The record's first 20 bytes
/// hold its version as zero-padded digits.
const VERSION_FN: &str = r"
local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local function version_of(key)
  local current = redis.call('GETRANGE', key, 0, 19)
  if current == '' then return nil end
  local v = tonumber(current)
  -- A version no script wrote (negative, not a number, or past 2^53 where Lua numbers
  -- stop counting by one) is ignored, so a hostile record cannot stop the versions.
  if v == nil or v < 0 or v >= 9007199254740992 then return nil end
  return v
end
local function store(key, record, version, ttl)
  redis.call('SET', key, record, 'PX', ttl)
  redis.call('SETRANGE', key, 0, string.format('%020d', version))
end
local function put(key, record, ttl)
  local v = now_us() + 1
  local c = version_of(key)
  if c ~= nil and c >= v then v = c + 1 end
  store(key, record, v, ttl)
  return v
end
";

fn scripts() -> &'static Scripts {
    static SCRIPTS: std::sync::OnceLock<Scripts> = std::sync::OnceLock::new();
    SCRIPTS.get_or_init(|| Scripts {
        // KEYS: entry. ARGV: record, ttl. Returns the version written.
        put: Script::new(&format!("{VERSION_FN}return put(KEYS[1], ARGV[1], ARGV[2])")),
        // KEYS: entry. ARGV: record, snapshot, ttl. A load's write: only when no change
        // reached the key after the load's snapshot (ties go to the load: a change gets
        // a version above every snapshot taken before it).
        fill: Script::new(&format!(
            "{VERSION_FN}local c = version_of(KEYS[1])
local snapshot = tonumber(ARGV[2])
if c ~= nil and c > snapshot then return 0 end
store(KEYS[1], ARGV[1], snapshot, ARGV[3])
return 1"
        )),
        // KEYS: entry. Returns the record and the snapshot: the node's time, or the
        // record's version if higher.
        snapshot: Script::new(&format!(
            "{VERSION_FN}local record = redis.call('GET', KEYS[1])
local v = now_us()
local c = version_of(KEYS[1])
if c ~= nil and c > v then v = c end
return {{record, v}}"
        )),
        // KEYS: tag set, tag version. ARGV: member, ttl, expected version, check (1 to
        // compare the tag's version with the expected one first).
        join_tag: Script::new(
            r"
if ARGV[4] == '1' and (redis.call('GET', KEYS[2]) or '') ~= ARGV[3] then return 0 end
redis.call('SADD', KEYS[1], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2], 'GT')
redis.call('PEXPIRE', KEYS[1], ARGV[2], 'NX')
return 1
",
        ),
        // KEYS: tag set, tag version. ARGV: the version's TTL. Returns the members.
        take_tag: Script::new(&format!(
            "{VERSION_FN}local v = now_us()
local c = tonumber(redis.call('GET', KEYS[2]) or '0') or 0
if c >= v and c < 9007199254740992 then v = c + 1 end
redis.call('SET', KEYS[2], string.format('%d', v), 'PX', ARGV[1])
-- The members stay until they are tombstoned (`forget_members`), so a replay after a
-- failure part-way finds them again.
return redis.call('SMEMBERS', KEYS[1])"
        )),
        unlock: Script::new(
            r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
",
        ),
        // KEYS: seq, log, gen, epoch. ARGV: origin, kind, arg, log length, channel, epoch,
        // nonce.
        publish: Script::new(&format!(
            "{CONTROL_FN}{PUBLISH_FN}return publish(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7])"
        )),
        // Single node only (the keys are in different cluster slots): one round trip for
        // "write, then tell the others". KEYS: seq, log, gen, epoch, entry. ARGV: the
        // publish arguments, then record, ttl.
        put_and_publish: Script::new(&format!(
            "{VERSION_FN}{CONTROL_FN}{PUBLISH_FN}local version = put(KEYS[5], ARGV[8], ARGV[9])
local published = publish(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7])
return {{version, published[1], published[2]}}"
        )),
        // KEYS: epoch, seq, gen, log. ARGV: epoch candidate, then the cursor: epoch, seq,
        // nonce (empty when unknown). Returns epoch, seq, gen, the nonce at seq, and 1
        // when it found Redis had gone back in time.
        position: Script::new(&format!(
            "{CONTROL_FN}{}",
            r"
local function nonce_at(s)
  if s <= 0 then return '' end
  local id = string.format('%d', s) .. '-0'
  local found = redis.call('XRANGE', KEYS[4], id, id)
  if #found == 0 then return false end
  local fields = found[1][2]
  for i = 1, #fields, 2 do
    if fields[i] == 'n' then return fields[i + 1] end
  end
  return ''
end
local epoch, gen = control(KEYS[1], KEYS[3], ARGV[1])
local seq = tonumber(redis.call('GET', KEYS[2]) or '0')
local rewound = 0
if ARGV[2] ~= '' and epoch ~= ARGV[2] and epoch < ARGV[2] then
  -- An epoch older than the one the instance counted in: Redis went back to a snapshot
  -- taken before the last new epoch (its data is older still).
  rewound = 1
  redis.call('DEL', KEYS[1])
  epoch, gen = control(KEYS[1], KEYS[3], ARGV[1])
elseif epoch == ARGV[2] then
  local at = tonumber(ARGV[3])
  if seq < at then
    rewound = 1
  elseif ARGV[4] ~= '' then
    local n = nonce_at(at)
    if n and n ~= ARGV[4] then rewound = 1 end
  end
  if rewound == 1 then
    redis.call('DEL', KEYS[1])
    epoch, gen = control(KEYS[1], KEYS[3], ARGV[1])
  end
end
return {epoch, seq, gen, nonce_at(seq) or '', rewound}
"
        )),
    })
}

/// A single-node or cluster connection (both reconnect by themselves): the one every
/// Keel crate uses.
pub(crate) use keel_resilience::RedisConnection as Connection;
