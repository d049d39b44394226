//! The token client's cache and chain, on tokio's paused clock: proactive refresh
//! timing, one refresh at a time while every caller keeps the valid token, failed
//! refreshes, claims challenges, tenant isolation, bounds.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use keel_resilience::{Classify, ErrorClass};
use keel_token_manager::client::{
    AccessToken, CachingProvider, ProviderChain, RefreshPolicy, TokenError, TokenFuture,
    TokenProvider, TokenRequest, from_fn,
};
use tokio::sync::Semaphore;

/// A fake token endpoint: counts requests, names each token after the tenant, the
/// request number and the claims, can be held (requests wait for a permit) or failing.
#[derive(Clone, Default)]
struct Endpoint {
    requests: Arc<AtomicU64>,
    gate: Option<Arc<Semaphore>>,
    failing: Arc<std::sync::atomic::AtomicBool>,
    lifetime: Option<Duration>,
    refresh_in: Option<Duration>,
}

impl Endpoint {
    fn lifetime(mut self, lifetime: Duration) -> Self {
        self.lifetime = Some(lifetime);
        self
    }

    fn held(mut self) -> (Self, Arc<Semaphore>) {
        let gate = Arc::new(Semaphore::new(0));
        self.gate = Some(gate.clone());
        (self, gate)
    }

    fn fail(&self, failing: bool) {
        self.failing.store(failing, Ordering::SeqCst);
    }

    fn count(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }
}

impl TokenProvider for Endpoint {
    fn token<'a>(&'a self, request: &'a TokenRequest) -> TokenFuture<'a> {
        Box::pin(async move {
            let n = self.requests.fetch_add(1, Ordering::SeqCst) + 1;
            if let Some(gate) = &self.gate {
                gate.acquire().await.unwrap().forget();
            }
            if self.failing.load(Ordering::SeqCst) {
                return Err(TokenError::failed(
                    "test endpoint",
                    ErrorClass::Transient,
                    std::io::Error::other("503 from the token endpoint"),
                ));
            }
            let name = format!(
                "{}#{n}{}",
                request.tenant_id().unwrap_or("home"),
                request.claims_json().map_or("", |_| "+claims")
            );
            let token = AccessToken::new(name, self.lifetime.unwrap_or(Duration::from_secs(3600)));
            Ok(match self.refresh_in {
                Some(after) => token.refresh_in(after),
                None => token,
            })
        })
    }
}

fn graph() -> TokenRequest {
    TokenRequest::new(["https://graph.microsoft.com/.default"]).tenant("contoso")
}

async fn secret(cache: &impl TokenProvider, request: &TokenRequest) -> String {
    cache.token(request).await.unwrap().secret().to_owned()
}

/// Lets spawned background work run (paused clock: no time passes).
async fn settle() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn tokens_are_refreshed_five_minutes_before_expiry_or_at_refresh_in() {
    let endpoint = Endpoint::default();
    let cache = CachingProvider::new(endpoint.clone());
    assert_eq!(secret(&cache, &graph()).await, "contoso#1");
    tokio::time::advance(Duration::from_secs(3299)).await;
    assert_eq!(secret(&cache, &graph()).await, "contoso#1");
    settle().await;
    assert_eq!(endpoint.count(), 1, "not yet due");
    tokio::time::advance(Duration::from_secs(2)).await;
    // Due: this call still gets the current token at once; the refresh runs behind it.
    assert_eq!(secret(&cache, &graph()).await, "contoso#1");
    settle().await;
    assert_eq!(endpoint.count(), 2);
    assert_eq!(secret(&cache, &graph()).await, "contoso#2");

    // The provider's refresh_in wins over the buffer.
    let endpoint = Endpoint {
        refresh_in: Some(Duration::from_secs(1800)),
        ..Endpoint::default()
    };
    let cache = CachingProvider::new(endpoint.clone());
    secret(&cache, &graph()).await;
    tokio::time::advance(Duration::from_secs(1799)).await;
    secret(&cache, &graph()).await;
    settle().await;
    assert_eq!(endpoint.count(), 1);
    tokio::time::advance(Duration::from_secs(2)).await;
    secret(&cache, &graph()).await;
    settle().await;
    assert_eq!(endpoint.count(), 2);

    // A short-lived token is refreshed at half its life.
    let endpoint = Endpoint::default().lifetime(Duration::from_secs(60));
    let cache = CachingProvider::with_policy(endpoint.clone(), RefreshPolicy::default());
    secret(&cache, &graph()).await;
    tokio::time::advance(Duration::from_secs(29)).await;
    secret(&cache, &graph()).await;
    settle().await;
    assert_eq!(endpoint.count(), 1);
    tokio::time::advance(Duration::from_secs(2)).await;
    secret(&cache, &graph()).await;
    settle().await;
    assert_eq!(endpoint.count(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_hundred_callers_during_a_refresh_make_one_request_and_none_waits() {
    let (endpoint, gate) = Endpoint::default().held();
    let cache = CachingProvider::new(endpoint.clone());
    gate.add_permits(1);
    assert_eq!(secret(&cache, &graph()).await, "contoso#1");
    tokio::time::advance(Duration::from_secs(3400)).await;
    // The endpoint now holds every request until told: callers that waited for the
    // refresh would never finish.
    let callers: Vec<_> = (0..100)
        .map(|_| {
            let cache = cache.clone();
            tokio::spawn(async move { secret(&cache, &graph()).await })
        })
        .collect();
    for caller in callers {
        let got = tokio::time::timeout(Duration::from_secs(1), caller)
            .await
            .expect("a caller waited for the refresh")
            .unwrap();
        assert_eq!(got, "contoso#1");
    }
    assert_eq!(endpoint.count(), 2, "one refresh request for 100 callers");
    gate.add_permits(1);
    settle().await;
    assert_eq!(secret(&cache, &graph()).await, "contoso#2");
    assert_eq!(endpoint.count(), 2);
}

#[tokio::test(start_paused = true)]
async fn concurrent_first_requests_share_one_fetch() {
    let (endpoint, gate) = Endpoint::default().held();
    let cache = CachingProvider::new(endpoint.clone());
    let callers: Vec<_> = (0..50)
        .map(|_| {
            let cache = cache.clone();
            tokio::spawn(async move { secret(&cache, &graph()).await })
        })
        .collect();
    settle().await;
    gate.add_permits(1);
    for caller in callers {
        assert_eq!(caller.await.unwrap(), "contoso#1");
    }
    assert_eq!(endpoint.count(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_failing_endpoint_keeps_the_old_token_until_it_expires_then_fails_clearly() {
    let endpoint = Endpoint::default();
    let cache = CachingProvider::with_policy(
        endpoint.clone(),
        RefreshPolicy::default().with_retry_every(Duration::from_secs(30)),
    );
    secret(&cache, &graph()).await;
    endpoint.fail(true);
    tokio::time::advance(Duration::from_secs(3400)).await;
    assert_eq!(secret(&cache, &graph()).await, "contoso#1");
    settle().await;
    assert_eq!(cache.stats().failed_refreshes, 1);
    // Retried every 30 s, not on every call.
    for _ in 0..10 {
        assert_eq!(secret(&cache, &graph()).await, "contoso#1");
        settle().await;
    }
    assert_eq!(endpoint.count(), 2);
    tokio::time::advance(Duration::from_secs(31)).await;
    assert_eq!(secret(&cache, &graph()).await, "contoso#1");
    settle().await;
    assert_eq!(endpoint.count(), 3);
    // Expired: no stale token is ever served.
    tokio::time::advance(Duration::from_secs(200)).await;
    let error = cache.token(&graph()).await.unwrap_err();
    assert_eq!(error.class(), ErrorClass::Transient);
    assert!(error.to_string().contains("test endpoint"), "{error}");
    // Back: the next call fetches a new one.
    endpoint.fail(false);
    assert!(secret(&cache, &graph()).await.starts_with("contoso#"));
}

#[tokio::test(start_paused = true)]
async fn a_claims_challenge_bypasses_the_cache_and_its_token_replaces_the_cached_one() {
    let endpoint = Endpoint::default();
    let cache = CachingProvider::new(endpoint.clone());
    assert_eq!(secret(&cache, &graph()).await, "contoso#1");
    let challenged = graph().claims(r#"{"access_token":{"acrs":{"essential":true,"value":"c1"}}}"#);
    assert_eq!(secret(&cache, &challenged).await, "contoso#2+claims");
    assert_eq!(
        secret(&cache, &challenged).await,
        "contoso#3+claims",
        "never cached"
    );
    assert_eq!(secret(&cache, &graph()).await, "contoso#3+claims");
}

#[tokio::test(start_paused = true)]
async fn one_tenants_token_is_never_served_for_another() {
    let endpoint = Endpoint::default();
    let cache = CachingProvider::new(endpoint.clone());
    let scopes = ["https://graph.microsoft.com/.default"];
    let a = TokenRequest::new(scopes).tenant("tenant-a");
    let b = TokenRequest::new(scopes).tenant("tenant-b");
    assert_eq!(secret(&cache, &a).await, "tenant-a#1");
    assert_eq!(secret(&cache, &b).await, "tenant-b#2");
    assert_eq!(secret(&cache, &TokenRequest::new(scopes)).await, "home#3");
    for _ in 0..3 {
        assert_eq!(secret(&cache, &a).await, "tenant-a#1");
        assert_eq!(secret(&cache, &b).await, "tenant-b#2");
    }
    // Scopes in another order are the same key; other scopes are not.
    let both = TokenRequest::new(["Mail.Read", "User.Read"]).tenant("tenant-a");
    let reversed = TokenRequest::new(["User.Read", "Mail.Read"]).tenant("tenant-a");
    assert_eq!(secret(&cache, &both).await, "tenant-a#4");
    assert_eq!(secret(&cache, &reversed).await, "tenant-a#4");
    assert_eq!(cache.stats().requests, 4);
}

#[tokio::test(start_paused = true)]
async fn the_cache_is_bounded() {
    let endpoint = Endpoint::default();
    let cache = CachingProvider::new(endpoint.clone()).max_entries(2);
    for tenant in ["a", "b", "c"] {
        secret(&cache, &TokenRequest::new(["s"]).tenant(tenant)).await;
    }
    assert_eq!(endpoint.count(), 3);
    // One of the first two was evicted to make room.
    secret(&cache, &TokenRequest::new(["s"]).tenant("a")).await;
    secret(&cache, &TokenRequest::new(["s"]).tenant("b")).await;
    assert!(endpoint.count() >= 4, "a key was evicted");
    assert!(format!("{cache:?}").contains("entries: 2"), "{cache:?}");
}

#[tokio::test]
async fn a_chain_goes_past_unavailable_providers_and_stops_at_a_failure() {
    let unavailable = || {
        from_fn(|_: &TokenRequest| async {
            Err(TokenError::unavailable(
                "environment",
                "AZURE_CLIENT_ID is not set",
            ))
        })
    };
    let fixed = |s: &'static str| {
        from_fn(
            move |_: &TokenRequest| async move { Ok(AccessToken::new(s, Duration::from_secs(60))) },
        )
    };
    let failing = || {
        from_fn(|_: &TokenRequest| async {
            Err(TokenError::failed(
                "client secret",
                ErrorClass::Permanent,
                std::io::Error::other("invalid_client"),
            ))
        })
    };
    let chain = ProviderChain::new()
        .then(unavailable())
        .then(fixed("second"));
    assert_eq!(secret(&chain, &graph()).await, "second");
    // A provider that fails does not fall back to another identity.
    let chain = ProviderChain::new()
        .then(failing())
        .then(fixed("other identity"));
    let error = chain.token(&graph()).await.unwrap_err();
    assert_eq!(error.class(), ErrorClass::Permanent);
    assert!(std::error::Error::source(&error).is_some());
    // None available: every reason, in order.
    let chain = ProviderChain::new().then(unavailable()).then(unavailable());
    let error = chain.token(&graph()).await.unwrap_err();
    assert!(matches!(&error, TokenError::NoneAvailable { reasons } if reasons.len() == 2));
    assert!(error.to_string().contains("AZURE_CLIENT_ID"));
}

#[test]
fn secrets_stay_out_of_debug_and_reasons_are_bounded() {
    let token = AccessToken::new("eyJhbGciOi.secret.part", Duration::from_secs(60));
    assert!(!format!("{token:?}").contains("secret.part"));
    let request = graph().claims("{\"sensitive\":1}");
    assert!(!format!("{request:?}").contains("sensitive"));
    let long = TokenError::unavailable("x", "é".repeat(2_000));
    assert!(long.to_string().len() < 700);
}
