//! One Apply (or Plan) pass for a live DgaModel, in the engine's order: dereference, validate,
//! fetch, build, connect, observe, diff, apply (Elasticsearch, then Kibana); and the resync
//! glance that skips the reads when nothing changed.

use super::*;

use std::collections::HashMap;

use kube::api::Api;
use kube::{Client, ResourceExt};
use tracing::{debug, info, warn};

use crate::api::{DgaModel, Route};
use crate::bundle::fetch::Request;
use crate::elasticsearch::{ClusterInfo, Elasticsearch, ML_LICENSES};
use crate::engine::{self, Owner, Plan, Reason, observe::Ids};
use crate::error::{Error, Service};
use crate::status::{self, ES_REACHABLE, LICENSE, MODEL, PACKAGE, PIPELINES, VERIFIED};
use crate::target::Target;

/// One reconcile pass for a live DgaModel: dereference, validate, fetch, build, observe, diff,
/// apply. Conditions are set as each stage is passed.
pub(super) async fn pass(obj: &DgaModel, ctx: &Context, report: &mut Report) -> Result<(), Error> {
    let spec = &obj.spec;
    let route = spec.route().map_err(Error::InvalidSpec)?;
    let target = resolve_target(ctx, obj).await?;
    crate::protection::protect(&ctx.client, obj).await?;
    let mut owner = owner_of(obj);
    let wiring = engine::Wiring::from_spec(spec.enrichment.as_ref());
    // The release's objects, or the Fleet package's (whose archive, on the air-gapped route,
    // is fetched and checked before anything else happens).
    let (bundle, mut desired, archive) = match route {
        Route::Release { tag, source } => {
            let bundle = ctx.fetcher.fetch(Request { tag, source }).await?;
            let d = engine::build_with(&bundle, &owner, &wiring);
            (Some(bundle), d, None)
        }
        Route::Fleet(p) => {
            let archive = match &p.url {
                Some(url) => Some(
                    ctx.fetcher
                        .fetch_package(url, p.sha256.as_deref(), &p.version)
                        .await?,
                ),
                None => None,
            };
            let identity = archive
                .as_ref()
                .map_or_else(|| "registry".to_string(), |a| a.sha256.clone());
            // The model id Kibana listed for this version last time (a full pass reads it).
            let model_id = obj
                .status
                .as_ref()
                .filter(|s| {
                    s.fleet_package
                        .as_ref()
                        .is_some_and(|f| f.version.as_deref() == Some(p.version.as_str()))
                })
                .and_then(|s| s.model_id.clone())
                .unwrap_or_else(|| engine::package::MODEL_ID.to_string());
            let d = engine::build::build_fleet(&owner, &wiring, &p.version, &model_id, &identity);
            (None, d, archive)
        }
    };
    // The Fleet route's rules are the package's own where it has them (0.x-1.x), read once per
    // version through Kibana and kept with the cluster answers; else Elastic's.
    let package_rules_key = match (&desired.fleet, &target.kibana) {
        (Some(v), Some(kb)) => Some(format!(
            "{} package-rules {v} {}",
            kb.cache_key(),
            desired.bundle_sha256
        )),
        _ => None,
    };
    let cached_package_rules: Option<Vec<serde_json::Value>> =
        package_rules_key
            .as_ref()
            .and_then(|k| match ctx.cached(k) {
                Some(CachedInfo::PackageRules(r)) => Some(r),
                _ => None,
            });
    let rules_cached = cached_package_rules.is_some();
    // Borrowed from the release (no copy on every resync); the package's are read once.
    let mut source_rules: std::borrow::Cow<[serde_json::Value]> = match &bundle {
        Some(b) => std::borrow::Cow::Borrowed(&b.rules),
        None => std::borrow::Cow::Owned(cached_package_rules.unwrap_or_default()),
    };
    let module = desired.fleet.is_some().then_some(engine::package::MODULE);

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
    let known = recorded_ids(obj.status.as_ref());
    let applying = !spec.suspend && spec.mode == crate::api::Mode::Apply;
    let settle = Settled {
        generation: obj.metadata.generation,
        bundle_sha256: desired.bundle_sha256.clone(),
        target: keep_cache.keys.join(" "),
        job: false,
        es_version: None,
        model_config: None,
        echo: None,
    };
    // Without the package's rules at hand (a restarted operator), a glance would plan the
    // rules from the wrong source: a full pass reads them.
    let glance_ok = desired.fleet.is_none() || rules_cached;
    if applying {
        // A glance keeps the status it reads: only worth it while that status is the one the
        // settled pass wrote (not one a failed write left behind, nor one edited by hand).
        let status_as_written = |s: &Settled| {
            obj.status.as_ref().is_some_and(|st| {
                let installed = match &desired.fleet {
                    None => st.installed_tag.as_deref() == Some(desired.release.as_str()),
                    Some(v) => st
                        .fleet_package
                        .as_ref()
                        .is_some_and(|f| f.version.as_ref() == Some(v) && f.installing.is_none()),
                };
                st.observed_generation == s.generation
                    && st.bundle_sha256.as_deref() == Some(s.bundle_sha256.as_str())
                    && installed
            })
        };
        if let Some(s) = ctx.settled(&obj.uid().unwrap_or_default())
            && glance_ok
            && s.same_inputs(&settle)
            && status_as_written(&s)
        {
            report.settle = Some(s.clone());
            if let Some(v) = &s.es_version {
                desired.fit_to_cluster(v);
            }
            if let Some(cfg) = &s.model_config {
                desired.adopt_model_config(Some(cfg));
            }
            if glance_pass(
                obj,
                ctx,
                &target,
                &Source {
                    rules: &source_rules,
                    module,
                },
                &es,
                &desired,
                &known,
                s.job,
                report,
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
    let (info, license) = connect(&es, &keep_cache.keys[0], ctx, report)
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

    // The Fleet route: the package is planned first (it is installed before anything that
    // calls its pipelines).
    let package = match (route, archive) {
        (Route::Fleet(p), archive) => Some(
            plan_package(
                obj,
                ctx,
                &target,
                p,
                archive,
                &license,
                &mut desired,
                report,
            )
            .await?,
        ),
        _ => None,
    };

    if let (Some(pk), Some(key), Some(v)) = (&package, &package_rules_key, &desired.fleet)
        && !rules_cached
        && let Some(state) = pk.observed.installed_at(v)
    {
        let rules = engine::package::package_rules(&pk.client, v, &state.kibana_assets).await?;
        ctx.remember(key.clone(), CachedInfo::PackageRules(rules.clone()));
        source_rules = std::borrow::Cow::Owned(rules);
    }
    let mut observed = engine::observe(&es, &Ids::wanted(&desired, &known)).await?;
    desired.adopt_fleet_model(&observed);
    owner.adopted = gone_owners(&ctx.client, &observed, &owner, &known, spec.overwrite).await;
    desired.owner.adopted = owner.adopted.clone();
    let mut plan = engine::diff(&desired, &observed, &known, spec.overwrite);

    // Suspended or `mode: Plan`: both services planned and reported, nothing written.
    let held_back = spec.suspend || spec.mode == crate::api::Mode::Plan;
    if held_back {
        let owned = engine::diff::owned_ids(&observed, &owner, &known);
        record_objects(report, &owned);
        held_back_conditions(
            report,
            &desired,
            &owned,
            &plan,
            spec.mode == crate::api::Mode::Plan,
        );
        if let Some(pk) = &package {
            package_held_back(report, pk, spec.mode == crate::api::Mode::Plan);
        }
        report.suspended = Some(engine::plan::Plan {
            package: package.as_ref().map(|p| p.plan.clone()),
            es: plan.clone(),
            detection: None,
        });
    }
    if let Some(c) = package.as_ref().and_then(|p| p.plan.conflict.clone()) {
        report.set(PACKAGE, false, "Conflict", c.clone());
        return Err(Error::Conflict(c));
    }
    // Both services planned before either is written, as the CLI does: what is in the way on
    // either side, or a spec the rules cannot follow, holds back both (never half an upgrade).
    // Anything else from Kibana (unreachable, starting, refusing our credentials) holds back
    // only the rules: the enrichment goes on.
    let marker = desired.marker.clone();
    let plan_detection = async |rules: &[serde_json::Value], report: &mut Report| {
        let source = Source { rules, module };
        prepare(
            obj, ctx, &target, &source, &es, &owner, &marker, false, report,
        )
        .await
    };
    let mut detection = plan_detection(&source_rules, report).await;
    if held_back {
        keep_cache.armed = detection.is_err();
        return detection.map(|_| ());
    }
    if let Err(Error::Conflict(_) | Error::InvalidSpec(_)) = &detection {
        return detection.map(|_| ());
    }
    if let Some(pk) = package {
        // The new version's pipelines exist before the hooks move to them; the old version's
        // stay (Fleet keeps top-level pipelines on upgrade), so enrichment never stops.
        if let Some(rules) = apply_package(ctx, pk, &mut desired, report).await? {
            observed = engine::observe(&es, &Ids::wanted(&desired, &known)).await?;
            desired.adopt_fleet_model(&observed);
            plan = engine::diff(&desired, &observed, &known, spec.overwrite);
            if let Some(key) = &package_rules_key {
                ctx.remember(key.clone(), CachedInfo::PackageRules(rules.clone()));
            }
            // The version installed now ships rules of its own: the rules are planned again
            // from them (the plan made before the install knew only Elastic's).
            if rules[..] != source_rules[..] {
                detection = plan_detection(&rules, report).await;
            }
        }
        if let Some(s) = report.settle.as_mut() {
            s.model_config = desired.model_head.get("inference_config").cloned();
        }
    }
    let insecure = target.elasticsearch.insecure;
    if let Err(e) = apply_es(
        ctx, &es, insecure, &desired, &observed, &known, plan, &owner, report,
    )
    .await
    {
        // A hook a StackConfigPolicy owns: name the policy.
        return Err(target.explain_reserved(&ctx.client, e).await);
    }
    let r = match detection {
        Ok(Some(p)) => finish(ctx, &es, p, report).await,
        Ok(None) => Ok(()),
        Err(e) => Err(e),
    };
    keep_cache.armed = r.is_err();
    r
}

/// The Fleet route's package stage, planned (nothing written).
pub(super) struct PackageStage {
    client: crate::kibana::KibanaClient,
    plan: engine::package::Plan,
    observed: engine::package::Observed,
    upload: bool,
}

/// Reads the package in Kibana and plans it; the package's model id (Kibana's asset list) goes
/// into `desired`. A version Kibana cannot get, or one this stack cannot take, ends the pass
/// here with `PackageInstalled` saying why: nothing is written.
#[allow(clippy::too_many_arguments)]
async fn plan_package(
    obj: &DgaModel,
    ctx: &Context,
    target: &Target,
    p: &crate::api::FleetPackage,
    archive: Option<engine::package::Archive>,
    license: &str,
    desired: &mut engine::Desired,
    report: &mut Report,
) -> Result<PackageStage, Error> {
    use engine::package::{self, Recorded, Source as PackageSource};
    let Some(kb) = &target.kibana else {
        let e = Error::InvalidSpec(
            "spec.fleetPackage is installed through Kibana's Fleet API, and no Kibana is known: set spec.kibanaRef (ECK) or add `kibana-url` to the cluster Secret".into(),
        );
        report.set(PACKAGE, false, "NoKibana", e.to_string());
        return Err(e);
    };
    let client = crate::kibana::KibanaClient::new(
        kb.http_client(ctx.settings.request_timeout)?,
        &kb.url,
        kb.auth.clone(),
    );
    let kstatus = kibana_status(ctx, &client, &kb.cache_key(), report).await?;
    let upload = archive.is_some();
    let want = package::Desired {
        version: p.version.clone(),
        source: archive.map_or(PackageSource::Registry, PackageSource::Upload),
    };
    let observed = package::observe(&client, &want, &kstatus.version, license).await?;
    let record = obj.status.as_ref().and_then(|s| s.fleet_package.as_ref());
    let recorded = Recorded::Status {
        last: record.and_then(|f| Some((f.version.clone()?, f.installed_by_operator))),
        installing: record.and_then(|f| f.installing.clone()),
    };
    let mut plan = package::diff(&want, &observed, &recorded, obj.spec.overwrite)
        .inspect_err(|e| report.set(PACKAGE, false, e.reason(), e.to_string()))?;
    // A package this DgaModel does not own may be another's: never taken, even with
    // `overwrite` (as every object of another DgaModel), and named.
    let taking = plan.conflict.is_some()
        || plan.record.as_ref().is_some_and(|(_, by_us)| !by_us)
        || plan
            .install
            .as_ref()
            .is_some_and(|i| i.reason == Reason::Adopt);
    if let Some(v) = observed.installed().filter(|_| taking)
        && let Some(other) = package_owner(ctx, obj, report.status.cluster_uuid.as_deref(), v).await
    {
        plan = package::Plan {
            install: None,
            record: None,
            conflict: Some(format!(
                "Fleet package {} {v} is managed by DgaModel {other} (a stack's package is one DgaModel's: change that DgaModel, or delete it first)",
                package::PACKAGE
            )),
        };
    }
    if let Some(pkg) = observed.installed_at(&p.version)
        && let Some(m) = package::model_in(pkg.assets.iter().cloned())
    {
        desired.set_model_id(&m);
    }
    Ok(PackageStage {
        client,
        plan,
        observed,
        upload,
    })
}

/// Another DgaModel that installed `version` of the package on the same stack (by the
/// `cluster_uuid` both statuses record), if any: `namespace/name`. One list of the DgaModels
/// the operator watches, made only when a package this one does not own is found.
async fn package_owner(
    ctx: &Context,
    me: &DgaModel,
    cluster_uuid: Option<&str>,
    version: &str,
) -> Option<String> {
    let cluster = cluster_uuid?;
    let api: Api<DgaModel> = match &ctx.settings.namespace {
        Some(ns) => Api::namespaced(ctx.client.clone(), ns),
        None => Api::all(ctx.client.clone()),
    };
    let list = api.list(&Default::default()).await.ok()?;
    list.items
        .into_iter()
        .filter(|m| m.uid() != me.uid())
        .find(|m| {
            m.status.as_ref().is_some_and(|s| {
                s.cluster_uuid.as_deref() == Some(cluster)
                    && s.fleet_package.as_ref().is_some_and(|f| {
                        (f.installed_by_operator && f.version.as_deref() == Some(version))
                            || f.installing.as_deref() == Some(version)
                    })
            })
        })
        .map(|m| format!("{}/{}", m.namespace().unwrap_or_default(), m.name_any()))
}

/// `PackageInstalled` while suspended or in `mode: Plan`.
fn package_held_back(report: &mut Report, pk: &PackageStage, plan_mode: bool) {
    let word = if plan_mode { "mode Plan" } else { "suspended" };
    match (&pk.plan.install, &pk.plan.conflict) {
        (_, Some(c)) => report.set(PACKAGE, false, "Conflict", c.clone()),
        (Some(i), None) => report.set(
            PACKAGE,
            false,
            if plan_mode { "Planned" } else { "Suspended" },
            format!("{word}; would: {i}"),
        ),
        (None, None) => report.set(
            PACKAGE,
            true,
            "Installed",
            engine::package::describe(&pk.observed),
        ),
    }
}

/// Installs what the package stage planned and records it. When something was installed (the
/// cluster must then be read again): the installed version's own rules (see
/// [`engine::package::package_rules`]).
async fn apply_package(
    ctx: &Context,
    pk: PackageStage,
    desired: &mut engine::Desired,
    report: &mut Report,
) -> Result<Option<Vec<serde_json::Value>>, Error> {
    use engine::package::PACKAGE as NAME;
    let installed = match &pk.plan.install {
        None => None,
        Some(i) => {
            // Recorded before Kibana is asked: a package found installed without this record
            // is someone else's, so an install whose status write a crash lost would otherwise
            // be refused as a Conflict at the next pass.
            let mut record = report.status.fleet_package.clone().unwrap_or_default();
            record.installing = Some(i.version.clone());
            report.status.fleet_package = Some(record);
            report.progress(ctx, format!("applying: {i}")).await;
            let api: kube::Api<DgaModel> =
                kube::Api::namespaced(ctx.client.clone(), &desired.owner.namespace);
            report.write_status(&api).await.map_err(|e| {
                Error::Internal(format!(
                    "could not record the package install before making it: {e}"
                ))
            })?;
            let assets = engine::package::apply(&pk.client, &pk.plan)
                .await
                .inspect_err(|e| report.set(PACKAGE, false, e.reason(), e.to_string()))?;
            if let Some(m) = engine::package::model_in(assets.iter().cloned()) {
                desired.set_model_id(&m);
            }
            report.applied_something = true;
            let reason = match i.reason {
                Reason::Upgrade => "Upgraded",
                Reason::Adopt => "Adopted",
                Reason::Repair => "DriftRepaired",
                _ => "Installed",
            };
            info!(
                namespace = desired.owner.namespace,
                name = desired.owner.name,
                reason,
                action = %i,
                "applied"
            );
            report.event(false, reason, "Apply", i.to_string());
            Some(engine::package::package_rules(&pk.client, &i.version, &assets).await?)
        }
    };
    let Some((version, by_us)) = pk.plan.record.clone() else {
        return Ok(installed);
    };
    let source = if installed.is_some() {
        Some(if pk.upload { "upload" } else { "registry" }.to_string())
    } else {
        pk.observed
            .package
            .as_ref()
            .and_then(|p| p.install_source.clone())
    };
    let who = if by_us {
        "installed by this DgaModel"
    } else {
        "installed by someone else, adopted with overwrite (never uninstalled by the operator)"
    };
    report.set(
        PACKAGE,
        true,
        "Installed",
        format!(
            "Fleet package {NAME} {version} ({who}{})",
            source
                .as_deref()
                .map(|s| format!(", from {s}"))
                .unwrap_or_default()
        ),
    );
    report.status.fleet_package = Some(crate::api::FleetPackageStatus {
        version: Some(version),
        installed_by_operator: by_us,
        source,
        installing: None,
    });
    Ok(installed)
}

/// DgaModels that no longer exist (deleted with `Retain`, or their cleanup abandoned) whose
/// markers are on objects this one may take: any object with `overwrite`, else only those its
/// status records (a model taken over earlier keeps its first marker: models cannot be
/// rewritten in place). A DgaModel re-created under the same name has a new uid: still gone.
/// An owner that cannot be looked up (another namespace, no access) is never taken from.
pub(super) async fn gone_owners(
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

/// A resync of a settled object: glance at the cluster and, when nothing changed, run the
/// Kibana side without the reads a full pass makes. `false`: a full pass must follow.
#[allow(clippy::too_many_arguments)]
pub(super) async fn glance_pass(
    obj: &DgaModel,
    ctx: &Context,
    target: &Target,
    source: &Source<'_>,
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
            let (owner, marker) = (&desired.owner, &desired.marker);
            let prepared = prepare(obj, ctx, target, source, es, owner, marker, true, report);
            if let Some(p) = prepared.await? {
                finish(ctx, es, p, report).await?;
            }
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
pub(super) async fn apply_es(
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
    // The Fleet package's model and pipelines are Fleet's: there, not owned.
    let fleet_pipes = desired.fleet_pipelines();
    let model_in = match &desired.fleet {
        Some(_) => observed.models.contains_key(&desired.model_id),
        None => now_owned.models.contains(&desired.model_id),
    };
    let pipes_in = match &desired.fleet {
        Some(_) => fleet_pipes
            .iter()
            .all(|p| observed.pipelines.contains_key(p)),
        None => {
            desired
                .pipelines
                .iter()
                .all(|(id, _)| now_owned.pipelines.contains(id))
                && desired
                    .scripts
                    .iter()
                    .all(|(id, _)| now_owned.scripts.contains(id))
        }
    };
    let from = match &desired.fleet {
        Some(v) => format!(" (Fleet package {} {v})", engine::package::PACKAGE),
        None => String::new(),
    };
    let pipe_names: Vec<&str> = match &desired.fleet {
        Some(_) => fleet_pipes.iter().map(String::as_str).collect(),
        None => desired
            .pipelines
            .iter()
            .map(|(id, _)| id.as_str())
            .collect(),
    };
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
        if model_in { "Installed" } else { "Missing" },
        format!("trained model {}{from}", desired.model_id),
    );
    report.set(
        PIPELINES,
        pipes_in,
        if pipes_in { "Installed" } else { "Missing" },
        format!("pipelines {}{from}", pipe_names.join(", ")),
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
    report.status.installed_tag = desired.fleet.is_none().then(|| desired.release.clone());
    report.status.model_id = Some(desired.model_id.clone());
    report.status.bundle_sha256 = Some(desired.bundle_sha256.clone());
    Ok(())
}

/// Drops a pass's cached cluster answers unless it is disarmed by a successful end.
pub(super) struct ForgetOnError<'a> {
    pub(super) ctx: &'a Context,
    pub(super) keys: Vec<String>,
    pub(super) armed: bool,
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

/// Version and licence checks, reported as conditions.
pub(super) async fn connect(
    es: &Elasticsearch,
    key: &str,
    ctx: &Context,
    report: &mut Report,
) -> Result<(ClusterInfo, String), Error> {
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
        return Ok((info, license));
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
        CachedInfo::Elasticsearch(info.clone(), license.clone()),
    );
    Ok((info, license))
}
