//! Desired state from a release and its owner. Pure: no client, no clock.

use serde_json::{Map, Value};

use super::{MARKER_KEY, MODEL_TAG, Marker, Owner};
use crate::bundle::{Bundle, ModelFile, PipelineRole, processors_of};

#[derive(Clone, Debug, PartialEq)]
pub struct Desired {
    pub owner: Owner,
    pub marker: Marker,
    pub release: String,
    pub bundle_sha256: String,
    /// The id the model is installed under: the release's id plus the model file's CRC-32 (8
    /// hex), so a release that changes the model gets a new id (upgrades switch without a gap)
    /// and one that does not reuses the installed model.
    pub model_id: String,
    /// The release's own model id (what the old CLI installed).
    pub release_model_id: String,
    /// The PUT body's small fields (definition streamed separately from `model`).
    pub model_head: Map<String, Value>,
    pub model: ModelFile,
    /// Stored scripts as PUT bodies, in install order.
    pub scripts: Vec<(String, Value)>,
    /// Pipelines as PUT bodies, in install order: the inference pipeline, then the router.
    pub pipelines: Vec<(String, Value)>,
    pub router: String,
    /// `@custom` hook pipelines (Fleet's per-data-stream extension point) that get our `pipeline`
    /// processor added to whatever they hold (see [`hook`]).
    pub hooks: Vec<String>,
    /// Index patterns whose indices get `index.final_pipeline` = the router.
    pub wire_indices: Vec<String>,
}

impl Desired {
    pub fn router_pipeline(&self) -> &str {
        &self.router
    }
}

/// Where the enrichment is wired in (empty: nowhere).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Wiring {
    pub custom_pipelines: Vec<String>,
    pub indices: Vec<String>,
}

impl Wiring {
    pub fn from_spec(spec: Option<&crate::api::EnrichmentSpec>) -> Wiring {
        let spec = spec.cloned().unwrap_or_default();
        if spec.enabled == Some(false) {
            return Wiring::default();
        }
        Wiring {
            custom_pipelines: spec
                .custom_pipelines
                .unwrap_or_else(|| vec!["logs-network_traffic.dns@custom".into()]),
            indices: spec.indices.unwrap_or_else(|| vec!["packetbeat-*".into()]),
        }
    }
}

/// The release's objects only, wired nowhere (the one-shot CLI).
pub fn build(bundle: &Bundle, owner: &Owner) -> Desired {
    build_with(bundle, owner, &Wiring::default())
}

pub fn installed_model_id(model: &ModelFile) -> String {
    format!("{}-{}", model.id, model.crc32)
}

pub fn build_with(bundle: &Bundle, owner: &Owner, wiring: &Wiring) -> Desired {
    let marker = Marker::for_owner(owner, &bundle.tag, &bundle.sha256);
    let model_id = installed_model_id(&bundle.model);

    let mut head = bundle.model.head.clone();
    let mut metadata = head
        .remove("metadata")
        .and_then(|m| m.as_object().cloned())
        .unwrap_or_default();
    metadata.insert(
        MARKER_KEY.into(),
        serde_json::to_value(&marker).expect("marker"),
    );
    head.insert("metadata".into(), Value::Object(metadata));
    let mut tags: Vec<Value> = head
        .remove("tags")
        .and_then(|t| t.as_array().cloned())
        .unwrap_or_default();
    if !tags.iter().any(|t| t == MODEL_TAG) {
        tags.push(MODEL_TAG.into());
    }
    head.insert("tags".into(), Value::Array(tags));

    let scripts = bundle
        .scripts
        .iter()
        .map(|(id, body)| {
            let mut body = body.clone();
            let source = body
                .pointer("/script/source")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let marked = format!("{}\n{}", marker.script_line(), strip_marker(source));
            body["script"]["source"] = Value::String(marked);
            if body["script"].get("lang").is_none() {
                body["script"]["lang"] = "painless".into();
            }
            (id.clone(), body)
        })
        .collect();

    let mut pipelines = Vec::new();
    for role in [PipelineRole::Inference, PipelineRole::Router] {
        let p = bundle.pipeline(role);
        let mut body = p.body.clone();
        point_inference_at(&mut body, &model_id);
        let meta = body
            .as_object_mut()
            .expect("pipeline is an object")
            .entry("_meta")
            .or_insert_with(|| Value::Object(Map::new()));
        if !meta.is_object() {
            *meta = Value::Object(Map::new());
        }
        meta[MARKER_KEY] = serde_json::to_value(&marker).expect("marker");
        pipelines.push((p.id.clone(), body));
    }
    let router = bundle.pipeline(PipelineRole::Router).id.clone();

    Desired {
        owner: owner.clone(),
        marker,
        release: bundle.tag.clone(),
        bundle_sha256: bundle.sha256.clone(),
        model_id,
        release_model_id: bundle.model.id.clone(),
        model_head: head,
        model: bundle.model.clone(),
        scripts,
        pipelines,
        router,
        hooks: wiring.custom_pipelines.clone(),
        wire_indices: wiring.indices.clone(),
    }
}

/// Fields Elasticsearch adds to a GET answer that a PUT must not carry and drift must not see:
/// pipelines' `created_date_millis`/`modified_date_millis` (and `?human` forms) from 9.2 (ES PR
/// #130847; elasticsearch-specification `ingest/_types/Pipeline.ts`).
pub const SERVER_FIELDS: [&str; 4] = [
    "created_date_millis",
    "modified_date_millis",
    "created_date",
    "modified_date",
];

/// A GET answer without the fields the server adds (what a PUT of it would write).
pub fn as_written(body: &Value) -> Value {
    let mut b = body.clone();
    if let Some(o) = b.as_object_mut() {
        for k in SERVER_FIELDS {
            o.remove(k);
        }
    }
    b
}

/// Our processor in a `@custom` hook, and how a hook body gains or loses it. A hook is not
/// ours: Fleet (or a person) may hold other processors in it, so it is only ever added to.
pub mod hook {
    use serde_json::{Value, json};

    use super::{Desired, MARKER_KEY};

    /// The `tag` that marks our processor (tags are accepted on every processor in every
    /// version; the owner key keeps two DgaModels' processors apart).
    pub fn tag(d: &Desired) -> String {
        tag_of(&d.owner)
    }

    /// Elastic's recipe: a `pipeline` processor with `ignore_missing_pipeline` and
    /// `ignore_failure` (elastic/integrations packages/dga README). `ignore_missing_pipeline` is
    /// accepted from 8.3 (ES PR #87354); before, `ignore_failure` alone keeps a missing router
    /// from failing the document.
    pub fn processor(d: &Desired, ignore_missing_pipeline: bool) -> Value {
        let mut p = json!({"name": d.router, "tag": tag(d), "ignore_failure": true});
        if ignore_missing_pipeline {
            p["ignore_missing_pipeline"] = json!(true);
        }
        json!({"pipeline": p})
    }

    fn is_tagged(p: &Value, tag: &str) -> bool {
        p.pointer("/pipeline/tag").and_then(Value::as_str) == Some(tag)
    }

    /// Whether the hook already calls our router through our processor.
    pub fn holds_ours(d: &Desired, body: &Value) -> bool {
        let tag = tag(d);
        processors(body).iter().any(|p| {
            is_tagged(p, &tag) && p.pointer("/pipeline/name").and_then(Value::as_str) == Some(&d.router)
        })
    }

    /// A DGA router the hook calls that is not ours: Fleet's `<version>-ml_dga_ingest_pipeline`
    /// (elastic/integrations packages/dga), or our router wired by hand.
    pub fn foreign_dga_call(d: &Desired, body: &Value) -> Option<String> {
        let tag = tag(d);
        processors(body).iter().find_map(|p| {
            let name = p.pointer("/pipeline/name").and_then(Value::as_str)?;
            (!is_tagged(p, &tag) && (name == d.router || name.ends_with("ml_dga_ingest_pipeline")))
                .then(|| name.to_string())
        })
    }

    fn processors(body: &Value) -> Vec<Value> {
        body.get("processors")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    }

    /// `current` (None: the hook does not exist) with our processor added or refreshed, every
    /// other processor and field kept. A hook we create carries our marker.
    pub fn with_ours(d: &Desired, current: Option<&Value>, ignore_missing_pipeline: bool) -> Value {
        let tag = tag(d);
        let mut body = match current {
            Some(c) => super::as_written(c),
            None => json!({
                "description": "Calls the DGA enrichment (dga-operator)",
                "processors": [],
                "_meta": {MARKER_KEY: d.marker},
            }),
        };
        let mut procs: Vec<Value> = processors(&body)
            .into_iter()
            .filter(|p| !is_tagged(p, &tag))
            .collect();
        procs.push(processor(d, ignore_missing_pipeline));
        body["processors"] = Value::Array(procs);
        body
    }

    /// What to do with a hook on removal: None = nothing of ours in it; Some(None) = delete it
    /// (we created it and it holds nothing else); Some(Some(body)) = PUT it without our processor.
    pub fn without_ours(tag: &str, owner: &super::super::Owner, current: &Value) -> Option<Option<Value>> {
        let procs = processors(current);
        if !procs.iter().any(|p| is_tagged(p, tag)) {
            return None;
        }
        let rest: Vec<Value> = procs.into_iter().filter(|p| !is_tagged(p, tag)).collect();
        let ours = super::super::holder(
            super::super::Marker::from_meta(current.get("_meta")).as_ref(),
            owner,
        ) == super::super::Holder::Us;
        if rest.is_empty() && ours {
            return Some(None);
        }
        let mut body = super::as_written(current);
        body["processors"] = Value::Array(rest);
        Some(Some(body))
    }

    /// The tag of an owner, without a Desired (cleanup has only the owner).
    pub fn tag_of(owner: &super::super::Owner) -> String {
        format!("dga-operator:{}", owner.key())
    }
}

/// A script's source without our marker line.
pub fn strip_marker(source: &str) -> &str {
    if source.starts_with(super::SCRIPT_MARKER_PREFIX) {
        source.split_once('\n').map(|(_, rest)| rest).unwrap_or("")
    } else {
        source
    }
}

fn point_inference_at(body: &mut Value, model_id: &str) {
    for key in ["processors", "on_failure"] {
        if let Some(list) = body.get_mut(key).and_then(Value::as_array_mut) {
            for proc in list {
                if let Some(inf) = proc.get_mut("inference").and_then(Value::as_object_mut) {
                    inf.insert("model_id".into(), Value::String(model_id.into()));
                }
            }
        }
    }
}

/// Model ids an installed pipeline body's inference processors use.
pub fn referenced_models(body: &Value) -> Vec<String> {
    processors_of(body)
        .iter()
        .filter_map(|p| {
            p.pointer("/inference/model_id")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .collect()
}
