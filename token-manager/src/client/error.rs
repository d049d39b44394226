//! Why a token could not be had.

use keel_resilience::{Classify, ErrorClass};

/// A boxed error from a provider's transport or parser.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The longest reason kept in an error (providers' messages are not ours to trust).
const REASON_MAX: usize = 512;

/// Why a [`TokenProvider`](super::TokenProvider) gave no token. Its
/// [`Classify`] class says whether trying again may help.
///
/// ```
/// use keel_resilience::{Classify, ErrorClass};
/// use keel_token_manager::client::TokenError;
///
/// let e = TokenError::failed("client credentials", ErrorClass::Transient, std::io::Error::other("reset"));
/// assert_eq!(e.class(), ErrorClass::Transient);
/// assert!(std::error::Error::source(&e).is_some());
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// The provider cannot work here (not configured: no such environment variable, no
    /// managed identity endpoint). A [`ProviderChain`](super::ProviderChain) goes on to
    /// the next provider.
    #[error("{provider} is not available here: {reason}")]
    Unavailable {
        /// Which provider.
        provider: &'static str,
        /// What is missing (bounded).
        reason: String,
    },
    /// The provider tried and failed.
    #[error("{provider} could not get a token ({class:?})")]
    Failed {
        /// Which provider.
        provider: &'static str,
        /// Whether trying again may help.
        class: ErrorClass,
        /// What went wrong.
        #[source]
        source: BoxError,
    },
    /// Every provider of a chain was unavailable.
    #[error("no provider of the chain is available: {}", .reasons.join("; "))]
    NoneAvailable {
        /// Each provider's reason, in order.
        reasons: Vec<String>,
    },
}

impl TokenError {
    /// A provider that cannot work here.
    pub fn unavailable(provider: &'static str, reason: impl Into<String>) -> Self {
        let mut reason = reason.into();
        if reason.len() > REASON_MAX {
            let mut end = REASON_MAX;
            while !reason.is_char_boundary(end) {
                end -= 1;
            }
            reason.truncate(end);
            reason.push('…');
        }
        TokenError::Unavailable { provider, reason }
    }

    /// A provider that tried and failed.
    pub fn failed(provider: &'static str, class: ErrorClass, source: impl Into<BoxError>) -> Self {
        TokenError::Failed {
            provider,
            class,
            source: source.into(),
        }
    }
}

impl TokenError {
    /// The OAuth error response behind this error, when the token endpoint sent one.
    #[must_use]
    pub fn oauth(&self) -> Option<&super::OAuthError> {
        match self {
            TokenError::Failed { source, .. } => source.downcast_ref(),
            _ => None,
        }
    }
}

impl Classify for TokenError {
    fn class(&self) -> ErrorClass {
        match self {
            TokenError::Failed { class, .. } => *class,
            TokenError::Unavailable { .. } | TokenError::NoneAvailable { .. } => {
                ErrorClass::Permanent
            }
        }
    }
}

/// `N` bytes from the system's random generator; a transient [`TokenError`] from
/// `provider` when it fails. (Used by the user sign-in, session and shared-cache
/// modules, which need feature `http` or `redis`.)
#[cfg(any(feature = "http", feature = "redis"))]
pub(crate) fn random_bytes<const N: usize>(provider: &'static str) -> Result<[u8; N], TokenError> {
    use ring::rand::SecureRandom as _;
    let mut bytes = [0_u8; N];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| {
            TokenError::failed(
                provider,
                ErrorClass::Transient,
                std::io::Error::other("no randomness"),
            )
        })?;
    Ok(bytes)
}
