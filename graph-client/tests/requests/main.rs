//! Requests: OData options, headers Graph requires, bodies, and input that must be
//! refused before anything is sent.

use keel_graph_client::{ApiVersion, Cloud, GraphRequest, RequestError};
use proptest::prelude::*;

#[test]
fn search_is_quoted_and_asks_for_eventual_consistency() {
    let request = GraphRequest::get("/groups").search("displayName:Video Production");
    assert_eq!(
        request.relative_url().unwrap(),
        "/groups?$search=%22displayName:Video%20Production%22"
    );
    assert_eq!(request.headers()["consistencylevel"], "eventual");
    // Already quoted: not quoted twice; quotes inside are escaped.
    let request = GraphRequest::get("/users").search("\"a\"b\"");
    assert_eq!(
        request.relative_url().unwrap(),
        "/users?$search=%22a%5C%22b%22"
    );
}

#[test]
fn only_advanced_filters_ask_for_eventual_consistency() {
    assert!(
        !GraphRequest::get("/users")
            .filter("startswith(displayName,'a')")
            .headers()
            .contains_key("consistencylevel")
    );
    for advanced in [
        "endswith(mail,'@contoso.com')",
        "companyName ne null",
        "NOT(imAddresses/any(i:i eq 'x'))",
    ] {
        assert_eq!(
            GraphRequest::get("/users").filter(advanced).headers()["consistencylevel"],
            "eventual",
            "{advanced}"
        );
    }
}

#[test]
fn options_set_twice_keep_the_last_and_versions_can_differ_per_request() {
    let request = GraphRequest::get("/users")
        .top(10)
        .top(999)
        .order_by("displayName desc")
        .expand(["manager"])
        .version(ApiVersion::Beta);
    assert_eq!(
        request.url(&Cloud::China, ApiVersion::V1).unwrap(),
        "https://microsoftgraph.chinacloudapi.cn/beta/users?$top=999&$orderby=displayName%20desc&$expand=manager"
    );
}

#[test]
fn planner_writes_carry_if_match_prefer_and_a_json_body() {
    let etag = r#"W/"JzEtVGFzayAgQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBARCc=""#;
    let request = GraphRequest::patch("/planner/tasks/01gzSlKkIUSUl6DF_EilrmQAKDhh")
        .if_match(etag)
        .prefer("return=representation")
        .prefer("odata.maxpagesize=10")
        .json(&serde_json::json!({"percentComplete": 50}));
    assert_eq!(request.headers()["if-match"], etag);
    assert_eq!(
        request.headers()["prefer"],
        "return=representation, odata.maxpagesize=10"
    );
    assert_eq!(request.headers()["content-type"], "application/json");
    assert_eq!(request.body().unwrap(), br#"{"percentComplete":50}"#);
}

#[test]
fn bad_paths_and_headers_are_refused_before_sending() {
    for path in [
        "users",
        "https://evil.example/v1.0/users",
        "//evil.example/users",
        "/users/../../admin",
        "/users?$top=1",
    ] {
        assert_eq!(
            GraphRequest::get(path).url(&Cloud::Global, ApiVersion::V1),
            Err(RequestError::InvalidPath),
            "{path}"
        );
    }
    let request = GraphRequest::get("/users").header("x-bad", "line\r\nInjected: yes");
    assert!(
        matches!(request.relative_url(), Err(RequestError::InvalidHeader(name)) if name == "x-bad")
    );
    let request = GraphRequest::get("/users").header("bad name", "v");
    assert!(matches!(
        request.relative_url(),
        Err(RequestError::InvalidHeader(_))
    ));
}

proptest! {
    /// Whatever a filter holds, the URL has exactly the options that were set: a value
    /// can never add an option, and the URL stays on the cloud's Graph origin.
    #[test]
    fn values_never_add_options_or_leave_the_origin(filter in ".{0,80}", select in "[a-zA-Z&=#?%/ ]{0,30}") {
        let url = GraphRequest::get("/users").filter(&filter).select([select.as_str()]).top(5)
            .url(&Cloud::Global, ApiVersion::V1).unwrap();
        prop_assert!(Cloud::Global.is_graph_url(&url));
        let query = url.split_once('?').unwrap().1;
        prop_assert_eq!(query.matches('&').count(), 2);
        prop_assert!(!query.contains('#') && !query.contains(' '));
        let keys: Vec<&str> = query.split('&').map(|kv| kv.split('=').next().unwrap()).collect();
        prop_assert_eq!(keys, vec!["$filter", "$select", "$top"]);
    }
}
