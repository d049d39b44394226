//! The client side of keel-token-manager: a service getting app-only tokens with the
//! client credentials grant, through the token cache.
//!
//! It starts a small local stand-in for Entra ID's token endpoint (the Graph emulator's
//! will replace it), then shows: the first token (one request), a cache hit (no
//! request), the proactive refresh (the caller gets the still-valid token at once while
//! one background request fetches the next), and a claims challenge answered past the
//! cache.
//!
//! ```text
//! cargo run -p keel-examples --example token_client            # prints each step
//! cargo run -p keel-examples --example token_client -- --smoke # the same, checked
//! ```

// An executable's report goes to stdout.
#![allow(clippy::print_stdout)]

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::{Form, Path, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use keel_token_manager::client::{
    Authority, CachingProvider, ClientSecretCredential, RefreshPolicy, TokenProvider, TokenRequest,
    claims_challenge,
};

/// Token lifetime at the stand-in endpoint: short, so the refresh shows within seconds.
const LIFETIME_SECS: u64 = 4;

/// A stand-in for `https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token`.
async fn token_endpoint(
    State(requests): State<Arc<AtomicU64>>,
    Path(tenant): Path<String>,
    Form(form): Form<HashMap<String, String>>,
) -> impl IntoResponse {
    let n = requests.fetch_add(1, Ordering::SeqCst) + 1;
    let json = [(header::CONTENT_TYPE, "application/json")];
    if form.get("client_secret").map(String::as_str) != Some("example-secret") {
        let body = r#"{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret provided."}"#;
        return (StatusCode::UNAUTHORIZED, json, body.to_owned());
    }
    let claims = if form.contains_key("claims") {
        "+claims"
    } else {
        ""
    };
    let body = serde_json::json!({
        "token_type": "Bearer",
        "expires_in": LIFETIME_SECS,
        "access_token": format!("token-{n}-for-{tenant}{claims}"),
    });
    (StatusCode::OK, json, body.to_string())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let smoke = std::env::args().any(|a| a == "--smoke");
    let requests = Arc::new(AtomicU64::new(0));
    let app = axum::Router::new()
        .route(
            "/{tenant}/oauth2/v2.0/token",
            axum::routing::post(token_endpoint),
        )
        .with_state(requests.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });

    // What a service writes: a credential, and the cache in front of it.
    let credential = ClientSecretCredential::new(
        Authority::Custom(base.clone()),
        "contoso.onmicrosoft.com",
        "example-app",
        "example-secret",
    )?;
    let tokens = CachingProvider::with_policy(credential, RefreshPolicy::default());
    let graph = TokenRequest::new(["https://graph.microsoft.com/.default"]);

    let mut failures = 0;
    let mut check = |ok: bool, what: &str| {
        println!("{} {what}", if ok { "ok  " } else { "FAIL" });
        if !ok {
            failures += 1;
        }
    };

    let first = tokens.token(&graph).await?;
    println!("first token: {:?} (token endpoint at {base})", first);
    check(
        requests.load(Ordering::SeqCst) == 1,
        "the first call asked the endpoint",
    );

    let again = tokens.token(&graph).await?;
    check(
        again.secret() == first.secret() && requests.load(Ordering::SeqCst) == 1,
        "the second call was a cache hit",
    );

    // Short tokens are refreshed at half their life: past it, the caller still gets the
    // current token at once, and one background request fetches the next.
    tokio::time::sleep(Duration::from_millis(LIFETIME_SECS * 1000 / 2 + 300)).await;
    let during = tokens.token(&graph).await?;
    check(
        during.secret() == first.secret(),
        "past the refresh point the call returned the valid token without waiting",
    );
    let mut refreshed = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if tokens.token(&graph).await?.secret() != first.secret() {
            refreshed = true;
            break;
        }
    }
    check(
        refreshed && requests.load(Ordering::SeqCst) == 2,
        "one background request brought the next token",
    );

    // A protected API answers 401 with a claims challenge (Conditional Access, CAE).
    let header_value = r#"Bearer realm="", error="insufficient_claims", claims="eyJhY2Nlc3NfdG9rZW4iOnsibmJmIjp7ImVzc2VudGlhbCI6dHJ1ZSwgInZhbHVlIjoiMTYwNDEwNjY1MSJ9fX0=""#;
    let claims = claims_challenge(header_value).ok_or("not a claims challenge")?;
    let challenged = tokens.token(&graph.clone().claims(claims)).await?;
    check(
        challenged.secret().ends_with("+claims") && requests.load(Ordering::SeqCst) == 3,
        "the claims challenge went past the cache to the endpoint",
    );
    check(
        tokens.token(&graph).await?.secret() == challenged.secret(),
        "and its token replaced the cached one",
    );

    println!("{:?}", tokens.stats());
    if failures > 0 {
        return Err(format!("{failures} check(s) failed").into());
    }
    if smoke {
        println!("smoke: ok");
    }
    Ok(())
}
