//! Two instances of a service sharing Redis, then PostgreSQL: one renews the
//! subscriptions (it holds the lease), the other believes their notifications too; the
//! renewer dies (its task stops, the lease is not given back) and the other takes over
//! before the subscription expires. Against the emulator and a real redis-server and
//! PostgreSQL; and the leases' own rules on each.

use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_graph_client::GraphClient;
use keel_graph_client::delta::{DeltaStore, PostgresDeltaStore, RedisDeltaStore};
use keel_graph_client::emulator::{Emulator, TenantSeed};
use keel_graph_client::webhook::{
    ClientStates, Lease, MemoryQueue, NotificationQueue, PostgresLease, RedisLease,
    SubscriptionManager, SubscriptionSpec, WebhookReceiver,
};
use keel_resilience::RedisConnection;
use keel_resilience::clock::{ManualClock, WallClock};
use keel_testkit::{PostgresServer, RedisServer};
use keel_token_manager::client::{Authority, CachingProvider, ClientSecretCredential};

const TENANT: &str = "contoso.onmicrosoft.com";

fn client(graph: &Emulator) -> GraphClient {
    let credential = ClientSecretCredential::new(
        Authority::Custom(graph.base_url().to_owned()),
        TENANT,
        "app",
        "secret",
    )
    .unwrap();
    GraphClient::builder(graph.cloud())
        .tenant("contoso", Arc::new(CachingProvider::new(credential)))
        .build()
        .unwrap()
}

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "waited 10 s for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn pool(url: &str) -> deadpool_postgres::Pool {
    let mut config = deadpool_postgres::Config::new();
    config.url = Some(url.to_owned());
    config.connect_timeout = Some(Duration::from_secs(2));
    config
        .create_pool(
            Some(deadpool_postgres::Runtime::Tokio1),
            tokio_postgres::NoTls,
        )
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_redis_one_instance_renews_and_another_takes_over_when_it_dies() {
    let redis = RedisServer::start().unwrap();
    let connection = RedisConnection::single(&redis.url()).await.unwrap();
    let store: Arc<dyn DeltaStore> = Arc::new(RedisDeltaStore::new(connection.clone(), "svc:"));
    let lease = move |name: &str| -> Arc<dyn Lease> {
        Arc::new(RedisLease::new(connection.clone(), "svc:renewer", name))
    };
    fleet(store, &lease).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_one_instance_renews_and_another_takes_over_when_it_dies() {
    let server = tokio::task::spawn_blocking(|| PostgresServer::start().unwrap())
        .await
        .unwrap();
    let pool = pool(&server.url());
    let store = PostgresDeltaStore::new(pool.clone());
    store.migrate().await.unwrap();
    let lease = move |name: &str| -> Arc<dyn Lease> {
        Arc::new(PostgresLease::new(pool.clone(), "svc:renewer", name))
    };
    fleet(Arc::new(store), &lease).await;
}

/// A lease's rules: one holder; the holder extends; another takes it only once it
/// expired; only the holder releases it.
async fn lease_rules(lease: &dyn Fn(&str) -> Arc<dyn Lease>) {
    let (a, b) = (lease("a"), lease("b"));
    assert!(a.acquire(Duration::from_millis(400)).await.unwrap());
    assert!(!b.acquire(Duration::from_millis(400)).await.unwrap());
    assert!(
        a.acquire(Duration::from_millis(400)).await.unwrap(),
        "extended"
    );
    assert!(!b.release().await.unwrap(), "not B's to release");
    assert!(!b.acquire(Duration::from_millis(400)).await.unwrap());
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(
        b.acquire(Duration::from_secs(5)).await.unwrap(),
        "expired: B takes it"
    );
    assert!(
        !a.acquire(Duration::from_secs(5)).await.unwrap(),
        "A lost it"
    );
    assert!(b.release().await.unwrap());
    assert!(a.acquire(Duration::from_secs(5)).await.unwrap());
}

#[tokio::test]
async fn leases_hold_one_holder_on_redis_and_postgres() {
    let (redis, postgres) = tokio::task::spawn_blocking(|| {
        (
            RedisServer::start().unwrap(),
            PostgresServer::start().unwrap(),
        )
    })
    .await
    .unwrap();
    let connection = RedisConnection::single(&redis.url()).await.unwrap();
    lease_rules(&move |name: &str| -> Arc<dyn Lease> {
        Arc::new(RedisLease::new(connection.clone(), "rules", name))
    })
    .await;
    let pool = pool(&postgres.url());
    PostgresDeltaStore::new(pool.clone())
        .migrate()
        .await
        .unwrap();
    lease_rules(&move |name: &str| -> Arc<dyn Lease> {
        Arc::new(PostgresLease::new(pool.clone(), "rules", name))
    })
    .await;
}

async fn fleet(store: Arc<dyn DeltaStore>, lease: &dyn Fn(&str) -> Arc<dyn Lease>) {
    let clock = ManualClock::starting_now();
    let graph = Emulator::builder()
        .tenant(
            TenantSeed::new("7b1c2a4e-0f1d-4c55-9a3e-2d6f1b0c0001", TENANT)
                .client("app", "secret", ["User.Read.All"])
                .users(10),
        )
        .clock(Arc::new(clock.clone()))
        .start()
        .await
        .unwrap();
    let instance = |name: &str| {
        let manager = SubscriptionManager::new(client(&graph), "contoso", store.clone())
            .with_clock(Arc::new(clock.clone()));
        (manager, lease(name))
    };
    let (a, lease_a) = instance("instance-a");
    let (b, lease_b) = instance("instance-b");

    // A's receiver serves the notification URL; A creates the subscription.
    let queue = Arc::new(MemoryQueue::new(100));
    let app: axum::Router = WebhookReceiver::builder(
        Arc::new(a.clone()),
        queue.clone() as Arc<dyn NotificationQueue>,
    )
    .build()
    .router("/notify");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/notify", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let created = a
        .ensure("users", &SubscriptionSpec::new("users", &url))
        .await
        .unwrap();
    let state = a.list_remote().await.unwrap()[0]["clientState"]
        .as_str()
        .unwrap()
        .to_owned();

    // A starts first and holds the lease; B follows, and learns the subscription
    // (and its clientState) from the store.
    let period = Duration::from_millis(400);
    let running_a = {
        let (a, lease) = (a.clone(), lease_a.clone());
        tokio::spawn(async move { a.run_with(lease, period).await })
    };
    tokio::time::sleep(period * 2).await;
    let running_b = {
        let (b, lease) = (b.clone(), lease_b.clone());
        tokio::spawn(async move { b.run_with(lease, period).await })
    };
    wait_for("B to learn the subscription", || {
        b.accepts(&created.id, &state)
    })
    .await;

    // Half the lifetime passes: A renews, B does not.
    clock.advance(Duration::from_secs(15 * 86_400));
    wait_for("A to renew", || a.renewals() == 1).await;
    tokio::time::sleep(period * 5).await;
    assert_eq!((a.renewals(), b.renewals()), (1, 0));

    // A dies without giving the lease back; B takes over within three periods and
    // renews the next time it is due.
    running_a.abort();
    let _ = running_a.await;
    clock.advance(Duration::from_secs(15 * 86_400));
    wait_for("B to renew", || b.renewals() == 1).await;
    assert_eq!(a.renewals(), 1);
    // Past the first expiry and the second renewal's half-life: still alive.
    assert!(clock.now() > created.expires);
    assert_eq!(graph.subscription_count(), 1);
    running_b.abort();
    // An orderly stop gives the lease back at once.
    assert!(lease_b.release().await.unwrap());
    assert!(lease_a.acquire(Duration::from_secs(5)).await.unwrap());
}
