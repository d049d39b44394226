//! Groups, their members, teams and channels, from the seeded directory (groups and
//! their members change through [`Emulator`](super::Emulator)'s methods).

use std::sync::Arc;

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::get;
use serde_json::{Map, Value, json};

use super::State;
use super::call::{Call, access};
use super::graph::{USER_FIELDS, error};

pub(crate) const READ_GROUPS: &[&str] = &[
    "Group.Read.All",
    "Group.ReadWrite.All",
    "Directory.Read.All",
];
const READ_MEMBERS: &[&str] = &[
    "GroupMember.Read.All",
    "Group.Read.All",
    "Group.ReadWrite.All",
    "Directory.Read.All",
];
const READ_TEAMS: &[&str] = &[
    "Team.ReadBasic.All",
    "TeamSettings.Read.All",
    "Group.Read.All",
];
const READ_CHANNELS: &[&str] = &[
    "Channel.ReadBasic.All",
    "ChannelSettings.Read.All",
    "Group.Read.All",
];
/// The group properties `$filter` may name.
const GROUP_FIELDS: &[&str] = &["id", "displayName", "mailNickname", "mail", "mailEnabled"];
const CHANNEL_FIELDS: &[&str] = &["id", "displayName", "membershipType"];

access!(Channels, READ_CHANNELS, CHANNEL_FIELDS);
access!(Groups, READ_GROUPS, GROUP_FIELDS);
access!(Members, READ_MEMBERS, USER_FIELDS);
access!(Teams, READ_TEAMS, GROUP_FIELDS);

pub(crate) fn routes() -> Router<Arc<State>> {
    Router::new()
        .route("/{version}/groups", get(list_groups))
        .route("/{version}/groups/{id}", get(get_group))
        .route("/{version}/groups/{id}/members", get(list_members))
        .route("/{version}/teams/{id}", get(get_team))
        .route("/{version}/teams/{id}/channels", get(list_channels))
}

async fn list_groups(call: Call<Groups>) -> Response {
    let tenant = call.tenant();
    let table = tenant.groups();
    let groups: Vec<&Map<String, Value>> = table.list.iter().collect();
    call.collection("groups", &groups)
}

async fn get_group(call: Call<Groups>, Path((_, id)): Path<(String, String)>) -> Response {
    let tenant = call.tenant();
    match tenant.group(&id) {
        Some(group) => call.entity("groups", &group),
        None => call.not_found(&id),
    }
}

async fn list_members(call: Call<Members>, Path((_, id)): Path<(String, String)>) -> Response {
    let tenant = call.tenant();
    let Some(members) = tenant.groups().members.get(&id).cloned() else {
        return call.not_found(&id);
    };
    let table = tenant.users();
    let members: Vec<Map<String, Value>> = members
        .iter()
        .filter_map(|&i| table.entries.get(i))
        .filter(|entry| entry.removed.is_none())
        .map(|entry| &entry.user)
        .map(|user| {
            let mut member = Map::new();
            member.insert("@odata.type".into(), json!("#microsoft.graph.user"));
            member.extend(user.clone());
            member
        })
        .collect();
    let members: Vec<&Map<String, Value>> = members.iter().collect();
    call.collection(&format!("groups/{id}/members"), &members)
}

fn team_not_found(state: &State, headers: &HeaderMap, id: &str) -> Response {
    error(
        state,
        headers,
        StatusCode::NOT_FOUND,
        "NotFound",
        &format!("No team found with Group Id {}", super::graph::shorten(id)),
    )
}

async fn get_team(call: Call<Teams>, Path((_, id)): Path<(String, String)>) -> Response {
    let Call { state, headers, .. } = &call;
    let tenant = call.tenant();
    let Some(group) = tenant
        .group(&id)
        .filter(|_| tenant.channels.contains_key(&id))
    else {
        return team_not_found(state, headers, &id);
    };
    let mut team = Map::new();
    team.insert("id".into(), json!(id));
    for key in ["displayName", "visibility"] {
        if let Some(value) = group.get(key) {
            team.insert(key.into(), value.clone());
        }
    }
    team.insert("description".into(), json!("A team of the emulator."));
    team.insert("isArchived".into(), json!(false));
    call.entity("teams", &team)
}

async fn list_channels(call: Call<Channels>, Path((_, id)): Path<(String, String)>) -> Response {
    let Call { state, headers, .. } = &call;
    let tenant = call.tenant();
    let Some(channels) = tenant.channels.get(&id) else {
        return team_not_found(state, headers, &id);
    };
    let channels: Vec<&Map<String, Value>> = channels.iter().collect();
    call.collection(&format!("teams/{id}/channels"), &channels)
}
