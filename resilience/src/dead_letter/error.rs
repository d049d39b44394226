//! What can go wrong with a dead-letter queue.

/// Why a dead-letter queue call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeadLetterError {
    /// The store is bounded and full: the letter was not kept. Replay or purge letters,
    /// or raise the bound.
    #[error(
        "the dead-letter queue is full ({capacity} letters): replay or purge letters, or raise the bound"
    )]
    Full {
        /// The bound.
        capacity: usize,
    },
    /// The payload is over the store's limit: the letter was not kept.
    #[error("the letter's payload is {size} bytes, over the limit of {limit}")]
    TooLarge {
        /// The payload's size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The replay's options cannot work.
    #[error("invalid replay options: {0}")]
    InvalidOptions(&'static str),
    /// The store could not be reached, refused, or holds something that is not a letter.
    /// Nothing was half-done: check the store and call again.
    #[error("the dead-letter store failed: {message}")]
    Store {
        /// What happened (no payloads, no credentials).
        message: String,
        /// The store's own error.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
}

impl DeadLetterError {
    #[cfg_attr(not(any(feature = "redis", feature = "postgres")), allow(dead_code))] // for the remote stores
    pub(crate) fn store(message: impl Into<String>) -> Self {
        DeadLetterError::Store {
            message: message.into(),
            source: None,
        }
    }

    #[cfg_attr(not(any(feature = "redis", feature = "postgres")), allow(dead_code))] // for the remote stores
    pub(crate) fn caused(
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        DeadLetterError::Store {
            message: message.into(),
            source: Some(Box::new(source)),
        }
    }

    /// Whether the letter was refused because the store is full.
    #[must_use]
    pub fn is_full(&self) -> bool {
        matches!(self, DeadLetterError::Full { .. })
    }
}
