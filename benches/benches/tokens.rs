//! keel-token-manager against calling jsonwebtoken directly with the same keys.
//!
//! `cargo bench -p keel-benches --bench tokens`
#![allow(missing_docs)]

mod support;

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use keel_token_manager::{AccessTokenIssuer, Algorithm, Grant, KeyRing, SigningKey, Validator};

const ISSUER: &str = "https://auth.example";
const AUDIENCE: &str = "https://api.example";

fn pem(file: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/../token-manager/tests/fixtures/{file}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

struct Case {
    name: &'static str,
    jwt: jsonwebtoken::Algorithm,
    encoding: jsonwebtoken::EncodingKey,
    decoding: jsonwebtoken::DecodingKey,
    key: SigningKey,
}

fn cases() -> Vec<Case> {
    let rsa = pem("rsa-2048.pem");
    let ec = pem("ec-p256.pem");
    let ed = pem("ed25519.pem");
    let make = |name, algorithm, jwt, text: &str| {
        let key = SigningKey::from_pem(name, algorithm, text).unwrap();
        // The peer decodes with its own JWK support, from the JWK we publish.
        let jwk: jsonwebtoken::jwk::Jwk =
            serde_json::from_value(serde_json::to_value(key.jwk()).unwrap()).unwrap();
        let decoding = jsonwebtoken::DecodingKey::from_jwk(&jwk).unwrap();
        let encoding = match algorithm {
            Algorithm::RS256 => jsonwebtoken::EncodingKey::from_rsa_pem(text.as_bytes()),
            Algorithm::ES256 => jsonwebtoken::EncodingKey::from_ec_pem(text.as_bytes()),
            Algorithm::EdDSA => jsonwebtoken::EncodingKey::from_ed_pem(text.as_bytes()),
        }
        .unwrap();
        Case {
            name,
            jwt,
            encoding,
            decoding,
            key,
        }
    };
    vec![
        make(
            "RS256",
            Algorithm::RS256,
            jsonwebtoken::Algorithm::RS256,
            &rsa,
        ),
        make(
            "ES256",
            Algorithm::ES256,
            jsonwebtoken::Algorithm::ES256,
            &ec,
        ),
        make(
            "EdDSA",
            Algorithm::EdDSA,
            jsonwebtoken::Algorithm::EdDSA,
            &ed,
        ),
    ]
}

fn claims() -> serde_json::Value {
    serde_json::json!({
        "iss": ISSUER, "sub": "user-42", "aud": AUDIENCE, "exp": 4_000_000_000u64,
        "iat": 1_700_000_000u64, "jti": "abc", "client_id": "web", "scope": "orders:read"
    })
}

fn validate(c: &mut Criterion) {
    for case in cases() {
        let ring = KeyRing::new(case.key.clone());
        let issuer = AccessTokenIssuer::new(ring.clone(), ISSUER, AUDIENCE);
        let token = issuer
            .issue(&Grant::new("user-42", "web").scope("orders:read"))
            .unwrap()
            .token;
        let validator = Validator::new(ring, ISSUER, AUDIENCE);
        let mut validation = jsonwebtoken::Validation::new(case.jwt);
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[AUDIENCE]);
        let mut group = c.benchmark_group(format!("tokens/validate/{}", case.name));
        group.bench_function("jsonwebtoken_decode", |b| {
            b.iter(|| {
                black_box(
                    jsonwebtoken::decode::<serde_json::Value>(&token, &case.decoding, &validation)
                        .unwrap(),
                )
            });
        });
        group.bench_function("keel_validate", |b| {
            b.iter(|| black_box(validator.validate(&token).unwrap()));
        });
        group.finish();
    }
}

fn issue(c: &mut Criterion) {
    for case in cases() {
        let issuer = AccessTokenIssuer::new(KeyRing::new(case.key.clone()), ISSUER, AUDIENCE);
        let grant = Grant::new("user-42", "web").scope("orders:read");
        let claims = claims();
        let mut header = jsonwebtoken::Header::new(case.jwt);
        header.typ = Some("at+jwt".into());
        header.kid = Some(case.name.into());
        let mut group = c.benchmark_group(format!("tokens/issue/{}", case.name));
        group.bench_function("jsonwebtoken_encode", |b| {
            b.iter(|| black_box(jsonwebtoken::encode(&header, &claims, &case.encoding).unwrap()));
        });
        group.bench_function("keel_issue", |b| {
            b.iter(|| black_box(issuer.issue(&grant).unwrap()));
        });
        group.finish();
    }
}

/// One rotation after another on one session, per store.
fn rotate(c: &mut Criterion) {
    use keel_token_manager::{
        MemoryStore, PostgresStore, RedisStore, RefreshConfig, RefreshTokenStore, RefreshTokens,
        SealingKeys,
    };
    use std::sync::{Arc, Mutex};

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let redis = keel_testkit::RedisServer::start().ok();
    let postgres = keel_testkit::PostgresServer::start().ok();
    let mut stores: Vec<(&str, Arc<dyn RefreshTokenStore>)> =
        vec![("memory", Arc::new(MemoryStore::new()))];
    rt.block_on(async {
        if let Some(server) = &redis {
            let client = redis::Client::open(server.url()).unwrap();
            let connection = redis::aio::ConnectionManager::new(client).await.unwrap();
            stores.push(("redis", Arc::new(RedisStore::new(connection))));
        }
        if let Some(server) = &postgres {
            let mut config = deadpool_postgres::Config::new();
            config.url = Some(server.url());
            let pool = config
                .create_pool(
                    Some(deadpool_postgres::Runtime::Tokio1),
                    tokio_postgres::NoTls,
                )
                .unwrap();
            let store = PostgresStore::new(pool);
            store.migrate().await.unwrap();
            stores.push(("postgres", Arc::new(store)));
        }
    });
    let mut group = c.benchmark_group("tokens/rotate");
    for (name, store) in stores {
        let tokens = RefreshTokens::new(
            store,
            SealingKeys::generate(1).unwrap(),
            RefreshConfig::default(),
        )
        .unwrap();
        let current = Mutex::new(rt.block_on(tokens.issue("user-42", "web")).unwrap().token);
        group.bench_function(name, |b| {
            b.to_async(&rt).iter(|| async {
                let token = current.lock().unwrap().clone();
                let next = tokens.rotate(&token).await.unwrap();
                *current.lock().unwrap() = next.token;
            });
        });
    }
    group.finish();
}

/// A cached token (issue 14: at most 2x a plain `RwLock<HashMap>` read of the same
/// key and token).
fn client_cache_hit(c: &mut Criterion) {
    use futures_util::FutureExt as _;
    use keel_token_manager::client::{
        AccessToken, CachingProvider, TokenProvider, TokenRequest, from_fn,
    };
    use std::collections::HashMap;
    use std::sync::RwLock;
    use std::time::Duration;

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let requests: Vec<TokenRequest> = (0..100)
        .map(|i| {
            TokenRequest::new(["https://graph.microsoft.com/.default"])
                .tenant(format!("tenant-{i}"))
        })
        .collect();
    let endpoint = from_fn(|r: &TokenRequest| {
        let token = format!("token-{}", r.tenant_id().unwrap_or(""));
        async move { Ok(AccessToken::new(token, Duration::from_secs(3600))) }
    });
    let keel = CachingProvider::new(endpoint);
    let mut plain = HashMap::new();
    for request in &requests {
        let token = rt.block_on(keel.token(request)).unwrap();
        plain.insert(request.clone(), token);
    }
    let plain = RwLock::new(plain);
    let mut group = c.benchmark_group("tokens/client_cache_hit");
    let mut i = 0_usize;
    group.bench_function("rwlock_hashmap_read", |b| {
        b.iter(|| {
            i = (i + 1) % requests.len();
            let token = plain.read().unwrap().get(&requests[i]).cloned().unwrap();
            black_box(token)
        });
    });
    group.bench_function("keel_caching_provider", |b| {
        b.iter(|| {
            i = (i + 1) % requests.len();
            let token = keel.token(&requests[i]).now_or_never().unwrap().unwrap();
            black_box(token)
        });
    });
    // One key, as azure_identity keeps one cache per credential (tenant) keyed by scopes.
    let one = &requests[0];
    group.bench_function("keel_caching_provider_one_key", |b| {
        b.iter(|| {
            let token = keel.token(one).now_or_never().unwrap().unwrap();
            black_box(token)
        });
    });
    let azure = azure::credential();
    rt.block_on(azure::get(&azure)).unwrap();
    group.bench_function("azure_identity_client_secret", |b| {
        b.iter(|| {
            let token = azure::get(&azure).now_or_never().unwrap().unwrap();
            black_box(token)
        });
    });
    group.finish();
}

/// Azure.Identity for Rust (`azure_identity` 1.0): its `ClientSecretCredential` with its
/// own token cache. It accepts only an https authority, so its HTTP transport is
/// replaced by an in-process token endpoint (used once: the bench measures cache hits).
mod azure {
    use std::sync::Arc;

    use azure_core::credentials::{AccessToken, TokenCredential as _};
    use azure_core::http::headers::Headers;
    use azure_core::http::{
        AsyncRawResponse, ClientOptions, HttpClient, Request, StatusCode, Transport,
    };
    use azure_identity::{ClientSecretCredential, ClientSecretCredentialOptions};

    #[derive(Debug)]
    struct TokenEndpoint;

    #[async_trait::async_trait]
    impl HttpClient for TokenEndpoint {
        async fn execute_request(&self, _: &Request) -> azure_core::Result<AsyncRawResponse> {
            Ok(AsyncRawResponse::from_bytes(
                StatusCode::Ok,
                Headers::default(),
                azure_core::Bytes::from_static(
                    br#"{"access_token":"token-tenant-0","expires_in":3600,"token_type":"Bearer"}"#,
                ),
            ))
        }
    }

    pub(super) fn credential() -> Arc<ClientSecretCredential> {
        ClientSecretCredential::new(
            "tenant-0",
            "app-id".to_owned(),
            "secret".to_owned().into(),
            Some(ClientSecretCredentialOptions {
                client_options: ClientOptions {
                    transport: Some(Transport::new(Arc::new(TokenEndpoint))),
                    ..ClientOptions::default()
                },
            }),
        )
        .unwrap()
    }

    pub(super) async fn get(
        credential: &ClientSecretCredential,
    ) -> azure_core::Result<AccessToken> {
        credential
            .get_token(&["https://graph.microsoft.com/.default"], None)
            .await
    }
}

criterion_group! {
    name = benches;
    config = support::criterion();
    targets = validate, issue, rotate, client_cache_hit
}
criterion_main!(benches);
