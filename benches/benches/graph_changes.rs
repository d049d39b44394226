//! Change tracking in keel-graph-client, each beside its baseline in the same run.
//!
//! - `graph_delta_20k`: a full delta round of 20,000 users against the in-process
//!   emulator (pages of 999, `$select=displayName`), against paging `/users` the same
//!   way without delta tracking; throughput in users per second.
//! - `graph_notifications`: one POST of a change notification through the webhook
//!   receiver's router (parse, `clientState` in constant time, duplicate check, queue)
//!   against a bare axum handler that parses the same body and answers 202 (target: at
//!   most 1.5×).
//! - `graph_rich_notification`: decrypting one rich notification (RSA-OAEP data key,
//!   HMAC check, AES-CBC), 2048-bit key, a 1 KiB resource.
//!
//! `cargo bench -p keel-benches --bench graph_changes`
#![allow(missing_docs)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use futures_util::StreamExt as _;
use keel_graph_client::delta::{DeltaPage, DeltaQuery, DeltaTracker, MemoryDeltaStore};
use keel_graph_client::emulator::{Emulator, TenantSeed};
use keel_graph_client::model::User;
use keel_graph_client::webhook::{
    Delivery, Notification, NotificationQueue, QueueFuture, SharedClientState, WebhookReceiver,
};
use keel_graph_client::{GraphClient, GraphRequest};
use keel_token_manager::client::{Authority, CachingProvider, ClientSecretCredential};
use tower::ServiceExt as _;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn delta_against_paging(c: &mut Criterion) {
    let rt = runtime();
    let (graph, client) = rt.block_on(async {
        let graph = Emulator::builder()
            .tenant(
                TenantSeed::new(
                    "7b1c2a4e-0f1d-4c55-9a3e-2d6f1b0c0001",
                    "contoso.onmicrosoft.com",
                )
                .client("app", "secret", ["User.Read.All"])
                .users(20_000),
            )
            .start()
            .await
            .unwrap();
        let credential = ClientSecretCredential::new(
            Authority::Custom(graph.base_url().to_owned()),
            "contoso.onmicrosoft.com",
            "app",
            "secret",
        )
        .unwrap();
        let client = GraphClient::builder(graph.cloud())
            .tenant("contoso", Arc::new(CachingProvider::new(credential)))
            .build()
            .unwrap();
        (graph, client)
    });
    let mut group = c.benchmark_group("graph_delta_20k");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(8));
    group.throughput(Throughput::Elements(20_000));
    group.bench_function("delta_full_round", |b| {
        b.to_async(&rt).iter(|| async {
            let tracker = DeltaTracker::new(
                client.clone(),
                "contoso",
                DeltaQuery::users().select(["displayName"]).page_size(999),
                Arc::new(MemoryDeltaStore::new()),
                "bench",
            );
            let mut seen = 0usize;
            tracker
                .round(|page: DeltaPage<User>| {
                    seen += page.changed.len();
                    async { Ok::<(), std::io::Error>(()) }
                })
                .await
                .unwrap();
            assert_eq!(seen, 20_000);
        });
    });
    group.bench_function("paging_without_delta", |b| {
        b.to_async(&rt).iter(|| async {
            let mut pages = client.pages::<User>(
                "contoso",
                GraphRequest::get("/users")
                    .select(["id", "displayName"])
                    .top(999),
            );
            let mut seen = 0usize;
            while let Some(page) = pages.next().await {
                seen += page.unwrap().value.len();
            }
            assert_eq!(seen, 20_000);
        });
    });
    group.finish();
    drop(graph);
}

/// A queue that only counts: the bench measures the receiver, not a queue filling up.
#[derive(Default)]
struct Counting(AtomicU64);

impl NotificationQueue for Counting {
    fn push<'a>(&'a self, notifications: Vec<Notification>) -> QueueFuture<'a, ()> {
        self.0
            .fetch_add(notifications.len() as u64, Ordering::Relaxed);
        Box::pin(async { Ok(()) })
    }
    fn next<'a>(&'a self) -> QueueFuture<'a, Option<Delivery>> {
        Box::pin(async { Ok(None) })
    }
    fn ack<'a>(&'a self, _: &'a Delivery) -> QueueFuture<'a, ()> {
        Box::pin(async { Ok(()) })
    }
    fn release<'a>(&'a self, _: &'a Delivery) -> QueueFuture<'a, ()> {
        Box::pin(async { Ok(()) })
    }
}

const SECRET: &str = "b6f0c3e2a91d4f7e8c5a2b1d0e9f8a7c";

fn body() -> Vec<u8> {
    serde_json::json!({"value": [{
        "subscriptionId": "7f1a0b2c-3d4e-4f50-8a1b-2c3d4e5f6a7b",
        "subscriptionExpirationDateTime": "2026-12-01T00:00:00Z",
        "clientState": SECRET,
        "changeType": "updated",
        "resource": "Users/00000001-0000-4000-8000-000000000001",
        "resourceData": {
            "@odata.type": "#Microsoft.Graph.User",
            "@odata.id": "Users/00000001-0000-4000-8000-000000000001",
            "id": "00000001-0000-4000-8000-000000000001",
        },
        "tenantId": "7b1c2a4e-0f1d-4c55-9a3e-2d6f1b0c0001",
    }]})
    .to_string()
    .into_bytes()
}

fn notifications(c: &mut Criterion) {
    let rt = runtime();
    let keel: axum::Router = WebhookReceiver::builder(
        Arc::new(SharedClientState::new(SECRET)),
        Arc::new(Counting::default()),
    )
    .build()
    .router("/notify");
    let bare: axum::Router = axum::Router::new().route(
        "/notify",
        axum::routing::post(|body: axum::body::Bytes| async move {
            let parsed: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert!(parsed["value"].is_array());
            axum::http::StatusCode::ACCEPTED
        }),
    );
    let body = bytes::Bytes::from(body());
    let request = |body: &bytes::Bytes| {
        http::Request::post("/notify")
            .header("content-type", "application/json")
            .body(axum::body::Body::from(body.clone()))
            .unwrap()
    };
    let mut group = c.benchmark_group("graph_notifications");
    group.throughput(Throughput::Elements(1));
    group.bench_function("keel_receiver", |b| {
        b.to_async(&rt).iter(|| async {
            let answer = keel.clone().oneshot(request(&body)).await.unwrap();
            assert_eq!(answer.status(), 202);
        });
    });
    group.bench_function("bare_axum_parse", |b| {
        b.to_async(&rt).iter(|| async {
            let answer = bare.clone().oneshot(request(&body)).await.unwrap();
            assert_eq!(answer.status(), 202);
        });
    });
    group.finish();
}

fn rich_notification(c: &mut Criterion) {
    use aws_lc_rs::cipher::{
        AES_256, EncryptionContext, PaddedBlockEncryptingKey, UnboundCipherKey,
    };
    use aws_lc_rs::encoding::AsDer as _;
    use aws_lc_rs::rsa::{
        KeySize, OAEP_SHA1_MGF1SHA1, OaepPublicEncryptingKey, PrivateDecryptingKey,
    };
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;

    let key = PrivateDecryptingKey::generate(KeySize::Rsa2048).unwrap();
    let public = OaepPublicEncryptingKey::new(key.public_key()).unwrap();
    let pem = format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
        STANDARD.encode(key.as_der().unwrap().as_ref())
    );
    let decryptor = keel_graph_client::webhook::NotificationDecryptor::new()
        .certificate("bench", &pem)
        .unwrap();
    let data_key = [7u8; 32];
    let mut wrapped = vec![0u8; public.ciphertext_size()];
    let wrapped = public
        .encrypt(&OAEP_SHA1_MGF1SHA1, &data_key, &mut wrapped, None)
        .unwrap()
        .to_vec();
    let mut data = vec![b'x'; 1_024];
    let mut iv = [0u8; 16];
    iv.copy_from_slice(&data_key[..16]);
    PaddedBlockEncryptingKey::cbc_pkcs7(UnboundCipherKey::new(&AES_256, &data_key).unwrap())
        .unwrap()
        .less_safe_encrypt(&mut data, EncryptionContext::Iv128(iv.into()))
        .unwrap();
    let mac = aws_lc_rs::hmac::sign(
        &aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &data_key),
        &data,
    );
    let content: keel_graph_client::webhook::EncryptedContent =
        serde_json::from_value(serde_json::json!({
            "data": STANDARD.encode(&data),
            "data_signature": STANDARD.encode(mac.as_ref()),
            "data_key": STANDARD.encode(&wrapped),
            "encryption_certificate_id": "bench",
            "encryption_certificate_thumbprint": "",
        }))
        .unwrap();
    c.bench_function("graph_rich_notification/decrypt_1kib", |b| {
        b.iter(|| {
            let plain = decryptor.decrypt(&content).unwrap();
            assert_eq!(plain.len(), 1_024);
        });
    });
}

criterion_group! {
    name = benches;
    config = support::criterion();
    targets = delta_against_paging, notifications, rich_notification
}
criterion_main!(benches);
