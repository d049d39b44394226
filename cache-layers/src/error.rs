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
#[derive(Clone, thiserror::Error)]
#[non_exhaustive]
pub enum CacheError {
    /// The loader failed and no stale value was allowed or available.
    #[error("the loader for this key failed: {0}")]
    Loader(#[source] Arc<dyn StdError + Send + Sync + 'static>),
    /// The loader panicked.
    #[error("the loader for this key panicked; the panic is in the logs of the task that ran it")]
    LoaderPanicked,
    /// The loader did not finish within the hard timeout and no stale value was available.
    /// The load goes on in the background and fills the cache when it finishes.
    #[error("the loader did not finish within {after:?} (it goes on in the background)")]
    Timeout {
        /// The timeout that passed.
        after: Duration,
    },
    /// The key is cached as absent (negative caching); use
    /// [`Cache::get_or_load_optional`](crate::Cache::get_or_load_optional) for keys that
    /// may not exist.
    #[error("the key is cached as absent; load it with get_or_load_optional")]
    Absent,
    /// The shared L2 could not be reached, so the change was applied to this instance only.
    /// It is kept pending (see [`BackplaneStatus::pending_changes`](crate::BackplaneStatus))
    /// and applied to L2 and announced to the other instances as soon as Redis answers;
    /// until then this instance does not read the key from L2, and the others keep their
    /// copy (at most until its TTL). No retry is needed.
    #[error("the L2 cache is unavailable ({reason}); the change was applied locally only")]
    L2Unavailable {
        /// Why: the breaker is open, a timeout, or Redis's own error.
        reason: String,
    },
    /// A value could not be encoded for L2.
    #[error("the value could not be encoded for L2: {0}")]
    Encode(String),
    /// The cache is shutting down and takes no more writes.
    #[error("the cache is shut down")]
    ShutDown,
    /// Writes queued for L2 could not be written before the shutdown deadline.
    #[error("{pending} queued write(s) were not written to L2 before the shutdown deadline")]
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

    /// Whether a timeout passed.
    #[must_use]
    pub fn is_timeout(&self) -> bool {
        matches!(self, CacheError::Timeout { .. })
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
#[derive(Debug, thiserror::Error)]
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
