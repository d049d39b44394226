//! Bearer tokens at the edge (feature `axum`): an extractor that validates the
//! `Authorization` header, and RFC 9457 problems with the right `WWW-Authenticate` for
//! every refusal.

use std::fmt;

use axum::extract::{FromRef, FromRequestParts};
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use keel_observability::{ErrorCode, IntoProblem};

use crate::{AccessTokenClaims, RefreshError, StepUpChallenge, ValidationError, Validator};

/// The validated claims of the request's bearer token (RFC 6750 §2.1): an axum
/// extractor for any state the [`Validator`] can be taken from (`FromRef`). A missing,
/// malformed or refused token answers 401 (or 400 for a malformed header) with an
/// `application/problem+json` body and the `WWW-Authenticate` challenge RFC 6750 asks
/// for; [`require_scope`](Self::require_scope) answers 403 `insufficient_scope`.
/// Validators built [`from_remote`](Validator::from_remote) fetch the issuer's keys
/// again on an unknown `kid`, at a bounded rate.
///
/// ```
/// use axum::{routing::get, Router};
/// use keel_token_manager::{Bearer, BearerRejection, KeyRing, SigningKey, Algorithm, Validator};
///
/// async fn orders(token: Bearer) -> Result<String, BearerRejection> {
///     token.require_scope("orders:read")?;
///     Ok(format!("orders of {}", token.claims().sub))
/// }
///
/// let keys = KeyRing::new(SigningKey::generate("k", Algorithm::EdDSA).unwrap());
/// let validator = Validator::new(keys, "https://auth.example", "https://api.example");
/// let app: Router = Router::new().route("/orders", get(orders)).with_state(validator);
/// ```
#[derive(Clone, Debug)]
pub struct Bearer(AccessTokenClaims);

impl Bearer {
    /// The token's claims.
    #[must_use]
    pub fn claims(&self) -> &AccessTokenClaims {
        &self.0
    }

    /// The claims, owned.
    #[must_use]
    pub fn into_claims(self) -> AccessTokenClaims {
        self.0
    }

    /// Refuses the request (403, `insufficient_scope`, naming `scope`) unless the token
    /// has `scope`.
    ///
    /// # Errors
    /// [`BearerRejection::InsufficientScope`].
    pub fn require_scope(&self, scope: &str) -> Result<(), BearerRejection> {
        if self.0.has_scope(scope) {
            Ok(())
        } else {
            Err(BearerRejection::InsufficientScope {
                scope: scope.to_owned(),
            })
        }
    }
}

/// Why a request's bearer token was not taken. Answers as an RFC 9457 problem with the
/// RFC 6750 challenge; the token never appears in it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BearerRejection {
    /// No `Authorization: Bearer` header: 401 with a bare `Bearer` challenge.
    #[error("no bearer token")]
    Missing,
    /// The header is not `Bearer <token>` (another scheme, several headers, no token,
    /// bytes a token cannot hold): 400 `invalid_request`.
    #[error("the Authorization header is not a bearer token")]
    Malformed,
    /// The token was refused: 401 `invalid_token` with the reason.
    #[error("the bearer token was refused")]
    Invalid(#[source] ValidationError),
    /// The token lacks a scope the route needs: 403 `insufficient_scope`.
    #[error("the bearer token lacks the scope {scope:?}")]
    InsufficientScope {
        /// The scope needed.
        scope: String,
    },
}

impl IntoProblem for BearerRejection {
    fn error_code(&self) -> ErrorCode {
        match self {
            BearerRejection::Missing => ErrorCode::AUTH_UNAUTHENTICATED,
            BearerRejection::Malformed => ErrorCode::VAL_INVALID_REQUEST,
            BearerRejection::Invalid(e) => e.error_code(),
            BearerRejection::InsufficientScope { .. } => ErrorCode::AUTH_FORBIDDEN,
        }
    }

    fn public_detail(&self) -> Option<String> {
        match self {
            BearerRejection::Invalid(e) => e.public_detail(),
            BearerRejection::InsufficientScope { scope } => {
                Some(format!("This needs the scope {scope}."))
            }
            _ => None,
        }
    }

    fn www_authenticate(&self) -> Option<String> {
        Some(match self {
            BearerRejection::Missing => "Bearer".to_owned(),
            BearerRejection::Malformed => r#"Bearer error="invalid_request""#.to_owned(),
            BearerRejection::Invalid(e) => e.www_authenticate(),
            BearerRejection::InsufficientScope { scope } => format!(
                r#"Bearer error="insufficient_scope", scope="{}""#,
                quoted(scope)
            ),
        })
    }
}

impl IntoResponse for BearerRejection {
    fn into_response(self) -> Response {
        tracing::debug!(reason = %self, "bearer token refused");
        self.to_problem().into_response()
    }
}

/// Text safe inside a quoted header parameter: visible ASCII without `"` and `\`.
fn quoted(text: &str) -> String {
    text.chars()
        .filter(|c| c.is_ascii_graphic() && *c != '"' && *c != '\\' || *c == ' ')
        .take(128)
        .collect()
}

/// The token of an `Authorization` header: `Bearer` (any case), one space, a token68.
fn bearer_token(parts: &Parts) -> Result<&str, BearerRejection> {
    let mut values = parts
        .headers
        .get_all(axum::http::header::AUTHORIZATION)
        .iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return Err(
            if parts
                .headers
                .contains_key(axum::http::header::AUTHORIZATION)
            {
                BearerRejection::Malformed
            } else {
                BearerRejection::Missing
            },
        );
    };
    let value = value.to_str().map_err(|_| BearerRejection::Malformed)?;
    let (scheme, token) = value.split_once(' ').ok_or(BearerRejection::Malformed)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        // Another scheme (Basic...): not ours to read.
        return Err(BearerRejection::Missing);
    }
    let token68 = |c: char| c.is_ascii_alphanumeric() || "-._~+/=".contains(c);
    if token.is_empty() || !token.chars().all(token68) {
        return Err(BearerRejection::Malformed);
    }
    Ok(token)
}

impl<S> FromRequestParts<S> for Bearer
where
    Validator: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = BearerRejection;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let token = bearer_token(parts)?;
        let validator = Validator::from_ref(state);
        #[cfg(feature = "http")]
        let claims = validator.validate_fresh(token).await;
        #[cfg(not(feature = "http"))]
        let claims = validator.validate(token);
        claims.map(Bearer).map_err(BearerRejection::Invalid)
    }
}

impl IntoProblem for ValidationError {
    /// 401: `AUTH_TOKEN_EXPIRED` for an expired token (the client refreshes),
    /// `AUTH_UNAUTHENTICATED` otherwise.
    fn error_code(&self) -> ErrorCode {
        match self {
            ValidationError::Expired => ErrorCode::AUTH_TOKEN_EXPIRED,
            _ => ErrorCode::AUTH_UNAUTHENTICATED,
        }
    }

    fn www_authenticate(&self) -> Option<String> {
        Some(ValidationError::www_authenticate(self))
    }
}

impl IntoProblem for StepUpChallenge {
    /// 401 with RFC 9470's `insufficient_user_authentication` challenge.
    fn error_code(&self) -> ErrorCode {
        ErrorCode::AUTH_UNAUTHENTICATED
    }

    fn public_detail(&self) -> Option<String> {
        Some("A stronger or more recent sign-in is needed.".to_owned())
    }

    fn www_authenticate(&self) -> Option<String> {
        Some(StepUpChallenge::www_authenticate(self))
    }
}

impl IntoProblem for RefreshError {
    /// `invalid_grant` refusals are the caller's (400, `VAL_INVALID_REQUEST`, the OAuth
    /// error as detail); a store failure is ours (503, retry after a second).
    fn error_code(&self) -> ErrorCode {
        match self {
            RefreshError::Store(_) => ErrorCode::SYS_UNAVAILABLE,
            RefreshError::Seal(_) => ErrorCode::SYS_INTERNAL,
            _ => ErrorCode::VAL_INVALID_REQUEST,
        }
    }

    fn public_detail(&self) -> Option<String> {
        match self {
            RefreshError::Store(_) | RefreshError::Seal(_) => None,
            // These messages name no id or token: safe for the client.
            other => Some(other.to_string()),
        }
    }

    fn retry_after(&self) -> Option<u64> {
        matches!(self, RefreshError::Store(_)).then_some(1)
    }
}

impl fmt::Display for Bearer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bearer token of {}", self.0.sub)
    }
}
