//! The Prometheus recorder and `/metrics` endpoint.

use std::fmt;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::slo::SloTracker;

use crate::buckets::LATENCY_BUCKETS;

/// Why the recorder could not be installed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MetricsError {
    /// Another `metrics` recorder is installed already.
    #[error("a global metrics recorder is already installed; install Prometheus once, at startup")]
    AlreadyInstalled,
    /// The exporter refused the configuration; its error is the source.
    #[error("invalid Prometheus exporter configuration")]
    Config(#[source] Box<dyn std::error::Error + Send + Sync + 'static>),
}

/// The global Prometheus recorder: histograms as buckets (never summaries, which cannot
/// be aggregated across instances), plus an optional [`SloTracker`] whose gauges are
/// refreshed before every scrape.
///
/// ```no_run
/// use keel_observability::PrometheusMetrics;
///
/// let metrics = PrometheusMetrics::install()?;
/// let app: axum::Router = axum::Router::new().merge(metrics.router());
/// # Ok::<(), keel_observability::MetricsError>(())
/// ```
#[derive(Clone)]
pub struct PrometheusMetrics {
    handle: PrometheusHandle,
    slo: Option<SloTracker>,
}

impl fmt::Debug for PrometheusMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrometheusMetrics")
            .field("slo", &self.slo)
            .finish_non_exhaustive()
    }
}

impl PrometheusMetrics {
    /// Installs the recorder globally with [`LATENCY_BUCKETS`] for `*_seconds`
    /// histograms, and starts a background thread that runs the exporter's upkeep every
    /// 5 seconds.
    ///
    /// # Errors
    /// [`MetricsError::AlreadyInstalled`] when a recorder is already set.
    pub fn install() -> Result<Self, MetricsError> {
        Self::install_with(PrometheusBuilder::new())
    }

    /// Like [`install`](Self::install), from a builder you configured (global labels,
    /// other buckets). The `_seconds` buckets are added unless you set them.
    ///
    /// # Errors
    /// As [`install`](Self::install); [`MetricsError::Config`] for bad buckets.
    pub fn install_with(builder: PrometheusBuilder) -> Result<Self, MetricsError> {
        let recorder = builder
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
            .map_err(|e| MetricsError::Config(Box::new(e)))?
            .build_recorder();
        let handle = recorder.handle();
        metrics::set_global_recorder(recorder).map_err(|_| MetricsError::AlreadyInstalled)?;
        let upkeep = handle.clone();
        let spawned = std::thread::Builder::new()
            .name("keel-metrics-upkeep".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(Duration::from_secs(5));
                    upkeep.run_upkeep();
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "could not start the metrics upkeep thread; scrapes still drain histograms");
        }
        Ok(PrometheusMetrics { handle, slo: None })
    }

    /// Refreshes `tracker`'s SLO gauges before every render.
    #[must_use]
    pub fn with_slo(mut self, tracker: SloTracker) -> Self {
        self.slo = Some(tracker);
        self
    }

    /// The text exposition format (version 0.0.4).
    #[must_use]
    pub fn render(&self) -> String {
        if let Some(slo) = &self.slo {
            slo.export_metrics();
        }
        self.handle.render()
    }

    /// The underlying exporter handle.
    #[must_use]
    pub fn handle(&self) -> &PrometheusHandle {
        &self.handle
    }

    /// An axum router serving `GET /metrics`.
    #[cfg(feature = "axum")]
    #[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
    pub fn router<S: Clone + Send + Sync + 'static>(&self) -> axum::Router<S> {
        let metrics = self.clone();
        axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || {
                let metrics = metrics.clone();
                async move {
                    (
                        [(
                            http::header::CONTENT_TYPE,
                            "text/plain; version=0.0.4; charset=utf-8",
                        )],
                        metrics.render(),
                    )
                }
            }),
        )
    }
}
