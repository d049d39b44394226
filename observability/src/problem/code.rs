//! The error code taxonomy.

use std::fmt;

use http::StatusCode;

/// The family of an error code: its prefix says who must act.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorFamily {
    /// `AUTH_`: the caller is not authenticated or not allowed (401, 403).
    Auth,
    /// `VAL_`: the request is malformed or invalid (400, 422).
    Validation,
    /// `RES_`: the resource is missing, gone or in conflict (404, 409, 410, 412).
    Resource,
    /// `SYS_`: this service failed (500, 503).
    System,
    /// `EXT_`: a dependency failed or timed out (502, 504).
    External,
    /// `RATE_`: too many requests (429).
    RateLimit,
    /// `BIZ_`: a business rule refused the request (422, 409).
    Business,
}

impl ErrorFamily {
    /// The prefix codes of this family start with.
    #[must_use]
    pub const fn prefix(self) -> &'static str {
        match self {
            ErrorFamily::Auth => "AUTH_",
            ErrorFamily::Validation => "VAL_",
            ErrorFamily::Resource => "RES_",
            ErrorFamily::System => "SYS_",
            ErrorFamily::External => "EXT_",
            ErrorFamily::RateLimit => "RATE_",
            ErrorFamily::Business => "BIZ_",
        }
    }

    /// The status a code of this family gets unless it says otherwise.
    #[must_use]
    pub const fn default_status(self) -> StatusCode {
        match self {
            ErrorFamily::Auth => StatusCode::UNAUTHORIZED,
            ErrorFamily::Validation => StatusCode::BAD_REQUEST,
            ErrorFamily::Resource => StatusCode::NOT_FOUND,
            ErrorFamily::System => StatusCode::INTERNAL_SERVER_ERROR,
            ErrorFamily::External => StatusCode::BAD_GATEWAY,
            ErrorFamily::RateLimit => StatusCode::TOO_MANY_REQUESTS,
            ErrorFamily::Business => StatusCode::UNPROCESSABLE_ENTITY,
        }
    }

    /// Whether the caller may retry the same request later with a chance of success.
    #[must_use]
    pub const fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrorFamily::System | ErrorFamily::External | ErrorFamily::RateLimit
        )
    }
}

/// A stable, machine-readable error code (`RES_NOT_FOUND`) with its HTTP status and a
/// public title. Codes are part of a service's API: clients switch on them.
///
/// The standard codes are associated constants; define your own with
/// [`ErrorCode::new`]:
///
/// ```
/// use http::StatusCode;
/// use keel_observability::{ErrorCode, ErrorFamily};
///
/// const INSUFFICIENT_FUNDS: ErrorCode = ErrorCode::new(
///     ErrorFamily::Business,
///     "INSUFFICIENT_FUNDS",
///     "The account balance is too low for this payment.",
/// );
/// assert_eq!(INSUFFICIENT_FUNDS.to_string(), "BIZ_INSUFFICIENT_FUNDS");
/// assert_eq!(INSUFFICIENT_FUNDS.status(), StatusCode::UNPROCESSABLE_ENTITY);
/// assert_eq!(ErrorCode::RATE_LIMITED.status(), StatusCode::TOO_MANY_REQUESTS);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ErrorCode {
    family: ErrorFamily,
    name: &'static str,
    status: StatusCode,
    title: &'static str,
}

impl ErrorCode {
    /// A code in `family` named `<prefix><name>`, with the family's default status.
    /// `name` should be SCREAMING_SNAKE_CASE without the prefix; `title` is a short,
    /// public, human-readable summary that does not change between occurrences.
    #[must_use]
    pub const fn new(family: ErrorFamily, name: &'static str, title: &'static str) -> Self {
        ErrorCode {
            family,
            name,
            status: family.default_status(),
            title,
        }
    }

    /// The same code with another HTTP status.
    #[must_use]
    pub const fn with_status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }

    /// The family.
    #[must_use]
    pub const fn family(&self) -> ErrorFamily {
        self.family
    }

    /// The HTTP status.
    #[must_use]
    pub const fn status(&self) -> StatusCode {
        self.status
    }

    /// The public title.
    #[must_use]
    pub const fn title(&self) -> &'static str {
        self.title
    }

    /// The name without the family prefix.
    #[must_use]
    pub const fn name(&self) -> &'static str {
        self.name
    }

    /// 401: credentials are missing or invalid.
    pub const AUTH_UNAUTHENTICATED: ErrorCode = ErrorCode::new(
        ErrorFamily::Auth,
        "UNAUTHENTICATED",
        "Authentication is required.",
    );
    /// 401: the presented token has expired.
    pub const AUTH_TOKEN_EXPIRED: ErrorCode = ErrorCode::new(
        ErrorFamily::Auth,
        "TOKEN_EXPIRED",
        "The access token has expired.",
    );
    /// 403: authenticated, but not allowed to do this.
    pub const AUTH_FORBIDDEN: ErrorCode = ErrorCode::new(
        ErrorFamily::Auth,
        "FORBIDDEN",
        "You are not allowed to perform this action.",
    )
    .with_status(StatusCode::FORBIDDEN);
    /// 400: the request is malformed.
    pub const VAL_INVALID_REQUEST: ErrorCode = ErrorCode::new(
        ErrorFamily::Validation,
        "INVALID_REQUEST",
        "The request is malformed.",
    );
    /// 422: the request is well-formed but some field is invalid.
    pub const VAL_INVALID_FIELD: ErrorCode = ErrorCode::new(
        ErrorFamily::Validation,
        "INVALID_FIELD",
        "One or more fields are invalid.",
    )
    .with_status(StatusCode::UNPROCESSABLE_ENTITY);
    /// 404: no such resource.
    pub const RES_NOT_FOUND: ErrorCode = ErrorCode::new(
        ErrorFamily::Resource,
        "NOT_FOUND",
        "The resource was not found.",
    );
    /// 409: the resource is in a state that conflicts with the request.
    pub const RES_CONFLICT: ErrorCode = ErrorCode::new(
        ErrorFamily::Resource,
        "CONFLICT",
        "The request conflicts with the current state of the resource.",
    )
    .with_status(StatusCode::CONFLICT);
    /// 410: the resource existed and is gone.
    pub const RES_GONE: ErrorCode = ErrorCode::new(
        ErrorFamily::Resource,
        "GONE",
        "The resource is no longer available.",
    )
    .with_status(StatusCode::GONE);
    /// 412: a precondition (`If-Match`) failed.
    pub const RES_PRECONDITION_FAILED: ErrorCode = ErrorCode::new(
        ErrorFamily::Resource,
        "PRECONDITION_FAILED",
        "The resource has changed since it was read.",
    )
    .with_status(StatusCode::PRECONDITION_FAILED);
    /// 500: an unexpected failure in this service.
    pub const SYS_INTERNAL: ErrorCode = ErrorCode::new(
        ErrorFamily::System,
        "INTERNAL",
        "An unexpected error occurred.",
    );
    /// 503: this service cannot serve now (overloaded, shutting down, breaker open).
    pub const SYS_UNAVAILABLE: ErrorCode = ErrorCode::new(
        ErrorFamily::System,
        "UNAVAILABLE",
        "The service is temporarily unavailable.",
    )
    .with_status(StatusCode::SERVICE_UNAVAILABLE);
    /// 502: a dependency answered with an error.
    pub const EXT_DEPENDENCY_FAILED: ErrorCode = ErrorCode::new(
        ErrorFamily::External,
        "DEPENDENCY_FAILED",
        "A service this request depends on failed.",
    );
    /// 504: a dependency did not answer in time.
    pub const EXT_DEPENDENCY_TIMEOUT: ErrorCode = ErrorCode::new(
        ErrorFamily::External,
        "DEPENDENCY_TIMEOUT",
        "A service this request depends on did not answer in time.",
    )
    .with_status(StatusCode::GATEWAY_TIMEOUT);
    /// 429: the caller sent too many requests.
    pub const RATE_LIMITED: ErrorCode =
        ErrorCode::new(ErrorFamily::RateLimit, "LIMITED", "Too many requests.");
    /// 422: a business rule refused the request.
    pub const BIZ_RULE_VIOLATED: ErrorCode = ErrorCode::new(
        ErrorFamily::Business,
        "RULE_VIOLATED",
        "The request breaks a business rule.",
    );
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.family.prefix())?;
        f.write_str(self.name)
    }
}

impl fmt::Debug for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ErrorCode({self}, {})", self.status.as_u16())
    }
}
