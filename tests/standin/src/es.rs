//! The Elasticsearch imitation: spec check, then in-memory semantics of the endpoints the
//! operator uses (info, license, trained models, stored scripts, ingest pipelines + simulate,
//! index templates/settings, data streams, anomaly-detection jobs and datafeeds).

use base64::Engine;
use serde::de::IgnoredAny;
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::sync::Arc;

use crate::indices;
use crate::profile::Feature;
use crate::server::{Job, Req, Resp, RespBody, Shared, StoredModel};
use crate::spec::{self, EsMatch};
use crate::util::{self, es_error_body, wildcard_match};
use bytes::Bytes;

pub(crate) fn err(status: u16, typ: &str, reason: &str) -> Resp {
    Resp::json(status, &es_error_body(status, typ, reason))
}

/// Reserved-state handler names (elastic/elasticsearch `ReservedPipelineAction.NAME`,
/// `ReservedComposableIndexTemplateAction.NAME`).
pub(crate) const RESERVED_PIPELINES: &str = "ingest_pipelines";
pub(crate) const RESERVED_TEMPLATES: &str = "index_templates";

/// `ActionWithReservedState.validateForReservedState`
/// (server/src/main/java/org/elasticsearch/reservedstate/ActionWithReservedState.java): a
/// request touching a key file-based settings own fails with 400 illegal_argument_exception,
/// `Failed to process request [<request>] with errors: [[<keys>] set as read-only by [<ns>]]`.
/// `request` is the request's toString, `<class>/unset` for these requests.
fn reserved(sh: &Shared, handler: &str, key: &str, request: &str) -> Result<(), Resp> {
    let st = sh.st();
    match st.reserved.get(&(handler.to_string(), key.to_string())) {
        None => Ok(()),
        Some(ns) => Err(err(
            400,
            "illegal_argument_exception",
            &format!(
                "Failed to process request [{request}] with errors: [[{key}] set as read-only by [{ns}]]"
            ),
        )),
    }
}

fn ack() -> Resp {
    Resp::json(200, &json!({"acknowledged": true}))
}

fn not_found(reason: &str) -> Resp {
    err(404, "resource_not_found_exception", reason)
}

/// Check the `Authorization` header against the configured credentials.
pub(crate) fn authenticate(sh: &Shared, r: &Req) -> Result<(), String> {
    let a = &sh.cfg.auth;
    if a.basic.is_empty() && a.api_keys.is_empty() && a.bearer.is_empty() {
        return Ok(());
    }
    let Some(h) = r.header("authorization") else {
        return Err(format!(
            "missing authentication credentials for REST request [{}]",
            r.path
        ));
    };
    let (scheme, val) = h.split_once(' ').unwrap_or((h, ""));
    let val = val.trim();
    let ok = match scheme.to_ascii_lowercase().as_str() {
        "basic" => base64::engine::general_purpose::STANDARD
            .decode(val)
            .ok()
            .and_then(|d| String::from_utf8(d).ok())
            .and_then(|s| {
                s.split_once(':')
                    .map(|(u, p)| (u.to_string(), p.to_string()))
            })
            .map(|(u, p)| a.basic.iter().any(|(bu, bp)| *bu == u && *bp == p))
            .unwrap_or(false),
        "apikey" => a.api_keys.iter().any(|k| k == val),
        "bearer" => a.bearer.iter().any(|k| k == val),
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "unable to authenticate with provided credentials and anonymous access is not allowed for this request [{}]",
            r.path
        ))
    }
}

/// The authenticated identity named by an `Authorization` header (no secrets).
pub(crate) fn principal(h: &hyper::HeaderMap) -> Option<String> {
    let v = h.get("authorization")?.to_str().ok()?;
    let (scheme, val) = v.split_once(' ')?;
    let b64 = base64::engine::general_purpose::STANDARD;
    match scheme.to_ascii_lowercase().as_str() {
        "basic" => {
            let d = String::from_utf8(b64.decode(val.trim()).ok()?).ok()?;
            Some(d.split_once(':').map(|(u, _)| u.to_string()).unwrap_or(d))
        }
        "apikey" => {
            let d = String::from_utf8(b64.decode(val.trim()).ok()?).ok()?;
            Some(format!(
                "api_key:{}",
                d.split_once(':').map(|(i, _)| i).unwrap_or("?")
            ))
        }
        "bearer" => Some("bearer".into()),
        _ => None,
    }
}

pub(crate) fn handle(sh: &Shared, r: &Req) -> Resp {
    if let Err(reason) = authenticate(sh, r) {
        return err(401, "security_exception", &reason)
            .header(
                "www-authenticate",
                "Basic realm=\"security\", charset=\"UTF-8\"",
            )
            .header("www-authenticate", "ApiKey");
    }
    let m = match spec::es_check_in(
        sh.cfg.es_profile().spec_set(),
        &r.method,
        &r.path,
        &r.query,
        r.body.len(),
    ) {
        Ok(m) => m,
        Err(o) => {
            let mut resp = err(400, "illegal_argument_exception", &o.reason);
            resp.off_spec = Some(o.reason);
            resp.api = o.api;
            return resp;
        }
    };
    let mut resp = route(sh, r, &m);
    resp.api = Some(m.api.clone());
    if let (Some(f), RespBody::Bytes(b)) = (r.param("filter_path"), &resp.body)
        && let Ok(v) = serde_json::from_slice::<Value>(b)
    {
        let filtered = util::filter_path(&v, f);
        resp.body = RespBody::Bytes(Bytes::from(
            serde_json::to_vec(&filtered).unwrap_or_default(),
        ));
    }
    resp
}

fn body_json(r: &Req) -> Result<Value, Resp> {
    if r.body.is_empty() {
        return Ok(json!({}));
    }
    serde_json::from_slice(&r.body).map_err(|e| {
        err(
            400,
            "parse_exception",
            &format!("failed to parse request body: {e}"),
        )
    })
}

fn part<'a>(m: &'a EsMatch, k: &str) -> &'a str {
    m.parts.get(k).map(|s| s.as_str()).unwrap_or("")
}

fn route(sh: &Shared, r: &Req, m: &EsMatch) -> Resp {
    let res = match m.api.as_str() {
        "info" => Ok(info(sh)),
        "license.get" => Ok(license(sh)),
        "cluster.state" => cluster_state(
            sh,
            r,
            part(m, "metric"),
            m.parts.get("index").map(|s| s.as_str()),
        ),
        "cluster.health" => Ok(Resp::json(
            200,
            &json!({"cluster_name": "dga-standin", "status": "green", "timed_out": false, "number_of_nodes": 1, "number_of_data_nodes": 1}),
        )),
        "ml.put_trained_model" => put_model(sh, r, part(m, "model_id")),
        "ml.get_trained_models" => Ok(get_models(
            sh,
            r,
            m.parts.get("model_id").map(|s| s.as_str()),
        )),
        "ml.get_trained_models_stats" => {
            Ok(model_stats(sh, m.parts.get("model_id").map(|s| s.as_str())))
        }
        "ml.delete_trained_model" => Ok(delete_model(sh, r, part(m, "model_id"))),
        "ml.infer_trained_model" => infer(sh, r, part(m, "model_id")),
        "put_script" => put_script(sh, r, part(m, "id")),
        "get_script" => Ok(get_script(sh, part(m, "id"))),
        "delete_script" => Ok(delete_script(sh, part(m, "id"))),
        "ingest.put_pipeline" => put_pipeline(sh, r, part(m, "id")),
        "ingest.get_pipeline" => Ok(get_pipeline(sh, m.parts.get("id").map(|s| s.as_str()))),
        "ingest.delete_pipeline" => reserved(
            sh,
            RESERVED_PIPELINES,
            part(m, "id"),
            "org.elasticsearch.action.ingest.DeletePipelineRequest/unset",
        )
        .map(|()| delete_pipeline(sh, part(m, "id"))),
        "ingest.simulate" => simulate(sh, r, m.parts.get("id").map(|s| s.as_str())),
        "indices.put_index_template" => put_index_template(sh, r, part(m, "name"), false),
        "indices.put_template" => put_index_template(sh, r, part(m, "name"), true),
        "indices.get_index_template" => Ok(get_index_template(
            sh,
            m.parts.get("name").map(|s| s.as_str()),
        )),
        "indices.put_settings" => put_settings(sh, r, m.parts.get("index").map(|s| s.as_str())),
        "indices.get_settings" => Ok(get_settings(
            sh,
            r,
            m.parts.get("index").map(|s| s.as_str()),
            m.parts.get("name").map(|s| s.as_str()),
        )),
        "indices.get_data_stream" => {
            Ok(get_data_stream(sh, m.parts.get("name").map(|s| s.as_str())))
        }
        "ml.put_job" => put_job(sh, r, part(m, "job_id")),
        "ml.get_jobs" => Ok(get_jobs(
            sh,
            r,
            m.parts.get("job_id").map(|s| s.as_str()),
            false,
        )),
        "ml.get_job_stats" => Ok(get_jobs(
            sh,
            r,
            m.parts.get("job_id").map(|s| s.as_str()),
            true,
        )),
        "ml.update_job" => update_job(sh, r, part(m, "job_id")),
        "ml.delete_job" => Ok(delete_job(sh, r, part(m, "job_id"))),
        "ml.open_job" => Ok(open_close_job(sh, part(m, "job_id"), true)),
        "ml.close_job" => Ok(open_close_job(sh, part(m, "job_id"), false)),
        "ml.put_datafeed" => put_datafeed(sh, r, part(m, "datafeed_id")),
        "ml.get_datafeeds" => Ok(get_datafeeds(
            sh,
            r,
            m.parts.get("datafeed_id").map(|s| s.as_str()),
            false,
        )),
        "ml.get_datafeed_stats" => Ok(get_datafeeds(
            sh,
            r,
            m.parts.get("datafeed_id").map(|s| s.as_str()),
            true,
        )),
        "ml.delete_datafeed" => Ok(delete_datafeed(sh, r, part(m, "datafeed_id"))),
        "ml.start_datafeed" => Ok(start_stop_datafeed(sh, part(m, "datafeed_id"), true)),
        "ml.stop_datafeed" => Ok(start_stop_datafeed(sh, part(m, "datafeed_id"), false)),
        other => Ok(err(
            501,
            "stand_in_not_implemented",
            &format!("the dga-standin does not implement [{other}]"),
        )),
    };
    res.unwrap_or_else(|e| e)
}

fn info(sh: &Shared) -> Resp {
    Resp::json(
        200,
        &json!({
            "name": "dga-standin-node",
            "cluster_name": "dga-standin",
            "cluster_uuid": sh.cfg.cluster_uuid,
            "version": {
                "number": sh.cfg.es_version,
                "build_flavor": "default",
                "build_type": "docker",
                "build_hash": "0000000000000000000000000000000000000000",
                "build_date": "2024-12-11T12:08:05.663969764Z",
                "build_snapshot": false,
                "lucene_version": "9.12.0",
                "minimum_wire_compatibility_version": "7.17.0",
                "minimum_index_compatibility_version": "7.0.0"
            },
            "tagline": "You Know, for Search"
        }),
    )
}

fn license(sh: &Shared) -> Resp {
    let t = sh.st().license_type.clone();
    Resp::json(
        200,
        &json!({"license": {
            "status": "active",
            "uid": "00000000-0000-4000-8000-00000000dga0",
            "type": t,
            "issue_date": "2024-01-01T00:00:00.000Z",
            "issue_date_in_millis": 1_704_067_200_000u64,
            "expiry_date_in_millis": 4_102_444_800_000u64,
            "max_nodes": 1000,
            "max_resource_units": null,
            "issued_to": "dga-standin",
            "issuer": "elasticsearch",
            "start_date_in_millis": -1
        }}),
    )
}

/// `GET _cluster/state/{metric}/{index}`: the `metadata` metric only, shaped as Elasticsearch
/// 8.x renders it (index settings nested, stored scripts by id, pipelines as `{id, config}`,
/// ML jobs and datafeeds as persistent tasks).
fn cluster_state(sh: &Shared, r: &Req, metric: &str, index: Option<&str>) -> Result<Resp, Resp> {
    let metrics: Vec<&str> = if metric.is_empty() {
        vec!["_all"]
    } else {
        metric.split(',').collect()
    };
    if let Some(m) = metrics
        .iter()
        .find(|m| !matches!(**m, "_all" | "metadata" | "version" | "master_node"))
    {
        return Err(err(
            501,
            "stand_in_not_implemented",
            &format!("the dga-standin does not model the cluster state metric [{m}]"),
        ));
    }
    let st = sh.st();
    let (names, missing) = indices::resolve(&st, index);
    if let Some(m) = missing.first().filter(|_| !r.flag("ignore_unavailable")) {
        return Err(err(
            404,
            "index_not_found_exception",
            &format!("no such index [{m}]"),
        ));
    }
    let mut out = json!({"cluster_name": "dga-standin", "cluster_uuid": sh.cfg.cluster_uuid});
    if metrics.iter().any(|m| matches!(*m, "_all" | "version")) {
        out["version"] = json!(1);
        out["state_uuid"] = json!("dga-standin-state");
    }
    if metrics.iter().any(|m| matches!(*m, "_all" | "master_node")) {
        out["master_node"] = json!("dga-standin-node");
    }
    if metrics.iter().any(|m| matches!(*m, "_all" | "metadata")) {
        let indices: Map<String, Value> = names
            .iter()
            .map(|i| {
                let v = json!({
                    "version": 1,
                    "state": "open",
                    "settings": nest(&st.index_settings[i]),
                    "mappings": {},
                    "aliases": []
                });
                (i.clone(), v)
            })
            .collect();
        let pipelines: Vec<Value> = st
            .pipelines
            .iter()
            .map(|(id, config)| json!({"id": id, "config": config}))
            .collect();
        let mut tasks = Vec::new();
        let mut allocation = 0u64;
        for id in st
            .jobs
            .iter()
            .filter(|(_, j)| j.state == "opened")
            .map(|(id, _)| id)
        {
            allocation += 1;
            tasks.push(json!({
                "id": format!("job-{id}"),
                "task": {"xpack/ml/job": {
                    "params": {"job_id": id, "timeout": "1800s"},
                    "state": {"state": "opened", "allocation_id": allocation}
                }},
                "allocation_id": allocation,
                "assignment": {"executor_node": "dga-standin-node", "explanation": ""}
            }));
        }
        for (id, feed) in st.datafeeds.iter().filter(|(_, d)| d.state == "started") {
            allocation += 1;
            tasks.push(json!({
                "id": format!("datafeed-{id}"),
                // A datafeed task's state is a bare string, unlike a job's.
                "task": {"xpack/ml/datafeed": {
                    "params": {"datafeed_id": id, "start": "0", "job_id": feed.config["job_id"]},
                    "state": "started"
                }},
                "allocation_id": allocation,
                "assignment": {"executor_node": "dga-standin-node", "explanation": ""}
            }));
        }
        // Indices named in the path: a fresh `Metadata.builder()` with only those indices, no
        // customs (`TransportClusterStateAction.buildResponse`).
        out["metadata"] = if index.is_some_and(|i| !i.is_empty()) {
            json!({
                "cluster_uuid": sh.cfg.cluster_uuid,
                "cluster_uuid_committed": true,
                "templates": {},
                "indices": indices,
            })
        } else {
            // Customs under their writeable names (`Metadata.toXContent`):
            // `ComposableIndexTemplateMetadata` as `index_template.index_template.{name}`,
            // `DataStreamMetadata` as `data_stream.data_stream.{name}` (the stored stream:
            // no `template`/`status`, which only the `_data_stream` API computes).
            let streams: Map<String, Value> = st
                .data_streams
                .iter()
                .map(|(n, d)| {
                    let mut d = d.clone();
                    if let Some(o) = d.as_object_mut() {
                        o.remove("template");
                        o.remove("status");
                    }
                    (n.clone(), d)
                })
                .collect();
            json!({
                "cluster_uuid": sh.cfg.cluster_uuid,
                "cluster_uuid_committed": true,
                "templates": {},
                "indices": indices,
                "ingest": {"pipeline": pipelines},
                "stored_scripts": st.scripts,
                "index_template": {"index_template": st.index_templates},
                "data_stream": {"data_stream": streams, "data_stream_aliases": {}},
                "persistent_tasks": {"last_allocation_id": allocation, "tasks": tasks}
            })
        };
    }
    Ok(Resp::json(200, &out))
}

// ---------------------------------------------------------------- trained models

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'))
        && id.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && id.chars().last().is_some_and(|c| c.is_ascii_alphanumeric())
}

fn check_trained_model_json(text: &str) -> Result<(), String> {
    let m: HashMap<String, IgnoredAny> =
        serde_json::from_str(text).map_err(|e| format!("failed to parse model definition: {e}"))?;
    if !m.contains_key("trained_model") {
        return Err("[trained_model] is required in the model definition".into());
    }
    Ok(())
}

/// The top-level fields `TrainedModelConfig.STRICT_PARSER` declares in a version (unknown ones
/// are refused while parsing, before any validation). `definition`/`compressed_definition` are
/// taken out before this is asked.
fn model_fields_known(p: crate::profile::Profile) -> Vec<&'static str> {
    let mut known = vec![
        "model_id",
        "created_by",
        "version",
        "description",
        "create_time",
        "tags",
        "metadata",
        "doc_type",
        "input",
        "estimated_heap_memory_usage_bytes",
        "estimated_operations",
        "license_level",
        "default_field_map",
        "inference_config",
    ];
    for (f, fields) in [
        (
            Feature::ModelSizeSettable,
            &["model_type", "location", "model_size_bytes"][..],
        ),
        (Feature::ModelPackage, &["model_package"][..]),
        (
            Feature::PlatformArchitecture,
            &["platform_architecture"][..],
        ),
        (Feature::PrefixStrings, &["prefix_strings"][..]),
    ] {
        if p.has(f) {
            known.extend_from_slice(fields);
        }
    }
    known
}

/// What PUT `_ml/trained_models/{id}` refuses in a config, as the version answers it: an unknown
/// field fails the strict parse (400 `x_content_parse_exception`); then `Builder.validate(true)`
/// gathers every creation error into one `action_request_validation_exception`, in its order.
/// `None`: nothing refused here (the definition and the id are checked elsewhere).
pub(crate) fn model_put_refusal(
    p: crate::profile::Profile,
    id: &str,
    top: &BTreeMap<String, Box<RawValue>>,
) -> Option<Resp> {
    let known = model_fields_known(p);
    if let Some(k) = top.keys().find(|k| !known.contains(&k.as_str())) {
        return Some(err(
            400,
            "x_content_parse_exception",
            &format!("[1:2] [trained_model_config] unknown field [{k}]"),
        ));
    }
    let has = |k: &str| top.get(k).is_some_and(|v| v.get() != "null");
    let mut errors: Vec<String> = Vec::new();
    if !top
        .get("inference_config")
        .is_some_and(|v| v.get().trim_start().starts_with('{'))
    {
        errors.push("[inference_config] must not be null.".into());
    }
    // The id (`MlStrings.isValidId`, `hasValidLengthForId`; ML `Messages.INVALID_ID`,
    // `ID_TOO_LONG`), checked in the same `validate(true)`, after the inference config.
    if !valid_id(id) {
        errors.push(format!(
            "Invalid model_id; '{id}' can contain lowercase alphanumeric (a-z and 0-9), hyphens or underscores; must start and end with alphanumeric"
        ));
    }
    if id.len() > 64 {
        errors.push(format!(
            "Invalid model_id; '{id}' cannot contain more than 64 characters."
        ));
    }
    let fields_ok = top
        .get("input")
        .and_then(|v| serde_json::from_str::<Value>(v.get()).ok())
        .and_then(|i| i.get("field_names").and_then(Value::as_array).cloned())
        .is_some_and(|a| !a.is_empty() && a.iter().all(Value::is_string));
    if !fields_ok {
        errors.push("[input.field_names] must not be empty".into());
    }
    let mut illegal = vec!["version", "created_by", "create_time"];
    if !p.has(Feature::ModelSizeSettable) {
        illegal.extend(["estimated_heap_memory_usage_bytes", "estimated_operations"]);
    }
    illegal.push("license_level");
    if p.has(Feature::ModelSizeSettable) {
        illegal.push("location");
    }
    for k in illegal {
        if has(k) {
            errors.push(format!("illegal to set [{k}] at inference model creation"));
        }
    }
    let metadata: Option<Value> = top
        .get("metadata")
        .and_then(|v| serde_json::from_str(v.get()).ok());
    let mut in_metadata = vec!["total_feature_importance"];
    if p.has(Feature::ModelAliases) {
        in_metadata.push("model_aliases");
    }
    for k in in_metadata {
        if metadata
            .as_ref()
            .and_then(|m| m.get(k))
            .is_some_and(|v| !v.is_null())
        {
            errors.push(format!(
                "illegal to set [metadata.{k}] at inference model creation"
            ));
        }
    }
    if p.has(Feature::ModelPackage) && has("model_package") {
        errors.push("illegal to set [model_package] at inference model creation".into());
    }
    if errors.is_empty() {
        return None;
    }
    let listed: String = errors
        .iter()
        .enumerate()
        .map(|(i, e)| format!("{}: {e};", i + 1))
        .collect();
    Some(err(
        400,
        "action_request_validation_exception",
        &format!("Validation Failed: {listed}"),
    ))
}

fn put_model(sh: &Shared, r: &Req, id: &str) -> Result<Resp, Resp> {
    // Keep the definition as raw JSON text: no full Value tree of a 100 MB definition.
    let mut top: BTreeMap<String, Box<RawValue>> =
        serde_json::from_slice(&r.body).map_err(|e| {
            err(
                400,
                "parse_exception",
                &format!("failed to parse trained model config: {e}"),
            )
        })?;
    let def_raw = top.remove("definition");
    let comp_raw = top.remove("compressed_definition");
    if let Some(refusal) = model_put_refusal(sh.cfg.es_profile(), id, &top) {
        return Err(refusal);
    }
    let mut cfg = Map::new();
    for (k, v) in top {
        let val: Value = serde_json::from_str(v.get())
            .map_err(|e| err(400, "parse_exception", &e.to_string()))?;
        cfg.insert(k, val);
    }
    if let Some(body_id) = cfg.get("model_id").and_then(|v| v.as_str())
        && body_id != id
    {
        return Err(err(
            400,
            "illegal_argument_exception",
            &format!(
                "Inconsistent model_id; '{body_id}' specified in the body differs from '{id}' specified as a URL argument"
            ),
        ));
    }
    let definition: Arc<str> = match (def_raw, comp_raw) {
        (Some(_), Some(_)) => {
            return Err(err(
                400,
                "illegal_argument_exception",
                "both [definition] and [compressed_definition] may not be set simultaneously",
            ));
        }
        (None, None) => {
            return Err(err(
                400,
                "action_request_validation_exception",
                "Validation Failed: 1: [definition] or [compressed_definition] must be provided;",
            ));
        }
        (Some(d), None) => {
            let text: Box<str> = d.into();
            check_trained_model_json(&text).map_err(|e| err(400, "parse_exception", &e))?;
            Arc::from(text)
        }
        (None, Some(c)) => {
            let b64: String = serde_json::from_str(c.get()).map_err(|_| {
                err(
                    400,
                    "parse_exception",
                    "[compressed_definition] must be a base64 string",
                )
            })?;
            let gz = base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .map_err(|e| {
                    err(
                        400,
                        "illegal_argument_exception",
                        &format!("[compressed_definition] is not valid base64: {e}"),
                    )
                })?;
            let mut text = String::new();
            flate2::read::GzDecoder::new(&gz[..])
                .read_to_string(&mut text)
                .map_err(|e| {
                    err(
                        400,
                        "parse_exception",
                        &format!("[compressed_definition] is not gzipped JSON: {e}"),
                    )
                })?;
            check_trained_model_json(&text).map_err(|e| err(400, "parse_exception", &e))?;
            Arc::from(text)
        }
    };
    let mut st = sh.st();
    if st.models.contains_key(id) {
        return Err(err(
            400,
            "resource_already_exists_exception",
            &format!("Trained machine learning model [{id}] already exists"),
        ));
    }
    let def_len = definition.len();
    cfg.insert("model_id".into(), json!(id));
    cfg.insert("model_type".into(), json!("tree_ensemble"));
    cfg.insert("created_by".into(), json!("api_user"));
    cfg.insert("version".into(), json!(sh.cfg.es_version));
    cfg.insert("create_time".into(), json!(util::now_millis()));
    // 8.x keeps sizes given at creation (ModelSizeSettable); estimated otherwise.
    cfg.entry("estimated_operations")
        .or_insert_with(|| json!((def_len / 64).max(1)));
    let size = cfg
        .remove("estimated_heap_memory_usage_bytes")
        .unwrap_or_else(|| json!(def_len * 10));
    cfg.entry("model_size_bytes").or_insert(size);
    cfg.entry("tags").or_insert_with(|| json!([]));
    cfg.entry("metadata").or_insert_with(|| json!({}));
    cfg.entry("description").or_insert_with(|| json!(""));
    cfg.insert("license_level".into(), json!("platinum"));
    let config = Value::Object(cfg);
    st.models.insert(
        id.into(),
        StoredModel {
            config: config.clone(),
            definition: Some(definition),
            parsed: None,
        },
    );
    Ok(Resp::json(200, &config))
}

fn select_ids<'a, I: Iterator<Item = &'a String>>(
    ids: I,
    expr: Option<&str>,
) -> (Vec<String>, Vec<String>) {
    let all: Vec<String> = ids.cloned().collect();
    let expr = expr.unwrap_or("_all");
    if expr == "_all" || expr == "*" || expr.is_empty() {
        return (all, vec![]);
    }
    let mut out = Vec::new();
    let mut missing = Vec::new();
    for pat in expr.split(',').map(|s| s.trim()).filter(|s| !s.is_empty()) {
        let hits: Vec<&String> = all.iter().filter(|i| wildcard_match(pat, i)).collect();
        if hits.is_empty() && !pat.contains('*') {
            missing.push(pat.to_string());
        }
        for h in hits {
            if !out.contains(h) {
                out.push(h.clone());
            }
        }
    }
    out.sort();
    (out, missing)
}

fn get_models(sh: &Shared, r: &Req, id: Option<&str>) -> Resp {
    let st = sh.st();
    let (ids, missing) = select_ids(st.models.keys(), id);
    let allow_no_match = r.param("allow_no_match") != Some("false");
    if !missing.is_empty() || (ids.is_empty() && !allow_no_match && id.is_some()) {
        return not_found(&format!(
            "Could not find trained model [{}]",
            id.unwrap_or("_all")
        ));
    }
    let from: usize = r.param("from").and_then(|v| v.parse().ok()).unwrap_or(0);
    let size: usize = r.param("size").and_then(|v| v.parse().ok()).unwrap_or(100);
    let include_def = r
        .param("include")
        .is_some_and(|i| i.split(',').any(|x| x == "definition"));
    let tags: Vec<&str> = r
        .param("tags")
        .map(|t| t.split(',').collect())
        .unwrap_or_default();
    let mut configs = Vec::new();
    let mut count = 0;
    for mid in &ids {
        let m = &st.models[mid];
        let mtags: Vec<&str> = m.config["tags"]
            .as_array()
            .map(|a| a.iter().filter_map(|x| x.as_str()).collect())
            .unwrap_or_default();
        if !tags.iter().all(|t| mtags.contains(t)) {
            continue;
        }
        count += 1;
        if count <= from || configs.len() >= size {
            continue;
        }
        let mut c = m.config.clone();
        if r.flag("exclude_generated")
            && let Some(o) = c.as_object_mut()
        {
            for k in [
                "created_by",
                "version",
                "create_time",
                "estimated_operations",
                "model_size_bytes",
                "license_level",
                "model_type",
            ] {
                o.remove(k);
            }
        }
        if include_def && let Some(d) = &m.definition {
            let v: Value = serde_json::from_str(d).unwrap_or(Value::Null);
            c["definition"] = v;
        }
        configs.push(c);
    }
    Resp::json(
        200,
        &json!({"count": count, "trained_model_configs": configs}),
    )
}

fn model_stats(sh: &Shared, id: Option<&str>) -> Resp {
    let st = sh.st();
    let (ids, missing) = select_ids(st.models.keys(), id);
    if !missing.is_empty() {
        return not_found(&format!(
            "Could not find trained model [{}]",
            id.unwrap_or("_all")
        ));
    }
    let stats: Vec<Value> = ids
        .iter()
        .map(|mid| {
            let pipelines = st.pipelines.values().filter(|p| references_model(p, mid)).count();
            json!({"model_id": mid, "pipeline_count": pipelines, "model_size_stats": {"model_size_bytes": st.models[mid].config["model_size_bytes"], "required_native_memory_bytes": 0}, "inference_stats": {"failure_count": 0, "inference_count": 0, "cache_miss_count": 0, "missing_all_fields_count": 0, "timestamp": util::now_millis()}})
        })
        .collect();
    Resp::json(
        200,
        &json!({"count": stats.len(), "trained_model_stats": stats}),
    )
}

/// Does a pipeline hold an `inference` processor (anywhere, including on_failure/foreach) for `model_id`?
pub(crate) fn references_model(v: &Value, model_id: &str) -> bool {
    match v {
        Value::Object(o) => {
            if let Some(inf) = o.get("inference")
                && inf.get("model_id").and_then(|m| m.as_str()) == Some(model_id)
            {
                return true;
            }
            o.values().any(|x| references_model(x, model_id))
        }
        Value::Array(a) => a.iter().any(|x| references_model(x, model_id)),
        _ => false,
    }
}

fn delete_model(sh: &Shared, r: &Req, id: &str) -> Resp {
    let mut st = sh.st();
    if !st.models.contains_key(id) {
        return not_found(&format!("Could not find trained model [{id}]"));
    }
    if !r.flag("force") && st.pipelines.values().any(|p| references_model(p, id)) {
        return err(
            409,
            "status_exception",
            &format!(
                "Cannot delete model [{id}] as it is still referenced by ingest processors; use force to delete the model"
            ),
        );
    }
    st.models.remove(id);
    ack()
}

/// Parse (and cache) a stored model's definition.
fn model_definition(sh: &Shared, id: &str) -> Result<Arc<Value>, String> {
    let text = {
        let st = sh.st();
        let m = st
            .models
            .get(id)
            .ok_or_else(|| format!("Could not find trained model [{id}]"))?;
        if let Some(p) = &m.parsed {
            return Ok(p.clone());
        }
        m.definition
            .clone()
            .ok_or_else(|| format!("model [{id}] has no definition"))?
    };
    let v: Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    let v = Arc::new(v);
    if let Some(m) = sh.st().models.get_mut(id) {
        m.parsed = Some(v.clone());
    }
    Ok(v)
}

fn infer(sh: &Shared, r: &Req, id: &str) -> Result<Resp, Resp> {
    let body = body_json(r)?;
    let def = model_definition(sh, id).map_err(|e| not_found(&e))?;
    let cfg = body.get("inference_config").cloned().unwrap_or_else(|| {
        sh.st()
            .models
            .get(id)
            .map(|m| m.config["inference_config"].clone())
            .unwrap_or(json!({}))
    });
    let docs = body
        .get("docs")
        .and_then(|d| d.as_array())
        .cloned()
        .unwrap_or_default();
    let mut out = Vec::new();
    for d in docs {
        out.push(
            crate::model::evaluate_with_config(&def, &d, &cfg)
                .map_err(|e| err(400, "illegal_argument_exception", &e))?,
        );
    }
    Ok(Resp::json(200, &json!({"inference_results": out})))
}

// ---------------------------------------------------------------- scripts

fn put_script(sh: &Shared, r: &Req, id: &str) -> Result<Resp, Resp> {
    let body = body_json(r)?;
    let Some(script) = body.get("script").and_then(|s| s.as_object()) else {
        return Err(err(
            400,
            "illegal_argument_exception",
            "must specify [script] for storing a script",
        ));
    };
    let lang = script.get("lang").and_then(|l| l.as_str()).unwrap_or("");
    if lang.is_empty() {
        return Err(err(
            400,
            "illegal_argument_exception",
            "must specify lang for stored script",
        ));
    }
    if lang != "painless" && lang != "mustache" && lang != "expression" {
        return Err(err(
            400,
            "illegal_argument_exception",
            &format!("unable to get script engine for lang [{lang}]"),
        ));
    }
    let source = script.get("source").cloned().unwrap_or(Value::Null);
    if source
        .as_str()
        .map(|s| s.trim().is_empty())
        .unwrap_or(source.is_null())
    {
        return Err(err(
            400,
            "illegal_argument_exception",
            "must specify source for stored script",
        ));
    }
    let mut stored = json!({"lang": lang, "source": source});
    if let Some(o) = script.get("options") {
        stored["options"] = o.clone();
    }
    sh.st().scripts.insert(id.into(), stored);
    Ok(ack())
}

fn get_script(sh: &Shared, id: &str) -> Resp {
    match sh.st().scripts.get(id) {
        Some(s) => Resp::json(200, &json!({"_id": id, "found": true, "script": s})),
        None => Resp::json(404, &json!({"_id": id, "found": false})),
    }
}

fn delete_script(sh: &Shared, id: &str) -> Resp {
    match sh.st().scripts.remove(id) {
        Some(_) => ack(),
        None => not_found(&format!("stored script [{id}] does not exist")),
    }
}

// ---------------------------------------------------------------- pipelines

fn collect_inference_models(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(o) => {
            if let Some(m) = o
                .get("inference")
                .and_then(|i| i.get("model_id"))
                .and_then(|m| m.as_str())
            {
                out.push(m.to_string());
            }
            o.values().for_each(|x| collect_inference_models(x, out));
        }
        Value::Array(a) => a.iter().for_each(|x| collect_inference_models(x, out)),
        _ => {}
    }
}

fn put_pipeline(sh: &Shared, r: &Req, id: &str) -> Result<Resp, Resp> {
    reserved(
        sh,
        RESERVED_PIPELINES,
        id,
        "org.elasticsearch.action.ingest.PutPipelineRequest/unset",
    )?;
    let body = body_json(r)?;
    if !body.is_object() {
        return Err(err(
            400,
            "parse_exception",
            "pipeline body must be an object",
        ));
    }
    if let Some(p) = body.get("processors") {
        let Some(a) = p.as_array() else {
            return Err(err(
                400,
                "parse_exception",
                "[processors] required property is missing or not a list",
            ));
        };
        for proc_ in a {
            if proc_.as_object().is_none_or(|o| o.len() != 1) {
                return Err(err(
                    400,
                    "parse_exception",
                    "processor definition must be an object with exactly one processor type",
                ));
            }
        }
    } else {
        return Err(err(
            400,
            "parse_exception",
            "[processors] required property is missing",
        ));
    }
    let profile = sh.cfg.es_profile();
    if body.get("_meta").is_some() && !profile.has(Feature::PipelineMeta) {
        return Err(err(
            400,
            "parse_exception",
            &format!(
                "pipeline [{id}] doesn't support one or more provided configuration parameters [_meta]"
            ),
        ));
    }
    if !profile.has(Feature::PipelineIgnoreMissingPipeline)
        && pipeline_processor_has(&body, "ignore_missing_pipeline")
    {
        return Err(err(
            400,
            "parse_exception",
            "processor [pipeline] doesn't support one or more provided configuration parameters [ignore_missing_pipeline]",
        ));
    }
    let mut body = body;
    if profile.has(Feature::PipelineDates) {
        // Read-only: set by the server, never taken from the body (ES PR #130847).
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let created = sh
            .st()
            .pipelines
            .get(id)
            .and_then(|p| p.get("created_date_millis").cloned())
            .unwrap_or(json!(now));
        body["created_date_millis"] = created;
        body["modified_date_millis"] = json!(now);
    }
    let mut st = sh.st();
    let mut models = Vec::new();
    collect_inference_models(&body, &mut models);
    for m in models {
        if !st.models.contains_key(&m) {
            return Err(not_found(&format!("Could not find trained model [{m}]")));
        }
    }
    if let Some(v) = r.param("if_version") {
        let cur = st
            .pipelines
            .get(id)
            .and_then(|p| p.get("version"))
            .and_then(|x| x.as_i64());
        if cur.map(|c| c.to_string()) != Some(v.to_string()) {
            return Err(err(
                400,
                "illegal_argument_exception",
                &format!(
                    "version conflict, required version [{v}] for pipeline [{id}] but current version is [{}]",
                    cur.map(|c| c.to_string()).unwrap_or("none".into())
                ),
            ));
        }
    }
    st.pipelines.insert(id.into(), body);
    Ok(ack())
}

/// Whether a `pipeline` processor anywhere in the body (nested `on_failure` too) sets `key`.
fn pipeline_processor_has(v: &Value, key: &str) -> bool {
    match v {
        Value::Object(o) => {
            o.get("pipeline")
                .and_then(Value::as_object)
                .is_some_and(|p| p.contains_key(key))
                || o.values().any(|x| pipeline_processor_has(x, key))
        }
        Value::Array(a) => a.iter().any(|x| pipeline_processor_has(x, key)),
        _ => false,
    }
}

fn get_pipeline(sh: &Shared, id: Option<&str>) -> Resp {
    let st = sh.st();
    let (ids, _) = select_ids(st.pipelines.keys(), id);
    // `GetPipelineResponse.status()`: 404 whenever nothing is listed, ids named or not.
    if ids.is_empty() {
        return Resp::json(404, &json!({}));
    }
    let out: Map<String, Value> = ids
        .into_iter()
        .map(|i| (i.clone(), st.pipelines[&i].clone()))
        .collect();
    Resp::json(200, &Value::Object(out))
}

fn delete_pipeline(sh: &Shared, id: &str) -> Resp {
    let mut st = sh.st();
    let (ids, _) = select_ids(st.pipelines.keys(), Some(id));
    // A match-all pattern that matches nothing is a no-op, not a 404
    // (`IngestService.innerDelete`: `Regex.isMatchAllPattern`).
    if ids.is_empty() && id != "*" {
        return not_found(&format!("pipeline [{id}] is missing"));
    }
    for i in ids {
        st.pipelines.remove(&i);
    }
    ack()
}

// ---------------------------------------------------------------- simulate

struct Sim<'a> {
    sh: &'a Shared,
    skipped: Vec<String>,
    depth: u32,
}

/// Evaluate the simple `if` forms: `ctx.a.b == 'x'`, `!=`, `== null`, joined by `&&`.
/// None = cannot evaluate.
pub(crate) fn eval_if(cond: &str, doc: &Value) -> Option<bool> {
    let mut result = true;
    for clause in cond.split("&&") {
        let c = clause
            .trim()
            .trim_start_matches('(')
            .trim_end_matches(')')
            .trim();
        let (lhs, op, rhs) = if let Some((l, r)) = c.split_once("!=") {
            (l, "!=", r)
        } else if let Some((l, r)) = c.split_once("==") {
            (l, "==", r)
        } else {
            return None;
        };
        let lhs = lhs.trim().replace("?.", ".");
        let path = lhs.strip_prefix("ctx.")?.to_string();
        if !path
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == '.')
        {
            return None;
        }
        let rhs = rhs.trim();
        let want = if rhs == "null" {
            Value::Null
        } else if (rhs.starts_with('\'') && rhs.ends_with('\'')
            || rhs.starts_with('"') && rhs.ends_with('"'))
            && rhs.len() >= 2
        {
            Value::String(rhs[1..rhs.len() - 1].to_string())
        } else {
            return None;
        };
        let got = util::get_field(doc, &path).cloned().unwrap_or(Value::Null);
        let eq = got == want;
        result &= if op == "==" { eq } else { !eq };
    }
    Some(result)
}

impl Sim<'_> {
    fn run_processors(
        &mut self,
        procs: &[Value],
        on_failure: Option<&Vec<Value>>,
        doc: &mut Value,
    ) -> Result<(), String> {
        for p in procs {
            if let Err(e) = self.run_processor(p, doc) {
                match on_failure {
                    Some(of) if !of.is_empty() => {
                        if let Some(ingest) = doc.get_mut("_ingest") {
                            ingest["on_failure_message"] = json!(e);
                        } else {
                            util::set_field(doc, "_ingest.on_failure_message", json!(e));
                        }
                        return self.run_processors(of, None, doc);
                    }
                    _ => return Err(e),
                }
            }
        }
        Ok(())
    }

    fn run_processor(&mut self, p: &Value, doc: &mut Value) -> Result<(), String> {
        let Some((kind, conf)) = p.as_object().and_then(|o| o.iter().next()) else {
            return Ok(());
        };
        let tag = conf
            .get("tag")
            .and_then(|t| t.as_str())
            .map(|t| format!(",tag={t}"))
            .unwrap_or_default();
        if let Some(cond) = conf.get("if").and_then(|c| {
            c.as_str()
                .or_else(|| c.get("source").and_then(|s| s.as_str()))
        }) {
            match eval_if(cond, &doc["_source"]) {
                Some(true) => {}
                Some(false) => return Ok(()),
                None => {
                    self.skipped.push(format!("{kind}(if={cond}{tag})"));
                    return Ok(());
                }
            }
        }
        let ignore_failure = conf
            .get("ignore_failure")
            .and_then(|b| b.as_bool())
            .unwrap_or(false);
        let res = self.exec(kind, conf, &tag, doc);
        match res {
            Err(e) if !ignore_failure => {
                let local: Vec<Value> = conf
                    .get("on_failure")
                    .and_then(|o| o.as_array())
                    .cloned()
                    .unwrap_or_default();
                if local.is_empty() {
                    Err(e)
                } else {
                    util::set_field(doc, "_ingest.on_failure_message", json!(e));
                    self.run_processors(&local, None, doc)
                }
            }
            _ => Ok(()),
        }
    }

    fn exec(&mut self, kind: &str, conf: &Value, tag: &str, doc: &mut Value) -> Result<(), String> {
        let src = &mut doc["_source"];
        let field = conf.get("field").and_then(|f| f.as_str());
        let ignore_missing = conf
            .get("ignore_missing")
            .and_then(|b| b.as_bool())
            .unwrap_or(false);
        match kind {
            "set" => {
                let f = field.ok_or("[field] required property is missing")?;
                let over = conf
                    .get("override")
                    .and_then(|b| b.as_bool())
                    .unwrap_or(true);
                if !over && util::get_field(src, f).is_some_and(|v| !v.is_null()) {
                    return Ok(());
                }
                let v = if let Some(cf) = conf.get("copy_from").and_then(|c| c.as_str()) {
                    util::get_field(src, cf).cloned().unwrap_or(Value::Null)
                } else {
                    let v = conf.get("value").cloned().unwrap_or(Value::Null);
                    match v.as_str() {
                        Some(s) if s.contains("{{") => {
                            self.skipped.push(format!("set(field={f},template{tag})"));
                            return Ok(());
                        }
                        _ => v,
                    }
                };
                util::set_field(src, f, v);
                Ok(())
            }
            "remove" => {
                let fields: Vec<String> = match conf.get("field") {
                    Some(Value::String(s)) => vec![s.clone()],
                    Some(Value::Array(a)) => a
                        .iter()
                        .filter_map(|x| x.as_str().map(String::from))
                        .collect(),
                    _ => return Err("[field] required property is missing".into()),
                };
                for f in fields {
                    if util::remove_field(src, &f).is_none() && !ignore_missing {
                        return Err(format!("field [{f}] not present as part of path [{f}]"));
                    }
                }
                Ok(())
            }
            "rename" => {
                let f = field.ok_or("[field] required property is missing")?;
                let t = conf
                    .get("target_field")
                    .and_then(|t| t.as_str())
                    .ok_or("[target_field] required property is missing")?;
                match util::remove_field(src, f) {
                    Some(v) => {
                        if util::get_field(src, t).is_some() {
                            return Err(format!("field [{t}] already exists"));
                        }
                        util::set_field(src, t, v);
                        Ok(())
                    }
                    None if ignore_missing => Ok(()),
                    None => Err(format!("field [{f}] doesn't exist")),
                }
            }
            "pipeline" => {
                let name = conf
                    .get("name")
                    .and_then(|n| n.as_str())
                    .ok_or("[name] required property is missing")?;
                let ignore_missing_pipeline = conf
                    .get("ignore_missing_pipeline")
                    .and_then(|b| b.as_bool())
                    .unwrap_or(false);
                let p = self.sh.st().pipelines.get(name).cloned();
                match p {
                    None if ignore_missing_pipeline => Ok(()),
                    None => Err(format!(
                        "Pipeline processor configured for non-existent pipeline [{name}]"
                    )),
                    Some(p) => {
                        if self.depth > 20 {
                            return Err("Cycle detected for pipeline".into());
                        }
                        self.depth += 1;
                        let r = self.run_pipeline(&p, doc);
                        self.depth -= 1;
                        r
                    }
                }
            }
            "inference" => {
                let mid = conf
                    .get("model_id")
                    .and_then(|m| m.as_str())
                    .ok_or("[model_id] required property is missing")?;
                let target = conf
                    .get("target_field")
                    .and_then(|t| t.as_str())
                    .unwrap_or("ml.inference")
                    .to_string();
                // Inference is a platinum feature, checked as each document runs.
                let licence = self.sh.st().license_type.clone();
                if !matches!(licence.as_str(), "platinum" | "enterprise" | "trial") {
                    return Err("current license is non-compliant for [inference]".into());
                }
                let def = model_definition(self.sh, mid)?;
                let mut input = doc["_source"].clone();
                if let Some(fm) = conf.get("field_map").and_then(|f| f.as_object()) {
                    for (from, to) in fm {
                        if let (Some(v), Some(to)) =
                            (util::get_field(&input, from).cloned(), to.as_str())
                        {
                            util::set_field(&mut input, to, v);
                        }
                    }
                }
                let (model_cfg, field_names) = self
                    .sh
                    .st()
                    .models
                    .get(mid)
                    .map(|m| {
                        (
                            m.config["inference_config"].clone(),
                            m.config["input"]["field_names"].clone(),
                        )
                    })
                    .unwrap_or((json!({}), json!([])));
                let cfg = match conf.get("inference_config") {
                    Some(c) => merge_inference_config(&model_cfg, c),
                    None => model_cfg,
                };
                // LocalModel.infer: none of the model's input fields in the document gives a
                // warning instead of a prediction.
                let any_input = field_names.as_array().is_some_and(|names| {
                    names
                        .iter()
                        .filter_map(Value::as_str)
                        .any(|n| util::get_field(&input, n).is_some_and(|v| !v.is_null()))
                });
                let mut result = if any_input {
                    crate::model::evaluate_with_config(&def, &input, &cfg)?
                } else {
                    json!({"warning": format!(
                        "Model [{mid}] could not be inferred as all fields were missing"
                    )})
                };
                if let Some(o) = result.as_object_mut() {
                    o.entry("model_id").or_insert_with(|| json!(mid));
                }
                util::set_field(&mut doc["_source"], &target, result);
                Ok(())
            }
            other => {
                let what = match other {
                    "script" => conf
                        .get("id")
                        .and_then(|i| i.as_str())
                        .map(|i| format!("script(id={i}{tag})"))
                        .unwrap_or_else(|| format!("script(inline{tag})")),
                    _ => format!(
                        "{other}({}{tag})",
                        field.map(|f| format!("field={f}")).unwrap_or_default()
                    ),
                };
                self.skipped.push(what);
                Ok(())
            }
        }
    }

    fn run_pipeline(&mut self, p: &Value, doc: &mut Value) -> Result<(), String> {
        let procs = p
            .get("processors")
            .and_then(|x| x.as_array())
            .cloned()
            .unwrap_or_default();
        let of = p.get("on_failure").and_then(|x| x.as_array()).cloned();
        self.run_processors(&procs, of.as_ref(), doc)
    }
}

fn merge_inference_config(model: &Value, over: &Value) -> Value {
    let mut out = model.clone();
    if let (Some(o), Some(m)) = (over.as_object(), out.as_object_mut()) {
        for (k, v) in o {
            match (m.get_mut(k), v) {
                (Some(Value::Object(dst)), Value::Object(src)) => {
                    for (a, b) in src {
                        dst.insert(a.clone(), b.clone());
                    }
                }
                _ => {
                    m.insert(k.clone(), v.clone());
                }
            }
        }
    }
    out
}

fn simulate(sh: &Shared, r: &Req, id: Option<&str>) -> Result<Resp, Resp> {
    let body = body_json(r)?;
    let pipeline = match (id, body.get("pipeline")) {
        (Some(id), _) => sh
            .st()
            .pipelines
            .get(id)
            .cloned()
            .ok_or_else(|| not_found(&format!("pipeline [{id}] does not exist")))?,
        (None, Some(p)) => p.clone(),
        (None, None) => {
            return Err(err(
                400,
                "parse_exception",
                "[pipeline] required property is missing",
            ));
        }
    };
    let Some(docs) = body.get("docs").and_then(|d| d.as_array()) else {
        return Err(err(
            400,
            "parse_exception",
            "[docs] required property is missing",
        ));
    };
    let mut out = Vec::new();
    for d in docs {
        let mut doc = json!({
            "_index": d.get("_index").cloned().unwrap_or(json!("_index")),
            "_id": d.get("_id").cloned().unwrap_or(json!("_id")),
            "_version": "-3",
            "_source": d.get("_source").cloned().unwrap_or(json!({})),
            "_ingest": {"timestamp": util::now_iso()},
        });
        let mut sim = Sim {
            sh,
            skipped: vec![],
            depth: 0,
        };
        let res = sim.run_pipeline(&pipeline, &mut doc);
        let mut entry = match res {
            Ok(()) => json!({"doc": doc}),
            Err(e) => {
                json!({"error": es_error_body(400, "illegal_argument_exception", &e)["error"]})
            }
        };
        if !sim.skipped.is_empty() {
            entry["_standin_skipped"] = json!(sim.skipped);
        }
        out.push(entry);
    }
    Ok(Resp::json(200, &json!({"docs": out})))
}

// ---------------------------------------------------------------- templates, settings, data streams

fn put_index_template(sh: &Shared, r: &Req, name: &str, legacy: bool) -> Result<Resp, Resp> {
    if !legacy {
        // Keys of ReservedComposableIndexTemplateAction: `composable_index_template:<name>`
        // (8.7+), which is also how the error names them.
        let key = format!("composable_index_template:{name}");
        let st = sh.st();
        if let Some(ns) = st
            .reserved
            .get(&(RESERVED_TEMPLATES.to_string(), name.to_string()))
        {
            return Err(err(
                400,
                "illegal_argument_exception",
                &format!(
                    "Failed to process request [org.elasticsearch.action.admin.indices.template.put.TransportPutComposableIndexTemplateAction$Request/unset] with errors: [[{key}] set as read-only by [{ns}]]"
                ),
            ));
        }
    }
    let mut body = body_json(r)?;
    if !legacy {
        normalize_template_settings(&mut body);
    }
    let mut st = sh.st();
    let map = if legacy {
        &mut st.legacy_templates
    } else {
        &mut st.index_templates
    };
    if r.flag("create") && map.contains_key(name) {
        return Err(err(
            400,
            "illegal_argument_exception",
            &format!("index template [{name}] already exists"),
        ));
    }
    map.insert(name.into(), body);
    Ok(ack())
}

/// A composable template's `template.settings` as Elasticsearch keeps them: parsed into
/// `Settings` (`Template`'s parser, `Settings.fromXContent`) with the `index.` prefix added to
/// bare keys (`MetadataIndexTemplateService`, `normalizePrefix(INDEX_SETTING_PREFIX)`), and so
/// rendered back nested with string values, whether they came flat or nested.
fn normalize_template_settings(body: &mut Value) {
    let Some(settings) = body.pointer_mut("/template/settings") else {
        return;
    };
    let flat = indices::flat_index_settings(settings);
    let as_strings: Map<String, Value> = flat
        .into_iter()
        .map(|(k, v)| {
            let v = match v {
                Value::String(s) => Value::String(s),
                Value::Null => Value::Null,
                // List settings stay lists (of strings).
                Value::Array(a) => Value::Array(
                    a.into_iter()
                        .map(|x| match x {
                            Value::String(s) => Value::String(s),
                            other => Value::String(other.to_string()),
                        })
                        .collect(),
                ),
                other => Value::String(other.to_string()),
            };
            (k, v)
        })
        .collect();
    *settings = nest(&Value::Object(as_strings));
}

fn get_index_template(sh: &Shared, name: Option<&str>) -> Resp {
    let st = sh.st();
    let (ids, _) = select_ids(st.index_templates.keys(), name);
    if ids.is_empty() && name.is_some_and(|n| !n.contains('*')) {
        return not_found(&format!(
            "index template matching [{}] not found",
            name.unwrap_or("")
        ));
    }
    let list: Vec<Value> = ids
        .iter()
        .map(|i| json!({"name": i, "index_template": st.index_templates[i]}))
        .collect();
    Resp::json(200, &json!({"index_templates": list}))
}

pub(crate) fn flatten(prefix: &str, v: &Value, out: &mut Map<String, Value>) {
    match v {
        Value::Object(o) => {
            for (k, x) in o {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, x, out);
            }
        }
        other => {
            out.insert(prefix.to_string(), other.clone());
        }
    }
}

fn put_settings(sh: &Shared, r: &Req, index: Option<&str>) -> Result<Resp, Resp> {
    let body = body_json(r)?;
    let settings = body.get("settings").cloned().unwrap_or(body);
    let flat2 = indices::flat_index_settings(&settings);
    let mut st = sh.st();
    let (targets, missing) = indices::resolve(&st, index);
    if let Some(m) = missing.first().filter(|_| !r.flag("ignore_unavailable")) {
        return Err(err(
            404,
            "index_not_found_exception",
            &format!("no such index [{m}]"),
        ));
    }
    for t in targets {
        let entry = st.index_settings.entry(t).or_insert_with(|| json!({}));
        let o = entry.as_object_mut().expect("object");
        for (k, v) in &flat2 {
            if v.is_null() {
                o.remove(k);
            } else {
                o.insert(k.clone(), v.clone());
            }
        }
    }
    Ok(ack())
}

fn nest(flat: &Value) -> Value {
    let mut out = json!({});
    if let Some(o) = flat.as_object() {
        for (k, v) in o {
            util::set_field(&mut out, k, v.clone());
        }
    }
    out
}

/// GET `{index}/_settings/{name}`: concrete indices (data streams answer with their backing
/// indices), settings filtered by `name`; an index whose filtered settings are empty is left out
/// unless `include_defaults` (`GetSettingsResponse.toXContent`). Every index has `index.uuid`.
fn get_settings(sh: &Shared, r: &Req, index: Option<&str>, name: Option<&str>) -> Resp {
    let st = sh.st();
    let (ids, missing) = indices::resolve(&st, index);
    if let Some(m) = missing.first().filter(|_| !r.flag("ignore_unavailable")) {
        return err(
            404,
            "index_not_found_exception",
            &format!("no such index [{m}]"),
        );
    }
    let names: Vec<&str> = name
        .filter(|n| *n != "_all")
        .map(|n| n.split(',').collect())
        .unwrap_or_default();
    let mut out = Map::new();
    for i in ids {
        let mut flat = st.index_settings[&i]
            .as_object()
            .cloned()
            .unwrap_or_default();
        flat.entry("index.uuid")
            .or_insert_with(|| json!(index_uuid(&i)));
        if !names.is_empty() {
            flat.retain(|k, _| names.iter().any(|n| wildcard_match(n, k)));
        }
        if flat.is_empty() && !r.flag("include_defaults") {
            continue;
        }
        out.insert(i, json!({"settings": nest(&Value::Object(flat))}));
    }
    Resp::json(200, &Value::Object(out))
}

/// A stable stand-in `index.uuid` (real ones are random base64 of 22 chars).
fn index_uuid(index: &str) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    index.hash(&mut h);
    format!("dgastandin{:012x}", h.finish() & 0xffff_ffff_ffff)
}

fn get_data_stream(sh: &Shared, name: Option<&str>) -> Resp {
    let st = sh.st();
    let (ids, missing) = select_ids(st.data_streams.keys(), name);
    if let Some(m) = missing.first() {
        return err(
            404,
            "index_not_found_exception",
            &format!("no such index [{m}]"),
        );
    }
    let list: Vec<Value> = ids
        .iter()
        .map(|i| {
            let mut d = st.data_streams[i].clone();
            if let Some(o) = d.as_object_mut() {
                o.entry("name").or_insert_with(|| json!(i));
                o.entry("status").or_insert_with(|| json!("GREEN"));
            }
            d
        })
        .collect();
    Resp::json(200, &json!({"data_streams": list}))
}

// ---------------------------------------------------------------- anomaly detection jobs / datafeeds

fn put_job(sh: &Shared, r: &Req, id: &str) -> Result<Resp, Resp> {
    let mut body = body_json(r)?;
    if !valid_id(id) || id.len() > 64 {
        return Err(err(
            400,
            "illegal_argument_exception",
            &format!(
                "Invalid job_id; '{id}' can contain lowercase alphanumeric (a-z and 0-9), hyphens or underscores; must start and end with alphanumeric"
            ),
        ));
    }
    let detectors_ok = body
        .get("analysis_config")
        .and_then(|a| a.get("detectors"))
        .and_then(|d| d.as_array())
        .is_some_and(|d| !d.is_empty());
    if !detectors_ok {
        return Err(err(400, "status_exception", "No detectors configured"));
    }
    if body.get("data_description").is_none() {
        return Err(err(
            400,
            "illegal_argument_exception",
            "[data_description] must not be null",
        ));
    }
    let mut st = sh.st();
    if st.jobs.contains_key(id) {
        return Err(err(
            400,
            "resource_already_exists_exception",
            &format!("The job cannot be created with the Id '{id}'. The Id is already used."),
        ));
    }
    let o = body
        .as_object_mut()
        .ok_or_else(|| err(400, "parse_exception", "job must be an object"))?;
    o.insert("job_id".into(), json!(id));
    o.insert("job_type".into(), json!("anomaly_detector"));
    o.insert("job_version".into(), json!(sh.cfg.es_version));
    o.insert("create_time".into(), json!(util::now_millis()));
    o.entry("groups").or_insert_with(|| json!([]));
    o.entry("results_index_name")
        .or_insert_with(|| json!("shared"));
    o.entry("allow_lazy_open").or_insert_with(|| json!(false));
    o.insert(
        "model_snapshot_retention_days".into(),
        o.get("model_snapshot_retention_days")
            .cloned()
            .unwrap_or(json!(10)),
    );
    st.jobs.insert(
        id.into(),
        Job {
            config: body.clone(),
            state: "closed".into(),
        },
    );
    Ok(Resp::json(200, &body))
}

fn get_jobs(sh: &Shared, r: &Req, id: Option<&str>, stats: bool) -> Resp {
    let st = sh.st();
    let (ids, missing) = select_ids(st.jobs.keys(), id);
    let allow_no_match = r.param("allow_no_match") != Some("false");
    if let Some(m) = missing.first() {
        return not_found(&format!("No known job with id '{m}'"));
    }
    if ids.is_empty() && !allow_no_match && id.is_some() {
        return not_found(&format!("No known job with id '{}'", id.unwrap_or("")));
    }
    if stats {
        let list: Vec<Value> = ids
            .iter()
            .map(|i| {
                json!({"job_id": i, "state": st.jobs[i].state, "data_counts": {"job_id": i, "processed_record_count": 0}, "model_size_stats": {"job_id": i, "result_type": "model_size_stats", "model_bytes": 0, "memory_status": "ok"}, "forecasts_stats": {"total": 0}, "timing_stats": {"job_id": i, "bucket_count": 0}})
            })
            .collect();
        return Resp::json(200, &json!({"count": list.len(), "jobs": list}));
    }
    let list: Vec<Value> = ids.iter().map(|i| st.jobs[i].config.clone()).collect();
    Resp::json(200, &json!({"count": list.len(), "jobs": list}))
}

/// `POST _ml/anomaly_detectors/{id}/_update`, after Elasticsearch's `JobUpdate`
/// (x-pack/plugin/core/.../ml/job/config/JobUpdate.java): the REST parser takes a fixed set of
/// fields (an unknown one is refused by the object parser), and `mergeWithJob` sets each given
/// field in place, `custom_settings` as a whole map. Answers the updated job.
fn update_job(sh: &Shared, r: &Req, id: &str) -> Result<Resp, Resp> {
    const UPDATABLE: &[&str] = &[
        "job_id",
        "groups",
        "description",
        "detectors",
        "model_plot_config",
        "analysis_limits",
        "background_persist_interval",
        "renormalization_window_days",
        "results_retention_days",
        "system_annotations_retention_days",
        "model_snapshot_retention_days",
        "daily_model_snapshot_retention_after_days",
        "categorization_filters",
        "per_partition_categorization",
        "custom_settings",
        "allow_lazy_open",
        "model_prune_window",
    ];
    let body = body_json(r)?;
    let update = body
        .as_object()
        .ok_or_else(|| err(400, "parse_exception", "request body must be an object"))?;
    if let Some(k) = update.keys().find(|k| !UPDATABLE.contains(&k.as_str())) {
        return Err(err(
            400,
            "x_content_parse_exception",
            &format!("[1:2] [job_update] unknown field [{k}]"),
        ));
    }
    if let Some(cs) = update.get("custom_settings")
        && !cs.is_object()
    {
        return Err(err(
            400,
            "x_content_parse_exception",
            "[job_update] custom_settings doesn't support values of type: VALUE_STRING",
        ));
    }
    let mut st = sh.st();
    let Some(job) = st.jobs.get_mut(id) else {
        return Err(not_found(&format!("No known job with id '{id}'")));
    };
    let cfg = job
        .config
        .as_object_mut()
        .ok_or_else(|| err(500, "exception", "stored job is not an object"))?;
    for (k, v) in update {
        // Only the simple top-level fields are modelled; the nested ones are not used here.
        if matches!(
            k.as_str(),
            "groups" | "description" | "custom_settings" | "allow_lazy_open"
        ) {
            cfg.insert(k.clone(), v.clone());
        }
    }
    Ok(Resp::json(200, &job.config))
}

fn delete_job(sh: &Shared, r: &Req, id: &str) -> Resp {
    let mut st = sh.st();
    let Some(job) = st.jobs.get(id) else {
        return not_found(&format!("No known job with id '{id}'"));
    };
    let force = r.flag("force");
    if job.state == "opened" && !force {
        return err(
            409,
            "status_exception",
            &format!("Cannot delete job [{id}] because the job is opened"),
        );
    }
    let feed = st
        .datafeeds
        .iter()
        .find(|(_, d)| d.config["job_id"] == json!(id));
    if let Some((df, _)) = feed
        && !force
    {
        return err(
            409,
            "status_exception",
            &format!("Cannot delete job [{id}] because datafeed [{df}] refers to it"),
        );
    }
    if force {
        st.datafeeds.retain(|_, d| d.config["job_id"] != json!(id));
    }
    st.jobs.remove(id);
    ack()
}

fn open_close_job(sh: &Shared, id: &str, open: bool) -> Resp {
    let mut st = sh.st();
    if open {
        if let Some(j) = st.jobs.get_mut(id) {
            j.state = "opened".into();
            return Resp::json(200, &json!({"opened": true, "node": "dga-standin-node"}));
        }
        return not_found(&format!("No known job with id '{id}'"));
    }
    let (ids, missing) = select_ids(st.jobs.keys(), Some(id));
    if let Some(m) = missing.first() {
        return not_found(&format!("No known job with id '{m}'"));
    }
    for i in ids {
        if st
            .datafeeds
            .values()
            .any(|d| d.config["job_id"] == json!(i) && d.state == "started")
        {
            return err(
                409,
                "status_exception",
                &format!("cannot close job [{i}], datafeed hasn't been stopped"),
            );
        }
        if let Some(j) = st.jobs.get_mut(&i) {
            j.state = "closed".into();
        }
    }
    Resp::json(200, &json!({"closed": true}))
}

fn put_datafeed(sh: &Shared, r: &Req, id: &str) -> Result<Resp, Resp> {
    let mut body = body_json(r)?;
    let job_id = body
        .get("job_id")
        .and_then(|j| j.as_str())
        .map(String::from);
    let Some(job_id) = job_id else {
        return Err(err(
            400,
            "action_request_validation_exception",
            "Validation Failed: 1: a job_id must be set;",
        ));
    };
    let indices_ok = body
        .get("indices")
        .or_else(|| body.get("indexes"))
        .and_then(|i| i.as_array())
        .is_some_and(|a| !a.is_empty());
    if !indices_ok {
        return Err(err(
            400,
            "illegal_argument_exception",
            "[indices] must not be empty",
        ));
    }
    let mut st = sh.st();
    if !st.jobs.contains_key(&job_id) {
        return Err(not_found(&format!("No known job with id '{job_id}'")));
    }
    if st.datafeeds.contains_key(id) {
        return Err(err(
            400,
            "resource_already_exists_exception",
            &format!("A datafeed with id [{id}] already exists"),
        ));
    }
    if let Some((other, _)) = st
        .datafeeds
        .iter()
        .find(|(_, d)| d.config["job_id"] == json!(job_id))
    {
        // `ExceptionsHelper.conflictStatusException` in `TransportPutDatafeedAction`: a plain
        // 409 `status_exception`, unlike the 400 for a datafeed id that is taken.
        return Err(err(
            409,
            "status_exception",
            &format!("A datafeed [{other}] already exists for job [{job_id}]"),
        ));
    }
    let o = body
        .as_object_mut()
        .ok_or_else(|| err(400, "parse_exception", "datafeed must be an object"))?;
    o.insert("datafeed_id".into(), json!(id));
    o.entry("query").or_insert_with(|| json!({"match_all": {}}));
    o.entry("scroll_size").or_insert_with(|| json!(1000));
    st.datafeeds.insert(
        id.into(),
        Job {
            config: body.clone(),
            state: "stopped".into(),
        },
    );
    Ok(Resp::json(200, &body))
}

fn get_datafeeds(sh: &Shared, r: &Req, id: Option<&str>, stats: bool) -> Resp {
    let st = sh.st();
    let (ids, missing) = select_ids(st.datafeeds.keys(), id);
    let allow_no_match = r.param("allow_no_match") != Some("false");
    if let Some(m) = missing.first() {
        return not_found(&format!("No datafeed with id [{m}] exists"));
    }
    if ids.is_empty() && !allow_no_match && id.is_some() {
        return not_found(&format!(
            "No datafeed with id [{}] exists",
            id.unwrap_or("")
        ));
    }
    if stats {
        let list: Vec<Value> = ids
            .iter()
            .map(|i| json!({"datafeed_id": i, "state": st.datafeeds[i].state}))
            .collect();
        return Resp::json(200, &json!({"count": list.len(), "datafeeds": list}));
    }
    let list: Vec<Value> = ids.iter().map(|i| st.datafeeds[i].config.clone()).collect();
    Resp::json(200, &json!({"count": list.len(), "datafeeds": list}))
}

fn delete_datafeed(sh: &Shared, r: &Req, id: &str) -> Resp {
    let mut st = sh.st();
    let Some(df) = st.datafeeds.get(id) else {
        return not_found(&format!("No datafeed with id [{id}] exists"));
    };
    if df.state == "started" && !r.flag("force") {
        return err(
            409,
            "status_exception",
            &format!("Cannot delete datafeed [{id}] while its status is started"),
        );
    }
    st.datafeeds.remove(id);
    ack()
}

fn start_stop_datafeed(sh: &Shared, id: &str, start: bool) -> Resp {
    let mut st = sh.st();
    let Some(df) = st.datafeeds.get(id).cloned() else {
        return not_found(&format!("No datafeed with id [{id}] exists"));
    };
    if start {
        let job_id = df.config["job_id"].as_str().unwrap_or("").to_string();
        if st.jobs.get(&job_id).map(|j| j.state.as_str()) != Some("opened") {
            return err(
                409,
                "status_exception",
                &format!("cannot start datafeed [{id}] because job [{job_id}] is closed"),
            );
        }
        // A fresh stack without DNS data: real-stack.md (authoritative for this stand-in)
        // records the answer as 409 `status_exception` from
        // `DatafeedNodeSelector.checkDatafeedTaskCanBeCreated`, naming the first pattern that
        // resolves to nothing. (Our reading of `TransportStartDatafeedAction` found a field-caps
        // check that may answer 400 "no index matches datafeed's indices" first; the operator
        // treats both as waiting for data: `elasticsearch.rs` `no_data_yet`.)
        let indices: Vec<String> = df
            .config
            .get("indices")
            .or_else(|| df.config.get("indexes"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect();
        let (found, _) = crate::indices::resolve(&st, Some(&indices.join(",")));
        if found.is_empty() {
            let first = indices.first().cloned().unwrap_or_default();
            return err(
                409,
                "status_exception",
                &format!(
                    "No node found to start datafeed [{id}], allocation explanation [cannot start datafeed [{id}] because index [{first}] does not exist, is closed, or is still initializing.]"
                ),
            );
        }
        st.datafeeds.get_mut(id).expect("exists").state = "started".into();
        Resp::json(200, &json!({"started": true, "node": "dga-standin-node"}))
    } else {
        st.datafeeds.get_mut(id).expect("exists").state = "stopped".into();
        Resp::json(200, &json!({"stopped": true}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn if_forms() {
        let d = json!({"type": "dns", "dns": {"question": {"type": "A"}}});
        assert_eq!(
            eval_if("ctx.type=='dns' && ctx.dns.question.type != 'PTR'", &d),
            Some(true)
        );
        assert_eq!(eval_if("ctx.type == 'http'", &d), Some(false));
        assert_eq!(eval_if("ctx?.dns?.question?.type == \"A\"", &d), Some(true));
        assert_eq!(eval_if("ctx.x == null", &d), Some(true));
        assert_eq!(eval_if("ctx.a || ctx.b", &d), None);
        assert_eq!(eval_if("ctx.type.contains('d')", &d), None);
    }
}
