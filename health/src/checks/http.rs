use std::time::Duration;

use tokio::time::Instant;

use crate::check::{CheckResult, HealthCheck};

/// Sends `GET url`: a 2xx passes, or warns when slower than `warn_above`; anything else
/// fails. Reports the latency in ms.
///
/// ```
/// use std::time::Duration;
/// let check = keel_health::checks::HttpCheck::new(reqwest::Client::new(), "http://127.0.0.1:8081/health")
///     .warn_above(Duration::from_millis(250));
/// ```
#[derive(Clone, Debug)]
pub struct HttpCheck {
    client: reqwest::Client,
    url: String,
    warn_above: Option<Duration>,
}

impl HttpCheck {
    /// A check of `url` with `client`.
    #[must_use]
    pub fn new(client: reqwest::Client, url: impl Into<String>) -> Self {
        HttpCheck {
            client,
            url: url.into(),
            warn_above: None,
        }
    }

    /// Warns when the answer takes longer than this.
    #[must_use]
    pub fn warn_above(mut self, threshold: Duration) -> Self {
        self.warn_above = Some(threshold);
        self
    }
}

#[async_trait::async_trait]
impl HealthCheck for HttpCheck {
    async fn check(&self) -> CheckResult {
        let start = Instant::now();
        match self.client.get(&self.url).send().await {
            Ok(response) if response.status().is_success() => {
                let elapsed = start.elapsed();
                let ms = super::millis(elapsed);
                match self.warn_above {
                    Some(limit) if elapsed > limit => CheckResult::warn(format!(
                        "slow: {ms:.0} ms, above {} ms",
                        limit.as_millis()
                    ))
                    .observed(ms, "ms"),
                    _ => CheckResult::pass().observed(ms, "ms"),
                }
            }
            Ok(response) => CheckResult::fail(format!("answered {}", response.status())),
            // Without the URL: it may carry credentials.
            Err(e) => CheckResult::fail(format!("unreachable: {}", e.without_url())),
        }
    }

    fn component_type(&self) -> &'static str {
        "component"
    }

    fn measurement(&self) -> &'static str {
        "responseTime"
    }
}
