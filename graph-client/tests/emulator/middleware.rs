//! The pipeline's layers against the emulator: your own layer, the claims challenge,
//! the circuit breaker per host, time limits, RED metrics, the page cap and next links.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::{StreamExt as _, TryStreamExt as _};
use http::StatusCode;
use keel_graph_client::emulator::{Emulator, FaultRule};
use keel_graph_client::middleware::{
    BreakerLayer, CallContext, GraphHttpRequest, GraphHttpResponse, GraphService,
};
use keel_graph_client::model::User;
use keel_graph_client::{GraphClient, GraphError, GraphRequest};
use keel_resilience::breaker::CircuitBreakerConfig;
use keel_token_manager::client::{TokenFuture, TokenProvider, TokenRequest};

use crate::client::{built, provider};

/// What a user layer saw of each attempt.
#[derive(Clone, Debug)]
struct Seen {
    attempt: u32,
    tenant: String,
    authorized: bool,
    status: Option<u16>,
}

/// A user layer: records each attempt, and answers the first one with a claims
/// challenge when asked to.
#[derive(Clone)]
struct Spy {
    inner: GraphService,
    seen: Arc<Mutex<Vec<Seen>>>,
    challenge_first: bool,
}

impl tower::Service<GraphHttpRequest> for Spy {
    type Response = GraphHttpResponse;
    type Error = GraphError;
    type Future = Pin<Box<dyn Future<Output = Result<GraphHttpResponse, GraphError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), GraphError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: GraphHttpRequest) -> Self::Future {
        use tower::ServiceExt as _;
        let inner = self.inner.clone();
        let seen = self.seen.clone();
        let challenge = self.challenge_first && seen.lock().unwrap().is_empty();
        Box::pin(async move {
            let context = request.extensions().get::<CallContext>().cloned().unwrap();
            let authorized = request
                .headers()
                .get("authorization")
                .is_some_and(|v| v.to_str().is_ok_and(|v| v.starts_with("Bearer ey")));
            // Recorded as sent before the answer, which a time limit may cut off.
            let index = {
                let mut seen = seen.lock().unwrap();
                seen.push(Seen {
                    attempt: context.attempt,
                    tenant: context.tenant,
                    authorized,
                    status: None,
                });
                seen.len() - 1
            };
            let answer = if challenge {
                let mut response = http::Response::new(bytes::Bytes::from_static(
                    br#"{"error":{"code":"InvalidAuthenticationToken","message":"Continuous access evaluation resulted in claims challenge"}}"#,
                ));
                *response.status_mut() = StatusCode::UNAUTHORIZED;
                response.headers_mut().insert(
                    "www-authenticate",
                    http::HeaderValue::from_static(r#"Bearer realm="", authorization_uri="https://login.microsoftonline.com/common/oauth2/authorize", error="insufficient_claims", claims="eyJhY2Nlc3NfdG9rZW4iOnsibmJmIjp7ImVzc2VudGlhbCI6dHJ1ZSwgInZhbHVlIjoiMTYwNDEwNjY1MSJ9fX0=""#),
                );
                Ok(response)
            } else {
                inner.oneshot(request).await
            };
            seen.lock().unwrap()[index].status = answer.as_ref().ok().map(|r| r.status().as_u16());
            answer
        })
    }
}

fn spy(
    seen: &Arc<Mutex<Vec<Seen>>>,
    challenge_first: bool,
) -> impl tower::Layer<GraphService, Service = Spy> + Send + Sync + 'static {
    let seen = seen.clone();
    tower::layer::layer_fn(move |inner| Spy {
        inner,
        seen: seen.clone(),
        challenge_first,
    })
}

#[tokio::test]
async fn a_users_layer_sees_every_attempt_authorized_with_its_context() {
    let graph = Emulator::start_default().await.unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let client = built(&graph, |b| b.layer(spy(&seen, false)));
    graph
        .faults()
        .add(FaultRule::path("/v1.0/users").throttle("0.01").times(1));
    let page: keel_graph_client::model::Page<User> = client
        .get("contoso", &GraphRequest::get("/users").top(5))
        .await
        .unwrap();
    assert_eq!(page.value.len(), 5);
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!((seen[0].attempt, seen[0].status), (1, Some(429)));
    assert_eq!((seen[1].attempt, seen[1].status), (2, Some(200)));
    assert!(seen.iter().all(|s| s.authorized && s.tenant == "contoso"));
}

/// Records the claims each token request carried.
struct Recording {
    inner: Arc<dyn TokenProvider>,
    claims: Arc<Mutex<Vec<Option<String>>>>,
}

impl std::fmt::Debug for Recording {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Recording")
    }
}

impl TokenProvider for Recording {
    fn token<'a>(&'a self, request: &'a TokenRequest) -> TokenFuture<'a> {
        self.claims
            .lock()
            .unwrap()
            .push(request.claims_json().map(str::to_owned));
        self.inner.token(request)
    }
}

#[tokio::test]
async fn a_claims_challenge_goes_back_to_the_token_provider_once() {
    let graph = Emulator::start_default().await.unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let claims = Arc::new(Mutex::new(Vec::new()));
    let recording = Arc::new(Recording {
        inner: provider(&graph, graph.tenants()[0].domain()),
        claims: claims.clone(),
    });
    let client = GraphClient::builder(graph.cloud())
        .tenant("contoso", recording)
        .layer(spy(&seen, true))
        .build()
        .unwrap();
    let user: User = client
        .get(
            "contoso",
            &GraphRequest::get("/users/user0001@contoso.onmicrosoft.com"),
        )
        .await
        .unwrap();
    assert_eq!(
        user.user_principal_name.as_deref(),
        Some("user0001@contoso.onmicrosoft.com")
    );
    let claims = claims.lock().unwrap().clone();
    assert_eq!(claims.len(), 2, "{claims:?}");
    assert_eq!(claims[0], None);
    assert!(
        claims[1].as_deref().unwrap().contains("\"nbf\""),
        "{claims:?}"
    );
    let statuses: Vec<_> = seen.lock().unwrap().iter().map(|s| s.status).collect();
    assert_eq!(statuses, [Some(401), Some(200)]);
}

#[tokio::test]
async fn the_breaker_of_a_failing_host_opens_and_calls_stop_reaching_it() {
    let graph = Emulator::start_default().await.unwrap();
    let client = built(&graph, |b| {
        b.retries(1, Duration::from_secs(1))
            .breaker(BreakerLayer::new(|host| {
                CircuitBreakerConfig::builder(format!("graph:{host}"))
                    .minimum_calls(4)
                    .build()
                    .unwrap()
            }))
    });
    graph
        .faults()
        .add(FaultRule::path("/v1.0/users").status(StatusCode::INTERNAL_SERVER_ERROR));
    for _ in 0..4 {
        let e = client
            .send("contoso", &GraphRequest::get("/users"))
            .await
            .unwrap_err();
        assert_eq!(e.status(), Some(StatusCode::INTERNAL_SERVER_ERROR));
    }
    let before = graph.graph_requests();
    let refused = client
        .send("contoso", &GraphRequest::get("/users"))
        .await
        .unwrap_err();
    assert!(matches!(refused, GraphError::CircuitOpen(_)), "{refused:?}");
    assert_eq!(
        graph.graph_requests(),
        before,
        "an open breaker let a call through"
    );
    // Throttling is not a failure of the host: another client's breaker stays closed.
    let other = built(&graph, |b| b.retries(1, Duration::from_secs(1)));
    graph.faults().clear();
    graph
        .faults()
        .add(FaultRule::path("/v1.0/groups").throttle("1"));
    for _ in 0..30 {
        let e = other
            .send("contoso", &GraphRequest::get("/groups"))
            .await
            .unwrap_err();
        assert_eq!(e.status(), Some(StatusCode::TOO_MANY_REQUESTS));
    }
    assert!(
        other
            .send("contoso", &GraphRequest::get("/users"))
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn a_slow_attempt_times_out_and_only_idempotent_calls_are_tried_again() {
    let graph = Emulator::start_default().await.unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let client = built(&graph, |b| {
        b.layer(spy(&seen, false))
            .attempt_timeout(Duration::from_millis(150))
            .retries(2, Duration::from_secs(5))
            .backoff(keel_resilience::retry::Backoff::Constant(
                Duration::from_millis(10),
            ))
    });
    graph
        .faults()
        .add(FaultRule::path("/v1.0/users").latency(Duration::from_millis(600)));
    let e = client
        .send("contoso", &GraphRequest::get("/users"))
        .await
        .unwrap_err();
    assert!(matches!(e, GraphError::Timeout(_)), "{e:?}");
    assert_eq!(seen.lock().unwrap().len(), 2, "a GET is tried again");
    let slow = graph.faults();
    slow.add(FaultRule::path("/v1.0/planner/tasks").latency(Duration::from_millis(600)));
    let e = client
        .send(
            "contoso",
            &GraphRequest::post("/planner/tasks").json(&serde_json::json!({"title": "x"})),
        )
        .await
        .unwrap_err();
    assert!(matches!(e, GraphError::Timeout(_)), "{e:?}");
    assert_eq!(seen.lock().unwrap().len(), 3, "a POST is not tried again");
}

#[test]
fn red_metrics_are_labelled_by_method_route_template_and_status() {
    let recorder = metrics_util::debugging::DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    metrics::with_local_recorder(&recorder, || {
        runtime.block_on(async {
            let graph = Emulator::start_default().await.unwrap();
            let client = built(&graph, |b| b);
            for n in 1..=3 {
                let path = format!("/users/user{n:04}@contoso.onmicrosoft.com");
                client
                    .send("contoso", &GraphRequest::get(&path))
                    .await
                    .unwrap();
            }
            let _ = client
                .send(
                    "contoso",
                    &GraphRequest::get("/users/nobody@contoso.onmicrosoft.com"),
                )
                .await;
        });
    });
    let mut counts = Vec::new();
    let mut timed = 0;
    let mut tokens = 0;
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let labels: Vec<(String, String)> = key
            .key()
            .labels()
            .map(|l| (l.key().to_owned(), l.value().to_owned()))
            .collect();
        assert!(
            labels
                .iter()
                .all(|(_, v)| !v.contains("contoso") && !v.contains('@')),
            "an id in a label: {labels:?}"
        );
        match (key.key().name(), value) {
            ("graph_requests_total", metrics_util::debugging::DebugValue::Counter(n)) => {
                counts.push((labels, n));
            }
            (
                "graph_request_duration_seconds",
                metrics_util::debugging::DebugValue::Histogram(v),
            ) => {
                timed += v.len();
            }
            // keel-token-manager's client counts its requests to the token endpoint
            // (what the token alert of docs/ops watches): one, then the cache.
            (
                "keel_token_client_requests_total",
                metrics_util::debugging::DebugValue::Counter(n),
            ) => {
                assert_eq!(labels, [("outcome".to_owned(), "ok".to_owned())]);
                tokens += n;
            }
            _ => {}
        }
    }
    let label = |labels: &[(String, String)], k: &str| {
        labels
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
            .unwrap()
    };
    let ok = counts
        .iter()
        .find(|(l, _)| label(l, "status") == "200" && label(l, "route") == "/v1.0/users/{id}")
        .expect("a 200 series for the user route");
    assert_eq!(ok.1, 3);
    assert_eq!(label(&ok.0, "method"), "GET");
    let missing = counts
        .iter()
        .find(|(l, _)| label(l, "status") == "404")
        .expect("a 404 series");
    assert_eq!(missing.1, 1);
    assert_eq!(tokens, 1, "one token request, then the cache");
    assert_eq!(timed, 4);
}

#[tokio::test]
async fn paging_stops_at_the_cap_and_refuses_next_links_off_the_graph_origin() {
    let graph = Emulator::start_default().await.unwrap();
    let client = built(&graph, |b| b.max_pages(2));
    let read: Vec<Result<User, GraphError>> = client
        .items("contoso", GraphRequest::get("/users").top(100))
        .collect()
        .await;
    assert_eq!(read.iter().filter(|r| r.is_ok()).count(), 200);
    assert!(matches!(
        read.last(),
        Some(Err(GraphError::TooManyPages(2)))
    ));

    // A next link to another host: refused, nothing sent there.
    graph.faults().add(
        FaultRule::path("/v1.0/groups").times(1).body(
            StatusCode::OK,
            r#"{"value":[{"id":"g1"}],"@odata.nextLink":"https://graph.evil.example/v1.0/groups?$skiptoken=x"}"#,
        ),
    );
    let client = built(&graph, |b| b);
    let read: Vec<Result<keel_graph_client::model::Group, GraphError>> = client
        .items("contoso", GraphRequest::get("/groups"))
        .collect()
        .await;
    assert_eq!(read.len(), 2);
    assert!(read[0].is_ok());
    assert!(matches!(read[1], Err(GraphError::ForeignUrl)));
    let _: Vec<User> = client.users("contoso").take(1).try_collect().await.unwrap();
}

#[cfg(feature = "correlation")]
#[tokio::test]
async fn the_correlation_id_goes_to_graph_as_client_request_id_batched_or_not() {
    use keel_observability::RequestContext;
    let graph = Emulator::start_default().await.unwrap();
    let direct = built(&graph, |b| b);
    let batched = built(&graph, |b| {
        b.auto_batch(keel_graph_client::AutoBatch::window(Duration::from_millis(
            5,
        )))
    });
    let context = RequestContext::new();
    let expected = context.correlation_id().as_str().to_owned();
    let answer = context
        .clone()
        .scope(async {
            direct
                .send("contoso", &GraphRequest::get("/users").top(1))
                .await
        })
        .await
        .unwrap();
    assert_eq!(answer.headers["client-request-id"], expected.as_str());
    // Two callers in one $batch: each keeps its own id, echoed on its own item.
    let other = RequestContext::new();
    let other_id = other.correlation_id().as_str().to_owned();
    let path = "/users/user0001@contoso.onmicrosoft.com";
    let (a, b) = tokio::join!(
        context.scope(async { batched.send("contoso", &GraphRequest::get(path)).await }),
        other.scope(async { batched.send("contoso", &GraphRequest::get(path)).await }),
    );
    assert_eq!(graph.batch_requests(), 1);
    assert_eq!(a.unwrap().headers["client-request-id"], expected.as_str());
    assert_eq!(b.unwrap().headers["client-request-id"], other_id.as_str());
}

#[tokio::test]
async fn a_dropped_connection_is_tried_again_for_a_read_and_not_for_a_write() {
    let graph = Emulator::start_default().await.unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let client = built(&graph, |b| {
        b.layer(spy(&seen, false))
            .retries(3, Duration::from_secs(5))
            .backoff(keel_resilience::retry::Backoff::Constant(
                Duration::from_millis(5),
            ))
    });
    graph
        .faults()
        .add(FaultRule::path("/v1.0/users").drop_connection().times(1));
    let page: keel_graph_client::model::Page<User> = client
        .get("contoso", &GraphRequest::get("/users").top(2))
        .await
        .unwrap();
    assert_eq!(page.value.len(), 2);
    assert_eq!(seen.lock().unwrap().len(), 2, "the read was sent again");
    graph.faults().add(
        FaultRule::path("/v1.0/planner/tasks")
            .drop_connection()
            .times(1),
    );
    let e = client
        .send(
            "contoso",
            &GraphRequest::post("/planner/tasks").json(&serde_json::json!({"title": "x"})),
        )
        .await
        .unwrap_err();
    assert!(matches!(e, GraphError::Transport(_)), "{e:?}");
    assert_eq!(
        seen.lock().unwrap().len(),
        3,
        "the write was not sent again"
    );
}
