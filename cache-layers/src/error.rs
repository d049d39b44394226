//! What can go wrong.

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// A boxed error from a loader.
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// A cache operation failed.
///
/// Cheap to clone: one failed load is given to every caller that waited for it.
#[derive(Clone)]
#[non_exhaustive]
pub enum CacheError {
    /// The loader failed and no stale value was allowed or available. The loader's error
    /// is the [`source`](std::error::Error::source) (and [`loader_error`](Self::loader_error));
    /// its class, when the loader gave one (a [`keel_resilience::Classified`], an I/O
    /// error), is this error's [`Classify`](keel_resilience::Classify) answer.
    Loader(Arc<dyn StdError + Send + Sync + 'static>),
    /// The loader panicked.
    LoaderPanicked,
    /// The loader did not finish within the hard timeout and no stale value was available.
    /// The load goes on in the background and fills the cache when it finishes.
    Timeout {
        /// The timeout that passed.
        after: Duration,
    },
    /// The key is cached as absent (negative caching); use
    /// [`Cache::get_or_load_optional`](crate::Cache::get_or_load_optional) for keys that
    /// may not exist.
    Absent,
    /// The shared L2 could not be reached, so the change was applied to this instance only.
    /// It is kept pending (see [`BackplaneStatus::pending_changes`](crate::BackplaneStatus))
    /// and applied to L2 and announced to the other instances as soon as Redis answers;
    /// until then this instance does not read the key from L2, and the others keep their
    /// copy (at most until its TTL). No retry is needed.
    L2Unavailable(L2Failure),
    /// A value could not be encoded for L2.
    Encode(CodecError),
    /// The cache is shutting down and takes no more writes.
    ShutDown,
    /// Writes queued for L2 could not be written before the shutdown deadline.
    Unflushed {
        /// How many writes are left.
        pending: usize,
    },
}

impl CacheError {
    pub(crate) fn loader(error: BoxError) -> Self {
        CacheError::Loader(Arc::from(error))
    }

    /// Whether the loader failed (rather than the cache).
    #[must_use]
    pub fn is_loader(&self) -> bool {
        matches!(self, CacheError::Loader(_) | CacheError::LoaderPanicked)
    }

    /// Whether a timeout passed: the loader's, or L2's.
    #[must_use]
    pub fn is_timeout(&self) -> bool {
        matches!(
            self,
            CacheError::Timeout { .. } | CacheError::L2Unavailable(L2Failure::Timeout(_))
        )
    }

    /// Whether the shared L2 could not be reached (the change was applied locally and is
    /// kept pending).
    #[must_use]
    pub fn is_unavailable(&self) -> bool {
        matches!(self, CacheError::L2Unavailable(_))
    }

    /// The loader's own error, when the loader failed.
    #[must_use]
    pub fn loader_error(&self) -> Option<&(dyn StdError + Send + Sync + 'static)> {
        match self {
            CacheError::Loader(e) => Some(e.as_ref()),
            _ => None,
        }
    }

    /// The loader's error as the type it returned (or, when it returned a
    /// [`keel_resilience::Classified`], the type inside), without a manual downcast.
    ///
    /// ```
    /// use keel_cache_layers::CacheError;
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let cache = keel_cache_layers::Cache::<String>::builder("doc").build().unwrap();
    /// let error = cache
    ///     .get_or_load("k", || async { Err::<String, _>(std::io::Error::other("backend down")) })
    ///     .await
    ///     .unwrap_err();
    /// let io: &std::io::Error = error.loader_error_as().unwrap();
    /// assert_eq!(io.to_string(), "backend down");
    /// # }
    /// ```
    #[must_use]
    pub fn loader_error_as<T: StdError + 'static>(&self) -> Option<&T> {
        let error = self.loader_error()?;
        if let Some(typed) = error.downcast_ref::<T>() {
            return Some(typed);
        }
        error
            .downcast_ref::<keel_resilience::Classified>()
            .and_then(|classified| classified.get_ref().downcast_ref::<T>())
    }
}

/// Why the shared L2 could not be reached.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum L2Failure {
    /// L2's circuit breaker is open after recent failures: Redis is not asked.
    #[error("L2's circuit breaker is open after recent failures")]
    BreakerOpen,
    /// Redis did not answer within the operation timeout.
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
    /// Redis answered with an error, or the connection failed.
    #[error("Redis failed")]
    Redis(#[source] Arc<dyn StdError + Send + Sync + 'static>),
    /// The backplane has not reached Redis yet, so the namespace's current generation is
    /// not known.
    #[error("L2 is not connected yet (the namespace's generation is unknown)")]
    NotConnected,
    /// The namespace's generation kept moving (repeated `clear`s, or Redis going back in
    /// time) while the change was on its way.
    #[error("the namespace's generation kept moving during the change")]
    GenerationMoving,
}

impl keel_resilience::Classify for CacheError {
    /// The loader's class when it gave one (else transient: a dependency failed);
    /// timeouts and an unreachable L2 transient; the rest permanent (a panic, an absent
    /// key, a value that does not encode, a shut-down cache).
    fn class(&self) -> keel_resilience::ErrorClass {
        use keel_resilience::ErrorClass;
        match self {
            CacheError::Loader(e) => {
                keel_resilience::class_of(e.as_ref()).unwrap_or(ErrorClass::Transient)
            }
            CacheError::Timeout { .. }
            | CacheError::L2Unavailable(_)
            | CacheError::Unflushed { .. } => ErrorClass::Transient,
            CacheError::LoaderPanicked
            | CacheError::Absent
            | CacheError::Encode(_)
            | CacheError::ShutDown => ErrorClass::Permanent,
        }
    }
}

impl fmt::Display for CacheError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CacheError::Loader(_) => f.write_str("the loader for this key failed"),
            CacheError::LoaderPanicked => f.write_str(
                "the loader for this key panicked; the panic is in the logs of the task that ran it",
            ),
            CacheError::Timeout { after } => write!(
                f,
                "the loader did not finish within {after:?} (it goes on in the background)"
            ),
            CacheError::Absent => {
                f.write_str("the key is cached as absent; load it with get_or_load_optional")
            }
            CacheError::L2Unavailable(_) => {
                f.write_str("the L2 cache is unavailable; the change was applied locally only")
            }
            CacheError::Encode(_) => f.write_str("the value could not be encoded for L2"),
            CacheError::ShutDown => f.write_str("the cache is shut down"),
            CacheError::Unflushed { pending } => write!(
                f,
                "{pending} queued write(s) were not written to L2 before the shutdown deadline"
            ),
        }
    }
}

impl StdError for CacheError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            // The loader's own error (not the Arc around it), so it can be downcast.
            CacheError::Loader(e) => Some(e.as_ref() as &(dyn StdError + 'static)),
            CacheError::L2Unavailable(e) => Some(e),
            CacheError::Encode(e) => Some(e),
            _ => None,
        }
    }
}

impl fmt::Debug for CacheError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Display already carries what matters; loader errors keep their own Debug.
        match self {
            CacheError::Loader(e) => f.debug_tuple("Loader").field(e).finish(),
            other => write!(f, "CacheError({other})"),
        }
    }
}

/// A value could not be encoded or decoded.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{message}")]
pub struct CodecError {
    message: String,
}

impl CodecError {
    /// An error with a message (no value contents in it: values may be secrets).
    #[must_use]
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }
}

/// The cache could not be built from its settings.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The namespace is empty, too long, or has characters unsafe in a Redis key.
    #[error(
        "namespace {0:?} is invalid: use 1 to 64 characters from letters, digits, '-', '_' and '.'"
    )]
    Namespace(String),
    /// A setting is out of range.
    #[error("invalid setting: {0}")]
    Setting(&'static str),
    /// An L2 was given but no tokio runtime is running to drive its backplane.
    #[error("an L2 cache needs a tokio runtime: build the cache inside one")]
    NoRuntime,
}

impl keel_resilience::Classify for BuildError {
    /// Always permanent: the settings are wrong.
    fn class(&self) -> keel_resilience::ErrorClass {
        keel_resilience::ErrorClass::Permanent
    }
}

#[cfg(feature = "problem")]
#[cfg_attr(docsrs, doc(cfg(feature = "problem")))]
impl keel_observability::IntoProblem for CacheError {
    /// A failed or timed-out load is the dependency's (502 / 504; 429 when the loader was
    /// throttled); an absent key is 404; an unreachable L2, a shut-down cache or unflushed
    /// writes are 503; a panic or a value that does not encode is 500.
    fn error_code(&self) -> keel_observability::ErrorCode {
        use keel_observability::ErrorCode;
        use keel_resilience::{Classify as _, ErrorClass};
        match self {
            CacheError::Loader(_) => match self.class() {
                ErrorClass::Throttled { .. } => ErrorCode::RATE_LIMITED,
                _ => ErrorCode::EXT_DEPENDENCY_FAILED,
            },
            CacheError::Timeout { .. } => ErrorCode::EXT_DEPENDENCY_TIMEOUT,
            CacheError::Absent => ErrorCode::RES_NOT_FOUND,
            CacheError::L2Unavailable(_) | CacheError::ShutDown | CacheError::Unflushed { .. } => {
                ErrorCode::SYS_UNAVAILABLE
            }
            CacheError::LoaderPanicked | CacheError::Encode(_) => ErrorCode::SYS_INTERNAL,
        }
    }

    /// The loader's `Retry-After` when it was throttled (rounded up to whole seconds).
    fn retry_after(&self) -> Option<u64> {
        use keel_resilience::Classify as _;
        self.class()
            .retry_after()
            .map(|d| d.as_secs() + u64::from(d.subsec_nanos() > 0))
    }
}
