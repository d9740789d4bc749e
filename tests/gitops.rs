//! What Flux (kstatus), Argo CD (`deploy/argocd/health.lua`) and `kubectl wait
//! --for=condition=Ready` make of a DgaModel in every state, on the real objects the operator
//! writes through the real apiserver. Each state is a row of the README's health table, which
//! `support/health.rs` reads: the table is what is asserted.
//!
//! Run: `tests/testbed/k8s.sh run -- cargo test --test gitops`.

#[path = "support/eck.rs"]
mod eck;
#[path = "support/health.rs"]
mod health;
mod support;

use std::time::Duration;

use dga_operator::api::DgaModel;
use dga_standin::bundle::Layout;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use serde_json::{Value, json};
use support::{Env, wait_for};

fn spec(tag: &str, secret: &str) -> Value {
    json!({"releaseTag": tag, "clusterRef": {"secretName": secret}})
}

/// The object exactly as the apiserver returns it (defaults applied, nothing typed away).
async fn raw(env: &Env, name: &str) -> Value {
    let api: Api<DynamicObject> = Api::namespaced_with(
        env.ns.client.clone(),
        &env.ns.name,
        &ApiResource::erase::<DgaModel>(&()),
    );
    serde_json::to_value(api.get(name).await.expect("get DgaModel")).unwrap()
}

fn condition<'a>(obj: &'a Value, type_: &str) -> Option<&'a Value> {
    obj.pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
}

fn current(obj: &Value) -> bool {
    obj.pointer("/status/observedGeneration") == obj.pointer("/metadata/generation")
}

/// Waits until the object, as the apiserver returns it, satisfies `pred`; panics with it.
async fn wait_raw(env: &Env, name: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let last = std::sync::Mutex::new(Value::Null);
    let found = wait_for(Duration::from_secs(60), || async {
        let o = raw(env, name).await;
        *last.lock().unwrap() = o.clone();
        pred(&o).then_some(o)
    })
    .await;
    found.unwrap_or_else(|| {
        panic!(
            "{name}: {what} not reached; last: {:#}",
            last.lock().unwrap()
        )
    })
}

/// Condition `type_` is `status` (and has `reason`) for the current generation.
fn has(obj: &Value, type_: &str, status: &str, reason: Option<&str>) -> bool {
    current(obj)
        && condition(obj, type_)
            .is_some_and(|c| c["status"] == status && reason.is_none_or(|r| c["reason"] == r))
}

fn check(env: &Env, key: &str, obj: &Value) {
    health::assert_reads_as(key, &env.ns.name, obj);
}

#[tokio::test]
async fn lifecycle_states_read_the_same_to_flux_argocd_and_kubectl_wait() {
    // No operator yet: the object as a DgaModel reads that nothing reconciles.
    let mut env = Env::start_without_controller("gitops-life").await;
    env.secret("es", "changeme").await;
    let one = env.publish("ML-DGA-20210126-1", Layout::V2);
    // Different tags get different models (the builder seeds them from the tag).
    let two = env.publish("ML-DGA-20210126-2", Layout::V2);
    let three = env.publish("ML-DGA-20210126-3", Layout::V2);
    let created = env.apply("dga", spec(&one.tag, "es")).await;
    // The CRD's default: the apiserver answers the create itself with it.
    let st = created.status.expect("a defaulted status on create");
    assert_eq!(st.observed_generation, Some(-1));
    assert_eq!(st.state, Some(dga_operator::api::State::Pending));
    let o = raw(&env, "dga").await;
    assert_eq!(
        o["status"],
        json!({"observedGeneration": -1, "state": "Pending"}),
        "{o:#}"
    );
    check(&env, "unreconciled", &o);

    env.start_controller();
    let o = wait_raw(&env, "dga", "Installed", |o| {
        has(o, "Ready", "True", Some("Installed"))
    })
    .await;
    check(&env, "installed", &o);
    if !env.real() {
        // The stand-in cannot run painless: not proven, and not a failure.
        let v = condition(&o, "EnrichmentVerified").unwrap();
        assert_eq!(v["status"], "Unknown", "{v}");
        assert_eq!(v["reason"], "Unproven", "{v}");
    }

    // An edit the operator has not seen yet: the old Ready no longer counts.
    env.stop_controller();
    env.apply("dga", spec(&two.tag, "es")).await;
    let o = raw(&env, "dga").await;
    assert!(!current(&o), "{o:#}");
    check(&env, "edited", &o);
    env.start_controller();
    let o = wait_raw(&env, "dga", "release 2 installed", |o| {
        has(o, "Ready", "True", Some("Installed"))
            && o["status"]["installedTag"] == two.tag.as_str()
    })
    .await;
    check(&env, "installed", &o);

    // Plan mode: done when planned, with or without changes.
    let mut s = spec(&two.tag, "es");
    s["mode"] = "Plan".into();
    env.apply("dga", s.clone()).await;
    let o = wait_raw(&env, "dga", "Plan, in sync", |o| {
        has(o, "Ready", "True", Some("InSync"))
    })
    .await;
    check(&env, "plan-in-sync", &o);
    s["releaseTag"] = three.tag.clone().into();
    env.apply("dga", s).await;
    let o = wait_raw(&env, "dga", "Plan, changes pending", |o| {
        has(o, "Ready", "True", Some("Planned"))
    })
    .await;
    check(&env, "planned", &o);
    let pending = condition(&o, "ChangesPending").unwrap()["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(pending.contains("create trained model"), "{pending}");

    // Suspended: current reads done; changes held back need a person.
    let mut s = spec(&two.tag, "es");
    s["suspend"] = true.into();
    env.apply("dga", s.clone()).await;
    let o = wait_raw(&env, "dga", "suspended, current", |o| {
        has(o, "Ready", "True", Some("Suspended"))
    })
    .await;
    check(&env, "suspended", &o);
    s["releaseTag"] = three.tag.clone().into();
    env.apply("dga", s).await;
    let o = wait_raw(&env, "dga", "suspended, held", |o| {
        has(o, "Stalled", "True", Some("Suspended"))
    })
    .await;
    check(&env, "suspended-pending", &o);
    let msg = condition(&o, "Stalled").unwrap()["message"]
        .as_str()
        .unwrap();
    assert!(msg.contains("spec.suspend"), "the fix is named: {msg}");
    env.apply("dga", spec(&three.tag, "es")).await;
    let o = wait_raw(&env, "dga", "release 3 installed", |o| {
        has(o, "Ready", "True", Some("Installed"))
            && o["status"]["installedTag"] == three.tag.as_str()
    })
    .await;
    check(&env, "installed", &o);

    // Deleting: a second finalizer keeps the object after the operator's cleanup is done.
    let api = env.models_api();
    let hold =
        json!({"metadata": {"finalizers": [dga_operator::api::FINALIZER, "dga-tests/hold"]}});
    api.patch("dga", &PatchParams::default(), &Patch::Merge(&hold))
        .await
        .unwrap();
    env.delete("dga").await;
    let o = wait_raw(&env, "dga", "cleaned up, held", |o| {
        o["metadata"]["finalizers"] == json!(["dga-tests/hold"])
    })
    .await;
    check(&env, "deleting", &o);
    assert!(
        env.stack().models().await.is_empty(),
        "the model was removed"
    );
    api.patch(
        "dga",
        &PatchParams::default(),
        &Patch::Merge(&json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    env.wait_gone("dga").await;
    env.finish().await;
}

#[tokio::test]
async fn failures_that_need_a_person_are_stalled_and_clear_within_seconds_of_the_fix() {
    // The resync stays at its default (5 minutes): every recovery below comes from the watches
    // of Secrets and ECK objects.
    let mut env = Env::start_without_controller("gitops-fix").await;
    eck::install_crds(&env.ns.client).await;
    env.start_controller();
    let rel = env.publish("ML-DGA-20210126-1", Layout::V2);
    let ns = env.ns.name.clone();
    let stalled = |reason: &'static str| move |o: &Value| has(o, "Stalled", "True", Some(reason));
    let fix_named = |o: &Value| {
        let m = condition(o, "Stalled").unwrap()["message"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(
            m.contains("to fix:"),
            "the Stalled message names the fix: {m}"
        );
    };

    // A licence without inference (stand-in only: a real stack's licence is what it is).
    if env.standin_only("switching the licence") {
        env.standin.set_license("basic");
        env.secret("lic-es", "changeme").await;
        env.apply("lic", spec(&rel.tag, "lic-es")).await;
        let o = wait_raw(
            &env,
            "lic",
            "LicenseInsufficient",
            stalled("LicenseInsufficient"),
        )
        .await;
        check(&env, "licence", &o);
        fix_named(&o);
        env.delete("lic").await;
        env.wait_gone("lic").await;
        env.standin.set_license("platinum");
    }

    // A missing Secret, then created.
    env.apply("dga", spec(&rel.tag, "later")).await;
    let o = wait_raw(&env, "dga", "SecretNotFound", stalled("SecretNotFound")).await;
    check(&env, "secret-missing", &o);
    fix_named(&o);
    env.secret("later", "changeme").await;
    let o = wait_raw(&env, "dga", "Installed after the Secret appeared", |o| {
        has(o, "Ready", "True", Some("Installed"))
    })
    .await;
    check(&env, "installed", &o);

    // Another DgaModel on the same cluster: the package's objects belong to `dga`.
    env.apply("other", spec(&rel.tag, "later")).await;
    let o = wait_raw(&env, "other", "Conflict", stalled("Conflict")).await;
    check(&env, "conflict", &o);
    fix_named(&o);
    env.delete("other").await;

    // A Secret without a password, then completed; and refused credentials, then corrected.
    // Each fix is noticed at once (it then meets `dga`'s objects: a Conflict, as above).
    env.secret_with(
        "nokey",
        json!({"url": env.standin.es_url(), "username": "elastic"}),
    )
    .await;
    env.apply("nokey", spec(&rel.tag, "nokey")).await;
    let o = wait_raw(&env, "nokey", "SecretInvalid", stalled("SecretInvalid")).await;
    check(&env, "secret-key-missing", &o);
    fix_named(&o);
    env.secret("wrong", "not-the-password").await;
    env.apply("wrong", spec(&rel.tag, "wrong")).await;
    let o = wait_raw(&env, "wrong", "Unauthorized", stalled("Unauthorized")).await;
    check(&env, "unauthorized", &o);
    fix_named(&o);
    if !env.real() {
        env.secret("nokey", "changeme").await;
        env.secret("wrong", "changeme").await;
        for name in ["nokey", "wrong"] {
            wait_raw(&env, name, "the fix noticed", stalled("Conflict")).await;
        }
    }

    // A missing ECK Elasticsearch, then created: the watch of ECK objects re-runs it, and it
    // gets as far as connecting (no cluster DNS here: a transient error, retried).
    env.apply(
        "eck",
        json!({"releaseTag": rel.tag, "clusterRef": {"name": "quickstart"}}),
    )
    .await;
    let o = wait_raw(&env, "eck", "ECK object missing", stalled("SecretNotFound")).await;
    check(&env, "eck-missing", &o);
    fix_named(&o);
    eck::quickstart(&env.ns.client, &ns, "quickstart").await;
    let o = wait_raw(&env, "eck", "connecting to the ECK service", |o| {
        has(o, "Reconciling", "True", None)
            && condition(o, "Reconciling").unwrap()["reason"] != "Progressing"
    })
    .await;
    check(&env, "retrying", &o);
    env.finish().await;
}

#[tokio::test]
async fn a_pass_against_a_server_that_never_answers_reads_installing_then_retrying() {
    // A listener that accepts connections and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", silent.local_addr().unwrap());
    let held = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((c, _)) = silent.accept().await {
            conns.push(c);
        }
    });
    let env = Env::start("gitops-silent").await;
    let rel = env.publish("ML-DGA-20210126-1", Layout::V2);
    env.secret_with(
        "silent",
        json!({"url": url, "username": "elastic", "password": "changeme"}),
    )
    .await;
    env.apply("dga", spec(&rel.tag, "silent")).await;
    let o = wait_raw(&env, "dga", "Reconciling while the server is silent", |o| {
        has(o, "Reconciling", "True", Some("Progressing"))
    })
    .await;
    check(&env, "installing", &o);
    // The request timeout (10 s here) ends the pass: a transient error, retried.
    let o = wait_raw(&env, "dga", "retrying after the timeout", |o| {
        has(o, "Reconciling", "True", None)
            && condition(o, "Reconciling").unwrap()["reason"] != "Progressing"
    })
    .await;
    check(&env, "retrying", &o);
    held.abort();
    env.drop_namespace().await;
}

#[tokio::test]
async fn a_wrong_answer_is_visible_to_every_tool() {
    let env = Env::start("gitops-wrong").await;
    if !env.standin_only("a release built to answer wrongly") {
        return env.finish().await;
    }
    env.secret("es", "changeme").await;
    // A release whose inference pipeline leaves the model's raw fields: the canaries come back
    // without `ml_is_dga.malicious_prediction`, on processors the stand-in runs.
    let tag = "ML-DGA-20210126-9";
    env.publish_without_painless(
        tag,
        json!([
            {"inference": {"model_id": "dga_9_1.0", "target_field": "ml_is_dga",
                           "inference_config": {"classification": {"num_top_classes": 1}}}}
        ]),
    );
    env.apply("dga", spec(tag, "es")).await;
    let o = wait_raw(&env, "dga", "VerificationFailed", |o| {
        has(o, "Stalled", "True", Some("VerificationFailed"))
    })
    .await;
    check(&env, "verification-failed", &o);
    let m = condition(&o, "EnrichmentVerified").unwrap()["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(m.contains("malicious_prediction"), "{m}");
    env.wait_event("dga", "VerificationFailed").await;
    assert!(
        !env.stack().models().await.is_empty(),
        "a failed verification never undoes the install"
    );
    env.finish().await;
}

#[test]
fn every_table_row_is_exercised_and_the_argocd_rule_ships_in_the_readme() {
    // Each README row is asserted by one of the tests above: keep the two in step.
    let src = std::fs::read_to_string(file!()).unwrap();
    let rows = health::readme_table();
    assert!(rows.len() >= 17, "{} rows", rows.len());
    for r in &rows {
        assert!(
            src.contains(&format!("\"{}\"", r.key)),
            "README row `{}` is checked by no test in tests/gitops.rs",
            r.key
        );
    }
    // The argocd-cm snippet in the README and the chart's copy are the shipped rule.
    let lua = health::health_lua();
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let indented: String = lua.lines().map(|l| format!("    {l}\n")).collect();
    assert!(
        readme.contains(&format!(
            "  resource.customizations.health.dgaoperator.io_DgaModel: |\n{indented}```"
        )),
        "README's argocd-cm snippet differs from deploy/argocd/health.lua"
    );
    let chart = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/charts/dga-operator/files/argocd-health.lua"
    ))
    .unwrap();
    assert_eq!(
        chart, lua,
        "charts/dga-operator/files/argocd-health.lua is a stale copy"
    );
    // An object Argo CD has no status for yet, and odd shapes, do not break the rule.
    for obj in [
        json!({"metadata": {"name": "x", "generation": 1}}),
        json!({"metadata": {"name": "x", "generation": 1}, "status": {"observedGeneration": 1, "conditions": []}}),
        json!({"metadata": {"name": "x"}, "status": {"conditions": [{"type": "Ready", "status": "True"}]}}),
    ] {
        let (s, m) = health::run_lua(&lua, &obj);
        assert!(["Progressing", "Healthy"].contains(&s.as_str()), "{s} {m}");
        assert!(!m.is_empty(), "{obj}");
    }
}
