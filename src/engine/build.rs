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
    /// Pipelines as PUT bodies, in install order: the inference pipeline, the router, then the
    /// `@custom` hooks that call the router.
    pub pipelines: Vec<(String, Value)>,
    pub router: String,
    /// Index patterns whose indices get `index.final_pipeline` = the router.
    pub wire_indices: Vec<String>,
}

impl Desired {
    pub fn router_pipeline(&self) -> &str {
        &self.router
    }

    /// Where the model being installed writes its answer (its own `inference_config`).
    pub fn result_fields(&self) -> super::verify::ResultFields {
        super::verify::ResultFields::of_model(self.model_head.get("inference_config"))
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
    for hook in &wiring.custom_pipelines {
        let body = serde_json::json!({
            "description": "Scores DNS questions for DGA domains (dga-operator)",
            "processors": [{"pipeline": {"name": router}}],
            "_meta": {MARKER_KEY: marker},
        });
        pipelines.push((hook.clone(), body));
    }

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
        wire_indices: wiring.indices.clone(),
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
