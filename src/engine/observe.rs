//! One read of what the cluster holds for the ids a pass cares about.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::MODEL_TAG;
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
