//! Delta queries: keep a local copy of a Graph collection current without reading it
//! whole each time.
//!
//! A [`DeltaTracker`] runs rounds. A round follows `@odata.nextLink` page after page to
//! the `@odata.deltaLink`, using each link verbatim (and only on the client's Graph
//! origin). Each page goes to your handler as a [`DeltaPage`]: the items changed and the
//! items removed (`@removed`, with Graph's reason kept as an open string), an item that
//! appears twice in a page given once (its last occurrence, as Graph documents). The
//! tracker stores its place in a [`DeltaStore`] only after your handler has returned
//! `Ok` for the page: a crash between pages resumes from the first page not processed,
//! never skipping one.
//!
//! A full listing — the first round, and each resynchronization — is marked
//! [`DeltaPage::full`], with [`DeltaPage::resync`] on its first page: mark what it
//! names, and drop the rest of your copy at its last page. The tracker resynchronizes
//! when Graph cannot go on from a link — `410 Gone` (it follows the `Location`) or
//! `syncStateNotFound` (it starts the query again) — or when the stored link is not on
//! the client's Graph origin. A full listing that stops half-way (a crash, a failed
//! page) is started again from its beginning, so the marks always cover one whole
//! listing; an incremental round resumes at the page that failed.
//!
//! An item Graph repeats within a round (it may) is given again only when it changed:
//! an item identical to the last one given for its id (among the round's last 10,000
//! ids) is dropped — memory stays bounded, an older repeat is given again (the same
//! state applied twice), and a change undone within the round (A, B, A) reaches you each
//! time. An item carrying operations (a group's `members@delta`) is never dropped.
//! Within a page, each id comes once (its last occurrence, with the `…@delta` arrays of
//! all its occurrences).
//!
//! ```no_run
//! use std::sync::Arc;
//! use keel_graph_client::delta::{DeltaQuery, DeltaTracker, FileDeltaStore};
//! use keel_graph_client::model::User;
//! # async fn run(client: keel_graph_client::GraphClient) -> Result<(), Box<dyn std::error::Error>> {
//! let store = Arc::new(FileDeltaStore::new("/var/lib/my-service/delta")?);
//! let tracker = DeltaTracker::new(
//!     client,
//!     "contoso",
//!     DeltaQuery::users().select(["displayName", "mail"]),
//!     store,
//!     "contoso/users",
//! );
//! let mut local = std::collections::HashMap::new();
//! let round = tracker
//!     .round(|page: keel_graph_client::delta::DeltaPage<User>| {
//!         for user in page.changed {
//!             local.insert(user.id.clone(), user);
//!         }
//!         for gone in page.removed {
//!             local.remove(&gone.id);
//!         }
//!         async { Ok::<(), std::io::Error>(()) }
//!     })
//!     .await?;
//! println!("{} changed, {} removed", round.changed, round.removed);
//! # Ok(()) }
//! ```

mod feed;
mod group;
mod store;

use std::collections::HashMap;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde_json::Value;

pub use feed::{ChangeFeed, ChangeFeedBuilder, FeedError, FeedStatus};
pub use group::{GroupChange, MemberChange, MemberRemoved};
#[cfg(feature = "postgres")]
pub use store::PostgresDeltaStore;
#[cfg(feature = "redis")]
pub use store::RedisDeltaStore;
pub use store::{DeltaStore, FileDeltaStore, MemoryDeltaStore, StoreError, StoreFuture};

use crate::GraphClient;
use crate::error::GraphError;
use crate::request::GraphRequest;

/// The longest item id accepted, and the longest `@removed` reason kept.
const MAX_ID: usize = 256;
const MAX_REASON: usize = 64;
/// How many items a round remembers to drop identical repeats (a bounded window: an
/// older repeat is given again, which only applies the same state twice).
const REPEAT_WINDOW: usize = 10_000;
/// Resynchronizations one round may start before it gives up.
const MAX_RESYNCS: u32 = 3;

/// The first request of a delta query: which collection, which properties, and whether
/// to list it whole first or start from now.
///
/// ```
/// use keel_graph_client::delta::DeltaQuery;
///
/// let query = DeltaQuery::users().select(["displayName", "jobTitle"]).page_size(500);
/// # drop(query);
/// let from_now = DeltaQuery::groups().from_now();
/// # drop(from_now);
/// ```
#[derive(Clone, Debug)]
#[must_use]
pub struct DeltaQuery {
    path: String,
    select: Vec<String>,
    latest: bool,
    page_size: Option<u16>,
    version: Option<crate::ApiVersion>,
}

impl DeltaQuery {
    /// `/users/delta`.
    pub fn users() -> Self {
        Self::path("/users/delta")
    }

    /// `/groups/delta` (with `members@delta` when members are selected).
    pub fn groups() -> Self {
        Self::path("/groups/delta")
    }

    /// The tasks of a Planner plan (`/planner/plans/{id}/tasks/delta`), on Graph's
    /// `beta`, the only version that serves it, whatever the client's version. Planner
    /// takes no `$select` and no `$deltatoken=latest` on delta: leave them out. Graph
    /// sends no change notifications for Planner, so run its rounds on a timer
    /// ([`ChangeFeedBuilder::poll_every`]).
    ///
    /// ```
    /// use keel_graph_client::delta::DeltaQuery;
    ///
    /// let tasks = DeltaQuery::plan_tasks("xqQg5FS2LkCp935s-FIFm2QAFkHM").page_size(200);
    /// # drop(tasks);
    /// ```
    pub fn plan_tasks(plan_id: &str) -> Self {
        let mut query = Self::path(&format!("/planner/plans/{plan_id}/tasks/delta"));
        query.version = Some(crate::ApiVersion::Beta);
        query
    }

    /// Any delta function, by its path after the version (`/me/mailFolders/delta`).
    pub fn path(path: &str) -> Self {
        DeltaQuery {
            path: path.to_owned(),
            select: Vec::new(),
            latest: false,
            page_size: None,
            version: None,
        }
    }

    /// On this API version instead of the client's.
    pub fn version(mut self, version: crate::ApiVersion) -> Self {
        self.version = Some(version);
        self
    }

    /// Only these properties (changes to others are not tracked, as Graph documents).
    pub fn select<I, S>(mut self, fields: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.select = fields.into_iter().map(Into::into).collect();
        self
    }

    /// Skip the full listing: the first round ends at once with a delta link from now
    /// (`$deltatoken=latest`, which Graph supports for directory objects).
    pub fn from_now(mut self) -> Self {
        self.latest = true;
        self
    }

    /// At most `n` items a page (`Prefer: odata.maxpagesize`; Graph may send fewer).
    pub fn page_size(mut self, n: u16) -> Self {
        self.page_size = Some(n.max(1));
        self
    }

    /// The request of each page: the first one's query options, and the page size
    /// preference that every page repeats.
    fn request(&self, first: bool) -> GraphRequest {
        let mut request = GraphRequest::get(&self.path);
        if let Some(version) = self.version {
            request = request.version(version);
        }
        if first && !self.select.is_empty() {
            request = request.select(&self.select);
        }
        if first && self.latest {
            request = request.delta_from_now();
        }
        if let Some(n) = self.page_size {
            request = request.header("prefer", &format!("odata.maxpagesize={n}"));
        }
        request
    }
}

/// One page of a round, for your handler.
#[derive(Debug)]
#[non_exhaustive]
pub struct DeltaPage<T> {
    /// Items created or changed (restored ones too), each id once in the page (its last
    /// occurrence); an item identical to the last one given for its id earlier in the
    /// round is dropped (see the module's documentation).
    pub changed: Vec<T>,
    /// Items removed, each id once in the page.
    pub removed: Vec<Removed>,
    /// The page belongs to a full listing (the first round, or a resynchronization):
    /// what the round's pages do not name is gone.
    pub full: bool,
    /// The first page of a full listing (the first round, a resynchronization, or a
    /// full listing started again after it stopped half-way): start marking here.
    pub resync: bool,
    /// The last page of the round.
    pub last: bool,
}

/// An item Graph reports removed.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Removed {
    /// Its id.
    pub id: String,
    /// Graph's reason: `changed` (deleted, restorable) or `deleted` (gone for good) for
    /// directory objects; kept as sent (at most 64 characters) for others.
    pub reason: String,
}

/// What a round did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RoundSummary {
    /// Pages processed.
    pub pages: u64,
    /// Changed items given to the handler.
    pub changed: u64,
    /// Removed items given to the handler.
    pub removed: u64,
    /// Resynchronizations started in the round.
    pub resyncs: u32,
    /// The round was a full listing.
    pub full: bool,
}

/// Why a round stopped. The stored link is where the next round resumes: the page
/// that failed is read again.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeltaError {
    /// Graph failed the request (after the client's retries).
    #[error("delta: {0}")]
    Graph(#[from] GraphError),
    /// The store failed: the page was processed but the tracker's place was not saved,
    /// so the page will be given again.
    #[error("delta: {0}")]
    Store(#[from] StoreError),
    /// Your handler failed the page: it will be given again.
    #[error("delta: the handler failed a page: {0}")]
    Handler(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A page was not a delta page (no `value` array, an item without a string `id`, an
    /// item that does not fit your type, a malformed `@removed`).
    #[error("delta: malformed page: {0}; the page will be read again on the next round")]
    Malformed(String),
    /// Graph asked for more resynchronizations in one round than the tracker starts
    /// (three); try again later.
    #[error("delta: Graph asked to resynchronize {0} times in one round; try again later")]
    TooManyResyncs(u32),
}

/// The tracker's place, as stored: the next link, and whether the round it belongs to
/// is a full listing (then `link` is that listing's first page: a listing that stopped
/// half-way starts again).
#[derive(serde::Serialize, serde::Deserialize)]
struct Place {
    link: String,
    full: bool,
}

/// Runs the rounds of one delta query for one tenant, keeping its place in a store.
#[derive(Clone)]
pub struct DeltaTracker {
    client: GraphClient,
    tenant: String,
    query: DeltaQuery,
    store: Arc<dyn DeltaStore>,
    key: String,
    /// One round at a time among this tracker and its clones.
    running: Arc<tokio::sync::Mutex<()>>,
}

impl std::fmt::Debug for DeltaTracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeltaTracker")
            .field("tenant", &self.tenant)
            .field("query", &self.query)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl DeltaTracker {
    /// A tracker of `query` for `tenant`, keeping its place under `key` in `store`
    /// (one key per tenant and query: two trackers sharing a key share a place).
    pub fn new(
        client: GraphClient,
        tenant: &str,
        query: DeltaQuery,
        store: Arc<dyn DeltaStore>,
        key: &str,
    ) -> Self {
        DeltaTracker {
            client,
            tenant: tenant.to_owned(),
            query,
            store,
            key: key.to_owned(),
            running: Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    /// Forgets the stored place: the next round lists the collection whole.
    ///
    /// # Errors
    /// [`DeltaError::Store`].
    pub async fn reset(&self) -> Result<(), DeltaError> {
        Ok(self.store.remove(&self.key).await?)
    }

    /// Runs one round: from the stored place (or the query's start), each page to
    /// `apply`, the place saved after each page `apply` accepted, until the delta link.
    ///
    /// # Errors
    /// [`DeltaError`]; the stored place is the first page not processed.
    pub async fn round<T, F, Fut, E>(&self, mut apply: F) -> Result<RoundSummary, DeltaError>
    where
        T: DeserializeOwned,
        F: FnMut(DeltaPage<T>) -> Fut,
        Fut: Future<Output = Result<(), E>>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let _one_at_a_time = self.running.lock().await;
        let cloud = self.client.cloud();
        // A full listing's start: the query without `$deltatoken=latest`.
        let listing = DeltaQuery {
            latest: false,
            ..self.query.clone()
        }
        .request(true)
        .url(cloud, self.client.api_version())
        .map_err(GraphError::from)?;
        let (mut link, mut full, mut resync) = match self.store.load(&self.key).await? {
            Some(stored) => {
                let place: Place =
                    serde_json::from_str(&stored).map_err(|_| StoreError::Corrupt {
                        key: self.key.chars().take(64).collect(),
                    })?;
                if !cloud.is_graph_url(&place.link) {
                    // Stored for another origin (or damaged): list again.
                    tracing::warn!(key = %self.key, "delta: the stored link is not on this client's Graph origin; listing the collection again");
                    (listing.clone(), true, true)
                } else {
                    // A full listing stored is started again from its first page.
                    (place.link, place.full, place.full)
                }
            }
            None if self.query.latest => (
                self.query
                    .request(true)
                    .url(cloud, self.client.api_version())
                    .map_err(GraphError::from)?,
                false,
                false,
            ),
            None => (listing.clone(), true, true),
        };
        if full {
            self.save(&link, true).await?;
        }
        let request = self.query.request(false);
        let mut summary = RoundSummary::default();
        let mut given = Given::default();
        let max_pages = self.client.max_pages();
        loop {
            if summary.pages >= max_pages as u64 {
                return Err(GraphError::TooManyPages(max_pages).into());
            }
            let response = match self.client.send_url(&self.tenant, &request, &link).await {
                Ok(response) => response,
                Err(error) => match restart_from(&error) {
                    Some(location) => {
                        summary.resyncs += 1;
                        metrics::counter!("graph_delta_resyncs_total").increment(1);
                        if summary.resyncs > MAX_RESYNCS {
                            return Err(DeltaError::TooManyResyncs(summary.resyncs));
                        }
                        tracing::warn!(
                            key = %self.key,
                            status = error.status().map_or(0, |s| s.as_u16()),
                            "delta: Graph cannot go on from the stored link; listing the collection again"
                        );
                        link = location
                            .filter(|l| cloud.is_graph_url(l))
                            .map_or_else(|| listing.clone(), str::to_owned);
                        full = true;
                        resync = true;
                        given.clear();
                        self.save(&link, true).await?;
                        continue;
                    }
                    None => return Err(error.into()),
                },
            };
            let page = parse::<T>(&response.body, &mut given)?;
            for next in page.next_link.iter().chain(page.delta_link.iter()) {
                if !cloud.is_graph_url(next) {
                    return Err(GraphError::ForeignUrl.into());
                }
            }
            let last = page.delta_link.is_some();
            summary.pages += 1;
            summary.changed += page.changed.len() as u64;
            summary.removed += page.removed.len() as u64;
            summary.full |= full;
            metrics::counter!("graph_delta_pages_total").increment(1);
            apply(DeltaPage {
                changed: page.changed,
                removed: page.removed,
                full,
                resync,
                last,
            })
            .await
            .map_err(|e| DeltaError::Handler(e.into()))?;
            resync = false;
            match (page.next_link, page.delta_link) {
                (None, Some(delta)) => {
                    self.save(&delta, false).await?;
                    return Ok(summary);
                }
                (Some(next), None) => {
                    // A full listing keeps its first page stored until it ends.
                    if !full {
                        self.save(&next, false).await?;
                    }
                    link = next;
                }
                _ => {
                    return Err(DeltaError::Malformed(
                        "a page needs either @odata.nextLink or @odata.deltaLink, not both or neither".into(),
                    ));
                }
            }
        }
    }

    async fn save(&self, link: &str, full: bool) -> Result<(), StoreError> {
        let place = serde_json::to_string(&Place {
            link: link.to_owned(),
            full,
        })
        .unwrap_or_default();
        self.store.save(&self.key, &place).await
    }
}

/// Where to start again when `error` says Graph cannot go on from a link: `Some` with
/// the `Location` of a `410 Gone` (or `None` inside: the query's start), `None` when
/// the error is not one of those.
fn restart_from(error: &GraphError) -> Option<Option<&str>> {
    let api = error.api()?;
    let sync_state_lost = api.code().eq_ignore_ascii_case("syncStateNotFound")
        || api.code().eq_ignore_ascii_case("resyncRequired")
        || api
            .inner_codes()
            .iter()
            .any(|c| c.eq_ignore_ascii_case("syncStateNotFound"));
    if api.status() == http::StatusCode::GONE {
        Some(api.location())
    } else if sync_state_lost {
        Some(None)
    } else {
        None
    }
}

/// A delta page, checked.
struct Parsed<T> {
    changed: Vec<T>,
    removed: Vec<Removed>,
    next_link: Option<String>,
    delta_link: Option<String>,
}

/// Checks a page; drops items identical to one given earlier in the round (`given`
/// holds a hash of each item given).
fn parse<T: DeserializeOwned>(body: &[u8], given: &mut Given) -> Result<Parsed<T>, DeltaError> {
    let malformed = |what: &str| DeltaError::Malformed(what.to_owned());
    let Value::Object(mut page) =
        serde_json::from_slice::<Value>(body).map_err(|_| malformed("not JSON"))?
    else {
        return Err(malformed("not a JSON object"));
    };
    let link = |page: &mut serde_json::Map<String, Value>, name: &str| match page.remove(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(link)) => Ok(Some(link)),
        Some(_) => Err(DeltaError::Malformed(format!("{name} is not a string"))),
    };
    let next_link = link(&mut page, "@odata.nextLink")?;
    let delta_link = link(&mut page, "@odata.deltaLink")?;
    let Some(Value::Array(mut items)) = page.remove("value") else {
        return Err(malformed("no value array"));
    };
    // The last occurrence of each id wins.
    let mut last: HashMap<String, usize> = HashMap::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let id = match item.get("id") {
            Some(Value::String(id)) if !id.is_empty() && id.len() <= MAX_ID => id,
            _ => {
                return Err(DeltaError::Malformed(format!(
                    "item {i} has no string id (of at most {MAX_ID} bytes)"
                )));
            }
        };
        last.insert(id.clone(), i);
    }
    merge_annotations(&mut items, &last);
    let mut changed = Vec::with_capacity(items.len());
    let mut removed = Vec::new();
    for (i, item) in items.into_iter().enumerate() {
        let id = item.get("id").and_then(Value::as_str).unwrap_or_default();
        if last.get(id) != Some(&i) {
            continue;
        }
        // A repeat is dropped only when it is what was last given for its id; an item
        // that carries operations (`members@delta`) is never dropped.
        let operations = item
            .as_object()
            .is_some_and(|o| o.keys().any(|k| k.ends_with("@delta")));
        if !operations && !given.insert(id_hash(id), fingerprint(&item)) {
            continue;
        }
        match item.get("@removed") {
            None => {
                let typed = serde_json::from_value::<T>(item).map_err(|e| {
                    DeltaError::Malformed(format!(
                        "item {i} does not fit the type: {}",
                        e.to_string().chars().take(200).collect::<String>()
                    ))
                })?;
                changed.push(typed);
            }
            Some(Value::Object(annotation)) => {
                let reason = match annotation.get("reason") {
                    Some(Value::String(r)) => r.chars().take(MAX_REASON).collect(),
                    None | Some(Value::Null) => String::new(),
                    Some(_) => {
                        return Err(DeltaError::Malformed(format!(
                            "item {i}: @removed.reason is not a string"
                        )));
                    }
                };
                removed.push(Removed {
                    id: id.to_owned(),
                    reason,
                });
            }
            Some(_) => {
                return Err(DeltaError::Malformed(format!(
                    "item {i}: @removed is not an object"
                )));
            }
        }
    }
    Ok(Parsed {
        changed,
        removed,
        next_link,
        delta_link,
    })
}

/// An id's earlier occurrences in a page give their `…@delta` arrays (a group's
/// `members@delta`, which Graph may spread over several occurrences) to its last
/// occurrence, in order: nothing of them is lost when the last occurrence wins.
fn merge_annotations(items: &mut [Value], last: &HashMap<String, usize>) {
    if items.len() == last.len() {
        return; // No id twice.
    }
    let mut carried: HashMap<String, serde_json::Map<String, Value>> = HashMap::new();
    for (i, item) in items.iter_mut().enumerate() {
        let Value::Object(fields) = item else {
            continue;
        };
        let Some(id) = fields.get("id").and_then(Value::as_str).map(str::to_owned) else {
            continue;
        };
        let is_last = last.get(&id) == Some(&i);
        let pending = carried.entry(id.clone()).or_default();
        if is_last {
            for (key, earlier) in std::mem::take(pending) {
                let Value::Array(mut merged) = earlier else {
                    continue;
                };
                if let Some(Value::Array(own)) = fields.remove(&key) {
                    merged.extend(own);
                }
                fields.insert(key, Value::Array(merged));
            }
        } else {
            let keys: Vec<String> = fields
                .keys()
                .filter(|k| k.ends_with("@delta"))
                .cloned()
                .collect();
            for key in keys {
                if let Some(Value::Array(values)) = fields.remove(&key)
                    && let Value::Array(so_far) = pending
                        .entry(key)
                        .or_insert_with(|| Value::Array(Vec::new()))
                {
                    so_far.extend(values);
                }
            }
        }
    }
}

/// What was last given for each of the round's latest ids (at most [`REPEAT_WINDOW`]
/// ids): an item is a repeat only when it is identical to the last one given for its
/// id, so a change and its undoing (A, B, A) all reach the handler.
#[derive(Default)]
struct Given {
    last: HashMap<u64, u64>,
    order: std::collections::VecDeque<u64>,
}

impl Given {
    /// False when `fingerprint` is what was last given for `id`.
    fn insert(&mut self, id: u64, fingerprint: u64) -> bool {
        match self.last.insert(id, fingerprint) {
            Some(previous) if previous == fingerprint => return false,
            Some(_) => return true,
            None => {}
        }
        self.order.push_back(id);
        if self.order.len() > REPEAT_WINDOW
            && let Some(oldest) = self.order.pop_front()
        {
            self.last.remove(&oldest);
        }
        true
    }

    fn clear(&mut self) {
        self.last.clear();
        self.order.clear();
    }
}

/// A hash of an id.
fn id_hash(id: &str) -> u64 {
    use std::hash::{Hash as _, Hasher as _};
    let mut hasher = std::hash::DefaultHasher::new();
    id.hash(&mut hasher);
    hasher.finish()
}

/// A hash of an item as sent (a fixed hasher: the same item, the same hash).
fn fingerprint(item: &Value) -> u64 {
    use std::hash::{Hash as _, Hasher as _};
    let mut hasher = std::hash::DefaultHasher::new();
    serde_json::to_vec(item)
        .unwrap_or_default()
        .hash(&mut hasher);
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug, PartialEq)]
    struct Item {
        id: String,
        #[serde(rename = "displayName")]
        name: Option<String>,
    }

    #[test]
    fn the_last_occurrence_of_an_id_wins_across_changes_and_removals() {
        let page = br#"{"value":[
            {"id":"a","displayName":"first"},
            {"id":"b","displayName":"kept"},
            {"id":"a","displayName":"second"},
            {"id":"c","displayName":"then removed"},
            {"id":"c","@removed":{"reason":"changed"}}
        ],"@odata.nextLink":"https://graph.microsoft.com/v1.0/users/delta?$skiptoken=x"}"#;
        let mut given = Given::default();
        let parsed = parse::<Item>(page, &mut given).unwrap();
        assert_eq!(
            parsed.changed,
            vec![
                Item {
                    id: "b".into(),
                    name: Some("kept".into())
                },
                Item {
                    id: "a".into(),
                    name: Some("second".into())
                },
            ]
        );
        assert_eq!(
            parsed.removed,
            vec![Removed {
                id: "c".into(),
                reason: "changed".into()
            }]
        );
        assert!(parsed.delta_link.is_none());
        // The same page again in the round: nothing new; a changed item is given.
        let again = parse::<Item>(page, &mut given).unwrap();
        assert!(again.changed.is_empty() && again.removed.is_empty());
        let changed = br#"{"value":[{"id":"b","displayName":"changed"}]}"#;
        assert_eq!(parse::<Item>(changed, &mut given).unwrap().changed.len(), 1);
    }

    #[test]
    fn a_groups_members_spread_over_occurrences_in_a_page_are_all_kept() {
        let page = br#"{"value":[
            {"id":"g","displayName":"old","members@delta":[{"id":"u1"},{"id":"u2"}]},
            {"id":"h","members@delta":[{"id":"u9"}]},
            {"id":"g","displayName":"new","members@delta":[{"id":"u3","@removed":{"reason":"deleted"}}]}
        ],"@odata.deltaLink":"https://graph.microsoft.com/v1.0/groups/delta?$deltatoken=x"}"#;
        let parsed = parse::<GroupChange>(page, &mut Given::default()).unwrap();
        assert_eq!(parsed.changed.len(), 2);
        let g = parsed.changed.iter().find(|c| c.group.id == "g").unwrap();
        assert_eq!(
            g.group.display_name.as_deref(),
            Some("new"),
            "the last occurrence wins"
        );
        let members: Vec<(&str, bool)> = g
            .members
            .iter()
            .map(|m| (m.id.as_str(), m.is_removed()))
            .collect();
        assert_eq!(members, [("u1", false), ("u2", false), ("u3", true)]);
    }

    #[test]
    fn a_change_undone_within_a_round_reaches_the_handler_each_time() {
        let mut given = Given::default();
        let page = |name: &str| {
            format!(r#"{{"value":[{{"id":"a","displayName":"{name}"}}]}}"#).into_bytes()
        };
        for (name, given_again) in [("A", true), ("B", true), ("A", true), ("A", false)] {
            let parsed = parse::<Item>(&page(name), &mut given).unwrap();
            assert_eq!(parsed.changed.len() == 1, given_again, "{name}");
        }
        // Operations are never taken for repeats: add, remove, add again.
        let ops = |op: &str| {
            format!(r#"{{"value":[{{"id":"g","members@delta":[{{"id":"u"{op}}}]}}]}}"#).into_bytes()
        };
        for op in ["", r#","@removed":{"reason":"deleted"}"#, ""] {
            let parsed = parse::<GroupChange>(&ops(op), &mut given).unwrap();
            assert_eq!(parsed.changed.len(), 1);
        }
    }

    mod properties {
        use super::super::*;
        use proptest::prelude::*;

        /// JSON with the keys a delta page has, nested, odd values anywhere.
        fn json_value() -> impl Strategy<Value = Value> {
            crate::arbitrary_json::json_value(
                &[
                    "value",
                    "id",
                    "@removed",
                    "reason",
                    "members@delta",
                    "displayName",
                    "@odata.nextLink",
                    "@odata.deltaLink",
                ],
                &[
                    "a",
                    "b",
                    "https://graph.microsoft.com/v1.0/users/delta?$skiptoken=x",
                ],
            )
        }

        /// Pages shaped like Graph's: items with a few ids (repeats likely), some
        /// removed, some with members@delta.
        fn page() -> impl Strategy<Value = Value> {
            let item = (
                "[a-d]",
                prop::option::of("[a-z]{0,4}"),
                any::<bool>(),
                prop::option::of(prop::collection::vec("[u-z]", 0..4)),
            )
                .prop_map(|(id, name, removed, members)| {
                    let mut item = serde_json::json!({"id": id});
                    if let Some(name) = name {
                        item["displayName"] = Value::String(name);
                    }
                    if removed {
                        item["@removed"] = serde_json::json!({"reason": "deleted"});
                    }
                    if let Some(members) = members {
                        item["members@delta"] = members
                            .into_iter()
                            .map(|m| serde_json::json!({"id": m}))
                            .collect();
                    }
                    item
                });
            (prop::collection::vec(item, 0..12), any::<bool>()).prop_map(|(items, last)| {
                let link = if last { "@odata.deltaLink" } else { "@odata.nextLink" };
                serde_json::json!({"value": items, link: "https://graph.microsoft.com/v1.0/groups/delta?$x=1"})
            })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            /// Any JSON: a page or a typed error, never a panic.
            #[test]
            fn any_json_is_a_page_or_a_typed_error(body in json_value()) {
                let bytes = serde_json::to_vec(&body).unwrap();
                let _ = parse::<GroupChange>(&bytes, &mut Given::default());
                let _ = parse::<serde_json::Map<String, Value>>(&bytes, &mut Given::default());
            }

            /// Graph-shaped pages: each id once; every member of every occurrence of a
            /// kept id given, in order.
            #[test]
            fn each_id_once_and_no_member_lost(body in page()) {
                let bytes = serde_json::to_vec(&body).unwrap();
                let parsed = parse::<GroupChange>(&bytes, &mut Given::default()).unwrap();
                let mut ids: Vec<&str> = parsed.changed.iter().map(|c| c.group.id.as_str())
                    .chain(parsed.removed.iter().map(|r| r.id.as_str()))
                    .collect();
                let all = ids.len();
                ids.sort_unstable();
                ids.dedup();
                prop_assert_eq!(ids.len(), all);
                let items = body["value"].as_array().unwrap();
                for change in &parsed.changed {
                    let expected: Vec<String> = items
                        .iter()
                        .filter(|i| i["id"] == change.group.id.as_str())
                        .flat_map(|i| i["members@delta"].as_array().cloned().unwrap_or_default())
                        .map(|m| m["id"].as_str().unwrap().to_owned())
                        .collect();
                    let given: Vec<String> = change.members.iter().map(|m| m.id.clone()).collect();
                    prop_assert_eq!(given, expected);
                }
            }
        }
    }

    #[test]
    fn hostile_pages_are_typed_errors() {
        for body in [
            &b"not json"[..],
            b"[]",
            br#"{"value":{}}"#,
            br#"{"value":[{"displayName":"no id"}]}"#,
            br#"{"value":[{"id":7}]}"#,
            br#"{"value":[{"id":""}]}"#,
            br#"{"value":[{"id":"a","@removed":"gone"}]}"#,
            br#"{"value":[{"id":"a","@removed":{"reason":5}}]}"#,
            br#"{"value":[{"id":"a","displayName":12}]}"#,
            br#"{"value":[],"@odata.nextLink":5}"#,
        ] {
            assert!(
                matches!(
                    parse::<Item>(body, &mut Default::default()),
                    Err(DeltaError::Malformed(_))
                ),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        let long_id = format!(r#"{{"value":[{{"id":"{}"}}]}}"#, "x".repeat(MAX_ID + 1));
        assert!(parse::<Item>(long_id.as_bytes(), &mut Default::default()).is_err());
        // An unknown reason is kept, cut to 64 characters.
        let odd = format!(
            r#"{{"value":[{{"id":"a","@removed":{{"reason":"{}"}}}}]}}"#,
            "r".repeat(500)
        );
        let parsed = parse::<Item>(odd.as_bytes(), &mut Default::default()).unwrap();
        assert_eq!(parsed.removed[0].reason.len(), MAX_REASON);
    }
}
