//! The emulator's seeded data: tenants, their clients and their users.

use serde_json::{Map, Value, json};

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
            .finish()
    }
}

/// A registered application of a tenant.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Client {
    pub(crate) id: String,
    pub(crate) secret: String,
    pub(crate) roles: Vec<String>,
}

impl TenantSeed {
    /// A tenant with no clients and no users.
    pub fn new(id: &str, domain: &str) -> Self {
        TenantSeed {
            id: id.to_owned(),
            domain: domain.to_owned(),
            clients: Vec::new(),
            users: 0,
        }
    }

    /// A client that may use the client-credentials grant with `secret`, granted these
    /// application permissions (`User.Read.All`, …).
    pub fn client<I, S>(mut self, id: &str, secret: &str, roles: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.clients.push(Client {
            id: id.to_owned(),
            secret: secret.to_owned(),
            roles: roles.into_iter().map(Into::into).collect(),
        });
        self
    }

    /// `n` generated users (`User 0001`, `user0001@{domain}`, …).
    pub fn users(mut self, n: usize) -> Self {
        self.users = n;
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
    /// Users as Graph shows them, ordered by id.
    pub(crate) users: Vec<Map<String, Value>>,
}

impl Tenant {
    pub(crate) fn new(seed: TenantSeed, index: usize) -> Self {
        let users = (0..seed.users)
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
        Tenant { seed, users }
    }

    pub(crate) fn client(&self, id: &str) -> Option<&Client> {
        self.seed.clients.iter().find(|c| c.id == id)
    }
}

/// Whether `id` has a GUID's shape.
pub(crate) fn is_guid(id: &str) -> bool {
    id.len() == 36
        && id.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}
