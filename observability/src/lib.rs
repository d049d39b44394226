//! # keel-observability
//!
//! Logs, correlation, metrics, SLOs and error responses for Rust services, in one crate
//! that the rest of the Keel family builds on.
//!
//! ```no_run
//! use axum::{routing::get, Router};
//! use keel_observability::slo::{SloConfig, SloTracker};
//! use keel_observability::{
//!     init, ApiError, CorrelationId, CorrelationLayer, ErrorCode, LogConfig, Problem,
//!     PrometheusMetrics, RedLayer,
//! };
//!
//! async fn order(id: CorrelationId) -> Result<String, ApiError<Problem>> {
//!     // This line carries the correlation id, trace id and request fields.
//!     tracing::info!(caller = %id, "looking the order up");
//!     Err(Problem::new(ErrorCode::RES_NOT_FOUND).with_detail("No such order."))?
//! }
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let _logs = init(LogConfig::from_env()?)?;
//!     let slo = SloTracker::new(SloConfig::standard());
//!     let metrics = PrometheusMetrics::install()?.with_slo(slo.clone());
//!     // Both layers in one ServiceBuilder (one boxed layer per request, not two); the
//!     // scrape endpoint merged beside them, so scrapes are not counted as traffic.
//!     let api = Router::new().route("/orders/{id}", get(order)).layer(
//!         tower::ServiceBuilder::new()
//!             .layer(CorrelationLayer::new())
//!             .layer(RedLayer::new().with_slo(slo)),
//!     );
//!     let app = api.merge(metrics.router());
//!     let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//!     axum::serve(listener, app).await?;
//!     Ok(())
//! }
//! ```
//!
//! ## What is where
//!
//! | module | what it holds |
//! |---|---|
//! | [`correlation`] | [`CorrelationId`] (UUIDv7), [`RequestContext`] in a task-local scope, the server [`CorrelationLayer`], [`spawn`] / [`in_current_context`] for tasks, the reqwest `CorrelationMiddleware` |
//! | [`logging`] | [`init`] for executables and the [`JsonLayer`] that flattens fields, span fields and the correlation scope into one JSON object per line |
//! | [`red`] | [`RedLayer`]: request count, errors, duration histogram and in-flight gauge by route, method and status |
//! | [`PrometheusMetrics`] | the recorder with bucketed histograms and a `/metrics` router |
//! | [`slo`] | [`SloTracker`](slo::SloTracker): rolling p50/p95/p99, availability and burn rate per route |
//! | [`problem`] | the [`ErrorCode`] taxonomy, RFC 9457 [`Problem`] bodies and the [`IntoProblem`] trait |
//! | `otlp` | OTLP/HTTP export of traces and metrics (feature `otlp`) |
//!
//! Libraries emit `tracing` events and `metrics` calls only; executables call [`init`]
//! and install a recorder.
//!
//! ## Features
//!
//! | feature | default | what it adds |
//! |---|---|---|
//! | `axum` | yes | extractors, `IntoResponse` for problems, [`RedLayer`], the `/metrics` router |
//! | `prometheus` | yes | [`PrometheusMetrics`] |
//! | `reqwest` | yes | `CorrelationMiddleware` for `reqwest-middleware` |
//! | `otlp` | no | OTLP/HTTP export of spans and metrics |
//!
//! ## Minimum supported Rust version
//!
//! The MSRV is in the workspace's `rust-version`; raising it is a minor-version change.
#![cfg_attr(docsrs, feature(doc_cfg))]

mod buckets;
pub mod correlation;
pub mod logging;
#[cfg(feature = "otlp")]
#[cfg_attr(docsrs, doc(cfg(feature = "otlp")))]
pub mod otlp;
pub mod problem;
#[cfg(feature = "prometheus")]
mod prometheus;
#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
pub mod red;
pub mod slo;

pub use buckets::LATENCY_BUCKETS;
#[cfg(feature = "reqwest")]
#[cfg_attr(docsrs, doc(cfg(feature = "reqwest")))]
pub use correlation::CorrelationMiddleware;
pub use correlation::{
    CorrelationId, CorrelationLayer, RequestContext, TraceContext, in_current_context, spawn,
};
pub use logging::{InitError, JsonLayer, LogConfig, LogFormat, LogGuard, init};
pub use problem::{ApiError, ErrorCode, ErrorFamily, IntoProblem, Problem};
#[cfg(feature = "prometheus")]
#[cfg_attr(docsrs, doc(cfg(feature = "prometheus")))]
pub use prometheus::{MetricsError, PrometheusMetrics};
#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
pub use red::RedLayer;

/// The README's example, compiled as a doctest.
#[cfg(all(doctest, feature = "axum", feature = "prometheus"))]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
