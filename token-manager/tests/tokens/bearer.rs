//! The axum bearer extractor and the problems it answers with (issue 13): RFC 6750
//! challenges, RFC 9457 bodies, the token never echoed.

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use axum::routing::get;
use http_body_util::BodyExt as _;
use keel_observability::IntoProblem as _;
use keel_token_manager::{
    AccessTokenIssuer, Algorithm, Bearer, BearerRejection, Grant, KeyRing, SigningKey, StepUp,
    Validator,
};
use tower::ServiceExt as _;

async fn orders(token: Bearer) -> Result<String, BearerRejection> {
    token.require_scope("orders:read")?;
    Ok(format!("orders of {}", token.claims().sub))
}

fn app() -> (Router, AccessTokenIssuer) {
    let keys = KeyRing::new(SigningKey::generate("k", Algorithm::EdDSA).unwrap());
    let issuer = AccessTokenIssuer::new(keys.clone(), crate::ISSUER, crate::AUDIENCE);
    let validator = Validator::new(keys, crate::ISSUER, crate::AUDIENCE);
    let app = Router::new()
        .route("/orders", get(orders))
        .with_state(validator);
    (app, issuer)
}

struct Answer {
    status: StatusCode,
    challenge: Option<String>,
    content_type: Option<String>,
    body: String,
}

async fn call(app: &Router, authorization: &[&str]) -> Answer {
    let mut request = Request::get("/orders");
    for value in authorization {
        request = request.header(header::AUTHORIZATION, *value);
    }
    let response = app
        .clone()
        .oneshot(request.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let header = |name| {
        response
            .headers()
            .get(name)
            .map(|v: &axum::http::HeaderValue| v.to_str().unwrap().to_owned())
    };
    Answer {
        status: response.status(),
        challenge: header(header::WWW_AUTHENTICATE),
        content_type: header(header::CONTENT_TYPE),
        body: String::from_utf8(
            response
                .into_body()
                .collect()
                .await
                .unwrap()
                .to_bytes()
                .to_vec(),
        )
        .unwrap(),
    }
}

#[tokio::test]
async fn a_valid_token_with_its_scope_passes() {
    let (app, issuer) = app();
    let token = issuer
        .issue(&Grant::new("user-42", "web").scope("orders:read"))
        .unwrap()
        .token;
    let answer = call(&app, &[&format!("Bearer {token}")]).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(answer.body, "orders of user-42");
    // The scheme is case-insensitive (RFC 9110 §11.1).
    let answer = call(&app, &[&format!("bearer {token}")]).await;
    assert_eq!(answer.status, StatusCode::OK);
}

#[tokio::test]
async fn refusals_answer_with_the_rfc_6750_challenge_and_a_problem() {
    let (app, issuer) = app();
    // No token (or another scheme): 401 with a bare challenge.
    for authorization in [&[][..], &["Basic dXNlcjpwYXNz"][..]] {
        let answer = call(&app, authorization).await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
        assert_eq!(answer.challenge.as_deref(), Some("Bearer"));
        assert_eq!(
            answer.content_type.as_deref(),
            Some("application/problem+json")
        );
        assert!(
            answer.body.contains("AUTH_UNAUTHENTICATED"),
            "{}",
            answer.body
        );
    }
    // A malformed header: 400 invalid_request.
    for authorization in [
        &["Bearer"][..],
        &["Bearer "][..],
        &["Bearer a b"][..],
        &["Bearer a\"b"][..],
        &["Bearer x", "Bearer y"][..],
    ] {
        let answer = call(&app, authorization).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{authorization:?}");
        assert_eq!(
            answer.challenge.as_deref(),
            Some(r#"Bearer error="invalid_request""#)
        );
    }
    // A token that does not validate: 401 invalid_token, and never echoed back.
    let forged = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJhZG1pbiJ9.";
    let answer = call(&app, &[&format!("Bearer {forged}")]).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    assert!(
        answer
            .challenge
            .as_deref()
            .unwrap()
            .starts_with(r#"Bearer error="invalid_token""#)
    );
    assert!(!answer.body.contains(forged));
    // The scope missing: 403 insufficient_scope naming it.
    let token = issuer
        .issue(&Grant::new("user-42", "web").scope("profile"))
        .unwrap()
        .token;
    let answer = call(&app, &[&format!("Bearer {token}")]).await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN);
    assert_eq!(
        answer.challenge.as_deref(),
        Some(r#"Bearer error="insufficient_scope", scope="orders:read""#)
    );
    assert!(answer.body.contains("AUTH_FORBIDDEN"));
    assert!(!answer.body.contains(&token));
}

#[tokio::test]
async fn an_expired_token_says_so() {
    let clock = keel_resilience::clock::ManualClock::starting_now();
    let keys =
        KeyRing::new(SigningKey::generate("k", Algorithm::EdDSA).unwrap()).clock(clock.clone());
    let issuer = AccessTokenIssuer::new(keys.clone(), crate::ISSUER, crate::AUDIENCE)
        .ttl(std::time::Duration::from_secs(300));
    let validator =
        Validator::new(keys, crate::ISSUER, crate::AUDIENCE).leeway(std::time::Duration::ZERO);
    let app = Router::new()
        .route("/orders", get(orders))
        .with_state(validator);
    let token = issuer
        .issue(&Grant::new("u", "web").scope("orders:read"))
        .unwrap()
        .token;
    clock.advance(std::time::Duration::from_secs(299));
    let answer = call(&app, &[&format!("Bearer {token}")]).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    clock.advance(std::time::Duration::from_secs(2));
    let answer = call(&app, &[&format!("Bearer {token}")]).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    assert!(
        answer.body.contains("AUTH_TOKEN_EXPIRED"),
        "{}",
        answer.body
    );
}

#[test]
fn step_up_and_refresh_errors_become_problems() {
    let challenge = StepUp::acr(["urn:example:mfa"])
        .check(&keel_token_manager::AccessTokenClaims {
            iss: crate::ISSUER.into(),
            sub: "u".into(),
            aud: keel_token_manager::Audience::One(crate::AUDIENCE.into()),
            exp: crate::now() + 60,
            iat: crate::now(),
            nbf: None,
            jti: "j".into(),
            client_id: "c".into(),
            scope: None,
            acr: Some("urn:example:pwd".into()),
            amr: vec![],
            auth_time: None,
            tid: None,
            roles: Vec::new(),
        })
        .unwrap_err();
    let response = challenge.to_problem().to_response();
    assert_eq!(response.status(), 401);
    assert!(
        response.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("insufficient_user_authentication")
    );
    let reuse = keel_token_manager::RefreshError::Revoked
        .to_problem()
        .to_response();
    assert_eq!(reuse.status(), 400);
    let store =
        keel_token_manager::RefreshError::Store(keel_token_manager::store::StoreError::timeout(
            std::io::Error::from(std::io::ErrorKind::TimedOut),
        ))
        .to_problem()
        .to_response();
    assert_eq!(store.status(), 503);
    assert_eq!(store.headers()["retry-after"], "1");
}
