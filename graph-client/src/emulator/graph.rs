//! Graph's routes: authentication on every call, Graph's error bodies, and the
//! directory's users with paging and the query options Graph documents.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::{Path, State as Shared};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use keel_token_manager::{AccessTokenClaims, ValidationError};
use serde_json::{Map, Value, json};

use super::call::{Call, access};
use super::directory::Tenant;
use super::{State, percent_decode as decode};

/// Graph's default page size for users, and its largest `$top`.
const DEFAULT_TOP: usize = 100;
const MAX_TOP: usize = 999;

access!(Me, READ_ME, USER_FIELDS);
access!(Users, READ_USERS, USER_FIELDS);

pub(crate) fn routes() -> Router<Arc<State>> {
    Router::new()
        .route("/{version}/users", get(list_users))
        .route("/{version}/users/{id}", get(get_user))
        .route("/{version}/users/{id}/photo/$value", get(get_photo))
        .route("/{version}/me", get(get_me))
        .fallback(unknown)
}

/// Graph's error response, with its ids.
pub(crate) fn error(
    state: &State,
    request: &HeaderMap,
    status: StatusCode,
    code: &str,
    message: &str,
) -> Response {
    let request_id = state.request_id();
    let client_request_id = client_request_id(request, &request_id);
    let body = json!({
        "error": {
            "code": code,
            "message": message,
            "innerError": {
                "date": humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string().trim_end_matches('Z'),
                "request-id": request_id,
                "client-request-id": client_request_id,
            }
        }
    });
    let mut response = (status, axum::Json(body)).into_response();
    ids(response.headers_mut(), &request_id, &client_request_id);
    response
}

fn client_request_id(request: &HeaderMap, request_id: &str) -> String {
    request
        .get("client-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.len() <= 128)
        .map_or_else(|| request_id.to_owned(), str::to_owned)
}

fn ids(headers: &mut HeaderMap, request_id: &str, client_request_id: &str) {
    for (name, value) in [
        ("request-id", request_id),
        ("client-request-id", client_request_id),
    ] {
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(name, value);
        }
    }
}

pub(crate) fn ok(state: &State, request: &HeaderMap, body: &Value) -> Response {
    let request_id = state.request_id();
    let client_request_id = client_request_id(request, &request_id);
    let mut response = (
        [(
            header::CONTENT_TYPE,
            "application/json;odata.metadata=minimal;odata.streaming=true;IEEE754Compatible=false;charset=utf-8",
        )],
        body.to_string(),
    )
        .into_response();
    ids(response.headers_mut(), &request_id, &client_request_id);
    response
}

/// The caller's tenant, once its bearer token and its permissions (one of `any_of`, or
/// none when empty) were checked.
pub(crate) fn authorize<'s>(
    state: &'s State,
    headers: &HeaderMap,
    any_of: &[&str],
) -> Result<&'s Tenant, Box<Response>> {
    let unauthorized = |message: &str| {
        let mut response = error(
            state,
            headers,
            StatusCode::UNAUTHORIZED,
            "InvalidAuthenticationToken",
            message,
        );
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(
                r#"Bearer realm="", authorization_uri="https://login.microsoftonline.com/common/oauth2/authorize", client_id="00000003-0000-0000-c000-000000000000""#,
            ),
        );
        response
    };
    let Some(token) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .filter(|t| !t.is_empty())
    else {
        return Err(Box::new(unauthorized("Access token is empty.")));
    };
    let claims: AccessTokenClaims = state.validator.validate(token).map_err(|e| {
        Box::new(unauthorized(match e {
            ValidationError::Expired | ValidationError::NotYetValid => {
                "Lifetime validation failed, the token is expired."
            }
            ValidationError::BadSignature | ValidationError::UnknownKey(_) => {
                "Access token validation failure. Invalid signature."
            }
            ValidationError::WrongAudience => "Invalid audience.",
            _ => "Access token validation failure. Invalid audience.",
        }))
    })?;
    let tenant = claims
        .tid
        .as_deref()
        .and_then(|tid| state.tenant(tid))
        .ok_or_else(|| Box::new(unauthorized("Access token validation failure.")))?;
    if !any_of.is_empty()
        && !any_of
            .iter()
            .any(|p| claims.has_role(p) || claims.has_scope(p))
    {
        return Err(Box::new(error(
            state,
            headers,
            StatusCode::FORBIDDEN,
            "Authorization_RequestDenied",
            "Insufficient privileges to complete the operation.",
        )));
    }
    state.graph_requests.fetch_add(1, Ordering::Relaxed);
    Ok(tenant)
}

pub(crate) const READ_USERS: &[&str] =
    &["User.Read.All", "User.ReadWrite.All", "Directory.Read.All"];
/// `/me`: any of these delegated permissions.
const READ_ME: &[&str] = &[
    "User.Read",
    "User.Read.All",
    "User.ReadBasic.All",
    "Directory.Read.All",
];

pub(crate) fn version_ok(version: &str) -> bool {
    version == "v1.0" || version == "beta"
}

async fn unknown(
    Shared(state): Shared<Arc<State>>,
    headers: HeaderMap,
    uri: axum::http::Uri,
) -> Response {
    let segment: String = uri
        .path()
        .trim_start_matches('/')
        .split('/')
        .nth(1)
        .unwrap_or_default()
        .chars()
        .take(64)
        .collect();
    error(
        &state,
        &headers,
        StatusCode::BAD_REQUEST,
        "BadRequest",
        &format!("Resource not found for the segment '{segment}'."),
    )
}

async fn get_user(call: Call<Users>, Path((_, id)): Path<(String, String)>) -> Response {
    let tenant = call.tenant();
    match tenant.user(&id) {
        Some(user) => call.entity("users", &user),
        None => call.not_found(&id),
    }
}

/// The signed-in user of a delegated token; app-only tokens are refused as Graph
/// refuses them.
async fn get_me(call: Call<Me>) -> Response {
    let Call { state, headers, .. } = &call;
    let tenant = call.tenant();
    // The subject of a delegated token is the user; an app-only token's is the app.
    let subject = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .and_then(|t| state.validator.validate(t).ok())
        .filter(|claims| claims.scope.is_some())
        .map(|claims| claims.sub);
    match subject.as_deref().and_then(|sub| tenant.user(sub)) {
        Some(user) => call.entity("users", &user),
        None => bad_request(
            state,
            headers,
            "/me request is only valid with delegated authentication flow.",
        ),
    }
}

/// A user's photo: bytes that are not JSON (a JPEG's first bytes, then the user's id),
/// as `image/jpeg`.
async fn get_photo(
    Shared(state): Shared<Arc<State>>,
    Path((version, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let tenant = match prepare(&state, &version, &headers, None, READ_USERS, USER_FIELDS) {
        Ok((tenant, _)) => tenant,
        Err(refused) => return *refused,
    };
    let Some(user) = tenant.user(&id) else {
        return not_found(&state, &headers, &id);
    };
    let mut photo = vec![
        0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x10, b'J', b'F', b'I', b'F', 0x00,
    ];
    photo.extend_from_slice(
        user.get("id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .as_bytes(),
    );
    photo.extend_from_slice(&[0xFF, 0xD9]);
    let mut response = ([(header::CONTENT_TYPE, "image/jpeg")], photo).into_response();
    let reference = ok(&state, &headers, &Value::Null);
    for name in ["request-id", "client-request-id"] {
        if let Some(value) = reference.headers().get(name) {
            response.headers_mut().insert(name, value.clone());
        }
    }
    response
}

async fn list_users(call: Call<Users>) -> Response {
    let tenant = call.tenant();
    let table = tenant.users();
    let users: Vec<&Map<String, Value>> = table.live().collect();
    call.collection("users", &users)
}

/// One entity, with its `@odata.context`.
pub(crate) fn entity(
    state: &State,
    headers: &HeaderMap,
    version: &str,
    context: &str,
    body: &Map<String, Value>,
) -> Response {
    let mut body = body.clone();
    body.insert(
        "@odata.context".into(),
        json!(format!(
            "{}/{version}/$metadata#{context}/$entity",
            state.base
        )),
    );
    ok(state, headers, &Value::Object(body))
}

/// Graph's 404 for an id that names nothing.
pub(crate) fn not_found(state: &State, headers: &HeaderMap, id: &str) -> Response {
    error(
        state,
        headers,
        StatusCode::NOT_FOUND,
        "Request_ResourceNotFound",
        &format!(
            "Resource '{}' does not exist or one of its queried reference-property objects are not present.",
            shorten(id)
        ),
    )
}

/// A page of `items` (the whole collection, in order) under the request's options:
/// filtered, counted, projected, with a next link when more are left. `path` is the
/// collection's path after the version (`users`, `groups/{id}/members`).
pub(crate) fn collection(
    state: &State,
    headers: &HeaderMap,
    version: &str,
    path: &str,
    options: &Options,
    items: &[&Map<String, Value>],
) -> Response {
    let eventual = headers
        .get("consistencylevel")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("eventual"));
    if (options.count || options.search.is_some()) && !eventual {
        return bad_request(
            state,
            headers,
            "$count and $search on directory objects need the ConsistencyLevel header set to 'eventual'.",
        );
    }
    let matching: Vec<&Map<String, Value>> = items
        .iter()
        .copied()
        .filter(|u| options.filter.as_ref().is_none_or(|f| f.matches(u)))
        .collect();
    let start = options.skip;
    if start > matching.len() {
        return error(
            state,
            headers,
            StatusCode::BAD_REQUEST,
            "Directory_ExpiredPageToken",
            "The specified page token value has expired and can no longer be included in your request.",
        );
    }
    let end = (start + options.top).min(matching.len());
    let value: Vec<Value> = matching[start..end]
        .iter()
        .map(|u| Value::Object(options.project(u)))
        .collect();
    let mut body = Map::new();
    body.insert(
        "@odata.context".into(),
        json!(format!("{}/{version}/$metadata#{path}", state.base)),
    );
    if options.count {
        body.insert("@odata.count".into(), json!(matching.len()));
    }
    if end < matching.len() {
        body.insert(
            "@odata.nextLink".into(),
            json!(format!(
                "{}/{version}/{path}?{}",
                state.base,
                options.next_query(end)
            )),
        );
    }
    body.insert("value".into(), Value::Array(value));
    ok(state, headers, &Value::Object(body))
}

/// The version checked, the caller authorized with one of `roles`, the query options
/// parsed (`$filter` on the `filterable` properties).
pub(crate) fn prepare<'s>(
    state: &'s State,
    version: &str,
    headers: &HeaderMap,
    query: Option<&str>,
    roles: &[&str],
    filterable: &'static [&'static str],
) -> Result<(&'s Tenant, Options), Box<Response>> {
    if !version_ok(version) {
        return Err(Box::new(unknown_version(state, headers)));
    }
    let tenant = authorize(state, headers, roles)?;
    let options = Options::parse(query, filterable)
        .map_err(|message| Box::new(bad_request(state, headers, &message)))?;
    Ok((tenant, options))
}

pub(crate) fn unknown_version(state: &State, headers: &HeaderMap) -> Response {
    error(
        state,
        headers,
        StatusCode::BAD_REQUEST,
        "BadRequest",
        "Invalid version: the version must be v1.0 or beta.",
    )
}

pub(crate) fn bad_request(state: &State, headers: &HeaderMap, message: &str) -> Response {
    error(
        state,
        headers,
        StatusCode::BAD_REQUEST,
        "Request_BadRequest",
        message,
    )
}

/// The query options a collection request may carry.
#[derive(Debug, Default)]
pub(crate) struct Options {
    select: Option<Vec<String>>,
    filter: Option<Filter>,
    top: usize,
    skip: usize,
    count: bool,
    search: Option<String>,
    /// The options as received, minus the page token, for the next link.
    raw: Vec<(String, String)>,
}

impl Options {
    pub(crate) fn parse(
        query: Option<&str>,
        filterable: &'static [&'static str],
    ) -> Result<Self, String> {
        let mut options = Options {
            top: DEFAULT_TOP,
            ..Options::default()
        };
        let mut seen = HashMap::new();
        for pair in query
            .unwrap_or_default()
            .split('&')
            .filter(|p| !p.is_empty())
        {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let key = decode(key).ok_or("Invalid query string.")?;
            let value = decode(value).ok_or("Invalid query string.")?;
            if seen.insert(key.to_ascii_lowercase(), ()).is_some() {
                return Err(format!(
                    "Query option '{key}' was specified more than once, but it must be specified at most once."
                ));
            }
            match key.to_ascii_lowercase().as_str() {
                "$select" => {
                    options.select = Some(value.split(',').map(|s| s.trim().to_owned()).collect());
                }
                "$filter" => options.filter = Some(Filter::parse(&value, filterable)?),
                "$top" => {
                    let n: usize = value.parse().map_err(|_| {
                        format!("Invalid value '{}' for $top query option.", shorten(&value))
                    })?;
                    if n == 0 || n > MAX_TOP {
                        return Err(format!(
                            "Invalid page size specified: '{n}'. Must be between 1 and {MAX_TOP} inclusive."
                        ));
                    }
                    options.top = n;
                }
                "$count" => options.count = value.eq_ignore_ascii_case("true"),
                "$search" => options.search = Some(value.clone()),
                "$skiptoken" => {
                    options.skip = URL_SAFE_NO_PAD
                        .decode(value.as_bytes())
                        .ok()
                        .and_then(|b| String::from_utf8(b).ok())
                        .and_then(|s| s.strip_prefix("skip:").and_then(|n| n.parse().ok()))
                        .ok_or("The specified page token value has expired and can no longer be included in your request.")?;
                    continue;
                }
                _ => {
                    return Err(format!("Query option '{}' is not allowed.", shorten(&key)));
                }
            }
            options.raw.push((key, value));
        }
        Ok(options)
    }

    pub(crate) fn project(&self, user: &Map<String, Value>) -> Map<String, Value> {
        match &self.select {
            None => user.clone(),
            Some(fields) => fields
                .iter()
                .filter_map(|f| user.get(f).map(|v| (f.clone(), v.clone())))
                .collect(),
        }
    }

    fn next_query(&self, offset: usize) -> String {
        let mut query = String::new();
        for (key, value) in &self.raw {
            query.push_str(key);
            query.push('=');
            crate::request::encode_query_value(value, &mut query);
            query.push('&');
        }
        query.push_str("$skiptoken=");
        query.push_str(&URL_SAFE_NO_PAD.encode(format!("skip:{offset}")));
        query
    }
}

/// The `$filter` subset served: `prop eq 'value'`, `prop eq true|false`, and
/// `startswith(prop,'value')`.
#[derive(Debug)]
enum Filter {
    Eq(String, Value),
    StartsWith(String, String),
}

/// The user properties `$filter` may name.
pub(crate) const USER_FIELDS: &[&str] = &[
    "id",
    "displayName",
    "givenName",
    "surname",
    "mail",
    "userPrincipalName",
    "jobTitle",
    "accountEnabled",
];

impl Filter {
    fn parse(expression: &str, fields: &'static [&'static str]) -> Result<Self, String> {
        let unsupported = || "Unsupported Query.".to_owned();
        let expression = expression.trim();
        if let Some(inner) = expression
            .strip_prefix("startswith(")
            .and_then(|rest| rest.strip_suffix(')'))
        {
            let (property, literal) = inner.split_once(',').ok_or_else(unsupported)?;
            let property = filterable(fields, property.trim()).ok_or_else(unsupported)?;
            let literal = string_literal(literal.trim()).ok_or_else(unsupported)?;
            return Ok(Filter::StartsWith(property, literal));
        }
        let mut parts = expression.splitn(3, ' ');
        let (Some(property), Some(op), Some(literal)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(unsupported());
        };
        if !op.eq_ignore_ascii_case("eq") {
            return Err(unsupported());
        }
        let property = filterable(fields, property).ok_or_else(unsupported)?;
        let value = match literal.trim() {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            other => Value::String(string_literal(other).ok_or_else(unsupported)?),
        };
        Ok(Filter::Eq(property, value))
    }

    fn matches(&self, user: &Map<String, Value>) -> bool {
        match self {
            Filter::Eq(property, Value::String(wanted)) => user
                .get(property)
                .and_then(Value::as_str)
                .is_some_and(|v| v.eq_ignore_ascii_case(wanted)),
            Filter::Eq(property, wanted) => user.get(property) == Some(wanted),
            Filter::StartsWith(property, prefix) => {
                user.get(property).and_then(Value::as_str).is_some_and(|v| {
                    v.len() >= prefix.len()
                        && v.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
                })
            }
        }
    }
}

fn filterable(fields: &[&str], property: &str) -> Option<String> {
    fields
        .iter()
        .find(|p| p.eq_ignore_ascii_case(property))
        .map(|p| (*p).to_owned())
}

/// `'text'` with `''` for a quote inside.
fn string_literal(text: &str) -> Option<String> {
    let inner = text.strip_prefix('\'')?.strip_suffix('\'')?;
    if inner.replace("''", "").contains('\'') {
        return None;
    }
    Some(inner.replace("''", "'"))
}

pub(crate) fn shorten(text: &str) -> String {
    text.chars().take(64).filter(|c| !c.is_control()).collect()
}
