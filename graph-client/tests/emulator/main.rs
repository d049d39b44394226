//! The emulator, driven by an independent HTTP client (reqwest) and by keel-token-manager's
//! own OAuth client: tokens, authentication on every call, tenant isolation, paging,
//! query options, Graph's errors and injected faults.

mod batch;
mod client;
mod delta;
mod grants;
mod independent;
mod middleware;
mod planner;
mod planner_delta;

use std::time::Duration;

use keel_graph_client::emulator::{Emulator, FaultRule, TenantSeed};
use keel_graph_client::model::{Page, User};
use keel_graph_client::{ApiVersion, GraphError, GraphRequest};
use keel_resilience::{Classify, ErrorClass};
use keel_token_manager::client::{Authority, ClientSecretCredential, TokenProvider, TokenRequest};
use reqwest::StatusCode;

async fn token(graph: &Emulator, tenant: &str, secret: &str) -> Result<String, String> {
    let credential = ClientSecretCredential::new(
        Authority::Custom(graph.base_url().to_owned()),
        tenant,
        "app",
        secret,
    )
    .map_err(|e| e.to_string())?;
    let request = TokenRequest::new([graph.cloud().default_scope()]);
    credential
        .token(&request)
        .await
        .map(|t| t.secret().to_owned())
        .map_err(|e| {
            format!(
                "{e}: {:?}",
                std::error::Error::source(&e).map(ToString::to_string)
            )
        })
}

async fn get(graph: &Emulator, token: Option<&str>, request: &GraphRequest) -> reqwest::Response {
    let url = request.url(&graph.cloud(), ApiVersion::V1).unwrap();
    let mut call = reqwest::Client::new()
        .get(url)
        .headers(request.headers().clone());
    if let Some(token) = token {
        call = call.bearer_auth(token);
    }
    call.send().await.unwrap()
}

async fn graph_error(response: reqwest::Response) -> GraphError {
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.bytes().await.unwrap();
    GraphError::from_response(status, &headers, &body)
}

#[tokio::test]
async fn a_client_credentials_token_reads_its_tenants_users_page_by_page() {
    let graph = Emulator::start_default().await.unwrap();
    let contoso = graph.tenants()[0].clone();
    let token = token(&graph, contoso.domain(), "secret").await.unwrap();
    let first = GraphRequest::get("/users").top(100).count();
    let mut url = first.url(&graph.cloud(), ApiVersion::V1).unwrap();
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        // Next links are followed verbatim, with the same ConsistencyLevel header.
        let response = reqwest::Client::new()
            .get(&url)
            .bearer_auth(&token)
            .headers(first.headers().clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{url}");
        assert!(response.headers().contains_key("request-id"));
        let page: Page<User> = response.json().await.unwrap();
        if pages == 0 {
            assert_eq!(page.count, Some(250));
        }
        pages += 1;
        seen.extend(page.value.into_iter().map(|u| u.id));
        match page.next_link {
            Some(next) => {
                assert!(graph.cloud().is_graph_url(&next), "{next}");
                url = next;
            }
            None => break,
        }
    }
    assert_eq!(pages, 3);
    let unique: std::collections::HashSet<_> = seen.iter().collect();
    assert_eq!((seen.len(), unique.len()), (250, 250), "every user once");
    assert!(graph.token_requests() >= 1);
}

#[tokio::test]
async fn select_filter_and_count_follow_graphs_rules() {
    let graph = Emulator::start_default().await.unwrap();
    let token = token(&graph, graph.tenants()[0].id(), "secret")
        .await
        .unwrap();
    let response = get(
        &graph,
        Some(&token),
        &GraphRequest::get("/users")
            .select(["id", "displayName"])
            .filter("startswith(displayName,'User 001')"),
    )
    .await;
    let body: serde_json::Value = response.json().await.unwrap();
    let value = body["value"].as_array().unwrap();
    assert_eq!(value.len(), 10, "User 0010..User 0019");
    assert_eq!(
        value[0].as_object().unwrap().keys().collect::<Vec<_>>(),
        ["displayName", "id"]
    );
    let response = get(
        &graph,
        Some(&token),
        &GraphRequest::get("/users").filter("mail eq 'user0007@contoso.onmicrosoft.com'"),
    )
    .await;
    let page: Page<User> = response.json().await.unwrap();
    assert_eq!(page.value.len(), 1);
    // $count without ConsistencyLevel: refused as Graph does.
    let url = GraphRequest::get("/users")
        .count()
        .url(&graph.cloud(), ApiVersion::V1)
        .unwrap();
    let response = reqwest::Client::new()
        .get(url)
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let error = graph_error(response).await;
    assert!(error.api().unwrap().has_code("Request_BadRequest"));
    // An unsupported filter, a bad $top: 400s with Graph's body.
    for request in [
        GraphRequest::get("/users").filter("displayName gt 'x'"),
        GraphRequest::get("/users").top(1000),
    ] {
        let response = get(&graph, Some(&token), &request).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        assert!(graph_error(response).await.api().is_some());
    }
    let forged = format!("{}/v1.0/users?$skiptoken=forged", graph.base_url());
    let response = reqwest::Client::new()
        .get(forged)
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn calls_without_a_valid_token_or_permission_are_refused_as_graph_does() {
    let graph = Emulator::builder()
        .tenant(
            TenantSeed::new("0b8e6f7a-1c2d-4e3f-8a9b-000000000001", "a.example")
                .client("app", "secret", ["User.Read.All"])
                .client("weak", "secret", ["Calendars.Read"])
                .users(3),
        )
        .start()
        .await
        .unwrap();
    let response = get(&graph, None, &GraphRequest::get("/users")).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert!(response.headers().contains_key("www-authenticate"));
    let error = graph_error(response).await;
    assert!(error.api().unwrap().has_code("InvalidAuthenticationToken"));
    let response = get(&graph, Some("not.a.token"), &GraphRequest::get("/users")).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    // The wrong secret: Entra ID's invalid_client.
    let refused = token(&graph, "a.example", "wrong").await.unwrap_err();
    assert!(
        refused.contains("invalid_client") || refused.contains("7000215"),
        "{refused}"
    );
    // A token without the permission: 403 Authorization_RequestDenied.
    let credential = ClientSecretCredential::new(
        Authority::Custom(graph.base_url().to_owned()),
        "a.example",
        "weak",
        "secret",
    )
    .unwrap();
    let weak = credential
        .token(&TokenRequest::new([graph.cloud().default_scope()]))
        .await
        .unwrap();
    let response = get(&graph, Some(weak.secret()), &GraphRequest::get("/users")).await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert!(
        graph_error(response)
            .await
            .api()
            .unwrap()
            .has_code("Authorization_RequestDenied")
    );
}

/// A token from one tenant only ever sees that tenant's users, and a token signed by
/// another emulator (another key) is refused.
#[tokio::test]
async fn tenants_are_isolated() {
    let graph = Emulator::start_default().await.unwrap();
    let [contoso, fabrikam] = [graph.tenants()[0].clone(), graph.tenants()[1].clone()];
    let fabrikam_token = token(&graph, fabrikam.domain(), "secret").await.unwrap();
    let page: Page<User> = get(
        &graph,
        Some(&fabrikam_token),
        &GraphRequest::get("/users").top(999),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(page.value.len(), 20);
    assert!(page.value.iter().all(|u| {
        u.user_principal_name
            .as_deref()
            .unwrap()
            .ends_with(fabrikam.domain())
    }));
    let contoso_user = format!("/users/user0001@{}", contoso.domain());
    let response = get(
        &graph,
        Some(&fabrikam_token),
        &GraphRequest::get(&contoso_user),
    )
    .await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let other = Emulator::start_default().await.unwrap();
    let foreign = token(&other, contoso.domain(), "secret").await.unwrap();
    let response = get(&graph, Some(&foreign), &GraphRequest::get("/users")).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn injected_faults_look_like_graphs_and_classify_as_such() {
    let graph = Emulator::start_default().await.unwrap();
    let token = token(&graph, graph.tenants()[0].id(), "secret")
        .await
        .unwrap();
    graph
        .faults()
        .add(FaultRule::path("/v1.0/users").throttle("2.5").times(2));
    for _ in 0..2 {
        let error =
            graph_error(get(&graph, Some(&token), &GraphRequest::get("/users")).await).await;
        assert_eq!(
            error.class(),
            ErrorClass::Throttled {
                retry_after: Some(Duration::from_millis(2_500))
            }
        );
    }
    assert_eq!(
        get(&graph, Some(&token), &GraphRequest::get("/users"))
            .await
            .status(),
        StatusCode::OK,
        "the rule is used up"
    );
    // A fault for the other tenant does not touch this one.
    graph.faults().add(
        FaultRule::any()
            .tenant(graph.tenants()[1].id())
            .status(reqwest::StatusCode::SERVICE_UNAVAILABLE),
    );
    assert_eq!(
        get(&graph, Some(&token), &GraphRequest::get("/users"))
            .await
            .status(),
        StatusCode::OK
    );
    graph.faults().clear();
    graph
        .faults()
        .add(FaultRule::path("/v1.0/users").malformed().times(1));
    let response = get(&graph, Some(&token), &GraphRequest::get("/users")).await;
    assert!(
        response.json::<Page<User>>().await.is_err(),
        "a truncated body"
    );
    graph.faults().add(
        FaultRule::path("/v1.0/users")
            .latency(Duration::from_millis(150))
            .times(1),
    );
    let started = std::time::Instant::now();
    get(&graph, Some(&token), &GraphRequest::get("/users")).await;
    assert!(started.elapsed() >= Duration::from_millis(150));
    // The echoed client-request-id.
    let response = get(
        &graph,
        Some(&token),
        &GraphRequest::get("/users/nobody").header("client-request-id", "my-id-1"),
    )
    .await;
    assert_eq!(response.headers()["client-request-id"], "my-id-1");
    let error = graph_error(response).await;
    assert_eq!(error.api().unwrap().client_request_id(), Some("my-id-1"));
    assert!(error.api().unwrap().has_code("Request_ResourceNotFound"));
}

#[tokio::test]
async fn discovery_and_keys_are_served_for_every_tenant() {
    let graph = Emulator::start_default().await.unwrap();
    let tenant = graph.tenants()[0].clone();
    let url = format!(
        "{}/{}/v2.0/.well-known/openid-configuration",
        graph.base_url(),
        tenant.domain()
    );
    let config: serde_json::Value = reqwest::get(url).await.unwrap().json().await.unwrap();
    assert_eq!(
        config["issuer"],
        format!("{}/{}/v2.0", graph.base_url(), tenant.id())
    );
    let jwks: serde_json::Value = reqwest::get(config["jwks_uri"].as_str().unwrap())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 1);
    let unknown = reqwest::get(format!("{}/nope/discovery/v2.0/keys", graph.base_url()))
        .await
        .unwrap();
    assert_eq!(unknown.status(), StatusCode::BAD_REQUEST);
    assert!(
        Emulator::builder()
            .tenant(TenantSeed::new("not-a-guid", "x.example"))
            .start()
            .await
            .is_err()
    );
}
