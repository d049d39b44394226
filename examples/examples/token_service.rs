//! An axum service that issues and checks its own tokens with keel-token-manager: login,
//! refresh (rotated on every use, reuse detected), logout, a protected route, a route
//! that needs step-up authentication, and the JWKS endpoint.
//!
//! Security events (a refresh token reused, a forged token refused) are audit events on
//! the `keel_token_manager::audit` target: the service installs keel-observability's
//! JSON logs so they are seen. Error bodies carry fixed descriptions, never internal ids
//! or store messages.
//!
//! ```text
//! cargo run -p keel-examples --example token_service            # on 127.0.0.1:3002
//! cargo run -p keel-examples --example token_service -- --smoke # scripted self-check
//! curl -s -XPOST localhost:3002/login -d '{"username":"ada","password":"lovelace"}' -H 'content-type: application/json'
//! ```

// An executable's report goes to stdout.
#![allow(clippy::print_stdout)]

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use keel_token_manager::{
    AccessTokenClaims, AccessTokenIssuer, Algorithm, Grant, KeyRing, MemoryStore, RefreshConfig,
    RefreshError, RefreshTokens, SealingKeys, SigningKey, StepUp, Validator,
};
use serde_json::{Value, json};

const ISSUER: &str = "http://127.0.0.1:3002";
const AUDIENCE: &str = "orders-api";

struct Auth {
    keys: KeyRing,
    access: AccessTokenIssuer,
    validator: Validator,
    refresh: RefreshTokens<MemoryStore>,
}

fn auth() -> Result<Auth, Box<dyn std::error::Error>> {
    let keys = KeyRing::new(SigningKey::generate("2026-11", Algorithm::EdDSA)?);
    Ok(Auth {
        access: AccessTokenIssuer::new(keys.clone(), ISSUER, AUDIENCE),
        validator: Validator::new(keys.clone(), ISSUER, AUDIENCE),
        refresh: RefreshTokens::new(
            MemoryStore::new(),
            SealingKeys::generate(1)?,
            RefreshConfig::default().grace_period(Duration::from_secs(2)),
        )?,
        keys,
    })
}

fn oauth_error(status: StatusCode, code: &str, description: &str) -> Response {
    (
        status,
        Json(json!({"error": code, "error_description": description})),
    )
        .into_response()
}

async fn tokens_for(auth: &Auth, subject: &str, refresh: String) -> Response {
    match auth.access.issue(
        &Grant::new(subject, "demo-web")
            .scope("orders:read")
            .acr("pwd"),
    ) {
        Ok(access) => Json(json!({
            "token_type": "Bearer",
            "access_token": access.token,
            "expires_in": 900,
            "refresh_token": refresh,
        }))
        .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "signing an access token failed");
            oauth_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "the token service is unavailable; try again",
            )
        }
    }
}

/// The OAuth error for a refused refresh token: a fixed description per kind (the
/// error's own text stays in the logs), so no id or store message reaches the client.
fn refresh_refused(e: &RefreshError) -> Response {
    let (status, description) = match e {
        RefreshError::Store(_) | RefreshError::Seal(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "the token service is unavailable; try again",
        ),
        RefreshError::ReuseDetected { .. } => (
            StatusCode::BAD_REQUEST,
            "the refresh token was already used; the session is revoked, sign in again",
        ),
        RefreshError::Expired => (
            StatusCode::BAD_REQUEST,
            "the session has expired; sign in again",
        ),
        RefreshError::Revoked => (
            StatusCode::BAD_REQUEST,
            "the session was revoked; sign in again",
        ),
        _ => (StatusCode::BAD_REQUEST, "unknown refresh token"),
    };
    if status.is_server_error() {
        tracing::error!(error = %e, "refresh failed");
    }
    oauth_error(status, e.oauth_error(), description)
}

async fn login(State(auth): State<Arc<Auth>>, Json(body): Json<Value>) -> Response {
    // A demo user; a real service checks its user store.
    if body["username"] != "ada" || body["password"] != "lovelace" {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_grant",
            "wrong username or password",
        );
    }
    match auth.refresh.issue("ada", "demo-web").await {
        Ok(refresh) => tokens_for(&auth, "ada", refresh.token).await,
        Err(e) => refresh_refused(&e),
    }
}

async fn refresh(State(auth): State<Arc<Auth>>, Json(body): Json<Value>) -> Response {
    let token = body["refresh_token"].as_str().unwrap_or_default();
    match auth.refresh.rotate(token).await {
        Ok(next) => tokens_for(&auth, &next.subject, next.token).await,
        Err(e) => refresh_refused(&e),
    }
}

async fn logout(State(auth): State<Arc<Auth>>, Json(body): Json<Value>) -> StatusCode {
    let token = body["refresh_token"].as_str().unwrap_or_default();
    // RFC 7009: 200 whatever the token was; the whole session the token belongs to ends.
    match auth.refresh.revoke(token).await {
        Ok(()) => StatusCode::OK,
        Err(e) => {
            tracing::error!(error = %e, "logout failed");
            StatusCode::SERVICE_UNAVAILABLE
        }
    }
}

/// The validated claims, or the 401 to send (its `WWW-Authenticate` value).
fn bearer(auth: &Auth, headers: &HeaderMap) -> Result<AccessTokenClaims, String> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        // None, or several: which credentials count would be a guess (RFC 6750 §3.1).
        let error = if headers.contains_key(header::AUTHORIZATION) {
            "Bearer error=\"invalid_request\", error_description=\"more than one Authorization header\""
        } else {
            "Bearer"
        };
        return Err(error.to_owned());
    };
    // The scheme is case-insensitive (RFC 9110 §11.1); one space, then the token.
    let token = value
        .to_str()
        .ok()
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .unwrap_or_default();
    auth.validator
        .validate(token)
        .map_err(|e| e.www_authenticate())
}

fn unauthorized(www_authenticate: String) -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, www_authenticate)],
    )
        .into_response()
}

async fn orders(State(auth): State<Arc<Auth>>, headers: HeaderMap) -> Response {
    match bearer(&auth, &headers) {
        Ok(claims) if claims.has_scope("orders:read") => {
            Json(json!({"owner": claims.sub, "orders": [1, 2, 3]})).into_response()
        }
        Ok(_) => StatusCode::FORBIDDEN.into_response(),
        Err(challenge) => unauthorized(challenge),
    }
}

async fn admin(State(auth): State<Arc<Auth>>, headers: HeaderMap) -> Response {
    let claims = match bearer(&auth, &headers) {
        Ok(claims) => claims,
        Err(challenge) => return unauthorized(challenge),
    };
    match StepUp::acr(["mfa"]).check(&claims) {
        Ok(()) => Json(json!({"admin": claims.sub})).into_response(),
        Err(challenge) => unauthorized(challenge.www_authenticate()),
    }
}

async fn jwks(State(auth): State<Arc<Auth>>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        auth.keys.jwks().to_json(),
    )
        .into_response()
}

fn app(auth: Arc<Auth>) -> Router {
    Router::new()
        .route("/login", post(login))
        .route("/refresh", post(refresh))
        .route("/logout", post(logout))
        .route("/orders", get(orders))
        .route("/admin", get(admin))
        .route("/.well-known/jwks.json", get(jwks))
        .with_state(auth)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let smoke = std::env::args().any(|a| a == "--smoke");
    // Logs (security events included) as JSON lines; in smoke mode to stderr, and kept so
    // the run can check that reuse was reported.
    let captured = Captured::default();
    let mut logs = keel_observability::LogConfig::builder().lossy(false);
    if let Ok(filter) = std::env::var("RUST_LOG") {
        logs = logs.filter(filter);
    }
    if smoke {
        logs = logs.writer(captured.clone());
    }
    let guard = keel_observability::init(logs.build()?)?;
    let addr: SocketAddr = if smoke {
        "127.0.0.1:0".parse()?
    } else {
        "127.0.0.1:3002".parse()?
    };
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = app(Arc::new(auth()?));
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    if !smoke {
        println!(
            "token service on http://{bound} (POST /login, /refresh, /logout; GET /orders, /admin, /.well-known/jwks.json)"
        );
        let _ = server.await;
        return Ok(());
    }

    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    let base = format!("http://{bound}");
    let post = |path: &str, body: Value| client.post(format!("{base}{path}")).json(&body).send();
    let mut failures = 0;
    let mut check = |ok: bool, what: &str| {
        println!("{} {what}", if ok { "ok  " } else { "FAIL" });
        failures += u32::from(!ok);
    };

    let wrong = post("/login", json!({"username": "ada", "password": "nope"})).await?;
    check(wrong.status() == 401, "a wrong password is refused");
    let login: Value = post("/login", json!({"username": "ada", "password": "lovelace"}))
        .await?
        .json()
        .await?;
    let access = login["access_token"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let r0 = login["refresh_token"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    check(
        !access.is_empty() && r0.len() == 43,
        "login returns an access and a refresh token",
    );

    let orders = client
        .get(format!("{base}/orders"))
        .bearer_auth(&access)
        .send()
        .await?;
    check(orders.status() == 200, "the access token opens /orders");
    let anonymous = client.get(format!("{base}/orders")).send().await?;
    check(
        anonymous.status() == 401 && anonymous.headers()[header::WWW_AUTHENTICATE] == "Bearer",
        "no token: 401 with a bare Bearer challenge (RFC 6750 §3.1)",
    );
    let forged = client
        .get(format!("{base}/orders"))
        .bearer_auth("eyJhbGciOiJub25lIn0.e30.")
        .send()
        .await?;
    check(
        forged.status() == 401
            && forged.headers()[header::WWW_AUTHENTICATE]
                .to_str()?
                .contains("invalid_token"),
        "a forged token: 401 with WWW-Authenticate invalid_token",
    );
    let admin = client
        .get(format!("{base}/admin"))
        .bearer_auth(&access)
        .send()
        .await?;
    check(
        admin.status() == 401
            && admin.headers()[header::WWW_AUTHENTICATE]
                .to_str()?
                .contains("insufficient_user_authentication"),
        "/admin asks for step-up (RFC 9470) when the login was password-only",
    );
    let jwks: Value = client
        .get(format!("{base}/.well-known/jwks.json"))
        .send()
        .await?
        .json()
        .await?;
    check(
        jwks["keys"][0]["kty"] == "OKP",
        "the JWKS publishes the signing key",
    );

    let lowercase = client
        .get(format!("{base}/orders"))
        .header(header::AUTHORIZATION, format!("bearer {access}"))
        .send()
        .await?;
    check(
        lowercase.status() == 200,
        "the Bearer scheme is case-insensitive",
    );
    let doubled = client
        .get(format!("{base}/orders"))
        .header(header::AUTHORIZATION, format!("Bearer {access}"))
        .header(header::AUTHORIZATION, format!("Bearer {access}"))
        .send()
        .await?;
    check(
        doubled.status() == 401
            && doubled.headers()[header::WWW_AUTHENTICATE]
                .to_str()?
                .contains("invalid_request"),
        "two Authorization headers are refused",
    );

    let first: Value = post("/refresh", json!({"refresh_token": r0}))
        .await?
        .json()
        .await?;
    let r1 = first["refresh_token"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let retry: Value = post("/refresh", json!({"refresh_token": r0}))
        .await?
        .json()
        .await?;
    check(
        !r1.is_empty() && r1 != r0 && retry["refresh_token"] == r1.as_str(),
        "refresh rotates; a retry within the grace period gets the same successor",
    );
    let second: Value = post("/refresh", json!({"refresh_token": r1}))
        .await?
        .json()
        .await?;
    let r2 = second["refresh_token"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let reuse = post("/refresh", json!({"refresh_token": r0})).await?;
    let reuse_status = reuse.status();
    let reuse_body: Value = reuse.json().await?;
    check(
        reuse_status == 400
            && reuse_body["error"] == "invalid_grant"
            && reuse_body["error_description"]
                == "the refresh token was already used; the session is revoked, sign in again",
        "reusing an old refresh token is refused (invalid_grant, no internal id in the body)",
    );
    let after = post("/refresh", json!({"refresh_token": r2})).await?;
    check(
        after.status() == 400,
        "...and it revoked the whole session, current token included",
    );

    let fresh = login_refresh_token(&post).await?;
    check(
        post("/logout", json!({"refresh_token": fresh}))
            .await?
            .status()
            == 200,
        "logout",
    );
    check(
        post("/refresh", json!({"refresh_token": fresh}))
            .await?
            .status()
            == 400,
        "a logged-out refresh token no longer works",
    );

    // The review's attack: a thief rotates a stolen token, then logs out with the old one
    // hoping to cut the link between them. Logout ends the whole session.
    let stolen = login_refresh_token(&post).await?;
    let thiefs: Value = post("/refresh", json!({"refresh_token": stolen}))
        .await?
        .json()
        .await?;
    let thiefs = thiefs["refresh_token"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    post("/logout", json!({"refresh_token": stolen})).await?;
    check(
        !thiefs.is_empty()
            && post("/refresh", json!({"refresh_token": thiefs}))
                .await?
                .status()
                == 400,
        "logout with a rotated token ends the session: the thief's successor is dead",
    );

    server.abort();
    drop(guard); // flushes the log writer
    let log = captured.text();
    check(
        log.contains("refresh_token_reuse_detected") && log.contains("\"security\":true"),
        "reuse was reported as a security event in the logs",
    );
    if failures > 0 {
        return Err(format!("{failures} smoke check(s) failed").into());
    }
    println!("smoke: ok");
    Ok(())
}

/// Logs in as the demo user; the refresh token.
async fn login_refresh_token<F, Fut>(post: &F) -> Result<String, Box<dyn std::error::Error>>
where
    F: Fn(&str, Value) -> Fut,
    Fut: Future<Output = reqwest::Result<reqwest::Response>>,
{
    let login: Value = post("/login", json!({"username": "ada", "password": "lovelace"}))
        .await?
        .json()
        .await?;
    Ok(login["refresh_token"]
        .as_str()
        .unwrap_or_default()
        .to_owned())
}

/// A log writer that keeps what it writes and passes it on to stderr.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    fn text(&self) -> String {
        let bytes = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend_from_slice(buf);
        std::io::stderr().write_all(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}
