//! # keel-health
//!
//! Liveness, readiness and startup checks for services.
//!
//! **Status:** this crate is reserved in the workspace and is being built; it exports
//! nothing yet. It will hold a `HealthCheck` trait and a registry (names, tags, per-check
//! timeouts, criticality, concurrent execution, cached single-flight results), built-in
//! Redis, PostgreSQL, HTTP and circuit-breaker checks, an axum router serving
//! `/health/live`, `/health/ready`, `/health/startup` and `/health` in
//! `application/health+json`, readiness that drains on shutdown, and a background
//! publisher that exports check results as metrics.
//!
//! # Features
//!
//! | feature | what it adds |
//! |---|---|
//! | `circuit-breaker` | a check that reports a `keel-resilience` breaker's state |
