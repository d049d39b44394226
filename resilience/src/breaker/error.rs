//! Circuit breaker errors.

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

use super::State;
use crate::classify::{Classify, ErrorClass};

/// The breaker refused a call without running it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallNotPermitted {
    pub(crate) breaker: Cow<'static, str>,
    pub(crate) state: State,
    pub(crate) retry_after: Option<Duration>,
}

impl CallNotPermitted {
    /// The breaker's name.
    #[must_use]
    pub fn breaker(&self) -> &str {
        &self.breaker
    }

    /// The state that refused the call: open, forced open, or half-open with every trial
    /// permit taken.
    #[must_use]
    pub fn state(&self) -> State {
        self.state
    }

    /// How long until the breaker lets trial calls through, when it is open.
    #[must_use]
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }
}

impl fmt::Display for CallNotPermitted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "circuit breaker `{}` is {} and refused the call",
            self.breaker, self.state
        )?;
        if let Some(wait) = self.retry_after {
            write!(f, "; it lets trial calls through in {wait:.1?}")?;
        }
        Ok(())
    }
}

impl std::error::Error for CallNotPermitted {}

impl Classify for CallNotPermitted {
    fn class(&self) -> ErrorClass {
        ErrorClass::Throttled {
            retry_after: self.retry_after,
        }
    }
}

/// The error of a call made through a breaker: refused, or the call's own error.
#[derive(Debug)]
pub enum BreakerError<E> {
    /// The breaker did not run the call.
    Rejected(CallNotPermitted),
    /// The call ran and failed.
    Inner(E),
}

impl<E> BreakerError<E> {
    /// Whether the breaker refused the call.
    #[must_use]
    pub fn is_rejected(&self) -> bool {
        matches!(self, BreakerError::Rejected(_))
    }

    /// The call's own error, if it ran.
    pub fn into_inner(self) -> Option<E> {
        match self {
            BreakerError::Inner(e) => Some(e),
            BreakerError::Rejected(_) => None,
        }
    }
}

impl<E: fmt::Display> fmt::Display for BreakerError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BreakerError::Rejected(r) => r.fmt(f),
            BreakerError::Inner(e) => e.fmt(f),
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for BreakerError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            BreakerError::Rejected(r) => Some(r),
            BreakerError::Inner(e) => Some(e),
        }
    }
}

impl<E: Classify> Classify for BreakerError<E> {
    fn class(&self) -> ErrorClass {
        match self {
            BreakerError::Rejected(r) => r.class(),
            BreakerError::Inner(e) => e.class(),
        }
    }
}
