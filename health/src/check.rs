//! The check trait and its results.

use std::fmt;
use std::future::Future;

use serde::Serialize;

/// A component's status, in the words of the health-check draft
/// (`draft-inadarei-api-health-check`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Healthy.
    Pass,
    /// Healthy, with a concern.
    Warn,
    /// Unhealthy.
    Fail,
}

impl Status {
    /// The HTTP status an endpoint answers with: 200 for pass and warn, 503 for fail.
    #[must_use]
    pub fn http_status(self) -> http::StatusCode {
        match self {
            Status::Pass | Status::Warn => http::StatusCode::OK,
            Status::Fail => http::StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// 1 for pass, 0.5 for warn, 0 for fail: the value exported as a metric.
    #[must_use]
    pub fn as_gauge(self) -> f64 {
        match self {
            Status::Pass => 1.0,
            Status::Warn => 0.5,
            Status::Fail => 0.0,
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::Pass => "pass",
            Status::Warn => "warn",
            Status::Fail => "fail",
        })
    }
}

/// What one check found.
///
/// ```
/// use keel_health::{CheckResult, Status};
///
/// let r = CheckResult::pass().observed(1.8, "ms");
/// assert_eq!(r.status(), Status::Pass);
/// assert_eq!(CheckResult::fail("connection refused").output(), Some("connection refused"));
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct CheckResult {
    status: Status,
    observed_value: Option<f64>,
    observed_unit: Option<String>,
    output: Option<String>,
}

impl CheckResult {
    /// Healthy.
    #[must_use]
    pub fn pass() -> Self {
        CheckResult {
            status: Status::Pass,
            observed_value: None,
            observed_unit: None,
            output: None,
        }
    }

    /// Healthy with a concern, explained by `output`.
    #[must_use]
    pub fn warn(output: impl Into<String>) -> Self {
        CheckResult {
            status: Status::Warn,
            output: Some(output.into()),
            ..Self::pass()
        }
    }

    /// Unhealthy, explained by `output` (shown only when details are on; never put
    /// secrets in it).
    #[must_use]
    pub fn fail(output: impl Into<String>) -> Self {
        CheckResult {
            status: Status::Fail,
            output: Some(output.into()),
            ..Self::pass()
        }
    }

    /// Adds what was measured, e.g. `(1.8, "ms")`.
    #[must_use]
    pub fn observed(mut self, value: f64, unit: impl Into<String>) -> Self {
        self.observed_value = Some(value);
        self.observed_unit = Some(unit.into());
        self
    }

    /// The status.
    #[must_use]
    pub fn status(&self) -> Status {
        self.status
    }

    /// The explanation, if any.
    #[must_use]
    pub fn output(&self) -> Option<&str> {
        self.output.as_deref()
    }

    /// The measured value and its unit, if any.
    #[must_use]
    pub fn observation(&self) -> Option<(f64, &str)> {
        Some((self.observed_value?, self.observed_unit.as_deref()?))
    }
}

/// A health check. Implement it for a dependency, or use a closure through
/// [`check_fn`](crate::check_fn).
///
/// ```
/// use keel_health::{CheckResult, HealthCheck};
///
/// struct DiskSpace;
///
/// #[async_trait::async_trait]
/// impl HealthCheck for DiskSpace {
///     async fn check(&self) -> CheckResult {
///         let free_percent = 42.0;
///         if free_percent < 10.0 {
///             CheckResult::fail("disk almost full")
///         } else {
///             CheckResult::pass().observed(free_percent, "percent")
///         }
///     }
///     fn component_type(&self) -> &'static str {
///         "system"
///     }
/// }
/// ```
#[async_trait::async_trait]
pub trait HealthCheck: Send + Sync + 'static {
    /// Runs the check once. The registry applies the timeout and catches panics.
    async fn check(&self) -> CheckResult;

    /// The draft's `componentType`: `datastore`, `component`, `system`...
    fn component_type(&self) -> &'static str {
        "component"
    }

    /// The draft's measurement name, the part after the colon in `name:measurement`.
    fn measurement(&self) -> &'static str {
        "status"
    }
}

/// A check from an async closure.
pub struct FnCheck<F> {
    f: F,
    component_type: &'static str,
}

impl<F> fmt::Debug for FnCheck<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FnCheck")
            .field("component_type", &self.component_type)
            .finish_non_exhaustive()
    }
}

/// A check from an async closure.
///
/// ```
/// use keel_health::{check_fn, CheckResult};
///
/// let queue_depth = check_fn(|| async { CheckResult::pass().observed(3.0, "messages") });
/// ```
pub fn check_fn<F, Fut>(f: F) -> FnCheck<F>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = CheckResult> + Send + 'static,
{
    FnCheck {
        f,
        component_type: "component",
    }
}

#[async_trait::async_trait]
impl<F, Fut> HealthCheck for FnCheck<F>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = CheckResult> + Send + 'static,
{
    async fn check(&self) -> CheckResult {
        (self.f)().await
    }

    fn component_type(&self) -> &'static str {
        self.component_type
    }
}
