//! Refresh-token rotation on every store (memory, and a real redis-server from the
//! testkit): chains, reuse detection, the grace
//! period, concurrency, lifetimes, revocation, sessions and cleanup.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

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
                Arc::new(RedisStore::cluster(
                    client.get_async_connection().await.unwrap(),
                ))
            }
            Backend::Postgres(server) => {
                let store = PostgresStore::new(pool(server));
                store.migrate().await.unwrap();
                Arc::new(store)
            }
        };
        RefreshTokens::new(store, SealingKeys::generate(1).unwrap(), config)
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
    let tokens = backend
        .engine(RefreshConfig::default().grace_period(Duration::from_millis(300)))
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
    tokio::time::sleep(Duration::from_millis(350)).await;
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
    let idle = backend
        .engine(strict().idle_lifetime(Some(Duration::from_millis(150))))
        .await;
    let t = idle.issue("u", "c").await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(matches!(
        idle.rotate(&t.token).await,
        Err(RefreshError::Expired)
    ));

    let absolute = backend
        .engine(
            strict()
                .absolute_lifetime(Duration::from_millis(400))
                .idle_lifetime(Some(Duration::from_secs(60))),
        )
        .await;
    let mut t = absolute.issue("u", "c").await.unwrap();
    let expires_at = t.expires_at;
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        t = absolute.rotate(&t.token).await.unwrap();
        assert_eq!(
            t.expires_at, expires_at,
            "rotation does not extend the session"
        );
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
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
            .revoke_family(&keel_token_manager::store::FamilyId("nope".into()))
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
    );
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

/// A `MakeWriter` that keeps everything written.
#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Self;
    fn make_writer(&'a self) -> Self {
        self.clone()
    }
}

#[test]
fn audit_events_name_what_happened_and_never_a_token_or_hash() {
    use keel_token_manager::{AccessTokenIssuer, Algorithm, Grant, KeyRing, SigningKey, Validator};

    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(captured.clone())
        .with_max_level(tracing::Level::INFO)
        .finish();
    let mut secrets = Vec::new();
    tracing::subscriber::with_default(subscriber, || {
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
            );
            let first = tokens.issue("user-1", "web").await.unwrap();
            let second = tokens.rotate(&first.token).await.unwrap();
            tokio::time::sleep(Duration::from_millis(2)).await;
            let _ = tokens.rotate(&first.token).await; // reuse
            tokens.revoke_family(&first.family).await.unwrap();
            for t in [&first.token, &second.token] {
                secrets.push(t.clone());
                let hash = keel_token_manager::hash_token(t);
                secrets.push(hash.0.iter().map(|b| format!("{b:02x}")).collect());
            }
        });
    });
    let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
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
