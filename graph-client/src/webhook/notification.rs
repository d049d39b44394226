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

fn text(item: &Map<String, Value>, name: &str, max: usize) -> Result<Option<String>, String> {
    match item.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.len() <= max => Ok(Some(s.clone())),
        Some(Value::String(_)) => Err(format!("{name} is longer than {max} bytes")),
        Some(_) => Err(format!("{name} is not a string")),
    }
}

fn item_of(item: Value) -> Result<Notification, String> {
    let Value::Object(item) = item else {
        return Err("not an object".into());
    };
    let subscription_id = text(&item, "subscriptionId", MAX_ID)?
        .filter(|s| !s.is_empty())
        .ok_or("no subscriptionId")?;
    let change = text(&item, "changeType", 32)?;
    let lifecycle = text(&item, "lifecycleEvent", 64)?;
    let kind = match (change.as_deref(), lifecycle.as_deref()) {
        (_, Some(event)) => NotificationKind::Lifecycle(match event {
            "reauthorizationRequired" => LifecycleEvent::ReauthorizationRequired,
            "subscriptionRemoved" => LifecycleEvent::SubscriptionRemoved,
            "missed" => LifecycleEvent::Missed,
            _ => return Err("unknown lifecycleEvent".into()),
        }),
        (Some(change), None) => NotificationKind::Change(match change {
            "created" => ChangeType::Created,
            "updated" => ChangeType::Updated,
            "deleted" => ChangeType::Deleted,
            _ => return Err("unknown changeType".into()),
        }),
        (None, None) => return Err("neither changeType nor lifecycleEvent".into()),
    };
    let resource_data = match item.get("resourceData") {
        None | Some(Value::Null) => None,
        Some(Value::Object(data))
            if serde_json::to_vec(data).map_or(0, |v| v.len()) <= MAX_RESOURCE * 4 =>
        {
            Some(data.clone())
        }
        Some(_) => return Err("resourceData is not a small object".into()),
    };
    let encrypted_content = match item.get("encryptedContent") {
        None | Some(Value::Null) => None,
        Some(Value::Object(content)) => {
            let field = |name: &str, max: usize| -> Result<String, String> {
                text(content, name, max)?.ok_or_else(|| format!("encryptedContent has no {name}"))
            };
            Some(EncryptedContent {
                data: field("data", MAX_ENCRYPTED)?,
                data_signature: field("dataSignature", 1_024)?,
                data_key: field("dataKey", 4_096)?,
                encryption_certificate_id: field("encryptionCertificateId", MAX_ID)?,
                encryption_certificate_thumbprint: text(
                    content,
                    "encryptionCertificateThumbprint",
                    MAX_ID,
                )?
                .unwrap_or_default(),
            })
        }
        Some(_) => return Err("encryptedContent is not an object".into()),
    };
    Ok(Notification {
        id: text(&item, "id", MAX_ID)?,
        subscription_id,
        subscription_expiration: text(&item, "subscriptionExpirationDateTime", MAX_DATE)?,
        kind,
        resource: text(&item, "resource", MAX_RESOURCE)?,
        resource_data,
        tenant_id: match text(&item, "tenantId", MAX_ID)? {
            Some(t) => Some(t),
            None => text(&item, "organizationId", MAX_ID)?,
        },
        encrypted_content,
        client_state: text(&item, "clientState", MAX_CLIENT_STATE)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            "[a-zA-Z0-9 ]{0,12}".prop_map(Value::String),
            prop_oneof![
                Just("created"),
                Just("updated"),
                Just("deleted"),
                Just("missed"),
                Just("subscriptionRemoved"),
                Just("reauthorizationRequired"),
                Just("x")
            ]
            .prop_map(|s| Value::String(s.to_owned())),
        ];
        leaf.prop_recursive(4, 64, 8, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
                prop::collection::btree_map(
                    prop_oneof![
                        Just("value".to_owned()),
                        Just("subscriptionId".to_owned()),
                        Just("changeType".to_owned()),
                        Just("lifecycleEvent".to_owned()),
                        Just("clientState".to_owned()),
                        Just("resourceData".to_owned()),
                        Just("encryptedContent".to_owned()),
                        Just("validationTokens".to_owned()),
                        Just("data".to_owned()),
                        "[a-z]{1,6}",
                    ],
                    inner,
                    0..8
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
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
