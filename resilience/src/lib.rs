//! # keel-resilience
//!
//! Resilience policies for the Keel family, built to run on every call a service makes:
//! lock-free where it matters, no allocation on the hot path, and time taken from
//! tokio's clock so tests run under paused time.
//!
//! | module | what it holds |
//! |---|---|
//! | [`breaker`] | [`CircuitBreaker`](breaker::CircuitBreaker): count- and time-based windows, failure and slow-call rates, half-open trials, fixed or backing-off open waits, manual states, events, a tower layer |
//! | [`classify`] | [`ErrorClass`] and [`Classify`]: transient / throttled / permanent, shared by every Keel crate |
//! | [`parse_retry_after`] | `Retry-After` as seconds, fractional seconds or an HTTP date |
//!
//! ```
//! use keel_resilience::breaker::{CircuitBreaker, CircuitBreakerConfig};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let breaker = CircuitBreaker::new(CircuitBreakerConfig::standard("inventory"));
//! let stock = breaker
//!     .call(|| async { Ok::<_, std::io::Error>(42) })
//!     .await
//!     .expect("closed breaker runs the call");
//! assert_eq!(stock, 42);
//! # }
//! ```
//!
//! **Status:** the circuit breaker, the error classification and `Retry-After` parsing
//! are here. Retry with budgets, timeouts, bulkheads, rate limiters (in-process and a
//! Redis GCRA), the keyed registry, fallback, hedging and the composed pipeline are
//! being built (see the workspace's issue tracker).
//!
//! It depends on no other Keel crate.
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod breaker;
pub mod classify;
mod retry_after;

pub use classify::{Classify, ErrorClass};
pub use retry_after::{MAX_RETRY_AFTER, parse_retry_after};
