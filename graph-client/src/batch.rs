//! JSON batching: a [`Batch`] of steps, split into `$batch` requests of at most 20 with
//! `dependsOn` chains kept together (or continued in a later request when longer than
//! a request holds), answers matched by id, and throttled steps re-sent with their ids
//! after the longest `Retry-After`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use keel_resilience::{Classify, ErrorClass};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};

use crate::budget::mailbox_of;
use crate::client::{GraphClient, GraphResponse};
use crate::cloud::ApiVersion;
use crate::error::{BatchProblem, GraphError};
use crate::request::GraphRequest;

/// The most requests Graph takes in one `$batch`.
pub const MAX_BATCH: usize = 20;
/// The most requests to one mailbox in one `$batch` (Outlook runs at most four at once).
const MAX_PER_MAILBOX: usize = 4;

/// The id of a step in a [`Batch`]: what its answer is found by.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StepId(String);

impl StepId {
    /// The id as sent in the batch.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for StepId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A step that cannot be added to a batch.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BatchError {
    /// Ids must be unique within a batch (Graph compares them without case).
    #[error("batch step id `{0}` is used twice")]
    DuplicateId(String),
    /// A step may only depend on steps added before it.
    #[error("batch step depends on `{0}`, which is not an earlier step")]
    UnknownDependency(String),
    /// Ids are 1 to 128 ASCII letters, digits, `-`, `_`, `.` or `~`.
    #[error("batch step ids must be 1 to 128 ASCII letters, digits, -, _, . or ~")]
    InvalidId,
}

struct Step {
    id: String,
    request: GraphRequest,
    depends_on: Vec<usize>,
}

/// Requests to send together: any number, split into `$batch` requests of at most 20
/// by [`GraphClient::batch`]. A step may depend on earlier steps (`dependsOn`): it runs
/// after them, and fails with 424 when one of them failed.
///
/// ```
/// use keel_graph_client::{Batch, GraphRequest};
///
/// let mut batch = Batch::new();
/// let user = batch.add(GraphRequest::get("/users/ada@contoso.com"));
/// let groups = batch.add_after(GraphRequest::get("/users/ada@contoso.com/memberOf"), &[&user]);
/// assert_eq!((user.as_str(), groups.as_str()), ("1", "2"));
/// assert_eq!(batch.len(), 2);
/// ```
#[derive(Default)]
#[must_use]
pub struct Batch {
    steps: Vec<Step>,
    ids: HashMap<String, usize>,
}

impl std::fmt::Debug for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch")
            .field("steps", &self.steps.len())
            .finish_non_exhaustive()
    }
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Self {
        Batch::default()
    }

    /// How many steps.
    #[must_use]
    pub fn len(&self) -> usize {
        self.steps.len()
    }

    /// Whether it has no step.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// Adds an independent step, with the next free number as its id.
    pub fn add(&mut self, request: GraphRequest) -> StepId {
        self.push(self.free_id(), request, Vec::new())
    }

    /// Adds a step that runs after `after` (steps of this batch).
    ///
    /// # Panics
    /// Never for ids this batch returned; an id from another batch is ignored.
    pub fn add_after(&mut self, request: GraphRequest, after: &[&StepId]) -> StepId {
        let deps = after
            .iter()
            .filter_map(|id| self.ids.get(&id.0.to_ascii_lowercase()).copied())
            .collect();
        self.push(self.free_id(), request, deps)
    }

    /// Adds a step with your own id, after the steps named in `depends_on`.
    ///
    /// # Errors
    /// [`BatchError`] for an id used twice, an empty or over-long id, or a dependency
    /// that is not an earlier step.
    pub fn add_with_id(
        &mut self,
        id: &str,
        request: GraphRequest,
        depends_on: &[&str],
    ) -> Result<StepId, BatchError> {
        // ASCII only, so that comparing without case means one thing on both sides.
        if id.is_empty()
            || id.len() > 128
            || !id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~'))
        {
            return Err(BatchError::InvalidId);
        }
        // Graph compares ids without case.
        if self.ids.contains_key(&id.to_ascii_lowercase()) {
            return Err(BatchError::DuplicateId(id.chars().take(128).collect()));
        }
        let deps = depends_on
            .iter()
            .map(|d| {
                self.ids
                    .get(&d.to_ascii_lowercase())
                    .copied()
                    .ok_or_else(|| BatchError::UnknownDependency(d.chars().take(128).collect()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(self.push(id.to_owned(), request, deps))
    }

    fn free_id(&self) -> String {
        let mut n = self.steps.len() + 1;
        while self.ids.contains_key(&n.to_string().to_ascii_lowercase()) {
            n += 1;
        }
        n.to_string()
    }

    fn push(&mut self, id: String, request: GraphRequest, mut deps: Vec<usize>) -> StepId {
        deps.sort_unstable();
        deps.dedup();
        self.ids.insert(id.to_ascii_lowercase(), self.steps.len());
        self.steps.push(Step {
            id: id.clone(),
            request,
            depends_on: deps,
        });
        StepId(id)
    }
}

/// The answers of a batch's steps, by id.
#[derive(Debug)]
pub struct BatchResponses {
    order: Vec<String>,
    answers: HashMap<String, Result<GraphResponse, GraphError>>,
}

impl BatchResponses {
    /// The answer of step `id`: Graph's success, or the step's error (Graph's, a 424,
    /// or the failure of the `$batch` request that carried it).
    #[must_use]
    pub fn get(&self, id: &StepId) -> Option<&Result<GraphResponse, GraphError>> {
        self.answers.get(&id.0)
    }

    /// Takes the answer of step `id` out.
    pub fn take(&mut self, id: &StepId) -> Option<Result<GraphResponse, GraphError>> {
        self.answers.remove(&id.0)
    }

    /// The body of step `id` as `T`.
    ///
    /// # Errors
    /// The step's error, [`GraphError::Decode`], or [`GraphError::BatchResponse`] with
    /// [`BatchProblem::MissingResponse`] for an id that is not in the batch.
    pub fn json<T: DeserializeOwned>(&self, id: &StepId) -> Result<T, GraphError> {
        match self.answers.get(&id.0) {
            Some(Ok(response)) => response.json(),
            Some(Err(e)) => Err(copy_error(e)),
            None => Err(GraphError::BatchResponse {
                problem: BatchProblem::MissingResponse,
                request_id: None,
            }),
        }
    }

    /// The answers in the order the steps were added.
    pub fn iter(&self) -> impl Iterator<Item = (StepId, &Result<GraphResponse, GraphError>)> {
        self.order
            .iter()
            .filter_map(|id| self.answers.get(id).map(|a| (StepId(id.clone()), a)))
    }

    /// How many answers.
    #[must_use]
    pub fn len(&self) -> usize {
        self.answers.len()
    }

    /// Whether there are none.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.answers.is_empty()
    }
}

/// A copy of an error for a second reader (errors with a transport source are not
/// `Clone`): Graph's errors are copied whole, the rest by status and class.
fn copy_error(e: &GraphError) -> GraphError {
    match e {
        GraphError::Api(api) => GraphError::Api(api.clone()),
        GraphError::PreconditionFailed(api) => GraphError::PreconditionFailed(api.clone()),
        GraphError::FailedDependency(id) => GraphError::FailedDependency(id.clone()),
        GraphError::BatchFailed(inner) => GraphError::BatchFailed(inner.clone()),
        GraphError::BatchResponse {
            problem,
            request_id,
        } => GraphError::BatchResponse {
            problem: *problem,
            request_id: request_id.clone(),
        },
        GraphError::UnreadableError {
            status,
            problem,
            request_id,
            retry_after,
        } => GraphError::UnreadableError {
            status: *status,
            problem: *problem,
            request_id: request_id.clone(),
            retry_after: *retry_after,
        },
        GraphError::UnknownTenant(t) => GraphError::UnknownTenant(t.clone()),
        GraphError::ForeignUrl => GraphError::ForeignUrl,
        GraphError::Request(r) => GraphError::Request(r.clone()),
        _ => GraphError::BatchResponse {
            problem: BatchProblem::MissingResponse,
            request_id: None,
        },
    }
}

/// One step while the batch runs.
struct Running {
    id: String,
    request: GraphRequest,
    /// `url` relative to the version, or why it cannot be sent.
    url: Result<String, GraphError>,
    version: ApiVersion,
    mailbox: Option<String>,
    idempotent: bool,
    deps: Vec<usize>,
    answer: Option<Result<GraphResponse, GraphError>>,
    /// The last throttled answer, kept while the step waits to be re-sent.
    last: Option<GraphError>,
    sends: u32,
}

/// One `$batch` request being put together.
struct Outgoing {
    version: ApiVersion,
    steps: Vec<usize>,
}

/// Which unanswered steps go out now, in which requests: a step whose dependencies are
/// answered goes in the first request with room; a step depending on unanswered steps
/// goes with them when they are all in one request with room, or waits for a later
/// round. The first unanswered step always goes, so every round makes progress.
fn plan(steps: &[Running]) -> Vec<Outgoing> {
    let mut out: Vec<Outgoing> = Vec::new();
    let mut placed: HashMap<usize, usize> = HashMap::new();
    let fits = |b: &Outgoing, step: &Running| {
        b.steps.len() < MAX_BATCH
            && b.version == step.version
            && step.mailbox.as_ref().is_none_or(|m| {
                b.steps
                    .iter()
                    .filter(|&&j| steps[j].mailbox.as_ref() == Some(m))
                    .count()
                    < MAX_PER_MAILBOX
            })
    };
    for (i, step) in steps.iter().enumerate() {
        if step.answer.is_some() {
            continue;
        }
        let open: Vec<usize> = step
            .deps
            .iter()
            .copied()
            .filter(|&d| steps[d].answer.is_none())
            .collect();
        let target = if open.is_empty() {
            match out.iter().position(|b| fits(b, step)) {
                Some(b) => Some(b),
                None => {
                    out.push(Outgoing {
                        version: step.version,
                        steps: Vec::new(),
                    });
                    Some(out.len() - 1)
                }
            }
        } else {
            let homes: HashSet<Option<&usize>> = open.iter().map(|d| placed.get(d)).collect();
            match homes.into_iter().collect::<Vec<_>>().as_slice() {
                [Some(b)] if fits(&out[**b], step) => Some(**b),
                _ => None,
            }
        };
        if let Some(b) = target {
            out[b].steps.push(i);
            placed.insert(i, b);
        }
    }
    out
}

impl GraphClient {
    /// Sends `batch` for `tenant` as `$batch` requests of at most 20 steps, and returns
    /// every step's answer by id.
    ///
    /// Steps joined by `dependsOn` go in the same request while it has room; a longer
    /// chain is continued in a later request once the earlier part has answered. Steps
    /// throttled inside a batch (their own 429 or 503 and `Retry-After`, while the batch
    /// itself answers 200) are sent again with their ids and dependents after the
    /// longest `Retry-After`, within the client's attempts and total delay; so are
    /// transient failures (500, 502, 504) of idempotent steps. A step whose dependency
    /// failed is answered 424 ([`GraphError::FailedDependency`] when the client did not
    /// send it). At most four steps addressing one mailbox go in one request.
    pub async fn batch(&self, tenant: &str, batch: Batch) -> BatchResponses {
        let default_version = self.version();
        let order: Vec<String> = batch.steps.iter().map(|s| s.id.clone()).collect();
        let mut steps: Vec<Running> = batch
            .steps
            .into_iter()
            .map(|step| Running {
                id: step.id,
                url: step.request.relative_url().map_err(GraphError::from),
                version: step.request.own_version().unwrap_or(default_version),
                mailbox: mailbox_of(step.request.path()),
                idempotent: step.request.is_idempotent(),
                request: step.request,
                deps: step.depends_on,
                answer: None,
                last: None,
                sends: 0,
            })
            .collect();
        // The whole batch, its requests' own retries included, waits at most the
        // client's total delay.
        let deadline = tokio::time::Instant::now() + self.retry_total_delay();
        let mut previous = Duration::ZERO;
        let attempts = self.retry_attempts();
        loop {
            // Steps whose dependency failed for good get 424 without being sent; steps
            // that cannot be built get their error.
            for i in 0..steps.len() {
                if steps[i].answer.is_some() {
                    continue;
                }
                if let Some(&failed) = steps[i]
                    .deps
                    .iter()
                    .find(|&&d| matches!(steps[d].answer, Some(Err(_))))
                {
                    steps[i].answer =
                        Some(Err(GraphError::FailedDependency(steps[failed].id.clone())));
                } else if let Err(e) = &steps[i].url {
                    steps[i].answer = Some(Err(copy_error(e)));
                }
            }
            let outgoing = plan(&steps);
            if outgoing.is_empty() {
                break;
            }
            let sent = futures_util::future::join_all(
                outgoing
                    .iter()
                    .map(|out| self.send_batch(tenant, &steps, out, deadline)),
            )
            .await;
            let mut again: Vec<usize> = Vec::new();
            let mut delay: Option<Duration> = None;
            for (out, answers) in outgoing.iter().zip(sent) {
                // In request order: a dependent comes after what it depends on.
                let mut pairs: Vec<(usize, Result<GraphResponse, GraphError>)> =
                    out.steps.iter().copied().zip(answers).collect();
                pairs.sort_by_key(|(i, _)| *i);
                for (i, answer) in pairs {
                    steps[i].sends += 1;
                    let whole_batch = matches!(answer, Err(GraphError::BatchFailed(_)));
                    let retry = match &answer {
                        Err(e) if !whole_batch => match e.class() {
                            ErrorClass::Throttled { retry_after } => Some(retry_after),
                            ErrorClass::Transient if steps[i].idempotent => Some(None),
                            _ => None,
                        },
                        _ => None,
                    };
                    // Graph's 424 because a step it depends on is sent again: sent
                    // again with it, without counting as a send of its own.
                    let follows_retry = matches!(&answer, Err(e) if e.status() == Some(StatusCode::FAILED_DEPENDENCY))
                        && steps[i].deps.iter().any(|d| again.contains(d));
                    match retry {
                        Some(after) if steps[i].sends < attempts => {
                            let d = after
                                .unwrap_or_else(|| self.backoff_delay(steps[i].sends, previous));
                            delay = Some(delay.map_or(d, |m| m.max(d)));
                            steps[i].last = answer.err();
                            again.push(i);
                        }
                        _ if follows_retry => {
                            steps[i].sends -= 1;
                            steps[i].last = answer.err();
                            again.push(i);
                        }
                        _ => steps[i].answer = Some(answer),
                    }
                }
            }
            if let Some(delay) = delay {
                if tokio::time::Instant::now() + delay > deadline {
                    // Out of time: the steps waiting keep their last answer.
                    for &i in &again {
                        if let Some(last) = steps[i].last.take() {
                            steps[i].answer = Some(Err(last));
                        }
                    }
                    continue;
                }
                previous = delay;
                tracing::debug!(
                    steps = again.len(),
                    delay_ms = delay.as_millis() as u64,
                    "re-sending throttled batch steps"
                );
                tokio::time::sleep(delay).await;
            }
        }
        let answers = steps
            .into_iter()
            .map(|s| {
                let answer = s.answer.unwrap_or(Err(GraphError::BatchResponse {
                    problem: BatchProblem::MissingResponse,
                    request_id: None,
                }));
                (s.id, answer)
            })
            .collect();
        BatchResponses { order, answers }
    }

    /// Sends one `$batch` request; one answer per step of `out`, in its order.
    async fn send_batch(
        &self,
        tenant: &str,
        steps: &[Running],
        out: &Outgoing,
        deadline: tokio::time::Instant,
    ) -> Vec<Result<GraphResponse, GraphError>> {
        let in_request: HashSet<usize> = out.steps.iter().copied().collect();
        let items: Vec<Value> = out
            .steps
            .iter()
            .map(|&i| item_json(&steps[i], steps, &in_request))
            .collect();
        let mut request = GraphRequest::post("/$batch")
            .json(&json!({ "requests": items }))
            .version(out.version);
        request.mailboxes = Some(
            out.steps
                .iter()
                .filter_map(|&i| steps[i].mailbox.clone())
                .collect(),
        );
        request.idempotent = Some(out.steps.iter().all(|&i| steps[i].idempotent));
        request.deadline = Some(deadline);
        let ids: Vec<&str> = out.steps.iter().map(|&i| steps[i].id.as_str()).collect();
        let limiter = self.tenant_limiter(tenant);
        let epoch = limiter.epoch();
        // Straight out: a `$batch` is never gathered into another.
        let sent = match request.url(self.cloud(), out.version) {
            Ok(url) => self.send_url(tenant, &request, &url).await,
            Err(e) => Err(e.into()),
        };
        match sent {
            Ok(response) => {
                let answers = read_answers(&response, &ids);
                // Steps throttled inside the batch count as throttling of the tenant.
                if answers.iter().any(|a| {
                    matches!(a, Err(e) if matches!(e.status().map(|s| s.as_u16()), Some(429 | 503)))
                }) {
                    limiter.throttled_in(epoch);
                }
                answers
            }
            Err(e) => {
                let e = Arc::new(e);
                ids.iter()
                    .map(|_| Err(GraphError::BatchFailed(e.clone())))
                    .collect()
            }
        }
    }
}

/// A step as `$batch` wants it: id, method, url, headers, body, and `dependsOn` for the
/// steps it depends on that are in the same request.
fn item_json(step: &Running, steps: &[Running], in_request: &HashSet<usize>) -> Value {
    let mut item = Map::new();
    item.insert("id".into(), json!(step.id));
    item.insert("method".into(), json!(step.request.method().as_str()));
    item.insert("url".into(), json!(step.url.as_deref().unwrap_or_default()));
    let mut headers = Map::new();
    for (name, value) in step.request.headers() {
        if let Ok(value) = value.to_str() {
            headers.insert(name.as_str().to_owned(), json!(value));
        }
    }
    if let Some(body) = step.request.body() {
        match serde_json::from_slice::<Value>(body) {
            Ok(value) => {
                headers
                    .entry("content-type")
                    .or_insert_with(|| json!("application/json"));
                item.insert("body".into(), value);
            }
            Err(_) => {
                headers
                    .entry("content-type")
                    .or_insert_with(|| json!("application/octet-stream"));
                item.insert(
                    "body".into(),
                    json!(base64::engine::general_purpose::STANDARD.encode(body)),
                );
            }
        }
    }
    if !headers.is_empty() {
        item.insert("headers".into(), Value::Object(headers));
    }
    let deps: Vec<&str> = step
        .deps
        .iter()
        .filter(|d| in_request.contains(d))
        .map(|&d| steps[d].id.as_str())
        .collect();
    if !deps.is_empty() {
        item.insert("dependsOn".into(), json!(deps));
    }
    Value::Object(item)
}

/// Matches a `$batch` answer to the ids sent: an unknown or repeated id makes the whole
/// answer unusable; a missing one fails its step.
fn read_answers(response: &GraphResponse, ids: &[&str]) -> Vec<Result<GraphResponse, GraphError>> {
    let request_id: Option<String> = response
        .headers
        .get("request-id")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.chars().take(128).collect());
    let all = |problem: BatchProblem| -> Vec<Result<GraphResponse, GraphError>> {
        ids.iter()
            .map(|_| {
                Err(GraphError::BatchResponse {
                    problem,
                    request_id: request_id.clone(),
                })
            })
            .collect()
    };
    let Ok(payload) = serde_json::from_slice::<Value>(&response.body) else {
        return all(BatchProblem::NotJson);
    };
    let Some(answers) = payload.get("responses").and_then(Value::as_array) else {
        return all(BatchProblem::NotJson);
    };
    let mut found: HashMap<&str, Result<GraphResponse, GraphError>> = HashMap::new();
    for answer in answers {
        // Graph compares ids without case.
        let Some(id) = answer.get("id").and_then(Value::as_str).and_then(|id| {
            ids.iter()
                .find(|known| known.eq_ignore_ascii_case(id))
                .copied()
        }) else {
            return all(BatchProblem::UnknownId);
        };
        if found.contains_key(id) {
            return all(BatchProblem::DuplicateId);
        }
        found.insert(id, read_answer(answer, request_id.as_deref()));
    }
    ids.iter()
        .map(|id| {
            found.remove(id).unwrap_or_else(|| {
                Err(GraphError::BatchResponse {
                    problem: BatchProblem::MissingResponse,
                    request_id: request_id.clone(),
                })
            })
        })
        .collect()
}

/// One step's answer: its status, headers and body (JSON, or base64 for other types).
fn read_answer(
    answer: &Value,
    batch_request_id: Option<&str>,
) -> Result<GraphResponse, GraphError> {
    let Some(status) = answer
        .get("status")
        .and_then(Value::as_u64)
        .and_then(|s| u16::try_from(s).ok())
        .and_then(|s| StatusCode::from_u16(s).ok())
    else {
        return Err(GraphError::BatchResponse {
            problem: BatchProblem::BadItem,
            request_id: batch_request_id.map(str::to_owned),
        });
    };
    let mut headers = HeaderMap::new();
    if let Some(Value::Object(sent)) = answer.get("headers") {
        for (name, value) in sent.iter().take(64) {
            if let (Ok(name), Some(Ok(value))) = (
                HeaderName::from_bytes(name.as_bytes()),
                value.as_str().map(HeaderValue::from_str),
            ) {
                headers.append(name, value);
            }
        }
    }
    let is_json = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|v| v.to_ascii_lowercase().contains("json"));
    let body: bytes::Bytes = match answer.get("body") {
        None | Some(Value::Null) => bytes::Bytes::new(),
        Some(Value::String(text)) if !is_json => base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_or_else(
                |_| bytes::Bytes::from(text.clone().into_bytes()),
                bytes::Bytes::from,
            ),
        Some(value) => bytes::Bytes::from(value.to_string().into_bytes()),
    };
    if status.is_success() {
        Ok(GraphResponse {
            status,
            headers,
            body,
        })
    } else {
        Err(GraphError::from_response(status, &headers, &body))
    }
}
