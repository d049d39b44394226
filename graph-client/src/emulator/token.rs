//! The Entra ID v2 endpoints: discovery, keys, and the token endpoint: the
//! client-credentials grant and the jwt-bearer (on-behalf-of) grant, with a client
//! secret or a client assertion (a certificate credential's PS256 or RS256 JWT).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::extract::{Path, State as Shared};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use keel_token_manager::{AccessTokenIssuer, Grant, Validator};
use serde_json::json;

use super::directory::{Client, Tenant};
use super::{GRAPH_AUDIENCE, State, percent_decode as decode};

/// The jwt-bearer grant (on-behalf-of).
const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// A client assertion's type.
const CLIENT_ASSERTION: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

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
    // The multi-tenant document: its issuer is a template, its keys every tenant's.
    if tenant.eq_ignore_ascii_case("common") || tenant.eq_ignore_ascii_case("organizations") {
        let base = &state.base;
        return axum::Json(json!({
            "jwks_uri": format!("{base}/{tenant}/discovery/v2.0/keys"),
            "issuer": format!("{base}/{{tenantid}}/v2.0"),
            "id_token_signing_alg_values_supported": ["ES256"],
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
            "subject_types_supported": ["pairwise"],
            "token_endpoint": format!("{base}/{tenant}/oauth2/v2.0/token"),
        }))
        .into_response();
    }
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
    let multi =
        tenant.eq_ignore_ascii_case("common") || tenant.eq_ignore_ascii_case("organizations");
    if !multi && state.tenant(&tenant).is_none() {
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
    headers: axum::http::HeaderMap,
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
    let mut form: HashMap<String, String> = match serde_urlencoded(&body) {
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
    // `client_secret_basic`: the client id and secret in `Authorization: Basic`.
    if let Some(basic) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
    {
        use base64::Engine as _;
        let pair = base64::engine::general_purpose::STANDARD
            .decode(basic.trim())
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|text| {
                let (id, secret) = text.split_once(':')?;
                Some((decode(id)?, decode(secret)?))
            });
        let Some((id, secret)) = pair else {
            return oauth_error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                7000215,
                "AADSTS7000215: Invalid client secret provided.",
            );
        };
        let conflicting = form.get("client_id").is_some_and(|given| *given != id)
            || form.contains_key("client_secret")
            || form.contains_key("client_assertion");
        if conflicting {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                900144,
                "AADSTS900144: A request may use only one client authentication method.",
            );
        }
        form.insert("client_id".into(), id);
        form.insert("client_secret".into(), secret);
    }
    let field = |name: &str| form.get(name).map(String::as_str).filter(|v| !v.is_empty());
    let on_behalf_of = match field("grant_type") {
        Some("client_credentials") => false,
        Some(JWT_BEARER) => true,
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
    };
    let Some(client) = field("client_id").and_then(|id| t.client(id)) else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            700016,
            "AADSTS700016: Application not found in the directory.",
        );
    };
    // The client proves itself with its secret or with a client assertion, not both.
    if form.contains_key("client_secret") && form.contains_key("client_assertion") {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            900144,
            "AADSTS900144: A request may use only one client authentication method.",
        );
    }
    match (
        field("client_secret"),
        field("client_assertion_type"),
        field("client_assertion"),
    ) {
        (Some(secret), _, _) => {
            // Digests compared, so the time taken says nothing about the secret.
            let digest = |s: &str| ring::digest::digest(&ring::digest::SHA256, s.as_bytes());
            let matches = client
                .secret
                .as_deref()
                .is_some_and(|known| digest(secret).as_ref() == digest(known).as_ref());
            if !matches {
                return oauth_error(
                    StatusCode::UNAUTHORIZED,
                    "invalid_client",
                    7000215,
                    "AADSTS7000215: Invalid client secret provided.",
                );
            }
        }
        (None, Some(CLIENT_ASSERTION), Some(assertion)) => {
            let endpoint = format!("{}/{tenant}/oauth2/v2.0/token", state.base);
            if let Err(description) = client_assertion(&state, client, &endpoint, assertion) {
                return oauth_error(
                    StatusCode::UNAUTHORIZED,
                    "invalid_client",
                    700027,
                    description,
                );
            }
        }
        _ => {
            return oauth_error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                7000218,
                "AADSTS7000218: The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
            );
        }
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
    let grant = if on_behalf_of {
        if field("requested_token_use") != Some("on_behalf_of") {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                900144,
                "AADSTS900144: The request body must contain the following parameter: 'requested_token_use'.",
            );
        }
        match user_assertion(&state, t, client, field("assertion").unwrap_or_default()) {
            // A delegated token: the user's, for this app, with the app's consented
            // delegated permissions as scopes.
            Ok(user) => Grant::new(user, &client.id)
                .tenant(t.seed.id.to_ascii_lowercase())
                .scope(client.delegated.join(" ")),
            Err(description) => {
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", 50013, description);
            }
        }
    } else {
        Grant::new(&client.id, &client.id)
            .tenant(t.seed.id.to_ascii_lowercase())
            .roles(client.roles.iter().cloned())
    };
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

/// Checks a client assertion: a JWT signed PS256 or RS256 with the client's registered
/// key, issuer and subject the client id, audience this token endpoint, within its
/// `nbf` and `exp`, with a `jti` never seen before.
fn client_assertion(
    state: &State,
    client: &Client,
    endpoint: &str,
    assertion: &str,
) -> Result<(), &'static str> {
    let Some(pem) = client.public_key_pem.as_deref() else {
        return Err("AADSTS700027: The client has no certificate registered.");
    };
    let key = jsonwebtoken::DecodingKey::from_rsa_pem(pem.as_bytes())
        .map_err(|_| "AADSTS700027: The client's registered key does not parse.")?;
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::PS256);
    validation.algorithms = vec![
        jsonwebtoken::Algorithm::PS256,
        jsonwebtoken::Algorithm::RS256,
    ];
    validation.set_audience(&[endpoint]);
    validation.set_issuer(&[client.id.as_str()]);
    validation.set_required_spec_claims(&["exp", "aud", "iss", "sub"]);
    validation.validate_nbf = true;
    let claims = jsonwebtoken::decode::<serde_json::Value>(assertion, &key, &validation)
        .map_err(|_| "AADSTS700027: Client assertion failed signature validation.")?
        .claims;
    if claims.get("sub").and_then(serde_json::Value::as_str) != Some(client.id.as_str()) {
        return Err("AADSTS700023: Client assertion audience or subject is invalid.");
    }
    let (Some(jti), Some(exp)) = (
        claims
            .get("jti")
            .and_then(serde_json::Value::as_str)
            .filter(|j| !j.is_empty() && j.len() <= 256),
        claims.get("exp").and_then(serde_json::Value::as_u64),
    ) else {
        return Err("AADSTS700027: Client assertion contains no jti.");
    };
    state
        .assertions
        .first_use(&format!("{}/{jti}", client.id), exp)
}

/// Checks the user's token an on-behalf-of request brings: issued by this tenant, for
/// this app (`api://{client id}` or the client id), not expired, naming one of the
/// tenant's users. Returns the user's id.
fn user_assertion(
    state: &State,
    tenant: &Tenant,
    client: &Client,
    assertion: &str,
) -> Result<String, &'static str> {
    let issuer = format!("{}/{{tenantid}}/v2.0", state.base);
    let claims = [format!("api://{}", client.id), client.id.clone()]
        .into_iter()
        .find_map(|audience| {
            Validator::new(state.keys.clone(), issuer.clone(), audience)
                .tenants([tenant.seed.id.to_ascii_lowercase()])
                .accept_types(&["JWT"])
                .validate(assertion)
                .ok()
        })
        .ok_or("AADSTS50013: Assertion failed signature validation.")?;
    tenant
        .user(&claims.sub)
        .and_then(|u| {
            u.get("id")
                .and_then(serde_json::Value::as_str)
                .map(str::to_owned)
        })
        .ok_or("AADSTS50013: The assertion's user is not in the tenant.")
}

/// A user's token for `client` (`api://{client id}`), as if the user had signed in to
/// that app: what a middle-tier service receives and trades on-behalf-of.
pub(crate) fn user_token(
    state: &State,
    tenant: &Tenant,
    user: &str,
    client: &str,
) -> Option<String> {
    let id = tenant.user(user)?.get("id")?.as_str()?.to_owned();
    tenant.client(client)?;
    AccessTokenIssuer::new(
        state.keys.clone(),
        format!("{}/{}/v2.0", state.base, tenant.seed.id),
        format!("api://{client}"),
    )
    .ttl(TOKEN_LIFETIME)
    .issue(
        &Grant::new(id, client)
            .tenant(tenant.seed.id.to_ascii_lowercase())
            .scope("access_as_user"),
    )
    .ok()
    .map(|issued| issued.token)
}

/// The client assertions used so far (by client and `jti`), each until its `exp`: an
/// assertion is good for one token request.
#[derive(Debug, Default)]
pub(crate) struct SeenAssertions {
    seen: std::sync::Mutex<HashMap<String, u64>>,
}

impl SeenAssertions {
    /// The most remembered at once; past it, expired ones are forgotten first, then
    /// requests are refused rather than memory grown.
    const MAX: usize = 100_000;

    fn first_use(&self, key: &str, exp: u64) -> Result<(), &'static str> {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if seen.len() >= Self::MAX {
            seen.retain(|_, until| *until >= now);
            if seen.len() >= Self::MAX {
                return Err("AADSTS700027: Too many client assertions in use; retry later.");
            }
        }
        if seen.contains_key(key) {
            return Err("AADSTS700027: The client assertion was already used.");
        }
        seen.insert(key.to_owned(), exp);
        Ok(())
    }
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
