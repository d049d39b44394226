//! # keel-resilience
//!
//! Resilience policies for the Keel family, built to run on every call a service makes:
//! lock-free where it matters, no allocation on the hot path; monotonic time from
//! tokio's clock so tests run under paused time (the in-process rate limiter's on
//! request: [`RateLimiter::on_tokio_time`](rate_limit::RateLimiter::on_tokio_time)),
//! wall-clock time from an injectable [`clock::WallClock`].
//!
//! | module | what it holds |
//! |---|---|
//! | [`breaker`] | [`CircuitBreaker`](breaker::CircuitBreaker): count- and time-based windows, failure and slow-call rates, half-open trials, fixed or backing-off open waits, manual states, events, a tower layer |
//! | [`classify`] | [`ErrorClass`] and [`Classify`]: transient / throttled / permanent, shared by every Keel crate |
//! | [`retry`] | [`Retry`](retry::Retry): exponential (full jitter) or decorrelated backoff, delays from `Retry-After`, max attempts and elapsed time, a retry budget, idempotency |
//! | [`dead_letter`] | [`DeadLetterQueue`](dead_letter::DeadLetterQueue): work that failed for good, kept in memory, a Redis stream (feature `redis`) or PostgreSQL (feature `postgres`); list, inspect, replay, purge |
//! | [`clock`] | [`WallClock`](clock::WallClock): injected wall-clock time ([`ManualClock`](clock::ManualClock) in tests) for every crate of the family |
//! | [`timeout`] | [`with_timeout`](timeout::with_timeout): a limit that cancels the work; [`TimeoutLayer`](timeout::TimeoutLayer) (zero allocation) |
//! | [`bulkhead`] | [`Bulkhead`](bulkhead::Bulkhead): a concurrency limit with a bounded wait |
//! | [`rate_limit`] | [`RateLimiter`](rate_limit::RateLimiter) and [`KeyedRateLimiter`](rate_limit::KeyedRateLimiter) from a validated [`Quota`](rate_limit::Quota); [`RateLimitLayer`](rate_limit::RateLimitLayer) (zero allocation); `RedisRateLimiter`, a GCRA in one Lua script shared by every instance (feature `redis`) |
//! | [`pipeline`] | [`Pipeline`](pipeline::Pipeline): rate limit → total timeout → retry → breaker → bulkhead → attempt timeout, in that order; [`PipelineLayer`](pipeline::PipelineLayer): the pipeline, or any one policy, as a tower layer |
//! | [`fallback`] | [`with_fallback`](fallback::with_fallback): a second answer for chosen errors |
//! | [`hedge`] | [`Hedge`](hedge::Hedge): start another attempt when one is slow, take the first success |
//! | [`keyed`] | [`KeyedRegistry`](keyed::KeyedRegistry): one breaker or limiter per key, bounded in size and dropped when idle |
//! | [`parse_retry_after`] | `Retry-After` as seconds, fractional seconds or an HTTP date |
//!
//! Every policy's module holds its tower layer beside it (`breaker`, `timeout`,
//! `rate_limit`, `pipeline`), each named `…Layer` / `…Service` / `ResponseFuture`, and a
//! policy whose settings can be wrong says so with its module's `ConfigError`.
//!
//! ```
//! use keel_resilience::pipeline::Pipeline;
//! use keel_resilience::retry::Idempotency;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! // Total timeout, retry with a budget, circuit breaker, attempt timeout.
//! let inventory = Pipeline::standard("inventory");
//! let stock = inventory
//!     .run(Idempotency::Idempotent, || async { Ok::<_, std::io::Error>(42) })
//!     .await
//!     .expect("a healthy dependency answers");
//! assert_eq!(stock, 42);
//! # }
//! ```
//!
//! ## Features
//!
//! | feature | what it adds |
//! |---|---|
//! | `redis` | `RedisRateLimiter`, a rate limit shared through Redis; `RedisDeadLetters`, dead letters in a Redis stream |
//! | `postgres` | `PostgresDeadLetters`, dead letters in PostgreSQL, with its migration |
//!
//!
//! It depends on no other Keel crate.
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod breaker;
pub mod bulkhead;
pub mod classify;
pub mod clock;
pub mod dead_letter;
pub mod fallback;
pub mod hedge;
pub mod keyed;
mod layer_error;
pub mod pipeline;
pub mod rate_limit;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod redis_connection;
pub mod retry;
mod retry_after;
mod rolling;
pub mod timeout;

pub use classify::{Classified, Classify, ErrorClass, class_of};
pub use layer_error::LayerError;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use redis_connection::RedisConnection;

/// The redis-rs version [`RedisConnection`] wraps and the Redis policies take: name it
/// through this re-export, so its version always matches.
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use redis;
pub use retry_after::{MAX_RETRY_AFTER, parse_retry_after};

/// The README's example, compiled as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
