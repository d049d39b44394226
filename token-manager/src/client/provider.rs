//! The trait every token source implements, and a chain of them.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use super::{AccessToken, TokenError, TokenRequest};

/// The future a [`TokenProvider`] returns.
pub type TokenFuture<'a> =
    Pin<Box<dyn Future<Output = Result<AccessToken, TokenError>> + Send + 'a>>;

/// Something that gives access tokens: a credential flow, a cache in front of one, or a
/// chain. Object-safe: hold it as `Arc<dyn TokenProvider>` (keel-graph-client does).
///
/// ```
/// use keel_token_manager::client::{AccessToken, TokenFuture, TokenProvider, TokenRequest};
/// use std::time::Duration;
///
/// struct Fixed;
///
/// impl TokenProvider for Fixed {
///     fn token<'a>(&'a self, _request: &'a TokenRequest) -> TokenFuture<'a> {
///         Box::pin(async { Ok(AccessToken::new("fixed", Duration::from_secs(60))) })
///     }
/// }
///
/// let provider: std::sync::Arc<dyn TokenProvider> = std::sync::Arc::new(Fixed);
/// # drop(provider);
/// ```
pub trait TokenProvider: Send + Sync {
    /// A token for `request`.
    fn token<'a>(&'a self, request: &'a TokenRequest) -> TokenFuture<'a>;

    /// Whose tokens these are beyond the request, as far as it is known here: a
    /// credential's token endpoint (authority and home tenant) and client id, an
    /// on-behalf-of provider's user, a signed-in user's client, account and sign-in. A
    /// [`SharedTokenCache`](super::SharedTokenCache) keys by it with its namespace, so
    /// two such credentials sharing one Redis never share a token. `None` (the default)
    /// when the provider does not say; a system-assigned managed identity cannot (every
    /// VM's endpoint is the same), so the shared cache's namespace must then tell the
    /// services apart. Holds no secret.
    fn identity(&self) -> Option<String> {
        None
    }
}

impl<P: TokenProvider + ?Sized> TokenProvider for Arc<P> {
    fn token<'a>(&'a self, request: &'a TokenRequest) -> TokenFuture<'a> {
        (**self).token(request)
    }

    fn identity(&self) -> Option<String> {
        (**self).identity()
    }
}

impl<P: TokenProvider + ?Sized> TokenProvider for Box<P> {
    fn token<'a>(&'a self, request: &'a TokenRequest) -> TokenFuture<'a> {
        (**self).token(request)
    }

    fn identity(&self) -> Option<String> {
        (**self).identity()
    }
}

/// A provider made of a function (see [`from_fn`]).
#[derive(Clone)]
pub struct FnProvider<F>(F);

impl<F> fmt::Debug for FnProvider<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FnProvider")
    }
}

/// A provider from a function of the request (tests, adapters to other libraries).
pub fn from_fn<F, Fut>(f: F) -> FnProvider<F>
where
    F: Fn(&TokenRequest) -> Fut + Send + Sync,
    Fut: Future<Output = Result<AccessToken, TokenError>> + Send + 'static,
{
    FnProvider(f)
}

impl<F, Fut> TokenProvider for FnProvider<F>
where
    F: Fn(&TokenRequest) -> Fut + Send + Sync,
    Fut: Future<Output = Result<AccessToken, TokenError>> + Send + 'static,
{
    fn token<'a>(&'a self, request: &'a TokenRequest) -> TokenFuture<'a> {
        Box::pin((self.0)(request))
    }
}

/// Providers tried in order, as Azure.Identity's chained credentials: the first that
/// is available answers. A provider that is [unavailable](TokenError::Unavailable)
/// passes to the next; one that fails ends the chain with its error (a wrong secret
/// must not silently fall back to another identity).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use keel_token_manager::client::{from_fn, AccessToken, ProviderChain, TokenError, TokenProvider, TokenRequest};
/// use std::time::Duration;
///
/// let chain = ProviderChain::new()
///     .then(from_fn(|_: &TokenRequest| async { Err(TokenError::unavailable("environment", "AZURE_CLIENT_ID is not set")) }))
///     .then(from_fn(|_: &TokenRequest| async { Ok(AccessToken::new("from the second", Duration::from_secs(60))) }));
/// let token = chain.token(&TokenRequest::new(["scope"])).await.unwrap();
/// assert_eq!(token.secret(), "from the second");
/// # }
/// ```
#[derive(Clone, Default)]
pub struct ProviderChain {
    providers: Vec<Arc<dyn TokenProvider>>,
}

impl fmt::Debug for ProviderChain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProviderChain")
            .field("providers", &self.providers.len())
            .finish()
    }
}

impl ProviderChain {
    /// An empty chain (it answers [`TokenError::NoneAvailable`]).
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a provider, tried after the ones before it.
    #[must_use]
    pub fn then(mut self, provider: impl TokenProvider + 'static) -> Self {
        self.providers.push(Arc::new(provider));
        self
    }
}

impl TokenProvider for ProviderChain {
    fn token<'a>(&'a self, request: &'a TokenRequest) -> TokenFuture<'a> {
        Box::pin(async move {
            let mut reasons = Vec::new();
            for provider in &self.providers {
                match provider.token(request).await {
                    Err(unavailable @ TokenError::Unavailable { .. }) => {
                        reasons.push(unavailable.to_string());
                    }
                    other => return other,
                }
            }
            Err(TokenError::NoneAvailable { reasons })
        })
    }

    /// The identities of its providers, in order (a chain answers with whichever is
    /// available, so its cache key names them all).
    fn identity(&self) -> Option<String> {
        // Only when every provider says: an anonymous one could answer as anyone.
        let ids: Option<Vec<String>> = self.providers.iter().map(|p| p.identity()).collect();
        ids.filter(|ids| !ids.is_empty())
            .map(|ids| format!("chain({})", ids.join(",")))
    }
}
