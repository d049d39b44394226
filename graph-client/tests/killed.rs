//! A sync process killed between pages resumes from the right link with nothing
//! skipped, on the file, Redis and PostgreSQL stores: a real child process (this test
//! binary, run again for its `child_sync` test) runs an incremental delta round that
//! writes each page's ids to its local copy (a file) before the tracker stores the
//! link; the parent kills it mid-round, then resumes the round in process from the
//! same store. Every changed user is in the local copy, each page at least once.
//! Also: the PostgreSQL store's migrations.

// The child reports its progress on stdout, which the parent reads.
#![allow(clippy::print_stdout)]

use std::collections::BTreeSet;
use std::io::{BufRead as _, BufReader, Write as _};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use keel_graph_client::GraphClient;
use keel_graph_client::delta::{
    DeltaPage, DeltaQuery, DeltaStore, DeltaTracker, FileDeltaStore, PostgresDeltaStore,
    RedisDeltaStore,
};
use keel_graph_client::emulator::{Emulator, TenantSeed};
use keel_graph_client::model::User;
use keel_resilience::RedisConnection;
use keel_testkit::{PostgresServer, RedisServer};
use keel_token_manager::client::{Authority, CachingProvider, ClientSecretCredential};

const TENANT: &str = "contoso.onmicrosoft.com";

fn client(base_url: &str, cloud: keel_graph_client::Cloud) -> GraphClient {
    let credential = ClientSecretCredential::new(
        Authority::Custom(base_url.to_owned()),
        TENANT,
        "app",
        "secret",
    )
    .unwrap();
    GraphClient::builder(cloud)
        .tenant("contoso", Arc::new(CachingProvider::new(credential)))
        .build()
        .unwrap()
}

fn pool(url: &str) -> deadpool_postgres::Pool {
    let mut config = deadpool_postgres::Config::new();
    config.url = Some(url.to_owned());
    config.connect_timeout = Some(Duration::from_secs(2));
    config
        .create_pool(
            Some(deadpool_postgres::Runtime::Tokio1),
            tokio_postgres::NoTls,
        )
        .unwrap()
}

/// The store named by `kind` at `place`.
async fn store(kind: &str, place: &str) -> Arc<dyn DeltaStore> {
    match kind {
        "file" => Arc::new(FileDeltaStore::new(place).unwrap()),
        "redis" => Arc::new(RedisDeltaStore::new(
            RedisConnection::single(place).await.unwrap(),
            "killed:",
        )),
        "postgres" => {
            let store = PostgresDeltaStore::new(pool(place));
            store.migrate().await.unwrap();
            Arc::new(store)
        }
        other => panic!("no store {other}"),
    }
}

fn tracker(client: GraphClient, store: Arc<dyn DeltaStore>) -> DeltaTracker {
    DeltaTracker::new(
        client,
        "contoso",
        DeltaQuery::users().select(["displayName"]).page_size(25),
        store,
        "contoso/users",
    )
}

/// Appends a page's ids to the local copy (a file), synced, then reports the page.
fn keep(copy: &str, page: &DeltaPage<User>) {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(copy)
        .unwrap();
    for user in &page.changed {
        writeln!(file, "{}", user.id).unwrap();
    }
    file.sync_all().unwrap();
}

/// The child: runs a round slowly, printing `page` after each page is kept. Only runs
/// when the parent starts it (with `KEEL_KILLED_CHILD` set).
#[test]
#[ignore = "run by killed_sync_resumes_from_the_right_link as a child process"]
fn child_sync() {
    let Ok(spec) = std::env::var("KEEL_KILLED_CHILD") else {
        return;
    };
    let parts: Vec<&str> = spec.splitn(4, '|').collect();
    let [base_url, kind, place, copy] = parts[..] else {
        panic!("bad child spec");
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let cloud = keel_graph_client::Cloud::custom(base_url, base_url).unwrap();
        let tracker = tracker(client(base_url, cloud), store(kind, place).await);
        tracker
            .round(|page: DeltaPage<User>| async move {
                // Slow work, then the page kept: a kill lands before or after either.
                tokio::time::sleep(Duration::from_millis(150)).await;
                keep(copy, &page);
                println!("page");
                std::io::stdout().flush().unwrap();
                tokio::time::sleep(Duration::from_millis(150)).await;
                Ok::<(), std::io::Error>(())
            })
            .await
            .unwrap();
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_sync_resumes_from_the_right_link() {
    let (redis, postgres) = tokio::task::spawn_blocking(|| {
        (
            RedisServer::start().unwrap(),
            PostgresServer::start().unwrap(),
        )
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let graph = Emulator::builder()
        .tenant(
            TenantSeed::new("7b1c2a4e-0f1d-4c55-9a3e-2d6f1b0c0001", TENANT)
                .client("app", "secret", ["User.Read.All"])
                .users(200),
        )
        .start()
        .await
        .unwrap();
    let file_place = dir.path().join("links").display().to_string();
    for (kind, place) in [
        ("file", file_place.as_str()),
        ("redis", redis.url().as_str()),
        ("postgres", postgres.url().as_str()),
    ] {
        let local = client(graph.base_url(), graph.cloud());
        let store = store(kind, place).await;
        // A first full round, in process, so that the child's round is incremental.
        tracker(local.clone(), store.clone())
            .round(|_page: DeltaPage<User>| async { Ok::<(), std::io::Error>(()) })
            .await
            .unwrap();
        let users: Vec<String> = (1..=200)
            .map(|n| format!("00000001-0000-4000-8000-{n:012x}"))
            .collect();
        let mut changed = BTreeSet::new();
        for (i, id) in users.iter().enumerate().filter(|(i, _)| i % 2 == 0) {
            assert!(graph.update_user(
                TENANT,
                id,
                serde_json::json!({"displayName": format!("{kind} {i}")})
            ));
            changed.insert(id.clone());
        }
        // 100 changes, pages of 25: the child is killed after its second page.
        let copy = dir
            .path()
            .join(format!("{kind}.copy"))
            .display()
            .to_string();
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "child_sync",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(
                "KEEL_KILLED_CHILD",
                format!("{}|{kind}|{place}|{copy}", graph.base_url()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let pages = tokio::task::spawn_blocking(move || {
            let mut reader = BufReader::new(stdout);
            let mut pages = 0;
            let mut line = String::new();
            while pages < 2 && reader.read_line(&mut line).unwrap() > 0 {
                if line.trim() == "page" {
                    pages += 1;
                }
                line.clear();
            }
            pages
        })
        .await
        .unwrap();
        assert_eq!(pages, 2, "{kind}: the child did not get through two pages");
        child.kill().unwrap();
        child.wait().unwrap();

        // Resumed in process: from the page after the last one stored.
        let resumed = tracker(local.clone(), store.clone())
            .round(|page: DeltaPage<User>| {
                keep(&copy, &page);
                async { Ok::<(), std::io::Error>(()) }
            })
            .await
            .unwrap();
        let kept: Vec<String> = std::fs::read_to_string(&copy)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect();
        let distinct: BTreeSet<String> = kept.iter().cloned().collect();
        assert_eq!(distinct, changed, "{kind}: a change was skipped");
        // Nothing read again but (at most) the page the kill interrupted.
        assert!(
            kept.len() <= 125,
            "{kind}: {} ids kept for 100 changes",
            kept.len()
        );
        assert!(
            resumed.pages <= 3,
            "{kind}: resumed from the start? {resumed:?}"
        );
    }
}

#[tokio::test]
async fn postgres_migrations_run_once_and_values_are_replaced_whole() {
    let server = tokio::task::spawn_blocking(|| PostgresServer::start().unwrap())
        .await
        .unwrap();
    let store = PostgresDeltaStore::new(pool(&server.url()));
    assert_eq!(store.migrate().await.unwrap(), 2);
    assert_eq!(store.migrate().await.unwrap(), 0);
    assert_eq!(store.load("k").await.unwrap(), None);
    store.save("k", "one").await.unwrap();
    store.save("k", "two").await.unwrap();
    let again = PostgresDeltaStore::new(pool(&server.url()));
    assert_eq!(again.load("k").await.unwrap().as_deref(), Some("two"));
    again.remove("k").await.unwrap();
    assert_eq!(store.load("k").await.unwrap(), None);
}
