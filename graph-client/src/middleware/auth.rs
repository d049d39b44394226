//! Authentication: the tenant's bearer token on every attempt, and a claims challenge
//! answered once.

use std::collections::HashMap;
use std::sync::Arc;

use http::{HeaderValue, StatusCode};
use keel_token_manager::client::{TokenProvider, TokenRequest, claims_challenge};
use tower::Layer;

use super::{
    CallContext, GraphFuture, GraphHttpRequest, GraphService, Middleware, MiddlewareService,
    copy_request,
};
use crate::error::GraphError;

/// Puts the token of the call's tenant ([`CallContext::tenant`]) on the call; a tenant
/// without a provider is [`GraphError::UnknownTenant`], so one tenant's token never
/// goes on another's call. A 401 whose `WWW-Authenticate` carries a claims challenge
/// (Conditional Access, continuous access evaluation) is sent again once with a token
/// asked for with those claims.
#[derive(Clone)]
pub struct AuthLayer {
    providers: Arc<HashMap<String, Arc<dyn TokenProvider>>>,
    scope: String,
}

impl std::fmt::Debug for AuthLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut tenants: Vec<&String> = self.providers.keys().collect();
        tenants.sort();
        f.debug_struct("AuthLayer")
            .field("tenants", &tenants)
            .field("scope", &self.scope)
            .finish()
    }
}

impl AuthLayer {
    /// Tokens for `scope` (the cloud's `/.default`) from each tenant's provider (tenant
    /// names lower-case).
    #[must_use]
    pub fn new(providers: HashMap<String, Arc<dyn TokenProvider>>, scope: &str) -> Self {
        AuthLayer {
            providers: Arc::new(providers),
            scope: scope.to_owned(),
        }
    }
}

impl Layer<GraphService> for AuthLayer {
    type Service = MiddlewareService<Self>;

    fn layer(&self, next: GraphService) -> Self::Service {
        MiddlewareService::new(self.clone(), next)
    }
}

impl Middleware for AuthLayer {
    fn handle(&self, next: GraphService, request: GraphHttpRequest) -> GraphFuture {
        let inner = next;
        let layer = self.clone();
        Box::pin(async move {
            let tenant = request
                .extensions()
                .get::<CallContext>()
                .map(|c| c.tenant.clone())
                .unwrap_or_default();
            let provider = layer
                .providers
                .get(&tenant)
                .ok_or_else(|| GraphError::UnknownTenant(tenant.chars().take(64).collect()))?
                .clone();
            let mut token_request = TokenRequest::new([layer.scope.as_str()]);
            let mut request = request;
            let mut challenged = false;
            loop {
                let token = provider
                    .token(&token_request)
                    .await
                    .map_err(GraphError::Token)?;
                let mut attempt = copy_request(&request);
                let mut bearer = HeaderValue::try_from(format!("Bearer {}", token.secret()))
                    .map_err(|_| {
                        GraphError::Request(crate::RequestError::InvalidHeader(
                            "authorization".into(),
                        ))
                    })?;
                bearer.set_sensitive(true);
                attempt
                    .headers_mut()
                    .insert(http::header::AUTHORIZATION, bearer);
                let answer = inner.send(attempt).await?;
                if answer.status() == StatusCode::UNAUTHORIZED
                    && !challenged
                    && let Some(claims) = answer
                        .headers()
                        .get(http::header::WWW_AUTHENTICATE)
                        .and_then(|v| v.to_str().ok())
                        .and_then(claims_challenge)
                {
                    challenged = true;
                    token_request = token_request.claims(claims);
                    request = copy_request(&request);
                    continue;
                }
                return Ok(answer);
            }
        })
    }
}
