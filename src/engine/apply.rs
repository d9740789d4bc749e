//! Executes a plan in order, and removes what an owner installed. Every step is idempotent, so
//! a pass interrupted anywhere (crash, fault) is finished by simply running the next pass.

use serde_json::Value;

use super::build::hook;
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
    /// The plan's notes: things left alone on purpose (see `Plan::notes`).
    pub notes: Vec<String>,
}

pub async fn apply(
    es: &Elasticsearch,
    d: &Desired,
    plan: &Plan,
) -> Result<Applied, (Applied, Error)> {
    let mut out = Applied {
        notes: plan.notes.clone(),
        ..Applied::default()
    };
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
            // release it did not like.
            Err(e @ Error::Rejected { status: 400, .. }) => {
                let model = d.model.clone();
                match tokio::task::spawn_blocking(move || crate::bundle::explain_refusal(&model))
                    .await
                {
                    Ok(Some(problem)) => Err(Error::InvalidBundle(problem)),
                    _ => Err(e),
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
        Action::HookIn { id, .. } => {
            // Read again right before the write: the hook is shared, keep what it holds now.
            let current = es.get_pipelines(std::slice::from_ref(id)).await?;
            let imp = accepts_ignore_missing_pipeline(es).await?;
            let body = hook::with_ours(d, current.get(id), imp);
            es.put_pipeline(id, &body).await
        }
        Action::HookOut { id, .. } => hook_out(es, &d.owner, id).await.map(drop),
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
    // Unwire first, so no index points at a pipeline about to disappear.
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
    // Hooks first: only our processor leaves them (the hook too, if we made it and it is empty).
    let tag = hook::tag_of(owner);
    let mut hooks = Vec::new();
    for (id, body) in &observed.pipelines {
        if hook::without_ours(&tag, owner, body).is_some() && hook_out(es, owner, id).await? {
            removed.push(format!("the router call in ingest pipeline {id}"));
            hooks.push(id.clone());
        }
    }
    let mut pipelines: Vec<&String> = ours
        .pipelines
        .iter()
        .filter(|id| !hooks.contains(id))
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

/// Removes our processor from hook `id` (read fresh); true when there was one.
async fn hook_out(es: &Elasticsearch, owner: &Owner, id: &str) -> Result<bool, Error> {
    let current = es.get_pipelines(&[id.to_string()]).await?;
    let Some(body) = current.get(id) else {
        return Ok(false);
    };
    match hook::without_ours(&hook::tag_of(owner), owner, body) {
        None => Ok(false),
        Some(None) => es.delete_pipeline(id).await.map(|_| true),
        Some(Some(rest)) => es.put_pipeline(id, &rest).await.map(|_| true),
    }
}

/// `ignore_missing_pipeline` on the `pipeline` processor: accepted from 8.3 (ES PR #87354).
async fn accepts_ignore_missing_pipeline(es: &Elasticsearch) -> Result<bool, Error> {
    let info = es.info().await?;
    let mut v = info.version.split(['.', '-']).map(|p| p.parse::<u64>().unwrap_or(0));
    Ok((v.next().unwrap_or(0), v.next().unwrap_or(0)) >= (8, 3))
}

fn calls_pipeline(body: &Value) -> bool {
    crate::bundle::processors_of(body)
        .iter()
        .any(|p| p.get("pipeline").is_some())
}
