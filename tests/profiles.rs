//! The core scenario against each Elasticsearch version profile of the stand-in
//! (`tests/standin/src/profile.rs`): install, a settled resync that writes nothing, drift
//! repair, a tag bump, delete. The profiles run side by side, each with its own stand-in
//! (Elasticsearch and Kibana of that version) and namespace. 7.15 is the oldest version the
//! operator supports (pipelines accept `_meta` from 7.15); 7.10 to 7.14 are refused before any
//! write, with `Stalled`.

mod support;

use std::time::Duration;

use dga_operator::controller::Settings;
use dga_standin::StandinConfig;
use dga_standin::bundle::{BundleSpec, Layout};
use serde_json::{Value, json};
use support::{Env, wait_for};

/// The profiles the README claims, oldest first: the supported range's floor, and the stand-in's
/// named profiles from there on.
const SUPPORTED: &[&str] = &["7.15.0", "7.17.29", "8.17.0", "9.2.0", "9.5.0"];

fn spec(tag: &str) -> Value {
    json!({"releaseTag": tag, "clusterRef": {"secretName": "es"}})
}

async fn env_for(version: &str) -> Env {
    let cfg = StandinConfig {
        es_version: version.into(),
        kibana_version: version.into(),
        ..StandinConfig::default()
    };
    let settings = Settings {
        resync: Duration::from_secs(1),
        ..Settings::default()
    };
    let prefix = format!("prof-{}", version.replace('.', "-"));
    Env::start_with(&prefix, cfg, settings).await
}

fn kibana_writes(env: &Env) -> Vec<String> {
    env.standin
        .requests()
        .iter()
        .filter(|r| r.service == dga_standin::Service::Kibana && r.is_write())
        .map(|r| format!("{} {}", r.method, r.path))
        .collect()
}

/// A pipeline without the dates 9.2 adds to a GET (a re-created pipeline has new ones).
fn as_put(p: &Value) -> Value {
    let mut p = p.clone();
    if let Some(o) = p.as_object_mut() {
        o.remove("created_date_millis");
        o.remove("modified_date_millis");
    }
    p
}

async fn datafeed_state(env: &Env, feed: &str) -> Option<Value> {
    let (_, b) = env
        .stack()
        .es(
            reqwest::Method::GET,
            &format!("/_ml/datafeeds/{feed}/_stats"),
            None,
        )
        .await;
    b.pointer("/datafeeds/0/state").cloned()
}

async fn scenario(version: &'static str) {
    let env = env_for(version).await;
    let v = version;
    // A Packetbeat index for the default wiring (`packetbeat-*`).
    let wired = "packetbeat-2026.12.05";
    env.standin.put_index_settings(wired, json!({}));
    let old = env.publish("ML-DGA-20210126-1", Layout::V2);
    let mut new_spec = BundleSpec::small("ML-DGA-20210301-2", Layout::V2);
    new_spec.model.seed += 1;
    let new = env.publish_spec(new_spec);
    env.secret("es", "changeme").await;

    // Install.
    env.apply("dga", spec(&old.tag)).await;
    let m = env.wait_ready("dga").await;
    let st = m.status.unwrap();
    let old_model = st.model_id.clone().unwrap();
    for c in [
        "ModelInstalled",
        "PipelinesInstalled",
        "RulesInstalled",
        "AnomalyJobRunning",
    ] {
        assert!(
            dga_operator::status::is_true(&st.conditions, c),
            "{v}: {c}: {:?}",
            st.conditions
        );
    }
    let pipelines = env.stack().pipelines().await;
    for id in &old.pipeline_ids {
        assert!(
            pipelines[id].pointer("/_meta/dga_operator/owner").is_some(),
            "{v}: {id} marked: {}",
            pipelines[id]
        );
    }
    assert_eq!(
        env.standin.index_settings()[wired]["index.final_pipeline"],
        json!(old.router_pipeline),
        "{v}: wired"
    );
    // Elastic's module job is `dga_high_sum_probability_ea` from 9.4 (detection-rules d8a39869).
    let (major, minor) = {
        let mut p = v.split('.').map(|n| n.parse::<u32>().unwrap());
        (p.next().unwrap(), p.next().unwrap())
    };
    let feed = if (major, minor) >= (9, 4) {
        "datafeed-dga_high_sum_probability_ea"
    } else {
        "datafeed-dga_high_sum_probability"
    };
    assert_eq!(
        datafeed_state(&env, feed).await,
        Some(json!("started")),
        "{v}"
    );
    assert_eq!(env.stack().rules("default").await.len(), 4, "{v}");

    // Settled: resyncs write nothing, to either service.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    env.standin.clear_requests();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let passes = env
        .standin
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("/_simulate"))
        .count();
    assert!(passes >= 2, "{v}: resyncs ran: {passes}");
    assert!(env.es_writes().is_empty(), "{v}: {:?}", env.es_writes());
    assert!(
        kibana_writes(&env).is_empty(),
        "{v}: {:?}",
        kibana_writes(&env)
    );

    // Drift: a pipeline deleted by hand comes back.
    let good_router = as_put(&env.stack().pipelines().await[&old.router_pipeline]);
    env.stack().delete_pipeline(&old.router_pipeline).await;
    let repaired = wait_for(Duration::from_secs(20), || async {
        let p = env.stack().pipelines().await;
        (p.get(&old.router_pipeline).map(as_put) == Some(good_router.clone())).then_some(())
    })
    .await;
    assert!(repaired.is_some(), "{v}: drift not repaired");
    env.wait_event("dga", "DriftRepaired").await;

    // Tag bump: the new model in, the pipelines switched, the old model out.
    env.apply("dga", spec(&new.tag)).await;
    let st = wait_for(Duration::from_secs(30), || async {
        let st = env.status("dga").await?;
        (st.installed_tag.as_deref() == Some(new.tag.as_str())
            && dga_operator::status::is_true(&st.conditions, "Ready"))
        .then_some(st)
    })
    .await
    .unwrap_or_else(|| panic!("{v}: not upgraded"));
    let new_model = st.model_id.unwrap();
    assert_ne!(new_model, old_model, "{v}");
    let models = env.stack().models().await;
    assert!(
        models.contains_key(&new_model) && !models.contains_key(&old_model),
        "{v}: {:?}",
        models.keys()
    );
    assert!(
        env.stack().pipelines().await[&new.inference_pipeline]
            .to_string()
            .contains(&new_model),
        "{v}"
    );
    env.wait_event("dga", "Upgraded").await;

    // Delete: everything the DgaModel installed goes, the wiring is undone.
    env.delete("dga").await;
    env.wait_gone("dga").await;
    assert!(!env.stack().models().await.contains_key(&new_model), "{v}");
    let pipelines = env.stack().pipelines().await;
    for id in &new.pipeline_ids {
        assert!(!pipelines.contains_key(id), "{v}: {id} left");
    }
    assert!(env.stack().jobs().await.is_empty(), "{v}: job left");
    assert!(
        env.stack().rules("default").await.is_empty(),
        "{v}: rules left"
    );
    assert!(
        env.standin.index_settings()[wired]
            .get("index.final_pipeline")
            .is_none_or(Value::is_null),
        "{v}: wiring left: {}",
        env.standin.index_settings()[wired]
    );
    env.assert_no_off_spec();
    env.finish().await;
}

/// Every supported profile, side by side.
#[tokio::test]
async fn the_core_scenario_holds_on_every_supported_version() {
    if support::real_stack().is_some() {
        // One real cluster has one version: the other tests cover it.
        return;
    }
    futures::future::join_all(SUPPORTED.iter().map(|v| scenario(v))).await;
}

/// 7.10 to 7.14 refuse a pipeline's `_meta`, where the operator marks what it owns: the
/// operator says so (Stalled, VersionUnsupported) before writing anything.
#[tokio::test]
async fn versions_before_7_15_are_refused_before_any_write() {
    if support::real_stack().is_some() {
        return;
    }
    for version in ["7.10.2", "7.14.2"] {
        let env = env_for(version).await;
        let rel = env.publish("ML-DGA-20210126-1", Layout::V2);
        env.secret("es", "changeme").await;
        env.apply("dga", spec(&rel.tag)).await;
        let m = env
            .wait_condition("dga", "Stalled", "True", Some("VersionUnsupported"))
            .await;
        let st = m.status.unwrap();
        let stalled = st.conditions.iter().find(|c| c.type_ == "Stalled").unwrap();
        assert!(
            stalled.message.contains("7.15") && stalled.message.contains("_meta"),
            "{version}: {}",
            stalled.message
        );
        assert!(!dga_operator::status::is_true(&st.conditions, "Ready"));
        assert!(
            env.es_writes().is_empty(),
            "{version}: {:?}",
            env.es_writes()
        );
        assert!(kibana_writes(&env).is_empty(), "{version}");
        env.finish().await;
    }
}
