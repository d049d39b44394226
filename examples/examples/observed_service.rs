//! An orders service that shows keel-observability end to end: JSON logs that carry the
//! correlation id, an id that follows a request into a spawned task and an outgoing
//! call, RED metrics and SLOs on `/metrics`, and RFC 9457 problems.
//!
//! ```text
//! cargo run -p keel-examples --example observed_service            # serve on 127.0.0.1:3000
//! cargo run -p keel-examples --example observed_service -- --smoke # scripted self-check
//! ```
//!
//! Try `curl -i -H 'x-correlation-id: demo-1' localhost:3000/orders/2`, then
//! `/orders/3` (a problem), `/orders/13` (an internal failure) and `/metrics`.

// An executable's smoke report goes to stdout.
#![allow(clippy::print_stdout)]

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use keel_observability::slo::{SloConfig, SloTracker};
use keel_observability::{
    ApiError, CorrelationId, CorrelationLayer, CorrelationMiddleware, ErrorCode, IntoProblem,
    LogConfig, PrometheusMetrics, RedLayer,
};
use reqwest_middleware::ClientWithMiddleware;
use serde_json::{Value, json};

#[derive(Debug, thiserror::Error)]
enum OrderError {
    #[error("order {0} does not exist")]
    NotFound(u64),
    #[error("inventory service answered {0}")]
    Inventory(String),
}

impl IntoProblem for OrderError {
    fn error_code(&self) -> ErrorCode {
        match self {
            OrderError::NotFound(_) => ErrorCode::RES_NOT_FOUND,
            OrderError::Inventory(_) => ErrorCode::EXT_DEPENDENCY_FAILED,
        }
    }
    fn public_detail(&self) -> Option<String> {
        match self {
            OrderError::NotFound(id) => Some(format!("There is no order {id}.")),
            // The inventory's answer is internal: it is logged, not shown.
            OrderError::Inventory(_) => None,
        }
    }
}

#[derive(Clone)]
struct AppState {
    inventory: String,
    client: ClientWithMiddleware,
}

/// Odd ids do not exist; id 13 makes the inventory service fail.
async fn order(
    State(state): State<AppState>,
    Path(id): Path<u64>,
) -> Result<Json<Value>, ApiError<OrderError>> {
    tracing::info!(order_id = id, "looking the order up");
    if id % 2 == 1 && id != 13 {
        return Err(OrderError::NotFound(id).into());
    }
    // Audit in the background: the task keeps the request's correlation id.
    keel_observability::spawn(async move {
        tracing::info!(order_id = id, "audit record written");
    });
    let stock: Value = state
        .client
        .get(format!("{}/stock/{id}", state.inventory))
        .send()
        .await
        .map_err(|e| OrderError::Inventory(e.to_string()))?
        .error_for_status()
        .map_err(|e| OrderError::Inventory(e.to_string()))?
        .json()
        .await
        .map_err(|e| OrderError::Inventory(e.to_string()))?;
    Ok(Json(json!({ "id": id, "stock": stock })))
}

/// A second service, called by the first: logs show the same correlation id.
fn inventory() -> Router {
    Router::new()
        .route(
            "/stock/{id}",
            get(
                |Path(id): Path<u64>, correlation: CorrelationId| async move {
                    tracing::info!(order_id = id, caller = %correlation, "stock checked");
                    if id == 13 {
                        return Err(axum::http::StatusCode::INTERNAL_SERVER_ERROR);
                    }
                    Ok(Json(json!({ "available": id * 10 })))
                },
            ),
        )
        .layer(CorrelationLayer::new())
}

async fn serve(router: Router, addr: SocketAddr) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        let shutdown = async {
            let _ = tokio::signal::ctrl_c().await;
        };
        if let Err(e) = axum::serve(listener, router)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!(error = %e, "server stopped");
        }
    });
    Ok(bound)
}

async fn build(
    metrics: &PrometheusMetrics,
    slo: &SloTracker,
    addr: SocketAddr,
) -> std::io::Result<SocketAddr> {
    let inventory_addr = serve(inventory(), "127.0.0.1:0".parse().expect("valid")).await?;
    let client = reqwest_middleware::ClientBuilder::new(
        reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .map_err(std::io::Error::other)?,
    )
    .with(CorrelationMiddleware::new())
    .build();
    let state = AppState {
        inventory: format!("http://{inventory_addr}"),
        client,
    };
    let app = Router::new()
        .route("/orders/{id}", get(order))
        .route(
            "/slo",
            get({
                let slo = slo.clone();
                move || async move {
                    let routes: Vec<Value> = slo
                        .snapshots()
                        .into_iter()
                        .map(|s| {
                            json!({
                                "route": s.route,
                                "requests": s.requests,
                                "failures": s.failures,
                                "availability": s.availability,
                                "p50_seconds": s.p50.as_secs_f64(),
                                "p95_seconds": s.p95.as_secs_f64(),
                                "p99_seconds": s.p99.as_secs_f64(),
                                "error_budget_burn_rate": s.error_budget_burn_rate,
                            })
                        })
                        .collect();
                    Json(Value::Array(routes))
                }
            }),
        )
        .fallback(|| async { keel_observability::Problem::new(ErrorCode::RES_NOT_FOUND) })
        .with_state(state)
        .layer(RedLayer::new().with_slo(slo.clone()))
        .merge(metrics.router())
        .layer(CorrelationLayer::new());
    serve(app, addr).await
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let smoke = std::env::args().any(|a| a == "--smoke");
    // In smoke mode logs go to stderr so stdout holds the report.
    let mut logs = LogConfig::builder();
    if let Ok(filter) = std::env::var("RUST_LOG") {
        logs = logs.filter(filter);
    }
    if let Ok(format) = std::env::var("KEEL_LOG_FORMAT") {
        logs = logs.format(format.parse()?);
    }
    if smoke {
        logs = logs.writer(std::io::stderr());
    }
    let _guard = keel_observability::init(logs.build()?)?;

    let slo = SloTracker::new(SloConfig::standard());
    let metrics = PrometheusMetrics::install()?.with_slo(slo.clone());
    let addr: SocketAddr = if smoke {
        "127.0.0.1:0".parse()?
    } else {
        std::env::var("KEEL_ADDR")
            .unwrap_or_else(|_| "127.0.0.1:3000".into())
            .parse()?
    };
    let bound = build(&metrics, &slo, addr).await?;

    if smoke {
        smoke_test(bound, &slo).await?;
        return Ok(());
    }
    tracing::info!(%bound, "orders service listening; Ctrl-C to stop");
    tokio::signal::ctrl_c().await?;
    tracing::info!("shutting down");
    Ok(())
}

/// A scripted run against the live service; fails loudly if anything is off.
async fn smoke_test(addr: SocketAddr, slo: &SloTracker) -> Result<(), Box<dyn std::error::Error>> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    let base = format!("http://{addr}");
    let check = |ok: bool, what: &str| -> Result<(), Box<dyn std::error::Error>> {
        if ok {
            println!("ok   {what}");
            Ok(())
        } else {
            Err(format!("FAIL {what}").into())
        }
    };

    let response = client
        .get(format!("{base}/orders/2"))
        .header("x-correlation-id", "smoke-1")
        .send()
        .await?;
    check(response.status() == 200, "GET /orders/2 is 200")?;
    check(
        response.headers()["x-correlation-id"] == "smoke-1",
        "the correlation id is echoed",
    )?;
    let body: Value = response.json().await?;
    check(
        body["stock"]["available"] == 20,
        "the inventory call went through",
    )?;

    let response = client.get(format!("{base}/orders/3")).send().await?;
    check(response.status() == 404, "GET /orders/3 is 404")?;
    check(
        response.headers()["content-type"] == "application/problem+json",
        "problems are application/problem+json",
    )?;
    let generated = response.headers()["x-correlation-id"].to_str()?.to_owned();
    let problem: Value = response.json().await?;
    check(
        problem["code"] == "RES_NOT_FOUND" && problem["correlation_id"] == generated.as_str(),
        "the problem carries its code and the generated correlation id",
    )?;

    let response = client.get(format!("{base}/orders/13")).send().await?;
    check(response.status() == 502, "a failing dependency is 502")?;
    let problem: Value = response.json().await?;
    check(
        !problem.to_string().contains("inventory service answered"),
        "internal error text stays out of the body",
    )?;

    let response = client
        .get(format!("{base}/orders/4"))
        .header("x-correlation-id", "<script>")
        .send()
        .await?;
    check(
        response.headers()["x-correlation-id"] != "<script>",
        "a hostile id is replaced, not echoed",
    )?;

    let text = client
        .get(format!("{base}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    check(
        text.contains(
            r#"http_server_requests_total{method="GET",route="/orders/{id}",status="200"} 2"#,
        ),
        "RED counters by matched route",
    )?;
    check(
        text.contains("http_server_request_duration_seconds_bucket"),
        "duration is a bucketed histogram",
    )?;
    check(
        text.contains(r#"slo_availability_ratio{route="/orders/{id}"}"#),
        "SLO gauges are exported",
    )?;
    let orders = slo
        .snapshot("/orders/{id}")
        .ok_or("no SLO for /orders/{id}")?;
    check(orders.requests == 4, "the SLO tracker saw 4 order requests")?;
    println!(
        "slo  /orders/{{id}}: availability {:.2}, p99 {:?}, burn rate {:.0}",
        orders.availability, orders.p99, orders.error_budget_burn_rate
    );
    println!("smoke test passed");
    Ok(())
}
