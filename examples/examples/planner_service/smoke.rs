//! The scripted scenario of `--smoke`: every feature through the HTTP API, checked.

use std::time::{Duration, Instant};

use futures_util::TryStreamExt as _;
use keel_graph_client::model::PlannerTask;
use keel_observability::PrometheusMetrics;
use serde_json::{Value, json};

use crate::config::Config;
use crate::graph::TENANT;
use crate::{EMULATED, Error, Instance, Shared};

fn check(ok: bool, what: &str) -> Result<(), Error> {
    if ok {
        println!("ok   {what}");
        Ok(())
    } else {
        Err(format!("FAIL {what}").into())
    }
}

/// Polls `probe` (10 s at most) until it says yes.
async fn eventually<F, Fut>(what: &str, mut probe: F) -> Result<(), Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool, Error>>,
{
    let started = Instant::now();
    loop {
        if probe().await? {
            return check(true, what);
        }
        if started.elapsed() > Duration::from_secs(10) {
            return check(false, &format!("{what} (waited 10 s)"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The `ETag` of an answer.
fn etag_of(headers: &reqwest::header::HeaderMap) -> Result<String, Error> {
    Ok(headers
        .get("etag")
        .and_then(|v| v.to_str().ok())
        .ok_or("no ETag")?
        .to_owned())
}

struct Api {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Api {
    async fn get(&self, path: &str) -> Result<(u16, reqwest::header::HeaderMap, Value), Error> {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .header("x-correlation-id", "smoke-get")
            .send()
            .await?;
        let (status, headers) = (response.status().as_u16(), response.headers().clone());
        Ok((
            status,
            headers,
            response.json().await.unwrap_or(Value::Null),
        ))
    }

    async fn patch(&self, id: &str, etag: &str, body: Value) -> Result<(u16, Value), Error> {
        let response = self
            .http
            .patch(format!("{}/tasks/{id}", self.base))
            .bearer_auth(&self.token)
            .header("if-match", etag)
            .json(&body)
            .send()
            .await?;
        let status = response.status().as_u16();
        Ok((status, response.json().await.unwrap_or(Value::Null)))
    }

    async fn post(&self, path: &str, body: Value) -> Result<(u16, Value), Error> {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await?;
        let status = response.status().as_u16();
        Ok((status, response.json().await.unwrap_or(Value::Null)))
    }
}

pub(crate) async fn run(
    config: &Config,
    shared: &Shared,
    metrics: &PrometheusMetrics,
    a: &Instance,
) -> Result<(), Error> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let emulator = shared
        .emulator
        .clone()
        .ok_or("--smoke runs on the emulator")?;

    // 1. A session.
    let login: Value = http
        .post(format!("{}/login", a.base))
        .json(&json!({"username": "ada", "password": "lovelace"}))
        .send()
        .await?
        .json()
        .await?;
    let access = login["access_token"]
        .as_str()
        .ok_or("no access token")?
        .to_owned();
    let refresh = login["refresh_token"]
        .as_str()
        .ok_or("no refresh token")?
        .to_owned();
    check(true, "login gives an access and a refresh token")?;
    let api = Api {
        http: http.clone(),
        base: a.base.clone(),
        token: access,
    };
    let anonymous = http.get(format!("{}/plans", a.base)).send().await?;
    check(anonymous.status() == 401, "no token: 401")?;

    // 2. Plans and their tasks, from the delta-kept copy.
    let (status, _, plans) = api.get("/plans").await?;
    let plans = plans["value"].as_array().cloned().unwrap_or_default();
    check(status == 200 && plans.len() == 8, "8 plans")?;
    let plan = plans[0]["id"].as_str().ok_or("a plan id")?.to_owned();
    let (status, headers, tasks) = api.get(&format!("/plans/{plan}/tasks")).await?;
    let tasks = tasks["value"].as_array().cloned().unwrap_or_default();
    check(
        status == 200 && tasks.len() == 44,
        "44 tasks in the first plan",
    )?;
    check(
        headers
            .get("x-correlation-id")
            .is_some_and(|v| v == "smoke-get"),
        "the correlation id is echoed",
    )?;

    // 3. A read with its ETag, an update with it, then the stale one refused.
    let id = tasks[0]["id"].as_str().ok_or("a task id")?.to_owned();
    let (status, headers, _) = api.get(&format!("/tasks/{id}")).await?;
    let etag = etag_of(&headers)?;
    check(status == 200, "GET /tasks/{id} with its ETag")?;
    let (status, updated) = api
        .patch(
            &id,
            &etag,
            json!({"title": "Renamed by the smoke test", "percentComplete": 50}),
        )
        .await?;
    check(
        status == 200
            && updated["title"] == "Renamed by the smoke test"
            && updated["etag"] != etag.as_str(),
        "PATCH with the ETag updates the task in Graph",
    )?;
    let (status, conflict) = api
        .patch(&id, &etag, json!({"title": "Lost update"}))
        .await?;
    check(
        status == 412 && conflict["current"]["title"] == "Renamed by the smoke test",
        "a stale ETag is 412 with the current version",
    )?;

    // 4. A notification: a user renamed in Graph reaches the service's copy through
    //    its webhook (users are not polled but every ten minutes).
    let assigned = tasks
        .iter()
        .find_map(|t| {
            t["assignees"][0]["id"]
                .as_str()
                .map(|u| (t["id"].clone(), u.to_owned()))
        })
        .ok_or("an assigned task")?;
    check(
        emulator.update_user(
            EMULATED,
            &assigned.1,
            json!({"displayName": "Grace Hopper"}),
        ),
        "Graph renames an assignee",
    )?;
    let task_path = format!("/tasks/{}", assigned.0.as_str().unwrap_or_default());
    eventually("the notification brings the new name", || async {
        let (_, _, task) = api.get(&task_path).await?;
        Ok(task["assignees"][0]["displayName"] == "Grace Hopper")
    })
    .await?;

    // 5. Another app edits a task in Graph: the plan's delta round brings it in.
    // A client of its own, as another app editing the tenant directly through Graph.
    let other = crate::graph_client(config, shared)?;
    let current: Vec<PlannerTask> = other.tasks(TENANT, &plan).try_collect().await?;
    let target = current.iter().find(|t| t.id != id).ok_or("another task")?;
    other
        .update_task(TENANT, target, &json!({"title": "Edited elsewhere"}))
        .await?;
    let target_path = format!("/tasks/{}", target.id);
    eventually(
        "a change made elsewhere reaches the copy by delta",
        || async {
            let (_, _, task) = api.get(&target_path).await?;
            Ok(task["title"] == "Edited elsewhere")
        },
    )
    .await?;

    // 6. Bad input is the caller's 400, not a write sent to Graph.
    let (_, headers, _) = api.get(&format!("/tasks/{id}")).await?;
    let etag = etag_of(&headers)?;
    for bad in [
        json!({"title": "x".repeat(300)}),
        json!({"percentComplete": 101}),
        json!({"percentComplete": "abc"}),
        json!({"dueDateTime": "2026-12-01"}),
        json!({}),
    ] {
        let (status, _) = api.patch(&id, &etag, bad.clone()).await?;
        check(status == 400, &format!("PATCH {bad}: 400"))?;
    }
    let (status, _, _) = api.get("/tasks/a%2Fb").await?;
    check(status == 404, "an id that cannot be a task's: 404")?;

    // 7. A write Graph refuses for good (here a 403 it answers once) lands in the
    //    dead-letter queue; an admin lists it and replays it against the version it
    //    was written for, and it goes through.
    emulator.faults().add(
        keel_graph_client::emulator::FaultRule::path(&format!("/v1.0/planner/tasks/{id}"))
            .status(reqwest::StatusCode::FORBIDDEN)
            .times(1),
    );
    let (status, refused) = api
        .patch(&id, &etag, json!({"title": "Kept for an operator"}))
        .await?;
    check(
        status == 422 && refused["deadLetter"].is_string(),
        "a write Graph refuses: 422, kept as a dead letter",
    )?;
    let (status, _, _) = api.get("/admin/dead-letters").await?;
    check(status == 403, "ada is no admin: 403")?;
    let admin_login: Value = http
        .post(format!("{}/login", a.base))
        .json(&json!({"username": "grace", "password": "hopper"}))
        .send()
        .await?
        .json()
        .await?;
    let admin = Api {
        http: http.clone(),
        base: a.base.clone(),
        token: admin_login["access_token"]
            .as_str()
            .ok_or("no admin token")?
            .to_owned(),
    };
    let (status, _, letters) = admin.get("/admin/dead-letters").await?;
    let letters = letters["value"].as_array().cloned().unwrap_or_default();
    check(
        status == 200 && letters.len() == 1 && letters[0]["write"]["task"] == id.as_str(),
        "the admin route lists it",
    )?;
    let (status, report) = admin.post("/admin/dead-letters/replay", json!({})).await?;
    check(
        status == 200 && report["delivered"] == 1 && report["failed"] == 0,
        "a replay applies it (Graph accepts it now)",
    )?;
    let (_, _, task) = api.get(&format!("/tasks/{id}")).await?;
    check(
        task["title"] == "Kept for an operator",
        "the replayed write is in place",
    )?;
    let (_, _, letters) = admin.get("/admin/dead-letters").await?;
    check(
        letters["value"].as_array().is_some_and(Vec::is_empty),
        "and the queue is empty",
    )?;

    // 8. Refresh rotation: a new pair; the spent token used again revokes the session.
    let rotated: Value = http
        .post(format!("{}/refresh", a.base))
        .json(&json!({"refresh_token": refresh}))
        .send()
        .await?
        .json()
        .await?;
    let next = rotated["refresh_token"]
        .as_str()
        .ok_or("no new refresh token")?
        .to_owned();
    check(next != refresh, "refresh rotates the refresh token")?;
    tokio::time::sleep(Duration::from_millis(2_100)).await; // past the grace period
    let reused = http
        .post(format!("{}/refresh", a.base))
        .json(&json!({"refresh_token": refresh}))
        .send()
        .await?;
    check(reused.status() == 400, "the spent refresh token is refused")?;
    let after = http
        .post(format!("{}/refresh", a.base))
        .json(&json!({"refresh_token": next}))
        .send()
        .await?;
    check(after.status() == 400, "and its whole session with it")?;
    let jwks: Value = http
        .get(format!("{}/.well-known/jwks.json", a.base))
        .send()
        .await?
        .json()
        .await?;
    check(
        jwks["keys"][0]["kty"] == "OKP",
        "the JWKS publishes the Ed25519 key",
    )?;

    // 9. Health and metrics.
    for probe in ["live", "ready", "startup"] {
        let answer = http
            .get(format!("{}/health/{probe}", a.base))
            .send()
            .await?;
        check(answer.status() == 200, &format!("/health/{probe} is 200"))?;
    }
    let text = http
        .get(format!("{}/metrics", a.base))
        .send()
        .await?
        .text()
        .await?;
    for metric in [
        "http_server_requests_total",
        "graph_requests_total",
        "keel_cache_hits_total",
        "keel_token_client_requests_total",
        "graph_delta_feed_rounds_total",
        "resilience_dead_letters_added_total",
    ] {
        check(text.contains(metric), &format!("/metrics has {metric}"))?;
    }

    // 10. A second instance sharing Redis (and PostgreSQL): an update through one is
    //    seen through the other.
    if config.redis_url.is_some() {
        let mut second = config.clone();
        second.instance = "planner-2".into();
        second.addr = "127.0.0.1:0".parse()?;
        let b = crate::start(&second, shared, metrics, Duration::from_secs(1)).await?;
        let api_b = Api {
            http: http.clone(),
            base: b.base.clone(),
            token: api.token.clone(),
        };
        let (_, _, seen) = api_b.get(&format!("/tasks/{id}")).await?;
        check(
            seen["title"] == "Kept for an operator",
            "B reads what A wrote",
        )?;
        let (_, headers, _) = api.get(&format!("/tasks/{id}")).await?;
        let etag = etag_of(&headers)?;
        let (status, _) = api.patch(&id, &etag, json!({"title": "Through A"})).await?;
        check(status == 200, "A updates the task")?;
        let path = format!("/tasks/{id}");
        eventually("B sees A's update (cache backplane)", || async {
            let (_, _, task) = api_b.get(&path).await?;
            Ok(task["title"] == "Through A")
        })
        .await?;
        drop(b);
    }
    let _ = &a.manager;
    let _ = &a.subscription_id;
    Ok(())
}
