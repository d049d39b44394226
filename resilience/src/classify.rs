//! Error classification shared by the Keel family.

use std::time::Duration;

/// What kind of failure an error is, which decides what the policies do with it.
///
/// | class | retry | circuit breaker |
/// |---|---|---|
/// | [`Transient`](ErrorClass::Transient) | yes, with backoff | counts as a failure |
/// | [`Throttled`](ErrorClass::Throttled) | yes, after the server's delay if it gave one | counts as a failure |
/// | [`Permanent`](ErrorClass::Permanent) | never | ignored: the dependency answered, the request was wrong |
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorClass {
    /// May succeed if tried again: a timeout, a reset connection, a 5xx.
    Transient,
    /// The dependency asked us to slow down (HTTP 429, or 503 with `Retry-After`).
    Throttled {
        /// How long the dependency asked us to wait, when it said.
        retry_after: Option<Duration>,
    },
    /// Will fail again the same way: bad input, not found, forbidden.
    Permanent,
}

impl ErrorClass {
    /// Whether trying again may help.
    #[must_use]
    pub fn is_retryable(self) -> bool {
        !matches!(self, ErrorClass::Permanent)
    }

    /// The delay the dependency asked for, if any.
    #[must_use]
    pub fn retry_after(self) -> Option<Duration> {
        match self {
            ErrorClass::Throttled { retry_after } => retry_after,
            _ => None,
        }
    }

    /// The class for an HTTP status: 408, 5xx (but 501 and 505) are transient, 429 is
    /// throttled, 503 is throttled when a `Retry-After` came with it, everything else
    /// (including 2xx–4xx) is permanent.
    ///
    /// ```
    /// use std::time::Duration;
    /// use keel_resilience::ErrorClass;
    ///
    /// assert_eq!(ErrorClass::from_http_status(500, None), ErrorClass::Transient);
    /// assert_eq!(ErrorClass::from_http_status(404, None), ErrorClass::Permanent);
    /// assert_eq!(
    ///     ErrorClass::from_http_status(429, Some(Duration::from_secs(2))),
    ///     ErrorClass::Throttled { retry_after: Some(Duration::from_secs(2)) },
    /// );
    /// ```
    #[must_use]
    pub fn from_http_status(status: u16, retry_after: Option<Duration>) -> Self {
        match status {
            429 => ErrorClass::Throttled { retry_after },
            503 if retry_after.is_some() => ErrorClass::Throttled { retry_after },
            408 | 500 | 502 | 503 | 504 | 506..=599 => ErrorClass::Transient,
            _ => ErrorClass::Permanent,
        }
    }
}

/// Implemented by errors so the policies can decide what to do with them. The other Keel
/// crates implement it for their errors; implement it for yours.
///
/// ```
/// use keel_resilience::{Classify, ErrorClass};
///
/// #[derive(Debug)]
/// enum DbError { ConnectionLost, UniqueViolation }
///
/// impl Classify for DbError {
///     fn class(&self) -> ErrorClass {
///         match self {
///             DbError::ConnectionLost => ErrorClass::Transient,
///             DbError::UniqueViolation => ErrorClass::Permanent,
///         }
///     }
/// }
/// ```
pub trait Classify {
    /// The class of this error.
    fn class(&self) -> ErrorClass;
}

impl Classify for std::io::Error {
    fn class(&self) -> ErrorClass {
        use std::io::ErrorKind::{
            BrokenPipe, ConnectionAborted, ConnectionRefused, ConnectionReset, Interrupted,
            NotConnected, TimedOut, UnexpectedEof, WouldBlock,
        };
        match self.kind() {
            TimedOut | ConnectionReset | ConnectionAborted | ConnectionRefused | BrokenPipe
            | NotConnected | Interrupted | UnexpectedEof | WouldBlock => ErrorClass::Transient,
            _ => ErrorClass::Permanent,
        }
    }
}

impl Classify for tokio::time::error::Elapsed {
    fn class(&self) -> ErrorClass {
        ErrorClass::Transient
    }
}

impl<E: Classify + ?Sized> Classify for Box<E> {
    fn class(&self) -> ErrorClass {
        (**self).class()
    }
}

impl<E: Classify + ?Sized> Classify for std::sync::Arc<E> {
    fn class(&self) -> ErrorClass {
        (**self).class()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_statuses() {
        for status in [408, 500, 502, 504, 599] {
            assert_eq!(
                ErrorClass::from_http_status(status, None),
                ErrorClass::Transient,
                "{status}"
            );
        }
        for status in [200, 400, 401, 403, 404, 409, 412, 501, 505] {
            assert_eq!(
                ErrorClass::from_http_status(status, None),
                ErrorClass::Permanent,
                "{status}"
            );
        }
        assert_eq!(
            ErrorClass::from_http_status(503, None),
            ErrorClass::Transient
        );
        let wait = Some(Duration::from_millis(2128));
        assert_eq!(
            ErrorClass::from_http_status(503, wait),
            ErrorClass::Throttled { retry_after: wait }
        );
        assert_eq!(ErrorClass::from_http_status(503, wait).retry_after(), wait);
        assert!(!ErrorClass::Permanent.is_retryable());
    }

    #[test]
    fn io_errors() {
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert_eq!(reset.class(), ErrorClass::Transient);
        let denied = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        assert_eq!(denied.class(), ErrorClass::Permanent);
    }
}
