//! Graph's errors, read from hostile bytes into types a caller can branch on.
//!
//! Graph answers a failed request with an HTTP status and, usually, a JSON body
//! (`{"error": {"code", "message", "innerError": {"code", "request-id",
//! "client-request-id", "date", "innerError": {…}}, "details": […]}}`). The top-level
//! code may be generic (`BadRequest`, `generalException`) or empty, with the precise one
//! nested; the inner object is spelt `innerError` or `innererror`. Callers branch on
//! codes ([`ApiError::has_code`]), never on messages.

use std::fmt;
use std::time::{Duration, SystemTime};

use http::{HeaderMap, StatusCode};
use keel_resilience::{Classify, ErrorClass};
use serde_json::Value;

/// The longest message kept from a response, in characters.
const MAX_MESSAGE: usize = 512;
/// The longest code or id kept from a response, in characters.
const MAX_FIELD: usize = 128;
/// The longest `Location` kept.
const MAX_LOCATION: usize = 8 << 10;
/// How many nested `innerError`s are walked.
const MAX_DEPTH: usize = 16;
/// How many codes are kept from `innerError`s and `details`.
const MAX_CODES: usize = 16;

/// An error status with Graph's error body: the codes, the message, the ids to quote to
/// Microsoft support, and the `Retry-After` delay when there was one.
///
/// ```
/// use http::{HeaderMap, StatusCode};
/// use keel_graph_client::GraphError;
///
/// let body = br#"{"error":{"code":"BadRequest","message":"Invalid filter clause",
///   "innerError":{"code":"invalidFilter","request-id":"b1a9e3c1","date":"2026-11-28T10:00:00"}}}"#;
/// let error = GraphError::from_response(StatusCode::BAD_REQUEST, &HeaderMap::new(), body);
/// let api = error.api().unwrap();
/// assert_eq!(api.code(), "BadRequest");
/// assert!(api.has_code("invalidFilter")); // the precise code, nested
/// assert_eq!(api.request_id(), Some("b1a9e3c1"));
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct ApiError {
    status: StatusCode,
    code: String,
    message: String,
    inner_codes: Vec<String>,
    request_id: Option<String>,
    client_request_id: Option<String>,
    date: Option<String>,
    retry_after: Option<Duration>,
    etag: Option<String>,
    location: Option<String>,
}

impl fmt::Debug for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiError")
            .field("status", &self.status.as_u16())
            .field("code", &self.code)
            .field("inner_codes", &self.inner_codes)
            .field("message", &self.message)
            .field("request_id", &self.request_id)
            .field("client_request_id", &self.client_request_id)
            .field("retry_after", &self.retry_after)
            .finish_non_exhaustive()
    }
}

impl ApiError {
    /// The HTTP status.
    #[must_use]
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The top-level `error.code` (empty when Graph sent none).
    #[must_use]
    pub fn code(&self) -> &str {
        &self.code
    }

    /// The codes of the nested `innerError`s (outermost first), then of `details`.
    #[must_use]
    pub fn inner_codes(&self) -> &[String] {
        &self.inner_codes
    }

    /// Whether `code` is the top-level code or any nested one (ASCII case ignored, as
    /// Graph's services differ in case).
    #[must_use]
    pub fn has_code(&self, code: &str) -> bool {
        self.code.eq_ignore_ascii_case(code)
            || self
                .inner_codes
                .iter()
                .any(|c| c.eq_ignore_ascii_case(code))
    }

    /// The message, cut to 512 characters, control characters replaced: for logs and
    /// people, not for branching.
    #[must_use]
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Graph's `request-id` (from the body, else the response header).
    #[must_use]
    pub fn request_id(&self) -> Option<&str> {
        self.request_id.as_deref()
    }

    /// The `client-request-id` the request was sent with, as Graph echoed it.
    #[must_use]
    pub fn client_request_id(&self) -> Option<&str> {
        self.client_request_id.as_deref()
    }

    /// The `date` of the inner error, as Graph wrote it.
    #[must_use]
    pub fn date(&self) -> Option<&str> {
        self.date.as_deref()
    }

    /// The `Retry-After` delay of the response (seconds, fractional seconds or an HTTP
    /// date; capped by keel-resilience at one hour; `None` when absent or unreadable).
    #[must_use]
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// The resource's current `ETag` when the response carried one (a 412 on a Planner
    /// update does when Graph knows it).
    #[must_use]
    pub fn etag(&self) -> Option<&str> {
        self.etag.as_deref()
    }

    /// The `Location` header when the response carried one (at most 8 KiB; a longer
    /// one is dropped, not cut): where a `410 Gone` on a delta link says to synchronize
    /// again.
    #[must_use]
    pub fn location(&self) -> Option<&str> {
        self.location.as_deref()
    }
}

/// What was wrong with an error response's body when it was not Graph's error JSON.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BodyProblem {
    /// No body at all.
    Empty,
    /// Not JSON (an HTML page from a proxy, a truncated body, another encoding).
    NotJson,
    /// JSON without an `error` object.
    NoErrorObject,
}

impl BodyProblem {
    fn as_str(self) -> &'static str {
        match self {
            BodyProblem::Empty => "an empty body",
            BodyProblem::NotJson => "a body that is not JSON",
            BodyProblem::NoErrorObject => "JSON without an error object",
        }
    }
}

/// A failed Graph call.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GraphError {
    /// Graph answered an error status with its error body: branch on
    /// [`ApiError::has_code`] and [`ApiError::status`].
    #[error("Graph answered {} {}: {}", .0.status.as_u16(), code_or_status(.0), .0.message)]
    Api(Box<ApiError>),
    /// A write with `If-Match` found the item changed since its ETag was read (412):
    /// read it again (its current ETag is here when Graph sent it) and reapply.
    #[error(
        "the item changed since it was read (412 Precondition Failed): read it again and reapply the change"
    )]
    PreconditionFailed(Box<ApiError>),
    /// Graph (or something in front of it) answered an error status whose body is not
    /// Graph's error JSON.
    #[error("Graph answered {} with {} (request-id {})", .status.as_u16(), .problem.as_str(), .request_id.as_deref().unwrap_or("none"))]
    UnreadableError {
        /// The status.
        status: StatusCode,
        /// What was wrong with the body.
        problem: BodyProblem,
        /// The `request-id` response header.
        request_id: Option<String>,
        /// The `Retry-After` delay, when the response had one.
        retry_after: Option<Duration>,
    },
    /// A success whose body is not the JSON expected.
    #[error("Graph answered {} with a body that is not the JSON expected (request-id {})", .status.as_u16(), .request_id.as_deref().unwrap_or("none"))]
    Decode {
        /// The status.
        status: StatusCode,
        /// The `request-id` response header.
        request_id: Option<String>,
        /// What serde_json said.
        #[source]
        source: serde_json::Error,
    },
    /// A response body over the limit (64 MiB, 1 MiB for an error).
    #[error("Graph's response body is larger than the client reads")]
    TooLarge,
    /// The request could not be built.
    #[error("the Graph request is invalid")]
    Request(#[from] crate::request::RequestError),
    /// No token provider was given for this tenant.
    #[error("no token provider for tenant `{0}`: add it with GraphClientBuilder::tenant")]
    UnknownTenant(String),
    /// A URL (a next link) off the cloud's Graph origin: refused, so that no token is
    /// ever sent to another host.
    #[error("a URL off the cloud's Graph origin was refused (no token is sent there)")]
    ForeignUrl,
    /// No token could be had for the call.
    #[error("no token for the Graph call")]
    Token(#[source] keel_token_manager::client::TokenError),
    /// The call did not reach Graph or its answer was cut (connection refused or
    /// reset, a timeout).
    #[error("the Graph call failed in transport")]
    Transport(#[source] reqwest::Error),
    /// An attempt did not answer within the client's time limit per attempt.
    #[error("the Graph call did not answer within {0:?}")]
    Timeout(Duration),
    /// The circuit breaker of Graph's host is open after failures: the call was not
    /// sent. Try again after the breaker's wait.
    #[error("the circuit breaker of Graph's host is open: the call was not sent")]
    CircuitOpen(#[source] keel_resilience::breaker::CallNotPermitted),
    /// A paged read went past the client's page limit
    /// ([`GraphClientBuilder::max_pages`](crate::GraphClientBuilder::max_pages)).
    #[error(
        "more than {0} pages: the read was stopped (raise GraphClientBuilder::max_pages if it is expected)"
    )]
    TooManyPages(usize),
    /// A `$batch` step was not sent because a step it depends on failed (the client's
    /// own 424: Graph's arrives as [`GraphError::Api`] with status 424).
    #[error("batch step not sent: step `{0}` it depends on failed")]
    FailedDependency(String),
    /// The `$batch` request carrying this step failed as a whole (the source says how).
    #[error("the $batch request carrying this step failed")]
    BatchFailed(#[source] std::sync::Arc<GraphError>),
    /// Graph's answer to a `$batch` request could not be matched to its steps.
    #[error("Graph's $batch answer is unusable: {} (request-id {})", .problem.as_str(), .request_id.as_deref().unwrap_or("none"))]
    BatchResponse {
        /// What was wrong with it.
        problem: BatchProblem,
        /// The batch's `request-id` response header.
        request_id: Option<String>,
    },
}

/// What was wrong with an answer to `$batch`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BatchProblem {
    /// Not the JSON of a batch answer (`{"responses": […]}`).
    NotJson,
    /// An answer names an id that no step of the batch has.
    UnknownId,
    /// Two answers name the same id.
    DuplicateId,
    /// No answer for this step.
    MissingResponse,
    /// An answer without a valid status.
    BadItem,
}

impl BatchProblem {
    fn as_str(self) -> &'static str {
        match self {
            BatchProblem::NotJson => "not a batch answer",
            BatchProblem::UnknownId => "an answer for an id that was not sent",
            BatchProblem::DuplicateId => "two answers for one id",
            BatchProblem::MissingResponse => "no answer for this step",
            BatchProblem::BadItem => "an answer without a valid status",
        }
    }
}

fn code_or_status(e: &ApiError) -> &str {
    if e.code.is_empty() {
        e.status.canonical_reason().unwrap_or("error")
    } else {
        &e.code
    }
}

impl GraphError {
    /// Reads an error response: its status, headers and (possibly hostile) body. Never
    /// panics; what it keeps is bounded.
    #[must_use]
    pub fn from_response(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> Self {
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(|v| bounded(v, MAX_FIELD))
        };
        let retry_after = headers
            .get(http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| keel_resilience::parse_retry_after(v, SystemTime::now()));
        let parsed = if body.iter().all(u8::is_ascii_whitespace) {
            Err(BodyProblem::Empty)
        } else {
            serde_json::from_slice::<Value>(body)
                .map_err(|_| BodyProblem::NotJson)
                .and_then(|json| match json.get("error") {
                    Some(Value::Object(_)) => Ok(json),
                    _ => Err(BodyProblem::NoErrorObject),
                })
        };
        let json = match parsed {
            Ok(json) => json,
            Err(problem) => {
                return GraphError::UnreadableError {
                    status,
                    problem,
                    request_id: header("request-id"),
                    retry_after,
                };
            }
        };
        let error = &json["error"];
        let mut api = ApiError {
            status,
            code: text(error.get("code"), MAX_FIELD).unwrap_or_default(),
            message: text(error.get("message"), MAX_MESSAGE).unwrap_or_default(),
            inner_codes: Vec::new(),
            request_id: None,
            client_request_id: None,
            date: None,
            retry_after,
            etag: header("etag"),
            // Whole or not at all: a cut URL names something else.
            location: headers
                .get(http::header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .filter(|v| v.len() <= MAX_LOCATION)
                .map(str::to_owned),
        };
        let mut inner = inner_of(error);
        for _ in 0..MAX_DEPTH {
            let Some(object) = inner else { break };
            if let Some(code) = text(object.get("code"), MAX_FIELD)
                && api.inner_codes.len() < MAX_CODES
            {
                api.inner_codes.push(code);
            }
            api.request_id = api
                .request_id
                .or_else(|| text(object.get("request-id"), MAX_FIELD));
            api.client_request_id = api
                .client_request_id
                .or_else(|| text(object.get("client-request-id"), MAX_FIELD));
            api.date = api.date.or_else(|| text(object.get("date"), MAX_FIELD));
            inner = inner_of(object);
        }
        if let Some(Value::Array(details)) = error.get("details") {
            for detail in details.iter().take(MAX_CODES) {
                if let Some(code) = text(detail.get("code"), MAX_FIELD)
                    && api.inner_codes.len() < MAX_CODES
                {
                    api.inner_codes.push(code);
                }
            }
        }
        api.request_id = api.request_id.or_else(|| header("request-id"));
        api.client_request_id = api
            .client_request_id
            .or_else(|| header("client-request-id"));
        if status == StatusCode::PRECONDITION_FAILED {
            GraphError::PreconditionFailed(Box::new(api))
        } else {
            GraphError::Api(Box::new(api))
        }
    }

    /// Graph's error body, when the response had one.
    #[must_use]
    pub fn api(&self) -> Option<&ApiError> {
        match self {
            GraphError::Api(e) | GraphError::PreconditionFailed(e) => Some(e),
            _ => None,
        }
    }

    /// The HTTP status of the response, when there was one.
    #[must_use]
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            GraphError::Api(e) | GraphError::PreconditionFailed(e) => Some(e.status),
            GraphError::UnreadableError { status, .. } | GraphError::Decode { status, .. } => {
                Some(*status)
            }
            GraphError::BatchFailed(e) => e.status(),
            _ => None,
        }
    }

    /// The `Retry-After` delay of the response.
    #[must_use]
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            GraphError::Api(e) | GraphError::PreconditionFailed(e) => e.retry_after,
            GraphError::UnreadableError { retry_after, .. } => *retry_after,
            GraphError::BatchFailed(e) => e.retry_after(),
            _ => None,
        }
    }
}

impl Classify for GraphError {
    /// 429 and 503 are throttling (with their `Retry-After`); 500, 502 and 504 and
    /// Graph's `Directory_ConcurrencyViolation` (409) are transient; the rest (a bad
    /// request, a missing item, a refused permission, a 412) is permanent.
    fn class(&self) -> ErrorClass {
        match self {
            GraphError::Token(e) => return e.class(),
            GraphError::BatchFailed(e) => return e.class(),
            GraphError::CircuitOpen(e) => return e.class(),
            GraphError::Timeout(_) => return ErrorClass::Transient,
            GraphError::Transport(e)
                if e.is_timeout() || e.is_connect() || e.is_request() || e.is_body() =>
            {
                return ErrorClass::Transient;
            }
            _ => {}
        }
        let Some(status) = self.status() else {
            return ErrorClass::Permanent;
        };
        match status.as_u16() {
            429 | 503 => ErrorClass::Throttled {
                retry_after: self.retry_after(),
            },
            500 | 502 | 504 => ErrorClass::Transient,
            409 if self
                .api()
                .is_some_and(|e| e.has_code("Directory_ConcurrencyViolation")) =>
            {
                ErrorClass::Transient
            }
            _ => ErrorClass::Permanent,
        }
    }
}

/// The inner error object, spelt either way.
fn inner_of(object: &Value) -> Option<&Value> {
    ["innerError", "innererror"]
        .iter()
        .find_map(|key| object.get(*key).filter(|v| v.is_object()))
}

/// A string field, bounded and cleaned; anything else (a number, an object) is absent.
fn text(value: Option<&Value>, max: usize) -> Option<String> {
    value
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(|s| bounded(s, max))
}

/// At most `max` characters, control characters replaced, so a hostile body cannot
/// inflate a log line or forge one.
fn bounded(s: &str, max: usize) -> String {
    let mut out: String = s
        .chars()
        .take(max)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if s.chars().nth(max).is_some() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_strings_are_bounded_and_cleaned() {
        assert_eq!(bounded("a\nb\u{1b}[31m", 10), "a b [31m");
        assert_eq!(bounded(&"x".repeat(600), 512).chars().count(), 513);
        assert_eq!(text(Some(&Value::from(42)), 10), None);
        assert_eq!(text(Some(&Value::from("")), 10), None);
    }
}
