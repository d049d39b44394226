//! `$batch`, auto-batching and the concurrency budgets against the emulator.

use std::time::Duration;

use futures_util::TryStreamExt as _;
use http::StatusCode;
use keel_graph_client::emulator::{Emulator, FaultRule};
use keel_graph_client::model::User;
use keel_graph_client::{
    AutoBatch, Batch, BatchProblem, Concurrency, GraphClient, GraphError, GraphRequest, StepId,
};

use crate::client::{built, client, provider};

async fn user_ids(client: &GraphClient, tenant: &str) -> Vec<String> {
    client
        .users(tenant)
        .map_ok(|u| u.id)
        .try_collect()
        .await
        .unwrap()
}

#[tokio::test]
async fn steps_are_answered_by_id_with_dependencies_and_424() {
    let graph = Emulator::start_default().await.unwrap();
    let client = client(&graph);
    let ids = user_ids(&client, "contoso").await;
    let mut batch = Batch::new();
    let first = batch.add(GraphRequest::get(&format!("/users/{}", ids[0])));
    let after = batch.add_after(GraphRequest::get(&format!("/users/{}", ids[1])), &[&first]);
    let missing = batch.add(GraphRequest::get("/users/no-such-user"));
    let doomed = batch.add_after(
        GraphRequest::get(&format!("/users/{}", ids[2])),
        &[&missing],
    );
    let mine = batch
        .add_with_id(
            "photo",
            GraphRequest::get(&format!("/users/{}/photo/$value", ids[3])),
            &[],
        )
        .unwrap();
    let answers = client.batch("contoso", batch).await;
    assert_eq!(answers.len(), 5);
    assert_eq!(answers.json::<User>(&first).unwrap().id, ids[0]);
    assert_eq!(answers.json::<User>(&after).unwrap().id, ids[1]);
    // `json` gives the step's own error, Graph's code kept.
    let own = answers.json::<User>(&missing).unwrap_err();
    assert!(
        own.api().unwrap().has_code("Request_ResourceNotFound"),
        "{own:?}"
    );
    let missing = answers.get(&missing).unwrap().as_ref().unwrap_err();
    assert_eq!(missing.status(), Some(StatusCode::NOT_FOUND));
    assert!(missing.api().unwrap().has_code("Request_ResourceNotFound"));
    // Graph's own 424 for the step whose dependency failed in the same request.
    let doomed = answers.get(&doomed).unwrap().as_ref().unwrap_err();
    assert_eq!(doomed.status(), Some(StatusCode::FAILED_DEPENDENCY));
    // A body that is not JSON travels base64-encoded and comes back as the bytes.
    let photo = answers.get(&mine).unwrap().as_ref().unwrap();
    let direct = client
        .send(
            "contoso",
            &GraphRequest::get(&format!("/users/{}/photo/$value", ids[3])),
        )
        .await
        .unwrap();
    assert_eq!(photo.body, direct.body);
    assert!(photo.body.starts_with(&[0xFF, 0xD8]));
    assert_eq!(graph.batch_requests(), 1);
}

#[tokio::test]
async fn forty_five_steps_with_two_chains_and_thirty_percent_throttled_all_end_with_their_ids() {
    let graph = Emulator::start_default().await.unwrap();
    let client = built(&graph, |b| b.retries(12, Duration::from_secs(30)));
    let ids = user_ids(&client, "contoso").await;
    // 30% of item requests to /users/{id} come back 429 inside a batch that answers 200.
    graph.faults().add(
        FaultRule::path("/v1.0/users/")
            .throttle("0.02")
            .ratio(3, 10),
    );
    let mut batch = Batch::new();
    let mut expected: Vec<(StepId, String)> = Vec::new();
    // Chain A: 8 steps, each after the one before; chain B: 25 steps (longer than a
    // request holds); 12 independent steps.
    for (length, offset) in [(8, 0), (25, 8)] {
        let mut previous: Option<StepId> = None;
        for k in 0..length {
            let id = ids[offset + k].clone();
            let request = GraphRequest::get(&format!("/users/{id}"));
            let step = match &previous {
                Some(p) => batch.add_after(request, &[p]),
                None => batch.add(request),
            };
            previous = Some(step.clone());
            expected.push((step, id));
        }
    }
    for id in ids[33..45].iter().cloned() {
        expected.push((batch.add(GraphRequest::get(&format!("/users/{id}"))), id));
    }
    assert_eq!(batch.len(), 45);
    let answers = client.batch("contoso", batch).await;
    for (step, id) in &expected {
        let user: User = answers
            .json(step)
            .unwrap_or_else(|e| panic!("step {step}: {e:?}"));
        assert_eq!(&user.id, id, "step {step} got another step's answer");
    }
    // Throttled steps were sent again: more item requests than steps, several batches.
    assert!(
        graph.batch_requests() >= 4,
        "{} batches",
        graph.batch_requests()
    );
}

#[tokio::test]
async fn throttled_steps_give_up_with_their_last_answer_when_attempts_run_out() {
    let graph = Emulator::start_default().await.unwrap();
    let client = built(&graph, |b| b.retries(3, Duration::from_secs(5)));
    let ids = user_ids(&client, "contoso").await;
    graph
        .faults()
        .add(FaultRule::path(&format!("/v1.0/users/{}", ids[0])).throttle("garbage"));
    let mut batch = Batch::new();
    let stuck = batch.add(GraphRequest::get(&format!("/users/{}", ids[0])));
    let fine = batch.add(GraphRequest::get(&format!("/users/{}", ids[1])));
    let after = batch.add_after(GraphRequest::get(&format!("/users/{}", ids[2])), &[&stuck]);
    let answers = client.batch("contoso", batch).await;
    let stuck = answers.get(&stuck).unwrap().as_ref().unwrap_err();
    assert_eq!(stuck.status(), Some(StatusCode::TOO_MANY_REQUESTS));
    assert!(answers.get(&fine).unwrap().is_ok());
    assert!(answers.get(&after).unwrap().is_err());
    // Three sends of the stuck step (a garbage Retry-After falls back to backoff).
    assert_eq!(graph.batch_requests(), 3);
}

#[tokio::test]
async fn unknown_duplicate_or_missing_ids_in_an_answer_are_typed_errors() {
    let graph = Emulator::start_default().await.unwrap();
    let client = client(&graph);
    for (body, problem) in [
        (
            r#"{"responses":[{"id":"1","status":200,"body":{}},{"id":"zzz","status":200}]}"#,
            BatchProblem::UnknownId,
        ),
        (
            r#"{"responses":[{"id":"1","status":200},{"id":"1","status":200}]}"#,
            BatchProblem::DuplicateId,
        ),
        (
            r#"{"responses":[{"id":"1","status":200,"body":{"id":"x"}}]}"#,
            BatchProblem::MissingResponse,
        ),
        (r#"{"value":[]}"#, BatchProblem::NotJson),
        (
            r#"{"responses":[{"id":"1","status":"two hundred"},{"id":"2","status":200}]}"#,
            BatchProblem::BadItem,
        ),
    ] {
        graph.faults().clear();
        graph
            .faults()
            .add(FaultRule::path("/v1.0/$batch").body(StatusCode::OK, body));
        let mut batch = Batch::new();
        let one = batch.add(GraphRequest::get("/users"));
        let two = batch.add(GraphRequest::get("/groups"));
        let answers = client.batch("contoso", batch).await;
        let failed = [&one, &two]
            .into_iter()
            .filter_map(|id| answers.get(id).unwrap().as_ref().err())
            .collect::<Vec<_>>();
        assert!(
            failed.iter().any(
                |e| matches!(e, GraphError::BatchResponse { problem: p, .. } if *p == problem)
            ),
            "{body}: {failed:?}"
        );
    }
}

#[tokio::test]
async fn auto_batching_sends_concurrent_calls_together_and_answers_each_caller() {
    let graph = Emulator::start_default().await.unwrap();
    let client = built(&graph, |b| {
        b.auto_batch(AutoBatch::window(Duration::from_millis(5)))
    });
    let plain = self::client(&graph);
    let ids = user_ids(&plain, "contoso").await;
    let before = graph.batch_requests();
    let calls = (0..60).map(|i| {
        let client = client.clone();
        let path = if i == 7 {
            "/users/no-such-user".to_owned()
        } else {
            format!("/users/{}", ids[i])
        };
        async move {
            client
                .get::<User>("contoso", &GraphRequest::get(&path))
                .await
        }
    });
    let answers = futures_util::future::join_all(calls).await;
    for (i, answer) in answers.iter().enumerate() {
        if i == 7 {
            let e = answer.as_ref().unwrap_err();
            assert_eq!(e.status(), Some(StatusCode::NOT_FOUND));
        } else {
            assert_eq!(answer.as_ref().unwrap().id, ids[i]);
        }
    }
    let batches = graph.batch_requests() - before;
    assert!((3..=6).contains(&batches), "{batches} batches for 60 calls");
    // A call whose body is too large goes out alone.
    let big = "x".repeat(70 << 10);
    let before = graph.batch_requests();
    let _ = client
        .send(
            "contoso",
            &GraphRequest::post("/planner/tasks").json(&serde_json::json!({"title": big})),
        )
        .await;
    assert_eq!(graph.batch_requests(), before);
}

#[tokio::test]
async fn a_mailbox_never_has_more_than_four_requests_in_flight() {
    // Direct calls, auto-batched calls and an explicit batch of one client, all at once,
    // all to one mailbox that answers slowly.
    let graph = Emulator::start_default().await.unwrap();
    let tenant = graph.tenants()[0].id().to_owned();
    let client = built(&graph, |b| {
        b.concurrency(Concurrency::fixed(64))
            .auto_batch(AutoBatch::window(Duration::from_millis(2)))
    });
    let ids = user_ids(&client, "contoso").await;
    graph.faults().add(
        FaultRule::path(&format!("/v1.0/users/{}/messages", ids[0]))
            .latency(Duration::from_millis(30)),
    );
    let path = format!("/users/{}/messages", ids[0]);
    let mut batch = Batch::new();
    for _ in 0..10 {
        batch.add(GraphRequest::get(&path));
    }
    let request = GraphRequest::get(&path);
    let calls = (0..20).map(|_| client.send("contoso", &request));
    let (calls, _) = tokio::join!(
        futures_util::future::join_all(calls),
        client.batch("contoso", batch)
    );
    assert!(calls.iter().all(Result::is_ok));
    let seen = graph.mailbox(&tenant, &ids[0]);
    assert_eq!((seen.requests, seen.throttled), (30, 0));
    assert!(seen.peak_in_flight <= 4, "{seen:?}");
    assert_eq!(
        seen.peak_in_flight, 4,
        "the budget should be used, not only kept"
    );
}

#[tokio::test]
async fn throttling_halves_a_tenants_concurrency_and_success_grows_it_back() {
    let graph = Emulator::start_default().await.unwrap();
    let client = built(&graph, |b| {
        b.concurrency(Concurrency::adaptive(16, 32))
            .retries(6, Duration::from_secs(10))
    });
    assert_eq!(client.concurrency_limit("contoso"), 16);
    graph
        .faults()
        .add(FaultRule::path("/v1.0/users").throttle("0.01").times(3));
    let _: Vec<User> = client.users("contoso").try_collect().await.unwrap();
    let after = client.concurrency_limit("contoso");
    assert!((2..16).contains(&after), "{after}");
    for _ in 0..200 {
        client
            .send("contoso", &GraphRequest::get("/users").top(1))
            .await
            .unwrap();
    }
    assert!(client.concurrency_limit("contoso") > after);
}

#[tokio::test]
async fn a_batch_waits_no_longer_than_the_total_delay_even_when_its_requests_are_throttled() {
    let graph = Emulator::start_default().await.unwrap();
    let client = built(&graph, |b| b.retries(4, Duration::from_secs(1)));
    let ids = user_ids(&client, "contoso").await;
    // Every other $batch request is throttled as a whole, and one step always is.
    graph
        .faults()
        .add(FaultRule::path("/v1.0/$batch").throttle("0.9").ratio(1, 2));
    graph
        .faults()
        .add(FaultRule::path(&format!("/v1.0/users/{}", ids[0])).throttle("0.9"));
    let mut batch = Batch::new();
    let stuck = batch.add(GraphRequest::get(&format!("/users/{}", ids[0])));
    let fine = batch.add(GraphRequest::get(&format!("/users/{}", ids[1])));
    let started = std::time::Instant::now();
    let answers = client.batch("contoso", batch).await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(1_300),
        "the batch took {took:?}"
    );
    assert_eq!(
        answers.get(&stuck).unwrap().as_ref().unwrap_err().status(),
        Some(StatusCode::TOO_MANY_REQUESTS)
    );
    assert!(answers.get(&fine).unwrap().is_ok());
}

#[tokio::test]
async fn requests_that_fail_authentication_do_not_use_a_mailboxs_limits() {
    use base64::Engine as _;
    let graph = Emulator::start_default().await.unwrap();
    let tenant = graph.tenants()[0].id().to_owned();
    let client = built(&graph, |b| b);
    let ids = user_ids(&client, "contoso").await;
    // A forged token naming the tenant: refused, and not counted against the mailbox.
    let payload =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!(r#"{{"tid":"{tenant}"}}"#));
    let forged = format!("eyJhbGciOiJub25lIn0.{payload}.x");
    let url = format!("{}/v1.0/users/{}/messages", graph.base_url(), ids[0]);
    for _ in 0..20 {
        let status = reqwest::Client::new()
            .get(&url)
            .bearer_auth(&forged)
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status.as_u16(), 401);
    }
    assert_eq!(graph.mailbox(&tenant, &ids[0]).requests, 0);
    client
        .send(
            "contoso",
            &GraphRequest::get(&format!("/users/{}/messages", ids[0])),
        )
        .await
        .unwrap();
    assert_eq!(graph.mailbox(&tenant, &ids[0]).requests, 1);
}

#[tokio::test]
async fn two_tenants_given_one_name_are_refused() {
    let graph = Emulator::start_default().await.unwrap();
    let [a, b] = [graph.tenants()[0].clone(), graph.tenants()[1].clone()];
    let built = GraphClient::builder(graph.cloud())
        .tenant("Contoso", provider(&graph, a.domain()))
        .tenant("contoso", provider(&graph, b.domain()))
        .build();
    assert!(matches!(
        built,
        Err(keel_graph_client::BuildError::DuplicateTenant(_))
    ));
}

/// The example answer of Microsoft's JSON batching page (its shape: answers out of order
/// in general, statuses, headers, bodies; an empty top-level error code from Planner),
/// read as the client reads any batch answer.
const DOCUMENTED_BATCH_ANSWER: &str = r##"{
  "responses": [
    {"id": "1", "status": 200,
     "headers": {"Cache-Control": "no-cache", "x-ms-resource-unit": "1", "OData-Version": "4.0",
                 "Content-Type": "application/json;odata.metadata=minimal;odata.streaming=true;IEEE754Compatible=false;charset=utf-8"},
     "body": {"@odata.context": "https://graph.microsoft.com/beta/$metadata#directoryObjects",
              "@odata.nextLink": "https://graph.microsoft.com/beta/me/memberOf?$top=1&$skiptoken=RFNwdAoAAQAAAAAAAAAAFAAAAI45VMy0CO9Ei1L3Lr1q95UB",
              "value": [{"@odata.type": "#microsoft.graph.directoryRole", "id": "21004afc-7bb2-4fe6-a1e1-074ebd3e52c1",
                         "deletedDateTime": null, "description": "Can manage all aspects of users and groups.",
                         "displayName": "User Administrator", "roleTemplateId": "fe930be7-5e62-47db-91af-98c3a49a38b1"}]}},
    {"id": "2", "status": 403,
     "headers": {"Cache-Control": "no-cache", "X-Tasks-CorrelationId": "18a8e521-78a4-4129-9b6b-d678116464e7", "Content-Type": "application/json"},
     "body": {"error": {"code": "", "message": "You do not have the required permissions to access this item.",
              "innerError": {"date": "2025-02-13T10:17:05", "request-id": "93b6f17e-c05d-4f45-ad2a-6665c708d8a0",
                             "client-request-id": "e70c5c1b-8b47-68c0-3171-3d22f5e0bd54"}}}},
    {"id": "3", "status": 403,
     "headers": {"Cache-Control": "no-cache", "x-ms-resource-unit": "1", "Content-Type": "application/json"},
     "body": {"error": {"code": "Authorization_RequestDenied", "message": "Insufficient privileges to complete the operation.",
              "innerError": {"date": "2025-02-13T10:17:06", "request-id": "93b6f17e-c05d-4f45-ad2a-6665c708d8a0",
                             "client-request-id": "e70c5c1b-8b47-68c0-3171-3d22f5e0bd54"}}}},
    {"id": "4", "status": 405,
     "headers": {"Cache-Control": "no-cache", "x-ms-resource-unit": "1", "Content-Type": "application/json"},
     "body": {"error": {"code": "Request_BadRequest", "message": "Specified HTTP method is not allowed for the request target.",
              "innerError": {"date": "2025-02-13T10:21:18", "request-id": "3a3b1bf7-3596-4493-8264-de81e028071f",
                             "client-request-id": "e5f9a304-2796-b7e8-ccce-dd989953ebc4"}}}},
    {"id": "5", "status": 200,
     "headers": {"Cache-Control": "no-cache", "OData-Version": "4.0",
                 "Content-Type": "application/json;odata.metadata=minimal;odata.streaming=true;IEEE754Compatible=false;charset=utf-8"},
     "body": {"@odata.context": "https://graph.microsoft.com/beta/$metadata#users(id,displayName,userPrincipalName)",
              "@odata.count": 36,
              "value": [{"id": "10a1d484-cd1a-4162-a5a4-832370bac356", "displayName": "Lynne Robbins", "userPrincipalName": "LynneR@contoso.com"}]}}
  ]
}"##;

#[tokio::test]
async fn the_documented_batch_answer_reads_into_typed_answers_and_errors() {
    use keel_graph_client::model::{DirectoryObject, Page};
    let graph = Emulator::start_default().await.unwrap();
    let client = client(&graph);
    graph.faults().add(
        FaultRule::path("/v1.0/$batch")
            .times(1)
            .body(StatusCode::OK, DOCUMENTED_BATCH_ANSWER),
    );
    let mut batch = Batch::new();
    let member_of = batch.add(GraphRequest::get("/me/memberOf"));
    let tasks = batch.add(GraphRequest::get("/me/planner/tasks"));
    let delete = batch.add(GraphRequest::delete(
        "/groups/0e226165-c685-41ce-8bfc-df8360ab325d",
    ));
    let post = batch.add(
        GraphRequest::post(
            "/users/161ab652-cdbc-490d-82a4-0ada1f0db247/getPasswordSingleSignOnCredentials",
        )
        .json(&serde_json::json!({})),
    );
    let users = batch.add(
        GraphRequest::get("/users")
            .select(["id", "displayName", "userPrincipalName"])
            .filter("city eq null")
            .count(),
    );
    let answers = client.batch("contoso", batch).await;
    let roles: Page<DirectoryObject> = answers.json(&member_of).unwrap();
    assert_eq!(
        roles.value[0].odata_type.as_deref(),
        Some("#microsoft.graph.directoryRole")
    );
    assert!(roles.next_link.is_some());
    let found: Page<User> = answers.json(&users).unwrap();
    assert_eq!(found.count, Some(36));
    assert_eq!(
        found.value[0].display_name.as_deref(),
        Some("Lynne Robbins")
    );
    // Planner's 403 with an empty top-level code; the directory's with its code; a 405.
    let planner = answers.json::<serde_json::Value>(&tasks).unwrap_err();
    let api = planner.api().unwrap();
    assert_eq!((api.status().as_u16(), api.code()), (403, ""));
    assert_eq!(
        api.request_id(),
        Some("93b6f17e-c05d-4f45-ad2a-6665c708d8a0")
    );
    let denied = answers.json::<serde_json::Value>(&delete).unwrap_err();
    assert!(
        denied
            .api()
            .unwrap()
            .has_code("Authorization_RequestDenied")
    );
    let method = answers.json::<serde_json::Value>(&post).unwrap_err();
    assert_eq!(method.status(), Some(StatusCode::METHOD_NOT_ALLOWED));
    // Permanent errors: none of them was sent again (a second $batch would have reached
    // the emulator's own route).
    assert_eq!(graph.batch_requests(), 0);
}

#[tokio::test]
async fn batch_ids_are_compared_without_case_as_graph_does() {
    let graph = Emulator::start_default().await.unwrap();
    let client = client(&graph);
    let ids = user_ids(&client, "contoso").await;
    let mut batch = Batch::new();
    let a = batch
        .add_with_id("Ada", GraphRequest::get(&format!("/users/{}", ids[0])), &[])
        .unwrap();
    assert!(matches!(
        batch.add_with_id("ADA", GraphRequest::get("/users"), &[]),
        Err(keel_graph_client::BatchError::DuplicateId(_))
    ));
    let b = batch
        .add_with_id(
            "bob",
            GraphRequest::get(&format!("/users/{}", ids[1])),
            &["aDa"],
        )
        .unwrap();
    // Graph may answer with the id in another case.
    graph.faults().add(FaultRule::path("/v1.0/$batch").times(1).body(
        StatusCode::OK,
        &format!(
            r#"{{"responses":[{{"id":"ADA","status":200,"headers":{{"Content-Type":"application/json"}},"body":{{"id":"{}"}}}},{{"id":"BOB","status":200,"body":{{"id":"{}"}}}}]}}"#,
            ids[0], ids[1]
        ),
    ));
    let answers = client.batch("contoso", batch).await;
    assert_eq!(answers.json::<User>(&a).unwrap().id, ids[0]);
    assert_eq!(answers.json::<User>(&b).unwrap().id, ids[1]);
}

mod hostile {
    use super::*;
    use proptest::prelude::*;

    fn item() -> impl Strategy<Value = serde_json::Value> {
        (
            prop_oneof![Just("1".to_owned()), Just("2".to_owned()), Just("3".to_owned()), "[a-zA-Z0-9]{0,4}"],
            prop_oneof![any::<i64>().prop_map(serde_json::Value::from), (100u16..600).prop_map(serde_json::Value::from), Just(serde_json::json!("200"))],
            proptest::collection::btree_map(
                prop_oneof![Just("Retry-After".to_owned()), Just("Content-Type".to_owned()), "[a-zA-Z-]{1,12}", ".{0,6}"],
                prop_oneof![Just("-5".to_owned()), Just("1e309".to_owned()), Just("99999999999999999999".to_owned()), Just("image/png".to_owned()), ".{0,12}"],
                0..6,
            ),
            prop_oneof![
                Just(serde_json::Value::Null),
                ".{0,24}".prop_map(serde_json::Value::from),
                Just(serde_json::json!({"error": {"code": "TooManyRequests"}})),
                Just(serde_json::json!({"id": "x", "value": []})),
                any::<f64>().prop_map(serde_json::Value::from),
            ],
        )
            .prop_map(|(id, status, headers, body)| {
                serde_json::json!({"id": id, "status": status, "headers": headers, "body": body})
            })
    }

    fn answer() -> impl Strategy<Value = String> {
        prop_oneof![
            proptest::collection::vec(item(), 0..6)
                .prop_map(|items| serde_json::json!({"responses": items}).to_string()),
            ".{0,64}",
            Just(r#"{"responses": {"id": "1"}}"#.to_owned()),
        ]
    }

    #[test]
    fn hostile_batch_answers_never_panic_and_every_step_gets_an_answer() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (graph, client) = runtime.block_on(async {
            let graph = Emulator::start_default().await.unwrap();
            let client = built(&graph, |b| {
                b.retries(2, Duration::from_millis(200)).backoff(
                    keel_resilience::retry::Backoff::Constant(Duration::from_millis(1)),
                )
            });
            (graph, client)
        });
        proptest!(ProptestConfig::with_cases(64), |(body in answer())| {
            graph.faults().clear();
            graph.faults().add(FaultRule::path("/v1.0/$batch").body(StatusCode::OK, &body));
            let answers = runtime.block_on(async {
                let mut batch = Batch::new();
                batch.add(GraphRequest::get("/users"));
                batch.add(GraphRequest::get("/groups"));
                batch.add(GraphRequest::get("/users").top(1));
                tokio::time::timeout(Duration::from_secs(10), client.batch("contoso", batch)).await
            });
            let answers = answers.expect("the batch ended");
            prop_assert_eq!(answers.len(), 3);
        });
    }
}
