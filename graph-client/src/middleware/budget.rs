//! The budgets as a layer: a place in the tenant's adaptive concurrency and in each
//! mailbox's budget for each attempt.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower::{Layer, Service, ServiceExt as _};

use super::{CallContext, GraphHttpRequest, GraphHttpResponse};
use crate::budget::Budgets;
use crate::error::GraphError;

#[derive(Clone, Debug)]
pub(crate) struct BudgetLayer {
    pub(crate) budgets: Arc<Budgets>,
}

impl<S> Layer<S> for BudgetLayer {
    type Service = BudgetService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        BudgetService {
            inner,
            budgets: self.budgets.clone(),
        }
    }
}

#[derive(Clone, Debug)]
pub(crate) struct BudgetService<S> {
    inner: S,
    budgets: Arc<Budgets>,
}

impl<S> Service<GraphHttpRequest> for BudgetService<S>
where
    S: Service<GraphHttpRequest, Response = GraphHttpResponse, Error = GraphError>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    type Response = GraphHttpResponse;
    type Error = GraphError;
    type Future = Pin<Box<dyn Future<Output = Result<GraphHttpResponse, GraphError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), GraphError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: GraphHttpRequest) -> Self::Future {
        let inner = self.inner.clone();
        let budgets = self.budgets.clone();
        Box::pin(async move {
            let (tenant, mailboxes) = request
                .extensions()
                .get::<CallContext>()
                .map(|c| (c.tenant.clone(), c.mailboxes.clone()))
                .unwrap_or_default();
            let held = budgets.acquire(&tenant, &mailboxes).await;
            let answer = inner.oneshot(request).await;
            if let Ok(response) = &answer {
                if matches!(response.status().as_u16(), 429 | 503) {
                    held.tenant.throttled();
                } else {
                    held.tenant.succeeded();
                }
            }
            answer
        })
    }
}
