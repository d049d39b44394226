//! Refresh-token rotation on every store (memory, and a real redis-server from the
//! testkit): chains, reuse detection, the grace
//! period, concurrency, lifetimes, revocation, sessions and cleanup.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use keel_resilience::clock::ManualClock;
use keel_testkit::{PostgresServer, RedisCluster, RedisServer};
use keel_token_manager::{
    MemoryStore, PostgresStore, RedisStore, RefreshConfig, RefreshError, RefreshTokenStore,
    RefreshTokens, SealingKeys,
};

/// Where the families live for one test.
enum Backend {
    Memory,
    Redis(RedisServer),
    RedisCluster(RedisCluster),
    Postgres(PostgresServer),
}

fn pool(server: &PostgresServer) -> deadpool_postgres::Pool {
    let mut config = deadpool_postgres::Config::new();
    config.url = Some(server.url());
    config.connect_timeout = Some(Duration::from_secs(2));
    config.pool = Some(deadpool_postgres::PoolConfig {
        max_size: 16,
        timeouts: deadpool_postgres::Timeouts {
            wait: Some(Duration::from_secs(5)),
            create: Some(Duration::from_secs(2)),
            recycle: Some(Duration::from_secs(2)),
        },
        ..Default::default()
    });
    config
        .create_pool(
            Some(deadpool_postgres::Runtime::Tokio1),
            tokio_postgres::NoTls,
        )
        .unwrap()
}

type Engine = RefreshTokens<Arc<dyn RefreshTokenStore>>;

impl Backend {
    /// An engine on a manual clock, for tests of lifetimes and the grace period.
    async fn clocked(&self, config: RefreshConfig) -> (Engine, ManualClock) {
        let clock = ManualClock::starting_now();
        (self.engine(config).await.clock(clock.clone()), clock)
    }

    async fn engine(&self, config: RefreshConfig) -> Engine {
        let store: Arc<dyn RefreshTokenStore> = match self {
            Backend::Memory => Arc::new(MemoryStore::new()),
            Backend::Redis(server) => {
                let client = redis::Client::open(server.url()).unwrap();
                let connection = redis::aio::ConnectionManager::new(client).await.unwrap();
                Arc::new(RedisStore::new(connection))
            }
            Backend::RedisCluster(cluster) => {
                let client = redis::cluster::ClusterClient::builder(cluster.urls())
                    .connection_timeout(Duration::from_secs(1))
                    .response_timeout(Duration::from_secs(1))
                    .build()
                    .unwrap();
                Arc::new(RedisStore::new(
                    client.get_async_connection().await.unwrap(),
                ))
            }
            Backend::Postgres(server) => {
                let store = PostgresStore::new(pool(server));
                store.migrate().await.unwrap();
                Arc::new(store)
            }
        };
        RefreshTokens::new(store, SealingKeys::generate(1).unwrap(), config).unwrap()
    }
}

macro_rules! every_store {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Backend::Memory).await;
                }
            )*
        }
        mod redis_store {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let server = keel_testkit::RedisServer::start().unwrap();
                    super::$name(super::Backend::Redis(server)).await;
                }
            )*
        }
        mod redis_cluster_store {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let cluster = tokio::task::spawn_blocking(|| keel_testkit::RedisCluster::start(3))
                        .await
                        .unwrap()
                        .unwrap();
                    super::$name(super::Backend::RedisCluster(cluster)).await;
                }
            )*
        }
        mod postgres_store {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let server = keel_testkit::PostgresServer::start().unwrap();
                    super::$name(super::Backend::Postgres(server)).await;
                }
            )*
        }
    };
}

every_store!(
    a_chain_rotates_and_reuse_revokes_the_whole_family,
    a_retry_within_the_grace_period_gets_the_same_successor,
    two_hundred_concurrent_rotations_leave_exactly_one_successor,
    lifetimes_idle_and_absolute_are_enforced_and_rotation_does_not_extend_them,
    revocation_sessions_and_cleanup,
    logout_with_a_rotated_token_signs_the_thief_out,
    a_session_without_an_idle_limit_rotates,
    subjects_with_hash_tag_and_separator_characters_stay_apart,
    a_logout_racing_the_thiefs_rotations_still_ends_the_session,
);

fn strict() -> RefreshConfig {
    RefreshConfig::default().grace_period(Duration::ZERO)
}

async fn a_chain_rotates_and_reuse_revokes_the_whole_family(backend: Backend) {
    let tokens = backend.engine(strict()).await;
    let first = tokens.issue("user-1", "web").await.unwrap();
    assert_eq!(first.token.len(), 43);
    assert!(!format!("{first:?}").contains(&first.token));
    let mut chain = vec![first.clone()];
    for _ in 0..5 {
        let next = tokens.rotate(&chain.last().unwrap().token).await.unwrap();
        assert_eq!(next.family, first.family);
        assert!(!next.retried);
        chain.push(next);
    }
    let distinct: HashSet<&str> = chain.iter().map(|t| t.token.as_str()).collect();
    assert_eq!(distinct.len(), 6, "every rotation mints a new token");
    tokio::time::sleep(Duration::from_millis(5)).await;
    // An old token comes back: reuse. The family is revoked, the current token too.
    let reuse = tokens.rotate(&chain[2].token).await.unwrap_err();
    assert!(
        matches!(&reuse, RefreshError::ReuseDetected { family } if family == &first.family),
        "{reuse}"
    );
    assert_eq!(reuse.oauth_error(), "invalid_grant");
    assert!(matches!(
        tokens.rotate(&chain[5].token).await,
        Err(RefreshError::Revoked)
    ));
    assert!(tokens.sessions("user-1").await.unwrap().is_empty());
}

async fn a_retry_within_the_grace_period_gets_the_same_successor(backend: Backend) {
    let (tokens, clock) = backend
        .clocked(RefreshConfig::default().grace_period(Duration::from_secs(10)))
        .await;
    let a = tokens.issue("user-1", "web").await.unwrap();
    let b = tokens.rotate(&a.token).await.unwrap();
    let b_again = tokens.rotate(&a.token).await.unwrap();
    assert_eq!(b_again.token, b.token, "the same successor, not a new one");
    assert!(b_again.retried);
    // Once the successor itself is used, the old token is reuse even within the grace.
    let c = tokens.rotate(&b.token).await.unwrap();
    assert_ne!(c.token, b.token);
    assert!(matches!(
        tokens.rotate(&a.token).await,
        Err(RefreshError::ReuseDetected { .. })
    ));

    // After the grace period, a retry is reuse.
    let d = tokens.issue("user-2", "web").await.unwrap();
    tokens.rotate(&d.token).await.unwrap();
    clock.advance(Duration::from_millis(9_999));
    assert!(
        tokens.rotate(&d.token).await.unwrap().retried,
        "still within"
    );
    clock.advance(Duration::from_millis(1));
    assert!(matches!(
        tokens.rotate(&d.token).await,
        Err(RefreshError::ReuseDetected { .. })
    ));
}

async fn two_hundred_concurrent_rotations_leave_exactly_one_successor(backend: Backend) {
    let tokens = Arc::new(backend.engine(RefreshConfig::default()).await);
    let first = tokens.issue("user-1", "web").await.unwrap();
    let mut tasks = Vec::new();
    for _ in 0..200 {
        let tokens = tokens.clone();
        let token = first.token.clone();
        tasks.push(tokio::spawn(async move { tokens.rotate(&token).await }));
    }
    let mut successors = HashSet::new();
    let mut retried = 0;
    for task in tasks {
        let next = task.await.unwrap().unwrap();
        retried += usize::from(next.retried);
        successors.insert(next.token);
    }
    assert_eq!(successors.len(), 1, "exactly one successor");
    assert_eq!(retried, 199);
    let successor = successors.into_iter().next().unwrap();
    assert!(
        tokens.rotate(&successor).await.is_ok(),
        "the successor is current"
    );
}

async fn lifetimes_idle_and_absolute_are_enforced_and_rotation_does_not_extend_them(
    backend: Backend,
) {
    let (idle, clock) = backend
        .clocked(strict().idle_lifetime(Some(Duration::from_secs(3_600))))
        .await;
    let t = idle.issue("u", "c").await.unwrap();
    clock.advance(Duration::from_secs(3_599));
    let t = idle.rotate(&t.token).await.unwrap();
    // Rotation renews the idle limit (not the absolute one).
    clock.advance(Duration::from_secs(3_599));
    let t = idle.rotate(&t.token).await.unwrap();
    clock.advance(Duration::from_secs(3_600));
    assert!(matches!(
        idle.rotate(&t.token).await,
        Err(RefreshError::Expired)
    ));

    let (absolute, clock) = backend
        .clocked(
            strict()
                .absolute_lifetime(Duration::from_secs(24 * 3_600))
                .idle_lifetime(Some(Duration::from_secs(8 * 3_600))),
        )
        .await;
    let mut t = absolute.issue("u", "c").await.unwrap();
    let expires_at = t.expires_at;
    for _ in 0..3 {
        clock.advance(Duration::from_secs(7 * 3_600));
        t = absolute.rotate(&t.token).await.unwrap();
        assert_eq!(
            t.expires_at, expires_at,
            "rotation does not extend the session"
        );
    }
    clock.advance(Duration::from_secs(3 * 3_600));
    let last = absolute.rotate(&t.token).await;
    assert!(matches!(last, Err(RefreshError::Expired)), "{last:?}");
}

async fn revocation_sessions_and_cleanup(backend: Backend) {
    let expires_by_itself = matches!(backend, Backend::Redis(_) | Backend::RedisCluster(_));
    let tokens = backend.engine(strict()).await;
    let laptop = tokens.issue("user-1", "web").await.unwrap();
    let phone = tokens.issue("user-1", "mobile").await.unwrap();
    let tablet = tokens.issue("user-1", "tablet").await.unwrap();
    let other = tokens.issue("user-2", "web").await.unwrap();
    let sessions = tokens.sessions("user-1").await.unwrap();
    let clients: HashSet<&str> = sessions.iter().map(|s| s.client_id.as_str()).collect();
    assert_eq!(clients, HashSet::from(["web", "mobile", "tablet"]));

    // RFC 7009: revoking an unknown or malformed token succeeds.
    tokens.revoke("not-a-token").await.unwrap();
    tokens.revoke(&"A".repeat(43)).await.unwrap();

    // Revoking a token ends its session: the current token and every other one.
    let laptop_next = tokens.rotate(&laptop.token).await.unwrap();
    tokens.revoke(&laptop_next.token).await.unwrap();
    for token in [&laptop.token, &laptop_next.token] {
        assert!(matches!(
            tokens.rotate(token).await,
            Err(RefreshError::Revoked)
        ));
    }
    assert!(tokens.revoke_family(&phone.family).await.unwrap());
    assert!(
        tokens.revoke_family(&phone.family).await.unwrap(),
        "revoking twice is fine"
    );
    assert!(
        !tokens
            .revoke_family(&keel_token_manager::store::FamilyId::new("nope"))
            .await
            .unwrap()
    );
    assert!(matches!(
        tokens.rotate(&phone.token).await,
        Err(RefreshError::Revoked)
    ));
    let live: Vec<String> = tokens
        .sessions("user-1")
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.client_id)
        .collect();
    assert_eq!(live, ["tablet"], "only the tablet's session is still live");

    assert_eq!(tokens.revoke_subject("user-1").await.unwrap(), 1);
    assert!(tokens.sessions("user-1").await.unwrap().is_empty());
    assert!(matches!(
        tokens.rotate(&tablet.token).await,
        Err(RefreshError::Revoked)
    ));
    if expires_by_itself {
        // Redis expires records by itself (a day after the session's absolute end);
        // revoked sessions answer "revoked" until then.
        assert_eq!(tokens.cleanup().await.unwrap(), 0);
        assert!(matches!(
            tokens.rotate(&phone.token).await,
            Err(RefreshError::Revoked)
        ));
    } else {
        assert_eq!(tokens.cleanup().await.unwrap(), 3);
        assert!(matches!(
            tokens.rotate(&phone.token).await,
            Err(RefreshError::Unknown)
        ));
    }
    assert!(tokens.rotate(&other.token).await.is_ok());
    assert!(matches!(
        tokens.rotate("garbage").await,
        Err(RefreshError::Unknown)
    ));
}

/// The review's scenario: a thief rotates a stolen token v0 into v1, then logs out with
/// v0 hoping to cut the link between them, so that the victim's later use of v0 reads as
/// "revoked" instead of reuse and v1 lives on. Revoking any token of a session ends the
/// session: v1 is dead, and so is everything else of that family.
async fn logout_with_a_rotated_token_signs_the_thief_out(backend: Backend) {
    for grace in [Duration::ZERO, Duration::from_secs(10)] {
        let tokens = backend
            .engine(RefreshConfig::default().grace_period(grace))
            .await;
        let victim = format!("victim-{}", grace.as_secs());
        let v0 = tokens.issue(&victim, "web").await.unwrap();
        let v1 = tokens.rotate(&v0.token).await.unwrap(); // the thief
        tokens.revoke(&v0.token).await.unwrap(); // the thief's "logout"
        assert!(
            matches!(tokens.rotate(&v1.token).await, Err(RefreshError::Revoked)),
            "the thief's successor must die with the session (grace {grace:?})"
        );
        assert!(matches!(
            tokens.rotate(&v0.token).await,
            Err(RefreshError::Revoked)
        ));
        assert!(tokens.sessions(&victim).await.unwrap().is_empty());
        // A second session of the same user is not touched.
        let other = tokens.issue(&victim, "mobile").await.unwrap();
        tokens.revoke(&v1.token).await.unwrap();
        assert!(tokens.rotate(&other.token).await.is_ok());
    }
}

/// `RefreshConfig::idle_lifetime(None)` is documented ("no idle limit"): the store gets
/// `idle_ms = u64::MAX`, and a rotation must not overflow on it (PostgreSQL computed
/// `p_now + p_idle` in BIGINT: "bigint out of range" on every rotation).
async fn a_session_without_an_idle_limit_rotates(backend: Backend) {
    let tokens = backend.engine(strict().idle_lifetime(None)).await;
    let first = tokens.issue("user-1", "web").await.unwrap();
    let second = tokens.rotate(&first.token).await.unwrap();
    assert_eq!(second.expires_at, first.expires_at);
    let third = tokens.rotate(&second.token).await.unwrap();
    let sessions = tokens.sessions("user-1").await.unwrap();
    assert_eq!(sessions.len(), 1);
    assert_eq!(
        sessions[0].expires_at, third.expires_at,
        "the absolute end bounds it"
    );
}

/// The thief keeps rotating (with retries inside the grace period) while the victim
/// logs out with the token the thief started from: whatever the interleaving, once the
/// logout has returned, nothing the thief holds rotates.
async fn a_logout_racing_the_thiefs_rotations_still_ends_the_session(backend: Backend) {
    let tokens = Arc::new(
        backend
            .engine(RefreshConfig::default().grace_period(Duration::from_secs(10)))
            .await,
    );
    for _ in 0..5 {
        let v0 = tokens.issue("victim", "web").await.unwrap();
        let thief = {
            let tokens = tokens.clone();
            let v0 = v0.token.clone();
            tokio::spawn(async move {
                let mut held = vec![v0];
                for _ in 0..30 {
                    let last = held.last().unwrap().clone();
                    match tokens.rotate(&last).await {
                        Ok(next) => {
                            // A retry of the same token inside the grace period.
                            let _ = tokens.rotate(&last).await;
                            held.push(next.token);
                        }
                        Err(_) => break,
                    }
                }
                held
            })
        };
        tokio::time::sleep(Duration::from_millis(3)).await;
        tokens.revoke(&v0.token).await.unwrap();
        let held = thief.await.unwrap();
        for token in &held {
            let result = tokens.rotate(token).await;
            assert!(
                matches!(result, Err(RefreshError::Revoked)),
                "after logout: {result:?}"
            );
        }
    }
}

/// Subjects are the service's (user ids, e-mail addresses): `{`, `}` and `:` in them
/// neither break the Redis keys (hash tags, separators) nor mix two users up.
async fn subjects_with_hash_tag_and_separator_characters_stay_apart(backend: Backend) {
    let tokens = backend.engine(strict()).await;
    let subjects = ["{a}", "a}{b", "{", "}", "x:i:y", "s:{t}", "", "{}"];
    let mut issued = Vec::new();
    for subject in subjects {
        let first = tokens.issue(subject, "web").await.unwrap();
        let next = tokens.rotate(&first.token).await.unwrap();
        issued.push((subject, first, next));
    }
    for (subject, _, _) in &issued {
        assert_eq!(
            tokens.sessions(subject).await.unwrap().len(),
            1,
            "{subject:?}"
        );
    }
    assert_eq!(tokens.revoke_subject("{a}").await.unwrap(), 1);
    tokens.revoke(&issued[1].1.token).await.unwrap();
    for (subject, _, next) in &issued {
        let result = tokens.rotate(&next.token).await;
        if ["{a}", "a}{b"].contains(subject) {
            assert!(matches!(result, Err(RefreshError::Revoked)), "{subject:?}");
        } else {
            assert!(result.is_ok(), "{subject:?}: {result:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_revoked_alone_by_an_older_version_counts_as_reuse() {
    // Before migration 3, revoking a token marked only that token (state 2). Such a
    // token presented while its family lives must revoke the family.
    let backend = Backend::Postgres(PostgresServer::start().unwrap());
    let tokens = backend.engine(strict()).await;
    let t = tokens.issue("user-1", "web").await.unwrap();
    let Backend::Postgres(server) = &backend else {
        unreachable!()
    };
    let sql = format!(
        "UPDATE keel_refresh_tokens SET state = 2 WHERE family_id = '{}'",
        t.family
    );
    tokio::task::block_in_place(|| server.psql(&sql)).unwrap();
    assert!(matches!(
        tokens.rotate(&t.token).await,
        Err(RefreshError::ReuseDetected { .. })
    ));
    assert!(tokens.sessions("user-1").await.unwrap().is_empty());
}

#[test]
fn sealing_keys_rotate_and_bind_values_to_their_record() {
    let old = [7u8; 32];
    let new = [9u8; 32];
    let before = SealingKeys::new(&[(1, &old)]).unwrap();
    let sealed = before.seal(b"successor-token", b"ctx").unwrap();
    let after = SealingKeys::new(&[(2, &new), (1, &old)]).unwrap();
    assert_eq!(after.open(&sealed, b"ctx").unwrap(), b"successor-token");
    assert_eq!(
        after.seal(b"x", b"ctx").unwrap()[0],
        2,
        "new values use the new key"
    );
    let dropped = SealingKeys::new(&[(2, &new)]).unwrap();
    assert!(dropped.open(&sealed, b"ctx").is_err());
    let mut tampered = sealed;
    *tampered.last_mut().unwrap() ^= 1;
    assert!(after.open(&tampered, b"ctx").is_err());
    assert!(SealingKeys::new(&[(1, &[0u8; 16])]).is_err());
    assert!(!format!("{after:?}").contains('7'), "no key bytes in Debug");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_crash_mid_rotation_leaves_the_family_before_or_after_never_between() {
    let mut server = PostgresServer::start().unwrap();
    let store = Arc::new(PostgresStore::new(pool(&server)));
    assert_eq!(
        store.migrate().await.unwrap(),
        3,
        "a fresh database gets the schema"
    );
    assert_eq!(
        store.migrate().await.unwrap(),
        0,
        "migrating again changes nothing"
    );
    let tokens = RefreshTokens::new(
        store.clone(),
        SealingKeys::generate(1).unwrap(),
        RefreshConfig::default().grace_period(Duration::from_secs(60)),
    )
    .unwrap();
    let first = tokens.issue("user-1", "web").await.unwrap();
    let mut current = first.token.clone();
    let mut rotated = 0;
    let mut failed = 0;
    let started = std::time::Instant::now();
    let mut killed = false;
    while started.elapsed() < Duration::from_secs(3) {
        if !killed && rotated >= 30 {
            server.stop(); // as a crash: the connection drops mid-transaction
            killed = true;
        }
        match tokens.rotate(&current).await {
            Ok(next) => {
                current = next.token;
                rotated += 1;
            }
            Err(RefreshError::Store(_)) => {
                failed += 1;
                if killed {
                    break;
                }
            }
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert!(
        killed && failed >= 1,
        "the crash was seen ({rotated} rotations, {failed} failures)"
    );
    tokio::task::block_in_place(|| server.restart()).unwrap();
    let active = server
        .psql(&format!(
            "SELECT count(*) FROM keel_refresh_tokens WHERE family_id = '{}' AND state = 0",
            first.family
        ))
        .unwrap();
    assert_eq!(
        active.trim(),
        "1",
        "exactly one current token after the crash"
    );
    let dangling = server
        .psql(
            "SELECT count(*) FROM keel_refresh_tokens t WHERE t.state = 1 AND NOT EXISTS \
             (SELECT 1 FROM keel_refresh_tokens s WHERE s.hash = t.successor)",
        )
        .unwrap();
    assert_eq!(dangling.trim(), "0", "no rotation half-written");
    // The client's last token still works: either it is current, or its rotation
    // committed without an answer and the grace period returns that successor.
    let mut resumed = None;
    for _ in 0..50 {
        match tokens.rotate(&current).await {
            Ok(next) => {
                resumed = Some(next);
                break;
            }
            Err(RefreshError::Store(_)) => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(e) => panic!("after the crash: {e}"),
        }
    }
    assert!(
        resumed.is_some(),
        "the pool reconnected and the session goes on"
    );
}

thread_local! {
    /// What the global test subscriber wrote for this thread, while capturing.
    static CAPTURED: std::cell::RefCell<Option<Vec<u8>>> = const { std::cell::RefCell::new(None) };
}

/// A `MakeWriter` that keeps what each thread writes in that thread's buffer (when it
/// captures), so concurrent tests of the same binary never mix their events.
#[derive(Clone, Copy, Default)]
struct ThreadCapture;

impl std::io::Write for ThreadCapture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        CAPTURED.with(|c| {
            if let Some(out) = c.borrow_mut().as_mut() {
                out.extend_from_slice(buf);
            }
        });
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for ThreadCapture {
    type Writer = Self;
    fn make_writer(&'a self) -> Self {
        *self
    }
}

/// Runs `work` on this thread and returns what the audit events it caused wrote. A
/// global subscriber (installed once) sees every callsite, so no other test that hit a
/// callsite first can leave it cached as uninteresting (a thread-local subscriber lost
/// events that way under plain `cargo test`).
fn capture_events(work: impl FnOnce()) -> String {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        let subscriber = tracing_subscriber::fmt()
            .with_writer(ThreadCapture)
            .with_max_level(tracing::Level::INFO)
            .finish();
        tracing::subscriber::set_global_default(subscriber)
            .expect("no other global subscriber in this test binary");
    });
    CAPTURED.with(|c| *c.borrow_mut() = Some(Vec::new()));
    work();
    let bytes = CAPTURED.with(|c| c.borrow_mut().take()).unwrap_or_default();
    String::from_utf8(bytes).unwrap()
}

#[test]
fn audit_events_name_what_happened_and_never_a_token_or_hash() {
    use keel_token_manager::{AccessTokenIssuer, Algorithm, Grant, KeyRing, SigningKey, Validator};

    let mut secrets = Vec::new();
    let log = capture_events(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let keys = KeyRing::new(SigningKey::generate("k1", Algorithm::ES256).unwrap());
            let access = AccessTokenIssuer::new(keys.clone(), "iss", "aud")
                .issue(&Grant::new("user-1", "web"))
                .unwrap();
            secrets.push(access.token.clone());
            let _ = Validator::new(keys, "iss", "other-aud").validate(&access.token);

            let tokens = RefreshTokens::new(
                MemoryStore::new(),
                SealingKeys::generate(1).unwrap(),
                strict(),
            )
            .unwrap();
            let first = tokens.issue("user-1", "web").await.unwrap();
            let second = tokens.rotate(&first.token).await.unwrap();
            tokio::time::sleep(Duration::from_millis(2)).await;
            let _ = tokens.rotate(&first.token).await; // reuse
            tokens.revoke_family(&first.family).await.unwrap();
            for t in [&first.token, &second.token] {
                secrets.push(t.clone());
                let hash = keel_token_manager::hash_token(t);
                secrets.push(hash.as_bytes().iter().map(|b| format!("{b:02x}")).collect());
            }
        });
    });
    for event in [
        "access_token_issued",
        "access_token_rejected",
        "refresh_token_issued",
        "refresh_token_rotated",
        "refresh_token_reuse_detected",
        "refresh_token_revoked",
    ] {
        assert!(log.contains(event), "no {event} in:\n{log}");
    }
    assert!(log.contains("wrong_audience"));
    for secret in &secrets {
        assert!(
            !log.contains(secret.as_str()),
            "a token or hash leaked into the audit log"
        );
        assert!(
            !log.contains(&secret[..16]),
            "part of a token or hash leaked"
        );
    }
}

/// A cluster node started by hand as a replica (the testkit's clusters have none);
/// killed on drop.
struct Replica {
    port: u16,
    child: std::process::Child,
    _dir: tempfile_dir::Dir,
}

mod tempfile_dir {
    /// A private folder removed on drop.
    pub(crate) struct Dir(pub(crate) std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port_pair() -> u16 {
    loop {
        let a = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = a.local_addr().unwrap().port();
        if port < 55_000 && std::net::TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

async fn command(port: u16, args: &[&str]) -> redis::Value {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query_async(&mut c).await.unwrap()
}

async fn text(port: u16, args: &[&str]) -> String {
    match command(port, args).await {
        redis::Value::BulkString(b) => String::from_utf8(b).unwrap(),
        redis::Value::VerbatimString { text, .. } => text,
        redis::Value::SimpleString(s) => s,
        other => panic!("{other:?}"),
    }
}

/// Adds a replica to the master that owns `slot`; returns it (and the master's port)
/// once the whole cluster lists it.
async fn add_replica(cluster: &RedisCluster, slot: u16) -> (Replica, u16) {
    let port = free_port_pair();
    let dir = std::env::temp_dir().join(format!("keel-replica-{port}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let child = std::process::Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args([
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
        ])
        .args(["--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(&dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let replica = Replica {
        port,
        child,
        _dir: tempfile_dir::Dir(dir),
    };
    let seed = cluster.nodes()[0].port();
    for _ in 0..600 {
        if redis::Client::open(format!("redis://127.0.0.1:{port}"))
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .is_ok()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The master of the slot, from CLUSTER NODES.
    let nodes = text(seed, &["CLUSTER", "NODES"]).await;
    let line: Vec<&str> = nodes
        .lines()
        .find(|line| {
            line.contains("master")
                && line.split(' ').skip(8).any(|range| {
                    let (a, b) = range.split_once('-').unwrap_or((range, range));
                    (a.parse::<u16>().unwrap()..=b.parse::<u16>().unwrap()).contains(&slot)
                })
        })
        .unwrap()
        .split(' ')
        .collect();
    let master = line[0].to_owned();
    let master_port: u16 = line[1]
        .split('@')
        .next()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    command(port, &["CLUSTER", "MEET", "127.0.0.1", &seed.to_string()]).await;
    for _ in 0..1200 {
        if text(port, &["CLUSTER", "NODES"]).await.contains(&master) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    command(port, &["CLUSTER", "REPLICATE", &master]).await;
    let listed = format!(":{port}@");
    for _ in 0..1200 {
        let synced = text(port, &["INFO", "replication"])
            .await
            .contains("master_link_status:up");
        let mut known = true;
        for node in cluster.nodes() {
            known &= text(node.port(), &["CLUSTER", "NODES"])
                .await
                .lines()
                .any(|l| l.contains(&listed) && l.contains("slave") && l.contains(&master));
        }
        if synced && known {
            return (replica, master_port);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the replica did not join");
}

/// Closes the primary's replication links; the replica logs in again by itself.
async fn drop_replica_links(master: &mut redis::aio::MultiplexedConnection) {
    let _: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("replica")
        .query_async(master)
        .await
        .unwrap();
}

/// Waits until the primary's one replica has acknowledged every write.
async fn wait_for_replica(master: &mut redis::aio::MultiplexedConnection) {
    // Up to a minute: under `cargo test` this runs beside the other cluster tests, and a
    // loaded 2-core machine takes a while to sync a new replica.
    for round in 1..=300 {
        let acked: i64 = redis::cmd("WAIT")
            .arg(1)
            .arg(200)
            .query_async(master)
            .await
            .unwrap();
        if acked == 1 {
            return;
        }
        // A link that came up while the primary refused logins can stay half set up
        // (seen: "online", listening port 0, its acknowledged offset stuck): drop it so
        // the replica logs in again from scratch.
        if round % 25 == 0 {
            drop_replica_links(master).await;
        }
    }
    let info: String = redis::cmd("INFO")
        .arg("replication")
        .query_async(master)
        .await
        .unwrap_or_default();
    panic!("the replica does not acknowledge; the primary says:\n{info}");
}

/// A cluster client configured to read from replicas (`read_routing_strategy`, which
/// redis-rs offers and read-heavy deployments turn on) sends plain GET and SMEMBERS to a
/// replica. Replication is asynchronous: a replica may lack the latest writes for a
/// moment, or for as long as its link to the primary is down (it serves stale data by
/// default). Here the link is cut for real (the primary stops accepting the replica's
/// login). A logout, or a "sign out everywhere", that looks the token or the subject up
/// on such a replica finds nothing and revokes nothing: once the replica catches up, the
/// session works again. The reads that decide a revocation must go to the primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_read_from_replicas_revocation_still_reaches_the_primary() {
    let cluster = tokio::task::spawn_blocking(|| RedisCluster::start(3))
        .await
        .unwrap()
        .unwrap();
    let seed = cluster.nodes()[0].port();
    // Every key of this store in one slot, so one replica covers them all.
    let prefix = "keel:{rt}:";
    let slot = match command(seed, &["CLUSTER", "KEYSLOT", prefix]).await {
        redis::Value::Int(n) => u16::try_from(n).unwrap(),
        other => panic!("{other:?}"),
    };
    let (replica, master_port) = add_replica(&cluster, slot).await;
    let mut ports: Vec<u16> = cluster.nodes().iter().map(|n| n.port()).collect();
    ports.push(replica.port);
    for port in &ports {
        command(
            *port,
            &["ACL", "SETUSER", "app", "on", ">pw", "~*", "&*", "+@all"],
        )
        .await;
    }
    // Cut replication: the primary refuses the replica's (password-less) login.
    let master = redis::Client::open(format!("redis://127.0.0.1:{master_port}")).unwrap();
    let mut master = master.get_multiplexed_async_connection().await.unwrap();
    let run = |args: &[&str]| {
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        cmd
    };
    // A write the replica has seen first: a replica with replication offset 0 is left out
    // of CLUSTER SLOTS, so clients would not read from it.
    let _: () = run(&["SET", "keel:{rt}:warm", "1"])
        .query_async(&mut master)
        .await
        .unwrap();
    wait_for_replica(&mut master).await;
    // Every primary lists the replica in CLUSTER SLOTS (where clients learn of it).
    let mut listed = false;
    for _ in 0..1200 {
        let mut all = true;
        for port in &ports[..3] {
            let slots = format!("{:?}", command(*port, &["CLUSTER", "SLOTS"]).await);
            all &= slots.contains(&format!("int({})", replica.port));
        }
        listed = all;
        if listed {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(listed, "the replica is in CLUSTER SLOTS");

    let _: () = run(&["ACL", "SETUSER", "default", "off"])
        .query_async(&mut master)
        .await
        .unwrap();
    drop_replica_links(&mut master).await;

    let urls: Vec<String> = ports[..3]
        .iter()
        .map(|p| format!("redis://app:pw@127.0.0.1:{p}"))
        .collect();
    let client = redis::cluster::ClusterClient::builder(urls)
        .read_routing_strategy(redis::cluster_read_routing::RandomReplicaStrategy)
        .connection_timeout(Duration::from_secs(1))
        .response_timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let store = RedisStore::new(client.get_async_connection().await.unwrap()).prefix(prefix);
    let tokens = RefreshTokens::new(store, SealingKeys::generate(1).unwrap(), strict()).unwrap();

    let logged_out = tokens.issue("user-1", "web").await.unwrap();
    let everywhere = tokens.issue("user-3", "web").await.unwrap();
    let fresh = tokens.issue("user-2", "web").await.unwrap();
    tokens.revoke(&logged_out.token).await.unwrap();
    tokens.revoke_subject("user-3").await.unwrap();
    let mut wrong = Vec::new();
    let next = tokens.rotate(&fresh.token).await;
    if next.is_err() {
        wrong.push(format!("a token minted a moment ago read as {next:?}"));
    }

    // The link comes back; the replica catches up.
    let _: () = run(&["ACL", "SETUSER", "default", "on"])
        .query_async(&mut master)
        .await
        .unwrap();
    // A link the replica set up while logins were refused is only half set up: start a
    // fresh one.
    drop_replica_links(&mut master).await;
    let mut synced = false;
    for _ in 0..1200 {
        synced = text(replica.port, &["INFO", "replication"])
            .await
            .contains("master_link_status:up");
        if synced {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(synced, "the replica reconnected");
    wait_for_replica(&mut master).await;

    let after_logout = tokens.rotate(&logged_out.token).await;
    if !matches!(after_logout, Err(RefreshError::Revoked)) {
        wrong.push(format!(
            "logout read a lagging replica and revoked nothing: after it, {after_logout:?}"
        ));
    }
    let after = tokens.rotate(&everywhere.token).await;
    if !matches!(after, Err(RefreshError::Revoked)) {
        wrong.push(format!(
            "sign-out-everywhere read a lagging replica: after it, {after:?}"
        ));
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

/// On a cluster, a rotation writes the successor's index before its script runs. When
/// the script does not rotate (revoked, expired, reuse, a retry in the grace period),
/// that index points at nothing and, left there, lives as long as the family's records
/// (its absolute end plus a day): anyone holding a dead session's token could fill
/// Redis with them, one key per request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_rotation_that_does_not_happen_leaves_no_index_behind() {
    let cluster = tokio::task::spawn_blocking(|| RedisCluster::start(3))
        .await
        .unwrap()
        .unwrap();
    let backend = Backend::RedisCluster(cluster);
    let tokens = backend
        .engine(RefreshConfig::default().grace_period(Duration::from_secs(60)))
        .await;
    let Backend::RedisCluster(cluster) = &backend else {
        unreachable!()
    };
    let indexes = || async {
        let mut n = 0;
        for node in cluster.nodes() {
            if let redis::Value::Array(keys) = command(node.port(), &["KEYS", "keel:rt:i:*"]).await
            {
                n += keys.len();
            }
        }
        n
    };
    let v0 = tokens.issue("user-1", "web").await.unwrap();
    let v1 = tokens.rotate(&v0.token).await.unwrap();
    assert_eq!(indexes().await, 2);
    for _ in 0..5 {
        assert!(tokens.rotate(&v0.token).await.unwrap().retried);
    }
    assert_eq!(indexes().await, 2, "retries in the grace period");
    tokens.revoke(&v1.token).await.unwrap();
    for _ in 0..20 {
        assert!(matches!(
            tokens.rotate(&v1.token).await,
            Err(RefreshError::Revoked)
        ));
    }
    assert_eq!(indexes().await, 2, "rotations of a revoked session");
}

/// A store that is down fails with a transient `StoreError` whose source is the store's
/// own error (issue 13: errors keep their chain and their class).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_is_down_fails_transiently_with_its_cause() {
    use keel_resilience::{Classify, ErrorClass};
    use std::error::Error as _;
    let mut redis = RedisServer::start().unwrap();
    let mut postgres = PostgresServer::start().unwrap();
    let client = redis::Client::open(redis.url()).unwrap();
    let connection = redis::aio::ConnectionManager::new(client).await.unwrap();
    let on_redis = RefreshTokens::new(
        RedisStore::new(connection).timeout(Duration::from_millis(500)),
        SealingKeys::generate(1).unwrap(),
        RefreshConfig::default(),
    )
    .unwrap();
    let store = PostgresStore::new(pool(&postgres));
    store.migrate().await.unwrap();
    let on_postgres = RefreshTokens::new(
        store,
        SealingKeys::generate(1).unwrap(),
        RefreshConfig::default(),
    )
    .unwrap();
    let redis_token = on_redis.issue("u", "c").await.unwrap().token;
    let pg_token = on_postgres.issue("u", "c").await.unwrap().token;
    redis.stop();
    postgres.stop();
    for error in [
        on_redis.rotate(&redis_token).await.unwrap_err(),
        on_postgres.rotate(&pg_token).await.unwrap_err(),
    ] {
        let RefreshError::Store(store_error) = &error else {
            panic!("{error:?}")
        };
        assert!(
            store_error.is_unavailable() || store_error.is_timeout(),
            "{store_error:?}"
        );
        assert_eq!(error.class(), ErrorClass::Transient);
        assert_eq!(error.oauth_error(), "server_error");
        // The store's own error is one level down, not repeated in the message.
        let cause = store_error
            .source()
            .expect("the store's error is the source");
        assert!(!error.to_string().contains(&cause.to_string()), "{error}");
    }
    // Refused tokens are permanent.
    let memory = RefreshTokens::new(
        MemoryStore::new(),
        SealingKeys::generate(1).unwrap(),
        RefreshConfig::default(),
    )
    .unwrap();
    let unknown = memory.rotate("not-a-token").await.unwrap_err();
    assert_eq!(unknown.class(), ErrorClass::Permanent);
}

/// A config that cannot work is refused when the engine is built (issue 13), not
/// discovered when every session ends at once.
#[test]
fn configs_that_cannot_work_are_refused() {
    use keel_token_manager::RefreshConfigError;
    let build = |config: RefreshConfig| {
        RefreshTokens::new(
            MemoryStore::new(),
            SealingKeys::generate(1).unwrap(),
            config,
        )
        .map(|_| ())
    };
    assert_eq!(
        build(RefreshConfig::default().absolute_lifetime(Duration::ZERO)),
        Err(RefreshConfigError::AbsoluteLifetime)
    );
    assert_eq!(
        build(RefreshConfig::default().idle_lifetime(Some(Duration::ZERO))),
        Err(RefreshConfigError::IdleLifetime)
    );
    assert_eq!(
        build(
            RefreshConfig::default()
                .idle_lifetime(Some(Duration::from_secs(5)))
                .grace_period(Duration::from_secs(5))
        ),
        Err(RefreshConfigError::GracePeriod)
    );
    assert_eq!(build(RefreshConfig::default().idle_lifetime(None)), Ok(()));
}
