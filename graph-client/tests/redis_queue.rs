//! The Redis stream queue and delta store against a real redis-server (started by the
//! testkit on loopback): a worker that dies after the receiver's 202 and before its
//! acknowledgement loses nothing (another takes the notification over); pushes are all
//! or none within the capacity; entries that are not notifications are skipped; a
//! delta link survives the tracker.

use std::sync::Arc;
use std::time::Duration;

use keel_graph_client::delta::{DeltaStore, RedisDeltaStore};
use keel_graph_client::webhook::{
    NotificationQueue, QueueError, RedisQueue, SharedClientState, WebhookReceiver,
};
use keel_resilience::RedisConnection;
use keel_testkit::RedisServer;

const SECRET: &str = "0c1d2e3f4a5b6c7d8e9fa0b1c2d3e4f5";

fn notification(resource: &str) -> serde_json::Value {
    serde_json::json!({
        "subscriptionId": "7f1a0b2c-3d4e-4f50-8a1b-2c3d4e5f6a7b",
        "clientState": SECRET,
        "changeType": "updated",
        "resource": resource,
        "tenantId": "7b1c2a4e-0f1d-4c55-9a3e-2d6f1b0c0001",
    })
}

/// A reply's bytes as text.
fn text(reply: &keel_testkit::Reply) -> String {
    match reply {
        keel_testkit::Reply::Bulk(Some(bytes)) => String::from_utf8_lossy(bytes).into_owned(),
        keel_testkit::Reply::Array(Some(items)) => {
            items.iter().map(text).collect::<Vec<_>>().join(" ")
        }
        other => format!("{other:?}"),
    }
}

#[tokio::test]
async fn a_worker_dying_after_the_202_loses_nothing() {
    let redis = RedisServer::start().unwrap();
    let connection = RedisConnection::single(&redis.url()).await.unwrap();
    let key = "svc:graph:notifications";
    // Instance A: the receiver and its worker.
    let queue_a = Arc::new(
        RedisQueue::new(connection.clone(), key, "instance-a")
            .await
            .unwrap()
            .claim_after(Duration::from_millis(300)),
    );
    let receiver = WebhookReceiver::builder(
        Arc::new(SharedClientState::new(SECRET)),
        queue_a.clone() as Arc<dyn NotificationQueue>,
    )
    .build();
    let app: axum::Router = receiver.router("/notify");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/notify", listener.local_addr().unwrap());
    let server = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let posted = reqwest::Client::new()
        .post(&url)
        .json(&serde_json::json!({"value": [notification("users/1"), notification("users/2")]}))
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), 202);
    // A's worker takes the first notification, then the process dies before it
    // acknowledges it (nothing of A survives).
    let taken = queue_a.next().await.unwrap().unwrap();
    assert_eq!(taken.notification.resource.as_deref(), Some("users/1"));
    server.abort();
    drop((receiver, queue_a));

    // Instance B, another consumer of the same stream: it gets the second one, then,
    // once A's claim is old enough, the one A never finished.
    let queue_b = RedisQueue::new(connection.clone(), key, "instance-b")
        .await
        .unwrap()
        .claim_after(Duration::from_millis(300));
    let mut seen = Vec::new();
    for _ in 0..2 {
        let delivery = tokio::time::timeout(Duration::from_secs(5), queue_b.next())
            .await
            .expect("a delivery within 5 s")
            .unwrap()
            .unwrap();
        seen.push(delivery.notification.resource.clone().unwrap());
        queue_b.ack(&delivery).await.unwrap();
    }
    seen.sort();
    assert_eq!(seen, ["users/1", "users/2"]);
    // Acknowledged: gone from the stream.
    let length = redis.command(&["XLEN", key]).unwrap();
    assert_eq!(
        format!("{length:?}"),
        format!("{:?}", keel_testkit::Reply::Integer(0))
    );
}

#[tokio::test]
async fn pushes_are_whole_within_capacity_and_foreign_entries_are_skipped() {
    let redis = RedisServer::start().unwrap();
    let connection = RedisConnection::single(&redis.url()).await.unwrap();
    let queue = RedisQueue::new(connection.clone(), "q", "w")
        .await
        .unwrap()
        .capacity(2);
    let parse = |resources: &[&str]| {
        keel_graph_client::webhook::parse_notifications(
            serde_json::json!({"value": resources.iter().map(|r| notification(r)).collect::<Vec<_>>()})
                .to_string()
                .as_bytes(),
        )
        .unwrap()
        .notifications
    };
    assert!(matches!(
        queue.push(parse(&["users/1", "users/2", "users/3"])).await,
        Err(QueueError::Full(0))
    ));
    // Something else wrote to the stream: skipped, removed, counted.
    redis
        .command(&["XADD", "q", "*", "other", "field"])
        .unwrap();
    queue.push(parse(&["users/4"])).await.unwrap();
    let delivery = queue.next().await.unwrap().unwrap();
    assert_eq!(delivery.notification.resource.as_deref(), Some("users/4"));
    // The secret never reached Redis.
    let stream = text(&redis.command(&["XRANGE", "q", "-", "+"]).unwrap());
    assert!(stream.contains("users/4"), "{stream}");
    assert!(!stream.contains(SECRET));
    queue.ack(&delivery).await.unwrap();

    // A delta link in Redis outlives the process that stored it.
    let store = RedisDeltaStore::new(connection.clone(), "svc:delta:");
    store
        .save(
            "contoso/users",
            "https://graph.microsoft.com/v1.0/users/delta?$deltatoken=x",
        )
        .await
        .unwrap();
    let again = RedisDeltaStore::new(
        RedisConnection::single(&redis.url()).await.unwrap(),
        "svc:delta:",
    );
    assert!(
        again
            .load("contoso/users")
            .await
            .unwrap()
            .unwrap()
            .ends_with("$deltatoken=x")
    );
    again.remove("contoso/users").await.unwrap();
    assert_eq!(store.load("contoso/users").await.unwrap(), None);
}

/// Redis restarted without its data (no persistence): the stream and its consumer group
/// are gone. The queue creates them again and goes on; found by the flagship's load run,
/// where the worker failed with `NOGROUP` for good after a restart.
#[tokio::test]
async fn the_queue_goes_on_after_redis_comes_back_without_its_data() {
    let mut redis = RedisServer::start().unwrap();
    let connection = RedisConnection::single(&redis.url()).await.unwrap();
    let queue = RedisQueue::new(connection.clone(), "q", "w").await.unwrap();
    let parse = |resource: &str| {
        keel_graph_client::webhook::parse_notifications(
            serde_json::json!({"value": [notification(resource)]})
                .to_string()
                .as_bytes(),
        )
        .unwrap()
        .notifications
    };
    queue.push(parse("users/1")).await.unwrap();
    let first = queue.next().await.unwrap().unwrap();
    queue.ack(&first).await.unwrap();

    redis.restart().unwrap();
    assert_eq!(
        text(&redis.command(&["EXISTS", "q"]).unwrap()),
        "Integer(0)"
    );
    // The connection reconnects; the first push may meet the broken connection.
    let mut pushed = false;
    for _ in 0..50 {
        if queue.push(parse("users/2")).await.is_ok() {
            pushed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(pushed, "no push after the restart");
    let mut next = None;
    for _ in 0..50 {
        match tokio::time::timeout(Duration::from_secs(5), queue.next()).await {
            Ok(Ok(Some(delivery))) => {
                next = Some(delivery);
                break;
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let next = next.expect("the queue reads again after the restart");
    assert_eq!(next.notification.resource.as_deref(), Some("users/2"));
}
