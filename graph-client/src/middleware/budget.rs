//! The budgets as a layer: a place in the tenant's adaptive concurrency and in each
//! mailbox's budget for each attempt.

use std::sync::Arc;

use tower::Layer;

use super::{
    CallContext, GraphFuture, GraphHttpRequest, GraphService, Middleware, MiddlewareService,
};
use crate::budget::Budgets;

#[derive(Clone, Debug)]
pub(crate) struct BudgetLayer {
    pub(crate) budgets: Arc<Budgets>,
}

impl Layer<GraphService> for BudgetLayer {
    type Service = MiddlewareService<Self>;

    fn layer(&self, next: GraphService) -> Self::Service {
        MiddlewareService::new(self.clone(), next)
    }
}

impl Middleware for BudgetLayer {
    fn handle(&self, next: GraphService, request: GraphHttpRequest) -> GraphFuture {
        let inner = next;
        let budgets = self.budgets.clone();
        Box::pin(async move {
            let (tenant, mailboxes) = request
                .extensions()
                .get::<CallContext>()
                .map(|c| (c.tenant.clone(), c.mailboxes.clone()))
                .unwrap_or_default();
            let held = budgets.acquire(&tenant, &mailboxes).await;
            let answer = inner.send(request).await;
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
