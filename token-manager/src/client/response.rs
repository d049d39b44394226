//! What a token endpoint answers, read as hostile input: a token, or a typed OAuth error.

use std::fmt;
use std::time::Duration;

use keel_resilience::ErrorClass;
use serde::Deserialize;

use super::{AccessToken, TokenError};

/// The largest token endpoint body read (Entra ID's are a few KiB).
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// The longest text kept from a provider's error fields.
const FIELD_MAX: usize = 512;

/// An OAuth 2.0 error response (RFC 6749 §5.2) with Entra ID's extra fields, as sent by
/// the token endpoint. Text fields are bounded; none of them holds a secret.
///
/// ```
/// use keel_resilience::{Classify, ErrorClass};
/// use keel_token_manager::client::{read_token_response, OAuthError, TokenError};
///
/// let body = br#"{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret provided.","error_codes":[7000215],"trace_id":"t","correlation_id":"c"}"#;
/// let error = read_token_response(401, Some("application/json"), None, body).unwrap_err();
/// assert_eq!(error.class(), ErrorClass::Permanent);
/// let oauth: &OAuthError = error.oauth().unwrap();
/// assert_eq!(oauth.error, "invalid_client");
/// assert_eq!(oauth.error_codes, [7000215]);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct OAuthError {
    /// The HTTP status it came with.
    pub status: u16,
    /// The error code (`invalid_client`, `invalid_grant`, `temporarily_unavailable`...).
    pub error: String,
    /// The provider's description (for Entra ID it starts with the `AADSTS` code).
    pub description: Option<String>,
    /// Entra ID's numeric error codes.
    pub error_codes: Vec<u64>,
    /// When the provider saw the error.
    pub timestamp: Option<String>,
    /// The provider's trace id, for its support.
    pub trace_id: Option<String>,
    /// The provider's correlation id.
    pub correlation_id: Option<String>,
    /// How long the provider asked us to wait (`Retry-After` on 429 / 503).
    pub retry_after: Option<Duration>,
}

impl OAuthError {
    /// Whether trying again may help: `temporarily_unavailable`, `server_error` and 5xx
    /// are transient; 429 is throttled with its delay; the rest (`invalid_client`,
    /// `invalid_grant`, `invalid_scope`, `unauthorized_client`...) fail again the same way.
    #[must_use]
    pub fn class(&self) -> ErrorClass {
        if self.status == 429 {
            return ErrorClass::Throttled {
                retry_after: self.retry_after,
            };
        }
        match self.error.as_str() {
            "temporarily_unavailable" | "server_error" => match self.retry_after {
                Some(delay) => ErrorClass::Throttled {
                    retry_after: Some(delay),
                },
                None => ErrorClass::Transient,
            },
            _ if self.status >= 500 => ErrorClass::from_http_status(self.status, self.retry_after),
            _ => ErrorClass::Permanent,
        }
    }
}

impl fmt::Display for OAuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HTTP {}: {}", self.status, self.error)?;
        if let Some(description) = &self.description {
            write!(f, ": {description}")?;
        }
        if let Some(trace) = &self.trace_id {
            write!(f, " (trace id {trace})")?;
        }
        Ok(())
    }
}

impl std::error::Error for OAuthError {}

/// Why a token endpoint's answer could not be used (not an OAuth error: a body that is
/// not one).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ResponseError {
    /// The body is larger than [`MAX_RESPONSE_BYTES`].
    #[error("the token endpoint's answer is larger than {MAX_RESPONSE_BYTES} bytes")]
    TooLarge,
    /// The body is not JSON (an HTML error page from a proxy, a truncated body...).
    #[error(
        "the token endpoint answered HTTP {status} with a body that is not JSON ({content_type}): {reason}"
    )]
    NotJson {
        /// The HTTP status.
        status: u16,
        /// The content type it gave (bounded), or "none".
        content_type: String,
        /// The parser's complaint (bounded).
        reason: String,
    },
    /// JSON, but not a token response: a field is missing or of the wrong type.
    #[error("the token endpoint's answer is not a usable token response: {0}")]
    Invalid(String),
}

#[derive(Deserialize)]
struct RawToken {
    access_token: Option<String>,
    token_type: Option<String>,
    expires_in: Option<serde_json::Value>,
    expires_on: Option<serde_json::Value>,
    refresh_in: Option<serde_json::Value>,
    refresh_token: Option<String>,
    id_token: Option<String>,
    scope: Option<String>,
}

#[derive(Deserialize)]
struct RawError {
    error: Option<serde_json::Value>,
    error_description: Option<serde_json::Value>,
    error_codes: Option<serde_json::Value>,
    timestamp: Option<serde_json::Value>,
    trace_id: Option<serde_json::Value>,
    correlation_id: Option<serde_json::Value>,
}

const PROVIDER: &str = "token endpoint";

/// Reads a token endpoint's answer: its status, `Content-Type`, `Retry-After` (in
/// seconds, when given) and body. A 200 with a bearer token becomes an [`AccessToken`]
/// (`expires_in` and `refresh_in` as numbers or, as Entra's v1 endpoint sends them, as
/// strings); an OAuth error becomes [`TokenError::Failed`] carrying an [`OAuthError`];
/// anything else (HTML, truncated, too large, missing fields) a `Failed` carrying a
/// [`ResponseError`], transient when the status says so. Never panics, whatever the
/// bytes.
///
/// # Errors
/// As above.
pub fn read_token_response(
    status: u16,
    content_type: Option<&str>,
    retry_after: Option<Duration>,
    body: &[u8],
) -> Result<AccessToken, TokenError> {
    read_token_grant(status, content_type, retry_after, body).map(|grant| grant.access)
}

/// Everything a token endpoint granted: the access token and, for user flows, the
/// refresh token, the ID token and the scopes granted. `Debug` shows none of the
/// secrets.
#[derive(Clone)]
#[non_exhaustive]
pub struct TokenGrant {
    /// The access token.
    pub access: AccessToken,
    refresh_token: Option<String>,
    id_token: Option<String>,
    /// The scopes granted, as the provider wrote them.
    pub scope: Option<String>,
}

impl TokenGrant {
    /// The refresh token, if one was granted. Keep it sealed at rest
    /// ([`SealingKeys`](crate::SealingKeys)) and out of logs.
    #[must_use]
    pub fn refresh_token(&self) -> Option<&str> {
        self.refresh_token.as_deref()
    }

    /// The OpenID Connect ID token, if one was granted (validate it before trusting it).
    #[must_use]
    pub fn id_token(&self) -> Option<&str> {
        self.id_token.as_deref()
    }
}

impl fmt::Debug for TokenGrant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenGrant")
            .field("access", &self.access)
            .field(
                "refresh_token",
                &self.refresh_token.as_ref().map(|_| "<redacted>"),
            )
            .field("id_token", &self.id_token.as_ref().map(|_| "<redacted>"))
            .field("scope", &self.scope)
            .finish()
    }
}

/// [`read_token_response`], keeping the refresh token, ID token and scopes.
///
/// # Errors
/// As [`read_token_response`].
pub fn read_token_grant(
    status: u16,
    content_type: Option<&str>,
    retry_after: Option<Duration>,
    body: &[u8],
) -> Result<TokenGrant, TokenError> {
    let class_of_status = ErrorClass::from_http_status(status, retry_after);
    if body.len() > MAX_RESPONSE_BYTES {
        return Err(TokenError::failed(
            PROVIDER,
            class_of_status,
            ResponseError::TooLarge,
        ));
    }
    let json: serde_json::Value = match serde_json::from_slice(body) {
        Ok(json) => json,
        Err(e) => {
            let class = if status == 200 {
                ErrorClass::Transient // a truncated success: a retry gets a whole one
            } else {
                class_of_status
            };
            return Err(TokenError::failed(
                PROVIDER,
                class,
                ResponseError::NotJson {
                    status,
                    content_type: bounded(content_type.unwrap_or("none")),
                    reason: bounded(&e.to_string()),
                },
            ));
        }
    };
    if (200..300).contains(&status) {
        return token(json).map_err(|e| TokenError::failed(PROVIDER, ErrorClass::Permanent, e));
    }
    let raw: RawError = serde_json::from_value(json).unwrap_or(RawError {
        error: None,
        error_description: None,
        error_codes: None,
        timestamp: None,
        trace_id: None,
        correlation_id: None,
    });
    let oauth = OAuthError {
        status,
        error: text(raw.error.as_ref()).unwrap_or_else(|| format!("http_{status}")),
        description: text(raw.error_description.as_ref()),
        error_codes: raw
            .error_codes
            .as_ref()
            .and_then(serde_json::Value::as_array)
            .map(|codes| {
                codes
                    .iter()
                    .filter_map(serde_json::Value::as_u64)
                    .take(16)
                    .collect()
            })
            .unwrap_or_default(),
        timestamp: text(raw.timestamp.as_ref()),
        trace_id: text(raw.trace_id.as_ref()),
        correlation_id: text(raw.correlation_id.as_ref()),
        retry_after,
    };
    Err(TokenError::failed(PROVIDER, oauth.class(), oauth))
}

fn token(json: serde_json::Value) -> Result<TokenGrant, ResponseError> {
    let raw: RawToken = serde_json::from_value(json)
        .map_err(|e| ResponseError::Invalid(bounded(&e.to_string())))?;
    let access_token = raw
        .access_token
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ResponseError::Invalid("no access_token".into()))?;
    match raw.token_type.as_deref() {
        Some(t) if t.eq_ignore_ascii_case("bearer") => {}
        Some(_) => {
            return Err(ResponseError::Invalid(
                "the token_type is not Bearer".into(),
            ));
        }
        None => return Err(ResponseError::Invalid("no token_type".into())),
    }
    // Managed identity on App Service sends only `expires_on` (Unix seconds).
    let expires_in = seconds(raw.expires_in.as_ref())
        .or_else(|| {
            let on = seconds(raw.expires_on.as_ref())?;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .ok()?;
            on.checked_sub(now)
        })
        .ok_or_else(|| ResponseError::Invalid("no usable expires_in".into()))?;
    let token = AccessToken::new(access_token, expires_in);
    let access = match seconds(raw.refresh_in.as_ref()) {
        Some(after) => token.refresh_in(after),
        None => token,
    };
    Ok(TokenGrant {
        access,
        refresh_token: raw
            .refresh_token
            .filter(|t| !t.is_empty() && t.len() <= 16 * 1024),
        id_token: raw
            .id_token
            .filter(|t| !t.is_empty() && t.len() <= 16 * 1024),
        scope: raw.scope.map(|s| bounded(&s)),
    })
}

/// A number of seconds given as a JSON number or a string of digits (a lifetime, or a
/// Unix time before the year 2200).
fn seconds(value: Option<&serde_json::Value>) -> Option<Duration> {
    let n = match value? {
        serde_json::Value::Number(n) => n.as_u64()?,
        serde_json::Value::String(s) => s.trim().parse().ok()?,
        _ => return None,
    };
    (n <= 7_258_118_400).then(|| Duration::from_secs(n))
}

fn text(value: Option<&serde_json::Value>) -> Option<String> {
    match value? {
        serde_json::Value::String(s) => Some(bounded(s)),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

pub(super) fn bounded(s: &str) -> String {
    let mut end = s.len().min(FIELD_MAX);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    let mut out: String = s[..end]
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if end < s.len() {
        out.push('…');
    }
    out
}

/// A claims challenge from a protected API's `WWW-Authenticate` header (Conditional
/// Access, MFA, continuous access evaluation): `error="insufficient_claims"` with
/// `claims` holding base64 of the claims JSON. Returns the decoded JSON to put in
/// [`TokenRequest::claims`](super::TokenRequest::claims), or `None` when the header is
/// not such a challenge.
///
/// ```
/// use keel_token_manager::client::claims_challenge;
///
/// let header = r#"Bearer realm="", authorization_uri="https://login.microsoftonline.com/common/oauth2/authorize", error="insufficient_claims", claims="eyJhY2Nlc3NfdG9rZW4iOnsibmJmIjp7ImVzc2VudGlhbCI6dHJ1ZSwgInZhbHVlIjoiMTYwNDEwNjY1MSJ9fX0=""#;
/// let claims = claims_challenge(header).unwrap();
/// assert!(claims.starts_with(r#"{"access_token":{"nbf""#));
/// assert_eq!(claims_challenge("Bearer error=\"invalid_token\""), None);
/// ```
#[must_use]
pub fn claims_challenge(header: &str) -> Option<String> {
    use base64::Engine as _;
    if header.len() > 16 * 1024 {
        return None;
    }
    let params = auth_params(header);
    let error = params
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("error"))?;
    if error.1 != "insufficient_claims" {
        return None;
    }
    let claims = &params
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("claims"))?
        .1;
    let engine = base64::engine::general_purpose::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    let decoded = engine
        .decode(claims.trim())
        .or_else(|_| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(claims.trim().trim_end_matches('='))
        })
        .ok()?;
    let json = String::from_utf8(decoded).ok()?;
    serde_json::from_str::<serde_json::Value>(&json)
        .ok()
        .filter(serde_json::Value::is_object)
        .map(|_| json)
}

/// The `key="value"` (or `key=token`) parameters of a `WWW-Authenticate` header, any
/// scheme; quoted values may hold commas and escaped quotes.
fn auth_params(header: &str) -> Vec<(String, String)> {
    let mut params = Vec::new();
    let mut chars = header.chars().peekable();
    // Skip the scheme.
    while chars.peek().is_some_and(|c| !c.is_whitespace()) {
        chars.next();
    }
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace() || *c == ',') {
            chars.next();
        }
        let key: String =
            std::iter::from_fn(|| chars.next_if(|c| *c != '=' && *c != ',' && !c.is_whitespace()))
                .collect();
        if key.is_empty() {
            if chars.next().is_none() {
                break;
            }
            continue;
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.next_if_eq(&'=').is_none() {
            continue;
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        if chars.next_if_eq(&'"').is_some() {
            while let Some(c) = chars.next() {
                match c {
                    '\\' => {
                        if let Some(escaped) = chars.next() {
                            value.push(escaped);
                        }
                    }
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            value =
                std::iter::from_fn(|| chars.next_if(|c| *c != ',' && !c.is_whitespace())).collect();
        }
        params.push((key, value));
        if params.len() > 32 {
            break;
        }
    }
    params
}
