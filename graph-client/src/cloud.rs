//! Where Graph lives: the national clouds, a custom base URL, and the API version.

use std::fmt;
use std::str::FromStr;

/// A Microsoft Graph deployment: its Graph host and its Entra ID (login) host.
///
/// ```
/// use keel_graph_client::Cloud;
///
/// assert_eq!(Cloud::Global.graph_base(), "https://graph.microsoft.com");
/// assert_eq!(Cloud::UsGovL5.graph_base(), "https://dod-graph.microsoft.us");
/// assert_eq!("china".parse::<Cloud>().unwrap().login_base(), "https://login.chinacloudapi.cn");
/// // The emulator, or a proxy:
/// let local = Cloud::custom("http://127.0.0.1:8080", "http://127.0.0.1:8080").unwrap();
/// assert!(local.is_graph_url("http://127.0.0.1:8080/v1.0/users?$skiptoken=x"));
/// assert!(Cloud::custom("ftp://example", "https://login.example").is_err());
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Cloud {
    /// The global service: `graph.microsoft.com`, `login.microsoftonline.com`.
    Global,
    /// US Government L4 (GCC High): `graph.microsoft.us`, `login.microsoftonline.us`.
    UsGovL4,
    /// US Government L5 (DoD): `dod-graph.microsoft.us`, `login.microsoftonline.us`.
    UsGovL5,
    /// China, operated by 21Vianet: `microsoftgraph.chinacloudapi.cn`,
    /// `login.chinacloudapi.cn`.
    China,
    /// Any other base URLs (the emulator, a proxy), checked by [`Cloud::custom`].
    Custom(CustomCloud),
}

/// The base URLs of a [`Cloud::Custom`], validated.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct CustomCloud {
    graph: Base,
    login: Base,
}

/// A base URL split into its origin (`scheme://host[:port]`), lower-cased.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Base {
    origin: String,
}

impl fmt::Debug for Cloud {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cloud::Global => f.write_str("Global"),
            Cloud::UsGovL4 => f.write_str("UsGovL4"),
            Cloud::UsGovL5 => f.write_str("UsGovL5"),
            Cloud::China => f.write_str("China"),
            Cloud::Custom(c) => f
                .debug_struct("Custom")
                .field("graph", &c.graph.origin)
                .field("login", &c.login.origin)
                .finish(),
        }
    }
}

impl fmt::Debug for CustomCloud {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CustomCloud")
            .field("graph", &self.graph.origin)
            .field("login", &self.login.origin)
            .finish()
    }
}

/// A cloud name or base URL that cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CloudError {
    /// Not one of `global`, `usgovl4` (or `usgov`), `usgovl5` (or `dod`), `china`.
    #[error("unknown cloud (expected global, usgovl4, usgovl5 or china)")]
    UnknownCloud,
    /// A base URL that is not `http(s)://host[:port]` with nothing after the host but an
    /// optional `/` (no path, query, fragment or credentials).
    #[error("a cloud's base URL must be http(s)://host[:port], with no path, query or credentials")]
    InvalidBaseUrl,
}

impl keel_resilience::Classify for CloudError {
    /// Always permanent: the configuration is wrong.
    fn class(&self) -> keel_resilience::ErrorClass {
        keel_resilience::ErrorClass::Permanent
    }
}

impl Base {
    fn parse(url: &str) -> Result<Self, CloudError> {
        let url = url.strip_suffix('/').unwrap_or(url);
        let (scheme, rest) = url.split_once("://").ok_or(CloudError::InvalidBaseUrl)?;
        let scheme = scheme.to_ascii_lowercase();
        if scheme != "https" && scheme != "http" {
            return Err(CloudError::InvalidBaseUrl);
        }
        let authority_ok = !rest.is_empty()
            && rest.len() <= 255
            && rest.bytes().all(|b| {
                b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']')
            });
        if !authority_ok {
            return Err(CloudError::InvalidBaseUrl);
        }
        let uri: http::Uri = url.parse().map_err(|_| CloudError::InvalidBaseUrl)?;
        if uri.host().is_none_or(str::is_empty) {
            return Err(CloudError::InvalidBaseUrl);
        }
        Ok(Base {
            origin: format!("{scheme}://{}", rest.to_ascii_lowercase()),
        })
    }
}

impl Cloud {
    /// A deployment at other base URLs: the emulator, a proxy, a sovereign test
    /// environment. Each is `http(s)://host[:port]`.
    ///
    /// # Errors
    /// [`CloudError::InvalidBaseUrl`] for anything else.
    pub fn custom(graph: &str, login: &str) -> Result<Self, CloudError> {
        Ok(Cloud::Custom(CustomCloud {
            graph: Base::parse(graph)?,
            login: Base::parse(login)?,
        }))
    }

    /// `http://{addr}` (or `https://`) for Graph and login: the emulator's cloud.
    #[cfg(feature = "emulator")]
    pub(crate) fn loopback(addr: std::net::SocketAddr, https: bool) -> Self {
        let origin = format!("{}://{addr}", if https { "https" } else { "http" });
        Cloud::Custom(CustomCloud {
            graph: Base {
                origin: origin.clone(),
            },
            login: Base { origin },
        })
    }

    /// The Graph base URL, without a trailing `/`.
    #[must_use]
    pub fn graph_base(&self) -> &str {
        match self {
            Cloud::Global => "https://graph.microsoft.com",
            Cloud::UsGovL4 => "https://graph.microsoft.us",
            Cloud::UsGovL5 => "https://dod-graph.microsoft.us",
            Cloud::China => "https://microsoftgraph.chinacloudapi.cn",
            Cloud::Custom(c) => &c.graph.origin,
        }
    }

    /// The Entra ID (login) base URL, without a trailing `/`.
    #[must_use]
    pub fn login_base(&self) -> &str {
        match self {
            Cloud::Global => "https://login.microsoftonline.com",
            Cloud::UsGovL4 | Cloud::UsGovL5 => "https://login.microsoftonline.us",
            Cloud::China => "https://login.chinacloudapi.cn",
            Cloud::Custom(c) => &c.login.origin,
        }
    }

    /// The scope that asks for every application permission granted on this cloud's
    /// Graph (`{graph}/.default`).
    #[must_use]
    pub fn default_scope(&self) -> String {
        format!("{}/.default", self.graph_base())
    }

    /// Whether `url` is on this cloud's Graph origin (same scheme, host and port):
    /// the only URLs a token for this cloud may be sent to, next links included.
    #[must_use]
    pub fn is_graph_url(&self, url: &str) -> bool {
        let base = self.graph_base();
        url.len() > base.len()
            && url.as_bytes()[..base.len()].eq_ignore_ascii_case(base.as_bytes())
            && url.as_bytes()[base.len()] == b'/'
    }
}

impl FromStr for Cloud {
    type Err = CloudError;

    /// `global` (or `public`), `usgovl4` (or `usgov`, `gcchigh`), `usgovl5` (or `dod`),
    /// `china`; any case.
    fn from_str(name: &str) -> Result<Self, CloudError> {
        match name.to_ascii_lowercase().as_str() {
            "global" | "public" => Ok(Cloud::Global),
            "usgovl4" | "usgov" | "gcchigh" => Ok(Cloud::UsGovL4),
            "usgovl5" | "dod" => Ok(Cloud::UsGovL5),
            "china" => Ok(Cloud::China),
            _ => Err(CloudError::UnknownCloud),
        }
    }
}

/// The Graph API version a request goes to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ApiVersion {
    /// `v1.0`, the stable API (the default).
    #[default]
    V1,
    /// `beta`: previews, which can change without notice.
    Beta,
}

impl ApiVersion {
    /// The version's path segment.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            ApiVersion::V1 => "v1.0",
            ApiVersion::Beta => "beta",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_are_checked_and_normalised() {
        let c = Cloud::custom("HTTP://LocalHost:8080/", "https://login.example").unwrap();
        assert_eq!(c.graph_base(), "http://localhost:8080");
        assert_eq!(c.login_base(), "https://login.example");
        for bad in [
            "",
            "localhost:8080",
            "https://",
            "https://user:pw@host",
            "https://host/path",
            "https://host?x=1",
            "https://host#f",
            "ftp://host",
            "https://ho st",
            "https://h\u{e9}st",
        ] {
            assert_eq!(
                Cloud::custom(bad, "https://login.example"),
                Err(CloudError::InvalidBaseUrl),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn only_urls_on_the_graph_origin_are_graph_urls() {
        let g = Cloud::Global;
        assert!(g.is_graph_url("https://graph.microsoft.com/v1.0/users"));
        assert!(g.is_graph_url("HTTPS://GRAPH.MICROSOFT.COM/v1.0/users"));
        for foreign in [
            "https://graph.microsoft.com.evil.example/v1.0/users",
            "https://graph.microsoft.com:444/v1.0",
            "https://graph.microsoft.com@evil.example/",
            "http://graph.microsoft.com/v1.0/users",
            "https://graph.microsoft.com",
            "https://evil.example/https://graph.microsoft.com/",
        ] {
            assert!(!g.is_graph_url(foreign), "{foreign}");
        }
        assert!(!Cloud::China.is_graph_url("https://graph.microsoft.com/v1.0/users"));
    }

    #[test]
    fn names_parse_in_any_case() {
        assert_eq!("DoD".parse::<Cloud>(), Ok(Cloud::UsGovL5));
        assert_eq!("usgov".parse::<Cloud>(), Ok(Cloud::UsGovL4));
        assert_eq!("mars".parse::<Cloud>(), Err(CloudError::UnknownCloud));
        assert_eq!(
            Cloud::UsGovL4.default_scope(),
            "https://graph.microsoft.us/.default"
        );
        assert_eq!(ApiVersion::default().as_str(), "v1.0");
        assert_eq!(ApiVersion::Beta.as_str(), "beta");
    }
}
