//! # keel-resilience
//!
//! Resilience policies for the Keel family: the crate every other Keel crate leans on
//! when a dependency is slow, failing or throttling.
//!
//! **Status:** this crate is reserved in the workspace and is being built; it exports
//! nothing yet. It will hold, as the Keel design describes:
//!
//! - a circuit breaker with count- and time-based sliding windows, failure-rate and
//!   slow-call-rate thresholds, half-open permits, manual states and state-change events,
//!   lock-free on the closed path;
//! - a keyed registry (one breaker or limiter per host, tenant or mailbox) with a size
//!   bound and idle eviction;
//! - retry with exponential or decorrelated jitter, `Retry-After` as a delay source and a
//!   retry budget;
//! - timeouts (per attempt and total), a bulkhead, rate limiters (in-process and a
//!   Redis-backed GCRA shared by many instances), fallback and hedging;
//! - one pipeline that composes them in a documented order, and a tower `Layer` for each;
//! - the error classification (transient / throttled / permanent) that the other Keel
//!   crates' errors implement.
//!
//! It depends on no other Keel crate.
