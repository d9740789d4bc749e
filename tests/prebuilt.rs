//! Elastic's prebuilt DGA rules through the controller, per Kibana profile (issue 14): a fresh
//! Kibana that offers them (installed through Kibana's prebuilt-rules API and enabled, no custom
//! copy), one that does not (custom rules under the operator's own rule_ids), Elastic's rules
//! already installed by a person (left alone, never recorded or deleted), and rules the old CLI
//! left under Elastic's rule_ids (a Conflict without `overwrite`, adopted with it). Rule ids are
//! taken from the fixture of Elastic's facts, never from the operator's constants.

mod support;

use std::time::Duration;

use dga_operator::controller::Settings;
use dga_standin::StandinConfig;
use dga_standin::bundle::Layout;
use serde_json::{Value, json};
use support::Env;

fn elastic_ids() -> Vec<String> {
    let f: Value =
        serde_json::from_str(include_str!("standin/fixtures/elastic-dga-content.json")).unwrap();
    let mut ids: Vec<String> = f["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["rule_id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

fn spec(tag: &str) -> Value {
    json!({"releaseTag": tag, "clusterRef": {"secretName": "es"}})
}

async fn env(prefix: &str, kibana: &str, dga: bool) -> Env {
    let cfg = StandinConfig {
        kibana_version: kibana.into(),
        kibana_prebuilt_dga: dga,
        ..StandinConfig::default()
    };
    let settings = Settings {
        resync: Duration::from_secs(2),
        ..Settings::default()
    };
    Env::start_with(prefix, cfg, settings).await
}

fn kibana_writes(env: &Env) -> Vec<String> {
    env.standin
        .requests()
        .iter()
        .filter(|r| r.service == dga_standin::Service::Kibana && r.is_write())
        .map(|r| format!("{} {}", r.method, r.path))
        .collect()
}

fn rules_message(m: &dga_operator::api::DgaModel) -> String {
    dga_operator::status::get(&m.status.as_ref().unwrap().conditions, "RulesInstalled")
        .unwrap()
        .message
        .clone()
}

/// The rules holding `id` in the default space.
fn holding(env: &Env, id: &str) -> Vec<Value> {
    env.standin
        .rules("default")
        .into_iter()
        .filter(|r| r["rule_id"] == id)
        .collect()
}

/// A person installs Elastic's rules through Kibana's prebuilt-rules API and enables them.
async fn person_installs(env: &Env, ids: &[String]) {
    let c = reqwest::Client::new();
    let kb = env.standin.kibana_url();
    let review: Value = c
        .post(format!(
            "{kb}/internal/detection_engine/prebuilt_rules/installation/_review"
        ))
        .basic_auth("elastic", Some("changeme"))
        .header("kbn-xsrf", "true")
        .header("elastic-api-version", "1")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let rules: Vec<Value> = review["rules"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| ids.iter().any(|i| r["rule_id"] == json!(i)))
        .map(|r| json!({"rule_id": r["rule_id"], "version": r["version"]}))
        .collect();
    assert_eq!(rules.len(), ids.len(), "{review}");
    let done: Value = c
        .post(format!(
            "{kb}/internal/detection_engine/prebuilt_rules/installation/_perform"
        ))
        .basic_auth("elastic", Some("changeme"))
        .header("kbn-xsrf", "true")
        .header("elastic-api-version", "1")
        .json(&json!({"mode": "SPECIFIC_RULES", "rules": rules}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let objects: Vec<Value> = done["results"]["created"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].clone())
        .collect();
    let s = c
        .post(format!("{kb}/api/detection_engine/rules/_bulk_action"))
        .basic_auth("elastic", Some("changeme"))
        .header("kbn-xsrf", "true")
        .json(&json!({"action": "enable", "ids": objects}))
        .send()
        .await
        .unwrap()
        .status();
    assert!(s.is_success());
}

#[tokio::test]
async fn kibana_offering_elastics_rules_gets_them_installed_and_enabled() {
    offered("prebuilt-fresh", "8.17.0").await;
}

/// 9.5: a paged `_review` (PR #247375) and a `_perform` that answers rule_id and version only
/// (PR #264443); Elastic's ML rule watches the `_ea` job from 9.4.
#[tokio::test]
async fn kibana_9_5_offering_elastics_rules_gets_them_installed_and_enabled() {
    offered("prebuilt-fresh95", "9.5.0").await;
}

async fn offered(prefix: &str, version: &str) {
    let cfg = StandinConfig {
        kibana_version: version.into(),
        es_version: version.into(),
        kibana_prebuilt_dga: true,
        ..StandinConfig::default()
    };
    let settings = Settings {
        resync: Duration::from_secs(2),
        ..Settings::default()
    };
    let env = Env::start_with(prefix, cfg, settings).await;
    if !env.standin_only("Kibana profiles") {
        return env.finish().await;
    }
    let rel = env.publish("ML-DGA-20210126-1", Layout::V1);
    env.secret("es", "changeme").await;
    env.apply("dga", spec(&rel.tag)).await;
    let m = env
        .wait_condition("dga", "RulesInstalled", "True", Some("Installed"))
        .await;
    let msg = rules_message(&m);
    assert!(msg.contains("prebuilt-rules API"), "{msg}");
    assert!(!msg.contains("custom rules"), "{msg}");
    let ids = elastic_ids();
    assert_eq!(m.status.as_ref().unwrap().objects.prebuilt_rules, ids);
    let owner_tag = format!("dga-operator:owner:{}/dga", env.ns.name);
    for id in &ids {
        let h = holding(&env, id);
        assert_eq!(h.len(), 1, "{id}: {h:?}");
        assert_eq!(h[0]["immutable"], true, "{id}");
        assert_eq!(h[0]["enabled"], true, "{id}");
        assert_eq!(h[0]["rule_source"]["is_customized"], false, "{id}");
    }
    assert!(
        !env.standin
            .rules("default")
            .iter()
            .any(|r| r["tags"].to_string().contains(&owner_tag)),
        "no custom rule of the operator"
    );
    // The job Elastic's ML rule watches is there.
    let ml = env
        .standin
        .rules("default")
        .into_iter()
        .find(|r| r["type"] == "machine_learning")
        .unwrap();
    let job = ml["machine_learning_job_id"][0]
        .as_str()
        .unwrap()
        .to_string();
    let facts: Value =
        serde_json::from_str(include_str!("standin/fixtures/elastic-dga-content.json")).unwrap();
    let f = facts["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["type"] == "machine_learning")
        .unwrap();
    let expected = if version.starts_with("9.5") {
        &f["machine_learning_job_id"]
    } else {
        &f["machine_learning_job_id_before_9_4"]
    };
    assert_eq!(&json!(job), expected);
    assert!(env.stack().jobs().await.contains(&job), "{job}");

    // Later passes write nothing to Kibana.
    tokio::time::sleep(Duration::from_secs(1)).await;
    env.standin.clear_requests();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        env.standin
            .requests()
            .iter()
            .any(|r| r.service == dga_standin::Service::Kibana),
        "resyncs ran"
    );
    assert!(kibana_writes(&env).is_empty(), "{:?}", kibana_writes(&env));

    // A person disables one: it stays disabled (their choice wins).
    let mut r = holding(&env, &ids[0]).remove(0);
    r["enabled"] = json!(false);
    env.standin.put_rule("default", r);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(holding(&env, &ids[0])[0]["enabled"], false);

    // Delete removes the prebuilt rules it installed.
    env.delete("dga").await;
    env.wait_gone("dga").await;
    for id in &ids {
        assert!(holding(&env, id).is_empty(), "{id} left behind");
    }
    env.assert_no_off_spec();
    env.finish().await;
}

#[tokio::test]
async fn kibana_without_elastics_rules_gets_custom_rules_under_own_ids() {
    for (kibana, dga, why) in [
        ("8.17.0", false, "security_detection_engine"),
        ("8.8.2", true, "only from 8.9"),
    ] {
        let env = env("prebuilt-none", kibana, dga).await;
        if !env.standin_only("Kibana profiles") {
            return env.finish().await;
        }
        let rel = env.publish("ML-DGA-20210126-1", Layout::V1);
        env.secret("es", "changeme").await;
        env.apply("dga", spec(&rel.tag)).await;
        let m = env
            .wait_condition("dga", "RulesInstalled", "True", Some("Installed"))
            .await;
        let msg = rules_message(&m);
        assert!(
            msg.contains("custom rules") && msg.contains(why),
            "{kibana}: {msg}"
        );
        assert!(m.status.as_ref().unwrap().objects.prebuilt_rules.is_empty());
        let rules = env.standin.rules("default");
        assert_eq!(rules.len(), 4, "{kibana}");
        for id in elastic_ids() {
            assert!(holding(&env, &id).is_empty(), "{kibana}: a rule under {id}");
        }
        assert!(rules.iter().all(|r| r["immutable"] == false));
        env.delete("dga").await;
        env.wait_gone("dga").await;
        assert!(env.standin.rules("default").is_empty());
        env.finish().await;
    }
}

#[tokio::test]
async fn elastics_rules_installed_by_a_person_are_used_and_left_alone() {
    let env = env("prebuilt-person", "8.17.0", true).await;
    if !env.standin_only("Kibana profiles") {
        return env.finish().await;
    }
    let ids = elastic_ids();
    person_installs(&env, &ids).await;
    let before: Vec<Value> = ids.iter().map(|id| holding(&env, id).remove(0)).collect();
    let rel = env.publish("ML-DGA-20210126-1", Layout::V1);
    env.secret("es", "changeme").await;
    env.apply("dga", spec(&rel.tag)).await;
    let m = env
        .wait_condition("dga", "RulesInstalled", "True", Some("Installed"))
        .await;
    let msg = rules_message(&m);
    assert!(msg.contains("already installed by someone else"), "{msg}");
    assert!(m.status.as_ref().unwrap().objects.prebuilt_rules.is_empty());
    assert_eq!(env.standin.rules("default").len(), 4, "no custom copies");
    for (id, b) in ids.iter().zip(&before) {
        assert_eq!(&holding(&env, id)[0], b, "{id} untouched");
    }
    env.delete("dga").await;
    env.wait_gone("dga").await;
    for (id, b) in ids.iter().zip(&before) {
        assert_eq!(&holding(&env, id)[0], b, "{id} not deleted");
    }
    env.finish().await;
}

#[tokio::test]
async fn a_rule_the_old_cli_left_is_adopted_only_with_overwrite() {
    let env = env("prebuilt-cli", "8.17.0", true).await;
    if !env.standin_only("Kibana profiles") {
        return env.finish().await;
    }
    let ids = elastic_ids();
    // The old CLI wrote custom rules under Elastic's rule_ids.
    let left = json!({"rule_id": ids[0], "name": "DGA rule of the old CLI", "description": "d",
        "type": "query", "query": "ml_is_dga.malicious_prediction:1", "language": "kuery",
        "risk_score": 21, "severity": "low", "tags": ["ML-DGA"], "index": ["packetbeat-*"],
        "immutable": false, "enabled": true});
    env.standin.put_rule("default", left);
    let rel = env.publish("ML-DGA-20210126-1", Layout::V1);
    env.secret("es", "changeme").await;
    env.apply("dga", spec(&rel.tag)).await;
    let m = env
        .wait_condition("dga", "RulesInstalled", "False", Some("Conflict"))
        .await;
    let msg = rules_message(&m);
    assert!(msg.contains(&ids[0]) && msg.contains("overwrite"), "{msg}");
    let h = holding(&env, &ids[0]);
    assert_eq!((h.len(), h[0]["immutable"].clone()), (1, json!(false)));

    let mut s = spec(&rel.tag);
    s["overwrite"] = json!(true);
    env.apply("dga", s).await;
    let m = env
        .wait_condition("dga", "RulesInstalled", "True", Some("Installed"))
        .await;
    assert_eq!(m.status.as_ref().unwrap().objects.prebuilt_rules, ids);
    for id in &ids {
        let h = holding(&env, id);
        assert_eq!(h.len(), 1, "{id}: one rule, one rule_id: {h:?}");
        assert_eq!(h[0]["immutable"], true, "{id}");
    }
    env.delete("dga").await;
    env.wait_gone("dga").await;
    assert!(env.standin.rules("default").is_empty());
    env.finish().await;
}
