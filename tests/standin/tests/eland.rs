//! Ground truth for the stand-in's tree-ensemble evaluator that no one on this project wrote:
//! XGBoost and scikit-learn models converted by eland (Elastic's own converter) must score in
//! the stand-in as the source library's `predict_proba` does. `tests/eland/convert.py` trains,
//! converts and scores; `tests/eland/venv.sh` installs eland, xgboost-cpu and scikit-learn once
//! into a cached venv (tests/run.sh calls it first). Skipped, saying so, only without python3.

use std::path::PathBuf;
use std::process::Command;

use dga_standin::{Standin, StandinConfig};
use serde_json::{Value, json};

fn ground_truth() -> Option<Vec<Value>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../eland");
    let venv = Command::new("bash")
        .arg(dir.join("venv.sh"))
        .output()
        .expect("run tests/eland/venv.sh");
    if venv.status.code() == Some(3) {
        eprintln!(
            "SKIPPED eland ground truth: {}",
            String::from_utf8_lossy(&venv.stderr).trim()
        );
        return None;
    }
    assert!(
        venv.status.success(),
        "tests/eland/venv.sh failed: {}",
        String::from_utf8_lossy(&venv.stderr)
    );
    let python = String::from_utf8(venv.stdout).unwrap();
    let out = Command::new(python.trim())
        .arg(dir.join("convert.py"))
        .output()
        .expect("run convert.py");
    assert!(
        out.status.success(),
        "convert.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(serde_json::from_slice(&out.stdout).expect("convert.py prints JSON"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eland_converted_models_score_as_their_source_library() {
    let Some(models) = ground_truth() else { return };
    let s = Standin::start(StandinConfig::default()).await.unwrap();
    let c = reqwest::Client::new();
    let es = |m: reqwest::Method, p: &str| {
        c.request(m, format!("{}{p}", s.es_url()))
            .basic_auth("elastic", Some("changeme"))
    };
    assert!(models.len() >= 5);
    for m in &models {
        let name = m["name"].as_str().unwrap();
        let r = es(reqwest::Method::PUT, &format!("/_ml/trained_models/{name}"))
            .json(&m["model"])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{name}: {}", r.text().await.unwrap());
        let docs: Vec<Value> = m["docs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| json!({"_source": d}))
            .collect();
        let body = json!({
            "pipeline": {"processors": [{"inference": {"model_id": name, "target_field": "ml"}}]},
            "docs": docs,
        });
        let answer: Value = es(reqwest::Method::POST, "/_ingest/pipeline/_simulate")
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let expected = m["p1"].as_array().unwrap();
        let got = answer["docs"].as_array().unwrap();
        assert_eq!(got.len(), expected.len(), "{name}");
        let (mut worst, mut missing) = (0.0f64, 0);
        for (i, (d, p1)) in got.iter().zip(expected).enumerate() {
            missing += usize::from(m["docs"][i].as_object().unwrap().len() < 6);
            let classes = d["doc"]["_source"]["ml"]["top_classes"]
                .as_array()
                .unwrap_or_else(|| panic!("{name} doc {i}: no top_classes in {d}"));
            let p = classes
                .iter()
                .find(|c| c["class_name"] == "1")
                .and_then(|c| c["class_probability"].as_f64())
                .unwrap();
            let diff = (p - p1.as_f64().unwrap()).abs();
            assert!(
                diff < 1e-6,
                "{name} doc {i} {}: stand-in {p}, library {p1}",
                m["docs"][i]
            );
            worst = worst.max(diff);
        }
        if name.starts_with("xgboost") {
            assert!(
                missing > 100,
                "{name}: only {missing} documents miss a value"
            );
        }
        println!(
            "{name}: {} documents ({missing} with missing values), largest difference {worst:.2e}",
            got.len()
        );
    }
}
