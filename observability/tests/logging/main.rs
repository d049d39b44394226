//! Every JSON log line parses and carries timestamp, level, target, message,
//! correlation_id, trace_id, span_id and the event's fields at the top level.

#[path = "../support/mod.rs"]
mod support;

use axum::Router;
use axum::body::Body;
use axum::http::Request;
use axum::routing::get;
use keel_observability::{CorrelationLayer, JsonLayer, LogConfig, LogFormat, init};
use serde_json::{Map, Value};
use support::Captured;
use tower::ServiceExt;
use tracing_subscriber::layer::SubscriberExt;

#[derive(Debug, thiserror::Error)]
#[error("connection refused")]
struct Refused;

#[derive(Debug, thiserror::Error)]
#[error("could not load the profile")]
struct LoadFailed(#[source] Refused);

async fn handler() -> &'static str {
    tracing::info!(
        user = "ada",
        attempts = 3_u64,
        ratio = 0.5,
        ok = true,
        "handling \"quoted\"\nline"
    );
    tracing::warn!(level = "user-supplied", "a field named like a reserved key");
    let error = LoadFailed(Refused);
    tracing::error!(
        error = &error as &(dyn std::error::Error + 'static),
        "with an error chain"
    );
    let nested = tracing::info_span!("db_query", table = "users");
    nested.in_scope(|| tracing::debug!(rows = 2_u64, "query done"));
    keel_observability::spawn(async { tracing::info!("from a spawned task") })
        .await
        .unwrap();
    "ok"
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn assert_base_fields(line: &Map<String, Value>) {
    let ts = line["timestamp"].as_str().expect("timestamp");
    // 2026-11-22T03:56:14.123456Z
    assert_eq!(ts.len(), 27, "{ts}");
    assert!(
        ts.ends_with('Z') && &ts[10..11] == "T" && &ts[19..20] == ".",
        "{ts}"
    );
    assert!(["TRACE", "DEBUG", "INFO", "WARN", "ERROR"].contains(&line["level"].as_str().unwrap()));
    assert!(line["target"].as_str().is_some_and(|t| !t.is_empty()));
    assert!(line["message"].is_string(), "{line:?}");
}

#[tokio::test(flavor = "current_thread")]
async fn request_logs_carry_every_field_at_top_level() {
    let captured = Captured::default();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_subscriber::EnvFilter::new("debug"))
        .with(JsonLayer::new(captured.clone()));
    let _default = tracing::subscriber::set_default(subscriber);

    let app = Router::new()
        .route("/profile", get(handler))
        .layer(CorrelationLayer::new());
    let request = Request::get("/profile")
        .header("x-correlation-id", "log-test-1")
        .body(Body::empty())
        .unwrap();
    let response = app.oneshot(request).await.unwrap();
    assert_eq!(response.status(), 200);
    tracing::info!(outside = true, "after the request");

    let lines = captured.json_lines();
    assert_eq!(lines.len(), 6, "{}", captured.text());
    let (request_lines, outside) = lines.split_at(5);
    let trace_id = request_lines[0]["trace_id"].as_str().unwrap().to_owned();
    let span_id = request_lines[0]["span_id"].as_str().unwrap().to_owned();
    assert!(is_hex(&trace_id, 32) && is_hex(&span_id, 16));
    for line in request_lines {
        assert_base_fields(line);
        assert_eq!(line["correlation_id"], "log-test-1", "{line:?}");
        assert_eq!(line["trace_id"], trace_id.as_str());
        assert_eq!(line["span_id"], span_id.as_str());
        // The request span's fields are flattened onto every line.
        assert_eq!(line["http.request.method"], "GET");
        assert_eq!(line["url.path"], "/profile");
    }
    let handling = &request_lines[0];
    assert_eq!(handling["message"], "handling \"quoted\"\nline");
    assert_eq!(handling["user"], "ada");
    assert_eq!(handling["attempts"], 3);
    assert_eq!(handling["ratio"], 0.5);
    assert_eq!(handling["ok"], true);
    assert_eq!(handling["level"], "INFO");

    let reserved = &request_lines[1];
    assert_eq!(reserved["level"], "WARN");
    assert_eq!(reserved["field.level"], "user-supplied");

    assert_eq!(
        request_lines[2]["error"],
        "could not load the profile: connection refused"
    );

    let nested = &request_lines[3];
    assert_eq!(nested["level"], "DEBUG");
    assert_eq!(
        nested["table"], "users",
        "inner span fields are flattened too"
    );
    assert_eq!(nested["rows"], 2);

    assert_eq!(request_lines[4]["message"], "from a spawned task");

    // Outside a request there is no correlation scope and no request span.
    assert_base_fields(&outside[0]);
    assert!(!outside[0].contains_key("correlation_id"));
    assert!(!outside[0].contains_key("url.path"));
    assert_eq!(outside[0]["outside"], true);
}

#[test]
fn every_line_is_one_json_object_even_for_hostile_values() {
    let captured = Captured::default();
    let subscriber = tracing_subscriber::registry().with(JsonLayer::new(captured.clone()));
    tracing::subscriber::with_default(subscriber, || {
        let nasty = "\"},{\"injected\":true,\u{0}\u{1f}\\\u{2028}\r\n";
        tracing::info!(value = nasty, debug = ?nasty, nan = f64::NAN, inf = f64::INFINITY, "{nasty}");
    });
    let lines = captured.json_lines();
    assert_eq!(lines.len(), 1);
    let nasty = "\"},{\"injected\":true,\u{0}\u{1f}\\\u{2028}\r\n";
    assert_eq!(lines[0]["value"], nasty);
    assert_eq!(lines[0]["message"], nasty);
    assert_eq!(lines[0]["debug"], format!("{nasty:?}"));
    assert_eq!(lines[0]["nan"], "NaN");
    assert_eq!(lines[0]["inf"], "inf");
    assert!(!lines[0].contains_key("injected"));
}

#[test]
fn init_writes_json_through_the_non_blocking_writer_and_flushes_on_drop() {
    let captured = Captured::default();
    let config = LogConfig::builder()
        .format(LogFormat::Json)
        .filter("info,noisy=off")
        .writer(captured.clone())
        .build()
        .unwrap();
    let guard = init(config).unwrap();
    for i in 0..1000 {
        tracing::info!(i, "line");
    }
    tracing::info!(target: "noisy", "filtered out");
    drop(guard);
    let lines = captured.json_lines();
    assert_eq!(lines.len(), 1000, "every line flushed on drop");
    for (i, line) in lines.iter().enumerate() {
        assert_base_fields(line);
        assert_eq!(line["i"], i);
    }
    // A second init is refused with a clear error.
    let again = init(LogConfig::builder().build().unwrap()).unwrap_err();
    assert!(again.to_string().contains("already installed"), "{again}");
}

#[test]
fn bad_configuration_is_refused_with_a_clear_error() {
    let error = LogConfig::builder().filter("info,[").build().unwrap_err();
    assert!(error.to_string().contains("invalid log filter"), "{error}");
    let error = "xml".parse::<LogFormat>().unwrap_err();
    assert!(error.to_string().contains("json"), "{error}");
}
