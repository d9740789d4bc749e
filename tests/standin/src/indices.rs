//! Index name resolution, data streams and rollover, as Elasticsearch answers them.
//!
//! - An index expression (`packetbeat-*,foo`) resolves to concrete indices; a data stream it
//!   names or matches resolves to its backing indices `.ds-<stream>-<yyyy.MM.dd>-<generation>`
//!   (`IndexNameExpressionResolver`, `DataStream.getDefaultBackingIndexName`). Wildcards do not
//!   match hidden (dot-prefixed) indices.
//! - Creating a data stream or rolling it over makes a new write index whose settings come from
//!   the highest-priority matching index template's `template.settings`
//!   (`MetadataCreateIndexService`, `MetadataRolloverService`): settings put on an earlier backing
//!   index do not carry over.

use serde_json::{Map, Value, json};

use crate::server::State;
use crate::util::wildcard_match;

/// The stand-in's fixed date for backing index names (no clock in names keeps tests exact).
pub const BACKING_DATE: &str = "2026.12.05";

pub fn backing_index_name(stream: &str, generation: u64) -> String {
    format!(".ds-{stream}-{BACKING_DATE}-{generation:06}")
}

/// Concrete indices an expression names (sorted), and the plain names that matched nothing.
pub fn resolve(st: &State, expr: Option<&str>) -> (Vec<String>, Vec<String>) {
    let expr = expr.unwrap_or("_all");
    let mut out: Vec<String> = Vec::new();
    let mut missing = Vec::new();
    let all = expr == "_all" || expr == "*" || expr.is_empty();
    for pat in expr.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let wild = all || pat.contains('*');
        let matches = |name: &str| {
            if all {
                return true;
            }
            if wild && name.starts_with('.') && !pat.starts_with('.') {
                return false;
            }
            wildcard_match(pat, name)
        };
        let mut hits: Vec<String> = st
            .index_settings
            .keys()
            .filter(|i| matches(i))
            .cloned()
            .collect();
        for (name, ds) in &st.data_streams {
            if matches(name) {
                hits.extend(backing_indices(ds));
            }
        }
        if hits.is_empty() && !wild {
            missing.push(pat.to_string());
        }
        out.extend(hits);
    }
    out.sort();
    out.dedup();
    (out, missing)
}

fn backing_indices(ds: &Value) -> Vec<String> {
    ds.get("indices")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|i| i.get("index_name").and_then(Value::as_str))
        .map(str::to_string)
        .collect()
}

/// `index.*` keys of a settings object, flat (`{"index":{"a":1}}` and `{"a":1}` → `index.a`).
pub fn flat_index_settings(settings: &Value) -> Map<String, Value> {
    let mut flat = Map::new();
    crate::es::flatten("", settings, &mut flat);
    flat.into_iter()
        .map(|(k, v)| {
            let k = if k.starts_with("index.") {
                k
            } else {
                format!("index.{k}")
            };
            (k, v)
        })
        .collect()
}

/// The highest-priority composable template whose patterns match `name`.
fn matching_template<'a>(st: &'a State, name: &str) -> Option<(&'a String, &'a Value)> {
    st.index_templates
        .iter()
        .filter(|(_, t)| {
            t.get("index_patterns")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .any(|p| wildcard_match(p, name))
        })
        .max_by_key(|(_, t)| t.get("priority").and_then(Value::as_i64).unwrap_or(0))
}

fn new_backing_index(st: &mut State, stream: &str, generation: u64, template: &Value) -> String {
    let index = backing_index_name(stream, generation);
    let mut settings =
        flat_index_settings(template.pointer("/template/settings").unwrap_or(&json!({})));
    settings.insert("index.hidden".into(), json!("true"));
    st.index_settings
        .insert(index.clone(), Value::Object(settings));
    index
}

/// Creates data stream `name` from its matching index template (which must have `data_stream`).
pub fn create_data_stream(st: &mut State, name: &str) -> Result<(), String> {
    let (tname, template) = matching_template(st, name)
        .filter(|(_, t)| t.get("data_stream").is_some())
        .map(|(n, t)| (n.clone(), t.clone()))
        .ok_or_else(|| format!("no matching index template found for data stream [{name}]"))?;
    let index = new_backing_index(st, name, 1, &template);
    st.data_streams.insert(
        name.into(),
        json!({
            "name": name,
            "timestamp_field": {"name": "@timestamp"},
            "indices": [{"index_name": index, "index_uuid": index}],
            "generation": 1,
            "status": "GREEN",
            "template": tname,
            "hidden": false
        }),
    );
    Ok(())
}

/// Rolls data stream `name` over: a new write index from the index template as it is now.
pub fn rollover(st: &mut State, name: &str) -> Result<String, String> {
    let ds = st
        .data_streams
        .get(name)
        .cloned()
        .ok_or_else(|| format!("no such data stream [{name}]"))?;
    let generation = ds.get("generation").and_then(Value::as_u64).unwrap_or(1) + 1;
    let template = matching_template(st, name)
        .map(|(_, t)| t.clone())
        .ok_or_else(|| format!("no matching index template found for data stream [{name}]"))?;
    let index = new_backing_index(st, name, generation, &template);
    let ds = st.data_streams.get_mut(name).expect("checked");
    ds["generation"] = json!(generation);
    if let Some(list) = ds["indices"].as_array_mut() {
        list.push(json!({"index_name": index, "index_uuid": index}));
    }
    Ok(index)
}
