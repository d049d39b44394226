//! An outside review of the shared token cache, each finding reproduced before its fix:
//! credentials of two home tenants sharing a record, a slow refresh overwriting a
//! challenge's answer, `forget`, a failing lock holder while Redis holds a valid token,
//! colliding keys, oversized or wrongly typed records, and a refresher whose caller
//! gave up.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use keel_resilience::ErrorClass;
use keel_testkit::RedisServer;
use keel_token_manager::SealingKeys;
use keel_token_manager::client::{
    AccessToken, CachingProvider, SharedTokenCache, TokenError, TokenFuture, TokenProvider,
    TokenRequest,
};
use tokio::sync::Semaphore;

fn keys() -> SealingKeys {
    SealingKeys::new(&[(1, &[42u8; 32])]).unwrap()
}

async fn connection(server: &RedisServer) -> redis::aio::ConnectionManager {
    redis::aio::ConnectionManager::new(redis::Client::open(server.url()).unwrap())
        .await
        .unwrap()
}

fn graph() -> TokenRequest {
    TokenRequest::new(["https://graph.microsoft.com/.default"])
}

/// A provider with a name and an identity (as a credential has), counting its requests;
/// requests without claims wait for the gate when there is one, or fail when failing.
#[derive(Clone)]
struct Named {
    name: &'static str,
    identity: Option<&'static str>,
    requests: Arc<AtomicU64>,
    gate: Option<Arc<Semaphore>>,
    failing: bool,
    lifetime: Duration,
    delay: Duration,
}

impl Named {
    fn new(name: &'static str) -> Self {
        Self {
            name,
            identity: None,
            requests: Arc::default(),
            gate: None,
            failing: false,
            lifetime: Duration::from_secs(3600),
            delay: Duration::ZERO,
        }
    }

    fn count(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }
}

impl TokenProvider for Named {
    fn token<'a>(&'a self, request: &'a TokenRequest) -> TokenFuture<'a> {
        Box::pin(async move {
            let n = self.requests.fetch_add(1, Ordering::SeqCst) + 1;
            let challenged = request.claims_json().is_some();
            if !challenged && let Some(gate) = &self.gate {
                gate.acquire().await.unwrap().forget();
            }
            tokio::time::sleep(self.delay).await;
            if self.failing {
                return Err(TokenError::failed(
                    "entra",
                    ErrorClass::Transient,
                    std::io::Error::other("503"),
                ));
            }
            let kind = if challenged { "answer" } else { "plain" };
            Ok(AccessToken::new(
                format!("{}-{kind}#{n}", self.name),
                self.lifetime,
            ))
        })
    }

    fn identity(&self) -> Option<String> {
        self.identity.map(str::to_owned)
    }
}

async fn shared(server: &RedisServer, provider: Named) -> SharedTokenCache<Named> {
    SharedTokenCache::new(provider, connection(server).await, keys(), "app-id")
}

fn secret(result: Result<AccessToken, TokenError>) -> String {
    result.unwrap().secret().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_of_two_home_tenants_never_share_a_record() {
    let server = RedisServer::start().unwrap();
    let mut a = Named::new("tenant-a");
    a.identity = Some("https://login.microsoftonline.com/tenant-a/oauth2/v2.0/token|app-id");
    let mut b = Named::new("tenant-b");
    b.identity = Some("https://login.microsoftonline.com/tenant-b/oauth2/v2.0/token|app-id");
    let a = shared(&server, a).await;
    let b = shared(&server, b).await;
    assert_eq!(secret(a.token(&graph()).await), "tenant-a-plain#1");
    assert_eq!(secret(b.token(&graph()).await), "tenant-b-plain#1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_plain_refresh_never_overwrites_a_challenge_answer() {
    let server = RedisServer::start().unwrap();
    let gate = Arc::new(Semaphore::new(0));
    let mut provider = Named::new("app");
    provider.gate = Some(gate.clone());
    let b = shared(&server, provider.clone()).await;
    let a = shared(&server, provider.clone()).await;
    let reader = shared(&server, Named::new("reader")).await;
    let pending = tokio::spawn(async move { b.token(&graph()).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let challenged = graph().claims(r#"{"access_token":{"acrs":{"essential":true,"value":"c1"}}}"#);
    let answer = secret(a.token(&challenged).await);
    assert_eq!(secret(reader.token(&graph()).await), answer);
    gate.add_permits(1);
    // The older refresh's caller gets what Redis keeps, the answer, too.
    assert_eq!(secret(pending.await.unwrap()), answer);
    assert_eq!(
        secret(reader.token(&graph()).await),
        answer,
        "the refresh that began before the challenge did not replace its answer"
    );
}

#[tokio::test(start_paused = true)]
async fn the_memory_cache_keeps_a_challenge_answer_over_an_older_refresh() {
    let gate = Arc::new(Semaphore::new(1));
    let mut provider = Named::new("app");
    provider.gate = Some(gate.clone());
    let cache = CachingProvider::new(provider);
    let first = secret(cache.token(&graph()).await);
    tokio::time::advance(Duration::from_secs(3301)).await;
    assert_eq!(secret(cache.token(&graph()).await), first); // a refresh starts, held
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    let challenged = graph().claims(r#"{"access_token":{"acrs":{"essential":true,"value":"c1"}}}"#);
    let answer = secret(cache.token(&challenged).await);
    tokio::time::advance(Duration::from_millis(10)).await;
    gate.add_permits(1);
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert_eq!(secret(cache.token(&graph()).await), answer);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forget_drops_the_shared_token_for_every_instance() {
    let server = RedisServer::start().unwrap();
    let provider = Named::new("app");
    let a = shared(&server, provider.clone()).await;
    let cache = CachingProvider::new(a.clone());
    assert_eq!(secret(cache.token(&graph()).await), "app-plain#1");
    a.forget(&graph()).await.unwrap();
    cache.clear();
    assert_eq!(secret(cache.token(&graph()).await), "app-plain#2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_holder_whose_provider_fails_serves_the_valid_shared_token() {
    let server = RedisServer::start().unwrap();
    let mut short = Named::new("ok");
    short.lifetime = Duration::from_secs(4);
    let warm = shared(&server, short).await;
    assert_eq!(secret(warm.token(&graph()).await), "ok-plain#1");
    tokio::time::sleep(Duration::from_millis(2300)).await; // due, still valid
    let mut down = Named::new("down");
    down.failing = true;
    let cold = shared(&server, down.clone()).await;
    for _ in 0..3 {
        assert_eq!(secret(cold.token(&graph()).await), "ok-plain#1");
    }
    assert_eq!(
        down.count(),
        1,
        "the lock is kept: one failing request, not one per call"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scope_named_like_a_separator_does_not_collide() {
    let server = RedisServer::start().unwrap();
    let provider = Named::new("app");
    let cache = shared(&server, provider.clone()).await;
    let x = TokenRequest::new(["Mail.Read", "capabilities"]).client_capabilities(["cp1"]);
    let y = TokenRequest::new(["Mail.Read"]).client_capabilities(["capabilities", "cp1"]);
    assert_ne!(secret(cache.token(&x).await), secret(cache.token(&y).await));
    assert_eq!(provider.count(), 2);
}

fn record_key(server: &RedisServer) -> String {
    let mut c = redis::Client::open(server.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let keys: Vec<String> = redis::cmd("KEYS").arg("keel:tok:*").query(&mut c).unwrap();
    keys.into_iter().find(|k| !k.ends_with(":lock")).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_or_wrongly_typed_records_are_replaced() {
    let server = RedisServer::start().unwrap();
    let provider = Named::new("app");
    let cache = shared(&server, provider.clone()).await;
    cache.token(&graph()).await.unwrap();
    let key = record_key(&server);
    let mut c = redis::Client::open(server.url())
        .unwrap()
        .get_connection()
        .unwrap();
    redis::cmd("HSET")
        .arg(&key)
        .arg("sealed")
        .arg(vec![b'x'; 70 * 1024])
        .query::<()>(&mut c)
        .unwrap();
    for _ in 0..3 {
        cache.token(&graph()).await.unwrap();
    }
    assert_eq!(cache.stats().fallbacks, 0);
    assert_eq!(provider.count(), 2, "replaced once, then read");
    redis::cmd("DEL").arg(&key).query::<()>(&mut c).unwrap();
    redis::cmd("SET")
        .arg(&key)
        .arg("junk")
        .query::<()>(&mut c)
        .unwrap();
    for _ in 0..3 {
        cache.token(&graph()).await.unwrap();
    }
    assert_eq!(cache.stats().fallbacks, 0);
    assert_eq!(provider.count(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_whose_caller_gave_up_still_lands_for_the_others() {
    let server = RedisServer::start().unwrap();
    let mut slow = Named::new("slow");
    slow.delay = Duration::from_millis(600);
    let a = shared(&server, slow.clone()).await;
    let b = shared(&server, slow.clone()).await;
    let _ = tokio::time::timeout(Duration::from_millis(100), a.token(&graph())).await;
    let started = std::time::Instant::now();
    assert_eq!(secret(b.token(&graph()).await), "slow-plain#1");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(slow.count(), 1);
}

// ---- Second review.

/// Plain requests wait on the gate (when there is one) and answer `plain-<n>`; a claims
/// request `name:ms` answers `name`, living `ms`.
#[derive(Clone)]
struct Scripted {
    gate: Option<Arc<Semaphore>>,
    plain: Arc<AtomicU64>,
    lifetime: Duration,
}

impl Scripted {
    fn new(gate: Option<Arc<Semaphore>>, lifetime: Duration) -> Self {
        Self {
            gate,
            plain: Arc::default(),
            lifetime,
        }
    }
}

impl TokenProvider for Scripted {
    fn token<'a>(&'a self, request: &'a TokenRequest) -> TokenFuture<'a> {
        Box::pin(async move {
            if let Some(claims) = request.claims_json() {
                let (name, ms) = claims.split_once(':').unwrap();
                return Ok(AccessToken::new(
                    name.to_owned(),
                    Duration::from_millis(ms.parse().unwrap()),
                ));
            }
            let n = self.plain.fetch_add(1, Ordering::SeqCst) + 1;
            if let Some(gate) = &self.gate {
                gate.acquire().await.unwrap().forget();
            }
            Ok(AccessToken::new(format!("plain-{n}"), self.lifetime))
        })
    }
}

async fn until(mut condition: impl FnMut() -> bool) {
    for _ in 0..500 {
        if condition() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("condition not met");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_in_flight_does_not_write_back_a_forgotten_token() {
    let server = RedisServer::start().unwrap();
    let gate = Arc::new(Semaphore::new(0));
    let old = Scripted::new(Some(gate.clone()), Duration::from_secs(3600));
    let a = SharedTokenCache::new(old.clone(), connection(&server).await, keys(), "app");
    let a2 = a.clone();
    let inflight = tokio::spawn(async move { a2.token(&graph()).await });
    let calls = old.plain.clone();
    until(|| calls.load(Ordering::SeqCst) == 1).await;
    a.forget(&graph()).await.unwrap();
    gate.add_permits(1);
    inflight.await.unwrap().unwrap();
    let fresh = Scripted::new(None, Duration::from_secs(3600));
    let b = SharedTokenCache::new(fresh.clone(), connection(&server).await, keys(), "app");
    assert_eq!(secret(b.token(&graph()).await), "plain-1");
    assert_eq!(
        fresh.plain.load(Ordering::SeqCst),
        1,
        "B asked its own provider: the forgotten token did not come back"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_challenge_answer_survives_an_old_refresh_across_expiry_and_forget() {
    for forget in [false, true] {
        let server = RedisServer::start().unwrap();
        let gate = Arc::new(Semaphore::new(0));
        let p = Scripted::new(Some(gate.clone()), Duration::from_secs(3600));
        let a = SharedTokenCache::new(p.clone(), connection(&server).await, keys(), "app");
        let c = SharedTokenCache::new(p.clone(), connection(&server).await, keys(), "app");
        c.token(&graph().claims("answer0:1200")).await.unwrap();
        tokio::time::sleep(Duration::from_millis(700)).await; // due
        let a2 = a.clone();
        let inflight = tokio::spawn(async move { a2.token(&graph()).await });
        let calls = p.plain.clone();
        until(|| calls.load(Ordering::SeqCst) == 1).await;
        if forget {
            c.forget(&graph()).await.unwrap();
        } else {
            tokio::time::sleep(Duration::from_millis(700)).await; // expired
        }
        c.token(&graph().claims("answer1:600000")).await.unwrap();
        gate.add_permits(1);
        // The old refresh answers with what Redis keeps: the newer answer.
        assert_eq!(
            secret(inflight.await.unwrap()),
            "answer1",
            "forget: {forget}"
        );
        let d = SharedTokenCache::new(
            Scripted::new(None, Duration::from_secs(1)),
            connection(&server).await,
            keys(),
            "app",
        );
        assert_eq!(
            secret(d.token(&graph()).await),
            "answer1",
            "forget: {forget}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_evicted_slot_does_not_forget_its_challenge_answer() {
    let gate = Arc::new(Semaphore::new(0));
    let p = Scripted::new(Some(gate.clone()), Duration::from_secs(3600));
    let cache = CachingProvider::new(p.clone()).max_entries(1);
    cache.token(&graph().claims("c0:300")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let c2 = cache.clone();
    let inflight = tokio::spawn(async move { c2.token(&graph()).await });
    let calls = p.plain.clone();
    until(|| calls.load(Ordering::SeqCst) == 1).await;
    cache
        .token(&TokenRequest::new(["https://vault.azure.net/.default"]).claims("v:600000"))
        .await
        .unwrap();
    cache.token(&graph().claims("c1:600000")).await.unwrap();
    gate.add_permits(1);
    inflight.await.unwrap().unwrap();
    assert_eq!(secret(cache.token(&graph()).await), "c1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backoff_lock_lives_no_longer_than_the_token_it_protects() {
    let server = RedisServer::start().unwrap();
    let mut good = Named::new("good");
    good.lifetime = Duration::from_secs(2);
    let b = shared(&server, good.clone())
        .await
        .lock_for(Duration::from_secs(6));
    b.token(&graph()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut failing = Named::new("down");
    failing.failing = true;
    let a = shared(&server, failing)
        .await
        .lock_for(Duration::from_secs(6));
    assert_eq!(secret(a.token(&graph()).await), "good-plain#1");
    tokio::time::sleep(Duration::from_millis(700)).await; // the shared token expired
    let started = std::time::Instant::now();
    assert_eq!(secret(b.token(&graph()).await), "good-plain#2");
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_epoch_values_are_reset_and_sharing_goes_on() {
    let server = RedisServer::start().unwrap();
    for bad in [
        "-1",
        "1e300",
        "inf",
        "nan",
        "18446744073709551616",
        "9.3e18",
        "x",
    ] {
        let provider = Named::new("app");
        let cache = shared(&server, provider.clone()).await;
        cache.forget(&graph()).await.unwrap();
        cache.token(&graph()).await.unwrap();
        let key = record_key(&server);
        let mut c = redis::Client::open(server.url())
            .unwrap()
            .get_connection()
            .unwrap();
        redis::cmd("SET")
            .arg(format!("{key}:e"))
            .arg(bad)
            .query::<()>(&mut c)
            .unwrap();
        let before = provider.count();
        for _ in 0..3 {
            cache.token(&graph()).await.unwrap();
        }
        assert_eq!(cache.stats().fallbacks, 0, "{bad}");
        assert_eq!(provider.count(), before, "{bad}: still shared");
    }
}

#[test]
fn identities_tell_principals_apart_or_say_nothing() {
    use keel_token_manager::client::{
        Authority, AuthorizationCodeClient, ManagedIdentityCredential, ManagedIdentitySource,
        ProviderChain, SignedInUsers, from_fn,
    };
    let imds = || ManagedIdentitySource::Imds {
        endpoint: ManagedIdentityCredential::IMDS_ENDPOINT.into(),
    };
    let system = ManagedIdentityCredential::new(imds(), None).unwrap();
    assert_eq!(
        system.identity(),
        None,
        "a system identity cannot be told apart here"
    );
    let assigned = ManagedIdentityCredential::new(imds(), Some("mi-1".into())).unwrap();
    assert!(assigned.identity().unwrap().contains("mi-1"));
    let anonymous =
        from_fn(|_: &TokenRequest| async { Ok(AccessToken::new("x", Duration::from_secs(1))) });
    let chain = ProviderChain::new().then(anonymous).then(assigned);
    assert_eq!(chain.identity(), None, "an anonymous provider in a chain");
    let client = |id: &str| {
        AuthorizationCodeClient::new(
            Authority::AzurePublic,
            "contoso.onmicrosoft.com",
            id,
            "https://app.example/callback",
            None,
        )
        .unwrap()
    };
    let grant = |rt: &str| {
        keel_token_manager::client::read_token_grant(
            200,
            Some("application/json"),
            None,
            format!(r#"{{"access_token":"a","token_type":"Bearer","expires_in":60,"refresh_token":"{rt}"}}"#).as_bytes(),
        )
        .unwrap()
    };
    let one = SignedInUsers::new(client("app-1"), SealingKeys::generate(1).unwrap());
    let two = SignedInUsers::new(client("app-2"), SealingKeys::generate(1).unwrap());
    one.keep("alice", &grant("rt-1")).unwrap();
    two.keep("alice", &grant("rt-1")).unwrap();
    let first = one.user("alice").identity().unwrap();
    assert_ne!(first, two.user("alice").identity().unwrap(), "two clients");
    one.sign_out("alice");
    one.keep("alice", &grant("rt-9")).unwrap();
    assert_ne!(
        first,
        one.user("alice").identity().unwrap(),
        "a new sign-in"
    );
}
