//! Auto-batching: calls of one tenant made within a short window go out together as
//! one `$batch`, and each caller gets its own answer.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::oneshot;

use crate::batch::{Batch, MAX_BATCH};
use crate::client::{GraphClient, GraphResponse};
use crate::cloud::ApiVersion;
use crate::error::GraphError;
use crate::request::GraphRequest;

/// How calls are gathered into `$batch` requests.
///
/// ```
/// use std::time::Duration;
/// use keel_graph_client::AutoBatch;
///
/// // Calls made within 2 ms of the first waiting one, or 20 of them, go out together.
/// let config = AutoBatch::window(Duration::from_millis(2));
/// # let _ = config;
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AutoBatch {
    window: Duration,
    max_requests: usize,
    max_body: usize,
}

impl AutoBatch {
    /// Gathers the calls made within `window` of the first waiting one (1–5 ms is
    /// typical), or until 20 are waiting. Bodies over 64 KiB go out alone.
    #[must_use]
    pub fn window(window: Duration) -> Self {
        AutoBatch {
            window,
            max_requests: MAX_BATCH,
            max_body: 64 << 10,
        }
    }

    /// Sends as soon as `n` calls wait (1 to 20; default 20).
    #[must_use]
    pub fn max_requests(mut self, n: usize) -> Self {
        self.max_requests = n.clamp(1, MAX_BATCH);
        self
    }

    /// Calls whose body is larger than `bytes` go out alone (default 64 KiB).
    #[must_use]
    pub fn max_body(mut self, bytes: usize) -> Self {
        self.max_body = bytes;
        self
    }
}

type Waiting = (
    GraphRequest,
    oneshot::Sender<Result<GraphResponse, GraphError>>,
);

#[derive(Default)]
struct Queue {
    waiting: Vec<Waiting>,
    /// Bumped at each flush, so that a timer armed for an earlier gathering does not
    /// cut a later one short.
    generation: u64,
    armed: bool,
}

/// The gathering queues, one per tenant.
pub(crate) struct AutoBatcher {
    config: AutoBatch,
    queues: Mutex<HashMap<String, Queue>>,
}

impl std::fmt::Debug for AutoBatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AutoBatcher")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl AutoBatcher {
    pub(crate) fn new(config: AutoBatch) -> Self {
        AutoBatcher {
            config,
            queues: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `request` may travel in a batch: a body within the limit, the client's
    /// version, and not a `$batch` itself.
    pub(crate) fn accepts(&self, request: &GraphRequest, version: ApiVersion) -> bool {
        request
            .body()
            .is_none_or(|b| b.len() <= self.config.max_body)
            && request.own_version().is_none_or(|v| v == version)
            && !request.path().starts_with("/$batch")
    }

    /// Queues `request` and waits for its answer.
    pub(crate) async fn submit(
        &self,
        client: &GraphClient,
        tenant: &str,
        request: GraphRequest,
    ) -> Result<GraphResponse, GraphError> {
        let (tx, rx) = oneshot::channel();
        let tenant = tenant.to_ascii_lowercase();
        let (full, timer) = {
            let mut queues = self.queues.lock().unwrap_or_else(PoisonError::into_inner);
            let queue = queues.entry(tenant.clone()).or_default();
            queue.waiting.push((request, tx));
            if queue.waiting.len() >= self.config.max_requests {
                queue.generation += 1;
                queue.armed = false;
                (Some(std::mem::take(&mut queue.waiting)), None)
            } else if !queue.armed {
                queue.armed = true;
                (None, Some(queue.generation))
            } else {
                (None, None)
            }
        };
        if let Some(waiting) = full {
            tokio::spawn(flush(client.clone(), tenant.clone(), waiting));
        }
        if let Some(generation) = timer {
            let client = client.clone();
            let window = self.config.window;
            let tenant = tenant.clone();
            tokio::spawn(async move {
                tokio::time::sleep(window).await;
                let Some(batcher) = client.autobatch_ref() else {
                    return;
                };
                let waiting = {
                    let mut queues = batcher
                        .queues
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner);
                    match queues.get_mut(&tenant) {
                        Some(queue) if queue.generation == generation => {
                            queue.generation += 1;
                            queue.armed = false;
                            std::mem::take(&mut queue.waiting)
                        }
                        _ => return,
                    }
                };
                flush(client, tenant, waiting).await;
            });
        }
        match rx.await {
            Ok(answer) => answer,
            // The flushing task ended without answering (its runtime shut down).
            Err(_) => Err(GraphError::BatchResponse {
                problem: crate::error::BatchProblem::MissingResponse,
                request_id: None,
            }),
        }
    }
}

/// Sends what was gathered as one batch and answers each caller.
async fn flush(client: GraphClient, tenant: String, waiting: Vec<Waiting>) {
    if waiting.is_empty() {
        return;
    }
    let mut batch = Batch::new();
    let mut senders = Vec::with_capacity(waiting.len());
    for (request, tx) in waiting {
        // A caller that went away is not sent.
        if tx.is_closed() {
            continue;
        }
        senders.push((batch.add(request), tx));
    }
    if senders.is_empty() {
        return;
    }
    let mut answers = client.batch(&tenant, batch).await;
    for (id, tx) in senders {
        let answer = answers.take(&id).unwrap_or(Err(GraphError::BatchResponse {
            problem: crate::error::BatchProblem::MissingResponse,
            request_id: None,
        }));
        let _ = tx.send(answer);
    }
}
