//! `index.final_pipeline` in a composable index template (`template.settings`). A data stream's
//! new write index (a rollover) takes its settings from the matching template
//! (`MetadataRolloverService` → `MetadataCreateIndexService`), never from the backing index
//! before it: the setting in the template is what keeps a Packetbeat 8 data stream enriched
//! across rollovers with no window. Pure: template JSON in, template JSON out.

use serde_json::{Map, Value};

/// A pipeline setting (`final_pipeline`, `default_pipeline`) of a template, nested
/// (`{"index": {"final_pipeline": ..}}`) or flat (`{"index.final_pipeline": ..}`), as either is
/// accepted on PUT and a GET with `flat_settings` answers flat.
pub fn setting(t: &Value, key: &str) -> Option<String> {
    let settings = t.pointer("/template/settings")?;
    settings
        .pointer(&format!("/index/{key}"))
        .or_else(|| settings.get(format!("index.{key}")))
        .and_then(Value::as_str)
        .map(str::to_string)
}

pub fn final_pipeline(t: &Value) -> Option<String> {
    setting(t, "final_pipeline")
}

pub fn default_pipeline(t: &Value) -> Option<String> {
    setting(t, "default_pipeline")
}

/// Sets (or removes) `index.final_pipeline`, touching nothing else; objects left empty by a
/// removal (`settings.index`, `settings`) go too, so a template the operator wired and unwired
/// reads as it was.
pub fn set_final_pipeline(t: &mut Value, pipeline: Option<&str>) {
    let Some(top) = t.as_object_mut() else {
        return;
    };
    let template = top
        .entry("template")
        .or_insert_with(|| Value::Object(Map::new()));
    let Some(template) = template.as_object_mut() else {
        return;
    };
    let settings = template
        .entry("settings")
        .or_insert_with(|| Value::Object(Map::new()));
    let Some(settings) = settings.as_object_mut() else {
        return;
    };
    settings.remove("index.final_pipeline");
    let index = settings
        .entry("index")
        .or_insert_with(|| Value::Object(Map::new()));
    if let Some(index) = index.as_object_mut() {
        match pipeline {
            Some(p) => {
                index.insert("final_pipeline".into(), Value::String(p.into()));
            }
            None => {
                index.remove("final_pipeline");
            }
        }
    }
    if settings
        .get("index")
        .and_then(Value::as_object)
        .is_some_and(Map::is_empty)
    {
        settings.remove("index");
    }
    if settings.is_empty() {
        template.remove("settings");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_setting_is_added_and_removed_leaving_the_template_as_it_was() {
        let orig = json!({
            "index_patterns": ["packetbeat-8.17.0"], "data_stream": {}, "priority": 150,
            "template": {"settings": {"index": {"number_of_shards": "1"}}, "mappings": {"x": 1}}
        });
        let mut t = orig.clone();
        set_final_pipeline(&mut t, Some("r"));
        assert_eq!(final_pipeline(&t).as_deref(), Some("r"));
        assert_eq!(t["template"]["settings"]["index"]["number_of_shards"], "1");
        set_final_pipeline(&mut t, None);
        assert_eq!(t, orig);

        let bare = json!({"index_patterns": ["p"], "template": {"mappings": {}}});
        let mut t = bare.clone();
        set_final_pipeline(&mut t, Some("r"));
        set_final_pipeline(&mut t, None);
        assert_eq!(t, bare);
        let flat = json!({"template": {"settings": {"index.final_pipeline": "f", "index.default_pipeline": "d"}}});
        assert_eq!(final_pipeline(&flat).as_deref(), Some("f"));
        assert_eq!(default_pipeline(&flat).as_deref(), Some("d"));
    }
}
