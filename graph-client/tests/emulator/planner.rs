//! Groups, members, teams, channels and Planner through the client's helpers, with
//! Planner's ETag rules.

use futures_util::TryStreamExt as _;
use keel_graph_client::emulator::Emulator;
use keel_graph_client::model::{PlannerTask, Team};
use keel_graph_client::{GraphError, GraphRequest, RequestError};
use serde_json::json;

use crate::client::client;

async fn first_plan(client: &keel_graph_client::GraphClient) -> (String, String) {
    let groups: Vec<_> = client.groups("contoso").try_collect().await.unwrap();
    let group = groups[0].id.clone();
    let plans: Vec<_> = client.plans("contoso", &group).try_collect().await.unwrap();
    (group, plans[0].id.clone())
}

#[tokio::test]
async fn groups_members_teams_and_channels_read_as_typed_models() {
    let graph = Emulator::start_default().await.unwrap();
    let client = client(&graph);
    let groups: Vec<_> = client.groups("contoso").try_collect().await.unwrap();
    assert_eq!(groups.len(), 6);
    let members: Vec<_> = client
        .group_members("contoso", &groups[0].id)
        .try_collect()
        .await
        .unwrap();
    assert_eq!(members.len(), 5);
    assert!(
        members
            .iter()
            .all(|m| m.is_user() && m.display_name.is_some())
    );
    // Group 02 is a team, with two channels; Group 01 is not a team.
    let team: Team = client
        .get(
            "contoso",
            &GraphRequest::get(&format!("/teams/{}", groups[1].id)),
        )
        .await
        .unwrap();
    assert_eq!(team.display_name.as_deref(), Some("Group 02"));
    let channels: Vec<_> = client
        .channels("contoso", &groups[1].id)
        .try_collect()
        .await
        .unwrap();
    let names: Vec<_> = channels
        .iter()
        .filter_map(|c| c.display_name.as_deref())
        .collect();
    assert_eq!(names, ["General", "Announcements"]);
    let not_a_team = client
        .get::<Team>(
            "contoso",
            &GraphRequest::get(&format!("/teams/{}", groups[0].id)),
        )
        .await
        .unwrap_err();
    assert_eq!(not_a_team.status().map(|s| s.as_u16()), Some(404));
    assert!(not_a_team.api().unwrap().has_code("NotFound"));
}

#[tokio::test]
async fn a_task_updated_with_its_etag_changes_and_a_stale_etag_is_a_conflict() {
    let graph = Emulator::start_default().await.unwrap();
    let client = client(&graph);
    let (_, plan) = first_plan(&client).await;
    let buckets: Vec<_> = client
        .buckets("contoso", &plan)
        .try_collect()
        .await
        .unwrap();
    assert_eq!(buckets.len(), 2);
    let tasks: Vec<PlannerTask> = client.tasks("contoso", &plan).try_collect().await.unwrap();
    assert_eq!(tasks.len(), 4);
    let task = tasks[0].clone();
    let first_etag = task.etag.clone().expect("Planner items carry their ETag");

    // 204 by default: nothing comes back, and the ETag moves on.
    client
        .update_task("contoso", &task, &json!({"percentComplete": 50}))
        .await
        .unwrap();
    let read = client.task("contoso", &task.id).await.unwrap();
    assert_eq!(read.percent_complete, Some(50));
    assert_ne!(read.etag.as_deref(), Some(first_etag.as_str()));

    // The stale ETag: 412, its own error, with Graph's empty top-level code kept.
    let stale = client
        .update_task("contoso", &task, &json!({"title": "lost update"}))
        .await
        .unwrap_err();
    let GraphError::PreconditionFailed(api) = &stale else {
        panic!("expected the conflict error, got {stale:?}");
    };
    assert_eq!(api.status().as_u16(), 412);
    assert_eq!(api.code(), "");
    assert_eq!(
        client.task("contoso", &task.id).await.unwrap().title,
        read.title
    );

    // return=representation: the task comes back with its new ETag, usable at once.
    let done = client
        .update_task_returning("contoso", &read, &json!({"percentComplete": 100}))
        .await
        .unwrap();
    assert_eq!(done.percent_complete, Some(100));
    assert!(done.completed_date_time.is_some());
    let again = client
        .update_task_returning("contoso", &done, &json!({"priority": 1}))
        .await
        .unwrap();
    assert_eq!(again.priority, Some(1));

    // Details have their own ETag, and the checklist merges.
    let details = client.task_details("contoso", &task.id).await.unwrap();
    let details = client
        .update_task_details(
            "contoso",
            &details,
            &json!({"description": "Ship it", "checklist": {"c1": {"@odata.type": "#microsoft.graph.plannerChecklistItem", "title": "Tests", "isChecked": false}}}),
        )
        .await
        .unwrap();
    assert_eq!(details.description.as_deref(), Some("Ship it"));
    assert!(details.checklist.contains_key("c1"));
}

#[tokio::test]
async fn planner_writes_without_if_match_are_refused_and_deletes_need_the_etag() {
    let graph = Emulator::start_default().await.unwrap();
    let client = client(&graph);
    let (_, plan) = first_plan(&client).await;
    let created = client
        .create_task("contoso", &plan, None, "Write the release notes")
        .await
        .unwrap();
    assert_eq!(created.title.as_deref(), Some("Write the release notes"));
    // A PATCH without If-Match: 400 from Graph.
    let bare = client
        .send(
            "contoso",
            &GraphRequest::patch(&format!("/planner/tasks/{}", created.id))
                .json(&json!({"title": "x"})),
        )
        .await
        .unwrap_err();
    assert_eq!(bare.status().map(|s| s.as_u16()), Some(400));
    // A task read without its ETag cannot be written through the helpers.
    let mut no_etag = created.clone();
    no_etag.etag = None;
    assert!(matches!(
        client.delete_task("contoso", &no_etag).await,
        Err(GraphError::Request(RequestError::MissingEtag))
    ));
    client.delete_task("contoso", &created).await.unwrap();
    let gone = client.task("contoso", &created.id).await.unwrap_err();
    assert_eq!(gone.status().map(|s| s.as_u16()), Some(404));
    // A task in a plan that does not exist.
    assert!(
        client
            .create_task("contoso", "no-such-plan", None, "x")
            .await
            .is_err()
    );
}

#[tokio::test]
async fn one_tenant_never_sees_another_tenants_plans() {
    let graph = Emulator::start_default().await.unwrap();
    let client = client(&graph);
    let (group, plan) = first_plan(&client).await;
    let tasks: Vec<PlannerTask> = client.tasks("contoso", &plan).try_collect().await.unwrap();
    for attempt in [
        client.task("fabrikam", &tasks[0].id).await.map(|_| ()),
        client
            .plans("fabrikam", &group)
            .try_collect::<Vec<_>>()
            .await
            .map(|_| ()),
        client
            .update_task("fabrikam", &tasks[0], &json!({"title": "x"}))
            .await,
    ] {
        assert_eq!(attempt.unwrap_err().status().map(|s| s.as_u16()), Some(404));
    }
    assert_eq!(
        client.task("contoso", &tasks[0].id).await.unwrap().title,
        tasks[0].title
    );
}

#[tokio::test]
async fn planner_collections_page_through_their_own_next_links() {
    let graph = Emulator::start_default().await.unwrap();
    let client = client(&graph);
    let (group, plan) = first_plan(&client).await;
    let tasks: Vec<PlannerTask> = client
        .items(
            "contoso",
            GraphRequest::get(&format!("/planner/plans/{plan}/tasks")).top(1),
        )
        .try_collect()
        .await
        .unwrap();
    assert_eq!(tasks.len(), 4);
    let buckets: Vec<keel_graph_client::model::PlannerBucket> = client
        .items(
            "contoso",
            GraphRequest::get(&format!("/planner/plans/{plan}/buckets")).top(1),
        )
        .try_collect()
        .await
        .unwrap();
    assert_eq!(buckets.len(), 2);
    let plans: Vec<keel_graph_client::model::PlannerPlan> = client
        .items(
            "contoso",
            GraphRequest::get(&format!("/groups/{group}/planner/plans")).top(1),
        )
        .try_collect()
        .await
        .unwrap();
    assert_eq!(plans.len(), 1);
}

#[tokio::test]
async fn a_write_whose_answer_is_lost_is_sent_again_only_when_a_repeat_is_harmless() {
    let graph = Emulator::start_default().await.unwrap();
    let client = crate::client::built(&graph, |b| {
        b.retries(3, std::time::Duration::from_secs(5)).backoff(
            keel_resilience::retry::Backoff::Constant(std::time::Duration::from_millis(5)),
        )
    });
    let (_, plan) = first_plan(&client).await;
    // A POST, even with `If-Match: *`: applied once, never sent again.
    graph.faults().add(
        keel_graph_client::emulator::FaultRule::path("/v1.0/planner/tasks")
            .lose_answer()
            .times(1),
    );
    let lost = client
        .send(
            "contoso",
            &GraphRequest::post("/planner/tasks")
                .if_match("*")
                .json(&json!({"planId": plan, "title": "created once"})),
        )
        .await
        .unwrap_err();
    assert!(matches!(lost, GraphError::Transport(_)), "{lost:?}");
    let tasks: Vec<PlannerTask> = client.tasks("contoso", &plan).try_collect().await.unwrap();
    let created = tasks
        .iter()
        .filter(|t| t.title.as_deref() == Some("created once"))
        .count();
    assert_eq!(created, 1, "the POST ran {created} times");

    // A PATCH with the task's ETag: sent again, and the repeat meets the changed ETag
    // (412): the write was applied once.
    let task = tasks[0].clone();
    graph.faults().add(
        keel_graph_client::emulator::FaultRule::path(&format!("/v1.0/planner/tasks/{}", task.id))
            .lose_answer()
            .times(1),
    );
    let repeat = client
        .update_task("contoso", &task, &json!({"percentComplete": 75}))
        .await
        .unwrap_err();
    assert!(
        matches!(repeat, GraphError::PreconditionFailed(_)),
        "{repeat:?}"
    );
    assert_eq!(
        client
            .task("contoso", &task.id)
            .await
            .unwrap()
            .percent_complete,
        Some(75)
    );
}

#[tokio::test]
async fn planner_refuses_a_title_over_255_characters_and_progress_over_100() {
    let graph = Emulator::start_default().await.unwrap();
    let client = client(&graph);
    let (_, plan) = first_plan(&client).await;
    let tasks: Vec<PlannerTask> = client.tasks("contoso", &plan).try_collect().await.unwrap();
    for changes in [
        json!({"title": "x".repeat(256)}),
        json!({"percentComplete": 101}),
        json!({"title": 7}),
    ] {
        let refused = client
            .update_task("contoso", &tasks[0], &changes)
            .await
            .unwrap_err();
        assert_eq!(refused.status().map(|s| s.as_u16()), Some(400), "{changes}");
    }
    let created = client
        .create_task("contoso", &plan, None, &"y".repeat(256))
        .await
        .unwrap_err();
    assert_eq!(created.status().map(|s| s.as_u16()), Some(400));
    client
        .update_task("contoso", &tasks[0], &json!({"title": "z".repeat(255)}))
        .await
        .unwrap();
}
