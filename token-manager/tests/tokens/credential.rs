//! The client-secret credential against a local fake of Entra ID's token endpoint
//! (`/{tenant}/oauth2/v2.0/token`, form-encoded, as Microsoft documents it).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use keel_resilience::{Classify, ErrorClass};
use keel_token_manager::client::{
    Authority, AuthorizationCodeClient, CachingProvider, ClientAuth, ClientCertificate,
    ClientCertificateCredential, ClientSecretCredential, DeviceCodeClient,
    ManagedIdentityCredential, ManagedIdentitySource, OnBehalfOfClient, ProviderChain, TokenError,
    TokenProvider, TokenRequest, WorkloadIdentityCredential, environment_credential,
};

#[derive(Default)]
struct Fake {
    requests: AtomicU64,
    assertion: std::sync::Mutex<Option<String>>,
    assertions: std::sync::Mutex<Vec<(jsonwebtoken::Header, serde_json::Value)>>,
    /// Codes issued by the (simulated) authorize step: code -> (challenge, redirect).
    codes: std::sync::Mutex<HashMap<String, (String, String)>>,
    /// Polls seen per device code.
    polls: std::sync::Mutex<HashMap<String, u32>>,
    /// Refresh tokens still valid (each is rotated on use).
    refresh_tokens: std::sync::Mutex<Vec<String>>,
    last_form: std::sync::Mutex<HashMap<String, String>>,
}

async fn token(
    State(fake): State<Arc<Fake>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> impl IntoResponse {
    fake.requests.fetch_add(1, Ordering::SeqCst);
    *fake.last_form.lock().unwrap() = form.clone();
    let json = [(header::CONTENT_TYPE, "application/json; charset=utf-8")];
    assert_eq!(
        headers.get(header::CONTENT_TYPE).unwrap(),
        "application/x-www-form-urlencoded"
    );
    match tenant.as_str() {
        "busy" => {
            return (
                StatusCode::TOO_MANY_REQUESTS,
                [(header::RETRY_AFTER, "7")],
                r#"{"error":"temporarily_unavailable","error_description":"AADSTS50196: slow down"}"#,
            )
                .into_response();
        }
        "busy-until" => {
            let until = std::time::SystemTime::now() + Duration::from_secs(90);
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::RETRY_AFTER, httpdate::fmt_http_date(until))],
                r#"{"error":"temporarily_unavailable"}"#,
            )
                .into_response();
        }
        "proxy" => return (StatusCode::BAD_GATEWAY, "<html>Bad Gateway</html>").into_response(),
        "huge" => return (StatusCode::OK, json, " ".repeat(200_000)).into_response(),
        _ => {}
    }
    match form.get("grant_type").map(String::as_str) {
        Some("authorization_code") => return redeem(&fake, &form),
        Some("refresh_token") => return refresh(&fake, &form),
        Some("urn:ietf:params:oauth:grant-type:device_code") => return device_poll(&fake, &form),
        Some("urn:ietf:params:oauth:grant-type:jwt-bearer") => {
            // On-behalf-of: the middle tier authenticates, and exchanges the user's token.
            let client_ok = form.get("client_secret").map(String::as_str) == Some("s3cret")
                || form
                    .get("client_assertion")
                    .is_some_and(|a| verify_assertion(&fake, a));
            if !client_ok
                || form.get("requested_token_use").map(String::as_str) != Some("on_behalf_of")
            {
                return invalid_grant();
            }
            let body = serde_json::json!({
                "token_type": "Bearer",
                "expires_in": 3599,
                "access_token": format!("obo|{}|{}", form["assertion"], form["scope"]),
            });
            return (
                [(header::CONTENT_TYPE, "application/json")],
                body.to_string(),
            )
                .into_response();
        }
        _ => {}
    }
    let authenticated = match form.get("client_assertion") {
        // A certificate's signed assertion: checked as Entra ID checks it.
        Some(assertion) if assertion.starts_with("eyJ") => verify_assertion(&fake, assertion),
        // Workload identity: the federated token the test wrote last.
        Some(assertion) => {
            form.get("client_assertion_type").map(String::as_str)
                == Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
                && fake.assertion.lock().unwrap().as_deref() == Some(assertion.as_str())
        }
        None => form.get("client_secret").map(String::as_str) == Some("s3cret"),
    };
    if form.get("grant_type").map(String::as_str) != Some("client_credentials")
        || form.get("client_id").map(String::as_str) != Some("app-1")
        || !authenticated
    {
        return (
            StatusCode::UNAUTHORIZED,
            json,
            r#"{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret provided.","error_codes":[7000215],"trace_id":"tr","correlation_id":"co"}"#,
        )
            .into_response();
    }
    let scope = form.get("scope").cloned().unwrap_or_default();
    let claims = form.contains_key("claims");
    let body = serde_json::json!({
        "token_type": "Bearer",
        "expires_in": 3599,
        "ext_expires_in": 3599,
        "access_token": format!("{tenant}|{scope}|{claims}"),
    });
    (StatusCode::OK, json, body.to_string()).into_response()
}

/// A certificate's signed assertion, checked as Entra ID checks it (and recorded).
fn verify_assertion(fake: &Fake, assertion: &str) -> bool {
    let key =
        jsonwebtoken::DecodingKey::from_rsa_pem(crate::fixture("rsa-2048.pub.pem").as_bytes())
            .unwrap();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::PS256);
    validation.validate_aud = false;
    match jsonwebtoken::decode::<serde_json::Value>(assertion, &key, &validation) {
        Ok(data) => {
            let ok = data.claims["iss"] == "app-1" && data.claims["sub"] == "app-1";
            fake.assertions
                .lock()
                .unwrap()
                .push((data.header, data.claims));
            ok
        }
        Err(_) => false,
    }
}

fn invalid_grant() -> axum::response::Response {
    (
        StatusCode::BAD_REQUEST,
        [(header::CONTENT_TYPE, "application/json")],
        r#"{"error":"invalid_grant","error_description":"AADSTS70008: The provided authorization code or refresh token has expired or was used."}"#,
    )
        .into_response()
}

fn user_tokens(fake: &Fake) -> axum::response::Response {
    let n = fake.requests.load(Ordering::SeqCst);
    let refresh = format!("rt-{n}");
    fake.refresh_tokens.lock().unwrap().push(refresh.clone());
    let body = serde_json::json!({
        "token_type": "Bearer",
        "scope": "User.Read profile openid email",
        "expires_in": 4557,
        "access_token": format!("user-access-{n}"),
        "refresh_token": refresh,
        "id_token": "eyJ0eXAiOiJKV1QiLCJhbGciOiJub25lIn0.eyJzdWIiOiJ1In0.",
    });
    (
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// The code grant: the code is single-use, and the verifier must hash to the challenge
/// the authorize step saw (RFC 7636 §4.6).
fn redeem(fake: &Fake, form: &HashMap<String, String>) -> axum::response::Response {
    use base64::Engine as _;
    let Some((challenge, redirect)) = fake.codes.lock().unwrap().remove(&form["code"]) else {
        return invalid_grant();
    };
    let verifier = form.get("code_verifier").cloned().unwrap_or_default();
    let computed = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(ring::digest::digest(
        &ring::digest::SHA256,
        verifier.as_bytes(),
    ));
    if computed != challenge || form.get("redirect_uri") != Some(&redirect) {
        return invalid_grant();
    }
    user_tokens(fake)
}

/// The refresh grant: each refresh token is rotated on use.
fn refresh(fake: &Fake, form: &HashMap<String, String>) -> axum::response::Response {
    let mut valid = fake.refresh_tokens.lock().unwrap();
    let Some(i) = valid
        .iter()
        .position(|t| Some(t) == form.get("refresh_token"))
    else {
        return invalid_grant();
    };
    valid.remove(i);
    drop(valid);
    user_tokens(fake)
}

async fn device_code(Form(form): Form<HashMap<String, String>>) -> impl IntoResponse {
    let device_code = if form["scope"].contains("decline") {
        "dc-declined"
    } else {
        "dc-ok"
    };
    let body = serde_json::json!({
        "user_code": "ABCD-EFGH",
        "device_code": device_code,
        "verification_uri": "https://microsoft.com/devicelogin",
        "expires_in": 900,
        "interval": 1,
        "message": "To sign in, use a web browser to open the page https://microsoft.com/devicelogin and enter the code ABCD-EFGH to authenticate.",
    });
    (
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
}

/// Two polls pending, then signed in; or declined.
fn device_poll(fake: &Fake, form: &HashMap<String, String>) -> axum::response::Response {
    let code = form["device_code"].clone();
    let n = {
        let mut polls = fake.polls.lock().unwrap();
        let n = polls.entry(code.clone()).or_insert(0);
        *n += 1;
        *n
    };
    let error = match (code.as_str(), n) {
        ("dc-declined", _) => "authorization_declined",
        ("dc-ok", 1 | 2) => "authorization_pending",
        ("dc-ok", _) => return user_tokens(fake),
        _ => "bad_verification_code",
    };
    (
        StatusCode::BAD_REQUEST,
        [(header::CONTENT_TYPE, "application/json")],
        format!(r#"{{"error":"{error}","error_description":"AADSTS70016: pending"}}"#),
    )
        .into_response()
}

/// IMDS as Microsoft documents it: `Metadata: true`, API version 2018-02-01, the
/// numbers as strings.
async fn imds(
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> impl IntoResponse {
    if headers.get("Metadata").and_then(|v| v.to_str().ok()) != Some("true") {
        return (StatusCode::BAD_REQUEST, r#"{"error":"invalid_request","error_description":"Required metadata header not specified"}"#).into_response();
    }
    assert_eq!(query["api-version"], "2018-02-01");
    let body = serde_json::json!({
        "access_token": format!("imds|{}|{}", query["resource"], query.get("client_id").map_or("system", String::as_str)),
        "expires_in": "3599",
        "expires_on": "1764345600",
        "not_before": "1764341700",
        "resource": query["resource"],
        "token_type": "Bearer",
    });
    (
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// App Service's endpoint (API version 2019-08-01): the identity header, and only
/// `expires_on`.
async fn app_service(
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> impl IntoResponse {
    if headers
        .get("X-IDENTITY-HEADER")
        .and_then(|v| v.to_str().ok())
        != Some("identity-secret")
    {
        return (
            StatusCode::UNAUTHORIZED,
            r#"{"statusCode":401,"message":"Unauthorized"}"#,
        )
            .into_response();
    }
    assert_eq!(query["api-version"], "2019-08-01");
    let expires_on = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let body = serde_json::json!({
        "access_token": format!("appservice|{}", query["resource"]),
        "expires_on": expires_on.to_string(),
        "resource": query["resource"],
        "token_type": "Bearer",
        "client_id": "mi-client",
    });
    (
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

async fn fake() -> (String, Arc<Fake>) {
    let state = Arc::new(Fake::default());
    let app = axum::Router::new()
        .route("/{tenant}/oauth2/v2.0/token", axum::routing::post(token))
        .route("/metadata/identity/oauth2/token", axum::routing::get(imds))
        .route(
            "/{tenant}/oauth2/v2.0/devicecode",
            axum::routing::post(device_code),
        )
        .route("/msi/token", axum::routing::get(app_service))
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (base, state)
}

fn credential(base: &str, secret: &str) -> ClientSecretCredential {
    ClientSecretCredential::new(
        Authority::Custom(base.into()),
        "contoso.onmicrosoft.com",
        "app-1",
        secret,
    )
    .unwrap()
}

#[tokio::test]
async fn client_credentials_with_a_secret_get_app_only_tokens_per_tenant() {
    let (base, fake) = fake().await;
    let tokens = CachingProvider::new(credential(&base, "s3cret"));
    let graph = TokenRequest::new(["https://graph.microsoft.com/.default"]);
    let token = tokens.token(&graph).await.unwrap();
    assert_eq!(
        token.secret(),
        "contoso.onmicrosoft.com|https://graph.microsoft.com/.default|false"
    );
    assert!(token.expires_in() > Duration::from_secs(3500));
    let form = fake.last_form.lock().unwrap().clone();
    assert_eq!(form["grant_type"], "client_credentials");
    assert_eq!(form["scope"], "https://graph.microsoft.com/.default");
    // Cached; another tenant (a multi-tenant app) is its own token.
    tokens.token(&graph).await.unwrap();
    assert_eq!(fake.requests.load(Ordering::SeqCst), 1);
    let other = tokens
        .token(&graph.clone().tenant("fabrikam.com"))
        .await
        .unwrap();
    assert!(other.secret().starts_with("fabrikam.com|"));
    // A claims challenge goes to the endpoint with its claims.
    let challenged = tokens
        .token(
            &graph
                .clone()
                .claims(r#"{"access_token":{"xms_cc":{"values":["cp1"]}}}"#),
        )
        .await
        .unwrap();
    assert!(challenged.secret().ends_with("|true"));
    assert_eq!(fake.requests.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn the_cp1_capability_is_sent_as_claims_merged_with_a_challenge() {
    let (base, fake) = fake().await;
    let tokens = CachingProvider::new(credential(&base, "s3cret"));
    let cae =
        TokenRequest::new(["https://graph.microsoft.com/.default"]).client_capabilities(["cp1"]);
    tokens.token(&cae).await.unwrap();
    let form = fake.last_form.lock().unwrap().clone();
    let claims: serde_json::Value = serde_json::from_str(&form["claims"]).unwrap();
    assert_eq!(
        claims,
        serde_json::json!({"access_token": {"xms_cc": {"values": ["cp1"]}}})
    );
    // Cached like any request (the capability alone is no challenge).
    tokens.token(&cae).await.unwrap();
    assert_eq!(fake.requests.load(Ordering::SeqCst), 1);
    // A challenge: its claims and the capability, in one object.
    let challenge = r#"{"access_token":{"nbf":{"essential":true,"value":"1700000000"}}}"#;
    tokens.token(&cae.clone().claims(challenge)).await.unwrap();
    let form = fake.last_form.lock().unwrap().clone();
    let claims: serde_json::Value = serde_json::from_str(&form["claims"]).unwrap();
    assert_eq!(
        claims,
        serde_json::json!({"access_token": {
            "nbf": {"essential": true, "value": "1700000000"},
            "xms_cc": {"values": ["cp1"]},
        }})
    );
    // A challenge that is not JSON cannot be merged: refused before any request.
    let error = tokens.token(&cae.claims("not json")).await.unwrap_err();
    assert_eq!(error.class(), ErrorClass::Permanent);
    assert_eq!(fake.requests.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn endpoint_errors_are_typed_and_the_secret_never_shows() {
    let (base, _fake) = fake().await;
    let graph = TokenRequest::new(["https://graph.microsoft.com/.default"]);
    let wrong = credential(&base, "wrong-secret-value");
    let error = wrong.token(&graph).await.unwrap_err();
    assert_eq!(error.class(), ErrorClass::Permanent);
    assert_eq!(error.oauth().unwrap().error, "invalid_client");
    assert_eq!(error.oauth().unwrap().trace_id.as_deref(), Some("tr"));
    let shown = format!("{error} {error:?} {wrong:?}");
    assert!(!shown.contains("wrong-secret-value"), "{shown}");

    let right = credential(&base, "s3cret");
    let busy = right
        .token(&graph.clone().tenant("busy"))
        .await
        .unwrap_err();
    assert_eq!(
        busy.class(),
        ErrorClass::Throttled {
            retry_after: Some(Duration::from_secs(7))
        }
    );
    // Retry-After as an HTTP date (RFC 9110 allows both forms).
    let until = right
        .token(&graph.clone().tenant("busy-until"))
        .await
        .unwrap_err();
    match until.class() {
        ErrorClass::Throttled {
            retry_after: Some(delay),
        } => assert!(
            delay > Duration::from_secs(80) && delay <= Duration::from_secs(90),
            "{delay:?}"
        ),
        other => panic!("{other:?}"),
    }
    let proxy = right
        .token(&graph.clone().tenant("proxy"))
        .await
        .unwrap_err();
    assert_eq!(proxy.class(), ErrorClass::Transient);
    let huge = right
        .token(&graph.clone().tenant("huge"))
        .await
        .unwrap_err();
    assert!(
        std::error::Error::source(&huge)
            .unwrap()
            .to_string()
            .contains("larger than")
    );
    // A tenant that would change the URL's path is refused before any request.
    let hostile = right
        .token(&graph.clone().tenant("../../evil"))
        .await
        .unwrap_err();
    assert_eq!(hostile.class(), ErrorClass::Permanent);
    assert!(matches!(
        ClientSecretCredential::new(Authority::AzurePublic, "a/b", "app", "s"),
        Err(TokenError::Unavailable { .. })
    ));
    // Nobody listening: transient.
    let nowhere = credential("http://127.0.0.1:9", "s3cret");
    assert_eq!(
        nowhere.token(&graph).await.unwrap_err().class(),
        ErrorClass::Transient
    );
}

#[tokio::test]
async fn workload_identity_reads_the_rotated_federated_token_file() {
    let (base, fake) = fake().await;
    let dir = std::env::temp_dir().join(format!("keel-wi-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("azure-identity-token");
    std::fs::write(&file, "federated-1\n").unwrap();
    *fake.assertion.lock().unwrap() = Some("federated-1".into());
    let credential = WorkloadIdentityCredential::new(
        Authority::Custom(base.clone()),
        "contoso.onmicrosoft.com",
        "app-1",
        &file,
    )
    .unwrap();
    let graph = TokenRequest::new(["https://graph.microsoft.com/.default"]);
    assert!(credential.token(&graph).await.is_ok());
    // The platform rotates the file: the next request sends the new token.
    std::fs::write(&file, "federated-2").unwrap();
    *fake.assertion.lock().unwrap() = Some("federated-2".into());
    assert!(credential.token(&graph).await.is_ok());
    // A missing file is a transient failure (the platform may be writing it).
    std::fs::remove_file(&file).unwrap();
    assert_eq!(
        credential.token(&graph).await.unwrap_err().class(),
        ErrorClass::Transient
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn the_environment_chain_picks_the_configured_credential() {
    let (base, _fake) = fake().await;
    let env = |vars: &'static [(&'static str, &'static str)], base: String| {
        move |name: &str| {
            if name == "AZURE_AUTHORITY_HOST" {
                return Some(base.clone());
            }
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        }
    };
    let graph = TokenRequest::new(["https://graph.microsoft.com/.default"]);
    let with_secret = environment_credential(env(
        &[
            ("AZURE_TENANT_ID", "contoso.onmicrosoft.com"),
            ("AZURE_CLIENT_ID", "app-1"),
            ("AZURE_CLIENT_SECRET", "s3cret"),
        ],
        base.clone(),
    ))
    .unwrap();
    assert!(
        with_secret
            .token(&graph)
            .await
            .unwrap()
            .secret()
            .starts_with("contoso.onmicrosoft.com|")
    );
    let Err(missing) = environment_credential(env(&[("AZURE_TENANT_ID", "t")], base.clone()))
    else {
        panic!("a credential without AZURE_CLIENT_ID")
    };
    assert!(missing.to_string().contains("AZURE_CLIENT_ID"), "{missing}");
    // In a chain, a missing environment passes to the next provider.
    let fallback = keel_token_manager::client::from_fn(|_: &TokenRequest| async {
        Ok(keel_token_manager::client::AccessToken::new(
            "next",
            Duration::from_secs(60),
        ))
    });
    let chain = match environment_credential(env(&[], base)) {
        Ok(credential) => ProviderChain::new().then(credential),
        Err(unavailable) => ProviderChain::new().then(keel_token_manager::client::from_fn(
            move |_: &TokenRequest| {
                let reason = unavailable.to_string();
                async move { Err(TokenError::unavailable("environment", reason)) }
            },
        )),
    }
    .then(fallback);
    assert_eq!(chain.token(&graph).await.unwrap().secret(), "next");
}

#[tokio::test]
async fn managed_identity_on_imds_and_app_service_endpoints() {
    let (base, _fake) = fake().await;
    let graph = TokenRequest::new(["https://graph.microsoft.com/.default"]);
    let imds = ManagedIdentityCredential::new(
        ManagedIdentitySource::Imds {
            endpoint: format!("{base}/metadata/identity/oauth2/token"),
        },
        None,
    )
    .unwrap();
    let token = imds.token(&graph).await.unwrap();
    assert_eq!(token.secret(), "imds|https://graph.microsoft.com|system");
    assert!(token.expires_in() > Duration::from_secs(3500));
    let user_assigned = ManagedIdentityCredential::new(
        ManagedIdentitySource::Imds {
            endpoint: format!("{base}/metadata/identity/oauth2/token"),
        },
        Some("mi-client-id".into()),
    )
    .unwrap();
    assert!(
        user_assigned
            .token(&graph)
            .await
            .unwrap()
            .secret()
            .ends_with("|mi-client-id")
    );

    let vars = |name: &str| match name {
        "IDENTITY_ENDPOINT" => Some(format!("{base}/msi/token")),
        "IDENTITY_HEADER" => Some("identity-secret".to_owned()),
        _ => None,
    };
    let source = ManagedIdentityCredential::source_from(vars);
    assert!(matches!(source, ManagedIdentitySource::AppService { .. }));
    let app_service = ManagedIdentityCredential::new(source, None).unwrap();
    let token = app_service.token(&graph).await.unwrap();
    assert_eq!(token.secret(), "appservice|https://graph.microsoft.com");
    let left = token.expires_in();
    assert!(
        left > Duration::from_secs(3500) && left <= Duration::from_secs(3600),
        "{left:?}"
    );
    // Without the platform's variables: IMDS.
    assert_eq!(
        ManagedIdentityCredential::source_from(|_: &str| None),
        ManagedIdentitySource::Imds {
            endpoint: ManagedIdentityCredential::IMDS_ENDPOINT.into()
        }
    );
    // One resource at a time.
    let two = TokenRequest::new([
        "https://graph.microsoft.com/.default",
        "https://vault.azure.net/.default",
    ]);
    assert_eq!(
        imds.token(&two).await.unwrap_err().class(),
        ErrorClass::Permanent
    );
    // A wrong identity header is refused, and the header never shows.
    let wrong = ManagedIdentityCredential::new(
        ManagedIdentitySource::AppService {
            endpoint: format!("{base}/msi/token"),
            header: "guess".into(),
        },
        None,
    )
    .unwrap();
    let error = wrong.token(&graph).await.unwrap_err();
    assert_eq!(error.class(), ErrorClass::Permanent);
    assert!(!format!("{error} {error:?} {wrong:?}").contains("guess"));
}

#[tokio::test]
async fn client_credentials_with_a_certificate_send_a_fresh_signed_assertion() {
    let (base, fake) = fake().await;
    let pem = crate::fixture("rsa-2048.crt.pem") + &crate::fixture("rsa-2048.pem");
    let certificate = ClientCertificate::from_pem(&pem).unwrap();
    let credential = ClientCertificateCredential::new(
        Authority::Custom(base.clone()),
        "contoso.onmicrosoft.com",
        "app-1",
        certificate.clone(),
    )
    .unwrap();
    let graph = TokenRequest::new(["https://graph.microsoft.com/.default"]);
    credential.token(&graph).await.unwrap();
    credential.token(&graph).await.unwrap();
    let assertions = fake.assertions.lock().unwrap().clone();
    assert_eq!(assertions.len(), 2);
    let (header, claims) = &assertions[0];
    assert_eq!(header.alg, jsonwebtoken::Algorithm::PS256);
    assert_eq!(
        header.x5t_s256.as_deref(),
        Some(certificate.thumbprint_sha256())
    );
    assert_eq!(
        claims["aud"],
        format!("{base}/contoso.onmicrosoft.com/oauth2/v2.0/token")
    );
    let lifetime = claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap();
    assert!(lifetime <= 600, "short-lived: {lifetime} s");
    assert_ne!(
        claims["jti"], assertions[1].1["jti"],
        "a fresh jti each time"
    );
    // The thumbprint is the certificate's: SHA-256 of its DER, as openssl computes it.
    let der = std::process::Command::new("openssl")
        .args([
            "x509",
            "-in",
            &format!("{}/rsa-2048.crt.pem", crate::fixture_dir()),
            "-outform",
            "DER",
        ])
        .output()
        .unwrap()
        .stdout;
    use base64::Engine as _;
    let expected = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(ring::digest::digest(&ring::digest::SHA256, &der));
    assert_eq!(certificate.thumbprint_sha256(), expected);
    // Another key with this certificate's thumbprint is refused by the endpoint.
    let wrong = crate::fixture("rsa-2048.crt.pem") + &wrong_rsa_key();
    let impostor = ClientCertificateCredential::new(
        Authority::Custom(base),
        "contoso.onmicrosoft.com",
        "app-1",
        ClientCertificate::from_pem(&wrong).unwrap(),
    )
    .unwrap();
    assert_eq!(
        impostor
            .token(&graph)
            .await
            .unwrap_err()
            .oauth()
            .unwrap()
            .error,
        "invalid_client"
    );
    // Not a bundle: refused up front.
    assert!(ClientCertificate::from_pem(&crate::fixture("rsa-2048.pem")).is_err());
    assert!(ClientCertificate::from_pem(&crate::fixture("rsa-2048.crt.pem")).is_err());
}

/// A second RSA key, made for this test.
fn wrong_rsa_key() -> String {
    let out = std::process::Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
        ])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
async fn authorization_code_with_pkce_then_rotating_refresh_tokens() {
    let (base, fake) = fake().await;
    let redirect = "http://localhost:8400/callback";
    let client = AuthorizationCodeClient::new(
        Authority::Custom(base.clone()),
        "organizations",
        "app-1",
        redirect,
        None,
    )
    .unwrap();
    let pending = client
        .start(["openid", "offline_access", "User.Read"])
        .unwrap();
    assert!(
        pending
            .url
            .starts_with(&format!("{base}/organizations/oauth2/v2.0/authorize?"))
    );
    // The authorize step, as the provider sees the URL.
    let query: HashMap<String, String> = pending
        .url
        .split_once('?')
        .unwrap()
        .1
        .split('&')
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap();
            let v = v.replace('+', " ");
            let v = percent_decode(&v);
            (k.to_owned(), v)
        })
        .collect();
    assert_eq!(query["response_type"], "code");
    assert_eq!(query["code_challenge_method"], "S256");
    assert_eq!(query["redirect_uri"], redirect);
    assert_eq!(query["scope"], "openid offline_access User.Read");
    assert_eq!(query["state"].len(), 43, "256 bits of state");
    fake.codes.lock().unwrap().insert(
        "code-1".into(),
        (query["code_challenge"].clone(), redirect.into()),
    );
    let state = query["state"].clone();

    // A redirect with another state is refused without a request.
    let second = client.start(["User.Read"]).unwrap();
    let before = fake.requests.load(Ordering::SeqCst);
    let forged = client.redeem(second, "code-1", &state).await.unwrap_err();
    assert_eq!(forged.class(), ErrorClass::Permanent);
    assert_eq!(fake.requests.load(Ordering::SeqCst), before);

    let grant = client.redeem(pending, "code-1", &state).await.unwrap();
    assert!(grant.access.secret().starts_with("user-access-"));
    assert!(grant.id_token().is_some());
    let first_refresh = grant.refresh_token().unwrap().to_owned();
    assert!(
        !format!("{grant:?}").contains(&first_refresh),
        "refresh token redacted"
    );

    // Refresh: a new access token and a rotated refresh token; the old one is spent.
    let refreshed = client.refresh(&first_refresh, ["User.Read"]).await.unwrap();
    assert_ne!(refreshed.refresh_token().unwrap(), first_refresh);
    let spent = client
        .refresh(&first_refresh, ["User.Read"])
        .await
        .unwrap_err();
    assert_eq!(spent.oauth().unwrap().error, "invalid_grant");
    assert_eq!(spent.class(), ErrorClass::Permanent);
    // A code is good once.
    let pending = client.start(["User.Read"]).unwrap();
    assert!(client.redeem(pending, "code-1", "x").await.is_err());
    // Redirect URIs must be https or loopback.
    assert!(
        AuthorizationCodeClient::new(
            Authority::AzurePublic,
            "common",
            "app",
            "http://evil.example/cb",
            None
        )
        .is_err()
    );
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() + 1 {
            out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

#[tokio::test]
async fn the_device_code_flow_polls_until_the_user_signs_in_or_declines() {
    let (base, fake) = fake().await;
    let client = DeviceCodeClient::new(Authority::Custom(base), "organizations", "app-1").unwrap();
    let code = client.start(["User.Read", "offline_access"]).await.unwrap();
    assert_eq!(code.user_code, "ABCD-EFGH");
    assert!(code.message.as_deref().unwrap().contains("ABCD-EFGH"));
    let started = std::time::Instant::now();
    let grant = client.wait(&code).await.unwrap();
    assert!(grant.access.secret().starts_with("user-access-"));
    assert_eq!(
        fake.polls.lock().unwrap()["dc-ok"],
        3,
        "polled until signed in"
    );
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "at the provider's interval"
    );
    let declined = client.start(["decline"]).await.unwrap();
    let error = client.wait(&declined).await.unwrap_err();
    assert_eq!(error.oauth().unwrap().error, "authorization_declined");
    assert_eq!(error.class(), ErrorClass::Permanent);
}

#[tokio::test]
async fn on_behalf_of_exchanges_the_users_token_with_a_secret_or_a_certificate() {
    let (base, fake) = fake().await;
    let graph = TokenRequest::new(["https://graph.microsoft.com/.default"]);
    let with_secret = OnBehalfOfClient::new(
        Authority::Custom(base.clone()),
        "contoso.onmicrosoft.com",
        "app-1",
        ClientAuth::Secret("s3cret".into()),
    )
    .unwrap();
    let user = with_secret.for_user("incoming-user-token");
    let tokens = CachingProvider::new(user.clone());
    assert_eq!(
        tokens.token(&graph).await.unwrap().secret(),
        "obo|incoming-user-token|https://graph.microsoft.com/.default"
    );
    tokens.token(&graph).await.unwrap();
    assert_eq!(
        fake.requests.load(Ordering::SeqCst),
        1,
        "cached for this user"
    );
    assert!(!format!("{user:?}").contains("incoming-user-token"));
    let pem = crate::fixture("rsa-2048.crt.pem") + &crate::fixture("rsa-2048.pem");
    let with_certificate = OnBehalfOfClient::new(
        Authority::Custom(base),
        "contoso.onmicrosoft.com",
        "app-1",
        ClientAuth::Certificate(ClientCertificate::from_pem(&pem).unwrap()),
    )
    .unwrap();
    let token = with_certificate
        .for_user("other-user")
        .token(&graph)
        .await
        .unwrap();
    assert!(token.secret().starts_with("obo|other-user|"));
    assert_eq!(
        fake.assertions.lock().unwrap().len(),
        1,
        "a signed assertion was sent"
    );
}

#[tokio::test]
async fn an_issuer_key_rotation_is_picked_up_on_the_first_unknown_kid() {
    use keel_token_manager::client::RemoteJwks;
    use keel_token_manager::{AccessTokenIssuer, Algorithm, Grant, KeyRing, SigningKey, Validator};
    let ring = KeyRing::new(SigningKey::generate("2026-10", Algorithm::ES256).unwrap());
    let published = Arc::new(std::sync::Mutex::new(
        serde_json::to_string(&ring.jwks()).unwrap(),
    ));
    let app = axum::Router::new()
        .route(
            "/keys",
            axum::routing::get(
                |State(jwks): State<Arc<std::sync::Mutex<String>>>| async move {
                    (
                        [(header::CONTENT_TYPE, "application/json")],
                        jwks.lock().unwrap().clone(),
                    )
                },
            ),
        )
        .with_state(published.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/keys", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let jwks = RemoteJwks::from_uri(&url)
        .await
        .unwrap()
        .min_refresh_interval(Duration::ZERO);
    let validator = Validator::from_remote(jwks.clone(), "https://issuer.example", "api");
    let issue = |ring: &KeyRing| {
        AccessTokenIssuer::new(ring.clone(), "https://issuer.example", "api")
            .issue(&Grant::new("user", "client"))
            .unwrap()
            .token
    };
    assert!(validator.validate_fresh(&issue(&ring)).await.is_ok());
    // The issuer rotates: its new tokens name a kid we have not seen.
    ring.rotate(
        SigningKey::generate("2026-11", Algorithm::ES256).unwrap(),
        Duration::from_secs(3600),
    )
    .unwrap();
    *published.lock().unwrap() = serde_json::to_string(&ring.jwks()).unwrap();
    let rotated = issue(&ring);
    assert!(
        validator.validate(&rotated).is_err(),
        "not known before a refresh"
    );
    assert!(validator.validate_fresh(&rotated).await.is_ok());
    assert_eq!(jwks.fetches(), 2);
}

#[tokio::test]
async fn the_environment_takes_a_certificate_and_the_default_chain_ends_with_managed_identity() {
    use keel_token_manager::client::default_credential;
    let (base, fake) = fake().await;
    let graph = TokenRequest::new(["https://graph.microsoft.com/.default"]);
    let dir = std::env::temp_dir().join(format!("keel-env-cert-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pem = dir.join("app.pem");
    std::fs::write(
        &pem,
        crate::fixture("rsa-2048.crt.pem") + &crate::fixture("rsa-2048.pem"),
    )
    .unwrap();
    let pfx = dir.join("app.pfx");
    std::fs::write(&pfx, [0x30_u8, 0x82, 0x0a, 0x00]).unwrap();
    let vars = |certificate: std::path::PathBuf, base: String| {
        move |name: &str| match name {
            "AZURE_TENANT_ID" => Some("contoso.onmicrosoft.com".to_owned()),
            "AZURE_CLIENT_ID" => Some("app-1".to_owned()),
            "AZURE_CLIENT_CERTIFICATE_PATH" => Some(certificate.display().to_string()),
            "AZURE_AUTHORITY_HOST" => Some(base.clone()),
            _ => None,
        }
    };
    // A PEM file: a signed assertion, checked by the fake as Entra ID checks it.
    let chain = default_credential(vars(pem.clone(), base.clone())).unwrap();
    let token = chain.token(&graph).await.unwrap();
    assert!(
        token.secret().starts_with("contoso.onmicrosoft.com|"),
        "{}",
        token.secret()
    );
    assert_eq!(fake.assertions.lock().unwrap().len(), 1);
    // A PFX is named as such, not misread.
    let Err(pfx_error) =
        keel_token_manager::client::environment_credential(vars(pfx, base.clone()))
    else {
        panic!("a PFX file was taken as PEM")
    };
    assert!(pfx_error.to_string().contains("PEM"), "{pfx_error}");
    std::fs::remove_dir_all(&dir).unwrap();

    // No AZURE_* variables: the chain goes on to managed identity (App Service here).
    let app_service = |name: &str| match name {
        "IDENTITY_ENDPOINT" => Some(format!("{base}/msi/token")),
        "IDENTITY_HEADER" => Some("identity-secret".to_owned()),
        _ => None,
    };
    let chain = default_credential(app_service).unwrap();
    assert_eq!(
        chain.token(&graph).await.unwrap().secret(),
        "appservice|https://graph.microsoft.com"
    );
}

#[test]
fn a_broken_environment_credential_stops_the_default_chain() {
    use keel_token_manager::client::default_credential;
    let broken = |name: &str| match name {
        "AZURE_TENANT_ID" => Some("contoso.onmicrosoft.com".to_owned()),
        "AZURE_CLIENT_ID" => Some("app-1".to_owned()),
        "AZURE_CLIENT_CERTIFICATE_PATH" => Some("/nonexistent/keel/app.pem".to_owned()),
        _ => None,
    };
    let Err(error) = default_credential(broken) else {
        panic!("a certificate that cannot be read was skipped for managed identity")
    };
    assert!(
        error.to_string().contains("AZURE_CLIENT_CERTIFICATE_PATH"),
        "{error}"
    );
    let plain_http = |name: &str| match name {
        "AZURE_TENANT_ID" => Some("contoso.onmicrosoft.com".to_owned()),
        "AZURE_CLIENT_ID" => Some("app-1".to_owned()),
        "AZURE_CLIENT_SECRET" => Some("s3cret".to_owned()),
        "AZURE_AUTHORITY_HOST" => Some("http://login.example".to_owned()),
        _ => None,
    };
    assert!(default_credential(plain_http).is_err());
}
