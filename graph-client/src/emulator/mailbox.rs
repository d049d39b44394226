//! Outlook mailboxes: each user's messages, and the limits Graph documents for Outlook
//! resources — at most four concurrent requests per app per mailbox (more get 429
//! `ApplicationThrottled`, "MailboxConcurrency") and 10,000 requests per 10 minutes.
//! The emulator counts what it sees, so that tests can check a client keeps to them.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path, Request, State as Shared};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::get;
use serde_json::{Map, Value, json};

use super::State;
use super::call::{Call, access};

/// Concurrent requests per app per mailbox.
pub(crate) const CONCURRENCY: usize = 4;
/// Requests per app per mailbox per window.
pub(crate) const REQUESTS: usize = 10_000;
pub(crate) const WINDOW: Duration = Duration::from_secs(600);

/// The path segments after `/users/{id}/` that are Outlook resources: the client's list.
use crate::budget::OUTLOOK;

const READ_MAIL: &[&str] = &[
    "Mail.Read",
    "Mail.ReadBasic",
    "Mail.ReadBasic.All",
    "Mail.ReadWrite",
];
const MESSAGE_FIELDS: &[&str] = &["id", "subject", "isRead"];

/// What the emulator has seen of each mailbox.
#[derive(Debug, Default)]
pub(crate) struct Mailboxes {
    seen: Mutex<HashMap<String, Seen>>,
}

#[derive(Debug, Default)]
struct Seen {
    in_flight: usize,
    peak: usize,
    recent: VecDeque<Instant>,
    requests: u64,
    refused: u64,
}

/// The counts of one mailbox.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MailboxStats {
    /// The most requests in flight at once.
    pub peak_in_flight: usize,
    /// Requests received.
    pub requests: u64,
    /// Requests refused with 429 for going over a limit.
    pub throttled: u64,
}

impl Mailboxes {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Seen>> {
        self.seen.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The counts of mailbox `user` of `tenant`, over every app (the peak is the
    /// highest of one app's).
    pub(crate) fn stats(&self, tenant: &str, user: &str) -> MailboxStats {
        let mut stats = MailboxStats::default();
        for (key, seen) in self.lock().iter() {
            let mut parts = key.splitn(3, '/');
            if parts.next() == Some(tenant) && parts.nth(1) == Some(user) {
                stats.peak_in_flight = stats.peak_in_flight.max(seen.peak);
                stats.requests += seen.requests;
                stats.throttled += seen.refused;
            }
        }
        stats
    }
}

/// The mailbox a path addresses (`/{version}/users/{id}/messages…`), as `tenant/user`.
fn mailbox_of(state: &State, request: &Request) -> Option<String> {
    let mut segments = request.uri().path().trim_start_matches('/').split('/');
    let _version = segments.next()?;
    if !segments.next()?.eq_ignore_ascii_case("users") {
        return None;
    }
    let user = crate::request::percent_decode(segments.next()?, false)?;
    let resource = segments.next()?.to_ascii_lowercase();
    if !OUTLOOK.contains(&resource.as_str()) {
        return None;
    }
    let token = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))?;
    let claims = state.validator.validate(token).ok()?;
    let tid = claims.tid.as_deref()?.to_ascii_lowercase();
    let tenant = state.tenant(&tid)?;
    let id = tenant
        .user(&user)
        .and_then(|u| u.get("id").and_then(Value::as_str).map(str::to_owned))
        .unwrap_or_else(|| user.to_ascii_lowercase());
    Some(format!("{tid}/{}/{id}", claims.client_id))
}

/// The middleware: counts requests in flight per mailbox (latency faults included) and
/// refuses those over the limits as Outlook does.
pub(crate) async fn admit(
    Shared(state): Shared<Arc<State>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(mailbox) = mailbox_of(&state, &request) else {
        return next.run(request).await;
    };
    let over = {
        let mut seen = state.mailboxes.lock();
        let entry = seen.entry(mailbox.clone()).or_default();
        entry.requests += 1;
        let now = Instant::now();
        while entry
            .recent
            .front()
            .is_some_and(|t| now.duration_since(*t) >= WINDOW)
        {
            entry.recent.pop_front();
        }
        let over = if entry.in_flight >= CONCURRENCY {
            Some("Application is over its MailboxConcurrency limit.")
        } else if entry.recent.len() >= REQUESTS {
            Some("Application is over its MailboxRequestLimit limit.")
        } else {
            None
        };
        if over.is_some() {
            entry.refused += 1;
        } else {
            entry.in_flight += 1;
            entry.peak = entry.peak.max(entry.in_flight);
            entry.recent.push_back(now);
        }
        over
    };
    if let Some(message) = over {
        let mut response = super::graph::error(
            &state,
            request.headers(),
            StatusCode::TOO_MANY_REQUESTS,
            "ApplicationThrottled",
            message,
        );
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return response;
    }
    // Counted down even when the client goes away mid-request.
    struct Leave(Arc<State>, String);
    impl Drop for Leave {
        fn drop(&mut self) {
            if let Some(entry) = self.0.mailboxes.lock().get_mut(&self.1) {
                entry.in_flight = entry.in_flight.saturating_sub(1);
            }
        }
    }
    let _leave = Leave(state.clone(), mailbox);
    next.run(request).await
}

access!(Mail, READ_MAIL, MESSAGE_FIELDS);

pub(crate) fn routes() -> Router<Arc<State>> {
    Router::new().route("/{version}/users/{id}/messages", get(list_messages))
}

async fn list_messages(call: Call<Mail>, Path((_, id)): Path<(String, String)>) -> Response {
    let tenant = call.tenant();
    let Some(user) = tenant.user(&id) else {
        return call.not_found(&id);
    };
    let user_id = user.get("id").and_then(Value::as_str).unwrap_or_default();
    // A delegated token reads its own user's mailbox only (a shared mailbox needs a
    // permission the emulator does not grant).
    let delegated_user = call
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .and_then(|t| call.state.validator.validate(t).ok())
        .filter(|claims| claims.scope.is_some())
        .map(|claims| claims.sub);
    if delegated_user.is_some_and(|sub| sub != user_id) {
        return super::graph::error(
            &call.state,
            &call.headers,
            StatusCode::FORBIDDEN,
            "ErrorAccessDenied",
            "Access is denied. Check credentials and try again.",
        );
    }
    let messages: Vec<Map<String, Value>> = (1..=3)
        .map(|n| {
            let mut message = Map::new();
            message.insert("id".into(), json!(format!("AAMk{user_id}-{n}")));
            message.insert("subject".into(), json!(format!("Message {n}")));
            message.insert("isRead".into(), json!(n == 1));
            message.insert("receivedDateTime".into(), json!(format!("2026-11-0{n}T08:00:00Z")));
            message.insert(
                "from".into(),
                json!({"emailAddress": {"name": "Emulator", "address": format!("noreply@{}", tenant.seed.domain)}}),
            );
            message.insert("bodyPreview".into(), json!("Sent by the Graph emulator."));
            message
        })
        .collect();
    let messages: Vec<&Map<String, Value>> = messages.iter().collect();
    call.collection(&format!("users/{id}/messages"), &messages)
}
