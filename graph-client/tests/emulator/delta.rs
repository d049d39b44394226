//! Delta tracking of users against the emulator: full and incremental rounds, removals
//! with their reasons, replays, `$deltatoken=latest`, resynchronization after a `410
//! Gone` or `syncStateNotFound` in the middle of a round, and a handler that fails
//! between pages resuming where it stopped. Each ends in the same local copy as a plain
//! read of `/users`.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use futures_util::TryStreamExt as _;
use keel_graph_client::delta::{
    DeltaError, DeltaPage, DeltaQuery, DeltaStore, DeltaTracker, FileDeltaStore, MemoryDeltaStore,
};
use keel_graph_client::emulator::{DeltaReset, Emulator, FaultRule};
use keel_graph_client::model::User;
use keel_graph_client::{GraphClient, GraphRequest};

use super::client::built;

const TENANT: &str = "contoso.onmicrosoft.com";

/// A local copy kept by delta: names by id, and what a full listing saw.
#[derive(Default)]
struct Mirror {
    users: BTreeMap<String, Option<String>>,
    seen: HashSet<String>,
    reasons: Vec<String>,
    resyncs: u32,
}

impl Mirror {
    fn apply(&mut self, page: DeltaPage<User>) {
        if page.resync {
            self.resyncs += 1;
            self.seen.clear();
        }
        for user in page.changed {
            if page.full {
                self.seen.insert(user.id.clone());
            }
            self.users.insert(user.id, user.display_name);
        }
        for gone in page.removed {
            self.users.remove(&gone.id);
            self.reasons.push(gone.reason);
        }
        // A full listing ends: what it did not name is gone.
        if page.full && page.last {
            let seen = std::mem::take(&mut self.seen);
            self.users.retain(|id, _| seen.contains(id));
        }
    }
}

async fn truth(client: &GraphClient) -> BTreeMap<String, Option<String>> {
    client
        .items::<User>("contoso", GraphRequest::get("/users").top(999))
        .map_ok(|u| (u.id, u.display_name))
        .try_collect()
        .await
        .unwrap()
}

async fn round(
    tracker: &DeltaTracker,
    mirror: &mut Mirror,
) -> keel_graph_client::delta::RoundSummary {
    tracker
        .round(|page: DeltaPage<User>| {
            mirror.apply(page);
            async { Ok::<(), std::io::Error>(()) }
        })
        .await
        .unwrap()
}

fn tracker(client: &GraphClient, store: Arc<dyn DeltaStore>, query: DeltaQuery) -> DeltaTracker {
    DeltaTracker::new(client.clone(), "contoso", query, store, "contoso/users")
}

#[tokio::test]
async fn rounds_follow_changes_removals_and_replays_to_the_same_copy_as_a_full_read() {
    let graph = Emulator::start_default().await.unwrap();
    let client = built(&graph, |b| b);
    let store: Arc<dyn DeltaStore> = Arc::new(MemoryDeltaStore::new());
    let tracker = tracker(
        &client,
        store,
        DeltaQuery::users().select(["displayName"]).page_size(40),
    );
    let mut mirror = Mirror::default();

    let first = round(&tracker, &mut mirror).await;
    assert_eq!((first.pages, first.changed, first.full), (7, 250, true));
    assert_eq!(mirror.users, truth(&client).await);

    // Nothing changed: one page, nothing in it.
    let quiet = round(&tracker, &mut mirror).await;
    assert_eq!(
        (quiet.pages, quiet.changed, quiet.removed, quiet.full),
        (1, 0, 0, false)
    );

    let ids: Vec<String> = mirror.users.keys().cloned().collect();
    assert!(graph.update_user(
        TENANT,
        &ids[3],
        serde_json::json!({"displayName": "Renamed 3"})
    ));
    assert!(graph.update_user(
        TENANT,
        &ids[200],
        serde_json::json!({"displayName": "Renamed 200"})
    ));
    assert!(graph.delete_user(TENANT, &ids[10], false));
    assert!(graph.delete_user(TENANT, &ids[11], true));
    let added = graph.add_user(TENANT, "Newcomer").unwrap();
    // Changed twice: seen once, as it is now.
    assert!(graph.update_user(
        TENANT,
        &ids[3],
        serde_json::json!({"displayName": "Renamed 3 again"})
    ));
    let changes = round(&tracker, &mut mirror).await;
    assert_eq!(
        (changes.changed, changes.removed, changes.full),
        (3, 2, false)
    );
    let mut reasons = mirror.reasons.clone();
    reasons.sort();
    assert_eq!(reasons, ["changed", "deleted"]);
    assert_eq!(
        mirror.users.get(&ids[3]),
        Some(&Some("Renamed 3 again".to_owned()))
    );
    assert_eq!(mirror.users.get(&added), Some(&Some("Newcomer".to_owned())));
    assert_eq!(mirror.users, truth(&client).await);

    // A restored user comes back as a change; replays repeat items across pages.
    graph.replay_delta_items(TENANT, 3);
    assert!(graph.update_user(
        TENANT,
        &ids[10],
        serde_json::json!({"displayName": "Restored"})
    ));
    for i in (20..220).step_by(2) {
        assert!(graph.update_user(
            TENANT,
            &ids[i],
            serde_json::json!({"displayName": format!("Batch {i}")})
        ));
    }
    let replayed = round(&tracker, &mut mirror).await;
    assert!(replayed.pages >= 3, "{replayed:?}");
    assert_eq!(
        replayed.changed, 101,
        "identical repeats across pages are dropped: {replayed:?}"
    );
    assert_eq!(
        mirror.users.get(&ids[10]),
        Some(&Some("Restored".to_owned()))
    );
    assert_eq!(mirror.users, truth(&client).await);
}

#[tokio::test]
async fn a_410_in_the_middle_of_a_round_resynchronizes_from_its_location() {
    let graph = Emulator::start_default().await.unwrap();
    let client = built(&graph, |b| b);
    let store: Arc<dyn DeltaStore> = Arc::new(MemoryDeltaStore::new());
    let tracker = tracker(
        &client,
        store,
        DeltaQuery::users().select(["displayName"]).page_size(50),
    );
    let mut mirror = Mirror::default();
    round(&tracker, &mut mirror).await;
    // A user the mirror will hold but Graph will forget while the mirror is not looking:
    // only the full listing after the resync can tell.
    let ids: Vec<String> = mirror.users.keys().cloned().collect();
    for (i, id) in ids.iter().take(120).enumerate() {
        assert!(graph.update_user(
            TENANT,
            id,
            serde_json::json!({"displayName": format!("Moved {i}")})
        ));
    }
    let mut pages = 0;
    let summary = tracker
        .round(|page: DeltaPage<User>| {
            pages += 1;
            if pages == 1 {
                // Graph loses the round's state after its first page, and a user is
                // deleted for good meanwhile.
                graph.reset_delta(TENANT, DeltaReset::Gone);
                assert!(graph.delete_user(TENANT, &ids[249], true));
            }
            mirror.apply(page);
            async { Ok::<(), std::io::Error>(()) }
        })
        .await
        .unwrap();
    assert_eq!(summary.resyncs, 1);
    assert!(summary.full);
    // The first round's listing, then the resync's.
    assert_eq!(mirror.resyncs, 2);
    assert!(!mirror.users.contains_key(&ids[249]));
    assert_eq!(mirror.users, truth(&client).await);
    // The stored link is good again: the next round is incremental.
    let next = round(&tracker, &mut mirror).await;
    assert_eq!((next.full, next.resyncs), (false, 0));
}

#[tokio::test]
async fn an_expired_delta_link_starts_the_query_again() {
    let graph = Emulator::start_default().await.unwrap();
    let client = built(&graph, |b| b);
    let store: Arc<dyn DeltaStore> = Arc::new(MemoryDeltaStore::new());
    let tracker = tracker(&client, store, DeltaQuery::users().page_size(100));
    let mut mirror = Mirror::default();
    round(&tracker, &mut mirror).await;
    graph.reset_delta(TENANT, DeltaReset::Expired);
    let ids: Vec<String> = mirror.users.keys().cloned().collect();
    assert!(graph.delete_user(TENANT, &ids[0], true));
    let again = round(&tracker, &mut mirror).await;
    assert_eq!((again.resyncs, again.full, again.changed), (1, true, 249));
    assert_eq!(mirror.users, truth(&client).await);
}

#[tokio::test]
async fn a_handler_failing_between_pages_resumes_at_the_page_it_failed() {
    let graph = Emulator::start_default().await.unwrap();
    let client = built(&graph, |b| b);
    let dir = tempfile::tempdir().unwrap();
    let query = DeltaQuery::users().select(["displayName"]).page_size(60);
    let file = |dir: &std::path::Path| -> Arc<dyn DeltaStore> {
        Arc::new(FileDeltaStore::new(dir).unwrap())
    };
    let mut mirror = Mirror::default();
    // A full listing that fails half-way starts again from its first page (so that the
    // marks of the listing cover all of it).
    let mut given = 0;
    let failed = tracker(&client, file(dir.path()), query.clone())
        .round(|page: DeltaPage<User>| {
            given += 1;
            let fail = given == 3;
            if !fail {
                mirror.apply(page);
            }
            async move {
                if fail {
                    Err(std::io::Error::other("the local database is down"))
                } else {
                    Ok(())
                }
            }
        })
        .await
        .unwrap_err();
    assert!(matches!(failed, DeltaError::Handler(_)), "{failed:?}");
    let listed = round(
        &tracker(&client, file(dir.path()), query.clone()),
        &mut mirror,
    )
    .await;
    assert_eq!((listed.pages, listed.changed, listed.full), (5, 250, true));
    assert_eq!(mirror.users, truth(&client).await);

    // An incremental round resumes at the page that failed, in another process (the
    // same directory, a new store and tracker).
    let ids: Vec<String> = mirror.users.keys().cloned().collect();
    for (i, id) in ids.iter().take(130).enumerate() {
        assert!(graph.update_user(
            TENANT,
            id,
            serde_json::json!({"displayName": format!("Step {i}")})
        ));
    }
    let mut given = 0;
    let failed = tracker(&client, file(dir.path()), query.clone())
        .round(|page: DeltaPage<User>| {
            given += 1;
            let fail = given == 2;
            if !fail {
                mirror.apply(page);
            }
            async move {
                if fail {
                    Err(std::io::Error::other("the local database is down"))
                } else {
                    Ok(())
                }
            }
        })
        .await
        .unwrap_err();
    assert!(matches!(failed, DeltaError::Handler(_)), "{failed:?}");
    let resumed = round(&tracker(&client, file(dir.path()), query), &mut mirror).await;
    assert_eq!(
        (resumed.pages, resumed.changed, resumed.full),
        (2, 70, false)
    );
    assert_eq!(mirror.users, truth(&client).await);
}

#[tokio::test]
async fn from_now_skips_the_listing_and_a_failed_page_is_read_again() {
    let graph = Emulator::start_default().await.unwrap();
    let client = built(&graph, |b| b);
    let store: Arc<dyn DeltaStore> = Arc::new(MemoryDeltaStore::new());
    let tracker = tracker(&client, store, DeltaQuery::users().from_now());
    let mut mirror = Mirror::default();
    let start = round(&tracker, &mut mirror).await;
    assert_eq!((start.pages, start.changed, start.full), (1, 0, false));
    let added = graph.add_user(TENANT, "After the start").unwrap();
    // Graph fails the next delta request once (after the client's retries): the round
    // fails, and the next one reads the same changes.
    graph.faults().add(
        FaultRule::path("/v1.0/users/delta")
            .status(reqwest::StatusCode::BAD_REQUEST)
            .times(1),
    );
    assert!(matches!(
        tracker
            .round(|page: DeltaPage<User>| {
                mirror.apply(page);
                async { Ok::<(), std::io::Error>(()) }
            })
            .await,
        Err(DeltaError::Graph(_))
    ));
    let next = round(&tracker, &mut mirror).await;
    assert_eq!(next.changed, 1);
    assert_eq!(mirror.users.keys().collect::<Vec<_>>(), [&added]);
    // Graph loses the state of a query that started from now: the resync is a real
    // full listing, not another empty start (which would wipe the copy).
    graph.reset_delta(TENANT, DeltaReset::Expired);
    let again = round(&tracker, &mut mirror).await;
    assert_eq!((again.resyncs, again.full, again.changed), (1, true, 251));
    assert_eq!(mirror.users, truth(&client).await);
}

#[tokio::test]
async fn hostile_delta_tokens_are_refused_with_graph_errors() {
    let graph = Emulator::start_default().await.unwrap();
    let token = super::token(&graph, TENANT, "secret").await.unwrap();
    let http = reqwest::Client::new();
    for query in [
        "$deltatoken=not-base64!",
        "$skiptoken=eyJ9",
        "$deltatoken=latest&$skiptoken=x",
        "$top=5",
        "$select=password",
    ] {
        let response = http
            .get(format!("{}/v1.0/users/delta?{query}", graph.base_url()))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{query}");
        let body: serde_json::Value = response.json().await.unwrap();
        assert!(body["error"]["message"].is_string(), "{query}: {body}");
    }
}

/// Memberships kept by a groups delta: members by group.
async fn memberships(client: &GraphClient) -> BTreeMap<String, std::collections::BTreeSet<String>> {
    let groups: Vec<keel_graph_client::model::Group> =
        client.groups("contoso").try_collect().await.unwrap();
    let mut all = BTreeMap::new();
    for group in groups {
        let members: std::collections::BTreeSet<String> = client
            .group_members("contoso", &group.id)
            .map_ok(|m| m.id)
            .try_collect()
            .await
            .unwrap();
        all.insert(group.id, members);
    }
    all
}

#[tokio::test]
async fn group_rounds_follow_members_spread_over_pages_and_membership_changes() {
    use keel_graph_client::delta::GroupChange;
    let graph = Emulator::start_default().await.unwrap();
    let client = built(&graph, |b| b);
    let tracker = DeltaTracker::new(
        client.clone(),
        "contoso",
        DeltaQuery::groups()
            .select(["displayName", "members"])
            .page_size(2),
        Arc::new(MemoryDeltaStore::new()),
        "contoso/groups",
    );
    let copy: std::sync::Mutex<BTreeMap<String, std::collections::BTreeSet<String>>> =
        Default::default();
    let names: std::sync::Mutex<BTreeMap<String, Option<String>>> = Default::default();
    let round = || {
        tracker.round(|page: DeltaPage<GroupChange>| {
            let mut copy = copy.lock().unwrap();
            if page.resync {
                copy.clear();
            }
            for change in page.changed {
                let members = copy.entry(change.group.id.clone()).or_default();
                for member in change.members {
                    if member.is_removed() {
                        members.remove(&member.id);
                    } else {
                        members.insert(member.id);
                    }
                }
                names
                    .lock()
                    .unwrap()
                    .insert(change.group.id, change.group.display_name);
            }
            async { Ok::<(), std::io::Error>(()) }
        })
    };
    // Six groups of five members, two members an occurrence: each group comes three
    // times, on three pages.
    let first = round().await.unwrap();
    assert!(first.full);
    assert!(first.pages >= 9, "{first:?}");
    let want = memberships(&client).await;
    assert_eq!(*copy.lock().unwrap(), want);
    assert!(want.values().all(|m| m.len() == 5));

    // Membership changes, a rename, and a member deleted from the directory.
    let groups: Vec<String> = want.keys().cloned().collect();
    let newcomer = graph.add_user(TENANT, "Newcomer").unwrap();
    assert!(graph.set_group_member(TENANT, &groups[0], &newcomer, true));
    let leaver = want[&groups[1]].iter().next().unwrap().clone();
    assert!(graph.set_group_member(TENANT, &groups[1], &leaver, false));
    assert!(graph.update_group(
        TENANT,
        &groups[2],
        serde_json::json!({"displayName": "Renamed"})
    ));
    let deleted = want[&groups[3]].iter().last().unwrap().clone();
    assert!(graph.delete_user(TENANT, &deleted, true));
    // Added then removed again within the round: the net change is nothing.
    let passer = graph.add_user(TENANT, "Passer-by").unwrap();
    assert!(graph.set_group_member(TENANT, &groups[4], &passer, true));
    assert!(graph.set_group_member(TENANT, &groups[4], &passer, false));

    let changes = round().await.unwrap();
    assert!(!changes.full);
    let want = memberships(&client).await;
    assert_eq!(*copy.lock().unwrap(), want);
    assert!(copy.lock().unwrap()[&groups[0]].contains(&newcomer));
    assert!(!copy.lock().unwrap()[&groups[1]].contains(&leaver));
    assert!(!copy.lock().unwrap()[&groups[3]].contains(&deleted));
    assert_eq!(
        names.lock().unwrap()[&groups[2]].as_deref(),
        Some("Renamed")
    );

    // A 410 in the middle: a full listing again, and the same memberships.
    graph.reset_delta(TENANT, DeltaReset::Gone);
    let resynced = round().await.unwrap();
    assert_eq!((resynced.resyncs, resynced.full), (1, true));
    let want = memberships(&client).await;
    assert_eq!(*copy.lock().unwrap(), want);
}

#[tokio::test]
async fn a_member_removed_while_a_full_listing_is_half_way_neither_hides_nor_shifts_another() {
    use keel_graph_client::delta::GroupChange;
    let graph = Emulator::start_default().await.unwrap();
    let client = built(&graph, |b| b);
    let before = memberships(&client).await;
    let first_group = before.keys().next().unwrap().clone();
    let leaver = before[&first_group].iter().nth(3).unwrap().clone();
    let tracker = DeltaTracker::new(
        client.clone(),
        "contoso",
        DeltaQuery::groups().select(["members"]).page_size(2),
        Arc::new(MemoryDeltaStore::new()),
        "contoso/groups",
    );
    let copy: std::sync::Mutex<BTreeMap<String, std::collections::BTreeSet<String>>> =
        Default::default();
    let apply = |page: DeltaPage<GroupChange>| {
        let mut copy = copy.lock().unwrap();
        for change in page.changed {
            let members = copy.entry(change.group.id).or_default();
            for member in change.members {
                if member.is_removed() {
                    members.remove(&member.id);
                } else {
                    members.insert(member.id);
                }
            }
        }
    };
    let mut pages = 0;
    tracker
        .round(|page: DeltaPage<GroupChange>| {
            pages += 1;
            if pages == 1 {
                // Between the first group's first and second page of members.
                assert!(graph.set_group_member(TENANT, &first_group, &leaver, false));
            }
            apply(page);
            async { Ok::<(), std::io::Error>(()) }
        })
        .await
        .unwrap();
    // The listing is the memberships as they were when it started: all five.
    assert_eq!(*copy.lock().unwrap(), before);
    // The next round brings the removal.
    tracker
        .round(|page: DeltaPage<GroupChange>| {
            apply(page);
            async { Ok::<(), std::io::Error>(()) }
        })
        .await
        .unwrap();
    let now = memberships(&client).await;
    assert!(!now[&first_group].contains(&leaver));
    assert_eq!(*copy.lock().unwrap(), now);
}

#[tokio::test]
async fn a_delta_token_is_refused_on_another_resource() {
    let graph = Emulator::start_default().await.unwrap();
    let token = super::token(&graph, TENANT, "secret").await.unwrap();
    let http = reqwest::Client::new();
    let get = |url: String| {
        http.get(url)
            .bearer_auth(&token)
            .header("prefer", "odata.maxpagesize=5")
            .send()
    };
    let page: serde_json::Value = get(format!("{}/v1.0/users/delta", graph.base_url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let next = page["@odata.nextLink"].as_str().unwrap();
    assert_eq!(get(next.to_owned()).await.unwrap().status(), 200);
    // The same token on groups: refused, not read as a position among groups.
    let elsewhere = next.replace("/users/delta", "/groups/delta");
    assert_eq!(get(elsewhere).await.unwrap().status(), 400);
}
