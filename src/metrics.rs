//! Prometheus metrics and the process health that `/healthz` and `/readyz` report.
//!
//! Every label has a bounded set of values: results and reasons are the stable `Error::reason()`
//! labels (anything unexpected becomes `Other`), services are the three targets, codes are HTTP
//! status codes (`0` for a transport error). No label ever names an object, a cluster or a URL.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kube::runtime::reflector::Store;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::api::ConditionStatus;
use crate::api::{DgaModel, DgaModelStatus};
use crate::error::Service;
use crate::status::{self, READY};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    service: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConditionLabel {
    condition: String,
}

/// Every reason the operator writes into the Ready condition (the error reasons plus the
/// success ones). A reason outside this list is reported as `Other`.
const KNOWN_REASONS: &[&str] = &[
    "Installed",
    "Suspended",
    "InvalidSpec",
    "SecretNotFound",
    "SecretInvalid",
    "ReleaseNotFound",
    "InvalidRelease",
    "InvalidBundle",
    "ChecksumMismatch",
    "Unreachable",
    "Unauthorized",
    "VersionUnsupported",
    "LicenseInsufficient",
    "Conflict",
    "TransientError",
    "RequestRejected",
    "KubernetesError",
    "InternalError",
];

fn bounded(reason: &str) -> &'static str {
    KNOWN_REASONS
        .iter()
        .find(|r| **r == reason)
        .copied()
        .unwrap_or("Other")
}

/// The metric label of a target service (its variant name, not its display text).
pub fn service_label(s: Service) -> &'static str {
    match s {
        Service::Elasticsearch => "Elasticsearch",
        Service::Kibana => "Kibana",
        Service::Releases => "Releases",
    }
}

/// What `/healthz` and `/readyz` answer.
#[derive(Default)]
pub struct Health {
    ready: AtomicBool,
    /// Unix seconds of the last heartbeat of the process's loops.
    beat: AtomicU64,
}

/// A heartbeat older than this makes `/healthz` fail.
pub const HEARTBEAT_STALE: Duration = Duration::from_secs(60);

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

impl Health {
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::SeqCst);
    }
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }
    pub fn beat(&self) {
        self.beat.store(unix_now(), Ordering::SeqCst);
    }
    pub fn is_live(&self) -> bool {
        let b = self.beat.load(Ordering::SeqCst);
        b != 0 && unix_now().saturating_sub(b) <= HEARTBEAT_STALE.as_secs()
    }
}

pub struct Metrics {
    registry: Registry,
    reconciles: Family<ResultLabel, Counter>,
    reconcile_duration: Histogram,
    requests: Family<RequestLabels, Counter>,
    drift_repairs: Counter,
    glances: Family<ResultLabel, Counter>,
    time_to_ready: Histogram,
    objects: Family<ConditionLabel, Gauge>,
    /// The controller's cache: `dga_objects` is counted from it at scrape time.
    store: OnceLock<Store<DgaModel>>,
    /// Serialises scrapes (the objects gauge is rebuilt during one).
    encode_lock: Mutex<()>,
    pub health: Health,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let reconciles = Family::<ResultLabel, Counter>::default();
        registry.register(
            "dga_reconciles",
            "Reconcile passes by result (ok or the error reason)",
            reconciles.clone(),
        );
        let reconcile_duration = Histogram::new(exponential_buckets(0.01, 2.0, 15));
        registry.register(
            "dga_reconcile_duration_seconds",
            "Duration of reconcile passes",
            reconcile_duration.clone(),
        );
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "dga_requests",
            "Requests to Elasticsearch, Kibana and the release host by status code (0: no answer)",
            requests.clone(),
        );
        let drift_repairs = Counter::default();
        registry.register(
            "dga_drift_repairs",
            "Objects re-applied because they were changed or deleted outside the operator",
            drift_repairs.clone(),
        );
        let glances = Family::<ResultLabel, Counter>::default();
        registry.register(
            "dga_resync_glances",
            "Resyncs of settled DgaModels that read three requests (unchanged) or found a change and ran a full pass (changed)",
            glances.clone(),
        );
        let time_to_ready = Histogram::new(exponential_buckets(1.0, 2.0, 14));
        registry.register(
            "dga_time_to_ready_seconds",
            "Time from a DgaModel's creation to its first Ready",
            time_to_ready.clone(),
        );
        let objects = Family::<ConditionLabel, Gauge>::default();
        registry.register(
            "dga_objects",
            "DgaModels by Ready state: Ready, Suspended, Pending, Deleting or the failure reason",
            objects.clone(),
        );
        Metrics {
            registry,
            reconciles,
            reconcile_duration,
            requests,
            drift_repairs,
            glances,
            time_to_ready,
            objects,
            store: OnceLock::new(),
            encode_lock: Mutex::new(()),
            health: Health::default(),
        }
    }

    /// Routes the per-request observer of `crate::http` to this instance (once per process;
    /// later calls are ignored).
    pub fn install_request_observer(self: &Arc<Self>) {
        let me = self.clone();
        crate::http::set_observer(Arc::new(move |service, code| me.request(service, code)));
    }

    pub fn request(&self, service: Service, code: u16) {
        self.requests
            .get_or_create(&RequestLabels {
                service: service_label(service).to_string(),
                code: code.to_string(),
            })
            .inc();
    }

    /// The end of a reconcile pass: `err` is the pass's error (recorded in the status), `None`
    /// for success; `before` is the status the pass started from, `after` the one it wrote.
    pub fn reconciled(
        &self,
        obj: &DgaModel,
        after: &DgaModelStatus,
        err: Option<&crate::error::Error>,
        took: Duration,
    ) {
        self.count(err.map(|e| e.reason()).unwrap_or("ok"));
        self.reconcile_duration.observe(took.as_secs_f64());
        let was_ready = obj
            .status
            .as_ref()
            .is_some_and(|s| status::is_true(&s.conditions, READY));
        let ever_installed = obj.status.as_ref().is_some_and(|s| {
            s.installed_tag.is_some()
                || s.fleet_package
                    .as_ref()
                    .is_some_and(|f| f.version.is_some())
        });
        let first_ready =
            !was_ready && !ever_installed && status::is_true(&after.conditions, READY);
        if let Some(created) = obj
            .metadata
            .creation_timestamp
            .as_ref()
            .filter(|_| first_ready)
        {
            let secs = jiff::Timestamp::now()
                .duration_since(created.0)
                .as_secs_f64()
                .max(0.0);
            self.time_to_ready.observe(secs);
        }
    }

    /// A reconcile that returned an error to the controller (its error policy).
    pub fn failed(&self, reason: &str) {
        self.count(reason);
    }

    fn count(&self, result: &str) {
        let result = if result == "ok" {
            "ok"
        } else {
            bounded(result)
        };
        self.reconciles
            .get_or_create(&ResultLabel {
                result: result.to_string(),
            })
            .inc();
    }

    pub fn glanced(&self, unchanged: bool) {
        let result = if unchanged { "unchanged" } else { "changed" };
        self.glances
            .get_or_create(&ResultLabel {
                result: result.into(),
            })
            .inc();
    }

    pub fn drift_repaired(&self, n: usize) {
        if n > 0 {
            self.drift_repairs.inc_by(n as u64);
        }
    }

    /// Hands over the controller's cache: `dga_objects` is counted from it at scrape time.
    ///
    /// (Readiness is not taken from `Store::wait_until_ready`: its one-shot keeps a single
    /// waker, so a second waiter would steal the controller's own wake-up.)
    pub fn watch(&self, store: Store<DgaModel>) {
        let _ = self.store.set(store);
    }

    fn refresh_objects(&self) {
        let Some(store) = self.store.get() else {
            return;
        };
        self.objects.clear();
        for obj in store.state() {
            let label = condition_label(&obj);
            self.objects
                .get_or_create(&ConditionLabel {
                    condition: label.to_string(),
                })
                .inc();
        }
    }

    /// The Prometheus/OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let _guard = self.encode_lock.lock().unwrap_or_else(|e| e.into_inner());
        self.refresh_objects();
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Applied actions that undid a change made outside the operator (the diff marks a re-create of
/// a recorded object, or a rewrite of one edited by hand, as `Repair`).
pub fn drift_repairs(done: &crate::engine::Plan) -> usize {
    done.actions
        .iter()
        .filter(|a| a.reason() == crate::engine::Reason::Repair)
        .count()
}

fn condition_label(obj: &DgaModel) -> &'static str {
    if obj.metadata.deletion_timestamp.is_some() {
        return "Deleting";
    }
    let ready = obj
        .status
        .as_ref()
        .and_then(|s| status::get(&s.conditions, READY));
    match ready {
        None => "Pending",
        Some(c) if c.reason == "Suspended" => "Suspended",
        Some(c) if c.status == ConditionStatus::True => "Ready",
        Some(c) => bounded(&c.reason),
    }
}
