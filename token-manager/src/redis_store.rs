//! A refresh-token store on Redis, single node or Redis Cluster: each rotation is one Lua
//! script (one round trip on a single node; three on a cluster), atomic per family;
//! records expire by themselves a day after their family's absolute expiry.
//!
//! Keys (`<p>` is the prefix, `keel:rt:` by default):
//!
//! | key | what |
//! |---|---|
//! | `<p>i:<token hash, hex>` | the token's family and when its records go: `<gone ms>:<family>`; written once, never changed |
//! | `<p>{<family>}:f` | the family (hash) |
//! | `<p>{<family>}:t:<token hash, hex>` | one token of the family (hash) |
//! | `<p>s:<subject>` | the subject's families (set) |
//!
//! A family's keys share the hash tag `{<family>}`, so on a cluster they live in one slot
//! and one script rotates, revokes or checks them atomically. The index key of a token is
//! in another slot: on a cluster it is read first, and a successor's index is written
//! *before* the rotation that makes it current (an index that points at a family with no
//! such token answers "unknown", so a rotation that never happened leaves nothing
//! usable; one the script refused is deleted at once). A new family is added to its
//! subject's set first, so "sign out everywhere" never misses a session that a crash
//! left half-created.
//!
//! Every read is a script too, so it runs on the primary: a cluster client that reads
//! from replicas would otherwise send it to a replica that may lack the latest writes,
//! and a logout that finds nothing there revokes nothing.

use std::fmt;
use std::time::Duration;

use keel_resilience::timeout::with_timeout;
use redis::Script;

use crate::store::{
    Family, FamilyId, RefreshTokenStore, RotateOutcome, RotateRequest, StoreError, TokenHash,
    TokenRecord,
};

/// Refresh-token families in Redis or Redis Cluster.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use keel_token_manager::{RedisStore, RefreshConfig, RefreshTokens, SealingKeys};
///
/// use keel_resilience::RedisConnection;
///
/// let store = RedisStore::new(RedisConnection::single("redis://127.0.0.1:6379").await?);
/// // Or a cluster:
/// let store = RedisStore::new(RedisConnection::cluster(["redis://10.0.0.1:7000"]).await?);
/// let tokens = RefreshTokens::new(store, SealingKeys::generate(1)?, RefreshConfig::default())?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisStore {
    connection: Connection,
    prefix: String,
    timeout: Duration,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("cluster", &self.connection.is_cluster())
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

pub(crate) use keel_resilience::RedisConnection as Connection;

fn hex(hash: &TokenHash) -> String {
    use std::fmt::Write as _;
    hash.0.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn parse_hex(text: &[u8]) -> Option<TokenHash> {
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, chunk) in text.chunks(2).enumerate() {
        let s = std::str::from_utf8(chunk).ok()?;
        out[i] = u8::from_str_radix(s, 16).ok()?;
    }
    Some(TokenHash(out))
}

/// Records outlive their session by a day, so a late token gets "expired", not
/// "unknown"; then Redis deletes them.
const RETENTION_MS: u64 = 24 * 3600 * 1000;

/// The rotation itself, on a family's keys. Expects locals `tkey` (the presented token),
/// `skey` (the successor), `fkey` (the family), `tag` (`<p>{<family>}`), `fam`, `gone`
/// and a function `link()` that indexes the successor. ARGV: now, grace, idle, successor
/// hex, sealed successor.
const ROTATE_CORE: &str = r"
local now = tonumber(ARGV[1])
local t = redis.call('HMGET', tkey, 'gen', 'state', 'successor', 'at', 'sealed')
if not t[2] then return {'unknown'} end
local f = redis.call('HMGET', fkey, 'subject', 'client', 'created', 'abs', 'idle', 'last', 'revoked')
if not f[1] then return {'unknown'} end
if f[7] and f[7] ~= '' then return {'revoked'} end
if now >= tonumber(f[4]) or now >= tonumber(f[5]) then return {'expired'} end
if t[2] == 'active' then
  local idle = math.min(now + tonumber(ARGV[3]), tonumber(f[4]))
  redis.call('HSET', tkey, 'state', 'rotated', 'successor', ARGV[4], 'at', ARGV[1], 'sealed', ARGV[5])
  redis.call('HSET', skey, 'gen', tonumber(t[1]) + 1, 'issued', ARGV[1], 'state', 'active')
  redis.call('PEXPIREAT', skey, gone)
  redis.call('HSET', fkey, 'idle', string.format('%d', idle), 'last', ARGV[1])
  link()
  return {'rotated', fam, f[1], f[2], f[3], f[4], string.format('%d', idle), ARGV[1], ''}
end
if t[2] == 'rotated' then
  local s = redis.call('HGET', tag .. ':t:' .. t[3], 'state')
  if s == 'active' and (now - tonumber(t[4])) < tonumber(ARGV[2]) then
    return {'retried', fam, f[1], f[2], f[3], f[4], f[5], f[6], '', t[3], t[5]}
  end
end
-- Rotated (after the grace period, or its successor already used) or revoked alone (by
-- older versions): reuse, and the family goes.
redis.call('HSET', fkey, 'revoked', ARGV[1])
return {'reuse', fam, f[1], f[2], f[3], f[4], f[5], f[6], ARGV[1]}
";

/// Single node: the whole rotation in one script, index lookup included.
/// KEYS: index of the presented token, index of the successor. ARGV 6: prefix, 7:
/// presented hex.
const ROTATE_SINGLE_PRELUDE: &str = r"
local idx = redis.call('GET', KEYS[1])
if not idx then return {'unknown'} end
local sep = string.find(idx, ':', 1, true)
if not sep then return {'corrupt'} end
local gone = string.sub(idx, 1, sep - 1)
local fam = string.sub(idx, sep + 1)
local tag = ARGV[6] .. '{' .. fam .. '}'
local tkey = tag .. ':t:' .. ARGV[7]
local skey = tag .. ':t:' .. ARGV[4]
local fkey = tag .. ':f'
local function link() redis.call('SET', KEYS[2], idx, 'PXAT', gone) end
";

/// Cluster: the family's part (the successor's index is written before).
/// KEYS: presented token, successor token, family. ARGV 6: tag, 7: family, 8: gone.
const ROTATE_FAMILY_PRELUDE: &str = r"
local tkey, skey, fkey = KEYS[1], KEYS[2], KEYS[3]
local tag, fam, gone = ARGV[6], ARGV[7], ARGV[8]
local function link() end
";

/// Stores a new family and its first token. KEYS: family, token. ARGV: subject, client,
/// created, abs, idle, last, gen, issued, gone.
const CREATE_FAMILY: &str = r"
redis.call('HSET', KEYS[1], 'subject', ARGV[1], 'client', ARGV[2], 'created', ARGV[3], 'abs', ARGV[4], 'idle', ARGV[5], 'last', ARGV[6], 'revoked', '')
redis.call('HSET', KEYS[2], 'gen', ARGV[7], 'issued', ARGV[8], 'state', 'active')
redis.call('PEXPIREAT', KEYS[1], ARGV[9])
redis.call('PEXPIREAT', KEYS[2], ARGV[9])
return 1
";

/// Adds a family to its subject's set, which lives as long as its longest session.
/// KEYS: the set. ARGV: family, gone.
const ADD_TO_SUBJECT: &str = r"
redis.call('SADD', KEYS[1], ARGV[1])
redis.call('PEXPIREAT', KEYS[1], ARGV[2], 'GT')
redis.call('PEXPIREAT', KEYS[1], ARGV[2], 'NX')
return 1
";

/// Revokes the family of a token if the token is one of its own. KEYS: token, family.
/// ARGV: now. 1 if the token exists, 0 if not.
const REVOKE_BY_TOKEN: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local r = redis.call('HGET', KEYS[2], 'revoked')
if r == '' then redis.call('HSET', KEYS[2], 'revoked', ARGV[1]) end
return 1
";

/// Revokes a family. KEYS: family. ARGV: now. -1 missing, 0 already revoked, 1 revoked.
const REVOKE_FAMILY: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local r = redis.call('HGET', KEYS[1], 'revoked')
if r and r ~= '' then return 0 end
redis.call('HSET', KEYS[1], 'revoked', ARGV[1])
return 1
";

/// Reads a token's index. Every read this store bases a decision on is a script: a
/// script runs on the primary, while a plain GET may be served by a replica (a cluster
/// client that reads from replicas) that lacks the latest writes, and a logout that
/// finds nothing there would revoke nothing. KEYS: the index.
const READ_INDEX: &str = "return redis.call('GET', KEYS[1])";

/// A subject's families, on the primary (see [`READ_INDEX`]). KEYS: the set.
const READ_SUBJECT: &str = "return redis.call('SMEMBERS', KEYS[1])";

/// A family's fields, on the primary (see [`READ_INDEX`]). KEYS: the family.
const READ_FAMILY: &str = "return redis.call('HMGET', KEYS[1], 'subject', 'client', 'created', 'abs', 'idle', 'last', 'revoked')";

struct Scripts {
    read_index: Script,
    read_subject: Script,
    read_family: Script,
    rotate_single: Script,
    rotate_family: Script,
    create_family: Script,
    add_to_subject: Script,
    revoke_by_token: Script,
    revoke_family: Script,
}

fn scripts() -> &'static Scripts {
    static SCRIPTS: std::sync::OnceLock<Scripts> = std::sync::OnceLock::new();
    SCRIPTS.get_or_init(|| Scripts {
        read_index: Script::new(READ_INDEX),
        read_subject: Script::new(READ_SUBJECT),
        read_family: Script::new(READ_FAMILY),
        rotate_single: Script::new(&format!("{ROTATE_SINGLE_PRELUDE}{ROTATE_CORE}")),
        rotate_family: Script::new(&format!("{ROTATE_FAMILY_PRELUDE}{ROTATE_CORE}")),
        create_family: Script::new(CREATE_FAMILY),
        add_to_subject: Script::new(ADD_TO_SUBJECT),
        revoke_by_token: Script::new(REVOKE_BY_TOKEN),
        revoke_family: Script::new(REVOKE_FAMILY),
    })
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn num(bytes: &[u8]) -> Result<u64, StoreError> {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| StoreError::corrupt("a stored number"))
}

/// An index entry: when the family's records go, and the family.
struct Index {
    raw: String,
    gone: String,
    family: String,
}

impl Index {
    fn new(gone: u64, family: &str) -> Self {
        Self {
            raw: format!("{gone}:{family}"),
            gone: gone.to_string(),
            family: family.to_owned(),
        }
    }

    fn parse(raw: String) -> Result<Self, StoreError> {
        let corrupt = || StoreError::corrupt("a stored token index");
        let (gone, family) = raw.split_once(':').ok_or_else(corrupt)?;
        if gone.is_empty() || !gone.bytes().all(|b| b.is_ascii_digit()) || family.is_empty() {
            return Err(corrupt());
        }
        Ok(Self {
            gone: gone.to_owned(),
            family: family.to_owned(),
            raw,
        })
    }
}

impl RedisStore {
    /// A store on one Redis node (or a primary with replicas) or on a Redis Cluster,
    /// with keys under `keel:rt:` and a 1 s limit per call: a
    /// [`RedisConnection`](keel_resilience::RedisConnection), the way every Keel crate
    /// takes Redis (or a redis-rs `ConnectionManager` / `ClusterConnection`). On a
    /// cluster each family's keys share one hash slot, so rotations stay atomic; a
    /// rotation takes three round trips instead of one.
    #[must_use]
    pub fn new(connection: impl Into<Connection>) -> Self {
        Self {
            connection: connection.into(),
            prefix: "keel:rt:".into(),
            timeout: Duration::from_secs(1),
        }
    }

    /// Another key prefix (several services on one Redis).
    #[must_use]
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Another limit per Redis call (default 1 s); a call past it fails with a
    /// [`StoreError`] and changes nothing the caller relies on.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    fn index_key(&self, hash: &TokenHash) -> String {
        format!("{}i:{}", self.prefix, hex(hash))
    }

    fn tag(&self, family: &str) -> String {
        format!("{}{{{family}}}", self.prefix)
    }

    fn family_key(&self, family: &str) -> String {
        format!("{}:f", self.tag(family))
    }

    fn token_key(&self, family: &str, hash: &TokenHash) -> String {
        format!("{}:t:{}", self.tag(family), hex(hash))
    }

    fn subject_key(&self, subject: &str) -> String {
        format!("{}s:{subject}", self.prefix)
    }

    async fn run<T: redis::FromRedisValue>(
        &self,
        work: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        match with_timeout(self.timeout, work).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) if e.is_timeout() => Err(StoreError::timeout(e)),
            Ok(Err(e))
                if e.is_io_error() || e.is_connection_refusal() || e.is_connection_dropped() =>
            {
                Err(StoreError::unavailable(e))
            }
            Ok(Err(e)) => Err(StoreError::failed(e)),
            Err(e) => Err(StoreError::timeout(e)),
        }
    }

    async fn index(&self, hash: &TokenHash) -> Result<Option<Index>, StoreError> {
        let mut c = self.connection.clone();
        let raw: Option<String> = self
            .run(
                scripts()
                    .read_index
                    .key(self.index_key(hash))
                    .invoke_async(&mut c),
            )
            .await?;
        raw.map(Index::parse).transpose()
    }

    /// The ids of a subject's families.
    async fn family_ids(&self, subject: &str) -> Result<Vec<String>, StoreError> {
        let mut c = self.connection.clone();
        self.run(
            scripts()
                .read_subject
                .key(self.subject_key(subject))
                .invoke_async(&mut c),
        )
        .await
    }

    async fn revoke_family_id(&self, family: &str, now: u64) -> Result<i64, StoreError> {
        let mut c = self.connection.clone();
        let mut invocation = scripts().revoke_family.key(self.family_key(family));
        invocation.arg(now);
        self.run(invocation.invoke_async(&mut c)).await
    }

    fn family_from(fields: &[Vec<u8>], id: &[u8]) -> Result<Family, StoreError> {
        // subject, client, created, abs, idle, last, revoked
        Ok(Family {
            id: FamilyId(text(id)),
            subject: text(&fields[0]),
            client_id: text(&fields[1]),
            created_at: num(&fields[2])?,
            absolute_expiry: num(&fields[3])?,
            idle_expiry: num(&fields[4])?,
            last_used_at: num(&fields[5])?,
            revoked_at: if fields[6].is_empty() {
                None
            } else {
                Some(num(&fields[6])?)
            },
        })
    }

    async fn rotate_call(&self, r: &RotateRequest) -> Result<Vec<Vec<u8>>, StoreError> {
        let mut c = self.connection.clone();
        let successor = hex(&r.successor);
        let args = |invocation: &mut redis::ScriptInvocation<'_>| {
            invocation
                .arg(r.now)
                .arg(r.grace_ms)
                .arg(r.idle_ms.min(1_000_000_000_000_000))
                .arg(&successor)
                .arg(r.sealed_successor.as_slice());
        };
        match &self.connection {
            Connection::Single(_) => {
                let mut invocation = scripts().rotate_single.key(self.index_key(&r.presented));
                invocation.key(self.index_key(&r.successor));
                args(&mut invocation);
                invocation.arg(&self.prefix).arg(hex(&r.presented));
                self.run(invocation.invoke_async(&mut c)).await
            }
            // A cluster (and whatever else may come): one family's keys in one slot.
            _ => {
                let Some(index) = self.index(&r.presented).await? else {
                    return Ok(vec![b"unknown".to_vec()]);
                };
                // The successor's index first: harmless if the rotation then fails.
                let _: () = self
                    .run(
                        redis::cmd("SET")
                            .arg(self.index_key(&r.successor))
                            .arg(&index.raw)
                            .arg("PXAT")
                            .arg(&index.gone)
                            .query_async(&mut c),
                    )
                    .await?;
                let mut invocation = scripts()
                    .rotate_family
                    .key(self.token_key(&index.family, &r.presented));
                invocation
                    .key(self.token_key(&index.family, &r.successor))
                    .key(self.family_key(&index.family));
                args(&mut invocation);
                invocation
                    .arg(self.tag(&index.family))
                    .arg(&index.family)
                    .arg(&index.gone);
                let reply: Vec<Vec<u8>> = self.run(invocation.invoke_async(&mut c)).await?;
                if reply.first().map(Vec::as_slice) != Some(b"rotated".as_slice()) {
                    // No successor was made (revoked, expired, reuse, a retry): its index
                    // points at nothing and would stay until the family's records go.
                    // Best effort: left behind, it is harmless and expires with them.
                    let _ = self
                        .run(
                            redis::cmd("DEL")
                                .arg(self.index_key(&r.successor))
                                .query_async::<()>(&mut c),
                        )
                        .await;
                }
                Ok(reply)
            }
        }
    }
}

#[async_trait::async_trait]
impl RefreshTokenStore for RedisStore {
    async fn create(&self, family: Family, first: TokenRecord) -> Result<(), StoreError> {
        let mut c = self.connection.clone();
        let gone = family.absolute_expiry.saturating_add(RETENTION_MS);
        let index = Index::new(gone, &family.id.0);
        let scripts = scripts();
        let mut add = scripts
            .add_to_subject
            .key(self.subject_key(&family.subject));
        add.arg(&family.id.0).arg(gone);
        let mut create = scripts.create_family.key(self.family_key(&family.id.0));
        create
            .key(self.token_key(&family.id.0, &first.hash))
            .arg(&family.subject)
            .arg(&family.client_id)
            .arg(family.created_at)
            .arg(family.absolute_expiry)
            .arg(family.idle_expiry)
            .arg(family.last_used_at)
            .arg(first.generation)
            .arg(first.issued_at)
            .arg(gone);
        // In this order, each step only once the one before is stored: the subject's set
        // first (so revoking a subject reaches the family), the family last (so a token
        // is never usable before it can be revoked).
        self.run(add.invoke_async::<()>(&mut c)).await?;
        self.run(
            redis::cmd("SET")
                .arg(self.index_key(&first.hash))
                .arg(&index.raw)
                .arg("PXAT")
                .arg(gone)
                .query_async::<()>(&mut c),
        )
        .await?;
        self.run(create.invoke_async::<()>(&mut c)).await
    }

    async fn rotate(&self, r: RotateRequest) -> Result<RotateOutcome, StoreError> {
        let reply = self.rotate_call(&r).await?;
        let kind = reply.first().map(Vec::as_slice).unwrap_or_default();
        let family = || Self::family_from(&reply[2..9], &reply[1]);
        match kind {
            b"unknown" => Ok(RotateOutcome::Unknown),
            b"revoked" => Ok(RotateOutcome::Revoked),
            b"expired" => Ok(RotateOutcome::Expired),
            b"rotated" if reply.len() >= 9 => Ok(RotateOutcome::Rotated { family: family()? }),
            b"reuse" if reply.len() >= 9 => Ok(RotateOutcome::ReuseDetected { family: family()? }),
            b"retried" if reply.len() >= 11 => Ok(RotateOutcome::Retried {
                family: family()?,
                successor: parse_hex(&reply[9])
                    .ok_or_else(|| StoreError::corrupt("a stored token hash"))?,
                sealed_successor: reply[10].clone(),
            }),
            b"corrupt" => Err(StoreError::corrupt("a stored token index")),
            _ => Err(StoreError::corrupt("the rotation script's reply")),
        }
    }

    async fn revoke_token(
        &self,
        hash: TokenHash,
        now: u64,
    ) -> Result<Option<FamilyId>, StoreError> {
        let Some(index) = self.index(&hash).await? else {
            return Ok(None);
        };
        let mut c = self.connection.clone();
        let mut invocation = scripts()
            .revoke_by_token
            .key(self.token_key(&index.family, &hash));
        invocation.key(self.family_key(&index.family)).arg(now);
        let known: i64 = self.run(invocation.invoke_async(&mut c)).await?;
        Ok((known == 1).then_some(FamilyId(index.family)))
    }

    async fn revoke_family(&self, family: &FamilyId, now: u64) -> Result<bool, StoreError> {
        // Already revoked counts as done; only a missing family is "no".
        Ok(self.revoke_family_id(&family.0, now).await? >= 0)
    }

    async fn revoke_subject(&self, subject: &str, now: u64) -> Result<usize, StoreError> {
        // One script per family: on a cluster, families live in different slots.
        let mut revoked = 0;
        for id in self.family_ids(subject).await? {
            revoked += usize::from(self.revoke_family_id(&id, now).await? == 1);
        }
        Ok(revoked)
    }

    async fn families(&self, subject: &str) -> Result<Vec<Family>, StoreError> {
        let mut c = self.connection.clone();
        let ids = self.family_ids(subject).await?;
        let mut out = Vec::new();
        for id in ids {
            let fields: Vec<Option<Vec<u8>>> = self
                .run(
                    scripts()
                        .read_family
                        .key(self.family_key(&id))
                        .invoke_async(&mut c),
                )
                .await?;
            if fields.iter().any(Option::is_none) {
                continue; // expired meanwhile, or never finished being created
            }
            let fields: Vec<Vec<u8>> = fields.into_iter().flatten().collect();
            out.push(Self::family_from(&fields, id.as_bytes())?);
        }
        out.sort_by_key(|f| f.created_at);
        Ok(out)
    }

    async fn cleanup(&self, _now: u64) -> Result<usize, StoreError> {
        // Every record carries a PEXPIREAT a day after its family's absolute expiry: Redis
        // removes them itself, without a scan.
        Ok(0)
    }
}
