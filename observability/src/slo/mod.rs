//! Service level objectives: rolling-window latency percentiles, availability and
//! error-budget burn rate per route, readable in code and exported as metrics.
//!
//! Each route keeps a ring of time slices (10 slices of 30 s for the default 5-minute
//! window); each slice holds an HDR histogram of latencies with 2 significant digits, so
//! a percentile is within 1% of the exact value and memory per route is fixed whatever
//! the traffic. The number of routes is bounded too: past the limit, new routes are
//! counted under `<other>`.

mod clock;

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use hdrhistogram::Histogram;

pub use clock::{ManualMonotonicClock, MonotonicClock, SystemMonotonicClock};

/// The route name that collects routes past [`SloConfigBuilder::max_routes`].
pub const OTHER_ROUTE: &str = "<other>";

static DESCRIBE: std::sync::Once = std::sync::Once::new();

/// Highest latency tracked exactly: one hour (higher values count as one hour).
const MAX_TRACKED_MICROS: u64 = 3_600_000_000;

/// Why an [`SloConfig`] was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
#[non_exhaustive]
pub enum SloConfigError {
    /// The availability objective is not strictly between 0 and 1.
    #[error("availability objective {0} must be strictly between 0 and 1 (e.g. 0.999 for 99.9%)")]
    Objective(f64),
    /// The window is shorter than one second or not divisible into slices.
    #[error("window {window:?} must be at least 1 s and hold {slices} slices of at least 1 ms")]
    Window {
        /// The window asked for.
        window: Duration,
        /// The slices asked for.
        slices: u32,
    },
    /// Slices out of range.
    #[error("slices must be between 1 and 1000, got {0}")]
    Slices(u32),
}

/// SLO settings.
///
/// ```
/// use std::time::Duration;
/// use keel_observability::slo::SloConfig;
///
/// let config = SloConfig::builder()
///     .window(Duration::from_secs(3600))
///     .availability_objective(0.995)
///     .build()?;
/// assert!(SloConfig::builder().availability_objective(1.5).build().is_err());
/// # Ok::<(), keel_observability::slo::SloConfigError>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct SloConfig {
    window: Duration,
    slices: u32,
    availability_objective: f64,
    max_routes: usize,
}

impl SloConfig {
    /// A builder starting from [`SloConfig::standard`].
    pub fn builder() -> SloConfigBuilder {
        SloConfigBuilder {
            config: SloConfig::standard(),
        }
    }

    /// A 5-minute window in 10 slices, a 99.9% availability objective, 1000 routes.
    #[must_use]
    pub fn standard() -> Self {
        SloConfig {
            window: Duration::from_secs(300),
            slices: 10,
            availability_objective: 0.999,
            max_routes: 1000,
        }
    }

    /// The rolling window.
    #[must_use]
    pub fn window(&self) -> Duration {
        self.window
    }

    /// The availability objective.
    #[must_use]
    pub fn availability_objective(&self) -> f64 {
        self.availability_objective
    }
}

impl Default for SloConfig {
    fn default() -> Self {
        Self::standard()
    }
}

/// Builds an [`SloConfig`].
#[derive(Debug, Clone)]
#[must_use]
pub struct SloConfigBuilder {
    config: SloConfig,
}

impl SloConfigBuilder {
    /// The rolling window over which everything is computed (default 5 minutes).
    pub fn window(mut self, window: Duration) -> Self {
        self.config.window = window;
        self
    }

    /// How many slices the window moves by (default 10): data ages out one slice at a
    /// time.
    pub fn slices(mut self, slices: u32) -> Self {
        self.config.slices = slices;
        self
    }

    /// The share of requests that must succeed (default 0.999).
    pub fn availability_objective(mut self, objective: f64) -> Self {
        self.config.availability_objective = objective;
        self
    }

    /// The most routes tracked separately (default 1000).
    pub fn max_routes(mut self, routes: usize) -> Self {
        self.config.max_routes = routes.max(1);
        self
    }

    /// Checks the settings.
    ///
    /// # Errors
    /// An [`SloConfigError`] saying which setting is out of range.
    pub fn build(self) -> Result<SloConfig, SloConfigError> {
        let c = &self.config;
        if !(c.availability_objective > 0.0 && c.availability_objective < 1.0) {
            return Err(SloConfigError::Objective(c.availability_objective));
        }
        if !(1..=1000).contains(&c.slices) {
            return Err(SloConfigError::Slices(c.slices));
        }
        if c.window < Duration::from_secs(1) || c.window / c.slices < Duration::from_millis(1) {
            return Err(SloConfigError::Window {
                window: c.window,
                slices: c.slices,
            });
        }
        Ok(self.config)
    }
}

/// What one route looks like over the current window.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct SloSnapshot {
    /// The route.
    pub route: String,
    /// Requests in the window.
    pub requests: u64,
    /// Failed requests (5xx or errors) in the window.
    pub failures: u64,
    /// `1 - failures / requests`; 1.0 when there were no requests.
    pub availability: f64,
    /// Median latency.
    pub p50: Duration,
    /// 95th percentile latency.
    pub p95: Duration,
    /// 99th percentile latency.
    pub p99: Duration,
    /// How fast the error budget burns: the failure rate divided by the rate the
    /// objective allows. 1.0 spends the budget exactly over the SLO period; 14.4 over a
    /// 1-hour window is the classic page-now threshold.
    pub error_budget_burn_rate: f64,
}

struct Slice {
    index: u64,
    requests: u64,
    failures: u64,
    latencies: Histogram<u32>,
}

impl Slice {
    fn new() -> Self {
        Slice {
            index: u64::MAX,
            requests: 0,
            failures: 0,
            latencies: Histogram::new_with_bounds(1, MAX_TRACKED_MICROS, 2)
                .expect("static histogram bounds are valid"),
        }
    }
}

struct RouteWindow {
    slices: Vec<Slice>,
}

/// Tracks SLOs per route. Cheap to clone (shared state); feed it from the RED layer
/// ([`RedLayer::with_slo`](crate::RedLayer::with_slo)) or call [`record`](Self::record).
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use keel_observability::slo::{ManualMonotonicClock, SloConfig, SloTracker};
///
/// let tracker = SloTracker::with_clock(SloConfig::standard(), Arc::new(ManualMonotonicClock::new()));
/// for ms in 1..=100 {
///     tracker.record("/orders", Duration::from_millis(ms), ms != 100);
/// }
/// let slo = tracker.snapshot("/orders").unwrap();
/// assert_eq!(slo.requests, 100);
/// assert_eq!(slo.availability, 0.99);
/// assert!(slo.p99 >= Duration::from_millis(99) && slo.p99 <= Duration::from_micros(99_990));
/// assert!((slo.error_budget_burn_rate - 10.0).abs() < 1e-6); // 1% failing vs 0.1% allowed
/// ```
#[derive(Clone)]
pub struct SloTracker {
    inner: Arc<Inner>,
}

struct Inner {
    config: SloConfig,
    slice_nanos: u64,
    clock: Arc<dyn MonotonicClock>,
    routes: RwLock<HashMap<Box<str>, Arc<Mutex<RouteWindow>>>>,
}

impl fmt::Debug for SloTracker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SloTracker")
            .field("config", &self.inner.config)
            .field(
                "routes",
                &self.inner.routes.read().map(|r| r.len()).unwrap_or(0),
            )
            .finish()
    }
}

impl SloTracker {
    /// A tracker on the system clock.
    #[must_use]
    pub fn new(config: SloConfig) -> Self {
        Self::with_clock(config, Arc::new(SystemMonotonicClock::new()))
    }

    /// A tracker on the given clock.
    #[must_use]
    pub fn with_clock(config: SloConfig, clock: Arc<dyn MonotonicClock>) -> Self {
        let slice_nanos = u64::try_from((config.window / config.slices).as_nanos())
            .unwrap_or(u64::MAX)
            .max(1);
        SloTracker {
            inner: Arc::new(Inner {
                config,
                slice_nanos,
                clock,
                routes: RwLock::new(HashMap::new()),
            }),
        }
    }

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &SloConfig {
        &self.inner.config
    }

    fn current_slice(&self) -> u64 {
        u64::try_from(self.inner.clock.now().as_nanos()).unwrap_or(u64::MAX)
            / self.inner.slice_nanos
    }

    fn window_for(&self, route: &str) -> Arc<Mutex<RouteWindow>> {
        if let Some(window) = self
            .inner
            .routes
            .read()
            .ok()
            .and_then(|r| r.get(route).cloned())
        {
            return window;
        }
        let mut routes = match self.inner.routes.write() {
            Ok(routes) => routes,
            Err(poisoned) => poisoned.into_inner(),
        };
        let key = if routes.len() >= self.inner.config.max_routes && !routes.contains_key(route) {
            OTHER_ROUTE
        } else {
            route
        };
        routes
            .entry(key.into())
            .or_insert_with(|| {
                let slices = (0..self.inner.config.slices)
                    .map(|_| Slice::new())
                    .collect();
                Arc::new(Mutex::new(RouteWindow { slices }))
            })
            .clone()
    }

    /// Records one request: its latency and whether it succeeded.
    pub fn record(&self, route: &str, latency: Duration, success: bool) {
        let now = self.current_slice();
        let window = self.window_for(route);
        let mut window = match window.lock() {
            Ok(w) => w,
            Err(poisoned) => poisoned.into_inner(),
        };
        let len = window.slices.len() as u64;
        let slot = &mut window.slices[(now % len) as usize];
        if slot.index != now {
            slot.index = now;
            slot.requests = 0;
            slot.failures = 0;
            slot.latencies.reset();
        }
        slot.requests += 1;
        if !success {
            slot.failures += 1;
        }
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        slot.latencies
            .saturating_record(micros.clamp(1, MAX_TRACKED_MICROS));
    }

    /// The route's SLO over the current window, `None` if the route was never seen.
    #[must_use]
    pub fn snapshot(&self, route: &str) -> Option<SloSnapshot> {
        let window = self.inner.routes.read().ok()?.get(route)?.clone();
        Some(self.snapshot_of(route, &window))
    }

    /// Every route's SLO, sorted by route.
    #[must_use]
    pub fn snapshots(&self) -> Vec<SloSnapshot> {
        let routes: Vec<(String, Arc<Mutex<RouteWindow>>)> = match self.inner.routes.read() {
            Ok(r) => r.iter().map(|(k, v)| (k.to_string(), v.clone())).collect(),
            Err(_) => return Vec::new(),
        };
        let mut snapshots: Vec<SloSnapshot> = routes
            .iter()
            .map(|(route, window)| self.snapshot_of(route, window))
            .collect();
        snapshots.sort_by(|a, b| a.route.cmp(&b.route));
        snapshots
    }

    fn snapshot_of(&self, route: &str, window: &Mutex<RouteWindow>) -> SloSnapshot {
        let now = self.current_slice();
        let window = match window.lock() {
            Ok(w) => w,
            Err(poisoned) => poisoned.into_inner(),
        };
        let live = window.slices.len() as u64;
        let mut merged: Histogram<u32> = Histogram::new_from(&window.slices[0].latencies);
        let (mut requests, mut failures) = (0, 0);
        for slice in &window.slices {
            if slice.index != u64::MAX && slice.index <= now && now - slice.index < live {
                requests += slice.requests;
                failures += slice.failures;
                // Same bounds, so adding cannot fail.
                let _ = merged.add(&slice.latencies);
            }
        }
        drop(window);
        let quantile = |q: f64| {
            if merged.is_empty() {
                Duration::ZERO
            } else {
                Duration::from_micros(merged.value_at_quantile(q))
            }
        };
        #[allow(clippy::cast_precision_loss)]
        let failure_rate = if requests == 0 {
            0.0
        } else {
            failures as f64 / requests as f64
        };
        SloSnapshot {
            route: route.to_owned(),
            requests,
            failures,
            availability: 1.0 - failure_rate,
            p50: quantile(0.50),
            p95: quantile(0.95),
            p99: quantile(0.99),
            error_budget_burn_rate: failure_rate / (1.0 - self.inner.config.availability_objective),
        }
    }

    /// Sets the SLO gauges for every route: `slo_latency_seconds{route,percentile}`
    /// (`percentile` is `50`, `95` or `99`; `quantile` is reserved for summaries),
    /// `slo_availability_ratio{route}`, `slo_error_budget_burn_rate{route}` and
    /// `slo_window_requests{route}`. The Prometheus endpoint calls this before each
    /// scrape.
    pub fn export_metrics(&self) {
        DESCRIBE.call_once(|| {
            metrics::describe_gauge!(
                "slo_latency_seconds",
                metrics::Unit::Seconds,
                "Latency percentile over the SLO window."
            );
            metrics::describe_gauge!(
                "slo_availability_ratio",
                "Share of requests that did not fail over the SLO window."
            );
            metrics::describe_gauge!(
                "slo_error_budget_burn_rate",
                "Failure rate over the SLO window divided by the rate the objective allows."
            );
            metrics::describe_gauge!("slo_window_requests", "Requests in the SLO window.");
        });
        for slo in self.snapshots() {
            for (percentile, value) in [("50", slo.p50), ("95", slo.p95), ("99", slo.p99)] {
                metrics::gauge!("slo_latency_seconds", "route" => slo.route.clone(), "percentile" => percentile)
                    .set(value.as_secs_f64());
            }
            metrics::gauge!("slo_availability_ratio", "route" => slo.route.clone())
                .set(slo.availability);
            metrics::gauge!("slo_error_budget_burn_rate", "route" => slo.route.clone())
                .set(slo.error_budget_burn_rate);
            #[allow(clippy::cast_precision_loss)]
            metrics::gauge!("slo_window_requests", "route" => slo.route).set(slo.requests as f64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracker() -> (SloTracker, Arc<ManualMonotonicClock>) {
        let clock = Arc::new(ManualMonotonicClock::new());
        let config = SloConfig::builder()
            .window(Duration::from_secs(60))
            .slices(6)
            .availability_objective(0.99)
            .max_routes(3)
            .build()
            .unwrap();
        (SloTracker::with_clock(config, clock.clone()), clock)
    }

    /// Nearest-rank percentile of a sample.
    fn reference(sorted: &[u64], q: f64) -> u64 {
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let rank = (q * sorted.len() as f64).ceil() as usize;
        sorted[rank.max(1) - 1]
    }

    #[test]
    fn percentiles_match_a_computed_reference_within_one_percent() {
        let (tracker, _) = tracker();
        // A skewed, deterministic sample: mostly fast, a long tail.
        let mut rng = fastrand::Rng::with_seed(7);
        let mut sample: Vec<u64> = (0..20_000)
            .map(|_| {
                let base = rng.u64(200..5_000);
                if rng.u8(..) < 10 { base * 40 } else { base }
            })
            .collect();
        for &micros in &sample {
            tracker.record("/r", Duration::from_micros(micros), true);
        }
        sample.sort_unstable();
        let slo = tracker.snapshot("/r").unwrap();
        for (q, got) in [(0.5, slo.p50), (0.95, slo.p95), (0.99, slo.p99)] {
            let want = reference(&sample, q);
            let got = u64::try_from(got.as_micros()).unwrap();
            let tolerance = want / 100 + 1;
            assert!(
                got.abs_diff(want) <= tolerance,
                "p{q}: got {got}µs, reference {want}µs"
            );
        }
        assert_eq!(slo.requests, 20_000);
    }

    #[test]
    fn old_slices_leave_the_window() {
        let (tracker, clock) = tracker();
        tracker.record("/r", Duration::from_millis(500), false);
        clock.advance(Duration::from_secs(30));
        for _ in 0..99 {
            tracker.record("/r", Duration::from_millis(10), true);
        }
        let slo = tracker.snapshot("/r").unwrap();
        assert_eq!((slo.requests, slo.failures), (100, 1));
        assert!((slo.error_budget_burn_rate - 1.0).abs() < 1e-9, "{slo:?}");
        // 40 s later the first slice (t=0..10 s) has aged out, the second has not.
        clock.advance(Duration::from_secs(40));
        let slo = tracker.snapshot("/r").unwrap();
        assert_eq!((slo.requests, slo.failures), (99, 0));
        assert!(slo.p99 < Duration::from_millis(11));
        assert!((slo.availability - 1.0).abs() < f64::EPSILON);
        // After a whole window of silence nothing is left.
        clock.advance(Duration::from_secs(60));
        let slo = tracker.snapshot("/r").unwrap();
        assert_eq!(slo.requests, 0);
        assert_eq!(slo.p50, Duration::ZERO);
    }

    #[test]
    fn routes_are_bounded() {
        let (tracker, _) = tracker();
        for i in 0..10 {
            tracker.record(&format!("/r{i}"), Duration::from_millis(1), true);
        }
        let routes: Vec<String> = tracker.snapshots().into_iter().map(|s| s.route).collect();
        assert_eq!(routes.len(), 4, "{routes:?}");
        assert_eq!(tracker.snapshot(OTHER_ROUTE).unwrap().requests, 7);
    }

    #[test]
    fn config_is_validated() {
        assert_eq!(
            SloConfig::builder().availability_objective(1.0).build(),
            Err(SloConfigError::Objective(1.0))
        );
        assert!(SloConfig::builder().slices(0).build().is_err());
        assert!(
            SloConfig::builder()
                .window(Duration::from_millis(10))
                .build()
                .is_err()
        );
    }
}
