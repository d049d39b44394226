//! The `validationTokens` of rich notifications: proof that Microsoft Graph sent them.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use keel_token_manager::Validator;
use keel_token_manager::client::{RemoteJwks, TokenError};

/// The change-tracking publisher: `appid` (v1.0 tokens) or `azp` (v2.0 tokens) of every
/// validation token.
pub const CHANGE_TRACKING_PUBLISHER: &str = "0bf30f3b-4a52-48df-9a82-234910c4a086";

/// Why validation tokens were refused. Holds no token.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ValidationTokenError {
    /// Rich notifications came without validation tokens.
    #[error("validation tokens: none sent with notifications that carry resource data")]
    Missing,
    /// A token failed validation (signature, issuer, audience, tenant, expiry).
    #[error("validation tokens: {0}")]
    Invalid(#[from] keel_token_manager::ValidationError),
    /// A token was not issued to Graph's change-tracking publisher.
    #[error(
        "validation tokens: a token was not issued to Microsoft Graph's change-tracking publisher"
    )]
    WrongPublisher,
}

/// Checks rich notifications' validation tokens as Microsoft documents: signed by the
/// identity platform's keys (found through OpenID discovery, cached, fetched again on
/// an unknown key at a bounded rate), the audience your app's id, the publisher
/// `0bf30f3b-…` in `appid` (v1.0) or `azp` (v2.0), the issuer of the token's version
/// for one of your tenants, not expired.
///
/// ```no_run
/// use keel_graph_client::webhook::ValidationTokenValidator;
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let validator = ValidationTokenValidator::discover(
///     "https://login.microsoftonline.com",
///     "11111111-2222-3333-4444-555555555555", // your app's id
///     &["72f988bf-86f1-41af-91ab-2d7cd011db47"], // your tenants
/// )
/// .await?;
/// # drop(validator); Ok(()) }
/// ```
#[derive(Debug)]
pub struct ValidationTokenValidator {
    v2: Validator,
    v1: Validator,
}

impl ValidationTokenValidator {
    /// A validator for tokens of `tenants` issued to `app_id`, with the keys and issuer
    /// template of `{login_base}/common/v2.0`'s discovery document
    /// (`https://login.microsoftonline.com`, a national cloud's, or the emulator's base
    /// URL). v1.0 tokens' issuer is `https://sts.windows.net/{tenant}/` on the global
    /// cloud, `{login_base}/{tenant}/` elsewhere.
    ///
    /// # Errors
    /// [`TokenError`] when the discovery document or the keys cannot be fetched.
    pub async fn discover(
        login_base: &str,
        app_id: &str,
        tenants: &[&str],
    ) -> Result<Self, TokenError> {
        let login_base = login_base.trim_end_matches('/');
        let (jwks, issuer) = RemoteJwks::discover(&format!("{login_base}/common/v2.0")).await?;
        let v1_issuer = if login_base == "https://login.microsoftonline.com" {
            "https://sts.windows.net/{tenantid}/".to_owned()
        } else {
            format!("{login_base}/{{tenantid}}/")
        };
        let tenants: Vec<String> = tenants.iter().map(|t| t.to_ascii_lowercase()).collect();
        Ok(ValidationTokenValidator {
            v2: Validator::from_remote(jwks.clone(), issuer, app_id)
                .accept_types(&["JWT"])
                .tenants(tenants.clone()),
            v1: Validator::from_remote(jwks, v1_issuer, app_id)
                .accept_types(&["JWT"])
                .tenants(tenants),
        })
    }

    /// Checks every token; at least one is needed.
    ///
    /// # Errors
    /// [`ValidationTokenError`].
    pub async fn check(&self, tokens: &[String]) -> Result<(), ValidationTokenError> {
        if tokens.is_empty() {
            return Err(ValidationTokenError::Missing);
        }
        for token in tokens {
            // Which issuer to check against: the token's own `iss` says its version;
            // the chosen validator then checks everything, `iss` included.
            let validator = if claimed_issuer(token).is_some_and(|iss| iss.ends_with("/v2.0")) {
                &self.v2
            } else {
                &self.v1
            };
            let claims = validator.validate_fresh(token).await?;
            if claims.client_id != CHANGE_TRACKING_PUBLISHER {
                return Err(ValidationTokenError::WrongPublisher);
            }
        }
        Ok(())
    }
}

/// The `iss` a token claims, unverified (only to pick the validator that verifies it).
fn claimed_issuer(token: &str) -> Option<String> {
    let payload = token.split('.').nth(1)?;
    if payload.len() > 16 << 10 {
        return None;
    }
    let bytes = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let value: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    value.get("iss")?.as_str().map(str::to_owned)
}
