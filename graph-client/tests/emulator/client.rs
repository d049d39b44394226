//! The client against the emulator: tenants, paging, retries, typed errors.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{StreamExt as _, TryStreamExt as _};
use keel_graph_client::emulator::{Emulator, FaultRule};
use keel_graph_client::model::{Page, User};
use keel_graph_client::{GraphClient, GraphError, GraphRequest};
use keel_token_manager::client::{
    Authority, CachingProvider, ClientSecretCredential, TokenError, TokenFuture, TokenProvider,
    TokenRequest,
};

pub(crate) fn provider(graph: &Emulator, tenant: &str) -> Arc<dyn TokenProvider> {
    Arc::new(CachingProvider::new(
        ClientSecretCredential::new(
            Authority::Custom(graph.base_url().to_owned()),
            tenant,
            "app",
            "secret",
        )
        .unwrap(),
    ))
}

pub(crate) fn client(graph: &Emulator) -> GraphClient {
    let [contoso, fabrikam] = [graph.tenants()[0].clone(), graph.tenants()[1].clone()];
    GraphClient::builder(graph.cloud())
        .tenant("contoso", provider(graph, contoso.domain()))
        .tenant("fabrikam", provider(graph, fabrikam.domain()))
        .build()
        .unwrap()
}

#[tokio::test]
async fn each_tenant_reads_its_own_users_through_every_page() {
    let graph = Emulator::start_default().await.unwrap();
    let client = client(&graph);
    let users: Vec<User> = client
        .items("contoso", GraphRequest::get("/users").top(40))
        .try_collect()
        .await
        .unwrap();
    assert_eq!(users.len(), 250);
    assert!(users.iter().all(|u| {
        u.mail
            .as_deref()
            .unwrap()
            .ends_with("@contoso.onmicrosoft.com")
    }));
    let fabrikam: Vec<User> = client
        .items("FABRIKAM", GraphRequest::get("/users"))
        .try_collect()
        .await
        .unwrap();
    assert_eq!(fabrikam.len(), 20, "tenant names are matched in any case");
    // `$count` and its ConsistencyLevel header, kept on every page.
    let mut pages = client.pages::<User>("contoso", GraphRequest::get("/users").top(100).count());
    let first: Page<User> = pages.next().await.unwrap().unwrap();
    assert_eq!(first.count, Some(250));
    let rest: Vec<Page<User>> = pages.try_collect().await.unwrap();
    assert_eq!(rest.len(), 2);
    assert_eq!(graph.token_requests(), 2, "one token per tenant, cached");
}

#[tokio::test]
async fn throttled_calls_wait_as_told_and_succeed() {
    let graph = Emulator::start_default().await.unwrap();
    let client = client(&graph);
    graph
        .faults()
        .add(FaultRule::path("/v1.0/users").throttle("0.2").times(2));
    let started = std::time::Instant::now();
    let user: User = client
        .get(
            "contoso",
            &GraphRequest::get("/users/user0001@contoso.onmicrosoft.com"),
        )
        .await
        .unwrap();
    assert_eq!(user.display_name.as_deref(), Some("User 0001"));
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "{:?}",
        started.elapsed()
    );
    // 503 and 504 are retried too (with backoff when there is no Retry-After).
    graph.faults().add(
        FaultRule::path("/v1.0/users")
            .status(http::StatusCode::GATEWAY_TIMEOUT)
            .times(1),
    );
    assert!(
        client
            .get::<User>(
                "contoso",
                &GraphRequest::get("/users/user0002@contoso.onmicrosoft.com")
            )
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn retries_stop_at_their_caps_with_the_last_error() {
    let graph = Emulator::start_default().await.unwrap();
    let [contoso] = [graph.tenants()[0].clone()];
    let client = GraphClient::builder(graph.cloud())
        .tenant("contoso", provider(&graph, contoso.domain()))
        .retries(3, Duration::from_secs(5))
        .build()
        .unwrap();
    // A Retry-After past the total delay allowed: no waiting, the 429 at once.
    graph
        .faults()
        .add(FaultRule::path("/v1.0/users").throttle("3600").times(1));
    let started = std::time::Instant::now();
    let error = client
        .send("contoso", &GraphRequest::get("/users"))
        .await
        .unwrap_err();
    assert_eq!(error.status(), Some(http::StatusCode::TOO_MANY_REQUESTS));
    assert!(started.elapsed() < Duration::from_secs(2));
    // Three attempts at most.
    graph
        .faults()
        .add(FaultRule::path("/v1.0/users").throttle("0.01").times(5));
    let error = client
        .send("contoso", &GraphRequest::get("/users"))
        .await
        .unwrap_err();
    assert_eq!(error.retry_after(), Some(Duration::from_millis(10)));
    graph.faults().clear();
    // Two throttled answers were left for the next call, which gets through on its third.
    graph
        .faults()
        .add(FaultRule::path("/v1.0/users").throttle("0.01").times(2));
    assert!(
        client
            .send("contoso", &GraphRequest::get("/users"))
            .await
            .is_ok()
    );
    // Errors that are not retried come back at once, typed.
    let error = client
        .send("contoso", &GraphRequest::get("/users/nobody"))
        .await
        .unwrap_err();
    assert!(error.api().unwrap().has_code("Request_ResourceNotFound"));
    let error = client
        .send("contoso", &GraphRequest::get("/users").filter("id gt '1'"))
        .await
        .unwrap_err();
    assert_eq!(error.status(), Some(http::StatusCode::BAD_REQUEST));
}

/// A provider that fails: its error comes back as the call's, with its class.
#[derive(Debug)]
struct Refusing;

impl TokenProvider for Refusing {
    fn token<'a>(&'a self, _: &'a TokenRequest) -> TokenFuture<'a> {
        Box::pin(async {
            Err(TokenError::unavailable(
                "test",
                "the identity endpoint is down",
            ))
        })
    }
}

#[tokio::test]
async fn tokens_tenants_and_requests_fail_with_their_own_errors() {
    let graph = Emulator::start_default().await.unwrap();
    let client = GraphClient::builder(graph.cloud())
        .tenant("broken", Arc::new(Refusing))
        .build()
        .unwrap();
    let error = client
        .send("broken", &GraphRequest::get("/users"))
        .await
        .unwrap_err();
    assert!(matches!(error, GraphError::Token(_)), "{error:?}");
    let error = client
        .send("elsewhere", &GraphRequest::get("/users"))
        .await
        .unwrap_err();
    assert!(matches!(error, GraphError::UnknownTenant(t) if t == "elsewhere"));
    let error = client
        .send("broken", &GraphRequest::get("users"))
        .await
        .unwrap_err();
    assert!(matches!(error, GraphError::Request(_)));
    assert!(
        GraphClient::builder(graph.cloud()).build().is_err(),
        "no tenant"
    );
}

#[tokio::test]
async fn every_call_carries_a_client_request_id_that_graph_echoes() {
    let graph = Emulator::start_default().await.unwrap();
    let client = client(&graph);
    let a = client
        .send("contoso", &GraphRequest::get("/users").top(1))
        .await
        .unwrap();
    let b = client
        .send("contoso", &GraphRequest::get("/users").top(1))
        .await
        .unwrap();
    let id = |r: &keel_graph_client::GraphResponse| {
        r.headers["client-request-id"].to_str().unwrap().to_owned()
    };
    assert_ne!(id(&a), id(&b));
    assert_eq!(id(&a).len(), 36, "{}", id(&a));
    // A malformed success body is a decode error that keeps the status.
    graph
        .faults()
        .add(FaultRule::path("/v1.0/users").malformed().times(1));
    let error = client
        .get::<Page<User>>("contoso", &GraphRequest::get("/users"))
        .await
        .unwrap_err();
    assert!(matches!(error, GraphError::Decode { .. }), "{error:?}");
}

/// A client for contoso, configured by `configure`.
pub(crate) fn built(
    graph: &Emulator,
    configure: impl FnOnce(
        keel_graph_client::GraphClientBuilder,
    ) -> keel_graph_client::GraphClientBuilder,
) -> GraphClient {
    let contoso = graph.tenants()[0].clone();
    configure(
        GraphClient::builder(graph.cloud()).tenant("contoso", provider(graph, contoso.domain())),
    )
    .build()
    .unwrap()
}
