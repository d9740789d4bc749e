//! kube-runtime wiring: watch DgaModels, run the engine, write status and events, back off per
//! object. Knows nothing of Elasticsearch beyond calling the engine.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action as Requeue, Controller};
use kube::runtime::events::{Event, EventType, Reporter};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

use crate::api::{DeletionPolicy, DgaModel, DgaModelStatus, FINALIZER, InstalledObjects};
use crate::bundle::fetch::{Fetcher, Request};
use crate::elasticsearch::{ClusterInfo, Elasticsearch, ML_LICENSES};
use crate::engine::{self, Owner, Plan, Reason, observe::Ids};
use crate::error::{Error, Service};
use crate::events::Recorder;
use crate::status::{
    self, CHANGES_PENDING, ES_REACHABLE, JOB, KIBANA_REACHABLE, LICENSE, MODEL, PIPELINES,
    PROGRESSING, READY, RECONCILING, RULES, STALLED, SUSPENDED, VERIFIED, WAITING_FOR_DATA,
};
use crate::target::{self, Target};
use crate::watches;

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
            "working on generation {}: release {}",
            obj.metadata.generation.unwrap_or_default(),
            obj.spec.release_tag
        );
        report.progress(&ctx, msg).await;
    }
    let outcome = pass(&obj, &ctx, &mut report).await;
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
    ctx.settle(&uid, settled);
    let written = report.publish(&api, &obj, &ctx).await?;
    ctx.note_echo(&uid, written);
    ctx.metrics.reconciled(
        &obj,
        &report.status,
        outcome.as_ref().err(),
        started.elapsed(),
    ); // metrics
    Ok(requeue)
}

/// What a pass learnt, turned into status and events at the end.
struct Report {
    status: DgaModelStatus,
    /// The status on the server when the pass started, and after any write it made since.
    original: Option<DgaModelStatus>,
    written: Option<DgaModelStatus>,
    namespace: String,
    name: String,
    deleting: bool,
    suspend: bool,
    /// Where the credentials come from, for the fix a Stalled message names.
    cluster: String,
    /// `namespace/name` of the ECK Elasticsearch behind `clusterRef.name`, if that is the route.
    eck_cluster: Option<String>,
    generation: Option<i64>,
    now: Time,
    events: Vec<Event>,
    applied_something: bool,
    /// Suspended or `mode: Plan`: what Apply would do, both services.
    suspended: Option<engine::plan::Plan>,
    /// `mode: Plan`: report the pending changes as a plan.
    plan_mode: bool,
    /// Set by an Apply pass: what the object settles on if the pass ends Ready and verified.
    settle: Option<Settled>,
}

impl Report {
    fn new(obj: &DgaModel) -> Self {
        Report {
            status: obj.status.clone().unwrap_or_default(),
            original: obj.status.clone(),
            written: None,
            namespace: obj.namespace().unwrap_or_default(),
            name: obj.name_any(),
            deleting: obj.meta().deletion_timestamp.is_some(),
            suspend: obj.spec.suspend,
            cluster: describe_cluster_ref(obj),
            eck_cluster: obj.spec.cluster_ref.name.as_ref().map(|n| {
                let ns = obj.spec.cluster_ref.namespace.clone();
                format!(
                    "{}/{n}",
                    ns.unwrap_or_else(|| obj.namespace().unwrap_or_default())
                )
            }),
            generation: obj.metadata.generation,
            now: Time(jiff::Timestamp::now()),
            events: Vec::new(),
            applied_something: false,
            suspended: None,
            plan_mode: obj.spec.mode == crate::api::Mode::Plan,
            settle: None,
        }
    }

    fn set(
        &mut self,
        type_: &str,
        ok: impl Into<crate::api::ConditionStatus>,
        reason: &str,
        message: impl Into<String>,
    ) {
        status::set(
            &mut self.status.conditions,
            type_,
            ok,
            reason,
            message,
            self.generation,
            &self.now,
        );
    }

    /// Says, before the pass's end, that it is changing the cluster (`Reconciling=True`,
    /// `Ready=False`): kstatus, Argo CD and `kubectl wait` then see work in progress, not the last
    /// pass's verdict. Skipped when the status already says `Reconciling` (a retry after a
    /// transient error keeps its reason). A refused write only costs the early notice.
    async fn progress(&mut self, ctx: &Context, message: String) {
        if status::is_true(&self.status.conditions, RECONCILING) {
            return;
        }
        self.set(READY, false, PROGRESSING, message.clone());
        self.set(RECONCILING, true, PROGRESSING, message);
        self.set(STALLED, false, PROGRESSING, "a pass is under way");
        self.status.observed_generation = self.generation;
        self.settle_state();
        let api: Api<DgaModel> = Api::namespaced(ctx.client.clone(), &self.namespace);
        match self.write_status(&api).await {
            Ok(_) => {}
            Err(e) => {
                debug!(namespace = self.namespace, name = self.name, error = %e, "could not write the Reconciling status")
            }
        }
    }

    fn settle_state(&mut self) {
        status::sort(&mut self.status.conditions);
        self.status.state = Some(status::state(
            &self.status.conditions,
            self.deleting,
            self.plan_mode,
            self.suspend,
        ));
    }

    /// Merge-patches the status against what the server holds; the new resourceVersion, if any
    /// write was needed.
    async fn write_status(&mut self, api: &Api<DgaModel>) -> Result<Option<String>, Error> {
        let old = self.written.clone().or_else(|| self.original.clone());
        if old.as_ref() == Some(&self.status) {
            return Ok(None);
        }
        let old = serde_json::to_value(&old).unwrap_or_default();
        let mut new = serde_json::to_value(&self.status).unwrap_or_default();
        null_removed(&old, &mut new);
        let patch = json!({ "status": new });
        let after = api
            .patch_status(&self.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        self.written = Some(self.status.clone());
        Ok(after.metadata.resource_version)
    }

    fn event(&mut self, warning: bool, reason: &str, action: &str, note: String) {
        self.events.push(Event {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.to_string(),
            note: Some(note.chars().take(1000).collect()),
            action: action.to_string(),
            secondary: None,
        });
    }

    fn finish(&mut self, err: Option<&Error>) {
        let old_ready = status::get(&self.status.conditions, READY)
            .map(|c| (c.reason.clone(), c.message.clone()));
        match err {
            None => {
                let pending: Vec<String> = self
                    .suspended
                    .iter()
                    .flat_map(engine::plan::Plan::pending)
                    .collect();
                let summary = if pending.is_empty() {
                    "no changes".to_string()
                } else {
                    pending.join("; ")
                };
                let old_plan = self.status.plan.clone();
                self.status.plan = self.suspended.is_some().then(|| summary.clone());
                if self.plan_mode && old_plan != self.status.plan {
                    self.event(false, "Planned", "Plan", format!("plan: {summary}"));
                }
                let held = !pending.is_empty();
                if self.suspended.is_some() {
                    let (reason, message) = if held {
                        (
                            "ChangesPending",
                            format!("{} pending: {summary}", pending.len()),
                        )
                    } else {
                        ("NoChanges", "the cluster matches the spec".to_string())
                    };
                    self.set(CHANGES_PENDING, held, reason, message);
                } else {
                    self.status
                        .conditions
                        .retain(|c| c.type_ != CHANGES_PENDING);
                }
                // What needs a person although the pass itself went through.
                let mut stalled: Option<(&str, String)> = None;
                let (reason, message) = if self.plan_mode {
                    // Plan mode did what it was asked: it reads as done; ChangesPending says what
                    // Apply would do.
                    if held {
                        ("Planned", format!("mode Plan; would: {summary}"))
                    } else {
                        (
                            "InSync",
                            "mode Plan; the cluster already matches the spec".to_string(),
                        )
                    }
                } else if self.suspended.is_some() {
                    // Suspended with changes held: nothing will happen until a person resumes,
                    // so Flux fails at once with the reason instead of timing out.
                    if held {
                        let m = format!(
                            "suspended; {} change(s) held back ({summary}): set spec.suspend to false to apply them",
                            pending.len()
                        );
                        stalled = Some((SUSPENDED, m.clone()));
                        (SUSPENDED, m)
                    } else {
                        (
                            SUSPENDED,
                            "suspended; the installed release is current".to_string(),
                        )
                    }
                } else if let Some(v) = status::get(&self.status.conditions, VERIFIED)
                    .filter(|c| c.status == crate::api::ConditionStatus::False)
                {
                    // The enrichment answered wrongly: the install stays, a person must look.
                    let m = format!(
                        "release {} installed, but the canary documents were scored wrongly: {}; see the VerificationFailed event, check the model and the pipelines",
                        self.status.installed_tag.clone().unwrap_or_default(),
                        v.message
                    );
                    stalled = Some(("VerificationFailed", m.clone()));
                    ("VerificationFailed", m)
                } else {
                    let waiting = status::get(&self.status.conditions, JOB)
                        .filter(|c| c.reason == WAITING_FOR_DATA)
                        .map(|_| "; the anomaly detection job waits for DNS data (see AnomalyJobRunning)")
                        .unwrap_or_default();
                    (
                        "Installed",
                        format!(
                            "release {} installed (model {}){waiting}",
                            self.status.installed_tag.clone().unwrap_or_default(),
                            self.status.model_id.clone().unwrap_or_default()
                        ),
                    )
                };
                self.set(READY, stalled.is_none(), reason, message);
                self.set(RECONCILING, false, "Idle", "the last pass finished");
                match stalled {
                    Some((r, m)) => self.set(STALLED, true, r, m),
                    None => self.set(STALLED, false, "Idle", "the last pass finished"),
                }
                if self.applied_something || self.status.last_sync_time.is_none() {
                    self.status.last_sync_time = Some(self.now.clone());
                }
                self.status.observed_generation = self.generation;
            }
            Some(e) => {
                let msg = match remedy(e, &self.cluster, self.eck_cluster.as_deref()) {
                    Some(fix) if e.is_stalled() => format!("{e}; to fix: {fix}"),
                    _ => e.to_string(),
                };
                self.set(READY, false, e.reason(), msg.clone());
                // The False side says what the other condition means, not the reason again.
                if e.is_transient() {
                    self.set(RECONCILING, true, e.reason(), msg.clone());
                } else {
                    self.set(
                        RECONCILING,
                        false,
                        "WaitingForChange",
                        "not retrying on a backoff: a change to the spec, the Secret or the cluster is needed (looked at again every resync)",
                    );
                }
                if e.is_stalled() {
                    self.set(STALLED, true, e.reason(), msg.clone());
                } else {
                    self.set(
                        STALLED,
                        false,
                        "Retrying",
                        "the error may pass: retrying with backoff (see Reconciling)",
                    );
                }
                self.status.observed_generation = self.generation;
                // One Warning per new problem, not one per retry.
                if old_ready != Some((e.reason().to_string(), msg.clone())) {
                    self.event(true, e.reason(), "Reconcile", msg);
                }
            }
        }
        self.settle_state();
    }

    async fn publish(
        &mut self,
        api: &Api<DgaModel>,
        obj: &DgaModel,
        ctx: &Context,
    ) -> Result<Option<String>, Error> {
        let written = self.write_status(api).await?;
        let reference = obj.object_ref(&());
        for ev in &self.events {
            if let Err(e) = ctx.recorder.publish(ev, &reference).await {
                warn!(error = %e, "could not publish event");
            }
        }
        Ok(written)
    }
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

/// One reconcile pass for a live DgaModel: dereference, validate, fetch, build, observe, diff,
/// apply. Conditions are set as each stage is passed.
async fn pass(obj: &DgaModel, ctx: &Context, report: &mut Report) -> Result<(), Error> {
    let spec = &obj.spec;
    if !crate::api::is_release_tag(&spec.release_tag) {
        return Err(Error::InvalidSpec(format!(
            "spec.releaseTag `{}` is not of the form ML-DGA-YYYYMMDD-N",
            spec.release_tag
        )));
    }
    let target = resolve_target(ctx, obj).await?;
    crate::protection::protect(&ctx.client, obj).await?;
    let bundle = ctx
        .fetcher
        .fetch(Request {
            tag: &spec.release_tag,
            source: spec.source.as_ref(),
        })
        .await?;

    let slot = ctx.cluster_slot(target.key());
    let _permit = slot
        .acquire()
        .await
        .map_err(|e| Error::Internal(e.to_string()))?;
    let es = Elasticsearch::new(target.elasticsearch.clone(), ctx.settings.request_timeout)?;
    // Cached cluster answers survive only passes that succeed.
    let mut keep_cache = ForgetOnError {
        ctx,
        keys: std::iter::once(target.elasticsearch.cache_key())
            .chain(target.kibana.as_ref().map(|k| k.cache_key()))
            .collect(),
        armed: true,
    };
    let mut owner = owner_of(obj);
    let mut desired = engine::build_with(
        &bundle,
        &owner,
        &engine::Wiring::from_spec(spec.enrichment.as_ref()),
    );
    let known = recorded_ids(obj.status.as_ref());
    let applying = !spec.suspend && spec.mode == crate::api::Mode::Apply;
    let settle = Settled {
        generation: obj.metadata.generation,
        bundle_sha256: desired.bundle_sha256.clone(),
        target: keep_cache.keys.join(" "),
        job: false,
        es_version: None,
        echo: None,
    };
    if applying {
        if let Some(s) = ctx.settled(&obj.uid().unwrap_or_default())
            && s.same_inputs(&settle)
        {
            report.settle = Some(s.clone());
            if let Some(v) = &s.es_version {
                desired.fit_to_cluster(v);
            }
            if glance_pass(
                obj, ctx, &target, &bundle, &es, &desired, &known, s.job, report,
            )
            .await?
            {
                keep_cache.armed = false;
                return Ok(());
            }
            // Something changed: look again at everything, the cluster's version and
            // licence included.
            for k in &keep_cache.keys {
                ctx.forget(k);
            }
        }
        report.settle = Some(settle);
    }
    let info = connect(&es, &keep_cache.keys[0], ctx, report)
        .await
        .map_err(|e| target.explain(e))?;
    report.status.cluster_uuid = Some(info.cluster_uuid.clone()).filter(|u| !u.is_empty());
    let dropped = desired.fit_to_cluster(&info.version);
    if let Some(s) = report.settle.as_mut() {
        s.es_version = Some(info.version.clone());
    }
    if !dropped.is_empty() {
        tracing::debug!(
            fields = %dropped.join(", "),
            version = %info.version,
            "model file fields this Elasticsearch refuses at creation are left out of the upload"
        );
    }

    let observed = engine::observe(&es, &Ids::wanted(&desired, &known)).await?;
    owner.adopted = gone_owners(&ctx.client, &observed, &owner, &known, spec.overwrite).await;
    desired.owner.adopted = owner.adopted.clone();
    let plan = engine::diff(&desired, &observed, &known, spec.overwrite);

    if spec.suspend || spec.mode == crate::api::Mode::Plan {
        let owned = engine::diff::owned_ids(&observed, &owner, &known);
        record_objects(report, &owned);
        held_back_conditions(
            report,
            &desired,
            &owned,
            &plan,
            spec.mode == crate::api::Mode::Plan,
        );
        report.suspended = Some(engine::plan::Plan {
            es: plan,
            detection: None,
        });
    } else {
        let insecure = target.elasticsearch.insecure;
        if let Err(e) = apply_es(
            ctx, &es, insecure, &desired, &observed, &known, plan, &owner, report,
        )
        .await
        {
            // A hook a StackConfigPolicy owns: name the policy.
            return Err(target.explain_reserved(&ctx.client, e).await);
        }
    }
    let r = rules_pass(
        obj,
        ctx,
        &target,
        &bundle,
        &es,
        &owner,
        &desired.marker,
        false,
        report,
    )
    .await;
    keep_cache.armed = r.is_err();
    r
}

/// DgaModels that no longer exist (deleted with `Retain`, or their cleanup abandoned) whose
/// markers are on objects this one may take: any object with `overwrite`, else only those its
/// status records (a model taken over earlier keeps its first marker: models cannot be
/// rewritten in place). A DgaModel re-created under the same name has a new uid: still gone.
/// An owner that cannot be looked up (another namespace, no access) is never taken from.
async fn gone_owners(
    client: &Client,
    observed: &engine::Observed,
    me: &Owner,
    recorded: &Ids,
    overwrite: bool,
) -> Vec<String> {
    let pick = |set: &std::collections::BTreeSet<String>, id: &str| overwrite || set.contains(id);
    let markers = observed
        .models
        .iter()
        .filter(|(id, _)| pick(&recorded.models, id))
        .filter_map(|(_, m)| engine::Marker::from_meta(m.get("metadata")))
        .chain(
            observed
                .pipelines
                .iter()
                .filter(|(id, _)| pick(&recorded.pipelines, id))
                .filter_map(|(_, p)| engine::Marker::from_meta(p.get("_meta"))),
        )
        .chain(
            observed
                .scripts
                .iter()
                .filter(|(id, _)| pick(&recorded.scripts, id))
                .filter_map(|(_, s)| {
                    engine::Marker::from_script_source(s.get("source")?.as_str()?)
                }),
        );
    let mut candidates: HashMap<String, String> = HashMap::new();
    for m in markers {
        if m.owner != me.key() && !m.owner.starts_with('/') {
            candidates.insert(m.owner, m.owner_uid);
        }
    }
    let mut gone = Vec::new();
    for (key, uid) in candidates {
        let Some((ns, name)) = key.split_once('/') else {
            continue;
        };
        let api: Api<DgaModel> = Api::namespaced(client.clone(), ns);
        match api.get_opt(name).await {
            Ok(None) => gone.push(key),
            Ok(Some(m)) if m.uid().as_deref() != Some(uid.as_str()) => gone.push(key),
            _ => {}
        }
    }
    gone.sort();
    gone
}

/// Suspended or Plan mode: the model and pipeline conditions say what the cluster holds now
/// (a pipeline deleted by hand while suspended is not `Installed`), and what would change.
fn held_back_conditions(
    report: &mut Report,
    desired: &engine::Desired,
    owned: &Ids,
    plan: &Plan,
    plan_mode: bool,
) {
    use engine::Action;
    let (reason, lead) = if plan_mode {
        ("Planned", "mode Plan; would")
    } else {
        ("Suspended", "suspended; pending")
    };
    let pending = |want: &dyn Fn(&Action) -> bool| -> Vec<String> {
        plan.actions
            .iter()
            .filter(|a| want(a))
            .map(ToString::to_string)
            .collect()
    };
    let model_pending = pending(&|a| matches!(a, Action::PutModel { .. }));
    let model_in = owned.models.contains(&desired.model_id) && model_pending.is_empty();
    if model_in {
        report.set(
            MODEL,
            true,
            "Installed",
            format!("trained model {}", desired.model_id),
        );
    } else {
        report.set(
            MODEL,
            false,
            reason,
            format!("{lead}: {}", model_pending.join("; ")),
        );
    }
    let pipes_pending =
        pending(&|a| matches!(a, Action::PutPipeline { .. } | Action::PutScript { .. }));
    let pipes_in = pipes_pending.is_empty()
        && desired
            .pipelines
            .iter()
            .all(|(id, _)| owned.pipelines.contains(id))
        && desired
            .scripts
            .iter()
            .all(|(id, _)| owned.scripts.contains(id));
    let ids = desired
        .pipelines
        .iter()
        .map(|(id, _)| id.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    if pipes_in {
        report.set(PIPELINES, true, "Installed", format!("pipelines {ids}"));
    } else {
        report.set(
            PIPELINES,
            false,
            reason,
            format!("{lead}: {}", pipes_pending.join("; ")),
        );
    }
}

/// `AnomalyJobRunning` after a pass that ensured (or glanced at) the job: `True` when its
/// datafeed runs, `False`/`WaitingForData` while Elasticsearch has nothing for it to read (a
/// fresh stack: not an error, Ready stays as the rest of the install says). Fleet's module job
/// is Kibana's to run: no condition.
fn job_condition(
    report: &mut Report,
    job: &engine::mljob::JobChoice,
    index: &[String],
    waiting: Option<&str>,
    ctx: &Context,
) {
    if job.fleet {
        report.status.conditions.retain(|c| c.type_ != JOB);
        return;
    }
    let feed = engine::mljob::datafeed_id(&job.id);
    match waiting {
        None => report.set(
            JOB,
            true,
            "Running",
            format!(
                "anomaly detection job {} is open; datafeed {feed} is started",
                job.id
            ),
        ),
        Some(why) => {
            let was_waiting = status::get(&report.status.conditions, JOB)
                .is_some_and(|c| c.reason == WAITING_FOR_DATA);
            let msg = format!(
                "anomaly detection job {} is open; datafeed {feed} waits for DNS data in {}: Elasticsearch refused to start it ({why}); it is started at the first resync (every {}s) after such data arrives",
                job.id,
                index.join(", "),
                ctx.settings.resync.as_secs()
            );
            if !was_waiting {
                report.event(false, WAITING_FOR_DATA, "StartDatafeed", msg.clone());
            }
            report.set(JOB, false, WAITING_FOR_DATA, msg);
        }
    }
}

/// A resync of a settled object: glance at the cluster and, when nothing changed, run the
/// Kibana side without the reads a full pass makes. `false`: a full pass must follow.
#[allow(clippy::too_many_arguments)]
async fn glance_pass(
    obj: &DgaModel,
    ctx: &Context,
    target: &Target,
    bundle: &crate::bundle::Bundle,
    es: &Elasticsearch,
    desired: &engine::Desired,
    known: &Ids,
    job: bool,
    report: &mut Report,
) -> Result<bool, Error> {
    use engine::observe::{Glance, JobTasks};
    let cluster = target.elasticsearch.cache_key();
    if ctx.no_glance.lock().expect("no_glance").contains(&cluster) {
        return Ok(false);
    }
    // The job this DgaModel recorded (its id follows the stack version).
    let job_id = report
        .status
        .objects
        .jobs
        .first()
        .cloned()
        .unwrap_or_else(|| engine::mljob::JOB_ID.to_string());
    let feed = engine::mljob::datafeed_id(&job_id);
    let tasks = job.then_some(JobTasks {
        job: &job_id,
        datafeed: &feed,
    });
    let (ns, name) = (&desired.owner.namespace, &desired.owner.name);
    match engine::observe::glance(es, desired, known, obj.spec.overwrite, tasks).await {
        Ok(Glance::Unchanged(verdict)) => {
            let (state, _, message) = verified_condition(&verdict);
            let before = status::get(&report.status.conditions, VERIFIED)
                .map(|c| (c.status, c.message.as_str()));
            if before != Some((state, message.as_str())) {
                info!(
                    namespace = ns,
                    name, "canary result changed at resync; full pass"
                );
                ctx.metrics.glanced(false); // metrics
                return Ok(false);
            }
            rules_pass(
                obj,
                ctx,
                target,
                bundle,
                es,
                &desired.owner,
                &desired.marker,
                true,
                report,
            )
            .await?;
            ctx.metrics.glanced(true); // metrics
            Ok(true)
        }
        Ok(Glance::Changed(why)) => {
            info!(
                namespace = ns,
                name, why, "change seen at resync; full pass"
            );
            ctx.metrics.glanced(false); // metrics
            Ok(false)
        }
        Ok(Glance::Unavailable) => {
            warn!(
                namespace = ns,
                name,
                "the cluster state cannot be read (the `monitor` cluster privilege is missing, or a serverless project): every resync of this cluster reads each object"
            );
            ctx.no_glance.lock().expect("no_glance").insert(cluster);
            Ok(false)
        }
        Err(e) => {
            debug!(namespace = ns, name, error = %e, "glance failed; full pass");
            ctx.metrics.glanced(false); // metrics
            Ok(false)
        }
    }
}

/// The Elasticsearch side of an Apply pass: the plan's writes, then status, events and the
/// canary check.
#[allow(clippy::too_many_arguments)]
async fn apply_es(
    ctx: &Context,
    es: &Elasticsearch,
    insecure: bool,
    desired: &engine::Desired,
    observed: &engine::Observed,
    known: &Ids,
    plan: Plan,
    owner: &Owner,
    report: &mut Report,
) -> Result<(), Error> {
    if !plan.conflicts.is_empty() {
        report.set(MODEL, false, "Conflict", plan.conflicts.join("; "));
        return Err(Error::Conflict(plan.conflicts.join("; ")));
    }
    if !plan.is_empty() {
        report
            .progress(ctx, format!("applying: {}", plan.summary()))
            .await;
    }
    let result = engine::apply(es, desired, &plan).await;
    let (applied, err) = match result {
        Ok(a) => (a, None),
        Err((a, e)) => (a, Some(e)),
    };
    // What is installed now, whether or not the pass finished.
    let mut now_owned = engine::diff::owned_ids(observed, owner, known);
    for a in &applied.done {
        now_owned.record(a);
    }
    record_objects(report, &now_owned);
    if insecure && !applied.done.is_empty() {
        report.event(
            true,
            "TLSVerificationDisabled",
            "Apply",
            "spec.clusterRef.insecureSkipTlsVerify is set: changes were made over connections whose certificates were not verified".into(),
        );
    }
    if !applied.done.is_empty() {
        report.applied_something = true;
        let done = Plan {
            actions: applied.done.clone(),
            conflicts: vec![],
        };
        ctx.metrics
            .drift_repaired(crate::metrics::drift_repairs(&done)); // metrics
        let (reason, verb) = if done.has(Reason::Upgrade) {
            (
                "Upgraded",
                format!("upgraded to release {}", desired.release),
            )
        } else if done.has(Reason::Adopt) {
            (
                "Adopted",
                format!("took over existing objects for release {}", desired.release),
            )
        } else if done.has(Reason::Repair) {
            (
                "DriftRepaired",
                "repaired objects changed or deleted outside the operator".to_string(),
            )
        } else if done.has(Reason::Create) {
            (
                "Installed",
                format!("installed release {}", desired.release),
            )
        } else {
            (
                "Cleaned",
                "removed objects no longer part of the release".to_string(),
            )
        };
        info!(
            namespace = owner.namespace,
            name = owner.name,
            reason,
            actions = done.summary(),
            "applied"
        );
        report.event(
            false,
            reason,
            "Apply",
            format!("{verb}: {}", done.summary()),
        );
    }
    let model_in = now_owned.models.contains(&desired.model_id);
    let pipes_in = desired
        .pipelines
        .iter()
        .all(|(id, _)| now_owned.pipelines.contains(id))
        && desired
            .scripts
            .iter()
            .all(|(id, _)| now_owned.scripts.contains(id));
    if let Some(e) = err {
        report.set(
            MODEL,
            model_in,
            if model_in { "Installed" } else { e.reason() },
            if model_in {
                String::new()
            } else {
                e.to_string()
            },
        );
        report.set(PIPELINES, false, e.reason(), e.to_string());
        return Err(e);
    }
    report.set(
        MODEL,
        model_in,
        "Installed",
        format!("trained model {}", desired.model_id),
    );
    report.set(
        PIPELINES,
        pipes_in,
        "Installed",
        format!(
            "pipelines {}",
            desired
                .pipelines
                .iter()
                .map(|(id, _)| id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    );
    wired_condition(report, desired, observed, known, &now_owned);
    if !applied.warnings.is_empty() {
        report.event(true, "LeftInPlace", "Apply", applied.warnings.join("; "));
    }
    // Prove the chain works on canary documents; report, never undo.
    match engine::verify::verify(
        es,
        desired.router_pipeline(),
        &desired.model_id,
        &desired.result_fields(),
    )
    .await
    {
        Ok(v) => {
            let (state, reason, message) = verified_condition(&v);
            let failed = matches!(v, engine::verify::Verdict::Failed(_));
            if failed
                && status::get(&report.status.conditions, VERIFIED)
                    .is_none_or(|c| c.message != message)
            {
                report.event(true, "VerificationFailed", "Verify", message.clone());
            }
            report.set(VERIFIED, state, reason, message);
        }
        Err(e) => report.set(
            VERIFIED,
            crate::api::ConditionStatus::Unknown,
            e.reason(),
            format!("could not run _simulate: {e}"),
        ),
    }
    report.status.installed_tag = Some(desired.release.clone());
    report.status.model_id = Some(desired.model_id.clone());
    report.status.bundle_sha256 = Some(desired.bundle_sha256.clone());
    Ok(())
}

/// `EnrichmentWired`: where the router is called from, and where Fleet's own DGA enrichment
/// already runs so the operator added nothing (documents are never scored twice).
fn wired_condition(
    report: &mut Report,
    desired: &engine::Desired,
    observed: &engine::Observed,
    known: &Ids,
    owned: &Ids,
) {
    if desired.hooks.is_empty() && desired.wire_indices.is_empty() {
        report
            .status
            .conditions
            .retain(|c| c.type_ != status::WIRED);
        return;
    }
    let mut ours: Vec<String> = Vec::new();
    ours.extend(owned.hooks.iter().map(|h| format!("pipeline hook {h}")));
    ours.extend(
        owned
            .templates
            .iter()
            .map(|t| format!("index template {t}")),
    );
    if !owned.indices.is_empty() {
        ours.push(format!("{} indices", owned.indices.len()));
    }
    let ours = if ours.is_empty() {
        "nothing wired by this DgaModel".to_string()
    } else {
        format!("{} call {}", ours.join(", "), desired.router)
    };
    let fleet = engine::diff::fleet_enriched(desired, observed, known);
    if fleet.is_empty() {
        report.set(status::WIRED, true, "Wired", ours);
    } else {
        report.set(
            status::WIRED,
            true,
            "FleetEnrichmentPresent",
            format!(
                "Fleet's DGA enrichment already runs there, so the operator added none of its own (documents are scored once): {}; {ours}",
                fleet.join(", ")
            ),
        );
    }
}

/// The `EnrichmentVerified` condition a canary verdict gives. Unproven (the server cannot run a
/// processor, e.g. the stand-in and painless) is Unknown: nothing proven either way, no failure.
fn verified_condition(
    v: &engine::verify::Verdict,
) -> (crate::api::ConditionStatus, &'static str, String) {
    use crate::api::ConditionStatus as S;
    use engine::verify::Verdict;
    match v {
        Verdict::Passed(summary) => (S::True, "Verified", summary.clone()),
        Verdict::Unproven(why) => (
            S::Unknown,
            "Unproven",
            format!("the canary run could not be completed: {why}"),
        ),
        Verdict::Failed(problem) => (S::False, "VerificationFailed", problem.clone()),
    }
}

/// Drops a pass's cached cluster answers unless it is disarmed by a successful end.
struct ForgetOnError<'a> {
    ctx: &'a Context,
    keys: Vec<String>,
    armed: bool,
}

impl Drop for ForgetOnError<'_> {
    fn drop(&mut self) {
        if self.armed {
            for k in &self.keys {
                self.ctx.forget(k);
            }
        }
    }
}

/// The Kibana side: the detection rules, and the anomaly job the ML rule needs, planned and
/// applied by the engine's detection part. Runs after the Elasticsearch side converged, so a
/// Kibana outage never holds back the enrichment.
#[allow(clippy::too_many_arguments)]
async fn rules_pass(
    obj: &DgaModel,
    ctx: &Context,
    target: &Target,
    bundle: &crate::bundle::Bundle,
    es: &Elasticsearch,
    owner: &Owner,
    marker: &engine::Marker,
    glanced: bool,
    report: &mut Report,
) -> Result<(), Error> {
    use crate::kibana::{self, KibanaClient};
    use engine::detection::{self, JobLook, Recorded};
    let spec = obj.spec.rules.clone().unwrap_or_default();
    let settings = detection::Settings {
        space: spec.space.clone().unwrap_or_else(|| "default".into()),
        wanted: spec.enabled.unwrap_or(true),
        selected: spec.rule_ids.clone(),
        index: spec
            .index
            .clone()
            .unwrap_or_else(kibana::rules::default_index),
        enable_new: spec.enable_new_rules.unwrap_or(true),
    };
    let space = settings.space.clone();
    let Some(kb) = &target.kibana else {
        report.status.rules = None;
        if spec.enabled == Some(true) {
            let e = Error::InvalidSpec(
                "spec.rules.enabled is true but no Kibana is known: set spec.kibanaRef (ECK) or add `kibana-url` to the cluster Secret".into(),
            );
            report.set(RULES, false, "NoKibana", e.to_string());
            return Err(e);
        }
        report.set(
            RULES,
            false,
            "NoKibana",
            "no Kibana known (set spec.kibanaRef to an ECK Kibana, or add `kibana-url` to the cluster Secret); rules not installed",
        );
        return Ok(());
    };
    let http = kb.http_client(ctx.settings.request_timeout)?;
    let client = KibanaClient::new(http, &kb.url, kb.auth.clone());
    // Kibana's version decides which fields its rules accept and which job Elastic ships
    // (cached like the cluster's, so a glance pass rarely asks again).
    let kstatus = kibana_status(ctx, &client, &kb.cache_key(), report).await?;
    let features = detection::features(&kstatus.version)?;
    let desired = detection::build(&bundle.rules, owner, marker, &settings, features)
        .inspect_err(|e| report.set(RULES, false, e.reason(), e.to_string()))?;
    // A glance that checked the job's tasks proved it open and fed.
    let checked = glanced && report.settle.as_ref().is_some_and(|s| s.job);
    let look = match report.status.objects.jobs.first() {
        Some(id) if checked => JobLook::Proven(id.clone()),
        _ => JobLook::Read,
    };
    // A rule, prebuilt rule, job or datafeed created again where the status records them
    // installed was removed by hand: a repair, counted and reported as one.
    let same_space = report.status.objects.rules_space.as_deref() == Some(space.as_str());
    let recorded = Recorded {
        rules: same_space,
        prebuilt: if same_space {
            report.status.objects.prebuilt_rules.clone()
        } else {
            Vec::new()
        },
        jobs: report.status.objects.jobs.clone(),
    };
    // What Kibana offers of Elastic's rules: asked on every full pass, reused from the cache on
    // a quiet resync (one Kibana read per resync stays one).
    let offer_key = format!("{} prebuilt {space}", kb.cache_key());
    let known = match ctx.cached(&offer_key) {
        Some(CachedInfo::Prebuilt(a)) if glanced => Some(a),
        _ => None,
    };
    let overwrite = obj.spec.overwrite;
    let plan = detection::plan(&client, es, &desired, known, look, &recorded, overwrite).await?;
    ctx.remember(offer_key, CachedInfo::Prebuilt(plan.route.offer.clone()));
    if !plan.conflicts.is_empty() {
        let e = Error::Conflict(plan.conflict_details().join("; "));
        report.set(RULES, false, "Conflict", e.to_string());
        return Err(e);
    }
    let suspended = obj.spec.suspend || obj.spec.mode == crate::api::Mode::Plan;
    if suspended {
        if let Some(c) = &plan.job_conflict {
            return Err(Error::Conflict(c.clone()));
        }
        if let Some(job) = &plan.job {
            job_condition(report, job, &plan.index, None, ctx);
            if let Some(s) = report.settle.as_mut() {
                s.job = true;
            }
        }
        let done = plan.lines();
        let plan_mode = obj.spec.mode == crate::api::Mode::Plan;
        let (reason, msg) = match (plan_mode, done.is_empty()) {
            (true, true) => ("InSync", "mode Plan; rules are current".to_string()),
            (true, false) => ("Planned", format!("mode Plan; would: {}", done.join("; "))),
            (false, true) => ("Suspended", "suspended; rules are current".to_string()),
            (false, false) => (
                "Suspended",
                format!("suspended; pending: {}", done.join("; ")),
            ),
        };
        report.set(RULES, done.is_empty(), reason, msg);
        if let Some(p) = report.suspended.as_mut() {
            p.detection = Some(plan);
        }
        return Ok(());
    }
    let in_kibana: Vec<String> = plan
        .steps
        .iter()
        .filter(|s| s.action.service() == crate::error::Service::Kibana)
        .map(ToString::to_string)
        .collect();
    if !in_kibana.is_empty() {
        report
            .progress(ctx, format!("applying in Kibana: {}", in_kibana.join("; ")))
            .await;
    }
    let (applied, failed) =
        match detection::apply(Some(&client), es, &desired, &plan, settings.enable_new).await {
            Ok(a) => (a, None),
            Err((a, f)) => (a, Some(f)),
        };
    if let Some(r) = &applied.prebuilt_record {
        // Recorded with its space at once: a pass that fails after installing (the enable
        // step) must leave the next one knowing these installs are ours.
        if !r.is_empty() {
            report.status.objects.rules_space = Some(space.clone());
        }
        report.status.objects.prebuilt_rules = r.clone();
    }
    if let Some(f) = failed {
        if f.in_rules {
            report.set(RULES, false, f.error.reason(), f.error.to_string());
        }
        return Err(f.error);
    }
    let done: Vec<String> = applied.done.iter().map(ToString::to_string).collect();
    let repairs = applied.done.iter().filter(|s| s.repair).count();
    match &plan.job {
        Some(job) => {
            job_condition(report, job, &plan.index, applied.waiting.as_deref(), ctx);
            // A datafeed waiting for data is not settled: the next resync tries to start it
            // again (one refused `_start`, no backoff).
            if let Some(s) = report.settle.as_mut() {
                s.job = applied.waiting.is_none();
            }
            // Only a job this DgaModel holds is recorded (and removed on delete); Fleet's is not.
            report.status.objects.jobs = if job.fleet {
                Vec::new()
            } else {
                vec![job.id.clone()]
            };
        }
        None => {
            report.status.objects.jobs.clear();
            report.status.conditions.retain(|c| c.type_ != JOB);
        }
    }
    let wanted = settings.wanted;
    report.status.objects.rules_space =
        (wanted || !report.status.objects.prebuilt_rules.is_empty()).then(|| space.clone());
    report.status.rules = Some(format!("{}/{}", plan.rules, plan.rules));
    if !done.is_empty() {
        report.applied_something = true;
        ctx.metrics.drift_repaired(repairs); // metrics
        let reason = if repairs > 0 {
            "DriftRepaired"
        } else {
            "RulesSynced"
        };
        report.event(false, reason, "Apply", done.join("; "));
    }
    let msg = if wanted {
        let note = match &plan.job {
            Some(job) => format!(
                "; the machine_learning rule watches {}{}",
                job.id,
                if job.fleet {
                    " (Fleet's DGA module job)"
                } else {
                    ""
                }
            ),
            None => " (the machine_learning rule is not selected: no anomaly job)".to_string(),
        };
        plan.route_message(&kstatus.version) + &note
    } else {
        "rules disabled by spec.rules.enabled".to_string()
    };
    report.set(
        RULES,
        true,
        if wanted { "Installed" } else { "Disabled" },
        msg,
    );
    Ok(())
}

/// Kibana's version and health, cached like the cluster's, reported as a condition.
async fn kibana_status(
    ctx: &Context,
    client: &crate::kibana::KibanaClient,
    key: &str,
    report: &mut Report,
) -> Result<crate::kibana::KibanaStatus, Error> {
    let status = match ctx.cached(key) {
        Some(CachedInfo::Kibana(s)) => Ok(s),
        _ => client
            .status()
            .await
            .inspect(|s| ctx.remember(key.to_string(), CachedInfo::Kibana(s.clone()))),
    };
    match status {
        Ok(s) => {
            report.set(
                KIBANA_REACHABLE,
                true,
                "Reachable",
                format!("Kibana {} ({})", s.version, s.level),
            );
            Ok(s)
        }
        Err(e) => {
            report.set(KIBANA_REACHABLE, false, e.reason(), e.to_string());
            report.set(RULES, false, e.reason(), format!("Kibana: {e}"));
            Err(e)
        }
    }
}

/// A merge patch keeps fields it does not mention: mark fields the new status dropped as null.
fn null_removed(old: &serde_json::Value, new: &mut serde_json::Value) {
    if let (Some(o), Some(n)) = (old.as_object(), new.as_object_mut()) {
        for (k, ov) in o {
            match n.get_mut(k) {
                None => {
                    n.insert(k.clone(), serde_json::Value::Null);
                }
                Some(nv) => null_removed(ov, nv),
            }
        }
    }
}

fn record_objects(report: &mut Report, ids: &Ids) {
    let o = &mut report.status.objects;
    o.models = ids.models.iter().cloned().collect();
    o.scripts = ids.scripts.iter().cloned().collect();
    o.pipelines = ids.pipelines.iter().cloned().collect();
    o.wired_indices = ids.indices.iter().cloned().collect();
    o.hooks = ids.hooks.iter().cloned().collect();
    o.wired_templates = ids.templates.iter().cloned().collect();
}

/// Version and licence checks, reported as conditions.
async fn connect(
    es: &Elasticsearch,
    key: &str,
    ctx: &Context,
    report: &mut Report,
) -> Result<ClusterInfo, Error> {
    if let Some(CachedInfo::Elasticsearch(info, license)) = ctx.cached(key) {
        report.set(
            ES_REACHABLE,
            true,
            "Reachable",
            format!("Elasticsearch {} at {}", info.version, es.url()),
        );
        report.set(
            LICENSE,
            true,
            "LicenseSufficient",
            format!("licence {license}"),
        );
        return Ok(info);
    }
    let info = match es.info().await {
        Ok(i) => i,
        Err(e) => {
            if e.service() == Some(Service::Elasticsearch) {
                report.set(ES_REACHABLE, false, e.reason(), e.to_string());
            }
            return Err(e);
        }
    };
    report.set(
        ES_REACHABLE,
        true,
        "Reachable",
        format!("Elasticsearch {} at {}", info.version, es.url()),
    );
    let license = es.license().await?;
    if !ML_LICENSES.contains(&license.as_str()) {
        let e = Error::LicenseInsufficient(license);
        report.set(LICENSE, false, "LicenseInsufficient", e.to_string());
        return Err(e);
    }
    report.set(
        LICENSE,
        true,
        "LicenseSufficient",
        format!("licence {license}"),
    );
    ctx.remember(
        key.to_string(),
        CachedInfo::Elasticsearch(info.clone(), license),
    );
    Ok(info)
}

/// Deletion: remove what this DgaModel owns (unless `Retain`), then release the finalizer. A
/// target that stays unreachable past `delete_timeout` does not hold the object forever.
async fn finalize(api: &Api<DgaModel>, obj: &DgaModel, ctx: &Context) -> Result<Requeue, Error> {
    if !obj.finalizers().iter().any(|f| f == FINALIZER) {
        return Ok(Requeue::await_change());
    }
    let owner = owner_of(obj);
    let status = obj.status.clone().unwrap_or_default();
    let left = describe_objects(&status.objects, &owner);
    let mut report = Report::new(obj);
    // The state column and Ready say so while the cleanup runs (kstatus reads Terminating from
    // the deletionTimestamp alone).
    if obj.spec.deletion_policy == DeletionPolicy::Delete
        && report.status.state != Some(crate::api::State::Deleting)
    {
        report.set(
            READY,
            false,
            "Deleting",
            "deleting: removing what this DgaModel installed",
        );
        report.settle_state();
        if let Err(e) = report.write_status(api).await {
            debug!(error = %e, "could not write the Deleting status");
        }
    }
    let (event_type_warning, reason, note) = if obj.spec.deletion_policy == DeletionPolicy::Retain {
        (
            false,
            "Retained",
            format!("deletionPolicy Retain: left installed: {left}"),
        )
    } else {
        match cleanup(obj, ctx, &owner).await {
            Ok(removed) => (
                false,
                "Removed",
                if removed.is_empty() {
                    "nothing to remove".to_string()
                } else {
                    format!("removed {}", removed.join(", "))
                },
            ),
            // Nothing recorded as installed: the one look at the well-known ids (for a crash
            // between a write and its status) could not be made, and waiting would only hold
            // the object (and its namespace) for `--delete-timeout` over nothing.
            Err(e) if status.objects.is_empty() => (
                false,
                "Removed",
                format!("nothing recorded as installed; could not check the cluster ({e})"),
            ),
            Err(e) => {
                let since = obj
                    .meta()
                    .deletion_timestamp
                    .as_ref()
                    .map(|t| t.0)
                    .unwrap_or_else(jiff::Timestamp::now);
                let waited = jiff::Timestamp::now().duration_since(since).unsigned_abs();
                if waited < ctx.settings.delete_timeout {
                    pending_deletion(&mut report, &e, since, ctx.settings.delete_timeout, &left);
                    report.publish(api, obj, ctx).await?;
                    let delay = ctx.backoff(&owner.uid, e.retry_after());
                    return Ok(Requeue::requeue(
                        delay.min(
                            ctx.settings
                                .delete_timeout
                                .saturating_sub(waited)
                                .max(Duration::from_secs(1)),
                        ),
                    ));
                }
                (
                    true,
                    "CleanupAbandoned",
                    format!(
                        "could not clean up for {}s ({e}); released the finalizer and left behind: {left}",
                        waited.as_secs()
                    ),
                )
            }
        }
    };
    // The Secret outlives the cleanup (see `protection`); released just before the finalizer.
    crate::protection::release_for(&ctx.client, obj).await?;
    report.event(event_type_warning, reason, "Delete", note);
    // Events first: the object may be gone right after the finalizer goes.
    let reference = obj.object_ref(&());
    for ev in &report.events {
        let _ = ctx.recorder.publish(ev, &reference).await;
    }
    match api
        .patch(
            &obj.name_any(),
            &PatchParams::default(),
            &Patch::Json::<()>(crate::finalizer::patch(
                obj.finalizers(),
                FINALIZER,
                crate::finalizer::Op::Remove,
            )?),
        )
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(e) => return Err(e.into()),
    }
    ctx.succeeded(&owner.uid);
    info!(
        namespace = owner.namespace,
        name = owner.name,
        reason,
        "finalized"
    );
    Ok(Requeue::await_change())
}

/// A deletion waiting for its cluster: what failed, and when the finalizer is released anyway.
fn pending_deletion(
    report: &mut Report,
    e: &Error,
    since: jiff::Timestamp,
    timeout: Duration,
    left: &str,
) {
    let deadline = jiff::SignedDuration::try_from(timeout)
        .ok()
        .and_then(|d| since.checked_add(d).ok())
        .map(|t| t.round(jiff::Unit::Second).unwrap_or(t).to_string())
        .unwrap_or_default();
    let msg = format!(
        "deleting: cleanup failed ({e}); retrying until {deadline}, then the finalizer is released and left behind: {left}"
    );
    if e.service() == Some(Service::Elasticsearch) {
        report.set(ES_REACHABLE, false, e.reason(), e.to_string());
    }
    // Ready already says `Deleting` from the start of the cleanup; Reconciling says it once a
    // cleanup has failed, which is what the Warning is about.
    let old = status::get(&report.status.conditions, RECONCILING).map(|c| c.reason.clone());
    report.status.observed_generation = report.generation;
    report.set(READY, false, "Deleting", msg.clone());
    report.set(RECONCILING, true, "Deleting", msg.clone());
    report.set(
        STALLED,
        false,
        "Deleting",
        format!("deletion pending until {deadline}"),
    );
    if old.as_deref() != Some("Deleting") {
        report.event(true, "DeletionPending", "Delete", msg);
    }
    report.settle_state();
}

async fn cleanup(obj: &DgaModel, ctx: &Context, owner: &Owner) -> Result<Vec<String>, Error> {
    let mut owner = owner.clone();
    let owner = &mut owner;
    let target: Target = resolve_target(ctx, obj).await?;
    let slot = ctx.cluster_slot(target.key());
    let _permit = slot
        .acquire()
        .await
        .map_err(|e| Error::Internal(e.to_string()))?;
    let es = Elasticsearch::new(target.elasticsearch, ctx.settings.request_timeout)?;
    let recorded = recorded_ids(obj.status.as_ref());
    let mut to_observe = ids_to_observe(&recorded);
    // Also the indices the spec wires, in case the status never recorded them (a crash right
    // after wiring): an index must not keep pointing at a pipeline that is about to go.
    let wiring = engine::Wiring::from_spec(obj.spec.enrichment.as_ref());
    to_observe.indices.extend(wiring.indices);
    // And the hooks it names: our processor may be in one the status does not record yet.
    to_observe.pipelines.extend(wiring.custom_pipelines);
    // Leftovers this DgaModel took over go with it (a model, and the job, keep their first
    // marker).
    let observed = engine::observe(&es, &to_observe).await?;
    owner.adopted = gone_owners(&ctx.client, &observed, owner, &recorded, false).await;
    let owner = &*owner;
    let mut removed = Vec::new();
    // Rules first (they alert on the enrichment), then the job, then the enrichment itself.
    let status = obj.status.clone().unwrap_or_default();
    let client = match (&status.objects.rules_space, &target.kibana) {
        (Some(space), Some(kb)) => Some((
            crate::kibana::KibanaClient::new(
                kb.http_client(ctx.settings.request_timeout)?,
                &kb.url,
                kb.auth.clone(),
            ),
            space.as_str(),
        )),
        _ => None,
    };
    removed.extend(
        engine::detection::remove(
            client.as_ref().map(|(c, space)| (c, *space)),
            &es,
            owner,
            &status.objects.prebuilt_rules,
            !status.objects.jobs.is_empty(),
        )
        .await?,
    );
    removed.extend(engine::cleanup(&es, owner, &recorded, &to_observe).await?);
    Ok(removed)
}

/// The credentials' home, as a person would look for it.
fn describe_cluster_ref(obj: &DgaModel) -> String {
    let ns = obj.namespace().unwrap_or_default();
    let r = &obj.spec.cluster_ref;
    match (&r.secret_name, &r.name) {
        (Some(s), _) => format!("Secret {ns}/{s} (spec.clusterRef.secretName)"),
        (None, Some(n)) => {
            let ens = r.namespace.clone().unwrap_or(ns);
            format!("Secret {ens}/{n}-es-elastic-user of ECK Elasticsearch {ens}/{n}")
        }
        _ => "spec.clusterRef".to_string(),
    }
}

/// What a person does about an error that needs one; the Stalled message ends with it.
fn remedy(e: &Error, cluster: &str, eck_cluster: Option<&str>) -> Option<String> {
    Some(match e {
        Error::SecretNotFound(_) => format!(
            "create it, or correct spec.clusterRef; the operator notices the change within seconds ({cluster})"
        ),
        Error::SecretInvalid(_) => format!("correct the keys of {cluster}"),
        Error::Unauthorized { .. } => format!(
            "put credentials the service accepts into {cluster}; the operator notices the change within seconds"
        ),
        // ECK manages the licence of the clusters it runs: it reverts any licence uploaded by hand
        // other than a trial to basic (elastic/cloud-on-k8s
        // pkg/controller/elasticsearch/license/apply.go), so the licence goes to ECK instead.
        Error::LicenseInsufficient(_) if eck_cluster.is_some() => format!(
            "ECK manages the licence of Elasticsearch {} and reverts a licence uploaded by hand \
             (other than a trial) to basic: give the ECK operator an enterprise licence (a Secret \
             in ECK's namespace labelled license.k8s.elastic.co/scope=operator with the licence \
             file under key `license`), or start an ECK trial (a Secret in ECK's namespace \
             labelled license.k8s.elastic.co/type=enterprise_trial and annotated \
             elastic.co/eula=accepted)",
            eck_cluster.unwrap_or_default()
        ),
        Error::LicenseInsufficient(_) => {
            "install a platinum or enterprise licence, or start a trial (POST _license/start_trial?acknowledge=true)"
                .to_string()
        }
        Error::Conflict(_) => {
            "remove the objects named, or set spec.overwrite: true to take them over (never another DgaModel's)"
                .to_string()
        }
        Error::ReservedState(_) => {
            "take the object out of the StackConfigPolicy (or the file-based settings) that owns \
             it, or wire other hooks with spec.enrichment; spec.overwrite cannot take over \
             reserved state"
                .to_string()
        }
        Error::ReleaseNotFound { .. } => "correct spec.releaseTag or spec.source".to_string(),
        Error::InvalidSpec(_) => "correct the field named".to_string(),
        _ => return None,
    })
}

/// Everything the status records, every kind: what a person has to remove by hand after a
/// `Retain` or an abandoned cleanup.
fn describe_objects(o: &InstalledObjects, owner: &Owner) -> String {
    let mut parts: Vec<String> = Vec::new();
    if let Some(space) = &o.rules_space {
        parts.push(format!(
            "the detection rules tagged {} in Kibana space {space}",
            crate::kibana::owner_tag(&owner.key())
        ));
        if !o.prebuilt_rules.is_empty() {
            parts.push(format!(
                "Elastic's prebuilt rules {} it installed in Kibana space {space}",
                o.prebuilt_rules.join(", ")
            ));
        }
    }
    for job in &o.jobs {
        parts.push(format!(
            "anomaly detection job {job} and datafeed {}",
            engine::mljob::datafeed_id(job)
        ));
    }
    parts.extend(
        o.wired_indices
            .iter()
            .map(|i| format!("index.final_pipeline of index {i}")),
    );
    parts.extend(
        o.wired_templates
            .iter()
            .map(|t| format!("index.final_pipeline of index template {t}")),
    );
    parts.extend(o.hooks.iter().map(|h| {
        format!("ingest pipeline hook {h} (the processor in it that calls the enrichment)")
    }));
    for p in &o.pipelines {
        if p.ends_with("@custom") {
            parts.push(format!("ingest pipeline hook {p}"));
        } else {
            parts.push(format!("ingest pipeline {p}"));
        }
    }
    parts.extend(o.scripts.iter().map(|p| format!("stored script {p}")));
    parts.extend(o.models.iter().map(|p| format!("trained model {p}")));
    if parts.is_empty() {
        "nothing recorded".into()
    } else {
        parts.join(", ")
    }
}
