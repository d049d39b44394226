//! # keel-health
//!
//! Liveness, readiness and startup probes that cannot stampede a dependency.
//!
//! ```
//! use std::time::Duration;
//! use keel_health::{check_fn, health_router, CheckResult, HealthRegistry, Registration, Tag};
//!
//! let health = HealthRegistry::builder()
//!     .cache_ttl(Duration::from_secs(2))
//!     .register(
//!         Registration::new("queue", check_fn(|| async { CheckResult::pass() }))
//!             .tags([Tag::Ready])
//!             .timeout(Duration::from_millis(500)),
//!     )
//!     .build();
//! let app: axum::Router = axum::Router::new().merge(health_router(health.clone(), keel_health::Details::Shown));
//! // At startup's end: health.mark_started();
//! // On SIGTERM, before stopping the server: health.drain(Duration::from_secs(5)).await;
//! ```
//!
//! | item | what it is |
//! |---|---|
//! | [`HealthCheck`], [`check_fn`] | a check: async, returns pass / warn / fail with an observed value |
//! | [`Registration`] | a check's name, [`Tag`]s, timeout and criticality |
//! | [`HealthRegistry`] | runs checks concurrently, caches results with single flight, drains on shutdown, publishes metrics |
//! | [`health_router`] | `/health/live`, `/health/ready`, `/health/startup`, `/health` in `application/health+json` |
//! | [`checks`] | Redis, PostgreSQL, HTTP and circuit-breaker checks (features) |
//!
//! ## Features
//!
//! | feature | what it adds |
//! |---|---|
//! | `redis` | [`checks::RedisCheck`](checks) (`PING` on a connection of its own, reconnected at once, no backoff) |
//! | `postgres` | [`checks::PostgresCheck`](checks) (`SELECT 1` from a deadpool-postgres pool) |
//! | `http-check` | [`checks::HttpCheck`](checks) (status and latency threshold) |
//! | `circuit-breaker` | [`checks::BreakerCheck`](checks) (a keel-resilience breaker's state) |
#![cfg_attr(docsrs, feature(doc_cfg))]

mod check;
pub mod checks;
mod registry;
mod router;

pub use check::{CheckResult, FnCheck, HealthCheck, Status, check_fn};
pub use registry::{
    CheckOutcome, HealthRegistry, HealthRegistryBuilder, HealthReport, Registration, Tag,
};
pub use router::{Details, HEALTH_JSON, health_router};

/// The redis-rs version the Redis check takes a `redis::Client` of: name it through this
/// re-export, so its version always matches.
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use redis;

/// The deadpool-postgres version the PostgreSQL check takes a pool of.
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub use deadpool_postgres;

/// The reqwest version the HTTP check takes a client of.
#[cfg(feature = "http-check")]
#[cfg_attr(docsrs, doc(cfg(feature = "http-check")))]
pub use reqwest;

/// The README's example, compiled as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
