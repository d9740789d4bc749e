//! The status and events of one pass: conditions set as the pass goes, the early
//! `Reconciling` notice, and one merge patch and the events at the end.

use super::*;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use serde_json::json;
use tracing::{debug, warn};

use crate::api::{DgaModel, DgaModelStatus};
use crate::engine::{self};
use crate::error::Error;
use crate::status::{
    self, CHANGES_PENDING, JOB, PROGRESSING, READY, RECONCILING, STALLED, SUSPENDED, VERIFIED,
    WAITING_FOR_DATA,
};

/// What a pass learnt, turned into status and events at the end.
pub(super) struct Report {
    pub(super) status: DgaModelStatus,
    /// The status on the server when the pass started, and after any write it made since.
    pub(super) original: Option<DgaModelStatus>,
    pub(super) written: Option<DgaModelStatus>,
    pub(super) namespace: String,
    pub(super) name: String,
    pub(super) deleting: bool,
    pub(super) suspend: bool,
    /// Where the credentials come from, for the fix a Stalled message names.
    pub(super) cluster: String,
    /// `namespace/name` of the ECK Elasticsearch behind `clusterRef.name`, if that is the route.
    pub(super) eck_cluster: Option<String>,
    pub(super) generation: Option<i64>,
    pub(super) now: Time,
    pub(super) events: Vec<Event>,
    pub(super) applied_something: bool,
    /// Suspended or `mode: Plan`: what Apply would do, both services.
    pub(super) suspended: Option<engine::plan::Plan>,
    /// `mode: Plan`: report the pending changes as a plan.
    pub(super) plan_mode: bool,
    /// Set by an Apply pass: what the object settles on if the pass ends Ready and verified.
    pub(super) settle: Option<Settled>,
}

impl Report {
    pub(super) fn new(obj: &DgaModel) -> Self {
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

    pub(super) fn set(
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
    pub(super) async fn progress(&mut self, ctx: &Context, message: String) {
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

    pub(super) fn settle_state(&mut self) {
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
    pub(super) async fn write_status(
        &mut self,
        api: &Api<DgaModel>,
    ) -> Result<Option<String>, Error> {
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

    pub(super) fn event(&mut self, warning: bool, reason: &str, action: &str, note: String) {
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

    pub(super) fn finish(&mut self, err: Option<&Error>) {
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
                        "{} installed, but the canary documents were scored wrongly: {}; see the VerificationFailed event, check the model and the pipelines",
                        installed_label(&self.status),
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
                            "{} installed (model {}){waiting}",
                            installed_label(&self.status),
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

    pub(super) async fn publish(
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

/// A merge patch keeps fields it does not mention: mark fields the new status dropped as null.
pub(super) fn null_removed(old: &serde_json::Value, new: &mut serde_json::Value) {
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

/// The credentials' home, as a person would look for it.
pub(super) fn describe_cluster_ref(obj: &DgaModel) -> String {
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
/// What is installed, as the Ready message names it.
fn installed_label(s: &crate::api::DgaModelStatus) -> String {
    match (&s.fleet_package, &s.installed_tag) {
        (Some(p), _) => format!(
            "Fleet package {} {}{}",
            crate::engine::package::PACKAGE,
            p.version.clone().unwrap_or_default(),
            if p.installed_by_operator {
                ""
            } else {
                " (not installed by the operator, adopted)"
            }
        ),
        (None, t) => format!("release {}", t.clone().unwrap_or_default()),
    }
}

pub(super) fn remedy(e: &Error, cluster: &str, eck_cluster: Option<&str>) -> Option<String> {
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
        Error::PackageUnavailable(_) => {
            "give Kibana a package registry it can reach (xpack.fleet.registryUrl), or set spec.fleetPackage.url to the package archive"
                .to_string()
        }
        Error::UploadNotAllowed(_) => {
            "drop spec.fleetPackage.url so that Kibana installs from its registry, use an enterprise or trial licence, or upgrade the stack to 8.8.2 or later".to_string()
        }
        Error::PackageIncompatible(_) => {
            "set spec.fleetPackage.version to a version whose Kibana constraint this stack meets, or upgrade the stack".to_string()
        }
        _ => return None,
    })
}
