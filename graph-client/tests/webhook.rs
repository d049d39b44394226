//! The webhook receiver through a real axum server on loopback, driven by reqwest as
//! Graph would post: the validation handshake, notifications believed or refused by
//! their `clientState`, duplicates, oversized and malformed bodies, a full queue; and
//! the worker handing notifications to a handler, dead-lettering what keeps failing.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keel_graph_client::webhook::{
    ChangeType, MemoryQueue, Notification, NotificationKind, NotificationQueue, NotificationWorker,
    SharedClientState, WebhookReceiver,
};
use keel_resilience::dead_letter::{DeadLetterQueue, MemoryDeadLetters};
use keel_resilience::pipeline::Pipeline;
use keel_resilience::retry::{Backoff, Retry, RetryConfig};
use keel_resilience::{Classified, ErrorClass};

const SECRET: &str = "b6f0c3e2a91d4f7e8c5a2b1d0e9f8a7c";

struct Served {
    url: String,
    queue: Arc<MemoryQueue>,
    http: reqwest::Client,
}

async fn serve(capacity: usize, body_limit: usize) -> Served {
    let queue = Arc::new(MemoryQueue::new(capacity));
    let receiver = WebhookReceiver::builder(
        Arc::new(SharedClientState::new(SECRET)),
        queue.clone() as Arc<dyn NotificationQueue>,
    )
    .body_limit(body_limit)
    .build();
    let app: axum::Router = receiver.router("/notify");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Served {
        url: format!("http://{addr}/notify"),
        queue,
        http: reqwest::Client::new(),
    }
}

fn change(resource: &str, state: &str) -> serde_json::Value {
    serde_json::json!({
        "id": format!("n-{resource}"),
        "subscriptionId": "7f1a0b2c-3d4e-4f50-8a1b-2c3d4e5f6a7b",
        "subscriptionExpirationDateTime": "2026-12-01T00:00:00Z",
        "clientState": state,
        "changeType": "updated",
        "resource": resource,
        "resourceData": {"@odata.type": "#Microsoft.Graph.User", "id": resource},
        "tenantId": "7b1c2a4e-0f1d-4c55-9a3e-2d6f1b0c0001",
    })
}

async fn post(served: &Served, body: &serde_json::Value) -> reqwest::Response {
    served
        .http
        .post(&served.url)
        .json(body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn the_validation_handshake_echoes_the_decoded_token_as_plain_text() {
    let served = serve(10, 1 << 20).await;
    let started = Instant::now();
    let response = served
        .http
        .post(format!(
            "{}?validationToken=Validation%3A%20Testing%20client%20application%20reachability%20%3Cscript%3E",
            served.url
        ))
        .header("content-type", "text/plain")
        .send()
        .await
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert_eq!(
        response.text().await.unwrap(),
        "Validation: Testing client application reachability <script>"
    );
    let long = "x".repeat(5_000);
    let refused = served
        .http
        .post(format!("{}?validationToken={long}", served.url))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 400);
}

#[tokio::test]
async fn notifications_are_believed_by_client_state_and_duplicates_dropped() {
    let served = serve(10, 1 << 20).await;
    let one = serde_json::json!({"value": [change("users/1", SECRET)]});
    assert_eq!(post(&served, &one).await.status(), 202);
    assert_eq!(served.queue.len(), 1);
    // Graph delivers it again (it did not see our answer): acknowledged, not queued.
    assert_eq!(post(&served, &one).await.status(), 202);
    assert_eq!(served.queue.len(), 1);
    // A forged one: refused; a mixed POST keeps only the believed one.
    let forged = serde_json::json!({"value": [change("users/2", "guessed")]});
    assert_eq!(post(&served, &forged).await.status(), 403);
    let almost = serde_json::json!({"value": [change("users/3", &SECRET[..SECRET.len() - 1])]});
    assert_eq!(post(&served, &almost).await.status(), 403);
    let missing = serde_json::json!({"value": [{
        "subscriptionId": "s", "changeType": "created", "resource": "users/4"
    }]});
    assert_eq!(post(&served, &missing).await.status(), 403);
    let mixed =
        serde_json::json!({"value": [change("users/5", "guessed"), change("users/6", SECRET)]});
    assert_eq!(post(&served, &mixed).await.status(), 202);
    assert_eq!(served.queue.len(), 2);
    // Two genuine changes to one resource without Graph's notification id look alike:
    // both are taken.
    let mut twice = change("users/7", SECRET);
    twice.as_object_mut().unwrap().remove("id");
    let twice = serde_json::json!({"value": [twice]});
    assert_eq!(post(&served, &twice).await.status(), 202);
    assert_eq!(post(&served, &twice).await.status(), 202);
    assert_eq!(served.queue.len(), 4);
    let first = served.queue.next().await.unwrap().unwrap();
    let second = served.queue.next().await.unwrap().unwrap();
    assert_eq!(first.notification.resource.as_deref(), Some("users/1"));
    assert_eq!(second.notification.resource.as_deref(), Some("users/6"));
    assert_eq!(
        second.notification.kind,
        NotificationKind::Change(ChangeType::Updated)
    );
    // The secret is not kept in what was queued.
    assert!(!format!("{first:?}").contains(SECRET));
    assert!(
        !serde_json::to_string(&first.notification)
            .unwrap()
            .contains(SECRET)
    );
}

#[tokio::test]
async fn hostile_bodies_get_413_or_400_and_nothing_is_queued() {
    let served = serve(10, 64 << 10).await;
    let huge = serde_json::json!({"value": [change(&"x".repeat(100 << 10), SECRET)]});
    assert_eq!(post(&served, &huge).await.status(), 413);
    for body in [
        serde_json::json!([1, 2]),
        serde_json::json!({"value": "x"}),
        serde_json::json!({"value": [{"subscriptionId": "s", "changeType": "exploded", "clientState": SECRET}]}),
        serde_json::json!({"value": [{"subscriptionId": 7, "changeType": "created", "clientState": SECRET}]}),
        serde_json::json!({"value": [{"subscriptionId": "s", "changeType": "created", "clientState": SECRET,
            "encryptedContent": {"data": 5}}]}),
    ] {
        assert_eq!(post(&served, &body).await.status(), 400, "{body}");
    }
    let not_json = served
        .http
        .post(&served.url)
        .body("{{{{")
        .send()
        .await
        .unwrap();
    assert_eq!(not_json.status(), 400);
    assert!(served.queue.is_empty());
}

#[tokio::test]
async fn a_full_queue_answers_503_and_graphs_next_delivery_is_taken() {
    let served = serve(2, 1 << 20).await;
    let three = serde_json::json!({"value": [
        change("users/1", SECRET), change("users/2", SECRET), change("users/3", SECRET)
    ]});
    let refused = post(&served, &three).await;
    assert_eq!(refused.status(), 503);
    assert!(refused.headers().contains_key("retry-after"));
    // All or none: nothing of the refused POST was queued.
    assert!(served.queue.is_empty());
    let two = serde_json::json!({"value": [change("users/1", SECRET), change("users/2", SECRET)]});
    assert_eq!(post(&served, &two).await.status(), 202);
    assert_eq!(served.queue.len(), 2);
}

fn quick_pipeline() -> Pipeline {
    Pipeline::builder("webhook-test")
        .retry(Retry::new(
            RetryConfig::builder("webhook-test")
                .max_attempts(3)
                .backoff(Backoff::Constant(Duration::from_millis(5)))
                .without_budget()
                .build()
                .unwrap(),
        ))
        .build()
}

#[tokio::test]
async fn an_outage_of_the_handlers_store_retries_each_notification_and_drains_with_run() {
    let served = serve(100, 1 << 20).await;
    let dead = DeadLetterQueue::new("graph-notifications", MemoryDeadLetters::new());
    // The default pipeline: no breaker to open and dead-letter the backlog at once.
    let worker = NotificationWorker::new(served.queue.clone(), dead.clone());
    let calls = Arc::new(AtomicU32::new(0));
    let body = serde_json::json!({"value": (0..8).map(|i| change(&format!("users/{i}"), SECRET)).collect::<Vec<_>>()});
    assert_eq!(post(&served, &body).await.status(), 202);
    served.queue.close().await;
    let counted = calls.clone();
    tokio::time::pause();
    worker
        .run(move |_n: Notification| {
            counted.fetch_add(1, Ordering::SeqCst);
            async {
                Err::<(), _>(Classified::new(
                    ErrorClass::Transient,
                    "the database is down",
                ))
            }
        })
        .await;
    let letters = dead.list(None, 20).await.unwrap();
    assert_eq!(letters.len(), 8);
    assert!(
        letters.iter().all(|l| l.attempts() == 3),
        "{:?}",
        letters.iter().map(|l| l.attempts()).collect::<Vec<_>>()
    );
    assert_eq!(calls.load(Ordering::SeqCst), 24);
}

#[tokio::test]
async fn the_worker_retries_then_dead_letters_and_the_receiver_stays_fast() {
    let served = serve(100, 1 << 20).await;
    let dead = DeadLetterQueue::new("graph-notifications", MemoryDeadLetters::new());
    let worker = Arc::new(
        NotificationWorker::new(served.queue.clone(), dead.clone()).pipeline(quick_pipeline()),
    );
    let handled = Arc::new(Mutex::new(Vec::new()));
    let attempts = Arc::new(AtomicU32::new(0));
    let handler = {
        let (handled, attempts) = (handled.clone(), attempts.clone());
        move |n: Notification| {
            let (handled, attempts) = (handled.clone(), attempts.clone());
            async move {
                let resource = n.resource.clone().unwrap_or_default();
                match resource.as_str() {
                    // Fails once, then works.
                    "users/flaky" if attempts.fetch_add(1, Ordering::SeqCst) == 0 => Err(
                        Classified::new(ErrorClass::Transient, "the local database blinked"),
                    ),
                    // Never works: Graph named something this service cannot apply.
                    "users/poison" => Err(Classified::new(
                        ErrorClass::Permanent,
                        "the local copy has no such user",
                    )),
                    "users/slow" => {
                        tokio::time::sleep(Duration::from_secs(4)).await;
                        handled.lock().unwrap().push(resource);
                        Ok(())
                    }
                    _ => {
                        handled.lock().unwrap().push(resource);
                        Ok(())
                    }
                }
            }
        }
    };
    let body = serde_json::json!({"value": [
        change("users/flaky", SECRET), change("users/poison", SECRET), change("users/ok", SECRET)
    ]});
    assert_eq!(post(&served, &body).await.status(), 202);
    for _ in 0..3 {
        assert!(worker.handle_one(&handler).await.unwrap());
    }
    assert_eq!(*handled.lock().unwrap(), ["users/flaky", "users/ok"]);
    let letters = dead.list(None, 10).await.unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(
        letters[0].attempts(),
        1,
        "a permanent failure is not retried"
    );
    assert_eq!(letters[0].key(), "7f1a0b2c-3d4e-4f50-8a1b-2c3d4e5f6a7b");
    let kept: Notification = serde_json::from_slice(letters[0].payload()).unwrap();
    assert_eq!(kept.resource.as_deref(), Some("users/poison"));
    assert!(served.queue.is_empty());

    // A slow handler does not slow the acknowledgement: Graph wants it within 3 s.
    let slow = serde_json::json!({"value": [change("users/slow", SECRET)]});
    assert_eq!(post(&served, &slow).await.status(), 202);
    let working = {
        let worker = worker.clone();
        let handler = handler.clone();
        tokio::spawn(async move { worker.handle_one(&handler).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    let next = serde_json::json!({"value": [change("users/next", SECRET)]});
    assert_eq!(post(&served, &next).await.status(), 202);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert!(working.await.unwrap().unwrap());
}
