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
    // Keep draining its output (its notices): a closed pipe would kill it.
    std::thread::spawn(move || lines.for_each(drop));
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

/// A browser for oidc-provider's development sign-in pages: keeps cookies, follows
/// redirects, signs in as `login` and consents, until a redirect to `stop_at` (returned)
/// or a page that asks for nothing more (its body returned).
struct Browser {
    http: reqwest::Client,
    base: String,
    cookies: std::collections::BTreeMap<String, String>,
    login: &'static str,
}

enum Step {
    Get(String),
    Post(String, Vec<(String, String)>),
}

impl Browser {
    fn new(base: &str, login: &'static str) -> Self {
        Self {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            base: base.to_owned(),
            cookies: std::collections::BTreeMap::new(),
            login,
        }
    }

    fn absolute(&self, url: &str) -> String {
        if url.starts_with("http") {
            url.to_owned()
        } else {
            format!("{}{url}", self.base)
        }
    }

    async fn send(&mut self, step: Step) -> reqwest::Response {
        let request = match step {
            Step::Get(url) => self.http.get(self.absolute(&url)),
            Step::Post(url, form) => self.http.post(self.absolute(&url)).form(&form),
        };
        let cookie: Vec<String> = self
            .cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let response = request
            .header("cookie", cookie.join("; "))
            .send()
            .await
            .unwrap();
        for set in response.headers().get_all("set-cookie") {
            let pair = set.to_str().unwrap().split(';').next().unwrap();
            let (name, value) = pair.split_once('=').unwrap();
            if value.is_empty() {
                self.cookies.remove(name);
            } else {
                self.cookies.insert(name.to_owned(), value.to_owned());
            }
        }
        response
    }

    /// Goes through redirects and the login and consent pages.
    async fn browse(&mut self, mut step: Step, stop_at: &str) -> String {
        for _ in 0..20 {
            let response = self.send(step).await;
            if response.status().is_redirection() {
                let location = response.headers()["location"].to_str().unwrap().to_owned();
                if location.starts_with(stop_at) {
                    return location;
                }
                step = Step::Get(location);
                continue;
            }
            let body = response.text().await.unwrap();
            let form = |prompt: &str| -> Option<String> {
                let at = body.find(&format!(r#"name="prompt" value="{prompt}""#))?;
                let start = body[..at].rfind(r#"action=""#)? + r#"action=""#.len();
                let end = body[start..].find('"')? + start;
                Some(body[start..end].to_owned())
            };
            if let Some(action) = form("login") {
                let fields = [
                    ("prompt", "login"),
                    ("login", self.login),
                    ("password", "any"),
                ];
                step = Step::Post(action, owned(&fields));
            } else if let Some(action) = form("consent") {
                step = Step::Post(action, owned(&[("prompt", "consent")]));
            } else {
                return body;
            }
        }
        panic!("the sign-in did not end");
    }
}

fn owned(fields: &[(&str, &str)]) -> Vec<(String, String)> {
    fields
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// The `value` of the hidden input `name` in a page.
fn hidden(body: &str, name: &str) -> String {
    let at = body
        .find(&format!(r#"name="{name}" value=""#))
        .unwrap_or_else(|| panic!("no {name} in {body}"));
    let start = at + format!(r#"name="{name}" value=""#).len();
    let end = body[start..].find('"').unwrap() + start;
    body[start..end].to_owned()
}

fn query_param(url: &str, name: &str) -> Option<String> {
    let query = url.split_once('?')?.1;
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == name).then(|| {
            // The values here (codes, states) are URL-safe; decode the few escapes.
            v.replace("%2D", "-")
                .replace("%5F", "_")
                .replace("%7E", "~")
        })
    })
}

const USER_SCOPES: [&str; 3] = ["openid", "offline_access", "read"];

#[tokio::test]
async fn authorization_code_with_pkce_and_rotating_refresh_tokens_against_oidc_provider() {
    use keel_token_manager::client::{AuthorizationCodeClient, SignedInUsers};
    let provider = start();
    let client = AuthorizationCodeClient::new(
        Authority::Custom(provider.base.clone()),
        "contoso",
        "app-native",
        "http://127.0.0.1/callback",
        None,
    )
    .unwrap();
    let pending = client.start(USER_SCOPES).unwrap();
    let mut browser = Browser::new(&provider.base, "alice");
    let redirect = browser
        .browse(Step::Get(pending.url.clone()), "http://127.0.0.1/callback")
        .await;
    let code = query_param(&redirect, "code").expect("a code");
    let state = query_param(&redirect, "state").expect("the state");

    // A forged state is refused before any request; the real one redeems the code.
    let grant = client.redeem(pending, &code, &state).await.unwrap();
    let validator = validator(&provider.base).await;
    let claims = validator.validate(grant.access.secret()).unwrap();
    assert_eq!(claims.sub, "alice");
    assert_eq!(claims.client_id, "app-native");
    assert!(grant.id_token().is_some());
    let first_refresh = grant
        .refresh_token()
        .expect("offline_access gives a refresh token")
        .to_owned();

    // The refresh token kept sealed; the user's provider redeems it and keeps the
    // rotated one.
    let users = SignedInUsers::new(
        client.clone(),
        keel_token_manager::SealingKeys::generate(1).unwrap(),
    );
    assert!(users.keep("alice", &grant).unwrap());
    let sealed = users.sealed("alice").unwrap();
    assert!(
        !String::from_utf8_lossy(&sealed).contains(&first_refresh),
        "sealed at rest"
    );
    let alice = users.user("alice");
    // offline_access was not part of the grant here (see provider.mjs): ask without it.
    let request = TokenRequest::new(["openid", "read"]);
    let token = alice.token(&request).await.unwrap();
    assert_eq!(validator.validate(token.secret()).unwrap().sub, "alice");
    assert_ne!(
        users.sealed("alice").unwrap(),
        sealed,
        "the rotated token is kept"
    );
    let token = alice.token(&request).await.unwrap();
    assert_eq!(validator.validate(token.secret()).unwrap().sub, "alice");

    // The first refresh token was spent: presenting it again is reuse. The provider
    // refuses it (invalid_grant, permanent) and revokes the grant, so the user's next
    // refresh fails too and the user is signed out rather than retried.
    let reuse = client
        .refresh(&first_refresh, ["openid", "read"])
        .await
        .unwrap_err();
    assert_eq!(reuse.oauth().unwrap().error, "invalid_grant");
    assert_eq!(
        keel_resilience::Classify::class(&reuse),
        keel_resilience::ErrorClass::Permanent
    );
    let revoked = alice.token(&request).await.unwrap_err();
    assert_eq!(revoked.oauth().unwrap().error, "invalid_grant");
    assert!(!users.is_signed_in("alice"));
    assert!(alice.token(&request).await.is_err());
}

#[tokio::test]
async fn the_device_code_flow_against_oidc_provider() {
    use keel_token_manager::client::{DeviceCodeClient, SignedInUsers};
    let provider = start();
    let device = DeviceCodeClient::new(
        Authority::Custom(provider.base.clone()),
        "contoso",
        "app-device",
    )
    .unwrap();
    let code = device.start(USER_SCOPES).await.unwrap();
    assert!(code.verification_uri.starts_with(&provider.base));
    // The device polls while the user signs in on another device.
    let polling = {
        let (device, code) = (device.clone(), code.clone());
        tokio::spawn(async move { device.wait(&code).await })
    };
    let mut browser = Browser::new(&provider.base, "bob");
    let page = browser
        .send(Step::Get(code.verification_uri.clone()))
        .await
        .text()
        .await
        .unwrap();
    let form = owned(&[
        ("xsrf", &hidden(&page, "xsrf")),
        ("user_code", &code.user_code),
    ]);
    let confirm = browser
        .send(Step::Post(code.verification_uri.clone(), form))
        .await
        .text()
        .await
        .unwrap();
    let form = owned(&[
        ("xsrf", &hidden(&confirm, "xsrf")),
        ("user_code", &hidden(&confirm, "user_code")),
        ("confirm", "yes"),
    ]);
    let done = browser
        .browse(Step::Post(code.verification_uri.clone(), form), "never")
        .await;
    assert!(done.contains("Sign-in Success"), "{done}");

    let grant = tokio::time::timeout(Duration::from_secs(30), polling)
        .await
        .expect("the device got its token")
        .unwrap()
        .unwrap();
    let validator = validator(&provider.base).await;
    let claims = validator.validate(grant.access.secret()).unwrap();
    assert_eq!(claims.sub, "bob");
    assert_eq!(claims.client_id, "app-device");
    // Its refresh token, through the same sealed store.
    let users = SignedInUsers::new(
        device,
        keel_token_manager::SealingKeys::generate(1).unwrap(),
    );
    assert!(users.keep("bob", &grant).unwrap());
    let token = users
        .user("bob")
        .token(&TokenRequest::new(USER_SCOPES))
        .await
        .unwrap();
    assert_eq!(validator.validate(token.secret()).unwrap().sub, "bob");
}
