//! The client credentials against a real OpenID provider: oidc-provider from npm
//! (`token-manager/tests/oidc`, installed by `.ci/run` with `npm ci`), started on
//! loopback for each test. The tokens it issues are validated through its discovery
//! document and JWKS with keel's `Validator`.

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use keel_token_manager::client::{
    Authority, ClientCertificate, ClientCertificateCredential, ClientSecretCredential, RemoteJwks,
    TokenProvider, TokenRequest,
};
use keel_token_manager::{Algorithm, Jwks, SigningKey, Validator};

/// oidc-provider on a free loopback port; killed on drop.
struct OpenIdProvider {
    child: Child,
    base: String,
}

impl Drop for OpenIdProvider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn harness_dir() -> String {
    format!("{}/tests/oidc", env!("CARGO_MANIFEST_DIR"))
}

/// The public JWK the certificate client is registered with.
fn certificate_jwk() -> String {
    let key = SigningKey::from_pem(
        "app-certificate",
        Algorithm::RS256,
        &crate::fixture("rsa-2048.pem"),
    )
    .unwrap();
    let mut jwk = key.jwk().clone();
    jwk.alg = None; // the client signs PS256 with it
    serde_json::to_string(&jwk).unwrap()
}

fn start() -> OpenIdProvider {
    let dir = harness_dir();
    assert!(
        std::path::Path::new(&format!("{dir}/node_modules/oidc-provider")).exists(),
        "oidc-provider is not installed: run `npm ci --prefix token-manager/tests/oidc` (.ci/run does)"
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new("node")
        .arg("provider.mjs")
        .arg(port.to_string())
        .arg(certificate_jwk())
        .current_dir(&dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("node (Node.js) is needed for the OpenID provider tests");
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let ready = lines.next().and_then(Result::ok);
    assert_eq!(
        ready.as_deref(),
        Some("ready"),
        "oidc-provider did not start"
    );
    OpenIdProvider {
        child,
        base: format!("http://127.0.0.1:{port}"),
    }
}

async fn get_json<T: serde::de::DeserializeOwned>(url: &str) -> T {
    let body = reqwest::get(url).await.unwrap().bytes().await.unwrap();
    serde_json::from_slice(&body).unwrap()
}

/// A validator for the provider's access tokens, from its discovery document and JWKS.
async fn validator(base: &str) -> Validator {
    let discovery: serde_json::Value =
        get_json(&format!("{base}/.well-known/openid-configuration")).await;
    let issuer = discovery["issuer"].as_str().unwrap().to_owned();
    let jwks: Jwks = get_json(discovery["jwks_uri"].as_str().unwrap()).await;
    Validator::from_jwks(&jwks, issuer, "https://graph.example").unwrap()
}

#[tokio::test]
async fn client_credentials_with_a_secret_against_oidc_provider() {
    let provider = start();
    let credential = ClientSecretCredential::new(
        Authority::Custom(provider.base.clone()),
        "contoso",
        "app-secret",
        "s3cret-for-the-provider",
    )
    .unwrap();
    let token = credential
        .token(&TokenRequest::new(["read"]))
        .await
        .unwrap();
    assert!(token.expires_in() > Duration::from_secs(500));
    let claims = validator(&provider.base)
        .await
        .validate(token.secret())
        .unwrap();
    assert_eq!(claims.client_id, "app-secret");
    assert_eq!(claims.scope.as_deref(), Some("read"));
    // A wrong secret: the provider's invalid_client, typed and permanent.
    let wrong = ClientSecretCredential::new(
        Authority::Custom(provider.base.clone()),
        "contoso",
        "app-secret",
        "not-the-secret",
    )
    .unwrap();
    let error = wrong.token(&TokenRequest::new(["read"])).await.unwrap_err();
    assert_eq!(error.oauth().unwrap().error, "invalid_client");
    assert_eq!(
        keel_resilience::Classify::class(&error),
        keel_resilience::ErrorClass::Permanent
    );
    // A scope the resource does not have is not granted (oidc-provider leaves it out).
    let token = credential
        .token(&TokenRequest::new(["admin", "read"]))
        .await
        .unwrap();
    let claims = validator(&provider.base)
        .await
        .validate(token.secret())
        .unwrap();
    assert_eq!(claims.scope.as_deref(), Some("read"));
}

#[tokio::test]
async fn client_credentials_with_a_private_key_jwt_against_oidc_provider() {
    let provider = start();
    let pem = crate::fixture("rsa-2048.crt.pem") + &crate::fixture("rsa-2048.pem");
    let credential = ClientCertificateCredential::new(
        Authority::Custom(provider.base.clone()),
        "contoso",
        "app-certificate",
        ClientCertificate::from_pem(&pem).unwrap(),
    )
    .unwrap();
    // Two requests: each carries a fresh assertion (the provider refuses a replayed jti).
    for _ in 0..2 {
        let token = credential
            .token(&TokenRequest::new(["read", "write"]))
            .await
            .unwrap();
        let claims = validator(&provider.base)
            .await
            .validate(token.secret())
            .unwrap();
        assert_eq!(claims.client_id, "app-certificate");
    }
}

#[tokio::test]
async fn its_tokens_validate_through_discovery_and_random_kids_do_not_hammer_it() {
    let provider = start();
    let credential = ClientSecretCredential::new(
        Authority::Custom(provider.base.clone()),
        "contoso",
        "app-secret",
        "s3cret-for-the-provider",
    )
    .unwrap();
    let token = credential
        .token(&TokenRequest::new(["read"]))
        .await
        .unwrap();
    let (jwks, issuer) = RemoteJwks::discover(&format!("{}/contoso/v2.0", provider.base))
        .await
        .unwrap();
    assert_eq!(issuer, format!("{}/contoso/v2.0", provider.base));
    let jwks = jwks.min_refresh_interval(Duration::from_millis(300));
    let validator = Validator::from_remote(jwks.clone(), issuer, "https://graph.example");
    let claims = validator.validate_fresh(token.secret()).await.unwrap();
    assert_eq!(claims.client_id, "app-secret");
    assert_eq!(jwks.fetches(), 1);
    // Tokens naming random kids: refused, and the JWKS is fetched again at most once
    // per interval however many arrive.
    use base64::Engine as _;
    let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    tokio::time::sleep(Duration::from_millis(350)).await;
    for i in 0..100 {
        let header = b64(&format!(
            r#"{{"alg":"RS256","typ":"at+jwt","kid":"random-{i}"}}"#
        ));
        let forged = format!("{header}.{}.{}", b64("{}"), b64("sig"));
        assert!(validator.validate_fresh(&forged).await.is_err());
    }
    assert_eq!(jwks.fetches(), 2, "one refetch for 100 unknown kids");
}
