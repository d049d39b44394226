//! A service exposing `/health/live`, `/health/ready`, `/health/startup` and `/health`.
//! With `REDIS_URL` and `DATABASE_URL` set it checks those servers; otherwise a closure
//! check stands in. On Ctrl-C readiness fails at once and the service drains for 2 s.
//!
//! ```text
//! cargo run -p keel-examples --example health_service            # serve on 127.0.0.1:3001
//! cargo run -p keel-examples --example health_service -- --smoke # scripted self-check
//! REDIS_URL=redis://127.0.0.1:6379 DATABASE_URL=postgres://... cargo run -p keel-examples --example health_service
//! ```

// An executable's report goes to stdout.
#![allow(clippy::print_stdout)]

use std::net::SocketAddr;
use std::time::Duration;

use keel_health::checks::{PostgresCheck, RedisCheck};
use keel_health::{CheckResult, HealthRegistry, Registration, Tag, check_fn, health_router};

async fn registry() -> Result<HealthRegistry, Box<dyn std::error::Error>> {
    let mut builder = HealthRegistry::builder()
        .cache_ttl(Duration::from_secs(2))
        .service("health-service", env!("CARGO_PKG_VERSION"));
    if let Ok(url) = std::env::var("REDIS_URL") {
        // The check keeps a connection of its own, without reconnect backoff, so
        // readiness follows Redis within the 2 s TTL (plus the check's 1 s timeout).
        let check = RedisCheck::new(redis::Client::open(url)?);
        builder = builder.register(Registration::new("redis", check));
        println!("checking Redis");
    }
    if let Ok(url) = std::env::var("DATABASE_URL") {
        let mut config = deadpool_postgres::Config::new();
        config.url = Some(url);
        let pool = config.create_pool(
            Some(deadpool_postgres::Runtime::Tokio1),
            tokio_postgres::NoTls,
        )?;
        builder = builder.register(Registration::new("postgres", PostgresCheck::new(pool)));
        println!("checking PostgreSQL");
    }
    // Always there: a closure check on the process's own state, and a startup step.
    builder = builder
        .register(
            Registration::new(
                "work-queue",
                check_fn(|| async { CheckResult::pass().observed(3.0, "messages") }),
            )
            .tags([Tag::Ready]),
        )
        .register(
            Registration::new("event-loop", check_fn(|| async { CheckResult::pass() }))
                .tags([Tag::Live]),
        );
    Ok(builder.build())
}

async fn probe(
    client: &reqwest::Client,
    base: &str,
    path: &str,
) -> Result<(u16, serde_json::Value), reqwest::Error> {
    let response = client.get(format!("{base}{path}")).send().await?;
    let status = response.status().as_u16();
    Ok((status, response.json().await?))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let smoke = std::env::args().any(|a| a == "--smoke");
    let health = registry().await?;
    let _publisher = health.spawn_publisher(Duration::from_secs(15));
    let addr: SocketAddr = if smoke {
        "127.0.0.1:0".parse()?
    } else {
        "127.0.0.1:3001".parse()?
    };
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app: axum::Router = health_router(health.clone(), keel_health::Details::Shown);
    let draining = health.clone();
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = tokio::signal::ctrl_c().await;
                println!("shutting down: readiness fails, draining for 2 s");
                draining.drain(Duration::from_secs(2)).await;
            })
            .await
    });

    if !smoke {
        // Startup work would run here; then:
        health.mark_started();
        println!("health endpoints on http://{bound}/health (Ctrl-C to stop)");
        server.await??;
        return Ok(());
    }

    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    let base = format!("http://{bound}");
    let mut failures = 0;
    let mut check = |ok: bool, what: &str| {
        println!("{} {what}", if ok { "ok  " } else { "FAIL" });
        failures += u32::from(!ok);
    };
    let (status, body) = probe(&client, &base, "/health/startup").await?;
    check(
        status == 503 && body["status"] == "fail",
        "startup fails until startup work is done",
    );
    health.mark_started();
    check(
        probe(&client, &base, "/health/startup").await?.0 == 200,
        "startup passes once marked done",
    );
    let (status, body) = probe(&client, &base, "/health/ready").await?;
    check(
        status == 200 && body["status"] == "pass",
        "readiness passes",
    );
    let (status, body) = probe(&client, &base, "/health").await?;
    check(
        status == 200 && body["checks"]["work-queue:status"][0]["observedValue"] == 3.0,
        "/health shows each check in application/health+json",
    );
    health.begin_drain();
    check(
        probe(&client, &base, "/health/ready").await?.0 == 503,
        "readiness fails at once when draining",
    );
    check(
        probe(&client, &base, "/health/live").await?.0 == 200,
        "liveness stays up while draining",
    );
    server.abort();
    if failures > 0 {
        return Err(format!("{failures} smoke check(s) failed").into());
    }
    println!("smoke test passed");
    Ok(())
}
