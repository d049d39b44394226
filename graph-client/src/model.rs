//! Graph's resources as serde types: tolerant of properties they do not name (Graph
//! adds properties without notice), optional where Graph may leave a property out or
//! `$select` may drop it. Dates stay in Graph's ISO 8601 text.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One page of a collection: its items, and where the next page is.
///
/// ```
/// use keel_graph_client::model::{Page, User};
///
/// let page: Page<User> = serde_json::from_str(r#"{
///   "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#users",
///   "@odata.nextLink": "https://graph.microsoft.com/v1.0/users?$skiptoken=X%27abc%27",
///   "value": [{"id": "87d349ed-44d7-43e1-9a83-5f2406dee5bd", "displayName": "Adele Vance"}]
/// }"#).unwrap();
/// assert_eq!(page.value[0].display_name.as_deref(), Some("Adele Vance"));
/// assert!(page.next_link.is_some());
/// ```
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[non_exhaustive]
pub struct Page<T> {
    /// The items of this page.
    #[serde(default = "Vec::new")]
    pub value: Vec<T>,
    /// `@odata.nextLink`: the next page, followed verbatim.
    #[serde(rename = "@odata.nextLink", default)]
    pub next_link: Option<String>,
    /// `@odata.deltaLink`: where the next delta round starts (the last page of a delta
    /// query).
    #[serde(rename = "@odata.deltaLink", default)]
    pub delta_link: Option<String>,
    /// `@odata.count`: the collection's size, with `$count=true` (first page).
    #[serde(rename = "@odata.count", default)]
    pub count: Option<u64>,
}

/// A user (`/users`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct User {
    /// The object id.
    pub id: String,
    /// The name shown in the address book.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// The sign-in name (`ada@contoso.com`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_principal_name: Option<String>,
    /// The SMTP address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mail: Option<String>,
    /// The given name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub given_name: Option<String>,
    /// The surname.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub surname: Option<String>,
    /// The job title.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_title: Option<String>,
    /// Whether the account can sign in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_enabled: Option<bool>,
}

/// A group (`/groups`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct Group {
    /// The object id.
    pub id: String,
    /// The display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// The description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The SMTP address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mail: Option<String>,
    /// Whether it is mail-enabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mail_enabled: Option<bool>,
    /// Whether it is a security group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_enabled: Option<bool>,
    /// `["Unified"]` for a Microsoft 365 group.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub group_types: Vec<String>,
}

/// A member of a group (`/groups/{id}/members`): a user, a group, a device or a
/// service principal, told apart by [`odata_type`](Self::odata_type).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct DirectoryObject {
    /// `#microsoft.graph.user`, `#microsoft.graph.group`, …
    #[serde(
        rename = "@odata.type",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub odata_type: Option<String>,
    /// The object id.
    pub id: String,
    /// The display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
}

impl DirectoryObject {
    /// Whether the member is a user.
    #[must_use]
    pub fn is_user(&self) -> bool {
        self.odata_type.as_deref() == Some("#microsoft.graph.user")
    }
}

/// A team (`/teams/{id}`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct Team {
    /// The team's id (its group's id).
    pub id: String,
    /// The display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// The description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// A channel of a team (`/teams/{id}/channels`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct Channel {
    /// The channel's id.
    pub id: String,
    /// The display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// The description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// `standard`, `private` or `shared`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub membership_type: Option<String>,
}

/// Who did something: a user or an application, by id.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct IdentitySet {
    /// The user, if a user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<Identity>,
    /// The application, if an application.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub application: Option<Identity>,
}

/// One identity of an [`IdentitySet`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct Identity {
    /// Its id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Its display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
}

/// A Planner plan (`/planner/plans/{id}`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct PlannerPlan {
    /// The plan's id.
    pub id: String,
    /// The title.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// The group that owns the plan (`owner`, deprecated in favour of `container`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// When it was created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_date_time: Option<String>,
    /// `@odata.etag`: what an update or delete must send as `If-Match`.
    #[serde(
        rename = "@odata.etag",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub etag: Option<String>,
}

/// A bucket of a plan (`/planner/buckets/{id}`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct PlannerBucket {
    /// The bucket's id.
    pub id: String,
    /// The name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The plan it belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan_id: Option<String>,
    /// Its place in a list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order_hint: Option<String>,
    /// `@odata.etag`: what an update or delete must send as `If-Match`.
    #[serde(
        rename = "@odata.etag",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub etag: Option<String>,
}

/// A Planner task (`/planner/tasks/{id}`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct PlannerTask {
    /// The task's id.
    pub id: String,
    /// The plan it belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan_id: Option<String>,
    /// The bucket it is in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket_id: Option<String>,
    /// The title.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// 0 to 100 (100: completed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent_complete: Option<u8>,
    /// 0 (urgent) to 10 (low).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u8>,
    /// Its place in a list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order_hint: Option<String>,
    /// When it is due.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub due_date_time: Option<String>,
    /// When it starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_date_time: Option<String>,
    /// When it was created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_date_time: Option<String>,
    /// When it was completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_date_time: Option<String>,
    /// Who created it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<IdentitySet>,
    /// The assignees, by user id (each value as Graph sends it).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub assignments: BTreeMap<String, serde_json::Value>,
    /// `@odata.etag`: what an update or delete must send as `If-Match`.
    #[serde(
        rename = "@odata.etag",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub etag: Option<String>,
}

/// The details of a Planner task (`/planner/tasks/{id}/details`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct PlannerTaskDetails {
    /// The task's id.
    pub id: String,
    /// The description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// What the task's card shows (`automatic`, `noPreview`, `checklist`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preview_type: Option<String>,
    /// Checklist items by id (as Graph sends them).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub checklist: BTreeMap<String, serde_json::Value>,
    /// References by encoded URL (as Graph sends them).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub references: BTreeMap<String, serde_json::Value>,
    /// `@odata.etag`: what an update must send as `If-Match`.
    #[serde(
        rename = "@odata.etag",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub etag: Option<String>,
}
