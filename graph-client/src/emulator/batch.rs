//! JSON batching (`POST /{version}/$batch`) as Graph documents it: at most 20 requests,
//! each with a unique `id`; `dependsOn` runs a request after the ones it names and
//! answers 424 when one of them failed; every request runs through the same routes,
//! authentication and faults as if sent alone (so an item may be throttled with its own
//! 429 and `Retry-After` while the batch answers 200); responses come back in an order
//! of the emulator's choosing, bodies that are not JSON base64-encoded.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State as Shared};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, header};
use axum::response::Response;
use axum::routing::post;
use base64::Engine as _;
use serde_json::{Map, Value, json};
use tower::ServiceExt as _;

use super::State;
use super::graph::{authorize, error, ok, shorten, unknown_version, version_ok};

/// The most requests in one batch.
pub(crate) const MAX_REQUESTS: usize = 20;
/// The most read of one item's answer.
const MAX_ITEM_BODY: usize = 4 << 20;

pub(crate) fn routes() -> Router<Arc<State>> {
    Router::new().route("/{version}/$batch", post(batch))
}

/// One request of a batch, checked.
struct Item {
    id: String,
    method: Method,
    url: String,
    headers: Map<String, Value>,
    body: Option<Value>,
    depends_on: Vec<String>,
}

fn invalid(state: &State, headers: &HeaderMap, message: &str) -> Response {
    error(
        state,
        headers,
        StatusCode::BAD_REQUEST,
        "BadRequest",
        message,
    )
}

fn parse(body: &[u8]) -> Result<Vec<Item>, String> {
    let payload: Value =
        serde_json::from_slice(body).map_err(|_| "Invalid batch payload format.".to_owned())?;
    let requests = payload
        .get("requests")
        .and_then(Value::as_array)
        .ok_or("Invalid batch payload format.")?;
    if requests.is_empty() {
        return Err("The batch has no requests.".into());
    }
    if requests.len() > MAX_REQUESTS {
        return Err(format!(
            "Number of requests inside batch exceeds the limit of {MAX_REQUESTS}."
        ));
    }
    let mut items = Vec::with_capacity(requests.len());
    let mut ids = HashSet::new();
    for request in requests {
        let id = request
            .get("id")
            .and_then(Value::as_str)
            .filter(|id| !id.is_empty() && id.len() <= 128)
            .ok_or("Every request of a batch needs an id.")?;
        // Ids are compared without case (ASCII), as Graph documents.
        if !ids.insert(id.to_ascii_lowercase()) {
            return Err("Batch request ids must be unique.".into());
        }
        let method = request
            .get("method")
            .and_then(Value::as_str)
            .and_then(|m| Method::from_bytes(m.to_ascii_uppercase().as_bytes()).ok())
            .filter(|m| {
                [
                    Method::GET,
                    Method::POST,
                    Method::PATCH,
                    Method::PUT,
                    Method::DELETE,
                ]
                .contains(m)
            })
            .ok_or("Every request of a batch needs a method.")?;
        let url = request
            .get("url")
            .and_then(Value::as_str)
            .ok_or("Every request of a batch needs a url.")?;
        let headers = match request.get("headers") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(map)) => map.clone(),
            Some(_) => return Err("The headers of a batch request must be an object.".into()),
        };
        let depends_on = match request.get("dependsOn") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(ids)) => ids
                .iter()
                .map(|v| v.as_str().map(str::to_ascii_lowercase))
                .collect::<Option<Vec<_>>>()
                .ok_or("dependsOn must list request ids.")?,
            Some(_) => return Err("dependsOn must list request ids.".into()),
        };
        items.push(Item {
            id: id.to_owned(),
            method,
            url: url.to_owned(),
            headers,
            body: request.get("body").cloned().filter(|b| !b.is_null()),
            depends_on,
        });
    }
    for item in &items {
        for dep in &item.depends_on {
            if *dep == item.id.to_ascii_lowercase() || !ids.contains(dep) {
                return Err(format!(
                    "Request '{}' depends on '{}', which is not in the batch.",
                    shorten(&item.id),
                    shorten(dep)
                ));
            }
        }
    }
    Ok(items)
}

async fn batch(
    Shared(state): Shared<Arc<State>>,
    Path(version): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !version_ok(&version) {
        return unknown_version(&state, &headers);
    }
    if let Err(refused) = authorize(&state, &headers, &[]) {
        return *refused;
    }
    state
        .batch_requests
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let items = match parse(&body) {
        Ok(items) => items,
        Err(message) => return invalid(&state, &headers, &message),
    };
    // Waves: every request whose dependencies are answered runs, concurrently with the
    // others of its wave; one whose dependency failed gets 424 without running.
    let mut answered: HashMap<String, u16> = HashMap::new();
    let mut responses: Vec<Value> = Vec::with_capacity(items.len());
    let mut pending: Vec<&Item> = items.iter().collect();
    while !pending.is_empty() {
        let (ready, waiting): (Vec<&Item>, Vec<&Item>) = pending
            .into_iter()
            .partition(|item| item.depends_on.iter().all(|d| answered.contains_key(d)));

        if ready.is_empty() {
            return invalid(
                &state,
                &headers,
                "The dependencies of the batch's requests form a cycle.",
            );
        }
        let mut wave = Vec::new();
        for item in ready {
            if item
                .depends_on
                .iter()
                .any(|d| !(200..300).contains(&answered[d]))
            {
                answered.insert(item.id.to_ascii_lowercase(), 424);
                responses.push(json!({
                    "id": item.id,
                    "status": 424,
                    "headers": {"Content-Type": "application/json"},
                    "body": {"error": {"code": "FailedDependency", "message": "A request this one depends on failed."}},
                }));
            } else {
                wave.push(item);
            }
        }
        let outcomes = futures_util::future::join_all(
            wave.iter()
                .map(|item| run(state.clone(), &version, &headers, item)),
        )
        .await;
        // Answered in an order of the emulator's choosing (the wave reversed), as Graph
        // does not keep the request order.
        for (item, (status, response)) in wave.iter().zip(outcomes).rev() {
            answered.insert(item.id.to_ascii_lowercase(), status);
            responses.push(response);
        }
        pending = waiting;
    }
    ok(&state, &headers, &json!({ "responses": responses }))
}

/// Runs one request of the batch through the emulator's own routes.
async fn run(state: Arc<State>, version: &str, outer: &HeaderMap, item: &Item) -> (u16, Value) {
    let refuse = |status: u16, code: &str, message: &str| {
        (
            status,
            json!({
                "id": item.id,
                "status": status,
                "headers": {"Content-Type": "application/json"},
                "body": {"error": {"code": code, "message": message}},
            }),
        )
    };
    let relative = item.url.trim_start_matches('/');
    if relative.contains("://") || relative.starts_with("$batch") || relative.is_empty() {
        return refuse(
            400,
            "BadRequest",
            "The url of a batch request must be relative to the version, such as /users.",
        );
    }
    let mut request = Request::builder()
        .method(item.method.clone())
        .uri(format!("/{version}/{relative}"));
    let mut content_type = None;
    for (name, value) in &item.headers {
        let (Ok(name), Some(Ok(value))) = (
            HeaderName::from_bytes(name.as_bytes()),
            value.as_str().map(HeaderValue::from_str),
        ) else {
            return refuse(
                400,
                "BadRequest",
                "The headers of a batch request must be strings.",
            );
        };
        if name == header::CONTENT_TYPE {
            content_type = value.to_str().ok().map(str::to_ascii_lowercase);
        }
        if name != header::AUTHORIZATION {
            request = request.header(name, value);
        }
    }
    // The batch's own credentials, and its client-request-id unless the item has one.
    for name in [
        header::AUTHORIZATION,
        HeaderName::from_static("client-request-id"),
    ] {
        if let Some(value) = outer.get(&name)
            && !item
                .headers
                .keys()
                .any(|k| k.eq_ignore_ascii_case(name.as_str()))
        {
            request = request.header(name, value.clone());
        }
    }
    let body = match (&item.body, &content_type) {
        (None, _) => Body::empty(),
        (Some(_), None) => {
            return refuse(
                400,
                "BadRequest",
                "A batch request with a body must give its Content-Type header.",
            );
        }
        (Some(Value::String(text)), Some(ct)) if !ct.starts_with("application/json") => {
            match base64::engine::general_purpose::STANDARD.decode(text) {
                Ok(bytes) => Body::from(bytes),
                Err(_) => {
                    return refuse(
                        400,
                        "BadRequest",
                        "The body of a batch request that is not JSON must be base64.",
                    );
                }
            }
        }
        (Some(value), Some(_)) => Body::from(value.to_string()),
    };
    let Ok(request) = request.body(body) else {
        return refuse(
            400,
            "BadRequest",
            "The url of a batch request is not valid.",
        );
    };
    let Ok(response) = super::app(state).oneshot(request).await;
    let status = response.status().as_u16();
    let mut headers = Map::new();
    for (name, value) in response.headers() {
        if name == header::CONTENT_LENGTH {
            continue;
        }
        if let Ok(value) = value.to_str() {
            headers.insert(display_name(name.as_str()), json!(value));
        }
    }
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().starts_with("application/json"));
    let bytes = match axum::body::to_bytes(response.into_body(), MAX_ITEM_BODY).await {
        Ok(bytes) => bytes,
        Err(_) => {
            return refuse(
                500,
                "generalException",
                "The answer was too large for a batch.",
            );
        }
    };
    let mut answer = Map::new();
    answer.insert("id".into(), json!(item.id));
    answer.insert("status".into(), json!(status));
    answer.insert("headers".into(), Value::Object(headers));
    if !bytes.is_empty() {
        let body = if is_json {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| json!(base64::engine::general_purpose::STANDARD.encode(&bytes)))
        } else {
            json!(base64::engine::general_purpose::STANDARD.encode(&bytes))
        };
        answer.insert("body".into(), body);
    }
    (status, Value::Object(answer))
}

/// `retry-after` → `Retry-After`, as Graph spells headers in batch answers.
fn display_name(name: &str) -> String {
    name.split('-')
        .map(|part| {
            let mut chars = part.chars();
            chars.next().map_or_else(String::new, |first| {
                first.to_ascii_uppercase().to_string() + chars.as_str()
            })
        })
        .collect::<Vec<_>>()
        .join("-")
}
