//! The HTTP API: sessions, plans and tasks (reads from the two-level cache, writes to
//! Graph with the task's ETag), the dead-letter admin, health and metrics.

use std::sync::Arc;

use axum::extract::{FromRef, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use axum::{Json, Router};
use keel_observability::{CorrelationId, ErrorCode, Problem};
use keel_resilience::dead_letter::ReplayOptions;
use keel_token_manager::{Bearer, BearerRejection, Validator};
use serde_json::{Value, json};

use crate::auth::{self, Auth};
use crate::graph::{GraphSide, TaskView, Write, WriteError};

/// What every handler shares.
#[derive(Clone)]
pub(crate) struct App {
    pub(crate) graph: Arc<GraphSide>,
    pub(crate) auth: Arc<Auth>,
}

impl FromRef<App> for Validator {
    fn from_ref(app: &App) -> Validator {
        app.auth.validator.clone()
    }
}

impl FromRef<App> for Arc<Auth> {
    fn from_ref(app: &App) -> Arc<Auth> {
        app.auth.clone()
    }
}

/// The API's routes (state applied).
pub(crate) fn router(app: App) -> Router {
    Router::new()
        .route("/login", post(auth::login))
        .route("/refresh", post(auth::refresh))
        .route("/logout", post(auth::logout))
        .route("/.well-known/jwks.json", get(auth::jwks))
        .route("/plans", get(plans))
        .route("/plans/{plan}/tasks", get(plan_tasks))
        .route("/tasks/{id}", get(task))
        .route("/tasks/{id}", patch(update))
        .route("/admin/dead-letters", get(dead_letters))
        .route("/admin/dead-letters/replay", post(replay))
        // Writes are small: a task's title and progress.
        .layer(axum::extract::DefaultBodyLimit::max(64 * 1024))
        .with_state(app)
}

fn unavailable(detail: impl Into<String>) -> Response {
    let detail: String = detail.into();
    tracing::warn!(%detail, "Graph unavailable and nothing cached");
    Problem::new(ErrorCode::EXT_DEPENDENCY_FAILED)
        .with_detail(
            "Microsoft Graph is unavailable and the data is not cached; try again shortly.",
        )
        .with_retry_after(5)
        .into_response()
}

fn task_json(graph: &GraphSide, task: &TaskView) -> Value {
    let assignees: Vec<Value> = task
        .assignees
        .iter()
        .map(|id| json!({"id": id, "displayName": graph.user_name(id)}))
        .collect();
    json!({
        "id": task.id,
        "planId": task.plan_id,
        "title": task.title,
        "percentComplete": task.percent_complete,
        "etag": task.etag,
        "assignees": assignees,
    })
}

/// `GET /plans`.
async fn plans(State(app): State<App>, token: Bearer) -> Result<Json<Value>, BearerRejection> {
    token.require_scope("tasks:read")?;
    let plans: Vec<Value> = app
        .graph
        .plans
        .iter()
        .map(|(id, group)| json!({"id": id, "group": group}))
        .collect();
    Ok(Json(json!({ "value": plans })))
}

/// `GET /plans/{plan}/tasks`.
async fn plan_tasks(State(app): State<App>, token: Bearer, Path(plan): Path<String>) -> Response {
    if let Err(refused) = token.require_scope("tasks:read") {
        return refused.into_response();
    }
    if !app.graph.plans.iter().any(|(id, _)| *id == plan) {
        return Problem::new(ErrorCode::RES_NOT_FOUND)
            .with_detail("No such plan.")
            .into_response();
    }
    match app.graph.plan_tasks(&plan).await {
        Ok(tasks) => {
            let value: Vec<Value> = tasks.iter().map(|t| task_json(&app.graph, t)).collect();
            Json(json!({ "value": value })).into_response()
        }
        Err(e) => unavailable(e.0),
    }
}

/// `GET /tasks/{id}`, with the task's ETag in `ETag`.
async fn task(State(app): State<App>, token: Bearer, Path(id): Path<String>) -> Response {
    if let Err(refused) = token.require_scope("tasks:read") {
        return refused.into_response();
    }
    match app.graph.task(&id).await {
        Ok(Some(task)) => with_etag(
            Json(task_json(&app.graph, &task)).into_response(),
            &task.etag,
        ),
        Ok(None) => Problem::new(ErrorCode::RES_NOT_FOUND)
            .with_detail("No such task.")
            .into_response(),
        Err(e) => unavailable(e.0),
    }
}

fn with_etag(mut response: Response, etag: &str) -> Response {
    if let Ok(value) = HeaderValue::from_str(etag) {
        response.headers_mut().insert(header::ETAG, value);
    }
    response
}

/// `PATCH /tasks/{id}` with `If-Match: <etag>` and `{"title"?, "percentComplete"?}`.
async fn update(
    State(app): State<App>,
    token: Bearer,
    correlation: CorrelationId,
    Path(id): Path<String>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    if let Err(refused) = token.require_scope("tasks:write") {
        return refused.into_response();
    }
    let Some(etag) = headers.get(header::IF_MATCH).and_then(|v| v.to_str().ok()) else {
        return Problem::new(ErrorCode::VAL_INVALID_REQUEST)
            .with_detail("Send the task's ETag as If-Match (GET /tasks/{id} gives it).")
            .into_response();
    };
    let changes = match changes_of(&body) {
        Ok(changes) => changes,
        Err(detail) => {
            return Problem::new(ErrorCode::VAL_INVALID_REQUEST)
                .with_detail(detail)
                .into_response();
        }
    };
    match app
        .graph
        .update(&id, etag, changes, Some(correlation.to_string()))
        .await
    {
        Ok(task) => with_etag(
            Json(task_json(&app.graph, &task)).into_response(),
            &task.etag,
        ),
        Err(WriteError::Conflict(current)) => {
            let mut problem = Problem::new(ErrorCode::RES_PRECONDITION_FAILED).with_detail(
                "The task changed since you read it: here is its current version; apply your change to it.",
            );
            if let Some(current) = current.as_ref() {
                problem = problem.with_extension("current", task_json(&app.graph, current));
            }
            problem.into_response()
        }
        Err(WriteError::NotFound) => Problem::new(ErrorCode::RES_NOT_FOUND)
            .with_detail("No such task.")
            .into_response(),
        Err(WriteError::Refused(letter)) => {
            let mut response = Problem::new(ErrorCode::BIZ_RULE_VIOLATED)
                .with_detail("Microsoft Graph refused the change; it is kept in the dead-letter queue for an operator.")
                .with_extension("deadLetter", letter)
                .into_response();
            *response.status_mut() = StatusCode::UNPROCESSABLE_ENTITY;
            response
        }
        Err(WriteError::Unavailable(e)) => unavailable(e),
    }
}

/// The changes a PATCH may make, checked here (Planner's limits: a title of 1 to 255
/// characters, a `percentComplete` from 0 to 100), so that bad input is the caller's 400,
/// not a write Graph refuses.
fn changes_of(body: &Value) -> Result<Value, &'static str> {
    let Value::Object(fields) = body else {
        return Err("The body is a JSON object: {\"title\"?, \"percentComplete\"?}.");
    };
    if fields.is_empty() {
        return Err("Nothing to change: send title or percentComplete.");
    }
    for (name, value) in fields {
        let ok = match name.as_str() {
            "title" => value
                .as_str()
                .is_some_and(|t| !t.trim().is_empty() && t.chars().count() <= 255),
            "percentComplete" => value.as_u64().is_some_and(|p| p <= 100),
            _ => return Err("Only title and percentComplete can be changed."),
        };
        if !ok {
            return Err("title: 1 to 255 characters; percentComplete: an integer from 0 to 100.");
        }
    }
    Ok(body.clone())
}

/// `GET /admin/dead-letters`: what failed for good, oldest first.
async fn dead_letters(State(app): State<App>, token: Bearer) -> Response {
    if let Err(refused) = token.require_scope("tasks:admin") {
        return refused.into_response();
    }
    let _ = app.graph.dead_letters.stats().await; // refreshes the gauges
    match app.graph.dead_letters.list(None, 100).await {
        Ok(letters) => {
            let value: Vec<Value> = letters
                .iter()
                .map(|l| {
                    json!({
                        "id": l.id().as_str(),
                        "key": l.key(),
                        "error": l.message(),
                        "attempts": l.attempts(),
                        "write": serde_json::from_slice::<Value>(l.payload()).unwrap_or(Value::Null),
                    })
                })
                .collect();
            Json(json!({ "value": value })).into_response()
        }
        Err(e) => unavailable(e.to_string()),
    }
}

/// `POST /admin/dead-letters/replay`: each write again on the task's current version;
/// what succeeds leaves the queue, what fails again stays.
async fn replay(State(app): State<App>, token: Bearer) -> Response {
    if let Err(refused) = token.require_scope("tasks:admin") {
        return refused.into_response();
    }
    let graph = app.graph.clone();
    let report = app
        .graph
        .dead_letters
        .replay(ReplayOptions::default(), |letter| {
            let graph = graph.clone();
            async move {
                let write: Write = serde_json::from_slice(letter.payload())
                    .map_err(|e| format!("unreadable: {e}"))?;
                graph.replay(&write).await
            }
        })
        .await;
    match report {
        Ok(report) => Json(json!({
            "delivered": report.delivered,
            "failed": report.failed,
        }))
        .into_response(),
        Err(e) => unavailable(e.to_string()),
    }
}
