//! Planner: plans, buckets, tasks and task details, with the ETags Planner documents.
//! Updates and deletes must send `If-Match` with the item's current `@odata.etag` (a
//! stale one gets 412); writes answer 204, or 200 with the item when the request says
//! `Prefer: return=representation`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State as Shared};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine as _;
use serde_json::{Map, Value, json};

use super::State;
use super::call::{Call, access};
use super::graph::{
    authorize, bad_request, entity, error, not_found, ok, unknown_version, version_ok,
};

const READ: &[&str] = &[
    "Tasks.Read.All",
    "Tasks.ReadWrite.All",
    "Group.Read.All",
    "Group.ReadWrite.All",
];
const WRITE: &[&str] = &["Tasks.ReadWrite.All", "Group.ReadWrite.All"];
const TASK_FIELDS: &[&str] = &[
    "id",
    "title",
    "bucketId",
    "planId",
    "percentComplete",
    "priority",
];
const PLAN_FIELDS: &[&str] = &["id", "title", "owner"];
const BUCKET_FIELDS: &[&str] = &["id", "name", "planId"];

/// A Planner item and its version (its ETag).
#[derive(Debug, Clone)]
pub(crate) struct Item {
    data: Map<String, Value>,
    version: u64,
}

impl Item {
    fn etag(&self) -> String {
        // Planner's ETags are weak, quoted, base64 of an opaque version.
        let opaque = format!("'{}-Item  @@@@@@@@@@@@{:08}'", self.version, self.version);
        format!(
            "W/\"{}\"",
            base64::engine::general_purpose::STANDARD.encode(opaque)
        )
    }

    fn view(&self) -> Map<String, Value> {
        let mut view = self.data.clone();
        view.insert("@odata.etag".into(), json!(self.etag()));
        view
    }
}

/// The writable Planner data of one tenant.
#[derive(Debug)]
pub(crate) struct PlannerStore {
    tenant: usize,
    next: u64,
    plans: BTreeMap<String, Item>,
    buckets: BTreeMap<String, Item>,
    tasks: BTreeMap<String, Item>,
    details: HashMap<String, Item>,
    /// Deleted tasks, for delta: each id's plan and the version of its deletion.
    removed: HashMap<String, (String, u64)>,
    /// Bumped when delta state is reset: tokens of an older epoch are refused.
    pub(crate) delta_epoch: u64,
    /// How tokens of older epochs are refused.
    pub(crate) delta_reset: super::directory::DeltaReset,
}

impl PlannerStore {
    pub(crate) fn new(tenant: usize) -> Self {
        PlannerStore {
            tenant,
            next: 0,
            plans: BTreeMap::new(),
            buckets: BTreeMap::new(),
            tasks: BTreeMap::new(),
            details: HashMap::new(),
            removed: HashMap::new(),
            delta_epoch: 1,
            delta_reset: super::directory::DeltaReset::Gone,
        }
    }

    /// Whether `plan` exists.
    pub(crate) fn has_plan(&self, plan: &str) -> bool {
        self.plans.contains_key(plan)
    }

    /// The last version given to any Planner item: a delta round's snapshot.
    pub(crate) fn current(&self) -> u64 {
        self.next
    }

    /// The tasks of `plan` changed after version `after` (with their ETags), and those
    /// deleted after `removed_after`, in version order: at most `size` of them, each
    /// with its version, and whether more are left.
    pub(crate) fn task_changes(
        &self,
        plan: &str,
        after: u64,
        removed_after: u64,
        size: usize,
    ) -> (Vec<(u64, Value)>, bool) {
        let in_plan = |item: &Item| item.data.get("planId").and_then(Value::as_str) == Some(plan);
        let mut changes: Vec<(u64, Value)> = self
            .tasks
            .values()
            .filter(|t| t.version > after && in_plan(t))
            .map(|t| (t.version, Value::Object(t.view())))
            .chain(
                self.removed
                    .iter()
                    .filter(|(_, (p, v))| p == plan && *v > after.max(removed_after))
                    .map(|(id, (_, v))| (*v, json!({"id": id, "@removed": {"reason": "deleted"}}))),
            )
            .collect();
        changes.sort_unstable_by_key(|(v, _)| *v);
        let more = changes.len() > size;
        changes.truncate(size);
        (changes, more)
    }

    /// Test data: `n` more tasks in each plan (in its first bucket), for tenants that
    /// need more than the four seeded.
    pub(crate) fn add_tasks(&mut self, n: usize) {
        let plans: Vec<(String, Option<String>)> = self
            .plans
            .keys()
            .map(|plan| {
                let bucket = self
                    .buckets
                    .iter()
                    .find(|(_, b)| b.data.get("planId").and_then(Value::as_str) == Some(plan))
                    .map(|(id, _)| id.clone());
                (plan.clone(), bucket)
            })
            .collect();
        for (plan, bucket) in plans {
            for k in 0..n {
                let mut body = Map::new();
                body.insert("planId".into(), json!(plan));
                if let Some(bucket) = &bucket {
                    body.insert("bucketId".into(), json!(bucket));
                }
                body.insert("title".into(), json!(format!("Backlog item {}", k + 1)));
                body.insert("percentComplete".into(), json!((k * 10) % 100));
                self.create_task(body, None);
            }
        }
    }

    /// A new 28-character id, as Planner's look.
    fn id(&mut self) -> String {
        self.next += 1;
        let raw = format!("{:04}{:016}", self.tenant + 1, self.next);
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)[..27].to_owned() + "Z"
    }

    fn version(&mut self) -> u64 {
        self.next += 1;
        self.next
    }

    fn item(&mut self, data: Map<String, Value>) -> Item {
        Item {
            data,
            version: self.version(),
        }
    }

    /// A group's plan with buckets `To do` and `Done` and four tasks assigned in turn to
    /// `assignees`.
    pub(crate) fn seed_plan(
        &mut self,
        group: &str,
        title: &str,
        owner: Option<&str>,
        assignees: &[String],
    ) {
        let plan = self.id();
        let created = "2026-01-05T09:00:00Z";
        let by = |user: Option<&str>| json!({"user": {"id": user, "displayName": null}});
        let mut data = Map::new();
        data.insert("id".into(), json!(plan));
        data.insert("title".into(), json!(title));
        data.insert("owner".into(), json!(group));
        data.insert(
            "container".into(),
            json!({"containerId": group, "type": "group"}),
        );
        data.insert("createdDateTime".into(), json!(created));
        data.insert("createdBy".into(), by(owner));
        let item = self.item(data);
        self.plans.insert(plan.clone(), item);
        let mut buckets = Vec::new();
        for (i, name) in ["To do", "Done"].into_iter().enumerate() {
            let id = self.id();
            let mut data = Map::new();
            data.insert("id".into(), json!(id));
            data.insert("name".into(), json!(name));
            data.insert("planId".into(), json!(plan));
            data.insert("orderHint".into(), json!(format!("8585{i}")));
            let item = self.item(data);
            self.buckets.insert(id.clone(), item);
            buckets.push(id);
        }
        for t in 0..4 {
            let mut body = Map::new();
            body.insert("planId".into(), json!(plan));
            body.insert("bucketId".into(), json!(buckets[usize::from(t == 3)]));
            body.insert("title".into(), json!(format!("Task {} of {title}", t + 1)));
            if let Some(user) = assignees.get(t % assignees.len().max(1)) {
                body.insert(
                    "assignments".into(),
                    json!({ user.as_str(): {"@odata.type": "#microsoft.graph.plannerAssignment", "orderHint": " !"} }),
                );
            }
            if t == 3 {
                body.insert("percentComplete".into(), json!(100));
            }
            self.create_task(body, owner);
        }
    }

    fn create_task(&mut self, body: Map<String, Value>, creator: Option<&str>) -> String {
        let id = self.id();
        let mut data = Map::new();
        data.insert("id".into(), json!(id));
        data.insert("percentComplete".into(), json!(0));
        data.insert("priority".into(), json!(5));
        data.insert("orderHint".into(), json!("8585 !"));
        data.insert("createdDateTime".into(), json!("2026-01-05T09:00:00Z"));
        data.insert(
            "createdBy".into(),
            json!({"user": {"id": creator, "displayName": null}}),
        );
        data.insert("assignments".into(), json!({}));
        merge(&mut data, body);
        complete(&mut data);
        let item = self.item(data);
        self.tasks.insert(id.clone(), item);
        let mut details = Map::new();
        details.insert("id".into(), json!(id));
        details.insert("description".into(), json!(""));
        details.insert("previewType".into(), json!("automatic"));
        details.insert("checklist".into(), json!({}));
        details.insert("references".into(), json!({}));
        let item = self.item(details);
        self.details.insert(id.clone(), item);
        id
    }

    fn plans_of(&self, group: &str) -> Vec<Map<String, Value>> {
        self.plans
            .values()
            .filter(|p| p.data.get("owner").and_then(Value::as_str) == Some(group))
            .map(Item::view)
            .collect()
    }

    fn of_plan(items: &BTreeMap<String, Item>, plan: &str) -> Vec<Map<String, Value>> {
        items
            .values()
            .filter(|i| i.data.get("planId").and_then(Value::as_str) == Some(plan))
            .map(Item::view)
            .collect()
    }
}

/// Merges a PATCH body into an item: keys replaced, and in Planner's open types
/// (`assignments`, `checklist`, `references`) keys merged with `null` removing one.
fn merge(data: &mut Map<String, Value>, body: Map<String, Value>) {
    for (key, value) in body {
        if key.starts_with("@odata") || key == "id" {
            continue;
        }
        match (key.as_str(), value) {
            ("assignments" | "checklist" | "references", Value::Object(changes)) => {
                let Value::Object(existing) = data.entry(key.clone()).or_insert_with(|| json!({}))
                else {
                    continue;
                };
                for (k, v) in changes {
                    if v.is_null() {
                        existing.remove(&k);
                    } else {
                        existing.insert(k, v);
                    }
                }
            }
            (_, value) => {
                data.insert(key, value);
            }
        }
    }
}

/// Planner's limits on a task's fields: a title of at most 255 characters, a
/// `percentComplete` from 0 to 100; Graph's 400 otherwise.
fn invalid_task(state: &State, headers: &HeaderMap, task: &Map<String, Value>) -> Option<Response> {
    let title_ok = task
        .get("title")
        .is_none_or(|t| t.as_str().is_some_and(|t| t.chars().count() <= 255));
    let percent_ok = task
        .get("percentComplete")
        .is_none_or(|p| p.as_u64().is_some_and(|p| p <= 100));
    (!title_ok || !percent_ok).then(|| {
        bad_request(
            state,
            headers,
            "Invalid value: a task's title has at most 255 characters and percentComplete lies between 0 and 100.",
        )
    })
}

/// Planner sets `completedDateTime` when a task reaches 100%.
fn complete(data: &mut Map<String, Value>) {
    if data.get("percentComplete").and_then(Value::as_u64) == Some(100) {
        data.entry("completedDateTime")
            .or_insert_with(|| json!("2026-01-06T17:00:00Z"));
    } else {
        data.remove("completedDateTime");
    }
}

access!(Buckets, READ, BUCKET_FIELDS);
access!(Plans, READ, PLAN_FIELDS);
access!(Tasks, READ, TASK_FIELDS);

pub(crate) fn routes() -> Router<Arc<State>> {
    Router::new()
        .route("/{version}/groups/{id}/planner/plans", get(group_plans))
        .route("/{version}/planner/plans/{id}", get(get_plan))
        .route("/{version}/planner/plans/{id}/buckets", get(plan_buckets))
        .route("/{version}/planner/plans/{id}/tasks", get(plan_tasks))
        .route("/{version}/planner/buckets/{id}", get(get_bucket))
        .route("/{version}/planner/tasks", axum::routing::post(create_task))
        .route(
            "/{version}/planner/tasks/{id}",
            get(get_task).patch(update_task).delete(delete_task),
        )
        .route(
            "/{version}/planner/tasks/{id}/details",
            get(get_details).patch(update_details),
        )
}

async fn group_plans(call: Call<Plans>, Path((_, id)): Path<(String, String)>) -> Response {
    let tenant = call.tenant();
    if tenant.group(&id).is_none() {
        return call.not_found(&id);
    }
    let plans = tenant.planner().plans_of(&id);
    let plans: Vec<&Map<String, Value>> = plans.iter().collect();
    call.collection(&format!("groups/{id}/planner/plans"), &plans)
}

async fn get_plan(call: Call<Plans>, Path((_, id)): Path<(String, String)>) -> Response {
    let tenant = call.tenant();
    let plan = tenant.planner().plans.get(&id).map(Item::view);
    match plan {
        Some(plan) => call.entity("planner/plans", &plan),
        None => call.not_found(&id),
    }
}

async fn plan_buckets(call: Call<Buckets>, Path((_, id)): Path<(String, String)>) -> Response {
    let tenant = call.tenant();
    let buckets = {
        let planner = tenant.planner();
        if !planner.plans.contains_key(&id) {
            drop(planner);
            return call.not_found(&id);
        }
        PlannerStore::of_plan(&planner.buckets, &id)
    };
    let buckets: Vec<&Map<String, Value>> = buckets.iter().collect();
    call.collection(&format!("planner/plans/{id}/buckets"), &buckets)
}

async fn plan_tasks(call: Call<Tasks>, Path((_, id)): Path<(String, String)>) -> Response {
    let tenant = call.tenant();
    let tasks = {
        let planner = tenant.planner();
        if !planner.plans.contains_key(&id) {
            drop(planner);
            return call.not_found(&id);
        }
        PlannerStore::of_plan(&planner.tasks, &id)
    };
    let tasks: Vec<&Map<String, Value>> = tasks.iter().collect();
    call.collection(&format!("planner/plans/{id}/tasks"), &tasks)
}

async fn get_bucket(call: Call<Buckets>, Path((_, id)): Path<(String, String)>) -> Response {
    let tenant = call.tenant();
    let bucket = tenant.planner().buckets.get(&id).map(Item::view);
    match bucket {
        Some(bucket) => call.entity("planner/buckets", &bucket),
        None => call.not_found(&id),
    }
}

async fn get_task(call: Call<Tasks>, Path((_, id)): Path<(String, String)>) -> Response {
    let tenant = call.tenant();
    let task = tenant.planner().tasks.get(&id).map(Item::view);
    match task {
        Some(task) => call.entity("planner/tasks", &task),
        None => call.not_found(&id),
    }
}

async fn get_details(call: Call<Tasks>, Path((_, id)): Path<(String, String)>) -> Response {
    let tenant = call.tenant();
    let details = tenant.planner().details.get(&id).map(Item::view);
    match details {
        Some(details) => call.entity("planner/tasks/details", &details),
        None => call.not_found(&id),
    }
}

/// A JSON object body, or Graph's 400.
fn object_body(
    state: &State,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Map<String, Value>, Box<Response>> {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().starts_with("application/json"));
    if !json {
        return Err(Box::new(bad_request(
            state,
            headers,
            "A supported MIME type could not be found that matches the content type of the response.",
        )));
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(Box::new(error(
            state,
            headers,
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "The request body is not a valid JSON object.",
        ))),
    }
}

fn wants_representation(headers: &HeaderMap) -> bool {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim().eq_ignore_ascii_case("return=representation"))
}

/// Checks `If-Match` against the item's ETag: 400 without one, 412 with a stale one.
fn precondition(state: &State, headers: &HeaderMap, item: &Item) -> Result<(), Box<Response>> {
    let Some(sent) = headers.get(header::IF_MATCH).and_then(|v| v.to_str().ok()) else {
        return Err(Box::new(error(
            state,
            headers,
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "The If-Match header must be specified for this kind of request.",
        )));
    };
    if sent.trim() != item.etag() {
        return Err(Box::new(error(
            state,
            headers,
            StatusCode::PRECONDITION_FAILED,
            "",
            "The If-Match header contains an invalid value.",
        )));
    }
    Ok(())
}

/// The answer to a write: 204, or 200 with the item when asked for.
fn written(
    state: &State,
    headers: &HeaderMap,
    version: &str,
    context: &str,
    item: &Map<String, Value>,
) -> Response {
    if wants_representation(headers) {
        let mut response = entity(state, headers, version, context, item);
        response.headers_mut().insert(
            "preference-applied",
            axum::http::HeaderValue::from_static("return=representation"),
        );
        response
    } else {
        let mut response = StatusCode::NO_CONTENT.into_response();
        let reference = ok(state, headers, &Value::Null);
        for name in ["request-id", "client-request-id"] {
            if let Some(value) = reference.headers().get(name) {
                response.headers_mut().insert(name, value.clone());
            }
        }
        response
    }
}

async fn create_task(
    Shared(state): Shared<Arc<State>>,
    Path(version): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !version_ok(&version) {
        return unknown_version(&state, &headers);
    }
    let tenant = match authorize(&state, &headers, WRITE) {
        Ok(tenant) => tenant,
        Err(refused) => return *refused,
    };
    let body = match object_body(&state, &headers, &body) {
        Ok(body) => body,
        Err(refused) => return *refused,
    };
    if let Some(refused) = invalid_task(&state, &headers, &body) {
        return refused;
    }
    let plan = body
        .get("planId")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let task = {
        let mut planner = tenant.planner();
        match plan {
            Some(plan) if planner.plans.contains_key(&plan) => {
                if let Some(bucket) = body.get("bucketId").and_then(Value::as_str)
                    && planner
                        .buckets
                        .get(bucket)
                        .and_then(|b| b.data.get("planId"))
                        .and_then(Value::as_str)
                        != Some(plan.as_str())
                {
                    None
                } else {
                    let id = planner.create_task(body, None);
                    planner.tasks.get(&id).map(Item::view)
                }
            }
            _ => None,
        }
    };
    match task {
        Some(task) => {
            let mut response = entity(&state, &headers, &version, "planner/tasks", &task);
            *response.status_mut() = StatusCode::CREATED;
            response
        }
        None => bad_request(
            &state,
            &headers,
            "The plan or the bucket of the task does not exist.",
        ),
    }
}

async fn update_task(
    Shared(state): Shared<Arc<State>>,
    Path((version, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    write(&state, &version, &id, &headers, &body, false, Target::Task).await
}

async fn update_details(
    Shared(state): Shared<Arc<State>>,
    Path((version, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    write(
        &state,
        &version,
        &id,
        &headers,
        &body,
        false,
        Target::Details,
    )
    .await
}

async fn delete_task(
    Shared(state): Shared<Arc<State>>,
    Path((version, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    write(&state, &version, &id, &headers, &[], true, Target::Task).await
}

#[derive(Clone, Copy)]
enum Target {
    Task,
    Details,
}

async fn write(
    state: &State,
    version: &str,
    id: &str,
    headers: &HeaderMap,
    body: &[u8],
    delete: bool,
    target: Target,
) -> Response {
    if !version_ok(version) {
        return unknown_version(state, headers);
    }
    let tenant = match authorize(state, headers, WRITE) {
        Ok(tenant) => tenant,
        Err(refused) => return *refused,
    };
    let changes = if delete {
        Map::new()
    } else {
        match object_body(state, headers, body) {
            Ok(body) => body,
            Err(refused) => return *refused,
        }
    };
    let mut planner = tenant.planner();
    let store = &mut *planner;
    let context = match target {
        Target::Task => "planner/tasks",
        Target::Details => "planner/tasks/details",
    };
    let current = match target {
        Target::Task => store.tasks.get(id).cloned(),
        Target::Details => store.details.get(id).cloned(),
    };
    let Some(current) = current else {
        drop(planner);
        return not_found(state, headers, id);
    };
    if let Err(refused) = precondition(state, headers, &current) {
        return *refused;
    }
    if delete {
        if let Some(task) = store.tasks.remove(id) {
            let plan = task
                .data
                .get("planId")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            let version = store.version();
            store.removed.insert(id.to_owned(), (plan, version));
        }
        store.details.remove(id);
        drop(planner);
        let mut plain = headers.clone();
        plain.remove("prefer");
        return written(state, &plain, version, context, &Map::new());
    }
    if matches!(target, Target::Task)
        && let Some(refused) = invalid_task(state, headers, &changes)
    {
        drop(planner);
        return refused;
    }
    if matches!(target, Target::Task)
        && changes
            .get("planId")
            .is_some_and(|plan| Some(plan) != current.data.get("planId"))
    {
        drop(planner);
        return bad_request(state, headers, "A task cannot be moved to another plan.");
    }
    let mut updated = current;
    merge(&mut updated.data, changes);
    if matches!(target, Target::Task) {
        complete(&mut updated.data);
    }
    updated.version = store.version();
    let view = updated.view();
    match target {
        Target::Task => store.tasks.insert(id.to_owned(), updated),
        Target::Details => store.details.insert(id.to_owned(), updated),
    };
    drop(planner);
    written(state, headers, version, context, &view)
}
