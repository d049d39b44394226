//! What a caller asks a token for.

use std::fmt;

/// A request for an access token: the scopes (for Entra ID, usually one resource's
/// `/.default`), the tenant (none: the provider's own), and claims (a Conditional
/// Access or CAE challenge's `claims` JSON, which bypasses every cache).
///
/// Two requests for the same tenant and the same scopes in any order share one cached
/// token.
///
/// A caller that can answer claims challenges (Conditional Access, continuous access
/// evaluation) declares it with [`client_capabilities`](Self::client_capabilities)
/// (`cp1`), as Azure.Identity's `TokenRequestContext { IsCaeEnabled }` does: Entra ID
/// then issues long-lived CAE tokens, and such requests keep their own cached token.
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
    capabilities: Vec<String>,
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
            capabilities: Vec::new(),
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

    /// Declares client capabilities (`cp1`: this caller handles claims challenges), sent
    /// as Microsoft documents: merged into the `claims` parameter as
    /// `{"access_token":{"xms_cc":{"values":["cp1"]}}}`, with a challenge's claims when
    /// there is one.
    ///
    /// ```
    /// use keel_token_manager::client::TokenRequest;
    ///
    /// let request = TokenRequest::new(["https://graph.microsoft.com/.default"]).client_capabilities(["cp1"]);
    /// assert_eq!(
    ///     request.claims_parameter().unwrap().as_deref(),
    ///     Some(r#"{"access_token":{"xms_cc":{"values":["cp1"]}}}"#),
    /// );
    /// let challenged = request.claims(r#"{"access_token":{"nbf":{"essential":true,"value":"1700000000"}}}"#);
    /// assert_eq!(
    ///     challenged.claims_parameter().unwrap().as_deref(),
    ///     Some(r#"{"access_token":{"nbf":{"essential":true,"value":"1700000000"},"xms_cc":{"values":["cp1"]}}}"#),
    /// );
    /// ```
    #[must_use]
    pub fn client_capabilities<I, S>(mut self, capabilities: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut capabilities: Vec<String> = capabilities.into_iter().map(Into::into).collect();
        capabilities.sort_unstable();
        capabilities.dedup();
        self.capabilities = capabilities;
        self
    }

    /// The declared client capabilities, sorted.
    #[must_use]
    pub fn capabilities(&self) -> &[String] {
        &self.capabilities
    }

    /// The `claims` parameter to send to the token endpoint: the challenge's claims with
    /// the client capabilities merged in, or `None` when there are neither.
    ///
    /// # Errors
    /// [`TokenError`](super::TokenError) (permanent) when there are capabilities to merge
    /// and the challenge's claims are not a JSON object.
    pub fn claims_parameter(&self) -> Result<Option<String>, super::TokenError> {
        use serde_json::{Map, Value, json};
        if self.capabilities.is_empty() {
            return Ok(self.claims.clone());
        }
        let mut claims = match self.claims.as_deref() {
            None => Map::new(),
            Some(text) => match serde_json::from_str::<Value>(text) {
                Ok(Value::Object(map)) => map,
                _ => {
                    return Err(super::TokenError::failed(
                        "token request",
                        keel_resilience::ErrorClass::Permanent,
                        std::io::Error::other(
                            "the claims challenge is not a JSON object, so the client capabilities cannot be merged into it",
                        ),
                    ));
                }
            },
        };
        let access = claims
            .entry("access_token")
            .or_insert_with(|| Value::Object(Map::new()));
        if !access.is_object() {
            *access = Value::Object(Map::new());
        }
        if let Value::Object(access) = access {
            access.insert("xms_cc".into(), json!({ "values": self.capabilities }));
        }
        Ok(Some(Value::Object(claims).to_string()))
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
            capabilities: self.capabilities.clone(),
        }
    }
}

impl fmt::Debug for TokenRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenRequest")
            .field("scopes", &self.scopes)
            .field("tenant", &self.tenant)
            .field("claims", &self.claims.as_ref().map(|_| "<challenge>"))
            .field("capabilities", &self.capabilities)
            .finish()
    }
}
