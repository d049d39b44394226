//! Graph's error responses, from the documented shapes and from observed ones, and
//! arbitrary bytes that must never panic the reader.

use std::time::Duration;

use http::{HeaderMap, HeaderValue, StatusCode};
use keel_graph_client::{BodyProblem, GraphError};
use keel_resilience::{Classify, ErrorClass};
use proptest::prelude::*;

fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.insert(*name, HeaderValue::from_str(value).unwrap());
    }
    map
}

/// The example of learn.microsoft.com/graph/errors: a generic top-level code, the
/// precise one nested.
#[test]
fn the_documented_error_example() {
    let body = br#"{
      "error": {
        "code": "badRequest",
        "message": "Uploaded fragment overlaps with existing data.",
        "innerError": {
          "code": "invalidRange",
          "request-id": "request-id",
          "date": "date-time"
        }
      }
    }"#;
    let error = GraphError::from_response(StatusCode::BAD_REQUEST, &HeaderMap::new(), body);
    let api = error.api().unwrap();
    assert_eq!(api.code(), "badRequest");
    assert_eq!(api.inner_codes(), ["invalidRange"]);
    assert!(api.has_code("invalidRange") && api.has_code("BadRequest"));
    assert!(!api.has_code("itemNotFound"));
    assert_eq!(
        api.message(),
        "Uploaded fragment overlaps with existing data."
    );
    assert_eq!(api.request_id(), Some("request-id"));
    assert_eq!(api.date(), Some("date-time"));
    assert_eq!(error.class(), ErrorClass::Permanent);
}

/// Observed 429s: a code that says nothing (`UnknownError`, an empty message), or
/// `accessDenied` with the real cause nested; the delay from `Retry-After`.
#[test]
fn throttling_answers_are_throttled_with_their_delay() {
    let body = br#"{"error":{"code":"UnknownError","message":"","innerError":{"request-id":"xxxxxx-esse0-4480-90d4-xxxxxxx","date":"2018-05-05T09:12:35"}}}"#;
    let error = GraphError::from_response(
        StatusCode::TOO_MANY_REQUESTS,
        &headers(&[("retry-after", "5")]),
        body,
    );
    assert_eq!(
        error.class(),
        ErrorClass::Throttled {
            retry_after: Some(Duration::from_secs(5))
        }
    );
    let body = br#"{"error":{"code":"accessDenied","message":"Too Many Requests","innerError":{"code":"throttledRequest","date":"2023-07-11T05:05:13","request-id":"cfda74a9-8b11-43c9-a558-bb2ca29a6271","client-request-id":"cfda74a9-8b11-43c9-a558-bb2ca29a6271"}}}"#;
    let error = GraphError::from_response(StatusCode::TOO_MANY_REQUESTS, &HeaderMap::new(), body);
    let api = error.api().unwrap();
    assert!(api.has_code("throttledRequest"));
    assert_eq!(
        api.client_request_id(),
        Some("cfda74a9-8b11-43c9-a558-bb2ca29a6271")
    );
    assert_eq!(
        error.class(),
        ErrorClass::Throttled { retry_after: None },
        "no Retry-After: the caller backs off"
    );
    // Fractional seconds, as Graph sends them.
    let error = GraphError::from_response(
        StatusCode::SERVICE_UNAVAILABLE,
        &headers(&[("retry-after", "2.128")]),
        b"",
    );
    assert_eq!(error.retry_after(), Some(Duration::from_millis(2128)));
    assert!(matches!(error.class(), ErrorClass::Throttled { .. }));
}

/// A `Retry-After` that is negative, huge or garbage gives no delay (the caller's
/// backoff applies) or one capped by keel-resilience, never a panic.
#[test]
fn hostile_retry_after_values_fall_back_or_are_capped() {
    for value in ["-5", "abc", "", "1e400", "NaN", "inf", "Tue, 99 Foo 2026"] {
        let error = GraphError::from_response(
            StatusCode::TOO_MANY_REQUESTS,
            &headers(&[("retry-after", value)]),
            b"{}",
        );
        assert_eq!(error.retry_after(), None, "{value:?}");
    }
    let huge = GraphError::from_response(
        StatusCode::TOO_MANY_REQUESTS,
        &headers(&[("retry-after", "99999999999")]),
        b"",
    );
    assert!(huge.retry_after().unwrap() <= keel_resilience::MAX_RETRY_AFTER);
}

/// `innererror` in lower case (older services), nested inner errors walked, `details`
/// codes kept; ids from the headers when the body has none.
#[test]
fn nested_and_differently_spelt_inner_errors_are_walked() {
    let body = br#"{"error":{"code":"","message":"m","innererror":{"code":"outer",
        "innerError":{"code":"middle","innererror":{"code":"deepest","request-id":"deep-id"}}},
        "details":[{"code":"NoBackingApplicationObject","message":"x"},{"code":7}]}}"#;
    let error = GraphError::from_response(
        StatusCode::BAD_REQUEST,
        &headers(&[("request-id", "header-id"), ("client-request-id", "mine")]),
        body,
    );
    let api = error.api().unwrap();
    assert_eq!(
        api.inner_codes(),
        ["outer", "middle", "deepest", "NoBackingApplicationObject"]
    );
    assert_eq!(api.request_id(), Some("deep-id"), "the body's id first");
    assert_eq!(api.client_request_id(), Some("mine"));
    assert_eq!(api.code(), "", "an empty top-level code stays empty");
    assert!(error.to_string().contains("400 Bad Request"), "{error}");
}

/// A 412 on a Planner update is its own error, with the current ETag when sent.
#[test]
fn a_precondition_failure_is_its_own_error_with_the_current_etag() {
    let body = br#"{"error":{"code":"PreconditionFailed","message":"The If-Match header value did not match.","innerError":{"request-id":"r1"}}}"#;
    let error = GraphError::from_response(
        StatusCode::PRECONDITION_FAILED,
        &headers(&[(
            "etag",
            r#"W/"JzEtVGFzayAgQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBARCc=""#,
        )]),
        body,
    );
    let GraphError::PreconditionFailed(api) = &error else {
        panic!("{error:?}")
    };
    assert!(api.etag().unwrap().starts_with("W/\""));
    assert_eq!(error.class(), ErrorClass::Permanent);
}

/// Bodies that are not Graph's error JSON keep the status and the request id.
#[test]
fn unreadable_bodies_keep_the_status_and_the_request_id() {
    for (body, problem) in [
        (&b""[..], BodyProblem::Empty),
        (&b"  \n"[..], BodyProblem::Empty),
        (
            &b"<html><body>502 Bad Gateway</body></html>"[..],
            BodyProblem::NotJson,
        ),
        (&br#"{"error":{"code":"trunc"#[..], BodyProblem::NotJson),
        (&br#"{"value":[]}"#[..], BodyProblem::NoErrorObject),
        (&br#"{"error":"a string"}"#[..], BodyProblem::NoErrorObject),
        (&b"[1,2]"[..], BodyProblem::NoErrorObject),
    ] {
        let error = GraphError::from_response(
            StatusCode::BAD_GATEWAY,
            &headers(&[("request-id", "rid-1")]),
            body,
        );
        let GraphError::UnreadableError {
            status,
            problem: seen,
            request_id,
            ..
        } = &error
        else {
            panic!("{error:?}")
        };
        assert_eq!(*status, StatusCode::BAD_GATEWAY);
        assert_eq!(*seen, problem);
        assert_eq!(request_id.as_deref(), Some("rid-1"));
        assert_eq!(error.class(), ErrorClass::Transient);
        assert!(error.to_string().contains("rid-1"));
    }
}

/// Statuses map to the classes retry and the breaker act on.
#[test]
fn statuses_map_to_classes() {
    let class = |status: u16, body: &[u8]| {
        GraphError::from_response(
            StatusCode::from_u16(status).unwrap(),
            &HeaderMap::new(),
            body,
        )
        .class()
    };
    assert_eq!(class(500, b""), ErrorClass::Transient);
    assert_eq!(class(504, b""), ErrorClass::Transient);
    assert_eq!(
        class(404, br#"{"error":{"code":"itemNotFound"}}"#),
        ErrorClass::Permanent
    );
    assert_eq!(class(403, b""), ErrorClass::Permanent);
    assert_eq!(
        class(409, br#"{"error":{"code":"Request_BadRequest","innerError":{"code":"Directory_ConcurrencyViolation"}}}"#),
        ErrorClass::Transient
    );
    assert_eq!(
        class(409, br#"{"error":{"code":"nameAlreadyExists"}}"#),
        ErrorClass::Permanent
    );
}

/// Long and control-laden text from a hostile body is bounded and cleaned in what the
/// error shows.
#[test]
fn hostile_text_is_bounded_in_what_is_shown() {
    let message = format!("line1\r\nforged log line {}", "x".repeat(10_000));
    let body = serde_json::json!({"error": {"code": "c".repeat(5_000), "message": message}});
    let error = GraphError::from_response(
        StatusCode::BAD_REQUEST,
        &HeaderMap::new(),
        body.to_string().as_bytes(),
    );
    let shown = error.to_string();
    assert!(shown.len() < 1_000, "{}", shown.len());
    assert!(!shown.contains('\n') && !shown.contains('\r'));
    let api = error.api().unwrap();
    assert!(api.code().chars().count() <= 129);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Arbitrary bytes and statuses never panic, and what is kept stays bounded.
    #[test]
    fn arbitrary_bodies_never_panic(status in 400u16..600, body in proptest::collection::vec(any::<u8>(), 0..2_048)) {
        let error = GraphError::from_response(StatusCode::from_u16(status).unwrap(), &HeaderMap::new(), &body);
        prop_assert!(error.to_string().len() < 2_000);
        let _ = error.class();
    }

    /// Arbitrary JSON in Graph's shape, with values of any type where strings belong.
    #[test]
    fn arbitrary_error_objects_never_panic(
        code in prop_oneof![Just(serde_json::json!(null)), Just(serde_json::json!(1)), ".{0,40}".prop_map(serde_json::Value::from)],
        depth in 0usize..64,
    ) {
        let mut inner = serde_json::json!({"code": &code, "request-id": &code});
        for _ in 0..depth {
            inner = serde_json::json!({"code": "x", "innerError": inner});
        }
        let body = serde_json::json!({"error": {"code": code, "message": ["no"], "innerError": inner, "details": "not a list"}});
        let error = GraphError::from_response(StatusCode::BAD_REQUEST, &HeaderMap::new(), body.to_string().as_bytes());
        prop_assert!(error.api().unwrap().inner_codes().len() <= 16);
    }
}
