//! Delta queries on users (`/users/delta`), as Graph documents them: a round of pages
//! joined by `@odata.nextLink` (a `$skiptoken`) that ends with an `@odata.deltaLink`
//! (a `$deltatoken`); the first round lists the users that exist, later rounds what
//! changed since, deleted users with `@removed` (`changed` when restorable, `deleted`
//! when gone for good); `$deltatoken=latest` starts from now; query options are given
//! once and carried inside the tokens. After [`Emulator::reset_delta`](super::Emulator::reset_delta)
//! older links are refused: `410 Gone` with a `Location` to start again, or
//! `400 syncStateNotFound`.
//!
//! Groups (`/groups/delta`) with `members@delta`, their members spread over pages as
//! Graph spreads a large group's.
//!
//! Planner tasks of a plan (`/planner/plans/{id}/tasks/delta`) the same way, on `beta`
//! only, as Graph serves them: no query options but the tokens, removed tasks with
//! `"reason": "deleted"`, each page in the order the tasks last changed.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, RawQuery, State as Shared};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use axum::routing::get;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::State;
use super::directory::{DeltaReset, Users};
use super::graph::{READ_USERS, USER_FIELDS, bad_request, error, ok, prepare, shorten};
use super::percent_decode as decode;

/// Items per page unless `Prefer: odata.maxpagesize` asks for fewer or more.
const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 999;
/// The most properties a `$select` may name, and the longest token accepted.
const MAX_SELECT: usize = 64;
const MAX_TOKEN: usize = 4096;

pub(crate) fn routes() -> Router<Arc<State>> {
    Router::new()
        .route("/{version}/users/delta", get(users_delta))
        .route("/{version}/users/delta()", get(users_delta))
        .route("/{version}/users/microsoft.graph.delta", get(users_delta))
        .route("/{version}/users/microsoft.graph.delta()", get(users_delta))
        .route(
            "/{version}/planner/plans/{id}/tasks/delta",
            get(tasks_delta),
        )
        .route("/{version}/groups/delta", get(groups_delta))
        .route("/{version}/groups/delta()", get(groups_delta))
        .route("/{version}/groups/microsoft.graph.delta", get(groups_delta))
        .route(
            "/{version}/groups/microsoft.graph.delta()",
            get(groups_delta),
        )
}

/// What a delta or skip token carries (opaque to clients: base64 of this JSON).
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Position {
    /// The delta epoch it belongs to.
    e: u64,
    /// Changes after this sequence number are reported (0: the first round).
    s: u64,
    /// The round's snapshot: where its delta link will start the next round.
    u: u64,
    /// The next entry to look at.
    c: usize,
    /// The `$select` of the first request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sel: Option<Vec<String>>,
    /// Groups: the members of group `c` already given in this round.
    #[serde(default, skip_serializing_if = "is_zero")]
    m: usize,
    /// What the token belongs to (`users`, `groups`, `plan:{id}`): a token is refused
    /// elsewhere.
    #[serde(default)]
    r: String,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl Position {
    /// The first position of a round of epoch `e` that reports changes after `s` up to
    /// the snapshot `u`.
    fn round(e: u64, s: u64, u: u64, sel: Option<Vec<String>>) -> Position {
        Position {
            e,
            s,
            u,
            c: 0,
            sel,
            m: 0,
            r: String::new(),
        }
    }

    /// The token of this position on `scope`.
    fn encode(&self, scope: &str) -> String {
        let mut scoped = self.clone();
        scope.clone_into(&mut scoped.r);
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&scoped).unwrap_or_default())
    }

    fn decode(token: &str) -> Option<Position> {
        if token.len() > MAX_TOKEN {
            return None;
        }
        let bytes = URL_SAFE_NO_PAD.decode(token.as_bytes()).ok()?;
        let position: Position = serde_json::from_slice(&bytes).ok()?;
        let select_ok = position
            .sel
            .as_ref()
            .is_none_or(|s| s.len() <= MAX_SELECT && s.iter().all(|f| f.len() <= 64));
        select_ok.then_some(position)
    }
}

/// `start`, unless it is a position of another resource's tokens.
fn scoped(start: Start, scope: &str) -> Result<Start, String> {
    match &start {
        Start::Delta(p) | Start::Skip(p) if p.r != scope => Err("Invalid delta token.".into()),
        _ => Ok(start),
    }
}

/// The request's query: a fresh round, `latest`, or a position.
enum Start {
    Fresh(Option<Vec<String>>),
    Latest(Option<Vec<String>>),
    Delta(Position),
    Skip(Position),
}

fn parse(query: Option<&str>) -> Result<Start, String> {
    parse_for(query, USER_FIELDS, "user", false)
}

/// A delta query's options: `$select` of `fields`, `$expand=members` when `expand`
/// (kept as `members` in the selection), and the tokens.
fn parse_for(
    query: Option<&str>,
    fields_known: &[&str],
    type_name: &str,
    expand: bool,
) -> Result<Start, String> {
    let mut select: Option<Vec<String>> = None;
    let mut expand_members = false;
    let mut delta = None;
    let mut skip = None;
    for pair in query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let key = decode(key).ok_or("Invalid query string.")?;
        let value = decode(value).ok_or("Invalid query string.")?;
        match key.to_ascii_lowercase().as_str() {
            "$select" => {
                let fields: Vec<String> = value.split(',').map(|s| s.trim().to_owned()).collect();
                if fields.len() > MAX_SELECT {
                    return Err("Too many properties in $select.".into());
                }
                if let Some(bad) = fields.iter().find(|f| !fields_known.contains(&f.as_str())) {
                    return Err(format!(
                        "Could not find a property named '{}' on type 'microsoft.graph.{type_name}'.",
                        shorten(bad)
                    ));
                }
                select = Some(fields);
            }
            "$expand" if expand && value == "members" => expand_members = true,
            "$deltatoken" => delta = Some(value),
            "$skiptoken" => skip = Some(value),
            _ => {
                return Err(format!(
                    "Query option '{}' is not supported with delta.",
                    shorten(&key)
                ));
            }
        }
    }
    if expand_members
        && let Some(fields) = select.as_mut()
        && !fields.iter().any(|f| f == "members")
    {
        fields.push("members".into());
    }
    match (delta, skip) {
        (Some(_), Some(_)) => Err("Specify $deltatoken or $skiptoken, not both.".into()),
        (Some(token), None) if token == "latest" => Ok(Start::Latest(select)),
        (Some(token), None) => Position::decode(&token)
            .map(Start::Delta)
            .ok_or_else(|| "Invalid delta token.".into()),
        (None, Some(token)) => Position::decode(&token)
            .map(Start::Skip)
            .ok_or_else(|| "Invalid skip token.".into()),
        (None, None) => Ok(Start::Fresh(select)),
    }
}

async fn users_delta(
    Shared(state): Shared<Arc<State>>,
    Path(version): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let tenant = match prepare(&state, &version, &headers, None, READ_USERS, USER_FIELDS) {
        Ok((tenant, _)) => tenant,
        Err(refused) => return *refused,
    };
    let start = match parse(query.as_deref()).and_then(|s| scoped(s, "users")) {
        Ok(start) => start,
        Err(message) => return bad_request(&state, &headers, &message),
    };
    let page_size = page_size(&headers);
    let users = tenant.users();
    let link = |kind: &str, position: &Position| {
        format!(
            "{}/{version}/users/delta?{kind}={}",
            state.base,
            position.encode("users")
        )
    };
    let position = match start {
        Start::Fresh(sel) => Position::round(users.epoch, 0, users.seq, sel),
        Start::Latest(sel) => {
            let now = Position::round(users.epoch, users.seq, users.seq, sel);
            let body = json!({
                "@odata.context": context(&state.base, &version, now.sel.as_deref()),
                "@odata.deltaLink": link("$deltatoken", &now),
                "value": [],
            });
            return ok(&state, &headers, &body);
        }
        Start::Delta(p) | Start::Skip(p) if p.e != users.epoch => {
            return refuse_old(&state, &headers, &version, &users, p.sel.as_deref());
        }
        // A new round: changes since the last one's snapshot, up to now.
        Start::Delta(p) => Position::round(p.e, p.u, users.seq, p.sel),
        Start::Skip(p) => p,
    };
    let (items, next) = page(&users, &position, page_size);
    let context = context(&state.base, &version, position.sel.as_deref());
    let body = round_page(&context, position, next.map(|c| (c, 0)), items, link);
    let mut response = ok(&state, &headers, &body);
    if headers.contains_key("prefer")
        && page_size != DEFAULT_PAGE
        && let Ok(value) = HeaderValue::from_str(&format!("odata.maxpagesize={page_size}"))
    {
        response.headers_mut().insert("preference-applied", value);
    }
    response
}

/// `Prefer: odata.maxpagesize=N`, within 1..=999.
fn page_size(headers: &HeaderMap) -> usize {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|p| p.trim().strip_prefix("odata.maxpagesize="))
        .filter_map(|n| n.trim().parse::<usize>().ok())
        .next()
        .map_or(DEFAULT_PAGE, |n| n.clamp(1, MAX_PAGE))
}

fn context(base: &str, version: &str, select: Option<&[String]>) -> String {
    match select {
        Some(fields) => format!("{base}/{version}/$metadata#users({})", fields.join(",")),
        None => format!("{base}/{version}/$metadata#users"),
    }
}

/// One page from `position`: the items, and the next entry to look at when more are
/// left. The first round (`s == 0`) lists users that exist; later rounds every entry
/// changed after `s`, deleted ones with `@removed`. With replays set, a page repeats the
/// last items of the page before it.
fn page(users: &Users, position: &Position, size: usize) -> (Vec<Value>, Option<usize>) {
    let first_round = position.s == 0;
    let wanted = |i: usize| {
        users
            .entries
            .get(i)
            .is_some_and(|e| e.version > position.s && (!first_round || e.removed.is_none()))
    };
    let mut items = Vec::new();
    if users.replays > 0 && position.c > 0 {
        let mut replayed: Vec<usize> = (0..position.c.min(users.entries.len()))
            .rev()
            .filter(|&i| wanted(i))
            .take(users.replays)
            .collect();
        replayed.reverse();
        items.extend(replayed.into_iter().map(|i| item(users, i, position)));
    }
    let mut i = position.c;
    let mut taken = 0;
    while i < users.entries.len() && taken < size {
        if wanted(i) {
            items.push(item(users, i, position));
            taken += 1;
        }
        i += 1;
    }
    let more = (i..users.entries.len()).any(wanted);
    (items, more.then_some(i))
}

/// An entry as delta shows it: the user (its `id` and the selected properties), or its
/// id with `@removed`.
fn item(users: &Users, i: usize, position: &Position) -> Value {
    let entry = &users.entries[i];
    let id = entry.user.get("id").cloned().unwrap_or(Value::Null);
    if let Some(removal) = entry.removed {
        return json!({ "id": id, "@removed": { "reason": removal.reason() } });
    }
    match &position.sel {
        None => Value::Object(entry.user.clone()),
        Some(fields) => {
            let mut projected = Map::new();
            projected.insert("id".into(), id);
            for field in fields {
                if let Some(value) = entry.user.get(field) {
                    projected.insert(field.clone(), value.clone());
                }
            }
            Value::Object(projected)
        }
    }
}

/// A link from before a reset: `410 Gone` with where to start again, or
/// `400 syncStateNotFound`.
fn refuse_old(
    state: &State,
    headers: &HeaderMap,
    version: &str,
    users: &Users,
    select: Option<&[String]>,
) -> Response {
    let mut fresh = format!("{}/{version}/users/delta", state.base);
    if let Some(fields) = select {
        fresh.push_str("?$select=");
        crate::request::encode_query_value(&fields.join(","), &mut fresh);
    }
    refuse(state, headers, users.reset, &fresh)
}

/// Planner's read permissions.
const READ_TASKS: &[&str] = &[
    "Tasks.Read.All",
    "Tasks.ReadWrite.All",
    "Group.Read.All",
    "Group.ReadWrite.All",
];

/// `/planner/plans/{id}/tasks/delta` (beta). A position's `s` is the version the round
/// reports changes after (0: the first round, which lists the plan's tasks), `u` the
/// last version when the round started (the first round reports deletions after it),
/// and `c` the version of the last task given.
async fn tasks_delta(
    Shared(state): Shared<Arc<State>>,
    Path((version, plan)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let tenant = match prepare(&state, &version, &headers, None, READ_TASKS, &[]) {
        Ok((tenant, _)) => tenant,
        Err(refused) => return *refused,
    };
    if version != "beta" {
        return bad_request(
            &state,
            &headers,
            "Resource not found for the segment 'delta'.",
        );
    }
    let scope = format!("plan:{plan}");
    let start = match parse_tokens(query.as_deref()).and_then(|s| scoped(s, &scope)) {
        Ok(start) => start,
        Err(message) => return bad_request(&state, &headers, &message),
    };
    let size = page_size(&headers);
    let planner = tenant.planner();
    if !planner.has_plan(&plan) {
        drop(planner);
        return super::graph::not_found(&state, &headers, &plan);
    }
    let base = format!("{}/{version}/planner/plans/{plan}/tasks/delta", state.base);
    let link =
        |kind: &str, position: &Position| format!("{base}?{kind}={}", position.encode(&scope));
    let now = planner.current();
    let position = match start {
        Start::Fresh(_) => Position::round(planner.delta_epoch, 0, now, None),
        Start::Latest(_) => {
            return bad_request(&state, &headers, "Invalid delta token.");
        }
        Start::Delta(p) | Start::Skip(p) if p.e != planner.delta_epoch => {
            let how = planner.delta_reset;
            drop(planner);
            return refuse(&state, &headers, how, &base);
        }
        // Planner's cursor is a version: the round starts after the last one reported.
        Start::Delta(p) => Position {
            c: usize::try_from(p.s).unwrap_or(usize::MAX),
            ..Position::round(p.e, p.s, p.u, None)
        },
        Start::Skip(p) => p,
    };
    let removed_after = if position.s == 0 { position.u } else { 0 };
    let (changes, more) = planner.task_changes(
        &plan,
        u64::try_from(position.c).unwrap_or(u64::MAX),
        removed_after,
        size,
    );
    let last = changes
        .last()
        .map_or(u64::try_from(position.c).unwrap_or(u64::MAX), |(v, _)| *v);
    drop(planner);
    let mut body = Map::new();
    body.insert(
        "@odata.context".into(),
        json!(format!(
            "{}/{version}/$metadata#Collection(microsoft.graph.plannerTask)",
            state.base
        )),
    );
    if more {
        let next = Position {
            c: usize::try_from(last).unwrap_or(usize::MAX),
            ..position
        };
        body.insert("@odata.nextLink".into(), json!(link("$skiptoken", &next)));
    } else {
        // Nothing in the plan changed after `last` up to `now`: the next round starts there.
        let done = Position::round(position.e, now, now, None);
        body.insert("@odata.deltaLink".into(), json!(link("$deltatoken", &done)));
    }
    body.insert(
        "value".into(),
        Value::Array(changes.into_iter().map(|(_, item)| item).collect()),
    );
    ok(&state, &headers, &Value::Object(body))
}

/// A query of delta tokens only (Planner takes no other option).
fn parse_tokens(query: Option<&str>) -> Result<Start, String> {
    let has_other = query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .any(|pair| {
            let key = decode(pair.split_once('=').map_or(pair, |(k, _)| k)).unwrap_or_default();
            !matches!(
                key.to_ascii_lowercase().as_str(),
                "$deltatoken" | "$skiptoken"
            )
        });
    if has_other {
        return Err(
            "Planner's delta takes no query options but $deltatoken and $skiptoken.".into(),
        );
    }
    parse(query)
}

/// A link from before a reset, on a Planner delta.
fn refuse(state: &State, headers: &HeaderMap, how: DeltaReset, fresh: &str) -> Response {
    match how {
        DeltaReset::Gone => {
            let mut response = error(
                state,
                headers,
                StatusCode::GONE,
                "resyncRequired",
                "The delta state is no longer valid: synchronize again from the link in the Location header.",
            );
            if let Ok(location) = HeaderValue::from_str(fresh) {
                response.headers_mut().insert(header::LOCATION, location);
            }
            response
        }
        DeltaReset::Expired => error(
            state,
            headers,
            StatusCode::BAD_REQUEST,
            "syncStateNotFound",
            "The sync state generation is not found. The delta token is expired and data must be synchronized again.",
        ),
    }
}

/// The group properties a groups delta may select (and `members`).
const GROUP_DELTA_FIELDS: &[&str] = &[
    "id",
    "displayName",
    "description",
    "mailNickname",
    "mail",
    "mailEnabled",
    "securityEnabled",
    "groupTypes",
    "visibility",
    "members",
];

/// `/groups/delta`, as Graph documents it: each group changed (or every group, in the
/// first round) with `members@delta` — every member in the first round, the members
/// added and removed (`@removed`) since in later ones — when members are selected
/// (no `$select`, `members` in it, or `$expand=members`). A group's members are given
/// at most a page's size at a time: a group with more comes back on the next page with
/// the rest, as Graph spreads a large group's members.
async fn groups_delta(
    Shared(state): Shared<Arc<State>>,
    Path(version): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let tenant = match prepare(
        &state,
        &version,
        &headers,
        None,
        super::groups::READ_GROUPS,
        &[],
    ) {
        Ok((tenant, _)) => tenant,
        Err(refused) => return *refused,
    };
    let start = match parse_for(query.as_deref(), GROUP_DELTA_FIELDS, "group", true)
        .and_then(|s| scoped(s, "groups"))
    {
        Ok(start) => start,
        Err(message) => return bad_request(&state, &headers, &message),
    };
    let size = page_size(&headers);
    let base = format!("{}/{version}/groups/delta", state.base);
    let link =
        |kind: &str, position: &Position| format!("{base}?{kind}={}", position.encode("groups"));
    let groups = tenant.groups();
    let position = match start {
        Start::Fresh(sel) => Position::round(groups.epoch, 0, groups.seq, sel),
        Start::Latest(sel) => {
            let now = Position::round(groups.epoch, groups.seq, groups.seq, sel);
            drop(groups);
            let body = json!({"@odata.deltaLink": link("$deltatoken", &now), "value": []});
            return ok(&state, &headers, &body);
        }
        Start::Delta(p) | Start::Skip(p) if p.e != groups.epoch => {
            let how = groups.reset;
            drop(groups);
            let mut fresh = base.clone();
            if let Some(fields) = &p.sel {
                fresh.push_str("?$select=");
                crate::request::encode_query_value(&fields.join(","), &mut fresh);
            }
            return refuse(&state, &headers, how, &fresh);
        }
        Start::Delta(p) => Position::round(p.e, p.u, groups.seq, p.sel),
        Start::Skip(p) => p,
    };
    let users = tenant.users();
    let with_members = position
        .sel
        .as_ref()
        .is_none_or(|s| s.iter().any(|f| f == "members"));
    let first_round = position.s == 0;
    // What each group's members@delta holds in this round.
    let member_delta = |i: usize| -> Vec<Value> {
        if !with_members {
            return Vec::new();
        }
        let user = |u: usize, added: bool| {
            let id = users
                .entries
                .get(u)
                .and_then(|e| e.user.get("id"))
                .cloned()
                .unwrap_or(Value::Null);
            if added {
                json!({"@odata.type": "#microsoft.graph.user", "id": id})
            } else {
                json!({"@odata.type": "#microsoft.graph.user", "id": id, "@removed": {"reason": "deleted"}})
            }
        };
        if first_round {
            // The members as they were at the round's snapshot `u`, in a stable order:
            // a change between pages neither shifts nor hides anyone (it is the next
            // round's).
            let id = groups.list[i]
                .get("id")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let mut at_snapshot: std::collections::BTreeSet<usize> = groups
                .members
                .get(id)
                .into_iter()
                .flatten()
                .copied()
                .collect();
            for &(seq, g, u, added) in groups.log.iter().rev() {
                if seq <= position.u {
                    break;
                }
                if g == i {
                    if added {
                        at_snapshot.remove(&u);
                    } else {
                        at_snapshot.insert(u);
                    }
                }
            }
            at_snapshot.into_iter().map(|u| user(u, true)).collect()
        } else {
            // The net change of each member in (s, u]: the last one wins.
            let mut net: std::collections::BTreeMap<usize, bool> =
                std::collections::BTreeMap::new();
            for &(seq, g, u, added) in &groups.log {
                if g == i && seq > position.s && seq <= position.u {
                    net.insert(u, added);
                }
            }
            net.into_iter().map(|(u, added)| user(u, added)).collect()
        }
    };
    let wanted = |i: usize| {
        first_round
            || groups.versions[i] > position.s
            || groups
                .log
                .iter()
                .any(|&(seq, g, _, _)| g == i && seq > position.s && seq <= position.u)
    };
    let mut items = Vec::new();
    let (mut i, mut offset) = (position.c, position.m);
    let mut next = None;
    // The page's budget counts groups and members alike.
    let mut given = 0usize;
    while i < groups.list.len() && items.len() < size && given < size {
        if !wanted(i) {
            i += 1;
            offset = 0;
            continue;
        }
        let mut group = match &position.sel {
            None => groups.list[i].clone(),
            Some(fields) => {
                let mut projected = Map::new();
                projected.insert(
                    "id".into(),
                    groups.list[i].get("id").cloned().unwrap_or(Value::Null),
                );
                for field in fields {
                    if let Some(value) = groups.list[i].get(field) {
                        projected.insert(field.clone(), value.clone());
                    }
                }
                projected
            }
        };
        let members = member_delta(i);
        let room = size.saturating_sub(given).max(1);
        let end = offset.saturating_add(room).min(members.len());
        given += 1 + end.saturating_sub(offset);
        if offset < end {
            group.insert(
                "members@delta".into(),
                Value::Array(members[offset..end].to_vec()),
            );
        }
        items.push(Value::Object(group));
        if end < members.len() {
            // The rest of this group's members on the next page.
            next = Some((i, end));
            break;
        }
        i += 1;
        offset = 0;
    }
    if next.is_none() && (i..groups.list.len()).any(wanted) {
        next = Some((i, 0));
    }
    drop(users);
    drop(groups);
    let context = format!("{}/{version}/$metadata#groups", state.base);
    let body = round_page(&context, position, next, items, link);
    ok(&state, &headers, &body)
}

/// A page of a round: its items, and the next link to `next` (an entry, and for groups
/// the members of it already given) or, at the end, the delta link where the next round
/// starts (changes after the round's snapshot `u`).
fn round_page(
    context: &str,
    position: Position,
    next: Option<(usize, usize)>,
    items: Vec<Value>,
    link: impl Fn(&str, &Position) -> String,
) -> Value {
    let mut body = Map::new();
    body.insert("@odata.context".into(), json!(context));
    match next {
        Some((c, m)) => {
            let next = Position {
                c,
                m,
                sel: position.sel.clone(),
                ..position
            };
            body.insert("@odata.nextLink".into(), json!(link("$skiptoken", &next)));
        }
        None => {
            let done = Position::round(position.e, position.u, position.u, position.sel);
            body.insert("@odata.deltaLink".into(), json!(link("$deltatoken", &done)));
        }
    }
    body.insert("value".into(), Value::Array(items));
    Value::Object(body)
}
