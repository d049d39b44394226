//! Metric handles cached per route, method and status, so the request path does one
//! map lookup instead of re-registering labels with the recorder.

use std::collections::HashMap;
use std::sync::RwLock;

use http::Method;
use metrics::{Counter, Gauge, Histogram};

/// Metric names, following OpenTelemetry's HTTP server conventions in Prometheus form.
pub(crate) const REQUESTS: &str = "http_server_requests_total";
pub(crate) const ERRORS: &str = "http_server_errors_total";
pub(crate) const DURATION: &str = "http_server_request_duration_seconds";
pub(crate) const ACTIVE: &str = "http_server_active_requests";

pub(crate) struct Completed {
    pub(crate) requests: Counter,
    pub(crate) errors: Option<Counter>,
    pub(crate) duration: Histogram,
}

#[derive(Default)]
struct RouteHandles {
    active: Vec<(&'static str, Gauge)>,
    completed: Vec<(&'static str, u16, std::sync::Arc<Completed>)>,
}

/// The route label for requests no route matched: raw paths never become labels, so
/// scanners cannot blow up the number of series.
pub(crate) const UNMATCHED: &str = "<unmatched>";

/// Methods outside the standard set are reported as `_OTHER` (OpenTelemetry's rule),
/// for the same reason.
pub(crate) fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "_OTHER",
    }
}

#[derive(Default)]
pub(crate) struct HandleCache {
    routes: RwLock<HashMap<Box<str>, RouteHandles>>,
}

impl HandleCache {
    pub(crate) fn active(&self, route: &str, method: &'static str) -> Gauge {
        if let Ok(routes) = self.routes.read()
            && let Some(gauge) = routes
                .get(route)
                .and_then(|r| r.active.iter().find(|(m, _)| *m == method))
        {
            return gauge.1.clone();
        }
        let gauge = metrics::gauge!(ACTIVE, "method" => method, "route" => route.to_owned());
        let mut routes = match self.routes.write() {
            Ok(r) => r,
            Err(poisoned) => poisoned.into_inner(),
        };
        let entry = routes.entry(route.into()).or_default();
        if !entry.active.iter().any(|(m, _)| *m == method) {
            entry.active.push((method, gauge.clone()));
        }
        gauge
    }

    pub(crate) fn completed(
        &self,
        route: &str,
        method: &'static str,
        status: u16,
    ) -> std::sync::Arc<Completed> {
        if let Ok(routes) = self.routes.read()
            && let Some(found) = routes.get(route).and_then(|r| {
                r.completed
                    .iter()
                    .find(|(m, s, _)| *m == method && *s == status)
            })
        {
            return found.2.clone();
        }
        let status_label = status.to_string();
        let labels = [
            ("method", method.to_owned()),
            ("route", route.to_owned()),
            ("status", status_label),
        ];
        let handles = std::sync::Arc::new(Completed {
            requests: metrics::counter!(REQUESTS, &labels),
            errors: (status >= 500).then(|| metrics::counter!(ERRORS, &labels)),
            duration: metrics::histogram!(DURATION, &labels),
        });
        let mut routes = match self.routes.write() {
            Ok(r) => r,
            Err(poisoned) => poisoned.into_inner(),
        };
        let entry = routes.entry(route.into()).or_default();
        if !entry
            .completed
            .iter()
            .any(|(m, s, _)| *m == method && *s == status)
        {
            entry.completed.push((method, status, handles.clone()));
        }
        handles
    }
}
