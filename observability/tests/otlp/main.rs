//! OTLP/HTTP export: spans and metrics reach a local collector stand-in as protobuf.

#[path = "../support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use keel_observability::otlp::{OtlpConfig, OtlpMetrics};
use keel_observability::{LogConfig, init};

/// One request the collector received: path, content type, body.
type Export = (String, String, Vec<u8>);

#[derive(Clone, Default)]
struct Received(Arc<Mutex<Vec<Export>>>);

impl Received {
    fn bodies(&self, path: &str) -> Vec<(String, Vec<u8>)> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _, _)| p == path)
            .map(|(_, ct, b)| (ct.clone(), b.clone()))
            .collect()
    }
}

/// A collector stand-in on its own runtime thread, so that the exporters' blocking
/// flushes never wait on the test's own thread.
fn collector() -> (SocketAddr, Received) {
    let received = Received::default();
    let state = received.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let record = |path: &'static str| {
                move |State(r): State<Received>, headers: HeaderMap, body: Bytes| async move {
                    let ct = headers
                        .get("content-type")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned();
                    r.0.lock()
                        .unwrap()
                        .push((path.to_owned(), ct, body.to_vec()));
                    StatusCode::OK
                }
            };
            let app = Router::new()
                .route("/v1/traces", post(record("/v1/traces")))
                .route("/v1/metrics", post(record("/v1/metrics")))
                .with_state(state);
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            // Bounded: the server lives as long as the test process, at most a minute.
            let _ = tokio::time::timeout(Duration::from_secs(60), axum::serve(listener, app)).await;
        });
    });
    (rx.recv().unwrap(), received)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn spans_and_metrics_are_exported_over_otlp_http() {
    let (addr, received) = collector();
    let config = OtlpConfig::new("keel-otlp-test")
        .endpoint(format!("http://{addr}"))
        .timeout(Duration::from_secs(5))
        .metrics_interval(Duration::from_secs(3600));

    let logs = LogConfig::builder()
        .writer(std::io::sink())
        .otlp(config.clone())
        .build()
        .unwrap();
    let guard = init(logs).unwrap();
    let metrics = OtlpMetrics::install(&config).unwrap();

    tracing::info_span!("otlp_test_span", answer = 42).in_scope(|| {
        tracing::info!("inside the exported span");
    });
    // A request with no incoming traceparent: the exported trace must use the trace id
    // its log lines carry.
    let request_trace_id = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            use tower::ServiceExt;
            let app = axum::Router::new()
                .route(
                    "/traced",
                    axum::routing::get(|| async {
                        let id = keel_observability::RequestContext::current()
                            .unwrap()
                            .trace()
                            .trace_id();
                        tracing::info!("handling a traced request");
                        id.to_string()
                    }),
                )
                .layer(keel_observability::CorrelationLayer::new());
            let request = axum::http::Request::get("/traced")
                .body(axum::body::Body::empty())
                .unwrap();
            let response = app.oneshot(request).await.unwrap();
            let body = http_body_util::BodyExt::collect(response.into_body())
                .await
                .unwrap()
                .to_bytes();
            std::str::from_utf8(&body).unwrap().parse::<u128>().unwrap()
        });
    metrics::counter!("keel_otlp_test_total", "route" => "/x").increment(3);
    let gauge = metrics::gauge!("keel_otlp_in_flight");
    gauge.increment(2.0);
    gauge.decrement(1.0);
    metrics::histogram!("keel_otlp_test_seconds").record(0.02);

    drop(guard); // flushes spans
    metrics.shutdown().unwrap(); // pushes metrics

    let traces = received.bodies("/v1/traces");
    assert!(!traces.is_empty(), "no span export arrived");
    assert!(
        traces.iter().all(|(ct, _)| ct == "application/x-protobuf"),
        "{traces:?}"
    );
    assert!(traces.iter().any(|(_, b)| contains(b, b"otlp_test_span")));
    assert!(
        traces.iter().any(|(_, b)| contains(b, b"keel-otlp-test")),
        "service name resource"
    );
    assert!(
        traces
            .iter()
            .any(|(_, b)| contains(b, b"http_request")
                && contains(b, &request_trace_id.to_be_bytes())),
        "the request span is exported with the trace id its log lines carry"
    );

    let pushed = received.bodies("/v1/metrics");
    assert!(!pushed.is_empty(), "no metrics export arrived");
    let all: Vec<u8> = pushed.into_iter().flat_map(|(_, b)| b).collect();
    for name in [
        "keel_otlp_test_total",
        "keel_otlp_in_flight",
        "keel_otlp_test_seconds",
    ] {
        assert!(
            contains(&all, name.as_bytes()),
            "{name} missing from the metrics export"
        );
    }
}

#[test]
fn a_bad_endpoint_is_refused_with_a_clear_error() {
    let config = OtlpConfig::new("x").endpoint("127.0.0.1:4318");
    let error = OtlpMetrics::build(&config).unwrap_err();
    assert!(error.to_string().contains("http://"), "{error}");
}
