//! keel-graph-client against the in-process Graph emulator.
//!
//! - `graph_1000_gets`: 1,000 independent GETs of `/users/{id}`, each answered 20 ms
//!   late by the emulator (an injected fault): one at a time, all at once unbatched
//!   with the client's concurrency fixed at 16 per tenant, and all at once
//!   auto-batched (same limit of 16 requests in flight, each a `$batch` of up to 20).
//! - `graph_overhead`: one GET of `/users/{id}` on loopback through the client (its
//!   whole pipeline: trace, retry, budgets, breaker, auth with a cached token, time
//!   limit) against a bare reqwest call to the same route with the same token; the
//!   pipeline alone (a last layer answering in place of the network); and
//!   `graph_overhead_interleaved`, the two calls alternated within each iteration.
//!
//! `cargo bench -p keel-benches --bench graph`
#![allow(missing_docs)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use keel_graph_client::emulator::{Emulator, FaultRule};
use keel_graph_client::model::User;
use keel_graph_client::{AutoBatch, Concurrency, GraphClient, GraphRequest};
use keel_token_manager::client::{
    Authority, CachingProvider, ClientSecretCredential, TokenProvider, TokenRequest,
};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

struct Setup {
    graph: Emulator,
    tokens: Arc<CachingProvider<ClientSecretCredential>>,
    ids: Vec<String>,
}

async fn setup() -> Setup {
    let graph = Emulator::builder()
        .tenant(
            keel_graph_client::emulator::TenantSeed::new(
                "7b1c2a4e-0f1d-4c55-9a3e-2d6f1b0c0001",
                "contoso.onmicrosoft.com",
            )
            .client("app", "secret", ["User.Read.All"])
            .users(1_000),
        )
        .start()
        .await
        .unwrap();
    let tokens = Arc::new(CachingProvider::new(
        ClientSecretCredential::new(
            Authority::Custom(graph.base_url().to_owned()),
            "contoso.onmicrosoft.com",
            "app",
            "secret",
        )
        .unwrap(),
    ));
    let client = client(&graph, &tokens, |b| b);
    let ids = futures_util::TryStreamExt::try_collect::<Vec<User>>(
        client.items("contoso", GraphRequest::get("/users").top(999)),
    )
    .await
    .unwrap()
    .into_iter()
    .map(|u| u.id)
    .collect();
    Setup { graph, tokens, ids }
}

fn client(
    graph: &Emulator,
    tokens: &Arc<CachingProvider<ClientSecretCredential>>,
    configure: impl FnOnce(
        keel_graph_client::GraphClientBuilder,
    ) -> keel_graph_client::GraphClientBuilder,
) -> GraphClient {
    configure(GraphClient::builder(graph.cloud()).tenant("contoso", tokens.clone()))
        .build()
        .unwrap()
}

async fn all_at_once(client: &GraphClient, ids: &[String]) {
    let calls = ids.iter().map(|id| {
        let client = client.clone();
        let path = format!("/users/{id}");
        async move {
            client
                .get::<User>("contoso", &GraphRequest::get(&path))
                .await
        }
    });
    let users = futures_util::future::try_join_all(calls).await.unwrap();
    assert_eq!(users.len(), ids.len());
}

fn thousand_gets(c: &mut Criterion) {
    let rt = runtime();
    let setup = rt.block_on(setup());
    setup
        .graph
        .faults()
        .add(FaultRule::path("/v1.0/users/").latency(Duration::from_millis(20)));
    let limit = Concurrency::fixed(16);
    let sequential = client(&setup.graph, &setup.tokens, |b| b.concurrency(limit));
    let unbatched = client(&setup.graph, &setup.tokens, |b| b.concurrency(limit));
    let batched = client(&setup.graph, &setup.tokens, |b| {
        b.concurrency(limit)
            .auto_batch(AutoBatch::window(Duration::from_millis(2)))
    });
    let ids = &setup.ids;
    let mut group = c.benchmark_group("graph_1000_gets");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(1));
    group.warm_up_time(Duration::from_millis(100));
    group.bench_function("one_at_a_time", |b| {
        b.to_async(&rt).iter(|| async {
            for id in ids {
                let _: User = sequential
                    .get("contoso", &GraphRequest::get(&format!("/users/{id}")))
                    .await
                    .unwrap();
            }
        });
    });
    group.bench_function("unbatched_16_in_flight", |b| {
        b.to_async(&rt).iter(|| all_at_once(&unbatched, ids));
    });
    group.bench_function("auto_batched_16_in_flight", |b| {
        b.to_async(&rt).iter(|| all_at_once(&batched, ids));
    });
    group.finish();
    setup.graph.faults().clear();
}

fn overhead(c: &mut Criterion) {
    let rt = runtime();
    let setup = rt.block_on(setup());
    let keel = client(&setup.graph, &setup.tokens, |b| b);
    let bare = reqwest::Client::new();
    let token = rt
        .block_on(
            setup
                .tokens
                .token(&TokenRequest::new([setup.graph.cloud().default_scope()])),
        )
        .unwrap();
    let url = format!("{}/v1.0/users/{}", setup.graph.base_url(), setup.ids[0]);
    let path = format!("/users/{}", setup.ids[0]);
    let mut group = c.benchmark_group("graph_overhead");
    group.bench_function("keel_graph_client", |b| {
        b.to_async(&rt).iter(|| async {
            let user: User = keel
                .get("contoso", &GraphRequest::get(&path))
                .await
                .unwrap();
            assert_eq!(user.id, setup.ids[0]);
        });
    });
    group.bench_function("bare_reqwest", |b| {
        b.to_async(&rt).iter(|| async {
            let response = bare
                .get(&url)
                .bearer_auth(token.secret())
                .header("accept", "application/json")
                .send()
                .await
                .unwrap();
            assert!(response.status().is_success());
            let user: User = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
            assert_eq!(user.id, setup.ids[0]);
        });
    });
    let next_id = std::sync::atomic::AtomicU64::new(0);
    let next_id = &next_id;
    // Bare reqwest sending what the client sends besides the token: a fresh
    // `client-request-id` (which the emulator echoes) and `SdkVersion`.
    group.bench_function("bare_reqwest_same_headers", |b| {
        b.to_async(&rt).iter(|| async {
            let response = bare
                .get(&url)
                .bearer_auth(token.secret())
                .header("accept", "application/json")
                .header(
                    "client-request-id",
                    format!(
                        "6f1a2b3c-0d4e-4000-8000-{:012x}",
                        next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                    ),
                )
                .header("sdkversion", "graph-rust/0.1.0")
                .send()
                .await
                .unwrap();
            assert!(response.status().is_success());
            let user: User = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
            assert_eq!(user.id, setup.ids[0]);
        });
    });
    group.bench_function("bare_reqwest_in_timeout", |b| {
        b.to_async(&rt).iter(|| async {
            let response = tokio::time::timeout(
                Duration::from_secs(30),
                bare.get(&url)
                    .bearer_auth(token.secret())
                    .header("accept", "application/json")
                    .send(),
            )
            .await
            .unwrap()
            .unwrap();
            assert!(response.status().is_success());
            let user: User = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
            assert_eq!(user.id, setup.ids[0]);
        });
    });
    // The pipeline alone: a last layer answers in place of the network.
    let local = client(&setup.graph, &setup.tokens, |b| {
        b.layer(tower::layer::layer_fn(
            |_inner: keel_graph_client::middleware::GraphService| {
                tower::service_fn(
                    |_request: keel_graph_client::middleware::GraphHttpRequest| async {
                        let mut answer =
                            http::Response::new(bytes::Bytes::from_static(br#"{"id":"x"}"#));
                        answer.headers_mut().insert(
                            "content-type",
                            http::HeaderValue::from_static("application/json"),
                        );
                        Ok::<_, keel_graph_client::GraphError>(answer)
                    },
                )
            },
        ))
    });
    group.bench_function("keel_pipeline_without_network", |b| {
        b.to_async(&rt).iter(|| async {
            let user: User = local
                .get("contoso", &GraphRequest::get(&path))
                .await
                .unwrap();
            assert_eq!(user.id, "x");
        });
    });
    group.finish();

    // The same two calls interleaved: each iteration makes both and times one, so both
    // see the same machine at the same moments (this machine's noise moves a whole
    // run by ±15%).
    let mut group = c.benchmark_group("graph_overhead_interleaved");
    let keel_call = || async {
        let user: User = keel
            .get("contoso", &GraphRequest::get(&path))
            .await
            .unwrap();
        assert_eq!(user.id, setup.ids[0]);
    };
    let bare_call = || async {
        let response = bare
            .get(&url)
            .bearer_auth(token.secret())
            .header("accept", "application/json")
            .send()
            .await
            .unwrap();
        let user: User = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
        assert_eq!(user.id, setup.ids[0]);
    };
    group.bench_function("keel_graph_client", |b| {
        b.to_async(&rt).iter_custom(|iters| async move {
            let mut timed = Duration::ZERO;
            for _ in 0..iters {
                bare_call().await;
                let started = std::time::Instant::now();
                keel_call().await;
                timed += started.elapsed();
            }
            timed
        });
    });
    group.bench_function("bare_reqwest", |b| {
        b.to_async(&rt).iter_custom(|iters| async move {
            let mut timed = Duration::ZERO;
            for _ in 0..iters {
                keel_call().await;
                let started = std::time::Instant::now();
                bare_call().await;
                timed += started.elapsed();
            }
            timed
        });
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = support::criterion();
    targets = thousand_gets, overhead
}
criterion_main!(benches);
