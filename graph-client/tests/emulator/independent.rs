//! The emulator checked by Microsoft's own clients from npm (`graph-client/tests/js`,
//! installed by `.ci/run` with `npm ci`): MSAL for Node acquires a client-credentials
//! token through the emulator's discovery over HTTPS, and Microsoft's JavaScript Graph
//! client pages through the users, sends a JSON batch, and follows a groups delta
//! (members over several pages) and a Planner tasks delta to their delta links. Our own client also runs over
//! the same HTTPS emulator.

use std::process::Command;

use futures_util::TryStreamExt as _;
use keel_graph_client::emulator::Emulator;
use keel_graph_client::{GraphClient, GraphRequest};
use keel_token_manager::client::{Authority, CachingProvider, ClientSecretCredential};

fn harness_dir() -> String {
    format!("{}/tests/js", env!("CARGO_MANIFEST_DIR"))
}

#[tokio::test]
async fn msal_and_microsofts_graph_client_speak_to_the_emulator_over_https() {
    let dir = harness_dir();
    for package in ["@microsoft/microsoft-graph-client", "@azure/msal-node"] {
        assert!(
            std::path::Path::new(&format!("{dir}/node_modules/{package}")).exists(),
            "{package} is not installed: run `npm ci --prefix graph-client/tests/js` (.ci/run does)"
        );
    }
    let graph = Emulator::builder()
        .https()
        .tenant(
            keel_graph_client::emulator::TenantSeed::new(
                "7b1c2a4e-0f1d-4c55-9a3e-2d6f1b0c00aa",
                "litware.onmicrosoft.com",
            )
            .client(
                "js-app",
                "js-secret",
                ["User.Read.All", "Group.Read.All", "Tasks.Read.All"],
            )
            .users(230)
            .groups(4),
        )
        .start()
        .await
        .unwrap();
    assert!(graph.base_url().starts_with("https://127.0.0.1:"));
    let pem = std::env::temp_dir().join(format!(
        "keel-emulator-{}-{}.pem",
        std::process::id(),
        graph.addr().port()
    ));
    std::fs::write(&pem, graph.certificate_pem().unwrap()).unwrap();
    let tenant = graph.tenants()[0].id().to_owned();
    let base = graph.base_url().to_owned();
    let output = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg("graph_client.mjs")
            .current_dir(harness_dir())
            .env("EMULATOR_BASE", base)
            .env("TENANT", tenant)
            .env("CLIENT_ID", "js-app")
            .env("CLIENT_SECRET", "js-secret")
            .env("EXPECTED_USERS", "230")
            .env("NODE_EXTRA_CA_CERTS", &pem)
            .output()
    })
    .await
    .unwrap()
    .expect("node runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the JS clients failed: {stderr}\n{stdout}"
    );
    let summary: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(
        summary,
        serde_json::json!({
            "users": 230,
            "batch": {"1": 200, "2": 200, "3": 400},
            "groups": 4,
            "members": 20,
            "tasks": 4,
        })
    );
    // MSAL's token request and the Graph calls reached the emulator: 3 pages, 1 batch of
    // 3 items.
    assert!(graph.token_requests() >= 1);
    assert_eq!(graph.batch_requests(), 1);

    // Our own client over the same HTTPS emulator, trusting its certificate.
    let http = graph.http_client().unwrap();
    let credential = ClientSecretCredential::new(
        Authority::Custom(graph.base_url().to_owned()),
        graph.tenants()[0].id(),
        "js-app",
        "js-secret",
    )
    .unwrap()
    .http_client(http.clone());
    let client = GraphClient::builder(graph.cloud())
        .tenant(
            "litware",
            std::sync::Arc::new(CachingProvider::new(credential)),
        )
        .http_client(http)
        .build()
        .unwrap();
    let users: Vec<keel_graph_client::model::User> = client
        .items("litware", GraphRequest::get("/users").top(100))
        .try_collect()
        .await
        .unwrap();
    assert_eq!(users.len(), 230);
}

#[tokio::test]
async fn a_client_that_does_not_trust_the_certificate_is_refused() {
    let graph = Emulator::builder().https().start().await.unwrap();
    let plain = reqwest::Client::new();
    let refused = plain
        .get(format!(
            "{}/common/v2.0/.well-known/openid-configuration",
            graph.base_url()
        ))
        .send()
        .await;
    assert!(
        refused.is_err(),
        "an untrusted self-signed certificate was accepted"
    );
    // The emulator keeps serving the clients that do trust it.
    let trusted = graph.http_client().unwrap();
    let status = trusted
        .get(format!("{}/v1.0/users", graph.base_url()))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status.as_u16(), 401);
}
