//! OTLP/HTTP export of traces and metrics (feature `otlp`).
//!
//! - Traces: [`LogConfigBuilder::otlp`](crate::logging::LogConfigBuilder::otlp) adds a
//!   `tracing-opentelemetry` layer to the subscriber [`init`](crate::init) installs, so
//!   every span is exported in batches to `<endpoint>/v1/traces`. Requests that arrive
//!   with a W3C `traceparent` continue the caller's trace.
//! - Metrics: [`OtlpMetrics::install`] installs an [`OtlpRecorder`] as the global
//!   `metrics` recorder, so the RED and SLO metrics (and any other `metrics` call) are
//!   pushed to `<endpoint>/v1/metrics` periodically. `metrics` has one global recorder:
//!   install this one or [`PrometheusMetrics`](crate::PrometheusMetrics), or put both
//!   behind `metrics-util`'s fan-out layer.
//!
//! Export happens on background threads with a blocking HTTP client, so it works with or
//! without a tokio runtime. Drop the guards (or call `shutdown`) before exit to flush.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics::{
    Counter, CounterFn, Gauge, GaugeFn, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder,
    SharedString, Unit,
};
use opentelemetry::KeyValue;
use opentelemetry::metrics::{Meter, MeterProvider as _};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::trace::SdkTracerProvider;

use crate::buckets::LATENCY_BUCKETS;

/// Why OTLP export could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OtlpError {
    /// The endpoint is not an `http://` or `https://` URL.
    #[error("invalid OTLP endpoint {0:?}: use a base URL such as http://127.0.0.1:4318")]
    InvalidEndpoint(String),
    /// The exporter could not be built, or a push failed; the exporter's error is the
    /// source.
    #[error("the OTLP exporter failed")]
    Exporter(#[source] Box<dyn std::error::Error + Send + Sync + 'static>),
    /// Another `metrics` recorder is installed already.
    #[error(
        "a global metrics recorder is already installed; install OTLP metrics once, at startup"
    )]
    AlreadyInstalled,
}

/// Where and how to export.
///
/// ```
/// use std::time::Duration;
/// use keel_observability::otlp::OtlpConfig;
///
/// let config = OtlpConfig::new("orders-service")
///     .endpoint("http://127.0.0.1:4318")
///     .metrics_interval(Duration::from_secs(15));
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct OtlpConfig {
    service_name: String,
    endpoint: String,
    timeout: Duration,
    metrics_interval: Duration,
}

impl OtlpConfig {
    /// Export as `service_name` to the collector on `http://127.0.0.1:4318` (the OTLP/HTTP
    /// default), with a 10 s export timeout and metrics every 60 s.
    #[must_use]
    pub fn new(service_name: impl Into<String>) -> Self {
        OtlpConfig {
            service_name: service_name.into(),
            endpoint: "http://127.0.0.1:4318".to_owned(),
            timeout: Duration::from_secs(10),
            metrics_interval: Duration::from_secs(60),
        }
    }

    /// The collector's base URL; `/v1/traces` and `/v1/metrics` are appended.
    #[must_use]
    pub fn endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.endpoint = endpoint.into().trim_end_matches('/').to_owned();
        self
    }

    /// How long one export may take.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How often metrics are pushed.
    #[must_use]
    pub fn metrics_interval(mut self, interval: Duration) -> Self {
        self.metrics_interval = interval;
        self
    }

    fn url(&self, signal: &str) -> Result<String, OtlpError> {
        if self.endpoint.starts_with("http://") || self.endpoint.starts_with("https://") {
            Ok(format!("{}/v1/{signal}", self.endpoint))
        } else {
            Err(OtlpError::InvalidEndpoint(self.endpoint.clone()))
        }
    }

    fn resource(&self) -> Resource {
        Resource::builder()
            .with_service_name(self.service_name.clone())
            .build()
    }
}

/// Flushes and stops span export when dropped.
pub struct OtlpGuard {
    provider: SdkTracerProvider,
}

impl fmt::Debug for OtlpGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OtlpGuard").finish_non_exhaustive()
    }
}

impl Drop for OtlpGuard {
    fn drop(&mut self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!(error = %e, "OTLP span export did not shut down cleanly");
        }
    }
}

/// The `tracing` layer that exports spans, and the guard that flushes it.
pub(crate) fn tracing_layer<S>(
    config: &OtlpConfig,
) -> Result<
    (
        tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::Tracer>,
        OtlpGuard,
    ),
    OtlpError,
>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(config.url("traces")?)
        .with_timeout(config.timeout)
        .build()
        .map_err(|e| OtlpError::Exporter(Box::new(e)))?;
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_id_generator(CorrelatedIds)
        .with_resource(config.resource())
        .build();
    let tracer = provider.tracer("keel-observability");
    Ok((
        tracing_opentelemetry::layer().with_tracer(tracer),
        OtlpGuard { provider },
    ))
}

/// Trace ids for root spans come from the current [`RequestContext`], so the trace a
/// request exports has the `trace_id` its log lines carry, with or without an incoming
/// `traceparent`. Outside a request, and for span ids, ids are random.
///
/// [`RequestContext`]: crate::RequestContext
#[derive(Debug)]
struct CorrelatedIds;

impl opentelemetry_sdk::trace::IdGenerator for CorrelatedIds {
    fn new_trace_id(&self) -> opentelemetry::trace::TraceId {
        let id = crate::RequestContext::with_current(|c| c.map(|c| c.trace().trace_id()))
            .filter(|id| *id != 0)
            .unwrap_or_else(|| fastrand::u128(1..));
        opentelemetry::trace::TraceId::from(id)
    }

    fn new_span_id(&self) -> opentelemetry::trace::SpanId {
        opentelemetry::trace::SpanId::from(fastrand::u64(1..))
    }
}

/// The global OTLP metrics pipeline. Dropping it (or [`shutdown`](Self::shutdown))
/// pushes what is pending.
///
/// ```no_run
/// use keel_observability::otlp::{OtlpConfig, OtlpMetrics};
///
/// let _metrics = OtlpMetrics::install(&OtlpConfig::new("orders-service"))?;
/// metrics::counter!("orders_placed_total").increment(1);
/// # Ok::<(), keel_observability::otlp::OtlpError>(())
/// ```
pub struct OtlpMetrics {
    provider: SdkMeterProvider,
}

impl fmt::Debug for OtlpMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OtlpMetrics").finish_non_exhaustive()
    }
}

impl OtlpMetrics {
    /// Builds the exporter and installs an [`OtlpRecorder`] globally.
    ///
    /// # Errors
    /// [`OtlpError::InvalidEndpoint`], [`OtlpError::Exporter`], or
    /// [`OtlpError::AlreadyInstalled`] when a recorder is already set.
    pub fn install(config: &OtlpConfig) -> Result<Self, OtlpError> {
        let (provider, recorder) = Self::build(config)?;
        metrics::set_global_recorder(recorder).map_err(|_| OtlpError::AlreadyInstalled)?;
        Ok(OtlpMetrics { provider })
    }

    /// Builds the exporter and a recorder without installing it, to compose it with
    /// other recorders.
    ///
    /// # Errors
    /// [`OtlpError::InvalidEndpoint`] or [`OtlpError::Exporter`].
    pub fn build(config: &OtlpConfig) -> Result<(SdkMeterProvider, OtlpRecorder), OtlpError> {
        let exporter = opentelemetry_otlp::MetricExporter::builder()
            .with_http()
            .with_endpoint(config.url("metrics")?)
            .with_timeout(config.timeout)
            .build()
            .map_err(|e| OtlpError::Exporter(Box::new(e)))?;
        let reader = PeriodicReader::builder(exporter)
            .with_interval(config.metrics_interval)
            .build();
        let provider = SdkMeterProvider::builder()
            .with_reader(reader)
            .with_resource(config.resource())
            .build();
        let recorder = OtlpRecorder::new(provider.meter("keel-observability"));
        Ok((provider, recorder))
    }

    /// Pushes pending metrics now.
    ///
    /// # Errors
    /// [`OtlpError::Exporter`] when the push fails.
    pub fn flush(&self) -> Result<(), OtlpError> {
        self.provider
            .force_flush()
            .map_err(|e| OtlpError::Exporter(Box::new(e)))
    }

    /// Pushes pending metrics and stops the exporter.
    ///
    /// # Errors
    /// [`OtlpError::Exporter`] when the last push fails.
    pub fn shutdown(self) -> Result<(), OtlpError> {
        self.provider
            .shutdown()
            .map_err(|e| OtlpError::Exporter(Box::new(e)))
    }
}

/// A `metrics` recorder that forwards to OpenTelemetry instruments: counters to
/// `Counter<u64>`, gauges to `Gauge<f64>` (increments and decrements are applied to a
/// value kept here, then recorded), histograms to `Histogram<f64>` with
/// [`crate::LATENCY_BUCKETS`] as boundaries for names ending in
/// `_seconds`. Labels become attributes.
pub struct OtlpRecorder {
    meter: Meter,
    descriptions: Mutex<HashMap<String, (Option<Unit>, SharedString)>>,
}

impl fmt::Debug for OtlpRecorder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OtlpRecorder").finish_non_exhaustive()
    }
}

impl OtlpRecorder {
    /// A recorder on `meter`.
    #[must_use]
    pub fn new(meter: Meter) -> Self {
        OtlpRecorder {
            meter,
            descriptions: Mutex::new(HashMap::new()),
        }
    }

    fn describe(&self, key: &KeyName, unit: Option<Unit>, description: SharedString) {
        if let Ok(mut descriptions) = self.descriptions.lock() {
            descriptions.insert(key.as_str().to_owned(), (unit, description));
        }
    }

    fn description(&self, name: &str) -> (Option<Cow<'static, str>>, Option<Cow<'static, str>>) {
        let Ok(descriptions) = self.descriptions.lock() else {
            return (None, None);
        };
        match descriptions.get(name) {
            Some((unit, description)) => (
                unit.map(|u| Cow::Borrowed(otel_unit(u))),
                Some(Cow::Owned(description.to_string())),
            ),
            None => (None, None),
        }
    }
}

fn otel_unit(unit: Unit) -> &'static str {
    match unit {
        Unit::Seconds => "s",
        Unit::Milliseconds => "ms",
        Unit::Microseconds => "us",
        Unit::Nanoseconds => "ns",
        Unit::Bytes => "By",
        Unit::Percent => "%",
        _ => "1",
    }
}

fn attributes(key: &Key) -> Vec<KeyValue> {
    key.labels()
        .map(|l| KeyValue::new(l.key().to_owned(), l.value().to_owned()))
        .collect()
}

struct OtelCounter {
    counter: opentelemetry::metrics::Counter<u64>,
    attributes: Vec<KeyValue>,
    value: AtomicU64,
}

impl CounterFn for OtelCounter {
    fn increment(&self, value: u64) {
        self.value.fetch_add(value, Ordering::Relaxed);
        self.counter.add(value, &self.attributes);
    }
    fn absolute(&self, value: u64) {
        let previous = self.value.fetch_max(value, Ordering::Relaxed);
        if value > previous {
            self.counter.add(value - previous, &self.attributes);
        }
    }
}

struct OtelGauge {
    gauge: opentelemetry::metrics::Gauge<f64>,
    attributes: Vec<KeyValue>,
    bits: AtomicU64,
}

impl OtelGauge {
    fn update(&self, f: impl Fn(f64) -> f64) {
        let mut current = self.bits.load(Ordering::Relaxed);
        loop {
            let next = f(f64::from_bits(current));
            match self.bits.compare_exchange_weak(
                current,
                next.to_bits(),
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    self.gauge.record(next, &self.attributes);
                    return;
                }
                Err(actual) => current = actual,
            }
        }
    }
}

impl GaugeFn for OtelGauge {
    fn increment(&self, value: f64) {
        self.update(|v| v + value);
    }
    fn decrement(&self, value: f64) {
        self.update(|v| v - value);
    }
    fn set(&self, value: f64) {
        self.update(|_| value);
    }
}

struct OtelHistogram {
    histogram: opentelemetry::metrics::Histogram<f64>,
    attributes: Vec<KeyValue>,
}

impl HistogramFn for OtelHistogram {
    fn record(&self, value: f64) {
        self.histogram.record(value, &self.attributes);
    }
}

impl Recorder for OtlpRecorder {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.describe(&key, unit, description);
    }
    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.describe(&key, unit, description);
    }
    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.describe(&key, unit, description);
    }

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        let name = key.name().to_owned();
        let (unit, description) = self.description(&name);
        let mut builder = self.meter.u64_counter(name);
        if let Some(unit) = unit {
            builder = builder.with_unit(unit);
        }
        if let Some(description) = description {
            builder = builder.with_description(description);
        }
        Counter::from_arc(Arc::new(OtelCounter {
            counter: builder.build(),
            attributes: attributes(key),
            value: AtomicU64::new(0),
        }))
    }

    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        let name = key.name().to_owned();
        let (unit, description) = self.description(&name);
        let mut builder = self.meter.f64_gauge(name);
        if let Some(unit) = unit {
            builder = builder.with_unit(unit);
        }
        if let Some(description) = description {
            builder = builder.with_description(description);
        }
        Gauge::from_arc(Arc::new(OtelGauge {
            gauge: builder.build(),
            attributes: attributes(key),
            bits: AtomicU64::new(0f64.to_bits()),
        }))
    }

    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        let name = key.name().to_owned();
        let (unit, description) = self.description(&name);
        let seconds = name.ends_with("_seconds");
        let mut builder = self.meter.f64_histogram(name);
        if let Some(unit) = unit {
            builder = builder.with_unit(unit);
        }
        if let Some(description) = description {
            builder = builder.with_description(description);
        }
        if seconds {
            builder = builder.with_boundaries(LATENCY_BUCKETS.to_vec());
        }
        Histogram::from_arc(Arc::new(OtelHistogram {
            histogram: builder.build(),
            attributes: attributes(key),
        }))
    }
}
