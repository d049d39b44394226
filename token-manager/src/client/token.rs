//! An access token and its lifetime.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

/// An access token: the secret string to send as `Authorization: Bearer`, when it
/// expires, and (when the provider said, as Entra ID's `refresh_in`) when to refresh it.
/// Cheap to clone. Its `Debug` never shows the secret.
///
/// Times are on tokio's clock, so tests can run them under paused time.
///
/// ```
/// use keel_token_manager::client::AccessToken;
/// use std::time::Duration;
///
/// let token = AccessToken::new("eyJ0eXAi...", Duration::from_secs(3600));
/// assert!(!format!("{token:?}").contains("eyJ0eXAi"));
/// assert!(token.expires_in() > Duration::from_secs(3590));
/// ```
#[derive(Clone)]
pub struct AccessToken {
    secret: Arc<str>,
    expires_at: Instant,
    refresh_at: Option<Instant>,
}

impl AccessToken {
    /// A token valid for `lifetime` from now (a token response's `expires_in`; a
    /// lifetime past what the clock holds counts as a hundred years).
    pub fn new(secret: impl Into<Arc<str>>, lifetime: Duration) -> Self {
        Self {
            secret: secret.into(),
            expires_at: later(lifetime),
            refresh_at: None,
        }
    }

    /// Refresh after `after` from now (a token response's `refresh_in`), if that is before
    /// it expires.
    #[must_use]
    pub fn refresh_in(mut self, after: Duration) -> Self {
        let at = later(after);
        self.refresh_at = (at < self.expires_at).then_some(at);
        self
    }

    /// The token itself. Keep it out of logs.
    #[must_use]
    pub fn secret(&self) -> &str {
        &self.secret
    }

    /// When it expires.
    #[must_use]
    pub fn expires_at(&self) -> Instant {
        self.expires_at
    }

    /// How long until it expires (zero once it has).
    #[must_use]
    pub fn expires_in(&self) -> Duration {
        self.expires_at.saturating_duration_since(Instant::now())
    }

    /// When the provider asked for it to be refreshed, if it did.
    #[must_use]
    pub fn refresh_at(&self) -> Option<Instant> {
        self.refresh_at
    }

    /// Whether it is still valid at `now`.
    #[must_use]
    pub fn is_valid_at(&self, now: Instant) -> bool {
        now < self.expires_at
    }
}

/// `now + after`, saturating at a hundred years from now.
fn later(after: Duration) -> Instant {
    const CENTURY: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
    let now = Instant::now();
    now.checked_add(after.min(CENTURY)).unwrap_or(now)
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessToken")
            .field("secret", &"<redacted>")
            .field("expires_in", &self.expires_in())
            .finish_non_exhaustive()
    }
}
