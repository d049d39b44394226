//! Instruction counts of the hot paths users pay for on every call, each beside its peer,
//! for the regression gate (`.ci/perf-gate`). Counted by valgrind's cachegrind, these
//! figures do not move with the machine's load the way wall-clock times do.
//!
//! This program does no measuring itself: `instructions <bench> <calls>` builds what the
//! bench needs, then makes `<calls>` calls of its hot path. The gate runs it under
//! cachegrind twice with two call counts; the difference, divided by the difference of
//! the counts, is the cost of one call, with every set-up cost cancelled out.
//! `instructions --list` prints the benches with their peers.
//!
//! `KEEL_PERF_GATE_SLOWDOWN=<bench>` adds a little work to each call of that bench: it
//! is how the gate's own test shows that a slower hot path fails the gate.
//!
//! `cargo bench -p keel-benches --bench instructions -- --list`
#![allow(missing_docs, clippy::print_stdout)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt as _;

/// A hot path: its name, what it is compared with (a bench of this list), and the code.
struct Bench {
    name: &'static str,
    peer: Option<&'static str>,
    run: fn(u64, &dyn Fn()),
}

const BENCHES: &[Bench] = &[
    // The measured loop's own cost per call (the gate subtracts it from every bench).
    Bench {
        name: "harness/empty",
        peer: None,
        run: |calls, extra| measured(calls, &mut |_| extra()),
    },
    Bench {
        name: "breaker_closed/keel",
        peer: Some("breaker_closed/recloser"),
        run: breaker_keel,
    },
    Bench {
        name: "breaker_closed/recloser",
        peer: None,
        run: breaker_recloser,
    },
    Bench {
        name: "retry_success/keel",
        peer: Some("retry_success/backon"),
        run: retry_keel,
    },
    Bench {
        name: "retry_success/backon",
        peer: None,
        run: retry_backon,
    },
    Bench {
        name: "rate_limit_check/keel",
        peer: Some("rate_limit_check/governor"),
        run: limiter_keel,
    },
    Bench {
        name: "rate_limit_check/governor",
        peer: None,
        run: limiter_governor,
    },
    Bench {
        name: "cache_l1_hit/keel_peek",
        peer: Some("cache_l1_hit/moka_get"),
        run: cache_peek,
    },
    Bench {
        name: "cache_l1_hit/keel_get",
        peer: Some("cache_l1_hit/moka_get"),
        run: cache_get,
    },
    Bench {
        name: "cache_l1_hit/keel_get_or_load",
        peer: Some("cache_l1_hit/moka_get"),
        run: cache_get_or_load,
    },
    Bench {
        name: "cache_l1_hit/moka_get",
        peer: None,
        run: cache_moka,
    },
    Bench {
        name: "jwt_validate_rs256/keel",
        peer: Some("jwt_validate_rs256/jsonwebtoken"),
        run: |n, s| jwt_keel(Alg::Rs256, n, s),
    },
    Bench {
        name: "jwt_validate_rs256/jsonwebtoken",
        peer: None,
        run: |n, s| jwt_peer(Alg::Rs256, n, s),
    },
    Bench {
        name: "jwt_validate_es256/keel",
        peer: Some("jwt_validate_es256/jsonwebtoken"),
        run: |n, s| jwt_keel(Alg::Es256, n, s),
    },
    Bench {
        name: "jwt_validate_es256/jsonwebtoken",
        peer: None,
        run: |n, s| jwt_peer(Alg::Es256, n, s),
    },
    Bench {
        name: "jwt_validate_eddsa/keel",
        peer: Some("jwt_validate_eddsa/jsonwebtoken"),
        run: |n, s| jwt_keel(Alg::EdDsa, n, s),
    },
    Bench {
        name: "jwt_validate_eddsa/jsonwebtoken",
        peer: None,
        run: |n, s| jwt_peer(Alg::EdDsa, n, s),
    },
    Bench {
        name: "refresh_rotate/keel_memory",
        peer: None,
        run: rotate_memory,
    },
    Bench {
        name: "health_ready_cached/keel",
        peer: Some("health_ready_cached/bare_axum"),
        run: health_keel,
    },
    Bench {
        name: "health_ready_cached/bare_axum",
        peer: None,
        run: health_bare,
    },
    Bench {
        name: "json_log_event/keel",
        peer: Some("json_log_event/tracing_subscriber"),
        run: log_keel,
    },
    Bench {
        name: "json_log_event/tracing_subscriber",
        peer: None,
        run: log_peer,
    },
    Bench {
        name: "http_layers/keel_correlation_red",
        peer: Some("http_layers/bare_axum"),
        run: layers_keel,
    },
    Bench {
        name: "http_layers/bare_axum",
        peer: None,
        run: layers_bare,
    },
    Bench {
        name: "graph_pipeline/keel",
        peer: None,
        run: graph_pipeline,
    },
];

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    match args.as_slice() {
        [flag] if flag == "--list" => {
            for bench in BENCHES {
                println!("{} {}", bench.name, bench.peer.unwrap_or("-"));
            }
        }
        [name, calls] => {
            let Some(bench) = BENCHES.iter().find(|b| b.name == name) else {
                eprintln!("no bench {name:?}; `--list` lists them");
                std::process::exit(2);
            };
            let Ok(calls) = calls.parse::<u64>() else {
                eprintln!("the call count must be a number, not {calls:?}");
                std::process::exit(2);
            };
            let slowed = std::env::var("KEEL_PERF_GATE_SLOWDOWN").is_ok_and(|s| s == bench.name);
            let extra = || {
                if slowed {
                    slowdown();
                }
            };
            (bench.run)(calls, &extra);
        }
        // `cargo bench` with no arguments: nothing to measure here (the gate runs it).
        _ => println!("instruction-count benches: run `.ci/perf-gate` (or `-- --list`)"),
    }
}

/// The measured loop. The gate counts only the instructions executed inside this
/// function (callgrind's `--toggle-collect`), so set-up, warm-up and one-time costs such
/// as a clock's calibration stay out of the figure.
#[inline(never)]
fn measured(calls: u64, op: &mut dyn FnMut(u64)) {
    for i in 0..calls {
        op(black_box(i));
    }
}

/// About 580 instructions: +6.5% on the cached readiness probe, just over the gate's 3%
/// (the gate's self-test slows that path).
#[inline(never)]
fn slowdown() {
    let mut x = black_box(0u64);
    for i in 0..64 {
        x = black_box(x.wrapping_mul(31).wrapping_add(i));
    }
    black_box(x);
}

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime")
}

// ---- keel-resilience ----

fn breaker_keel(calls: u64, extra: &dyn Fn()) {
    use keel_resilience::breaker::{CircuitBreaker, CircuitBreakerConfig, Outcome};
    let breaker = CircuitBreaker::new(CircuitBreakerConfig::standard("bench"));
    measured(calls, &mut |_| {
        let permit = breaker.try_acquire().expect("closed");
        permit.record(Outcome::Success);
        extra();
    });
}

fn breaker_recloser(calls: u64, extra: &dyn Fn()) {
    let breaker = recloser::Recloser::custom()
        .error_rate(0.5)
        .closed_len(100)
        .half_open_len(10)
        .open_wait(Duration::from_secs(30))
        .build();
    measured(calls, &mut |_| {
        black_box(breaker.call(|| Ok::<(), ()>(()))).expect("closed");
        extra();
    });
}

fn retry_keel(calls: u64, extra: &dyn Fn()) {
    use keel_resilience::retry::{Idempotency, Retry, RetryConfig};
    let runtime = current_thread();
    let _guard = runtime.enter();
    let retry = Retry::new(RetryConfig::standard("bench"));
    measured(calls, &mut |_| {
        let done = retry
            .run(Idempotency::Idempotent, |_| async {
                Ok::<_, std::io::Error>(1)
            })
            .now_or_never();
        black_box(done).expect("first attempt").expect("success");
        extra();
    });
}

fn retry_backon(calls: u64, extra: &dyn Fn()) {
    use backon::{ExponentialBuilder, Retryable};
    let runtime = current_thread();
    let _guard = runtime.enter();
    measured(calls, &mut |_| {
        let done = (|| async { Ok::<_, std::io::Error>(1) })
            .retry(ExponentialBuilder::default())
            .now_or_never();
        black_box(done).expect("first attempt").expect("success");
        extra();
    });
}

fn limiter_keel(calls: u64, extra: &dyn Fn()) {
    use keel_resilience::rate_limit::{Quota, RateLimiter};
    let limiter = RateLimiter::new("bench", Quota::per_second(u32::MAX).burst(u32::MAX)).unwrap();
    measured(calls, &mut |_| {
        black_box(limiter.check()).expect("permitted");
        extra();
    });
}

fn limiter_governor(calls: u64, extra: &dyn Fn()) {
    let limiter = governor::RateLimiter::direct(
        governor::Quota::per_second(std::num::NonZeroU32::MAX)
            .allow_burst(std::num::NonZeroU32::MAX),
    );
    measured(calls, &mut |_| {
        black_box(limiter.check()).expect("permitted");
        extra();
    });
}

// ---- keel-cache-layers ----

const KEYS: usize = 1_000;

fn keys() -> Vec<String> {
    (0..KEYS).map(|i| format!("user:{i}")).collect()
}

fn keel_cache(keys: &[String]) -> keel_cache_layers::Cache<String> {
    let cache = keel_cache_layers::Cache::<String>::builder("bench")
        .l1_capacity(10_000)
        .build()
        .expect("cache");
    for k in keys {
        cache
            .insert(k, format!("value of {k}"))
            .now_or_never()
            .expect("L1-only insert completes at once")
            .expect("inserted");
    }
    cache
}

fn cache_peek(calls: u64, extra: &dyn Fn()) {
    let keys = keys();
    let cache = keel_cache(&keys);
    measured(calls, &mut |i| {
        black_box(cache.peek(&keys[i as usize % KEYS])).expect("hit");
        extra();
    });
}

fn cache_get(calls: u64, extra: &dyn Fn()) {
    let keys = keys();
    let cache = keel_cache(&keys);
    measured(calls, &mut |i| {
        let hit = cache.get(&keys[i as usize % KEYS]).now_or_never();
        black_box(hit).expect("ready").expect("hit");
        extra();
    });
}

fn cache_get_or_load(calls: u64, extra: &dyn Fn()) {
    let keys = keys();
    let cache = keel_cache(&keys);
    measured(calls, &mut |i| {
        let hit = cache
            .get_or_load(&keys[i as usize % KEYS], || async {
                Ok::<_, std::io::Error>(String::new())
            })
            .now_or_never();
        black_box(hit).expect("ready").expect("hit");
        extra();
    });
}

fn cache_moka(calls: u64, extra: &dyn Fn()) {
    let keys = keys();
    let cache: moka::sync::Cache<String, Arc<String>> = moka::sync::Cache::new(10_000);
    for k in &keys {
        cache.insert(k.clone(), Arc::new(format!("value of {k}")));
    }
    measured(calls, &mut |i| {
        black_box(cache.get(keys[i as usize % KEYS].as_str())).expect("hit");
        extra();
    });
}

// ---- keel-token-manager ----

const ISSUER: &str = "https://auth.example";
const AUDIENCE: &str = "https://api.example";

#[derive(Clone, Copy)]
enum Alg {
    Rs256,
    Es256,
    EdDsa,
}

/// A signed token, the key that signs it, and jsonwebtoken's view of the same key.
fn jwt_case(
    alg: Alg,
) -> (
    String,
    keel_token_manager::KeyRing,
    jsonwebtoken::DecodingKey,
    jsonwebtoken::Algorithm,
) {
    use keel_token_manager::{AccessTokenIssuer, Algorithm, Grant, KeyRing, SigningKey};
    let (file, algorithm, jwt) = match alg {
        Alg::Rs256 => (
            "rsa-2048.pem",
            Algorithm::RS256,
            jsonwebtoken::Algorithm::RS256,
        ),
        Alg::Es256 => (
            "ec-p256.pem",
            Algorithm::ES256,
            jsonwebtoken::Algorithm::ES256,
        ),
        Alg::EdDsa => (
            "ed25519.pem",
            Algorithm::EdDSA,
            jsonwebtoken::Algorithm::EdDSA,
        ),
    };
    let pem = std::fs::read_to_string(format!(
        "{}/../token-manager/tests/fixtures/{file}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .expect("fixture");
    let key = SigningKey::from_pem("bench", algorithm, &pem).expect("key");
    let jwk: jsonwebtoken::jwk::Jwk =
        serde_json::from_value(serde_json::to_value(key.jwk()).expect("jwk")).expect("jwk");
    let decoding = jsonwebtoken::DecodingKey::from_jwk(&jwk).expect("public key");
    let ring = KeyRing::new(key);
    let token = AccessTokenIssuer::new(ring.clone(), ISSUER, AUDIENCE)
        .issue(&Grant::new("user-42", "web").scope("orders:read"))
        .expect("issued")
        .token;
    (token, ring, decoding, jwt)
}

fn jwt_keel(alg: Alg, calls: u64, extra: &dyn Fn()) {
    let (token, ring, _, _) = jwt_case(alg);
    let validator = keel_token_manager::Validator::new(ring, ISSUER, AUDIENCE);
    measured(calls, &mut |_| {
        black_box(validator.validate(&token)).expect("valid");
        extra();
    });
}

fn jwt_peer(alg: Alg, calls: u64, extra: &dyn Fn()) {
    let (token, _, decoding, jwt) = jwt_case(alg);
    let mut validation = jsonwebtoken::Validation::new(jwt);
    validation.set_issuer(&[ISSUER]);
    validation.set_audience(&[AUDIENCE]);
    measured(calls, &mut |_| {
        black_box(jsonwebtoken::decode::<serde_json::Value>(
            &token,
            &decoding,
            &validation,
        ))
        .expect("valid");
        extra();
    });
}

fn rotate_memory(calls: u64, extra: &dyn Fn()) {
    use keel_token_manager::{MemoryStore, RefreshConfig, RefreshTokens, SealingKeys};
    let runtime = current_thread();
    let tokens = RefreshTokens::new(
        MemoryStore::new(),
        SealingKeys::generate(1).expect("keys"),
        RefreshConfig::default(),
    )
    .expect("config");
    let mut token = runtime
        .block_on(tokens.issue("user-42", "web"))
        .expect("issued")
        .token;
    measured(calls, &mut |_| {
        token = runtime
            .block_on(tokens.rotate(&token))
            .expect("rotated")
            .token;
        extra();
    });
}

// ---- keel-health ----

fn ready_request() -> axum::http::Request<axum::body::Body> {
    axum::http::Request::get("/health/ready")
        .body(axum::body::Body::empty())
        .expect("request")
}

fn drive(
    runtime: &tokio::runtime::Runtime,
    router: &axum::Router,
    request: fn() -> axum::http::Request<axum::body::Body>,
    calls: u64,
    extra: &dyn Fn(),
) {
    use tower::ServiceExt as _;
    measured(calls, &mut |_| {
        let response = runtime.block_on(router.clone().oneshot(request()));
        assert!(
            black_box(response)
                .expect("infallible")
                .status()
                .is_success()
        );
        extra();
    });
}

fn health_keel(calls: u64, extra: &dyn Fn()) {
    use keel_health::{CheckResult, HealthRegistry, Registration, check_fn, health_router};
    let runtime = current_thread();
    let mut builder = HealthRegistry::builder()
        .started()
        .cache_ttl(Duration::from_secs(3600));
    for name in ["redis", "postgres", "graph"] {
        builder = builder.register(Registration::new(
            name,
            check_fn(|| async { CheckResult::pass() }),
        ));
    }
    let router: axum::Router = health_router(builder.build(), keel_health::Details::Hidden);
    // Fill the result cache before measuring.
    let warm = runtime.block_on(tower::ServiceExt::oneshot(router.clone(), ready_request()));
    assert!(warm.expect("infallible").status().is_success());
    drive(&runtime, &router, ready_request, calls, extra);
}

fn health_bare(calls: u64, extra: &dyn Fn()) {
    let runtime = current_thread();
    let router: axum::Router = axum::Router::new().route(
        "/health/ready",
        axum::routing::get(|| async { axum::http::StatusCode::OK }),
    );
    drive(&runtime, &router, ready_request, calls, extra);
}

// ---- keel-observability ----

fn log_events(dispatch: &tracing::Dispatch, calls: u64, extra: &dyn Fn()) {
    tracing::dispatcher::with_default(dispatch, || {
        let outer = tracing::info_span!("http_request", method = "GET", path = "/orders/42");
        let _outer = outer.enter();
        let inner = tracing::info_span!("load_order", order_id = 42_u64);
        let _inner = inner.enter();
        measured(calls, &mut |i| {
            tracing::info!(user = "ada", attempt = i, cached = false, "order placed");
            extra();
        });
    });
}

fn log_keel(calls: u64, extra: &dyn Fn()) {
    use tracing_subscriber::layer::SubscriberExt as _;
    let dispatch = tracing::Dispatch::new(
        tracing_subscriber::registry().with(keel_observability::JsonLayer::new(std::io::sink)),
    );
    log_events(&dispatch, calls, extra);
}

fn log_peer(calls: u64, extra: &dyn Fn()) {
    use tracing_subscriber::layer::SubscriberExt as _;
    let dispatch = tracing::Dispatch::new(
        tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .json()
                .with_writer(std::io::sink),
        ),
    );
    log_events(&dispatch, calls, extra);
}

fn orders_request() -> axum::http::Request<axum::body::Body> {
    axum::http::Request::get("/orders/42")
        .header("x-correlation-id", "bench-0190a6b2-7c4e")
        .body(axum::body::Body::empty())
        .expect("request")
}

fn orders() -> axum::Router {
    axum::Router::new().route("/orders/{id}", axum::routing::get(|| async { "ok" }))
}

fn layers_keel(calls: u64, extra: &dyn Fn()) {
    use keel_observability::{CorrelationLayer, RedLayer};
    let runtime = current_thread();
    // A recorder, so that metric updates are real (a local one: nothing global).
    let recorder = metrics_util::debugging::DebuggingRecorder::new();
    metrics::with_local_recorder(&recorder, || {
        let router = orders().layer(
            tower::ServiceBuilder::new()
                .layer(CorrelationLayer::new())
                .layer(RedLayer::new()),
        );
        drive(&runtime, &router, orders_request, calls, extra);
    });
}

fn layers_bare(calls: u64, extra: &dyn Fn()) {
    let runtime = current_thread();
    drive(&runtime, &orders(), orders_request, calls, extra);
}

// ---- keel-graph-client ----

/// One GET through the client's whole pipeline (trace, retry, budgets, breaker, auth
/// with a fixed token, time limit), a last layer answering in place of the network:
/// what the client costs a call on top of the HTTP exchange.
fn graph_pipeline(calls: u64, extra: &dyn Fn()) {
    use keel_graph_client::middleware::{GraphHttpRequest, GraphService};
    use keel_graph_client::model::User;
    use keel_graph_client::{Cloud, GraphClient, GraphError, GraphRequest};
    use keel_token_manager::client::{AccessToken, TokenFuture, TokenProvider, TokenRequest};

    struct Fixed;
    impl TokenProvider for Fixed {
        fn token<'a>(&'a self, _request: &'a TokenRequest) -> TokenFuture<'a> {
            Box::pin(async { Ok(AccessToken::new("token", Duration::from_secs(3600))) })
        }
    }
    let runtime = current_thread();
    let _guard = runtime.enter();
    let client = GraphClient::builder(Cloud::Global)
        .tenant("contoso", Arc::new(Fixed))
        .layer(tower::layer::layer_fn(|_inner: GraphService| {
            tower::service_fn(|_request: GraphHttpRequest| async {
                let mut answer = http::Response::new(bytes::Bytes::from_static(br#"{"id":"x"}"#));
                answer.headers_mut().insert(
                    "content-type",
                    http::HeaderValue::from_static("application/json"),
                );
                Ok::<_, GraphError>(answer)
            })
        }))
        .build()
        .expect("client");
    let request = GraphRequest::get("/users/4f0e2a1c-8d3b-4c2a-9e1f-0b7d6c5a4e3d");
    measured(calls, &mut |_| {
        let user: User = runtime
            .block_on(client.get("contoso", &request))
            .expect("answered");
        assert_eq!(black_box(user).id, "x");
        extra();
    });
}
