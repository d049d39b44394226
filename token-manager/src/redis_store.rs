//! A refresh-token store on Redis: each rotation is one Lua script, so it is atomic and
//! costs one round trip; records expire by themselves a day after their family's
//! absolute expiry.
//!
//! Keys (`<prefix>` defaults to `keel:rt:`): `t:<token hash, hex>` (hash), `f:<family>`
//! (hash), `s:<subject>` (set of families), `ft:<family>` (set of token hashes). The
//! scripts name the family keys they reach from a token record, so this store is for a
//! single Redis node (or a primary with replicas), not Redis Cluster.

use std::fmt;
use std::time::Duration;

use keel_resilience::timeout::with_timeout;
use redis::Script;
use redis::aio::ConnectionManager;

use crate::store::{
    Family, FamilyId, RefreshTokenStore, RotateOutcome, RotateRequest, StoreError, TokenHash,
    TokenRecord,
};

/// Refresh-token families in Redis.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use keel_token_manager::{RedisStore, RefreshConfig, RefreshTokens, SealingKeys};
///
/// let client = redis::Client::open("redis://127.0.0.1:6379")?;
/// let store = RedisStore::new(redis::aio::ConnectionManager::new(client).await?);
/// let tokens = RefreshTokens::new(store, SealingKeys::generate(1)?, RefreshConfig::default());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisStore {
    connection: ConnectionManager,
    prefix: String,
    timeout: Duration,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

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

const ROTATE: &str = r"
local t = redis.call('HMGET', KEYS[1], 'family', 'gen', 'state', 'successor', 'at', 'sealed')
if not t[1] then return {'unknown'} end
local prefix = ARGV[6]
local fkey = prefix .. 'f:' .. t[1]
local f = redis.call('HMGET', fkey, 'subject', 'client', 'created', 'abs', 'idle', 'last', 'revoked')
if not f[1] then return {'unknown'} end
local now = tonumber(ARGV[1])
if f[7] and f[7] ~= '' then return {'revoked'} end
if now >= tonumber(f[4]) or now >= tonumber(f[5]) then return {'expired'} end
if t[3] == 'revoked' then return {'revoked'} end
if t[3] == 'active' then
  local idle = math.min(now + tonumber(ARGV[3]), tonumber(f[4]))
  redis.call('HSET', KEYS[1], 'state', 'rotated', 'successor', ARGV[4], 'at', ARGV[1], 'sealed', ARGV[5])
  redis.call('HSET', KEYS[2], 'family', t[1], 'gen', tonumber(t[2]) + 1, 'issued', ARGV[1], 'state', 'active')
  redis.call('PEXPIREAT', KEYS[2], string.format('%d', tonumber(f[4]) + tonumber(ARGV[7])))
  redis.call('SADD', prefix .. 'ft:' .. t[1], ARGV[4])
  redis.call('HSET', fkey, 'idle', string.format('%d', idle), 'last', ARGV[1])
  return {'rotated', t[1], f[1], f[2], f[3], f[4], string.format('%d', idle), ARGV[1], ''}
end
local s = redis.call('HGET', prefix .. 't:' .. t[4], 'state')
if s == 'active' and (now - tonumber(t[5])) < tonumber(ARGV[2]) then
  return {'retried', t[1], f[1], f[2], f[3], f[4], f[5], f[6], '', t[4], t[6]}
end
redis.call('HSET', fkey, 'revoked', ARGV[1])
return {'reuse', t[1], f[1], f[2], f[3], f[4], f[5], f[6], ARGV[1]}
";

const REVOKE_TOKEN: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'state', 'revoked')
return 1
";

const REVOKE_FAMILIES: &str = r"
local n = 0
for _, fkey in ipairs(KEYS) do
  local r = redis.call('HGET', fkey, 'revoked')
  if redis.call('EXISTS', fkey) == 1 and (not r or r == '') then
    redis.call('HSET', fkey, 'revoked', ARGV[1])
    n = n + 1
  end
end
return n
";

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn num(bytes: &[u8]) -> Result<u64, StoreError> {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| StoreError("a stored number is corrupt".into()))
}

impl RedisStore {
    /// A store on `connection`, with keys under `keel:rt:` and a 1 s limit per call.
    #[must_use]
    pub fn new(connection: ConnectionManager) -> Self {
        Self {
            connection,
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

    fn token_key(&self, hash: &TokenHash) -> String {
        format!("{}t:{}", self.prefix, hex(hash))
    }

    /// The ids of a subject's families.
    async fn family_ids(&self, subject: &str) -> Result<Vec<String>, StoreError> {
        let mut c = self.connection.clone();
        self.run(
            redis::cmd("SMEMBERS")
                .arg(format!("{}s:{subject}", self.prefix))
                .query_async(&mut c),
        )
        .await
    }

    fn family_key(&self, id: &FamilyId) -> String {
        format!("{}f:{}", self.prefix, id.0)
    }

    async fn run<T: redis::FromRedisValue>(
        &self,
        work: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        match with_timeout(self.timeout, work).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(StoreError(format!("Redis: {e}"))),
            Err(e) => Err(StoreError(format!("Redis: {e}"))),
        }
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
}

#[async_trait::async_trait]
impl RefreshTokenStore for RedisStore {
    async fn create(&self, family: Family, first: TokenRecord) -> Result<(), StoreError> {
        let mut c = self.connection.clone();
        let fkey = self.family_key(&family.id);
        let tkey = self.token_key(&first.hash);
        let skey = format!("{}s:{}", self.prefix, family.subject);
        let ftkey = format!("{}ft:{}", self.prefix, family.id.0);
        let mut pipe = redis::pipe();
        pipe.atomic()
            .hset_multiple(
                &fkey,
                &[
                    ("subject", family.subject.clone()),
                    ("client", family.client_id.clone()),
                    ("created", family.created_at.to_string()),
                    ("abs", family.absolute_expiry.to_string()),
                    ("idle", family.idle_expiry.to_string()),
                    ("last", family.last_used_at.to_string()),
                    ("revoked", String::new()),
                ],
            )
            .ignore()
            .hset_multiple(
                &tkey,
                &[
                    ("family", family.id.0.clone()),
                    ("gen", first.generation.to_string()),
                    ("issued", first.issued_at.to_string()),
                    ("state", "active".to_owned()),
                ],
            )
            .ignore()
            .sadd(&skey, &family.id.0)
            .ignore()
            .sadd(&ftkey, hex(&first.hash))
            .ignore();
        let gone_at = family.absolute_expiry.saturating_add(RETENTION_MS);
        for key in [&fkey, &tkey, &ftkey] {
            pipe.cmd("PEXPIREAT").arg(key).arg(gone_at).ignore();
        }
        // The subject's set lives as long as its longest session.
        pipe.cmd("PEXPIREAT")
            .arg(&skey)
            .arg(gone_at)
            .arg("GT")
            .ignore();
        pipe.cmd("PEXPIREAT")
            .arg(&skey)
            .arg(gone_at)
            .arg("NX")
            .ignore();
        self.run(pipe.query_async::<()>(&mut c)).await
    }

    async fn rotate(&self, r: RotateRequest) -> Result<RotateOutcome, StoreError> {
        static SCRIPT: std::sync::OnceLock<Script> = std::sync::OnceLock::new();
        let script = SCRIPT.get_or_init(|| Script::new(ROTATE));
        let mut c = self.connection.clone();
        let mut invocation = script.key(self.token_key(&r.presented));
        invocation
            .key(self.token_key(&r.successor))
            .arg(r.now)
            .arg(r.grace_ms)
            .arg(r.idle_ms.min(1_000_000_000_000_000))
            .arg(hex(&r.successor))
            .arg(r.sealed_successor.as_slice())
            .arg(&self.prefix)
            .arg(RETENTION_MS);
        let reply: Vec<Vec<u8>> = self.run(invocation.invoke_async(&mut c)).await?;
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
                    .ok_or_else(|| StoreError("a stored token hash is corrupt".into()))?,
                sealed_successor: reply[10].clone(),
            }),
            _ => Err(StoreError(
                "unexpected reply from the rotation script".into(),
            )),
        }
    }

    async fn revoke_token(&self, hash: TokenHash, _now: u64) -> Result<bool, StoreError> {
        let mut c = self.connection.clone();
        let script = Script::new(REVOKE_TOKEN);
        let n: i64 = self
            .run(script.key(self.token_key(&hash)).invoke_async(&mut c))
            .await?;
        Ok(n == 1)
    }

    async fn revoke_family(&self, family: &FamilyId, now: u64) -> Result<bool, StoreError> {
        let mut c = self.connection.clone();
        let script = Script::new(REVOKE_FAMILIES);
        let mut invocation = script.key(self.family_key(family));
        invocation.arg(now);
        let n: i64 = self.run(invocation.invoke_async(&mut c)).await?;
        if n == 0 {
            // Already revoked counts as done; only a missing family is "no".
            let exists: i64 = self
                .run(
                    redis::cmd("EXISTS")
                        .arg(self.family_key(family))
                        .query_async(&mut c),
                )
                .await?;
            return Ok(exists == 1);
        }
        Ok(true)
    }

    async fn revoke_subject(&self, subject: &str, now: u64) -> Result<usize, StoreError> {
        let mut c = self.connection.clone();
        let ids = self.family_ids(subject).await?;
        if ids.is_empty() {
            return Ok(0);
        }
        let script = Script::new(REVOKE_FAMILIES);
        let mut invocation = script.prepare_invoke();
        for id in &ids {
            invocation.key(self.family_key(&FamilyId(id.clone())));
        }
        invocation.arg(now);
        let n: i64 = self.run(invocation.invoke_async(&mut c)).await?;
        Ok(usize::try_from(n).unwrap_or(0))
    }

    async fn families(&self, subject: &str) -> Result<Vec<Family>, StoreError> {
        let mut c = self.connection.clone();
        let ids = self.family_ids(subject).await?;
        let mut out = Vec::new();
        for id in ids {
            let fields: Vec<Option<Vec<u8>>> = self
                .run(
                    redis::cmd("HMGET")
                        .arg(self.family_key(&FamilyId(id.clone())))
                        .arg(&[
                            "subject", "client", "created", "abs", "idle", "last", "revoked",
                        ])
                        .query_async(&mut c),
                )
                .await?;
            if fields.iter().any(Option::is_none) {
                continue; // expired meanwhile
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
