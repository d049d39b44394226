//! Where the service's state lives and which Graph it talks to, from the environment.

use std::net::SocketAddr;

/// The service's configuration: embedded defaults, overridden by the environment.
///
/// | variable | default | what |
/// |---|---|---|
/// | `KEEL_ADDR` | `127.0.0.1:3000` | where the service listens |
/// | `REDIS_URL` | none: memory | cache L2 and backplane, notification queue, refresh tokens, renewal lease |
/// | `DATABASE_URL` | none: memory | delta links, subscriptions, dead letters (and refresh tokens without Redis) |
/// | `KEEL_INSTANCE` | `planner-1` | this instance's name (leases, queue consumer, delta keys) |
/// | `GRAPH_TENANT`, `GRAPH_CLIENT_ID`, `GRAPH_CLIENT_SECRET` | none: the embedded emulator | a real tenant and its app registration |
/// | `GRAPH_NOTIFICATION_URL` | the service's own `/graph/notify` | the public HTTPS URL Graph posts to |
/// | `KEEL_SIGNING_KEY_PEM` | generated | the PKCS#8 Ed25519 key the service signs its session tokens with (share it between instances) |
/// | `KEEL_SEALING_KEY` | generated | 64 hex digits: the key that seals refresh-token successors for the grace period (share it between instances) |
/// | `KEEL_DEMO_LOGIN` | on with the emulator, off with a real tenant | `1`: the demo users may log in |
#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) addr: SocketAddr,
    pub(crate) redis_url: Option<String>,
    pub(crate) database_url: Option<String>,
    pub(crate) instance: String,
    pub(crate) tenant: Option<RealTenant>,
    pub(crate) notification_url: Option<String>,
    pub(crate) signing_key_pem: Option<String>,
    pub(crate) sealing_key_hex: Option<String>,
    pub(crate) demo_logins: bool,
}

impl std::fmt::Debug for Config {
    // Without the session keys.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("addr", &self.addr)
            .field("redis", &self.redis_url.is_some())
            .field("postgres", &self.database_url.is_some())
            .field("instance", &self.instance)
            .field("tenant", &self.tenant)
            .field("notification_url", &self.notification_url)
            .field("demo_logins", &self.demo_logins)
            .finish_non_exhaustive()
    }
}

/// A real tenant: Graph and Entra ID instead of the emulator.
#[derive(Clone)]
pub(crate) struct RealTenant {
    pub(crate) tenant: String,
    pub(crate) client_id: String,
    pub(crate) client_secret: String,
}

impl std::fmt::Debug for RealTenant {
    // Without the secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RealTenant")
            .field("tenant", &self.tenant)
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

impl Config {
    /// From the environment; `smoke` listens on a free port.
    pub(crate) fn from_env(smoke: bool) -> Result<Config, Box<dyn std::error::Error>> {
        let addr = if smoke {
            "127.0.0.1:0".parse()?
        } else {
            var("KEEL_ADDR")
                .unwrap_or_else(|| "127.0.0.1:3000".into())
                .parse()?
        };
        let tenant = match (
            var("GRAPH_TENANT"),
            var("GRAPH_CLIENT_ID"),
            var("GRAPH_CLIENT_SECRET"),
        ) {
            (Some(tenant), Some(client_id), Some(client_secret)) => Some(RealTenant {
                tenant,
                client_id,
                client_secret,
            }),
            (None, None, None) => None,
            _ => {
                return Err(
                    "set GRAPH_TENANT, GRAPH_CLIENT_ID and GRAPH_CLIENT_SECRET together, or none (the emulator)"
                        .into(),
                );
            }
        };
        if tenant.is_some() && var("GRAPH_NOTIFICATION_URL").is_none() {
            return Err(
                "with a real tenant, set GRAPH_NOTIFICATION_URL: the public HTTPS URL of /graph/notify that Graph can reach"
                    .into(),
            );
        }
        let demo_logins = var("KEEL_DEMO_LOGIN").map_or(tenant.is_none(), |v| v == "1");
        Ok(Config {
            addr,
            redis_url: var("REDIS_URL"),
            database_url: var("DATABASE_URL"),
            instance: var("KEEL_INSTANCE").unwrap_or_else(|| "planner-1".into()),
            tenant,
            notification_url: var("GRAPH_NOTIFICATION_URL"),
            signing_key_pem: var("KEEL_SIGNING_KEY_PEM"),
            sealing_key_hex: var("KEEL_SEALING_KEY"),
            demo_logins,
        })
    }
}
