//! Reviewer probe (temporary).
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use keel_health::{CheckResult, Details, HealthRegistry, Registration, check_fn, health_router};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn raw(addr: std::net::SocketAddr, req: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_millis(500), s.read_to_end(&mut buf)).await;
    String::from_utf8_lossy(&buf).into_owned()
}

#[derive(Clone)]
struct AppState;

#[tokio::test]
async fn on_the_wire() {
    let n = Arc::new(AtomicU32::new(0));
    let c = n.clone();
    let registry = HealthRegistry::builder()
        .started()
        .cache_ttl(Duration::from_millis(50))
        .register(Registration::new(
            "db",
            check_fn(move || {
                let i = c.fetch_add(1, Ordering::SeqCst);
                async move {
                    if i == 0 {
                        CheckResult::fail("x")
                    } else {
                        CheckResult::fail("a much longer failure output that changes the length")
                    }
                }
            }),
        ))
        .build();
    // Merged into an app with its own state, as users do.
    let app: axum::Router = axum::Router::new()
        .merge(health_router::<AppState>(registry.clone(), Details::Shown))
        .with_state(AppState);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let req =
        |m: &str, p: &str| format!("{m} {p} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    println!(
        "--- GET 1\n{}",
        raw(addr, &req("GET", "/health/ready")).await
    );
    println!(
        "--- HEAD 1 (cached)\n{}",
        raw(addr, &req("HEAD", "/health/ready")).await
    );
    tokio::time::sleep(Duration::from_millis(80)).await;
    println!(
        "--- HEAD 2 (stale, body changes)\n{}",
        raw(addr, &req("HEAD", "/health/ready")).await
    );
    println!(
        "--- GET 2\n{}",
        raw(addr, &req("GET", "/health/ready")).await
    );
    println!(
        "--- POST\n{}",
        raw(addr, &req("POST", "/health/ready")).await
    );
    registry.begin_drain();
    println!(
        "--- HEAD draining\n{}",
        raw(addr, &req("HEAD", "/health/ready")).await
    );
    println!(
        "--- GET draining\n{}",
        raw(addr, &req("GET", "/health/ready")).await
    );
    println!(
        "--- GET live\n{}",
        raw(addr, &req("GET", "/health/live")).await
    );
}
