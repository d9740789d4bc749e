//! One read of what the cluster holds for the ids a pass cares about.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::{Desired, MARKER_KEY, MODEL_TAG};
use crate::elasticsearch::Elasticsearch;
use crate::error::Error;

/// The ids to look at: what the release wants plus what the owner is known to have installed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Ids {
    pub models: BTreeSet<String>,
    pub scripts: BTreeSet<String>,
    pub pipelines: BTreeSet<String>,
    /// Index names or patterns whose pipeline settings matter (wiring).
    pub indices: BTreeSet<String>,
}

impl Ids {
    /// What a pass looks at: the release's objects plus what the owner is known to hold.
    pub fn wanted(desired: &Desired, known: &Ids) -> Ids {
        let mut ids = known.clone();
        ids.models.insert(desired.model_id.clone());
        ids.scripts
            .extend(desired.scripts.iter().map(|(id, _)| id.clone()));
        ids.pipelines
            .extend(desired.pipelines.iter().map(|(id, _)| id.clone()));
        ids.indices.extend(desired.wire_indices.iter().cloned());
        ids
    }

    /// Updates what an owner holds after one applied action.
    pub fn record(&mut self, a: &super::Action) {
        use super::Action::*;
        match a {
            PutModel { id, .. } => drop(self.models.insert(id.clone())),
            PutScript { id, .. } => drop(self.scripts.insert(id.clone())),
            PutPipeline { id, .. } => drop(self.pipelines.insert(id.clone())),
            DeleteModel { id, .. } => drop(self.models.remove(id)),
            DeleteScript { id, .. } => drop(self.scripts.remove(id)),
            DeletePipeline { id, .. } => drop(self.pipelines.remove(id)),
            WireIndex { index, .. } => drop(self.indices.insert(index.clone())),
            UnwireIndex { index, .. } => drop(self.indices.remove(index)),
        }
    }
}

/// An index's pipeline settings.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct IndexPipelines {
    pub default_pipeline: Option<String>,
    pub final_pipeline: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Observed {
    /// Models by id: every model tagged by the operator, plus the ids asked for.
    pub models: BTreeMap<String, Value>,
    /// Stored scripts (`{"lang","source"}`) by id; absent ids are not in the map.
    pub scripts: BTreeMap<String, Value>,
    /// Pipelines by id; absent ids are not in the map.
    pub pipelines: BTreeMap<String, Value>,
    /// Existing indices matching `Ids::indices`.
    pub indices: BTreeMap<String, IndexPipelines>,
}

pub async fn observe(es: &Elasticsearch, ids: &Ids) -> Result<Observed, Error> {
    let mut models = es.get_models_tagged(MODEL_TAG).await?;
    let untagged: Vec<String> = ids
        .models
        .iter()
        .filter(|id| !models.contains_key(*id))
        .cloned()
        .collect();
    if !untagged.is_empty() {
        models.extend(es.get_models(&untagged).await?);
    }
    let mut scripts = BTreeMap::new();
    for id in &ids.scripts {
        if let Some(s) = es.get_script(id).await? {
            scripts.insert(id.clone(), s);
        }
    }
    let pipelines = es
        .get_pipelines(&ids.pipelines.iter().cloned().collect::<Vec<_>>())
        .await?;
    let indices = if ids.indices.is_empty() {
        BTreeMap::new()
    } else {
        es.index_pipelines(&ids.indices.iter().cloned().collect::<Vec<_>>())
            .await?
    };
    Ok(Observed {
        models,
        scripts,
        pipelines,
        indices,
    })
}

/// What a glance at a settled install found.
#[derive(Clone, Debug, PartialEq)]
pub enum Glance {
    /// Every object as the last full pass left it, and the canary run passed or could not
    /// prove anything; the caller compares it with the last run's message.
    Unchanged(super::verify::Verdict),
    /// Something differs (said how): a full pass must look and repair.
    Changed(String),
    /// The cluster does not answer the cluster state read: always use full passes.
    Unavailable,
}

/// The anomaly job and datafeed a glance expects to be running.
#[derive(Clone, Copy, Debug)]
pub struct JobTasks<'a> {
    pub job: &'a str,
    pub datafeed: &'a str,
}

/// A resync's look at an install whose last full pass succeeded, in at most four reads
/// instead of one per object: the pipelines, the wired indices' settings, one filtered cluster
/// state read (scripts, ML tasks), and the canary `_simulate`. The model is not read: trained models
/// cannot be changed in place, and the canary run fails if ours is gone. Anything unexpected
/// is `Changed`, so a full pass decides; a glance never repairs anything itself.
pub async fn glance(
    es: &Elasticsearch,
    desired: &Desired,
    known: &Ids,
    overwrite: bool,
    job: Option<JobTasks<'_>>,
) -> Result<Glance, Error> {
    let ids = Ids::wanted(desired, known);
    let list = |s: &BTreeSet<String>| s.iter().cloned().collect::<Vec<_>>();

    let pipelines = es.get_pipelines(&list(&ids.pipelines)).await?;
    let Some(meta) = es
        .glance_metadata(&list(&ids.scripts), job.is_some())
        .await?
    else {
        return Ok(Glance::Unavailable);
    };
    let indices = if ids.indices.is_empty() {
        BTreeMap::new()
    } else {
        es.index_pipelines(&list(&ids.indices)).await?
    };
    let assumed_model = serde_json::json!({"metadata": {MARKER_KEY: desired.marker}});
    let observed = Observed {
        models: BTreeMap::from([(desired.model_id.clone(), assumed_model)]),
        scripts: meta.scripts,
        pipelines,
        indices,
    };
    let plan = super::diff(desired, &observed, known, overwrite);
    if !plan.is_empty() {
        let why: Vec<String> = plan
            .actions
            .iter()
            .map(ToString::to_string)
            .chain(plan.conflicts.iter().cloned())
            .collect();
        return Ok(Glance::Changed(why.join("; ")));
    }
    if let Some(t) = job {
        let running = |task: String, want: &str| {
            meta.tasks
                .get(&task)
                .is_some_and(|s| s.as_deref().is_none_or(|s| s == want))
        };
        if !running(format!("job-{}", t.job), "opened") {
            return Ok(Glance::Changed(format!("job {} is not open", t.job)));
        }
        if !running(format!("datafeed-{}", t.datafeed), "started") {
            return Ok(Glance::Changed(format!(
                "datafeed {} is not started",
                t.datafeed
            )));
        }
    }
    // A failed canary run is never trusted as "unchanged": the model, a script or the licence
    // may be gone, and only a full pass reads them all.
    Ok(
        match super::verify::verify(
            es,
            desired.router_pipeline(),
            &desired.model_id,
            &desired.result_fields(),
        )
        .await?
        {
            super::verify::Verdict::Failed(problem) => Glance::Changed(problem),
            v => Glance::Unchanged(v),
        },
    )
}
