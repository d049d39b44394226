//! Client credentials with a secret: the service's own identity (app-only tokens).

use std::fmt;
use std::time::Duration;

use keel_resilience::ErrorClass;

use super::response::{MAX_RESPONSE_BYTES, ResponseError, TokenGrant, read_token_grant};
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
        self.endpoint(tenant, "token")
    }

    /// Another v2.0 endpoint of `tenant` (`authorize`, `devicecode`).
    pub(super) fn endpoint(&self, tenant: &str, name: &str) -> String {
        format!("{}/{tenant}/oauth2/v2.0/{name}", self.base())
    }
}

/// A tenant name that is safe in a URL path (an id, a domain, `organizations`, `common`).
fn valid_tenant(tenant: &str) -> bool {
    !tenant.is_empty()
        && tenant.len() <= 256
        && !tenant.starts_with('.')
        && !tenant.ends_with('.')
        && !tenant.contains("..")
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
        let (tenant, client_id) = registration(tenant, client_id, PROVIDER)?;
        let secret = secret.into();
        if secret.is_empty() {
            return Err(TokenError::unavailable(
                PROVIDER,
                "the client id or the secret is empty",
            ));
        }
        let http = http_client(PROVIDER)?;
        Ok(Self {
            authority,
            tenant,
            client_id,
            secret,
            http,
        })
    }

    /// Your own reqwest client (a proxy, an extra trusted root such as a test server's
    /// certificate). Build it without redirects
    /// (`.redirect(reqwest::redirect::Policy::none())`) and with a timeout: a token
    /// request must never be re-sent elsewhere with its secret.
    #[must_use]
    pub fn http_client(mut self, http: reqwest::Client) -> Self {
        self.http = http;
        self
    }

    async fn request(&self, request: &TokenRequest) -> Result<AccessToken, TokenError> {
        let tenant = requested_tenant(request, &self.tenant, PROVIDER)?;
        let scope = request.scopes().join(" ");
        let mut form = vec![
            ("grant_type", "client_credentials"),
            ("client_id", self.client_id.as_str()),
            ("client_secret", self.secret.as_str()),
            ("scope", scope.as_str()),
        ];
        let claims = request.claims_parameter()?;
        if let Some(claims) = &claims {
            form.push(("claims", claims));
        }
        post_form(
            &self.http,
            &self.authority.token_endpoint(tenant),
            &form,
            PROVIDER,
        )
        .await
    }
}

/// A client's identity for shared caches: its token endpoint (authority and home
/// tenant) and client id.
pub(super) fn client_identity(authority: &Authority, tenant: &str, client_id: &str) -> String {
    format!("{}|{client_id}", authority.token_endpoint(tenant))
}

/// Whether `url` is plain http to this machine (tests, local emulators): the host, not
/// a prefix of it, is `localhost`, `127.0.0.1` or `[::1]`.
pub(super) fn is_loopback_http(url: &str) -> bool {
    let Some(rest) = url.strip_prefix("http://") else {
        return false;
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = if authority.starts_with('[') {
        authority.split_inclusive(']').next().unwrap_or("")
    } else {
        authority.split(':').next().unwrap_or("")
    };
    matches!(host, "localhost" | "127.0.0.1" | "[::1]")
}

/// A registration's tenant and client id, checked: a tenant id or domain (safe in a URL
/// path) and a client id that is not empty.
pub(super) fn registration(
    tenant: impl Into<String>,
    client_id: impl Into<String>,
    provider: &'static str,
) -> Result<(String, String), TokenError> {
    let (tenant, client_id) = (tenant.into(), client_id.into());
    if !valid_tenant(&tenant) {
        return Err(TokenError::unavailable(
            provider,
            "the tenant is not a tenant id or domain",
        ));
    }
    if client_id.is_empty() {
        return Err(TokenError::unavailable(provider, "the client id is empty"));
    }
    Ok((tenant, client_id))
}

/// The tenant a request names (a multi-tenant app), else the credential's own; refused
/// unless it is a tenant id or domain, so a request cannot change the URL's path.
pub(super) fn requested_tenant<'a>(
    request: &'a TokenRequest,
    own: &'a str,
    provider: &'static str,
) -> Result<&'a str, TokenError> {
    let tenant = request.tenant_id().unwrap_or(own);
    if valid_tenant(tenant) {
        Ok(tenant)
    } else {
        Err(TokenError::failed(
            provider,
            ErrorClass::Permanent,
            ResponseError::Invalid("the requested tenant is not a tenant id or domain".into()),
        ))
    }
}

/// The HTTP client every credential uses: 30 s limit, no redirects (a token request
/// is never re-sent elsewhere with its secret).
pub(super) fn http_client(provider: &'static str) -> Result<reqwest::Client, TokenError> {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| TokenError::unavailable(provider, format!("no HTTP client: {e}")))
}

/// Posts a token request and reads the access token.
async fn post_form(
    http: &reqwest::Client,
    endpoint: &str,
    form: &[(&str, &str)],
    provider: &'static str,
) -> Result<AccessToken, TokenError> {
    post_form_grant(http, endpoint, form, provider)
        .await
        .map(|grant| grant.access)
}

/// What an endpoint answered: status, content type, `Retry-After` (seconds or an HTTP
/// date, at most an hour) and the body (bounded).
struct Answer {
    status: u16,
    content_type: Option<String>,
    retry_after: Option<Duration>,
    body: Vec<u8>,
}

impl Answer {
    async fn read(sent: reqwest::Response, provider: &'static str) -> Result<Self, TokenError> {
        let header = |name| {
            sent.headers()
                .get(name)
                .and_then(|v: &reqwest::header::HeaderValue| v.to_str().ok())
                .map(str::to_owned)
        };
        let content_type = header(reqwest::header::CONTENT_TYPE);
        let retry_after = header(reqwest::header::RETRY_AFTER)
            .and_then(|v| keel_resilience::parse_retry_after(&v, std::time::SystemTime::now()));
        let status = sent.status().as_u16();
        Ok(Self {
            status,
            content_type,
            retry_after,
            body: read_bounded(sent, provider).await?,
        })
    }

    /// Read as a token response: the grant, or the typed error.
    fn grant(&self) -> Result<TokenGrant, TokenError> {
        read_token_grant(
            self.status,
            self.content_type.as_deref(),
            self.retry_after,
            &self.body,
        )
    }
}

/// Sends a request; a transport failure is transient (and its error keeps no URL).
async fn send(
    request: reqwest::RequestBuilder,
    provider: &'static str,
) -> Result<Answer, TokenError> {
    let sent = request
        .send()
        .await
        // reqwest's errors carry the URL, never the form; drop the URL too.
        .map_err(|e| TokenError::failed(provider, ErrorClass::Transient, e.without_url()))?;
    Answer::read(sent, provider).await
}

/// Posts a form to an OAuth endpoint that answers JSON other than a token (the device
/// code endpoint): the JSON object on success, the typed OAuth error otherwise.
pub(super) async fn post_form_json(
    http: &reqwest::Client,
    endpoint: &str,
    form: &[(&str, &str)],
    provider: &'static str,
) -> Result<serde_json::Value, TokenError> {
    let answer = send(http.post(endpoint).form(form), provider).await?;
    if answer.status != 200 {
        return Err(answer
            .grant()
            .err()
            .unwrap_or_else(|| unexpected(provider, answer.status)));
    }
    match serde_json::from_slice(&answer.body) {
        Ok(json @ serde_json::Value::Object(_)) => Ok(json),
        _ => Err(TokenError::failed(
            provider,
            ErrorClass::Transient,
            ResponseError::Invalid("the answer is not a JSON object".into()),
        )),
    }
}

fn unexpected(provider: &'static str, status: u16) -> TokenError {
    TokenError::failed(
        provider,
        ErrorClass::from_http_status(status, None),
        ResponseError::Invalid(format!("an unexpected answer (HTTP {status})")),
    )
}

/// Posts a token request and reads everything granted.
pub(super) async fn post_form_grant(
    http: &reqwest::Client,
    endpoint: &str,
    form: &[(&str, &str)],
    provider: &'static str,
) -> Result<TokenGrant, TokenError> {
    send(http.post(endpoint).form(form), provider)
        .await?
        .grant()
}

/// The body, refused past [`MAX_RESPONSE_BYTES`] without reading further.
async fn read_bounded(
    mut response: reqwest::Response,
    provider: &'static str,
) -> Result<Vec<u8>, TokenError> {
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| TokenError::failed(provider, ErrorClass::Transient, e.without_url()))?
    {
        if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err(TokenError::failed(
                provider,
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

    fn identity(&self) -> Option<String> {
        Some(client_identity(
            &self.authority,
            &self.tenant,
            &self.client_id,
        ))
    }
}

const WORKLOAD: &str = "workload identity credential";

/// Workload identity federation (Kubernetes, GitHub Actions...): the client credentials
/// grant with a federated token as the client assertion
/// (`urn:ietf:params:oauth:client-assertion-type:jwt-bearer`), read from a file that
/// the platform rotates (`AZURE_FEDERATED_TOKEN_FILE`). The file is read again for
/// every token request, so a rotated token is used as soon as it is written.
///
/// ```no_run
/// # fn demo() -> Result<(), keel_token_manager::client::TokenError> {
/// use keel_token_manager::client::{Authority, WorkloadIdentityCredential};
///
/// let credential = WorkloadIdentityCredential::new(
///     Authority::AzurePublic, "contoso.onmicrosoft.com", "app-id", "/var/run/secrets/azure/tokens/azure-identity-token",
/// )?;
/// # drop(credential); Ok(()) }
/// ```
#[derive(Clone)]
pub struct WorkloadIdentityCredential {
    authority: Authority,
    tenant: String,
    client_id: String,
    token_file: std::path::PathBuf,
    http: reqwest::Client,
}

impl fmt::Debug for WorkloadIdentityCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkloadIdentityCredential")
            .field("authority", &self.authority)
            .field("tenant", &self.tenant)
            .field("client_id", &self.client_id)
            .field("token_file", &self.token_file)
            .finish_non_exhaustive()
    }
}

impl WorkloadIdentityCredential {
    /// For `client_id` in `tenant`, with the federated token in `token_file`.
    ///
    /// # Errors
    /// [`TokenError::Unavailable`] for an invalid tenant or an empty client id.
    pub fn new(
        authority: Authority,
        tenant: impl Into<String>,
        client_id: impl Into<String>,
        token_file: impl Into<std::path::PathBuf>,
    ) -> Result<Self, TokenError> {
        let (tenant, client_id) = registration(tenant, client_id, WORKLOAD)?;
        Ok(Self {
            authority,
            tenant,
            client_id,
            token_file: token_file.into(),
            http: http_client(WORKLOAD)?,
        })
    }

    async fn request(&self, request: &TokenRequest) -> Result<AccessToken, TokenError> {
        let tenant = requested_tenant(request, &self.tenant, WORKLOAD)?;
        // At most 16 KiB and one byte are read, whatever the file holds.
        let assertion = {
            use tokio::io::AsyncReadExt as _;
            let file = tokio::fs::File::open(&self.token_file)
                .await
                .map_err(|e| TokenError::failed(WORKLOAD, ErrorClass::Transient, e))?;
            let mut text = String::new();
            file.take(16 * 1024 + 1)
                .read_to_string(&mut text)
                .await
                .map_err(|e| TokenError::failed(WORKLOAD, ErrorClass::Transient, e))?;
            text
        };
        let assertion = assertion.trim();
        if assertion.is_empty() || assertion.len() > 16 * 1024 {
            return Err(TokenError::failed(
                WORKLOAD,
                ErrorClass::Transient,
                ResponseError::Invalid("the federated token file is empty or too large".into()),
            ));
        }
        let endpoint = self.authority.token_endpoint(tenant);
        client_assertion_request(
            &self.http,
            &endpoint,
            &self.client_id,
            assertion,
            request,
            WORKLOAD,
        )
        .await
    }
}

/// The client credentials grant authenticated by a client assertion (RFC 7523: a
/// certificate's signed JWT, or a federated token).
pub(super) async fn client_assertion_request(
    http: &reqwest::Client,
    endpoint: &str,
    client_id: &str,
    assertion: &str,
    request: &TokenRequest,
    provider: &'static str,
) -> Result<AccessToken, TokenError> {
    let scope = request.scopes().join(" ");
    let mut form = vec![
        ("grant_type", "client_credentials"),
        ("client_id", client_id),
        (
            "client_assertion_type",
            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        ),
        ("client_assertion", assertion),
        ("scope", scope.as_str()),
    ];
    let claims = request.claims_parameter()?;
    if let Some(claims) = &claims {
        form.push(("claims", claims));
    }
    post_form(http, endpoint, &form, provider).await
}

impl TokenProvider for WorkloadIdentityCredential {
    fn token<'a>(&'a self, request: &'a TokenRequest) -> TokenFuture<'a> {
        Box::pin(self.request(request))
    }

    fn identity(&self) -> Option<String> {
        Some(client_identity(
            &self.authority,
            &self.tenant,
            &self.client_id,
        ))
    }
}

/// The credential Azure.Identity's `EnvironmentCredential` builds from
/// `AZURE_TENANT_ID`, `AZURE_CLIENT_ID` and one of `AZURE_CLIENT_SECRET`,
/// `AZURE_CLIENT_CERTIFICATE_PATH` (a PEM file: certificate and private key) or
/// `AZURE_FEDERATED_TOKEN_FILE`, in that order (`AZURE_AUTHORITY_HOST` picks the cloud), or
/// [`TokenError::Unavailable`] naming what is missing (a [`ProviderChain`](super::ProviderChain)
/// then goes on).
///
/// ```
/// use keel_token_manager::client::environment_credential;
///
/// let vars = |name: &str| match name {
///     "AZURE_TENANT_ID" => Some("contoso.onmicrosoft.com".to_owned()),
///     "AZURE_CLIENT_ID" => Some("app-id".to_owned()),
///     "AZURE_CLIENT_SECRET" => Some("secret".to_owned()),
///     _ => None,
/// };
/// assert!(environment_credential(vars).is_ok());
/// assert!(environment_credential(|_: &str| None).is_err());
/// ```
///
/// # Errors
/// [`TokenError::Unavailable`] when a variable is missing.
pub fn environment_credential(
    var: impl Fn(&str) -> Option<String>,
) -> Result<Box<dyn TokenProvider>, TokenError> {
    const ENVIRONMENT: &str = "environment credential";
    let get = |name: &str| var(name).filter(|v| !v.trim().is_empty());
    let tenant = get("AZURE_TENANT_ID")
        .ok_or_else(|| TokenError::unavailable(ENVIRONMENT, "AZURE_TENANT_ID is not set"))?;
    let client_id = get("AZURE_CLIENT_ID")
        .ok_or_else(|| TokenError::unavailable(ENVIRONMENT, "AZURE_CLIENT_ID is not set"))?;
    let host = get("AZURE_AUTHORITY_HOST");
    if let Some(host) = &host
        && !host.starts_with("https://")
        && !is_loopback_http(host)
    {
        return Err(TokenError::unavailable(
            ENVIRONMENT,
            "AZURE_AUTHORITY_HOST must be https (secrets are sent to it)",
        ));
    }
    let authority = match host.as_deref().map(|h| h.trim_end_matches('/')) {
        None | Some("https://login.microsoftonline.com") => Authority::AzurePublic,
        Some("https://login.microsoftonline.us") => Authority::AzureGovernment,
        Some("https://login.chinacloudapi.cn") => Authority::AzureChina,
        Some(other) => Authority::Custom(other.to_owned()),
    };
    if let Some(secret) = get("AZURE_CLIENT_SECRET") {
        return Ok(Box::new(ClientSecretCredential::new(
            authority, tenant, client_id, secret,
        )?));
    }
    if let Some(path) = get("AZURE_CLIENT_CERTIFICATE_PATH") {
        // A PEM file with the certificate and its private key (Azure.Identity also takes
        // PFX; convert one with `openssl pkcs12 -in cert.pfx -nodes`).
        let bytes = std::fs::read(&path).map_err(|_| {
            TokenError::unavailable(
                ENVIRONMENT,
                "the file AZURE_CLIENT_CERTIFICATE_PATH names cannot be read",
            )
        })?;
        let pem = String::from_utf8(bytes)
            .ok()
            .filter(|text| text.contains("-----BEGIN"))
            .ok_or_else(|| {
                TokenError::unavailable(
                    ENVIRONMENT,
                    "AZURE_CLIENT_CERTIFICATE_PATH must name a PEM file (certificate and private key); convert a PFX with `openssl pkcs12 -nodes`",
                )
            })?;
        let certificate = super::ClientCertificate::from_pem(&pem)?;
        return Ok(Box::new(super::ClientCertificateCredential::new(
            authority,
            tenant,
            client_id,
            certificate,
        )?));
    }
    if let Some(file) = get("AZURE_FEDERATED_TOKEN_FILE") {
        return Ok(Box::new(WorkloadIdentityCredential::new(
            authority, tenant, client_id, file,
        )?));
    }
    Err(TokenError::unavailable(
        ENVIRONMENT,
        "none of AZURE_CLIENT_SECRET, AZURE_CLIENT_CERTIFICATE_PATH and AZURE_FEDERATED_TOKEN_FILE is set",
    ))
}

/// The credential chain a service running anywhere wants, as Azure.Identity's
/// `DefaultAzureCredential` without the developer tools: [`environment_credential`]
/// (a secret, a certificate or a federated token file from the `AZURE_*` variables),
/// then [`ManagedIdentityCredential`] (App Service's `IDENTITY_ENDPOINT`, else IMDS;
/// `AZURE_CLIENT_ID` picks a user-assigned identity). Put a
/// [`CachingProvider`](super::CachingProvider) in front.
///
/// ```
/// use keel_token_manager::client::default_credential;
///
/// // No variables: the environment is unavailable and the chain goes on to managed
/// // identity (on a machine that is not in Azure, its request fails).
/// let chain = default_credential(|_: &str| None).unwrap();
/// assert!(format!("{chain:?}").contains("ProviderChain"));
/// ```
///
/// # Errors
/// When a credential is configured in the environment (a secret, a certificate path or
/// a federated token file is set) but cannot be built: the misconfiguration is reported,
/// not skipped. [`TokenError::Unavailable`] when no HTTP client can be built.
pub fn default_credential(
    var: impl Fn(&str) -> Option<String>,
) -> Result<super::ProviderChain, TokenError> {
    let chain = super::ProviderChain::new();
    let configured = [
        "AZURE_CLIENT_SECRET",
        "AZURE_CLIENT_CERTIFICATE_PATH",
        "AZURE_FEDERATED_TOKEN_FILE",
    ]
    .iter()
    .any(|name| var(name).is_some_and(|v| !v.trim().is_empty()));
    let chain = match environment_credential(&var) {
        Ok(credential) => chain.then(credential),
        // A credential is configured but wrong (an unreadable certificate, a plain-http
        // authority, a missing tenant): say so, rather than quietly trying the next.
        Err(broken) if configured => return Err(broken),
        Err(unavailable) => {
            // Keep the reason: a chain where nothing works names it.
            let reason = unavailable.to_string();
            chain.then(super::from_fn(move |_: &TokenRequest| {
                let reason = reason.clone();
                async move { Err(TokenError::unavailable("environment credential", reason)) }
            }))
        }
    };
    let client_id = var("AZURE_CLIENT_ID").filter(|v| !v.trim().is_empty());
    let managed =
        ManagedIdentityCredential::new(ManagedIdentityCredential::source_from(&var), client_id)?;
    Ok(chain.then(managed))
}

const MANAGED: &str = "managed identity credential";

/// Where a managed identity's tokens come from. `Debug` never shows the App Service
/// identity header.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ManagedIdentitySource {
    /// Azure VMs and scale sets: the Instance Metadata Service, by default
    /// `http://169.254.169.254/metadata/identity/oauth2/token` (`Metadata: true`,
    /// API version 2018-02-01).
    Imds {
        /// The endpoint (tests point it at loopback).
        endpoint: String,
    },
    /// App Service, Functions, Container Apps: `IDENTITY_ENDPOINT` with the
    /// `X-IDENTITY-HEADER` secret from `IDENTITY_HEADER` (API version 2019-08-01).
    AppService {
        /// `IDENTITY_ENDPOINT`.
        endpoint: String,
        /// `IDENTITY_HEADER` (a secret: never shown).
        header: String,
    },
}

impl fmt::Debug for ManagedIdentitySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ManagedIdentitySource::Imds { endpoint } => {
                f.debug_struct("Imds").field("endpoint", endpoint).finish()
            }
            ManagedIdentitySource::AppService { endpoint, .. } => f
                .debug_struct("AppService")
                .field("endpoint", endpoint)
                .field("header", &"<redacted>")
                .finish(),
        }
    }
}

/// A managed identity (system-assigned, or user-assigned by client id): tokens from
/// the platform's local endpoint, for one resource at a time (a request's single scope
/// without its `/.default`).
///
/// ```
/// use keel_token_manager::client::{ManagedIdentityCredential, ManagedIdentitySource};
///
/// // On App Service the platform sets these two variables.
/// let source = ManagedIdentitySource::AppService {
///     endpoint: "http://127.0.0.1:41741/msi/token".into(),
///     header: "secret-header".into(),
/// };
/// let credential = ManagedIdentityCredential::new(source, None).unwrap();
/// assert!(!format!("{credential:?}").contains("secret-header"));
/// ```
#[derive(Clone)]
pub struct ManagedIdentityCredential {
    source: ManagedIdentitySource,
    client_id: Option<String>,
    http: reqwest::Client,
}

impl fmt::Debug for ManagedIdentityCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let source = match &self.source {
            ManagedIdentitySource::Imds { endpoint } => format!("IMDS at {endpoint}"),
            ManagedIdentitySource::AppService { endpoint, .. } => {
                format!("App Service at {endpoint}")
            }
        };
        f.debug_struct("ManagedIdentityCredential")
            .field("source", &source)
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

impl ManagedIdentityCredential {
    /// The IMDS endpoint of Azure VMs.
    pub const IMDS_ENDPOINT: &'static str = "http://169.254.169.254/metadata/identity/oauth2/token";

    /// A managed identity from `source`; `client_id` picks a user-assigned identity.
    ///
    /// # Errors
    /// [`TokenError::Unavailable`] when no HTTP client can be built.
    pub fn new(
        source: ManagedIdentitySource,
        client_id: Option<String>,
    ) -> Result<Self, TokenError> {
        Ok(Self {
            source,
            client_id,
            http: http_client(MANAGED)?,
        })
    }

    /// The source the platform's variables point at (`IDENTITY_ENDPOINT` and
    /// `IDENTITY_HEADER`: App Service), else IMDS.
    #[must_use]
    pub fn source_from(var: impl Fn(&str) -> Option<String>) -> ManagedIdentitySource {
        match (var("IDENTITY_ENDPOINT"), var("IDENTITY_HEADER")) {
            (Some(endpoint), Some(header)) => {
                ManagedIdentitySource::AppService { endpoint, header }
            }
            _ => ManagedIdentitySource::Imds {
                endpoint: Self::IMDS_ENDPOINT.into(),
            },
        }
    }

    async fn request(&self, request: &TokenRequest) -> Result<AccessToken, TokenError> {
        let [scope] = request.scopes() else {
            return Err(TokenError::failed(
                MANAGED,
                ErrorClass::Permanent,
                ResponseError::Invalid("a managed identity takes exactly one scope".into()),
            ));
        };
        let resource = scope.strip_suffix("/.default").unwrap_or(scope);
        let mut query = vec![("resource", resource)];
        if let Some(client_id) = &self.client_id {
            query.push(("client_id", client_id.as_str()));
        }
        let call = match &self.source {
            ManagedIdentitySource::Imds { endpoint } => {
                query.push(("api-version", "2018-02-01"));
                self.http.get(endpoint).header("Metadata", "true")
            }
            ManagedIdentitySource::AppService { endpoint, header } => {
                query.push(("api-version", "2019-08-01"));
                self.http.get(endpoint).header("X-IDENTITY-HEADER", header)
            }
        };
        send(call.query(&query), MANAGED)
            .await?
            .grant()
            .map(|grant| grant.access)
    }
}

impl TokenProvider for ManagedIdentityCredential {
    fn token<'a>(&'a self, request: &'a TokenRequest) -> TokenFuture<'a> {
        Box::pin(self.request(request))
    }

    /// A user-assigned identity's client id; none for the system-assigned one, whose
    /// principal cannot be told from here (every VM's endpoint is the same).
    fn identity(&self) -> Option<String> {
        self.client_id
            .as_ref()
            .map(|client_id| format!("managed|{client_id}"))
    }
}
