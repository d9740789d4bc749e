//! The detection rules for `setup`, `plan` and `remove` when a Kibana URL is known
//! (`--kibana-url`, or the Kibana part of `--cloud-id`): the engine's detection part (rules,
//! Elastic's prebuilt rules, the anomaly job), as the controller runs it, owned by the CLI's
//! pseudo-owner, in the `default` space. The old tool left this as a separate manual step, and
//! duplicated the rules on every upload.

use serde_json::Value;

use super::progress::Out;
use crate::elasticsearch::Elasticsearch;
use crate::engine::detection::{self, Action, JobLook, Recorded};
use crate::engine::{self, Owner};
use crate::error::Error;
use crate::kibana::{self, KibanaClient, RulesInput};
use crate::target::Endpoint;

const SPACE: &str = "default";

/// What `setup` would do in Kibana (and for the anomaly job the ML rule needs).
pub struct RulesPlan {
    client: KibanaClient,
    desired: detection::Desired,
    pub plan: detection::Plan,
}

impl RulesPlan {
    pub fn conflicts(&self) -> Vec<String> {
        self.plan
            .conflicts
            .iter()
            .map(|c| format!("rule {} conflicts: {}", c.rule_id, c.detail))
            .collect()
    }

    pub fn is_empty(&self) -> bool {
        self.plan.steps.is_empty()
    }
}

fn client(kb: &Endpoint, timeout: std::time::Duration) -> Result<KibanaClient, Error> {
    let http = kb.http_client(timeout)?;
    Ok(KibanaClient::new(http, &kb.url, kb.auth.clone()))
}

/// Reads Kibana's status and the rules in the space; nothing is written.
#[allow(clippy::too_many_arguments)]
pub async fn plan(
    out: &Out,
    kb: &Endpoint,
    timeout: std::time::Duration,
    es: &Elasticsearch,
    source_rules: &[Value],
    module: Option<&str>,
    marker: &engine::Marker,
    overwrite: bool,
) -> Result<RulesPlan, Error> {
    let client = client(kb, timeout)?;
    let status = client.status().await?;
    out.line(format!("Kibana {} at {}", status.version, kb.url));
    let features = detection::features(&status.version)?;
    let mut desired = detection::build(
        source_rules,
        &Owner::cli(),
        marker,
        &detection::Settings::default(),
        features,
    )?;
    desired.module = module.map(str::to_string);
    let recorded = Recorded::default();
    let plan = detection::plan(
        &client,
        es,
        &desired,
        None,
        JobLook::Read,
        &recorded,
        overwrite,
    )
    .await?;
    out.line(format!("Kibana rules: {}", plan.route_line()));
    if let Some(c) = &plan.job_conflict {
        return Err(Error::Conflict(c.clone()));
    }
    Ok(RulesPlan {
        client,
        desired,
        plan,
    })
}

/// Carries out a plan without conflicts, one progress line a step; counts the changes in
/// `made`.
pub async fn apply(
    out: &Out,
    rp: &RulesPlan,
    es: &Elasticsearch,
    made: &mut usize,
) -> Result<(), Error> {
    let plan = &rp.plan;
    for s in &plan.steps {
        if let Action::Rule(a) = &s.action {
            out.step(&s.to_string(), kibana::rules::apply(&rp.client, SPACE, a))
                .await?;
            *made += 1;
        }
    }
    let mut applied = detection::Applied::default();
    let prebuilt: Vec<String> = plan
        .steps
        .iter()
        .filter(|s| {
            matches!(
                s.action,
                Action::InstallPrebuilt { .. }
                    | Action::RemovePrebuilt { .. }
                    | Action::EnablePrebuilt { .. }
            )
        })
        .map(ToString::to_string)
        .collect();
    if !prebuilt.is_empty() {
        for d in &prebuilt {
            out.line(format!("  {d}"));
        }
        out.step(
            "installing Elastic's prebuilt rules",
            detection::apply_prebuilt(&rp.client, plan, true, &mut applied),
        )
        .await
        .map_err(|f| f.error)?;
        *made += applied.done.len();
    }
    let job_steps = plan.steps.iter().any(|s| {
        s.action.service() == crate::error::Service::Elasticsearch
            || matches!(s.action, Action::SetupModule { .. })
    });
    if job_steps {
        let mut job = detection::Applied::default();
        out.step(
            "installing the anomaly detection job of the machine_learning rule",
            detection::apply_job(Some(&rp.client), es, &rp.desired, plan, &mut job),
        )
        .await?;
        *made += job.done.len();
        for d in &job.done {
            out.line(format!("  {d}"));
        }
        if let (Some(why), Some(j)) = (job.waiting, &plan.job) {
            out.line(format!(
                "  datafeed {} not started yet: no data to read ({why}); start it once DNS data arrives, or let the operator do it",
                engine::mljob::datafeed_id(&j.id)
            ));
        }
    }
    Ok(())
}

/// Deletes the rules (and the job) the CLI installed; returns what went, and the package's
/// rules that stay because someone else installed them.
pub async fn remove(
    kb: &Endpoint,
    timeout: std::time::Duration,
    es: &Elasticsearch,
    owner: &Owner,
) -> Result<(Vec<String>, Vec<String>), Error> {
    let client = client(kb, timeout)?;
    // The package's rule ids too, to say which of them stay.
    let package = kibana::desired_rules(&RulesInput {
        owner: owner.key(),
        ..RulesInput::default()
    });
    // The CLI's rules, then those of each deleted DgaModel named with --leftovers-of (in the
    // space the CLI uses; a DgaModel's rules may sit in another one).
    let keys: Vec<String> = std::iter::once(owner.key())
        .chain(owner.adopted.iter().cloned())
        .collect();
    let tags: Vec<String> = keys.iter().map(|k| kibana::owner_tag(k)).collect();
    // What of the package's rules no owner named here holds: read before, reported after.
    let left: Vec<Value> = kibana::rules::observe(&client, SPACE, &package, &tags[0]).await?;
    // The same removal plan as the controller's delete (engine::detection), once per owner;
    // the job (either id) with the CLI's own, its marker naming the adopted owners too.
    let mut removed = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        let o = if i == 0 {
            owner.clone()
        } else {
            let (namespace, name) = key.split_once('/').unwrap_or(("", key.as_str()));
            Owner {
                namespace: namespace.to_string(),
                name: name.to_string(),
                uid: String::new(),
                adopted: Vec::new(),
            }
        };
        removed.extend(detection::remove(Some((&client, SPACE)), es, &o, &[], i == 0).await?);
    }
    let is_any_ours = |r: &Value| {
        r.get("tags").and_then(Value::as_array).is_some_and(|t| {
            t.iter()
                .any(|t| tags.iter().any(|tag| t.as_str() == Some(tag.as_str())))
        })
    };
    let left = left
        .iter()
        .filter(|r| !is_any_ours(r))
        .filter_map(|r| {
            let id = r.get("rule_id").and_then(Value::as_str)?;
            Some(if kibana::rules::is_prebuilt(r) {
                // The CLI keeps no record of what it installed: a prebuilt rule may be a
                // person's, so it is never removed here.
                format!("Elastic's prebuilt detection rule {id} (never removed by the CLI)")
            } else {
                format!("detection rule {id}")
            })
        })
        .collect();
    Ok((removed, left))
}
