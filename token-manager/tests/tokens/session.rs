//! Signed-in users' refresh tokens: sealed, rotated, redeemed one at a time, dropped
//! when refused, and never revived by a redemption that outlived a sign-out.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keel_resilience::{Classify, ErrorClass};
use keel_token_manager::SealingKeys;
use keel_token_manager::client::{
    GrantFuture, RefreshGrant, SignedInUsers, TokenError, TokenGrant, TokenProvider, TokenRequest,
    read_token_grant,
};

fn grant(access: &str, refresh: Option<&str>) -> TokenGrant {
    let body = match refresh {
        Some(r) => format!(
            r#"{{"access_token":"{access}","token_type":"Bearer","expires_in":3600,"refresh_token":"{r}"}}"#
        ),
        None => format!(r#"{{"access_token":"{access}","token_type":"Bearer","expires_in":3600}}"#),
    };
    read_token_grant(200, Some("application/json"), None, body.as_bytes()).unwrap()
}

/// A provider that rotates: each refresh token is good once (`rt-<n>` → `rt-<n+1>`);
/// a spent one is reuse (`invalid_grant`). Optionally slow.
#[derive(Clone, Default)]
struct Rotating {
    spent: Arc<Mutex<HashSet<String>>>,
    delay: Option<Duration>,
}

impl RefreshGrant for Rotating {
    fn refresh<'a>(&'a self, refresh_token: &'a str, _: &'a TokenRequest) -> GrantFuture<'a> {
        Box::pin(async move {
            if let Some(delay) = self.delay {
                tokio::time::sleep(delay).await;
            }
            if !self.spent.lock().unwrap().insert(refresh_token.to_owned()) {
                let body =
                    br#"{"error":"invalid_grant","error_description":"AADSTS70008: reused"}"#;
                return Err::<TokenGrant, TokenError>(
                    read_token_grant(400, Some("application/json"), None, body).unwrap_err(),
                );
            }
            let n: u32 = refresh_token.trim_start_matches("rt-").parse().unwrap();
            Ok(grant(&format!("at-{n}"), Some(&format!("rt-{}", n + 1))))
        })
    }
}

fn request() -> TokenRequest {
    TokenRequest::new(["User.Read"])
}

#[tokio::test]
async fn concurrent_requests_for_one_user_never_spend_a_refresh_token_twice() {
    let provider = Rotating {
        delay: Some(Duration::from_millis(20)),
        ..Rotating::default()
    };
    let users = SignedInUsers::new(provider, SealingKeys::generate(1).unwrap());
    assert!(users.keep("alice", &grant("at-0", Some("rt-1"))).unwrap());
    let alice = users.user("alice");
    let calls: Vec<_> = (0..8)
        .map(|_| {
            let alice = alice.clone();
            tokio::spawn(async move { alice.token(&request()).await })
        })
        .collect();
    let mut tokens = Vec::new();
    for call in calls {
        tokens.push(call.await.unwrap().unwrap().secret().to_owned());
    }
    tokens.sort();
    assert_eq!(
        tokens,
        (1..=8).map(|n| format!("at-{n}")).collect::<Vec<_>>()
    );
    assert!(users.is_signed_in("alice"));
}

#[tokio::test]
async fn a_refused_refresh_token_signs_the_user_out() {
    let provider = Rotating::default();
    let users = SignedInUsers::new(provider.clone(), SealingKeys::generate(1).unwrap());
    users.keep("alice", &grant("at-0", Some("rt-1"))).unwrap();
    provider.spent.lock().unwrap().insert("rt-1".into()); // revoked elsewhere
    let error = users.user("alice").token(&request()).await.unwrap_err();
    assert_eq!(error.oauth().unwrap().error, "invalid_grant");
    assert_eq!(error.class(), ErrorClass::Permanent);
    assert!(!users.is_signed_in("alice"));
    let again = users.user("alice").token(&request()).await.unwrap_err();
    assert!(again.to_string().contains("signed-in users"), "{again}");
    assert!(
        std::error::Error::source(&again)
            .unwrap()
            .to_string()
            .contains("sign in again")
    );
}

#[tokio::test]
async fn a_sign_out_during_a_refresh_wins() {
    let provider = Rotating {
        delay: Some(Duration::from_millis(200)),
        ..Rotating::default()
    };
    let users = SignedInUsers::new(provider, SealingKeys::generate(1).unwrap());
    users.keep("alice", &grant("at-0", Some("rt-1"))).unwrap();
    let alice = users.user("alice");
    let pending = tokio::spawn(async move { alice.token(&request()).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    users.sign_out("alice");
    assert!(pending.await.unwrap().is_err(), "no token after sign-out");
    assert!(
        !users.is_signed_in("alice"),
        "the rotated token was not kept"
    );
    // Signed in again while an old redemption ran: the new session stays.
    let users2 = users.clone();
    users.keep("alice", &grant("at-0", Some("rt-10"))).unwrap();
    let token = users2.user("alice").token(&request()).await.unwrap();
    assert_eq!(token.secret(), "at-10");
}

#[tokio::test]
async fn sealed_refresh_tokens_move_between_instances_and_only_to_their_account() {
    let keys = SealingKeys::generate(1).unwrap();
    let provider = Rotating::default();
    let a = SignedInUsers::new(provider.clone(), keys.clone());
    a.keep("alice", &grant("at-0", Some("rt-1"))).unwrap();
    let sealed = a.sealed("alice").unwrap();
    assert!(!String::from_utf8_lossy(&sealed).contains("rt-1"));
    assert!(!format!("{a:?}").contains("rt-1"));
    let b = SignedInUsers::new(provider, keys);
    // Another account cannot take it; altered bytes do not open.
    assert!(b.restore("mallory", &sealed).is_err());
    let mut altered = sealed.clone();
    let last = altered.len() - 1;
    altered[last] ^= 1;
    assert!(b.restore("alice", &altered).is_err());
    b.restore("alice", &sealed).unwrap();
    assert_eq!(
        b.user("alice").token(&request()).await.unwrap().secret(),
        "at-1"
    );
    // A grant without a refresh token keeps nothing.
    assert!(!b.keep("bob", &grant("at-x", None)).unwrap());
    assert!(!b.is_signed_in("bob"));
    // Bounded.
    let small =
        SignedInUsers::new(Rotating::default(), SealingKeys::generate(1).unwrap()).max_accounts(1);
    small.keep("one", &grant("a", Some("rt-1"))).unwrap();
    assert!(small.keep("two", &grant("a", Some("rt-1"))).is_err());
    assert!(
        small.keep("one", &grant("a", Some("rt-2"))).is_ok(),
        "replacing is fine"
    );
}

/// The provider rotates on receipt (as Entra ID does) and answers later: a caller that
/// gives up in between must not lose the rotated token (review finding).
#[derive(Clone)]
struct RotatesThenAnswers {
    current: Arc<Mutex<String>>,
    delay: Duration,
}

impl RefreshGrant for RotatesThenAnswers {
    fn refresh<'a>(&'a self, refresh_token: &'a str, _: &'a TokenRequest) -> GrantFuture<'a> {
        Box::pin(async move {
            let n: u32 = {
                let mut current = self.current.lock().unwrap();
                if *current != refresh_token {
                    let body =
                        br#"{"error":"invalid_grant","error_description":"AADSTS70008: reused"}"#;
                    return Err(
                        read_token_grant(400, Some("application/json"), None, body).unwrap_err()
                    );
                }
                let n = refresh_token.trim_start_matches("rt-").parse().unwrap();
                *current = format!("rt-{}", n + 1);
                n
            };
            tokio::time::sleep(self.delay).await;
            Ok(grant(&format!("at-{n}"), Some(&format!("rt-{}", n + 1))))
        })
    }
}

#[tokio::test]
async fn a_caller_that_gives_up_does_not_lose_the_rotated_refresh_token() {
    let provider = RotatesThenAnswers {
        current: Arc::new(Mutex::new("rt-1".into())),
        delay: Duration::from_millis(300),
    };
    let users = SignedInUsers::new(provider, SealingKeys::generate(1).unwrap());
    users.keep("alice", &grant("at-0", Some("rt-1"))).unwrap();
    let alice = users.user("alice");
    let gave_up = tokio::time::timeout(Duration::from_millis(100), alice.token(&request())).await;
    assert!(gave_up.is_err(), "the caller timed out");
    let next = alice.token(&request()).await;
    assert_eq!(next.unwrap().secret(), "at-2");
    assert!(users.is_signed_in("alice"));
}

#[tokio::test]
async fn restoring_a_stored_copy_never_replaces_the_session_held_here() {
    let provider = Rotating {
        delay: Some(Duration::from_millis(100)),
        ..Rotating::default()
    };
    let users = SignedInUsers::new(provider.clone(), SealingKeys::generate(1).unwrap());
    users.keep("alice", &grant("at-0", Some("rt-1"))).unwrap();
    let stored = users.sealed("alice").unwrap();
    let alice = users.user("alice");
    let pending = {
        let alice = alice.clone();
        tokio::spawn(async move { alice.token(&request()).await })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    // The app restores its (older) copy on every request: a no-op while signed in here.
    assert!(!users.restore("alice", &stored).unwrap());
    assert_eq!(pending.await.unwrap().unwrap().secret(), "at-1");
    assert!(!users.restore("alice", &stored).unwrap());
    assert_eq!(alice.token(&request()).await.unwrap().secret(), "at-2");
    assert!(users.is_signed_in("alice"));
}
