//! Executes a detection plan in order; every step is idempotent, so a pass interrupted anywhere
//! is finished by the next.

use serde_json::{Value, json};

use super::{Action, Desired, JobLook, Plan, Recorded, Step, diff, observe};
use crate::elasticsearch::Elasticsearch;
use crate::engine::mljob;
use crate::engine::{MARKER_KEY, Owner};
use crate::error::{Error, Service};
use crate::kibana::KibanaClient;
use crate::kibana::{prebuilt, rules};

/// What applying did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Applied {
    pub done: Vec<Step>,
    /// Elastic rule_ids this owner holds as prebuilt rules after the prebuilt steps (set once
    /// they ran): what it held and still does, plus what Kibana created now; a rule a person
    /// customised since is theirs.
    pub prebuilt_record: Option<Vec<String>>,
    /// The datafeed could not start for want of data (Elasticsearch's reason): the job is open
    /// and waits; the next pass tries again.
    pub waiting: Option<String>,
}

/// Where an apply failed: the rules (the `RulesInstalled` condition says so) or the job.
#[derive(Debug)]
pub struct Failed {
    pub error: Error,
    pub in_rules: bool,
}

/// Carries out a plan in order: custom rules, Elastic's prebuilt rules (one install request),
/// then the job. `enable` enables the prebuilt rules installed. Every step is idempotent.
pub async fn apply(
    client: Option<&KibanaClient>,
    es: &Elasticsearch,
    d: &Desired,
    plan: &Plan,
    enable: bool,
) -> Result<Applied, (Applied, Failed)> {
    let mut out = Applied::default();
    let rules_failed = |error| Failed {
        error,
        in_rules: true,
    };
    if !plan.conflicts.is_empty() {
        let e = Error::Conflict(plan.conflict_details().join("; "));
        return Err((out, rules_failed(e)));
    }
    let kibana_steps = plan.steps.iter().any(|s| {
        matches!(
            s.action,
            Action::Rule(_)
                | Action::InstallPrebuilt { .. }
                | Action::RemovePrebuilt { .. }
                | Action::EnablePrebuilt { .. }
        )
    });
    if kibana_steps {
        let Some(client) = client else {
            let e = Error::Internal("a Kibana step was planned without a Kibana client".into());
            return Err((out, rules_failed(e)));
        };
        for s in &plan.steps {
            if let Action::Rule(a) = &s.action {
                if let Err(e) = rules::apply(client, &plan.space, a).await {
                    return Err((out, rules_failed(e)));
                }
                out.done.push(s.clone());
            }
        }
        if let Err(e) = apply_prebuilt(client, plan, enable, &mut out).await {
            return Err((out, e));
        }
    }
    if let Err(e) = apply_job(client, es, d, plan, &mut out).await {
        return Err((
            out,
            Failed {
                error: e,
                in_rules: false,
            },
        ));
    }
    Ok(out)
}

/// The prebuilt steps: one install request for all of them (enabled after when `enable`), then
/// the removals. Sets `out.prebuilt_record`.
pub async fn apply_prebuilt(
    client: &KibanaClient,
    plan: &Plan,
    enable: bool,
    out: &mut Applied,
) -> Result<(), Failed> {
    let decision = &plan.route.decision;
    let installed = prebuilt::apply(client, &plan.space, decision, enable)
        .await
        .map_err(|error| Failed {
            error,
            in_rules: true,
        })?;
    let (removed, customised) = prebuilt::remove(client, &plan.space, &decision.remove)
        .await
        .map_err(|error| Failed {
            error,
            in_rules: false,
        })?;
    out.done.extend(
        plan.steps
            .iter()
            .filter(|s| match &s.action {
                Action::InstallPrebuilt { rule_id, .. } => installed.ids.contains(rule_id),
                Action::RemovePrebuilt { rule_id } => removed.contains(rule_id),
                Action::EnablePrebuilt { rule_id } => installed.enabled.contains(rule_id),
                _ => false,
            })
            .cloned(),
    );
    let mut record: Vec<String> = decision
        .ours
        .iter()
        .chain(installed.ids.iter())
        .filter(|id| !removed.contains(id) && !customised.contains(id))
        .cloned()
        .collect();
    record.sort();
    record.dedup();
    out.prebuilt_record = Some(record);
    if !installed.errors.is_empty() {
        return Err(Failed {
            error: Error::Rejected {
                service: Service::Kibana,
                what: "install Elastic's prebuilt rules".into(),
                status: 200,
                detail: installed.errors.join("; "),
            },
            in_rules: true,
        });
    }
    Ok(())
}

/// The job's steps, in plan order. A job in the way is a conflict here, after the rules.
pub async fn apply_job(
    kb: Option<&KibanaClient>,
    es: &Elasticsearch,
    d: &Desired,
    plan: &Plan,
    out: &mut Applied,
) -> Result<(), Error> {
    if let Some(c) = &plan.job_conflict {
        return Err(Error::Conflict(c.clone()));
    }
    for s in &plan.steps {
        match &s.action {
            Action::CreateJob { id } => {
                es.put_job(id, &mljob::job_body(id, &d.marker)).await?;
            }
            Action::SetupModule { module, job } => {
                let kb = kb.ok_or_else(|| {
                    Error::Internal("a module setup was planned without a Kibana client".into())
                })?;
                if let Some(reason) = setup_module(kb, d, module, job).await? {
                    out.waiting = Some(reason);
                }
            }
            Action::MarkJob { id, .. } => {
                // `_update` replaces the whole map: keep what else it holds (custom_urls).
                let job = es.get_job(id).await?;
                let mut settings = job
                    .as_ref()
                    .and_then(|j| j.get("custom_settings"))
                    .and_then(Value::as_object)
                    .cloned()
                    .unwrap_or_default();
                settings.insert(MARKER_KEY.into(), json!(d.marker));
                es.update_job(id, &json!({"custom_settings": settings}))
                    .await?;
            }
            Action::CreateDatafeed { id } => {
                let job = plan.job.as_ref().map(|j| j.id.as_str()).unwrap_or_default();
                es.put_datafeed(id, &mljob::datafeed_body(job, &d.input.index))
                    .await?;
            }
            Action::RecreateDatafeed { id } => {
                let job = plan.job.as_ref().map(|j| j.id.as_str()).unwrap_or_default();
                es.stop_datafeed(id).await?;
                es.delete_datafeed(id).await?;
                es.put_datafeed(id, &mljob::datafeed_body(job, &d.input.index))
                    .await?;
            }
            Action::OpenJob { id } => es.open_job(id).await?,
            Action::StartDatafeed { id } => match es.start_datafeed(id).await? {
                None => {}
                // Not done, and not an error: a fresh stack has no DNS data yet.
                Some(reason) => {
                    out.waiting = Some(reason);
                    continue;
                }
            },
            Action::RemoveJob { id } => remove_job(es, id).await?,
            _ => continue,
        }
        out.done.push(s.clone());
    }
    Ok(())
}

/// Kibana's setup of the module: the job must be created (or already be there: a pass cut
/// short after the setup); its datafeed started, or not for want of data (the reason is
/// returned, as for a datafeed the operator starts itself).
async fn setup_module(
    kb: &KibanaClient,
    d: &Desired,
    module: &str,
    job: &str,
) -> Result<Option<String>, Error> {
    use crate::kibana::fleet::ModuleSetup;
    let setup = ModuleSetup {
        index_pattern_name: Some(d.input.index.join(",")),
        start_datafeed: true,
        ..Default::default()
    };
    let answer = kb.ml_module_setup(&d.space, module, &setup).await?;
    let refused = |what: &str, detail: String| Error::Rejected {
        service: Service::Kibana,
        what: format!("set up ML module {module}: {what}"),
        status: 200,
        detail,
    };
    match answer.jobs.iter().find(|j| j.id == job) {
        Some(j) if j.success => {}
        Some(j) => {
            let e = j.error.clone().unwrap_or_default();
            if !e.contains("already exists") {
                return Err(refused(&format!("job {job}"), e));
            }
        }
        None => {
            return Err(refused(
                "the answer",
                format!(
                    "the module created no job {job}: it is not the module of this stack's job"
                ),
            ));
        }
    }
    let feed = mljob::datafeed_id(job);
    Ok(match answer.datafeeds.iter().find(|f| f.id == feed) {
        Some(f) if f.success && f.started => None,
        Some(f)
            if !f.success
                && !f
                    .error
                    .as_deref()
                    .unwrap_or_default()
                    .contains("already exists") =>
        {
            return Err(refused(
                &format!("datafeed {feed}"),
                f.error.clone().unwrap_or_default(),
            ));
        }
        Some(f) => Some(
            f.error
                .clone()
                .unwrap_or_else(|| "Kibana did not start it".into()),
        ),
        None => Some(format!("the module set up no datafeed {feed}")),
    })
}

async fn remove_job(es: &Elasticsearch, id: &str) -> Result<(), Error> {
    let feed = mljob::datafeed_id(id);
    es.stop_datafeed(&feed).await?;
    es.delete_datafeed(&feed).await?;
    es.close_job(id).await?;
    es.delete_job(id).await
}

/// Removal is a plan against nothing: the prebuilt rules `recorded_prebuilt` says the owner
/// installed in the space (never one a person installed or has customised since), every rule
/// carrying the owner's tag, and, when `jobs_recorded`, the owner's jobs. What is in the way of
/// a desired object does not matter when nothing is desired: conflicts are dropped. Returns
/// what went.
pub async fn remove(
    client: Option<(&KibanaClient, &str)>,
    es: &Elasticsearch,
    owner: &Owner,
    recorded_prebuilt: &[String],
    jobs_recorded: bool,
) -> Result<Vec<String>, Error> {
    let d = Desired::nothing(owner, client.map_or("default", |(_, space)| space));
    let kb = client.map(|(c, _)| c);
    let observed = observe(kb, es, &d, None, JobLook::Read, jobs_recorded).await?;
    let recorded = Recorded {
        rules: true,
        prebuilt: recorded_prebuilt.to_vec(),
        jobs: Vec::new(),
    };
    let mut plan = diff(&d, &observed, &recorded, false);
    plan.conflicts.clear();
    plan.job_conflict = None;
    let applied = apply(kb, es, &d, &plan, false)
        .await
        .map_err(|(_, f)| f.error)?;
    Ok(applied
        .done
        .iter()
        .filter_map(|s| s.action.gone())
        .collect())
}
