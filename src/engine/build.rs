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
    /// Index patterns whose indices get `index.final_pipeline` = the router (and the index
    /// templates of the data streams they match, so a rollover's new write index has it too).
    pub wire_indices: Vec<String>,
    /// `@custom` pipelines that get a `pipeline` processor calling the router (see
    /// [`super::hooks`]); their bodies depend on what each already holds, so they are not in
    /// `pipelines`.
    pub hooks: Vec<String>,
    /// The cluster's `X.Y`, once known ([`Desired::fit_to_cluster`]): what the hook processor
    /// may carry depends on it.
    pub es_version: Option<(u32, u32)>,
    /// Fleet's `dga` package version when the model and pipelines are the package's (Fleet
    /// installs them; the operator only wires the hooks to them and never writes or deletes
    /// them). `None`: a release's objects, which the operator installs.
    pub fleet: Option<String>,
}

impl Desired {
    pub fn router_pipeline(&self) -> &str {
        &self.router
    }

    /// Drops from the model's PUT body the fields a `GET _ml/trained_models` export carries that
    /// `version`'s PUT refuses (see [`put_refuses`]); returns their names, sorted. Fields
    /// Elasticsearch never writes are left for it to judge: a refusal names them.
    pub fn fit_to_cluster(&mut self, version: &str) -> Vec<String> {
        let v = major_minor(version);
        self.es_version = Some(v);
        let mut dropped: Vec<String> = Vec::new();
        self.model_head.retain(|k, _| {
            let drop = GET_OUTPUT.contains(&k.as_str()) && put_refuses(k, v);
            if drop {
                dropped.push(k.clone());
            }
            !drop
        });
        if let Some(meta) = self
            .model_head
            .get_mut("metadata")
            .and_then(Value::as_object_mut)
        {
            for k in ["total_feature_importance", "model_aliases"] {
                if (k == "total_feature_importance" || v >= (7, 13)) && meta.remove(k).is_some() {
                    dropped.push(format!("metadata.{k}"));
                }
            }
        }
        dropped.sort();
        dropped
    }

    /// Where the model being installed writes its answer (its own `inference_config`).
    pub fn result_fields(&self) -> super::verify::ResultFields {
        super::verify::ResultFields::of_model(self.model_head.get("inference_config"))
    }
}

/// Top-level fields `GET _ml/trained_models` writes (`TrainedModelConfig.toXContent`, with
/// `?human` and `include=definition_status` forms), 7.10 to 9.x. A model file exported with GET
/// carries some of them.
const GET_OUTPUT: &[&str] = &[
    "model_type",
    "created_by",
    "version",
    "create_time",
    "create_time_string",
    "model_size_bytes",
    "model_size",
    "estimated_heap_memory_usage_bytes",
    "estimated_heap_memory_usage",
    "estimated_operations",
    "license_level",
    "location",
    "fully_defined",
    "platform_architecture",
    "model_package",
    "prefix_strings",
];

/// `X.Y` of a version string (`8.17.0`, `9.2.0-SNAPSHOT`); unparsable parts are 0.
fn major_minor(version: &str) -> (u32, u32) {
    let mut parts = version
        .split(['.', '-'])
        .map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

/// Whether PUT `_ml/trained_models/{id}` on Elasticsearch `v` refuses a top-level field, from
/// `TrainedModelConfig` (x-pack/plugin/core/.../ml/inference/TrainedModelConfig.java): its
/// STRICT_PARSER refuses fields it does not declare, and `Builder.validate(true)` refuses
/// generated ones ("illegal to set [..] at inference model creation"). 7.x declares neither
/// `model_type`, `location` nor `model_size_bytes`, and refuses `estimated_heap_memory_usage_bytes`
/// and `estimated_operations`; 8.0 takes those two (`model_size_bytes` with the old name as a
/// deprecated alias) and refuses `location`; `model_package` is refused wherever it is known
/// (8.8); `platform_architecture` is declared from 8.11, `prefix_strings` from 8.12.
/// `created_by`, `version`, `create_time`, `license_level` are refused in every version, and the
/// `?human`/status forms (`create_time_string`, `model_size`, `fully_defined`, ...) are never
/// declared.
pub fn put_refuses(field: &str, v: (u32, u32)) -> bool {
    match field {
        "model_id"
        | "description"
        | "tags"
        | "metadata"
        | "input"
        | "inference_config"
        | "default_field_map"
        | "definition"
        | "compressed_definition" => false,
        "model_type"
        | "model_size_bytes"
        | "estimated_heap_memory_usage_bytes"
        | "estimated_operations" => v < (8, 0),
        "platform_architecture" => v < (8, 11),
        "prefix_strings" => v < (8, 12),
        _ => true,
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
        wire_indices: wiring.indices.clone(),
        hooks: wiring.custom_pipelines.clone(),
        es_version: None,
        fleet: None,
    }
}

/// The Elasticsearch side of the Fleet route: the package's model and version-prefixed
/// pipelines (installed by Fleet, so nothing to write) and the hooks wired to its router.
/// `identity` tells one source of the same version from another (the archive's sha256, or
/// the registry).
pub fn build_fleet(
    owner: &Owner,
    wiring: &Wiring,
    version: &str,
    model_id: &str,
    identity: &str,
) -> Desired {
    let release = format!("{} {version}", super::package::PACKAGE);
    let marker = Marker::for_owner(owner, &release, identity);
    Desired {
        owner: owner.clone(),
        marker,
        release,
        bundle_sha256: identity.to_string(),
        model_id: model_id.to_string(),
        release_model_id: model_id.to_string(),
        // The model's `inference_config` is read from the cluster ([`Desired::adopt_model_config`]).
        model_head: Map::new(),
        model: ModelFile {
            id: model_id.to_string(),
            file: String::new(),
            head: Map::new(),
            definition_key: String::new(),
            definition_path: Default::default(),
            definition_len: 0,
            crc32: String::new(),
        },
        scripts: Vec::new(),
        pipelines: Vec::new(),
        router: super::package::router(version),
        // Elastic's recipe for the package wires only the `@custom` hooks.
        wire_indices: Vec::new(),
        hooks: wiring.custom_pipelines.clone(),
        es_version: None,
        fleet: Some(version.to_string()),
    }
}

impl Desired {
    /// The Fleet route: where the package's model writes its answer is its own stored
    /// `inference_config`, read from the cluster.
    pub fn adopt_model_config(&mut self, inference_config: Option<&Value>) {
        if let Some(cfg) = inference_config {
            self.model_head
                .insert("inference_config".into(), cfg.clone());
        }
    }

    /// The Fleet package's model id, as Kibana lists the installed package's `ml_model` asset.
    pub fn set_model_id(&mut self, id: &str) {
        self.model_id = id.to_string();
        self.release_model_id = id.to_string();
        self.model.id = id.to_string();
    }

    /// The Fleet route: the package's model's own `inference_config`, from what a pass read.
    pub fn adopt_fleet_model(&mut self, observed: &super::Observed) {
        if self.fleet.is_some() {
            let cfg = observed
                .models
                .get(&self.model_id)
                .and_then(|m| m.get("inference_config"))
                .cloned();
            self.adopt_model_config(cfg.as_ref());
        }
    }

    /// The pipelines of the Fleet package (read, never written).
    pub fn fleet_pipelines(&self) -> Vec<String> {
        match &self.fleet {
            Some(v) => vec![super::package::inference(v), self.router.clone()],
            None => Vec::new(),
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The head of a model file exported with `GET _ml/trained_models/<id>?include=definition`
    /// from 8.17 (the real DGA model's sizes), plus forms other versions and options write.
    fn exported() -> Map<String, Value> {
        json!({
            "model_type": "tree_ensemble", "created_by": "api_user", "version": "8.17.0",
            "create_time": 1611725000000u64, "model_size_bytes": 246784104u64,
            "estimated_operations": 5320, "license_level": "platinum",
            "location": {"index": {"name": ".ml-inference-native-000002"}},
            "fully_defined": true, "platform_architecture": "linux-x86_64",
            "description": "d", "tags": ["dga"],
            "metadata": {"total_feature_importance": [], "model_aliases": ["a"], "k": 1},
            "input": {"field_names": ["f.u0"]},
            "inference_config": {"classification": {"results_field": "malicious_prediction"}},
            "frobnicate": 1
        })
        .as_object()
        .cloned()
        .unwrap()
    }

    fn fitted(version: &str) -> (Vec<String>, Map<String, Value>) {
        let mut d = Desired {
            owner: Owner::cli(),
            marker: Marker::for_owner(&Owner::cli(), "t", "s"),
            release: "t".into(),
            bundle_sha256: "s".into(),
            model_id: "m".into(),
            release_model_id: "m".into(),
            model_head: exported(),
            model: ModelFile {
                id: "m".into(),
                file: "m_model.json".into(),
                head: Map::new(),
                definition_key: "definition".into(),
                definition_path: "/nonexistent".into(),
                definition_len: 0,
                crc32: "00000000".into(),
            },
            scripts: vec![],
            pipelines: vec![],
            router: "r".into(),
            wire_indices: vec![],
            hooks: vec![],
            es_version: None,
            fleet: None,
        };
        let dropped = d.fit_to_cluster(version);
        (dropped, d.model_head)
    }

    #[test]
    fn a_get_export_is_fitted_to_what_each_version_takes() {
        let (dropped, head) = fitted("8.17.0");
        assert_eq!(
            dropped,
            [
                "create_time",
                "created_by",
                "fully_defined",
                "license_level",
                "location",
                "metadata.model_aliases",
                "metadata.total_feature_importance",
                "version"
            ]
        );
        for kept in [
            "model_type",
            "model_size_bytes",
            "estimated_operations",
            "platform_architecture",
            "inference_config",
            "frobnicate",
        ] {
            assert!(head.contains_key(kept), "{kept}");
        }
        assert_eq!(head["metadata"], json!({"k": 1}));

        let (dropped, head) = fitted("7.17.29");
        for gone in [
            "model_type",
            "model_size_bytes",
            "estimated_operations",
            "platform_architecture",
            "location",
            "version",
        ] {
            assert!(dropped.iter().any(|d| d == gone), "{gone}: {dropped:?}");
        }
        // An unknown field is Elasticsearch's to refuse (and the operator's to name).
        assert!(head.contains_key("frobnicate"));

        let (dropped, _) = fitted("8.10.4");
        assert!(dropped.iter().any(|d| d == "platform_architecture"));
        let (dropped, _) = fitted("7.10.2");
        assert!(!dropped.iter().any(|d| d == "metadata.model_aliases"));
    }

    #[test]
    fn put_refusals_by_version() {
        assert!(put_refuses("estimated_operations", (7, 17)));
        assert!(!put_refuses("estimated_operations", (8, 0)));
        assert!(put_refuses("prefix_strings", (8, 11)));
        assert!(!put_refuses("prefix_strings", (9, 2)));
        assert!(put_refuses("license_level", (9, 2)));
        assert!(!put_refuses("inference_config", (7, 10)));
    }
}
