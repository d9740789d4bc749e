//! Executes a plan in order, and removes what an owner installed. Every step is idempotent, so
//! a pass interrupted anywhere (crash, fault) is finished by simply running the next pass.

use serde_json::Value;

use super::diff::{Action, Plan, owned_ids};
use super::observe::{Ids, observe};
use super::{Desired, Holder, Marker, Owner, holder};
use crate::elasticsearch::Elasticsearch;
use crate::error::Error;

/// What a pass did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Applied {
    pub done: Vec<Action>,
    /// Things left alone, for the status message (e.g. a stale model still in use elsewhere).
    pub warnings: Vec<String>,
}

pub async fn apply(
    es: &Elasticsearch,
    d: &Desired,
    plan: &Plan,
) -> Result<Applied, (Applied, Error)> {
    let mut out = Applied::default();
    if !plan.conflicts.is_empty() {
        return Err((out, Error::Conflict(plan.conflicts.join("; "))));
    }
    for action in &plan.actions {
        if let Err(e) = step(es, d, action, &mut out.warnings).await {
            return Err((out, e));
        }
        out.done.push(action.clone());
    }
    Ok(out)
}

async fn step(
    es: &Elasticsearch,
    d: &Desired,
    action: &Action,
    warnings: &mut Vec<String>,
) -> Result<(), Error> {
    match action {
        Action::PutModel { id, .. } => match es.put_model(id, &d.model_head, &d.model).await {
            Err(Error::Conflict(msg)) => {
                // Already there: ours if an earlier, interrupted pass uploaded it.
                let seen = es.get_models(std::slice::from_ref(id)).await?;
                let marker = seen
                    .get(id)
                    .and_then(|m| Marker::from_meta(m.get("metadata")));
                if holder(marker.as_ref(), &d.owner) == Holder::Us {
                    Ok(())
                } else {
                    Err(Error::Conflict(msg))
                }
            }
            // Elasticsearch parses the definition; ours is read only to say which part of the
            // release it did not like (and the finding is kept, so it is not uploaded again).
            // Otherwise a field of the model's config the cluster's PUT refuses (unknown to its
            // parser, or "illegal to set at inference model creation"): Elasticsearch names it.
            Err(e @ Error::Rejected { status: 400, .. }) => {
                let model = d.model.clone();
                match tokio::task::spawn_blocking(move || crate::bundle::explain_refusal(&model))
                    .await
                {
                    Ok(Some(problem)) => Err(Error::InvalidBundle(problem)),
                    _ => match e {
                        Error::Rejected { ref detail, .. } if refuses_a_field(detail) => {
                            Err(Error::InvalidBundle(crate::bundle::BundleError {
                                file: d.model.file.clone(),
                                problem: format!(
                                    "Elasticsearch refuses the model's configuration: {detail}"
                                ),
                            }))
                        }
                        e => Err(e),
                    },
                }
            }
            other => other,
        },
        Action::PutScript { id, .. } => {
            let body = d
                .scripts
                .iter()
                .find(|(s, _)| s == id)
                .map(|(_, b)| b)
                .expect("planned from desired");
            es.put_script(id, body).await
        }
        Action::PutPipeline { id, .. } => {
            let body = d
                .pipelines
                .iter()
                .find(|(p, _)| p == id)
                .map(|(_, b)| b)
                .expect("planned from desired");
            es.put_pipeline(id, body).await
        }
        Action::DeletePipeline { id, .. } => es.delete_pipeline(id).await,
        Action::PutHook { id, .. } => {
            // Read-modify-write at the moment of writing: whatever the hook holds now is kept.
            let seen = es.get_pipelines(std::slice::from_ref(id)).await?;
            let mut ours_ids: Vec<String> = std::iter::once(d.router.clone())
                .chain(d.pipelines.iter().map(|(p, _)| p.clone()))
                .collect();
            // An earlier operator's whole hook calls the router of the release it installed
            // (another layout's id after an upgrade): ours if that pipeline carries our marker.
            let others: Vec<String> = seen
                .get(id)
                .map(crate::bundle::processors_of)
                .unwrap_or_default()
                .iter()
                .filter_map(|p| p.pointer("/pipeline/name").and_then(Value::as_str))
                .filter(|n| !ours_ids.iter().any(|o| o == n))
                .map(str::to_string)
                .collect();
            if !others.is_empty() {
                for (pid, body) in es.get_pipelines(&others).await? {
                    if holder(Marker::from_meta(body.get("_meta")).as_ref(), &d.owner) == Holder::Us
                    {
                        ours_ids.push(pid);
                    }
                }
            }
            let ours = |name: &str| ours_ids.iter().any(|o| o == name);
            match d.hook_want(seen.get(id), &ours) {
                super::hooks::HookWant::Put { body, .. } => es.put_pipeline(id, &body).await,
                super::hooks::HookWant::OtherOwner(o) => Err(Error::Conflict(format!(
                    "pipeline hook {id} already calls the enrichment for DgaModel {o}"
                ))),
                _ => Ok(()),
            }
        }
        Action::Unhook { id, .. } => {
            let seen = es.get_pipelines(std::slice::from_ref(id)).await?;
            let ours = |name: &str| name == d.router || d.pipelines.iter().any(|(p, _)| p == name);
            match seen.get(id) {
                Some(body) => unhook(es, id, body, &d.owner, &ours).await.map(drop),
                None => Ok(()),
            }
        }
        Action::WireTemplate { name, .. } => {
            es.set_template_final_pipeline(name, Some(&d.router)).await
        }
        Action::UnwireTemplate { name, .. } => es.set_template_final_pipeline(name, None).await,
        Action::WireIndex { index, .. } => es.set_final_pipeline(index, Some(&d.router)).await,
        Action::UnwireIndex { index, .. } => es.set_final_pipeline(index, None).await,
        Action::DeleteScript { id, .. } => es.delete_script(id).await,
        Action::DeleteModel { id, .. } => match es.delete_model(id).await {
            // Still referenced by a pipeline that is not ours: leave it, say so.
            Err(Error::Rejected { status: 409, .. }) => {
                warnings.push(format!("trained model {id} is still used by another ingest pipeline and was left in place"));
                Ok(())
            }
            other => other,
        },
    }
}

/// Removes every object the owner installed: pipelines (routers first), scripts, then models.
/// Objects whose marker names someone else are never touched. Returns what was removed.
pub async fn cleanup(
    es: &Elasticsearch,
    owner: &Owner,
    recorded: &Ids,
    to_observe: &Ids,
) -> Result<Vec<String>, Error> {
    let observed = observe(es, to_observe).await?;
    let ours = owned_ids(&observed, owner, recorded);
    let mut removed = Vec::new();
    // Unwire first, so no index, template or hook points at a pipeline about to disappear.
    for (name, t) in &observed.templates {
        if super::templates::final_pipeline(t).is_some_and(|f| ours.pipelines.contains(&f))
            && (recorded.templates.contains(name) || ours.templates.contains(name))
        {
            es.set_template_final_pipeline(name, None).await?;
            removed.push(format!("index.final_pipeline of index template {name}"));
        }
    }
    for (index, settings) in &observed.indices {
        if settings
            .final_pipeline
            .as_ref()
            .is_some_and(|f| ours.pipelines.contains(f))
        {
            es.set_final_pipeline(index, None).await?;
            removed.push(format!("index.final_pipeline of {index}"));
        }
    }
    let ours_pipeline = |name: &str| ours.pipelines.contains(name);
    let mut gone: Vec<&String> = Vec::new();
    for (id, body) in &observed.pipelines {
        // Hooks: those holding our tagged processor, and `@custom` hooks an earlier operator
        // wrote whole (a router of ours also calls a pipeline of ours: it is not a hook).
        if !super::hooks::holds_ours(body, owner) && !id.ends_with("@custom") {
            continue;
        }
        match unhook(es, id, body, owner, &ours_pipeline).await? {
            super::hooks::Unhook::Nothing => {}
            super::hooks::Unhook::Delete => {
                gone.push(id);
                removed.push(format!("ingest pipeline hook {id}"));
            }
            super::hooks::Unhook::Put(_) => {
                gone.push(id);
                removed.push(format!("the enrichment's processor in pipeline hook {id}"));
            }
        }
    }
    let mut pipelines: Vec<&String> = ours
        .pipelines
        .iter()
        .filter(|id| !gone.contains(id))
        .collect();
    // Routers (pipelines that call another pipeline) go first, so nothing calls a missing one.
    pipelines.sort_by_key(|id| !calls_pipeline(&observed.pipelines[*id]));
    for id in pipelines {
        es.delete_pipeline(id).await?;
        removed.push(format!("ingest pipeline {id}"));
    }
    for id in &ours.scripts {
        es.delete_script(id).await?;
        removed.push(format!("stored script {id}"));
    }
    for id in &ours.models {
        es.delete_model(id).await?;
        removed.push(format!("trained model {id}"));
    }
    Ok(removed)
}

/// Removes our processor from hook `id` (whose body is `body`): the hook is written back
/// without it, or deleted when we created it and it held only ours.
async fn unhook(
    es: &Elasticsearch,
    id: &str,
    body: &Value,
    owner: &Owner,
    ours: &(dyn Fn(&str) -> bool + Sync),
) -> Result<super::hooks::Unhook, Error> {
    let u = super::hooks::unhook(body, owner, ours);
    match &u {
        super::hooks::Unhook::Nothing => {}
        super::hooks::Unhook::Delete => es.delete_pipeline(id).await?,
        super::hooks::Unhook::Put(rest) => es.put_pipeline(id, rest).await?,
    }
    Ok(u)
}

/// A PUT model refusal that names a field of the config: the strict parser's "unknown field
/// [x]" (`x_content_parse_exception`) or a creation check's "illegal to set [x]"
/// (`action_request_validation_exception`).
fn refuses_a_field(detail: &str) -> bool {
    (detail.starts_with("x_content_parse_exception") && detail.contains("unknown field ["))
        || (detail.starts_with("action_request_validation_exception")
            && detail.contains("illegal to set ["))
}

fn calls_pipeline(body: &Value) -> bool {
    crate::bundle::processors_of(body)
        .iter()
        .any(|p| p.get("pipeline").is_some())
}
