//! The client side: obtaining access tokens from Microsoft Entra ID (or any OAuth 2.0
//! provider) and keeping them fresh.
//!
//! [`TokenProvider`] is what a caller of a protected API (keel-graph-client) depends on:
//! an object-safe async trait from a [`TokenRequest`] (scopes, tenant, claims) to an
//! [`AccessToken`]. [`CachingProvider`] puts MSAL's cache behaviour in front of any
//! provider: one token per tenant and scope set, refreshed ahead of expiry by one
//! background request while every caller keeps getting the still-valid token without
//! waiting, the old token served while refreshes fail until it really expires, and
//! claims challenges answered past the cache. [`ProviderChain`] tries providers in order,
//! as Azure.Identity's credential chains do.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), keel_token_manager::client::TokenError> {
//! use keel_token_manager::client::{AccessToken, CachingProvider, TokenProvider, TokenRequest};
//! use std::time::Duration;
//!
//! // Any provider: here a closure standing in for a token endpoint.
//! let endpoint = keel_token_manager::client::from_fn(|request: &TokenRequest| {
//!     let token = format!("token-for-{}", request.scopes().join(" "));
//!     async move { Ok(AccessToken::new(token, Duration::from_secs(3600))) }
//! });
//! let tokens = CachingProvider::new(endpoint);
//! let request = TokenRequest::new(["https://graph.microsoft.com/.default"]).tenant("contoso.onmicrosoft.com");
//! let token = tokens.token(&request).await?;
//! assert_eq!(token.secret(), "token-for-https://graph.microsoft.com/.default");
//! // The second call is a cache hit.
//! assert_eq!(tokens.stats().requests, 1);
//! tokens.token(&request).await?;
//! assert_eq!(tokens.stats().requests, 1);
//! # Ok(()) }
//! ```

mod cache;
#[cfg(feature = "http")]
mod certificate;
#[cfg(feature = "http")]
mod credential;
mod error;
#[cfg(feature = "http")]
mod jwks;
mod provider;
mod request;
mod response;
#[cfg(feature = "http")]
mod session;
#[cfg(feature = "redis")]
mod shared;
mod token;
#[cfg(feature = "http")]
mod user;

pub use cache::{CacheStats, CachingProvider, RefreshPolicy};
#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub use certificate::{ClientCertificate, ClientCertificateCredential};
#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub use credential::{
    Authority, ClientSecretCredential, ManagedIdentityCredential, ManagedIdentitySource,
    WorkloadIdentityCredential, default_credential, environment_credential,
};
pub use error::{BoxError, TokenError};
#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub use jwks::RemoteJwks;
pub use provider::{FnProvider, ProviderChain, TokenFuture, TokenProvider, from_fn};
pub use request::TokenRequest;
pub use response::{
    MAX_RESPONSE_BYTES, OAuthError, ResponseError, TokenGrant, claims_challenge, read_token_grant,
    read_token_response,
};
#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub use session::{GrantFuture, RefreshGrant, SignedInUser, SignedInUsers};
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use shared::{SharedStats, SharedTokenCache};
pub use token::AccessToken;
#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub use user::{
    AuthorizationCodeClient, ClientAuth, DeviceCode, DeviceCodeClient, OnBehalfOf,
    OnBehalfOfClient, PendingAuthorization,
};
