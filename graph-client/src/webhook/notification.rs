//! Change and lifecycle notifications as Graph posts them, parsed from hostile bytes.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The most notifications one POST may carry, and the longest value kept per field.
pub(crate) const MAX_ITEMS: usize = 1_000;
const MAX_ID: usize = 256;
const MAX_CLIENT_STATE: usize = 255;
const MAX_RESOURCE: usize = 2_048;
const MAX_DATE: usize = 64;
const MAX_TOKENS: usize = 100;
const MAX_TOKEN: usize = 16 << 10;
const MAX_ENCRYPTED: usize = 4 << 20;

/// What changed, for a change notification.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub enum ChangeType {
    /// An item was created.
    Created,
    /// An item was updated.
    Updated,
    /// An item was deleted.
    Deleted,
}

/// A lifecycle event about the subscription itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub enum LifecycleEvent {
    /// The subscription's access is about to lapse: reauthorize or renew it.
    ReauthorizationRequired,
    /// Graph removed the subscription: create it again and catch up with delta.
    SubscriptionRemoved,
    /// Graph dropped notifications: catch up with delta.
    Missed,
}

/// A notification's kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum NotificationKind {
    /// A change to a resource.
    Change(ChangeType),
    /// An event of the subscription's lifecycle.
    Lifecycle(LifecycleEvent),
}

/// A rich notification's encrypted resource data, as Graph sends it (base64 fields).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct EncryptedContent {
    /// The data, AES-CBC encrypted with the data key (base64).
    pub data: String,
    /// HMAC-SHA256 of the encrypted data under the data key (base64).
    pub data_signature: String,
    /// The data key, RSA-OAEP encrypted with the subscription's certificate (base64).
    pub data_key: String,
    /// The id of the certificate Graph encrypted with (as given at subscription).
    pub encryption_certificate_id: String,
    /// The certificate's thumbprint.
    pub encryption_certificate_thumbprint: String,
}

/// One notification, checked: required fields present, sizes bounded, the kind known.
/// Its `clientState` is kept apart (compared by the receiver, never logged or queued).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Notification {
    /// Graph's id of this notification, when it sends one: a delivery made again
    /// carries the same id.
    pub id: Option<String>,
    /// The subscription it belongs to.
    pub subscription_id: String,
    /// When the subscription expires (ISO 8601, as sent).
    pub subscription_expiration: Option<String>,
    /// A change, or a lifecycle event.
    pub kind: NotificationKind,
    /// The resource's path (`users/{id}`, …); absent on some lifecycle events.
    pub resource: Option<String>,
    /// The resource's identity (`@odata.type`, `@odata.id`, `id`), when sent.
    pub resource_data: Option<Map<String, Value>>,
    /// The tenant (`tenantId`, or `organizationId` on older lifecycle events).
    pub tenant_id: Option<String>,
    /// A rich notification's encrypted resource data.
    pub encrypted_content: Option<EncryptedContent>,
    #[serde(skip)]
    pub(crate) client_state: Option<String>,
}

impl std::fmt::Debug for Notification {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notification")
            .field("subscription_id", &self.subscription_id)
            .field("kind", &self.kind)
            .field("resource", &self.resource)
            .field("tenant_id", &self.tenant_id)
            .field("encrypted", &self.encrypted_content.is_some())
            .finish_non_exhaustive()
    }
}

/// A POST's notifications, and the validation tokens of rich notifications.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct NotificationBatch {
    /// The notifications, in order.
    pub notifications: Vec<Notification>,
    /// `validationTokens` (JWTs), when the notifications carry resource data.
    pub validation_tokens: Vec<String>,
}

/// Why a notification body was refused. Messages are bounded and hold no secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NotificationError {
    /// The body is not a JSON object with a `value` array.
    #[error("notification body: {0}")]
    Body(&'static str),
    /// More notifications than one POST may carry.
    #[error("notification body: more than {MAX_ITEMS} notifications")]
    TooMany,
    /// An item is wrong.
    #[error("notification {index}: {problem}")]
    Item {
        /// Its place in `value`.
        index: usize,
        /// What is wrong.
        problem: String,
    },
}

impl NotificationError {
    /// A short label for metrics.
    #[must_use]
    pub fn reason(&self) -> &'static str {
        match self {
            NotificationError::Body(_) => "malformed",
            NotificationError::TooMany => "too_many",
            NotificationError::Item { .. } => "bad_item",
        }
    }
}

/// Parses a notification POST's body.
///
/// ```
/// use keel_graph_client::webhook::{parse_notifications, ChangeType, NotificationKind};
///
/// let body = br#"{"value":[{"subscriptionId":"7f1a","clientState":"s3cret",
///   "changeType":"updated","resource":"users/42","tenantId":"t1",
///   "subscriptionExpirationDateTime":"2026-12-01T00:00:00Z"}]}"#;
/// let batch = parse_notifications(body).unwrap();
/// assert_eq!(batch.notifications[0].kind, NotificationKind::Change(ChangeType::Updated));
/// assert!(parse_notifications(br#"{"value":[{"subscriptionId":"7f1a","changeType":"exploded"}]}"#).is_err());
/// ```
///
/// # Errors
/// [`NotificationError`]: not JSON, not Graph's shape, too many items, a field of the
/// wrong type or too long, an unknown `changeType` or `lifecycleEvent`, bad encrypted
/// content.
pub fn parse_notifications(body: &[u8]) -> Result<NotificationBatch, NotificationError> {
    // The usual body, read straight into borrowed fields; anything unusual (a wrong
    // type, a duplicate key) goes the slow way, which says what is wrong and where.
    if let Ok(MapOnly(fast)) = serde_json::from_slice::<MapOnly<FastBody<'_>>>(body)
        && let Some(batch) = fast.checked()
    {
        return batch;
    }
    parse_slowly(body)
}

/// Through a `serde_json::Value`: says what is wrong and where.
fn parse_slowly(body: &[u8]) -> Result<NotificationBatch, NotificationError> {
    let Ok(Value::Object(mut root)) = serde_json::from_slice::<Value>(body) else {
        return Err(NotificationError::Body("not a JSON object"));
    };
    let Some(Value::Array(items)) = root.remove("value") else {
        return Err(NotificationError::Body("no value array"));
    };
    if items.len() > MAX_ITEMS {
        return Err(NotificationError::TooMany);
    }
    let validation_tokens = match root.remove("validationTokens") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(tokens)) if tokens.len() <= MAX_TOKENS => tokens
            .into_iter()
            .map(|t| match t {
                Value::String(t) if t.len() <= MAX_TOKEN => Ok(t),
                _ => Err(NotificationError::Body(
                    "validationTokens holds something other than a short string",
                )),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => {
            return Err(NotificationError::Body(
                "validationTokens is not a short array",
            ));
        }
    };
    let notifications = items
        .into_iter()
        .enumerate()
        .map(|(index, item)| {
            item_of(item).map_err(|problem| NotificationError::Item { index, problem })
        })
        .collect::<Result<_, _>>()?;
    Ok(NotificationBatch {
        notifications,
        validation_tokens,
    })
}

/// A struct read from a JSON object only (serde's derive also takes an array, field by
/// field in order: Graph never sends one, and the slow path refuses it).
struct MapOnly<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for MapOnly<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Objects<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for Objects<T> {
            type Value = T;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map))
            }
        }
        deserializer
            .deserialize_map(Objects(std::marker::PhantomData))
            .map(MapOnly)
    }
}

/// The usual body, borrowed from the bytes. Unknown fields send the body the slow way
/// (skipping them here would not check them as the slow path does).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FastBody<'a> {
    #[serde(borrow)]
    value: Vec<MapOnly<FastItem<'a>>>,
    #[serde(default, rename = "validationTokens")]
    validation_tokens: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct FastItem<'a> {
    #[serde(borrow, default)]
    id: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    subscription_id: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    subscription_expiration_date_time: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    change_type: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    lifecycle_event: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    resource: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    tenant_id: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    organization_id: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    client_state: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    resource_data: Option<Map<String, Value>>,
    #[serde(default)]
    encrypted_content: Option<Map<String, Value>>,
}

impl FastBody<'_> {
    /// The batch when every bound holds; `None` to let the slow way say what is wrong.
    fn checked(self) -> Option<Result<NotificationBatch, NotificationError>> {
        if self.value.len() > MAX_ITEMS {
            return Some(Err(NotificationError::TooMany));
        }
        let tokens = self.validation_tokens.unwrap_or_default();
        if tokens.len() > MAX_TOKENS || tokens.iter().any(|t| t.len() > MAX_TOKEN) {
            return None;
        }
        let short = |s: &Option<std::borrow::Cow<'_, str>>, max: usize| {
            s.as_ref().is_none_or(|s| s.len() <= max)
        };
        let mut notifications = Vec::with_capacity(self.value.len());
        for MapOnly(item) in self.value {
            let fits = short(&item.id, MAX_ID)
                && short(&item.subscription_id, MAX_ID)
                && short(&item.subscription_expiration_date_time, MAX_DATE)
                && short(&item.resource, MAX_RESOURCE)
                && short(&item.tenant_id, MAX_ID)
                && short(&item.organization_id, MAX_ID)
                && short(&item.client_state, MAX_CLIENT_STATE)
                && short(&item.change_type, 32)
                && short(&item.lifecycle_event, 64)
                && item.encrypted_content.is_none()
                && item
                    .resource_data
                    .as_ref()
                    .is_none_or(|d| d.len() <= MAX_RESOURCE_DATA);
            let kind = match (item.change_type.as_deref(), item.lifecycle_event.as_deref()) {
                (_, Some(event)) => lifecycle_of(event).map(NotificationKind::Lifecycle),
                (Some(change), None) => change_of(change).map(NotificationKind::Change),
                (None, None) => None,
            };
            let (true, Some(kind), Some(subscription_id)) =
                (fits, kind, item.subscription_id.filter(|s| !s.is_empty()))
            else {
                return None;
            };
            notifications.push(Notification {
                id: item.id.map(Into::into),
                subscription_id: subscription_id.into_owned(),
                subscription_expiration: item.subscription_expiration_date_time.map(Into::into),
                kind,
                resource: item.resource.map(Into::into),
                resource_data: item.resource_data,
                tenant_id: item.tenant_id.or(item.organization_id).map(Into::into),
                encrypted_content: None,
                client_state: item.client_state.map(Into::into),
            });
        }
        Some(Ok(NotificationBatch {
            notifications,
            validation_tokens: tokens,
        }))
    }
}

fn lifecycle_of(event: &str) -> Option<LifecycleEvent> {
    match event {
        "reauthorizationRequired" => Some(LifecycleEvent::ReauthorizationRequired),
        "subscriptionRemoved" => Some(LifecycleEvent::SubscriptionRemoved),
        "missed" => Some(LifecycleEvent::Missed),
        _ => None,
    }
}

fn change_of(change: &str) -> Option<ChangeType> {
    match change {
        "created" => Some(ChangeType::Created),
        "updated" => Some(ChangeType::Updated),
        "deleted" => Some(ChangeType::Deleted),
        _ => None,
    }
}

/// Takes field `name` out of `item`: a string of at most `max` bytes, or absent.
fn take(item: &mut Map<String, Value>, name: &str, max: usize) -> Result<Option<String>, String> {
    match item.remove(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.len() <= max => Ok(Some(s)),
        Some(Value::String(_)) => Err(format!("{name} is longer than {max} bytes")),
        Some(_) => Err(format!("{name} is not a string")),
    }
}

/// The most properties `resourceData` may hold.
const MAX_RESOURCE_DATA: usize = 64;

fn item_of(item: Value) -> Result<Notification, String> {
    let Value::Object(mut item) = item else {
        return Err("not an object".into());
    };
    let subscription_id = take(&mut item, "subscriptionId", MAX_ID)?
        .filter(|s| !s.is_empty())
        .ok_or("no subscriptionId")?;
    let change = take(&mut item, "changeType", 32)?;
    let lifecycle = take(&mut item, "lifecycleEvent", 64)?;
    let kind = match (change.as_deref(), lifecycle.as_deref()) {
        (_, Some(event)) => {
            NotificationKind::Lifecycle(lifecycle_of(event).ok_or("unknown lifecycleEvent")?)
        }
        (Some(change), None) => {
            NotificationKind::Change(change_of(change).ok_or("unknown changeType")?)
        }
        (None, None) => return Err("neither changeType nor lifecycleEvent".into()),
    };
    let resource_data = match item.remove("resourceData") {
        None | Some(Value::Null) => None,
        Some(Value::Object(data)) if data.len() <= MAX_RESOURCE_DATA => Some(data),
        Some(_) => return Err("resourceData is not a small object".into()),
    };
    let encrypted_content = match item.remove("encryptedContent") {
        None | Some(Value::Null) => None,
        Some(Value::Object(mut content)) => {
            let mut field = |name: &str, max: usize| -> Result<String, String> {
                take(&mut content, name, max)?
                    .ok_or_else(|| format!("encryptedContent has no {name}"))
            };
            Some(EncryptedContent {
                data: field("data", MAX_ENCRYPTED)?,
                data_signature: field("dataSignature", 1_024)?,
                data_key: field("dataKey", 4_096)?,
                encryption_certificate_id: field("encryptionCertificateId", MAX_ID)?,
                encryption_certificate_thumbprint: take(
                    &mut content,
                    "encryptionCertificateThumbprint",
                    MAX_ID,
                )?
                .unwrap_or_default(),
            })
        }
        Some(_) => return Err("encryptedContent is not an object".into()),
    };
    let tenant_id = match take(&mut item, "tenantId", MAX_ID)? {
        Some(t) => Some(t),
        None => take(&mut item, "organizationId", MAX_ID)?,
    };
    Ok(Notification {
        id: take(&mut item, "id", MAX_ID)?,
        subscription_id,
        subscription_expiration: take(&mut item, "subscriptionExpirationDateTime", MAX_DATE)?,
        kind,
        resource: take(&mut item, "resource", MAX_RESOURCE)?,
        resource_data,
        tenant_id,
        encrypted_content,
        client_state: take(&mut item, "clientState", MAX_CLIENT_STATE)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn json_value() -> impl Strategy<Value = Value> {
        crate::arbitrary_json::json_value(
            &[
                "value",
                "subscriptionId",
                "changeType",
                "lifecycleEvent",
                "clientState",
                "resourceData",
                "encryptedContent",
                "validationTokens",
                "data",
            ],
            &[
                "created",
                "updated",
                "deleted",
                "missed",
                "subscriptionRemoved",
                "reauthorizationRequired",
                "x",
            ],
        )
    }

    /// Bodies shaped like Graph's, with odd values here and there.
    fn notification_body() -> impl Strategy<Value = Value> {
        let text = prop_oneof![
            Just(Value::Null),
            "[a-z0-9]{0,8}".prop_map(Value::String),
            Just(Value::String("created".into())),
            Just(Value::String("updated".into())),
            Just(Value::String("missed".into())),
            Just(Value::from(3)),
        ];
        let item = prop::collection::btree_map(
            prop_oneof![
                Just("subscriptionId".to_owned()),
                Just("changeType".to_owned()),
                Just("lifecycleEvent".to_owned()),
                Just("clientState".to_owned()),
                Just("resource".to_owned()),
                Just("tenantId".to_owned()),
                Just("organizationId".to_owned()),
                Just("id".to_owned()),
                Just("subscriptionExpirationDateTime".to_owned()),
            ],
            text,
            0..9,
        )
        .prop_map(|m| {
            let mut m: Map<String, Value> = m.into_iter().collect();
            m.entry("subscriptionId".to_owned())
                .or_insert(Value::String("sub".into()));
            m.entry("changeType".to_owned())
                .or_insert(Value::String("updated".into()));
            Value::Object(m)
        });
        prop::collection::vec(item, 0..4).prop_map(|items| serde_json::json!({ "value": items }))
    }

    proptest! {
        /// Graph-shaped bodies: the fast path and the slow one agree.
        #[test]
        fn graph_shaped_bodies_parse_the_same_both_ways(value in notification_body()) {
            let body = serde_json::to_vec(&value).unwrap();
            let slow = parse_slowly(&body);
            let both = parse_notifications(&body);
            match (both, slow) {
                (Ok(f), Ok(s)) => prop_assert_eq!(&f.notifications, &s.notifications),
                (Err(f), Err(s)) => prop_assert_eq!(f, s),
                (f, s) => prop_assert!(false, "fast {:?} slow {:?}", f.map(|b| b.notifications), s.map(|b| b.notifications)),
            }
        }

        /// Any JSON, however shaped: a batch or a typed error, never a panic; what
        /// parses satisfies the bounds.
        #[test]
        fn arbitrary_json_never_panics(value in json_value()) {
            let body = serde_json::to_vec(&value).unwrap();
            if let Ok(batch) = parse_notifications(&body) {
                prop_assert!(batch.notifications.len() <= MAX_ITEMS);
                for n in &batch.notifications {
                    prop_assert!(!n.subscription_id.is_empty());
                }
            }
        }

        /// The fast path and the slow one agree wherever the fast one answers.
        #[test]
        fn the_fast_path_agrees_with_the_slow_one(value in json_value()) {
            let body = serde_json::to_vec(&value).unwrap();
            if let Ok(MapOnly(fast)) = serde_json::from_slice::<MapOnly<FastBody<'_>>>(&body)
                && let Some(fast) = fast.checked()
            {
                let slow = parse_slowly(&body);
                match (fast, slow) {
                    (Ok(f), Ok(s)) => {
                        prop_assert_eq!(&f.notifications, &s.notifications);
                        prop_assert_eq!(f.notifications.iter().map(|n| &n.client_state).collect::<Vec<_>>(),
                            s.notifications.iter().map(|n| &n.client_state).collect::<Vec<_>>());
                        prop_assert_eq!(f.validation_tokens, s.validation_tokens);
                    }
                    (Err(f), Err(s)) => prop_assert_eq!(f, s),
                    (f, s) => prop_assert!(false, "fast {:?} slow {:?}", f.map(|b| b.notifications), s.map(|b| b.notifications)),
                }
            }
        }

        /// Arbitrary bytes too.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = parse_notifications(&bytes);
        }
    }

    #[test]
    fn hostile_bodies_are_typed_errors() {
        let many = format!(
            r#"{{"value":[{}]}}"#,
            vec![r#"{"subscriptionId":"s","changeType":"created"}"#; MAX_ITEMS + 1].join(",")
        );
        assert_eq!(
            parse_notifications(many.as_bytes()).unwrap_err(),
            NotificationError::TooMany
        );
        for body in [
            r#"[]"#,
            r#"{"value":{}}"#,
            r#"{"value":[7]}"#,
            r#"{"value":[{"changeType":"created"}]}"#,
            r#"{"value":[{"subscriptionId":5,"changeType":"created"}]}"#,
            r#"{"value":[{"subscriptionId":"s","changeType":"renamed"}]}"#,
            r#"{"value":[{"subscriptionId":"s"}]}"#,
            r#"{"value":[{"subscriptionId":"s","lifecycleEvent":"exploded"}]}"#,
            r#"{"value":[{"subscriptionId":"s","changeType":"created","encryptedContent":{"data":"x"}}]}"#,
            r#"{"value":[{"subscriptionId":"s","changeType":"created","resourceData":[1]}]}"#,
            r#"{"value":[],"validationTokens":"x"}"#,
        ] {
            let error = parse_notifications(body.as_bytes()).unwrap_err();
            assert!(error.to_string().len() < 200, "{body}: {error}");
        }
        let long_state = format!(
            r#"{{"value":[{{"subscriptionId":"s","changeType":"created","clientState":"{}"}}]}}"#,
            "x".repeat(MAX_CLIENT_STATE + 1)
        );
        assert!(parse_notifications(long_state.as_bytes()).is_err());
    }

    #[test]
    fn odd_bodies_get_the_same_answer_both_ways() {
        for body in [
            format!(
                r#"{{"value":[{{"subscriptionId":"s","lifecycleEvent":"missed","changeType":"{}"}}]}}"#,
                "c".repeat(40)
            ),
            r#"{"value":[{"subscriptionId":"s","changeType":"created","extra":1e400}]}"#.to_owned(),
            r#"{"value":[{"subscriptionId":"s","changeType":"created","extra":"\ud800"}]}"#
                .to_owned(),
            r#"{"value":[],"odd":1e400}"#.to_owned(),
            r#"{"value":[{"subscriptionId":"s","changeType":"created","subscriptionId":"t"}]}"#
                .to_owned(),
            r#"[[]]"#.to_owned(),
        ] {
            assert_eq!(
                parse_notifications(body.as_bytes()).map(|b| b.notifications),
                parse_slowly(body.as_bytes()).map(|b| b.notifications),
                "{body}"
            );
        }
    }

    #[test]
    fn the_client_state_stays_out_of_debug_and_of_the_queued_form() {
        let batch = parse_notifications(
            br#"{"value":[{"subscriptionId":"s","changeType":"created","clientState":"hunter2"}]}"#,
        )
        .unwrap();
        let n = &batch.notifications[0];
        assert_eq!(n.client_state.as_deref(), Some("hunter2"));
        assert!(!format!("{n:?}").contains("hunter2"));
        assert!(!serde_json::to_string(n).unwrap().contains("hunter2"));
    }
}
