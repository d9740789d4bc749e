//! Deletion: remove what the DgaModel owns per `deletionPolicy`, then release the finalizer.

use super::*;

use std::time::Duration;

use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action as Requeue;
use kube::{Resource, ResourceExt};
use tracing::{debug, info};

use crate::api::{DeletionPolicy, DgaModel, FINALIZER, InstalledObjects};
use crate::elasticsearch::Elasticsearch;
use crate::engine::{self, Owner};
use crate::error::{Error, Service};
use crate::status::{self, ES_REACHABLE, READY, RECONCILING, STALLED};
use crate::target::Target;

/// Deletion: remove what this DgaModel owns (unless `Retain`), then release the finalizer. A
/// target that stays unreachable past `delete_timeout` does not hold the object forever.
pub(super) async fn finalize(
    api: &Api<DgaModel>,
    obj: &DgaModel,
    ctx: &Context,
) -> Result<Requeue, Error> {
    if !obj.finalizers().iter().any(|f| f == FINALIZER) {
        return Ok(Requeue::await_change());
    }
    let owner = owner_of(obj);
    let status = obj.status.clone().unwrap_or_default();
    let left = describe_objects(&status.objects, status.fleet_package.as_ref(), &owner);
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
            Err(e) if status.objects.is_empty() && status.fleet_package.is_none() => (
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
pub(super) fn pending_deletion(
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

pub(super) async fn cleanup(
    obj: &DgaModel,
    ctx: &Context,
    owner: &Owner,
) -> Result<Vec<String>, Error> {
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
    // Last, the Fleet package, and only a version this DgaModel installed (one it adopted
    // stays): nothing of ours calls its pipelines any more.
    let ours: Vec<String> = status
        .fleet_package
        .iter()
        .flat_map(|p| {
            p.version
                .clone()
                .filter(|_| p.installed_by_operator)
                .into_iter()
                .chain(p.installing.clone())
        })
        .collect();
    if !ours.is_empty() {
        let Some(kb) = &target.kibana else {
            return Err(Error::InvalidSpec(format!(
                "Fleet package {} {} was installed through a Kibana that is no longer known: restore spec.kibanaRef (or `kibana-url`) so it can be uninstalled, or set deletionPolicy: Retain",
                engine::package::PACKAGE,
                ours.join(" or ")
            )));
        };
        let client = crate::kibana::KibanaClient::new(
            kb.http_client(ctx.settings.request_timeout)?,
            &kb.url,
            kb.auth.clone(),
        );
        // A version someone moved the package to since is not ours to uninstall.
        let now = client.fleet_package(engine::package::PACKAGE, None).await?;
        if let Some(v) = now.and_then(|n| n.installed).filter(|v| ours.contains(v)) {
            removed.push(engine::package::remove(&client, &v).await?);
        }
    }
    Ok(removed)
}

/// Everything the status records, every kind: what a person has to remove by hand after a
/// `Retain` or an abandoned cleanup.
pub(super) fn describe_objects(
    o: &InstalledObjects,
    package: Option<&crate::api::FleetPackageStatus>,
    owner: &Owner,
) -> String {
    let mut parts: Vec<String> = Vec::new();
    if let Some(v) = package
        .filter(|p| p.installed_by_operator)
        .and_then(|p| p.version.as_ref())
    {
        parts.push(format!(
            "Fleet package {} {v} in Kibana",
            engine::package::PACKAGE
        ));
    }
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
