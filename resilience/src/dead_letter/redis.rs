//! Letters in a Redis stream, shared by every instance: a single node, or a Redis
//! Cluster (the queue's three keys share one hash tag, so one slot).
//!
//! Keys, for a queue named `orders` (`<n>` is the name's length, so names cannot collide):
//! - `keel:dlq:{<n>:orders}:letters`: the stream, one entry per letter (what failed);
//! - `…:claims`: a hash, letter id → `token|lease end (ms, Redis clock)`;
//! - `…:replays`: a hash, letter id → `failures|last failure (µs, Redis clock)|last error`.
//!
//! Every step that reads and writes is one Lua script, so it is atomic.

use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use redis::Value;
use redis::aio::ConnectionLike;

use crate::RedisConnection;

use super::error::DeadLetterError;
use super::letter::{DeadLetter, LetterId, NewLetter, class_from, class_text, from_millis, millis};
use super::store::{ClaimRequest, Claimed, DeadLetterStore, Purge, QueueStats};

const PUSH: &str = r"
if redis.call('XLEN', KEYS[1]) >= tonumber(ARGV[1]) then
  return redis.error_reply('KEEL_DLQ_FULL')
end
return redis.call('XADD', KEYS[1], '*', unpack(ARGV, 2))
";

/// Entries after ARGV[1] (a range start), COUNT ARGV[2], each with its replay state.
const LIST: &str = r"
local out = {}
for _, e in ipairs(redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[3], 'COUNT', ARGV[2])) do
  table.insert(out, {e[1], e[2], redis.call('HGET', KEYS[3], e[1]) or ''})
end
return out
";

const CLAIM: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local micros = tonumber(t[1]) * 1000000 + tonumber(t[2])
local started = tonumber(ARGV[6])
if started == 0 then started = micros end
local started_text = string.format('%d', started)
local upto = ARGV[7]
if upto == '' then
  local newest = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
  if #newest == 0 then return {'', 1, {}, started_text, ''} end
  upto = newest[1][1]
end
local want = tonumber(ARGV[2])
local scan = tonumber(ARGV[3])
local entries = redis.call('XRANGE', KEYS[1], ARGV[1], upto, 'COUNT', scan)
local out = {}
local last = ''
local broke = false
for _, e in ipairs(entries) do
  last = e[1]
  local free = true
  local c = redis.call('HGET', KEYS[2], e[1])
  if c then
    local sep = string.find(c, '|', 1, true)
    local ends = sep and tonumber(string.sub(c, sep + 1))
    local mine = sep and string.sub(c, 1, sep - 1) == ARGV[4]
    if ends and ends > now and not mine then free = false end
  end
  if free then
    local st = redis.call('HGET', KEYS[3], e[1])
    local failed = st and tonumber(string.match(st, '^%d+|(%d+)|'))
    if failed and failed > started then free = false end
  end
  if free then
    redis.call('HSET', KEYS[2], e[1], ARGV[4] .. '|' .. string.format('%d', now + tonumber(ARGV[5])))
    table.insert(out, {e[1], e[2], redis.call('HGET', KEYS[3], e[1]) or ''})
    if #out >= want then
      broke = true
      break
    end
  end
end
local exhausted = 0
if not broke and #entries < scan then exhausted = 1 end
return {last, exhausted, out, started_text, upto}
";

const COMPLETE: &str = r"
local c = redis.call('HGET', KEYS[2], ARGV[1])
if not c then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local sep = string.find(c, '|', 1, true)
if not sep or string.sub(c, 1, sep - 1) ~= ARGV[2] or (tonumber(string.sub(c, sep + 1)) or 0) <= now then
  return 0
end
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
return redis.call('XDEL', KEYS[1], ARGV[1])
";

const RELEASE: &str = r"
local c = redis.call('HGET', KEYS[2], ARGV[1])
if not c then return 0 end
local sep = string.find(c, '|', 1, true)
if not sep or string.sub(c, 1, sep - 1) ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[2], ARGV[1])
if #redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1]) == 0 then
  redis.call('HDEL', KEYS[3], ARGV[1])
  return 0
end
local failures = 0
local s = redis.call('HGET', KEYS[3], ARGV[1])
if s then failures = tonumber(string.match(s, '^(%d+)|')) or 0 end
local t = redis.call('TIME')
local micros = tonumber(t[1]) * 1000000 + tonumber(t[2])
redis.call('HSET', KEYS[3], ARGV[1], (failures + 1) .. '|' .. string.format('%d', micros) .. '|' .. ARGV[3])
return 1
";

/// Deletes the given ids (ARGV) from the stream and both hashes.
const DELETE: &str = r"
local n = 0
for _, id in ipairs(ARGV) do
  n = n + redis.call('XDEL', KEYS[1], id)
  redis.call('HDEL', KEYS[2], id)
  redis.call('HDEL', KEYS[3], id)
end
return n
";

/// Deletes up to ARGV[2] entries with ids before ARGV[1] (a range end).
const DELETE_BEFORE: &str = r"
local n = 0
for _, e in ipairs(redis.call('XRANGE', KEYS[1], '-', ARGV[1], 'COUNT', ARGV[2])) do
  n = n + redis.call('XDEL', KEYS[1], e[1])
  redis.call('HDEL', KEYS[2], e[1])
  redis.call('HDEL', KEYS[3], e[1])
end
return n
";

/// Empties the stream without deleting it, so it keeps its last id and new letters never
/// reuse an old letter's id.
const CLEAR: &str = r"
local n = redis.call('XLEN', KEYS[1])
if n > 0 then redis.call('XTRIM', KEYS[1], 'MAXLEN', 0) end
redis.call('DEL', KEYS[2], KEYS[3])
return n
";

struct Scripts {
    push: redis::Script,
    list: redis::Script,
    claim: redis::Script,
    complete: redis::Script,
    release: redis::Script,
    delete: redis::Script,
    delete_before: redis::Script,
    clear: redis::Script,
}

/// Dead letters in a Redis stream, on a [`RedisConnection`] (single node or cluster: the
/// default, the way every Keel crate takes Redis) or any cloneable [`ConnectionLike`]. Bounded (100 000 letters by default; refuses when
/// full), payloads up to 1 MiB. Letters are as durable as Redis is configured to be
/// (AOF with `appendfsync everysec` or better for a queue you rely on).
///
/// ```no_run
/// use keel_resilience::dead_letter::{DeadLetterQueue, RedisDeadLetters};
///
/// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
/// let connection = keel_resilience::RedisConnection::single("redis://127.0.0.1:6379").await?;
/// let queue = DeadLetterQueue::new("orders", RedisDeadLetters::new(connection, "orders"));
/// println!("{} letters", queue.stats().await?.letters);
/// # Ok(()) }
/// ```
pub struct RedisDeadLetters<C = RedisConnection> {
    connection: C,
    keys: [String; 3],
    capacity: usize,
    max_payload: usize,
    timeout: Duration,
    scripts: std::sync::Arc<Scripts>,
}

impl<C> std::fmt::Debug for RedisDeadLetters<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisDeadLetters")
            .field("stream", &self.keys[0])
            .field("capacity", &self.capacity)
            .field("max_payload", &self.max_payload)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

fn redis_error(e: redis::RedisError) -> DeadLetterError {
    DeadLetterError::caused("Redis", e)
}

fn corrupt(what: &str) -> DeadLetterError {
    DeadLetterError::store(format!(
        "Redis holds something that is not a letter: {what}"
    ))
}

/// A stream id `ms-seq`, or `None` for any other text (which must never reach a range).
fn stream_id(id: &LetterId) -> Option<(u64, u64)> {
    let (ms, seq) = id.0.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(n) => Some(n.to_string()),
        _ => None,
    }
}

fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(n) => Some(*n),
        other => text(other)?.parse().ok(),
    }
}

/// One `{id, fields, replay state}` triple from a script.
fn letter_of(v: &Value) -> Result<DeadLetter, DeadLetterError> {
    let Value::Array(parts) = v else {
        return Err(corrupt("an entry"));
    };
    let [id, fields, state] = parts.as_slice() else {
        return Err(corrupt("an entry's shape"));
    };
    let id = LetterId(text(id).ok_or_else(|| corrupt("an id"))?);
    let (enqueued_ms, _) = stream_id(&id).ok_or_else(|| corrupt("an id"))?;
    let Value::Array(fields) = fields else {
        return Err(corrupt("an entry's fields"));
    };
    let mut letter = NewLetter::new(String::new(), Vec::new(), crate::ErrorClass::Permanent, "");
    let mut class = None;
    for pair in fields.chunks(2) {
        let [name, value] = pair else {
            return Err(corrupt("a field without a value"));
        };
        let name = text(name).ok_or_else(|| corrupt("a field name"))?;
        let value_text = || text(value).ok_or_else(|| corrupt("a field"));
        match name.as_str() {
            "k" => letter.key = value_text()?,
            "p" => {
                letter.payload = match value {
                    Value::BulkString(b) => b.clone(),
                    _ => return Err(corrupt("a payload")),
                }
            }
            "c" => class = class_from(&value_text()?),
            "m" => letter.message = value_text()?,
            "a" => letter.attempts = value_text()?.parse().map_err(|_| corrupt("attempts"))?,
            "f" => {
                letter.first_failed_at =
                    from_millis(value_text()?.parse().map_err(|_| corrupt("a time"))?);
            }
            "l" => {
                letter.last_failed_at =
                    from_millis(value_text()?.parse().map_err(|_| corrupt("a time"))?);
            }
            "r" => letter.correlation_id = Some(value_text()?),
            "s" => letter.source = value_text()?,
            _ => {} // a field from a later version: ignored
        }
    }
    letter.class = class.ok_or_else(|| corrupt("a class"))?;
    let mut dead = DeadLetter {
        id,
        letter: letter.bounded(),
        enqueued_at: from_millis(enqueued_ms),
        replay_failures: 0,
        last_replay_error: None,
    };
    let state = text(state).unwrap_or_default();
    if !state.is_empty() {
        let mut parts = state.splitn(3, '|');
        dead.replay_failures = parts
            .next()
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| corrupt("a replay state"))?;
        let _last = parts.next();
        dead.last_replay_error = parts.next().map(str::to_owned);
    }
    Ok(dead)
}

/// Entries that are not letters: their ids and what is wrong.
type Unreadable = Vec<(LetterId, String)>;

/// The letters in a script's list of entries, and the entries that are not letters.
fn letters_of(v: &Value) -> Result<(Vec<DeadLetter>, Unreadable), DeadLetterError> {
    let Value::Array(items) = v else {
        return Err(corrupt("a list"));
    };
    let mut letters = Vec::with_capacity(items.len());
    let mut unreadable = Vec::new();
    for item in items {
        match letter_of(item) {
            Ok(letter) => letters.push(letter),
            Err(e) => {
                let id = match item {
                    Value::Array(parts) => parts.first().and_then(text),
                    _ => None,
                };
                unreadable.push((LetterId::from_text(&id.unwrap_or_default()), e.to_string()));
            }
        }
    }
    Ok((letters, unreadable))
}

/// Readable letters; the others are logged (with their ids, for an operator to purge).
fn readable(v: &Value) -> Result<Vec<DeadLetter>, DeadLetterError> {
    let (letters, unreadable) = letters_of(v)?;
    for (id, why) in unreadable {
        tracing::warn!(letter = %id, problem = %why, "an entry of the dead-letter stream is not a letter: skipped (purge it by id)");
    }
    Ok(letters)
}

/// The exclusive range start after `after`, or `-`; `None` when `after` is not a stream
/// id (nothing follows it).
fn start_after(after: Option<&LetterId>) -> Option<String> {
    match after {
        None => Some("-".into()),
        Some(id) => match stream_id(id)? {
            (u64::MAX, u64::MAX) => None,
            (ms, seq) => Some(format!("({ms}-{seq}")),
        },
    }
}

impl<C: ConnectionLike + Clone + Send + Sync + 'static> RedisDeadLetters<C> {
    /// The queue `name` over `connection`.
    pub fn new(connection: C, name: &str) -> Self {
        let tag = format!("keel:dlq:{{{}:{name}}}", name.len());
        RedisDeadLetters {
            connection,
            keys: [
                format!("{tag}:letters"),
                format!("{tag}:claims"),
                format!("{tag}:replays"),
            ],
            capacity: 100_000,
            max_payload: 1 << 20,
            timeout: Duration::from_secs(2),
            scripts: std::sync::Arc::new(Scripts {
                push: redis::Script::new(PUSH),
                list: redis::Script::new(LIST),
                claim: redis::Script::new(CLAIM),
                complete: redis::Script::new(COMPLETE),
                release: redis::Script::new(RELEASE),
                delete: redis::Script::new(DELETE),
                delete_before: redis::Script::new(DELETE_BEFORE),
                clear: redis::Script::new(CLEAR),
            }),
        }
    }

    /// At most `letters` letters (at least 1).
    #[must_use]
    pub fn capacity(mut self, letters: usize) -> Self {
        self.capacity = letters.max(1);
        self
    }

    /// Payloads of at most `bytes`.
    #[must_use]
    pub fn max_payload(mut self, bytes: usize) -> Self {
        self.max_payload = bytes;
        self
    }

    /// How long one call may wait on Redis (default 2 s); then it fails with
    /// [`DeadLetterError::Store`] and nothing was done, or it was done whole.
    #[must_use]
    pub fn timeout(mut self, limit: Duration) -> Self {
        self.timeout = limit;
        self
    }

    /// The stream's key.
    #[must_use]
    pub fn stream_key(&self) -> &str {
        &self.keys[0]
    }

    async fn run(
        &self,
        script: &redis::Script,
        args: Vec<Vec<u8>>,
    ) -> Result<Value, DeadLetterError> {
        let mut invocation = script.prepare_invoke();
        for key in &self.keys {
            invocation.key(key);
        }
        for arg in args {
            invocation.arg(arg);
        }
        let mut connection = self.connection.clone();
        match tokio::time::timeout(self.timeout, invocation.invoke_async(&mut connection)).await {
            Ok(result) => result.map_err(|e| {
                if e.to_string().contains("KEEL_DLQ_FULL") {
                    DeadLetterError::Full {
                        capacity: self.capacity,
                    }
                } else {
                    redis_error(e)
                }
            }),
            Err(_) => Err(DeadLetterError::store(format!(
                "Redis did not answer within {:?}",
                self.timeout
            ))),
        }
    }
}

fn arg(s: impl Into<String>) -> Vec<u8> {
    s.into().into_bytes()
}

impl<C: ConnectionLike + Clone + Send + Sync + 'static> DeadLetterStore for RedisDeadLetters<C> {
    fn push(&self, letter: NewLetter) -> BoxFuture<'_, Result<LetterId, DeadLetterError>> {
        async move {
            if letter.payload.len() > self.max_payload {
                return Err(DeadLetterError::TooLarge {
                    size: letter.payload.len(),
                    limit: self.max_payload,
                });
            }
            let mut args = vec![
                arg(self.capacity.to_string()),
                arg("k"),
                arg(letter.key),
                arg("p"),
                letter.payload,
                arg("c"),
                arg(class_text(letter.class)),
                arg("m"),
                arg(letter.message),
                arg("a"),
                arg(letter.attempts.to_string()),
                arg("f"),
                arg(millis(letter.first_failed_at).to_string()),
                arg("l"),
                arg(millis(letter.last_failed_at).to_string()),
                arg("s"),
                arg(letter.source),
            ];
            if let Some(c) = letter.correlation_id {
                args.push(arg("r"));
                args.push(arg(c));
            }
            let id = self.run(&self.scripts.push, args).await?;
            text(&id).map(LetterId).ok_or_else(|| corrupt("a new id"))
        }
        .boxed()
    }

    fn list(
        &self,
        after: Option<LetterId>,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<DeadLetter>, DeadLetterError>> {
        async move {
            let Some(start) = start_after(after.as_ref()).filter(|_| limit > 0) else {
                return Ok(Vec::new());
            };
            let page = self
                .run(
                    &self.scripts.list,
                    vec![arg(start), arg(limit.to_string()), arg("+")],
                )
                .await?;
            readable(&page)
        }
        .boxed()
    }

    fn get(&self, id: LetterId) -> BoxFuture<'_, Result<Option<DeadLetter>, DeadLetterError>> {
        async move {
            let Some((ms, seq)) = stream_id(&id) else {
                return Ok(None);
            };
            let exact = format!("{ms}-{seq}");
            let page = self
                .run(
                    &self.scripts.list,
                    vec![arg(exact.clone()), arg("1"), arg(exact)],
                )
                .await?;
            Ok(readable(&page)?.into_iter().next())
        }
        .boxed()
    }

    fn claim(&self, request: ClaimRequest) -> BoxFuture<'_, Result<Claimed, DeadLetterError>> {
        async move {
            let until = match &request.until {
                None => String::new(),
                Some(id) => match stream_id(id) {
                    Some((ms, seq)) => format!("{ms}-{seq}"),
                    None => return Ok(Claimed::nothing(&request)),
                },
            };
            let Some(start) = start_after(request.after.as_ref()) else {
                return Ok(Claimed::nothing(&request));
            };
            let limit = request.limit.max(1);
            // Look at a few more entries than wanted, so letters held by another replay
            // are stepped over in the same round trip; bounded, so a script stays short.
            let scan = limit.saturating_mul(4).min(10_000);
            // At most a year: the script's arithmetic stays exact.
            let lease_ms = u64::try_from(request.lease.as_millis())
                .unwrap_or(u64::MAX)
                .min(365 * 86_400_000);
            let reply = self
                .run(
                    &self.scripts.claim,
                    vec![
                        arg(start),
                        arg(limit.to_string()),
                        arg(scan.to_string()),
                        arg(request.token),
                        arg(lease_ms.to_string()),
                        arg(request.started.unwrap_or(0).to_string()),
                        arg(until),
                    ],
                )
                .await?;
            let Value::Array(parts) = reply else {
                return Err(corrupt("a claim"));
            };
            let [last, exhausted, entries, started, until] = parts.as_slice() else {
                return Err(corrupt("a claim's shape"));
            };
            let last = text(last).unwrap_or_default();
            let until = text(until).unwrap_or_default();
            let (letters, unreadable) = letters_of(entries)?;
            Ok(Claimed {
                letters,
                unreadable,
                cursor: (!last.is_empty()).then_some(LetterId(last)),
                exhausted: int(exhausted) == Some(1),
                started: int(started)
                    .and_then(|n| u64::try_from(n).ok())
                    .ok_or_else(|| corrupt("a time"))?,
                until: (!until.is_empty()).then_some(LetterId(until)),
            })
        }
        .boxed()
    }

    fn complete(
        &self,
        id: LetterId,
        token: String,
    ) -> BoxFuture<'_, Result<bool, DeadLetterError>> {
        async move {
            if stream_id(&id).is_none() {
                return Ok(false);
            }
            let done = self
                .run(&self.scripts.complete, vec![arg(id.0), arg(token)])
                .await?;
            Ok(int(&done) == Some(1))
        }
        .boxed()
    }

    fn release(
        &self,
        id: LetterId,
        token: String,
        error: String,
    ) -> BoxFuture<'_, Result<bool, DeadLetterError>> {
        async move {
            if stream_id(&id).is_none() {
                return Ok(false);
            }
            let done = self
                .run(
                    &self.scripts.release,
                    vec![arg(id.0), arg(token), arg(error)],
                )
                .await?;
            Ok(int(&done) == Some(1))
        }
        .boxed()
    }

    fn purge(&self, which: Purge) -> BoxFuture<'_, Result<u64, DeadLetterError>> {
        async move {
            let count = |v: Value| {
                int(&v)
                    .and_then(|n| u64::try_from(n).ok())
                    .ok_or_else(|| corrupt("a count"))
            };
            match which {
                Purge::All => count(self.run(&self.scripts.clear, Vec::new()).await?),
                Purge::One(id) => match stream_id(&id) {
                    None => Ok(0),
                    Some((ms, seq)) => count(
                        self.run(&self.scripts.delete, vec![arg(format!("{ms}-{seq}"))])
                            .await?,
                    ),
                },
                Purge::EnqueuedBefore(t) => {
                    if millis(t) == 0 {
                        return Ok(0);
                    }
                    let end = format!("({}-0", millis(t));
                    let mut total = 0;
                    loop {
                        let n = count(
                            self.run(
                                &self.scripts.delete_before,
                                vec![arg(end.clone()), arg("1000")],
                            )
                            .await?,
                        )?;
                        total += n;
                        if n < 1000 {
                            return Ok(total);
                        }
                    }
                }
            }
        }
        .boxed()
    }

    fn stats(&self) -> BoxFuture<'_, Result<QueueStats, DeadLetterError>> {
        async move {
            let mut connection = self.connection.clone();
            let mut pipe = redis::pipe();
            pipe.cmd("XLEN")
                .arg(&self.keys[0])
                .cmd("XRANGE")
                .arg(&self.keys[0])
                .arg("-")
                .arg("+")
                .arg("COUNT")
                .arg(1);
            let reply: Vec<Value> =
                match tokio::time::timeout(self.timeout, pipe.query_async(&mut connection)).await {
                    Ok(r) => r.map_err(redis_error)?,
                    Err(_) => return Err(DeadLetterError::store("Redis did not answer in time")),
                };
            let [len, first] = reply.as_slice() else {
                return Err(corrupt("stats"));
            };
            let letters = int(len)
                .and_then(|n| u64::try_from(n).ok())
                .ok_or_else(|| corrupt("a length"))?;
            let oldest = match first {
                Value::Array(entries) => entries.first().and_then(|e| match e {
                    Value::Array(parts) => parts.first().and_then(text),
                    _ => None,
                }),
                _ => None,
            };
            Ok(QueueStats {
                letters,
                oldest_enqueued_at: oldest
                    .and_then(|id| stream_id(&LetterId(id)))
                    .map(|(ms, _)| from_millis(ms)),
            })
        }
        .boxed()
    }
}
