//! The registry: which checks exist, how they run, and what they found.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use crate::check::{CheckResult, HealthCheck, Status};

/// Which probe a check belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Tag {
    /// `/health/live`: only the process's own state. Never tag a dependency `Live`: a
    /// failing liveness probe restarts the container.
    Live,
    /// `/health/ready`: dependencies needed to serve traffic.
    Ready,
    /// `/health/startup`: one-off startup work.
    Startup,
    /// Your own grouping.
    Custom(Cow<'static, str>),
}

/// One registered check and how to run it.
///
/// ```
/// use std::time::Duration;
/// use keel_health::{check_fn, CheckResult, Registration, Tag};
///
/// let cache = Registration::new("cache", check_fn(|| async { CheckResult::pass() }))
///     .tags([Tag::Ready])
///     .timeout(Duration::from_millis(500))
///     .non_critical(); // a failing cache degrades the service, it does not stop it
/// ```
#[must_use]
pub struct Registration {
    name: String,
    check: Arc<dyn HealthCheck>,
    tags: Vec<Tag>,
    timeout: Duration,
    critical: bool,
}

impl fmt::Debug for Registration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registration")
            .field("name", &self.name)
            .field("tags", &self.tags)
            .field("timeout", &self.timeout)
            .field("critical", &self.critical)
            .finish_non_exhaustive()
    }
}

impl Registration {
    /// A critical check named `name`, tagged `Ready`, with a 1 s timeout (Kubernetes'
    /// default probe timeout).
    pub fn new(name: impl Into<String>, check: impl HealthCheck) -> Self {
        Registration {
            name: name.into(),
            check: Arc::new(check),
            tags: vec![Tag::Ready],
            timeout: Duration::from_secs(1),
            critical: true,
        }
    }

    /// Replaces the tags.
    pub fn tags(mut self, tags: impl IntoIterator<Item = Tag>) -> Self {
        self.tags = tags.into_iter().collect();
        self
    }

    /// How long the check may take before it counts as failed.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// A failure of this check makes the whole `warn`, not `fail`.
    pub fn non_critical(mut self) -> Self {
        self.critical = false;
        self
    }
}

/// One check's latest outcome.
#[derive(Clone, Debug)]
pub struct CheckOutcome {
    /// The check's name.
    pub name: String,
    /// Its `componentType`.
    pub component_type: &'static str,
    /// Its measurement name.
    pub measurement: &'static str,
    /// What it found.
    pub result: CheckResult,
    /// Whether its failure fails the whole.
    pub critical: bool,
    /// How long it ran.
    pub duration: Duration,
    /// When it finished.
    pub time: SystemTime,
}

struct Cached {
    at: Instant,
    outcome: Arc<CheckOutcome>,
}

struct Entry {
    registration: Registration,
    cache: tokio::sync::Mutex<Option<Cached>>,
}

struct Inner {
    entries: Vec<Entry>,
    ttl: Duration,
    draining: AtomicBool,
    started: AtomicBool,
    /// Rendered bodies per (tag, details), reused until their oldest result expires.
    rendered: std::sync::RwLock<Vec<(Option<Tag>, bool, Rendered)>>,
    service: Option<Arc<ServiceInfo>>,
}

/// A rendered probe response (the router's; not public).
#[derive(Clone, Debug)]
pub(crate) struct Rendered {
    /// The overall status.
    pub(crate) status: Status,
    /// The `application/health+json` body.
    pub(crate) body: bytes::Bytes,
    /// `Content-Type`, `Cache-Control` and `Content-Length`, built once with the body:
    /// a probe clones them instead of building and hashing them again.
    pub(crate) headers: http::HeaderMap,
    fresh_until: Instant,
}

impl Rendered {
    fn new(status: Status, body: bytes::Bytes, fresh_until: Instant) -> Self {
        let mut headers = http::HeaderMap::with_capacity(3);
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static(crate::router::HEALTH_JSON),
        );
        headers.insert(
            http::header::CACHE_CONTROL,
            http::HeaderValue::from_static("no-store"),
        );
        headers.insert(http::header::CONTENT_LENGTH, body.len().into());
        Rendered {
            status,
            body,
            headers,
            fresh_until,
        }
    }
}

/// The checks of a service, run concurrently with cached, single-flight results: while
/// a result is younger than the cache TTL every probe gets it, and concurrent probes of
/// a stale check wait for one run. A thousand probes a second reach a dependency at
/// most once per TTL. Cheap to clone.
///
/// ```
/// use std::time::Duration;
/// use keel_health::{check_fn, CheckResult, HealthRegistry, Registration, Status};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let health = HealthRegistry::builder()
///     .cache_ttl(Duration::from_secs(2))
///     .register(Registration::new("queue", check_fn(|| async { CheckResult::pass() })))
///     .build();
/// let report = health.readiness().await;
/// assert_eq!(report.status(), Status::Pass);
/// # }
/// ```
#[derive(Clone)]
pub struct HealthRegistry {
    inner: Arc<Inner>,
}

impl fmt::Debug for HealthRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HealthRegistry")
            .field("checks", &self.inner.entries.len())
            .field("ttl", &self.inner.ttl)
            .field("draining", &self.is_draining())
            .finish()
    }
}

/// Builds a [`HealthRegistry`].
#[derive(Debug, Default)]
#[must_use]
pub struct HealthRegistryBuilder {
    registrations: Vec<Registration>,
    ttl: Option<Duration>,
    started: bool,
    service: Option<ServiceInfo>,
}

/// What the health+json top level says about the service (draft-inadarei-api-health-check
/// §3: `serviceId`, `version`, `description`), shown with details only.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct ServiceInfo {
    service_id: String,
    version: String,
    description: Option<String>,
}

impl HealthRegistryBuilder {
    /// Adds a check.
    pub fn register(mut self, registration: Registration) -> Self {
        self.registrations.push(registration);
        self
    }

    /// How long a result is reused (default 1 s; zero still merges concurrent probes of
    /// one run).
    pub fn cache_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// The service's id and version for the health+json body (`serviceId`, `version`;
    /// shown only when details are).
    ///
    /// ```
    /// use keel_health::HealthRegistry;
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let health = HealthRegistry::builder()
    ///     .started()
    ///     .service("orders-api", env!("CARGO_PKG_VERSION"))
    ///     .description("Orders for the shop")
    ///     .build();
    /// let body = health.run(None).await.to_json(true);
    /// assert_eq!(body["serviceId"], "orders-api");
    /// assert_eq!(body["description"], "Orders for the shop");
    /// assert!(health.run(None).await.to_json(false).get("serviceId").is_none());
    /// # }
    /// ```
    pub fn service(mut self, service_id: impl Into<String>, version: impl Into<String>) -> Self {
        let info = self.service.get_or_insert_with(ServiceInfo::default);
        info.service_id = service_id.into();
        info.version = version.into();
        self
    }

    /// A human-friendly description of the service for the health+json body.
    pub fn description(mut self, description: impl Into<String>) -> Self {
        self.service
            .get_or_insert_with(ServiceInfo::default)
            .description = Some(description.into());
        self
    }

    /// Marks startup as done from the beginning (no startup work to wait for).
    pub fn started(mut self) -> Self {
        self.started = true;
        self
    }

    /// The registry.
    #[must_use]
    pub fn build(self) -> HealthRegistry {
        HealthRegistry {
            inner: Arc::new(Inner {
                entries: self
                    .registrations
                    .into_iter()
                    .map(|registration| Entry {
                        registration,
                        cache: tokio::sync::Mutex::new(None),
                    })
                    .collect(),
                ttl: self.ttl.unwrap_or(Duration::from_secs(1)),
                draining: AtomicBool::new(false),
                started: AtomicBool::new(self.started),
                rendered: std::sync::RwLock::new(Vec::new()),
                service: self.service.map(Arc::new),
            }),
        }
    }
}

impl HealthRegistry {
    /// A builder.
    pub fn builder() -> HealthRegistryBuilder {
        HealthRegistryBuilder::default()
    }

    /// Runs the checks tagged `tag` (all checks for `None`), concurrently. `Ready` while
    /// draining and `Startup` before [`mark_started`](Self::mark_started) answer `fail`
    /// at once, without running checks, however they are asked for.
    pub async fn run(&self, tag: Option<&Tag>) -> HealthReport {
        if let Some(probe) = tag
            && let Some(refusal) = self.refusal(probe)
        {
            return refusal;
        }
        let runs = self
            .inner
            .entries
            .iter()
            .filter(|e| tag.is_none_or(|t| e.registration.tags.contains(t)))
            .map(|e| self.run_cached(e));
        let results = futures_util::future::join_all(runs).await;
        // The report is as fresh as its oldest result.
        let oldest = results
            .iter()
            .map(|(_, at)| *at)
            .min()
            .unwrap_or_else(Instant::now);
        let mut report = HealthReport::new(
            results.into_iter().map(|(outcome, _)| outcome).collect(),
            oldest + self.inner.ttl,
        );
        report.service = self.inner.service.clone();
        report
    }

    /// The rendered body for `tag`'s checks, reused while every result in it is within
    /// the cache TTL: a cached probe is a read lock and a reference-count
    /// increment, with no JSON work.
    pub(crate) async fn render(&self, tag: Option<&Tag>, details: bool) -> Rendered {
        // Readiness while draining and startup before the end of startup answer at once,
        // whichever way they are asked for.
        if let Some(probe) = tag
            && let Some(refusal) = self.refusal(probe)
        {
            return refusal.rendered(details);
        }
        let now = Instant::now();
        if let Ok(rendered) = self.inner.rendered.read()
            && let Some((_, _, r)) = rendered
                .iter()
                .find(|(t, d, r)| t.as_ref() == tag && *d == details && now < r.fresh_until)
        {
            return r.clone();
        }
        let report = self.run(tag).await;
        let fresh = Rendered::new(
            report.status(),
            bytes::Bytes::from(report.to_json(details).to_string()),
            report.fresh_until,
        );
        if let Ok(mut rendered) = self.inner.rendered.write() {
            match rendered
                .iter_mut()
                .find(|(t, d, _)| t.as_ref() == tag && *d == details)
            {
                Some(slot) => slot.2 = fresh.clone(),
                None => rendered.push((tag.cloned(), details, fresh.clone())),
            }
        }
        fresh
    }

    /// The refusal a probe gets without running checks: readiness while draining,
    /// startup until started.
    fn refusal(&self, probe: &Tag) -> Option<HealthReport> {
        let mut refusal = match probe {
            Tag::Ready if self.is_draining() => Some(HealthReport::refusing(
                "draining: the service is shutting down",
            )),
            Tag::Startup if !self.inner.started.load(Ordering::Acquire) => {
                Some(HealthReport::refusing("starting: startup work is not done"))
            }
            _ => None,
        }?;
        refusal.service = self.inner.service.clone();
        Some(refusal)
    }

    /// Liveness: the checks tagged `Live` (none by default: the process answers).
    pub async fn liveness(&self) -> HealthReport {
        self.run(Some(&Tag::Live)).await
    }

    /// Readiness: the checks tagged `Ready`; `fail` while draining.
    pub async fn readiness(&self) -> HealthReport {
        self.run(Some(&Tag::Ready)).await
    }

    /// Startup: `fail` until [`mark_started`](Self::mark_started), then the checks
    /// tagged `Startup`.
    pub async fn startup(&self) -> HealthReport {
        self.run(Some(&Tag::Startup)).await
    }

    /// Marks startup work as done.
    pub fn mark_started(&self) {
        self.inner.started.store(true, Ordering::Release);
    }

    /// Turns readiness to `fail` at once (liveness is unaffected), so the load
    /// balancer stops sending traffic.
    pub fn begin_drain(&self) {
        if !self.inner.draining.swap(true, Ordering::AcqRel) {
            tracing::info!("health: draining, readiness now fails");
        }
    }

    /// Whether the service is draining.
    #[must_use]
    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::Acquire)
    }

    /// [`begin_drain`](Self::begin_drain), then waits `period` for load balancers to
    /// notice. Await it in a server's graceful-shutdown future, before the server stops
    /// accepting.
    pub async fn drain(&self, period: Duration) {
        self.begin_drain();
        tokio::time::sleep(period).await;
    }

    /// Runs every check each `interval` in the background (through the cache), so
    /// their status and duration metrics stay current without probes. The task stops
    /// when the handle is aborted or the runtime shuts down.
    #[must_use = "dropping the handle detaches the publisher; keep it to stop it with abort()"]
    pub fn spawn_publisher(&self, interval: Duration) -> tokio::task::JoinHandle<()> {
        let registry = self.clone();
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                let _ = registry.run(None).await;
            }
        })
    }

    async fn run_cached(&self, entry: &Entry) -> (Arc<CheckOutcome>, Instant) {
        let mut cached = entry.cache.lock().await;
        if let Some(c) = cached.as_ref()
            && c.at.elapsed() < self.inner.ttl
        {
            return (c.outcome.clone(), c.at);
        }
        let outcome = Arc::new(run_once(&entry.registration).await);
        let at = Instant::now();
        *cached = Some(Cached {
            at,
            outcome: outcome.clone(),
        });
        (outcome, at)
    }
}

/// Runs one check on its own task, so a panic fails the check instead of the caller,
/// and under its timeout, which aborts it.
async fn run_once(registration: &Registration) -> CheckOutcome {
    let start = Instant::now();
    let check = registration.check.clone();
    // In the caller's tracing span: a probe's check logs under the probe's request.
    let task = tokio::spawn(tracing::Instrument::in_current_span(async move {
        check.check().await
    }));
    let abort = task.abort_handle();
    let result = match tokio::time::timeout(registration.timeout, task).await {
        Ok(Ok(result)) => result,
        Ok(Err(join)) if join.is_panic() => CheckResult::fail("the check panicked"),
        Ok(Err(_)) => CheckResult::fail("the check was cancelled"),
        Err(_) => {
            abort.abort();
            CheckResult::fail(format!("timed out after {:?}", registration.timeout))
        }
    };
    let duration = start.elapsed();
    let name = registration.name.clone();
    metrics::gauge!("health_check_status", "check" => name.clone()).set(result.status().as_gauge());
    metrics::gauge!("health_check_duration_seconds", "check" => name.clone())
        .set(duration.as_secs_f64());
    if result.status() != Status::Pass {
        tracing::warn!(check = %name, status = %result.status(), output = result.output().unwrap_or(""), "health check not passing");
    }
    CheckOutcome {
        name,
        component_type: registration.check.component_type(),
        measurement: registration.check.measurement(),
        result,
        critical: registration.critical,
        duration,
        time: SystemTime::now(),
    }
}

/// The outcome of one probe: the overall status and each check's outcome.
#[derive(Clone, Debug)]
pub struct HealthReport {
    service: Option<Arc<ServiceInfo>>,
    status: Status,
    output: Option<&'static str>,
    checks: Vec<Arc<CheckOutcome>>,
    fresh_until: Instant,
}

impl HealthReport {
    fn new(checks: Vec<Arc<CheckOutcome>>, fresh_until: Instant) -> Self {
        let status = checks.iter().fold(Status::Pass, |worst, c| {
            let status = match (c.result.status(), c.critical) {
                (Status::Fail, false) => Status::Warn,
                (status, _) => status,
            };
            worst.max(status)
        });
        HealthReport {
            status,
            output: None,
            checks,
            fresh_until,
            service: None,
        }
    }

    fn refusing(output: &'static str) -> Self {
        HealthReport {
            status: Status::Fail,
            output: Some(output),
            checks: Vec::new(),
            fresh_until: Instant::now(),
            service: None,
        }
    }

    fn rendered(&self, details: bool) -> Rendered {
        Rendered::new(
            self.status,
            bytes::Bytes::from(self.to_json(details).to_string()),
            self.fresh_until,
        )
    }

    /// The worst status among the checks (a non-critical failure counts as `warn`).
    #[must_use]
    pub fn status(&self) -> Status {
        self.status
    }

    /// Each check's outcome.
    #[must_use]
    pub fn checks(&self) -> &[Arc<CheckOutcome>] {
        &self.checks
    }

    /// The `application/health+json` body. Without details, only `status` (and the
    /// reason for a refusal) is shown, for public exposure.
    #[must_use]
    pub fn to_json(&self, details: bool) -> serde_json::Value {
        let mut body = serde_json::Map::new();
        body.insert("status".into(), self.status.to_string().into());
        if let Some(output) = self.output {
            body.insert("output".into(), output.into());
        }
        if details && let Some(service) = &self.service {
            body.insert("serviceId".into(), service.service_id.clone().into());
            body.insert("version".into(), service.version.clone().into());
            if let Some(description) = &service.description {
                body.insert("description".into(), description.clone().into());
            }
        }
        if details && !self.checks.is_empty() {
            let mut checks = serde_json::Map::new();
            for c in &self.checks {
                let mut item = serde_json::Map::new();
                item.insert("componentId".into(), c.name.clone().into());
                item.insert("componentType".into(), c.component_type.into());
                if let Some((value, unit)) = c.result.observation() {
                    item.insert("observedValue".into(), value.into());
                    item.insert("observedUnit".into(), unit.into());
                }
                item.insert("status".into(), c.result.status().to_string().into());
                item.insert(
                    "time".into(),
                    humantime::format_rfc3339_millis(c.time).to_string().into(),
                );
                if let Some(output) = c.result.output() {
                    item.insert("output".into(), output.into());
                }
                let key = format!("{}:{}", c.name, c.measurement);
                checks.insert(key, serde_json::Value::Array(vec![item.into()]));
            }
            body.insert("checks".into(), checks.into());
        }
        body.into()
    }
}
