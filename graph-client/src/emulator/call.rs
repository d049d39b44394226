//! The prologue every Graph read shares, as an axum extractor: the API version checked,
//! the caller's token and permissions checked, the query options parsed.

use std::marker::PhantomData;
use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::HeaderMap;
use axum::http::request::Parts;
use axum::response::Response;

use super::State;
use super::directory::Tenant;
use serde_json::{Map, Value};

use super::graph::{Options, collection, entity, not_found, prepare};

/// What a route needs: the permissions that may call it (any one of them, application
/// or delegated) and the properties its `$filter` may name.
pub(crate) trait Access: Send + Sync + 'static {
    const PERMISSIONS: &'static [&'static str];
    const FILTERABLE: &'static [&'static str];
}

/// An authorized read: refused with Graph's error before the handler runs when the
/// version, the token, the permissions or the query options are wrong.
pub(crate) struct Call<A> {
    pub(crate) state: Arc<State>,
    pub(crate) headers: HeaderMap,
    pub(crate) version: String,
    pub(crate) options: Options,
    tenant: usize,
    access: PhantomData<A>,
}

impl<A> Call<A> {
    /// The caller's tenant.
    pub(crate) fn tenant(&self) -> &Tenant {
        &self.state.tenants[self.tenant]
    }

    /// One entity, projected by `$select`, with its `@odata.context`.
    pub(crate) fn entity(&self, context: &str, item: &Map<String, Value>) -> Response {
        entity(
            &self.state,
            &self.headers,
            &self.version,
            context,
            &self.options.project(item),
        )
    }

    /// A page of `items` under the request's options (see [`collection`]).
    pub(crate) fn collection(&self, path: &str, items: &[&Map<String, Value>]) -> Response {
        collection(
            &self.state,
            &self.headers,
            &self.version,
            path,
            &self.options,
            items,
        )
    }

    /// Graph's 404 for `id`.
    pub(crate) fn not_found(&self, id: &str) -> Response {
        not_found(&self.state, &self.headers, id)
    }
}

impl<A: Access> FromRequestParts<Arc<State>> for Call<A> {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<State>) -> Result<Self, Response> {
        let version = parts
            .uri
            .path()
            .trim_start_matches('/')
            .split('/')
            .next()
            .unwrap_or_default()
            .to_owned();
        let (tenant, options) = prepare(
            state,
            &version,
            &parts.headers,
            parts.uri.query(),
            A::PERMISSIONS,
            A::FILTERABLE,
        )
        .map_err(|refused| *refused)?;
        let tenant = state
            .tenants
            .iter()
            .position(|t| std::ptr::eq(t, tenant))
            .unwrap_or_default();
        Ok(Call {
            state: state.clone(),
            headers: parts.headers.clone(),
            version,
            options,
            tenant,
            access: PhantomData,
        })
    }
}

/// Declares an [`Access`]: `access!(Name, PERMISSIONS, FILTERABLE)`.
macro_rules! access {
    ($name:ident, $permissions:expr, $filterable:expr) => {
        pub(crate) struct $name;
        impl $crate::emulator::call::Access for $name {
            const PERMISSIONS: &'static [&'static str] = $permissions;
            const FILTERABLE: &'static [&'static str] = $filterable;
        }
    };
}
pub(crate) use access;
