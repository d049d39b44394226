//! What a groups delta gives: each group with the members added and removed.

use serde::{Deserialize, Serialize};

use crate::model::Group;

/// A group as `/groups/delta` gives it when members are selected: its properties, and
/// `members@delta` — every member in a full listing, the members added and removed
/// since in later rounds. Graph may give one group several times in a round, each time
/// with more of its members (a large group's are spread over pages; within a page the
/// tracker gathers them into one): apply each occurrence's members to your copy, and
/// start a group's membership afresh on a full listing's first page
/// ([`DeltaPage::resync`](super::DeltaPage::resync)).
///
/// ```
/// use keel_graph_client::delta::GroupChange;
///
/// let change: GroupChange = serde_json::from_str(r##"{
///     "id": "g1", "displayName": "Engineers",
///     "members@delta": [
///         {"@odata.type": "#microsoft.graph.user", "id": "u1"},
///         {"@odata.type": "#microsoft.graph.user", "id": "u2", "@removed": {"reason": "deleted"}}
///     ]
/// }"##).unwrap();
/// assert_eq!(change.group.display_name.as_deref(), Some("Engineers"));
/// assert!(!change.members[0].is_removed());
/// assert!(change.members[1].is_removed());
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct GroupChange {
    /// The group's properties (those selected).
    #[serde(flatten)]
    pub group: Group,
    /// Members added (or listed) and removed.
    #[serde(
        rename = "members@delta",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    pub members: Vec<MemberChange>,
}

/// One member in `members@delta`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct MemberChange {
    /// The member's id.
    pub id: String,
    /// `#microsoft.graph.user`, `#microsoft.graph.group`, …
    #[serde(
        rename = "@odata.type",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub odata_type: Option<String>,
    /// Present when the member left the group (removed, or deleted).
    #[serde(rename = "@removed", default, skip_serializing_if = "Option::is_none")]
    pub removed: Option<MemberRemoved>,
}

impl MemberChange {
    /// The member left the group.
    #[must_use]
    pub fn is_removed(&self) -> bool {
        self.removed.is_some()
    }
}

/// The `@removed` annotation of a member.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct MemberRemoved {
    /// Graph's reason (`deleted`), kept as sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}
