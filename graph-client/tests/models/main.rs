//! Models against the examples of Microsoft's Graph documentation, and hostile pages.

use keel_graph_client::model::{
    DirectoryObject, Page, PlannerBucket, PlannerTask, PlannerTaskDetails, User,
};

/// The response example of "Get plannerTask" (v1.0 docs, shortened by Microsoft).
#[test]
fn the_documented_planner_task_parses() {
    let task: PlannerTask = serde_json::from_str(
        r##"{
  "createdBy": {"user": {"id": "6463a5ce-2119-4198-9f2a-628761df4a62"}},
  "planId": "xqQg5FS2LkCp935s-FIFm2QAFkHM",
  "bucketId": "gcrYAaAkgU2EQUvpkNNXLGQAGTtu",
  "title": "title-value",
  "orderHint": "9223370609546166567W",
  "assigneePriority": "90057581\"",
  "createdDateTime": "2015-03-25T18:36:49.2407981Z",
  "assignments": {
    "fbab97d0-4932-4511-b675-204639209557": {
      "@odata.type": "#microsoft.graph.plannerAssignment",
      "assignedBy": {"user": {"id": "1e9955d2-6acd-45bf-86d3-b546fdc795eb"}},
      "assignedDateTime": "2015-03-25T18:38:21.956Z",
      "orderHint": "RWk1"
    }
  },
  "id":"01gzSlKkIUSUl6DF_EilrmQAKDhh",
  "priority": 5
}"##,
    )
    .unwrap();
    assert_eq!(task.id, "01gzSlKkIUSUl6DF_EilrmQAKDhh");
    assert_eq!(task.priority, Some(5));
    assert_eq!(
        task.bucket_id.as_deref(),
        Some("gcrYAaAkgU2EQUvpkNNXLGQAGTtu")
    );
    assert!(
        task.assignments
            .contains_key("fbab97d0-4932-4511-b675-204639209557")
    );
    assert_eq!(
        task.created_by.unwrap().user.unwrap().id.as_deref(),
        Some("6463a5ce-2119-4198-9f2a-628761df4a62")
    );
    assert_eq!(task.etag, None, "the documented example is shortened");
}

/// The `@odata.etag` every Planner read carries, and that writes must send back.
#[test]
fn planner_etags_are_read() {
    let bucket: PlannerBucket = serde_json::from_str(
        r#"{"@odata.etag":"W/\"JzEtQnVja2V0QEBAQEBAQEBAQEBAQEBAQEBARCc=\"","name":"Advertising","planId":"xqQg5FS2LkCp935s-FIFm2QAFkHM","orderHint":"85752723360752+","id":"hsOf2dhOJkqyYYZEtdzDe2QAIUCR"}"#,
    )
    .unwrap();
    assert_eq!(
        bucket.etag.as_deref(),
        Some(r#"W/"JzEtQnVja2V0QEBAQEBAQEBAQEBAQEBAQEBARCc=""#)
    );
    let details: PlannerTaskDetails = serde_json::from_str(
        r##"{"@odata.etag":"W/\"x\"","description":"d","previewType":"checklist","references":{},"checklist":{"95e27074-6c4a-447a-aa24-9d718a0b86fa":{"@odata.type":"microsoft.graph.plannerChecklistItem","isChecked":true,"title":"Update task details"}},"id":"gcrYAaAkgU2EQUvpkNNXLGQAGTtu"}"##,
    )
    .unwrap();
    assert_eq!(details.checklist.len(), 1);
    assert_eq!(details.preview_type.as_deref(), Some("checklist"));
}

/// The "List members" example, and members of several kinds.
#[test]
fn group_members_parse_and_tell_their_kind() {
    let page: Page<DirectoryObject> =
        serde_json::from_str(r#"{"value": [{"id": "id-value"}]}"#).unwrap();
    assert_eq!(page.value[0].id, "id-value");
    let page: Page<DirectoryObject> = serde_json::from_str(
        r##"{"value":[{"@odata.type":"#microsoft.graph.user","id":"u1","displayName":"Adele"},{"@odata.type":"#microsoft.graph.group","id":"g1"}]}"##,
    )
    .unwrap();
    assert!(page.value[0].is_user());
    assert!(!page.value[1].is_user());
}

/// Paging annotations: next link, count, delta link; unknown properties ignored.
#[test]
fn page_annotations_are_read_and_unknown_properties_ignored() {
    let page: Page<User> = serde_json::from_str(
        r#"{"@odata.context":"x","@odata.count":10000,"@odata.nextLink":"https://graph.microsoft.com/v1.0/users?$count=true&$skiptoken=abc",
            "value":[{"id":"1","displayName":"A","businessPhones":[],"someFutureProperty":{"nested":true}}]}"#,
    )
    .unwrap();
    assert_eq!(page.count, Some(10_000));
    assert!(page.next_link.unwrap().contains("$skiptoken=abc"));
    let last: Page<User> = serde_json::from_str(
        r#"{"value":[],"@odata.deltaLink":"https://graph.microsoft.com/v1.0/users/delta?$deltatoken=xyz"}"#,
    )
    .unwrap();
    assert!(last.value.is_empty() && last.delta_link.is_some());
    // A page without `value` is an empty page, not an error.
    let empty: Page<User> = serde_json::from_str("{}").unwrap();
    assert!(empty.value.is_empty());
}

/// Hostile pages are errors, never panics: wrong types, items without ids, deep
/// nesting, huge numbers.
#[test]
fn hostile_pages_are_errors() {
    for body in [
        r#"{"value": "not a list"}"#,
        r#"{"value": [{"displayName": "no id"}]}"#,
        r#"{"value": [{"id": 5}]}"#,
        r#"{"@odata.count": -1, "value": []}"#,
        r#"{"value": [{"id": "t", "percentComplete": 1000}]}"#,
    ] {
        assert!(
            serde_json::from_str::<Page<PlannerTask>>(body).is_err(),
            "{body}"
        );
    }
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    assert!(serde_json::from_str::<Page<User>>(&format!(r#"{{"value":{deep}}}"#)).is_err());
}

/// What is written back is what Graph expects: camelCase, absent fields left out.
#[test]
fn writes_serialise_in_graphs_shape() {
    let mut task = PlannerTask::default();
    task.id = "t1".into();
    task.title = Some("Write the guide".into());
    task.percent_complete = Some(50);
    assert_eq!(
        serde_json::to_value(&task).unwrap(),
        serde_json::json!({"id": "t1", "title": "Write the guide", "percentComplete": 50})
    );
}
