//! A span per call and RED metrics: rate, errors, duration by method, route template
//! and status (no ids in labels).

use std::time::Instant;

use tower::Layer;
use tracing::Instrument as _;

use super::{
    CallContext, GraphFuture, GraphHttpRequest, GraphHttpResponse, GraphService, Middleware,
    MiddlewareService,
};
use crate::error::GraphError;

/// A `graph.request` span per call (method, route template, tenant, status) and two
/// metrics through the `metrics` facade: `graph_requests_total` (labels `method`,
/// `route`, `status`: the HTTP status, or `transport`, `timeout`, `circuit_open`,
/// `token`, `other` when there was none) and `graph_request_duration_seconds`
/// (`method`, `route`).
#[derive(Clone, Copy, Debug, Default)]
pub struct TraceLayer;

impl Layer<GraphService> for TraceLayer {
    type Service = MiddlewareService<Self>;

    fn layer(&self, next: GraphService) -> Self::Service {
        MiddlewareService::new(*self, next)
    }
}

impl Middleware for TraceLayer {
    fn handle(&self, next: GraphService, request: GraphHttpRequest) -> GraphFuture {
        let inner = next;
        let method = request.method().as_str().to_owned();
        let route = route_template(request.uri().path());
        let tenant = request
            .extensions()
            .get::<CallContext>()
            .map(|c| c.tenant.clone())
            .unwrap_or_default();
        let client_request_id = request
            .headers()
            .get("client-request-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let span = tracing::info_span!(
            "graph.request",
            http.request.method = %method,
            url.template = %route,
            tenant = %tenant,
            client_request_id = %client_request_id,
            http.response.status_code = tracing::field::Empty,
            request_id = tracing::field::Empty,
        );
        Box::pin(
            async move {
                let started = Instant::now();
                let answer = inner.send(request).await;
                let status = status_label(&answer);
                let span = tracing::Span::current();
                span.record("http.response.status_code", status.as_str());
                if let Ok(response) = &answer
                    && let Some(id) = response
                        .headers()
                        .get("request-id")
                        .and_then(|v| v.to_str().ok())
                {
                    span.record("request_id", id);
                }
                metrics::counter!(
                    "graph_requests_total",
                    "method" => method.clone(),
                    "route" => route.clone(),
                    "status" => status,
                )
                .increment(1);
                metrics::histogram!(
                    "graph_request_duration_seconds",
                    "method" => method,
                    "route" => route,
                )
                .record(started.elapsed().as_secs_f64());
                answer
            }
            .instrument(span),
        )
    }
}

/// Segments after which the next one is a key (an id, a name, a user principal name):
/// always `{id}` in a template, unless it is one of [`KEYWORDS`].
const KEYED: &[&str] = &[
    "applications",
    "attachments",
    "buckets",
    "calendars",
    "channels",
    "chats",
    "children",
    "columns",
    "contacts",
    "contactfolders",
    "devices",
    "domains",
    "drives",
    "events",
    "extensions",
    "groups",
    "items",
    "lists",
    "mailfolders",
    "members",
    "messages",
    "names",
    "owners",
    "plans",
    "rows",
    "serviceprincipals",
    "sites",
    "subscriptions",
    "tables",
    "tasks",
    "teams",
    "users",
    "worksheets",
];

/// Segments kept in a template wherever they stand.
const KEYWORDS: &[&str] = &[
    "$batch",
    "$count",
    "$ref",
    "$value",
    "delta()",
    "delta",
    "root",
    "me",
    "microsoft.graph.delta()",
];

/// The most segments and characters a template keeps.
const MAX_SEGMENTS: usize = 16;
const MAX_TEMPLATE: usize = 200;

/// The route of a Graph path for metric labels, with no user data in it: the segment
/// after a keyed collection (`users`, `groups`, `sites`, `items`, `worksheets`, …) is
/// `{id}`; so is any segment holding a digit (other than the version), `@`, `'`, `=`,
/// `%` or `:`, or longer than 24 characters; a path addressed by name
/// (`root:/folder/file.docx:`) is `{path}`; at most 16 segments and 200 characters.
///
/// ```
/// use keel_graph_client::middleware::route_template;
///
/// assert_eq!(route_template("/v1.0/users/ada@contoso.com/messages"), "/v1.0/users/{id}/messages");
/// assert_eq!(route_template("/v1.0/planner/tasks/oIx3zN98jEmVOM-4mUJzSGUANeje/details"), "/v1.0/planner/tasks/{id}/details");
/// assert_eq!(route_template("/beta/groups/02bd9fd6-8f93-4758-87c3-1fb73740a315/members"), "/beta/groups/{id}/members");
/// assert_eq!(route_template("/v1.0/me/drive/root:/HR/Dismissals/smith.docx:/content"), "/v1.0/me/drive/root:{path}:/content");
/// assert_eq!(route_template("/v1.0/sites/contoso.sharepoint.com:/sites/Falcon:"), "/v1.0/sites/{id}:{path}:");
/// assert_eq!(route_template("/v1.0/sites/x/lists/Payroll/items"), "/v1.0/sites/{id}/lists/{id}/items");
/// assert_eq!(route_template("/v1.0/teams/t/channels/19:abc@thread.tacv2/messages"), "/v1.0/teams/{id}/channels/{id}/messages");
/// assert_eq!(route_template("/v1.0/users/delta()"), "/v1.0/users/delta()");
/// assert_eq!(route_template("/v1.0/$batch"), "/v1.0/$batch");
/// ```
#[must_use]
pub fn route_template(path: &str) -> String {
    let path = path.split(['?', '#']).next().unwrap_or_default();
    let mut out = String::with_capacity(path.len().min(MAX_TEMPLATE));
    let mut segments = path.split('/').enumerate();
    let mut keyed = false;
    let mut kept = 0;
    while let Some((i, segment)) = segments.next() {
        if i > 0 {
            out.push('/');
        }
        kept += 1;
        if kept > MAX_SEGMENTS || out.len() > MAX_TEMPLATE {
            out.push('…');
            break;
        }
        let lower = segment.to_ascii_lowercase();
        // Path-based addressing: a segment ending in `:` opens it, the next segment
        // ending in `:` closes it.
        if segment.len() > 1 && segment.ends_with(':') {
            let name = &segment[..segment.len() - 1];
            out.push_str(if name == "root" { "root" } else { "{id}" });
            out.push_str(":{path}");
            for (_, inner) in segments.by_ref() {
                if inner.ends_with(':') {
                    out.push(':');
                    break;
                }
            }
            keyed = false;
            continue;
        }
        let version = i == 1 && (segment == "v1.0" || segment == "beta");
        let keyword = KEYWORDS.contains(&lower.as_str());
        let id = !version && !keyword && (keyed || is_id(segment));
        out.push_str(if id { "{id}" } else { segment });
        keyed = !id && KEYED.contains(&lower.as_str());
    }
    out
}

fn is_id(segment: &str) -> bool {
    segment.len() > 24
        || segment
            .bytes()
            .any(|b| b.is_ascii_digit() || matches!(b, b'@' | b'\'' | b'=' | b'%' | b':'))
}

fn status_label(answer: &Result<GraphHttpResponse, GraphError>) -> String {
    match answer {
        Ok(response) => response.status().as_u16().to_string(),
        Err(GraphError::Transport(_)) => "transport".into(),
        Err(GraphError::Timeout(_)) => "timeout".into(),
        Err(GraphError::CircuitOpen(_)) => "circuit_open".into(),
        Err(GraphError::Token(_)) => "token".into(),
        Err(_) => "other".into(),
    }
}
