//! Subscriptions and notifications end to end against the emulator: the subscription
//! manager creates a subscription (the emulator runs the validation handshake against
//! our receiver on loopback), the emulator posts changes with the subscription's
//! `clientState`, the receiver believes them and queues them, the worker runs a delta
//! round for each, and the local copy follows; renewal on a shared manual clock; a
//! `subscriptionRemoved` lifecycle event leading to re-creation and a delta round; a
//! restarted manager going on with the stored subscription.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keel_graph_client::GraphClient;
use keel_graph_client::delta::{
    DeltaPage, DeltaQuery, DeltaStore, DeltaTracker, FileDeltaStore, MemoryDeltaStore,
};
use keel_graph_client::emulator::Emulator;
use keel_graph_client::model::User;
use keel_graph_client::webhook::{
    ClientStates, LifecycleEvent, MemoryQueue, Notification, NotificationKind, NotificationQueue,
    NotificationWorker, SubscriptionManager, SubscriptionSpec, WebhookReceiver,
};
use keel_resilience::clock::{ManualClock, WallClock};
use keel_resilience::dead_letter::{DeadLetterQueue, MemoryDeadLetters};
use keel_resilience::{Classified, ErrorClass};
use keel_token_manager::client::{Authority, CachingProvider, ClientSecretCredential};

const TENANT: &str = "contoso.onmicrosoft.com";

fn client(graph: &Emulator) -> GraphClient {
    let credential = ClientSecretCredential::new(
        Authority::Custom(graph.base_url().to_owned()),
        TENANT,
        "app",
        "secret",
    )
    .unwrap();
    GraphClient::builder(graph.cloud())
        .tenant("contoso", Arc::new(CachingProvider::new(credential)))
        .build()
        .unwrap()
}

/// An emulated tenant of `users` users whose app may read them.
fn tenant(users: usize) -> keel_graph_client::emulator::TenantSeed {
    keel_graph_client::emulator::TenantSeed::new("7b1c2a4e-0f1d-4c55-9a3e-2d6f1b0c0001", TENANT)
        .client("app", "secret", ["User.Read.All"])
        .users(users)
}

/// Serves a receiver believing `states`; its URL and queue.
async fn receive(states: Arc<dyn ClientStates>) -> (String, Arc<MemoryQueue>) {
    let queue = Arc::new(MemoryQueue::new(1_000));
    let receiver =
        WebhookReceiver::builder(states, queue.clone() as Arc<dyn NotificationQueue>).build();
    let app: axum::Router = receiver.router("/graph/notify");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/graph/notify"), queue)
}

/// The clientState of the app's subscription, as Graph lists it.
async fn graphs_state(manager: &SubscriptionManager) -> String {
    let listed = manager.list_remote().await.unwrap();
    listed[0]["clientState"].as_str().unwrap().to_owned()
}

async fn wait_for(mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < Duration::from_secs(10), "waited 10 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn notifications_drive_delta_rounds_that_keep_a_local_copy_current() {
    let clock = ManualClock::starting_now();
    let graph = Emulator::builder()
        .tenant(tenant(30))
        .clock(Arc::new(clock.clone()))
        .start()
        .await
        .unwrap();
    let client = client(&graph);
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn DeltaStore> = Arc::new(FileDeltaStore::new(dir.path()).unwrap());
    let manager = SubscriptionManager::new(client.clone(), "contoso", store.clone())
        .with_clock(Arc::new(clock.clone()));
    let (url, queue) = receive(Arc::new(manager.clone())).await;

    // The local copy, kept by delta; the first round lists everyone.
    let mirror: Arc<Mutex<BTreeMap<String, Option<String>>>> = Arc::default();
    let tracker = DeltaTracker::new(
        client.clone(),
        "contoso",
        DeltaQuery::users().select(["displayName"]),
        Arc::new(MemoryDeltaStore::new()),
        "contoso/users",
    );
    let apply = |mirror: Arc<Mutex<BTreeMap<String, Option<String>>>>| {
        move |page: DeltaPage<User>| {
            let mut copy = mirror.lock().unwrap();
            if page.resync {
                copy.clear();
            }
            for user in page.changed {
                copy.insert(user.id, user.display_name);
            }
            for gone in page.removed {
                copy.remove(&gone.id);
            }
            async { Ok::<(), std::io::Error>(()) }
        }
    };
    tracker.round(apply(mirror.clone())).await.unwrap();
    assert_eq!(mirror.lock().unwrap().len(), 30);

    let spec = SubscriptionSpec::new("users", &url);
    let subscription = manager.ensure("users", &spec).await.unwrap();
    assert_eq!(graph.subscription_count(), 1);
    // Ensured again: the same one, not another.
    assert_eq!(
        manager.ensure("users", &spec).await.unwrap().id,
        subscription.id
    );
    assert_eq!(manager.list_remote().await.unwrap().len(), 1);

    // Each notification leads to a delta round (what the notification names is only a
    // hint: the round says what changed).
    let lifecycle: Arc<Mutex<Vec<LifecycleEvent>>> = Arc::default();
    let worker = NotificationWorker::new(
        queue.clone(),
        DeadLetterQueue::new("notifications", MemoryDeadLetters::new()),
    );
    let handler = {
        let (tracker, mirror, lifecycle, manager) = (
            tracker.clone(),
            mirror.clone(),
            lifecycle.clone(),
            manager.clone(),
        );
        move |n: Notification| {
            let (tracker, mirror, lifecycle, manager) = (
                tracker.clone(),
                mirror.clone(),
                lifecycle.clone(),
                manager.clone(),
            );
            async move {
                if let NotificationKind::Lifecycle(event) = n.kind {
                    lifecycle.lock().unwrap().push(event);
                    let acted = manager
                        .on_lifecycle(&n)
                        .await
                        .map_err(|e| Classified::new(ErrorClass::Transient, e))?;
                    assert_eq!(acted.as_deref(), Some("users"));
                }
                tracker
                    .round(apply(mirror))
                    .await
                    .map(|_| ())
                    .map_err(|e| Classified::new(ErrorClass::Transient, e))
            }
        }
    };
    let users: Vec<String> = mirror.lock().unwrap().keys().cloned().collect();
    assert!(graph.update_user(
        TENANT,
        &users[4],
        serde_json::json!({"displayName": "Renamed"})
    ));
    assert!(graph.delete_user(TENANT, &users[5], true));
    // The same user changed twice: two notifications, both taken.
    assert!(graph.update_user(TENANT, &users[6], serde_json::json!({"jobTitle": "Lead"})));
    assert!(graph.update_user(TENANT, &users[6], serde_json::json!({"jobTitle": "Lead"})));
    wait_for(|| queue.len() == 4).await;
    for _ in 0..4 {
        worker.handle_one(&handler).await.unwrap();
    }
    {
        let copy = mirror.lock().unwrap();
        assert_eq!(copy.get(&users[4]), Some(&Some("Renamed".to_owned())));
        assert!(!copy.contains_key(&users[5]));
        assert_eq!(copy.len(), 29);
    }
    assert_eq!(graph.notifications(), (4, 0));

    // A forged notification for the same subscription is refused.
    let forged = reqwest::Client::new()
        .post(&url)
        .json(&serde_json::json!({"value": [{
            "subscriptionId": subscription.id, "changeType": "deleted",
            "clientState": "guessed", "resource": format!("Users/{}", users[0]),
        }]}))
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 403);
    assert!(queue.is_empty());

    // Renewal at half the lifetime, on the shared clock: the subscription outlives
    // its first expiry.
    let first_expiry = subscription.expires;
    clock.advance(Duration::from_secs(15 * 86_400));
    manager.renew_due().await;
    let renewed = manager.get("users").await.unwrap().unwrap();
    assert_eq!(renewed.id, subscription.id);
    assert!(renewed.expires > first_expiry);
    clock.advance(Duration::from_secs(20 * 86_400));
    assert!(clock.now() > first_expiry);
    assert_eq!(graph.subscription_count(), 1);

    // Graph removes the subscription: the lifecycle event re-creates it and a delta
    // round catches up with what happened meanwhile.
    assert!(graph.update_user(
        TENANT,
        &users[7],
        serde_json::json!({"displayName": "While removed"})
    ));
    wait_for(|| queue.len() == 1).await;
    worker.handle_one(&handler).await.unwrap();
    assert!(graph.send_lifecycle_event(&subscription.id, "subscriptionRemoved"));
    wait_for(|| queue.len() == 1).await;
    worker.handle_one(&handler).await.unwrap();
    assert_eq!(
        *lifecycle.lock().unwrap(),
        [LifecycleEvent::SubscriptionRemoved]
    );
    let recreated = manager.get("users").await.unwrap().unwrap();
    assert_ne!(recreated.id, subscription.id);
    assert_eq!(graph.subscription_count(), 1);
    // Created again with the name's clientState: every instance believes it at once.
    assert!(manager.accepts("any", &graphs_state(&manager).await));
    assert_eq!(
        mirror.lock().unwrap().get(&users[7]),
        Some(&Some("While removed".to_owned()))
    );

    // Reauthorization asked for: reauthorized and renewed. Notifications missed: a
    // delta round catches up.
    clock.advance(Duration::from_secs(60));
    assert!(graph.send_lifecycle_event(&recreated.id, "reauthorizationRequired"));
    wait_for(|| queue.len() == 1).await;
    worker.handle_one(&handler).await.unwrap();
    let reauthorized = manager.get("users").await.unwrap().unwrap();
    assert_eq!(reauthorized.id, recreated.id);
    assert!(reauthorized.expires > recreated.expires);
    assert!(graph.update_user(
        TENANT,
        &users[9],
        serde_json::json!({"displayName": "Missed"})
    ));
    wait_for(|| queue.len() == 1).await;
    let _dropped = queue.next().await.unwrap().unwrap(); // as if Graph had not sent it
    assert!(graph.send_lifecycle_event(&recreated.id, "missed"));
    wait_for(|| queue.len() == 1).await;
    worker.handle_one(&handler).await.unwrap();
    assert_eq!(
        *lifecycle.lock().unwrap(),
        [
            LifecycleEvent::SubscriptionRemoved,
            LifecycleEvent::ReauthorizationRequired,
            LifecycleEvent::Missed
        ]
    );
    assert_eq!(
        mirror.lock().unwrap().get(&users[9]),
        Some(&Some("Missed".to_owned()))
    );

    // A restarted service: a new manager over the same store goes on with it, and its
    // receiver believes the subscription's notifications.
    let restarted = SubscriptionManager::new(client.clone(), "contoso", store)
        .with_clock(Arc::new(clock.clone()));
    assert!(!restarted.accepts(&recreated.id, &graphs_state(&manager).await));
    assert_eq!(restarted.resume().await.unwrap(), 1);
    assert!(restarted.accepts(&recreated.id, &graphs_state(&manager).await));
    let stored = restarted.get("users").await.unwrap().unwrap();
    assert_eq!(stored.id, recreated.id);
    assert_eq!(
        restarted.ensure("users", &spec).await.unwrap().id,
        recreated.id
    );
    assert!(!restarted.accepts(&recreated.id, "guessed"));

    // Not renewed any more: it expires.
    clock.advance(Duration::from_secs(40 * 86_400));
    assert_eq!(graph.subscription_count(), 0);
    // Renewing what Graph let expire creates it again (once: no lock held twice).
    let again = tokio::time::timeout(Duration::from_secs(10), restarted.renew("users"))
        .await
        .expect("renewing an expired subscription finished")
        .unwrap();
    assert_ne!(again.id, recreated.id);
    assert_eq!(graph.subscription_count(), 1);
    // Graph removes it: the lifecycle event arrives; after that, changes are unheard.
    assert!(graph.send_lifecycle_event(&again.id, "subscriptionRemoved"));
    assert_eq!(graph.subscription_count(), 0);
    wait_for(|| queue.len() == 1).await;
    let removal = queue.next().await.unwrap().unwrap();
    assert_eq!(
        removal.notification.kind,
        NotificationKind::Lifecycle(LifecycleEvent::SubscriptionRemoved)
    );
    assert!(graph.update_user(
        TENANT,
        &users[8],
        serde_json::json!({"displayName": "Unheard"})
    ));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(queue.is_empty());
}

/// The ready-made pattern: the worker runs `KeepCurrent`, notifications wait for a
/// change feed's rounds, and lifecycle events reach the subscription manager first.
#[tokio::test]
async fn keep_current_applies_each_notified_change_before_acknowledging_it() {
    let graph = Emulator::builder()
        .tenant(tenant(12))
        .start()
        .await
        .unwrap();
    let client = client(&graph);
    let store: Arc<dyn DeltaStore> = Arc::new(MemoryDeltaStore::new());
    let manager = SubscriptionManager::new(client.clone(), "contoso", store.clone());
    let (url, queue) = receive(Arc::new(manager.clone())).await;
    let mirror: Arc<Mutex<BTreeMap<String, Option<String>>>> = Arc::default();
    let local = mirror.clone();
    let feed = keel_graph_client::delta::ChangeFeed::builder(DeltaTracker::new(
        client.clone(),
        "contoso",
        DeltaQuery::users().select(["displayName"]),
        store,
        "contoso/users",
    ))
    .spawn(move |page: DeltaPage<User>| {
        let mut copy = local.lock().unwrap();
        for user in page.changed {
            copy.insert(user.id, user.display_name);
        }
        for gone in page.removed {
            copy.remove(&gone.id);
        }
        async { Ok::<(), std::io::Error>(()) }
    });
    let subscription = manager
        .ensure(
            "users",
            &SubscriptionSpec::new("users", &url).lifecycle_url(&url),
        )
        .await
        .unwrap();
    let worker = NotificationWorker::new(
        queue.clone(),
        DeadLetterQueue::new("notifications", MemoryDeadLetters::new()),
    );
    let keep =
        keel_graph_client::webhook::KeepCurrent::new(feed.clone()).subscriptions(manager.clone());
    tokio::spawn(async move { worker.run(move |n| keep.handle(n)).await });
    wait_for(|| mirror.lock().unwrap().len() == 12).await;

    let users: Vec<String> = mirror.lock().unwrap().keys().cloned().collect();
    assert!(graph.update_user(
        TENANT,
        &users[2],
        serde_json::json!({"displayName": "Notified"})
    ));
    assert!(graph.delete_user(TENANT, &users[3], false));
    wait_for(|| {
        let copy = mirror.lock().unwrap();
        copy.get(&users[2]) == Some(&Some("Notified".to_owned())) && !copy.contains_key(&users[3])
    })
    .await;
    wait_for(|| queue.is_empty()).await;

    // Graph removes the subscription: re-created, and the round catches up.
    assert!(graph.update_user(
        TENANT,
        &users[4],
        serde_json::json!({"displayName": "Meanwhile"})
    ));
    assert!(graph.send_lifecycle_event(&subscription.id, "subscriptionRemoved"));
    wait_for(|| mirror.lock().unwrap().get(&users[4]) == Some(&Some("Meanwhile".to_owned()))).await;
    let started = Instant::now();
    loop {
        let current = manager.get("users").await.unwrap().unwrap();
        if current.id != subscription.id {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "not re-created"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(graph.subscription_count(), 1);
    feed.stop().await;
}

/// A store whose next load of a subscription reads the value at once but answers only
/// when released: a `resume` that read before a `create` wrote, and answers after.
struct HeldStore {
    inner: MemoryDeltaStore,
    hold: std::sync::atomic::AtomicBool,
    release: tokio::sync::Notify,
}

impl DeltaStore for HeldStore {
    fn load<'a>(
        &'a self,
        key: &'a str,
    ) -> keel_graph_client::delta::StoreFuture<'a, Option<String>> {
        Box::pin(async move {
            let value = self.inner.load(key).await?;
            if key.starts_with("subscriptions/contoso/")
                && self.hold.swap(false, std::sync::atomic::Ordering::SeqCst)
            {
                self.release.notified().await;
            }
            Ok(value)
        })
    }
    fn save<'a>(
        &'a self,
        key: &'a str,
        value: &'a str,
    ) -> keel_graph_client::delta::StoreFuture<'a, ()> {
        self.inner.save(key, value)
    }
    fn remove<'a>(&'a self, key: &'a str) -> keel_graph_client::delta::StoreFuture<'a, ()> {
        self.inner.remove(key)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_that_read_before_a_create_does_not_put_the_old_subscription_back() {
    let graph = Emulator::start_default().await.unwrap();
    let client = client(&graph);
    let store = Arc::new(HeldStore {
        inner: MemoryDeltaStore::new(),
        hold: std::sync::atomic::AtomicBool::new(false),
        release: tokio::sync::Notify::new(),
    });
    let manager = SubscriptionManager::new(client, "contoso", store.clone());
    let (url, _queue) = receive(Arc::new(manager.clone())).await;
    let spec = SubscriptionSpec::new("users", &url);
    let old = manager.ensure("users", &spec).await.unwrap();

    store.hold.store(true, std::sync::atomic::Ordering::SeqCst);
    let resuming = {
        let manager = manager.clone();
        tokio::spawn(async move { manager.resume().await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await; // resume has read `old`
    let creating = {
        let (manager, spec) = (manager.clone(), spec.clone());
        tokio::spawn(async move { manager.create("users", &spec).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    store.release.notify_one();
    resuming.await.unwrap().unwrap();
    let new = creating.await.unwrap().unwrap();
    assert_ne!(new.id, old.id);
    let known = manager.get("users").await.unwrap().unwrap();
    assert_eq!(
        known.id, new.id,
        "the stale read was put back over the new subscription"
    );
}

/// Renewal on tokio's paused time: the manager's loop sleeps on tokio's clock and
/// decides what is due on a wall clock moved in step with it, so days pass in no time.
/// Graph (the emulator) and the receiver run on a runtime of their own, in a blocking
/// task: while it runs, tokio does not auto-advance the paused clock, and time moves
/// only when the test advances it — never while a request is in flight.
#[tokio::test(start_paused = true)]
async fn subscriptions_renew_ahead_of_expiry_under_paused_time() {
    let clock = ManualClock::starting_now();
    let (graph_tx, graph_rx) = tokio::sync::oneshot::channel::<Emulator>();
    let (states_tx, states_rx) = tokio::sync::oneshot::channel::<Arc<dyn ClientStates>>();
    let (url_tx, url_rx) = tokio::sync::oneshot::channel::<String>();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let emulator_clock = clock.clone();
    let outside = tokio::task::spawn_blocking(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let graph = Emulator::builder()
                .tenant(tenant(5))
                .clock(Arc::new(emulator_clock))
                .start()
                .await
                .unwrap();
            graph_tx.send(graph).map_err(|_| ()).unwrap();
            let states = states_rx.await.unwrap();
            let (url, _queue) = receive(states).await;
            url_tx.send(url).unwrap();
            let _ = stop_rx.await;
        });
    });
    let graph = graph_rx.await.unwrap();
    let manager =
        SubscriptionManager::new(client(&graph), "contoso", Arc::new(MemoryDeltaStore::new()))
            .with_clock(Arc::new(clock.clone()));
    states_tx
        .send(Arc::new(manager.clone()))
        .map_err(|_| ())
        .unwrap();
    let url = url_rx.await.unwrap();
    let created = manager
        .ensure("users", &SubscriptionSpec::new("users", &url))
        .await
        .unwrap();
    let running = {
        let manager = manager.clone();
        tokio::spawn(async move { manager.run().await })
    };
    // Waits (in real time, at most 10 s) for the manager's task to get somewhere.
    let settle = |renewals: u64| {
        let manager = manager.clone();
        async move {
            let started = Instant::now();
            while manager.renewals() < renewals {
                assert!(started.elapsed() < Duration::from_secs(10), "no renewal");
                tokio::task::yield_now().await;
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    };
    let day = Duration::from_secs(86_400);
    let advance = |by: Duration| {
        clock.advance(by);
        tokio::time::advance(by)
    };

    // Two weeks: not due yet (users live 29 days, renewed at half-life).
    for _ in 0..14 {
        advance(day).await;
    }
    settle(0).await;
    assert_eq!(manager.renewals(), 0);
    // Past half-life: renewed on the next pass, well before expiry.
    advance(day).await;
    advance(Duration::from_secs(20)).await;
    settle(1).await;
    let renewed = manager.get("users").await.unwrap().unwrap();
    assert_eq!(renewed.id, created.id);
    assert!(renewed.expires > created.expires);
    // Ninety days on: renewed again and again, alive throughout.
    let lifetime = keel_graph_client::webhook::max_lifetime("users", false);
    for _ in 0..90 {
        let before = manager.renewals();
        advance(day).await;
        advance(Duration::from_secs(20)).await;
        let current = manager.get("users").await.unwrap().unwrap();
        if current.renew_at(lifetime) <= clock.now() {
            settle(before + 1).await; // the pass under way renews it
        }
        assert_eq!(
            graph.subscription_count(),
            1,
            "expired at {:?}",
            clock.now()
        );
    }
    assert!(manager.renewals() >= 6, "{} renewals", manager.renewals());
    assert!(clock.now() > created.expires + 60 * day);
    running.abort();
    let _ = stop_tx.send(());
    drop(graph);
    outside.await.unwrap();
}
