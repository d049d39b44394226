//! The Entra ID v2 endpoints: discovery, keys, and the token endpoint's
//! client-credentials grant.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::extract::{Path, State as Shared};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use keel_token_manager::{AccessTokenIssuer, Grant};
use serde_json::json;

use super::{GRAPH_AUDIENCE, State, percent_decode as decode};

/// How long issued tokens live (Entra ID's default is 60–90 minutes).
const TOKEN_LIFETIME: Duration = Duration::from_secs(3_600);

pub(crate) fn routes() -> Router<Arc<State>> {
    Router::new()
        .route("/{tenant}/oauth2/v2.0/token", post(token))
        .route(
            "/{tenant}/v2.0/.well-known/openid-configuration",
            get(discovery),
        )
        .route("/{tenant}/discovery/v2.0/keys", get(keys))
}

async fn discovery(Shared(state): Shared<Arc<State>>, Path(tenant): Path<String>) -> Response {
    let Some(t) = state.tenant(&tenant) else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_tenant",
            90002,
            "Tenant not found.",
        );
    };
    let base = &state.base;
    let id = &t.seed.id;
    axum::Json(json!({
        "token_endpoint": format!("{base}/{id}/oauth2/v2.0/token"),
        "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
        "jwks_uri": format!("{base}/{id}/discovery/v2.0/keys"),
        "response_modes_supported": ["query", "fragment", "form_post"],
        "subject_types_supported": ["pairwise"],
        "id_token_signing_alg_values_supported": ["ES256"],
        "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
        "scopes_supported": ["openid", "profile", "email", "offline_access"],
        "issuer": format!("{base}/{id}/v2.0"),
        "request_uri_parameter_supported": false,
        "authorization_endpoint": format!("{base}/{id}/oauth2/v2.0/authorize"),
        "device_authorization_endpoint": format!("{base}/{id}/oauth2/v2.0/devicecode"),
        "end_session_endpoint": format!("{base}/{id}/oauth2/v2.0/logout"),
        "claims_supported": ["sub", "iss", "aud", "exp", "iat", "nbf", "tid", "roles"],
        "tenant_region_scope": "EU",
        "cloud_instance_name": "microsoftonline.com",
    }))
    .into_response()
}

async fn keys(Shared(state): Shared<Arc<State>>, Path(tenant): Path<String>) -> Response {
    if state.tenant(&tenant).is_none() {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_tenant",
            90002,
            "Tenant not found.",
        );
    }
    (
        [(header::CONTENT_TYPE, "application/json")],
        state.keys.jwks().to_json(),
    )
        .into_response()
}

async fn token(
    Shared(state): Shared<Arc<State>>,
    Path(tenant): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    state.token_requests.fetch_add(1, Ordering::Relaxed);
    let Some(t) = state.tenant(&tenant) else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            90002,
            "AADSTS90002: Tenant not found.",
        );
    };
    let form: HashMap<String, String> = match serde_urlencoded(&body) {
        Some(form) => form,
        None => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                900144,
                "AADSTS900144: The request body must be application/x-www-form-urlencoded.",
            );
        }
    };
    let field = |name: &str| form.get(name).map(String::as_str).filter(|v| !v.is_empty());
    match field("grant_type") {
        Some("client_credentials") => {}
        Some(_) => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                70003,
                "AADSTS70003: The app requested an unsupported grant type.",
            );
        }
        None => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                900144,
                "AADSTS900144: The request body must contain the following parameter: 'grant_type'.",
            );
        }
    }
    let Some(client) = field("client_id").and_then(|id| t.client(id)) else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            700016,
            "AADSTS700016: Application not found in the directory.",
        );
    };
    // Digests compared, so the time taken says nothing about the secret.
    let digest = |s: &str| ring::digest::digest(&ring::digest::SHA256, s.as_bytes());
    let secret_ok = field("client_secret")
        .is_some_and(|s| digest(s).as_ref() == digest(&client.secret).as_ref());
    if !secret_ok {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            7000215,
            "AADSTS7000215: Invalid client secret provided.",
        );
    }
    let scope = field("scope").unwrap_or_default();
    let own_default = format!("{}/.default", state.base);
    let graph_default = format!("{GRAPH_AUDIENCE}/.default");
    if scope != own_default && scope != graph_default {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            1002012,
            "AADSTS1002012: The provided value for scope is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier.",
        );
    }
    let issuer = AccessTokenIssuer::new(
        state.keys.clone(),
        format!("{}/{}/v2.0", state.base, t.seed.id),
        GRAPH_AUDIENCE,
    )
    .ttl(TOKEN_LIFETIME);
    let grant = Grant::new(&client.id, &client.id)
        .tenant(t.seed.id.to_ascii_lowercase())
        .roles(client.roles.iter().cloned());
    let Ok(issued) = issuer.issue(&grant) else {
        return oauth_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "temporarily_unavailable",
            0,
            "The token could not be signed.",
        );
    };
    let expires_in = TOKEN_LIFETIME.as_secs();
    (
        [
            (header::CACHE_CONTROL, "no-store"),
            (header::PRAGMA, "no-cache"),
        ],
        axum::Json(json!({
            "token_type": "Bearer",
            "expires_in": expires_in,
            "ext_expires_in": expires_in,
            "access_token": issued.token,
        })),
    )
        .into_response()
}

/// An `application/x-www-form-urlencoded` body, or `None` when it is not one.
fn serde_urlencoded(body: &[u8]) -> Option<HashMap<String, String>> {
    let text = std::str::from_utf8(body).ok()?;
    let mut form = HashMap::new();
    for pair in text.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        form.insert(decode(key)?, decode(value)?);
    }
    Some(form)
}

/// An OAuth error in Entra ID's shape.
fn oauth_error(status: StatusCode, error: &str, code: u32, description: &str) -> Response {
    (
        status,
        [(header::CACHE_CONTROL, "no-store")],
        axum::Json(json!({
            "error": error,
            "error_description": description,
            "error_codes": [code],
            "timestamp": humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            "trace_id": "00000000-0000-0000-0000-000000000000",
            "correlation_id": "00000000-0000-0000-0000-000000000000",
        })),
    )
        .into_response()
}
