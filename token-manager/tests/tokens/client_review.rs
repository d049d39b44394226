//! What an outside review of the token client reproduced, each fixed: the App Service
//! identity header in `Debug`, `..` as a tenant, plain-http authorities and look-alike
//! loopback redirects, `clear()` undone by a refresh in flight, a challenged token not
//! replacing the refused one, two requests at once for a key, `refresh_in: 0`, Entra
//! ID's claim names, unbounded JWKS errors, and multi-tenant discovery documents.
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use keel_token_manager::client::{
    AccessToken, Authority, AuthorizationCodeClient, CachingProvider, ClientSecretCredential,
    ManagedIdentitySource, RemoteJwks, TokenProvider, TokenRequest, environment_credential,
    from_fn,
};
use keel_token_manager::{Algorithm, KeyRing, ValidationError, Validator};

#[test]
fn the_app_service_identity_header_stays_out_of_debug() {
    let source = ManagedIdentitySource::AppService {
        endpoint: "http://127.0.0.1:41741/msi/token".into(),
        header: "TOP-SECRET-IDENTITY-HEADER".into(),
    };
    let shown = format!("{source:?}");
    assert!(!shown.contains("TOP-SECRET-IDENTITY-HEADER"), "{shown}");
}

#[test]
fn tenants_that_would_change_the_url_path_are_refused() {
    for tenant in ["..", ".", ".contoso", "contoso.", "a..b"] {
        let c = ClientSecretCredential::new(Authority::AzurePublic, tenant, "app", "s");
        assert!(c.is_err(), "tenant {tenant:?} accepted");
    }
    assert!(
        ClientSecretCredential::new(
            Authority::AzurePublic,
            "contoso.onmicrosoft.com",
            "app",
            "s"
        )
        .is_ok()
    );
}

#[test]
fn plain_http_authorities_and_look_alike_loopback_redirects_are_refused() {
    let vars = |name: &str| match name {
        "AZURE_TENANT_ID" => Some("contoso".to_owned()),
        "AZURE_CLIENT_ID" => Some("app".to_owned()),
        "AZURE_CLIENT_SECRET" => Some("s".to_owned()),
        "AZURE_AUTHORITY_HOST" => Some("http://login.example".to_owned()),
        _ => None,
    };
    let env = environment_credential(vars);
    let c = AuthorizationCodeClient::new(
        Authority::AzurePublic,
        "contoso",
        "app",
        "http://localhost.evil.example/cb",
        Some("secret".into()),
    );
    assert!(env.is_err(), "http:// authority host accepted");
    assert!(c.is_err(), "look-alike loopback redirect accepted");
}

fn counting(
    lifetimes: Vec<u64>,
    delay: Duration,
) -> (impl TokenProvider + 'static, Arc<AtomicU64>, Arc<AtomicU64>) {
    let n = Arc::new(AtomicU64::new(0));
    let inflight = Arc::new(AtomicU64::new(0));
    let max = Arc::new(AtomicU64::new(0));
    let (n2, inf2, max2) = (n.clone(), inflight, max.clone());
    let p = from_fn(move |_r: &TokenRequest| {
        let i = n2.fetch_add(1, Ordering::SeqCst);
        let life = lifetimes[(i as usize).min(lifetimes.len() - 1)];
        let (inf, max) = (inf2.clone(), max2.clone());
        async move {
            let now = inf.fetch_add(1, Ordering::SeqCst) + 1;
            max.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(delay).await;
            inf.fetch_sub(1, Ordering::SeqCst);
            Ok(AccessToken::new(
                format!("t{}", i + 1),
                Duration::from_secs(life),
            ))
        }
    });
    (p, n, max)
}

async fn settle() {
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn clear_during_a_refresh_does_not_bring_its_token_back() {
    let (p, n, _) = counting(vec![3600], Duration::from_secs(5));
    let cache = CachingProvider::new(p);
    let req = TokenRequest::new(["s"]).tenant("contoso");
    assert_eq!(cache.token(&req).await.unwrap().secret(), "t1");
    tokio::time::advance(Duration::from_secs(3400)).await; // past refresh_at
    assert_eq!(cache.token(&req).await.unwrap().secret(), "t1"); // starts bg refresh
    settle().await;
    cache.clear(); // sign-out / credential change
    tokio::time::advance(Duration::from_secs(6)).await;
    settle().await;
    let after = cache.token(&req).await.unwrap();
    assert_eq!(
        after.secret(),
        "t3",
        "a token fetched before clear() came back"
    );
    assert_eq!(n.load(Ordering::SeqCst), 3);
}

#[tokio::test(start_paused = true)]
async fn a_challenged_token_replaces_the_refused_one_even_if_it_expires_sooner() {
    // Entra randomises lifetimes (60-90 min): the challenged token can expire sooner.
    let (p, _, _) = counting(vec![5400, 3700], Duration::ZERO);
    let cache = CachingProvider::new(p);
    let req = TokenRequest::new(["s"]).tenant("contoso");
    assert_eq!(cache.token(&req).await.unwrap().secret(), "t1");
    let challenged = req
        .clone()
        .claims(r#"{"access_token":{"nbf":{"essential":true,"value":"1"}}}"#);
    assert_eq!(cache.token(&challenged).await.unwrap().secret(), "t2");
    let next = cache.token(&req).await.unwrap();
    assert_eq!(next.secret(), "t2", "the refused token is still served");
}

#[tokio::test(start_paused = true)]
async fn a_caller_whose_token_expired_waits_for_the_refresh_under_way() {
    // 100 s token (refresh at 50 s), endpoint takes 60 s.
    let (p, n, max) = counting(vec![100], Duration::from_secs(60));
    let cache = Arc::new(CachingProvider::new(p));
    let req = TokenRequest::new(["s"]);
    cache.token(&req).await.unwrap();
    tokio::time::advance(Duration::from_secs(55)).await;
    cache.token(&req).await.unwrap(); // background refresh starts
    settle().await;
    tokio::time::advance(Duration::from_secs(50)).await; // token expired, refresh still running
    let c2 = cache.clone();
    let r2 = req.clone();
    let h = tokio::spawn(async move { c2.token(&r2).await.map(|t| t.secret().to_owned()) });
    settle().await;
    tokio::time::advance(Duration::from_secs(61)).await;
    assert_eq!(h.await.unwrap().unwrap(), "t2", "waited for the refresh");
    assert_eq!(
        max.load(Ordering::SeqCst),
        1,
        "one request at a time per key"
    );
    assert_eq!(n.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn refresh_in_zero_does_not_make_every_call_a_request() {
    let n = Arc::new(AtomicU64::new(0));
    let n2 = n.clone();
    let p = from_fn(move |_r: &TokenRequest| {
        n2.fetch_add(1, Ordering::SeqCst);
        async move { Ok(AccessToken::new("t", Duration::from_secs(3600)).refresh_in(Duration::ZERO)) }
    });
    let cache = CachingProvider::new(p);
    let req = TokenRequest::new(["s"]);
    for _ in 0..100 {
        cache.token(&req).await.unwrap();
        settle().await;
    }
    assert_eq!(
        n.load(Ordering::SeqCst),
        1,
        "refresh_in: 0 made every call a request"
    );
}

#[test]
fn entra_id_access_tokens_validate() {
    // Entra v2 access token claims: no jti (uti instead), no client_id (azp instead).
    let ring = KeyRing::new(crate::pem_key("rsa", Algorithm::RS256));
    let v = Validator::from_jwks(
        &ring.jwks(),
        "https://login.microsoftonline.com/tid/v2.0",
        "api://orders",
    )
    .unwrap()
    .accept_types(&["JWT"]);
    let now = crate::now();
    let claims = serde_json::json!({
        "aud": "api://orders", "iss": "https://login.microsoftonline.com/tid/v2.0",
        "iat": now, "nbf": now, "exp": now + 3600, "azp": "client-app", "azpacr": "1",
        "oid": "o", "sub": "s", "tid": "tid", "uti": "u", "ver": "2.0", "scp": "Orders.Read"
    });
    let token = crate::forge(
        jsonwebtoken::Algorithm::RS256,
        Some("JWT"),
        Some("rsa"),
        &claims,
    );
    let claims = v.validate(&token).unwrap();
    assert_eq!(claims.client_id, "client-app");
    assert_eq!(claims.jti, "u");
}

// Tiny HTTP server for discovery / JWKS.
async fn serve(routes: Vec<(&'static str, String)>) -> String {
    use axum::routing::get;
    let mut app = axum::Router::new();
    for (path, body) in routes {
        app = app.route(
            path,
            get(move || async move { ([("content-type", "application/json")], body) }),
        );
    }
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    format!("http://{addr}")
}

#[tokio::test]
async fn jwks_errors_are_bounded_and_multi_tenant_templates_refused() {
    let big = serde_json::json!({"keys": "A".repeat(200_000)}).to_string();
    let base = serve(vec![
        ("/bad", big),
        ("/x/.well-known/openid-configuration", String::new()),
    ])
    .await;
    let err = RemoteJwks::from_uri(&format!("{base}/bad"))
        .await
        .unwrap_err();
    let msg = format!("{}", std::error::Error::source(&err).unwrap());
    assert!(msg.len() < 1_000, "JWKS error of {} bytes", msg.len());

    let ring = KeyRing::new(crate::pem_key("rsa", Algorithm::RS256));
    let jwks = ring.jwks().to_json();
    let base2 = {
        // discovery shaped like Entra's /common/v2.0 document
        let placeholder = "PLACEHOLDER";
        let b = serve(vec![(
            "/common/v2.0/.well-known/openid-configuration",
            placeholder.into(),
        )])
        .await;
        drop(b);
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let base = format!("http://{addr}");
        let doc = serde_json::json!({
            "issuer": "https://login.microsoftonline.com/{tenantid}/v2.0",
            "jwks_uri": format!("{base}/keys"),
        })
        .to_string();
        use axum::routing::get;
        let app = axum::Router::new()
            .route(
                "/common/v2.0/.well-known/openid-configuration",
                get(move || async move { doc }),
            )
            .route("/keys", get(move || async move { jwks }));
        tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
        base
    };
    // A template naming another host than the one asked: refused, not returned as is.
    let refused = RemoteJwks::discover(&format!("{base2}/common/v2.0")).await;
    assert!(refused.is_err());
}

/// Entra ID's `common` discovery names the template
/// `https://login.microsoftonline.com/{tenantid}/v2.0`; every tenant's tokens are signed
/// by the same keys, so the tenant is what keeps another tenant's tokens out.
#[tokio::test]
async fn a_multi_tenant_issuer_template_is_checked_against_each_tokens_tenant() {
    const T1: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
    const T2: &str = "9188040d-6c67-4c5b-b112-36a304b66dad";
    let ring = KeyRing::new(crate::pem_key("rsa", Algorithm::RS256));
    let jwks = ring.jwks().to_json();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let doc = serde_json::json!({
        "issuer": format!("{base}/{{tenantid}}/v2.0"),
        "jwks_uri": format!("{base}/keys"),
    })
    .to_string();
    use axum::routing::get;
    let app = axum::Router::new()
        .route(
            "/common/v2.0/.well-known/openid-configuration",
            get(move || async move { doc }),
        )
        .route("/keys", get(move || async move { jwks }));
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let (remote, issuer) = RemoteJwks::discover(&format!("{base}/common/v2.0"))
        .await
        .unwrap();
    assert_eq!(issuer, format!("{base}/{{tenantid}}/v2.0"));
    let token = |iss_tenant: &str, tid: Option<&str>| {
        let mut claims = crate::claims(crate::now() + 600);
        claims["iss"] = serde_json::json!(format!("{base}/{iss_tenant}/v2.0"));
        claims["aud"] = serde_json::json!("api://orders");
        if let Some(tid) = tid {
            claims["tid"] = serde_json::json!(tid);
        }
        crate::forge(
            jsonwebtoken::Algorithm::RS256,
            Some("JWT"),
            Some("rsa"),
            &claims,
        )
    };
    let validator = |v: Validator| v.accept_types(&["JWT"]);
    let from_template = Validator::from_remote(remote, issuer, "api://orders");
    let only_t1 = validator(from_template.clone().tenants([T1]));
    let claims = only_t1.validate_fresh(&token(T1, Some(T1))).await.unwrap();
    assert_eq!(claims.tid.as_deref(), Some(T1));
    // Upper-case GUIDs are the same tenant.
    assert!(
        only_t1
            .validate(&token(&T1.to_uppercase(), Some(&T1.to_uppercase())))
            .is_ok()
    );
    // Another tenant, a token whose iss and tid disagree, a tid that is no tenant id,
    // no tid: refused.
    for (iss, tid) in [
        (T2, Some(T2)),
        (T2, Some(T1)),
        (T1, Some(T2)),
        ("x", Some("x")),
        (T1, None),
        ("common", Some(T1)),
    ] {
        assert_eq!(
            only_t1.validate(&token(iss, tid)),
            Err(ValidationError::WrongIssuer),
            "{iss} {tid:?}"
        );
    }
    // Without a tenant policy a template takes nobody; any_tenant takes any tenant's
    // well-formed token, still refusing a mismatched one.
    let unset = validator(from_template.clone());
    assert_eq!(
        unset.validate(&token(T1, Some(T1))),
        Err(ValidationError::WrongIssuer)
    );
    let any = validator(from_template.any_tenant());
    assert!(any.validate(&token(T2, Some(T2))).is_ok());
    assert_eq!(
        any.validate(&token(T2, Some(T1))),
        Err(ValidationError::WrongIssuer)
    );
    // A template on another host than the one asked is refused at discovery (above:
    // jwks_errors_are_bounded_and_multi_tenant_templates_refused).
}

/// The issuer's `Cache-Control: max-age` decides when its keys are fetched again (in the
/// background, the current keys serving meanwhile); without it they are kept for hours.
#[tokio::test]
async fn jwks_are_fetched_again_when_their_cache_control_max_age_passes() {
    use axum::http::header;
    use axum::routing::get;
    let ring = KeyRing::new(crate::pem_key("rsa", Algorithm::RS256));
    let jwks = ring.jwks().to_json();
    let (short, none) = (jwks.clone(), jwks);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let app = axum::Router::new()
        .route(
            "/short",
            get(move || async move { ([(header::CACHE_CONTROL, "public, max-age=1")], short) }),
        )
        .route("/none", get(move || async move { none }));
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let token = crate::forge(
        jsonwebtoken::Algorithm::RS256,
        Some("at+jwt"),
        Some("rsa"),
        &crate::claims(crate::now() + 600),
    );
    for (path, refetched) in [("short", true), ("none", false)] {
        let remote = RemoteJwks::from_uri(&format!("{base}/{path}"))
            .await
            .unwrap()
            .min_refresh_interval(Duration::from_millis(100));
        let validator = Validator::from_remote(remote.clone(), crate::ISSUER, crate::AUDIENCE);
        validator.validate_fresh(&token).await.unwrap();
        assert_eq!(remote.fetches(), 1);
        tokio::time::sleep(Duration::from_millis(1_100)).await;
        // Served at once with the keys at hand; the fetch runs behind.
        validator.validate_fresh(&token).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(remote.fetches(), if refetched { 2 } else { 1 }, "{path}");
    }
}

/// "Never retry" (`Duration::MAX`) or a provider's huge throttling delay must not
/// overflow the clock in the refresh task (review finding: it panicked, and the backoff
/// was lost).
#[tokio::test(start_paused = true)]
async fn a_huge_retry_delay_does_not_overflow() {
    use keel_token_manager::client::{AccessToken, RefreshPolicy, TokenError, from_fn};
    for policy in [
        RefreshPolicy::default().with_retry_every(Duration::MAX),
        RefreshPolicy::default(),
    ] {
        let n = Arc::new(AtomicU64::new(0));
        let counter = n.clone();
        let provider = from_fn(move |_: &TokenRequest| {
            let k = counter.fetch_add(1, Ordering::SeqCst);
            async move {
                if k == 0 {
                    return Ok(AccessToken::new("first", Duration::from_secs(3600)));
                }
                Err(TokenError::failed(
                    "entra",
                    keel_resilience::ErrorClass::Throttled {
                        retry_after: Some(Duration::MAX),
                    },
                    std::io::Error::other("429"),
                ))
            }
        });
        let cache = CachingProvider::with_policy(provider, policy);
        cache.token(&TokenRequest::new(["x"])).await.unwrap();
        tokio::time::advance(Duration::from_secs(3300)).await;
        for _ in 0..5 {
            cache.token(&TokenRequest::new(["x"])).await.unwrap();
            for _ in 0..10 {
                tokio::task::yield_now().await;
            }
        }
        assert_eq!(
            n.load(Ordering::SeqCst),
            2,
            "one failed refresh, then the wait"
        );
        assert_eq!(cache.stats().failed_refreshes, 1);
    }
    // A lifetime past the clock is a long one, not a panic.
    let forever = AccessToken::new("t", Duration::MAX).refresh_in(Duration::MAX);
    assert!(forever.expires_in() > Duration::from_secs(3600));
}
