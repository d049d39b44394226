//! Built-in checks, each behind the feature of its client.

#[cfg(feature = "circuit-breaker")]
mod breaker;
#[cfg(feature = "http-check")]
mod http;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "redis")]
mod redis;

#[cfg(feature = "circuit-breaker")]
#[cfg_attr(docsrs, doc(cfg(feature = "circuit-breaker")))]
pub use breaker::BreakerCheck;
#[cfg(feature = "http-check")]
#[cfg_attr(docsrs, doc(cfg(feature = "http-check")))]
pub use http::HttpCheck;
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub use postgres::PostgresCheck;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use redis::RedisCheck;

/// Milliseconds, for `observedValue`.
#[cfg(any(feature = "redis", feature = "postgres", feature = "http-check"))]
fn millis(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
