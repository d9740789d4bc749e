//! Elastic's DGA rules and job through the controller, one scenario set per Kibana profile
//! (issue 14): 8.8 (no prebuilt DGA rules yet), 8.17 and 9.2 (prebuilt rules, job
//! `dga_high_sum_probability`), 9.5 (the `_ea` job; paged `_review`, brief `_perform`). Each
//! profile runs: a fresh Kibana that offers Elastic's rules (installed through Kibana's
//! prebuilt-rules API and enabled, no custom copy; before 8.9 custom rules), one without them
//! (custom rules under the operator's own rule_ids), Elastic's rules already installed and
//! enabled by a person (left alone, never recorded or deleted), rules the old CLI left under
//! Elastic's rule_ids (a Conflict without `overwrite`, replaced with it), and Fleet's module job
//! already there (watched, not duplicated). Rule and job parameters are asserted against the
//! fixture of Elastic's facts (`standin/fixtures/elastic-dga-content.json`, with source
//! commits), never against the operator's constants.

mod support;

use std::time::Duration;

use dga_operator::controller::Settings;
use dga_standin::StandinConfig;
use dga_standin::bundle::Layout;
use serde_json::{Value, json};
use support::{Env, elastic_facts as facts, elastic_rule_ids as elastic_ids};

fn spec(tag: &str) -> Value {
    json!({"releaseTag": tag, "clusterRef": {"secretName": "es"}})
}

/// A stack of one version (Elasticsearch and Kibana alike); `dga`: Kibana holds Elastic's
/// prebuilt-rules package.
async fn env(prefix: &str, kibana: &str, dga: bool) -> Env {
    let cfg = StandinConfig {
        kibana_version: kibana.into(),
        es_version: kibana.into(),
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
        // One page of 500 where `_review` is paged (9.4+); older Kibanas ignore the body.
        .json(&json!({"page": 1, "per_page": 500}))
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
    // Object ids by rule_id: from 9.5 `created` names rule_id and version only (PR #264443).
    let created = done["results"]["created"].as_array().unwrap();
    assert_eq!(created.len(), ids.len(), "{done}");
    let objects: Vec<Value> = ids
        .iter()
        .map(|id| holding(env, id)[0]["id"].clone())
        .collect();
    bulk_action(env, "enable", &objects).await;
}

/// A person's bulk `action` on rules (by object id) through Kibana's API, as a click in the
/// rules table does (it moves `updated_at`).
async fn bulk_action(env: &Env, action: &str, ids: &[Value]) {
    let s = reqwest::Client::new()
        .post(format!(
            "{}/api/detection_engine/rules/_bulk_action",
            env.standin.kibana_url()
        ))
        .basic_auth("elastic", Some("changeme"))
        .header("kbn-xsrf", "true")
        .json(&json!({"action": action, "ids": ids}))
        .send()
        .await
        .unwrap()
        .status();
    assert!(s.is_success(), "{action}: {s}");
}

/// `major.minor` of a profile version.
fn minor(v: &str) -> (u32, u32) {
    let mut it = v.split('.').map(|p| p.parse::<u32>().unwrap());
    (it.next().unwrap(), it.next().unwrap())
}

/// Whether Kibana `v` offers Elastic's DGA rules (prebuilt from 8.9, with the package).
fn offers(v: &str, dga: bool) -> bool {
    dga && minor(v) >= (8, 9)
}

/// Elastic's job for a stack of version `v` (the fixture's `stack` ranges: before or from 9.4).
fn job_facts(v: &str) -> Value {
    let range = if minor(v) >= (9, 4) {
        ">=9.4.0"
    } else {
        "<9.4.0"
    };
    facts()["ml_jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["stack"] == range)
        .unwrap()
        .clone()
}

fn as_set(v: &Value) -> std::collections::BTreeSet<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|x| x.as_str().unwrap().to_string())
        .collect()
}

/// The job and datafeed of Elastic's module for `version`, as the operator created them;
/// returns the job id.
fn assert_job(env: &Env, version: &str) -> String {
    let jf = job_facts(version);
    let id = jf["job_id"].as_str().unwrap();
    let jobs = env.standin.jobs();
    assert_eq!(
        jobs.keys()
            .filter(|k| k.contains("dga"))
            .collect::<Vec<_>>(),
        [id],
        "{version}: one DGA job, Elastic's"
    );
    let job = &jobs[id];
    assert_eq!(as_set(&job["groups"]), as_set(&jf["groups"]), "{version}");
    let ac = &job["analysis_config"];
    assert_eq!(ac["bucket_span"], jf["bucket_span"], "{version}");
    assert_eq!(
        as_set(&ac["influencers"]),
        as_set(&jf["influencers"]),
        "{version}"
    );
    for k in ["function", "field_name", "over_field_name"] {
        assert_eq!(ac["detectors"][0][k], jf["detector"][k], "{version}: {k}");
    }
    // Where Elastic's module sets no limit (before 9.4; Kibana's module setup estimates one),
    // the operator sets the 9.4 module's, never Elasticsearch's 1 GB default (README).
    let limit = if jf["model_memory_limit"].is_null() {
        facts()["ml_jobs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|j| j["stack"] == ">=9.4.0")
            .unwrap()["model_memory_limit"]
            .clone()
    } else {
        jf["model_memory_limit"].clone()
    };
    assert_eq!(
        job["analysis_limits"]["model_memory_limit"], limit,
        "{version}"
    );
    let feeds = env.standin.datafeeds();
    let feed = feeds
        .values()
        .find(|d| d["job_id"] == id)
        .unwrap_or_else(|| panic!("{version}: no datafeed for {id}"));
    assert_eq!(
        feed["query"], jf["datafeed_query"],
        "{version}: datafeed query"
    );
    id.to_string()
}

/// The custom rules the operator wrote (Kibana without Elastic's rules): Elastic's content
/// under rule_ids that are not Elastic's, the ML rule on `job`, `setup` where the Kibana
/// version's rule bodies take it (8.14, kibana PR #178131).
fn assert_custom_rules(env: &Env, version: &str, job: &str) {
    let rules = env.standin.rules("default");
    assert_eq!(rules.len(), 4, "{version}: {rules:?}");
    for f in facts()["rules"].as_array().unwrap() {
        let name = f["name"].as_str().unwrap();
        let r = rules
            .iter()
            .find(|r| r["name"] == name)
            .unwrap_or_else(|| panic!("{version}: no rule named {name}"));
        assert_eq!(r["immutable"], false, "{name}");
        assert_ne!(
            r["rule_id"], f["rule_id"],
            "{version}: {name} under Elastic's rule_id"
        );
        for k in ["type", "from", "risk_score", "severity"] {
            assert_eq!(r[k], f[k], "{version}: {name}: {k}");
        }
        // No interval in Elastic's rule: Kibana's default, 5m.
        let interval = if f["interval"].is_null() {
            json!("5m")
        } else {
            f["interval"].clone()
        };
        assert_eq!(r["interval"], interval, "{version}: {name}: interval");
        if f["type"] == "machine_learning" {
            assert_eq!(r["anomaly_threshold"], f["anomaly_threshold"], "{name}");
            assert_eq!(
                r["machine_learning_job_id"],
                json!([job]),
                "{version}: {name}"
            );
        } else {
            for k in ["query", "language", "timestamp_override"] {
                assert_eq!(r[k], f[k], "{version}: {name}: {k}");
            }
            assert!(as_set(&r["index"]).is_superset(&as_set(&f["index"])), "{r}");
        }
        assert!(
            as_set(&r["tags"]).is_superset(&as_set(&f["tags"])),
            "{version}: {name}"
        );
        assert!(r["threat"].to_string().contains("T1568.002"), "{name}");
        let has_setup = r["setup"].as_str().is_some_and(|s| !s.is_empty());
        assert_eq!(
            has_setup,
            minor(version) >= (8, 14),
            "{version}: {name}: setup"
        );
    }
}

/// Every scenario of one Kibana profile.
async fn profile(version: &str) {
    fresh(version, true).await;
    if minor(version) >= (8, 9) {
        fresh(version, false).await;
        person(version).await;
    }
    old_cli(version).await;
    // Fleet's `dga` package (and its module job) needs Kibana ^8.0.0 (real-stack.md "Fleet").
    if minor(version) >= (8, 0) {
        fleet_job(version).await;
    }
}

/// 7.17, the last 7.x the README claims: no prebuilt-rules API, no Fleet `dga` package, rule
/// bodies without the 8.x fields.
#[tokio::test]
async fn kibana_7_17_custom_rules_only() {
    profile("7.17.29").await;
}

#[tokio::test]
async fn kibana_8_8_without_prebuilt_dga_rules() {
    profile("8.8.2").await;
}

#[tokio::test]
async fn kibana_8_17() {
    profile("8.17.0").await;
}

#[tokio::test]
async fn kibana_9_2() {
    profile("9.2.0").await;
}

/// 9.5: the `_ea` job (9.4), a paged `_review` (PR #247375) and a `_perform` that answers
/// rule_id and version only (PR #264443).
#[tokio::test]
async fn kibana_9_5_with_the_ea_job() {
    profile("9.5.0").await;
}

/// A fresh Kibana with (`dga`) or without Elastic's prebuilt-rules package.
async fn fresh(version: &str, dga: bool) {
    let env = env("pb-fresh", version, dga).await;
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
    let ids = elastic_ids();
    let job = assert_job(&env, version);
    if offers(version, dga) {
        assert!(msg.contains("prebuilt-rules API"), "{version}: {msg}");
        assert!(!msg.contains("custom rules"), "{msg}");
        assert_eq!(m.status.as_ref().unwrap().objects.prebuilt_rules, ids);
        let owner_tag = format!("dga-operator:owner:{}/dga", env.ns.name);
        for id in &ids {
            let h = holding(&env, id);
            assert_eq!(h.len(), 1, "{id}: {h:?}");
            assert_eq!(
                (&h[0]["immutable"], &h[0]["enabled"]),
                (&json!(true), &json!(true))
            );
            if minor(version) >= (8, 16) {
                assert_eq!(h[0]["rule_source"]["is_customized"], false, "{id}");
            }
        }
        assert!(
            !env.standin
                .rules("default")
                .iter()
                .any(|r| r["tags"].to_string().contains(&owner_tag)),
            "no custom rule of the operator"
        );
        // Elastic's ML rule watches the job Elastic ships for this version, which exists.
        let ml = env
            .standin
            .rules("default")
            .into_iter()
            .find(|r| r["type"] == "machine_learning")
            .unwrap();
        assert_eq!(ml["machine_learning_job_id"], json!([job]), "{version}");
    } else {
        let why = if dga {
            "only from 8.9"
        } else {
            "security_detection_engine"
        };
        assert!(
            msg.contains("custom rules") && msg.contains(why),
            "{version}: {msg}"
        );
        assert!(m.status.as_ref().unwrap().objects.prebuilt_rules.is_empty());
        for id in &ids {
            assert!(holding(&env, id).is_empty(), "{version}: a rule under {id}");
        }
        assert_custom_rules(&env, version, &job);
    }

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
    let r = env
        .standin
        .rules("default")
        .into_iter()
        .find(|r| r["type"] == "machine_learning")
        .unwrap();
    let rid = r["rule_id"].clone();
    bulk_action(&env, "disable", &[r["id"].clone()]).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let now = env.standin.rules("default");
    assert_eq!(
        now.iter().find(|x| x["rule_id"] == rid).unwrap()["enabled"],
        false
    );

    // Delete removes what it installed: the rules, the job and its datafeed.
    env.delete("dga").await;
    env.wait_gone("dga").await;
    assert!(env.standin.rules("default").is_empty(), "{version}");
    assert!(env.standin.jobs().is_empty() && env.standin.datafeeds().is_empty());
    env.assert_no_off_spec();
    env.finish().await;
}

/// Elastic's rules installed and enabled by a person before the operator came: used as they
/// are, never recorded, changed or deleted; the job their ML rule reads is created.
async fn person(version: &str) {
    let env = env("pb-person", version, true).await;
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
    let job = assert_job(&env, version);
    let ml = before
        .iter()
        .find(|r| r["type"] == "machine_learning")
        .unwrap();
    assert_eq!(ml["machine_learning_job_id"], json!([job]), "{version}");
    env.delete("dga").await;
    env.wait_gone("dga").await;
    for (id, b) in ids.iter().zip(&before) {
        assert_eq!(&holding(&env, id)[0], b, "{id} not deleted");
    }
    env.assert_no_off_spec();
    env.finish().await;
}

/// A custom rule the old CLI left under one of Elastic's rule_ids: a Conflict until
/// `overwrite`; then Elastic's prebuilt rule where Kibana offers it, else the operator's own
/// custom rules, and never a rule the operator writes under Elastic's rule_id.
async fn old_cli(version: &str) {
    let env = env("pb-cli", version, true).await;
    if !env.standin_only("Kibana profiles") {
        return env.finish().await;
    }
    let ids = elastic_ids();
    let left = json!({"rule_id": ids[0], "name": "DGA rule of the old CLI", "description": "d",
        "type": "query", "query": "ml_is_dga.malicious_prediction:1", "language": "kuery",
        "risk_score": 21, "severity": "low", "tags": ["ML-DGA"], "index": ["packetbeat-*"],
        "immutable": false, "enabled": true});
    env.standin.put_rule("default", left.clone());
    let rel = env.publish("ML-DGA-20210126-1", Layout::V1);
    env.secret("es", "changeme").await;
    env.apply("dga", spec(&rel.tag)).await;
    let m = env
        .wait_condition("dga", "RulesInstalled", "False", Some("Conflict"))
        .await;
    let msg = rules_message(&m);
    assert!(
        msg.contains(&ids[0]) && msg.contains("overwrite"),
        "{version}: {msg}"
    );
    let h = holding(&env, &ids[0]);
    assert_eq!(
        (h.len(), &h[0]["name"]),
        (1, &left["name"]),
        "{version}: untouched"
    );
    // Both services are planned before either is written: the conflict holds back the
    // Elasticsearch side too (nothing half installed).
    assert!(
        env.standin.models().is_empty() && env.standin.jobs().is_empty(),
        "{version}: nothing written while the rules conflict"
    );
    assert!(
        env.es_writes().is_empty(),
        "{version}: {:?}",
        env.es_writes()
    );

    let mut s = spec(&rel.tag);
    s["overwrite"] = json!(true);
    env.apply("dga", s).await;
    let m = env
        .wait_condition("dga", "RulesInstalled", "True", Some("Installed"))
        .await;
    assert_eq!(env.standin.models().len(), 1, "{version}: installed");
    if offers(version, true) {
        assert_eq!(m.status.as_ref().unwrap().objects.prebuilt_rules, ids);
        for id in &ids {
            let h = holding(&env, id);
            assert_eq!(h.len(), 1, "{id}: one rule, one rule_id: {h:?}");
            assert_eq!(h[0]["immutable"], true, "{id}");
        }
    } else {
        // The old rule is replaced by the operator's own, under its own rule_id.
        let job = assert_job(&env, version);
        assert!(
            holding(&env, &ids[0]).is_empty(),
            "{version}: old rule left"
        );
        assert_custom_rules(&env, version, &job);
    }
    env.delete("dga").await;
    env.wait_gone("dga").await;
    env.assert_no_off_spec();
    env.finish().await;
}

/// Fleet's module job of this version already there (Kibana's ML job settings made it,
/// `custom_settings.created_by: ml-module-dga`): the operator's ML rule watches it, no second
/// job or datafeed is made, and delete leaves it.
async fn fleet_job(version: &str) {
    let env = env("pb-fleet", version, false).await;
    if !env.standin_only("Kibana profiles") {
        return env.finish().await;
    }
    let jf = job_facts(version);
    let id = jf["job_id"].as_str().unwrap();
    let mut body = json!({
        "description": "DGA job of Fleet's module (test)",
        "groups": jf["groups"],
        "analysis_config": {"bucket_span": jf["bucket_span"], "detectors": [jf["detector"]],
            "influencers": jf["influencers"]},
        "data_description": {"time_field": "@timestamp"},
        "custom_settings": {"created_by": jf["created_by"]}
    });
    if !jf["model_memory_limit"].is_null() {
        body["analysis_limits"] = json!({"model_memory_limit": jf["model_memory_limit"]});
    }
    let s = reqwest::Client::new()
        .put(format!(
            "{}/_ml/anomaly_detectors/{id}",
            env.standin.es_url()
        ))
        .basic_auth("elastic", Some("changeme"))
        .json(&body)
        .send()
        .await
        .unwrap()
        .status();
    assert!(s.is_success(), "{s}");
    let fleets = env.standin.jobs()[id].clone();
    let rel = env.publish("ML-DGA-20210126-1", Layout::V1);
    env.secret("es", "changeme").await;
    env.apply("dga", spec(&rel.tag)).await;
    env.wait_condition("dga", "RulesInstalled", "True", Some("Installed"))
        .await;
    let ml = env
        .standin
        .rules("default")
        .into_iter()
        .find(|r| r["type"] == "machine_learning")
        .unwrap();
    assert_eq!(ml["machine_learning_job_id"], json!([id]), "{version}");
    assert_eq!(env.standin.jobs().len(), 1, "{version}: no second job");
    assert_eq!(env.standin.jobs()[id], fleets, "Fleet's job untouched");
    assert!(
        env.standin.datafeeds().is_empty(),
        "Kibana owns its datafeed"
    );
    env.delete("dga").await;
    env.wait_gone("dga").await;
    assert_eq!(env.standin.jobs()[id], fleets, "Fleet's job left");
    env.assert_no_off_spec();
    env.finish().await;
}

/// An install whose enable step failed (Kibana answered the bulk `enable` with 500) is enabled
/// on a later pass: the rules were created disabled and nobody enabled them since.
#[tokio::test]
async fn a_failed_enable_is_retried() {
    let env = env("pb-enable", "8.17.0", true).await;
    if !env.standin_only("fault injection") {
        return env.finish().await;
    }
    env.standin.add_fault(dga_standin::Fault {
        service: Some(dga_standin::Service::Kibana),
        method: Some("POST".into()),
        path_regex: "/_bulk_action$".into(),
        nth: 1,
        times: 1,
        action: dga_standin::FaultAction::Status {
            code: 500,
            retry_after: None,
            body: None,
        },
    });
    let rel = env.publish("ML-DGA-20210126-1", Layout::V1);
    env.secret("es", "changeme").await;
    env.apply("dga", spec(&rel.tag)).await;
    let ids = elastic_ids();
    let enabled = support::wait_for(Duration::from_secs(60), || async {
        ids.iter()
            .all(|id| {
                holding(&env, id)
                    .first()
                    .is_some_and(|r| r["enabled"] == true)
            })
            .then_some(())
    })
    .await;
    if enabled.is_none() {
        let rules: Vec<Value> = ids.iter().flat_map(|id| holding(&env, id)).collect();
        panic!(
            "the rules not enabled on a later pass; rules: {}; Kibana requests: {:?}; status: {}",
            serde_json::to_string(&rules).unwrap(),
            env.standin
                .requests()
                .iter()
                .filter(|r| r.service == dga_standin::Service::Kibana)
                .map(|r| format!("{} {} {} {:?}", r.method, r.path, r.status, r.fault))
                .collect::<Vec<_>>(),
            serde_json::to_string_pretty(&env.status("dga").await).unwrap()
        );
    }
    let enables = env
        .standin
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("/_bulk_action"))
        .count();
    assert_eq!(enables, 2, "failed once, enabled on the next pass");
    let m = env
        .wait_condition("dga", "RulesInstalled", "True", Some("Installed"))
        .await;
    assert_eq!(m.status.as_ref().unwrap().objects.prebuilt_rules, ids);
    env.finish().await;
}

/// An installed prebuilt ML rule still on Elastic's pre-9.4 job (installed before a stack
/// upgrade across 9.4, and not updated through Kibana's Rule Updates since; here the 9.5 rule a
/// person pointed back at the old job) keeps the job it reads: the operator runs
/// `dga_high_sum_probability`, not the `_ea` job the stack version would choose, so the rule
/// never watches a job nobody feeds.
#[tokio::test]
async fn an_installed_ml_rule_keeps_the_job_it_reads() {
    let env = env("pb-oldjob", "9.5.0", true).await;
    if !env.standin_only("Kibana profiles") {
        return env.finish().await;
    }
    let ids = elastic_ids();
    person_installs(&env, &ids).await;
    let ml = ids
        .iter()
        .map(|id| holding(&env, id).remove(0))
        .find(|r| r["type"] == "machine_learning")
        .unwrap();
    let old = dga_operator::engine::mljob::JOB_ID;
    let s = reqwest::Client::new()
        .patch(format!(
            "{}/api/detection_engine/rules",
            env.standin.kibana_url()
        ))
        .basic_auth("elastic", Some("changeme"))
        .header("kbn-xsrf", "true")
        .json(&json!({"rule_id": ml["rule_id"], "machine_learning_job_id": [old]}))
        .send()
        .await
        .unwrap()
        .status();
    assert!(s.is_success(), "{s}");
    let rel = env.publish("ML-DGA-20210126-1", Layout::V1);
    env.secret("es", "changeme").await;
    env.apply("dga", spec(&rel.tag)).await;
    env.wait_condition("dga", "RulesInstalled", "True", Some("Installed"))
        .await;
    let m = env
        .wait_condition("dga", "AnomalyJobRunning", "True", None)
        .await;
    let jobs: Vec<String> = env
        .standin
        .jobs()
        .keys()
        .filter(|k| k.contains("dga"))
        .cloned()
        .collect();
    assert_eq!(jobs, [old], "the job the installed rule reads, and only it");
    assert_eq!(m.status.as_ref().unwrap().objects.jobs, [old]);
    assert_eq!(holding(&env, ml["rule_id"].as_str().unwrap()).len(), 1);
    env.assert_no_off_spec();
    env.finish().await;
}
