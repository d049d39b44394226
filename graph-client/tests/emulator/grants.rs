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
