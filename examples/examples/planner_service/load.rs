//! `--load`: a bounded load run on loopback (it stops by itself) against a service on a
//! private redis-server: cached reads and ETag writes from concurrent clients, three
//! times — clean, with Graph throttling (429) and failing (503) a share of its calls,
//! and with Redis killed and restarted in the middle. It reports throughput and
//! p50/p95/p99 per phase, and fails when a client saw an error a retry or the cache
//! could have hidden, a write was lost, or the service stopped being ready.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use keel_graph_client::emulator::FaultRule;
use serde_json::{Value, json};
use tokio::sync::Mutex;

use crate::{Error, Instance, Shared};

const READERS: usize = 8;
const WRITERS: usize = 2;

#[derive(Default)]
struct Samples {
    reads: Vec<Duration>,
    writes: Vec<Duration>,
    read_errors: u64,
    write_errors: u64,
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)].as_secs_f64() * 1_000.0
}

async fn login(http: &reqwest::Client, base: &str) -> Result<String, Error> {
    let body: Value = http
        .post(format!("{base}/login"))
        .json(&json!({"username": "ada", "password": "lovelace"}))
        .send()
        .await?
        .json()
        .await?;
    Ok(body["access_token"].as_str().ok_or("no token")?.to_owned())
}

/// One phase: readers and writers for `length`, while `during` does its harm.
async fn phase<F, Fut>(
    name: &str,
    instance: &Instance,
    ids: &[String],
    length: Duration,
    written: &Arc<Vec<AtomicU64>>,
    during: F,
) -> Result<bool, Error>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(32)
        .build()?;
    let token = login(&http, &instance.base).await?;
    let samples = Arc::new(Mutex::new(Samples::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let not_ready = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for r in 0..READERS {
        let (http, token, base, samples, stop) = (
            http.clone(),
            token.clone(),
            instance.base.clone(),
            samples.clone(),
            stop.clone(),
        );
        let ids = ids.to_vec();
        tasks.push(tokio::spawn(async move {
            let mut k = r;
            while !stop.load(Ordering::Relaxed) {
                k = (k + 7) % ids.len();
                let started = Instant::now();
                let ok = http
                    .get(format!("{base}/tasks/{}", ids[k]))
                    .bearer_auth(&token)
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == 200);
                let took = started.elapsed();
                let mut s = samples.lock().await;
                s.reads.push(took);
                if !ok {
                    s.read_errors += 1;
                }
            }
        }));
    }
    for w in 0..WRITERS {
        let (http, token, base, samples, stop, written) = (
            http.clone(),
            token.clone(),
            instance.base.clone(),
            samples.clone(),
            stop.clone(),
            written.clone(),
        );
        // Each writer owns a task at the end of the list (readers read them too).
        let id = ids[ids.len() - 1 - w].clone();
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let value = (written[w].load(Ordering::SeqCst) + 1) % 101;
                let started = Instant::now();
                // Read the ETag, write with it; a 412 (our own earlier write not yet in
                // the cache we read) reads again, as a client should.
                let mut ok = false;
                for _ in 0..5 {
                    let Ok(read) = http
                        .get(format!("{base}/tasks/{id}"))
                        .bearer_auth(&token)
                        .send()
                        .await
                    else {
                        break;
                    };
                    let etag = read
                        .headers()
                        .get("etag")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned();
                    let answer = http
                        .patch(format!("{base}/tasks/{id}"))
                        .bearer_auth(&token)
                        .header("if-match", etag)
                        .json(&json!({"percentComplete": value}))
                        .send()
                        .await;
                    match answer.map(|a| a.status().as_u16()) {
                        Ok(200) => {
                            written[w].store(value, Ordering::SeqCst);
                            ok = true;
                            break;
                        }
                        Ok(412) => {}
                        _ => break,
                    }
                }
                let took = started.elapsed();
                let mut s = samples.lock().await;
                s.writes.push(took);
                if !ok {
                    s.write_errors += 1;
                }
            }
        }));
    }
    {
        let (http, base, stop, not_ready) = (
            http.clone(),
            instance.base.clone(),
            stop.clone(),
            not_ready.clone(),
        );
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let ready = http
                    .get(format!("{base}/health/ready"))
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == 200);
                if !ready {
                    not_ready.fetch_add(1, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }));
    }
    let started = Instant::now();
    during().await;
    let rest = length.saturating_sub(started.elapsed());
    tokio::time::sleep(rest).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let mut s = samples.lock().await;
    s.reads.sort_unstable();
    s.writes.sort_unstable();
    #[allow(clippy::cast_precision_loss)]
    let (reads, writes) = (
        s.reads.len() as f64 / elapsed,
        s.writes.len() as f64 / elapsed,
    );
    println!(
        "| {name} | {reads:.0} | {:.2} / {:.2} / {:.2} | {writes:.0} | {:.1} / {:.1} / {:.1} | {} / {} | {} |",
        percentile(&s.reads, 0.50),
        percentile(&s.reads, 0.95),
        percentile(&s.reads, 0.99),
        percentile(&s.writes, 0.50),
        percentile(&s.writes, 0.95),
        percentile(&s.writes, 0.99),
        s.read_errors,
        s.write_errors,
        not_ready.load(Ordering::Relaxed),
    );
    Ok(s.read_errors == 0 && s.write_errors == 0 && not_ready.load(Ordering::Relaxed) == 0)
}

/// The three phases; `Ok(true)` when every check held.
pub(crate) async fn run(
    shared: &Shared,
    instance: &Instance,
    redis: &mut keel_testkit::RedisServer,
    length: Duration,
) -> Result<bool, Error> {
    let emulator = shared
        .emulator
        .clone()
        .ok_or("--load runs on the emulator")?;
    let plan = instance.app.graph.plans[0].0.clone();
    let ids: Vec<String> = instance
        .app
        .graph
        .plan_tasks(&plan)
        .await
        .map_err(|e| e.0)?
        .iter()
        .map(|t| t.id.clone())
        .collect();
    let written = Arc::new((0..WRITERS).map(|_| AtomicU64::new(0)).collect::<Vec<_>>());
    println!(
        "load: {READERS} readers (GET /tasks/{{id}}, {} tasks) and {WRITERS} writers (GET then PATCH with the ETag), {}s a phase",
        ids.len(),
        length.as_secs()
    );
    println!(
        "| phase | reads/s | read p50 / p95 / p99 (ms) | writes/s | write p50 / p95 / p99 (ms) | errors (reads / writes) | not ready |"
    );
    println!("|---|---|---|---|---|---|---|");
    let mut all = phase("clean", instance, &ids, length, &written, || async {}).await?;
    let faults = emulator.faults();
    all &= phase(
        "Graph faults (10% 429, 5% 503)",
        instance,
        &ids,
        length,
        &written,
        || async move {
            faults.add(FaultRule::any().throttle("0.05").ratio(1, 10));
            faults.add(
                FaultRule::any()
                    .status(reqwest::StatusCode::SERVICE_UNAVAILABLE)
                    .ratio(1, 20),
            );
        },
    )
    .await?;
    faults.clear();
    let third = length / 3;
    all &= phase(
        "Redis killed and restarted",
        instance,
        &ids,
        length,
        &written,
        move || async move {
            tokio::time::sleep(third).await;
            redis.stop();
            tokio::time::sleep(third).await;
            if let Err(e) = redis.restart() {
                eprintln!("load: redis-server did not restart: {e}");
            }
        },
    )
    .await?;
    // Nothing lost: each writer's last acknowledged value is Graph's.
    tokio::time::sleep(Duration::from_secs(1)).await;
    for (w, value) in written.iter().enumerate() {
        let id = &ids[ids.len() - 1 - w];
        let task = instance
            .app
            .graph
            .client
            .task(crate::graph::TENANT, id)
            .await?;
        let kept = u64::from(task.percent_complete.unwrap_or(0));
        let acknowledged = value.load(Ordering::SeqCst);
        println!("writer {w}: last acknowledged {acknowledged}%, Graph has {kept}%");
        all &= kept == acknowledged;
    }
    Ok(all)
}
