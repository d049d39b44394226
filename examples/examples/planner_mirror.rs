//! Keeps a local copy of a Planner plan's tasks current — with each assignee's name —
//! against the in-process Graph emulator, as a service keeps one of a real tenant:
//!
//! - the tasks by delta rounds on a timer (Graph sends no change notifications for
//!   Planner, so `ChangeFeed::poll_every` is the documented way), with the delta link
//!   in a file that survives restarts;
//! - the users by change notifications: a subscription (validation handshake, random
//!   `clientState`, lifecycle URL) posts to a webhook receiver on loopback, and each
//!   notification asks for a delta round (`KeepCurrent`; a burst makes one round).
//!
//! Then it survives what Graph does to such a service: Graph forgets the delta state
//! (`410 Gone`: a full resynchronization), removes the subscription (a lifecycle event:
//! it is created again, and a round catches up), and says notifications were missed.
//!
//! ```text
//! cargo run -p keel-examples --example planner_mirror            # runs until Ctrl-C, with edits every few seconds
//! cargo run -p keel-examples --example planner_mirror -- --smoke # the scripted scenario, checked; exits non-zero on a failure
//! ```

// An executable's report goes to stdout.
#![allow(clippy::print_stdout)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::TryStreamExt as _;
use keel_graph_client::GraphClient;
use keel_graph_client::delta::{
    ChangeFeed, DeltaPage, DeltaQuery, DeltaStore, DeltaTracker, FileDeltaStore,
};
use keel_graph_client::emulator::{DEFAULT_ROLES, DeltaReset, Emulator, TenantSeed};
use keel_graph_client::model::{PlannerTask, User};
use keel_graph_client::webhook::{
    KeepCurrent, MemoryQueue, NotificationQueue, NotificationWorker, SubscriptionManager,
    SubscriptionSpec, WebhookReceiver,
};
use keel_resilience::dead_letter::{DeadLetterQueue, MemoryDeadLetters};
use keel_token_manager::client::{Authority, CachingProvider, ClientSecretCredential};

type Error = Box<dyn std::error::Error + Send + Sync>;

const TENANT: &str = "contoso.onmicrosoft.com";

/// The local copy: tasks (title, progress, assignees) and users' names.
#[derive(Default)]
struct Mirror {
    tasks: BTreeMap<String, (String, u8, Vec<String>)>,
    users: BTreeMap<String, String>,
    /// Tasks named by the full listing under way (mark and sweep).
    seen: std::collections::HashSet<String>,
    resyncs: u32,
}

impl Mirror {
    fn apply_tasks(&mut self, page: DeltaPage<PlannerTask>) {
        if page.resync {
            self.resyncs += 1;
            self.seen.clear();
        }
        for task in page.changed {
            if page.full {
                self.seen.insert(task.id.clone());
            }
            let assignees = task.assignments.keys().cloned().collect();
            self.tasks.insert(
                task.id,
                (
                    task.title.unwrap_or_default(),
                    task.percent_complete.unwrap_or(0),
                    assignees,
                ),
            );
        }
        for gone in page.removed {
            self.tasks.remove(&gone.id);
        }
        if page.full && page.last {
            let seen = std::mem::take(&mut self.seen);
            self.tasks.retain(|id, _| seen.contains(id));
        }
    }

    fn apply_users(&mut self, page: DeltaPage<User>) {
        if page.resync {
            self.users.clear();
        }
        for user in page.changed {
            self.users
                .insert(user.id, user.display_name.unwrap_or_default());
        }
        for gone in page.removed {
            self.users.remove(&gone.id);
        }
    }

    /// A task as a line: its title, progress and assignees by name.
    fn line(&self, id: &str) -> Option<String> {
        let (title, progress, assignees) = self.tasks.get(id)?;
        let names: Vec<&str> = assignees
            .iter()
            .map(|a| self.users.get(a).map_or("?", String::as_str))
            .collect();
        Some(format!("{title} ({progress}%) — {}", names.join(", ")))
    }
}

/// Waits until `done` holds (10 s at most).
async fn until(what: &str, mut done: impl FnMut() -> bool) -> Result<(), Error> {
    let started = Instant::now();
    while !done() {
        if started.elapsed() > Duration::from_secs(10) {
            return Err(format!("waited 10 s for: {what}").into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// The plan's tasks as Graph has them now.
async fn truth(client: &GraphClient, plan: &str) -> Result<BTreeMap<String, String>, Error> {
    Ok(client
        .tasks("contoso", plan)
        .map_ok(|t| (t.id, t.title.unwrap_or_default()))
        .try_collect()
        .await?)
}

fn titles(mirror: &Mutex<Mirror>) -> BTreeMap<String, String> {
    let mirror = mirror
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    mirror
        .tasks
        .iter()
        .map(|(id, (title, _, _))| (id.clone(), title.clone()))
        .collect()
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let smoke = std::env::args().any(|a| a == "--smoke");
    let graph = Emulator::builder()
        .tenant(
            TenantSeed::new("7b1c2a4e-0f1d-4c55-9a3e-2d6f1b0c0001", TENANT)
                .client("app", "secret", DEFAULT_ROLES.iter().copied())
                .users(40)
                .groups(4)
                .extra_tasks(60),
        )
        .start()
        .await?;
    let credential = ClientSecretCredential::new(
        Authority::Custom(graph.base_url().to_owned()),
        TENANT,
        "app",
        "secret",
    )?;
    let client = GraphClient::builder(graph.cloud())
        .tenant("contoso", Arc::new(CachingProvider::new(credential)))
        .build()?;
    let groups: Vec<_> = client.groups("contoso").try_collect().await?;
    let plans: Vec<_> = client.plans("contoso", &groups[0].id).try_collect().await?;
    let plan = plans[0].id.clone();
    println!(
        "emulator at {}; mirroring plan {:?}",
        graph.base_url(),
        plans[0].title
    );

    // Where the delta links and the subscription live (a directory that survives
    // restarts; a temporary one here).
    let state = tempfile::tempdir()?;
    let store: Arc<dyn DeltaStore> = Arc::new(FileDeltaStore::new(state.path())?);
    let mirror = Arc::new(Mutex::new(Mirror::default()));

    // The users, by notifications: receiver → queue → worker → KeepCurrent → delta.
    let manager = SubscriptionManager::new(client.clone(), "contoso", store.clone());
    let queue = Arc::new(MemoryQueue::new(10_000));
    let receiver = WebhookReceiver::builder(
        Arc::new(manager.clone()),
        queue.clone() as Arc<dyn NotificationQueue>,
    )
    .build();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/graph/notify", listener.local_addr()?);
    let app: axum::Router = receiver.router("/graph/notify");
    tokio::spawn(async move { axum::serve(listener, app).await });
    let local = mirror.clone();
    let users = ChangeFeed::builder(DeltaTracker::new(
        client.clone(),
        "contoso",
        DeltaQuery::users().select(["displayName"]),
        store.clone(),
        "contoso/users",
    ))
    .poll_every(Duration::from_secs(600)) // a safety net under the notifications
    .spawn(move |page: DeltaPage<User>| {
        local
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .apply_users(page);
        async { Ok::<(), std::io::Error>(()) }
    });
    let subscription = manager
        .ensure(
            "users",
            &SubscriptionSpec::new("users", &url).lifecycle_url(&url),
        )
        .await?;
    println!(
        "subscribed to users: {} (expires {:?})",
        subscription.id, subscription.expires
    );
    let dead_letters = DeadLetterQueue::new("graph-notifications", MemoryDeadLetters::new());
    let worker = NotificationWorker::new(queue.clone(), dead_letters);
    let keep = KeepCurrent::new(users.clone()).subscriptions(manager.clone());
    tokio::spawn(async move { worker.run(move |n| keep.handle(n)).await });
    let renewals = manager.clone();
    tokio::spawn(async move { renewals.run().await });

    // The tasks, by polling delta (every second here; minutes in a real service).
    let local = mirror.clone();
    let tasks = ChangeFeed::builder(DeltaTracker::new(
        client.clone(),
        "contoso",
        DeltaQuery::plan_tasks(&plan).page_size(25),
        store.clone(),
        &format!("contoso/plan/{plan}"),
    ))
    .poll_every(Duration::from_secs(1))
    .spawn(move |page: DeltaPage<PlannerTask>| {
        local
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .apply_tasks(page);
        async { Ok::<(), std::io::Error>(()) }
    });
    tasks.changed().await?;
    users.changed().await?;
    let (n_tasks, n_users) = {
        let m = mirror
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        (m.tasks.len(), m.users.len())
    };
    println!("1. first rounds: {n_tasks} tasks, {n_users} users");
    let want = truth(&client, &plan).await?;
    check(
        titles(&mirror) == want,
        "the first listing is the plan's tasks",
    )?;

    if !smoke {
        println!("running; another user edits a task every 3 s; Ctrl-C to stop");
        let mut k = 0usize;
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => break,
                () = tokio::time::sleep(Duration::from_secs(3)) => {}
            }
            k += 1;
            let all: Vec<PlannerTask> = client.tasks("contoso", &plan).try_collect().await?;
            let task = &all[k % all.len()];
            client
                .update_task(
                    "contoso",
                    task,
                    &serde_json::json!({"percentComplete": (k * 10) % 100}),
                )
                .await?;
            tokio::time::sleep(Duration::from_millis(1_500)).await;
            let line = mirror
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .line(&task.id);
            println!("edited {:?}: mirror says {line:?}", task.title);
        }
        tasks.stop().await;
        users.stop().await;
        return Ok(());
    }

    // 2. Another app edits the plan through Graph (with ETags): the poll brings it in.
    let all: Vec<PlannerTask> = client.tasks("contoso", &plan).try_collect().await?;
    client
        .update_task(
            "contoso",
            &all[0],
            &serde_json::json!({"title": "Renamed elsewhere", "percentComplete": 50}),
        )
        .await?;
    client.delete_task("contoso", &all[1]).await?;
    let created = client
        .create_task("contoso", &plan, None, "Created elsewhere")
        .await?;
    let want = truth(&client, &plan).await?;
    until("the edits reach the mirror", || titles(&mirror) == want).await?;
    println!(
        "2. edits mirrored: {:?}",
        mirror
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .line(&all[0].id)
    );

    // 3. A user is renamed: the notification leads to a delta round of users, and the
    //    tasks assigned to them show the new name.
    let assignee = mirror
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .tasks
        .values()
        .find_map(|(_, _, a)| a.first().cloned())
        .ok_or("no assigned task")?;
    check(
        graph.update_user(
            TENANT,
            &assignee,
            serde_json::json!({"displayName": "Grace Hopper"}),
        ),
        "the user exists",
    )?;
    until("the renamed user reaches the mirror", || {
        mirror
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .users
            .get(&assignee)
            .is_some_and(|n| n == "Grace Hopper")
    })
    .await?;
    println!("3. user renamed through a notification: {assignee} is now Grace Hopper");

    // 4. Graph forgets the delta state (410 Gone): a full resynchronization, and the
    //    copy is still exactly the plan.
    let resyncs_before = mirror
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .resyncs;
    graph.reset_delta(TENANT, DeltaReset::Gone);
    client.delete_task("contoso", &created).await?;
    tasks.changed().await?;
    let resyncs = mirror
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .resyncs;
    let want = truth(&client, &plan).await?;
    check(
        resyncs > resyncs_before,
        "a 410 leads to a full resynchronization",
    )?;
    check(
        titles(&mirror) == want,
        "after the resynchronization the copy is the plan",
    )?;
    println!("4. 410 Gone: resynchronized, {} tasks", want.len());

    // 5. Graph removes the subscription (a lifecycle event): created again, and a round
    //    catches up with the change made while it was gone.
    let moved = mirror
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .users
        .keys()
        .nth(5)
        .cloned()
        .ok_or("no users")?;
    check(
        graph.update_user(
            TENANT,
            &moved,
            serde_json::json!({"displayName": "Renamed while removed"}),
        ),
        "the user exists",
    )?;
    check(
        graph.send_lifecycle_event(&subscription.id, "subscriptionRemoved"),
        "the lifecycle event is sent",
    )?;
    until(
        "the round catches up with the change made while it was gone",
        || {
            mirror
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .users
                .get(&moved)
                .is_some_and(|n| n == "Renamed while removed")
        },
    )
    .await?;
    // The manager learns the new subscription when Graph's answer to the creation
    // arrives, which may be after Graph counts it: wait for the manager.
    let started = Instant::now();
    let again = loop {
        let current = manager
            .get("users")
            .await?
            .ok_or("the subscription is gone")?;
        if current.id != subscription.id {
            break current;
        }
        if started.elapsed() > Duration::from_secs(10) {
            return Err("waited 10 s for the subscription to be created again".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    check(
        graph.subscription_count() == 1,
        "one subscription, the new one",
    )?;
    println!(
        "5. subscriptionRemoved: re-created as {}; the round caught up",
        again.id
    );

    // 6. Missed notifications: the lifecycle event runs a round.
    check(
        graph.send_lifecycle_event(&again.id, "missed"),
        "the lifecycle event is sent",
    )?;
    until("the notification queue drains", || queue.is_empty()).await?;
    let final_users: BTreeMap<String, String> = client
        .items::<User>(
            "contoso",
            keel_graph_client::GraphRequest::get("/users").top(999),
        )
        .map_ok(|u| (u.id, u.display_name.unwrap_or_default()))
        .try_collect()
        .await?;
    users.changed().await?;
    check(
        mirror
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .users
            == final_users,
        "the users are Graph's",
    )?;
    println!(
        "6. missed: caught up; {} notifications delivered, {} given up",
        graph.notifications().0,
        graph.notifications().1
    );
    tasks.stop().await;
    users.stop().await;
    println!("smoke scenario passed");
    Ok(())
}

fn check(ok: bool, what: &str) -> Result<(), Error> {
    if ok {
        Ok(())
    } else {
        Err(format!("check failed: {what}").into())
    }
}
