//! Typed helpers for the resources most services read and write: users, groups and
//! their members, teams and channels, and Planner plans, buckets, tasks and details.
//! Each is a [`GraphRequest`] away; these spell the paths and the Planner rules
//! (`If-Match` with the item's ETag, 204 or the item back with
//! `Prefer: return=representation`).

use futures_util::stream::BoxStream;
use serde::Serialize;

use crate::client::GraphClient;
use crate::error::GraphError;
use crate::model::{
    Channel, DirectoryObject, Group, PlannerBucket, PlannerPlan, PlannerTask, PlannerTaskDetails,
    User,
};
use crate::request::{GraphRequest, RequestError};

/// What a Planner write answers.
const RETURN_REPRESENTATION: &str = "return=representation";

/// `/{segment}/{id}/…`; an id that would not stay one segment (a `/`, `?`, `#`, `%`,
/// `.` or `..`, nothing) is refused.
fn path(segments: &[&str]) -> Result<String, GraphError> {
    let mut out = String::new();
    for segment in segments {
        if segment.is_empty()
            || *segment == "."
            || *segment == ".."
            || segment.contains(['/', '?', '#', '%', '\\'])
        {
            return Err(GraphError::Request(RequestError::InvalidPath));
        }
        out.push('/');
        out.push_str(segment);
    }
    Ok(out)
}

fn etag(etag: Option<&String>) -> Result<&str, GraphError> {
    etag.map(String::as_str)
        .ok_or(GraphError::Request(RequestError::MissingEtag))
}

impl GraphClient {
    fn listing<T: serde::de::DeserializeOwned + Send + 'static>(
        &self,
        tenant: &str,
        segments: &[&str],
    ) -> BoxStream<'static, Result<T, GraphError>> {
        use futures_util::StreamExt as _;
        match path(segments) {
            Ok(path) => self.items(tenant, GraphRequest::get(&path)),
            Err(e) => futures_util::stream::once(async move { Err(e) }).boxed(),
        }
    }

    /// The tenant's users, page after page.
    #[must_use]
    pub fn users(&self, tenant: &str) -> BoxStream<'static, Result<User, GraphError>> {
        self.items(tenant, GraphRequest::get("/users"))
    }

    /// The tenant's groups, page after page.
    #[must_use]
    pub fn groups(&self, tenant: &str) -> BoxStream<'static, Result<Group, GraphError>> {
        self.items(tenant, GraphRequest::get("/groups"))
    }

    /// The members of group `group` (users, groups, devices…; see
    /// [`DirectoryObject::is_user`]).
    #[must_use]
    pub fn group_members(
        &self,
        tenant: &str,
        group: &str,
    ) -> BoxStream<'static, Result<DirectoryObject, GraphError>> {
        self.listing(tenant, &["groups", group, "members"])
    }

    /// The channels of team `team`.
    #[must_use]
    pub fn channels(
        &self,
        tenant: &str,
        team: &str,
    ) -> BoxStream<'static, Result<Channel, GraphError>> {
        self.listing(tenant, &["teams", team, "channels"])
    }

    /// The Planner plans of group `group`.
    #[must_use]
    pub fn plans(
        &self,
        tenant: &str,
        group: &str,
    ) -> BoxStream<'static, Result<PlannerPlan, GraphError>> {
        self.listing(tenant, &["groups", group, "planner", "plans"])
    }

    /// The buckets of plan `plan`.
    #[must_use]
    pub fn buckets(
        &self,
        tenant: &str,
        plan: &str,
    ) -> BoxStream<'static, Result<PlannerBucket, GraphError>> {
        self.listing(tenant, &["planner", "plans", plan, "buckets"])
    }

    /// The tasks of plan `plan`, each with its ETag.
    #[must_use]
    pub fn tasks(
        &self,
        tenant: &str,
        plan: &str,
    ) -> BoxStream<'static, Result<PlannerTask, GraphError>> {
        self.listing(tenant, &["planner", "plans", plan, "tasks"])
    }

    /// One task, with its ETag.
    ///
    /// # Errors
    /// As [`GraphClient::send`], and [`GraphError::Decode`].
    pub async fn task(&self, tenant: &str, id: &str) -> Result<PlannerTask, GraphError> {
        self.get(
            tenant,
            &GraphRequest::get(&path(&["planner", "tasks", id])?),
        )
        .await
    }

    /// The details of task `id`, with their own ETag.
    ///
    /// # Errors
    /// As [`GraphClient::send`], and [`GraphError::Decode`].
    pub async fn task_details(
        &self,
        tenant: &str,
        id: &str,
    ) -> Result<PlannerTaskDetails, GraphError> {
        self.get(
            tenant,
            &GraphRequest::get(&path(&["planner", "tasks", id, "details"])?),
        )
        .await
    }

    /// Creates a task in `plan` (and `bucket`) titled `title`; returns it with its ETag.
    ///
    /// # Errors
    /// As [`GraphClient::send`], and [`GraphError::Decode`].
    pub async fn create_task(
        &self,
        tenant: &str,
        plan: &str,
        bucket: Option<&str>,
        title: &str,
    ) -> Result<PlannerTask, GraphError> {
        let mut body = serde_json::json!({ "planId": plan, "title": title });
        if let Some(bucket) = bucket {
            body["bucketId"] = serde_json::json!(bucket);
        }
        self.get(tenant, &GraphRequest::post("/planner/tasks").json(&body))
            .await
    }

    /// Applies `changes` (a PATCH body: the fields to set) to `task`, sending its ETag as
    /// `If-Match`. Graph answers 204, so nothing comes back: use
    /// [`update_task_returning`](Self::update_task_returning) for the new task and ETag.
    ///
    /// The call is retried after a lost answer (the ETag makes a repeat harmless): when
    /// the first attempt was applied, the repeat meets the new ETag and the call ends
    /// with [`GraphError::PreconditionFailed`] although the change is in place — read the
    /// task again to tell.
    ///
    /// # Errors
    /// [`GraphError::PreconditionFailed`] when the task changed since it was read (read
    /// it again and reapply); a task without an ETag gives
    /// [`RequestError::MissingEtag`]; otherwise as [`GraphClient::send`].
    pub async fn update_task<B: Serialize + ?Sized>(
        &self,
        tenant: &str,
        task: &PlannerTask,
        changes: &B,
    ) -> Result<(), GraphError> {
        let request = GraphRequest::patch(&path(&["planner", "tasks", &task.id])?)
            .if_match(etag(task.etag.as_ref())?)
            .json(changes);
        self.send(tenant, &request).await.map(|_| ())
    }

    /// As [`update_task`](Self::update_task), with `Prefer: return=representation`:
    /// returns the task as updated, with its new ETag.
    ///
    /// # Errors
    /// As [`update_task`](Self::update_task), and [`GraphError::Decode`].
    pub async fn update_task_returning<B: Serialize + ?Sized>(
        &self,
        tenant: &str,
        task: &PlannerTask,
        changes: &B,
    ) -> Result<PlannerTask, GraphError> {
        let request = GraphRequest::patch(&path(&["planner", "tasks", &task.id])?)
            .if_match(etag(task.etag.as_ref())?)
            .prefer(RETURN_REPRESENTATION)
            .json(changes);
        self.get(tenant, &request).await
    }

    /// Applies `changes` to a task's details with their ETag; returns them as updated.
    ///
    /// # Errors
    /// As [`update_task`](Self::update_task).
    pub async fn update_task_details<B: Serialize + ?Sized>(
        &self,
        tenant: &str,
        details: &PlannerTaskDetails,
        changes: &B,
    ) -> Result<PlannerTaskDetails, GraphError> {
        let request = GraphRequest::patch(&path(&["planner", "tasks", &details.id, "details"])?)
            .if_match(etag(details.etag.as_ref())?)
            .prefer(RETURN_REPRESENTATION)
            .json(changes);
        self.get(tenant, &request).await
    }

    /// Deletes `task`, sending its ETag as `If-Match`.
    ///
    /// # Errors
    /// As [`update_task`](Self::update_task).
    pub async fn delete_task(&self, tenant: &str, task: &PlannerTask) -> Result<(), GraphError> {
        let request = GraphRequest::delete(&path(&["planner", "tasks", &task.id])?)
            .if_match(etag(task.etag.as_ref())?);
        self.send(tenant, &request).await.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_are_one_segment_each() {
        assert_eq!(
            super::path(&["users", "ada@contoso.com", "messages"]).unwrap(),
            "/users/ada@contoso.com/messages"
        );
        assert_eq!(
            super::path(&["teams", "19:abc@thread.tacv2"]).unwrap(),
            "/teams/19:abc@thread.tacv2"
        );
        for bad in ["a/b", "..", ".", "", "x?y", "x#y", "x%2Fy"] {
            assert!(super::path(&["planner", "tasks", bad]).is_err(), "{bad}");
        }
    }
}
