//! Errors at the edge: a code taxonomy and RFC 9457 `application/problem+json` bodies.
//!
//! A handler's error implements [`IntoProblem`] to say which [`ErrorCode`] it is and
//! what, if anything, the caller may read about it. [`Problem`] renders the body: the
//! code's status and public title, the correlation id, and never the error's internal
//! `Display` text, which goes to the logs instead (see [`ApiError`]).

mod code;

use std::borrow::Cow;
use std::fmt;

use serde::Serialize;
use serde_json::{Map, Value};

pub use code::{ErrorCode, ErrorFamily};

use crate::correlation::CorrelationId;

/// The media type of problem details.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// An RFC 9457 problem details object.
///
/// ```
/// use keel_observability::{ErrorCode, Problem};
///
/// let problem = Problem::new(ErrorCode::RES_NOT_FOUND)
///     .with_detail("No order 42.")
///     .with_instance("/orders/42");
/// let body: serde_json::Value = serde_json::from_slice(&problem.to_json()).unwrap();
/// assert_eq!(body["status"], 404);
/// assert_eq!(body["code"], "RES_NOT_FOUND");
/// assert_eq!(body["title"], "The resource was not found.");
/// assert_eq!(body["type"], "about:blank");
/// ```
#[derive(Clone, Debug, Serialize)]
pub struct Problem {
    #[serde(rename = "type")]
    type_uri: Cow<'static, str>,
    title: &'static str,
    status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<Cow<'static, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    instance: Option<String>,
    code: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    correlation_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_after: Option<u64>,
    #[serde(flatten)]
    extensions: Map<String, Value>,
    #[serde(skip)]
    error_code: ErrorCode,
    /// Headers the response carries besides the standard ones (`WWW-Authenticate`).
    #[serde(skip)]
    headers: Vec<(http::HeaderName, http::HeaderValue)>,
}

impl Problem {
    /// A problem for `code`, carrying the current correlation id if there is one.
    #[must_use]
    pub fn new(code: ErrorCode) -> Self {
        Problem {
            type_uri: Cow::Borrowed("about:blank"),
            title: code.title(),
            status: code.status().as_u16(),
            detail: None,
            instance: None,
            code: code.to_string(),
            correlation_id: CorrelationId::current().map(|id| id.as_str().to_owned()),
            retry_after: None,
            extensions: Map::new(),
            error_code: code,
            headers: Vec::new(),
        }
    }

    /// A public, occurrence-specific explanation. Never put internal error text here.
    #[must_use]
    pub fn with_detail(mut self, detail: impl Into<Cow<'static, str>>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// A URI that names this occurrence (often the request path).
    #[must_use]
    pub fn with_instance(mut self, instance: impl Into<String>) -> Self {
        self.instance = Some(instance.into());
        self
    }

    /// A URI that documents this problem type (default `about:blank`).
    #[must_use]
    pub fn with_type(mut self, type_uri: impl Into<Cow<'static, str>>) -> Self {
        self.type_uri = type_uri.into();
        self
    }

    /// Seconds after which a retry may succeed; also sent as `Retry-After`.
    #[must_use]
    pub fn with_retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    /// A header the response carries, such as `WWW-Authenticate` for a 401 (RFC 9110
    /// §11.6.1) or a 403 with an OAuth `insufficient_scope` (RFC 6750 §3). The headers
    /// this type sets itself (`Content-Type`, `Cache-Control`, `Retry-After`, the
    /// correlation id) are not replaced.
    ///
    /// ```
    /// use keel_observability::{ErrorCode, Problem};
    ///
    /// let problem = Problem::new(ErrorCode::AUTH_UNAUTHENTICATED)
    ///     .with_header(http::header::WWW_AUTHENTICATE, http::HeaderValue::from_static("Bearer"));
    /// assert_eq!(problem.to_response().headers()["www-authenticate"], "Bearer");
    /// ```
    #[must_use]
    pub fn with_header(mut self, name: http::HeaderName, value: http::HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    /// An extension member. Names of the standard members are refused (ignored).
    #[must_use]
    pub fn with_extension(mut self, name: impl Into<String>, value: impl Into<Value>) -> Self {
        let name = name.into();
        const RESERVED: [&str; 8] = [
            "type",
            "title",
            "status",
            "detail",
            "instance",
            "code",
            "correlation_id",
            "retry_after",
        ];
        if !RESERVED.contains(&name.as_str()) {
            self.extensions.insert(name, value.into());
        }
        self
    }

    /// The code.
    #[must_use]
    pub fn code(&self) -> ErrorCode {
        self.error_code
    }

    /// The HTTP status.
    #[must_use]
    pub fn status(&self) -> http::StatusCode {
        self.error_code.status()
    }

    /// The body as JSON bytes.
    #[must_use]
    pub fn to_json(&self) -> Vec<u8> {
        // Serialising a struct of strings, numbers and JSON values cannot fail.
        serde_json::to_vec(self).unwrap_or_else(|_| b"{}".to_vec())
    }

    /// The whole HTTP response: status, `content-type: application/problem+json`,
    /// `Retry-After` when set, the correlation id header, and the body.
    #[must_use]
    pub fn to_response(&self) -> http::Response<bytes::Bytes> {
        let mut builder = http::Response::builder()
            .status(self.status())
            .header(http::header::CONTENT_TYPE, PROBLEM_JSON)
            .header(http::header::CACHE_CONTROL, "no-store");
        if let Some(seconds) = self.retry_after {
            builder = builder.header(http::header::RETRY_AFTER, seconds);
        }
        if let Some(id) = &self.correlation_id {
            builder = builder.header(crate::correlation::headers::CORRELATION_ID, id.as_str());
        }
        for (name, value) in &self.headers {
            let ours = [
                http::header::CONTENT_TYPE,
                http::header::CACHE_CONTROL,
                http::header::RETRY_AFTER,
            ];
            if !ours.contains(name) && name.as_str() != crate::correlation::headers::CORRELATION_ID
            {
                builder = builder.header(name, value);
            }
        }
        builder
            .body(bytes::Bytes::from(self.to_json()))
            .unwrap_or_else(|_| http::Response::new(bytes::Bytes::new()))
    }
}

impl std::error::Error for Problem {}

impl From<ErrorCode> for Problem {
    fn from(code: ErrorCode) -> Self {
        Problem::new(code)
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}): {}", self.code, self.status, self.title)
    }
}

/// Implemented by errors that can be shown to a caller. The other Keel crates implement
/// it for their errors; services implement it for theirs.
///
/// ```
/// use keel_observability::{ErrorCode, IntoProblem};
///
/// #[derive(Debug, thiserror::Error)]
/// enum OrderError {
///     #[error("order {0} not found")]
///     NotFound(u64),
///     #[error("database error: {0}")]
///     Database(String), // internal: must not reach the caller
/// }
///
/// impl IntoProblem for OrderError {
///     fn error_code(&self) -> ErrorCode {
///         match self {
///             OrderError::NotFound(_) => ErrorCode::RES_NOT_FOUND,
///             OrderError::Database(_) => ErrorCode::SYS_INTERNAL,
///         }
///     }
///     fn public_detail(&self) -> Option<String> {
///         match self {
///             OrderError::NotFound(id) => Some(format!("No order {id}.")),
///             OrderError::Database(_) => None,
///         }
///     }
/// }
///
/// let body = OrderError::Database("replica db-7.internal:5432 is read-only".into()).to_problem().to_json();
/// assert!(!String::from_utf8(body).unwrap().contains("db-7.internal"));
/// ```
pub trait IntoProblem {
    /// The code this error maps to.
    fn error_code(&self) -> ErrorCode;

    /// Text the caller may read about this occurrence. `None` (the default) shows only
    /// the code's title: the safe choice for anything internal.
    fn public_detail(&self) -> Option<String> {
        None
    }

    /// Seconds after which a retry may succeed, for throttling and unavailability.
    fn retry_after(&self) -> Option<u64> {
        None
    }

    /// The `WWW-Authenticate` challenge to send, for authentication errors (a
    /// token validator's refusal).
    fn www_authenticate(&self) -> Option<String> {
        None
    }

    /// The problem for this error.
    fn to_problem(&self) -> Problem {
        let mut problem = Problem::new(self.error_code());
        if let Some(detail) = self.public_detail() {
            problem = problem.with_detail(detail);
        }
        if let Some(seconds) = self.retry_after() {
            problem = problem.with_retry_after(seconds);
        }
        if let Some(challenge) = self.www_authenticate()
            && let Ok(value) = http::HeaderValue::from_str(&challenge)
        {
            problem = problem.with_header(http::header::WWW_AUTHENTICATE, value);
        }
        problem
    }
}

impl IntoProblem for Problem {
    fn error_code(&self) -> ErrorCode {
        self.error_code
    }
    fn to_problem(&self) -> Problem {
        self.clone()
    }
}

/// A handler error that logs the full error (with its source chain) and answers with
/// the safe problem. The error's `Display` text goes to the logs, so keep credentials
/// and tokens out of error messages (as reqwest's `without_url()` does). Return `Result<T, ApiError<E>>` from axum handlers; `?` converts.
///
/// ```
/// use axum::{routing::get, Router};
/// use keel_observability::{ApiError, ErrorCode, IntoProblem};
///
/// #[derive(Debug, thiserror::Error)]
/// #[error("upstream said no")]
/// struct Upstream;
/// impl IntoProblem for Upstream {
///     fn error_code(&self) -> ErrorCode { ErrorCode::EXT_DEPENDENCY_FAILED }
/// }
///
/// async fn handler() -> Result<&'static str, ApiError<Upstream>> {
///     Err(Upstream)?
/// }
/// let app: Router = Router::new().route("/", get(handler));
/// ```
pub struct ApiError<E>(pub E);

impl<E: fmt::Debug> fmt::Debug for ApiError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ApiError").field(&self.0).finish()
    }
}

impl<E> From<E> for ApiError<E> {
    fn from(error: E) -> Self {
        ApiError(error)
    }
}

impl<E> ApiError<E>
where
    E: IntoProblem + std::error::Error + 'static,
{
    /// Logs the error (error level for server-side families, debug for the caller's
    /// own mistakes) and returns the problem to send.
    pub fn into_problem(self) -> Problem {
        let problem = self.0.to_problem();
        let code = problem.code();
        if matches!(code.family(), ErrorFamily::System | ErrorFamily::External) {
            tracing::error!(code = %code, status = code.status().as_u16(), error = &self.0 as &(dyn std::error::Error + 'static), "request failed");
        } else {
            tracing::debug!(code = %code, status = code.status().as_u16(), error = &self.0 as &(dyn std::error::Error + 'static), "request refused");
        }
        problem
    }
}

#[cfg(feature = "axum")]
mod axum_impls {
    use axum::response::{IntoResponse, Response};

    use super::{ApiError, IntoProblem, Problem};

    impl IntoResponse for Problem {
        fn into_response(self) -> Response {
            self.to_response().map(axum::body::Body::from)
        }
    }

    impl<E> IntoResponse for ApiError<E>
    where
        E: IntoProblem + std::error::Error + 'static,
    {
        fn into_response(self) -> Response {
            self.into_problem().into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;

    #[test]
    fn every_family_has_its_status_and_prefix() {
        let cases = [
            (ErrorCode::AUTH_UNAUTHENTICATED, 401, "AUTH_"),
            (ErrorCode::AUTH_FORBIDDEN, 403, "AUTH_"),
            (ErrorCode::VAL_INVALID_REQUEST, 400, "VAL_"),
            (ErrorCode::VAL_INVALID_FIELD, 422, "VAL_"),
            (ErrorCode::RES_NOT_FOUND, 404, "RES_"),
            (ErrorCode::RES_CONFLICT, 409, "RES_"),
            (ErrorCode::RES_GONE, 410, "RES_"),
            (ErrorCode::SYS_INTERNAL, 500, "SYS_"),
            (ErrorCode::SYS_UNAVAILABLE, 503, "SYS_"),
            (ErrorCode::EXT_DEPENDENCY_FAILED, 502, "EXT_"),
            (ErrorCode::EXT_DEPENDENCY_TIMEOUT, 504, "EXT_"),
            (ErrorCode::RATE_LIMITED, 429, "RATE_"),
            (ErrorCode::BIZ_RULE_VIOLATED, 422, "BIZ_"),
        ];
        for (code, status, prefix) in cases {
            assert_eq!(code.status().as_u16(), status, "{code}");
            assert!(code.to_string().starts_with(prefix), "{code}");
            let body: Value = serde_json::from_slice(&Problem::new(code).to_json()).unwrap();
            assert_eq!(body["status"], status);
            assert_eq!(body["code"], code.to_string());
        }
    }

    #[test]
    fn extensions_cannot_overwrite_standard_members() {
        let problem = Problem::new(ErrorCode::RES_NOT_FOUND)
            .with_extension("status", 200)
            .with_extension("order_id", 42);
        let body: Value = serde_json::from_slice(&problem.to_json()).unwrap();
        assert_eq!(body["status"], 404);
        assert_eq!(body["order_id"], 42);
    }

    #[test]
    fn response_has_the_media_type_and_retry_after() {
        let response = Problem::new(ErrorCode::RATE_LIMITED)
            .with_retry_after(7)
            .to_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[http::header::CONTENT_TYPE], PROBLEM_JSON);
        assert_eq!(response.headers()[http::header::RETRY_AFTER], "7");
    }
}
