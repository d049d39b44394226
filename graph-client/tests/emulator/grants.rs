//! The emulator's token endpoint beyond client secrets: a certificate's client
//! assertion (keel-token-manager's `ClientCertificateCredential`, Microsoft's format)
//! and the jwt-bearer (on-behalf-of) grant for a delegated token, used on `/me`.

use std::sync::Arc;

use futures_util::TryStreamExt as _;
use keel_graph_client::emulator::{Emulator, TenantSeed};
use keel_graph_client::model::User;
use keel_graph_client::{GraphClient, GraphRequest};
use keel_token_manager::client::{
    Authority, CachingProvider, ClientCertificate, ClientCertificateCredential,
};

const TENANT: &str = "7b1c2a4e-0f1d-4c55-9a3e-2d6f1b0c00bb";

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/../token-manager/tests/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

async fn emulator() -> Emulator {
    Emulator::builder()
        .tenant(
            TenantSeed::new(TENANT, "northwind.onmicrosoft.com")
                .client("api", "api-secret", ["User.Read", "User.Read.All"])
                .delegated("api", ["User.Read", "Mail.Read"])
                .client("other", "other-secret", ["User.Read"])
                .client_certificate("daemon", &fixture("rsa-2048.pub.pem"), ["User.Read.All"])
                .users(12),
        )
        .start()
        .await
        .unwrap()
}

async fn token_form(graph: &Emulator, form: &[(&str, &str)]) -> (u16, serde_json::Value) {
    let response = reqwest::Client::new()
        .post(graph.token_endpoint(TENANT))
        .form(form)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

#[tokio::test]
async fn a_certificate_credential_gets_tokens_and_a_bad_assertion_is_refused() {
    let graph = emulator().await;
    let certificate =
        ClientCertificate::from_pem(&(fixture("rsa-2048.crt.pem") + &fixture("rsa-2048.pem")))
            .unwrap();
    let credential = ClientCertificateCredential::new(
        Authority::Custom(graph.base_url().to_owned()),
        "northwind.onmicrosoft.com",
        "daemon",
        certificate,
    )
    .unwrap();
    let client = GraphClient::builder(graph.cloud())
        .tenant("northwind", Arc::new(CachingProvider::new(credential)))
        .build()
        .unwrap();
    let users: Vec<User> = client.users("northwind").try_collect().await.unwrap();
    assert_eq!(users.len(), 12);

    // An assertion that is not the client's: refused as Entra ID refuses it.
    let forged = graph
        .user_token(TENANT, "user0001@northwind.onmicrosoft.com", "api")
        .unwrap();
    for assertion in ["not-a-jwt", forged.as_str()] {
        let (status, body) = token_form(
            &graph,
            &[
                ("grant_type", "client_credentials"),
                ("client_id", "daemon"),
                (
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                ),
                ("client_assertion", assertion),
                ("scope", "https://graph.microsoft.com/.default"),
            ],
        )
        .await;
        assert_eq!(status, 401, "{body}");
        assert_eq!(body["error"], "invalid_client");
        assert_eq!(body["error_codes"][0], 700027);
    }
    // A certificate client has no secret to guess.
    let (status, _) = token_form(
        &graph,
        &[
            ("grant_type", "client_credentials"),
            ("client_id", "daemon"),
            ("client_secret", ""),
            ("scope", "https://graph.microsoft.com/.default"),
        ],
    )
    .await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn on_behalf_of_trades_a_users_token_for_a_delegated_graph_token() {
    let graph = emulator().await;
    let user_token = graph
        .user_token(TENANT, "user0003@northwind.onmicrosoft.com", "api")
        .unwrap();
    let obo = |assertion: String, client: &'static str, secret: &'static str| {
        let graph = &graph;
        async move {
            token_form(
                graph,
                &[
                    ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
                    ("client_id", client),
                    ("client_secret", secret),
                    ("assertion", &assertion),
                    ("scope", "https://graph.microsoft.com/.default"),
                    ("requested_token_use", "on_behalf_of"),
                ],
            )
            .await
        }
    };
    let (status, body) = obo(user_token.clone(), "api", "api-secret").await;
    assert_eq!(status, 200, "{body}");
    let delegated = body["access_token"].as_str().unwrap().to_owned();
    // The delegated token reads /me: the user, not the app.
    let me: User = reqwest::Client::new()
        .get(
            GraphRequest::get("/me")
                .url(&graph.cloud(), keel_graph_client::ApiVersion::V1)
                .unwrap(),
        )
        .bearer_auth(&delegated)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        me.user_principal_name.as_deref(),
        Some("user0003@northwind.onmicrosoft.com")
    );
    // An app-only token on /me: Graph's 400.
    let (_, app) = token_form(
        &graph,
        &[
            ("grant_type", "client_credentials"),
            ("client_id", "api"),
            ("client_secret", "api-secret"),
            ("scope", "https://graph.microsoft.com/.default"),
        ],
    )
    .await;
    let refused = reqwest::Client::new()
        .get(format!("{}/v1.0/me", graph.base_url()))
        .bearer_auth(app["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status().as_u16(), 400);
    // A user's token for another app, a forged one, or the wrong client secret: refused.
    let for_other = graph
        .user_token(TENANT, "user0003@northwind.onmicrosoft.com", "other")
        .unwrap();
    for (assertion, client, secret, status) in [
        (for_other, "api", "api-secret", 400),
        (user_token.replace('.', "x"), "api", "api-secret", 400),
        (user_token.clone(), "api", "wrong", 401),
    ] {
        let (got, body) = obo(assertion, client, secret).await;
        assert_eq!(got, status, "{body}");
    }
    // Without requested_token_use: an invalid request.
    let (status, _) = token_form(
        &graph,
        &[
            ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
            ("client_id", "api"),
            ("client_secret", "api-secret"),
            ("assertion", &user_token),
            ("scope", "https://graph.microsoft.com/.default"),
        ],
    )
    .await;
    assert_eq!(status, 400);
}

/// A client assertion as a certificate credential makes one, with changes.
fn assertion(graph: &Emulator, edit: impl FnOnce(&mut serde_json::Value)) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut claims = serde_json::json!({
        "aud": graph.token_endpoint(TENANT),
        "iss": "daemon",
        "sub": "daemon",
        "jti": format!("{now}-{}", std::process::id()),
        "nbf": now,
        "exp": now + 300,
    });
    edit(&mut claims);
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(fixture("rsa-2048.pem").as_bytes()).unwrap();
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::PS256),
        &claims,
        &key,
    )
    .unwrap()
}

async fn with_assertion(graph: &Emulator, assertion: &str) -> (u16, serde_json::Value) {
    token_form(
        graph,
        &[
            ("grant_type", "client_credentials"),
            ("client_id", "daemon"),
            (
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            ),
            ("client_assertion", assertion),
            ("scope", "https://graph.microsoft.com/.default"),
        ],
    )
    .await
}

#[tokio::test]
async fn an_assertion_is_good_once_within_its_times_and_with_a_jti() {
    let graph = emulator().await;
    let once = assertion(&graph, |_| {});
    assert_eq!(with_assertion(&graph, &once).await.0, 200);
    let (status, body) = with_assertion(&graph, &once).await;
    assert_eq!(status, 401, "a replayed assertion was accepted: {body}");
    let later = assertion(&graph, |c| {
        c["nbf"] = serde_json::json!(c["nbf"].as_u64().unwrap() + 3_600);
    });
    assert_eq!(
        with_assertion(&graph, &later).await.0,
        401,
        "an assertion before its nbf"
    );
    let no_jti = assertion(&graph, |c| {
        c.as_object_mut().unwrap().remove("jti");
    });
    assert_eq!(
        with_assertion(&graph, &no_jti).await.0,
        401,
        "an assertion without jti"
    );
    let other_endpoint = assertion(&graph, |c| {
        c["aud"] = serde_json::json!("https://login.example/token");
    });
    assert_eq!(with_assertion(&graph, &other_endpoint).await.0, 401);
}

#[tokio::test]
async fn client_secret_basic_works_and_two_methods_at_once_are_refused() {
    use base64::Engine as _;
    let graph = emulator().await;
    let basic = base64::engine::general_purpose::STANDARD.encode("api:api-secret");
    let send = |extra: &'static [(&'static str, &'static str)]| {
        let graph = &graph;
        let basic = basic.clone();
        async move {
            let mut form = vec![
                ("grant_type", "client_credentials"),
                ("scope", "https://graph.microsoft.com/.default"),
            ];
            form.extend_from_slice(extra);
            reqwest::Client::new()
                .post(graph.token_endpoint(TENANT))
                .header("authorization", format!("Basic {basic}"))
                .form(&form)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(send(&[]).await, 200);
    assert_eq!(send(&[("client_secret", "api-secret")]).await, 400);
    assert_eq!(send(&[("client_id", "other")]).await, 400);
    let (status, _) = token_form(
        &graph,
        &[
            ("grant_type", "client_credentials"),
            ("client_id", "daemon"),
            ("client_secret", "x"),
            (
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            ),
            ("client_assertion", &assertion(&graph, |_| {})),
            ("scope", "https://graph.microsoft.com/.default"),
        ],
    )
    .await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn a_delegated_token_reads_its_users_mailbox_and_no_other() {
    let graph = emulator().await;
    let user_token = graph
        .user_token(TENANT, "user0003@northwind.onmicrosoft.com", "api")
        .unwrap();
    let (status, body) = token_form(
        &graph,
        &[
            ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
            ("client_id", "api"),
            ("client_secret", "api-secret"),
            ("assertion", &user_token),
            ("scope", "https://graph.microsoft.com/.default"),
            ("requested_token_use", "on_behalf_of"),
        ],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let delegated = body["access_token"].as_str().unwrap().to_owned();
    let read = |user: &'static str| {
        let graph = &graph;
        let delegated = delegated.clone();
        async move {
            reqwest::Client::new()
                .get(format!("{}/v1.0/users/{user}/messages", graph.base_url()))
                .bearer_auth(&delegated)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(read("user0003@northwind.onmicrosoft.com").await, 200);
    assert_eq!(read("user0004@northwind.onmicrosoft.com").await, 403);
    // Its scopes are the delegated ones: not the app's User.Read.All to list users.
    let users = reqwest::Client::new()
        .get(format!("{}/v1.0/users", graph.base_url()))
        .bearer_auth(&delegated)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16();
    assert_eq!(users, 403);
}
