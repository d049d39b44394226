//! A correlation id sent to a server arrives unchanged in the handler, in a task it
//! spawns, and in the headers of an outgoing call to a second local server.

#[path = "../support/mod.rs"]
mod support;

use std::collections::HashMap;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::get;
use axum::{Json, Router};
use keel_observability::{CorrelationId, CorrelationLayer, CorrelationMiddleware, RequestContext};
use reqwest_middleware::ClientWithMiddleware;
use serde_json::{Value, json};

/// Server B: echoes the correlation headers it received.
fn downstream() -> Router {
    Router::new().route(
        "/echo",
        get(|headers: HeaderMap| async move {
            let pick = |name: &str| {
                headers
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            };
            Json(json!({
                "x-correlation-id": pick("x-correlation-id"),
                "client-request-id": pick("client-request-id"),
                "traceparent": pick("traceparent"),
            }))
        }),
    )
}

#[derive(Clone)]
struct Upstream {
    client: ClientWithMiddleware,
    downstream: String,
}

/// Server A: reports the id it sees in the handler, in a spawned task, and what server
/// B received from it.
async fn handler(State(up): State<Upstream>, id: CorrelationId) -> Json<Value> {
    let in_task = keel_observability::spawn(async { CorrelationId::current() })
        .await
        .unwrap();
    let trace = RequestContext::current().unwrap().trace().to_owned();
    let received: Value = up
        .client
        .get(&up.downstream)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    Json(json!({
        "handler": id.as_str(),
        "task": in_task.map(|i| i.as_str().to_owned()),
        "trace_id": trace.trace_id_hex(),
        "span_id": trace.span_id_hex(),
        "downstream": received,
    }))
}

async fn setup() -> (reqwest::Client, String) {
    let b = support::serve(downstream()).await;
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(CorrelationMiddleware::new())
        .build();
    let state = Upstream {
        client,
        downstream: format!("http://{b}/echo"),
    };
    let app = Router::new()
        .route("/work", get(handler))
        .with_state(state)
        .layer(CorrelationLayer::new());
    let a = support::serve(app).await;
    (reqwest::Client::new(), format!("http://{a}/work"))
}

#[tokio::test]
async fn sent_id_reaches_handler_task_and_downstream_unchanged() {
    let (client, url) = setup().await;
    let id = "0190a6b2-7c4e-7d3a-9f1e-2b3c4d5e6f70";
    let response = client
        .get(&url)
        .header("x-correlation-id", id)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-correlation-id"], id);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["handler"], id);
    assert_eq!(body["task"], id);
    assert_eq!(body["downstream"]["x-correlation-id"], id);
    assert_eq!(
        body["downstream"]["client-request-id"], id,
        "a GUID id is Graph's client-request-id"
    );
    let traceparent = body["downstream"]["traceparent"].as_str().unwrap();
    let expected = format!(
        "00-{}-{}-01",
        body["trace_id"].as_str().unwrap(),
        body["span_id"].as_str().unwrap()
    );
    assert_eq!(traceparent, expected);
}

#[tokio::test]
async fn non_guid_ids_are_not_sent_as_client_request_id() {
    let (client, url) = setup().await;
    let response = client
        .get(&url)
        .header("x-request-id", "order-77")
        .send()
        .await
        .unwrap();
    // Echoed on the header the caller used, and on ours.
    assert_eq!(response.headers()["x-request-id"], "order-77");
    assert_eq!(response.headers()["x-correlation-id"], "order-77");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["downstream"]["x-correlation-id"], "order-77");
    assert_eq!(body["downstream"]["client-request-id"], Value::Null);
}

#[tokio::test]
async fn incoming_traceparent_continues_the_trace() {
    let (client, url) = setup().await;
    let response = client
        .get(&url)
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .send()
        .await
        .unwrap();
    let echoed = response.headers()["x-correlation-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(echoed, "4bf92f35-77b3-4da6-a3ce-929d0e0e4736");
    let traceparent = body["downstream"]["traceparent"].as_str().unwrap();
    assert!(traceparent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
    assert!(
        !traceparent.contains("00f067aa0ba902b7"),
        "our span is the parent, not the caller's"
    );
}

#[tokio::test]
async fn hostile_headers_get_a_fresh_id_and_are_never_echoed() {
    let (client, url) = setup().await;
    let long = "a".repeat(10_000);
    let hostile: [(&str, &str); 5] = [
        ("x-correlation-id", "<script>alert(1)</script>"),
        ("x-correlation-id", long.as_str()),
        ("x-correlation-id", "id with spaces"),
        ("x-request-id", "\u{1b}[31mred"),
        ("traceparent", "00-zzzz-yyyy-01"),
    ];
    let mut seen = HashMap::new();
    for (name, value) in hostile {
        let Ok(response) = client.get(&url).header(name, value).send().await else {
            continue; // the client itself refused to send it (control characters)
        };
        assert_eq!(response.status(), 200, "{name}: {value:.40}");
        let echoed = response.headers()["x-correlation-id"]
            .to_str()
            .unwrap()
            .to_owned();
        assert_ne!(echoed, value);
        assert!(
            CorrelationId::parse(&echoed).unwrap().is_uuid(),
            "fresh UUIDv7, got {echoed}"
        );
        assert!(response.headers().get("x-request-id").is_none());
        assert!(seen.insert(echoed, name).is_none(), "fresh ids are unique");
    }
}

#[tokio::test]
async fn without_a_scope_the_middleware_sends_nothing() {
    let b = support::serve(downstream()).await;
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(CorrelationMiddleware::new())
        .build();
    let body: Value = client
        .get(format!("http://{b}/echo"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["x-correlation-id"], Value::Null);
    assert_eq!(body["traceparent"], Value::Null);
}
