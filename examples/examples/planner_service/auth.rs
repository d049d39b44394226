//! The service's own sessions (keel-token-manager's server side): login, refresh with
//! rotation (a reused refresh token revokes its family), logout, and the JWKS that
//! lets anyone check the access tokens.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use keel_token_manager::{
    AccessTokenIssuer, Grant, KeyRing, RefreshConfig, RefreshError, RefreshTokenStore,
    RefreshTokens, SealingKeys, SigningKey, Validator,
};
use serde_json::{Value, json};

pub(crate) const ISSUER: &str = "urn:keel:planner-service";
pub(crate) const AUDIENCE: &str = "planner-api";
/// The demo users (on the emulator, or with `KEEL_DEMO_LOGIN=1`): name, password, and
/// the scopes their sessions get. A real deployment puts its own user store here.
const DEMO_USERS: &[(&str, &str, &str)] = &[
    ("ada", "lovelace", "tasks:read tasks:write"),
    ("grace", "hopper", "tasks:read tasks:write tasks:admin"),
];

/// The scopes of `subject`'s sessions (none for an unknown subject).
fn scopes_of(subject: &str) -> &'static str {
    DEMO_USERS
        .iter()
        .find(|(name, _, _)| *name == subject)
        .map_or("", |(_, _, scopes)| scopes)
}

/// Keys, issuer, validator and the refresh-token engine.
pub(crate) struct Auth {
    pub(crate) keys: KeyRing,
    pub(crate) access: AccessTokenIssuer,
    pub(crate) validator: Validator,
    pub(crate) sessions: RefreshTokens<Arc<dyn RefreshTokenStore>>,
    /// Whether the demo users may log in.
    pub(crate) demo_logins: bool,
}

impl Auth {
    /// Sessions in `store`, signed with `key` (Ed25519).
    pub(crate) fn new(
        key: SigningKey,
        sealing: SealingKeys,
        store: Arc<dyn RefreshTokenStore>,
        demo_logins: bool,
    ) -> Result<Auth, Box<dyn std::error::Error>> {
        let keys = KeyRing::new(key);
        Ok(Auth {
            access: AccessTokenIssuer::new(keys.clone(), ISSUER, AUDIENCE),
            validator: Validator::new(keys.clone(), ISSUER, AUDIENCE),
            sessions: RefreshTokens::new(
                store,
                sealing,
                RefreshConfig::default().grace_period(Duration::from_secs(2)),
            )?,
            keys,
            demo_logins,
        })
    }
}

fn oauth_error(status: StatusCode, code: &str, description: &str) -> Response {
    (
        status,
        Json(json!({"error": code, "error_description": description})),
    )
        .into_response()
}

fn tokens_for(auth: &Auth, subject: &str, refresh: &str) -> Response {
    let scopes = scopes_of(subject);
    match auth
        .access
        .issue(&Grant::new(subject, "planner-web").scope(scopes))
    {
        Ok(access) => Json(json!({
            "token_type": "Bearer",
            "access_token": access.token,
            "expires_in": 900,
            "refresh_token": refresh,
            "scope": scopes,
        }))
        .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "signing an access token failed");
            oauth_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "try again",
            )
        }
    }
}

/// A fixed description per refusal: no id or store message reaches the client.
fn refused(e: &RefreshError) -> Response {
    let (status, description) = match e {
        RefreshError::Store(_) | RefreshError::Seal(_) => {
            tracing::error!(error = %e, "the session store failed");
            (StatusCode::SERVICE_UNAVAILABLE, "try again")
        }
        RefreshError::ReuseDetected { .. } => (
            StatusCode::BAD_REQUEST,
            "the refresh token was already used; the session is revoked, sign in again",
        ),
        RefreshError::Expired | RefreshError::Revoked => (
            StatusCode::BAD_REQUEST,
            "the session has ended; sign in again",
        ),
        _ => (StatusCode::BAD_REQUEST, "unknown refresh token"),
    };
    oauth_error(status, e.oauth_error(), description)
}

/// `POST /login {"username", "password"}`: the demo users `ada` / `lovelace` (read and
/// write) and `grace` / `hopper` (and admin), when demo logins are on.
pub(crate) async fn login(State(auth): State<Arc<Auth>>, Json(body): Json<Value>) -> Response {
    let user = DEMO_USERS
        .iter()
        .find(|(name, password, _)| body["username"] == *name && body["password"] == *password);
    let Some((name, _, _)) = user.filter(|_| auth.demo_logins) else {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_grant",
            "wrong username or password",
        );
    };
    match auth.sessions.issue(name, "planner-web").await {
        Ok(refresh) => tokens_for(&auth, name, &refresh.token),
        Err(e) => refused(&e),
    }
}

/// `POST /refresh {"refresh_token"}`: a new pair; the old refresh token is spent.
pub(crate) async fn refresh(State(auth): State<Arc<Auth>>, Json(body): Json<Value>) -> Response {
    let token = body["refresh_token"].as_str().unwrap_or_default();
    match auth.sessions.rotate(token).await {
        Ok(next) => tokens_for(&auth, &next.subject, &next.token),
        Err(e) => refused(&e),
    }
}

/// `POST /logout {"refresh_token"}`: the session ends (RFC 7009: 200 whatever it was).
pub(crate) async fn logout(State(auth): State<Arc<Auth>>, Json(body): Json<Value>) -> StatusCode {
    let token = body["refresh_token"].as_str().unwrap_or_default();
    match auth.sessions.revoke(token).await {
        Ok(()) => StatusCode::OK,
        Err(e) => {
            tracing::error!(error = %e, "logout failed");
            StatusCode::SERVICE_UNAVAILABLE
        }
    }
}

/// `GET /.well-known/jwks.json`.
pub(crate) async fn jwks(State(auth): State<Arc<Auth>>) -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        auth.keys.jwks().to_json(),
    )
        .into_response()
}
