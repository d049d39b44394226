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

/// An error with its [`ErrorClass`] attached, for errors that travel as
/// `Box<dyn Error>` (a cache loader's, a health check's): [`class_of`] finds the class
/// again anywhere in a source chain. Transparent: it displays as the error it wraps and
/// has that error's source.
///
/// ```
/// use keel_resilience::{Classified, ErrorClass, class_of};
/// use std::time::Duration;
///
/// let throttled = ErrorClass::Throttled { retry_after: Some(Duration::from_secs(2)) };
/// let boxed: Box<dyn std::error::Error + Send + Sync> =
///     Box::new(Classified::new(throttled, std::io::Error::other("429 from Graph")));
/// assert_eq!(boxed.to_string(), "429 from Graph");
/// assert_eq!(class_of(boxed.as_ref()), Some(throttled));
/// ```
#[derive(Debug)]
pub struct Classified {
    class: ErrorClass,
    error: Box<dyn std::error::Error + Send + Sync + 'static>,
}

impl Classified {
    /// `error`, classified as `class`.
    pub fn new(
        class: ErrorClass,
        error: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Self {
        Self {
            class,
            error: error.into(),
        }
    }

    /// The error it wraps.
    #[must_use]
    pub fn get_ref(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        self.error.as_ref()
    }

    /// The error it wraps, unwrapped.
    #[must_use]
    pub fn into_inner(self) -> Box<dyn std::error::Error + Send + Sync + 'static> {
        self.error
    }
}

impl std::fmt::Display for Classified {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.error, f)
    }
}

impl std::error::Error for Classified {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.error.source()
    }
}

impl Classify for Classified {
    fn class(&self) -> ErrorClass {
        self.class
    }
}

/// The class of the first error in `error`'s source chain (itself included) whose class
/// is known: a [`Classified`], an [`std::io::Error`] or a tokio timeout. `None` when none
/// of them is.
#[must_use]
pub fn class_of(error: &(dyn std::error::Error + 'static)) -> Option<ErrorClass> {
    let mut next = Some(error);
    let mut depth = 0;
    while let Some(error) = next {
        if let Some(classified) = error.downcast_ref::<Classified>() {
            return Some(classified.class);
        }
        if let Some(io) = error.downcast_ref::<std::io::Error>() {
            return Some(io.class());
        }
        if error
            .downcast_ref::<tokio::time::error::Elapsed>()
            .is_some()
        {
            return Some(ErrorClass::Transient);
        }
        // A Classified's wrapped error is reached through its own downcast above; a
        // cycle-free chain ends, and a hostile one is cut.
        depth += 1;
        if depth > 64 {
            return None;
        }
        next = error.source();
    }
    None
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
    fn class_of_finds_the_class_in_a_chain() {
        #[derive(Debug)]
        struct Outer(Classified);
        impl std::fmt::Display for Outer {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("outer")
            }
        }
        impl std::error::Error for Outer {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let inner = Classified::new(ErrorClass::Permanent, "404");
        let outer = Outer(inner);
        assert_eq!(class_of(&outer), Some(ErrorClass::Permanent));
        let io = std::io::Error::from(std::io::ErrorKind::TimedOut);
        assert_eq!(class_of(&io), Some(ErrorClass::Transient));
        let plain: Box<dyn std::error::Error + Send + Sync> = "plain".into();
        assert_eq!(class_of(plain.as_ref()), None);
    }

    #[test]
    fn io_errors() {
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert_eq!(reset.class(), ErrorClass::Transient);
        let denied = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        assert_eq!(denied.class(), ErrorClass::Permanent);
    }
}
