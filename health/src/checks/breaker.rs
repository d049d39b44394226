use std::sync::Arc;

use keel_resilience::breaker::{CircuitBreaker, State};

use crate::check::{CheckResult, HealthCheck};

/// Reports a keel-resilience circuit breaker: closed, disabled or metrics-only pass;
/// half-open warns; open or forced open fails. Register it as non-critical when the
/// service can degrade without that dependency.
#[derive(Clone, Debug)]
pub struct BreakerCheck {
    breaker: Arc<CircuitBreaker>,
}

impl BreakerCheck {
    /// A check of `breaker`.
    #[must_use]
    pub fn new(breaker: Arc<CircuitBreaker>) -> Self {
        BreakerCheck { breaker }
    }
}

#[async_trait::async_trait]
impl HealthCheck for BreakerCheck {
    async fn check(&self) -> CheckResult {
        let m = self.breaker.metrics();
        let result = match m.state {
            State::HalfOpen => CheckResult::warn("half-open: trial calls running"),
            State::Open | State::ForcedOpen => {
                CheckResult::fail(format!("{}: calls are refused", m.state))
            }
            _ => CheckResult::pass(),
        };
        result.observed(m.failure_rate, "percent")
    }

    fn component_type(&self) -> &'static str {
        "component"
    }

    fn measurement(&self) -> &'static str {
        "failureRate"
    }
}
