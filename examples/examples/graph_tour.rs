//! A tour of keel-graph-client against the in-process Graph emulator (no tenant, no
//! network needed): users page by page, a group's Planner tasks, a task updated with its
//! ETag and the conflict a stale ETag meets, a `$batch` with a dependency, and
//! auto-batching of many concurrent calls into a few `$batch` requests.
//!
//! ```text
//! cargo run -p keel-examples --example graph_tour            # prints each step
//! cargo run -p keel-examples --example graph_tour -- --smoke # the same, checked
//! ```

// An executable's report goes to stdout.
#![allow(clippy::print_stdout)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::TryStreamExt as _;
use keel_graph_client::emulator::{Emulator, FaultRule};
use keel_graph_client::model::{PlannerTask, User};
use keel_graph_client::{AutoBatch, Batch, GraphClient, GraphError, GraphRequest};
use keel_token_manager::client::{Authority, CachingProvider, ClientSecretCredential};

type Error = Box<dyn std::error::Error + Send + Sync>;

fn check(smoke: bool, ok: bool, what: &str) -> Result<(), Error> {
    if smoke && !ok {
        return Err(format!("smoke check failed: {what}").into());
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let smoke = std::env::args().any(|a| a == "--smoke");
    // Graph and Entra ID's token endpoint, in process: two tenants with users, groups,
    // teams and Planner plans; the client `app` (secret `secret`).
    let graph = Emulator::start_default().await?;
    let contoso = graph.tenants()[0].clone();
    println!("emulator at {}", graph.base_url());
    let credential = ClientSecretCredential::new(
        Authority::Custom(graph.base_url().to_owned()),
        contoso.domain(),
        "app",
        "secret",
    )?;
    let tokens = Arc::new(CachingProvider::new(credential));
    let client = GraphClient::builder(graph.cloud())
        .tenant("contoso", tokens.clone())
        .build()?;

    // 1. Users, page by page (one page in memory), with $select and $top.
    let users: Vec<User> = client
        .items(
            "contoso",
            GraphRequest::get("/users")
                .select(["id", "displayName", "userPrincipalName"])
                .top(100),
        )
        .try_collect()
        .await?;
    println!(
        "1. {} users, first {:?}",
        users.len(),
        users[0].display_name
    );
    check(smoke, users.len() == 250, "250 users")?;

    // 2. A group's plan and its tasks, each with its ETag.
    let groups: Vec<_> = client.groups("contoso").try_collect().await?;
    let plans: Vec<_> = client.plans("contoso", &groups[0].id).try_collect().await?;
    let tasks: Vec<PlannerTask> = client.tasks("contoso", &plans[0].id).try_collect().await?;
    println!(
        "2. group {:?}: plan {:?} with {} tasks",
        groups[0].display_name,
        plans[0].title,
        tasks.len()
    );
    check(smoke, tasks.len() == 4, "4 tasks")?;

    // 3. An update with the task's ETag (Graph answers with the task when asked), then
    //    the same update with the ETag read before it: 412, the conflict error.
    let task = tasks[0].clone();
    let updated = client
        .update_task_returning(
            "contoso",
            &task,
            &serde_json::json!({"percentComplete": 50}),
        )
        .await?;
    println!(
        "3. task {:?} now {}% done, ETag {} -> {}",
        updated.title,
        updated.percent_complete.unwrap_or_default(),
        task.etag.as_deref().unwrap_or("?"),
        updated.etag.as_deref().unwrap_or("?")
    );
    let stale = client
        .update_task(
            "contoso",
            &task,
            &serde_json::json!({"title": "a lost update"}),
        )
        .await;
    let conflict = matches!(stale, Err(GraphError::PreconditionFailed(_)));
    println!(
        "   the stale ETag: {}",
        match &stale {
            Err(e) => e.to_string(),
            Ok(()) => "accepted (wrong!)".into(),
        }
    );
    check(
        smoke,
        conflict && updated.percent_complete == Some(50),
        "ETag update and conflict",
    )?;

    // 4. A batch: a user, then the user's messages after it (dependsOn), and a missing
    //    user; each answer by its id, whatever order Graph sends them in.
    let mut batch = Batch::new();
    let ada = batch.add(GraphRequest::get(&format!("/users/{}", users[0].id)));
    let mail = batch.add_after(
        GraphRequest::get(&format!("/users/{}/messages", users[0].id)).top(2),
        &[&ada],
    );
    let nobody = batch.add(GraphRequest::get("/users/nobody@contoso.onmicrosoft.com"));
    let answers = client.batch("contoso", batch).await;
    let first: User = answers.json(&ada)?;
    let messages: keel_graph_client::model::Page<serde_json::Value> = answers.json(&mail)?;
    let missing = answers
        .get(&nobody)
        .and_then(|a| a.as_ref().err())
        .and_then(GraphError::status);
    println!(
        "4. batch: {:?}, {} messages after it, the missing user: {:?}",
        first.display_name,
        messages.value.len(),
        missing
    );
    check(
        smoke,
        missing.map(|s| s.as_u16()) == Some(404),
        "batch answers",
    )?;

    // 5. Auto-batching: 200 concurrent reads of users, each answered on its own, sent as
    //    a handful of `$batch` requests. Graph answers each call 20 ms late here (an
    //    injected fault) and throttles one in ten, which the client re-sends.
    graph.faults().add(
        FaultRule::path("/v1.0/users/")
            .throttle("0.05")
            .ratio(1, 10),
    );
    graph
        .faults()
        .add(FaultRule::path("/v1.0/users/").latency(Duration::from_millis(20)));
    let batched = GraphClient::builder(graph.cloud())
        .tenant("contoso", tokens)
        .auto_batch(AutoBatch::window(Duration::from_millis(2)))
        .build()?;
    let before = graph.batch_requests();
    let started = Instant::now();
    let reads = users.iter().take(200).map(|u| {
        let client = batched.clone();
        let path = format!("/users/{}", u.id);
        async move {
            client
                .get::<User>("contoso", &GraphRequest::get(&path))
                .await
        }
    });
    let read = futures_util::future::try_join_all(reads).await?;
    let batches = graph.batch_requests() - before;
    println!(
        "5. auto-batching: {} calls in {} $batch requests, {:?}",
        read.len(),
        batches,
        started.elapsed()
    );
    check(
        smoke,
        read.iter().zip(&users).all(|(r, u)| r.id == u.id) && batches < 50,
        "auto-batched answers",
    )?;
    if smoke {
        println!("smoke: ok");
    }
    Ok(())
}
