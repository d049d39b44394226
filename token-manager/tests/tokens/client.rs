//! The token client's cache and chain, on tokio's paused clock: proactive refresh
//! timing, one refresh at a time while every caller keeps the valid token, failed
//! refreshes, claims challenges, tenant isolation, bounds.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use keel_resilience::{Classify, ErrorClass};
use keel_token_manager::client::{
    AccessToken, CachingProvider, MAX_RESPONSE_BYTES, ProviderChain, RefreshPolicy, ResponseError,
    TokenError, TokenFuture, TokenProvider, TokenRequest, claims_challenge, from_fn,
    read_token_response,
};
use proptest::prelude::*;
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

fn json(status: u16, body: &str) -> Result<AccessToken, TokenError> {
    read_token_response(
        status,
        Some("application/json; charset=utf-8"),
        None,
        body.as_bytes(),
    )
}

#[tokio::test(start_paused = true)]
async fn token_responses_are_read_as_the_endpoints_send_them() {
    let v2 = json(
        200,
        r#"{"token_type":"Bearer","expires_in":3599,"ext_expires_in":3599,"refresh_in":1799,"access_token":"eyJ0eXAi.v2"}"#,
    )
    .unwrap();
    assert_eq!(v2.secret(), "eyJ0eXAi.v2");
    assert_eq!(v2.expires_in(), Duration::from_secs(3599));
    assert_eq!(
        v2.refresh_at().unwrap() - tokio::time::Instant::now(),
        Duration::from_secs(1799)
    );
    // Entra's v1 endpoint sends the numbers as strings.
    let v1 = json(
        200,
        r#"{"token_type":"bearer","expires_in":"3599","ext_expires_in":"3599","expires_on":"1700000000","resource":"https://graph.microsoft.com","access_token":"eyJ0eXAi.v1"}"#,
    )
    .unwrap();
    assert_eq!(v1.expires_in(), Duration::from_secs(3599));
    for (body, complaint) in [
        (
            r#"{"token_type":"Bearer","expires_in":3599}"#,
            "no access_token",
        ),
        (
            r#"{"token_type":"pop","expires_in":3599,"access_token":"x"}"#,
            "not Bearer",
        ),
        (
            r#"{"token_type":"Bearer","access_token":"x"}"#,
            "expires_in",
        ),
        (
            r#"{"token_type":"Bearer","expires_in":"soon","access_token":"x"}"#,
            "expires_in",
        ),
        (
            r#"{"token_type":"Bearer","expires_in":-5,"access_token":"x"}"#,
            "expires_in",
        ),
        (
            r#"{"token_type":"Bearer","expires_in":3599,"access_token":42}"#,
            "not a usable",
        ),
    ] {
        let error = json(200, body).unwrap_err();
        assert_eq!(error.class(), ErrorClass::Permanent, "{body}");
        let shown = format!(
            "{error} / {:?}",
            std::error::Error::source(&error).map(ToString::to_string)
        );
        assert!(shown.contains(complaint), "{body}: {shown}");
        assert!(!shown.contains("\"x\""), "the token is not echoed: {shown}");
    }
}

#[test]
fn oauth_errors_are_typed_and_classified() {
    let invalid_client = json(
        401,
        r#"{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret provided.","error_codes":[7000215],"timestamp":"2026-11-28 10:00:00Z","trace_id":"0b3c","correlation_id":"9f1e"}"#,
    )
    .unwrap_err();
    assert_eq!(invalid_client.class(), ErrorClass::Permanent);
    let oauth = invalid_client.oauth().unwrap();
    assert_eq!(oauth.error, "invalid_client");
    assert_eq!(oauth.error_codes, [7_000_215]);
    assert_eq!(oauth.trace_id.as_deref(), Some("0b3c"));
    assert_eq!(oauth.correlation_id.as_deref(), Some("9f1e"));
    assert!(
        std::error::Error::source(&invalid_client)
            .unwrap()
            .to_string()
            .contains("AADSTS7000215")
    );

    let busy = json(400, r#"{"error":"temporarily_unavailable"}"#).unwrap_err();
    assert_eq!(busy.class(), ErrorClass::Transient);
    let server = json(500, r#"{"error":"server_error"}"#).unwrap_err();
    assert_eq!(server.class(), ErrorClass::Transient);
    let throttled = read_token_response(
        429,
        Some("application/json"),
        Some(Duration::from_secs(7)),
        br#"{"error":"too_many_requests"}"#,
    )
    .unwrap_err();
    assert_eq!(
        throttled.class(),
        ErrorClass::Throttled {
            retry_after: Some(Duration::from_secs(7))
        }
    );
    // An HTML page from a proxy, a truncated success, a huge body.
    let html = read_token_response(
        502,
        Some("text/html"),
        None,
        b"<html><body>Bad Gateway</body></html>",
    )
    .unwrap_err();
    assert_eq!(html.class(), ErrorClass::Transient);
    assert!(html.to_string().contains("token endpoint"));
    let source = std::error::Error::source(&html).unwrap().to_string();
    assert!(
        source.contains("not JSON") && source.contains("text/html"),
        "{source}"
    );
    let truncated = json(
        200,
        r#"{"token_type":"Bearer","expires_in":3599,"access_tok"#,
    )
    .unwrap_err();
    assert_eq!(truncated.class(), ErrorClass::Transient);
    let huge = vec![b' '; MAX_RESPONSE_BYTES + 1];
    let error = read_token_response(200, None, None, &huge).unwrap_err();
    assert!(matches!(
        std::error::Error::source(&error).and_then(|s| s.downcast_ref::<ResponseError>()),
        Some(ResponseError::TooLarge)
    ));
    // A provider's long or control-laden text is bounded and flattened.
    let long = format!(
        r#"{{"error":"invalid_grant","error_description":"{}\n\u0007"}}"#,
        "x".repeat(5_000)
    );
    let error = json(400, &long).unwrap_err();
    let description = error.oauth().unwrap().description.clone().unwrap();
    assert!(
        description.len() < 600 && !description.contains('\n') && !description.contains('\u{7}')
    );
}

#[test]
fn claims_challenges_are_read_from_www_authenticate() {
    // Microsoft's documented CAE challenge.
    let header = r#"Bearer realm="", authorization_uri="https://login.microsoftonline.com/common/oauth2/authorize", client_id="00000003-0000-0000-c000-000000000000", error="insufficient_claims", claims="eyJhY2Nlc3NfdG9rZW4iOnsibmJmIjp7ImVzc2VudGlhbCI6dHJ1ZSwgInZhbHVlIjoiMTYwNDEwNjY1MSJ9fX0=""#;
    assert_eq!(
        claims_challenge(header).as_deref(),
        Some(r#"{"access_token":{"nbf":{"essential":true, "value":"1604106651"}}}"#)
    );
    // Unpadded, and other parameter orders.
    let unpadded = r#"Bearer claims="eyJhY2Nlc3NfdG9rZW4iOnt9fQ", error="insufficient_claims""#;
    assert_eq!(
        claims_challenge(unpadded).as_deref(),
        Some(r#"{"access_token":{}}"#)
    );
    for not_one in [
        r#"Bearer error="invalid_token", claims="eyJhIjoxfQ==""#,
        r#"Bearer error="insufficient_claims""#,
        r#"Bearer error="insufficient_claims", claims="not base64!""#,
        r#"Bearer error="insufficient_claims", claims="WzEsMl0=""#, // [1,2]: not an object
        "",
        "Bearer",
        "Bearer ,,,===\"",
    ] {
        assert_eq!(claims_challenge(not_one), None, "{not_one}");
    }
}

proptest! {
    #[test]
    fn no_token_endpoint_body_makes_the_reader_panic(
        status in 100u16..600,
        body in proptest::collection::vec(any::<u8>(), 0..512),
        structured in "\\{(\"[a-z_]{1,14}\":(\"[^\"]{0,12}\"|-?[0-9]{1,22}|\\[[0-9,]{0,8}\\]|null|true|\\{\\}),?){0,6}\\}",
    ) {
        let _ = read_token_response(status, Some("application/json"), None, &body);
        let _ = read_token_response(status, None, Some(Duration::from_secs(1)), structured.as_bytes());
        let _ = read_token_response(200, None, None, structured.as_bytes());
    }

    #[test]
    fn no_www_authenticate_header_makes_the_parser_panic(header in "\\PC{0,300}", tail in "[a-z=\",\\\\ ]{0,80}") {
        let _ = claims_challenge(&header);
        let _ = claims_challenge(&format!("Bearer error=\"insufficient_claims\", claims=\"{tail}"));
    }
}

#[tokio::test(start_paused = true)]
async fn failed_refreshes_back_off_and_a_throttled_one_waits_for_retry_after() {
    use keel_resilience::retry::Backoff;
    let requests = Arc::new(AtomicU64::new(0));
    let throttled = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (r, t) = (requests.clone(), throttled.clone());
    let endpoint = from_fn(move |_: &TokenRequest| {
        let n = r.fetch_add(1, Ordering::SeqCst) + 1;
        let throttled = t.load(Ordering::SeqCst);
        async move {
            if n == 1 {
                return Ok(AccessToken::new("first", Duration::from_secs(3600)));
            }
            let class = if throttled {
                ErrorClass::Throttled {
                    retry_after: Some(Duration::from_secs(120)),
                }
            } else {
                ErrorClass::Transient
            };
            Err(TokenError::failed(
                "test endpoint",
                class,
                std::io::Error::other("busy"),
            ))
        }
    });
    // Exponential without jitter: 10 s, 20 s, 40 s between failed refreshes.
    let policy = RefreshPolicy::default().with_retry_backoff(Backoff::Exponential {
        base: Duration::from_secs(10),
        max: Duration::from_secs(40),
        jitter: false,
    });
    let cache = CachingProvider::with_policy(endpoint, policy);
    let count = || requests.load(Ordering::SeqCst);
    let poke = |cache: &CachingProvider<_>| {
        let cache = cache.clone();
        async move {
            assert_eq!(secret(&cache, &graph()).await, "first");
            settle().await;
        }
    };
    poke(&cache).await;
    tokio::time::advance(Duration::from_secs(3300)).await;
    poke(&cache).await;
    assert_eq!(count(), 2, "the first refresh failed");
    for (wait, expected) in [(10, 3), (20, 4), (40, 5), (40, 6)] {
        tokio::time::advance(Duration::from_secs(wait - 1)).await;
        poke(&cache).await;
        assert_eq!(count(), expected - 1, "not before {wait} s");
        tokio::time::advance(Duration::from_secs(1)).await;
        poke(&cache).await;
        assert_eq!(count(), expected, "after {wait} s");
    }
    // Throttled: the provider's 120 s win over the 40 s backoff.
    throttled.store(true, Ordering::SeqCst);
    tokio::time::advance(Duration::from_secs(40)).await;
    poke(&cache).await;
    assert_eq!(count(), 7);
    tokio::time::advance(Duration::from_secs(119)).await;
    poke(&cache).await;
    assert_eq!(count(), 7, "Retry-After is honoured");
    tokio::time::advance(Duration::from_secs(1)).await;
    poke(&cache).await;
    assert_eq!(count(), 8);
    assert_eq!(cache.stats().failed_refreshes, 7);
}

/// A writer for a test's own tracing subscriber.
#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn the_background_refresh_logs_in_the_callers_span_without_the_token() {
    use tracing::Instrument as _;
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let endpoint = Endpoint::default();
    let cache = CachingProvider::new(endpoint.clone());
    let first = secret(&cache, &graph()).await;
    endpoint.fail(true);
    tokio::time::advance(Duration::from_secs(3400)).await;
    async {
        assert_eq!(secret(&cache, &graph()).await, first);
    }
    .instrument(tracing::info_span!("orders_sync", job = 42))
    .await;
    settle().await;
    let logged = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let line = logged
        .lines()
        .find(|l| l.contains("token refresh failed"))
        .unwrap_or_else(|| panic!("no refresh failure logged: {logged}"));
    assert!(line.contains("orders_sync{job=42}"), "{line}");
    assert!(!logged.contains(&first), "the token never shows: {logged}");
}
