//! The error of the single-policy layers ([`TimeoutLayer`](crate::timeout::TimeoutLayer),
//! [`RateLimitLayer`](crate::rate_limit::RateLimitLayer)).

use crate::classify::{Classify, ErrorClass};

/// The error of a single-policy layer: the policy refused, or the inner service failed.
#[derive(Debug, thiserror::Error)]
pub enum LayerError<P, E> {
    /// The policy stopped the call.
    #[error(transparent)]
    Policy(P),
    /// The inner service failed.
    #[error(transparent)]
    Inner(E),
}

impl<P: Classify, E: Classify> Classify for LayerError<P, E> {
    fn class(&self) -> ErrorClass {
        match self {
            LayerError::Policy(p) => p.class(),
            LayerError::Inner(e) => e.class(),
        }
    }
}
