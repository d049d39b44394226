//! Client credentials with a secret: the service's own identity (app-only tokens).

use std::fmt;
use std::time::Duration;

use keel_resilience::ErrorClass;

use super::response::{MAX_RESPONSE_BYTES, ResponseError, read_token_response};
use super::{AccessToken, TokenError, TokenFuture, TokenProvider, TokenRequest};

/// Where tokens come from: Entra ID in one of Microsoft's clouds, or any base URL (a
/// sovereign deployment, a local emulator in tests).
///
/// ```
/// use keel_token_manager::client::Authority;
///
/// assert_eq!(
///     Authority::AzurePublic.token_endpoint("contoso.onmicrosoft.com"),
///     "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token"
/// );
/// assert_eq!(
///     Authority::AzureChina.token_endpoint("organizations"),
///     "https://login.chinacloudapi.cn/organizations/oauth2/v2.0/token"
/// );
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Authority {
    /// `https://login.microsoftonline.com` (the global cloud).
    AzurePublic,
    /// `https://login.microsoftonline.us` (US Government).
    AzureGovernment,
    /// `https://login.chinacloudapi.cn` (operated by 21Vianet).
    AzureChina,
    /// Any host laid out as Entra ID: `{base}/{tenant}/oauth2/v2.0/token`.
    Custom(String),
}

impl Authority {
    fn base(&self) -> &str {
        match self {
            Authority::AzurePublic => "https://login.microsoftonline.com",
            Authority::AzureGovernment => "https://login.microsoftonline.us",
            Authority::AzureChina => "https://login.chinacloudapi.cn",
            Authority::Custom(base) => base.trim_end_matches('/'),
        }
    }

    /// The v2.0 token endpoint of `tenant`.
    #[must_use]
    pub fn token_endpoint(&self, tenant: &str) -> String {
        format!("{}/{tenant}/oauth2/v2.0/token", self.base())
    }
}

/// A tenant name that is safe in a URL path (an id, a domain, `organizations`, `common`).
fn valid_tenant(tenant: &str) -> bool {
    !tenant.is_empty()
        && tenant.len() <= 256
        && tenant
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
}

const PROVIDER: &str = "client secret credential";

/// The client credentials grant with a client secret (RFC 6749 §4.4, Entra ID's
/// `/oauth2/v2.0/token`): app-only tokens for the service itself, in its home tenant
/// or, for a multi-tenant app, in the tenant a request names. Put a
/// [`CachingProvider`](super::CachingProvider) in front of it. The secret never
/// appears in `Debug`, logs or errors.
///
/// ```no_run
/// # async fn demo() -> Result<(), keel_token_manager::client::TokenError> {
/// use keel_token_manager::client::{Authority, CachingProvider, ClientSecretCredential, TokenProvider, TokenRequest};
///
/// let credential = ClientSecretCredential::new(Authority::AzurePublic, "contoso.onmicrosoft.com", "app-id", "secret")?;
/// let tokens = CachingProvider::new(credential);
/// let token = tokens.token(&TokenRequest::new(["https://graph.microsoft.com/.default"])).await?;
/// # drop(token); Ok(()) }
/// ```
#[derive(Clone)]
pub struct ClientSecretCredential {
    authority: Authority,
    tenant: String,
    client_id: String,
    secret: String,
    http: reqwest::Client,
}

impl fmt::Debug for ClientSecretCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientSecretCredential")
            .field("authority", &self.authority)
            .field("tenant", &self.tenant)
            .field("client_id", &self.client_id)
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl ClientSecretCredential {
    /// For `client_id` with `secret` in its home `tenant`. Calls time out after 30 s.
    ///
    /// # Errors
    /// [`TokenError::Unavailable`] when the tenant is not a tenant id or domain, the
    /// client id or the secret is empty, or no HTTP client can be built.
    pub fn new(
        authority: Authority,
        tenant: impl Into<String>,
        client_id: impl Into<String>,
        secret: impl Into<String>,
    ) -> Result<Self, TokenError> {
        let (tenant, client_id, secret) = (tenant.into(), client_id.into(), secret.into());
        if !valid_tenant(&tenant) {
            return Err(TokenError::unavailable(
                PROVIDER,
                "the tenant is not a tenant id or domain",
            ));
        }
        if client_id.is_empty() || secret.is_empty() {
            return Err(TokenError::unavailable(
                PROVIDER,
                "the client id or the secret is empty",
            ));
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| TokenError::unavailable(PROVIDER, format!("no HTTP client: {e}")))?;
        Ok(Self {
            authority,
            tenant,
            client_id,
            secret,
            http,
        })
    }

    async fn request(&self, request: &TokenRequest) -> Result<AccessToken, TokenError> {
        let tenant = request.tenant_id().unwrap_or(&self.tenant);
        if !valid_tenant(tenant) {
            return Err(TokenError::failed(
                PROVIDER,
                ErrorClass::Permanent,
                ResponseError::Invalid("the requested tenant is not a tenant id or domain".into()),
            ));
        }
        let scope = request.scopes().join(" ");
        let mut form = vec![
            ("grant_type", "client_credentials"),
            ("client_id", self.client_id.as_str()),
            ("client_secret", self.secret.as_str()),
            ("scope", scope.as_str()),
        ];
        if let Some(claims) = request.claims_json() {
            form.push(("claims", claims));
        }
        let sent = self
            .http
            .post(self.authority.token_endpoint(tenant))
            .form(&form)
            .send()
            .await
            // reqwest's errors carry the URL, never the form.
            .map_err(|e| TokenError::failed(PROVIDER, ErrorClass::Transient, e.without_url()))?;
        let status = sent.status().as_u16();
        let content_type = sent
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let retry_after = sent
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(|s| Duration::from_secs(s.min(3600)));
        let body = read_bounded(sent).await?;
        read_token_response(status, content_type.as_deref(), retry_after, &body)
    }
}

/// The body, refused past [`MAX_RESPONSE_BYTES`] without reading further.
async fn read_bounded(mut response: reqwest::Response) -> Result<Vec<u8>, TokenError> {
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| TokenError::failed(PROVIDER, ErrorClass::Transient, e.without_url()))?
    {
        if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err(TokenError::failed(
                PROVIDER,
                ErrorClass::Transient,
                ResponseError::TooLarge,
            ));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

impl TokenProvider for ClientSecretCredential {
    fn token<'a>(&'a self, request: &'a TokenRequest) -> TokenFuture<'a> {
        Box::pin(self.request(request))
    }
}
