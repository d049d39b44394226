//! One GET of `/users/{id}` on loopback against the Graph emulator: keel-graph-client
//! (its whole pipeline), graph-rs-sdk 3.0.1 (pointed at the emulator with its
//! `test-util` endpoint, given the same token), and bare reqwest, in the same run.
//!
//! `cargo bench --manifest-path benches/peers/graph-rs-sdk/Cargo.toml`
#![allow(missing_docs)]

use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use keel_graph_client::emulator::{Emulator, TenantSeed};
use keel_graph_client::model::User;
use keel_graph_client::{GraphClient, GraphRequest};
use keel_token_manager::client::{
    Authority, CachingProvider, ClientSecretCredential, TokenProvider, TokenRequest,
};

fn overhead(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (graph, keel, token, id) = rt.block_on(async {
        let graph = Emulator::builder()
            .tenant(
                TenantSeed::new(
                    "7b1c2a4e-0f1d-4c55-9a3e-2d6f1b0c0001",
                    "contoso.onmicrosoft.com",
                )
                .client("app", "secret", ["User.Read.All"])
                .users(10),
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
        let keel = GraphClient::builder(graph.cloud())
            .tenant("contoso", tokens.clone())
            .build()
            .unwrap();
        let token = tokens
            .token(&TokenRequest::new([graph.cloud().default_scope()]))
            .await
            .unwrap();
        let first = futures_first(&keel).await;
        (graph, keel, token, first)
    });
    // graph-rs-sdk refuses plain HTTP unless told (the emulator here is on loopback).
    let mut sdk = graph_rs_sdk::GraphClient::from(
        graph_rs_sdk::GraphClientConfiguration::new()
            .access_token(token.secret())
            .https_only(false),
    );
    sdk.use_test_endpoint(&url::Url::parse(&format!("{}/v1.0", graph.base_url())).unwrap());
    let bare = reqwest::Client::new();
    let url = format!("{}/v1.0/users/{id}", graph.base_url());
    let path = format!("/users/{id}");

    let mut group = c.benchmark_group("graph_overhead_peers");
    group.measurement_time(Duration::from_secs(5));
    group.bench_function("keel_graph_client", |b| {
        b.to_async(&rt).iter(|| async {
            let user: User = keel.get("contoso", &GraphRequest::get(&path)).await.unwrap();
            assert_eq!(user.id, id);
        });
    });
    group.bench_function("graph_rs_sdk", |b| {
        b.to_async(&rt).iter(|| async {
            let response = sdk.user(&id).get_user().send().await.unwrap();
            assert!(response.status().is_success());
            let user: User = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
            assert_eq!(user.id, id);
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
            assert_eq!(user.id, id);
        });
    });
    group.finish();
}

async fn futures_first(client: &GraphClient) -> String {
    let page: keel_graph_client::GraphResponse = client
        .send("contoso", &GraphRequest::get("/users").top(1))
        .await
        .unwrap();
    let value: serde_json::Value = serde_json::from_slice(&page.body).unwrap();
    value["value"][0]["id"].as_str().unwrap().to_owned()
}

criterion_group!(benches, overhead);
criterion_main!(benches);
