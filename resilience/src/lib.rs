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
//! | [`retry`] | [`Retry`](retry::Retry): exponential (full jitter) or decorrelated backoff, delays from `Retry-After`, max attempts and elapsed time, a retry budget, idempotency |
//! | [`timeout`] | [`with_timeout`](timeout::with_timeout): a limit that cancels the work |
//! | [`bulkhead`] | [`Bulkhead`](bulkhead::Bulkhead): a concurrency limit with a bounded wait |
//! | [`rate_limit`] | [`RateLimiter`](rate_limit::RateLimiter) and [`KeyedRateLimiter`](rate_limit::KeyedRateLimiter) on governor; `RedisRateLimiter`, a GCRA in one Lua script shared by every instance (feature `redis`) |
//! | [`keyed`] | [`KeyedRegistry`](keyed::KeyedRegistry): one breaker or limiter per key, bounded in size and dropped when idle |
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
//! ## Features
//!
//! | feature | what it adds |
//! |---|---|
//! | `redis` | `RedisRateLimiter`, a rate limit shared through Redis |
//!
//! **Status:** the circuit breaker, retry, timeout, bulkhead, rate limiters, the keyed
//! registry, the error classification and `Retry-After` parsing are here. Fallback,
//! hedging, the composed pipeline and tower layers beyond the breaker's are being
//! built (see the workspace's issue tracker).
//!
//! It depends on no other Keel crate.
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod breaker;
pub mod bulkhead;
pub mod classify;
pub mod keyed;
pub mod rate_limit;
pub mod retry;
mod retry_after;
mod rolling;
pub mod timeout;

pub use classify::{Classify, ErrorClass};
pub use retry_after::{MAX_RETRY_AFTER, parse_retry_after};
