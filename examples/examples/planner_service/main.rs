//! Keel's flagship: a Planner sync service built from every crate.
//!
//! On embedded defaults (nothing installed) it starts the Graph emulator with a seeded
//! tenant (60 users, 8 groups, 8 plans, 352 tasks), gets its tokens through
//! keel-token-manager's client, keeps a copy of every plan's tasks and of the users
//! current by delta (tasks polled — Graph sends no Planner notifications —, users
//! driven by change notifications the emulator posts to the service's own webhook
//! receiver), serves them through a two-level cache with Graph's resilience around it,
//! issues its own session tokens (login, refresh with rotation, logout, JWKS), writes
//! task changes back with their ETag (a stale one is a 412 with the current version), and
//! keeps what Graph refuses for good in a dead-letter queue an admin route lists and
//! replays. `/health/*`, `/metrics`, JSON logs with correlation ids.
//!
//! With `REDIS_URL` and `DATABASE_URL` its state moves to Redis and PostgreSQL, and
//! instances share it; with `GRAPH_TENANT`, `GRAPH_CLIENT_ID`, `GRAPH_CLIENT_SECRET` and
//! `GRAPH_NOTIFICATION_URL` it talks to a real tenant (see `config.rs`).
//!
//! ```text
//! cargo run -p keel-examples --example planner_service            # serves on 127.0.0.1:3000
//! cargo run -p keel-examples --example planner_service -- --smoke # the scripted scenario; non-zero on a failure
//! ```

// An executable's report goes to stdout.
#![allow(clippy::print_stdout)]

mod app;
mod auth;
mod config;
mod graph;
mod load;
mod smoke;

use std::sync::Arc;
use std::time::Duration;

use keel_cache_layers::{Cache, RedisL2};
use keel_graph_client::delta::{DeltaStore, MemoryDeltaStore, PostgresDeltaStore, RedisDeltaStore};
use keel_graph_client::emulator::{DEFAULT_ROLES, Emulator, TenantSeed};
use keel_graph_client::webhook::{
    KeepCurrent, Lease, MemoryQueue, NotificationQueue, NotificationWorker, PostgresLease,
    RedisLease, RedisQueue, SoleLease, SubscriptionManager, SubscriptionSpec, WebhookReceiver,
};
use keel_graph_client::{Cloud, GraphClient};
use keel_health::{CheckResult, HealthRegistry, Registration, Tag, check_fn, health_router};
use keel_observability::{CorrelationLayer, LogConfig, PrometheusMetrics, RedLayer};
use keel_resilience::RedisConnection;
use keel_resilience::dead_letter::{DeadLetterQueue, MemoryDeadLetters, PostgresDeadLetters};
use keel_token_manager::client::{Authority, CachingProvider, ClientSecretCredential};
use keel_token_manager::{Algorithm, MemoryStore, RefreshTokenStore, SealingKeys, SigningKey};

use crate::config::Config;
use crate::graph::{GraphSide, TENANT};

type Error = Box<dyn std::error::Error + Send + Sync>;

/// The emulated tenant.
const EMULATED: &str = "contoso.onmicrosoft.com";

/// One running instance.
pub(crate) struct Instance {
    pub(crate) base: String,
    pub(crate) app: app::App,
    pub(crate) manager: SubscriptionManager,
    pub(crate) subscription_id: String,
    health: HealthRegistry,
    stop: Arc<tokio::sync::Notify>,
    server: tokio::task::JoinHandle<()>,
}

impl Instance {
    /// Drains (readiness fails, `period` for load balancers to notice), then stops
    /// accepting and lets the requests under way finish (10 s at most).
    pub(crate) async fn shut_down(self, period: Duration) {
        self.health.drain(period).await;
        self.stop.notify_one();
        if tokio::time::timeout(Duration::from_secs(10), self.server)
            .await
            .is_err()
        {
            tracing::warn!("requests still running after 10 s; stopping anyway");
        }
    }
}

/// What instances of one deployment share: Graph, the session keys.
#[derive(Clone)]
pub(crate) struct Shared {
    pub(crate) emulator: Option<Arc<Emulator>>,
    pub(crate) auth: Arc<auth::Auth>,
}

fn postgres_pool(url: &str) -> Result<deadpool_postgres::Pool, Error> {
    let mut config = deadpool_postgres::Config::new();
    config.url = Some(url.to_owned());
    config.connect_timeout = Some(Duration::from_secs(2));
    Ok(config.create_pool(
        Some(deadpool_postgres::Runtime::Tokio1),
        tokio_postgres::NoTls,
    )?)
}

/// The session keys and store, shared by the instances of one process.
pub(crate) async fn shared(config: &Config) -> Result<Shared, Error> {
    let emulator = match &config.tenant {
        Some(_) => None,
        None => Some(Arc::new(
            Emulator::builder()
                .tenant(
                    TenantSeed::new("7b1c2a4e-0f1d-4c55-9a3e-2d6f1b0c0001", EMULATED)
                        .client(
                            "planner-service",
                            "planner-secret",
                            DEFAULT_ROLES.iter().copied(),
                        )
                        .users(60)
                        .groups(8)
                        .extra_tasks(40),
                )
                .start()
                .await?,
        )),
    };
    let store: Arc<dyn RefreshTokenStore> = if let Some(url) = &config.redis_url {
        Arc::new(keel_token_manager::RedisStore::new(
            RedisConnection::single(url).await?,
        ))
    } else if let Some(url) = &config.database_url {
        let store = keel_token_manager::PostgresStore::new(postgres_pool(url)?);
        store.migrate().await?;
        Arc::new(store)
    } else {
        Arc::new(MemoryStore::new())
    };
    let key = match &config.signing_key_pem {
        Some(pem) => SigningKey::from_pem("planner", Algorithm::EdDSA, pem)?,
        None => SigningKey::generate("planner", Algorithm::EdDSA)?,
    };
    let sealing = match &config.sealing_key_hex {
        Some(hex) => {
            let bytes = (0..hex.len())
                .step_by(2)
                .map(|i| {
                    hex.get(i..i + 2)
                        .and_then(|b| u8::from_str_radix(b, 16).ok())
                })
                .collect::<Option<Vec<u8>>>()
                .filter(|b| b.len() == 32)
                .ok_or("KEEL_SEALING_KEY: 64 hex digits")?;
            SealingKeys::new(&[(1, &bytes)])?
        }
        None => SealingKeys::generate(1)?,
    };
    let auth = auth::Auth::new(key, sealing, store, config.demo_logins)
        .map_err(|e| -> Error { e.to_string().into() })?;
    Ok(Shared {
        emulator,
        auth: Arc::new(auth),
    })
}

fn graph_client(config: &Config, shared: &Shared) -> Result<GraphClient, Error> {
    Ok(match (&config.tenant, &shared.emulator) {
        (Some(real), _) => {
            let credential = ClientSecretCredential::new(
                Authority::AzurePublic,
                &real.tenant,
                &real.client_id,
                &real.client_secret,
            )?;
            GraphClient::builder(Cloud::Global)
                .tenant(TENANT, Arc::new(CachingProvider::new(credential)))
                .build()?
        }
        (None, Some(emulator)) => {
            let credential = ClientSecretCredential::new(
                Authority::Custom(emulator.base_url().to_owned()),
                EMULATED,
                "planner-service",
                "planner-secret",
            )?;
            GraphClient::builder(emulator.cloud())
                .tenant(TENANT, Arc::new(CachingProvider::new(credential)))
                .build()?
        }
        (None, None) => return Err("no Graph: set GRAPH_TENANT or run with the emulator".into()),
    })
}

/// Starts one instance on `config` (its stores, feeds, receiver, renewal, routes).
pub(crate) async fn start(
    config: &Config,
    shared: &Shared,
    metrics: &PrometheusMetrics,
    poll: Duration,
) -> Result<Instance, Error> {
    let client = graph_client(config, shared)?;
    let redis = match &config.redis_url {
        Some(url) => Some(RedisConnection::single(url).await?),
        None => None,
    };
    let postgres = config
        .database_url
        .as_deref()
        .map(postgres_pool)
        .transpose()?;

    // Delta links and subscriptions: PostgreSQL, else Redis, else memory.
    let store: Arc<dyn DeltaStore> = match (&postgres, &redis) {
        (Some(pool), _) => {
            let store = PostgresDeltaStore::new(pool.clone());
            store.migrate().await?;
            Arc::new(store)
        }
        (None, Some(redis)) => Arc::new(RedisDeltaStore::new(redis.clone(), "planner:")),
        (None, None) => Arc::new(MemoryDeltaStore::new()),
    };
    // Dead letters: PostgreSQL, else memory.
    let dead_letters = match &postgres {
        Some(pool) => {
            let letters = PostgresDeadLetters::new(pool.clone(), "planner-writes");
            letters.migrate().await?;
            DeadLetterQueue::new("planner-writes", letters)
        }
        None => DeadLetterQueue::new("planner-writes", MemoryDeadLetters::new()),
    };
    // The caches: L1, and Redis as L2 and backplane.
    let mut tasks =
        Cache::<graph::TaskView>::builder("planner-tasks").entry_options(graph::entry_options());
    let mut lists =
        Cache::<Vec<String>>::builder("planner-lists").entry_options(graph::entry_options());
    if let Some(url) = &config.redis_url {
        tasks = tasks.l2(RedisL2::single(url)?);
        lists = lists.l2(RedisL2::single(url)?);
    }
    let mut side =
        GraphSide::new(client.clone(), tasks.build()?, lists.build()?, dead_letters).await?;
    side.start_feeds(&store, &config.instance, poll);
    let users_feed = side.users_feed.clone().ok_or("no users feed")?;
    let feeds: Vec<_> = side
        .feeds
        .iter()
        .cloned()
        .chain(side.users_feed.clone())
        .collect();
    let side = Arc::new(side);

    // Notifications: receiver → queue (a Redis stream, else memory) → worker.
    let manager = SubscriptionManager::new(client.clone(), TENANT, store.clone());
    manager.resume().await?;
    let queue: Arc<dyn NotificationQueue> = match &redis {
        Some(redis) => Arc::new(
            RedisQueue::new(redis.clone(), "planner:notifications", &config.instance).await?,
        ),
        None => Arc::new(MemoryQueue::new(10_000)),
    };
    let receiver = WebhookReceiver::builder(Arc::new(manager.clone()), queue.clone()).build();
    let notification_letters = match &postgres {
        Some(pool) => DeadLetterQueue::new(
            "planner-notifications",
            PostgresDeadLetters::new(pool.clone(), "planner-notifications"),
        ),
        None => DeadLetterQueue::new("planner-notifications", MemoryDeadLetters::new()),
    };
    let worker = NotificationWorker::new(queue, notification_letters);
    let keep = KeepCurrent::new(users_feed).subscriptions(manager.clone());
    tokio::spawn(async move { worker.run(move |n| keep.handle(n)).await });

    // Health: ready once the copy is loaded (warning while a feed fails: the cached copy
    // is served); Redis and PostgreSQL shown.
    let loaded = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let copy_loaded = loaded.clone();
    let mut health = HealthRegistry::builder()
        .cache_ttl(Duration::from_secs(2))
        .service("planner-service", env!("CARGO_PKG_VERSION"))
        .register(
            Registration::new(
                "graph-copy",
                check_fn(move || {
                    let loading = !copy_loaded.load(std::sync::atomic::Ordering::Acquire);
                    let failing = feeds
                        .iter()
                        .filter(|f| f.status().last_error.is_some())
                        .count();
                    async move {
                        if loading {
                            CheckResult::fail("loading the copy of Graph")
                        } else if failing == 0 {
                            CheckResult::pass()
                        } else {
                            CheckResult::warn(format!(
                                "{failing} delta feeds failing; serving the cached copy"
                            ))
                        }
                    }
                }),
            )
            .tags([Tag::Ready]),
        );
    // Redis and PostgreSQL are shown, not required for readiness once running: while
    // they are down the service serves from memory and Graph (degraded). They must be
    // reachable at start.
    let shown = || [Tag::Custom("dependencies".into())];
    if let Some(url) = &config.redis_url {
        health = health.register(
            Registration::new(
                "redis",
                keel_health::checks::RedisCheck::new(redis::Client::open(url.as_str())?),
            )
            .tags(shown()),
        );
    }
    if let Some(pool) = &postgres {
        health = health.register(
            Registration::new(
                "postgres",
                keel_health::checks::PostgresCheck::new(pool.clone()),
            )
            .tags(shown()),
        );
    }

    let app = app::App {
        graph: side.clone(),
        auth: shared.auth.clone(),
    };
    let health = health.build();
    // Probes and metrics stay out of the RED metrics (and the SLO).
    let router = app::router(app.clone())
        .merge(receiver.router("/graph/notify"))
        .layer(RedLayer::new())
        .merge(health_router(health.clone(), keel_health::Details::Shown))
        .merge(metrics.router())
        .layer(CorrelationLayer::new());
    let listener = tokio::net::TcpListener::bind(config.addr).await?;
    let base = format!("http://{}", listener.local_addr()?);
    let stop = Arc::new(tokio::sync::Notify::new());
    let stopping = stop.clone();
    let server = tokio::spawn(async move {
        let shutdown = async move { stopping.notified().await };
        if let Err(e) = axum::serve(listener, router)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!(error = %e, "server stopped");
        }
    });

    // The users' subscription (Graph runs its handshake against the receiver now),
    // renewed by whichever instance holds the lease.
    let url = config
        .notification_url
        .clone()
        .unwrap_or_else(|| format!("{base}/graph/notify"));
    let subscription = manager
        .ensure(
            "users",
            &SubscriptionSpec::new("users", &url).lifecycle_url(&url),
        )
        .await?;
    let lease: Arc<dyn Lease> = match (&redis, &postgres) {
        (Some(redis), _) => Arc::new(RedisLease::new(
            redis.clone(),
            "planner:renewer",
            &config.instance,
        )),
        (None, Some(pool)) => Arc::new(PostgresLease::new(
            pool.clone(),
            "planner:renewer",
            &config.instance,
        )),
        (None, None) => Arc::new(SoleLease),
    };
    let renewing = manager.clone();
    tokio::spawn(async move { renewing.run_with(lease, Duration::from_secs(10)).await });

    side.ready().await?;
    loaded.store(true, std::sync::atomic::Ordering::Release);
    health.mark_started();
    Ok(Instance {
        base,
        app,
        manager,
        subscription_id: subscription.id,
        health,
        stop,
        server,
    })
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let smoke = std::env::args().any(|a| a == "--smoke");
    let load = std::env::args().any(|a| a == "--load");
    let mut logs = LogConfig::builder();
    if let Ok(filter) = std::env::var("RUST_LOG") {
        logs = logs.filter(filter);
    }
    if smoke || load {
        logs = logs.writer(std::io::stderr());
    }
    let _guard = keel_observability::init(logs.build()?)?;
    let metrics = PrometheusMetrics::install()?;
    let mut config =
        Config::from_env(smoke || load).map_err(|e| -> Error { e.to_string().into() })?;
    // `--load` runs on a private redis-server it can kill and restart.
    let mut redis = if load {
        let server = keel_testkit::RedisServer::start()?;
        config.redis_url = Some(server.url());
        config.database_url = None;
        Some(server)
    } else {
        None
    };
    let shared = shared(&config).await?;
    let poll = if smoke {
        Duration::from_secs(1)
    } else {
        Duration::from_secs(30)
    };
    let instance = start(&config, &shared, &metrics, poll).await?;
    let base = &instance.base;
    println!("planner service on {base}");
    println!(
        "  Graph: {}; Redis: {}; PostgreSQL: {}",
        shared
            .emulator
            .as_ref()
            .map_or("your tenant".to_owned(), |e| format!(
                "emulator at {}",
                e.base_url()
            )),
        config.redis_url.as_deref().map_or("no (memory)", |_| "yes"),
        config
            .database_url
            .as_deref()
            .map_or("no (memory)", |_| "yes"),
    );
    println!(
        "  {} plans mirrored; health {base}/health/ready; metrics {base}/metrics",
        instance.app.graph.plans.len()
    );
    println!("  try:");
    println!(
        "    TOKEN=$(curl -s -XPOST {base}/login -H 'content-type: application/json' -d '{{\"username\":\"ada\",\"password\":\"lovelace\"}}' | sed 's/.*\"access_token\":\"\\([^\"]*\\)\".*/\\1/')"
    );
    println!("    curl -s -H \"authorization: Bearer $TOKEN\" {base}/plans");
    if let Some(redis) = redis.as_mut() {
        let seconds = std::env::var("KEEL_LOAD_SECONDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(10);
        if !load::run(&shared, &instance, redis, Duration::from_secs(seconds)).await? {
            return Err(
                "load: a client saw an error, a write was lost or the service was not ready".into(),
            );
        }
        println!("load run passed its checks");
        return Ok(());
    }
    if smoke {
        smoke::run(&config, &shared, &metrics, &instance).await?;
        println!("smoke scenario passed");
        return Ok(());
    }
    tokio::signal::ctrl_c().await?;
    tracing::info!("shutting down: draining for 5 s");
    instance.shut_down(Duration::from_secs(5)).await;
    Ok(())
}
