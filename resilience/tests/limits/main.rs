//! Timeouts cancel the inner future; a cancelled call gives its bulkhead slot back.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use keel_resilience::bulkhead::Bulkhead;
use keel_resilience::timeout::{TimeoutOr, try_with_timeout, with_timeout};
use keel_resilience::{Classify, ErrorClass};
use tokio::time::Instant;

/// Sets its flag when dropped: proof that a future was cancelled.
struct DropFlag(Arc<AtomicBool>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

#[tokio::test(start_paused = true)]
async fn a_timeout_cancels_the_inner_future() {
    let dropped = Arc::new(AtomicBool::new(false));
    let flag = DropFlag(dropped.clone());
    let start = Instant::now();
    let result = with_timeout(Duration::from_secs(1), async move {
        let _flag = flag;
        tokio::time::sleep(Duration::from_secs(3600)).await;
        "never"
    })
    .await;
    let error = result.unwrap_err();
    assert_eq!(error.after(), Duration::from_secs(1));
    assert_eq!(error.class(), ErrorClass::Transient);
    assert_eq!(start.elapsed(), Duration::from_secs(1));
    assert!(
        dropped.load(Ordering::SeqCst),
        "the inner future was dropped, not left running"
    );
}

#[tokio::test(start_paused = true)]
async fn work_that_finishes_in_time_keeps_its_result_or_error() {
    let ok = try_with_timeout(Duration::from_secs(1), async { Ok::<_, std::io::Error>(7) }).await;
    assert_eq!(ok.unwrap(), 7);
    let failed = try_with_timeout(Duration::from_secs(1), async {
        Err::<(), _>(std::io::Error::from(std::io::ErrorKind::ConnectionReset))
    })
    .await;
    assert!(matches!(failed, Err(TimeoutOr::Inner(_))));
}

/// A task that takes a slot and keeps it for a minute.
fn hold_slot(
    bulkhead: &Bulkhead,
) -> tokio::task::JoinHandle<Result<(), keel_resilience::bulkhead::BulkheadFull>> {
    let bulkhead = bulkhead.clone();
    tokio::spawn(async move {
        bulkhead
            .run(tokio::time::sleep(Duration::from_secs(60)))
            .await
    })
}

#[tokio::test(start_paused = true)]
async fn a_full_bulkhead_refuses_after_its_wait() {
    let bulkhead = Bulkhead::new("db", 1, Duration::from_millis(100)).unwrap();
    let holder = hold_slot(&bulkhead);
    tokio::task::yield_now().await;
    assert_eq!(bulkhead.available(), 0);
    let start = Instant::now();
    let refused = bulkhead.run(async {}).await.unwrap_err();
    assert_eq!(start.elapsed(), Duration::from_millis(100));
    assert!(
        refused.to_string().contains("bulkhead `db` is full"),
        "{refused}"
    );
    assert!(matches!(refused.class(), ErrorClass::Throttled { .. }));
    holder.abort();
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_call_releases_its_slot() {
    let bulkhead = Bulkhead::new("db", 1, Duration::ZERO).unwrap();
    // Cancelled by a timeout around the bulkhead.
    let timed_out = with_timeout(
        Duration::from_secs(1),
        bulkhead.run(tokio::time::sleep(Duration::from_secs(60))),
    )
    .await;
    assert!(timed_out.is_err());
    assert_eq!(
        bulkhead.available(),
        1,
        "the timed-out call gave its slot back"
    );
    // Cancelled by aborting its task.
    let task = hold_slot(&bulkhead);
    tokio::task::yield_now().await;
    assert_eq!(bulkhead.available(), 0);
    task.abort();
    let _ = task.await;
    assert_eq!(
        bulkhead.available(),
        1,
        "the aborted call gave its slot back"
    );
    assert_eq!(bulkhead.run(async { 5 }).await.unwrap(), 5);
}
