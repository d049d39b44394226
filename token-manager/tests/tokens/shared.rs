//! The shared token cache on a real redis-server (and a 3-node cluster): several
//! instances make one token request, refresh once, keep tokens sealed at rest, refuse
//! altered records, keep tenants apart, and carry on when Redis is gone.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use keel_testkit::{RedisCluster, RedisServer};
use keel_token_manager::SealingKeys;
use keel_token_manager::client::{
    AccessToken, CachingProvider, SharedTokenCache, TokenFuture, TokenProvider, TokenRequest,
    from_fn,
};
use tokio::sync::Semaphore;

/// A token endpoint shared by every "instance" of a test: counts requests, names tokens
/// `<tenant>#<n>`, optionally held until the test releases it.
#[derive(Clone)]
struct Endpoint {
    requests: Arc<AtomicU64>,
    gate: Arc<Semaphore>,
    lifetime: Duration,
}

impl Endpoint {
    fn new(lifetime: Duration, held: bool) -> Self {
        Self {
            requests: Arc::default(),
            gate: Arc::new(Semaphore::new(if held {
                0
            } else {
                Semaphore::MAX_PERMITS
            })),
            lifetime,
        }
    }

    fn count(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }
}

impl TokenProvider for Endpoint {
    fn token<'a>(&'a self, request: &'a TokenRequest) -> TokenFuture<'a> {
        Box::pin(async move {
            let n = self.requests.fetch_add(1, Ordering::SeqCst) + 1;
            let _permit = self.gate.acquire().await.unwrap();
            let name = format!(
                "{}#{n}{}",
                request.tenant_id().unwrap_or("home"),
                request.claims_json().map_or("", |_| "+claims")
            );
            Ok(AccessToken::new(name, self.lifetime))
        })
    }
}

fn keys() -> SealingKeys {
    SealingKeys::new(&[(1, &[42u8; 32])]).unwrap()
}

fn graph(tenant: &str) -> TokenRequest {
    TokenRequest::new(["https://graph.microsoft.com/.default"]).tenant(tenant)
}

async fn instance(server: &RedisServer, endpoint: &Endpoint) -> SharedTokenCache<Endpoint> {
    let client = redis::Client::open(server.url()).unwrap();
    let connection = redis::aio::ConnectionManager::new(client).await.unwrap();
    SharedTokenCache::new(endpoint.clone(), connection, keys(), "app-id")
}

async fn secret(provider: &impl TokenProvider, request: &TokenRequest) -> String {
    provider.token(request).await.unwrap().secret().to_owned()
}

async fn many_callers_on_two_instances_make_one_request(
    a: SharedTokenCache<Endpoint>,
    b: SharedTokenCache<Endpoint>,
    endpoint: &Endpoint,
) {
    let (a, b) = (CachingProvider::new(a), CachingProvider::new(b));
    let mut callers = Vec::new();
    for i in 0..40 {
        let cache = if i % 2 == 0 { a.clone() } else { b.clone() };
        callers.push(tokio::spawn(async move {
            secret(&cache, &graph("contoso")).await
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    endpoint.gate.add_permits(1000);
    for caller in callers {
        assert_eq!(caller.await.unwrap(), "contoso#1");
    }
    assert_eq!(endpoint.count(), 1, "one request for both instances");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_make_one_request() {
    let server = RedisServer::start().unwrap();
    let endpoint = Endpoint::new(Duration::from_secs(3600), true);
    let (a, b) = (
        instance(&server, &endpoint).await,
        instance(&server, &endpoint).await,
    );
    many_callers_on_two_instances_make_one_request(a.clone(), b.clone(), &endpoint).await;
    let (a, b) = (a.stats(), b.stats());
    assert_eq!(a.requests + b.requests, 1);
    assert!(
        a.waits + b.waits >= 1,
        "the other instance waited: {a:?} {b:?}"
    );
    assert_eq!(a.fallbacks + b.fallbacks, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_a_cluster_make_one_request() {
    let cluster = tokio::task::spawn_blocking(|| RedisCluster::start(3))
        .await
        .unwrap()
        .unwrap();
    let endpoint = Endpoint::new(Duration::from_secs(3600), true);
    let mut instances = Vec::new();
    for _ in 0..2 {
        let client = redis::cluster::ClusterClient::builder(cluster.urls())
            .connection_timeout(Duration::from_secs(1))
            .response_timeout(Duration::from_secs(1))
            .build()
            .unwrap();
        let connection = client.get_async_connection().await.unwrap();
        instances.push(SharedTokenCache::new(
            endpoint.clone(),
            connection,
            keys(),
            "app-id",
        ));
    }
    let b = instances.pop().unwrap();
    let a = instances.pop().unwrap();
    many_callers_on_two_instances_make_one_request(a, b, &endpoint).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_is_made_by_one_instance_and_read_by_the_other() {
    let server = RedisServer::start().unwrap();
    // 4 s tokens: due for refresh at half their life.
    let endpoint = Endpoint::new(Duration::from_secs(4), false);
    let a = CachingProvider::new(instance(&server, &endpoint).await);
    let b = CachingProvider::new(instance(&server, &endpoint).await);
    assert_eq!(secret(&a, &graph("contoso")).await, "contoso#1");
    assert_eq!(secret(&b, &graph("contoso")).await, "contoso#1");
    assert_eq!(endpoint.count(), 1);
    tokio::time::sleep(Duration::from_millis(2300)).await;
    // Both are due; each still answers at once with the valid token.
    assert_eq!(secret(&a, &graph("contoso")).await, "contoso#1");
    assert_eq!(secret(&b, &graph("contoso")).await, "contoso#1");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(endpoint.count(), 2, "one refresh for both instances");
    // Soon both serve the refreshed token, and nobody asked again.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    loop {
        let (x, y) = (
            secret(&a, &graph("contoso")).await,
            secret(&b, &graph("contoso")).await,
        );
        if x == "contoso#2" && y == "contoso#2" {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{x} {y}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(endpoint.count(), 2);
}

/// The record's keys, found with SCAN (records and locks).
fn record_keys(server: &RedisServer) -> Vec<String> {
    let client = redis::Client::open(server.url()).unwrap();
    let mut connection = client.get_connection().unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("keel:tok:*")
        .query(&mut connection)
        .unwrap();
    keys.into_iter().filter(|k| !k.ends_with(":lock")).collect()
}

fn redis_cmd(server: &RedisServer, args: &[&str]) -> redis::Value {
    let client = redis::Client::open(server.url()).unwrap();
    let mut connection = client.get_connection().unwrap();
    let mut cmd = redis::cmd(args[0]);
    for arg in &args[1..] {
        cmd.arg(*arg);
    }
    cmd.query(&mut connection).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_sealed_at_rest_and_altered_records_are_never_served() {
    let server = RedisServer::start().unwrap();
    let endpoint = Endpoint::new(Duration::from_secs(3600), false);
    let shared = instance(&server, &endpoint).await;
    assert_eq!(secret(&shared, &graph("contoso")).await, "contoso#1");
    let keys = record_keys(&server);
    assert_eq!(keys.len(), 1);
    assert!(
        !keys[0].contains("contoso") && !keys[0].contains("graph"),
        "the key hides tenant and scopes: {}",
        keys[0]
    );
    let raw = format!("{:?}", redis_cmd(&server, &["HGETALL", &keys[0]]));
    assert!(!raw.contains("contoso#1"), "sealed: {raw}");
    assert_eq!(secret(&shared, &graph("contoso")).await, "contoso#1");
    assert_eq!(endpoint.count(), 1, "read back from Redis");

    // Someone with write access stretches the expiry: the seal no longer opens, so the
    // record is refetched, never served.
    let exp = match redis_cmd(&server, &["HGET", &keys[0], "exp"]) {
        redis::Value::BulkString(b) => String::from_utf8(b).unwrap(),
        other => panic!("{other:?}"),
    };
    let later = (exp.parse::<u64>().unwrap() + 86_400_000).to_string();
    redis_cmd(&server, &["HSET", &keys[0], "exp", &later]);
    assert_eq!(secret(&shared, &graph("contoso")).await, "contoso#2");
    // And the replacement is readable again.
    assert_eq!(secret(&shared, &graph("contoso")).await, "contoso#2");
    assert_eq!(endpoint.count(), 2);

    // An instance with another key ring cannot read it, and fetches its own.
    let client = redis::Client::open(server.url()).unwrap();
    let connection = redis::aio::ConnectionManager::new(client).await.unwrap();
    let stranger = SharedTokenCache::new(
        endpoint.clone(),
        connection,
        SealingKeys::new(&[(1, &[7u8; 32])]).unwrap(),
        "app-id",
    );
    assert_eq!(secret(&stranger, &graph("contoso")).await, "contoso#3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_scopes_and_namespaces_never_share_a_token() {
    let server = RedisServer::start().unwrap();
    let endpoint = Endpoint::new(Duration::from_secs(3600), false);
    let shared = instance(&server, &endpoint).await;
    assert_eq!(secret(&shared, &graph("tenant-a")).await, "tenant-a#1");
    assert_eq!(secret(&shared, &graph("tenant-b")).await, "tenant-b#2");
    assert_eq!(secret(&shared, &graph("tenant-a")).await, "tenant-a#1");
    let mail = TokenRequest::new(["Mail.Read"]).tenant("tenant-a");
    assert_eq!(secret(&shared, &mail).await, "tenant-a#3");
    let cae = graph("tenant-a").client_capabilities(["cp1"]);
    assert_eq!(secret(&shared, &cae).await, "tenant-a#4");
    let client = redis::Client::open(server.url()).unwrap();
    let connection = redis::aio::ConnectionManager::new(client).await.unwrap();
    let other_app = SharedTokenCache::new(endpoint.clone(), connection, keys(), "other-app-id");
    assert_eq!(secret(&other_app, &graph("tenant-a")).await, "tenant-a#5");
    assert_eq!(endpoint.count(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claims_challenge_goes_to_the_provider_and_replaces_the_shared_token() {
    let server = RedisServer::start().unwrap();
    let endpoint = Endpoint::new(Duration::from_secs(3600), false);
    let a = instance(&server, &endpoint).await;
    let b = instance(&server, &endpoint).await;
    assert_eq!(secret(&a, &graph("contoso")).await, "contoso#1");
    let challenged =
        graph("contoso").claims(r#"{"access_token":{"acrs":{"essential":true,"value":"c1"}}}"#);
    assert_eq!(secret(&a, &challenged).await, "contoso#2+claims");
    // The other instance reads the answer to the challenge, not the refused token.
    assert_eq!(secret(&b, &graph("contoso")).await, "contoso#2+claims");
    assert_eq!(endpoint.count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_tokens_still_come_from_the_provider() {
    let mut server = RedisServer::start().unwrap();
    let endpoint = Endpoint::new(Duration::from_secs(3600), false);
    let shared = instance(&server, &endpoint)
        .await
        .timeout(Duration::from_millis(300));
    assert_eq!(secret(&shared, &graph("contoso")).await, "contoso#1");
    server.stop();
    assert_eq!(secret(&shared, &graph("contoso")).await, "contoso#2");
    assert!(shared.stats().fallbacks >= 1);
    // Back: shared again.
    server.restart().unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let fallbacks = shared.stats().fallbacks;
        assert!(
            secret(&shared, &graph("contoso"))
                .await
                .starts_with("contoso#")
        );
        if shared.stats().fallbacks == fallbacks {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_refresher_frees_the_lock_for_the_next_instance() {
    let server = RedisServer::start().unwrap();
    let failures = Arc::new(AtomicU64::new(0));
    let f = failures.clone();
    let failing = from_fn(move |_: &TokenRequest| {
        f.fetch_add(1, Ordering::SeqCst);
        async {
            Err(keel_token_manager::client::TokenError::failed(
                "down",
                keel_resilience::ErrorClass::Transient,
                std::io::Error::other("503"),
            ))
        }
    });
    let client = redis::Client::open(server.url()).unwrap();
    let connection = redis::aio::ConnectionManager::new(client).await.unwrap();
    let broken = SharedTokenCache::new(failing, connection, keys(), "app-id");
    assert!(broken.token(&graph("contoso")).await.is_err());
    // The next instance does not wait for a lock nobody holds.
    let endpoint = Endpoint::new(Duration::from_secs(3600), false);
    let healthy = instance(&server, &endpoint).await;
    let started = tokio::time::Instant::now();
    assert_eq!(secret(&healthy, &graph("contoso")).await, "contoso#1");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(healthy.stats().waits, 0);
}
