//! kube-runtime wiring: watch DgaModels, run the engine, write status and events, back off per
//! object. Knows nothing of Elasticsearch or Kibana beyond calling the engine.
//!
//! - this module: the watch, the per-object pacing (backoff, settled resyncs, our own status
//!   echoes) and the reconcile entry point;
//! - `pass.rs`: one pass in the engine's order (dereference, fetch, build, observe, diff, apply,
//!   verify) and the resync glance;
//! - `detection.rs`: the pass's Kibana side (rules, prebuilt rules, the anomaly job), planned and
//!   applied by `engine::detection`;
//! - `conditions.rs`: conditions derived from what the engine saw and did (pure);
//! - `report.rs`: the status and events of one pass, written once at its end;
//! - `finalize.rs`: deletion by `deletionPolicy`.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action as Requeue, Controller};
use kube::runtime::events::Reporter;
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use tokio::sync::Semaphore;
use tracing::warn;

use crate::api::{DgaModel, DgaModelStatus, FINALIZER};
use crate::bundle::fetch::Fetcher;
use crate::elasticsearch::ClusterInfo;
use crate::engine::{Owner, observe::Ids};
use crate::error::Error;
use crate::events::Recorder;
use crate::status::{self, READY};
use crate::target::{self, Target};
use crate::watches;

mod conditions;
mod detection;
mod finalize;
mod pass;
mod report;

use conditions::*;
use detection::*;
use finalize::*;
use pass::*;
use report::*;

/// Operator settings (flags of `dga-operator run`).
#[derive(Clone, Debug)]
pub struct Settings {
    pub resync: Duration,
    pub request_timeout: Duration,
    /// How long a deleted DgaModel waits for an unreachable cluster before its finalizer is
    /// released anyway.
    pub delete_timeout: Duration,
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    pub concurrency: u16,
    pub per_cluster_concurrency: usize,
    pub namespace: Option<String>,
    /// How long a cluster's version, licence and Kibana status are reused between passes
    /// (successful answers only; any error against the cluster drops them).
    pub cluster_info_ttl: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            resync: Duration::from_secs(300),
            request_timeout: Duration::from_secs(120),
            delete_timeout: Duration::from_secs(600),
            backoff_base: Duration::from_secs(1),
            backoff_cap: Duration::from_secs(300),
            concurrency: 16,
            per_cluster_concurrency: 1,
            namespace: None,
            cluster_info_ttl: Duration::from_secs(900),
        }
    }
}

pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub fetcher: Fetcher,
    pub settings: Settings,
    /// Prometheus metrics and health (set with `with_metrics`).
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Consecutive failures per object uid.
    failures: Mutex<HashMap<String, u32>>,
    /// After a transient error: no pass for this uid before the instant, unless the spec
    /// (generation) changed. Our own status write would otherwise trigger one at once and
    /// ignore both the backoff and `Retry-After`.
    not_before: Mutex<HashMap<String, (tokio::time::Instant, Option<i64>)>>,
    cluster_slots: Mutex<HashMap<String, Arc<Semaphore>>>,
    /// Answers reused between passes, by `Endpoint::cache_key`.
    cluster_info: Mutex<HashMap<String, (tokio::time::Instant, CachedInfo)>>,
    /// Objects whose last full pass in this process applied and went Ready: their resyncs
    /// glance (at most four reads) instead of reading every object.
    settled: Mutex<HashMap<String, Settled>>,
    /// Clusters that refuse the cluster state read: always full passes.
    no_glance: Mutex<HashSet<String>>,
}

/// What a full pass proved about an object, valid while nothing below changes.
#[derive(Clone, Debug)]
struct Settled {
    generation: Option<i64>,
    bundle_sha256: String,
    target: String,
    /// The anomaly job and datafeed were installed and running.
    job: bool,
    /// The cluster's version the last full pass found (what a hook's processor may carry
    /// depends on it; a glance does not ask).
    es_version: Option<String>,
    /// The Fleet route: the package model's `inference_config` the last full pass read (where
    /// the canary run finds its answer; a glance does not read the model).
    model_config: Option<serde_json::Value>,
    /// The resourceVersion our own status write gave the object: its watch event comes straight
    /// back and is not a change to look at.
    echo: Option<String>,
}

impl Settled {
    fn same_inputs(&self, other: &Settled) -> bool {
        self.generation == other.generation
            && self.bundle_sha256 == other.bundle_sha256
            && self.target == other.target
    }
}

#[derive(Clone)]
enum CachedInfo {
    Elasticsearch(ClusterInfo, String),
    Kibana(crate::kibana::KibanaStatus),
    Prebuilt(crate::kibana::prebuilt::Availability),
    /// The Fleet package version's own detection rules (none from 2.0).
    PackageRules(Vec<serde_json::Value>),
}

impl Context {
    /// Reports into `metrics` instead of a private registry.
    pub fn with_metrics(mut self, metrics: Arc<crate::metrics::Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    pub fn new(client: Client, fetcher: Fetcher, settings: Settings) -> Self {
        let reporter = Reporter {
            controller: "dga-operator".into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            fetcher,
            settings,
            metrics: Arc::new(crate::metrics::Metrics::new()),
            failures: Mutex::new(HashMap::new()),
            not_before: Mutex::new(HashMap::new()),
            cluster_info: Mutex::new(HashMap::new()),
            cluster_slots: Mutex::new(HashMap::new()),
            settled: Mutex::new(HashMap::new()),
            no_glance: Mutex::new(HashSet::new()),
        }
    }

    fn cluster_slot(&self, key: &str) -> Arc<Semaphore> {
        let n = self.settings.per_cluster_concurrency.max(1);
        self.cluster_slots
            .lock()
            .expect("slots")
            .entry(key.to_string())
            .or_insert_with(|| Arc::new(Semaphore::new(n)))
            .clone()
    }

    /// Exponential backoff with jitter and a cap, honouring `Retry-After`.
    fn backoff(&self, uid: &str, retry_after: Option<Duration>) -> Duration {
        let n = {
            let mut f = self.failures.lock().expect("failures");
            let n = f.entry(uid.to_string()).or_insert(0);
            *n = n.saturating_add(1);
            *n
        };
        crate::backoff::delay(
            self.settings.backoff_base,
            self.settings.backoff_cap,
            n,
            retry_after,
        )
    }

    fn succeeded(&self, uid: &str) {
        self.failures.lock().expect("failures").remove(uid);
        self.not_before.lock().expect("not_before").remove(uid);
    }

    fn cached(&self, key: &str) -> Option<CachedInfo> {
        let c = self.cluster_info.lock().expect("cluster_info");
        let (at, info) = c.get(key)?;
        (at.elapsed() < self.settings.cluster_info_ttl).then(|| info.clone())
    }

    fn remember(&self, key: String, info: CachedInfo) {
        self.cluster_info
            .lock()
            .expect("cluster_info")
            .insert(key, (tokio::time::Instant::now(), info));
    }

    fn forget(&self, key: &str) {
        self.cluster_info.lock().expect("cluster_info").remove(key);
    }

    fn settle(&self, uid: &str, s: Option<Settled>) {
        let mut m = self.settled.lock().expect("settled");
        match s {
            Some(s) => drop(m.insert(uid.to_string(), s)),
            None => drop(m.remove(uid)),
        }
    }

    fn settled(&self, uid: &str) -> Option<Settled> {
        self.settled.lock().expect("settled").get(uid).cloned()
    }

    fn note_echo(&self, uid: &str, resource_version: Option<String>) {
        if let Some(s) = self.settled.lock().expect("settled").get_mut(uid) {
            s.echo = resource_version;
        }
    }

    /// The watch event of our own status write on a settled object, spec unchanged. Answered
    /// once: the requeue that follows sees the same object and must look again.
    fn take_echo(&self, uid: &str, obj: &DgaModel) -> bool {
        let mut m = self.settled.lock().expect("settled");
        let Some(s) = m.get_mut(uid) else {
            return false;
        };
        let echo = s.generation == obj.metadata.generation
            && s.echo.is_some()
            && s.echo == obj.metadata.resource_version;
        s.echo = None;
        echo
    }

    /// Remaining wait when a pass comes too early after a transient error.
    fn too_early(&self, uid: &str, generation: Option<i64>) -> Option<Duration> {
        let nb = self.not_before.lock().expect("not_before");
        let (at, failed_generation) = nb.get(uid)?;
        let now = tokio::time::Instant::now();
        (*failed_generation == generation && *at > now).then(|| *at - now)
    }
}

/// Runs the controller until shutdown.
pub async fn run(ctx: Arc<Context>) {
    let api: Api<DgaModel> = match &ctx.settings.namespace {
        Some(ns) => Api::namespaced(ctx.client.clone(), ns),
        None => Api::all(ctx.client.clone()),
    };
    let concurrency = ctx.settings.concurrency;
    let mut controller = Controller::new(api, watcher::Config::default().any_semantic());
    ctx.metrics.watch(controller.store()); // metrics: objects gauge
    // Re-run the DgaModels that depend on a Secret or ECK object as soon as it changes.
    let ns = ctx.settings.namespace.as_deref();
    for kind in [
        watches::Kind::Secret,
        watches::Kind::Elasticsearch,
        watches::Kind::Kibana,
    ] {
        let store = controller.store();
        controller = controller.watches_stream_with(
            watches::trigger(&ctx.client, ns, kind),
            move |o| {
                watches::dependents(
                    &store,
                    kind,
                    &o.namespace().unwrap_or_default(),
                    &o.name_any(),
                )
            },
            watches::eck_resource(kind),
        );
    }
    controller
        .with_config(kube::runtime::controller::Config::default().concurrency(concurrency))
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!(error = %e, "reconcile failed");
            }
        })
        .await;
}

fn error_policy(obj: Arc<DgaModel>, err: &Error, ctx: Arc<Context>) -> Requeue {
    let uid = obj.uid().unwrap_or_default();
    let delay = ctx.backoff(&uid, err.retry_after());
    ctx.metrics.failed(err.reason()); // metrics
    warn!(namespace = obj.namespace().unwrap_or_default(), name = obj.name_any(), reason = err.reason(), error = %err, "reconcile error, retrying in {delay:?}");
    Requeue::requeue(delay)
}

fn owner_of(obj: &DgaModel) -> Owner {
    Owner {
        namespace: obj.namespace().unwrap_or_default(),
        name: obj.name_any(),
        uid: obj.uid().unwrap_or_default(),
        adopted: Vec::new(),
    }
}

/// Well-known package ids (both layouts): checked on delete even when the status was lost.
pub const KNOWN_PIPELINES: [&str; 4] = [
    "dns_enrich_pipeline",
    "dns_dga_inference_enrich_pipeline",
    "ml_dga_ingest_pipeline",
    "ml_dga_inference_pipeline",
];
pub const KNOWN_SCRIPTS: [&str; 4] = [
    "dga_ngrams_create",
    "dga_ngrams_transform_delete",
    "ml_dga_ngrams_create_script",
    "ml_dga_ngrams_transform_delete_script",
];

/// What the status records as ours. Only these (and objects carrying our marker) count as ours.
fn recorded_ids(status: Option<&DgaModelStatus>) -> Ids {
    let objects = status.map(|s| s.objects.clone()).unwrap_or_default();
    Ids {
        models: objects.models.into_iter().collect(),
        scripts: objects.scripts.into_iter().collect(),
        pipelines: objects.pipelines.into_iter().collect(),
        indices: objects.wired_indices.into_iter().collect(),
        hooks: objects.hooks.into_iter().collect(),
        templates: objects.wired_templates.into_iter().collect(),
    }
}

/// Ids worth reading: the recorded ones plus the package's well-known ids, whose markers then
/// tell whether they are ours.
fn ids_to_observe(recorded: &Ids) -> Ids {
    let mut ids = recorded.clone();
    ids.pipelines.extend(recorded.hooks.iter().cloned());
    ids.scripts
        .extend(KNOWN_SCRIPTS.iter().map(|s| s.to_string()));
    ids.pipelines
        .extend(KNOWN_PIPELINES.iter().map(|s| s.to_string()));
    ids
}

pub async fn reconcile(obj: Arc<DgaModel>, ctx: Arc<Context>) -> Result<Requeue, Error> {
    let started = std::time::Instant::now(); // metrics
    let api: Api<DgaModel> =
        Api::namespaced(ctx.client.clone(), &obj.namespace().unwrap_or_default());
    if obj.meta().deletion_timestamp.is_some() {
        ctx.settle(&obj.uid().unwrap_or_default(), None);
        return finalize(&api, &obj, &ctx).await;
    }
    if !obj.finalizers().iter().any(|f| f == FINALIZER) {
        api.patch(
            &obj.name_any(),
            &PatchParams::default(),
            &Patch::Json::<()>(crate::finalizer::patch(
                obj.finalizers(),
                FINALIZER,
                crate::finalizer::Op::Add,
            )?),
        )
        .await?;
        // The update event triggers the next pass.
        return Ok(Requeue::await_change());
    }

    let uid = obj.uid().unwrap_or_default();
    if let Some(wait) = ctx.too_early(&uid, obj.metadata.generation) {
        return Ok(Requeue::requeue(wait));
    }
    if ctx.take_echo(&uid, &obj) {
        return Ok(Requeue::requeue(ctx.settings.resync));
    }
    let mut report = Report::new(&obj);
    // A generation the status does not describe yet (a new object: -1 by the CRD's default, or
    // an edited spec): say at once that the operator is on it, so a pass that hangs on a server
    // that never answers still reads as in progress, never as the last pass's verdict.
    if report.status.observed_generation != obj.metadata.generation {
        let msg = format!(
            "working on generation {}: {}",
            obj.metadata.generation.unwrap_or_default(),
            obj.spec.wanted_label()
        );
        report.progress(&ctx, msg).await;
    }
    let outcome = pass(&obj, &ctx, &mut report).await;
    // The on-call reader of the logs sees each failed pass (errors carry no secrets).
    if let Err(e) = &outcome {
        let (ns, name) = (obj.namespace().unwrap_or_default(), obj.name_any());
        if e.is_transient() {
            tracing::info!(namespace = ns, name, reason = e.reason(), error = %e, "pass failed; retrying after a backoff");
        } else {
            warn!(namespace = ns, name, reason = e.reason(), error = %e, "pass failed; retrying at the resync pace or on a change");
        }
    }
    let requeue = match &outcome {
        Ok(()) => {
            ctx.succeeded(&uid);
            Requeue::requeue(ctx.settings.resync)
        }
        Err(e) if e.is_transient() => {
            let delay = ctx.backoff(&uid, e.retry_after());
            ctx.not_before.lock().expect("not_before").insert(
                uid.clone(),
                (tokio::time::Instant::now() + delay, obj.metadata.generation),
            );
            Requeue::requeue(delay)
        }
        // Needs a change from a person: retry slowly, a spec change triggers a pass at once.
        Err(_) => {
            ctx.succeeded(&uid);
            Requeue::requeue(ctx.settings.resync)
        }
    };
    report.finish(outcome.as_ref().err());
    let is_true = |t: &str| status::is_true(&report.status.conditions, t);
    let settled = report
        .settle
        .take()
        .filter(|_| outcome.is_ok() && is_true(READY));
    // Settled only once the status saying so is written: a resync glance keeps the status it
    // reads, so settling before a failed write would keep the last pass's status for good.
    let written = match report.publish(&api, &obj, &ctx).await {
        Ok(w) => w,
        Err(e) => {
            ctx.settle(&uid, None);
            return Err(e);
        }
    };
    ctx.settle(&uid, settled);
    ctx.note_echo(&uid, written);
    ctx.metrics.reconciled(
        &obj,
        &report.status,
        outcome.as_ref().err(),
        started.elapsed(),
    ); // metrics
    Ok(requeue)
}

/// Dereferences the DgaModel's cluster (and Kibana); a namespaced operator follows no reference
/// into another namespace.
async fn resolve_target(ctx: &Context, obj: &DgaModel) -> Result<Target, Error> {
    let home = obj.namespace().unwrap_or_default();
    let (r, k) = (&obj.spec.cluster_ref, obj.spec.kibana_ref.as_ref());
    if ctx.settings.namespace.is_some() {
        target::same_namespace_only(&home, r, k)?;
    }
    target::resolve(&ctx.client, &home, r, k).await
}
