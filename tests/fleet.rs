//! Elastic's current route (issue 20): a DgaModel with `spec.fleetPackage` gets Fleet's `dga`
//! package installed through Kibana, the `@custom` hook wired to the package's
//! version-prefixed router, Elastic's prebuilt rules installed and enabled, the module's job set
//! up through Kibana's ML module API, and the canary run through the package's pipelines; all
//! through the real apiserver and the controller, against the stand-in's Fleet (Kibana's package
//! API, ML module setup, and a package registry built from real-stack.md's facts; see
//! `tests/standin/CONFORMANCE.md` "Fleet packages and ML modules").
//!
//! Facts asserted here come from the package as the stand-in's registry serves it (its router
//! pipeline, its module's job) and from Elastic's fixture of rules, not from the operator's
//! constants.

mod support;

use std::time::Duration;

use dga_operator::controller::Settings;
use dga_standin::{Service, StandinConfig};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use support::{Env, elastic_facts as facts, elastic_rule_ids};

const HOOK: &str = "logs-network_traffic.dns@custom";

/// A stack of one version with Elastic's prebuilt DGA rules and a registry holding `packages`.
async fn env(prefix: &str, version: &str, packages: &[&str]) -> Env {
    // Against a real stack the stand-in only serves what the tests publish (releases).
    let version = if version == "real" { "9.2.0" } else { version };
    let cfg = StandinConfig {
        kibana_version: version.into(),
        es_version: version.into(),
        kibana_prebuilt_dga: true,
        fleet_packages: packages.iter().map(|p| p.to_string()).collect(),
        ..StandinConfig::default()
    };
    let settings = Settings {
        resync: Duration::from_secs(2),
        ..Settings::default()
    };
    let env = Env::start_with(prefix, cfg, settings).await;
    env.secret("es", "changeme").await;
    env
}

/// [`env`] for a scenario only the stand-in can stage (`why`); `None` against a real stack,
/// where the test is skipped, saying so.
async fn standin_env(prefix: &str, version: &str, packages: &[&str], why: &str) -> Option<Env> {
    let env = env(prefix, version, packages).await;
    env.standin_only(why).then_some(env)
}

fn spec(version: &str) -> Value {
    json!({"fleetPackage": {"version": version}, "clusterRef": {"secretName": "es"}})
}

fn writes(env: &Env) -> Vec<String> {
    env.standin
        .requests()
        .iter()
        .filter(|r| r.service != Service::GitHub && r.is_write())
        .map(|r| format!("{:?} {} {}", r.service, r.method, r.path))
        .collect()
}

/// The writes the stand-in saw, in order (`METHOD path`).
fn write_log(env: &Env) -> Vec<String> {
    env.standin
        .requests()
        .iter()
        .filter(|r| r.is_write())
        .map(|r| format!("{} {}", r.method, r.path))
        .collect()
}

fn position(log: &[String], needle: &str) -> usize {
    log.iter()
        .position(|w| w == needle)
        .unwrap_or_else(|| panic!("{needle} not in {log:?}"))
}

fn condition(m: &dga_operator::api::DgaModel, t: &str) -> (String, String, String) {
    let c = dga_operator::status::get(&m.status.as_ref().unwrap().conditions, t)
        .unwrap_or_else(|| panic!("no condition {t}: {:?}", m.status));
    (
        format!("{:?}", c.status),
        c.reason.clone(),
        c.message.clone(),
    )
}

use reqwest::Method;

/// A pipeline, read as any client reads it (the stand-in's or a real stack's Elasticsearch).
async fn pipeline(env: &Env, id: &str) -> Option<Value> {
    let (s, b) = env
        .stack()
        .es(Method::GET, &format!("/_ingest/pipeline/{id}"), None)
        .await;
    (s == 200).then(|| b[id].clone())
}

/// The router our processor in the hook calls (the one tagged with our owner).
async fn hooked_router(env: &Env, name: &str) -> Option<String> {
    let tag = format!("dga-operator:{}/{name}", env.ns.name);
    let hook = pipeline(env, HOOK).await?;
    hook["processors"]
        .as_array()?
        .iter()
        .find(|p| p["pipeline"]["tag"] == json!(tag))
        .and_then(|p| p["pipeline"]["name"].as_str().map(str::to_string))
}

/// The package's router as the installed package holds it: its `_meta` says Fleet made it.
async fn assert_fleet_router(env: &Env, router: &str) {
    let r = pipeline(env, router)
        .await
        .unwrap_or_else(|| panic!("no pipeline {router}"));
    assert_eq!(r["_meta"]["managed_by"], "fleet", "{router}: {r}");
}

/// The installed version of the `dga` package, as Kibana's Fleet API says it.
async fn installed(env: &Env) -> Option<String> {
    let (s, b) = env
        .stack()
        .kibana(Method::GET, "/api/fleet/epm/packages/dga", None)
        .await;
    let item = &b["item"];
    if s != 200 || item["status"] != "installed" {
        return None;
    }
    item.pointer("/installationInfo/version")
        .or_else(|| item.pointer("/savedObject/attributes/version"))
        .and_then(Value::as_str)
        .map(str::to_string)
}

/// A job's config, or None.
async fn job(env: &Env, id: &str) -> Option<Value> {
    let (s, b) = env
        .stack()
        .es(Method::GET, &format!("/_ml/anomaly_detectors/{id}"), None)
        .await;
    (s == 200).then(|| b["jobs"][0].clone())
}

/// The rule holding `rule_id` in the default space, or None.
async fn rule(env: &Env, rule_id: &str) -> Option<Value> {
    let (s, b) = env
        .stack()
        .kibana(
            Method::GET,
            &format!("/api/detection_engine/rules?rule_id={rule_id}"),
            None,
        )
        .await;
    (s == 200).then_some(b)
}

/// Everything the "done" asks of a Ready DgaModel on the Fleet route.
async fn assert_whole_install(env: &Env, name: &str, version: &str) -> dga_operator::api::DgaModel {
    assert_install(env, name, version, true).await
}

/// `module_job`: the job was made by Kibana's module setup (not one the DgaModel already ran).
async fn assert_install(
    env: &Env,
    name: &str,
    version: &str,
    module_job: bool,
) -> dga_operator::api::DgaModel {
    let (_, root) = env.stack().es(Method::GET, "/", None).await;
    let stack = root["version"]["number"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let m = env.wait_ready(name).await;
    let st = m.status.clone().unwrap();
    assert_eq!(installed(env).await.as_deref(), Some(version));
    let fp = st.fleet_package.clone().expect("status.fleetPackage");
    assert_eq!(fp.version.as_deref(), Some(version));
    assert_eq!(fp.installing, None);
    // The package's router (Fleet's own, never one of ours) is what the hook calls.
    let router = format!("{version}-ml_dga_ingest_pipeline");
    assert_fleet_router(env, &router).await;
    assert_eq!(
        hooked_router(env, name).await.as_deref(),
        Some(router.as_str())
    );
    assert_eq!(condition(&m, "PackageInstalled").0, "True");
    assert_eq!(
        condition(&m, "EnrichmentWired").0,
        "True",
        "{:?}",
        condition(&m, "EnrichmentWired")
    );
    // The model is the package's, as Kibana listed it.
    let model = st.model_id.clone().unwrap();
    let (code, models) = env
        .stack()
        .es(Method::GET, &format!("/_ml/trained_models/{model}"), None)
        .await;
    assert_eq!(code, 200, "{model}: {models}");
    // Elastic's rules, through Kibana's prebuilt-rules API, enabled.
    for id in elastic_rule_ids() {
        let r = rule(env, &id)
            .await
            .unwrap_or_else(|| panic!("no rule {id}"));
        assert_eq!(r["immutable"], true, "{r}");
        assert_eq!(r["enabled"], true, "{r}");
    }
    // The module's job: made by Kibana's module setup (Kibana shows it as the module's),
    // marked as ours, open, its datafeed started or waiting for data.
    let minor: Vec<u32> = stack
        .split('.')
        .take(2)
        .map(|p| p.parse().unwrap_or(0))
        .collect();
    let range = if minor >= vec![9, 4] {
        ">=9.4.0"
    } else {
        "<9.4.0"
    };
    let job_id = facts()["ml_jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["stack"] == range)
        .unwrap()["job_id"]
        .as_str()
        .unwrap()
        .to_string();
    let job = job(env, &job_id)
        .await
        .unwrap_or_else(|| panic!("no job {job_id}"));
    if module_job {
        assert_eq!(
            job["custom_settings"]["created_by"], "ml-module-dga",
            "{job}"
        );
    }
    assert!(
        job["custom_settings"]["dga_operator"]["owner"]
            .as_str()
            .is_some_and(|o| o.ends_with(&format!("/{name}"))),
        "{job}"
    );
    assert_eq!(st.objects.jobs, vec![job_id.clone()]);
    let (state, reason, msg) = condition(&m, "AnomalyJobRunning");
    assert!(
        state == "True" || reason == "WaitingForData",
        "{state} {reason} {msg}"
    );
    // The canary run goes through the package's router and reads the answer where the
    // package's model writes it (its own `results_field`). The stand-in cannot run painless (the
    // package's feature and verdict scripts), so there it is Unproven, naming only those.
    let (state, reason, msg) = condition(&m, "EnrichmentVerified");
    let results_field =
        models["trained_model_configs"][0]["inference_config"]["classification"]["results_field"]
            .as_str()
            .unwrap()
            .to_string();
    match reason.as_str() {
        "Verified" => assert_eq!(state, "True"),
        "Unproven" => {
            assert_eq!(state, "Unknown");
            assert!(
                msg.contains(&format!("\"{results_field}\":"))
                    && msg.contains(
                        "skipped processors it cannot run: script(inline), script(inline)"
                    ),
                "{msg}"
            );
        }
        other => panic!("EnrichmentVerified {state} {other}: {msg}"),
    }
    m
}

/// Fresh 8.17 and 9.2 stacks (package 2.3.7) and a 9.5 stack (package 3.0.0, whose module
/// has the `_ea` job): Ready with every part installed, a resync writes nothing, and `kubectl
/// get dgamodels` shows the package version. Then delete: the package (which the DgaModel
/// installed), the hook processor and the job go.
#[tokio::test]
async fn fresh_stacks_get_everything_then_a_resync_writes_nothing_then_delete_removes_it() {
    let real_pkg = std::env::var("DGA_TEST_FLEET_PACKAGE").unwrap_or_else(|_| "2.3.7".into());
    let profiles: Vec<(&str, &str)> = if support::real_stack().is_some() {
        // A real stack is one version: the package DGA_TEST_FLEET_PACKAGE (default 2.3.7).
        vec![("real", real_pkg.as_str())]
    } else {
        vec![("8.17.0", "2.3.7"), ("9.2.0", "2.3.7"), ("9.5.0", "3.0.0")]
    };
    for (version, pkg) in profiles {
        let env = env("fleet-fresh", version, &[&format!("dga-{pkg}")]).await;
        env.apply("dga", spec(pkg)).await;
        let m = assert_whole_install(&env, "dga", pkg).await;
        let fp = m.status.as_ref().unwrap().fleet_package.clone().unwrap();
        assert!(fp.installed_by_operator, "{version}");
        assert_eq!(fp.source.as_deref(), Some("registry"), "{version}");
        let job_id = m.status.as_ref().unwrap().objects.jobs[0].clone();
        if env.standin_only("the request log") {
            standin_checks(&env, version, pkg, &m).await;
        }
        env.delete("dga").await;
        env.wait_gone("dga").await;
        assert_eq!(installed(&env).await, None, "{version}");
        assert_eq!(hooked_router(&env, "dga").await, None, "{version}");
        assert_eq!(job(&env, &job_id).await, None, "{version}");
        env.finish().await;
    }
}

/// What only the stand-in's request log shows: one install through Kibana's Fleet API, and a
/// settled resync that writes nothing and reads neither the package, the model nor the job.
async fn standin_checks(env: &Env, version: &str, pkg: &str, m: &dga_operator::api::DgaModel) {
    {
        // The install went through Kibana's Fleet API, once.
        let installs: Vec<_> = env
            .standin
            .requests()
            .into_iter()
            .filter(|r| {
                r.method == "POST" && r.path == format!("/api/fleet/epm/packages/dga/{pkg}")
            })
            .collect();
        assert_eq!(installs.len(), 1, "{version}");

        let out = support::kubectl(&["get", "dgamodels", "-n", &env.ns.name]);
        let table = String::from_utf8_lossy(&out.stdout);
        assert!(
            table.lines().next().unwrap_or_default().contains("PACKAGE") && table.contains(pkg),
            "{version}: {table}"
        );

        // Settled: two resyncs later, no write to Elasticsearch or Kibana.
        tokio::time::sleep(Duration::from_secs(3)).await;
        env.standin.clear_requests();
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(
            env.standin.requests().iter().any(|r| r.method == "GET"),
            "{version}: resyncs ran"
        );
        assert_eq!(writes(env), Vec::<String>::new(), "{version}");
        // A settled resync glances: the package, the model and the job are not read again
        // (the canary run through the package's router proves them).
        let reads: Vec<String> = env
            .standin
            .requests()
            .iter()
            .filter(|r| {
                r.path.starts_with("/api/fleet/")
                    || r.path.starts_with("/_ml/trained_models")
                    || r.path.starts_with("/_ml/anomaly_detectors")
            })
            .map(|r| format!("{} {}", r.method, r.path))
            .collect();
        assert_eq!(reads, Vec::<String>::new(), "{version}");
        let again = env.models_api().get("dga").await.unwrap();
        assert_eq!(
            again.status.as_ref(),
            m.status.as_ref(),
            "{version}: status unchanged"
        );
    }
}

/// A version bump: the new version is installed first, then the hook moves to its router;
/// the old version's pipelines are still there (Fleet keeps them), so no document passes the
/// hook unenriched.
#[tokio::test]
async fn a_version_bump_installs_first_then_moves_the_hook() {
    let Some(env) = standin_env(
        "fleet-bump",
        "9.2.0",
        &["dga-2.2.0", "dga-2.3.7"],
        "two package versions in the registry and the request log",
    )
    .await
    else {
        return;
    };
    env.apply("dga", spec("2.2.0")).await;
    assert_whole_install(&env, "dga", "2.2.0").await;
    env.standin.clear_requests();
    env.apply("dga", spec("2.3.7")).await;
    let m = assert_whole_install(&env, "dga", "2.3.7").await;
    assert!(
        m.status
            .unwrap()
            .fleet_package
            .unwrap()
            .installed_by_operator
    );
    let log = write_log(&env);
    let pos = |needle: &str| position(&log, needle);
    assert!(
        pos("POST /api/fleet/epm/packages/dga/2.3.7")
            < pos(&format!("PUT /_ingest/pipeline/{HOOK}")),
        "{log:?}"
    );
    // The old router stays until nothing of ours calls it (Fleet keeps top-level pipelines).
    assert_fleet_router(&env, "2.2.0-ml_dga_ingest_pipeline").await;
    env.wait_event("dga", "Upgraded").await;
    env.finish().await;
}

/// A package someone installed: a Conflict without `overwrite` (nothing written), adopted with
/// it (recorded as not installed by the operator), and never uninstalled on delete.
#[tokio::test]
async fn a_package_someone_else_installed_is_adopted_only_with_overwrite() {
    let Some(env) = standin_env("fleet-person", "8.17.0", &["dga-2.3.7"], "the request log").await
    else {
        return;
    };
    let c = reqwest::Client::new();
    let s = c
        .post(format!(
            "{}/api/fleet/epm/packages/dga/2.3.7",
            env.standin.kibana_url()
        ))
        .basic_auth("elastic", Some("changeme"))
        .header("kbn-xsrf", "true")
        .json(&json!({}))
        .send()
        .await
        .unwrap()
        .status();
    assert!(s.is_success(), "{s}");
    env.standin.clear_requests();
    env.apply("dga", spec("2.3.7")).await;
    let m = env
        .wait_condition("dga", "PackageInstalled", "False", Some("Conflict"))
        .await;
    let (_, _, msg) = condition(&m, "PackageInstalled");
    assert!(msg.contains("2.3.7") && msg.contains("overwrite"), "{msg}");
    assert_eq!(condition(&m, "Ready").1, "Conflict");
    assert_eq!(writes(&env), Vec::<String>::new(), "nothing written");

    let mut adopt = spec("2.3.7");
    adopt["overwrite"] = json!(true);
    env.apply("dga", adopt).await;
    let m = assert_whole_install(&env, "dga", "2.3.7").await;
    let fp = m.status.as_ref().unwrap().fleet_package.clone().unwrap();
    assert!(!fp.installed_by_operator, "{fp:?}");
    assert!(
        condition(&m, "Ready")
            .2
            .contains("not installed by the operator"),
        "{:?}",
        condition(&m, "Ready")
    );
    // Adopted, not reinstalled.
    assert!(
        !writes(&env)
            .iter()
            .any(|w| w.contains("/api/fleet/epm/packages")),
        "{:?}",
        writes(&env)
    );
    env.delete("dga").await;
    env.wait_gone("dga").await;
    assert_eq!(
        env.standin.fleet_installed_version("dga").as_deref(),
        Some("2.3.7"),
        "a package the operator did not install stays"
    );
    assert_eq!(hooked_router(&env, "dga").await, None);
    env.finish().await;
}

/// An air-gapped Kibana: no registry, the archive from a mirror (checked by sha256), installed
/// by upload; a wrong sha256 installs nothing.
#[tokio::test]
async fn an_air_gapped_kibana_gets_the_package_by_upload() {
    let Some(env) = standin_env(
        "fleet-upload",
        "8.17.0",
        &["dga-2.3.7"],
        "a Kibana without a registry",
    )
    .await
    else {
        return;
    };
    env.standin.set_fleet_registry_reachable(false);
    let zip = env.standin.fleet_package_zip("2.3.7").unwrap();
    let sha = hex::encode(Sha256::digest(&zip));
    // The mirror: the stand-in's registry listener, which the operator reaches (Kibana does
    // not).
    let url = format!("{}/epr/dga/dga-2.3.7.zip", env.standin.fleet_registry_url());

    let mut wrong = spec("2.3.7");
    wrong["fleetPackage"]["url"] = json!(url);
    wrong["fleetPackage"]["sha256"] = json!("0".repeat(64));
    env.apply("dga", wrong).await;
    let m = env
        .wait_condition("dga", "Ready", "False", Some("ChecksumMismatch"))
        .await;
    assert!(
        condition(&m, "Ready").2.contains(&sha),
        "{:?}",
        condition(&m, "Ready")
    );
    assert_eq!(env.standin.fleet_installed_version("dga"), None);

    let mut right = spec("2.3.7");
    right["fleetPackage"]["url"] = json!(url);
    right["fleetPackage"]["sha256"] = json!(sha);
    env.apply("dga", right).await;
    let m = assert_whole_install(&env, "dga", "2.3.7").await;
    let st = m.status.unwrap();
    assert_eq!(st.fleet_package.unwrap().source.as_deref(), Some("upload"));
    assert_eq!(st.bundle_sha256.as_deref(), Some(sha.as_str()));
    env.finish().await;
}

/// A Kibana that cannot reach its registry, and a version this stack cannot take: a clear
/// condition, nothing written, no retry storm (not retried on a backoff).
#[tokio::test]
async fn an_unreachable_registry_or_an_incompatible_version_is_told_and_nothing_is_written() {
    let Some(env) = standin_env(
        "fleet-unavail",
        "9.2.0",
        &["dga-2.3.7", "dga-3.0.0"],
        "a Kibana without a registry",
    )
    .await
    else {
        return;
    };
    env.standin.set_fleet_registry_reachable(false);
    env.standin.clear_requests();
    env.apply("dga", spec("2.3.7")).await;
    let m = env
        .wait_condition(
            "dga",
            "PackageInstalled",
            "False",
            Some("PackageUnavailable"),
        )
        .await;
    let (_, _, msg) = condition(&m, "PackageInstalled");
    assert!(
        msg.contains("registry") && msg.contains("spec.fleetPackage.url"),
        "{msg}"
    );
    assert_eq!(condition(&m, "Ready").1, "PackageUnavailable");
    assert_eq!(condition(&m, "Stalled").0, "True");
    assert_eq!(condition(&m, "Reconciling").0, "False");
    // Looked at again at the resync pace (2 s here), not on a backoff of its own.
    env.standin.clear_requests();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let asks = env
        .standin
        .requests()
        .iter()
        .filter(|r| r.path.starts_with("/api/fleet/epm/packages"))
        .count();
    assert!(asks <= 8, "{asks} package reads in 5 s");
    assert_eq!(writes(&env), Vec::<String>::new());

    // 3.0.0 needs Kibana ^9.4.0: refused before Fleet (which would install it) is asked.
    env.standin.set_fleet_registry_reachable(true);
    env.apply("dga", spec("3.0.0")).await;
    let m = env
        .wait_condition(
            "dga",
            "PackageInstalled",
            "False",
            Some("PackageIncompatible"),
        )
        .await;
    let (_, _, msg) = condition(&m, "PackageInstalled");
    assert!(msg.contains("^9.4.0") && msg.contains("9.2.0"), "{msg}");
    assert_eq!(writes(&env), Vec::<String>::new());
    assert_eq!(env.standin.fleet_installed_version("dga"), None);

    // Both sources at once are refused by the CRD's schema.
    let both = json!({"apiVersion": "dgaoperator.io/v1alpha1", "kind": "DgaModel",
        "metadata": {"name": "both"},
        "spec": {"releaseTag": "ML-DGA-20210126-1", "fleetPackage": {"version": "2.3.7"},
                 "clusterRef": {"secretName": "es"}}});
    let obj: dga_operator::api::DgaModel = serde_json::from_value(both).unwrap();
    let e = env
        .models_api()
        .create(&Default::default(), &obj)
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("oneOf") || e.to_string().contains("must validate one and only one"),
        "{e}"
    );
    env.finish().await;
}

/// The operator dies between Kibana's install and the status that records it: the install was
/// recorded as started before Kibana was asked, so the next operator finishes the job and the
/// package is still the DgaModel's (not a Conflict as someone else's), and uninstalled on
/// delete.
#[tokio::test]
async fn an_install_whose_status_was_lost_is_still_the_operators() {
    let Some(mut env) =
        standin_env("fleet-crash", "8.17.0", &["dga-2.3.7"], "holding a request").await
    else {
        return;
    };
    // The operator is held in the hook's write, after the install, and stopped there.
    let reached = std::sync::Arc::new(tokio::sync::Notify::new());
    let signal = reached.clone();
    env.standin.set_interceptor(Some(std::sync::Arc::new(
        move |r: dga_standin::RequestRecord| {
            let signal = signal.clone();
            Box::pin(async move {
                if r.method == "PUT" && r.path.ends_with(HOOK) {
                    signal.notify_one();
                    tokio::time::sleep(Duration::from_secs(30)).await;
                }
            })
        },
    )));
    env.apply("dga", spec("2.3.7")).await;
    tokio::time::timeout(Duration::from_secs(30), reached.notified())
        .await
        .expect("the hook's write was reached");
    env.stop_controller();
    assert_eq!(
        env.standin.fleet_installed_version("dga").as_deref(),
        Some("2.3.7")
    );
    let st = env.status("dga").await.unwrap();
    let fp = st
        .fleet_package
        .clone()
        .expect("recorded before the install");
    assert_eq!(fp.installing.as_deref(), Some("2.3.7"), "{fp:?}");
    assert_eq!(fp.version, None, "{fp:?}");

    env.standin.set_interceptor(None);
    env.start_controller();
    let m = assert_whole_install(&env, "dga", "2.3.7").await;
    assert!(
        m.status
            .unwrap()
            .fleet_package
            .unwrap()
            .installed_by_operator
    );
    env.delete("dga").await;
    env.wait_gone("dga").await;
    assert_eq!(env.standin.fleet_installed_version("dga"), None);
    env.finish().await;
}

/// `mode: Plan` lists the package's install with everything else and writes nothing; Apply
/// then does it.
#[tokio::test]
async fn mode_plan_lists_the_package_install_and_writes_nothing() {
    let Some(env) = standin_env("fleet-plan", "9.2.0", &["dga-2.3.7"], "the request log").await
    else {
        return;
    };
    env.standin.clear_requests();
    let mut s = spec("2.3.7");
    s["mode"] = json!("Plan");
    env.apply("dga", s).await;
    let m = env
        .wait_condition("dga", "PackageInstalled", "False", Some("Planned"))
        .await;
    let plan = m.status.as_ref().unwrap().plan.clone().unwrap_or_default();
    assert!(
        plan.contains("create Fleet package dga 2.3.7 from Kibana's package registry"),
        "{plan}"
    );
    assert!(plan.contains(HOOK), "{plan}");
    assert_eq!(writes(&env), Vec::<String>::new());
    assert_eq!(env.standin.fleet_installed_version("dga"), None);
    env.apply("dga", spec("2.3.7")).await;
    assert_whole_install(&env, "dga", "2.3.7").await;
    env.finish().await;
}

/// A DgaModel on an ML-DGA release moved to the Fleet package (a GitOps edit): the package is
/// installed, the hook moves to its router, and only then are the release's objects (ours)
/// removed. The anomaly job it already ran is kept (same detector; deleting it would throw away
/// what it has learned), now marked with the package.
#[tokio::test]
async fn a_release_install_moves_to_the_fleet_package() {
    let Some(env) = standin_env("fleet-switch", "8.17.0", &["dga-2.3.7"], "the request log").await
    else {
        return;
    };
    let tag = "ML-DGA-20210126-1";
    let rel = env.publish(tag, dga_standin::bundle::Layout::V2);
    env.apply(
        "dga",
        json!({"releaseTag": tag, "clusterRef": {"secretName": "es"}}),
    )
    .await;
    env.wait_ready("dga").await;
    assert_eq!(
        hooked_router(&env, "dga").await.as_deref(),
        Some(rel.router_pipeline.as_str())
    );
    env.standin.clear_requests();
    env.apply("dga", spec("2.3.7")).await;
    let m = assert_install(&env, "dga", "2.3.7", false).await;
    let st = m.status.unwrap();
    assert_eq!(st.installed_tag, None);
    let job = &env.standin.jobs()["dga_high_sum_probability"];
    assert_eq!(
        job["custom_settings"]["dga_operator"]["release"], "dga 2.3.7",
        "{job}"
    );
    assert!(
        st.objects.pipelines.is_empty() && st.objects.models.is_empty(),
        "{:?}",
        st.objects
    );
    let pipes = env.standin.pipelines();
    assert!(
        !pipes.contains_key(&rel.router_pipeline),
        "{:?}",
        pipes.keys()
    );
    assert!(
        !pipes.contains_key(&rel.inference_pipeline),
        "{:?}",
        pipes.keys()
    );
    let log = write_log(&env);
    let pos = |needle: &str| position(&log, needle);
    let install = pos("POST /api/fleet/epm/packages/dga/2.3.7");
    let hook = pos(&format!("PUT /_ingest/pipeline/{HOOK}"));
    let gone = pos(&format!("DELETE /_ingest/pipeline/{}", rel.router_pipeline));
    assert!(install < hook && hook < gone, "{log:?}");
    env.finish().await;
}

/// 8.8 with package 1.1.0 (Kibana `^8.0.0`; before Elastic's DGA rules were prebuilt rules):
/// Ready with the package, the hook and the module's job; the package's own rules (read
/// through Kibana's package file route) as custom rules under the operator's rule_ids (Kibana
/// 8.8 offers no per-rule prebuilt install), planned again after the install in the same pass,
/// so that a resync writes nothing. `deletionPolicy: Retain` then leaves everything, and the
/// event lists the package.
#[tokio::test]
async fn kibana_8_8_takes_package_1_1_0_and_retain_leaves_it() {
    let Some(env) = standin_env("fleet-88", "8.8.0", &["dga-1.1.0"], "a Kibana 8.8").await else {
        return;
    };
    let mut s = spec("1.1.0");
    s["deletionPolicy"] = json!("Retain");
    env.apply("dga", s).await;
    let m = env.wait_ready("dga").await;
    assert_eq!(
        env.standin.fleet_installed_version("dga").as_deref(),
        Some("1.1.0")
    );
    assert_eq!(
        hooked_router(&env, "dga").await.as_deref(),
        Some("1.1.0-ml_dga_ingest_pipeline")
    );
    let rules = env.standin.rules("default");
    assert_eq!(rules.len(), 4, "{rules:?}");
    let elastic = elastic_rule_ids();
    for r in &rules {
        assert_eq!(r["immutable"], false, "{r}");
        assert!(
            !elastic.contains(&r["rule_id"].as_str().unwrap().to_string()),
            "{r}"
        );
    }
    // The package's own rules (its `kibana/security_rule/*.json`), not a copy of the
    // operator's: each package rule's name, description and type are a rule's in Kibana.
    let zip = env.standin.fleet_package_zip("1.1.0").unwrap();
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(zip)).unwrap();
    let mut package_rules = Vec::new();
    for i in 0..archive.len() {
        let mut f = archive.by_index(i).unwrap();
        if f.name().contains("/kibana/security_rule/") {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut f, &mut text).unwrap();
            let so: Value = serde_json::from_str(&text).unwrap();
            package_rules.push(so["attributes"].clone());
        }
    }
    assert_eq!(package_rules.len(), 4);
    for p in &package_rules {
        let r = rules
            .iter()
            .find(|r| r["name"] == p["name"])
            .unwrap_or_else(|| panic!("no rule named {} in {rules:?}", p["name"]));
        for k in ["description", "type", "risk_score", "severity"] {
            assert_eq!(r[k], p[k], "{}: {k}", p["name"]);
        }
    }
    let job = &env.standin.jobs()["dga_high_sum_probability"];
    assert_eq!(
        job["custom_settings"]["created_by"], "ml-module-dga",
        "{job}"
    );
    assert!(
        condition(&m, "RulesInstalled").2.contains("custom rules"),
        "{:?}",
        condition(&m, "RulesInstalled")
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    env.standin.clear_requests();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        writes(&env),
        Vec::<String>::new(),
        "a resync writes nothing"
    );
    env.delete("dga").await;
    env.wait_gone("dga").await;
    let (_, _, note) = env
        .events("dga")
        .await
        .into_iter()
        .find(|(_, reason, _)| reason == "Retained")
        .expect("a Retained event");
    assert!(note.contains("Fleet package dga 1.1.0 in Kibana"), "{note}");
    assert_eq!(
        env.standin.fleet_installed_version("dga").as_deref(),
        Some("1.1.0")
    );
    assert!(hooked_router(&env, "dga").await.is_some());
    env.finish().await;
}

/// Drift: a person uninstalls the package the DgaModel installed. The next resync's canary run
/// fails (the router is gone), the full pass that follows installs it again (a repair), and
/// the hook calls it again.
#[tokio::test]
async fn a_package_uninstalled_by_hand_is_installed_again() {
    let Some(env) = standin_env("fleet-drift", "9.2.0", &["dga-2.3.7"], "the request log").await
    else {
        return;
    };
    env.apply("dga", spec("2.3.7")).await;
    assert_whole_install(&env, "dga", "2.3.7").await;
    let (code, body) = env
        .stack()
        .kibana(Method::DELETE, "/api/fleet/epm/packages/dga/2.3.7", None)
        .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(installed(&env).await, None);
    env.standin.clear_requests();
    env.wait_event("dga", "DriftRepaired").await;
    let m = assert_whole_install(&env, "dga", "2.3.7").await;
    assert!(
        m.status
            .unwrap()
            .fleet_package
            .unwrap()
            .installed_by_operator
    );
    let reinstalls = env
        .standin
        .requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path == "/api/fleet/epm/packages/dga/2.3.7")
        .count();
    assert_eq!(reinstalls, 1);
    env.finish().await;
}

/// Kibana before 8.8.2 installs an uploaded package only with an enterprise or trial licence:
/// the air-gapped route on such a stack is told as that (not as refused credentials), nothing
/// installed; with a trial it installs.
#[tokio::test]
async fn an_upload_kibana_refuses_for_its_licence_is_told_as_such() {
    let Some(env) = standin_env("fleet-lic", "8.8.1", &["dga-1.1.0"], "a Kibana 8.8.1").await
    else {
        return;
    };
    env.standin.set_fleet_registry_reachable(false);
    let url = format!("{}/epr/dga/dga-1.1.0.zip", env.standin.fleet_registry_url());
    let mut s = spec("1.1.0");
    s["fleetPackage"]["url"] = json!(url);
    env.apply("dga", s).await;
    let m = env
        .wait_condition("dga", "PackageInstalled", "False", Some("UploadNotAllowed"))
        .await;
    let (_, _, msg) = condition(&m, "PackageInstalled");
    assert!(msg.contains("enterprise or trial licence"), "{msg}");
    let ready = condition(&m, "Ready");
    assert_eq!(ready.1, "UploadNotAllowed");
    assert!(
        ready.2.contains("to fix: drop spec.fleetPackage.url"),
        "{ready:?}"
    );
    assert_eq!(env.standin.fleet_installed_version("dga"), None);
    env.standin.set_license("trial");
    env.wait_ready("dga").await;
    assert_eq!(
        env.standin.fleet_installed_version("dga").as_deref(),
        Some("1.1.0")
    );
    env.finish().await;
}

/// A hook where a person already followed Elastic's recipe (an untagged `pipeline` processor
/// calling the package's router): the operator adds nothing (every document would be scored
/// twice) and says so; the hook is left byte for byte.
#[tokio::test]
async fn elastics_recipe_done_by_hand_is_left_alone() {
    let Some(env) = standin_env(
        "fleet-recipe",
        "8.17.0",
        &["dga-2.3.7"],
        "the stand-in's pipelines",
    )
    .await
    else {
        return;
    };
    let by_hand = json!({"processors": [
        {"set": {"field": "team", "value": "net"}},
        {"pipeline": {"name": "2.3.7-ml_dga_ingest_pipeline", "ignore_missing_pipeline": true, "ignore_failure": true}}
    ]});
    env.standin.put_pipeline(HOOK, by_hand.clone());
    env.apply("dga", spec("2.3.7")).await;
    let m = env.wait_ready("dga").await;
    let (state, reason, msg) = condition(&m, "EnrichmentWired");
    assert_eq!(
        (state.as_str(), reason.as_str()),
        ("True", "FleetEnrichmentPresent"),
        "{msg}"
    );
    assert_eq!(env.standin.pipelines()[HOOK], by_hand);
    assert_eq!(hooked_router(&env, "dga").await, None);
    env.finish().await;
}

/// Two DgaModels on one stack: the package is the first one's. The second is a Conflict that
/// names it, even with `overwrite` (another DgaModel's objects are never taken), and writes
/// nothing; once the first is deleted (and its package with it), the second installs it.
#[tokio::test]
async fn a_package_another_dgamodel_installed_is_never_taken() {
    let Some(env) = standin_env(
        "fleet-two",
        "9.2.0",
        &["dga-2.3.7"],
        "two DgaModels on one stand-in",
    )
    .await
    else {
        return;
    };
    env.apply("first", spec("2.3.7")).await;
    env.wait_ready("first").await;
    env.standin.clear_requests();
    let mut second = spec("2.3.7");
    second["overwrite"] = json!(true);
    second["enrichment"] = json!({"customPipelines": ["logs-other.dns@custom"]});
    env.apply("second", second).await;
    let m = env
        .wait_condition("second", "PackageInstalled", "False", Some("Conflict"))
        .await;
    let (_, _, msg) = condition(&m, "PackageInstalled");
    assert!(
        msg.contains(&format!("managed by DgaModel {}/first", env.ns.name)),
        "{msg}"
    );
    assert_eq!(write_log(&env), Vec::<String>::new());
    env.delete("first").await;
    env.wait_gone("first").await;
    let m = env.wait_ready("second").await;
    let fp = m.status.unwrap().fleet_package.unwrap();
    assert!(fp.installed_by_operator, "{fp:?}");
    assert_eq!(
        env.standin.fleet_installed_version("dga").as_deref(),
        Some("2.3.7")
    );
    env.finish().await;
}
