//! User sign-in: the authorization code flow with PKCE, and the refresh token grant.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use keel_resilience::ErrorClass;

use super::credential::{Authority, http_client, post_form_grant, registration};
use super::response::{ResponseError, TokenGrant};
use super::{TokenError, TokenRequest};

const PROVIDER: &str = "authorization code client";

/// A sign-in under way: the URL to send the user to, and what the redirect must bring
/// back. Keep it (server side, e.g. in the session) until the redirect arrives; it is
/// good for one redemption.
pub struct PendingAuthorization {
    /// Where to send the user's browser.
    pub url: String,
    state: String,
    verifier: String,
    scope: String,
}

impl fmt::Debug for PendingAuthorization {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PendingAuthorization")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

/// The authorization code flow with PKCE (RFC 7636, S256) and `state` for a web app or
/// a native app (without a secret), against Entra ID's v2.0 endpoints; and the refresh
/// token grant that keeps the user's session going.
///
/// ```
/// use keel_token_manager::client::{Authority, AuthorizationCodeClient};
///
/// let client = AuthorizationCodeClient::new(Authority::AzurePublic, "organizations", "app-id", "https://app.example/callback", None).unwrap();
/// let pending = client.start(["openid", "offline_access", "User.Read"]).unwrap();
/// assert!(pending.url.starts_with("https://login.microsoftonline.com/organizations/oauth2/v2.0/authorize?"));
/// assert!(pending.url.contains("code_challenge_method=S256"));
/// ```
#[derive(Clone)]
pub struct AuthorizationCodeClient {
    authority: Authority,
    tenant: String,
    client_id: String,
    redirect_uri: String,
    secret: Option<String>,
    http: reqwest::Client,
}

impl fmt::Debug for AuthorizationCodeClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthorizationCodeClient")
            .field("authority", &self.authority)
            .field("tenant", &self.tenant)
            .field("client_id", &self.client_id)
            .field("redirect_uri", &self.redirect_uri)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

/// 32 random bytes, base64url (256 bits: a `state` or a PKCE verifier).
fn random_urlsafe() -> Result<String, TokenError> {
    let bytes: [u8; 32] = super::error::random_bytes(PROVIDER)?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

/// Equal in time independent of where they differ.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0_u8, |diff, (x, y)| diff | (x ^ y))
            == 0
}

impl AuthorizationCodeClient {
    /// A client registered with `redirect_uri`; `secret` for a confidential (web) app,
    /// none for a public (native, SPA) one.
    ///
    /// # Errors
    /// [`TokenError::Unavailable`] for an invalid tenant, an empty client id, or a
    /// redirect URI that is not `https` (or `http` on loopback).
    pub fn new(
        authority: Authority,
        tenant: impl Into<String>,
        client_id: impl Into<String>,
        redirect_uri: impl Into<String>,
        secret: Option<String>,
    ) -> Result<Self, TokenError> {
        let (tenant, client_id) = registration(tenant, client_id, PROVIDER)?;
        let redirect_uri = redirect_uri.into();
        let loopback = super::credential::is_loopback_http(&redirect_uri);
        if !(redirect_uri.starts_with("https://") || loopback) {
            return Err(TokenError::unavailable(
                PROVIDER,
                "the redirect URI must be https (or http on loopback)",
            ));
        }
        Ok(Self {
            authority,
            tenant,
            client_id,
            redirect_uri,
            secret,
            http: http_client(PROVIDER)?,
        })
    }

    /// Starts a sign-in for `scopes` (add `offline_access` for a refresh token, `openid`
    /// for an ID token): a fresh `state` and PKCE verifier (256 bits each), and the
    /// authorize URL carrying the S256 challenge.
    ///
    /// # Errors
    /// [`TokenError::Failed`] only if the system has no randomness.
    pub fn start<I, S>(&self, scopes: I) -> Result<PendingAuthorization, TokenError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let scope = scopes
            .into_iter()
            .map(Into::into)
            .collect::<Vec<String>>()
            .join(" ");
        let (state, verifier) = (random_urlsafe()?, random_urlsafe()?);
        let challenge = URL_SAFE_NO_PAD.encode(ring::digest::digest(
            &ring::digest::SHA256,
            verifier.as_bytes(),
        ));
        let endpoint = self.authority.endpoint(&self.tenant, "authorize");
        let query = [
            ("client_id", self.client_id.as_str()),
            ("response_type", "code"),
            ("redirect_uri", self.redirect_uri.as_str()),
            ("response_mode", "query"),
            ("scope", scope.as_str()),
            ("state", state.as_str()),
            ("code_challenge", challenge.as_str()),
            ("code_challenge_method", "S256"),
        ];
        let encoded: Vec<String> = query
            .iter()
            .map(|(k, v)| format!("{k}={}", form_encode(v)))
            .collect();
        Ok(PendingAuthorization {
            url: format!("{endpoint}?{}", encoded.join("&")),
            state,
            verifier,
            scope,
        })
    }

    /// Redeems the `code` the redirect brought, after checking its `state` against the
    /// pending sign-in's (in constant time): a mismatch is refused before any request.
    ///
    /// # Errors
    /// [`TokenError::Failed`] (permanent) on a state mismatch; the token endpoint's
    /// errors otherwise.
    pub async fn redeem(
        &self,
        pending: PendingAuthorization,
        code: &str,
        state: &str,
    ) -> Result<TokenGrant, TokenError> {
        if !same(&pending.state, state) {
            return Err(TokenError::failed(
                PROVIDER,
                ErrorClass::Permanent,
                ResponseError::Invalid("the redirect's state is not this sign-in's".into()),
            ));
        }
        let mut form = vec![
            ("grant_type", "authorization_code"),
            ("client_id", self.client_id.as_str()),
            ("code", code),
            ("redirect_uri", self.redirect_uri.as_str()),
            ("code_verifier", pending.verifier.as_str()),
            ("scope", pending.scope.as_str()),
        ];
        if let Some(secret) = &self.secret {
            form.push(("client_secret", secret));
        }
        let endpoint = self.authority.token_endpoint(&self.tenant);
        post_form_grant(&self.http, &endpoint, &form, PROVIDER).await
    }

    /// A new access token (and, as Entra ID rotates them, a new refresh token) from a
    /// refresh token.
    ///
    /// # Errors
    /// The token endpoint's: `invalid_grant` (permanent) when the refresh token expired
    /// or was revoked, and the user must sign in again.
    pub async fn refresh<I, S>(
        &self,
        refresh_token: &str,
        scopes: I,
    ) -> Result<TokenGrant, TokenError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.refresh_for(refresh_token, &TokenRequest::new(scopes))
            .await
    }

    /// [`refresh`](Self::refresh) for a [`TokenRequest`]: its scopes, its tenant (when it
    /// names one) and its claims (a challenge, client capabilities).
    ///
    /// # Errors
    /// As [`refresh`](Self::refresh).
    pub async fn refresh_for(
        &self,
        refresh_token: &str,
        request: &TokenRequest,
    ) -> Result<TokenGrant, TokenError> {
        refresh_grant(
            &self.http,
            &self.authority,
            &self.tenant,
            &self.client_id,
            self.secret.as_deref(),
            refresh_token,
            request,
            PROVIDER,
        )
        .await
    }
}

/// The refresh token grant (RFC 6749 §6), for a public or a confidential client.
#[allow(clippy::too_many_arguments)]
async fn refresh_grant(
    http: &reqwest::Client,
    authority: &Authority,
    own_tenant: &str,
    client_id: &str,
    secret: Option<&str>,
    refresh_token: &str,
    request: &TokenRequest,
    provider: &'static str,
) -> Result<TokenGrant, TokenError> {
    let tenant = super::credential::requested_tenant(request, own_tenant, provider)?;
    let scope = request.scopes().join(" ");
    let mut form = vec![
        ("grant_type", "refresh_token"),
        ("client_id", client_id),
        ("refresh_token", refresh_token),
        ("scope", scope.as_str()),
    ];
    if let Some(secret) = secret {
        form.push(("client_secret", secret));
    }
    let claims = request.claims_parameter()?;
    if let Some(claims) = &claims {
        form.push(("claims", claims));
    }
    let endpoint = authority.token_endpoint(tenant);
    post_form_grant(http, &endpoint, &form, provider).await
}

impl super::RefreshGrant for AuthorizationCodeClient {
    fn identity(&self) -> Option<String> {
        Some(super::credential::client_identity(
            &self.authority,
            &self.tenant,
            &self.client_id,
        ))
    }

    fn refresh<'a>(
        &'a self,
        refresh_token: &'a str,
        request: &'a TokenRequest,
    ) -> super::GrantFuture<'a> {
        Box::pin(self.refresh_for(refresh_token, request))
    }
}

impl super::RefreshGrant for DeviceCodeClient {
    fn identity(&self) -> Option<String> {
        Some(super::credential::client_identity(
            &self.authority,
            &self.tenant,
            &self.client_id,
        ))
    }

    fn refresh<'a>(
        &'a self,
        refresh_token: &'a str,
        request: &'a TokenRequest,
    ) -> super::GrantFuture<'a> {
        Box::pin(refresh_grant(
            &self.http,
            &self.authority,
            &self.tenant,
            &self.client_id,
            None,
            refresh_token,
            request,
            DEVICE,
        ))
    }
}

/// `application/x-www-form-urlencoded` encoding of one value.
fn form_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(char::from(b));
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// What the device code endpoint answered: show `message` (or `user_code` and
/// `verification_uri`) to the user, then [`DeviceCodeClient::wait`].
#[derive(Clone)]
pub struct DeviceCode {
    /// The code the user types.
    pub user_code: String,
    /// Where the user types it.
    pub verification_uri: String,
    /// Entra ID's ready-made instruction for the user.
    pub message: Option<String>,
    device_code: String,
    interval: std::time::Duration,
    expires_in: std::time::Duration,
    scope: String,
}

impl fmt::Debug for DeviceCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceCode")
            .field("user_code", &self.user_code)
            .field("verification_uri", &self.verification_uri)
            .field("interval", &self.interval)
            .field("expires_in", &self.expires_in)
            .finish_non_exhaustive()
    }
}

/// The device code flow (RFC 8628) for devices without a browser: get a code for the
/// user to enter elsewhere, then poll the token endpoint at the interval the provider
/// gives, slowing down by 5 s on `slow_down`, until the user finishes, declines, or the
/// code expires.
#[derive(Clone, Debug)]
pub struct DeviceCodeClient {
    authority: Authority,
    tenant: String,
    client_id: String,
    http: reqwest::Client,
}

impl DeviceCodeClient {
    /// A public client `client_id` in `tenant`.
    ///
    /// # Errors
    /// [`TokenError::Unavailable`] for an invalid tenant or an empty client id.
    pub fn new(
        authority: Authority,
        tenant: impl Into<String>,
        client_id: impl Into<String>,
    ) -> Result<Self, TokenError> {
        let (tenant, client_id) = registration(tenant, client_id, DEVICE)?;
        Ok(Self {
            authority,
            tenant,
            client_id,
            http: http_client(DEVICE)?,
        })
    }

    /// Asks for a device code for `scopes`.
    ///
    /// # Errors
    /// The endpoint's errors, or [`TokenError::Failed`] for an answer that is not a
    /// device code.
    pub async fn start<I, S>(&self, scopes: I) -> Result<DeviceCode, TokenError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let scope = scopes
            .into_iter()
            .map(Into::into)
            .collect::<Vec<String>>()
            .join(" ");
        let endpoint = self.authority.endpoint(&self.tenant, "devicecode");
        let form = [
            ("client_id", self.client_id.as_str()),
            ("scope", scope.as_str()),
        ];
        let json = super::credential::post_form_json(&self.http, &endpoint, &form, DEVICE).await?;
        let text = |k: &str| {
            json.get(k)
                .and_then(serde_json::Value::as_str)
                .map(str::to_owned)
        };
        let secs = |k: &str| {
            json.get(k).and_then(|v| match v {
                serde_json::Value::Number(n) => n.as_u64(),
                serde_json::Value::String(s) => s.parse().ok(),
                _ => None,
            })
        };
        let invalid = |what: &str| {
            TokenError::failed(
                DEVICE,
                ErrorClass::Permanent,
                ResponseError::Invalid(format!("the device code answer has no {what}")),
            )
        };
        Ok(DeviceCode {
            user_code: text("user_code").ok_or_else(|| invalid("user_code"))?,
            verification_uri: text("verification_uri")
                .or_else(|| text("verification_url"))
                .ok_or_else(|| invalid("verification_uri"))?,
            message: text("message"),
            device_code: text("device_code").ok_or_else(|| invalid("device_code"))?,
            interval: std::time::Duration::from_secs(secs("interval").unwrap_or(5).clamp(1, 60)),
            expires_in: std::time::Duration::from_secs(secs("expires_in").unwrap_or(900).min(3600)),
            scope,
        })
    }

    /// Polls until the user finished signing in (a token), declined, or the code
    /// expired (an error).
    ///
    /// # Errors
    /// `authorization_declined`, `expired_token` or `bad_verification_code` from the
    /// provider (permanent), or any other token endpoint error.
    pub async fn wait(&self, code: &DeviceCode) -> Result<TokenGrant, TokenError> {
        let deadline = tokio::time::Instant::now() + code.expires_in;
        let mut interval = code.interval;
        let endpoint = self.authority.token_endpoint(&self.tenant);
        loop {
            tokio::time::sleep(interval).await;
            let form = [
                ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
                ("client_id", self.client_id.as_str()),
                ("device_code", code.device_code.as_str()),
                ("scope", code.scope.as_str()),
            ];
            match post_form_grant(&self.http, &endpoint, &form, DEVICE).await {
                Ok(grant) => return Ok(grant),
                Err(e) => match e.oauth().map(|o| o.error.as_str()) {
                    Some("authorization_pending") => {}
                    Some("slow_down") => interval = next_interval(interval),
                    _ => return Err(e),
                },
            }
            if tokio::time::Instant::now() + interval >= deadline {
                return Err(TokenError::failed(
                    DEVICE,
                    ErrorClass::Permanent,
                    ResponseError::Invalid(
                        "the device code expired before the user signed in".into(),
                    ),
                ));
            }
        }
    }
}

const DEVICE: &str = "device code client";

/// The polling interval after `slow_down` (RFC 8628 §3.5: 5 seconds more).
fn next_interval(interval: std::time::Duration) -> std::time::Duration {
    (interval + std::time::Duration::from_secs(5)).min(std::time::Duration::from_secs(60))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slow_down_adds_five_seconds_up_to_a_minute() {
        let s = std::time::Duration::from_secs;
        assert_eq!(next_interval(s(5)), s(10));
        assert_eq!(next_interval(s(58)), s(60));
    }

    #[test]
    fn states_compare_in_full() {
        assert!(same("abc", "abc"));
        assert!(!same("abc", "abd"));
        assert!(!same("abc", "ab"));
    }
}

const OBO: &str = "on-behalf-of client";

/// How a confidential client proves itself.
#[derive(Clone)]
#[non_exhaustive]
pub enum ClientAuth {
    /// A client secret.
    Secret(String),
    /// A certificate (a signed client assertion per request).
    Certificate(super::ClientCertificate),
}

impl fmt::Debug for ClientAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientAuth::Secret(_) => f.write_str("Secret(<redacted>)"),
            ClientAuth::Certificate(c) => f.debug_tuple("Certificate").field(c).finish(),
        }
    }
}

/// The on-behalf-of flow (the jwt-bearer grant): a middle-tier API exchanges the token
/// a user called it with for a token to a downstream API (Graph) as that user.
/// [`for_user`](Self::for_user) gives a [`TokenProvider`](super::TokenProvider) for one
/// incoming token; put a [`CachingProvider`](super::CachingProvider) in front of it for
/// as long as that token lives.
#[derive(Clone, Debug)]
pub struct OnBehalfOfClient {
    authority: Authority,
    tenant: String,
    client_id: String,
    auth: ClientAuth,
    http: reqwest::Client,
}

impl OnBehalfOfClient {
    /// The middle tier's own registration.
    ///
    /// # Errors
    /// [`TokenError::Unavailable`] for an invalid tenant or an empty client id.
    pub fn new(
        authority: Authority,
        tenant: impl Into<String>,
        client_id: impl Into<String>,
        auth: ClientAuth,
    ) -> Result<Self, TokenError> {
        let (tenant, client_id) = registration(tenant, client_id, OBO)?;
        Ok(Self {
            authority,
            tenant,
            client_id,
            auth,
            http: http_client(OBO)?,
        })
    }

    /// A provider of tokens on behalf of the user whose token is `user_assertion`.
    #[must_use]
    pub fn for_user(&self, user_assertion: impl Into<String>) -> OnBehalfOf {
        OnBehalfOf {
            client: self.clone(),
            assertion: user_assertion.into(),
        }
    }

    async fn exchange(
        &self,
        user_assertion: &str,
        request: &TokenRequest,
    ) -> Result<TokenGrant, TokenError> {
        let tenant = super::credential::requested_tenant(request, &self.tenant, OBO)?;
        let endpoint = self.authority.token_endpoint(tenant);
        let scope = request.scopes().join(" ");
        let signed;
        let mut form = vec![
            ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
            ("client_id", self.client_id.as_str()),
            ("assertion", user_assertion),
            ("requested_token_use", "on_behalf_of"),
            ("scope", scope.as_str()),
        ];
        match &self.auth {
            ClientAuth::Secret(secret) => form.push(("client_secret", secret)),
            ClientAuth::Certificate(certificate) => {
                signed = certificate.assertion(&self.client_id, &endpoint)?;
                form.push((
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                ));
                form.push(("client_assertion", &signed));
            }
        }
        let claims = request.claims_parameter()?;
        if let Some(claims) = &claims {
            form.push(("claims", claims));
        }
        post_form_grant(&self.http, &endpoint, &form, OBO).await
    }
}

/// Tokens on behalf of one user (see [`OnBehalfOfClient::for_user`]). `Debug` never
/// shows the user's token.
#[derive(Clone)]
pub struct OnBehalfOf {
    client: OnBehalfOfClient,
    assertion: String,
}

impl fmt::Debug for OnBehalfOf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OnBehalfOf")
            .field("client", &self.client)
            .finish_non_exhaustive()
    }
}

impl super::TokenProvider for OnBehalfOf {
    fn token<'a>(&'a self, request: &'a TokenRequest) -> super::TokenFuture<'a> {
        Box::pin(async move {
            self.client
                .exchange(&self.assertion, request)
                .await
                .map(|grant| grant.access)
        })
    }

    /// The middle tier's client and a hash of the user's token (one token per user).
    fn identity(&self) -> Option<String> {
        let user = ring::digest::digest(&ring::digest::SHA256, self.assertion.as_bytes());
        let user: String = user.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        Some(format!(
            "{}|{}|obo:{user}",
            self.client.authority.token_endpoint(&self.client.tenant),
            self.client.client_id
        ))
    }
}
