//! Proves the installed enrichment works: the router pipeline is run with `_simulate` on canary
//! DNS documents and every one must come back with a valid `ml_is_dga.malicious_prediction`
//! (0 or 1) and `malicious_probability` (0.0 to 1.0). After the router, the model is asked once
//! more on its own (the probe): that proves the model is there and answers even where the
//! scripts before it cannot run, which lets a resync trust the run instead of reading the model.
//! A failure is reported, never hidden, and never removes a working install.

use serde_json::{Value, json};

use crate::elasticsearch::Elasticsearch;
use crate::error::Error;

/// Canary documents, shaped as Packetbeat writes DNS events.
pub fn canaries() -> Vec<(&'static str, Value)> {
    let dns = |name: &str, registered: Value, tld: &str, sub: Value| {
        json!({"_source": {
            "@timestamp": "2026-01-01T00:00:00Z",
            "type": "dns",
            "event": {"category": ["network"], "dataset": "network_traffic.dns"},
            "network": {"protocol": "dns"},
            "dns": {"response_code": "NOERROR", "question": {
                "name": name, "type": "A", "registered_domain": registered,
                "top_level_domain": tld, "subdomain": sub
            }}
        }})
    };
    vec![
        (
            "a benign name",
            dns(
                "www.wikipedia.org",
                json!("wikipedia.org"),
                "org",
                json!("www"),
            ),
        ),
        (
            "a DGA-looking name",
            dns(
                "xjqkw3vbzq7yt.biz",
                json!("xjqkw3vbzq7yt.biz"),
                "biz",
                Value::Null,
            ),
        ),
        (
            "a name without registered_domain",
            dns("printer-42", Value::Null, "", Value::Null),
        ),
    ]
}

/// Where the probe writes its answer on each canary.
pub const PROBE_FIELD: &str = "dga_operator_probe";

/// Where the model being installed writes its answer under the processor's `target_field`:
/// the `results_field` (and, when it asks for top classes, the `top_classes_results_field`) of
/// its stored `inference_config`. Elasticsearch's defaults (`predicted_value`, `top_classes`)
/// hold only where the model sets none (`ClassificationConfig`, `RegressionConfig`); the real
/// DGA model sets `malicious_prediction` and `top_classes`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResultFields {
    pub results: String,
    /// Present when the model's config asks for top classes (`num_top_classes` not 0).
    pub top_classes: Option<String>,
}

impl ResultFields {
    /// From a model's `inference_config` (`{"classification": {...}}` or `{"regression": {...}}`).
    pub fn of_model(inference_config: Option<&Value>) -> ResultFields {
        let (kind, cfg) = inference_config
            .and_then(Value::as_object)
            .and_then(|o| o.iter().next())
            .map(|(k, v)| (k.as_str(), v))
            .unwrap_or(("classification", &Value::Null));
        let text = |k: &str| cfg.get(k).and_then(Value::as_str).filter(|s| !s.is_empty());
        let results = text("results_field")
            .unwrap_or("predicted_value")
            .to_string();
        let wants_top = kind == "classification"
            && cfg
                .get("num_top_classes")
                .and_then(Value::as_i64)
                .is_some_and(|n| n != 0);
        ResultFields {
            results,
            top_classes: wants_top.then(|| {
                text("top_classes_results_field")
                    .unwrap_or("top_classes")
                    .to_string()
            }),
        }
    }
}

/// The `_simulate` body: the stored router as ingest runs it, then the probe.
pub fn request(router: &str, model_id: &str) -> Value {
    let docs: Vec<Value> = canaries().into_iter().map(|(_, d)| d).collect();
    json!({
        "pipeline": {
            "description": "dga-operator canary run",
            "processors": [
                {"pipeline": {"name": router}},
                {"inference": {"model_id": model_id, "target_field": PROBE_FIELD}}
            ]
        },
        "docs": docs
    })
}

/// What a canary run proved.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    /// Every canary scored; holds a short summary.
    Passed(String),
    /// The enrichment, the model or the licence failed; says what.
    Failed(String),
    /// The server skipped processors it cannot run (the stand-in and painless), so the scores
    /// are missing without anything having failed: nothing proven either way.
    Unproven(String),
}

impl Verdict {
    pub fn passed(&self) -> bool {
        matches!(self, Verdict::Passed(_))
    }

    pub fn message(&self) -> &str {
        match self {
            Verdict::Passed(m) | Verdict::Failed(m) | Verdict::Unproven(m) => m,
        }
    }
}

/// Checks a `_simulate` answer; `fields` says where the model writes its answer.
pub fn check(answer: &Value, fields: &ResultFields) -> Verdict {
    match scores(answer, fields) {
        Ok(summary) => Verdict::Passed(summary),
        Err((problem, true)) => Verdict::Unproven(problem),
        Err((problem, false)) => Verdict::Failed(problem),
    }
}

/// The summary, or what is wrong and whether only skipped processors are to blame.
fn scores(answer: &Value, fields: &ResultFields) -> Result<String, (String, bool)> {
    let failed = |m: String| (m, false);
    let docs = answer
        .get("docs")
        .and_then(Value::as_array)
        .ok_or_else(|| failed("the _simulate answer has no docs".into()))?;
    let names = canaries();
    if docs.len() != names.len() {
        return Err(failed(format!(
            "_simulate returned {} documents for {} canaries",
            docs.len(),
            names.len()
        )));
    }
    let mut scores = Vec::new();
    for ((what, _), d) in names.iter().zip(docs) {
        if let Some(e) = d.get("error") {
            let reason = e.get("reason").and_then(Value::as_str).unwrap_or("error");
            return Err(failed(format!("{what}: the pipeline failed: {reason}")));
        }
        let skipped = d
            .get("_standin_skipped")
            .and_then(Value::as_array)
            .filter(|s| !s.is_empty());
        let src = d
            .pointer("/doc/_source")
            .ok_or_else(|| failed(format!("{what}: no document in the answer")))?;
        if let Some(msg) = src.pointer("/error/message").and_then(Value::as_str) {
            return Err(failed(format!("{what}: the pipeline reported `{msg}`")));
        }
        let probe = src.get(PROBE_FIELD);
        if probe.and_then(|p| p.get(&fields.results)).is_none() {
            let got = match probe.and_then(|p| p.get("warning")).and_then(Value::as_str) {
                Some(w) => format!(": it warned `{w}`"),
                None => format!(
                    ", got {}",
                    probe
                        .map(Value::to_string)
                        .unwrap_or_else(|| "nothing".into())
                ),
            };
            return Err(failed(format!(
                "{what}: the model gave no prediction in {PROBE_FIELD}.{} when asked directly{got}",
                fields.results
            )));
        }
        if let Some(top) = &fields.top_classes
            && !probe.and_then(|p| p.get(top)).is_some_and(Value::is_array)
        {
            return Err(failed(format!(
                "{what}: the model gave no {PROBE_FIELD}.{top} list when asked directly"
            )));
        }
        let pred = src.pointer("/ml_is_dga/malicious_prediction");
        let prob = src
            .pointer("/ml_is_dga/malicious_probability")
            .and_then(Value::as_f64);
        let pred_ok = pred
            .and_then(Value::as_f64)
            .is_some_and(|p| p == 0.0 || p == 1.0)
            || pred
                .and_then(Value::as_str)
                .is_some_and(|p| p == "0" || p == "1");
        match (pred_ok, prob) {
            (true, Some(p)) if (0.0..=1.0).contains(&p) => scores.push(format!("{what} {p:.2}")),
            _ => {
                let why = match skipped {
                    Some(s) => format!(
                        " (the server skipped processors it cannot run: {})",
                        s.iter()
                            .filter_map(Value::as_str)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    None => String::new(),
                };
                return Err((
                    format!(
                        "{what}: expected ml_is_dga.malicious_prediction 0/1 and malicious_probability 0..1, got {}{why}",
                        src.get("ml_is_dga")
                            .map(Value::to_string)
                            .unwrap_or_else(|| "no ml_is_dga".into())
                    ),
                    skipped.is_some(),
                ));
            }
        }
    }
    Ok(format!("canaries scored: {}", scores.join(", ")))
}

/// Runs the canaries through the router pipeline. `Err` is a request that got no answer.
pub async fn verify(
    es: &Elasticsearch,
    router: &str,
    model_id: &str,
    fields: &ResultFields,
) -> Result<Verdict, Error> {
    let answer = es.simulate(&request(router, model_id)).await?;
    Ok(check(&answer, fields))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The real DGA model's stored config (real-stack.md).
    fn real() -> ResultFields {
        ResultFields::of_model(Some(&json!({"classification": {
            "num_top_classes": 2, "prediction_field_type": "number",
            "results_field": "malicious_prediction", "top_classes_results_field": "top_classes"
        }})))
    }

    fn answer(results: Vec<Value>) -> Value {
        let probe = json!({"malicious_prediction": 0, "prediction_probability": 0.9,
            "top_classes": [{"class_name": 0, "class_probability": 0.9, "class_score": 0.9}]});
        json!({"docs": results.into_iter().map(|ml| json!({"doc": {"_source": {"ml_is_dga": ml, PROBE_FIELD: probe}}})).collect::<Vec<_>>()})
    }

    #[test]
    fn valid_scores_pass() {
        let ok = answer(vec![
            json!({"malicious_prediction": 0, "malicious_probability": 0.01}),
            json!({"malicious_prediction": 1, "malicious_probability": 0.99}),
            json!({"malicious_prediction": 0, "malicious_probability": 0.0}),
        ]);
        assert!(check(&ok, &real()).passed());
        assert!(
            check(&ok, &real())
                .message()
                .contains("DGA-looking name 0.99")
        );
    }

    #[test]
    fn missing_or_invalid_scores_fail_with_the_reason() {
        let bad = answer(vec![
            json!({"malicious_prediction": 0, "malicious_probability": 0.01}),
            json!({"malicious_prediction": 2, "malicious_probability": 0.5}),
            json!({}),
        ]);
        let v = check(&bad, &real());
        assert!(matches!(v, Verdict::Failed(_)), "{v:?}");
        assert!(v.message().contains("DGA-looking name"));
        let mut skipped = answer(vec![json!({"predicted_value": 1}), json!({}), json!({})]);
        skipped["docs"][0]["_standin_skipped"] = json!(["script(id=x)"]);
        let v = check(&skipped, &real());
        assert!(matches!(v, Verdict::Unproven(_)), "{v:?}");
        let e = v.message();
        assert!(
            e.contains("skipped processors") && e.contains("script(id=x)"),
            "{e}"
        );
        let failed = json!({"docs": [{"error": {"reason": "boom"}}, {}, {}]});
        assert!(matches!(check(&failed, &real()), Verdict::Failed(m) if m.contains("boom")));
        assert!(!check(&json!({"docs": []}), &real()).passed());
    }

    #[test]
    fn a_model_that_does_not_answer_fails_even_when_the_scores_look_right() {
        let mut a = answer(vec![
            json!({"malicious_prediction": 0, "malicious_probability": 0.01}),
            json!({"malicious_prediction": 1, "malicious_probability": 0.99}),
            json!({"malicious_prediction": 0, "malicious_probability": 0.0}),
        ]);
        a["docs"][1]["doc"]["_source"]
            .as_object_mut()
            .unwrap()
            .remove(PROBE_FIELD);
        // Even where the server skipped the scripts: the probe does not depend on them.
        a["docs"][1]["_standin_skipped"] = json!(["script(id=x)"]);
        let v = check(&a, &real());
        assert!(
            matches!(&v, Verdict::Failed(e) if e.contains("DGA-looking name") && e.contains("asked directly")),
            "{v:?}"
        );
    }

    #[test]
    fn result_fields_follow_the_models_config_with_elasticsearchs_defaults() {
        let r = real();
        assert_eq!(r.results, "malicious_prediction");
        assert_eq!(r.top_classes.as_deref(), Some("top_classes"));
        // No config, or one that sets nothing: Elasticsearch's defaults, no top classes.
        for cfg in [None, Some(json!({"classification": {}}))] {
            let d = ResultFields::of_model(cfg.as_ref());
            assert_eq!(d.results, "predicted_value");
            assert_eq!(d.top_classes, None);
        }
        let d = ResultFields::of_model(Some(&json!({"classification": {"num_top_classes": -1}})));
        assert_eq!(d.top_classes.as_deref(), Some("top_classes"));
        let reg = ResultFields::of_model(Some(&json!({"regression": {"results_field": "score"}})));
        assert_eq!((reg.results.as_str(), reg.top_classes), ("score", None));
    }

    #[test]
    fn the_probe_reads_the_models_own_results_field() {
        let ok = answer(vec![
            json!({"malicious_prediction": 0, "malicious_probability": 0.01}),
            json!({"malicious_prediction": 1, "malicious_probability": 0.99}),
            json!({"malicious_prediction": 0, "malicious_probability": 0.0}),
        ]);
        assert!(check(&ok, &real()).passed());
        // The same answer read with Elasticsearch's default field fails and names the field.
        let v = check(&ok, &ResultFields::of_model(None));
        assert!(
            matches!(&v, Verdict::Failed(e) if e.contains("dga_operator_probe.predicted_value")),
            "{v:?}"
        );
        // A model that asks for top classes but gave none fails.
        let mut a = ok.clone();
        a["docs"][0]["doc"]["_source"][PROBE_FIELD]
            .as_object_mut()
            .unwrap()
            .remove("top_classes");
        let v = check(&a, &real());
        assert!(
            matches!(&v, Verdict::Failed(e) if e.contains("top_classes")),
            "{v:?}"
        );
        // The all-fields-missing warning is quoted.
        let mut w = ok;
        w["docs"][2]["doc"]["_source"][PROBE_FIELD] =
            json!({"warning": "Model [m] could not be inferred as all fields were missing"});
        let v = check(&w, &real());
        assert!(
            matches!(&v, Verdict::Failed(e) if e.contains("all fields were missing")),
            "{v:?}"
        );
    }
}
