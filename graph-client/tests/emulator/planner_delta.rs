//! Delta tracking of a Planner plan's tasks (`beta`) against the emulator: a full
//! listing over many pages, changes, creations and deletions made through the client
//! with their ETags, a change made while a round is half-way, and a `410 Gone`
//! resynchronization; each round ends in the same copy as a plain read of the plan's
//! tasks. And the change feed: rounds on demand, coalesced, on a timer, retried after a
//! failure.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::TryStreamExt as _;
use keel_graph_client::delta::{
    ChangeFeed, DeltaPage, DeltaQuery, DeltaTracker, FeedError, MemoryDeltaStore,
};
use keel_graph_client::emulator::{DEFAULT_ROLES, DeltaReset, Emulator, TenantSeed};
use keel_graph_client::model::PlannerTask;
use keel_graph_client::{GraphClient, GraphRequest};

use super::client::provider;

const TENANT: &str = "contoso.onmicrosoft.com";

async fn emulator(extra_tasks: usize) -> (Emulator, GraphClient, String) {
    let graph = Emulator::builder()
        .tenant(
            TenantSeed::new("7b1c2a4e-0f1d-4c55-9a3e-2d6f1b0c0001", TENANT)
                .client("app", "secret", DEFAULT_ROLES.iter().copied())
                .users(10)
                .groups(2)
                .extra_tasks(extra_tasks),
        )
        .start()
        .await
        .unwrap();
    let client = GraphClient::builder(graph.cloud())
        .tenant("contoso", provider(&graph, TENANT))
        .build()
        .unwrap();
    let groups: Vec<_> = client.groups("contoso").try_collect().await.unwrap();
    let plans: Vec<_> = client
        .plans("contoso", &groups[0].id)
        .try_collect()
        .await
        .unwrap();
    let plan = plans[0].id.clone();
    (graph, client, plan)
}

/// Titles by id, kept by delta with a mark-and-sweep over full listings.
#[derive(Default)]
struct Copy {
    tasks: BTreeMap<String, Option<String>>,
    seen: HashSet<String>,
}

impl Copy {
    fn apply(&mut self, page: DeltaPage<PlannerTask>) {
        if page.resync {
            self.seen.clear();
        }
        for task in page.changed {
            if page.full {
                self.seen.insert(task.id.clone());
            }
            self.tasks.insert(task.id, task.title);
        }
        for gone in page.removed {
            assert_eq!(gone.reason, "deleted");
            self.tasks.remove(&gone.id);
        }
        if page.full && page.last {
            let seen = std::mem::take(&mut self.seen);
            self.tasks.retain(|id, _| seen.contains(id));
        }
    }
}

async fn truth(client: &GraphClient, plan: &str) -> BTreeMap<String, Option<String>> {
    client
        .tasks("contoso", plan)
        .map_ok(|t| (t.id, t.title))
        .try_collect()
        .await
        .unwrap()
}

fn tracker(client: &GraphClient, plan: &str) -> DeltaTracker {
    DeltaTracker::new(
        client.clone(),
        "contoso",
        DeltaQuery::plan_tasks(plan).page_size(25),
        Arc::new(MemoryDeltaStore::new()),
        "contoso/plan-tasks",
    )
}

#[tokio::test]
async fn plan_task_rounds_follow_changes_deletions_and_a_410_to_the_plans_tasks() {
    let (graph, client, plan) = emulator(120).await;
    let tracker = tracker(&client, &plan);
    let copy = Mutex::new(Copy::default());
    let round = || {
        tracker.round(|page: DeltaPage<PlannerTask>| {
            copy.lock().unwrap().apply(page);
            async { Ok::<(), std::io::Error>(()) }
        })
    };

    let first = round().await.unwrap();
    assert_eq!((first.pages, first.changed, first.full), (5, 124, true));
    let want = truth(&client, &plan).await;
    assert_eq!(copy.lock().unwrap().tasks, want);

    let quiet = round().await.unwrap();
    assert_eq!((quiet.pages, quiet.changed, quiet.removed), (1, 0, 0));

    // Changes through Graph, with ETags: a rename, a deletion, a new task.
    let tasks: Vec<PlannerTask> = client.tasks("contoso", &plan).try_collect().await.unwrap();
    client
        .update_task(
            "contoso",
            &tasks[3],
            &serde_json::json!({"title": "Renamed"}),
        )
        .await
        .unwrap();
    client.delete_task("contoso", &tasks[7]).await.unwrap();
    let created = client
        .create_task("contoso", &plan, None, "Created")
        .await
        .unwrap();
    let changes = round().await.unwrap();
    assert_eq!(
        (changes.changed, changes.removed, changes.full),
        (2, 1, false)
    );
    {
        let copy = copy.lock().unwrap();
        assert_eq!(copy.tasks.get(&tasks[3].id), Some(&Some("Renamed".into())));
        assert_eq!(copy.tasks.get(&created.id), Some(&Some("Created".into())));
        assert!(!copy.tasks.contains_key(&tasks[7].id));
    }
    let want = truth(&client, &plan).await;
    assert_eq!(copy.lock().unwrap().tasks, want);

    // Another plan's changes are not this plan's.
    let other: Vec<_> = {
        let groups: Vec<_> = client.groups("contoso").try_collect().await.unwrap();
        client
            .plans("contoso", &groups[1].id)
            .try_collect()
            .await
            .unwrap()
    };
    client
        .create_task("contoso", &other[0].id, None, "Elsewhere")
        .await
        .unwrap();
    assert_eq!(round().await.unwrap().changed, 0);

    // Graph forgets the delta state: 410 Gone, then a full listing from its Location.
    graph.reset_delta(TENANT, DeltaReset::Gone);
    client.delete_task("contoso", &tasks[9]).await.unwrap();
    let resynced = round().await.unwrap();
    assert_eq!((resynced.resyncs, resynced.full), (1, true));
    let want = truth(&client, &plan).await;
    assert_eq!(copy.lock().unwrap().tasks, want);
}

#[tokio::test]
async fn a_task_changed_or_deleted_while_a_full_listing_is_half_way_ends_right() {
    let (_graph, client, plan) = emulator(100).await;
    let tracker = tracker(&client, &plan);
    let tasks: Vec<PlannerTask> = client.tasks("contoso", &plan).try_collect().await.unwrap();
    let copy = Arc::new(Mutex::new(Copy::default()));
    let mut pages = 0;
    tracker
        .round(|page: DeltaPage<PlannerTask>| {
            pages += 1;
            copy.lock().unwrap().apply(page);
            let client = client.clone();
            let (early, late) = (tasks[1].clone(), tasks[2].clone());
            async move {
                if pages == 2 {
                    // Both already given on page 1: one renamed, one deleted.
                    client
                        .update_task(
                            "contoso",
                            &early,
                            &serde_json::json!({"title": "Mid-round"}),
                        )
                        .await?;
                    client.delete_task("contoso", &late).await?;
                }
                Ok::<(), keel_graph_client::GraphError>(())
            }
        })
        .await
        .unwrap();
    let copy = copy.lock().unwrap();
    assert_eq!(
        copy.tasks.get(&tasks[1].id),
        Some(&Some("Mid-round".into()))
    );
    assert!(!copy.tasks.contains_key(&tasks[2].id));
    drop(copy);
}

#[tokio::test]
async fn planner_delta_is_beta_only_and_takes_no_query_options() {
    let (_graph, client, plan) = emulator(0).await;
    let on_v1 = client
        .send(
            "contoso",
            &GraphRequest::get(&format!("/planner/plans/{plan}/tasks/delta")),
        )
        .await
        .unwrap_err();
    assert_eq!(on_v1.status().map(|s| s.as_u16()), Some(400));
    let selected = client
        .send(
            "contoso",
            &GraphRequest::get(&format!("/planner/plans/{plan}/tasks/delta"))
                .version(keel_graph_client::ApiVersion::Beta)
                .select(["title"]),
        )
        .await
        .unwrap_err();
    assert_eq!(selected.status().map(|s| s.as_u16()), Some(400));
    let missing = client
        .send(
            "contoso",
            &GraphRequest::get("/planner/plans/no-such-plan/tasks/delta")
                .version(keel_graph_client::ApiVersion::Beta),
        )
        .await
        .unwrap_err();
    assert_eq!(missing.status().map(|s| s.as_u16()), Some(404));
}

#[tokio::test]
async fn the_feed_runs_a_round_per_burst_of_changes_and_answers_each_waiter() {
    let (_graph, client, plan) = emulator(20).await;
    let copy = Arc::new(Mutex::new(Copy::default()));
    let local = copy.clone();
    let feed = ChangeFeed::builder(tracker(&client, &plan)).spawn(move |page| {
        local.lock().unwrap().apply(page);
        async { Ok::<(), std::io::Error>(()) }
    });
    feed.changed().await.unwrap();
    let want = truth(&client, &plan).await;
    assert_eq!(copy.lock().unwrap().tasks, want);

    // A change, then twenty notifications at once: each waiter sees the change applied,
    // and the burst costs a round or two, not twenty.
    let created = client
        .create_task("contoso", &plan, None, "Notified")
        .await
        .unwrap();
    let before = feed.status().rounds;
    let waiters: Vec<_> = (0..20)
        .map(|_| {
            let feed = feed.clone();
            let copy = copy.clone();
            let id = created.id.clone();
            tokio::spawn(async move {
                feed.changed().await.unwrap();
                assert!(copy.lock().unwrap().tasks.contains_key(&id));
            })
        })
        .collect();
    for waiter in waiters {
        waiter.await.unwrap();
    }
    let rounds = feed.status().rounds - before;
    assert!((1..=3).contains(&rounds), "{rounds} rounds for one burst");
    feed.stop().await;
    assert!(matches!(feed.changed().await, Err(FeedError::Stopped)));
}

#[tokio::test]
async fn a_failed_round_fails_its_waiters_and_the_feed_recovers_on_its_own() {
    let (_graph, client, plan) = emulator(0).await;
    let fail = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let copy = Arc::new(Mutex::new(Copy::default()));
    let (local, failing) = (copy.clone(), fail.clone());
    let feed = ChangeFeed::builder(tracker(&client, &plan))
        .backoff(Duration::from_millis(50), Duration::from_millis(200))
        .spawn(move |page| {
            let result = if failing.load(std::sync::atomic::Ordering::SeqCst) {
                Err(std::io::Error::other("the local store is down"))
            } else {
                local.lock().unwrap().apply(page);
                Ok(())
            };
            async move { result }
        });
    let error = feed.changed().await.unwrap_err();
    assert!(
        matches!(&error, FeedError::Round(m) if m.contains("local store is down")),
        "{error}"
    );
    assert!(feed.status().last_error.is_some());
    fail.store(false, std::sync::atomic::Ordering::SeqCst);
    // Nobody asks again: the feed retries by itself after its backoff.
    tokio::time::timeout(Duration::from_secs(10), async {
        while copy.lock().unwrap().tasks.is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap();
    let want = truth(&client, &plan).await;
    assert_eq!(copy.lock().unwrap().tasks, want);
    assert_eq!(feed.status().last_error, None);
}

#[tokio::test]
async fn the_polling_mode_picks_up_changes_nobody_announced() {
    let (_graph, client, plan) = emulator(0).await;
    let copy = Arc::new(Mutex::new(Copy::default()));
    let local = copy.clone();
    let feed = ChangeFeed::builder(tracker(&client, &plan))
        .poll_every(Duration::from_secs(1))
        .spawn(move |page| {
            local.lock().unwrap().apply(page);
            async { Ok::<(), std::io::Error>(()) }
        });
    feed.changed().await.unwrap();
    let created = client
        .create_task("contoso", &plan, None, "Polled")
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), async {
        while !copy.lock().unwrap().tasks.contains_key(&created.id) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the change arrives by polling");
    feed.stop().await;
}

#[tokio::test]
async fn a_token_of_one_plan_is_refused_on_another_and_tasks_do_not_change_plan() {
    let (graph, client, plan) = emulator(30).await;
    let groups: Vec<_> = client.groups("contoso").try_collect().await.unwrap();
    let other: Vec<_> = client
        .plans("contoso", &groups[1].id)
        .try_collect()
        .await
        .unwrap();
    let token = super::token(&graph, TENANT, "secret").await.unwrap();
    let http = reqwest::Client::new();
    let get = |url: String| {
        http.get(url)
            .bearer_auth(&token)
            .header("prefer", "odata.maxpagesize=5")
            .send()
    };
    let page: serde_json::Value = get(format!(
        "{}/beta/planner/plans/{plan}/tasks/delta",
        graph.base_url()
    ))
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let next = page["@odata.nextLink"].as_str().unwrap();
    assert_eq!(get(next.to_owned()).await.unwrap().status(), 200);
    let elsewhere = next.replace(&plan, &other[0].id);
    assert_eq!(get(elsewhere).await.unwrap().status(), 400);

    // Moving a task to another plan is refused (its plan's delta would never learn).
    let tasks: Vec<PlannerTask> = client.tasks("contoso", &plan).try_collect().await.unwrap();
    let moved = client
        .update_task(
            "contoso",
            &tasks[0],
            &serde_json::json!({"planId": other[0].id}),
        )
        .await
        .unwrap_err();
    assert_eq!(moved.status().map(|s| s.as_u16()), Some(400));
}

#[tokio::test]
async fn a_panicking_handler_fails_its_round_not_the_feed() {
    let (_graph, client, plan) = emulator(0).await;
    let panics = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let copy = Arc::new(Mutex::new(Copy::default()));
    let (local, panicking) = (copy.clone(), panics.clone());
    let feed = ChangeFeed::builder(tracker(&client, &plan))
        .backoff(Duration::from_millis(20), Duration::from_millis(50))
        .spawn(move |page| {
            assert!(
                !panicking.load(std::sync::atomic::Ordering::SeqCst),
                "a handler bug"
            );
            local.lock().unwrap().apply(page);
            async { Ok::<(), std::io::Error>(()) }
        });
    let error = feed.changed().await.unwrap_err();
    assert!(
        matches!(&error, FeedError::Round(m) if m.contains("panicked")),
        "{error}"
    );
    panics.store(false, std::sync::atomic::Ordering::SeqCst);
    tokio::time::timeout(Duration::from_secs(10), feed.changed())
        .await
        .unwrap()
        .unwrap();
    let want = truth(&client, &plan).await;
    assert_eq!(copy.lock().unwrap().tasks, want);
}

#[tokio::test]
async fn dropping_the_last_handle_stops_the_feed() {
    let (graph, client, plan) = emulator(0).await;
    let feed = ChangeFeed::builder(tracker(&client, &plan))
        .poll_every(Duration::from_secs(1))
        .spawn(|_page: DeltaPage<PlannerTask>| async { Ok::<(), std::io::Error>(()) });
    feed.changed().await.unwrap();
    let clone = feed.clone();
    drop(feed);
    // A clone keeps it running: it polls.
    let before = graph.graph_requests();
    tokio::time::sleep(Duration::from_millis(2_300)).await;
    assert!(
        graph.graph_requests() > before,
        "a clone keeps the feed alive"
    );
    drop(clone);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let after_drop = graph.graph_requests();
    tokio::time::sleep(Duration::from_millis(2_300)).await;
    assert_eq!(
        graph.graph_requests(),
        after_drop,
        "no handle: no more polling"
    );
}
