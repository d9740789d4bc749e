//! Lifecycle a GitOps user can trust: zero-gap upgrades and Plan mode; and the edges of issue 15
//! (namespace deletion, deleting what never installed, leftovers, events that tell the truth,
//! status that is not stale).

mod support;

use std::sync::Arc;
use std::time::Duration;

use dga_operator::controller::Settings;
use dga_standin::StandinConfig;
use dga_standin::bundle::{BundleSpec, Layout};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::Api;
use serde_json::{Value, json};
use support::{Env, wait_for};

fn spec(tag: &str) -> Value {
    json!({"releaseTag": tag, "clusterRef": {"secretName": "es"}})
}

/// The enrichment chain: the router calls the inference pipeline, whose inference processor
/// names a model that exists.
fn chain_ok(env: &Env, router: &str) -> Result<(), String> {
    let pipelines = env.standin.pipelines();
    let models = env.standin.models();
    let r = pipelines.get(router).ok_or("router pipeline missing")?;
    let callee = r["processors"]
        .as_array()
        .into_iter()
        .flatten()
        .find_map(|p| p.pointer("/pipeline/name").and_then(Value::as_str))
        .ok_or("router calls no pipeline")?;
    let inf = pipelines
        .get(callee)
        .ok_or(format!("router calls missing pipeline {callee}"))?;
    let model = inf["processors"]
        .as_array()
        .into_iter()
        .flatten()
        .find_map(|p| p.pointer("/inference/model_id").and_then(Value::as_str))
        .ok_or("no inference processor")?;
    if !models.contains_key(model) {
        return Err(format!(
            "inference pipeline points at missing model {model}"
        ));
    }
    Ok(())
}

#[tokio::test]
async fn tag_bump_never_leaves_the_chain_without_a_model() {
    let env = Env::start("life-zero-gap").await;
    if !env.standin_only("pausing on every request") {
        return env.finish().await;
    }
    let old = env.publish("ML-DGA-20210126-1", Layout::V2);
    let mut next = BundleSpec::small("ML-DGA-20210301-2", Layout::V2);
    next.model.seed += 7;
    let new = env.publish_spec(next);
    env.secret("es", "changeme").await;
    env.apply("dga", spec(&old.tag)).await;
    env.wait_ready("dga").await;
    let old_model = env.status("dga").await.unwrap().model_id.unwrap();

    // From now on every request waits until the test has checked the chain.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(
        dga_standin::RequestRecord,
        tokio::sync::oneshot::Sender<()>,
    )>();
    env.standin
        .set_interceptor(Some(Arc::new(move |r: dga_standin::RequestRecord| {
            let tx = tx.clone();
            Box::pin(async move {
                let (done, wait) = tokio::sync::oneshot::channel();
                if tx.send((r, done)).is_ok() {
                    let _ = wait.await;
                }
            })
        })));
    env.apply("dga", spec(&new.tag)).await;
    let mut checked = 0;
    let mut writes = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let upgraded = env
            .status("dga")
            .await
            .is_some_and(|s| s.installed_tag.as_deref() == Some(new.tag.as_str()));
        if upgraded && env.standin.models().len() == 1 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "upgrade did not finish; writes so far {writes:?}"
        );
        let Ok(Some((rec, release))) =
            tokio::time::timeout(Duration::from_millis(200), rx.recv()).await
        else {
            continue;
        };
        if let Err(e) = chain_ok(&env, &new.router_pipeline) {
            panic!(
                "gap before {} {}: {e}; writes so far {writes:?}",
                rec.method, rec.path
            );
        }
        checked += 1;
        if rec.is_write() {
            writes.push(format!("{} {}", rec.method, rec.path));
        }
        let _ = release.send(());
    }
    env.standin.set_interceptor(None);
    while let Ok((_, release)) = rx.try_recv() {
        let _ = release.send(());
    }
    chain_ok(&env, &new.router_pipeline).unwrap();
    assert!(
        writes
            .iter()
            .any(|w| w.starts_with("PUT /_ml/trained_models/")),
        "{writes:?}"
    );
    assert!(
        writes
            .iter()
            .any(|w| w == &format!("DELETE /_ml/trained_models/{old_model}")),
        "{writes:?}"
    );
    assert!(
        checked > writes.len(),
        "checked between every pair of requests"
    );
    // The new model went in before the switch, the old one out after it.
    let pos = |p: &str| writes.iter().position(|w| w.contains(p)).unwrap();
    assert!(
        pos("PUT /_ml/trained_models/")
            < pos(&format!("PUT /_ingest/pipeline/{}", new.inference_pipeline))
    );
    assert!(
        pos(&format!("PUT /_ingest/pipeline/{}", new.inference_pipeline))
            < pos("DELETE /_ml/trained_models/")
    );
    env.finish().await;
}

#[tokio::test]
async fn plan_mode_changes_nothing_and_matches_what_apply_does() {
    let env = Env::start("life-plan").await;
    let rel = env.publish("ML-DGA-20210126-1", Layout::V2);
    env.secret("es", "changeme").await;
    let mut s = spec(&rel.tag);
    s["mode"] = "Plan".into();
    env.apply("dga", s.clone()).await;
    let m = env
        .wait_condition("dga", "Ready", "True", Some("Planned"))
        .await;
    let plan = m.status.unwrap().plan.unwrap();
    assert!(
        plan.contains("create trained model") && plan.contains("create rule"),
        "{plan}"
    );
    // Issue 14: one plan across both services, in apply order: Elasticsearch's objects, the
    // Kibana rules, then the anomaly job and its datafeed.
    let steps: Vec<&str> = plan.split("; ").collect();
    let at = |want: &str| {
        steps
            .iter()
            .position(|s| s.starts_with(want))
            .unwrap_or_else(|| panic!("{want}: {plan}"))
    };
    let job = "dga_high_sum_probability";
    let (model, router, rule) = (
        at("create trained model"),
        at(&format!("create ingest pipeline {}", rel.router_pipeline)),
        at("create rule"),
    );
    let (job_at, feed_at, start_at) = (
        at(&format!("create anomaly detection job {job}")),
        at(&format!("create datafeed datafeed-{job}")),
        at(&format!("start datafeed datafeed-{job}")),
    );
    assert!(model < router && router < rule && rule < job_at, "{plan}");
    assert!(job_at < feed_at && feed_at < start_at, "{plan}");
    assert_eq!(
        steps
            .iter()
            .filter(|s| s.starts_with("create rule"))
            .count(),
        4,
        "{plan}"
    );
    assert!(env.stack().models().await.is_empty() && env.stack().pipelines().await.is_empty());
    assert!(env.stack().rules("default").await.is_empty());
    let (_, _, note) = env.wait_event("dga", "Planned").await;
    assert!(note.contains("create ingest pipeline"), "{note}");

    // Apply does exactly what the plan said.
    env.apply("dga", spec(&rel.tag)).await;
    env.wait_ready("dga").await;
    let installed = env.wait_event("dga", "Installed").await.2;
    let rules = env.wait_event("dga", "RulesSynced").await.2;
    for line in plan.split("; ") {
        assert!(
            installed.contains(line) || rules.contains(line),
            "planned `{line}` not applied:\n{installed}\n{rules}"
        );
    }
    let st = env.status("dga").await.unwrap();
    assert!(st.plan.is_none(), "no plan in Apply mode");

    // A tag bump in Plan mode shows the upgrade and changes nothing.
    let mut next = BundleSpec::small("ML-DGA-20210301-2", Layout::V2);
    next.model.seed += 3;
    let new = env.publish_spec(next);
    let before = (env.stack().models().await, env.stack().pipelines().await);
    let mut s = spec(&new.tag);
    s["mode"] = "Plan".into();
    env.apply("dga", s).await;
    let m = env
        .wait_condition("dga", "Ready", "True", Some("Planned"))
        .await;
    let plan = m.status.unwrap().plan.unwrap();
    let old_model = st.model_id.unwrap();
    assert!(
        plan.contains("create trained model")
            && plan.contains(&format!("delete trained model {old_model}")),
        "{plan}"
    );
    assert!(plan.contains("upgrade ingest pipeline"), "{plan}");
    let after = (env.stack().models().await, env.stack().pipelines().await);
    assert_eq!(before, after, "Plan mode wrote nothing");
    let unchanged = wait_for(Duration::from_secs(1), || async { None::<()> }).await;
    assert!(unchanged.is_none());
    env.finish().await;
}

#[tokio::test]
async fn enrichment_is_verified_with_canaries_and_failures_are_reported() {
    let env = Env::start("life-verify").await;
    env.secret("es", "changeme").await;
    // The package's own pipelines use painless, which the stand-in cannot run: verification is
    // not possible there (Unknown, not a failure), says why, and leaves the working install
    // alone. A real stack runs painless.
    let rel = env.publish("ML-DGA-20210126-1", Layout::V2);
    env.apply("painless", spec(&rel.tag)).await;
    env.wait_ready("painless").await;
    if env.real() {
        env.wait_condition("painless", "EnrichmentVerified", "True", Some("Verified"))
            .await;
        return env.finish().await;
    }
    let m = env
        .wait_condition(
            "painless",
            "EnrichmentVerified",
            "Unknown",
            Some("Unproven"),
        )
        .await;
    let st = m.status.unwrap();
    let msg = dga_operator::status::get(&st.conditions, "EnrichmentVerified")
        .unwrap()
        .message
        .clone();
    assert!(
        msg.contains("skipped processors") && msg.contains("script"),
        "{msg}"
    );
    assert!(
        dga_operator::status::is_true(&st.conditions, "Ready"),
        "a verification that cannot be made is no failure"
    );
    env.delete("painless").await;
    env.wait_gone("painless").await;

    // A release whose pipelines use only processors the stand-in can run verifies.
    let tag = "ML-DGA-20210126-8";
    env.publish_without_painless(
        tag,
        json!([
            {"inference": {"model_id": "dga_9_1.0", "target_field": "ml_is_dga",
                           "inference_config": {"classification": {"num_top_classes": 1}}}},
            {"rename": {"field": "ml_is_dga.prediction_probability", "target_field": "ml_is_dga.malicious_probability"}}
        ]),
    );
    env.apply("plain", spec(tag)).await;
    let m = env
        .wait_condition("plain", "EnrichmentVerified", "True", Some("Verified"))
        .await;
    let msg = dga_operator::status::get(&m.status.unwrap().conditions, "EnrichmentVerified")
        .unwrap()
        .message
        .clone();
    assert!(msg.contains("DGA-looking name"), "{msg}");
    env.finish().await;
}

fn final_pipeline(env: &Env, index: &str) -> Option<String> {
    env.standin
        .index_settings()
        .get(index)?
        .get("index.final_pipeline")?
        .as_str()
        .map(str::to_string)
}

#[tokio::test]
async fn enrichment_is_wired_once_never_over_a_users_pipeline_and_unwired_first() {
    let env = Env::start("life-wiring").await;
    if !env.standin_only("creating indices by hand") {
        return env.finish().await;
    }
    let rel = env.publish("ML-DGA-20210126-1", Layout::V2);
    env.secret("es", "changeme").await;
    let plain = "packetbeat-8.17.0-2026.11.27";
    let users = "packetbeat-8.17.0-2026.11.28";
    let already = "packetbeat-8.17.0-2026.11.29";
    env.standin.put_index_settings(plain, json!({}));
    env.standin
        .put_index_settings(users, json!({"index.final_pipeline": "user-pipeline"}));
    // Someone already routes this one through the router as its default pipeline: a final
    // pipeline too would score every event twice.
    env.standin.put_index_settings(
        already,
        json!({"index.default_pipeline": rel.router_pipeline}),
    );

    env.apply("dga", spec(&rel.tag)).await;
    let m = env
        .wait_condition("dga", "Stalled", "True", Some("Conflict"))
        .await;
    let msg = dga_operator::status::get(&m.status.unwrap().conditions, "Ready")
        .unwrap()
        .message
        .clone();
    assert!(
        msg.contains(users) && msg.contains("user-pipeline"),
        "{msg}"
    );
    assert_eq!(
        final_pipeline(&env, users).as_deref(),
        Some("user-pipeline"),
        "never clobbered"
    );
    assert_eq!(
        final_pipeline(&env, plain),
        None,
        "nothing applied while a conflict stands"
    );

    // Leave the user's index out: the rest is wired, once.
    let mut s = spec(&rel.tag);
    s["enrichment"] = json!({"indices": [plain, already]});
    env.apply("dga", s).await;
    let m = env.wait_ready("dga").await;
    assert_eq!(
        final_pipeline(&env, plain).as_deref(),
        Some(rel.router_pipeline.as_str())
    );
    assert_eq!(final_pipeline(&env, already), None, "not wired twice");
    assert_eq!(
        final_pipeline(&env, users).as_deref(),
        Some("user-pipeline")
    );
    let hook = &env.standin.pipelines()["logs-network_traffic.dns@custom"];
    assert_eq!(
        hook["processors"][0]["pipeline"]["name"],
        rel.router_pipeline.as_str()
    );
    assert_eq!(
        m.status.unwrap().objects.wired_indices,
        vec![plain.to_string()]
    );

    // With overwrite the user's final pipeline is replaced (the user asked for it).
    let mut s = spec(&rel.tag);
    s["overwrite"] = true.into();
    env.apply("dga", s).await;
    let replaced = wait_for(Duration::from_secs(20), || async {
        (final_pipeline(&env, users).as_deref() == Some(rel.router_pipeline.as_str())).then_some(())
    })
    .await;
    assert!(replaced.is_some());

    // Delete: unwired before the pipelines go.
    env.standin.clear_requests();
    env.delete("dga").await;
    env.wait_gone("dga").await;
    assert_eq!(final_pipeline(&env, plain), None);
    assert_eq!(final_pipeline(&env, users), None);
    assert!(
        !env.standin
            .pipelines()
            .contains_key("logs-network_traffic.dns@custom")
    );
    let writes = env.es_writes();
    let unwire = writes
        .iter()
        .position(|w| w.contains("/_settings"))
        .expect("unwired");
    let delete = writes
        .iter()
        .position(|w| w.starts_with("DELETE /_ingest/pipeline/"))
        .expect("deleted");
    assert!(unwire < delete, "{writes:?}");
    env.finish().await;
}

/// A `@custom` hook someone else wrote gains one `pipeline` processor (tagged as ours) and keeps
/// everything else byte for byte; turning wiring off or deleting removes only that processor.
#[tokio::test]
async fn a_users_custom_hook_gains_one_processor_and_loses_only_it() {
    let env = Env::start("life-hook").await;
    let rel = env.publish("ML-DGA-20210126-1", Layout::V2);
    env.secret("es", "changeme").await;
    let hook_id = "logs-network_traffic.dns@custom";
    let theirs = json!({
        "description": "team hook",
        "processors": [{"set": {"field": "team", "value": "secops"}}],
        "on_failure": [{"set": {"field": "hook_failed", "value": true}}],
        "_meta": {"managed_by": "secops"}
    });
    let hook = || async { env.stack().pipelines().await[hook_id].clone() };
    env.stack().put_pipeline(hook_id, theirs.clone()).await;
    env.apply("dga", spec(&rel.tag)).await;
    let m = env.wait_ready("dga").await;
    let h = hook().await;
    for k in ["description", "on_failure", "_meta"] {
        assert_eq!(h[k], theirs[k], "{k} kept");
    }
    assert_eq!(h["processors"][0], theirs["processors"][0]);
    let ours = &h["processors"][1]["pipeline"];
    assert_eq!(ours["name"], rel.router_pipeline.as_str());
    assert_eq!(ours["ignore_failure"], true);
    assert_eq!(
        ours["ignore_missing_pipeline"], true,
        "8.3 and later take it"
    );
    assert_eq!(
        ours["tag"],
        format!("dga-operator:{}/dga", env.ns.name).as_str()
    );
    assert_eq!(h["processors"].as_array().unwrap().len(), 2);
    let st = m.status.unwrap();
    assert_eq!(st.objects.hooks, vec![hook_id.to_string()]);
    assert!(!st.objects.pipelines.contains(&hook_id.to_string()));
    let wired = dga_operator::status::get(&st.conditions, "EnrichmentWired").unwrap();
    assert_eq!(wired.reason, "Wired", "{wired:?}");

    // Turning wiring off removes only our processor.
    let mut s = spec(&rel.tag);
    s["enrichment"] = json!({"enabled": false});
    env.apply("dga", s).await;
    env.wait_ready("dga").await;
    assert_eq!(hook().await, theirs);

    // On again, then delete: the hook is the user's again, exactly.
    env.apply("dga", spec(&rel.tag)).await;
    let back = wait_for(Duration::from_secs(20), || async {
        (hook().await["processors"].as_array().map(Vec::len) == Some(2)).then_some(())
    })
    .await;
    assert!(back.is_some(), "hooked again: {}", hook().await);
    env.delete("dga").await;
    env.wait_gone("dga").await;
    assert_eq!(hook().await, theirs);
    env.stack().delete_pipeline(hook_id).await;
    env.finish().await;
}

/// A hook an earlier operator build wrote whole (its marker in `_meta`, one untagged `pipeline`
/// processor calling the router) converts to the one-processor form in place; delete then
/// removes it (the operator created it, and nothing else was added).
#[tokio::test]
async fn an_old_operators_whole_hook_converts_in_place() {
    let env = Env::start("life-old-hook").await;
    let rel = env.publish("ML-DGA-20210126-1", Layout::V2);
    env.secret("es", "changeme").await;
    let hook_id = "logs-network_traffic.dns@custom";
    env.apply("dga", spec(&rel.tag)).await;
    env.wait_ready("dga").await;
    let marker =
        env.stack().pipelines().await[&rel.router_pipeline]["_meta"]["dga_operator"].clone();
    assert!(marker.is_object());
    let old = json!({
        "description": "Scores DNS questions for DGA domains (dga-operator)",
        "processors": [{"pipeline": {"name": rel.router_pipeline}}],
        "_meta": {"dga_operator": marker},
    });
    env.stack().put_pipeline(hook_id, old.clone()).await;
    // A spec change (the same hook, named) makes the next pass a full one.
    let mut s = spec(&rel.tag);
    s["enrichment"] = json!({"customPipelines": [hook_id]});
    env.apply("dga", s).await;
    let converted = wait_for(Duration::from_secs(30), || async {
        let h = env.stack().pipelines().await[hook_id].clone();
        (h["processors"].as_array().map(Vec::len) == Some(1)
            && h["processors"][0]["pipeline"]["tag"].is_string())
        .then_some(h)
    })
    .await
    .expect("converted");
    assert_eq!(
        converted["processors"][0]["pipeline"]["name"],
        rel.router_pipeline.as_str()
    );
    assert_eq!(converted["_meta"], old["_meta"], "the rest kept");
    assert_eq!(converted["description"], old["description"]);
    env.delete("dga").await;
    env.wait_gone("dga").await;
    assert!(!env.stack().pipelines().await.contains_key(hook_id));
    env.finish().await;
}

/// Where Fleet's own DGA router already runs in the hook, the operator adds nothing there and
/// says so; documents are never scored twice.
#[tokio::test]
async fn fleets_own_enrichment_in_the_hook_is_not_doubled() {
    let env = Env::start("life-fleet-hook").await;
    let rel = env.publish("ML-DGA-20210126-1", Layout::V1);
    env.secret("es", "changeme").await;
    let hook_id = "logs-network_traffic.dns@custom";
    let fleet = json!({"processors": [{"pipeline": {"name": "2.3.7-ml_dga_ingest_pipeline", "ignore_missing_pipeline": true, "ignore_failure": true}}]});
    env.stack().put_pipeline(hook_id, fleet.clone()).await;
    env.apply("dga", spec(&rel.tag)).await;
    let m = env
        .wait_condition(
            "dga",
            "EnrichmentWired",
            "True",
            Some("FleetEnrichmentPresent"),
        )
        .await;
    let c = dga_operator::status::get(&m.status.as_ref().unwrap().conditions, "EnrichmentWired")
        .unwrap()
        .clone();
    assert!(
        c.message.contains("2.3.7-ml_dga_ingest_pipeline") && c.message.contains(hook_id),
        "{}",
        c.message
    );
    env.wait_ready("dga").await;
    assert_eq!(env.stack().pipelines().await[hook_id], fleet, "untouched");
    assert!(m.status.unwrap().objects.hooks.is_empty());
    env.delete("dga").await;
    env.wait_gone("dga").await;
    assert_eq!(env.stack().pipelines().await[hook_id], fleet);
    env.stack().delete_pipeline(hook_id).await;
    env.finish().await;
}

/// A Packetbeat 8 data stream: its backing index and its index template get
/// `index.final_pipeline`, so the write index a rollover creates is enriched from its first
/// document, with no resync in between; delete leaves the template as it was.
#[tokio::test]
async fn a_packetbeat_data_stream_stays_wired_across_rollover() {
    let env = Env::start("life-rollover").await;
    if !env.standin_only("creating data streams and rolling them over") {
        return env.finish().await;
    }
    let rel = env.publish("ML-DGA-20210126-1", Layout::V2);
    env.secret("es", "changeme").await;
    let stream = "packetbeat-8.17.0";
    let template = json!({
        "index_patterns": [stream], "data_stream": {}, "priority": 150,
        "template": {"settings": {"index": {"number_of_shards": "1", "lifecycle": {"name": "packetbeat"}}},
                     "mappings": {"properties": {"dns": {"type": "object"}}}}
    });
    let path = format!("/_index_template/{stream}");
    let (s, _) = env
        .stack()
        .es(reqwest::Method::PUT, &path, Some(&template))
        .await;
    assert_eq!(s, 200);
    let read_template = || async {
        env.stack().es(reqwest::Method::GET, &path, None).await.1["index_templates"][0]
            ["index_template"]
            .clone()
    };
    let before = read_template().await;
    env.standin.create_data_stream(stream).unwrap();
    let first = ".ds-packetbeat-8.17.0-2026.12.05-000001";
    env.apply("dga", spec(&rel.tag)).await;
    let m = env.wait_ready("dga").await;
    let router = rel.router_pipeline.as_str();
    assert_eq!(final_pipeline(&env, first).as_deref(), Some(router));
    assert_eq!(
        read_template().await["template"]["settings"]["index"]["final_pipeline"],
        router
    );
    let st = m.status.unwrap();
    assert_eq!(st.objects.wired_templates, vec![stream.to_string()]);

    // Rollover: the new write index is wired from its creation (the operator did nothing).
    env.standin.clear_requests();
    let second = env.standin.rollover(stream).unwrap();
    assert_eq!(final_pipeline(&env, &second).as_deref(), Some(router));
    assert!(env.es_writes().is_empty(), "{:?}", env.es_writes());

    env.delete("dga").await;
    env.wait_gone("dga").await;
    assert_eq!(read_template().await, before, "the template as it was");
    assert_eq!(final_pipeline(&env, first), None);
    assert_eq!(final_pipeline(&env, &second), None);
    env.finish().await;
}

#[tokio::test]
async fn delete_unwires_even_when_the_status_lost_track() {
    let env = Env::start("life-unwire").await;
    if !env.standin_only("creating indices by hand") {
        return env.finish().await;
    }
    let rel = env.publish("ML-DGA-20210126-1", Layout::V2);
    env.secret("es", "changeme").await;
    let index = "packetbeat-8.17.0-2026.11.30";
    env.standin.put_index_settings(index, json!({}));
    env.apply("dga", spec(&rel.tag)).await;
    env.wait_ready("dga").await;
    assert_eq!(
        final_pipeline(&env, index).as_deref(),
        Some(rel.router_pipeline.as_str())
    );
    // As after a crash between wiring and the status write: the status does not list the index.
    // The controller is stopped so it cannot write it back before the delete.
    let mut env = env;
    env.stop_controller();
    env.models_api()
        .patch_status(
            "dga",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&json!({"status": {"objects": {"wiredIndices": null}}})),
        )
        .await
        .unwrap();
    env.delete("dga").await;
    env.start_controller();
    env.wait_gone("dga").await;
    assert_eq!(
        final_pipeline(&env, index),
        None,
        "unwired before the router was deleted"
    );
    env.finish().await;
}

// ---------------------------------------------------------------------------------------------
// The edges of issue 15: namespace deletion, deleting what never installed, leftovers, events
// that tell the truth, status that is not stale.

fn cond(s: &dga_operator::api::DgaModelStatus, t: &str) -> (String, String, String) {
    let c = s
        .conditions
        .iter()
        .find(|c| c.type_ == t)
        .unwrap_or_else(|| panic!("no {t} in {s:?}"));
    (
        format!("{:?}", c.status),
        c.reason.clone(),
        c.message.clone(),
    )
}

/// With the operator stopped, the namespace controller reaches the Secret before the operator
/// sees the deletion, every run: the Secret must survive (Terminating) until the cleanup ran,
/// and nothing may be left in the stack.
#[tokio::test]
async fn namespace_deletion_with_the_secret_taken_first_leaves_nothing() {
    let mut env = Env::start("life-ns-delete").await;
    let rel = env.publish("ML-DGA-20210126-1", Layout::V2);
    env.secret("es", "changeme").await;
    env.apply("dga", spec(&rel.tag)).await;
    env.wait_ready("dga").await;
    let secrets: Api<Secret> = env.ns.api();
    let protected = wait_for(Duration::from_secs(30), || async {
        let s = secrets.get("es").await.ok()?;
        s.metadata
            .finalizers
            .unwrap_or_default()
            .iter()
            .any(|f| f == dga_operator::protection::SECRET_FINALIZER)
            .then_some(())
    })
    .await;
    assert!(protected.is_some(), "the Secret carries no protection");
    assert!(!env.stack().pipelines().await.is_empty());

    env.stop_controller();
    let namespaces: Api<Namespace> = Api::all(env.ns.client.clone());
    namespaces
        .delete(&env.ns.name, &Default::default())
        .await
        .unwrap();
    // kube-controller-manager's namespace controller deletes the Secret and the DgaModel while
    // no operator runs: both wait on their finalizers.
    let models = env.models_api();
    let both_deleting = wait_for(Duration::from_secs(120), || async {
        let s = secrets.get_opt("es").await.ok()??;
        let m = models.get_opt("dga").await.ok()??;
        (s.metadata.deletion_timestamp.is_some() && m.metadata.deletion_timestamp.is_some())
            .then_some(())
    })
    .await;
    assert!(
        both_deleting.is_some(),
        "the namespace controller did not delete the Secret and the DgaModel (is kube-controller-manager running?); Secret now: {:?}",
        secrets.get_opt("es").await.map(|s| s.map(|s| s.metadata))
    );

    env.start_controller();
    let gone = wait_for(Duration::from_secs(120), || async {
        (models.get_opt("dga").await.ok()?.is_none() && secrets.get_opt("es").await.ok()?.is_none())
            .then_some(())
    })
    .await;
    assert!(gone.is_some(), "DgaModel or Secret still there");
    let left = env.invariant_violations(true).await;
    assert!(left.is_empty(), "left in the stack: {left:?}");
    env.stop_controller();
    env.assert_no_off_spec();
}

/// Nothing recorded as installed: the deletion finishes at once, not after `--delete-timeout`.
/// A deletion that has something to remove and cannot reach the cluster says so, with its
/// deadline, and the cluster is not reported reachable.
#[tokio::test]
async fn deletions_finish_at_once_with_nothing_recorded_and_show_a_pending_deadline() {
    let settings = Settings {
        delete_timeout: Duration::from_secs(600),
        request_timeout: Duration::from_secs(5),
        backoff_base: Duration::from_millis(200),
        backoff_cap: Duration::from_secs(2),
        ..Settings::default()
    };
    let env = Env::start_tuned("life-del-nothing", StandinConfig::default(), settings).await;
    let rel = env.publish("ML-DGA-20210126-1", Layout::V2);
    env.secret("es", "wrong-password").await;
    env.apply("never", spec(&rel.tag)).await;
    // Stalled, not the Ready=False a pass writes when it starts.
    let m = env.wait_condition("never", "Stalled", "True", None).await;
    let st = m.status.unwrap();
    // The False side of Stalled/Reconciling explains itself instead of repeating the reason.
    for t in ["Reconciling", "Stalled"] {
        let (_, reason, message) = cond(&st, t);
        assert_ne!(reason, message, "{t} repeats its reason: {st:?}");
    }
    env.delete("never").await;
    env.wait_gone("never").await;
    let (_, _, note) = env.wait_event("never", "Removed").await;
    assert!(note.contains("nothing recorded"), "{note}");

    // Installed, then the cluster stops answering (the Secret points at a closed port).
    env.secret("es", "changeme").await;
    env.apply("dga", spec(&rel.tag)).await;
    env.wait_ready("dga").await;
    let mut data =
        json!({"url": "http://127.0.0.1:9", "username": "elastic", "password": "changeme"});
    env.secret_with("es", data.clone()).await;
    env.delete("dga").await;
    let m = env
        .wait_condition("dga", "Ready", "False", Some("Deleting"))
        .await;
    let st = m.status.unwrap();
    let (_, _, msg) = cond(&st, "Ready");
    assert!(msg.contains("retrying until 20"), "no deadline: {msg}");
    assert!(
        msg.contains("ingest pipeline"),
        "does not say what is left: {msg}"
    );
    assert_eq!(cond(&st, "Reconciling").1, "Deleting");
    assert_eq!(cond(&st, "ElasticsearchReachable").0, "False", "{st:?}");
    // The cluster answers again: the cleanup finishes well before the deadline.
    data["url"] = env.standin.es_url().into();
    env.secret_with("es", data).await;
    env.wait_gone("dga").await;
    let left = env.invariant_violations(true).await;
    assert!(left.is_empty(), "{left:?}");
    env.finish().await;
}

fn retained(tag: &str) -> Value {
    json!({"releaseTag": tag, "clusterRef": {"secretName": "es"}, "deletionPolicy": "Retain"})
}

/// Leftovers of a deleted DgaModel (Retain) are taken over by another with `overwrite`, and go
/// with it when it is deleted.
#[tokio::test]
async fn leftovers_of_a_deleted_dgamodel_are_adopted_with_overwrite() {
    let env = Env::start("life-leftovers").await;
    let rel = env.publish("ML-DGA-20210126-1", Layout::V2);
    env.secret("es", "changeme").await;
    env.apply("old", retained(&rel.tag)).await;
    env.wait_ready("old").await;
    env.delete("old").await;
    env.wait_gone("old").await;
    assert!(
        !env.stack().pipelines().await.is_empty(),
        "Retain kept nothing"
    );

    env.apply("new", spec(&rel.tag)).await;
    env.wait_condition("new", "Ready", "False", Some("Conflict"))
        .await;
    let mut s = spec(&rel.tag);
    s["overwrite"] = true.into();
    env.apply("new", s).await;
    env.wait_ready("new").await;
    let key = format!("{}/new", env.ns.name);
    for (id, p) in env.stack().pipelines().await {
        assert_eq!(
            p.pointer("/_meta/dga_operator/owner")
                .and_then(Value::as_str),
            Some(key.as_str()),
            "pipeline {id} not taken over"
        );
    }
    env.wait_event("new", "Adopted").await;
    env.delete("new").await;
    env.wait_gone("new").await;
    let left = env.invariant_violations(true).await;
    assert!(left.is_empty(), "{left:?}");
    assert!(env.stack().models().await.is_empty(), "model left");
    env.finish().await;
}

/// `dga-operator remove --leftovers-of NS/NAME` removes what a deleted DgaModel left.
#[tokio::test]
async fn cli_remove_takes_the_leftovers_of_a_named_dgamodel() {
    let env = Env::start("life-leftovers-cli").await;
    if !env.standin_only("the CLI against the stand-in") {
        return env.finish().await;
    }
    let rel = env.publish("ML-DGA-20210126-1", Layout::V2);
    env.secret("es", "changeme").await;
    env.apply("old", retained(&rel.tag)).await;
    env.wait_ready("old").await;
    env.delete("old").await;
    env.wait_gone("old").await;
    let run = |extra: Vec<String>| {
        let mut args = vec![
            "remove".to_string(),
            "-u".into(),
            env.standin.es_url(),
            "-p".into(),
            "changeme".into(),
            "--kibana-url".into(),
            env.standin.kibana_url(),
        ];
        args.extend(extra);
        // Not std's blocking Command: the stand-in answers from this test's runtime.
        tokio::process::Command::new(env!("CARGO_BIN_EXE_dga-operator"))
            .args(args)
            .env_remove("DGA_ES_PASSWORD")
            .output()
    };
    let out = run(vec![]).await.unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(
        !env.stack().pipelines().await.is_empty(),
        "remove took a DgaModel's objects unasked"
    );
    let out = run(vec![
        "--leftovers-of".into(),
        format!("{}/old", env.ns.name),
    ])
    .await
    .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("removed trained model"), "{text}");
    // Its rules too, through the same removal plan as the controller's delete.
    assert!(text.contains("detection rule "), "{text}");
    assert!(
        env.stack().rules("default").await.is_empty(),
        "rules left: {:?}",
        env.stack().rules("default").await
    );
    let left = env.invariant_violations(true).await;
    assert!(left.is_empty(), "{left:?}\n{text}");
    assert!(env.stack().models().await.is_empty(), "model left");
    env.finish().await;
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            l.strip_prefix(name)?
                .strip_prefix(' ')?
                .trim()
                .parse::<f64>()
                .ok()
        })
        .sum()
}

/// Each repair is its own event with its own actions (not folded into the install's), a
/// re-created object is a repair, a script edited by hand (marker gone) is a repair, not an
/// upgrade, and the counter counts every one.
#[tokio::test]
async fn repairs_are_reported_as_repairs_each_with_its_own_note_and_counted() {
    let settings = Settings {
        resync: Duration::from_secs(2),
        ..Settings::default()
    };
    let env = Env::start_with("life-repairs", StandinConfig::default(), settings).await;
    let rel = env.publish("ML-DGA-20210126-1", Layout::V2);
    env.secret("es", "changeme").await;
    env.apply("dga", spec(&rel.tag)).await;
    env.wait_ready("dga").await;
    env.wait_event("dga", "Installed").await;
    let before = metric(&env.ctx.metrics.encode(), "dga_drift_repairs_total");
    let pipelines = env.stack().pipelines().await;
    let good_script = env.stack().scripts().await[&rel.script_ids[0]].clone();

    // 1: the router deleted.
    env.stack().delete_pipeline(&rel.router_pipeline).await;
    let back = wait_for(Duration::from_secs(30), || async {
        (env.stack().pipelines().await.get(&rel.router_pipeline)
            == pipelines.get(&rel.router_pipeline))
        .then_some(())
    })
    .await;
    assert!(back.is_some(), "router not repaired");
    // 2: a script rewritten by hand without the marker line.
    let mut edited = good_script.clone();
    let inner = if edited.get("script").is_some() {
        &mut edited["script"]
    } else {
        &mut edited
    };
    let src = inner["source"].as_str().unwrap().to_string();
    let body: Vec<&str> = src.lines().skip(1).collect();
    inner["source"] = format!("{}\n// edited by hand", body.join("\n")).into();
    env.stack().put_script(&rel.script_ids[0], edited).await;
    let back = wait_for(Duration::from_secs(30), || async {
        (env.stack().scripts().await.get(&rel.script_ids[0]) == Some(&good_script)).then_some(())
    })
    .await;
    assert!(back.is_some(), "script not repaired");
    // 3: an inference pipeline deleted.
    env.stack().delete_pipeline(&rel.inference_pipeline).await;
    let back = wait_for(Duration::from_secs(30), || async {
        (env.stack().pipelines().await.get(&rel.inference_pipeline)
            == pipelines.get(&rel.inference_pipeline))
        .then_some(())
    })
    .await;
    assert!(back.is_some(), "inference pipeline not repaired");

    let notes = wait_for(Duration::from_secs(20), || async {
        let ev = env.events("dga").await;
        let repairs: Vec<String> = ev
            .iter()
            .filter(|e| e.1 == "DriftRepaired")
            .map(|e| e.2.clone())
            .collect();
        (repairs.len() >= 3).then_some((ev, repairs))
    })
    .await;
    let Some((all, repairs)) = notes else {
        panic!(
            "three DriftRepaired events expected: {:?}",
            env.events("dga").await
        )
    };
    let has = |what: &str| repairs.iter().any(|n| n.contains(what));
    assert!(
        has(&format!("repair ingest pipeline {}", rel.router_pipeline)),
        "{repairs:?}"
    );
    assert!(
        has(&format!("repair stored script {}", rel.script_ids[0])),
        "{repairs:?}"
    );
    assert!(
        has(&format!(
            "repair ingest pipeline {}",
            rel.inference_pipeline
        )),
        "{repairs:?}"
    );
    let installed = all.iter().filter(|e| e.1 == "Installed").count();
    assert_eq!(installed, 1, "a repair reported as an install: {all:?}");
    assert!(
        all.iter().all(|e| e.1 != "Upgraded"),
        "a repair reported as an upgrade: {all:?}"
    );
    let after = metric(&env.ctx.metrics.encode(), "dga_drift_repairs_total");
    assert_eq!(after - before, 3.0, "every repair counted");
    env.finish().await;
}

/// Suspended: a pipeline deleted by hand is not reported installed. Plan mode's rules
/// condition says Planned, not Suspended.
#[tokio::test]
async fn suspended_and_plan_mode_conditions_say_what_the_cluster_holds() {
    let settings = Settings {
        resync: Duration::from_secs(2),
        ..Settings::default()
    };
    let env = Env::start_with("life-suspend-status", StandinConfig::default(), settings).await;
    let rel = env.publish("ML-DGA-20210126-1", Layout::V2);
    env.secret("es", "changeme").await;
    let mut planned = spec(&rel.tag);
    planned["mode"] = "Plan".into();
    env.apply("plan", planned).await;
    // Plan mode did what it was asked: Ready (ChangesPending says what Apply would do).
    let m = env
        .wait_condition("plan", "Ready", "True", Some("Planned"))
        .await;
    let st = m.status.unwrap();
    let (status, reason, msg) = cond(&st, "RulesInstalled");
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "Planned"),
        "{msg}"
    );
    assert!(msg.starts_with("mode Plan; would:"), "{msg}");
    // Nothing was installed before: the first creation of the job is no repair.
    assert!(!msg.contains("repair"), "{msg}");
    assert_eq!(cond(&st, "PipelinesInstalled").1, "Planned");
    env.delete("plan").await;
    env.wait_gone("plan").await;

    env.apply("dga", spec(&rel.tag)).await;
    env.wait_ready("dga").await;
    let mut s = spec(&rel.tag);
    s["suspend"] = true.into();
    env.apply("dga", s).await;
    env.wait_condition("dga", "PipelinesInstalled", "True", None)
        .await;
    env.stack().delete_pipeline(&rel.router_pipeline).await;
    let m = env
        .wait_condition("dga", "PipelinesInstalled", "False", Some("Suspended"))
        .await;
    let (_, _, msg) = cond(m.status.as_ref().unwrap(), "PipelinesInstalled");
    assert!(msg.contains(&rel.router_pipeline), "{msg}");
    assert!(
        !env.stack()
            .pipelines()
            .await
            .contains_key(&rel.router_pipeline),
        "suspended wrote"
    );
    env.finish().await;
}

/// A release whose model file is a `GET _ml/trained_models/<id>?include=definition` export goes
/// Ready on a 7.x and a 9.x cluster: the controller leaves out what each version's PUT refuses.
#[tokio::test]
async fn a_get_export_release_goes_ready_on_7_and_9() {
    for version in ["7.17", "9.2"] {
        let env = Env::start_with(
            "life-export",
            StandinConfig {
                es_version: version.into(),
                ..StandinConfig::default()
            },
            Settings::default(),
        )
        .await;
        if !env.standin_only("choosing the Elasticsearch version") {
            return env.finish().await;
        }
        let rel =
            env.publish_spec(BundleSpec::small("ML-DGA-20210202-1", Layout::V2).as_get_export());
        env.secret("es", "changeme").await;
        env.apply("export", spec(&rel.tag)).await;
        env.wait_condition("export", "Ready", "True", None).await;
        let models = env.standin.models();
        let (id, stored) = models
            .iter()
            .find(|(id, _)| id.starts_with(&format!("{}-", rel.model_id)))
            .expect("the model is installed");
        assert_eq!(
            stored["inference_config"]["classification"]["results_field"], "malicious_prediction",
            "{version} {id}"
        );
        if version == "9.2" {
            assert_eq!(stored["model_size_bytes"], 246_784_104u64, "{version}");
        }
        env.finish().await;
    }
}
