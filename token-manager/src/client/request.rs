//! What a caller asks a token for.

use std::fmt;

/// A request for an access token: the scopes (for Entra ID, usually one resource's
/// `/.default`), the tenant (none: the provider's own), and claims (a Conditional
/// Access or CAE challenge's `claims` JSON, which bypasses every cache).
///
/// Two requests for the same tenant and the same scopes in any order share one cached
/// token.
///
/// ```
/// use keel_token_manager::client::TokenRequest;
///
/// let a = TokenRequest::new(["User.Read", "Mail.Read"]).tenant("contoso");
/// let b = TokenRequest::new(["Mail.Read", "User.Read", "User.Read"]).tenant("contoso");
/// assert_eq!(a, b);
/// assert_eq!(a.scopes(), ["Mail.Read", "User.Read"]);
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct TokenRequest {
    scopes: Vec<String>,
    tenant: Option<String>,
    claims: Option<String>,
}

impl TokenRequest {
    /// A request for `scopes` (kept sorted and without duplicates).
    pub fn new<I, S>(scopes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut scopes: Vec<String> = scopes.into_iter().map(Into::into).collect();
        scopes.sort_unstable();
        scopes.dedup();
        Self {
            scopes,
            tenant: None,
            claims: None,
        }
    }

    /// For this tenant (an id, a domain, `organizations` or `common`).
    #[must_use]
    pub fn tenant(mut self, tenant: impl Into<String>) -> Self {
        self.tenant = Some(tenant.into());
        self
    }

    /// With the claims of a challenge (`WWW-Authenticate: ... claims="..."`, decoded):
    /// the token is requested from the provider, never taken from a cache.
    #[must_use]
    pub fn claims(mut self, claims: impl Into<String>) -> Self {
        self.claims = Some(claims.into());
        self
    }

    /// The scopes, sorted.
    #[must_use]
    pub fn scopes(&self) -> &[String] {
        &self.scopes
    }

    /// The tenant, if one was named.
    #[must_use]
    pub fn tenant_id(&self) -> Option<&str> {
        self.tenant.as_deref()
    }

    /// The challenge's claims, if any.
    #[must_use]
    pub fn claims_json(&self) -> Option<&str> {
        self.claims.as_deref()
    }

    /// The same request without claims: the cache key a claims request refreshes.
    pub(crate) fn without_claims(&self) -> Self {
        Self {
            scopes: self.scopes.clone(),
            tenant: self.tenant.clone(),
            claims: None,
        }
    }
}

impl fmt::Debug for TokenRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenRequest")
            .field("scopes", &self.scopes)
            .field("tenant", &self.tenant)
            .field("claims", &self.claims.as_ref().map(|_| "<challenge>"))
            .finish()
    }
}
