//! The detection rules for `setup`, `plan` and `remove` when a Kibana URL is known
//! (`--kibana-url`, or the Kibana part of `--cloud-id`): the same rules, diff and anomaly job as
//! the controller's rules pass, owned by the CLI's pseudo-owner, in the `default` space. The old
//! tool left this as a separate manual step, and duplicated the rules on every upload.

use serde_json::Value;

use super::progress::Out;
use crate::bundle::Bundle;
use crate::elasticsearch::Elasticsearch;
use crate::engine::{self, Owner};
use crate::error::Error;
use crate::kibana::{self, KibanaClient, RuleAction, RulesInput};
use crate::target::Endpoint;

const SPACE: &str = "default";

/// What `setup` would do in Kibana (and for the anomaly job the ML rule needs).
pub struct RulesPlan {
    client: KibanaClient,
    pub actions: Vec<RuleAction>,
    /// Elastic's prebuilt rules to install where Kibana offers them (the CLI keeps no record,
    /// so it never removes a prebuilt rule: `remove` lists them as staying).
    pub prebuilt: kibana::prebuilt::Decision,
    /// Job and datafeed steps still to take (empty when they are in place or not needed).
    pub job_steps: Vec<String>,
    index: Vec<String>,
    needs_job: bool,
    job: engine::mljob::JobChoice,
}

impl RulesPlan {
    pub fn conflicts(&self) -> Vec<String> {
        self.actions
            .iter()
            .filter(|a| matches!(a, RuleAction::Conflict { .. }))
            .map(RuleAction::describe)
            .collect()
    }

    pub fn is_empty(&self) -> bool {
        self.actions.is_empty() && self.job_steps.is_empty() && self.prebuilt.install.is_empty()
    }

    /// Every step, for `plan`.
    pub fn describe(&self) -> Vec<String> {
        self.actions
            .iter()
            .filter(|a| !matches!(a, RuleAction::Conflict { .. }))
            .map(RuleAction::describe)
            .chain(kibana::prebuilt::describe(&self.prebuilt))
            .chain(self.job_steps.iter().cloned())
            .collect()
    }
}

fn client(kb: &Endpoint, timeout: std::time::Duration) -> Result<KibanaClient, Error> {
    let http = kb.http_client(timeout)?;
    Ok(KibanaClient::new(http, &kb.url, kb.auth.clone()))
}

/// Reads Kibana's status and the rules in the space; nothing is written.
pub async fn plan(
    out: &Out,
    kb: &Endpoint,
    timeout: std::time::Duration,
    es: &Elasticsearch,
    bundle: &Bundle,
    marker: &engine::Marker,
    overwrite: bool,
) -> Result<RulesPlan, Error> {
    let client = client(kb, timeout)?;
    let status = client.status().await?;
    out.line(format!("Kibana {} at {}", status.version, kb.url));
    let owner = Owner::cli();
    let version = kibana::StackVersion::parse(&status.version).ok_or_else(|| Error::Rejected {
        service: crate::error::Service::Kibana,
        what: "GET /api/status".into(),
        status: 200,
        detail: format!("version `{}` is not a stack version", status.version),
    })?;
    let features = kibana::KibanaFeatures::new(version);
    let mut input = RulesInput {
        source_rules: bundle.rules.clone(),
        owner: owner.key(),
        kibana: features,
        job_id: engine::mljob::job_id_for(&features).to_string(),
        ..RulesInput::default()
    };
    let mut desired = kibana::desired_rules(&input);
    let needs_job = desired
        .iter()
        .any(|r| r.get("type").and_then(Value::as_str) == Some("machine_learning"));
    // The ML rule watches the job that exists: Fleet's module job if there is one.
    let job = engine::mljob::choose(es, &features).await?;
    if job.id != input.job_id {
        input.job_id = job.id.clone();
        desired = kibana::desired_rules(&input);
    }
    let tag = kibana::owner_tag(&owner.key());
    let observed = kibana::rules::observe(&client, SPACE, &desired, &tag).await?;
    let route =
        kibana::prebuilt::route(&client, SPACE, &features, &desired, &observed, &[], None).await?;
    let prebuilt = route.decision.prebuilt().len();
    let why = if route.offer.api {
        "not offered by Kibana's prebuilt-rules API".to_string()
    } else {
        route.offer.why_not.clone()
    };
    let route_line = match (prebuilt, route.custom.len()) {
        (0, n) => format!("{n} custom rules under the operator's rule_ids ({why})"),
        (p, 0) => format!("{p} of Elastic's prebuilt rules through Kibana's prebuilt-rules API"),
        (p, n) => format!(
            "{p} of Elastic's prebuilt rules through Kibana's prebuilt-rules API, {n} custom rules ({why})"
        ),
    };
    out.line(format!("Kibana rules: {route_line}"));
    let actions = kibana::rules::plan(&route.custom, &observed, &tag, overwrite);
    let job_steps = if needs_job {
        engine::mljob::ensure(es, &owner, marker, &job, &input.index, overwrite, true)
            .await?
            .done
    } else {
        Vec::new()
    };
    Ok(RulesPlan {
        client,
        actions,
        prebuilt: route.decision,
        job_steps,
        index: input.index,
        needs_job,
        job,
    })
}

/// Carries out a plan without conflicts, one progress line a step; counts the changes in
/// `made`.
pub async fn apply(
    out: &Out,
    plan: &RulesPlan,
    es: &Elasticsearch,
    marker: &engine::Marker,
    overwrite: bool,
    made: &mut usize,
) -> Result<(), Error> {
    for a in &plan.actions {
        out.step(&a.describe(), kibana::rules::apply(&plan.client, SPACE, a))
            .await?;
        *made += 1;
    }
    if plan.prebuilt.install.is_empty() {
        return apply_job(out, plan, es, marker, overwrite, made).await;
    }
    for d in kibana::prebuilt::describe(&plan.prebuilt) {
        out.line(format!("  {d}"));
    }
    let installed = out
        .step(
            "installing Elastic's prebuilt rules",
            kibana::prebuilt::apply(&plan.client, SPACE, &plan.prebuilt, true),
        )
        .await?;
    *made += installed.ids.len();
    if !installed.errors.is_empty() {
        return Err(Error::Rejected {
            service: crate::error::Service::Kibana,
            what: "install Elastic's prebuilt rules".into(),
            status: 200,
            detail: installed.errors.join("; "),
        });
    }
    apply_job(out, plan, es, marker, overwrite, made).await
}

async fn apply_job(
    out: &Out,
    plan: &RulesPlan,
    es: &Elasticsearch,
    marker: &engine::Marker,
    overwrite: bool,
    made: &mut usize,
) -> Result<(), Error> {
    if plan.needs_job && !plan.job_steps.is_empty() {
        let done = out
            .step(
                "installing the anomaly detection job of the machine_learning rule",
                engine::mljob::ensure(
                    es,
                    &Owner::cli(),
                    marker,
                    &plan.job,
                    &plan.index,
                    overwrite,
                    false,
                ),
            )
            .await?;
        *made += done.done.len();
        for d in done.done {
            out.line(format!("  {d}"));
        }
        if let Some(why) = done.waiting {
            out.line(format!(
                "  datafeed {} not started yet: no data to read ({why}); start it once DNS data arrives, or let the operator do it",
                engine::mljob::datafeed_id(&plan.job.id)
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
    let mut removed = Vec::new();
    let mut left = Vec::new();
    // The CLI's rules, then those of each deleted DgaModel named with --leftovers-of (in the
    // space the CLI uses; a DgaModel's rules may sit in another one).
    let keys: Vec<String> = std::iter::once(owner.key())
        .chain(owner.adopted.iter().cloned())
        .collect();
    let tags: Vec<String> = keys.iter().map(|k| kibana::owner_tag(k)).collect();
    for tag in &tags {
        let observed = kibana::rules::observe(&client, SPACE, &package, tag).await?;
        let is_ours = |r: &Value| {
            r.get("tags")
                .and_then(Value::as_array)
                .is_some_and(|t| t.iter().any(|t| t.as_str() == Some(tag.as_str())))
        };
        let (ours, theirs): (Vec<Value>, Vec<Value>) = observed.into_iter().partition(is_ours);
        for a in kibana::diff(&[], &ours, tag) {
            kibana::rules::apply(&client, SPACE, &a).await?;
            removed.push(format!("detection rule {}", a.rule_id()));
        }
        // A package rule left in place is one no owner named here holds.
        if tag == &tags[0] {
            left = theirs;
        }
    }
    removed.extend(engine::mljob::remove(es, owner).await?);
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
