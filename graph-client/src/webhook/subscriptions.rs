//! Subscriptions that renew themselves: created with a random `clientState` and the
//! longest expiry the resource allows (less a margin), renewed at half their life,
//! created again when Graph forgot them, and kept in a store so that a restarted
//! service goes on with them.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use keel_resilience::clock::WallClock;

use super::notification::ChangeType;
use super::receiver::{ClientStates, constant_time_eq};
use crate::GraphClient;
use crate::delta::{DeltaStore, StoreError};
use crate::error::GraphError;
use crate::request::GraphRequest;

/// Graph's maximum subscription lifetimes, in minutes, by kind of resource (and with
/// resource data where it is shorter), as Microsoft documents them: kept as data.
const LIFETIMES: &[(Kind, u64, u64)] = &[
    (Kind::Directory, 41_760, 41_760),
    (Kind::Outlook, 10_080, 1_440),
    (Kind::Drive, 42_300, 42_300),
    (Kind::Teams, 4_320, 4_320),
    (Kind::Presence, 60, 60),
    (Kind::SecurityAlert, 43_200, 43_200),
    (Kind::Other, 4_230, 4_230),
];

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Directory,
    Outlook,
    Drive,
    Teams,
    Presence,
    SecurityAlert,
    Other,
}

fn kind_of(resource: &str) -> Kind {
    let lower = resource.to_ascii_lowercase();
    let path = lower.split('?').next().unwrap_or_default();
    // Segments without their key syntax: `mailfolders('inbox')` is `mailfolders`.
    let segments: Vec<&str> = path
        .trim_start_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| s.split('(').next().unwrap_or(s))
        .collect();
    let has = |name: &str| segments.contains(&name);
    if has("messages") || has("events") || has("contacts") || has("mailfolders") {
        if has("chats") || has("channels") || has("teams") {
            Kind::Teams
        } else {
            Kind::Outlook
        }
    } else if has("presences") {
        Kind::Presence
    } else if has("chats") || has("teams") || has("channels") || has("getallmessages") {
        Kind::Teams
    } else if has("drive") || has("drives") || has("root") || (has("sites") && has("lists")) {
        Kind::Drive
    } else if segments.first() == Some(&"security") && (has("alerts") || has("alerts_v2")) {
        Kind::SecurityAlert
    } else if matches!(
        segments.as_slice(),
        ["users"] | ["groups"] | ["contacts"] | ["directory", ..] | ["users", _] | ["groups", _]
    ) {
        Kind::Directory
    } else {
        Kind::Other
    }
}

/// The longest lifetime Graph gives a subscription on `resource`.
///
/// ```
/// use std::time::Duration;
/// use keel_graph_client::webhook::max_lifetime;
///
/// assert_eq!(max_lifetime("users", false), Duration::from_secs(41_760 * 60));
/// assert_eq!(max_lifetime("me/mailFolders('Inbox')/messages", true), Duration::from_secs(1_440 * 60));
/// ```
#[must_use]
pub fn max_lifetime(resource: &str, with_resource_data: bool) -> Duration {
    let kind = kind_of(resource);
    let (_, plain, rich) = LIFETIMES
        .iter()
        .find(|(k, _, _)| *k == kind)
        .copied()
        .unwrap_or((Kind::Other, 4_230, 4_230));
    Duration::from_secs(if with_resource_data { rich } else { plain } * 60)
}

/// What to subscribe to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[must_use]
pub struct SubscriptionSpec {
    resource: String,
    changes: Vec<ChangeType>,
    notification_url: String,
    lifecycle_url: Option<String>,
}

impl SubscriptionSpec {
    /// Changes of every type to `resource` (`users`, `groups`,
    /// `users/{id}/messages`, …), posted to `notification_url` (HTTPS, where a
    /// [`WebhookReceiver`](super::WebhookReceiver) serves); lifecycle events to the same
    /// URL unless [`lifecycle_url`](Self::lifecycle_url) says otherwise.
    pub fn new(resource: &str, notification_url: &str) -> Self {
        SubscriptionSpec {
            resource: resource.to_owned(),
            changes: vec![
                ChangeType::Created,
                ChangeType::Updated,
                ChangeType::Deleted,
            ],
            notification_url: notification_url.to_owned(),
            lifecycle_url: Some(notification_url.to_owned()),
        }
    }

    /// Only these change types.
    pub fn changes(mut self, changes: &[ChangeType]) -> Self {
        self.changes = changes.to_vec();
        self
    }

    /// Lifecycle events to `url`.
    pub fn lifecycle_url(mut self, url: &str) -> Self {
        self.lifecycle_url = Some(url.to_owned());
        self
    }
}

/// A subscription the manager keeps. Its `clientState` stays inside (not in `Debug`,
/// not serializable).
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ManagedSubscription {
    /// Graph's id of it.
    pub id: String,
    /// What it is for.
    pub spec: SubscriptionSpec,
    /// When it expires.
    pub expires: SystemTime,
    client_state: String,
}

impl std::fmt::Debug for ManagedSubscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManagedSubscription")
            .field("id", &self.id)
            .field("resource", &self.spec.resource)
            .field("expires", &self.expires)
            .finish_non_exhaustive()
    }
}

/// What the store holds of a subscription.
#[derive(Serialize, Deserialize)]
struct Stored {
    id: String,
    spec: SubscriptionSpec,
    expires: SystemTime,
    client_state: String,
}

impl From<&ManagedSubscription> for Stored {
    fn from(s: &ManagedSubscription) -> Self {
        Stored {
            id: s.id.clone(),
            spec: s.spec.clone(),
            expires: s.expires,
            client_state: s.client_state.clone(),
        }
    }
}

impl From<Stored> for ManagedSubscription {
    fn from(s: Stored) -> Self {
        ManagedSubscription {
            id: s.id,
            spec: s.spec,
            expires: s.expires,
            client_state: s.client_state,
        }
    }
}

impl ManagedSubscription {
    /// When the manager renews it: at half its life.
    #[must_use]
    pub fn renew_at(&self, lifetime: Duration) -> SystemTime {
        self.expires - lifetime / 2
    }
}

/// Why a subscription operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SubscriptionError {
    /// Graph refused or failed the call.
    #[error("subscription: {0}")]
    Graph(#[from] GraphError),
    /// The store failed.
    #[error("subscription: {0}")]
    Store(#[from] StoreError),
    /// Graph's answer was not a subscription.
    #[error("subscription: Graph's answer is not a subscription ({0})")]
    Answer(&'static str),
}

/// Creates, renews, deletes and remembers a service's subscriptions for one tenant,
/// and tells a [`WebhookReceiver`](super::WebhookReceiver) their `clientState`s (it is
/// a [`ClientStates`]).
///
/// ```no_run
/// use std::sync::Arc;
/// use keel_graph_client::delta::FileDeltaStore;
/// use keel_graph_client::webhook::{SubscriptionManager, SubscriptionSpec};
/// # async fn demo(client: keel_graph_client::GraphClient) -> Result<(), Box<dyn std::error::Error>> {
/// let manager = SubscriptionManager::new(client, "contoso", Arc::new(FileDeltaStore::new("/var/lib/svc/subscriptions")?));
/// manager.ensure("users", &SubscriptionSpec::new("users", "https://svc.example.com/graph/notify")).await?;
/// // In the background: renew what is due, sleeping in between.
/// tokio::spawn(async move { manager.run().await });
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct SubscriptionManager {
    inner: Arc<Inner>,
}

struct Inner {
    renewals: std::sync::atomic::AtomicU64,
    /// One create, renew or delete at a time.
    operating: tokio::sync::Mutex<()>,
    /// `clientState`s of subscriptions being created (Graph may notify before the
    /// creation's answer is stored).
    pending: RwLock<Vec<String>>,
    clock: Arc<dyn WallClock>,
    client: GraphClient,
    tenant: String,
    store: Arc<dyn DeltaStore>,
    /// Subscriptions by name, as last stored.
    known: RwLock<HashMap<String, ManagedSubscription>>,
}

impl std::fmt::Debug for SubscriptionManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubscriptionManager")
            .field("tenant", &self.inner.tenant)
            .finish_non_exhaustive()
    }
}

/// A random `clientState`: 128 bits, base64url.
fn random_state() -> String {
    let mut bytes = [0u8; 16];
    // aws-lc-rs's generator; it fails only if the OS has no randomness at all.
    aws_lc_rs::rand::fill(&mut bytes).expect("the system's random number generator");
    URL_SAFE_NO_PAD.encode(bytes)
}

fn rfc3339(at: SystemTime) -> String {
    humantime::format_rfc3339_seconds(at).to_string()
}

impl SubscriptionManager {
    /// A manager of `tenant`'s subscriptions, remembering them in `store` (under keys
    /// `subscriptions/{tenant}/{name}`).
    pub fn new(client: GraphClient, tenant: &str, store: Arc<dyn DeltaStore>) -> Self {
        SubscriptionManager {
            inner: Arc::new(Inner {
                renewals: std::sync::atomic::AtomicU64::new(0),
                operating: tokio::sync::Mutex::new(()),
                pending: RwLock::new(Vec::new()),
                clock: Arc::new(keel_resilience::clock::SystemClock),
                client,
                tenant: tenant.to_owned(),
                store,
                known: RwLock::new(HashMap::new()),
            }),
        }
    }

    /// Reads the time from `clock` instead of the system's (a `ManualClock` in tests).
    #[must_use]
    pub fn with_clock(self, clock: Arc<dyn WallClock>) -> Self {
        let inner = Arc::try_unwrap(self.inner).unwrap_or_else(|shared| Inner {
            renewals: std::sync::atomic::AtomicU64::new(0),
            operating: tokio::sync::Mutex::new(()),
            pending: RwLock::new(Vec::new()),
            clock: shared.clock.clone(),
            client: shared.client.clone(),
            tenant: shared.tenant.clone(),
            store: shared.store.clone(),
            known: RwLock::new(
                shared
                    .known
                    .read()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone(),
            ),
        });
        SubscriptionManager {
            inner: Arc::new(Inner { clock, ..inner }),
        }
    }

    fn now(&self) -> SystemTime {
        self.inner.clock.now()
    }

    fn key(&self, name: &str) -> String {
        format!("subscriptions/{}/{name}", self.inner.tenant)
    }

    fn index_key(&self) -> String {
        format!("subscriptions/{}", self.inner.tenant)
    }

    /// The names stored, from the store's index.
    async fn names(&self) -> Result<Vec<String>, SubscriptionError> {
        Ok(match self.inner.store.load(&self.index_key()).await? {
            Some(text) => serde_json::from_str(&text).map_err(|_| StoreError::Corrupt {
                key: self.index_key().chars().take(64).collect(),
            })?,
            None => Vec::new(),
        })
    }

    /// Adds `name` to (or removes it from) the store's index of names.
    async fn index(&self, name: &str, present: bool) -> Result<(), SubscriptionError> {
        let mut names = self.names().await?;
        let had = names.iter().any(|n| n == name);
        if had == present {
            return Ok(());
        }
        if present {
            names.push(name.to_owned());
        } else {
            names.retain(|n| n != name);
        }
        let text = serde_json::to_string(&names).unwrap_or_default();
        Ok(self.inner.store.save(&self.index_key(), &text).await?)
    }

    /// Loads every subscription the store holds for this tenant (what a restarted
    /// service calls first, before its receiver serves: until then, it does not know
    /// their `clientState`s). Returns how many.
    ///
    /// # Errors
    /// [`SubscriptionError::Store`].
    pub async fn resume(&self) -> Result<usize, SubscriptionError> {
        // Not between a create, renew or delete's store write and its update of what
        // is known here: the swap below would put back what they replaced.
        let _one = self.inner.operating.lock().await;
        let names = self.names().await?;
        let mut stored = HashMap::new();
        for name in names {
            if let Some(subscription) = self.load_stored(&name).await? {
                stored.insert(name, subscription);
            }
        }
        let loaded = stored.len();
        // Swapped whole: exactly what the store holds (a name another instance deleted
        // is no longer believed), and never a moment without the others.
        *self
            .inner
            .known
            .write()
            .unwrap_or_else(PoisonError::into_inner) = stored;
        Ok(loaded)
    }

    /// The expiry to ask for: the resource's maximum, less a margin (a tenth, at most an
    /// hour) for clocks and delays.
    fn expiry_for(&self, spec: &SubscriptionSpec) -> (SystemTime, Duration) {
        let lifetime = max_lifetime(&spec.resource, false);
        let margin = (lifetime / 10).min(Duration::from_secs(3_600));
        (self.now() + lifetime - margin, lifetime)
    }

    async fn remember(
        &self,
        name: &str,
        subscription: ManagedSubscription,
    ) -> Result<ManagedSubscription, SubscriptionError> {
        let text = serde_json::to_string(&Stored::from(&subscription)).unwrap_or_default();
        self.inner.store.save(&self.key(name), &text).await?;
        self.index(name, true).await?;
        self.inner
            .known
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(name.to_owned(), subscription.clone());
        Ok(subscription)
    }

    /// The subscription `name` as stored (loaded from the store if not yet known).
    ///
    /// # Errors
    /// [`SubscriptionError::Store`].
    pub async fn get(&self, name: &str) -> Result<Option<ManagedSubscription>, SubscriptionError> {
        if let Some(known) = self
            .inner
            .known
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
        {
            return Ok(Some(known.clone()));
        }
        let Some(subscription) = self.load_stored(name).await? else {
            return Ok(None);
        };
        self.inner
            .known
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(name.to_owned(), subscription.clone());
        Ok(Some(subscription))
    }

    /// The subscription `name` as the store holds it.
    async fn load_stored(
        &self,
        name: &str,
    ) -> Result<Option<ManagedSubscription>, SubscriptionError> {
        let Some(text) = self.inner.store.load(&self.key(name)).await? else {
            return Ok(None);
        };
        Ok(Some(
            serde_json::from_str::<Stored>(&text)
                .map_err(|_| StoreError::Corrupt {
                    key: self.key(name).chars().take(64).collect(),
                })?
                .into(),
        ))
    }

    /// Creates subscription `name` for `spec` (Graph runs the validation handshake
    /// against the notification URL first), with a random `clientState` (128 bits) —
    /// the name's previous one when it had a subscription before.
    ///
    /// # Errors
    /// [`SubscriptionError`].
    pub async fn create(
        &self,
        name: &str,
        spec: &SubscriptionSpec,
    ) -> Result<ManagedSubscription, SubscriptionError> {
        let _one = self.inner.operating.lock().await;
        self.create_locked(name, spec).await
    }

    async fn create_locked(
        &self,
        name: &str,
        spec: &SubscriptionSpec,
    ) -> Result<ManagedSubscription, SubscriptionError> {
        let (expires, _) = self.expiry_for(spec);
        // A subscription created again keeps its name's clientState, so that every
        // instance sharing the store believes its notifications at once.
        let client_state = match self.get(name).await? {
            Some(previous) => previous.client_state,
            None => random_state(),
        };
        self.inner
            .pending
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .push(client_state.clone());
        let changes: Vec<&str> = spec
            .changes
            .iter()
            .map(|c| match c {
                ChangeType::Created => "created",
                ChangeType::Updated => "updated",
                ChangeType::Deleted => "deleted",
            })
            .collect();
        let mut body = json!({
            "changeType": changes.join(","),
            "notificationUrl": spec.notification_url,
            "resource": spec.resource,
            "expirationDateTime": rfc3339(expires),
            "clientState": client_state,
        });
        if let Some(url) = &spec.lifecycle_url {
            body["lifecycleNotificationUrl"] = json!(url);
        }
        let answer: Value = self
            .inner
            .client
            .send(
                &self.inner.tenant,
                &GraphRequest::post("/subscriptions").json(&body),
            )
            .await?
            .json()?;
        let id = answer
            .get("id")
            .and_then(Value::as_str)
            .filter(|id| !id.is_empty() && id.len() <= 256)
            .ok_or(SubscriptionError::Answer("no id"))?;
        metrics::counter!("graph_subscriptions_created_total").increment(1);
        self.remember(
            name,
            ManagedSubscription {
                id: id.to_owned(),
                spec: spec.clone(),
                expires: answer
                    .get("expirationDateTime")
                    .and_then(Value::as_str)
                    .and_then(parse_time)
                    .unwrap_or(expires),
                client_state,
            },
        )
        .await
    }

    /// Renews subscription `name` to the longest expiry again; creates it again when
    /// Graph no longer knows it (it expired, or Graph removed it).
    ///
    /// # Errors
    /// [`SubscriptionError`]; `Store` with nothing stored under `name`… as a missing
    /// subscription is not an error here: use [`ensure`](Self::ensure).
    pub async fn renew(&self, name: &str) -> Result<ManagedSubscription, SubscriptionError> {
        let _one = self.inner.operating.lock().await;
        self.renew_locked(name).await
    }

    async fn renew_locked(&self, name: &str) -> Result<ManagedSubscription, SubscriptionError> {
        let Some(current) = self.get(name).await? else {
            return Err(SubscriptionError::Answer("nothing stored under this name"));
        };
        let (expires, _) = self.expiry_for(&current.spec);
        let request = GraphRequest::patch(&format!("/subscriptions/{}", current.id))
            .json(&json!({ "expirationDateTime": rfc3339(expires) }));
        match self.inner.client.send(&self.inner.tenant, &request).await {
            Ok(response) => {
                let answer: Value = response.json()?;
                metrics::counter!("graph_subscriptions_renewed_total").increment(1);
                self.remember(
                    name,
                    ManagedSubscription {
                        expires: answer
                            .get("expirationDateTime")
                            .and_then(Value::as_str)
                            .and_then(parse_time)
                            .unwrap_or(expires),
                        ..current
                    },
                )
                .await
            }
            Err(error) if error.status() == Some(http::StatusCode::NOT_FOUND) => {
                tracing::warn!(
                    name,
                    "subscription: Graph no longer knows it; creating it again"
                );
                self.create_locked(name, &current.spec).await
            }
            Err(error) => Err(error.into()),
        }
    }

    /// The subscription `name` for `spec`, alive: as stored if it is not due for
    /// renewal, renewed if it is, created if there is none (or its spec changed).
    ///
    /// # Errors
    /// [`SubscriptionError`].
    pub async fn ensure(
        &self,
        name: &str,
        spec: &SubscriptionSpec,
    ) -> Result<ManagedSubscription, SubscriptionError> {
        let _one = self.inner.operating.lock().await;
        match self.get(name).await? {
            Some(current) if current.spec == *spec => {
                let lifetime = max_lifetime(&spec.resource, false);
                if self.now() < current.renew_at(lifetime) {
                    Ok(current)
                } else {
                    self.renew_locked(name).await
                }
            }
            Some(stale) => {
                if let Err(error) = self.delete_remote(&stale.id).await {
                    tracing::warn!(%error, name, "subscription: could not delete the one it replaces");
                }
                self.create_locked(name, spec).await
            }
            None => self.create_locked(name, spec).await,
        }
    }

    async fn delete_remote(&self, id: &str) -> Result<(), GraphError> {
        match self
            .inner
            .client
            .send(
                &self.inner.tenant,
                &GraphRequest::delete(&format!("/subscriptions/{id}")),
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(error) if error.status() == Some(http::StatusCode::NOT_FOUND) => Ok(()),
            Err(error) => Err(error),
        }
    }

    /// Deletes subscription `name` at Graph and forgets it.
    ///
    /// # Errors
    /// [`SubscriptionError`].
    pub async fn delete(&self, name: &str) -> Result<(), SubscriptionError> {
        let _one = self.inner.operating.lock().await;
        if let Some(current) = self.get(name).await? {
            self.delete_remote(&current.id).await?;
        }
        self.inner.store.remove(&self.key(name)).await?;
        self.index(name, false).await?;
        self.inner
            .known
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(name);
        Ok(())
    }

    /// Acts on a lifecycle notification for one of its subscriptions:
    /// `reauthorizationRequired` reauthorizes and renews it, `subscriptionRemoved`
    /// creates it again; `missed` needs nothing here (run a delta round, as after any
    /// lifecycle event). Returns the subscription's name, or `None` when the
    /// notification is not a lifecycle event of a subscription it keeps.
    ///
    /// # Errors
    /// [`SubscriptionError`].
    pub async fn on_lifecycle(
        &self,
        notification: &super::Notification,
    ) -> Result<Option<String>, SubscriptionError> {
        let super::NotificationKind::Lifecycle(event) = notification.kind else {
            return Ok(None);
        };
        let name = self
            .inner
            .known
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .find(|(_, s)| s.id == notification.subscription_id)
            .map(|(name, _)| name.clone());
        let Some(name) = name else {
            return Ok(None);
        };
        metrics::counter!("graph_subscription_lifecycle_events_total").increment(1);
        match event {
            super::LifecycleEvent::ReauthorizationRequired => {
                let reauthorize = GraphRequest::post(&format!(
                    "/subscriptions/{}/reauthorize",
                    notification.subscription_id
                ));
                // Renewing reauthorizes too; a failed reauthorize is renewed anyway.
                if let Err(error) = self
                    .inner
                    .client
                    .send(&self.inner.tenant, &reauthorize)
                    .await
                {
                    tracing::warn!(%error, name, "subscription: reauthorize failed; renewing");
                }
                self.renew(&name).await?;
            }
            super::LifecycleEvent::SubscriptionRemoved => {
                let spec = self.get(&name).await?.map(|s| s.spec);
                if let Some(spec) = spec {
                    self.create(&name, &spec).await?;
                }
            }
            super::LifecycleEvent::Missed => {}
        }
        Ok(Some(name))
    }

    /// The app's subscriptions as Graph lists them (`GET /subscriptions`).
    ///
    /// # Errors
    /// [`SubscriptionError::Graph`].
    pub async fn list_remote(&self) -> Result<Vec<Value>, SubscriptionError> {
        let answer: Value = self
            .inner
            .client
            .send(&self.inner.tenant, &GraphRequest::get("/subscriptions"))
            .await?
            .json()?;
        Ok(answer
            .get("value")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default())
    }

    /// Renews every known subscription due for renewal; returns when the next one is
    /// due. A failure is logged and retried at the next pass (within a minute).
    pub async fn renew_due(&self) -> SystemTime {
        let known: Vec<(String, ManagedSubscription)> = self
            .inner
            .known
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(n, s)| (n.clone(), s.clone()))
            .collect();
        let now = self.now();
        let mut next = now + Duration::from_secs(3_600);
        for (name, subscription) in known {
            let lifetime = max_lifetime(&subscription.spec.resource, false);
            let due = subscription.renew_at(lifetime);
            let after = if due <= now {
                match self.renew(&name).await {
                    Ok(renewed) => {
                        self.inner
                            .renewals
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        renewed.renew_at(lifetime)
                    }
                    Err(error) => {
                        metrics::counter!("graph_subscriptions_renewal_failures_total")
                            .increment(1);
                        tracing::error!(name, %error, "subscription: renewal failed; trying again within a minute");
                        now + Duration::from_secs(60)
                    }
                }
            } else {
                due
            };
            next = next.min(after);
            // What the alert on subscriptions about to expire watches.
            if let Ok(Some(current)) = self.get(&name).await
                && let Ok(at) = current.expires.duration_since(std::time::UNIX_EPOCH)
            {
                metrics::gauge!("graph_subscription_expiry_timestamp_seconds", "name" => name.clone())
                    .set(at.as_secs_f64());
            }
        }
        next
    }

    /// Renews subscriptions as they fall due, for as long as it runs: a service of one
    /// instance ([`run_with`](Self::run_with) with a [`SoleLease`](super::SoleLease),
    /// looking every 10 seconds).
    pub async fn run(&self) {
        self.run_with(Arc::new(super::SoleLease), Duration::from_secs(10))
            .await;
    }

    /// Renews subscriptions as they fall due while this instance holds `lease` (one
    /// renewer per fleet), looking `every` so often: each pass takes or extends the
    /// lease for three periods, loads the stored subscriptions (another instance may
    /// have created or renewed them: their `clientState`s are believed here too), and,
    /// holding the lease, renews what is due. A holder that dies stops extending; the
    /// lease expires and another instance takes over within three periods.
    pub async fn run_with(&self, lease: Arc<dyn super::Lease>, every: Duration) {
        let every = every.max(Duration::from_millis(10));
        loop {
            if let Err(error) = self.resume().await {
                tracing::error!(%error, "subscription: could not load the stored subscriptions");
            }
            match lease.acquire(every * 3).await {
                Ok(true) => {
                    self.renew_due().await;
                }
                Ok(false) => {}
                Err(error) => {
                    tracing::warn!(%error, "subscription: the renewal lease is unavailable; not renewing this time");
                }
            }
            tokio::time::sleep(every).await;
        }
    }

    /// Subscriptions this manager renewed (or created again while renewing).
    #[must_use]
    pub fn renewals(&self) -> u64 {
        self.inner
            .renewals
            .load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl ClientStates for SubscriptionManager {
    /// Whether `presented` is the `clientState` of one of its subscriptions. Not tied
    /// to the subscription id: a subscription created again (by this instance or
    /// another sharing the store) keeps its name's `clientState`, and its new id may
    /// not be known here yet.
    fn accepts(&self, _subscription_id: &str, presented: &str) -> bool {
        let known = self
            .inner
            .known
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .fold(false, |hit, s| {
                constant_time_eq(s.client_state.as_bytes(), presented.as_bytes()) | hit
            });
        let pending = self
            .inner
            .pending
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .fold(false, |hit, s| {
                constant_time_eq(s.as_bytes(), presented.as_bytes()) | hit
            });
        known | pending
    }
}

fn parse_time(text: &str) -> Option<SystemTime> {
    // RFC 3339 in UTC (`Z`), as Graph answers; a fraction of a second is dropped.
    let at = humantime::parse_rfc3339(text.trim()).ok()?;
    let secs = at.duration_since(SystemTime::UNIX_EPOCH).ok()?.as_secs();
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifetimes_follow_the_resource() {
        let minutes = |r: &str, rich: bool| max_lifetime(r, rich).as_secs() / 60;
        assert_eq!(minutes("users", false), 41_760);
        assert_eq!(minutes("/groups", false), 41_760);
        assert_eq!(minutes("users/42/messages", false), 10_080);
        assert_eq!(minutes("me/events", true), 1_440);
        assert_eq!(minutes("chats/getAllMessages", false), 4_320);
        assert_eq!(minutes("teams/1/channels/2/messages", false), 4_320);
        assert_eq!(
            minutes("communications/presences?$filter=id in ('1')", false),
            60
        );
        assert_eq!(minutes("drives/1/root", false), 42_300);
        assert_eq!(
            minutes("security/alerts?$filter=status eq 'New'", false),
            43_200
        );
        assert_eq!(minutes("todo/lists/1/tasks", false), 4_230);
        assert_eq!(minutes("me/todo/lists/1/tasks", false), 4_230);
        assert_eq!(minutes("users/drive.admin@contoso.com", false), 41_760);
        assert_eq!(minutes("me/mailFolders('Inbox')/messages", false), 10_080);
        assert_eq!(minutes("sites/1/lists/2", false), 42_300);
        assert_eq!(minutes("me/drive/root", false), 42_300);
    }

    #[test]
    fn dates_round_trip() {
        for secs in [0u64, 951_782_400, 1_764_547_200, 4_102_444_799] {
            let at = SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
            assert_eq!(parse_time(&rfc3339(at)), Some(at), "{}", rfc3339(at));
        }
        assert_eq!(
            rfc3339(SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00Z"
        );
        let fraction = parse_time("2026-12-01T10:20:30.1234567Z").unwrap();
        assert_eq!(fraction, parse_time("2026-12-01T10:20:30Z").unwrap());
        for bad in [
            "",
            "2026-13-01T00:00:00Z",
            "yesterday",
            "2026-12-01",
            "2026-12-01T25:00:00Z",
        ] {
            assert_eq!(parse_time(bad), None, "{bad}");
        }
        assert_eq!(random_state().len(), 22);
        assert_ne!(random_state(), random_state());
    }
}
