//! The Graph side: the client (tokens from keel-token-manager's client), the local copy
//! of every plan's tasks and of the users kept by delta, the change notifications that
//! keep the users current, and the writes that go back to Graph with their ETags.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use axum::http::StatusCode;
use futures_util::TryStreamExt as _;
use keel_cache_layers::{Cache, EntryOptions};
use keel_graph_client::delta::{ChangeFeed, DeltaPage, DeltaQuery, DeltaStore, DeltaTracker};
use keel_graph_client::model::{PlannerTask, User};
use keel_graph_client::{GraphClient, GraphError};
use keel_resilience::ErrorClass;
use keel_resilience::dead_letter::{DeadLetterQueue, NewLetter};
use serde::{Deserialize, Serialize};

/// The tenant's name inside the client.
pub(crate) const TENANT: &str = "tenant";

/// A task as the service serves it (and caches it: L1, and Redis when configured).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct TaskView {
    pub(crate) id: String,
    pub(crate) plan_id: String,
    pub(crate) title: String,
    pub(crate) percent_complete: u8,
    /// Graph's ETag: send it back as `If-Match` to change the task.
    pub(crate) etag: String,
    /// Assignees' user ids.
    pub(crate) assignees: Vec<String>,
}

impl TaskView {
    fn of(task: PlannerTask) -> TaskView {
        TaskView {
            plan_id: task.plan_id.unwrap_or_default(),
            title: task.title.unwrap_or_default(),
            percent_complete: task.percent_complete.unwrap_or(0),
            etag: task.etag.unwrap_or_default(),
            assignees: task.assignments.keys().cloned().collect(),
            id: task.id,
        }
    }
}

/// Why a write did not happen.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WriteError {
    /// The task changed since the caller read it: its current version.
    #[error("the task changed since it was read")]
    Conflict(Box<Option<TaskView>>),
    /// Graph refused the write for good; it is in the dead-letter queue.
    #[error("Graph refused the change; it is kept as dead letter {0}")]
    Refused(String),
    /// No such task.
    #[error("no such task")]
    NotFound,
    /// Graph is unavailable now (after the client's retries): try again later.
    #[error("Graph is unavailable: {0}")]
    Unavailable(String),
}

/// A read that failed: Graph unavailable and nothing cached to serve.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct ReadError(pub(crate) String);

/// The change a caller asked for, as kept in the dead-letter queue.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Write {
    pub(crate) task: String,
    /// The ETag the caller wrote against: a replay uses it, so it never overwrites a
    /// change made since.
    pub(crate) etag: String,
    pub(crate) changes: serde_json::Value,
}

/// The Graph side of the service.
pub(crate) struct GraphSide {
    pub(crate) client: GraphClient,
    /// Plan id → its group's name.
    pub(crate) plans: Vec<(String, String)>,
    pub(crate) tasks: Cache<TaskView>,
    /// A plan's task ids (the list page), kept with the tasks.
    pub(crate) lists: Cache<Vec<String>>,
    /// User id → display name, kept by a users delta driven by notifications.
    pub(crate) users: Arc<RwLock<HashMap<String, String>>>,
    pub(crate) dead_letters: DeadLetterQueue,
    pub(crate) feeds: Vec<ChangeFeed>,
    pub(crate) users_feed: Option<ChangeFeed>,
}

impl GraphSide {
    /// The plans of the tenant's groups, and the caches; feeds start with
    /// [`start_feeds`](Self::start_feeds).
    pub(crate) async fn new(
        client: GraphClient,
        tasks: Cache<TaskView>,
        lists: Cache<Vec<String>>,
        dead_letters: DeadLetterQueue,
    ) -> Result<GraphSide, GraphError> {
        let groups: Vec<keel_graph_client::model::Group> =
            client.groups(TENANT).try_collect().await?;
        let mut plans = Vec::new();
        for group in groups {
            let found: Vec<keel_graph_client::model::PlannerPlan> =
                client.plans(TENANT, &group.id).try_collect().await?;
            for plan in found {
                plans.push((plan.id, group.display_name.clone().unwrap_or_default()));
            }
        }
        Ok(GraphSide {
            client,
            plans,
            tasks,
            lists,
            users: Arc::default(),
            dead_letters,
            feeds: Vec::new(),
            users_feed: None,
        })
    }

    /// One delta feed per plan (polled: Graph sends no Planner notifications), and the
    /// users' feed (driven by notifications, polled every ten minutes as a safety
    /// net). Each instance keeps its own place (`instance` in the keys).
    pub(crate) fn start_feeds(
        &mut self,
        store: &Arc<dyn DeltaStore>,
        instance: &str,
        poll: Duration,
    ) {
        for (plan, _) in &self.plans {
            let tracker = DeltaTracker::new(
                self.client.clone(),
                TENANT,
                DeltaQuery::plan_tasks(plan).page_size(200),
                store.clone(),
                &format!("{instance}/plan/{plan}"),
            );
            let (tasks, lists, plan) = (self.tasks.clone(), self.lists.clone(), plan.clone());
            let feed = ChangeFeed::builder(tracker).poll_every(poll).spawn(
                move |page: DeltaPage<PlannerTask>| {
                    let (tasks, lists, plan) = (tasks.clone(), lists.clone(), plan.clone());
                    async move { apply_tasks(&tasks, &lists, &plan, page).await }
                },
            );
            self.feeds.push(feed);
        }
        // The users' names: the whole list in memory, so a full listing at each start.
        let tracker = DeltaTracker::new(
            self.client.clone(),
            TENANT,
            DeltaQuery::users().select(["displayName"]),
            Arc::new(keel_graph_client::delta::MemoryDeltaStore::new()),
            "users",
        );
        let users = self.users.clone();
        self.users_feed = Some(
            ChangeFeed::builder(tracker)
                .poll_every(Duration::from_secs(600))
                .spawn(move |page: DeltaPage<User>| {
                    let mut users = users.write().unwrap_or_else(PoisonError::into_inner);
                    if page.resync {
                        users.clear();
                    }
                    for user in page.changed {
                        users.insert(user.id, user.display_name.unwrap_or_default());
                    }
                    for gone in page.removed {
                        users.remove(&gone.id);
                    }
                    async { Ok::<(), std::io::Error>(()) }
                }),
        );
    }

    /// Waits for every feed's first round (the copy is complete).
    pub(crate) async fn ready(&self) -> Result<(), keel_graph_client::delta::FeedError> {
        for feed in self.feeds.iter().chain(self.users_feed.iter()) {
            feed.changed().await?;
        }
        Ok(())
    }

    /// A user's name, for display.
    pub(crate) fn user_name(&self, id: &str) -> String {
        self.users
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
            .cloned()
            .unwrap_or_else(|| id.to_owned())
    }

    /// A task: from the cache, or Graph on a miss (one load however many ask).
    pub(crate) async fn task(&self, id: &str) -> Result<Option<Arc<TaskView>>, ReadError> {
        let client = self.client.clone();
        let key = id.to_owned();
        let loaded = self
            .tasks
            .get_or_load(id, move || async move {
                client.task(TENANT, &key).await.map(TaskView::of)
            })
            .await;
        match loaded {
            Ok(task) => Ok(Some(task)),
            Err(e) => match find_graph_error(&e) {
                // No such task, or an id that cannot be one (the client refuses to put
                // it in a path).
                Some(g) if g.status() == Some(StatusCode::NOT_FOUND) => Ok(None),
                Some(GraphError::Request(_)) => Ok(None),
                _ => Err(ReadError(e.to_string())),
            },
        }
    }

    /// A plan's tasks (ids from the list cache, each task from the task cache).
    pub(crate) async fn plan_tasks(&self, plan: &str) -> Result<Vec<Arc<TaskView>>, ReadError> {
        let client = self.client.clone();
        let key = plan.to_owned();
        let ids = self
            .lists
            .get_or_load(&format!("plan:{plan}"), move || async move {
                let tasks: Vec<PlannerTask> = client.tasks(TENANT, &key).try_collect().await?;
                Ok::<_, GraphError>(tasks.into_iter().map(|t| t.id).collect())
            })
            .await
            .map_err(|e| ReadError(e.to_string()))?;
        let mut tasks = Vec::with_capacity(ids.len());
        for id in ids.iter() {
            if let Some(task) = self.task(id).await? {
                tasks.push(task);
            }
        }
        Ok(tasks)
    }

    /// Applies `changes` (`title`, `percentComplete`) to task `id` if it is still at
    /// `etag`: the task as updated, written through the cache (the other instances
    /// drop their copy). A change Graph refuses for good goes to the dead-letter queue.
    pub(crate) async fn update(
        &self,
        id: &str,
        etag: &str,
        changes: serde_json::Value,
        correlation: Option<String>,
    ) -> Result<TaskView, WriteError> {
        self.write(id, etag, changes, Some(correlation)).await
    }

    /// [`update`](Self::update); a refused write is dead-lettered only when `keep` is
    /// given (with the request's correlation id).
    async fn write(
        &self,
        id: &str,
        etag: &str,
        changes: serde_json::Value,
        keep: Option<Option<String>>,
    ) -> Result<TaskView, WriteError> {
        let mut task = PlannerTask::default();
        id.clone_into(&mut task.id);
        task.etag = Some(etag.to_owned());
        match self
            .client
            .update_task_returning(TENANT, &task, &changes)
            .await
        {
            Ok(updated) => {
                let view = TaskView::of(updated);
                if let Err(e) = self.tasks.insert(&view.id, view.clone()).await {
                    // The cache keeps the key pending and fixes L2 when Redis is back.
                    tracing::warn!(error = %e, "the updated task is cached here only for now");
                }
                Ok(view)
            }
            Err(GraphError::PreconditionFailed(_)) => {
                // Someone changed it: drop what we have and show what Graph has.
                let _ = self.tasks.invalidate(id).await;
                let current = self.task(id).await.ok().flatten().map(|t| (*t).clone());
                Err(WriteError::Conflict(Box::new(current)))
            }
            Err(e)
                if e.status() == Some(StatusCode::NOT_FOUND)
                    || matches!(e, GraphError::Request(_)) =>
            {
                Err(WriteError::NotFound)
            }
            // Refused for good (not throttling, not an outage: those are the caller's
            // to retry later): kept for an operator.
            Err(e) if keel_resilience::Classify::class(&e) == ErrorClass::Permanent => {
                let Some(correlation) = keep else {
                    return Err(WriteError::Refused(e.to_string()));
                };
                let payload = serde_json::to_vec(&Write {
                    task: id.to_owned(),
                    etag: etag.to_owned(),
                    changes,
                })
                .unwrap_or_default();
                let mut letter = NewLetter::new(
                    format!("task/{id}"),
                    payload,
                    ErrorClass::Permanent,
                    e.to_string(),
                )
                .with_source("PATCH /tasks/{id}");
                if let Some(id) = correlation {
                    letter = letter.with_correlation_id(id);
                }
                match self.dead_letters.push(letter).await {
                    Ok(letter) => Err(WriteError::Refused(letter.as_str().to_owned())),
                    Err(kept) => Err(WriteError::Unavailable(kept.to_string())),
                }
            }
            Err(e) => Err(WriteError::Unavailable(e.to_string())),
        }
    }

    /// Applies a dead-lettered write again, against the version it was written for: a
    /// task changed since is not overwritten (the letter stays for a person to decide).
    pub(crate) async fn replay(&self, write: &Write) -> Result<(), String> {
        match self
            .write(&write.task, &write.etag, write.changes.clone(), None)
            .await
        {
            Ok(_) => Ok(()),
            Err(WriteError::Conflict(_)) => {
                Err("the task changed since; apply the change by hand".into())
            }
            Err(e) => Err(e.to_string()),
        }
    }
}

/// A delta page of a plan's tasks into the caches: changed tasks written through (the
/// other instances drop their copies), removed ones dropped, and the plan's list
/// dropped so it is read again.
async fn apply_tasks(
    tasks: &Cache<TaskView>,
    lists: &Cache<Vec<String>>,
    plan: &str,
    page: DeltaPage<PlannerTask>,
) -> Result<(), keel_cache_layers::CacheError> {
    let listed = !page.changed.is_empty() || !page.removed.is_empty() || page.full;
    for task in page.changed {
        let view = TaskView::of(task);
        tasks.insert(&view.id.clone(), view).await?;
    }
    for gone in page.removed {
        tasks.invalidate(&gone.id).await?;
    }
    if listed {
        lists.invalidate(&format!("plan:{plan}")).await?;
    }
    Ok(())
}

/// The Graph error inside a cache error's chain, if any.
fn find_graph_error(e: &keel_cache_layers::CacheError) -> Option<&GraphError> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(error) = source {
        if let Some(graph) = error.downcast_ref::<GraphError>() {
            return Some(graph);
        }
        source = error.source();
    }
    None
}

/// Default entry options: 10 minutes fresh (delta keeps them current), served stale
/// for an hour when Graph is down.
pub(crate) fn entry_options() -> EntryOptions {
    EntryOptions::new(Duration::from_secs(600))
        .fail_safe(Duration::from_secs(3_600))
        .fail_safe_throttle(Duration::from_secs(10))
}
