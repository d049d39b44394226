//! The emulator's seeded data: tenants, their clients, users, groups and their members,
//! teams and channels, and the groups' Planner plans.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use serde_json::{Map, Value, json};

use super::planner::PlannerStore;

/// A tenant to seed: its id (a GUID), its domain, its clients and its users.
///
/// ```
/// use keel_graph_client::emulator::TenantSeed;
///
/// let tenant = TenantSeed::new("11111111-2222-4333-8444-555555555555", "litware.onmicrosoft.com")
///     .client("sync-service", "s3cret", ["User.Read.All"])
///     .users(1_000);
/// assert_eq!(tenant.domain(), "litware.onmicrosoft.com");
/// ```
#[derive(Clone, PartialEq, Eq)]
#[must_use]
pub struct TenantSeed {
    pub(crate) id: String,
    pub(crate) domain: String,
    pub(crate) clients: Vec<Client>,
    pub(crate) users: usize,
    pub(crate) groups: usize,
    pub(crate) extra_tasks: usize,
}

impl std::fmt::Debug for TenantSeed {
    // Without the clients' secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantSeed")
            .field("id", &self.id)
            .field("domain", &self.domain)
            .field(
                "clients",
                &self.clients.iter().map(|c| &c.id).collect::<Vec<_>>(),
            )
            .field("users", &self.users)
            .field("groups", &self.groups)
            .field("extra_tasks", &self.extra_tasks)
            .finish()
    }
}

/// A registered application of a tenant.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Client {
    pub(crate) id: String,
    pub(crate) secret: Option<String>,
    /// The public key of its certificate (PEM), for client assertions.
    pub(crate) public_key_pem: Option<String>,
    pub(crate) roles: Vec<String>,
    /// Delegated permissions consented for it (what on-behalf-of tokens carry).
    pub(crate) delegated: Vec<String>,
}

impl TenantSeed {
    /// A tenant with no clients and no users.
    pub fn new(id: &str, domain: &str) -> Self {
        TenantSeed {
            id: id.to_owned(),
            domain: domain.to_owned(),
            clients: Vec::new(),
            users: 0,
            groups: 0,
            extra_tasks: 0,
        }
    }

    /// A client that may use the client-credentials grant with `secret`, granted these
    /// application permissions (`User.Read.All`, …). Its delegated permissions (what an
    /// on-behalf-of token carries) are `User.Read` unless [`delegated`](Self::delegated)
    /// says otherwise.
    pub fn client<I, S>(mut self, id: &str, secret: &str, roles: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.clients.push(Client {
            id: id.to_owned(),
            secret: Some(secret.to_owned()),
            public_key_pem: None,
            roles: roles.into_iter().map(Into::into).collect(),
            delegated: vec!["User.Read".to_owned()],
        });
        self
    }

    /// A client that authenticates with a certificate: client assertions (JWTs signed
    /// PS256 or RS256, as keel-token-manager's `ClientCertificateCredential` and MSAL
    /// make them) checked against `public_key_pem` (the certificate's RSA public key,
    /// `PUBLIC KEY` or `RSA PUBLIC KEY` PEM).
    pub fn client_certificate<I, S>(mut self, id: &str, public_key_pem: &str, roles: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.clients.push(Client {
            id: id.to_owned(),
            secret: None,
            public_key_pem: Some(public_key_pem.to_owned()),
            roles: roles.into_iter().map(Into::into).collect(),
            delegated: vec!["User.Read".to_owned()],
        });
        self
    }

    /// The delegated permissions consented for client `id` (added before): what an
    /// on-behalf-of token for it carries as scopes. A delegated token reads only what
    /// its user may: `/me`, and the user's own mailbox.
    pub fn delegated<I, S>(mut self, id: &str, scopes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        if let Some(client) = self.clients.iter_mut().find(|c| c.id == id) {
            client.delegated = scopes.into_iter().map(Into::into).collect();
        }
        self
    }

    /// `n` generated users (`User 0001`, `user0001@{domain}`, …).
    pub fn users(mut self, n: usize) -> Self {
        self.users = n;
        self
    }

    /// `n` generated Microsoft 365 groups (`Group 01`, …), each with five members taken
    /// in turn from the users, and each with a Planner plan (buckets `To do` and `Done`,
    /// four tasks). Even-numbered groups are teams, with channels `General` and
    /// `Announcements`.
    pub fn groups(mut self, n: usize) -> Self {
        self.groups = n;
        self
    }

    /// `n` more tasks in each group's plan (`Backlog item 1`, …, in its `To do` bucket),
    /// besides the four every plan has.
    ///
    /// ```
    /// use keel_graph_client::emulator::TenantSeed;
    ///
    /// // 20 plans of 4 + 16 tasks: 400 tasks.
    /// let seed = TenantSeed::new("contoso", "contoso.onmicrosoft.com").groups(20).extra_tasks(16);
    /// # drop(seed);
    /// ```
    pub fn extra_tasks(mut self, n: usize) -> Self {
        self.extra_tasks = n;
        self
    }

    /// The tenant id.
    #[must_use]
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The domain.
    #[must_use]
    pub fn domain(&self) -> &str {
        &self.domain
    }
}

/// A seeded tenant with its data.
#[derive(Debug)]
pub(crate) struct Tenant {
    pub(crate) seed: TenantSeed,
    /// Users as Graph shows them, ordered by id, with their change history.
    users: RwLock<Users>,
    /// Groups as Graph shows them, ordered by id, with their members and history.
    groups: RwLock<Groups>,
    /// Each team's channels.
    pub(crate) channels: HashMap<String, Vec<Map<String, Value>>>,
    /// Plans, buckets, tasks and details: the writable part.
    planner: Mutex<PlannerStore>,
}

impl Tenant {
    pub(crate) fn new(seed: TenantSeed, index: usize) -> Self {
        let users: Vec<Map<String, Value>> = (0..seed.users)
            .map(|i| {
                let n = i + 1;
                let upn = format!("user{n:04}@{}", seed.domain);
                let mut user = Map::new();
                let mut put = |key: &str, value: Value| {
                    user.insert(key.to_owned(), value);
                };
                put(
                    "id",
                    json!(format!("{:08x}-0000-4000-8000-{n:012x}", index + 1)),
                );
                put("displayName", json!(format!("User {n:04}")));
                put("givenName", json!("User"));
                put("surname", json!(format!("{n:04}")));
                put("userPrincipalName", json!(upn));
                put("mail", json!(upn));
                put(
                    "jobTitle",
                    json!(if n % 3 == 0 { "Engineer" } else { "Analyst" }),
                );
                put("accountEnabled", json!(n % 10 != 0));
                put("businessPhones", json!([]));
                user
            })
            .collect();
        let mut groups = Vec::new();
        let mut members = HashMap::new();
        let mut channels = HashMap::new();
        let mut planner = PlannerStore::new(index);
        for g in 0..seed.groups {
            let n = g + 1;
            let id = format!("{:08x}-0000-4000-9000-{n:012x}", index + 1);
            let team = n % 2 == 0;
            let nickname = format!("group{n:02}");
            let mut group = Map::new();
            group.insert("id".into(), json!(id));
            group.insert("displayName".into(), json!(format!("Group {n:02}")));
            group.insert("mailNickname".into(), json!(nickname));
            group.insert("mail".into(), json!(format!("{nickname}@{}", seed.domain)));
            group.insert("mailEnabled".into(), json!(true));
            group.insert("securityEnabled".into(), json!(false));
            group.insert("groupTypes".into(), json!(["Unified"]));
            group.insert("visibility".into(), json!("Private"));
            group.insert(
                "resourceProvisioningOptions".into(),
                json!(if team { vec!["Team"] } else { Vec::new() }),
            );
            let chosen: Vec<usize> = if users.is_empty() {
                Vec::new()
            } else {
                (0..5.min(users.len()))
                    .map(|k| (g * 5 + k) % users.len())
                    .collect()
            };
            if team {
                let channel = |k: usize, name: &str, description: &str| {
                    let mut c = Map::new();
                    c.insert(
                        "id".into(),
                        json!(format!("19:{:08x}{n:08x}{k:016x}@thread.tacv2", index + 1)),
                    );
                    c.insert("displayName".into(), json!(name));
                    c.insert("description".into(), json!(description));
                    c.insert("membershipType".into(), json!("standard"));
                    c
                };
                channels.insert(
                    id.clone(),
                    vec![
                        channel(1, "General", "The team's first channel."),
                        channel(2, "Announcements", "News for the whole team."),
                    ],
                );
            }
            let owner =
                chosen
                    .first()
                    .and_then(|&u| users.get(u))
                    .and_then(|u: &Map<String, Value>| {
                        u.get("id").and_then(Value::as_str).map(str::to_owned)
                    });
            planner.seed_plan(
                &id,
                &format!("Plan of Group {n:02}"),
                owner.as_deref(),
                &chosen
                    .iter()
                    .filter_map(|&u| {
                        users
                            .get(u)
                            .and_then(|u| u.get("id"))
                            .and_then(Value::as_str)
                            .map(str::to_owned)
                    })
                    .collect::<Vec<_>>(),
            );
            members.insert(id, chosen);
            groups.push(group);
        }
        planner.add_tasks(seed.extra_tasks);
        let versions = vec![1; groups.len()];
        Tenant {
            seed,
            users: RwLock::new(Users::seeded(users)),
            groups: RwLock::new(Groups {
                list: groups,
                members,
                versions,
                log: Vec::new(),
                seq: 1,
                epoch: 1,
                reset: DeltaReset::Gone,
            }),
            channels,
            planner: Mutex::new(planner),
        }
    }

    /// The Planner data, locked.
    pub(crate) fn planner(&self) -> MutexGuard<'_, PlannerStore> {
        self.planner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The users, read-locked.
    pub(crate) fn users(&self) -> RwLockReadGuard<'_, Users> {
        self.users.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// The users, write-locked.
    pub(crate) fn users_mut(&self) -> RwLockWriteGuard<'_, Users> {
        self.users.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// A user (not deleted) by id or user principal name.
    pub(crate) fn user(&self, id_or_upn: &str) -> Option<Map<String, Value>> {
        self.users().find(id_or_upn).cloned()
    }

    /// A group by id.
    pub(crate) fn group(&self, id: &str) -> Option<Map<String, Value>> {
        let groups = self.groups();
        groups.find(id).map(|i| groups.list[i].clone())
    }

    /// The groups, read-locked.
    pub(crate) fn groups(&self) -> RwLockReadGuard<'_, Groups> {
        self.groups.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// The groups, write-locked.
    pub(crate) fn groups_mut(&self) -> RwLockWriteGuard<'_, Groups> {
        self.groups.write().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn client(&self, id: &str) -> Option<&Client> {
        self.seed.clients.iter().find(|c| c.id == id)
    }
}

/// Why a user left the collection, as delta reports it in `@removed`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Removal {
    /// Deleted, and restorable for 30 days: `"changed"`.
    Soft,
    /// Deleted for good: `"deleted"`.
    Permanent,
}

impl Removal {
    pub(crate) fn reason(self) -> &'static str {
        match self {
            Removal::Soft => "changed",
            Removal::Permanent => "deleted",
        }
    }
}

/// A user and the history delta needs: the change that last touched it.
#[derive(Debug)]
pub(crate) struct UserEntry {
    pub(crate) user: Map<String, Value>,
    /// The sequence number of its last change (seeded users: 1).
    pub(crate) version: u64,
    pub(crate) removed: Option<Removal>,
}

/// A tenant's users: entries ordered by id, never removed (a deleted user stays as a
/// tombstone, so that delta reports it and group members keep their indexes).
#[derive(Debug)]
pub(crate) struct Users {
    pub(crate) entries: Vec<UserEntry>,
    /// The last change's sequence number.
    pub(crate) seq: u64,
    /// Bumped when delta state is reset: tokens of an older epoch are refused.
    pub(crate) epoch: u64,
    /// How tokens of older epochs are refused.
    pub(crate) reset: DeltaReset,
    /// Items that the next delta page repeats from the page before (Graph may return an
    /// item more than once in a round).
    pub(crate) replays: usize,
}

/// How the emulator refuses delta links from before a reset
/// ([`Emulator::reset_delta`](super::Emulator::reset_delta)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DeltaReset {
    /// `410 Gone` with a `Location` header naming a fresh delta request (what Graph
    /// answers when it needs the client to resynchronize).
    Gone,
    /// `400 Bad Request` with the code `syncStateNotFound` (an expired delta token).
    Expired,
}

impl Users {
    fn seeded(users: Vec<Map<String, Value>>) -> Self {
        Users {
            entries: users
                .into_iter()
                .map(|user| UserEntry {
                    user,
                    version: 1,
                    removed: None,
                })
                .collect(),
            seq: 1,
            epoch: 1,
            reset: DeltaReset::Gone,
            replays: 0,
        }
    }

    /// The users not deleted, in order.
    pub(crate) fn live(&self) -> impl Iterator<Item = &Map<String, Value>> {
        self.entries
            .iter()
            .filter(|e| e.removed.is_none())
            .map(|e| &e.user)
    }

    /// A user not deleted, by id or user principal name.
    pub(crate) fn find(&self, id_or_upn: &str) -> Option<&Map<String, Value>> {
        self.position(id_or_upn)
            .and_then(|i| self.entries.get(i))
            .filter(|e| e.removed.is_none())
            .map(|e| &e.user)
    }

    /// The entry of a user (deleted or not), by id or user principal name.
    pub(crate) fn position(&self, id_or_upn: &str) -> Option<usize> {
        if let Ok(i) = self.entries.binary_search_by(|e| {
            e.user
                .get("id")
                .and_then(Value::as_str)
                .unwrap_or("")
                .cmp(id_or_upn)
        }) {
            return Some(i);
        }
        self.entries.iter().position(|e| {
            e.user
                .get("userPrincipalName")
                .and_then(Value::as_str)
                .is_some_and(|upn| upn.eq_ignore_ascii_case(id_or_upn))
        })
    }

    /// The next sequence number.
    fn next(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// Sets `fields` on a user (restoring it when soft-deleted). False when there is no
    /// such user, or it was deleted for good.
    pub(crate) fn update(&mut self, id: &str, fields: &Map<String, Value>) -> bool {
        let Some(i) = self.position(id) else {
            return false;
        };
        if self.entries[i].removed == Some(Removal::Permanent) {
            return false;
        }
        let version = self.next();
        let entry = &mut self.entries[i];
        for (key, value) in fields {
            if key != "id" {
                entry.user.insert(key.clone(), value.clone());
            }
        }
        entry.removed = None;
        entry.version = version;
        true
    }

    /// A new user, after every other in id order; its id.
    pub(crate) fn add(&mut self, tenant_index: usize, domain: &str, display_name: &str) -> String {
        let n = self.entries.len() + 1;
        let id = format!("{:08x}-0000-4000-8000-{n:012x}", tenant_index + 1);
        let upn = format!("user{n:04}@{domain}");
        let user = serde_json::json!({
            "id": id,
            "displayName": display_name,
            "givenName": "User",
            "surname": format!("{n:04}"),
            "userPrincipalName": upn,
            "mail": upn,
            "jobTitle": "Analyst",
            "accountEnabled": true,
            "businessPhones": [],
        });
        let version = self.next();
        if let Value::Object(user) = user {
            self.entries.push(UserEntry {
                user,
                version,
                removed: None,
            });
        }
        id
    }

    /// Deletes a user, softly or for good. False when there is no such user (or it is
    /// already deleted for good).
    pub(crate) fn remove(&mut self, id: &str, how: Removal) -> bool {
        let Some(i) = self.position(id) else {
            return false;
        };
        if self.entries[i].removed == Some(Removal::Permanent) {
            return false;
        }
        let version = self.next();
        let entry = &mut self.entries[i];
        entry.removed = Some(how);
        entry.version = version;
        true
    }
}

/// A tenant's groups, their members and what delta needs of their history.
#[derive(Debug)]
pub(crate) struct Groups {
    /// The groups, ordered by id.
    pub(crate) list: Vec<Map<String, Value>>,
    /// Each group's members (indexes into the users).
    pub(crate) members: HashMap<String, Vec<usize>>,
    /// The sequence number of each group's last property change (seeded: 1).
    pub(crate) versions: Vec<u64>,
    /// Membership changes: (sequence number, group index, user index, added).
    pub(crate) log: Vec<(u64, usize, usize, bool)>,
    /// The last change's sequence number.
    pub(crate) seq: u64,
    /// Bumped when delta state is reset.
    pub(crate) epoch: u64,
    /// How tokens of older epochs are refused.
    pub(crate) reset: DeltaReset,
}

impl Groups {
    /// A group's index, by id.
    pub(crate) fn find(&self, id: &str) -> Option<usize> {
        self.list
            .iter()
            .position(|g| g.get("id").and_then(Value::as_str) == Some(id))
    }

    /// Sets properties of a group (not its id); false when there is no such group.
    pub(crate) fn update(&mut self, id: &str, fields: &Map<String, Value>) -> bool {
        let Some(i) = self.find(id) else {
            return false;
        };
        for (key, value) in fields {
            if key != "id" {
                self.list[i].insert(key.clone(), value.clone());
            }
        }
        self.seq += 1;
        self.versions[i] = self.seq;
        true
    }

    /// Adds (or removes) user `user` to (from) group `id`; false when nothing changed.
    pub(crate) fn set_member(&mut self, id: &str, user: usize, member: bool) -> bool {
        let Some(i) = self.find(id) else {
            return false;
        };
        let members = self.members.entry(id.to_owned()).or_default();
        let present = members.contains(&user);
        if present == member {
            return false;
        }
        if member {
            members.push(user);
        } else {
            members.retain(|&u| u != user);
        }
        self.seq += 1;
        self.log.push((self.seq, i, user, member));
        true
    }

    /// The groups user `user` belongs to, by id.
    pub(crate) fn of_user(&self, user: usize) -> Vec<String> {
        self.members
            .iter()
            .filter(|(_, m)| m.contains(&user))
            .map(|(g, _)| g.clone())
            .collect()
    }
}
