//! Fault injection by rule: latency, throttling, server errors, dropped connections and
//! malformed bodies, for some paths, some tenants, some number of times or a share of
//! them.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::extract::{Request, State as Shared};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::State;

/// What a matching request gets.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// Answered normally, after this long.
    Latency(Duration),
    /// Answered with this status and Graph's error body, with `Retry-After` when given
    /// (any text: seconds, fractional seconds, an HTTP date, or garbage to test a
    /// client).
    Status {
        /// The status.
        status: StatusCode,
        /// The `Retry-After` header's value.
        retry_after: Option<String>,
    },
    /// Answered 200 with a body cut in the middle of its JSON.
    Malformed,
    /// The connection dropped before an answer: the client sees a transport error.
    Drop,
    /// The request runs (a write is applied), then the connection drops before the
    /// answer: the lost answer behind every "was my write applied?" question.
    LoseAnswer,
    /// Answered with this status and this body, as JSON (a body of your own: a batch
    /// answer with unknown ids, an odd error).
    Body {
        /// The status.
        status: StatusCode,
        /// The body.
        body: String,
    },
}

/// A rule: which requests ([`path`](Self::path) prefix, [`tenant`](Self::tenant)) get
/// which [`Fault`], how many times.
///
/// ```
/// use std::time::Duration;
/// use keel_graph_client::emulator::FaultRule;
///
/// let slow = FaultRule::path("/v1.0/users").latency(Duration::from_millis(20));
/// let throttled = FaultRule::any().throttle("1.5").times(3);
/// # let _ = (slow, throttled);
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct FaultRule {
    path: Option<String>,
    tenant: Option<String>,
    fault: Fault,
    remaining: Option<Arc<AtomicU32>>,
    ratio: Option<(u32, u32, Arc<AtomicU32>)>,
}

impl FaultRule {
    /// Requests whose path starts with `prefix` (`/v1.0/users`, `/{tenant}/oauth2`).
    pub fn path(prefix: &str) -> Self {
        FaultRule {
            path: Some(prefix.to_owned()),
            ..Self::any()
        }
    }

    /// Every request.
    pub fn any() -> Self {
        FaultRule {
            path: None,
            tenant: None,
            fault: Fault::Latency(Duration::ZERO),
            remaining: None,
            ratio: None,
        }
    }

    /// Only requests of this tenant (by the `tid` of their bearer token, or the tenant in
    /// a token endpoint's path).
    pub fn tenant(mut self, tenant_id: &str) -> Self {
        self.tenant = Some(tenant_id.to_ascii_lowercase());
        self
    }

    /// Answer after `delay`.
    pub fn latency(mut self, delay: Duration) -> Self {
        self.fault = Fault::Latency(delay);
        self
    }

    /// Answer 429 with `Retry-After: retry_after`.
    pub fn throttle(mut self, retry_after: &str) -> Self {
        self.fault = Fault::Status {
            status: StatusCode::TOO_MANY_REQUESTS,
            retry_after: Some(retry_after.to_owned()),
        };
        self
    }

    /// Answer `status` (a 503, a 504, a 500).
    pub fn status(mut self, status: StatusCode) -> Self {
        self.fault = Fault::Status {
            status,
            retry_after: None,
        };
        self
    }

    /// Answer 200 with a truncated JSON body.
    pub fn malformed(mut self) -> Self {
        self.fault = Fault::Malformed;
        self
    }

    /// Drop the connection without an answer (the request is not run).
    pub fn drop_connection(mut self) -> Self {
        self.fault = Fault::Drop;
        self
    }

    /// Run the request, then drop the connection instead of answering.
    pub fn lose_answer(mut self) -> Self {
        self.fault = Fault::LoseAnswer;
        self
    }

    /// Answer `status` with `body` (sent as JSON).
    pub fn body(mut self, status: StatusCode, body: &str) -> Self {
        self.fault = Fault::Body {
            status,
            body: body.to_owned(),
        };
        self
    }

    /// Apply to `numerator` of every `denominator` matching requests, spread evenly and
    /// deterministically (`ratio(3, 10)`: 30%, the 4th, 7th and 10th of each ten).
    pub fn ratio(mut self, numerator: u32, denominator: u32) -> Self {
        self.ratio = Some((numerator, denominator.max(1), Arc::new(AtomicU32::new(0))));
        self
    }

    /// Apply to the next `n` matching requests only (default: every one).
    pub fn times(mut self, n: u32) -> Self {
        self.remaining = Some(Arc::new(AtomicU32::new(n)));
        self
    }

    fn matches(&self, path: &str, tenant: Option<&str>) -> bool {
        self.path.as_deref().is_none_or(|p| path.starts_with(p))
            && self
                .tenant
                .as_deref()
                .is_none_or(|t| tenant.is_some_and(|seen| seen.eq_ignore_ascii_case(t)))
    }

    /// Takes one use; false once used up, or when the ratio skips this request.
    fn take(&self) -> bool {
        if let Some((numerator, denominator, seen)) = &self.ratio {
            let n = u64::from(seen.fetch_add(1, Ordering::SeqCst));
            let (num, den) = (u64::from(*numerator), u64::from(*denominator));
            // Applies when the running share (n+1)·num/den passes a whole number.
            if (n + 1) * num / den == n * num / den {
                return false;
            }
        }
        self.remaining.as_ref().is_none_or(|left| {
            left.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
        })
    }
}

/// The emulator's fault rules; the first matching rule with uses left applies.
#[derive(Debug, Default)]
pub struct Faults {
    rules: Mutex<Vec<FaultRule>>,
}

impl Faults {
    /// Adds a rule (after the others).
    pub fn add(&self, rule: FaultRule) {
        self.lock().push(rule);
    }

    /// Removes every rule.
    pub fn clear(&self) {
        self.lock().clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<FaultRule>> {
        self.rules.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn pick(&self, path: &str, tenant: Option<&str>) -> Option<Fault> {
        self.lock()
            .iter()
            .find(|rule| rule.matches(path, tenant) && rule.take())
            .map(|rule| rule.fault.clone())
    }
}

/// The middleware: applies the first matching fault before the route runs.
pub(crate) async fn apply(
    Shared(state): Shared<Arc<State>>,
    request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path().to_owned();
    let tenant = tenant_of(&state, &request, &path);
    match state.faults.pick(&path, tenant.as_deref()) {
        None => next.run(request).await,
        Some(Fault::Latency(delay)) => {
            tokio::time::sleep(delay).await;
            next.run(request).await
        }
        Some(Fault::Status {
            status,
            retry_after,
        }) => {
            let code = match status.as_u16() {
                429 => "TooManyRequests",
                503 => "serviceNotAvailable",
                504 => "gatewayTimeout",
                _ => "generalException",
            };
            let mut response = super::graph::error(
                &state,
                request.headers(),
                status,
                code,
                "The emulator injected this fault.",
            );
            if let Some(value) = retry_after.and_then(|v| HeaderValue::from_str(&v).ok()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
            response
        }
        Some(Fault::LoseAnswer) => {
            let _ = next.run(request).await;
            dropped()
        }
        Some(Fault::Drop) => dropped(),
        Some(Fault::Body { status, body }) => {
            (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
        }
        Some(Fault::Malformed) => malformed(),
    }
}

/// A response whose body fails at once: the server closes the connection with no
/// answer sent.
fn dropped() -> Response {
    let failing = futures_util::stream::once(async {
        Err::<bytes::Bytes, std::io::Error>(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "the emulator dropped this connection",
        ))
    });
    Response::new(axum::body::Body::from_stream(failing))
}

/// 200 with a body cut in the middle of its JSON.
fn malformed() -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        r#"{"@odata.context":"x","value":[{"id":"1","displ"#,
    )
        .into_response()
}

/// The tenant a request is for: the `tid` of its bearer token (read without checking:
/// only to pick a fault), or the first path segment of a token endpoint call.
pub(crate) fn tenant_of(state: &State, request: &Request, path: &str) -> Option<String> {
    if let Some(tid) = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .and_then(unverified_tid)
    {
        return Some(tid);
    }
    let first = path.trim_start_matches('/').split('/').next()?;
    state.tenant(first).map(|t| t.seed.id.to_ascii_lowercase())
}

fn unverified_tid(token: &str) -> Option<String> {
    use base64::Engine as _;
    let payload = token.split('.').nth(1)?;
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&json).ok()?;
    claims.get("tid")?.as_str().map(str::to_ascii_lowercase)
}
