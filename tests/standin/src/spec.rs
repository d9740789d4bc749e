//! Spec checking against the official API descriptions embedded from `spec/`.
//!
//! Elasticsearch: the rest-api-spec JSON files. A request matches an endpoint when the path
//! template (`{part}` = exactly one non-empty segment) and the method match; when several
//! templates match, the one with the most literal segments wins. Enforced: known path, allowed
//! method, every query parameter is declared by the endpoint or by `_common.json`, boolean
//! parameters carry `true`/`false`/empty, a body is present when `body.required`, and no body is
//! sent to an endpoint that declares none.
//!
//! Kibana: the bundled detection-engine OpenAPI 3.0 document (plus `GET /api/status`, whose path
//! object is not in the extract: it is treated as known with the query parameters `v7format` and
//! `v8format`). Paths may carry a `/s/{space_id}` prefix. Enforced: known path and method, declared
//! query parameters only (values checked against their schema, required ones present), JSON
//! request bodies validated against the operation's `requestBody` schema by [`validate`].
//!
//! Schema keywords enforced by [`validate`]: `$ref`, `allOf`, `anyOf`, `oneOf` (loosely: at least
//! one branch must match), `discriminator` (mapping picks the branch), `type`, `nullable`, `enum`,
//! `required`, `properties`, `items`, `additionalProperties` (false or a schema; `false` is not
//! applied to objects that are a branch of an `allOf`), `minimum`, `maximum`, `minLength`,
//! `maxLength`, `minItems`, `maxItems`, `format: uuid`. Ignored: `pattern`, other `format`s,
//! `not`, `uniqueItems`, defaults.

use serde_json::{Map, Value, json};
use std::collections::{BTreeSet, HashMap};
use std::sync::OnceLock;

macro_rules! es_files {
    ($dir:literal; $($f:literal),* $(,)?) => {
        &[$(($f, include_str!(concat!("../spec/", $dir, "/", $f)))),*]
    };
}

/// The endpoints the stand-in serves; each spec set embeds its own copy of every file.
macro_rules! es_spec_set {
    ($dir:literal) => {
        es_files!($dir;
    "cluster.health.json",
    "cluster.state.json",
    "delete_script.json",
    "get_script.json",
    "indices.get_data_stream.json",
    "indices.get_index_template.json",
    "indices.get_settings.json",
    "indices.put_index_template.json",
    "indices.put_settings.json",
    "indices.put_template.json",
    "info.json",
    "ingest.delete_pipeline.json",
    "ingest.get_pipeline.json",
    "ingest.put_pipeline.json",
    "ingest.simulate.json",
    "license.get.json",
    "ml.close_job.json",
    "ml.delete_datafeed.json",
    "ml.delete_job.json",
    "ml.delete_trained_model.json",
    "ml.delete_trained_model_alias.json",
    "ml.get_datafeed_stats.json",
    "ml.get_datafeeds.json",
    "ml.get_job_stats.json",
    "ml.get_jobs.json",
    "ml.get_trained_models.json",
    "ml.get_trained_models_stats.json",
    "ml.infer_trained_model.json",
    "ml.open_job.json",
    "ml.put_datafeed.json",
    "ml.put_job.json",
    "ml.put_trained_model.json",
    "ml.put_trained_model_alias.json",
    "ml.start_datafeed.json",
    "ml.stop_datafeed.json",
    "ml.update_job.json",
    "put_script.json",
        )
    };
}

/// The 8.19 branch copies (`spec/elasticsearch/`, see SOURCES.md section 1).
static ES_FILES_8: &[(&str, &str)] = es_spec_set!("elasticsearch");
/// elastic/elasticsearch main as of 2026-02-10 (`spec/elasticsearch-main/`), for 9.x profiles.
static ES_FILES_MAIN: &[(&str, &str)] = es_spec_set!("elasticsearch-main");

/// Which copy of the rest-api-spec a version profile checks requests against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum SpecSet {
    /// The 8.19 branch files: used for 7.x and 8.x profiles (no 7.x copy is stored here).
    Branch8_19,
    /// elastic/elasticsearch main, 2026-02-10: used for 9.x profiles.
    Main2026_02_10,
}

impl SpecSet {
    fn files(self) -> &'static [(&'static str, &'static str)] {
        match self {
            SpecSet::Branch8_19 => ES_FILES_8,
            SpecSet::Main2026_02_10 => ES_FILES_MAIN,
        }
    }
}

static ES_COMMON: &str = include_str!("../spec/elasticsearch/_common.json");
static KIBANA_YAML: &str =
    include_str!("../spec/kibana/security_solution_detections_api_2023_10_31.bundled.schema.yaml");
pub static KIBANA_STATUS_SCHEMAS: &str =
    include_str!("../spec/kibana/core_status_schemas.extract.json");

#[derive(Debug, Clone, PartialEq)]
enum Seg {
    Lit(String),
    Part(String),
}

fn parse_template(t: &str) -> Vec<Seg> {
    t.split('/')
        .filter(|s| !s.is_empty())
        .map(|s| {
            if s.starts_with('{') && s.ends_with('}') {
                Seg::Part(s[1..s.len() - 1].to_string())
            } else {
                Seg::Lit(s.to_string())
            }
        })
        .collect()
}

/// Split a request path into percent-decoded segments.
pub fn split_path(path: &str) -> Vec<String> {
    path.split('/')
        .filter(|s| !s.is_empty())
        .map(|s| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        })
        .collect()
}

fn match_segs(tpl: &[Seg], segs: &[String]) -> Option<HashMap<String, String>> {
    if tpl.len() != segs.len() {
        return None;
    }
    let mut parts = HashMap::new();
    for (t, s) in tpl.iter().zip(segs) {
        match t {
            Seg::Lit(l) if l == s => {}
            Seg::Lit(_) => return None,
            Seg::Part(p) => {
                parts.insert(p.clone(), s.clone());
            }
        }
    }
    Some(parts)
}

fn literal_count(tpl: &[Seg]) -> usize {
    tpl.iter().filter(|s| matches!(s, Seg::Lit(_))).count()
}

struct EsPath {
    segs: Vec<Seg>,
    methods: Vec<String>,
}

struct EsEndpoint {
    name: String,
    paths: Vec<EsPath>,
    params: HashMap<String, String>, // name -> type
    has_body: bool,
    body_required: bool,
}

struct EsSpec {
    endpoints: Vec<EsEndpoint>,
    common: HashMap<String, String>,
}

fn params_of(v: &Value) -> HashMap<String, String> {
    v.get("params")
        .and_then(|p| p.as_object())
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        v.get("type")
                            .and_then(|t| t.as_str())
                            .unwrap_or("string")
                            .to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn es_spec(set: SpecSet) -> &'static EsSpec {
    static SPEC_8: OnceLock<EsSpec> = OnceLock::new();
    static SPEC_MAIN: OnceLock<EsSpec> = OnceLock::new();
    let cell = match set {
        SpecSet::Branch8_19 => &SPEC_8,
        SpecSet::Main2026_02_10 => &SPEC_MAIN,
    };
    cell.get_or_init(|| {
        let mut endpoints = Vec::new();
        for (file, text) in set.files() {
            let v: Value =
                serde_json::from_str(text).unwrap_or_else(|e| panic!("spec {file}: {e}"));
            for (name, def) in v.as_object().expect("spec object") {
                let paths = def["url"]["paths"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .map(|p| EsPath {
                                segs: parse_template(p["path"].as_str().unwrap_or("")),
                                methods: p["methods"]
                                    .as_array()
                                    .map(|m| {
                                        m.iter()
                                            .filter_map(|x| x.as_str().map(String::from))
                                            .collect()
                                    })
                                    .unwrap_or_default(),
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                endpoints.push(EsEndpoint {
                    name: name.clone(),
                    paths,
                    params: params_of(def),
                    has_body: def.get("body").is_some(),
                    body_required: def
                        .get("body")
                        .and_then(|b| b.get("required"))
                        .and_then(|r| r.as_bool())
                        .unwrap_or(false),
                });
            }
        }
        let common: Value = serde_json::from_str(ES_COMMON).expect("_common.json");
        EsSpec {
            endpoints,
            common: params_of(&common),
        }
    })
}

/// A request that matched the Elasticsearch spec.
#[derive(Debug, Clone)]
pub struct EsMatch {
    pub api: String,
    pub parts: HashMap<String, String>,
}

/// Why an ES request is off spec; `api` is set when the endpoint was identified.
#[derive(Debug, Clone)]
pub struct OffSpec {
    pub api: Option<String>,
    pub reason: String,
}

/// Check an Elasticsearch request against the 8.19 rest-api-spec.
pub fn es_check(
    method: &str,
    path: &str,
    query: &[(String, String)],
    body_len: usize,
) -> Result<EsMatch, OffSpec> {
    es_check_in(SpecSet::Branch8_19, method, path, query, body_len)
}

/// Check an Elasticsearch request against one copy of the rest-api-spec.
pub fn es_check_in(
    set: SpecSet,
    method: &str,
    path: &str,
    query: &[(String, String)],
    body_len: usize,
) -> Result<EsMatch, OffSpec> {
    let spec = es_spec(set);
    let segs = split_path(path);
    let mut path_found = false;
    let mut allowed: BTreeSet<String> = BTreeSet::new();
    let mut best: Option<(usize, &EsEndpoint, HashMap<String, String>)> = None;
    for ep in &spec.endpoints {
        for p in &ep.paths {
            if let Some(parts) = match_segs(&p.segs, &segs) {
                path_found = true;
                allowed.extend(p.methods.iter().cloned());
                if p.methods.iter().any(|m| m == method) {
                    let lc = literal_count(&p.segs);
                    if best.as_ref().map(|(b, _, _)| lc > *b).unwrap_or(true) {
                        best = Some((lc, ep, parts));
                    }
                }
            }
        }
    }
    let Some((_, ep, parts)) = best else {
        let reason = if path_found {
            format!(
                "Incorrect HTTP method for uri [{path}] and method [{method}], allowed: [{}]",
                allowed.into_iter().collect::<Vec<_>>().join(", ")
            )
        } else {
            format!("no handler found for uri [{path}] and method [{method}]")
        };
        return Err(OffSpec { api: None, reason });
    };
    let api = Some(ep.name.clone());
    for (k, v) in query {
        let ty = ep.params.get(k).or_else(|| spec.common.get(k));
        match ty {
            None => {
                return Err(OffSpec {
                    api,
                    reason: format!("request [{path}] contains unrecognized parameter: [{k}]"),
                });
            }
            Some(t) if t == "boolean" && !matches!(v.as_str(), "" | "true" | "false") => {
                return Err(OffSpec {
                    api,
                    reason: format!(
                        "Failed to parse value [{v}] as only [true] or [false] are allowed."
                    ),
                });
            }
            Some(t) if (t == "int" || t == "number") && v.parse::<f64>().is_err() => {
                return Err(OffSpec {
                    api,
                    reason: format!("Failed to parse int parameter [{k}] with value [{v}]"),
                });
            }
            _ => {}
        }
    }
    if ep.body_required && body_len == 0 {
        return Err(OffSpec {
            api,
            reason: "request body is required".into(),
        });
    }
    if !ep.has_body && body_len > 0 {
        return Err(OffSpec {
            api,
            reason: format!("request [{method} {path}] does not support having a body"),
        });
    }
    Ok(EsMatch {
        api: ep.name.clone(),
        parts,
    })
}

// ---------------------------------------------------------------- Kibana

pub struct KbOp {
    pub operation_id: String,
    segs: Vec<Seg>,
    method: String,
    /// (name, required, schema)
    query: Vec<(String, bool, Value)>,
    body_schema: Option<Value>,
    body_required: bool,
    body_json: bool,
}

pub struct KbSpec {
    pub doc: Value,
    ops: Vec<KbOp>,
}

pub fn kibana_spec() -> &'static KbSpec {
    static SPEC: OnceLock<KbSpec> = OnceLock::new();
    SPEC.get_or_init(|| {
        let doc: Value = serde_yaml::from_str(KIBANA_YAML).expect("kibana openapi yaml");
        let mut ops = Vec::new();
        if let Some(paths) = doc["paths"].as_object() {
            for (p, item) in paths {
                let Some(item) = item.as_object() else {
                    continue;
                };
                for (m, op) in item {
                    let Some(opid) = op.get("operationId").and_then(|o| o.as_str()) else {
                        continue;
                    };
                    let query = op
                        .get("parameters")
                        .and_then(|a| a.as_array())
                        .map(|a| {
                            a.iter()
                                .map(|x| resolve(&doc, x))
                                .filter(|x| x["in"] == "query")
                                .map(|x| {
                                    (
                                        x["name"].as_str().unwrap_or("").to_string(),
                                        x["required"].as_bool().unwrap_or(false),
                                        x.get("schema").cloned().unwrap_or(json!({})),
                                    )
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    let rb = op.get("requestBody").map(|r| resolve(&doc, r).clone());
                    let (body_schema, body_json) = match &rb {
                        Some(r) => match r["content"].get("application/json") {
                            Some(c) => (c.get("schema").cloned(), true),
                            None => (None, false),
                        },
                        None => (None, false),
                    };
                    ops.push(KbOp {
                        operation_id: opid.to_string(),
                        segs: parse_template(p),
                        method: m.to_uppercase(),
                        query,
                        body_schema,
                        body_required: rb
                            .as_ref()
                            .and_then(|r| r["required"].as_bool())
                            .unwrap_or(false),
                        body_json,
                    });
                }
            }
        }
        // GET /api/status: the path object is not in the extracted spec; treat it as known.
        ops.push(KbOp {
            operation_id: "get-status".into(),
            segs: parse_template("/api/status"),
            method: "GET".into(),
            query: vec![
                ("v7format".into(), false, json!({"type": "boolean"})),
                ("v8format".into(), false, json!({"type": "boolean"})),
            ],
            body_schema: None,
            body_required: false,
            body_json: false,
        });
        KbSpec { doc, ops }
    })
}

fn resolve<'a>(root: &'a Value, v: &'a Value) -> &'a Value {
    let mut cur = v;
    for _ in 0..32 {
        match cur.get("$ref").and_then(|r| r.as_str()) {
            Some(r) if r.starts_with('#') => match root.pointer(&r[1..]) {
                Some(t) => cur = t,
                None => return cur,
            },
            _ => return cur,
        }
    }
    cur
}

/// Result of a Kibana spec check.
pub struct KbMatch {
    pub operation_id: String,
    /// The space (`default` without a `/s/{space}` prefix).
    pub space: String,
    /// The path with the space prefix removed.
    pub path: String,
}

/// Why a Kibana request is off spec.
pub struct KbOffSpec {
    pub api: Option<String>,
    pub status: u16,
    pub message: String,
}

/// Strip an optional `/s/{space}` prefix.
pub fn kibana_space(path: &str) -> (String, String) {
    if let Some(rest) = path.strip_prefix("/s/") {
        let (space, tail) = rest.split_once('/').unwrap_or((rest, ""));
        return (space.to_string(), format!("/{tail}"));
    }
    ("default".to_string(), path.to_string())
}

/// Check a Kibana request against the OpenAPI document.
pub fn kibana_check(
    method: &str,
    path: &str,
    query: &[(String, String)],
    body: &[u8],
) -> Result<KbMatch, KbOffSpec> {
    let spec = kibana_spec();
    let (space, bare) = kibana_space(path);
    let segs = split_path(&bare);
    let mut path_found = false;
    let mut op = None;
    for o in &spec.ops {
        if match_segs(&o.segs, &segs).is_some() {
            path_found = true;
            if o.method == method {
                op = Some(o);
            }
        }
    }
    let Some(op) = op else {
        let _ = path_found;
        return Err(KbOffSpec {
            api: None,
            status: 404,
            message: "Not Found".into(),
        });
    };
    let api = Some(op.operation_id.clone());
    for (k, v) in query {
        let Some((_, _, schema)) = op.query.iter().find(|(n, _, _)| n == k) else {
            return Err(KbOffSpec {
                api,
                status: 400,
                message: format!("[request query.{k}]: definition for this key is missing"),
            });
        };
        let sch = resolve(&spec.doc, schema);
        let typed = query_value(&spec.doc, sch, v);
        if let Err(e) = validate(&spec.doc, sch, &typed) {
            return Err(KbOffSpec {
                api,
                status: 400,
                message: format!("[request query.{k}]: {e}"),
            });
        }
    }
    for (n, req, _) in &op.query {
        if *req && !query.iter().any(|(k, _)| k == n) {
            return Err(KbOffSpec {
                api,
                status: 400,
                message: format!("[request query.{n}]: Required"),
            });
        }
    }
    if op.body_json {
        let parsed: Option<Value> = if body.is_empty() {
            None
        } else {
            match serde_json::from_slice(body) {
                Ok(v) => Some(v),
                Err(e) => {
                    return Err(KbOffSpec {
                        api,
                        status: 400,
                        message: format!("[request body]: invalid JSON: {e}"),
                    });
                }
            }
        };
        match (parsed, &op.body_schema) {
            (None, _) if op.body_required => {
                return Err(KbOffSpec {
                    api,
                    status: 400,
                    message:
                        "[request body]: expected a plain object value, but found [null] instead."
                            .into(),
                });
            }
            (Some(v), Some(schema)) => {
                if let Err(e) = validate(&spec.doc, schema, &v) {
                    return Err(KbOffSpec {
                        api,
                        status: 400,
                        message: format!("[request body]: {e}"),
                    });
                }
            }
            _ => {}
        }
    } else if !body.is_empty() && op.body_schema.is_none() && method == "GET" {
        return Err(KbOffSpec {
            api,
            status: 400,
            message: "[request body]: a GET request cannot have a body".into(),
        });
    }
    Ok(KbMatch {
        operation_id: op.operation_id.clone(),
        space,
        path: bare,
    })
}

fn query_value(root: &Value, schema: &Value, v: &str) -> Value {
    let ty = schema.get("type").and_then(|t| t.as_str()).unwrap_or("");
    match ty {
        "integer" | "number" => v
            .parse::<i64>()
            .map(Value::from)
            .ok()
            .or_else(|| v.parse::<f64>().ok().map(|f| json!(f)))
            .unwrap_or_else(|| json!(v)),
        "boolean" => match v {
            "true" => json!(true),
            "false" => json!(false),
            _ => json!(v),
        },
        "array" => {
            let item = schema
                .get("items")
                .map(|i| resolve(root, i))
                .cloned()
                .unwrap_or(json!({}));
            Value::Array(v.split(',').map(|x| query_value(root, &item, x)).collect())
        }
        _ => json!(v),
    }
}

/// Validate `v` against an OpenAPI 3.0 schema (see the module docs for the keywords enforced).
pub fn validate(root: &Value, schema: &Value, v: &Value) -> Result<(), String> {
    validate_at(root, schema, v, "", false, 0)
}

fn at(path: &str) -> String {
    if path.is_empty() {
        String::new()
    } else {
        format!("{path}: ")
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn join(path: &str, k: &str) -> String {
    if path.is_empty() {
        k.to_string()
    } else {
        format!("{path}.{k}")
    }
}

fn validate_at(
    root: &Value,
    schema: &Value,
    v: &Value,
    path: &str,
    in_allof: bool,
    depth: u32,
) -> Result<(), String> {
    if depth > 64 {
        return Ok(());
    }
    let schema = resolve(root, schema);
    let Some(s) = schema.as_object() else {
        return Ok(());
    };
    if v.is_null() && s.get("nullable").and_then(|n| n.as_bool()).unwrap_or(false) {
        return Ok(());
    }
    if let Some(all) = s.get("allOf").and_then(|a| a.as_array()) {
        for sub in all {
            validate_at(root, sub, v, path, true, depth + 1)?;
        }
    }
    for key in ["anyOf", "oneOf"] {
        if let Some(alts) = s.get(key).and_then(|a| a.as_array()) {
            if let Some(d) = s.get("discriminator") {
                let prop = d["propertyName"].as_str().unwrap_or("type");
                let mapping = d.get("mapping").and_then(|m| m.as_object());
                match (v.get(prop).and_then(|x| x.as_str()), mapping) {
                    (Some(tag), Some(m)) => match m.get(tag).and_then(|r| r.as_str()) {
                        Some(r) => {
                            validate_at(root, &json!({"$ref": r}), v, path, in_allof, depth + 1)?
                        }
                        None => {
                            let opts: Vec<String> = m.keys().map(|k| format!("'{k}'")).collect();
                            return Err(format!(
                                "{}Invalid discriminator value. Expected {}",
                                at(&join(path, prop)),
                                opts.join(" | ")
                            ));
                        }
                    },
                    (None, Some(_)) => return Err(format!("{}Required", at(&join(path, prop)))),
                    _ => any_of(root, alts, v, path, in_allof, depth)?,
                }
            } else {
                any_of(root, alts, v, path, in_allof, depth)?;
            }
        }
    }
    if let Some(e) = s.get("enum").and_then(|e| e.as_array())
        && !e.contains(v)
    {
        let opts: Vec<String> = e.iter().map(|x| x.to_string()).collect();
        return Err(format!(
            "{}Invalid enum value. Expected {}, received {}",
            at(path),
            opts.join(" | "),
            v
        ));
    }
    if let Some(t) = s.get("type").and_then(|t| t.as_str()) {
        let ok = match t {
            "string" => v.is_string(),
            "integer" => {
                v.is_i64() || v.is_u64() || v.as_f64().map(|f| f.fract() == 0.0).unwrap_or(false)
            }
            "number" => v.is_number(),
            "boolean" => v.is_boolean(),
            "array" => v.is_array(),
            "object" => v.is_object(),
            _ => true,
        };
        if !ok {
            return Err(format!(
                "{}Expected {t}, received {}",
                at(path),
                type_name(v)
            ));
        }
    }
    match v {
        Value::String(st) => {
            let n = st.chars().count() as u64;
            if let Some(m) = s.get("minLength").and_then(|m| m.as_u64())
                && n < m
            {
                return Err(format!(
                    "{}String must contain at least {m} character(s)",
                    at(path)
                ));
            }
            if let Some(m) = s.get("maxLength").and_then(|m| m.as_u64())
                && n > m
            {
                return Err(format!(
                    "{}String must contain at most {m} character(s)",
                    at(path)
                ));
            }
            if s.get("format").and_then(|f| f.as_str()) == Some("uuid") && !is_uuid(st) {
                return Err(format!("{}Invalid uuid", at(path)));
            }
        }
        Value::Number(num) => {
            let f = num.as_f64().unwrap_or(0.0);
            if let Some(m) = s.get("minimum").and_then(|m| m.as_f64())
                && f < m
            {
                return Err(format!(
                    "{}Number must be greater than or equal to {m}",
                    at(path)
                ));
            }
            if let Some(m) = s.get("maximum").and_then(|m| m.as_f64())
                && f > m
            {
                return Err(format!(
                    "{}Number must be less than or equal to {m}",
                    at(path)
                ));
            }
        }
        Value::Array(a) => {
            if let Some(m) = s.get("minItems").and_then(|m| m.as_u64())
                && (a.len() as u64) < m
            {
                return Err(format!(
                    "{}Array must contain at least {m} element(s)",
                    at(path)
                ));
            }
            if let Some(m) = s.get("maxItems").and_then(|m| m.as_u64())
                && (a.len() as u64) > m
            {
                return Err(format!(
                    "{}Array must contain at most {m} element(s)",
                    at(path)
                ));
            }
            if let Some(items) = s.get("items") {
                for (i, x) in a.iter().enumerate() {
                    validate_at(
                        root,
                        items,
                        x,
                        &join(path, &i.to_string()),
                        false,
                        depth + 1,
                    )?;
                }
            }
        }
        Value::Object(o) => validate_object(root, s, o, path, in_allof, depth)?,
        _ => {}
    }
    Ok(())
}

fn validate_object(
    root: &Value,
    s: &Map<String, Value>,
    o: &Map<String, Value>,
    path: &str,
    in_allof: bool,
    depth: u32,
) -> Result<(), String> {
    if let Some(req) = s.get("required").and_then(|r| r.as_array()) {
        for r in req.iter().filter_map(|r| r.as_str()) {
            if !o.contains_key(r) {
                return Err(format!("{}Required", at(&join(path, r))));
            }
        }
    }
    let props = s.get("properties").and_then(|p| p.as_object());
    for (k, val) in o {
        match props.and_then(|p| p.get(k)) {
            Some(ps) => validate_at(root, ps, val, &join(path, k), false, depth + 1)?,
            None => match s.get("additionalProperties") {
                Some(Value::Bool(false)) if !in_allof => {
                    return Err(format!("{}Unrecognized key: \"{k}\"", at(path)));
                }
                Some(ap @ Value::Object(_)) => {
                    validate_at(root, ap, val, &join(path, k), false, depth + 1)?
                }
                _ => {}
            },
        }
    }
    Ok(())
}

fn any_of(
    root: &Value,
    alts: &[Value],
    v: &Value,
    path: &str,
    in_allof: bool,
    depth: u32,
) -> Result<(), String> {
    let mut errs = Vec::new();
    for a in alts {
        match validate_at(root, a, v, path, in_allof, depth + 1) {
            Ok(()) => return Ok(()),
            Err(e) => errs.push(e),
        }
    }
    if errs.is_empty() {
        return Ok(());
    }
    Err(format!(
        "{}Invalid input, no alternative matched ({})",
        at(path),
        errs.join("; ")
    ))
}

fn is_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| {
            if [8, 13, 18, 23].contains(&i) {
                *c == b'-'
            } else {
                c.is_ascii_hexdigit()
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn es_known_requests_match() {
        let m = es_check("PUT", "/_ml/trained_models/dga_1", &[], 10).unwrap();
        assert_eq!(m.api, "ml.put_trained_model");
        assert_eq!(m.parts["model_id"], "dga_1");
        assert_eq!(es_check("GET", "/", &[], 0).unwrap().api, "info");
        assert_eq!(
            es_check("GET", "/_license", &[], 0).unwrap().api,
            "license.get"
        );
        assert_eq!(
            es_check("POST", "/_ingest/pipeline/_simulate", &[], 5)
                .unwrap()
                .api,
            "ingest.simulate"
        );
        assert_eq!(
            es_check("POST", "/_ingest/pipeline/p1/_simulate", &[], 5)
                .unwrap()
                .api,
            "ingest.simulate"
        );
        assert_eq!(
            es_check(
                "DELETE",
                "/_ml/trained_models/x",
                &q(&[("force", "true")]),
                0
            )
            .unwrap()
            .api,
            "ml.delete_trained_model"
        );
        assert_eq!(
            es_check(
                "GET",
                "/_ml/trained_models",
                &q(&[("size", "10"), ("pretty", "")]),
                0
            )
            .unwrap()
            .api,
            "ml.get_trained_models"
        );
        // the template with more literal segments wins
        assert_eq!(
            es_check("GET", "/_ml/trained_models/_stats", &[], 0)
                .unwrap()
                .api,
            "ml.get_trained_models_stats"
        );
        assert_eq!(
            es_check("GET", "/_ml/anomaly_detectors/_stats", &[], 0)
                .unwrap()
                .api,
            "ml.get_job_stats"
        );
        assert_eq!(
            es_check("PUT", "/idx-1/_settings", &[], 2).unwrap().api,
            "indices.put_settings"
        );
    }

    #[test]
    fn es_rejections() {
        let e = es_check("GET", "/_nope/x", &[], 0).unwrap_err();
        assert!(e.reason.contains("no handler found"), "{}", e.reason);
        let e = es_check("POST", "/_ml/trained_models/x", &[], 5).unwrap_err();
        assert!(e.reason.contains("Incorrect HTTP method"), "{}", e.reason);
        let e = es_check("GET", "/_ml/trained_models/x", &q(&[("foo", "1")]), 0).unwrap_err();
        assert_eq!(
            e.reason,
            "request [/_ml/trained_models/x] contains unrecognized parameter: [foo]"
        );
        assert_eq!(e.api.as_deref(), Some("ml.get_trained_models"));
        let e = es_check("PUT", "/_ml/trained_models/x", &[], 0).unwrap_err();
        assert!(e.reason.contains("body is required"));
        let e = es_check(
            "DELETE",
            "/_ml/trained_models/x",
            &q(&[("force", "yes")]),
            0,
        )
        .unwrap_err();
        assert!(e.reason.contains("only [true] or [false]"));
    }

    #[test]
    fn kibana_matching() {
        let m = kibana_check(
            "GET",
            "/s/sec/api/detection_engine/rules",
            &q(&[("rule_id", "x")]),
            b"",
        )
        .ok()
        .unwrap();
        assert_eq!(m.operation_id, "ReadRule");
        assert_eq!(m.space, "sec");
        assert!(kibana_check("GET", "/api/status", &[], b"").is_ok());
        let e = kibana_check(
            "GET",
            "/api/detection_engine/rules",
            &q(&[("foo", "x")]),
            b"",
        )
        .err()
        .unwrap();
        assert_eq!(e.status, 400);
        let e = kibana_check("GET", "/api/nope", &[], b"").err().unwrap();
        assert_eq!(e.status, 404);
        let e = kibana_check(
            "GET",
            "/api/detection_engine/rules/_find",
            &q(&[("page", "0")]),
            b"",
        )
        .err()
        .unwrap();
        assert!(e.message.contains("greater than"), "{}", e.message);
        let ok = br#"{"type":"query","name":"n","description":"d","risk_score":21,"severity":"low","query":"a:1","language":"kuery"}"#;
        assert!(kibana_check("POST", "/api/detection_engine/rules", &[], ok).is_ok());
        let bad = br#"{"type":"query","name":"n","description":"d","risk_score":210,"severity":"low","query":"a:1"}"#;
        let e = kibana_check("POST", "/api/detection_engine/rules", &[], bad)
            .err()
            .unwrap();
        assert!(
            e.message.starts_with("[request body]: risk_score"),
            "{}",
            e.message
        );
        let bad = br#"{"type":"nope","name":"n"}"#;
        assert!(kibana_check("POST", "/api/detection_engine/rules", &[], bad).is_err());
        let ml = br#"{"type":"machine_learning","name":"n","description":"d","risk_score":21,"severity":"low","anomaly_threshold":75,"machine_learning_job_id":"dga_high_sum_probability"}"#;
        assert!(kibana_check("POST", "/api/detection_engine/rules", &[], ml).is_ok());
        let bulk = br#"{"action":"delete","ids":["a"]}"#;
        assert!(
            kibana_check(
                "POST",
                "/api/detection_engine/rules/_bulk_action",
                &[],
                bulk
            )
            .is_ok()
        );
    }
}
