//! An in-process emulator of Microsoft Graph and of the Entra ID v2 token endpoint
//! (feature `emulator`), for this crate's tests and for yours.
//!
//! It serves HTTP (or HTTPS) on a loopback port and behaves as Microsoft documents: the
//! client-credentials and jwt-bearer (on-behalf-of) grants, with a client secret or a
//! certificate's client assertion, at `{base}/{tenant}/oauth2/v2.0/token` (tokens signed with a
//! keel-token-manager key ring, published at `{base}/{tenant}/discovery/v2.0/keys` and
//! described at `{base}/{tenant}/v2.0/.well-known/openid-configuration`); every Graph
//! call checks its bearer token (signature, issuer, audience, tenant, expiry) and its
//! application permissions (`roles`) or delegated ones (`scope`, from on-behalf-of),
//! and sees only its own tenant's data. Graph's
//! answers carry `request-id`, echo `client-request-id`, and fail with Graph's error
//! body. Faults are injected by rule ([`FaultRule`]).
//!
//! Served under `/v1.0` and `/beta`, with paging (`$top`, `@odata.nextLink`),
//! `$select`, `$filter` (`eq`, `startswith`) and `$count` (with `ConsistencyLevel:
//! eventual`) on every collection:
//!
//! | resource | routes | permissions (any of) |
//! |---|---|---|
//! | users | `/users`, `/users/{id or upn}`, `/me` (delegated tokens) | `User.Read.All`, `Directory.Read.All` |
//! | delta | `/users/delta` (also `microsoft.graph.delta`): rounds of `$skiptoken` pages ending in a `$deltatoken` link, `@removed` with `changed` / `deleted`, `$deltatoken=latest`, `$select` carried in the tokens, `Prefer: odata.maxpagesize`; changes made with [`Emulator::update_user`], [`Emulator::add_user`], [`Emulator::delete_user`]; [`Emulator::reset_delta`] makes older links fail (410 with `Location`, or 400 `syncStateNotFound`), [`Emulator::replay_delta_items`] repeats items across pages | `User.Read.All`, `Directory.Read.All` |
//! | groups | `/groups`, `/groups/{id}`, `/groups/{id}/members` | `Group.Read.All`, `GroupMember.Read.All` |
//! | teams | `/teams/{id}`, `/teams/{id}/channels` | `Team.ReadBasic.All`, `Channel.ReadBasic.All`, `Group.Read.All` |
//! | Planner | `/groups/{id}/planner/plans`, `/planner/plans/{id}` (`/buckets`, `/tasks`), `/planner/buckets/{id}`, `POST /planner/tasks`, `/planner/tasks/{id}` (GET, PATCH, DELETE), `/planner/tasks/{id}/details` (GET, PATCH) | `Tasks.ReadWrite.All` (`Tasks.Read.All` to read) |
//! | mail | `/users/{id}/messages`, within Outlook's limits per mailbox ([`Emulator::mailbox`]) | `Mail.Read` |
//! | batching | `POST /$batch`: at most 20 requests, `dependsOn`, 424 | those of each request |
//!
//! Planner writes need `If-Match` with the item's `@odata.etag` (412 when stale) and
//! answer 204, or 200 with the item under `Prefer: return=representation`.
//!
//! Known differences from Entra ID: tokens carry keel-token-manager's claim names
//! (`scope` for delegated permissions, `client_id`, `sub` as the user's object id), not
//! Entra's `scp`, `azp`, `oid` and pairwise `sub`; code that reads those claims itself
//! sees them differently here. A delegated token reads `/me` and its own user's
//! mailbox; Planner does not check group membership for delegated tokens.
//!
//! ```
//! use keel_graph_client::emulator::{Emulator, FaultRule};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let graph = Emulator::start_default().await.unwrap();
//! let tenant = &graph.tenants()[0];
//! assert_eq!(tenant.domain(), "contoso.onmicrosoft.com");
//! let token_url = graph.token_endpoint(tenant.id());
//! assert!(token_url.starts_with("http://127.0.0.1:"));
//! // One 429 with `Retry-After: 2` for the next call to /v1.0/users:
//! graph.faults().add(FaultRule::path("/v1.0/users").throttle("2").times(1));
//! # }
//! ```

mod batch;
pub(crate) mod call;
mod delta;
mod directory;
mod faults;
mod graph;
mod groups;
mod mailbox;
mod planner;
mod subscriptions;
mod tls;
mod token;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use keel_token_manager::{Algorithm, KeyRing, SigningKey, Validator};

use crate::cloud::Cloud;
pub use directory::{DeltaReset, TenantSeed};
pub use faults::{Fault, FaultRule, Faults};
pub use mailbox::MailboxStats;

/// The audience of Graph tokens (what Entra ID puts in `aud` for Graph).
pub const GRAPH_AUDIENCE: &str = "https://graph.microsoft.com";

/// The application permissions of the default tenants' client `app`.
pub const DEFAULT_ROLES: &[&str] = &[
    "User.Read.All",
    "Group.Read.All",
    "GroupMember.Read.All",
    "Team.ReadBasic.All",
    "Channel.ReadBasic.All",
    "Tasks.ReadWrite.All",
    "Mail.Read",
];

/// A running emulator; dropping it stops the server.
#[derive(Debug)]
pub struct Emulator {
    state: Arc<State>,
    addr: SocketAddr,
    server: tokio::task::JoinHandle<()>,
    certificate: Option<String>,
}

/// What the routes share.
#[derive(Debug)]
pub(crate) struct State {
    pub(crate) base: String,
    pub(crate) tenants: Vec<directory::Tenant>,
    pub(crate) keys: KeyRing,
    pub(crate) validator: Validator,
    pub(crate) faults: Faults,
    pub(crate) mailboxes: mailbox::Mailboxes,
    pub(crate) assertions: token::SeenAssertions,
    pub(crate) graph_requests: AtomicU64,
    pub(crate) batch_requests: AtomicU64,
    pub(crate) token_requests: AtomicU64,
    pub(crate) next_request_id: AtomicU64,
    pub(crate) subscriptions: subscriptions::Subscriptions,
    pub(crate) clock: Arc<dyn keel_resilience::clock::WallClock>,
}

impl State {
    pub(crate) fn tenant(&self, id_or_domain: &str) -> Option<&directory::Tenant> {
        self.tenants.iter().find(|t| {
            t.seed.id.eq_ignore_ascii_case(id_or_domain)
                || t.seed.domain.eq_ignore_ascii_case(id_or_domain)
        })
    }

    pub(crate) fn request_id(&self) -> String {
        let n = self.next_request_id.fetch_add(1, Ordering::Relaxed);
        format!("{:08x}-e7a0-4c1e-9000-{n:012x}", std::process::id())
    }
}

/// Why the emulator could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EmulatorError {
    /// No loopback port could be bound.
    #[error("could not bind a loopback port")]
    Bind(#[source] std::io::Error),
    /// The signing key could not be made.
    #[error("could not make the emulator's signing key")]
    Key(#[source] keel_token_manager::KeyError),
    /// Two tenants share an id or a domain, or an id is not a GUID.
    #[error("tenant ids must be distinct GUIDs and domains distinct")]
    Tenants,
    /// The self-signed certificate or the TLS configuration could not be made.
    #[error("could not make the emulator's TLS certificate")]
    Tls(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// Seeds and starts an [`Emulator`].
#[derive(Debug, Default)]
#[must_use]
pub struct EmulatorBuilder {
    tenants: Vec<TenantSeed>,
    https: bool,
    clock: Option<Arc<dyn keel_resilience::clock::WallClock>>,
}

impl EmulatorBuilder {
    /// Adds a tenant.
    pub fn tenant(mut self, tenant: TenantSeed) -> Self {
        self.tenants.push(tenant);
        self
    }

    /// Serves HTTPS with a self-signed certificate made at start (for `127.0.0.1` and
    /// `localhost`), for clients that refuse `http://` authorities, such as MSAL. Trust
    /// [`Emulator::certificate_pem`] in the client ([`Emulator::http_client`] does).
    pub fn https(mut self) -> Self {
        self.https = true;
        self
    }

    /// The wall clock subscriptions expire by (the system's unless set): share a
    /// `ManualClock` with the code under test to see renewals and expiries without
    /// waiting days.
    pub fn clock(mut self, clock: Arc<dyn keel_resilience::clock::WallClock>) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Binds `127.0.0.1` on a free port and starts serving, on the current tokio
    /// runtime.
    ///
    /// # Errors
    /// [`EmulatorError`] when no port can be bound, or the tenants collide.
    pub async fn start(self) -> Result<Emulator, EmulatorError> {
        let mut ids: Vec<String> = self
            .tenants
            .iter()
            .map(|t| t.id.to_ascii_lowercase())
            .collect();
        let mut domains: Vec<String> = self
            .tenants
            .iter()
            .map(|t| t.domain.to_ascii_lowercase())
            .collect();
        ids.sort();
        ids.dedup();
        domains.sort();
        domains.dedup();
        if ids.len() != self.tenants.len()
            || domains.len() != self.tenants.len()
            || !self.tenants.iter().all(|t| crate::request::is_guid(&t.id))
        {
            return Err(EmulatorError::Tenants);
        }
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .map_err(EmulatorError::Bind)?;
        let addr = listener.local_addr().map_err(EmulatorError::Bind)?;
        let tls = if self.https {
            Some(tls::Tls::generate().map_err(EmulatorError::Tls)?)
        } else {
            None
        };
        let base = format!("{}://{addr}", if tls.is_some() { "https" } else { "http" });
        let keys = KeyRing::new(
            SigningKey::generate("emulator-1", Algorithm::ES256).map_err(EmulatorError::Key)?,
        );
        let validator = Validator::new(
            keys.clone(),
            format!("{base}/{{tenantid}}/v2.0"),
            GRAPH_AUDIENCE,
        )
        .tenants(self.tenants.iter().map(|t| t.id.to_ascii_lowercase()))
        .accept_types(&["JWT"]);
        let tenants = self
            .tenants
            .into_iter()
            .enumerate()
            .map(|(i, seed)| directory::Tenant::new(seed, i))
            .collect();
        let state = Arc::new(State {
            base,
            tenants,
            keys,
            validator,
            faults: Faults::default(),
            mailboxes: mailbox::Mailboxes::default(),
            assertions: token::SeenAssertions::default(),
            graph_requests: AtomicU64::new(0),
            batch_requests: AtomicU64::new(0),
            token_requests: AtomicU64::new(0),
            next_request_id: AtomicU64::new(1),
            subscriptions: subscriptions::Subscriptions::default(),
            clock: self
                .clock
                .clone()
                .unwrap_or_else(|| Arc::new(keel_resilience::clock::SystemClock)),
        });
        let app = app(state.clone());
        let certificate = tls.as_ref().map(|t| t.certificate_pem.clone());
        let server = match tls {
            None => tokio::spawn(async move {
                let _ = axum::serve(listener, app).await;
            }),
            Some(tls) => tokio::spawn(tls::serve(listener, tls.acceptor, app)),
        };
        Ok(Emulator {
            state,
            addr,
            server,
            certificate,
        })
    }
}

impl Emulator {
    /// A builder, to seed tenants.
    pub fn builder() -> EmulatorBuilder {
        EmulatorBuilder::default()
    }

    /// Two tenants, `contoso.onmicrosoft.com` (250 users, 6 groups of which 3 are
    /// teams) and `fabrikam.onmicrosoft.com` (20 users, 2 groups), each with a client
    /// `app` whose secret is `secret` and which holds [`DEFAULT_ROLES`].
    ///
    /// # Errors
    /// As [`EmulatorBuilder::start`].
    pub async fn start_default() -> Result<Emulator, EmulatorError> {
        Self::builder()
            .tenant(
                TenantSeed::new(
                    "7b1c2a4e-0f1d-4c55-9a3e-2d6f1b0c0001",
                    "contoso.onmicrosoft.com",
                )
                .client("app", "secret", DEFAULT_ROLES.iter().copied())
                .users(250)
                .groups(6),
            )
            .tenant(
                TenantSeed::new(
                    "7b1c2a4e-0f1d-4c55-9a3e-2d6f1b0c0002",
                    "fabrikam.onmicrosoft.com",
                )
                .client("app", "secret", DEFAULT_ROLES.iter().copied())
                .users(20)
                .groups(2),
            )
            .start()
            .await
    }

    /// The base URL (`http://127.0.0.1:{port}`), for Graph and login alike.
    #[must_use]
    pub fn base_url(&self) -> &str {
        &self.state.base
    }

    /// The socket address served.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A [`Cloud`] whose Graph and login hosts are this emulator.
    #[must_use]
    pub fn cloud(&self) -> Cloud {
        Cloud::loopback(self.addr, self.certificate.is_some())
    }

    /// The PEM of the self-signed certificate served, when started with
    /// [`EmulatorBuilder::https`].
    #[must_use]
    pub fn certificate_pem(&self) -> Option<&str> {
        self.certificate.as_deref()
    }

    /// A reqwest client that trusts this emulator's certificate (a plain one over HTTP),
    /// without redirects, with a 30 s timeout: pass it to
    /// [`GraphClientBuilder::http_client`](crate::GraphClientBuilder::http_client) and to
    /// keel-token-manager's `ClientSecretCredential::http_client`.
    ///
    /// # Errors
    /// [`EmulatorError::Tls`] when reqwest refuses the certificate or cannot start.
    pub fn http_client(&self) -> Result<reqwest::Client, EmulatorError> {
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(std::time::Duration::from_secs(30));
        if let Some(pem) = &self.certificate {
            let certificate = reqwest::Certificate::from_pem(pem.as_bytes())
                .map_err(|e| EmulatorError::Tls(Box::new(e)))?;
            builder = builder.add_root_certificate(certificate);
        }
        builder.build().map_err(|e| EmulatorError::Tls(Box::new(e)))
    }

    /// The token endpoint of `tenant` (its id or domain).
    #[must_use]
    pub fn token_endpoint(&self, tenant: &str) -> String {
        format!("{}/{tenant}/oauth2/v2.0/token", self.state.base)
    }

    /// The seeded tenants.
    #[must_use]
    pub fn tenants(&self) -> Vec<TenantSeed> {
        self.state.tenants.iter().map(|t| t.seed.clone()).collect()
    }

    /// The fault rules in force; add and clear them while the emulator runs.
    #[must_use]
    pub fn faults(&self) -> &Faults {
        &self.state.faults
    }

    /// How many `$batch` requests were received (each of their items also counts as a
    /// Graph request).
    #[must_use]
    pub fn batch_requests(&self) -> u64 {
        self.state.batch_requests.load(Ordering::Relaxed)
    }

    /// How many Graph requests were received (token requests not included).
    #[must_use]
    pub fn graph_requests(&self) -> u64 {
        self.state.graph_requests.load(Ordering::Relaxed)
    }

    /// What the emulator saw of one mailbox (`user`: an id or a user principal name) of
    /// `tenant` (its id) from authenticated apps: the most requests one app had in
    /// flight at once, requests, and how many were throttled for going over Outlook's
    /// limits (four concurrent requests per app, 10,000 per 10 minutes).
    #[must_use]
    pub fn mailbox(&self, tenant: &str, user: &str) -> MailboxStats {
        let Some(t) = self.state.tenant(tenant) else {
            return MailboxStats::default();
        };
        let id = t
            .user(user)
            .and_then(|u| {
                u.get("id")
                    .and_then(serde_json::Value::as_str)
                    .map(str::to_owned)
            })
            .unwrap_or_else(|| user.to_ascii_lowercase());
        self.state
            .mailboxes
            .stats(&t.seed.id.to_ascii_lowercase(), &id)
    }

    /// A user's access token for the app `client` (audience `api://{client}`), as if
    /// `user` (an id or a user principal name) of `tenant` (its id or domain) had signed
    /// in to it: what a middle-tier service receives, to trade on-behalf-of (the
    /// jwt-bearer grant) for a delegated Graph token. `None` for an unknown tenant, user
    /// or client.
    #[must_use]
    pub fn user_token(&self, tenant: &str, user: &str, client: &str) -> Option<String> {
        let t = self.state.tenant(tenant)?;
        token::user_token(&self.state, t, user, client)
    }

    /// How many token requests were received.
    #[must_use]
    pub fn token_requests(&self) -> u64 {
        self.state.token_requests.load(Ordering::Relaxed)
    }

    /// Sets properties of a user of `tenant` (its id or domain), found by id or user
    /// principal name; a softly deleted user is restored. Delta reports the change.
    /// False when there is no such user.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// use keel_graph_client::emulator::Emulator;
    ///
    /// let graph = Emulator::start_default().await.unwrap();
    /// let id = graph.add_user("contoso.onmicrosoft.com", "Ada Lovelace").unwrap();
    /// assert!(graph.update_user("contoso.onmicrosoft.com", &id, serde_json::json!({"jobTitle": "Analyst"})));
    /// assert!(graph.delete_user("contoso.onmicrosoft.com", &id, false));
    /// assert!(!graph.update_user("contoso.onmicrosoft.com", "no-such-user", serde_json::json!({})));
    /// # });
    /// ```
    #[must_use]
    pub fn update_user(&self, tenant: &str, id: &str, fields: serde_json::Value) -> bool {
        let (Some(t), serde_json::Value::Object(fields)) = (self.state.tenant(tenant), fields)
        else {
            return false;
        };
        let Some(user_id) = t.users().position(id).and_then(|i| {
            t.users().entries[i]
                .user
                .get("id")
                .and_then(serde_json::Value::as_str)
                .map(str::to_owned)
        }) else {
            return false;
        };
        let updated = t.users_mut().update(id, &fields);
        if updated {
            subscriptions::notify(&self.state, &t.seed.id, "users", "updated", &user_id);
        }
        updated
    }

    /// Adds a user to `tenant` (after every other in id order); its id, or `None` when
    /// there is no such tenant.
    #[must_use]
    pub fn add_user(&self, tenant: &str, display_name: &str) -> Option<String> {
        let index = self.state.tenants.iter().position(|t| {
            t.seed.id.eq_ignore_ascii_case(tenant) || t.seed.domain.eq_ignore_ascii_case(tenant)
        })?;
        let t = &self.state.tenants[index];
        let id = t.users_mut().add(index, &t.seed.domain, display_name);
        subscriptions::notify(&self.state, &t.seed.id, "users", "created", &id);
        Some(id)
    }

    /// Deletes a user: softly (restorable; delta says `"reason": "changed"`) or for good
    /// (`"deleted"`). False when there is no such user.
    #[must_use]
    pub fn delete_user(&self, tenant: &str, id: &str, permanently: bool) -> bool {
        let how = if permanently {
            directory::Removal::Permanent
        } else {
            directory::Removal::Soft
        };
        let Some(t) = self.state.tenant(tenant) else {
            return false;
        };
        let user_id = t.users().position(id).and_then(|i| {
            t.users().entries[i]
                .user
                .get("id")
                .and_then(serde_json::Value::as_str)
                .map(str::to_owned)
        });
        let index = t.users().position(id);
        let removed = t.users_mut().remove(id, how);
        if removed && let Some(index) = index {
            // Graph drops a deleted user from its groups: members@delta says so.
            let mut groups = t.groups_mut();
            for group in groups.of_user(index) {
                groups.set_member(&group, index, false);
            }
        }
        if removed && let Some(user_id) = user_id {
            subscriptions::notify(&self.state, &t.seed.id, "users", "deleted", &user_id);
        }
        removed
    }

    /// Sets properties of group `id` (`{"displayName": …}`); its subscribers are
    /// notified. False when there is no such tenant or group.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// use keel_graph_client::emulator::Emulator;
    ///
    /// let graph = Emulator::start_default().await.unwrap();
    /// let tenant = "contoso.onmicrosoft.com";
    /// let group = "00000001-0000-4000-9000-000000000001";
    /// let user = graph.add_user(tenant, "Ada Lovelace").unwrap();
    /// assert!(graph.update_group(tenant, group, serde_json::json!({"description": "Engineers"})));
    /// assert!(graph.set_group_member(tenant, group, &user, true));
    /// assert!(!graph.set_group_member(tenant, group, &user, true), "already a member");
    /// assert!(graph.set_group_member(tenant, group, &user, false));
    /// # });
    /// ```
    #[must_use]
    pub fn update_group(&self, tenant: &str, id: &str, fields: serde_json::Value) -> bool {
        let (Some(t), serde_json::Value::Object(fields)) = (self.state.tenant(tenant), fields)
        else {
            return false;
        };
        let updated = t.groups_mut().update(id, &fields);
        if updated {
            subscriptions::notify(&self.state, &t.seed.id, "groups", "updated", id);
        }
        updated
    }

    /// Adds user `user` (an id) to group `group` (`member` true) or removes it; its
    /// subscribers are notified. False when nothing changed (no such tenant, group or
    /// user; already so).
    #[must_use]
    pub fn set_group_member(&self, tenant: &str, group: &str, user: &str, member: bool) -> bool {
        let Some(t) = self.state.tenant(tenant) else {
            return false;
        };
        let index = {
            let users = t.users();
            users
                .position(user)
                .filter(|&i| users.entries.get(i).is_some_and(|e| e.removed.is_none()))
        };
        let Some(index) = index else {
            return false;
        };
        let changed = t.groups_mut().set_member(group, index, member);
        if changed {
            subscriptions::notify(&self.state, &t.seed.id, "groups", "updated", group);
        }
        changed
    }

    /// Posts a lifecycle event (`reauthorizationRequired`, `subscriptionRemoved`,
    /// `missed`) for subscription `id` to its `lifecycleNotificationUrl`;
    /// `subscriptionRemoved` also removes the subscription. False when there is no such
    /// subscription or it has no lifecycle URL.
    #[must_use]
    pub fn send_lifecycle_event(&self, id: &str, event: &str) -> bool {
        subscriptions::lifecycle(&self.state, id, event)
    }

    /// Notifications posted and answered 2xx so far, and those given up on after
    /// their retries.
    #[must_use]
    pub fn notifications(&self) -> (u64, u64) {
        (
            self.state.subscriptions.delivered.load(Ordering::Relaxed),
            self.state.subscriptions.failed.load(Ordering::Relaxed),
        )
    }

    /// The validation token sent with the last rich notification, if any.
    #[must_use]
    pub fn last_validation_token(&self) -> Option<String> {
        self.state
            .subscriptions
            .last_token
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Live subscriptions of all tenants.
    #[must_use]
    pub fn subscription_count(&self) -> usize {
        let now = self.state.clock.now();
        self.state
            .subscriptions
            .lock()
            .iter()
            .filter(|s| s.expires > now)
            .count()
    }

    /// Invalidates every delta link of `tenant` given so far (users and Planner tasks): they are refused from now
    /// on as `how` says, and the client must synchronize again from the start.
    pub fn reset_delta(&self, tenant: &str, how: DeltaReset) {
        if let Some(t) = self.state.tenant(tenant) {
            let mut users = t.users_mut();
            users.epoch += 1;
            users.reset = how;
            drop(users);
            let mut planner = t.planner();
            planner.delta_epoch += 1;
            planner.delta_reset = how;
            drop(planner);
            let mut groups = t.groups_mut();
            groups.epoch += 1;
            groups.reset = how;
        }
    }

    /// Makes each delta page of `tenant` after the first of a round repeat the last `n`
    /// items of the page before, as Graph may return an item more than once in a round.
    pub fn replay_delta_items(&self, tenant: &str, n: usize) {
        if let Some(t) = self.state.tenant(tenant) {
            t.users_mut().replays = n;
        }
    }
}

/// Every route, behind the faults and the mailbox limits (outermost, so that injected
/// latency counts as time in flight).
pub(crate) fn app(state: Arc<State>) -> axum::Router {
    token::routes()
        .merge(delta::routes())
        .merge(subscriptions::routes())
        .merge(graph::routes())
        .merge(groups::routes())
        .merge(planner::routes())
        .merge(mailbox::routes())
        .merge(batch::routes())
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            faults::apply,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            mailbox::admit,
        ))
        .with_state(state)
}

/// `%XX` and `+` decoded (a form or a query string); `None` for bad escapes or UTF-8.
pub(crate) fn percent_decode(text: &str) -> Option<String> {
    crate::request::percent_decode(text, true)
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.server.abort();
    }
}
