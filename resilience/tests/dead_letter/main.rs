//! The dead-letter queue on its three stores: memory, a real redis-server (and a Redis
//! Cluster), a real PostgreSQL. What a user relies on: letters are kept whole, survive a
//! restart of the process (and of PostgreSQL), a replay hands each letter over once even
//! with two replays at the same time, and a failing handler loses nothing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use keel_resilience::ErrorClass;
use keel_resilience::dead_letter::{
    DeadLetterError, DeadLetterQueue, LetterId, MemoryDeadLetters, NewLetter, PostgresDeadLetters,
    Purge, RedisDeadLetters, ReplayOptions,
};
use keel_testkit::{PostgresServer, RedisCluster, RedisServer};

enum Backend {
    Memory(Arc<MemoryDeadLetters>),
    Redis(RedisServer),
    Cluster(RedisCluster),
    Postgres(PostgresServer),
}

fn pool(server: &PostgresServer) -> deadpool_postgres::Pool {
    let mut config = deadpool_postgres::Config::new();
    config.url = Some(server.url());
    config.connect_timeout = Some(Duration::from_secs(2));
    config.pool = Some(deadpool_postgres::PoolConfig {
        max_size: 8,
        timeouts: deadpool_postgres::Timeouts {
            wait: Some(Duration::from_secs(5)),
            create: Some(Duration::from_secs(2)),
            recycle: Some(Duration::from_secs(2)),
        },
        ..Default::default()
    });
    config
        .create_pool(
            Some(deadpool_postgres::Runtime::Tokio1),
            tokio_postgres::NoTls,
        )
        .unwrap()
}

impl Backend {
    async fn all() -> Vec<(&'static str, Backend)> {
        let (redis, cluster, postgres) = tokio::task::spawn_blocking(|| {
            (
                RedisServer::start().unwrap(),
                RedisCluster::start(3).unwrap(),
                PostgresServer::start().unwrap(),
            )
        })
        .await
        .unwrap();
        vec![
            (
                "memory",
                Backend::Memory(Arc::new(MemoryDeadLetters::new())),
            ),
            ("redis", Backend::Redis(redis)),
            ("redis cluster", Backend::Cluster(cluster)),
            ("postgres", Backend::Postgres(postgres)),
        ]
    }

    /// A queue over this backend, as a fresh process would open it.
    async fn queue(&self, name: &'static str) -> DeadLetterQueue {
        match self {
            Backend::Memory(store) => DeadLetterQueue::new(name, store.clone()),
            Backend::Redis(server) => {
                let client = redis::Client::open(server.url()).unwrap();
                let connection = redis::aio::ConnectionManager::new(client).await.unwrap();
                DeadLetterQueue::new(name, RedisDeadLetters::new(connection, name))
            }
            Backend::Cluster(cluster) => {
                let client = redis::cluster::ClusterClient::new(cluster.urls()).unwrap();
                let connection = client.get_async_connection().await.unwrap();
                DeadLetterQueue::new(name, RedisDeadLetters::new(connection, name))
            }
            Backend::Postgres(server) => {
                let store = PostgresDeadLetters::new(pool(server), name);
                store.migrate().await.unwrap();
                DeadLetterQueue::new(name, store)
            }
        }
    }
}

fn letter(n: usize) -> NewLetter {
    NewLetter::new(
        format!("order-{n}"),
        vec![0, 159, 146, 150, u8::try_from(n % 256).unwrap()],
        ErrorClass::Throttled {
            retry_after: Some(Duration::from_millis(1500)),
        },
        format!("429 Too Many Requests (letter {n})"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn letters_are_kept_whole_listed_in_order_inspected_and_purged() {
    for (name, backend) in Backend::all().await {
        let queue = backend.queue("keep").await;
        let first = SystemTime::UNIX_EPOCH + Duration::from_secs(1_790_000_000);
        let last = first + Duration::from_secs(42);
        let id = queue
            .push(
                letter(1)
                    .with_attempts(3)
                    .with_failure_times(first, last)
                    .with_correlation_id("4bf92f3577b34da6a3ce929d0e0e4736")
                    .with_source("graph-writes"),
            )
            .await
            .unwrap();
        let kept = queue.inspect(&id).await.unwrap().expect(name);
        assert_eq!(kept.key(), "order-1", "{name}");
        assert_eq!(kept.payload(), &[0, 159, 146, 150, 1], "{name}");
        assert_eq!(
            kept.class(),
            ErrorClass::Throttled {
                retry_after: Some(Duration::from_millis(1500))
            },
            "{name}"
        );
        assert_eq!(kept.message(), "429 Too Many Requests (letter 1)", "{name}");
        assert_eq!(kept.attempts(), 3, "{name}");
        assert_eq!(kept.first_failed_at(), first, "{name}");
        assert_eq!(kept.last_failed_at(), last, "{name}");
        assert_eq!(
            kept.correlation_id(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736"),
            "{name}"
        );
        assert_eq!(kept.source(), "graph-writes", "{name}");
        assert_eq!(kept.replay_failures(), 0, "{name}");

        // A runaway message is cut, not refused; text is kept as it was (not escaped).
        let long = queue
            .push(NewLetter::new(
                "ключ-2",
                Vec::new(),
                ErrorClass::Permanent,
                "é|".repeat(100_000),
            ))
            .await
            .unwrap();
        let long = queue.inspect(&long).await.unwrap().unwrap();
        assert_eq!(long.key(), "ключ-2", "{name}");
        assert!(long.message().chars().count() <= 1027, "{name}");
        assert!(long.message().starts_with("é|é|"), "{name}");
        for n in 3..=7 {
            queue.push(letter(n)).await.unwrap();
        }

        // Listed oldest first, paged by id.
        let page = queue.list(None, 4).await.unwrap();
        let keys: Vec<&str> = page.iter().map(|l| l.key()).collect();
        assert_eq!(keys, ["order-1", "ключ-2", "order-3", "order-4"], "{name}");
        let rest = queue.list(Some(page[3].id()), 10).await.unwrap();
        let keys: Vec<&str> = rest.iter().map(|l| l.key()).collect();
        assert_eq!(keys, ["order-5", "order-6", "order-7"], "{name}");
        let stats = queue.stats().await.unwrap();
        assert_eq!(stats.letters, 7, "{name}");
        assert!(stats.oldest_enqueued_at.is_some(), "{name}");

        // Ids from outside are data, not commands.
        for hostile in [
            "",
            "-",
            "+",
            "0-0 OR 1=1",
            "((1-0",
            "99999999999999999999999-1",
        ] {
            let id = LetterId::from_text(hostile);
            assert!(
                queue.inspect(&id).await.unwrap().is_none(),
                "{name}: {hostile}"
            );
            assert_eq!(queue.purge(Purge::One(id)).await.unwrap(), 0, "{name}");
        }

        assert_eq!(
            queue.purge(Purge::One(page[0].id().clone())).await.unwrap(),
            1
        );
        assert!(
            queue.inspect(page[0].id()).await.unwrap().is_none(),
            "{name}"
        );
        assert_eq!(
            queue
                .purge(Purge::EnqueuedBefore(SystemTime::UNIX_EPOCH))
                .await
                .unwrap(),
            0,
            "{name}"
        );
        let future = SystemTime::now() + Duration::from_secs(3600);
        assert_eq!(
            queue.purge(Purge::EnqueuedBefore(future)).await.unwrap(),
            6,
            "{name}"
        );
        assert_eq!(queue.stats().await.unwrap().letters, 0, "{name}");
        queue.push(letter(8)).await.unwrap();
        assert_eq!(queue.purge(Purge::All).await.unwrap(), 1, "{name}");
        assert!(queue.list(None, 10).await.unwrap().is_empty(), "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn letters_survive_a_restart_of_the_process_and_of_postgres() {
    for (name, mut backend) in Backend::all().await {
        if matches!(backend, Backend::Memory(_)) {
            continue; // kept in the process: gone with it, as documented
        }
        let before = backend.queue("restart").await;
        let id = before.push(letter(1)).await.unwrap();
        drop(before);
        if let Backend::Postgres(server) = &mut backend {
            tokio::task::block_in_place(|| server.restart().unwrap());
        }
        let after = backend.queue("restart").await;
        let kept = after.inspect(&id).await.unwrap();
        assert_eq!(
            kept.map(|l| l.key().to_owned()).as_deref(),
            Some("order-1"),
            "{name}"
        );
        // Another queue's letters are not this one's.
        assert!(
            backend
                .queue("other")
                .await
                .list(None, 10)
                .await
                .unwrap()
                .is_empty(),
            "{name}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_handler_loses_nothing_and_the_next_replay_delivers() {
    for (name, backend) in Backend::all().await {
        let queue = backend.queue("fail").await;
        for n in 0..10 {
            queue.push(letter(n)).await.unwrap();
        }
        // The handler refuses the odd letters and times out on letter 4.
        let seen = Mutex::new(Vec::new());
        let report = queue
            .replay(
                ReplayOptions::default()
                    .batch(3)
                    .lease(Duration::from_secs(10))
                    .handler_timeout(Duration::from_millis(300)),
                |letter| {
                    seen.lock().unwrap().push(letter.key().to_owned());
                    let n: usize = letter.key()[6..].parse().unwrap();
                    async move {
                        if n == 4 {
                            tokio::time::sleep(Duration::from_secs(5)).await;
                        }
                        if n % 2 == 1 {
                            Err(format!("downstream refused {n}"))
                        } else {
                            Ok(())
                        }
                    }
                },
            )
            .await
            .unwrap();
        assert_eq!(report.delivered, 4, "{name}: {report:?}");
        assert_eq!(report.failed, 6, "{name}: {report:?}");
        let seen = seen.into_inner().unwrap();
        assert_eq!(
            seen.len(),
            10,
            "{name}: each letter once per replay: {seen:?}"
        );
        let left = queue.list(None, 100).await.unwrap();
        let keys: Vec<&str> = left.iter().map(|l| l.key()).collect();
        assert_eq!(
            keys,
            [
                "order-1", "order-3", "order-4", "order-5", "order-7", "order-9"
            ],
            "{name}"
        );
        assert_eq!(left[0].replay_failures(), 1, "{name}");
        assert_eq!(
            left[0].last_replay_error(),
            Some("downstream refused 1"),
            "{name}"
        );
        assert!(
            left[2].last_replay_error().unwrap().contains("timed out"),
            "{name}: {:?}",
            left[2].last_replay_error()
        );
        // The payload and the original error are untouched by the failures.
        assert_eq!(
            left[0].message(),
            "429 Too Many Requests (letter 1)",
            "{name}"
        );

        let report = queue
            .replay(ReplayOptions::default(), |_| async { Ok::<(), String>(()) })
            .await
            .unwrap();
        assert_eq!(report.delivered, 6, "{name}");
        assert_eq!(queue.stats().await.unwrap().letters, 0, "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replays_at_once_hand_each_letter_over_exactly_once() {
    for (name, backend) in Backend::all().await {
        let a = backend.queue("twice").await;
        let b = backend.queue("twice").await;
        for n in 0..60 {
            a.push(letter(n)).await.unwrap();
        }
        let handed: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let replay = |queue: DeadLetterQueue, who: &'static str| {
            let handed = handed.clone();
            async move {
                queue
                    .replay(ReplayOptions::default().batch(4), move |letter| {
                        *handed
                            .lock()
                            .unwrap()
                            .entry(letter.key().to_owned())
                            .or_default() += 1;
                        let n: usize = letter.key()[6..].parse().unwrap();
                        async move {
                            tokio::time::sleep(Duration::from_millis(2)).await;
                            // One replay fails a few letters: they must stay.
                            if who == "b" && n.is_multiple_of(7) {
                                Err("b's downstream is down")
                            } else {
                                Ok(())
                            }
                        }
                    })
                    .await
                    .unwrap()
            }
        };
        let (ra, rb) = tokio::join!(
            tokio::spawn(replay(a.clone(), "a")),
            tokio::spawn(replay(b, "b"))
        );
        let (ra, rb) = (ra.unwrap(), rb.unwrap());
        let handed = handed.lock().unwrap().clone();
        let twice: Vec<_> = handed.iter().filter(|(_, n)| **n > 1).collect();
        assert!(twice.is_empty(), "{name}: handed over twice: {twice:?}");
        let left = a.stats().await.unwrap().letters;
        assert_eq!(
            ra.delivered + rb.delivered + usize::try_from(left).unwrap(),
            60,
            "{name}: {ra:?} {rb:?}, {left} left"
        );
        assert_eq!(usize::try_from(left).unwrap(), rb.failed, "{name}");
        assert!(
            ra.delivered > 0 && rb.delivered + rb.failed > 0,
            "{name}: both took part: {ra:?} {rb:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_that_dies_leaves_its_letters_to_the_next_one_after_the_lease() {
    for (name, backend) in Backend::all().await {
        let queue = backend.queue("crash").await;
        for n in 0..3 {
            queue.push(letter(n)).await.unwrap();
        }
        // A replay claims the letters, then its process dies: it never settles them.
        let dying = queue.replay(
            ReplayOptions::default()
                .lease(Duration::from_millis(800))
                .handler_timeout(Duration::from_millis(700)),
            |_| async {
                std::future::pending::<()>().await;
                Ok::<(), String>(())
            },
        );
        assert!(
            tokio::time::timeout(Duration::from_millis(100), dying)
                .await
                .is_err(),
            "{name}"
        );
        // While the lease runs, another replay gets nothing...
        let during = queue
            .replay(ReplayOptions::default(), |_| async { Ok::<(), String>(()) })
            .await
            .unwrap();
        assert_eq!(during.delivered, 0, "{name}: {during:?}");
        // ...and after it, every letter.
        tokio::time::sleep(Duration::from_millis(900)).await;
        let after = queue
            .replay(ReplayOptions::default(), |_| async { Ok::<(), String>(()) })
            .await
            .unwrap();
        assert_eq!(after.delivered, 3, "{name}: {after:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_letter_purged_during_its_replay_is_not_counted_delivered() {
    for (name, backend) in Backend::all().await {
        let queue = backend.queue("purged").await;
        queue.push(letter(1)).await.unwrap();
        let other = queue.clone();
        let report = queue
            .replay(ReplayOptions::default(), move |letter| {
                let other = other.clone();
                async move {
                    other.purge(Purge::One(letter.id().clone())).await.unwrap();
                    Ok::<(), String>(())
                }
            })
            .await
            .unwrap();
        assert_eq!(report.delivered, 0, "{name}: {report:?}");
        assert_eq!(report.lost_claims, 1, "{name}: {report:?}");
    }
}

#[tokio::test]
async fn replay_options_that_cannot_work_are_refused() {
    let queue = DeadLetterQueue::new("opts", MemoryDeadLetters::new());
    let refused = queue
        .replay(
            ReplayOptions::default()
                .lease(Duration::from_secs(1))
                .handler_timeout(Duration::from_secs(1)),
            |_| async { Ok::<(), String>(()) },
        )
        .await;
    assert!(matches!(refused, Err(DeadLetterError::InvalidOptions(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bounded_stores_refuse_when_full_and_oversized_payloads_are_refused() {
    let redis = tokio::task::spawn_blocking(|| RedisServer::start().unwrap())
        .await
        .unwrap();
    let client = redis::Client::open(redis.url()).unwrap();
    let connection = redis::aio::ConnectionManager::new(client).await.unwrap();
    let queues = [
        DeadLetterQueue::new("full", MemoryDeadLetters::new().capacity(2).max_payload(8)),
        DeadLetterQueue::new(
            "full",
            RedisDeadLetters::new(connection, "full")
                .capacity(2)
                .max_payload(8),
        ),
    ];
    for queue in queues {
        queue.push(letter(1)).await.unwrap();
        queue.push(letter(2)).await.unwrap();
        let full = queue.push(letter(3)).await.unwrap_err();
        assert!(full.is_full(), "{full}");
        assert!(full.to_string().contains("replay or purge"), "{full}");
        assert_eq!(queue.stats().await.unwrap().letters, 2);
        queue.purge(Purge::All).await.unwrap();
        let big = NewLetter::new("k", vec![0; 9], ErrorClass::Permanent, "x");
        assert!(matches!(
            queue.push(big).await,
            Err(DeadLetterError::TooLarge { size: 9, limit: 8 })
        ));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_redis_holds_is_not_trusted() {
    let redis = tokio::task::spawn_blocking(|| RedisServer::start().unwrap())
        .await
        .unwrap();
    let client = redis::Client::open(redis.url()).unwrap();
    let connection = redis::aio::ConnectionManager::new(client).await.unwrap();
    let store = RedisDeadLetters::new(connection, "hostile");
    let stream = store.stream_key().to_owned();
    let queue = DeadLetterQueue::new("hostile", store);
    queue.push(letter(1)).await.unwrap();
    // Someone else wrote to the stream: no class, a time that is not a number.
    redis
        .command(&["XADD", &stream, "*", "k", "x", "f", "soon"])
        .unwrap();
    // It is skipped (and logged with its id), not an error that blocks the queue.
    let letters = queue.list(None, 10).await.unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(queue.stats().await.unwrap().letters, 2);
    // Redis down: a typed error within the timeout, not a hang.
    drop(redis);
    let started = std::time::Instant::now();
    let err = queue.push(letter(2)).await.unwrap_err();
    assert!(matches!(err, DeadLetterError::Store { .. }), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

mod pipeline {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use keel_resilience::breaker::{CircuitBreaker, CircuitBreakerConfig};
    use keel_resilience::dead_letter::{DeadLetterQueue, KeepOnFailure, MemoryDeadLetters};
    use keel_resilience::pipeline::Pipeline;
    use keel_resilience::retry::{Backoff, Idempotency, Retry, RetryConfig};
    use keel_resilience::{Classify, ErrorClass};

    #[derive(Debug)]
    struct Failure(ErrorClass);
    impl std::fmt::Display for Failure {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "the dependency said {:?}", self.0)
        }
    }
    impl Classify for Failure {
        fn class(&self) -> ErrorClass {
            self.0
        }
    }

    fn pipeline() -> Pipeline {
        Pipeline::builder("orders-api")
            .retry(Retry::new(
                RetryConfig::builder("orders-api")
                    .max_attempts(3)
                    .backoff(Backoff::Constant(Duration::from_millis(1)))
                    .without_budget()
                    .build()
                    .unwrap(),
            ))
            .build()
    }

    #[tokio::test]
    async fn work_that_fails_for_good_is_kept_with_its_attempts_and_nothing_else_is() {
        let dead_letters = DeadLetterQueue::new("orders", MemoryDeadLetters::new());
        let pipeline = pipeline();
        let built = AtomicUsize::new(0);

        // Succeeds: nothing kept, the payload never built.
        let ok = pipeline
            .run_or_dead_letter(
                Idempotency::Idempotent,
                &dead_letters,
                KeepOnFailure::new("order-1", || {
                    built.fetch_add(1, Ordering::SeqCst);
                    vec![1]
                }),
                || async { Ok::<_, Failure>(7) },
            )
            .await
            .unwrap();
        assert_eq!(ok, 7);
        assert_eq!(built.load(Ordering::SeqCst), 0);

        // Transient every time: kept after the three attempts.
        let calls = AtomicUsize::new(0);
        let failed = pipeline
            .run_or_dead_letter(
                Idempotency::Idempotent,
                &dead_letters,
                KeepOnFailure::new("order-2", || b"two".to_vec()).correlation_id("corr-2"),
                || {
                    calls.fetch_add(1, Ordering::SeqCst);
                    async { Err::<(), _>(Failure(ErrorClass::Transient)) }
                },
            )
            .await
            .unwrap_err();
        assert!(failed.is_kept());
        assert_eq!(calls.load(Ordering::SeqCst), 3);

        // Permanent: kept after one attempt, not retried.
        let failed = pipeline
            .run_or_dead_letter(
                Idempotency::Idempotent,
                &dead_letters,
                KeepOnFailure::new("order-3", || b"three".to_vec()),
                || async { Err::<(), _>(Failure(ErrorClass::Permanent)) },
            )
            .await
            .unwrap_err();
        assert!(failed.is_kept());

        let letters = dead_letters.list(None, 10).await.unwrap();
        assert_eq!(letters.len(), 2);
        let (two, three) = (&letters[0], &letters[1]);
        assert_eq!(
            (two.key(), two.payload(), two.attempts(), two.class()),
            ("order-2", b"two".as_slice(), 3, ErrorClass::Transient)
        );
        assert_eq!(two.correlation_id(), Some("corr-2"));
        assert_eq!(two.source(), "orders-api");
        assert!(two.first_failed_at() <= two.last_failed_at());
        assert!(two.message().contains("Transient"), "{}", two.message());
        assert_eq!(
            (three.key(), three.attempts(), three.class()),
            ("order-3", 1, ErrorClass::Permanent)
        );
    }

    #[tokio::test]
    async fn work_refused_by_an_open_breaker_is_kept_with_no_attempt() {
        let dead_letters = DeadLetterQueue::new("orders", MemoryDeadLetters::new());
        let breaker = Arc::new(CircuitBreaker::new(CircuitBreakerConfig::standard("api")));
        breaker.force_open();
        let pipeline = Pipeline::builder("orders-api")
            .circuit_breaker(breaker)
            .build();
        let failed = pipeline
            .run_or_dead_letter(
                Idempotency::Idempotent,
                &dead_letters,
                KeepOnFailure::new("order-9", || b"nine".to_vec()),
                || async { Ok::<(), Failure>(()) },
            )
            .await
            .unwrap_err();
        assert_eq!(failed.error.policy(), "circuit_breaker");
        let letter = &dead_letters.list(None, 1).await.unwrap()[0];
        assert_eq!((letter.key(), letter.attempts()), ("order-9", 0));
    }

    #[tokio::test]
    async fn a_letter_that_cannot_be_kept_says_so_and_keeps_the_error() {
        let dead_letters = DeadLetterQueue::new("orders", MemoryDeadLetters::new().capacity(1));
        let pipeline = pipeline();
        for n in 0..2 {
            let failed = pipeline
                .run_or_dead_letter(
                    Idempotency::NonIdempotent,
                    &dead_letters,
                    KeepOnFailure::new(format!("order-{n}"), Vec::new),
                    || async { Err::<(), _>(Failure(ErrorClass::Permanent)) },
                )
                .await
                .unwrap_err();
            assert_eq!(failed.is_kept(), n == 0);
            assert_eq!(failed.error.policy(), "inner");
            if n == 1 {
                assert!(failed.letter.unwrap_err().is_full());
            }
        }
    }
}

#[test]
fn sizes_ages_and_replays_are_exported_as_metrics() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let queue = DeadLetterQueue::new("metered", MemoryDeadLetters::new().capacity(3));
            for n in 0..4 {
                let _ = queue.push(letter(n)).await; // the fourth is refused: full
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            queue.stats().await.unwrap();
            queue
                .replay(ReplayOptions::default().limit(2), |letter| async move {
                    if letter.key() == "order-0" {
                        Err("still down")
                    } else {
                        Ok(())
                    }
                })
                .await
                .unwrap();
        });
    });
    let mut metrics: HashMap<String, DebugValue> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value)| {
            let key = key.key();
            let mut labels: Vec<String> = key
                .labels()
                .map(|l| format!("{}={}", l.key(), l.value()))
                .collect();
            labels.sort();
            (format!("{}{{{}}}", key.name(), labels.join(",")), value)
        })
        .collect();
    let mut get = |name: &str| match metrics.remove(name) {
        Some(value) => value,
        None => panic!("{name} missing from {:#?}", metrics.keys()),
    };
    assert_eq!(
        get("resilience_dead_letters_added_total{queue=metered}"),
        DebugValue::Counter(3)
    );
    assert_eq!(
        get("resilience_dead_letters_push_failed_total{queue=metered}"),
        DebugValue::Counter(1)
    );
    assert_eq!(
        get("resilience_dead_letters{queue=metered}"),
        DebugValue::Gauge(3.0.into())
    );
    match get("resilience_dead_letters_oldest_age_seconds{queue=metered}") {
        DebugValue::Gauge(age) => assert!(age.into_inner() >= 0.01, "{age}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        get("resilience_dead_letters_replayed_total{outcome=delivered,queue=metered}"),
        DebugValue::Counter(1)
    );
    assert_eq!(
        get("resilience_dead_letters_replayed_total{outcome=failed,queue=metered}"),
        DebugValue::Counter(1)
    );
}

/// Review: a batch is leased at once but handled one letter after another; a slow
/// handler ran the rest of the batch past its lease and a second replay took (and
/// delivered) the same letters again, on every store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_batch_renews_its_claims_instead_of_sharing_letters() {
    for (name, backend) in Backend::all().await {
        let a = backend.queue("slow").await;
        let b = backend.queue("slow").await;
        for n in 0..3 {
            a.push(letter(n)).await.unwrap();
        }
        let handed: Arc<Mutex<Vec<(String, &'static str)>>> = Arc::default();
        let record = |who: &'static str| {
            let handed = handed.clone();
            move |letter: keel_resilience::dead_letter::DeadLetter| {
                handed.lock().unwrap().push((letter.key().to_owned(), who));
                async move {
                    if who == "a" {
                        tokio::time::sleep(Duration::from_millis(600)).await;
                    }
                    Ok::<(), String>(())
                }
            }
        };
        let slow = tokio::spawn({
            let a = a.clone();
            let handler = record("a");
            async move {
                a.replay(
                    ReplayOptions::default()
                        .batch(3)
                        .lease(Duration::from_millis(1000))
                        .handler_timeout(Duration::from_millis(900)),
                    handler,
                )
                .await
                .unwrap()
            }
        });
        tokio::time::sleep(Duration::from_millis(1300)).await;
        let rb = b
            .replay(ReplayOptions::default(), record("b"))
            .await
            .unwrap();
        let ra = slow.await.unwrap();
        let handed = handed.lock().unwrap().clone();
        let mut keys: Vec<&str> = handed.iter().map(|(k, _)| k.as_str()).collect();
        keys.sort_unstable();
        keys.dedup();
        assert_eq!(
            keys.len(),
            handed.len(),
            "{name}: handed over twice: {handed:?}"
        );
        assert_eq!(ra.delivered + rb.delivered, 3, "{name}: {ra:?} {rb:?}");
        assert_eq!(ra.lost_claims + rb.lost_claims, 0, "{name}: {ra:?} {rb:?}");
    }
}

/// Review: a handler that dead-letters the work again (what a pipeline does) made a
/// replay run forever; a replay covers the letters kept before it started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_that_dead_letters_again_does_not_make_the_replay_endless() {
    for (name, backend) in Backend::all().await {
        let queue = backend.queue("again").await;
        for n in 0..2 {
            queue.push(letter(n)).await.unwrap();
        }
        let again = queue.clone();
        let report = tokio::time::timeout(
            Duration::from_secs(20),
            queue.replay(ReplayOptions::default().batch(1), move |letter| {
                let again = again.clone();
                async move {
                    again
                        .push(NewLetter::new(
                            letter.key(),
                            letter.payload().to_vec(),
                            ErrorClass::Transient,
                            "still failing",
                        ))
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                }
            }),
        )
        .await
        .unwrap_or_else(|_| panic!("{name}: the replay did not end"))
        .unwrap();
        assert_eq!(report.delivered, 2, "{name}: {report:?}");
        let left = queue.list(None, 10).await.unwrap();
        assert_eq!(left.len(), 2, "{name}");
        assert!(
            left.iter().all(|l| l.message() == "still failing"),
            "{name}"
        );
    }
}

/// Review: text with a NUL character (a binary reply quoted in a message) was refused by
/// PostgreSQL; every store keeps it, the NUL replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_with_nul_characters_are_kept_on_every_store() {
    for (name, backend) in Backend::all().await {
        let queue = backend.queue("nul").await;
        let id = queue
            .push(NewLetter::new(
                "k\0ey",
                vec![0, 0],
                ErrorClass::Transient,
                "bad reply: \0\u{1}",
            ))
            .await
            .unwrap_or_else(|e| panic!("{name}: {e:?}"));
        let kept = queue.inspect(&id).await.unwrap().unwrap();
        assert_eq!(kept.message(), "bad reply: \u{FFFD}\u{1}", "{name}");
        assert_eq!(kept.key(), "k\u{FFFD}ey", "{name}");
        assert_eq!(
            kept.payload(),
            &[0, 0],
            "{name}: payloads are bytes, kept as they are"
        );
        // A handler's error with a NUL is kept too.
        let report = queue
            .replay(ReplayOptions::default(), |_| async { Err("down: \0") })
            .await
            .unwrap_or_else(|e| panic!("{name}: {e:?}"));
        assert_eq!(report.failed, 1, "{name}");
    }
}

/// Review: one entry that is not a letter blocked every replay (the whole batch failed
/// to parse after its leases were taken) and stranded the good letters claimed with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_that_is_not_a_letter_is_skipped_not_a_blocker() {
    let (redis, postgres) = tokio::task::spawn_blocking(|| {
        (
            RedisServer::start().unwrap(),
            PostgresServer::start().unwrap(),
        )
    })
    .await
    .unwrap();
    let redis = Backend::Redis(redis);
    let postgres = Backend::Postgres(postgres);
    for (name, backend) in [("redis", &redis), ("postgres", &postgres)] {
        let queue = backend.queue("damaged").await;
        for n in 0..5 {
            queue.push(letter(n)).await.unwrap();
        }
        let damaged = queue.push(letter(5)).await.unwrap();
        match backend {
            Backend::Redis(server) => {
                // In its place, an entry someone else wrote.
                queue.purge(Purge::One(damaged.clone())).await.unwrap();
                server
                    .command(&[
                        "XADD",
                        "keel:dlq:{7:damaged}:letters",
                        "*",
                        "k",
                        "x",
                        "c",
                        "bogus",
                    ])
                    .unwrap();
            }
            Backend::Postgres(server) => {
                server
                    .psql(&format!(
                        "UPDATE keel_dead_letters SET class = 'bogus' WHERE id = {}",
                        damaged.as_str()
                    ))
                    .unwrap();
            }
            _ => unreachable!(),
        }
        for n in 6..11 {
            queue.push(letter(n)).await.unwrap();
        }
        let report = queue
            .replay(ReplayOptions::default().batch(4), |_| async {
                Ok::<(), String>(())
            })
            .await
            .unwrap_or_else(|e| panic!("{name}: {e:?}"));
        assert_eq!(report.delivered, 10, "{name}: {report:?}");
        assert_eq!(report.unreadable, 1, "{name}: {report:?}");
        // Listing skips it too; stats count it, for an operator to purge.
        assert!(queue.list(None, 100).await.unwrap().is_empty(), "{name}");
        assert_eq!(queue.stats().await.unwrap().letters, 1, "{name}");
    }
}

/// Review: after `Purge::All` the Redis stream started over and new letters reused old
/// ids, so an operator's old id could purge a different letter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_are_never_reused_after_a_purge() {
    for (name, backend) in Backend::all().await {
        let queue = backend.queue("reuse").await;
        let mut previous = None;
        for _ in 0..50 {
            let id = queue.push(letter(1)).await.unwrap();
            if let Some(old) = previous.replace(id.clone()) {
                assert_ne!(old, id, "{name}");
                assert!(queue.inspect(&old).await.unwrap().is_none(), "{name}");
            }
            queue.purge(Purge::All).await.unwrap();
        }
        // Edge pages: nothing asked, nothing after the largest id.
        queue.push(letter(2)).await.unwrap();
        assert!(queue.list(None, 0).await.unwrap().is_empty(), "{name}");
        let end = LetterId::from_text("18446744073709551615-18446744073709551615");
        assert!(
            queue.list(Some(&end), 10).await.unwrap().is_empty(),
            "{name}"
        );
    }
}
